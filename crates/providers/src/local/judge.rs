//! `local/rules-judge`: a judge for `validate` steps that applies **rules**, not a model.
//!
//! It reads `params.rules`, a list of `{id, at?, forbid | require, message}`: `forbid` is a
//! regular expression no string of the value may match, `require` one that some string must
//! match; `at` (a JSON pointer, e.g. `/description`) narrows the check to part of the value.
//! Matching ignores case. The verdict (`core::judge`) passes when every rule holds; its score
//! is the share of rules that hold, and each broken rule gives one reason naming where.
//!
//! It stands in for a model-judge offline: same request, same verdict shape, same repair
//! path. What it cannot do is judge meaning (tone, truthfulness): those criteria need a
//! hosted model as the judge.

use super::{invalid, json_string, param, Answer};
use regex::{Regex, RegexBuilder};
use serde_json::{json, Value};
use switchyard_core::model::ModelRequest;
use switchyard_core::StepError;

/// Rules one judge step may declare.
pub const MAX_RULES: usize = 50;
/// Compiled size limit of one rule's expression (the `regex` crate's measure).
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

struct Rule {
    id: String,
    at: String,
    check: Check,
    message: String,
}

enum Check {
    Forbid(Regex),
    Require(Regex),
}

fn rules(params: &Value) -> Result<Vec<Rule>, StepError> {
    let list = param(params, "rules")
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| {
            invalid("params.rules must be a non-empty list of {id, at?, forbid | require, message}")
        })?;
    if list.len() > MAX_RULES {
        return Err(invalid(format!(
            "params.rules has {} rules; at most {MAX_RULES}",
            list.len()
        )));
    }
    list.iter()
        .enumerate()
        .map(|(i, r)| {
            let field = |k: &str| r.get(k).and_then(Value::as_str);
            let id = field("id").map_or_else(|| format!("rule-{}", i + 1), str::to_string);
            let compile = |key: &str, src: &str| {
                RegexBuilder::new(src)
                    .case_insensitive(true)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| {
                        invalid(format!("params.rules.{i}.{key} is not a valid regex: {e}"))
                    })
            };
            let check = match (field("forbid"), field("require")) {
                (Some(f), None) => Check::Forbid(compile("forbid", f)?),
                (None, Some(q)) => Check::Require(compile("require", q)?),
                _ => {
                    return Err(invalid(format!(
                        "params.rules.{i} needs exactly one of `forbid` and `require` (a regex)"
                    )))
                }
            };
            let at = field("at").unwrap_or("").to_string();
            if !(at.is_empty() || at.starts_with('/')) {
                return Err(invalid(format!(
                    "params.rules.{i}.at must be a JSON pointer such as /description"
                )));
            }
            let message = field("message").map_or_else(|| id.clone(), str::to_string);
            Ok(Rule {
                id,
                at,
                check,
                message,
            })
        })
        .collect()
}

/// Every string under `v`, with its JSON pointer.
fn strings<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::String(s) => out.push((at, s)),
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                strings(x, format!("{at}/{i}"), out);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                let key = k.replace('~', "~0").replace('/', "~1");
                strings(x, format!("{at}/{key}"), out);
            }
        }
        _ => {}
    }
}

/// What one rule finds wrong (empty when it holds).
fn findings(rule: &Rule, value: &Value) -> Vec<String> {
    let mut leaves = Vec::new();
    if let Some(part) = value.pointer(&rule.at) {
        strings(part, rule.at.clone(), &mut leaves);
    }
    let at = |p: &str| {
        if p.is_empty() {
            "/".to_string()
        } else {
            p.to_string()
        }
    };
    match &rule.check {
        Check::Forbid(re) => leaves
            .iter()
            .filter_map(|(p, s)| {
                re.find(s).map(|m| {
                    format!(
                        "{} [{}] (at {}: \"{}\")",
                        rule.message,
                        rule.id,
                        at(p),
                        m.as_str()
                    )
                })
            })
            .collect(),
        Check::Require(re) => {
            if leaves.iter().any(|(_, s)| re.is_match(s)) {
                Vec::new()
            } else {
                vec![format!(
                    "{} [{}] (at {})",
                    rule.message,
                    rule.id,
                    at(&rule.at)
                )]
            }
        }
    }
}

/// The verdict on `input` (the validate step's value).
pub(super) fn rules_judge(request: &ModelRequest) -> Result<Answer, StepError> {
    let rules = rules(&request.params)?;
    let mut reasons = Vec::new();
    let mut held = 0usize;
    for rule in &rules {
        let found = findings(rule, &request.input);
        if found.is_empty() {
            held += 1;
        }
        reasons.extend(found);
    }
    let pass = held == rules.len();
    let score = held as f64 / rules.len() as f64;
    let verdict = json!({
        "pass": pass,
        "score": switchyard_core::model::normalized::round4(score),
        "reasons": reasons,
    });
    let text = json_string(&verdict);
    Ok(Answer::generation(
        request,
        &json_string(&request.input),
        &text,
        Some(verdict),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::model::Role;

    fn judge(input: Value, rules: Value) -> Result<Value, StepError> {
        let mut r = crate::testing::request("local/rules-judge", Role::Generation);
        r.input = input;
        r.params = json!({"rules": rules});
        rules_judge(&r).map(|a| a.output["json"].clone())
    }

    #[test]
    fn rules_table() {
        let copy = json!({
            "title": "Northwind Trailhead 28L Daypack",
            "bullets": ["The BEST pack", "Padded sleeve"],
            "description": "A daypack. Weighs 860 g."
        });
        let no_best =
            json!({"id": "no-superlatives", "forbid": "\\bbest\\b", "message": "no superlatives"});
        let weight = json!({"id": "weight", "at": "/description", "require": "\\d+ ?g\\b", "message": "state the weight"});
        let weight_in_title = json!({"id": "weight", "at": "/title", "require": "\\d+ ?g\\b", "message": "state the weight"});
        // (rules, pass, score, reasons)
        let table: Vec<(Value, bool, f64, Vec<&str>)> = vec![
            (json!([weight.clone()]), true, 1.0, vec![]),
            (
                json!([no_best, weight]),
                false,
                0.5,
                vec!["no superlatives [no-superlatives] (at /bullets/0: \"BEST\")"],
            ),
            (
                json!([weight_in_title]),
                false,
                0.0,
                vec!["state the weight [weight] (at /title)"],
            ),
            // A pointer to nothing: a forbid holds, a require fails.
            (json!([{"at": "/nope", "forbid": "x"}]), true, 1.0, vec![]),
            (
                json!([{"at": "/nope", "require": "x"}]),
                false,
                0.0,
                vec!["rule-1 [rule-1] (at /nope)"],
            ),
        ];
        for (i, (rules, pass, score, reasons)) in table.into_iter().enumerate() {
            let v = judge(copy.clone(), rules).unwrap();
            assert_eq!(v["pass"], json!(pass), "case {i}");
            assert_eq!(v["score"], json!(score), "case {i}");
            assert_eq!(v["reasons"], json!(reasons), "case {i}");
            switchyard_core::machine::judge::read(&json!({"json": v})).unwrap();
        }
    }

    #[test]
    fn bad_rules_are_invalid() {
        let table: Vec<(Value, &str)> = vec![
            (json!(null), "non-empty list"),
            (json!([]), "non-empty list"),
            (json!([{"id": "a"}]), "exactly one of"),
            (json!([{"forbid": "a", "require": "b"}]), "exactly one of"),
            (
                json!([{"forbid": "("}]),
                "params.rules.0.forbid is not a valid regex",
            ),
            (
                json!([{"forbid": "a", "at": "description"}]),
                "JSON pointer",
            ),
        ];
        for (i, (rules, part)) in table.into_iter().enumerate() {
            let e = judge(json!({}), rules).unwrap_err();
            assert_eq!(e.class, switchyard_core::ErrorClass::Invalid, "case {i}");
            assert!(e.message.contains(part), "case {i}: {}", e.message);
        }
        let many: Vec<Value> = (0..=MAX_RULES).map(|_| json!({"forbid": "x"})).collect();
        assert!(judge(json!({}), json!(many))
            .unwrap_err()
            .message
            .contains("at most"));
    }
}
