//! Traces: the spans of a run, named and attributed as the OpenTelemetry GenAI semantic
//! conventions say (every name is in `switchyard_core::telemetry::attr`; docs/traces.md).
//!
//! The engine only creates `tracing` spans, with the OpenTelemetry attribute names as field
//! names; it has no OpenTelemetry dependency. A deployment that exports traces installs the
//! `tracing` → OpenTelemetry bridge and gives the engine a [`TraceContext`] (the
//! `switchyard-otel` crate does both when `OTEL_EXPORTER_OTLP_ENDPOINT` is set), through
//! which a span's W3C `traceparent` is read and a span is parented to a stored one. Without
//! it the spans are ordinary `tracing` spans (their fields show on log lines) and nothing is
//! kept with the run.
//!
//! - intake: `start_run {workflow}`, whose `traceparent` the run header keeps;
//! - worker: `invoke_workflow {workflow}` per wake-up handled, a child of that context, with
//!   `step {step}` per planner action and `{operation} {model}` per model call under it;
//! - webhook: `webhook {provider}`, and notifier: `notify {event}`, children of it too.

use crate::{Engine, EngineError};
use std::sync::Arc;
use switchyard_core::machine::judge::Verdict;
use switchyard_core::model::{ModelRequest, ModelResponse};
use switchyard_core::planner::Action;
use switchyard_core::state::{RunHeader, StepRecord, StepStatus, WakeReason};
use switchyard_core::telemetry::attr;
use switchyard_core::workflow::Step;
use switchyard_core::StepError;
use tracing::field::Empty;
use tracing::Span;

/// How the engine's spans join a distributed trace: implemented over OpenTelemetry's W3C
/// propagator by the binaries that export traces.
pub trait TraceContext: Send + Sync {
    /// The W3C `traceparent` of `span`, when traces are exported and the span has one.
    fn traceparent(&self, span: &Span) -> Option<String>;
    /// Makes the remote span `traceparent` names the parent of `span` (before `span` is
    /// first entered).
    fn set_parent(&self, span: &Span, traceparent: &str);
}

/// An integer attribute: the bridge exports `i64` as an OpenTelemetry integer, while unsigned
/// values would arrive as strings.
pub fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Nothing is exported: no context is read or kept. The default.
pub struct NoTraces;

impl TraceContext for NoTraces {
    fn traceparent(&self, _: &Span) -> Option<String> {
        None
    }

    fn set_parent(&self, _: &Span, _: &str) {}
}

impl Engine {
    /// Joins spans to traces through `trace` from now on (the default joins nothing).
    pub fn with_trace(mut self, trace: Arc<dyn TraceContext>) -> Engine {
        self.trace = trace;
        self
    }

    /// Makes `span` a child of the span that created the run (kept in its header).
    pub(crate) fn join_run(&self, span: &Span, header: &RunHeader) {
        join_run(self.trace.as_ref(), span, header);
    }

    /// The `traceparent` a new run keeps: its intake span's, if that is exported.
    pub(crate) fn traceparent_of(&self, span: &Span) -> Option<String> {
        traceparent_of(self.trace.as_ref(), span)
    }
}

/// Makes the run's stored trace context the parent of `span`, if it has one.
pub(crate) fn join_run(trace: &dyn TraceContext, span: &Span, header: &RunHeader) {
    if let Some(tp) = header.traceparent.as_deref() {
        trace.set_parent(span, tp);
    }
}

/// `span`'s `traceparent`, if it is exported (and well formed).
pub(crate) fn traceparent_of(trace: &dyn TraceContext, span: &Span) -> Option<String> {
    trace
        .traceparent(span)
        .filter(|tp| attr::valid_traceparent(tp))
}

/// `start_run {workflow}`: intake creating a run.
pub(crate) fn start_span(workflow: &str, version: &str) -> Span {
    tracing::info_span!(
        "start_run",
        { attr::OTEL_NAME } = format!("{} {workflow}", attr::SPAN_START_RUN),
        { attr::OTEL_KIND } = "internal",
        { attr::OTEL_STATUS_CODE } = Empty,
        { attr::OTEL_STATUS_DESCRIPTION } = Empty,
        { attr::WORKFLOW_NAME } = workflow,
        { attr::WORKFLOW_VERSION } = version,
        { attr::RUN_ID } = Empty,
        { attr::ERROR_TYPE } = Empty,
    )
}

/// `invoke_workflow {workflow}`: a worker handling one wake-up of a run.
pub(crate) fn run_span(h: &RunHeader, reason: WakeReason) -> Span {
    tracing::info_span!(
        "invoke_workflow",
        { attr::OTEL_NAME } = format!("{} {}", attr::OP_INVOKE_WORKFLOW, h.workflow.name),
        { attr::OTEL_KIND } = "internal",
        { attr::OTEL_STATUS_CODE } = Empty,
        { attr::OTEL_STATUS_DESCRIPTION } = Empty,
        { attr::OPERATION_NAME } = attr::OP_INVOKE_WORKFLOW,
        { attr::WORKFLOW_NAME } = h.workflow.name.as_str(),
        { attr::WORKFLOW_VERSION } = h.workflow.version.as_str(),
        { attr::RUN_ID } = h.run_id.as_str(),
        { attr::WAKE_REASON } = reason.as_str(),
        { attr::WAKE_OUTCOME } = Empty,
        { attr::RUN_STATUS } = Empty,
        { attr::ERROR_TYPE } = Empty,
    )
}

/// `step {step}`: one planner action on one step.
pub(crate) fn step_span(run_id: &str, step: &Step, action: &Action) -> Span {
    tracing::info_span!(
        "step",
        { attr::OTEL_NAME } = format!("{} {}", attr::SPAN_STEP, step.id),
        { attr::OTEL_KIND } = "internal",
        { attr::OTEL_STATUS_CODE } = Empty,
        { attr::OTEL_STATUS_DESCRIPTION } = Empty,
        { attr::RUN_ID } = run_id,
        { attr::STEP } = step.id.as_str(),
        { attr::STEP_KIND } = step.kind.name(),
        { attr::ACTION } = action_name(action),
        { attr::ATTEMPT } = Empty,
        { attr::STEP_STATUS } = Empty,
        { attr::ERROR_TYPE } = Empty,
        { attr::EVALUATION_NAME } = Empty,
        { attr::EVALUATION_SCORE_VALUE } = Empty,
        { attr::EVALUATION_SCORE_LABEL } = Empty,
    )
}

fn action_name(a: &Action) -> &'static str {
    match a {
        Action::Start { .. } => "start",
        Action::Skip { .. } => "skip",
        Action::Expire { .. } => "expire",
        Action::Poll { .. } => "poll",
        Action::ApprovalTimeout { .. } => "approval_timeout",
        Action::Download { .. } => "download",
    }
}

/// What a step's action came to, on its span: the step's record after it (a validate step's
/// repair writes its target's record too).
pub(crate) fn record_step(span: &Span, step: &str, result: &Result<Vec<StepRecord>, EngineError>) {
    match result {
        Ok(records) => {
            let Some(r) = records.iter().find(|r| r.step == step) else {
                return;
            };
            span.record(attr::ATTEMPT, i64::from(r.attempt));
            span.record(attr::STEP_STATUS, r.status.as_str());
            if r.status == StepStatus::Failed {
                if let Some(e) = &r.error {
                    failed(span, e.class.as_str(), &e.message);
                }
            }
        }
        Err(e) => failed(span, e.code(), &e.to_string()),
    }
}

/// Marks `span` as ended in an error of class `class`.
pub(crate) fn failed(span: &Span, class: &str, message: &str) {
    span.record(attr::ERROR_TYPE, class);
    span.record(attr::OTEL_STATUS_CODE, "error");
    span.record(attr::OTEL_STATUS_DESCRIPTION, message);
}

/// `{operation} {model}`: one call to a model (an attempt of a model step or a judge).
pub(crate) fn attempt_span(
    run_id: &str,
    req: &ModelRequest,
    provider: &str,
    model_index: usize,
) -> Span {
    let op = attr::operation(req.role);
    let model = attr::model_name(&req.model);
    let (prompt_name, prompt_version) = match req.prompt_version.as_deref() {
        Some(v) => {
            let (name, version) = attr::prompt_name_version(v);
            (name, Some(version))
        }
        None => (None, None),
    };
    // The built-in models run in this process: an internal span, not a client call.
    let kind = if provider == "local" {
        "internal"
    } else {
        "client"
    };
    tracing::info_span!(
        "model_call",
        { attr::OTEL_NAME } = format!("{op} {model}"),
        { attr::OTEL_KIND } = kind,
        { attr::OTEL_STATUS_CODE } = Empty,
        { attr::OTEL_STATUS_DESCRIPTION } = Empty,
        { attr::OPERATION_NAME } = op,
        { attr::PROVIDER_NAME } = attr::provider_name(provider),
        { attr::REQUEST_MODEL } = model,
        { attr::RESPONSE_MODEL } = Empty,
        { attr::USAGE_INPUT_TOKENS } = Empty,
        { attr::USAGE_OUTPUT_TOKENS } = Empty,
        { attr::PROMPT_NAME } = prompt_name,
        { attr::PROMPT_VERSION } = prompt_version,
        { attr::ERROR_TYPE } = Empty,
        { attr::RUN_ID } = run_id,
        { attr::STEP } = req.step.as_str(),
        { attr::ATTEMPT } = i64::from(req.attempt),
        { attr::MODEL } = req.model.as_str(),
        { attr::MODEL_INDEX } = int(model_index as u64),
        { attr::COST_USD } = Empty,
        { attr::JOB_ID } = Empty,
    )
}

/// What a model call answered, on its span.
pub(crate) fn record_answer(span: &Span, result: &Result<ModelResponse, StepError>) {
    match result {
        Ok(ModelResponse::Completed(out)) => {
            span.record(attr::RESPONSE_MODEL, attr::model_name(&out.model));
            if let Some(u) = out.usage {
                span.record(attr::USAGE_INPUT_TOKENS, int(u.input_tokens));
                span.record(attr::USAGE_OUTPUT_TOKENS, int(u.output_tokens));
            }
            span.record(attr::COST_USD, out.cost_usd);
        }
        Ok(ModelResponse::Pending { job_id, .. }) => {
            span.record(attr::JOB_ID, job_id.as_str());
        }
        Err(e) => failed(span, e.class.as_str(), &e.message),
    }
}

/// A judge's verdict on the value of validate step `step`: a `gen_ai.evaluation.result`
/// event, and its attributes on the current span (the validate step's).
pub(crate) fn evaluation(step: &str, verdict: &Verdict, pass: bool) {
    let label = if pass { "pass" } else { "fail" };
    let span = Span::current();
    span.record(attr::EVALUATION_NAME, step);
    span.record(attr::EVALUATION_SCORE_VALUE, verdict.score);
    span.record(attr::EVALUATION_SCORE_LABEL, label);
    tracing::info!(
        { attr::EVALUATION_NAME } = step,
        { attr::EVALUATION_SCORE_VALUE } = verdict.score,
        { attr::EVALUATION_SCORE_LABEL } = label,
        { attr::EVALUATION_EXPLANATION } = verdict.reasons.join("; "),
        "{}",
        attr::EVALUATION_RESULT
    );
}

/// `webhook {provider}`: a provider callback (`provider` is `unknown` for a name no provider
/// has, so callers cannot make up span names).
pub(crate) fn webhook_span(provider: &str) -> Span {
    tracing::info_span!(
        "webhook",
        { attr::OTEL_NAME } = format!("{} {provider}", attr::SPAN_WEBHOOK),
        { attr::OTEL_KIND } = "server",
        { attr::OTEL_STATUS_CODE } = Empty,
        { attr::OTEL_STATUS_DESCRIPTION } = Empty,
        { attr::PROVIDER_NAME } = attr::provider_name(provider),
        { attr::RUN_ID } = Empty,
        { attr::STEP } = Empty,
        { attr::WEBHOOK_VERDICT } = Empty,
        { attr::ERROR_TYPE } = Empty,
    )
}

/// `notify {event}`: one delivery attempt of a run's notification.
pub(crate) fn notify_span(run_id: &str, event: &str, attempt: u32) -> Span {
    tracing::info_span!(
        "notify",
        { attr::OTEL_NAME } = format!("{} {event}", attr::SPAN_NOTIFY),
        { attr::OTEL_KIND } = "client",
        { attr::OTEL_STATUS_CODE } = Empty,
        { attr::OTEL_STATUS_DESCRIPTION } = Empty,
        { attr::RUN_ID } = run_id,
        { attr::NOTIFY_EVENT } = event,
        { attr::NOTIFY_ATTEMPT } = i64::from(attempt),
        { attr::NOTIFY_OUTCOME } = Empty,
        { attr::HTTP_RESPONSE_STATUS_CODE } = Empty,
        { attr::ERROR_TYPE } = Empty,
    )
}
