//! The hosted-API adapters against the fake provider servers (`switchyard-fakes`), over real
//! HTTP on localhost: each adapter is built with the fake's URL as its base URL and exercised
//! through the `Provider` port only (`invoke`, `poll`, `parse_callback`). Every scripted
//! behaviour must come back as the right normalized output or error class.
//!
//! `schema_invalid` answers are *successes* for the adapters (the engine validates outputs
//! against their schema), so those tests check that the adapter passes the JSON through.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchyard_core::model::{Callback, ModelOutput, ModelRequest, ModelResponse, Provider, Role};
use switchyard_core::state::Usage;
use switchyard_core::{ErrorClass, StepError};
use switchyard_fakes::{Behavior, FakeConfig, FakeServer, WebhookReceiver};
use switchyard_providers::anthropic::Anthropic;
use switchyard_providers::bedrock::{AwsCredentials, Bedrock};
use switchyard_providers::catalog::Catalog;
use switchyard_providers::http::{Sender, Timeouts};
use switchyard_providers::openai::OpenAi;
use switchyard_providers::replicate::Replicate;

const GPT: &str = "openai/gpt-4o-mini";
const EMBED: &str = "openai/text-embedding-3-small";
const HAIKU: &str = "anthropic/claude-3-5-haiku-latest";
const BEDROCK_HAIKU: &str = "bedrock/anthropic.claude-3-haiku-20240307-v1:0";
const BEDROCK_LLAMA: &str = "bedrock/meta.llama3-1-8b-instruct-v1:0";
const BEDROCK_NOVA: &str = "bedrock/amazon.nova-lite-v1:0";
const FLUX: &str = "replicate/black-forest-labs/flux-schnell";
const WHISPER: &str = "replicate/openai/whisper";

fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::load(None).unwrap())
}

fn sender() -> Sender {
    Sender::new(Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(20),
    })
    .unwrap()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn request(model: &str, role: Role, input: Value) -> ModelRequest {
    ModelRequest {
        run_id: "run-1".into(),
        step: "step-1".into(),
        attempt: 1,
        model: model.into(),
        role,
        instructions: Some("Answer briefly.".into()),
        prompt_version: Some("v1".into()),
        input,
        params: json!({}),
        output_schema: None,
        feedback: vec![],
        timeout_ms: 10_000,
        callback: None,
    }
}

fn generation(model: &str) -> ModelRequest {
    request(
        model,
        Role::Generation,
        json!("Please summarise the refund policy for annual plans"),
    )
}

fn classification(model: &str) -> ModelRequest {
    let mut r = request(model, Role::Classification, json!("I was charged twice"));
    r.params = json!({"labels": ["billing", "tech"]});
    r
}

fn order_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "order_id": {"type": "integer", "minimum": 1},
            "customer": {"type": "string", "minLength": 2},
            "items": {"type": "array", "items": {"type": "string"}, "minItems": 1}
        },
        "required": ["order_id", "customer", "items"],
        "additionalProperties": false
    })
}

fn extraction(model: &str) -> ModelRequest {
    let mut r = request(
        model,
        Role::Extraction,
        json!("Order 42 for Ada: two lamps"),
    );
    r.output_schema = Some(order_schema());
    r
}

fn completed(r: Result<ModelResponse, StepError>) -> ModelOutput {
    match r {
        Ok(ModelResponse::Completed(o)) => o,
        other => panic!("expected a completed answer, got {other:?}"),
    }
}

/// Whether a value follows a schema, by the engine's own validator.
fn follows(schema: &Value, v: &Value) -> bool {
    switchyard_core::schema::validate(schema, v).is_ok()
}

/// The checks every successful chat answer passes: text, usage, cost, model, request id.
fn check_chat_success(out: &ModelOutput, model: &str, request_id_prefix: &str) {
    assert!(
        out.output["text"]
            .as_str()
            .unwrap()
            .starts_with("Fake answer: Please summarise"),
        "{}",
        out.output
    );
    let usage = out.usage.expect("usage");
    assert!(
        usage.input_tokens > 0 && usage.output_tokens > 0,
        "{usage:?}"
    );
    assert_eq!(out.output["usage"]["input_tokens"], usage.input_tokens);
    assert!(out.cost_usd > 0.0, "cost {}", out.cost_usd);
    assert_eq!(out.model, model);
    assert_eq!(out.output["finish_reason"], "stop");
    let id = out.provider_request_id.as_deref().expect("request id");
    assert!(id.starts_with(request_id_prefix), "{id}");
}

/// Scripts each behaviour, invokes once, and checks the error class (and `retry_after_ms`).
async fn check_errors(
    fake: &FakeServer,
    api: &str,
    provider: &dyn Provider,
    req: &ModelRequest,
    table: &[(Behavior, ErrorClass, Option<u64>)],
) {
    for (behavior, class, retry_after) in table {
        fake.script(api, vec![behavior.clone()]);
        let e = provider
            .invoke(req)
            .await
            .expect_err(&format!("{api} {behavior} should fail"));
        assert_eq!(e.class, *class, "{api} {behavior}: {e}");
        assert_eq!(
            e.retry_after_ms, *retry_after,
            "{api} {behavior}: retry-after"
        );
        if *behavior == Behavior::ContextTooLong {
            assert!(
                e.message.contains("context too long"),
                "{api}: {}",
                e.message
            );
        }
    }
    assert!(
        fake.queued().get(api).is_none_or(Vec::is_empty),
        "{api}: every scripted behaviour was used"
    );
}

/// A scripted delay longer than the step's timeout is a `timeout`, cut at the step's deadline.
async fn check_timeout(fake: &FakeServer, api: &str, provider: &dyn Provider, req: &ModelRequest) {
    let mut req = req.clone();
    req.timeout_ms = 300;
    fake.script(api, vec![Behavior::Slow { ms: 3_000 }]);
    let started = Instant::now();
    let e = provider
        .invoke(&req)
        .await
        .expect_err("slow answer should time out");
    assert_eq!(e.class, ErrorClass::Timeout, "{api}: {e}");
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "{api}: the step timeout was not applied"
    );
}

/// The error table shared by the chat adapters (overload is API-specific).
fn chat_errors(overloaded: ErrorClass) -> Vec<(Behavior, ErrorClass, Option<u64>)> {
    vec![
        (
            Behavior::RateLimited {
                retry_after_secs: 2,
            },
            ErrorClass::RateLimited,
            Some(2_000),
        ),
        (Behavior::Quota, ErrorClass::QuotaExhausted, None),
        (Behavior::ServerError, ErrorClass::Transient, None),
        (Behavior::Overloaded, overloaded, None),
        (Behavior::Unauthorized, ErrorClass::Auth, None),
        (Behavior::ContextTooLong, ErrorClass::Invalid, None),
        (Behavior::Malformed, ErrorClass::Malformed, None),
        (Behavior::Refusal, ErrorClass::Refused, None),
    ]
}

// ---------------------------------------------------------------- OpenAI

fn openai(fake: &FakeServer) -> OpenAi {
    OpenAi::new(
        "openai",
        &format!("{}/v1", fake.url()),
        Some("sk-test-0123456789".into()),
        catalog(),
        sender(),
    )
}

#[tokio::test]
async fn openai_success_shapes() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let p = openai(&fake);

    let out = completed(p.invoke(&generation(GPT)).await);
    check_chat_success(&out, GPT, "req_");

    let out = completed(p.invoke(&classification(GPT)).await);
    assert_eq!(out.output["label"], "billing");
    assert!(out.output["confidence"].as_f64().unwrap() <= 1.0);

    let out = completed(p.invoke(&extraction(GPT)).await);
    assert!(
        follows(&order_schema(), &out.output["json"]),
        "{}",
        out.output
    );

    let out = completed(
        p.invoke(&request(EMBED, Role::Embedding, json!("refund policy")))
            .await,
    );
    assert_eq!(out.output["vector"].as_array().unwrap().len(), 8);
    assert!(out.cost_usd > 0.0);
    let again = completed(
        p.invoke(&request(EMBED, Role::Embedding, json!("refund policy")))
            .await,
    );
    assert_eq!(again.output, out.output, "embeddings are deterministic");

    let sent = fake.requests();
    assert_eq!(sent[0].path, "/v1/chat/completions");
    assert_eq!(sent[0].headers["authorization"], "Bearer");
    assert_eq!(sent[1].body["response_format"]["type"], "json_schema");
    assert_eq!(sent[3].path, "/v1/embeddings");
}

#[tokio::test]
async fn openai_error_classes() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let p = openai(&fake);
    check_errors(
        &fake,
        "openai",
        &p,
        &generation(GPT),
        &chat_errors(ErrorClass::Transient),
    )
    .await;
    check_timeout(&fake, "openai", &p, &generation(GPT)).await;

    // A structured answer that breaks its schema is still an answer: the engine validates it.
    fake.script("openai", vec![Behavior::SchemaInvalid]);
    let out = completed(p.invoke(&extraction(GPT)).await);
    assert!(out.output["json"].is_object());
    assert!(!follows(&order_schema(), &out.output["json"]));

    // Without a key the adapter refuses before calling.
    let keyless = OpenAi::new(
        "openai",
        &format!("{}/v1", fake.url()),
        None,
        catalog(),
        sender(),
    );
    let before = fake.requests().len();
    assert_eq!(
        keyless.invoke(&generation(GPT)).await.unwrap_err().class,
        ErrorClass::Auth
    );
    assert_eq!(fake.requests().len(), before);
}

// ---------------------------------------------------------------- Anthropic

fn anthropic(fake: &FakeServer) -> Anthropic {
    Anthropic::new(
        &fake.url(),
        Some("sk-ant-test-0123456789".into()),
        catalog(),
        sender(),
    )
}

#[tokio::test]
async fn anthropic_success_shapes() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let p = anthropic(&fake);

    let out = completed(p.invoke(&generation(HAIKU)).await);
    check_chat_success(&out, HAIKU, "req_");

    let out = completed(p.invoke(&classification(HAIKU)).await);
    assert_eq!(out.output["label"], "billing");

    let out = completed(p.invoke(&extraction(HAIKU)).await);
    assert!(
        follows(&order_schema(), &out.output["json"]),
        "{}",
        out.output
    );

    let sent = fake.requests();
    assert!(sent.iter().all(|r| r.path == "/v1/messages"));
    assert_eq!(sent[0].headers["x-api-key"], "[redacted]");
    assert!(sent[0].headers.contains_key("anthropic-version"));
    assert_eq!(
        sent[2].body["tool_choice"],
        json!({"type": "tool", "name": "answer"})
    );
}

#[tokio::test]
async fn anthropic_error_classes() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let p = anthropic(&fake);
    // 529 overloaded_error is a rate limit for the classifier.
    check_errors(
        &fake,
        "anthropic",
        &p,
        &generation(HAIKU),
        &chat_errors(ErrorClass::RateLimited),
    )
    .await;
    check_timeout(&fake, "anthropic", &p, &generation(HAIKU)).await;

    fake.script("anthropic", vec![Behavior::SchemaInvalid]);
    let out = completed(p.invoke(&extraction(HAIKU)).await);
    assert!(
        !follows(&order_schema(), &out.output["json"]),
        "{}",
        out.output
    );
}

// ---------------------------------------------------------------- Usage: prompt cache, reasoning

/// A generation whose instructions are long enough for the fakes' prompt cache (~1400 tokens).
fn cached_generation(model: &str) -> ModelRequest {
    let mut r = generation(model);
    r.instructions = Some("Follow the refund policy to the letter. ".repeat(140));
    r
}

/// What `u` costs at the table's prices for `model`, worked out by hand: uncached input at the
/// input price, cache reads and writes at theirs (else the input price), output (reasoning
/// included) at the output price.
fn by_hand(c: &Catalog, model: &str, u: Usage) -> f64 {
    let e = c.get(model).unwrap();
    let uncached = u.input_tokens - u.cache_read_tokens - u.cache_write_tokens;
    (uncached as f64 * e.input_per_mtok
        + u.cache_read_tokens as f64 * e.cache_read_per_mtok.unwrap_or(e.input_per_mtok)
        + u.cache_write_tokens as f64 * e.cache_write_per_mtok.unwrap_or(e.input_per_mtok)
        + u.output_tokens as f64 * e.output_per_mtok)
        / 1e6
}

/// The same long prompt twice: each adapter reads its API's cache fields into one usage
/// (input counts every input token, the cached ones a part of it) and prices the cached part
/// at the table's cache prices, so the second call is cheaper.
#[tokio::test]
async fn cached_input_is_read_and_priced_by_every_chat_adapter() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let c = catalog();
    let (o, a, b) = (openai(&fake), anthropic(&fake), bedrock(&fake));
    // (adapter, model, whether the API reports cache writes)
    let table: [(&dyn Provider, &str, bool); 3] = [
        (&o, GPT, false),
        (&a, HAIKU, true),
        (&b, BEDROCK_NOVA, true),
    ];
    for (p, model, reports_writes) in table {
        let req = cached_generation(model);
        let first = completed(p.invoke(&req).await);
        let second = completed(p.invoke(&req).await);
        let (u1, u2) = (first.usage.unwrap(), second.usage.unwrap());
        assert_eq!(u1.input_tokens, u2.input_tokens, "{model}: {u1:?} {u2:?}");
        assert_eq!(u1.output_tokens, u2.output_tokens, "{model}");
        assert_eq!(u1.cache_read_tokens, 0, "{model}: {u1:?}");
        assert!(
            u2.cache_read_tokens >= 1024 && u2.cache_read_tokens < u2.input_tokens,
            "{model}: {u2:?}"
        );
        assert_eq!(u2.cache_write_tokens, 0, "{model}: {u2:?}");
        let written = if reports_writes {
            u2.cache_read_tokens
        } else {
            0
        };
        assert_eq!(u1.cache_write_tokens, written, "{model}: {u1:?}");
        assert_eq!(u2.reasoning_tokens, 0, "{model}");
        assert_eq!(
            second.output["usage"],
            json!({"input_tokens": u2.input_tokens, "output_tokens": u2.output_tokens,
                   "cache_read_tokens": u2.cache_read_tokens}),
            "{model}"
        );
        for (out, u) in [(&first, u1), (&second, u2)] {
            let want = by_hand(&c, model, u);
            assert!(
                (out.cost_usd - want).abs() < 1e-15,
                "{model}: {} != {want}",
                out.cost_usd
            );
        }
        assert!(
            second.cost_usd < first.cost_usd,
            "{model}: a cache read is cheaper"
        );
    }
}

/// A reasoning model's hidden tokens are read apart, as part of the output, and priced once.
#[tokio::test]
async fn openai_reasoning_tokens_are_part_of_the_output() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let c = Arc::new(
        Catalog::load(Some(
            r#"{"version": "test", "models": {"openai/o4-mini": {"roles": ["generation"],
                "input_per_mtok": 1.10, "cache_read_per_mtok": 0.275, "output_per_mtok": 4.40}}}"#,
        ))
        .unwrap(),
    );
    let p = OpenAi::new(
        "openai",
        &format!("{}/v1", fake.url()),
        Some("sk-test-0123456789".into()),
        c.clone(),
        sender(),
    );
    let out = completed(p.invoke(&generation("openai/o4-mini")).await);
    let u = out.usage.unwrap();
    assert!(
        u.reasoning_tokens > 0 && u.reasoning_tokens < u.output_tokens,
        "{u:?}"
    );
    assert_eq!(out.output["usage"]["reasoning_tokens"], u.reasoning_tokens);
    assert!((out.cost_usd - by_hand(&c, "openai/o4-mini", u)).abs() < 1e-15);
}

// ---------------------------------------------------------------- Bedrock

fn bedrock(fake: &FakeServer) -> Bedrock {
    let creds = AwsCredentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        session_token: None,
    };
    Bedrock::new(&fake.url(), "eu-west-1", Some(creds), catalog(), sender())
}

#[tokio::test]
async fn bedrock_success_shapes() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let p = bedrock(&fake);

    let out = completed(p.invoke(&generation(BEDROCK_HAIKU)).await);
    let id = out.provider_request_id.clone().unwrap();
    assert_eq!(id.len(), 36, "x-amzn-RequestId: {id}");
    check_chat_success(&out, BEDROCK_HAIKU, "");

    let out = completed(p.invoke(&classification(BEDROCK_HAIKU)).await);
    assert_eq!(out.output["label"], "billing");

    for model in [BEDROCK_HAIKU, BEDROCK_LLAMA] {
        let out = completed(p.invoke(&extraction(model)).await);
        assert!(
            follows(&order_schema(), &out.output["json"]),
            "{model}: {}",
            out.output
        );
    }

    let sent = fake.requests();
    assert_eq!(
        sent[0].path, "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
        "the model id is percent-encoded"
    );
    assert_eq!(
        sent[3].path,
        "/model/meta.llama3-1-8b-instruct-v1%3A0/converse"
    );
    assert_eq!(sent[0].headers["authorization"], "AWS4-HMAC-SHA256");
    assert!(sent[0].headers["authorization-scope"].ends_with("/eu-west-1/bedrock/aws4_request"));
    assert!(sent[0].headers.contains_key("x-amz-date"));
    assert_eq!(
        sent[2].body["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "answer"}})
    );
}

#[tokio::test]
async fn bedrock_error_classes() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let p = bedrock(&fake);
    check_errors(
        &fake,
        "bedrock",
        &p,
        &generation(BEDROCK_HAIKU),
        &chat_errors(ErrorClass::Transient),
    )
    .await;
    check_timeout(&fake, "bedrock", &p, &generation(BEDROCK_HAIKU)).await;

    fake.script("bedrock", vec![Behavior::SchemaInvalid]);
    let out = completed(p.invoke(&extraction(BEDROCK_HAIKU)).await);
    assert!(
        !follows(&order_schema(), &out.output["json"]),
        "{}",
        out.output
    );

    // No credentials: the adapter refuses before sending; the fake would refuse unsigned calls.
    let unsigned = Bedrock::new(&fake.url(), "eu-west-1", None, catalog(), sender());
    assert_eq!(
        unsigned
            .invoke(&generation(BEDROCK_HAIKU))
            .await
            .unwrap_err()
            .class,
        ErrorClass::Auth
    );
}

// ---------------------------------------------------------------- Replicate

fn replicate(fake: &FakeServer) -> Replicate {
    Replicate::new(
        &format!("{}/v1", fake.url()),
        Some("r8_test_0123456789".into()),
        catalog(),
        sender(),
    )
}

fn asset_request(hook: &WebhookReceiver) -> ModelRequest {
    let mut r = request(
        FLUX,
        Role::Asset,
        json!({"prompt": "a fox in snow", "num_outputs": 1}),
    );
    r.callback = Some(Callback {
        url: format!("{}?run_id=run-1&step=step-1&token=tok-1", hook.url()),
        run_id: "run-1".into(),
        step: "step-1".into(),
        token: "tok-1".into(),
    });
    r
}

fn pending_job(r: Result<ModelResponse, StepError>) -> String {
    match r {
        Ok(ModelResponse::Pending { job_id, .. }) => job_id,
        other => panic!("expected a pending job, got {other:?}"),
    }
}

/// Polls until the prediction is no longer pending (bounded).
async fn poll_until_done(
    p: &Replicate,
    req: &ModelRequest,
    job: &str,
) -> Result<ModelResponse, StepError> {
    for _ in 0..500 {
        match p.poll(req, job).await {
            Ok(ModelResponse::Pending { .. }) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            other => return other,
        }
    }
    panic!("prediction {job} never finished");
}

#[tokio::test]
async fn replicate_webhook_and_poll() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let mut hook = WebhookReceiver::start().await.unwrap();
    let p = replicate(&fake);
    let req = asset_request(&hook);

    let job = pending_job(p.invoke(&req).await);
    let delivery = hook.next(Duration::from_secs(5)).await.expect("a webhook");
    delivery
        .verify(fake.webhook_secret(), now_secs())
        .expect("signed with the configured secret");
    assert_eq!(
        delivery.path_and_query,
        "/webhook?run_id=run-1&step=step-1&token=tok-1"
    );
    let (id, response) = p
        .parse_callback(&req.model, &delivery.json().unwrap())
        .unwrap();
    assert_eq!(id, job);
    let out = completed(Ok(response));
    let url = format!("{}/v1/files/fake-{job}/out-0.png", fake.url());
    assert_eq!(out.output["url"], url);
    // The engine keeps a copy of the file: the adapter fetches it with the API token (the
    // URL is under the API's base), and refuses a plain-http one elsewhere.
    let file = p.fetch_asset(&url, 5_000).await.unwrap();
    assert_eq!(file.bytes, switchyard_fakes::FAKE_PNG);
    assert_eq!(file.content_type, "image/png");
    let elsewhere = p
        .fetch_asset("http://198.51.100.7/out.png", 5_000)
        .await
        .unwrap_err();
    assert_eq!(
        elsewhere.class,
        switchyard_core::ErrorClass::Invalid,
        "{elsewhere:?}"
    );
    assert_eq!(out.output["content_type"], "image/png");
    assert!(out.cost_usd > 0.0);
    assert_eq!(out.provider_request_id.as_deref(), Some(job.as_str()));

    let polled = completed(p.poll(&req, &job).await);
    assert_eq!(polled.output, out.output, "poll and callback agree");

    let sent = fake.requests();
    assert_eq!(
        sent[0].path,
        "/v1/models/black-forest-labs/flux-schnell/predictions"
    );
    assert_eq!(sent[0].body["webhook_events_filter"], json!(["completed"]));
    assert_eq!(sent[0].headers["authorization"], "Bearer");

    // Whisper: the transcription object becomes text.
    let mut whisper = request(
        WHISPER,
        Role::Transcription,
        json!({"audio": "https://example.com/a.mp3"}),
    );
    whisper.callback = req.callback.clone();
    let job = pending_job(p.invoke(&whisper).await);
    let body = hook
        .next(Duration::from_secs(5))
        .await
        .unwrap()
        .json()
        .unwrap();
    let (_, response) = p.parse_callback(&whisper.model, &body).unwrap();
    assert_eq!(
        completed(Ok(response)).output["text"],
        "Fake transcription of the audio."
    );
    assert_eq!(
        completed(p.poll(&whisper, &job).await).output["text"],
        "Fake transcription of the audio."
    );
}

#[tokio::test]
async fn replicate_polling_path_and_failures() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let mut hook = WebhookReceiver::start().await.unwrap();
    let p = replicate(&fake);
    let req = asset_request(&hook);

    // The webhook never comes: polling finishes the job.
    fake.script("replicate", vec![Behavior::NoWebhook]);
    let job = pending_job(p.invoke(&req).await);
    let out = completed(poll_until_done(&p, &req, &job).await);
    assert!(out.output["url"].as_str().unwrap().contains(&job));
    assert!(
        hook.next(Duration::from_millis(300)).await.is_none(),
        "no_webhook sent a webhook"
    );

    // Failed predictions, by callback and by poll.
    let table = [
        (Behavior::Fail, ErrorClass::Transient),
        (Behavior::Refusal, ErrorClass::Refused),
        (Behavior::SchemaInvalid, ErrorClass::Malformed),
    ];
    for (behavior, class) in table {
        fake.script("replicate", vec![behavior.clone()]);
        let job = pending_job(p.invoke(&req).await);
        let body = hook
            .next(Duration::from_secs(5))
            .await
            .expect("a webhook")
            .json()
            .unwrap();
        let e = p.parse_callback(&req.model, &body).unwrap_err();
        assert_eq!(e.class, class, "{behavior} by callback: {e}");
        let e = poll_until_done(&p, &req, &job).await.unwrap_err();
        assert_eq!(e.class, class, "{behavior} by poll: {e}");
    }

    // A missing callback URL is a workflow mistake, reported before any call.
    let before = fake.requests().len();
    let mut no_callback = req.clone();
    no_callback.callback = None;
    assert_eq!(
        p.invoke(&no_callback).await.unwrap_err().class,
        ErrorClass::Invalid
    );
    assert_eq!(fake.requests().len(), before);

    // A callback body that is not a prediction is malformed.
    assert_eq!(
        p.parse_callback(&req.model, &json!({"hello": "world"}))
            .unwrap_err()
            .class,
        ErrorClass::Malformed
    );
}

#[tokio::test]
async fn replicate_error_classes_and_cancel() {
    let fake = FakeServer::start(FakeConfig {
        replicate_delay_ms: 60_000,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let hook = WebhookReceiver::start().await.unwrap();
    let p = replicate(&fake);
    let req = asset_request(&hook);
    let table = vec![
        (
            Behavior::RateLimited {
                retry_after_secs: 2,
            },
            ErrorClass::RateLimited,
            Some(2_000),
        ),
        (Behavior::Quota, ErrorClass::QuotaExhausted, None),
        (Behavior::ServerError, ErrorClass::Transient, None),
        (Behavior::Overloaded, ErrorClass::Transient, None),
        (Behavior::Unauthorized, ErrorClass::Auth, None),
        (Behavior::Malformed, ErrorClass::Malformed, None),
    ];
    check_errors(&fake, "replicate", &p, &req, &table).await;
    fake.script("replicate", vec![Behavior::ContextTooLong]);
    assert_eq!(p.invoke(&req).await.unwrap_err().class, ErrorClass::Invalid);
    check_timeout(&fake, "replicate", &p, &req).await;

    // Cancel a running prediction: polling then reports it as canceled (transient).
    let job = pending_job(p.invoke(&req).await);
    assert!(matches!(
        p.poll(&req, &job).await,
        Ok(ModelResponse::Pending { .. })
    ));
    p.cancel(&job).await.unwrap();
    assert_eq!(
        p.poll(&req, &job).await.unwrap_err().class,
        ErrorClass::Transient
    );
    let last = fake.requests().last().cloned().unwrap();
    assert_eq!(last.path, format!("/v1/predictions/{job}"));

    // Polling an unknown prediction is a 404: invalid, and the message says what was called.
    let e = p.poll(&req, "doesnotexist").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Invalid);
    assert!(
        e.message
            .starts_with("replicate answered 404 to GET /v1/predictions/doesnotexist"),
        "{}",
        e.message
    );
    assert!(!e.message.ends_with(": "), "{}", e.message);
    // A base URL that misses the `/v1` prefix: the 404 names the path, so the mistake shows.
    let wrong = Replicate::new(&fake.url(), Some("r8_fake".into()), catalog(), sender());
    let e = wrong.invoke(&req).await.unwrap_err();
    assert!(
        e.message.contains(" to POST /models/") || e.message.contains(" to POST /predictions"),
        "{}",
        e.message
    );
    // No token: auth, before any call.
    let tokenless = Replicate::new(&format!("{}/v1", fake.url()), None, catalog(), sender());
    assert_eq!(
        tokenless.invoke(&req).await.unwrap_err().class,
        ErrorClass::Auth
    );
}

/// A response body over the cap is refused without being read to its end: a server that
/// declares no length and streams 64 MiB gets its connection closed after about the cap.
#[tokio::test]
async fn oversized_bodies_stop_at_the_cap() {
    use switchyard_providers::http::{HttpRequest, MAX_RESPONSE_BYTES};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = sock.read(&mut buf).await.unwrap();
        sock.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let chunk = vec![b' '; 64 * 1024];
        let mut written = 0usize;
        while written < 64 * 1024 * 1024 {
            if sock.write_all(&chunk).await.is_err() {
                break;
            }
            written += chunk.len();
        }
        written
    });
    let err = sender()
        .send(HttpRequest::get(format!("http://{addr}/big")), None)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Malformed);
    assert!(err.message.contains("over"), "{err}");
    let written = server.await.unwrap();
    assert!(
        written < 2 * MAX_RESPONSE_BYTES,
        "the client stopped reading near the cap, not at the end ({written} bytes sent)"
    );
}

// ---------------------------------------------------------------- Moderation

const OMNI: &str = "openai/omni-moderation-latest";
const TEXT_MODERATION: &str = "openai/text-moderation-latest";
const GUARDRAIL: &str = "bedrock/guardrail";
const LEXICON: &str = "local/lexicon-moderation";

fn moderation(model: &str, text: &str) -> ModelRequest {
    let mut r = request(model, Role::Moderation, json!({"text": text}));
    if model == GUARDRAIL {
        r.params = json!({"guardrail_id": "gr7x3k2q9abc", "guardrail_version": "1"});
    }
    r
}

/// The categories a normalized moderation output flags.
fn flagged_categories(out: &Value) -> Vec<String> {
    out["categories"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.as_bool() == Some(true))
        .map(|(k, _)| k.clone())
        .collect()
}

/// The normalized moderation shape, whichever model answered.
fn check_moderation_shape(out: &Value) {
    let keys: Vec<&String> = out.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["flagged", "categories", "scores", "model"], "{out}");
    assert_eq!(
        out["flagged"].as_bool().unwrap(),
        !flagged_categories(out).is_empty(),
        "flagged iff a category is: {out}"
    );
    let cats: Vec<&String> = out["categories"].as_object().unwrap().keys().collect();
    let mut sorted = cats.clone();
    sorted.sort();
    assert_eq!(cats, sorted, "sorted categories: {out}");
    for (k, s) in out["scores"].as_object().unwrap() {
        let s = s.as_f64().unwrap();
        assert!((0.0..=1.0).contains(&s), "{k}: {s}");
    }
}

#[tokio::test]
async fn openai_moderation_flagged_clean_and_errors() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let p = openai(&fake);

    let out = completed(p.invoke(&moderation(OMNI, "I will kill you")).await);
    check_moderation_shape(&out.output);
    assert_eq!(
        flagged_categories(&out.output),
        ["harassment/threatening", "violence"]
    );
    assert_eq!(out.output["scores"]["violence"], 0.9731);
    assert_eq!(out.output["scores"]["hate"], 0.0001);
    assert_eq!(out.output["model"], OMNI);
    assert_eq!((out.model.as_str(), out.cost_usd), (OMNI, 0.0));
    assert!(out
        .provider_request_id
        .as_deref()
        .unwrap()
        .starts_with("req_"));

    let out = completed(p.invoke(&moderation(OMNI, "What a lovely day")).await);
    check_moderation_shape(&out.output);
    assert_eq!(out.output["flagged"], false);
    assert_eq!(out.output["categories"].as_object().unwrap().len(), 13);

    let out = completed(p.invoke(&moderation(TEXT_MODERATION, "you idiot")).await);
    assert_eq!(flagged_categories(&out.output), ["harassment"]);
    assert_eq!(out.output["model"], "openai/text-moderation-007");
    assert_eq!(out.output["categories"].as_object().unwrap().len(), 11);

    let sent = fake.requests();
    assert!(sent.iter().all(|r| r.path == "/v1/moderations"));
    assert_eq!(
        sent[0].body,
        json!({"model": "omni-moderation-latest", "input": "I will kill you"})
    );
    assert_eq!(sent[0].headers["authorization"], "Bearer");

    let table = vec![
        (
            Behavior::RateLimited {
                retry_after_secs: 2,
            },
            ErrorClass::RateLimited,
            Some(2_000),
        ),
        (Behavior::Quota, ErrorClass::QuotaExhausted, None),
        (Behavior::ServerError, ErrorClass::Transient, None),
        (Behavior::Unauthorized, ErrorClass::Auth, None),
        (Behavior::Malformed, ErrorClass::Malformed, None),
    ];
    check_errors(&fake, "openai", &p, &moderation(OMNI, "hi"), &table).await;
    check_timeout(&fake, "openai", &p, &moderation(OMNI, "hi")).await;
    fake.script("openai", vec![Behavior::ServerError]);
    let e = p.invoke(&moderation(OMNI, "hi")).await.unwrap_err();
    assert!(
        e.message.contains("POST /v1/moderations"),
        "the error names what was called: {}",
        e.message
    );
}

#[tokio::test]
async fn bedrock_guardrail_flagged_clean_and_errors() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let p = bedrock(&fake);

    let out = completed(
        p.invoke(&moderation(GUARDRAIL, "I will kill you with a rifle"))
            .await,
    );
    check_moderation_shape(&out.output);
    assert_eq!(
        out.output,
        json!({"flagged": true,
               "categories": {"topic:Weapons": true, "violence": true},
               "scores": {"topic:Weapons": 1.0, "violence": 1.0},
               "model": "bedrock/guardrail/gr7x3k2q9abc:1"})
    );
    assert_eq!(out.model, GUARDRAIL);
    assert_eq!(out.provider_request_id.as_deref().map(str::len), Some(36));

    let out = completed(p.invoke(&moderation(GUARDRAIL, "What a lovely day")).await);
    check_moderation_shape(&out.output);
    assert_eq!(out.output["flagged"], false);
    assert_eq!(out.output["categories"], json!({}));
    // The carrying model answered: its tokens are priced (amazon.nova-lite-v1:0).
    assert!(out.usage.unwrap().output_tokens > 0);
    assert!(out.cost_usd > 0.0);

    let sent = fake.requests();
    assert_eq!(sent[0].path, "/model/amazon.nova-lite-v1%3A0/converse");
    assert_eq!(
        sent[0].body["guardrailConfig"],
        json!({"guardrailIdentifier": "gr7x3k2q9abc", "guardrailVersion": "1", "trace": "enabled"})
    );
    assert_eq!(sent[0].headers["authorization"], "AWS4-HMAC-SHA256");

    let table = vec![
        (
            Behavior::RateLimited {
                retry_after_secs: 2,
            },
            ErrorClass::RateLimited,
            Some(2_000),
        ),
        (Behavior::ServerError, ErrorClass::Transient, None),
        (Behavior::Unauthorized, ErrorClass::Auth, None),
        (Behavior::Malformed, ErrorClass::Malformed, None),
    ];
    check_errors(&fake, "bedrock", &p, &moderation(GUARDRAIL, "hi"), &table).await;
    // A guardrail step without its guardrail is refused before sending.
    let before = fake.requests().len();
    let mut bare = moderation(GUARDRAIL, "hi");
    bare.params = json!({});
    assert_eq!(
        p.invoke(&bare).await.unwrap_err().class,
        ErrorClass::Invalid
    );
    assert_eq!(fake.requests().len(), before);
}

/// A workflow with `role: moderation` loads with each of the three models, and one text gets
/// the same normalized shape from each.
#[tokio::test]
async fn moderation_models_load_and_answer_alike() {
    use switchyard_core::workflow::{compile, NoFiles};
    use switchyard_providers::{LocalConfig, LocalProvider};

    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let local = LocalProvider::new(LocalConfig::default());
    let (o, b) = (openai(&fake), bedrock(&fake));
    let mut models = local.models();
    models.extend(o.models());
    models.extend(b.models());
    let src = r#"
name: moderated
version: "1"
steps:
  - id: lexicon
    model: local/lexicon-moderation
    role: moderation
    input: "${input.text}"
  - id: openai
    model: openai/omni-moderation-latest
    role: moderation
    input: "${input.text}"
  - id: guardrail
    model: bedrock/guardrail
    role: moderation
    input: "${input.text}"
    params: {guardrail_id: gr7x3k2q9abc, guardrail_version: "1"}
"#;
    if let Err(diags) = compile(src, &NoFiles, &models) {
        panic!("a moderation workflow must load: {diags:#?}");
    }
    // The role is checked: a moderation model cannot generate.
    let wrong = src.replacen("role: moderation", "role: generation", 1);
    assert!(compile(&wrong, &NoFiles, &models).is_err());

    let providers: [(&str, &dyn Provider); 3] = [(LEXICON, &local), (OMNI, &o), (GUARDRAIL, &b)];
    for (model, p) in providers {
        for (text, flagged) in [("I will kill you", true), ("What a lovely day", false)] {
            let out = completed(p.invoke(&moderation(model, text)).await);
            check_moderation_shape(&out.output);
            assert_eq!(out.output["flagged"], flagged, "{model}: {text}");
            if flagged {
                assert!(
                    flagged_categories(&out.output).contains(&"violence".to_string()),
                    "{model}: {}",
                    out.output
                );
            }
        }
    }
}
