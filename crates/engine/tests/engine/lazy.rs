//! A worker that holds its free steps' records takes the run's lease only with its first
//! write other than the end (`held::Gate`): what it must never do without it.

use super::*;
use tokio::sync::Semaphore;

/// A model free to repeat whose step `a` waits until the test lets it go.
struct Blocking {
    entered: Arc<Semaphore>,
    release: Arc<Semaphore>,
}

#[async_trait]
impl Provider for Blocking {
    fn name(&self) -> &str {
        "blk"
    }
    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: "blk/echo".into(),
            roles: vec![Role::Generation],
            asynchronous: false,
            description: "step a waits for the test".into(),
        }]
    }
    fn estimate_cost_usd(&self, _r: &ModelRequest) -> f64 {
        0.0
    }
    fn repeat_is_free(&self, _m: &str) -> bool {
        true
    }
    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, StepError> {
        if request.step == "a" || request.step == "f" {
            self.entered.add_permits(1);
            self.release.acquire().await.unwrap().forget();
        }
        Ok(answer(request, 0.0))
    }
}

/// A paid model that records who called it.
struct Paid {
    calls: Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait]
impl Provider for Paid {
    fn name(&self) -> &str {
        "paid"
    }
    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: "paid/echo".into(),
            roles: vec![Role::Generation],
            asynchronous: false,
            description: "a hosted model's stand-in".into(),
        }]
    }
    fn estimate_cost_usd(&self, _r: &ModelRequest) -> f64 {
        0.01
    }
    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, StepError> {
        self.calls.lock().unwrap().push(request.step.clone());
        Ok(answer(request, 0.01))
    }
}

/// A completed answer of a test model: `{"text": <the step>}` at `cost_usd`.
pub(crate) fn answer(request: &ModelRequest, cost_usd: f64) -> ModelResponse {
    ModelResponse::Completed(switchyard_core::model::ModelOutput {
        output: json!({"text": request.step}),
        usage: None,
        cost_usd,
        model: request.model.clone(),
        provider_request_id: None,
        sources: Vec::new(),
    })
}

fn wake(run: &str, reason: WakeReason) -> WakeUp {
    WakeUp {
        run_id: run.to_string(),
        reason,
        due_at: None,
    }
}

struct Blocked {
    h: H,
    entered: Arc<Semaphore>,
    release: Arc<Semaphore>,
    calls: Arc<std::sync::Mutex<Vec<String>>>,
}

fn blocked(hold: bool) -> Blocked {
    let entered = Arc::new(Semaphore::new(0));
    let release = Arc::new(Semaphore::new(0));
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = H::build(
        move |c| c.hold_free_records = hold,
        vec![
            Arc::new(Blocking {
                entered: entered.clone(),
                release: release.clone(),
            }),
            Arc::new(Paid {
                calls: calls.clone(),
            }),
        ],
    );
    Blocked {
        h,
        entered,
        release,
        calls,
    }
}

const FREE3: &str = "
name: p
version: \"1\"
steps:
  - {id: a, model: blk/echo, input: x}
  - {id: b, model: blk/echo, input: x, needs: [a]}
  - {id: c, model: blk/echo, input: x, needs: [b]}
";

/// A run is cancelled and another worker ends it while a pass (with or without the lease)
/// is mid-step: the run stays cancelled, ended once, with no lease left on it.
#[tokio::test]
pub(crate) async fn a_run_another_worker_cancelled_stays_ended_once() {
    for hold in [true, false] {
        let b = blocked(hold);
        let h = &b.h;
        let run = h.start(FREE3, json!({})).await;
        let w2 = h.engine.clone();
        let start = wake(&run, WakeReason::Start);
        let pass = tokio::spawn(async move { w2.handle(&start, None).await });
        b.entered.acquire().await.unwrap().forget();
        h.clock.advance(1_000);
        h.engine.cancel(None, &run).await.unwrap();
        let w3 = h.other_worker("w3");
        let _ = w3.handle(&wake(&run, WakeReason::Cancel), None).await;
        b.release.add_permits(10);
        let _ = pass.await.unwrap();
        h.clock
            .advance(switchyard_core::recovery::STUCK_GRACE_MS + 1);
        for r in h.engine.sweep().await.unwrap().rewoken {
            let _ = h.engine.handle(&wake(&r, WakeReason::Recover), None).await;
        }
        let snap = h.snap(&run).await;
        let case = format!("hold {hold}");
        assert_eq!(snap.header.status, RunStatus::Cancelled, "{case}");
        assert!(
            snap.header.lease.is_none(),
            "{case}: {:?}",
            snap.header.lease
        );
        let ends = h
            .events(&run)
            .await
            .iter()
            .filter(|e| e.kind == EventKind::RunCancelled)
            .count();
        assert_eq!(ends, 1, "{case}: ended once");
    }
}

/// A pass without the lease that meets another worker's live lease (that worker may be
/// mid-call) never ends or parks the run under it.
#[tokio::test]
pub(crate) async fn a_pass_without_the_lease_never_ends_a_run_under_another_lease() {
    let b = blocked(true);
    let h = &b.h;
    let run = h.start(FREE3, json!({})).await;
    let w2 = h.engine.clone();
    let start = wake(&run, WakeReason::Start);
    let pass = tokio::spawn(async move { w2.handle(&start, None).await });
    b.entered.acquire().await.unwrap().forget();
    let lease = Lease {
        owner: "w1:mid-call".into(),
        until: h.now() + 60_000,
    };
    h.engine
        .store
        .acquire_lease(&run, &lease, h.now())
        .await
        .unwrap();
    h.clock.advance(1_000);
    h.engine.cancel(None, &run).await.unwrap();
    b.release.add_permits(10);
    let _ = pass.await.unwrap();
    let snap = h.snap(&run).await;
    assert!(
        !snap.header.status.is_terminal(),
        "{:?}",
        snap.header.status
    );
    assert_eq!(
        snap.header.lease.as_ref().map(|l| l.owner.as_str()),
        Some("w1:mid-call"),
        "the other worker's lease stands"
    );
}

/// A pass whose lease take finds the run ended meanwhile calls no paid model, writes no
/// record after the end, and leaves no lease on the ended run.
#[tokio::test]
pub(crate) async fn no_paid_call_on_a_run_that_ended_meanwhile() {
    let b = blocked(true);
    let h = &b.h;
    let src = "
name: p
version: \"1\"
steps:
  - {id: a, model: blk/echo, input: x}
  - {id: p, model: paid/echo, input: x, needs: [a]}
  - {id: q, model: paid/echo, input: x, needs: [a]}
";
    let run = h.start(src, json!({})).await;
    let w2 = h.engine.clone();
    let start = wake(&run, WakeReason::Start);
    let pass = tokio::spawn(async move { w2.handle(&start, None).await });
    b.entered.acquire().await.unwrap().forget();
    h.engine.cancel(None, &run).await.unwrap();
    let w3 = h.other_worker("w3");
    let _ = w3.handle(&wake(&run, WakeReason::Cancel), None).await;
    b.release.add_permits(10);
    let _ = pass.await.unwrap();
    assert!(
        b.calls.lock().unwrap().is_empty(),
        "{:?}",
        b.calls.lock().unwrap()
    );
    let snap = h.snap(&run).await;
    assert_eq!(snap.header.status, RunStatus::Cancelled);
    assert!(snap.header.lease.is_none(), "{:?}", snap.header.lease);
    let events = h.events(&run).await;
    let end = events
        .iter()
        .position(|e| e.kind == EventKind::RunCancelled)
        .unwrap();
    assert_eq!(
        end,
        events.len() - 1,
        "nothing written after the end: {events:#?}"
    );
}

/// A write of held records that fails (every try) stops the pass: no later write of it —
/// here the claims of the paid steps that need the held one — goes out.
#[tokio::test]
pub(crate) async fn a_failed_write_of_held_records_stops_the_pass() {
    use switchyard_contract::faults::{Fault, FaultyStore, WriteKind};
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = H::build_with_clock(
        switchyard_local::ManualClock::new(support::T0),
        vec![
            Arc::new(Blocking {
                entered: Arc::new(Semaphore::new(0)),
                release: Arc::new(Semaphore::new(100)),
            }),
            Arc::new(Paid {
                calls: calls.clone(),
            }),
        ],
        |inner| {
            Arc::new(
                FaultyStore::new(inner)
                    .fail(WriteKind::PutStep, 1, Fault::Before)
                    .fail(WriteKind::PutStep, 2, Fault::Before)
                    .fail(WriteKind::PutStep, 3, Fault::Before),
            )
        },
    );
    let src = "
name: p
version: \"1\"
steps:
  - {id: f, model: blk/echo, input: x}
  - {id: p, model: paid/echo, input: x, needs: [f]}
  - {id: q, model: paid/echo, input: x, needs: [f]}
";
    let run = h.start(src, json!({})).await;
    let handled = h.engine.handle(&wake(&run, WakeReason::Start), None).await;
    let events = h.events(&run).await;
    let first_start = events
        .iter()
        .find(|e| e.kind == EventKind::StepStarted)
        .and_then(|e| e.step.clone());
    // Either the pass gave up, or it planned again from the store (f first): never a
    // paid step started before the step it needs is stored.
    if let Some(step) = first_start {
        assert_eq!(step, "f", "{handled:?}: {events:#?}");
    }
    let called = calls.lock().unwrap().clone();
    if !called.is_empty() {
        assert!(
            h.rec(&run, "f").await.status == StepStatus::Succeeded,
            "{called:?}"
        );
    }
}

/// Two validators that repair the same built-in draft at once: the second's repair, made
/// from the draft before the first's, is refused — and the run still ends as it does with
/// each record written at once, instead of meeting the same refusal on every pass.
#[tokio::test]
pub(crate) async fn two_repairs_of_one_draft_end_as_written_at_once() {
    let src = r#"
name: r2
version: "1"
steps:
  - id: draft
    model: local/template-generator
    input: "${input.topic}"
    params:
      format: json
      template: '{% if attempt > 1 %}{"title": "fixed {{ attempt }} {{ feedback | length }}"}{% else %}{"title": 5}{% endif %}'
  - id: check1
    kind: validate
    value: "${steps.draft.output.json}"
    schema: {type: object, required: [title], properties: {title: {type: string}}}
    repair: {step: draft, max_attempts: 2}
    needs: [draft]
  - id: check2
    kind: validate
    value: "${steps.draft.output.json}"
    schema: {type: object, required: [title], properties: {title: {type: string}}}
    repair: {step: draft, max_attempts: 2}
    needs: [draft]
"#;
    let mut seen = Vec::new();
    for hold in [false, true] {
        let h = H::build(move |c| c.hold_free_records = hold, Vec::new());
        let (run, status) = h.run(src, json!({"topic": "t"})).await;
        assert_eq!(status, RunStatus::Succeeded, "hold {hold}");
        let snap = h.snap(&run).await;
        let records: Vec<(String, StepStatus)> = snap
            .steps
            .iter()
            .map(|r| (r.step.clone(), r.status))
            .collect();
        seen.push(records);
    }
    assert_eq!(seen[0], seen[1]);
}
