//! Anthropic Messages (`POST /v1/messages`).
//!
//! Shapes follow the API reference's Message object (`id`, `type: "message"`, `role`, `model`,
//! `content` blocks `text` / `tool_use`, `stop_reason`, `stop_sequence`, `usage.input_tokens /
//! cache_creation_input_tokens / cache_read_input_tokens / output_tokens`, the cache counts
//! from the fake's prompt cache: `prompt_cache.rs`) and the errors page (`{"type": "error", "error": {"type", "message"},
//! "request_id"}`, 402 `billing_error`, 529 `overloaded_error`); every response carries the
//! `request-id` header. Like the real API, a request without `x-api-key` (or `Authorization`) is
//! refused with 401 and one without `anthropic-version` with 400, before the script is consulted.

use crate::schema::{instance_for, violating_instance, violating_object_for};
use crate::util::{
    fake_answer, json_response, last_user_text, parse_body, random_alnum, respond, text_chars,
    tokens_for_chars, truncated,
};
use crate::{Behavior, Incoming, Shared};
use axum::extract::State;

use axum::response::Response;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const PROVIDER: &str = "anthropic";

fn error(
    status: u16,
    request_id: &str,
    kind: &str,
    message: &str,
    extra: Vec<(&'static str, String)>,
) -> Response {
    let mut h = vec![("request-id", request_id.to_string())];
    h.extend(extra);
    json_response(
        status,
        h,
        &json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}),
    )
}

fn scripted_error(b: &Behavior, request_id: &str) -> Option<Response> {
    Some(match b {
        Behavior::RateLimited { retry_after_secs: secs } => error(
            429,
            request_id,
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 requests per minute. For details, refer to: https://docs.anthropic.com/en/api/rate-limits.",
            vec![
                ("retry-after", secs.to_string()),
                ("anthropic-ratelimit-requests-limit", "50".into()),
                ("anthropic-ratelimit-requests-remaining", "0".into()),
            ],
        ),
        Behavior::Quota => error(
            402,
            request_id,
            "billing_error",
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
            vec![],
        ),
        Behavior::ServerError | Behavior::Fail => error(500, request_id, "api_error", "Internal server error", vec![]),
        Behavior::Overloaded => error(529, request_id, "overloaded_error", "Overloaded", vec![]),
        Behavior::Unauthorized => error(401, request_id, "authentication_error", "invalid x-api-key", vec![]),
        Behavior::ContextTooLong => error(
            400,
            request_id,
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
            vec![],
        ),
        _ => return None,
    })
}

pub(crate) async fn messages(State(s): State<Arc<Shared>>, req: Incoming) -> Response {
    let request_id = format!("req_01{}", random_alnum(22));
    if req.header("x-api-key").is_none_or(str::is_empty) && req.header("authorization").is_none() {
        s.note(PROVIDER, &req, "missing_auth");
        return error(
            401,
            &request_id,
            "authentication_error",
            "x-api-key header is required",
            vec![],
        );
    }
    if req.header("anthropic-version").is_none() {
        s.note(PROVIDER, &req, "missing_version");
        return error(
            400,
            &request_id,
            "invalid_request_error",
            "anthropic-version: header is required",
            vec![],
        );
    }
    let b = s.begin(PROVIDER, &req);
    if let Some(r) = scripted_error(&b, &request_id) {
        return r;
    }
    if let Behavior::Slow { ms } = b {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let Some(v) = parse_body(&req.body).filter(Value::is_object) else {
        return error(
            400,
            &request_id,
            "invalid_request_error",
            "There was an error parsing the body of your request as JSON.",
            vec![],
        );
    };
    for (field, ok) in [
        ("model", v.get("model").is_some_and(Value::is_string)),
        ("max_tokens", v.get("max_tokens").is_some_and(Value::is_u64)),
        (
            "messages",
            v.get("messages")
                .and_then(Value::as_array)
                .is_some_and(|m| !m.is_empty()),
        ),
    ] {
        if !ok {
            return error(
                400,
                &request_id,
                "invalid_request_error",
                &format!("{field}: Field required"),
                vec![],
            );
        }
    }
    let message = message(&s, &v, &b);
    let h = vec![("request-id", request_id.clone())];
    if b == Behavior::Malformed {
        return respond(
            200,
            &[
                ("content-type", "application/json".into()),
                ("request-id", request_id),
            ],
            truncated(&message),
        );
    }
    json_response(200, h, &message)
}

/// The tool the model "calls": the one `tool_choice: {"type": "tool", "name"}` names, else the
/// first tool (for `any`, `auto` or no `tool_choice`); none when `tool_choice` is `none`.
fn chosen_tool(v: &Value) -> Option<(String, Value)> {
    let tools = v.get("tools").and_then(Value::as_array)?;
    let choice = v.get("tool_choice");
    let kind = choice
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("auto");
    let spec = |t: &Value| -> Option<(String, Value)> {
        Some((
            t.get("name")?.as_str()?.to_string(),
            t.get("input_schema")
                .cloned()
                .unwrap_or(json!({"type": "object"})),
        ))
    };
    match kind {
        "none" => None,
        "tool" => {
            let name = choice.and_then(|c| c.get("name")).and_then(Value::as_str)?;
            tools.iter().filter_map(spec).find(|(n, _)| n == name)
        }
        _ => tools.iter().find_map(spec),
    }
}

/// The JSON Schema of a structured-outputs request (`output_format` or `output_config.format`
/// with `type: "json_schema"`), answered as JSON text.
fn output_schema(v: &Value) -> Option<&Value> {
    let format = v
        .get("output_format")
        .or_else(|| v.get("output_config").and_then(|c| c.get("format")))?;
    (format.get("type").and_then(Value::as_str) == Some("json_schema"))
        .then(|| format.get("schema"))
        .flatten()
}

fn message(s: &Shared, v: &Value, b: &Behavior) -> Value {
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-3-5-haiku-latest");
    let user = last_user_text(v.get("messages"));
    let (content, stop_reason, output_chars) = if *b == Behavior::Refusal {
        // Output stops where the classifier intervened; no refusal text is added.
        let partial: String = fake_answer(&user).chars().take(8).collect();
        let n = partial.chars().count();
        (json!([{"type": "text", "text": partial}]), "refusal", n)
    } else if let Some((name, schema)) = chosen_tool(v) {
        let input = if *b == Behavior::SchemaInvalid {
            violating_object_for(&schema)
        } else {
            instance_for(&schema)
        };
        let n = input.to_string().chars().count();
        (
            json!([{"type": "tool_use", "id": format!("toolu_01{}", random_alnum(22)), "name": name, "input": input}]),
            "tool_use",
            n,
        )
    } else {
        let text = match (b, output_schema(v)) {
            (Behavior::SchemaInvalid, Some(schema)) => violating_instance(schema).to_string(),
            (Behavior::SchemaInvalid, None) => "{}".to_string(),
            (_, Some(schema)) => instance_for(schema).to_string(),
            _ => fake_answer(&user),
        };
        let n = text.chars().count();
        (json!([{"type": "text", "text": text}]), "end_turn", n)
    };
    let system_chars = text_chars(v.get("system").unwrap_or(&Value::Null));
    let input_tokens =
        tokens_for_chars(text_chars(v.get("messages").unwrap_or(&Value::Null)) + system_chars);
    // The system prompt is what the prompt cache keeps; Anthropic counts its reads and writes
    // beside `input_tokens`, which leaves them out.
    let system = v.get("system").map(Value::to_string).unwrap_or_default();
    let cached = s
        .prompt_cache
        .lookup("anthropic", model, &system, tokens_for_chars(system_chars));
    json!({
        "id": format!("msg_01{}", random_alnum(22)),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": input_tokens.saturating_sub(cached.read() + cached.write()),
            "cache_creation_input_tokens": cached.write(),
            "cache_read_input_tokens": cached.read(),
            "output_tokens": tokens_for_chars(output_chars)
        }
    })
}
