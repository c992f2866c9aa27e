//! A fake Bedrock guardrail for Converse requests that carry `guardrailConfig
//! {guardrailIdentifier, guardrailVersion, trace}`.
//!
//! It judges the guarded text — the `guardContent` blocks when the request has any, else every
//! text block of the messages and the system prompt, as Bedrock does — against a few trigger
//! words (whole words, case-insensitive; see [`TRIGGERS`]). A trigger makes it intervene the
//! way Bedrock does when a guardrail blocks an input: `stopReason: "guardrail_intervened"`, the
//! guardrail's blocked message as the only output text ([`BLOCKED_MESSAGE`]), no model tokens.
//! With `trace: "enabled"` (or `enabled_full`) the answer carries `trace.guardrail`:
//! `inputAssessment` maps the guardrail id to its findings (`contentPolicy.filters[{type,
//! confidence, filterStrength, action, detected}]`, `topicPolicy.topics[{name, type, action,
//! detected}]`, `wordPolicy.customWords` / `managedWordLists`) and `invocationMetrics`; a clean
//! text gets the model's answer and a trace with metrics only (input and output assessments).

use serde_json::{json, Value};

/// What the guardrail says instead of the answer when it blocks (Bedrock's default blocked
/// messaging).
pub const BLOCKED_MESSAGE: &str = "Sorry, the model cannot answer this question.";

/// What a trigger word finds.
#[derive(Debug, Clone, Copy)]
pub enum Finding {
    /// A content filter of this type (`VIOLENCE`, `HATE`, …), with HIGH confidence.
    Content(&'static str),
    /// A denied topic of this name.
    Topic(&'static str),
    /// A custom blocked word.
    CustomWord,
    /// A word of the managed profanity list.
    Profanity,
}

/// The trigger words and what each finds.
pub const TRIGGERS: &[(&str, Finding)] = &[
    ("kill", Finding::Content("VIOLENCE")),
    ("attack", Finding::Content("VIOLENCE")),
    ("idiot", Finding::Content("INSULTS")),
    ("vermin", Finding::Content("HATE")),
    ("nude", Finding::Content("SEXUAL")),
    ("cocaine", Finding::Content("MISCONDUCT")),
    ("jailbreak", Finding::Content("PROMPT_ATTACK")),
    ("rifle", Finding::Topic("Weapons")),
    ("frobnicate", Finding::CustomWord),
    ("damn", Finding::Profanity),
];

/// The guardrail a request names: `(identifier, version, trace)`, or the validation message
/// Bedrock answers when the configuration is incomplete. `None`: no guardrail.
pub fn config(v: &Value) -> Option<Result<(String, String, bool), &'static str>> {
    let c = v.get("guardrailConfig")?;
    let id = c.get("guardrailIdentifier").and_then(Value::as_str);
    let version = c.get("guardrailVersion").and_then(Value::as_str);
    let trace = matches!(
        c.get("trace").and_then(Value::as_str),
        Some("enabled" | "enabled_full")
    );
    Some(match (id, version) {
        (Some(i), Some(ver)) if !i.is_empty() && !ver.is_empty() => {
            Ok((i.to_string(), ver.to_string(), trace))
        }
        _ => Err("1 validation error detected: Value at 'guardrailConfig' failed to satisfy constraint: guardrailIdentifier and guardrailVersion are required"),
    })
}

/// The key Bedrock uses for a guardrail in the trace maps: the id (the last part of an ARN).
fn trace_key(identifier: &str) -> &str {
    identifier
        .rsplit_once("guardrail/")
        .map_or(identifier, |(_, id)| id)
}

/// The text the guardrail judges: the `guardContent` blocks if any, else all text blocks.
pub fn guarded_text(v: &Value) -> String {
    let blocks = || {
        let messages = v
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| m.get("content").and_then(Value::as_array))
            .flatten();
        let system = v
            .get("system")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        messages.chain(system)
    };
    let guard: Vec<&str> = blocks()
        .filter_map(|b| b.get("guardContent"))
        .filter_map(|g| g.get("text").and_then(|t| t.get("text")))
        .filter_map(Value::as_str)
        .collect();
    if !guard.is_empty() {
        return guard.join("\n");
    }
    blocks()
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The findings of the trigger words in `text`, as one `GuardrailAssessment` (without metrics);
/// `None` when nothing triggers.
pub fn assess(text: &str) -> Option<Value> {
    let ws = words(text);
    let mut filters: Vec<Value> = Vec::new();
    let mut topics: Vec<Value> = Vec::new();
    let mut custom: Vec<Value> = Vec::new();
    let mut managed: Vec<Value> = Vec::new();
    for (word, finding) in TRIGGERS {
        if !ws.iter().any(|w| w == word) {
            continue;
        }
        match finding {
            Finding::Content(kind) => {
                if !filters.iter().any(|f| f["type"] == *kind) {
                    filters.push(
                        json!({"type": kind, "confidence": "HIGH", "filterStrength": "HIGH",
                                        "action": "BLOCKED", "detected": true}),
                    );
                }
            }
            Finding::Topic(name) => {
                if !topics.iter().any(|t| t["name"] == *name) {
                    topics.push(json!({"name": name, "type": "DENY", "action": "BLOCKED", "detected": true}));
                }
            }
            Finding::CustomWord => {
                custom.push(json!({"match": word, "action": "BLOCKED", "detected": true}))
            }
            Finding::Profanity => managed.push(
                json!({"match": word, "type": "PROFANITY", "action": "BLOCKED", "detected": true}),
            ),
        }
    }
    if filters.is_empty() && topics.is_empty() && custom.is_empty() && managed.is_empty() {
        return None;
    }
    let mut a = json!({});
    if !filters.is_empty() {
        a["contentPolicy"] = json!({"filters": filters});
    }
    if !topics.is_empty() {
        a["topicPolicy"] = json!({"topics": topics});
    }
    if !custom.is_empty() || !managed.is_empty() {
        let mut w = json!({});
        if !custom.is_empty() {
            w["customWords"] = json!(custom);
        }
        if !managed.is_empty() {
            w["managedWordLists"] = json!(managed);
        }
        a["wordPolicy"] = w;
    }
    Some(a)
}

/// `invocationMetrics` of an assessment of `chars` characters (one policy unit per started
/// 1,000 characters, per policy).
fn metrics(chars: usize, latency_ms: u64) -> Value {
    let units = chars.div_ceil(1000).max(1);
    json!({
        "guardrailProcessingLatency": latency_ms,
        "usage": {
            "topicPolicyUnits": units,
            "contentPolicyUnits": units,
            "wordPolicyUnits": units,
            "sensitiveInformationPolicyUnits": 0,
            "sensitiveInformationPolicyFreeUnits": 0,
            "contextualGroundingPolicyUnits": 0
        },
        "guardrailCoverage": {"textCharacters": {"guarded": chars, "total": chars}}
    })
}

/// Applies the guardrail to a Converse request and its would-be answer `out`: the blocked
/// answer when the text triggers, else `out` with the trace added (when asked for).
pub fn apply(v: &Value, identifier: &str, trace: bool, mut out: Value) -> Value {
    let text = guarded_text(v);
    let chars = text.chars().count();
    let key = trace_key(identifier);
    match assess(&text) {
        Some(mut findings) => {
            findings["invocationMetrics"] = metrics(chars, 37);
            let mut blocked = json!({
                "output": {"message": {"role": "assistant", "content": [{"text": BLOCKED_MESSAGE}]}},
                "stopReason": "guardrail_intervened",
                "usage": {"inputTokens": 0, "outputTokens": 0, "totalTokens": 0},
                "metrics": out.get("metrics").cloned().unwrap_or(json!({"latencyMs": 1})),
            });
            if trace {
                blocked["trace"] = json!({"guardrail": {"inputAssessment": {key: findings}}});
            }
            blocked
        }
        None => {
            if trace {
                let reply = crate::util::text_chars(
                    out.pointer("/output/message/content")
                        .unwrap_or(&Value::Null),
                );
                out["trace"] = json!({"guardrail": {
                    "inputAssessment": {key: {"invocationMetrics": metrics(chars, 29)}},
                    "outputAssessments": {key: [{"invocationMetrics": metrics(reply, 18)}]},
                }});
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarded_text_prefers_guard_content() {
        let plain = json!({"system": [{"text": "Be brief."}],
                           "messages": [{"role": "user", "content": [{"text": "hello"}]}]});
        assert_eq!(guarded_text(&plain), "hello\nBe brief.");
        let guarded = json!({"messages": [{"role": "user", "content": [
            {"text": "kill"}, {"guardContent": {"text": {"text": "fine", "qualifiers": ["guard_content"]}}}]}]});
        assert_eq!(guarded_text(&guarded), "fine");
    }

    #[test]
    fn triggers_and_keys() {
        assert!(assess("A lovely day").is_none());
        let a = assess("Kill the idiot with a rifle, damn, KILL").unwrap();
        assert_eq!(a["contentPolicy"]["filters"].as_array().unwrap().len(), 2);
        assert_eq!(a["topicPolicy"]["topics"][0]["name"], "Weapons");
        assert_eq!(a["wordPolicy"]["managedWordLists"][0]["type"], "PROFANITY");
        assert!(assess("skill").is_none(), "whole words only");
        assert_eq!(
            trace_key("arn:aws:bedrock:us-east-1:123456789012:guardrail/abc123"),
            "abc123"
        );
        assert_eq!(trace_key("abc123"), "abc123");
    }
}
