//! Planner tests: a decision table over hand-built snapshots, and property tests of the claim
//! that wake-ups are harmless (duplicated, reordered or late ones change nothing).

use super::{plan, Action, Outcome, Plan};
use crate::error::{ErrorClass, StepError};
use crate::machine::settle::{self, AttemptMeta};
use crate::model::{ModelInfo, Role};
use crate::refs;
use crate::state::{
    RunError, RunHeader, RunSnapshot, RunStatus, StepRecord, StepStatus, ValueRef, WaitReason,
    WorkflowPin,
};
use crate::time::Millis;
use crate::workflow::{compile, NoFiles, Step, StepKind, Workflow};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

// ---------------------------------------------------------------------------------------------
// Fixtures

fn catalog() -> Vec<ModelInfo> {
    let m = |id: &str, roles: &[Role], asynchronous: bool| ModelInfo {
        id: id.to_string(),
        roles: roles.to_vec(),
        asynchronous,
        description: String::new(),
    };
    vec![
        m("local/keyword-classifier", &[Role::Classification], false),
        m("local/template-generator", &[Role::Generation], false),
        m("local/extractive-summarizer", &[Role::Generation], false),
        m("local/keyword-retriever", &[Role::Retrieval], false),
        m("local/async-job", &[Role::Asset], true),
    ]
}

/// Strips the common indentation so YAML can sit indented in the source.
fn dedent(src: &str) -> String {
    let indent = src
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    src.lines()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn wf(src: &str) -> Workflow {
    match compile(&dedent(src), &NoFiles, &catalog()) {
        Ok(w) => w,
        Err(d) => panic!("test workflow does not compile: {d:#?}"),
    }
}

/// a and b start with the run; c needs both; d follows c.
const ROOTS: &str = r#"
    name: roots
    version: "1"
    steps:
      - {id: a, kind: transform, value: 1}
      - {id: b, kind: transform, needs: [], value: 2}
      - {id: c, kind: transform, needs: [a, b], value: 3}
      - {id: d, kind: transform, value: 4}
"#;

/// A route with three targets, a join after two of them, and a step after the join.
const ROUTE: &str = r#"
    name: route
    version: "1"
    steps:
      - id: classify
        model: local/keyword-classifier
        input: "${input.text}"
      - id: triage
        kind: route
        routes:
          - when: {path: steps.classify.output.label, equals: billing}
            to: b
          - when: {path: steps.classify.output.label, equals: tech}
            to: c
        default: d
      - {id: b, kind: transform, value: b}
      - {id: c, kind: transform, value: c}
      - {id: d, kind: transform, value: d}
      - {id: join, kind: transform, needs: [b, c], value: j}
      - {id: after, kind: transform, value: z}
"#;

/// A chain through every kind of wait: retry, optional step, approval, asynchronous job.
const GATES: &str = r#"
    name: gates
    version: "1"
    steps:
      - id: gen
        model: local/template-generator
        input: "${input.text}"
      - id: opt
        model: local/extractive-summarizer
        optional: true
      - id: approve
        kind: approval
        deadline: 1h
      - id: render
        model: local/async-job
      - {id: done, kind: transform, value: 1}
"#;

/// A parallel step as a route target.
const FANOUT: &str = r#"
    name: fanout
    version: "1"
    steps:
      - id: classify
        model: local/keyword-classifier
      - id: triage
        kind: route
        routes:
          - when: {path: steps.classify.output.label, equals: billing}
            to: fan
        default: other
      - id: fan
        kind: parallel
        branches:
          x: {kind: transform, value: 1}
          y: {kind: transform, value: 2}
      - {id: other, kind: transform, value: 3}
"#;

pub(crate) fn header() -> RunHeader {
    RunHeader {
        run_id: "run-1".into(),
        tenant: "acme".into(),
        workflow: WorkflowPin {
            name: "test".into(),
            version: "1".into(),
            hash: "0".repeat(64),
        },
        status: RunStatus::Running,
        input: ValueRef::Inline {
            value: json!({"text": "refund please"}),
        },
        output: None,
        error: None,
        created_at: 0,
        updated_at: 0,
        ended_at: None,
        deadline_at: None,
        wait: None,
        cancel_requested: false,
        lease: None,
        callback_url: None,
        metadata: Value::Null,
        traceparent: None,
        rerun_of: None,
        reruns: Vec::new(),
        version: 1,
    }
}

fn snap(steps: Vec<StepRecord>) -> RunSnapshot {
    RunSnapshot {
        header: header(),
        steps,
    }
}

fn with_header(mut s: RunSnapshot, f: impl FnOnce(&mut RunHeader)) -> RunSnapshot {
    f(&mut s.header);
    s
}

fn rec(id: &str, status: StepStatus) -> StepRecord {
    let mut r = StepRecord::pending(id);
    r.status = status;
    r.attempt = u32::from(status != StepStatus::Pending);
    r.version = 2;
    r
}

fn done(id: &str) -> StepRecord {
    let mut r = rec(id, StepStatus::Succeeded);
    r.output = Some(ValueRef::Inline { value: json!(id) });
    r
}

fn routed(id: &str, chosen: &str) -> StepRecord {
    let mut r = done(id);
    r.chosen = Some(chosen.to_string());
    r
}

fn skipped(id: &str) -> StepRecord {
    rec(id, StepStatus::Skipped)
}

fn failed(id: &str, class: ErrorClass, message: &str) -> StepRecord {
    let mut r = rec(id, StepStatus::Failed);
    r.error = Some(StepError::new(class, message));
    r
}

fn retrying(id: &str, next_at: Millis) -> StepRecord {
    let mut r = rec(id, StepStatus::Retrying);
    r.next_at = Some(next_at);
    r
}

/// A finished asset job whose file is to be downloaded at `next_at`.
fn downloading(id: &str, next_at: Millis) -> StepRecord {
    let mut r = retrying(id, next_at);
    r.download = Some(crate::state::AssetDownload {
        output: json!({"url": "https://replicate.delivery/x/out.png"}),
        model: "replicate/a/b".into(),
        failed: 1,
    });
    r
}

fn running(id: &str, lease_until: Millis) -> StepRecord {
    let mut r = rec(id, StepStatus::Running);
    r.lease_until = Some(lease_until);
    r.lease_owner = Some("worker-1".into());
    r
}

fn waiting(id: &str, next_at: Option<Millis>, deadline_at: Millis) -> StepRecord {
    let mut r = rec(id, StepStatus::Waiting);
    r.next_at = next_at;
    r.deadline_at = Some(deadline_at);
    r
}

fn start(id: &str) -> Action {
    Action::Start { step: id.into() }
}

fn skip(id: &str, reason: &str) -> Action {
    Action::Skip {
        step: id.into(),
        reason: reason.into(),
    }
}

fn act(actions: Vec<Action>) -> Plan {
    Plan {
        actions,
        ..Plan::default()
    }
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// (a) The decision table

#[test]
fn plan_table() {
    let roots = wf(ROOTS);
    let route = wf(ROUTE);
    let gates = wf(GATES);
    let fanout = wf(FANOUT);
    let chose = |d| format!("route `triage` chose `{d}`");
    let all_skipped = "every step it needs was skipped";
    let gen_ok = || vec![done("gen"), done("opt")];

    // (what, workflow, snapshot, now, expected plan)
    let table: Vec<(&str, &Workflow, RunSnapshot, Millis, Plan)> = vec![
        (
            "fresh run starts the roots only",
            &roots,
            snap(vec![]),
            0,
            act(vec![start("a"), start("b")]),
        ),
        (
            // A stored pending record means the same as no record.
            "pending records are like missing ones",
            &roots,
            snap(vec![
                rec("a", StepStatus::Pending),
                rec("c", StepStatus::Pending),
            ]),
            0,
            act(vec![start("a"), start("b")]),
        ),
        (
            "a step waits for all its needs",
            &roots,
            snap(vec![done("a")]),
            0,
            act(vec![start("b")]),
        ),
        (
            "chain: c once a and b ended",
            &roots,
            snap(vec![done("a"), done("b")]),
            0,
            act(vec![start("c")]),
        ),
        (
            "chain: d after c",
            &roots,
            snap(vec![done("a"), done("b"), done("c")]),
            0,
            act(vec![start("d")]),
        ),
        (
            // Nothing to start while b runs: wake at its lease, report it running.
            "chain: wait for a running need",
            &roots,
            snap(vec![done("a"), running("b", 9_000)]),
            1_000,
            Plan {
                wake_at: Some(9_000),
                running: ids(&["b"]),
                ..Plan::default()
            },
        ),
        (
            "route step starts after its need",
            &route,
            snap(vec![done("classify")]),
            0,
            act(vec![start("triage")]),
        ),
        (
            "route chose b: b starts, c and d are skipped",
            &route,
            snap(vec![done("classify"), routed("triage", "b")]),
            0,
            act(vec![
                start("b"),
                skip("c", &chose("b")),
                skip("d", &chose("b")),
            ]),
        ),
        (
            "join of b and c starts when b ran and c was skipped",
            &route,
            snap(vec![
                done("classify"),
                routed("triage", "b"),
                done("b"),
                skipped("c"),
                skipped("d"),
            ]),
            0,
            act(vec![start("join")]),
        ),
        (
            "join does not start while a branch is undecided",
            &route,
            snap(vec![done("classify"), routed("triage", "b"), done("b")]),
            0,
            act(vec![skip("c", &chose("b")), skip("d", &chose("b"))]),
        ),
        (
            "route chose d: b and c skipped, d starts",
            &route,
            snap(vec![done("classify"), routed("triage", "d")]),
            0,
            act(vec![
                skip("b", &chose("d")),
                skip("c", &chose("d")),
                start("d"),
            ]),
        ),
        (
            "all needs skipped: the join is skipped",
            &route,
            snap(vec![
                done("classify"),
                routed("triage", "d"),
                skipped("b"),
                skipped("c"),
                done("d"),
            ]),
            0,
            act(vec![skip("join", all_skipped)]),
        ),
        (
            "skips propagate down a chain",
            &route,
            snap(vec![
                done("classify"),
                routed("triage", "d"),
                skipped("b"),
                skipped("c"),
                done("d"),
                skipped("join"),
            ]),
            0,
            act(vec![skip("after", all_skipped)]),
        ),
        (
            // A failed route chose nothing; its (optional or not) targets cannot run.
            "targets of a route that chose nothing are skipped",
            &route,
            snap(vec![done("classify"), done("triage")]),
            0,
            act(vec![
                skip("b", "route `triage` chose no branch"),
                skip("c", "route `triage` chose no branch"),
                skip("d", "route `triage` chose no branch"),
            ]),
        ),
        (
            "route chose the parallel step: its branches start",
            &fanout,
            snap(vec![done("classify"), routed("triage", "fan")]),
            0,
            act(vec![
                start("fan.x"),
                start("fan.y"),
                skip("other", "route `triage` chose `fan`"),
            ]),
        ),
        (
            "parallel step merges once its branches ended",
            &fanout,
            snap(vec![
                done("classify"),
                routed("triage", "fan"),
                done("fan.x"),
                done("fan.y"),
                skipped("other"),
            ]),
            0,
            act(vec![start("fan")]),
        ),
        (
            "route chose other: the parallel step and its branches are skipped",
            &fanout,
            snap(vec![done("classify"), routed("triage", "other")]),
            0,
            act(vec![
                skip("fan.x", "route `triage` chose `other`"),
                skip("fan.y", "route `triage` chose `other`"),
                start("other"),
            ]),
        ),
        (
            "retry in the future: nothing now, wake at next_at",
            &gates,
            snap(vec![retrying("gen", 5_000)]),
            1_000,
            Plan {
                wake_at: Some(5_000),
                wait: Some(WaitReason::Timer),
                ..Plan::default()
            },
        ),
        (
            "retry due: start the next attempt",
            &gates,
            snap(vec![retrying("gen", 5_000)]),
            5_000,
            act(vec![start("gen")]),
        ),
        (
            // The job is done, its file is not kept yet: download it, never start the job.
            "download due: download, not a new attempt",
            &gates,
            snap(vec![downloading("gen", 5_000)]),
            5_000,
            act(vec![Action::Download { step: "gen".into() }]),
        ),
        (
            "download in the future: a timer, like any retry",
            &gates,
            snap(vec![downloading("gen", 5_000)]),
            1_000,
            Plan {
                wake_at: Some(5_000),
                wait: Some(WaitReason::Timer),
                ..Plan::default()
            },
        ),
        (
            // A worker died mid-attempt: the lease lapsed.
            "running with an expired lease: expire it",
            &gates,
            snap(vec![running("gen", 1_000)]),
            1_000,
            Plan {
                actions: vec![Action::Expire { step: "gen".into() }],
                running: ids(&["gen"]),
                ..Plan::default()
            },
        ),
        (
            "approval past its deadline: time it out",
            &gates,
            snap([gen_ok(), vec![waiting("approve", None, 10_000)]].concat()),
            10_000,
            act(vec![Action::ApprovalTimeout {
                step: "approve".into(),
            }]),
        ),
        (
            "approval before its deadline: wait for a person",
            &gates,
            snap([gen_ok(), vec![waiting("approve", None, 10_000)]].concat()),
            9_999,
            Plan {
                wake_at: Some(10_000),
                wait: Some(WaitReason::Approval),
                ..Plan::default()
            },
        ),
        (
            "async job due for a poll",
            &gates,
            snap(
                [
                    gen_ok(),
                    vec![done("approve"), waiting("render", Some(3_000), 60_000)],
                ]
                .concat(),
            ),
            3_000,
            act(vec![Action::Poll {
                step: "render".into(),
            }]),
        ),
        (
            "async job not due: wait for the callback",
            &gates,
            snap(
                [
                    gen_ok(),
                    vec![done("approve"), waiting("render", Some(3_000), 60_000)],
                ]
                .concat(),
            ),
            2_000,
            Plan {
                wake_at: Some(3_000),
                wait: Some(WaitReason::Callback),
                ..Plan::default()
            },
        ),
        (
            // Without a poll time, the wait deadline is what makes it due.
            "async job past its wait deadline",
            &gates,
            snap(
                [
                    gen_ok(),
                    vec![done("approve"), waiting("render", None, 60_000)],
                ]
                .concat(),
            ),
            60_000,
            act(vec![Action::Poll {
                step: "render".into(),
            }]),
        ),
        (
            "required step failed: the run fails, naming it",
            &gates,
            snap(vec![failed("gen", ErrorClass::Invalid, "prompt too long")]),
            0,
            Plan {
                outcome: Some(Outcome::Failed(RunError {
                    class: ErrorClass::Invalid,
                    message: "prompt too long".into(),
                    step: Some("gen".into()),
                })),
                ..Plan::default()
            },
        ),
        (
            "optional step failed: the run goes on",
            &gates,
            snap(vec![done("gen"), failed("opt", ErrorClass::Refused, "no")]),
            0,
            act(vec![start("approve")]),
        ),
        (
            "rejected approval fails the run",
            &gates,
            snap(
                [
                    gen_ok(),
                    vec![failed("approve", ErrorClass::Rejected, "rejected: no")],
                ]
                .concat(),
            ),
            0,
            Plan {
                outcome: Some(Outcome::Failed(RunError {
                    class: ErrorClass::Rejected,
                    message: "rejected: no".into(),
                    step: Some("approve".into()),
                })),
                ..Plan::default()
            },
        ),
        (
            // b is ready, but a cancelled run starts nothing; it waits for a's attempt.
            "cancel with a running step: start nothing, no outcome yet",
            &roots,
            with_header(snap(vec![running("a", 8_000)]), |h| {
                h.cancel_requested = true
            }),
            1_000,
            Plan {
                wake_at: Some(8_000),
                running: ids(&["a"]),
                ..Plan::default()
            },
        ),
        (
            "cancel with a lapsed lease: expire it",
            &roots,
            with_header(snap(vec![running("a", 8_000)]), |h| {
                h.cancel_requested = true
            }),
            8_000,
            Plan {
                actions: vec![Action::Expire { step: "a".into() }],
                wake_at: Some(8_000),
                running: ids(&["a"]),
                ..Plan::default()
            },
        ),
        (
            "cancel with nothing running: cancelled",
            &roots,
            with_header(snap(vec![done("a"), retrying("b", 5_000)]), |h| {
                h.cancel_requested = true
            }),
            1_000,
            Plan {
                outcome: Some(Outcome::Cancelled),
                ..Plan::default()
            },
        ),
        (
            "run deadline passed: failed with timeout",
            &roots,
            with_header(snap(vec![done("a")]), |h| h.deadline_at = Some(5_000)),
            5_000,
            Plan {
                outcome: Some(Outcome::Failed(RunError {
                    class: ErrorClass::Timeout,
                    message: "the run's timeout passed before it finished".into(),
                    step: None,
                })),
                ..Plan::default()
            },
        ),
        (
            "run deadline ahead: it is a wake-up time",
            &roots,
            with_header(snap(vec![done("a"), retrying("b", 9_000)]), |h| {
                h.deadline_at = Some(5_000)
            }),
            1_000,
            Plan {
                wake_at: Some(5_000),
                wait: Some(WaitReason::Timer),
                ..Plan::default()
            },
        ),
        (
            "all steps ended: succeeded",
            &roots,
            snap(vec![done("a"), done("b"), done("c"), done("d")]),
            0,
            Plan {
                outcome: Some(Outcome::Succeeded),
                ..Plan::default()
            },
        ),
        (
            "skipped and optional-failed steps count as ended",
            &route,
            snap(vec![
                done("classify"),
                routed("triage", "d"),
                skipped("b"),
                skipped("c"),
                done("d"),
                skipped("join"),
                skipped("after"),
            ]),
            0,
            Plan {
                outcome: Some(Outcome::Succeeded),
                ..Plan::default()
            },
        ),
        (
            "a run that already ended plans nothing",
            &roots,
            with_header(snap(vec![]), |h| h.status = RunStatus::Failed),
            0,
            Plan::default(),
        ),
    ];

    let mut failures = Vec::new();
    for (what, w, s, now, want) in &table {
        let got = plan(w, s, *now);
        if &got != want {
            failures.push(format!("{what}:\n   got {got:?}\n  want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_earliest_due_time_wins() {
    let gates = wf(GATES);
    // An approval deadline at 4s comes before the run deadline at 6s...
    let s = with_header(
        snap(vec![
            done("gen"),
            done("opt"),
            waiting("approve", None, 4_000),
        ]),
        |h| h.deadline_at = Some(6_000),
    );
    assert_eq!(plan(&gates, &s, 1_000).wake_at, Some(4_000));
    // ...and the run deadline at 6s before a retry at 7s.
    let s = with_header(snap(vec![retrying("gen", 7_000)]), |h| {
        h.deadline_at = Some(6_000)
    });
    assert_eq!(plan(&gates, &s, 1_000).wake_at, Some(6_000));
}

// ---------------------------------------------------------------------------------------------
// (b) Wake-ups are harmless: a pure simulator of the worker loop

/// Sync only: a route, a step whose first attempt fails transiently, a parallel step.
const SIM: &str = r#"
    name: sim
    version: "1"
    steps:
      - id: classify
        model: local/keyword-classifier
        input: "${input.text}"
      - id: triage
        kind: route
        routes:
          - when: {path: steps.classify.output.label, equals: billing}
            to: billing
        default: general
      - id: billing
        model: local/template-generator
        input: "${steps.classify.output}"
        retry: {max_attempts: 3, initial_backoff: 100ms, jitter: false}
      - id: general
        kind: transform
        value: "general: ${input.text}"
      - id: enrich
        kind: parallel
        needs: [billing, general]
        branches:
          a:
            model: local/extractive-summarizer
            input: "${input.text}"
          b:
            kind: transform
            value: {label: "${steps.classify.output.label}"}
      - id: final
        kind: transform
        value: {enrich: "${steps.enrich.output}", billing: "${steps.billing.output}"}
"#;

/// Waits that need the outside world; appended to `SIM` for the planner-only properties.
const SIM_WAITS: &str = r#"
      - id: approve
        kind: approval
        deadline: 1h
      - id: render
        model: local/async-job
        optional: true
"#;

const LEASE_MS: u64 = 30_000;
const FAR: Millis = 10_000_000_000_000;

enum Exec {
    Output(Value),
    Chosen(String),
    Fail(StepError),
}

/// Per step: (status, output, attempts, route choice).
type StepResult = (StepStatus, Option<ValueRef>, u32, Option<String>);
/// What must not depend on wake-ups: the run's status and every step's result.
type RunResult = (RunStatus, BTreeMap<String, StepResult>);

/// The worker loop with a deterministic executor, applying every action through `settle`.
struct Sim {
    wf: Workflow,
    snap: RunSnapshot,
    claims: BTreeMap<String, u32>,
    succeeded: BTreeSet<String>,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            wf: wf(SIM),
            snap: snap(vec![]),
            claims: BTreeMap::new(),
            succeeded: BTreeSet::new(),
        }
    }

    fn ended(&self) -> bool {
        self.snap.header.status.is_terminal()
    }

    /// What the steps see: the run input and the outputs so far.
    fn scope(&self) -> Value {
        let input = match &self.snap.header.input {
            ValueRef::Inline { value } => value.clone(),
            ValueRef::Blob { .. } => Value::Null,
        };
        let mut steps = Map::new();
        for r in &self.snap.steps {
            if let Some(ValueRef::Inline { value }) = &r.output {
                steps.insert(
                    r.step.clone(),
                    json!({"output": value, "status": r.status.as_str()}),
                );
            }
        }
        json!({"input": input, "steps": steps, "run": {"id": self.snap.header.run_id}})
    }

    /// The outcome of attempt `attempt` of `step`: a function of the step, the attempt and
    /// earlier outputs only.
    fn execute(&self, step: &Step, attempt: u32) -> Exec {
        let scope = self.scope();
        match &step.kind {
            StepKind::Model(_) if step.id == "billing" && attempt == 1 => {
                Exec::Fail(StepError::new(ErrorClass::Transient, "connection reset"))
            }
            StepKind::Model(_) if step.id == "classify" => {
                Exec::Output(json!({"label": "billing", "confidence": 0.9}))
            }
            StepKind::Model(m) => Exec::Output(json!({
                "text": format!("{} attempt {attempt}", step.id),
                "input": refs::resolve(&m.input, &scope).unwrap(),
            })),
            StepKind::Route(r) => {
                let hit = r
                    .routes
                    .iter()
                    .find(|c| c.when.as_ref().is_none_or(|w| w.holds(&scope).unwrap()));
                Exec::Chosen(hit.map(|c| c.to.clone()).or(r.default.clone()).unwrap())
            }
            StepKind::Transform { value } => Exec::Output(refs::resolve(value, &scope).unwrap()),
            StepKind::Parallel { branches } => {
                let mut out = Map::new();
                for b in branches {
                    let short = b.rsplit('.').next().unwrap_or(b);
                    out.insert(short.to_string(), scope["steps"][b]["output"].clone());
                }
                Exec::Output(Value::Object(out))
            }
            other => panic!("the simulator runs sync steps only, not {other:?}"),
        }
    }

    /// A conditional write, as a store does it: the record must carry the version stored now
    /// (it was derived from it), and is stored one version ahead.
    fn write(&mut self, mut r: StepRecord) -> u64 {
        let old = self.snap.step(&r.step).map_or(0, |o| o.version);
        assert_eq!(r.version, old, "write of `{}` from a stale version", r.step);
        r.version = old + 1;
        if r.status == StepStatus::Succeeded {
            self.succeeded.insert(r.step.clone());
        }
        self.snap.upsert(r);
        old + 1
    }

    fn apply(&mut self, action: Action, now: Millis) {
        let id = action.step().to_string();
        let step = self.wf.step(&id).cloned().unwrap();
        let rec = self
            .snap
            .step(&id)
            .cloned()
            .unwrap_or_else(|| StepRecord::pending(&id));
        match action {
            Action::Start { .. } => {
                assert!(
                    !self.succeeded.contains(&id),
                    "`{id}` succeeded before and is claimed again"
                );
                assert!(
                    matches!(rec.status, StepStatus::Pending | StepStatus::Retrying),
                    "`{id}` claimed while {:?}",
                    rec.status
                );
                let mut claimed = settle::claim(&step, &rec, "worker", now, LEASE_MS);
                claimed.version = self.write(claimed.clone());
                *self.claims.entry(id.clone()).or_default() += 1;
                let (next, _event) = match self.execute(&step, claimed.attempt) {
                    Exec::Output(v) => settle::succeed(
                        &claimed,
                        ValueRef::Inline { value: v },
                        AttemptMeta::default(),
                        now,
                    ),
                    Exec::Chosen(to) => settle::routed(&claimed, &to, now),
                    Exec::Fail(e) => {
                        let seed = self.snap.header.run_id.clone();
                        settle::fail(&step, &claimed, e, AttemptMeta::default(), now, &seed)
                    }
                };
                self.write(next);
            }
            Action::Skip { reason, .. } => {
                assert_eq!(
                    rec.status,
                    StepStatus::Pending,
                    "`{id}` skipped while {:?}",
                    rec.status
                );
                self.write(settle::skip(&id, &rec, &reason, now).0);
            }
            other => panic!("a sync run never needs {other:?}"),
        }
    }

    /// One wake-up: plan and apply until there is nothing left to do at `now`.
    fn wake(&mut self, now: Millis) {
        for _ in 0..100 {
            if self.ended() {
                return;
            }
            let p = plan(&self.wf, &self.snap, now);
            if let Some(outcome) = p.outcome {
                let h = &mut self.snap.header;
                h.status = match outcome {
                    Outcome::Succeeded => RunStatus::Succeeded,
                    Outcome::Failed(e) => {
                        h.error = Some(e);
                        RunStatus::Failed
                    }
                    Outcome::Cancelled => RunStatus::Cancelled,
                };
                h.ended_at = Some(now);
                h.version += 1;
                return;
            }
            if p.actions.is_empty() {
                return;
            }
            for a in p.actions {
                self.apply(a, now);
            }
        }
        panic!("a wake-up at {now} did not settle after 100 plans");
    }

    /// What must not depend on wake-ups: per step (status, output, attempts, route choice).
    fn result(&self) -> RunResult {
        let steps = self
            .snap
            .steps
            .iter()
            .map(|r| {
                (
                    r.step.clone(),
                    (r.status, r.output.clone(), r.attempt, r.chosen.clone()),
                )
            })
            .collect();
        (self.snap.header.status, steps)
    }
}

/// The reference: one wake-up at the start, then one exactly at each time the planner asks.
fn clean_run() -> Sim {
    let mut sim = Sim::new();
    let mut now = 0;
    for _ in 0..100 {
        sim.wake(now);
        if sim.ended() {
            return sim;
        }
        let p = plan(&sim.wf, &sim.snap, now);
        now = p
            .wake_at
            .expect("an unfinished run with nothing to do says when to wake");
    }
    panic!("the clean run did not end");
}

#[test]
fn clean_run_takes_the_expected_path() {
    let sim = clean_run();
    let (status, steps) = sim.result();
    assert_eq!(status, RunStatus::Succeeded);
    let statuses: BTreeMap<&str, StepStatus> =
        steps.iter().map(|(k, v)| (k.as_str(), v.0)).collect();
    use StepStatus::{Skipped, Succeeded};
    assert_eq!(
        statuses,
        BTreeMap::from([
            ("classify", Succeeded),
            ("triage", Succeeded),
            ("billing", Succeeded),
            ("general", Skipped),
            ("enrich", Succeeded),
            ("enrich.a", Succeeded),
            ("enrich.b", Succeeded),
            ("final", Succeeded),
        ])
    );
    let claims: Vec<(&str, u32)> = sim.claims.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        claims,
        vec![
            ("billing", 2),
            ("classify", 1),
            ("enrich", 1),
            ("enrich.a", 1),
            ("enrich.b", 1),
            ("final", 1),
            ("triage", 1),
        ]
    );
    assert_eq!(
        sim.snap.step("final").and_then(|r| r.output.clone()),
        Some(ValueRef::Inline {
            value: json!({
                "enrich": {
                    "a": {"text": "enrich.a attempt 1", "input": "refund please"},
                    "b": {"label": "billing"},
                },
                "billing": {"text": "billing attempt 2", "input": {"label": "billing", "confidence": 0.9}},
            })
        })
    );
    // The retry waited for its backoff: attempt 2 started 100 ms after attempt 1.
    assert_eq!(
        sim.snap.step("billing").and_then(|r| r.finished_at),
        Some(100)
    );
}

/// Wake-up times: many duplicates, arbitrary order, some very late.
fn wake_times() -> impl Strategy<Value = Vec<Millis>> {
    let t = prop_oneof![
        4 => prop::sample::select(vec![0u64, 0, 1, 50, 99, 100, 101, 250]),
        3 => 0u64..2_000,
        1 => 1_000_000u64..1_000_000_000_000,
    ];
    prop::collection::vec(t, 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any wake-ups (the run's first one included), then one far in the future, end in the
    /// same state as the clean run; and no succeeded step is ever claimed again.
    #[test]
    fn wake_ups_are_harmless(times in wake_times()) {
        let reference = clean_run();
        let mut sim = Sim::new();
        for &t in &times {
            sim.wake(t);
        }
        sim.wake(FAR);
        prop_assert_eq!(sim.result(), reference.result());
        prop_assert_eq!(&sim.claims, &reference.claims);
        // A second far-future wake-up is a no-op.
        let before = sim.snap.clone();
        sim.wake(FAR + 1);
        prop_assert_eq!(sim.snap, before);
    }

    /// The same wake-up delivered again right away changes nothing.
    #[test]
    fn a_duplicate_wake_up_is_a_no_op(times in wake_times()) {
        let mut sim = Sim::new();
        for &t in &times {
            sim.wake(t);
            let before = sim.snap.clone();
            sim.wake(t);
            prop_assert_eq!(&sim.snap, &before);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Planner-only properties over arbitrary snapshots

const STATUSES: [StepStatus; 7] = [
    StepStatus::Pending,
    StepStatus::Running,
    StepStatus::Retrying,
    StepStatus::Waiting,
    StepStatus::Succeeded,
    StepStatus::Failed,
    StepStatus::Skipped,
];

/// One step's record, or none (`status` 7).
#[derive(Debug, Clone)]
struct RecSpec {
    status: usize,
    next_at: Option<Millis>,
    lease_until: Option<Millis>,
    deadline_at: Option<Millis>,
    chosen: usize,
    /// A finished asset job's download pending (kept on any status: the planner must look
    /// at it only on a retrying step).
    download: bool,
}

fn rec_spec() -> impl Strategy<Value = RecSpec> {
    let t = || prop::option::of(0u64..10_000);
    (0usize..8, t(), t(), t(), 0usize..4, any::<bool>()).prop_map(
        |(status, next_at, lease_until, deadline_at, chosen, download)| RecSpec {
            status,
            next_at,
            lease_until,
            deadline_at,
            chosen,
            download,
        },
    )
}

/// A snapshot of the `SIM` + `SIM_WAITS` workflow in an arbitrary (possibly unreachable) state.
fn arbitrary_run() -> impl Strategy<Value = (RunSnapshot, Millis)> {
    let ids: Vec<String> = wf(&format!("{SIM}{SIM_WAITS}"))
        .steps
        .into_iter()
        .map(|s| s.id)
        .collect();
    (
        prop::collection::vec(rec_spec(), ids.len()),
        any::<bool>(),
        prop::option::of(0u64..10_000),
        prop::sample::select(vec![
            RunStatus::Pending,
            RunStatus::Running,
            RunStatus::Waiting,
            RunStatus::Succeeded,
        ]),
        0u64..10_000,
    )
        .prop_map(move |(specs, cancel, deadline, status, now)| {
            let targets = ["billing", "general", "nowhere"];
            let steps = ids
                .iter()
                .zip(specs)
                .filter(|(_, sp)| sp.status < STATUSES.len())
                .map(|(id, sp)| {
                    let mut r = rec(id, STATUSES[sp.status]);
                    r.next_at = sp.next_at;
                    r.lease_until = sp.lease_until;
                    r.deadline_at = sp.deadline_at;
                    r.chosen = targets.get(sp.chosen).map(|t| t.to_string());
                    if sp.download {
                        r.download = Some(crate::state::AssetDownload {
                            output: json!({"url": "https://h/f.png"}),
                            model: "replicate/a/b".into(),
                            failed: 0,
                        });
                    }
                    if r.status == StepStatus::Failed {
                        r.error = Some(StepError::new(ErrorClass::Transient, "x"));
                    }
                    r
                })
                .collect();
            let s = with_header(snap(steps), |h| {
                h.cancel_requested = cancel;
                h.deadline_at = deadline;
                h.status = status;
            });
            (s, now)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plan_is_a_function_of_the_state((s, now) in arbitrary_run()) {
        let w = wf(&format!("{SIM}{SIM_WAITS}"));
        let p = plan(&w, &s, now);
        // Idempotent: planning again gives the same plan.
        prop_assert_eq!(&p, &plan(&w, &s, now));
        // The order records are loaded in does not matter.
        let mut reversed = s.clone();
        reversed.steps.reverse();
        prop_assert_eq!(&p, &plan(&w, &reversed, now));
        // A stored pending record means the same as a missing one.
        let mut sparse = s.clone();
        sparse.steps.retain(|r| r.status != StepStatus::Pending);
        prop_assert_eq!(&p, &plan(&w, &sparse, now));
    }

    #[test]
    fn plans_are_consistent((s, now) in arbitrary_run()) {
        let w = wf(&format!("{SIM}{SIM_WAITS}"));
        let p = plan(&w, &s, now);
        let status = |id: &str| s.step(id).map_or(StepStatus::Pending, |r| r.status);
        let mut seen = BTreeSet::new();
        for a in &p.actions {
            prop_assert!(seen.insert(a.step().to_string()), "two actions for `{}`: {:?}", a.step(), p);
            let st = status(a.step());
            let fits = match a {
                Action::Start { .. } => st == StepStatus::Pending
                    || (st == StepStatus::Retrying
                        && s.step(a.step()).is_some_and(|r| r.download.is_none())),
                Action::Download { .. } => st == StepStatus::Retrying
                    && s.step(a.step()).is_some_and(|r| r.download.is_some()),
                Action::Skip { .. } => st == StepStatus::Pending,
                Action::Expire { .. } => st == StepStatus::Running,
                Action::Poll { .. } | Action::ApprovalTimeout { .. } => st == StepStatus::Waiting,
            };
            prop_assert!(fits, "{:?} for a step that is {:?}", a, st);
            if s.header.cancel_requested {
                prop_assert!(matches!(a, Action::Expire { .. }), "{:?} in a cancelled run", a);
            }
        }
        if p.outcome.is_some() || s.header.status.is_terminal() {
            prop_assert!(p.actions.is_empty(), "{:?}", p);
        }
        // Never a wake-up in the past without something to do (no busy loop).
        if p.wake_at.is_some_and(|t| t <= now) {
            prop_assert!(!p.actions.is_empty(), "wake_at in the past with nothing to do: {:?}", p);
        }
    }
}

/// A model call starts only when its attempt timeout and the margin fit before the deadline;
/// everything else needs only the margin; without a deadline everything fits.
#[test]
fn actions_fit_before_an_invocation_deadline() {
    let wf = crate::workflow::compile(
        "name: d\nversion: \"1\"\nsteps:\n  - {id: m, model: local/echo, input: x, timeout: 10s}\n  - {id: t, kind: transform, value: 1}\n",
        &crate::workflow::NoFiles,
        &[crate::model::ModelInfo {
            id: "local/echo".into(),
            roles: vec![crate::model::Role::Generation],
            asynchronous: false,
            description: String::new(),
        }],
    )
    .unwrap();
    let start = |s: &str| Action::Start { step: s.into() };
    // (action, now, deadline, fits) with a 1 s margin
    let table = [
        (start("m"), 0, None, true),
        (start("m"), 0, Some(11_001), true),
        (start("m"), 0, Some(11_000), false),
        (start("m"), 5_000, Some(15_000), false),
        (start("t"), 0, Some(1_001), true),
        (start("t"), 0, Some(1_000), false),
        (Action::Poll { step: "m".into() }, 0, Some(2_000), true),
        // A download needs its own bound (30 s), whatever the step's timeout.
        (Action::Download { step: "m".into() }, 0, Some(31_001), true),
        (
            Action::Download { step: "m".into() },
            0,
            Some(31_000),
            false,
        ),
    ];
    for (action, now, deadline, fits) in table {
        assert_eq!(
            crate::planner::fits_before_deadline(&wf, &action, now, deadline, 1_000),
            fits,
            "{action:?} at {now} before {deadline:?}"
        );
    }
}

/// The timer re-send rule: a re-park that keeps the queued timer's time sends none, unless the
/// wake-up being handled was that timer (or a resume, which queued none).
#[test]
fn timers_are_sent_once_per_wait() {
    use crate::state::WakeReason::*;
    // (reason, prev_wait_until, wake_at, send)
    let table = [
        (Start, None, Some(10), true),
        (Webhook, Some(10), Some(10), false),
        (Approval, Some(10), Some(10), false),
        (Timer, Some(10), Some(10), true),
        (Resume, Some(10), Some(10), true),
        (Webhook, Some(10), Some(20), true),
        (Webhook, Some(10), None, false),
        (Timer, None, None, false),
    ];
    for (reason, prev, at, send) in table {
        assert_eq!(
            crate::planner::must_send_timer(reason, prev, at),
            send,
            "{reason:?} {prev:?} {at:?}"
        );
    }
}
