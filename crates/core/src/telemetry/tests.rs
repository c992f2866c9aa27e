//! Which metrics each write produces, table-driven over the history events that carry them.

use super::*;
use crate::error::ErrorClass;
use crate::model::{ModelInfo, Role};
use crate::state::{RunError, RunHeader, Usage, ValueRef, WorkflowPin};
use crate::workflow::{compile, NoFiles};
use serde_json::json;

const WF: &str = r#"
name: wf
version: "1"
input_schema: {type: object}
steps:
  - id: draft
    model: local/gen
    fallback: [local/other]
    prompt: {version: p@1, template: "x"}
  - id: check
    kind: validate
    value: "${steps.draft.output}"
    schema: {type: object}
"#;

fn wf() -> Workflow {
    let models = vec![
        ModelInfo {
            id: "local/gen".into(),
            roles: vec![Role::Generation],
            asynchronous: false,
            description: String::new(),
        },
        ModelInfo {
            id: "local/other".into(),
            roles: vec![Role::Generation],
            asynchronous: false,
            description: String::new(),
        },
    ];
    match compile(WF, &NoFiles, &models) {
        Ok(w) => w,
        Err(e) => panic!("{e:?}"),
    }
}

fn rec(step: &str) -> StepRecord {
    let mut r = StepRecord::pending(step);
    r.started_at = Some(1_000);
    r.model = Some("local/gen".into());
    r.latency_ms = 120;
    r.cost_usd = 0.002;
    r.usage = Some(Usage {
        cache_read_tokens: 20,
        reasoning_tokens: 3,
        ..Usage::new(50, 7)
    });
    r
}

fn ev(kind: EventKind, step: &str, detail: Value) -> HistoryEvent {
    HistoryEvent::step(4_000, kind, step, 1, detail)
}

/// `name{dims}=value` of each metric, in order.
fn show(ms: &[Metric]) -> Vec<String> {
    ms.iter()
        .map(|m| format!("{}{{{}}}={}", m.def.name, m.dims.join(","), m.value))
        .collect()
}

#[test]
fn each_step_event_gives_its_metrics() {
    let cases: Vec<(&str, &str, HistoryEvent, Vec<&str>)> = vec![
        (
            "a start is an attempt",
            "draft",
            ev(EventKind::StepStarted, "draft", Value::Null),
            vec!["attempts{wf,draft,local,local/gen}=1"],
        ),
        (
            "a retry is a failure of its class; malformed is the output schema refusing",
            "draft",
            ev(
                EventKind::StepRetryScheduled,
                "draft",
                json!({"class": "malformed", "model": "local/gen"}),
            ),
            vec![
                "retries{wf,draft,local,local/gen,malformed}=1",
                "failures{wf,draft,local,local/gen,malformed}=1",
                "validation_failures{wf,draft,output_schema}=1",
            ],
        ),
        (
            "a fallback names both models, the failure is the first's",
            "draft",
            ev(
                EventKind::StepFallback,
                "draft",
                json!({"class": "transient", "from": "local/gen", "to": "local/other"}),
            ),
            vec![
                "fallbacks{wf,draft,local/gen,local/other,transient}=1",
                "failures{wf,draft,local,local/gen,transient}=1",
            ],
        ),
        (
            "a success ends the step: duration, provider latency, cost, tokens by kind",
            "draft",
            ev(EventKind::StepSucceeded, "draft", Value::Null),
            vec![
                "steps_ended{wf,draft,succeeded,none}=1",
                "step_duration_ms{wf,draft,succeeded}=3000",
                "provider_latency_ms{wf,draft,local,local/gen}=120",
                "cost_usd{wf,draft,local,local/gen}=0.002",
                "tokens{wf,draft,local,local/gen,input}=50",
                "tokens{wf,draft,local,local/gen,output}=7",
                "tokens{wf,draft,local,local/gen,cache_read}=20",
                "tokens{wf,draft,local,local/gen,reasoning}=3",
            ],
        ),
        (
            "a validate step's final malformed is a validation failure of `validate`",
            "check",
            ev(
                EventKind::StepFailed,
                "check",
                json!({"class": "malformed"}),
            ),
            vec![
                "steps_ended{wf,check,failed,malformed}=1",
                "failures{wf,check,local,local/gen,malformed}=1",
                "validation_failures{wf,check,validate}=1",
                "step_duration_ms{wf,check,failed}=3000",
                "provider_latency_ms{wf,check,local,local/gen}=120",
                "cost_usd{wf,check,local,local/gen}=0.002",
                "tokens{wf,check,local,local/gen,input}=50",
                "tokens{wf,check,local,local/gen,output}=7",
                "tokens{wf,check,local,local/gen,cache_read}=20",
                "tokens{wf,check,local,local/gen,reasoning}=3",
            ],
        ),
        (
            "a repair request, escalated",
            "check",
            ev(
                EventKind::StepRepairRequested,
                "check",
                json!({"target": "draft", "escalated_to": "local/other"}),
            ),
            vec![
                "repairs{wf,check}=1",
                "validation_failures{wf,check,validate}=1",
                "escalations{wf,draft,local/other}=1",
            ],
        ),
        (
            "a judge's verdict and score",
            "check",
            ev(
                EventKind::StepJudged,
                "check",
                json!({"pass": false, "verdict": {"pass": false, "score": 0.25}}),
            ),
            vec![
                "judge_verdicts{wf,check,fail}=1",
                "judge_score{wf,check}=0.25",
            ],
        ),
        (
            "a lost attempt",
            "draft",
            ev(EventKind::StepLeaseExpired, "draft", Value::Null),
            vec!["lost_attempts{wf,draft}=1"],
        ),
        (
            "a skip ends the step and measures nothing else",
            "draft",
            ev(EventKind::StepSkipped, "draft", Value::Null),
            vec!["steps_ended{wf,draft,skipped,none}=1"],
        ),
        (
            "a waiting step reports nothing yet",
            "draft",
            ev(EventKind::StepWaiting, "draft", Value::Null),
            vec![],
        ),
    ];
    let w = wf();
    for (what, step, event, want) in cases {
        let got = step_metrics(&w, "run_1", &rec(step), std::slice::from_ref(&event));
        assert_eq!(show(&got), want, "{what}");
        assert!(
            got.iter().all(|m| m.run_id.as_deref() == Some("run_1")),
            "{what}: the run id rides along as a property"
        );
        for m in &got {
            assert_eq!(m.dims.len(), m.def.dims.len(), "{what}: {}", m.def.name);
        }
    }
}

#[test]
fn a_run_end_gives_its_outcome_class_and_duration() {
    let header = |status: RunStatus, error: Option<RunError>| RunHeader {
        run_id: "run_9".into(),
        tenant: "t".into(),
        workflow: WorkflowPin {
            name: "wf".into(),
            version: "1".into(),
            hash: "h".into(),
        },
        status,
        input: ValueRef::Inline { value: json!({}) },
        output: None,
        error,
        created_at: 1_000,
        updated_at: 9_000,
        ended_at: Some(9_000),
        deadline_at: None,
        wait: None,
        cancel_requested: false,
        lease: None,
        callback_url: None,
        metadata: Value::Null,
        traceparent: None,
        rerun_of: None,
        reruns: Vec::new(),
        version: 3,
    };
    let failed = RunError {
        class: ErrorClass::Timeout,
        message: "x".into(),
        step: None,
    };
    let cases = [
        (
            header(RunStatus::Succeeded, None),
            vec![
                "runs_ended{wf,succeeded,none}=1",
                "run_duration_ms{wf,succeeded}=8000",
            ],
        ),
        (
            header(RunStatus::Failed, Some(failed)),
            vec![
                "runs_ended{wf,failed,timeout}=1",
                "run_duration_ms{wf,failed}=8000",
            ],
        ),
    ];
    for (h, want) in cases {
        assert_eq!(show(&run_end_metrics(&h)), want);
    }
}

#[test]
fn every_metric_is_listed_once_with_bounded_dimensions() {
    let mut names: Vec<&str> = ALL.iter().map(|d| d.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), ALL.len(), "a metric name is listed twice");
    for d in ALL {
        assert!(
            !d.dims.contains(&"run_id"),
            "{}: a run id is never a dimension",
            d.name
        );
        // EMF: at most 30 dimensions in a set; a rollup is a subset of the full set.
        assert!(d.dims.len() <= 30, "{}", d.name);
        for r in d.rollups {
            assert!(
                r.iter().all(|x| d.dims.contains(x)),
                "{}: rollup {r:?}",
                d.name
            );
        }
        assert!(
            d.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{}: a Prometheus-safe name",
            d.name
        );
    }
}

#[test]
fn queue_lag_is_measured_from_when_the_wake_up_was_due() {
    assert_eq!(queue_lag("timer", 1_000, 1_250).value, 250.0);
    // A wake-up handled early (clock skew between hosts) is no lag, not a negative one.
    assert_eq!(queue_lag("timer", 1_000, 900).value, 0.0);
}

/// docs/operations.md lists every metric with its dimensions: the table users read cannot
/// drift from the one the code reports.
#[test]
fn every_metric_is_documented_with_its_dimensions() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/operations.md"
    ))
    .unwrap();
    for d in ALL {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", d.name)))
            .unwrap_or_else(|| panic!("docs/operations.md has no row for `{}`", d.name));
        let dims = if d.dims.is_empty() {
            "—".to_string()
        } else {
            d.dims.join(", ")
        };
        assert!(
            row.contains(&format!("| {dims} |")),
            "{}: dimensions {dims} in {row}",
            d.name
        );
        assert!(
            row.contains(&format!("| {} |", d.unit.as_str())),
            "{}: unit in {row}",
            d.name
        );
    }
}

#[test]
fn trace_attribute_values() {
    use super::attr;
    // gen_ai.operation.name by role.
    assert_eq!(attr::operation(Role::Generation), "chat");
    assert_eq!(attr::operation(Role::Classification), "chat");
    assert_eq!(attr::operation(Role::Embedding), "embeddings");
    assert_eq!(attr::operation(Role::Retrieval), "retrieval");
    assert_eq!(attr::operation(Role::Asset), "generate_content");
    // gen_ai.provider.name: the conventions' well-known values where they differ.
    assert_eq!(attr::provider_name("bedrock"), "aws.bedrock");
    assert_eq!(attr::provider_name("openai"), "openai");
    assert_eq!(attr::provider_name("local"), "local");
    // gen_ai.request.model: the provider's own name of the model.
    assert_eq!(attr::model_name("openai/gpt-4o-mini"), "gpt-4o-mini");
    assert_eq!(
        attr::model_name("bedrock/anthropic.claude-3-haiku"),
        "anthropic.claude-3-haiku"
    );
    assert_eq!(attr::model_name("bare"), "bare");
    // gen_ai.prompt.name / .version.
    assert_eq!(
        attr::prompt_name_version("incident-brief@2"),
        (Some("incident-brief"), "2")
    );
    assert_eq!(attr::prompt_name_version("v3"), (None, "v3"));
    assert_eq!(attr::prompt_name_version("@2"), (None, "@2"));
    assert_eq!(attr::prompt_name_version("name@"), (None, "name@"));
}

#[test]
fn only_well_formed_traceparents_are_kept() {
    use super::attr::valid_traceparent;
    assert!(valid_traceparent(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ));
    assert!(valid_traceparent(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    ));
    for bad in [
        "",
        "garbage",
        // All-zero ids are invalid.
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        // Version ff is forbidden; lengths and hex are checked.
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ] {
        assert!(!valid_traceparent(bad), "{bad}");
    }
}
