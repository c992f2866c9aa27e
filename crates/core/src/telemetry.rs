//! What a deployment reports about itself: every metric's name, unit and dimensions in one
//! table ([`ALL`]), and the pure functions that turn what the engine just wrote (a step record
//! with its history events, a run's end) into [`Metric`]s. The engine hands those to a
//! [`MetricSink`] — CloudWatch Embedded Metric Format lines in the Lambda functions, Prometheus
//! text at `GET /metrics` in `switchyard dev` — so no adapter decides what is measured, and
//! the events the history keeps and the numbers the dashboards show cannot disagree.
//!
//! Dimensions are bounded: workflow and step names (from the deployed definitions), provider,
//! model, error class, outcome. A run id never is one (it would make every run its own time
//! series); it travels beside the value as [`Metric::run_id`], which EMF writes as a plain
//! property that CloudWatch Logs Insights can search and Prometheus drops.
//!
//! The span and attribute names of traces (OpenTelemetry GenAI semantic conventions) are in
//! [`attr`], for the same reason: one place to read what is reported.

use crate::state::{EventKind, HistoryEvent, RunHeader, RunStatus, StepRecord, StepStatus};
use crate::workflow::{StepKind, Workflow};
use crate::Millis;
use serde_json::Value;

/// How a metric's values combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Added up (a count of events, tokens, dollars).
    Counter,
    /// Each value kept (latencies, scores): a distribution.
    Histogram,
}

/// The unit CloudWatch records (EMF `Unit`); Prometheus names carry it as a suffix instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    /// Dollars, scores: CloudWatch has no unit for them.
    None,
}

impl Unit {
    /// The EMF spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::None => "None",
        }
    }
}

/// One metric: its name, what it counts, and the dimensions every value carries.
#[derive(Debug, PartialEq)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    /// The label names, in order; every value of this metric has exactly these.
    pub dims: &'static [&'static str],
    /// Besides the full set of `dims`, the smaller sets CloudWatch also aggregates by (EMF
    /// dimension sets). `[]` is the deployment-wide total an alarm reads: CloudWatch alarms
    /// cannot sum over dimension values themselves.
    pub rollups: &'static [&'static [&'static str]],
    /// When it is emitted (docs/operations.md repeats it).
    pub help: &'static str,
}

const TOTAL: &[&[&str]] = &[&[]];

macro_rules! metric {
    ($id:ident, $name:literal, $kind:ident, $unit:ident, [$($d:literal),*], $rollups:expr, $help:literal) => {
        pub const $id: MetricDef = MetricDef {
            name: $name,
            kind: Kind::$kind,
            unit: Unit::$unit,
            dims: &[$($d),*],
            rollups: $rollups,
            help: $help,
        };
    };
}

metric!(
    RUNS_STARTED,
    "runs_started",
    Counter,
    Count,
    ["workflow"],
    TOTAL,
    "A run was created (not a replayed idempotent start)."
);
metric!(
    RUNS_ENDED,
    "runs_ended",
    Counter,
    Count,
    ["workflow", "outcome", "error_class"],
    &[&[], &["outcome"]],
    "A run ended: outcome succeeded, failed or cancelled; error_class `none` unless it failed."
);
metric!(
    RUN_DURATION,
    "run_duration_ms",
    Histogram,
    Milliseconds,
    ["workflow", "outcome"],
    TOTAL,
    "A run ended: created to ended."
);
metric!(
    STEPS_ENDED,
    "steps_ended",
    Counter,
    Count,
    ["workflow", "step", "outcome", "error_class"],
    TOTAL,
    "A step succeeded, failed or was skipped."
);
metric!(
    STEP_DURATION,
    "step_duration_ms",
    Histogram,
    Milliseconds,
    ["workflow", "step", "outcome"],
    &[],
    "A step that started ended: first start to end, waits and retries included."
);
metric!(
    PROVIDER_LATENCY,
    "provider_latency_ms",
    Histogram,
    Milliseconds,
    ["workflow", "step", "provider", "model"],
    &[],
    "A model step ended: the sum of its provider calls' latencies."
);
metric!(
    ATTEMPTS,
    "attempts",
    Counter,
    Count,
    ["workflow", "step", "provider", "model"],
    TOTAL,
    "An attempt of a step started (a model call, a job submit, a pure step's work)."
);
metric!(
    RETRIES,
    "retries",
    Counter,
    Count,
    ["workflow", "step", "provider", "model", "error_class"],
    TOTAL,
    "A failed attempt was scheduled to be tried again on the same model."
);
metric!(
    FALLBACKS,
    "fallbacks",
    Counter,
    Count,
    ["workflow", "step", "from_model", "to_model", "error_class"],
    TOTAL,
    "A step moved to its next declared model after an error."
);
metric!(
    ESCALATIONS,
    "escalations",
    Counter,
    Count,
    ["workflow", "step", "to_model"],
    TOTAL,
    "A cascade passed a tier's answer over for the next tier's (a condition, an error, a judge)."
);
metric!(
    LOST_ATTEMPTS,
    "lost_attempts",
    Counter,
    Count,
    ["workflow", "step"],
    TOTAL,
    "An attempt's worker died mid-call; the claim ran out and the attempt is retried."
);
metric!(
    FAILURES,
    "failures",
    Counter,
    Count,
    ["workflow", "step", "provider", "model", "error_class"],
    TOTAL,
    "An attempt failed, by error class (retried, fallen back or final)."
);
metric!(VALIDATION_FAILURES, "validation_failures", Counter, Count, ["workflow", "step", "source"], TOTAL,
    "An answer failed validation: source `output_schema` (a model step's schema) or `validate` (a validate step or its judge).");
metric!(
    REPAIRS,
    "repairs",
    Counter,
    Count,
    ["workflow", "step"],
    TOTAL,
    "A validate step asked its target for a repair."
);
metric!(
    JUDGE_SCORE,
    "judge_score",
    Histogram,
    None,
    ["workflow", "step"],
    &[],
    "A judge answered with a score."
);
metric!(
    JUDGE_VERDICTS,
    "judge_verdicts",
    Counter,
    Count,
    ["workflow", "step", "outcome"],
    &[],
    "A judge answered: outcome pass or fail."
);
metric!(
    TOKENS,
    "tokens",
    Counter,
    Count,
    ["workflow", "step", "provider", "model", "kind"],
    &[&[], &["kind"]],
    "A step ended: its tokens by kind (input, output, cache_read, cache_write, reasoning)."
);
metric!(
    COST,
    "cost_usd",
    Counter,
    None,
    ["workflow", "step", "provider", "model"],
    TOTAL,
    "A step ended: what its calls cost, USD (what a spend alarm sums)."
);
metric!(
    QUEUE_LAG,
    "queue_lag_ms",
    Histogram,
    Milliseconds,
    ["reason"],
    TOTAL,
    "A worker took a wake-up: from when it was due to when it was handled."
);
metric!(WEBHOOKS, "webhooks", Counter, Count, ["provider", "verdict"], TOTAL,
    "A provider callback arrived: verdict applied, progress, duplicate, stale, unauthorized, invalid or error.");
metric!(
    NOTIFICATIONS,
    "notifications",
    Counter,
    Count,
    ["outcome"],
    TOTAL,
    "A notification delivery was attempted: outcome delivered, retry, stopped (the receiver refused it for good) or gave_up (attempts used up)."
);
metric!(
    SWEEP_REWOKEN,
    "sweep_rewoken",
    Counter,
    Count,
    [],
    &[],
    "The stuck-run sweep woke a run again (its own wake-up was lost)."
);
metric!(
    COLD_STARTS,
    "cold_starts",
    Counter,
    Count,
    ["function"],
    &[],
    "A Lambda function's container served its first invocation."
);

/// Every metric, in the order docs/operations.md lists them.
pub const ALL: &[&MetricDef] = &[
    &RUNS_STARTED,
    &RUNS_ENDED,
    &RUN_DURATION,
    &STEPS_ENDED,
    &STEP_DURATION,
    &PROVIDER_LATENCY,
    &ATTEMPTS,
    &RETRIES,
    &FALLBACKS,
    &ESCALATIONS,
    &LOST_ATTEMPTS,
    &FAILURES,
    &VALIDATION_FAILURES,
    &REPAIRS,
    &JUDGE_SCORE,
    &JUDGE_VERDICTS,
    &TOKENS,
    &COST,
    &QUEUE_LAG,
    &WEBHOOKS,
    &NOTIFICATIONS,
    &SWEEP_REWOKEN,
    &COLD_STARTS,
];

/// One value of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub def: &'static MetricDef,
    /// The values of `def.dims`, in the same order.
    pub dims: Vec<String>,
    pub value: f64,
    /// The run it is about, when there is one: a property, never a dimension.
    pub run_id: Option<String>,
}

impl Metric {
    /// A value with its dimension values given in `def.dims` order.
    pub fn new(def: &'static MetricDef, dims: &[&str], value: f64) -> Metric {
        Metric {
            def,
            dims: dims.iter().map(|d| d.to_string()).collect(),
            value,
            run_id: None,
        }
    }

    pub fn for_run(mut self, run_id: &str) -> Metric {
        self.run_id = Some(run_id.to_string());
        self
    }

    /// `(dimension, value)` pairs.
    pub fn labels(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.def
            .dims
            .iter()
            .copied()
            .zip(self.dims.iter().map(String::as_str))
    }
}

/// Where metrics go: EMF on stdout in the Lambda functions, a Prometheus registry in `dev`,
/// a list in tests. Called on the engine's path right after the write it describes, so it
/// must not block: implementations buffer or update counters in memory.
pub trait MetricSink: Send + Sync {
    fn record(&self, metrics: &[Metric]);
}

/// Reports nothing: the default.
pub struct NoMetrics;

impl MetricSink for NoMetrics {
    fn record(&self, _: &[Metric]) {}
}

/// The value of a dimension that does not apply (a succeeded run's error class, a pure step's
/// model), so every value of a metric carries every dimension.
pub const NONE: &str = "none";

/// `openai` of `openai/gpt-4o-mini`; a model id always names its provider first.
pub fn provider_of(model: &str) -> &str {
    model.split_once('/').map_or(model, |(p, _)| p)
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or(NONE)
}

/// The metrics of one step write: `rec` as it was written, with the history `events` written
/// with it. A step's tokens and cost are reported once, when it ends (they are the record's
/// running totals over its attempts), so a retried or resumed write never counts them twice.
pub fn step_metrics(
    wf: &Workflow,
    run_id: &str,
    rec: &StepRecord,
    events: &[HistoryEvent],
) -> Vec<Metric> {
    let workflow = wf.name.as_str();
    let step = rec.step.as_str();
    // A validate step's failures are validation failures; a model step's `malformed` is its
    // output schema refusing the answer.
    let is_validate = matches!(wf.step(step).map(|s| &s.kind), Some(StepKind::Validate(_)));
    let model = rec.model.as_deref().unwrap_or(NONE);
    let provider = rec.model.as_deref().map_or(NONE, provider_of);
    let mut out = Vec::new();
    let mut push = |def: &'static MetricDef, dims: &[&str], value: f64| {
        out.push(Metric::new(def, dims, value).for_run(run_id));
    };
    for ev in events {
        let d = &ev.detail;
        match ev.kind {
            EventKind::StepStarted => push(&ATTEMPTS, &[workflow, step, provider, model], 1.0),
            EventKind::StepRetryScheduled => {
                let class = str_at(d, "class");
                let m = d.get("model").and_then(Value::as_str).unwrap_or(model);
                push(&RETRIES, &[workflow, step, provider_of(m), m, class], 1.0);
                push(&FAILURES, &[workflow, step, provider_of(m), m, class], 1.0);
                if class == "malformed" {
                    push(
                        &VALIDATION_FAILURES,
                        &[workflow, step, "output_schema"],
                        1.0,
                    );
                }
            }
            EventKind::StepFallback => {
                let (class, from, to) = (str_at(d, "class"), str_at(d, "from"), str_at(d, "to"));
                push(&FALLBACKS, &[workflow, step, from, to, class], 1.0);
                push(
                    &FAILURES,
                    &[workflow, step, provider_of(from), from, class],
                    1.0,
                );
                if class == "malformed" {
                    push(
                        &VALIDATION_FAILURES,
                        &[workflow, step, "output_schema"],
                        1.0,
                    );
                }
            }
            EventKind::StepEscalated => push(&ESCALATIONS, &[workflow, step, str_at(d, "to")], 1.0),
            EventKind::StepLeaseExpired => push(&LOST_ATTEMPTS, &[workflow, step], 1.0),
            EventKind::StepRepairRequested => {
                push(&REPAIRS, &[workflow, step], 1.0);
                push(&VALIDATION_FAILURES, &[workflow, step, "validate"], 1.0);
                if let Some(to) = d.get("escalated_to").and_then(Value::as_str) {
                    let target = str_at(d, "target");
                    push(&ESCALATIONS, &[workflow, target, to], 1.0);
                }
            }
            EventKind::StepJudged => {
                let pass = d.get("pass").and_then(Value::as_bool).unwrap_or(false);
                push(
                    &JUDGE_VERDICTS,
                    &[workflow, step, if pass { "pass" } else { "fail" }],
                    1.0,
                );
                if let Some(score) = d.pointer("/verdict/score").and_then(Value::as_f64) {
                    push(&JUDGE_SCORE, &[workflow, step], score);
                }
            }
            EventKind::StepSucceeded | EventKind::StepFailed | EventKind::StepSkipped => {
                let outcome = match ev.kind {
                    EventKind::StepSucceeded => "succeeded",
                    EventKind::StepFailed => "failed",
                    _ => "skipped",
                };
                let class = match ev.kind {
                    EventKind::StepFailed => str_at(d, "class"),
                    _ => NONE,
                };
                push(&STEPS_ENDED, &[workflow, step, outcome, class], 1.0);
                if ev.kind == EventKind::StepFailed {
                    push(&FAILURES, &[workflow, step, provider, model, class], 1.0);
                    if is_validate && (class == "malformed" || class == "rejected") {
                        push(&VALIDATION_FAILURES, &[workflow, step, "validate"], 1.0);
                    } else if class == "malformed" {
                        push(
                            &VALIDATION_FAILURES,
                            &[workflow, step, "output_schema"],
                            1.0,
                        );
                    }
                }
                if ev.kind == EventKind::StepSkipped {
                    continue;
                }
                if let Some(start) = rec.started_at {
                    let ms = ev.at.saturating_sub(start) as f64;
                    push(&STEP_DURATION, &[workflow, step, outcome], ms);
                }
                if rec.model.is_some() {
                    push(
                        &PROVIDER_LATENCY,
                        &[workflow, step, provider, model],
                        rec.latency_ms as f64,
                    );
                }
                if rec.cost_usd > 0.0 {
                    push(&COST, &[workflow, step, provider, model], rec.cost_usd);
                }
                for (kind, n) in token_kinds(rec) {
                    if n > 0 {
                        push(&TOKENS, &[workflow, step, provider, model, kind], n as f64);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// A record's tokens by the `kind` dimension's values. Cache and reasoning tokens are parts
/// of input and output (`Usage`), so `kind="input"` alone is every input token.
pub fn token_kinds(rec: &StepRecord) -> Vec<(&'static str, u64)> {
    rec.usage.map(|u| u.counts()).unwrap_or_default()
}

/// The metrics of a run's end (`header` as written, with its end).
pub fn run_end_metrics(header: &RunHeader) -> Vec<Metric> {
    let workflow = header.workflow.name.as_str();
    let outcome = header.status.as_str();
    let class = match header.status {
        RunStatus::Failed => header.error.as_ref().map_or(NONE, |e| e.class.as_str()),
        _ => NONE,
    };
    let mut out = vec![Metric::new(&RUNS_ENDED, &[workflow, outcome, class], 1.0)];
    if let Some(end) = header.ended_at {
        out.push(Metric::new(
            &RUN_DURATION,
            &[workflow, outcome],
            end.saturating_sub(header.created_at) as f64,
        ));
    }
    out.into_iter().map(|m| m.for_run(&header.run_id)).collect()
}

/// The lag of a wake-up that was due at `due_at` and is handled at `now`.
pub fn queue_lag(reason: &str, due_at: Millis, now: Millis) -> Metric {
    Metric::new(&QUEUE_LAG, &[reason], now.saturating_sub(due_at) as f64)
}

/// Whether a step status is one a step ends in.
pub fn ended(status: StepStatus) -> bool {
    matches!(
        status,
        StepStatus::Succeeded | StepStatus::Failed | StepStatus::Skipped
    )
}

/// Trace span names and attributes, all of them (docs/traces.md lists them with their
/// meaning): the OpenTelemetry GenAI semantic conventions where they have a name for the
/// thing (v1.41 of the GenAI conventions, development status), the general conventions
/// (`error.type`, `http.*`) next, `switchyard.*` for what neither names. The engine creates
/// `tracing` spans with these as field names; the OpenTelemetry wiring in the binaries turns
/// them into OTLP spans (`otel.*` are that bridge's instructions, not attributes).
pub mod attr {
    use crate::model::Role;

    // What the `tracing` → OpenTelemetry bridge reads off a span instead of exporting it.
    /// The span's name (a `tracing` span's own name is static).
    pub const OTEL_NAME: &str = "otel.name";
    /// `client`, `server`, `consumer`, `producer` or `internal`.
    pub const OTEL_KIND: &str = "otel.kind";
    /// `error` on a span that ended in an error (`ok` is never set: unset means fine).
    pub const OTEL_STATUS_CODE: &str = "otel.status_code";
    /// The error's message, as the span status's description.
    pub const OTEL_STATUS_DESCRIPTION: &str = "otel.status_description";

    // GenAI semantic conventions.
    pub const OPERATION_NAME: &str = "gen_ai.operation.name";
    /// Not the renamed `gen_ai.system`.
    pub const PROVIDER_NAME: &str = "gen_ai.provider.name";
    pub const REQUEST_MODEL: &str = "gen_ai.request.model";
    pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
    pub const USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    pub const USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    pub const PROMPT_NAME: &str = "gen_ai.prompt.name";
    pub const PROMPT_VERSION: &str = "gen_ai.prompt.version";
    /// The run span's workflow (v1.41; the standalone GenAI conventions v0.1 fold the
    /// workflow span into `invoke_agent` and name it `gen_ai.agent.name`).
    pub const WORKFLOW_NAME: &str = "gen_ai.workflow.name";
    /// The event a judge's verdict is reported as, with the `EVALUATION_*` attributes.
    pub const EVALUATION_RESULT: &str = "gen_ai.evaluation.result";
    pub const EVALUATION_NAME: &str = "gen_ai.evaluation.name";
    pub const EVALUATION_SCORE_VALUE: &str = "gen_ai.evaluation.score.value";
    pub const EVALUATION_SCORE_LABEL: &str = "gen_ai.evaluation.score.label";
    pub const EVALUATION_EXPLANATION: &str = "gen_ai.evaluation.explanation";

    // General semantic conventions.
    /// The error class (`transient`, `timeout`, `malformed`, … — `ErrorClass::as_str`).
    pub const ERROR_TYPE: &str = "error.type";
    pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    pub const URL_PATH: &str = "url.path";

    // Switchyard's own.
    pub const RUN_ID: &str = "switchyard.run.id";
    /// The run's status when the span ends (`running`, `waiting`, `succeeded`, …).
    pub const RUN_STATUS: &str = "switchyard.run.status";
    pub const WORKFLOW_VERSION: &str = "switchyard.workflow.version";
    /// Why the worker was woken (`start`, `timer`, `webhook`, …).
    pub const WAKE_REASON: &str = "switchyard.wake.reason";
    /// What handling the wake-up came to (`ended`, `waiting`, `yielded`, `busy`).
    pub const WAKE_OUTCOME: &str = "switchyard.wake.outcome";
    pub const STEP: &str = "switchyard.step";
    /// `model`, `validate`, `route`, `transform`, `parallel`, `approval`.
    pub const STEP_KIND: &str = "switchyard.step.kind";
    /// The planner action (`start`, `poll`, `skip`, `expire`, `approval_timeout`).
    pub const ACTION: &str = "switchyard.action";
    /// The step's status after the action (`succeeded`, `retrying`, `waiting`, `failed`, …).
    pub const STEP_STATUS: &str = "switchyard.step.status";
    /// The step's attempt number (all models).
    pub const ATTEMPT: &str = "switchyard.attempt";
    /// The model's place in the step's chain: 0 the declared model, 1 its first fallback…
    pub const MODEL_INDEX: &str = "switchyard.model.index";
    /// The model id as workflows name it (`openai/gpt-4o-mini`).
    pub const MODEL: &str = "switchyard.model";
    pub const COST_USD: &str = "switchyard.cost_usd";
    /// An asynchronous model's job id (the attempt waits for its callback).
    pub const JOB_ID: &str = "switchyard.job.id";
    /// A provider callback's verdict (`applied`, `stale`, `duplicate`, …).
    pub const WEBHOOK_VERDICT: &str = "switchyard.webhook.verdict";
    pub const NOTIFY_EVENT: &str = "switchyard.notify.event";
    pub const NOTIFY_ATTEMPT: &str = "switchyard.notify.attempt";
    /// `delivered`, `stopped`, `retry`, `gave_up`, `skipped`.
    pub const NOTIFY_OUTCOME: &str = "switchyard.notify.outcome";

    // `gen_ai.operation.name` values.
    /// The run span (`invoke_workflow {workflow}`).
    pub const OP_INVOKE_WORKFLOW: &str = "invoke_workflow";
    pub const OP_CHAT: &str = "chat";
    pub const OP_EMBEDDINGS: &str = "embeddings";
    pub const OP_RETRIEVAL: &str = "retrieval";
    pub const OP_GENERATE_CONTENT: &str = "generate_content";

    // The names of Switchyard's spans that are not GenAI operations (`{name} {what}`).
    /// `start_run {workflow}`: intake creating a run.
    pub const SPAN_START_RUN: &str = "start_run";
    /// `step {step}`: one planner action on one step.
    pub const SPAN_STEP: &str = "step";
    /// `webhook {provider}`: a provider callback.
    pub const SPAN_WEBHOOK: &str = "webhook";
    /// `notify {event}`: one notification delivery attempt.
    pub const SPAN_NOTIFY: &str = "notify";

    /// The W3C trace context header (and the run header's field keeping it).
    pub const TRACEPARENT: &str = "traceparent";

    // Resource attributes of the exporting process.
    /// `OTEL_SERVICE_NAME` when set, else `switchyard-<function>` (`switchyard-dev` locally).
    pub const SERVICE_NAME: &str = "service.name";
    /// The Lambda function's name (`AWS_LAMBDA_FUNCTION_NAME`).
    pub const FAAS_NAME: &str = "faas.name";
    pub const CLOUD_PROVIDER: &str = "cloud.provider";

    /// `gen_ai.operation.name` of a model call of this role.
    pub fn operation(role: Role) -> &'static str {
        match role {
            Role::Embedding => OP_EMBEDDINGS,
            Role::Retrieval => OP_RETRIEVAL,
            Role::Asset | Role::Transcription => OP_GENERATE_CONTENT,
            Role::Classification | Role::Extraction | Role::Generation | Role::Moderation => {
                OP_CHAT
            }
        }
    }

    /// `gen_ai.provider.name` of a Switchyard provider: the conventions' well-known value
    /// where there is one (`bedrock` → `aws.bedrock`), else the provider's own name.
    pub fn provider_name(provider: &str) -> &str {
        match provider {
            "bedrock" => "aws.bedrock",
            "gemini" => "gcp.gemini",
            "vertex" | "vertex_ai" => "gcp.vertex_ai",
            "azure_openai" => "azure.ai.openai",
            "mistral" => "mistral_ai",
            "xai" => "x_ai",
            other => other,
        }
    }

    /// The model as its provider names it: `gpt-4o-mini` of `openai/gpt-4o-mini`
    /// (`gen_ai.request.model`, `gen_ai.response.model`).
    pub fn model_name(model: &str) -> &str {
        model.split_once('/').map_or(model, |(_, m)| m)
    }

    /// `gen_ai.prompt.name` and `gen_ai.prompt.version` of a prompt's `version`:
    /// `incident-brief@2` is prompt `incident-brief`, version `2`; a version without `@`
    /// names no prompt.
    pub fn prompt_name_version(version: &str) -> (Option<&str>, &str) {
        match version.rsplit_once('@') {
            Some((name, v)) if !name.is_empty() && !v.is_empty() => (Some(name), v),
            _ => (None, version),
        }
    }

    /// A W3C `traceparent` worth keeping (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero);
    /// anything else a caller sends is dropped rather than stored with the run.
    pub fn valid_traceparent(tp: &str) -> bool {
        let parts: Vec<&str> = tp.trim().split('-').collect();
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        let zero = |s: &str| s.bytes().all(|b| b == b'0');
        matches!(parts.as_slice(), [v, t, s, f]
            if hex(v, 2) && *v != "ff" && hex(t, 32) && !zero(t) && hex(s, 16) && !zero(s) && hex(f, 2))
    }
}

#[cfg(test)]
mod tests;
