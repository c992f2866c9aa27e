//! 2-3. Duplicated, early and late wake-ups

use super::*;

/// A chain whose first step fails once, so the run waits between wake-ups.
pub(crate) const FLAKY: &str = r#"
    name: flaky
    version: "1"
    defaults:
      retry: {max_attempts: 3, initial_backoff: 2s, jitter: false}
    steps:
      - id: classify
        model: local/keyword-classifier
        input: "${input.text}"
        params:
          labels: {billing: [refund], tech: [crash]}
          fault: {kind: transient, times: 1}
      - id: draft
        model: local/template-generator
        input: {label: "${steps.classify.output.label}"}
        params: {template: "label={{ input.label }}"}
      - {id: done, kind: transform, value: "${steps.draft.output.text}"}
"#;

#[tokio::test]
pub(crate) async fn duplicated_start_wake_ups_change_nothing() {
    let input = json!({"text": "refund please"});
    let clean = H::new();
    let (clean_run, clean_status) = clean.run(FLAKY, input.clone()).await;
    assert_eq!(clean_status, RunStatus::Succeeded);

    let dup = H::new();
    let run = dup.start(FLAKY, input).await;
    for _ in 0..3 {
        dup.wake(&run, WakeReason::Start, 0).await;
    }
    assert_eq!(dup.drive(&run).await, RunStatus::Succeeded);
    assert_eq!(dup.summary(&run).await, clean.summary(&clean_run).await);
    let starts = dup
        .handled(&run)
        .iter()
        .filter(|(_, w, _)| w.reason == WakeReason::Start)
        .count();
    assert_eq!(starts, 4);
    // Every attempt was started once: 2 for the flaky step, 1 for the other.
    assert_eq!(dup.started_count(&run, "classify").await, 2);
    assert_eq!(dup.started_count(&run, "draft").await, 1);
    for step in ["classify", "draft", "done"] {
        let ok = dup.step_events(&run, EventKind::StepSucceeded, step).await;
        assert_eq!(ok.len(), 1, "{step}");
    }
    // Same timing as the clean run: the duplicates moved nothing forward or back.
    assert_eq!(
        start_times(&dup, &run, "classify").await,
        vec![T0, T0 + 2000]
    );

    // A late duplicate after the end: nothing changes.
    let (snap, events) = (dup.snap(&run).await, dup.events(&run).await);
    for reason in [WakeReason::Start, WakeReason::Timer, WakeReason::Webhook] {
        let late = WakeUp {
            run_id: run.clone(),
            reason,
            due_at: None,
        };
        let handled = dup.engine.handle(&late, None).await.unwrap();
        assert_eq!(handled, Handled::AlreadyEnded(RunStatus::Succeeded));
    }
    assert_eq!(dup.snap(&run).await, snap);
    assert_eq!(dup.events(&run).await, events);
    // And whatever was still queued (the last timer) is a late duplicate too.
    for handled in dup.drain().await {
        assert_eq!(handled, Handled::AlreadyEnded(RunStatus::Succeeded));
    }
    assert_eq!(dup.snap(&run).await, snap);
}

#[tokio::test]
pub(crate) async fn early_timer_changes_nothing_and_reschedules_then_a_late_one_proceeds() {
    let h = H::new();
    let run = h.start(FLAKY, json!({"text": "refund"})).await;
    // The first attempt fails; the retry is due 2 s later.
    assert_eq!(
        h.step().await,
        [Handled::Waiting {
            reason: WaitReason::Timer,
            until: Some(T0 + 2000)
        }]
    );
    assert_eq!(h.queue.len().await.unwrap(), 1);
    assert_eq!(h.queue.next_visible_at().await.unwrap(), Some(T0 + 2000));
    let before = h.snap(&run).await;
    let events_before = h.events(&run).await;

    // An early timer, 1.5 s in.
    h.clock.set(T0 + 1500);
    h.wake(&run, WakeReason::Timer, 0).await;
    assert_eq!(
        h.step().await,
        [Handled::Waiting {
            reason: WaitReason::Timer,
            until: Some(T0 + 2000)
        }]
    );
    let after = h.snap(&run).await;
    assert_eq!(after.steps, before.steps, "no step record changed");
    assert_eq!(after.header.status, RunStatus::Waiting);
    assert_eq!(after.header.wait, before.header.wait);
    assert_eq!(h.events(&run).await, events_before, "no event was written");
    // ... and a timer wake-up was (re)scheduled for when the retry is due.
    assert_eq!(h.queue.len().await.unwrap(), 2);
    assert_eq!(h.queue.next_visible_at().await.unwrap(), Some(T0 + 2000));

    // A late wake-up (the original timer, 0.5 s after it was due) proceeds. The two timers
    // of the run arrive in one receive: the host loop handles the run once for both, and
    // each reports that handling (as the worker function does with an SQS batch).
    h.clock.set(T0 + 2500);
    let handled = h.step().await;
    assert_eq!(
        handled,
        [
            Handled::Ended(RunStatus::Succeeded),
            Handled::Ended(RunStatus::Succeeded)
        ]
    );
    assert_eq!(start_times(&h, &run, "classify").await, vec![T0, T0 + 2500]);
    assert_eq!(h.rec(&run, "classify").await.attempt, 2);
}

#[tokio::test]
pub(crate) async fn wake_ups_for_unknown_runs_and_near_the_deadline() {
    let h = H::new();
    let ghost = WakeUp {
        run_id: "run_nope".into(),
        reason: WakeReason::Start,
        due_at: None,
    };
    assert_eq!(h.engine.handle(&ghost, None).await.unwrap(), Handled::Gone);

    // An invocation that is already at its deadline starts nothing and hands over.
    let run = h.start(FLAKY, json!({"text": "refund"})).await;
    h.queue.receive(16, 60_000).await.unwrap(); // the Start wake-up, taken by this "invocation"
    let wake = WakeUp {
        run_id: run.clone(),
        reason: WakeReason::Start,
        due_at: None,
    };
    let handled = h.engine.handle(&wake, Some(h.now() + 1)).await.unwrap();
    assert_eq!(handled, Handled::Yielded);
    assert!(h.snap(&run).await.steps.is_empty(), "nothing was started");
    h.clock.advance(60_000); // let the taken message's visibility lapse, as SQS would
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    let resumes = h
        .handled(&run)
        .iter()
        .filter(|(_, w, _)| w.reason == WakeReason::Resume)
        .count();
    assert_eq!(resumes, 1);
    assert_eq!(h.started_count(&run, "classify").await, 2);
}
