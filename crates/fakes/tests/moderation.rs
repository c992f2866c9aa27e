//! OpenAI moderations and Bedrock guardrails on Converse: deterministic verdicts in the
//! documented shapes, and the scripted failures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

mod common;

use common::*;
use serde_json::{json, Value};
use switchyard_fakes::Behavior;

/// The categories a result flags.
fn flagged(result: &Value) -> Vec<&str> {
    result["categories"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.as_bool() == Some(true))
        .map(|(k, _)| k.as_str())
        .collect()
}

#[tokio::test]
async fn openai_moderations_flag_trigger_words() {
    let s = server().await;
    let url = format!("{}/v1/moderations", s.url());
    // (body, per input: flagged categories; model answered; categories per result)
    let table: Vec<(Value, Vec<Vec<&str>>, &str, usize)> = vec![
        (
            json!({"model": "omni-moderation-latest", "input": "I will KILL you"}),
            vec![vec!["harassment/threatening", "violence"]],
            "omni-moderation-latest",
            13,
        ),
        (
            json!({"model": "omni-moderation-latest", "input": "What a lovely day"}),
            vec![vec![]],
            "omni-moderation-latest",
            13,
        ),
        (
            json!({"input": ["you idiot", "skilled work", "cocaine"]}),
            vec![vec!["harassment"], vec![], vec!["illicit"]],
            "omni-moderation-latest",
            13,
        ),
        (
            json!({"model": "text-moderation-latest", "input": "cocaine and gore"}),
            vec![vec!["violence", "violence/graphic"]],
            "text-moderation-007",
            11,
        ),
        (
            json!({"model": "omni-moderation-latest",
                   "input": [{"type": "text", "text": "suicide"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}),
            vec![vec!["self-harm", "self-harm/intent"]],
            "omni-moderation-latest",
            13,
        ),
    ];
    for (body, want, model, n) in table {
        let r = post(&url, &[("authorization", "Bearer sk-test")], &body).await;
        assert_eq!(r.status, 200, "{body}: {}", r.text);
        assert!(r.header("x-request-id").unwrap().starts_with("req_"));
        let v = r.json();
        assert!(v["id"].as_str().unwrap().starts_with("modr-"), "{v}");
        assert_eq!(v["model"], model, "{body}");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), want.len(), "{body}");
        for (result, cats) in results.iter().zip(&want) {
            assert_eq!(flagged(result), *cats, "{body}");
            assert_eq!(result["flagged"], !cats.is_empty(), "{body}");
            let scores = result["category_scores"].as_object().unwrap();
            assert_eq!(result["categories"].as_object().unwrap().len(), n);
            assert_eq!(scores.len(), n);
            for (k, score) in scores {
                let s = score.as_f64().unwrap();
                assert!((0.0..=1.0).contains(&s));
                assert_eq!(s > 0.5, cats.contains(&k.as_str()), "{body}: {k}");
            }
            assert_eq!(
                result.get("category_applied_input_types").is_some(),
                n == 13,
                "{body}: only omni reports input types"
            );
        }
    }
    // Deterministic.
    let body = json!({"input": "kill"});
    let a = post(&url, &[], &body).await.json();
    let b = post(&url, &[], &body).await.json();
    assert_eq!(a["results"], b["results"]);
    // No input: the API's 400.
    let r = post(&url, &[], &json!({"model": "omni-moderation-latest"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn openai_moderations_follow_the_script() {
    let s = server().await;
    let url = format!("{}/v1/moderations", s.url());
    s.script(
        "openai",
        vec![
            Behavior::RateLimited {
                retry_after_secs: 4,
            },
            Behavior::Unauthorized,
            Behavior::Malformed,
            Behavior::Refusal,
        ],
    );
    let body = json!({"model": "omni-moderation-latest", "input": "hi"});
    let r = post(&url, &[], &body).await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("4")));
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(post(&url, &[], &body).await.status, 401);
    let r = post(&url, &[], &body).await;
    assert_eq!(r.status, 200);
    assert!(serde_json::from_str::<Value>(&r.text).is_err(), "truncated");
    // Moderation has no refusal shape: an ordinary verdict.
    let r = post(&url, &[], &body).await;
    assert_eq!(r.json()["results"][0]["flagged"], false);
    let sent = s.requests();
    assert!(sent.iter().all(|r| r.path == "/v1/moderations"));
    assert_eq!(sent[0].behavior, "rate_limited:4");
}

fn converse(text: &str, guardrail: Value) -> Value {
    json!({
        "messages": [{"role": "user", "content": [{"text": text}]}],
        "inferenceConfig": {"maxTokens": 16},
        "guardrailConfig": guardrail,
    })
}

fn guardrail(trace: &str) -> Value {
    json!({"guardrailIdentifier": "gr7x3k2q9abc", "guardrailVersion": "1", "trace": trace})
}

#[tokio::test]
async fn bedrock_guardrail_intervenes_with_a_trace() {
    let s = server().await;
    let url = format!("{}/model/amazon.nova-lite-v1%3A0/converse", s.url());

    // Blocked, traced: the findings under the guardrail's id.
    let r = post(
        &url,
        &bedrock_headers(),
        &converse("I will kill you with a rifle", guardrail("enabled")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["stopReason"], "guardrail_intervened");
    assert_eq!(
        v["output"]["message"]["content"],
        json!([{"text": "Sorry, the model cannot answer this question."}])
    );
    assert_eq!(v["usage"]["outputTokens"], 0);
    let a = &v["trace"]["guardrail"]["inputAssessment"]["gr7x3k2q9abc"];
    assert_eq!(
        a["contentPolicy"]["filters"],
        json!([{"type": "VIOLENCE", "confidence": "HIGH", "filterStrength": "HIGH", "action": "BLOCKED", "detected": true}])
    );
    assert_eq!(a["topicPolicy"]["topics"][0]["name"], "Weapons");
    assert!(a["invocationMetrics"]["usage"]["contentPolicyUnits"].as_u64() >= Some(1));
    assert_eq!(
        a["invocationMetrics"]["guardrailCoverage"]["textCharacters"]["guarded"],
        28
    );

    // Blocked, untraced: no trace at all.
    let v = post(
        &url,
        &bedrock_headers(),
        &converse("you idiot", guardrail("disabled")),
    )
    .await
    .json();
    assert_eq!(v["stopReason"], "guardrail_intervened");
    assert!(v.get("trace").is_none(), "{v}");

    // Clean, traced: the model answers; metrics only, for input and output.
    let v = post(
        &url,
        &bedrock_headers(),
        &converse("What a lovely day", guardrail("enabled")),
    )
    .await
    .json();
    assert_eq!(v["stopReason"], "end_turn");
    assert!(v["output"]["message"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("Fake answer: What a lovely day"));
    let g = &v["trace"]["guardrail"];
    assert!(g["inputAssessment"]["gr7x3k2q9abc"]["invocationMetrics"].is_object());
    assert!(g["inputAssessment"]["gr7x3k2q9abc"]
        .get("contentPolicy")
        .is_none());
    assert!(g["outputAssessments"]["gr7x3k2q9abc"][0]["invocationMetrics"].is_object());

    // guardContent: only the guarded part is judged.
    let mut body = converse("kill", guardrail("enabled"));
    body["messages"][0]["content"] = json!([{"text": "kill"}, {"guardContent": {"text": {"text": "a fine day", "qualifiers": ["guard_content"]}}}]);
    let v = post(&url, &bedrock_headers(), &body).await.json();
    assert_eq!(v["stopReason"], "end_turn");

    // Without guardrailConfig the trigger words mean nothing.
    let mut plain = converse("kill", json!(null));
    plain.as_object_mut().unwrap().remove("guardrailConfig");
    let v = post(&url, &bedrock_headers(), &plain).await.json();
    assert_eq!(v["stopReason"], "end_turn");
    assert!(v.get("trace").is_none());

    // An incomplete guardrailConfig is Bedrock's 400.
    let r = post(
        &url,
        &bedrock_headers(),
        &converse("hi", json!({"guardrailIdentifier": "gr7x3k2q9abc"})),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r
        .header("x-amzn-errortype")
        .unwrap()
        .starts_with("ValidationException"));

    // Scripted failures come first, as on every route.
    s.script(
        "bedrock",
        vec![Behavior::RateLimited {
            retry_after_secs: 1,
        }],
    );
    let r = post(
        &url,
        &bedrock_headers(),
        &converse("kill", guardrail("enabled")),
    )
    .await;
    assert_eq!(r.status, 429);
    let sent = s.requests();
    assert_eq!(
        sent[0].body["guardrailConfig"]["guardrailIdentifier"],
        "gr7x3k2q9abc"
    );
}
