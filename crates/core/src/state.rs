//! Persisted run state, shaped for DynamoDB from the first day (docs/architecture.md#decisions): a
//! small run header, one record per step, and append-only history events, each written on its own
//! with its own condition. Loading a run is "header + step records"; steps without a record are
//! pending.

use crate::error::StepError;
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A value kept inline in a record, or in the blob store by content hash when it is larger
/// than the inline threshold (DynamoDB items are capped at 400 KB, SQS messages at 1 MiB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ValueRef {
    Inline { value: Value },
    Blob { key: String, bytes: u64 },
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Created, not yet picked up by a worker.
    Pending,
    /// A worker is executing steps.
    Running,
    /// Nothing can happen until a time passes or an outside event arrives.
    Waiting,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// What a waiting run waits for. `Approval` and `Callback` are outside the process; `Timer`
/// (retry backoff, polling, a local job) is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    Timer,
    Approval,
    Callback,
}

/// The error a run ended with.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunError {
    pub class: crate::error::ErrorClass,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// The pinned identity of the workflow definition a run started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowPin {
    pub name: String,
    pub version: String,
    /// sha256 of the canonical JSON of the compiled definition; the definition itself is stored
    /// in the blob store under this key so a resumed run uses exactly what it started with.
    pub hash: String,
}

/// The run header: small, written when the run starts, when a worker takes its lease, and when
/// its status changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunHeader {
    pub run_id: String,
    pub tenant: String,
    pub workflow: WorkflowPin,
    pub status: RunStatus,
    pub input: ValueRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<ValueRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    pub created_at: Millis,
    pub updated_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Millis>,
    /// Run-level deadline (the workflow's `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitInfo>,
    #[serde(default)]
    pub cancel_requested: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub metadata: Value,
    /// The W3C trace context of the span that created the run (intake's, under the caller's
    /// `traceparent`): every later span of the run — worker, webhook, notifier — is its child,
    /// so one run is one trace (docs/traces.md). Absent when traces are not exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// A rerun: the run it reruns and the step it reruns from (`crate::rerun`). Its first
    /// activation copies the old run's results of the steps it does not rerun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<RerunOf>,
    /// The reruns of this run, oldest first (kept on the old run so it links both ways).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reruns: Vec<String>,
    /// Optimistic-concurrency version; every write of the header increments it.
    pub version: u64,
}

/// What a rerun reruns: `run_id` from step `from` (that step and every step that depends on
/// it); the other steps that succeeded there are reused (`crate::rerun`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RerunOf {
    pub run_id: String,
    pub from: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitInfo {
    pub reason: WaitReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    pub until: Millis,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// No attempt yet (also the meaning of a missing record).
    Pending,
    /// An attempt is in flight under a lease.
    Running,
    /// Failed, with another attempt scheduled at `next_at`. With a `download`, the job is
    /// done and only its output file's download is scheduled at `next_at`.
    Retrying,
    /// Waiting for a callback, a poll time, or an approval.
    Waiting,
    Succeeded,
    Failed,
    Skipped,
}

impl StepStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded | StepStatus::Failed | StepStatus::Skipped
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Retrying => "retrying",
            StepStatus::Waiting => "waiting",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
        }
    }
}

/// Token usage, normalized across providers: one meaning whatever the API counted.
///
/// - `input_tokens` is **every** input token of the call: the uncached ones plus those read
///   from and written to the provider's prompt cache. OpenAI's `prompt_tokens` already counts
///   its cached tokens; Anthropic's `input_tokens` and Bedrock Converse's `inputTokens` do not
///   (their cache reads and writes come beside them), so those adapters add them in.
/// - `cache_read_tokens` and `cache_write_tokens` are the parts of `input_tokens` read from
///   and written to the prompt cache (OpenAI `prompt_tokens_details.cached_tokens`; Anthropic
///   `cache_read_input_tokens` / `cache_creation_input_tokens`; Bedrock
///   `cacheReadInputTokens` / `cacheWriteInputTokens`). OpenAI reports no writes.
/// - `output_tokens` is every output token, reasoning included; `reasoning_tokens` is the
///   part of it the model spent reasoning (OpenAI `completion_tokens_details.reasoning_tokens`;
///   Anthropic and Bedrock do not report it apart).
///
/// The three parts are 0 when the provider did not report them, and are then left out of the
/// stored record (so records written before they existed read back the same).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Every input token: uncached, read from the prompt cache and written to it.
    pub input_tokens: u64,
    /// Every output token, reasoning included.
    pub output_tokens: u64,
    /// Of `input_tokens`: read from the provider's prompt cache.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub cache_read_tokens: u64,
    /// Of `input_tokens`: written to the provider's prompt cache.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub cache_write_tokens: u64,
    /// Of `output_tokens`: spent on reasoning the answer does not show.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Plain input and output counts (nothing cached, no reasoning reported).
    pub fn new(input_tokens: u64, output_tokens: u64) -> Usage {
        Usage {
            input_tokens,
            output_tokens,
            ..Usage::default()
        }
    }

    /// The input tokens billed at the plain input price: neither read from the cache nor
    /// written to it.
    pub fn uncached_input_tokens(&self) -> u64 {
        self.input_tokens.saturating_sub(
            self.cache_read_tokens
                .saturating_add(self.cache_write_tokens),
        )
    }

    /// What this usage costs at `prices` (USD): uncached input at the input price, cache
    /// reads and writes at their own prices (the input price where there is none), and every
    /// output token, reasoning included, at the output price.
    pub fn cost_usd(&self, prices: &TokenPrices) -> f64 {
        let per = |tokens: u64, per_mtok: f64| tokens as f64 * per_mtok / 1e6;
        per(self.uncached_input_tokens(), prices.input_per_mtok)
            + per(
                self.cache_read_tokens,
                prices.cache_read_per_mtok.unwrap_or(prices.input_per_mtok),
            )
            + per(
                self.cache_write_tokens,
                prices.cache_write_per_mtok.unwrap_or(prices.input_per_mtok),
            )
            + per(self.output_tokens, prices.output_per_mtok)
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;

    /// Field by field (the usage of several calls together); saturating.
    fn add(self, o: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_add(o.input_tokens),
            output_tokens: self.output_tokens.saturating_add(o.output_tokens),
            cache_read_tokens: self.cache_read_tokens.saturating_add(o.cache_read_tokens),
            cache_write_tokens: self.cache_write_tokens.saturating_add(o.cache_write_tokens),
            reasoning_tokens: self.reasoning_tokens.saturating_add(o.reasoning_tokens),
        }
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        *self = *self + o;
    }
}

impl std::iter::Sum for Usage {
    fn sum<I: Iterator<Item = Usage>>(iter: I) -> Usage {
        iter.fold(Usage::default(), |a, b| a + b)
    }
}

/// A token-priced model's list prices, USD per million tokens (the price table's entry).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenPrices {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// Input read from the prompt cache; `None`: the input price.
    pub cache_read_per_mtok: Option<f64>,
    /// Input written to the prompt cache; `None`: the input price.
    pub cache_write_per_mtok: Option<f64>,
}

impl Usage {
    /// Every token count by a short name, for sums that follow the fields (`crate::stats`
    /// keeps one counter per name: `t.input`, `t.cache_read`…; the `tokens` metric's `kind`).
    /// Cache counts are parts of `input`, reasoning a part of `output`. A new field belongs
    /// here too.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("input", self.input_tokens),
            ("output", self.output_tokens),
            ("cache_read", self.cache_read_tokens),
            ("cache_write", self.cache_write_tokens),
            ("reasoning", self.reasoning_tokens),
        ]
    }
}

/// A job handed to an asynchronous provider; the result arrives by webhook or by polling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    pub provider: String,
    pub model: String,
    pub job_id: String,
    /// Per-attempt secret the callback must echo, on top of the webhook signature.
    pub callback_token: String,
}

/// The decision taken on an approval gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalDecision {
    pub approved: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub decided_at: Millis,
}

/// One record per step. Written with a condition on its own `version`, so two workers can never
/// both checkpoint the same attempt, and a worker whose lease expired cannot overwrite a newer
/// attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: String,
    pub status: StepStatus,
    /// Attempts started so far, over all models (1 for the first attempt).
    pub attempt: u32,
    /// Attempts started on the current model of the fallback chain.
    #[serde(default)]
    pub model_attempt: u32,
    /// Index in the chain `[model, fallback...]` currently used.
    #[serde(default)]
    pub model_index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    /// Retrying: when the next attempt may start. Waiting on a job: when to poll next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<Millis>,
    /// Running: the claim expires then, and the attempt counts as lost (worker died).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
    /// Waiting: the wait ends with a `timeout` error then. Otherwise: the step's overall deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<ValueRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
    /// For route steps: the target chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_request_id: Option<String>,
    /// Sum of the latency of every attempt's provider call.
    #[serde(default)]
    pub latency_ms: u64,
    /// Sum of the cost of every attempt.
    #[serde(default)]
    pub cost_usd: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub fallback_used: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobRef>,
    /// Errors the next attempt should be told about (repair of malformed or invalid output).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feedback: Vec<String>,
    /// Validate steps: repairs requested so far.
    #[serde(default)]
    pub repairs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalDecision>,
    /// Cascade steps: each move to the next tier, oldest first (`crate::machine::cascade`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalations: Vec<Escalation>,
    /// Cascade steps: what the cascade's top model would have charged, at the price table's
    /// rates, for the calls the step made — the cost of "always use the top model".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_usd: Option<f64>,
    /// Steps with `select`: the model chosen and why (`crate::machine::cascade::select`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected: Option<Selection>,
    /// Attempts lost to the platform (their worker died before checkpointing): retried
    /// without spending the model's attempts, at most `settle::MAX_LOST_ATTEMPTS` times.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost: u32,
    /// Asset steps: the finished job's result while its output file is not kept yet. Its
    /// download is an action of its own, retried on its own (`crate::asset`); the job is
    /// never run again for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<AssetDownload>,
    /// Validate steps with a judge: the score of the last verdict (`crate::machine::judge`), which
    /// stats average per step, model and prompt version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_score: Option<f64>,
    /// Reused by a rerun: the result is the one this run id recorded (`crate::rerun`); this
    /// run neither ran nor paid for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    /// Blob keys of this step's recorded provider exchanges, one per call, oldest first —
    /// kept when the workflow's `tape: true` or the deployment's `SWITCHYARD_TAPES=1` asks
    /// for it (`switchyard runs replay` serves unchanged calls from them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tapes: Vec<String>,
    pub version: u64,
}

/// A finished asset job whose file still has to be downloaded and kept (`crate::asset`).
/// The job's cost is already in the record's `cost_usd`; what is left is the download.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssetDownload {
    /// The job's normalized output as the provider gave it: `url` is the file to download.
    pub output: Value,
    /// The model that made it: its provider downloads the file (`Provider::fetch_asset`).
    pub model: String,
    /// Downloads tried and failed so far.
    #[serde(default)]
    pub failed: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// A cascade's move from one tier to the next: which model answered, which one is asked
/// next, and the declared condition that held (or the error or judge that sent it on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    pub from: String,
    pub to: String,
    /// `output.confidence 0.55 < 0.8`, `judge on check: …`, `transient: …`.
    pub reason: String,
    /// What the tier that was passed over cost (its answer is kept in the history only).
    #[serde(default)]
    pub cost_usd: f64,
    pub at: Millis,
}

/// The model a `select` list chose for a step, and the case that chose it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub model: String,
    /// `estimate_usd 0.0012 <= 0.002`, `input.tier = "premium"`, `default`.
    pub reason: String,
    /// The price table's estimate of the chosen model's call.
    #[serde(default)]
    pub estimate_usd: f64,
}

impl StepRecord {
    /// A fresh pending record (version 0 means "not stored yet").
    pub fn pending(step: &str) -> StepRecord {
        StepRecord {
            step: step.to_string(),
            status: StepStatus::Pending,
            attempt: 0,
            model_attempt: 0,
            model_index: 0,
            started_at: None,
            finished_at: None,
            next_at: None,
            lease_until: None,
            lease_owner: None,
            deadline_at: None,
            output: None,
            error: None,
            chosen: None,
            provider: None,
            model: None,
            prompt_version: None,
            provider_request_id: None,
            latency_ms: 0,
            cost_usd: 0.0,
            usage: None,
            fallback_used: false,
            sources: Vec::new(),
            job: None,
            feedback: Vec::new(),
            repairs: 0,
            approval: None,
            escalations: Vec::new(),
            baseline_usd: None,
            lost: 0,
            selected: None,
            download: None,
            judge_score: None,
            reused_from: None,
            tapes: Vec::new(),
            version: 0,
        }
    }
}

/// What a run looks like when loaded: the header and the step records that exist.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSnapshot {
    pub header: RunHeader,
    pub steps: Vec<StepRecord>,
}

impl RunSnapshot {
    pub fn step(&self, id: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.step == id)
    }

    /// Replaces (or adds) a step record in memory after a successful write.
    pub fn upsert(&mut self, record: StepRecord) {
        match self.steps.iter_mut().find(|s| s.step == record.step) {
            Some(slot) => *slot = record,
            None => self.steps.push(record),
        }
    }

    /// Total cost so far, summed from step records.
    pub fn cost_usd(&self) -> f64 {
        self.steps.iter().map(|s| s.cost_usd).sum()
    }

    /// Tokens so far, summed from step records (steps that reported none add nothing).
    pub fn usage(&self) -> Usage {
        self.steps.iter().filter_map(|s| s.usage).sum()
    }
}

/// One entry of a run's append-only history.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub at: Millis,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

impl HistoryEvent {
    pub fn run(at: Millis, kind: EventKind, detail: Value) -> HistoryEvent {
        HistoryEvent {
            at,
            kind,
            step: None,
            attempt: None,
            detail,
        }
    }

    pub fn step(at: Millis, kind: EventKind, step: &str, attempt: u32, detail: Value) -> Self {
        HistoryEvent {
            at,
            kind,
            step: Some(step.to_string()),
            attempt: Some(attempt),
            detail,
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    RunCreated,
    RunWaiting,
    RunSucceeded,
    RunFailed,
    RunCancelRequested,
    RunCancelled,
    LeaseTakenOver,
    StepStarted,
    StepSucceeded,
    StepFailed,
    StepRetryScheduled,
    StepFallback,
    /// A cascade passed a tier's answer over for the next tier's (`crate::machine::cascade`).
    StepEscalated,
    StepWaiting,
    StepSkipped,
    StepLeaseExpired,
    StepRepairRequested,
    /// A validate step's judge answered: its verdict (`pass`, `score`, `reasons`).
    StepJudged,
    WebhookReceived,
    JobPolled,
    /// An asset job's output file is to be downloaded (`download`: which one, 1 for the
    /// first; `delay_ms`; `host`; for a later one the `class` and `message` of the failure
    /// before it). The job is done: only the download is tried again.
    AssetDownloadScheduled,
    ApprovalDecided,
    /// One delivery attempt of a notification to the run's `callback_url`.
    NotificationAttempted,
    /// A rerun took this step's result from the run it reruns (`from_run`) instead of running
    /// it (`crate::rerun`).
    StepReused,
    /// This run was rerun: `rerun` is the new run, `from` the step it reruns from.
    RunRerun,
}

/// Why a worker is asked to look at a run. Messages are wake-ups, not state: the worker
/// re-plans from the store every time, so a duplicated or late wake-up is harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WakeReason {
    Start,
    Resume,
    Retry,
    Webhook,
    Approval,
    Timer,
    Cancel,
    /// Sent by the stuck-run sweep (`crate::recovery`): the run's own wake-up was lost, so
    /// this one stands in for its timer as well.
    Recover,
}

impl WakeReason {
    /// The wire name (`start`, `timer`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            WakeReason::Start => "start",
            WakeReason::Resume => "resume",
            WakeReason::Retry => "retry",
            WakeReason::Webhook => "webhook",
            WakeReason::Approval => "approval",
            WakeReason::Timer => "timer",
            WakeReason::Cancel => "cancel",
            WakeReason::Recover => "recover",
        }
    }

    /// Whether this wake-up may be the run's timer (a timer, a resume after a yield, or the
    /// sweep standing in for a lost one): parking after it must queue the next timer, since
    /// the one the header names is spent.
    pub fn may_be_timer(self) -> bool {
        matches!(
            self,
            WakeReason::Timer | WakeReason::Resume | WakeReason::Recover
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeUp {
    pub run_id: String,
    pub reason: WakeReason,
    /// When the sender meant it to be handled (sent + its delay): the worker reports the
    /// queue's lag from it (`queue_lag_ms`). Absent in wake-ups from older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<Millis>,
}

/// What a notification tells the run's `callback_url` (the Standard Webhooks event type).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NotifyEvent {
    #[serde(rename = "run.succeeded")]
    RunSucceeded,
    #[serde(rename = "run.failed")]
    RunFailed,
    #[serde(rename = "run.cancelled")]
    RunCancelled,
    #[serde(rename = "run.waiting_for_approval")]
    RunWaitingForApproval,
}

impl NotifyEvent {
    /// The event type as it appears on the wire (`run.succeeded`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::RunSucceeded => "run.succeeded",
            NotifyEvent::RunFailed => "run.failed",
            NotifyEvent::RunCancelled => "run.cancelled",
            NotifyEvent::RunWaitingForApproval => "run.waiting_for_approval",
        }
    }
}

/// A message on the notify queue: tell a run's caller what happened. It carries only
/// identities; the notifier reads the run's state when it delivers, so a message stays small
/// whatever the output's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub run_id: String,
    pub event: NotifyEvent,
    /// Standard Webhooks `webhook-id`: the same for every delivery attempt of this
    /// notification, so a receiver can drop a repeat.
    pub webhook_id: String,
    /// Delivery attempts made before this message was sent (0 the first time).
    #[serde(default)]
    pub attempt: u32,
}

impl Notification {
    /// The notification of `event` for a run; `about` tells apart two notifications of one
    /// event type in one run (the approval step and its attempt). The `webhook-id` is derived
    /// from these, so re-queueing the same notification (after a crash, a duplicate wake-up)
    /// gives the receiver the same id to drop it by.
    pub fn new(run_id: &str, event: NotifyEvent, about: &str) -> Notification {
        let digest = crate::sha256_hex(format!("{run_id}\n{}\n{about}", event.as_str()).as_bytes());
        Notification {
            run_id: run_id.to_string(),
            event,
            webhook_id: format!("msg_{}", &digest[..32]),
            attempt: 0,
        }
    }
}

/// Whose runs a listing covers. There is no default: a tenant's view and an operator's view
/// of every tenant are different calls, and code that serves a tenant must say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListScope {
    /// One tenant's runs (the HTTP API: the caller's tenant).
    Tenant(String),
    /// Every tenant's runs: operators and the local CLI only.
    AllTenants,
}

impl ListScope {
    /// The tenant to filter by, if any.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            ListScope::Tenant(t) => Some(t),
            ListScope::AllTenants => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn usage(input: u64, output: u64, read: u64, write: u64, reasoning: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: read,
            cache_write_tokens: write,
            reasoning_tokens: reasoning,
        }
    }

    #[test]
    fn usage_prices_cached_input_at_the_cache_prices() {
        // Claude 3.5 Haiku's list prices: input 0.80, output 4.00, cache write 1.00, read 0.08.
        let haiku = TokenPrices {
            input_per_mtok: 0.80,
            output_per_mtok: 4.00,
            cache_read_per_mtok: Some(0.08),
            cache_write_per_mtok: Some(1.00),
        };
        // A table without cache prices: cached input at the input price.
        let plain = TokenPrices {
            input_per_mtok: 0.80,
            output_per_mtok: 4.00,
            ..TokenPrices::default()
        };
        let m = 1_000_000;
        // (usage, prices, uncached input, USD)
        let table = [
            (Usage::new(m, m), haiku, m, 4.80),
            // 1M in of which 0.5M read from the cache: 0.5 × 0.80 + 0.5 × 0.08.
            (usage(m, 0, m / 2, 0, 0), haiku, m / 2, 0.44),
            // Written to the cache: dearer than plain input.
            (usage(m, 0, 0, m, 0), haiku, 0, 1.00),
            // All three kinds of input, and reasoning (billed as output, not on top of it).
            (
                usage(3 * m, m, m, m, m / 2),
                haiku,
                m,
                0.80 + 0.08 + 1.00 + 4.00,
            ),
            // No cache prices in the table: every input token at the input price.
            (usage(3 * m, m, m, m, 0), plain, m, 3.0 * 0.80 + 4.00),
            // Counts that do not add up (more cached than input) never go below zero.
            (usage(10, 0, 20, 0, 0), plain, 0, 20.0 * 0.80 / 1e6),
            (Usage::default(), haiku, 0, 0.0),
        ];
        for (i, (u, prices, uncached, want)) in table.into_iter().enumerate() {
            assert_eq!(u.uncached_input_tokens(), uncached, "case {i}");
            let got = u.cost_usd(&prices);
            assert!((got - want).abs() < 1e-12, "case {i}: {got} != {want}");
        }
    }

    #[test]
    fn usage_adds_field_by_field() {
        let a = usage(100, 10, 50, 0, 4);
        let b = usage(30, 5, 0, 30, 0);
        assert_eq!(a + b, usage(130, 15, 50, 30, 4));
        let mut c = a;
        c += b;
        assert_eq!(c, a + b);
        assert_eq!([a, b, Usage::default()].into_iter().sum::<Usage>(), a + b);
        assert_eq!(
            usage(u64::MAX, 1, 0, 0, 0) + usage(1, 1, 0, 0, 0),
            usage(u64::MAX, 2, 0, 0, 0)
        );
    }

    #[test]
    fn usage_records_stay_small_and_old_ones_still_load() {
        // (usage, its stored JSON)
        let table = [
            (
                Usage::new(12, 3),
                serde_json::json!({"input_tokens": 12, "output_tokens": 3}),
            ),
            (
                usage(12, 3, 8, 0, 2),
                serde_json::json!({"input_tokens": 12, "output_tokens": 3,
                    "cache_read_tokens": 8, "reasoning_tokens": 2}),
            ),
            (
                usage(12, 3, 0, 9, 0),
                serde_json::json!({"input_tokens": 12, "output_tokens": 3, "cache_write_tokens": 9}),
            ),
        ];
        for (u, stored) in table {
            assert_eq!(serde_json::to_value(u).unwrap(), stored);
            assert_eq!(serde_json::from_value::<Usage>(stored).unwrap(), u);
        }
    }

    #[test]
    fn a_snapshot_sums_the_usage_of_its_steps() {
        let header = RunHeader {
            run_id: "r".into(),
            tenant: "t".into(),
            workflow: WorkflowPin {
                name: "wf".into(),
                version: "1".into(),
                hash: "h".into(),
            },
            status: RunStatus::Running,
            input: ValueRef::Inline { value: Value::Null },
            output: None,
            error: None,
            created_at: 0,
            updated_at: 0,
            ended_at: None,
            deadline_at: None,
            wait: None,
            cancel_requested: false,
            lease: None,
            callback_url: None,
            metadata: Value::Null,
            traceparent: None,
            rerun_of: None,
            reruns: Vec::new(),
            version: 1,
        };
        let mut a = StepRecord::pending("a");
        a.usage = Some(usage(100, 20, 64, 0, 8));
        let b = StepRecord::pending("b");
        let mut c = StepRecord::pending("c");
        c.usage = Some(usage(10, 2, 0, 5, 0));
        let snap = RunSnapshot {
            header,
            steps: vec![a, b, c],
        };
        assert_eq!(snap.usage(), usage(110, 22, 64, 5, 8));
    }
}
