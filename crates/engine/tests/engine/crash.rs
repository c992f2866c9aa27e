//! 13. Crash recovery

use super::*;

pub(crate) const CRASH: &str = r#"
    name: crash
    version: "1"
    defaults:
      retry: {max_attempts: 3, initial_backoff: 100ms, jitter: false}
    steps:
      - id: a
        model: local/keyword-classifier
        input: "${input.text}"
        params: {labels: {billing: [refund]}}
      - id: b
        model: local/template-generator
        input: {label: "${steps.a.output.label}"}
        timeout: 10s
        params: {template: "label={{ input.label }}"}
      - {id: c, kind: transform, value: "${steps.b.output.text}"}
"#;

pub(crate) const DEAD: &str = "local:999999:dead";

/// A worker took the Start wake-up, ran `a`, claimed `b` (state before side effects) and died
/// before checkpointing it, holding the run's lease until `run_lease_until`.
pub(crate) async fn crash_after_claiming_b(
    h: &H,
    step_lease_ms: u64,
    run_lease_until: u64,
) -> (String, StepRecord) {
    let run = h.start(CRASH, json!({"text": "refund"})).await;
    let dead = h.other_worker(DEAD);
    let snap = h.snap(&run).await;
    let wf = dead.definition(&snap.header.workflow.hash).await.unwrap();
    let lease = Lease {
        owner: DEAD.into(),
        until: run_lease_until,
    };
    h.engine
        .store
        .acquire_lease(&run, &lease, h.now())
        .await
        .unwrap();
    // `a` ran to its checkpoint: the classifier's answer for "refund" is `billing`.
    let a_step = wf.step("a").unwrap();
    let claimed_a = settle::claim(a_step, &StepRecord::pending("a"), DEAD, h.now(), 15_000);
    let meta = settle::AttemptMeta {
        model: Some("local/keyword-classifier".into()),
        ..Default::default()
    };
    let output = ValueRef::Inline {
        value: json!({"label": "billing", "confidence": 1.0}),
    };
    let (mut a, done) = settle::succeed(&claimed_a, output, meta, h.now());
    let started_a = HistoryEvent::step(h.now(), EventKind::StepStarted, "a", 1, json!({}));
    let events = [started_a, done];
    a.version = h.engine.store.put_step(&run, &a, &events).await.unwrap();
    let claimed = settle::claim(
        wf.step("b").unwrap(),
        &StepRecord::pending("b"),
        DEAD,
        h.now(),
        step_lease_ms,
    );
    let started = HistoryEvent::step(
        h.now(),
        EventKind::StepStarted,
        "b",
        1,
        json!({"model": "local/template-generator"}),
    );
    h.engine
        .store
        .put_step(&run, &claimed, &[started])
        .await
        .unwrap();
    (run, a)
}

#[tokio::test]
pub(crate) async fn a_lost_attempt_is_retried_after_its_lease_expires() {
    let h = H::new();
    let (run, a) = crash_after_claiming_b(&h, 15_000, T0 + 5_000).await;
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);

    // The dead worker's run lease made the first wake-up busy until it lapsed.
    let handled = h.handled(&run);
    assert_eq!(handled[0].2, Handled::Busy);
    assert!(
        handled.iter().any(|(t, _, _)| *t == T0 + 5_100),
        "{handled:?}"
    );
    // The claim lapsed at 15 s: the attempt counts as lost (timeout), a new one runs.
    let expired = h.step_events(&run, EventKind::StepLeaseExpired, "b").await;
    assert_eq!(expired.len(), 1);
    assert_eq!((expired[0].at, expired[0].attempt), (T0 + 15_000, Some(1)));
    let retried = h
        .step_events(&run, EventKind::StepRetryScheduled, "b")
        .await;
    assert_eq!(retried[0].detail["class"], "timeout");
    assert_eq!(start_times(&h, &run, "b").await, [T0, T0 + 15_100]);
    let b = h.rec(&run, "b").await;
    assert_eq!(
        (b.status, b.attempt, b.lease_owner.clone()),
        (StepStatus::Succeeded, 2, None)
    );
    assert_eq!(h.output(&run, "c").await, "label=billing");
    // The step that had succeeded before the crash was not started again.
    assert_eq!(h.started_count(&run, "a").await, 1);
    assert_eq!(h.rec(&run, "a").await, a);
}

#[tokio::test]
pub(crate) async fn take_over_ends_a_dead_workers_leases_at_once() {
    let h = H::new();
    let (run, a) = crash_after_claiming_b(&h, 600_000, T0 + 600_000).await;
    h.engine.take_over(&run, DEAD).await.unwrap();
    let snap = h.snap(&run).await;
    assert_eq!(snap.header.lease, None);
    assert_eq!(snap.step("b").unwrap().lease_until, Some(T0));
    assert_eq!(
        h.events(&run).await.last().map(|e| e.kind),
        Some(EventKind::LeaseTakenOver)
    );

    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    assert!(h.handled(&run).iter().all(|(_, _, r)| *r != Handled::Busy));
    // Only the 100 ms backoff passed, not the ten-minute leases.
    assert_eq!(h.now(), T0 + 100);
    assert_eq!(start_times(&h, &run, "b").await, [T0, T0 + 100]);
    assert_eq!(h.rec(&run, "b").await.attempt, 2);
    assert_eq!(h.started_count(&run, "a").await, 1);
    assert_eq!(h.rec(&run, "a").await, a);
}

/// A model whose call returns only once the test opens the gate: a worker is then provably
/// inside a call, holding the run's lease, when another one arrives — whatever the machine's
/// load (a sleep of some milliseconds only makes that likely).
pub(crate) struct Gate {
    pub(crate) entered: tokio::sync::Notify,
    pub(crate) open: tokio::sync::Semaphore,
}

impl Gate {
    pub(crate) fn closed() -> Gate {
        Gate {
            entered: tokio::sync::Notify::new(),
            open: tokio::sync::Semaphore::new(0),
        }
    }
}

#[async_trait]
impl Provider for Gate {
    fn name(&self) -> &str {
        "gate"
    }

    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: "gate/hold".into(),
            roles: vec![Role::Generation],
            asynchronous: false,
            description: "answers once the test opens the gate".into(),
        }]
    }

    fn estimate_cost_usd(&self, _request: &ModelRequest) -> f64 {
        0.0
    }

    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, StepError> {
        self.entered.notify_one();
        let _open = self.open.acquire().await;
        Ok(ModelResponse::Completed(
            switchyard_core::model::ModelOutput {
                output: json!({"text": "done"}),
                usage: None,
                cost_usd: 0.0,
                model: request.model.clone(),
                provider_request_id: None,
                sources: Vec::new(),
            },
        ))
    }
}

/// An engine with the gated model, a run of one gated call, and its start wake-up, for tests
/// of two workers meeting on one run.
pub(crate) async fn start_one_held_step() -> (H, Arc<Gate>, String, WakeUp) {
    let gate = Arc::new(Gate::closed());
    let h = H::build(|_| {}, vec![gate.clone()]);
    let yaml = r#"
        name: two
        version: "1"
        steps:
          - id: slow
            model: gate/hold
            input: "x"
    "#;
    let run = h.start(yaml, json!({})).await;
    let wake = WakeUp {
        run_id: run.clone(),
        reason: WakeReason::Start,
        due_at: None,
    };
    (h, gate, run, wake)
}

/// `handle` of `wake` on `engine`, in a task of its own, and once it is inside the gated call
/// (so it holds the run's lease).
pub(crate) async fn inside_the_call(
    engine: &switchyard_engine::Engine,
    gate: &Gate,
    wake: &WakeUp,
) -> tokio::task::JoinHandle<Result<Handled, EngineError>> {
    let (engine, wake) = (engine.clone(), wake.clone());
    let task = tokio::spawn(async move { engine.handle(&wake, None).await });
    gate.entered.notified().await;
    task
}

#[tokio::test]
pub(crate) async fn a_second_worker_finds_the_run_busy_and_comes_back_later() {
    // The first worker is inside the model call when the second arrives.
    let (h, gate, run, wake) = start_one_held_step().await;
    let first = inside_the_call(&h.engine, &gate, &wake).await;
    let other = h.other_worker("worker-2");
    assert_eq!(other.handle(&wake, None).await.unwrap(), Handled::Busy);
    gate.open.add_permits(1);
    assert_eq!(
        first.await.unwrap().unwrap(),
        Handled::Ended(RunStatus::Succeeded)
    );
    assert_eq!(h.started_count(&run, "slow").await, 1);
    // The busy worker sent a wake-up for after the lease; it finds the run ended.
    h.queue.receive(16, 60_000).await.unwrap(); // the original Start, handled above
    let later = h.drain().await;
    assert!(
        later
            .iter()
            .all(|r| *r == Handled::AlreadyEnded(RunStatus::Succeeded)),
        "{later:?}"
    );
}
