//! HTTP routes over the use-cases. The same router serves the webhook Lambda (function URL),
//! `switchyard dev`, and the listener `switchyard run` opens while a run waits on a remote job.

use crate::webhook::{CallbackRequest, CallbackResult};
use crate::{Engine, EngineError};
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Clone)]
struct Hooks {
    engine: Engine,
    /// Told after a callback was applied, so an in-process driver stops waiting at once.
    applied: Option<Arc<Notify>>,
}

/// Largest provider callback body accepted (the webhook use-case's limit, enforced by the
/// router before the body is buffered). Larger bodies get 413 with the contract's JSON error.
pub use crate::webhook::MAX_CALLBACK_BYTES;

/// `POST /hooks/{provider}`: provider callbacks, standing alone (`switchyard run`'s listener).
pub fn hooks_router(engine: Engine, applied: Option<Arc<Notify>>) -> Router {
    json_errors(hooks_routes(engine, applied))
}

/// The hooks route with its body limit, to merge into a larger router (the public API's),
/// which then applies [`json_errors`] once to the whole.
pub fn hooks_routes(engine: Engine, applied: Option<Arc<Notify>>) -> Router {
    Router::new()
        .route("/hooks/{provider}", post(hook))
        .with_state(Hooks { engine, applied })
        .layer(DefaultBodyLimit::max(MAX_CALLBACK_BYTES))
}

/// Makes every error response of `router` the contract's JSON error body — including those
/// no handler wrote: axum's extractor rejections (a body over its route's limit, a bad path or
/// query), unknown routes and wrong methods, which are plain text by default.
pub fn json_errors(router: Router) -> Router {
    router
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::middleware::map_response(
            |resp: Response| async move { to_json_error(resp).await },
        ))
}

async fn to_json_error(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (code, message) = match status.as_u16() {
        400 => ("bad_request", None),
        401 => ("unauthorized", None),
        404 => ("not_found", None),
        405 => (
            "method_not_allowed",
            Some("this route does not take that method".to_string()),
        ),
        413 => (
            "too_large",
            Some(
                "the request body is larger than this route's limit (see docs/api.md#limits)"
                    .to_string(),
            ),
        ),
        415 => ("unsupported_media_type", None),
        422 => ("invalid_input", None),
        s if s >= 500 => ("internal", None),
        _ => ("bad_request", None),
    };
    let message = match message {
        Some(m) => m,
        None => {
            // Rejection texts are short; the cap only guards against a handler's large body.
            let bytes = axum::body::to_bytes(resp.into_body(), 4096)
                .await
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                text
            }
        }
    };
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// The error body of docs/api.md#errors: `{"error": {"code", "message", "field"?}}`.
pub fn error_response(e: &EngineError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = json!({"error": {"code": e.code(), "message": e.to_string()}});
    if let Some(f) = e.field() {
        body["error"]["field"] = json!(f);
    }
    (status, Json(body)).into_response()
}

async fn hook(
    State(h): State<Hooks>,
    Path(provider): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let headers = headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_ascii_lowercase(), v.to_string()))
        })
        .collect();
    let req = CallbackRequest {
        provider,
        query,
        headers,
        body: body.to_vec(),
    };
    match h.engine.handle_callback(&req).await {
        Ok(result) => {
            if result == CallbackResult::Applied {
                if let Some(n) = &h.applied {
                    n.notify_one();
                }
            }
            let word = match result {
                CallbackResult::Applied => "applied",
                CallbackResult::Progress => "progress",
                CallbackResult::Duplicate => "duplicate",
                CallbackResult::Stale => "stale",
            };
            (StatusCode::OK, Json(json!({"result": word}))).into_response()
        }
        Err(e) => {
            tracing::warn!(error_code = e.code(), "callback refused");
            error_response(&e)
        }
    }
}
