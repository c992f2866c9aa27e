//! Executing one planner action. Each function reads the step definition and the current
//! record, does the work (a provider call, a schema check, a route decision…), asks
//! `switchyard_core::settle` for the next record, and writes it with a condition on the
//! record's version. Only model calls are claimed before they start ("state before side
//! effects"); pure steps have no side effect to protect and write their result once.

use crate::uploads::ReadFail;
use crate::{trace, Engine, EngineError};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::judge::{self, Verdict};
use switchyard_core::model::{Callback, ModelOutput, ModelRequest, ModelResponse, Provider, Role};
use switchyard_core::planner::Action;
use switchyard_core::settle::{self, AttemptMeta};
use switchyard_core::state::{EventKind, HistoryEvent, JobRef, StepRecord, StepStatus};
use switchyard_core::workflow::{
    ApprovalStep, ModelStep, OnTimeout, RouteStep, Step, StepKind, ValidateStep, Workflow,
};
use switchyard_core::{asset, cascade, refs};
use switchyard_core::{schema, ErrorClass, StepError, StoreError};
use tracing::Instrument;

/// What an action needs to know about the run, captured when it starts.
#[derive(Clone)]
pub(crate) struct ActionCtx {
    pub wf: Arc<Workflow>,
    pub run_id: String,
    /// `{input, steps: {id: {status, output, sources, error}}, run}`.
    pub scope: Arc<Value>,
    /// The step records when the action started.
    pub records: Arc<std::collections::HashMap<String, StepRecord>>,
    /// The run's spending, shared by the actions of one invocation.
    pub ledger: Arc<std::sync::Mutex<Ledger>>,
    /// Who claims the steps: the `handle` call that holds the run's lease.
    pub owner: String,
}

pub(crate) use switchyard_core::budget::Ledger;

/// What came back from one provider call, besides the result itself.
struct Answer<'a> {
    req: &'a ModelRequest,
    provider: &'a str,
    /// The attempt's callback token (asynchronous steps).
    token: Option<String>,
    latency_ms: u64,
}

impl Engine {
    /// Builds the reference scope of a run from its records.
    pub(crate) async fn scope(
        &self,
        wf: &Workflow,
        snap: &switchyard_core::state::RunSnapshot,
    ) -> Result<Value, StoreError> {
        let input = self.load_value(&snap.header.input).await?;
        let mut steps = Map::new();
        for r in &snap.steps {
            steps.insert(r.step.clone(), self.step_scope(r).await?);
        }
        Ok(json!({
            "input": input,
            "steps": steps,
            "run": {"id": snap.header.run_id, "workflow": wf.name, "version": wf.version},
        }))
    }

    /// Brings a scope up to date with one changed record, so a worker re-planning after each
    /// step does not rebuild the scope of the whole chain (which grew with its length).
    pub(crate) async fn update_scope(
        &self,
        scope: &mut Value,
        r: &StepRecord,
    ) -> Result<(), StoreError> {
        let entry = self.step_scope(r).await?;
        if let Some(steps) = scope.get_mut("steps").and_then(Value::as_object_mut) {
            steps.insert(r.step.clone(), entry);
        }
        Ok(())
    }

    /// One step's part of the scope: `{status, output?, sources?, error?}`.
    async fn step_scope(&self, r: &StepRecord) -> Result<Value, StoreError> {
        let mut s = Map::new();
        s.insert("status".into(), json!(r.status.as_str()));
        if let (StepStatus::Succeeded | StepStatus::Failed, Some(o)) = (r.status, &r.output) {
            s.insert("output".into(), self.load_value(o).await?);
        } else if r.status == StepStatus::Failed || r.status == StepStatus::Skipped {
            s.insert("output".into(), Value::Null);
        }
        if r.status == StepStatus::Succeeded || !r.sources.is_empty() {
            s.insert("sources".into(), json!(r.sources));
        }
        if let Some(e) = &r.error {
            s.insert(
                "error".into(),
                json!({"class": e.class, "message": e.message}),
            );
        }
        Ok(Value::Object(s))
    }

    /// Writes a step record with its events in one port call (one item or transaction), on
    /// the condition that the store still holds the version `rec` was read at; `rec` then
    /// carries the version the store returns.
    pub(crate) async fn write_step(
        &self,
        wf: &Workflow,
        run_id: &str,
        rec: &mut StepRecord,
        events: &[HistoryEvent],
    ) -> Result<(), EngineError> {
        self.put_records(wf, run_id, std::slice::from_mut(rec), &[events])
            .await
    }

    /// Writes records (one conditional write, or several as one) through storage faults: a
    /// write that failed is tried again ([`WRITE_TRIES`] in all), and when a later try
    /// conflicts, the records are read back — the first try may have landed with its answer
    /// lost, and then the write is done, not a conflict. So a claim whose answer was lost is
    /// still this worker's claim, and a verdict whose write failed is not thrown away.
    async fn put_records(
        &self,
        wf: &Workflow,
        run_id: &str,
        records: &mut [StepRecord],
        events: &[&[HistoryEvent]],
    ) -> Result<(), EngineError> {
        let mut faulted = false;
        for attempt in 0..WRITE_TRIES {
            let written = if let [rec] = &*records {
                self.store
                    .put_step(run_id, rec, events.first().copied().unwrap_or(&[]))
                    .await
                    .map(|v| vec![v])
            } else {
                let writes: Vec<(&StepRecord, &[HistoryEvent])> = records
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r, events.get(i).copied().unwrap_or(&[])))
                    .collect();
                self.store.put_steps(run_id, &writes).await
            };
            match written {
                Ok(versions) => {
                    for (r, v) in records.iter_mut().zip(versions) {
                        r.version = v;
                    }
                    self.observe_steps(wf, run_id, records, events);
                    return Ok(());
                }
                Err(StoreError::Unavailable(msg)) if attempt + 1 < WRITE_TRIES => {
                    tracing::debug!(run_id, %msg, "step write failed; trying again");
                    faulted = true;
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(StoreError::Conflict(msg)) if faulted => {
                    if self.landed(run_id, records).await? {
                        for r in records.iter_mut() {
                            r.version += 1;
                        }
                        self.observe_steps(wf, run_id, records, events);
                        return Ok(());
                    }
                    return Err(StoreError::Conflict(msg).into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Unavailable(format!("run {run_id}: step write kept failing")).into())
    }

    /// Whether the store holds exactly `records`, one version on: an earlier try's write.
    async fn landed(&self, run_id: &str, records: &[StepRecord]) -> Result<bool, StoreError> {
        let Some(snap) = self.store.load(run_id).await? else {
            return Ok(false);
        };
        Ok(records.iter().all(|r| {
            let mut mine = r.clone();
            mine.version += 1;
            snap.step(&r.step) == Some(&mine)
        }))
    }

    /// Executes one action; returns the records it wrote (the caller updates its snapshot).
    pub(crate) async fn execute(
        &self,
        cx: &ActionCtx,
        action: &Action,
        rec: StepRecord,
    ) -> Result<Vec<StepRecord>, EngineError> {
        let Some(step) = cx.wf.step(action.step()) else {
            return Err(EngineError::NotFound(format!(
                "step `{}` is not in the definition",
                action.step()
            )));
        };
        let now = self.now();
        let (records, events) = match (action, &step.kind) {
            (Action::Skip { reason, .. }, _) => one(settle::skip(&step.id, &rec, reason, now)),
            (Action::Start { .. }, StepKind::Model(ms)) => {
                return self.start_model(cx, step, ms, rec).await
            }
            (Action::Start { .. }, StepKind::Validate(v)) if v.judge.is_some() => {
                return self.start_judged(cx, step, v, rec).await
            }
            (Action::Poll { .. }, StepKind::Model(ms)) => {
                return self.poll_model(cx, step, ms, rec).await
            }
            (Action::Download { .. }, StepKind::Model(_)) => {
                return self.download_asset(cx, step, rec).await
            }
            (Action::Expire { .. }, _) => expire(step, &rec, now, &cx.run_id),
            (Action::ApprovalTimeout { .. }, StepKind::Approval(a)) => {
                one(approval_timeout(step, a, &rec, now, &cx.run_id))
            }
            (Action::Start { .. }, StepKind::Approval(a)) => {
                one(open_approval(a, &rec, &cx.scope, now))
            }
            (Action::Start { .. }, kind) => self.start_pure(cx, step, kind, &rec, now).await?,
            (other, _) => {
                return Err(EngineError::Internal(format!(
                    "action {other:?} does not apply to step `{}`",
                    step.id
                )))
            }
        };
        self.write_records(&cx.wf, &cx.run_id, records, &events)
            .await
    }

    /// Writes an action's records: one record as one conditional write, several (a repair:
    /// the validator's request and its target's reset) as one all-or-nothing write, so no crash
    /// or lost answer can leave the transition half-applied.
    async fn write_records(
        &self,
        wf: &Workflow,
        run_id: &str,
        mut records: Vec<StepRecord>,
        events: &[HistoryEvent],
    ) -> Result<Vec<StepRecord>, EngineError> {
        let n = records.len();
        let per_record: Vec<&[HistoryEvent]> = (0..n).map(|i| events_for(i, n, events)).collect();
        self.put_records(wf, run_id, &mut records, &per_record)
            .await?;
        Ok(records)
    }

    /// Runs a pure step's attempt; its own failure settles the step, a storage failure does not.
    async fn start_pure(
        &self,
        cx: &ActionCtx,
        step: &Step,
        kind: &StepKind,
        rec: &StepRecord,
        now: u64,
    ) -> Result<Writes, EngineError> {
        let mut started = rec.clone();
        started.attempt += 1;
        started.started_at.get_or_insert(now);
        match self.pure_step(cx, step, kind, &started, now).await {
            Ok(done) => Ok(done),
            // A storage failure is the engine's, not the step's: the wake-up is
            // retried, instead of failing a step that has no retry policy.
            Err(PureFail::Store(e)) => Err(e.into()),
            Err(PureFail::Step(err)) => Ok(one(settle::fail(
                step,
                &started,
                err,
                AttemptMeta::default(),
                now,
                &cx.run_id,
            ))),
        }
    }

    /// Route, transform, validate and parallel merge: decided from the scope alone.
    async fn pure_step(
        &self,
        cx: &ActionCtx,
        step: &Step,
        kind: &StepKind,
        rec: &StepRecord,
        now: u64,
    ) -> Result<Writes, PureFail> {
        match kind {
            StepKind::Route(route) => {
                let chosen = choose_route(route, &cx.scope)?;
                Ok(one(settle::routed(rec, &chosen, now)))
            }
            StepKind::Transform { value } => {
                let v = refs::resolve(value, &cx.scope).map_err(invalid)?;
                self.succeed_with(rec, v, now).await
            }
            StepKind::Parallel { branches } => {
                self.succeed_with(rec, merge_branches(branches, &cx.scope), now)
                    .await
            }
            StepKind::Validate(v) => self.validate_step(cx, step, v, rec, now).await,
            StepKind::Model(_) | StepKind::Approval(_) => {
                Err(invalid("internal: not a pure step".into()))
            }
        }
    }

    /// A pure step's value must be stored before the record can point to it.
    async fn succeed_with(
        &self,
        rec: &StepRecord,
        value: Value,
        now: u64,
    ) -> Result<Writes, PureFail> {
        let out = self.store_value(value).await.map_err(store_err)?;
        Ok(one(settle::succeed(rec, out, AttemptMeta::default(), now)))
    }

    /// A value that fails its schema asks its repair step to run again, if it has one.
    async fn validate_step(
        &self,
        cx: &ActionCtx,
        step: &Step,
        v: &ValidateStep,
        rec: &StepRecord,
        now: u64,
    ) -> Result<Writes, PureFail> {
        let value = refs::resolve(&v.value, &cx.scope).map_err(invalid)?;
        match schema_problems(v, &value) {
            None => self.succeed_with(rec, value, now).await,
            Some(errors) => self
                .repair_or(cx, step, v, rec, errors, "value failed its schema", now)
                .map_err(PureFail::Step),
        }
    }

    /// Problems found in a validate step's value go back to its repair step as feedback
    /// while repairs are left; otherwise the validation's own error comes back.
    #[allow(clippy::too_many_arguments)]
    fn repair_or(
        &self,
        cx: &ActionCtx,
        step: &Step,
        v: &ValidateStep,
        rec: &StepRecord,
        errors: Vec<String>,
        why: &str,
        now: u64,
    ) -> Result<Writes, StepError> {
        let target_rec = v
            .repair
            .as_ref()
            .and_then(|rep| self.cached_record(cx, &rep.step));
        let target_step = v.repair.as_ref().and_then(|rep| cx.wf.step(&rep.step));
        match target_rec
            .and_then(|t| settle::request_repair(step, target_step, rec, &t, &errors, why, now))
        {
            // Both records are written as one (`write_records`): the target's reset and the
            // validator's request happen together or not at all.
            Some((val, target, ev)) => Ok((vec![target, val], vec![ev])),
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

    /// A validate step with a judge: the schema first (a value that fails it is repaired or
    /// fails without a judge call), then the judge's call, made like a model step's.
    async fn start_judged(
        &self,
        cx: &ActionCtx,
        step: &Step,
        v: &ValidateStep,
        rec: StepRecord,
    ) -> Result<Vec<StepRecord>, EngineError> {
        let now = self.now();
        let Some(judge) = &v.judge else {
            return Err(EngineError::Internal(format!(
                "step `{}` has no judge",
                step.id
            )));
        };
        // A check the schema settles counts as an attempt, as on a validate step without a
        // judge; otherwise the judge's call is the attempt (`start_model` counts it).
        let mut checked = rec.clone();
        checked.attempt += 1;
        checked.started_at.get_or_insert(now);
        let outcome = refs::resolve(&v.value, &cx.scope)
            .map_err(|e| StepError::new(ErrorClass::Invalid, e))
            .and_then(|value| match schema_problems(v, &value) {
                None => Ok(None),
                Some(errors) => self
                    .repair_or(
                        cx,
                        step,
                        v,
                        &checked,
                        errors,
                        "value failed its schema",
                        now,
                    )
                    .map(Some),
            });
        match outcome {
            Ok(None) => self.start_model(cx, step, &judge.call, rec).await,
            Ok(Some((records, events))) => {
                self.write_records(&cx.wf, &cx.run_id, records, &events)
                    .await
            }
            Err(err) => {
                // Nothing a retry of the judge could change: the value itself is wrong.
                let (r, ev) = settle::fail_outright(&checked, err, AttemptMeta::default(), now);
                self.write_records(&cx.wf, &cx.run_id, vec![r], &[ev]).await
            }
        }
    }

    /// A judge's verdict settles its validate step: pass → the value is the step's output;
    /// fail → a repair of the step that produced it, or the step fails `rejected`.
    async fn settle_verdict(
        &self,
        cx: &ActionCtx,
        step: &Step,
        claimed: &StepRecord,
        verdict: Verdict,
        meta: AttemptMeta,
        now: u64,
    ) -> Result<Writes, EngineError> {
        let StepKind::Validate(v) = &step.kind else {
            return Err(EngineError::Internal(format!(
                "step `{}` has no judge",
                step.id
            )));
        };
        let min_score = v.judge.as_ref().and_then(|j| j.min_score);
        let problems = judge::problems(&verdict, min_score);
        trace::evaluation(&step.id, &verdict, problems.is_ok());
        let judged = HistoryEvent::step(
            now,
            EventKind::StepJudged,
            &step.id,
            claimed.attempt,
            json!({
                "pass": problems.is_ok(),
                "verdict": verdict,
                "model": meta.model,
                "cost_usd": meta.cost_usd,
            }),
        );
        let mut rec = settle::with_meta(claimed, meta);
        rec.judge_score = Some(verdict.score);
        let lines = match problems {
            Ok(()) => {
                let value = refs::resolve(&v.value, &cx.scope)
                    .map_err(|e| EngineError::Internal(format!("the judged value: {e}")))?;
                let out = self.store_value(value).await?;
                let (r, ev) = settle::succeed(&rec, out, AttemptMeta::default(), now);
                return Ok((vec![r], vec![judged, ev]));
            }
            Err(lines) => lines,
        };
        tracing::info!(run_id = %cx.run_id, step = %step.id, score = verdict.score, "the judge failed the value");
        Ok(
            match self.repair_or(cx, step, v, &rec, lines, "the judge failed the value", now) {
                Ok((records, events)) => (records, [vec![judged], events].concat()),
                Err(err) => {
                    let (r, ev) = settle::fail_outright(&rec, err, AttemptMeta::default(), now);
                    (vec![r], vec![judged, ev])
                }
            },
        )
    }

    /// The record of another step, as captured in the action's context.
    fn cached_record(&self, cx: &ActionCtx, step: &str) -> Option<StepRecord> {
        cx.records.get(step).cloned()
    }

    fn build_request(
        &self,
        cx: &ActionCtx,
        step: &Step,
        ms: &ModelStep,
        rec: &StepRecord,
        token: Option<&str>,
    ) -> Result<ModelRequest, StepError> {
        let invalid = |e: String| StepError::new(ErrorClass::Invalid, e);
        let model = settle::current_model(step, rec)
            .ok_or_else(|| invalid("no model left in the fallback chain".into()))?;
        let input = refs::resolve(&ms.input, &cx.scope).map_err(invalid)?;
        let params = refs::resolve(&ms.params_for(rec.model_index), &cx.scope).map_err(invalid)?;
        let instructions = match &ms.prompt {
            None => None,
            Some(p) => {
                let mut scope = (*cx.scope).clone();
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
                        self.config.public_url.trim_end_matches('/'),
                        cx.run_id,
                        step.id
                    ),
                    run_id: cx.run_id.clone(),
                    step: step.id.clone(),
                    token: t.to_string(),
                })
            }
            _ => None,
        };
        Ok(ModelRequest {
            run_id: cx.run_id.clone(),
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

    async fn start_model(
        &self,
        cx: &ActionCtx,
        step: &Step,
        ms: &ModelStep,
        rec: StepRecord,
    ) -> Result<Vec<StepRecord>, EngineError> {
        let now = self.now();
        let token = ms
            .asynchronous
            .then(|| uuid::Uuid::new_v4().simple().to_string());
        // A `select` step picks its model once, before its first call; the choice is written
        // with the claim, so a retried or resumed step keeps it.
        let rec = match (&ms.select, &rec.selected) {
            (Some(_), None) => match self.select_model(cx, step, ms, &rec) {
                Ok(r) => r,
                Err(err) => return self.fail_uncalled(cx, step, &rec, err, now).await,
            },
            _ => rec,
        };
        // The request is built for the attempt about to be claimed.
        let mut next = rec.clone();
        next.attempt += 1;
        next.model_attempt += 1;
        let prepared = self
            .prepare_call(cx, step, ms, &next, token.as_deref())
            .await;
        let claimed = settle::claim(
            step,
            &rec,
            &cx.owner,
            now,
            ms.timeout.ms() + self.config.step_lease_margin_ms,
        );
        let (req, provider) = match prepared {
            Ok(x) => x,
            Err(ReadFail::Step(err)) => return self.fail_uncalled(cx, step, &rec, err, now).await,
            Err(ReadFail::Store(e)) => return Err(e.into()),
        };
        let (mut claimed, started) = with_job_started(
            claimed,
            &step.id,
            token.as_deref(),
            provider.name(),
            &req,
            now,
        );
        self.write_step(&cx.wf, &cx.run_id, &mut claimed, &[started])
            .await?;
        tracing::info!(run_id = %cx.run_id, step = %step.id, attempt = claimed.attempt, model = %req.model, prompt_version = ?req.prompt_version, "step started");

        let span = trace::attempt_span(&cx.run_id, &req, provider.name(), claimed.model_index);
        let keep = self.keeps_tape(&cx.wf);
        let ((result, latency_ms), tape) = invoke_within(provider.as_ref(), &req, ms, keep)
            .instrument(span.clone())
            .await;
        trace::record_answer(&span, &result);
        drop(span);
        self.keep_tape(cx, step, &mut claimed, tape).await;
        let answer = Answer {
            req: &req,
            provider: provider.name(),
            token,
            latency_ms,
        };
        let (records, events) = self
            .settle_answer(cx, step, ms, &claimed, answer, result)
            .await?;
        self.write_records(&cx.wf, &cx.run_id, records, &events)
            .await
    }

    /// Reads a `select` step's cases against the run and each candidate's estimated call
    /// (`estimate_usd` from its provider's price table, `input_tokens`), and points the
    /// record at the model the first matching case names.
    fn select_model(
        &self,
        cx: &ActionCtx,
        step: &Step,
        ms: &ModelStep,
        rec: &StepRecord,
    ) -> Result<StepRecord, StepError> {
        let n = ms.select.as_ref().map_or(0, Vec::len);
        let (mut scopes, mut estimates) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (i, model) in ms.models.iter().take(n).enumerate() {
            let mut probe = rec.clone();
            probe.model_index = i;
            probe.attempt += 1;
            let req = self.build_request(cx, step, ms, &probe, None)?;
            let provider = self.providers.for_model(model).ok_or_else(|| {
                StepError::new(ErrorClass::Invalid, format!("no provider serves `{model}`"))
            })?;
            let estimate = provider.estimate_cost_usd(&req);
            let tokens = switchyard_core::model::estimate_tokens(&req.input.to_string())
                + req
                    .instructions
                    .as_deref()
                    .map_or(0, switchyard_core::model::estimate_tokens);
            scopes.push(cascade::select_scope(&cx.scope, model, estimate, tokens));
            estimates.push(estimate);
        }
        let (index, selection) = cascade::select(ms, &scopes, &estimates)
            .map_err(|e| StepError::new(ErrorClass::Invalid, format!("`select`: {e}")))?;
        tracing::info!(run_id = %cx.run_id, step = %step.id, model = %selection.model, reason = %selection.reason, "model selected");
        Ok(cascade::selected(rec, index, selection))
    }

    /// A cascade tier's answer is checked against its `escalate_if` before it settles: the
    /// reason to pass it over, if one holds. A condition that cannot be evaluated is the
    /// workflow's error (`invalid`).
    fn escalation(
        &self,
        cx: &ActionCtx,
        ms: &ModelStep,
        claimed: &StepRecord,
        out: &ModelOutput,
        meta: &AttemptMeta,
    ) -> Result<Option<String>, StepError> {
        if ms.cascade.is_none() {
            return Ok(None);
        }
        let schema_valid = check_output(ms, out).is_ok();
        let scope = cascade::escalation_scope(&cx.scope, &out.output, meta, schema_valid);
        cascade::escalation(ms, claimed.model_index, &scope)
            .map_err(|e| StepError::new(ErrorClass::Invalid, format!("`escalate_if`: {e}")))
    }

    /// What the cascade's top model would have charged for the answering call's usage.
    fn baseline(&self, ms: &ModelStep, out: &ModelOutput) -> Option<f64> {
        let top = cascade::top_model(ms)?;
        let usage = out.usage?;
        self.providers.for_model(top)?.price_usd(top, usage)
    }

    /// A call refused before any side effect: no claim needed, one write, and no attempt
    /// counted (the model was never called).
    async fn fail_uncalled(
        &self,
        cx: &ActionCtx,
        step: &Step,
        rec: &StepRecord,
        err: StepError,
        now: u64,
    ) -> Result<Vec<StepRecord>, EngineError> {
        let mut base = rec.clone();
        base.model = settle::current_model(step, rec);
        let (mut r, ev) = settle::fail(step, &base, err, AttemptMeta::default(), now, &cx.run_id);
        self.write_step(&cx.wf, &cx.run_id, &mut r, &[ev]).await?;
        Ok(vec![r])
    }

    /// The request for the attempt about to be claimed (its uploads read in), the provider
    /// that serves it, and its budget reservation: everything decided before any side effect.
    async fn prepare_call(
        &self,
        cx: &ActionCtx,
        step: &Step,
        ms: &ModelStep,
        next: &StepRecord,
        token: Option<&str>,
    ) -> Result<(ModelRequest, Arc<dyn Provider>), ReadFail> {
        let mut req = self
            .build_request(cx, step, ms, next, token)
            .map_err(ReadFail::Step)?;
        self.read_uploads(&cx.scope["input"], &mut req).await?;
        self.reserve(cx, step, req).map_err(ReadFail::Step)
    }

    /// The provider of a built request and its budget reservation.
    fn reserve(
        &self,
        cx: &ActionCtx,
        step: &Step,
        req: ModelRequest,
    ) -> Result<(ModelRequest, Arc<dyn Provider>), StepError> {
        let provider = self.providers.for_model(&req.model).ok_or_else(|| {
            StepError::new(
                ErrorClass::Invalid,
                format!("no provider serves `{}`", req.model),
            )
        })?;
        if let Some(budget) = cx.wf.budget_usd {
            let estimate = provider.estimate_cost_usd(&req);
            let mut ledger = cx
                .ledger
                .lock()
                .map_err(|_| StepError::new(ErrorClass::Transient, "budget ledger unavailable"))?;
            ledger.reserve(&step.id, &req.model, estimate, budget)?;
        }
        Ok((req, provider))
    }

    /// What a provider's answer (or failure) makes of the claimed attempt.
    async fn settle_answer(
        &self,
        cx: &ActionCtx,
        step: &Step,
        ms: &ModelStep,
        claimed: &StepRecord,
        answer: Answer<'_>,
        result: Result<ModelResponse, StepError>,
    ) -> Result<Writes, EngineError> {
        let done = self.now();
        let req = answer.req;
        let meta = |out: Option<&ModelOutput>| AttemptMeta {
            model: Some(out.map_or(req.model.clone(), |o| o.model.clone())),
            prompt_version: req.prompt_version.clone(),
            latency_ms: answer.latency_ms,
            cost_usd: out.map_or(0.0, |o| o.cost_usd),
            usage: out.and_then(|o| o.usage),
            provider_request_id: out.and_then(|o| o.provider_request_id.clone()),
            sources: out.map(|o| o.sources.clone()).unwrap_or_default(),
        };
        Ok(one(match result {
            Ok(ModelResponse::Completed(out)) => {
                if let StepKind::Validate(_) = &step.kind {
                    // A judge's answer: a verdict once it has the verdict's shape.
                    match check_output(ms, &out).and_then(|()| judge::read(&out.output)) {
                        Ok(verdict) => {
                            return self
                                .settle_verdict(cx, step, claimed, verdict, meta(Some(&out)), done)
                                .await
                        }
                        Err(err) => {
                            tracing::warn!(run_id = %cx.run_id, step = %step.id, error_class = %err.class, "the judge's answer is not a verdict");
                            return Ok(one(settle::fail(
                                step,
                                claimed,
                                err,
                                meta(Some(&out)),
                                done,
                                &cx.run_id,
                            )));
                        }
                    }
                }
                // A model step's answer (`ms` is the step's own call here). A cascade tier's
                // answer may be passed over for the next tier's before it settles.
                match self.escalation(cx, ms, claimed, &out, &meta(Some(&out))) {
                    Ok(Some(reason)) => {
                        if let Some(up) =
                            cascade::escalate(ms, claimed, &reason, meta(Some(&out)), done)
                        {
                            tracing::info!(run_id = %cx.run_id, step = %step.id, from = %req.model, reason = %reason, "cascade escalated");
                            return Ok(one(up));
                        }
                    }
                    Ok(None) => {}
                    Err(err) => {
                        return Ok(one(settle::fail_outright(
                            claimed,
                            err,
                            meta(Some(&out)),
                            done,
                        )))
                    }
                }
                let (mut r, ev) = self
                    .settle_output(&cx.run_id, step, claimed, &out, meta(Some(&out)), done)
                    .await?;
                // The answer stands (its file may still be downloading): price it.
                if r.status == StepStatus::Succeeded || r.download.is_some() {
                    r.baseline_usd = self.baseline(ms, &out);
                }
                (r, ev)
            }
            Ok(ModelResponse::Pending {
                job_id,
                poll_after_ms,
            }) => {
                let job = JobRef {
                    provider: answer.provider.to_string(),
                    model: req.model.clone(),
                    job_id,
                    callback_token: answer.token.unwrap_or_default(),
                };
                let poll_at = poll_after_ms.map(|p| done.saturating_add(p));
                settle::wait_for_job(
                    claimed,
                    job,
                    poll_at,
                    done.saturating_add(ms.wait_timeout.ms()),
                    meta(None),
                    done,
                )
            }
            Err(err) => {
                tracing::warn!(run_id = %cx.run_id, step = %step.id, attempt = claimed.attempt, model = %req.model, error_class = %err.class, "step attempt failed");
                settle::fail(step, claimed, err, meta(None), done, &cx.run_id)
            }
        }))
    }

    /// Checks a model's answer against the step's output schema and settles the attempt (a
    /// judge's answer is settled by `settle_verdict`: judges answer synchronously).
    pub(crate) async fn settle_output(
        &self,
        run_id: &str,
        step: &Step,
        claimed: &StepRecord,
        out: &ModelOutput,
        meta: AttemptMeta,
        now: u64,
    ) -> Result<(StepRecord, HistoryEvent), EngineError> {
        let checked = match &step.kind {
            StepKind::Model(ms) => check_output(ms, out),
            _ => Ok(()),
        };
        if let Err(err) = checked {
            tracing::warn!(run_id, step = %step.id, error_class = %err.class, "model output failed its schema");
            return Ok(settle::fail(step, claimed, err, meta, now, run_id));
        }
        let output = match &step.kind {
            StepKind::Model(ms) if ms.role == Role::Asset => {
                match asset::needs_keeping(&out.output) {
                    None => out.output.clone(),
                    // Inline data is part of the answer: a bad one is a malformed answer.
                    Some(source) if asset::is_data_url(source) => {
                        match asset::decode_data_url(source) {
                            Ok(file) => self.keep(source, &file).await?,
                            Err(e) => {
                                let err = StepError::new(ErrorClass::Malformed, e);
                                tracing::warn!(run_id, step = %step.id, error_class = %err.class, "the asset's data: URL is unreadable");
                                return Ok(settle::fail(step, claimed, err, meta, now, run_id));
                            }
                        }
                    }
                    // A file at a URL: the job is done and paid for. Its result is recorded
                    // and the download is an action of its own (`download_asset`), retried
                    // on its own: a failed download never runs the job again.
                    Some(_) => {
                        return Ok(settle::await_download(
                            step,
                            claimed,
                            out.output.clone(),
                            &out.model,
                            meta,
                            now,
                        ))
                    }
                }
            }
            _ => out.output.clone(),
        };
        let value = self.store_value(output).await?;
        Ok(settle::succeed(claimed, value, meta, now))
    }

    /// An asset file copied into the blob store (`core::asset`): the provider's URL expires,
    /// our copy does not. A store failure is the engine's.
    async fn keep(&self, source: &str, file: &asset::Fetched) -> Result<Value, EngineError> {
        let key = self.blobs.put(&file.bytes, &file.content_type).await?;
        let url = self
            .blobs
            .presign(&key, crate::view::PRESIGN_TTL_MS)
            .await?;
        Ok(asset::kept(source, file, &key, &url))
    }

    /// Downloads a finished asset job's output file (`Action::Download`) and keeps it: the
    /// step succeeds with our copy. A failed download is settled by
    /// `settle::download_failed` (downloaded again after a backoff, or the step fails naming
    /// the download and its host); the job is never submitted again. No claim is written
    /// first: a download costs nothing and its copy is content-addressed, the run's lease keeps
    /// other workers off the step meanwhile, and a download a crash cut short is made again.
    async fn download_asset(
        &self,
        cx: &ActionCtx,
        step: &Step,
        rec: StepRecord,
    ) -> Result<Vec<StepRecord>, EngineError> {
        let Some(pending) = rec.download.clone() else {
            return Err(EngineError::Internal(format!(
                "step `{}` has no download pending",
                step.id
            )));
        };
        let (mut r, ev) = match asset::needs_keeping(&pending.output) {
            // Already ours (nothing to download): the result stands as it is.
            None => {
                let out = self.store_value(pending.output.clone()).await?;
                settle::succeed(&rec, out, AttemptMeta::default(), self.now())
            }
            Some(source) => match self.download(&pending.model, source).await {
                Ok(file) => {
                    let value = self.keep(source, &file).await?;
                    let out = self.store_value(value).await?;
                    settle::succeed(&rec, out, AttemptMeta::default(), self.now())
                }
                Err(err) => {
                    tracing::warn!(run_id = %cx.run_id, step = %step.id, host = asset::host_of(source), download = pending.failed + 1, error_class = %err.class, error = %err.message, "the asset's download failed");
                    settle::download_failed(&rec, err, self.now(), &cx.run_id)
                }
            },
        };
        self.write_step(&cx.wf, &cx.run_id, &mut r, &[ev]).await?;
        Ok(vec![r])
    }

    /// One download of an output file by the provider of the model that made it, bounded by
    /// `asset::DOWNLOAD_TIMEOUT_MS`.
    async fn download(&self, model: &str, url: &str) -> Result<asset::Fetched, StepError> {
        let Some(provider) = self.providers.for_model(model) else {
            return Err(StepError::new(
                ErrorClass::Invalid,
                format!("no provider serves `{model}`, whose asset this is"),
            ));
        };
        let bound = asset::DOWNLOAD_TIMEOUT_MS;
        match tokio::time::timeout(
            Duration::from_millis(bound),
            provider.fetch_asset(url, bound),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(StepError::new(
                ErrorClass::Timeout,
                format!(
                    "no answer within the download timeout of {}",
                    switchyard_core::time::Dur(bound)
                ),
            )),
        }
    }

    /// Whether this run keeps its provider exchanges (`tape: true`, or `SWITCHYARD_TAPES=1`).
    fn keeps_tape(&self, wf: &Workflow) -> bool {
        wf.tape || self.config.tapes
    }

    /// Stores a call's tape in the blob store and adds its key to the step's record (the
    /// record is written with the attempt's outcome). Best effort: the call happened and was
    /// paid for whether or not its tape could be kept, so a failed put is logged, not raised.
    async fn keep_tape(
        &self,
        cx: &ActionCtx,
        step: &Step,
        rec: &mut StepRecord,
        tape: Option<Value>,
    ) {
        let Some(tape) = tape else { return };
        let bytes = match serde_json::to_vec(&tape) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(run_id = %cx.run_id, step = %step.id, error = %e, "tape not kept");
                return;
            }
        };
        match self.blobs.put(&bytes, "application/json").await {
            Ok(key) => rec.tapes.push(key),
            Err(e) => {
                tracing::warn!(run_id = %cx.run_id, step = %step.id, error = %e, "tape not kept")
            }
        }
    }

    /// Gives up on a job: tells the provider so it stops (and stops billing). Best effort.
    pub(crate) async fn cancel_job(
        &self,
        cx: &ActionCtx,
        step: &Step,
        ms: &ModelStep,
        rec: &StepRecord,
        job: &JobRef,
    ) {
        if let (Ok(req), Some(provider)) = (
            self.build_request(cx, step, ms, rec, Some(&job.callback_token)),
            self.providers.get(&job.provider),
        ) {
            if let Err(e) = provider.cancel(&req, &job.job_id).await {
                tracing::warn!(run_id = %cx.run_id, step = %step.id, error = %e, "could not cancel the job");
            }
        }
    }

    async fn poll_model(
        &self,
        cx: &ActionCtx,
        step: &Step,
        ms: &ModelStep,
        mut rec: StepRecord,
    ) -> Result<Vec<StepRecord>, EngineError> {
        let now = self.now();
        let Some(job) = rec.job.clone() else {
            return Err(EngineError::Internal(format!(
                "step `{}` waits without a job",
                step.id
            )));
        };
        let keep = self.keeps_tape(&cx.wf);
        let polled: Result<(Result<ModelResponse, StepError>, Option<Value>), StepError> = async {
            let req = self.build_request(cx, step, ms, &rec, Some(&job.callback_token))?;
            let provider = self.providers.get(&job.provider).ok_or_else(|| {
                StepError::new(
                    ErrorClass::Invalid,
                    format!("no provider `{}`", job.provider),
                )
            })?;
            let call = async {
                if keep {
                    provider.poll_kept(&req, &job.job_id).await
                } else {
                    (provider.poll(&req, &job.job_id).await, None)
                }
            };
            match tokio::time::timeout(Duration::from_millis(ms.timeout.ms()), call).await {
                Ok((r, tape)) => Ok((r, tape)),
                Err(_) => Ok((
                    Err(StepError::new(ErrorClass::Timeout, "poll timed out")),
                    None,
                )),
            }
        }
        .await;
        let polled = match polled {
            Ok((r, tape)) => {
                self.keep_tape(cx, step, &mut rec, tape).await;
                r
            }
            Err(e) => Err(e),
        };
        let past_deadline = rec.deadline_at.is_some_and(|d| now >= d);
        let polled_ev = HistoryEvent::step(
            now,
            EventKind::JobPolled,
            &step.id,
            rec.attempt,
            json!({"job_id": job.job_id}),
        );
        let (mut r, ev) = match settle::after_poll(&polled, past_deadline, &ms.wait_timeout) {
            settle::PollNext::Settle(out) => {
                let meta = AttemptMeta {
                    model: Some(out.model.clone()),
                    cost_usd: out.cost_usd,
                    usage: out.usage,
                    provider_request_id: out.provider_request_id.clone(),
                    sources: out.sources.clone(),
                    ..Default::default()
                };
                self.settle_output(&cx.run_id, step, &rec, out, meta, now)
                    .await?
            }
            settle::PollNext::PollAgain => {
                if let Err(err) = &polled {
                    tracing::warn!(run_id = %cx.run_id, step = %step.id, error_class = %err.class, "poll failed; polling again later");
                }
                let mut r = settle::poll_again(&rec, now + self.config.default_poll_ms);
                self.write_step(&cx.wf, &cx.run_id, &mut r, &[polled_ev])
                    .await?;
                return Ok(vec![r]);
            }
            settle::PollNext::CancelAndFail(err) => {
                self.cancel_job(cx, step, ms, &rec, &job).await;
                settle::fail(step, &rec, err, AttemptMeta::default(), now, &cx.run_id)
            }
        };
        self.write_step(&cx.wf, &cx.run_id, &mut r, &[polled_ev, ev])
            .await?;
        Ok(vec![r])
    }
}

/// A callback may arrive before the submit call returns: the claim already carries the
/// attempt's token, so the webhook can match it. Returns the claim and its `StepStarted` event.
fn with_job_started(
    mut claimed: StepRecord,
    step_id: &str,
    token: Option<&str>,
    provider: &str,
    req: &ModelRequest,
    now: u64,
) -> (StepRecord, HistoryEvent) {
    if let Some(t) = token {
        claimed.job = Some(JobRef {
            provider: provider.to_string(),
            model: req.model.clone(),
            job_id: String::new(),
            callback_token: t.to_string(),
        });
    }
    let started = HistoryEvent::step(
        now,
        EventKind::StepStarted,
        step_id,
        claimed.attempt,
        json!({"model": req.model, "prompt_version": req.prompt_version}),
    );
    (claimed, started)
}

/// Calls the provider, bounded by the step's timeout so a hung call cannot outlive its lease;
/// returns the result and how long it took.
/// With `keep`, also the call's exchanges as a tape (a call cut off by the timeout keeps none).
async fn invoke_within(
    provider: &dyn Provider,
    req: &ModelRequest,
    ms: &ModelStep,
    keep: bool,
) -> ((Result<ModelResponse, StepError>, u64), Option<Value>) {
    let t0 = std::time::Instant::now();
    let call = async {
        if keep {
            provider.invoke_kept(req).await
        } else {
            (provider.invoke(req).await, None)
        }
    };
    let (result, tape) =
        match tokio::time::timeout(Duration::from_millis(ms.timeout.ms()), call).await {
            Ok(r) => r,
            Err(_) => (
                Err(StepError::new(
                    ErrorClass::Timeout,
                    format!("no answer within the step timeout of {}", ms.timeout),
                )),
                None,
            ),
        };
    ((result, t0.elapsed().as_millis() as u64), tape)
}

/// Why a pure step did not produce its records.
enum PureFail {
    /// The step itself failed (bad reference, no route matched, value fails its schema).
    Step(StepError),
    /// Storing its value failed: not the step's fault.
    Store(StoreError),
}

fn store_err(e: StoreError) -> PureFail {
    PureFail::Store(e)
}

/// A pure step's own mistake (bad reference, no match): the step fails, the engine does not.
fn invalid(e: String) -> PureFail {
    PureFail::Step(StepError::new(ErrorClass::Invalid, e))
}

/// The first case whose condition holds, else the default: routes are tried in order.
fn choose_route(route: &RouteStep, scope: &Value) -> Result<String, PureFail> {
    let mut chosen = None;
    for case in &route.routes {
        let hit = match &case.when {
            None => true,
            Some(c) => c.holds(scope).map_err(invalid)?,
        };
        if hit {
            chosen = Some(case.to.clone());
            break;
        }
    }
    chosen
        .or_else(|| route.default.clone())
        .ok_or_else(|| invalid("no route matched and the route has no `default`".into()))
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

/// Tries of one step write through storage faults (`Engine::put_records`).
const WRITE_TRIES: u32 = 3;

/// Records to write and the events that go with them, in order.
type Writes = (Vec<StepRecord>, Vec<HistoryEvent>);

/// Most actions settle one record with one event; this wraps that pair as [`Writes`].
fn one((r, ev): (StepRecord, HistoryEvent)) -> Writes {
    (vec![r], vec![ev])
}

/// One event per record, in order; any beyond that (e.g. lease expiry + failure) ride with the
/// last record's write, so every write carries its own history.
fn events_for(i: usize, n: usize, events: &[HistoryEvent]) -> &[HistoryEvent] {
    match (i + 1 == n, events.get(i)) {
        (true, Some(_)) => &events[i..],
        (false, Some(_)) => &events[i..=i],
        (_, None) => &[],
    }
}

/// An attempt whose worker vanished: the lease expiry is recorded before the failure it causes.
fn expire(step: &Step, rec: &StepRecord, now: u64, run_id: &str) -> Writes {
    let (r, ev) = settle::lost(step, rec, now, run_id);
    let lost = HistoryEvent::step(
        now,
        EventKind::StepLeaseExpired,
        &step.id,
        rec.attempt,
        Value::Null,
    );
    (vec![r], vec![lost, ev])
}

/// Nobody decided before the deadline: the step's `on_timeout` says which way it goes.
fn approval_timeout(
    step: &Step,
    a: &ApprovalStep,
    rec: &StepRecord,
    now: u64,
    run_id: &str,
) -> (StepRecord, HistoryEvent) {
    match a.on_timeout {
        OnTimeout::Approve => settle::decide(
            rec,
            true,
            Some("approved automatically at the deadline".into()),
            now,
        ),
        OnTimeout::Reject => {
            let err = StepError::new(
                ErrorClass::Timeout,
                "nobody decided the approval before its deadline",
            );
            settle::fail(step, rec, err, AttemptMeta::default(), now, run_id)
        }
    }
}

/// Opens an approval gate: a new attempt that waits until its deadline for a decision.
fn open_approval(
    a: &ApprovalStep,
    rec: &StepRecord,
    scope: &Value,
    now: u64,
) -> (StepRecord, HistoryEvent) {
    let mut claimed = rec.clone();
    claimed.attempt += 1;
    let (mut r, mut ev) =
        settle::wait_for_approval(&claimed, now.saturating_add(a.deadline.ms()), now);
    r.started_at = Some(now);
    if let Some(m) = &a.message {
        // The gate opens even if its message cannot be rendered; the reason is kept.
        match refs::render_template(m, scope) {
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

/// The part of a model answer an output schema applies to: the parsed JSON of a chat answer,
/// otherwise the normalized output itself.
pub(crate) fn checked_part<'a>(ms: &ModelStep, out: &'a ModelOutput) -> Option<&'a Value> {
    match out.output.get("json") {
        // A chat model's structured answer (generation, extraction…) is in `json`.
        Some(j) => Some(j),
        None if ms.role == Role::Generation => None,
        // Built-in extractors and classifiers answer with the normalized object itself.
        None => Some(&out.output),
    }
}

fn check_output(ms: &ModelStep, out: &ModelOutput) -> Result<(), StepError> {
    let Some(s) = &ms.output_schema else {
        return Ok(());
    };
    let Some(part) = checked_part(ms, out) else {
        return Err(StepError::new(
            ErrorClass::Malformed,
            "the model returned no JSON to check against output_schema",
        )
        .with_details(vec![
            "answer with a single JSON object that matches the schema".into(),
        ]));
    };
    schema::validate(s, part).map_err(|errors| {
        StepError::new(
            ErrorClass::Malformed,
            format!("output fails output_schema ({} problem(s))", errors.len()),
        )
        .with_details(errors)
    })
}
