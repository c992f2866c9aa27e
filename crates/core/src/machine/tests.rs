//! The step machine as a whole: which events apply to which states, a call from `Due` to
//! `Commit`, and property tests that drive whole runs through the planner and the machine over
//! a simulated store (a conditional write per transition, as the real ports do) with
//! duplicated, reordered and late events and workers that die between a claim and its answer.

use super::*;
use crate::model::{ModelOutput, Role};
use crate::planner::tests::{header, wf};
use crate::planner::{plan, Outcome};
use crate::state::{RunSnapshot, StepStatus, ValueRef};
use proptest::prelude::*;
use serde_json::{json, Map};
use std::collections::BTreeMap;

/// A draft with retries and a fallback, its schema check with a repair, an asynchronous job,
/// an approval gate and a transform: every kind of transition the machine makes.
const CHAIN: &str = r#"
    name: chain
    version: "1"
    budget: {max_cost_usd: 1.0}
    steps:
      - id: draft
        model: local/template-generator
        fallback: [local/extractive-summarizer]
        fallback_on: [transient, timeout]
        retry: {max_attempts: 2, initial_backoff: 100ms, jitter: true}
        timeout: 5s
        input: "${input.text}"
      - id: check
        kind: validate
        value: "${steps.draft.output}"
        schema: {type: object, required: [text]}
        repair: {step: draft, max_attempts: 2}
      - id: render
        model: local/async-job
        input: "${input.text}"
        timeout: 5s
      - id: review
        kind: approval
        deadline: 1h
      - {id: done, kind: transform, value: "${steps.draft.output.text}"}
"#;

/// Fixed prices: every call is estimated at a cent.
struct Cent;

impl Prices for Cent {
    fn serves(&self, model: &str) -> bool {
        model.starts_with("local/")
    }
    fn estimate_usd(&self, request: &ModelRequest) -> Option<f64> {
        request.model.starts_with("local/").then_some(0.01)
    }
    fn price_usd(&self, _: &str, _: Usage) -> Option<f64> {
        None
    }
}

/// The same prices, with the draft's models built in: free to repeat, so not claimed.
struct FreeDraft;

impl Prices for FreeDraft {
    fn serves(&self, model: &str) -> bool {
        Cent.serves(model)
    }
    fn estimate_usd(&self, request: &ModelRequest) -> Option<f64> {
        Cent.estimate_usd(request)
    }
    fn price_usd(&self, model: &str, usage: Usage) -> Option<f64> {
        Cent.price_usd(model, usage)
    }
    fn repeat_is_free(&self, model: &str) -> bool {
        model != "local/async-job"
    }
}

const LIMITS: Limits = Limits {
    lease_margin_ms: 1_000,
    default_poll_ms: 2_000,
};

fn ctx<'a>(
    wf: &'a Workflow,
    scope: &'a Value,
    records: &'a HashMap<String, StepRecord>,
    ledger: &'a Mutex<Ledger>,
    now: Millis,
) -> Ctx<'a> {
    ctx_priced(wf, scope, records, ledger, now, &Cent)
}

fn ctx_priced<'a>(
    wf: &'a Workflow,
    scope: &'a Value,
    records: &'a HashMap<String, StepRecord>,
    ledger: &'a Mutex<Ledger>,
    now: Millis,
    prices: &'a dyn Prices,
) -> Ctx<'a> {
    Ctx {
        wf,
        run_id: "run-1",
        scope,
        records,
        ledger,
        owner: "w",
        now,
        nonce: "tok",
        public_url: "https://example.test",
        limits: LIMITS,
        prices,
    }
}

fn answer(text: Value) -> Result<ModelResponse, StepError> {
    Ok(ModelResponse::Completed(ModelOutput {
        output: text,
        usage: Some(Usage::new(10, 5)),
        cost_usd: 0.001,
        model: "local/template-generator".into(),
        provider_request_id: None,
        sources: vec![],
    }))
}

fn with_status(status: StepStatus) -> StepRecord {
    let mut r = StepRecord::pending("draft");
    r.status = status;
    r.attempt = 1;
    r.version = 1;
    r.lease_owner = Some("w".into());
    r.lease_until = Some(10_000);
    r.next_at = Some(0);
    r.deadline_at = Some(10_000);
    r.finished_at = Some(5);
    r.output = Some(ValueRef::Inline { value: json!(1) });
    r.error = Some(StepError::new(ErrorClass::Transient, "x"));
    r
}

/// Which events apply to which states: everything else is refused and writes nothing.
#[test]
fn events_apply_only_to_the_states_they_are_for() {
    let w = wf(CHAIN);
    let scope = json!({"input": {"text": "t"}, "steps": {}});
    let records = HashMap::new();
    let ledger = Mutex::new(Ledger::new(0.0));
    let cx = ctx(&w, &scope, &records, &ledger, 1_000);
    let start = |rec: StepRecord| Event::Due {
        action: Action::Start {
            step: "draft".into(),
        },
        rec,
    };
    let answered = |claimed: StepRecord| Event::Answered {
        claimed,
        request: ModelRequest {
            run_id: "run-1".into(),
            step: "draft".into(),
            attempt: 1,
            model: "local/template-generator".into(),
            role: Role::Generation,
            instructions: None,
            prompt_version: None,
            input: json!("t"),
            params: json!({}),
            output_schema: None,
            feedback: vec![],
            timeout_ms: 5_000,
            callback: None,
        },
        token: None,
        provider: "local".into(),
        latency_ms: 3,
        result: answer(json!({"text": "hi"})),
    };
    use StepStatus::*;
    // (state, event, applies)
    let table: Vec<(StepStatus, Event, bool)> = vec![
        (Pending, start(with_status(Pending)), true),
        (Retrying, start(with_status(Retrying)), true),
        (Running, start(with_status(Running)), false),
        (Succeeded, start(with_status(Succeeded)), false),
        (Failed, start(with_status(Failed)), false),
        (Running, answered(with_status(Running)), true),
        (Succeeded, answered(with_status(Succeeded)), false),
        (Retrying, answered(with_status(Retrying)), false),
        (
            Waiting,
            Event::Decided {
                rec: with_status(Waiting),
                approved: true,
                comment: None,
            },
            true,
        ),
        (
            Succeeded,
            Event::Decided {
                rec: with_status(Succeeded),
                approved: true,
                comment: None,
            },
            false,
        ),
    ];
    for (status, event, applies) in table {
        let name = event.name();
        let got = handle(&cx, "draft", event);
        assert_eq!(got.is_ok(), applies, "{name} on {status:?}: {got:?}");
    }
    // A record that is no legal state is refused whatever the event.
    let mut broken = with_status(Running);
    broken.lease_owner = None;
    let err = handle(&cx, "draft", start(broken)).unwrap_err();
    assert!(err.why.contains("lease owner"), "{err}");
}

/// A model call from `Due(Start)` to its commit: prepare, claim (written before the call,
/// with its `step_started` event and the budget reserved), answer, succeed.
#[test]
fn a_call_goes_prepare_claim_answer_commit() {
    let w = wf(CHAIN);
    let scope = json!({"input": {"text": "t"}, "steps": {}});
    let records = HashMap::new();
    let ledger = Mutex::new(Ledger::new(0.0));
    let cx = ctx(&w, &scope, &records, &ledger, 1_000);
    let due = Event::Due {
        action: Action::Start {
            step: "draft".into(),
        },
        rec: StepRecord::pending("draft"),
    };
    let Next::Prepare {
        rec,
        token,
        request,
    } = handle(&cx, "draft", due).unwrap().next
    else {
        panic!("a model step prepares its request first")
    };
    assert_eq!((request.attempt, token.as_deref()), (1, None));
    let prepared = Event::Prepared {
        rec,
        token,
        request: Ok(request),
    };
    let Next::Call {
        claim,
        request,
        commit_claim,
        ..
    } = handle(&cx, "draft", prepared).unwrap().next
    else {
        panic!("a prepared request is claimed and called")
    };
    assert!(
        commit_claim,
        "a paid call's claim is written before it starts"
    );
    let claimed = claim.records[0].clone();
    assert_eq!(claimed.status, StepStatus::Running);
    assert_eq!(claim.events[0].kind, crate::state::EventKind::StepStarted);
    assert_eq!(
        ledger.lock().unwrap().reserved_usd.get("draft"),
        Some(&0.01)
    );
    let answered = Event::Answered {
        claimed,
        request,
        token: None,
        provider: "local".into(),
        latency_ms: 7,
        result: answer(json!({"text": "hi"})),
    };
    let Next::Commit(done) = handle(&cx, "draft", answered).unwrap().next else {
        panic!("an answer commits")
    };
    let r = &done.records[0];
    assert_eq!(
        (r.status, r.latency_ms, r.cost_usd),
        (StepStatus::Succeeded, 7, 0.001)
    );
    assert!(StepState::read(r).is_ok());
}

/// The budget is checked before the claim: a call that would overspend fails the step
/// `budget_exceeded` without a claim, an attempt or a call.
#[test]
fn a_call_over_budget_fails_before_its_claim() {
    let w = wf(CHAIN);
    let scope = json!({"input": {"text": "t"}, "steps": {}});
    let records = HashMap::new();
    let ledger = Mutex::new(Ledger::new(0.995));
    let cx = ctx(&w, &scope, &records, &ledger, 1_000);
    let Next::Prepare { rec, request, .. } = handle(
        &cx,
        "draft",
        Event::Due {
            action: Action::Start {
                step: "draft".into(),
            },
            rec: StepRecord::pending("draft"),
        },
    )
    .unwrap()
    .next
    else {
        panic!("prepare first")
    };
    let t = handle(
        &cx,
        "draft",
        Event::Prepared {
            rec,
            token: None,
            request: Ok(request),
        },
    )
    .unwrap();
    let Next::Commit(w) = t.next else {
        panic!("no call over budget")
    };
    let r = &w.records[0];
    assert_eq!(r.status, StepStatus::Failed);
    assert_eq!(r.attempt, 0, "no attempt was made");
    assert_eq!(
        r.error.as_ref().map(|e| e.class),
        Some(ErrorClass::BudgetExceeded)
    );
}

/// A value that fails its schema sends its producer back with the problems, in one write of
/// both records; with the repairs used up the validate step fails `malformed`.
#[test]
fn a_failed_schema_repairs_its_producer_in_one_write() {
    let w = wf(CHAIN);
    let scope = json!({"input": {"text": "t"}, "steps": {"draft": {"status": "succeeded", "output": {"oops": 1}}}});
    let mut draft = with_status(StepStatus::Succeeded);
    draft.error = None;
    let records: HashMap<String, StepRecord> = [("draft".to_string(), draft)].into();
    let ledger = Mutex::new(Ledger::new(0.0));
    let cx = ctx(&w, &scope, &records, &ledger, 1_000);
    let due = |rec: StepRecord| Event::Due {
        action: Action::Start {
            step: "check".into(),
        },
        rec,
    };
    let Next::Commit(writes) = handle(&cx, "check", due(StepRecord::pending("check")))
        .unwrap()
        .next
    else {
        panic!("a validate step commits at once")
    };
    let statuses: Vec<(&str, StepStatus)> = writes
        .records
        .iter()
        .map(|r| (r.step.as_str(), r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("draft", StepStatus::Retrying),
            ("check", StepStatus::Pending)
        ]
    );
    assert_eq!(writes.records[0].feedback.len(), 1);
    let mut used = StepRecord::pending("check");
    used.repairs = 2;
    let Next::Commit(writes) = handle(&cx, "check", due(used)).unwrap().next else {
        panic!("commit")
    };
    assert_eq!(writes.records.len(), 1);
    assert_eq!(
        writes.records[0].error.as_ref().map(|e| e.class),
        Some(ErrorClass::Malformed)
    );
}

// ---------------------------------------------------------------------------------------------
// Whole runs over a simulated store

/// What the simulated provider does with one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// Answers with a value that passes the check.
    Good,
    /// Answers with a value that fails the check (a repair follows).
    Bad,
    /// Fails with a retryable outage.
    Outage,
    /// The worker dies after its claim is written, before the answer: the claim lapses.
    Crash,
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        4 => Just(Reply::Good),
        1 => Just(Reply::Bad),
        2 => Just(Reply::Outage),
        1 => Just(Reply::Crash),
    ]
}

/// A run driven through the planner and the machine, with every transition committed under
/// the condition of the version it read, as the stores do.
struct Sim {
    wf: Workflow,
    store: BTreeMap<String, StepRecord>,
    now: Millis,
    replies: Vec<Reply>,
    next_reply: usize,
    /// Paid calls made per (step, attempt).
    calls: BTreeMap<(String, u32), u32>,
    /// Every event handed to the machine, to be delivered again.
    delivered: Vec<(String, Event)>,
    /// Commits refused on their version (a stale or duplicated event), and crashes.
    conflicts: u32,
    /// Crashed attempts per step.
    crashed: BTreeMap<String, u32>,
    ledger: Mutex<Ledger>,
    /// The draft's models are free to repeat ([`FreeDraft`]): its calls are not claimed, and a
    /// call's reply is chosen by its step and attempt (a repeated call answers the same), a
    /// crash happening once per attempt.
    free: bool,
    /// (step, attempt) that crashed already (free mode).
    crashed_at: std::collections::BTreeSet<(String, u32)>,
}

impl Sim {
    fn new(replies: Vec<Reply>) -> Sim {
        Sim {
            wf: wf(CHAIN),
            store: BTreeMap::new(),
            now: 1_000,
            replies,
            next_reply: 0,
            calls: BTreeMap::new(),
            delivered: vec![],
            conflicts: 0,
            crashed: BTreeMap::new(),
            ledger: Mutex::new(Ledger::new(0.0)),
            free: false,
            crashed_at: Default::default(),
        }
    }

    fn free(replies: Vec<Reply>) -> Sim {
        Sim {
            free: true,
            ..Sim::new(replies)
        }
    }

    /// The reply to a call: the next of `replies`, or in free mode the one of its step and
    /// attempt (so duplicates cannot change which call gets which reply).
    fn reply(&mut self, step: &str, attempt: u32) -> Reply {
        if !self.free {
            let r = self.replies.get(self.next_reply).copied();
            self.next_reply += 1;
            return r.unwrap_or(Reply::Good);
        }
        let offset = if step == "render" { 8 } else { 0 };
        let i = offset + attempt.saturating_sub(1) as usize;
        match self.replies.get(i).copied().unwrap_or(Reply::Good) {
            Reply::Crash if !self.crashed_at.insert((step.to_string(), attempt)) => Reply::Good,
            r => r,
        }
    }

    fn snapshot(&self) -> RunSnapshot {
        RunSnapshot {
            header: header(),
            steps: self.store.values().cloned().collect(),
        }
    }

    fn scope(&self) -> Value {
        let mut steps = Map::new();
        for r in self.store.values() {
            let mut s = Map::new();
            s.insert("status".into(), json!(r.status.as_str()));
            if let Some(ValueRef::Inline { value }) = &r.output {
                s.insert("output".into(), value.clone());
            }
            steps.insert(r.step.clone(), Value::Object(s));
        }
        json!({"input": {"text": "t"}, "steps": steps})
    }

    /// One conditional write of every record of a transition, or none of them. Every record
    /// written must read as a legal state.
    fn commit(&mut self, w: &Writes) -> bool {
        for r in &w.records {
            if let Err(e) = StepState::read(r) {
                panic!("the machine wrote an illegal record ({e}): {r:?}");
            }
            let stored = self.store.get(&r.step).map_or(0, |s| s.version);
            if stored != r.version {
                self.conflicts += 1;
                return false;
            }
        }
        for r in &w.records {
            let mut r = r.clone();
            r.version += 1;
            if let Ok(mut l) = self.ledger.lock() {
                l.settle(&r.step, 0.0);
            }
            self.store.insert(r.step.clone(), r);
        }
        true
    }

    /// Handles one event and what it leads to, as the interpreter does.
    fn deliver(&mut self, step: &str, first: Event) {
        self.delivered.push((step.to_string(), first.clone()));
        let mut event = first;
        for _ in 0..10 {
            let scope = self.scope();
            let records: HashMap<String, StepRecord> = self
                .store
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let t = {
                let prices: &dyn Prices = if self.free { &FreeDraft } else { &Cent };
                let cx = ctx_priced(&self.wf, &scope, &records, &self.ledger, self.now, prices);
                handle(&cx, step, event)
            };
            let Ok(t) = t else {
                // Refused: the event does not apply to the state it carries; nothing written.
                return;
            };
            event = match t.next {
                Next::Commit(w) => {
                    self.commit(&w);
                    return;
                }
                Next::Prepare {
                    rec,
                    token,
                    request,
                } => Event::Prepared {
                    rec,
                    token,
                    request: Ok(request),
                },
                Next::Call {
                    claim,
                    request,
                    token,
                    commit_claim,
                } => {
                    let mut claimed = claim.records[0].clone();
                    if commit_claim {
                        if !self.commit(&claim) {
                            return;
                        }
                        claimed.version += 1;
                        *self
                            .calls
                            .entry((step.to_string(), claimed.attempt))
                            .or_default() += 1;
                    }
                    let r = self.reply(step, claimed.attempt);
                    let result = match r {
                        Reply::Crash => {
                            *self.crashed.entry(step.to_string()).or_default() += 1;
                            return;
                        }
                        Reply::Outage => Err(StepError::new(ErrorClass::Transient, "503")),
                        Reply::Bad => answer(json!({"oops": 1})),
                        Reply::Good if request.model == "local/async-job" => {
                            Ok(ModelResponse::Pending {
                                job_id: format!("job-{}", claimed.attempt),
                                poll_after_ms: None,
                            })
                        }
                        Reply::Good => answer(json!({"text": "hi"})),
                    };
                    let answered = Event::Answered {
                        claimed,
                        request,
                        token,
                        provider: "local".into(),
                        latency_ms: 1,
                        result,
                    };
                    self.delivered.push((step.to_string(), answered.clone()));
                    answered
                }
                Next::Poll { rec, .. } => Event::Polled {
                    rec,
                    result: answer(json!({"text": "rendered"})),
                },
                Next::CancelThenCommit { writes, .. } => {
                    self.commit(&writes);
                    return;
                }
                Next::Download { .. } | Next::Keep { .. } => {
                    panic!("no asset files in this workflow")
                }
            };
        }
        panic!("an event that never commits");
    }

    /// Drives the run to its end. `again` holds, per round, which earlier event to deliver
    /// again (late or duplicated); `reverse` runs each round's actions in reverse order.
    fn run(&mut self, again: &[usize], reverse: bool) -> Outcome {
        for round in 0..400 {
            let snap = self.snapshot();
            let p = plan(&self.wf, &snap, self.now);
            if let Some(o) = p.outcome {
                return o;
            }
            if let Some(&i) = again.get(round) {
                if !self.delivered.is_empty() {
                    let (step, ev) = self.delivered[i % self.delivered.len()].clone();
                    self.deliver(&step, ev);
                    continue;
                }
            }
            let mut actions = p.actions.clone();
            if reverse {
                actions.reverse();
            }
            if actions.is_empty() {
                // What waits outside: the job's callback, then the approver.
                let waiting = self
                    .store
                    .values()
                    .find_map(|r| match StepState::read(r).ok()? {
                        StepState::WaitingJob { .. } => Some((r.clone(), true)),
                        StepState::WaitingApproval { .. } => Some((r.clone(), false)),
                        _ => None,
                    });
                match waiting {
                    Some((rec, true)) => {
                        let step = rec.step.clone();
                        let ev = Event::Callback {
                            rec,
                            webhook_id: "wh".into(),
                            provider: "local".into(),
                            result: answer(json!({"text": "rendered"})),
                        };
                        self.deliver(&step, ev);
                    }
                    Some((rec, false)) => {
                        let step = rec.step.clone();
                        let ev = Event::Decided {
                            rec,
                            approved: true,
                            comment: None,
                        };
                        self.deliver(&step, ev);
                    }
                    None => match p.wake_at {
                        Some(t) => self.now = self.now.max(t),
                        None => panic!("a run with nothing to do and nothing to wait for"),
                    },
                }
                continue;
            }
            for a in actions {
                let rec = self
                    .store
                    .get(a.step())
                    .cloned()
                    .unwrap_or_else(|| StepRecord::pending(a.step()));
                let step = a.step().to_string();
                self.deliver(&step, Event::Due { action: a, rec });
            }
            self.now += 10;
        }
        panic!("the run did not end in 400 rounds: {:#?}", self.store);
    }

    /// [`Sim::summary`] without when the approval was decided (a crash retried costs the
    /// simulation a round, so the approver answers later).
    fn summary_untimed(&self) -> Vec<(String, StepStatus, u32, Option<ValueRef>)> {
        let mut out = self.summary();
        for (_, _, _, output) in out.iter_mut() {
            if let Some(ValueRef::Inline {
                value: Value::Object(o),
            }) = output
            {
                o.remove("decided_at");
            }
        }
        out
    }

    /// What a run came to, per step: status, attempts, output.
    fn summary(&self) -> Vec<(String, StepStatus, u32, Option<ValueRef>)> {
        self.store
            .values()
            .map(|r| (r.step.clone(), r.status, r.attempt, r.output.clone()))
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Duplicated, late and reordered events end in the same state as a clean run of the
    /// same provider replies, and never make a paid call twice for one attempt.
    #[test]
    fn duplicated_late_and_reordered_events_end_in_the_same_state(
        replies in prop::collection::vec(
            prop_oneof![4 => Just(Reply::Good), 1 => Just(Reply::Bad), 2 => Just(Reply::Outage)],
            0..8,
        ),
        again in prop::collection::vec(prop::option::of(0usize..64), 0..40),
        reverse in any::<bool>(),
    ) {
        let mut clean = Sim::new(replies.clone());
        let want = clean.run(&[], false);
        let again: Vec<usize> = again.into_iter().flatten().collect();
        let mut noisy = Sim::new(replies);
        let got = noisy.run(&again, reverse);
        prop_assert_eq!(got, want);
        prop_assert_eq!(noisy.summary(), clean.summary());
        for (k, n) in &noisy.calls {
            prop_assert!(*n <= 1, "{:?} called {} times", k, n);
        }
    }

    /// Workers that die between a claim and its answer (and any duplicated events on top)
    /// still end the run, each attempt paid for at most once; a lost attempt is retried.
    #[test]
    fn crashes_between_a_claim_and_its_answer_lose_nothing(
        replies in prop::collection::vec(reply(), 0..10),
        again in prop::collection::vec(prop::option::of(0usize..64), 0..20),
    ) {
        let again: Vec<usize> = again.into_iter().flatten().collect();
        let mut sim = Sim::new(replies);
        let outcome = sim.run(&again, false);
        for (k, n) in &sim.calls {
            prop_assert!(*n <= 1, "{:?} called {} times", k, n);
        }
        // Every step ended (the run has an outcome), and every record is legal (checked on
        // each commit).
        for r in sim.store.values() {
            prop_assert!(StepState::read(r).is_ok_and(|s| s.is_ended())
                || !matches!(outcome, Outcome::Succeeded));
        }
        // Each crash's claim lapsed and was settled as a lost attempt (up to the bound per
        // step, after which a lost attempt counts as a timeout).
        for (step, crashes) in &sim.crashed {
            let lost = sim.store.get(step).map_or(0, |r| r.lost);
            prop_assert_eq!(lost, (*crashes).min(settle::MAX_LOST_ATTEMPTS), "{}", step);
        }
    }

    /// Built-in calls are not claimed: duplicated, late and reordered events, and workers
    /// that die mid-call, still end in the clean run's state; a crash leaves the step pending
    /// (no lost attempt: the call is made again), and the asynchronous job — still claimed —
    /// is submitted at most once per attempt.
    #[test]
    fn unclaimed_free_calls_end_the_same_through_duplicates_and_crashes(
        replies in prop::collection::vec(reply(), 0..12),
        again in prop::collection::vec(prop::option::of(0usize..64), 0..40),
        reverse in any::<bool>(),
    ) {
        let mut clean = Sim::free(replies.clone());
        let want = clean.run(&[], false);
        let again: Vec<usize> = again.into_iter().flatten().collect();
        let mut noisy = Sim::free(replies);
        let got = noisy.run(&again, reverse);
        prop_assert_eq!(got, want);
        prop_assert_eq!(noisy.summary_untimed(), clean.summary_untimed());
        for (k, n) in &noisy.calls {
            prop_assert_eq!(k.0.as_str(), "render", "only the job is claimed");
            prop_assert!(*n <= 1, "{:?} submitted {} times", k, n);
        }
        for r in noisy.store.values() {
            if r.step == "draft" {
                prop_assert_eq!(r.lost, 0, "an unclaimed call is never a lost attempt");
            }
        }
    }
}

/// An unclaimed call writes its attempt once, with its answer: a clean run's draft is one
/// write (not a claim and an answer), and a crash mid-call is no attempt at all.
#[test]
fn a_free_call_is_one_write_and_a_crash_is_no_attempt() {
    let mut free = Sim::free(vec![]);
    assert_eq!(free.run(&[], false), Outcome::Succeeded);
    assert_eq!(free.store["draft"].version, 1, "one write of the draft");
    assert_eq!(free.store["draft"].attempt, 1);
    assert_eq!(
        free.calls.keys().map(|k| k.0.as_str()).collect::<Vec<_>>(),
        ["render"]
    );
    let mut paid = Sim::new(vec![]);
    assert_eq!(paid.run(&[], false), Outcome::Succeeded);
    assert_eq!(paid.store["draft"].version, 2, "a claim, then the answer");

    let mut crashed = Sim::free(vec![Reply::Crash, Reply::Good]);
    assert_eq!(crashed.run(&[], false), Outcome::Succeeded);
    let draft = &crashed.store["draft"];
    assert_eq!((draft.attempt, draft.lost, draft.version), (1, 0, 1));
    assert_eq!(crashed.summary_untimed(), free.summary_untimed());
}

/// The simulation goes through every kind of transition: a clean run succeeds through the
/// job's callback and the approval; a bad draft is repaired; outages retry and fall back; a
/// crash is a lost attempt retried.
#[test]
fn the_simulated_runs_take_every_path() {
    let mut clean = Sim::new(vec![]);
    assert_eq!(clean.run(&[], false), Outcome::Succeeded);
    let status = |s: &Sim, step: &str| s.store.get(step).map(|r| r.status);
    for step in ["draft", "check", "render", "review", "done"] {
        assert_eq!(status(&clean, step), Some(StepStatus::Succeeded), "{step}");
    }
    assert_eq!(clean.calls.len(), 2, "draft and render: {:?}", clean.calls);

    let mut repaired = Sim::new(vec![Reply::Bad, Reply::Good]);
    assert_eq!(repaired.run(&[], false), Outcome::Succeeded);
    assert_eq!(repaired.store["check"].repairs, 1);
    assert_eq!(repaired.store["draft"].attempt, 2);

    let mut fell_back = Sim::new(vec![Reply::Outage, Reply::Outage, Reply::Good]);
    assert_eq!(fell_back.run(&[], false), Outcome::Succeeded);
    let draft = &fell_back.store["draft"];
    assert_eq!((draft.fallback_used, draft.model_index), (true, 1));

    let mut crashed = Sim::new(vec![Reply::Crash, Reply::Good]);
    assert_eq!(crashed.run(&[], false), Outcome::Succeeded);
    assert_eq!(crashed.store["draft"].lost, 1);

    // Re-delivered events were refused by the version they carry, not applied twice.
    let mut noisy = Sim::new(vec![]);
    let again: Vec<usize> = (0..30).collect();
    assert_eq!(noisy.run(&again, true), Outcome::Succeeded);
    assert!(noisy.conflicts > 0, "duplicates were delivered");
    assert_eq!(noisy.summary(), clean.summary());
}

/// Claims of the given owner end now; others' claims and other states are left alone.
#[test]
fn orphaned_claims_end_now_and_only_the_owners() {
    let claim = |owner: &str| {
        let mut r = with_status(StepStatus::Running);
        r.lease_owner = Some(owner.into());
        r
    };
    let mut steps = vec![
        claim("me"),
        claim("other"),
        with_status(StepStatus::Retrying),
    ];
    let before = steps.clone();
    end_orphaned_claims(&mut steps, "me", 42);
    assert_eq!(steps[0].lease_until, Some(42));
    assert_eq!(steps[1..], before[1..]);
}

/// A gate's notification is due once per attempt that opens it.
#[test]
fn a_gate_opens_once_per_attempt() {
    let mut open = with_status(StepStatus::Waiting);
    open.job = None;
    let mut next = open.clone();
    next.attempt = 2;
    let pending = StepRecord::pending("draft");
    let table: Vec<(Option<&StepRecord>, &StepRecord, bool)> = vec![
        (None, &open, true),
        (Some(&pending), &open, true),
        (Some(&open), &open, false),
        (Some(&open), &next, true),
        (Some(&pending), &pending, false),
    ];
    for (i, (old, new, want)) in table.into_iter().enumerate() {
        assert_eq!(opened_gate(old, new), want, "row {i}");
    }
}
