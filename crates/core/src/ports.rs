//! The ports: what the engine needs from the outside world, as traits. Adapters implement them
//! (`switchyard-local` on SQLite and files, the AWS crate on DynamoDB, SQS and S3).
//!
//! They are `async` through `async_trait` (a proc macro only: no runtime), so they stay
//! dyn-compatible and the core keeps no dependency on tokio.

use crate::error::StoreError;
use crate::state::{HistoryEvent, Lease, Notification, RunHeader, RunSnapshot, StepRecord, WakeUp};
use crate::stats::{Bucket, BucketQuery};
use crate::time::Millis;
use crate::upload::Declared;
use async_trait::async_trait;

/// Result of claiming an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key was free and now maps to the run id given.
    New,
    /// The key was used before: the run it maps to, and whether the request body was the same.
    Existing { run_id: String, same_body: bool },
}

/// A short listing row.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub run_id: String,
    pub tenant: String,
    pub workflow: String,
    pub version: String,
    pub status: crate::state::RunStatus,
    pub created_at: Millis,
    pub updated_at: Millis,
}

pub use crate::state::ListScope;

/// Which runs to list, and how many.
#[derive(Debug, Clone, PartialEq)]
pub struct RunQuery {
    pub scope: ListScope,
    pub status: Option<crate::state::RunStatus>,
    pub workflow: Option<String>,
    /// Continue after the page this cursor ended.
    pub cursor: Option<String>,
    /// Rows of this page (at least 1; adapters cap it at [`MAX_LIST_LIMIT`]).
    pub limit: usize,
}

impl RunQuery {
    /// The first page of `scope`'s runs, `limit` rows, no filter.
    pub fn new(scope: ListScope, limit: usize) -> RunQuery {
        RunQuery {
            scope,
            status: None,
            workflow: None,
            cursor: None,
            limit,
        }
    }
}

/// The most rows one listing page returns.
pub const MAX_LIST_LIMIT: usize = 1000;

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    /// Where the next page starts; `None` on the last page.
    pub cursor: Option<String>,
    /// How many matching runs come after this page, where the store can count them cheaply
    /// (the embedded one can; DynamoDB would have to read them all, and says `None`).
    pub remaining: Option<u64>,
}

/// The most step records one [`StateStore::put_steps`] writes (a DynamoDB transaction holds
/// 100 items; a transition changes two today).
pub const MAX_STEPS_PER_WRITE: usize = 25;

/// The most held-back step records one [`StateStore::end_run`] stores (a worker that would
/// hold more writes what it holds apart first). On DynamoDB they share the header item (400
/// KB at most) with the run's own history, so a store may also refuse (`Invalid`) held records
/// heavier than one write carries (DynamoDB: 64 KiB; the engine holds at most 48 KiB of JSON).
pub const MAX_HELD_STEPS: usize = 100;

/// `Invalid` for an [`StateStore::end_run`] that holds more than [`MAX_HELD_STEPS`] records
/// or a record that is not new (version 0): what every store checks before writing.
pub fn check_held(steps: &[(&StepRecord, &[HistoryEvent])]) -> Result<(), StoreError> {
    if steps.len() > MAX_HELD_STEPS {
        return Err(StoreError::Invalid(format!(
            "end_run stores at most {MAX_HELD_STEPS} held-back records, not {}",
            steps.len()
        )));
    }
    match steps.iter().find(|(rec, _)| rec.version != 0) {
        Some((rec, _)) => Err(StoreError::Invalid(format!(
            "end_run stores new records only; step {} is at version {}",
            rec.step, rec.version
        ))),
        None => Ok(()),
    }
}

/// A listing cursor an adapter hands out: `<tag>.<created_at>.<run_id>` of the last row of a
/// page. Callers treat it as opaque; the tag tells one listing's cursors from another's.
pub fn encode_cursor(tag: &str, created_at: Millis, run_id: &str) -> String {
    format!("{tag}.{created_at}.{run_id}")
}

/// Reads a cursor of [`encode_cursor`] with `tag`; anything else is `StoreError::Invalid`.
pub fn decode_cursor(tag: &str, cursor: &str) -> Result<(Millis, String), StoreError> {
    let bad = || StoreError::Invalid(format!("`{cursor}` is not a cursor this store handed out"));
    let rest = cursor
        .strip_prefix(tag)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(bad)?;
    let (at, id) = rest.split_once('.').ok_or_else(bad)?;
    let at = at.parse::<Millis>().map_err(|_| bad())?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok((at, id.to_string()))
}

/// One page of [`StateStore::active_runs`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActivePage {
    pub runs: Vec<RunHeader>,
    /// Where the next page starts; `None` on the last page.
    pub cursor: Option<String>,
}

/// How long an `Idempotency-Key` names its run: 24 hours, as Stripe and most APIs that take
/// the header. A retry after that starts a new run.
pub const IDEMPOTENCY_TTL_MS: Millis = 24 * 60 * 60 * 1000;

#[async_trait]
pub trait StateStore: Send + Sync {
    /// Writes a new run header, stored at version 1, with its first history events in the
    /// same write. A store may count the run in its stats bucket (`started`,
    /// [`crate::stats::started`]) in that write too (SQLite); one that does not (DynamoDB,
    /// where it would be a write of its own) leaves the stats to count the runs in flight
    /// from [`StateStore::active_runs`]. `Conflict` if the run id exists.
    async fn create_run(
        &self,
        header: &RunHeader,
        events: &[HistoryEvent],
    ) -> Result<(), StoreError>;

    /// The header and every step record of a run; `None` if there is no such run.
    async fn load(&self, run_id: &str) -> Result<Option<RunSnapshot>, StoreError>;

    /// The run header alone: one item instead of the whole run (a worker driving a long chain
    /// checks it for a cancellation). The default reads the whole run.
    async fn load_header(&self, run_id: &str) -> Result<Option<RunHeader>, StoreError> {
        Ok(self.load(run_id).await?.map(|s| s.header))
    }

    /// Writes the header if its stored version is still `header.version` (the version it was
    /// read at), together with the history events that belong to the change, in one write (an
    /// adapter puts them in the same item or transaction). The store owns the version
    /// arithmetic: it returns the version now stored, which the caller keeps. A stale
    /// `header.version` is `Conflict`; a missing run `NotFound`.
    async fn put_header(
        &self,
        header: &RunHeader,
        events: &[HistoryEvent],
    ) -> Result<u64, StoreError>;

    /// The write that ends a run: [`StateStore::put_header`] of a header whose status has
    /// ended, and with it the run's figures added to its stats buckets
    /// (`crate::stats::RunFacts::buckets`): in the same transaction on SQLite; right after
    /// the header write on DynamoDB, approximate under faults there (docs/architecture.md,
    /// "Stats aggregates"). The header's version condition makes the end happen once, so
    /// the figures are added once: a stale version is `Conflict` and adds nothing.
    ///
    /// `steps` are step records the ending worker computed and has not stored yet — the latest
    /// states of steps whose transitions were free to repeat, each new to the store (version 0:
    /// stored at version 1), held back until
    /// this write (docs/architecture.md, "The write layout on DynamoDB") — each with its
    /// events, which go before `events` in the run's history. They are stored by the same
    /// write or not at all: a stale header version stores none of them. At most
    /// [`MAX_HELD_STEPS`]. A store checks that each is new where that is part of the same
    /// write (SQLite: `Conflict`, nothing written); DynamoDB does not (the records go into
    /// the header item, whose condition is the run's version), and a record already stored
    /// apart at the same version is then read as the one in the header — both are results of
    /// one attempt of a step that is free to repeat.
    async fn end_run(
        &self,
        header: &RunHeader,
        events: &[HistoryEvent],
        stats: &[Bucket],
        steps: &[(&StepRecord, &[HistoryEvent])],
    ) -> Result<u64, StoreError>;

    /// Whether [`StateStore::create_run`] counts `started` in the run's stats bucket (SQLite,
    /// the default). A store that does not (DynamoDB) leaves the stats to count the runs in
    /// flight from [`StateStore::active_runs`].
    fn counts_started(&self) -> bool {
        true
    }

    /// From now until the next [`StateStore::flush_figures`], a store whose figures are not
    /// part of the end's own write may hold the figures of the runs it ends and add them
    /// together at the flush (DynamoDB: one update per workflow-hour item for a whole worker
    /// batch instead of one per run). The default, and SQLite, add them in the end's write
    /// as before. The worker calls it when a batch starts (`Engine::handle_work_batch`).
    fn hold_figures(&self) {}

    /// Adds the figures held since [`StateStore::hold_figures`], each once, and stops holding
    /// (other holders still open keep the store holding). A flush that fails has dropped
    /// them: the figures are approximate under faults on such a store, the runs' records
    /// exact (docs/architecture.md, "Stats aggregates").
    async fn flush_figures(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The stats buckets `q` selects, each once with its counters summed (any order). A
    /// store that cannot answer a query without reading beyond its buckets says `Invalid`
    /// (DynamoDB: every tenant at once).
    async fn stats_buckets(&self, q: &BucketQuery) -> Result<Vec<Bucket>, StoreError>;

    /// Takes the run's lease for `owner` until `lease.until`, if the lease is free, expired at
    /// `now`, or already held by the same owner, and marks a run that has not ended `running`
    /// in the same write (a worker that holds the lease is driving it). Returns the header as
    /// written (version bumped).
    async fn acquire_lease(
        &self,
        run_id: &str,
        lease: &Lease,
        now: Millis,
    ) -> Result<RunHeader, StoreError>;

    /// Writes a step record if its stored version is still `record.version` (0: the record must
    /// not exist yet), with the step's history events in the same write. Returns the version
    /// now stored. A failed condition — including a record that does not exist — is `Conflict`.
    async fn put_step(
        &self,
        run_id: &str,
        record: &StepRecord,
        events: &[HistoryEvent],
    ) -> Result<u64, StoreError>;

    /// Writes several step records of one run as one all-or-nothing write, each on the
    /// condition of its own version (as [`StateStore::put_step`]), each with its events. A
    /// transition that changes two steps — a repair: the validator asks, its target is reset —
    /// is then never stored half-applied, whatever fails between or after. Returns the versions
    /// now stored, in order. Any failed condition is `Conflict`, and nothing is written. At most
    /// [`MAX_STEPS_PER_WRITE`] records.
    async fn put_steps(
        &self,
        run_id: &str,
        writes: &[(&StepRecord, &[HistoryEvent])],
    ) -> Result<Vec<u64>, StoreError>;

    /// The headers of runs that have not ended, created at or after `created_from` and at or
    /// before `created_before`, oldest first, `limit` at a time (capped at
    /// [`MAX_LIST_LIMIT`]): what the stuck-run sweep reads ([`crate::recovery`]; from 0) and
    /// the stats count the runs in flight of their window from. `after` is the previous
    /// page's cursor, opaque to callers.
    async fn active_runs(
        &self,
        created_from: Millis,
        created_before: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ActivePage, StoreError>;

    /// Appends history events that belong to no state change (each on its own: no
    /// read-modify-write). State changes carry their events in `put_header` / `put_step`.
    async fn append_events(&self, run_id: &str, events: &[HistoryEvent]) -> Result<(), StoreError>;

    /// The run's history, oldest first.
    async fn events(&self, run_id: &str) -> Result<Vec<HistoryEvent>, StoreError>;

    /// One page of runs, newest first, of one tenant or (operators, the local CLI) all. `cursor` is the
    /// `RunPage::cursor` of the previous page, opaque to callers (each adapter encodes its own
    /// position); a cursor the store did not hand out is `StoreError::Invalid`.
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError>;

    /// Maps `(tenant, key)` to `run_id` unless it is mapped already. A mapping older than
    /// [`IDEMPOTENCY_TTL_MS`] at `now` has expired: the key is claimed afresh, as if unused.
    async fn claim_idempotency(
        &self,
        tenant: &str,
        key: &str,
        body_hash: &str,
        run_id: &str,
        now: Millis,
    ) -> Result<IdempotencyClaim, StoreError>;

    /// Records a webhook id; `false` if it was seen before (the delivery is a duplicate).
    async fn record_webhook_id(&self, id: &str, now: Millis) -> Result<bool, StoreError>;
}

/// The deployment's queues. Each carries one kind of message and has its own dead-letter
/// place (two SQS queues with a redrive policy each on AWS; two queue names locally).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueueName {
    /// Wake-ups for the worker: start, continue, timers, callbacks, cancellation.
    Work,
    /// Notifications for the notifier: a run ended or waits for a person.
    Notify,
}

impl QueueName {
    pub const ALL: [QueueName; 2] = [QueueName::Work, QueueName::Notify];

    /// The queue's name in configuration, the CLI (`--queue work|notify`) and the embedded
    /// backend's tables.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Work => "work",
            QueueName::Notify => "notify",
        }
    }

    pub fn parse(s: &str) -> Option<QueueName> {
        QueueName::ALL.into_iter().find(|q| q.as_str() == s)
    }
}

impl std::fmt::Display for QueueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message on one of the queues. Its body on the wire is the inner value's JSON (each queue
/// holds one kind, so no tag is needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Wake(WakeUp),
    Notify(Notification),
}

impl Message {
    /// The queue this message travels on.
    pub fn queue(&self) -> QueueName {
        match self {
            Message::Wake(_) => QueueName::Work,
            Message::Notify(_) => QueueName::Notify,
        }
    }

    /// The run it is about (for logs and dead-letter listings).
    pub fn run_id(&self) -> &str {
        match self {
            Message::Wake(w) => &w.run_id,
            Message::Notify(n) => &n.run_id,
        }
    }

    pub fn to_body(&self) -> Result<String, StoreError> {
        let json = match self {
            Message::Wake(w) => serde_json::to_string(w),
            Message::Notify(n) => serde_json::to_string(n),
        };
        json.map_err(|e| StoreError::Corrupt(format!("message for run {}: {e}", self.run_id())))
    }

    /// Reads a body received on `queue`; the error says why it cannot be a message there
    /// (the receiver dead-letters such a body rather than failing on it forever).
    pub fn from_body(queue: QueueName, body: &str) -> Result<Message, String> {
        match queue {
            QueueName::Work => serde_json::from_str(body).map(Message::Wake),
            QueueName::Notify => serde_json::from_str(body).map(Message::Notify),
        }
        .map_err(|e| format!("not a {queue} message: {e}"))
    }
}

/// Sends messages. The adapter puts each on the queue it belongs to ([`Message::queue`]).
#[async_trait]
pub trait Queue: Send + Sync {
    /// Sends a message, visible after `delay_ms` (SQS caps a delay at 15 minutes: adapters send
    /// the capped delay and the worker re-plans and sends again if it is early).
    async fn send(&self, message: &Message, delay_ms: u64) -> Result<(), StoreError>;
}

/// A received message. The receipt is valid until the message is received again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message's id, the same on every delivery of it.
    pub id: String,
    pub receipt: String,
    pub message: Message,
    /// Deliveries so far, this one included (1 on the first).
    pub receive_count: u32,
}

/// A message taken out of circulation. `body` is kept raw: it may be the reason it is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: String,
    pub body: String,
    pub receive_count: u32,
    pub reason: String,
    pub failed_at: Millis,
}

/// The receiving side of one queue: what the local driver and `switchyard dev` poll, and what
/// SQS plus its Lambda trigger do on AWS (where the trigger receives and the function's answer
/// acks). Semantics are SQS's: a received message is hidden for the visibility timeout, then
/// comes back with its receive count raised unless acked; past the queue's maximum receive
/// count it moves to the queue's dead-letter place.
#[async_trait]
pub trait Inbox: Send + Sync {
    /// Which queue this is.
    fn queue(&self) -> QueueName;

    /// Takes up to `max` visible messages, hiding each for `visibility_ms`. A body that cannot
    /// be a message of this queue is dead-lettered, not returned.
    async fn receive(&self, max: usize, visibility_ms: u64) -> Result<Vec<Delivery>, StoreError>;

    /// Deletes a received message; `false` if the receipt is stale (received again since, or
    /// acked already): the caller just moves on.
    async fn ack(&self, receipt: &str) -> Result<bool, StoreError>;

    /// Deletes several received messages; how many were deleted (stale receipts are not).
    /// What a Lambda event source mapping does after a batch: SQS deletes up to ten per
    /// request (`DeleteMessageBatch`), so the default's one request per message is for
    /// queues without a batch delete.
    async fn ack_all(&self, receipts: &[&str]) -> Result<usize, StoreError> {
        let mut deleted = 0;
        for r in receipts {
            if self.ack(r).await? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Makes a received message visible again `delay_ms` from now; `false` if the receipt is
    /// stale.
    async fn change_visibility(&self, receipt: &str, delay_ms: u64) -> Result<bool, StoreError>;

    /// Makes several received messages visible again `delay_ms` from now; how many changed
    /// (stale receipts are not). A worker's heartbeat holds every record of its batch: SQS
    /// changes up to ten per request (`ChangeMessageVisibilityBatch`), so the default's one
    /// request per message is for queues without a batch change.
    async fn change_visibility_all(
        &self,
        receipts: &[&str],
        delay_ms: u64,
    ) -> Result<usize, StoreError> {
        let mut changed = 0;
        for r in receipts {
            if self.change_visibility(r, delay_ms).await? {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// When the earliest message (in flight ones included) becomes visible, if the adapter can
    /// tell (SQS cannot: `None`, and a driver long-polls instead). Past values mean now.
    async fn next_visible_at(&self) -> Result<Option<Millis>, StoreError>;

    /// This queue's dead letters, oldest first.
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError>;

    /// Puts dead letters back on the queue, visible now, with a fresh receive count: all of
    /// them, or those whose id is listed. Returns how many moved.
    async fn redrive(&self, ids: Option<&[String]>) -> Result<usize, StoreError>;
}

/// Content-addressed blobs: the key is the sha256 of the bytes, in hex.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores the bytes and returns their key. Storing the same bytes twice is harmless.
    async fn put(&self, bytes: &[u8], content_type: &str) -> Result<String, StoreError>;
    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError>;
    /// A URL a client can read the blob from, valid for `ttl_ms`.
    async fn presign(&self, key: &str, ttl_ms: u64) -> Result<String, StoreError>;

    /// A URL a client PUTs a declared upload to, valid for `ttl_ms` ([`crate::upload`]). The
    /// store refuses other bytes where it can check (S3 signs size, type and sha256).
    async fn presign_upload(
        &self,
        tenant: &str,
        declared: &Declared,
        ttl_ms: u64,
    ) -> Result<PresignedPut, StoreError>;

    /// Stores an upload's bytes as the PUT behind a presigned URL would (`switchyard dev`
    /// serves that PUT and calls this after checking the link). `Invalid` when the bytes are
    /// not the declared ones.
    async fn accept_upload(
        &self,
        tenant: &str,
        declared: &Declared,
        bytes: &[u8],
    ) -> Result<(), StoreError>;

    /// Takes the tenant's upload of `sha256` into the blob store (after this, `get(sha256)`
    /// returns its bytes, however long the upload itself lives) and says what was stored.
    /// `NotFound` when this tenant uploaded nothing under that hash.
    async fn adopt_upload(&self, tenant: &str, sha256: &str) -> Result<Declared, StoreError>;
}

/// A presigned upload: PUT the bytes to `url`, sending every one of `headers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignedPut {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// One outbound callback attempt, as the sender saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundAttempt {
    pub result: crate::outbound::DeliveryResult,
    pub latency_ms: u64,
    /// The address the connection went to (after the address check), when one was made.
    pub address: Option<String>,
}

/// POSTs a notification to a run's `callback_url` under the address policy of
/// [`crate::outbound`] (resolve, check, connect to the checked address, no redirects, capped
/// time and response size). The reqwest implementation is `switchyard_providers::outbound`.
#[async_trait]
pub trait CallbackSender: Send + Sync {
    async fn deliver(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
        allow_private: bool,
    ) -> OutboundAttempt;
}

/// Where secrets and settings come from: the process environment locally (and in a Lambda's
/// configuration), SSM Parameter Store or Secrets Manager on AWS. Reads are synchronous on
/// purpose: an adapter that fetches remotely loads what it serves once, at start-up (a Lambda
/// cold start), and answers from memory, so no model call ever waits on a secrets lookup.
///
/// Values are never logged; error messages name the variable, never its value.
pub trait Secrets: Send + Sync {
    /// The value of `name`, or `None` when it is unset or empty (blank counts as unset).
    fn get(&self, name: &str) -> Option<String>;
    /// Every `(name, value)` whose name starts with `prefix` (e.g. per-provider webhook
    /// secrets `SWITCHYARD_<PROVIDER>_WEBHOOK_SECRET`), blank values left out.
    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)>;
}

/// [`Secrets`] from the process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvSecrets;

impl Secrets for EnvSecrets {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }

    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = std::env::vars()
            .filter(|(k, v)| k.starts_with(prefix) && !v.trim().is_empty())
            .collect();
        out.sort();
        out
    }
}

/// [`Secrets`] from a fixed map: tests, and adapters that load a parameter path at start-up.
#[derive(Debug, Clone, Default)]
pub struct MapSecrets(pub std::collections::BTreeMap<String, String>);

impl MapSecrets {
    pub fn new<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        MapSecrets(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl Secrets for MapSecrets {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).filter(|v| !v.trim().is_empty()).cloned()
    }

    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter(|(k, v)| k.starts_with(prefix) && !v.trim().is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
