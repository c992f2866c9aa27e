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
    match std::env::var("SWITCHYARD_TEST_AWS_ENDPOINT") {
        Ok(e) if !e.trim().is_empty() => e,
        _ => panic!(
            "SWITCHYARD_TEST_AWS_ENDPOINT is not set: these tests need the AWS emulator. \
             Run `infra/moto.sh start` and set it to the URL printed (`make test` does both)."
        ),
    }
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../../events/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
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
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn get(router: &axum::Router, path: &str) -> (u16, Value) {
    let req = http::Request::get(path)
        .header("authorization", format!("Bearer {FIXTURE_KEY}"))
        .body(Body::empty())
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Polls the work queue like the worker's event source mapping until `run_id` ends.
async fn work_until_done(d: &Deployment, router: &axum::Router, run_id: &str) -> Value {
    for _ in 0..60 {
        let polled = poll_once(&d.engine, d.work.as_ref(), &Function::Worker, Mapping::default(), &SystemClock)
            .await
            .unwrap();
        let (_, run) = get(router, &format!("/v1/runs/{run_id}")).await;
        let status = run["status"].as_str().unwrap_or_default().to_string();
        if matches!(status.as_str(), "succeeded" | "failed" | "cancelled") {
            return run;
        }
        if polled.received == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    panic!("run {run_id} did not end");
}

#[tokio::test]
async fn a_run_starts_through_intake_and_ends_through_the_worker() {
    let d = deployment().await;
    let api = router(&d);
    let (status, _, started) = invoke_intake(&api, &fixture("intake-apigw-v2-post-run.json")).await;
    assert_eq!(status, 202, "{started}");
    let run_id = started["run_id"].as_str().unwrap().to_string();

    // The fixture carries an Idempotency-Key: the same event again is the same run.
    let (status, headers, again) = invoke_intake(&api, &fixture("intake-apigw-v2-post-run.json")).await;
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
