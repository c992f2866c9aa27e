//! `make bench-api`: load figures for `switchyard dev` over HTTP, measured from outside the
//! process (release binary, embedded backend, 8 workers).
//!
//! For each durability setting (`normal`, then `full`; pass either to run one) a fresh `dev`
//! is spawned on a temporary data dir and two workflows:
//!
//! 1. `POST /v1/runs` of a one-step `local/echo` workflow from 32 concurrent clients, each on
//!    its own keep-alive HTTP/1.1 connection: accepted starts/s and p50/p99 latency over a
//!    fixed number of requests after a warm-up. The worker pool runs those runs meanwhile, as
//!    it would in production; the backlog is drained before the next figure.
//! 2. Completed runs/s of a 5-step chain of instant `local/echo` steps: the 32 clients start
//!    the runs as fast as they can, then `GET /v1/runs?status=succeeded&workflow=...` is polled
//!    until all have succeeded. The end time is the newest `updated_at` of those runs (the
//!    server's clock, the same machine's), so the poll interval does not inflate the figure.
//! 3. The server's peak RSS (`VmHWM` of `/proc/<pid>/status`) after both.
//!
//! Figures, not assertions: the targets are printed next to them. The client runs on the same
//! machine and takes CPU from the server; its CPU share is printed with the server's.
//!
//! Usage: `cargo bench -p switchyard-cli --bench api -- [path/to/switchyard] [normal|full]`;
//! without a path the binary is `$CARGO_TARGET_DIR/release/switchyard` (else `target/`).

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const KEY: &str = "bench-key-0123456789";
const CLIENTS: usize = 32;
const WORKERS: usize = 8;
/// How many requests each figure takes.
#[derive(Clone, Copy)]
struct Sizes {
    warmup_starts: usize,
    measured_starts: usize,
    chain_runs: usize,
}

/// `cargo bench` / `make bench-api`.
const MEASURE: Sizes = Sizes {
    warmup_starts: 1000,
    measured_starts: 5000,
    chain_runs: 500,
};

/// `cargo test --all-targets` runs this file without `--bench`: a smoke run of every code
/// path on the debug binary, so the benchmark cannot rot, with figures that mean nothing.
const SMOKE: Sizes = Sizes {
    warmup_starts: 40,
    measured_starts: 100,
    chain_runs: 20,
};
const ECHO: &str = "bench-echo";
const CHAIN: &str = "bench-chain5";

const ECHO_YAML: &str = r#"# One instant step: the cheapest run there is.
name: bench-echo
version: "1"
output: {echo: "${steps.a.output.json}"}
steps:
  - id: a
    model: local/echo
    input: {n: 1, text: "${input.text}"}
"#;

const CHAIN_YAML: &str = r#"# Five instant steps, each reading the previous one.
name: bench-chain5
version: "1"
output: {last: "${steps.e.output.json}"}
steps:
  - id: a
    model: local/echo
    input: {n: 1, text: "${input.text}"}
  - id: b
    model: local/echo
    input: {n: 2, prev: "${steps.a.output.json.n}"}
  - id: c
    model: local/echo
    input: {n: 3, prev: "${steps.b.output.json.n}"}
  - id: d
    model: local/echo
    input: {n: 4, prev: "${steps.c.output.json.n}"}
  - id: e
    model: local/echo
    input: {n: 5, prev: "${steps.d.output.json.n}"}
"#;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The binary: the first argument that is not a flag or a durability name, else the release
/// build under `$CARGO_TARGET_DIR` (or `target/`). A relative path is tried from the current
/// directory, then from the workspace root (`cargo bench` runs benches in the crate's dir).
fn binary(arg: Option<&str>) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match arg {
        Some(a) => vec![PathBuf::from(a), root().join(a)],
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"));
            let bin = target.join("release/switchyard");
            vec![bin.clone(), root().join(bin)]
        }
    };
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "no switchyard binary at {} (run `cargo build --release -p switchyard-cli`)",
                candidates[0].display()
            )
        })
}

/// A running `switchyard dev`.
struct Dev {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
    _workflows: tempfile::TempDir,
}

impl Dev {
    fn spawn(bin: &Path, durability: &str) -> Result<Dev> {
        let data = tempfile::tempdir()?;
        let workflows = tempfile::tempdir()?;
        std::fs::write(workflows.path().join("echo.yaml"), ECHO_YAML)?;
        std::fs::write(workflows.path().join("chain5.yaml"), CHAIN_YAML)?;
        let mut child = Command::new(bin)
            .args(["dev", "--addr", "127.0.0.1:0", "--workers"])
            .arg(WORKERS.to_string())
            .arg("--data-dir")
            .arg(data.path())
            .arg("--workflows")
            .arg(workflows.path())
            .env("SWITCHYARD_API_KEYS", format!("{KEY}:bench"))
            .env("SWITCHYARD_LOG", "error")
            .env("SWITCHYARD_DURABILITY", durability)
            .env_remove("SWITCHYARD_PUBLIC_URL")
            .env_remove("SWITCHYARD_CALLBACK_SECRET")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let stdout = child.stdout.take().context("dev's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the banner, then keeps draining stdout so dev never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines.by_ref() {}
        });
        let mut dev = Dev {
            child,
            url: String::new(),
            _data: data,
            _workflows: workflows,
        };
        let first = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(Ok(line))) => line,
            Ok(_) => bail!("switchyard dev exited before its banner"),
            Err(_) => bail!("switchyard dev printed no banner in 30 s"),
        };
        dev.url = first
            .strip_prefix("switchyard dev: serving ")
            .with_context(|| format!("unexpected banner: {first}"))?
            .trim()
            .to_string();
        Ok(dev)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait (SIGKILL after 30 s).
    fn stop(&mut self) -> Result<Option<i32>> {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("kill -TERM")?;
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s.code());
            }
            if t0.elapsed() > Duration::from_secs(30) {
                eprintln!("switchyard dev did not stop in 30 s after SIGTERM; killing it");
                self.child.kill()?;
                self.child.wait()?;
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `VmHWM` and `VmRSS` of a process, in KiB.
fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} in /proc/{pid}/status"))?;
        line.split_whitespace()
            .nth(1)
            .context("a value")?
            .parse()
            .context("a number")
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// User + system CPU seconds of a process so far (clock ticks assumed 100 Hz, as on Linux).
fn cpu_seconds(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields.get(i).context("/proc stat field")?.parse::<f64>()?)
    };
    // `rest` starts at field 3 (state), so field N is index N - 3.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// CPU used by the server and by this process over a phase, as a share of one core.
struct Cpu {
    server: String,
    t0: Instant,
    server0: f64,
    client0: f64,
}

impl Cpu {
    fn start(pid: u32) -> Result<Cpu> {
        let server = pid.to_string();
        Ok(Cpu {
            server0: cpu_seconds(&server)?,
            client0: cpu_seconds("self")?,
            server,
            t0: Instant::now(),
        })
    }

    fn report(&self) -> Result<String> {
        let wall = self.t0.elapsed().as_secs_f64();
        let s = (cpu_seconds(&self.server)? - self.server0) / wall * 100.0;
        let c = (cpu_seconds("self")? - self.client0) / wall * 100.0;
        Ok(format!(
            "cpu: server {s:.0}%, bench client {c:.0}% of one core ({} cores)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ))
    }
}

/// One client per connection: a pool of at most one idle keep-alive HTTP/1.1 connection.
fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?)
}

#[derive(Default)]
struct Outcome {
    latencies: Vec<Duration>,
    accepted: usize,
    /// Status code → count, for everything that was not a 202.
    other: std::collections::BTreeMap<u16, usize>,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
    /// When the last accepted start answered, from the phase's start.
    last_accept: Duration,
}

/// `n` starts of `workflow` from `CLIENTS` concurrent clients, as fast as they go.
async fn starts(base: &str, workflow: &str, n: usize, tag: &str) -> Result<Outcome> {
    let next = Arc::new(AtomicUsize::new(0));
    let clients: Vec<reqwest::Client> = (0..CLIENTS).map(|_| client()).collect::<Result<_>>()?;
    // Open every connection before the clock starts.
    for c in &clients {
        c.get(format!("{base}/healthz")).send().await?;
    }
    let url = format!("{base}/v1/runs");
    let t0 = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let (next, url) = (next.clone(), url.clone());
            let (workflow, tag) = (workflow.to_string(), tag.to_string());
            tokio::spawn(async move {
                let mut out = Outcome::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let body =
                        json!({"workflow": workflow, "input": {"text": format!("{tag}-{i}")}});
                    let sent = Instant::now();
                    let resp = c
                        .post(&url)
                        .bearer_auth(KEY)
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await;
                    match resp {
                        Ok(r) => {
                            let code = r.status().as_u16();
                            let text = r.bytes().await;
                            out.latencies.push(sent.elapsed());
                            if code == 202 && text.is_ok() {
                                out.accepted += 1;
                                out.last_accept = t0.elapsed();
                            } else {
                                *out.other.entry(code).or_default() += 1;
                                if out.first_error.is_none() {
                                    out.first_error = Some(format!(
                                        "{code}: {}",
                                        text.map(|b| String::from_utf8_lossy(&b).into_owned())
                                            .unwrap_or_default()
                                    ));
                                }
                            }
                        }
                        Err(e) => {
                            out.errors += 1;
                            if out.first_error.is_none() {
                                out.first_error = Some(e.to_string());
                            }
                        }
                    }
                }
                out
            })
        })
        .collect();
    let mut all = Outcome::default();
    for t in tasks {
        let o = t.await?;
        all.latencies.extend(o.latencies);
        all.accepted += o.accepted;
        for (k, v) in o.other {
            *all.other.entry(k).or_default() += v;
        }
        all.errors += o.errors;
        all.first_error = all.first_error.or(o.first_error);
        all.last_accept = all.last_accept.max(o.last_accept);
    }
    all.elapsed = t0.elapsed();
    all.latencies.sort();
    Ok(all)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn problems(o: &Outcome) -> String {
    if o.other.is_empty() && o.errors == 0 {
        return "no errors".into();
    }
    let codes: Vec<String> = o.other.iter().map(|(k, v)| format!("{v}x{k}")).collect();
    format!(
        "NOT ACCEPTED: {} {} transport errors; first: {}",
        codes.join(" "),
        o.errors,
        o.first_error.as_deref().unwrap_or("-")
    )
}

async fn get_json(c: &reqwest::Client, url: &str) -> Result<Value> {
    let r = c.get(url).bearer_auth(KEY).send().await?;
    let code = r.status();
    let body = r.text().await?;
    if !code.is_success() {
        bail!("GET {url}: {code}: {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// How many runs of `workflow` have `status` (one cheap request: the store counts the rest).
async fn count(c: &reqwest::Client, base: &str, workflow: &str, status: &str) -> Result<u64> {
    let doc = get_json(
        c,
        &format!("{base}/v1/runs?limit=1&status={status}&workflow={workflow}"),
    )
    .await?;
    let page = doc["runs"].as_array().map_or(0, Vec::len) as u64;
    match doc.get("remaining").and_then(Value::as_u64) {
        Some(rest) => Ok(page + rest),
        None if doc.get("next_cursor").is_none() => Ok(page),
        None => Ok(all_runs(c, base, workflow, status).await?.len() as u64),
    }
}

/// Every run of `workflow` with `status`, paging through the listing.
async fn all_runs(
    c: &reqwest::Client,
    base: &str,
    workflow: &str,
    status: &str,
) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/runs?limit=1000&status={status}&workflow={workflow}");
        if let Some(c) = &cursor {
            url.push_str("&cursor=");
            url.push_str(c);
        }
        let doc = get_json(c, &url).await?;
        if let Some(runs) = doc["runs"].as_array() {
            out.extend(runs.iter().cloned());
        }
        match doc.get("next_cursor").and_then(Value::as_str) {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(out),
        }
    }
}

/// Polls until `want` runs of `workflow` have succeeded; fails on a failed run or a timeout.
async fn until_succeeded(
    c: &reqwest::Client,
    base: &str,
    workflow: &str,
    want: u64,
    timeout: Duration,
) -> Result<Instant> {
    let t0 = Instant::now();
    loop {
        let done = count(c, base, workflow, "succeeded").await?;
        if done >= want {
            return Ok(Instant::now());
        }
        let failed = count(c, base, workflow, "failed").await?;
        if failed > 0 {
            bail!("{failed} runs of {workflow} failed ({done}/{want} succeeded)");
        }
        if t0.elapsed() > timeout {
            bail!("only {done}/{want} runs of {workflow} succeeded after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn epoch_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn bench(bin: &Path, durability: &str, sizes: Sizes) -> Result<()> {
    let Sizes {
        warmup_starts,
        measured_starts,
        chain_runs,
    } = sizes;
    println!("== switchyard dev, SWITCHYARD_DURABILITY={durability}, {WORKERS} workers, {CLIENTS} clients");
    let mut dev = Dev::spawn(bin, durability)?;
    let base = dev.url.clone();
    let c = client()?;

    // Warm-up: connections, SQLite pages, the allocator.
    let warm = starts(&base, ECHO, warmup_starts, "warm").await?;
    if warm.accepted != warmup_starts {
        println!("  warm-up: {}", problems(&warm));
    }
    until_succeeded(
        &c,
        &base,
        ECHO,
        warm.accepted as u64,
        Duration::from_secs(120),
    )
    .await?;

    // 1. Accepted starts/s and latency.
    let cpu = Cpu::start(dev.pid())?;
    let o = starts(&base, ECHO, measured_starts, "run").await?;
    let cpu_line = cpu.report()?;
    let rate = o.accepted as f64 / o.elapsed.as_secs_f64();
    let (p50, p99) = (
        percentile(&o.latencies, 0.50),
        percentile(&o.latencies, 0.99),
    );
    let max = o
        .latencies
        .last()
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    println!(
        "POST /v1/runs (one-step workflow), {} requests after {} warm-up: {rate:.0} accepted starts/s, p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.1} ms  (target >= 1000/s, p99 <= 20 ms)",
        measured_starts, warmup_starts
    );
    println!("  {}; {}", problems(&o), cpu_line);
    // Let the pool finish that backlog so it does not count against the next figure.
    let drain0 = Instant::now();
    let want = (warm.accepted + o.accepted) as u64;
    until_succeeded(&c, &base, ECHO, want, Duration::from_secs(300)).await?;
    println!(
        "  the pool finished those one-step runs {:.2} s after the last start",
        drain0.elapsed().as_secs_f64()
    );

    // 2. Completed 5-step runs/s.
    let cpu = Cpu::start(dev.pid())?;
    let wall0 = SystemTime::now();
    let t0 = Instant::now();
    let o = starts(&base, CHAIN, chain_runs, "chain").await?;
    if o.accepted != chain_runs {
        println!("  5-step starts: {}", problems(&o));
    }
    let seen = until_succeeded(
        &c,
        &base,
        CHAIN,
        o.accepted as u64,
        Duration::from_secs(300),
    )
    .await?;
    let cpu_line = cpu.report()?;
    let runs = all_runs(&c, &base, CHAIN, "succeeded").await?;
    let last_ms = runs
        .iter()
        .filter_map(|r| r["updated_at"].as_f64())
        .fold(f64::NAN, f64::max);
    let span_s = (last_ms - epoch_ms(wall0)) / 1000.0;
    let polled_s = (seen - t0).as_secs_f64();
    println!(
        "completed 5-step runs: {} in {span_s:.2} s from first start to last success = {:.0} runs/s ({:.0} steps/s)  (target >= 300/s)",
        runs.len(),
        runs.len() as f64 / span_s,
        5.0 * runs.len() as f64 / span_s,
    );
    println!(
        "  starts took {:.2} s ({:.0}/s, p50 {:.2} ms, p99 {:.2} ms); seen by polling at {polled_s:.2} s; {}",
        o.last_accept.as_secs_f64(),
        o.accepted as f64 / o.last_accept.as_secs_f64(),
        percentile(&o.latencies, 0.50),
        percentile(&o.latencies, 0.99),
        cpu_line
    );

    // 3. Peak RSS.
    let (hwm, rss) = memory_kib(dev.pid())?;
    println!(
        "server peak RSS (VmHWM): {:.1} MiB, current {:.1} MiB  (target <= 64 MiB)",
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    let code = dev.stop()?;
    println!("  SIGTERM: dev exited with {code:?}");
    Ok(())
}

fn main() -> Result<()> {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let durabilities: Vec<&str> = match args.iter().find(|a| *a == "normal" || *a == "full") {
        Some(d) => vec![d.as_str()],
        None if smoke => vec!["normal"],
        None => vec!["normal", "full"],
    };
    let (bin, sizes) = if smoke {
        println!("smoke run (cargo test, debug binary): the figures below are not measurements");
        (PathBuf::from(env!("CARGO_BIN_EXE_switchyard")), SMOKE)
    } else {
        let path = args
            .iter()
            .find(|a| *a != "normal" && *a != "full")
            .map(String::as_str);
        (binary(path)?, MEASURE)
    };
    println!("binary: {}", bin.display());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for d in durabilities {
        rt.block_on(bench(&bin, d, sizes))?;
    }
    Ok(())
}
