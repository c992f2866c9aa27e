//! Steps decided from the run's scope alone — route, transform, parallel merge, validate —
//! and the transitions no call is made for: approval gates and lost attempts. A step's value
//! goes into its record inline; the interpreter moves a large one to the blob store as it
//! commits.

use super::attempt::AttemptMeta;
use super::{invalid, request, settle, Ctx, Transition, Writes};
use crate::refs;
use crate::schema;
use crate::state::{EventKind, HistoryEvent, StepRecord, ValueRef};
use crate::workflow::{ApprovalStep, OnTimeout, RouteStep, Step, StepKind, ValidateStep};
use crate::{ErrorClass, StepError};
use serde_json::{json, Map, Value};

/// `Due(Start)` of a route, transform, parallel or validate step (without a judge): one
/// attempt, settled at once; the step's own failure (a bad reference, no route matched, a
/// value that fails its schema with no repair left) fails it.
pub(super) fn start(cx: &Ctx, step: &Step, kind: &StepKind, rec: &StepRecord) -> Writes {
    let mut started = rec.clone();
    started.attempt += 1;
    started.started_at.get_or_insert(cx.now);
    match decide(cx, step, kind, &started) {
        Ok(done) => done,
        Err(err) => Writes::one(settle::fail(
            step,
            &started,
            err,
            AttemptMeta::default(),
            cx.now,
            cx.run_id,
        )),
    }
}

fn decide(cx: &Ctx, step: &Step, kind: &StepKind, rec: &StepRecord) -> Result<Writes, StepError> {
    let now = cx.now;
    match kind {
        StepKind::Route(route) => {
            let chosen = choose_route(route, cx.scope)?;
            Ok(Writes::one(settle::routed(rec, &chosen, now)))
        }
        StepKind::Transform { value } => {
            let v = refs::resolve(value, cx.scope).map_err(invalid)?;
            Ok(succeed(rec, v, now))
        }
        StepKind::Parallel { branches } => {
            Ok(succeed(rec, merge_branches(branches, cx.scope), now))
        }
        StepKind::Validate(v) => {
            let value = refs::resolve(&v.value, cx.scope).map_err(invalid)?;
            match schema_problems(v, &value) {
                None => Ok(succeed(rec, value, now)),
                Some(errors) => repair_or(cx, step, v, rec, errors, "value failed its schema"),
            }
        }
        StepKind::Model(_) | StepKind::Approval(_) => Err(invalid("internal: not a pure step")),
    }
}

fn succeed(rec: &StepRecord, value: Value, now: u64) -> Writes {
    Writes::one(settle::succeed(
        rec,
        ValueRef::Inline { value },
        AttemptMeta::default(),
        now,
    ))
}

/// `Due(Start)` of a validate step with a judge: the schema first (a value that fails it is
/// repaired or fails without a judge call), then the judge's call, made like a model step's.
pub(super) fn start_judged(
    cx: &Ctx,
    step: &Step,
    v: &ValidateStep,
    rec: StepRecord,
) -> Result<Transition, String> {
    let Some(judge) = &v.judge else {
        return Err("the step has no judge".into());
    };
    // A check the schema settles counts as an attempt, as on a validate step without a
    // judge; otherwise the judge's call is the attempt (`claim` counts it).
    let mut checked = rec.clone();
    checked.attempt += 1;
    checked.started_at.get_or_insert(cx.now);
    let outcome = refs::resolve(&v.value, cx.scope)
        .map_err(invalid)
        .and_then(|value| match schema_problems(v, &value) {
            None => Ok(None),
            Some(errors) => {
                repair_or(cx, step, v, &checked, errors, "value failed its schema").map(Some)
            }
        });
    Ok(match outcome {
        Ok(None) => request::start(cx, step, &judge.call, rec),
        Ok(Some(writes)) => Transition::commit(writes),
        // Nothing a retry of the judge could change: the value itself is wrong.
        Err(err) => Transition::commit(Writes::one(settle::fail_outright(
            &checked,
            err,
            AttemptMeta::default(),
            cx.now,
        ))),
    })
}

/// Problems found in a validate step's value go back to its repair step as feedback while
/// repairs are left (both records in one write: the target's reset and the validator's
/// request happen together or not at all); otherwise the validation's own error comes back.
pub(super) fn repair_or(
    cx: &Ctx,
    step: &Step,
    v: &ValidateStep,
    rec: &StepRecord,
    errors: Vec<String>,
    why: &str,
) -> Result<Writes, StepError> {
    let target_rec = v.repair.as_ref().and_then(|rep| cx.records.get(&rep.step));
    let target_step = v.repair.as_ref().and_then(|rep| cx.wf.step(&rep.step));
    match target_rec
        .and_then(|t| settle::request_repair(step, target_step, rec, t, &errors, why, cx.now))
    {
        Some((val, target, ev)) => Ok(Writes {
            records: vec![target, val],
            events: vec![ev],
        }),
        None => Err(StepError::new(
            if why.starts_with("the judge") {
                ErrorClass::Rejected
            } else {
                ErrorClass::Malformed
            },
            format!("{why} ({} problem(s))", errors.len()),
        )
        .with_details(errors)),
    }
}

/// `Due(Expire)`: an attempt whose worker vanished. The lease expiry is recorded before the
/// failure it causes.
pub(super) fn expire(cx: &Ctx, step: &Step, rec: &StepRecord) -> Writes {
    let (r, ev) = settle::lost(step, rec, cx.now, cx.run_id);
    let lost = HistoryEvent::step(
        cx.now,
        EventKind::StepLeaseExpired,
        &step.id,
        rec.attempt,
        Value::Null,
    );
    Writes {
        records: vec![r],
        events: vec![lost, ev],
    }
}

/// `Due(ApprovalTimeout)`: nobody decided before the deadline; the step's `on_timeout` says
/// which way it goes.
pub(super) fn approval_timeout(
    cx: &Ctx,
    step: &Step,
    a: &ApprovalStep,
    rec: &StepRecord,
) -> (StepRecord, HistoryEvent) {
    match a.on_timeout {
        OnTimeout::Approve => settle::decide(
            rec,
            true,
            Some("approved automatically at the deadline".into()),
            cx.now,
        ),
        OnTimeout::Reject => {
            let err = StepError::new(
                ErrorClass::Timeout,
                "nobody decided the approval before its deadline",
            );
            settle::fail(step, rec, err, AttemptMeta::default(), cx.now, cx.run_id)
        }
    }
}

/// `Due(Start)` of an approval step: a new attempt that waits until its deadline for a
/// decision.
pub(super) fn open_approval(
    cx: &Ctx,
    a: &ApprovalStep,
    rec: &StepRecord,
) -> (StepRecord, HistoryEvent) {
    let mut claimed = rec.clone();
    claimed.attempt += 1;
    let (mut r, mut ev) =
        settle::wait_for_approval(&claimed, cx.now.saturating_add(a.deadline.ms()), cx.now);
    r.started_at = Some(cx.now);
    if let Some(m) = &a.message {
        // The gate opens even if its message cannot be rendered; the reason is kept.
        match refs::render_template(m, cx.scope) {
            Ok(text) => ev.detail["message"] = json!(text),
            Err(e) => ev.detail["message_error"] = json!(e),
        }
    }
    (r, ev)
}

/// The schema problems of a validate step's value (`None`: no schema, or it holds).
fn schema_problems(v: &ValidateStep, value: &Value) -> Option<Vec<String>> {
    v.schema
        .as_ref()
        .and_then(|s| schema::validate(s, value).err())
}

/// The first case whose condition holds, else the default: routes are tried in order.
fn choose_route(route: &RouteStep, scope: &Value) -> Result<String, StepError> {
    for case in &route.routes {
        let hit = match &case.when {
            None => true,
            Some(c) => c.holds(scope).map_err(invalid)?,
        };
        if hit {
            return Ok(case.to.clone());
        }
    }
    route
        .default
        .clone()
        .ok_or_else(|| invalid("no route matched and the route has no `default`"))
}

/// The branches' outputs under their short names; failed ones also list their errors under
/// `_errors`, so later steps can tell a failed branch from one that answered null.
fn merge_branches(branches: &[String], scope: &Value) -> Value {
    let mut merged = Map::new();
    let mut errors = Map::new();
    for b in branches {
        let short = b.rsplit('.').next().unwrap_or(b).to_string();
        let s = &scope["steps"][b];
        merged.insert(
            short.clone(),
            s.get("output").cloned().unwrap_or(Value::Null),
        );
        if let Some(e) = s.get("error").filter(|_| s["status"] == "failed") {
            errors.insert(short, e.clone());
        }
    }
    if !errors.is_empty() {
        merged.insert("_errors".into(), Value::Object(errors));
    }
    Value::Object(merged)
}
