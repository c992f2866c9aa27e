//! The functions' handlers invoked in-process, the way Lambda would invoke them, until a run
//! ends: API Gateway events and API requests through intake's router, the built-in job's
//! callbacks through the webhook function's handler, and the worker's SQS batches through
//! the host loop (`switchyard_engine::host`, playing the event source mapping). The emulator tests
//! (`tests/emulator.rs`) and `make bench-aws` (`benches/aws.rs`) run the examples with it.

use crate::Deployment;
use anyhow::{anyhow, bail, Context, Result};
use axum::body::Body;
use axum::http::{HeaderMap, Request};
use lambda_http::tower::ServiceExt;
use serde_json::Value;
use std::collections::BTreeMap;
use switchyard_api::ApiKeys;
use switchyard_engine::host::{invoke_once, Function, Invocation};

/// The API key the `events/intake-*.json` fixtures carry (tenant `acme`).
pub const FIXTURE_KEY: &str = "sy_example_key_0123456789abcdef";

/// The settings map of a deployment that accepts [`FIXTURE_KEY`].
pub fn fixture_settings() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "SWITCHYARD_API_KEYS".to_string(),
        format!("{FIXTURE_KEY}:acme"),
    )])
}

/// Intake's router (what its main serves under `lambda_http`).
pub fn api_router(d: &Deployment) -> Result<axum::Router> {
    let keys = d
        .secrets
        .get("SWITCHYARD_API_KEYS")
        .ok_or_else(|| anyhow!("SWITCHYARD_API_KEYS is not set"))?;
    let keys = ApiKeys::parse(&keys).map_err(|e| anyhow!("SWITCHYARD_API_KEYS: {e}"))?;
    Ok(switchyard_api::app(
        d.engine.clone(),
        keys,
        switchyard_api::Serving::default(),
    ))
}

async fn call(router: &axum::Router, req: Request<Body>) -> Result<(u16, HeaderMap, Value)> {
    let resp = router.clone().oneshot(req).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
    Ok((
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// An API Gateway v2 event (JSON) through the router, as `lambda_http` hands it over.
pub async fn intake_event(router: &axum::Router, event: &str) -> Result<(u16, HeaderMap, Value)> {
    let req = lambda_http::request::from_str(event).context("not an API Gateway event")?;
    call(router, req.map(|b| Body::from(b.to_vec()))).await
}

/// A request with [`FIXTURE_KEY`] through the router: `(status, JSON body or null)`.
pub async fn request(
    router: &axum::Router,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {FIXTURE_KEY}"));
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let (status, _, v) = call(router, req.body(body)?).await?;
    Ok((status, v))
}

/// Starts `workflow` on `input` (`POST /v1/runs`, must answer 202): the run id.
pub async fn start(router: &axum::Router, workflow: &str, input: Value) -> Result<String> {
    start_with(
        router,
        &serde_json::json!({"workflow": workflow, "input": input}),
    )
    .await
}

/// `POST /v1/runs` with `body` (must answer 202): the run id.
pub async fn start_with(router: &axum::Router, body: &Value) -> Result<String> {
    let (status, v) = request(router, "POST", "/v1/runs", Some(body)).await?;
    if status != 202 {
        bail!("starting {body} answered {status}: {v}");
    }
    v["run_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no run_id in {v}"))
}

/// The built-in job's callbacks that the worker's batches scheduled, through the webhook
/// function's handler (the router its main serves on the function URL). Returns how many.
pub async fn send_callbacks(d: &Deployment) -> Result<usize> {
    let hooks = switchyard_engine::http::hooks_router(d.engine.clone(), None);
    let out = crate::callbacks::take(d);
    let n = out.len();
    for o in out {
        let path = o
            .url
            .split_once("/hooks/")
            .map(|(_, p)| format!("/hooks/{p}"))
            .ok_or_else(|| anyhow!("callback URL {} is not a hook", o.url))?;
        let mut req = Request::post(path).header("content-type", "application/json");
        for (k, v) in &o.headers {
            req = req.header(k, v);
        }
        let (status, _, body) = call(&hooks, req.body(Body::from(o.body))?).await?;
        if !(200..300).contains(&status) {
            bail!("callback answered {status}: {body}");
        }
    }
    Ok(n)
}

/// One invocation of the worker on a batch from its queue, as the event source mapping makes
/// it, then the built-in job's callbacks it scheduled (like the worker main). Returns what
/// the invocation received and how many callbacks it sent.
async fn poll_worker(
    worker: &Deployment,
    mapping: Invocation,
) -> Result<(switchyard_engine::host::Invoked, usize)> {
    let polled = invoke_once(
        &worker.engine,
        worker.work.as_ref(),
        Function::Worker,
        mapping,
    )
    .await
    .map_err(|e| anyhow!("polling the work queue: {e}"))?;
    Ok((polled, send_callbacks(worker).await?))
}

/// Polls `worker`'s work queue like the worker's event source mapping (sending the built-in
/// job's callbacks like the worker main) until `run_id` ends, or waits with nothing left to do
/// (not for a timer). The run is read through `observer` (intake's router; another
/// deployment's when the reads must not count). Returns the run as `GET /v1/runs/{id}` shows it.
pub async fn work_until_done(
    worker: &Deployment,
    observer: &axum::Router,
    run_id: &str,
) -> Result<Value> {
    work_until_done_with(worker, observer, run_id, Invocation::default()).await
}

/// [`work_until_done`] with the event source mapping's settings `mapping` (the worker's
/// clock decides the invocation deadlines, so a test's jumping clock moves past leases).
pub async fn work_until_done_with(
    worker: &Deployment,
    observer: &axum::Router,
    run_id: &str,
    mapping: Invocation,
) -> Result<Value> {
    let mut idle = 0;
    for _ in 0..150 {
        let (polled, sent) = poll_worker(worker, mapping).await?;
        let (_, run) = request(observer, "GET", &format!("/v1/runs/{run_id}"), None).await?;
        let status = run["status"].as_str().unwrap_or_default().to_string();
        if matches!(status.as_str(), "succeeded" | "failed" | "cancelled") {
            return Ok(run);
        }
        idle = if polled.received == 0 && sent == 0 {
            idle + 1
        } else {
            0
        };
        // A timer's wake-up is a delayed SQS message (delays round up to whole seconds).
        if status == "waiting" && run["waiting_for"]["reason"] != "timer" && idle >= 3 {
            return Ok(run);
        }
        if polled.received == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    bail!("run {run_id} did not end")
}

/// Polls the work queue in batches of up to 10 (the event source mapping's default) until
/// every run of `run_ids` has ended, as a busy deployment's worker sees several runs per
/// invocation. Returns the runs as `GET /v1/runs/{id}` shows them, in `run_ids`' order; an
/// error if one is still going after 300 polls, or rests with nothing left to do.
pub async fn work_until_all_done(
    worker: &Deployment,
    observer: &axum::Router,
    run_ids: &[String],
) -> Result<Vec<Value>> {
    let mut ended: BTreeMap<&str, Value> = BTreeMap::new();
    let mut idle = 0;
    for _ in 0..300 {
        let (polled, sent) = poll_worker(worker, Invocation::default()).await?;
        for id in run_ids {
            if ended.contains_key(id.as_str()) {
                continue;
            }
            let (_, run) = request(observer, "GET", &format!("/v1/runs/{id}"), None).await?;
            if matches!(
                run["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                ended.insert(id, run);
            }
        }
        if ended.len() == run_ids.len() {
            return Ok(run_ids
                .iter()
                .filter_map(|id| ended.remove(id.as_str()))
                .collect());
        }
        idle = if polled.received == 0 && sent == 0 {
            idle + 1
        } else {
            0
        };
        // Delayed wake-ups (timers) round up to whole seconds: 50 idle polls are 10 s.
        if idle >= 50 {
            bail!(
                "{} of {} runs rest unfinished",
                run_ids.len() - ended.len(),
                run_ids.len()
            );
        }
        if polled.received == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    bail!(
        "{} of {} runs did not end",
        run_ids.len() - ended.len(),
        run_ids.len()
    )
}

/// Approves the step `run` (as `GET /v1/runs/{id}` shows it) waits at.
pub async fn approve(router: &axum::Router, run: &Value) -> Result<()> {
    let run_id = run["run_id"]
        .as_str()
        .ok_or_else(|| anyhow!("no run_id in {run}"))?;
    let gate = run["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["status"] == "waiting"))
        .and_then(|s| s["name"].as_str())
        .ok_or_else(|| anyhow!("no waiting step: {run}"))?;
    let body = serde_json::json!({"decision": "approve", "comment": "looks good"});
    let path = format!("/v1/runs/{run_id}/approvals/{gate}");
    let (status, v) = request(router, "POST", &path, Some(&body)).await?;
    if !(200..300).contains(&status) {
        bail!("approval answered {status}: {v}");
    }
    Ok(())
}

/// `d` with the built-in models' calls claimed before they start, as hosted calls are
/// (`LocalConfig::claim_calls`; the built-in provider is the only one left): what a chain
/// writes with hosted models (`make bench-aws`), and a claim a test can watch a worker die in.
pub fn claiming(mut d: Deployment) -> Deployment {
    use switchyard_providers::{LocalConfig, LocalProvider};
    let local = std::sync::Arc::new(LocalProvider::new(LocalConfig {
        claim_calls: true,
        ..LocalConfig::default()
    }));
    let e = &d.engine;
    d.engine = switchyard_engine::Engine::new(
        e.store.clone(),
        e.queue.clone(),
        e.blobs.clone(),
        e.clock.clone(),
        std::sync::Arc::new(switchyard_engine::Providers::new().with(local.clone())),
        e.workflows.clone(),
        (*e.config).clone(),
    );
    d.local = local;
    d
}
