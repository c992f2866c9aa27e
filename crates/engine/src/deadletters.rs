//! Dead letters as an operator sees and acts on them: `switchyard dlq`, the operator routes
//! of the API (`/v1/ops/dead-letters…`) and the console's dead-letter page all call these.
//!
//! A dead letter is a queue message that was received too often without being acked (or
//! whose body was not a message of its queue). Each queue keeps its own ([`Inbox`]); this
//! module joins a letter to the run it is about — tenant, workflow, run status, the step the
//! run was at — so an operator sees *what* is stuck, not a message body.
//!
//! **Why redrive is safe.** Work messages are wake-ups: the worker re-plans a run from the
//! store on every one, so a wake-up put back after its cause is fixed does the run's next
//! step once, and one for a run that has ended since is acked as a no-op. Notifications carry
//! their Standard Webhooks `webhook-id`, so a receiver drops one it already has.

use crate::{Engine, EngineError};
use serde::Serialize;
use std::sync::Arc;
use switchyard_core::ports::{DeadLetter, Inbox, Message, QueueName};
use switchyard_core::state::{RunSnapshot, RunStatus, StepStatus};
use switchyard_core::Millis;

/// Most dead letters one listing returns (newest kept when there are more). A DLQ that
/// holds more needs its cause fixed, then `redrive --all`, not paging.
pub const MAX_LISTED: usize = 1_000;

/// The receiving sides of both queues, which hold the dead letters.
#[derive(Clone)]
pub struct Inboxes {
    pub work: Arc<dyn Inbox>,
    pub notify: Arc<dyn Inbox>,
}

impl Inboxes {
    fn of(&self, q: QueueName) -> &Arc<dyn Inbox> {
        match q {
            QueueName::Work => &self.work,
            QueueName::Notify => &self.notify,
        }
    }
}

/// One dead letter with the run it is about.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetterView {
    /// The message's id on its dead-letter queue (what `redrive` takes).
    pub id: String,
    /// `work` or `notify`.
    pub queue: String,
    /// What the message is: `wake-up (timer)`, `notification run.failed (attempt 3)`, or
    /// `unreadable body` when it could not be read as a message of its queue.
    pub message: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// Deliveries before it was dead-lettered.
    pub receive_count: u32,
    /// When it was dead-lettered (ms since the Unix epoch).
    pub failed_at: Millis,
    /// The run it is about, when the body names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// The run's status now (`None` when the run is not in the store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_status: Option<RunStatus>,
    /// The step(s) the run is at (in flight, retrying or waiting; comma-separated), or, when
    /// none is, the step that ended last (a failed run's failed step, a decided approval).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The raw body, in [`show`] only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Dead letters of one queue, or of both (work first), oldest first within a queue.
pub async fn list(
    engine: &Engine,
    inboxes: &Inboxes,
    queue: Option<QueueName>,
) -> Result<Vec<DeadLetterView>, EngineError> {
    let mut out = Vec::new();
    for q in queues(queue) {
        let mut letters = inboxes.of(q).dead_letters().await?;
        if letters.len() > MAX_LISTED {
            letters.drain(..letters.len() - MAX_LISTED);
        }
        for l in letters {
            out.push(view(engine, q, l, false).await);
        }
    }
    Ok(out)
}

/// One dead letter with its raw body; `NotFound` when no queue holds `id`.
pub async fn show(
    engine: &Engine,
    inboxes: &Inboxes,
    queue: Option<QueueName>,
    id: &str,
) -> Result<DeadLetterView, EngineError> {
    for q in queues(queue) {
        if let Some(l) = inboxes
            .of(q)
            .dead_letters()
            .await?
            .into_iter()
            .find(|l| l.id == id)
        {
            return Ok(view(engine, q, l, true).await);
        }
    }
    Err(EngineError::NotFound(format!("no dead letter {id}")))
}

/// What a redrive did, per queue.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Redriven {
    /// Messages put back on the work queue.
    pub work: usize,
    /// Messages put back on the notify queue.
    pub notify: usize,
    /// Listed ids that no dead-letter queue held (already redriven, or never there).
    pub not_found: Vec<String>,
}

/// Puts dead letters back on their queue, visible now with a fresh receive count: all of
/// them (`ids` = `None`) or the listed ones, on one queue or both.
pub async fn redrive(
    inboxes: &Inboxes,
    queue: Option<QueueName>,
    ids: Option<&[String]>,
) -> Result<Redriven, EngineError> {
    let mut done = Redriven {
        work: 0,
        notify: 0,
        not_found: Vec::new(),
    };
    let mut left: Vec<String> = ids.map(<[String]>::to_vec).unwrap_or_default();
    for q in queues(queue) {
        let inbox = inboxes.of(q);
        let moved = match ids {
            None => inbox.redrive(None).await?,
            Some(_) if left.is_empty() => 0,
            Some(_) => {
                let here: Vec<String> = inbox
                    .dead_letters()
                    .await?
                    .into_iter()
                    .map(|l| l.id)
                    .filter(|id| left.contains(id))
                    .collect();
                left.retain(|id| !here.contains(id));
                if here.is_empty() {
                    0
                } else {
                    inbox.redrive(Some(&here)).await?
                }
            }
        };
        match q {
            QueueName::Work => done.work = moved,
            QueueName::Notify => done.notify = moved,
        }
    }
    done.not_found = left;
    Ok(done)
}

fn queues(queue: Option<QueueName>) -> Vec<QueueName> {
    queue.map_or_else(|| QueueName::ALL.to_vec(), |q| vec![q])
}

async fn view(engine: &Engine, q: QueueName, l: DeadLetter, with_body: bool) -> DeadLetterView {
    let parsed = Message::from_body(q, &l.body).ok();
    let message = match &parsed {
        Some(Message::Wake(w)) => format!("wake-up ({})", w.reason.as_str()),
        Some(Message::Notify(n)) => {
            format!(
                "notification {} (attempt {})",
                n.event.as_str(),
                n.attempt + 1
            )
        }
        None => "unreadable body".to_string(),
    };
    let run_id = parsed.as_ref().map(|m| m.run_id().to_string());
    // A run that cannot be read now (the store is failing for it, which may be why the
    // letter is here) still lists its letter, without the run's details.
    let snapshot = match &run_id {
        Some(id) => engine.store.load(id).await.unwrap_or_else(|e| {
            tracing::warn!(run_id = %id, error = %e, "dead letter: the run could not be read");
            None
        }),
        None => None,
    };
    DeadLetterView {
        id: l.id,
        queue: q.as_str().to_string(),
        message,
        reason: l.reason,
        receive_count: l.receive_count,
        failed_at: l.failed_at,
        run_id,
        tenant: snapshot.as_ref().map(|s| s.header.tenant.clone()),
        workflow: snapshot.as_ref().map(|s| s.header.workflow.name.clone()),
        run_status: snapshot.as_ref().map(|s| s.header.status),
        step: snapshot.as_ref().and_then(at_step),
        body: with_body.then_some(l.body),
    }
}

/// The steps a run is at: those in flight (running, retrying, waiting); when none is, the
/// step that ended last (a failed run's failed step, a decided gate). Steps the run has not
/// reached have no record, so a run stuck before its first step shows none.
fn at_step(s: &RunSnapshot) -> Option<String> {
    let open: Vec<&str> = s
        .steps
        .iter()
        .filter(|r| !r.status.is_terminal() && r.status != StepStatus::Pending)
        .map(|r| r.step.as_str())
        .collect();
    if !open.is_empty() {
        return Some(open.join(","));
    }
    s.steps
        .iter()
        .filter(|r| r.status.is_terminal() && r.status != StepStatus::Skipped)
        .max_by_key(|r| (r.finished_at, r.status == StepStatus::Failed))
        .map(|r| r.step.clone())
}
