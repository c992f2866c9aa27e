//! Faults between and after writes (docs/architecture.md, "Recovery")

use super::*;

/// The draft fails the judge once; the judge's repair resets the draft and re-asks the
/// validator in one transition (two records).
pub(crate) const JUDGED_ONCE: &str = r#"{% if feedback %}{"title": "{{ feedback[0][:13] }}"}{% else %}{"title": "The best pack"}{% endif %}"#;

/// What a clean run of [`JUDGED_ONCE`] did: starts per (step, attempt), repairs, judge calls.
pub(crate) async fn judged_once_story(
    h: &H,
    run: &str,
) -> (
    BTreeMap<(String, u32), usize>,
    u32,
    usize,
    Vec<HistoryEvent>,
) {
    let mut starts = BTreeMap::new();
    let events = h.events(run).await;
    for e in &events {
        if e.kind == EventKind::StepStarted {
            *starts
                .entry((e.step.clone().unwrap_or_default(), e.attempt.unwrap_or(0)))
                .or_insert(0) += 1;
        }
    }
    let repairs = h.rec(run, "check").await.repairs;
    let judged = h
        .step_events(run, EventKind::StepJudged, "check")
        .await
        .len();
    (starts, repairs, judged, events)
}

/// The case an operator saw: a judge's failing verdict repaired the draft, but the validator's
/// request was never stored, so its claim dangled until it expired and the judge ran again.
/// The repair is now one write of both records; a fault before it or after it (the answer
/// lost) changes nothing a user can see: the same calls, the same repair, no lost attempt.
#[tokio::test]
pub(crate) async fn a_repair_is_never_half_applied_when_its_write_fails() {
    use switchyard_contract::faults::{Fault, FaultyStore, WriteKind};
    let clean = H::new();
    let (run, status) = clean
        .run(
            &judge_wf(JUDGED_ONCE, false, NO_BEST, 2),
            json!({"topic": "t"}),
        )
        .await;
    assert_eq!(status, RunStatus::Succeeded);
    let (want_starts, want_repairs, want_judged, _) = judged_once_story(&clean, &run).await;
    assert_eq!((want_repairs, want_judged), (1, 2));

    for fault in [Fault::Before, Fault::After] {
        let faulty = Arc::new(std::sync::Mutex::new(None::<Arc<FaultyStore>>));
        let slot = faulty.clone();
        // Written at once: held until the end, the built-in repair is no write of its own
        // (`held_repairs_through_failed_writes` covers that path).
        let h = H::with_store_and_config(
            |c| c.hold_free_records = false,
            move |inner| {
                let f = Arc::new(FaultyStore::new(inner).fail(WriteKind::PutSteps, 1, fault));
                *slot.lock().unwrap() = Some(f.clone());
                f
            },
        );
        let (run, status) = h
            .run(
                &judge_wf(JUDGED_ONCE, false, NO_BEST, 2),
                json!({"topic": "t"}),
            )
            .await;
        let store = faulty.lock().unwrap().clone().unwrap();
        assert_eq!(
            store.injected(),
            [(WriteKind::PutSteps, 1, fault)],
            "the repair's write is the one that failed"
        );
        assert_eq!(status, RunStatus::Succeeded, "{fault:?}");
        let (starts, repairs, judged, events) = judged_once_story(&h, &run).await;
        assert_eq!(starts, want_starts, "{fault:?}: the same calls, each once");
        assert_eq!((repairs, judged), (want_repairs, want_judged), "{fault:?}");
        assert!(
            !events.iter().any(|e| e.kind == EventKind::StepLeaseExpired),
            "{fault:?}: no claim was left to expire"
        );
    }
}

/// Every write of a run failing once, before it lands or after (answer lost), one at a time:
/// the run still succeeds, and no step is started twice for one attempt. The built-in calls
/// are claimed here as hosted calls are (`H::with_store_claiming`), so the claims' writes
/// fail too; `built_in_calls_through_failed_writes` is the same with unclaimed calls.
#[tokio::test]
pub(crate) async fn any_one_failed_write_leaves_the_run_whole() {
    every_write_failing_once(true, true, 20).await;
}

/// Unclaimed (built-in) calls through every write failing once, each record written at once
/// (`Config::hold_free_records` off): the run still succeeds, and each step's attempts are
/// what the clean run's are (a result written with its answer lost is read back, not
/// recomputed as a second attempt).
#[tokio::test]
pub(crate) async fn built_in_calls_through_failed_writes() {
    every_write_failing_once(false, false, 12).await;
}

/// The same with the records held until the run's end (as the Lambda worker does): the
/// judge's rounds, the repair and the retried draft are one end write, and the pass takes no
/// lease before it (`held::Gate`); that write failing before or after still ends in one
/// clean run.
#[tokio::test]
pub(crate) async fn held_repairs_through_failed_writes() {
    every_write_failing_once(false, true, 2).await;
}

type Store = dyn switchyard_core::ports::StateStore;

async fn every_write_failing_once(claiming: bool, hold: bool, at_least: usize) {
    use switchyard_contract::faults::{Fault, FaultyStore, WriteKind};
    let src = judge_wf(JUDGED_ONCE, true, NO_BEST, 2);
    // How many writes of each kind a clean run makes.
    let counting = Arc::new(std::sync::Mutex::new(None::<Arc<FaultyStore>>));
    let slot = counting.clone();
    let make = |wrap: Box<dyn FnOnce(Arc<Store>) -> Arc<Store>>| {
        H::with_store_opts(claiming, |c| c.hold_free_records = hold, wrap)
    };
    let clean = make(Box::new(move |inner| {
        let f = Arc::new(FaultyStore::new(inner));
        *slot.lock().unwrap() = Some(f.clone());
        f
    }));
    let (_, status) = clean.run(&src, json!({"topic": "t"})).await;
    assert_eq!(status, RunStatus::Succeeded);
    let counts = counting.lock().unwrap().clone().unwrap();
    let kinds = [
        WriteKind::AcquireLease,
        WriteKind::PutStep,
        WriteKind::PutSteps,
        WriteKind::PutHeader,
    ];
    let mut cases = 0;
    for kind in kinds {
        for nth in 1..=counts.calls(kind) {
            for fault in [Fault::Before, Fault::After] {
                let h = make(Box::new(move |inner| {
                    Arc::new(FaultyStore::new(inner).fail(kind, nth, fault))
                }));
                let (run, status) = h.run(&src, json!({"topic": "t"})).await;
                let case = format!("{kind:?} #{nth} {fault:?}");
                assert_eq!(status, RunStatus::Succeeded, "{case}");
                let (starts, ..) = judged_once_story(&h, &run).await;
                assert!(
                    starts.values().all(|&n| n == 1),
                    "{case}: a step started twice for one attempt: {starts:?}"
                );
                cases += 1;
            }
        }
    }
    assert!(
        cases >= at_least,
        "every write of the run was tried ({cases} cases)"
    );
}

/// Drops every visible wake-up: what a lost send, a dead-lettered message or a timer that
/// never arrived leaves behind.
pub(crate) async fn lose_wake_ups(h: &H) -> usize {
    let got = h.queue.receive(100, 3_600_000).await.unwrap();
    for d in &got {
        h.queue.ack(&d.receipt).await.unwrap();
    }
    got.len()
}

/// Runs whose wake-up was lost are found by the sweep once they are due for longer than the
/// grace, and finish: a run accepted whose start never reached the queue, a run whose worker
/// died holding its lease, a run waiting on a deadline whose timer was lost. Runs not yet due,
/// and ended runs, are left alone.
#[tokio::test]
pub(crate) async fn the_sweep_wakes_runs_whose_wake_ups_were_lost() {
    use switchyard_core::recovery::STUCK_GRACE_MS;
    let h = H::new();
    let chain = h.compile(CHAIN);
    let gate = h.compile(&approval_wf("approve"));

    // 1. Accepted, start lost.
    let pending = h.start_wf(&chain, json!({"text": "a"})).await;
    assert_eq!(lose_wake_ups(&h).await, 1);
    let swept = h.engine.sweep().await.unwrap();
    assert!(
        swept.rewoken.is_empty(),
        "not due long enough yet: {swept:?}"
    );
    h.clock.advance(STUCK_GRACE_MS);
    let swept = h.engine.sweep().await.unwrap();
    assert_eq!(swept.rewoken, std::slice::from_ref(&pending));
    assert_eq!(h.drive(&pending).await, RunStatus::Succeeded);

    // 2. A worker took the lease and died; its wake-up is gone.
    let leased = h.start_wf(&chain, json!({"text": "b"})).await;
    lose_wake_ups(&h).await;
    let dead = Lease {
        owner: "worker:dead".into(),
        until: h.now() + 60_000,
    };
    h.engine
        .store
        .acquire_lease(&leased, &dead, h.now())
        .await
        .unwrap();
    h.clock.advance(60_000 + STUCK_GRACE_MS - 1);
    assert!(
        h.engine.sweep().await.unwrap().rewoken.is_empty(),
        "lease lapsed, within grace"
    );
    h.clock.advance(1);
    assert_eq!(
        h.engine.sweep().await.unwrap().rewoken,
        std::slice::from_ref(&leased)
    );
    assert_eq!(h.drive(&leased).await, RunStatus::Succeeded);

    // 3. Waiting for an approval with a deadline; the deadline's timer is lost.
    let waiting = h.start_wf(&gate, json!({"what": "w"})).await;
    assert_eq!(h.drive(&waiting).await, RunStatus::Waiting);
    lose_wake_ups(&h).await;
    h.clock.advance(3_600_000);
    assert!(
        h.engine.sweep().await.unwrap().rewoken.is_empty(),
        "deadline just passed"
    );
    h.clock.advance(STUCK_GRACE_MS);
    let swept = h.engine.sweep().await.unwrap();
    assert_eq!(swept.rewoken, std::slice::from_ref(&waiting));
    assert_eq!(
        h.drive(&waiting).await,
        RunStatus::Succeeded,
        "approved at the deadline"
    );

    // 4. Waiting for an approval; the decision is written but its wake-up is lost (the send
    //    failed, or the process died): the run is due from the decision on, not from the
    //    deadline an hour away.
    let decided = h.start_wf(&gate, json!({"what": "d"})).await;
    assert_eq!(h.drive(&decided).await, RunStatus::Waiting);
    lose_wake_ups(&h).await;
    h.clock.advance(1_000);
    h.engine
        .decide(None, &decided, "gate", true, None)
        .await
        .unwrap();
    assert_eq!(lose_wake_ups(&h).await, 1, "the decision's wake-up");
    assert!(
        h.engine.sweep().await.unwrap().rewoken.is_empty(),
        "decided just now"
    );
    h.clock.advance(STUCK_GRACE_MS);
    assert_eq!(
        h.engine.sweep().await.unwrap().rewoken,
        std::slice::from_ref(&decided)
    );
    assert_eq!(h.drive(&decided).await, RunStatus::Succeeded);
    assert_eq!(h.output(&decided, "gate").await["approved"], true);

    // Nothing is left to wake: every run ended.
    h.clock.advance(10 * STUCK_GRACE_MS);
    let swept = h.engine.sweep().await.unwrap();
    assert_eq!((swept.checked, swept.rewoken.len()), (0, 0));
}

/// A run of [`CHAIN`] on a [`FaultyStore`] made by `make` (kept in the returned slot), with
/// `Config::hold_free_records` as given; driven until it ends.
async fn chain_on(
    hold: bool,
    make: impl FnOnce(
            Arc<dyn switchyard_core::ports::StateStore>,
        ) -> switchyard_contract::faults::FaultyStore
        + 'static,
) -> (
    H,
    Arc<switchyard_contract::faults::FaultyStore>,
    String,
    RunStatus,
) {
    let faulty = Arc::new(std::sync::Mutex::new(None));
    let slot = faulty.clone();
    let h = H::with_store_and_config(
        |c| c.hold_free_records = hold,
        move |inner| {
            let f = Arc::new(make(inner));
            *slot.lock().unwrap() = Some(f.clone());
            f
        },
    );
    let (run, status) = h
        .run(CHAIN, json!({"text": "Please refund my invoice"}))
        .await;
    let f = faulty.lock().unwrap().clone().unwrap();
    (h, f, run, status)
}

/// The records of steps free to repeat ride on the write that ends the run: the chain's
/// three steps (two built-in models and a transform) write no record of their own, the run's
/// lease is never taken, and what is stored — records, history, output — is what writing
/// each at once stores.
#[tokio::test]
pub(crate) async fn free_steps_are_stored_by_the_end_write() {
    use switchyard_contract::faults::{FaultyStore, WriteKind};
    let mut seen = Vec::new();
    for hold in [true, false] {
        let (h, f, run, status) = chain_on(hold, FaultyStore::new).await;
        assert_eq!(status, RunStatus::Succeeded);
        let step_writes = f.calls(WriteKind::PutStep) + f.calls(WriteKind::PutSteps);
        assert_eq!(step_writes, if hold { 0 } else { 3 }, "hold {hold}");
        // Held, the pass writes the header once: its end (fenced by the version it read),
        // with no lease taken before it.
        let header_writes = f.calls(WriteKind::AcquireLease) + f.calls(WriteKind::PutHeader);
        assert_eq!(header_writes, if hold { 1 } else { 2 }, "hold {hold}");
        let snap = h.snap(&run).await;
        let records: Vec<(String, StepStatus, u64, u32)> = snap
            .steps
            .iter()
            .map(|r| (r.step.clone(), r.status, r.version, r.attempt))
            .collect();
        let kinds = history(&h, &run).await;
        seen.push((records, kinds, h.run_output(&run).await));
    }
    assert_eq!(seen[0], seen[1], "held and written at once store the same");
    let steps: Vec<&str> = seen[0].0.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        steps,
        ["classify", "draft", "shape"],
        "in the order they ran"
    );
}

/// The end write that carries the held records fails before it is made (nothing stored) or
/// after (stored, the answer lost): the run still ends once, each step's record is stored
/// once at its first version, and the history holds each step's start once — a pass whose
/// end was not stored stored nothing of its free steps, and the next one made them again.
#[tokio::test]
pub(crate) async fn held_records_are_stored_once_when_the_end_write_fails() {
    use switchyard_contract::faults::{Fault, FaultyStore, WriteKind};
    let (clean, f, run, _) = chain_on(true, FaultyStore::new).await;
    let end = f.calls(WriteKind::PutHeader);
    let want = clean.run_output(&run).await;
    for fault in [Fault::Before, Fault::After] {
        let (h, f, run, status) = chain_on(true, move |inner| {
            FaultyStore::new(inner).fail(WriteKind::PutHeader, end, fault)
        })
        .await;
        assert_eq!(status, RunStatus::Succeeded, "{fault:?}");
        assert_eq!(f.injected().len(), 1, "{fault:?}: the end write failed");
        for step in ["classify", "draft", "shape"] {
            let r = h.rec(&run, step).await;
            assert_eq!(
                (r.status, r.version, r.attempt),
                (StepStatus::Succeeded, 1, 1),
                "{fault:?} {step}"
            );
        }
        for step in ["classify", "draft"] {
            assert_eq!(h.started_count(&run, step).await, 1, "{fault:?} {step}");
        }
        assert_eq!(h.run_output(&run).await, want, "{fault:?}");
        let ends = h
            .events(&run)
            .await
            .iter()
            .filter(|e| e.kind == EventKind::RunSucceeded)
            .count();
        assert_eq!(ends, 1, "{fault:?}");
    }
}

/// A model free to repeat (as a built-in one is) whose every call takes 10 s of the test's
/// clock: what a slow local step looks like to the worker.
struct SlowFree {
    clock: switchyard_local::ManualClock,
}

#[async_trait]
impl Provider for SlowFree {
    fn name(&self) -> &str {
        "slowfree"
    }

    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: "slowfree/echo".into(),
            roles: vec![Role::Generation],
            asynchronous: false,
            description: "answers after 10 s of the test clock".into(),
        }]
    }

    fn estimate_cost_usd(&self, _request: &ModelRequest) -> f64 {
        0.0
    }

    fn repeat_is_free(&self, _model: &str) -> bool {
        true
    }

    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, StepError> {
        self.clock.advance(10_000);
        Ok(answer(request, 0.0))
    }
}

/// A pass of free steps that runs long takes the run's lease once it has run 15 s without
/// one (so the stuck-run sweep never takes it for a lost wake-up), and only once; a short one
/// never takes it.
#[tokio::test]
pub(crate) async fn a_long_pass_of_free_steps_takes_the_lease_once() {
    use switchyard_contract::faults::{FaultyStore, WriteKind};
    let slow = "
name: slow
version: \"1\"
steps:
  - {id: a, model: slowfree/echo, input: x}
  - {id: b, model: slowfree/echo, input: x}
  - {id: c, model: slowfree/echo, input: x}
";
    // (steps run, lease takes)
    for (steps, takes) in [(1, 0), (3, 1)] {
        let clock = switchyard_local::ManualClock::new(support::T0);
        let slot = Arc::new(std::sync::Mutex::new(None::<Arc<FaultyStore>>));
        let keep = slot.clone();
        let src: String = slow.lines().take(4 + steps).collect::<Vec<_>>().join("\n");
        let h = H::build_with_clock(
            clock.clone(),
            vec![Arc::new(SlowFree {
                clock: clock.clone(),
            })],
            move |inner| {
                let f = Arc::new(FaultyStore::new(inner));
                *keep.lock().unwrap() = Some(f.clone());
                f
            },
        );
        let (run, status) = h.run(&src, json!({})).await;
        assert_eq!(status, RunStatus::Succeeded, "{steps} steps");
        let f = slot.lock().unwrap().clone().unwrap();
        assert_eq!(f.calls(WriteKind::AcquireLease), takes, "{steps} steps");
        let snap = h.snap(&run).await;
        assert_eq!(snap.steps.len(), steps);
        assert!(snap.header.lease.is_none(), "the end gives the lease back");
    }
}

/// A held repair (the judge's rounds, the validator and its reset target, the draft again)
/// followed by an approval gate: the gate's opening writes what was held first — in one
/// write, since the history interleaves the two steps — then the gate. What is stored,
/// history order included, is what writing each record at once stores; and every write of
/// the held run failing once, before it lands or after, still ends in one clean run.
#[tokio::test]
pub(crate) async fn held_records_written_before_a_gate_keep_their_order() {
    use switchyard_contract::faults::{Fault, FaultyStore, WriteKind};
    let src = format!(
        "{}\n          - {{id: review, kind: approval, needs: [publish], deadline: 1h, message: ok?}}\n",
        judge_wf(JUDGED_ONCE, true, NO_BEST, 2).trim_end()
    );
    let story = |h: H, run: String| async move {
        assert_eq!(h.drive(&run).await, RunStatus::Waiting);
        // A decision whose write failed is sent again, as a client retries one.
        let decided = h
            .engine
            .decide(None, &run, "review", true, Some("ok".into()))
            .await;
        if decided.is_err() {
            h.engine
                .decide(None, &run, "review", true, Some("ok".into()))
                .await
                .unwrap();
        }
        assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
        let kinds = history(&h, &run).await;
        let records: Vec<(String, StepStatus, u32, u32)> = h
            .snap(&run)
            .await
            .steps
            .iter()
            .map(|r| (r.step.clone(), r.status, r.attempt, r.repairs))
            .collect();
        (kinds, records)
    };
    // Written at once, then held: the same records and history, in the same order.
    let mut clean = Vec::new();
    let mut writes = Vec::new();
    for hold in [false, true] {
        let slot = Arc::new(std::sync::Mutex::new(None::<Arc<FaultyStore>>));
        let keep = slot.clone();
        let h = H::with_store_and_config(
            |c| c.hold_free_records = hold,
            move |inner| {
                let f = Arc::new(FaultyStore::new(inner));
                *keep.lock().unwrap() = Some(f.clone());
                f
            },
        );
        let run = h.start(&src, json!({"topic": "t"})).await;
        clean.push(story(h, run).await);
        let f = slot.lock().unwrap().clone().unwrap();
        if hold {
            assert_eq!(
                f.calls(WriteKind::PutSteps),
                1,
                "the held repair, in one write"
            );
            writes = [
                WriteKind::AcquireLease,
                WriteKind::PutStep,
                WriteKind::PutSteps,
                WriteKind::PutHeader,
            ]
            .map(|k| (k, f.calls(k)))
            .to_vec();
        }
    }
    assert_eq!(
        clean[0], clean[1],
        "held, then written before the gate: as written at once"
    );
    // Every write of the held run failing once.
    for (kind, n) in writes {
        for nth in 1..=n {
            for fault in [Fault::Before, Fault::After] {
                let h = H::with_store(move |inner| {
                    Arc::new(FaultyStore::new(inner).fail(kind, nth, fault))
                });
                let run = h.start(&src, json!({"topic": "t"})).await;
                let (kinds, records) = story(h, run).await;
                let case = format!("{kind:?} #{nth} {fault:?}");
                assert_eq!(records, clean[1].1, "{case}");
                let starts = |k: &[(EventKind, Option<String>)]| {
                    k.iter()
                        .filter(|(e, _)| *e == EventKind::StepStarted)
                        .count()
                };
                assert_eq!(
                    starts(&kinds),
                    starts(&clean[1].0),
                    "{case}: no start twice"
                );
            }
        }
    }
}

/// A run's history as (kind, step), in order.
async fn history(h: &H, run: &str) -> Vec<(EventKind, Option<String>)> {
    h.events(run)
        .await
        .into_iter()
        .map(|e| (e.kind, e.step))
        .collect()
}
