//! Model-assisted validation: a `validate` step's judge.
//!
//! A judge is a model call whose answer is a **verdict** `{pass, score, reasons[]}` about a
//! value (the validate step's `value`), under criteria written as a prompt template. The
//! engine runs it like any model call (retries, fallbacks, budget, cost and latency on the
//! record) and then asks this module what the answer means:
//!
//! - [`read`] finds the verdict in a normalized answer (a chat model's `json`, or the output
//!   itself) and checks its shape: a verdict that is not one is a `malformed` answer, re-asked
//!   with what was wrong (the same path as any output failing its schema);
//! - [`problems`] decides pass or fail, with `min_score` applied, and gives the lines that a
//!   repair sends back to the step that produced the value (the same `feedback` a schema
//!   failure sends).
//!
//! The schema, when a step has one too, is checked first: a value that fails it is repaired
//! without paying for a judge call.

use crate::error::{ErrorClass, StepError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// At most this many reasons are kept from a verdict (a repair prompt does not need more,
/// and a record stays small).
pub const MAX_REASONS: usize = 20;
/// Each reason is cut to this many characters.
pub const MAX_REASON_CHARS: usize = 500;

/// What a judge decided about a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub pass: bool,
    /// 0 (worst) … 1 (best).
    pub score: f64,
    /// Why, one finding per line; a failing verdict's reasons become the repair's feedback.
    pub reasons: Vec<String>,
}

/// The JSON Schema a judge's answer must satisfy. It is the judge call's `output_schema`, so
/// hosted adapters ask for exactly this shape (structured output or JSON mode).
pub fn verdict_schema() -> Value {
    json!({
        "type": "object",
        "required": ["pass", "score", "reasons"],
        "properties": {
            "pass": {"type": "boolean", "description": "whether the value meets every criterion"},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "reasons": {"type": "array", "items": {"type": "string"},
                        "description": "one line per criterion that failed, or why it passed"}
        }
    })
}

/// The verdict in a normalized answer: the parsed JSON of a chat answer (`output.json`), or
/// the output itself. Anything else is `malformed`, with details a re-asked judge can act on.
pub fn read(output: &Value) -> Result<Verdict, StepError> {
    let v = output.get("json").unwrap_or(output);
    let malformed = |why: &str| {
        StepError::new(ErrorClass::Malformed, format!("the judge's answer {why}")).with_details(
            vec![
                "answer with a JSON object {\"pass\": true|false, \"score\": 0..1, \"reasons\": [\"...\"]}"
                    .into(),
            ],
        )
    };
    let pass = v
        .get("pass")
        .and_then(Value::as_bool)
        .ok_or_else(|| malformed("has no boolean `pass`"))?;
    let score = match v.get("score") {
        None | Some(Value::Null) => {
            if pass {
                1.0
            } else {
                0.0
            }
        }
        Some(s) => match s.as_f64() {
            Some(x) if (0.0..=1.0).contains(&x) => x,
            _ => return Err(malformed("has a `score` that is not a number from 0 to 1")),
        },
    };
    let reasons = match v.get("reasons") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .take(MAX_REASONS)
            .map(|r| {
                let s = r.as_str().map_or_else(|| r.to_string(), str::to_string);
                s.chars().take(MAX_REASON_CHARS).collect()
            })
            .collect(),
        Some(_) => return Err(malformed("has `reasons` that are not a list")),
    };
    Ok(Verdict {
        pass,
        score,
        reasons,
    })
}

/// `Ok` when the verdict passes (`pass`, and `score ≥ min_score` when one is set); otherwise
/// the lines a repair sends as feedback: the judge's reasons, and the score rule when that is
/// what failed.
pub fn problems(v: &Verdict, min_score: Option<f64>) -> Result<(), Vec<String>> {
    let low = min_score.filter(|m| v.score < *m);
    if v.pass && low.is_none() {
        return Ok(());
    }
    let mut lines: Vec<String> = v.reasons.iter().map(|r| format!("judge: {r}")).collect();
    if let Some(m) = low {
        lines.push(format!(
            "judge: score {:.2} is below the required {m:.2}",
            v.score
        ));
    }
    if lines.is_empty() {
        lines.push("judge: the value does not meet the criteria (no reasons given)".into());
    }
    Err(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reading: `Ok((pass, score, reasons))` or `Err(part of the message)`.
    type Reading = Result<(bool, f64, usize), &'static str>;
    /// A decision: `Ok` or the feedback lines.
    type Decision = Result<(), Vec<&'static str>>;

    #[test]
    fn reading_verdicts() {
        // (answer, Ok((pass, score, reasons)) or Err(substring of the message))
        let table: Vec<(Value, Reading)> = vec![
            (
                json!({"pass": true, "score": 0.9, "reasons": []}),
                Ok((true, 0.9, 0)),
            ),
            // A chat answer: the verdict is the parsed JSON.
            (
                json!({"text": "{…}", "json": {"pass": false, "score": 0.2, "reasons": ["too long"]}}),
                Ok((false, 0.2, 1)),
            ),
            // Score and reasons may be left out.
            (json!({"pass": true}), Ok((true, 1.0, 0))),
            (json!({"pass": false}), Ok((false, 0.0, 0))),
            // Non-string reasons are kept as JSON text.
            (
                json!({"pass": false, "reasons": [{"at": "/t"}]}),
                Ok((false, 0.0, 1)),
            ),
            (json!({"score": 1}), Err("boolean `pass`")),
            (json!({"pass": "yes"}), Err("boolean `pass`")),
            (json!({"pass": true, "score": 1.5}), Err("from 0 to 1")),
            (json!({"pass": true, "score": "high"}), Err("from 0 to 1")),
            (json!({"pass": true, "reasons": "fine"}), Err("not a list")),
            (json!("pass"), Err("boolean `pass`")),
        ];
        for (i, (answer, want)) in table.into_iter().enumerate() {
            match (read(&answer), want) {
                (Ok(v), Ok((pass, score, n))) => {
                    assert_eq!(
                        (v.pass, v.score, v.reasons.len()),
                        (pass, score, n),
                        "case {i}"
                    );
                }
                (Err(e), Err(part)) => {
                    assert_eq!(e.class, ErrorClass::Malformed, "case {i}");
                    assert!(e.message.contains(part), "case {i}: {}", e.message);
                    assert!(!e.details.is_empty(), "case {i}: a re-ask needs details");
                }
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn reasons_are_bounded() {
        let long = "x".repeat(MAX_REASON_CHARS + 50);
        let many: Vec<String> = (0..MAX_REASONS + 5).map(|_| long.clone()).collect();
        let v = read(&json!({"pass": false, "reasons": many})).unwrap();
        assert_eq!(v.reasons.len(), MAX_REASONS);
        assert!(v
            .reasons
            .iter()
            .all(|r| r.chars().count() == MAX_REASON_CHARS));
    }

    #[test]
    fn pass_or_repair() {
        let v = |pass, score: f64, reasons: &[&str]| Verdict {
            pass,
            score,
            reasons: reasons.iter().map(|s| s.to_string()).collect(),
        };
        // (verdict, min_score, Ok or the feedback lines)
        let table: Vec<(Verdict, Option<f64>, Decision)> = vec![
            (v(true, 0.9, &[]), None, Ok(())),
            (v(true, 0.9, &[]), Some(0.8), Ok(())),
            (v(true, 0.8, &[]), Some(0.8), Ok(())),
            (
                v(true, 0.5, &["tone is flat"]),
                Some(0.8),
                Err(vec![
                    "judge: tone is flat",
                    "judge: score 0.50 is below the required 0.80",
                ]),
            ),
            (
                v(false, 0.9, &["mentions a competitor"]),
                None,
                Err(vec!["judge: mentions a competitor"]),
            ),
            (
                v(false, 0.0, &[]),
                None,
                Err(vec![
                    "judge: the value does not meet the criteria (no reasons given)",
                ]),
            ),
        ];
        for (i, (verdict, min, want)) in table.into_iter().enumerate() {
            let got = problems(&verdict, min);
            let want = want.map_err(|l| l.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn the_schema_accepts_what_read_accepts() {
        let s = verdict_schema();
        crate::schema::check_schema(&s).unwrap();
        crate::schema::validate(&s, &json!({"pass": true, "score": 1, "reasons": []})).unwrap();
        assert!(crate::schema::validate(&s, &json!({"pass": true})).is_err());
    }
}
