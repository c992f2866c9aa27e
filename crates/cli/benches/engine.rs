//! `make bench`: the engine's own overhead, measured on the embedded backend with durable
//! checkpoints (SQLite in WAL mode; every step is claimed and checkpointed before the next).
//!
//! Prints, for each durability setting (`normal`, `full`):
//! 1. overhead per step: a 5-, 20- and 40-step chain of a model that answers instantly, end to
//!    end, / steps (flat is the goal), with the write commits per step (each one fsync under
//!    `full`);
//! 2. a 5-step chain at 20 ms per model call: end-to-end time / sum of the measured model
//!    latencies (the sum is measured around each provider call, not assumed to be 100 ms);
//! 3. 5 parallel branches of 20 ms each: end-to-end time;
//! 4. completed 5-step runs per second with 1 and with 16 runs in flight in one process.
//!
//! Each figure is the median of several runs after a warm-up. Figures, not assertions: the
//! numbers are quoted in docs/benchmarks.md with the command that produced them.

use async_trait::async_trait;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use switchyard_cli::local::{Local, Options};
use switchyard_core::model::{ModelInfo, ModelRequest, ModelResponse, Provider};
use switchyard_core::state::RunStatus;
use switchyard_core::workflow::{compile, NoFiles, Workflow};
use switchyard_core::StepError;
use switchyard_engine::intake::StartRequest;
use switchyard_engine::{Providers, Workflows};
use switchyard_local::{Durability, SystemClock};
use switchyard_providers::{LocalConfig, LocalProvider};

/// Wraps the local provider and adds up the time spent inside model calls.
struct Timed {
    inner: LocalProvider,
    nanos: AtomicU64,
}

#[async_trait]
impl Provider for Timed {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn models(&self) -> Vec<ModelInfo> {
        self.inner.models()
    }
    fn estimate_cost_usd(&self, r: &ModelRequest) -> f64 {
        self.inner.estimate_cost_usd(r)
    }
    async fn invoke(&self, r: &ModelRequest) -> Result<ModelResponse, StepError> {
        let t = Instant::now();
        let out = self.inner.invoke(r).await;
        self.nanos
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }
    async fn poll(&self, r: &ModelRequest, job: &str) -> Result<ModelResponse, StepError> {
        self.inner.poll(r, job).await
    }
    fn parse_callback(
        &self,
        model: &str,
        body: &Value,
    ) -> Result<(String, ModelResponse), StepError> {
        self.inner.parse_callback(model, body)
    }
}

fn chain(n: usize, delay_ms: u64) -> String {
    let mut y = format!("name: chain{n}\nversion: \"1\"\nsteps:\n");
    for i in 0..n {
        let prev = if i == 0 {
            "${input.x}".to_string()
        } else {
            format!("${{steps.s{}.output.json.x}}", i - 1)
        };
        y.push_str(&format!("  - id: s{i}\n    model: local/echo\n    input: {{x: \"{prev}\"}}\n    params: {{delay_ms: {delay_ms}}}\n"));
    }
    y
}

fn parallel(n: usize, delay_ms: u64) -> String {
    let mut y =
        "name: fan\nversion: \"1\"\nsteps:\n  - id: fan\n    kind: parallel\n    branches:\n"
            .to_string();
    for i in 0..n {
        y.push_str(&format!("      b{i}:\n        model: local/echo\n        input: {{x: \"${{input.x}}\"}}\n        params: {{delay_ms: {delay_ms}}}\n"));
    }
    y
}

/// One engine on a fresh data dir, with the timed provider in place of the built-in one.
struct Bench {
    local: Local,
    provider: Arc<Timed>,
    _dir: tempfile::TempDir,
}

fn bench(durability: Durability) -> anyhow::Result<Bench> {
    let provider = Arc::new(Timed {
        inner: LocalProvider::new(LocalConfig::default()),
        nanos: AtomicU64::new(0),
    });
    let dir = tempfile::tempdir()?;
    let local = Local::open_with(
        dir.path(),
        Workflows::new(),
        Arc::new(SystemClock),
        Options {
            providers: Some(Providers::new().with(provider.clone())),
            durability: Some(durability),
            ..Options::default()
        },
    )?;
    Ok(Bench {
        local,
        provider,
        _dir: dir,
    })
}

impl Bench {
    fn compile(&self, yaml: &str) -> anyhow::Result<Workflow> {
        compile(yaml, &NoFiles, &self.provider.models()).map_err(|d| anyhow::anyhow!("{d:?}"))
    }

    /// Starts one run of `wf` and drives it to its end.
    async fn one(&self, wf: &Workflow, i: usize) -> anyhow::Result<()> {
        let req = StartRequest {
            workflow: wf.name.clone(),
            version: None,
            input: json!({"x": i}),
            callback_url: None,
            metadata: None,
        };
        let started = self
            .local
            .engine
            .start_workflow("bench", wf, req, None)
            .await?;
        let status = self.local.drive(&started.run_id).await?;
        anyhow::ensure!(status == RunStatus::Succeeded, "run ended {status:?}");
        Ok(())
    }
}

/// Runs the workflow `reps` times; returns (median wall ms, median model ms) per run and the
/// write commits per run.
async fn measure(
    durability: Durability,
    yaml: &str,
    reps: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let b = bench(durability)?;
    let wf = b.compile(yaml)?;
    let mut walls = Vec::new();
    let mut models = Vec::new();
    let mut commits = 0;
    for i in 0..reps + 2 {
        b.provider.nanos.store(0, Ordering::Relaxed);
        let before = b.local.backend.stats().write_commits;
        let t = Instant::now();
        b.one(&wf, i).await?;
        let wall = t.elapsed().as_secs_f64() * 1e3;
        if i >= 2 {
            walls.push(wall);
            models.push(b.provider.nanos.load(Ordering::Relaxed) as f64 / 1e6);
            commits += b.local.backend.stats().write_commits - before;
        }
    }
    Ok((
        median(&mut walls),
        median(&mut models),
        commits as f64 / reps as f64,
    ))
}

/// Completed runs per second of `wf` with `concurrent` runs in flight in one process: each of
/// `concurrent` tasks starts a run and drives it (handling whatever wake-ups it receives, other
/// runs' too) until `total` runs have ended.
async fn throughput(
    durability: Durability,
    yaml: &str,
    concurrent: usize,
    total: usize,
) -> anyhow::Result<(f64, f64)> {
    let b = Arc::new(bench(durability)?);
    let wf = Arc::new(b.compile(yaml)?);
    b.one(&wf, 0).await?; // warm-up
    let next = Arc::new(AtomicU64::new(0));
    let before = b.local.backend.stats().write_commits;
    let t = Instant::now();
    let tasks: Vec<_> = (0..concurrent)
        .map(|_| {
            let (b, wf, next) = (b.clone(), wf.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= total {
                        return anyhow::Ok(());
                    }
                    b.one(&wf, i).await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    let commits = (b.local.backend.stats().write_commits - before) as f64 / total as f64;
    Ok((total as f64 / secs, commits))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn figures(d: Durability) -> anyhow::Result<()> {
    let name = format!("{d:?}").to_lowercase();
    println!("== durability {name} (SWITCHYARD_DURABILITY={name})");
    // Flat from 5 to 40 steps is the goal: a cost per step that grows with the chain means
    // something is rebuilt from all earlier steps at every step.
    for n in [5usize, 20, 40] {
        let (wall, model, commits) = measure(d, &chain(n, 0), 30).await?;
        println!(
            "overhead per step ({n:>2}-step chain, instant model): {:.3} ms  (run {wall:.2} ms; {:.2} write commits per step)",
            (wall - model) / n as f64,
            commits / n as f64
        );
    }
    let (wall, model, _) = measure(d, &chain(5, 20), 15).await?;
    println!("5-step chain at 20 ms per call: end-to-end {wall:.2} ms / model latency {model:.2} ms = ratio {:.3}  (target <= 1.05)", wall / model);
    let (wall, model, _) = measure(d, &parallel(5, 20), 15).await?;
    println!("5 parallel 20 ms branches: end-to-end {wall:.2} ms (target <= 25 ms; summed model time {model:.2} ms)");
    for c in [1usize, 16] {
        let (rate, commits) = throughput(d, &chain(5, 0), c, 400).await?;
        println!(
            "completed 5-step runs/s, {c:>2} concurrent: {rate:.0}  ({:.2} write commits per step)",
            commits / 5.0
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // `cargo bench -- full` (or `normal`) measures one setting; no argument, both.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    rt.block_on(async {
        for d in [Durability::Normal, Durability::Full] {
            let name = format!("{d:?}").to_lowercase();
            if only.is_empty() || only.contains(&name) {
                figures(d).await?;
            }
        }
        Ok(())
    })
}
