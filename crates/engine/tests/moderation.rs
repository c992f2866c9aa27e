//! Engine tests of moderation as a role: the `moderated-reply` example on the embedded
//! backend, screening the input and the drafted answer with `local/lexicon-moderation`, and a
//! moderation call retried like any model call.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

mod support;

use serde_json::json;
use support::H;
use switchyard_core::state::{RunStatus, StepStatus};

fn example() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../workflows/moderated-reply.yaml"
    ))
    .unwrap()
}

#[tokio::test]
async fn flagged_input_is_refused_before_a_reply_and_clean_input_is_answered() {
    // (message, input flagged, the branch that ran, steps that were skipped)
    let table = [
        (
            "When will my order ship? Thanks!",
            false,
            "sent",
            vec!["refuse", "hold"],
        ),
        (
            "You idiot, shut up and refund me",
            true,
            "refused",
            vec!["draft", "screen_output", "release", "hold", "send"],
        ),
    ];
    for (message, flagged, branch, skipped) in table {
        let h = H::new();
        let (run, status) = h.run(&example(), json!({"message": message})).await;
        assert_eq!(status, RunStatus::Succeeded, "{message}");
        let screen = h.output(&run, "screen_input").await;
        assert_eq!(screen["flagged"], flagged, "{message}: {screen}");
        assert_eq!(screen["model"], "local/lexicon-moderation");
        assert_eq!(screen["categories"]["harassment"], flagged, "{screen}");
        assert!(screen["scores"]["harassment"].as_f64().unwrap() >= 0.0);
        let out = h.run_output(&run).await;
        assert_eq!(out["input_flagged"], flagged);
        let result = out["result"].as_object().unwrap();
        for (k, v) in result {
            assert_eq!(v.is_null(), k != branch, "{message}: {out}");
        }
        for s in skipped {
            assert_eq!(
                h.rec(&run, s).await.status,
                StepStatus::Skipped,
                "{message}: {s}"
            );
        }
        // The screens are model calls: cost and model on their records.
        let rec = h.rec(&run, "screen_input").await;
        assert!(rec.cost_usd > 0.0 && rec.usage.is_some());
    }
}

#[tokio::test]
async fn a_flagged_answer_is_held_and_a_moderation_call_is_retried() {
    // The drafted answer repeats the message, so the output screen flags it; the input
    // screen uses a lexicon of its own that lets the message through, and fails once first.
    let wf = example()
        .replace(
            "    model: local/lexicon-moderation\n    input: \"${input.message}\"",
            "    model: local/lexicon-moderation\n    input: \"${input.message}\"\n    retry: {max_attempts: 2, initial_backoff: 10ms}\n    params: {lexicon: {violence: []}, fault: {kind: transient, times: 1}}",
        )
        .replace(
            "    model: local/template-generator\n    input: {message: \"${input.message}\"}",
            "    model: local/echo\n    input: \"${input.message}\"",
        );
    let h = H::new();
    let (run, status) = h
        .run(&wf, json!({"message": "please do not attack my order"}))
        .await;
    assert_eq!(status, RunStatus::Succeeded);
    let input_rec = h.rec(&run, "screen_input").await;
    assert_eq!(input_rec.attempt, 2, "the transient fault was retried");
    assert_eq!(h.output(&run, "screen_input").await["flagged"], false);
    let held = &h.run_output(&run).await["result"]["held"];
    assert_eq!(held["status"], "held_for_review", "{held}");
    assert_eq!(held["categories"]["violence"], true, "{held}");
    assert_eq!(h.rec(&run, "send").await.status, StepStatus::Skipped);
}
