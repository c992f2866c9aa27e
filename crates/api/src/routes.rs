//! The handlers of the public API and the types of their bodies. Each handler carries its
//! OpenAPI description (`#[utoipa::path]`); [`documented`] is the only place routes are added,
//! through `utoipa_axum::routes!`, which documents what it serves.

use crate::body::JsonBody;
use crate::extract::{idempotency_key, serde_urlencoded_params};
pub use crate::extract::{ErrorBody, ErrorDetail, Tenant, Unauthorized, MAX_IDEMPOTENCY_KEY_BYTES};
use crate::extract::{NoSuchRun, NotJson, TooLarge};
use crate::{ApiError, ApiState};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_core::ports::{ListScope, RunQuery, MAX_LIST_LIMIT};
use switchyard_core::state::{HistoryEvent, RunStatus};
use switchyard_engine::intake::StartRequest;
use switchyard_engine::stats::{Stats, StatsQuery};
use switchyard_engine::view::RunView;
use switchyard_engine::EngineError;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Rows of a `GET /v1/runs` page when `limit` is not given.
pub const DEFAULT_LIST_LIMIT: usize = 50;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard API",
        description = "Start and follow durable multi-model AI pipeline runs. Every /v1 route \
            takes `Authorization: Bearer <api key>`; a tenant sees only its own runs.",
        license(name = "Apache-2.0")
    ),
    paths(hook_doc),
    modifiers(&BearerAuth),
    tags((name = "runs"), (name = "workflows"), (name = "stats"), (name = "service"), (name = "hooks"),
        (name = "operations", description = "Operator routes: an operator key (SWITCHYARD_OPERATOR_KEYS), not a tenant's"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key from SWITCHYARD_API_KEYS"))
                    .build(),
            ),
        );
    }
}

/// Every route of the API with its documentation.
pub(crate) fn documented() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_run, list_runs))
        .routes(routes!(get_run))
        .routes(routes!(get_events))
        .routes(routes!(decide))
        .routes(routes!(cancel))
        .routes(routes!(crate::rerun::rerun))
        .routes(routes!(crate::rerun::rerun_many))
        .routes(routes!(resend_notification))
        .routes(routes!(list_workflows))
        .routes(routes!(get_stats))
        .routes(routes!(openapi_json))
        .routes(routes!(get_blob))
        .routes(routes!(declare_upload))
        .routes(routes!(healthz))
        .routes(routes!(crate::ops::list_dead_letters))
        .routes(routes!(crate::ops::get_dead_letter))
        .routes(routes!(crate::ops::redrive))
        // An upload's PUT carries up to `upload::MAX_BYTES`: its own body limit, inner to the
        // API's (the innermost limit applies).
        .merge(
            OpenApiRouter::new()
                .routes(routes!(put_upload))
                .layer(axum::extract::DefaultBodyLimit::max(UPLOAD_BODY_BYTES)),
        )
}

/// Largest body of `PUT /v1/uploads/{sha256}` (the upload limit itself; a declared size is
/// checked against the body exactly).
pub const UPLOAD_BODY_BYTES: usize = switchyard_core::upload::MAX_BYTES as usize;

// ---- bodies ----

/// `POST /v1/runs` body.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// The workflow's name (see `GET /v1/workflows`).
    pub workflow: String,
    /// A version of it; the newest served version when absent.
    #[serde(default)]
    pub version: Option<String>,
    /// The run input; checked against the workflow's input schema (422 on mismatch).
    #[schema(value_type = Object)]
    pub input: Value,
    /// Where to POST signed notifications when the run ends or waits for an approval.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Free-form data kept with the run.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct Links {
    #[serde(rename = "self")]
    pub self_: String,
    pub events: String,
}

/// A run that was accepted (202), or found again by its idempotency key (200).
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    pub run_id: String,
    pub status: RunStatus,
    pub links: Links,
}

#[derive(Serialize, ToSchema)]
pub struct RunItem {
    pub run_id: String,
    pub workflow: String,
    pub version: String,
    pub status: RunStatus,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
    pub updated_at: u64,
}

#[derive(Serialize, ToSchema)]
pub struct RunList {
    /// Newest first.
    pub runs: Vec<RunItem>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Matching runs after this page, when the store can count them cheaply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct Events {
    pub run_id: String,
    /// Oldest first.
    pub events: Vec<HistoryEvent>,
}

#[derive(Deserialize, Serialize, ToSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Reject,
}

/// `POST /v1/runs/{id}/approvals/{step}` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub decision: Verdict,
    #[serde(default)]
    pub comment: Option<String>,
}

/// Longest approval comment kept.
pub const MAX_COMMENT_BYTES: usize = 4096;

#[derive(Serialize, ToSchema)]
pub struct Decided {
    pub run_id: String,
    pub step: String,
    pub decision: Verdict,
}

#[derive(Serialize, ToSchema)]
pub struct CancelRequested {
    pub run_id: String,
    /// The run's status when cancellation was recorded; it ends `cancelled` once steps in
    /// flight have finished.
    pub status: RunStatus,
    pub cancel_requested: bool,
}

#[derive(Serialize, ToSchema)]
pub struct WorkflowItem {
    pub name: String,
    /// Served versions, oldest first.
    pub versions: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowItem>,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// `GET /v1/runs` query.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Rows per page, 1–1000 (default 50).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only runs with this status.
    pub status: Option<RunStatus>,
    /// Only runs of this workflow.
    pub workflow: Option<String>,
}

fn links(run_id: &str) -> Links {
    Links {
        self_: format!("/v1/runs/{run_id}"),
        events: format!("/v1/runs/{run_id}/events"),
    }
}

// ---- handlers ----

/// Start a run.
///
/// With an `Idempotency-Key` (scoped to the tenant, kept 24 hours): the same key and body
/// answer the same run again (200, `Idempotent-Replayed: true`); the same key with another
/// body is a 409 `idempotency_conflict`; concurrent identical requests start one run.
#[utoipa::path(
    post, path = "/v1/runs", tag = "runs",
    request_body = StartRun,
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters")),
    responses(
        (status = 202, description = "Run accepted", body = Accepted),
        (status = 200, description = "Replayed: the run this idempotency key started", body = Accepted,
            headers(("Idempotent-Replayed" = String, description = "`true`"))),
        (status = 400, description = "Malformed request", body = ErrorBody),
        Unauthorized,
        (status = 404, description = "No such workflow or version", body = ErrorBody),
        (status = 409, description = "Idempotency-Key reused with another body", body = ErrorBody),
        TooLarge,
        NotJson,
        (status = 422, description = "Input fails the workflow's input schema, or the callback URL can never be called", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn create_run(
    State(s): State<ApiState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    JsonBody(body): JsonBody<StartRun>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    if let Some(url) = &body.callback_url {
        switchyard_core::outbound::check_callback_url(url, s.allow_private_callbacks).map_err(
            |e| EngineError::InvalidInput {
                field: Some("callback_url".into()),
                message: e.to_string(),
            },
        )?;
        // A notification that cannot be signed is never sent: say so now rather than accept
        // a run whose caller waits for a callback that will not come.
        if s.engine.config.callback_secrets.trim().is_empty() {
            return Err(EngineError::InvalidInput {
                field: Some("callback_url".into()),
                message: "this deployment cannot sign notifications: SWITCHYARD_CALLBACK_SECRET \
                          is not set (docs/deploy.md)"
                    .into(),
            }
            .into());
        }
    }
    let req = StartRequest {
        workflow: body.workflow,
        version: body.version,
        input: body.input,
        callback_url: body.callback_url,
        metadata: body.metadata,
    };
    let started = s.engine.start_run(&tenant, req, key.as_deref()).await?;
    s.kicked();
    let doc = Accepted {
        links: links(&started.run_id),
        run_id: started.run_id,
        status: started.status,
    };
    Ok(if started.existing {
        let mut resp = (StatusCode::OK, Json(doc)).into_response();
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        resp
    } else {
        (StatusCode::ACCEPTED, Json(doc)).into_response()
    })
}

/// List the tenant's runs, newest first.
#[utoipa::path(
    get, path = "/v1/runs", tag = "runs",
    params(ListParams),
    responses(
        (status = 200, description = "A page of runs", body = RunList),
        (status = 400, description = "Bad limit, cursor or filter", body = ErrorBody),
        Unauthorized,
    ),
    security(("bearer" = []))
)]
async fn list_runs(
    State(s): State<ApiState>,
    Tenant(tenant): Tenant,
    RawQuery(raw): RawQuery,
) -> Result<Json<RunList>, ApiError> {
    let p: ListParams = serde_urlencoded_params(raw.as_deref().unwrap_or(""))?;
    let limit = p.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(EngineError::BadRequest {
            field: Some("limit".into()),
            message: format!("limit must be 1-{MAX_LIST_LIMIT}"),
        }
        .into());
    }
    let mut q = RunQuery::new(ListScope::Tenant(tenant), limit);
    q.status = p.status;
    q.workflow = p.workflow;
    q.cursor = p.cursor;
    let page = s.engine.list_runs(&q).await?;
    Ok(Json(RunList {
        runs: page
            .runs
            .into_iter()
            .map(|r| RunItem {
                run_id: r.run_id,
                workflow: r.workflow,
                version: r.version,
                status: r.status,
                created_at: r.created_at,
                updated_at: r.updated_at,
            })
            .collect(),
        next_cursor: page.cursor,
        remaining: page.remaining,
    }))
}

/// The run document: status, output (inline, or a presigned link when large), steps, cost,
/// timings and notification attempts.
#[utoipa::path(
    get, path = "/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run", body = RunView),
        Unauthorized,
        NoSuchRun,
    ),
    security(("bearer" = []))
)]
async fn get_run(
    State(s): State<ApiState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    let snap = s.engine.load_for(Some(&tenant), &id).await?;
    Ok(Json(s.engine.view(&snap).await?))
}

/// The run's history, oldest first.
#[utoipa::path(
    get, path = "/v1/runs/{id}/events", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, description = "The history", body = Events),
        Unauthorized,
        NoSuchRun,
    ),
    security(("bearer" = []))
)]
async fn get_events(
    State(s): State<ApiState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Events>, ApiError> {
    let events = s.engine.history(Some(&tenant), &id).await?;
    Ok(Json(Events { run_id: id, events }))
}

/// Approve or reject a step that waits for a person.
#[utoipa::path(
    post, path = "/v1/runs/{id}/approvals/{step}", tag = "runs",
    params(("id" = String, Path, description = "Run id"), ("step" = String, Path, description = "The approval step")),
    request_body = Decision,
    responses(
        (status = 200, description = "Decision recorded; the run continues", body = Decided),
        (status = 400, description = "Malformed request, or the step is not an approval step", body = ErrorBody),
        Unauthorized,
        (status = 404, description = "No such run or step for this tenant", body = ErrorBody),
        (status = 409, description = "The step is not waiting, or the run has ended", body = ErrorBody),
        TooLarge,
        NotJson,
    ),
    security(("bearer" = []))
)]
async fn decide(
    State(s): State<ApiState>,
    Tenant(tenant): Tenant,
    Path((id, step)): Path<(String, String)>,
    JsonBody(d): JsonBody<Decision>,
) -> Result<Json<Decided>, ApiError> {
    if d.comment
        .as_ref()
        .is_some_and(|c| c.len() > MAX_COMMENT_BYTES)
    {
        return Err(EngineError::BadRequest {
            field: Some("comment".into()),
            message: format!("the comment is longer than {MAX_COMMENT_BYTES} bytes"),
        }
        .into());
    }
    let approved = d.decision == Verdict::Approve;
    s.engine
        .decide(Some(&tenant), &id, &step, approved, d.comment)
        .await?;
    s.kicked();
    Ok(Json(Decided {
        run_id: id,
        step,
        decision: d.decision,
    }))
}

/// Cancel a run that has not ended: steps in flight finish, nothing new starts.
#[utoipa::path(
    post, path = "/v1/runs/{id}/cancel", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 202, description = "Cancellation recorded", body = CancelRequested),
        Unauthorized,
        NoSuchRun,
        (status = 409, description = "The run has already ended", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn cancel(
    State(s): State<ApiState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<CancelRequested>), ApiError> {
    let status = s.engine.cancel(Some(&tenant), &id).await?;
    s.kicked();
    Ok((
        StatusCode::ACCEPTED,
        Json(CancelRequested {
            run_id: id,
            status,
            cancel_requested: true,
        }),
    ))
}

/// Send again a notification of the run that gave up (its receiver kept failing, so the
/// notify queue dead-lettered it): it is queued afresh with the **same** `webhook-id`, so a
/// receiver that did get it drops the repeat, and gets the full retry schedule again. Only a
/// notification whose last attempt gave up is resent (`GET /v1/runs/{id}` lists the
/// attempts, each with its `webhook_id` and `outcome`).
#[utoipa::path(
    post, path = "/v1/runs/{id}/notifications/{webhook_id}/resend", tag = "runs",
    params(
        ("id" = String, Path, description = "Run id"),
        ("webhook_id" = String, Path, description = "The notification's `webhook_id`, from the run's `notifications`"),
    ),
    responses(
        (status = 202, description = "Queued again", body = switchyard_engine::resend::Resent),
        Unauthorized,
        (status = 404, description = "No such run for this tenant, or no such notification in it", body = ErrorBody),
        (status = 409, description = "The notification's last attempt did not give up (delivered, stopped by the receiver, or still being retried)", body = ErrorBody),
        (status = 503, description = "The state store or the queue is unavailable; try again", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn resend_notification(
    State(s): State<ApiState>,
    Tenant(tenant): Tenant,
    Path((id, webhook_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<switchyard_engine::resend::Resent>), ApiError> {
    let resent = s
        .engine
        .resend_notification(Some(&tenant), &id, &webhook_id)
        .await?;
    s.kicked();
    Ok((StatusCode::ACCEPTED, Json(resent)))
}

/// The workflows this deployment serves, with their versions.
#[utoipa::path(
    get, path = "/v1/workflows", tag = "workflows",
    responses(
        (status = 200, description = "Served workflows", body = WorkflowList),
        Unauthorized,
    ),
    security(("bearer" = []))
)]
async fn list_workflows(State(s): State<ApiState>, Tenant(_): Tenant) -> Json<WorkflowList> {
    let workflows = s
        .engine
        .workflows
        .list()
        .into_iter()
        .map(|(name, versions)| WorkflowItem { name, versions })
        .collect();
    Json(WorkflowList { workflows })
}

/// `GET /v1/stats` query.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsParams {
    /// Only runs of this workflow: its name, 1-64 letters, digits, `_` or `-`.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub workflow: Option<String>,
    /// Runs created at most this long ago: a positive duration such as `30m`, `24h`, `7d`
    /// (units `ms`, `s`, `m`, `h`, `d`; a bare number is milliseconds). Default `24h`.
    #[param(pattern = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h|d)?$")]
    pub since: Option<String>,
    /// Also compare each step side by side per `model` or per `prompt_version` (`variants`).
    #[param(pattern = r"^(model|prompt_version)$")]
    pub by: Option<String>,
}

/// Figures of the tenant's runs created in a window (from the start of its first UTC hour),
/// per workflow and per step: outcomes, failures by error class, p50/p95/p99 latency (from a
/// histogram, within 1/32 of the exact nearest-rank value), cost, tokens, retry, fallback,
/// validation-failure and escalation rates, judge scores, the models that answered, and what
/// cascades saved against always using their top model; with `by`, each step per model or
/// prompt version side by side (docs/api.md, "GET /v1/stats"). The same document as
/// `switchyard stats --json`. Read from hourly aggregates, never run by run.
#[utoipa::path(
    get, path = "/v1/stats", tag = "stats",
    params(StatsParams),
    responses(
        (status = 200, description = "The figures", body = Stats),
        (status = 400, description = "A `since` that is not a positive duration, a `workflow` that is not a workflow name, or a `by` other than `model` and `prompt_version`", body = ErrorBody),
        Unauthorized,
        (status = 503, description = "The state store is unavailable; try again", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn get_stats(
    State(s): State<ApiState>,
    Tenant(tenant): Tenant,
    RawQuery(raw): RawQuery,
) -> Result<Json<Stats>, ApiError> {
    let p: StatsParams = serde_urlencoded_params(raw.as_deref().unwrap_or(""))?;
    let q = StatsQuery::parse(
        ListScope::Tenant(tenant),
        p.workflow.as_deref(),
        p.since.as_deref(),
    )?
    .with_by(p.by.as_deref())?;
    Ok(Json(s.engine.stats(&q).await?))
}

/// This document (OpenAPI 3.1). No authentication.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "service",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
async fn openapi_json(State(s): State<ApiState>) -> Response {
    let doc = s.doc.get().cloned().unwrap_or_else(|| "{}".into());
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc,
    )
        .into_response()
}

/// `GET /v1/blobs/{key}` query: what a presigned link carries.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LinkParams {
    /// Milliseconds since the Unix epoch after which the link no longer opens.
    pub expires: u64,
    /// Hex HMAC-SHA256 of the key and `expires`.
    pub sig: String,
}

/// A blob (an offloaded run output), through a presigned link from the run document. The
/// link is the credential: no API key.
#[utoipa::path(
    get, path = "/v1/blobs/{key}", tag = "runs",
    params(("key" = String, Path, description = "The blob's sha256, hex"), LinkParams),
    responses(
        (status = 200, description = "The blob's bytes (JSON)", content_type = "application/json", body = Object),
        (status = 400, description = "Malformed link", body = ErrorBody),
        (status = 403, description = "Expired or forged link", body = ErrorBody),
        (status = 404, description = "No such blob, or this deployment does not serve blobs", body = ErrorBody),
    )
)]
async fn get_blob(
    State(s): State<ApiState>,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let Some(secret) = &s.blob_links else {
        return Err(EngineError::NotFound("this deployment does not serve blobs".into()).into());
    };
    let p: LinkParams = serde_urlencoded_params(raw.as_deref().unwrap_or(""))?;
    switchyard_core::presign::check(secret, &key, p.expires, &p.sig, s.engine.now())
        .map_err(|e| EngineError::Forbidden(e.to_string()))?;
    let bytes = s.engine.blobs.get(&key).await.map_err(EngineError::from)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response())
}

/// `POST /v1/uploads` body: what the client will PUT.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclareUpload {
    /// sha256 of the bytes, 64 lower-case hex digits.
    pub sha256: String,
    /// Size in bytes, 1 to 67108864 (64 MiB).
    pub bytes: u64,
    /// Media type, e.g. `application/pdf`, `text/plain; charset=utf-8`, `image/png`.
    pub content_type: String,
}

/// Where to PUT an upload, and the reference a run's input carries.
#[derive(Serialize, ToSchema)]
pub struct UploadTicket {
    /// `{"$upload": "<sha256>"}`: place it in a run's input where the content belongs.
    #[schema(value_type = Object)]
    pub reference: Value,
    /// `PUT`.
    pub method: String,
    /// Presigned: no API key with the PUT.
    pub url: String,
    /// Send each of these with the PUT (the signature covers them).
    pub headers: std::collections::BTreeMap<String, String>,
    /// Milliseconds since the Unix epoch after which the URL refuses the upload (15 minutes).
    pub expires_at: u64,
    pub sha256: String,
    pub bytes: u64,
    pub content_type: String,
}

/// Declare an upload: an input too large for a request body (5 MB here; API Gateway takes
/// 10 MB, Lambda 6 MB) goes to the blob store by a presigned PUT. Then start a run whose
/// input carries the answer's `reference`; the run adopts the upload when it starts (422 if
/// nothing was PUT), and model steps receive its content (JSON parsed, `text/*` as a string,
/// anything else as a `data:` URL). Uploads not used by a run are deleted after a few days.
#[utoipa::path(
    post, path = "/v1/uploads", tag = "runs",
    request_body = DeclareUpload,
    responses(
        (status = 201, description = "Presigned PUT", body = UploadTicket),
        (status = 400, description = "A field is malformed or out of range", body = ErrorBody),
        Unauthorized,
        TooLarge,
        NotJson,
    ),
    security(("bearer" = []))
)]
async fn declare_upload(
    State(s): State<ApiState>,
    Tenant(tenant): Tenant,
    JsonBody(body): JsonBody<DeclareUpload>,
) -> Result<Response, ApiError> {
    let declared = switchyard_core::upload::Declared {
        sha256: body.sha256,
        bytes: body.bytes,
        content_type: body.content_type,
    };
    let t = s.engine.declare_upload(&tenant, declared).await?;
    let ticket = UploadTicket {
        reference: t.reference,
        method: t.method.to_string(),
        url: t.url,
        headers: t.headers,
        expires_at: t.expires_at,
        sha256: t.sha256,
        bytes: t.bytes,
        content_type: t.content_type,
    };
    Ok((StatusCode::CREATED, Json(ticket)).into_response())
}

/// `PUT /v1/uploads/{sha256}` query: what a presigned upload link carries.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadLinkParams {
    pub tenant: String,
    pub bytes: u64,
    pub content_type: String,
    /// Milliseconds since the Unix epoch after which the link no longer opens.
    pub expires: u64,
    /// Hex HMAC-SHA256 of the tenant, the declaration and `expires`.
    pub sig: String,
}

/// The PUT of an upload, through the presigned link `POST /v1/uploads` gave (served by
/// `switchyard dev`; on AWS the link points at S3). The link is the credential: no API key.
/// The body must be exactly the declared bytes, sent with the declared `Content-Type`.
#[utoipa::path(
    put, path = "/v1/uploads/{sha256}", tag = "runs",
    params(("sha256" = String, Path, description = "The declared sha256, hex"), UploadLinkParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Stored", body = Object),
        (status = 400, description = "A malformed declaration, or not the declared bytes or type", body = ErrorBody),
        (status = 403, description = "Expired or forged link", body = ErrorBody),
        (status = 404, description = "This deployment takes uploads at S3, not here", body = ErrorBody),
        (status = 413, description = "Larger than the upload limit", body = ErrorBody),
    )
)]
async fn put_upload(
    State(s): State<ApiState>,
    Path(sha256): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let Some(secret) = &s.blob_links else {
        return Err(EngineError::NotFound(
            "this deployment takes uploads at the presigned URL POST /v1/uploads answers".into(),
        )
        .into());
    };
    let p: UploadLinkParams = serde_urlencoded_params(raw.as_deref().unwrap_or(""))?;
    let declared = switchyard_core::upload::Declared {
        sha256,
        bytes: p.bytes,
        content_type: p.content_type,
    };
    // A malformed declaration can never have been signed: say what is wrong with it before
    // looking at the signature.
    declared
        .check(switchyard_core::upload::MAX_BYTES)
        .map_err(|r| EngineError::BadRequest {
            field: Some(r.field.into()),
            message: r.message,
        })?;
    let subject = switchyard_core::upload::link_subject(&p.tenant, &declared);
    switchyard_core::presign::check(secret, &subject, p.expires, &p.sig, s.engine.now())
        .map_err(|e| EngineError::Forbidden(e.to_string()))?;
    let sent = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if sent != Some(declared.content_type.as_str()) {
        return Err(EngineError::BadRequest {
            field: Some("Content-Type".into()),
            message: format!(
                "the PUT must be sent with `Content-Type: {}`, as declared",
                declared.content_type
            ),
        }
        .into());
    }
    s.engine.receive_upload(&p.tenant, &declared, &body).await?;
    Ok(
        Json(serde_json::json!({"sha256": declared.sha256, "bytes": declared.bytes}))
            .into_response(),
    )
}

/// Liveness. No authentication.
#[utoipa::path(
    get, path = "/healthz", tag = "service",
    responses((status = 200, description = "Alive", body = Health))
)]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Provider callbacks (webhook function URL), verified by their Standard Webhooks signature
/// (`webhook-id`, `webhook-timestamp`, `webhook-signature`) and a per-attempt token, not by API
/// key. Served by the engine's hooks router; documented here.
#[utoipa::path(
    post, path = "/hooks/{provider}", tag = "hooks",
    params(("provider" = String, Path, description = "e.g. `replicate`, `local`")),
    request_body(content = Object, description = "The provider's callback body", content_type = "application/json"),
    responses(
        (status = 200, description = "`applied`, `progress`, `duplicate` or `stale`", body = Object),
        (status = 400, description = "Malformed callback", body = ErrorBody),
        (status = 401, description = "Bad signature or token", body = ErrorBody),
        (status = 404, description = "No such provider or step", body = ErrorBody),
        TooLarge,
    )
)]
#[allow(dead_code)]
fn hook_doc() {}
