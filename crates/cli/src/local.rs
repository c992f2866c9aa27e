//! The engine on the embedded backend, and the in-process driver.

use anyhow::{anyhow, Context, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::OnceLock;
use switchyard_core::model::{ModelInfo, Provider};
use switchyard_core::ports::{EnvSecrets, QueueName, Secrets};
use switchyard_core::state::RunStatus;
use switchyard_core::workflow::{self, Diagnostic, FileLoader, Workflow};
use switchyard_core::Clock;
use switchyard_engine::driver::{self, Driver};
use switchyard_engine::{Config, Engine, Providers, Workflows};
use switchyard_local::{Backend, Durability, SqliteQueue, SystemClock, Threading};
use switchyard_providers::{parse_faults, LocalConfig, LocalProvider};

pub use switchyard_engine::driver::{MAX_IN_PROCESS_WAIT_MS, RUN_WATCH_MS};

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

/// An engine on the embedded backend, with the built-in models, and the driver that moves its
/// runs in this process.
pub struct Local {
    pub engine: Engine,
    pub queue: SqliteQueue,
    pub provider: Arc<LocalProvider>,
    pub backend: Backend,
    pub driver: Arc<Driver>,
    /// Where this process receives provider callbacks, when it listens.
    pub listening: Option<SocketAddr>,
    /// The bound socket, until `serve_callbacks` takes it.
    listener: Option<std::net::TcpListener>,
    /// The secret blob links are signed with, when this process serves them.
    pub blob_secret: Option<Vec<u8>>,
}

/// How a `Local` is opened.
#[derive(Default)]
pub struct Options {
    /// Receive provider callbacks over HTTP at this address (`127.0.0.1:0`: any free port).
    pub listen: Option<SocketAddr>,
    /// Register the hosted-API adapters (OpenAI, Anthropic, Bedrock, Replicate, OpenAI-compatible).
    pub hosted: bool,
    /// Serve these providers instead of the built-in and hosted ones (the benchmark's timed
    /// provider). The built-in provider still delivers its scheduled callbacks.
    pub providers: Option<Providers>,
    /// The embedded backend's durability; `None`: `SWITCHYARD_DURABILITY`, else `normal`.
    pub durability: Option<Durability>,
    /// Settings that win over the environment (`dev`'s generated callback secret).
    pub settings: Vec<(String, String)>,
    /// Presigned blob links point at this process's `/v1/blobs/{key}` (`dev` serves it).
    pub serve_blobs: bool,
    /// Who runs the SQLite work; `None`: the durability's default.
    pub threading: Option<Threading>,
    /// Where the engine's metrics go (`dev`: its Prometheus registry); `None`: nowhere.
    pub metrics: Option<Arc<dyn switchyard_core::telemetry::MetricSink>>,
}

/// The environment, with some settings given by the process itself on top.
struct Layered<'a> {
    over: &'a [(String, String)],
}

impl Secrets for Layered<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.over
            .iter()
            .find(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.clone())
            .or_else(|| EnvSecrets.get(name))
    }

    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut all = EnvSecrets.with_prefix(prefix);
        all.retain(|(k, _)| !self.over.iter().any(|(o, _)| o == k));
        all.extend(
            self.over
                .iter()
                .filter(|(k, v)| k.starts_with(prefix) && !v.trim().is_empty())
                .cloned(),
        );
        all
    }
}

/// The lease owner prefix of this process: `local:<pid>:<nonce>`; `resume` checks the pid.
/// Each `handle` call adds its own suffix.
fn owner() -> String {
    format!(
        "local:{}:{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// The hosted adapters and their catalog, built once per process (building them loads the
/// system's CA certificates): `validate` and `run` need the models, `run` the adapters too.
fn hosted() -> Result<&'static [Arc<dyn Provider>]> {
    static HOSTED: OnceLock<Result<Vec<Arc<dyn Provider>>, String>> = OnceLock::new();
    HOSTED
        .get_or_init(|| switchyard_providers::registry::from_env().map(|h| h.providers))
        .as_deref()
        .map_err(|e| anyhow!("{e}"))
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
        let secrets = Layered {
            over: &opts.settings,
        };
        let durability = match (opts.durability, secrets.get("SWITCHYARD_DURABILITY")) {
            (Some(d), _) => d,
            (None, Some(v)) => {
                Durability::parse(&v).map_err(|e| anyhow::Error::new(crate::exit::UsageError(e)))?
            }
            (None, None) => Durability::Normal,
        };
        let threading = opts
            .threading
            .unwrap_or(Threading::for_durability(durability));
        let backend = Backend::open_threaded(dir, durability, threading).map_err(|e| {
            anyhow::Error::new(crate::exit::UsageError(format!(
                "data dir `{}`: {e}",
                dir.display()
            )))
        })?;
        let faults = match secrets.get("SWITCHYARD_LOCAL_FAULTS") {
            Some(spec) => {
                parse_faults(&spec).map_err(|e| anyhow!("SWITCHYARD_LOCAL_FAULTS: {e}"))?
            }
            None => HashMap::new(),
        };
        let provider = Arc::new(LocalProvider::new(LocalConfig {
            faults,
            ..LocalConfig::default()
        }));
        let providers = match opts.providers {
            Some(p) => p,
            None => {
                let mut providers = Providers::new().with(provider.clone());
                if opts.hosted {
                    for p in hosted()? {
                        providers = providers.with(p.clone());
                    }
                }
                providers
            }
        };
        let queue = backend.queue(QueueName::Work, clock.clone());
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
        let fallback_url = listening.map_or_else(
            || "http://127.0.0.1:8080".to_string(),
            |a| format!("http://{a}"),
        );
        let config = Config::from_secrets(&secrets, owner(), &fallback_url);
        let blob_secret = opts
            .serve_blobs
            .then(|| uuid::Uuid::new_v4().as_bytes().to_vec());
        let blobs = match &blob_secret {
            Some(secret) => {
                backend
                    .blobs()
                    .served_at(&config.public_url, secret.clone(), clock.clone())
            }
            None => backend.blobs(),
        };
        let engine = Engine::new(
            Arc::new(backend.store()),
            Arc::new(queue.clone()),
            Arc::new(blobs),
            clock,
            Arc::new(providers),
            Arc::new(workflows),
            config,
        );
        let engine = match &opts.metrics {
            Some(sink) => engine.with_metrics(sink.clone()),
            None => engine,
        };
        // Spans join each run's trace when this process exports them (docs/traces.md).
        #[cfg(feature = "otel")]
        let engine = switchyard_otel::join(engine);
        let driver = Arc::new(
            Driver::new(
                engine.clone(),
                Arc::new(queue.clone()),
                driver::Options {
                    listening: listening.is_some(),
                    ..driver::Options::default()
                },
            )
            .with_callbacks(provider.clone()),
        );
        Ok(Local {
            engine,
            queue,
            provider,
            backend,
            driver,
            listening,
            listener,
            blob_secret,
        })
    }

    /// The bound socket, for a caller that serves more than the hooks route on it (`dev`).
    pub fn take_listener(&mut self) -> Option<std::net::TcpListener> {
        self.listener.take()
    }

    /// Starts answering `POST /hooks/{provider}` on the bound address, in the background.
    pub fn serve_callbacks(&mut self) -> Result<()> {
        let Some(std_listener) = self.listener.take() else {
            return Ok(());
        };
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let router =
            switchyard_engine::http::hooks_router(self.engine.clone(), Some(self.driver.applied()));
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
        let mut models = LocalProvider::new(LocalConfig::default()).models();
        for p in hosted()? {
            models.extend(p.models());
        }
        Ok(models)
    }

    /// Opens the backend for commands that drive runs: hosted providers registered, and a
    /// listener for provider callbacks (`SWITCHYARD_LISTEN`, default any free port on 127.0.0.1).
    pub fn open_for_runs(dir: &Path, workflows: Workflows) -> Result<Local> {
        let listen = match EnvSecrets.get("SWITCHYARD_LISTEN") {
            Some(a) => a.trim().parse().map_err(|_| {
                anyhow!("SWITCHYARD_LISTEN `{a}` is not an address like 127.0.0.1:8788")
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let mut local = Local::open_with(
            dir,
            workflows,
            Arc::new(SystemClock),
            Options {
                listen: Some(listen),
                hosted: true,
                ..Options::default()
            },
        )?;
        local.serve_callbacks()?;
        Ok(local)
    }

    /// The notify queue's receiving side, dead-lettering after the notifier's attempts
    /// (`notifier::MAX_NOTIFY_ATTEMPTS`), as `dev`'s notifier and `dlq` both need it.
    pub fn notify_inbox(&self) -> SqliteQueue {
        self.backend
            .queue(QueueName::Notify, Arc::new(SystemClock))
            .with_max_receive_count(switchyard_engine::notifier::MAX_NOTIFY_ATTEMPTS)
    }

    /// Drives `run_id` until it ends or waits on something outside this process (see
    /// [`Driver::drive`]).
    pub async fn drive(&self, run_id: &str) -> Result<RunStatus> {
        Ok(self.driver.drive(run_id).await?)
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
    use std::time::Duration;
    use switchyard_core::ports::Inbox;
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
        let held = b.queue.receive(16, 60_000).await.unwrap();
        assert_eq!(held.len(), 1);
        let run_id = started.run_id.clone();
        let driver = tokio::spawn(async move { a.drive(&run_id).await });
        // B finishes the run with the message it holds (and the wake-ups that follows).
        for d in held {
            let switchyard_core::ports::Message::Wake(w) = &d.message else {
                panic!("not a wake-up")
            };
            b.engine.handle(w, None).await.unwrap();
            b.queue.ack(&d.receipt).await.unwrap();
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
