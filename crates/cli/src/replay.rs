//! `switchyard runs replay RUN --workflow changed.yaml [--tape DIR] [--offline]`: runs an old
//! run's input again on a changed definition and prints, step by step, what changed — status,
//! output (the JSON paths that differ), tokens, cost and latency.
//!
//! The tape is the one the run kept in the blob store (its workflow said `tape: true`, or the
//! deployment `SWITCHYARD_TAPES=1`), written out under `<data dir>/tapes/<run id>/`, or with
//! `--tape DIR` a recording made with `SWITCHYARD_RECORD=DIR` (docs/providers.md). Every
//! hosted call whose normalized request is unchanged is answered from the tape; a changed
//! prompt, model or input reaches the provider and is added to the tape (`Mode::Patch`), or,
//! with `--offline`, fails the step loudly naming the cassette it looked for. The built-in
//! models need no tape (they are deterministic). The replay is a run of its own in the data
//! dir (`metadata.replay_of` names the old run).

use crate::commands::status_code;
use crate::exit::UsageError;
use crate::local::{self, Local, Options};
use anyhow::{anyhow, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use switchyard_core::ports::{EnvSecrets, Secrets};
use switchyard_core::state::{RunSnapshot, StepRecord};
use switchyard_engine::intake::StartRequest;
use switchyard_engine::{Providers, Workflows};
use switchyard_local::SystemClock;
use switchyard_providers::tape::{Bundle, MISSING_VAR, RECORD_VAR, REPLAY_VAR};
use switchyard_providers::{LocalConfig, LocalProvider};

/// Output paths listed per step at most (the rest are counted).
const MAX_PATHS: usize = 5;

/// The environment with the tape variables of a replay on top.
struct TapeVars(Vec<(&'static str, String)>);

impl Secrets for TapeVars {
    fn get(&self, name: &str) -> Option<String> {
        match self.0.iter().find(|(k, _)| *k == name) {
            Some((_, v)) => Some(v.clone()),
            None => EnvSecrets.get(name),
        }
    }

    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut all = EnvSecrets.with_prefix(prefix);
        all.retain(|(k, _)| !self.0.iter().any(|(o, _)| o == k));
        all.extend(
            self.0
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.to_string(), v.clone())),
        );
        all
    }
}

/// One step, old against new.
#[derive(Debug, Serialize)]
pub struct StepDiff {
    pub step: String,
    pub old_status: Option<String>,
    pub new_status: Option<String>,
    pub output_changed: bool,
    /// JSON paths of the output that differ (`$` for the whole value), at most 5.
    pub changed_paths: Vec<String>,
    pub more_paths: usize,
    pub old_tokens: (u64, u64),
    pub new_tokens: (u64, u64),
    pub old_cost_usd: f64,
    pub new_cost_usd: f64,
    pub old_latency_ms: u64,
    pub new_latency_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub run_id: String,
    pub replay_of: String,
    pub old_version: String,
    pub new_version: String,
    pub old_status: String,
    pub new_status: String,
    pub output_changed: bool,
    /// Where unchanged calls were answered from: `--tape DIR`, or the tape the run kept.
    pub tape: String,
    pub steps: Vec<StepDiff>,
}

pub async fn replay(
    run_id: &str,
    workflow: &Path,
    tape: Option<&Path>,
    offline: bool,
    json: bool,
    dir: &Path,
) -> Result<i32> {
    if let Some(t) = tape {
        if !t.is_dir() {
            return Err(UsageError(format!("--tape {}: no such directory", t.display())).into());
        }
    }
    let wf = local::load_workflow(workflow, &Local::models()?).map_err(|diags| {
        let lines: Vec<String> = diags
            .iter()
            .map(|d| format!("{}:{}:{}: {}", workflow.display(), d.line, d.col, d.message))
            .collect();
        anyhow::Error::from(UsageError(lines.join("\n")))
    })?;
    // Without --tape, the tape is the one the run kept in the blob store (`tape: true`),
    // written out under the data dir before the replay starts; the providers read it at each
    // call, so it can be filled after they are built.
    let kept_dir = dir.join("tapes").join(run_id);
    let tape_dir = tape.map_or_else(|| kept_dir.clone(), Path::to_path_buf);
    if tape.is_none() {
        if kept_dir.exists() {
            std::fs::remove_dir_all(&kept_dir)?;
        }
        std::fs::create_dir_all(&kept_dir)?;
    }
    let vars: Vec<(&'static str, String)> = vec![
        (RECORD_VAR, String::new()),
        (REPLAY_VAR, tape_dir.display().to_string()),
        (MISSING_VAR, if offline { "fail" } else { "call" }.into()),
    ];
    let hosted = switchyard_providers::registry::from_secrets(Arc::new(TapeVars(vars)))
        .map_err(|e| anyhow!("providers: {e}"))?;
    let mut providers = Providers::new().with(Arc::new(LocalProvider::new(LocalConfig::default())));
    for p in hosted.providers {
        providers = providers.with(p);
    }
    let mut l = Local::open_with(
        dir,
        Workflows::new(),
        Arc::new(SystemClock),
        Options {
            listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            providers: Some(providers),
            ..Options::default()
        },
    )?;
    l.serve_callbacks()?;
    let old = match l.engine.load_for(None, run_id).await {
        Ok(s) => s,
        Err(switchyard_engine::EngineError::NotFound(m)) => {
            return Err(UsageError(format!("{m} in `{}`", dir.display())).into())
        }
        Err(e) => return Err(e.into()),
    };
    let source = match tape {
        Some(t) => format!("--tape {}", t.display()),
        None => {
            let n = write_kept(&l, &old, &kept_dir).await?;
            if n == 0 && offline {
                return Err(UsageError(format!(
                    "--offline: run {run_id} kept no tape (its workflow had no `tape: true` and \
                     SWITCHYARD_TAPES was not 1); give a recording with --tape DIR"
                ))
                .into());
            }
            format!("{n} exchanges kept by the run, in {}", kept_dir.display())
        }
    };
    let input = l.engine.load_value(&old.header.input).await?;
    let req = StartRequest {
        workflow: wf.name.clone(),
        version: Some(wf.version.clone()),
        input,
        callback_url: None,
        metadata: Some(json!({"replay_of": run_id})),
    };
    let started = l
        .engine
        .start_workflow(&old.header.tenant, &wf, req, None)
        .await
        .map_err(|e| UsageError(format!("the old input on the new definition: {e}")))?;
    l.drive(&started.run_id).await?;
    let new = l.engine.load_for(None, &started.run_id).await?;
    let mut report = compare(&l, &old, &new, &wf).await?;
    report.tape = source;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(status_code(new.header.status))
}

/// Writes the tapes the old run's steps kept (blob keys on each record, oldest call first)
/// into `dir` as one recording; returns how many exchanges it holds.
async fn write_kept(l: &Local, old: &RunSnapshot, dir: &Path) -> Result<usize> {
    let mut n = 0;
    for key in old.steps.iter().flat_map(|r| &r.tapes) {
        let bytes = l.engine.blobs.get(key).await?;
        let bundle: Bundle = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow!("the kept tape {key} is not a tape: {e}"))?;
        n += bundle
            .write_into(dir)
            .map_err(|e| anyhow!("writing the kept tape {key}: {e}"))?;
    }
    Ok(n)
}

async fn value(l: &Local, r: Option<&StepRecord>) -> Result<Option<Value>> {
    match r.and_then(|r| r.output.as_ref()) {
        Some(v) => Ok(Some(l.engine.load_value(v).await?)),
        None => Ok(None),
    }
}

async fn compare(
    l: &Local,
    old: &RunSnapshot,
    new: &RunSnapshot,
    wf: &switchyard_core::workflow::Workflow,
) -> Result<ReplayReport> {
    let mut ids: Vec<String> = wf.steps.iter().map(|s| s.id.clone()).collect();
    for r in &old.steps {
        if !ids.contains(&r.step) {
            ids.push(r.step.clone());
        }
    }
    let mut steps = Vec::new();
    for id in ids {
        let (o, n) = (old.step(&id), new.step(&id));
        let (ov, nv) = (value(l, o).await?, value(l, n).await?);
        let mut paths = Vec::new();
        diff_paths(
            ov.as_ref().unwrap_or(&Value::Null),
            nv.as_ref().unwrap_or(&Value::Null),
            "$",
            &mut paths,
        );
        let tokens = |r: Option<&StepRecord>| {
            r.and_then(|r| r.usage)
                .map_or((0, 0), |u| (u.input_tokens, u.output_tokens))
        };
        let more = paths.len().saturating_sub(MAX_PATHS);
        paths.truncate(MAX_PATHS);
        steps.push(StepDiff {
            step: id,
            old_status: o.map(|r| r.status.as_str().to_string()),
            new_status: n.map(|r| r.status.as_str().to_string()),
            output_changed: ov != nv,
            changed_paths: paths,
            more_paths: more,
            old_tokens: tokens(o),
            new_tokens: tokens(n),
            old_cost_usd: o.map_or(0.0, |r| r.cost_usd),
            new_cost_usd: n.map_or(0.0, |r| r.cost_usd),
            old_latency_ms: o.map_or(0, |r| r.latency_ms),
            new_latency_ms: n.map_or(0, |r| r.latency_ms),
        });
    }
    let out = |s: &RunSnapshot| s.header.output.clone();
    let (oo, no) = (out(old), out(new));
    let output_changed = match (&oo, &no) {
        (Some(a), Some(b)) => l.engine.load_value(a).await? != l.engine.load_value(b).await?,
        (a, b) => a.is_some() != b.is_some(),
    };
    Ok(ReplayReport {
        run_id: new.header.run_id.clone(),
        replay_of: old.header.run_id.clone(),
        old_version: old.header.workflow.version.clone(),
        new_version: new.header.workflow.version.clone(),
        old_status: old.header.status.as_str().into(),
        new_status: new.header.status.as_str().into(),
        output_changed,
        tape: String::new(),
        steps,
    })
}

/// The JSON paths where `a` and `b` differ (a changed scalar, a key on one side only, arrays
/// of another length are reported at the array).
pub fn diff_paths(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = format!("{at}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => diff_paths(v, w, &p, out),
                    _ => out.push(p),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                diff_paths(v, w, &format!("{at}[{i}]"), out);
            }
        }
        _ if a != b => out.push(at.to_string()),
        _ => {}
    }
}

fn table(r: &ReplayReport) -> String {
    let mut out = format!(
        "replay {} of {} (v{} -> v{}): {} -> {}; output {}\n",
        r.run_id,
        r.replay_of,
        r.old_version,
        r.new_version,
        r.old_status,
        r.new_status,
        if r.output_changed {
            "changed"
        } else {
            "unchanged"
        }
    );
    out.push_str(&format!("tape: {}\n", r.tape));
    out.push_str(&format!(
        "{:<20} {:<22} {:<21} {:<21} {}\n",
        "STEP", "STATUS", "TOKENS in/out", "COST", "LATENCY"
    ));
    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    for s in &r.steps {
        let status = format!("{} -> {}", dash(&s.old_status), dash(&s.new_status));
        let tokens = format!(
            "{}/{} -> {}/{}",
            s.old_tokens.0, s.old_tokens.1, s.new_tokens.0, s.new_tokens.1
        );
        let cost = format!("${:.6} -> ${:.6}", s.old_cost_usd, s.new_cost_usd);
        let latency = format!("{}ms -> {}ms", s.old_latency_ms, s.new_latency_ms);
        out.push_str(&format!(
            "{:<20} {status:<22} {tokens:<21} {cost:<21} {latency}\n",
            s.step
        ));
        if s.output_changed {
            let more = if s.more_paths > 0 {
                format!(" (+{} more)", s.more_paths)
            } else {
                String::new()
            };
            out.push_str(&format!(
                "{:<20}   output changed at {}{more}\n",
                "",
                s.changed_paths.join(", ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::diff_paths;
    use serde_json::json;

    #[test]
    fn paths_that_differ() {
        let table = [
            (json!({"a": 1}), json!({"a": 1}), vec![]),
            (json!({"a": 1}), json!({"a": 2}), vec!["$.a"]),
            (
                json!({"a": {"b": [1, 2]}}),
                json!({"a": {"b": [1, 3]}}),
                vec!["$.a.b[1]"],
            ),
            (json!({"a": [1]}), json!({"a": [1, 2]}), vec!["$.a"]),
            (json!({"a": 1}), json!({"b": 1}), vec!["$.a", "$.b"]),
            (json!("x"), json!({"a": 1}), vec!["$"]),
        ];
        for (a, b, want) in table {
            let mut got = Vec::new();
            diff_paths(&a, &b, "$", &mut got);
            assert_eq!(got, want, "{a} vs {b}");
        }
    }
}
