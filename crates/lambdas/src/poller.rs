//! What Lambda's SQS event source mapping does, for running the functions' handlers outside
//! Lambda (`switchyard dev --backend aws`, the emulator tests, `make demo-aws`): receive a
//! batch, hand it to the function's handler with the invocation deadline a function timeout
//! away, delete the records it did not report failed, and leave the failed ones to come back
//! after their visibility timeout (or the visibility the notifier set for its backoff).
//!
//! No emulator here runs Lambda or its SQS trigger, so this loop is ours; it keeps the
//! semantics the functions rely on (batch size, partial failures, visibility, receive counts).

use std::time::Duration;
use switchyard_core::ports::{CallbackSender, Inbox};
use switchyard_core::{Clock, StoreError};
use switchyard_engine::batch::{BatchReport, Record};
use switchyard_engine::Engine;

/// The mapping's settings (template.yaml's values by default).
#[derive(Debug, Clone, Copy)]
pub struct Mapping {
    /// Records per invocation (SQS: at most 10 per receive).
    pub batch_size: usize,
    /// The queue's visibility timeout: how long a received batch stays hidden.
    pub visibility_ms: u64,
    /// The function's timeout: the handler's deadline is this far from the receive.
    pub function_timeout_ms: u64,
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            batch_size: 10,
            visibility_ms: 6 * 180_000,
            function_timeout_ms: 180_000,
        }
    }
}

/// Which function's handler gets the batch.
pub enum Function<'a> {
    Worker,
    Notifier(&'a dyn CallbackSender),
}

/// What one poll came to.
#[derive(Debug, Default)]
pub struct Polled {
    pub received: usize,
    pub deleted: usize,
    pub report: BatchReport,
}

/// Receives one batch from `inbox` and invokes `function` on it, like one invocation by the
/// event source mapping. Returns with `received == 0` when the queue had nothing visible.
pub async fn poll_once(
    engine: &Engine,
    inbox: &dyn Inbox,
    function: &Function<'_>,
    mapping: Mapping,
    clock: &dyn Clock,
) -> Result<Polled, StoreError> {
    let deliveries = inbox
        .receive(mapping.batch_size.clamp(1, 10), mapping.visibility_ms)
        .await?;
    let mut records = Vec::with_capacity(deliveries.len());
    for d in &deliveries {
        records.push(Record {
            message_id: d.id.clone(),
            receipt: d.receipt.clone(),
            body: d.message.to_body()?,
            receive_count: d.receive_count,
        });
    }
    if records.is_empty() {
        return Ok(Polled::default());
    }
    let deadline = clock.now_ms() + mapping.function_timeout_ms;
    let report = match function {
        Function::Worker => {
            engine
                .handle_work_batch(&records, Some(deadline), inbox)
                .await
        }
        Function::Notifier(sender) => engine.handle_notify_batch(&records, inbox, *sender).await,
    };
    let mut deleted = 0;
    for r in records
        .iter()
        .filter(|r| !report.failures.contains(&r.message_id))
    {
        if inbox.ack(&r.receipt).await? {
            deleted += 1;
        }
    }
    Ok(Polled {
        received: records.len(),
        deleted,
        report,
    })
}

/// Polls until `stop` says so, pausing `idle` after an empty receive (Lambda long-polls).
pub async fn run(
    engine: &Engine,
    inbox: &dyn Inbox,
    function: Function<'_>,
    mapping: Mapping,
    clock: &dyn Clock,
    idle: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let pause = match poll_once(engine, inbox, &function, mapping, clock).await {
            Ok(p) if p.received > 0 => continue,
            Ok(_) => idle,
            Err(e) => {
                tracing::warn!(queue = %inbox.queue(), error = %e, "poll failed; trying again");
                idle.max(Duration::from_secs(1))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}
