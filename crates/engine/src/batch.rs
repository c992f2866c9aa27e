//! SQS batches, as the worker and notifier Lambda functions receive them: records handled
//! concurrently, and the ids of the records that must come back reported as
//! `batchItemFailures` (`ReportBatchItemFailures`), so a failure in one record does not
//! redeliver the others. Records of one run are handled once ([`switchyard_core::batch`]).
//! A body that is not a message of its queue is reported failed: after the queue's
//! `maxReceiveCount` deliveries SQS moves it to the dead-letter queue.

use crate::notifier::{disposition, Disposition};
use crate::worker::Handled;
use crate::{Engine, EngineError};
use futures::future::join_all;
use switchyard_core::ports::{CallbackSender, Inbox, Message, QueueName};
use switchyard_core::Millis;

/// One record of an SQS event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub message_id: String,
    pub receipt: String,
    pub body: String,
    /// `ApproximateReceiveCount`: 1 on the first delivery.
    pub receive_count: u32,
}

/// What a batch came to.
#[derive(Debug, Default)]
pub struct BatchReport {
    /// Message ids to report as `batchItemFailures`.
    pub failures: Vec<String>,
    /// Each run handled, with what it came to (worker batches).
    pub handled: Vec<(String, Handled)>,
}

fn parse(queue: QueueName, r: &Record, failures: &mut Vec<String>) -> Option<Message> {
    match Message::from_body(queue, &r.body) {
        Ok(m) if m.queue() == queue => Some(m),
        Ok(_) | Err(_) => {
            tracing::warn!(message_id = %r.message_id, receive_count = r.receive_count, "not a {queue} message; reported failed (it dead-letters after the queue's max receives)");
            failures.push(r.message_id.clone());
            None
        }
    }
}

impl Engine {
    /// Handles a batch of wake-ups until `deadline` (the invocation's).
    pub async fn handle_work_batch(
        &self,
        records: &[Record],
        deadline: Option<Millis>,
    ) -> BatchReport {
        let mut report = BatchReport::default();
        let mut wakes = Vec::new();
        for (i, r) in records.iter().enumerate() {
            if let Some(Message::Wake(w)) = parse(QueueName::Work, r, &mut report.failures) {
                wakes.push((i, w));
            }
        }
        let groups = switchyard_core::batch::group_by_run(&wakes);
        let results = join_all(groups.iter().map(|g| self.handle(&g.wake, deadline))).await;
        for (g, result) in groups.into_iter().zip(results) {
            match result {
                Ok(h) => report.handled.push((g.wake.run_id, h)),
                Err(e) => {
                    tracing::warn!(run_id = %g.wake.run_id, error = %e, "wake-up failed; its records come back");
                    report
                        .failures
                        .extend(g.records.iter().map(|&i| records[i].message_id.clone()));
                }
            }
        }
        report
    }

    /// Delivers a batch of notifications. A retry sets the record's visibility to its backoff
    /// through `inbox` and reports it failed, so the queue brings it back then.
    pub async fn handle_notify_batch(
        &self,
        records: &[Record],
        inbox: &dyn Inbox,
        sender: &dyn CallbackSender,
    ) -> BatchReport {
        let mut report = BatchReport::default();
        let parsed: Vec<_> = records
            .iter()
            .filter_map(
                |r| match parse(QueueName::Notify, r, &mut report.failures) {
                    Some(Message::Notify(n)) => Some((r, n)),
                    _ => None,
                },
            )
            .collect();
        let results = join_all(parsed.iter().map(|(r, n)| async move {
            let come_back = match self.notify(n, r.receive_count, sender).await {
                Ok(notified) => match disposition(&notified, r.receive_count) {
                    Disposition::Done => false,
                    Disposition::Later(delay_ms) => {
                        if let Err(e) = inbox.change_visibility(&r.receipt, delay_ms).await {
                            tracing::warn!(error = %e, "visibility change failed; the notification comes back at its timeout");
                        }
                        true
                    }
                    Disposition::DeadLetter => true,
                },
                Err(e) => {
                    tracing::warn!(run_id = %n.run_id, error = %e, "notification failed; it comes back");
                    true
                }
            };
            Ok::<bool, EngineError>(come_back)
        }))
        .await;
        for ((r, _), result) in parsed.iter().zip(results) {
            if !matches!(result, Ok(false)) {
                report.failures.push(r.message_id.clone());
            }
        }
        report
    }
}
