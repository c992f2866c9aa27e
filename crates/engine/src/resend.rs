//! Resending a notification that gave up: the console's **resend** button and
//! `POST /v1/runs/{id}/notifications/{webhook_id}/resend`.
//!
//! A notification gives up when its receiver kept failing past the attempts the notifier
//! allows (or its address is refused by policy); the notify queue then dead-letters it. Once
//! the receiver is fixed, someone who owns the run can send it again without an operator's
//! redrive: this queues the same notification afresh (`attempt: 0`, so it gets the full
//! retry schedule again) with the **same `webhook_id`**, so a receiver that did get it after
//! all drops the repeat, and the notifier itself skips one already delivered.
//!
//! Only a notification whose *last* attempt gave up can be resent: one delivered, stopped by
//! its receiver (410) or still being retried is a `Conflict`, so resend never races the
//! notifier's own retries. The dead letter, if any, is left where it is: redriving it later
//! is harmless for the same reasons.

use crate::notifier::NotificationAttempt;
use crate::{Engine, EngineError};
use serde::Serialize;
use switchyard_core::ports::Message;
use switchyard_core::state::{Notification, NotifyEvent};

/// What a resend queued.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resent {
    pub run_id: String,
    /// The notification's Standard Webhooks `webhook-id`, unchanged.
    pub webhook_id: String,
    /// `run.succeeded`, `run.failed`, `run.cancelled` or `run.waiting_for_approval`.
    pub event: String,
    /// Always `true`: the notification is on the notify queue again.
    pub queued: bool,
}

/// Whether the last of `attempts` for `webhook_id` gave up; `None` when it has none.
pub fn gave_up(attempts: &[NotificationAttempt], webhook_id: &str) -> Option<bool> {
    attempts
        .iter()
        .rev()
        .find(|a| a.webhook_id == webhook_id)
        .map(|a| a.outcome == "gave_up")
}

impl Engine {
    /// Queues again the notification `webhook_id` of run `run_id`, as `tenant` sees the run
    /// (`None`: an operator or the local CLI). `NotFound` when the run (for this tenant) or a
    /// notification with this id does not exist; `Conflict` unless its last attempt gave up.
    pub async fn resend_notification(
        &self,
        tenant: Option<&str>,
        run_id: &str,
        webhook_id: &str,
    ) -> Result<Resent, EngineError> {
        self.load_for(tenant, run_id).await?;
        let attempts = NotificationAttempt::from_history(&self.store.events(run_id).await?);
        let last = attempts
            .iter()
            .rev()
            .find(|a| a.webhook_id == webhook_id)
            .ok_or_else(|| {
                EngineError::NotFound(format!("run `{run_id}` has no notification `{webhook_id}`"))
            })?;
        if last.outcome != "gave_up" {
            return Err(EngineError::Conflict(format!(
                "notification `{webhook_id}` did not give up (its last attempt: {}); only one that gave up is resent",
                last.outcome
            )));
        }
        let event: NotifyEvent =
            serde_json::from_value(serde_json::Value::String(last.event.clone())).map_err(|e| {
                EngineError::Internal(format!(
                    "notification `{webhook_id}` has an unknown event `{}`: {e}",
                    last.event
                ))
            })?;
        let n = Notification {
            run_id: run_id.to_string(),
            event,
            webhook_id: webhook_id.to_string(),
            attempt: 0,
        };
        self.queue.send(&Message::Notify(n), 0).await?;
        tracing::info!(
            run_id,
            webhook_id,
            event = event.as_str(),
            "notification resent"
        );
        Ok(Resent {
            run_id: run_id.to_string(),
            webhook_id: webhook_id.to_string(),
            event: event.as_str().to_string(),
            queued: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(id: &str, outcome: &str) -> NotificationAttempt {
        NotificationAttempt {
            webhook_id: id.into(),
            event: "run.succeeded".into(),
            attempt: 1,
            at: 0,
            status: None,
            error: None,
            latency_ms: 0,
            outcome: outcome.into(),
        }
    }

    #[test]
    fn only_the_last_attempt_of_that_notification_counts() {
        let a = [
            attempt("msg_a", "retry"),
            attempt("msg_b", "gave_up"),
            attempt("msg_a", "gave_up"),
            attempt("msg_b", "delivered"),
        ];
        // (webhook id, want)
        let table = [
            ("msg_a", Some(true)),
            ("msg_b", Some(false)),
            ("msg_c", None),
        ];
        for (id, want) in table {
            assert_eq!(gave_up(&a, id), want, "{id}");
        }
    }
}
