//! Which steps a rerun reuses, by table; refusals; the reused record.

use super::{default_from, plan, reused_record, Refusal};
use crate::state::{
    RunHeader, RunSnapshot, RunStatus, StepRecord, StepStatus, ValueRef, WorkflowPin,
};
use crate::workflow::{compile, NoFiles, Workflow};
use serde_json::{json, Value};

fn wf(src: &str) -> Workflow {
    let indent = src
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let src: Vec<&str> = src.lines().map(|l| l.get(indent..).unwrap_or("")).collect();
    match compile(&src.join("\n"), &NoFiles, &[]) {
        Ok(w) => w,
        Err(d) => panic!("{d:#?}"),
    }
}

/// a → b → c, and d (needs only a).
const CHAIN: &str = r#"
    name: chain
    version: "1"
    steps:
      - {id: a, kind: transform, value: 1}
      - {id: b, kind: transform, value: "${steps.a.output}"}
      - {id: c, kind: transform, value: "${steps.b.output}"}
      - {id: d, kind: transform, needs: [a], value: 4}
"#;

/// A route choosing between x and y, then a parallel step with two branches.
const BRANCHY: &str = r#"
    name: branchy
    version: "1"
    steps:
      - {id: a, kind: transform, value: billing}
      - id: r
        kind: route
        routes:
          - when: {path: steps.a.output, equals: billing}
            to: x
        default: y
      - {id: x, kind: transform, value: x}
      - {id: y, kind: transform, value: y}
      - id: fan
        kind: parallel
        needs: [a]
        branches:
          p: {kind: transform, value: 1}
          q: {kind: transform, value: 2}
      - {id: z, kind: transform, needs: [a], value: z}
"#;

fn rec(step: &str, status: StepStatus) -> StepRecord {
    let mut r = StepRecord::pending(step);
    r.status = status;
    r.attempt = 1;
    r.output = Some(ValueRef::Inline {
        value: json!(format!("{step}-out")),
    });
    r.cost_usd = 0.25;
    r.latency_ms = 900;
    r.version = 3;
    r
}

fn old_run(status: RunStatus, steps: &[(&str, StepStatus)]) -> RunSnapshot {
    RunSnapshot {
        header: RunHeader {
            run_id: "run_old".into(),
            tenant: "acme".into(),
            workflow: WorkflowPin {
                name: "w".into(),
                version: "1".into(),
                hash: "0".repeat(64),
            },
            status,
            input: ValueRef::Inline { value: json!({}) },
            output: None,
            error: None,
            created_at: 0,
            updated_at: 0,
            ended_at: Some(1),
            deadline_at: None,
            wait: None,
            cancel_requested: false,
            lease: None,
            callback_url: None,
            metadata: Value::Null,
            traceparent: None,
            rerun_of: None,
            reruns: Vec::new(),
            version: 9,
        },
        steps: steps.iter().map(|(s, st)| rec(s, *st)).collect(),
    }
}

use StepStatus::{Failed as F, Pending as P, Skipped as K, Succeeded as S};

/// (workflow, old step statuses, from, expected from, expected reused)
type Case<'a> = (
    &'a Workflow,
    Vec<(&'a str, StepStatus)>,
    Option<&'a str>,
    &'a str,
    Vec<&'a str>,
);

#[test]
fn what_a_rerun_reuses() {
    let chain = wf(CHAIN);
    let branchy = wf(BRANCHY);
    let branches: Vec<String> = branchy
        .steps
        .iter()
        .filter(|s| s.parent.as_deref() == Some("fan"))
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(branches.len(), 2);
    let (p, q) = (branches[0].as_str(), branches[1].as_str());
    // (workflow, old step statuses, from, expected from, expected reused)
    let table: Vec<Case> = vec![
        // The default: the first failed step; what it does not feed is reused.
        (
            &chain,
            vec![("a", S), ("b", F), ("d", S)],
            None,
            "b",
            vec!["a", "d"],
        ),
        // Named: everything downstream of a reruns.
        (
            &chain,
            vec![("a", S), ("b", F), ("d", S)],
            Some("a"),
            "a",
            vec![],
        ),
        // From a succeeded step: it and what follows it rerun.
        (
            &chain,
            vec![("a", S), ("b", S), ("c", S), ("d", S)],
            Some("c"),
            "c",
            vec!["a", "b", "d"],
        ),
        // A cancelled run with nothing failed: the first step that did not finish.
        (&chain, vec![("a", S), ("b", P)], None, "b", vec!["a"]),
        // A failed step that does not depend on `from` is not reused: it runs again.
        (
            &chain,
            vec![("a", S), ("b", S), ("c", F), ("d", F)],
            Some("c"),
            "c",
            vec!["a", "b"],
        ),
        // A route reruns with its targets (the branch not taken was skipped there).
        (&branchy, vec![("a", S), ("r", F)], None, "r", vec!["a"]),
        (
            &branchy,
            vec![
                ("a", S),
                ("r", S),
                ("x", S),
                ("y", K),
                (p, S),
                (q, F),
                ("z", S),
            ],
            None,
            q,
            vec!["a", "r", "x", "y", "z"],
        ),
        // A branch reruns its parallel step; the parallel step reruns its branches.
        (
            &branchy,
            vec![
                ("a", S),
                ("r", S),
                ("x", S),
                ("y", K),
                ("fan", F),
                (p, S),
                (q, S),
                ("z", S),
            ],
            Some("fan"),
            "fan",
            vec!["a", "r", "x", "y", "z"],
        ),
    ];
    for (i, (w, steps, from, want_from, want)) in table.into_iter().enumerate() {
        let status = if steps.iter().any(|(_, s)| *s == F) {
            RunStatus::Failed
        } else {
            RunStatus::Cancelled
        };
        let old = old_run(status, &steps);
        let (got_from, reused) = plan(w, w, &old, from).unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!(got_from, want_from, "case {i}");
        assert_eq!(reused, want, "case {i}");
    }
}

#[test]
fn refusals_say_why() {
    let chain = wf(CHAIN);
    let running = old_run(RunStatus::Running, &[("a", S)]);
    assert_eq!(
        plan(&chain, &chain, &running, None),
        Err(Refusal::NotEnded("run_old".into()))
    );
    let all_done = old_run(
        RunStatus::Succeeded,
        &[("a", S), ("b", S), ("c", S), ("d", S)],
    );
    assert_eq!(default_from(&chain, &all_done), None);
    assert_eq!(
        plan(&chain, &chain, &all_done, None),
        Err(Refusal::NothingToRerun("run_old".into()))
    );
    let e = plan(&chain, &chain, &all_done, Some("nope")).unwrap_err();
    assert!(e.to_string().contains("has no step `nope`"), "{e}");

    // On another version: allowed while the reused steps are the same, refused otherwise.
    let failed = old_run(RunStatus::Failed, &[("a", S), ("b", F), ("d", S)]);
    let v2_same = wf(&CHAIN
        .replace(r#"version: "1""#, r#"version: "2""#)
        .replace("value: \"${steps.b.output}\"", "value: changed"));
    assert_eq!(
        plan(&chain, &v2_same, &failed, None).unwrap(),
        ("b".into(), vec!["a".into(), "d".into()])
    );
    let v2_changed = wf(&CHAIN
        .replace(r#"version: "1""#, r#"version: "2""#)
        .replace("value: 4", "value: 5"));
    let e = plan(&chain, &v2_changed, &failed, None).unwrap_err();
    assert_eq!(
        e,
        Refusal::Changed {
            step: "d".into(),
            old: "1".into(),
            new: "2".into()
        }
    );
    assert!(e.to_string().contains("step `d` differs"), "{e}");
    // From a, everything reruns and nothing changed is reused: allowed.
    assert_eq!(
        plan(&chain, &v2_changed, &failed, Some("a")).unwrap(),
        ("a".into(), vec![])
    );
    let v2_no_b = wf(r#"
        name: chain
        version: "2"
        steps:
          - {id: a, kind: transform, value: 1}
          - {id: d, kind: transform, needs: [a], value: 4}
    "#);
    let e = plan(&chain, &v2_no_b, &failed, None).unwrap_err();
    assert!(e.to_string().contains("version `2` has no step `b`"), "{e}");
}

#[test]
fn a_reused_record_keeps_the_result_and_charges_nothing() {
    let old = rec("a", S);
    let r = reused_record(&old, "run_old", 5_000);
    assert_eq!(r.status, S);
    assert_eq!(r.output, old.output);
    assert_eq!(r.reused_from.as_deref(), Some("run_old"));
    assert_eq!((r.cost_usd, r.latency_ms, r.usage), (0.0, 0, None));
    assert_eq!((r.started_at, r.finished_at), (Some(5_000), Some(5_000)));
    assert_eq!(r.version, 0, "not stored yet");
}
