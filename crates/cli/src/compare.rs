//! `switchyard compare A.yaml B.yaml (--inputs DIR | --runs FILTER)`: runs one set of inputs
//! through two versions of a workflow, here on the embedded backend, and reports per version
//! what a reviewer of a prompt or model change wants side by side: success, failures by
//! class, validation failures, judge scores, tokens, cost, p95 latency — and which inputs got
//! different outputs, step by step.
//!
//! Inputs come from a directory of JSON files, or from the inputs of runs already in the data
//! dir (`--runs workflow=NAME[,status=S][,limit=N]`). Every run is a real run of the data dir
//! (listed by `runs list`, inspectable with `runs show`), so a surprising difference can be
//! looked at afterwards.

use crate::commands::LOCAL_TENANT;
use crate::exit::{self, UsageError};
use crate::local::{self, Local};
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use switchyard_core::ports::{ListScope, RunQuery};
use switchyard_core::state::RunStatus;
use switchyard_core::stats::RunFacts;
use switchyard_core::workflow::Workflow;
use switchyard_engine::intake::StartRequest;
use switchyard_engine::Workflows;

/// Most inputs one comparison runs (each is two runs).
pub const MAX_INPUTS: usize = 200;

/// Where the inputs come from.
pub enum Inputs {
    Dir(PathBuf),
    /// `workflow=NAME[,status=S][,limit=N]`.
    Runs(String),
}

/// One version's figures.
#[derive(Debug, Default, Serialize)]
pub struct VersionReport {
    pub workflow: String,
    pub version: String,
    pub file: String,
    pub runs: usize,
    pub succeeded: usize,
    pub failed_by_class: BTreeMap<String, usize>,
    /// Checks by validate steps that failed or asked for a repair.
    pub validation_failures: u32,
    /// Mean of the judges' scores, when a judge ran.
    pub judge_score: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// p95 of the runs' duration (created → ended), ms.
    pub p95_latency_ms: Option<u64>,
}

/// An input whose runs differ.
#[derive(Debug, Serialize)]
pub struct Difference {
    pub input: String,
    pub run_a: String,
    pub run_b: String,
    /// `succeeded`/`failed` when the outcome differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<(String, String)>,
    /// The steps whose output differs (in definition order of A).
    pub steps: Vec<String>,
    pub output_differs: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub inputs: usize,
    pub a: VersionReport,
    pub b: VersionReport,
    pub differences: Vec<Difference>,
}

/// `compare`: exit 0 when it ran (whatever the runs did), 2 for a usage problem.
pub async fn compare(a: &Path, b: &Path, inputs: Inputs, json: bool, dir: &Path) -> Result<i32> {
    let models = Local::models()?;
    let load = |p: &Path| -> Result<Workflow> {
        local::load_workflow(p, &models).map_err(|diags| {
            let lines: Vec<String> = diags
                .iter()
                .map(|d| format!("{}:{}:{}: {}", p.display(), d.line, d.col, d.message))
                .collect();
            UsageError(lines.join("\n")).into()
        })
    };
    let (wa, wb) = (load(a)?, load(b)?);
    let l = Local::open_for_runs(dir, Workflows::new())?;
    let inputs = match inputs {
        Inputs::Dir(d) => from_dir(&d)?,
        Inputs::Runs(filter) => from_runs(&l, &filter).await?,
    };
    if inputs.is_empty() {
        return Err(UsageError("no inputs to compare".into()).into());
    }
    let mut report = Report {
        inputs: inputs.len(),
        a: VersionReport::default(),
        b: VersionReport::default(),
        differences: Vec::new(),
    };
    let mut facts: [Vec<(RunFacts, Value)>; 2] = [Vec::new(), Vec::new()];
    for (name, input) in &inputs {
        let mut ran = Vec::new();
        for (i, wf) in [&wa, &wb].into_iter().enumerate() {
            let req = StartRequest {
                workflow: wf.name.clone(),
                version: Some(wf.version.clone()),
                input: input.clone(),
                callback_url: None,
                metadata: Some(json!({"compare": name})),
            };
            let started = l.engine.start_workflow(LOCAL_TENANT, wf, req, None).await?;
            l.drive(&started.run_id).await?;
            let snap = l.engine.load_for(None, &started.run_id).await?;
            let view = l.engine.view(&snap).await?;
            let outputs = step_outputs(&l, &snap).await?;
            facts[i].push((RunFacts::from_snapshot(wf, &snap), view.output.clone()));
            ran.push((started.run_id, snap.header.status, view.output, outputs));
        }
        let (ra, rb) = (&ran[0], &ran[1]);
        let steps: Vec<String> = wa
            .steps
            .iter()
            .filter(|s| ra.3.get(&s.id) != rb.3.get(&s.id))
            .map(|s| s.id.clone())
            .collect();
        let status = (ra.1 != rb.1).then(|| (ra.1.as_str().to_string(), rb.1.as_str().to_string()));
        let output_differs = ra.2 != rb.2;
        if status.is_some() || output_differs || !steps.is_empty() {
            report.differences.push(Difference {
                input: name.clone(),
                run_a: ra.0.clone(),
                run_b: rb.0.clone(),
                status,
                steps,
                output_differs,
            });
        }
    }
    report.a = summarize(&wa, a, &facts[0]);
    report.b = summarize(&wb, b, &facts[1]);
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(exit::SUCCEEDED)
}

/// Each step's output value (resolved), by step id.
async fn step_outputs(
    l: &Local,
    snap: &switchyard_core::state::RunSnapshot,
) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for r in &snap.steps {
        if let Some(v) = &r.output {
            out.insert(r.step.clone(), l.engine.load_value(v).await?);
        }
    }
    Ok(out)
}

fn from_dir(d: &Path) -> Result<Vec<(String, Value)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(d)
        .map_err(|e| UsageError(format!("--inputs {}: {e}", d.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.len() > MAX_INPUTS {
        return Err(UsageError(format!(
            "--inputs {}: {} files; at most {MAX_INPUTS}",
            d.display(),
            files.len()
        ))
        .into());
    }
    files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| UsageError(format!("{}: not JSON: {e}", p.display())))?;
            let name = p
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            Ok((name, v))
        })
        .collect()
}

/// The inputs of runs in the data dir: `workflow=NAME[,status=S][,limit=N]` (limit default 20).
async fn from_runs(l: &Local, filter: &str) -> Result<Vec<(String, Value)>> {
    let mut workflow = None;
    let mut status = None;
    let mut limit = 20usize;
    for part in filter.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            UsageError(format!(
                "--runs: `{part}` is not key=value (workflow, status, limit)"
            ))
        })?;
        match k {
            "workflow" => workflow = Some(v.to_string()),
            "status" => {
                status =
                    Some(serde_json::from_value::<RunStatus>(json!(v)).map_err(|_| {
                        UsageError(format!("--runs: status `{v}` is not a run status"))
                    })?)
            }
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_INPUTS).contains(n))
                    .ok_or_else(|| UsageError(format!("--runs: limit must be 1 to {MAX_INPUTS}")))?
            }
            other => {
                return Err(UsageError(format!(
                    "--runs: unknown key `{other}` (workflow, status, limit)"
                ))
                .into())
            }
        }
    }
    let page = l
        .engine
        .list_runs(&RunQuery {
            scope: ListScope::AllTenants,
            status,
            workflow,
            cursor: None,
            limit,
        })
        .await?;
    let mut out = Vec::new();
    for r in page.runs {
        let snap = l.engine.load_for(None, &r.run_id).await?;
        out.push((r.run_id, l.engine.load_value(&snap.header.input).await?));
    }
    Ok(out)
}

fn summarize(wf: &Workflow, file: &Path, runs: &[(RunFacts, Value)]) -> VersionReport {
    let mut r = VersionReport {
        workflow: wf.name.clone(),
        version: wf.version.clone(),
        file: file.display().to_string(),
        runs: runs.len(),
        ..VersionReport::default()
    };
    let mut scores = Vec::new();
    let mut durations = Vec::new();
    for (f, _) in runs {
        match f.status {
            RunStatus::Succeeded => r.succeeded += 1,
            _ => {
                let class = f
                    .error_class
                    .map_or_else(|| f.status.as_str().to_string(), |c| c.as_str().to_string());
                *r.failed_by_class.entry(class).or_default() += 1;
            }
        }
        r.cost_usd += f.cost_usd;
        for s in &f.steps {
            r.input_tokens += s.usage.input_tokens;
            r.output_tokens += s.usage.output_tokens;
            // Counted once, on the validate step's own facts.
            if s.kind == "validate" {
                r.validation_failures += u32::from(
                    s.status == switchyard_core::state::StepStatus::Failed || s.repairs > 0,
                );
                scores.extend(s.judge_scores.iter().copied());
            }
        }
        if let Some(end) = f.ended_at {
            durations.push(end.saturating_sub(f.created_at));
        }
    }
    r.cost_usd = switchyard_core::machine::budget::round_usd(r.cost_usd);
    r.judge_score = (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64);
    durations.sort_unstable();
    r.p95_latency_ms = (!durations.is_empty()).then(|| {
        // Nearest rank.
        let rank = ((durations.len() as f64) * 0.95).ceil() as usize;
        durations[rank.clamp(1, durations.len()) - 1]
    });
    r
}

fn table(r: &Report) -> String {
    let col = |v: &VersionReport| -> Vec<String> {
        let failed: Vec<String> = v
            .failed_by_class
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        vec![
            format!("{} v{}", v.workflow, v.version),
            format!("{}/{}", v.succeeded, v.runs),
            if failed.is_empty() {
                "-".into()
            } else {
                failed.join(", ")
            },
            v.validation_failures.to_string(),
            v.judge_score
                .map_or_else(|| "-".into(), |s| format!("{s:.2}")),
            format!("{}/{}", v.input_tokens, v.output_tokens),
            format!("${:.6}", v.cost_usd),
            v.p95_latency_ms
                .map_or_else(|| "-".into(), |ms| format!("{ms}ms")),
        ]
    };
    let labels = [
        "version",
        "succeeded",
        "failed",
        "validation failures",
        "judge score (mean)",
        "tokens in/out",
        "cost",
        "p95 latency",
    ];
    let (a, b) = (col(&r.a), col(&r.b));
    let mut out = format!("compare over {} inputs\n", r.inputs);
    let (fa, fb) = (format!("A: {}", r.a.file), format!("B: {}", r.b.file));
    out.push_str(&format!("{:<22} {fa:<34} {fb}\n", ""));
    for (i, l) in labels.iter().enumerate() {
        out.push_str(&format!("{l:<22} {:<34} {}\n", a[i], b[i]));
    }
    if r.differences.is_empty() {
        out.push_str("outputs: the same for every input\n");
    } else {
        out.push_str(&format!(
            "outputs differ for {} of {} inputs:\n",
            r.differences.len(),
            r.inputs
        ));
        for d in &r.differences {
            let status = d
                .status
                .as_ref()
                .map(|(a, b)| format!(" ({a} -> {b})"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {}{status}: steps {} ({} vs {})\n",
                d.input,
                if d.steps.is_empty() {
                    "-".into()
                } else {
                    d.steps.join(", ")
                },
                d.run_a,
                d.run_b
            ));
        }
    }
    out
}
