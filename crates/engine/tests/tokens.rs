//! Tokens everywhere: a model step's usage — cache reads and writes and reasoning included —
//! reaches the run document (per step and per run), the `step_succeeded` event, the stats
//! (per step and per workflow) and the notification body.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

mod support;

use async_trait::async_trait;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use support::{H, TENANT};
use switchyard_core::model::{ModelInfo, ModelOutput, ModelRequest, ModelResponse, Provider, Role};
use switchyard_core::ports::{CallbackSender, ListScope, OutboundAttempt};
use switchyard_core::state::{EventKind, Notification, NotifyEvent, RunStatus, Usage};
use switchyard_core::StepError;
use switchyard_engine::notifier::Notified;
use switchyard_engine::stats::StatsQuery;

/// What the hosted stand-in reports for every call: a prompt-cache hit and some reasoning.
const CACHED: Usage = Usage {
    input_tokens: 2006,
    output_tokens: 300,
    cache_read_tokens: 1920,
    cache_write_tokens: 0,
    reasoning_tokens: 192,
};

/// A hosted model's stand-in: answers every call with [`CACHED`] usage.
struct Cached;

#[async_trait]
impl Provider for Cached {
    fn name(&self) -> &str {
        "hosted"
    }

    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: "hosted/cached".into(),
            roles: vec![Role::Generation],
            asynchronous: false,
            description: "reports cached and reasoning tokens".into(),
        }]
    }

    fn estimate_cost_usd(&self, _request: &ModelRequest) -> f64 {
        0.001
    }

    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, StepError> {
        Ok(ModelResponse::Completed(ModelOutput {
            output: switchyard_core::model::normalized::generation(
                "drafted",
                None,
                CACHED,
                "stop",
                &request.model,
            ),
            usage: Some(CACHED),
            cost_usd: 0.0005,
            model: request.model.clone(),
            provider_request_id: None,
            sources: Vec::new(),
        }))
    }
}

/// A receiver that answers 200 and keeps the bodies it was sent.
#[derive(Default)]
struct Receiver {
    bodies: Mutex<Vec<Value>>,
}

#[async_trait]
impl CallbackSender for Receiver {
    async fn deliver(
        &self,
        _url: &str,
        _headers: &[(String, String)],
        body: Vec<u8>,
        _allow_private: bool,
    ) -> OutboundAttempt {
        self.bodies
            .lock()
            .unwrap()
            .push(serde_json::from_slice(&body).unwrap());
        OutboundAttempt {
            result: switchyard_core::outbound::DeliveryResult::Status(200),
            latency_ms: 1,
            address: None,
        }
    }
}

const WF: &str = r#"
    name: tokens
    version: "1"
    steps:
      - id: draft
        model: hosted/cached
        input: "${input.text}"
      - id: polish
        model: local/template-generator
        input: "${steps.draft.output.text}"
        params: {template: "Polished: {{ input }}"}
      - {id: shape, kind: transform, value: "${steps.polish.output.text}"}
"#;

#[tokio::test]
async fn tokens_reach_the_run_document_events_stats_and_notifications() {
    let h = H::build(
        |c| c.callback_secrets = support::secret(),
        vec![Arc::new(Cached)],
    );
    let wf = h.compile(WF);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut req = H::request(&wf, json!({"text": "Refund the annual plan"}));
        req.callback_url = Some("https://receiver.example/hook".into());
        let run = h
            .engine
            .start_workflow(TENANT, &wf, req, None)
            .await
            .unwrap()
            .run_id;
        assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
        runs.push(run);
    }
    let run = &runs[0];
    let snap = h.snap(run).await;
    let polish = snap.step("polish").unwrap().usage.expect("local usage");
    assert!(polish.input_tokens > 0 && polish.cache_read_tokens == 0);

    // The run document: each step's tokens (null for the transform), and the run's sum.
    let view = h.engine.view(&snap).await.unwrap();
    let by_step: Vec<(&str, Option<Usage>)> = view
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.usage))
        .collect();
    assert_eq!(
        by_step,
        [
            ("draft", Some(CACHED)),
            ("polish", Some(polish)),
            ("shape", None)
        ]
    );
    assert_eq!(view.usage, CACHED + polish);
    let doc = serde_json::to_value(&view).unwrap();
    assert_eq!(
        doc["steps"][0]["usage"],
        json!({"input_tokens": 2006, "output_tokens": 300, "cache_read_tokens": 1920,
               "reasoning_tokens": 192})
    );
    assert_eq!(doc["steps"][2]["usage"], Value::Null);
    assert_eq!(doc["usage"], json!(CACHED + polish));

    // `step_succeeded`: the step's tokens beside its cost; none on a step without a call.
    let draft_ok = h.step_events(run, EventKind::StepSucceeded, "draft").await;
    assert_eq!(draft_ok[0].detail["usage"], json!(CACHED));
    let shape_ok = h.step_events(run, EventKind::StepSucceeded, "shape").await;
    assert!(shape_ok[0].detail.get("usage").is_none());

    // Stats: per step over its executions, per workflow over its runs, and over all.
    let q = StatsQuery::parse(ListScope::AllTenants, None, Some("24h")).unwrap();
    let stats = h.engine.stats(&q).await.unwrap();
    let w = &stats.workflows[0];
    // Stats keep tokens by kind (`Usage::counts`), without the kinds that stayed 0.
    let kinds = |u: Usage| -> std::collections::BTreeMap<String, u64> {
        u.counts()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.to_string(), n))
            .collect()
    };
    let nonzero =
        |m: &std::collections::BTreeMap<String, u64>| -> std::collections::BTreeMap<String, u64> {
            m.iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k.clone(), *n))
                .collect()
        };
    let step = |name: &str| nonzero(&w.steps.iter().find(|s| s.step == name).unwrap().tokens);
    assert_eq!(step("draft"), kinds(CACHED + CACHED));
    assert_eq!(step("polish"), kinds(polish + polish));
    assert_eq!(step("shape"), kinds(Usage::default()));
    assert_eq!(nonzero(&w.tokens), kinds(CACHED + CACHED + polish + polish));

    // The notification carries the run's tokens.
    let receiver = Receiver::default();
    let n = Notification::new(run, NotifyEvent::RunSucceeded, "end");
    assert_eq!(
        h.engine.notifier().notify(&n, 1, &receiver).await.unwrap(),
        Notified::Delivered
    );
    let bodies = receiver.bodies.lock().unwrap().clone();
    assert_eq!(bodies[0]["data"]["usage"], json!(CACHED + polish));
}
