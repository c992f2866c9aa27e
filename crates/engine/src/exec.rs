//! Executing one planner action. Each function reads the step definition and the current
//! record, does the work (a provider call, a schema check, a route decision…), asks
//! `switchyard_core::settle` for the next record, and writes it with a condition on the
//! record's version. Only model calls are claimed before they start ("state before side
//! effects"); pure steps have no side effect to protect and write their result once.

use crate::{Engine, EngineError};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::model::{Callback, ModelOutput, ModelRequest, ModelResponse, Provider, Role};
use switchyard_core::planner::Action;
use switchyard_core::refs;
use switchyard_core::settle::{self, AttemptMeta};
use switchyard_core::state::{EventKind, HistoryEvent, JobRef, StepRecord, StepStatus};
use switchyard_core::workflow::{ModelStep, OnTimeout, Step, StepKind, Workflow};
use switchyard_core::{schema, ErrorClass, StepError, StoreError};

/// What an action needs to know about the run, captured when it starts.
#[derive(Clone)]
pub struct ActionCtx {
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

pub use switchyard_core::budget::Ledger;

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
    pub async fn scope(
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
    pub async fn update_scope(&self, scope: &mut Value, r: &StepRecord) -> Result<(), StoreError> {
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
        run_id: &str,
        rec: &mut StepRecord,
        events: &[HistoryEvent],
    ) -> Result<(), EngineError> {
        rec.version = self.store.put_step(run_id, rec, events).await?;
        Ok(())
    }

    /// Executes one action; returns the records it wrote (the caller updates its snapshot).
    pub async fn execute(
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
        let one = |r: StepRecord, ev: HistoryEvent| (vec![r], vec![ev]);
        let (records, events) = match (action, &step.kind) {
            (Action::Skip { reason, .. }, _) => {
                let (r, ev) = settle::skip(&step.id, &rec, reason, now);
                one(r, ev)
            }
            (Action::Start { .. }, StepKind::Model(ms)) => {
                return self.start_model(cx, step, ms, rec).await
            }
            (Action::Poll { .. }, StepKind::Model(ms)) => {
                return self.poll_model(cx, step, ms, rec).await
            }
            (Action::Expire { .. }, _) => {
                let err = StepError::new(
                    ErrorClass::Timeout,
                    "attempt lost: its worker stopped before checkpointing (lease expired)",
                );
                let (r, ev) =
                    settle::fail(step, &rec, err, AttemptMeta::default(), now, &cx.run_id);
                let lost = HistoryEvent::step(
                    now,
                    EventKind::StepLeaseExpired,
                    &step.id,
                    rec.attempt,
                    Value::Null,
                );
                (vec![r], vec![lost, ev])
            }
            (Action::ApprovalTimeout { .. }, StepKind::Approval(a)) => match a.on_timeout {
                OnTimeout::Approve => {
                    let (r, ev) = settle::decide(
                        &rec,
                        true,
                        Some("approved automatically at the deadline".into()),
                        now,
                    );
                    one(r, ev)
                }
                OnTimeout::Reject => {
                    let err = StepError::new(
                        ErrorClass::Timeout,
                        "nobody decided the approval before its deadline",
                    );
                    let (r, ev) =
                        settle::fail(step, &rec, err, AttemptMeta::default(), now, &cx.run_id);
                    one(r, ev)
                }
            },
            (Action::Start { .. }, StepKind::Approval(a)) => {
                let mut claimed = rec.clone();
                claimed.attempt += 1;
                let (mut r, mut ev) =
                    settle::wait_for_approval(&claimed, now.saturating_add(a.deadline.ms()), now);
                r.started_at = Some(now);
                if let Some(m) = &a.message {
                    // The gate opens even if its message cannot be rendered; the reason is kept.
                    match refs::render_template(m, &cx.scope) {
                        Ok(text) => ev.detail["message"] = json!(text),
                        Err(e) => ev.detail["message_error"] = json!(e),
                    }
                }
                one(r, ev)
            }
            (Action::Start { .. }, kind) => {
                let mut started = rec.clone();
                started.attempt += 1;
                started.started_at.get_or_insert(now);
                match self.pure_step(cx, step, kind, &started, now).await {
                    Ok(done) => done,
                    // A storage failure is the engine's, not the step's: the wake-up is
                    // retried, instead of failing a step that has no retry policy.
                    Err(PureFail::Store(e)) => return Err(e.into()),
                    Err(PureFail::Step(err)) => {
                        let (r, ev) = settle::fail(
                            step,
                            &started,
                            err,
                            AttemptMeta::default(),
                            now,
                            &cx.run_id,
                        );
                        one(r, ev)
                    }
                }
            }
            (other, _) => {
                return Err(EngineError::Internal(format!(
                    "action {other:?} does not apply to step `{}`",
                    step.id
                )))
            }
        };
        // One event per record, in order; any beyond that (e.g. lease expiry + failure) ride
        // with the last record's write, so every write carries its own history.
        let mut records = records;
        let n = records.len();
        for (i, r) in records.iter_mut().enumerate() {
            let evs: &[HistoryEvent] = match (i + 1 == n, events.get(i)) {
                (true, Some(_)) => &events[i..],
                (false, Some(_)) => &events[i..=i],
                (_, None) => &[],
            };
            self.write_step(&cx.run_id, r, evs).await?;
        }
        Ok(records)
    }

    /// Route, transform, validate and parallel merge: decided from the scope alone.
    async fn pure_step(
        &self,
        cx: &ActionCtx,
        step: &Step,
        kind: &StepKind,
        rec: &StepRecord,
        now: u64,
    ) -> Result<(Vec<StepRecord>, Vec<HistoryEvent>), PureFail> {
        let invalid = |e: String| PureFail::Step(StepError::new(ErrorClass::Invalid, e));
        match kind {
            StepKind::Route(route) => {
                let mut chosen = None;
                for case in &route.routes {
                    let hit = match &case.when {
                        None => true,
                        Some(c) => c.holds(&cx.scope).map_err(invalid)?,
                    };
                    if hit {
                        chosen = Some(case.to.clone());
                        break;
                    }
                }
                let chosen = chosen.or_else(|| route.default.clone()).ok_or_else(|| {
                    invalid("no route matched and the route has no `default`".into())
                })?;
                let (r, ev) = settle::routed(rec, &chosen, now);
                Ok((vec![r], vec![ev]))
            }
            StepKind::Transform { value } => {
                let v = refs::resolve(value, &cx.scope).map_err(invalid)?;
                let out = self.store_value(v).await.map_err(store_err)?;
                let (r, ev) = settle::succeed(rec, out, AttemptMeta::default(), now);
                Ok((vec![r], vec![ev]))
            }
            StepKind::Parallel { branches } => {
                let mut merged = Map::new();
                let mut errors = Map::new();
                for b in branches {
                    let short = b.rsplit('.').next().unwrap_or(b).to_string();
                    let s = &cx.scope["steps"][b];
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
                let out = self
                    .store_value(Value::Object(merged))
                    .await
                    .map_err(store_err)?;
                let (r, ev) = settle::succeed(rec, out, AttemptMeta::default(), now);
                Ok((vec![r], vec![ev]))
            }
            StepKind::Validate(v) => {
                let value = refs::resolve(&v.value, &cx.scope).map_err(invalid)?;
                match schema::validate(&v.schema, &value) {
                    Ok(()) => {
                        let out = self.store_value(value).await.map_err(store_err)?;
                        let (r, ev) = settle::succeed(rec, out, AttemptMeta::default(), now);
                        Ok((vec![r], vec![ev]))
                    }
                    Err(errors) => {
                        let target_rec = v
                            .repair
                            .as_ref()
                            .and_then(|rep| self.cached_record(cx, &rep.step));
                        match target_rec
                            .and_then(|t| settle::request_repair(step, rec, &t, &errors, now))
                        {
                            // The target is reset first: a crash between the two writes then repeats the
                            // repair rather than spending it without running it.
                            Some((val, target, ev)) => Ok((vec![target, val], vec![ev])),
                            None => Err(PureFail::Step(
                                StepError::new(
                                    ErrorClass::Malformed,
                                    format!("value fails its schema ({} problem(s))", errors.len()),
                                )
                                .with_details(errors),
                            )),
                        }
                    }
                }
            }
            StepKind::Model(_) | StepKind::Approval(_) => {
                Err(invalid("internal: not a pure step".into()))
            }
        }
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
        let params = refs::resolve(&ms.params, &cx.scope).map_err(invalid)?;
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
        // The request is built for the attempt about to be claimed.
        let mut next = rec.clone();
        next.attempt += 1;
        next.model_attempt += 1;
        let prepared = self.prepare_call(cx, step, ms, &next, token.as_deref());
        let claimed = settle::claim(
            step,
            &rec,
            &cx.owner,
            now,
            ms.timeout.ms() + self.config.step_lease_margin_ms,
        );
        let (req, provider) = match prepared {
            Ok(x) => x,
            Err(err) => {
                // Decided before any side effect: no claim needed, one write, and no attempt
                // counted (the model was never called).
                let mut base = rec.clone();
                base.model = settle::current_model(step, &rec);
                let (mut r, ev) =
                    settle::fail(step, &base, err, AttemptMeta::default(), now, &cx.run_id);
                self.write_step(&cx.run_id, &mut r, &[ev]).await?;
                return Ok(vec![r]);
            }
        };
        // A callback may arrive before the submit call returns: the claim already carries
        // the attempt's token, so the webhook can match it.
        let mut claimed = claimed;
        if let Some(t) = &token {
            claimed.job = Some(JobRef {
                provider: provider.name().to_string(),
                model: req.model.clone(),
                job_id: String::new(),
                callback_token: t.clone(),
            });
        }
        let started = HistoryEvent::step(
            now,
            EventKind::StepStarted,
            &step.id,
            claimed.attempt,
            json!({"model": req.model, "prompt_version": req.prompt_version}),
        );
        self.write_step(&cx.run_id, &mut claimed, &[started])
            .await?;
        tracing::info!(run_id = %cx.run_id, step = %step.id, attempt = claimed.attempt, model = %req.model, prompt_version = ?req.prompt_version, "step started");

        let t0 = std::time::Instant::now();
        let result = match tokio::time::timeout(
            Duration::from_millis(ms.timeout.ms()),
            provider.invoke(&req),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(StepError::new(
                ErrorClass::Timeout,
                format!("no answer within the step timeout of {}", ms.timeout),
            )),
        };
        let latency_ms = t0.elapsed().as_millis() as u64;

        let answer = Answer {
            req: &req,
            provider: provider.name(),
            token,
            latency_ms,
        };
        let (mut r, ev) = self
            .settle_answer(cx, step, ms, &claimed, answer, result)
            .await?;
        self.write_step(&cx.run_id, &mut r, &[ev]).await?;
        Ok(vec![r])
    }

    /// The request for the attempt about to be claimed, the provider that serves it, and its
    /// budget reservation: everything decided before any side effect.
    fn prepare_call(
        &self,
        cx: &ActionCtx,
        step: &Step,
        ms: &ModelStep,
        next: &StepRecord,
        token: Option<&str>,
    ) -> Result<(ModelRequest, Arc<dyn Provider>), StepError> {
        let req = self.build_request(cx, step, ms, next, token)?;
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
    ) -> Result<(StepRecord, HistoryEvent), EngineError> {
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
        Ok(match result {
            Ok(ModelResponse::Completed(out)) => {
                self.settle_output(&cx.run_id, step, claimed, &out, meta(Some(&out)), done)
                    .await?
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
        })
    }

    /// Checks a model's answer against the step's output schema and settles the attempt.
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
        let value = self.store_value(out.output.clone()).await?;
        Ok(settle::succeed(claimed, value, meta, now))
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
        rec: StepRecord,
    ) -> Result<Vec<StepRecord>, EngineError> {
        let now = self.now();
        let Some(job) = rec.job.clone() else {
            return Err(EngineError::Internal(format!(
                "step `{}` waits without a job",
                step.id
            )));
        };
        let polled = async {
            let req = self.build_request(cx, step, ms, &rec, Some(&job.callback_token))?;
            let provider = self.providers.get(&job.provider).ok_or_else(|| {
                StepError::new(
                    ErrorClass::Invalid,
                    format!("no provider `{}`", job.provider),
                )
            })?;
            match tokio::time::timeout(
                Duration::from_millis(ms.timeout.ms()),
                provider.poll(&req, &job.job_id),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(StepError::new(ErrorClass::Timeout, "poll timed out")),
            }
        }
        .await;
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
                self.write_step(&cx.run_id, &mut r, &[polled_ev]).await?;
                return Ok(vec![r]);
            }
            settle::PollNext::CancelAndFail(err) => {
                self.cancel_job(cx, step, ms, &rec, &job).await;
                settle::fail(step, &rec, err, AttemptMeta::default(), now, &cx.run_id)
            }
        };
        self.write_step(&cx.run_id, &mut r, &[polled_ev, ev])
            .await?;
        Ok(vec![r])
    }
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

/// The part of a model answer an output schema applies to: the parsed JSON of a chat answer,
/// otherwise the normalized output itself.
pub fn checked_part<'a>(ms: &ModelStep, out: &'a ModelOutput) -> Option<&'a Value> {
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
