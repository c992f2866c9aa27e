//! What both `switchyard dev` backends share (the embedded one in [`crate::dev`], the AWS one
//! in `crate::dev_aws`): the arguments, loading `--workflows`, the banner's key lines, the
//! operator key, the shutdown signal and the `/metrics` route. Neither backend imports the
//! other; both import this.

use crate::local;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use switchyard_api::OperatorKeys;
use switchyard_core::model::ModelInfo;
use switchyard_engine::settings::OPERATOR_KEYS;
use switchyard_engine::Workflows;

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

/// Compiles the workflows under `dir` against `models` (the embedded backend's, or with
/// `--backend aws` the deployment's providers' models); a file that is not a workflow (a
/// schema, a corpus) is skipped only if it has no `steps:` key, any real problem stops
/// start-up with its positions.
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
