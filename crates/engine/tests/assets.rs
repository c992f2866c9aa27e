//! Asset steps against a hosted job API: the Replicate adapter pointed at the fake Replicate
//! (`switchyard-fakes`) over real HTTP, its webhooks handed to the engine as the HTTP route
//! would, the engine on the embedded backend with a manual clock (backoff is not sat through).
//!
//! The case (issue 22): a prediction succeeds and its webhook arrives, but its output file
//! cannot be downloaded. The job is done and paid for; only the download may be tried again,
//! never the job.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

mod support;

use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use support::{secret, H};
use switchyard_core::state::{EventKind, RunStatus, StepStatus};
use switchyard_core::Clock;
use switchyard_core::ErrorClass;
use switchyard_engine::webhook::{CallbackRequest, CallbackResult};
use switchyard_fakes::{FakeConfig, FakeServer, WebhookReceiver, FAKE_PNG};
use switchyard_providers::catalog::Catalog;
use switchyard_providers::http::{Sender, Timeouts};
use switchyard_providers::replicate::Replicate;

/// `hosted/launch-kit`'s image step, alone, and a step that reads its output.
const HERO: &str = r#"
    name: hero
    version: "1"
    steps:
      - id: image
        model: replicate/black-forest-labs/flux-schnell
        role: asset
        input: {prompt: "A clean hero image for a backpack", aspect_ratio: "16:9"}
        wait_timeout: 2m
      - id: kit
        kind: transform
        value: {image: "${steps.image.output.url}", bytes: "${steps.image.output.bytes}"}
"#;

/// The price table's price of one flux-schnell prediction.
const PREDICTION_USD: f64 = 0.003;

struct Rig {
    h: H,
    fake: FakeServer,
    hooks: WebhookReceiver,
}

/// An engine whose callback URLs point at a webhook receiver, with the Replicate adapter
/// pointed at a fake configured by `config`. The manual clock starts at real time: the
/// fake signs its webhooks with real timestamps.
async fn rig(config: FakeConfig) -> Rig {
    let fake = FakeServer::start(FakeConfig {
        webhook_secret: secret(),
        replicate_delay_ms: 20,
        ..config
    })
    .await
    .unwrap();
    let hooks = WebhookReceiver::start().await.unwrap();
    let sender = Sender::new(Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(20),
    })
    .unwrap();
    let replicate = Replicate::new(
        &format!("{}/v1", fake.url()),
        Some("r8_test_0123456789".into()),
        Arc::new(Catalog::load(None).unwrap()),
        sender,
    );
    let public_url = hooks.url();
    let h = H::build(
        move |c| c.public_url = public_url,
        vec![Arc::new(replicate)],
    );
    h.clock.set(switchyard_core::time::SystemClock.now_ms());
    Rig { h, fake, hooks }
}

/// Drives the run; whenever it waits for a webhook, hands the next delivery to the engine
/// as `POST /hooks/replicate` would. Returns the status it ends (or stays) in.
async fn run_with_webhooks(r: &mut Rig, run: &str) -> RunStatus {
    for _ in 0..10 {
        let status = r.h.drive(run).await;
        if status != RunStatus::Waiting {
            return status;
        }
        let Some(d) = r.hooks.next(Duration::from_secs(10)).await else {
            return status;
        };
        let query: HashMap<String, String> = d
            .path_and_query
            .split_once('?')
            .map_or("", |(_, q)| q)
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let req = CallbackRequest {
            provider: "replicate".into(),
            query,
            headers: d.headers.into_iter().collect(),
            body: d.body,
        };
        let applied = r.h.engine.handle_callback(&req).await.unwrap();
        assert_eq!(applied, CallbackResult::Applied);
    }
    panic!("run {run} did not settle");
}

/// How many predictions the fake was asked to create.
fn predictions_created(fake: &FakeServer) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/predictions"))
        .count()
}

/// The step's history events of `kind` (by its wire name, e.g. `asset_download_scheduled`).
async fn events_named(h: &H, run: &str, step: &str, kind: &str) -> Vec<Value> {
    h.events(run)
        .await
        .into_iter()
        .filter(|e| e.step.as_deref() == Some(step) && json!(e.kind) == json!(kind))
        .map(|e| e.detail)
        .collect()
}

#[tokio::test]
async fn an_unreachable_output_file_is_downloaded_again_not_the_job_run_again() {
    let mut r = rig(FakeConfig::default()).await;
    // The first two downloads of the output file find no host.
    r.fake.drop_downloads(2);
    let run = r.h.start(HERO, json!({})).await;

    assert_eq!(run_with_webhooks(&mut r, &run).await, RunStatus::Succeeded);
    assert_eq!(
        predictions_created(&r.fake),
        1,
        "one prediction, one charge"
    );
    let downloads: Vec<String> = r
        .fake
        .requests()
        .into_iter()
        .filter(|q| q.path.starts_with("/v1/files/"))
        .map(|q| q.behavior)
        .collect();
    assert_eq!(downloads, ["dropped", "dropped", "file"]);

    let image = r.h.rec(&run, "image").await;
    assert_eq!((image.status, image.attempt), (StepStatus::Succeeded, 1));
    assert!(
        (image.cost_usd - PREDICTION_USD).abs() < 1e-12,
        "charged once: {}",
        image.cost_usd
    );
    assert_eq!(
        r.h.step_events(&run, EventKind::StepStarted, "image")
            .await
            .len(),
        1
    );
    assert_eq!(
        r.h.step_events(&run, EventKind::StepRetryScheduled, "image")
            .await
            .len(),
        0,
        "the job is never retried"
    );
    // The result was recorded when the webhook came; each download was scheduled on its own,
    // the later ones after a backoff and with what failed.
    let scheduled = events_named(&r.h, &run, "image", "asset_download_scheduled").await;
    let downloads: Vec<u64> = scheduled
        .iter()
        .map(|d| d["download"].as_u64().unwrap())
        .collect();
    assert_eq!(downloads, [1, 2, 3], "{scheduled:?}");
    assert_eq!(scheduled[0]["delay_ms"], 0);
    for retry in &scheduled[1..] {
        assert!(retry["delay_ms"].as_u64().unwrap() >= 1_000, "{retry}");
        assert_eq!(retry["class"], "transient", "{retry}");
        assert!(
            retry["message"].as_str().unwrap().contains("download"),
            "{retry}"
        );
    }
    // The kept file is ours, byte for byte.
    let out = r.h.output(&run, "image").await;
    assert_eq!(out["bytes"], FAKE_PNG.len());
    assert_eq!(out["content_type"], "image/png");
    assert!(out["blob"].is_string(), "{out}");
    assert_eq!(r.h.output(&run, "kit").await["bytes"], FAKE_PNG.len());
}

#[tokio::test]
async fn a_file_that_never_downloads_fails_the_step_naming_the_download_and_its_host() {
    // Output files on a host nothing serves (a closed port), as `https://replicate.delivery`
    // is from a network that cannot reach it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut r = rig(FakeConfig {
        delivery_url: Some(format!("https://{closed}")),
        ..FakeConfig::default()
    })
    .await;
    let run = r.h.start(HERO, json!({})).await;

    assert_eq!(run_with_webhooks(&mut r, &run).await, RunStatus::Failed);
    assert_eq!(
        predictions_created(&r.fake),
        1,
        "the job is never run again"
    );
    let image = r.h.rec(&run, "image").await;
    assert_eq!((image.status, image.attempt), (StepStatus::Failed, 1));
    assert!(
        (image.cost_usd - PREDICTION_USD).abs() < 1e-12,
        "the prediction is paid for once: {}",
        image.cost_usd
    );
    let err = image.error.unwrap();
    assert_eq!(err.class, ErrorClass::Transient, "{err:?}");
    for part in ["download", &closed.to_string(), "5 downloads"] {
        assert!(err.message.contains(part), "`{part}` in: {}", err.message);
    }
    let scheduled = events_named(&r.h, &run, "image", "asset_download_scheduled").await;
    assert_eq!(scheduled.len(), 5, "{scheduled:?}");
    let run_error = r.h.snap(&run).await.header.error.unwrap();
    assert_eq!(run_error.step.as_deref(), Some("image"));
    assert!(run_error.message.contains("download"), "{run_error:?}");
}
