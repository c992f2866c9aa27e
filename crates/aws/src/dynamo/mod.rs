//! [`StateStore`] on DynamoDB: one table, string keys `PK`/`SK`, on-demand capacity.
//!
//! # Why this layout
//!
//! DynamoDB bills a write per started KB of the item written, and an update bills the larger of
//! the item before and after it. So nothing is one growing document: the run header, each step
//! record, and each batch of history events that belongs to no step are items of their own,
//! each written with its own condition, and each stays well under 1 KB in the common case
//! (large values are blob references already: the engine keeps header values ≤ 1 KB inline).
//! All items of a run share its partition, so loading a run is one `Query`.
//!
//! | item | `PK` | `SK` | other attributes |
//! |---|---|---|---|
//! | run header | `RUN#<run_id>` | `H` | `ver` (N), `body` (the `RunHeader` JSON without `run_id` and `version`, which the key and `ver` hold), `workflow`, `GSI1PK` = `TENANT#<tenant>`, `GSI1SK` = `GSI2SK` = `<created_at, 13 digits>#<run_id>`, `GSI2PK` = `ALL`, `ev` (the history of the header's writes), `J` (the journal: step records held back until the run's end, written by `end_run`; `journal` module) |
//! | step record | `RUN#<run_id>` | `S#<step>` | `ver` (N), `body` (`StepRecord` JSON without `step` and `version`), `cseq` (creation order), `ev` (the step's history, see below) |
//! | other history | `RUN#<run_id>` | `E#<seq>` | `ev` (`append_events` only) |
//! | idempotency key | `IDEM#<tenant, `%`/`#` escaped>#<key>` | `I` | `run_id`, `body_hash`, `created_at` (N, ms), `ttl` (N, s) |
//! | webhook id | `WH#<id>` | `W` | `seen_at` (N, ms), `ttl` (N, s) |
//! | stats bucket | `STATS#<tenant, escaped>` | `<hour, 13 digits>#<workflow>#<step>#<model>#<prompt version>` (parts escaped; step, model and prompt version empty for the run bucket) | `T`, `W`, `HR` (N), `ST`, `M`, `PV`, `K` (step kind), `O` (N, step order), and one number per counter (`started`, `succeeded`, `e.timeout`, `l.37`, `usd`, `t.input`, …: `switchyard_core::stats`) |
//! | stats ends item | `STATS#<tenant, escaped>` | `<hour, 13 digits>#<workflow>#*` | `T`, `W`, `HR` (N), `L` = `ends`, `D.<id>` (the JSON array `[kind, order, step, model, prompt version]` per bucket), and `<id>.<counter>` numbers (`id` = `r` for the run bucket; `buckets` module docs) |
//!
//! - **Packing**: a `body` or an event batch is a string while short and otherwise deflated
//!   against a preset dictionary of Switchyard's own JSON (`packing`: binary, marked by its
//!   first byte; items written before it hold plain deflate and still read), because every
//!   write bills the whole item by the started KB.
//! - **Journal**: the records a worker held back until the run's end (the latest states of
//!   steps whose transitions were free to repeat: `StateStore::end_run`'s `steps`) are one packed entry of the
//!   header's `J` list, appended by the end write itself, their history in the same write's
//!   `ev` batch: one header write instead of one item write per step. `load` merges them
//!   with the step items (`journal::merge_journal`). A later write of such a record finds no
//!   step item, checks the journal and puts one at the next version (`attribute_not_exists`),
//!   so a second writer of the same version still conflicts. Past `JOURNAL_MAX_BYTES` (64 KiB,
//!   the entry and the records' history) an end is refused (`Invalid`), never split; the
//!   engine holds at most 48 KiB of JSON.
//! - **Versions**: `ver` is what conditions compare (`ver = :read`); the store writes
//!   `read + 1` and returns it. Header and step updates `SET body, ver` (and `ev`) only.
//! - **History**: every write that carries events stores them as one *batch*, the string
//!   `<seq> <JSON array>`, where `seq` is a UUIDv7 (32 hex digits) made at write time, appended
//!   to the `ev` list of the item it writes — the header's own list for a header write
//!   (`create_run`, `put_header`, `end_run`), the step item's for a step write — with
//!   `list_append` in the same `PutItem`/`UpdateItem`: a change and its history are one item
//!   write, never a transaction (which bills every item twice). Only `append_events` (history
//!   that belongs to no write: a notification's delivery) puts an `E#<seq>` item. `events()`
//!   queries the partition and sorts the batches by `seq`: append order, as long as one
//!   process writes a run's history at a time (the lease), because UUIDv7s of one process are
//!   ordered; writers on different machines are ordered by their clocks (milliseconds; they
//!   race anyway). Runs written before this layout keep their `E#` items; both are read.
//! - **Existence**: a step write of version 0 and `append_events` must not create items for a
//!   run that does not exist; they read the header first (one strongly consistent `GetItem`),
//!   skipped for runs this store has seen exist: runs are never deleted, so once seen, a run
//!   exists (the cache is per process and bounded).
//! - **Lease**: read the header, decide in Rust, write it back on `ver = :read`. The version
//!   condition alone makes the check exact (any header write moves `ver`); a moved version is
//!   re-read a few times before it is a `Conflict`.
//! - **Expiry**: idempotency keys (24 h, `IDEMPOTENCY_TTL_MS`) and webhook ids
//!   ([`WEBHOOK_ID_TTL_MS`]) carry `ttl`, but DynamoDB deletes expired items late (up to days),
//!   so expiry is decided by the write's condition (`attribute_not_exists(PK) OR created_at <=
//!   :expired`); TTL only cleans up. `ttl` is an hour past the expiry, so clock skew never lets
//!   DynamoDB delete a key that is still live.
//! - **Listing**: `Query` on `by_tenant` (one tenant) or `all_runs` (operators), newest first
//!   (`ScanIndexForward = false`; ties by run id, descending). The indexes project only
//!   `workflow`, which never changes: a header update touches no indexed or projected
//!   attribute, so it writes no index item (projecting `status`/`updated_at` would add a write
//!   per index to every lease take and status change). The page's rows are then read from their
//!   headers (`BatchGetItem`, eventually consistent, ½ read unit each), where the status filter
//!   is applied; the workflow filter is a `FilterExpression` on the index. The adapter keeps
//!   querying until the page is full, plus one row to know whether another page follows.
//!   `remaining` is `None` (it would mean reading every row).
//! - **Cursor**: `v1.` + base64url(JSON of the last row's `created_at` and run id, and the
//!   query's tenant and filters). A cursor that does not decode, or was made for another tenant
//!   or other filters, is `StoreError::Invalid`. It is not signed: the query always runs on
//!   the caller's own index partition (`TENANT#<caller>`), so a forged position can only skip
//!   within the caller's own runs, never into another tenant's.
//! - **Stats buckets** (docs/architecture.md, "Stats aggregates"): counters only ever grow by
//!   `UpdateItem … ADD` right after the write that ends a run (the run bucket and one per
//!   step, all to the workflow-hour's ends item in one update; within a worker batch, after
//!   the batch: `hold_figures` / `flush_figures`): not in a transaction with it, so they are
//!   added at most once (`add_figures`: a crash between the two writes leaves a run out of
//!   the figures; its records are exact). Creating a run adds nothing: `started` is not
//!   counted here (the stats count the runs in flight from the `active` index). A window is one `Query` on `STATS#<tenant>` with
//!   `SK BETWEEN` the hours (no index); every tenant at once is refused (`Invalid`).
//! - `all_runs` has one partition (`GSI2PK = ALL`), written once per run (at creation): about
//!   a thousand new runs a second across all tenants before it needs sharding (`ALL#<n>`, with
//!   the listing merging the shards).
//!
//! # The table (for `template.yaml`)
//!
//! [`create_table`] makes it; [`TABLE_SCHEMA`] is the same table as CloudFormation properties,
//! to copy into a template:
//!
//! ```yaml
#![doc = include_str!("../dynamo_table.yaml")]
//! ```
//!
//! # Layout
//!
//! This file: the store, keys and attribute values, the runs known to exist, and the
//! `StateStore` port; `items` (item shapes, read back), `packing` (text or deflated against
//! the dictionary), `writes` (conditional writes and
//! transactions), `buckets` (stats buckets), `reads`, `listing` (the indexes, cursors) and
//! `table` ([`create_table`]).

use crate::error::{dynamo_error, dynamo_failed_condition, DynamoItem, FailedCondition};
use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{BuildError, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, KeysAndAttributes, Projection, ProjectionType, Put,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
    TimeToLiveStatus, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_core::ports::{
    check_held, ActivePage, IdempotencyClaim, ListScope, RunPage, RunQuery, RunSummary, StateStore,
    IDEMPOTENCY_TTL_MS, MAX_LIST_LIMIT, MAX_STEPS_PER_WRITE,
};
use switchyard_core::state::{HistoryEvent, Lease, RunHeader, RunSnapshot, RunStatus, StepRecord};
use switchyard_core::stats::{self, Bucket, BucketKey, BucketQuery, Counters};
use switchyard_core::{Millis, StoreError};

mod buckets;
mod items;
mod journal;
mod listing;
mod packing;
mod reads;
mod table;
mod writes;

use buckets::*;
use items::*;
use journal::*;
use listing::*;
pub use table::create_table;
use writes::*;

/// The table as CloudFormation `AWS::DynamoDB::Table` properties: what [`create_table`] makes.
pub const TABLE_SCHEMA: &str = include_str!("../dynamo_table.yaml");

/// The index of one tenant's runs (`GSI1PK`, `GSI1SK`).
pub const INDEX_BY_TENANT: &str = "by_tenant";
/// The index of every tenant's runs, for operators (`GSI2PK`, `GSI2SK`).
pub const INDEX_ALL_RUNS: &str = "all_runs";
/// The sparse index of runs that have not ended (`GSI3PK`, `GSI3SK`; keys only), which the
/// stuck-run sweep reads.
pub const INDEX_ACTIVE: &str = "active";
/// The one attribute the listing indexes project besides the keys.
pub const INDEX_PROJECTED: &str = "workflow";
/// The TTL attribute (epoch seconds).
pub const TTL_ATTRIBUTE: &str = "ttl";

/// How long a webhook id is remembered: longer than providers retry a delivery (days, not
/// weeks). The embedded store keeps ids forever; both answer "seen" within this window.
pub const WEBHOOK_ID_TTL_MS: Millis = 7 * 24 * 60 * 60 * 1000;

/// `ttl` lies this far past the expiry, so a clock ahead of ours never deletes a live record.
const TTL_SLACK_S: u64 = 3600;
/// Reads of the header before a lease take gives up on a header that keeps changing.
const LEASE_ATTEMPTS: usize = 4;
/// A body that inflates past this is corrupt (an item holds at most 400 KB).
const MAX_BODY: usize = 4 << 20;
/// Run ids remembered as existing before the set starts afresh.
const KNOWN_RUNS_MAX: usize = 10_000;
/// `BatchGetItem` reads at most 100 keys; a listing asks for its rows in such chunks.
const BATCH_GET_MAX: usize = 100;
/// Tries of a `BatchGetItem` whose keys come back unprocessed (throttling).
const BATCH_GET_ATTEMPTS: u32 = 5;

const HEADER_SK: &str = "H";
const ALL_RUNS_PK: &str = "ALL";
/// The one partition of the sparse `active` index.
const ACTIVE_PK: &str = "ACTIVE";
/// A write whose item must not exist yet.
const NEW_ITEM: &str = "attribute_not_exists(PK)";
/// Claims of a key that is free or expired (see [`expiring_put`]).
const IDEMPOTENCY_CONDITION: &str = "attribute_not_exists(PK) OR created_at <= :expired";
const WEBHOOK_ID_CONDITION: &str = "attribute_not_exists(PK) OR seen_at <= :expired";

type Values = HashMap<String, AttributeValue>;

/// [`StateStore`] on one DynamoDB table (layout in the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    known: Arc<KnownRuns>,
    held: Arc<HeldFigures>,
}

/// Run-end figures held while a worker batch is open (`hold_figures`), to be added together
/// at its flush; `open` counts the holders (a process may run several batches at once).
#[derive(Debug, Default)]
struct HeldFigures(Mutex<(usize, Vec<Bucket>)>);

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoStore {
        DynamoStore {
            client,
            table: table.into(),
            known: Arc::default(),
            held: Arc::default(),
        }
    }

    /// The table this store reads and writes.
    pub fn table(&self) -> &str {
        &self.table
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and attribute values

fn run_pk(run_id: &str) -> String {
    format!("RUN#{run_id}")
}

fn step_sk(step: &str) -> String {
    format!("S#{step}")
}

/// `%` and `#` escaped, so `tenant#key` cannot be read two ways (tenant `a#b`, key `c` vs
/// tenant `a`, key `b#c`): one tenant's key must never name another tenant's run.
fn escape(part: &str) -> String {
    part.replace('%', "%25").replace('#', "%23")
}

fn idempotency_pk(tenant: &str, key: &str) -> String {
    format!("IDEM#{}#{key}", escape(tenant))
}

fn tenant_pk(tenant: &str) -> String {
    format!("TENANT#{tenant}")
}

/// The index sort key: zero-padded so strings sort as numbers (13 digits of milliseconds last
/// until the year 2286), then the run id to break ties.
fn index_sk(created_at: Millis, run_id: &str) -> String {
    format!("{created_at:013}#{run_id}")
}

fn item_key(pk: String, sk: impl Into<String>) -> DynamoItem {
    HashMap::from([
        ("PK".to_string(), AttributeValue::S(pk)),
        ("SK".to_string(), AttributeValue::S(sk.into())),
    ])
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn values<const N: usize>(pairs: [(&str, AttributeValue); N]) -> Values {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn attr_s<'a>(item: &'a DynamoItem, name: &str, what: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(StoreError::Corrupt(format!("{what}: no string `{name}`"))),
    }
}

fn attr_n(item: &DynamoItem, name: &str, what: &str) -> Result<u64, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("{what}: `{name}` = {v} is not a version"))),
        _ => Err(StoreError::Corrupt(format!("{what}: no number `{name}`"))),
    }
}

fn to_json<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn from_json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Epoch seconds for `ttl`: the expiry rounded up, plus the slack.
fn ttl_at(expires_ms: Millis) -> AttributeValue {
    n(expires_ms.div_ceil(1000) + TTL_SLACK_S)
}

/// The size of an item as DynamoDB bills it: attribute names and values in UTF-8 bytes; a
/// number 1 byte per two significant digits plus 1; a list or map 3 bytes plus 1 per element
/// plus its elements; booleans and nulls 1 byte. A write costs one unit per started 1,024
/// bytes (an update: of the larger of the item before and after), a strongly consistent read
/// one unit per started 4 KB.
pub fn item_size(item: &DynamoItem) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(num) => number_size(num),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::L(l) => 3 + l.iter().map(|e| 1 + value_size(e)).sum::<usize>(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, e)| 1 + k.len() + value_size(e))
                .sum::<usize>()
        }
        AttributeValue::Ss(v) => v.iter().map(String::len).sum(),
        AttributeValue::Ns(v) => v.iter().map(|x| number_size(x)).sum(),
        AttributeValue::Bs(v) => v.iter().map(|b| b.as_ref().len()).sum(),
        _ => 0,
    }
}

fn number_size(num: &str) -> usize {
    let digits: String = num.chars().filter(char::is_ascii_digit).collect();
    let significant = digits
        .trim_start_matches('0')
        .trim_end_matches('0')
        .len()
        .max(1);
    significant.div_ceil(2) + 1
}

// ---------------------------------------------------------------------------------------------
// Figures held for a batch

impl HeldFigures {
    fn open(&self) {
        if let Ok(mut held) = self.0.lock() {
            held.0 += 1;
        }
    }

    /// Keeps `buckets` for the flush if a batch is open (`false`: add them now).
    fn hold(&self, buckets: &[Bucket]) -> bool {
        match self.0.lock() {
            Ok(mut held) if held.0 > 0 => {
                held.1.extend_from_slice(buckets);
                true
            }
            _ => false,
        }
    }

    /// Everything held so far (also what other open batches held: it is written either way),
    /// and one holder fewer.
    fn close(&self) -> Vec<Bucket> {
        match self.0.lock() {
            Ok(mut held) => {
                held.0 = held.0.saturating_sub(1);
                std::mem::take(&mut held.1)
            }
            Err(_) => Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Runs known to exist

/// Run ids this process has seen exist. Runs are never deleted, so a hit is always right; the
/// set starts afresh when full rather than tracking age (a miss costs one read).
#[derive(Debug, Default)]
struct KnownRuns(Mutex<HashSet<String>>);

impl KnownRuns {
    fn contains(&self, run_id: &str) -> bool {
        self.0.lock().map(|s| s.contains(run_id)).unwrap_or(false)
    }

    fn insert(&self, run_id: &str) {
        if let Ok(mut s) = self.0.lock() {
            if s.len() >= KNOWN_RUNS_MAX {
                s.clear();
            }
            s.insert(run_id.to_string());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The port

#[async_trait]
impl StateStore for DynamoStore {
    async fn create_run(&self, h: &RunHeader, events: &[HistoryEvent]) -> Result<(), StoreError> {
        // One `PutItem`: the header with its first events in its `ev` list. No `started`:
        // the stats count the runs in flight from the `active` index instead, which saves a
        // write per run (docs/architecture.md, "The write layout on DynamoDB").
        let mut item = header_item(h)?;
        if !events.is_empty() {
            let batch = event_batch(&new_seq(), &h.run_id, events)?;
            item.insert("ev".into(), AttributeValue::L(vec![batch]));
        }
        match self.commit(Write::put_new(item)).await? {
            Written::Yes => {
                self.known.insert(&h.run_id);
                Ok(())
            }
            Written::ConditionFailed(_) => Err(StoreError::Conflict(format!(
                "run {} already exists",
                h.run_id
            ))),
        }
    }

    async fn load(&self, run_id: &str) -> Result<Option<RunSnapshot>, StoreError> {
        // `SK >= H`: the header and the `S#` steps, not the `E#` history (`E` < `H` < `S`).
        let items = self
            .partition(run_id, Some(HEADER_SK), "SK, body, ver, cseq, J")
            .await?;
        let mut header = None;
        let mut steps = Vec::new();
        let mut journal = Vec::new();
        for item in &items {
            match attr_s(item, "SK", &format!("an item of run {run_id}"))? {
                HEADER_SK => {
                    header = Some(read_header(item, run_id)?);
                    journal = read_journal(item, run_id)?;
                }
                _ => steps.push(read_step(item, run_id)?),
            }
        }
        let Some(header) = header else {
            return Ok(None);
        };
        self.known.insert(run_id);
        Ok(Some(RunSnapshot {
            header,
            steps: merge_journal(steps, journal),
        }))
    }

    async fn load_header(&self, run_id: &str) -> Result<Option<RunHeader>, StoreError> {
        self.header_item(run_id)
            .await?
            .map(|item| read_header(&item, run_id))
            .transpose()
    }

    async fn put_header(&self, h: &RunHeader, events: &[HistoryEvent]) -> Result<u64, StoreError> {
        let new_version = h.version + 1;
        match self
            .commit(Self::header_update(h, new_version, events, None)?)
            .await?
        {
            Written::Yes => Ok(new_version),
            Written::ConditionFailed(Some(_)) => Err(StoreError::Conflict(format!(
                "run {} is not at version {}",
                h.run_id, h.version
            ))),
            Written::ConditionFailed(None) => {
                Err(StoreError::NotFound(format!("run {}", h.run_id)))
            }
        }
    }

    async fn end_run(
        &self,
        h: &RunHeader,
        events: &[HistoryEvent],
        buckets: &[Bucket],
        steps: &[(&StepRecord, &[HistoryEvent])],
    ) -> Result<u64, StoreError> {
        // The header write ends the run exactly once (its version condition); the run's
        // figures are added after it, in one `UpdateItem ADD` of the workflow-hour's ends
        // item, not in a transaction with it (docs/architecture.md, "The write layout on
        // DynamoDB"). The records the worker held back ride in the same item write: the
        // header's journal, their history before the end's in the header's `ev`.
        check_held(steps)?;
        let new_version = h.version + 1;
        let (journal, history) = Self::journal(h, events, steps)?;
        match self
            .commit(Self::header_update(h, new_version, &history, journal)?)
            .await?
        {
            Written::Yes => {
                if !self.held.hold(buckets) {
                    self.add_figures(&h.run_id, buckets).await;
                }
                Ok(new_version)
            }
            Written::ConditionFailed(Some(_)) => Err(StoreError::Conflict(format!(
                "run {} is not at version {}",
                h.run_id, h.version
            ))),
            Written::ConditionFailed(None) => {
                Err(StoreError::NotFound(format!("run {}", h.run_id)))
            }
        }
    }

    fn counts_started(&self) -> bool {
        false
    }

    fn hold_figures(&self) {
        self.held.open();
    }

    async fn flush_figures(&self) -> Result<(), StoreError> {
        let held = self.held.close();
        if !held.is_empty() {
            // Summed per bucket first: one update per workflow-hour's ends item for them all.
            let runs = held.iter().filter(|b| b.key.step.is_empty()).count();
            self.add_figures(&format!("({runs} runs held)"), &stats::merge(held))
                .await;
        }
        Ok(())
    }

    async fn stats_buckets(&self, q: &BucketQuery) -> Result<Vec<Bucket>, StoreError> {
        let Some(tenant) = q.scope.tenant() else {
            return Err(StoreError::Invalid(
                "stats of every tenant at once are not kept on DynamoDB (buckets are per \
                 tenant): ask for one tenant's"
                    .into(),
            ));
        };
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("PK = :pk AND SK BETWEEN :from AND :to")
                .expression_attribute_values(":pk", s(stats_pk(tenant)))
                .expression_attribute_values(":from", s(format!("{:013}#", q.from_hour)))
                .expression_attribute_values(":to", s(format!("{:013}#~", q.to_hour)))
                .set_exclusive_start_key(start.take());
            if let Some(w) = &q.workflow {
                query = query
                    .filter_expression("W = :w")
                    .expression_attribute_values(":w", s(w));
            }
            let page = query.send().await.map_err(|e| dynamo_error("Query", e))?;
            for item in page.items() {
                out.extend(read_buckets(item)?);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        // A run bucket's `started` and its end figures live in two items.
        Ok(stats::merge(out))
    }

    async fn acquire_lease(
        &self,
        run_id: &str,
        lease: &Lease,
        now: Millis,
    ) -> Result<RunHeader, StoreError> {
        for _ in 0..LEASE_ATTEMPTS {
            let item = self
                .header_item(run_id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("run {run_id}")))?;
            let mut h = read_header(&item, run_id)?;
            if let Some(held) = &h.lease {
                if held.until > now && held.owner != lease.owner {
                    let msg = format!(
                        "lease of run {run_id} held by {} until {}",
                        held.owner, held.until
                    );
                    return Err(StoreError::Conflict(msg));
                }
            }
            h.lease = Some(lease.clone());
            if !h.status.is_terminal() {
                h.status = RunStatus::Running;
            }
            h.updated_at = now;
            let new_version = h.version + 1;
            // Another write moved the version between the read and this write: read again.
            if self
                .commit(Self::header_update(&h, new_version, &[], None)?)
                .await?
                == Written::Yes
            {
                h.version = new_version;
                return Ok(h);
            }
        }
        Err(StoreError::Conflict(format!(
            "run {run_id}: the header kept changing while the lease was taken"
        )))
    }

    async fn put_step(
        &self,
        run_id: &str,
        rec: &StepRecord,
        events: &[HistoryEvent],
    ) -> Result<u64, StoreError> {
        if rec.version == 0 {
            self.ensure_run(run_id).await?;
        }
        let conflict = || {
            StoreError::Conflict(format!(
                "step {} of run {run_id} is not at version {}",
                rec.step, rec.version
            ))
        };
        match self.commit(Self::step_write(run_id, rec, events)?).await? {
            Written::Yes => Ok(rec.version + 1),
            // No step item: the record may be in the header's journal (held until the run's
            // end), where the version read is then checked.
            Written::ConditionFailed(None) if rec.version > 0 => {
                let journal = self.journal_only(run_id).await?;
                let Some(cseq) = journal.get(&(rec.step.clone(), rec.version)) else {
                    return Err(conflict());
                };
                let write = Self::step_out_of_journal(run_id, rec, events, cseq)?;
                match self.commit(write).await? {
                    Written::Yes => Ok(rec.version + 1),
                    Written::ConditionFailed(_) => Err(conflict()),
                }
            }
            Written::ConditionFailed(_) => Err(conflict()),
        }
    }

    async fn put_steps(
        &self,
        run_id: &str,
        writes: &[(&StepRecord, &[HistoryEvent])],
    ) -> Result<Vec<u64>, StoreError> {
        if writes.is_empty() || writes.len() > MAX_STEPS_PER_WRITE {
            return Err(StoreError::Invalid(format!(
                "put_steps takes 1 to {MAX_STEPS_PER_WRITE} records, not {}",
                writes.len()
            )));
        }
        if let [(rec, events)] = writes {
            return Ok(vec![self.put_step(run_id, rec, events).await?]);
        }
        if writes.iter().any(|(rec, _)| rec.version == 0) {
            self.ensure_run(run_id).await?;
        }
        // One transaction: every condition holds and every record is written, or none is. The
        // SDK gives it an idempotency token, so its own retry after a lost answer is answered
        // as the first try was instead of failing on the conditions it already moved. A
        // failed condition may be a record in the header's journal (held until the run's
        // end): written once more, as a step item that must not exist yet.
        let mut journal: HashMap<(String, u64), String> = HashMap::new();
        for first in [true, false] {
            let mut items = Vec::with_capacity(writes.len());
            for (rec, events) in writes {
                let write = match journal.get(&(rec.step.clone(), rec.version)) {
                    Some(cseq) => Self::step_out_of_journal(run_id, rec, events, cseq)?,
                    None => Self::step_write(run_id, rec, events)?,
                };
                items.push(write.transact_item(&self.table)?);
            }
            let res = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await;
            match outcome("TransactWriteItems", res)? {
                Written::Yes => return Ok(writes.iter().map(|(r, _)| r.version + 1).collect()),
                Written::ConditionFailed(_) if first => {
                    journal = self.journal_only(run_id).await?;
                    if !writes
                        .iter()
                        .any(|(r, _)| journal.contains_key(&(r.step.clone(), r.version)))
                    {
                        break;
                    }
                }
                Written::ConditionFailed(_) => break,
            }
        }
        Err(StoreError::Conflict(format!(
            "steps {} of run {run_id}: one is not at the version read",
            writes
                .iter()
                .map(|(r, _)| r.step.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    async fn active_runs(
        &self,
        created_from: Millis,
        created_before: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ActivePage, StoreError> {
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        let start = after.map(decode_active_cursor).transpose()?;
        let mut ids = Vec::new();
        let mut next = start.map(|(at, id)| active_key(at, &id));
        // Keys only, oldest first, from `created_from` up to `created_before`; the headers are
        // then read in batches (an ended run may linger in the index for moments: it is left
        // out).
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(INDEX_ACTIVE)
                .key_condition_expression("GSI3PK = :pk AND GSI3SK BETWEEN :from AND :before")
                .expression_attribute_values(":pk", s(ACTIVE_PK))
                .expression_attribute_values(":from", s(index_sk(created_from, "")))
                .expression_attribute_values(":before", s(index_sk(created_before, "~")))
                .scan_index_forward(true)
                .limit(i32::try_from(limit + 1 - ids.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(next.take())
                .send()
                .await
                .map_err(|e| dynamo_error("Query", e))?;
            for item in out.items() {
                let sk = attr_s(item, "GSI3SK", "an entry of index active")?;
                let (at, id) = sk.split_once('#').unwrap_or((sk, ""));
                ids.push((at.parse::<Millis>().unwrap_or(0), id.to_string()));
            }
            next = out.last_evaluated_key;
            if next.is_none() || ids.len() > limit {
                break;
            }
        }
        let more = ids.len() > limit;
        ids.truncate(limit);
        let cursor = more
            .then(|| ids.last().map(|(at, id)| encode_active_cursor(*at, id)))
            .flatten();
        let ids: Vec<String> = ids.into_iter().map(|(_, id)| id).collect();
        let mut runs = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH_GET_MAX) {
            let mut found = self.headers(chunk).await?;
            runs.extend(chunk.iter().filter_map(|id| found.remove(id)));
        }
        runs.retain(|h| !h.status.is_terminal());
        Ok(ActivePage { runs, cursor })
    }

    async fn append_events(&self, run_id: &str, events: &[HistoryEvent]) -> Result<(), StoreError> {
        let Some(item) = Self::history(run_id, events)? else {
            return Ok(());
        };
        self.ensure_run(run_id).await?;
        match self.commit(Write::put_new(item)).await? {
            Written::Yes => Ok(()),
            Written::ConditionFailed(_) => Err(StoreError::Conflict(format!(
                "events of run {run_id}: the sequence number is taken"
            ))),
        }
    }

    async fn events(&self, run_id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        let mut batches = Vec::new();
        for item in self.partition(run_id, None, "ev").await? {
            read_batches(&item, run_id, &mut batches)?;
        }
        // Stable: the events of one batch keep their order.
        batches.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(batches.into_iter().flat_map(|(_, evs)| evs).collect())
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        let limit = query.limit.clamp(1, MAX_LIST_LIMIT);
        let after = query
            .cursor
            .as_deref()
            .map(|c| Cursor::decode(c, query))
            .transpose()?;
        let index = Index::of(&query.scope);
        let mut start = after.as_ref().map(|c| index.start_after(c));
        // One row past the page tells whether another page follows.
        let mut rows: Vec<RunSummary> = Vec::with_capacity(limit + 1);
        'pages: loop {
            let want = (limit + 1 - rows.len()).min(BATCH_GET_MAX);
            let (ids, next) = self
                .index_page(&index, query.workflow.as_deref(), start, want)
                .await?;
            let mut headers = self.headers(&ids).await?;
            for id in &ids {
                // Missing: the index saw the header before this read did; the next page will.
                let Some(h) = headers.remove(id) else {
                    continue;
                };
                if query.status.is_none_or(|st| st == h.status) {
                    rows.push(summary(h));
                    if rows.len() > limit {
                        break 'pages;
                    }
                }
            }
            start = next;
            if start.is_none() {
                break;
            }
        }
        let cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last()
                .map(|last| {
                    Cursor {
                        t: query.scope.tenant().map(str::to_string),
                        s: query.status,
                        w: query.workflow.clone(),
                        at: last.created_at,
                        id: last.run_id.clone(),
                    }
                    .encode()
                })
                .transpose()?
        } else {
            None
        };
        Ok(RunPage {
            runs: rows,
            cursor,
            remaining: None,
        })
    }

    async fn claim_idempotency(
        &self,
        tenant: &str,
        key: &str,
        body_hash: &str,
        run_id: &str,
        now: Millis,
    ) -> Result<IdempotencyClaim, StoreError> {
        let mut item = item_key(idempotency_pk(tenant, key), "I");
        item.extend([
            ("run_id".to_string(), s(run_id)),
            ("body_hash".to_string(), s(body_hash)),
            ("created_at".to_string(), n(now)),
            (TTL_ATTRIBUTE.to_string(), ttl_at(now + IDEMPOTENCY_TTL_MS)),
        ]);
        let old = match self
            .commit(expiring_put(
                item,
                IDEMPOTENCY_CONDITION,
                now,
                IDEMPOTENCY_TTL_MS,
            ))
            .await?
        {
            Written::Yes => return Ok(IdempotencyClaim::New),
            Written::ConditionFailed(old) => old,
        };
        let what = format!("idempotency key {key:?} of tenant {tenant}");
        let old = old
            .ok_or_else(|| StoreError::Conflict(format!("{what}: changed while claimed, retry")))?;
        Ok(IdempotencyClaim::Existing {
            run_id: attr_s(&old, "run_id", &what)?.to_string(),
            same_body: attr_s(&old, "body_hash", &what)? == body_hash,
        })
    }

    async fn record_webhook_id(&self, id: &str, now: Millis) -> Result<bool, StoreError> {
        let mut item = item_key(format!("WH#{id}"), "W");
        item.extend([
            ("seen_at".to_string(), n(now)),
            (TTL_ATTRIBUTE.to_string(), ttl_at(now + WEBHOOK_ID_TTL_MS)),
        ]);
        let written = self
            .commit(expiring_put(
                item,
                WEBHOOK_ID_CONDITION,
                now,
                WEBHOOK_ID_TTL_MS,
            ))
            .await?;
        Ok(written == Written::Yes)
    }
}

/// A put that succeeds if the item is absent or expired at `now` (`condition` compares its
/// time with `:expired` = `now - ttl_ms`): an expired record that DynamoDB has not deleted yet
/// counts as absent.
fn expiring_put(item: DynamoItem, condition: &'static str, now: Millis, ttl_ms: Millis) -> Write {
    match now.checked_sub(ttl_ms) {
        Some(expired) => Write::Put {
            item,
            condition,
            values: values([(":expired", n(expired))]),
        },
        // Nothing written since the epoch can have expired yet.
        None => Write::put_new(item),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
    use aws_sdk_dynamodb::primitives::Blob;
    use aws_sdk_dynamodb::types::error::{
        ConditionalCheckFailedException, TransactionCanceledException,
    };
    use aws_sdk_dynamodb::types::CancellationReason;
    use aws_sdk_s3::primitives::SdkBody;
    use serde_json::Value;
    use switchyard_core::state::EventKind;

    fn raw(status: u16) -> HttpResponse {
        HttpResponse::new(status.try_into().unwrap(), SdkBody::empty())
    }

    fn old_item() -> DynamoItem {
        item_key(run_pk("r1"), HEADER_SK)
    }

    /// A run's end buckets go to one ends item per workflow-hour, in one update unless they
    /// hold more than `MAX_ADDS` counters; read back (with a run bucket item holding its
    /// `started`), they are the buckets that were added, summed per key.
    #[test]
    fn end_buckets_round_trip_through_one_ends_item() {
        let key = |step: &str, model: &str| BucketKey {
            tenant: "t#1".into(),
            workflow: "sum#mary".into(),
            hour: 3_600_000,
            step: step.into(),
            model: model.into(),
            prompt_version: if step.is_empty() { "" } else { "v2" }.into(),
        };
        let bucket = |step: &str, model: &str, kind: &str, ord: u32, counters: &[(&str, f64)]| {
            let mut c = Counters::default();
            for (n, v) in counters {
                c.add(n, *v);
            }
            Bucket {
                key: key(step, model),
                kind: kind.into(),
                ord,
                counters: c,
            }
        };
        let run = bucket(
            "",
            "",
            "",
            0,
            &[("succeeded", 1.0), ("l.40", 1.0), ("usd", 0.35)],
        );
        // Any characters in a model name (a quote, a control character) survive.
        let gen = bucket(
            "gen",
            "m/sm\"all\u{1f}",
            "model",
            1,
            &[("executions", 1.0), ("t.input", 120.0)],
        );
        let check = bucket("check", "m/judge", "validate", 2, &[("judge_score", 0.75)]);
        // Applies updates as DynamoDB would: `SET` the descriptions, `ADD` the counters.
        let apply = |item: &mut DynamoItem, buckets: &[Bucket]| {
            let updates = ends_updates(buckets);
            for (key, update, names, vals) in &updates {
                assert_eq!(
                    key.get("SK"),
                    Some(&s(format!("{:013}#sum%23mary#*", 3_600_000)))
                );
                assert!(update.len() < 4096, "{}", update.len());
                item.extend(key.clone());
                for (placeholder, name) in names {
                    let v = &vals[&placeholder.replacen('#', ":", 1)];
                    match (placeholder.starts_with("#c"), item.get(name), v) {
                        (true, Some(AttributeValue::N(old)), AttributeValue::N(add)) => {
                            let sum = old.parse::<f64>().unwrap() + add.parse::<f64>().unwrap();
                            item.insert(name.clone(), AttributeValue::N(sum.to_string()));
                        }
                        _ => {
                            item.insert(name.clone(), v.clone());
                        }
                    }
                }
                for (attr, placeholder) in [("T", ":T"), ("W", ":W"), ("HR", ":HR"), ("L", ":L")] {
                    item.insert(attr.into(), vals[placeholder].clone());
                }
            }
            updates.len()
        };
        let mut item = DynamoItem::new();
        let ends = vec![run.clone(), gen.clone(), check.clone()];
        assert_eq!(apply(&mut item, &ends), 1);
        assert_eq!(apply(&mut item, &ends), 1);
        let mut got = read_buckets(&item).unwrap();
        got.sort_by(|a, b| a.key.cmp(&b.key));
        let mut twice: Vec<Bucket> = stats::merge(ends.iter().chain(&ends).cloned());
        twice.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(got, twice);
        // More counters than one update takes: several updates, each within `MAX_ADDS`
        // counters and DynamoDB's 4 KB expression, each bucket still described.
        let many: Vec<(String, f64)> = (0..700).map(|i| (format!("l.{i}"), 1.0)).collect();
        let refs: Vec<(&str, f64)> = many.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        let long = bucket("long", "m/x", "model", 3, &refs);
        let updates = ends_updates(&[run.clone(), long.clone()]);
        assert!(updates
            .iter()
            .all(|u| u.1.matches(" :c").count() <= MAX_ADDS && u.1.len() < 4096));
        assert_eq!(updates.len(), 5);
        let mut item = DynamoItem::new();
        assert_eq!(apply(&mut item, &[run.clone(), long.clone()]), 5);
        let mut got = read_buckets(&item).unwrap();
        got.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(got, vec![run.clone(), long]);
        // Every counter from its own bucket (a description each): still within 4 KB.
        let singles: Vec<Bucket> = (0..MAX_ADDS as u32 + 10)
            .map(|i| {
                bucket(
                    &format!("s{i}"),
                    "m/x",
                    "model",
                    i + 1,
                    &[("executions", 1.0)],
                )
            })
            .collect();
        let updates = ends_updates(&singles);
        assert_eq!(updates.len(), 2);
        assert!(
            updates.iter().all(|u| u.1.len() < 4096),
            "{}",
            updates[0].1.len()
        );
        // A counter without a description is corrupt, not dropped.
        item.insert("zzzzzzzz.usd".into(), n(1));
        assert!(read_buckets(&item).is_err());
    }

    /// A header's body leaves out what its key and `ver` hold (`run_id`, `version`, a false
    /// `cancel_requested`), a step's its name and version; both read back whole. Bodies
    /// written before (the whole JSON, as text or plain deflate) read back the same.
    #[test]
    fn bodies_leave_out_what_the_keys_hold_and_old_bodies_still_read() {
        let h: RunHeader = serde_json::from_value(serde_json::json!({
            "run_id": "run_0193", "tenant": "acme",
            "workflow": {"name": "w", "version": "1", "hash": "ab"},
            "status": "pending", "input": {"kind": "inline", "value": {"text": "hello"}},
            "created_at": 5, "updated_at": 5, "version": 1,
        }))
        .unwrap();
        let item = header_item(&h).unwrap();
        let body = |item: &DynamoItem| -> String {
            match item.get("body") {
                Some(AttributeValue::S(t)) => t.clone(),
                Some(AttributeValue::B(b)) => {
                    String::from_utf8(packing::unpack(b.as_ref(), MAX_BODY).unwrap()).unwrap()
                }
                other => panic!("{other:?}"),
            }
        };
        let stored = body(&item);
        for gone in ["run_id", "\"version\":1", "cancel_requested"] {
            assert!(!stored.contains(gone), "{gone} in {stored}");
        }
        assert_eq!(read_header(&item, "run_0193").unwrap(), h);
        let mut cancelling = h.clone();
        cancelling.cancel_requested = true;
        let item = header_item(&cancelling).unwrap();
        assert!(body(&item).contains("\"cancel_requested\":true"));
        assert_eq!(read_header(&item, "run_0193").unwrap(), cancelling);

        let mut rec = StepRecord::pending("fan.b0");
        rec.status = switchyard_core::state::StepStatus::Succeeded;
        rec.attempt = 1;
        rec.version = 3;
        let write = DynamoStore::step_write("run_0193", &rec, &[]).unwrap();
        let Write::Update { values, .. } = write else {
            panic!("a stored record is updated")
        };
        let mut step_item = item_key(run_pk("run_0193"), step_sk("fan.b0"));
        step_item.insert("body".into(), values[":body"].clone());
        step_item.insert("ver".into(), values[":new"].clone());
        step_item.insert("cseq".into(), s("c1"));
        assert!(!body(&step_item).contains("fan.b0"), "{}", body(&step_item));
        let (_, back) = read_step(&step_item, "run_0193").unwrap();
        let mut want = rec.clone();
        want.version = 4;
        assert_eq!(back, want);

        // The whole JSON, as bodies were stored before: as text, and plain-deflated.
        let mut old = h.clone();
        old.version = 7;
        let json = serde_json::to_string(&old).unwrap();
        for stored in [
            AttributeValue::S(json.clone()),
            AttributeValue::B(Blob::new(miniz_oxide::deflate::compress_to_vec(
                json.as_bytes(),
                6,
            ))),
        ] {
            let mut item = old_item();
            item.insert("body".into(), stored);
            item.insert("ver".into(), n(7));
            assert_eq!(read_header(&item, "run_0193").unwrap(), old);
        }
    }

    /// Event batches are stored as text while small and packed past `EVENTS_PACK_FROM`; a
    /// list holding both (and plain deflate, as items written before the dictionary hold)
    /// reads back in order.
    #[test]
    fn event_batches_read_back_as_text_or_deflated() {
        let small = vec![HistoryEvent::run(1, EventKind::RunCreated, Value::Null)];
        let large: Vec<HistoryEvent> = (0..20)
            .map(|i| {
                HistoryEvent::step(
                    i,
                    EventKind::StepStarted,
                    "summarize",
                    1,
                    serde_json::json!({"model": "builtin:summarize", "i": i}),
                )
            })
            .collect();
        let text = event_batch("a1", "r1", &small).unwrap();
        let packed = event_batch("a2", "r1", &large).unwrap();
        assert!(matches!(text, AttributeValue::S(_)), "{text:?}");
        let AttributeValue::B(bytes) = &packed else {
            panic!("a large batch is deflated: {packed:?}")
        };
        let json_len = serde_json::to_string(&large).unwrap().len();
        assert!(
            bytes.as_ref().len() < json_len / 2,
            "{} of {json_len}",
            bytes.as_ref().len()
        );
        let plain = AttributeValue::B(Blob::new(miniz_oxide::deflate::compress_to_vec(
            format!("a3 {}", serde_json::to_string(&large).unwrap()).as_bytes(),
            6,
        )));
        let mut item = old_item();
        item.insert("ev".into(), AttributeValue::L(vec![text, packed, plain]));
        let mut out = Vec::new();
        read_batches(&item, "r1", &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                ("a1".to_string(), small),
                ("a2".to_string(), large.clone()),
                ("a3".to_string(), large)
            ]
        );
        let mut corrupt = old_item();
        corrupt.insert(
            "ev".into(),
            AttributeValue::L(vec![AttributeValue::B(Blob::new(b"not deflate".to_vec()))]),
        );
        let err = read_batches(&corrupt, "r1", &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("does not inflate"), "{err}");
    }

    #[test]
    fn a_failed_condition_is_a_value_with_the_stored_item() {
        let found = ConditionalCheckFailedException::builder()
            .message("The conditional request failed")
            .set_item(Some(old_item()))
            .build();
        let err = SdkError::service_error(
            PutItemError::ConditionalCheckFailedException(found),
            raw(400),
        );
        assert_eq!(
            outcome::<(), _>("PutItem", Err(err)).unwrap(),
            Written::ConditionFailed(Some(old_item()))
        );
        let absent = ConditionalCheckFailedException::builder().build();
        let err = SdkError::service_error(
            UpdateItemError::ConditionalCheckFailedException(absent),
            raw(400),
        );
        assert_eq!(
            outcome::<(), _>("UpdateItem", Err(err)).unwrap(),
            Written::ConditionFailed(None)
        );
    }

    #[test]
    fn a_transaction_reports_the_item_whose_condition_failed() {
        let cancelled = |reasons: Vec<CancellationReason>| {
            let e = TransactionCanceledException::builder()
                .message("Transaction cancelled")
                .set_cancellation_reasons(Some(reasons))
                .build();
            SdkError::service_error(
                TransactWriteItemsError::TransactionCanceledException(e),
                raw(400),
            )
        };
        let none = CancellationReason::builder().code("None").build();
        let failed = CancellationReason::builder()
            .code("ConditionalCheckFailed")
            .set_item(Some(old_item()))
            .build();
        let got = outcome::<(), _>(
            "TransactWriteItems",
            Err(cancelled(vec![failed, none.clone()])),
        );
        assert_eq!(got.unwrap(), Written::ConditionFailed(Some(old_item())));
        // Cancelled because another write was busy with the item: no condition failed, but
        // re-reading is the answer all the same (error.rs reads the reasons in the message).
        let busy = CancellationReason::builder()
            .code("TransactionConflict")
            .build();
        let message = "Transaction cancelled, please refer cancellation reasons for specific reasons [TransactionConflict, None]";
        let meta = ErrorMetadata::builder()
            .code("TransactionCanceledException")
            .message(message)
            .build();
        let e = TransactionCanceledException::builder()
            .message(message)
            .set_cancellation_reasons(Some(vec![busy, none]))
            .meta(meta)
            .build();
        let err = SdkError::service_error(
            TransactWriteItemsError::TransactionCanceledException(e),
            raw(400),
        );
        let got = outcome::<(), _>("TransactWriteItems", Err(err));
        assert!(matches!(got, Err(StoreError::Conflict(_))), "{got:?}");
    }

    #[test]
    fn throttling_on_a_write_is_unavailable_saying_throttled() {
        for code in [
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
            "RequestLimitExceeded",
        ] {
            let meta = ErrorMetadata::builder()
                .code(code)
                .message("slow down")
                .build();
            let err = SdkError::service_error(UpdateItemError::generic(meta), raw(400));
            match outcome::<(), _>("UpdateItem", Err(err)) {
                Err(StoreError::Unavailable(m)) => {
                    assert!(
                        m.starts_with("throttled by DynamoDB") && m.contains("UpdateItem"),
                        "{m}"
                    )
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        let meta = ErrorMetadata::builder()
            .code("TransactionCanceledException")
            .message("Transaction cancelled, please refer cancellation reasons for specific reasons [ThrottlingError, None]")
            .build();
        let err = SdkError::service_error(TransactWriteItemsError::generic(meta), raw(400));
        match outcome::<(), _>("TransactWriteItems", Err(err)) {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.starts_with("throttled by DynamoDB"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_cannot_be_read_two_ways() {
        assert_ne!(idempotency_pk("a#b", "c"), idempotency_pk("a", "b#c"));
        assert_ne!(idempotency_pk("a%23", "c"), idempotency_pk("a#", "c"));
        assert_eq!(idempotency_pk("t1", "k"), "IDEM#t1#k");
        // Zero-padded: string order is number order.
        assert!(index_sk(9, "z") < index_sk(10, "a"));
        assert!(index_sk(20, "c") < index_sk(20, "d"));
    }

    #[test]
    fn item_sizes_follow_the_billing_rules() {
        let item = values([
            ("PK", s("RUN#r1")),                              // 2 + 6
            ("ver", n(12)),                                   // 3 + (1 + 1)
            ("ev", AttributeValue::L(vec![s("ab"), s("c")])), // 2 + 3 + (1 + 2) + (1 + 1)
            ("big", n(1_000_000)), // 3 + (1 + 1): trailing zeros do not count
        ]);
        assert_eq!(item_size(&item), 8 + 5 + 10 + 5);
    }

    #[test]
    fn cursors_name_their_query() {
        let q = RunQuery::new(ListScope::Tenant("t1".into()), 2);
        let c = Cursor {
            t: Some("t1".into()),
            s: None,
            w: None,
            at: 20,
            id: "c".into(),
        };
        let text = c.encode().unwrap();
        assert!(text.starts_with("v1."), "{text}");
        assert_eq!(Cursor::decode(&text, &q).unwrap(), c);
        let other = RunQuery::new(ListScope::Tenant("t2".into()), 2);
        let all = RunQuery::new(ListScope::AllTenants, 2);
        let filtered = RunQuery {
            status: Some(RunStatus::Failed),
            ..q.clone()
        };
        for q in [other, all, filtered] {
            assert!(
                matches!(Cursor::decode(&text, &q), Err(StoreError::Invalid(_))),
                "{q:?}"
            );
        }
        for junk in [
            "page2",
            "v1.",
            "v1.***",
            "v2.e30",
            &format!("v1.{}", URL_SAFE_NO_PAD.encode("{}")),
        ] {
            assert!(
                matches!(Cursor::decode(junk, &q), Err(StoreError::Invalid(_))),
                "{junk}"
            );
        }
    }

    #[test]
    fn the_schema_document_names_what_create_table_makes() {
        for name in [
            "PK",
            "SK",
            "GSI1PK",
            "GSI1SK",
            "GSI2PK",
            "GSI2SK",
            INDEX_BY_TENANT,
            INDEX_ALL_RUNS,
            INDEX_PROJECTED,
            TTL_ATTRIBUTE,
            "PAY_PER_REQUEST",
            "INCLUDE",
        ] {
            assert!(TABLE_SCHEMA.contains(name), "{name}");
        }
    }
}
