//! The engine on the embedded backend, and the in-process driver.

use anyhow::{anyhow, Context, Result};
use std::collections::HashMap;
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

/// The longest in-process wait `run` / `resume` sit through (a retry's backoff, a local job).
/// Anything longer ends the command with "waiting" (exit 3); `resume` continues later.
pub const MAX_IN_PROCESS_WAIT_MS: u64 = 120_000;

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
        // Included files stay inside the workflow's folder: no absolute paths, no `..`.
        let relative = Path::new(rel);
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "`{rel}` must be a path inside the workflow's folder"
            ));
        }
        let p = self.0.join(relative);
        let meta = std::fs::metadata(&p).map_err(|e| format!("cannot read `{rel}`: {e}"))?;
        if meta.len() as usize > workflow::limits::MAX_FILE_BYTES {
            return Err(format!(
                "`{rel}` is larger than {} bytes",
                workflow::limits::MAX_FILE_BYTES
            ));
        }
        std::fs::read_to_string(&p).map_err(|e| format!("cannot read `{rel}`: {e}"))
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
        Local::open_with(dir, workflows, Arc::new(SystemClock))
    }

    pub fn open_with(dir: &Path, workflows: Workflows, clock: Arc<dyn Clock>) -> Result<Local> {
        let backend =
            Backend::open(dir).map_err(|e| anyhow!("data dir `{}`: {e}", dir.display()))?;
        let faults = match std::env::var("SWITCHYARD_LOCAL_FAULTS") {
            Ok(spec) if !spec.trim().is_empty() => {
                parse_faults(&spec).map_err(|e| anyhow!("SWITCHYARD_LOCAL_FAULTS: {e}"))?
            }
            _ => HashMap::new(),
        };
        let provider = Arc::new(LocalProvider::new(LocalConfig { faults }));
        let queue = backend.queue("work", clock.clone());
        // In-process callbacks are signed like any provider's, with the configured secret or
        // one made for this process.
        let secret = std::env::var("SWITCHYARD_WEBHOOK_SECRET")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| webhook::secret_from_bytes(uuid::Uuid::new_v4().as_bytes()));
        let mut secrets = HashMap::new();
        secrets.insert("*".to_string(), secret);
        let config = Config {
            owner: owner(),
            webhook_secrets: secrets,
            public_url: std::env::var("SWITCHYARD_PUBLIC_URL")
                .unwrap_or_else(|_| "http://127.0.0.1:8080".into()),
            ..Config::default()
        };
        let engine = Engine::new(
            Arc::new(backend.store()),
            Arc::new(queue.clone()),
            Arc::new(backend.blobs()),
            clock,
            Arc::new(Providers::new().with(provider.clone())),
            Arc::new(workflows),
            config,
        );
        Ok(Local {
            engine,
            queue,
            provider,
            backend,
        })
    }

    /// The models the embedded deployment offers.
    pub fn models() -> Vec<ModelInfo> {
        use switchyard_core::model::Provider;
        LocalProvider::new(LocalConfig::default()).models()
    }

    /// Drives `run_id` until it ends, or waits on something outside this process.
    pub async fn drive(&self, run_id: &str) -> Result<RunStatus> {
        let mut callbacks: Vec<(u64, ScheduledCallback)> = Vec::new();
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
            for (_, cb) in due {
                self.deliver(&cb).await?;
            }
            for d in self.queue.receive(16, 60_000)? {
                match self.engine.handle(&d.body, None).await {
                    Ok(_) => {
                        self.queue.ack(&d.receipt)?;
                    }
                    Err(e) => {
                        tracing::warn!(run_id = %d.body.run_id, error = %e, "wake-up failed; it will be retried")
                    }
                }
            }
            callbacks.extend(
                self.provider
                    .take_scheduled()
                    .into_iter()
                    .map(|c| (self.engine.now() + c.delay_ms, c)),
            );
            let snap = self.engine.load_for(None, run_id).await?;
            let h = &snap.header;
            if h.status.is_terminal() {
                return Ok(h.status);
            }
            let ours = |c: &ScheduledCallback| c.url.contains(&format!("run_id={run_id}&"));
            let waits_outside = h.status == RunStatus::Waiting
                && match h.wait.as_ref().map(|w| w.reason) {
                    Some(WaitReason::Approval) => true,
                    Some(WaitReason::Callback) => !callbacks.iter().any(|(_, c)| ours(c)),
                    _ => false,
                };
            let next = [
                self.queue.next_visible_at()?,
                callbacks.iter().map(|(t, _)| *t).min(),
            ]
            .into_iter()
            .flatten()
            .min();
            let now = self.engine.now();
            match next {
                Some(t) if t <= now => continue,
                Some(t) if !waits_outside && t - now <= MAX_IN_PROCESS_WAIT_MS => {
                    tokio::time::sleep(Duration::from_millis(t - now)).await;
                }
                _ => return Ok(h.status),
            }
        }
    }

    /// Delivers a built-in model's callback through the same handler as `POST /hooks/{provider}`.
    async fn deliver(&self, cb: &ScheduledCallback) -> Result<()> {
        let body = serde_json::to_vec(&cb.body)?;
        let ts = self.engine.now() / 1000;
        let secret = self
            .engine
            .config
            .webhook_secrets
            .get("*")
            .cloned()
            .unwrap_or_default();
        let sig = webhook::sign(&secret, &cb.webhook_id, ts, &body).map_err(|e| anyhow!("{e}"))?;
        let headers = HashMap::from([
            ("webhook-id".to_string(), cb.webhook_id.clone()),
            ("webhook-timestamp".to_string(), ts.to_string()),
            ("webhook-signature".to_string(), sig),
        ]);
        let query = cb
            .url
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let req = CallbackRequest {
            provider: cb.provider.clone(),
            query,
            headers,
            body,
        };
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
