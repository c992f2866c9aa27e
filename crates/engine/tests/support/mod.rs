//! Test harness: an [`Engine`] on the embedded backend (SQLite + files in a temp dir) with the
//! built-in `local/*` models and a [`ManualClock`], moved by the same driver as the CLI
//! ([`switchyard_engine::driver`]) in strict mode. It never sleeps: the driver's pause moves
//! the manual clock to the next visible wake-up or the next held provider callback.

#![allow(dead_code)] // each test uses a part of the harness

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use switchyard_core::drive::Next;
use switchyard_core::model::{ModelInfo, Provider};
use switchyard_core::ports::{Inbox, Message, QueueName, StateStore};
use switchyard_core::state::{
    EventKind, HistoryEvent, RunSnapshot, RunStatus, StepRecord, WakeReason, WakeUp,
};
use switchyard_core::workflow::{compile, NoFiles, Workflow};
use switchyard_core::{webhook, Clock, ErrorClass};
use switchyard_engine::driver::{self, Driver, Pause};
use switchyard_engine::intake::{StartRequest, Started};
use switchyard_engine::webhook::{CallbackRequest, CallbackResult};
use switchyard_engine::worker::Handled;
use switchyard_engine::{Config, Engine, EngineError, Providers, Workflows};
use switchyard_local::{Backend, ManualClock, SqliteQueue};
use switchyard_providers::{LocalConfig, LocalProvider, ScheduledCallback};
use tempfile::TempDir;

/// Where every manual clock starts: a realistic epoch time, so webhook timestamps make sense.
pub const T0: u64 = 1_700_000_000_000;
pub const TENANT: &str = "acme";
pub const OWNER: &str = "test-worker";
const MAX_ITERATIONS: usize = 500;

/// Strips the common indentation so YAML can sit indented in the test source.
pub fn dedent(src: &str) -> String {
    let indent = src
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    src.lines()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Compiles an inline workflow against a model catalog; panics with the diagnostics.
pub fn compile_with(src: &str, models: &[ModelInfo]) -> Workflow {
    match compile(&dedent(src), &NoFiles, models) {
        Ok(w) => w,
        Err(d) => panic!("test workflow does not compile: {d:#?}"),
    }
}

/// The driver's pause in tests: jump the manual clock to the time, never sleep.
struct ManualPause(ManualClock);

#[async_trait::async_trait]
impl Pause for ManualPause {
    async fn until(&self, _engine: &Engine, until: u64, _wake: &tokio::sync::Notify) {
        if until > self.0.now_ms() {
            self.0.set(until);
        }
    }
}

#[async_trait::async_trait]
impl switchyard_engine::Waits for ManualPause {
    async fn until(&self, _clock: &dyn Clock, at: u64) {
        if at > self.0.now_ms() {
            self.0.set(at);
        }
    }
}

/// What a test compares between two runs: everything about a step except times, ids and
/// versions.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSummary {
    pub status: String,
    pub attempt: u32,
    pub output: Value,
    pub chosen: Option<String>,
    pub error_class: Option<ErrorClass>,
    pub model: Option<String>,
    pub fallback_used: bool,
    pub repairs: u32,
}

pub struct H {
    pub engine: Engine,
    pub queue: SqliteQueue,
    pub provider: Arc<LocalProvider>,
    pub clock: ManualClock,
    pub backend: Backend,
    /// The driver every local entry point uses, strict (a failed wake-up fails the test) and
    /// the only one moving runs.
    pub driver: Driver,
    /// Every wake-up handled, with the clock at the time and what it came to.
    log: Mutex<Vec<(u64, WakeUp, Handled)>>,
    _dir: TempDir,
}

impl H {
    pub fn new() -> H {
        H::build(|_| {}, Vec::new())
    }

    pub fn with_config(f: impl FnOnce(&mut Config)) -> H {
        H::build(f, Vec::new())
    }

    /// An engine with the local provider, the given extra providers, and `Config` as changed
    /// by `f`.
    pub fn build(f: impl FnOnce(&mut Config), extra: Vec<Arc<dyn Provider>>) -> H {
        H::build_wrapped(f, extra, |s| s, true)
    }

    /// An engine whose state store is the backend's wrapped by `wrap` (a store that injects
    /// faults). Its driver is not strict: a wake-up whose handling failed comes back, as it
    /// would from the queue.
    pub fn with_store(wrap: impl FnOnce(Arc<dyn StateStore>) -> Arc<dyn StateStore>) -> H {
        H::build_wrapped(|_| {}, Vec::new(), wrap, false)
    }

    /// [`H::with_store`] with `Config` as changed by `f`.
    pub fn with_store_and_config(
        f: impl FnOnce(&mut Config),
        wrap: impl FnOnce(Arc<dyn StateStore>) -> Arc<dyn StateStore>,
    ) -> H {
        H::with_store_opts(false, f, wrap)
    }

    /// [`H::with_store_and_config`], with the built-in models' calls claimed
    /// ([`H::with_store_claiming`]) if `claiming`.
    pub fn with_store_opts(
        claiming: bool,
        f: impl FnOnce(&mut Config),
        wrap: impl FnOnce(Arc<dyn StateStore>) -> Arc<dyn StateStore>,
    ) -> H {
        let local = LocalConfig {
            claim_calls: claiming,
            ..LocalConfig::default()
        };
        H::build_local(f, Vec::new(), wrap, false, local)
    }

    /// [`H::with_store`] with the built-in models' calls claimed as hosted calls are
    /// (`LocalConfig::claim_calls`): every write a paid call makes is there to fail.
    pub fn with_store_claiming(wrap: impl FnOnce(Arc<dyn StateStore>) -> Arc<dyn StateStore>) -> H {
        H::build_local(
            |_| {},
            Vec::new(),
            wrap,
            false,
            LocalConfig {
                claim_calls: true,
                ..LocalConfig::default()
            },
        )
    }

    fn build_wrapped(
        f: impl FnOnce(&mut Config),
        extra: Vec<Arc<dyn Provider>>,
        wrap: impl FnOnce(Arc<dyn StateStore>) -> Arc<dyn StateStore>,
        strict: bool,
    ) -> H {
        H::build_local(f, extra, wrap, strict, LocalConfig::default())
    }

    /// An engine on `clock` (which `extra` providers may move), its store wrapped by `wrap`,
    /// its driver not strict.
    pub fn build_with_clock(
        clock: ManualClock,
        extra: Vec<Arc<dyn Provider>>,
        wrap: impl FnOnce(Arc<dyn StateStore>) -> Arc<dyn StateStore>,
    ) -> H {
        H::build_on(clock, |_| {}, extra, wrap, false, LocalConfig::default())
    }

    fn build_local(
        f: impl FnOnce(&mut Config),
        extra: Vec<Arc<dyn Provider>>,
        wrap: impl FnOnce(Arc<dyn StateStore>) -> Arc<dyn StateStore>,
        strict: bool,
        local: LocalConfig,
    ) -> H {
        H::build_on(ManualClock::new(T0), f, extra, wrap, strict, local)
    }

    fn build_on(
        clock: ManualClock,
        f: impl FnOnce(&mut Config),
        extra: Vec<Arc<dyn Provider>>,
        wrap: impl FnOnce(Arc<dyn StateStore>) -> Arc<dyn StateStore>,
        strict: bool,
        local: LocalConfig,
    ) -> H {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = Backend::open(dir.path()).expect("open backend");
        let clock_dyn: Arc<dyn Clock> = Arc::new(clock.clone());
        let queue = backend.queue(QueueName::Work, clock_dyn.clone());
        let provider = Arc::new(LocalProvider::new(local));
        let mut providers = Providers::new().with(provider.clone());
        for p in extra {
            providers = providers.with(p);
        }
        let mut config = Config {
            owner: OWNER.into(),
            webhook_secrets: HashMap::from([("*".to_string(), secret())]),
            public_url: "http://switchyard.test".into(),
            // As the Lambda functions run: the held path is the one every group checks.
            hold_free_records: true,
            ..Config::default()
        };
        f(&mut config);
        let engine = Engine::new(
            wrap(Arc::new(backend.store())),
            Arc::new(queue.clone()),
            Arc::new(backend.blobs()),
            clock_dyn,
            Arc::new(providers),
            Arc::new(Workflows::new()),
            config,
        )
        .with_waits(Arc::new(ManualPause(clock.clone())));
        let driver = Driver::new(
            engine.clone(),
            Arc::new(queue.clone()),
            driver::Options {
                watch_ms: None,
                // Only the iteration bound ends a drive that makes no progress.
                max_idle_ms: u64::MAX / 4,
                strict,
                ..driver::Options::default()
            },
        )
        .with_callbacks(provider.clone())
        .with_pause(Arc::new(ManualPause(clock.clone())));
        H {
            engine,
            queue,
            provider,
            clock,
            backend,
            driver,
            log: Mutex::new(Vec::new()),
            _dir: dir,
        }
    }

    /// A second engine on the same ports (store, queue, blobs, clock, providers) with another
    /// lease owner: another worker process.
    pub fn other_worker(&self, owner: &str) -> Engine {
        let mut config = (*self.engine.config).clone();
        config.owner = owner.into();
        Engine::new(
            self.engine.store.clone(),
            self.engine.queue.clone(),
            self.engine.blobs.clone(),
            self.engine.clock.clone(),
            self.engine.providers.clone(),
            self.engine.workflows.clone(),
            config,
        )
    }

    pub fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Whether `drive` delivers due callbacks itself (tests of the webhook turn it off).
    pub fn set_auto_deliver(&self, on: bool) {
        self.driver.set_deliver(on);
    }

    pub fn compile(&self, src: &str) -> Workflow {
        compile_with(src, &self.engine.providers.models())
    }

    pub fn request(wf: &Workflow, input: Value) -> StartRequest {
        StartRequest {
            workflow: wf.name.clone(),
            version: None,
            input,
            callback_url: None,
            metadata: None,
        }
    }

    pub async fn try_start(
        &self,
        wf: &Workflow,
        input: Value,
        key: Option<&str>,
    ) -> Result<Started, EngineError> {
        self.engine
            .start_workflow(TENANT, wf, H::request(wf, input), key)
            .await
    }

    /// Compiles and starts a workflow; returns the run id.
    pub async fn start(&self, yaml: &str, input: Value) -> String {
        let wf = self.compile(yaml);
        self.start_wf(&wf, input).await
    }

    pub async fn start_wf(&self, wf: &Workflow, input: Value) -> String {
        let started = self.try_start(wf, input, None).await.expect("start run");
        assert!(!started.existing);
        started.run_id
    }

    /// Starts and drives a run to where it stops; returns (run id, status).
    pub async fn run(&self, yaml: &str, input: Value) -> (String, RunStatus) {
        let run = self.start(yaml, input).await;
        let status = self.drive(&run).await;
        (run, status)
    }

    /// Sends an extra wake-up, visible after `delay_ms`.
    pub async fn wake(&self, run_id: &str, reason: WakeReason, delay_ms: u64) {
        let w = WakeUp {
            run_id: run_id.into(),
            reason,
            due_at: None,
        };
        switchyard_core::ports::Queue::send(&self.queue, &Message::Wake(w), delay_ms)
            .await
            .expect("send wake-up");
    }

    /// Takes every callback the provider scheduled that was not delivered yet.
    pub fn take_callbacks(&self) -> Vec<ScheduledCallback> {
        self.driver.take_held()
    }

    fn record(&self, handled: &[(WakeUp, Handled)]) {
        let now = self.now();
        let mut log = self.log.lock().expect("log lock");
        log.extend(handled.iter().map(|(w, h)| (now, w.clone(), h.clone())));
    }

    /// Handles every wake-up visible now, once, without moving the clock. Returns what each
    /// came to.
    pub async fn step(&self) -> Vec<Handled> {
        let handled = match self.driver.pump().await {
            Ok(h) => h,
            Err(e) => panic!("handling a wake-up failed: {e}"),
        };
        self.record(&handled);
        handled.into_iter().map(|(_, h)| h).collect()
    }

    /// Drives a run until it ends or waits on something outside (an approval, or a callback
    /// nobody will deliver). Moves the manual clock instead of sleeping.
    pub async fn drive(&self, run_id: &str) -> RunStatus {
        self.drive_injecting(run_id, &[]).await
    }

    /// Like [`H::drive`], and at loop iteration `i` sends the extra wake-ups `(i, reason,
    /// delay_ms)` listed for it.
    pub async fn drive_injecting(
        &self,
        run_id: &str,
        inject: &[(usize, WakeReason, u64)],
    ) -> RunStatus {
        let mut idle_since = self.now();
        for i in 0..MAX_ITERATIONS {
            for (_, reason, delay) in inject.iter().filter(|(at, _, _)| *at == i) {
                self.wake(run_id, *reason, *delay).await;
            }
            let round = match self.driver.round().await {
                Ok(r) => r,
                Err(e) => panic!("driving {run_id} failed: {e}"),
            };
            self.record(&round.handled);
            if round.progressed() {
                idle_since = self.now();
            }
            let next = self
                .driver
                .next(run_id, round.progressed(), idle_since)
                .await;
            match next.expect("look at the run") {
                Next::Return(status) => return status,
                Next::Again => {}
                Next::SleepUntil(t) => {
                    if t > self.now() {
                        self.clock.set(t);
                    }
                }
            }
        }
        panic!("run {run_id} did not settle within {MAX_ITERATIONS} iterations");
    }

    /// Moves the clock to the next visible wake-up (if later than now); returns that time.
    pub async fn skip_to_next_wake(&self) -> Option<u64> {
        let t = self.queue.next_visible_at().await.expect("next visible")?;
        if t > self.now() {
            self.clock.set(t);
        }
        Some(t)
    }

    /// Handles every wake-up left in the queue, moving the clock as needed (late duplicates
    /// after a run ended, timers nobody needs any more).
    pub async fn drain(&self) -> Vec<Handled> {
        let mut out = Vec::new();
        for _ in 0..MAX_ITERATIONS {
            if self.skip_to_next_wake().await.is_none() {
                return out;
            }
            out.extend(self.step().await);
        }
        panic!("the queue did not drain");
    }

    /// The wake-ups handled so far for a run: (clock, wake-up, result).
    pub fn handled(&self, run_id: &str) -> Vec<(u64, WakeUp, Handled)> {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .filter(|(_, w, _)| w.run_id == run_id)
            .cloned()
            .collect()
    }

    pub fn last_handled(&self, run_id: &str) -> Handled {
        self.handled(run_id)
            .last()
            .map(|(_, _, h)| h.clone())
            .expect("a wake-up was handled")
    }

    /// A callback as the HTTP route would build it, signed with the engine's secret.
    pub fn callback_request(&self, cb: &ScheduledCallback) -> CallbackRequest {
        CallbackRequest::signed(
            &cb.provider,
            &cb.url,
            &cb.webhook_id,
            &cb.body,
            &secret(),
            self.now() / 1000,
        )
        .expect("sign")
    }

    pub async fn deliver(&self, cb: &ScheduledCallback) -> Result<CallbackResult, EngineError> {
        self.engine
            .handle_callback(&self.callback_request(cb))
            .await
    }

    pub async fn snap(&self, run_id: &str) -> RunSnapshot {
        self.engine.load_for(None, run_id).await.expect("load run")
    }

    pub async fn rec(&self, run_id: &str, step: &str) -> StepRecord {
        self.snap(run_id)
            .await
            .step(step)
            .cloned()
            .unwrap_or_else(|| panic!("step `{step}` has no record"))
    }

    /// The output value of a step (read back from the blob store if it is stored there).
    pub async fn output(&self, run_id: &str, step: &str) -> Value {
        let r = self.rec(run_id, step).await;
        match &r.output {
            Some(o) => self.engine.load_value(o).await.expect("load output"),
            None => Value::Null,
        }
    }

    /// The run's output value.
    pub async fn run_output(&self, run_id: &str) -> Value {
        match &self.snap(run_id).await.header.output {
            Some(o) => self.engine.load_value(o).await.expect("load output"),
            None => Value::Null,
        }
    }

    pub async fn events(&self, run_id: &str) -> Vec<HistoryEvent> {
        self.engine.store.events(run_id).await.expect("events")
    }

    pub async fn step_events(
        &self,
        run_id: &str,
        kind: EventKind,
        step: &str,
    ) -> Vec<HistoryEvent> {
        self.events(run_id)
            .await
            .into_iter()
            .filter(|e| e.kind == kind && e.step.as_deref() == Some(step))
            .collect()
    }

    /// How many attempts of `step` were started (StepStarted events).
    pub async fn started_count(&self, run_id: &str, step: &str) -> usize {
        self.step_events(run_id, EventKind::StepStarted, step)
            .await
            .len()
    }

    /// Every step record, summarized for comparison, by step id.
    pub async fn summary(&self, run_id: &str) -> BTreeMap<String, StepSummary> {
        let snap = self.snap(run_id).await;
        let mut out = BTreeMap::new();
        for r in &snap.steps {
            let output = match &r.output {
                Some(o) => self.engine.load_value(o).await.expect("load output"),
                None => Value::Null,
            };
            out.insert(
                r.step.clone(),
                StepSummary {
                    status: r.status.as_str().to_string(),
                    attempt: r.attempt,
                    output,
                    chosen: r.chosen.clone(),
                    error_class: r.error.as_ref().map(|e| e.class),
                    model: r.model.clone(),
                    fallback_used: r.fallback_used,
                    repairs: r.repairs,
                },
            );
        }
        out
    }
}

/// The webhook secret every test engine verifies callbacks with.
pub fn secret() -> String {
    webhook::secret_from_bytes(b"switchyard engine tests secret!!")
}

/// The error class a run ended with.
pub fn run_class(snap: &RunSnapshot) -> Option<ErrorClass> {
    snap.header.error.as_ref().map(|e| e.class)
}

/// Simulated price of a local model's usage, from the provider's own price table.
pub fn local_price(model: &str, input_tokens: u64, output_tokens: u64) -> f64 {
    let (_, per_in, per_out) = switchyard_providers::price_table()
        .into_iter()
        .find(|(id, _, _)| *id == model)
        .expect("a local model");
    input_tokens as f64 / 1000.0 * per_in + output_tokens as f64 / 1000.0 * per_out
}

/// Dollar figures equal but for float noise.
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

/// Every wake-up reason, for tests that inject extra wake-ups of any kind.
pub const REASONS: [WakeReason; 7] = [
    WakeReason::Start,
    WakeReason::Resume,
    WakeReason::Retry,
    WakeReason::Webhook,
    WakeReason::Approval,
    WakeReason::Timer,
    WakeReason::Cancel,
];
