//! Persisted run state, shaped for DynamoDB from the first day (DESIGN §7): a small run header,
//! one record per step, and append-only history events, each written on its own with its own
//! condition. Loading a run is "header + step records"; steps without a record are pending.

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
    /// Optimistic-concurrency version; every write of the header increments it.
    pub version: u64,
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
    /// Failed, with another attempt scheduled at `next_at`.
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

/// Token usage, normalized across providers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
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
    /// Cascade steps: each move to the next tier, oldest first (`crate::cascade`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalations: Vec<Escalation>,
    /// Cascade steps: what the cascade's top model would have charged, at the price table's
    /// rates, for the calls the step made — the cost of "always use the top model".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_usd: Option<f64>,
    /// Steps with `select`: the model chosen and why (`crate::cascade::select`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected: Option<Selection>,
    /// Attempts lost to the platform (their worker died before checkpointing): retried
    /// without spending the model's attempts, at most `settle::MAX_LOST_ATTEMPTS` times.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost: u32,
    pub version: u64,
}

fn is_zero(n: &u32) -> bool {
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
    /// A cascade passed a tier's answer over for the next tier's (`crate::cascade`).
    StepEscalated,
    StepWaiting,
    StepSkipped,
    StepLeaseExpired,
    StepRepairRequested,
    /// A validate step's judge answered: its verdict (`pass`, `score`, `reasons`).
    StepJudged,
    WebhookReceived,
    JobPolled,
    ApprovalDecided,
    /// One delivery attempt of a notification to the run's `callback_url`.
    NotificationAttempted,
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
