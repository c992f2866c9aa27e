//! The four functions' handlers on the local AWS emulator (moto at
//! `SWITCHYARD_TEST_AWS_ENDPOINT`; `make test` starts it): events from `events/` go through the
//! same router and batch use-cases the Lambda mains run, on DynamoDB, SQS and S3, with the
//! event source mapping played by `poller` (no emulator here runs Lambda). Each test makes its
//! own table, queues and bucket under a unique prefix.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use http_body_util::BodyExt;
use lambda_http::tower::ServiceExt;
use serde_json::Value;
use std::collections::BTreeMap;
use switchyard_api::{ApiKeys, ApiState};
use switchyard_core::time::SystemClock;
use switchyard_lambdas::poller::{poll_once, Function, Mapping};
use switchyard_lambdas::{provision::provision, Deployment};

/// The key the `events/intake-*.json` fixtures carry.
const FIXTURE_KEY: &str = "sy_example_key_0123456789abcdef";

fn endpoint() -> String {
    switchyard_contract::emulator_endpoint()
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../events/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

async fn deployment() -> Deployment {
    let sdk = switchyard_aws::emulator_config(&endpoint()).await;
    let prefix = format!("sy-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let resources = provision(&sdk, &prefix).await.unwrap();
    let settings = BTreeMap::from([(
        "SWITCHYARD_API_KEYS".to_string(),
        format!("{FIXTURE_KEY}:acme"),
    )]);
    Deployment::with_settings(&sdk, resources, settings).unwrap()
}

fn router(d: &Deployment) -> axum::Router {
    let keys = ApiKeys::parse(&d.secrets.get("SWITCHYARD_API_KEYS").unwrap()).unwrap();
    switchyard_api::router(ApiState::new(d.engine.clone(), keys))
}

/// An API Gateway v2 event through the router, as `lambda_http` hands it over on Lambda.
async fn invoke_intake(router: &axum::Router, event: &str) -> (u16, http::HeaderMap, Value) {
    let req = lambda_http::request::from_str(event).unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn get(router: &axum::Router, path: &str) -> (u16, Value) {
    let req = http::Request::get(path)
        .header("authorization", format!("Bearer {FIXTURE_KEY}"))
        .body(Body::empty())
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The built-in job's callbacks that the worker's batch scheduled, through the webhook
/// function's handler (the router its main serves on the function URL).
async fn send_callbacks(d: &Deployment) -> usize {
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

/// Polls the work queue like the worker's event source mapping (sending the built-in job's
/// callbacks like the worker main) until `run_id` ends or waits with nothing left to do.
async fn work_until_done(d: &Deployment, router: &axum::Router, run_id: &str) -> Value {
    let mut idle = 0;
    for _ in 0..120 {
        let polled = poll_once(
            &d.engine,
            d.work.as_ref(),
            &Function::Worker,
            Mapping::default(),
            &SystemClock,
        )
        .await
        .unwrap();
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

async fn approve(router: &axum::Router, run: &Value) {
    let run_id = run["run_id"].as_str().unwrap();
    let gate = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["status"] == "waiting")
        .map(|s| s["name"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no waiting step: {run}"));
    let req = http::Request::post(format!("/v1/runs/{run_id}/approvals/{gate}"))
        .header("authorization", format!("Bearer {FIXTURE_KEY}"))
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"decision":"approve","comment":"looks good"}"#,
        ))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert!(
        resp.status().is_success(),
        "approval answered {}",
        resp.status()
    );
}

#[tokio::test]
async fn a_run_starts_through_intake_and_ends_through_the_worker() {
    let d = deployment().await;
    let api = router(&d);
    let (status, _, started) = invoke_intake(&api, &fixture("intake-apigw-v2-post-run.json")).await;
    assert_eq!(status, 202, "{started}");
    let run_id = started["run_id"].as_str().unwrap().to_string();

    // The fixture carries an Idempotency-Key: the same event again is the same run.
    let (status, headers, again) =
        invoke_intake(&api, &fixture("intake-apigw-v2-post-run.json")).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["run_id"], run_id.as_str());
    assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");

    let run = work_until_done(&d, &api, &run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(run["output"].is_object(), "{run}");

    let (status, _, list) = invoke_intake(&api, &fixture("intake-apigw-v2-list-runs.json")).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["runs"][0]["run_id"], run_id.as_str(), "{list}");
}

#[tokio::test]
async fn healthz_answers_through_the_fixture_event() {
    let d = deployment().await;
    let (status, _, _) = invoke_intake(&router(&d), &fixture("intake-apigw-v2-healthz.json")).await;
    assert_eq!(status, 200);
}

async fn start(router: &axum::Router, workflow: &str, input: Value) -> String {
    let body = serde_json::json!({"workflow": workflow, "input": input}).to_string();
    let req = http::Request::post("/v1/runs")
        .header("authorization", format!("Bearer {FIXTURE_KEY}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, 202, "{workflow}: {v}");
    v["run_id"].as_str().unwrap().to_string()
}

/// Every offline example, from its `events/inputs/` input, to the end on DynamoDB/SQS/S3.
#[tokio::test]
async fn the_offline_examples_run_to_the_end() {
    let d = deployment().await;
    let api = router(&d);
    let examples = [
        "support-triage",
        "knowledge-answer",
        "product-copy",
        "document-enrichment",
        "resilient-summary",
        "asset-pipeline",
    ];
    for name in examples {
        let input: Value = serde_json::from_str(&fixture(&format!("inputs/{name}.json"))).unwrap();
        let run_id = start(&api, name, input).await;
        let mut run = work_until_done(&d, &api, &run_id).await;
        if name == "asset-pipeline" {
            // Its job finished through the webhook handler; now a person approves.
            assert_eq!(run["status"], "waiting", "{name}: {run}");
            approve(&api, &run).await;
            run = work_until_done(&d, &api, &run_id).await;
        }
        assert_eq!(run["status"], "succeeded", "{name}: {run}");
    }
}
