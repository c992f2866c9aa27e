//! `local/async-job`: an asynchronous "asset" model shaped like a Replicate prediction, so the
//! engine's submit → callback (or poll) path runs offline.
//!
//! The job does no background work. Its result is a pure function of the request (an SVG card
//! showing `input.title` and `input.text`), so `invoke` computes it at once and schedules the
//! callback for the host to deliver, and `poll` recomputes the same thing from the rebuilt
//! request. The callback body is what a Replicate webhook would carry.

use super::{
    cost_of, hex_prefix, input_text, instruction_tokens, invalid, json_string, param, param_u64,
};
use crate::catalog::estimate_tokens;
use base64::Engine as _;
use serde_json::{json, Value};
use std::sync::Mutex;
use switchyard_core::model::{normalized, ModelOutput, ModelRequest, ModelResponse};
use switchyard_core::state::Usage;
use switchyard_core::{sha256_hex, ErrorClass, StepError};

pub use switchyard_core::model::ScheduledCallback;

const DEFAULT_DELAY_MS: u64 = 50;
const DEFAULT_POLL_AFTER_MS: u64 = 1000;
/// Longest body text drawn on the card; the rest is cut with an ellipsis.
const CARD_TEXT_CHARS: usize = 120;

/// `job_` + 16 hex digits of sha256(run, step, attempt): a resubmitted attempt gets the same
/// id, a new attempt a new one.
pub(super) fn job_id(request: &ModelRequest) -> String {
    let key = format!("{}\n{}\n{}", request.run_id, request.step, request.attempt);
    format!("job_{}", hex_prefix(&key, 16))
}

pub(super) fn submit(
    request: &ModelRequest,
    scheduled: &Mutex<Vec<ScheduledCallback>>,
) -> Result<ModelResponse, StepError> {
    let callback = request
        .callback
        .as_ref()
        .ok_or_else(|| invalid("async model needs a callback"))?;
    let poll_after_ms = param_u64(&request.params, "poll_after_ms", DEFAULT_POLL_AFTER_MS)?;
    let calls_back = match param(&request.params, "callback") {
        None | Some(Value::Bool(true)) => true,
        Some(Value::Bool(false)) => false,
        Some(Value::String(s)) if s == "never" => false,
        Some(_) => return Err(invalid("params.callback must be true, false or \"never\"")),
    };
    let id = job_id(request);
    let body = result_body(request, &id)?;
    if calls_back {
        let delay_ms = param_u64(&request.params, "delay_ms", DEFAULT_DELAY_MS)?;
        let entry = ScheduledCallback {
            delay_ms,
            provider: super::PROVIDER.to_string(),
            job_id: id.clone(),
            url: callback.url.clone(),
            webhook_id: format!("msg_{}", hex_prefix(&id, 16)),
            body,
        };
        scheduled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
    }
    Ok(ModelResponse::Pending {
        job_id: id,
        poll_after_ms: Some(poll_after_ms),
    })
}

/// Recomputes the job's result. Goes through [`parse_callback`] so that polling and the
/// webhook can never disagree about the output.
pub(super) fn poll(request: &ModelRequest, job: &str) -> Result<ModelResponse, StepError> {
    if job != job_id(request) {
        return Err(invalid(format!(
            "unknown job `{job}` for step {} attempt {}",
            request.step, request.attempt
        )));
    }
    parse_callback(&result_body(request, job)?).map(|(_, response)| response)
}

fn result_body(request: &ModelRequest, id: &str) -> Result<Value, StepError> {
    let delay_ms = param_u64(&request.params, "delay_ms", DEFAULT_DELAY_MS)?;
    let svg = card(&request.input);
    let url = format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&svg)
    );
    let asset = normalized::asset(
        &url,
        "image/svg+xml",
        svg.len() as u64,
        &sha256_hex(svg.as_bytes()),
    );
    let input_tokens = estimate_tokens(&json_string(&request.input)) + instruction_tokens(request);
    Ok(json!({
        "id": id,
        "status": "succeeded",
        "model": request.model,
        "output": asset,
        "metrics": {
            // Simulated: the job "ran" for as long as its callback is delayed.
            "predict_time": delay_ms as f64 / 1000.0,
            "input_token_count": input_tokens,
            "output_token_count": 0,
        },
    }))
}

/// A 480×240 card: `input.title` (default "Switchyard") over the input text.
fn card(input: &Value) -> String {
    let title = input
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or("Switchyard");
    let text = match input {
        Value::Object(o) if o.contains_key("title") && !o.contains_key("text") => String::new(),
        other => input_text(other),
    };
    let mut shown: String = text.chars().take(CARD_TEXT_CHARS).collect();
    if text.chars().count() > CARD_TEXT_CHARS {
        shown.push('…');
    }
    format!(
        concat!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="480" height="240" viewBox="0 0 480 240">"##,
            r##"<rect width="480" height="240" rx="16" fill="#1f2937"/>"##,
            r##"<text x="24" y="64" font-family="sans-serif" font-size="28" fill="#f9fafb">{}</text>"##,
            r##"<text x="24" y="112" font-family="sans-serif" font-size="14" fill="#d1d5db">{}</text>"##,
            "</svg>"
        ),
        xml_escape(title),
        xml_escape(&shown)
    )
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Reads a Replicate-shaped prediction: `succeeded` → the output, `starting`/`processing` →
/// still pending, `failed`/`canceled` → an error classed by `error_class` (default
/// transient) with `error` as message.
pub(super) fn parse_callback(body: &Value) -> Result<(String, ModelResponse), StepError> {
    let malformed = |m: &str| StepError::new(ErrorClass::Malformed, format!("callback body: {m}"));
    let str_field = |key: &str| {
        body.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(&format!("`{key}` must be a string")))
    };
    let id = str_field("id")?.to_string();
    let status = str_field("status")?;
    match status {
        "starting" | "processing" => Ok((
            id.clone(),
            ModelResponse::Pending {
                job_id: id,
                poll_after_ms: None,
            },
        )),
        "succeeded" => {
            let model = str_field("model")?.to_string();
            let output = body
                .get("output")
                .filter(|o| o.is_object())
                .ok_or_else(|| malformed("`output` must be an object"))?
                .clone();
            let count = |key: &str| match body.get("metrics").and_then(|m| m.get(key)) {
                None | Some(Value::Null) => Ok(0),
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| malformed(&format!("`metrics.{key}` must be an integer"))),
            };
            let usage = Usage::new(count("input_token_count")?, count("output_token_count")?);
            let output = ModelOutput {
                output,
                usage: Some(usage),
                cost_usd: cost_of(&model, usage),
                model,
                provider_request_id: Some(id.clone()),
                sources: Vec::new(),
            };
            Ok((id, ModelResponse::Completed(output)))
        }
        "failed" | "canceled" => {
            let class = body
                .get("error_class")
                .and_then(Value::as_str)
                .and_then(ErrorClass::parse)
                .unwrap_or(ErrorClass::Transient);
            let message = body
                .get("error")
                .and_then(Value::as_str)
                .map_or_else(|| format!("job {id} {status}"), str::to_string);
            Err(StepError::new(class, message))
        }
        other => Err(malformed(&format!("unknown status `{other}`"))),
    }
}
