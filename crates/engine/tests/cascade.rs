//! Engine tests of cost-aware model choice (`switchyard_core::machine::cascade`): cascades that
//! escalate on a condition of the answer, on an error, on a schema or a judge failing, and
//! `select` picking a model by the run and the price table's estimate. Whole runs on the
//! embedded backend with the local models and a manual clock, like `engine.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

mod support;

use proptest::prelude::*;
use serde_json::{json, Value};
use support::{close, local_price, H, REASONS};
use switchyard_core::state::{EventKind, RunStatus, WakeReason};
use switchyard_engine::worker::Handled;

const KEYWORDS: &str = "local/keyword-classifier";
const EXAMPLES: &str = "local/example-classifier";

/// A two-tier classifier cascade; `extra` goes under the first tier (its `escalate_if`).
fn cascade_wf(first_tier_extra: &str, step_extra: &str) -> String {
    format!(
        r#"
        name: cascade
        version: "1"
        steps:
          - id: classify
            role: classification
            input: "${{input.text}}"
            {step_extra}
            cascade:
              - model: local/keyword-classifier
                params: {{labels: {{billing: [invoice, refund, charged], shipping: [delivery, tracking]}}}}
                {first_tier_extra}
              - model: local/example-classifier
                params:
                  examples:
                    billing: [I paid twice and want my money back]
                    shipping: [my parcel never arrived, the courier left the package next door]
        output: "${{steps.classify.output}}"
        "#
    )
}

const UNSURE: &str =
    "escalate_if: [{path: output.label, equals: other}, {path: output.confidence, lt: 0.8}]";

#[tokio::test]
async fn a_cascade_escalates_only_when_its_condition_holds() {
    // (text, answering model, label, escalation reason)
    let table = [
        (
            "I was charged twice on my invoice, please refund",
            KEYWORDS,
            "billing",
            None,
        ),
        (
            "my parcel never arrived, the courier says so",
            EXAMPLES,
            "shipping",
            Some("output.label = \"other\" (equals \"other\")"),
        ),
        (
            "refund the delivery, I paid twice",
            EXAMPLES,
            "billing",
            Some("output.confidence = 0.5 (lt 0.8)"),
        ),
    ];
    for (text, model, label, reason) in table {
        let h = H::new();
        let (run, status) = h.run(&cascade_wf(UNSURE, ""), json!({"text": text})).await;
        assert_eq!(status, RunStatus::Succeeded, "{text}");
        let rec = h.rec(&run, "classify").await;
        assert_eq!(rec.model.as_deref(), Some(model), "{text}");
        assert_eq!(h.run_output(&run).await["label"], label, "{text}");
        let escalated = h
            .step_events(&run, EventKind::StepEscalated, "classify")
            .await;
        assert_eq!(rec.escalations.len(), escalated.len(), "{text}");
        match reason {
            None => {
                assert!(rec.escalations.is_empty(), "{text}");
                assert_eq!(rec.attempt, 1);
            }
            Some(reason) => {
                let e = &rec.escalations[0];
                assert_eq!(
                    (e.from.as_str(), e.to.as_str(), e.reason.as_str()),
                    (KEYWORDS, EXAMPLES, reason),
                    "{text}"
                );
                assert!(e.cost_usd > 0.0, "the passed-over tier was paid for");
                assert_eq!(escalated[0].detail["reason"], reason);
                assert_eq!(rec.attempt, 2, "one call per tier");
            }
        }
        // The baseline is the top tier's price for the answering call's tokens; the step's
        // cost is every tier it paid for.
        let usage = rec.usage.unwrap();
        let last_in = match reason {
            None => usage.input_tokens,
            // Both tiers read the same text: half of the summed usage each.
            Some(_) => usage.input_tokens / 2,
        };
        let baseline = rec.baseline_usd.expect("a baseline");
        assert!(
            close(baseline, local_price(EXAMPLES, last_in, 0)),
            "{text}: {baseline}"
        );
        let view = h.engine.view(&h.snap(&run).await).await.unwrap();
        let step = view.steps.iter().find(|s| s.name == "classify").unwrap();
        let saving = step.saving_usd.unwrap();
        assert!(close(saving, baseline - rec.cost_usd), "{text}");
        if reason.is_none() {
            assert!(saving > 0.0, "the cheap tier's answer saved money");
        } else {
            assert!(
                saving < 0.0,
                "paying for both tiers cost more than the top one"
            );
        }
    }
}

#[tokio::test]
async fn an_error_moves_a_cascade_up_and_is_recorded() {
    let h = H::new();
    let fault = "params: {fault: {kind: transient, times: 9, model: local/keyword-classifier}}\n            retry: {max_attempts: 2, initial_backoff: 10ms}";
    let (run, status) = h
        .run(
            &cascade_wf(UNSURE, fault),
            json!({"text": "refund my invoice"}),
        )
        .await;
    assert_eq!(status, RunStatus::Succeeded);
    let rec = h.rec(&run, "classify").await;
    assert_eq!(rec.model.as_deref(), Some(EXAMPLES));
    assert_eq!(
        rec.attempt, 3,
        "two attempts on the first tier, one on the top"
    );
    assert!(rec.fallback_used);
    assert_eq!(rec.escalations.len(), 1);
    assert!(
        rec.escalations[0].reason.starts_with("transient:"),
        "{:?}",
        rec.escalations
    );
}

#[tokio::test]
async fn a_schema_failure_escalates_at_once_when_declared() {
    // The first tier's label is not in the schema's enum. Declared: escalate at once;
    // undeclared: retried with feedback like any malformed answer, then moved up by
    // `fallback_on` (malformed is in the default list).
    let schema = "output_schema: {type: object, properties: {label: {enum: [shipping]}}}\n            retry: {max_attempts: 2, initial_backoff: 10ms}";
    let declared = "escalate_if: {path: schema_valid, equals: false}";
    for (extra, attempts, reason) in [
        (declared, 2, "schema_valid = false (equals false)"),
        ("", 3, "malformed: "),
    ] {
        let h = H::new();
        let (run, status) = h
            .run(
                &cascade_wf(extra, schema),
                json!({"text": "refund my invoice, my parcel never arrived"}),
            )
            .await;
        assert_eq!(status, RunStatus::Succeeded, "{extra}");
        let rec = h.rec(&run, "classify").await;
        assert_eq!(
            (rec.model.as_deref(), rec.attempt),
            (Some(EXAMPLES), attempts),
            "{extra}"
        );
        assert!(
            rec.escalations[0].reason.starts_with(reason),
            "{extra}: {:?}",
            rec.escalations
        );
    }
}

#[tokio::test]
async fn a_failing_judge_escalates_a_cascade_through_its_repair() {
    let wf = format!(
        "{}{}",
        cascade_wf("", "").replace("        output: \"${steps.classify.output}\"\n", ""),
        r#"
          - id: check
            kind: validate
            value: "${steps.classify.output}"
            judge:
              model: local/rules-judge
              params: {rules: [{id: labelled, at: /label, forbid: "^other$", message: no label found}]}
            repair: {step: classify, max_attempts: 1, escalate: true}
        output: "${steps.check.output.label}"
        "#
    );
    let h = H::new();
    let (run, status) = h.run(&wf, json!({"text": "my parcel never arrived"})).await;
    assert_eq!(status, RunStatus::Succeeded);
    assert_eq!(h.run_output(&run).await, json!("shipping"));
    let rec = h.rec(&run, "classify").await;
    assert_eq!(rec.model.as_deref(), Some(EXAMPLES));
    assert!(
        rec.feedback.is_empty(),
        "the top tier got the original request"
    );
    let e = &rec.escalations[0];
    assert_eq!((e.from.as_str(), e.to.as_str()), (KEYWORDS, EXAMPLES));
    assert!(
        e.reason
            .starts_with("`check`: the judge failed the value: judge: no label found"),
        "{}",
        e.reason
    );
    let asked = h
        .step_events(&run, EventKind::StepRepairRequested, "check")
        .await;
    assert_eq!(asked[0].detail["escalated_to"], EXAMPLES);
    assert_eq!(h.rec(&run, "check").await.repairs, 1);
}

fn select_wf(bound: f64) -> String {
    format!(
        r#"
        name: selected
        version: "1"
        steps:
          - id: draft
            input: "${{input.text}}"
            select:
              - model: local/template-generator
                when: {{path: input.tier, equals: pro}}
              - model: local/template-generator
                when: {{path: estimate_usd, lte: {bound}}}
              - model: local/extractive-summarizer
            retry: {{max_attempts: 2, initial_backoff: 10ms}}
            params:
              template: "Reply: {{{{ input }}}}"
              fault: {{kind: transient, times: 1}}
        "#
    )
}

#[tokio::test]
async fn select_picks_by_tier_and_estimate_and_keeps_its_choice() {
    let short = "A short note.";
    // (tier, bound, text, model, reason prefix)
    let table = [
        (
            "pro",
            0.0,
            short,
            "local/template-generator",
            "input.tier = \"pro\"",
        ),
        (
            "free",
            1.0,
            short,
            "local/template-generator",
            "estimate_usd = ",
        ),
        ("free", 0.0, short, "local/extractive-summarizer", "default"),
    ];
    for (tier, bound, text, model, reason) in table {
        let h = H::new();
        let (run, status) = h
            .run(&select_wf(bound), json!({"text": text, "tier": tier}))
            .await;
        assert_eq!(status, RunStatus::Succeeded, "{tier} {bound}");
        let rec = h.rec(&run, "draft").await;
        // The first attempt's fault is retried on the model that was chosen.
        assert_eq!(
            (rec.model.as_deref(), rec.attempt),
            (Some(model), 2),
            "{tier} {bound}"
        );
        let sel = rec.selected.clone().unwrap();
        assert!(sel.reason.starts_with(reason), "{}", sel.reason);
        assert_eq!(sel.model, model);
        let view = h.engine.view(&h.snap(&run).await).await.unwrap();
        let step = view.steps.iter().find(|s| s.name == "draft").unwrap();
        assert_eq!(step.selected_because.as_deref(), Some(sel.reason.as_str()));
        if reason.starts_with("estimate_usd") {
            // The estimate it read is the provider's, for the chosen model's call.
            assert!(sel.estimate_usd > 0.0 && sel.estimate_usd <= bound);
        }
    }
    // A step already started keeps its choice: no event but the first claim picks.
    let h = H::new();
    let (run, _) = h
        .run(&select_wf(1.0), json!({"text": short, "tier": "free"}))
        .await;
    let started = h.step_events(&run, EventKind::StepStarted, "draft").await;
    let models: Vec<Value> = started.iter().map(|e| e.detail["model"].clone()).collect();
    assert!(
        models.iter().all(|m| m == "local/template-generator"),
        "{models:?}"
    );
}

/// A cascade that escalates on its answer, on an error and through a judge's repair, and a
/// `select` step: extra wake-ups of every reason at random points, early or late, end in the
/// same records, the same escalations and choice, and no model call made twice.
const PROP: &str = r#"
    name: cascade-prop
    version: "1"
    steps:
      - id: classify
        role: classification
        input: "${input.text}"
        retry: {max_attempts: 2, initial_backoff: 300ms}
        cascade:
          - model: local/keyword-classifier
            params:
              labels: {billing: [invoice, refund], shipping: [delivery]}
              fault: {kind: transient, times: 1, model: local/keyword-classifier}
            escalate_if: {path: output.confidence, lt: 0.8}
          - model: local/keyword-classifier
            params: {labels: {billing: [invoice, refund, paid], shipping: [delivery, courier]}}
          - model: local/example-classifier
            params:
              examples:
                billing: [I paid twice and want my money back]
                shipping: [my parcel never arrived]
      - id: check
        kind: validate
        value: "${steps.classify.output}"
        judge:
          model: local/rules-judge
          params: {rules: [{id: sure, at: /label, forbid: "^other$", message: no label}]}
        repair: {step: classify, max_attempts: 2, escalate: true}
      - id: draft
        input: "${steps.check.output.label}"
        select:
          - {model: local/template-generator, when: {path: estimate_usd, lte: 0.001}}
          - {model: local/echo}
        params: {template: "label {{ input }}"}
"#;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn extra_wake_ups_change_no_cascade_decision(
        text in prop::sample::select(vec![
            "refund my invoice",                 // tier 0 is sure (after its retried fault)
            "refund the delivery, I paid twice", // tier 0 unsure, tier 1 answers
            "my parcel never arrived",           // tier 1 finds nothing: the judge escalates
        ]),
        extra in prop::collection::vec((0usize..REASONS.len(), 0u64..3_000, 0usize..10), 0..12),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let input = json!({"text": text});
            let clean = H::new();
            let (clean_run, status) = clean.run(PROP, input.clone()).await;
            assert_eq!(status, RunStatus::Succeeded, "{text}");
            let want = clean.summary(&clean_run).await;
            let want_rec = clean.rec(&clean_run, "classify").await;

            let h = H::new();
            let run = h.start(PROP, input).await;
            let inject: Vec<(usize, WakeReason, u64)> =
                extra.iter().map(|(r, delay, at)| (*at, REASONS[*r], *delay)).collect();
            assert_eq!(h.drive_injecting(&run, &inject).await, RunStatus::Succeeded);
            for r in h.drain().await {
                assert_eq!(r, Handled::AlreadyEnded(RunStatus::Succeeded));
            }
            assert_eq!(h.summary(&run).await, want, "{text}");
            let rec = h.rec(&run, "classify").await;
            let moves = |r: &switchyard_core::state::StepRecord| -> Vec<(String, String, String)> {
                r.escalations.iter().map(|e| (e.from.clone(), e.to.clone(), e.reason.clone())).collect()
            };
            assert_eq!(moves(&rec), moves(&want_rec), "{text}");
            // Each text takes its own path: none, one escalation on the answer, and one on
            // the answer then one through the judge's repair.
            let path: Vec<char> = rec.escalations.iter().map(|e| e.reason.chars().next().unwrap_or(' ')).collect();
            let want_path: &[char] = match text {
                "refund my invoice" => &[],
                "refund the delivery, I paid twice" => &['o'],
                _ => &['o', '`'],
            };
            assert_eq!(path, want_path, "{text}: {:?}", rec.escalations);
            assert_eq!(rec.baseline_usd, want_rec.baseline_usd, "{text}");
            assert_eq!(
                h.rec(&run, "draft").await.selected,
                clean.rec(&clean_run, "draft").await.selected
            );
            // Every call of the cascade was started once: one started event per attempt.
            assert_eq!(h.started_count(&run, "classify").await, rec.attempt as usize);
            // Escalations on an answer have their event; a repair's is `step_repair_requested`.
            assert_eq!(
                h.step_events(&run, EventKind::StepEscalated, "classify").await.len(),
                rec.escalations.iter().filter(|e| e.reason.starts_with("output")).count()
            );
        });
    }
}

#[tokio::test]
async fn a_tier_past_the_budget_fails_the_step_instead_of_using_the_passed_over_answer() {
    let wf = cascade_wf(UNSURE, "").replace(
        "        steps:\n",
        "        budget: {max_cost_usd: 0.00002}\n        steps:\n",
    );
    let h = H::new();
    let (run, status) = h
        .run(
            &wf,
            json!({"text": "my parcel never arrived, the courier says so"}),
        )
        .await;
    assert_eq!(status, RunStatus::Failed);
    let rec = h.rec(&run, "classify").await;
    assert_eq!(
        rec.error.as_ref().map(|e| e.class),
        Some(switchyard_core::ErrorClass::BudgetExceeded)
    );
    assert_eq!(rec.escalations.len(), 1, "it did escalate");
    assert_eq!(rec.attempt, 1, "the top tier was never called");
}
