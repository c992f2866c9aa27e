//! What every hosted-API adapter shares, all pure: how a [`ModelRequest`] becomes chat text
//! (instructions apart from data), how a text answer becomes a normalized output, and the
//! per-step parameters they all read.
//!
//! Step parameters understood by every chat adapter (`params:` in the workflow):
//! - `max_tokens` (default 1024), `temperature` (provider default when absent);
//! - `labels: [..]` for the classification role (the answer is constrained to them);
//! - `format: json` to ask for JSON without a schema.

use crate::catalog::estimate_tokens;
use serde_json::{json, Map, Value};
use switchyard_core::model::{normalized, split_model, ModelRequest, Role};
use switchyard_core::state::Usage;
use switchyard_core::{ErrorClass, StepError};

/// Default output allowance when a step gives no `params.max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 1024;

pub fn max_tokens(req: &ModelRequest) -> u64 {
    req.params
        .get("max_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS)
}

pub fn temperature(req: &ModelRequest) -> Option<f64> {
    req.params.get("temperature").and_then(Value::as_f64)
}

/// Labels for a classification step (`params.labels`: a list, or a map whose keys are labels).
pub fn labels(req: &ModelRequest) -> Vec<String> {
    match req.params.get("labels") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// The JSON Schema the answer must follow, if any: the step's `output_schema`, or for a
/// classification the `{label, confidence}` shape.
pub fn answer_schema(req: &ModelRequest) -> Option<Value> {
    if req.role == Role::Classification {
        let labels = labels(req);
        let mut label = json!({"type": "string"});
        if !labels.is_empty() {
            label["enum"] = json!(labels);
        }
        return Some(json!({
            "type": "object",
            "properties": {"label": label, "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
            "required": ["label", "confidence"],
            "additionalProperties": false
        }));
    }
    req.output_schema.clone()
}

/// Whether the answer is expected as JSON.
pub fn wants_json(req: &ModelRequest) -> bool {
    answer_schema(req).is_some() || req.params.get("format").and_then(Value::as_str) == Some("json")
}

/// The system part: the rendered prompt (instructions only).
pub fn system_text(req: &ModelRequest) -> Option<String> {
    let mut s = req.instructions.clone().unwrap_or_default();
    if req.role == Role::Classification {
        let labels = labels(req);
        if !labels.is_empty() {
            s.push_str(&format!("\n\nClassify the input as one of: {}. Answer with JSON {{\"label\", \"confidence\"}}.", labels.join(", ")));
        }
    }
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The user part: the data (a string as is, anything else as JSON), then, on a repair, what
/// was wrong with the previous answer.
pub fn user_text(req: &ModelRequest) -> String {
    let mut s = match &req.input {
        Value::String(t) => t.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    if !req.feedback.is_empty() {
        s.push_str("\n\nYour previous answer had these problems; answer again without them:\n");
        for f in &req.feedback {
            s.push_str("- ");
            s.push_str(f);
            s.push('\n');
        }
    }
    s
}

/// The text a moderation model judges (and the built-in text models read): `input.text` when the
/// input is a mapping with a `text` string, else a string input, else the input's JSON. One
/// rule for every moderation model, so switching the model never changes what is judged.
pub fn input_text(input: &Value) -> String {
    match input {
        Value::String(s) => s.clone(),
        Value::Object(o) => match o.get("text") {
            Some(Value::String(s)) => s.clone(),
            _ => input.to_string(),
        },
        other => other.to_string(),
    }
}

/// Turns a model's text (or already-parsed JSON, from a tool call) into the normalized output
/// of the step's role.
pub fn normalize(
    req: &ModelRequest,
    text: &str,
    parsed: Option<Value>,
    usage: Usage,
    finish_reason: &str,
    model: &str,
) -> Result<Value, StepError> {
    let json_value = match parsed {
        Some(v) => Some(v),
        None if wants_json(req) => Some(parse_json_text(text)?),
        None => None,
    };
    match req.role {
        Role::Classification => {
            let v = json_value.unwrap_or(Value::Null);
            let label = v.get("label").and_then(Value::as_str).ok_or_else(|| {
                StepError::new(
                    ErrorClass::Malformed,
                    "classification answer has no `label`",
                )
                .with_details(vec![
                    "answer with JSON {\"label\": <one of the labels>, \"confidence\": <0..1>}"
                        .into(),
                ])
            })?;
            // The schema's `enum` asks for one of the labels, but not every API enforces a
            // schema (and some answer in text): a label outside the declared set would make a
            // route take no branch it was written for, so it is a malformed answer, re-asked
            // with the allowed labels as feedback.
            let allowed = labels(req);
            if !allowed.is_empty() && !allowed.iter().any(|l| l == label) {
                return Err(StepError::new(
                    ErrorClass::Malformed,
                    format!("classification label `{label}` is not one of the step's labels"),
                )
                .with_details(vec![format!(
                    "the label must be exactly one of: {} (you answered `{label}`)",
                    allowed.join(", ")
                )]));
            }
            let confidence = v
                .get("confidence")
                .and_then(Value::as_f64)
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            let mut scores = Map::new();
            scores.insert(label.to_string(), json!(normalized::round4(confidence)));
            Ok(normalized::classification(label, confidence, scores))
        }
        _ => {
            // Always the full id (`openai/gpt-4o-mini-2024-07-18`), whichever way the provider
            // names its model, so outputs compare across providers.
            let prefix = split_model(&req.model).0;
            let model = if model.contains('/') || prefix.is_empty() {
                model.to_string()
            } else {
                format!("{prefix}/{model}")
            };
            Ok(normalized::generation(
                text,
                json_value,
                usage,
                finish_reason,
                &model,
            ))
        }
    }
}

/// Parses JSON from a model's text, tolerating a Markdown code fence around it.
pub fn parse_json_text(text: &str) -> Result<Value, StepError> {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .map(|x| x.trim_end_matches("```").trim())
        .unwrap_or(t);
    serde_json::from_str(t).map_err(|e| {
        StepError::new(ErrorClass::Malformed, "the answer is not valid JSON").with_details(vec![
            format!("the answer must be a single JSON value ({e})"),
        ])
    })
}

/// A required field of a provider response, or a `malformed` error naming it.
pub fn field<'a>(v: &'a Value, path: &[&str], provider: &str) -> Result<&'a Value, StepError> {
    let mut cur = v;
    for p in path {
        cur = match (cur, p.parse::<usize>()) {
            (Value::Array(a), Ok(i)) => a.get(i),
            (Value::Object(m), _) => m.get(*p),
            _ => None,
        }
        .ok_or_else(|| {
            StepError::new(
                ErrorClass::Malformed,
                format!("{provider} response lacks `{}`", path.join(".")),
            )
        })?;
    }
    Ok(cur)
}

/// The name of the tool / response format that carries a structured answer.
pub const ANSWER: &str = "answer";

/// Added to the instructions when JSON is wanted without a schema. OpenAI's `json_object` mode
/// requires the word "JSON" in the messages; Anthropic has no JSON mode at all.
pub const JSON_ONLY: &str = "Answer with a single JSON value and nothing else.";

pub fn malformed(message: impl Into<String>) -> StepError {
    StepError::new(ErrorClass::Malformed, message)
}

pub fn invalid(message: impl Into<String>) -> StepError {
    StepError::new(ErrorClass::Invalid, message)
}

/// Structured-output APIs want an object at the root (OpenAI's structured outputs, Anthropic's
/// tool `input_schema`). A schema of another type is wrapped as `{answer: schema}`; the bool
/// says whether it was, and [`unwrap_answer`] undoes it.
pub fn object_schema(schema: Value) -> (Value, bool) {
    if schema.get("type").and_then(Value::as_str) == Some("object") {
        (schema, false)
    } else {
        (
            json!({
                "type": "object",
                "properties": {ANSWER: schema},
                "required": [ANSWER],
                "additionalProperties": false
            }),
            true,
        )
    }
}

/// The answer inside a structured reply, undoing [`object_schema`]'s wrapping if it applied.
pub fn unwrap_answer(req: &ModelRequest, value: Value) -> Result<Value, StepError> {
    let wrapped = answer_schema(req).is_some_and(|s| object_schema(s).1);
    if !wrapped {
        return Ok(value);
    }
    match value {
        Value::Object(mut m) if m.contains_key(ANSWER) => Ok(m.remove(ANSWER).unwrap_or_default()),
        _ => Err(
            malformed("the structured answer lacks its `answer` field").with_details(vec![
                format!("answer with a JSON object {{\"{ANSWER}\": <the answer>}}"),
            ]),
        ),
    }
}

/// The error for an answer cut off at the output limit when JSON was expected.
pub fn truncated(req: &ModelRequest) -> StepError {
    malformed(format!(
        "the answer was cut off at the output limit ({} tokens) before its JSON was complete",
        max_tokens(req)
    ))
    .with_details(vec![
        "the previous answer was too long and was cut off; give a shorter answer".into(),
    ])
}

/// `provider/model` for the model that answered: the request's prefix, the response's name.
pub fn answered_by(req: &ModelRequest, response_model: &str) -> String {
    match split_model(&req.model).0 {
        "" => response_model.to_string(),
        prefix => format!("{prefix}/{response_model}"),
    }
}

/// The input tokens a chat call is estimated to send, for the budget: the instructions and the
/// data, by the one estimate ([`estimate_tokens`]).
pub fn prompt_tokens(req: &ModelRequest) -> u64 {
    system_text(req).map_or(0, |s| estimate_tokens(&s)) + estimate_tokens(&user_text(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(role: Role, input: Value, params: Value) -> ModelRequest {
        ModelRequest {
            run_id: "r".into(),
            step: "s".into(),
            attempt: 1,
            model: "openai/gpt-4o-mini".into(),
            role,
            instructions: Some("Be brief.".into()),
            prompt_version: Some("v1".into()),
            input,
            params,
            output_schema: None,
            feedback: vec![],
            timeout_ms: 1000,
            callback: None,
        }
    }

    /// A label outside `params.labels` is malformed, with the allowed labels as feedback;
    /// without declared labels any label is taken.
    #[test]
    fn classification_labels_are_checked() {
        let usage = Usage::default();
        // (params, answer, Ok(label) or Err(part of the feedback))
        let table: Vec<(Value, &str, Result<&str, &str>)> = vec![
            (
                json!({"labels": ["developers", "consumers"]}),
                r#"{"label":"consumers","confidence":0.8}"#,
                Ok("consumers"),
            ),
            (
                json!({"labels": ["developers", "consumers"]}),
                r#"{"label":"billing","confidence":0.9}"#,
                Err("exactly one of: developers, consumers (you answered `billing`)"),
            ),
            (
                json!({"labels": {"developers": [], "consumers": []}}),
                r#"{"label":"Consumers"}"#,
                Err("exactly one of: developers, consumers"),
            ),
            (
                json!({}),
                r#"{"label":"billing","confidence":0.9}"#,
                Ok("billing"),
            ),
        ];
        for (params, answer, want) in table {
            let r = req(Role::Classification, json!("text"), params.clone());
            let got = normalize(&r, answer, None, usage, "stop", "m");
            match (got, want) {
                (Ok(v), Ok(label)) => assert_eq!(v["label"], label, "{params} {answer}"),
                (Err(e), Err(feedback)) => {
                    assert_eq!(e.class, ErrorClass::Malformed);
                    assert!(e.details.iter().any(|d| d.contains(feedback)), "{e:?}");
                }
                (got, want) => panic!("{params} {answer}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn instructions_and_data_stay_apart() {
        let mut r = req(Role::Generation, json!({"ticket": "refund"}), json!({}));
        assert_eq!(system_text(&r).as_deref(), Some("Be brief."));
        assert_eq!(user_text(&r), r#"{"ticket":"refund"}"#);
        r.feedback = vec!["at /title: too long".into()];
        assert!(user_text(&r).contains("- at /title: too long"));
    }

    #[test]
    fn classification_is_constrained_and_normalized() {
        let r = req(
            Role::Classification,
            json!("refund please"),
            json!({"labels": ["billing", "tech"]}),
        );
        let schema = answer_schema(&r).unwrap();
        assert_eq!(
            schema["properties"]["label"]["enum"],
            json!(["billing", "tech"])
        );
        assert!(system_text(&r).unwrap().contains("billing, tech"));
        let out = normalize(
            &r,
            r#"{"label": "billing", "confidence": 0.9}"#,
            None,
            Usage::default(),
            "stop",
            "m",
        )
        .unwrap();
        assert_eq!(out["label"], "billing");
        assert_eq!(out["scores"]["billing"], 0.9);
        let e = normalize(&r, "billing", None, Usage::default(), "stop", "m").unwrap_err();
        assert_eq!(e.class, ErrorClass::Malformed);
    }

    #[test]
    fn json_answers_parse_with_or_without_fences() {
        assert_eq!(
            parse_json_text("```json\n{\"a\": 1}\n```").unwrap(),
            json!({"a": 1})
        );
        assert_eq!(parse_json_text(" {\"a\": 1} ").unwrap(), json!({"a": 1}));
        assert_eq!(
            parse_json_text("Sure! {\"a\": 1}").unwrap_err().class,
            ErrorClass::Malformed
        );
        let mut r = req(Role::Generation, json!("x"), json!({"format": "json"}));
        let out = normalize(&r, "{\"a\": 1}", None, Usage::new(3, 4), "stop", "m").unwrap();
        assert_eq!(out["json"], json!({"a": 1}));
        assert_eq!(out["usage"]["output_tokens"], 4);
        r.params = json!({});
        assert!(normalize(&r, "plain", None, Usage::default(), "stop", "m")
            .unwrap()
            .get("json")
            .is_none());
    }

    #[test]
    fn moderated_text_is_read_one_way() {
        // (input, text judged)
        let table = [
            (json!("plain text"), "plain text"),
            (json!({"text": "from text", "other": 1}), "from text"),
            (json!({"text": 5}), r#"{"text":5}"#),
            (json!({"title": "t"}), r#"{"title":"t"}"#),
            (json!(["a", 1]), r#"["a",1]"#),
            (Value::Null, "null"),
        ];
        for (input, text) in table {
            assert_eq!(input_text(&input), text, "{input}");
        }
    }

    /// The normalized moderation shape: sorted maps, clamped and rounded scores, and a
    /// flagged category always flags the whole.
    #[test]
    fn normalized_moderation_shape() {
        use std::collections::BTreeMap;
        let cats = |pairs: &[(&str, bool)]| -> BTreeMap<String, bool> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let scores = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        // (provider verdict, categories, scores, expected flagged, expected scores)
        let table = vec![
            (
                false,
                cats(&[("violence", true), ("hate", false)]),
                scores(&[("violence", 0.666_666), ("hate", 0.0)]),
                true,
                json!({"hate": 0.0, "violence": 0.6667}),
            ),
            (
                false,
                cats(&[("hate", false)]),
                scores(&[("hate", 1.7), ("sexual", -0.2), ("x", f64::NAN)]),
                false,
                json!({"hate": 1.0, "sexual": 0.0, "x": 0.0}),
            ),
            (true, cats(&[]), scores(&[]), true, json!({})),
        ];
        for (verdict, c, s, flagged, want_scores) in table {
            let out = normalized::moderation(verdict, c.clone(), s, "local/m");
            assert_eq!(out["flagged"], flagged, "{out}");
            assert_eq!(out["scores"], want_scores, "{out}");
            assert_eq!(out["model"], "local/m");
            let keys: Vec<&String> = out["categories"].as_object().unwrap().keys().collect();
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted, "categories are sorted");
            assert_eq!(keys.len(), c.len());
            let score_keys: Vec<&String> = out["scores"].as_object().unwrap().keys().collect();
            let mut sorted = score_keys.clone();
            sorted.sort();
            assert_eq!(score_keys, sorted, "scores are sorted");
        }
    }
}
