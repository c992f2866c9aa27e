//! The long-running worker pool of `switchyard dev` on the embedded backend: `workers`
//! copies of the host loop ([`host::serve`]) over the work queue, one over the notify queue,
//! a loop that delivers the webhooks in-process providers schedule, and the stuck-run sweep.
//! On AWS the SQS triggers do the receiving and the worker and notifier functions the
//! handling, through the same handlers.
//!
//! A further loop runs the stuck-run sweep ([`Engine::sweep`]) every
//! [`PoolOptions::sweep_ms`].
//!
//! Idle loops sleep until the earliest queued message or held callback is due, at most
//! [`PoolOptions::idle_ms`], or until kicked (a request queued work). Stopping: loops finish the
//! message in hand and return; a run being handled parks or ends as usual, releasing its
//! lease, so nothing waits for a lease to expire after a clean stop.

use crate::driver::Driver;
use crate::host::{self, Function};
use crate::Engine;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::ports::{CallbackSender, Inbox};
use tokio::sync::{watch, Notify};

/// The pool's limits (docs/architecture.md, "Limits").
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Concurrent work loops.
    pub workers: usize,
    /// How long a received message stays hidden while it is handled.
    pub visibility_ms: u64,
    /// A receive that failed is tried again this soon (a wake-up whose handling failed
    /// comes back after `recovery::retry_delay_ms`, as on every host).
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
        for _ in 0..self.opts.workers.max(1) {
            let (pool, stop) = (self.clone(), stop.clone());
            tasks.spawn(async move {
                let work = host::Invocation {
                    batch_size: 1,
                    visibility_ms: pool.opts.visibility_ms,
                    timeout_ms: Some(pool.opts.invocation_ms),
                };
                let idle = pool.idle();
                host::serve(
                    &pool.engine,
                    &*pool.work,
                    Function::Worker,
                    work,
                    &idle,
                    stop,
                )
                .await
            });
        }
        let (pool, stop2) = (self.clone(), stop.clone());
        tasks.spawn(async move {
            let notify = host::Invocation {
                batch_size: 1,
                visibility_ms: pool.opts.visibility_ms,
                timeout_ms: None,
            };
            let idle = pool.idle();
            let notifier = pool.engine.notifier();
            let function = Function::Notifier(&notifier, &*pool.sender);
            host::serve(&pool.engine, &*pool.notify, function, notify, &idle, stop2).await
        });
        let (pool, stop3) = (self.clone(), stop.clone());
        tasks.spawn(async move { pool.sweep_loop(stop3).await });
        let (pool, stop4) = (self.clone(), stop.clone());
        tasks.spawn(async move { pool.callback_loop(stop4).await });
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "a pool loop panicked");
            }
        }
    }

    fn idle(&self) -> host::Idle {
        host::Idle {
            max_ms: self.opts.idle_ms,
            retry_ms: self.opts.retry_ms,
            kick: Some(self.kick.clone()),
        }
    }

    /// Delivers the webhooks in-process providers schedule, when each is due.
    async fn callback_loop(&self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            match self.callbacks.deliver_due().await {
                Ok(n) if n > 0 => self.kick.notify_waiters(),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "delivering local callbacks failed"),
            }
            let now = self.engine.now();
            let ms = self
                .callbacks
                .next_callback_at()
                .map_or(self.opts.idle_ms, |t| t.saturating_sub(now))
                .min(self.opts.idle_ms);
            host::pause(ms.max(1), Some(&self.kick), &mut stop).await;
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
}
