//! The long-running worker pool of `switchyard dev`: `workers` concurrent loops that receive
//! one wake-up at a time from the work queue and handle it, one loop that delivers
//! notifications from the notify queue, and delivery of the webhooks in-process providers
//! schedule. On AWS the SQS triggers do the receiving and the worker and notifier functions
//! the handling; this is the same use-cases driven by a process.
//!
//! A further loop runs the stuck-run sweep ([`Engine::sweep`]) every
//! [`PoolOptions::sweep_ms`].
//!
//! Idle loops sleep until the earliest queued message or held callback is due, at most
//! [`PoolOptions::idle_ms`], or until kicked (a request queued work). Stopping: loops finish the
//! message in hand and return; a run being handled parks or ends as usual, releasing its
//! lease, so nothing waits for a lease to expire after a clean stop.

use crate::driver::Driver;
use crate::notifier::{disposition, Disposition};
use crate::Engine;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::ports::{CallbackSender, Delivery, Inbox, Message};
use switchyard_core::Millis;
use tokio::sync::{watch, Notify};

/// The pool's limits (docs/architecture.md, "Limits").
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Concurrent work loops.
    pub workers: usize,
    /// How long a received message stays hidden while it is handled.
    pub visibility_ms: u64,
    /// A wake-up whose handling failed comes back this soon.
    pub retry_ms: u64,
    /// Longest sleep of an idle loop (it also wakes when kicked or when a message is due).
    pub idle_ms: u64,
    /// How long one `handle` may drive a run before yielding it through the queue, as a
    /// Lambda invocation would (keeps a stop prompt and one long run from holding a loop).
    pub invocation_ms: u64,
    /// How often the stuck-run sweep runs (`core::recovery`).
    pub sweep_ms: u64,
}

/// `switchyard dev`'s default number of work loops.
pub const DEFAULT_WORKERS: usize = 8;

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            workers: DEFAULT_WORKERS,
            visibility_ms: 30_000,
            retry_ms: 250,
            idle_ms: 1_000,
            invocation_ms: 60_000,
            sweep_ms: switchyard_core::recovery::SWEEP_INTERVAL_MS,
        }
    }
}

/// The pool's parts.
pub struct Pool {
    pub engine: Engine,
    pub work: Arc<dyn Inbox>,
    pub notify: Arc<dyn Inbox>,
    pub sender: Arc<dyn CallbackSender>,
    /// Delivers the callbacks of in-process providers (and owns nothing else here).
    pub callbacks: Arc<Driver>,
    /// Notified when work was queued from outside the loops (an API request).
    pub kick: Arc<Notify>,
    pub opts: PoolOptions,
}

impl Pool {
    /// Runs until `stop` turns true, then returns once every loop has finished the message
    /// it holds.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..self.opts.workers.max(1) {
            let (pool, stop) = (self.clone(), stop.clone());
            tasks.spawn(async move { pool.work_loop(i, stop).await });
        }
        let (pool, stop2) = (self.clone(), stop.clone());
        tasks.spawn(async move { pool.notify_loop(stop2).await });
        let (pool, stop3) = (self.clone(), stop.clone());
        tasks.spawn(async move { pool.sweep_loop(stop3).await });
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "a pool loop panicked");
            }
        }
    }

    async fn work_loop(&self, index: usize, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            if let Err(e) = self.callbacks.deliver_due().await {
                tracing::warn!(error = %e, "delivering local callbacks failed");
            }
            match self.work.receive(1, self.opts.visibility_ms).await {
                Ok(got) if !got.is_empty() => {
                    for d in got {
                        self.handle_wake(d).await;
                    }
                    // What this handled may have queued more (a yield, a notification).
                    self.kick.notify_waiters();
                }
                Ok(_) => {
                    let due = self.next_due(&*self.work, true).await;
                    self.idle(due, &mut stop).await;
                }
                Err(e) => {
                    tracing::warn!(worker = index, error = %e, "receiving from the work queue failed");
                    self.idle(Some(self.engine.now() + self.opts.retry_ms), &mut stop)
                        .await;
                }
            }
        }
    }

    /// The stuck-run sweep every `sweep_ms`: a run whose wake-up was lost (a process killed
    /// between writing a run and queueing its start) is woken again.
    async fn sweep_loop(&self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(self.opts.sweep_ms)) => {}
                _ = stop.changed() => break,
            }
            match self.engine.sweep().await {
                Ok(swept) if !swept.rewoken.is_empty() => self.kick.notify_waiters(),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "stuck-run sweep failed; the next one tries again")
                }
            }
        }
    }

    async fn handle_wake(&self, d: Delivery) {
        let Message::Wake(wake) = d.message else {
            return;
        };
        let deadline = self.engine.now() + self.opts.invocation_ms;
        match self.engine.handle(&wake, Some(deadline)).await {
            Ok(handled) => {
                tracing::debug!(run_id = %wake.run_id, ?handled, "wake-up handled");
                self.ack(&*self.work, &d.receipt).await;
            }
            Err(e) => {
                tracing::warn!(run_id = %wake.run_id, error = %e, "wake-up failed; retrying");
                self.later(&*self.work, &d.receipt, self.opts.retry_ms)
                    .await;
            }
        }
    }

    async fn notify_loop(&self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            match self.notify.receive(1, self.opts.visibility_ms).await {
                Ok(got) if !got.is_empty() => {
                    for d in got {
                        self.deliver_notification(d).await;
                    }
                }
                Ok(_) => {
                    let due = self.next_due(&*self.notify, false).await;
                    self.idle(due, &mut stop).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "receiving from the notify queue failed");
                    self.idle(Some(self.engine.now() + self.opts.retry_ms), &mut stop)
                        .await;
                }
            }
        }
    }

    async fn deliver_notification(&self, d: Delivery) {
        let Message::Notify(n) = &d.message else {
            return;
        };
        match self.engine.notify(n, d.receive_count, &*self.sender).await {
            Ok(notified) => match disposition(&notified, d.receive_count) {
                Disposition::Done => self.ack(&*self.notify, &d.receipt).await,
                Disposition::Later(delay_ms) => {
                    self.later(&*self.notify, &d.receipt, delay_ms).await
                }
                // Visible again at once: the next receive finds it past its receive count.
                Disposition::DeadLetter => self.later(&*self.notify, &d.receipt, 0).await,
            },
            Err(e) => {
                tracing::warn!(run_id = %n.run_id, error = %e, "notification failed; retrying");
                self.later(&*self.notify, &d.receipt, self.opts.retry_ms)
                    .await;
            }
        }
    }

    async fn ack(&self, inbox: &dyn Inbox, receipt: &str) {
        if let Err(e) = inbox.ack(receipt).await {
            tracing::warn!(error = %e, "ack failed; the message will come back");
        }
    }

    async fn later(&self, inbox: &dyn Inbox, receipt: &str, delay_ms: u64) {
        if let Err(e) = inbox.change_visibility(receipt, delay_ms).await {
            tracing::warn!(error = %e, "visibility change failed; the message comes back at its timeout");
        }
    }

    /// When the loop has something to do next: the earliest message of `inbox`, and (work
    /// loops) the earliest held callback.
    async fn next_due(&self, inbox: &dyn Inbox, callbacks: bool) -> Option<Millis> {
        let message = match inbox.next_visible_at().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "reading the queue's next due time failed");
                None
            }
        };
        let callback = callbacks
            .then(|| self.callbacks.next_callback_at())
            .flatten();
        [message, callback].into_iter().flatten().min()
    }

    /// Sleeps until `due` (at most `idle_ms`), a kick, or a stop.
    async fn idle(&self, due: Option<Millis>, stop: &mut watch::Receiver<bool>) {
        let now = self.engine.now();
        let ms = due
            .map_or(self.opts.idle_ms, |t| t.saturating_sub(now))
            .min(self.opts.idle_ms);
        if ms == 0 {
            tokio::task::yield_now().await;
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            _ = self.kick.notified() => {}
            _ = stop.changed() => {}
        }
    }
}
