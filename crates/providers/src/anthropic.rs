//! Anthropic Messages API.
//!
//! Pure: [`to_request`] builds the HTTP request, [`from_response`] reads the answer. The
//! [`Anthropic`] provider only picks the base URL and key, sends, and logs metadata (model,
//! status, latency, request id — never prompts, outputs or keys).
//!
//! Wire format: `POST {base}/v1/messages` with `x-api-key`, `anthropic-version: 2023-06-01`,
//! `max_tokens` (required by the API), `system` (the rendered instructions) and one `user`
//! message (the data, then any repair feedback). A JSON Schema answer is forced through a tool:
//! `tools: [{name: "answer", description, input_schema}]`, `tool_choice: {type: "tool", name:
//! "answer"}`, and read back from the `tool_use` block's `input`. `format: json` without a
//! schema asks for JSON in the system text and parses the text.

use crate::call::{Chat, ChatApi, FromResponse, ToRequest};
use crate::catalog::Catalog;
use crate::classify::{check_status, Api};
use crate::hosted::{
    self, answered_by, malformed, object_schema, truncated, unwrap_answer, ANSWER, JSON_ONLY,
};
use crate::http::{HttpRequest, HttpResponse, Sender};
use crate::keys::Endpoint;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use switchyard_core::model::{ModelOutput, ModelRequest, ModelResponse, Role};
use switchyard_core::state::Usage;
use switchyard_core::{ErrorClass, StepError};

/// The public Anthropic API (paths include `/v1`).
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";

/// The API version every request pins.
pub const API_VERSION: &str = "2023-06-01";

const NAME: &str = "anthropic";

/// The Anthropic Messages API's pure halves.
#[derive(Debug, Clone, Copy)]
pub struct AnthropicApi;

impl ChatApi for AnthropicApi {
    const TYPE_NAME: &'static str = "Anthropic";
    const REQUEST_ID_HEADER: &'static str = "request-id";
    const TO_REQUEST: ToRequest = to_request;
    const FROM_RESPONSE: FromResponse = from_response;
}

/// The adapter for `anthropic/*` models.
pub type Anthropic = Chat<AnthropicApi>;

/// Same as [`Anthropic::new`].
pub fn new(
    base_url: &str,
    api_key: Option<String>,
    catalog: Arc<Catalog>,
    sender: Sender,
) -> Anthropic {
    Anthropic::new(base_url, api_key, catalog, sender)
}

impl Chat<AnthropicApi> {
    /// Serves `anthropic/*`; `base_url` (default [`DEFAULT_BASE_URL`]) is used for models whose
    /// catalog entry names none. An empty key counts as none. Entries' own key variables are
    /// read from the environment unless [`Anthropic::with_secrets`] says otherwise.
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        catalog: Arc<Catalog>,
        sender: Sender,
    ) -> Anthropic {
        Chat::from_parts(
            Endpoint::new(NAME, base_url, api_key, "ANTHROPIC_API_KEY"),
            catalog,
            sender,
        )
    }
}

/// `{base}/v1/messages`; a base that already ends in `/v1` is not doubled.
fn messages_url(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    }
}

/// Builds the Messages request. `x-api-key` is sent only when a key is given.
pub fn to_request(
    base_url: &str,
    api_key: Option<&str>,
    req: &ModelRequest,
) -> Result<HttpRequest, StepError> {
    match req.role {
        Role::Classification | Role::Extraction | Role::Generation => {}
        Role::Embedding => {
            return Err(StepError::new(
                ErrorClass::Invalid,
                "Anthropic has no embeddings API",
            ))
        }
        Role::Moderation | Role::Transcription | Role::Asset | Role::Retrieval => {
            return Err(StepError::new(
                ErrorClass::Invalid,
                format!(
                    "the Anthropic adapter does not serve the {} role",
                    req.role.as_str()
                ),
            ))
        }
    }
    let user = hosted::user_text(req);
    if user.trim().is_empty() {
        // The API rejects empty text content; say why before spending a call.
        return Err(StepError::new(
            ErrorClass::Invalid,
            "the step's input is empty: Anthropic needs a non-empty user message",
        ));
    }
    let schema = hosted::answer_schema(req);
    let mut system = hosted::system_text(req).unwrap_or_default();
    if schema.is_none() && hosted::wants_json(req) {
        if !system.is_empty() {
            system.push_str("\n\n");
        }
        system.push_str(JSON_ONLY);
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(req.model_name()));
    body.insert("max_tokens".into(), json!(hosted::max_tokens(req)));
    if !system.is_empty() {
        body.insert("system".into(), json!(system));
    }
    body.insert(
        "messages".into(),
        json!([{"role": "user", "content": user}]),
    );
    if let Some(t) = hosted::temperature(req) {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(schema) = schema {
        body.insert(
            "tools".into(),
            json!([{
                "name": ANSWER,
                "description": "Records the answer. Call it exactly once; its input is the whole answer and must follow the input schema.",
                "input_schema": object_schema(schema).0,
            }]),
        );
        body.insert(
            "tool_choice".into(),
            json!({"type": "tool", "name": ANSWER}),
        );
    }
    let mut http = HttpRequest::post_json(messages_url(base_url), &Value::Object(body))
        .header("anthropic-version", API_VERSION);
    if let Some(key) = api_key.filter(|k| !k.trim().is_empty()) {
        http = http.header("x-api-key", key);
    }
    Ok(http)
}

/// Reads an answer: non-2xx through the one classifier (529 `overloaded_error` is
/// `rate_limited` there); `stop_reason: "refusal"` is `refused`; the forced tool's input is
/// the parsed answer; text blocks are joined.
pub fn from_response(
    req: &ModelRequest,
    resp: &HttpResponse,
    catalog: &Catalog,
    now_ms: u64,
) -> Result<ModelResponse, StepError> {
    check_status(Api::Anthropic, resp, now_ms)?;
    if req.role == Role::Embedding {
        return Err(StepError::new(
            ErrorClass::Invalid,
            "Anthropic has no embeddings API",
        ));
    }
    let body = answer_object(resp)?;
    let stop_reason = checked_stop_reason(&body)?;
    let blocks = hosted::field(&body, &["content"], NAME)?
        .as_array()
        .ok_or_else(|| malformed("anthropic response `content` is not a list"))?;
    let wants_json = hosted::wants_json(req);
    let finish = finish_reason(stop_reason);
    if finish == "length" && wants_json {
        return Err(truncated(req));
    }
    let (text, parsed) = answer_text(req, blocks, wants_json)?;
    let usage = reported_usage(&body);
    let model = answering_model(req, &body);
    let output = hosted::normalize(
        req,
        &text,
        parsed,
        usage.unwrap_or_default(),
        finish,
        &model,
    )?;
    Ok(ModelResponse::Completed(ModelOutput {
        output,
        usage,
        cost_usd: catalog.cost_usd(&req.model, usage, None),
        model: answered_by(req, &model),
        provider_request_id: request_id(resp, &body),
        sources: Vec::new(),
    }))
}

/// The answer body, which must be a JSON object: anything else (e.g. a proxy's plain-text
/// error behind a 200) is `malformed`, not a success with no content.
fn answer_object(resp: &HttpResponse) -> Result<Value, StepError> {
    let body = resp
        .json()
        .ok_or_else(|| malformed("the Anthropic answer is not JSON"))?;
    if !body.is_object() {
        return Err(malformed("the Anthropic answer is not a JSON object"));
    }
    Ok(body)
}

/// The raw stop reason; a refusal is reported as `refused` before any content is read,
/// whatever the content holds.
fn checked_stop_reason(body: &Value) -> Result<&str, StepError> {
    let stop_reason = body
        .get("stop_reason")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    if stop_reason == "refusal" {
        return Err(StepError::new(
            ErrorClass::Refused,
            "anthropic: the model refused to answer (stop_reason refusal)",
        ));
    }
    Ok(stop_reason)
}

/// The answer's text and, when JSON is wanted, its parsed value: the forced tool's input if
/// the model called it, else the JSON in its text.
fn answer_text(
    req: &ModelRequest,
    blocks: &[Value],
    wants_json: bool,
) -> Result<(String, Option<Value>), StepError> {
    let joined = joined_text(blocks);
    Ok(match forced_tool_input(blocks) {
        // The forced tool's input is the answer; its JSON is the text.
        Some(input) if wants_json => {
            let answer = unwrap_answer(req, input)?;
            (answer.to_string(), Some(answer))
        }
        _ if wants_json => {
            let value = hosted::parse_json_text(&joined)?;
            (joined, Some(unwrap_answer(req, value)?))
        }
        _ => (joined, None),
    })
}

/// The input of the `answer` tool call, if any: where a schema-forced answer arrives.
fn forced_tool_input(blocks: &[Value]) -> Option<Value> {
    blocks
        .iter()
        .find(|b| {
            b.get("type").and_then(Value::as_str) == Some("tool_use")
                && b.get("name").and_then(Value::as_str) == Some(ANSWER)
        })
        .map(|b| b.get("input").cloned().unwrap_or(Value::Null))
}

/// The text blocks joined: an answer may come in several blocks.
fn joined_text(blocks: &[Value]) -> String {
    blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect()
}

/// Token counts as the answer reports them (a missing count is 0); `None` without a `usage`
/// object, so "not reported" stays distinct from zero. Anthropic's `input_tokens` leaves out
/// the prompt cache's reads and writes (`cache_read_input_tokens`,
/// `cache_creation_input_tokens`); [`Usage::input_tokens`] counts every input token, so they
/// are added in. Thinking is in `output_tokens` and not reported apart.
fn reported_usage(body: &Value) -> Option<Usage> {
    body.get("usage").filter(|u| u.is_object()).map(|u| {
        let count = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        let (read, write) = (
            count("cache_read_input_tokens"),
            count("cache_creation_input_tokens"),
        );
        Usage {
            cache_read_tokens: read,
            cache_write_tokens: write,
            ..Usage::new(
                count("input_tokens")
                    .saturating_add(read)
                    .saturating_add(write),
                count("output_tokens"),
            )
        }
    })
}

/// The model that answered as the body names it (a dated snapshot of an alias), else the
/// one requested.
fn answering_model(req: &ModelRequest, body: &Value) -> String {
    body.get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or(req.model_name())
        .to_string()
}

/// The id to quote to Anthropic about this call: the `request-id` header, else the message id
/// in the body.
fn request_id(resp: &HttpResponse, body: &Value) -> Option<String> {
    resp.header("request-id")
        .filter(|v| !v.trim().is_empty())
        .map(str::to_string)
        .or_else(|| body.get("id").and_then(Value::as_str).map(str::to_string))
}

/// Anthropic's stop reasons in the shared vocabulary (`stop`, `length`, else as given). The
/// forced `answer` tool ends with `tool_use`, which is a normal stop here.
fn finish_reason(stop_reason: &str) -> &str {
    match stop_reason {
        "end_turn" | "stop_sequence" | "tool_use" => "stop",
        "max_tokens" | "model_context_window_exceeded" => "length",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{catalog, response as resp};
    use switchyard_core::model::Provider;

    const MESSAGE: &str = include_str!("../tests/fixtures/anthropic_message.json");
    const TOOL_USE: &str = include_str!("../tests/fixtures/anthropic_tool_use.json");
    const NOW: u64 = 1_700_000_000_000;
    const HAIKU: &str = "anthropic/claude-3-5-haiku-latest";

    fn req(role: Role, input: Value, params: Value) -> ModelRequest {
        ModelRequest {
            run_id: "r1".into(),
            step: "s1".into(),
            attempt: 1,
            model: HAIKU.into(),
            role,
            instructions: Some("Be brief.".into()),
            prompt_version: Some("v1".into()),
            input,
            params,
            output_schema: None,
            feedback: vec![],
            timeout_ms: 30_000,
            callback: None,
        }
    }

    fn gen() -> ModelRequest {
        req(Role::Generation, json!("Hello, Claude"), json!({}))
    }

    fn classify_req() -> ModelRequest {
        req(
            Role::Classification,
            json!("I was charged twice"),
            json!({"labels": ["billing", "tech"]}),
        )
    }

    fn header<'a>(r: &'a HttpRequest, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn completed(r: Result<ModelResponse, StepError>) -> ModelOutput {
        match r.unwrap() {
            ModelResponse::Completed(o) => o,
            other => panic!("not completed: {other:?}"),
        }
    }

    /// Every field of `expected` is in `actual` (arrays element by element).
    fn assert_subset(expected: &Value, actual: &Value, ctx: &str) {
        match (expected, actual) {
            (Value::Object(e), Value::Object(a)) => {
                for (k, v) in e {
                    let got = a
                        .get(k)
                        .unwrap_or_else(|| panic!("{ctx}: missing `{k}` in {actual}"));
                    assert_subset(v, got, ctx);
                }
            }
            (Value::Array(e), Value::Array(a)) => {
                assert_eq!(e.len(), a.len(), "{ctx}: array length in {actual}");
                for (x, y) in e.iter().zip(a) {
                    assert_subset(x, y, ctx);
                }
            }
            _ => assert_eq!(expected, actual, "{ctx}"),
        }
    }

    /// Anthropic counts cache reads and writes beside `input_tokens`: they are added into the
    /// normalized input and priced at the table's cache prices (Claude 3.5 Haiku: 0.80 input,
    /// 0.08 cache read, 1.00 cache write, 4.00 output).
    #[test]
    fn usage_adds_cache_reads_and_writes_to_the_input() {
        let c = catalog();
        // (usage as answered, as read, USD)
        let table = [
            (
                json!({"input_tokens": 2095, "cache_creation_input_tokens": 0,
                       "cache_read_input_tokens": 0, "output_tokens": 503}),
                Usage::new(2095, 503),
                (2095.0 * 0.80 + 503.0 * 4.00) / 1e6,
            ),
            (
                json!({"input_tokens": 1, "cache_creation_input_tokens": 287,
                       "cache_read_input_tokens": 30433, "output_tokens": 67}),
                Usage {
                    cache_read_tokens: 30433,
                    cache_write_tokens: 287,
                    ..Usage::new(30721, 67)
                },
                (0.80 + 30433.0 * 0.08 + 287.0 * 1.00 + 67.0 * 4.00) / 1e6,
            ),
            // Older answers without the cache fields.
            (
                json!({"input_tokens": 12, "output_tokens": 3}),
                Usage::new(12, 3),
                (12.0 * 0.80 + 3.0 * 4.00) / 1e6,
            ),
        ];
        for (i, (answered, want, usd)) in table.into_iter().enumerate() {
            let mut body: Value = serde_json::from_str(MESSAGE).unwrap();
            body["usage"] = answered;
            let out = completed(from_response(
                &gen(),
                &resp(200, &[], &body.to_string()),
                &c,
                NOW,
            ));
            assert_eq!(out.usage, Some(want), "case {i}");
            assert_eq!(out.output["usage"], json!(want), "case {i}");
            assert!(
                (out.cost_usd - usd).abs() < 1e-15,
                "case {i}: {}",
                out.cost_usd
            );
        }
    }

    #[test]
    fn request_shapes() {
        let mut with_schema = req(
            Role::Extraction,
            json!({"doc": "Ada, 36"}),
            json!({"temperature": 0.0}),
        );
        with_schema.output_schema =
            Some(json!({"type": "object", "properties": {"name": {"type": "string"}}}));
        let mut array_schema = gen();
        array_schema.output_schema = Some(json!({"type": "array"}));
        let json_mode = req(
            Role::Generation,
            json!("x"),
            json!({"format": "json", "max_tokens": 64}),
        );
        let mut no_instructions = gen();
        no_instructions.instructions = None;
        let mut feedback = gen();
        feedback.feedback = vec!["at /name: required".into()];

        // (name, request, expected body subset, absent body keys)
        let table: Vec<(&str, ModelRequest, Value, Vec<&str>)> = vec![
            (
                "plain generation",
                gen(),
                json!({"model": "claude-3-5-haiku-latest", "max_tokens": 1024, "system": "Be brief.",
                       "messages": [{"role": "user", "content": "Hello, Claude"}]}),
                vec!["tools", "tool_choice", "temperature"],
            ),
            (
                "schema through a forced tool",
                with_schema,
                json!({"system": "Be brief.", "temperature": 0.0,
                       "messages": [{"role": "user", "content": "{\"doc\":\"Ada, 36\"}"}],
                       "tools": [{"name": "answer", "input_schema": {"type": "object", "properties": {"name": {"type": "string"}}}}],
                       "tool_choice": {"type": "tool", "name": "answer"}}),
                vec![],
            ),
            (
                "non-object schema is wrapped",
                array_schema,
                json!({"tools": [{"input_schema": {"type": "object", "properties": {"answer": {"type": "array"}}, "required": ["answer"]}}]}),
                vec![],
            ),
            (
                "classification labels",
                classify_req(),
                json!({"tools": [{"name": "answer", "input_schema": {"properties": {"label": {"enum": ["billing", "tech"]}}}}],
                       "tool_choice": {"type": "tool", "name": "answer"}}),
                vec![],
            ),
            (
                "format json asks in the system text",
                json_mode,
                json!({"max_tokens": 64, "system": format!("Be brief.\n\n{JSON_ONLY}")}),
                vec!["tools", "tool_choice"],
            ),
            (
                "no instructions, no system",
                no_instructions,
                json!({}),
                vec!["system"],
            ),
            (
                "feedback after the data",
                feedback,
                json!({"messages": [{"role": "user", "content": "Hello, Claude\n\nYour previous answer had these problems; answer again without them:\n- at /name: required\n"}]}),
                vec![],
            ),
        ];
        for (name, r, expected, absent) in table {
            let http = to_request(DEFAULT_BASE_URL, Some("sk-ant-test"), &r).unwrap();
            assert_eq!(http.method, "POST", "{name}");
            assert_eq!(http.url, "https://api.anthropic.com/v1/messages", "{name}");
            assert_eq!(header(&http, "x-api-key"), Some("sk-ant-test"), "{name}");
            assert_eq!(
                header(&http, "anthropic-version"),
                Some("2023-06-01"),
                "{name}"
            );
            assert_eq!(
                header(&http, "content-type"),
                Some("application/json"),
                "{name}"
            );
            assert_eq!(header(&http, "authorization"), None, "{name}");
            let body: Value = serde_json::from_slice(http.body.as_deref().unwrap()).unwrap();
            assert_subset(&expected, &body, name);
            for k in absent {
                assert!(
                    body.get(k).is_none(),
                    "{name}: `{k}` should be absent in {body}"
                );
            }
        }
        // No key, no header; a base that ends in /v1 is not doubled.
        let http = to_request("http://127.0.0.1:9/v1/", None, &gen()).unwrap();
        assert_eq!(http.url, "http://127.0.0.1:9/v1/messages");
        assert_eq!(header(&http, "x-api-key"), None);
    }

    #[test]
    fn invalid_requests() {
        let cases = [
            req(Role::Embedding, json!("x"), json!({})),
            req(Role::Asset, json!("x"), json!({})),
            req(Role::Generation, Value::Null, json!({})),
        ];
        for r in cases {
            let e = to_request(DEFAULT_BASE_URL, Some("k"), &r).unwrap_err();
            assert_eq!(e.class, ErrorClass::Invalid, "{e}");
        }
        let e = to_request(
            DEFAULT_BASE_URL,
            Some("k"),
            &req(Role::Embedding, json!("x"), json!({})),
        )
        .unwrap_err();
        assert_eq!(e.message, "Anthropic has no embeddings API");
        let e = from_response(
            &req(Role::Embedding, json!("x"), json!({})),
            &resp(200, &[], MESSAGE),
            &catalog(),
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.class, ErrorClass::Invalid);
    }

    #[test]
    fn message_fixture_normalizes() {
        let c = catalog();
        let out = completed(from_response(
            &gen(),
            &resp(
                200,
                &[("request-id", "req_018EeWyXxfu5pfWkrYcMdjWG")],
                MESSAGE,
            ),
            &c,
            NOW,
        ));
        assert_eq!(out.output["text"], "Hi! My name is Claude.");
        assert_eq!(out.output["finish_reason"], "stop");
        assert_eq!(out.output["model"], "anthropic/claude-3-5-haiku-20241022");
        assert_eq!(
            out.output["usage"],
            json!({"input_tokens": 2095, "output_tokens": 503})
        );
        assert!(out.output.get("json").is_none());
        assert_eq!(out.usage, Some(Usage::new(2095, 503)));
        assert_eq!(out.model, "anthropic/claude-3-5-haiku-20241022");
        assert_eq!(
            out.provider_request_id.as_deref(),
            Some("req_018EeWyXxfu5pfWkrYcMdjWG")
        );
        let expected = 2095.0 * 0.80 / 1e6 + 503.0 * 4.00 / 1e6;
        assert!(
            out.cost_usd > 0.0 && (out.cost_usd - expected).abs() < 1e-12,
            "{}",
            out.cost_usd
        );
        // Without the header, the body's id.
        let out = completed(from_response(&gen(), &resp(200, &[], MESSAGE), &c, NOW));
        assert_eq!(
            out.provider_request_id.as_deref(),
            Some("msg_013Zva2CMHLNnXjNJJKqJ2EF")
        );
    }

    #[test]
    fn tool_use_answers() {
        let c = catalog();
        let out = completed(from_response(
            &classify_req(),
            &resp(200, &[], TOOL_USE),
            &c,
            NOW,
        ));
        assert_eq!(
            out.output,
            json!({"label": "billing", "confidence": 0.92, "scores": {"billing": 0.92}})
        );
        assert!(out.cost_usd > 0.0);

        let mut r = gen();
        r.output_schema = Some(json!({"type": "object"}));
        let out = completed(from_response(&r, &resp(200, &[], TOOL_USE), &c, NOW));
        assert_eq!(
            out.output["json"],
            json!({"label": "billing", "confidence": 0.92})
        );
        assert_eq!(
            serde_json::from_str::<Value>(out.output["text"].as_str().unwrap()).unwrap(),
            out.output["json"]
        );
        assert_eq!(out.output["finish_reason"], "stop");

        // Wrapped schema: the answer is unwrapped.
        r.output_schema = Some(json!({"type": "array"}));
        let wrapped = TOOL_USE.replace(
            r#""label": "billing",
        "confidence": 0.92"#,
            r#""answer": ["a", "b"]"#,
        );
        assert_ne!(wrapped, TOOL_USE);
        let out = completed(from_response(&r, &resp(200, &[], &wrapped), &c, NOW));
        assert_eq!(out.output["json"], json!(["a", "b"]));

        // format: json without a schema: the text is parsed.
        let r = req(Role::Generation, json!("x"), json!({"format": "json"}));
        let body = MESSAGE.replace(
            "\"Hi! My name is Claude.\"",
            r#""```json\n{\"a\": 1}\n```""#,
        );
        let out = completed(from_response(&r, &resp(200, &[], &body), &c, NOW));
        assert_eq!(out.output["json"], json!({"a": 1}));
    }

    #[test]
    fn failures_are_classified() {
        let c = catalog();
        let refusal = MESSAGE.replace("\"end_turn\"", "\"refusal\"");
        let cut_tool = TOOL_USE.replace(
            "\"tool_use\",\n  \"stop_sequence\"",
            "\"max_tokens\",\n  \"stop_sequence\"",
        );
        let prose = MESSAGE.replace("\"Hi! My name is Claude.\"", "\"It is about billing.\"");
        // (name, request, status, headers, body, class, retry_after_ms)
        type Case<'a> = (
            &'a str,
            ModelRequest,
            u16,
            Vec<(&'a str, &'a str)>,
            &'a str,
            ErrorClass,
            Option<u64>,
        );
        let table: Vec<Case> = vec![
            (
                "529 overloaded",
                gen(),
                529,
                vec![],
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                ErrorClass::RateLimited,
                None,
            ),
            (
                "429 with retry-after",
                gen(),
                429,
                vec![("retry-after", "12")],
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
                ErrorClass::RateLimited,
                Some(12_000),
            ),
            (
                "401",
                gen(),
                401,
                vec![],
                r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
                ErrorClass::Auth,
                None,
            ),
            (
                "500",
                gen(),
                500,
                vec![],
                r#"{"type":"error","error":{"type":"api_error","message":"An unexpected error has occurred internal to Anthropic's systems."}}"#,
                ErrorClass::Transient,
                None,
            ),
            (
                "context too long",
                gen(),
                400,
                vec![],
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 215000 tokens > 200000 maximum"}}"#,
                ErrorClass::Invalid,
                None,
            ),
            (
                "refusal",
                gen(),
                200,
                vec![],
                &refusal,
                ErrorClass::Refused,
                None,
            ),
            (
                "tool input cut off",
                classify_req(),
                200,
                vec![],
                &cut_tool,
                ErrorClass::Malformed,
                None,
            ),
            (
                "prose where JSON was wanted",
                classify_req(),
                200,
                vec![],
                &prose,
                ErrorClass::Malformed,
                None,
            ),
            (
                "body not JSON",
                gen(),
                200,
                vec![],
                "upstream connect error",
                ErrorClass::Malformed,
                None,
            ),
            (
                "no content",
                gen(),
                200,
                vec![],
                r#"{"type":"message","stop_reason":"end_turn"}"#,
                ErrorClass::Malformed,
                None,
            ),
        ];
        for (name, r, status, headers, body, class, after) in table {
            let e = from_response(&r, &resp(status, &headers, body), &c, NOW).unwrap_err();
            assert_eq!(e.class, class, "{name}: {e}");
            assert_eq!(e.retry_after_ms, after, "{name}");
            assert!(
                !e.message.contains("Hi! My name"),
                "{name}: output leaked: {}",
                e.message
            );
        }
        let e = from_response(&gen(), &resp(400, &[], r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 215000 tokens > 200000 maximum"}}"#), &c, NOW).unwrap_err();
        assert!(e.message.contains("context too long"), "{}", e.message);
    }

    #[test]
    fn finish_reasons() {
        for (given, want) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("tool_use", "stop"),
            ("max_tokens", "length"),
            ("pause_turn", "pause_turn"),
        ] {
            assert_eq!(finish_reason(given), want);
        }
        let body = MESSAGE.replace("\"end_turn\"", "\"max_tokens\"");
        let out = completed(from_response(
            &gen(),
            &resp(200, &[], &body),
            &catalog(),
            NOW,
        ));
        assert_eq!(out.output["finish_reason"], "length");
    }

    #[tokio::test]
    async fn provider_surface() {
        let sender = Sender::new(crate::http::Timeouts::default()).unwrap();
        let c = Arc::new(catalog());
        let p = Anthropic::new(DEFAULT_BASE_URL, None, c.clone(), sender.clone());
        assert_eq!(p.name(), "anthropic");
        assert!(p.models().iter().any(|m| m.id == HAIKU));
        assert!(p.models().iter().all(|m| m.id.starts_with("anthropic/")));
        assert!(p.estimate_cost_usd(&gen()) > 0.0);
        let e = p.invoke(&gen()).await.unwrap_err();
        assert_eq!(
            (e.class, e.message.as_str()),
            (ErrorClass::Auth, "ANTHROPIC_API_KEY is not set")
        );
        assert_eq!(
            p.poll(&gen(), "j").await.unwrap_err().class,
            ErrorClass::Invalid
        );
        assert_eq!(
            p.parse_callback("anthropic/x", &json!({}))
                .unwrap_err()
                .class,
            ErrorClass::Invalid
        );
        let keyed = new(
            DEFAULT_BASE_URL,
            Some("sk-ant-secret-1234".into()),
            c.clone(),
            sender,
        );
        assert!(!format!("{keyed:?}").contains("sk-ant-secret"));
        assert_eq!(
            keyed.endpoint.key_for(&c, HAIKU).unwrap().as_deref(),
            Some("sk-ant-secret-1234")
        );
        assert_eq!(keyed.endpoint.base_for(&c, HAIKU), DEFAULT_BASE_URL);
    }
}
