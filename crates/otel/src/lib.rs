//! Traces out of Switchyard's binaries (docs/traces.md).
//!
//! The engine creates `tracing` spans whose fields are OpenTelemetry attribute names
//! (`switchyard_core::telemetry::attr`). This crate is the rest, used by the Lambda functions
//! and `switchyard dev`:
//! - [`Otel::from_env`]: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, a tracer provider exporting over OTLP/HTTP
//!   (protobuf) in batches; when it is not, nothing is built and nothing is exported;
//! - [`Otel::layer`]: the `tracing` → OpenTelemetry bridge, for Switchyard's own spans only
//!   (targets `switchyard*` at `INFO`: not every span a dependency makes);
//! - [`W3c`]: the engine's [`TraceContext`] — a span's `traceparent` to keep with a run, and a
//!   kept one made a span's parent — over the W3C trace context propagator;
//! - [`Otel::install`], then [`join`] (an engine's spans join runs' traces), [`flush`]
//!   (exports what is buffered: at the end of each Lambda invocation, as a frozen container
//!   exports nothing) and [`shutdown`] (at the end of a process).
//!
//! Sampling is the SDK's, from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default
//! parent-based, always on): a run's spans follow the decision taken for its intake span.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use opentelemetry_sdk::Resource;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use switchyard_core::telemetry::attr;
use switchyard_engine::notifier::Notifier;
use switchyard_engine::trace::TraceContext;
use switchyard_engine::Engine;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::Layer;

/// The variable that turns export on (the OpenTelemetry SDKs' own).
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The traces-only endpoint, which also turns export on.
pub const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";

/// How long one export may take: `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or
/// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), else 10 s, as the SDKs read them.
fn export_timeout() -> Duration {
    [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.trim().parse::<u64>().ok())
    .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// Whether traces are to be exported: an OTLP endpoint is set (and not empty).
pub fn enabled() -> bool {
    [ENDPOINT_VAR, TRACES_ENDPOINT_VAR]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

/// A tracer provider that exports Switchyard's spans. Cheap to clone.
#[derive(Clone)]
pub struct Otel {
    provider: SdkTracerProvider,
}

/// Why export could not be set up.
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpenTelemetry export: {}", self.0)
    }
}

impl std::error::Error for Error {}

impl Otel {
    /// The OTLP/HTTP exporter the environment asks for, or `None` (nothing built) when no
    /// endpoint is set. `service` names the process (`service.name`) unless
    /// `OTEL_SERVICE_NAME` does. Must be called inside a Tokio runtime: exports are sent on it.
    pub fn from_env(service: &str) -> Result<Option<Otel>, Error> {
        if !enabled() {
            return Ok(None);
        }
        for var in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ] {
            match std::env::var(var) {
                Ok(p) if p.trim() != "http/protobuf" => {
                    // Before any subscriber exists: straight to stderr (the function's log).
                    eprintln!("{var}={p}: only http/protobuf is built in; exporting with it");
                }
                _ => {}
            }
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| Error(format!("no Tokio runtime to send exports on: {e}")))?;
        let client = switchyard_providers::outbound::client_builder()
            .timeout(export_timeout())
            .build()
            .map_err(|e| Error(e.to_string()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_http_client(OnTokio { client, runtime })
            .build()
            .map_err(|e| Error(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource(service))
            .build();
        Ok(Some(Otel { provider }))
    }

    /// Spans exported to `exporter` one by one as they end (tests: the SDK's in-memory
    /// exporter).
    pub fn with_exporter(exporter: impl SpanExporter + 'static, service: &str) -> Otel {
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
            .with_resource(resource(service))
            .build();
        Otel { provider }
    }

    /// The `tracing` layer that turns Switchyard's spans into this provider's spans.
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("switchyard"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(filter())
    }

    /// The engine's way into the trace of a run.
    pub fn trace_context(&self) -> Arc<dyn TraceContext> {
        Arc::new(W3c)
    }

    /// Exports what is buffered and waits for it (without holding up the runtime's threads).
    pub async fn flush(&self) {
        let provider = self.provider.clone();
        let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        if let Ok(Err(e)) = flushed {
            tracing::debug!(error = %e, "exporting spans failed");
        }
    }

    /// Exports what is left and stops (at the end of a process).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "shutting the span exporter down failed");
        }
    }
}

/// The process's exporter, once [`Otel::install`] kept it.
static INSTALLED: OnceLock<Otel> = OnceLock::new();

impl Otel {
    /// Keeps this as the process's exporter: [`installed`], [`join`] and [`flush`] use it.
    pub fn install(self) -> &'static Otel {
        INSTALLED.get_or_init(|| self)
    }
}

/// The process's exporter, if one was installed (an OTLP endpoint is set).
pub fn installed() -> Option<&'static Otel> {
    INSTALLED.get()
}

/// `engine` with its spans joining runs' traces, when this process exports them.
pub fn join(engine: Engine) -> Engine {
    match installed() {
        Some(o) => engine.with_trace(o.trace_context()),
        None => engine,
    }
}

/// The notifier's spans joining runs' traces, when this process exports them (the notifier
/// function runs a [`Notifier`] without an engine).
pub fn join_notifier(notifier: Notifier) -> Notifier {
    match installed() {
        Some(o) => notifier.with_trace(o.trace_context()),
        None => notifier,
    }
}

/// Exports the process's buffered spans, if it exports any: the end of a Lambda invocation.
pub async fn flush() {
    if let Some(o) = installed() {
        o.flush().await;
    }
}

/// Exports what is left and stops, at the end of a process.
pub fn shutdown() {
    if let Some(o) = installed() {
        o.shutdown();
    }
}

/// Switchyard's spans: its crates' targets, at `INFO` and above.
fn filter() -> Targets {
    Targets::new().with_target("switchyard", tracing::Level::INFO)
}

fn resource(service: &str) -> Resource {
    let mut b = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        b = b.with_attribute(KeyValue::new(attr::SERVICE_NAME, service.to_string()));
    }
    if let Ok(f) = std::env::var("AWS_LAMBDA_FUNCTION_NAME") {
        b = b.with_attributes([
            KeyValue::new(attr::FAAS_NAME, f),
            KeyValue::new(attr::CLOUD_PROVIDER, "aws"),
        ]);
    }
    b.build()
}

/// W3C trace context (`traceparent`) over the spans the bridge exports.
pub struct W3c;

impl TraceContext for W3c {
    fn traceparent(&self, span: &tracing::Span) -> Option<String> {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = Carrier::default();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        carrier.0.remove(attr::TRACEPARENT)
    }

    fn set_parent(&self, span: &tracing::Span, traceparent: &str) {
        let carrier = Carrier(HashMap::from([(
            attr::TRACEPARENT.to_string(),
            traceparent.to_string(),
        )]));
        let cx = TraceContextPropagator::new().extract(&carrier);
        if cx.span().span_context().is_valid() {
            // Fails only for a span that is not exported or already started: it keeps the
            // parent it has.
            let _ = span.set_parent(cx);
        }
    }
}

#[derive(Default)]
struct Carrier(HashMap<String, String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The exporter's HTTP client: the workspace's `reqwest`, its requests sent on the Tokio
/// runtime (the SDK's batch processor runs exports on a thread of its own, outside it).
#[derive(Debug)]
struct OnTokio {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnTokio {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let resp = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let mut out = Response::builder().status(resp.status());
            if let Some(h) = out.headers_mut() {
                *h = resp.headers().clone();
            }
            let body = resp.bytes().await?;
            Ok::<_, HttpError>(out.body(body)?)
        });
        sent.await?
    }
}
