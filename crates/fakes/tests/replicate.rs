//! Replicate: prediction lifecycle, signed webhooks, polling, cancel, errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

mod common;

use common::*;
use serde_json::{json, Value};
use switchyard_core::webhook;
use switchyard_fakes::{Behavior, FakeConfig, FakeServer};

const FLUX: &str = "/v1/models/black-forest-labs/flux-schnell/predictions";

fn create_body(hook: Option<&str>, filter: Option<Value>) -> Value {
    let mut b = json!({"input": {"prompt": "a fox in snow", "num_outputs": 1}});
    if let Some(h) = hook {
        b["webhook"] = json!(h);
    }
    if let Some(f) = filter {
        b["webhook_events_filter"] = f;
    }
    b
}

fn verify(s: &FakeServer, d: &Delivery) {
    let now = switchyard_fakes_now();
    assert!(d.header("webhook-id").starts_with("msg_"));
    webhook::verify(
        s.webhook_secret(),
        d.header("webhook-id"),
        d.header("webhook-timestamp"),
        d.header("webhook-signature"),
        &d.body,
        now,
    )
    .unwrap_or_else(|e| panic!("webhook signature does not verify: {e}"));
    assert!(webhook::verify(
        "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        d.header("webhook-id"),
        d.header("webhook-timestamp"),
        d.header("webhook-signature"),
        &d.body,
        now
    )
    .is_err());
}

fn switchyard_fakes_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn create_then_succeed_with_a_signed_webhook() {
    let s = server().await;
    let (hook, mut rx) = receiver().await;
    let hook_url = format!("{hook}?run_id=r1&step=art&token=tok123");
    let r = post(
        &format!("{}{FLUX}", s.url()),
        &BEARER,
        &create_body(Some(&hook_url), Some(json!(["completed"]))),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let created = r.json();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 26);
    assert_eq!(created["status"], "starting");
    assert_eq!(created["model"], "black-forest-labs/flux-schnell");
    assert_eq!(created["input"]["prompt"], "a fox in snow");
    assert_eq!(created["output"], Value::Null);
    assert_eq!(created["error"], Value::Null);
    assert_eq!(created["data_removed"], false);
    assert_eq!(created["started_at"], Value::Null);
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    for k in ["version", "logs", "metrics", "completed_at"] {
        assert!(created.get(k).is_some(), "{k}");
    }
    let get_url = created["urls"]["get"].as_str().unwrap().to_string();
    assert_eq!(get_url, format!("{}/v1/predictions/{id}", s.url()));
    assert_eq!(created["urls"]["cancel"], format!("{get_url}/cancel"));
    assert!(created["urls"]["stream"].is_string());

    let d = next_delivery(&mut rx, 5_000).await.expect("a webhook");
    assert_eq!(
        d.uri.query(),
        Some("run_id=r1&step=art&token=tok123"),
        "the query string is kept"
    );
    assert_eq!(d.header("content-type"), "application/json");
    verify(&s, &d);
    let body = d.json();
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["status"], "succeeded");
    let file = format!("{}/v1/files/fake-{id}/out-0.png", s.url());
    assert_eq!(body["output"], json!([file]));
    // The output file is served behind the API token, as a 1×1 PNG.
    let got = reqwest::Client::new()
        .get(&file)
        .header("authorization", "Bearer r8_fake")
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "image/png");
    assert_eq!(
        got.bytes().await.unwrap().as_ref(),
        switchyard_fakes::FAKE_PNG
    );
    let anonymous = reqwest::Client::new().get(&file).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(body["metrics"]["predict_time"].as_f64().unwrap() > 0.0);
    assert!(body["completed_at"].is_string());
    assert!(
        next_delivery(&mut rx, 300).await.is_none(),
        "only the completed event was asked for"
    );

    let polled = get(&get_url, &BEARER).await.json();
    assert_eq!(polled, body, "GET returns what the webhook carried");
}

#[tokio::test]
async fn start_and_completed_events_and_failures() {
    let s = server().await;
    let (hook, mut rx) = receiver().await;
    s.script(
        "replicate",
        vec![Behavior::Fail, Behavior::Refusal, Behavior::SchemaInvalid],
    );
    let url = format!("{}/v1/predictions", s.url());
    let versioned = |filter: Value| {
        let mut b = create_body(Some(&hook), Some(filter));
        b["version"] = json!(
            "openai/whisper:8099696689d249cf8b122d833c36ac3f75505c666a395ca40ef26f68e7d3d16e"
        );
        b
    };

    let created = post(&url, &BEARER, &versioned(json!(["start", "completed"])))
        .await
        .json();
    assert_eq!(created["model"], "openai/whisper");
    assert_eq!(
        created["version"],
        "8099696689d249cf8b122d833c36ac3f75505c666a395ca40ef26f68e7d3d16e"
    );
    let start = next_delivery(&mut rx, 5_000).await.unwrap();
    verify(&s, &start);
    assert_eq!(start.json()["status"], "processing");
    let done = next_delivery(&mut rx, 5_000).await.unwrap();
    verify(&s, &done);
    assert_ne!(start.header("webhook-id"), done.header("webhook-id"));
    let body = done.json();
    assert_eq!(body["status"], "failed");
    assert!(body["error"].as_str().unwrap().contains("failed"));
    assert_eq!(body["output"], Value::Null);

    post(&url, &BEARER, &versioned(json!(["completed"]))).await;
    let body = next_delivery(&mut rx, 5_000).await.unwrap().json();
    assert_eq!(body["status"], "failed");
    assert!(body["error"].as_str().unwrap().contains("NSFW"));

    post(&url, &BEARER, &versioned(json!(["completed"]))).await;
    let body = next_delivery(&mut rx, 5_000).await.unwrap().json();
    assert_eq!(body["status"], "succeeded");
    assert!(
        !body["output"].is_array() && !body["output"].is_string(),
        "schema_invalid output: {}",
        body["output"]
    );

    // A Whisper success carries its transcription object.
    post(&url, &BEARER, &versioned(json!(["completed"]))).await;
    let body = next_delivery(&mut rx, 5_000).await.unwrap().json();
    assert_eq!(
        body["output"]["transcription"],
        "Fake transcription of the audio."
    );

    // Without a version the create request is invalid (422).
    let r = post(&url, &BEARER, &create_body(None, None)).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["title"], "Input validation failed");
}

#[tokio::test]
async fn no_webhook_completes_for_polling_only() {
    let s = server().await;
    let (hook, mut rx) = receiver().await;
    s.script("replicate", vec![Behavior::NoWebhook]);
    let created = post(
        &format!("{}{FLUX}", s.url()),
        &BEARER,
        &create_body(Some(&hook), Some(json!(["completed"]))),
    )
    .await
    .json();
    assert_eq!(created["status"], "starting");
    let done = wait_terminal(created["urls"]["get"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded");
    assert!(
        next_delivery(&mut rx, 400).await.is_none(),
        "no_webhook must not deliver"
    );

    // The next prediction (script consumed) delivers again.
    post(
        &format!("{}{FLUX}", s.url()),
        &BEARER,
        &create_body(Some(&hook), Some(json!(["completed"]))),
    )
    .await;
    assert!(next_delivery(&mut rx, 5_000).await.is_some());
}

#[tokio::test]
async fn cancel_before_completion() {
    let config = FakeConfig {
        replicate_delay_ms: 60_000,
        ..FakeConfig::default()
    };
    let s = FakeServer::start(config).await.unwrap();
    let (hook, mut rx) = receiver().await;
    let created = post(
        &format!("{}{FLUX}", s.url()),
        &BEARER,
        &create_body(Some(&hook), Some(json!(["completed"]))),
    )
    .await
    .json();
    let id = created["id"].as_str().unwrap();
    let still = get(&format!("{}/v1/predictions/{id}", s.url()), &BEARER)
        .await
        .json();
    assert!(matches!(
        still["status"].as_str(),
        Some("starting" | "processing")
    ));

    let r = post(
        &format!("{}/v1/predictions/{id}/cancel", s.url()),
        &BEARER,
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 200);
    let canceled = r.json();
    assert_eq!(canceled["status"], "canceled");
    assert!(canceled["completed_at"].is_string());
    let d = next_delivery(&mut rx, 5_000)
        .await
        .expect("completed webhook for the cancel");
    verify(&s, &d);
    assert_eq!(d.json()["status"], "canceled");
    let again = get(&format!("{}/v1/predictions/{id}", s.url()), &BEARER)
        .await
        .json();
    assert_eq!(again["status"], "canceled");

    let r = get(&format!("{}/v1/predictions/doesnotexist", s.url()), &BEARER).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["status"], 404);
    s.shutdown().await;
}

#[tokio::test]
async fn errors_and_authentication() {
    let s = server().await;
    let url = format!("{}{FLUX}", s.url());
    s.script(
        "replicate",
        vec![
            Behavior::RateLimited {
                retry_after_secs: 2,
            },
            Behavior::Quota,
            Behavior::ServerError,
            Behavior::Overloaded,
            Behavior::Unauthorized,
            Behavior::ContextTooLong,
            Behavior::Malformed,
        ],
    );
    let want: Vec<(u16, &str, Option<&str>)> = vec![
        (429, "Request was throttled", Some("2")),
        (402, "Insufficient credit", None),
        (500, "Internal Server Error", None),
        (503, "Service Unavailable", None),
        (401, "Unauthenticated", None),
        (422, "Input validation failed", None),
    ];
    for (status, title, retry_after) in want {
        let r = post(&url, &BEARER, &create_body(None, None)).await;
        assert_eq!(r.status, status, "{}", r.text);
        let v = r.json();
        assert_eq!(v["title"], title);
        assert_eq!(v["status"], status);
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
        assert_eq!(r.header("retry-after"), retry_after);
    }
    let r = post(&url, &BEARER, &create_body(None, None)).await;
    assert_eq!(r.status, 201);
    assert!(
        serde_json::from_str::<Value>(&r.text).is_err(),
        "malformed: {}",
        r.text
    );

    for headers in [
        vec![],
        vec![("authorization", "Bearer ")],
        vec![("authorization", "Basic abc")],
    ] {
        let r = post(&url, &headers, &create_body(None, None)).await;
        assert_eq!(r.status, 401);
        assert_eq!(
            r.json()["detail"],
            "You did not pass a valid authentication token"
        );
    }
    let r = get(&format!("{}/v1/predictions/x", s.url()), &[]).await;
    assert_eq!(r.status, 401);
    let recorded = s.requests();
    assert_eq!(recorded[0].headers["authorization"], "Bearer");
    assert!(!format!("{recorded:?}").contains("r8_test_token"));
}

#[tokio::test]
async fn sync_mode_waits_for_the_result() {
    let s = server().await;
    let r = post(
        &format!("{}{FLUX}", s.url()),
        &[BEARER[0], ("prefer", "wait=5")],
        &create_body(None, None),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["status"], "succeeded");
}

/// Output files elsewhere (`delivery_url`, like `https://replicate.delivery`), and downloads
/// of the fake's own files dropped as an unreachable host drops them: no answer at all.
#[tokio::test]
async fn output_files_can_live_elsewhere_or_be_unreachable() {
    let config = FakeConfig {
        delivery_url: Some("https://replicate.delivery.invalid/".into()),
        ..FakeConfig::default()
    };
    let s = FakeServer::start(config).await.unwrap();
    let r = post(
        &format!("{}{FLUX}", s.url()),
        &[BEARER[0], ("prefer", "wait=5")],
        &create_body(None, None),
    )
    .await;
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        r.json()["output"],
        json!([format!(
            "https://replicate.delivery.invalid/xezq/fake-{id}/out-0.png"
        )])
    );

    let s = server().await;
    let r = post(
        &format!("{}{FLUX}", s.url()),
        &[BEARER[0], ("prefer", "wait=5")],
        &create_body(None, None),
    )
    .await;
    let file = r.json()["output"][0].as_str().unwrap().to_string();
    s.drop_downloads(2);
    let client = reqwest::Client::new();
    let download = || {
        client
            .get(&file)
            .header("authorization", BEARER[0].1)
            .send()
    };
    for _ in 0..2 {
        let e = download().await.unwrap_err();
        assert!(!e.is_status() && !e.is_timeout(), "{e:?}");
    }
    let ok = download().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.bytes().await.unwrap().as_ref(),
        switchyard_fakes::FAKE_PNG
    );
    let behaviors: Vec<String> = s
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/files/"))
        .map(|r| r.behavior)
        .collect();
    assert_eq!(behaviors, ["dropped", "dropped", "file"]);
}
