//! Switchyard's four Lambda functions and the wiring they share. Each binary in `src/bin/` is a
//! thin main: init tracing, build the [`Deployment`] once per container on the first
//! invocation, off the init path ([`ready`]), hand each event to an engine use-case.
//!
//! - `intake`: the HTTP API router (`switchyard-api`) under `lambda_http`, behind API Gateway
//!   (HTTP API, payload v2).
//! - `worker`: SQS batches of wake-ups from the work queue → `Engine::handle_work_batch`, runs
//!   advanced until the invocation's deadline, `ReportBatchItemFailures`.
//! - `webhook`: `/hooks/{provider}` on a function URL (same router as `switchyard dev`'s).
//! - `notifier`: SQS batches of notifications → signed, SSRF-guarded delivery, through a
//!   [`NotifierDeployment`]: a `switchyard_engine::notifier::Notifier` with no engine, so the
//!   function links no workflow compiler, schema validator, templates or provider adapters.
//!
//! Layout:
//! - [`deploy`]: resources from the environment, settings from Secrets Manager, the ports on
//!   DynamoDB / SQS / S3, the engine — wired per function: intake compiles the bundled
//!   workflows (`Deployment::from_env`), the worker and the webhook run pinned definitions and
//!   link no compiler (`Deployment::from_env_pinned`), the notifier has no engine
//!   (`NotifierDeployment::from_env`).
//! - [`callbacks`]: the built-in async job's callbacks, sent to the webhook function like a
//!   hosted provider's.
//! - [`bundle`]: the workflows compiled into the binary (`build.rs`).
//! - [`emf`]: the engine's metrics as CloudWatch Embedded Metric Format lines, flushed at the
//!   end of each invocation ([`with_emf`] for the HTTP functions).
//! - `harness` (cargo feature `harness`, on for this crate's tests and benches only): the
//!   handlers invoked in-process (intake's router, the webhook handler, the worker's batches
//!   through the engine's host loop, `switchyard_engine::host`, playing the SQS event source
//!   mapping) until a run ends: the emulator tests, `make bench-aws`.
//! - [`provision`]: the table, queues and bucket on an emulator, for tests and `dev --backend aws`.
//! - [`ready`]: the deployment (or intake's router) made by the first invocation, so a cold
//!   start's init is the runtime's own.
//! - [`sqs`]: SQS events into engine records, batch reports into `batchItemFailures`.
//! - [`init_tracing`]: JSON logs (CloudWatch), level from `RUST_LOG`; OTLP traces when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set ([`flush_traces`] at the end of each invocation).
//! - [`invocation_deadline`]: the worker's deadline, also under `cargo lambda watch`.

// build.rs links the functions' arm64 release builds without unwind tables, which is safe
// only where nothing unwinds: cargo-lambda builds them with `panic = "abort"`. A build that
// would unwind would turn every panic (one the runtime or a task would have caught) into an
// abort, so it does not compile.
#[cfg(all(unwind_tables_dropped, panic = "unwind"))]
compile_error!(
    "arm64 release builds of switchyard-lambdas are linked without unwind tables \
     (crates/lambdas/build.rs) and must not unwind: build them with `cargo lambda build \
     --release` (panic = \"abort\"), or set CARGO_PROFILE_RELEASE_PANIC=abort"
);

pub mod bundle;
pub mod callbacks;
pub mod deploy;
pub mod emf;
#[cfg(feature = "harness")]
pub mod harness;
pub mod provision;
pub mod ready;
pub mod sqs;

pub use deploy::{Clients, Deployment, NotifierDeployment, Resources};

/// Epoch milliseconds of 2001-01-01: no real invocation deadline is earlier.
const EPOCH_2001_MS: u64 = 978_307_200_000;

/// The invocation's deadline in epoch milliseconds, from the runtime API's
/// `Lambda-Runtime-Deadline-Ms`. Lambda sends an epoch time; `cargo lambda watch` (1.9.2) sends
/// the function timeout as a duration (`600000`), which read as an epoch time is 1970 and would
/// make the worker hand back every run at once ("deadline near"). A value before 2001 is
/// therefore taken as relative to `now_ms`.
pub fn invocation_deadline(header_ms: u64, now_ms: u64) -> u64 {
    if header_ms < EPOCH_2001_MS {
        now_ms.saturating_add(header_ms)
    } else {
        header_ms
    }
}

/// The HTTP functions' router, counting each request as an invocation of `function` (its
/// container's first is the cold start) and writing the metrics (and exporting the spans) it
/// produced when it is done.
pub fn with_emf(
    router: axum::Router,
    emf: std::sync::Arc<emf::EmfSink>,
    function: &'static str,
) -> axum::Router {
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let emf = emf.clone();
            async move {
                emf.invoked(function);
                let resp = next.run(req).await;
                emf.flush();
                flush_traces().await;
                resp
            }
        },
    ))
}

/// JSON logs, one object per line, with the fields of the span they are in (run, step,
/// model…); `RUST_LOG` sets the level (default `info`). With `OTEL_EXPORTER_OTLP_ENDPOINT`
/// set (and the `otel` feature), spans are also exported over OTLP as `switchyard-<function>`
/// (docs/traces.md); without it nothing of OpenTelemetry is built.
pub fn init_tracing(function: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(logs);
    #[cfg(feature = "otel")]
    {
        let otel = match switchyard_otel::Otel::from_env(&format!("switchyard-{function}")) {
            Ok(o) => o.map(switchyard_otel::Otel::install),
            Err(e) => {
                // Logs still work; the reason is logged once the subscriber is in place.
                let _ = registry.try_init();
                tracing::error!(error = %e, "traces are not exported");
                return;
            }
        };
        let _ = registry.with(otel.map(|o| o.layer())).try_init();
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = function;
        let _ = registry.try_init();
    }
}

/// Exports the spans of this invocation (nothing without an OTLP endpoint): a frozen Lambda
/// container exports nothing, so each invocation ends with this.
pub async fn flush_traces() {
    #[cfg(feature = "otel")]
    switchyard_otel::flush().await;
}

#[cfg(test)]
mod tests {
    use super::invocation_deadline;

    #[test]
    fn a_deadline_is_epoch_time_or_a_duration_from_cargo_lambda() {
        let now = 1_796_321_795_566;
        assert_eq!(invocation_deadline(now + 180_000, now), now + 180_000);
        assert_eq!(invocation_deadline(600_000, now), now + 600_000);
    }
}
