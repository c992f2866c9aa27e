//! `make bench`: the engine's own overhead, measured on the embedded backend with durable
//! checkpoints (SQLite in WAL mode; every step is claimed and checkpointed before the next).
//!
//! Prints three figures:
//! 1. overhead per step: a 20-step chain of a model that answers instantly, end to end, / 20
//!    (and the same for 5 and 40 steps, to see whether it stays flat);
//! 2. a 5-step chain at 20 ms per model call: end-to-end time / sum of the measured model
//!    latencies (the sum is measured around each provider call, not assumed to be 100 ms);
//! 3. 5 parallel branches of 20 ms each: end-to-end time.
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
use switchyard_core::workflow::{compile, NoFiles};
use switchyard_core::StepError;
use switchyard_engine::intake::StartRequest;
use switchyard_engine::{Providers, Workflows};
use switchyard_local::SystemClock;
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

/// Runs the workflow `reps` times; returns (median wall ms, median model ms) per run.
async fn measure(yaml: &str, reps: usize) -> anyhow::Result<(f64, f64)> {
    let provider = Arc::new(Timed {
        inner: LocalProvider::new(LocalConfig::default()),
        nanos: AtomicU64::new(0),
    });
    let wf = compile(yaml, &NoFiles, &provider.models()).map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let dir = tempfile::tempdir()?;
    // Same engine, with the timed provider in place of the built-in one.
    let local = Local::open_with(
        dir.path(),
        Workflows::new(),
        Arc::new(SystemClock),
        Options {
            providers: Some(Providers::new().with(provider.clone())),
            ..Options::default()
        },
    )?;
    let mut walls = Vec::new();
    let mut models = Vec::new();
    for i in 0..reps + 2 {
        provider.nanos.store(0, Ordering::Relaxed);
        let t = Instant::now();
        let req = StartRequest {
            workflow: wf.name.clone(),
            version: None,
            input: json!({"x": i}),
            callback_url: None,
            metadata: None,
        };
        let started = local.engine.start_workflow("bench", &wf, req, None).await?;
        let status = local.drive(&started.run_id).await?;
        let wall = t.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(
            status == switchyard_core::state::RunStatus::Succeeded,
            "run ended {status:?}"
        );
        if i >= 2 {
            walls.push(wall);
            models.push(provider.nanos.load(Ordering::Relaxed) as f64 / 1e6);
        }
    }
    Ok((median(&mut walls), median(&mut models)))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (wall, model) = measure(&chain(20, 0), 30).await?;
        println!("overhead per step (20-step chain, instant model, durable checkpoints): {:.3} ms  (target <= 0.5 ms; run {wall:.2} ms, in models {model:.2} ms)", (wall - model) / 20.0);
        // Flat from 5 to 40 steps is the goal: a cost per step that grows with the chain
        // means something is rebuilt from all earlier steps at every step.
        for n in [5usize, 40] {
            let (wall, model) = measure(&chain(n, 0), 30).await?;
            println!("overhead per step ({n}-step chain, instant model): {:.3} ms", (wall - model) / n as f64);
        }
        let (wall, model) = measure(&chain(5, 20), 15).await?;
        println!("5-step chain at 20 ms per call: end-to-end {wall:.2} ms / model latency {model:.2} ms = ratio {:.3}  (target <= 1.05)", wall / model);
        let (wall, model) = measure(&parallel(5, 20), 15).await?;
        println!("5 parallel 20 ms branches: end-to-end {wall:.2} ms (target <= 25 ms; summed model time {model:.2} ms)");
        Ok(())
    })
}
