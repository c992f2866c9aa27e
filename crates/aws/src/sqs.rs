//! [`Queue`] and [`Inbox`] on SQS: one standard queue per [`QueueName`], each with its own
//! dead-letter queue (a redrive policy on the queue, `maxReceiveCount` = [`SqsQueueUrls::max_receive_count`]).
//!
//! How the port maps onto SQS:
//!
//! - **send**: `SendMessage` to the queue the message belongs to, `DelaySeconds` = the delay
//!   rounded up to whole seconds and capped at [`MAX_DELAY_SECONDS`] (15 minutes). A longer
//!   delay arrives early; the worker sees the wake-up is early, re-plans and sends again (the
//!   port's documented contract).
//! - **receive**: `ReceiveMessage`, at most 10 per call (SQS's limit), `VisibilityTimeout` =
//!   the timeout rounded up to seconds (capped at 12 hours), `receive_count` =
//!   `ApproximateReceiveCount`. A body that is not a message of this queue is sent to the DLQ
//!   with the reason as message attributes and deleted, not returned.
//! - **ack** = `DeleteMessage`; **change_visibility** = `ChangeMessageVisibility`; a receipt
//!   SQS calls invalid or not in flight answers `false`.
//! - **next_visible_at** is `None`: SQS cannot tell; a driver long-polls.
//! - **dead_letters** receives everything on the DLQ (hiding it for [`PEEK_VISIBILITY_SECONDS`]),
//!   then makes each message visible again at once: a look, not a take. A message SQS moved
//!   there itself was received `max_receive_count` times (that is when SQS moves it); its
//!   `failed_at` is when it was first sent (`SentTimestamp`), as SQS records no move time.
//! - **redrive** sends each chosen DLQ body back to the queue (a new message: new id, receive
//!   count 1) and deletes it from the DLQ; the others are made visible again.

use crate::error::{sqs_error, sqs_stale_receipt};
use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use aws_sdk_sqs::Client;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use switchyard_core::ports::{DeadLetter, Delivery, Inbox, Message, Queue, QueueName};
use switchyard_core::{Millis, StoreError};

/// The longest delay SQS takes (`DelaySeconds` ≤ 900). Longer delays are capped to it.
pub const MAX_DELAY_SECONDS: i32 = 900;
/// The longest visibility timeout SQS takes (12 hours).
pub const MAX_VISIBILITY_SECONDS: i32 = 43_200;
/// The most messages one `ReceiveMessage` returns.
pub const MAX_RECEIVE_BATCH: usize = 10;
/// How long [`Inbox::dead_letters`] hides DLQ messages while it lists them (it makes each
/// visible again as soon as the listing is complete).
pub const PEEK_VISIBILITY_SECONDS: i32 = 30;

const ATTR_REASON: &str = "switchyard-reason";
const ATTR_RECEIVE_COUNT: &str = "switchyard-receive-count";
const ATTR_FAILED_AT: &str = "switchyard-failed-at";

/// One queue's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsQueueUrls {
    pub url: String,
    /// The dead-letter queue its redrive policy names.
    pub dlq_url: String,
    /// The redrive policy's `maxReceiveCount` (reported as the receive count of the messages
    /// SQS dead-lettered).
    pub max_receive_count: u32,
}

/// Both queues of a deployment. It is the deployment's [`Queue`] (each message goes to its
/// own queue) and hands out one [`SqsQueue`] per queue name.
#[derive(Debug, Clone)]
pub struct SqsQueues {
    client: Client,
    work: Arc<SqsQueueUrls>,
    notify: Arc<SqsQueueUrls>,
}

impl SqsQueues {
    pub fn new(client: Client, work: SqsQueueUrls, notify: SqsQueueUrls) -> SqsQueues {
        SqsQueues {
            client,
            work: Arc::new(work),
            notify: Arc::new(notify),
        }
    }

    /// The addresses of one queue.
    pub fn urls(&self, queue: QueueName) -> &SqsQueueUrls {
        match queue {
            QueueName::Work => &self.work,
            QueueName::Notify => &self.notify,
        }
    }

    /// The receiving side (and a sender) of one queue.
    pub fn queue(&self, name: QueueName) -> SqsQueue {
        SqsQueue {
            name,
            all: self.clone(),
        }
    }
}

/// The delay SQS is sent for `delay_ms`: whole seconds, rounded up, at most 15 minutes.
pub fn delay_seconds(delay_ms: u64) -> i32 {
    seconds(delay_ms, MAX_DELAY_SECONDS)
}

/// A visibility timeout in whole seconds, rounded up, at most 12 hours.
pub fn visibility_seconds(ms: u64) -> i32 {
    seconds(ms, MAX_VISIBILITY_SECONDS)
}

fn seconds(ms: u64, cap: i32) -> i32 {
    let s = ms.div_ceil(1000);
    i32::try_from(s).map_or(cap, |s| s.min(cap))
}

#[async_trait]
impl Queue for SqsQueues {
    async fn send(&self, message: &Message, delay_ms: u64) -> Result<(), StoreError> {
        let body = message.to_body()?;
        let capped = delay_seconds(delay_ms);
        if delay_ms > u64::from(MAX_DELAY_SECONDS.unsigned_abs()) * 1000 {
            tracing::debug!(
                run_id = message.run_id(),
                delay_ms,
                "delay capped at SQS's 15 minutes; the worker re-plans when it arrives early"
            );
        }
        self.client
            .send_message()
            .queue_url(&self.urls(message.queue()).url)
            .message_body(body)
            .delay_seconds(capped)
            .send()
            .await
            .map_err(|e| sqs_error("SendMessage", e))?;
        Ok(())
    }
}

/// One queue: receive, ack, visibility, dead letters. It also sends (any message, to the queue
/// it belongs to).
#[derive(Debug, Clone)]
pub struct SqsQueue {
    name: QueueName,
    all: SqsQueues,
}

/// A message received from the DLQ while listing it.
struct Peeked {
    receipt: String,
    letter: DeadLetter,
}

impl SqsQueue {
    fn urls(&self) -> &SqsQueueUrls {
        self.all.urls(self.name)
    }

    fn client(&self) -> &Client {
        &self.all.client
    }

    /// Moves an unreadable body to the DLQ with why, then deletes it from the queue.
    async fn dead_letter_unreadable(
        &self,
        body: &str,
        receipt: &str,
        receive_count: u32,
        reason: String,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let string = |v: String| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .map_err(|e| StoreError::Corrupt(format!("SQS message attribute: {e}")))
        };
        tracing::warn!(queue = %self.name, %reason, "unreadable message dead-lettered");
        self.client()
            .send_message()
            .queue_url(&self.urls().dlq_url)
            .message_body(if body.is_empty() { " " } else { body })
            .message_attributes(ATTR_REASON, string(format!("unreadable body: {reason}"))?)
            .message_attributes(ATTR_RECEIVE_COUNT, string(receive_count.to_string())?)
            .message_attributes(ATTR_FAILED_AT, string(now.to_string())?)
            .send()
            .await
            .map_err(|e| sqs_error("SendMessage (dead letter)", e))?;
        self.ack(receipt).await?;
        Ok(())
    }

    /// Every message on the DLQ, each hidden for [`PEEK_VISIBILITY_SECONDS`] until the caller
    /// makes it visible again or deletes it.
    async fn peek_dead(&self) -> Result<Vec<Peeked>, StoreError> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        loop {
            let got = self
                .client()
                .receive_message()
                .queue_url(&self.urls().dlq_url)
                .max_number_of_messages(MAX_RECEIVE_BATCH as i32)
                .visibility_timeout(PEEK_VISIBILITY_SECONDS)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|e| sqs_error("ReceiveMessage (dead letters)", e))?;
            let messages = got.messages.unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            for m in messages {
                let (Some(id), Some(receipt)) = (m.message_id.clone(), m.receipt_handle.clone())
                else {
                    continue;
                };
                if !seen.insert(id.clone()) {
                    continue;
                }
                let attrs = m.message_attributes.clone().unwrap_or_default();
                let text = |k: &str| attrs.get(k).and_then(|v| v.string_value.clone());
                let system = m.attributes.clone().unwrap_or_default();
                let sent_at = system
                    .get(&MessageSystemAttributeName::SentTimestamp)
                    .and_then(|v| v.parse::<Millis>().ok())
                    .unwrap_or(0);
                let max = self.urls().max_receive_count;
                let letter = DeadLetter {
                    id,
                    body: m.body.clone().unwrap_or_default(),
                    receive_count: text(ATTR_RECEIVE_COUNT)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(max),
                    reason: text(ATTR_REASON).unwrap_or_else(|| {
                        format!("received {max} times without an ack (maxReceiveCount)")
                    }),
                    failed_at: text(ATTR_FAILED_AT)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(sent_at),
                };
                out.push(Peeked { receipt, letter });
            }
        }
        out.sort_by(|a, b| {
            (a.letter.failed_at, &a.letter.id).cmp(&(b.letter.failed_at, &b.letter.id))
        });
        Ok(out)
    }

    /// Makes a peeked DLQ message visible again.
    async fn unhide_dead(&self, receipt: &str) -> Result<(), StoreError> {
        match self
            .client()
            .change_message_visibility()
            .queue_url(&self.urls().dlq_url)
            .receipt_handle(receipt)
            .visibility_timeout(0)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if sqs_stale_receipt(&e) => Ok(()),
            Err(e) => Err(sqs_error("ChangeMessageVisibility (dead letters)", e)),
        }
    }
}

fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| {
            Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
        })
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, message: &Message, delay_ms: u64) -> Result<(), StoreError> {
        self.all.send(message, delay_ms).await
    }
}

/// The receipts of a batch request's failed entries worth one more try on their own: a stale
/// receipt is not an error (the message was received again, or deleted), anything else
/// (throttling, an internal error) may pass alone. Entry ids are the receipts' indexes in
/// `chunk`.
fn to_retry<'a>(
    failed: &[aws_sdk_sqs::types::BatchResultErrorEntry],
    chunk: &[&'a str],
) -> Vec<&'a str> {
    failed
        .iter()
        .filter(|f| {
            !(f.code().contains("ReceiptHandleIsInvalid")
                || f.code().contains("MessageNotInflight"))
        })
        .filter_map(|f| {
            f.id()
                .parse::<usize>()
                .ok()
                .and_then(|i| chunk.get(i).copied())
        })
        .collect()
}

#[async_trait]
impl Inbox for SqsQueue {
    fn queue(&self) -> QueueName {
        self.name
    }

    async fn receive(&self, max: usize, visibility_ms: u64) -> Result<Vec<Delivery>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let batch = max.min(MAX_RECEIVE_BATCH) as i32;
        let got = self
            .client()
            .receive_message()
            .queue_url(&self.urls().url)
            .max_number_of_messages(batch)
            .visibility_timeout(visibility_seconds(visibility_ms))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| sqs_error("ReceiveMessage", e))?;
        let mut out = Vec::new();
        for m in got.messages.unwrap_or_default() {
            let (Some(id), Some(receipt)) = (m.message_id, m.receipt_handle) else {
                continue;
            };
            let receive_count = m
                .attributes
                .as_ref()
                .and_then(|a: &HashMap<MessageSystemAttributeName, String>| {
                    a.get(&MessageSystemAttributeName::ApproximateReceiveCount)
                })
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(1);
            let body = m.body.unwrap_or_default();
            match Message::from_body(self.name, &body) {
                Ok(message) => out.push(Delivery {
                    id,
                    receipt,
                    message,
                    receive_count,
                }),
                Err(reason) => {
                    self.dead_letter_unreadable(&body, &receipt, receive_count, reason)
                        .await?;
                }
            }
        }
        Ok(out)
    }

    async fn ack(&self, receipt: &str) -> Result<bool, StoreError> {
        match self
            .client()
            .delete_message()
            .queue_url(&self.urls().url)
            .receipt_handle(receipt)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if sqs_stale_receipt(&e) => Ok(false),
            Err(e) => Err(sqs_error("DeleteMessage", e)),
        }
    }

    /// `DeleteMessageBatch`, ten receipts per request (what the event source mapping does).
    /// An entry SQS refuses as a stale receipt is not deleted; any other refused entry is
    /// tried once more alone, so its error is classified as `ack`'s is.
    async fn ack_all(&self, receipts: &[&str]) -> Result<usize, StoreError> {
        let mut deleted = 0;
        for chunk in receipts.chunks(MAX_RECEIVE_BATCH) {
            let mut batch = self
                .client()
                .delete_message_batch()
                .queue_url(&self.urls().url);
            for (i, r) in chunk.iter().enumerate() {
                let entry = aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(*r)
                    .build()
                    .map_err(|e| StoreError::Invalid(format!("DeleteMessageBatch entry: {e}")))?;
                batch = batch.entries(entry);
            }
            let out = batch
                .send()
                .await
                .map_err(|e| sqs_error("DeleteMessageBatch", e))?;
            deleted += out.successful().len();
            for r in to_retry(out.failed(), chunk) {
                deleted += usize::from(self.ack(r).await?);
            }
        }
        Ok(deleted)
    }

    async fn change_visibility(&self, receipt: &str, delay_ms: u64) -> Result<bool, StoreError> {
        match self
            .client()
            .change_message_visibility()
            .queue_url(&self.urls().url)
            .receipt_handle(receipt)
            .visibility_timeout(visibility_seconds(delay_ms))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if sqs_stale_receipt(&e) => Ok(false),
            Err(e) => Err(sqs_error("ChangeMessageVisibility", e)),
        }
    }

    async fn change_visibility_all(
        &self,
        receipts: &[&str],
        delay_ms: u64,
    ) -> Result<usize, StoreError> {
        let mut changed = 0;
        for chunk in receipts.chunks(MAX_RECEIVE_BATCH) {
            let mut batch = self
                .client()
                .change_message_visibility_batch()
                .queue_url(&self.urls().url);
            for (i, r) in chunk.iter().enumerate() {
                let entry = aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(*r)
                    .visibility_timeout(visibility_seconds(delay_ms))
                    .build()
                    .map_err(|e| {
                        StoreError::Invalid(format!("ChangeMessageVisibilityBatch entry: {e}"))
                    })?;
                batch = batch.entries(entry);
            }
            let out = batch
                .send()
                .await
                .map_err(|e| sqs_error("ChangeMessageVisibilityBatch", e))?;
            changed += out.successful().len();
            for r in to_retry(out.failed(), chunk) {
                changed += usize::from(self.change_visibility(r, delay_ms).await?);
            }
        }
        Ok(changed)
    }

    async fn next_visible_at(&self) -> Result<Option<Millis>, StoreError> {
        Ok(None)
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let peeked = self.peek_dead().await?;
        for p in &peeked {
            self.unhide_dead(&p.receipt).await?;
        }
        Ok(peeked.into_iter().map(|p| p.letter).collect())
    }

    async fn redrive(&self, ids: Option<&[String]>) -> Result<usize, StoreError> {
        let peeked = self.peek_dead().await?;
        let mut moved = 0;
        for p in &peeked {
            let chosen = ids.is_none_or(|ids| ids.contains(&p.letter.id));
            if !chosen {
                self.unhide_dead(&p.receipt).await?;
                continue;
            }
            self.client()
                .send_message()
                .queue_url(&self.urls().url)
                .message_body(&p.letter.body)
                .send()
                .await
                .map_err(|e| sqs_error("SendMessage (redrive)", e))?;
            self.client()
                .delete_message()
                .queue_url(&self.urls().dlq_url)
                .receipt_handle(&p.receipt)
                .send()
                .await
                .map_err(|e| sqs_error("DeleteMessage (redrive)", e))?;
            moved += 1;
        }
        Ok(moved)
    }
}

/// The `RedrivePolicy` attribute value that sends a queue's messages to `dlq_arn` after
/// `max_receive_count` receives (for provisioning and tests).
pub fn redrive_policy(dlq_arn: &str, max_receive_count: u32) -> String {
    serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": max_receive_count.to_string(),
    })
    .to_string()
}

/// Creates (or finds: `CreateQueue` is idempotent for the same attributes) queue `name` and its
/// dead-letter queue `<name>-dlq` (14 days' retention), joined by a redrive policy of
/// `max_receive_count`; `visibility_s` sets the queue's visibility timeout. For emulators and
/// tests: on AWS, template.yaml creates the queues.
pub async fn create_queue_with_dlq(
    client: &Client,
    name: &str,
    visibility_s: Option<u32>,
    max_receive_count: u32,
) -> Result<SqsQueueUrls, StoreError> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let missing =
        |what: &str| StoreError::Unavailable(format!("SQS CreateQueue {name}: no {what}"));
    let dlq_url = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .attributes(A::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .map_err(|e| sqs_error("CreateQueue", e))?
        .queue_url
        .ok_or_else(|| missing("dead-letter queue URL"))?;
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(A::QueueArn)
        .send()
        .await
        .map_err(|e| sqs_error("GetQueueAttributes", e))?
        .attributes
        .and_then(|mut a| a.remove(&A::QueueArn))
        .ok_or_else(|| missing("dead-letter queue ARN"))?;
    let mut create = client.create_queue().queue_name(name).attributes(
        A::RedrivePolicy,
        redrive_policy(&dlq_arn, max_receive_count),
    );
    if let Some(v) = visibility_s {
        create = create.attributes(A::VisibilityTimeout, v.to_string());
    }
    let url = create
        .send()
        .await
        .map_err(|e| sqs_error("CreateQueue", e))?
        .queue_url
        .ok_or_else(|| missing("queue URL"))?;
    Ok(SqsQueueUrls {
        url,
        dlq_url,
        max_receive_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_to_seconds_and_cap_at_15_minutes() {
        assert_eq!(delay_seconds(0), 0);
        assert_eq!(delay_seconds(1), 1);
        assert_eq!(delay_seconds(2_000), 2);
        assert_eq!(delay_seconds(2_001), 3);
        assert_eq!(delay_seconds(900_000), 900);
        assert_eq!(delay_seconds(3_600_000), 900);
        assert_eq!(delay_seconds(u64::MAX), 900);
        assert_eq!(visibility_seconds(86_400_000), 43_200);
    }
}
