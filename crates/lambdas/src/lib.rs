//! Switchyard's four Lambda functions and the wiring they share. Each binary in `src/bin/` is a
//! thin main: init tracing, build the [`Deployment`] once per container, hand each event to an
//! engine use-case.
//!
//! - `intake`: the HTTP API router (`switchyard-api`) under `lambda_http`, behind API Gateway
//!   (HTTP API, payload v2).
//! - `worker`: SQS batches of wake-ups from the work queue → `Engine::handle_work_batch`, runs
//!   advanced until the invocation's deadline, `ReportBatchItemFailures`.
//! - `webhook`: `/hooks/{provider}` on a function URL (same router as `switchyard dev`'s).
//! - `notifier`: SQS batches of notifications → signed, SSRF-guarded delivery.
//!
//! Layout:
//! - [`deploy`]: resources from the environment, settings from Secrets Manager, the ports on
//!   DynamoDB / SQS / S3, the engine.
//! - [`callbacks`]: the built-in async job's callbacks, sent to the webhook function like a
//!   hosted provider's.
//! - [`bundle`]: the workflows compiled into the binary (`build.rs`).
//! - [`poller`]: the SQS event source mapping's loop, for running the handlers outside Lambda.
//! - [`provision`]: the table, queues and bucket on an emulator, for tests and `dev --backend aws`.
//! - [`sqs`]: SQS events into engine records, batch reports into `batchItemFailures`.
//! - [`init_tracing`]: JSON logs (CloudWatch), level from `RUST_LOG`.

pub mod bundle;
pub mod callbacks;
pub mod deploy;
pub mod poller;
pub mod provision;
pub mod sqs;

pub use deploy::{Deployment, Resources};

/// JSON logs, one object per line, with the span fields (run, step, provider, model, error
/// class) the engine records; `RUST_LOG` sets the level (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .try_init();
}
