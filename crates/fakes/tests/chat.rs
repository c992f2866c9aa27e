//! OpenAI, Anthropic and Bedrock Converse: every behaviour returns the documented status and
//! shape.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Instant;
use switchyard_fakes::Behavior;

const CLASSIFY: &str = r#"{
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["billing", "tech"]}, "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
    "required": ["label", "confidence"],
    "additionalProperties": false
}"#;

fn classify_schema() -> Value {
    serde_json::from_str(CLASSIFY).unwrap()
}

fn valid(schema: &Value, v: &Value) -> bool {
    jsonschema::validator_for(schema).unwrap().is_valid(v)
}

fn openai_chat(extra: Value) -> Value {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "I was charged twice for my subscription this month and I would like a refund please"}
        ]
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

fn all_behaviours() -> Vec<Behavior> {
    vec![
        Behavior::RateLimited {
            retry_after_secs: 2,
        },
        Behavior::Quota,
        Behavior::ServerError,
        Behavior::Overloaded,
        Behavior::Unauthorized,
        Behavior::ContextTooLong,
    ]
}

#[tokio::test]
async fn openai_answers_text_json_and_schema() {
    let s = server().await;
    let url = format!("{}/v1/chat/completions", s.url());

    let r = post(
        &url,
        &[("authorization", "Bearer sk-test")],
        &openai_chat(json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r
        .header("x-request-id")
        .is_some_and(|h| h.starts_with("req_")));
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    let message = &v["choices"][0]["message"];
    assert_eq!(message["role"], "assistant");
    assert_eq!(
        message["content"],
        "Fake answer: I was charged twice for my subscription this month and I wou"
    );
    assert_eq!(message["refusal"], Value::Null);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let usage = &v["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() >= 20);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    let schema = classify_schema();
    let r = post(
        &url,
        &[],
        &openai_chat(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": false}}})),
    )
    .await;
    let content: Value = serde_json::from_str(
        r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(valid(&schema, &content), "{content}");
    assert_eq!(content["label"], "billing");

    let r = post(
        &url,
        &[],
        &openai_chat(json!({"response_format": {"type": "json_object"}})),
    )
    .await;
    let content: Value = serde_json::from_str(
        r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(content["answer"]
        .as_str()
        .unwrap()
        .starts_with("Fake answer: I was charged"));

    // A forced function call answers through tool_calls with arguments that follow the schema.
    let r = post(
        &url,
        &[],
        &openai_chat(json!({
            "tools": [{"type": "function", "function": {"name": "answer", "parameters": schema}}],
            "tool_choice": {"type": "function", "function": {"name": "answer"}}
        })),
    )
    .await;
    let call = &r.json()["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "answer");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(valid(&schema, &args));

    // Requests the real API would reject are rejected the same way.
    let r = post(&url, &[], &json!({"messages": []})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn openai_errors_refusals_and_broken_answers() {
    let s = server().await;
    let url = format!("{}/v1/chat/completions", s.url());
    s.script("openai", all_behaviours());
    // (status, error.type, error.code, retry-after)
    let want: Vec<(u16, &str, Value, Option<&str>)> = vec![
        (429, "requests", json!("rate_limit_exceeded"), Some("2")),
        (429, "insufficient_quota", json!("insufficient_quota"), None),
        (500, "server_error", Value::Null, None),
        (503, "server_error", Value::Null, None),
        (401, "invalid_request_error", json!("invalid_api_key"), None),
        (
            400,
            "invalid_request_error",
            json!("context_length_exceeded"),
            None,
        ),
    ];
    for (status, kind, code, retry_after) in want {
        let r = post(&url, &[], &openai_chat(json!({}))).await;
        assert_eq!(r.status, status, "{}", r.text);
        let e = &r.json()["error"];
        assert_eq!(e["type"], kind, "{}", r.text);
        assert_eq!(e["code"], code, "{}", r.text);
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(e.as_object().unwrap().contains_key("param"));
        assert_eq!(r.header("retry-after"), retry_after, "{status}");
        assert!(r.header("x-request-id").is_some());
    }

    let schema = classify_schema();
    let structured = openai_chat(
        json!({"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}}),
    );
    s.script(
        "openai",
        vec![
            Behavior::Refusal,
            Behavior::Malformed,
            Behavior::SchemaInvalid,
            Behavior::Slow { ms: 300 },
        ],
    );

    let r = post(&url, &[], &structured).await;
    assert_eq!(r.status, 200);
    let m = &r.json()["choices"][0]["message"];
    assert_eq!(m["content"], Value::Null);
    assert_eq!(
        m["refusal"],
        "I'm sorry, I cannot assist with that request."
    );

    let r = post(&url, &[], &structured).await;
    assert_eq!(r.status, 200);
    assert!(
        serde_json::from_str::<Value>(&r.text).is_err(),
        "malformed must not be JSON: {}",
        r.text
    );

    let r = post(&url, &[], &structured).await;
    let content: Value = serde_json::from_str(
        r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(
        !valid(&schema, &content),
        "{content} should violate the schema"
    );

    let started = Instant::now();
    let r = post(&url, &[], &structured).await;
    assert!(started.elapsed().as_millis() >= 300);
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn openai_embeddings_are_deterministic() {
    let s = server().await;
    let url = format!("{}/v1/embeddings", s.url());
    let r = post(
        &url,
        &[],
        &json!({"model": "text-embedding-3-small", "input": "hello world"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("x-request-id").is_some());
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    assert_eq!(v["data"][0]["object"], "embedding");
    assert_eq!(v["data"][0]["index"], 0);
    let first = v["data"][0]["embedding"].as_array().unwrap().clone();
    assert_eq!(first.len(), 8);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() >= 1);
    assert_eq!(v["usage"]["prompt_tokens"], v["usage"]["total_tokens"]);

    let again = post(&url, &[], &json!({"model": "text-embedding-3-small", "input": ["hello world", "other"], "dimensions": 16})).await.json();
    assert_eq!(again["data"].as_array().unwrap().len(), 2);
    assert_eq!(again["data"][1]["index"], 1);
    assert_eq!(again["data"][0]["embedding"].as_array().unwrap().len(), 16);
    let same = post(
        &url,
        &[],
        &json!({"model": "text-embedding-3-small", "input": "hello world"}),
    )
    .await
    .json();
    assert_eq!(same["data"][0]["embedding"], Value::Array(first.clone()));
    assert_ne!(
        again["data"][1]["embedding"].as_array().unwrap()[..8],
        first[..]
    );

    let b64 = post(
        &url,
        &[],
        &json!({"model": "m", "input": "hello world", "encoding_format": "base64"}),
    )
    .await
    .json();
    assert_eq!(b64["data"][0]["embedding"].as_str().unwrap().len(), 44); // 8 × f32 = 32 bytes

    s.script(
        "openai",
        vec![Behavior::RateLimited {
            retry_after_secs: 1,
        }],
    );
    let r = post(&url, &[], &json!({"model": "m", "input": "x"})).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = post(&url, &[], &json!({"model": "m", "input": ""})).await;
    assert_eq!(r.status, 400);
}

fn anthropic_body(extra: Value) -> Value {
    let mut body = json!({
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 256,
        "system": "Classify the ticket.",
        "messages": [{"role": "user", "content": "My invoice is wrong"}]
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

#[tokio::test]
async fn anthropic_answers_and_tools() {
    let s = server().await;
    let url = format!("{}/v1/messages", s.url());
    let r = post(&url, &ANTHROPIC_HEADERS, &anthropic_body(json!({}))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r
        .header("request-id")
        .is_some_and(|h| h.starts_with("req_")));
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-3-5-haiku-latest");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "Fake answer: My invoice is wrong"}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["stop_sequence"], Value::Null);
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() >= 5);
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() >= 1);

    let schema = classify_schema();
    let forced = anthropic_body(json!({
        "tools": [{"name": "other", "input_schema": {"type": "object"}}, {"name": "answer", "description": "d", "input_schema": schema}],
        "tool_choice": {"type": "tool", "name": "answer"}
    }));
    let v = post(&url, &ANTHROPIC_HEADERS, &forced).await.json();
    assert_eq!(v["stop_reason"], "tool_use");
    let block = &v["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["name"], "answer");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert!(valid(&schema, &block["input"]));

    s.script(
        "anthropic",
        vec![
            Behavior::SchemaInvalid,
            Behavior::Refusal,
            Behavior::Malformed,
        ],
    );
    let v = post(&url, &ANTHROPIC_HEADERS, &forced).await.json();
    assert!(!valid(&schema, &v["content"][0]["input"]));
    let v = post(&url, &ANTHROPIC_HEADERS, &forced).await.json();
    assert_eq!(v["stop_reason"], "refusal");
    let r = post(&url, &ANTHROPIC_HEADERS, &forced).await;
    assert_eq!(r.status, 200);
    assert!(serde_json::from_str::<Value>(&r.text).is_err());
}

#[tokio::test]
async fn anthropic_errors() {
    let s = server().await;
    let url = format!("{}/v1/messages", s.url());
    s.script("anthropic", all_behaviours());
    let want: Vec<(u16, &str, Option<&str>)> = vec![
        (429, "rate_limit_error", Some("2")),
        (402, "billing_error", None),
        (500, "api_error", None),
        (529, "overloaded_error", None),
        (401, "authentication_error", None),
        (400, "invalid_request_error", None),
    ];
    for (status, kind, retry_after) in want {
        let r = post(&url, &ANTHROPIC_HEADERS, &anthropic_body(json!({}))).await;
        assert_eq!(r.status, status, "{}", r.text);
        let v = r.json();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], kind);
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert_eq!(v["request_id"].as_str(), r.header("request-id"));
        assert_eq!(r.header("retry-after"), retry_after);
        if status == 400 {
            assert!(v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("prompt is too long"));
        }
    }

    // Missing key or version: refused before the script is consulted.
    s.script("anthropic", vec![Behavior::ServerError]);
    let r = post(
        &url,
        &[("anthropic-version", "2023-06-01")],
        &anthropic_body(json!({})),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    let r = post(&url, &[("x-api-key", "k")], &anthropic_body(json!({}))).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("anthropic-version"));
    let r = post(&url, &ANTHROPIC_HEADERS, &anthropic_body(json!({}))).await;
    assert_eq!(r.status, 500, "the scripted error is still queued");
    let r = post(
        &url,
        &ANTHROPIC_HEADERS,
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["message"], "max_tokens: Field required");
}

const HAIKU_PATH: &str = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";

fn converse_body(extra: Value) -> Value {
    let mut body = json!({
        "system": [{"text": "Extract the fields."}],
        "messages": [{"role": "user", "content": [{"text": "Order 42 for Ada"}]}],
        "inferenceConfig": {"maxTokens": 256}
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

#[tokio::test]
async fn bedrock_answers_and_tools() {
    let s = server().await;
    let url = format!("{}{HAIKU_PATH}", s.url());
    let r = post(&url, &bedrock_headers(), &converse_body(json!({}))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("x-amzn-requestid").is_some_and(|h| h.len() == 36));
    let v = r.json();
    assert_eq!(v["output"]["message"]["role"], "assistant");
    assert_eq!(
        v["output"]["message"]["content"],
        json!([{"text": "Fake answer: Order 42 for Ada"}])
    );
    assert_eq!(v["stopReason"], "end_turn");
    let u = &v["usage"];
    assert_eq!(
        u["totalTokens"].as_u64().unwrap(),
        u["inputTokens"].as_u64().unwrap() + u["outputTokens"].as_u64().unwrap()
    );
    assert!(v["metrics"]["latencyMs"].as_u64().unwrap() >= 1);

    let schema = json!({"type": "object", "properties": {"order": {"type": "integer"}, "name": {"type": "string"}}, "required": ["order", "name"]});
    let tools = converse_body(json!({"toolConfig": {
        "tools": [{"toolSpec": {"name": "answer", "description": "d", "inputSchema": {"json": schema}}}],
        "toolChoice": {"tool": {"name": "answer"}}
    }}));
    let v = post(&url, &bedrock_headers(), &tools).await.json();
    assert_eq!(v["stopReason"], "tool_use");
    let tool = &v["output"]["message"]["content"][0]["toolUse"];
    assert_eq!(tool["name"], "answer");
    assert!(tool["toolUseId"].as_str().unwrap().starts_with("tooluse_"));
    assert!(valid(&schema, &tool["input"]));

    s.script(
        "bedrock",
        vec![
            Behavior::SchemaInvalid,
            Behavior::Refusal,
            Behavior::Malformed,
        ],
    );
    let v = post(&url, &bedrock_headers(), &tools).await.json();
    assert!(!valid(
        &schema,
        &v["output"]["message"]["content"][0]["toolUse"]["input"]
    ));
    let v = post(&url, &bedrock_headers(), &tools).await.json();
    assert_eq!(v["stopReason"], "guardrail_intervened");
    let r = post(&url, &bedrock_headers(), &tools).await;
    assert_eq!(r.status, 200);
    assert!(serde_json::from_str::<Value>(&r.text).is_err());

    // The path is recorded as sent (percent-encoded); the signature only as its scheme + scope.
    let rec = s.requests();
    assert_eq!(rec[0].path, HAIKU_PATH);
    assert_eq!(rec[0].headers["authorization"], "AWS4-HMAC-SHA256");
    assert_eq!(
        rec[0].headers["authorization-scope"],
        "20240101/us-east-1/bedrock/aws4_request"
    );
    assert!(!format!("{rec:?}").contains("AKIDEXAMPLE"));
    assert!(!format!("{rec:?}").contains("0123456789abcdef"));
}

#[tokio::test]
async fn bedrock_errors_and_signature_checks() {
    let s = server().await;
    let url = format!("{}{HAIKU_PATH}", s.url());
    s.script("bedrock", all_behaviours());
    let want: Vec<(u16, &str, Option<&str>)> = vec![
        (429, "ThrottlingException", Some("2")),
        (400, "ServiceQuotaExceededException", None),
        (500, "InternalServerException", None),
        (503, "ServiceUnavailableException", None),
        (403, "AccessDeniedException", None),
        (400, "ValidationException", None),
    ];
    for (status, kind, retry_after) in want {
        let r = post(&url, &bedrock_headers(), &converse_body(json!({}))).await;
        assert_eq!(r.status, status, "{}", r.text);
        let error_type = r.header("x-amzn-errortype").unwrap();
        assert_eq!(error_type.split(':').next(), Some(kind));
        assert!(r.json()["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(r.header("x-amzn-requestid").is_some());
        assert_eq!(r.header("retry-after"), retry_after);
    }

    // No Authorization, a non-SigV4 one, no date, the wrong service: 403, script untouched.
    s.script("bedrock", vec![Behavior::ServerError]);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("x-amz-date", "20240101T000000Z")], "MissingAuthenticationTokenException"),
        (vec![("authorization", "Bearer abc"), ("x-amz-date", "20240101T000000Z")], "IncompleteSignatureException"),
        (vec![("authorization", SIGV4)], "IncompleteSignatureException"),
        (
            vec![
                ("authorization", "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/bedrock-runtime/aws4_request, SignedHeaders=host, Signature=abc"),
                ("x-amz-date", "20240101T000000Z"),
            ],
            "InvalidSignatureException",
        ),
    ];
    for (headers, kind) in cases {
        let r = post(&url, &headers, &converse_body(json!({}))).await;
        assert_eq!(r.status, 403, "{kind}: {}", r.text);
        assert_eq!(r.header("x-amzn-errortype"), Some(kind));
        assert!(r.json()["message"].is_string());
    }
    let r = post(&url, &bedrock_headers(), &converse_body(json!({}))).await;
    assert_eq!(r.status, 500, "the scripted error is still queued");
    let refused: Vec<String> = s.requests().iter().map(|r| r.behavior.clone()).collect();
    assert!(refused.contains(&"missing_auth".to_string()), "{refused:?}");
}

/// Request headers as the helpers take them.
type Headers = Vec<(&'static str, &'static str)>;

#[tokio::test]
async fn slow_delays_every_provider_and_replicate_names_answer_on_chat() {
    let s = server().await;
    for p in ["openai", "anthropic", "bedrock", "replicate"] {
        s.script(p, vec![Behavior::Slow { ms: 200 }]);
    }
    let calls: Vec<(String, Headers, Value, u16)> = vec![
        (
            format!("{}/v1/chat/completions", s.url()),
            vec![],
            openai_chat(json!({})),
            200,
        ),
        (
            format!("{}/v1/messages", s.url()),
            ANTHROPIC_HEADERS.to_vec(),
            anthropic_body(json!({})),
            200,
        ),
        (
            format!("{}{HAIKU_PATH}", s.url()),
            bedrock_headers(),
            converse_body(json!({})),
            200,
        ),
        (
            format!(
                "{}/v1/models/black-forest-labs/flux-schnell/predictions",
                s.url()
            ),
            BEARER.to_vec(),
            json!({"input": {"prompt": "x"}}),
            201,
        ),
    ];
    for (url, headers, body, status) in &calls {
        let started = Instant::now();
        let r = post(url, headers, body).await;
        assert!(started.elapsed().as_millis() >= 200, "{url}");
        assert_eq!(r.status, *status, "{url}: {}", r.text);
    }
    // Replicate-only behaviours on chat providers: succeed / no_webhook answer, fail is a 500.
    s.script(
        "openai",
        vec![Behavior::Succeed, Behavior::NoWebhook, Behavior::Fail],
    );
    let url = format!("{}/v1/chat/completions", s.url());
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post(&url, &[], &openai_chat(json!({}))).await.status);
    }
    assert_eq!(statuses, [200, 200, 500]);
}

#[tokio::test]
async fn anthropic_structured_outputs_answer_json_text() {
    let s = server().await;
    let schema = classify_schema();
    let body = anthropic_body(json!({"output_format": {"type": "json_schema", "schema": schema}}));
    let v = post(
        &format!("{}/v1/messages", s.url()),
        &ANTHROPIC_HEADERS,
        &body,
    )
    .await
    .json();
    assert_eq!(v["stop_reason"], "end_turn");
    let text: Value = serde_json::from_str(v["content"][0]["text"].as_str().unwrap()).unwrap();
    assert!(valid(&schema, &text), "{text}");
}

/// A system prompt of about 1400 tokens: long enough for the prompt cache.
fn long_system() -> String {
    "Follow the refund policy to the letter. ".repeat(140)
}

/// Each chat API reports the fake's prompt cache in its own fields: written the first time a
/// model sees a long system prompt, read after (OpenAI: reads only, inside `prompt_tokens`, in
/// 128-token steps; Anthropic and Bedrock: beside the uncached input). Short prompts and other
/// models are not cached; `reset` empties the cache.
#[tokio::test]
async fn chat_answers_report_the_prompt_cache() {
    let s = server().await;
    let system = long_system();
    let system_tokens = (system.chars().count() as u64).div_ceil(4);
    assert!(system_tokens >= 1024);
    let cached_step = system_tokens / 128 * 128;

    // OpenAI: (model, system prompt, cached tokens reported)
    let openai = format!("{}/v1/chat/completions", s.url());
    let table = [
        ("gpt-4o-mini", system.as_str(), 0),
        ("gpt-4o-mini", system.as_str(), cached_step),
        ("gpt-4o", system.as_str(), 0),
        ("gpt-4o-mini", "Be brief.", 0),
        ("gpt-4o-mini", "Be brief.", 0),
    ];
    for (i, (model, sys, cached)) in table.into_iter().enumerate() {
        let body = openai_chat(json!({"model": model, "messages": [
            {"role": "system", "content": sys}, {"role": "user", "content": "Refund please"}]}));
        let u = post(&openai, &[], &body).await.json()["usage"].clone();
        assert_eq!(
            u["prompt_tokens_details"]["cached_tokens"], cached,
            "openai {i}: {u}"
        );
        let prompt = u["prompt_tokens"].as_u64().unwrap();
        assert!(
            prompt >= cached,
            "openai {i}: cached tokens are part of the prompt"
        );
    }

    // Anthropic: (system prompt, written, read)
    let anthropic = format!("{}/v1/messages", s.url());
    let table = [
        (system.as_str(), system_tokens, 0),
        (system.as_str(), 0, system_tokens),
        ("Classify the ticket.", 0, 0),
    ];
    for (i, (sys, written, read)) in table.into_iter().enumerate() {
        let body = anthropic_body(json!({"system": sys}));
        let u = post(&anthropic, &ANTHROPIC_HEADERS, &body).await.json()["usage"].clone();
        assert_eq!(
            u["cache_creation_input_tokens"], written,
            "anthropic {i}: {u}"
        );
        assert_eq!(u["cache_read_input_tokens"], read, "anthropic {i}: {u}");
        // The uncached rest: the user message, never the cached prompt again.
        let rest = u["input_tokens"].as_u64().unwrap();
        assert!((1..20).contains(&rest), "anthropic {i}: {u}");
    }

    // Bedrock: (system prompt, written, read); the cache fields only when the cache was used.
    let bedrock = format!("{}{HAIKU_PATH}", s.url());
    let table = [
        (system.as_str(), Some(system_tokens), Some(0)),
        (system.as_str(), Some(0), Some(system_tokens)),
        ("Extract the fields.", None, None),
    ];
    for (i, (sys, written, read)) in table.into_iter().enumerate() {
        let body = converse_body(json!({"system": [{"text": sys}]}));
        let u = post(&bedrock, &bedrock_headers(), &body).await.json()["usage"].clone();
        assert_eq!(
            u["cacheWriteInputTokens"].as_u64(),
            written,
            "bedrock {i}: {u}"
        );
        assert_eq!(u["cacheReadInputTokens"].as_u64(), read, "bedrock {i}: {u}");
        let n = |k: &str| u[k].as_u64().unwrap_or(0);
        assert!(n("inputTokens") < 20, "bedrock {i}: {u}");
        assert_eq!(
            n("totalTokens"),
            n("inputTokens")
                + n("cacheReadInputTokens")
                + n("cacheWriteInputTokens")
                + n("outputTokens"),
            "bedrock {i}: {u}"
        );
        assert_eq!(
            u.get("cacheDetails").is_some(),
            written.unwrap_or(0) > 0,
            "bedrock {i}: {u}"
        );
    }

    // After a reset the prompt is new again.
    s.reset();
    let u = post(
        &anthropic,
        &ANTHROPIC_HEADERS,
        &anthropic_body(json!({"system": system})),
    )
    .await
    .json()["usage"]
        .clone();
    assert_eq!(u["cache_creation_input_tokens"], system_tokens, "{u}");
}

/// An OpenAI reasoning model reports reasoning tokens, counted in `completion_tokens`; other
/// models report none.
#[tokio::test]
async fn openai_reasoning_models_report_reasoning_tokens() {
    let s = server().await;
    let url = format!("{}/v1/chat/completions", s.url());
    for (model, reasoning) in [
        ("o4-mini", true),
        ("gpt-5-mini", true),
        ("gpt-4o-mini", false),
    ] {
        let u = post(&url, &[], &openai_chat(json!({"model": model})))
            .await
            .json()["usage"]
            .clone();
        let thought = u["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap();
        let completion = u["completion_tokens"].as_u64().unwrap();
        assert_eq!(thought > 0, reasoning, "{model}: {u}");
        assert!(completion > thought, "{model}: visible output too: {u}");
        assert_eq!(
            u["total_tokens"].as_u64().unwrap(),
            u["prompt_tokens"].as_u64().unwrap() + completion,
            "{model}: {u}"
        );
    }
}
