//! `switchyard runs rerun`: rerun ended runs of the data dir from a step, one
//! (`RUN [--from STEP] [--input FILE] [--latest]`) or in bulk (`--status failed --workflow W
//! --since 6h [--error-class C] [--dry-run]`), and drive the new runs here, as `run` does.
//! The use-cases are `switchyard_engine::rerun`'s; the API's routes call the same ones.

use crate::commands::{open_existing, read_input, report};
use crate::exit::{self, UsageError};
use crate::local::Local;
use anyhow::Result;
use serde_json::json;
use std::path::Path;
use switchyard_core::ports::ListScope;
use switchyard_engine::rerun::RerunRequest;
use switchyard_engine::{EngineError, Workflows};

/// One rerun's flags.
pub struct One<'a> {
    pub run_id: &'a str,
    pub from: Option<&'a str>,
    pub input: Option<&'a Path>,
    /// With the workflow files of this directory: rerun on the newest version of the run's
    /// workflow there.
    pub latest: Option<&'a Path>,
}

/// `runs rerun RUN …`: starts the rerun, drives it, prints it like `run` (exit status by its
/// outcome).
pub async fn one(o: One<'_>, json: bool, dir: &Path) -> Result<i32> {
    let input = match o.input.map(read_input).transpose() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: --input: {e:#}");
            return Ok(exit::USAGE);
        }
    };
    let mut l = match open_existing(dir, o.run_id).await? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    if let Some(wf_dir) = o.latest {
        match crate::serve::load_workflows_for(wf_dir, &Local::models()?)? {
            Ok(w) => l.engine.workflows = std::sync::Arc::new(w),
            Err(code) => return Ok(code),
        }
    }
    let req = RerunRequest {
        from: o.from.map(str::to_string),
        input,
        latest: o.latest.is_some(),
    };
    let r = match l.engine.rerun(None, o.run_id, req, None).await {
        Ok(r) => r,
        Err(
            e @ (EngineError::Conflict(_)
            | EngineError::BadRequest { .. }
            | EngineError::InvalidInput { .. }),
        ) => {
            eprintln!("error: {e}");
            return Ok(exit::USAGE);
        }
        Err(e) => return Err(e.into()),
    };
    if !json {
        let reused = if r.reused.is_empty() {
            "nothing".to_string()
        } else {
            r.reused.join(", ")
        };
        eprintln!(
            "started {} ({} v{}): rerun of {} from `{}`, reusing {reused}",
            r.run_id, r.workflow, r.version, r.rerun_of, r.from
        );
    }
    l.drive(&r.run_id).await?;
    report(&l, &r.run_id, json).await
}

/// `runs rerun --status … [--dry-run]`: the bulk rerun, then each new run driven here.
pub async fn many(
    mut q: switchyard_engine::rerun::BulkRerun,
    json: bool,
    dir: &Path,
) -> Result<i32> {
    q.scope = ListScope::AllTenants;
    let l = Local::open_for_runs(dir, Workflows::new())?;
    let report = l.engine.rerun_many(&q).await?;
    let mut outcomes = Vec::new();
    for r in &report.rerun {
        if let Some(new) = &r.rerun {
            let status = l.drive(new).await?;
            outcomes.push(json!({"run_id": r.run_id, "rerun": new, "status": status.as_str()}));
        } else {
            outcomes.push(json!({"run_id": r.run_id}));
        }
    }
    if json {
        let mut doc = serde_json::to_value(&report)?;
        doc["rerun"] = json!(outcomes);
        println!("{doc}");
    } else {
        let verb = if q.dry_run { "would rerun" } else { "rerun" };
        println!(
            "{} runs looked at, {} matched; {verb} {}, skipped {}{}",
            report.scanned,
            report.matched,
            report.rerun.len(),
            report.skipped.len(),
            if report.more {
                " (more left: run it again)"
            } else {
                ""
            }
        );
        for o in &outcomes {
            match (o["rerun"].as_str(), o["status"].as_str()) {
                (Some(new), Some(st)) => {
                    println!("  {} -> {new} {st}", o["run_id"].as_str().unwrap_or(""))
                }
                _ => println!("  {}", o["run_id"].as_str().unwrap_or("")),
            }
        }
        for s in &report.skipped {
            println!("  {} skipped: {}", s.run_id, s.reason);
        }
    }
    Ok(exit::SUCCEEDED)
}

/// The bulk query of the CLI's flags (the API's body rules).
pub fn bulk_query(
    status: Option<&str>,
    workflow: Option<String>,
    since: Option<String>,
    error_class: Option<&str>,
    dry_run: bool,
    limit: Option<usize>,
) -> Result<switchyard_engine::rerun::BulkRerun> {
    let usage = |m: String| anyhow::Error::from(UsageError(m));
    let status = status
        .map(|s| {
            serde_json::from_value(json!(s))
                .map_err(|_| usage(format!("--status `{s}`: failed or cancelled")))
        })
        .transpose()?;
    let error_class = error_class
        .map(|c| {
            serde_json::from_value(json!(c))
                .map_err(|_| usage(format!("--error-class `{c}` is not an error class")))
        })
        .transpose()?;
    let body = switchyard_api::rerun::BulkRerunBody {
        status,
        workflow,
        since,
        error_class,
        dry_run,
        limit,
    };
    switchyard_api::rerun::bulk_query(ListScope::AllTenants, body).map_err(|e| {
        usage(format!(
            "--{}: {e}",
            e.field().unwrap_or("status").replace('_', "-")
        ))
    })
}
