//! The step machine's record transitions: how one attempt's outcome changes a step record.
//!
//! `machine::handle` decides which transition an event makes and calls one of these for the
//! record (and history event) to commit. Retry, backoff, fallback, waits, downloads, decisions
//! and repairs are all computed here, without I/O, so every transition is table-testable.

use crate::error::{ErrorClass, StepError};
use crate::machine::attempt::apply_meta;
pub use crate::machine::attempt::AttemptMeta;
use crate::machine::retry::backoff_ms;
use crate::model::split_model;
use crate::state::{
    ApprovalDecision, AssetDownload, EventKind, HistoryEvent, JobRef, StepRecord, StepStatus,
    ValueRef,
};
use crate::time::Millis;
use crate::workflow::{Step, StepKind};
use serde_json::json;

/// The next state of a record. It keeps the version it was read at: the store checks that
/// version and returns the new one (it owns the arithmetic).
fn next(rec: &StepRecord) -> StepRecord {
    rec.clone()
}

/// The model a step uses at its current place in the fallback chain.
pub fn current_model(step: &Step, rec: &StepRecord) -> Option<String> {
    step.call()
        .and_then(|m| m.models.get(rec.model_index).cloned())
}

/// Claims the next attempt: the record written *before* any side effect.
pub fn claim(step: &Step, rec: &StepRecord, owner: &str, now: Millis, lease_ms: u64) -> StepRecord {
    let mut r = next(rec);
    r.status = StepStatus::Running;
    r.attempt += 1;
    r.model_attempt += 1;
    r.lease_owner = Some(owner.to_string());
    r.lease_until = Some(now + lease_ms);
    r.next_at = None;
    r.error = None;
    if r.started_at.is_none() {
        r.started_at = Some(now);
        if let Some(m) = step.call() {
            r.deadline_at = m.max_duration.map(|d| now.saturating_add(d.ms()));
        }
    }
    if let Some(m) = current_model(step, &r) {
        r.provider = Some(split_model(&m).0.to_string());
        r.model = Some(m);
    }
    r
}

fn finish(rec: &StepRecord, status: StepStatus, now: Millis) -> StepRecord {
    let mut r = next(rec);
    r.status = status;
    r.finished_at = Some(now);
    r.lease_until = None;
    r.lease_owner = None;
    r.next_at = None;
    r
}

/// The attempt produced its output.
pub fn succeed(
    rec: &StepRecord,
    output: ValueRef,
    meta: AttemptMeta,
    now: Millis,
) -> (StepRecord, HistoryEvent) {
    let mut r = finish(rec, StepStatus::Succeeded, now);
    apply_meta(&mut r, meta);
    r.output = Some(output);
    r.error = None;
    r.feedback.clear();
    r.job = None;
    r.download = None;
    let mut detail = json!({
        "model": r.model, "latency_ms": r.latency_ms, "cost_usd": r.cost_usd, "fallback_used": r.fallback_used,
    });
    // The step's tokens over all its attempts, like its latency and cost; only on steps whose
    // calls reported any.
    if let (Some(u), Some(obj)) = (r.usage, detail.as_object_mut()) {
        obj.insert("usage".into(), json!(u));
    }
    let ev = HistoryEvent::step(now, EventKind::StepSucceeded, &r.step, r.attempt, detail);
    (r, ev)
}

/// A route chose its target.
pub fn routed(rec: &StepRecord, chosen: &str, now: Millis) -> (StepRecord, HistoryEvent) {
    let (mut r, mut ev) = succeed(
        rec,
        ValueRef::Inline {
            value: json!({"chosen": chosen}),
        },
        AttemptMeta::default(),
        now,
    );
    r.chosen = Some(chosen.to_string());
    ev.detail = json!({"chosen": chosen});
    (r, ev)
}

/// The step will not run.
pub fn skip(step: &str, rec: &StepRecord, reason: &str, now: Millis) -> (StepRecord, HistoryEvent) {
    let mut r = finish(rec, StepStatus::Skipped, now);
    r.step = step.to_string();
    let ev = HistoryEvent::step(
        now,
        EventKind::StepSkipped,
        step,
        r.attempt,
        json!({"reason": reason}),
    );
    (r, ev)
}

/// The attempt failed: retry on the same model, fall back to the next one, or fail the step.
/// How many attempts of one step the platform may lose (a worker that died mid-call) before
/// a lost attempt counts against the step's retries like any timeout: a step whose call keeps
/// killing its worker (out of memory, say) must still end.
pub const MAX_LOST_ATTEMPTS: u32 = 3;

/// An attempt whose worker stopped before checkpointing it (its claim expired: `Expire`).
/// Nothing the step did failed, so it is retried on the same model without spending one of
/// that model's attempts — a killed worker must not fail a run whose last attempt it held —
/// up to [`MAX_LOST_ATTEMPTS`] per step; then it is a `timeout` like any other.
pub fn lost(step: &Step, rec: &StepRecord, now: Millis, seed: &str) -> (StepRecord, HistoryEvent) {
    let err = StepError::new(
        ErrorClass::Timeout,
        "attempt lost: its worker stopped before checkpointing (lease expired)",
    );
    if rec.lost < MAX_LOST_ATTEMPTS && step.call().is_some() {
        let mut spared = rec.clone();
        spared.model_attempt = spared.model_attempt.saturating_sub(1);
        spared.lost += 1;
        return fail(step, &spared, err, AttemptMeta::default(), now, seed);
    }
    fail(step, rec, err, AttemptMeta::default(), now, seed)
}

pub fn fail(
    step: &Step,
    rec: &StepRecord,
    err: StepError,
    meta: AttemptMeta,
    now: Millis,
    seed: &str,
) -> (StepRecord, HistoryEvent) {
    let mut r = next(rec);
    apply_meta(&mut r, meta);
    r.lease_until = None;
    r.lease_owner = None;
    r.job = None;
    // A waiting attempt holds its wait deadline in `deadline_at`. That deadline ends the
    // attempt, not the step: retries and fallbacks follow the step's own deadline again
    // (`max_duration` from its first start, as `claim` set it).
    if rec.status == StepStatus::Waiting && step.call().is_some() {
        r.deadline_at = step_deadline(step, &r);
    }
    let within_deadline = |t: Millis| r.deadline_at.is_none_or(|d| t < d);
    if let Some(chain) = step.call() {
        let policy = &chain.retry;
        if err.class.is_retryable() && r.model_attempt < policy.max_attempts {
            let delay = backoff_ms(policy, r.model_attempt, &format!("{seed}/{}", r.step))
                .max(err.retry_after_ms.unwrap_or(0));
            if within_deadline(now.saturating_add(delay)) {
                r.status = StepStatus::Retrying;
                r.next_at = Some(now.saturating_add(delay));
                // A malformed answer is re-asked with what was wrong with it. Any other
                // failure produced no answer, so the request stays as it was: a repair's
                // feedback survives a timeout, an outage or a lost attempt in between.
                if err.class == ErrorClass::Malformed {
                    r.feedback = err.details.clone();
                }
                let ev = HistoryEvent::step(
                    now,
                    EventKind::StepRetryScheduled,
                    &r.step,
                    r.attempt,
                    json!({
                        "class": err.class, "message": err.message, "delay_ms": delay, "model": r.model,
                    }),
                );
                r.error = Some(err);
                return (r, ev);
            }
        }
        let next_model = chain
            .next_index(r.model_index)
            .filter(|_| chain.fallback_on.contains(&err.class) && within_deadline(now));
        if let Some(next_model) = next_model {
            let from = r.model.clone();
            r.model_index = next_model;
            r.model_attempt = 0;
            r.fallback_used = true;
            r.status = StepStatus::Retrying;
            r.next_at = Some(now);
            r.feedback.clear();
            r.model = current_model(step, &r);
            if chain.cascade.is_some() {
                crate::machine::cascade::note_error_escalation(&mut r, from.clone(), &err, now);
            }
            let ev = HistoryEvent::step(
                now,
                EventKind::StepFallback,
                &r.step,
                r.attempt,
                json!({
                    "class": err.class, "message": err.message, "from": from, "to": r.model,
                }),
            );
            r.error = Some(err);
            return (r, ev);
        }
    }
    fail_step(&r, err, now)
}

/// The step ends `failed` with `err`: what every path that gives up ends with, so a failed
/// step's record and its `step_failed` event have one shape whatever gave up.
fn fail_step(r: &StepRecord, err: StepError, now: Millis) -> (StepRecord, HistoryEvent) {
    let mut r = finish(r, StepStatus::Failed, now);
    let ev = HistoryEvent::step(
        now,
        EventKind::StepFailed,
        &r.step,
        r.attempt,
        json!({"class": err.class, "message": err.message}),
    );
    r.error = Some(err);
    (r, ev)
}

/// Releases a record to its next action at `at` (an attempt, or a download): no claim, no
/// job, no error.
pub(crate) fn release_to(r: &mut StepRecord, at: Millis) {
    r.status = StepStatus::Retrying;
    r.next_at = Some(at);
    r.lease_until = None;
    r.lease_owner = None;
    r.job = None;
    r.error = None;
}

/// The step's own deadline: `max_duration` from its first start, if it has one.
fn step_deadline(step: &Step, r: &StepRecord) -> Option<Millis> {
    step.call()
        .and_then(|m| m.max_duration)
        .zip(r.started_at)
        .map(|(d, start)| start.saturating_add(d.ms()))
}

/// An asset job finished and its output file is at a URL: the result is recorded — `meta`
/// charges the job's cost, here and only here — and the file's download is scheduled at
/// once, as an action of its own (`crate::asset`). From here on only the download is tried
/// again ([`download_failed`]), never the job: it succeeded and was paid for.
pub fn await_download(
    step: &Step,
    rec: &StepRecord,
    output: serde_json::Value,
    model: &str,
    meta: AttemptMeta,
    now: Millis,
) -> (StepRecord, HistoryEvent) {
    let cost_usd = meta.cost_usd;
    let mut r = next(rec);
    apply_meta(&mut r, meta);
    release_to(&mut r, now);
    r.feedback.clear();
    r.deadline_at = step_deadline(step, &r);
    let host = crate::asset::needs_keeping(&output)
        .map(crate::asset::host_of)
        .unwrap_or_default()
        .to_string();
    r.download = Some(AssetDownload {
        output,
        model: model.to_string(),
        failed: 0,
    });
    let ev = HistoryEvent::step(
        now,
        EventKind::AssetDownloadScheduled,
        &r.step,
        r.attempt,
        json!({"download": 1, "delay_ms": 0, "host": host, "model": model, "cost_usd": cost_usd}),
    );
    (r, ev)
}

/// A download of a finished job's output file failed: download it again after the backoff
/// (`asset::download_backoff`) while downloads are left, the class is retryable and the
/// step's deadline allows; otherwise the step fails with the download's class and a message
/// naming the download and its host. Never a new job, never a fallback: either would pay for
/// a result the step already has.
pub fn download_failed(
    rec: &StepRecord,
    err: StepError,
    now: Millis,
    seed: &str,
) -> (StepRecord, HistoryEvent) {
    use crate::asset::{download_backoff, download_error, host_of, needs_keeping};
    let mut r = next(rec);
    let (failed, url) = match r.download.as_mut() {
        Some(d) => {
            d.failed += 1;
            let url = needs_keeping(&d.output).unwrap_or_default().to_string();
            (d.failed, url)
        }
        None => (1, String::new()),
    };
    let mut past_deadline = false;
    if err.class.is_retryable() && failed < crate::asset::DOWNLOAD_ATTEMPTS {
        let seed = format!("{seed}/{}/download", r.step);
        let delay =
            backoff_ms(&download_backoff(), failed, &seed).max(err.retry_after_ms.unwrap_or(0));
        let at = now.saturating_add(delay);
        if r.deadline_at.is_none_or(|d| at < d) {
            let e = download_error(&url, &err, failed, false);
            r.status = StepStatus::Retrying;
            r.next_at = Some(at);
            let ev = HistoryEvent::step(
                now,
                EventKind::AssetDownloadScheduled,
                &r.step,
                r.attempt,
                json!({
                    "download": failed + 1, "delay_ms": delay, "host": host_of(&url),
                    "class": e.class, "message": e.message,
                }),
            );
            r.error = Some(e);
            return (r, ev);
        }
        past_deadline = true;
    }
    let mut e = download_error(&url, &err, failed, true);
    if past_deadline {
        e.message
            .push_str(" (the step's max_duration leaves no time for another download)");
    }
    fail_step(&r, e, now)
}

/// An asynchronous job was accepted; the step waits for its callback (or a poll).
pub fn wait_for_job(
    rec: &StepRecord,
    job: JobRef,
    poll_at: Option<Millis>,
    deadline_at: Millis,
    meta: AttemptMeta,
    now: Millis,
) -> (StepRecord, HistoryEvent) {
    let mut r = next(rec);
    apply_meta(&mut r, meta);
    r.status = StepStatus::Waiting;
    r.lease_until = None;
    r.lease_owner = None;
    r.next_at = poll_at.map(|t| t.min(deadline_at));
    r.deadline_at = Some(deadline_at);
    let ev = HistoryEvent::step(
        now,
        EventKind::StepWaiting,
        &r.step,
        r.attempt,
        json!({
            "for": "callback", "job_id": job.job_id, "deadline_at": deadline_at,
        }),
    );
    r.job = Some(job);
    (r, ev)
}

/// A poll found the job still running: poll again later, within the wait deadline.
pub fn poll_again(rec: &StepRecord, next_poll: Millis) -> StepRecord {
    let mut r = next(rec);
    r.next_at = Some(r.deadline_at.map_or(next_poll, |d| next_poll.min(d)));
    r
}

/// An approval gate opens.
pub fn wait_for_approval(
    rec: &StepRecord,
    deadline_at: Millis,
    now: Millis,
) -> (StepRecord, HistoryEvent) {
    let mut r = next(rec);
    r.status = StepStatus::Waiting;
    r.lease_until = None;
    r.lease_owner = None;
    r.deadline_at = Some(deadline_at);
    let ev = HistoryEvent::step(
        now,
        EventKind::StepWaiting,
        &r.step,
        r.attempt,
        json!({"for": "approval", "deadline_at": deadline_at}),
    );
    (r, ev)
}

/// A person (or the deadline's `on_timeout`) decided an approval gate.
pub fn decide(
    rec: &StepRecord,
    approved: bool,
    comment: Option<String>,
    now: Millis,
) -> (StepRecord, HistoryEvent) {
    let decision = ApprovalDecision {
        approved,
        comment: comment.clone(),
        decided_at: now,
    };
    let output = ValueRef::Inline {
        value: json!({"approved": approved, "comment": comment, "decided_at": now}),
    };
    let (mut r, mut ev) = if approved {
        succeed(rec, output, AttemptMeta::default(), now)
    } else {
        let mut r = finish(rec, StepStatus::Failed, now);
        r.output = Some(output);
        r.error = Some(StepError::new(
            ErrorClass::Rejected,
            comment
                .clone()
                .map_or("rejected".to_string(), |c| format!("rejected: {c}")),
        ));
        let ev = HistoryEvent::step(
            now,
            EventKind::StepFailed,
            &r.step,
            r.attempt,
            json!({"class": "rejected"}),
        );
        (r, ev)
    };
    r.approval = Some(decision);
    ev.kind = EventKind::ApprovalDecided;
    ev.detail = json!({"approved": approved, "comment": comment});
    (r, ev)
}

/// A validate step found problems. With repairs left, the model step it names is reset to run
/// again with the problems as feedback, and the validate step goes back to pending. Returns
/// `None` when no repair is configured or the repairs are used up (the caller then fails it).
/// `why` says what found them (`value failed its schema`, `the judge failed the value`). A
/// judge's chain starts over for the new value: first model, fresh attempts, no feedback.
pub fn request_repair(
    step: &Step,
    target_step: Option<&Step>,
    validate_rec: &StepRecord,
    target_rec: &StepRecord,
    errors: &[String],
    why: &str,
    now: Millis,
) -> Option<(StepRecord, StepRecord, HistoryEvent)> {
    let StepKind::Validate(v) = &step.kind else {
        return None;
    };
    let repair = v.repair.as_ref()?;
    if validate_rec.repairs >= repair.max_attempts {
        return None;
    }
    let mut val = next(validate_rec);
    val.status = StepStatus::Pending;
    val.repairs += 1;
    val.lease_until = None;
    val.lease_owner = None;
    val.next_at = None;
    val.model_index = 0;
    val.model_attempt = 0;
    val.feedback.clear();
    val.error = Some(StepError::new(ErrorClass::Malformed, why).with_details(errors.to_vec()));
    // With `escalate`, a cascade target moves up a tier (fresh, no feedback: the next model
    // answers the original request); at its top tier, or if it is no cascade, it is re-asked
    // with the problems like any repair.
    let first = errors.first().map_or(String::new(), |e| format!(": {e}"));
    let escalated = match (repair.escalate, target_step.and_then(Step::call)) {
        (true, Some(ms)) => crate::machine::cascade::escalate_for_repair(
            ms,
            target_rec,
            &format!("`{}`: {why}{first}", step.id),
            now,
        ),
        _ => None,
    };
    let escalated_to = escalated.as_ref().and_then(|t| t.model.clone());
    let mut target = match escalated {
        Some(t) => t,
        None => {
            let mut t = next(target_rec);
            t.model_attempt = 0;
            t.feedback = errors.to_vec();
            t
        }
    };
    target.status = StepStatus::Retrying;
    target.next_at = Some(now);
    target.finished_at = None;
    let mut detail = json!({
        "target": repair.step, "repair": val.repairs, "errors": errors,
    });
    if let Some(to) = escalated_to {
        detail["escalated_to"] = json!(to);
    }
    let ev = HistoryEvent::step(
        now,
        EventKind::StepRepairRequested,
        &step.id,
        validate_rec.attempt,
        detail,
    );
    Some((val, target, ev))
}

/// The record with one attempt's cost and model added (a judge's, before its verdict is
/// acted on).
pub fn with_meta(rec: &StepRecord, meta: AttemptMeta) -> StepRecord {
    let mut r = next(rec);
    apply_meta(&mut r, meta);
    r
}

/// Fails the step without retry or fallback: a validation that found problems has nothing
/// a second attempt at the same value could change.
pub fn fail_outright(
    rec: &StepRecord,
    err: StepError,
    meta: AttemptMeta,
    now: Millis,
) -> (StepRecord, HistoryEvent) {
    let mut r = finish(rec, StepStatus::Failed, now);
    apply_meta(&mut r, meta);
    r.job = None;
    let ev = HistoryEvent::step(
        now,
        EventKind::StepFailed,
        &r.step,
        r.attempt,
        json!({"class": err.class, "message": err.message}),
    );
    r.error = Some(err);
    (r, ev)
}

/// The error a non-model step fails with when its value cannot be built.
pub fn invalid(message: impl Into<String>) -> StepError {
    StepError::new(ErrorClass::Invalid, message)
}

/// What a poll of an asynchronous job comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum PollNext<'a> {
    /// The job ended: settle its output like a synchronous answer.
    Settle(&'a crate::model::ModelOutput),
    /// Not done yet, or the poll itself failed for a passing reason while there is time
    /// left: poll again later (the job may well be running fine).
    PollAgain,
    /// Give up on this job: cancel it at the provider (stopping its billing), then settle the
    /// attempt with this error (retried or falling back per the step's policy).
    CancelAndFail(StepError),
}

/// Decides what a poll's result means for the waiting attempt, given whether its wait
/// deadline (`wait_timeout`, shown in the message) has passed.
pub fn after_poll<'a>(
    polled: &'a Result<crate::model::ModelResponse, StepError>,
    past_deadline: bool,
    wait_timeout: &crate::time::Dur,
) -> PollNext<'a> {
    use crate::model::ModelResponse;
    match polled {
        Ok(ModelResponse::Completed(out)) => PollNext::Settle(out),
        Ok(ModelResponse::Pending { .. }) if !past_deadline => PollNext::PollAgain,
        Ok(ModelResponse::Pending { .. }) => PollNext::CancelAndFail(StepError::new(
            ErrorClass::Timeout,
            format!("the job did not finish within the wait timeout of {wait_timeout}"),
        )),
        Err(e) if e.class.is_retryable() && !past_deadline => PollNext::PollAgain,
        Err(e) => PollNext::CancelAndFail(e.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Usage;

    /// A poll's result, table by table: done settles; not done (or a passing poll failure)
    /// polls again while there is time; past the wait deadline, or on a lasting failure, the
    /// job is cancelled and the attempt fails.
    #[test]
    fn what_a_poll_comes_to() {
        use crate::model::{ModelOutput, ModelResponse};
        use crate::time::Dur;
        let out = ModelOutput {
            output: json!({"text": "done"}),
            usage: None,
            cost_usd: 0.01,
            model: "replicate/a/b".into(),
            provider_request_id: None,
            sources: vec![],
        };
        let done: Result<ModelResponse, StepError> = Ok(ModelResponse::Completed(out.clone()));
        let pending = Ok(ModelResponse::Pending {
            job_id: "j".into(),
            poll_after_ms: None,
        });
        let flaky = Err(StepError::new(ErrorClass::Transient, "502"));
        let gone = Err(StepError::new(ErrorClass::Invalid, "404"));
        let wait = Dur(600_000);
        assert_eq!(after_poll(&done, false, &wait), PollNext::Settle(&out));
        assert_eq!(after_poll(&done, true, &wait), PollNext::Settle(&out));
        assert_eq!(after_poll(&pending, false, &wait), PollNext::PollAgain);
        assert_eq!(after_poll(&flaky, false, &wait), PollNext::PollAgain);
        let class = |n: PollNext| match n {
            PollNext::CancelAndFail(e) => Some(e.class),
            _ => None,
        };
        assert_eq!(
            class(after_poll(&pending, true, &wait)),
            Some(ErrorClass::Timeout)
        );
        assert_eq!(
            class(after_poll(&flaky, true, &wait)),
            Some(ErrorClass::Transient)
        );
        assert_eq!(
            class(after_poll(&gone, false, &wait)),
            Some(ErrorClass::Invalid)
        );
        match after_poll(&pending, true, &wait) {
            PollNext::CancelAndFail(e) => assert!(e.message.contains("wait timeout of 10m"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
    use crate::model::Role;
    use crate::time::Dur;
    use crate::workflow::{ModelStep, RetryPolicy, Step};
    use serde_json::Value;

    fn model_step(
        models: &[&str],
        max_attempts: u32,
        fallback_on: &[ErrorClass],
        max_duration: Option<u64>,
    ) -> Step {
        Step {
            id: "s".into(),
            needs: vec![],
            gated_by: None,
            parent: None,
            optional: false,
            kind: StepKind::Model(Box::new(ModelStep {
                models: models.iter().map(|m| m.to_string()).collect(),
                role: Role::Generation,
                prompt: None,
                input: Value::Null,
                params: Value::Null,
                output_schema: None,
                fallback_on: fallback_on.to_vec(),
                retry: RetryPolicy {
                    max_attempts,
                    initial_backoff: Dur(100),
                    max_backoff: Dur(10_000),
                    multiplier: 2.0,
                    jitter: false,
                },
                timeout: Dur(1000),
                max_duration: max_duration.map(Dur),
                wait_timeout: Dur(60_000),
                asynchronous: false,
                cascade: None,
                select: None,
            })),
        }
    }

    /// Claims and fails attempts in a row; returns (status, model_index, next_at) after each.
    fn run(step: &Step, errors: &[StepError]) -> Vec<(StepStatus, usize, Option<Millis>)> {
        let mut rec = StepRecord::pending("s");
        let mut now = 1_000;
        let mut out = vec![];
        for e in errors {
            rec = claim(step, &rec, "w", now, 5000);
            let (r, _) = fail(step, &rec, e.clone(), AttemptMeta::default(), now, "run");
            out.push((r.status, r.model_index, r.next_at.map(|t| t - now)));
            now = r.next_at.unwrap_or(now) + 1;
            rec = r;
        }
        out
    }

    #[test]
    fn lost_attempts_do_not_spend_the_models_attempts_up_to_a_bound() {
        use StepStatus::*;
        // One attempt per model, one model: a lost attempt is retried anyway, three times;
        // the fourth loss is a timeout like any other and, with no attempt left, fails.
        let step = model_step(&["a/x"], 1, &[], None);
        let mut rec = StepRecord::pending("s");
        let mut now = 1_000;
        let mut seen = vec![];
        for _ in 0..=MAX_LOST_ATTEMPTS {
            rec = claim(&step, &rec, "w", now, 5000);
            let (r, ev) = lost(&step, &rec, now, "run");
            seen.push((r.status, r.attempt, r.model_attempt, r.lost, ev.kind));
            now = r.next_at.unwrap_or(now) + 1;
            rec = r;
        }
        assert_eq!(
            seen,
            [
                (Retrying, 1, 0, 1, EventKind::StepRetryScheduled),
                (Retrying, 2, 0, 2, EventKind::StepRetryScheduled),
                (Retrying, 3, 0, 3, EventKind::StepRetryScheduled),
                (Failed, 4, 1, 3, EventKind::StepFailed),
            ]
        );
        assert_eq!(rec.error.map(|e| e.class), Some(ErrorClass::Timeout));
    }

    #[test]
    fn retry_and_fallback_table() {
        use ErrorClass::*;
        use StepStatus::*;
        let e = |c| StepError::new(c, "x");
        type Row = (
            &'static str,
            Step,
            Vec<StepError>,
            Vec<(StepStatus, usize, Option<Millis>)>,
        );
        let table: Vec<Row> = vec![
            (
                "transient retries with backoff then fails",
                model_step(&["a/x"], 3, &[Transient], None),
                vec![e(Transient), e(Transient), e(Transient)],
                vec![
                    (Retrying, 0, Some(100)),
                    (Retrying, 0, Some(200)),
                    (Failed, 0, None),
                ],
            ),
            (
                "invalid never retries",
                model_step(&["a/x", "b/y"], 3, &[Transient], None),
                vec![e(Invalid)],
                vec![(Failed, 0, None)],
            ),
            (
                "auth never falls back even if listed",
                model_step(&["a/x", "b/y"], 1, &[Transient], None),
                vec![e(Auth)],
                vec![(Failed, 0, None)],
            ),
            (
                "transient exhausts then falls back",
                model_step(&["a/x", "b/y"], 2, &[Transient], None),
                vec![e(Transient), e(Transient), e(Transient)],
                vec![
                    (Retrying, 0, Some(100)),
                    (Retrying, 1, Some(0)),
                    (Retrying, 1, Some(100)),
                ],
            ),
            (
                "quota falls back at once",
                model_step(&["a/x", "b/y"], 3, &[QuotaExhausted], None),
                vec![e(QuotaExhausted)],
                vec![(Retrying, 1, Some(0))],
            ),
            (
                "refused falls back only when declared",
                model_step(&["a/x", "b/y"], 3, &[Transient], None),
                vec![e(Refused)],
                vec![(Failed, 0, None)],
            ),
            (
                "retry_after is honoured",
                model_step(&["a/x"], 3, &[], None),
                vec![e(RateLimited).with_retry_after(5000)],
                vec![(Retrying, 0, Some(5000))],
            ),
            (
                "max_duration stops retries and falls back",
                model_step(&["a/x", "b/y"], 5, &[RateLimited], Some(2000)),
                vec![e(RateLimited).with_retry_after(5000)],
                vec![(Retrying, 1, Some(0))],
            ),
        ];
        for (name, step, errors, want) in table {
            assert_eq!(run(&step, &errors), want, "{name}");
        }
    }

    /// Transitions never touch the version: each record carries the version it was read at,
    /// which is the condition of its one write.
    #[test]
    fn transitions_keep_the_version_read() {
        let step = model_step(&["a/x"], 1, &[], None);
        let rec = StepRecord::pending("s");
        let mut c = claim(&step, &rec, "w", 0, 10);
        assert_eq!(c.version, 0);
        c.version = 1; // as stored
        let (f, _) = fail(
            &step,
            &c,
            StepError::new(ErrorClass::Invalid, "bad"),
            AttemptMeta::default(),
            1,
            "r",
        );
        assert_eq!((f.status, f.version), (StepStatus::Failed, 1));
        let (s, _) = succeed(
            &c,
            ValueRef::Inline { value: json!(1) },
            AttemptMeta {
                cost_usd: 0.5,
                latency_ms: 3,
                ..Default::default()
            },
            2,
        );
        assert_eq!(
            (s.status, s.version, s.cost_usd, s.latency_ms),
            (StepStatus::Succeeded, 1, 0.5, 3)
        );
    }

    /// The step's tokens add up over its attempts, and `step_succeeded` carries the sum (as it
    /// does latency and cost); a step whose calls reported no tokens has no `usage` there.
    #[test]
    fn step_succeeded_carries_the_tokens_of_every_attempt() {
        let step = model_step(&["a/x"], 2, &[], None);
        let first = Usage {
            cache_read_tokens: 64,
            reasoning_tokens: 8,
            ..Usage::new(100, 20)
        };
        let second = Usage {
            cache_write_tokens: 30,
            ..Usage::new(40, 5)
        };
        let c = claim(&step, &StepRecord::pending("s"), "w", 0, 10);
        let meta = |u: Usage| AttemptMeta {
            usage: Some(u),
            ..Default::default()
        };
        let (r, _) = fail(
            &step,
            &c,
            StepError::new(ErrorClass::Transient, "502"),
            meta(first),
            1,
            "r",
        );
        let c = claim(&step, &r, "w", 2, 10);
        let (s, ev) = succeed(&c, ValueRef::Inline { value: json!(1) }, meta(second), 3);
        let sum = Usage {
            input_tokens: 140,
            output_tokens: 25,
            cache_read_tokens: 64,
            cache_write_tokens: 30,
            reasoning_tokens: 8,
        };
        assert_eq!(s.usage, Some(sum));
        assert_eq!(ev.kind, EventKind::StepSucceeded);
        assert_eq!(
            ev.detail["usage"],
            json!({"input_tokens": 140, "output_tokens": 25, "cache_read_tokens": 64,
                   "cache_write_tokens": 30, "reasoning_tokens": 8})
        );
        let (_, ev) = succeed(
            &StepRecord::pending("t"),
            ValueRef::Inline { value: json!(1) },
            AttemptMeta::default(),
            3,
        );
        assert!(ev.detail.get("usage").is_none(), "{}", ev.detail);
    }

    /// A finished asset job: its result recorded and charged once, its download scheduled
    /// at once. Failed downloads are tried again on the download backoff — never as a new
    /// attempt of the job, never on a fallback model — and the last one, or one that cannot
    /// succeed, or one the step's deadline leaves no time for, fails the step naming the
    /// download and its host.
    #[test]
    fn downloads_are_retried_on_their_own_and_never_rerun_the_job() {
        use ErrorClass::*;
        use StepStatus::*;
        let step = model_step(&["a/x", "b/y"], 3, &[Transient, Invalid], None);
        let claimed = claim(&step, &StepRecord::pending("s"), "w", 1_000, 5_000);
        let file = json!({"url": "https://replicate.delivery/x/out.png?sig=k", "content_type": "image/png"});
        let meta = AttemptMeta {
            model: Some("a/x".into()),
            cost_usd: 0.003,
            ..Default::default()
        };
        let (first, ev) = await_download(&step, &claimed, file.clone(), "a/x", meta, 2_000);
        assert_eq!(
            (first.status, first.next_at, first.attempt, first.cost_usd),
            (Retrying, Some(2_000), 1, 0.003)
        );
        assert_eq!(
            (first.lease_owner.as_deref(), first.job.as_ref()),
            (None, None)
        );
        assert_eq!(ev.kind, EventKind::AssetDownloadScheduled);
        assert_eq!(
            (&ev.detail["download"], &ev.detail["host"]),
            (&json!(1), &json!("replicate.delivery"))
        );
        let pending = first.download.clone().unwrap();
        assert_eq!(
            (pending.output, pending.model, pending.failed),
            (file, "a/x".into(), 0)
        );

        // Five downloads in all; the attempt, the model and the cost never move.
        let cause = StepError::new(Transient, "could not connect");
        let (mut r, mut now, mut seen) = (first.clone(), 2_000, vec![]);
        for _ in 0..crate::asset::DOWNLOAD_ATTEMPTS {
            let (next, ev) = download_failed(&r, cause.clone(), now, "run");
            let delay = next.next_at.map(|t| t - now);
            seen.push((next.status, ev.kind, next.attempt, next.model_index, delay));
            assert_eq!(next.cost_usd, 0.003);
            now = next.next_at.unwrap_or(now);
            r = next;
        }
        let retry = |(lo, hi): (u64, u64),
                     seen: &(StepStatus, EventKind, u32, usize, Option<u64>)| {
            seen.0 == Retrying
                && seen.1 == EventKind::AssetDownloadScheduled
                && (seen.2, seen.3) == (1, 0)
                && seen.4.is_some_and(|d| (lo..=hi).contains(&d))
        };
        for (i, band) in [
            (1_000, 2_000),
            (2_000, 4_000),
            (4_000, 8_000),
            (8_000, 16_000),
        ]
        .into_iter()
        .enumerate()
        {
            assert!(retry(band, &seen[i]), "download {}: {:?}", i + 1, seen[i]);
        }
        assert_eq!(seen[4], (Failed, EventKind::StepFailed, 1, 0, None));
        let err = r.error.clone().unwrap();
        assert_eq!(err.class, Transient);
        assert!(err.message.contains("5 downloads failed"), "{err}");
        assert!(err.message.contains("from replicate.delivery"), "{err}");
        assert!(!err.message.contains("sig=k"), "{err}");

        // A download that cannot succeed (an expired link) fails the step at once; `invalid`
        // in `fallback_on` changes nothing: a fallback would be a new, paid job.
        let (gone, ev) = download_failed(&first, StepError::new(Invalid, "404"), 2_000, "run");
        assert_eq!(
            (gone.status, gone.model_index, ev.kind),
            (Failed, 0, EventKind::StepFailed)
        );
        assert!(gone.error.unwrap().message.contains("not retried"));

        // No download is scheduled past the step's `max_duration`.
        let short = model_step(&["a/x"], 3, &[], Some(3_000));
        let claimed = claim(&short, &StepRecord::pending("s"), "w", 1_000, 5_000);
        let (short_first, _) = await_download(
            &short,
            &claimed,
            json!({"url": "https://h/f.png"}),
            "a/x",
            AttemptMeta::default(),
            2_000,
        );
        assert_eq!(short_first.deadline_at, Some(4_000));
        let (late, _) = download_failed(&short_first, cause.clone(), 3_500, "run");
        assert_eq!(late.status, Failed);
        assert!(late.error.unwrap().message.contains("max_duration"));

        // A download that works settles the step; the pending result is gone, the cost stays.
        let kept = ValueRef::Inline {
            value: json!({"blob": "k"}),
        };
        let (again, _) = download_failed(&first, StepError::new(Timeout, "slow"), 2_000, "run");
        assert_eq!(again.status, Retrying);
        let (done, _) = succeed(&again, kept, AttemptMeta::default(), 9_000);
        assert_eq!(
            (
                done.status,
                done.download.as_ref(),
                done.attempt,
                done.cost_usd
            ),
            (Succeeded, None, 1, 0.003)
        );
    }

    #[test]
    fn malformed_retry_carries_feedback() {
        let step = model_step(&["a/x"], 2, &[], None);
        let c = claim(&step, &StepRecord::pending("s"), "w", 0, 10);
        let err = StepError::new(ErrorClass::Malformed, "schema")
            .with_details(vec!["at /title: missing".into()]);
        let (r, ev) = fail(&step, &c, err, AttemptMeta::default(), 1, "r");
        assert_eq!(r.feedback, vec!["at /title: missing".to_string()]);
        assert_eq!(ev.kind, EventKind::StepRetryScheduled);
    }

    /// Found at 500 runs under faults: a repair's re-ask whose worker died was retried
    /// without the repair's feedback, so the same faulty draft came back and spent a repair.
    /// A failure that produced no answer leaves the request as it was.
    #[test]
    fn a_repair_request_survives_failures_that_produced_no_answer() {
        let step = model_step(&["a/x"], 3, &[], None);
        let mut asked = StepRecord::pending("s");
        asked.status = StepStatus::Retrying;
        asked.feedback = vec!["state the weight".into()];
        let problems = || vec!["state the weight".to_string()];
        // (how the attempt ended, the feedback of the next attempt)
        type End<'a> = Box<dyn Fn(&StepRecord) -> StepRecord + 'a>;
        let cases: Vec<(&str, End, Vec<String>)> = vec![
            (
                "lost (worker died)",
                Box::new(|c: &StepRecord| lost(&step, c, 5, "r").0),
                problems(),
            ),
            (
                "transient",
                Box::new(|c: &StepRecord| {
                    let e = StepError::new(ErrorClass::Transient, "503");
                    fail(&step, c, e, AttemptMeta::default(), 5, "r").0
                }),
                problems(),
            ),
            (
                "malformed: the new problems replace the old",
                Box::new(|c: &StepRecord| {
                    let e = StepError::new(ErrorClass::Malformed, "schema")
                        .with_details(vec!["at /title: missing".into()]);
                    fail(&step, c, e, AttemptMeta::default(), 5, "r").0
                }),
                vec!["at /title: missing".to_string()],
            ),
        ];
        for (what, end, want) in cases {
            let claimed = claim(&step, &asked, "w", 1, 10);
            let next = end(&claimed);
            assert_eq!(next.status, StepStatus::Retrying, "{what}");
            assert_eq!(next.feedback, want, "{what}");
        }
    }
}
