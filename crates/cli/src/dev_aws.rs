//! `switchyard dev --backend aws` (cargo feature `aws`): the same HTTP API and `/hooks` route as
//! the embedded `dev`, over a deployment's DynamoDB table, SQS queues and S3 bucket, with the
//! four Lambda functions played in this one process — intake and webhook are the router on
//! `--addr`, worker and notifier are pollers standing in for their SQS event source mappings
//! (the engine's host loop, [`switchyard_engine::host`]). The wiring is the Lambda functions' own
//! ([`switchyard_lambdas::Deployment`]), so what works here exercises the deployed code paths.
//!
//! - Resources: `SWITCHYARD_TABLE`, `SWITCHYARD_BUCKET`, `SWITCHYARD_{WORK,NOTIFY}_{QUEUE,DLQ}_URL`
//!   (and `SWITCHYARD_SECRET_ID`, the settings secret) from the environment, e.g.
//!   `eval "$(make -s local-aws)"`. When none of them is set and `AWS_ENDPOINT_URL` names an
//!   emulator, they are provisioned here under `SWITCHYARD_DEV_PREFIX` (default `sy-dev`);
//!   provisioning is idempotent, so a restart finds its runs again.
//! - Workflows: read from `--workflows DIR` at start-up, like the embedded `dev`, not the set the
//!   Lambda binaries bundle at build time (`SWITCHYARD_WORKFLOWS_DIR`): editing one needs a
//!   restart, not a rebuild.
//! - Settings: the secret's map over the environment, as on Lambda, except that built-in async
//!   jobs call back to this process (`SWITCHYARD_PUBLIC_URL` from the environment if set, else
//!   `http://ADDR`), and a missing API key or callback secret is generated and printed.
//! - SIGINT/SIGTERM: every poller finishes the batch in hand (a worker also sends the callbacks
//!   its batch scheduled, as the worker function does before it returns), then the HTTP server
//!   stops; exit 0. Nothing else needs draining: the state is in DynamoDB and SQS.

use crate::exit::UsageError;
use crate::serve::{self as dev, DevArgs, DEV_TENANT};
use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchyard_api::{ApiKeys, Serving};
use switchyard_core::ports::{EnvSecrets, Secrets};
use switchyard_core::recovery;
use switchyard_engine::host::{self, Function, Invocation};
use switchyard_engine::settings::{CALLBACK_SECRET, OPERATOR_KEYS, PUBLIC_URL};
use switchyard_lambdas::{callbacks, deploy, provision, Deployment, Resources};
use tokio::sync::watch;

/// The resource variables; with none of them set (and an emulator endpoint), dev provisions.
pub const RESOURCE_VARS: [&str; 6] = [
    "SWITCHYARD_TABLE",
    "SWITCHYARD_BUCKET",
    "SWITCHYARD_WORK_QUEUE_URL",
    "SWITCHYARD_WORK_DLQ_URL",
    "SWITCHYARD_NOTIFY_QUEUE_URL",
    "SWITCHYARD_NOTIFY_DLQ_URL",
];

/// Names the prefix of the resources dev provisions on an emulator.
pub const PREFIX_VAR: &str = "SWITCHYARD_DEV_PREFIX";
/// The prefix when [`PREFIX_VAR`] is unset (the Makefile's `LOCAL_AWS_PREFIX` default too).
pub const DEFAULT_PREFIX: &str = "sy-dev";

/// The pause after an empty receive (SQS short polls here; Lambda's mapping long-polls).
const IDLE_MS: u64 = 200;

/// The notifier's event source mapping: template.yaml's notifier timeout (30 s) and its queue's
/// visibility timeout.
const NOTIFY_MAPPING: Invocation = Invocation {
    batch_size: 10,
    visibility_ms: provision::NOTIFY_VISIBILITY_SECONDS as u64 * 1000,
    timeout_ms: Some(30_000),
};

/// Where the resources came from, for the start-up lines.
enum Origin {
    Environment,
    Provisioned { endpoint: String, prefix: String },
}

fn set(env: &dyn Secrets, name: &str) -> Option<String> {
    env.get(name).filter(|v| !v.trim().is_empty())
}

/// The SDK configuration: the default chain (which honours `AWS_ENDPOINT_URL`), with the
/// emulator's dummy credentials and region when an endpoint is set and no credentials are.
async fn sdk_config(env: &dyn Secrets) -> aws_config::SdkConfig {
    match set(env, "AWS_ENDPOINT_URL") {
        Some(endpoint)
            if set(env, "AWS_ACCESS_KEY_ID").is_none() && set(env, "AWS_PROFILE").is_none() =>
        {
            switchyard_aws::emulator_config(&endpoint).await
        }
        _ => switchyard_aws::config_loader().load().await,
    }
}

/// The resources from the environment, or provisioned on the emulator when none is named.
async fn resources(env: &dyn Secrets, sdk: &aws_config::SdkConfig) -> Result<(Resources, Origin)> {
    let any_named = RESOURCE_VARS.iter().any(|v| set(env, v).is_some());
    match set(env, "AWS_ENDPOINT_URL") {
        Some(endpoint) if !any_named => {
            let prefix = set(env, PREFIX_VAR).unwrap_or_else(|| DEFAULT_PREFIX.to_string());
            let prefix = prefix.trim().to_string();
            // The prefix becomes queue, table and bucket names: keep it to what all three take.
            let ok = !prefix.is_empty()
                && prefix.len() <= 40
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(UsageError(format!(
                    "{PREFIX_VAR} `{prefix}`: use 1-40 lowercase letters, digits and dashes"
                ))
                .into());
            }
            let resources = provision::provision(sdk, &prefix)
                .await
                .with_context(|| format!("provisioning `{prefix}-*` on {endpoint}"))?;
            Ok((resources, Origin::Provisioned { endpoint, prefix }))
        }
        None if !any_named => Err(UsageError(format!(
            "--backend aws: no resources named ({} …) and no emulator to provision on: \
             run `eval \"$(make -s local-aws)\"` first, set AWS_ENDPOINT_URL to an emulator \
             (dev then provisions under {PREFIX_VAR}), or set the variables from a deployed \
             stack's outputs (docs/deploy.md)",
            RESOURCE_VARS[0]
        ))
        .into()),
        _ => Resources::from_env(env)
            .map(|r| (r, Origin::Environment))
            .map_err(|e| UsageError(format!("--backend aws: {e}")).into()),
    }
}

pub async fn dev(args: DevArgs) -> Result<i32> {
    let env = EnvSecrets;
    // Bind first: the URL built-in jobs call back to carries the port (`--addr 127.0.0.1:0`).
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| UsageError(format!("--addr {}: cannot listen: {e}", args.addr)))?;
    let addr = listener.local_addr()?;
    let sdk = sdk_config(&env).await;
    let (resources, origin) = resources(&env, &sdk).await?;

    let mut settings = deploy::load_settings(&sdk, &resources).await?;
    let public_url = set(&env, PUBLIC_URL).unwrap_or_else(|| format!("http://{addr}"));
    settings.insert(PUBLIC_URL.to_string(), public_url.clone());
    let lookup = |s: &BTreeMap<String, String>, name: &str| {
        s.get(name)
            .filter(|v| !v.trim().is_empty())
            .cloned()
            .or_else(|| set(&env, name))
    };
    let dev_key = match lookup(&settings, "SWITCHYARD_API_KEYS") {
        Some(_) => None,
        None => {
            let key = dev::random_token("sy_dev_");
            settings.insert("SWITCHYARD_API_KEYS".into(), format!("{key}:{DEV_TENANT}"));
            Some(key)
        }
    };
    let generated_secret = match lookup(&settings, CALLBACK_SECRET) {
        Some(_) => None,
        None => {
            let s = switchyard_core::webhook::secret_from_bytes(uuid::Uuid::new_v4().as_bytes());
            settings.insert(CALLBACK_SECRET.to_string(), s.clone());
            Some(s)
        }
    };

    let ops_spec = lookup(&settings, OPERATOR_KEYS);
    let dir = args.workflows.clone();
    let clients = switchyard_lambdas::deploy::Clients::new(&sdk, resources.s3_path_style);
    let d = Deployment::with_workflows(clients, resources, settings, &|models| {
        match dev::load_workflows_for(&dir, models)? {
            Ok(w) => Ok(w),
            Err(_) => Err(UsageError(format!(
                "--workflows {}: the problems above must be fixed first",
                dir.display()
            ))
            .into()),
        }
    })?;
    let metrics = Arc::new(crate::prometheus::PrometheusSink::new()?);
    let mut d = d;
    d.engine = d.engine.clone().with_metrics(metrics.clone());
    let d = Arc::new(d);
    let spec = d
        .secrets
        .get("SWITCHYARD_API_KEYS")
        .ok_or_else(|| anyhow!("SWITCHYARD_API_KEYS is not set"))?;
    let keys =
        ApiKeys::parse(&spec).map_err(|e| UsageError(format!("SWITCHYARD_API_KEYS: {e}")))?;
    let (operators, ops_key) = dev::operator_keys(ops_spec)?;
    let serving = Serving {
        operators: Some((operators, d.inboxes())),
        ..Serving::default()
    };
    let app = switchyard_api::app(d.engine.clone(), keys, serving);
    let router = dev::with_metrics_route(app, metrics);

    let served: Vec<String> = d
        .engine
        .workflows
        .list()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    print_banner(
        addr,
        &args,
        &d.resources,
        &origin,
        &public_url,
        &served,
        dev_key.as_deref(),
        generated_secret.as_deref(),
    );
    dev::print_operator_key(ops_key.as_deref());

    let (stop_tx, stop_rx) = watch::channel(false);
    let http = switchyard_providers::outbound::client_builder()
        .build()
        .context("the HTTP client for built-in jobs' callbacks")?;
    let mut pollers = Vec::new();
    for _ in 0..args.workers.max(1) {
        pollers.push(tokio::spawn(work_loop(
            d.clone(),
            http.clone(),
            stop_rx.clone(),
        )));
    }
    let notifier = {
        let d = d.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            let sender = switchyard_providers::outbound::CallbackClient::new(Default::default());
            let idle = host::Idle {
                max_ms: IDLE_MS,
                retry_ms: 1_000,
                kick: None,
            };
            let notifier = d.engine.notifier();
            let function = Function::Notifier(&notifier, &sender);
            host::serve(
                &d.engine,
                d.notify.as_ref(),
                function,
                NOTIFY_MAPPING,
                &idle,
                stop,
            )
            .await;
        })
    };
    pollers.push(notifier);
    pollers.push(tokio::spawn(sweep_loop(d.clone(), stop_rx.clone())));

    // The server outlives the pollers: a batch in hand may still send callbacks to /hooks.
    let (http_stop_tx, mut http_stop) = watch::channel(false);
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = http_stop.wait_for(|s| *s).await;
    });
    let server_task = tokio::spawn(async move { server.await });

    dev::shutdown_signal().await;
    eprintln!("switchyard dev: stopping (finishing the batches in hand)");
    let _ = stop_tx.send(true);
    for p in pollers {
        let _ = p.await;
    }
    let _ = http_stop_tx.send(true);
    if let Ok(Err(e)) = server_task.await {
        tracing::error!(error = %e, "the HTTP server stopped with an error");
    }
    eprintln!("switchyard dev: stopped");
    Ok(crate::exit::SUCCEEDED)
}

/// One worker: the work queue's event source mapping and the worker function's handler, which
/// sends the built-in jobs' callbacks its batch scheduled before it returns.
async fn work_loop(d: Arc<Deployment>, http: reqwest::Client, mut stop: watch::Receiver<bool>) {
    // Received for the hold only (not the queue's 6× visibility): a receive whose answer is
    // lost, or a dev killed mid-batch, lets go of its wake-ups within `HOLD_MS`.
    let mapping = Invocation {
        visibility_ms: recovery::HOLD_MS,
        ..Invocation::default()
    };
    while !*stop.borrow() {
        let polled = host::invoke_once(&d.engine, d.work.as_ref(), Function::Worker, mapping).await;
        let out = callbacks::take(&d);
        if !out.is_empty() {
            callbacks::send(&http, out, mapping.timeout_ms.unwrap_or(30_000)).await;
        }
        let pause = match polled {
            Ok(p) if p.received > 0 => continue,
            Ok(_) => Duration::from_millis(IDLE_MS),
            Err(e) => {
                tracing::warn!(error = %e, "work queue poll failed; trying again");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}

/// The stuck-run sweep every [`recovery::SWEEP_INTERVAL_MS`], as the worker function's
/// schedule runs it on AWS.
async fn sweep_loop(d: Arc<Deployment>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(recovery::SWEEP_INTERVAL_MS);
    while !*stop.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => break,
        }
        if let Err(e) = d.engine.sweep().await {
            tracing::warn!(error = %e, "stuck-run sweep failed; the next one tries again");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn print_banner(
    addr: SocketAddr,
    args: &DevArgs,
    r: &Resources,
    origin: &Origin,
    public_url: &str,
    served: &[String],
    dev_key: Option<&str>,
    generated_secret: Option<&str>,
) {
    println!("switchyard dev: serving http://{addr}");
    match origin {
        Origin::Environment => println!("  backend aws: resources from the environment"),
        Origin::Provisioned { endpoint, prefix } => println!(
            "  backend aws: provisioned `{prefix}-*` on {endpoint} (no SWITCHYARD_TABLE etc. set; prefix from {PREFIX_VAR})"
        ),
    }
    println!(
        "  table {}, bucket {}, settings secret {}",
        r.table,
        r.bucket,
        r.secret_id.as_deref().unwrap_or("(none)")
    );
    println!("  work queue {}", r.work.url);
    println!("  notify queue {}", r.notify.url);
    println!(
        "  {} workers + 1 notifier polling; built-in job callbacks to {public_url}/hooks",
        args.workers.max(1)
    );
    println!(
        "  workflows (read from {} at start-up): {}",
        args.workflows.display(),
        served.join(", ")
    );
    dev::print_keys(
        dev_key,
        generated_secret,
        "SWITCHYARD_API_KEYS (settings secret or environment)",
    );
    dev::print_try(addr, dev_key, served);
}
