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

#[tokio::test]
async fn stats_page_through_more_runs_than_one_listing_page() {
    let h = H::new();
    let tiny = h.compile(TINY);
    let n = MAX_LIST_LIMIT + 3;
    for i in 0..n {
        h.start_wf(&tiny, json!({"n": i})).await;
    }
    let s = stats(&h, ListScope::Tenant(TENANT.into()), None, "24h").await;
    assert_eq!(s.runs, n as u64);
    assert!(!s.truncated);
    assert_eq!(s.workflows[0].running, n as u64);
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
