//! `make bench` (second part): what each of the six offline examples costs the store, counted
//! rather than timed.
//!
//! Each example runs once on a fresh embedded backend (`normal` durability), with its sample
//! input from `events/inputs/`; `asset-pipeline` is approved when it reaches its gate. Printed
//! per example: the steps that ran (skipped branches excluded), the store and queue calls made
//! (`jobs`), the write transactions committed, and the calls that changed rows (what a
//! per-item-billed store such as DynamoDB would charge for) — in total and per step.
//!
//! The figures are quoted in docs/architecture.md ("Writes per step") with this command:
//! `cargo bench -p switchyard-cli --bench writes`.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use switchyard_cli::commands::LOCAL_TENANT;
use switchyard_cli::local::{load_workflow, Local};
use switchyard_core::state::{RunStatus, StepStatus};
use switchyard_engine::intake::StartRequest;
use switchyard_engine::Workflows;

const EXAMPLES: [&str; 6] = [
    "support-triage",
    "knowledge-answer",
    "product-copy",
    "document-enrichment",
    "resilient-summary",
    "asset-pipeline",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Counted {
    steps: u64,
    jobs: u64,
    commits: u64,
    changed: u64,
    status: RunStatus,
}

async fn count(name: &str) -> anyhow::Result<Counted> {
    let root = root();
    let path = root.join("workflows").join(format!("{name}.yaml"));
    let wf = load_workflow(&path, &Local::models()?).map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let input_path = root.join("events/inputs").join(format!("{name}.json"));
    let input = serde_json::from_slice(&std::fs::read(&input_path).context("sample input")?)?;
    let dir = tempfile::tempdir()?;
    let mut workflows = Workflows::new();
    workflows.add(wf.clone());
    // The examples read their corpus and schemas relative to the repository root.
    std::env::set_current_dir(&root)?;
    let l = Local::open_for_runs(dir.path(), workflows)?;
    let before = l.backend.stats();
    let req = StartRequest {
        workflow: wf.name.clone(),
        version: Some(wf.version.clone()),
        input,
        callback_url: None,
        metadata: None,
    };
    let run = l
        .engine
        .start_workflow(LOCAL_TENANT, &wf, req, None)
        .await?;
    let mut status = l.drive(&run.run_id).await?;
    if status == RunStatus::Waiting {
        l.engine
            .decide(None, &run.run_id, "approve", true, None)
            .await?;
        status = l.drive(&run.run_id).await?;
    }
    let after = l.backend.stats();
    let snap = l.engine.load_for(None, &run.run_id).await?;
    let steps = snap
        .steps
        .iter()
        .filter(|r| r.status != StepStatus::Skipped)
        .count() as u64;
    if steps == 0 {
        bail!("{name}: no step ran");
    }
    Ok(Counted {
        steps,
        jobs: after.jobs - before.jobs,
        commits: after.write_commits - before.write_commits,
        changed: after.changed - before.changed,
        status,
    })
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!("store + queue calls per example run (embedded backend, normal durability)");
    println!(
        "{:<20} {:>9} {:>5} {:>6} {:>8} {:>8} {:>11} {:>13}",
        "example", "status", "steps", "calls", "commits", "changed", "calls/step", "changed/step"
    );
    for name in EXAMPLES {
        let c = rt.block_on(count(name))?;
        let per = |n: u64| n as f64 / c.steps as f64;
        println!(
            "{:<20} {:>9} {:>5} {:>6} {:>8} {:>8} {:>11.1} {:>13.1}",
            name,
            c.status.as_str(),
            c.steps,
            c.jobs,
            c.commits,
            c.changed,
            per(c.jobs),
            per(c.changed)
        );
    }
    Ok(())
}
