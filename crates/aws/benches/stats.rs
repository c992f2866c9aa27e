//! `make bench-stats`: how long `switchyard stats` / `GET /v1/stats` takes once a deployment
//! has history — 10,000 and 100,000 runs on the embedded backend (SQLite), 10,000 on the
//! DynamoDB emulator (moto, `SWITCHYARD_TEST_AWS_ENDPOINT`) — and what the aggregates cost to
//! write on DynamoDB per run. Figures, not assertions (issue 22: the goal is ≤ 1 s).
//!
//! Seeding is by **direct store writes**, not by driving the engine: each run is a
//! `create_run` (which adds `started` to its hour bucket) and an `end_run` carrying the buckets
//! `RunFacts::buckets` makes of a realistic final state — the same two writes, with the same
//! buckets, the engine makes for a run. The runs are spread over the last 24 hours, one tenant,
//! three workflows of four steps (two models and two prompt versions on the model steps, a
//! judge on the validate step), about 90 % succeeded, 7 % failed (several error classes), 3 %
//! cancelled, latencies from 30 ms to 60 s. Timed: `switchyard_engine::stats::read` (what
//! `Engine::stats` runs: the window's buckets and one page of in-flight headers) for
//! `since=24h`, `since=24h&workflow=…` and `since=24h&by=model`, the median of 5 after a
//! warm-up.
//!
//! On the emulator every SDK call goes through `switchyard_aws::metrics::Meter`, which sizes
//! items by DynamoDB's billing rules: the write request units of the stats items per run are
//! printed (what the aggregates add to a run's writes).
//!
//! Usage: `cargo bench -p switchyard-aws --bench stats` (with the endpoint set for the
//! emulator part; without it, that part is skipped saying so). Run by `cargo test
//! --all-targets` (no `--bench` argument), it only says how to run it.

use anyhow::{Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_aws::metrics::Meter;
use switchyard_aws::{create_table, emulator_config, DynamoStore};
use switchyard_core::error::ErrorClass;
use switchyard_core::ports::{ListScope, StateStore};
use switchyard_core::state::{
    HistoryEvent, RunHeader, RunStatus, StepStatus, Usage, ValueRef, WorkflowPin,
};
use switchyard_core::stats::{RunFacts, StepFacts, HOUR_MS};
use switchyard_core::{Millis, StoreError};
use switchyard_engine::stats::{read, StatsQuery};

const TENANT: &str = "acme";
const WORKFLOWS: [&str; 3] = ["support-triage", "product-copy", "knowledge-answer"];
/// Writes in flight while seeding SQLite, and moto: one at a time there, because moto's
/// server races under concurrent transactions on one table (it answers 500 "dictionary
/// changed size during iteration" until it is restarted), which DynamoDB does not.
const SEED_CONCURRENCY: usize = 32;
const EMULATOR_CONCURRENCY: usize = 1;

/// A small deterministic generator (xorshift), so every run of the bench seeds the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Roughly log-uniform from `lo` to `hi` ms.
    fn latency(&mut self, lo: f64, hi: f64) -> u64 {
        let t = (self.below(10_000) as f64) / 10_000.0;
        (lo * (hi / lo).powf(t)) as u64
    }
}

/// Run `i` of the seed: its header (as created) and its final facts.
fn synth(i: u64, now: Millis) -> (RunHeader, RunFacts) {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15 ^ (i.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1));
    let workflow = WORKFLOWS[(r.below(3)) as usize];
    let created_at = now - 1 - r.below(24 * HOUR_MS - 1);
    let roll = r.below(100);
    let status = match roll {
        0..=89 => RunStatus::Succeeded,
        90..=96 => RunStatus::Failed,
        _ => RunStatus::Cancelled,
    };
    let class = [
        ErrorClass::Timeout,
        ErrorClass::Transient,
        ErrorClass::Malformed,
        ErrorClass::Rejected,
    ][r.below(4) as usize];
    let step = |r: &mut Rng, name: &str, kind: &str, ord: u32| {
        let mut s = StepFacts::bare(name, kind, StepStatus::Succeeded);
        s.ord = ord;
        s.latency_ms = r.latency(30.0, 8_000.0);
        s.attempts = 1 + u32::from(r.below(10) == 0);
        s
    };
    let mut classify = step(&mut r, "classify", "model", 0);
    classify.model =
        Some(["openai/gpt-4o-mini", "anthropic/claude-haiku"][r.below(2) as usize].into());
    classify.prompt_version = Some("classify@1".into());
    classify.usage = Usage::new(200 + r.below(300), 20 + r.below(30));
    classify.cost_usd = 0.0001 + r.below(100) as f64 * 1e-6;
    let mut draft = step(&mut r, "draft", "model", 1);
    draft.model = Some(["openai/gpt-4o", "anthropic/claude-sonnet"][r.below(2) as usize].into());
    draft.prompt_version = Some(["draft@3", "draft@4"][r.below(2) as usize].into());
    draft.usage = Usage::new(800 + r.below(1200), 300 + r.below(500));
    draft.cost_usd = 0.002 + r.below(1000) as f64 * 1e-5;
    draft.fallback_used = r.below(50) == 0;
    let mut check = step(&mut r, "check", "validate", 2);
    check.model = Some("openai/gpt-4o-mini".into());
    check.repairs = u32::from(r.below(8) == 0);
    let score = 0.5 + r.below(50) as f64 / 100.0;
    check.judge_scores = vec![score];
    draft.validations = 1;
    draft.validation_failures = check.repairs;
    draft.judge_scores = vec![score];
    let mut shape = step(&mut r, "shape", "transform", 3);
    shape.latency_ms = r.below(3);
    let mut steps = vec![classify, draft, check, shape];
    if status != RunStatus::Succeeded {
        // It ended at a random step: that one failed (or was left), the rest never ran.
        let at = r.below(4) as usize;
        steps.truncate(at + 1);
        if let Some(last) = steps.last_mut() {
            if status == RunStatus::Failed {
                last.status = StepStatus::Failed;
                last.error_class = Some(class);
            }
        }
    }
    let ended_at = created_at + steps.iter().map(|s| s.latency_ms).sum::<u64>() + 40;
    let header = RunHeader {
        run_id: format!("run-{i:08}"),
        tenant: TENANT.into(),
        workflow: WorkflowPin {
            name: workflow.into(),
            version: "1".into(),
            hash: "ab".repeat(32),
        },
        status: RunStatus::Pending,
        input: ValueRef::Inline {
            value: serde_json::json!({"n": i}),
        },
        output: None,
        error: None,
        created_at,
        updated_at: created_at,
        ended_at: None,
        deadline_at: None,
        wait: None,
        cancel_requested: false,
        lease: None,
        callback_url: None,
        metadata: serde_json::Value::Null,
        traceparent: None,
        rerun_of: None,
        reruns: Vec::new(),
        version: 1,
    };
    let facts = RunFacts {
        tenant: TENANT.into(),
        workflow: workflow.into(),
        status,
        error_class: (status == RunStatus::Failed).then_some(class),
        created_at,
        ended_at: Some(ended_at),
        cost_usd: steps.iter().map(|s| s.cost_usd).sum(),
        steps,
    };
    (header, facts)
}

/// Sends a seeding write again while the store is unavailable (moto answers 500 now and then
/// under concurrent transactions); `Conflict` on a second try means the first one landed.
async fn landed<T>(
    mut write: impl FnMut() -> futures::future::BoxFuture<'static, Result<T, StoreError>>,
) -> Result<()> {
    for attempt in 1..=8 {
        match write().await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict(_)) if attempt > 1 => return Ok(()),
            Err(StoreError::Unavailable(_)) if attempt < 8 => {
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Creates and ends runs `from..to` on `store`, `concurrency` at a time.
async fn seed(
    store: Arc<dyn StateStore>,
    from: u64,
    to: u64,
    now: Millis,
    concurrency: usize,
) -> Result<()> {
    stream::iter(from..to)
        .map(|i| {
            let store = store.clone();
            async move {
                let (h, facts) = synth(i, now);
                let mut ended = h.clone();
                ended.status = facts.status;
                ended.ended_at = facts.ended_at;
                ended.updated_at = facts.ended_at.unwrap_or(h.created_at);
                let ev = HistoryEvent::run(
                    ended.updated_at,
                    switchyard_core::state::EventKind::RunSucceeded,
                    serde_json::Value::Null,
                );
                let buckets = facts.buckets();
                let (s, header) = (store.clone(), h.clone());
                landed(move || {
                    let (s, header) = (s.clone(), header.clone());
                    Box::pin(async move { s.create_run(&header, &[]).await })
                })
                .await?;
                landed(move || {
                    let (s, ended, ev, buckets) =
                        (store.clone(), ended.clone(), ev.clone(), buckets.clone());
                    Box::pin(async move { s.end_run(&ended, &[ev], &buckets, &[]).await })
                })
                .await
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await
}

/// The median of 5 timed reads after one warm-up, and the last answer's run count.
async fn time_reads(
    store: &dyn StateStore,
    q: &StatsQuery,
    now: Millis,
) -> Result<(Duration, u64, usize)> {
    let warm = read(store, q, now).await?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let s = read(store, q, now).await?;
        times.push(t.elapsed());
        anyhow::ensure!(s.runs == warm.runs, "the figures moved between reads");
    }
    times.sort();
    Ok((times[2], warm.runs, warm.variants.len()))
}

fn queries() -> Result<Vec<(&'static str, StatsQuery)>> {
    let scope = || ListScope::Tenant(TENANT.into());
    Ok(vec![
        ("since=24h", StatsQuery::parse(scope(), None, Some("24h"))?),
        (
            "since=24h&workflow=product-copy",
            StatsQuery::parse(scope(), Some("product-copy"), Some("24h"))?,
        ),
        (
            "since=24h&by=model",
            StatsQuery::parse(scope(), None, Some("24h"))?.with_by(Some("model"))?,
        ),
    ])
}

async fn report(backend: &str, store: &dyn StateStore, runs: u64, now: Millis) -> Result<()> {
    for (what, q) in queries()? {
        let (median, counted, variants) = time_reads(store, &q, now).await?;
        let extra = if variants > 0 {
            format!(", {variants} variants")
        } else {
            String::new()
        };
        println!(
            "  {backend:<9} {runs:>7} runs  stats?{what:<33} {:>8.1} ms  ({counted} runs counted{extra})",
            median.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

async fn embedded(now: Millis) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let backend = switchyard_local::Backend::open(dir.path())?;
    let store: Arc<dyn StateStore> = Arc::new(backend.store());
    let mut seeded = 0;
    for target in [10_000u64, 100_000] {
        let t = Instant::now();
        seed(store.clone(), seeded, target, now, SEED_CONCURRENCY).await?;
        eprintln!(
            "  (seeded runs {seeded}..{target} on SQLite in {:.1} s)",
            t.elapsed().as_secs_f64()
        );
        seeded = target;
        report("embedded", store.as_ref(), target, now).await?;
    }
    Ok(())
}

async fn emulator(endpoint: &str, now: Millis, runs: u64) -> Result<()> {
    let sdk = emulator_config(endpoint).await;
    let meter = Meter::for_table();
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .interceptor(meter.clone())
            .build(),
    );
    let table = format!(
        "sy-bench-stats-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    create_table(&client, &table).await?;
    let store: Arc<dyn StateStore> = Arc::new(DynamoStore::new(client, &table));
    let t = Instant::now();
    seed(store.clone(), 0, runs, now, EMULATOR_CONCURRENCY).await?;
    eprintln!(
        "  (seeded {runs} runs on the emulator in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let usage = meter.take();
    let stats_wru: f64 = usage
        .write_units
        .iter()
        .filter(|((_, kind), _)| kind == "stats bucket")
        .map(|(_, u)| u)
        .sum();
    let stats_items: u64 = usage
        .writes
        .iter()
        .filter(|((_, kind), _)| kind == "stats bucket")
        .map(|(_, n)| n)
        .sum();
    let all_wru = usage.total_write_units();
    println!(
        "  DynamoDB write request units per run (meter, item sizes by the billing rules): \
         stats items {:.2} of {:.2} for the run's two writes; {:.2} stats items per run{}",
        stats_wru / runs as f64,
        all_wru / runs as f64,
        stats_items as f64 / runs as f64,
        if usage.unparsed_updates > 0 {
            format!(
                " ({} update clauses the meter could not size)",
                usage.unparsed_updates
            )
        } else {
            String::new()
        }
    );
    report("emulator", store.as_ref(), runs, now).await?;
    let reads = meter.take();
    println!(
        "  DynamoDB read request units per stats answer on the emulator: {:.1}",
        reads.total_read_units() / (queries()?.len() * 6) as f64
    );
    // Where an answer's time goes: the buckets' Query, and the page of open runs (a query of
    // the `active` index, which moto answers by scanning the whole table).
    let q = switchyard_core::stats::BucketQuery {
        scope: ListScope::Tenant(TENANT.into()),
        workflow: None,
        from_hour: switchyard_core::stats::hour_of(now - 24 * HOUR_MS),
        to_hour: switchyard_core::stats::hour_of(now),
    };
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    let (mut b, mut a) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        store.stats_buckets(&q).await?;
        b.push(t.elapsed());
        let t = Instant::now();
        store.active_runs(0, now, None, 100).await?;
        a.push(t.elapsed());
    }
    println!(
        "  emulator  of which: buckets Query {:.1} ms, open-runs page (active index) {:.1} ms",
        median(b),
        median(a)
    );
    Ok(())
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "bench-stats: run `make bench-stats` (cargo bench -p switchyard-aws --bench stats)"
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    rt.block_on(async {
        // Mid-hour, so the window's first hour is a partial one, as in life.
        let now = {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as Millis;
            t - t % HOUR_MS + HOUR_MS / 2
        };
        println!("stats over a day of runs: median of 5 reads after a warm-up");
        if std::env::var("SWITCHYARD_BENCH_SKIP_EMBEDDED").is_err() {
            embedded(now).await?;
        }
        match std::env::var("SWITCHYARD_TEST_AWS_ENDPOINT") {
            Ok(e) if !e.trim().is_empty() => {
                // Seeding is one write at a time on moto (see EMULATOR_CONCURRENCY), which
                // takes long at 10,000 runs; SWITCHYARD_BENCH_EMULATOR_RUNS picks fewer.
                let runs = std::env::var("SWITCHYARD_BENCH_EMULATOR_RUNS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(10_000);
                emulator(&e, now, runs).await?
            }
            _ => println!("  emulator: skipped (SWITCHYARD_TEST_AWS_ENDPOINT is not set)"),
        }
        Ok(())
    })
}
