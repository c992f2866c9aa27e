//! What an answer makes of its attempt: a judge's verdict, a cascade tier passed over, an
//! output checked against its schema, an asset's file to keep or download, a job to wait
//! for, or a failure to retry, fall back from or fail with. Answers arrive from a call
//! (`Answered`), a poll (`Polled`) or a provider's callback (`Callback`); all three settle
//! through [`output`].

use super::attempt::AttemptMeta;
use super::judge::{self, Verdict};
use super::{build_request, cascade, pure, settle, Ctx, Next, Note, Settling, Transition, Writes};
use crate::asset;
use crate::model::{ModelOutput, ModelRequest, ModelResponse, Role};
use crate::refs;
use crate::schema;
use crate::state::{EventKind, HistoryEvent, JobRef, StepRecord, ValueRef};
use crate::workflow::{ModelStep, Step, StepKind};
use crate::{ErrorClass, StepError};
use serde_json::{json, Value};

/// The call an answer is for.
pub(super) struct Call {
    pub claimed: StepRecord,
    pub request: ModelRequest,
    pub token: Option<String>,
    pub provider: String,
    pub latency_ms: u64,
}

/// `Answered`: the claimed call's result.
pub(super) fn answered(
    cx: &Ctx,
    step: &Step,
    call: Call,
    result: Result<ModelResponse, StepError>,
) -> Result<Transition, String> {
    let Some(ms) = step.call() else {
        return Err("not a model call".into());
    };
    let req = &call.request;
    // Who answered (or, with no answer, who was asked), at the call's latency.
    let meta = |out: Option<&ModelOutput>| AttemptMeta {
        prompt_version: req.prompt_version.clone(),
        latency_ms: call.latency_ms,
        ..out.map_or_else(
            || AttemptMeta {
                model: Some(req.model.clone()),
                ..AttemptMeta::default()
            },
            answered_by,
        )
    };
    let claimed = &call.claimed;
    Ok(match result {
        Ok(ModelResponse::Completed(out)) => {
            if let StepKind::Validate(v) = &step.kind {
                // A judge's answer: a verdict once it has the verdict's shape.
                return Ok(
                    match check_output(ms, &out).and_then(|()| judge::read(&out.output)) {
                        Ok(verdict) => verdict_of(cx, step, v, claimed, verdict, meta(Some(&out)))?,
                        Err(err) => {
                            let class = err.class;
                            fail(cx, step, claimed, err, meta(Some(&out)))
                                .noted(Note::NotAVerdict { class })
                        }
                    },
                );
            }
            // A model step's answer. A cascade tier's answer may be passed over for the next
            // tier's before it settles.
            match escalation(cx, ms, claimed, &out, &meta(Some(&out))) {
                Ok(Some(reason)) => {
                    if let Some(up) =
                        cascade::escalate(ms, claimed, &reason, meta(Some(&out)), cx.now)
                    {
                        return Ok(Transition::commit(Writes::one(up)).noted(Note::Escalated {
                            from: req.model.clone(),
                            reason,
                        }));
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    return Ok(Transition::commit(Writes::one(settle::fail_outright(
                        claimed,
                        err,
                        meta(Some(&out)),
                        cx.now,
                    ))))
                }
            }
            let baseline = baseline(cx, ms, &out);
            output(cx, step, claimed, &out, meta(Some(&out)), baseline, vec![])
        }
        Ok(ModelResponse::Pending {
            job_id,
            poll_after_ms,
        }) => {
            let job = JobRef {
                provider: call.provider.clone(),
                model: req.model.clone(),
                job_id,
                callback_token: call.token.clone().unwrap_or_default(),
            };
            let poll_at = poll_after_ms.map(|p| cx.now.saturating_add(p));
            Transition::commit(Writes::one(settle::wait_for_job(
                claimed,
                job,
                poll_at,
                cx.now.saturating_add(ms.wait_timeout.ms()),
                meta(None),
                cx.now,
            )))
        }
        Err(err) => {
            let note = Note::AttemptFailed {
                attempt: claimed.attempt,
                model: req.model.clone(),
                class: err.class,
            };
            fail(cx, step, claimed, err, meta(None)).noted(note)
        }
    })
}

/// What an answer says about its attempt: who answered, what it cost, its sources.
fn answered_by(out: &ModelOutput) -> AttemptMeta {
    AttemptMeta {
        model: Some(out.model.clone()),
        cost_usd: out.cost_usd,
        usage: out.usage,
        provider_request_id: out.provider_request_id.clone(),
        sources: out.sources.clone(),
        ..AttemptMeta::default()
    }
}

/// The attempt failed: retry, fall back or fail, per the step's policy.
fn fail(cx: &Ctx, step: &Step, rec: &StepRecord, err: StepError, meta: AttemptMeta) -> Transition {
    Transition::commit(Writes::one(settle::fail(
        step, rec, err, meta, cx.now, cx.run_id,
    )))
}

/// A judge's verdict settles its validate step: pass → the value is the step's output;
/// fail → a repair of the step that produced it, or the step fails `rejected`.
fn verdict_of(
    cx: &Ctx,
    step: &Step,
    v: &crate::workflow::ValidateStep,
    claimed: &StepRecord,
    verdict: Verdict,
    meta: AttemptMeta,
) -> Result<Transition, String> {
    let now = cx.now;
    let min_score = v.judge.as_ref().and_then(|j| j.min_score);
    let problems = judge::problems(&verdict, min_score);
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
    let note = Note::Judged {
        verdict: verdict.clone(),
        pass: problems.is_ok(),
    };
    let mut rec = settle::with_meta(claimed, meta);
    rec.judge_score = Some(verdict.score);
    let writes = match problems {
        Ok(()) => {
            let value =
                refs::resolve(&v.value, cx.scope).map_err(|e| format!("the judged value: {e}"))?;
            let (r, ev) = settle::succeed(
                &rec,
                ValueRef::Inline { value },
                AttemptMeta::default(),
                now,
            );
            Writes {
                records: vec![r],
                events: vec![judged, ev],
            }
        }
        Err(lines) => match pure::repair_or(cx, step, v, &rec, lines, "the judge failed the value")
        {
            Ok(mut w) => {
                w.events.insert(0, judged);
                w
            }
            Err(err) => {
                let (r, ev) = settle::fail_outright(&rec, err, AttemptMeta::default(), now);
                Writes {
                    records: vec![r],
                    events: vec![judged, ev],
                }
            }
        },
    };
    Ok(Transition::commit(writes).noted(note))
}

/// A cascade tier's answer is checked against its `escalate_if` before it settles: the
/// reason to pass it over, if one holds. A condition that cannot be evaluated is the
/// workflow's error (`invalid`).
fn escalation(
    cx: &Ctx,
    ms: &ModelStep,
    claimed: &StepRecord,
    out: &ModelOutput,
    meta: &AttemptMeta,
) -> Result<Option<String>, StepError> {
    if ms.cascade.is_none() {
        return Ok(None);
    }
    let schema_valid = check_output(ms, out).is_ok();
    let scope = cascade::escalation_scope(cx.scope, &out.output, meta, schema_valid);
    cascade::escalation(ms, claimed.model_index, &scope)
        .map_err(|e| StepError::new(ErrorClass::Invalid, format!("`escalate_if`: {e}")))
}

/// What the cascade's top model would have charged for the answering call's usage.
fn baseline(cx: &Ctx, ms: &ModelStep, out: &ModelOutput) -> Option<f64> {
    let top = cascade::top_model(ms)?;
    cx.prices.price_usd(top, out.usage?)
}

/// Checks a model's answer against the step's output schema and settles the attempt: its
/// output, an asset's `data:` file to keep first, or a file at a URL to download. `before`
/// are the events that come first in the write (a poll's, a callback's).
fn output(
    cx: &Ctx,
    step: &Step,
    claimed: &StepRecord,
    out: &ModelOutput,
    meta: AttemptMeta,
    baseline: Option<f64>,
    before: Vec<HistoryEvent>,
) -> Transition {
    let now = cx.now;
    let with_before = |w: Writes| Writes {
        events: [before.clone(), w.events].concat(),
        records: w.records,
    };
    let checked = match &step.kind {
        StepKind::Model(ms) => check_output(ms, out),
        _ => Ok(()),
    };
    if let Err(err) = checked {
        let class = err.class;
        let w = Writes::one(settle::fail(step, claimed, err, meta, now, cx.run_id));
        return Transition::commit(with_before(w)).noted(Note::OutputRejected { class });
    }
    if let StepKind::Model(ms) = &step.kind {
        if ms.role == Role::Asset {
            match asset::needs_keeping(&out.output) {
                None => {}
                // Inline data is part of the answer: a bad one is a malformed answer.
                Some(source) if asset::is_data_url(source) => {
                    return match asset::decode_data_url(source) {
                        Ok(file) => Transition::to(Next::Keep {
                            settling: Settling {
                                claimed: claimed.clone(),
                                meta,
                                baseline,
                                before,
                            },
                            source: source.to_string(),
                            file,
                        }),
                        Err(e) => {
                            let err = StepError::new(ErrorClass::Malformed, e);
                            let class = err.class;
                            let w =
                                Writes::one(settle::fail(step, claimed, err, meta, now, cx.run_id));
                            Transition::commit(with_before(w))
                                .noted(Note::DataUrlUnreadable { class })
                        }
                    };
                }
                // A file at a URL: the job is done and paid for. Its result is recorded and
                // the download is an action of its own (`Due(Download)`), retried on its own:
                // a failed download never runs the job again.
                Some(_) => {
                    let (mut r, ev) = settle::await_download(
                        step,
                        claimed,
                        out.output.clone(),
                        &out.model,
                        meta,
                        now,
                    );
                    r.baseline_usd = baseline;
                    return Transition::commit(with_before(Writes::one((r, ev))));
                }
            }
        }
    }
    let (mut r, ev) = settle::succeed(
        claimed,
        ValueRef::Inline {
            value: out.output.clone(),
        },
        meta,
        now,
    );
    r.baseline_usd = baseline;
    Transition::commit(with_before(Writes::one((r, ev))))
}

/// `Kept`: an answer's `data:` file is ours now; the answer settles with our copy.
pub(super) fn kept(cx: &Ctx, settling: Settling, value: Value) -> Transition {
    let (mut r, ev) = settle::succeed(
        &settling.claimed,
        ValueRef::Inline { value },
        settling.meta,
        cx.now,
    );
    r.baseline_usd = settling.baseline;
    Transition::commit(Writes {
        records: vec![r],
        events: [settling.before, vec![ev]].concat(),
    })
}

/// `Due(Poll)`: the waiting job is due for a poll (or its wait deadline has passed).
pub(super) fn poll(
    cx: &Ctx,
    step: &Step,
    ms: &ModelStep,
    rec: StepRecord,
) -> Result<Transition, String> {
    let Some(job) = rec.job.clone() else {
        return Err("the step waits without a job".into());
    };
    match build_request(cx, step, ms, &rec, Some(&job.callback_token)) {
        Ok(request) => Ok(Transition::to(Next::Poll { rec, job, request })),
        // No poll could be made: settle as a poll that failed for that reason.
        Err(err) => polled(cx, step, rec, Err(err)),
    }
}

/// `Polled`: the job ended (its output settles the attempt), is still running or the poll
/// failed for a passing reason (poll again, within the wait deadline), or it is given up
/// (cancelled at the provider, and the attempt fails per the step's policy).
pub(super) fn polled(
    cx: &Ctx,
    step: &Step,
    rec: StepRecord,
    result: Result<ModelResponse, StepError>,
) -> Result<Transition, String> {
    let (Some(ms), Some(job)) = (step.call(), rec.job.clone()) else {
        return Err("the step waits without a job".into());
    };
    let now = cx.now;
    let past_deadline = rec.deadline_at.is_some_and(|d| now >= d);
    let polled_ev = HistoryEvent::step(
        now,
        EventKind::JobPolled,
        &step.id,
        rec.attempt,
        json!({"job_id": job.job_id}),
    );
    Ok(
        match settle::after_poll(&result, past_deadline, &ms.wait_timeout) {
            settle::PollNext::Settle(out) => {
                output(cx, step, &rec, out, answered_by(out), None, vec![polled_ev])
            }
            settle::PollNext::PollAgain => {
                let r = settle::poll_again(&rec, now + cx.limits.default_poll_ms);
                let t = Transition::commit(Writes {
                    records: vec![r],
                    events: vec![polled_ev],
                });
                match &result {
                    Err(err) => t.noted(Note::PollFailed { class: err.class }),
                    Ok(_) => t,
                }
            }
            settle::PollNext::CancelAndFail(err) => {
                let request = build_request(cx, step, ms, &rec, Some(&job.callback_token)).ok();
                let (r, ev) = settle::fail(step, &rec, err, AttemptMeta::default(), now, cx.run_id);
                Transition::to(Next::CancelThenCommit {
                    job,
                    request,
                    writes: Writes {
                        records: vec![r],
                        events: vec![polled_ev, ev],
                    },
                })
            }
        },
    )
}

/// `Callback`: the provider's answer for the waiting (or still submitting) attempt. Its
/// latency runs from the attempt's start: there is no call to time.
pub(super) fn callback(
    cx: &Ctx,
    step: &Step,
    rec: StepRecord,
    webhook_id: &str,
    provider: &str,
    result: Result<ModelResponse, StepError>,
) -> Result<Transition, String> {
    let now = cx.now;
    let received = HistoryEvent::step(
        now,
        EventKind::WebhookReceived,
        &step.id,
        rec.attempt,
        json!({"webhook_id": webhook_id, "provider": provider}),
    );
    Ok(match result {
        Ok(ModelResponse::Pending { .. }) => {
            return Err("a progress callback settles nothing".into())
        }
        Ok(ModelResponse::Completed(out)) => {
            let meta = AttemptMeta {
                latency_ms: now.saturating_sub(rec.started_at.unwrap_or(now)),
                ..answered_by(&out)
            };
            output(cx, step, &rec, &out, meta, None, vec![received])
        }
        Err(err) => {
            let (r, ev) = settle::fail(step, &rec, err, AttemptMeta::default(), now, cx.run_id);
            Transition::commit(Writes {
                records: vec![r],
                events: vec![received, ev],
            })
        }
    })
}

/// `Due(Download)`: a finished asset job's file is due for a download. No claim is written
/// first: a download costs nothing and its copy is content-addressed, the run's lease keeps
/// other workers off the step meanwhile, and a download a crash cut short is made again.
pub(super) fn download(cx: &Ctx, step: &Step, rec: StepRecord) -> Result<Transition, String> {
    let Some(pending) = rec.download.clone() else {
        return Err(format!("step `{}` has no download pending", step.id));
    };
    Ok(match asset::needs_keeping(&pending.output) {
        // Already ours (nothing to download): the result stands as it is.
        None => Transition::commit(Writes::one(settle::succeed(
            &rec,
            ValueRef::Inline {
                value: pending.output,
            },
            AttemptMeta::default(),
            cx.now,
        ))),
        Some(source) => {
            let url = source.to_string();
            Transition::to(Next::Download {
                rec,
                model: pending.model,
                url,
            })
        }
    })
}

/// `Downloaded`: the file is kept (the step succeeds with our copy), or the download failed
/// (downloaded again after a backoff, or the step fails naming the download and its host;
/// the job is never submitted again).
pub(super) fn downloaded(
    cx: &Ctx,
    _step: &Step,
    rec: StepRecord,
    result: Result<Value, StepError>,
) -> Transition {
    match result {
        Ok(value) => Transition::commit(Writes::one(settle::succeed(
            &rec,
            ValueRef::Inline { value },
            AttemptMeta::default(),
            cx.now,
        ))),
        Err(err) => {
            let (host, download) = rec.download.as_ref().map_or((String::new(), 1), |d| {
                let url = asset::needs_keeping(&d.output).unwrap_or_default();
                (asset::host_of(url).to_string(), d.failed + 1)
            });
            let note = Note::DownloadFailed {
                host,
                download,
                class: err.class,
                message: err.message.clone(),
            };
            Transition::commit(Writes::one(settle::download_failed(
                &rec, err, cx.now, cx.run_id,
            )))
            .noted(note)
        }
    }
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
