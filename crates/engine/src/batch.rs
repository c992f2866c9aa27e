//! SQS batches, as the worker and notifier Lambda functions receive them: records handled
//! concurrently, and the ids of the records that must come back reported as
//! `batchItemFailures` (`ReportBatchItemFailures`), so a failure in one record does not
//! redeliver the others. Records of one run are handled once ([`switchyard_core::batch`]).
//! A body that is not a message of its queue is reported failed: after the queue's
//! `maxReceiveCount` deliveries SQS moves it to the dead-letter queue. Wake-ups are held by
//! heartbeats while they are handled ([`Engine::handle_work_batch`], `core::recovery`).

use crate::worker::Handled;
use crate::Engine;
use futures::future::{join_all, Either};
use futures::FutureExt;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;
use switchyard_core::ports::{Inbox, Message, QueueName};
use switchyard_core::state::WakeUp;
use switchyard_core::{recovery, Millis};

/// Hides the records still in hand for another [`recovery::HOLD_MS`], in one batch request
/// per ten records on SQS (issue 25: a heartbeat was one request per record). A failed
/// extension is only logged: the next heartbeat tries again, and at worst the wake-up is
/// delivered twice, which re-plans harmlessly.
async fn hold(records: &[Record], in_hand: &Mutex<BTreeSet<usize>>, inbox: &dyn Inbox) {
    let held: Vec<&str> = in_hand
        .lock()
        .map(|h| h.iter().map(|&i| records[i].receipt.as_str()).collect())
        .unwrap_or_default();
    if held.is_empty() {
        return;
    }
    if let Err(e) = inbox.change_visibility_all(&held, recovery::HOLD_MS).await {
        tracing::debug!(records = held.len(), error = %e, "heartbeat failed; the next one tries again");
    }
}

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
    /// Each wake-up record, with what its run's one handling came to (worker batches).
    pub wakes: Vec<(WakeUp, Handled)>,
    /// Why each failed handling failed (a host that treats a failure as a bug reports it).
    pub errors: Vec<String>,
}

pub(crate) fn parse(queue: QueueName, r: &Record, failures: &mut Vec<String>) -> Option<Message> {
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
    /// Handles a batch of wake-ups until `deadline` (the invocation's), holding them through
    /// `inbox` (the work queue) while it does: each record is hidden for
    /// [`recovery::HOLD_MS`] at once and again every [`recovery::HEARTBEAT_MS`] until its run
    /// is handled, so a worker that dies or times out lets go of its records within `HOLD_MS`
    /// — not after the queue's visibility timeout, which on AWS stays at 6× the function
    /// timeout for Lambda's throttled retries (docs/architecture.md, "Recovery"). Records
    /// reported failed are given back after [`recovery::retry_delay_ms`].
    pub async fn handle_work_batch(
        &self,
        records: &[Record],
        deadline: Option<Millis>,
        inbox: &dyn Inbox,
    ) -> BatchReport {
        let mut report = BatchReport::default();
        let mut wakes = Vec::new();
        for (i, r) in records.iter().enumerate() {
            if let Some(Message::Wake(w)) = parse(QueueName::Work, r, &mut report.failures) {
                wakes.push((i, w));
            }
        }
        let groups = switchyard_core::batch::group_by_run(&wakes);
        // The runs this batch ends add their figures together at its end (on DynamoDB one
        // update per workflow-hour's stats item for the batch, not one per run).
        self.store.hold_figures();
        let in_hand: Mutex<BTreeSet<usize>> =
            Mutex::new(groups.iter().flat_map(|g| g.records.clone()).collect());
        let work = std::pin::pin!(join_all(groups.iter().map(|g| {
            let in_hand = &in_hand;
            async move {
                let result = self.handle(&g.wake, deadline).await;
                if let Ok(mut held) = in_hand.lock() {
                    for i in &g.records {
                        held.remove(i);
                    }
                }
                result
            }
        })));
        // Heartbeats run beside the work, never in its way. The first tick is at once: it
        // shortens the hold the receive set.
        let mut heartbeat = tokio::time::interval(Duration::from_millis(recovery::HEARTBEAT_MS));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let beat = std::pin::pin!(async {
            loop {
                heartbeat.tick().await;
                hold(records, &in_hand, inbox).await;
            }
        });
        // A run whose handling panics (hosts that unwind: `switchyard dev`, tests) must not
        // leave the store holding figures: the flush runs first, then the panic goes on.
        let results = std::panic::AssertUnwindSafe(async {
            match futures::future::select(work, beat).await {
                Either::Left((results, _)) => results,
                Either::Right((_, work)) => work.await,
            }
        })
        .catch_unwind()
        .await;
        if let Err(e) = self.store.flush_figures().await {
            tracing::warn!(error = %e, "the batch's run figures were not added to the stats");
        }
        let results = results.unwrap_or_else(|panicked| std::panic::resume_unwind(panicked));
        // (record, when it comes back): unreadable bodies at once (sooner dead-lettered),
        // failed wake-ups after their retry delay.
        let mut give_back: Vec<(usize, u64)> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| report.failures.contains(&r.message_id))
            .map(|(i, _)| (i, 0))
            .collect();
        for (g, result) in groups.iter().zip(results) {
            match result {
                Ok(h) => {
                    report.wakes.extend(g.records.iter().filter_map(|&i| {
                        wakes
                            .iter()
                            .find(|(j, _)| *j == i)
                            .map(|(_, w)| (w.clone(), h.clone()))
                    }));
                    report.handled.push((g.wake.run_id.clone(), h));
                }
                Err(e) => {
                    report.errors.push(format!("run {}: {e}", g.wake.run_id));
                    tracing::warn!(run_id = %g.wake.run_id, error = %e, "wake-up failed; its records come back");
                    give_back.extend(
                        g.records
                            .iter()
                            .map(|&i| (i, recovery::retry_delay_ms(records[i].receive_count))),
                    );
                }
            }
        }
        join_all(give_back.iter().map(|&(i, delay)| {
            let r = &records[i];
            async move {
                if let Err(e) = inbox.change_visibility(&r.receipt, delay).await {
                    tracing::debug!(message_id = %r.message_id, error = %e, "could not give a failed wake-up back early; it comes back at its hold");
                }
            }
        }))
        .await;
        report.failures.extend(
            give_back
                .into_iter()
                .map(|(i, _)| records[i].message_id.clone()),
        );
        report.failures.sort();
        report.failures.dedup();
        report
    }
}
