//! OpenAI Chat Completions and Embeddings, and every server that speaks them (Ollama, vLLM,
//! LM Studio: catalog entries with `"api": "openai"` and their own `base_url`).
//!
//! Pure: [`to_request`] builds the HTTP request, [`from_response`] reads the answer. The
//! [`OpenAi`] provider only picks the base URL and key, sends, and logs metadata (model,
//! status, latency, request id — never prompts, outputs or keys).
//!
//! Wire format (Chat Completions): `POST {base}/chat/completions` with a `system` message (the
//! rendered instructions) and a `user` message (the data, then any repair feedback). A JSON
//! Schema answer goes through `response_format: {type: "json_schema", json_schema: {name,
//! schema, strict: false}}`; `format: json` alone through `{type: "json_object"}`. The output
//! limit is `max_completion_tokens` for `openai/*` models (OpenAI deprecated `max_tokens`, and
//! reasoning models reject it) and `max_tokens` for OpenAI-compatible servers, which document
//! only that one. Embeddings: `POST {base}/embeddings` with `{model, input}`. The moderation
//! models (`omni-moderation-*`, `text-moderation-*`): `POST {base}/moderations`, see
//! [`moderation`].

pub mod moderation;

use crate::call::{Chat, ChatApi, FromResponse, ToRequest};
use crate::catalog::Catalog;
use crate::classify::{check_status, Api};
use crate::hosted::{
    self, answered_by, malformed, object_schema, truncated, unwrap_answer, ANSWER,
};
use crate::http::{HttpRequest, HttpResponse, Sender};
use crate::keys::Endpoint;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use switchyard_core::model::{
    normalized, split_model, ModelOutput, ModelRequest, ModelResponse, Role,
};
use switchyard_core::state::Usage;
use switchyard_core::{ErrorClass, StepError};

/// The public OpenAI API.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// The OpenAI API's pure halves.
#[derive(Debug, Clone, Copy)]
pub struct OpenAiApi;

impl ChatApi for OpenAiApi {
    const TYPE_NAME: &'static str = "OpenAi";
    const REQUEST_ID_HEADER: &'static str = "x-request-id";
    const TO_REQUEST: ToRequest = to_request;
    const FROM_RESPONSE: FromResponse = from_response;
}

/// The adapter for one provider prefix served through the OpenAI API.
pub type OpenAi = Chat<OpenAiApi>;

/// Same as [`OpenAi::new`].
pub fn new(
    name: &str,
    base_url: &str,
    api_key: Option<String>,
    catalog: Arc<Catalog>,
    sender: Sender,
) -> OpenAi {
    OpenAi::new(name, base_url, api_key, catalog, sender)
}

impl Chat<OpenAiApi> {
    /// `name` is the prefix it serves (`openai`, `ollama`, `vllm`...); `base_url` is used for
    /// models whose catalog entry names none. An empty key counts as none. Entries' own key
    /// variables are read from the environment unless [`OpenAi::with_secrets`] says otherwise.
    pub fn new(
        name: &str,
        base_url: &str,
        api_key: Option<String>,
        catalog: Arc<Catalog>,
        sender: Sender,
    ) -> OpenAi {
        Chat::from_parts(
            Endpoint::new(name, base_url, api_key, "OPENAI_API_KEY"),
            catalog,
            sender,
        )
    }
}

/// Builds the HTTP request for a step: chat completions, or embeddings for the embedding role.
/// The `Authorization` header is sent only when a key is given (Ollama needs none).
pub fn to_request(
    base_url: &str,
    api_key: Option<&str>,
    req: &ModelRequest,
) -> Result<HttpRequest, StepError> {
    if moderation::is_moderation_model(&req.model) {
        return moderation::to_request(base_url, api_key, req);
    }
    let base = base_url.trim_end_matches('/');
    let (url, body) = match req.role {
        Role::Embedding => (
            format!("{base}/embeddings"),
            json!({"model": req.model_name(), "input": hosted::user_text(req)}),
        ),
        Role::Classification | Role::Extraction | Role::Generation => {
            (format!("{base}/chat/completions"), chat_body(req))
        }
        Role::Moderation | Role::Transcription | Role::Asset | Role::Retrieval => {
            return Err(StepError::new(
                ErrorClass::Invalid,
                format!(
                    "the OpenAI adapter does not serve the {} role with this model",
                    req.role.as_str()
                ),
            ))
        }
    };
    Ok(post(url, &body, api_key))
}

/// `POST url` with a JSON body, and the `Authorization` header only when a key is given.
fn post(url: String, body: &Value, api_key: Option<&str>) -> HttpRequest {
    let http = HttpRequest::post_json(url, body);
    match api_key.filter(|k| !k.trim().is_empty()) {
        Some(key) => http.header("authorization", format!("Bearer {key}")),
        None => http,
    }
}

fn chat_body(req: &ModelRequest) -> Value {
    let schema = hosted::answer_schema(req);
    let mut system = hosted::system_text(req).unwrap_or_default();
    if schema.is_none() && hosted::wants_json(req) {
        if !system.is_empty() {
            system.push_str("\n\n");
        }
        system.push_str(hosted::JSON_ONLY);
    }
    let mut messages = Vec::new();
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": hosted::user_text(req)}));

    let mut body = Map::new();
    body.insert("model".into(), json!(req.model_name()));
    body.insert("messages".into(), Value::Array(messages));
    let limit = if split_model(&req.model).0 == "openai" {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    body.insert(limit.into(), json!(hosted::max_tokens(req)));
    if let Some(t) = hosted::temperature(req) {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(schema) = schema {
        body.insert(
            "response_format".into(),
            json!({
                "type": "json_schema",
                "json_schema": {"name": ANSWER, "schema": object_schema(schema).0, "strict": false}
            }),
        );
    } else if hosted::wants_json(req) {
        body.insert("response_format".into(), json!({"type": "json_object"}));
    }
    Value::Object(body)
}

/// Reads an answer: non-2xx through the one classifier; then the normalized output of the
/// step's role, usage, cost (catalog price of the requested model) and the request id.
pub fn from_response(
    req: &ModelRequest,
    resp: &HttpResponse,
    catalog: &Catalog,
    now_ms: u64,
) -> Result<ModelResponse, StepError> {
    if moderation::is_moderation_model(&req.model) {
        return moderation::from_response(req, resp, catalog, now_ms);
    }
    check_status(Api::OpenAi, resp, now_ms)?;
    let body = resp
        .json()
        .ok_or_else(|| malformed("the OpenAI answer is not JSON"))?;
    if !body.is_object() {
        return Err(malformed("the OpenAI answer is not a JSON object"));
    }
    let usage = read_usage(&body);
    let model = answer_model(req, &body).to_string();
    let output = match req.role {
        Role::Embedding => embedding(&body)?,
        _ => chat(req, &body, usage.unwrap_or_default(), &model)?,
    };
    Ok(ModelResponse::Completed(ModelOutput {
        output,
        usage,
        cost_usd: catalog.cost_usd(&req.model, usage, None),
        model: answered_by(req, &model),
        provider_request_id: request_id(resp, &body),
        sources: Vec::new(),
    }))
}

/// The model the answer names (`model`), else the requested one.
fn answer_model<'a>(req: &'a ModelRequest, body: &'a Value) -> &'a str {
    body.get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or(req.model_name())
}

/// The `x-request-id` header, else the answer's `id`.
fn request_id(resp: &HttpResponse, body: &Value) -> Option<String> {
    resp.header("x-request-id")
        .filter(|v| !v.trim().is_empty())
        .map(str::to_string)
        .or_else(|| body.get("id").and_then(Value::as_str).map(str::to_string))
}

/// `usage.prompt_tokens` / `completion_tokens` (embeddings have no completion tokens), and
/// their details where given: `prompt_tokens_details.cached_tokens` (cache reads, already
/// counted in `prompt_tokens`, as [`Usage`] counts them) and
/// `completion_tokens_details.reasoning_tokens` (already in `completion_tokens`). OpenAI
/// reports no cache writes (they cost nothing extra).
fn read_usage(body: &Value) -> Option<Usage> {
    let u = body.get("usage").filter(|u| u.is_object())?;
    let count = |path: &[&str]| {
        path.iter()
            .try_fold(u, |v, k| v.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Some(Usage {
        cache_read_tokens: count(&["prompt_tokens_details", "cached_tokens"]),
        reasoning_tokens: count(&["completion_tokens_details", "reasoning_tokens"]),
        ..Usage::new(count(&["prompt_tokens"]), count(&["completion_tokens"]))
    })
}

fn chat(req: &ModelRequest, body: &Value, usage: Usage, model: &str) -> Result<Value, StepError> {
    let choice = hosted::field(body, &["choices", "0"], "openai")?;
    let message = hosted::field(choice, &["message"], "openai")?;
    let finish = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    // The refusal text is model output: it stays out of the error message.
    let refused = message
        .get("refusal")
        .and_then(Value::as_str)
        .is_some_and(|r| !r.trim().is_empty());
    if refused {
        return Err(StepError::new(
            ErrorClass::Refused,
            "openai: the model refused to answer",
        ));
    }
    if finish == "content_filter" {
        return Err(StepError::new(
            ErrorClass::Refused,
            "openai: the answer was withheld by the content filter",
        ));
    }
    let wants_json = hosted::wants_json(req);
    if finish == "length" && wants_json {
        return Err(truncated(req));
    }
    let text = message
        .get("content")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("openai response lacks `choices.0.message.content`"))?;
    let parsed = if wants_json {
        Some(unwrap_answer(req, hosted::parse_json_text(text)?)?)
    } else {
        None
    };
    hosted::normalize(req, text, parsed, usage, finish, model)
}

fn embedding(body: &Value) -> Result<Value, StepError> {
    let values = hosted::field(body, &["data", "0", "embedding"], "openai")?
        .as_array()
        .ok_or_else(|| malformed("openai embedding is not a list of numbers"))?;
    let vector = values
        .iter()
        .map(Value::as_f64)
        .collect::<Option<Vec<f64>>>()
        .ok_or_else(|| malformed("openai embedding is not a list of numbers"))?;
    if vector.is_empty() {
        return Err(malformed("openai embedding is empty"));
    }
    Ok(normalized::embedding(vector))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosted::JSON_ONLY;
    use crate::testing::{catalog, response as resp};
    use switchyard_core::model::Provider;

    const CHAT: &str = include_str!("../tests/fixtures/openai_chat_completion.json");
    const STRUCTURED: &str = include_str!("../tests/fixtures/openai_chat_structured.json");
    const REFUSAL: &str = include_str!("../tests/fixtures/openai_chat_refusal.json");
    const EMBEDDINGS: &str = include_str!("../tests/fixtures/openai_embeddings.json");
    const NOW: u64 = 1_700_000_000_000;

    fn req(model: &str, role: Role, input: Value, params: Value) -> ModelRequest {
        ModelRequest {
            prompt_version: Some("v1".into()),
            input,
            params,
            timeout_ms: 30_000,
            callback: None,
            ..crate::testing::request(model, role)
        }
    }

    fn gen() -> ModelRequest {
        req(
            "openai/gpt-4o-mini",
            Role::Generation,
            json!("Hello!"),
            json!({}),
        )
    }

    fn classify_req() -> ModelRequest {
        req(
            "openai/gpt-4o-mini",
            Role::Classification,
            json!("I was charged twice"),
            json!({"labels": ["billing", "tech"]}),
        )
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

    fn completed(r: Result<ModelResponse, StepError>) -> ModelOutput {
        match r.unwrap() {
            ModelResponse::Completed(o) => o,
            other => panic!("not completed: {other:?}"),
        }
    }

    #[test]
    fn request_shapes() {
        let mut with_feedback = gen();
        with_feedback.feedback = vec!["at /title: too long".into()];
        let mut with_schema = gen();
        with_schema.role = Role::Extraction;
        with_schema.output_schema =
            Some(json!({"type": "object", "properties": {"name": {"type": "string"}}}));
        let mut array_schema = gen();
        array_schema.output_schema = Some(json!({"type": "array", "items": {"type": "string"}}));
        let mut no_instructions = gen();
        no_instructions.instructions = None;
        let json_mode = req(
            "openai/gpt-4o-mini",
            Role::Generation,
            json!({"a": 1}),
            json!({"format": "json", "max_tokens": 50, "temperature": 0.2}),
        );
        let ollama = req("ollama/llama3.2", Role::Generation, json!("hi"), json!({}));
        let embed = req(
            "openai/text-embedding-3-small",
            Role::Embedding,
            json!("The food was delicious"),
            json!({}),
        );

        // (name, request, key, url, expected body subset, absent body keys, bearer)
        type Case<'a> = (
            &'a str,
            ModelRequest,
            Option<&'a str>,
            &'a str,
            Value,
            Vec<&'a str>,
            Option<&'a str>,
        );
        let table: Vec<Case> = vec![
            (
                "plain generation",
                gen(),
                Some("sk-test"),
                "https://api.openai.com/v1/chat/completions",
                json!({"model": "gpt-4o-mini", "max_completion_tokens": 1024,
                       "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]}),
                vec!["response_format", "temperature", "max_tokens"],
                Some("Bearer sk-test"),
            ),
            (
                "repair feedback goes to the user message",
                with_feedback,
                Some("sk-test"),
                "https://api.openai.com/v1/chat/completions",
                json!({"messages": [{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": "Hello!\n\nYour previous answer had these problems; answer again without them:\n- at /title: too long\n"}]}),
                vec![],
                Some("Bearer sk-test"),
            ),
            (
                "schema in response_format",
                with_schema,
                Some("sk-test"),
                "https://api.openai.com/v1/chat/completions",
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "strict": false,
                       "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}}}),
                vec![],
                Some("Bearer sk-test"),
            ),
            (
                "non-object schema is wrapped",
                array_schema,
                Some("sk-test"),
                "https://api.openai.com/v1/chat/completions",
                json!({"response_format": {"json_schema": {"schema": {"type": "object", "required": ["answer"],
                       "properties": {"answer": {"type": "array", "items": {"type": "string"}}}}}}}),
                vec![],
                Some("Bearer sk-test"),
            ),
            (
                "classification gets the label schema",
                classify_req(),
                Some("sk-test"),
                "https://api.openai.com/v1/chat/completions",
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "answer",
                       "schema": {"properties": {"label": {"enum": ["billing", "tech"]}}}}},
                       "messages": [{"role": "system"}, {"role": "user", "content": "I was charged twice"}]}),
                vec![],
                Some("Bearer sk-test"),
            ),
            (
                "format json without schema",
                json_mode,
                Some("sk-test"),
                "https://api.openai.com/v1/chat/completions",
                json!({"response_format": {"type": "json_object"}, "max_completion_tokens": 50, "temperature": 0.2,
                       "messages": [{"role": "system", "content": format!("Be brief.\n\n{JSON_ONLY}")}, {"role": "user", "content": "{\"a\":1}"}]}),
                vec![],
                Some("Bearer sk-test"),
            ),
            (
                "no instructions, no system message",
                no_instructions,
                Some("sk-test"),
                "https://api.openai.com/v1/chat/completions",
                json!({"messages": [{"role": "user", "content": "Hello!"}]}),
                vec![],
                Some("Bearer sk-test"),
            ),
            (
                "compatible server: max_tokens, no key",
                ollama,
                None,
                "http://127.0.0.1:11434/v1/chat/completions",
                json!({"model": "llama3.2", "max_tokens": 1024}),
                vec!["max_completion_tokens"],
                None,
            ),
            (
                "embeddings",
                embed,
                Some("sk-test"),
                "https://api.openai.com/v1/embeddings",
                json!({"model": "text-embedding-3-small", "input": "The food was delicious"}),
                vec!["messages", "max_tokens", "max_completion_tokens"],
                Some("Bearer sk-test"),
            ),
        ];
        for (name, r, key, url, expected, absent, bearer) in table {
            let base = if url.starts_with("http://127") {
                "http://127.0.0.1:11434/v1/"
            } else {
                DEFAULT_BASE_URL
            };
            let http = to_request(base, key, &r).unwrap();
            assert_eq!(http.method, "POST", "{name}");
            assert_eq!(http.url, url, "{name}");
            assert_eq!(
                header(&http, "content-type"),
                Some("application/json"),
                "{name}"
            );
            assert_eq!(header(&http, "authorization"), bearer, "{name}");
            let body = body_of(&http);
            assert_subset(&expected, &body, name);
            for k in absent {
                assert!(
                    body.get(k).is_none(),
                    "{name}: `{k}` should be absent in {body}"
                );
            }
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

    #[test]
    fn unsupported_roles_are_invalid() {
        for role in [Role::Transcription, Role::Asset, Role::Retrieval] {
            let r = req("openai/gpt-4o-mini", role, json!("x"), json!({}));
            assert_eq!(
                to_request(DEFAULT_BASE_URL, None, &r).unwrap_err().class,
                ErrorClass::Invalid
            );
        }
    }

    #[test]
    fn chat_fixture_normalizes() {
        let c = catalog();
        let r = resp(200, &[("x-request-id", "req_8d3f1c2b")], CHAT);
        let out = completed(from_response(&gen(), &r, &c, NOW));
        assert_eq!(out.output["text"], "Hello! How can I assist you today?");
        assert_eq!(out.output["finish_reason"], "stop");
        assert_eq!(out.output["model"], "openai/gpt-4o-mini-2024-07-18");
        assert_eq!(
            out.output["usage"],
            json!({"input_tokens": 19, "output_tokens": 10})
        );
        assert!(out.output.get("json").is_none());
        assert_eq!(out.usage, Some(Usage::new(19, 10)));
        assert_eq!(out.model, "openai/gpt-4o-mini-2024-07-18");
        assert_eq!(out.provider_request_id.as_deref(), Some("req_8d3f1c2b"));
        let expected = 19.0 * 0.15 / 1e6 + 10.0 * 0.60 / 1e6;
        assert!(
            out.cost_usd > 0.0 && (out.cost_usd - expected).abs() < 1e-12,
            "{}",
            out.cost_usd
        );

        // Without the header, the body's id.
        let out = completed(from_response(&gen(), &resp(200, &[], CHAT), &c, NOW));
        assert_eq!(
            out.provider_request_id.as_deref(),
            Some("chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT")
        );
    }

    /// Cached and reasoning tokens are read from the usage details; cached input is priced at
    /// the table's cache price (gpt-4o-mini: 0.15 input, 0.075 cached, 0.60 output).
    #[test]
    fn usage_keeps_cached_and_reasoning_tokens() {
        let c = catalog();
        let cached = |input, output, read, reasoning| Usage {
            cache_read_tokens: read,
            reasoning_tokens: reasoning,
            ..Usage::new(input, output)
        };
        // (usage as answered, as read, USD)
        let table = [
            (
                json!({"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29}),
                Usage::new(19, 10),
                (19.0 * 0.15 + 10.0 * 0.60) / 1e6,
            ),
            (
                json!({"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                       "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                       "completion_tokens_details": {"reasoning_tokens": 192, "audio_tokens": 0,
                           "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}),
                cached(2006, 300, 1920, 192),
                (86.0 * 0.15 + 1920.0 * 0.075 + 300.0 * 0.60) / 1e6,
            ),
            // OpenAI-compatible servers may send the details as null, or leave them out.
            (
                json!({"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": null,
                       "completion_tokens_details": null}),
                Usage::new(5, 1),
                (5.0 * 0.15 + 0.60) / 1e6,
            ),
        ];
        for (i, (answered, want, usd)) in table.into_iter().enumerate() {
            let mut body: Value = serde_json::from_str(CHAT).unwrap();
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
    fn structured_answers() {
        let c = catalog();
        // Classification: {label, confidence, scores}.
        let out = completed(from_response(
            &classify_req(),
            &resp(200, &[], STRUCTURED),
            &c,
            NOW,
        ));
        assert_eq!(
            out.output,
            json!({"label": "billing", "confidence": 0.92, "scores": {"billing": 0.92}})
        );
        assert_eq!(out.usage, Some(Usage::new(112, 12)));
        assert!(out.cost_usd > 0.0);

        // Generation with a schema: the parsed answer in `json`.
        let mut r = gen();
        r.output_schema = Some(json!({"type": "object"}));
        let out = completed(from_response(&r, &resp(200, &[], STRUCTURED), &c, NOW));
        assert_eq!(
            out.output["json"],
            json!({"label": "billing", "confidence": 0.92})
        );

        // A wrapped (non-object) schema is unwrapped.
        r.output_schema = Some(json!({"type": "array"}));
        let body = CHAT.replace(
            "\"Hello! How can I assist you today?\"",
            r#""{\"answer\": [\"a\", \"b\"]}""#,
        );
        let out = completed(from_response(&r, &resp(200, &[], &body), &c, NOW));
        assert_eq!(out.output["json"], json!(["a", "b"]));
        let body = CHAT.replace("\"Hello! How can I assist you today?\"", r#""[\"a\"]""#);
        assert_eq!(
            from_response(&r, &resp(200, &[], &body), &c, NOW)
                .unwrap_err()
                .class,
            ErrorClass::Malformed
        );
    }

    #[test]
    fn embeddings_fixture_normalizes() {
        let c = catalog();
        let r = req(
            "openai/text-embedding-3-small",
            Role::Embedding,
            json!("The food was delicious"),
            json!({}),
        );
        let out = completed(from_response(
            &r,
            &resp(200, &[("x-request-id", "req_e1")], EMBEDDINGS),
            &c,
            NOW,
        ));
        assert_eq!(
            out.output,
            json!({"vector": [0.0023064255, -0.009327292, 0.015797347, -0.0077780345, -0.0046922187]})
        );
        assert_eq!(out.usage, Some(Usage::new(8, 0)));
        assert!(out.cost_usd > 0.0);
        assert_eq!(out.model, "openai/text-embedding-3-small");
        assert_eq!(out.provider_request_id.as_deref(), Some("req_e1"));
    }

    #[test]
    fn failures_are_classified() {
        let c = catalog();
        let length = CHAT
            .replace(
                "\"finish_reason\": \"stop\"",
                "\"finish_reason\": \"length\"",
            )
            .replace(
                "\"Hello! How can I assist you today?\"",
                r#""{\"label\": \"bil""#,
            );
        let filtered = CHAT.replace(
            "\"finish_reason\": \"stop\"",
            "\"finish_reason\": \"content_filter\"",
        );
        let not_json = CHAT.replace(
            "\"Hello! How can I assist you today?\"",
            "\"billing, I think\"",
        );
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
                "429 with retry-after",
                gen(),
                429,
                vec![("retry-after", "7")],
                r#"{"error":{"message":"Rate limit reached for gpt-4o-mini","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
                ErrorClass::RateLimited,
                Some(7000),
            ),
            (
                "insufficient quota",
                gen(),
                429,
                vec![],
                r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
                ErrorClass::QuotaExhausted,
                None,
            ),
            (
                "401",
                gen(),
                401,
                vec![],
                r#"{"error":{"message":"Incorrect API key provided: sk-proj-abcdefghijk. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
                ErrorClass::Auth,
                None,
            ),
            (
                "500",
                gen(),
                500,
                vec![],
                r#"{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}"#,
                ErrorClass::Transient,
                None,
            ),
            (
                "context too long",
                gen(),
                400,
                vec![],
                r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
                ErrorClass::Invalid,
                None,
            ),
            (
                "refusal field",
                classify_req(),
                200,
                vec![],
                REFUSAL,
                ErrorClass::Refused,
                None,
            ),
            (
                "content filter",
                gen(),
                200,
                vec![],
                &filtered,
                ErrorClass::Refused,
                None,
            ),
            (
                "cut off JSON",
                classify_req(),
                200,
                vec![],
                &length,
                ErrorClass::Malformed,
                None,
            ),
            (
                "JSON expected, prose given",
                classify_req(),
                200,
                vec![],
                &not_json,
                ErrorClass::Malformed,
                None,
            ),
            (
                "body not JSON",
                gen(),
                200,
                vec![],
                "<html>oops</html>",
                ErrorClass::Malformed,
                None,
            ),
            (
                "no choices",
                gen(),
                200,
                vec![],
                r#"{"id":"x","choices":[]}"#,
                ErrorClass::Malformed,
                None,
            ),
            (
                "null content",
                gen(),
                200,
                vec![],
                r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null},"finish_reason":"tool_calls"}]}"#,
                ErrorClass::Malformed,
                None,
            ),
            (
                "embedding not numbers",
                req(
                    "openai/text-embedding-3-small",
                    Role::Embedding,
                    json!("x"),
                    json!({}),
                ),
                200,
                vec![],
                r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":"AAAA"}]}"#,
                ErrorClass::Malformed,
                None,
            ),
        ];
        for (name, r, status, headers, body, class, after) in table {
            let e = from_response(&r, &resp(status, &headers, body), &c, NOW).unwrap_err();
            assert_eq!(e.class, class, "{name}: {e}");
            assert_eq!(e.retry_after_ms, after, "{name}");
            assert!(
                !e.message.contains("sk-proj-abcdefghijk"),
                "{name}: {}",
                e.message
            );
            assert!(
                !e.message.contains("I'm sorry"),
                "{name}: refusal text leaked: {}",
                e.message
            );
        }
    }

    #[tokio::test]
    async fn provider_surface() {
        let sender = Sender::new(crate::http::Timeouts::default()).unwrap();
        let c = Arc::new(catalog());
        let p = OpenAi::new("openai", DEFAULT_BASE_URL, None, c.clone(), sender.clone());
        assert_eq!(p.name(), "openai");
        assert!(p.models().iter().any(|m| m.id == "openai/gpt-4o-mini"));
        assert!(p.models().iter().all(|m| m.id.starts_with("openai/")));
        assert!(p.estimate_cost_usd(&gen()) > 0.0);
        // No key for OpenAI proper: auth, before any network.
        let e = p.invoke(&gen()).await.unwrap_err();
        assert_eq!(
            (e.class, e.message.as_str()),
            (ErrorClass::Auth, "OPENAI_API_KEY is not set")
        );
        assert_eq!(
            p.poll(&gen(), "j").await.unwrap_err().class,
            ErrorClass::Invalid
        );
        assert_eq!(
            p.parse_callback("openai/x", &json!({})).unwrap_err().class,
            ErrorClass::Invalid
        );
        let dbg = format!(
            "{:?}",
            new(
                "openai",
                DEFAULT_BASE_URL,
                Some("sk-secret-123456".into()),
                c.clone(),
                sender.clone()
            )
        );
        assert!(!dbg.contains("sk-secret"), "{dbg}");

        let o = new(
            "ollama",
            "http://127.0.0.1:11434/v1",
            None,
            c.clone(),
            sender,
        );
        assert_eq!(o.name(), "ollama");
        assert_eq!(
            o.models().iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            vec!["ollama/llama3.2"]
        );
        assert_eq!(
            o.endpoint.base_for(&c, "ollama/llama3.2"),
            "http://127.0.0.1:11434/v1"
        );
        assert_eq!(o.endpoint.key_for(&c, "ollama/llama3.2").unwrap(), None);
    }
}
