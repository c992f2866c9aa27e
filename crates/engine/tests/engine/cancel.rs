//! 14. Cancellation

use super::*;

#[tokio::test]
pub(crate) async fn cancel_a_waiting_run_then_cancelling_again_conflicts() {
    let h = H::new();
    let (run, status) = h.run(&approval_wf("reject"), json!({"what": "x"})).await;
    assert_eq!(status, RunStatus::Waiting);
    assert_eq!(
        h.engine.cancel(Some("acme"), &run).await.unwrap(),
        RunStatus::Waiting
    );
    assert!(h.snap(&run).await.header.cancel_requested);
    assert_eq!(h.drive(&run).await, RunStatus::Cancelled);
    let snap = h.snap(&run).await;
    assert_eq!(run_class(&snap), Some(ErrorClass::Cancelled));
    assert!(
        snap.step("ship").is_none(),
        "nothing started after the cancel"
    );
    let kinds: Vec<EventKind> = h.events(&run).await.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&EventKind::RunCancelRequested));
    assert_eq!(kinds.last(), Some(&EventKind::RunCancelled));

    let again = h.engine.cancel(None, &run).await;
    assert!(matches!(&again, Err(EngineError::Conflict(_))), "{again:?}");
    assert_eq!(again.unwrap_err().status(), 409);
    let decide = h.engine.decide(None, &run, "gate", true, None).await;
    assert!(
        matches!(decide, Err(EngineError::Conflict(_))),
        "{decide:?}"
    );

    // A succeeded run cannot be cancelled either; another tenant does not see the run.
    let (done, _) = h.run(FLAKY, json!({"text": "refund"})).await;
    assert!(matches!(
        h.engine.cancel(None, &done).await,
        Err(EngineError::Conflict(_))
    ));
    assert!(matches!(
        h.engine.cancel(Some("globex"), &run).await,
        Err(EngineError::NotFound(_))
    ));
}

#[tokio::test]
pub(crate) async fn cancel_during_a_retry_wait_starts_no_further_attempt() {
    let h = H::new();
    let run = h.start(FLAKY, json!({"text": "refund"})).await;
    h.step().await; // first attempt fails, retry due in 2 s
    h.engine.cancel(None, &run).await.unwrap();
    assert_eq!(h.drive(&run).await, RunStatus::Cancelled);
    assert_eq!(h.started_count(&run, "classify").await, 1);
    // The retry timer still fires later, and finds the run ended.
    for r in h.drain().await {
        assert_eq!(r, Handled::AlreadyEnded(RunStatus::Cancelled));
    }
    assert_eq!(h.started_count(&run, "classify").await, 1);
}
