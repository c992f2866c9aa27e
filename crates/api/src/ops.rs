//! The operator routes (`/v1/ops/…`): dead letters of both queues, across every tenant.
//!
//! They take an operator key (`SWITCHYARD_OPERATOR_KEYS`), never a tenant's: a tenant key is
//! answered 403 (it is a valid key, for other routes), anything else 401. The handlers call
//! the same use-cases as `switchyard dlq` (`switchyard_engine::deadletters`).

use crate::body::JsonBody;
use crate::extract::{bearer_key, serde_urlencoded_params, ErrorBody, OperatorOnly};
use crate::{ApiError, ApiState};
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::Json;
use serde::{Deserialize, Serialize};
use switchyard_core::ports::QueueName;
use switchyard_engine::deadletters::{self, DeadLetterView, Inboxes, Redriven};
use switchyard_engine::EngineError;
use utoipa::ToSchema;

/// Most ids one redrive request lists.
pub const MAX_REDRIVE_IDS: usize = 100;

/// A caller holding an operator key.
pub struct Operator;

impl FromRequestParts<ApiState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let key = bearer_key(&parts.headers)?;
        if state.operators.contains(key) {
            return Ok(Operator);
        }
        if state.keys.tenant(key).is_some() {
            return Err(EngineError::Forbidden(
                "operator routes take an operator key (SWITCHYARD_OPERATOR_KEYS), not a tenant's API key"
                    .into(),
            )
            .into());
        }
        Err(EngineError::Unauthorized("the API key is not valid".into()).into())
    }
}

fn inboxes(s: &ApiState) -> Result<&Inboxes, ApiError> {
    s.inboxes.as_ref().ok_or_else(|| {
        EngineError::Internal("this server was started without access to the queues".into()).into()
    })
}

fn parse_queue(q: Option<&str>) -> Result<Option<QueueName>, ApiError> {
    q.map(|q| {
        QueueName::parse(q).ok_or_else(|| {
            ApiError(EngineError::BadRequest {
                field: Some("queue".into()),
                message: format!("queue must be `work` or `notify`, not `{q}`"),
            })
        })
    })
    .transpose()
}

/// `GET /v1/ops/dead-letters` query.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QueueParams {
    /// Only this queue's dead letters: `work` or `notify` (both when absent).
    #[param(pattern = r"^(work|notify)$")]
    pub queue: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterList {
    /// Work queue first, then notify; oldest first within each (at most 1,000 per queue).
    pub dead_letters: Vec<DeadLetterView>,
}

/// Dead letters of the work and notify queues, each with the run it is about (tenant,
/// workflow, status, the step it is at), the reason, its receive count and when it failed.
#[utoipa::path(
    get, path = "/v1/ops/dead-letters", tag = "operations",
    params(QueueParams),
    responses(
        (status = 200, description = "The dead letters", body = DeadLetterList),
        (status = 400, description = "A `queue` other than `work` or `notify`", body = ErrorBody),
        OperatorOnly,
        (status = 503, description = "A queue or the state store is unavailable; try again", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_dead_letters(
    State(s): State<ApiState>,
    _: Operator,
    RawQuery(raw): RawQuery,
) -> Result<Json<DeadLetterList>, ApiError> {
    let p: QueueParams = serde_urlencoded_params(raw.as_deref().unwrap_or(""))?;
    let queue = parse_queue(p.queue.as_deref())?;
    let dead_letters = deadletters::list(&s.engine, inboxes(&s)?, queue).await?;
    Ok(Json(DeadLetterList { dead_letters }))
}

/// One dead letter with its raw body.
#[utoipa::path(
    get, path = "/v1/ops/dead-letters/{id}", tag = "operations",
    params(("id" = String, Path, description = "The dead letter's id"), QueueParams),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetterView),
        (status = 400, description = "A `queue` other than `work` or `notify`", body = ErrorBody),
        OperatorOnly,
        (status = 404, description = "No dead letter with this id", body = ErrorBody),
        (status = 503, description = "A queue or the state store is unavailable; try again", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_dead_letter(
    State(s): State<ApiState>,
    _: Operator,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<DeadLetterView>, ApiError> {
    let p: QueueParams = serde_urlencoded_params(raw.as_deref().unwrap_or(""))?;
    let queue = parse_queue(p.queue.as_deref())?;
    Ok(Json(
        deadletters::show(&s.engine, inboxes(&s)?, queue, &id).await?,
    ))
}

/// `POST /v1/ops/dead-letters/redrive` body: `all`, or the `ids` to put back.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// `work` or `notify`; both queues when absent.
    #[serde(default)]
    pub queue: Option<String>,
    /// Put back every dead letter (of `queue`, or of both).
    #[serde(default)]
    pub all: bool,
    /// Put back these dead letters (1–100 ids). Exactly one of `all` and `ids`.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
}

/// Puts dead letters back on their queue, visible now with a fresh receive count. Safe to
/// repeat: work messages are wake-ups (the worker re-plans from the store, so a run does each
/// step once) and notifications keep their `webhook-id`.
#[utoipa::path(
    post, path = "/v1/ops/dead-letters/redrive", tag = "operations",
    request_body = RedriveRequest,
    responses(
        (status = 200, description = "What moved, per queue, and the ids no queue held", body = Redriven),
        (status = 400, description = "Neither or both of `all` and `ids`, an empty or too long `ids`, or a bad `queue`", body = ErrorBody),
        OperatorOnly,
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 503, description = "A queue is unavailable; try again", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn redrive(
    State(s): State<ApiState>,
    _: Operator,
    JsonBody(r): JsonBody<RedriveRequest>,
) -> Result<Json<Redriven>, ApiError> {
    let queue = parse_queue(r.queue.as_deref())?;
    let bad = |message: &str| {
        ApiError(EngineError::BadRequest {
            field: Some("ids".into()),
            message: message.into(),
        })
    };
    let ids = match (r.all, r.ids) {
        (true, None) => None,
        (false, Some(ids)) if ids.is_empty() || ids.len() > MAX_REDRIVE_IDS => {
            return Err(bad("ids must list 1 to 100 dead-letter ids"))
        }
        (false, Some(ids)) => Some(ids),
        _ => return Err(bad("give exactly one of `all: true` and `ids`")),
    };
    let done = deadletters::redrive(inboxes(&s)?, queue, ids.as_deref()).await?;
    s.kicked();
    Ok(Json(done))
}
