//! Switchyard engine: the use-cases, generic over the core ports.
//!
//! Layout:
//! - [`Engine`] (this file): the ports and settings one deployment runs with.
//! - [`intake`]: start a run (input schema check, idempotency, pinned definition, first wake-up).
//! - [`uploads`]: client uploads (presigned PUTs, adoption at a run's start, reading for models).
//! - [`worker`]: handle one wake-up — lease the run, plan, execute ready steps concurrently,
//!   checkpoint each, and either end the run or schedule the next wake-up.
//! - `exec`: the step machine's interpreter (`switchyard_core::machine` decides; this does the
//!   I/O each transition asks for and commits its records and history together).
//! - `held`: what a worker's pass holds back for the run's end write (transitions free to
//!   repeat; `Config::hold_free_records`, on in the Lambda functions).
//! - [`webhook`]: provider callbacks (signature, dedupe, callback token) that finish a waiting
//!   step and wake the run.
//! - [`host`]: the one host loop — receive a batch → the worker's or notifier's handler → ack,
//!   give back or dead-letter — that every host runs (driver, pool, the Lambda harness).
//! - [`driver`]: drives one run in process, round by round over the host loop, and delivers
//!   in-process providers' webhooks (`switchyard run`, the engine tests).
//! - [`control`]: approvals, cancellation, taking over a run whose worker died.
//! - [`view`]: the run document the CLI and the HTTP API return.
//! - [`series`]: the stats buckets hour by hour (the console's charts).
//! - [`resend`]: queue again a notification that gave up (same `webhook-id`).
//! - [`registry`]: the providers and workflows a deployment serves.
//! - [`http`]: the axum routes over these use-cases (today: provider callbacks).
//! - `telemetry`: metrics handed to the deployment's sink right after the write they describe.
//! - [`trace`]: the spans of a run (OpenTelemetry GenAI names) and how they join one trace.
//! - [`notifier`]: tell a run's `callback_url` that it ended or waits for a person (signed,
//!   retried, dead-lettered after the last attempt). Its [`notifier::Notifier`] needs only
//!   the state store, the blob store, the clock and the settings: the notifier Lambda function
//!   runs it without an engine; every other host takes [`Engine::notifier`].
//! - [`batch`]: SQS batches as the worker and notifier functions receive them (each run once
//!   per batch, partial batch failures).
//! - [`pool`]: `switchyard dev`'s long-running host loops over the queues, the callback
//!   deliveries and the sweep.
//! - [`recovery`]: the stuck-run sweep (runs due for attention too long ago are woken again).
//! - [`rerun`]: rerun an ended run from a step, single and in bulk.
//! - [`deadletters`]: the queues' dead letters joined to their runs; redrive.
//! - [`stats`]: `switchyard stats` / `GET /v1/stats` from the hourly buckets.
//! - [`settings`]: a deployment's settings read through the `Secrets` seam.
//! - [`error`]: the use-cases' errors, each with its HTTP status and code.
//!
//! Nothing here knows whether the ports are SQLite and files or DynamoDB, SQS and S3.

pub mod batch;
pub mod control;
pub mod deadletters;
pub mod driver;
pub mod error;
mod exec;
mod held;
pub mod host;
pub mod http;
pub mod intake;
pub mod notifier;
pub mod pool;
pub mod recovery;
pub mod registry;
pub mod rerun;
pub mod resend;
pub mod series;
pub mod settings;
pub mod stats;
mod telemetry;
pub mod trace;
pub mod uploads;
pub mod view;
pub mod webhook;
pub mod worker;

pub use error::EngineError;
pub use registry::{Providers, Workflows};

use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use switchyard_core::ports::{BlobStore, Queue, StateStore};
use switchyard_core::state::ValueRef;
use switchyard_core::workflow::Workflow;
use switchyard_core::{Clock, Millis, StoreError};

/// Settings with their documented defaults (docs/architecture.md, "Limits").
#[derive(Debug, Clone)]
pub struct Config {
    /// Identifies this worker in leases (`local:<pid>:<nonce>` locally, the Lambda request id on AWS).
    pub owner: String,
    /// How long a worker's lease on a run lasts.
    pub run_lease_ms: u64,
    /// Added to a step's timeout to get its claim's lease.
    pub step_lease_margin_ms: u64,
    /// Step values whose JSON is larger go to the blob store (DynamoDB items are capped at 400 KB).
    pub inline_limit_bytes: usize,
    /// The run header's input and output above this size go to the blob store: the header is
    /// rewritten at every status change, and DynamoDB bills an update by the larger of the
    /// item before and after it, per KB.
    pub header_inline_bytes: usize,
    /// Base URL providers call back (`<public_url>/hooks/<provider>?…`).
    pub public_url: String,
    /// Secret used to verify provider webhooks, per provider, with `*` as the default.
    pub webhook_secrets: HashMap<String, String>,
    /// Poll an asynchronous job at most this often when its provider gives no hint.
    pub default_poll_ms: u64,
    /// Stop starting new steps this long before the invocation deadline.
    pub deadline_margin_ms: u64,
    /// `whsec_…` secrets that sign outbound notifications, space-separated (each signs while
    /// a rotation is under way). Empty: this deployment sends no notifications.
    pub callback_secrets: String,
    /// `http` and private callback addresses allowed (local development only).
    pub allow_private_callbacks: bool,
    /// Keep every run's provider exchanges as a tape in the blob store, whatever its
    /// workflow says (`SWITCHYARD_TAPES=1`); otherwise only runs of workflows with
    /// `tape: true` keep one.
    pub tapes: bool,
    /// A worker driving a run re-reads its header before starting a step at most this often,
    /// to see a cancellation requested meanwhile (one header read, not a write).
    pub cancel_check_ms: u64,
    /// A run whose only next thing is a timer due within this many ms (a short retry
    /// backoff) waits for it in the invocation instead of a round trip through the queue
    /// (a header write, a delayed message, a receive, a lease take). 0 (the default, and the
    /// embedded backend's: a round trip costs nothing there) never waits. The Lambda functions
    /// use [`WAIT_IN_INVOCATION_MS`].
    pub wait_in_invocation_ms: u64,
    /// A worker holds the records of transitions free to repeat (pure steps, built-in models,
    /// skips, retries' backoffs, repairs) back until the run's end and stores them with it
    /// ([`StateStore::end_run`]'s `steps`, `held`): on DynamoDB one header write instead of
    /// an item write per step; on SQLite one transaction. Any other write of the pass (a
    /// claim, an approval gate, a park) stores them first. Such a pass also takes the run's
    /// lease only with its first write that is not held (`held::Gate`): a pass that only
    /// holds and ends writes the header once. Off by default and on the embedded backend,
    /// where a write costs nothing and `switchyard runs show` should see each step as it
    /// settles (a built-in model may be slowed down on purpose: `delay_ms`); the Lambda
    /// functions turn it on.
    pub hold_free_records: bool,
}

/// The Lambda functions' [`Config::wait_in_invocation_ms`]. Chosen by price: a round trip
/// costs ~$2.7 per million (a header write and a lease take, two reads, three SQS requests;
/// docs/benchmarks.md), a 512 MB arm64 function's time $6.67 per million seconds — so a wait
/// of up to ~0.4 s is cheaper in the invocation; 250 ms leaves room for a function with
/// more memory and for the first attempt's own time.
pub const WAIT_IN_INVOCATION_MS: u64 = 250;

impl Default for Config {
    fn default() -> Self {
        Config {
            owner: format!("worker:{}", std::process::id()),
            run_lease_ms: switchyard_core::recovery::RUN_LEASE_MS,
            step_lease_margin_ms: 5_000,
            inline_limit_bytes: 32 * 1024,
            header_inline_bytes: 1024,
            public_url: "http://127.0.0.1:8080".into(),
            webhook_secrets: HashMap::new(),
            default_poll_ms: 5_000,
            deadline_margin_ms: 2_000,
            callback_secrets: String::new(),
            allow_private_callbacks: false,
            tapes: false,
            cancel_check_ms: 200,
            wait_in_invocation_ms: 0,
            hold_free_records: false,
        }
    }
}

/// One deployment's ports and settings. Cheap to clone (everything is behind `Arc`).
#[derive(Clone)]
pub struct Engine {
    pub store: Arc<dyn StateStore>,
    pub queue: Arc<dyn Queue>,
    pub blobs: Arc<dyn BlobStore>,
    pub clock: Arc<dyn Clock>,
    pub providers: Arc<Providers>,
    pub workflows: Arc<Workflows>,
    pub config: Arc<Config>,
    /// Definitions by content hash, so a worker reads each pinned definition once.
    definitions: Arc<Mutex<HashMap<String, Arc<Workflow>>>>,
    /// Definitions this process stored (or read back), by content hash → (blob key, when), so a
    /// run start pins with no blob write ([`PIN_REFRESH_MS`]).
    pinned: Arc<Mutex<HashMap<String, (String, Millis)>>>,
    /// Offloaded values by content hash: they never change, so a re-plan (which rebuilds the
    /// scope) reads each one once per process (a Lambda container), within a byte budget.
    values: Values,
    /// Where metrics go ([`Engine::with_metrics`]); nowhere by default.
    pub metrics: Arc<dyn switchyard_core::telemetry::MetricSink>,
    /// How spans join a run's trace ([`Engine::with_trace`]); not at all by default.
    pub trace: Arc<dyn trace::TraceContext>,
    /// How a worker waits in the invocation ([`Config::wait_in_invocation_ms`]): on the
    /// runtime's timer by default; tests on a manual clock move it instead ([`Engine::with_waits`]).
    pub waits: Arc<dyn Waits>,
}

/// Waiting until a time of the engine's clock, inside a worker's invocation.
#[async_trait::async_trait]
pub trait Waits: Send + Sync {
    async fn until(&self, clock: &dyn Clock, at: Millis);
}

/// Sleeps on the runtime's timer.
pub struct Sleeps;

#[async_trait::async_trait]
impl Waits for Sleeps {
    async fn until(&self, clock: &dyn Clock, at: Millis) {
        let ms = at.saturating_sub(clock.now_ms());
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

/// How long a process trusts its own pin of a definition before storing it again. A run start
/// stores its compiled definition under its content hash; storing it on every start was one
/// S3 `PutObject` per run (issue 25: $5 per million runs). A process stores each definition
/// once, and again after this long, so a blob store that expires objects (`BlobsExpireDays`,
/// docs/deploy.md) gets a deleted definition back within the hour.
pub const PIN_REFRESH_MS: Millis = 3_600_000;

/// Bytes of offloaded values kept in memory per engine (a Lambda container or a `dev`
/// process). When a new value would pass it, the cache starts over: values are read again
/// rather than ever holding more.
pub const VALUE_CACHE_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Default)]
struct ValueCache {
    values: HashMap<String, Value>,
    bytes: u64,
}

/// Reads offloaded values ([`ValueRef::Blob`]) through a per-process cache (values never change:
/// a blob's key is its content's hash). Shared by an engine and the [`notifier::Notifier`] made
/// from it.
#[derive(Clone)]
pub struct Values {
    blobs: Arc<dyn BlobStore>,
    cache: Arc<Mutex<ValueCache>>,
}

impl Values {
    pub fn new(blobs: Arc<dyn BlobStore>) -> Values {
        Values {
            blobs,
            cache: Arc::new(Mutex::new(ValueCache::default())),
        }
    }

    pub async fn load(&self, r: &ValueRef) -> Result<Value, StoreError> {
        match r {
            ValueRef::Inline { value } => Ok(value.clone()),
            ValueRef::Blob { key, bytes: size } => {
                if let Some(v) = self
                    .cache
                    .lock()
                    .ok()
                    .and_then(|c| c.values.get(key).cloned())
                {
                    return Ok(v);
                }
                let bytes = self.blobs.get(key).await?;
                let value: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("blob {key}: {e}")))?;
                if *size <= VALUE_CACHE_BYTES {
                    if let Ok(mut c) = self.cache.lock() {
                        if c.bytes + size > VALUE_CACHE_BYTES {
                            *c = ValueCache::default();
                        }
                        c.bytes += size;
                        c.values.insert(key.clone(), value.clone());
                    }
                }
                Ok(value)
            }
        }
    }
}

/// A pinned definition read from the blob store by its content hash (no cache).
pub async fn read_definition(blobs: &dyn BlobStore, hash: &str) -> Result<Workflow, StoreError> {
    let bytes = blobs.get(hash).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Corrupt(format!("definition {hash}: {e}")))
}

impl Engine {
    pub fn new(
        store: Arc<dyn StateStore>,
        queue: Arc<dyn Queue>,
        blobs: Arc<dyn BlobStore>,
        clock: Arc<dyn Clock>,
        providers: Arc<Providers>,
        workflows: Arc<Workflows>,
        config: Config,
    ) -> Engine {
        let values = Values::new(blobs.clone());
        Engine {
            store,
            queue,
            blobs,
            clock,
            providers,
            workflows,
            config: Arc::new(config),
            definitions: Arc::new(Mutex::new(HashMap::new())),
            pinned: Arc::new(Mutex::new(HashMap::new())),
            values,
            metrics: Arc::new(switchyard_core::telemetry::NoMetrics),
            trace: Arc::new(trace::NoTraces),
            waits: Arc::new(Sleeps),
        }
    }

    /// With another way to wait in an invocation (a test's manual clock).
    pub fn with_waits(mut self, waits: Arc<dyn Waits>) -> Engine {
        self.waits = waits;
        self
    }

    pub fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Sends the run a wake-up on the work queue, visible after `delay_ms`.
    pub(crate) async fn wake(
        &self,
        run_id: &str,
        reason: switchyard_core::state::WakeReason,
        delay_ms: u64,
    ) -> Result<(), StoreError> {
        let wake = switchyard_core::state::WakeUp {
            run_id: run_id.to_string(),
            reason,
            due_at: Some(self.now().saturating_add(delay_ms)),
        };
        self.queue
            .send(&switchyard_core::ports::Message::Wake(wake), delay_ms)
            .await
    }

    /// Keeps small step values inline and puts large ones in the blob store.
    pub async fn store_value(&self, value: Value) -> Result<ValueRef, StoreError> {
        self.store_value_within(value, self.config.inline_limit_bytes)
            .await
    }

    /// The same for a value the run header holds, under the header's smaller limit.
    pub async fn store_header_value(&self, value: Value) -> Result<ValueRef, StoreError> {
        self.store_value_within(value, self.config.header_inline_bytes)
            .await
    }

    async fn store_value_within(&self, value: Value, limit: usize) -> Result<ValueRef, StoreError> {
        let bytes = serde_json::to_vec(&value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if bytes.len() <= limit {
            return Ok(ValueRef::Inline { value });
        }
        let key = self.blobs.put(&bytes, "application/json").await?;
        Ok(ValueRef::Blob {
            key,
            bytes: bytes.len() as u64,
        })
    }

    pub async fn load_value(&self, r: &ValueRef) -> Result<Value, StoreError> {
        self.values.load(r).await
    }

    /// Stores a compiled definition under its content hash (idempotent), once per process
    /// and [`PIN_REFRESH_MS`]: later starts of the same definition write nothing.
    pub async fn pin_definition(&self, wf: &Workflow) -> Result<String, StoreError> {
        let bytes = serde_json::to_vec(wf).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let hash = switchyard_core::sha256_hex(&bytes);
        let now = self.now();
        let known = self.pinned.lock().ok().and_then(|p| p.get(&hash).cloned());
        if let Some((key, at)) = known {
            if now.saturating_sub(at) < PIN_REFRESH_MS {
                return Ok(key);
            }
        }
        let key = self.blobs.put(&bytes, "application/json").await?;
        if let Ok(mut cache) = self.definitions.lock() {
            cache.insert(key.clone(), Arc::new(wf.clone()));
        }
        if let Ok(mut pinned) = self.pinned.lock() {
            pinned.insert(hash, (key.clone(), now));
        }
        Ok(key)
    }

    /// The definition a run pinned.
    pub async fn definition(&self, hash: &str) -> Result<Arc<Workflow>, StoreError> {
        if let Some(wf) = self
            .definitions
            .lock()
            .ok()
            .and_then(|c| c.get(hash).cloned())
        {
            return Ok(wf);
        }
        let wf = Arc::new(read_definition(self.blobs.as_ref(), hash).await?);
        if let Ok(mut cache) = self.definitions.lock() {
            cache.insert(hash.to_string(), wf.clone());
        }
        Ok(wf)
    }
}
