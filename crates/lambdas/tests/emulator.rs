//! The four functions' handlers on the local AWS emulator (moto at
//! `SWITCHYARD_TEST_AWS_ENDPOINT`; `make test` starts it): events from `events/` go through the
//! same router and batch use-cases the Lambda mains run, on DynamoDB, SQS and S3, with the
//! event source mapping played by the engine's host loop (no emulator here runs Lambda). Each test makes its
//! own table, queues and bucket under a unique prefix.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn a_run_starts_through_intake_and_ends_through_the_worker() {
    let d = deployment().await;
    let api = router(&d);
    let (status, _, started) = invoke_http(&api, &fixture("intake-apigw-v2-post-run.json")).await;
    assert_eq!(status, 202, "{started}");
    let run_id = started["run_id"].as_str().unwrap().to_string();

    // The fixture carries an Idempotency-Key: the same event again is the same run.
    let (status, headers, again) =
        invoke_http(&api, &fixture("intake-apigw-v2-post-run.json")).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["run_id"], run_id.as_str());
    assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");

    let run = work_until_done(&d, &api, &run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(run["output"].is_object(), "{run}");

    let (status, _, list) = invoke_http(&api, &fixture("intake-apigw-v2-list-runs.json")).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["runs"][0]["run_id"], run_id.as_str(), "{list}");
}

#[tokio::test]
async fn healthz_answers_through_the_fixture_event() {
    let d = deployment().await;
    let (status, _, _) = invoke_http(&router(&d), &fixture("intake-apigw-v2-healthz.json")).await;
    assert_eq!(status, 200);
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
        "classifier-cascade",
        "moderated-reply",
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

/// One run through all four functions: intake starts it, the worker runs it, its job finishes
/// through the webhook function, a person approves through intake, and the notifier delivers
/// both notifications, signed, to the run's `callback_url` — through the notifier function's
/// own wiring, which has no engine (`NotifierDeployment`).
#[tokio::test]
async fn a_run_goes_through_all_four_functions() {
    let d = deployment_with(&LOCAL_NOTIFICATIONS).await;
    let notifier = notifier_deployment(&d, &LOCAL_NOTIFICATIONS).await;
    let api = router(&d);
    let (url, seen) = receiver(0).await;
    let input: Value = serde_json::from_str(&fixture("inputs/asset-pipeline.json")).unwrap();
    let run_id = start_with(
        &api,
        serde_json::json!({"workflow": "asset-pipeline", "input": input, "callback_url": url}),
    )
    .await;
    let client = switchyard_providers::outbound::CallbackClient::new(Default::default());
    let run = work_until_done(&d, &api, &run_id).await;
    assert_eq!(run["status"], "waiting", "{run}");
    // The approval notice, delivered while the run waits: the notifier reads which steps
    // wait for a person from the pinned definition.
    deliver(&d, &notifier, &client, 1).await;
    approve(&api, &run).await;
    let run = work_until_done(&d, &api, &run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    // The card the job delivered as a data: URL is kept in S3; the run links to our copy.
    let asset = &run["output"]["asset"];
    let link = asset["url"].as_str().unwrap_or_else(|| panic!("{run}"));
    assert!(
        link.contains(&d.resources.bucket) && link.contains("X-Amz-Signature="),
        "{link}"
    );
    let served = reqwest::get(link).await.unwrap();
    assert_eq!(served.headers()["content-type"], "image/svg+xml");
    let bytes = served.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, asset["bytes"].as_u64().unwrap());
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), asset["blob"]);

    deliver(&d, &notifier, &client, 1).await;
    // Standard queues do not keep order, and the notifier delivers a batch concurrently.
    let mut types: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| body["type"].as_str().unwrap_or_default().to_string())
        .collect();
    types.sort();
    assert_eq!(
        types,
        ["run.succeeded", "run.waiting_for_approval"],
        "{types:?}"
    );
    // What the notifier read without an engine: the pinned definition (which steps are
    // approvals) and the run's output (its asset offloaded to S3).
    let seen = seen.lock().unwrap();
    let body = |t: &str| &seen.iter().find(|(_, b)| b["type"] == t).unwrap().1;
    assert_eq!(
        body("run.waiting_for_approval")["data"]["waiting_for_approval"],
        serde_json::json!(["approve"]),
        "{seen:?}"
    );
    assert_eq!(
        body("run.succeeded")["data"]["output"]["asset"]["blob"],
        run["output"]["asset"]["blob"],
        "{seen:?}"
    );
}

/// Runs the notifier on the notify queue until `n` notifications are acked. A delivery that
/// failed (a slow receiver on a loaded machine) comes back after its backoff: poll, pausing
/// when the queue is empty, for up to a minute.
async fn deliver(
    d: &switchyard_lambdas::Deployment,
    notifier: &switchyard_lambdas::NotifierDeployment,
    client: &switchyard_providers::outbound::CallbackClient,
    n: usize,
) {
    let mut delivered = 0;
    let t0 = std::time::Instant::now();
    while delivered < n && t0.elapsed() < std::time::Duration::from_secs(60) {
        let p = poll_notify_with(d, &notifier.notifier, client).await;
        delivered += p.deleted;
        if p.received == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}
