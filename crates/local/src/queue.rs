//! The `Queue` port on SQLite, plus the receive side that SQS and its Lambda trigger provide on
//! AWS: visibility timeouts, receipts, receive counts and a dead-letter table. The local driver
//! polls with [`SqliteQueue::receive`] and sleeps until [`SqliteQueue::next_visible_at`].

use crate::db::Db;
use async_trait::async_trait;
use rusqlite::{params, TransactionBehavior};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchyard_core::ports::Queue;
use switchyard_core::state::WakeUp;
use switchyard_core::{Clock, Millis, StoreError};

/// Deliveries allowed before a message is dead-lettered (SQS `maxReceiveCount`).
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 5;

/// Makes receipts of the same message at the same millisecond differ even across queues.
static RECEIPTS: AtomicU64 = AtomicU64::new(0);

/// A received message. The receipt is valid until the message is received again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub receipt: String,
    pub body: WakeUp,
    /// Deliveries so far, this one included (1 on the first).
    pub receive_count: u32,
}

/// A message taken out of circulation. `body` is kept raw: it may be the reason it is here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: i64,
    pub body: String,
    pub receive_count: u32,
    pub reason: String,
    pub failed_at: Millis,
}

/// One named queue; all queues share the `queue_messages` table. Cheap to clone.
#[derive(Clone)]
pub struct SqliteQueue {
    db: Db,
    name: Arc<str>,
    clock: Arc<dyn Clock>,
    max_receive_count: u32,
}

impl SqliteQueue {
    pub(crate) fn new(db: Db, name: &str, clock: Arc<dyn Clock>) -> SqliteQueue {
        SqliteQueue {
            db,
            name: name.into(),
            clock,
            max_receive_count: DEFAULT_MAX_RECEIVE_COUNT,
        }
    }

    /// Sets how many deliveries a message gets before it is dead-lettered (at least 1).
    pub fn with_max_receive_count(mut self, n: u32) -> SqliteQueue {
        self.max_receive_count = n.max(1);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
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
        let q = &*self.name;
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
                let body = match serde_json::from_str::<WakeUp>(&body) {
                    Ok(b) => b,
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
                    id,
                    receipt,
                    body,
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
                params![&*self.name, receipt],
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
                params![at, &*self.name, receipt],
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
                [&*self.name],
                |r| r.get(0),
            )?)
        })
    }

    /// Messages in the queue, visible or in flight (dead letters excluded).
    pub fn len(&self) -> Result<usize, StoreError> {
        self.db.with(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM queue_messages WHERE queue = ?1",
                [&*self.name],
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
            let rows = stmt.query_map([&*self.name], |r| {
                Ok(DeadLetter {
                    id: r.get(0)?,
                    body: r.get(1)?,
                    receive_count: r.get(2)?,
                    reason: r.get(3)?,
                    failed_at: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Puts every dead letter of this queue back, visible now, with a fresh receive count.
    /// Returns how many moved.
    pub fn redrive_dead_letters(&self) -> Result<usize, StoreError> {
        let now = self.clock.now_ms();
        self.db.with(|c| {
            let tx = c.transaction()?;
            let moved = tx.execute(
                "INSERT INTO queue_messages (queue, body, visible_at, receive_count, sent_at)
                     SELECT queue, body, ?2, 0, ?2 FROM dead_letters WHERE queue = ?1 ORDER BY id",
                params![&*self.name, now],
            )?;
            tx.execute("DELETE FROM dead_letters WHERE queue = ?1", [&*self.name])?;
            tx.commit()?;
            Ok(moved)
        })
    }
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn send(&self, message: &WakeUp, delay_ms: u64) -> Result<(), StoreError> {
        let body = serde_json::to_string(message)
            .map_err(|e| StoreError::Corrupt(format!("wake-up for run {}: {e}", message.run_id)))?;
        let now = self.clock.now_ms();
        self.db.with(|c| {
            c.execute(
                "INSERT INTO queue_messages (queue, body, visible_at, receive_count, sent_at)
                 VALUES (?1, ?2, ?3, 0, ?4)",
                params![&*self.name, body, now.saturating_add(delay_ms), now],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{Backend, ManualClock};
    use switchyard_core::state::WakeReason;

    fn wake(run: &str) -> WakeUp {
        WakeUp {
            run_id: run.into(),
            reason: WakeReason::Start,
        }
    }

    fn setup() -> (tempfile::TempDir, Backend, ManualClock, SqliteQueue) {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let clock = ManualClock::new(1_000);
        let q = b.queue("work", Arc::new(clock.clone()));
        (dir, b, clock, q)
    }

    fn runs(d: &[Delivery]) -> Vec<&str> {
        d.iter().map(|d| d.body.run_id.as_str()).collect()
    }

    #[tokio::test]
    async fn delay_is_honoured_and_queues_are_separate() {
        let (_dir, b, clock, q) = setup();
        let other = b.queue("other", Arc::new(clock.clone()));
        q.send(&wake("late"), 500).await.unwrap();
        q.send(&wake("now"), 0).await.unwrap();
        other.send(&wake("elsewhere"), 0).await.unwrap();
        assert_eq!(q.len().unwrap(), 2);
        assert_eq!(q.next_visible_at().unwrap(), Some(1_000));
        assert_eq!(runs(&q.receive(10, 30_000).unwrap()), ["now"]);
        assert_eq!(q.next_visible_at().unwrap(), Some(1_500));
        // (advance by, expected deliveries)
        for (step, want) in [(499, vec![]), (1, vec!["late"])] {
            clock.advance(step);
            assert_eq!(runs(&q.receive(10, 30_000).unwrap()), want);
        }
        assert_eq!(runs(&other.receive(10, 1).unwrap()), ["elsewhere"]);
    }

    #[tokio::test]
    async fn receive_respects_max_and_order() {
        let (_dir, _b, clock, q) = setup();
        for (run, delay) in [("c", 30), ("a", 10), ("b", 20)] {
            q.send(&wake(run), delay).await.unwrap();
        }
        clock.advance(100);
        assert_eq!(runs(&q.receive(2, 1_000).unwrap()), ["a", "b"]);
        assert_eq!(runs(&q.receive(2, 1_000).unwrap()), ["c"]);
        assert!(q.receive(2, 1_000).unwrap().is_empty());
    }

    #[tokio::test]
    async fn visibility_timeout_ack_and_stale_receipts() {
        let (_dir, _b, clock, q) = setup();
        q.send(&wake("r"), 0).await.unwrap();
        let first = q.receive(1, 100).unwrap().remove(0);
        assert_eq!(first.receive_count, 1);
        assert!(q.receive(1, 100).unwrap().is_empty());
        clock.advance(100);
        let second = q.receive(1, 100).unwrap().remove(0);
        assert_eq!((second.id, second.receive_count), (first.id, 2));
        assert_ne!(second.receipt, first.receipt);
        // The first worker's receipt died when the message was received again.
        assert!(!q.ack(&first.receipt).unwrap());
        assert!(!q.change_visibility(&first.receipt, 0).unwrap());
        // A worker can hand the message back early.
        assert!(q.change_visibility(&second.receipt, 10).unwrap());
        assert_eq!(q.next_visible_at().unwrap(), Some(clock.now_ms() + 10));
        assert!(q.ack(&second.receipt).unwrap());
        assert!(!q.ack(&second.receipt).unwrap());
        assert!(q.is_empty().unwrap());
        assert_eq!(q.next_visible_at().unwrap(), None);
    }

    #[tokio::test]
    async fn dead_letters_after_max_receives_and_redrive() {
        let (_dir, _b, clock, q) = setup();
        let q = q.with_max_receive_count(3);
        q.send(&wake("poison"), 0).await.unwrap();
        for n in 1..=3 {
            let d = q.receive(1, 10).unwrap();
            assert_eq!(d[0].receive_count, n);
            clock.advance(10);
        }
        assert!(q.receive(1, 10).unwrap().is_empty());
        assert_eq!(q.len().unwrap(), 0);
        let dead = q.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].receive_count, dead[0].failed_at),
            (3, clock.now_ms())
        );
        assert!(dead[0].reason.contains("3 times"), "{}", dead[0].reason);
        assert_eq!(q.redrive_dead_letters().unwrap(), 1);
        assert!(q.dead_letters().unwrap().is_empty());
        let again = q.receive(1, 10).unwrap();
        assert_eq!((runs(&again), again[0].receive_count), (vec!["poison"], 1));
    }

    #[tokio::test]
    async fn unreadable_body_is_dead_lettered_not_fatal() {
        let (_dir, b, _clock, q) = setup();
        q.send(&wake("good"), 0).await.unwrap();
        let sql = "INSERT INTO queue_messages (queue, body, visible_at, sent_at)
                   VALUES ('work', 'not json', 0, 0)";
        b.db.with(|c| Ok(c.execute(sql, [])?)).unwrap();
        assert_eq!(runs(&q.receive(10, 10).unwrap()), ["good"]);
        let dead = q.dead_letters().unwrap();
        assert_eq!(dead[0].body, "not json");
        assert!(dead[0].reason.starts_with("unreadable body"));
    }
}
