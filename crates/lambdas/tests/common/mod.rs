//! What the emulator tests share: a deployment on moto under a fresh name prefix, the intake
//! router fed API Gateway v2 events, the worker's event source mapping played by `poller`, and
//! the built-in job's callbacks sent through the webhook function's handler.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use http_body_util::BodyExt;
use lambda_http::tower::ServiceExt;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchyard_api::{ApiKeys, ApiState};
use switchyard_core::model::ModelInfo;
use switchyard_core::state::HistoryEvent;
use switchyard_core::time::SystemClock;
use switchyard_core::workflow::{self, FileLoader};
use switchyard_core::Clock;
use switchyard_engine::batch::Record;
use switchyard_engine::{Config, Engine};
use switchyard_lambdas::poller::{poll_once, Function, Mapping};
use switchyard_lambdas::{bundle, provision::provision, Deployment};

/// The key the `events/intake-*.json` fixtures carry.
pub const FIXTURE_KEY: &str = "sy_example_key_0123456789abcdef";

pub fn endpoint() -> String {
    switchyard_contract::emulator_endpoint()
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../events/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

pub fn unique_prefix() -> String {
    format!("sy-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A deployment on fresh resources, with the fixtures' API key and `extra` settings standing
/// for the settings secret's map.
pub async fn deployment_with(extra: &[(&str, &str)]) -> Deployment {
    let sdk = switchyard_aws::emulator_config(&endpoint()).await;
    let resources = provision(&sdk, &unique_prefix()).await.unwrap();
    let mut settings = BTreeMap::from([(
        "SWITCHYARD_API_KEYS".to_string(),
        format!("{FIXTURE_KEY}:acme"),
    )]);
    for (k, v) in extra {
        settings.insert((*k).to_string(), (*v).to_string());
    }
    Deployment::with_settings(&sdk, resources, settings).unwrap()
}

pub async fn deployment() -> Deployment {
    deployment_with(&[]).await
}

struct NoFiles;

impl FileLoader for NoFiles {
    fn read(&self, rel: &str) -> Result<String, String> {
        Err(format!("{rel}: test workflows include no files"))
    }
}

/// The clock a test moves forward: real time plus a jump (a dead worker's lease expiring
/// without the test sitting through it).
#[derive(Default)]
pub struct JumpClock {
    ahead_ms: AtomicU64,
}

impl JumpClock {
    pub fn jump(&self, ms: u64) {
        self.ahead_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for JumpClock {
    fn now_ms(&self) -> u64 {
        SystemClock.now_ms() + self.ahead_ms.load(Ordering::SeqCst)
    }
}

/// The deployment's engine again, with the bundled workflows plus `yaml` ones, `clock`, and
/// `store` when given (the ports stay the deployment's otherwise).
pub fn rewire(
    d: &mut Deployment,
    yaml: &[&str],
    clock: Arc<dyn Clock>,
    store: Option<Arc<dyn switchyard_core::ports::StateStore>>,
) {
    let models: Vec<ModelInfo> = d.engine.providers.models();
    let mut workflows = bundle::workflows(&models).unwrap();
    for y in yaml {
        workflows.add(workflow::compile(y, &NoFiles, &models).unwrap());
    }
    let e = &d.engine;
    let config: Config = (*e.config).clone();
    d.engine = Engine::new(
        store.unwrap_or_else(|| e.store.clone()),
        e.queue.clone(),
        e.blobs.clone(),
        clock,
        e.providers.clone(),
        Arc::new(workflows),
        config,
    );
}

pub fn router(d: &Deployment) -> axum::Router {
    let keys = ApiKeys::parse(&d.secrets.get("SWITCHYARD_API_KEYS").unwrap()).unwrap();
    let mut state = ApiState::new(d.engine.clone(), keys);
    state.allow_private_callbacks = d.engine.config.allow_private_callbacks;
    switchyard_api::router(state)
}

async fn answer(resp: http::Response<Body>) -> (u16, http::HeaderMap, Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// An API Gateway v2 event (or a function URL's, the same shape) through `router`, as
/// `lambda_http` hands it over on Lambda.
pub async fn invoke_http(router: &axum::Router, event: &str) -> (u16, http::HeaderMap, Value) {
    let req = lambda_http::request::from_str(event).unwrap();
    answer(router.clone().oneshot(req).await.unwrap()).await
}

pub async fn get(router: &axum::Router, path: &str) -> (u16, Value) {
    let req = http::Request::get(path)
        .header("authorization", format!("Bearer {FIXTURE_KEY}"))
        .body(Body::empty())
        .unwrap();
    let (status, _, v) = answer(router.clone().oneshot(req).await.unwrap()).await;
    (status, v)
}

pub async fn post(router: &axum::Router, path: &str, body: Value) -> (u16, Value) {
    let req = http::Request::post(path)
        .header("authorization", format!("Bearer {FIXTURE_KEY}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, _, v) = answer(router.clone().oneshot(req).await.unwrap()).await;
    (status, v)
}

/// `POST /v1/runs` with `body`; the run id of the 202.
pub async fn start_with(router: &axum::Router, body: Value) -> String {
    let (status, v) = post(router, "/v1/runs", body.clone()).await;
    assert_eq!(status, 202, "{body}: {v}");
    v["run_id"].as_str().unwrap().to_string()
}

pub async fn start(router: &axum::Router, workflow: &str, input: Value) -> String {
    start_with(
        router,
        serde_json::json!({"workflow": workflow, "input": input}),
    )
    .await
}

/// The built-in job's callbacks the worker's batch scheduled, through the webhook
/// function's handler (the router its main serves on the function URL).
pub async fn send_callbacks(d: &Deployment) -> usize {
    let hooks = switchyard_engine::http::hooks_router(d.engine.clone(), None);
    let out = switchyard_lambdas::callbacks::take(d);
    let n = out.len();
    for o in out {
        let path = o
            .url
            .split_once("/hooks/")
            .map(|(_, p)| format!("/hooks/{p}"))
            .unwrap();
        let mut req = http::Request::post(path).header("content-type", "application/json");
        for (k, v) in &o.headers {
            req = req.header(k, v);
        }
        let resp = hooks
            .clone()
            .oneshot(req.body(Body::from(o.body)).unwrap())
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "callback answered {}",
            resp.status()
        );
    }
    n
}

/// One invocation of the worker by the event source mapping.
pub async fn poll_work(d: &Deployment, mapping: Mapping) -> switchyard_lambdas::poller::Polled {
    poll_once(
        &d.engine,
        d.work.as_ref(),
        &Function::Worker,
        mapping,
        d.engine.clock.as_ref(),
    )
    .await
    .unwrap()
}

/// Polls the work queue like the worker's event source mapping (sending the built-in job's
/// callbacks like the worker main) until `run_id` ends or waits with nothing left to do.
pub async fn work_until_done(d: &Deployment, router: &axum::Router, run_id: &str) -> Value {
    work_until_done_with(d, router, run_id, Mapping::default()).await
}

pub async fn work_until_done_with(
    d: &Deployment,
    router: &axum::Router,
    run_id: &str,
    mapping: Mapping,
) -> Value {
    let mut idle = 0;
    for _ in 0..150 {
        let polled = poll_work(d, mapping).await;
        let sent = send_callbacks(d).await;
        let (_, run) = get(router, &format!("/v1/runs/{run_id}")).await;
        let status = run["status"].as_str().unwrap_or_default().to_string();
        if matches!(status.as_str(), "succeeded" | "failed" | "cancelled") {
            return run;
        }
        idle = if polled.received == 0 && sent == 0 {
            idle + 1
        } else {
            0
        };
        // A timer's wake-up is a delayed SQS message (delays round up to whole seconds).
        if status == "waiting" && run["waiting_for"]["reason"] != "timer" && idle >= 3 {
            return run;
        }
        if polled.received == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    panic!("run {run_id} did not end");
}

/// The records the event source mapping would hand the worker now (hidden for
/// `visibility_ms`), without invoking anything.
pub async fn receive_records(d: &Deployment, visibility_ms: u64) -> Vec<Record> {
    use switchyard_core::ports::Inbox;
    d.work
        .receive(10, visibility_ms)
        .await
        .unwrap()
        .into_iter()
        .map(|m| Record {
            message_id: m.id,
            receipt: m.receipt,
            body: m.message.to_body().unwrap(),
            receive_count: m.receive_count,
        })
        .collect()
}

pub async fn history(d: &Deployment, run_id: &str) -> Vec<HistoryEvent> {
    d.engine.store.events(run_id).await.unwrap()
}

/// How many attempts of `step` were started.
pub async fn started(d: &Deployment, run_id: &str, step: &str) -> usize {
    history(d, run_id)
        .await
        .iter()
        .filter(|e| {
            e.kind == switchyard_core::state::EventKind::StepStarted
                && e.step.as_deref() == Some(step)
        })
        .count()
}

pub async fn approve(router: &axum::Router, run: &Value) {
    let run_id = run["run_id"].as_str().unwrap();
    let gate = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["status"] == "waiting")
        .map(|s| s["name"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no waiting step: {run}"));
    let (status, v) = post(
        router,
        &format!("/v1/runs/{run_id}/approvals/{gate}"),
        serde_json::json!({"decision": "approve", "comment": "looks good"}),
    )
    .await;
    assert!(
        (200..300).contains(&status),
        "approval answered {status}: {v}"
    );
}

/// One invocation of the notifier by the notify queue's event source mapping.
pub async fn poll_notify(
    d: &Deployment,
    client: &switchyard_providers::outbound::CallbackClient,
) -> switchyard_lambdas::poller::Polled {
    let mapping = Mapping {
        batch_size: 10,
        visibility_ms: 180_000,
        function_timeout_ms: 30_000,
    };
    poll_once(
        &d.engine,
        d.notify.as_ref(),
        &Function::Notifier(client),
        mapping,
        d.engine.clock.as_ref(),
    )
    .await
    .unwrap()
}

/// Notifications a receiver on this host got: `webhook-id` and body, in arrival order.
pub type Received = Arc<std::sync::Mutex<Vec<(String, Value)>>>;

/// A notification receiver on 127.0.0.1 that answers 503 to its first `fail_first` requests
/// and 204 after.
pub async fn receiver(fail_first: usize) -> (String, Received) {
    use axum::extract::State;
    let seen: Received = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                move |State(seen): State<Received>,
                      headers: http::HeaderMap,
                      body: axum::body::Bytes| async move {
                    let mut s = seen.lock().unwrap();
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    s.push((id, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                    if s.len() <= fail_first {
                        http::StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        http::StatusCode::NO_CONTENT
                    }
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), seen)
}

/// Settings for a deployment whose notifications go to a receiver on this host.
pub const LOCAL_NOTIFICATIONS: [(&str, &str); 2] = [
    ("SWITCHYARD_ALLOW_PRIVATE_CALLBACKS", "1"),
    (
        "SWITCHYARD_CALLBACK_SECRET",
        "whsec_c3dpdGNoeWFyZC1ub3RpZmljYXRpb25z",
    ),
];
