//! Replicate predictions: `POST /v1/models/{owner}/{name}/predictions` (official models),
//! `POST /v1/predictions` (with `version`), `GET /v1/predictions/{id}`,
//! `POST /v1/predictions/{id}/cancel`.
//!
//! Prediction objects follow the HTTP API reference (`id, model, version, input, logs, output,
//! data_removed, error, status, created_at, started_at, completed_at, urls {get, cancel, stream,
//! web}, metrics {predict_time, total_time}`); errors are problem details (`{"title", "detail",
//! "status"}`). `Authorization: Bearer <token>` is required on every route.
//!
//! A created prediction is `starting` (201), `processing` right after, and terminal after the
//! configured delay. If the create request named a `webhook`, the prediction is POSTed to it
//! (body = the prediction object, as `GET` returns it) signed the Standard Webhooks way
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`), for the events in
//! `webhook_events_filter` — `start` and `completed` (the default, as documented, is every event;
//! the fake has no separate `output`/`logs` events). Failed deliveries are retried twice.
//! Scripts are consumed by create requests only; `GET` and `cancel` never consume them.
//!
//! An image prediction's output file is served by the fake (`GET /v1/files/fake-{id}/out-0.png`,
//! behind the token), or lives under `FakeConfig::delivery_url` when that is set. Downloads
//! the test asked to drop (`FakeServer::drop_downloads`) end with the connection closed before
//! any answer.

use crate::util::{
    now_ms, parse_body, random_alnum, random_lower, respond, rfc3339_micros, truncated,
};
use crate::{lock, Behavior, Incoming, Shared};
use axum::extract::{Path, State};

use axum::response::Response;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const PROVIDER: &str = "replicate";
/// Webhook delivery attempts (the first and two retries).
const DELIVERY_ATTEMPTS: u32 = 3;
/// Predictions kept; beyond this the oldest finished ones are forgotten.
const MAX_PREDICTIONS: usize = 10_000;

/// How a prediction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeed,
    Fail,
    Refusal,
    SchemaInvalid,
}

/// A prediction the fake keeps.
pub(crate) struct Prediction {
    obj: Value,
    webhook: Option<String>,
    events: Vec<String>,
    /// False for `no_webhook`.
    deliver: bool,
    outcome: Outcome,
    created_ms: u64,
}

impl Prediction {
    fn terminal(&self) -> bool {
        matches!(
            self.obj["status"].as_str(),
            Some("succeeded" | "failed" | "canceled")
        )
    }

    /// Where to deliver `event` now, if anywhere.
    fn webhook_for(&self, event: &str) -> Option<String> {
        if self.deliver && self.events.iter().any(|e| e == event) {
            self.webhook.clone()
        } else {
            None
        }
    }

    fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.obj).unwrap_or_default()
    }
}

fn problem(status: u16, title: &str, detail: &str, extra: Vec<(&'static str, String)>) -> Response {
    let mut h = vec![("content-type", "application/problem+json".to_string())];
    h.extend(extra);
    respond(
        status,
        &h,
        json!({"title": title, "detail": detail, "status": status}).to_string(),
    )
}

fn not_found() -> Response {
    problem(404, "Not found", "Not found.", vec![])
}

fn unauthenticated() -> Response {
    problem(
        401,
        "Unauthenticated",
        "You did not pass a valid authentication token",
        vec![],
    )
}

/// `Authorization: Bearer <token>` (or the older `Token <token>`), non-empty.
fn authorized(req: &Incoming) -> bool {
    let Some(auth) = req.header("authorization") else {
        return false;
    };
    let auth = auth.trim();
    ["Bearer ", "Token "]
        .iter()
        .any(|p| auth.strip_prefix(p).is_some_and(|t| !t.trim().is_empty()))
}

fn scripted_error(b: &Behavior) -> Option<Response> {
    Some(match b {
        Behavior::RateLimited { retry_after_secs: secs } => problem(
            429,
            "Request was throttled",
            &format!("Request was throttled. Expected available in {secs} second{}.", if *secs == 1 { "" } else { "s" }),
            vec![("retry-after", secs.to_string())],
        ),
        Behavior::Quota => problem(
            402,
            "Insufficient credit",
            "You have insufficient credit to run this model. Go to https://replicate.com/account/billing#billing to purchase credit. Once you purchase credit, please wait a few minutes before trying again.",
            vec![],
        ),
        Behavior::ServerError => problem(500, "Internal Server Error", "A server error occurred. Please try again later.", vec![]),
        Behavior::Overloaded => problem(503, "Service Unavailable", "The service is temporarily unavailable. Please try again later.", vec![]),
        Behavior::Unauthorized => unauthenticated(),
        Behavior::ContextTooLong => {
            respond(
                422,
                &[("content-type", "application/problem+json".to_string())],
                json!({
                    "title": "Input validation failed",
                    "detail": "- input.prompt: String should have at most 2000 characters\n",
                    "status": 422,
                    "invalid_fields": [{"type": "string_too_long", "field": "input.prompt", "description": "String should have at most 2000 characters"}]
                })
                .to_string(),
            )
        }
        _ => return None,
    })
}

pub(crate) async fn create_for_model(
    State(s): State<Arc<Shared>>,
    Path((owner, name)): Path<(String, String)>,
    req: Incoming,
) -> Response {
    create_common(s, req, Some(format!("{owner}/{name}"))).await
}

pub(crate) async fn create(State(s): State<Arc<Shared>>, req: Incoming) -> Response {
    create_common(s, req, None).await
}

fn invalid(detail: &str, field: &str) -> Response {
    respond(
        422,
        &[("content-type", "application/problem+json".to_string())],
        json!({
            "title": "Input validation failed",
            "detail": format!("- {field}: {detail}\n"),
            "status": 422,
            "invalid_fields": [{"type": "required", "field": field, "description": detail}]
        })
        .to_string(),
    )
}

async fn create_common(s: Arc<Shared>, req: Incoming, official: Option<String>) -> Response {
    if !authorized(&req) {
        s.note(PROVIDER, &req, "missing_auth");
        return unauthenticated();
    }
    let b = s.begin(PROVIDER, &req);
    if let Some(r) = scripted_error(&b) {
        return r;
    }
    if let Behavior::Slow { ms } = b {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let Some(v) = parse_body(&req.body).filter(Value::is_object) else {
        return problem(
            400,
            "Bad Request",
            "The request body is not valid JSON.",
            vec![],
        );
    };
    let Some(input) = v.get("input").filter(|i| i.is_object()).cloned() else {
        return invalid("input is required", "input");
    };
    let (model, version) = match official {
        Some(m) => (m, "hidden".to_string()),
        None => match v
            .get("version")
            .and_then(Value::as_str)
            .filter(|x| !x.is_empty())
        {
            None => return invalid("version is required", "version"),
            Some(ver) => match ver.split_once(':') {
                Some((m, h)) => (m.to_string(), h.to_string()),
                None if ver.contains('/') => (ver.to_string(), "hidden".to_string()),
                None => ("replicate/fake-model".to_string(), ver.to_string()),
            },
        },
    };
    let id = random_lower(26);
    let base = req.base_url();
    let created_ms = now_ms();
    let obj = json!({
        "id": id,
        "model": model,
        "version": version,
        "input": input,
        "logs": "",
        "output": null,
        "data_removed": false,
        "error": null,
        "source": "api",
        "status": "starting",
        "created_at": rfc3339_micros(created_ms),
        "started_at": null,
        "completed_at": null,
        "urls": {
            "cancel": format!("{base}/v1/predictions/{id}/cancel"),
            "get": format!("{base}/v1/predictions/{id}"),
            "stream": format!("{base}/v1/files/fake-stream-{id}"),
            "web": format!("https://replicate.com/p/{id}")
        },
        "metrics": {}
    });
    let webhook = v
        .get("webhook")
        .and_then(Value::as_str)
        .filter(|w| !w.is_empty())
        .map(str::to_string);
    let events = match v.get("webhook_events_filter").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        None => ["start", "output", "logs", "completed"]
            .iter()
            .map(|e| e.to_string())
            .collect(),
    };
    let outcome = match b {
        Behavior::Fail => Outcome::Fail,
        Behavior::Refusal => Outcome::Refusal,
        Behavior::SchemaInvalid => Outcome::SchemaInvalid,
        _ => Outcome::Succeed,
    };
    let prediction = Prediction {
        obj: obj.clone(),
        webhook,
        events,
        deliver: b != Behavior::NoWebhook,
        outcome,
        created_ms,
    };
    {
        let mut all = lock(&s.predictions);
        if all.len() >= MAX_PREDICTIONS {
            let oldest = all
                .iter()
                .filter(|(_, p)| p.terminal())
                .min_by_key(|(_, p)| p.created_ms)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                all.remove(&k);
            }
        }
        all.insert(id.clone(), prediction);
    }
    s.spawn(lifecycle(s.clone(), id.clone(), s.replicate_delay_ms));

    let mut out = obj;
    if let Some(wait_secs) = prefer_wait(req.header("prefer")) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_secs);
        loop {
            if let Some(p) = lock(&s.predictions).get(&id) {
                out = p.obj.clone();
                if p.terminal() {
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    if b == Behavior::Malformed {
        return respond(
            201,
            &[("content-type", "application/json".to_string())],
            truncated(&out),
        );
    }
    respond(
        201,
        &[("content-type", "application/json".to_string())],
        out.to_string(),
    )
}

/// `Prefer: wait` (60 s) or `Prefer: wait=n` (1–60 s): sync mode.
fn prefer_wait(header: Option<&str>) -> Option<u64> {
    let h = header?.trim();
    let rest = h.strip_prefix("wait")?;
    if rest.is_empty() {
        return Some(60);
    }
    rest.strip_prefix('=')
        .and_then(|n| n.trim().parse::<u64>().ok())
        .map(|n| n.clamp(1, 60))
}

/// Starting → processing → terminal after `delay_ms`, with the webhooks asked for.
async fn lifecycle(s: Arc<Shared>, id: String, delay_ms: u64) {
    let start = {
        let mut all = lock(&s.predictions);
        let Some(p) = all.get_mut(&id) else { return };
        if p.terminal() {
            return;
        }
        p.obj["status"] = json!("processing");
        p.obj["started_at"] = json!(rfc3339_micros(now_ms()));
        p.obj["logs"] = json!("Running prediction...\n");
        p.webhook_for("start").map(|url| (url, p.body()))
    };
    if let Some((url, body)) = start {
        deliver(s.client.clone(), s.webhook_secret.clone(), url, body).await;
    }
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    let completed = {
        let mut all = lock(&s.predictions);
        let Some(p) = all.get_mut(&id) else { return };
        if p.terminal() {
            return;
        }
        finish(p, s.delivery_url.as_deref());
        p.webhook_for("completed").map(|url| (url, p.body()))
    };
    if let Some((url, body)) = completed {
        deliver(s.client.clone(), s.webhook_secret.clone(), url, body).await;
    }
}

/// Moves a prediction to its scripted terminal state; output files live under `delivery`
/// (else the fake's own `/v1/files`).
fn finish(p: &mut Prediction, delivery: Option<&str>) {
    let now = now_ms();
    let id = p.obj["id"].as_str().unwrap_or("").to_string();
    let model = p.obj["model"].as_str().unwrap_or("").to_string();
    let elapsed = now.saturating_sub(p.created_ms) as f64 / 1000.0;
    let (status, output, error, logs) = match p.outcome {
        Outcome::Succeed => ("succeeded", output_for(&model, &id, &base_of(&p.obj), delivery), Value::Null, "Running prediction...\nPrediction completed.\n"),
        Outcome::SchemaInvalid => ("succeeded", json!({"unexpected": "shape"}), Value::Null, "Running prediction...\nPrediction completed.\n"),
        Outcome::Fail => (
            "failed",
            Value::Null,
            json!("Prediction failed: the model raised an exception (fake provider, scripted `fail`)."),
            "Running prediction...\nTraceback (most recent call last):\nRuntimeError: scripted failure\n",
        ),
        Outcome::Refusal => (
            "failed",
            Value::Null,
            json!("NSFW content detected. Try running it again, or try a different prompt."),
            "Running prediction...\n",
        ),
    };
    p.obj["status"] = json!(status);
    p.obj["output"] = output;
    p.obj["error"] = error;
    p.obj["logs"] = json!(logs);
    if p.obj["started_at"].is_null() {
        p.obj["started_at"] = json!(rfc3339_micros(now));
    }
    p.obj["completed_at"] = json!(rfc3339_micros(now));
    p.obj["metrics"] = json!({"predict_time": elapsed, "total_time": elapsed});
}

/// `http://host:port` the prediction was created through (its `urls.get` minus the path).
fn base_of(obj: &Value) -> String {
    let get = obj["urls"]["get"].as_str().unwrap_or_default();
    get.split("/v1/").next().unwrap_or_default().to_string()
}

/// The file every fake image prediction outputs: a 1×1 PNG.
pub const FAKE_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0,
    0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d, 0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// `GET /v1/files/{id}/{name}`: a prediction's output file, behind the API token like
/// Replicate's files API (so an adapter that sends the token elsewhere, or not at all, shows).
pub(crate) async fn file(
    State(s): State<Arc<Shared>>,
    Path((id, name)): Path<(String, String)>,
    req: Incoming,
) -> Response {
    if !authorized(&req) {
        s.note(PROVIDER, &req, "missing_auth");
        return unauthenticated();
    }
    let dropped = s
        .drop_downloads
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if dropped {
        s.note(PROVIDER, &req, "dropped");
        return dropped_connection();
    }
    s.note(PROVIDER, &req, "file");
    let known = id
        .strip_prefix("fake-")
        .is_some_and(|p| lock(&s.predictions).contains_key(p));
    if !known || name != "out-0.png" {
        return not_found();
    }
    let mut resp = axum::response::IntoResponse::into_response(FAKE_PNG);
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("image/png"),
    );
    resp
}

/// A response whose body fails before its first byte: the server closes the connection
/// without sending even the status line, and the client sees what an unreachable host gives
/// it — a transport error, no answer.
fn dropped_connection() -> Response {
    let failing = futures::stream::once(async {
        Err::<axum::body::Bytes, std::io::Error>(std::io::Error::other(
            "fake replicate: download dropped",
        ))
    });
    Response::new(axum::body::Body::from_stream(failing))
}

/// A successful output: a list with one file URL (under `delivery` when set, else the fake's
/// own files route); for Whisper-style transcription models the transcription object they
/// return.
fn output_for(model: &str, id: &str, base: &str, delivery: Option<&str>) -> Value {
    if model.ends_with("/whisper") || model.contains("whisper") {
        return json!({
            "transcription": "Fake transcription of the audio.",
            "segments": [{"id": 0, "start": 0.0, "end": 2.0, "text": "Fake transcription of the audio."}],
            "translation": null,
            "txt_file": null,
            "srt_file": null,
            "detected_language": "english"
        });
    }
    match delivery {
        Some(d) => json!([format!("{d}/xezq/fake-{id}/out-0.png")]),
        None => json!([format!("{base}/v1/files/fake-{id}/out-0.png")]),
    }
}

pub(crate) async fn get(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    req: Incoming,
) -> Response {
    if !authorized(&req) {
        s.note(PROVIDER, &req, "missing_auth");
        return unauthenticated();
    }
    s.note(PROVIDER, &req, "get");
    let obj = lock(&s.predictions).get(&id).map(|p| p.obj.clone());
    match obj {
        Some(o) => respond(
            200,
            &[("content-type", "application/json".to_string())],
            o.to_string(),
        ),
        None => not_found(),
    }
}

pub(crate) async fn cancel(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    req: Incoming,
) -> Response {
    if !authorized(&req) {
        s.note(PROVIDER, &req, "missing_auth");
        return unauthenticated();
    }
    s.note(PROVIDER, &req, "cancel");
    let (obj, delivery) = {
        let mut all = lock(&s.predictions);
        let Some(p) = all.get_mut(&id) else {
            return not_found();
        };
        let mut delivery = None;
        if !p.terminal() {
            let now = now_ms();
            p.obj["status"] = json!("canceled");
            if p.obj["started_at"].is_null() {
                p.obj["started_at"] = json!(rfc3339_micros(now));
            }
            p.obj["completed_at"] = json!(rfc3339_micros(now));
            let elapsed = now.saturating_sub(p.created_ms) as f64 / 1000.0;
            p.obj["metrics"] = json!({"predict_time": elapsed, "total_time": elapsed});
            delivery = p.webhook_for("completed").map(|url| (url, p.body()));
        }
        (p.obj.clone(), delivery)
    };
    if let Some((url, body)) = delivery {
        s.spawn(deliver(
            s.client.clone(),
            s.webhook_secret.clone(),
            url,
            body,
        ));
    }
    respond(
        200,
        &[("content-type", "application/json".to_string())],
        obj.to_string(),
    )
}

/// POSTs a webhook body signed the Standard Webhooks way; retries twice on failure with the
/// same `webhook-id` (re-signed with a fresh timestamp each attempt, as the spec allows).
pub(crate) async fn deliver(client: reqwest::Client, secret: String, url: String, body: Vec<u8>) {
    let msg_id = format!("msg_{}", random_alnum(27));
    for attempt in 0..DELIVERY_ATTEMPTS {
        let ts = crate::util::now_secs();
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", ts.to_string())
            .body(body.clone());
        match switchyard_core::webhook::sign(&secret, &msg_id, ts, &body) {
            Ok(sig) => request = request.header("webhook-signature", sig),
            Err(e) => {
                tracing::warn!(error = %e, "fake replicate: cannot sign webhook (bad secret); sending it unsigned")
            }
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(
                    status = r.status().as_u16(),
                    attempt,
                    "fake replicate: webhook delivered"
                );
                return;
            }
            Ok(r) => tracing::debug!(
                status = r.status().as_u16(),
                attempt,
                "fake replicate: webhook refused"
            ),
            Err(e) => {
                tracing::debug!(error = %e, attempt, "fake replicate: webhook delivery failed")
            }
        }
        if attempt + 1 < DELIVERY_ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(100 * 4u64.pow(attempt))).await;
        }
    }
}
