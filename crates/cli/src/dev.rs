//! `switchyard dev`: the HTTP API, the provider webhook route, the worker pool and the
//! notifier in one process, on the embedded backend (`--backend aws`: [`dev_aws`]).
//!
//! Start-up: load every workflow under `--workflows`, open the data dir, take over the runs a
//! killed earlier process left (their leases name a dead pid) and wake them, then serve.
//! SIGINT/SIGTERM: stop accepting connections, let every pool loop finish the message it
//! holds (a run being handled parks or ends, releasing its lease), exit 0.

use crate::local::{Local, Options};
use crate::serve::{
    load_workflows_for, operator_keys, print_keys, print_operator_key, print_try, random_token,
    shutdown_signal, with_metrics_route,
};
pub use crate::serve::{DevArgs, DEV_TENANT};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use switchyard_api::{ApiKeys, Inboxes, Serving};
use switchyard_core::ports::{CallbackSender, Inbox, ListScope, Message, RunQuery, Secrets};
use switchyard_core::state::{RunStatus, WakeReason, WakeUp};
use switchyard_engine::pool::{Pool, PoolOptions};
use switchyard_engine::settings::{CALLBACK_SECRET, OPERATOR_KEYS};
use switchyard_engine::Workflows;
use switchyard_local::{SystemClock, Threading};
use tokio::sync::{watch, Notify};

/// Compiles the workflows; a file that is not a workflow (a schema, a corpus) is skipped
/// only if it has no `steps:` key, any real problem stops start-up with its positions.
fn load_workflows(dir: &Path) -> Result<std::result::Result<Workflows, i32>> {
    load_workflows_for(dir, &Local::models()?)
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

    let sender: Arc<dyn CallbackSender> = Arc::new(
        switchyard_providers::outbound::CallbackClient::new(Default::default()),
    );
    let notify = l.notify_inbox();
    let work: Arc<dyn Inbox> = Arc::new(l.queue.clone());
    let notify: Arc<dyn Inbox> = Arc::new(notify);
    let serving = Serving {
        operators: Some((
            operators,
            Inboxes {
                work: work.clone(),
                notify: notify.clone(),
            },
        )),
        kick: Some(kick.clone()),
        blob_links: l.blob_secret.clone().map(Arc::new),
    };
    let app = switchyard_api::app(l.engine.clone(), keys, serving);
    let router = with_metrics_route(app, metrics);
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

/// `switchyard dev --backend aws` (`crate::dev_aws`), in a build with the `aws` feature.
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
