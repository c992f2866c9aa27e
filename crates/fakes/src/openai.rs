//! OpenAI: Chat Completions (`POST /v1/chat/completions`) and Embeddings (`POST /v1/embeddings`).
//!
//! Shapes follow the API reference's chat completion object (`choices[0].message.content`,
//! `refusal`, `annotations`, `finish_reason`, `usage.prompt_tokens/completion_tokens/total_tokens`
//! with their `*_details`) and its error object `{"error": {"message", "type", "param", "code"}}`;
//! every response carries `x-request-id`. Moderations (`POST /v1/moderations`): [`moderation`].

pub(crate) mod moderation;

use crate::prompt_cache::{is_reasoning_model, OPENAI_CACHE_STEP, REASONING_PER_OUTPUT_TOKEN};
use crate::schema::{instance_for, violating_instance};
use crate::util::{
    content_text, fake_answer, json_response, last_user_text, parse_body, random_alnum, random_hex,
    text_chars, tokens_for_chars, truncated,
};
use crate::{Behavior, Incoming, Shared};
use axum::extract::State;

use axum::response::Response;
use base64::Engine as _;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const PROVIDER: &str = "openai";

fn response_headers(request_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-request-id", request_id.to_string()),
        ("openai-version", "2020-10-01".to_string()),
        ("openai-processing-ms", "42".to_string()),
    ]
}

fn error(
    status: u16,
    request_id: &str,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    error_with(status, request_id, message, kind, param, code, vec![])
}

fn error_with(
    status: u16,
    request_id: &str,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
    extra: Vec<(&'static str, String)>,
) -> Response {
    let mut h = response_headers(request_id);
    h.extend(extra);
    json_response(
        status,
        h,
        &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    )
}

/// The HTTP-level failures a script can ask for; `None` for behaviours that answer.
fn scripted_error(b: &Behavior, request_id: &str, model: &str) -> Option<Response> {
    Some(match b {
        Behavior::RateLimited { retry_after_secs: secs } => error_with(
            429,
            request_id,
            &format!("Rate limit reached for {model} in organization org-fake on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in {secs}s. Visit https://platform.openai.com/account/rate-limits to learn more."),
            "requests",
            None,
            Some("rate_limit_exceeded"),
            vec![
                ("retry-after", secs.to_string()),
                ("x-ratelimit-limit-requests", "3".into()),
                ("x-ratelimit-remaining-requests", "0".into()),
                ("x-ratelimit-reset-requests", format!("{secs}s")),
            ],
        ),
        Behavior::Quota => error(
            429,
            request_id,
            "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            None,
            Some("insufficient_quota"),
        ),
        Behavior::ServerError | Behavior::Fail => error(
            500,
            request_id,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        ),
        Behavior::Overloaded => error(
            503,
            request_id,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
            None,
        ),
        Behavior::Unauthorized => error(
            401,
            request_id,
            "Incorrect API key provided: sk-fake****. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        ),
        Behavior::ContextTooLong => error(
            400,
            request_id,
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 tokens. Please reduce the length of the messages.",
            "invalid_request_error",
            Some("messages"),
            Some("context_length_exceeded"),
        ),
        _ => return None,
    })
}

fn bad_json(request_id: &str) -> Response {
    error(
        400,
        request_id,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
        "invalid_request_error",
        None,
        None,
    )
}

/// What every OpenAI route has read and decided before its own work.
struct Prelude {
    b: Behavior,
    request_id: String,
    /// The body's `model`, else the route's default.
    model: String,
    /// The body, a JSON object.
    body: Value,
}

/// What every OpenAI route does first: takes the script's next behaviour, names the request,
/// reads the body and its model (`default_model` when it names none), answers a scripted
/// failure, waits out `slow`, and refuses a body that is not a JSON object. `Err` is the
/// response already due.
async fn prelude(s: &Shared, req: &Incoming, default_model: &str) -> Result<Prelude, Response> {
    let b = s.begin(PROVIDER, req);
    let request_id = format!("req_{}", random_hex(32));
    let parsed = parse_body(&req.body);
    let model = parsed
        .as_ref()
        .and_then(|v| v.get("model"))
        .and_then(Value::as_str)
        .unwrap_or(default_model)
        .to_string();
    if let Some(r) = scripted_error(&b, &request_id, &model) {
        return Err(r);
    }
    if let Behavior::Slow { ms } = b {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let Some(body) = parsed.filter(Value::is_object) else {
        return Err(bad_json(&request_id));
    };
    Ok(Prelude {
        b,
        request_id,
        model,
        body,
    })
}

/// The 400 for a body without a `model` string, which chat and embeddings require.
fn missing_model(v: &Value, request_id: &str) -> Option<Response> {
    if v.get("model").is_some_and(Value::is_string) {
        return None;
    }
    Some(error(
        400,
        request_id,
        "you must provide a model parameter",
        "invalid_request_error",
        None,
        None,
    ))
}

/// A route's answer: `out` with the usual headers, or under `malformed` its JSON cut short.
fn answer(b: &Behavior, request_id: &str, out: &Value) -> Response {
    if *b == Behavior::Malformed {
        let mut h = response_headers(request_id);
        h.insert(0, ("content-type", "application/json".into()));
        return crate::util::respond(200, &h, truncated(out));
    }
    json_response(200, response_headers(request_id), out)
}

pub(crate) async fn chat(State(s): State<Arc<Shared>>, req: Incoming) -> Response {
    let Prelude {
        b,
        request_id,
        model,
        body: v,
    } = match prelude(&s, &req, "gpt-4o-mini").await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let Some(r) = missing_model(&v, &request_id) {
        return r;
    }
    if v.get("messages")
        .and_then(Value::as_array)
        .is_none_or(|m| m.is_empty())
    {
        return error(
            400,
            &request_id,
            "[] is too short - 'messages'",
            "invalid_request_error",
            Some("messages"),
            Some("empty_array"),
        );
    }
    answer(&b, &request_id, &completion(&s, &v, &b, &model))
}

/// The tool the request forces, if any: `tool_choice: {"type": "function", "function": {"name"}}`
/// names one; `"required"` means the first.
fn forced_tool(v: &Value) -> Option<(String, Value, bool)> {
    let tools = v.get("tools").and_then(Value::as_array)?;
    let function = |t: &Value| -> Option<(String, Value)> {
        let f = t.get("function")?;
        Some((
            f.get("name")?.as_str()?.to_string(),
            f.get("parameters")
                .cloned()
                .unwrap_or(json!({"type": "object"})),
        ))
    };
    match v.get("tool_choice") {
        Some(Value::Object(c)) => {
            let name = c
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)?;
            let (n, p) = tools.iter().filter_map(function).find(|(n, _)| n == name)?;
            Some((n, p, true))
        }
        Some(Value::String(c)) if c == "required" => {
            let (n, p) = tools.iter().find_map(function)?;
            Some((n, p, false))
        }
        _ => None,
    }
}

/// The chat completion object for a request (answer, refusal or schema-violating answer).
fn completion(s: &Shared, v: &Value, b: &Behavior, model: &str) -> Value {
    let user = last_user_text(v.get("messages"));
    let format = v.get("response_format");
    let format_type = format
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("text");
    let schema = format
        .and_then(|f| f.get("json_schema"))
        .and_then(|j| j.get("schema"));
    let mut message =
        json!({"role": "assistant", "content": null, "refusal": null, "annotations": []});
    let mut finish_reason = "stop";
    let output_chars;
    if *b == Behavior::Refusal {
        let refusal = "I'm sorry, I cannot assist with that request.";
        output_chars = refusal.len();
        message["refusal"] = json!(refusal);
    } else if let Some((name, params, named)) = forced_tool(v) {
        let args = if *b == Behavior::SchemaInvalid {
            crate::schema::violating_object_for(&params)
        } else {
            instance_for(&params)
        };
        let args = args.to_string();
        output_chars = args.len();
        message["tool_calls"] = json!([{
            "id": format!("call_{}", random_alnum(24)),
            "type": "function",
            "function": {"name": name, "arguments": args}
        }]);
        // A named tool_choice ends with "stop"; "required" with "tool_calls".
        if !named {
            finish_reason = "tool_calls";
        }
    } else {
        let content = match (b, format_type, schema) {
            (Behavior::SchemaInvalid, _, Some(schema)) => violating_instance(schema).to_string(),
            (Behavior::SchemaInvalid, "json_object", None) => json!({"answer": 42}).to_string(),
            (Behavior::SchemaInvalid, _, None) => "{}".to_string(),
            (_, "json_schema", Some(schema)) => instance_for(schema).to_string(),
            (_, "json_object", _) => json!({"answer": fake_answer(&user)}).to_string(),
            _ => fake_answer(&user),
        };
        output_chars = content.chars().count();
        message["content"] = json!(content);
    }
    let prompt_tokens = tokens_for_chars(text_chars(v.get("messages").unwrap_or(&Value::Null)));
    // The leading system (or developer) messages are the prefix the prompt cache keeps;
    // OpenAI reports reads only, in 128-token steps, inside `prompt_tokens`.
    let system = system_text(v.get("messages"));
    let cached = s
        .prompt_cache
        .lookup(
            PROVIDER,
            model,
            &system,
            tokens_for_chars(system.chars().count()),
        )
        .read()
        / OPENAI_CACHE_STEP
        * OPENAI_CACHE_STEP;
    let visible = tokens_for_chars(output_chars);
    let reasoning = if is_reasoning_model(model) {
        visible * REASONING_PER_OUTPUT_TOKEN
    } else {
        0
    };
    let completion_tokens = visible + reasoning;
    json!({
        "id": format!("chatcmpl-{}", random_alnum(29)),
        "object": "chat.completion",
        "created": crate::util::now_secs(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0
            }
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fake00000"
    })
}

/// The text of the leading `system` / `developer` messages (empty when there are none).
fn system_text(messages: Option<&Value>) -> String {
    messages
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .take_while(|msg| {
                    matches!(
                        msg.get("role").and_then(Value::as_str),
                        Some("system" | "developer")
                    )
                })
                .map(|msg| content_text(msg.get("content").unwrap_or(&Value::Null)))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Default embedding size when the request gives no `dimensions`.
const DEFAULT_DIMENSIONS: u64 = 8;

pub(crate) async fn embeddings(State(s): State<Arc<Shared>>, req: Incoming) -> Response {
    let Prelude {
        b,
        request_id,
        model,
        body: v,
    } = match prelude(&s, &req, "text-embedding-3-small").await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let Some(r) = missing_model(&v, &request_id) {
        return r;
    }
    let inputs: Vec<String> = match v.get("input") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_number) && !items.is_empty() => {
            vec![Value::Array(items.clone()).to_string()]
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(t) => t.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    };
    if inputs.is_empty() || inputs.iter().any(String::is_empty) {
        return error(400, &request_id, "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.", "invalid_request_error", None, None);
    }
    let dims = v
        .get("dimensions")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_DIMENSIONS)
        .clamp(1, 3072) as usize;
    let base64 = v.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let vector = crate::util::embedding_for(text, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector
                    .iter()
                    .flat_map(|x| (*x as f32).to_le_bytes())
                    .collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens: u64 = inputs
        .iter()
        .map(|t| tokens_for_chars(t.chars().count()))
        .sum();
    let out = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
    });
    answer(&b, &request_id, &out)
}
