//! Cost-aware model choice: cascades and model selection, decided without I/O.
//!
//! A **cascade** asks the cheapest tier first and pays for a bigger model only when the
//! answer calls for it: after each tier's answer the step's declared conditions are checked
//! against it (`output.confidence < 0.8`, `schema_valid == false`, …), and the first that
//! holds sends the step on to the next tier. Errors listed in `fallback_on` move up the same
//! way, and a validate step with `repair.escalate` moves its target up when its schema or
//! judge fails the value. Each move is an [`Escalation`] on the step record, so a run shows
//! which model answered and why, and what the top tier would have cost instead
//! (`baseline_usd`, priced by the engine from the answering call's usage).
//!
//! **Selection** (`select`) picks a step's first model once, before its first call, from
//! cases read against the run and the price table's estimate of each candidate's call
//! (`estimate_usd`, `input_tokens`).
//!
//! Both reuse the route conditions of [`crate::refs::Condition`]; only the scope differs.

use crate::error::StepError;
use crate::machine::attempt::{apply_meta, AttemptMeta};
use crate::machine::budget::round_usd;
use crate::refs::{lookup, Condition};
use crate::state::{Escalation, EventKind, HistoryEvent, Selection, StepRecord};
use crate::time::Millis;
use crate::workflow::ModelStep;
use serde_json::{json, Map, Value};

pub use crate::workflow::{ESCALATION_ROOTS, SELECT_ROOTS};

/// The scope a tier's answer is judged in: the run's scope plus the answer.
pub fn escalation_scope(
    run_scope: &Value,
    output: &Value,
    meta: &AttemptMeta,
    schema_valid: bool,
) -> Value {
    let mut s = base(run_scope);
    s.insert("output".into(), output.clone());
    s.insert(
        "usage".into(),
        // Every count, zeros included, so a condition can read any of them.
        meta.usage.map_or(Value::Null, |u| {
            json!({
                "input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
                "cache_read_tokens": u.cache_read_tokens, "cache_write_tokens": u.cache_write_tokens,
                "reasoning_tokens": u.reasoning_tokens,
            })
        }),
    );
    s.insert("cost_usd".into(), json!(meta.cost_usd));
    s.insert("model".into(), json!(meta.model));
    s.insert("schema_valid".into(), json!(schema_valid));
    Value::Object(s)
}

fn base(run_scope: &Value) -> Map<String, Value> {
    let mut s = Map::new();
    for k in ["input", "steps", "run"] {
        if let Some(v) = run_scope.get(k) {
            s.insert(k.into(), v.clone());
        }
    }
    s
}

/// Whether the answer of the tier at `index` is passed over, and the reason: the first of
/// its conditions that holds. The top tier (and any step that is not a cascade) never
/// escalates. A condition that cannot be evaluated (a number compared with text) is the
/// workflow's error, reported as such.
pub fn escalation(ms: &ModelStep, index: usize, scope: &Value) -> Result<Option<String>, String> {
    let Some(c) = &ms.cascade else {
        return Ok(None);
    };
    if ms.next_index(index).is_none() {
        return Ok(None);
    }
    for cond in c.escalate_if.get(index).map(Vec::as_slice).unwrap_or(&[]) {
        if cond.holds(scope)? {
            return Ok(Some(describe(cond, scope)));
        }
    }
    Ok(None)
}

/// A condition as a person reads it, with the value it saw: `output.confidence = 0.55 (lt 0.8)`.
pub fn describe(c: &Condition, scope: &Value) -> String {
    let seen = lookup(scope, &c.path).map_or("missing".to_string(), compact);
    let mut ops = Vec::new();
    let mut op = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            ops.push(format!("{name} {v}"));
        }
    };
    op("equals", c.equals.as_ref().map(compact));
    op("not_equals", c.not_equals.as_ref().map(compact));
    op("in", c.one_of.as_ref().map(|l| compact(&json!(l))));
    op("gt", c.gt.map(|n| n.to_string()));
    op("gte", c.gte.map(|n| n.to_string()));
    op("lt", c.lt.map(|n| n.to_string()));
    op("lte", c.lte.map(|n| n.to_string()));
    op("exists", c.exists.map(|b| b.to_string()));
    op("contains", c.contains.as_ref().map(|s| compact(&json!(s))));
    format!("{} = {seen} ({})", c.path, ops.join(", "))
}

fn compact(v: &Value) -> String {
    // Sums of float prices carry noise in their last digits (0.00011599999999999999).
    let s = match v.as_f64() {
        Some(x) if v.is_f64() => json!(round_usd(x)).to_string(),
        _ => v.to_string(),
    };
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

/// Passes over the claimed attempt's answer for the next tier: its cost stays on the step,
/// the next tier starts at once with a fresh attempt count and no feedback. `None` when there
/// is no next tier.
pub fn escalate(
    ms: &ModelStep,
    claimed: &StepRecord,
    reason: &str,
    meta: AttemptMeta,
    now: Millis,
) -> Option<(StepRecord, HistoryEvent)> {
    let next = ms.next_index(claimed.model_index)?;
    let mut r = claimed.clone();
    let cost = meta.cost_usd;
    apply_meta(&mut r, meta);
    let from = r.model.clone().unwrap_or_default();
    let to = ms.models.get(next)?.clone();
    move_up(&mut r, next, &to);
    crate::machine::settle::release_to(&mut r, now);
    r.escalations.push(Escalation {
        from: from.clone(),
        to: to.clone(),
        reason: reason.to_string(),
        cost_usd: cost,
        at: now,
    });
    let ev = HistoryEvent::step(
        now,
        EventKind::StepEscalated,
        &r.step,
        r.attempt,
        json!({"from": from, "to": to, "reason": reason, "cost_usd": cost}),
    );
    Some((r, ev))
}

/// Points a record at the model at `index`: a fresh attempt count, no feedback meant for
/// another model.
fn move_up(r: &mut StepRecord, index: usize, model: &str) {
    r.model_index = index;
    r.model_attempt = 0;
    r.feedback.clear();
    r.provider = Some(crate::model::split_model(model).0.to_string());
    r.model = Some(model.to_string());
}

/// A repair that escalates (`repair.escalate` on a validate step): the target cascade moves
/// to its next tier instead of re-asking the same one. `None` when the target is not a
/// cascade or is at its top tier (the caller then repairs with feedback).
pub fn escalate_for_repair(
    ms: &ModelStep,
    target: &StepRecord,
    reason: &str,
    now: Millis,
) -> Option<StepRecord> {
    ms.cascade.as_ref()?;
    let next = ms.next_index(target.model_index)?;
    let to = ms.models.get(next)?.clone();
    let mut r = target.clone();
    let from = r.model.clone().unwrap_or_default();
    move_up(&mut r, next, &to);
    r.escalations.push(Escalation {
        from,
        to,
        reason: reason.to_string(),
        cost_usd: 0.0,
        at: now,
    });
    Some(r)
}

/// Records an error that moved a cascade up (the fallback rule did the move).
pub fn note_error_escalation(
    r: &mut StepRecord,
    from: Option<String>,
    err: &StepError,
    now: Millis,
) {
    r.escalations.push(Escalation {
        from: from.unwrap_or_default(),
        to: r.model.clone().unwrap_or_default(),
        reason: format!("{}: {}", err.class, err.message),
        cost_usd: 0.0,
        at: now,
    });
}

/// One candidate of a `select` list, as the engine prepared it: the scope its `when` is read
/// in (the run's, plus `estimate_usd` and `input_tokens` for this candidate's call).
pub fn select_scope(run_scope: &Value, model: &str, estimate_usd: f64, input_tokens: u64) -> Value {
    let mut s = base(run_scope);
    s.insert("estimate_usd".into(), json!(round_usd(estimate_usd)));
    s.insert("input_tokens".into(), json!(input_tokens));
    s.insert("model".into(), json!(model));
    Value::Object(s)
}

/// Picks the first candidate whose `when` holds (a case without `when` always does); `scopes`
/// are the candidates' scopes from [`select_scope`] and `estimates` their estimates, in order.
pub fn select(
    ms: &ModelStep,
    scopes: &[Value],
    estimates: &[f64],
) -> Result<(usize, Selection), String> {
    let cases = ms.select.as_deref().unwrap_or(&[]);
    for (i, (case, scope)) in cases.iter().zip(scopes).enumerate() {
        let reason = match case {
            None => Some("default".to_string()),
            Some(c) if c.holds(scope)? => Some(describe(c, scope)),
            Some(_) => None,
        };
        if let (Some(reason), Some(model)) = (reason, ms.models.get(i)) {
            return Ok((
                i,
                Selection {
                    model: model.clone(),
                    reason,
                    estimate_usd: estimates.get(i).copied().unwrap_or(0.0),
                },
            ));
        }
    }
    Err("no `select` case matched, and the last case has a `when`".into())
}

/// Applies a selection to a record before its first claim.
pub fn selected(rec: &StepRecord, index: usize, selection: Selection) -> StepRecord {
    let mut r = rec.clone();
    move_up(&mut r, index, &selection.model);
    r.selected = Some(selection);
    r
}

/// The cascade's top model, whose price is the baseline a cascade is compared with.
pub fn top_model(ms: &ModelStep) -> Option<&str> {
    ms.cascade.as_ref()?;
    ms.models.last().map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;
    use crate::model::Role;
    use crate::state::StepStatus;
    use crate::state::Usage;
    use crate::time::Dur;
    use crate::workflow::{Cascade, RetryPolicy};

    fn cond(path: &str, lt: f64) -> Condition {
        Condition {
            path: path.into(),
            lt: Some(lt),
            ..Default::default()
        }
    }

    fn step(models: &[&str], escalate_if: Vec<Vec<Condition>>) -> ModelStep {
        ModelStep {
            models: models.iter().map(|m| m.to_string()).collect(),
            role: Role::Classification,
            prompt: None,
            input: Value::Null,
            params: json!({"labels": {"a": ["x"]}}),
            output_schema: None,
            fallback_on: vec![ErrorClass::Transient],
            retry: RetryPolicy::default(),
            timeout: Dur(1000),
            max_duration: None,
            wait_timeout: Dur(1000),
            asynchronous: false,
            cascade: Some(Cascade {
                params: vec![Value::Null; models.len()],
                escalate_if,
            }),
            select: None,
        }
    }

    fn answer(confidence: f64, schema_valid: bool) -> Value {
        let meta = AttemptMeta {
            model: Some("local/a".into()),
            cost_usd: 0.001,
            usage: Some(Usage::new(10, 0)),
            ..Default::default()
        };
        escalation_scope(
            &json!({"input": {"tier": "free"}, "steps": {}, "run": {}}),
            &json!({"label": "a", "confidence": confidence}),
            &meta,
            schema_valid,
        )
    }

    /// Which answers a three-tier cascade passes over, tier by tier.
    #[test]
    fn escalation_table() {
        let schema_failed = Condition {
            path: "schema_valid".into(),
            equals: Some(json!(false)),
            ..Default::default()
        };
        let ms = step(
            &["local/a", "local/b", "local/c"],
            vec![
                vec![cond("output.confidence", 0.8), schema_failed],
                vec![cond("output.confidence", 0.5)],
            ],
        );
        let rows: Vec<(&str, usize, Value, Option<&str>)> = vec![
            ("confident cheap answer stands", 0, answer(0.9, true), None),
            (
                "unsure cheap answer escalates",
                0,
                answer(0.6, true),
                Some("output.confidence = 0.6 (lt 0.8)"),
            ),
            (
                "schema failure escalates",
                0,
                answer(0.95, false),
                Some("schema_valid = false (equals false)"),
            ),
            ("middle tier has its own bar", 1, answer(0.6, true), None),
            (
                "middle tier escalates below it",
                1,
                answer(0.4, true),
                Some("output.confidence = 0.4 (lt 0.5)"),
            ),
            ("the top tier never escalates", 2, answer(0.1, false), None),
        ];
        for (name, index, scope, want) in rows {
            assert_eq!(
                escalation(&ms, index, &scope).unwrap().as_deref(),
                want,
                "{name}"
            );
        }
        // A condition comparing text as a number is the workflow's error.
        let bad = step(
            &["local/a", "local/b"],
            vec![vec![cond("output.label", 0.5)]],
        );
        assert!(escalation(&bad, 0, &answer(0.9, true)).is_err());
    }

    #[test]
    fn escalating_moves_up_a_tier_and_keeps_the_cost() {
        let ms = step(
            &["local/a", "local/b"],
            vec![vec![cond("output.confidence", 0.8)]],
        );
        let mut claimed = StepRecord::pending("s");
        claimed.status = StepStatus::Running;
        claimed.attempt = 2;
        claimed.model_attempt = 2;
        claimed.model = Some("local/a".into());
        claimed.feedback = vec!["x".into()];
        let meta = AttemptMeta {
            model: Some("local/a".into()),
            cost_usd: 0.25,
            ..Default::default()
        };
        let (r, ev) = escalate(&ms, &claimed, "why", meta, 7).unwrap();
        assert_eq!(
            (r.status, r.model_index, r.model_attempt, r.next_at),
            (StepStatus::Retrying, 1, 0, Some(7))
        );
        assert_eq!(r.model.as_deref(), Some("local/b"));
        assert!(r.feedback.is_empty());
        assert_eq!(r.cost_usd, 0.25);
        assert_eq!(r.escalations.len(), 1);
        assert_eq!(
            (r.escalations[0].from.as_str(), r.escalations[0].to.as_str()),
            ("local/a", "local/b")
        );
        assert_eq!(ev.kind, EventKind::StepEscalated);
        // At the top there is nothing to escalate to.
        assert!(escalate(&ms, &r, "why", AttemptMeta::default(), 8).is_none());
        assert!(escalate_for_repair(&ms, &r, "judge", 8).is_none());
        let up = escalate_for_repair(&ms, &claimed, "judge on check: too vague", 8).unwrap();
        assert_eq!((up.model_index, up.model.as_deref()), (1, Some("local/b")));
        assert_eq!(top_model(&ms), Some("local/b"));
    }

    /// Candidates in order; the first whose case holds wins, a case without `when` always
    /// does; fallbacks follow whichever candidate was chosen.
    #[test]
    fn selection_table() {
        let mut ms = step(&["big/m", "big/m", "small/m", "other/fb"], vec![]);
        ms.cascade = None;
        ms.select = Some(vec![
            Some(Condition {
                path: "input.tier".into(),
                equals: Some(json!("premium")),
                ..Default::default()
            }),
            Some(Condition {
                path: "estimate_usd".into(),
                lte: Some(0.01),
                ..Default::default()
            }),
            None,
        ]);
        let run = |tier: &str, estimates: [f64; 3]| {
            let scope = json!({"input": {"tier": tier}});
            let scopes: Vec<Value> = ms.models[..3]
                .iter()
                .zip(estimates)
                .map(|(m, e)| select_scope(&scope, m, e, 100))
                .collect();
            select(&ms, &scopes, &estimates).unwrap()
        };
        let (i, s) = run("premium", [0.5, 0.5, 0.001]);
        assert_eq!(
            (i, s.reason.as_str()),
            (0, "input.tier = \"premium\" (equals \"premium\")")
        );
        let (i, s) = run("free", [0.005, 0.005, 0.001]);
        assert_eq!((i, s.estimate_usd), (1, 0.005));
        assert_eq!(s.reason, "estimate_usd = 0.005 (lte 0.01)");
        let (i, s) = run("free", [0.5, 0.5, 0.001]);
        assert_eq!(
            (i, s.model.as_str(), s.reason.as_str()),
            (2, "small/m", "default")
        );
        // After any candidate the chain goes on with the fallbacks.
        assert_eq!(ms.next_index(0), Some(3));
        assert_eq!(ms.next_index(2), Some(3));
        assert_eq!(ms.next_index(3), None);
        let rec = selected(&StepRecord::pending("s"), 2, s);
        assert_eq!(
            (rec.model_index, rec.model.as_deref()),
            (2, Some("small/m"))
        );
    }

    #[test]
    fn tier_params_lie_over_the_step_params() {
        let mut ms = step(&["local/a", "local/b"], vec![vec![]]);
        if let Some(c) = ms.cascade.as_mut() {
            c.params[1] = json!({"labels": {"b": ["y"]}, "top_k": 2});
        }
        assert_eq!(ms.params_for(0), json!({"labels": {"a": ["x"]}}));
        assert_eq!(
            ms.params_for(1),
            json!({"labels": {"b": ["y"]}, "top_k": 2})
        );
    }
}
