//! Switchyard core: everything that *decides*, nothing that does I/O.
//!
//! Layout:
//! - [`workflow`]: the workflow model, the YAML loader with line/column positions, and the
//!   static checks behind `switchyard validate`.
//! - [`planner`]: the run's half of the state machine. `plan(workflow, snapshot, now)` says
//!   which steps to start, skip, expire or poll, when to wake up next, and whether the run
//!   has ended.
//! - [`machine`]: the step machine — one step's lifecycle, sans I/O. `handle(state, event)`
//!   returns what to commit or which piece of I/O to do next; retry, fallback, cascades,
//!   judges, repairs, the budget, deadlines and lost attempts are decided there and only
//!   there (its `settle`, `cascade`, `judge`, `budget`, `retry` and `attempt` modules).
//! - [`refs`]: references to earlier outputs (`${steps.classify.output.label}`), prompt
//!   templates, route conditions.
//! - [`error`]: the one error taxonomy.
//! - [`state`]: persisted shapes (run header, step records, history events, wake-ups).
//! - [`ports`] and [`model`]: the traits adapters implement (`StateStore`, `Queue`,
//!   `BlobStore`, `Provider`) and the normalized model shapes.
//! - [`webhook`]: Standard Webhooks signing and verification (pure HMAC arithmetic).
//! - [`outbound`]: callback URL and address policy (SSRF), delivery decisions, signatures.
//! - [`time`]: `Millis`, `Clock`, and workflow durations.
//! - [`asset`]: kept assets (`data:` URLs read, outputs shaped and relinked to our copy).
//! - [`recovery`]: the recovery bound and which runs a sweep wakes again.
//! - [`telemetry`]: every metric (name, unit, dimensions) and what each write of a run reports;
//!   the trace attribute names.
//! - [`stats`]: the stats aggregates a run adds to its hour buckets, and the latency histogram.
//! - [`upload`]: client uploads (declarations, `{"$upload"}` references, decoding for models).
//! - [`schema`]: JSON Schema checks, without network resolvers.
//! - [`rerun`]: which steps a rerun runs again and which results it reuses.
//! - [`batch`]: an SQS batch of wake-ups, each run handled once per batch.
//! - [`drive`]: what an in-process driver does after a round (return, go again, or wait).
//! - [`presign`]: presigned blob links for backends that serve blobs themselves.
//!
//! No tokio, no AWS, no HTTP: CI fails if `cargo tree -p switchyard-core` shows any of them.

pub mod asset;
pub mod batch;
pub mod drive;
pub mod error;
pub mod machine;
pub mod model;
pub mod outbound;
pub mod planner;
pub mod ports;
pub mod presign;
pub mod recovery;
pub mod refs;
pub mod rerun;
pub mod schema;
pub mod state;
pub mod stats;
pub mod telemetry;
pub mod time;
pub mod upload;
pub mod webhook;
pub mod workflow;

pub use error::{ErrorClass, StepError, StoreError};
pub use time::{Clock, Dur, Millis};

/// sha256 of some bytes, as lowercase hex: the content address used for blobs and definitions.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
