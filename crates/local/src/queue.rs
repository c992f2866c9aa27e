//! The `Queue` port on SQLite, plus the receive side that SQS and its Lambda trigger provide on
//! AWS: visibility timeouts, receipts, receive counts and a dead-letter table. The local driver
//! polls with [`SqliteQueue::receive`] and sleeps until [`SqliteQueue::next_visible_at`].

use crate::db::Db;
use async_trait::async_trait;
use rusqlite::{params, TransactionBehavior};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchyard_core::ports::{DeadLetter, Delivery, Inbox, Message, Queue, QueueName};
use switchyard_core::{Clock, Millis, StoreError};

/// Deliveries allowed before a message is dead-lettered (SQS `maxReceiveCount`).
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 5;

/// Makes receipts of the same message at the same millisecond differ even across queues.
static RECEIPTS: AtomicU64 = AtomicU64::new(0);

/// One of the deployment's queues; all share the `queue_messages` table, keyed by the queue's
/// name, and the `dead_letters` table the same way (each queue's dead letters are its own).
/// Cheap to clone.
///
/// As a [`Queue`] (the sending side) a handle puts each message on the queue the message
/// belongs to, as the AWS adapter does with its two queue URLs; as an [`Inbox`] it receives
/// from its own queue only.
#[derive(Clone)]
pub struct SqliteQueue {
    db: Db,
    name: QueueName,
    clock: Arc<dyn Clock>,
    max_receive_count: u32,
}

impl SqliteQueue {
    pub(crate) fn new(db: Db, name: QueueName, clock: Arc<dyn Clock>) -> SqliteQueue {
        SqliteQueue {
            db,
            name,
            clock,
            max_receive_count: DEFAULT_MAX_RECEIVE_COUNT,
        }
    }

    /// Sets how many deliveries a message gets before it is dead-lettered (at least 1).
    pub fn with_max_receive_count(mut self, n: u32) -> SqliteQueue {
        self.max_receive_count = n.max(1);
        self
    }

    pub fn name(&self) -> QueueName {
        self.name
    }

    /// Takes up to `max` visible messages, oldest visibility first, hiding each for
    /// `visibility_timeout_ms`. Messages already delivered `max_receive_count` times, or whose
    /// body no longer parses, go to the dead-letter table instead.
    pub fn receive(
        &self,
        max: usize,
        visibility_timeout_ms: u64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let now = self.clock.now_ms();
        let hidden_until = now.saturating_add(visibility_timeout_ms);
        let q = self.name.as_str();
        self.db.with(|c| {
            // An empty poll is the common case of an idle worker: answer it with a read (no
            // write lock, no journal write) and take the write transaction only when there
            // is something visible to take or to dead-letter.
            let visible: bool = c.query_row(
                "SELECT EXISTS(SELECT 1 FROM queue_messages WHERE queue = ?1 AND visible_at <= ?2)",
                params![q, now],
                |r| r.get(0),
            )?;
            if !visible {
                return Ok(Vec::new());
            }
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Dead-letter in bulk first, so the LIMIT below only sees deliverable messages.
            let reason = format!("received {} times without ack", self.max_receive_count);
            let buried = tx.execute(
                "INSERT INTO dead_letters (id, queue, body, receive_count, reason, failed_at)
                 SELECT id, queue, body, receive_count, ?4, ?2 FROM queue_messages
                 WHERE queue = ?1 AND visible_at <= ?2 AND receive_count >= ?3",
                params![q, now, self.max_receive_count, reason],
            )?;
            if buried > 0 {
                // Poison messages are an operator's business: make them visible in the logs.
                tracing::warn!(queue = q, count = buried, "{reason}: moved to dead letters");
            }
            tx.execute(
                "DELETE FROM queue_messages
                 WHERE queue = ?1 AND visible_at <= ?2 AND receive_count >= ?3",
                params![q, now, self.max_receive_count],
            )?;

            let candidates = {
                let mut stmt = tx.prepare(
                    "SELECT id, body, receive_count FROM queue_messages
                         WHERE queue = ?1 AND visible_at <= ?2
                         ORDER BY visible_at, id LIMIT ?3",
                )?;
                let limit = i64::try_from(max).unwrap_or(i64::MAX);
                let rows = stmt.query_map(params![q, now, limit], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, u32>(2)?,
                    ))
                })?;
                rows.collect::<Result<Vec<_>, _>>()?
            };

            let mut out = Vec::with_capacity(candidates.len());
            for (id, body, count) in candidates {
                let message = match Message::from_body(self.name, &body) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(queue = q, id, "unreadable message moved to dead letters");
                        tx.execute(
                            "INSERT INTO dead_letters (id, queue, body, receive_count, reason,
                                                       failed_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                            params![id, q, body, count, format!("unreadable body: {e}"), now],
                        )?;
                        tx.execute("DELETE FROM queue_messages WHERE id = ?1", [id])?;
                        continue;
                    }
                };
                let count = count.saturating_add(1);
                // id and count alone are already unique per delivery; the counter and time keep
                // receipts from looking like a guessable sequence.
                let receipt = format!(
                    "{id}-{count}-{now:x}-{:x}",
                    RECEIPTS.fetch_add(1, Ordering::Relaxed)
                );
                tx.execute(
                    "UPDATE queue_messages SET receive_count = ?1, receipt = ?2, visible_at = ?3
                     WHERE id = ?4",
                    params![count, receipt, hidden_until, id],
                )?;
                out.push(Delivery {
                    id: id.to_string(),
                    receipt,
                    message,
                    receive_count: count,
                });
            }
            tx.commit()?;
            Ok(out)
        })
    }

    /// Deletes a received message. `false` if the receipt is stale (the message was received
    /// again since, or already acked), as with SQS the worker just moves on.
    pub fn ack(&self, receipt: &str) -> Result<bool, StoreError> {
        self.db.with(|c| {
            let n = c.execute(
                "DELETE FROM queue_messages WHERE queue = ?1 AND receipt = ?2",
                params![self.name.as_str(), receipt],
            )?;
            Ok(n == 1)
        })
    }

    /// Makes a received message visible again `delay_ms` from now (0: at once). `false` if the
    /// receipt is stale.
    pub fn change_visibility(&self, receipt: &str, delay_ms: u64) -> Result<bool, StoreError> {
        let at = self.clock.now_ms().saturating_add(delay_ms);
        self.db.with(|c| {
            let n = c.execute(
                "UPDATE queue_messages SET visible_at = ?1 WHERE queue = ?2 AND receipt = ?3",
                params![at, self.name.as_str(), receipt],
            )?;
            Ok(n == 1)
        })
    }

    /// When the earliest message becomes visible (in flight ones included: they reappear at
    /// their visibility deadline). `None` if the queue is empty. Past values mean "now".
    pub fn next_visible_at(&self) -> Result<Option<Millis>, StoreError> {
        self.db.with(|c| {
            Ok(c.query_row(
                "SELECT MIN(visible_at) FROM queue_messages WHERE queue = ?1",
                [self.name.as_str()],
                |r| r.get(0),
            )?)
        })
    }

    /// Messages in the queue, visible or in flight (dead letters excluded).
    pub fn len(&self) -> Result<usize, StoreError> {
        self.db.with(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM queue_messages WHERE queue = ?1",
                [self.name.as_str()],
                |r| r.get(0),
            )?)
        })
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        self.len().map(|n| n == 0)
    }

    /// This queue's dead letters, oldest message first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.db.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, body, receive_count, reason, failed_at FROM dead_letters
                     WHERE queue = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([self.name.as_str()], |r| {
                Ok(DeadLetter {
                    id: r.get::<_, i64>(0)?.to_string(),
                    body: r.get(1)?,
                    receive_count: r.get(2)?,
                    reason: r.get(3)?,
                    failed_at: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Puts dead letters of this queue back, visible now, with a fresh receive count: every
    /// one, or those whose id is in `ids`. Returns how many moved.
    pub fn redrive(&self, ids: Option<&[String]>) -> Result<usize, StoreError> {
        let now = self.clock.now_ms();
        let q = self.name.as_str();
        self.db.with(|c| {
            let tx = c.transaction()?;
            let ids: Vec<i64> = match ids {
                Some(ids) => ids.iter().filter_map(|i| i.parse().ok()).collect(),
                None => {
                    let mut stmt = tx.prepare("SELECT id FROM dead_letters WHERE queue = ?1")?;
                    let rows = stmt.query_map([q], |r| r.get(0))?;
                    rows.collect::<Result<Vec<i64>, _>>()?
                }
            };
            let mut moved = 0;
            for id in ids {
                // The message keeps its id, so a redriven message is recognisably the same one.
                moved += tx.execute(
                    "INSERT INTO queue_messages (id, queue, body, visible_at, receive_count, sent_at)
                         SELECT id, queue, body, ?3, 0, ?3 FROM dead_letters
                         WHERE queue = ?1 AND id = ?2",
                    params![q, id, now],
                )?;
                tx.execute(
                    "DELETE FROM dead_letters WHERE queue = ?1 AND id = ?2",
                    params![q, id],
                )?;
            }
            tx.commit()?;
            Ok(moved)
        })
    }
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn send(&self, message: &Message, delay_ms: u64) -> Result<(), StoreError> {
        let body = message.to_body()?;
        let now = self.clock.now_ms();
        self.db.with(|c| {
            c.execute(
                "INSERT INTO queue_messages (queue, body, visible_at, receive_count, sent_at)
                 VALUES (?1, ?2, ?3, 0, ?4)",
                params![
                    message.queue().as_str(),
                    body,
                    now.saturating_add(delay_ms),
                    now
                ],
            )?;
            Ok(())
        })
    }
}

#[async_trait]
impl Inbox for SqliteQueue {
    fn queue(&self) -> QueueName {
        self.name
    }

    async fn receive(&self, max: usize, visibility_ms: u64) -> Result<Vec<Delivery>, StoreError> {
        SqliteQueue::receive(self, max, visibility_ms)
    }

    async fn ack(&self, receipt: &str) -> Result<bool, StoreError> {
        SqliteQueue::ack(self, receipt)
    }

    async fn change_visibility(&self, receipt: &str, delay_ms: u64) -> Result<bool, StoreError> {
        SqliteQueue::change_visibility(self, receipt, delay_ms)
    }

    async fn next_visible_at(&self) -> Result<Option<Millis>, StoreError> {
        SqliteQueue::next_visible_at(self)
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        SqliteQueue::dead_letters(self)
    }

    async fn redrive(&self, ids: Option<&[String]>) -> Result<usize, StoreError> {
        SqliteQueue::redrive(self, ids)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{Backend, ManualClock};
    use switchyard_contract::queues::{wake, QueueFixture};

    fn setup() -> (tempfile::TempDir, Backend, ManualClock, SqliteQueue) {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let clock = ManualClock::new(1_000);
        let q = b.queue(QueueName::Work, Arc::new(clock.clone()));
        (dir, b, clock, q)
    }

    fn fresh() -> (tempfile::TempDir, QueueFixture) {
        let (dir, b, clock, _) = setup();
        let c: Arc<dyn Clock> = Arc::new(clock.clone());
        let work = b
            .queue(QueueName::Work, c.clone())
            .with_max_receive_count(3);
        let notify = b.queue(QueueName::Notify, c).with_max_receive_count(3);
        let fixture = QueueFixture {
            sender: Arc::new(work.clone()),
            work: Arc::new(work),
            notify: Arc::new(notify),
            max_receive_count: 3,
            elapse: Box::new(move |ms| {
                clock.advance(ms);
                Box::pin(async {})
            }),
        };
        (dir, fixture)
    }

    // The port contract, on SQLite: the same rules the SQS adapter is held to.
    switchyard_contract::queue_contract!(fresh());

    /// What SQLite can tell and SQS cannot: when the next message shows, and that a receipt
    /// is stale.
    #[tokio::test]
    async fn next_visible_at_and_stale_receipts() {
        let (_dir, _b, clock, q) = setup();
        assert_eq!(q.next_visible_at().unwrap(), None);
        q.send(&wake("r"), 500).await.unwrap();
        assert_eq!(q.next_visible_at().unwrap(), Some(1_500));
        clock.advance(500);
        let first = q.receive(1, 100).unwrap().remove(0);
        assert_eq!(q.next_visible_at().unwrap(), Some(clock.now_ms() + 100));
        clock.advance(100);
        let second = q.receive(1, 100).unwrap().remove(0);
        // The first worker's receipt died when the message was received again.
        assert!(!q.ack(&first.receipt).unwrap());
        assert!(!q.change_visibility(&first.receipt, 0).unwrap());
        assert!(q.ack(&second.receipt).unwrap());
        assert!(!q.ack(&second.receipt).unwrap());
        assert!(q.is_empty().unwrap());
    }

    #[tokio::test]
    async fn unreadable_body_is_dead_lettered_not_fatal() {
        let (_dir, b, _clock, q) = setup();
        q.send(&wake("good"), 0).await.unwrap();
        let sql = "INSERT INTO queue_messages (queue, body, visible_at, sent_at)
                   VALUES ('work', 'not json', 0, 0)";
        b.db.with(|c| Ok(c.execute(sql, [])?)).unwrap();
        let got = q.receive(10, 10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message.run_id(), "good");
        let dead = q.dead_letters().unwrap();
        assert_eq!(dead[0].body, "not json");
        assert!(
            dead[0].reason.starts_with("unreadable body"),
            "{}",
            dead[0].reason
        );
    }
}
