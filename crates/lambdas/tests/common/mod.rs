//! What the emulator tests share: a deployment on moto under a fresh name prefix, the intake
//! router fed API Gateway v2 events, the worker's event source mapping played by the engine's host loop, and
//! the built-in job's callbacks sent through the webhook function's handler.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchyard_core::model::ModelInfo;
use switchyard_core::state::HistoryEvent;
use switchyard_core::time::SystemClock;
use switchyard_core::workflow::{self, FileLoader};
use switchyard_core::Clock;
use switchyard_engine::batch::Record;
use switchyard_engine::host::{invoke_once, Function, Invocation, Invoked};
use switchyard_engine::{Config, Engine};
use switchyard_lambdas::{bundle, harness, provision::provision, Deployment};

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
    Deployment::with_settings(&sdk, resources, settings_with(extra)).unwrap()
}

fn settings_with(extra: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    let mut settings = harness::fixture_settings();
    for (k, v) in extra {
        settings.insert((*k).to_string(), (*v).to_string());
    }
    settings
}

/// The notifier function's wiring (no engine) over `d`'s resources, with the same settings.
pub async fn notifier_deployment(
    d: &Deployment,
    extra: &[(&str, &str)],
) -> switchyard_lambdas::NotifierDeployment {
    let sdk = switchyard_aws::emulator_config(&endpoint()).await;
    let clients = switchyard_lambdas::Clients::new(&sdk, d.resources.s3_path_style);
    switchyard_lambdas::NotifierDeployment::with_clients(
        clients,
        d.resources.clone(),
        settings_with(extra),
    )
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
    harness::api_router(d).unwrap()
}

/// An API Gateway v2 event (or a function URL's, the same shape) through `router`, as
/// `lambda_http` hands it over on Lambda.
pub async fn invoke_http(router: &axum::Router, event: &str) -> (u16, http::HeaderMap, Value) {
    harness::intake_event(router, event).await.unwrap()
}

pub async fn get(router: &axum::Router, path: &str) -> (u16, Value) {
    harness::request(router, "GET", path, None).await.unwrap()
}

pub async fn post(router: &axum::Router, path: &str, body: Value) -> (u16, Value) {
    harness::request(router, "POST", path, Some(&body))
        .await
        .unwrap()
}

/// `POST /v1/runs` with `body`; the run id of the 202.
pub async fn start_with(router: &axum::Router, body: Value) -> String {
    harness::start_with(router, &body).await.unwrap()
}

pub async fn start(router: &axum::Router, workflow: &str, input: Value) -> String {
    harness::start(router, workflow, input).await.unwrap()
}

/// The built-in job's callbacks the worker's batch scheduled, through the webhook
/// function's handler (the router its main serves on the function URL).
pub async fn send_callbacks(d: &Deployment) -> usize {
    harness::send_callbacks(d).await.unwrap()
}

/// One invocation of the worker by the event source mapping.
pub async fn poll_work(d: &Deployment, mapping: Invocation) -> Invoked {
    invoke_once(&d.engine, d.work.as_ref(), Function::Worker, mapping)
        .await
        .unwrap()
}

/// Polls the work queue like the worker's event source mapping (sending the built-in job's
/// callbacks like the worker main) until `run_id` ends or waits with nothing left to do.
pub async fn work_until_done(d: &Deployment, router: &axum::Router, run_id: &str) -> Value {
    harness::work_until_done(d, router, run_id).await.unwrap()
}

pub async fn work_until_done_with(
    d: &Deployment,
    router: &axum::Router,
    run_id: &str,
    mapping: Invocation,
) -> Value {
    harness::work_until_done_with(d, router, run_id, mapping)
        .await
        .unwrap()
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
    harness::approve(router, run).await.unwrap()
}

/// One invocation of the notifier by the notify queue's event source mapping.
pub async fn poll_notify(
    d: &Deployment,
    client: &switchyard_providers::outbound::CallbackClient,
) -> Invoked {
    poll_notify_with(d, &d.engine.notifier(), client).await
}

/// [`poll_notify`] through `notifier` (the notifier function's own wiring,
/// `NotifierDeployment`, in the four-functions test).
pub async fn poll_notify_with(
    d: &Deployment,
    notifier: &switchyard_engine::notifier::Notifier,
    client: &switchyard_providers::outbound::CallbackClient,
) -> Invoked {
    let mapping = Invocation {
        batch_size: 10,
        visibility_ms: 180_000,
        timeout_ms: Some(30_000),
    };
    invoke_once(
        &d.engine,
        d.notify.as_ref(),
        Function::Notifier(notifier, client),
        mapping,
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
