//! The worker binary's metrics, as CloudWatch would read them: the real `worker` process on a
//! local Lambda Runtime API, on the emulator, handed the SQS batches of one run until it ends.
//! Its stdout is captured, and every Embedded Metric Format line in it is checked against
//! docs/emf.schema.json (written from the EMF specification) and the rules a schema cannot
//! express; then the values are checked against the run's own history.
//!
//! The same process exports its spans over OTLP/HTTP to the same local server
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`): each invocation's before it answers, all in the trace the
//! run header names (docs/traces.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::routing::{get, post};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::state::EventKind;
use switchyard_engine::batch::Record;
use switchyard_lambdas::provision::provision;
use switchyard_lambdas::{harness, Deployment};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, Mutex};

/// The Runtime API a custom runtime talks to: `next` hands over the queued events one by
/// one (and waits when there is none), `response`/`error` report each one's end.
#[derive(Clone)]
struct RuntimeApi {
    events: Arc<Mutex<mpsc::Receiver<String>>>,
    answers: mpsc::Sender<(String, Value)>,
    /// The bodies of `POST /v1/traces` (OTLP/HTTP protobuf), in arrival order.
    traces: Arc<std::sync::Mutex<Vec<axum::body::Bytes>>>,
}

/// An OTLP/HTTP collector's traces endpoint: keeps the request, answers with an empty
/// (fully successful) export response.
async fn otlp_traces(
    State(api): State<RuntimeApi>,
    body: axum::body::Bytes,
) -> ([(&'static str, &'static str); 1], Vec<u8>) {
    api.traces.lock().unwrap().push(body);
    ([("content-type", "application/x-protobuf")], Vec::new())
}

/// The spans of the OTLP exports `bodies`, with their resources' attributes.
fn exported_spans(
    bodies: &[axum::body::Bytes],
) -> Vec<(
    opentelemetry_proto::tonic::trace::v1::Span,
    BTreeMap<String, String>,
)> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let mut out = Vec::new();
    for b in bodies {
        let req = ExportTraceServiceRequest::decode(b.as_ref()).unwrap();
        for rs in req.resource_spans {
            let resource: BTreeMap<String, String> = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .map(|kv| (kv.key.clone(), any_value(kv.value.as_ref())))
                .collect();
            for ss in rs.scope_spans {
                out.extend(ss.spans.into_iter().map(|s| (s, resource.clone())));
            }
        }
    }
    out
}

fn any_value(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    match v.and_then(|v| v.value.as_ref()) {
        Some(V::StringValue(s)) => s.clone(),
        Some(V::IntValue(i)) => i.to_string(),
        Some(V::DoubleValue(d)) => d.to_string(),
        Some(V::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn span_attr(s: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| any_value(kv.value.as_ref()))
}

async fn next(State(api): State<RuntimeApi>) -> (HeaderMap, String) {
    let event = api.events.lock().await.recv().await.unwrap_or_default();
    let mut h = HeaderMap::new();
    let id = uuid::Uuid::new_v4().to_string();
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 120_000;
    h.insert(
        "lambda-runtime-aws-request-id",
        HeaderValue::from_str(&id).unwrap(),
    );
    h.insert(
        "lambda-runtime-deadline-ms",
        HeaderValue::from_str(&deadline.to_string()).unwrap(),
    );
    h.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_static("arn:aws:lambda:us-east-1:123456789012:function:worker"),
    );
    h.insert(
        "lambda-runtime-trace-id",
        HeaderValue::from_static("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"),
    );
    (h, event)
}

async fn answered(
    State(api): State<RuntimeApi>,
    Path((_id, kind)): Path<(String, String)>,
    body: String,
) -> axum::http::StatusCode {
    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
    api.answers.send((kind, v)).await.unwrap();
    axum::http::StatusCode::ACCEPTED
}

async fn init_error(State(api): State<RuntimeApi>, body: String) -> axum::http::StatusCode {
    api.answers
        .send(("init/error".into(), Value::String(body)))
        .await
        .unwrap();
    axum::http::StatusCode::ACCEPTED
}

/// An SQS event of `records`, as the event source mapping sends it.
fn sqs_event(records: &[Record]) -> String {
    let records: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "messageId": r.message_id, "receiptHandle": r.receipt, "body": r.body,
                "attributes": {"ApproximateReceiveCount": r.receive_count.to_string()},
                "messageAttributes": {}, "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:work",
                "awsRegion": "us-east-1",
            })
        })
        .collect();
    json!({"Records": records}).to_string()
}

/// What the JSON Schema cannot say: each referenced dimension is a string member of the root,
/// each metric a number or an array of at most 100 numbers.
fn check_references(line: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    for d in line["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
        for set in d["Dimensions"].as_array().unwrap() {
            for key in set.as_array().unwrap() {
                let k = key.as_str().unwrap();
                if !line[k].is_string() {
                    bad.push(format!(
                        "dimension `{k}` is not a string member of the root"
                    ));
                }
            }
        }
        for m in d["Metrics"].as_array().unwrap() {
            let name = m["Name"].as_str().unwrap();
            match &line[name] {
                Value::Number(_) => {}
                Value::Array(a) if a.len() <= 100 && a.iter().all(Value::is_number) => {}
                other => bad.push(format!("metric `{name}` is {other}")),
            }
        }
    }
    bad
}

/// The sum of `metric` over the EMF lines whose members match `filter`.
fn sum(lines: &[Value], metric: &str, filter: &[(&str, &str)]) -> f64 {
    lines
        .iter()
        .filter(|l| filter.iter().all(|(k, v)| l[*k] == *v))
        .map(|l| match &l[metric] {
            Value::Number(n) => n.as_f64().unwrap(),
            Value::Array(a) => a.len() as f64,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn the_worker_binary_writes_valid_emf_that_matches_the_history() {
    let endpoint = common::endpoint();
    let sdk = switchyard_aws::emulator_config(&endpoint).await;
    let resources = provision(&sdk, &common::unique_prefix()).await.unwrap();
    let mut settings = harness::fixture_settings();
    settings.insert(
        "SWITCHYARD_WEBHOOK_SECRET".into(),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
    );
    let d = Deployment::with_settings(&sdk, resources.clone(), settings.clone()).unwrap();
    let router = common::router(&d);
    let input: Value =
        serde_json::from_str(&common::fixture("inputs/resilient-summary.json")).unwrap();
    let run = common::start(&router, "resilient-summary", input).await;

    // The worker process on a local Runtime API.
    let (event_tx, event_rx) = mpsc::channel::<String>(4);
    let (answer_tx, mut answer_rx) = mpsc::channel::<(String, Value)>(4);
    let api = RuntimeApi {
        events: Arc::new(Mutex::new(event_rx)),
        answers: answer_tx,
        traces: Arc::default(),
    };
    let exports = api.traces.clone();
    let app = axum::Router::new()
        .route("/v1/traces", post(otlp_traces))
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/{kind}", post(answered))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut env: BTreeMap<String, String> = settings;
    for (k, v) in [
        ("AWS_LAMBDA_RUNTIME_API", addr.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", "worker".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            "2026/12/06/[$LATEST]emf".into(),
        ),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/worker".into()),
        ("AWS_ENDPOINT_URL", endpoint.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("SWITCHYARD_TABLE", resources.table.clone()),
        ("SWITCHYARD_BUCKET", resources.bucket.clone()),
        ("SWITCHYARD_WORK_QUEUE_URL", resources.work.url.clone()),
        ("SWITCHYARD_WORK_DLQ_URL", resources.work.dlq_url.clone()),
        ("SWITCHYARD_NOTIFY_QUEUE_URL", resources.notify.url.clone()),
        (
            "SWITCHYARD_NOTIFY_DLQ_URL",
            resources.notify.dlq_url.clone(),
        ),
        ("SWITCHYARD_S3_PATH_STYLE", "1".into()),
        ("SWITCHYARD_METRICS_NAMESPACE", "SwitchyardTest".into()),
        ("RUST_LOG", "warn".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
    ] {
        env.insert(k.into(), v);
    }
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .env_clear()
        .envs(&env)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut out = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            out.push(l);
        }
        out
    });

    // The run's trace, as intake keeps it when it exports spans (this test's intake does not).
    let (trace_id, intake_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let mut header = d.engine.store.load_header(&run).await.unwrap().unwrap();
    header.traceparent = Some(format!("00-{trace_id}-{intake_span}-01"));
    d.engine.store.put_header(&header, &[]).await.unwrap();

    // Hand it the run's wake-ups until the run ends (a retry's backoff parks it in between).
    let mut invocations = 0;
    for _ in 0..60 {
        let (_, doc) = common::get(&router, &format!("/v1/runs/{run}")).await;
        if doc["status"] == "succeeded" || doc["status"] == "failed" {
            break;
        }
        let records = common::receive_records(&d, 30_000).await;
        if records.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        event_tx.send(sqs_event(&records)).await.unwrap();
        let (kind, answer) = tokio::time::timeout(Duration::from_secs(120), answer_rx.recv())
            .await
            .expect("the worker answered")
            .unwrap();
        assert_eq!(kind, "response", "{answer}");
        invocations += 1;
        // Exported before the invocation ended: a frozen container would export nothing.
        let exported = exports.lock().unwrap().len();
        assert!(
            !cfg!(feature = "otel") || exported >= invocations,
            "{exported} exports after {invocations} invocations"
        );
    }
    let (_, doc) = common::get(&router, &format!("/v1/runs/{run}")).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    child.kill().await.unwrap();
    let stdout = reader.await.unwrap();

    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/emf.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let emf: Vec<Value> = stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("_aws").is_some())
        .collect();
    assert!(
        !emf.is_empty(),
        "no EMF line in the worker's stdout:\n{}",
        stdout.join("\n")
    );
    for line in &emf {
        let errors: Vec<String> = validator.iter_errors(line).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{line}: {errors:?}");
        let bad = check_references(line);
        assert!(bad.is_empty(), "{line}: {bad:?}");
        assert_eq!(
            line["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "SwitchyardTest"
        );
        assert!(line.get("run_id").is_none_or(Value::is_string));
    }

    // One container: one cold start, however many invocations it served.
    assert!(invocations >= 1);
    assert_eq!(sum(&emf, "cold_starts", &[("function", "worker")]), 1.0);
    // The values agree with the run's history.
    let history = common::history(&d, &run).await;
    let count = |k: EventKind| history.iter().filter(|e| e.kind == k).count() as f64;

    // The spans: every one in the run's trace, the wake-ups' children of intake's span.
    if cfg!(feature = "otel") {
        let spans = exported_spans(&exports.lock().unwrap());
        let names: Vec<&str> = spans.iter().map(|(s, _)| s.name.as_str()).collect();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        for (s, resource) in &spans {
            assert_eq!(hex(&s.trace_id), trace_id, "{}", s.name);
            assert_eq!(resource["service.name"], "switchyard-worker");
            assert_eq!(resource["faas.name"], "worker");
        }
        let runs: Vec<_> = spans
            .iter()
            .filter(|(s, _)| s.name == "invoke_workflow resilient-summary")
            .collect();
        // The backoffs (50 and 100 ms) are shorter than `WAIT_IN_INVOCATION_MS`: the retries
        // are waited for inside the wake-up that failed, so one wake-up spans all three calls.
        assert!(!runs.is_empty(), "a wake-up: {names:?}");
        let calls = names.iter().filter(|n| n.starts_with("chat ")).count();
        assert_eq!(calls, 3, "two attempts and the fallback: {names:?}");
        for (r, _) in &runs {
            assert_eq!(hex(&r.parent_span_id), intake_span);
            assert_eq!(
                span_attr(r, "switchyard.run.id").as_deref(),
                Some(run.as_str())
            );
        }
        let failed = spans
            .iter()
            .filter(|(s, _)| s.name == "chat template-generator")
            .filter(|(s, _)| span_attr(s, "error.type").as_deref() == Some("transient"))
            .count();
        assert_eq!(
            failed as f64,
            count(EventKind::StepStarted) - 1.0,
            "{names:?}"
        );
        let answered = spans
            .iter()
            .find(|(s, _)| s.name == "chat extractive-summarizer")
            .expect("the fallback's call");
        assert_eq!(
            span_attr(&answered.0, "gen_ai.provider.name").as_deref(),
            Some("local")
        );
        assert!(span_attr(&answered.0, "gen_ai.usage.output_tokens").is_some());
    }
    let of_run = [("run_id", run.as_str())];
    assert_eq!(
        sum(&emf, "attempts", &of_run),
        count(EventKind::StepStarted)
    );
    assert_eq!(
        sum(&emf, "retries", &of_run),
        count(EventKind::StepRetryScheduled)
    );
    assert_eq!(
        sum(&emf, "fallbacks", &of_run),
        count(EventKind::StepFallback)
    );
    assert!(
        count(EventKind::StepFallback) >= 1.0,
        "the example falls back on purpose"
    );
    assert_eq!(
        sum(
            &emf,
            "fallbacks",
            &[
                ("from_model", "local/template-generator"),
                ("to_model", "local/extractive-summarizer"),
                ("error_class", "transient"),
            ]
        ),
        count(EventKind::StepFallback)
    );
    assert_eq!(
        sum(
            &emf,
            "runs_ended",
            &[("run_id", &run), ("outcome", "succeeded")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &emf,
            "steps_ended",
            &[
                ("run_id", &run),
                ("step", "summarize"),
                ("outcome", "succeeded")
            ]
        ),
        1.0
    );
    assert!(
        sum(&emf, "queue_lag_ms", &of_run) >= 1.0,
        "each handled wake-up has a lag"
    );
    // No run id is ever a dimension.
    for line in &emf {
        for set in line["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
            .as_array()
            .unwrap()
        {
            assert!(
                !set.as_array().unwrap().contains(&json!("run_id")),
                "{line}"
            );
        }
    }
}
