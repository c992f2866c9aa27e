//! The public HTTP API (docs/api.md), as one axum router.
//!
//! The same router is served by `switchyard dev` on the embedded backend and, wrapped by
//! `lambda_http`, by the AWS intake function: nothing here assumes a local process. Handlers
//! only translate HTTP to the engine's use-cases and back; every decision stays in the engine
//! and core.
//!
//! Layout:
//! - [`auth`]: API keys (kept hashed) → tenants, compared in constant time.
//! - [`body`]: JSON-only bodies, parse errors naming the field (400), 415 for non-JSON.
//! - [`extract`]: the tenant from the bearer key, `Idempotency-Key`, query strings, the error
//!   body — what the handler modules share without importing each other.
//! - [`rerun`]: `POST /v1/runs/{id}/rerun` and the bulk `POST /v1/runs/rerun`.
//! - [`ops`]: the operator routes (`/v1/ops/…`, dead letters), behind operator keys.
//! - [`routes`]: the handlers, each documented with `#[utoipa::path]`; the OpenAPI 3.1
//!   document is generated from them, so a route cannot exist without its documentation
//!   (routes are only added through `utoipa_axum`'s `routes!`).
//! - [`ui`]: the run console at `/ui` (server-rendered HTML over the same use-cases, signed
//!   in with the same keys); not part of the OpenAPI document, which describes the JSON API.
//! - this file: the state, [`app`] (the one assembly every serving process uses), the router,
//!   the request-id middleware and the error type.

pub mod auth;
pub mod body;
pub mod extract;
pub mod ops;
pub mod rerun;
pub mod routes;
pub mod ui;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use switchyard_core::telemetry::attr;
use switchyard_engine::trace::TraceContext;
use switchyard_engine::{Engine, EngineError};
use tokio::sync::Notify;
use tracing::Instrument;

pub use auth::{ApiKeys, OperatorKeys};
pub use switchyard_engine::deadletters::Inboxes;

/// Largest request body the API buffers: the run input limit plus room for the envelope.
/// Larger bodies are refused with 413 before they are read.
pub const MAX_BODY_BYTES: usize = switchyard_engine::intake::MAX_INPUT_BYTES + 64 * 1024;

/// The response (and log) header that carries the request id.
pub const REQUEST_ID: &str = "x-request-id";

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub engine: Engine,
    pub keys: Arc<ApiKeys>,
    /// Keys of the operator routes (`/v1/ops/…`); none by default (those routes answer 401).
    pub operators: Arc<OperatorKeys>,
    /// The queues' receiving sides, whose dead letters the operator routes list and redrive.
    pub inboxes: Option<Inboxes>,
    /// Told when a request queued work (a run started, approved, cancelled), so an in-process
    /// worker pool looks at the queue at once instead of at its next idle poll.
    pub kick: Option<Arc<Notify>>,
    /// Whether callback URLs may be `http` or private (`SWITCHYARD_ALLOW_PRIVATE_CALLBACKS=1`).
    pub allow_private_callbacks: bool,
    /// The secret that signs presigned blob links, when this process serves
    /// `/v1/blobs/{key}` (the embedded backend; on AWS, S3 serves presigned links).
    pub blob_links: Option<Arc<Vec<u8>>>,
    /// The OpenAPI document, rendered once.
    doc: Arc<OnceLock<String>>,
}

impl ApiState {
    pub fn new(engine: Engine, keys: ApiKeys) -> ApiState {
        ApiState {
            engine,
            keys: Arc::new(keys),
            operators: Arc::default(),
            inboxes: None,
            kick: None,
            allow_private_callbacks: false,
            blob_links: None,
            doc: Arc::default(),
        }
    }

    /// Opens the operator routes to `operators`, over these queues.
    pub fn with_operators(mut self, operators: OperatorKeys, inboxes: Inboxes) -> ApiState {
        self.operators = Arc::new(operators);
        self.inboxes = Some(inboxes);
        self
    }

    pub(crate) fn kicked(&self) {
        if let Some(k) = &self.kick {
            k.notify_waiters();
            k.notify_one();
        }
    }
}

/// An error as the API answers it: the contract's JSON body and status.
#[derive(Debug)]
pub struct ApiError(pub EngineError);

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.0.status() >= 500 {
            tracing::error!(error_code = self.0.code(), error = %self.0, "request failed");
        }
        let mut resp = switchyard_engine::http::error_response(&self.0);
        if self.0.status() == 401 {
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// What a process serving the API hands it besides the engine and the tenants' keys; every
/// part is optional, so intake, both `switchyard dev` backends and the tests build it the
/// same way and differ only in what they have.
#[derive(Default)]
pub struct Serving {
    /// Operator keys and the queues' receiving sides, for `/v1/ops/…` (none: those routes
    /// answer 401).
    pub operators: Option<(OperatorKeys, Inboxes)>,
    /// An in-process worker pool to tell when a request queued work.
    pub kick: Option<Arc<Notify>>,
    /// The secret that signs `/v1/blobs/{key}` links, when this process serves blobs.
    pub blob_links: Option<Arc<Vec<u8>>>,
}

/// The API's state and router over `engine`: the one assembly intake, both `switchyard dev`
/// backends and the tests serve. Whether callback URLs may be private is the engine's setting
/// (`SWITCHYARD_ALLOW_PRIVATE_CALLBACKS`), so intake and the notifier cannot disagree on it.
pub fn app(engine: Engine, keys: ApiKeys, serving: Serving) -> Router {
    let allow_private_callbacks = engine.config.allow_private_callbacks;
    let mut state = ApiState::new(engine, keys);
    state.allow_private_callbacks = allow_private_callbacks;
    state.kick = serving.kick;
    state.blob_links = serving.blob_links;
    if let Some((operators, inboxes)) = serving.operators {
        state = state.with_operators(operators, inboxes);
    }
    router(state)
}

/// The whole public surface: `/v1/…`, `/healthz`, the provider callback route
/// `/hooks/{provider}` (which authenticates by signature, not by API key) and the run console
/// `/ui/…` (HTML; its errors are pages, so it sits outside the JSON error mapping).
pub fn router(state: ApiState) -> Router {
    let (api, doc) = routes::documented().split_for_parts();
    let rendered = doc.to_pretty_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, "rendering the OpenAPI document failed");
        "{}".to_string()
    });
    let _ = state.doc.set(rendered);
    let hooks = switchyard_engine::http::hooks_routes(state.engine.clone(), state.kick.clone());
    let trace = state.engine.trace.clone();
    let console = ui::routes(state.clone());
    let api = api
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES));
    switchyard_engine::http::json_errors(api.merge(hooks))
        .merge(console)
        .layer(axum::middleware::from_fn_with_state(trace, request_id))
}

/// The OpenAPI document of [`router`], as served at `/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes::documented().split_for_parts().1
}

/// A request id for every request: the caller's `x-request-id` when it is sane (1–128
/// visible ASCII characters), else a new UUIDv7. It is on the response and on every log line
/// of the request (a tracing span). The span is the request's server span in traces, a child
/// of the caller's `traceparent` when it sends one (docs/traces.md).
async fn request_id(
    State(trace): State<Arc<dyn TraceContext>>,
    req: Request,
    next: Next,
) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        // The route is not known before routing: the name is the method alone, as the HTTP
        // conventions say then.
        { attr::OTEL_NAME } = %req.method(),
        { attr::OTEL_KIND } = "server",
        { attr::HTTP_REQUEST_METHOD } = %req.method(),
        { attr::URL_PATH } = %req.uri().path(),
        { attr::HTTP_RESPONSE_STATUS_CODE } = tracing::field::Empty,
        { attr::ERROR_TYPE } = tracing::field::Empty,
        { attr::OTEL_STATUS_CODE } = tracing::field::Empty,
    );
    if let Some(tp) = req
        .headers()
        .get(attr::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|tp| attr::valid_traceparent(tp))
    {
        trace.set_parent(&span, tp);
    }
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status();
    span.record(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record(attr::ERROR_TYPE, status.as_str());
        span.record(attr::OTEL_STATUS_CODE, "error");
    }
    span.in_scope(|| {
        let latency_ms = started.elapsed().as_millis() as u64;
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(status = status.as_u16(), latency_ms, "request");
        } else {
            tracing::info!(status = status.as_u16(), latency_ms, "request");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    /// The document names every route with its security scheme and the error body schema.
    #[test]
    fn the_document_covers_the_routes() {
        let doc = serde_json::to_value(super::openapi()).unwrap();
        let paths: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for p in [
            "/v1/runs",
            "/v1/runs/{id}",
            "/v1/runs/{id}/events",
            "/v1/runs/{id}/approvals/{step}",
            "/v1/runs/{id}/cancel",
            "/v1/runs/{id}/notifications/{webhook_id}/resend",
            "/v1/workflows",
            "/v1/stats",
            "/v1/openapi.json",
            "/healthz",
            "/hooks/{provider}",
            "/v1/ops/dead-letters",
            "/v1/ops/dead-letters/{id}",
            "/v1/ops/dead-letters/redrive",
            "/v1/runs/{id}/rerun",
            "/v1/runs/rerun",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
        assert!(doc["components"]["schemas"]["RunView"].is_object());
        assert!(doc["components"]["schemas"]["Stats"].is_object());
        let stats = &doc["paths"]["/v1/stats"]["get"];
        for status in ["200", "400", "401"] {
            assert!(
                stats["responses"][status].is_object(),
                "GET /v1/stats {status}"
            );
        }
        let params: Vec<&str> = stats["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(params, ["workflow", "since", "by"]);
        assert!(doc["components"]["schemas"]["VariantStats"].is_object());
    }
}
