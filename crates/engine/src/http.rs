//! HTTP routes over the use-cases. The same router serves the webhook Lambda (function URL),
//! `switchyard dev`, and the listener `switchyard run` opens while a run waits on a remote job.

use crate::webhook::{CallbackRequest, CallbackResult};
use crate::{Engine, EngineError};
use axum::body::Bytes;
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

/// `POST /hooks/{provider}`: provider callbacks.
pub fn hooks_router(engine: Engine, applied: Option<Arc<Notify>>) -> Router {
    Router::new()
        .route("/hooks/{provider}", post(hook))
        .with_state(Hooks { engine, applied })
}

/// The error body of CONTRACT.md: `{"error": {"code", "message", "field"?}}`.
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
