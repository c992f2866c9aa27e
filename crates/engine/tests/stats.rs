//! `Engine::stats` over the embedded backend: the tenant scope, the time window, the workflow
//! filter, paging past one listing page, and figures read from driven runs (retries,
//! fallbacks, repairs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

mod support;

use serde_json::json;
use support::{H, T0, TENANT};
use switchyard_core::ports::{ListScope, MAX_LIST_LIMIT};
use switchyard_core::state::RunStatus;
use switchyard_engine::stats::{Stats, StatsQuery};

const TINY: &str = r#"
    name: tiny
    version: "1"
    steps:
      - {id: a, kind: transform, value: "${input.n}"}
"#;

async fn stats(h: &H, scope: ListScope, workflow: Option<&str>, since: &str) -> Stats {
    let q = StatsQuery::parse(scope, workflow, Some(since)).unwrap();
    h.engine.stats(&q).await.unwrap()
}

#[tokio::test]
async fn stats_keep_to_the_tenant_the_window_and_the_workflow() {
    let h = H::new();
    let tiny = h.compile(TINY);
    let other = h.compile(&TINY.replace("name: tiny", "name: other"));
    // Two hours ago: one run of each tenant.
    let old = h.start_wf(&tiny, json!({"n": 0})).await;
    h.drive(&old).await;
    h.engine
        .start_workflow("globex", &tiny, H::request(&tiny, json!({"n": 0})), None)
        .await
        .unwrap();
    // Now: three of acme's (two `tiny`, one `other`), two of globex's.
    h.clock.set(T0 + 2 * 3_600_000);
    for n in 1..=2 {
        let run = h.start_wf(&tiny, json!({"n": n})).await;
        assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    }
    let run = h.start_wf(&other, json!({"n": 3})).await;
    h.drive(&run).await;
    for n in 1..=2 {
        h.engine
            .start_workflow("globex", &tiny, H::request(&tiny, json!({"n": n})), None)
            .await
            .unwrap();
    }
    // (scope, workflow, since, runs, workflows)
    let acme = || ListScope::Tenant(TENANT.into());
    let globex = || ListScope::Tenant("globex".into());
    let table = [
        (acme(), None, "1h", 3, vec!["other", "tiny"]),
        (acme(), None, "3h", 4, vec!["other", "tiny"]),
        (acme(), Some("tiny"), "3h", 3, vec!["tiny"]),
        (acme(), Some("nothing"), "3h", 0, vec![]),
        (globex(), None, "1h", 2, vec!["tiny"]),
        (globex(), None, "3h", 3, vec!["tiny"]),
        (ListScope::AllTenants, None, "1h", 5, vec!["other", "tiny"]),
        (ListScope::AllTenants, None, "7d", 7, vec!["other", "tiny"]),
    ];
    for (scope, workflow, since, runs, workflows) in table {
        let case = format!("{scope:?} {workflow:?} {since}");
        let s = stats(&h, scope.clone(), workflow, since).await;
        assert_eq!(s.runs, runs, "{case}");
        let names: Vec<&str> = s.workflows.iter().map(|w| w.workflow.as_str()).collect();
        assert_eq!(names, workflows, "{case}");
        assert_eq!(s.tenant.as_deref(), scope.tenant(), "{case}");
        assert_eq!(
            (s.window.to, s.window.since.as_str()),
            (h.now(), since),
            "{case}"
        );
    }
    // Globex's runs were never driven: counted, as running, with no outcome rates.
    let s = stats(&h, globex(), None, "1h").await;
    let w = &s.workflows[0];
    assert_eq!((w.running, w.ended, w.success_rate), (2, 0, None));
    assert!(w.steps.is_empty(), "no step of theirs started: {w:?}");
    // Acme's two recent `tiny` runs ran their one step.
    let s = stats(&h, acme(), Some("tiny"), "1h").await;
    let w = &s.workflows[0];
    assert_eq!((w.succeeded, w.success_rate), (2, Some(1.0)));
    assert_eq!((w.steps[0].step.as_str(), w.steps[0].executions), ("a", 2));
}

/// Runs in flight are counted from the `started` counters, whatever their number; only the
/// split between waiting and running reads their headers (one page), and says `truncated`
/// when there were more.
#[tokio::test]
async fn stats_count_more_runs_in_flight_than_one_listing_page() {
    let h = H::new();
    let tiny = h.compile(TINY);
    let n = MAX_LIST_LIMIT + 3;
    for i in 0..n {
        h.start_wf(&tiny, json!({"n": i})).await;
    }
    let s = stats(&h, ListScope::Tenant(TENANT.into()), None, "24h").await;
    assert_eq!(s.runs, n as u64);
    assert!(s.truncated, "more in flight than one page of headers");
    let w = &s.workflows[0];
    assert_eq!((w.running, w.waiting, w.ended), (n as u64, 0, 0));
    // Once they end (driving one drains the queue: all of them), nothing is in flight.
    let listed = h
        .engine
        .list_runs(&switchyard_core::ports::RunQuery::new(
            ListScope::Tenant(TENANT.into()),
            1,
        ))
        .await
        .unwrap();
    h.drive(&listed.runs[0].run_id).await;
    let s = stats(&h, ListScope::Tenant(TENANT.into()), None, "24h").await;
    let w = &s.workflows[0];
    assert_eq!((s.runs, w.ended, w.running), (n as u64, n as u64, 0));
    assert!(!s.truncated);
    assert_eq!(w.steps[0].executions, n as u64);
}

/// Figures read from driven runs: a retried fallback and a repaired validation.
#[tokio::test]
async fn stats_read_retries_fallbacks_and_repairs_from_the_records() {
    let h = H::new();
    let fallback = r#"
        name: fallback
        version: "1"
        steps:
          - id: gen
            model: local/template-generator
            fallback: [local/echo]
            input: "hello"
            retry: {max_attempts: 2, initial_backoff: 100ms, jitter: false}
            params:
              template: "primary"
              fault: {kind: transient, times: 99, model: local/template-generator}
    "#;
    let repair = r#"
        name: repair
        version: "1"
        steps:
          - id: draft
            model: local/template-generator
            input: "${input.topic}"
            params:
              format: json
              template: '{% if attempt > 1 %}{"title": "fixed"}{% else %}{"title": 5}{% endif %}'
          - id: check
            kind: validate
            value: "${steps.draft.output.json}"
            schema:
              type: object
              required: [title]
              properties:
                title: {type: string}
            repair: {step: draft, max_attempts: 2}
    "#;
    let (_, st) = h.run(fallback, json!({})).await;
    assert_eq!(st, RunStatus::Succeeded);
    let (_, st) = h.run(repair, json!({"topic": "t"})).await;
    assert_eq!(st, RunStatus::Succeeded);
    let s = stats(&h, ListScope::Tenant(TENANT.into()), None, "24h").await;
    let by_name = |name: &str| s.workflows.iter().find(|w| w.workflow == name).unwrap();
    let gen = &by_name("fallback").steps[0];
    assert_eq!(
        (
            gen.retry_rate,
            gen.fallback_rate,
            gen.validation_failure_rate
        ),
        (1.0, 1.0, None)
    );
    assert_eq!(gen.answered_by.get("local/echo"), Some(&1));
    let w = by_name("repair");
    let names: Vec<&str> = w.steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(names, ["draft", "check"]);
    assert_eq!(w.steps[1].validation_failure_rate, Some(1.0));
    assert_eq!(w.steps[0].retry_rate, 1.0, "the draft was asked again");
    assert_eq!(w.steps[0].validation_failure_rate, None);
}

async fn stats_by(h: &H, by: &str) -> Stats {
    let q = StatsQuery::parse(ListScope::Tenant(TENANT.into()), None, Some("24h"))
        .unwrap()
        .with_by(Some(by))
        .unwrap();
    h.engine.stats(&q).await.unwrap()
}

/// `by`: a step's prompt versions (two definitions of one workflow) and models side by side,
/// each equal to a hand count over the step records (executions, cost, tokens); a run waiting
/// for a person is counted as waiting, and its steps not yet.
#[tokio::test]
async fn stats_by_prompt_version_and_model_add_up_the_records() {
    let h = H::new();
    let v1 = r#"
        name: copy
        version: "1"
        steps:
          - id: gen
            model: local/template-generator
            prompt: {version: "copy@1", template: "write"}
            input: "${input.topic}"
            params: {template: "short {{ input }}"}
    "#;
    let v2 = v1
        .replace("copy@1", "copy@2")
        .replace("version: \"1\"", "version: \"2\"")
        .replace("short", "a much longer answer about");
    let mut runs: Vec<(String, &str)> = Vec::new();
    for (yaml, version, n) in [(v1, "copy@1", 2), (v2.as_str(), "copy@2", 3)] {
        for i in 0..n {
            let (run, st) = h.run(yaml, json!({"topic": format!("t{i}")})).await;
            assert_eq!(st, RunStatus::Succeeded);
            runs.push((run, version));
        }
    }
    let gated = r#"
        name: gated
        version: "1"
        steps:
          - {id: ok, kind: approval, deadline: 1h, on_timeout: reject}
    "#;
    let (_, st) = h.run(gated, json!({})).await;
    assert_eq!(st, RunStatus::Waiting);

    // The hand count from the records: version → (executions, cost, input, output tokens).
    let mut want: std::collections::BTreeMap<&str, (u64, f64, u64, u64)> = Default::default();
    for (run, version) in &runs {
        let r = h.rec(run, "gen").await;
        let u = r.usage.unwrap_or_default();
        let e = want.entry(version).or_default();
        e.0 += 1;
        e.1 += r.cost_usd;
        e.2 += u.input_tokens;
        e.3 += u.output_tokens;
    }
    let s = stats_by(&h, "prompt_version").await;
    assert_eq!(s.by.map(|b| b.as_str()), Some("prompt_version"));
    let got: Vec<(&str, &str, u64)> = s
        .variants
        .iter()
        .map(|v| (v.step.as_str(), v.variant.as_str(), v.executions))
        .collect();
    assert_eq!(got, [("gen", "copy@1", 2), ("gen", "copy@2", 3)]);
    for v in &s.variants {
        let (n, cost, input, output) = want[v.variant.as_str()];
        assert_eq!(v.executions, n);
        assert!((v.cost_usd - cost).abs() < 1e-9, "{v:?}");
        assert_eq!(
            (v.tokens.get("input"), v.tokens.get("output")),
            (Some(&input), Some(&output)),
            "{v:?}"
        );
        assert_eq!(
            (v.success_rate, v.validation_failure_rate),
            (Some(1.0), None)
        );
    }
    let (total_in, total_out) = want.values().fold((0, 0), |a, w| (a.0 + w.2, a.1 + w.3));
    let copy = s.workflows.iter().find(|w| w.workflow == "copy").unwrap();
    assert_eq!(copy.tokens.get("input"), Some(&total_in));
    assert_eq!(copy.steps[0].tokens.get("output"), Some(&total_out));
    // By model: one model answered all five.
    let s = stats_by(&h, "model").await;
    let got: Vec<(&str, &str, u64)> = s
        .variants
        .iter()
        .map(|v| (v.step.as_str(), v.variant.as_str(), v.executions))
        .collect();
    assert_eq!(got, [("gen", "local/template-generator", 5)]);
    // The run at its approval gate waits; its step is not counted until the run ends.
    let gated = s.workflows.iter().find(|w| w.workflow == "gated").unwrap();
    assert_eq!((gated.runs, gated.waiting, gated.running), (1, 1, 0));
    assert!(gated.steps.is_empty(), "{gated:?}");
    // Without `by`, no variants.
    let plain = stats(&h, ListScope::Tenant(TENANT.into()), None, "24h").await;
    assert_eq!((plain.by, plain.variants.len()), (None, 0));
    // A `by` of anything else is refused, naming the field.
    let bad = StatsQuery::parse(ListScope::AllTenants, None, None)
        .unwrap()
        .with_by(Some("tenant"));
    assert!(matches!(bad, Err(e) if e.field() == Some("by")));
}
