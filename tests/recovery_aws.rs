//! Bounded recovery under AWS faults, end to end on the emulator (moto at
//! `SWITCHYARD_TEST_AWS_ENDPOINT`; `make test` starts it and runs this file with
//! `--features aws`).
//!
//! A fault proxy (`switchyard_fakes::aws_faults::FaultProxy`) sits between
//! `switchyard dev --backend aws` and moto: while it is on, about 6 % of the DynamoDB, SQS and
//! S3 calls fail — a 500 before the call, the call made but its answer lost (connection closed
//! or 500), or the connection dropped before the call. Meanwhile the test starts runs of every
//! offline example (`workflows/*.yaml` with `events/inputs/NAME.json`), round-robin, each with
//! its own `Idempotency-Key` (retried with the same key while dev answers 5xx), approves
//! `asset-pipeline`'s gate whenever it waits, and SIGKILLs dev once after about half the runs
//! were started (runs executing, starts in flight), restarting it on the same resources (faults
//! off while it starts up; the starts cut off are retried against it with their keys). Then the
//! faults stop, and it checks:
//!
//! - every run ends `succeeded`, the last within `RECOVERY_BOUND_MS` + 60 s of work of the
//!   moment the faults stopped (`switchyard_core::recovery`; the test gives up at the bound +
//!   5 min, so a hang fails rather than blocks);
//! - one run per idempotency key: every answer for a key names the same run, a repeat of the
//!   request answers it again, and the tenant has exactly as many runs as keys;
//! - no step was started twice for one attempt (`step_started` history events, per step,
//!   attempt and model).
//!
//! It prints its figures at the end (`-- --nocapture` shows them), with the paths of dev's log
//! (marked with what the test did when) and of the fault log (each injected fault: time, kind,
//! operation). The default is 40 runs and one kill; for the longer check (500 runs, three
//! kills):
//!
//! ```sh
//! export SWITCHYARD_TEST_AWS_ENDPOINT=$(infra/moto.sh start)
//! SWITCHYARD_FAULT_RUNS=500 cargo test -p switchyard-cli --features aws --test recovery_aws -- --nocapture
//! infra/moto.sh stop
//! ```
//!
//! `SWITCHYARD_FAULT_SEED` picks the fault sequence (default fixed; the seed is printed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

use futures::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchyard_core::recovery::RECOVERY_BOUND_MS;
use switchyard_fakes::aws_faults::{FaultCounts, FaultProxy, FaultRates, ServiceCounts};
use tokio::sync::watch;

const KEY: &str = "sy_recovery_test_key_0123456789";
/// Runs by default (`make test`); `SWITCHYARD_FAULT_RUNS` overrides.
const DEFAULT_RUNS: usize = 40;
/// Kills of dev with the default run count, and with more (the long check).
const KILLS: usize = 1;
const LONG_KILLS: usize = 3;
/// The fraction of AWS calls faulted while faults are on, split evenly over the three kinds.
const FAULT_RATE: f64 = 0.06;
const DEFAULT_SEED: u64 = 0x5EED_F00D;
/// Faults stay on this long after the last run was started, so its work meets them too.
const FAULT_TAIL: Duration = Duration::from_secs(10);
/// What the runs' own work may take after the recovery bound.
const WORK_ALLOWANCE_MS: u64 = 60_000;
/// Past the bound, how long the test waits before it gives up on runs that have not ended.
const GIVE_UP_AFTER_BOUND: Duration = Duration::from_secs(300);
/// How often the test looks at the runs (never faster than every 500 ms).
const POLL: Duration = Duration::from_millis(1_000);
/// How long one start may be retried while dev answers 5xx or is unreachable.
const START_PATIENCE: Duration = Duration::from_secs(180);
/// Starts in flight at once (a 2-core CI machine runs moto and dev too).
const START_CONCURRENCY: usize = 4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn endpoint() -> String {
    match std::env::var("SWITCHYARD_TEST_AWS_ENDPOINT") {
        Ok(e) if !e.trim().is_empty() => e,
        _ => panic!(
            "SWITCHYARD_TEST_AWS_ENDPOINT is not set: this test needs the AWS emulator. \
             Run `infra/moto.sh start` and set it to the URL printed (`make test` does both)."
        ),
    }
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}=`{v}` is not a number"))
        })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The offline examples: `workflows/NAME.yaml` with a sample input `events/inputs/NAME.json`.
fn examples() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("workflows")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let input = root().join(format!("events/inputs/{name}.json"));
        if let Ok(text) = std::fs::read_to_string(&input) {
            out.push((name, serde_json::from_str(&text).unwrap()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 8,
        "expected the eight offline examples: {out:?}"
    );
    out
}

/// Variables of the caller's shell that would change what dev connects to or does: the
/// resource names (dev's own list) and these.
const CLEARED: [&str; 6] = [
    "SWITCHYARD_SECRET_ID",
    "SWITCHYARD_PUBLIC_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "SWITCHYARD_LOCAL_FAULTS",
];

/// `switchyard dev --backend aws` through the proxy; stdout is read for the banner, stderr
/// (dev's log) appended to `log`.
fn command(proxy: &str, prefix: &str, log: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(["dev", "--backend", "aws", "--addr", "127.0.0.1:0"])
        .args(["--workers", "4"])
        .arg("--workflows")
        .arg(root().join("workflows"));
    for v in switchyard_cli::dev_aws::RESOURCE_VARS
        .iter()
        .chain(&CLEARED)
    {
        cmd.env_remove(v);
    }
    let level = std::env::var("SWITCHYARD_LOG").unwrap_or_else(|_| "warn".into());
    cmd.env("AWS_ENDPOINT_URL", proxy)
        .env("SWITCHYARD_DEV_PREFIX", prefix)
        .env("SWITCHYARD_API_KEYS", format!("{KEY}:acme"))
        .env("SWITCHYARD_LOG", level)
        .env("NO_COLOR", "1");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cmd.stdout(Stdio::piped()).stderr(Stdio::from(log));
    cmd
}

/// The running dev process; killed (SIGKILL) when dropped, so a failing test leaves none.
struct Dev {
    child: Child,
    url: String,
}

impl Dev {
    /// Starts dev with the proxy's faults off, and returns once it serves (provisioning, which
    /// is idempotent, is done by then).
    async fn start(proxy: &FaultProxy, prefix: &str, log: &Path) -> Dev {
        proxy.set_enabled(false);
        mark(log, "faults off; starting dev");
        let mut child = command(&proxy.url(), prefix, log).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        // Read on a thread of its own, and keep draining so dev never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut dev = Dev {
            child,
            url: String::new(),
        };
        let first = tokio::time::timeout(Duration::from_secs(180), rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("dev printed no banner within 180 s; log: {}", log.display())
            })
            .unwrap_or_else(|| panic!("dev exited before its banner; log: {}", log.display()));
        dev.url = first
            .strip_prefix("switchyard dev: serving ")
            .unwrap_or_else(|| panic!("unexpected banner: {first}"))
            .to_string();
        let second = rx.recv().await.unwrap_or_default();
        assert!(
            second.contains(&format!("provisioned `{prefix}-*`")),
            "dev must say it provisioned: {second}"
        );
        dev
    }

    /// SIGKILL: no batch is finished, no lease released, no message given back.
    async fn kill(&mut self, log: &Path) {
        mark(log, &format!("SIGKILL dev (pid {})", self.child.id()));
        self.child.kill().unwrap();
        self.reap(Duration::from_secs(30)).await.unwrap();
    }

    /// SIGTERM, then waits (at most 60 s) for the exit.
    async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.reap(Duration::from_secs(60)).await
    }

    async fn reap(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if t0.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .unwrap()
}

async fn get(client: &Client, url: &str, path: &str) -> Result<Value, String> {
    let resp = client
        .get(format!("{url}{path}"))
        .bearer_auth(KEY)
        .send()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status != StatusCode::OK {
        return Err(format!("GET {path}: {status} {body}"));
    }
    Ok(body)
}

/// `get`, tried again (up to 5 times, 1 s apart) when it fails: a reading after the faults are
/// off may still meet a busy dev (hundreds of runs in flight) or a slow emulator.
async fn get_patiently(client: &Client, url: &str, path: &str) -> Value {
    let mut last = String::new();
    for _ in 0..5 {
        match get(client, url, path).await {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("{last} (5 tries)")
}

/// Every run of the tenant (paged), by id: the listing row.
async fn list_runs(
    client: &Client,
    url: &str,
    query: &str,
) -> Result<HashMap<String, Value>, String> {
    let mut out = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/runs?limit=1000{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = get(client, url, &path).await?;
        for r in page["runs"].as_array().cloned().unwrap_or_default() {
            out.insert(r["run_id"].as_str().unwrap_or_default().to_string(), r);
        }
        match page["next_cursor"].as_str() {
            Some(c) if !c.is_empty() => cursor = Some(c.to_string()),
            _ => return Ok(out),
        }
    }
}

/// What one start (one idempotency key) got.
struct Started {
    key: String,
    workflow: String,
    body: Value,
    run_id: String,
    /// Requests it took (1 when the first was accepted).
    tries: u32,
}

/// Starts a run on whichever dev is current, retrying with the same key while dev answers 5xx
/// or cannot be reached (it may be killed meanwhile); every run id answered for the key must be
/// the same.
async fn start_run(
    client: &Client,
    url: &watch::Receiver<String>,
    key: String,
    workflow: String,
    input: Value,
) -> Started {
    let body = json!({"workflow": workflow, "input": input});
    let t0 = Instant::now();
    let mut tries = 0;
    let mut answered: Option<String> = None;
    loop {
        tries += 1;
        let current = url.borrow().clone();
        let sent = client
            .post(format!("{current}/v1/runs"))
            .bearer_auth(KEY)
            .header("idempotency-key", &key)
            .json(&body)
            .send()
            .await;
        let why = match sent {
            Ok(resp) => {
                let status = resp.status();
                let doc: Value = resp.json().await.unwrap_or(Value::Null);
                if status == StatusCode::ACCEPTED || status == StatusCode::OK {
                    let id = doc["run_id"].as_str().unwrap().to_string();
                    if let Some(a) = &answered {
                        assert_eq!(a, &id, "key {key} answered two run ids");
                    }
                    return Started {
                        key,
                        workflow,
                        body,
                        run_id: id,
                        tries,
                    };
                }
                assert!(
                    status.is_server_error(),
                    "start with key {key} answered {status}: {doc}"
                );
                if let Some(id) = doc["run_id"].as_str() {
                    answered.get_or_insert_with(|| id.to_string());
                }
                format!("{status} {doc}")
            }
            Err(e) => e.to_string(),
        };
        assert!(
            t0.elapsed() < START_PATIENCE,
            "start with key {key} not accepted within {START_PATIENCE:?} ({tries} tries); last: {why}"
        );
        let backoff = 200u64 << tries.min(4);
        tokio::time::sleep(Duration::from_millis(backoff)).await;
    }
}

/// Approves every approval step that waits, for runs `waiting`. Errors (dev down, a 5xx, a
/// step decided meanwhile) are left for the next round.
async fn approve_waiting(client: &Client, url: &str) -> u64 {
    let Ok(waiting) = list_runs(client, url, "&status=waiting").await else {
        return 0;
    };
    let mut approved = 0;
    for run in waiting.keys() {
        let Ok(doc) = get(client, url, &format!("/v1/runs/{run}")).await else {
            continue;
        };
        let gates = doc["steps"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s["status"] == "waiting" && s["kind"] == "approval");
        for gate in gates {
            let step = gate["name"].as_str().unwrap_or_default();
            let resp = client
                .post(format!("{url}/v1/runs/{run}/approvals/{step}"))
                .bearer_auth(KEY)
                .json(&json!({"decision": "approve", "comment": "fault test"}))
                .send()
                .await;
            if resp.is_ok_and(|r| r.status().is_success()) {
                approved += 1;
            }
        }
    }
    approved
}

/// A background loop approving gates on whichever dev is current, until the test ends.
fn approver(url: watch::Receiver<String>, count: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = client();
        loop {
            let current = url.borrow().clone();
            let n = approve_waiting(&client, &current).await;
            count.fetch_add(n, Ordering::Relaxed);
            tokio::time::sleep(POLL).await;
        }
    })
}

/// (step, attempt, model) started more than once in one run's history.
fn double_starts(events: &Value) -> Vec<String> {
    let mut seen: BTreeMap<(String, u64, String), u32> = BTreeMap::new();
    for e in events["events"].as_array().cloned().unwrap_or_default() {
        if e["kind"] != "step_started" {
            continue;
        }
        let key = (
            e["step"].as_str().unwrap_or_default().to_string(),
            e["attempt"].as_u64().unwrap_or_default(),
            e["detail"]["model"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        *seen.entry(key).or_default() += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|((s, a, m), n)| format!("{s} attempt {a} ({m}) started {n} times"))
        .collect()
}

/// The figure block: the proxy's counters, then the test's own lines.
fn figures(runs: usize, seed: u64, c: &FaultCounts, lines: &[(&str, String)]) -> String {
    let join = |m: &BTreeMap<String, ServiceCounts>, only_faulted: bool| {
        m.iter()
            .filter(|(_, n)| !only_faulted || n.faults > 0)
            .map(|(s, n)| format!("{s} {}/{}", n.faults, n.requests))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = format!(
        "\n=== recovery_aws figures\n\
         runs                          {runs}\n\
         fault rate / seed             {:.1} % / {seed:#x}\n\
         AWS requests proxied          {} ({} forwarded, {} upstream errors)\n\
         faults injected               {} total: error_before {}, lost_answer {} ({} closed, {} 500), dropped_connection {}\n\
         faults/requests by service    {}\n\
         faulted operations            {}\n",
        FAULT_RATE * 100.0,
        c.requests,
        c.forwarded,
        c.upstream_errors,
        c.faults(),
        c.error_before,
        c.lost_answer,
        c.lost_answer_closed,
        c.lost_answer - c.lost_answer_closed,
        c.dropped_connection,
        join(&c.by_service, false),
        join(&c.by_operation, true),
    );
    for (k, v) in lines {
        out.push_str(&format!("{k:<30}{v}\n"));
    }
    out
}

/// A run document in one line: status, wait, end, and each step's status and attempts.
fn brief(doc: &Value) -> String {
    let steps = doc["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            format!(
                "{}={}x{}",
                s["name"].as_str().unwrap_or("?"),
                s["status"].as_str().unwrap_or("?"),
                s["attempts"]
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{} {} status={} waiting_for={} ended_at={} error={} steps: {steps}",
        doc["run_id"].as_str().unwrap_or("?"),
        doc["workflow"].as_str().unwrap_or("?"),
        doc["status"],
        doc["waiting_for"],
        doc["ended_at"],
        doc["error"],
    )
}

/// A history in one line: each event's kind, step and attempt.
fn brief_events(events: &Value) -> String {
    let all = events["events"].as_array().cloned().unwrap_or_default();
    let first = all.first().and_then(|e| e["at"].as_u64()).unwrap_or(0);
    all.iter()
        .map(|e| {
            let at = e["at"].as_u64().unwrap_or(first).saturating_sub(first) as f64 / 1000.0;
            let kind = e["kind"].as_str().unwrap_or("?");
            match e["step"].as_str() {
                Some(step) => format!("{kind}({step}#{})@{at:.1}s", e["attempt"]),
                None => format!("{kind}@{at:.1}s"),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A line in dev's log file, so the log shows what the test did when.
fn mark(log: &Path, what: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "=== recovery_aws at {} ms: {what}", now_ms());
    }
}

fn ended(status: Option<&str>) -> bool {
    matches!(status, Some("succeeded" | "failed" | "cancelled"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_run_recovers_from_aws_faults_and_a_killed_worker() {
    let upstream = endpoint();
    let runs: usize = env_number("SWITCHYARD_FAULT_RUNS").unwrap_or(DEFAULT_RUNS);
    assert!(runs > 0, "SWITCHYARD_FAULT_RUNS must be at least 1");
    let kills = if runs > DEFAULT_RUNS {
        LONG_KILLS
    } else {
        KILLS
    };
    let seed: u64 = env_number("SWITCHYARD_FAULT_SEED").unwrap_or(DEFAULT_SEED);
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let prefix = format!("sy-fault-{id}");
    let log = std::env::temp_dir().join(format!("switchyard-{prefix}.log"));
    let examples = examples();

    let proxy = FaultProxy::start(&upstream, FaultRates::even(FAULT_RATE), seed)
        .await
        .unwrap();
    let client = client();
    let mut dev = Dev::start(&proxy, &prefix, &log).await;
    proxy.set_enabled(true);
    mark(&log, "faults on");
    let (url_tx, url_rx) = watch::channel(dev.url.clone());
    let approvals = Arc::new(AtomicU64::new(0));
    let approving = approver(url_rx, approvals.clone());

    // Start the runs (a few at a time, in the background), and kill dev each time another
    // 1/(kills + 1) of them was accepted: runs are executing and starts are in flight.
    let jobs: Vec<(String, String, Value)> = (0..runs)
        .map(|i| {
            let (wf, input) = &examples[i % examples.len()];
            (format!("fault-{id}-{i}"), wf.clone(), input.clone())
        })
        .collect();
    let accepted = Arc::new(AtomicUsize::new(0));
    let t_start = Instant::now();
    let starting = {
        let (client, url, accepted) = (client.clone(), url_tx.subscribe(), accepted.clone());
        tokio::spawn(async move {
            futures::stream::iter(jobs)
                .map(|(key, wf, input)| {
                    let (client, url, accepted) = (client.clone(), url.clone(), accepted.clone());
                    async move {
                        let s = start_run(&client, &url, key, wf, input).await;
                        accepted.fetch_add(1, Ordering::SeqCst);
                        s
                    }
                })
                .buffer_unordered(START_CONCURRENCY)
                .collect::<Vec<Started>>()
                .await
        })
    };
    let mut restarts_s = Vec::new();
    let mut last_restart: Option<Instant> = None;
    let mut open_at_kill: Vec<Option<usize>> = Vec::new();
    for k in 1..=kills {
        let at = k * runs / (kills + 1);
        while accepted.load(Ordering::SeqCst) < at && !starting.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // How many runs had not ended (best effort: a listing under faults may fail).
        let open = list_runs(&client, &dev.url, "")
            .await
            .ok()
            .map(|l| l.values().filter(|r| !ended(r["status"].as_str())).count());
        open_at_kill.push(open);
        dev.kill(&log).await;
        let t = Instant::now();
        dev = Dev::start(&proxy, &prefix, &log).await;
        restarts_s.push(t.elapsed().as_secs_f64());
        last_restart = Some(Instant::now());
        proxy.set_enabled(true);
        mark(&log, "faults on");
        url_tx.send_replace(dev.url.clone());
    }
    let started = match starting.await {
        Ok(s) => s,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let starting_s = t_start.elapsed().as_secs_f64();
    tokio::time::sleep(FAULT_TAIL).await;

    // Faults off: from here on every run must end, within the bound plus its work.
    proxy.set_enabled(false);
    mark(&log, "faults off (T0)");
    let faulted = proxy.counts();
    let t0 = now_ms();
    let t0_instant = Instant::now();
    let give_up =
        Duration::from_millis(RECOVERY_BOUND_MS + WORK_ALLOWANCE_MS) + GIVE_UP_AFTER_BOUND;
    let ids: BTreeSet<String> = started.iter().map(|s| s.run_id.clone()).collect();
    let (listed, all_ended_s) = loop {
        let listed = list_runs(&client, &dev.url, "").await;
        if let Ok(l) = &listed {
            if ids
                .iter()
                .all(|r| ended(l.get(r).and_then(|row| row["status"].as_str())))
            {
                break (l.clone(), Some(t0_instant.elapsed().as_secs_f64()));
            }
        }
        if t0_instant.elapsed() > give_up {
            break (listed.unwrap_or_default(), None);
        }
        tokio::time::sleep(POLL).await;
    };
    approving.abort();

    // The documents and histories, with faults off.
    let docs: Vec<(String, Value, Value)> = futures::stream::iter(ids.iter().cloned())
        .map(|r| {
            let (client, url) = (client.clone(), dev.url.clone());
            async move {
                let doc = get_patiently(&client, &url, &format!("/v1/runs/{r}")).await;
                let events = get_patiently(&client, &url, &format!("/v1/runs/{r}/events")).await;
                (r, doc, events)
            }
        })
        .buffer_unordered(START_CONCURRENCY)
        .collect()
        .await;

    // One run per key: the same request again answers the same run, replayed.
    let mut key_problems = Vec::new();
    for s in &started {
        let mut answer = Err(String::new());
        for _ in 0..5 {
            answer = match client
                .post(format!("{}/v1/runs", dev.url))
                .bearer_auth(KEY)
                .header("idempotency-key", &s.key)
                .json(&s.body)
                .send()
                .await
            {
                Ok(resp) => {
                    let status = resp.status();
                    Ok((status, resp.json::<Value>().await.unwrap_or(Value::Null)))
                }
                Err(e) => Err(e.to_string()),
            };
            if answer.as_ref().is_ok_and(|(st, _)| !st.is_server_error()) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let (status, doc) = match answer {
            Ok(a) => a,
            Err(e) => panic!("repeat start with key {}: {e} (5 tries)", s.key),
        };
        if status != StatusCode::OK || doc["run_id"] != s.run_id.as_str() {
            key_problems.push(format!(
                "key {} ({}): first {}, repeat answered {status} {doc}",
                s.key, s.workflow, s.run_id
            ));
        }
    }
    let keys: BTreeSet<&str> = started.iter().map(|s| s.key.as_str()).collect();
    if ids.len() != keys.len() {
        key_problems.push(format!("{} keys named {} runs", keys.len(), ids.len()));
    }
    let extra_runs: Vec<&String> = listed.keys().filter(|r| !ids.contains(*r)).collect();
    if !extra_runs.is_empty() {
        key_problems.push(format!(
            "{} runs no key names (a start created two runs?): {extra_runs:?}",
            extra_runs.len()
        ));
    }

    let mut open = Vec::new();
    let mut failed = Vec::new();
    let mut doubles = Vec::new();
    let mut last_end = 0u64;
    let mut by_workflow: BTreeMap<String, [u32; 3]> = BTreeMap::new();
    for (r, doc, events) in &docs {
        let wf = doc["workflow"].as_str().unwrap_or_default().to_string();
        let tally = by_workflow.entry(wf.clone()).or_default();
        let status = doc["status"].as_str();
        if status == Some("succeeded") {
            tally[0] += 1;
        } else if ended(status) {
            tally[1] += 1;
            failed.push(format!(
                "{}\n    history: {}",
                brief(doc),
                brief_events(events)
            ));
        } else {
            tally[2] += 1;
            open.push(format!(
                "{}\n    history: {}",
                brief(doc),
                brief_events(events)
            ));
        }
        if let Some(at) = doc["ended_at"].as_u64().filter(|_| ended(status)) {
            last_end = last_end.max(at);
        }
        for d in double_starts(events) {
            doubles.push(format!("{r} ({wf}): {d}"));
        }
    }
    let recovery_ms = last_end.saturating_sub(t0);
    let allowed_ms = RECOVERY_BOUND_MS + WORK_ALLOWANCE_MS;
    let retried = started.iter().filter(|s| s.tries > 1).count();
    let max_tries = started.iter().map(|s| s.tries).max().unwrap_or(0);
    mark(&log, "SIGTERM dev");
    let exit = dev.terminate().await;
    let after = proxy.counts();
    let fault_log = std::env::temp_dir().join(format!("switchyard-{prefix}-faults.jsonl"));
    let lines: String = proxy
        .fault_log()
        .iter()
        .map(|f| serde_json::to_string(f).unwrap() + "\n")
        .collect();
    std::fs::write(&fault_log, lines).unwrap();
    let secs = |ms: u64| ms as f64 / 1000.0;
    let report = [
        (
            "workflows (ok/failed/open)",
            by_workflow
                .iter()
                .map(|(w, [ok, bad, open])| format!("{w} {ok}/{bad}/{open}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "kills (SIGKILL + restart)",
            format!(
                "{kills} (runs open at each kill: {})",
                open_at_kill
                    .iter()
                    .map(|o| o.map_or("?".to_string(), |n| n.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        (
            "starting took",
            format!(
                "{starting_s:.1} s (dev restarts: {restarts_s:.1?} s; last restart {:.1} s before faults off)",
                last_restart.map_or(0.0, |t| t.elapsed().as_secs_f64() - t0_instant.elapsed().as_secs_f64())
            ),
        ),
        ("starts retried", format!("{retried} (at most {max_tries} requests for one key)")),
        ("approvals sent", approvals.load(Ordering::Relaxed).to_string()),
        ("AWS requests after faults off", (after.requests - faulted.requests).to_string()),
        (
            "faults-off to last run ended",
            match all_ended_s {
                Some(seen) => format!(
                    "{:.1} s (allowed: bound {:.0} s + {:.0} s work; all seen ended after {seen:.1} s)",
                    secs(recovery_ms),
                    secs(RECOVERY_BOUND_MS),
                    secs(WORK_ALLOWANCE_MS),
                ),
                None => format!("never: {} runs still open after {give_up:?}", open.len()),
            },
        ),
        ("runs failed", failed.len().to_string()),
        ("runs not ended", open.len().to_string()),
        ("steps started twice", doubles.len().to_string()),
        ("idempotency problems", key_problems.len().to_string()),
        ("dev exit after SIGTERM", format!("{exit:?}")),
        ("dev log", log.display().to_string()),
        ("fault log", fault_log.display().to_string()),
    ];
    println!("{}", figures(runs, seed, &after, &report));

    // Every broken invariant at once: one failing run of this test should say all it saw.
    let first = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>().join("\n");
    let mut broken = Vec::new();
    if !open.is_empty() {
        broken.push(format!(
            "{} of {runs} runs had not ended {give_up:?} after the faults stopped; the first:\n{}",
            open.len(),
            first(&open)
        ));
    }
    if !failed.is_empty() {
        broken.push(format!(
            "{} of {runs} runs did not succeed; the first:\n{}",
            failed.len(),
            first(&failed)
        ));
    }
    if !key_problems.is_empty() {
        broken.push(format!(
            "one run per idempotency key:\n{}",
            key_problems.join("\n")
        ));
    }
    if !doubles.is_empty() {
        broken.push(format!(
            "a step was started twice for one attempt:\n{}",
            doubles.join("\n")
        ));
    }
    if recovery_ms > allowed_ms {
        broken.push(format!(
            "the last run ended {:.1} s after the faults stopped; the bound is {:.0} s + {:.0} s of work",
            secs(recovery_ms),
            secs(RECOVERY_BOUND_MS),
            secs(WORK_ALLOWANCE_MS)
        ));
    }
    if faulted.faults() == 0 {
        broken.push(format!("no fault was injected: {faulted:?}"));
    }
    assert!(broken.is_empty(), "{}", broken.join("\n\n"));
}
