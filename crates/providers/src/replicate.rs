//! Replicate predictions: asynchronous jobs that finish by webhook (or, when the webhook does
//! not come, by polling).
//!
//! Model ids are `replicate/<owner>/<name>` for an official model, created with
//! `POST {base}/models/{owner}/{name}/predictions`, or `replicate/<owner>/<name>:<version>` for
//! a specific version, created with `POST {base}/predictions` and `"version": <version>`. A
//! community model without official status needs the `:<version>` form. Every call carries
//! `Authorization: Bearer <REPLICATE_API_TOKEN>`. The prediction is read with
//! `GET {base}/predictions/{id}` and cancelled with `POST {base}/predictions/{id}/cancel`.
//!
//! **Input.** When the step's input is a JSON object it *is* the prediction input, as is (the
//! workflow names the model's own fields: `prompt`, `aspect_ratio`, `audio`, …); the rendered
//! instructions are then not sent, since there is no field every model reads them from. Any
//! other input becomes `{"prompt": <text>}`, with the instructions, if any, before the data
//! (separated by a blank line). `params.input` (an object) adds fixed model inputs; the step's
//! own fields win on a clash.
//!
//! **Webhooks.** Every prediction is created with `webhook = request.callback.url` (which
//! carries run, step and the per-attempt token) and `webhook_events_filter: ["completed"]`, so
//! Replicate calls back once, at the end. The engine verifies the Standard Webhooks signature
//! and the token; this adapter only reads bodies. A step without a callback URL is `invalid`.
//!
//! **Output.** `starting`/`processing` → pending (no poll hint: the engine polls only once the
//! wait deadline passes). `succeeded` → by role:
//! - `asset`: [`normalized::asset`] with the first output URL (the output may be a string or a
//!   list) and a content type guessed from the URL's extension. `bytes` is `0` and `sha256` is
//!   `""`: they are unknown until the engine downloads the file ([`Provider::fetch_asset`],
//!   an action of its own on the recorded prediction, retried without a new prediction);
//! - `generation` / `transcription`: [`normalized::generation`] with the text of the output: a
//!   string, a list of strings concatenated (language models stream tokens as list items), or an
//!   object's `transcription` (Whisper) or `text` field.
//!
//! `failed` → an error classed from its text: safety/NSFW wording → `refused`, input-validation
//! wording → `invalid`, timeouts → `timeout`, anything else `transient`. `canceled` →
//! `transient`. Cost is the catalog's price for the run time (`metrics.predict_time`) or per
//! prediction, plus tokens when the model reports `metrics.input_token_count` /
//! `output_token_count`.
//!
//! Dropped by normalization: output files after the first, other fields of an object output
//! (Whisper's segments, subtitles, detected language), `logs`, timestamps, `urls` and the other
//! `metrics`. Replicate has no idempotency key: an attempt that is submitted again (after a
//! crash between the call and the checkpoint) creates a second prediction.

use crate::call::Call;
use crate::catalog::{estimate_tokens, Catalog};
use crate::classify::{check_status, redact, Api};
use crate::hosted::{self, invalid, malformed};
use crate::http::{HttpRequest, HttpResponse, Sender};
use crate::keys;
use async_trait::async_trait;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use switchyard_core::model::{
    normalized, ModelInfo, ModelOutput, ModelRequest, ModelResponse, Provider, Role,
};
use switchyard_core::ports::{EnvSecrets, Secrets};
use switchyard_core::state::Usage;
use switchyard_core::{ErrorClass, StepError};

/// The provider prefix of the model ids served here.
pub const PROVIDER: &str = "replicate";
/// The public API.
pub const DEFAULT_BASE_URL: &str = "https://api.replicate.com/v1";
/// Longest part of a prediction's error text copied into a step error.
const ERROR_TEXT_CHARS: usize = 200;

/// The Replicate adapter. Not `Debug`: it holds the API token.
pub struct Replicate {
    base_url: String,
    api_token: Option<String>,
    catalog: Arc<Catalog>,
    sender: Sender,
}

/// The variable holding the API token.
pub const TOKEN_VAR: &str = "REPLICATE_API_TOKEN";

/// `REPLICATE_API_TOKEN`, when set and non-empty.
pub fn token_from_secrets(secrets: &dyn Secrets) -> Option<String> {
    keys::secret(secrets, TOKEN_VAR)
}

/// [`token_from_secrets`] of the process environment.
pub fn token_from_env() -> Option<String> {
    token_from_secrets(&EnvSecrets)
}

impl Replicate {
    pub fn new(
        base_url: &str,
        api_token: Option<String>,
        catalog: Arc<Catalog>,
        sender: Sender,
    ) -> Replicate {
        Replicate {
            base_url: base_url.trim_end_matches('/').to_string(),
            api_token: api_token.filter(|t| !t.trim().is_empty()),
            catalog,
            sender,
        }
    }

    fn token(&self) -> Result<&str, StepError> {
        self.api_token
            .as_deref()
            .ok_or_else(|| keys::missing(TOKEN_VAR))
    }

    /// Cancels a prediction (for the engine, when it gives up waiting). Cancelling one that
    /// already ended is not an error for Replicate.
    pub async fn cancel(&self, job_id: &str) -> Result<(), StepError> {
        self.cancel_for(PROVIDER, job_id).await
    }

    /// [`Replicate::cancel`], logged under the step's model when there is one. No attempt
    /// timeout: the step's has already run out when the engine gives up.
    async fn cancel_for(&self, model: &str, job_id: &str) -> Result<(), StepError> {
        let call = Call {
            provider: PROVIDER,
            model,
            operation: "cancel",
            request_id_header: None,
            timeout: None,
            request: None,
        };
        call.run(
            &self.sender,
            || to_cancel_request(&self.base_url, self.token()?, job_id),
            |resp, now| check_status(Api::Replicate, resp, now),
        )
        .await
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `owner/name` or `owner/name:version` → (owner, name, version).
pub fn parse_model(model_name: &str) -> Result<(&str, &str, Option<&str>), StepError> {
    let (path, version) = match model_name.split_once(':') {
        Some((p, v)) => (p, Some(v)),
        None => (model_name, None),
    };
    let bad = || {
        invalid(format!("`replicate/{model_name}` is not a Replicate model id: use replicate/<owner>/<name> or replicate/<owner>/<name>:<version>"))
    };
    let (owner, name) = path.split_once('/').ok_or_else(bad)?;
    if !is_name(owner) || !is_name(name) || name == "." || name == ".." {
        return Err(bad());
    }
    if let Some(v) = version {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(bad());
        }
    }
    Ok((owner, name, version))
}

fn check_role(role: Role) -> Result<(), StepError> {
    match role {
        Role::Asset | Role::Transcription | Role::Generation => Ok(()),
        other => Err(invalid(format!(
            "replicate serves the asset, transcription and generation roles, not `{}`",
            other.as_str()
        ))),
    }
}

fn check_job_id(job_id: &str) -> Result<(), StepError> {
    if !job_id.is_empty()
        && job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        Ok(())
    } else {
        Err(invalid("not a Replicate prediction id"))
    }
}

/// The prediction `input` for a request (see the module documentation).
pub fn prediction_input(req: &ModelRequest) -> Result<Value, StepError> {
    let mut input = match &req.input {
        Value::Object(m) => m.clone(),
        _ => {
            let data = hosted::user_text(req);
            let prompt = match hosted::system_text(req) {
                Some(sys) if data.trim().is_empty() => sys,
                Some(sys) => format!("{sys}\n\n{data}"),
                None => data,
            };
            if prompt.trim().is_empty() {
                return Err(invalid(
                    "the step has neither instructions nor input to send to the model",
                ));
            }
            let mut m = Map::new();
            m.insert("prompt".into(), Value::String(prompt));
            m
        }
    };
    match req.params.get("input") {
        None | Some(Value::Null) => {}
        Some(Value::Object(fixed)) => {
            for (k, v) in fixed {
                input.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        Some(_) => return Err(invalid("params.input must be an object of model inputs")),
    }
    Ok(Value::Object(input))
}

fn bearer(req: HttpRequest, token: &str) -> HttpRequest {
    req.header("authorization", format!("Bearer {token}"))
}

/// `POST …/predictions` creating the prediction, with the step's callback as webhook.
pub fn to_create_request(
    base: &str,
    token: &str,
    req: &ModelRequest,
) -> Result<HttpRequest, StepError> {
    check_role(req.role)?;
    let (owner, name, version) = parse_model(req.model_name())?;
    let callback = req.callback.as_ref().ok_or_else(|| {
        invalid("Replicate steps are asynchronous: they need a callback URL (set SWITCHYARD_PUBLIC_URL)")
    })?;
    let input = prediction_input(req)?;
    let base = base.trim_end_matches('/');
    let (url, body) = match version {
        None => (
            format!("{base}/models/{owner}/{name}/predictions"),
            json!({"input": input, "webhook": callback.url, "webhook_events_filter": ["completed"]}),
        ),
        Some(v) => (
            format!("{base}/predictions"),
            json!({"version": v, "input": input, "webhook": callback.url, "webhook_events_filter": ["completed"]}),
        ),
    };
    Ok(bearer(HttpRequest::post_json(url, &body), token))
}

/// `GET …/predictions/{id}`.
pub fn to_get_request(base: &str, token: &str, job_id: &str) -> Result<HttpRequest, StepError> {
    check_job_id(job_id)?;
    Ok(bearer(
        HttpRequest::get(format!(
            "{}/predictions/{job_id}",
            base.trim_end_matches('/')
        )),
        token,
    ))
}

/// `GET` of a prediction's output file, to keep a copy (delivery URLs expire). The API
/// token goes only to the API's own host (files under `base`); delivery URLs are public and
/// must not see it. Anything but `https` is refused unless it is under `base` (a fake).
pub fn to_file_request(base: &str, token: &str, url: &str) -> Result<HttpRequest, StepError> {
    let base = base.trim_end_matches('/');
    let on_api = url.starts_with(&format!("{base}/"));
    if on_api {
        return Ok(bearer(HttpRequest::get(url), token));
    }
    if !url.starts_with("https://") {
        return Err(invalid(format!(
            "replicate output file `{}` is not an https URL",
            url.split('?').next().unwrap_or_default()
        )));
    }
    Ok(HttpRequest::get(url))
}

/// The file of a [`to_file_request`]: its bytes and content type (declared, else from the
/// URL's extension). A refused download is classified like any other answer (an expired
/// delivery URL is a 404: `invalid`, not retried).
pub fn from_file_response(
    url: &str,
    resp: &HttpResponse,
    now_ms: u64,
) -> Result<switchyard_core::asset::Fetched, StepError> {
    check_status(Api::Replicate, resp, now_ms)?;
    Ok(switchyard_core::asset::Fetched {
        bytes: resp.body.clone(),
        content_type: switchyard_core::asset::content_type(
            resp.header("content-type"),
            &content_type_of(url),
        ),
    })
}

/// `POST …/predictions/{id}/cancel`.
pub fn to_cancel_request(base: &str, token: &str, job_id: &str) -> Result<HttpRequest, StepError> {
    check_job_id(job_id)?;
    let req = HttpRequest {
        method: "POST",
        url: format!("{}/predictions/{job_id}/cancel", base.trim_end_matches('/')),
        headers: Vec::new(),
        body: None,
    };
    Ok(bearer(req, token))
}

/// The catalog entry id for a model id, ignoring a `:version` the catalog does not list.
fn catalog_key<'a>(catalog: &Catalog, model: &'a str) -> &'a str {
    if catalog.get(model).is_some() {
        model
    } else {
        model.split(':').next().unwrap_or(model)
    }
}

/// The first URL of an output that is a URL or a list of them.
fn first_url(output: &Value) -> Option<&str> {
    let s = match output {
        Value::String(s) => Some(s.as_str()),
        Value::Array(items) => items.iter().find_map(Value::as_str),
        _ => None,
    }?;
    (s.starts_with("https://") || s.starts_with("http://") || s.starts_with("data:")).then_some(s)
}

/// Content type from a URL's extension (or a `data:` URL's header).
pub fn content_type_of(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("data:") {
        let t = rest.split([';', ',']).next().unwrap_or("");
        return if t.is_empty() {
            "text/plain".into()
        } else {
            t.to_string()
        };
    }
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let file = path.rsplit('/').next().unwrap_or(path);
    let ext = file
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    let t = match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "ogg" => "audio/ogg",
        "flac" => "audio/flac",
        "m4a" => "audio/mp4",
        "glb" => "model/gltf-binary",
        "json" => "application/json",
        "txt" => "text/plain",
        "srt" => "application/x-subrip",
        "vtt" => "text/vtt",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    };
    t.to_string()
}

/// The text of an output: a string, a list of strings (concatenated), or an object's
/// `transcription` / `text`.
fn output_text(output: &Value) -> Option<String> {
    match output {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            Some(items.iter().filter_map(Value::as_str).collect::<String>())
        }
        Value::Object(m) => ["transcription", "text"]
            .iter()
            .find_map(|k| m.get(*k).and_then(Value::as_str))
            .map(str::to_string),
        _ => None,
    }
}

/// The class of a failed prediction, from its error text.
fn failure_class(error: &str) -> ErrorClass {
    let e = error.to_ascii_lowercase();
    const REFUSED: [&str; 6] = [
        "nsfw",
        "safety",
        "content policy",
        "flagged",
        "sensitive",
        "inappropriate",
    ];
    const INVALID: [&str; 7] = [
        "invalid input",
        "validation",
        "is required",
        "field required",
        "not a valid",
        "must be",
        "unexpected keyword",
    ];
    if REFUSED.iter().any(|p| e.contains(p)) {
        ErrorClass::Refused
    } else if INVALID.iter().any(|p| e.contains(p)) {
        ErrorClass::Invalid
    } else if e.contains("timed out") || e.contains("timeout") {
        ErrorClass::Timeout
    } else {
        ErrorClass::Transient
    }
}

/// Reads a prediction object (a create/get/cancel answer or a webhook body) for a step of
/// `role` that called `req_model` (`replicate/owner/name[:version]`): the prediction id and
/// the response.
pub fn read_prediction(
    req_model: &str,
    role: Role,
    body: &Value,
    catalog: &Catalog,
) -> Result<(String, ModelResponse), StepError> {
    let id = body
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| malformed("replicate prediction lacks `id`"))?
        .to_string();
    let status = body
        .get("status")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("replicate prediction lacks `status`"))?;
    match status {
        "starting" | "processing" => Ok((
            id.clone(),
            ModelResponse::Pending {
                job_id: id,
                poll_after_ms: None,
            },
        )),
        "succeeded" => {
            let out = completed(req_model, role, &id, body, catalog)?;
            Ok((id, ModelResponse::Completed(out)))
        }
        "failed" => {
            let text = match body.get("error") {
                Some(Value::String(s)) => s.clone(),
                None | Some(Value::Null) => String::new(),
                Some(other) => other.to_string(),
            };
            let class = failure_class(&text);
            let mut shown: String = text.chars().take(ERROR_TEXT_CHARS).collect();
            if text.chars().count() > ERROR_TEXT_CHARS {
                shown.push('…');
            }
            let message = if shown.trim().is_empty() {
                format!("replicate prediction {id} failed without an error message")
            } else {
                format!("replicate prediction {id} failed: {}", redact(shown.trim()))
            };
            Err(StepError::new(class, message))
        }
        "canceled" => Err(StepError::new(
            ErrorClass::Transient,
            format!("replicate prediction {id} was canceled"),
        )),
        other => Err(malformed(format!(
            "replicate prediction has an unknown status `{other}`"
        ))),
    }
}

fn completed(
    req_model: &str,
    role: Role,
    id: &str,
    body: &Value,
    catalog: &Catalog,
) -> Result<ModelOutput, StepError> {
    let metrics = body.get("metrics");
    let metric = |k: &str| metrics.and_then(|m| m.get(k));
    let predict_seconds = metric("predict_time").and_then(Value::as_f64);
    let usage = match (
        metric("input_token_count").and_then(Value::as_u64),
        metric("output_token_count").and_then(Value::as_u64),
    ) {
        (None, None) => None,
        (i, o) => Some(Usage::new(i.unwrap_or(0), o.unwrap_or(0))),
    };
    let raw = body.get("output").unwrap_or(&Value::Null);
    if raw.is_null() {
        let removed = body.get("data_removed").and_then(Value::as_bool) == Some(true);
        return Err(malformed(if removed {
            format!("replicate prediction {id} succeeded but its output was removed")
        } else {
            format!("replicate prediction {id} succeeded without output")
        }));
    }
    let output = match role {
        Role::Asset => {
            let url = first_url(raw).ok_or_else(|| {
                malformed(format!(
                    "replicate prediction {id}: the output is not a file URL"
                ))
            })?;
            normalized::asset(url, &content_type_of(url), 0, "")
        }
        Role::Transcription | Role::Generation => {
            let text = output_text(raw).ok_or_else(|| {
                malformed(format!("replicate prediction {id}: the output has no text"))
            })?;
            normalized::generation(&text, None, usage.unwrap_or_default(), "stop", req_model)
        }
        other => {
            return Err(invalid(format!(
                "replicate serves the asset, transcription and generation roles, not `{}`",
                other.as_str()
            )))
        }
    };
    Ok(ModelOutput {
        output,
        usage,
        cost_usd: catalog.cost_usd(catalog_key(catalog, req_model), usage, predict_seconds),
        model: req_model.to_string(),
        provider_request_id: Some(id.to_string()),
        sources: Vec::new(),
    })
}

/// Reads an HTTP answer of the predictions API: non-2xx through the classifier, else the
/// prediction object.
pub fn from_response(
    req_model: &str,
    role: Role,
    resp: &HttpResponse,
    catalog: &Catalog,
    now_ms: u64,
) -> Result<(String, ModelResponse), StepError> {
    check_status(Api::Replicate, resp, now_ms)?;
    let body = resp
        .json()
        .ok_or_else(|| malformed("replicate response is not JSON"))?;
    read_prediction(req_model, role, &body, catalog)
}

/// The role a webhook body is read with (a callback does not say which step role asked): the
/// catalog entry's (`asset` before `transcription` before `generation`), else, for a model the
/// catalog does not list, `asset` when the output is a URL and `generation` otherwise.
pub fn role_for(catalog: &Catalog, model: &str, body: &Value) -> Role {
    match catalog.get(catalog_key(catalog, model)) {
        Some(e) if e.roles.contains(&Role::Asset) => Role::Asset,
        Some(e) if e.roles.contains(&Role::Transcription) => Role::Transcription,
        Some(_) => Role::Generation,
        None if body.get("output").and_then(first_url).is_some() => Role::Asset,
        None => Role::Generation,
    }
}

#[async_trait]
impl Provider for Replicate {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn models(&self) -> Vec<ModelInfo> {
        self.catalog.models_with_prefix(PROVIDER)
    }

    fn estimate_cost_usd(&self, request: &ModelRequest) -> f64 {
        let tokens = prediction_input(request).map_or(0, |v| estimate_tokens(&v.to_string()));
        self.catalog
            .estimate_usd(catalog_key(&self.catalog, &request.model), tokens, None)
    }

    async fn invoke_kept(
        &self,
        request: &ModelRequest,
    ) -> (Result<ModelResponse, StepError>, Option<serde_json::Value>) {
        crate::tape::kept(self.invoke(request)).await
    }

    async fn poll_kept(
        &self,
        request: &ModelRequest,
        job_id: &str,
    ) -> (Result<ModelResponse, StepError>, Option<serde_json::Value>) {
        crate::tape::kept(self.poll(request, job_id)).await
    }

    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, StepError> {
        let (_, response) = Call::invoke(PROVIDER, request)
            .run(
                &self.sender,
                || {
                    // The request is checked before the token, so a workflow mistake is
                    // reported as such.
                    let token = self.api_token.as_deref().unwrap_or("");
                    let http = to_create_request(&self.base_url, token, request)?;
                    self.token()?;
                    Ok(http)
                },
                |resp, now| {
                    let (id, answer) =
                        from_response(&request.model, request.role, resp, &self.catalog, now)?;
                    // A job whose create call was answered from a tape was not created for
                    // this run, so no webhook will come for it: poll it (from the tape too,
                    // or the provider, which still has it) at once, not after `wait_timeout`.
                    let answer = match answer {
                        ModelResponse::Pending { job_id, .. } if crate::tape::is_replayed(resp) => {
                            ModelResponse::Pending {
                                job_id,
                                poll_after_ms: Some(0),
                            }
                        }
                        other => other,
                    };
                    Ok((id, answer))
                },
            )
            .await?;
        Ok(response)
    }

    async fn poll(&self, request: &ModelRequest, job_id: &str) -> Result<ModelResponse, StepError> {
        let (id, response) = Call::invoke(PROVIDER, request)
            .operation("poll")
            .run(
                &self.sender,
                || to_get_request(&self.base_url, self.token()?, job_id),
                |resp, now| from_response(&request.model, request.role, resp, &self.catalog, now),
            )
            .await?;
        if id != job_id {
            return Err(malformed(format!(
                "replicate answered for prediction {id}, not {job_id}"
            )));
        }
        Ok(response)
    }

    fn parse_callback(
        &self,
        model: &str,
        body: &Value,
    ) -> Result<(String, ModelResponse), StepError> {
        // The step's declared model, not the body's `model`/`version`: a callback of a
        // prediction created by version names the hash, which prices as nothing.
        let role = role_for(&self.catalog, model, body);
        read_prediction(model, role, body, &self.catalog)
    }

    async fn fetch_asset(
        &self,
        url: &str,
        timeout_ms: u64,
    ) -> Result<switchyard_core::asset::Fetched, StepError> {
        let req = to_file_request(&self.base_url, self.api_token.as_deref().unwrap_or(""), url)?;
        let resp = self
            .sender
            .send(req, Some(std::time::Duration::from_millis(timeout_ms)))
            .await?;
        from_file_response(url, &resp, crate::call::now_ms())
    }

    /// The engine gave up waiting (wait timeout): stop the prediction, and its billing.
    async fn cancel(&self, request: &ModelRequest, job_id: &str) -> Result<(), StepError> {
        self.cancel_for(&request.model, job_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{catalog, response as resp};
    use switchyard_core::model::Callback;

    const BASE: &str = "https://api.replicate.com/v1";
    const TOKEN: &str = "r8_TESTTOKEN0123456789";
    const FLUX: &str = "replicate/black-forest-labs/flux-schnell";
    const WHISPER: &str = "replicate/openai/whisper";
    const WHISPER_V: &str =
        "replicate/openai/whisper:8099696689d249cf8b122d833c36ac3f75505c666a395ca40ef26f68e7d3d16e";
    const NOW: u64 = 1_700_000_000_000;

    /// (status, headers, body, class, retry_after_ms)
    type HttpCase<'a> = (
        u16,
        Vec<(&'a str, &'a str)>,
        &'a str,
        ErrorClass,
        Option<u64>,
    );

    const CREATED: &str = include_str!("../tests/fixtures/replicate_create_starting.json");
    const SUCCEEDED: &str = include_str!("../tests/fixtures/replicate_get_succeeded.json");
    const FAILED: &str = include_str!("../tests/fixtures/replicate_get_failed.json");
    const CANCELED: &str = include_str!("../tests/fixtures/replicate_cancel_canceled.json");
    const WEBHOOK: &str = include_str!("../tests/fixtures/replicate_webhook_whisper.json");

    fn cb() -> Callback {
        Callback {
            url: "https://hooks.example.com/webhooks/replicate?run_id=r1&step=art&token=tok123"
                .into(),
            run_id: "r1".into(),
            step: "art".into(),
            token: "tok123".into(),
        }
    }

    fn req(model: &str, role: Role, input: Value) -> ModelRequest {
        ModelRequest {
            run_id: "r1".into(),
            step: "art".into(),
            attempt: 1,
            model: model.into(),
            role,
            instructions: Some("Flat vector style.".into()),
            prompt_version: None,
            input,
            params: json!({}),
            output_schema: None,
            feedback: vec![],
            timeout_ms: 5000,
            callback: Some(cb()),
        }
    }

    fn v(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn body_of(r: &HttpRequest) -> Value {
        serde_json::from_slice(r.body.as_deref().unwrap()).unwrap()
    }

    fn header<'a>(r: &'a HttpRequest, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn completed_of(r: Result<(String, ModelResponse), StepError>) -> (String, ModelOutput) {
        match r.unwrap() {
            (id, ModelResponse::Completed(o)) => (id, o),
            other => panic!("expected completed, got {other:?}"),
        }
    }

    #[test]
    fn create_requests() {
        // (case, request, url, version in body, input)
        let mut fixed = req(
            FLUX,
            Role::Asset,
            json!({"prompt": "a fox", "aspect_ratio": "16:9"}),
        );
        fixed.params = json!({"input": {"aspect_ratio": "1:1", "output_format": "webp"}});
        let table: Vec<(&str, ModelRequest, String, Option<&str>, Value)> = vec![
            (
                "official model, object input as is",
                req(
                    FLUX,
                    Role::Asset,
                    json!({"prompt": "a fox in snow", "num_outputs": 1}),
                ),
                format!("{BASE}/models/black-forest-labs/flux-schnell/predictions"),
                None,
                json!({"prompt": "a fox in snow", "num_outputs": 1}),
            ),
            (
                "official model, text input gets the instructions first",
                req(FLUX, Role::Asset, json!("a fox in snow")),
                format!("{BASE}/models/black-forest-labs/flux-schnell/predictions"),
                None,
                json!({"prompt": "Flat vector style.\n\na fox in snow"}),
            ),
            (
                "versioned id",
                req(
                    WHISPER_V,
                    Role::Transcription,
                    json!({"audio": "https://example.com/a.mp3"}),
                ),
                format!("{BASE}/predictions"),
                Some("8099696689d249cf8b122d833c36ac3f75505c666a395ca40ef26f68e7d3d16e"),
                json!({"audio": "https://example.com/a.mp3"}),
            ),
            (
                "params.input adds fixed inputs, the step's fields win",
                fixed,
                format!("{BASE}/models/black-forest-labs/flux-schnell/predictions"),
                None,
                json!({"prompt": "a fox", "aspect_ratio": "16:9", "output_format": "webp"}),
            ),
        ];
        for (case, r, url, version, input) in table {
            let http = to_create_request(&format!("{BASE}/"), TOKEN, &r).unwrap();
            assert_eq!(http.method, "POST", "{case}");
            assert_eq!(http.url, url, "{case}");
            assert_eq!(
                header(&http, "authorization"),
                Some(format!("Bearer {TOKEN}").as_str()),
                "{case}"
            );
            assert_eq!(
                header(&http, "content-type"),
                Some("application/json"),
                "{case}"
            );
            let b = body_of(&http);
            assert_eq!(b["input"], input, "{case}");
            assert_eq!(b["webhook"], cb().url, "{case}");
            assert_eq!(b["webhook_events_filter"], json!(["completed"]), "{case}");
            assert_eq!(b.get("version").and_then(Value::as_str), version, "{case}");
        }
    }

    #[test]
    fn requests_refused_before_sending() {
        let mut no_cb = req(FLUX, Role::Asset, json!("a fox"));
        no_cb.callback = None;
        let mut nothing = req(FLUX, Role::Asset, Value::Null);
        nothing.instructions = None;
        let mut bad_params = req(FLUX, Role::Asset, json!("a fox"));
        bad_params.params = json!({"input": "wide"});
        // (case, request, message part)
        let table: Vec<(&str, ModelRequest, &str)> = vec![
            (
                "no callback",
                no_cb,
                "they need a callback URL (set SWITCHYARD_PUBLIC_URL)",
            ),
            (
                "classification",
                req(FLUX, Role::Classification, json!("x")),
                "not `classification`",
            ),
            (
                "embedding",
                req(FLUX, Role::Embedding, json!("x")),
                "not `embedding`",
            ),
            (
                "no owner",
                req("replicate/flux-schnell", Role::Asset, json!("x")),
                "not a Replicate model id",
            ),
            (
                "path in name",
                req("replicate/a/b/c", Role::Asset, json!("x")),
                "not a Replicate model id",
            ),
            (
                "empty version",
                req("replicate/a/b:", Role::Asset, json!("x")),
                "not a Replicate model id",
            ),
            ("nothing to send", nothing, "neither instructions nor input"),
            ("params.input not an object", bad_params, "params.input"),
        ];
        for (case, r, part) in table {
            let e = to_create_request(BASE, TOKEN, &r).unwrap_err();
            assert_eq!(e.class, ErrorClass::Invalid, "{case}");
            assert!(e.message.contains(part), "{case}: {}", e.message);
            assert!(!e.message.contains(TOKEN), "{case}");
        }
    }

    #[test]
    fn get_and_cancel_requests() {
        let g = to_get_request(BASE, TOKEN, "gm3qorzdhgbfurvjtvhg6dckhu").unwrap();
        assert_eq!(
            (g.method, g.url.as_str()),
            (
                "GET",
                "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu"
            )
        );
        assert_eq!(
            header(&g, "authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert!(g.body.is_none());
        let c =
            to_cancel_request(&format!("{BASE}/"), TOKEN, "gm3qorzdhgbfurvjtvhg6dckhu").unwrap();
        assert_eq!(
            (c.method, c.url.as_str()),
            (
                "POST",
                "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu/cancel"
            )
        );
        assert_eq!(
            header(&c, "authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        for bad in ["", "../models", "a b", "x?y=1"] {
            assert_eq!(
                to_get_request(BASE, TOKEN, bad).unwrap_err().class,
                ErrorClass::Invalid,
                "{bad}"
            );
            assert_eq!(
                to_cancel_request(BASE, TOKEN, bad).unwrap_err().class,
                ErrorClass::Invalid,
                "{bad}"
            );
        }
    }

    /// A job whose create call is answered from a tape was never created for this run, so
    /// no webhook comes for it: it is polled at once. A live create waits for its webhook.
    #[tokio::test]
    async fn a_job_created_from_a_tape_is_polled_at_once() {
        use crate::tape::{Key, Mode, Tape};
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("sy-rep-tape-{}-{nanos}", std::process::id()));
        let r = req(FLUX, Role::Asset, json!({"prompt": "a fox"}));
        let key = Key::for_request(PROVIDER, "invoke", &r);
        let http = to_create_request(BASE, TOKEN, &r).unwrap();
        Tape::new(Mode::Record, &dir).record(&key, &http, &resp(201, &[], CREATED));
        let sender = Sender::new(crate::http::Timeouts::default())
            .unwrap()
            .with_tape(Some(Tape::new(Mode::Replay, &dir)));
        let replayed = Replicate::new(BASE, Some(TOKEN.into()), Arc::new(catalog()), sender);
        assert_eq!(
            replayed.invoke(&r).await.unwrap(),
            ModelResponse::Pending {
                job_id: "s14dfnzq35rma0cqtjw9m48hmw".into(),
                poll_after_ms: Some(0)
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reads_predictions() {
        let c = catalog();
        // Pending states.
        for status in ["starting", "processing"] {
            let body = v(&CREATED.replace("\"starting\"", &format!("\"{status}\"")));
            let (id, r) = read_prediction(FLUX, Role::Asset, &body, &c).unwrap();
            assert_eq!(id, "s14dfnzq35rma0cqtjw9m48hmw", "{status}");
            assert_eq!(
                r,
                ModelResponse::Pending {
                    job_id: id.clone(),
                    poll_after_ms: None
                },
                "{status}"
            );
        }
        // Succeeded, list output → first URL; per-prediction price.
        let (id, out) = completed_of(read_prediction(FLUX, Role::Asset, &v(SUCCEEDED), &c));
        assert_eq!(id, "s14dfnzq35rma0cqtjw9m48hmw");
        assert_eq!(
            out.output,
            json!({"url": "https://replicate.delivery/xezq/f1kLmqE3eRRpQhXwUvcpQTCO2WqGHcZ1hzXcnkXTS0H8vUzTA/out-0.webp", "content_type": "image/webp", "bytes": 0, "sha256": ""})
        );
        assert!((out.cost_usd - 0.003).abs() < 1e-12, "{}", out.cost_usd);
        assert_eq!(
            out.provider_request_id.as_deref(),
            Some("s14dfnzq35rma0cqtjw9m48hmw")
        );
        assert_eq!(out.model, FLUX);
        assert_eq!(out.usage, None);
        // Succeeded, string output.
        let mut one = v(SUCCEEDED);
        one["output"] = json!("https://replicate.delivery/pbxt/abc/out.png?x=1");
        let (_, out) = completed_of(read_prediction(FLUX, Role::Asset, &one, &c));
        assert_eq!(
            out.output["url"],
            "https://replicate.delivery/pbxt/abc/out.png?x=1"
        );
        assert_eq!(out.output["content_type"], "image/png");
        // Whisper (versioned id): object output, per-second price.
        let (id, out) = completed_of(read_prediction(
            WHISPER_V,
            Role::Transcription,
            &v(WEBHOOK),
            &c,
        ));
        assert_eq!(id, "cky59275mdrm80cpw83rcn3ej0");
        assert_eq!(
            out.output["text"],
            " The quick brown fox jumps over the lazy dog."
        );
        assert_eq!(out.output["finish_reason"], "stop");
        assert_eq!(out.output["model"], WHISPER_V);
        assert!(
            (out.cost_usd - 12.385 * 0.000725).abs() < 1e-12,
            "{}",
            out.cost_usd
        );
        // A language model's token list, with token counts.
        let llm = json!({"id": "p1", "status": "succeeded", "model": "meta/meta-llama-3-8b-instruct",
            "output": ["The", " cat", " sat."], "metrics": {"predict_time": 0.4, "input_token_count": 12, "output_token_count": 3}});
        let (_, out) = completed_of(read_prediction(
            "replicate/meta/meta-llama-3-8b-instruct",
            Role::Generation,
            &llm,
            &c,
        ));
        assert_eq!(out.output["text"], "The cat sat.");
        assert_eq!(out.usage, Some(Usage::new(12, 3)));
        assert_eq!(out.output["usage"]["output_tokens"], 3);
        assert_eq!(out.cost_usd, 0.0, "not in the catalog");
        // `{text}` objects too.
        let t = json!({"id": "p2", "status": "succeeded", "output": {"text": "hello"}});
        assert_eq!(
            completed_of(read_prediction(WHISPER, Role::Generation, &t, &c))
                .1
                .output["text"],
            "hello"
        );
    }

    #[test]
    fn failed_and_odd_predictions() {
        let c = catalog();
        let failed = |error: Value| {
            let mut b = v(FAILED);
            b["error"] = error;
            read_prediction(FLUX, Role::Asset, &b, &c).unwrap_err()
        };
        // (case, error, class)
        let table: Vec<(&str, Value, ErrorClass)> = vec![
            ("nsfw", json!("NSFW content detected. Try running it again, or try a different prompt."), ErrorClass::Refused),
            ("safety", json!("The input or output was flagged as sensitive. Please try again with different inputs. (E005)"), ErrorClass::Refused),
            ("validation", json!("Prediction input failed validation: aspect_ratio must be one of 1:1, 16:9"), ErrorClass::Invalid),
            ("timeout", json!("Prediction timed out"), ErrorClass::Timeout),
            ("oom", json!("CUDA out of memory. Tried to allocate 2.00 GiB"), ErrorClass::Transient),
            ("no message", Value::Null, ErrorClass::Transient),
            ("object", json!({"detail": "boom"}), ErrorClass::Transient),
        ];
        for (case, error, class) in table {
            let e = failed(error);
            assert_eq!(e.class, class, "{case}: {e}");
            assert!(
                e.message.contains("s14dfnzq35rma0cqtjw9m48hmw"),
                "{case}: {e}"
            );
        }
        // The fixture itself.
        assert_eq!(
            read_prediction(FLUX, Role::Asset, &v(FAILED), &c)
                .unwrap_err()
                .class,
            ErrorClass::Refused
        );
        // Long error texts are cut, tokens in them redacted.
        let e = failed(json!(format!("{} r8_abcdefghijklmnop", "x".repeat(500))));
        assert!(e.message.chars().count() < 300, "{}", e.message.len());
        let e = failed(json!("bad token r8_abcdefghijklmnop here"));
        assert!(!e.message.contains("r8_abcdefghijklmnop"), "{e}");
        // Canceled.
        let e = read_prediction(FLUX, Role::Asset, &v(CANCELED), &c).unwrap_err();
        assert_eq!(e.class, ErrorClass::Transient);
        assert!(e.message.contains("was canceled"), "{e}");
        // Malformed bodies.
        let table: Vec<(&str, Value, Role)> = vec![
            (
                "no id",
                json!({"status": "succeeded", "output": "https://x/y.png"}),
                Role::Asset,
            ),
            ("no status", json!({"id": "p"}), Role::Asset),
            (
                "odd status",
                json!({"id": "p", "status": "queued"}),
                Role::Asset,
            ),
            (
                "null output",
                json!({"id": "p", "status": "succeeded", "output": null, "data_removed": true}),
                Role::Asset,
            ),
            (
                "asset not a URL",
                json!({"id": "p", "status": "succeeded", "output": {"a": 1}}),
                Role::Asset,
            ),
            (
                "no text",
                json!({"id": "p", "status": "succeeded", "output": [1, 2]}),
                Role::Generation,
            ),
        ];
        for (case, body, role) in table {
            assert_eq!(
                read_prediction(FLUX, role, &body, &c).unwrap_err().class,
                ErrorClass::Malformed,
                "{case}"
            );
        }
        assert_eq!(
            read_prediction(FLUX, Role::Embedding, &v(SUCCEEDED), &c)
                .unwrap_err()
                .class,
            ErrorClass::Invalid
        );
    }

    #[test]
    fn http_answers() {
        let c = catalog();
        let (id, r) = from_response(FLUX, Role::Asset, &resp(201, &[], CREATED), &c, NOW).unwrap();
        assert_eq!(
            r,
            ModelResponse::Pending {
                job_id: id,
                poll_after_ms: None
            }
        );
        // (status, headers, body, class, retry_after_ms)
        let table: Vec<HttpCase> = vec![
            (
                429,
                vec![("retry-after", "1")],
                r#"{"title":"Request was throttled","detail":"Request was throttled. Your rate limit resets in ~1s.","status":429}"#,
                ErrorClass::RateLimited,
                Some(1000),
            ),
            (
                422,
                vec![],
                r#"{"title":"Input validation failed","detail":"- input.prompt: prompt is required","status":422,"invalid_fields":[{"type":"required","field":"input.prompt","description":"prompt is required"}]}"#,
                ErrorClass::Invalid,
                None,
            ),
            (
                401,
                vec![],
                r#"{"title":"Unauthenticated","detail":"You did not pass a valid authentication token","status":401}"#,
                ErrorClass::Auth,
                None,
            ),
            (
                404,
                vec![],
                r#"{"title":"Not found","detail":"The requested resource could not be found.","status":404}"#,
                ErrorClass::Invalid,
                None,
            ),
            (
                500,
                vec![],
                "Internal Server Error",
                ErrorClass::Transient,
                None,
            ),
            (200, vec![], "not json", ErrorClass::Malformed, None),
        ];
        for (status, headers, body, class, after) in table {
            let e = from_response(FLUX, Role::Asset, &resp(status, &headers, body), &c, NOW)
                .unwrap_err();
            assert_eq!(e.class, class, "{status}: {e}");
            assert_eq!(e.retry_after_ms, after, "{status}");
        }
    }

    #[test]
    fn callbacks_record_the_declared_model() {
        let sender = Sender::new(crate::http::Timeouts::default()).unwrap();
        let p = Replicate::new(BASE, Some(TOKEN.into()), Arc::new(catalog()), sender);
        assert_eq!(p.name(), "replicate");
        assert!(p.models().iter().any(|m| m.id == FLUX && m.asynchronous));
        // Asset model from the catalog.
        let (id, r) = p.parse_callback(FLUX, &v(SUCCEEDED)).unwrap();
        let ModelResponse::Completed(out) = r else {
            panic!("completed")
        };
        assert_eq!(id, "s14dfnzq35rma0cqtjw9m48hmw");
        assert_eq!(out.model, FLUX);
        assert_eq!(out.output["content_type"], "image/webp");
        // Transcription model (created with a version; the body names owner/name).
        let (_, r) = p.parse_callback(WHISPER, &v(WEBHOOK)).unwrap();
        let ModelResponse::Completed(out) = r else {
            panic!("completed")
        };
        assert_eq!(out.model, WHISPER);
        assert!(out.output["text"]
            .as_str()
            .unwrap()
            .contains("quick brown fox"));
        assert!(out.cost_usd > 0.0);
        // Pending, failed, and a body without a model.
        assert!(matches!(
            p.parse_callback(FLUX, &v(CREATED)).unwrap().1,
            ModelResponse::Pending { .. }
        ));
        assert_eq!(
            p.parse_callback(FLUX, &v(FAILED)).unwrap_err().class,
            ErrorClass::Refused
        );
        // A body without a model still belongs to the step's model.
        let (_, r) = p
            .parse_callback(FLUX, &json!({"id": "p", "status": "succeeded", "output": ["https://replicate.delivery/x/out.webp"], "metrics": {"predict_time": 1.0}}))
            .unwrap();
        let ModelResponse::Completed(out) = r else {
            panic!("completed")
        };
        assert_eq!(out.model, FLUX);
        // A callback whose body names a version hash, for a step that pinned that version:
        // recorded as the declared id and priced as the model it belongs to (not 0.0).
        let pinned =
            format!("{FLUX}:5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637");
        let hashed = json!({"id": "p2", "status": "succeeded", "model": "", "version": "5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637",
            "output": ["https://replicate.delivery/x/out.webp"], "metrics": {"predict_time": 1.0}});
        let (_, r) = p.parse_callback(&pinned, &hashed).unwrap();
        let ModelResponse::Completed(out) = r else {
            panic!("completed")
        };
        assert_eq!(out.model, pinned);
        assert!(out.cost_usd > 0.0, "priced as {FLUX}: {}", out.cost_usd);
        // A model the catalog does not list: the output decides.
        let c = catalog();
        assert_eq!(
            role_for(&c, "replicate/x/y", &json!({"output": ["https://a/b.png"]})),
            Role::Asset
        );
        assert_eq!(
            role_for(&c, "replicate/x/y", &json!({"output": "hi"})),
            Role::Generation
        );
        assert_eq!(role_for(&c, WHISPER_V, &json!({})), Role::Transcription);
    }

    #[test]
    fn missing_token_is_auth_and_costs_are_estimated() {
        let sender = Sender::new(crate::http::Timeouts::default()).unwrap();
        let p = Replicate::new(BASE, None, Arc::new(catalog()), sender);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = req(FLUX, Role::Asset, json!("a fox"));
        for e in [
            rt.block_on(p.invoke(&r)).unwrap_err(),
            rt.block_on(p.poll(&r, "s14dfnzq35rma0cqtjw9m48hmw"))
                .unwrap_err(),
            rt.block_on(p.cancel("s14dfnzq35rma0cqtjw9m48hmw"))
                .unwrap_err(),
        ] {
            assert_eq!(e.class, ErrorClass::Auth);
            assert_eq!(e.message, "REPLICATE_API_TOKEN is not set");
        }
        // A workflow mistake is reported before the missing token.
        let mut no_cb = r.clone();
        no_cb.callback = None;
        assert_eq!(
            rt.block_on(p.invoke(&no_cb)).unwrap_err().class,
            ErrorClass::Invalid
        );
        // Estimates: per prediction, and 60 s of run time for per-second models.
        assert!((p.estimate_cost_usd(&r) - 0.003).abs() < 1e-12);
        let w = req(
            WHISPER_V,
            Role::Transcription,
            json!({"audio": "https://example.com/a.mp3"}),
        );
        assert!(
            (p.estimate_cost_usd(&w) - 60.0 * 0.000725).abs() < 1e-12,
            "{}",
            p.estimate_cost_usd(&w)
        );
    }

    #[test]
    fn content_types() {
        let table = [
            ("https://replicate.delivery/a/out-0.webp", "image/webp"),
            ("https://replicate.delivery/a/out-0.JPG", "image/jpeg"),
            ("https://x/y/video.mp4?sig=1#t", "video/mp4"),
            ("https://x/y/audio.wav", "audio/wav"),
            ("https://x/y/model.glb", "model/gltf-binary"),
            ("https://x/y/no-extension", "application/octet-stream"),
            ("https://x.example/", "application/octet-stream"),
            ("data:image/svg+xml;base64,PHN2Zz4=", "image/svg+xml"),
        ];
        for (url, t) in table {
            assert_eq!(content_type_of(url), t, "{url}");
        }
    }
}
