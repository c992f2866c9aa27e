//! `make bench-aws`, part 1: what each example asks of AWS per step — DynamoDB write and read
//! request units, SQS and S3 requests — and what that orchestration costs per million steps at
//! us-east-1 on-demand list prices. Figures, not assertions.
//!
//! Each of the six examples runs once on moto (`SWITCHYARD_TEST_AWS_ENDPOINT`) through the
//! same handlers as `tests/emulator.rs` (`switchyard_lambdas::harness`): started through intake's
//! router, its wake-ups through the worker's batches (the engine's host loop plays the event source mapping),
//! asset-pipeline's job callbacks through the webhook handler, then an approval. Every SDK
//! client of that deployment carries a `switchyard_aws::metrics::Meter`; the run's status is
//! polled through a second, unmetered deployment on the same resources, so the bench's own
//! reads are not counted.
//!
//! Capacity units are the meter's, computed from item sizes by DynamoDB's documented rules
//! (see `crates/aws/src/metrics.rs`); moto's `ConsumedCapacity` answer is printed beside
//! them, marked as moto's (it is a rough constant per request there, not a size-based figure).
//!
//! Usage: `cargo bench -p switchyard-lambdas --bench aws` with the endpoint set. Run by
//! `cargo test --all-targets` (no `--bench` argument), it only says how to run it.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use switchyard_aws::metrics::{Meter, Usage};
use switchyard_core::model::ModelInfo;
use switchyard_core::workflow::{compile, NoFiles};
use switchyard_engine::Workflows;
use switchyard_lambdas::harness;
use switchyard_lambdas::{provision::provision, Clients, Deployment};

const EXAMPLES: [&str; 6] = [
    "support-triage",
    "knowledge-answer",
    "product-copy",
    "document-enrichment",
    "resilient-summary",
    "asset-pipeline",
];

/// Chains of built-in steps (`local/echo`, each step reading the one before), as `make bench`
/// runs on the embedded backend: what a run costs with its steps, to tell the per-run part
/// (start, lease, end, indexes, stats) from the per-step part.
const CHAINS: [(&str, usize); 3] = [("chain5", 5), ("chain20", 20), ("chain40", 40)];

fn chain_yaml(name: &str, n: usize) -> String {
    let mut y = format!("name: {name}\nversion: \"1\"\nsteps:\n");
    for i in 0..n {
        let prev = if i == 0 {
            "${input.x}".to_string()
        } else {
            format!("${{steps.s{}.output.json.x}}", i - 1)
        };
        y.push_str(&format!(
            "  - id: s{i}\n    model: local/echo\n    input: {{x: \"{prev}\"}}\n"
        ));
    }
    y
}

/// The bundled workflows and the [`CHAINS`].
fn with_chains(models: &[ModelInfo]) -> Result<Workflows> {
    let mut all = switchyard_lambdas::bundle::workflows(models).map_err(|e| anyhow!("{e}"))?;
    for (name, n) in CHAINS {
        let wf = compile(&chain_yaml(name, n), &NoFiles, models)
            .map_err(|d| anyhow!("{name}: {d:?}"))?;
        all.add(wf);
    }
    Ok(all)
}

/// us-east-1 list prices (USD), on-demand / standard, as of 2026-12.
const DYNAMO_PER_WRITE_UNIT: f64 = 0.625 / 1e6;
const DYNAMO_PER_READ_UNIT: f64 = 0.125 / 1e6;
const SQS_PER_REQUEST: f64 = 0.40 / 1e6;
/// S3 Standard: PUT, COPY, POST, LIST per 1,000 requests; GET, SELECT and the rest.
const S3_PER_PUT: f64 = 0.005 / 1e3;
const S3_PER_GET: f64 = 0.0004 / 1e3;
/// Step Functions Standard, per state transition (for comparison).
const SFN_PER_TRANSITION: f64 = 25.0 / 1e6;
/// The goal (issue 9): orchestration cost per million steps.
const GOAL_PER_MILLION: f64 = 1.5;

fn s3_is_put_class(op: &str) -> bool {
    matches!(
        op,
        "PutObject"
            | "CopyObject"
            | "ListObjects"
            | "ListObjectsV2"
            | "CreateMultipartUpload"
            | "UploadPart"
            | "CompleteMultipartUpload"
            | "CreateBucket"
    )
}

struct Figures {
    name: &'static str,
    status: String,
    steps: usize,
    skipped: usize,
    usage: Usage,
}

impl Figures {
    fn per_step(&self, x: f64) -> f64 {
        x / self.steps.max(1) as f64
    }

    fn sqs(&self) -> f64 {
        let mut n = self.usage.service("SQS").billed as f64;
        // Empty receives are the event source mapping's polling: a cost per queue and hour,
        // not per step (shown apart).
        if let Some(c) = self
            .usage
            .requests
            .get(&("SQS".into(), "ReceiveMessage (empty)".into()))
        {
            n -= c.billed as f64;
        }
        n
    }

    fn empty_receives(&self) -> u64 {
        self.usage
            .requests
            .get(&("SQS".into(), "ReceiveMessage (empty)".into()))
            .map_or(0, |c| c.requests)
    }

    fn s3(&self) -> (f64, f64) {
        let (mut put, mut get) = (0.0, 0.0);
        for ((service, op), c) in &self.usage.requests {
            if service.eq_ignore_ascii_case("s3") {
                if s3_is_put_class(op) {
                    put += c.requests as f64;
                } else {
                    get += c.requests as f64;
                }
            }
        }
        (put, get)
    }

    /// Orchestration dollars per million steps: DynamoDB, SQS and S3 requests.
    fn cost_per_million(&self) -> (f64, f64, f64, f64) {
        let m = 1e6;
        let dynamo = self.per_step(self.usage.total_write_units()) * DYNAMO_PER_WRITE_UNIT * m
            + self.per_step(self.usage.total_read_units()) * DYNAMO_PER_READ_UNIT * m;
        let sqs = self.per_step(self.sqs()) * SQS_PER_REQUEST * m;
        let (put, get) = self.s3();
        let s3 = self.per_step(put) * S3_PER_PUT * m + self.per_step(get) * S3_PER_GET * m;
        (dynamo + sqs + s3, dynamo, sqs, s3)
    }
}

fn fixture(name: &str) -> Result<String> {
    let path = format!("{}/../../events/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
}

/// What an example runs on: the metered deployment, intake's router over it, an unmetered
/// router to read runs through, and the meter.
#[derive(Clone, Copy)]
struct Rig<'a> {
    metered: &'a Deployment,
    api: &'a axum::Router,
    observer: &'a axum::Router,
    meter: &'a Meter,
}

/// The example's input (`events/inputs/<name>.json`).
fn example_input(name: &str) -> Result<Value> {
    Ok(serde_json::from_str(&fixture(&format!(
        "inputs/{name}.json"
    ))?)?)
}

/// Steps that ran and steps skipped, of a run as `GET /v1/runs/{id}` shows it.
fn step_counts(name: &str, run: &Value) -> Result<(usize, usize)> {
    let steps = run["steps"]
        .as_array()
        .ok_or_else(|| anyhow!("{name}: no steps in {run}"))?;
    let skipped = steps.iter().filter(|s| s["status"] == "skipped").count();
    Ok((steps.len() - skipped, skipped))
}

async fn run_example(name: &'static str, rig: &Rig<'_>) -> Result<Figures> {
    run_once(name, example_input(name)?, rig).await
}

/// One run of `name` on `input`, unmetered first (a warm container), then metered.
async fn run_once(name: &'static str, input: Value, rig: &Rig<'_>) -> Result<Figures> {
    let Rig {
        metered,
        api,
        observer,
        meter,
    } = *rig;
    // A warm container: one run of the example first, unmetered, as the function's earlier
    // invocations would have (it stores the definition once per process: `PIN_REFRESH_MS`).
    let warm = harness::start(api, name, input.clone()).await?;
    let warmed = harness::work_until_done(metered, observer, &warm).await?;
    if name == "asset-pipeline" {
        harness::approve(api, &warmed).await?;
        harness::work_until_done(metered, observer, &warm).await?;
    }
    meter.take();
    let run_id = harness::start(api, name, input).await?;
    let mut run = harness::work_until_done(metered, observer, &run_id).await?;
    if name == "asset-pipeline" {
        // Its job finished through the webhook handler; now a person approves.
        if run["status"] != "waiting" {
            bail!("{name}: expected a run waiting for approval, got {run}");
        }
        harness::approve(api, &run).await?;
        run = harness::work_until_done(metered, observer, &run_id).await?;
    }
    let usage = meter.take();
    let (steps, skipped) = step_counts(name, &run)?;
    Ok(Figures {
        name,
        status: run["status"].as_str().unwrap_or_default().to_string(),
        steps,
        skipped,
        usage,
    })
}

/// Runs that start together per example in the batch table: the event source mapping's
/// default batch size, so the first invocation takes all their starts at once.
const RUNS_AT_ONCE: usize = 10;

/// [`RUNS_AT_ONCE`] runs of `name` started together and driven in batches of up to 10 (a busy
/// deployment: the queue requests of each invocation are shared by several runs). The
/// deployment is warm (`run_all` ran first).
async fn run_batch(name: &'static str, rig: &Rig<'_>) -> Result<Figures> {
    let input = example_input(name)?;
    let meter = rig.meter;
    meter.take();
    let mut ids = Vec::with_capacity(RUNS_AT_ONCE);
    for _ in 0..RUNS_AT_ONCE {
        ids.push(harness::start(rig.api, name, input.clone()).await?);
    }
    let runs = harness::work_until_all_done(rig.metered, rig.observer, &ids).await?;
    let usage = meter.take();
    let (mut steps, mut skipped) = (0, 0);
    for run in &runs {
        if run["status"] != "succeeded" {
            bail!("{name} (batch) ended {}", run["status"]);
        }
        let (ran, s) = step_counts(name, run)?;
        steps += ran;
        skipped += s;
    }
    Ok(Figures {
        name,
        status: "succeeded".into(),
        steps,
        skipped,
        usage,
    })
}

/// Every example through `metered`, in order; an example that does not succeed stops the
/// bench (`label` says which deployment it ran on).
async fn run_all(label: &str, rig: &Rig<'_>) -> Result<Vec<Figures>> {
    let mut all = Vec::new();
    for name in EXAMPLES {
        let f = run_example(name, rig).await?;
        if f.status != "succeeded" {
            bail!("{name}{label} ended {}", f.status);
        }
        all.push(f);
    }
    Ok(all)
}

fn print_summary(all: &[Figures]) {
    println!("## Per step (steps that ran; skipped branches are not counted as steps)\n");
    println!(
        "| example | steps (+skipped) | status | WRU/step | RRU/step | moto WCU/step | moto RCU/step | SQS req/step | S3 req/step | $ per 1M steps (DynamoDB + SQS + S3) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for f in all {
        let (total, dynamo, sqs, s3) = f.cost_per_million();
        let (put, get) = f.s3();
        let moto = |x: f64| {
            if f.usage.reported {
                format!("{:.2}", f.per_step(x))
            } else {
                "—".into()
            }
        };
        println!(
            "| {} | {} (+{}) | {} | {:.2} | {:.2} | {} | {} | {:.2} | {:.2} | **{:.2}** ({:.2} + {:.2} + {:.2}) |",
            f.name,
            f.steps,
            f.skipped,
            f.status,
            f.per_step(f.usage.total_write_units()),
            f.per_step(f.usage.total_read_units()),
            moto(f.usage.reported_write_units),
            moto(f.usage.reported_read_units),
            f.per_step(f.sqs()),
            f.per_step(put + get),
            total,
            dynamo,
            sqs,
            s3,
        );
    }
    let steps: usize = all.iter().map(|f| f.steps).sum();
    let count = [
        "none",
        "The one",
        "Both",
        "All three",
        "All four",
        "All five",
        "All six",
    ]
    .get(all.len())
    .map_or_else(|| format!("All {}", all.len()), |c| c.to_string());
    let cost: f64 = all
        .iter()
        .map(|f| f.cost_per_million().0 * f.steps as f64)
        .sum::<f64>()
        / steps.max(1) as f64;
    println!(
        "\n{count}, weighted by steps: ${cost:.2} per 1M steps (goal <= ${GOAL_PER_MILLION:.2}; \
         Step Functions Standard: ${:.2} per 1M state transitions).",
        SFN_PER_TRANSITION * 1e6
    );
    println!(
        "Prices (us-east-1): DynamoDB on-demand $0.625 per 1M write request units, $0.125 per 1M read \
         request units; SQS standard $0.40 per 1M requests (64 KB chunks); S3 PUT-class $0.005 and \
         GET-class $0.0004 per 1,000. Lambda is not included."
    );
    println!(
        "WRU/RRU: the meter's, from item sizes (DynamoDB's documented rules); moto WCU/RCU: the \
         ConsumedCapacity moto answered (a per-request constant there, not size-based)."
    );
}

/// A run's cost as `fixed + steps × per_step`, fitted on the shortest and longest chain, and
/// the chain length from which the goal is met.
fn print_fixed_and_per_step(chains: &[Figures]) {
    let (Some(short), Some(long)) = (chains.first(), chains.last()) else {
        return;
    };
    let per_run = |f: &Figures| {
        let steps = f.steps as f64;
        (
            f.cost_per_million().0 * steps,
            f.usage.total_write_units(),
            steps,
        )
    };
    let ((c1, w1, n1), (c2, w2, n2)) = (per_run(short), per_run(long));
    if n2 <= n1 {
        return;
    }
    let step = (c2 - c1) / (n2 - n1);
    let fixed = c1 - n1 * step;
    let step_wru = (w2 - w1) / (n2 - n1);
    println!(
        "\nPer run: ${fixed:.2} per 1M runs ({:.1} WRU) plus ${step:.2} per 1M steps ({step_wru:.2} \
         WRU) per step (fitted on {} and {}).",
        w1 - n1 * step_wru,
        short.name,
        long.name
    );
    if step < GOAL_PER_MILLION {
        println!(
            "At ${GOAL_PER_MILLION:.2} per 1M steps from {:.0} steps per run on.",
            (fixed / (GOAL_PER_MILLION - step)).ceil()
        );
    }
}

fn print_breakdown(f: &Figures) {
    println!(
        "\n### {}: {} steps, {:.2} WRU, {:.2} RRU in all",
        f.name,
        f.steps,
        f.usage.total_write_units(),
        f.usage.total_read_units()
    );
    println!("\n| write | items | WRU | WRU/step |\n|---|---|---|---|");
    for (slot, wru) in &f.usage.write_units {
        let n = f.usage.writes.get(slot).copied().unwrap_or(0);
        println!(
            "| {} {} | {} | {:.1} | {:.2} |",
            slot.0,
            slot.1,
            n,
            wru,
            f.per_step(*wru)
        );
    }
    println!("\n| read | RRU | RRU/step |\n|---|---|---|");
    for ((op, kind), rru) in &f.usage.read_units {
        println!("| {op} {kind} | {rru:.1} | {:.2} |", f.per_step(*rru));
    }
    println!("\n| requests | count | billed | per step |\n|---|---|---|---|");
    for ((service, op), c) in &f.usage.requests {
        println!(
            "| {service} {op} | {} | {} | {:.2} |",
            c.requests,
            c.billed,
            f.per_step(c.billed as f64)
        );
    }
    if f.usage.unparsed_updates > 0 {
        println!(
            "\n({} update clauses the meter could not apply: those sizes are low)",
            f.usage.unparsed_updates
        );
    }
}

async fn bench(endpoint: &str) -> Result<()> {
    let sdk = switchyard_aws::emulator_config(endpoint).await;
    let prefix = format!(
        "sy-bench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let resources = provision(&sdk, &prefix).await?;
    let meter = Meter::for_table().ask_consumed_capacity();
    let metered = Deployment::with_workflows(
        Clients::with_interceptor(&sdk, resources.s3_path_style, meter.clone()),
        resources.clone(),
        harness::fixture_settings(),
        &with_chains,
    )?;
    let observer = Deployment::with_workflows(
        Clients::new(&sdk, resources.s3_path_style),
        resources.clone(),
        harness::fixture_settings(),
        &with_chains,
    )?;
    let api = harness::api_router(&metered)?;
    let observer_api = harness::api_router(&observer)?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "# AWS requests per step on moto at {endpoint} (table, queues, bucket `{prefix}-*`)\n\n\
         Load average (1, 5, 15 min): {}. Each example runs once unmetered first (a warm \
         container), then once metered.\n",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rig = Rig {
        metered: &metered,
        api: &api,
        observer: &observer_api,
        meter: &meter,
    };
    let all = run_all("", &rig).await?;
    print_summary(&all);
    // The same examples with every model call claimed before it starts, as hosted calls are.
    let hosted = harness::claiming(Deployment::with_clients(
        Clients::with_interceptor(&sdk, resources.s3_path_style, meter.clone()),
        resources.clone(),
        harness::fixture_settings(),
    )?);
    let hosted_api = harness::api_router(&hosted)?;
    let hosted_rig = Rig {
        metered: &hosted,
        api: &hosted_api,
        ..rig
    };
    let as_hosted = run_all(" (claimed calls)", &hosted_rig).await?;
    println!(
        "\n# The same examples with every model call claimed before it starts (what they \
         write with hosted models instead of the built-in ones)\n"
    );
    print_summary(&as_hosted);
    // A busy deployment: several runs per worker invocation (asset-pipeline is left out: each
    // run waits for a person's approval).
    let mut batched = Vec::new();
    for name in EXAMPLES.iter().filter(|n| **n != "asset-pipeline") {
        batched.push(run_batch(name, &rig).await?);
    }
    println!(
        "\n# {RUNS_AT_ONCE} runs of each example started together (built-in models; the worker \
         takes up to 10 wake-ups per invocation; asset-pipeline left out: it waits for approvals)\n"
    );
    print_summary(&batched);
    let mut chains = Vec::new();
    for (name, n) in CHAINS {
        let f = run_once(name, serde_json::json!({"x": "a"}), &rig).await?;
        if f.status != "succeeded" || f.steps != n {
            bail!("{name} ended {} after {} steps", f.status, f.steps);
        }
        chains.push(f);
    }
    println!(
        "\n# Chains of built-in steps (`local/echo`), one run each: the per-run and the per-step \
         part of the bill\n"
    );
    print_summary(&chains);
    print_fixed_and_per_step(&chains);
    println!("\n## Breakdown (whole run, all handlers; built-in models)");
    for f in all.iter().chain(&chains) {
        print_breakdown(f);
    }
    let empty: BTreeMap<&str, u64> = all.iter().map(|f| (f.name, f.empty_receives())).collect();
    println!(
        "\nEmpty receives (the poller's, standing in for the event source mapping's long polls; not \
         counted per step): {empty:?}"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("aws bench: run it with `cargo bench -p switchyard-lambdas --bench aws` (make bench-aws)");
        return Ok(());
    }
    let endpoint = std::env::var("SWITCHYARD_TEST_AWS_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .ok_or_else(|| {
            anyhow!("SWITCHYARD_TEST_AWS_ENDPOINT is not set: start moto (`infra/moto.sh start`) or run `make bench-aws`")
        })?;
    bench(endpoint.trim()).await
}
