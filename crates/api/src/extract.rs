//! What every handler reads from a request, shared by [`crate::routes`], [`crate::rerun`] and
//! [`crate::ops`] (none of which imports another for it): the caller's tenant from its bearer
//! key, the `Idempotency-Key` header, query strings with errors that name the parameter, and
//! the error body every 4xx/5xx answer carries.

use crate::auth::ApiKeys;
use crate::{ApiError, ApiState};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use serde::Serialize;
use switchyard_engine::EngineError;
use utoipa::ToSchema;

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// The caller's tenant, from `Authorization: Bearer <key>`.
pub struct Tenant(pub String);

impl FromRequestParts<ApiState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        authenticate(&parts.headers, &state.keys).map(Tenant)
    }
}

fn authenticate(headers: &HeaderMap, keys: &ApiKeys) -> Result<String, ApiError> {
    keys.tenant(bearer_key(headers)?)
        .map(str::to_string)
        .ok_or_else(|| ApiError(EngineError::Unauthorized("the API key is not valid".into())))
}

/// The key of `Authorization: Bearer <key>`; 401 when the header is missing or not that.
pub(crate) fn bearer_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    let unauthorized = |m: &str| ApiError(EngineError::Unauthorized(m.to_string()));
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("an `Authorization: Bearer <api key>` header is required"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        })
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <api key>`"))
}

/// The error body of every 4xx and 5xx answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `invalid_input`, `idempotency_conflict`, `not_found`.
    pub code: String,
    /// A human sentence.
    pub message: String,
    /// The JSON path of the field the error is about, when there is one (e.g. `input.ticket`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |m: String| {
        ApiError(EngineError::BadRequest {
            field: Some("Idempotency-Key".into()),
            message: m,
        })
    };
    let key = v
        .to_str()
        .map_err(|_| bad("the Idempotency-Key header must be visible ASCII".into()))?;
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(bad(format!(
            "the Idempotency-Key header must be 1-{MAX_IDEMPOTENCY_KEY_BYTES} characters"
        )));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(bad(
            "the Idempotency-Key header must be visible ASCII".into()
        ));
    }
    Ok(Some(key.to_string()))
}

/// Parses a query string; an error names the parameter.
pub(crate) fn serde_urlencoded_params<T: serde::de::DeserializeOwned>(
    raw: &str,
) -> Result<T, ApiError> {
    let uri: axum::http::Uri = format!("/?{raw}")
        .parse()
        .map_err(|_| EngineError::BadRequest {
            field: None,
            message: "the query string is malformed".into(),
        })?;
    axum::extract::Query::<T>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| {
            let text = e.body_text();
            let field = [
                "limit",
                "cursor",
                "status",
                "workflow",
                "since",
                "expires",
                "sig",
                "tenant",
                "bytes",
                "content_type",
                "queue",
            ]
            .into_iter()
            .find(|f| text.contains(f))
            .map(str::to_string);
            EngineError::BadRequest {
                field,
                message: text,
            }
            .into()
        })
}

/// The 401 of every route that takes a tenant's API key, described once for all of them.
#[derive(utoipa::IntoResponses)]
#[response(status = 401, description = "No or bad API key")]
pub struct Unauthorized(pub ErrorBody);

/// The 415 of every route that takes a JSON body.
#[derive(utoipa::IntoResponses)]
#[response(status = 415, description = "Body is not JSON")]
pub struct NotJson(pub ErrorBody);

/// The 413 of every route that takes a body (`MAX_BODY_BYTES`).
#[derive(utoipa::IntoResponses)]
#[response(status = 413, description = "Body too large")]
pub struct TooLarge(pub ErrorBody);

/// The 404 of every route about one run: another tenant's run does not exist for the caller.
#[derive(utoipa::IntoResponses)]
#[response(status = 404, description = "No such run for this tenant")]
pub struct NoSuchRun(pub ErrorBody);

/// The 401 and 403 of every operator route (`/v1/ops/…`).
#[derive(utoipa::IntoResponses)]
pub enum OperatorOnly {
    #[response(status = 401, description = "No or bad key")]
    NoKey(ErrorBody),
    #[response(
        status = 403,
        description = "A tenant's key: operator routes take an operator key"
    )]
    TenantKey(ErrorBody),
}
