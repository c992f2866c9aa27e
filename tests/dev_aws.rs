//! `switchyard dev --backend aws` end to end on the AWS emulator (moto at
//! `SWITCHYARD_TEST_AWS_ENDPOINT`; `make test` starts it and runs this file with
//! `--features aws`): the binary provisions its own table, queues and bucket under a unique
//! prefix, runs are started and approved over real HTTP, the built-in async job calls back to
//! the process's own `/hooks`, the notifier delivers a signed callback, and SIGTERM stops it
//! with exit 0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "sy_devaws_test_key_0123456789";
const OPS: &str = "sy_devaws_operator_key_0123456789";

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

/// Variables of the caller's shell that would change what dev connects to: the resource
/// names (dev's own list) and these.
const CLEARED: [&str; 4] = [
    "SWITCHYARD_SECRET_ID",
    "SWITCHYARD_PUBLIC_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
];

fn command(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(["dev", "--backend", "aws", "--addr", "127.0.0.1:0"])
        .args(["--workers", "2"])
        .arg("--workflows")
        .arg(root().join("workflows"));
    for v in switchyard_cli::dev_aws::RESOURCE_VARS
        .iter()
        .chain(&CLEARED)
    {
        cmd.env_remove(v);
    }
    cmd.env_remove("AWS_ENDPOINT_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

struct Dev {
    child: Child,
    url: String,
}

impl Dev {
    fn start(prefix: &str) -> Dev {
        let endpoint = endpoint();
        let mut child = command(&[
            ("AWS_ENDPOINT_URL", &endpoint),
            ("SWITCHYARD_DEV_PREFIX", prefix),
            ("SWITCHYARD_API_KEYS", &format!("{KEY}:acme")),
            ("SWITCHYARD_OPERATOR_KEYS", OPS),
            // The test's callback receiver is on loopback.
            ("SWITCHYARD_ALLOW_PRIVATE_CALLBACKS", "1"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines
            .next()
            .unwrap_or_else(|| panic!("dev exited before its banner"))
            .unwrap();
        let url = first
            .strip_prefix("switchyard dev: serving ")
            .unwrap_or_else(|| panic!("unexpected banner: {first}"))
            .to_string();
        let second = lines.next().unwrap().unwrap();
        assert!(
            second.contains(&format!("provisioned `{prefix}-*`")),
            "dev must say it provisioned: {second}"
        );
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Dev { child, url }
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(dev: &Dev, path: &str, body: &Value, idem: Option<&str>) -> (StatusCode, Value) {
    let mut req = Client::new().post(dev.at(path)).bearer_auth(KEY).json(body);
    if let Some(k) = idem {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(dev: &Dev, path: &str) -> Value {
    let resp = Client::new()
        .get(dev.at(path))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
    resp.json().await.unwrap()
}

/// Polls until the run's status is one of `want` (moto is slow-ish: a generous limit).
async fn until_status(dev: &Dev, run: &str, want: &[&str]) -> Value {
    let t0 = Instant::now();
    loop {
        let doc = get(dev, &format!("/v1/runs/{run}")).await;
        if want.contains(&doc["status"].as_str().unwrap_or("")) {
            return doc;
        }
        if t0.elapsed() > Duration::from_secs(90) {
            let events = get(dev, &format!("/v1/runs/{run}/events")).await;
            panic!(
                "run {run} stuck at {}: {doc}\nevents: {events}",
                doc["status"]
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn input(name: &str) -> Value {
    let path = root().join(format!("events/inputs/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A callback receiver on loopback: every POST's `webhook-id` header and JSON body.
async fn receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, Value)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/cb",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let tx = tx.clone();
                async move {
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send((id, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                    StatusCode::NO_CONTENT
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/cb"), rx)
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "dev did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_start_finish_notify_and_sigterm_exits_zero() {
    let prefix = format!(
        "sy-devt-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let mut dev = Dev::start(&prefix);

    let health = Client::new().get(dev.at("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    // A synchronous example, with a callback URL and an idempotency key.
    let (cb_url, mut delivered) = receiver().await;
    let body = json!({"workflow": "support-triage", "input": input("support-triage"), "callback_url": cb_url});
    let (s, started) = post(&dev, "/v1/runs", &body, Some("devaws-1")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{started}");
    let triage = started["run_id"].as_str().unwrap().to_string();
    let (s, again) = post(&dev, "/v1/runs", &body, Some("devaws-1")).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["run_id"], triage.as_str());

    // The async job calls back to dev's own /hooks; then a person approves.
    let body = json!({"workflow": "asset-pipeline", "input": input("asset-pipeline")});
    let (s, started) = post(&dev, "/v1/runs", &body, None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{started}");
    let asset = started["run_id"].as_str().unwrap().to_string();

    let run = until_status(&dev, &triage, &["succeeded", "failed"]).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(run["output"].is_object(), "{run}");

    // `waiting` comes first for the job's callback, then (after the callback's wake-up) for
    // the approval gate: wait for the gate's step.
    let t0 = Instant::now();
    let gate = loop {
        let run = until_status(&dev, &asset, &["waiting", "failed", "succeeded"]).await;
        assert_eq!(run["status"], "waiting", "{run}");
        let waiting = run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["status"] == "waiting" && s["kind"] == "approval")
            .map(|s| s["name"].as_str().unwrap().to_string());
        if let Some(g) = waiting {
            break g;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "no approval gate: {run}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (s, b) = post(
        &dev,
        &format!("/v1/runs/{asset}/approvals/{gate}"),
        &json!({"decision": "approve", "comment": "looks good"}),
        None,
    )
    .await;
    assert!(s.is_success(), "approval answered {s}: {b}");
    let run = until_status(&dev, &asset, &["succeeded", "failed"]).await;
    assert_eq!(run["status"], "succeeded", "{run}");

    // The notifier delivered run.succeeded for the triage run, signed.
    let (id, note) = tokio::time::timeout(Duration::from_secs(60), delivered.recv())
        .await
        .expect("no notification within 60 s")
        .unwrap();
    assert!(!id.is_empty(), "the notification carries a webhook-id");
    assert_eq!(note["type"], "run.succeeded", "{note}");
    assert_eq!(note["data"]["run_id"], triage.as_str(), "{note}");

    let listed = get(&dev, "/v1/runs?limit=10").await;
    assert_eq!(listed["runs"].as_array().unwrap().len(), 2, "{listed}");

    // Stats from the DynamoDB buckets equal a hand count over the two run documents.
    let docs = [
        get(&dev, &format!("/v1/runs/{triage}")).await,
        get(&dev, &format!("/v1/runs/{asset}")).await,
    ];
    stats_equal_the_run_documents(&dev, &docs).await;

    rerun_and_console_on_dynamodb(&dev, &asset, &gate).await;

    dead_letters_on_sqs(&dev, &prefix, &triage).await;

    let status = sigterm(&mut dev.child);
    assert_eq!(status.code(), Some(0));
}

/// On DynamoDB: the finished asset run is rerun from its approval gate — a new run, linked
/// both ways, that reuses the steps before the gate (not run again) and waits at the gate
/// again; approved, it succeeds. The run console lists both runs and shows the link.
async fn rerun_and_console_on_dynamodb(dev: &Dev, asset: &str, gate: &str) {
    let (s, r) = post(
        dev,
        &format!("/v1/runs/{asset}/rerun"),
        &json!({"from": gate}),
        Some("devaws-rerun"),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    let rerun = r["run_id"].as_str().unwrap().to_string();
    assert_eq!(r["from"], gate);
    let reused: Vec<&str> = r["reused"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(!reused.is_empty() && !reused.contains(&gate), "{r}");
    let run = until_status(dev, &rerun, &["waiting", "failed", "succeeded"]).await;
    assert_eq!(run["status"], "waiting", "{run}");
    assert_eq!(run["rerun_of"]["run_id"], asset, "{run}");
    for step in run["steps"].as_array().unwrap() {
        let name = step["name"].as_str().unwrap();
        if reused.contains(&name) {
            assert_eq!(step["reused_from"], asset, "{step}");
        }
    }
    let (s, b) = post(
        dev,
        &format!("/v1/runs/{rerun}/approvals/{gate}"),
        &json!({"decision": "approve"}),
        None,
    )
    .await;
    assert!(s.is_success(), "{b}");
    let done = until_status(dev, &rerun, &["succeeded", "failed"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let old = get(dev, &format!("/v1/runs/{asset}")).await;
    assert_eq!(old["reruns"], json!([rerun]), "{old}");
    // The console, signed in with the tenant's key, shows the rerun and its link.
    let cookie = format!("sy_console={}", hex::encode(KEY));
    let page = Client::new()
        .get(dev.at(&format!("/ui/runs/{rerun}")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(&format!(r#"href="/ui/runs/{asset}" id="rerun-of""#)),
        "{html}"
    );
    let list = Client::new()
        .get(dev.at("/ui/runs"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains(&rerun) && list.contains(asset), "{list}");
}

/// One SQS call in the query protocol, unsigned (the emulator takes it); the answer's XML.
async fn sqs(params: &[(&str, &str)]) -> String {
    let mut form = vec![("Version", "2012-11-05")];
    form.extend_from_slice(params);
    // application/x-www-form-urlencoded, by hand (reqwest's `form` feature is not on).
    let enc = |v: &str| -> String {
        v.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let body = form
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    let resp = Client::new()
        .post(format!("{}/", endpoint()))
        .header("content-type", "application/x-www-form-urlencoded")
        // The emulator routes by the credential scope's service; it does not check signatures.
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "SQS {params:?}: {status} {text}");
    text
}

async fn ops(
    dev: &Dev,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Client::new().request(method, dev.at(path)).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The operator routes over the SQS dead-letter queues: a wake-up of an ended run, put on
/// the work DLQ as SQS would after `maxReceiveCount` receives, is listed with its run and
/// redriven; the worker finds the run ended and it stays ended once.
async fn dead_letters_on_sqs(dev: &Dev, prefix: &str, run: &str) {
    use reqwest::Method;
    let list = "/v1/ops/dead-letters";
    let (s, _) = ops(dev, KEY, Method::GET, list, None).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a tenant key on an operator route"
    );
    let (s, body) = ops(dev, OPS, Method::GET, list, None).await;
    assert_eq!((s, &body), (StatusCode::OK, &json!({"dead_letters": []})));

    let xml = sqs(&[
        ("Action", "GetQueueUrl"),
        ("QueueName", &format!("{prefix}-work-dlq")),
    ])
    .await;
    let url = xml
        .split("<QueueUrl>")
        .nth(1)
        .and_then(|r| r.split("</QueueUrl>").next())
        .unwrap_or_else(|| panic!("no QueueUrl in {xml}"))
        .to_string();
    let wake = json!({"run_id": run, "reason": "timer"}).to_string();
    sqs(&[
        ("Action", "SendMessage"),
        ("QueueUrl", &url),
        ("MessageBody", &wake),
    ])
    .await;

    let (s, body) = ops(dev, OPS, Method::GET, &format!("{list}?queue=work"), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let letters = body["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{body}");
    let d = &letters[0];
    assert_eq!(d["run_id"], run);
    assert_eq!(d["workflow"], "support-triage");
    assert_eq!(d["run_status"], "succeeded");
    assert_eq!(d["message"], "wake-up (timer)");
    assert!(
        d["reason"].as_str().unwrap().contains("maxReceiveCount"),
        "{d}"
    );
    let events = |v: &Value| v["events"].as_array().map_or(0, Vec::len);
    let before = get(dev, &format!("/v1/runs/{run}/events")).await;
    // Listing is a look, not a take: it is still there to show.
    let id = d["id"].as_str().unwrap();
    let (s, shown) = ops(dev, OPS, Method::GET, &format!("{list}/{id}"), None).await;
    assert_eq!(s, StatusCode::OK, "{shown}");
    assert_eq!(shown["body"], wake.as_str());

    let (s, done) = ops(
        dev,
        OPS,
        Method::POST,
        &format!("{list}/redrive"),
        Some(json!({"all": true})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{done}");
    assert_eq!(done, json!({"work": 1, "notify": 0, "not_found": []}));
    let (_, body) = ops(dev, OPS, Method::GET, list, None).await;
    assert_eq!(body, json!({"dead_letters": []}));
    // The redriven wake-up is handled as a no-op on the ended run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = get(dev, &format!("/v1/runs/{run}")).await;
    assert_eq!(after["status"], "succeeded");
    let after_events = get(dev, &format!("/v1/runs/{run}/events")).await;
    assert_eq!(
        events(&after_events),
        events(&before),
        "nothing happened again"
    );
}

fn close(a: &Value, b: f64) -> bool {
    (a.as_f64().unwrap() - b).abs() < 1e-8
}

/// `GET /v1/stats` (and `?by=model`) against the run documents of runs that each ran once:
/// per workflow one succeeded run of the document's cost; per step that ran, one execution of
/// its cost, answered by its model, falling back as it did.
async fn stats_equal_the_run_documents(dev: &Dev, docs: &[Value]) {
    let stats = get(dev, "/v1/stats?since=1h").await;
    assert_eq!(stats["runs"], docs.len(), "{stats}");
    assert_eq!(stats["window"]["from"].as_u64().unwrap() % 3_600_000, 0);
    let by_model = get(dev, "/v1/stats?since=1h&by=model").await;
    let variants = by_model["variants"].as_array().unwrap();
    let mut with_model = 0;
    for doc in docs {
        let name = doc["workflow"].as_str().unwrap();
        let w = stats["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["workflow"] == name)
            .unwrap_or_else(|| panic!("no {name} in {stats}"));
        assert_eq!((&w["runs"], &w["succeeded"]), (&json!(1), &json!(1)), "{w}");
        assert!(
            close(&w["cost_usd"], doc["cost_usd"].as_f64().unwrap()),
            "{w}"
        );
        assert_eq!(w["latency_ms"]["count"], 1, "{w}");
        let ran: Vec<&Value> = doc["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] != "skipped" && s["status"] != "pending")
            .collect();
        assert_eq!(w["steps"].as_array().unwrap().len(), ran.len(), "{w}");
        for s in ran {
            let step = s["name"].as_str().unwrap();
            let st = w["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["step"] == step)
                .unwrap_or_else(|| panic!("no step {step} in {w}"));
            assert_eq!(st["executions"], 1, "{step}");
            assert!(
                close(&st["cost_usd"], s["cost_usd"].as_f64().unwrap()),
                "{st}"
            );
            let fell_back = if s["fallback_used"] == true { 1.0 } else { 0.0 };
            assert_eq!(st["fallback_rate"], fell_back, "{step}");
            if let Some(m) = s["model"].as_str() {
                with_model += 1;
                if s["status"] == "succeeded" {
                    assert_eq!(st["answered_by"], json!({ m: 1 }), "{step}");
                }
                assert!(
                    variants
                        .iter()
                        .any(|v| v["step"] == step && v["variant"] == m && v["executions"] == 1),
                    "{step} on {m} in {by_model}"
                );
            }
        }
    }
    assert_eq!(variants.len(), with_model, "{by_model}");
}

#[test]
fn without_resources_or_an_emulator_it_says_what_to_set() {
    let out = command(&[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SWITCHYARD_TABLE") && err.contains("AWS_ENDPOINT_URL"),
        "{err}"
    );
}

#[test]
fn a_partial_set_of_resource_variables_names_the_missing_one() {
    let out = command(&[
        ("SWITCHYARD_TABLE", "t"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SWITCHYARD_BUCKET is not set"), "{err}");
}

#[test]
fn data_dir_is_refused_on_aws() {
    let out = command(&[])
        .args(["--data-dir", "/tmp/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data-dir"));
}
