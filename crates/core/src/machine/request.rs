//! Starting a model call: `select`, the attempt's request, the budget reservation and the
//! claim — everything decided before the one side effect.

use super::attempt::AttemptMeta;
use super::{cascade, invalid, settle, Ctx, Next, Note, Transition, Writes};
use crate::model::{estimate_tokens, Callback, ModelRequest};
use crate::refs;
use crate::state::{EventKind, HistoryEvent, JobRef, StepRecord};
use crate::workflow::{ModelStep, Step};
use crate::StepError;
use serde_json::json;

/// The request of `rec`'s attempt (`rec.attempt` is its number) at its place in the fallback
/// chain. With `token`, an asynchronous step's callback names the attempt.
pub fn build_request(
    cx: &Ctx,
    step: &Step,
    ms: &ModelStep,
    rec: &StepRecord,
    token: Option<&str>,
) -> Result<ModelRequest, StepError> {
    let model = settle::current_model(step, rec)
        .ok_or_else(|| invalid("no model left in the fallback chain"))?;
    let input = refs::resolve(&ms.input, cx.scope).map_err(invalid)?;
    let params = refs::resolve(&ms.params_for(rec.model_index), cx.scope).map_err(invalid)?;
    let instructions = match &ms.prompt {
        None => None,
        Some(p) => {
            let mut scope = cx.scope.clone();
            scope["feedback"] = json!(rec.feedback);
            scope["attempt"] = json!(rec.attempt);
            Some(refs::render_template(&p.template, &scope).map_err(invalid)?)
        }
    };
    let callback = match (ms.asynchronous, token) {
        (true, Some(t)) => {
            let provider = model.split('/').next().unwrap_or("");
            Some(Callback {
                url: format!(
                    "{}/hooks/{provider}?run_id={}&step={}&token={t}",
                    cx.public_url.trim_end_matches('/'),
                    cx.run_id,
                    step.id
                ),
                run_id: cx.run_id.to_string(),
                step: step.id.clone(),
                token: t.to_string(),
            })
        }
        _ => None,
    };
    Ok(ModelRequest {
        run_id: cx.run_id.to_string(),
        step: step.id.clone(),
        attempt: rec.attempt,
        model,
        role: ms.role,
        instructions,
        prompt_version: ms.prompt.as_ref().map(|p| p.version.clone()),
        input,
        params,
        output_schema: ms.output_schema.clone(),
        feedback: rec.feedback.clone(),
        timeout_ms: ms.timeout.ms(),
        callback,
    })
}

/// `Due(Start)` of a model call (a model step, or a judge whose value passed its schema):
/// pick the model of a `select` step once, then build the attempt's request for its uploads
/// to be read in. A request that cannot be built fails the step without a call.
pub(super) fn start(cx: &Ctx, step: &Step, ms: &ModelStep, rec: StepRecord) -> Transition {
    let token = ms.asynchronous.then(|| cx.nonce.to_string());
    let mut notes = vec![];
    // A `select` step picks its model once, before its first call; the choice is written
    // with the claim, so a retried or resumed step keeps it.
    let rec = match (&ms.select, &rec.selected) {
        (Some(_), None) => match select(cx, step, ms, &rec) {
            Ok((r, note)) => {
                notes.push(note);
                r
            }
            Err(err) => return uncalled(cx, step, &rec, err),
        },
        _ => rec,
    };
    // The request is built for the attempt about to be claimed.
    let mut next = rec.clone();
    next.attempt += 1;
    next.model_attempt += 1;
    match build_request(cx, step, ms, &next, token.as_deref()) {
        Ok(request) => Transition {
            notes,
            next: Next::Prepare {
                rec,
                token,
                request,
            },
        },
        Err(err) => uncalled(cx, step, &rec, err),
    }
}

/// `Prepared`: reserve the call's estimate under the run's budget and claim the attempt.
pub(super) fn claim(
    cx: &Ctx,
    step: &Step,
    rec: StepRecord,
    token: Option<String>,
    request: Result<ModelRequest, StepError>,
) -> Transition {
    let Some(ms) = step.call() else {
        return uncalled(cx, step, &rec, invalid("not a model call"));
    };
    let request = match request.and_then(|req| reserve(cx, step, req)) {
        Ok(req) => req,
        Err(err) => return uncalled(cx, step, &rec, err),
    };
    let lease = ms.timeout.ms() + cx.limits.lease_margin_ms;
    let mut claimed = settle::claim(step, &rec, cx.owner, cx.now, lease);
    // A callback may arrive before the submit call returns: the claim already carries the
    // attempt's token, so the webhook can match it.
    if let Some(t) = &token {
        claimed.job = Some(JobRef {
            provider: crate::model::split_model(&request.model).0.to_string(),
            model: request.model.clone(),
            job_id: String::new(),
            callback_token: t.clone(),
        });
    }
    let started = HistoryEvent::step(
        cx.now,
        EventKind::StepStarted,
        &step.id,
        claimed.attempt,
        json!({"model": request.model, "prompt_version": request.prompt_version}),
    );
    // A paid or asynchronous call is claimed before it starts: a repeat would cost money or
    // submit a second job. A built-in model's call is not (issue 25: one write per step).
    let commit_claim = token.is_some() || !cx.prices.repeat_is_free(&request.model);
    Transition::to(Next::Call {
        claim: Writes::one((claimed, started)),
        request,
        token,
        commit_claim,
    })
}

/// The provider of a built request must exist, and under a run budget its estimate must fit
/// (estimated only then: it reads the whole request).
fn reserve(cx: &Ctx, step: &Step, req: ModelRequest) -> Result<ModelRequest, StepError> {
    let unserved = || invalid(format!("no provider serves `{}`", req.model));
    if !cx.prices.serves(&req.model) {
        return Err(unserved());
    }
    if let Some(budget) = cx.wf.budget_usd {
        let estimate = cx.prices.estimate_usd(&req).ok_or_else(unserved)?;
        let mut ledger = cx.ledger.lock().map_err(|_| {
            StepError::new(crate::ErrorClass::Transient, "budget ledger unavailable")
        })?;
        ledger.reserve(&step.id, &req.model, estimate, budget)?;
    }
    Ok(req)
}

/// Reads a `select` step's cases against the run and each candidate's estimated call
/// (`estimate_usd` from its provider's price table, `input_tokens`), and points the record
/// at the model the first matching case names.
fn select(
    cx: &Ctx,
    step: &Step,
    ms: &ModelStep,
    rec: &StepRecord,
) -> Result<(StepRecord, Note), StepError> {
    let n = ms.select.as_ref().map_or(0, Vec::len);
    let (mut scopes, mut estimates) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (i, model) in ms.models.iter().take(n).enumerate() {
        let mut probe = rec.clone();
        probe.model_index = i;
        probe.attempt += 1;
        let req = build_request(cx, step, ms, &probe, None)?;
        let estimate = cx
            .prices
            .estimate_usd(&req)
            .ok_or_else(|| invalid(format!("no provider serves `{model}`")))?;
        let tokens = estimate_tokens(&req.input.to_string())
            + req.instructions.as_deref().map_or(0, estimate_tokens);
        scopes.push(cascade::select_scope(cx.scope, model, estimate, tokens));
        estimates.push(estimate);
    }
    let (index, selection) =
        cascade::select(ms, &scopes, &estimates).map_err(|e| invalid(format!("`select`: {e}")))?;
    let note = Note::Selected {
        model: selection.model.clone(),
        reason: selection.reason.clone(),
    };
    Ok((cascade::selected(rec, index, selection), note))
}

/// A call refused before any side effect: no claim needed, one write, and no attempt
/// counted (the model was never called).
pub(super) fn uncalled(cx: &Ctx, step: &Step, rec: &StepRecord, err: StepError) -> Transition {
    let mut base = rec.clone();
    base.model = settle::current_model(step, rec);
    Transition::commit(Writes::one(settle::fail(
        step,
        &base,
        err,
        AttemptMeta::default(),
        cx.now,
        cx.run_id,
    )))
}
