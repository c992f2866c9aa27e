//! The one host loop: receive a batch → hand it to the function's handler → ack what it
//! handled; what failed is given back (after [`recovery::retry_delay_ms`], or a notification's
//! own backoff) and dead-letters after the queue's receive limit.
//!
//! Every host runs work and notifications through it: `switchyard run` and the engine tests
//! (`driver`), `switchyard dev` on the embedded backend (`pool`), `switchyard dev --backend
//! aws`, the emulator tests and `make bench-aws` (which play Lambda's SQS event source
//! mapping with [`serve`] and [`invoke_once`]). On AWS, Lambda does the receiving and the
//! deleting, and the worker and notifier functions call the same handlers
//! ([`Engine::handle_work_batch`], [`Notifier::handle_batch`]) on the batch it hands
//! them, reporting failures as `batchItemFailures`.
//!
//! [`recovery::retry_delay_ms`]: switchyard_core::recovery::retry_delay_ms

use crate::batch::{BatchReport, Record};
use crate::notifier::Notifier;
use crate::Engine;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::ports::{CallbackSender, Inbox};
use switchyard_core::StoreError;
use tokio::sync::{watch, Notify};

/// Which handler gets a batch: the worker's (wake-ups) or a notifier's (notifications: the
/// engine's own, [`Engine::notifier`], or one wired without an engine, as the notifier
/// function is).
#[derive(Clone, Copy)]
pub enum Function<'a> {
    Worker,
    Notifier(&'a Notifier, &'a dyn CallbackSender),
}

/// One invocation's settings: what Lambda's event source mapping and function configuration
/// set on AWS (the defaults are template.yaml's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invocation {
    /// Records per receive (SQS: at most 10).
    pub batch_size: usize,
    /// How long a received batch stays hidden (the handlers shorten it to
    /// `recovery::HOLD_MS` while they hold it).
    pub visibility_ms: u64,
    /// The handler's deadline, this far from the receive (the function's timeout); `None`:
    /// none (a local run drives until it rests).
    pub timeout_ms: Option<u64>,
}

impl Default for Invocation {
    fn default() -> Self {
        Invocation {
            batch_size: 10,
            visibility_ms: 6 * 180_000,
            timeout_ms: Some(180_000),
        }
    }
}

/// What one invocation came to.
#[derive(Debug, Default)]
pub struct Invoked {
    pub received: usize,
    /// Records acked (deleted from the queue).
    pub deleted: usize,
    pub report: BatchReport,
}

/// Receives one batch from `inbox` and invokes `function`'s handler on it; acks every record
/// it did not report failed. `received == 0` when nothing was visible.
pub async fn invoke_once(
    engine: &Engine,
    inbox: &dyn Inbox,
    function: Function<'_>,
    inv: Invocation,
) -> Result<Invoked, StoreError> {
    let deliveries = inbox
        .receive(inv.batch_size.max(1), inv.visibility_ms)
        .await?;
    if deliveries.is_empty() {
        return Ok(Invoked::default());
    }
    let mut records = Vec::with_capacity(deliveries.len());
    for d in &deliveries {
        records.push(Record {
            message_id: d.id.clone(),
            receipt: d.receipt.clone(),
            body: d.message.to_body()?,
            receive_count: d.receive_count,
        });
    }
    let deadline = inv.timeout_ms.map(|t| engine.now().saturating_add(t));
    let report = match function {
        Function::Worker => engine.handle_work_batch(&records, deadline, inbox).await,
        Function::Notifier(notifier, sender) => {
            notifier.handle_batch(&records, inbox, sender).await
        }
    };
    let handled: Vec<&str> = records
        .iter()
        .filter(|r| !report.failures.contains(&r.message_id))
        .map(|r| r.receipt.as_str())
        .collect();
    let deleted = inbox.ack_all(&handled).await?;
    Ok(Invoked {
        received: records.len(),
        deleted,
        report,
    })
}

/// How a serving loop waits when its queue is empty.
#[derive(Debug, Clone, Default)]
pub struct Idle {
    /// The longest wait (SQS cannot tell when its next message is due: a loop over it
    /// long-polls this often).
    pub max_ms: u64,
    /// After a failed receive.
    pub retry_ms: u64,
    /// Notified when work is queued from outside the loop (an API request), and by the loop
    /// itself after a batch (what it handled may have queued more).
    pub kick: Option<Arc<Notify>>,
}

/// Invokes `function` on `inbox`'s batches until `stop` turns true; returns after the batch in
/// hand (graceful shutdown: a run being handled parks or ends and gives its lease back).
pub async fn serve(
    engine: &Engine,
    inbox: &dyn Inbox,
    function: Function<'_>,
    inv: Invocation,
    idle: &Idle,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let wait_ms = match invoke_once(engine, inbox, function, inv).await {
            Ok(i) if i.received > 0 => {
                if let Some(k) = &idle.kick {
                    k.notify_waiters();
                }
                continue;
            }
            Ok(_) => match inbox.next_visible_at().await {
                Ok(Some(t)) => t.saturating_sub(engine.now()).min(idle.max_ms),
                Ok(None) => idle.max_ms,
                Err(e) => {
                    tracing::warn!(queue = %inbox.queue(), error = %e, "reading the queue's next due time failed");
                    idle.retry_ms
                }
            },
            Err(e) => {
                tracing::warn!(queue = %inbox.queue(), error = %e, "receiving failed; trying again");
                idle.retry_ms
            }
        };
        pause(wait_ms, idle.kick.as_deref(), &mut stop).await;
    }
}

/// Waits `ms` (yields at 0), or until kicked or stopped.
pub async fn pause(ms: u64, kick: Option<&Notify>, stop: &mut watch::Receiver<bool>) {
    if ms == 0 {
        tokio::task::yield_now().await;
        return;
    }
    let kicked = async {
        match kick {
            Some(k) => k.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
        _ = kicked => {}
        _ = stop.changed() => {}
    }
}
