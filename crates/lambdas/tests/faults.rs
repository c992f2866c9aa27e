//! The failure cases of the AWS deployment, through the functions' handlers on the local AWS
//! emulator (moto at `SWITCHYARD_TEST_AWS_ENDPOINT`; `make test` starts it): duplicate and
//! concurrent deliveries, a worker killed mid-step, two records of one run in a batch,
//! poisoned messages, forged / stale / replayed webhooks on the function URL, a 2 MB output
//! through S3, a 7 MB input uploaded by presigned PUT, callback URLs pointing at this host, a notification retried to success and
//! DynamoDB throttling. Each test has its own table, queues and bucket.
//!
//! Waits here are the emulator's real ones (SQS visibility and delays are wall-clock);
//! leases are moved past with a [`JumpClock`], not sat through.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::extract::State;
use common::*;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::ports::{Inbox, Message};
use switchyard_core::state::{EventKind, WakeReason, WakeUp};
use switchyard_core::time::SystemClock;
use switchyard_engine::host::Invocation;
use switchyard_engine::worker::Handled;
use switchyard_providers::outbound::CallbackClient;

/// Three quick steps, deterministic: how many times each started is the whole story.
const PAIR: &str = r#"
name: pair
version: "1"
steps:
  - id: first
    model: local/template-generator
    input: {text: "${input.text}"}
    params: {template: "first={{ input.text }}"}
  - id: second
    model: local/template-generator
    input: {text: "${steps.first.output.text}"}
    params: {template: "second={{ input.text }}"}
  - {id: out, kind: transform, value: "${steps.second.output.text}"}
"#;

/// The second step takes 4 s (the built-in model's `delay_ms`): long enough to kill the worker
/// in it however late, on a loaded machine, the test sees it start.
const SLOW: &str = r#"
name: slow-pair
version: "1"
defaults:
  retry: {max_attempts: 3, initial_backoff: 100ms, jitter: false}
steps:
  - id: first
    model: local/template-generator
    input: {text: "${input.text}"}
    params: {template: "first={{ input.text }}"}
  - id: slow
    model: local/template-generator
    input: {text: "${steps.first.output.text}"}
    timeout: 10s
    params: {template: "slow={{ input.text }}", delay_ms: 4000}
  - {id: out, kind: transform, value: "${steps.slow.output.text}"}
"#;

/// A job that finishes only by its webhook (no polling within the test's time).
const JOB: &str = r#"
name: job
version: "1"
steps:
  - id: render
    model: local/async-job
    role: asset
    input: {title: "${input.title}", text: "${input.text}"}
    params: {delay_ms: 0, callback: true, poll_after_ms: 600000}
    timeout: 10s
    wait_timeout: 20m
"#;

/// The input, as the output: a value far over the inline limit.
const BIG: &str = r#"
name: big
version: "1"
steps:
  - {id: copy, kind: transform, value: "${input.text}"}
"#;

async fn deployment_for(yaml: &[&str], extra: &[(&str, &str)]) -> switchyard_lambdas::Deployment {
    let mut d = deployment_with(extra).await;
    rewire(&mut d, yaml, Arc::new(SystemClock), None);
    d
}

async fn each_step_started_once(d: &switchyard_lambdas::Deployment, run: &str, steps: &[&str]) {
    for s in steps {
        assert_eq!(started(d, run, s).await, 1, "step {s} of {run}");
    }
}

#[tokio::test]
async fn the_same_message_delivered_twice_runs_each_step_once() {
    use switchyard_contract::faults::{Fault, FaultyStore, WriteKind};
    // Without a fault (the functions' setting: each pass holds the free steps' records and
    // takes no lease before its end write, which fences the other), and with the second lease
    // take failing (as a DynamoDB call does under load; leases taken up front, records
    // written at once): that delivery reports its record failed, deterministically.
    for fail_one in [false, true] {
        let mut d = deployment_with(&[]).await;
        let mut store = FaultyStore::new(d.engine.store.clone());
        if fail_one {
            Arc::make_mut(&mut d.engine.config).hold_free_records = false;
            store = store.fail(WriteKind::AcquireLease, 2, Fault::Before);
        }
        rewire(
            &mut d,
            &[PAIR],
            Arc::new(SystemClock),
            Some(Arc::new(store)),
        );
        let failed = delivered_twice(&d).await;
        if fail_one {
            assert_eq!(failed, 1, "the failed lease take fails its delivery");
        }
    }
}

/// Two concurrent deliveries of the run's start, redelivery of what they report failed, and
/// the invariants; returns how many of the two reported their record failed.
async fn delivered_twice(d: &switchyard_lambdas::Deployment) -> usize {
    let api = router(d);
    let run = start(&api, "pair", json!({"text": "x"})).await;
    let records = receive_records(d, 30_000).await;
    assert_eq!(records.len(), 1);

    // SQS hands the same message to two invocations at once (at-least-once delivery). How
    // they meet is timing: one runs the run while the other finds it busy (and sends itself
    // a delayed wake-up), or runs before or after it, or gives up on a failed call and
    // reports its record failed, leaving it for redelivery. Any of these is right; what must
    // hold whatever the interleaving is checked below.
    let deadline = || Some(d.engine.now() + 60_000);
    let (a, b) = tokio::join!(
        d.engine
            .handle_work_batch(&records, deadline(), d.work.as_ref()),
        d.engine
            .handle_work_batch(&records, deadline(), d.work.as_ref())
    );
    // A record reported failed comes back, as SQS hands it out again: deliver it again until
    // it is handled.
    let failed_at_first = a.failures.len() + b.failures.len();
    let mut failed = failed_at_first;
    for redelivery in 1.. {
        if failed == 0 {
            break;
        }
        assert!(redelivery <= 20, "the record kept failing: {a:?} {b:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let again = d
            .engine
            .handle_work_batch(&records, deadline(), d.work.as_ref())
            .await;
        failed = again.failures.len();
    }
    d.work.ack(&records[0].receipt).await.unwrap();
    // Whatever either left behind (a busy one's delayed wake-up) is worked off too.
    let doc = work_until_done(d, &api, &run).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["output"], "second=first=x");
    each_step_started_once(d, &run, &["first", "second"]).await;

    // Once more after the run ended: a late duplicate is acknowledged and changes nothing.
    let events = history(d, &run).await.len();
    let late = d
        .engine
        .handle_work_batch(&records, deadline(), d.work.as_ref())
        .await;
    assert!(
        late.failures.is_empty() && matches!(late.handled[0].1, Handled::AlreadyEnded(_)),
        "{late:?}"
    );
    assert_eq!(history(d, &run).await.len(), events);
    failed_at_first
}

#[tokio::test]
async fn two_records_of_one_run_in_one_batch_are_handled_once() {
    let d = deployment_for(&[PAIR], &[]).await;
    let api = router(&d);
    let run = start(&api, "pair", json!({"text": "y"})).await;
    let wake = Message::Wake(WakeUp {
        run_id: run.clone(),
        reason: WakeReason::Resume,
        due_at: None,
    });
    d.engine.queue.send(&wake, 0).await.unwrap();

    let polled = poll_work(&d, Invocation::default()).await;
    assert_eq!(polled.received, 2, "{polled:?}");
    assert_eq!(polled.report.handled.len(), 1, "{polled:?}");
    assert!(polled.report.failures.is_empty(), "{polled:?}");
    assert_eq!(polled.deleted, 2, "both records are deleted: {polled:?}");
    let (_, doc) = get(&api, &format!("/v1/runs/{run}")).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    each_step_started_once(&d, &run, &["first", "second"]).await;
}

#[tokio::test]
async fn a_worker_killed_mid_step_is_redelivered_within_the_hold() {
    let mut d = deployment_with(&[]).await;
    let clock = Arc::new(JumpClock::default());
    rewire(&mut d, &[SLOW], clock.clone(), None);
    // `slow` stands for a hosted call: claimed before it starts.
    let d = switchyard_lambdas::harness::claiming(d);
    let api = router(&d);
    let run = start(&api, "slow-pair", json!({"text": "k"})).await;

    // The event source mapping hands the wake-up to a worker, hidden for the queue's
    // visibility timeout (6 × the worker's 180 s, as template.yaml sets it)...
    let records = receive_records(&d, 6 * 180_000).await;
    assert_eq!(records.len(), 1);
    let engine = d.engine.clone();
    let batch = records.clone();
    let deadline = Some(d.engine.now() + 60_000);
    let inbox = d.work.clone();
    let worker = tokio::spawn(async move {
        engine
            .handle_work_batch(&batch, deadline, inbox.as_ref())
            .await
    });
    // ...which is killed while `slow` runs: its claim is stored, its result never is, and
    // the message is not deleted.
    let mut claimed = false;
    let looking = std::time::Instant::now();
    while looking.elapsed() < Duration::from_secs(60) {
        let (_, doc) = get(&api, &format!("/v1/runs/{run}")).await;
        if doc["steps"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == "slow" && s["status"] == "running")
        }) {
            claimed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(claimed, "the worker never reached `slow`");
    worker.abort();
    assert!(worker.await.unwrap_err().is_cancelled());

    // The dead worker's run lease (60 s) and step claim (10 s + 5 s) lapse.
    clock.jump(61_000);
    // The worker held the message for `HOLD_MS` at a time (its heartbeat), not for the
    // visibility timeout it was received with: dead, it lets go within the hold.
    let hold = switchyard_core::recovery::HOLD_MS;
    let mut again = Vec::new();
    for _ in 0..(hold / 500 + 20) {
        again = receive_records(&d, 30_000).await;
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        again.len(),
        1,
        "the message did not come back within the hold"
    );
    assert_eq!(again[0].message_id, records[0].message_id);
    assert_eq!(again[0].receive_count, 2);
    let report = d
        .engine
        .handle_work_batch(&again, Some(d.engine.now() + 60_000), d.work.as_ref())
        .await;
    assert!(report.failures.is_empty(), "{report:?}");
    d.work.ack(&again[0].receipt).await.unwrap();

    let doc = work_until_done(&d, &api, &run).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["output"], "slow=first=k");
    // `first` had finished before the kill and did not run again; `slow`'s lost attempt
    // counts as a timeout and a second one ran.
    assert_eq!(started(&d, &run, "first").await, 1);
    assert_eq!(started(&d, &run, "slow").await, 2);
    let expired: Vec<_> = history(&d, &run)
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::StepLeaseExpired)
        .collect();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(
        (expired[0].step.as_deref(), expired[0].attempt),
        (Some("slow"), Some(1))
    );
}

#[tokio::test]
async fn poisoned_messages_land_in_the_dead_letter_queue() {
    let d = deployment().await;
    let sdk = switchyard_aws::emulator_config(&endpoint()).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = d.resources.work.url.clone();

    // Through the host loop: a body that is no wake-up is moved to the DLQ with its reason.
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body("this is not a wake-up")
        .send()
        .await
        .unwrap();
    let polled = poll_work(&d, Invocation::default()).await;
    assert_eq!(polled.received, 0, "{polled:?}");
    let dead = d.work.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].body, "this is not a wake-up");
    assert!(!dead[0].reason.is_empty());

    // On Lambda the mapping hands every record over: the worker reports it failed each time
    // and the queue's redrive policy moves it after `maxReceiveCount` (5) receives.
    let body = r#"{"run_id": 42}"#;
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body(body)
        .send()
        .await
        .unwrap();
    let mut receives = 0;
    for _ in 0..40 {
        let got = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(1)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        let msgs = got.messages.unwrap_or_default();
        if msgs.is_empty() {
            if d.work.dead_letters().await.unwrap().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        receives += 1;
        let event = json!({"Records": msgs.iter().map(|m| json!({
            "messageId": m.message_id(),
            "receiptHandle": m.receipt_handle(),
            "body": m.body(),
            "attributes": {"ApproximateReceiveCount": m.attributes().and_then(|a| a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)).cloned().unwrap_or_default()},
            "messageAttributes": {},
            "eventSource": "aws:sqs",
        })).collect::<Vec<_>>()});
        let event = serde_json::from_value(event).unwrap();
        let records = switchyard_lambdas::sqs::records(&event);
        let report = d
            .engine
            .handle_work_batch(&records, None, d.work.as_ref())
            .await;
        let answer = serde_json::to_value(switchyard_lambdas::sqs::response(&report)).unwrap();
        assert_eq!(
            answer["batchItemFailures"][0]["itemIdentifier"],
            msgs[0].message_id().unwrap(),
            "{answer}"
        );
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }
    assert_eq!(receives, 5, "received {receives} times before the redrive");
    let dead = d.work.dead_letters().await.unwrap();
    assert!(dead.iter().any(|m| m.body == body), "{dead:?}");
}

/// The fixture function-URL event, carrying `url`'s path and query, `headers` and `body`.
fn function_url_event(url: &str, headers: &[(String, String)], body: &[u8]) -> String {
    let mut ev: Value = serde_json::from_str(&fixture("webhook-function-url.json")).unwrap();
    let (path, query) = url
        .split_once("/hooks/")
        .map(|(_, p)| format!("/hooks/{p}"))
        .unwrap()
        .split_once('?')
        .map(|(p, q)| (p.to_string(), q.to_string()))
        .unwrap();
    ev["rawPath"] = json!(path);
    ev["requestContext"]["http"]["path"] = json!(path);
    ev["rawQueryString"] = json!(query);
    let params: serde_json::Map<String, Value> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    ev["queryStringParameters"] = Value::Object(params);
    for (k, v) in headers {
        ev["headers"][k.to_ascii_lowercase()] = json!(v);
    }
    ev["headers"]["content-length"] = json!(body.len().to_string());
    ev["body"] = json!(String::from_utf8(body.to_vec()).unwrap());
    ev.to_string()
}

fn with_header(headers: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            if k.eq_ignore_ascii_case(name) {
                (k.clone(), value.to_string())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .unwrap()
}

#[tokio::test]
async fn forged_stale_and_replayed_webhooks_on_the_function_url_change_nothing() {
    let d = deployment_for(&[JOB], &[]).await;
    let api = router(&d);
    let hooks = switchyard_engine::http::hooks_router(d.engine.clone(), None);
    let run = start(&api, "job", json!({"title": "Card", "text": "Hello"})).await;
    poll_work(&d, Invocation::default()).await;
    let (_, doc) = get(&api, &format!("/v1/runs/{run}")).await;
    assert_eq!(doc["status"], "waiting", "{doc}");
    let mut out = switchyard_lambdas::callbacks::take(&d);
    assert_eq!(out.len(), 1);
    let cb = out.remove(0);
    let webhook = |headers: Vec<(String, String)>| {
        let ev = function_url_event(&cb.url, &headers, &cb.body);
        let hooks = hooks.clone();
        async move { invoke_http(&hooks, &ev).await }
    };

    // Forged: a signature made with another secret.
    let id = header(&cb.headers, "webhook-id").to_string();
    let ts: u64 = header(&cb.headers, "webhook-timestamp").parse().unwrap();
    let forged =
        switchyard_core::webhook::sign("whsec_bm90LXRoZS1zZWNyZXQtYXQtYWxs", &id, ts, &cb.body)
            .unwrap();
    let (status, _, body) = webhook(with_header(&cb.headers, "webhook-signature", &forged)).await;
    assert_eq!(status, 401, "{body}");
    // Stale: signed with the right secret ten minutes ago (tolerance ±5 min).
    let secret = d.engine.webhook_secret("local").unwrap().clone();
    let old = ts - 600;
    let stale_sig = switchyard_core::webhook::sign(&secret, &id, old, &cb.body).unwrap();
    let stale = with_header(
        &with_header(&cb.headers, "webhook-timestamp", &old.to_string()),
        "webhook-signature",
        &stale_sig,
    );
    let (status, _, body) = webhook(stale).await;
    assert_eq!(status, 401, "{body}");
    let (_, doc) = get(&api, &format!("/v1/runs/{run}")).await;
    assert_eq!(
        doc["status"], "waiting",
        "refused callbacks settled nothing: {doc}"
    );

    // The genuine one settles the step; its replay is recognised and applies nothing.
    let (status, _, body) = webhook(cb.headers.clone()).await;
    assert_eq!(
        (status, body["result"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    let (status, _, body) = webhook(cb.headers.clone()).await;
    assert_eq!(
        (status, body["result"].as_str()),
        (200, Some("duplicate")),
        "{body}"
    );

    let doc = work_until_done(&d, &api, &run).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(started(&d, &run, "render").await, 1);
    let received = history(&d, &run)
        .await
        .iter()
        .filter(|e| e.kind == EventKind::WebhookReceived)
        .count();
    assert_eq!(received, 1);
}

#[tokio::test]
async fn a_2_mb_output_goes_through_s3_and_is_served_by_a_presigned_url() {
    let d = deployment_for(&[BIG], &[]).await;
    let api = router(&d);
    let text = "0123456789abcdef".repeat(2 * 1024 * 1024 / 16);
    let run = start(&api, "big", json!({"text": text})).await;
    let doc = work_until_done(&d, &api, &run).await;
    assert_eq!(doc["status"], "succeeded");
    let out = &doc["output"];
    let url = out["url"].as_str().unwrap_or_else(|| panic!("{out}"));
    assert!(url.contains(&d.resources.bucket), "{url}");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let bytes = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, out["bytes"].as_u64().unwrap());
    assert!(bytes.len() > 2 * 1024 * 1024);
    let served: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(served, json!(text));
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), out["sha256"]);
}

/// A model step that receives an uploaded document.
const READ_UPLOAD: &str = r#"
name: read-upload
version: "1"
output: {bytes: "${input.doc.bytes}", echo: "${steps.a.output.text}"}
steps:
  - {id: a, model: local/echo, input: "${input.doc}"}
"#;

/// An input over the Lambda payload limit goes by presigned S3 PUT: intake declares it, the
/// client PUTs it to S3 with the signed headers, the run adopts it from `uploads/<tenant>/`
/// into `blobs/`, and the worker's model step reads it from there.
#[tokio::test]
async fn an_upload_over_the_payload_limit_reaches_the_model_step_through_s3() {
    use sha2::Digest;
    let d = deployment_for(&[READ_UPLOAD], &[]).await;
    let api = router(&d);
    let text = "lorem ipsum dolor ".repeat(400_000); // 7.2 MB: over Lambda's 6 MB
    let sha = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    let (status, ticket) = post(
        &api,
        "/v1/uploads",
        json!({"sha256": sha, "bytes": text.len(), "content_type": "text/plain"}),
    )
    .await;
    assert_eq!(status, 201, "{ticket}");
    let url = ticket["url"].as_str().unwrap();
    assert!(
        url.contains(&d.resources.bucket) && url.contains("X-Amz-Signature="),
        "{url}"
    );
    assert!(url.contains(&format!("uploads/acme/{sha}")), "{url}");
    // Not uploaded yet: the start is refused, naming the field, and no run exists.
    let input = json!({"workflow": "read-upload", "input": {"doc": ticket["reference"]}});
    let (status, refused) = post(&api, "/v1/runs", input.clone()).await;
    assert_eq!(
        (status, &refused["error"]["field"]),
        (422, &json!("input.doc")),
        "{refused}"
    );

    let mut put = reqwest::Client::new().put(url).body(text.clone());
    for (k, v) in ticket["headers"].as_object().unwrap() {
        put = put.header(k, v.as_str().unwrap());
    }
    let resp = put.send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());

    let run = start_with(&api, input).await;
    let doc = work_until_done(&d, &api, &run).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    let link = doc["output"]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("{doc}"));
    let body = reqwest::get(link).await.unwrap().bytes().await.unwrap();
    let out: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        out["bytes"],
        text.len(),
        "the reference was completed with the stored size"
    );
    assert_eq!(
        out["echo"],
        text.as_str(),
        "the model step got the upload's content"
    );
    // The run's copy is a blob (under the blob prefix, apart from the upload the lifecycle
    // rule deletes).
    assert_eq!(d.engine.blobs.get(&sha).await.unwrap(), text.as_bytes());
}

#[tokio::test]
async fn callback_urls_pointing_at_this_host_are_refused() {
    let d = deployment_for(&[PAIR], &[]).await;
    let api = router(&d);
    // An address literal is refused at intake, with the field named.
    for url in [
        "http://127.0.0.1:9/hook",
        "https://127.0.0.1/hook",
        "https://[::1]/hook",
    ] {
        let (status, body) = post(
            &api,
            "/v1/runs",
            json!({"workflow": "pair", "input": {"text": "z"}, "callback_url": url}),
        )
        .await;
        assert_eq!(status, 422, "{url}: {body}");
        assert!(body.to_string().contains("callback_url"), "{url}: {body}");
    }
    // So is a name for this host; names resolving to private addresses are refused when the
    // notifier connects (tests/api.rs: a redirect to loopback).
    let (status, body) = post(
        &api,
        "/v1/runs",
        json!({"workflow": "pair", "input": {"text": "z"}, "callback_url": "https://localhost:9/hook"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "callback_url", "{body}");
    // A public URL is fine, but this deployment's settings have no callback secret: a
    // notification it cannot sign would never be sent, so the run is refused, not accepted.
    let (status, body) = post(
        &api,
        "/v1/runs",
        json!({"workflow": "pair", "input": {"text": "z"}, "callback_url": "https://example.com/hook"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("SWITCHYARD_CALLBACK_SECRET")),
        "{body}"
    );
}

#[tokio::test]
async fn a_notification_is_retried_to_success_through_the_notifier() {
    // The receiver is on this host, so this deployment allows private callbacks (dev only).
    let d = deployment_for(
        &[PAIR],
        &[
            ("SWITCHYARD_ALLOW_PRIVATE_CALLBACKS", "1"),
            (
                "SWITCHYARD_CALLBACK_SECRET",
                "whsec_c3dpdGNoeWFyZC1ub3RpZmljYXRpb25z",
            ),
        ],
    )
    .await;
    let api = router(&d);
    let (url, seen) = receiver(1).await;
    let run = start_with(
        &api,
        json!({"workflow": "pair", "input": {"text": "n"}, "callback_url": url}),
    )
    .await;
    work_until_done(&d, &api, &run).await;
    let client = CallbackClient::new(Default::default());

    // First attempt: 503 → reported failed, back after its 1 s backoff (not deleted).
    let first = poll_notify(&d, &client).await;
    let (_, doc) = get(&api, &format!("/v1/runs/{run}")).await;
    assert_eq!((first.received, first.deleted), (1, 0), "{first:?} {doc}");
    assert_eq!(first.report.failures.len(), 1);
    let mut delivered = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let p = poll_notify(&d, &client).await;
        if p.deleted == 1 {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "the notification was not retried");
    let ids: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[0], ids[1], "one webhook-id across retries");
    let (_, doc) = get(&api, &format!("/v1/runs/{run}")).await;
    let statuses: Vec<_> = doc["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["attempt"].as_u64(), a["status"].as_u64()))
        .collect();
    assert_eq!(
        statuses,
        [(Some(1), Some(503)), (Some(2), Some(204))],
        "{doc}"
    );
}

/// DynamoDB as the functions see it, through a proxy that answers write requests with
/// `ThrottlingException` while `on` (a test double of the service, so the SDK's retries and
/// the adapter's classification are the real ones).
struct Throttle {
    upstream: String,
    http: reqwest::Client,
    on: AtomicBool,
    throttled: AtomicUsize,
}

const WRITES: [&str; 5] = [
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "TransactWriteItems",
    "BatchWriteItem",
];

async fn forward(State(t): State<Arc<Throttle>>, req: http::Request<Body>) -> http::Response<Body> {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let op = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or_default();
    if t.on.load(Ordering::SeqCst) && WRITES.contains(&op) {
        t.throttled.fetch_add(1, Ordering::SeqCst);
        let body = json!({
            "__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException",
            "message": "Rate of requests exceeds the allowed throughput."
        });
        return http::Response::builder()
            .status(400)
            .header("content-type", "application/x-amz-json-1.0")
            .header("x-amzn-errortype", "ThrottlingException")
            .body(Body::from(body.to_string()))
            .unwrap();
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut up = t
        .http
        .request(parts.method.clone(), format!("{}{path}", t.upstream));
    for (k, v) in &parts.headers {
        if k != "host" && k != "content-length" {
            up = up.header(k, v);
        }
    }
    let resp = up.body(bytes).send().await.unwrap();
    let mut out = http::Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if k != "transfer-encoding" && k != "content-length" {
            out = out.header(k, v);
        }
    }
    out.body(Body::from(resp.bytes().await.unwrap())).unwrap()
}

async fn throttling_proxy() -> (String, Arc<Throttle>) {
    let t = Arc::new(Throttle {
        upstream: endpoint().trim_end_matches('/').to_string(),
        http: reqwest::Client::new(),
        on: AtomicBool::new(false),
        throttled: AtomicUsize::new(0),
    });
    let app = axum::Router::new().fallback(forward).with_state(t.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), t)
}

#[tokio::test]
async fn dynamodb_throttling_ends_in_a_retried_wake_up_not_a_lost_one() {
    let mut d = deployment_with(&[]).await;
    let (proxy, throttle) = throttling_proxy().await;
    let sdk = switchyard_aws::emulator_config(&proxy).await;
    let store = switchyard_aws::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        d.resources.table.clone(),
    );
    rewire(
        &mut d,
        &[PAIR],
        Arc::new(SystemClock),
        Some(Arc::new(store)),
    );
    let api = router(&d);
    let run = start(&api, "pair", json!({"text": "t"})).await;

    // Every write throttled while the worker handles the wake-up: the SDK retries (its
    // standard policy), then the store answers `rate_limited`, the record is reported
    // failed and stays in the queue.
    throttle.on.store(true, Ordering::SeqCst);
    let mapping = Invocation {
        visibility_ms: 1_000,
        ..Invocation::default()
    };
    let polled = poll_work(&d, mapping).await;
    assert_eq!(polled.received, 1);
    assert_eq!(polled.report.failures.len(), 1, "{polled:?}");
    assert_eq!(polled.deleted, 0);
    assert!(throttle.throttled.load(Ordering::SeqCst) >= 1);
    let (_, doc) = get(&api, &format!("/v1/runs/{run}")).await;
    assert_eq!(doc["status"], "pending", "{doc}");
    assert_eq!(doc["steps"][0]["attempts"], 0, "{doc}");

    // Capacity is back: the same wake-up comes back after its visibility and the run ends.
    throttle.on.store(false, Ordering::SeqCst);
    let doc = work_until_done_with(&d, &api, &run, mapping).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    each_step_started_once(&d, &run, &["first", "second"]).await;
}

/// A draft the judge fails once; the judge's repair changes two records in one transition.
const JUDGED: &str = r#"
name: judged
version: "1"
steps:
  - id: draft
    model: local/template-generator
    input: "${input.topic}"
    params:
      format: json
      template: '{% if feedback %}{"title": "{{ feedback[0][:13] }}"}{% else %}{"title": "The best pack"}{% endif %}'
  - id: check
    kind: validate
    value: "${steps.draft.output.json}"
    judge: {model: local/rules-judge, params: {rules: [{id: no-best, at: /title, forbid: "\\bbest\\b", message: no superlatives}]}}
    repair: {step: draft, max_attempts: 2}
  - {id: publish, kind: transform, value: "${steps.check.output.title}"}
"#;

/// The operator's half-applied repair, on DynamoDB: the repair's one transaction fails before
/// it lands or after (its answer lost), and the run still makes each call once — no dangling
/// claim, no second judge call, no lease to wait out. With the worker holding free steps'
/// records until the end (as the functions run), the repair is no write of its own: the
/// end write that carries it (the header's journal) fails instead, with the same outcome.
#[tokio::test]
async fn a_repair_is_one_transaction_whatever_fails_around_it() {
    use switchyard_contract::faults::{Fault, FaultyStore, WriteKind};
    for hold in [false, true] {
        // Which write carries the repair: the transaction, or the run's end.
        let (kind, nth) = if hold {
            let mut d = deployment_with(&[]).await;
            let counting = Arc::new(FaultyStore::new(d.engine.store.clone()));
            rewire(
                &mut d,
                &[JUDGED],
                Arc::new(SystemClock),
                Some(counting.clone()),
            );
            let api = router(&d);
            let run = start(&api, "judged", json!({"topic": "t"})).await;
            assert_eq!(work_until_done(&d, &api, &run).await["status"], "succeeded");
            assert_eq!(
                counting.calls(WriteKind::PutSteps),
                0,
                "held: no repair write"
            );
            (WriteKind::PutHeader, counting.calls(WriteKind::PutHeader))
        } else {
            (WriteKind::PutSteps, 1)
        };
        for fault in [Fault::Before, Fault::After] {
            let mut d = deployment_with(&[]).await;
            Arc::make_mut(&mut d.engine.config).hold_free_records = hold;
            let faulty = Arc::new(FaultyStore::new(d.engine.store.clone()).fail(kind, nth, fault));
            rewire(
                &mut d,
                &[JUDGED],
                Arc::new(SystemClock),
                Some(faulty.clone()),
            );
            let api = router(&d);
            let run = start(&api, "judged", json!({"topic": "t"})).await;
            let doc = work_until_done(&d, &api, &run).await;
            let case = format!("hold {hold}, {fault:?}");
            assert_eq!(doc["status"], "succeeded", "{case}: {doc}");
            assert_eq!(faulty.injected(), [(kind, nth, fault)], "{case}");
            // Two drafts, two judge calls (fail, pass), one repair: as without the fault.
            assert_eq!(started(&d, &run, "draft").await, 2, "{case}");
            assert_eq!(started(&d, &run, "check").await, 2, "{case}");
            let events = history(&d, &run).await;
            assert!(
                !events.iter().any(|e| e.kind == EventKind::StepLeaseExpired),
                "{case}: no claim dangled"
            );
            let repairs = events
                .iter()
                .filter(|e| e.kind == EventKind::StepRepairRequested)
                .count();
            assert_eq!(repairs, 1, "{case}");
        }
    }
}

/// The stuck-run sweep on DynamoDB (the sparse `active` index) and SQS: a run whose start
/// never reached the queue is found once it is due for longer than the grace, woken, and
/// finished; ended runs leave the index.
#[tokio::test]
async fn the_sweep_finds_a_run_whose_start_was_lost() {
    use switchyard_core::recovery::STUCK_GRACE_MS;
    let mut d = deployment_with(&[]).await;
    let clock = Arc::new(JumpClock::default());
    rewire(&mut d, &[PAIR], clock.clone(), None);
    let api = router(&d);
    let run = start(&api, "pair", json!({"text": "x"})).await;
    // The start is lost (received by a process that died, dead-lettered...).
    for r in receive_records(&d, 60_000).await {
        d.work.ack(&r.receipt).await.unwrap();
    }
    let swept = d.engine.sweep().await.unwrap();
    assert!(swept.rewoken.is_empty(), "not due long enough: {swept:?}");
    clock.jump(STUCK_GRACE_MS + 1_000);
    let swept = d.engine.sweep().await.unwrap();
    assert_eq!(swept.rewoken, std::slice::from_ref(&run));
    let doc = work_until_done(&d, &api, &run).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    each_step_started_once(&d, &run, &["first", "second"]).await;
    clock.jump(STUCK_GRACE_MS + 1_000);
    let swept = d.engine.sweep().await.unwrap();
    assert!(
        !swept.rewoken.contains(&run),
        "an ended run is not woken: {swept:?}"
    );
}

/// A retry, a step after it and a transform: the retry's timer is a delayed SQS message.
const FLAKY_PAIR: &str = r#"
name: flaky-pair
version: "1"
defaults:
  retry: {max_attempts: 3, initial_backoff: 100ms, jitter: false}
steps:
  - id: first
    model: local/template-generator
    input: {text: "${input.text}"}
    params: {template: "first={{ input.text }}", fault: {kind: transient, times: 1}}
  - id: second
    model: local/template-generator
    input: {text: "${steps.first.output.text}"}
    params: {template: "second={{ input.text }}"}
  - {id: out, kind: transform, value: "${steps.second.output.text}"}
"#;

/// Each step's (status, attempts, output) as `GET /v1/runs/{id}` shows it.
fn step_summary(doc: &Value) -> Vec<(Value, Value, Value)> {
    doc["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    (
                        s["status"].clone(),
                        s["attempts"].clone(),
                        s["output"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Drives `run` through the worker's batches, sending the extra wake-ups `inject` lists for
/// each round (reason, delay in seconds) before it; returns the run's document once it ended.
async fn drive_injecting(
    d: &switchyard_lambdas::Deployment,
    api: &axum::Router,
    run: &str,
    inject: &[(usize, WakeReason, u32)],
) -> Value {
    let inv = Invocation {
        visibility_ms: 5_000,
        ..Invocation::default()
    };
    for round in 0..200 {
        for (_, reason, delay_s) in inject.iter().filter(|(at, _, _)| *at == round) {
            let wake = Message::Wake(WakeUp {
                run_id: run.to_string(),
                reason: *reason,
                due_at: None,
            });
            d.engine
                .queue
                .send(&wake, u64::from(*delay_s) * 1000)
                .await
                .unwrap();
        }
        let polled = poll_work(d, inv).await;
        let (_, doc) = get(api, &format!("/v1/runs/{run}")).await;
        if matches!(doc["status"].as_str(), Some("succeeded" | "failed")) {
            return doc;
        }
        if polled.received == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    panic!("run {run} did not end");
}

/// The machine's property on the emulator: duplicated, reordered and late wake-ups — any
/// reason, at any round, now or a second later, and again after the run ended — end the run in
/// the state a clean run ends in, each attempt started once. (The same property runs on the
/// embedded backend in `crates/engine/tests/engine/property.rs`, and over the step machine
/// itself with every kind of event in `crates/core/src/machine/tests.rs`.) Few cases: each is
/// a run on moto with real SQS delays.
#[test]
fn duplicated_late_and_reordered_wake_ups_end_the_same_on_the_emulator() {
    use proptest::prelude::*;
    const REASONS: [WakeReason; 5] = [
        WakeReason::Start,
        WakeReason::Timer,
        WakeReason::Resume,
        WakeReason::Retry,
        WakeReason::Recover,
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (want, _) = rt.block_on(async {
        let d = deployment_for(&[FLAKY_PAIR], &[]).await;
        let api = router(&d);
        let run = start(&api, "flaky-pair", json!({"text": "p"})).await;
        let doc = drive_injecting(&d, &api, &run, &[]).await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
        (step_summary(&doc), doc)
    });
    let config = ProptestConfig {
        cases: 3,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let plan = prop::collection::vec((0usize..6, 0usize..REASONS.len(), 0u32..2), 1..8);
    proptest!(config, |(plan in plan)| {
        let inject: Vec<(usize, WakeReason, u32)> =
            plan.iter().map(|(at, r, delay)| (*at, REASONS[*r], *delay)).collect();
        rt.block_on(async {
            let d = deployment_for(&[FLAKY_PAIR], &[]).await;
            let api = router(&d);
            let run = start(&api, "flaky-pair", json!({"text": "p"})).await;
            let doc = drive_injecting(&d, &api, &run, &inject).await;
            assert_eq!(step_summary(&doc), want, "{inject:?}: {doc}");
            assert_eq!(started(&d, &run, "first").await, 2, "{inject:?}");
            each_step_started_once(&d, &run, &["second"]).await;
            // The same wake-ups once more, after the end: acknowledged, nothing changes.
            let events = history(&d, &run).await.len();
            let late: Vec<(usize, WakeReason, u32)> =
                inject.iter().map(|(_, r, _)| (0, *r, 0)).collect();
            drive_injecting(&d, &api, &run, &late).await;
            let polled = poll_work(&d, Invocation::default()).await;
            assert!(polled.report.failures.is_empty(), "{polled:?}");
            assert_eq!(history(&d, &run).await.len(), events, "{inject:?}");
        });
    });
}
