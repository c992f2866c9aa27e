//! Engine tests: whole runs on the embedded backend (SQLite and files in a temp dir) with the
//! built-in `local/*` models, driven by hand with a manual clock — no test sleeps.
//!
//! Groups, in order: chains and outputs; duplicated, early and late wake-ups; retries and
//! backoff; fallback; budget; route and skip; parallel; validate with repair; approval;
//! asynchronous jobs and webhooks; crash recovery; cancellation; large values; intake
//! (input schema, idempotency); and a property test over random wake-up interleavings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

mod support;

use async_trait::async_trait;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use support::{close, compile_with, local_price, run_class, H, REASONS, T0};
use switchyard_core::model::{ModelInfo, ModelRequest, ModelResponse, Provider, Role};
use switchyard_core::ports::Inbox;
use switchyard_core::retry::backoff_ms;
use switchyard_core::settle;
use switchyard_core::state::{
    EventKind, HistoryEvent, Lease, RunStatus, StepRecord, StepStatus, ValueRef, WaitReason,
    WakeReason, WakeUp,
};
use switchyard_core::workflow::StepKind;
use switchyard_core::{ErrorClass, StepError};
use switchyard_engine::webhook::CallbackResult;
use switchyard_engine::worker::Handled;
use switchyard_engine::EngineError;

// ---------------------------------------------------------------------------------------------
// Helpers

/// The `delay_ms` of every StepRetryScheduled event of a step.
async fn retry_delays(h: &H, run: &str, step: &str) -> Vec<u64> {
    h.step_events(run, EventKind::StepRetryScheduled, step)
        .await
        .iter()
        .map(|e| e.detail["delay_ms"].as_u64().expect("delay_ms"))
        .collect()
}

/// When each attempt of a step started.
async fn start_times(h: &H, run: &str, step: &str) -> Vec<u64> {
    h.step_events(run, EventKind::StepStarted, step)
        .await
        .iter()
        .map(|e| e.at)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. A chain of model and transform steps

const CHAIN: &str = r#"
    name: chain
    version: "1"
    input_schema:
      type: object
      required: [text]
      properties:
        text: {type: string}
    output_schema:
      type: object
      required: [label, reply, confidence, shape]
      properties:
        label: {type: string}
        reply: {type: string}
        confidence: {type: number}
        shape: {type: object}
    output:
      label: "${steps.classify.output.label}"
      reply: "${steps.draft.output.text}"
      confidence: "${steps.classify.output.confidence}"
      shape: "${steps.shape.output}"
    steps:
      - id: classify
        model: local/keyword-classifier
        input: "${input.text}"
        params:
          labels: {billing: [refund, invoice], tech: [crash]}
      - id: draft
        model: local/template-generator
        prompt:
          version: draft@1
          template: "Answer the {{ steps.classify.output.label }} ticket."
        input:
          label: "${steps.classify.output.label}"
          text: "${input.text}"
        params:
          template: "Reply for {{ input.label }}: {{ input.text }}"
      - id: shape
        kind: transform
        value:
          tag: "${steps.classify.output.label}/${steps.draft.output.finish_reason}"
          words: "${steps.draft.output.usage.output_tokens}"
"#;

#[tokio::test]
async fn chain_succeeds_with_outputs_by_reference_and_summed_cost() {
    let h = H::new();
    let (run, status) = h
        .run(CHAIN, json!({"text": "Please refund my invoice"}))
        .await;
    assert_eq!(status, RunStatus::Succeeded);

    // Outputs flow by reference: the draft saw the classifier's label, the transform both.
    let classify = h.output(&run, "classify").await;
    assert_eq!(classify["label"], "billing");
    let draft = h.output(&run, "draft").await;
    assert_eq!(draft["text"], "Reply for billing: Please refund my invoice");
    let shape = h.output(&run, "shape").await;
    assert_eq!(shape["tag"], "billing/stop");
    assert_eq!(shape["words"], draft["usage"]["output_tokens"]);

    // Each step ran once; model steps record model, provider and prompt version.
    let snap = h.snap(&run).await;
    for step in ["classify", "draft", "shape"] {
        let r = snap.step(step).unwrap();
        assert_eq!((r.status, r.attempt), (StepStatus::Succeeded, 1), "{step}");
    }
    for step in ["classify", "draft"] {
        assert_eq!(h.started_count(&run, step).await, 1, "{step}");
    }
    let d = snap.step("draft").unwrap();
    assert_eq!(d.model.as_deref(), Some("local/template-generator"));
    assert_eq!(d.provider.as_deref(), Some("local"));
    assert_eq!(d.prompt_version.as_deref(), Some("draft@1"));

    // Cost: each model step's cost is its usage at the simulated prices; the run's is the sum.
    let mut total = 0.0;
    for (step, model) in [
        ("classify", "local/keyword-classifier"),
        ("draft", "local/template-generator"),
    ] {
        let r = snap.step(step).unwrap();
        let u = r.usage.expect("usage");
        assert!(u.input_tokens > 0, "{step}");
        assert!(
            close(
                r.cost_usd,
                local_price(model, u.input_tokens, u.output_tokens)
            ),
            "{step}: {}",
            r.cost_usd
        );
        total += r.cost_usd;
    }
    assert!(total > 0.0);
    assert!(close(snap.cost_usd(), total));
    let view = h.engine.view(&snap).await.unwrap();
    assert!((view.cost_usd - total).abs() < 1e-9);
    assert_eq!(view.status, RunStatus::Succeeded);
    let names: Vec<(&str, &str, u32)> = view
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.kind.as_str(), s.attempts))
        .collect();
    assert_eq!(
        names,
        [
            ("classify", "model", 1),
            ("draft", "model", 1),
            ("shape", "transform", 1)
        ]
    );
    let ended = h.events(&run).await.last().cloned().unwrap();
    assert_eq!(ended.kind, EventKind::RunSucceeded);
    assert!(close(ended.detail["cost_usd"].as_f64().unwrap(), total));

    // The run's output template, resolved (and checked against output_schema).
    assert_eq!(
        h.run_output(&run).await,
        json!({
            "label": "billing",
            "reply": "Reply for billing: Please refund my invoice",
            "confidence": 1.0,
            "shape": shape,
        })
    );
    assert_eq!(view.output, h.run_output(&run).await);
}

#[tokio::test]
async fn output_failing_output_schema_fails_the_run_as_malformed() {
    let h = H::new();
    let yaml = CHAIN.replace("confidence: {type: number}", "confidence: {type: string}");
    let (run, status) = h.run(&yaml, json!({"text": "refund"})).await;
    assert_eq!(status, RunStatus::Failed);
    let snap = h.snap(&run).await;
    let err = snap.header.error.clone().unwrap();
    assert_eq!((err.class, err.step), (ErrorClass::Malformed, None));
    assert!(err.message.contains("output_schema"), "{}", err.message);
    assert_eq!(snap.header.output, None);
    // Every step itself succeeded.
    assert!(snap.steps.iter().all(|r| r.status == StepStatus::Succeeded));
}

#[tokio::test]
async fn without_output_template_the_last_step_output_is_the_run_output() {
    // Every step finishes at the same (manual) millisecond, as fast steps do on a real clock;
    // the model step's record has a higher version (claim + result) than the transforms'.
    // (workflow, run output)
    let table = [
        (
            r#"
            name: last
            version: "1"
            steps:
              - {id: a, kind: transform, value: 1}
              - {id: b, kind: transform, value: {from_a: "${steps.a.output}"}}
            "#,
            json!({"from_a": 1}),
        ),
        (
            r#"
            name: last
            version: "1"
            steps:
              - {id: gen, model: local/echo, input: "hi"}
              - {id: wrap, kind: transform, value: {text: "${steps.gen.output.text}"}}
            "#,
            json!({"text": "hi"}),
        ),
        (
            r#"
            name: last
            version: "1"
            steps:
              - {id: z, kind: transform, value: first}
              - {id: y, model: local/echo, input: "${steps.z.output}"}
              - {id: x, kind: transform, value: "last:${steps.y.output.text}"}
            "#,
            json!("last:first"),
        ),
    ];
    for (yaml, want) in table {
        let h = H::new();
        let (run, status) = h.run(yaml, json!({})).await;
        assert_eq!(status, RunStatus::Succeeded);
        assert_eq!(h.run_output(&run).await, want, "{yaml}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2-3. Duplicated, early and late wake-ups

/// A chain whose first step fails once, so the run waits between wake-ups.
const FLAKY: &str = r#"
    name: flaky
    version: "1"
    defaults:
      retry: {max_attempts: 3, initial_backoff: 2s, jitter: false}
    steps:
      - id: classify
        model: local/keyword-classifier
        input: "${input.text}"
        params:
          labels: {billing: [refund], tech: [crash]}
          fault: {kind: transient, times: 1}
      - id: draft
        model: local/template-generator
        input: {label: "${steps.classify.output.label}"}
        params: {template: "label={{ input.label }}"}
      - {id: done, kind: transform, value: "${steps.draft.output.text}"}
"#;

#[tokio::test]
async fn duplicated_start_wake_ups_change_nothing() {
    let input = json!({"text": "refund please"});
    let clean = H::new();
    let (clean_run, clean_status) = clean.run(FLAKY, input.clone()).await;
    assert_eq!(clean_status, RunStatus::Succeeded);

    let dup = H::new();
    let run = dup.start(FLAKY, input).await;
    for _ in 0..3 {
        dup.wake(&run, WakeReason::Start, 0).await;
    }
    assert_eq!(dup.drive(&run).await, RunStatus::Succeeded);
    assert_eq!(dup.summary(&run).await, clean.summary(&clean_run).await);
    let starts = dup
        .handled(&run)
        .iter()
        .filter(|(_, w, _)| w.reason == WakeReason::Start)
        .count();
    assert_eq!(starts, 4);
    // Every attempt was started once: 2 for the flaky step, 1 for the other.
    assert_eq!(dup.started_count(&run, "classify").await, 2);
    assert_eq!(dup.started_count(&run, "draft").await, 1);
    for step in ["classify", "draft", "done"] {
        let ok = dup.step_events(&run, EventKind::StepSucceeded, step).await;
        assert_eq!(ok.len(), 1, "{step}");
    }
    // Same timing as the clean run: the duplicates moved nothing forward or back.
    assert_eq!(
        start_times(&dup, &run, "classify").await,
        vec![T0, T0 + 2000]
    );

    // A late duplicate after the end: nothing changes.
    let (snap, events) = (dup.snap(&run).await, dup.events(&run).await);
    for reason in [WakeReason::Start, WakeReason::Timer, WakeReason::Webhook] {
        let late = WakeUp {
            run_id: run.clone(),
            reason,
            due_at: None,
        };
        let handled = dup.engine.handle(&late, None).await.unwrap();
        assert_eq!(handled, Handled::AlreadyEnded(RunStatus::Succeeded));
    }
    assert_eq!(dup.snap(&run).await, snap);
    assert_eq!(dup.events(&run).await, events);
    // And whatever was still queued (the last timer) is a late duplicate too.
    for handled in dup.drain().await {
        assert_eq!(handled, Handled::AlreadyEnded(RunStatus::Succeeded));
    }
    assert_eq!(dup.snap(&run).await, snap);
}

#[tokio::test]
async fn early_timer_changes_nothing_and_reschedules_then_a_late_one_proceeds() {
    let h = H::new();
    let run = h.start(FLAKY, json!({"text": "refund"})).await;
    // The first attempt fails; the retry is due 2 s later.
    assert_eq!(
        h.step().await,
        [Handled::Waiting {
            reason: WaitReason::Timer,
            until: Some(T0 + 2000)
        }]
    );
    assert_eq!(h.queue.len().await.unwrap(), 1);
    assert_eq!(h.queue.next_visible_at().await.unwrap(), Some(T0 + 2000));
    let before = h.snap(&run).await;
    let events_before = h.events(&run).await;

    // An early timer, 1.5 s in.
    h.clock.set(T0 + 1500);
    h.wake(&run, WakeReason::Timer, 0).await;
    assert_eq!(
        h.step().await,
        [Handled::Waiting {
            reason: WaitReason::Timer,
            until: Some(T0 + 2000)
        }]
    );
    let after = h.snap(&run).await;
    assert_eq!(after.steps, before.steps, "no step record changed");
    assert_eq!(after.header.status, RunStatus::Waiting);
    assert_eq!(after.header.wait, before.header.wait);
    assert_eq!(h.events(&run).await, events_before, "no event was written");
    // ... and a timer wake-up was (re)scheduled for when the retry is due.
    assert_eq!(h.queue.len().await.unwrap(), 2);
    assert_eq!(h.queue.next_visible_at().await.unwrap(), Some(T0 + 2000));

    // A late wake-up (the original timer, 0.5 s after it was due) proceeds.
    h.clock.set(T0 + 2500);
    let handled = h.step().await;
    assert_eq!(
        handled,
        [
            Handled::Ended(RunStatus::Succeeded),
            Handled::AlreadyEnded(RunStatus::Succeeded)
        ]
    );
    assert_eq!(start_times(&h, &run, "classify").await, vec![T0, T0 + 2500]);
    assert_eq!(h.rec(&run, "classify").await.attempt, 2);
}

#[tokio::test]
async fn wake_ups_for_unknown_runs_and_near_the_deadline() {
    let h = H::new();
    let ghost = WakeUp {
        run_id: "run_nope".into(),
        reason: WakeReason::Start,
        due_at: None,
    };
    assert_eq!(h.engine.handle(&ghost, None).await.unwrap(), Handled::Gone);

    // An invocation that is already at its deadline starts nothing and hands over.
    let run = h.start(FLAKY, json!({"text": "refund"})).await;
    h.queue.receive(16, 60_000).await.unwrap(); // the Start wake-up, taken by this "invocation"
    let wake = WakeUp {
        run_id: run.clone(),
        reason: WakeReason::Start,
        due_at: None,
    };
    let handled = h.engine.handle(&wake, Some(h.now() + 1)).await.unwrap();
    assert_eq!(handled, Handled::Yielded);
    assert!(h.snap(&run).await.steps.is_empty(), "nothing was started");
    h.clock.advance(60_000); // let the taken message's visibility lapse, as SQS would
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    let resumes = h
        .handled(&run)
        .iter()
        .filter(|(_, w, _)| w.reason == WakeReason::Resume)
        .count();
    assert_eq!(resumes, 1);
    assert_eq!(h.started_count(&run, "classify").await, 2);
}

// ---------------------------------------------------------------------------------------------
// 4-5. Retries and backoff

fn retry_wf(fault: &str, retry: &str) -> String {
    format!(
        r#"
        name: retry
        version: "1"
        steps:
          - id: gen
            model: local/template-generator
            input: {{text: "${{input.text}}"}}
            timeout: 2s
            retry: {retry}
            params:
              template: "{{% if feedback %}}repaired{{% else %}}first{{% endif %}}"
              fault: {fault}
        "#
    )
}

#[tokio::test(start_paused = true)]
async fn transient_failures_retry_on_the_backoff_policy() {
    let no_jitter = "{max_attempts: 3, initial_backoff: 1s, multiplier: 3, jitter: false}";
    // (fault, retry policy, status, attempts, delays, final class, final text)
    type Case = (
        &'static str,
        &'static str,
        RunStatus,
        u32,
        Vec<u64>,
        Option<ErrorClass>,
        &'static str,
    );
    let table: Vec<Case> = vec![
        (
            "{kind: transient, times: 2}",
            no_jitter,
            RunStatus::Succeeded,
            3,
            vec![1000, 3000],
            None,
            "first",
        ),
        (
            // The fault sleeps past the step timeout; the engine's timer ends the attempt.
            "{kind: timeout, times: 1}",
            "{max_attempts: 2, initial_backoff: 250ms, jitter: false}",
            RunStatus::Succeeded,
            2,
            vec![250],
            None,
            "first",
        ),
        (
            // A malformed answer is re-asked with what was wrong with it.
            "{kind: malformed, times: 1}",
            no_jitter,
            RunStatus::Succeeded,
            2,
            vec![1000],
            None,
            "repaired",
        ),
        (
            "{kind: transient, times: 5}",
            no_jitter,
            RunStatus::Failed,
            3,
            vec![1000, 3000],
            Some(ErrorClass::Transient),
            "",
        ),
        (
            "{kind: invalid, times: 5}",
            no_jitter,
            RunStatus::Failed,
            1,
            vec![],
            Some(ErrorClass::Invalid),
            "",
        ),
    ];
    for (fault, retry, status, attempts, delays, class, text) in table {
        let h = H::new();
        let (run, got) = h.run(&retry_wf(fault, retry), json!({"text": "x"})).await;
        assert_eq!(got, status, "{fault}");
        let r = h.rec(&run, "gen").await;
        assert_eq!(r.attempt, attempts, "{fault}");
        assert_eq!(h.started_count(&run, "gen").await, attempts as usize);
        assert_eq!(retry_delays(&h, &run, "gen").await, delays, "{fault}");
        // The manual clock only moves to the next wake-up: attempts are exactly a delay apart.
        let starts = start_times(&h, &run, "gen").await;
        let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, delays, "{fault}");
        assert_eq!(run_class(&h.snap(&run).await), class, "{fault}");
        if status == RunStatus::Succeeded {
            assert_eq!(h.output(&run, "gen").await["text"], text, "{fault}");
        }
    }
}

#[tokio::test]
async fn jittered_backoff_is_deterministic_per_run_and_step() {
    let h = H::new();
    let yaml = retry_wf(
        "{kind: transient, times: 3}",
        "{max_attempts: 4, initial_backoff: 1s, max_backoff: 3s, jitter: true}",
    );
    let wf = h.compile(&yaml);
    let run = h.start_wf(&wf, json!({"text": "x"})).await;
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    let StepKind::Model(ms) = &wf.step("gen").unwrap().kind else {
        panic!("gen is a model step")
    };
    let want: Vec<u64> = (1..=3)
        .map(|n| backoff_ms(&ms.retry, n, &format!("{run}/gen")))
        .collect();
    let got = retry_delays(&h, &run, "gen").await;
    assert_eq!(got, want);
    // Equal jitter: each delay lies in [backoff/2, backoff] of 1 s, 2 s, 3 s (capped).
    for (d, full) in got.iter().zip([1000u64, 2000, 3000]) {
        assert!(
            *d >= full / 2 && *d <= full,
            "{d} not in [{}, {full}]",
            full / 2
        );
    }
    let starts = start_times(&h, &run, "gen").await;
    let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, want);
}

#[tokio::test]
async fn rate_limit_retry_after_is_honoured_without_sleeping() {
    let h = H::new();
    let yaml = retry_wf(
        "{kind: rate_limited, times: 1, retry_after_ms: 5000}",
        "{max_attempts: 3, initial_backoff: 100ms, jitter: false}",
    );
    let run = h.start(&yaml, json!({"text": "x"})).await;
    assert_eq!(
        h.step().await,
        [Handled::Waiting {
            reason: WaitReason::Timer,
            until: Some(T0 + 5000)
        }]
    );
    let r = h.rec(&run, "gen").await;
    assert_eq!(
        (r.status, r.next_at),
        (StepStatus::Retrying, Some(T0 + 5000))
    );
    assert_eq!(
        r.error.as_ref().map(|e| e.class),
        Some(ErrorClass::RateLimited)
    );
    // The next wake-up is not before 5 s later (not the 100 ms backoff).
    assert_eq!(h.queue.next_visible_at().await.unwrap(), Some(T0 + 5000));
    assert_eq!(retry_delays(&h, &run, "gen").await, [5000]);
    // 4.9 s in, nothing is due.
    h.clock.set(T0 + 4900);
    assert!(h.step().await.is_empty());
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    assert_eq!(start_times(&h, &run, "gen").await, [T0, T0 + 5000]);
    assert_eq!(h.now(), T0 + 5000);
}

#[tokio::test(start_paused = true)]
async fn slow_model_times_out_within_the_step_timeout() {
    // Latency matters here, so tokio's clock is paused: the 5 s provider delay is virtual.
    // (slowness, step status, attempts, run class)
    let table = [
        (500, StepStatus::Succeeded, 1, None),
        (5000, StepStatus::Failed, 2, Some(ErrorClass::Timeout)),
    ];
    for (delay, status, attempts, class) in table {
        let h = H::new();
        let yaml = format!(
            r#"
            name: slow
            version: "1"
            steps:
              - id: gen
                model: local/echo
                input: "hi"
                timeout: 1s
                retry: {{max_attempts: 2, initial_backoff: 10ms, jitter: false}}
                params: {{delay_ms: {delay}}}
            "#
        );
        let (run, _) = h.run(&yaml, json!({})).await;
        let r = h.rec(&run, "gen").await;
        assert_eq!((r.status, r.attempt), (status, attempts), "delay {delay}");
        assert_eq!(run_class(&h.snap(&run).await), class, "delay {delay}");
        if let Some(e) = &r.error {
            assert!(e.message.contains("step timeout"), "{}", e.message);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Fallback

fn fallback_wf(fault: &str, fallback_on: &str) -> String {
    format!(
        r#"
        name: fallback
        version: "1"
        steps:
          - id: gen
            model: local/template-generator
            fallback: [local/echo]
            {fallback_on}
            input: "hello"
            retry: {{max_attempts: 2, initial_backoff: 100ms, jitter: false}}
            params:
              template: "primary"
              fault: {{kind: {fault}, times: 99, model: local/template-generator}}
        "#
    )
}

#[tokio::test]
async fn fallback_is_used_only_for_the_declared_classes() {
    // (fault, fallback_on line, status, attempts, fallback used, model that answered last)
    let table = [
        (
            "transient",
            "fallback_on: [transient]",
            RunStatus::Succeeded,
            3,
            true,
            "local/echo",
        ),
        ("transient", "", RunStatus::Succeeded, 3, true, "local/echo"),
        (
            "invalid",
            "",
            RunStatus::Failed,
            1,
            false,
            "local/template-generator",
        ),
        (
            "invalid",
            "fallback_on: [transient]",
            RunStatus::Failed,
            1,
            false,
            "local/template-generator",
        ),
        (
            "invalid",
            "fallback_on: [invalid]",
            RunStatus::Succeeded,
            2,
            true,
            "local/echo",
        ),
        (
            "auth",
            "",
            RunStatus::Failed,
            1,
            false,
            "local/template-generator",
        ),
        (
            "auth",
            "fallback_on: [transient, invalid]",
            RunStatus::Failed,
            1,
            false,
            "local/template-generator",
        ),
        (
            "quota_exhausted",
            "",
            RunStatus::Succeeded,
            2,
            true,
            "local/echo",
        ),
    ];
    for (fault, on, status, attempts, used, model) in table {
        let h = H::new();
        let (run, got) = h.run(&fallback_wf(fault, on), json!({})).await;
        let case = format!("{fault} / {on:?}");
        assert_eq!(got, status, "{case}");
        let r = h.rec(&run, "gen").await;
        assert_eq!(r.attempt, attempts, "{case}");
        assert_eq!(r.fallback_used, used, "{case}");
        assert_eq!(r.model.as_deref(), Some(model), "{case}");
        let fallbacks = h.step_events(&run, EventKind::StepFallback, "gen").await;
        assert_eq!(fallbacks.len(), usize::from(used), "{case}");
        if used {
            assert_eq!(fallbacks[0].detail["to"], "local/echo");
            assert_eq!(h.output(&run, "gen").await["text"], "hello", "{case}");
            let view = h.engine.view(&h.snap(&run).await).await.unwrap();
            assert!(view.steps[0].fallback_used);
            assert_eq!(view.steps[0].model.as_deref(), Some("local/echo"));
        } else {
            assert_eq!(
                run_class(&h.snap(&run).await),
                ErrorClass::parse(fault),
                "{case}"
            );
        }
        // Which model each attempt called.
        let called: Vec<String> = h
            .step_events(&run, EventKind::StepStarted, "gen")
            .await
            .iter()
            .map(|e| e.detail["model"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(called.last().map(String::as_str), Some(model), "{case}");
    }
}

#[test]
fn auth_cannot_be_declared_as_a_fallback_class() {
    use switchyard_core::workflow::{compile, NoFiles};
    let models = LocalModels::catalog();
    let err = compile(
        &support::dedent(&fallback_wf("auth", "fallback_on: [auth]")),
        &NoFiles,
        &models,
    )
    .unwrap_err();
    assert!(
        err.iter().any(|d| d.message.contains("never falls back")),
        "{err:?}"
    );
}

struct LocalModels;
impl LocalModels {
    fn catalog() -> Vec<ModelInfo> {
        switchyard_providers::LocalProvider::default().models()
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Budget

#[tokio::test]
async fn budget_stops_a_model_step_before_it_is_called() {
    let long = "word ".repeat(400);
    // (budget, step expected to fail, steps expected to succeed)
    let table = [
        (0.000_000_1, "classify", vec![]),
        (0.0002, "draft", vec!["classify"]),
    ];
    for (budget, fails, ok) in table {
        let h = H::new();
        let yaml = format!(
            r#"
            name: budget
            version: "1"
            budget: {{max_cost_usd: {budget}}}
            steps:
              - id: classify
                model: local/keyword-classifier
                input: "refund my invoice please, it was charged twice"
                params: {{labels: {{billing: [refund]}}}}
              - id: draft
                model: local/template-generator
                input: {{long: "${{input.long}}"}}
                params: {{template: "{{{{ input.long }}}}"}}
            "#
        );
        let (run, status) = h.run(&yaml, json!({"long": long})).await;
        assert_eq!(status, RunStatus::Failed, "{budget}");
        let snap = h.snap(&run).await;
        let err = snap.header.error.clone().unwrap();
        assert_eq!(err.class, ErrorClass::BudgetExceeded, "{budget}");
        assert_eq!(err.step.as_deref(), Some(fails));
        assert!(err.message.contains("budget"), "{}", err.message);
        // The model was never called: no StepStarted, no cost, no usage.
        assert_eq!(h.started_count(&run, fails).await, 0, "{budget}");
        let r = snap.step(fails).unwrap();
        assert_eq!(r.status, StepStatus::Failed);
        assert_eq!((r.cost_usd, r.usage), (0.0, None));
        for s in ok {
            assert_eq!(snap.step(s).unwrap().status, StepStatus::Succeeded);
            assert_eq!(h.started_count(&run, s).await, 1);
        }
        assert!(snap.cost_usd() <= budget);
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Route and skip

const ROUTED: &str = r#"
    name: routed
    version: "1"
    steps:
      - id: classify
        model: local/keyword-classifier
        input: "${input.text}"
        params:
          labels: {billing: [refund, invoice], tech: [crash, error]}
      - id: triage
        kind: route
        routes:
          - when: {path: steps.classify.output.label, equals: billing}
            to: billing
        default: support
      - id: billing
        kind: transform
        value: "billing for ${steps.classify.output.label}"
      - id: support
        model: local/template-generator
        input: "${input.text}"
        params: {template: "support: {{ input }}"}
      - id: join
        kind: transform
        needs: [billing, support]
        value:
          billing: "${steps.billing.output}"
          support: "${steps.support.output}"
"#;

#[tokio::test]
async fn route_runs_one_branch_skips_the_other_and_the_join_runs() {
    // (text, chosen, skipped, join's `billing`, join's `support.text`); a skipped step's
    // output is null.
    let table = [
        (
            "refund my invoice",
            "billing",
            "support",
            json!("billing for billing"),
            Value::Null,
        ),
        (
            "app crash error",
            "support",
            "billing",
            Value::Null,
            json!("support: app crash error"),
        ),
    ];
    for (text, chosen, skipped, billing, support) in table {
        let h = H::new();
        let (run, status) = h.run(ROUTED, json!({"text": text})).await;
        assert_eq!(status, RunStatus::Succeeded, "{text}");
        let snap = h.snap(&run).await;
        assert_eq!(snap.step("triage").unwrap().chosen.as_deref(), Some(chosen));
        assert_eq!(snap.step(chosen).unwrap().status, StepStatus::Succeeded);
        assert_eq!(snap.step(skipped).unwrap().status, StepStatus::Skipped);
        let skip = h.step_events(&run, EventKind::StepSkipped, skipped).await;
        assert_eq!(skip.len(), 1);
        assert_eq!(
            skip[0].detail["reason"],
            format!("route `triage` chose `{chosen}`")
        );
        let join = h.output(&run, "join").await;
        assert_eq!(join["billing"], billing, "{text}");
        assert_eq!(join["support"]["text"], support, "{text}");
        assert_eq!(
            h.started_count(&run, "support").await,
            usize::from(chosen == "support")
        );
        assert_eq!(snap.step("join").unwrap().attempt, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Parallel

#[tokio::test]
async fn parallel_merges_branch_outputs_and_reports_optional_failures() {
    let h = H::new();
    let yaml = r#"
        name: fan
        version: "1"
        steps:
          - {id: prep, kind: transform, value: {text: "${input.text}"}}
          - id: fan
            kind: parallel
            branches:
              x: {kind: transform, value: "x:${steps.prep.output.text}"}
              y:
                model: local/template-generator
                input: "${steps.prep.output}"
                params: {template: "y:{{ input.text }}"}
              z:
                model: local/template-generator
                optional: true
                input: "${steps.prep.output}"
                params:
                  template: "never"
                  fault: {kind: invalid, times: 9}
          - id: after
            kind: transform
            value: {x: "${steps.fan.output.x}", z: "${steps.fan.output.z}"}
    "#;
    let (run, status) = h.run(yaml, json!({"text": "hi"})).await;
    assert_eq!(status, RunStatus::Succeeded);
    let fan = h.output(&run, "fan").await;
    assert_eq!(fan["x"], "x:hi");
    assert_eq!(fan["y"]["text"], "y:hi");
    assert_eq!(fan["z"], Value::Null);
    assert_eq!(fan["_errors"]["z"]["class"], "invalid");
    assert!(fan["_errors"].get("x").is_none() && fan["_errors"].get("y").is_none());
    assert_eq!(
        h.output(&run, "after").await,
        json!({"x": "x:hi", "z": null})
    );
    let snap = h.snap(&run).await;
    assert_eq!(snap.step("fan.z").unwrap().status, StepStatus::Failed);
    for s in ["prep", "fan.x", "fan.y", "fan", "after"] {
        assert_eq!(snap.step(s).unwrap().status, StepStatus::Succeeded, "{s}");
    }

    // The same branch, not optional, fails the run.
    let h = H::new();
    let (run, status) = h
        .run(&yaml.replace("optional: true", ""), json!({"text": "hi"}))
        .await;
    assert_eq!(status, RunStatus::Failed);
    let err = h.snap(&run).await.header.error.unwrap();
    assert_eq!(
        (err.class, err.step.as_deref()),
        (ErrorClass::Invalid, Some("fan.z"))
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Validate with repair

fn repair_wf(template: &str, max_repairs: u32) -> String {
    format!(
        r#"
        name: repair
        version: "1"
        steps:
          - id: draft
            model: local/template-generator
            input: "${{input.topic}}"
            params:
              format: json
              template: '{template}'
          - id: check
            kind: validate
            value: "${{steps.draft.output.json}}"
            schema:
              type: object
              required: [title]
              properties:
                title: {{type: string}}
            repair: {{step: draft, max_attempts: {max_repairs}}}
          - {{id: publish, kind: transform, value: "${{steps.check.output.title}}"}}
        "#
    )
}

#[tokio::test]
async fn validate_requests_a_repair_and_the_model_fixes_itself() {
    // Templates that answer badly first, then use `attempt` or `feedback` to fix themselves.
    let table = [
        (
            r#"{% if attempt > 1 %}{"title": "fixed"}{% else %}{"title": 5}{% endif %}"#,
            "fixed",
        ),
        (
            r#"{% if feedback %}{"title": "{{ feedback | length }} problem"}{% else %}{"nope": 1}{% endif %}"#,
            "1 problem",
        ),
    ];
    for (template, title) in table {
        let h = H::new();
        let (run, status) = h.run(&repair_wf(template, 2), json!({"topic": "t"})).await;
        assert_eq!(status, RunStatus::Succeeded, "{template}");
        assert_eq!(h.output(&run, "publish").await, title);
        let draft = h.rec(&run, "draft").await;
        assert_eq!((draft.attempt, draft.feedback.len()), (2, 0));
        assert_eq!(h.started_count(&run, "draft").await, 2);
        let check = h.rec(&run, "check").await;
        assert_eq!((check.status, check.repairs), (StepStatus::Succeeded, 1));
        let asked = h
            .step_events(&run, EventKind::StepRepairRequested, "check")
            .await;
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].detail["target"], "draft");
        assert!(!asked[0].detail["errors"].as_array().unwrap().is_empty());
    }
}

#[tokio::test]
async fn repairs_exhausted_fail_the_run_as_malformed() {
    let h = H::new();
    let (run, status) = h
        .run(&repair_wf(r#"{"title": 5}"#, 2), json!({"topic": "t"}))
        .await;
    assert_eq!(status, RunStatus::Failed);
    let err = h.snap(&run).await.header.error.unwrap();
    assert_eq!(
        (err.class, err.step.as_deref()),
        (ErrorClass::Malformed, Some("check"))
    );
    // The first answer plus two repairs.
    assert_eq!(h.started_count(&run, "draft").await, 3);
    assert_eq!(h.rec(&run, "check").await.repairs, 2);
    let failed = h.rec(&run, "check").await;
    assert!(failed
        .error
        .unwrap()
        .details
        .iter()
        .any(|d| d.contains("/title")));
    assert!(h.snap(&run).await.step("publish").is_none());
}

// ---------------------------------------------------------------------------------------------
// 10b. Validate with a judge

/// A draft, a validate step with an optional schema and a judge, and a step reading the result.
fn judge_wf(template: &str, schema: bool, judge: &str, max_repairs: u32) -> String {
    let schema = if schema {
        "schema: {type: object, required: [title], properties: {title: {type: string}}}"
    } else {
        ""
    };
    format!(
        r#"
        name: judged
        version: "1"
        steps:
          - id: draft
            model: local/template-generator
            input: "${{input.topic}}"
            params:
              format: json
              template: '{template}'
          - id: check
            kind: validate
            value: "${{steps.draft.output.json}}"
            {schema}
            judge: {judge}
            repair: {{step: draft, max_attempts: {max_repairs}}}
          - {{id: publish, kind: transform, value: "${{steps.check.output.title}}"}}
        "#
    )
}

const NO_BEST: &str = r#"{model: local/rules-judge, params: {rules: [{id: no-best, at: /title, forbid: "\\bbest\\b", message: no superlatives}]}}"#;

#[tokio::test]
async fn a_judge_passes_repairs_with_its_reasons_or_rejects() {
    // (draft template, schema, run status, publish output, judge calls, repairs)
    let table = [
        (
            r#"{"title": "A pack"}"#,
            false,
            RunStatus::Succeeded,
            json!("A pack"),
            1,
            0,
        ),
        // Fails the judge first; the repaired draft reads the judge's reasons as feedback.
        (
            r#"{% if feedback %}{"title": "{{ feedback[0][:13] }}"}{% else %}{"title": "The best pack"}{% endif %}"#,
            false,
            RunStatus::Succeeded,
            json!("judge: no sup"),
            2,
            1,
        ),
        // Fails the schema first: the judge is not asked about that value.
        (
            r#"{% if feedback %}{"title": "fixed"}{% else %}{"title": 5}{% endif %}"#,
            true,
            RunStatus::Succeeded,
            json!("fixed"),
            1,
            1,
        ),
        // Never fixed: repairs run out and the step fails `rejected`.
        (
            r#"{"title": "The best pack"}"#,
            true,
            RunStatus::Failed,
            Value::Null,
            3,
            2,
        ),
    ];
    for (template, schema, status, publish, calls, repairs) in table {
        let h = H::new();
        let (run, got) = h
            .run(
                &judge_wf(template, schema, NO_BEST, 2),
                json!({"topic": "t"}),
            )
            .await;
        assert_eq!(got, status, "{template}");
        let check = h.rec(&run, "check").await;
        assert_eq!(check.repairs, repairs, "{template}");
        let judged = h.step_events(&run, EventKind::StepJudged, "check").await;
        assert_eq!(judged.len(), calls, "{template}");
        assert_eq!(h.started_count(&run, "check").await, calls, "{template}");
        // The judge's calls are the step's: model, cost and tokens on its record.
        assert_eq!(check.model.as_deref(), Some("local/rules-judge"));
        assert!(check.cost_usd > 0.0 && check.usage.is_some(), "{template}");
        let costs: f64 = judged
            .iter()
            .map(|e| e.detail["cost_usd"].as_f64().unwrap())
            .sum();
        assert!(
            close(costs, check.cost_usd),
            "{template}: {costs} vs {}",
            check.cost_usd
        );
        let snap = h.snap(&run).await;
        if status == RunStatus::Succeeded {
            assert_eq!(h.output(&run, "publish").await, publish, "{template}");
            assert_eq!(judged.last().unwrap().detail["pass"], true);
        } else {
            let err = snap.header.error.clone().unwrap();
            assert_eq!(
                (err.class, err.step.as_deref()),
                (ErrorClass::Rejected, Some("check"))
            );
            let details = check.error.unwrap().details;
            assert_eq!(
                details,
                vec!["judge: no superlatives [no-best] (at /title: \"best\")".to_string()]
            );
            assert!(snap.step("publish").is_none());
        }
        let asked = h
            .step_events(&run, EventKind::StepRepairRequested, "check")
            .await;
        assert_eq!(asked.len() as u32, repairs);
        if schema && repairs > 0 {
            // The schema's problems went first, without a verdict.
            assert!(asked[0].detail["errors"][0]
                .as_str()
                .unwrap()
                .contains("/title"));
        }
    }
}

#[tokio::test]
async fn a_judge_is_retried_like_any_model_call() {
    // A transient fault on the judge's first call is retried; the verdict then passes.
    let judge = r#"{model: local/rules-judge, retry: {max_attempts: 3, initial_backoff: 1s}, params: {fault: {kind: transient, times: 1}, rules: [{forbid: "nope"}]}}"#;
    let h = H::new();
    let (run, status) = h
        .run(
            &judge_wf(r#"{"title": "ok"}"#, true, judge, 1),
            json!({"topic": "t"}),
        )
        .await;
    assert_eq!(status, RunStatus::Succeeded);
    assert_eq!(h.started_count(&run, "check").await, 2);
    assert_eq!(retry_delays(&h, &run, "check").await.len(), 1);
    assert_eq!(h.rec(&run, "draft").await.attempt, 1);
}

/// A hosted-style judge answering scripted verdicts in order (then the last one again).
struct ScriptedJudge {
    answers: Vec<Value>,
    requests: std::sync::Mutex<Vec<ModelRequest>>,
}

#[async_trait]
impl Provider for ScriptedJudge {
    fn name(&self) -> &str {
        "scripted"
    }

    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: "scripted/judge".into(),
            roles: vec![Role::Generation],
            asynchronous: false,
            description: "answers scripted verdicts".into(),
        }]
    }

    fn estimate_cost_usd(&self, _request: &ModelRequest) -> f64 {
        0.01
    }

    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, StepError> {
        let mut seen = self.requests.lock().unwrap();
        seen.push(request.clone());
        let answer = self.answers[(seen.len() - 1).min(self.answers.len() - 1)].clone();
        Ok(ModelResponse::Completed(
            switchyard_core::model::ModelOutput {
                output: json!({"text": answer.to_string(), "json": answer}),
                usage: None,
                cost_usd: 0.01,
                model: request.model.clone(),
                provider_request_id: None,
                sources: Vec::new(),
            },
        ))
    }
}

#[tokio::test]
async fn a_hosted_judge_gets_criteria_and_value_apart_and_its_verdict_is_checked() {
    let judge = r#"{model: scripted/judge, criteria: {version: policy@1, template: "Judge the copy for {{ input.topic }}."}, min_score: 0.8, retry: {max_attempts: 2, initial_backoff: 1s}}"#;
    // (scripted answers, run status, judge calls, what the last failure says)
    let table = [
        // Not a verdict: re-asked with what was wrong, then a passing verdict.
        (
            vec![
                json!({"verdict": "fine"}),
                json!({"pass": true, "score": 0.9, "reasons": []}),
            ],
            RunStatus::Succeeded,
            2,
            None,
        ),
        // `pass` but below `min_score`: a failing verdict, here with no repair left.
        (
            vec![json!({"pass": true, "score": 0.6, "reasons": ["thin"]})],
            RunStatus::Failed,
            2,
            Some(vec![
                "judge: thin",
                "judge: score 0.60 is below the required 0.80",
            ]),
        ),
    ];
    for (answers, status, calls, details) in table {
        let scripted = Arc::new(ScriptedJudge {
            answers,
            requests: Default::default(),
        });
        let h = H::build(|_| {}, vec![scripted.clone()]);
        let (run, got) = h
            .run(
                &judge_wf(r#"{"title": "ok"}"#, false, judge, 1),
                json!({"topic": "bags"}),
            )
            .await;
        let seen = scripted.requests.lock().unwrap().clone();
        assert_eq!(seen.len(), calls);
        let first = &seen[0];
        // The criteria are the instructions; the value is the input, never spliced in.
        assert_eq!(
            first.instructions.as_deref(),
            Some("Judge the copy for bags.")
        );
        assert_eq!(first.input, json!({"title": "ok"}));
        assert_eq!(first.prompt_version.as_deref(), Some("policy@1"));
        assert_eq!(
            first.output_schema,
            Some(switchyard_core::judge::verdict_schema())
        );
        let check = h.rec(&run, "check").await;
        assert!(close(check.cost_usd, 0.01 * calls as f64));
        match details {
            None => {
                assert_eq!(got, RunStatus::Succeeded);
                assert!(
                    seen[1].feedback.iter().any(|f| f.contains("\"pass\"")),
                    "{:?}",
                    seen[1].feedback
                );
            }
            Some(lines) => {
                assert_eq!(got, status);
                // One repair is allowed: the draft ran again, got the same verdict, and
                // the step then failed `rejected`.
                let err = check.error.unwrap();
                assert_eq!(err.class, ErrorClass::Rejected);
                assert_eq!(err.details, lines);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 11. Approval

fn approval_wf(on_timeout: &str) -> String {
    format!(
        r#"
        name: gate
        version: "1"
        steps:
          - {{id: prep, kind: transform, value: "${{input.what}}"}}
          - id: gate
            kind: approval
            deadline: 1h
            message: "Approve {{{{ input.what }}}}?"
            on_timeout: {on_timeout}
          - {{id: ship, kind: transform, value: {{approved: "${{steps.gate.output.approved}}", what: "${{steps.prep.output}}"}}}}
        "#
    )
}

#[derive(Debug, Clone, Copy)]
enum Decision {
    Approve,
    Reject,
    Deadline,
}

#[tokio::test]
async fn approval_waits_then_decisions_and_deadlines_settle_it() {
    // (on_timeout, what happens, run status, run class, gate output `approved`)
    let table = [
        (
            "reject",
            Decision::Approve,
            RunStatus::Succeeded,
            None,
            Some(true),
        ),
        (
            "reject",
            Decision::Reject,
            RunStatus::Failed,
            Some(ErrorClass::Rejected),
            Some(false),
        ),
        (
            "reject",
            Decision::Deadline,
            RunStatus::Failed,
            Some(ErrorClass::Timeout),
            None,
        ),
        (
            "approve",
            Decision::Deadline,
            RunStatus::Succeeded,
            None,
            Some(true),
        ),
    ];
    for (on_timeout, decision, status, class, approved) in table {
        let case = format!("{on_timeout} / {decision:?}");
        let h = H::new();
        let (run, waiting) = h
            .run(&approval_wf(on_timeout), json!({"what": "deploy"}))
            .await;
        assert_eq!(waiting, RunStatus::Waiting, "{case}");
        let deadline = T0 + 3_600_000;
        assert_eq!(
            h.last_handled(&run),
            Handled::Waiting {
                reason: WaitReason::Approval,
                until: Some(deadline)
            }
        );
        let opened = h.step_events(&run, EventKind::StepWaiting, "gate").await;
        assert_eq!(opened[0].detail["message"], "Approve deploy?");
        let view = h.engine.view(&h.snap(&run).await).await.unwrap();
        assert_eq!(view.waiting_for.unwrap()["reason"], "approval");

        h.clock.advance(1000);
        match decision {
            Decision::Approve => {
                h.engine
                    .decide(Some("acme"), &run, "gate", true, Some("ok".into()))
                    .await
                    .unwrap();
                // A different decision on the same gate is a conflict; the same one again
                // (a retry) stands and answers as the first did.
                let again = h.engine.decide(None, &run, "gate", false, None).await;
                assert!(matches!(again, Err(EngineError::Conflict(_))), "{again:?}");
                h.engine
                    .decide(None, &run, "gate", true, Some("retried".into()))
                    .await
                    .unwrap();
                let rec = h.rec(&run, "gate").await;
                assert_eq!(rec.approval.unwrap().comment.as_deref(), Some("ok"));
            }
            Decision::Reject => {
                h.engine
                    .decide(None, &run, "gate", false, Some("no".into()))
                    .await
                    .unwrap();
            }
            Decision::Deadline => h.clock.set(deadline),
        }
        assert_eq!(h.drive(&run).await, status, "{case}");
        let snap = h.snap(&run).await;
        assert_eq!(run_class(&snap), class, "{case}");
        let gate = snap.step("gate").unwrap();
        let got = gate.output.as_ref().map(|o| match o {
            ValueRef::Inline { value } => value["approved"].as_bool().unwrap(),
            ValueRef::Blob { .. } => panic!("small output in a blob"),
        });
        assert_eq!(got, approved, "{case}");
        if status == RunStatus::Succeeded {
            assert_eq!(
                h.output(&run, "ship").await,
                json!({"approved": true, "what": "deploy"})
            );
        }
        if let Decision::Deadline = decision {
            assert_eq!(gate.finished_at, Some(deadline), "{case}");
        }
        let decided = h
            .step_events(&run, EventKind::ApprovalDecided, "gate")
            .await;
        assert_eq!(decided.len(), usize::from(approved.is_some()), "{case}");
    }
}

#[tokio::test]
async fn decide_rejects_wrong_steps_and_tenants() {
    let h = H::new();
    let (run, _) = h.run(&approval_wf("reject"), json!({"what": "x"})).await;
    let not_approval = h.engine.decide(None, &run, "prep", true, None).await;
    assert!(
        matches!(not_approval, Err(EngineError::BadRequest { .. })),
        "{not_approval:?}"
    );
    let missing = h.engine.decide(None, &run, "nope", true, None).await;
    assert!(
        matches!(missing, Err(EngineError::NotFound(_))),
        "{missing:?}"
    );
    let other_tenant = h
        .engine
        .decide(Some("globex"), &run, "gate", true, None)
        .await;
    assert!(
        matches!(other_tenant, Err(EngineError::NotFound(_))),
        "{other_tenant:?}"
    );
    assert_eq!(h.rec(&run, "gate").await.status, StepStatus::Waiting);
}

// ---------------------------------------------------------------------------------------------
// 12. Asynchronous jobs and webhooks

fn async_wf(params: &str, wait_timeout: &str) -> String {
    format!(
        r#"
        name: render
        version: "1"
        steps:
          - id: render
            model: local/async-job
            input: {{title: "${{input.title}}", text: "hello"}}
            wait_timeout: {wait_timeout}
            params: {params}
          - id: done
            kind: transform
            value: {{type: "${{steps.render.output.content_type}}", title: "${{input.title}}"}}
        "#
    )
}

#[tokio::test]
async fn callback_is_verified_deduplicated_and_continues_the_run() {
    let h = H::new();
    h.set_auto_deliver(false);
    let (run, status) = h
        .run(
            &async_wf("{poll_after_ms: 60000}", "10m"),
            json!({"title": "Card"}),
        )
        .await;
    assert_eq!(status, RunStatus::Waiting);
    assert_eq!(
        h.last_handled(&run),
        Handled::Waiting {
            reason: WaitReason::Callback,
            until: Some(T0 + 60_000)
        }
    );
    let waiting = h.rec(&run, "render").await;
    assert_eq!(waiting.status, StepStatus::Waiting);
    let job = waiting.job.clone().unwrap();
    let cbs = h.take_callbacks();
    assert_eq!(cbs.len(), 1);
    let cb = cbs[0].clone();
    assert!(
        cb.url.starts_with("http://switchyard.test/hooks/local?"),
        "{}",
        cb.url
    );
    assert!(cb.url.contains(&format!("token={}", job.callback_token)));
    h.clock.advance(cb.delay_ms);

    // Wrong token (an old attempt's callback): acknowledged, not applied.
    let mut stale = cb.clone();
    stale.url = cb.url.replace(&job.callback_token, "0123456789abcdef");
    stale.webhook_id = "msg_from_an_old_attempt".into();
    assert_eq!(h.deliver(&stale).await.unwrap(), CallbackResult::Stale);
    assert_eq!(h.rec(&run, "render").await, waiting);

    // A bad signature, or a body that is not the one signed: unauthorized.
    let mut forged = h.callback_request(&cb);
    forged
        .headers
        .insert("webhook-signature".into(), "v1,AAAA".into());
    let r = h.engine.handle_callback(&forged).await;
    assert!(matches!(r, Err(EngineError::Unauthorized(_))), "{r:?}");
    let mut tampered = h.callback_request(&cb);
    tampered.body = br#"{"id": "x", "status": "succeeded"}"#.to_vec();
    let r = h.engine.handle_callback(&tampered).await;
    assert!(matches!(r, Err(EngineError::Unauthorized(_))), "{r:?}");
    assert_eq!(h.rec(&run, "render").await, waiting);

    // The genuine callback settles the step and wakes the run.
    assert_eq!(h.deliver(&cb).await.unwrap(), CallbackResult::Applied);
    let r = h.rec(&run, "render").await;
    assert_eq!((r.status, r.attempt), (StepStatus::Succeeded, 1));
    assert!(r.cost_usd > 0.0);
    assert_eq!(
        h.step_events(&run, EventKind::WebhookReceived, "render")
            .await
            .len(),
        1
    );
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    assert_eq!(
        h.output(&run, "done").await,
        json!({"type": "image/svg+xml", "title": "Card"})
    );
    let wakes: Vec<WakeReason> = h.handled(&run).iter().map(|(_, w, _)| w.reason).collect();
    assert!(wakes.contains(&WakeReason::Webhook), "{wakes:?}");

    // The same callback again: a duplicate, nothing changes.
    let (snap, events) = (h.snap(&run).await, h.events(&run).await);
    assert_eq!(h.deliver(&cb).await.unwrap(), CallbackResult::Duplicate);
    assert_eq!(h.snap(&run).await, snap);
    assert_eq!(h.events(&run).await, events);
}

#[tokio::test]
async fn callbacks_delivered_by_the_driver_complete_the_job() {
    let h = H::new();
    let (run, status) = h
        .run(
            &async_wf("{delay_ms: 300}", "10m"),
            json!({"title": "Auto"}),
        )
        .await;
    assert_eq!(status, RunStatus::Succeeded);
    // Delivered 300 ms after the submit, well before the 1 s poll.
    assert_eq!(h.rec(&run, "render").await.finished_at, Some(T0 + 300));
    assert!(h
        .step_events(&run, EventKind::JobPolled, "render")
        .await
        .is_empty());
}

#[tokio::test]
async fn without_a_callback_the_engine_polls_after_poll_after() {
    // (params, wait_timeout, when the step finishes)
    let table = [
        ("{callback: never, poll_after_ms: 2000}", "10m", T0 + 2000),
        // The wait deadline comes before the poll: the engine polls at the deadline, and the
        // local job, which is always done, completes there.
        ("{callback: never, poll_after_ms: 5000}", "2s", T0 + 2000),
    ];
    for (params, wait_timeout, finished) in table {
        let h = H::new();
        let (run, status) = h
            .run(&async_wf(params, wait_timeout), json!({"title": "P"}))
            .await;
        // Nobody will call back: the driver stops, as the CLI's does.
        assert_eq!(status, RunStatus::Waiting, "{params}");
        assert!(h.take_callbacks().is_empty());
        assert_eq!(
            h.last_handled(&run),
            Handled::Waiting {
                reason: WaitReason::Callback,
                until: Some(finished)
            }
        );
        assert_eq!(h.skip_to_next_wake().await, Some(finished));
        assert_eq!(h.drive(&run).await, RunStatus::Succeeded, "{params}");
        let r = h.rec(&run, "render").await;
        assert_eq!((r.finished_at, r.attempt), (Some(finished), 1), "{params}");
        assert_eq!(
            h.output(&run, "render").await["content_type"],
            "image/svg+xml"
        );
    }
}

/// A provider whose asynchronous jobs never finish and never call back.
/// A job provider whose jobs never finish; it counts the jobs it was asked to cancel.
#[derive(Default)]
struct Stuck {
    cancels: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait]
impl Provider for Stuck {
    fn name(&self) -> &str {
        "stuck"
    }

    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: "stuck/job".into(),
            roles: vec![Role::Asset],
            asynchronous: true,
            description: "never finishes".into(),
        }]
    }

    fn estimate_cost_usd(&self, _request: &ModelRequest) -> f64 {
        0.0
    }

    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, StepError> {
        Ok(ModelResponse::Pending {
            job_id: format!("job-{}", request.attempt),
            poll_after_ms: Some(1000),
        })
    }

    async fn poll(
        &self,
        _request: &ModelRequest,
        job_id: &str,
    ) -> Result<ModelResponse, StepError> {
        Ok(ModelResponse::Pending {
            job_id: job_id.into(),
            poll_after_ms: None,
        })
    }

    async fn cancel(&self, _request: &ModelRequest, _job_id: &str) -> Result<(), StepError> {
        self.cancels
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn parse_callback(
        &self,
        _model: &str,
        _body: &Value,
    ) -> Result<(String, ModelResponse), StepError> {
        Err(StepError::new(ErrorClass::Malformed, "no callbacks"))
    }
}

/// Drives a run whose waits nobody outside will end, moving the clock to each next wake-up.
async fn drive_through_waits(h: &H, run: &str) -> RunStatus {
    let mut status = h.drive(run).await;
    for _ in 0..50 {
        if status != RunStatus::Waiting || h.skip_to_next_wake().await.is_none() {
            break;
        }
        status = h.drive(run).await;
    }
    status
}

#[tokio::test]
async fn a_wait_timeout_fails_the_attempt_and_retry_and_fallback_rules_apply() {
    // (extra step fields, run status, attempts, model that answered last, run class)
    let table = [
        (
            "retry: {max_attempts: 3, initial_backoff: 100ms, jitter: false}",
            RunStatus::Failed,
            3,
            "stuck/job",
            Some(ErrorClass::Timeout),
        ),
        (
            // The retry after the first wait (at 3.1 s) is within max_duration; the second
            // wait ends at 6.1 s, past it, so no further retry is scheduled.
            "retry: {max_attempts: 3, initial_backoff: 100ms, jitter: false}\n    max_duration: 5s",
            RunStatus::Failed,
            2,
            "stuck/job",
            Some(ErrorClass::Timeout),
        ),
        (
            // `timeout` falls back by default: the next model of the chain gets a new job.
            "retry: {max_attempts: 1}\n    fallback: [local/async-job]",
            RunStatus::Succeeded,
            2,
            "local/async-job",
            None,
        ),
    ];
    for (extra, status, attempts, model, class) in table {
        let h = H::build(|_| {}, vec![Arc::new(Stuck::default())]);
        let yaml = format!(
            "name: stuck\nversion: \"1\"\nsteps:\n  - id: render\n    model: stuck/job\n    input: x\n    wait_timeout: 3s\n    {extra}\n"
        );
        let run = h.start(&yaml, json!({})).await;
        assert_eq!(drive_through_waits(&h, &run).await, status, "{extra}");
        let snap = h.snap(&run).await;
        assert_eq!(run_class(&snap), class, "{extra}");
        let r = snap.step("render").unwrap();
        assert_eq!(
            (r.attempt, r.model.as_deref()),
            (attempts, Some(model)),
            "{extra}"
        );
        // Each attempt submitted its own job: one StepStarted per attempt.
        let starts = start_times(&h, &run, "render").await;
        assert_eq!(starts.len(), attempts as usize, "{extra}");
        // Every stuck attempt was polled at 1 s (still pending) and once more at its 3 s wait
        // deadline, where it failed.
        let polled: Vec<u64> = h
            .step_events(&run, EventKind::JobPolled, "render")
            .await
            .iter()
            .map(|e| e.at)
            .collect();
        let stuck_starts = if status == RunStatus::Failed {
            &starts[..]
        } else {
            &starts[..1]
        };
        assert_eq!(
            polled,
            stuck_starts
                .iter()
                .flat_map(|t| [t + 1000, t + 3000])
                .collect::<Vec<_>>(),
            "{extra}"
        );
        if status == RunStatus::Failed {
            assert_eq!(
                r.finished_at,
                Some(starts.last().unwrap() + 3000),
                "{extra}"
            );
            let retried = h
                .step_events(&run, EventKind::StepRetryScheduled, "render")
                .await;
            assert_eq!(retried.len(), attempts as usize - 1, "{extra}");
            assert!(retried.iter().all(|e| e.detail["class"] == "timeout"));
        } else {
            assert!(r.fallback_used);
            assert_eq!(starts, [T0, T0 + 3000]);
            // The local job called back 50 ms after it was submitted.
            assert_eq!(r.finished_at, Some(T0 + 3050));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 13. Crash recovery

const CRASH: &str = r#"
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

const DEAD: &str = "local:999999:dead";

/// A worker took the Start wake-up, ran `a`, claimed `b` (state before side effects) and died
/// before checkpointing it, holding the run's lease until `run_lease_until`.
async fn crash_after_claiming_b(
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
async fn a_lost_attempt_is_retried_after_its_lease_expires() {
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
async fn take_over_ends_a_dead_workers_leases_at_once() {
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
struct Gate {
    entered: tokio::sync::Notify,
    open: tokio::sync::Semaphore,
}

impl Gate {
    fn closed() -> Gate {
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
async fn start_one_held_step() -> (H, Arc<Gate>, String, WakeUp) {
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
async fn inside_the_call(
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
async fn a_second_worker_finds_the_run_busy_and_comes_back_later() {
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

// ---------------------------------------------------------------------------------------------
// 14. Cancellation

#[tokio::test]
async fn cancel_a_waiting_run_then_cancelling_again_conflicts() {
    let h = H::new();
    let (run, status) = h.run(&approval_wf("reject"), json!({"what": "x"})).await;
    assert_eq!(status, RunStatus::Waiting);
    assert_eq!(
        h.engine.cancel(Some("acme"), &run).await.unwrap(),
        RunStatus::Waiting
    );
    assert!(h.snap(&run).await.header.cancel_requested);
    assert_eq!(h.drive(&run).await, RunStatus::Cancelled);
    let snap = h.snap(&run).await;
    assert_eq!(run_class(&snap), Some(ErrorClass::Cancelled));
    assert!(
        snap.step("ship").is_none(),
        "nothing started after the cancel"
    );
    let kinds: Vec<EventKind> = h.events(&run).await.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&EventKind::RunCancelRequested));
    assert_eq!(kinds.last(), Some(&EventKind::RunCancelled));

    let again = h.engine.cancel(None, &run).await;
    assert!(matches!(&again, Err(EngineError::Conflict(_))), "{again:?}");
    assert_eq!(again.unwrap_err().status(), 409);
    let decide = h.engine.decide(None, &run, "gate", true, None).await;
    assert!(
        matches!(decide, Err(EngineError::Conflict(_))),
        "{decide:?}"
    );

    // A succeeded run cannot be cancelled either; another tenant does not see the run.
    let (done, _) = h.run(FLAKY, json!({"text": "refund"})).await;
    assert!(matches!(
        h.engine.cancel(None, &done).await,
        Err(EngineError::Conflict(_))
    ));
    assert!(matches!(
        h.engine.cancel(Some("globex"), &run).await,
        Err(EngineError::NotFound(_))
    ));
}

#[tokio::test]
async fn cancel_during_a_retry_wait_starts_no_further_attempt() {
    let h = H::new();
    let run = h.start(FLAKY, json!({"text": "refund"})).await;
    h.step().await; // first attempt fails, retry due in 2 s
    h.engine.cancel(None, &run).await.unwrap();
    assert_eq!(h.drive(&run).await, RunStatus::Cancelled);
    assert_eq!(h.started_count(&run, "classify").await, 1);
    // The retry timer still fires later, and finds the run ended.
    for r in h.drain().await {
        assert_eq!(r, Handled::AlreadyEnded(RunStatus::Cancelled));
    }
    assert_eq!(h.started_count(&run, "classify").await, 1);
}

// ---------------------------------------------------------------------------------------------
// 15. Large values

#[tokio::test]
async fn large_values_go_to_the_blob_store_and_are_read_back() {
    let h = H::with_config(|c| c.inline_limit_bytes = 1024);
    let text = "lorem ipsum ".repeat(300);
    let yaml = r#"
        name: big
        version: "1"
        output:
          text: "${steps.copy.output}"
          tag: "${steps.small.output.tag}"
        steps:
          - id: big
            model: local/echo
            input: "${input}"
          - {id: small, kind: transform, value: {tag: "${steps.big.output.json.tag}"}}
          - {id: copy, kind: transform, value: "${steps.big.output.json.text}"}
    "#;
    let (run, status) = h.run(yaml, json!({"text": text, "tag": "t-1"})).await;
    assert_eq!(status, RunStatus::Succeeded);
    let snap = h.snap(&run).await;
    assert!(matches!(snap.header.input, ValueRef::Blob { .. }));
    let is_blob =
        |step: &str| matches!(snap.step(step).unwrap().output, Some(ValueRef::Blob { .. }));
    assert!(is_blob("big") && is_blob("copy") && !is_blob("small"));
    if let Some(ValueRef::Blob { bytes, .. }) = &snap.step("big").unwrap().output {
        assert!(*bytes > 1024);
    }
    // Later references read the stored values back.
    assert_eq!(h.output(&run, "small").await, json!({"tag": "t-1"}));
    assert_eq!(h.output(&run, "copy").await, json!(text));
    let out = h.run_output(&run).await;
    assert_eq!(out, json!({"text": text, "tag": "t-1"}));

    // The run document links a large output instead of inlining it.
    let Some(ValueRef::Blob { key, bytes }) = snap.header.output.clone() else {
        panic!("the run output should be a blob: {:?}", snap.header.output)
    };
    let view = h.engine.view(&snap).await.unwrap();
    let url = view.output["url"].as_str().unwrap();
    // Content-addressed: `blobs/<first two hex digits>/<the rest>`.
    assert!(
        url.starts_with("file://") && url.ends_with(&key[2..]),
        "{url}"
    );
    assert_eq!(view.output["bytes"], bytes);
    let path = url.trim_start_matches("file://");
    let on_disk: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(on_disk, out);
}

// ---------------------------------------------------------------------------------------------
// 16. Intake

const TYPED: &str = r#"
    name: typed
    version: "1"
    input_schema:
      type: object
      required: [x]
      properties:
        x: {type: integer}
        nested:
          type: object
          properties:
            y: {type: string}
    steps:
      - {id: a, kind: transform, value: "${input.x}"}
"#;

#[tokio::test]
async fn input_failing_its_schema_is_refused_and_nothing_is_stored() {
    let h = H::new();
    let wf = h.compile(TYPED);
    // (input, field named)
    let table = [
        (json!({"x": "three"}), "input.x"),
        (json!({"x": 1, "nested": {"y": 2}}), "input.nested.y"),
        (json!({"nested": {}}), "input.x"),
    ];
    for (input, field) in table {
        let err = h
            .try_start(&wf, input.clone(), Some("k"))
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::InvalidInput { .. }), "{err:?}");
        assert_eq!(err.field(), Some(field), "{input}");
        assert_eq!((err.status(), err.code()), (422, "invalid_input"));
    }
    assert!(h
        .engine
        .list_runs(&all_runs())
        .await
        .unwrap()
        .runs
        .is_empty());
    assert!(h.queue.is_empty().await.unwrap());
    // The key was not used up by the refused requests.
    let ok = h.try_start(&wf, json!({"x": 1}), Some("k")).await.unwrap();
    assert!(!ok.existing);
}

#[tokio::test]
async fn idempotency_key_returns_the_same_run_or_conflicts() {
    let h = H::new();
    let wf = h.compile(TYPED);
    let first = h
        .try_start(&wf, json!({"x": 1}), Some("key-1"))
        .await
        .unwrap();
    assert_eq!((first.status, first.existing), (RunStatus::Pending, false));
    let again = h
        .try_start(&wf, json!({"x": 1}), Some("key-1"))
        .await
        .unwrap();
    assert_eq!(
        (again.run_id.as_str(), again.existing),
        (first.run_id.as_str(), true)
    );
    let other = h.try_start(&wf, json!({"x": 2}), Some("key-1")).await;
    assert!(
        matches!(&other, Err(EngineError::IdempotencyConflict(_))),
        "{other:?}"
    );
    let other = other.unwrap_err();
    assert_eq!(
        (other.status(), other.code()),
        (409, "idempotency_conflict")
    );
    assert_eq!(h.engine.list_runs(&all_runs()).await.unwrap().runs.len(), 1);

    // Once the run ended, the same request reports its status.
    assert_eq!(h.drive(&first.run_id).await, RunStatus::Succeeded);
    let late = h
        .try_start(&wf, json!({"x": 1}), Some("key-1"))
        .await
        .unwrap();
    assert_eq!(
        (late.run_id, late.status, late.existing),
        (first.run_id, RunStatus::Succeeded, true)
    );
    // Another key is another run.
    let fresh = h
        .try_start(&wf, json!({"x": 1}), Some("key-2"))
        .await
        .unwrap();
    assert!(!fresh.existing);
    assert_eq!(h.engine.list_runs(&all_runs()).await.unwrap().runs.len(), 2);
}

/// A request that claimed its key but died before creating the run: the retry creates the run
/// under the id the key points at, instead of reporting a run that does not exist.
#[tokio::test]
async fn a_retry_after_a_half_done_start_creates_the_run() {
    let h = H::new();
    let wf = h.compile(TYPED);
    let req = H::request(&wf, json!({"x": 1}));
    let body = serde_json::to_vec(&req).unwrap();
    let claimed = h
        .engine
        .store
        .claim_idempotency(
            support::TENANT,
            "key-9",
            &switchyard_core::sha256_hex(&body),
            "run_orphan",
            h.now(),
        )
        .await
        .unwrap();
    assert_eq!(claimed, switchyard_core::ports::IdempotencyClaim::New);
    let retry = h
        .try_start(&wf, json!({"x": 1}), Some("key-9"))
        .await
        .unwrap();
    assert_eq!(retry.run_id, "run_orphan");
    assert!(h.engine.store.load("run_orphan").await.unwrap().is_some());
    assert_eq!(h.drive("run_orphan").await, RunStatus::Succeeded);
}

// ---------------------------------------------------------------------------------------------
// 17. Property: extra wake-ups at random points change nothing

const PROP: &str = r#"
    name: prop
    version: "1"
    defaults:
      retry: {max_attempts: 3, initial_backoff: 500ms, jitter: true}
    steps:
      - id: classify
        model: local/keyword-classifier
        input: "${input.text}"
        params:
          labels: {billing: [refund, invoice], tech: [crash]}
      - id: triage
        kind: route
        routes:
          - when: {path: steps.classify.output.label, equals: billing}
            to: fan
        default: plain
      - id: fan
        kind: parallel
        branches:
          x: {kind: transform, value: "x:${input.text}"}
          y:
            model: local/template-generator
            input: "${input}"
            params:
              template: "y for {{ input.text }}"
              fault: {kind: transient, times: 2}
      - {id: plain, kind: transform, value: "plain:${input.text}"}
      - id: flaky
        needs: [fan, plain]
        model: local/template-generator
        input: {fan: "${steps.fan.output}", plain: "${steps.plain.output}"}
        params:
          template: "done {{ input.fan | tojson }} {{ input.plain }}"
          fault: {kind: transient, times: 1}
"#;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn extra_wake_ups_at_random_points_change_nothing(
        billing in any::<bool>(),
        extra in prop::collection::vec((0usize..REASONS.len(), 0u64..3_000, 0usize..10), 0..12),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let text = if billing { "refund my invoice" } else { "the app crashed" };
            let input = json!({"text": text});

            let clean = H::new();
            let (clean_run, clean_status) = clean.run(PROP, input.clone()).await;
            assert_eq!(clean_status, RunStatus::Succeeded);
            let want = clean.summary(&clean_run).await;

            let h = H::new();
            let run = h.start(PROP, input).await;
            let inject: Vec<(usize, WakeReason, u64)> =
                extra.iter().map(|(r, delay, at)| (*at, REASONS[*r], *delay)).collect();
            assert_eq!(h.drive_injecting(&run, &inject).await, RunStatus::Succeeded);
            // Wake-ups still queued (late ones) are handled too.
            for r in h.drain().await {
                assert_eq!(r, Handled::AlreadyEnded(RunStatus::Succeeded));
            }
            // Injections planned after the run ended are late duplicates as well.
            for (_, reason, _) in &inject {
                let late = WakeUp { run_id: run.clone(), reason: *reason, due_at: None };
                assert_eq!(
                    h.engine.handle(&late, None).await.unwrap(),
                    Handled::AlreadyEnded(RunStatus::Succeeded)
                );
            }

            assert_eq!(h.summary(&run).await, want);
            // No attempt started twice, no step succeeded twice.
            let snap = h.snap(&run).await;
            for r in &snap.steps {
                let started = h.started_count(&run, &r.step).await;
                let is_model = matches!(
                    h.engine.definition(&snap.header.workflow.hash).await.unwrap()
                        .step(&r.step).unwrap().kind,
                    StepKind::Model(_)
                );
                if is_model {
                    assert_eq!(started, r.attempt as usize, "{}", r.step);
                }
                let succeeded = h.step_events(&run, EventKind::StepSucceeded, &r.step).await.len();
                assert_eq!(succeeded, usize::from(r.status == StepStatus::Succeeded), "{}", r.step);
            }
            let expected_attempts: &[(&str, u32)] = if billing {
                &[("fan.y", 3), ("flaky", 2), ("fan", 1)]
            } else {
                &[("flaky", 2), ("plain", 1)]
            };
            for (step, attempts) in expected_attempts {
                assert_eq!(snap.step(step).unwrap().attempt, *attempts, "{step}");
            }
        });
    }
}

/// The property's workflow compiles against the local catalog (a quick check that a typo in
/// it fails here, not as 24 confusing proptest cases).
#[test]
fn property_workflow_compiles() {
    let wf = compile_with(PROP, &LocalModels::catalog());
    assert_eq!(wf.steps.len(), 7);
}

/// Parallel branches that start together share the budget: each one's estimate is reserved
/// until its real cost is recorded, so three branches cannot all spend what only two may.
#[tokio::test]
async fn parallel_branches_cannot_overspend_the_budget_together() {
    use switchyard_core::model::Provider;
    let h = H::new();
    let branch = |n: u32| {
        format!(
            "      b{n}:\n        model: local/template-generator\n        input: {{text: \"${{input.text}}\"}}\n        params: {{template: \"{{{{ input.text }}}}\"}}\n        optional: true\n"
        )
    };
    let text = "word ".repeat(200);
    // The estimate of one branch, as the engine will compute it.
    let probe = switchyard_providers::LocalProvider::new(Default::default());
    let req = switchyard_core::model::ModelRequest {
        run_id: "r".into(),
        step: "fan.b0".into(),
        attempt: 1,
        model: "local/template-generator".into(),
        role: switchyard_core::model::Role::Generation,
        instructions: None,
        prompt_version: None,
        input: json!({"text": text}),
        params: json!({"template": "{{ input.text }}"}),
        output_schema: None,
        feedback: vec![],
        timeout_ms: 30_000,
        callback: None,
    };
    let estimate = probe.estimate_cost_usd(&req);
    assert!(estimate > 0.0);
    let budget = estimate * 2.5;
    let yaml = format!(
        "name: fan\nversion: \"1\"\nbudget: {{max_cost_usd: {budget}}}\nsteps:\n  - id: fan\n    kind: parallel\n    branches:\n{}{}{}",
        branch(0),
        branch(1),
        branch(2)
    );
    let (run, status) = h.run(&yaml, json!({"text": text})).await;
    assert_eq!(status, RunStatus::Succeeded);
    let snap = h.snap(&run).await;
    let failed: Vec<_> = snap
        .steps
        .iter()
        .filter(|r| r.status == StepStatus::Failed)
        .map(|r| (r.step.clone(), r.error.clone().unwrap().class))
        .collect();
    assert_eq!(failed.len(), 1, "exactly one branch is refused: {failed:?}");
    assert_eq!(failed[0].1, ErrorClass::BudgetExceeded);
    assert!(
        snap.cost_usd() <= budget,
        "spent {} of {budget}",
        snap.cost_usd()
    );
}

/// Jobs a run gives up on are cancelled at the provider: when their wait times out, and when
/// the run is cancelled while they run.
#[tokio::test]
async fn abandoned_jobs_are_cancelled_at_the_provider() {
    use std::sync::atomic::Ordering;
    let yaml = "name: job\nversion: \"1\"\nsteps:\n  - id: render\n    model: stuck/job\n    input: x\n    wait_timeout: 3s\n    retry: {max_attempts: 1}\n";

    // The wait times out: one poll at the deadline, then the job is cancelled.
    let stuck = Arc::new(Stuck::default());
    let cancels = stuck.cancels.clone();
    let h = H::build(|_| {}, vec![stuck]);
    let run = h.start(yaml, json!({})).await;
    assert_eq!(drive_through_waits(&h, &run).await, RunStatus::Failed);
    assert_eq!(run_class(&h.snap(&run).await), Some(ErrorClass::Timeout));
    assert_eq!(cancels.load(Ordering::SeqCst), 1);

    // The run is cancelled while the job runs.
    let stuck = Arc::new(Stuck::default());
    let cancels = stuck.cancels.clone();
    let h = H::build(|_| {}, vec![stuck]);
    let run = h.start(yaml, json!({})).await;
    assert_eq!(h.drive(&run).await, RunStatus::Waiting);
    h.engine.cancel(None, &run).await.unwrap();
    assert_eq!(h.drive(&run).await, RunStatus::Cancelled);
    assert_eq!(cancels.load(Ordering::SeqCst), 1);
}

fn all_runs() -> switchyard_core::ports::RunQuery {
    switchyard_core::ports::RunQuery::new(switchyard_core::ports::ListScope::AllTenants, 100)
}

/// Every error of the webhook route is the contract's JSON error body — the handler's own, and
/// the ones axum writes before the handler runs (a body over the limit, an unknown route, a
/// wrong method), which are plain text unless the router converts them.
#[tokio::test]
async fn webhook_route_errors_are_json_bodies() {
    let h = H::new();
    let router = switchyard_engine::http::hooks_router(h.engine.clone(), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let too_big = vec![b'x'; switchyard_engine::http::MAX_CALLBACK_BYTES + 1];
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "over the body limit",
            client.post(format!("{base}/hooks/local")).body(too_big),
            413,
            "too_large",
        ),
        (
            "unsigned",
            client.post(format!("{base}/hooks/local")).body("{}"),
            401,
            "unauthorized",
        ),
        (
            "unknown route",
            client.post(format!("{base}/hooks")).body("{}"),
            404,
            "not_found",
        ),
        (
            "wrong method",
            client.get(format!("{base}/hooks/local")),
            405,
            "method_not_allowed",
        ),
    ];
    for (what, req, status, code) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{what}");
        let text = resp.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
    }
}

/// Two records of one SQS batch for the same run, handled concurrently by one invocation (one
/// engine, one configured owner): the lease is per `handle` call, so only one drives the run.
#[tokio::test]
async fn two_records_of_one_batch_for_one_run_are_handled_once() {
    let (h, gate, run, wake) = start_one_held_step().await;
    let first = inside_the_call(&h.engine, &gate, &wake).await;
    assert_eq!(
        h.engine.handle(&wake, None).await.unwrap(),
        Handled::Busy,
        "the same engine, another `handle` call: not the lease's owner"
    );
    gate.open.add_permits(1);
    assert_eq!(
        first.await.unwrap().unwrap(),
        Handled::Ended(RunStatus::Succeeded)
    );
    assert_eq!(h.started_count(&run, "slow").await, 1);
}

/// A wake-up that read the run just before another worker ended it, and took the lease just
/// after (an ended run's lease is free): it must see the end and leave the run ended — not
/// park it as `waiting`, which would reopen it and end it a second time.
#[tokio::test]
async fn a_wake_up_that_read_the_run_before_it_ended_leaves_it_ended() {
    use switchyard_contract::faults::FaultyStore;
    let slot: Arc<std::sync::Mutex<Option<Arc<FaultyStore>>>> = Arc::default();
    let keep = slot.clone();
    let h = H::with_store(move |inner| {
        let faulty = Arc::new(FaultyStore::new(inner));
        *keep.lock().unwrap() = Some(faulty.clone());
        faulty
    });
    let faulty = slot.lock().unwrap().clone().unwrap();
    let run = h.start(CHAIN, json!({"text": "refund please"})).await;
    let before = h.snap(&run).await;
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    let ended = h.snap(&run).await;
    let events = h.events(&run).await.len();

    faulty.load_stale_once(before);
    let wake = WakeUp {
        run_id: run.clone(),
        reason: WakeReason::Start,
        due_at: None,
    };
    let late = h
        .other_worker("worker-2")
        .handle(&wake, None)
        .await
        .unwrap();
    assert_eq!(late, Handled::AlreadyEnded(RunStatus::Succeeded));
    let after = h.snap(&run).await.header;
    assert_eq!(
        (
            after.status,
            &after.output,
            after.ended_at,
            &after.wait,
            &after.lease
        ),
        (
            RunStatus::Succeeded,
            &ended.header.output,
            ended.header.ended_at,
            &None,
            &None
        )
    );
    assert_eq!(h.events(&run).await.len(), events, "nothing happened again");
}

/// A model call is started only if its whole attempt timeout fits before the invocation's
/// deadline; otherwise the run is handed to the next invocation without starting it.
#[tokio::test]
async fn a_call_that_would_outlive_the_invocation_is_not_started() {
    let h = H::new();
    let yaml = r#"
        name: long
        version: "1"
        steps:
          - id: first
            kind: transform
            value: "${input.text}"
          - id: call
            model: local/echo
            input: "${steps.first.output}"
            timeout: 30s
    "#;
    let run = h.start(yaml, json!({"text": "hi"})).await;
    h.queue.receive(16, 60_000).await.unwrap(); // the Start wake-up, taken by this "invocation"
    let wake = WakeUp {
        run_id: run.clone(),
        reason: WakeReason::Start,
        due_at: None,
    };
    // 10 s left: enough for the transform, not for a call that may take 30 s.
    let handled = h
        .engine
        .handle(&wake, Some(h.now() + 10_000))
        .await
        .unwrap();
    assert_eq!(handled, Handled::Yielded);
    assert_eq!(h.rec(&run, "first").await.status, StepStatus::Succeeded);
    assert_eq!(h.started_count(&run, "call").await, 0, "not started");
    // The next invocation (no deadline here) runs it.
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    assert_eq!(h.started_count(&run, "call").await, 1);
}

/// Offloaded values are content-addressed and never change: once read, a re-plan takes them
/// from memory (here: the blob file is gone, and the value still loads).
#[tokio::test]
async fn offloaded_values_are_read_once() {
    let h = H::new();
    let big = json!({"text": "x".repeat(100_000)});
    let r = h.engine.store_value(big.clone()).await.unwrap();
    let ValueRef::Blob { key, .. } = &r else {
        panic!("a 100 kB value is offloaded: {r:?}")
    };
    assert_eq!(h.engine.load_value(&r).await.unwrap(), big);
    let file = h
        .backend
        .data_dir()
        .join("blobs")
        .join(&key[..2])
        .join(&key[2..]);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        h.engine.load_value(&r).await.unwrap(),
        big,
        "served from memory"
    );
    // Another engine on the same store has no such memory: the read goes to the store.
    let other = h.other_worker("w2");
    assert!(matches!(
        other.load_value(&r).await,
        Err(switchyard_core::StoreError::NotFound(_))
    ));
}

/// The run header stays small: an input or output above `header_inline_bytes` (1 KiB) is
/// kept in the blob store and the header holds its reference; small ones stay inline.
#[tokio::test]
async fn the_run_header_keeps_large_inputs_and_outputs_by_reference() {
    let h = H::new();
    let yaml = r#"
        name: big
        version: "1"
        steps:
          - {id: echo, kind: transform, value: "${input.text}"}
        output: {text: "${steps.echo.output}"}
    "#;
    for (len, offloaded) in [(100, false), (5_000, true)] {
        let text = "y".repeat(len);
        let (run, status) = h.run(yaml, json!({"text": text})).await;
        assert_eq!(status, RunStatus::Succeeded);
        let header = h.snap(&run).await.header;
        let is_blob = |v: &Option<ValueRef>| matches!(v, Some(ValueRef::Blob { .. }));
        assert_eq!(
            is_blob(&Some(header.input.clone())),
            offloaded,
            "input of {len}"
        );
        assert_eq!(is_blob(&header.output), offloaded, "output of {len}");
        let out = h
            .engine
            .load_value(header.output.as_ref().unwrap())
            .await
            .unwrap();
        assert_eq!(out["text"], text);
    }
}

/// A receiver that never answers 2xx: every attempt is a 503, with the headers it was sent.
#[derive(Default)]
struct DownReceiver {
    seen: std::sync::Mutex<Vec<Vec<(String, String)>>>,
}

#[async_trait]
impl switchyard_core::ports::CallbackSender for DownReceiver {
    async fn deliver(
        &self,
        _url: &str,
        headers: &[(String, String)],
        _body: Vec<u8>,
        _allow_private: bool,
    ) -> switchyard_core::ports::OutboundAttempt {
        self.seen.lock().unwrap().push(headers.to_vec());
        switchyard_core::ports::OutboundAttempt {
            result: switchyard_core::outbound::DeliveryResult::Status(503),
            latency_ms: 3,
            address: Some("203.0.113.7:443".into()),
        }
    }
}

/// The notifier retries a receiver that stays down with backoff (the message comes back after
/// each delay), with one `webhook-id` on every attempt, records each attempt on the run, and
/// moves the message to the notify dead letters after the last one.
#[tokio::test]
async fn a_receiver_that_stays_down_is_retried_then_dead_lettered() {
    use switchyard_core::outbound::{backoff_ms as notify_backoff, MAX_NOTIFY_ATTEMPTS};
    use switchyard_core::ports::QueueName;
    use switchyard_engine::pool::{Pool, PoolOptions};

    let h = H::with_config(|c| c.callback_secrets = support::secret());
    let wf =
        h.compile("name: quick\nversion: \"1\"\nsteps:\n  - {id: a, kind: transform, value: 1}\n");
    let mut req = H::request(&wf, json!({}));
    req.callback_url = Some("https://receiver.example/hook".into());
    let run = h
        .engine
        .start_workflow(support::TENANT, &wf, req, None)
        .await
        .unwrap()
        .run_id;
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);

    let clock: Arc<dyn switchyard_core::Clock> = Arc::new(h.clock.clone());
    let notify = h
        .backend
        .queue(QueueName::Notify, clock)
        .with_max_receive_count(MAX_NOTIFY_ATTEMPTS);
    let down = Arc::new(DownReceiver::default());
    let callbacks = switchyard_engine::driver::Driver::new(
        h.engine.clone(),
        Arc::new(h.queue.clone()),
        Default::default(),
    );
    let pool = Arc::new(Pool {
        engine: h.engine.clone(),
        work: Arc::new(h.queue.clone()),
        notify: Arc::new(notify.clone()),
        sender: down.clone(),
        callbacks: Arc::new(callbacks),
        kick: Arc::new(tokio::sync::Notify::new()),
        opts: PoolOptions {
            workers: 1,
            idle_ms: 2,
            ..PoolOptions::default()
        },
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(pool.run(stopped));
    // Move the engine's clock on while the pool works (its loops sleep at most 2 ms real).
    let mut steps = 0;
    while notify.dead_letters().await.unwrap().is_empty() {
        steps += 1;
        assert!(
            steps < 5_000,
            "never dead-lettered: {} attempts",
            down.seen.lock().unwrap().len()
        );
        h.clock.advance(500);
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();

    let seen = down.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), MAX_NOTIFY_ATTEMPTS as usize);
    let ids: std::collections::BTreeSet<String> = seen
        .iter()
        .map(|hs| {
            hs.iter()
                .find(|(k, _)| k == "webhook-id")
                .unwrap()
                .1
                .clone()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one webhook-id across retries: {ids:?}");
    let attempts: Vec<HistoryEvent> = h
        .events(&run)
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::NotificationAttempted)
        .collect();
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|e| e.detail["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["retry", "retry", "retry", "retry", "retry", "gave_up"]
    );
    // Each retry came after (at least) its backoff.
    for (i, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= notify_backoff(i as u32 + 1),
            "attempt {}: {gap} ms",
            i + 2
        );
    }
    assert_eq!(attempts[0].attempt, Some(1));
    let dead = notify.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].body.contains(ids.iter().next().unwrap()),
        "{:?}",
        dead[0]
    );
}

fn record(id: &str, body: &str, receive_count: u32) -> switchyard_engine::batch::Record {
    switchyard_engine::batch::Record {
        message_id: id.into(),
        receipt: format!("rcpt-{id}"),
        body: body.into(),
        receive_count,
    }
}

/// An SQS batch as the worker function gets it: two records of one run (a duplicate
/// delivery) are handled once, a poisoned body is reported failed (SQS dead-letters it after
/// its max receives), and the other runs go on.
#[tokio::test]
async fn a_work_batch_handles_each_run_once_and_reports_only_the_failed_records() {
    let h = H::new();
    let wf = h.compile(CHAIN);
    let a = h.start_wf(&wf, json!({"text": "a"})).await;
    let b = h.start_wf(&wf, json!({"text": "b"})).await;
    let wake = |run: &str, reason: &str| format!(r#"{{"run_id": "{run}", "reason": "{reason}"}}"#);
    let records = [
        record("m1", &wake(&a, "start"), 1),
        record("m2", "{not json", 1),
        record("m3", &wake(&a, "start"), 2),
        record("m4", &wake(&b, "start"), 1),
        record("m5", r#"{"run_id": "x"}"#, 1),
    ];
    let report = h.engine.handle_work_batch(&records, None, &h.queue).await;
    assert_eq!(report.failures, ["m2", "m5"]);
    let runs: Vec<&str> = report.handled.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(runs, [a.as_str(), b.as_str()], "one handle per run");
    for (_, handled) in &report.handled {
        assert_eq!(*handled, Handled::Ended(RunStatus::Succeeded));
    }
    assert_eq!(h.started_count(&a, "classify").await, 1);
}

/// A notification batch: a receiver that answers 503 gets the record back after the backoff
/// (its visibility is set, and it is reported failed); a delivered one is not reported.
#[tokio::test]
async fn a_notify_batch_reports_retries_and_sets_their_visibility() {
    use switchyard_core::ports::{Message, QueueName};
    let h = H::with_config(|c| c.callback_secrets = support::secret());
    let wf =
        h.compile("name: quick\nversion: \"1\"\nsteps:\n  - {id: a, kind: transform, value: 1}\n");
    let mut req = H::request(&wf, json!({}));
    req.callback_url = Some("https://receiver.example/hook".into());
    let run = h
        .engine
        .start_workflow(support::TENANT, &wf, req, None)
        .await
        .unwrap()
        .run_id;
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    let clock: Arc<dyn switchyard_core::Clock> = Arc::new(h.clock.clone());
    let notify = h.backend.queue(QueueName::Notify, clock);
    let got = notify.receive(10, 30_000).await.unwrap();
    assert_eq!(got.len(), 1, "the end notification was queued");
    let Message::Notify(n) = &got[0].message else {
        panic!()
    };
    let body = Message::Notify(n.clone()).to_body().unwrap();
    let records = [
        switchyard_engine::batch::Record {
            message_id: got[0].id.clone(),
            receipt: got[0].receipt.clone(),
            body,
            receive_count: got[0].receive_count,
        },
        record("junk", "[]", 1),
    ];
    let down = DownReceiver::default();
    let report = h.engine.handle_notify_batch(&records, &notify, &down).await;
    let mut failed = report.failures.clone();
    failed.sort();
    assert_eq!(failed, [got[0].id.clone(), "junk".to_string()]);
    // Hidden for the first backoff (1 s), then back.
    assert!(notify.receive(10, 30_000).await.unwrap().is_empty());
    h.clock.advance(1_000);
    assert_eq!(notify.receive(10, 30_000).await.unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Faults between and after writes (docs/architecture.md, "Recovery")

/// The draft fails the judge once; the judge's repair resets the draft and re-asks the
/// validator in one transition (two records).
const JUDGED_ONCE: &str = r#"{% if feedback %}{"title": "{{ feedback[0][:13] }}"}{% else %}{"title": "The best pack"}{% endif %}"#;

/// What a clean run of [`JUDGED_ONCE`] did: starts per (step, attempt), repairs, judge calls.
async fn judged_once_story(
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
async fn a_repair_is_never_half_applied_when_its_write_fails() {
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
        let h = H::with_store(move |inner| {
            let f = Arc::new(FaultyStore::new(inner).fail(WriteKind::PutSteps, 1, fault));
            *slot.lock().unwrap() = Some(f.clone());
            f
        });
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
/// the run still succeeds, and no step is started twice for one attempt.
#[tokio::test]
async fn any_one_failed_write_leaves_the_run_whole() {
    use switchyard_contract::faults::{Fault, FaultyStore, WriteKind};
    let src = judge_wf(JUDGED_ONCE, true, NO_BEST, 2);
    // How many writes of each kind a clean run makes.
    let counting = Arc::new(std::sync::Mutex::new(None::<Arc<FaultyStore>>));
    let slot = counting.clone();
    let clean = H::with_store(move |inner| {
        let f = Arc::new(FaultyStore::new(inner));
        *slot.lock().unwrap() = Some(f.clone());
        f
    });
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
                let h = H::with_store(move |inner| {
                    Arc::new(FaultyStore::new(inner).fail(kind, nth, fault))
                });
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
        cases >= 20,
        "every write of the run was tried ({cases} cases)"
    );
}

/// Drops every visible wake-up: what a lost send, a dead-lettered message or a timer that
/// never arrived leaves behind.
async fn lose_wake_ups(h: &H) -> usize {
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
async fn the_sweep_wakes_runs_whose_wake_ups_were_lost() {
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
