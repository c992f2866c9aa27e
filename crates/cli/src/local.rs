//! The engine on the embedded backend, and the in-process driver.

use anyhow::{anyhow, Context, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::model::ModelInfo;
use switchyard_core::state::{RunStatus, WaitReason};
use switchyard_core::workflow::{self, Diagnostic, FileLoader, Workflow};
use switchyard_core::{webhook, Clock};
use switchyard_engine::webhook::CallbackRequest;
use switchyard_engine::{Config, Engine, Providers, Workflows};
use switchyard_local::{Backend, SqliteQueue, SystemClock};
use switchyard_providers::{parse_faults, LocalConfig, LocalProvider, ScheduledCallback};
use tokio::sync::Notify;

/// The longest in-process wait `run` / `resume` sit through (a retry's backoff, a local job).
/// Anything longer ends the command with "waiting" (exit 3); `resume` continues later.
pub const MAX_IN_PROCESS_WAIT_MS: u64 = 120_000;

/// How often a driver that has nothing to do looks at its run again (a read of the header):
/// another process sharing the data dir may have moved the run on.
pub const RUN_WATCH_MS: u64 = 100;

/// Where the embedded backend lives: `--data-dir`, else `$SWITCHYARD_DATA_DIR`, else `./.switchyard`.
pub fn data_dir(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("SWITCHYARD_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(".switchyard"))
}

/// Reads files a workflow includes, relative to the workflow file's folder.
pub struct DirFiles(pub PathBuf);

impl FileLoader for DirFiles {
    fn read(&self, rel: &str) -> Result<String, String> {
        // Included files stay inside the workflow's folder: no absolute paths, no `..`, and no
        // symlink (to a file or through a directory) whose real path leaves the folder. The
        // lexical check gives the clearer message; the canonical one is what makes it hold.
        let relative = Path::new(rel);
        let outside = || format!("`{rel}` must be a path inside the workflow's folder");
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(outside());
        }
        let base = std::fs::canonicalize(&self.0)
            .map_err(|e| format!("cannot read the workflow's folder: {e}"))?;
        let real = std::fs::canonicalize(self.0.join(relative))
            .map_err(|e| format!("cannot read `{rel}`: {e}"))?;
        if !real.starts_with(&base) {
            return Err(format!(
                "{} (it resolves through a symlink to `{}`)",
                outside(),
                real.display()
            ));
        }
        // Read the checked path, not the name: a symlink swapped in between cannot redirect it.
        let meta = std::fs::metadata(&real).map_err(|e| format!("cannot read `{rel}`: {e}"))?;
        if !meta.is_file() {
            return Err(format!("`{rel}` is not a file"));
        }
        if meta.len() as usize > workflow::limits::MAX_FILE_BYTES {
            return Err(format!(
                "`{rel}` is larger than {} bytes",
                workflow::limits::MAX_FILE_BYTES
            ));
        }
        std::fs::read_to_string(&real).map_err(|e| format!("cannot read `{rel}`: {e}"))
    }
}

/// Compiles a workflow file; problems come back as diagnostics.
pub fn load_workflow(path: &Path, models: &[ModelInfo]) -> Result<Workflow, Vec<Diagnostic>> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic {
            line: 1,
            col: 1,
            message: format!("cannot read file: {e}"),
        }]
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    workflow::compile(&src, &DirFiles(dir), models)
}

/// An engine on the embedded backend, with the built-in models.
pub struct Local {
    pub engine: Engine,
    pub queue: SqliteQueue,
    pub provider: Arc<LocalProvider>,
    pub backend: Backend,
    /// Told when a provider callback arrived over HTTP, so the driver stops waiting.
    pub applied: Arc<Notify>,
    /// Where this process receives provider callbacks, when it listens.
    pub listening: Option<SocketAddr>,
    /// The bound socket, until `serve_callbacks` takes it.
    listener: Option<std::net::TcpListener>,
}

/// How a `Local` is opened.
#[derive(Default)]
pub struct Options {
    /// Receive provider callbacks over HTTP at this address (`127.0.0.1:0`: any free port).
    pub listen: Option<SocketAddr>,
    /// Register the hosted-API adapters (OpenAI, Anthropic, Bedrock, Replicate, OpenAI-compatible).
    pub hosted: bool,
}

/// The lease owner id of this process: `local:<pid>:<nonce>`; `resume` checks the pid.
fn owner() -> String {
    format!(
        "local:{}:{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

impl Local {
    pub fn open(dir: &Path, workflows: Workflows) -> Result<Local> {
        Local::open_with(dir, workflows, Arc::new(SystemClock), Options::default())
    }

    pub fn open_with(
        dir: &Path,
        workflows: Workflows,
        clock: Arc<dyn Clock>,
        opts: Options,
    ) -> Result<Local> {
        let backend = Backend::open(dir).map_err(|e| {
            anyhow::Error::new(crate::exit::UsageError(format!(
                "data dir `{}`: {e}",
                dir.display()
            )))
        })?;
        let faults = match std::env::var("SWITCHYARD_LOCAL_FAULTS") {
            Ok(spec) if !spec.trim().is_empty() => {
                parse_faults(&spec).map_err(|e| anyhow!("SWITCHYARD_LOCAL_FAULTS: {e}"))?
            }
            _ => HashMap::new(),
        };
        let provider = Arc::new(LocalProvider::new(LocalConfig { faults }));
        let mut providers = Providers::new().with(provider.clone());
        if opts.hosted {
            let hosted = switchyard_providers::registry::from_env()
                .map_err(|e| anyhow!("{e}"))?
                .providers;
            for p in hosted {
                providers = providers.with(p);
            }
        }
        let queue = backend.queue("work", clock.clone());
        // Bind before building the engine: callback URLs carry the address.
        let (listener, listening) = match opts.listen {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("cannot listen for callbacks on {addr}"))?;
                l.set_nonblocking(true)?;
                let a = l.local_addr()?;
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        let public_url = std::env::var("SWITCHYARD_PUBLIC_URL")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| listening.map(|a| format!("http://{a}")))
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let config = Config {
            owner: owner(),
            webhook_secrets: webhook_secrets(),
            public_url,
            ..Config::default()
        };
        let engine = Engine::new(
            Arc::new(backend.store()),
            Arc::new(queue.clone()),
            Arc::new(backend.blobs()),
            clock,
            Arc::new(providers),
            Arc::new(workflows),
            config,
        );
        Ok(Local {
            engine,
            queue,
            provider,
            backend,
            applied: Arc::new(Notify::new()),
            listening,
            listener,
        })
    }

    /// Starts answering `POST /hooks/{provider}` on the bound address, in the background.
    pub fn serve_callbacks(&mut self) -> Result<()> {
        let Some(std_listener) = self.listener.take() else {
            return Ok(());
        };
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let router =
            switchyard_engine::http::hooks_router(self.engine.clone(), Some(self.applied.clone()));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "callback listener stopped");
            }
        });
        Ok(())
    }

    /// The models this deployment offers: the built-in ones and every hosted model of the price
    /// table (a hosted model without its key still passes static checks; calling it fails `auth`).
    pub fn models() -> Result<Vec<ModelInfo>> {
        use switchyard_core::model::Provider;
        let mut models = LocalProvider::new(LocalConfig::default()).models();
        let hosted = switchyard_providers::registry::from_env()
            .map_err(|e| anyhow!("{e}"))?
            .providers;
        for p in hosted {
            models.extend(p.models());
        }
        Ok(models)
    }

    /// Opens the backend for commands that drive runs: hosted providers registered, and a
    /// listener for provider callbacks (`SWITCHYARD_LISTEN`, default any free port on 127.0.0.1).
    pub fn open_for_runs(dir: &Path, workflows: Workflows) -> Result<Local> {
        let listen = match std::env::var("SWITCHYARD_LISTEN") {
            Ok(a) if !a.trim().is_empty() => a.trim().parse().map_err(|_| {
                anyhow!("SWITCHYARD_LISTEN `{a}` is not an address like 127.0.0.1:8788")
            })?,
            _ => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let mut local = Local::open_with(
            dir,
            workflows,
            Arc::new(SystemClock),
            Options {
                listen: Some(listen),
                hosted: true,
            },
        )?;
        local.serve_callbacks()?;
        Ok(local)
    }

    /// Drives `run_id` until it ends, or waits on something outside this process: a person, or
    /// a remote job whose callback cannot reach us (not listening) — or nothing happened for
    /// [`MAX_IN_PROCESS_WAIT_MS`].
    pub async fn drive(&self, run_id: &str) -> Result<RunStatus> {
        let mut callbacks: Vec<(u64, ScheduledCallback)> = Vec::new();
        let mut idle_since = self.engine.now();
        loop {
            let now = self.engine.now();
            callbacks.extend(
                self.provider
                    .take_scheduled()
                    .into_iter()
                    .map(|c| (now + c.delay_ms, c)),
            );
            let (due, later): (Vec<_>, Vec<_>) =
                callbacks.into_iter().partition(|(t, _)| *t <= now);
            callbacks = later;
            let mut progressed = !due.is_empty();
            for (_, cb) in due {
                self.deliver(&cb).await?;
            }
            let deliveries = match self.queue.receive(16, 60_000) {
                Ok(d) => d,
                // Another process holds the database longer than its busy timeout: wait a
                // moment and go on, rather than abandoning the run.
                Err(switchyard_core::StoreError::Unavailable(e)) => {
                    tracing::warn!(error = %e, "queue busy; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            for d in deliveries {
                progressed = true;
                match self.engine.handle(&d.body, None).await {
                    Ok(_) => {
                        self.queue.ack(&d.receipt)?;
                    }
                    Err(e) => {
                        // Try again soon rather than after the whole visibility timeout: a
                        // busy database or a conflicting writer clears in milliseconds.
                        tracing::warn!(run_id = %d.body.run_id, error = %e, "wake-up failed; retrying");
                        self.queue.change_visibility(&d.receipt, 250)?;
                    }
                }
            }
            let now = self.engine.now();
            callbacks.extend(
                self.provider
                    .take_scheduled()
                    .into_iter()
                    .map(|c| (now + c.delay_ms, c)),
            );
            if progressed {
                idle_since = now;
            }
            let snap = match self.engine.load_for(None, run_id).await {
                Ok(s) => s,
                Err(switchyard_engine::EngineError::Store(
                    switchyard_core::StoreError::Unavailable(e),
                )) => {
                    tracing::warn!(error = %e, "store busy; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let h = &snap.header;
            if h.status.is_terminal() {
                return Ok(h.status);
            }
            let ours = |c: &ScheduledCallback| c.url.contains(&format!("run_id={run_id}&"));
            let waits_outside = h.status == RunStatus::Waiting
                && match h.wait.as_ref().map(|w| w.reason) {
                    Some(WaitReason::Approval) => true,
                    Some(WaitReason::Callback) => {
                        self.listening.is_none() && !callbacks.iter().any(|(_, c)| ours(c))
                    }
                    _ => false,
                };
            if waits_outside {
                return Ok(h.status);
            }
            let next = [
                self.queue.next_visible_at()?,
                callbacks.iter().map(|(t, _)| *t).min(),
            ]
            .into_iter()
            .flatten()
            .min();
            let give_up = idle_since + MAX_IN_PROCESS_WAIT_MS;
            if now >= give_up {
                return Ok(h.status);
            }
            // Never sleep longer than RUN_WATCH_MS between looks at the run: with a shared data
            // dir, another process may hold this run's message (hidden for its visibility
            // timeout) and drive the run to its end or park it while we sleep.
            let until = next
                .map_or(give_up, |t| t.min(give_up))
                .min(now + RUN_WATCH_MS);
            if until > now {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(until - now)) => {}
                    _ = self.applied.notified() => {}
                }
            }
        }
    }

    /// Delivers a built-in model's callback through the same handler as `POST /hooks/{provider}`.
    async fn deliver(&self, cb: &ScheduledCallback) -> Result<()> {
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
        .map_err(|e| anyhow!("{e}"))?;
        match self.engine.handle_callback(&req).await {
            Ok(r) => tracing::debug!(result = ?r, "local callback delivered"),
            Err(e) => tracing::warn!(error = %e, "local callback rejected"),
        }
        Ok(())
    }

    /// Ends leases held by processes of this machine that no longer exist, so a run whose
    /// `switchyard run` was killed can be resumed at once.
    pub async fn recover_dead_owners(&self, run_id: &str) -> Result<()> {
        let snap = self
            .engine
            .load_for(None, run_id)
            .await
            .context("loading the run")?;
        let mut owners: Vec<String> = snap
            .steps
            .iter()
            .filter_map(|s| s.lease_owner.clone())
            .collect();
        owners.extend(snap.header.lease.as_ref().map(|l| l.owner.clone()));
        owners.sort();
        owners.dedup();
        for o in owners {
            if o != self.engine.config.owner && is_dead_local_owner(&o) {
                self.engine.take_over(run_id, &o).await?;
            }
        }
        Ok(())
    }
}

/// `SWITCHYARD_WEBHOOK_SECRET` for every provider, `SWITCHYARD_<PROVIDER>_WEBHOOK_SECRET` for
/// one; without them, a secret made for this process (enough for in-process callbacks).
fn webhook_secrets() -> HashMap<String, String> {
    let mut secrets = HashMap::new();
    let default = std::env::var("SWITCHYARD_WEBHOOK_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| webhook::secret_from_bytes(uuid::Uuid::new_v4().as_bytes()));
    secrets.insert("*".to_string(), default);
    for (k, v) in std::env::vars() {
        if let Some(p) = k
            .strip_prefix("SWITCHYARD_")
            .and_then(|r| r.strip_suffix("_WEBHOOK_SECRET"))
        {
            if !p.is_empty() && !v.is_empty() {
                secrets.insert(p.to_ascii_lowercase(), v);
            }
        }
    }
    secrets
}

fn is_dead_local_owner(owner: &str) -> bool {
    let mut parts = owner.split(':');
    match (
        parts.next(),
        parts.next().and_then(|p| p.parse::<u32>().ok()),
    ) {
        (Some("local"), Some(pid)) => {
            pid != std::process::id()
                && Path::new("/proc/self").exists()
                && !Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use switchyard_engine::intake::StartRequest;

    fn workflows() -> Workflows {
        let src = "name: two\nversion: \"1\"\nsteps:\n  - {id: a, model: local/echo, input: \"${input.text}\"}\n  - {id: b, model: local/echo, input: \"${steps.a.output.text}\"}\n";
        let wf = workflow::compile(src, &workflow::NoFiles, &Local::models().unwrap()).unwrap();
        let mut w = Workflows::new();
        w.add(wf);
        w
    }

    /// Two processes share a data dir. B holds the run's wake-up (hidden for 60 s) and drives
    /// the run to its end while A, which started it, has nothing visible to receive. A must
    /// notice the run ended, not sleep until B's message would become visible again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_driver_returns_when_another_process_ends_its_run() {
        let dir = tempfile::tempdir().unwrap();
        let a = Local::open(dir.path(), workflows()).unwrap();
        let b = Local::open(dir.path(), workflows()).unwrap();
        let started = a
            .engine
            .start_run(
                "local",
                StartRequest {
                    workflow: "two".into(),
                    version: None,
                    input: serde_json::json!({"text": "hi"}),
                    callback_url: None,
                    metadata: None,
                },
                None,
            )
            .await
            .unwrap();
        let held = b.queue.receive(16, 60_000).unwrap();
        assert_eq!(held.len(), 1);
        let run_id = started.run_id.clone();
        let driver = tokio::spawn(async move { a.drive(&run_id).await });
        // B finishes the run with the message it holds (and the wake-ups that follows).
        for d in held {
            b.engine.handle(&d.body, None).await.unwrap();
            b.queue.ack(&d.receipt).unwrap();
        }
        let status = b.engine.load_for(None, &started.run_id).await.unwrap();
        assert_eq!(status.header.status, RunStatus::Succeeded);
        // Before the fix A slept until B's 60 s visibility ran out; a bound far below that.
        let ended = tokio::time::timeout(Duration::from_secs(20), driver)
            .await
            .expect("the driver noticed the run ended")
            .unwrap()
            .unwrap();
        assert_eq!(ended, RunStatus::Succeeded);
    }
}
