//! Amazon Bedrock Runtime Converse (`POST /model/{modelId}/converse`).
//!
//! Shapes follow the Converse API reference: `output.message.content[]` with `text` or
//! `toolUse {toolUseId, name, input}`, `stopReason` (`end_turn`, `tool_use`,
//! `guardrail_intervened`, ...), `usage {inputTokens, outputTokens, totalTokens}` (with
//! `cacheReadInputTokens`, `cacheWriteInputTokens` and `cacheDetails` when the fake's prompt
//! cache was used: `prompt_cache.rs`), `metrics {latencyMs}`; errors carry `x-amzn-ErrorType` and a `{"message"}` body with the
//! documented status (ThrottlingException 429, ValidationException 400, AccessDeniedException
//! 403, InternalServerException 500, ServiceUnavailableException 503,
//! ServiceQuotaExceededException 400). Every response has `x-amzn-RequestId`.
//!
//! The SigV4 signature is not verified, but the request must carry one: an `Authorization:
//! AWS4-HMAC-SHA256 Credential=…/<date>/<region>/bedrock/aws4_request, SignedHeaders=…,
//! Signature=…` header and `X-Amz-Date` (or `Date`). Without them, or scoped to another service
//! than `bedrock`, the request is refused with 403 as AWS does, before the script is consulted.
//!
//! A request with `guardrailConfig` is judged by a fake guardrail ([`guardrail`]): it intervenes
//! on a few trigger words (`stopReason: "guardrail_intervened"`) and, with `trace: "enabled"`,
//! reports its assessments in `trace.guardrail`.

pub(crate) mod guardrail;

use crate::schema::{instance_for, violating_object_for};
use crate::util::{
    fake_answer, json_response, last_user_text, parse_body, random_alnum, respond, text_chars,
    tokens_for_chars, truncated,
};
use crate::{Behavior, Incoming, Shared};
use axum::extract::{Path, State};

use axum::response::Response;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PROVIDER: &str = "bedrock";
const CORAL: &str = ":http://internal.amazon.com/coral/com.amazon.bedrock/";

fn error(
    status: u16,
    request_id: &str,
    error_type: &str,
    message: &str,
    extra: Vec<(&'static str, String)>,
) -> Response {
    let mut h = vec![
        ("x-amzn-requestid", request_id.to_string()),
        ("x-amzn-errortype", error_type.to_string()),
    ];
    h.extend(extra);
    json_response(status, h, &json!({"message": message}))
}

fn service_error(status: u16, request_id: &str, code: &str, message: &str) -> Response {
    error(
        status,
        request_id,
        &format!("{code}{CORAL}"),
        message,
        vec![],
    )
}

fn scripted_error(b: &Behavior, request_id: &str) -> Option<Response> {
    Some(match b {
        Behavior::RateLimited { retry_after_secs: secs } => error(
            429,
            request_id,
            &format!("ThrottlingException{CORAL}"),
            "Too many requests, please wait before trying again.",
            vec![("retry-after", secs.to_string())],
        ),
        Behavior::Quota => service_error(
            400,
            request_id,
            "ServiceQuotaExceededException",
            "Your request exceeds the service quota for your account. You can view your quotas at Viewing service quotas. You can resubmit your request later.",
        ),
        Behavior::ServerError | Behavior::Fail => {
            service_error(500, request_id, "InternalServerException", "The server encountered an error processing your request.")
        }
        Behavior::Overloaded => {
            service_error(503, request_id, "ServiceUnavailableException", "Bedrock is unable to process your request.")
        }
        Behavior::Unauthorized => service_error(
            403,
            request_id,
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        ),
        Behavior::ContextTooLong => service_error(400, request_id, "ValidationException", "Input is too long for requested model."),
        _ => return None,
    })
}

/// Checks that the request is SigV4-signed for the `bedrock` service (without verifying the
/// signature). Returns the AWS error to send otherwise.
fn check_signature(req: &Incoming, request_id: &str) -> Result<(), Box<(&'static str, Response)>> {
    let Some(auth) = req.header("authorization") else {
        return Err(Box::new((
            "missing_auth",
            error(
                403,
                request_id,
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
                vec![],
            ),
        )));
    };
    let incomplete = |m: &str| error(403, request_id, "IncompleteSignatureException", m, vec![]);
    let Some(rest) = auth.trim().strip_prefix("AWS4-HMAC-SHA256 ") else {
        return Err(Box::new(("bad_auth", incomplete(&format!("Authorization header requires 'Credential' parameter. Authorization header requires 'Signature' parameter. Authorization header requires 'SignedHeaders' parameter. Authorization={}", auth.split_whitespace().next().unwrap_or(""))))));
    };
    let field = |name: &str| {
        rest.split(',')
            .map(str::trim)
            .find_map(|p| p.strip_prefix(name))
            .filter(|v| !v.is_empty())
    };
    let missing: Vec<&str> = ["Credential", "Signature", "SignedHeaders"]
        .into_iter()
        .filter(|f| field(&format!("{f}=")).is_none())
        .collect();
    if !missing.is_empty() {
        let m = missing
            .iter()
            .map(|f| format!("Authorization header requires '{f}' parameter."))
            .collect::<Vec<_>>()
            .join(" ");
        return Err(Box::new(("bad_auth", incomplete(&m))));
    }
    if req.header("x-amz-date").is_none() && req.header("date").is_none() {
        return Err(Box::new(("bad_auth", incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."))));
    }
    let scope: Vec<&str> = field("Credential=").unwrap_or("").split('/').collect();
    // AKID/date/region/service/aws4_request
    if scope.len() != 5 || scope[4] != "aws4_request" {
        return Err(Box::new((
            "bad_auth",
            incomplete(
                "Credential should be of the form AKID/yyyyMMdd/region/service/aws4_request.",
            ),
        )));
    }
    if scope[3] != "bedrock" {
        return Err(Box::new((
            "bad_auth",
            error(
                403,
                request_id,
                "InvalidSignatureException",
                "Credential should be scoped to correct service: 'bedrock'. ",
                vec![],
            ),
        )));
    }
    Ok(())
}

pub(crate) async fn converse(
    State(s): State<Arc<Shared>>,
    Path(model_id): Path<String>,
    req: Incoming,
) -> Response {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    if let Err(refused) = check_signature(&req, &request_id) {
        let (why, response) = *refused;
        s.note(PROVIDER, &req, why);
        return response;
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
            "SerializationException",
            "Unexpected token in request body; expected JSON.",
            vec![],
        );
    };
    if v.get("messages")
        .and_then(Value::as_array)
        .is_none_or(|m| m.is_empty())
    {
        return service_error(400, &request_id, "ValidationException", "A conversation must start with a user message. Try again with a conversation that starts with a user message.");
    }
    let guard = match guardrail::config(&v) {
        Some(Err(message)) => {
            return service_error(400, &request_id, "ValidationException", message)
        }
        Some(Ok(g)) => Some(g),
        None => None,
    };
    let mut out = response(&s, &model_id, &v, &b, started);
    // `refusal` already stands for an intervention (without a trace).
    if let (Some((id, _version, trace)), false) = (guard, b == Behavior::Refusal) {
        out = guardrail::apply(&v, &id, trace, out);
    }
    if b == Behavior::Malformed {
        return respond(
            200,
            &[
                ("content-type", "application/json".into()),
                ("x-amzn-requestid", request_id),
            ],
            truncated(&out),
        );
    }
    json_response(200, vec![("x-amzn-requestid", request_id)], &out)
}

/// The tool the model "uses": the one `toolChoice: {"tool": {"name"}}` names, else the first
/// (`any`, `auto` or no `toolChoice`).
fn chosen_tool(v: &Value) -> Option<(String, Value)> {
    let config = v.get("toolConfig")?;
    let tools = config.get("tools").and_then(Value::as_array)?;
    let spec = |t: &Value| -> Option<(String, Value)> {
        let s = t.get("toolSpec")?;
        let schema = s
            .get("inputSchema")
            .and_then(|i| i.get("json"))
            .cloned()
            .unwrap_or(json!({"type": "object"}));
        Some((s.get("name")?.as_str()?.to_string(), schema))
    };
    match config
        .get("toolChoice")
        .and_then(|c| c.get("tool"))
        .and_then(|t| t.get("name"))
        .and_then(Value::as_str)
    {
        Some(name) => tools.iter().filter_map(spec).find(|(n, _)| n == name),
        None => tools.iter().find_map(spec),
    }
}

fn response(s: &Shared, model_id: &str, v: &Value, b: &Behavior, started: Instant) -> Value {
    let user = last_user_text(v.get("messages"));
    let (content, stop_reason, output_chars) = if *b == Behavior::Refusal {
        let text = "Sorry, the model cannot answer this question.";
        (json!([{"text": text}]), "guardrail_intervened", text.len())
    } else if let Some((name, schema)) = chosen_tool(v) {
        let input = if *b == Behavior::SchemaInvalid {
            violating_object_for(&schema)
        } else {
            instance_for(&schema)
        };
        let n = input.to_string().chars().count();
        (
            json!([{"toolUse": {"toolUseId": format!("tooluse_{}", random_alnum(22)), "name": name, "input": input}}]),
            "tool_use",
            n,
        )
    } else {
        let text = if *b == Behavior::SchemaInvalid {
            "{}".to_string()
        } else {
            fake_answer(&user)
        };
        let n = text.chars().count();
        (json!([{"text": text}]), "end_turn", n)
    };
    let system_chars = text_chars(v.get("system").unwrap_or(&Value::Null));
    let all_input =
        tokens_for_chars(text_chars(v.get("messages").unwrap_or(&Value::Null)) + system_chars);
    // The system prompt is what the prompt cache keeps; Converse counts its reads and writes
    // beside `inputTokens`, which leaves them out (`totalTokens` counts them).
    let system = v.get("system").map(Value::to_string).unwrap_or_default();
    let cached = s
        .prompt_cache
        .lookup(PROVIDER, model_id, &system, tokens_for_chars(system_chars));
    let (read, write) = (cached.read(), cached.write());
    let input_tokens = all_input.saturating_sub(read + write);
    let output_tokens = tokens_for_chars(output_chars);
    let mut usage = json!({"inputTokens": input_tokens, "outputTokens": output_tokens,
        "totalTokens": input_tokens + read + write + output_tokens});
    if read + write > 0 {
        usage["cacheReadInputTokens"] = json!(read);
        usage["cacheWriteInputTokens"] = json!(write);
    }
    if write > 0 {
        usage["cacheDetails"] = json!([{"inputTokens": write, "ttl": "5m"}]);
    }
    json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason,
        "usage": usage,
        "metrics": {"latencyMs": (started.elapsed().as_millis() as u64).max(1)}
    })
}
