//! One function per subcommand; each returns the exit status (README.md#the-cli).

use crate::exit;
use crate::local::{self, Local};
use crate::render;
use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use switchyard_core::ports::{ListScope, RunQuery, MAX_LIST_LIMIT};
use switchyard_core::state::RunStatus;
use switchyard_core::StoreError;
use switchyard_engine::intake::StartRequest;
use switchyard_engine::{EngineError, Workflows};

/// The tenant local runs belong to.
pub const LOCAL_TENANT: &str = "local";

pub fn status_code(s: RunStatus) -> i32 {
    match s {
        RunStatus::Succeeded => exit::SUCCEEDED,
        RunStatus::Failed => exit::FAILED,
        RunStatus::Cancelled => exit::CANCELLED,
        RunStatus::Pending | RunStatus::Running | RunStatus::Waiting => exit::WAITING,
    }
}

/// `switchyard validate PATH...`
pub fn validate(paths: &[PathBuf]) -> i32 {
    let models = match Local::models() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e:#}");
            return exit::USAGE;
        }
    };
    let mut problems = 0;
    for p in paths {
        if !p.is_file() {
            eprintln!("error: `{}` is not a file", p.display());
            return exit::USAGE;
        }
        match local::load_workflow(p, &models) {
            Ok(wf) => println!(
                "{}: ok ({} v{}, {} steps)",
                p.display(),
                wf.name,
                wf.version,
                wf.steps.len()
            ),
            Err(diags) => {
                for d in &diags {
                    println!("{}:{}:{}: {}", p.display(), d.line, d.col, d.message);
                }
                problems += diags.len();
            }
        }
    }
    if problems > 0 {
        exit::FAILED
    } else {
        exit::SUCCEEDED
    }
}

/// A workflow argument: a file path, or a name looked up as `workflows/NAME.yaml`.
fn workflow_path(arg: &str) -> PathBuf {
    let p = PathBuf::from(arg);
    if p.is_file() {
        return p;
    }
    let named = Path::new("workflows").join(format!("{arg}.yaml"));
    if named.is_file() {
        named
    } else {
        p
    }
}

pub(crate) fn read_input(path: &Path) -> Result<Value> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the input from stdin")?;
        s
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read input file `{}`", path.display()))?
    };
    serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "input file `{}` is not valid JSON: {e} (line {}, column {})",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

pub(crate) async fn report(l: &Local, run_id: &str, json: bool) -> Result<i32> {
    let snap = l.engine.load_for(None, run_id).await?;
    let view = l.engine.view(&snap).await?;
    if json {
        println!("{}", serde_json::to_string(&render::run_json(&view))?);
    } else {
        print!("{}", render::run_table(&view));
        if view.status == RunStatus::Waiting {
            if let Some(step) = snap.steps.iter().find(|s| {
                s.status == switchyard_core::state::StepStatus::Waiting && s.job.is_none()
            }) {
                println!("next: switchyard approve {run_id} {} [--reject]", step.step);
            } else {
                println!("next: switchyard resume {run_id}");
            }
        }
    }
    Ok(status_code(snap.header.status))
}

/// `switchyard run WORKFLOW --input FILE`
pub async fn run(workflow: &str, input: &Path, json: bool, dir: &Path) -> Result<i32> {
    let path = workflow_path(workflow);
    let wf = match local::load_workflow(&path, &Local::models()?) {
        Ok(wf) => wf,
        Err(diags) => {
            for d in &diags {
                eprintln!("{}:{}:{}: {}", path.display(), d.line, d.col, d.message);
            }
            return Ok(exit::USAGE);
        }
    };
    let input = match read_input(input) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(exit::USAGE);
        }
    };
    let mut workflows = Workflows::new();
    workflows.add(wf.clone());
    let l = Local::open_for_runs(dir, workflows)?;
    let req = StartRequest {
        workflow: wf.name.clone(),
        version: Some(wf.version.clone()),
        input,
        callback_url: None,
        metadata: None,
    };
    let started = match l.engine.start_workflow(LOCAL_TENANT, &wf, req, None).await {
        Ok(s) => s,
        Err(
            e @ (EngineError::InvalidInput { .. }
            | EngineError::BadRequest { .. }
            | EngineError::TooLarge(_)),
        ) => {
            eprintln!(
                "error: {}{}",
                e.field().map(|f| format!("{f}: ")).unwrap_or_default(),
                e
            );
            return Ok(exit::USAGE);
        }
        Err(e) => return Err(e.into()),
    };
    if !json {
        eprintln!("started {} ({} v{})", started.run_id, wf.name, wf.version);
    }
    l.drive(&started.run_id).await?;
    report(&l, &started.run_id, json).await
}

pub(crate) async fn open_existing(
    dir: &Path,
    run_id: &str,
) -> Result<std::result::Result<Local, i32>> {
    let l = Local::open_for_runs(dir, Workflows::new())?;
    match l.engine.load_for(None, run_id).await {
        Ok(_) => Ok(Ok(l)),
        Err(EngineError::NotFound(m)) => {
            eprintln!("error: {m} in `{}`", dir.display());
            Ok(Err(exit::FAILED))
        }
        Err(e) => Err(e.into()),
    }
}

/// `switchyard resume RUN_ID`
pub async fn resume(run_id: &str, json: bool, dir: &Path) -> Result<i32> {
    let l = match open_existing(dir, run_id).await? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    l.recover_dead_owners(run_id).await?;
    let wake = switchyard_core::state::WakeUp {
        run_id: run_id.to_string(),
        reason: switchyard_core::state::WakeReason::Resume,
        due_at: None,
    };
    l.engine.handle(&wake, None).await?;
    l.drive(run_id).await?;
    report(&l, run_id, json).await
}

/// `switchyard approve RUN_ID STEP [--reject] [--comment TEXT]`
pub async fn approve(
    run_id: &str,
    step: &str,
    reject: bool,
    comment: Option<String>,
    json: bool,
    dir: &Path,
) -> Result<i32> {
    let l = match open_existing(dir, run_id).await? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    l.recover_dead_owners(run_id).await?;
    match l.engine.decide(None, run_id, step, !reject, comment).await {
        Ok(()) => {}
        Err(
            e @ (EngineError::Conflict(_)
            | EngineError::BadRequest { .. }
            | EngineError::NotFound(_)),
        ) => {
            eprintln!("error: {e}");
            return Ok(exit::USAGE);
        }
        Err(e) => return Err(e.into()),
    }
    l.drive(run_id).await?;
    report(&l, run_id, json).await
}

/// `switchyard cancel RUN_ID`
pub async fn cancel(run_id: &str, json: bool, dir: &Path) -> Result<i32> {
    let l = match open_existing(dir, run_id).await? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    match l.engine.cancel(None, run_id).await {
        Ok(_) => {}
        Err(EngineError::Conflict(m)) => {
            eprintln!("error: {m}");
            report(&l, run_id, json).await?;
            return Ok(exit::FAILED);
        }
        Err(e) => return Err(e.into()),
    }
    l.recover_dead_owners(run_id).await?;
    l.drive(run_id).await?;
    report(&l, run_id, json).await
}

/// `switchyard runs list`
pub async fn runs_list(args: &ListArgs, dir: &Path) -> Result<i32> {
    let status = match args.status.as_deref() {
        None => None,
        Some(s) => match serde_json::from_value::<RunStatus>(Value::String(s.to_string())) {
            Ok(st) => Some(st),
            Err(_) => {
                eprintln!(
                    "error: --status `{s}` is not a run status (pending, running, waiting, succeeded, failed, cancelled)"
                );
                return Ok(exit::USAGE);
            }
        },
    };
    if !(1..=MAX_LIST_LIMIT).contains(&args.limit) {
        eprintln!("error: --limit must be from 1 to {MAX_LIST_LIMIT}");
        return Ok(exit::USAGE);
    }
    let l = Local::open(dir, Workflows::new())?;
    let query = RunQuery {
        scope: ListScope::AllTenants,
        status,
        workflow: args.workflow.clone(),
        cursor: args.after.clone(),
        limit: args.limit,
    };
    let page = match l.engine.list_runs(&query).await {
        Ok(p) => p,
        Err(switchyard_engine::EngineError::Store(StoreError::Invalid(e))) => {
            eprintln!("error: --after: {e}");
            return Ok(exit::USAGE);
        }
        Err(e) => return Err(e.into()),
    };
    let remaining = page.remaining.unwrap_or(0);
    if args.json {
        let rows: Vec<Value> = page.runs.iter().map(|r| serde_json::json!({
            "run_id": r.run_id, "workflow": r.workflow, "version": r.version, "status": r.status.as_str(),
            "created_at": r.created_at, "updated_at": r.updated_at,
        })).collect();
        let doc =
            serde_json::json!({"runs": rows, "next_cursor": page.cursor, "remaining": remaining});
        println!("{}", serde_json::to_string(&doc)?);
        return Ok(exit::SUCCEEDED);
    }
    if page.runs.is_empty() {
        println!("no runs in `{}`", dir.display());
    } else {
        println!(
            "{:<42}  {:<22}  {:<8}  {:<10}",
            "RUN", "WORKFLOW", "VERSION", "STATUS"
        );
        for r in &page.runs {
            println!(
                "{:<42}  {:<22}  {:<8}  {:<10}",
                r.run_id,
                r.workflow,
                r.version,
                r.status.as_str()
            );
        }
    }
    if let Some(cursor) = &page.cursor {
        println!("… {remaining} more; next page: switchyard runs list --after {cursor}");
    }
    Ok(exit::SUCCEEDED)
}

/// What `runs list` lists.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Print one JSON document: `{runs, next_cursor, remaining}`.
    #[arg(long)]
    pub json: bool,
    /// Rows per page (1 to 1000).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Continue after this cursor (printed at the end of the previous page).
    #[arg(long)]
    pub after: Option<String>,
    /// Only runs with this status.
    #[arg(long)]
    pub status: Option<String>,
    /// Only runs of this workflow.
    #[arg(long)]
    pub workflow: Option<String>,
}

/// `switchyard runs show RUN_ID`
pub async fn runs_show(run_id: &str, json: bool, dir: &Path) -> Result<i32> {
    let l = match open_existing(dir, run_id).await? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let snap = l.engine.load_for(None, run_id).await?;
    let view = l.engine.view(&snap).await?;
    let events = l.engine.history(None, run_id).await?;
    if json {
        let mut doc = render::run_json(&view);
        doc["events"] = serde_json::to_value(&events)?;
        println!("{}", serde_json::to_string(&doc)?);
    } else {
        print!("{}", render::run_table(&view));
        print!("{}", render::events_table(&events));
    }
    Ok(exit::SUCCEEDED)
}

/// `switchyard stats [--workflow W] [--since 24h] [--by model|prompt_version] [--json]`: every
/// tenant's runs in the data dir (the local CLI is the operator's view).
pub async fn stats(
    workflow: Option<&str>,
    since: &str,
    by: Option<&str>,
    json: bool,
    dir: &Path,
) -> Result<i32> {
    let query = match switchyard_engine::stats::StatsQuery::parse(
        ListScope::AllTenants,
        workflow,
        Some(since),
    )
    .and_then(|q| q.with_by(by))
    {
        Ok(q) => q,
        Err(e) => {
            eprintln!("error: --{}: {e}", e.field().unwrap_or("since"));
            return Ok(exit::USAGE);
        }
    };
    let l = Local::open(dir, Workflows::new())?;
    let stats = l.engine.stats(&query).await?;
    if json {
        println!("{}", serde_json::to_string(&stats)?);
    } else {
        print!("{}", render::stats_table(&stats));
    }
    Ok(exit::SUCCEEDED)
}

/// `switchyard fake-provider`: the fake OpenAI, Anthropic, Bedrock and Replicate servers.
pub async fn fake_provider(
    addr: &str,
    webhook_secret: Option<String>,
    script: Option<&str>,
    replicate_delay_ms: u64,
) -> Result<i32> {
    let script = match script {
        Some(spec) => switchyard_fakes::parse_script(spec).map_err(|e| anyhow!("--script: {e}"))?,
        None => Default::default(),
    };
    let secret = webhook_secret
        .or_else(|| std::env::var("SWITCHYARD_WEBHOOK_SECRET").ok().filter(|s| !s.is_empty()))
        .ok_or_else(|| anyhow!("give --webhook-secret whsec_... (or SWITCHYARD_WEBHOOK_SECRET): the fake signs Replicate webhooks with it"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let url = format!("http://{}", listener.local_addr()?);
    println!("fake providers on {url}; point Switchyard at them with:");
    println!("  export OPENAI_BASE_URL={url}/v1 OPENAI_API_KEY=sk-fake");
    println!("  export ANTHROPIC_BASE_URL={url} ANTHROPIC_API_KEY=fake");
    println!("  export AWS_ENDPOINT_URL_BEDROCK_RUNTIME={url} AWS_ACCESS_KEY_ID=AKIDFAKE AWS_SECRET_ACCESS_KEY=fake AWS_REGION=us-east-1");
    println!("  export REPLICATE_BASE_URL={url}/v1 REPLICATE_API_TOKEN=r8_fake SWITCHYARD_WEBHOOK_SECRET={secret}");
    println!("script more behaviours with: curl -X POST {url}/_fake/script -d '{{\"provider\":\"openai\",\"behaviors\":[\"rate_limited\"]}}'");
    let config = switchyard_fakes::FakeConfig {
        webhook_secret: secret,
        replicate_delay_ms,
        script,
        delivery_url: None,
    };
    switchyard_fakes::serve(listener, config).await?;
    Ok(exit::SUCCEEDED)
}
