//! The in-process driver: the host loop's receive → handle → ack ([`host::invoke_once`])
//! round by round until one run rests, plus delivery of the webhooks an in-process provider
//! schedules. `switchyard run` / `resume`, the
//! engine tests, the benchmark and `switchyard dev` all drive runs with this one loop; on AWS
//! the SQS trigger does the receiving and the worker function the handling.
//!
//! What to do after each round (return, go again, sleep until when) is decided in core
//! ([`switchyard_core::drive::after_round`]); this file only does the I/O. How the driver waits
//! is a [`Pause`], so tests move a manual clock instead of sleeping.

use crate::host::{self, Function};
use crate::webhook::CallbackRequest;
use crate::worker::Handled;
use crate::{Engine, EngineError};
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_core::drive::{self, Look, Next};
use switchyard_core::model::{CallbackSource, ScheduledCallback};
use switchyard_core::ports::Inbox;
use switchyard_core::state::{RunStatus, WakeUp};
use switchyard_core::{Millis, StoreError};
use tokio::sync::Notify;

/// How a driver waits until a time: a real sleep, or (tests) moving a manual clock.
#[async_trait]
pub trait Pause: Send + Sync {
    /// Returns at `until` (engine clock), or earlier when `wake` is notified (a callback
    /// arrived over HTTP).
    async fn until(&self, engine: &Engine, until: Millis, wake: &Notify);
}

/// Sleeps on the runtime's timer.
pub struct Sleep;

#[async_trait]
impl Pause for Sleep {
    async fn until(&self, engine: &Engine, until: Millis, wake: &Notify) {
        let ms = until.saturating_sub(engine.now());
        if ms > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                _ = wake.notified() => {}
            }
        }
    }
}

/// The driver's limits and manners (documented in docs/architecture.md, "Limits").
#[derive(Debug, Clone)]
pub struct Options {
    /// Messages taken per receive (SQS's maximum batch is 10; locally more is fine).
    pub batch: usize,
    /// How long a received message stays hidden while it is handled.
    pub visibility_ms: u64,
    /// A receive that found the database busy is tried again this soon (a wake-up whose
    /// handling failed comes back after `recovery::retry_delay_ms`, as on every host).
    pub retry_ms: u64,
    /// Look at the run at least this often while waiting: another process sharing the backend
    /// may drive it. `None`: this driver is the only one (tests).
    pub watch_ms: Option<u64>,
    /// A drive returns after this long with nothing happening (a long backoff, a job that
    /// never calls back); `resume` continues it later.
    pub max_idle_ms: u64,
    /// Whether provider webhooks can reach this process (it serves `/hooks/{provider}`).
    pub listening: bool,
    /// A wake-up whose handling fails is an error of the drive instead of a retry (tests,
    /// where a failure is a bug to see, not weather to ride out).
    pub strict: bool,
}

/// `switchyard run`'s longest in-process wait; see [`Options::max_idle_ms`].
pub const MAX_IN_PROCESS_WAIT_MS: u64 = 120_000;

/// See [`Options::watch_ms`].
pub const RUN_WATCH_MS: u64 = 100;

impl Default for Options {
    fn default() -> Self {
        Options {
            batch: 16,
            visibility_ms: 60_000,
            retry_ms: 250,
            watch_ms: Some(RUN_WATCH_MS),
            max_idle_ms: MAX_IN_PROCESS_WAIT_MS,
            listening: false,
            strict: false,
        }
    }
}

/// What one round did.
#[derive(Debug, Default)]
pub struct Round {
    /// Every wake-up handled, with what it came to.
    pub handled: Vec<(WakeUp, Handled)>,
    /// Callbacks delivered.
    pub delivered: usize,
}

impl Round {
    pub fn progressed(&self) -> bool {
        !self.handled.is_empty() || self.delivered > 0
    }
}

/// One driver per process (or per test): an engine, the work queue it receives from, and the
/// in-process providers whose webhooks it delivers.
pub struct Driver {
    engine: Engine,
    work: Arc<dyn Inbox>,
    sources: Vec<Arc<dyn CallbackSource>>,
    /// Callbacks taken from the sources, with the time each is due.
    held: Mutex<Vec<(Millis, ScheduledCallback)>>,
    deliver: AtomicBool,
    pause: Arc<dyn Pause>,
    /// Notified by the webhook route when a callback was applied, so a sleeping drive wakes.
    applied: Arc<Notify>,
    opts: Options,
}

impl Driver {
    pub fn new(engine: Engine, work: Arc<dyn Inbox>, opts: Options) -> Driver {
        Driver {
            engine,
            work,
            sources: Vec::new(),
            held: Mutex::new(Vec::new()),
            deliver: AtomicBool::new(true),
            pause: Arc::new(Sleep),
            applied: Arc::new(Notify::new()),
            opts,
        }
    }

    /// Also delivers the webhooks `source` schedules.
    pub fn with_callbacks(mut self, source: Arc<dyn CallbackSource>) -> Driver {
        self.sources.push(source);
        self
    }

    /// Waits with `pause` instead of sleeping.
    pub fn with_pause(mut self, pause: Arc<dyn Pause>) -> Driver {
        self.pause = pause;
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// What the webhook route notifies when it applied a callback.
    pub fn applied(&self) -> Arc<Notify> {
        self.applied.clone()
    }

    /// Turns delivery of held callbacks on or off (tests that deliver them by hand).
    pub fn set_deliver(&self, on: bool) {
        self.deliver.store(on, Ordering::SeqCst);
    }

    /// Takes every held callback out of the driver, undelivered.
    pub fn take_held(&self) -> Vec<ScheduledCallback> {
        self.collect();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *held)
            .into_iter()
            .map(|(_, c)| c)
            .collect()
    }

    /// When the earliest held callback is due (after taking what the sources scheduled).
    pub fn next_callback_at(&self) -> Option<Millis> {
        if !self.deliver.load(Ordering::SeqCst) {
            return None;
        }
        self.collect();
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.iter().map(|(t, _)| *t).min()
    }

    /// Moves what the sources scheduled into `held`, each due `delay_ms` from now.
    fn collect(&self) {
        let now = self.engine.now();
        let fresh: Vec<_> = self
            .sources
            .iter()
            .flat_map(|s| s.take_scheduled())
            .collect();
        if !fresh.is_empty() {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            held.extend(
                fresh
                    .into_iter()
                    .map(|c| (now.saturating_add(c.delay_ms), c)),
            );
        }
    }

    /// Delivers the held callbacks that are due; returns how many.
    pub async fn deliver_due(&self) -> Result<usize, EngineError> {
        if !self.deliver.load(Ordering::SeqCst) {
            return Ok(0);
        }
        self.collect();
        let now = self.engine.now();
        let due: Vec<ScheduledCallback> = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let (due, later) = std::mem::take(&mut *held)
                .into_iter()
                .partition::<Vec<_>, _>(|(t, _)| *t <= now);
            *held = later;
            due.into_iter().map(|(_, c)| c).collect()
        };
        for cb in &due {
            self.deliver(cb).await?;
        }
        Ok(due.len())
    }

    /// Delivers one callback through the same handler as `POST /hooks/{provider}`, signed
    /// with the provider's webhook secret.
    pub async fn deliver(&self, cb: &ScheduledCallback) -> Result<(), EngineError> {
        let secret = self
            .engine
            .webhook_secret(&cb.provider)
            .cloned()
            .unwrap_or_default();
        let req = CallbackRequest::signed(
            &cb.provider,
            &cb.url,
            &cb.webhook_id,
            &cb.body,
            &secret,
            self.engine.now() / 1000,
        )
        .map_err(|e| EngineError::Internal(format!("signing a local callback: {e}")))?;
        match self.engine.handle_callback(&req).await {
            Ok(r) => tracing::debug!(result = ?r, job_id = %cb.job_id, "local callback delivered"),
            Err(e) if self.opts.strict => return Err(e),
            Err(e) => tracing::warn!(error = %e, job_id = %cb.job_id, "local callback rejected"),
        }
        Ok(())
    }

    /// One round: deliver due callbacks, then receive once and handle what came.
    pub async fn round(&self) -> Result<Round, EngineError> {
        let delivered = self.deliver_due().await?;
        let handled = self.pump().await?;
        Ok(Round { handled, delivered })
    }

    /// Receives once from the work queue and handles what came, through the host loop
    /// ([`host::invoke_once`]): acked on success; a failed wake-up comes back after
    /// `recovery::retry_delay_ms` (or, strict, the drive fails).
    pub async fn pump(&self) -> Result<Vec<(WakeUp, Handled)>, EngineError> {
        let inv = host::Invocation {
            batch_size: self.opts.batch,
            visibility_ms: self.opts.visibility_ms,
            timeout_ms: None,
        };
        let invoked =
            match host::invoke_once(&self.engine, &*self.work, Function::Worker, inv).await {
                Ok(i) => i,
                // Another process holds the database past its busy timeout: nothing received
                // this round; the next one tries again.
                Err(StoreError::Unavailable(e)) if !self.opts.strict => {
                    tracing::warn!(error = %e, "queue busy; retrying");
                    return Ok(Vec::new());
                }
                Err(e) => return Err(e.into()),
            };
        if self.opts.strict && !invoked.report.errors.is_empty() {
            return Err(EngineError::Internal(invoked.report.errors.join("; ")));
        }
        self.collect();
        Ok(invoked.report.wakes)
    }

    /// After a round: what to do next for `run_id` (see [`drive::after_round`]).
    pub async fn next(
        &self,
        run_id: &str,
        progressed: bool,
        idle_since: Millis,
    ) -> Result<Next, EngineError> {
        let snap = match self.engine.load_for(None, run_id).await {
            Ok(s) => s,
            Err(EngineError::Store(StoreError::Unavailable(e))) if !self.opts.strict => {
                tracing::warn!(error = %e, "store busy; retrying");
                return Ok(Next::SleepUntil(self.engine.now() + self.opts.retry_ms));
            }
            Err(e) => return Err(e),
        };
        let now = self.engine.now();
        // Callbacks this driver will not deliver (delivery turned off) bring nothing.
        let held: Vec<(Millis, String, String)> = if self.deliver.load(Ordering::SeqCst) {
            let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            held.iter()
                .map(|(t, c)| (*t, c.provider.clone(), c.job_id.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let held_refs: Vec<(&str, &str)> = held
            .iter()
            .map(|(_, p, j)| (p.as_str(), j.as_str()))
            .collect();
        let next_callback = held.iter().map(|(t, _, _)| *t).min();
        let next_message = self.work.next_visible_at().await?;
        let look = Look {
            header: &snap.header,
            steps: &snap.steps,
            now,
            listening: self.opts.listening,
            held_jobs: &held_refs,
            next_due: [next_message, next_callback].into_iter().flatten().min(),
            progressed,
            idle_since,
            max_idle_ms: self.opts.max_idle_ms,
            watch_ms: self.opts.watch_ms,
        };
        Ok(drive::after_round(&look))
    }

    /// Drives `run_id` until it ends, or waits on something outside this process (a person,
    /// or a job whose webhook cannot reach it), or nothing happened for
    /// [`Options::max_idle_ms`]. Other runs' wake-ups received meanwhile are handled too.
    pub async fn drive(&self, run_id: &str) -> Result<RunStatus, EngineError> {
        let mut idle_since = self.engine.now();
        loop {
            let round = self.round().await?;
            let progressed = round.progressed();
            if progressed {
                idle_since = self.engine.now();
            }
            match self.next(run_id, progressed, idle_since).await? {
                Next::Return(status) => return Ok(status),
                Next::Again => {}
                Next::SleepUntil(t) => self.pause.until(&self.engine, t, &self.applied).await,
            }
        }
    }
}
