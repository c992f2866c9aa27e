//! Dead letters on the embedded backend: a wake-up whose handling fails every time (a poisoned
//! run) ends up on the work queue's dead letters, is listed with its run, workflow, step,
//! receive count and reason, and — once the cause is fixed — redriven, after which the run
//! ends once, every step started once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

mod support;

use serde_json::json;
use std::sync::Arc;
use support::H;
use switchyard_contract::faults::FaultyStore;
use switchyard_core::ports::{Inbox, QueueName};
use switchyard_core::state::{EventKind, RunStatus};
use switchyard_engine::deadletters::{self, Inboxes};
use switchyard_local::DEFAULT_MAX_RECEIVE_COUNT;

const GATED: &str = r#"
    name: gated
    version: "1"
    steps:
      - id: prep
        model: local/keyword-classifier
        input: "${input.what}"
        params:
          labels: {release: [ship, v2]}
      - id: review
        kind: approval
        deadline: 1h
        message: "Ship {{ input.what }}?"
      - id: ship
        model: local/template-generator
        input:
          label: "${steps.prep.output.label}"
          approved: "${steps.review.output.approved}"
        params:
          template: "Shipping {{ input.label }}: approved={{ input.approved }}"
    "#;

fn inboxes(h: &H) -> Inboxes {
    let work: Arc<dyn Inbox> = Arc::new(h.queue.clone());
    let notify: Arc<dyn Inbox> = Arc::new(
        h.backend
            .queue(QueueName::Notify, Arc::new(h.clock.clone())),
    );
    Inboxes { work, notify }
}

#[tokio::test]
async fn a_poisoned_wake_up_is_dead_lettered_listed_and_redriven_and_the_run_ends_once() {
    let slot: Arc<std::sync::Mutex<Option<Arc<FaultyStore>>>> = Arc::default();
    let keep = slot.clone();
    let h = H::with_store(move |inner| {
        let faulty = Arc::new(FaultyStore::new(inner));
        *keep.lock().unwrap() = Some(faulty.clone());
        faulty
    });
    let faulty = slot.lock().unwrap().clone().unwrap();
    let ib = inboxes(&h);

    let run = h.start(GATED, json!({"what": "v2"})).await;
    assert_eq!(h.drive(&run).await, RunStatus::Waiting);
    assert!(deadletters::list(&h.engine, &ib, None)
        .await
        .unwrap()
        .is_empty());

    // The approval's wake-up meets a run whose handling fails every time.
    faulty.poison(&run);
    h.engine
        .decide(None, &run, "review", true, Some("ok".into()))
        .await
        .unwrap();
    // Each failed handling brings it back after its visibility; past the queue's receive
    // count it is moved to the dead letters. (The gate's 1 h deadline timer is still queued
    // behind it: the loop stops before the clock gets there.)
    let mut dead = Vec::new();
    for _ in 0..2 * DEFAULT_MAX_RECEIVE_COUNT {
        dead = deadletters::list(&h.engine, &ib, None).await.unwrap();
        if !dead.is_empty() {
            break;
        }
        h.skip_to_next_wake().await;
        h.step().await;
    }
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let d = &dead[0];
    assert_eq!(d.queue, "work");
    assert_eq!(d.message, "wake-up (approval)");
    assert_eq!(d.run_id.as_deref(), Some(run.as_str()));
    assert_eq!(d.tenant.as_deref(), Some(support::TENANT));
    assert_eq!(d.workflow.as_deref(), Some("gated"));
    assert_eq!(d.run_status, Some(RunStatus::Waiting));
    assert_eq!(d.step.as_deref(), Some("review"));
    assert_eq!(d.receive_count, DEFAULT_MAX_RECEIVE_COUNT);
    assert!(d.reason.contains("without ack"), "{}", d.reason);
    assert!(d.body.is_none(), "a listing leaves bodies out");
    // Only the work queue has it.
    assert!(deadletters::list(&h.engine, &ib, Some(QueueName::Notify))
        .await
        .unwrap()
        .is_empty());
    let shown = deadletters::show(&h.engine, &ib, None, &d.id)
        .await
        .unwrap();
    assert!(shown.body.as_deref().unwrap_or("").contains(&run));
    assert!(matches!(
        deadletters::show(&h.engine, &ib, None, "no-such-id").await,
        Err(switchyard_engine::EngineError::NotFound(_))
    ));

    // The cause is fixed; the letter goes back and the run ends, once.
    faulty.cure(&run);
    let done = deadletters::redrive(
        &ib,
        Some(QueueName::Work),
        Some(std::slice::from_ref(&d.id)),
    )
    .await
    .unwrap();
    assert_eq!((done.work, done.notify), (1, 0));
    assert!(done.not_found.is_empty());
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    for step in ["prep", "ship"] {
        assert_eq!(h.started_count(&run, step).await, 1, "{step} started once");
    }
    for step in ["prep", "ship"] {
        let ok = h.step_events(&run, EventKind::StepSucceeded, step).await;
        assert_eq!(ok.len(), 1, "{step} succeeded once");
    }
    assert_eq!(
        h.output(&run, "ship").await["text"],
        json!("Shipping release: approved=True")
    );
    let ended = h.events(&run).await;
    assert_eq!(
        ended
            .iter()
            .filter(|e| e.kind == EventKind::RunSucceeded)
            .count(),
        1,
        "the run ended once"
    );
    assert!(deadletters::list(&h.engine, &ib, None)
        .await
        .unwrap()
        .is_empty());

    // Redriving it again finds nothing, and says so.
    let again = deadletters::redrive(&ib, None, Some(std::slice::from_ref(&d.id)))
        .await
        .unwrap();
    assert_eq!((again.work, again.notify), (0, 0));
    assert_eq!(again.not_found, vec![d.id.clone()]);
}
