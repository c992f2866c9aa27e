//! The `Queue` port on SQLite, plus the receive side that SQS and its Lambda trigger provide on
//! AWS: visibility timeouts, receipts, receive counts and a dead-letter table. The engine's driver
//! polls it through the [`Inbox`] port.

use crate::db::{Db, DbError};
use async_trait::async_trait;
use rusqlite::{params, Connection};
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

    /// Messages in the queue, visible or in flight (dead letters excluded).
    pub async fn len(&self) -> Result<usize, StoreError> {
        let q = self.name.as_str();
        self.db
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM queue_messages WHERE queue = ?1",
                    [q],
                    |r| r.get(0),
                )?)
            })
            .await
    }

    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        self.len().await.map(|n| n == 0)
    }
}

/// Takes up to `max` visible messages of queue `name`, oldest visibility first, hiding each
/// until `hidden_until`. Messages already delivered `max_receive_count` times, or whose body no
/// longer parses, go to the dead-letter table instead.
fn take_visible(
    c: &Connection,
    name: QueueName,
    max: usize,
    now: Millis,
    hidden_until: Millis,
    max_receive_count: u32,
) -> Result<Vec<Delivery>, DbError> {
    let q = name.as_str();
    // Dead-letter in bulk first, so the LIMIT below only sees deliverable messages.
    let reason = format!("received {max_receive_count} times without ack");
    let buried = c.execute(
        "INSERT INTO dead_letters (id, queue, body, receive_count, reason, failed_at)
         SELECT id, queue, body, receive_count, ?4, ?2 FROM queue_messages
         WHERE queue = ?1 AND visible_at <= ?2 AND receive_count >= ?3",
        params![q, now, max_receive_count, reason],
    )?;
    if buried > 0 {
        // Poison messages are an operator's business: make them visible in the logs.
        tracing::warn!(queue = q, count = buried, "{reason}: moved to dead letters");
        c.execute(
            "DELETE FROM queue_messages
             WHERE queue = ?1 AND visible_at <= ?2 AND receive_count >= ?3",
            params![q, now, max_receive_count],
        )?;
    }
    let candidates = {
        let mut stmt = c.prepare_cached(
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
        let message = match Message::from_body(name, &body) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(queue = q, id, "unreadable message moved to dead letters");
                c.execute(
                    "INSERT INTO dead_letters (id, queue, body, receive_count, reason, failed_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![id, q, body, count, format!("unreadable body: {e}"), now],
                )?;
                c.execute("DELETE FROM queue_messages WHERE id = ?1", [id])?;
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
        c.prepare_cached(
            "UPDATE queue_messages SET receive_count = ?1, receipt = ?2, visible_at = ?3
             WHERE id = ?4",
        )?
        .execute(params![count, receipt, hidden_until, id])?;
        out.push(Delivery {
            id: id.to_string(),
            receipt,
            message,
            receive_count: count,
        });
    }
    Ok(out)
}

/// Puts dead letters of queue `q` back, visible at `now`, with a fresh receive count.
fn redrive_ids(
    c: &Connection,
    q: &str,
    ids: Option<Vec<String>>,
    now: Millis,
) -> Result<usize, DbError> {
    let ids: Vec<i64> = match ids {
        Some(ids) => ids.iter().filter_map(|i| i.parse().ok()).collect(),
        None => {
            let mut stmt = c.prepare("SELECT id FROM dead_letters WHERE queue = ?1")?;
            let rows = stmt.query_map([q], |r| r.get(0))?;
            rows.collect::<Result<Vec<i64>, _>>()?
        }
    };
    let mut moved = 0;
    for id in ids {
        // The message keeps its id, so a redriven message is recognisably the same one.
        moved += c.execute(
            "INSERT INTO queue_messages (id, queue, body, visible_at, receive_count, sent_at)
             SELECT id, queue, body, ?3, 0, ?3 FROM dead_letters
             WHERE queue = ?1 AND id = ?2",
            params![q, id, now],
        )?;
        c.execute(
            "DELETE FROM dead_letters WHERE queue = ?1 AND id = ?2",
            params![q, id],
        )?;
    }
    Ok(moved)
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn send(&self, message: &Message, delay_ms: u64) -> Result<(), StoreError> {
        let body = message.to_body()?;
        let now = self.clock.now_ms();
        let q = message.queue().as_str();
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO queue_messages (queue, body, visible_at, receive_count, sent_at)
                     VALUES (?1, ?2, ?3, 0, ?4)",
                )?
                .execute(params![q, body, now.saturating_add(delay_ms), now])?;
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl Inbox for SqliteQueue {
    fn queue(&self) -> QueueName {
        self.name
    }

    /// Visibility and dead-lettering as SQS does them (see [`take_visible`]).
    async fn receive(&self, max: usize, visibility_ms: u64) -> Result<Vec<Delivery>, StoreError> {
        let now = self.clock.now_ms();
        let (name, q) = (self.name, self.name.as_str());
        // An empty poll is the common case of an idle worker: answer it with a read (no write
        // lock, no journal write) and take the write only when there is something to take.
        let visible: bool = self
            .db
            .read(move |c| {
                Ok(c.prepare_cached(
                    "SELECT EXISTS(SELECT 1 FROM queue_messages WHERE queue = ?1 AND visible_at <= ?2)",
                )?
                .query_row(params![q, now], |r| r.get(0))?)
            })
            .await?;
        if !visible {
            return Ok(Vec::new());
        }
        let hidden_until = now.saturating_add(visibility_ms);
        let max_count = self.max_receive_count;
        self.db
            .write(move |c| take_visible(c, name, max, now, hidden_until, max_count))
            .await
    }

    /// Deletes a received message. `false` if the receipt is stale (the message was received
    /// again since, or already acked): as with SQS, the worker just moves on.
    async fn ack(&self, receipt: &str) -> Result<bool, StoreError> {
        let (q, receipt) = (self.name.as_str(), receipt.to_string());
        self.db
            .write(move |c| {
                let n = c
                    .prepare_cached("DELETE FROM queue_messages WHERE queue = ?1 AND receipt = ?2")?
                    .execute(params![q, receipt])?;
                Ok(n == 1)
            })
            .await
    }

    /// Makes a received message visible again `delay_ms` from now (0: at once). `false` if the
    /// receipt is stale.
    async fn change_visibility(&self, receipt: &str, delay_ms: u64) -> Result<bool, StoreError> {
        let at = self.clock.now_ms().saturating_add(delay_ms);
        let (q, receipt) = (self.name.as_str(), receipt.to_string());
        self.db
            .write(move |c| {
                let n = c.execute(
                    "UPDATE queue_messages SET visible_at = ?1 WHERE queue = ?2 AND receipt = ?3",
                    params![at, q, receipt],
                )?;
                Ok(n == 1)
            })
            .await
    }

    /// When the earliest message becomes visible (in flight ones included: they reappear at
    /// their visibility deadline). `None` if the queue is empty. Past values mean "now".
    async fn next_visible_at(&self) -> Result<Option<Millis>, StoreError> {
        let q = self.name.as_str();
        self.db
            .read(move |c| {
                Ok(
                    c.prepare_cached(
                        "SELECT MIN(visible_at) FROM queue_messages WHERE queue = ?1",
                    )?
                    .query_row([q], |r| r.get(0))?,
                )
            })
            .await
    }

    /// This queue's dead letters, oldest message first.
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let q = self.name.as_str();
        self.db
            .read(move |c| {
                let mut stmt = c.prepare(
                    "SELECT id, body, receive_count, reason, failed_at FROM dead_letters
                     WHERE queue = ?1 ORDER BY id",
                )?;
                let rows = stmt.query_map([q], |r| {
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
            .await
    }

    /// Puts dead letters of this queue back, visible now, with a fresh receive count: every
    /// one, or those whose id is in `ids`. Returns how many moved.
    async fn redrive(&self, ids: Option<&[String]>) -> Result<usize, StoreError> {
        let now = self.clock.now_ms();
        let q = self.name.as_str();
        let ids = ids.map(<[String]>::to_vec);
        self.db.write(move |c| redrive_ids(c, q, ids, now)).await
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
        assert_eq!(q.next_visible_at().await.unwrap(), None);
        q.send(&wake("r"), 500).await.unwrap();
        assert_eq!(q.next_visible_at().await.unwrap(), Some(1_500));
        clock.advance(500);
        let first = q.receive(1, 100).await.unwrap().remove(0);
        assert_eq!(
            q.next_visible_at().await.unwrap(),
            Some(clock.now_ms() + 100)
        );
        clock.advance(100);
        let second = q.receive(1, 100).await.unwrap().remove(0);
        // The first worker's receipt died when the message was received again.
        assert!(!q.ack(&first.receipt).await.unwrap());
        assert!(!q.change_visibility(&first.receipt, 0).await.unwrap());
        assert!(q.ack(&second.receipt).await.unwrap());
        assert!(!q.ack(&second.receipt).await.unwrap());
        assert!(q.is_empty().await.unwrap());
    }

    #[tokio::test]
    async fn unreadable_body_is_dead_lettered_not_fatal() {
        let (_dir, b, _clock, q) = setup();
        q.send(&wake("good"), 0).await.unwrap();
        let sql = "INSERT INTO queue_messages (queue, body, visible_at, sent_at)
                   VALUES ('work', 'not json', 0, 0)";
        b.db.write(|c| Ok(c.execute(sql, [])?)).await.unwrap();
        let got = q.receive(10, 10).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message.run_id(), "good");
        let dead = q.dead_letters().await.unwrap();
        assert_eq!(dead[0].body, "not json");
        assert!(
            dead[0].reason.starts_with("unreadable body"),
            "{}",
            dead[0].reason
        );
    }
}
