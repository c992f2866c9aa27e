//! `POST /v1/runs/{id}/rerun` and `POST /v1/runs/rerun` (bulk): new runs that rerun ended
//! ones from a step, reusing the results of the steps they do not rerun
//! (`switchyard_engine::rerun`, docs/api.md).

use crate::body::JsonBody;
use crate::extract::{idempotency_key, ErrorBody, NoSuchRun, NotJson, Tenant, Unauthorized};
use crate::{ApiError, ApiState};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use switchyard_core::ports::ListScope;
use switchyard_core::state::RunStatus;
use switchyard_core::ErrorClass;
use switchyard_engine::rerun::{BulkRerun, BulkRerunReport, Rerun, RerunRequest, MAX_BULK_RERUNS};
use switchyard_engine::EngineError;
use utoipa::ToSchema;

/// Rerun an ended run from a step, as a new run linked to it (`rerun_of` on the new run,
/// `reruns` on the old). The steps that do not depend on `from` and succeeded are reused, not
/// called again. With an `Idempotency-Key`, a repeated request answers the same rerun (200).
#[utoipa::path(
    post, path = "/v1/runs/{id}/rerun", tag = "runs",
    params(
        ("id" = String, Path, description = "The run to rerun"),
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters"),
    ),
    request_body = RerunRequest,
    responses(
        (status = 202, description = "The rerun was started", body = Rerun),
        (status = 200, description = "Replayed: the rerun this idempotency key started", body = Rerun),
        (status = 400, description = "`from` names no step of the workflow, or the run has nothing to rerun from", body = ErrorBody),
        Unauthorized,
        NoSuchRun,
        (status = 409, description = "The run has not ended, or with `latest` a reused step differs in the newest version, or the key was used with another body", body = ErrorBody),
        NotJson,
        (status = 422, description = "The input fails the workflow's input schema", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn rerun(
    State(s): State<ApiState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<RerunRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let r = s
        .engine
        .rerun(Some(&tenant), &id, req, key.as_deref())
        .await?;
    s.kicked();
    Ok(if r.existing {
        let mut resp = (StatusCode::OK, Json(r)).into_response();
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        resp
    } else {
        (StatusCode::ACCEPTED, Json(r)).into_response()
    })
}

/// `POST /v1/runs/rerun` body.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRerunBody {
    /// `failed` (default) or `cancelled`.
    #[serde(default)]
    pub status: Option<RunStatus>,
    /// Only runs of this workflow.
    #[serde(default)]
    pub workflow: Option<String>,
    /// Only runs created at most this long ago: `30m`, `6h`, `7d` (`ms`, `s`, `m`, `h`, `d`).
    #[serde(default)]
    pub since: Option<String>,
    /// Only runs that failed with this error class.
    #[serde(default)]
    pub error_class: Option<ErrorClass>,
    /// Only say which runs would be rerun.
    #[serde(default)]
    pub dry_run: bool,
    /// At most this many reruns (1-100, default 100); `more` says when others are left.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Rerun every ended run of the caller that matches, from its first failed step, newest
/// first, at most 100 per call. Idempotent: a run already rerun is skipped (and said so),
/// so calling again until `more` is false reruns each once.
#[utoipa::path(
    post, path = "/v1/runs/rerun", tag = "runs",
    request_body = BulkRerunBody,
    responses(
        (status = 200, description = "What was rerun and skipped", body = BulkRerunReport),
        (status = 400, description = "A bad `status`, `since` or `limit`", body = ErrorBody),
        Unauthorized,
        NotJson,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn rerun_many(
    State(s): State<ApiState>,
    Tenant(tenant): Tenant,
    JsonBody(b): JsonBody<BulkRerunBody>,
) -> Result<Json<BulkRerunReport>, ApiError> {
    let q = bulk_query(ListScope::Tenant(tenant), b)?;
    let report = s.engine.rerun_many(&q).await?;
    if !report.rerun.is_empty() {
        s.kicked();
    }
    Ok(Json(report))
}

/// The bulk query of a request body; the same checks as the CLI's flags.
pub fn bulk_query(scope: ListScope, b: BulkRerunBody) -> Result<BulkRerun, EngineError> {
    let bad = |field: &str, message: String| EngineError::BadRequest {
        field: Some(field.into()),
        message,
    };
    let status = b.status.unwrap_or(RunStatus::Failed);
    if !matches!(status, RunStatus::Failed | RunStatus::Cancelled) {
        return Err(bad(
            "status",
            "only `failed` or `cancelled` runs are rerun in bulk".into(),
        ));
    }
    let since_ms = b
        .since
        .as_deref()
        .map(|s| {
            switchyard_core::time::Dur::parse(s.trim())
                .map(|d| d.ms())
                .map_err(|e| bad("since", e))
        })
        .transpose()?;
    let limit = b.limit.unwrap_or(MAX_BULK_RERUNS);
    if !(1..=MAX_BULK_RERUNS).contains(&limit) {
        return Err(bad(
            "limit",
            format!("limit must be 1 to {MAX_BULK_RERUNS}"),
        ));
    }
    Ok(BulkRerun {
        scope,
        status,
        workflow: b.workflow,
        since_ms,
        error_class: b.error_class,
        dry_run: b.dry_run,
        limit,
    })
}
