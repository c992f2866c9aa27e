//! `switchyard dev`: the HTTP API, the provider webhook route, the worker pool and the
//! notifier in one process, on the embedded backend (`--backend aws`: [`dev_aws`]).
//!
//! Start-up: load every workflow under `--workflows`, open the data dir, take over the runs a
//! killed earlier process left (their leases name a dead pid) and wake them, then serve.
//! SIGINT/SIGTERM: stop accepting connections, let every pool loop finish the message it
//! holds (a run being handled parks or ends, releasing its lease), exit 0.

use crate::local::{self, Local, Options};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use switchyard_api::{ApiKeys, ApiState, Inboxes, OperatorKeys};
use switchyard_core::model::ModelInfo;
use switchyard_core::ports::{CallbackSender, Inbox, ListScope, Message, RunQuery, Secrets};
use switchyard_core::state::{RunStatus, WakeReason, WakeUp};
use switchyard_engine::pool::{Pool, PoolOptions};
use switchyard_engine::settings::{CALLBACK_SECRET, OPERATOR_KEYS};
use switchyard_engine::Workflows;
use switchyard_local::{SystemClock, Threading};
use tokio::sync::{watch, Notify};

/// The tenant of the key `dev` makes up when `SWITCHYARD_API_KEYS` is unset.
pub const DEV_TENANT: &str = "dev";

pub struct DevArgs {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub workflows: PathBuf,
    pub workers: usize,
}

/// Every `*.yaml` / `*.yml` under `dir` (subdirectories included), sorted.
fn workflow_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Compiles the workflows; a file that is not a workflow (a schema, a corpus) is skipped
/// only if it has no `steps:` key, any real problem stops start-up with its positions.
fn load_workflows(dir: &Path) -> Result<std::result::Result<Workflows, i32>> {
    load_workflows_for(dir, &Local::models()?)
}

/// [`load_workflows`] against `models` (`--backend aws`: the deployment's providers' models).
pub(crate) fn load_workflows_for(
    dir: &Path,
    models: &[ModelInfo],
) -> Result<std::result::Result<Workflows, i32>> {
    let mut workflows = Workflows::new();
    let mut failed = false;
    for path in workflow_files(dir)? {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.lines().any(|l| l.starts_with("steps:")) {
            continue;
        }
        match local::load_workflow(&path, models) {
            Ok(wf) => workflows.add(wf),
            Err(diags) => {
                failed = true;
                for d in diags {
                    eprintln!("{}:{}:{}: {}", path.display(), d.line, d.col, d.message);
                }
            }
        }
    }
    Ok(if failed {
        Err(crate::exit::USAGE)
    } else {
        Ok(workflows)
    })
}

pub(crate) fn random_token(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

pub async fn dev(args: DevArgs) -> Result<i32> {
    let workflows = match load_workflows(&args.workflows)? {
        Ok(w) => w,
        Err(code) => return Ok(code),
    };
    let env = switchyard_core::ports::EnvSecrets;
    let (keys, dev_key) = match env.get("SWITCHYARD_API_KEYS") {
        Some(spec) => (
            ApiKeys::parse(&spec).map_err(|e| crate::exit::UsageError(e.to_string()))?,
            None,
        ),
        None => {
            let key = random_token("sy_dev_");
            (ApiKeys::single(&key, DEV_TENANT), Some(key))
        }
    };
    let callback_secret = env.get(CALLBACK_SECRET);
    let generated_secret = callback_secret
        .is_none()
        .then(|| switchyard_core::webhook::secret_from_bytes(uuid::Uuid::new_v4().as_bytes()));
    let mut settings = Vec::new();
    if let Some(s) = &generated_secret {
        settings.push((CALLBACK_SECRET.to_string(), s.clone()));
    }
    let metrics = Arc::new(crate::prometheus::PrometheusSink::new()?);
    let mut l = Local::open_with(
        &args.data_dir,
        workflows,
        Arc::new(SystemClock),
        Options {
            metrics: Some(metrics.clone()),
            listen: Some(args.addr),
            hosted: true,
            settings,
            serve_blobs: true,
            // A server keeps SQLite off the async threads that answer HTTP: behind the inline
            // lock, p99 of `POST /v1/runs` was 43-48 ms (commits and WAL checkpoints).
            threading: Some(Threading::Writer),
            ..Options::default()
        },
    )?;
    let addr = l.listening.context("dev has no listening address")?;
    let listener = l
        .take_listener()
        .context("dev's listener was already taken")?;
    recover(&l).await?;

    let (operators, ops_key) = operator_keys(env.get(OPERATOR_KEYS))?;
    let kick = Arc::new(Notify::new());
    let mut state = ApiState::new(l.engine.clone(), keys);
    state.kick = Some(kick.clone());
    state.allow_private_callbacks = l.engine.config.allow_private_callbacks;
    state.blob_links = l.blob_secret.clone().map(Arc::new);

    let sender: Arc<dyn CallbackSender> = Arc::new(
        switchyard_providers::outbound::CallbackClient::new(Default::default()),
    );
    let notify = l.notify_inbox();
    let work: Arc<dyn Inbox> = Arc::new(l.queue.clone());
    let notify: Arc<dyn Inbox> = Arc::new(notify);
    let state = state.with_operators(
        operators,
        Inboxes {
            work: work.clone(),
            notify: notify.clone(),
        },
    );
    let router = with_metrics_route(switchyard_api::router(state), metrics);
    let pool = Arc::new(Pool {
        engine: l.engine.clone(),
        work,
        notify,
        sender,
        callbacks: l.driver.clone(),
        kick,
        opts: PoolOptions {
            workers: args.workers,
            ..PoolOptions::default()
        },
    });

    print_banner(
        &l,
        addr,
        &args,
        dev_key.as_deref(),
        generated_secret.as_deref(),
    );
    print_operator_key(ops_key.as_deref());
    let (stop_tx, stop_rx) = watch::channel(false);
    let pool_task = tokio::spawn(pool.run(stop_rx.clone()));
    let mut http_stop = stop_rx.clone();
    let server = axum::serve(tokio::net::TcpListener::from_std(listener)?, router)
        .with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|s| *s).await;
        });
    let server_task = tokio::spawn(async move { server.await });
    shutdown_signal().await;
    eprintln!("switchyard dev: stopping (finishing what is in flight)");
    let _ = stop_tx.send(true);
    if let Ok(Err(e)) = server_task.await {
        tracing::error!(error = %e, "the HTTP server stopped with an error");
    }
    let _ = pool_task.await;
    eprintln!("switchyard dev: stopped");
    Ok(crate::exit::SUCCEEDED)
}

/// `switchyard dev --backend aws` ([`crate::dev_aws`]), in a build with the `aws` feature.
pub async fn dev_aws(args: DevArgs) -> Result<i32> {
    #[cfg(feature = "aws")]
    {
        crate::dev_aws::dev(args).await
    }
    #[cfg(not(feature = "aws"))]
    {
        // The default build stays free of the AWS SDK (`make demo`); say how to get the other.
        let _ = args;
        Err(crate::exit::UsageError(
            "--backend aws needs a switchyard built with the `aws` feature: \
             `cargo build -p switchyard-cli --features aws` (or `make demo-aws`)"
                .into(),
        )
        .into())
    }
}

/// Takes over the runs an earlier, killed process was driving (their leases name its pid),
/// and wakes every run that is pending or running, so nothing waits for a lease or a hidden
/// message to expire.
async fn recover(l: &Local) -> Result<()> {
    let mut cursor = None;
    loop {
        let mut q = RunQuery::new(
            ListScope::AllTenants,
            switchyard_core::ports::MAX_LIST_LIMIT,
        );
        q.cursor = cursor.take();
        let page = l.engine.list_runs(&q).await?;
        for r in &page.runs {
            if matches!(r.status, RunStatus::Pending | RunStatus::Running) {
                l.recover_dead_owners(&r.run_id).await?;
                let wake = WakeUp {
                    run_id: r.run_id.clone(),
                    reason: WakeReason::Resume,
                    due_at: None,
                };
                l.engine.queue.send(&Message::Wake(wake), 0).await?;
            }
        }
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(()),
        }
    }
}

fn print_banner(
    l: &Local,
    addr: SocketAddr,
    args: &DevArgs,
    dev_key: Option<&str>,
    generated_secret: Option<&str>,
) {
    let served: Vec<String> = l
        .engine
        .workflows
        .list()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    println!("switchyard dev: serving http://{addr}");
    println!(
        "  data dir {}, {} workers, workflows: {}",
        l.backend.data_dir().display(),
        args.workers,
        served.join(", ")
    );
    print_keys(dev_key, generated_secret, "SWITCHYARD_API_KEYS");
    print_try(addr, dev_key, &served);
}

/// The banner's key lines: the made-up dev key, or where the keys come from; the callback
/// secret when dev generated it.
pub(crate) fn print_keys(dev_key: Option<&str>, generated_secret: Option<&str>, keys_from: &str) {
    match dev_key {
        Some(k) => println!("  API key (tenant `{DEV_TENANT}`): {k}"),
        None => println!("  API keys: from {keys_from}"),
    }
    if let Some(s) = generated_secret {
        println!("  callback signing secret (SWITCHYARD_CALLBACK_SECRET): {s}");
    }
}

/// The operator keys from `SWITCHYARD_OPERATOR_KEYS`, or a made-up one (returned, to print)
/// when it is unset: `dev` always serves the operator routes.
pub(crate) fn operator_keys(spec: Option<String>) -> Result<(OperatorKeys, Option<String>)> {
    match spec.filter(|s| !s.trim().is_empty()) {
        Some(spec) => Ok((
            OperatorKeys::parse(&spec).map_err(|e| crate::exit::UsageError(e.to_string()))?,
            None,
        )),
        None => {
            let key = random_token("sy_ops_");
            Ok((OperatorKeys::single(&key), Some(key)))
        }
    }
}

/// The banner's operator-key line.
pub(crate) fn print_operator_key(generated: Option<&str>) {
    match generated {
        Some(k) => println!("  operator key (`switchyard dlq --api`, /v1/ops): {k}"),
        None => println!("  operator keys: from {OPERATOR_KEYS}"),
    }
}

/// The banner's closing lines: a curl that starts a run (when `support-triage` is served).
pub(crate) fn print_try(addr: SocketAddr, dev_key: Option<&str>, served: &[String]) {
    let key = dev_key.unwrap_or("<your key>");
    let example = served.iter().find(|n| *n == "support-triage").cloned();
    if let Some(wf) = example {
        println!("  try:");
        println!(
            "    curl -s http://{addr}/v1/runs -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -H 'Idempotency-Key: demo-1' -d '{{\"workflow\": \"{wf}\", \"input\": {{\"ticket\": {{\"id\": \"T-1\", \"subject\": \"Charged twice\", \"body\": \"I was charged twice, please refund\", \"customer\": {{\"name\": \"Dana\"}}}}}}}}'"
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `GET /metrics`: the Prometheus text of this process's engine (docs/operations.md). Like
/// `/healthz` it needs no API key: `dev` listens on 127.0.0.1 unless told otherwise, and
/// the figures carry no run data beyond counts.
pub fn with_metrics_route(
    router: axum::Router,
    sink: Arc<crate::prometheus::PrometheusSink>,
) -> axum::Router {
    router.route(
        "/metrics",
        axum::routing::get(move || {
            let sink = sink.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    sink.render(),
                )
            }
        }),
    )
}
