//! The spans of real runs on the embedded backend, caught by the OpenTelemetry SDK's in-memory
//! exporter through the same bridge the binaries install (`Otel::layer`, `W3c`): names,
//! parent/child structure, GenAI attributes, and one trace per run across wake-ups, the
//! webhook and the notifier, under the caller's `traceparent`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use switchyard_core::ports::{CallbackSender, OutboundAttempt, QueueName};
use switchyard_core::state::{Notification, NotifyEvent, RunStatus};
use switchyard_core::workflow::{compile, NoFiles};
use switchyard_core::Clock;
use switchyard_engine::driver::{self, Driver, Pause};
use switchyard_engine::intake::StartRequest;
use switchyard_engine::{Config, Engine, Providers, Workflows};
use switchyard_local::{Backend, ManualClock};
use switchyard_otel::{Otel, W3c};
use switchyard_providers::{LocalConfig, LocalProvider};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// One exporter for the test binary: the bridge is a global subscriber (the engine's spans
/// are made on whatever thread runs them). Each test tells its spans apart by trace id.
fn exporter() -> &'static (InMemorySpanExporter, Otel) {
    static E: OnceLock<(InMemorySpanExporter, Otel)> = OnceLock::new();
    E.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let otel = Otel::with_exporter(exporter.clone(), "switchyard-test");
        let subscriber = tracing_subscriber::registry().with(otel.layer());
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        (exporter, otel)
    })
}

struct ManualPause(ManualClock);

#[async_trait::async_trait]
impl Pause for ManualPause {
    async fn until(&self, _: &Engine, until: u64, _: &tokio::sync::Notify) {
        if until > self.0.now_ms() {
            self.0.set(until);
        }
    }
}

struct Harness {
    engine: Engine,
    driver: Driver,
    _backend: Backend,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    harness_serving(&[])
}

/// A harness whose engine serves the workflows `yaml` (for the HTTP API).
fn harness_serving(yaml: &[&str]) -> Harness {
    let (_, otel) = exporter();
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::open(dir.path()).unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let clock_dyn: Arc<dyn Clock> = Arc::new(clock.clone());
    let queue = backend.queue(QueueName::Work, clock_dyn.clone());
    let provider = Arc::new(LocalProvider::new(LocalConfig::default()));
    let providers = Providers::new().with(provider.clone());
    let mut workflows = Workflows::new();
    for src in yaml {
        let models = providers.models();
        workflows.add(compile(src, &NoFiles, &models).unwrap_or_else(|d| panic!("{d:#?}")));
    }
    let secret = switchyard_core::webhook::secret_from_bytes(b"switchyard otel tests secret!!!!");
    let config = Config {
        owner: "test-worker".into(),
        webhook_secrets: HashMap::from([("*".to_string(), secret.clone())]),
        callback_secrets: secret,
        public_url: "http://switchyard.test".into(),
        ..Config::default()
    };
    let engine = Engine::new(
        Arc::new(backend.store()),
        Arc::new(queue.clone()),
        Arc::new(backend.blobs()),
        clock_dyn,
        Arc::new(providers),
        Arc::new(workflows),
        config,
    )
    .with_trace(otel.trace_context());
    let options = driver::Options {
        watch_ms: None,
        max_idle_ms: u64::MAX / 4,
        strict: true,
        ..driver::Options::default()
    };
    let driver = Driver::new(engine.clone(), Arc::new(queue), options)
        .with_callbacks(provider)
        .with_pause(Arc::new(ManualPause(clock.clone())));
    Harness {
        engine,
        driver,
        _backend: backend,
        _dir: dir,
    }
}

impl Harness {
    /// Starts `yaml` under a caller's span whose parent is the remote `traceparent`, as the
    /// HTTP API does with the request's header, and drives the run to its end.
    async fn run(&self, yaml: &str, traceparent: &str, callback: bool) -> (String, RunStatus) {
        let models = self.engine.providers.models();
        let wf = compile(yaml, &NoFiles, &models).unwrap_or_else(|d| panic!("{d:#?}"));
        let req = StartRequest {
            workflow: wf.name.clone(),
            version: None,
            input: json!({"title": "Checkout outage"}),
            callback_url: callback.then(|| "https://receiver.example/hook".to_string()),
            metadata: None,
        };
        // Under a target the bridge exports (`switchyard*`), as the API's request span is.
        let caller = tracing::info_span!(target: "switchyard_api", "caller");
        switchyard_engine::trace::TraceContext::set_parent(&W3c, &caller, traceparent);
        let started = self
            .engine
            .start_workflow("acme", &wf, req, None)
            .instrument(caller)
            .await
            .unwrap();
        let status = self.driver.drive(&started.run_id).await.unwrap();
        (started.run_id, status)
    }
}

/// The finished spans of trace `trace`.
fn spans_of(trace: TraceId) -> Vec<SpanData> {
    let (exporter, _) = exporter();
    exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect()
}

fn get<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn text(s: &SpanData, key: &str) -> Option<String> {
    get(s, key).map(|v| v.as_str().into_owned())
}

fn int(s: &SpanData, key: &str) -> Option<i64> {
    match get(s, key) {
        Some(Value::I64(n)) => Some(*n),
        _ => None,
    }
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    let mut out: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    out.sort_by_key(|s| s.start_time);
    out
}

fn parent_of<'a>(spans: &'a [SpanData], s: &SpanData) -> &'a SpanData {
    spans
        .iter()
        .find(|p| p.span_context.span_id() == s.parent_span_id)
        .unwrap_or_else(|| panic!("the parent of `{}` is not in the trace", s.name))
}

const THREE_STEPS: &str = r#"
name: traced
version: "1.0.0"
steps:
  # Fails once (transient), then succeeds on its retry: the retry's backoff parks the run,
  # so the second attempt is another wake-up.
  - id: draft
    model: local/template-generator
    retry: {max_attempts: 2, initial_backoff: 50ms, jitter: false}
    prompt:
      version: incident-brief@2
      template: "Summarize {{ input.title }}."
    input:
      title: "${input.title}"
    params:
      template: "{{ input.title }}: the checkout was down for an hour. Payments were retried."
      fault: {kind: transient, times: 1}
  # The declared model fails and has no retry left: its fallback answers.
  - id: summary
    model: local/template-generator
    fallback: [local/extractive-summarizer]
    fallback_on: [transient]
    retry: {max_attempts: 1}
    input:
      text: "${steps.draft.output.text}"
    params:
      template: "{{ input.text }}"
      sentences: 1
      fault: {kind: transient, times: 1, model: local/template-generator}
  # A judge's verdict on the summary.
  - id: check
    kind: validate
    value: "${steps.summary.output.text}"
    judge:
      model: local/rules-judge
      criteria:
        version: tone@1
        template: "No superlatives."
      params:
        rules:
          - {id: calm, forbid: '\b(best|ultimate)\b', message: no superlatives}
"#;

#[tokio::test]
async fn a_run_with_a_retry_and_a_fallback_is_one_trace_of_run_step_and_model_spans() {
    let h = harness();
    let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let caller = SpanId::from_hex("00f067aa0ba902b7").unwrap();
    let (run_id, status) = h
        .run(
            THREE_STEPS,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            false,
        )
        .await;
    assert_eq!(status, RunStatus::Succeeded);
    let spans = spans_of(trace);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();

    // Intake: a child of the caller's span; the run keeps its context.
    let start = named(&spans, "start_run traced");
    assert_eq!(start.len(), 1, "{names:?}");
    let start = start[0];
    let caller_span = parent_of(&spans, start);
    assert_eq!(caller_span.name, "caller");
    assert_eq!(caller_span.parent_span_id, caller);
    assert_eq!(
        text(start, "switchyard.run.id").as_deref(),
        Some(run_id.as_str())
    );
    let header = h.engine.store.load_header(&run_id).await.unwrap().unwrap();
    let kept = header.traceparent.expect("the run keeps its trace context");
    assert_eq!(
        kept,
        format!("00-{trace}-{}-01", start.span_context.span_id())
    );

    // One run span per wake-up: the start, then the retry's timer. Both children of intake's.
    let runs = named(&spans, "invoke_workflow traced");
    assert_eq!(runs.len(), 2, "{names:?}");
    for r in &runs {
        assert_eq!(r.parent_span_id, start.span_context.span_id());
        assert!(
            r.parent_span_is_remote,
            "the worker joins the stored context"
        );
        assert_eq!(r.span_kind, SpanKind::Internal);
        assert_eq!(
            text(r, "gen_ai.operation.name").as_deref(),
            Some("invoke_workflow")
        );
        assert_eq!(text(r, "gen_ai.workflow.name").as_deref(), Some("traced"));
        assert_eq!(
            text(r, "switchyard.run.id").as_deref(),
            Some(run_id.as_str())
        );
    }
    assert_eq!(
        text(runs[0], "switchyard.wake.reason").as_deref(),
        Some("start")
    );
    assert_eq!(
        text(runs[0], "switchyard.wake.outcome").as_deref(),
        Some("waiting")
    );
    assert_eq!(
        text(runs[1], "switchyard.wake.reason").as_deref(),
        Some("timer")
    );
    assert_eq!(
        text(runs[1], "switchyard.wake.outcome").as_deref(),
        Some("ended")
    );
    assert_eq!(
        text(runs[1], "switchyard.run.status").as_deref(),
        Some("succeeded")
    );

    // Steps under run spans, model calls under steps.
    let steps: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name.starts_with("step "))
        .collect();
    for s in &steps {
        assert_eq!(parent_of(&spans, s).name, "invoke_workflow traced");
    }
    let calls: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name.starts_with("chat "))
        .collect();
    assert_eq!(calls.len(), 5, "draft ×2, summary ×2, judge ×1: {names:?}");
    for c in &calls {
        let step = parent_of(&spans, c);
        assert_eq!(
            step.name,
            format!("step {}", text(c, "switchyard.step").unwrap())
        );
        assert_eq!(text(c, "gen_ai.operation.name").as_deref(), Some("chat"));
        assert_eq!(text(c, "gen_ai.provider.name").as_deref(), Some("local"));
        assert_eq!(
            text(c, "switchyard.run.id").as_deref(),
            Some(run_id.as_str())
        );
        // In-process models: internal spans, not client calls.
        assert_eq!(c.span_kind, SpanKind::Internal);
    }

    // draft: the failed attempt (in the first wake-up), then its retry (in the second).
    let draft = named(&spans, "chat template-generator");
    let draft: Vec<&&SpanData> = draft
        .iter()
        .filter(|c| text(c, "switchyard.step").as_deref() == Some("draft"))
        .collect();
    assert_eq!(draft.len(), 2);
    let (failed, retried) = (draft[0], draft[1]);
    assert_eq!(text(failed, "error.type").as_deref(), Some("transient"));
    assert!(matches!(failed.status, Status::Error { .. }));
    assert_eq!(
        text(failed, "gen_ai.request.model").as_deref(),
        Some("template-generator")
    );
    assert_eq!(get(failed, "gen_ai.response.model"), None);
    assert_eq!(get(failed, "gen_ai.usage.input_tokens"), None);
    assert_eq!(int(failed, "switchyard.attempt"), Some(1));
    assert_eq!(
        parent_of(&spans, parent_of(&spans, failed)).span_context,
        runs[0].span_context
    );
    assert_eq!(text(retried, "error.type"), None);
    assert_eq!(retried.status, Status::Unset);
    assert_eq!(int(retried, "switchyard.attempt"), Some(2));
    assert_eq!(
        text(retried, "gen_ai.response.model").as_deref(),
        Some("template-generator")
    );
    assert!(int(retried, "gen_ai.usage.input_tokens").unwrap() > 0);
    assert!(int(retried, "gen_ai.usage.output_tokens").unwrap() > 0);
    assert_eq!(
        text(retried, "gen_ai.prompt.name").as_deref(),
        Some("incident-brief")
    );
    assert_eq!(text(retried, "gen_ai.prompt.version").as_deref(), Some("2"));
    assert_eq!(
        parent_of(&spans, parent_of(&spans, retried)).span_context,
        runs[1].span_context
    );
    let draft_steps = named(&spans, "step draft");
    assert_eq!(draft_steps.len(), 2);
    assert_eq!(
        text(draft_steps[0], "switchyard.step.status").as_deref(),
        Some("retrying")
    );
    assert_eq!(
        text(draft_steps[1], "switchyard.step.status").as_deref(),
        Some("succeeded")
    );

    // summary: the declared model fails, the fallback (model index 1) answers.
    let summary: Vec<&&SpanData> = calls
        .iter()
        .filter(|c| text(c, "switchyard.step").as_deref() == Some("summary"))
        .collect();
    assert_eq!(summary.len(), 2);
    let (primary, fallback) = if int(summary[0], "switchyard.model.index") == Some(0) {
        (summary[0], summary[1])
    } else {
        (summary[1], summary[0])
    };
    assert_eq!(
        text(primary, "gen_ai.request.model").as_deref(),
        Some("template-generator")
    );
    assert_eq!(text(primary, "error.type").as_deref(), Some("transient"));
    assert_eq!(fallback.name, "chat extractive-summarizer");
    assert_eq!(int(fallback, "switchyard.model.index"), Some(1));
    assert_eq!(
        text(fallback, "switchyard.model").as_deref(),
        Some("local/extractive-summarizer")
    );
    assert_eq!(
        text(fallback, "gen_ai.response.model").as_deref(),
        Some("extractive-summarizer")
    );
    assert_eq!(text(fallback, "error.type"), None);
    assert!(int(fallback, "gen_ai.usage.input_tokens").unwrap() > 0);

    // check: the judge's call, and its verdict as gen_ai.evaluation.* on the step.
    let judge = named(&spans, "chat rules-judge");
    assert_eq!(judge.len(), 1, "{names:?}");
    assert_eq!(
        text(judge[0], "gen_ai.prompt.name").as_deref(),
        Some("tone")
    );
    let check = named(&spans, "step check");
    assert_eq!(check.len(), 1);
    let check = check[0];
    assert_eq!(
        text(check, "switchyard.step.kind").as_deref(),
        Some("validate")
    );
    assert_eq!(
        text(check, "gen_ai.evaluation.name").as_deref(),
        Some("check")
    );
    assert_eq!(
        text(check, "gen_ai.evaluation.score.label").as_deref(),
        Some("pass")
    );
    assert_eq!(
        get(check, "gen_ai.evaluation.score.value"),
        Some(&Value::F64(1.0))
    );
    let event = check
        .events
        .events
        .iter()
        .find(|e| e.name == "gen_ai.evaluation.result")
        .expect("the evaluation event");
    let ev = |k: &str| event.attributes.iter().find(|kv| kv.key.as_str() == k);
    assert_eq!(
        ev("gen_ai.evaluation.name")
            .map(|kv| kv.value.as_str().into_owned())
            .as_deref(),
        Some("check")
    );
    assert_eq!(
        ev("gen_ai.evaluation.score.value").map(|kv| kv.value.clone()),
        Some(Value::F64(1.0))
    );

    // Nothing of the run is outside its trace.
    let (exporter, _) = exporter();
    let strays = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| {
            s.span_context.trace_id() != trace
                && text(s, "switchyard.run.id") == Some(run_id.clone())
        })
        .count();
    assert_eq!(strays, 0);
}

const ASYNC_JOB: &str = r#"
name: traced-job
version: "1.0.0"
steps:
  - id: render
    model: local/async-job
    input: {prompt: "${input.title}"}
"#;

/// A receiver that takes every notification and keeps the headers it came with.
#[derive(Default)]
struct Receiver(Mutex<Vec<Vec<(String, String)>>>);

#[async_trait::async_trait]
impl CallbackSender for Receiver {
    async fn deliver(
        &self,
        _: &str,
        headers: &[(String, String)],
        _: Vec<u8>,
        _: bool,
    ) -> OutboundAttempt {
        self.0.lock().unwrap().push(headers.to_vec());
        OutboundAttempt {
            result: switchyard_core::outbound::DeliveryResult::Status(204),
            latency_ms: 1,
            address: None,
        }
    }
}

#[tokio::test]
async fn the_webhook_and_the_notifier_join_the_runs_trace() {
    let h = harness();
    let trace = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
    let (run_id, status) = h
        .run(
            ASYNC_JOB,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            true,
        )
        .await;
    assert_eq!(status, RunStatus::Succeeded);
    let receiver = Receiver::default();
    let n = Notification::new(&run_id, NotifyEvent::RunSucceeded, "end");
    let notified = h.engine.notifier().notify(&n, 1, &receiver).await.unwrap();
    assert_eq!(notified, switchyard_engine::notifier::Notified::Delivered);

    let spans = spans_of(trace);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
    let start = named(&spans, "start_run traced-job")[0];
    let hook = named(&spans, "webhook local");
    assert_eq!(hook.len(), 1, "{names:?}");
    let hook = hook[0];
    assert_eq!(hook.parent_span_id, start.span_context.span_id());
    assert_eq!(hook.span_kind, SpanKind::Server);
    assert_eq!(
        text(hook, "switchyard.webhook.verdict").as_deref(),
        Some("applied")
    );
    assert_eq!(text(hook, "switchyard.step").as_deref(), Some("render"));
    // The submit: a model call that leaves a job behind.
    let submit = named(&spans, "generate_content async-job");
    assert_eq!(submit.len(), 1, "{names:?}");
    assert!(text(submit[0], "switchyard.job.id").is_some());

    let notify = named(&spans, "notify run.succeeded");
    assert_eq!(notify.len(), 1, "{names:?}");
    let notify = notify[0];
    assert_eq!(notify.parent_span_id, start.span_context.span_id());
    assert_eq!(notify.span_kind, SpanKind::Client);
    assert_eq!(
        text(notify, "switchyard.notify.outcome").as_deref(),
        Some("delivered")
    );
    assert_eq!(
        int(notify, "http.response.status_code"),
        Some(204),
        "{:?}",
        notify.attributes
    );
    // The receiver is told the notification's trace context.
    let sent = receiver.0.lock().unwrap();
    let tp = sent[0]
        .iter()
        .find(|(k, _)| k == "traceparent")
        .map(|(_, v)| v.clone())
        .expect("a traceparent header");
    assert_eq!(
        tp,
        format!("00-{trace}-{}-01", notify.span_context.span_id())
    );
}

const QUICK: &str = r#"
name: quick
version: "1"
steps:
  - {id: a, kind: transform, value: 1}
"#;

#[tokio::test]
async fn the_api_request_continues_the_callers_trace_and_the_run_keeps_it() {
    let h = harness_serving(&[QUICK]);
    let keys = switchyard_api::ApiKeys::parse("otel-test-key-0123456:acme").unwrap();
    let app = switchyard_api::app(h.engine.clone(), keys, switchyard_api::Serving::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let trace = TraceId::from_hex("5b8aa5a2d2c872e8321cf37308d69df2").unwrap();
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/runs"))
        .bearer_auth("otel-test-key-0123456")
        .header("content-type", "application/json")
        .header(
            "traceparent",
            "00-5b8aa5a2d2c872e8321cf37308d69df2-051581bf3cb55c13-01",
        )
        .body(json!({"workflow": "quick", "input": {}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let doc: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    let run_id = doc["run_id"].as_str().unwrap().to_string();
    let status = h.driver.drive(&run_id).await.unwrap();
    assert_eq!(status, RunStatus::Succeeded);

    let spans = spans_of(trace);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
    let request = named(&spans, "POST");
    assert_eq!(request.len(), 1, "{names:?}");
    let request = request[0];
    assert_eq!(request.span_kind, SpanKind::Server);
    assert_eq!(
        request.parent_span_id,
        SpanId::from_hex("051581bf3cb55c13").unwrap()
    );
    assert_eq!(text(request, "url.path").as_deref(), Some("/v1/runs"));
    assert_eq!(int(request, "http.response.status_code"), Some(202));
    let start = named(&spans, "start_run quick")[0];
    assert_eq!(start.parent_span_id, request.span_context.span_id());
    let header = h.engine.store.load_header(&run_id).await.unwrap().unwrap();
    assert_eq!(
        header.traceparent,
        Some(format!("00-{trace}-{}-01", start.span_context.span_id()))
    );
    let run = named(&spans, "invoke_workflow quick");
    assert_eq!(run.len(), 1, "{names:?}");
    assert_eq!(run[0].parent_span_id, start.span_context.span_id());
}
