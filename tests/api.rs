//! End-to-end tests of the HTTP API over real HTTP: the `switchyard dev` binary on the
//! embedded backend, driven with reqwest. Every route and error code, tenant isolation,
//! idempotency (replay, conflict, 20 concurrent identical starts), approvals and cancel,
//! signed notifications verified by the `standardwebhooks` package (tests/api/receiver.py),
//! and a `dev` killed with SIGKILL finishing its runs after a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ACME: &str = "key-acme-0123456789";
const GLOBEX: &str = "key-globex-0123456789";
const SECRET: &str = "whsec_dGVzdC1jYWxsYmFjay1zZWNyZXQtMTIzNA==";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A workflows directory with the fixtures these tests start.
fn workflows(dir: &Path) -> PathBuf {
    let wf = dir.join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    for f in ["gate.yaml", "slow-chain.yaml"] {
        std::fs::copy(root().join("tests/fixtures").join(f), wf.join(f)).unwrap();
    }
    std::fs::write(
        wf.join("big.yaml"),
        "name: big\nversion: \"1\"\noutput: {text: \"${steps.a.output}\"}\nsteps:\n  - {id: a, kind: transform, value: \"${input.text}\"}\n",
    )
    .unwrap();
    std::fs::write(
        wf.join("image.yaml"),
        r#"name: image
version: "1"
output: {image: "${steps.render.output.url}"}
steps:
  - id: render
    model: replicate/black-forest-labs/flux-schnell
    role: asset
    input: {prompt: "${input.prompt}"}
    wait_timeout: 10m
"#,
    )
    .unwrap();
    std::fs::write(
        wf.join("quick.yaml"),
        r#"name: quick
version: "1"
input_schema:
  type: object
  required: [text]
  properties:
    text: {type: string, maxLength: 100}
output: {echo: "${steps.a.output.json}"}
steps:
  - id: a
    model: local/echo
    input: {text: "${input.text}"}
"#,
    )
    .unwrap();
    std::fs::write(
        wf.join("read-upload.yaml"),
        r#"name: read-upload
version: "1"
input_schema:
  type: object
  required: [doc]
  properties:
    doc:
      type: object
      required: [$upload, content_type]
      properties:
        content_type: {enum: ["text/plain; charset=utf-8", "application/json"]}
        bytes: {maximum: 8000000}
output:
  bytes: "${input.doc.bytes}"
  echo: "${steps.a.output.json}"
steps:
  - id: a
    model: local/echo
    input: "${input.doc}"
"#,
    )
    .unwrap();
    wf
}

/// A running `switchyard dev`.
struct Dev {
    child: Child,
    url: String,
    data: PathBuf,
    workflows: PathBuf,
    env: Vec<(String, String)>,
}

impl Dev {
    fn start(data: &Path, workflows: &Path, env: &[(&str, &str)]) -> Dev {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Dev::spawn(data.to_path_buf(), workflows.to_path_buf(), env)
    }

    fn spawn(data: PathBuf, workflows: PathBuf, env: Vec<(String, String)>) -> Dev {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.args(["dev", "--addr", "127.0.0.1:0", "--workers", "4"])
            .arg("--data-dir")
            .arg(&data)
            .arg("--workflows")
            .arg(&workflows)
            .env(
                "SWITCHYARD_API_KEYS",
                format!("{ACME}:acme,{GLOBEX}:globex"),
            )
            .env_remove("SWITCHYARD_PUBLIC_URL")
            .env_remove("SWITCHYARD_CALLBACK_SECRET")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().unwrap().unwrap();
        let url = first
            .strip_prefix("switchyard dev: serving ")
            .unwrap_or_else(|| panic!("unexpected banner: {first}"))
            .to_string();
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Dev {
            child,
            url,
            data,
            workflows,
            env,
        }
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn restart(&mut self) -> Dev {
        Dev::spawn(self.data.clone(), self.workflows.clone(), self.env.clone())
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

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn post(dev: &Dev, key: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    let r = client()
        .post(dev.at(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(dev: &Dev, key: &str, path: &str) -> (StatusCode, Value) {
    let r = client()
        .get(dev.at(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn start(dev: &Dev, key: &str, body: Value) -> String {
    let (s, b) = post(dev, key, "/v1/runs", &body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    b["run_id"].as_str().unwrap().to_string()
}

/// Polls the run until its status is one of `want` (real time: `dev` runs on the system clock).
async fn until_status(dev: &Dev, key: &str, run: &str, want: &[&str]) -> Value {
    let t0 = Instant::now();
    loop {
        let (s, doc) = get(dev, key, &format!("/v1/runs/{run}")).await;
        assert_eq!(s, StatusCode::OK, "{doc}");
        if want.contains(&doc["status"].as_str().unwrap_or("")) {
            return doc;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let (_, ev) = get(dev, key, &format!("/v1/runs/{run}/events")).await;
            panic!("run {run} stuck at {}: {doc}\nevents: {ev}", doc["status"]);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn routes_auth_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(&dir.path().join("data"), &workflows(dir.path()), &[]);
    let c = client();

    // No auth on liveness and the document; every /v1 route needs a key.
    let r = c.get(dev.at("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let r = c
        .get(dev.at("/healthz"))
        .header("x-request-id", "req-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-abc-123");
    let r = c.get(dev.at("/v1/runs")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(code(&r.json().await.unwrap()), "unauthorized");
    let (s, b) = get(&dev, "not-a-key-at-all", "/v1/workflows").await;
    assert_eq!((s.as_u16(), code(&b)), (401, "unauthorized"));

    let (s, wfs) = get(&dev, ACME, "/v1/workflows").await;
    assert_eq!(s, 200);
    let names: Vec<&str> = wfs["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["big", "gate", "image", "quick", "read-upload", "slow-chain"]
    );

    // A run: 202 with links, then its document, events and listing.
    let (s, b) = post(
        &dev,
        ACME,
        "/v1/runs",
        &json!({"workflow": "quick", "input": {"text": "hi"}}),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    let run = b["run_id"].as_str().unwrap().to_string();
    assert_eq!(b["links"]["self"], format!("/v1/runs/{run}"));
    assert_eq!(b["links"]["events"], format!("/v1/runs/{run}/events"));
    let doc = until_status(&dev, ACME, &run, &["succeeded"]).await;
    assert_eq!(doc["output"]["echo"]["text"], "hi");
    assert_eq!(doc["notifications"], json!([]));
    let (s, ev) = get(&dev, ACME, &format!("/v1/runs/{run}/events")).await;
    assert_eq!(s, 200);
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"run_created"));
    assert_eq!(kinds.last(), Some(&"run_succeeded"));
    let (s, list) = get(
        &dev,
        ACME,
        "/v1/runs?limit=10&status=succeeded&workflow=quick",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(list["runs"][0]["run_id"], run.as_str());

    // Another tenant sees none of it, on every route.
    for path in [format!("/v1/runs/{run}"), format!("/v1/runs/{run}/events")] {
        let (s, b) = get(&dev, GLOBEX, &path).await;
        assert_eq!((s.as_u16(), code(&b)), (404, "not_found"), "{path}");
    }
    for (path, body) in [
        (format!("/v1/runs/{run}/cancel"), json!({})),
        (
            format!("/v1/runs/{run}/approvals/a"),
            json!({"decision": "approve"}),
        ),
    ] {
        let (s, b) = post(&dev, GLOBEX, &path, &body).await;
        assert_eq!((s.as_u16(), code(&b)), (404, "not_found"), "{path}");
    }
    let (_, list) = get(&dev, GLOBEX, "/v1/runs").await;
    assert_eq!(list["runs"], json!([]));

    // Bad input: a clear error naming the field, never a 5xx.
    let table: Vec<(Value, u16, &str, Option<&str>)> = vec![
        (
            json!({"workflow": "quick", "input": {}}),
            422,
            "invalid_input",
            Some("input.text"),
        ),
        (
            json!({"workflow": "quick", "input": {"text": 5}}),
            422,
            "invalid_input",
            Some("input.text"),
        ),
        (
            json!({"workflow": "quick", "input": {"text": "x"}, "extra": 1}),
            400,
            "bad_request",
            None,
        ),
        (
            json!({"workflow": 7, "input": {}}),
            400,
            "bad_request",
            Some("workflow"),
        ),
        (
            json!({"workflow": "nope", "input": {}}),
            404,
            "not_found",
            None,
        ),
        (
            json!({"workflow": "quick", "input": {"text": "x"}, "callback_url": "http://example.com/hook"}),
            422,
            "invalid_input",
            Some("callback_url"),
        ),
        (
            json!({"workflow": "quick", "input": {"text": "x"}, "callback_url": "https://127.0.0.1/hook"}),
            422,
            "invalid_input",
            Some("callback_url"),
        ),
        (
            json!({"workflow": "quick", "input": {"text": "x"}, "callback_url": "https://169.254.169.254/latest"}),
            422,
            "invalid_input",
            Some("callback_url"),
        ),
    ];
    for (body, status, want, field) in table {
        let (s, b) = post(&dev, ACME, "/v1/runs", &body).await;
        assert_eq!((s.as_u16(), code(&b)), (status, want), "{body} → {b}");
        if let Some(f) = field {
            assert_eq!(b["error"]["field"], f, "{body} → {b}");
        }
    }
    // Raw bodies: not JSON at all (415), JSON cut short (400).
    for (content_type, body, status, want) in [
        (
            "text/plain",
            "workflow=quick",
            415,
            "unsupported_media_type",
        ),
        ("application/json", "{\"workflow\": ", 400, "bad_request"),
    ] {
        let r = c
            .post(dev.at("/v1/runs"))
            .bearer_auth(ACME)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{body}");
        assert_eq!(code(&r.json().await.unwrap()), want, "{body}");
    }
    let big = "x".repeat(switchyard_api::MAX_BODY_BYTES + 10);
    let r = c
        .post(dev.at("/v1/runs"))
        .bearer_auth(ACME)
        .json(&json!({"workflow": "quick", "input": {"text": big}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(code(&r.json().await.unwrap()), "too_large");
    let (s, b) = get(&dev, ACME, "/v1/runs?limit=0").await;
    assert_eq!(
        (s.as_u16(), b["error"]["field"].as_str()),
        (400, Some("limit"))
    );
    let (s, b) = get(&dev, ACME, "/v1/runs?status=sleeping").await;
    assert_eq!((s.as_u16(), code(&b)), (400, "bad_request"));
    let (s, b) = get(&dev, ACME, "/v1/runs?cursor=garbage").await;
    assert_eq!((s.as_u16(), code(&b)), (400, "bad_request"), "{b}");
    let (s, b) = get(&dev, ACME, "/v1/nope").await;
    assert_eq!((s.as_u16(), code(&b)), (404, "not_found"));
    let r = c
        .delete(dev.at("/v1/runs"))
        .bearer_auth(ACME)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // Cancelling a run that ended is a conflict.
    let (s, b) = post(&dev, ACME, &format!("/v1/runs/{run}/cancel"), &json!({})).await;
    assert_eq!((s.as_u16(), code(&b)), (409, "conflict"));
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(&dir.path().join("data"), &workflows(dir.path()), &[]);
    let doc: Value = client()
        .get(dev.at("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["openapi"].as_str().map(|v| v.starts_with("3.1")),
        Some(true)
    );
    let paths = doc["paths"].as_object().unwrap();
    let want = [
        "/v1/runs",
        "/v1/runs/{id}",
        "/v1/runs/{id}/events",
        "/v1/runs/{id}/approvals/{step}",
        "/v1/runs/{id}/cancel",
        "/v1/runs/{id}/rerun",
        "/v1/runs/rerun",
        "/v1/runs/{id}/notifications/{webhook_id}/resend",
        "/v1/workflows",
        "/v1/stats",
        "/v1/openapi.json",
        "/v1/ops/dead-letters",
        "/v1/ops/dead-letters/{id}",
        "/v1/ops/dead-letters/redrive",
        "/v1/blobs/{key}",
        "/v1/uploads",
        "/v1/uploads/{sha256}",
        "/healthz",
        "/hooks/{provider}",
    ];
    let mut have: Vec<&str> = paths.keys().map(String::as_str).collect();
    have.sort();
    let mut want_sorted = want.to_vec();
    want_sorted.sort();
    assert_eq!(have, want_sorted);
    // Each documented operation is routed (not the router's 404/405), and each method the
    // document does not list on a path is refused with 405.
    for (path, ops) in paths {
        let concrete = path
            .replace("{id}", "run-that-does-not-exist")
            .replace("{step}", "s")
            .replace("{webhook_id}", "msg_nope")
            .replace("{provider}", "nope")
            .replace("{key}", "nope")
            .replace("{sha256}", "nope");
        for method in ["get", "post", "put", "delete", "patch"] {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = client()
                .request(m, dev.at(&concrete))
                .bearer_auth(ACME)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let documented = ops.get(method).is_some();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if documented {
                assert_ne!(status, 405, "{method} {path} is documented but not served");
                assert!(
                    !(status == 404 && body["error"]["message"] == "no such route"),
                    "{method} {path} is documented but not routed"
                );
                assert!(status < 500, "{method} {path}: {status} {body}");
            } else {
                assert_eq!(status, 405, "{method} {path} is served but not documented");
            }
        }
    }
}

/// `GET /v1/stats` counts the caller's runs only, filters by workflow and window, and refuses a
/// bad `since` or `workflow` with 400 naming the field.
#[tokio::test]
async fn stats_count_only_the_callers_runs() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(&dir.path().join("data"), &workflows(dir.path()), &[]);
    let quick = |i: usize| json!({"workflow": "quick", "input": {"text": format!("t{i}")}});
    let mut acme = Vec::new();
    for i in 0..3 {
        acme.push(start(&dev, ACME, quick(i)).await);
    }
    let mut globex = Vec::new();
    for i in 0..2 {
        globex.push(start(&dev, GLOBEX, quick(i)).await);
    }
    globex.push(
        start(
            &dev,
            GLOBEX,
            json!({"workflow": "big", "input": {"text": "x"}}),
        )
        .await,
    );
    for run in &acme {
        until_status(&dev, ACME, run, &["succeeded"]).await;
    }
    for run in &globex {
        until_status(&dev, GLOBEX, run, &["succeeded"]).await;
    }

    let (s, doc) = get(&dev, ACME, "/v1/stats").await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    assert_eq!(doc["tenant"], "acme");
    assert_eq!(doc["window"]["since"], "24h");
    assert_eq!(doc["runs"], 3, "{doc}");
    let names = |doc: &Value| -> Vec<String> {
        doc["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["workflow"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&doc), ["quick"]);
    let w = &doc["workflows"][0];
    assert_eq!(
        (&w["runs"], &w["succeeded"], &w["ended"], &w["success_rate"]),
        (&json!(3), &json!(3), &json!(3), &json!(1.0))
    );
    assert_eq!(w["latency_ms"]["count"], 3);
    let step = &w["steps"][0];
    assert_eq!(
        (&step["step"], &step["kind"]),
        (&json!("a"), &json!("model"))
    );
    assert_eq!(step["executions"], 3);
    assert_eq!(step["answered_by"], json!({"local/echo": 3}));

    let (s, doc) = get(&dev, GLOBEX, "/v1/stats").await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    assert_eq!(
        (&doc["tenant"], &doc["runs"]),
        (&json!("globex"), &json!(3))
    );
    assert_eq!(names(&doc), ["big", "quick"]);
    assert_eq!(doc["workflows"][1]["runs"], 2);

    // The workflow filter: acme ran no `big`; globex ran one.
    let (_, doc) = get(&dev, ACME, "/v1/stats?workflow=big").await;
    assert_eq!((&doc["runs"], &doc["workflow"]), (&json!(0), &json!("big")));
    assert_eq!(doc["workflows"], json!([]));
    let (_, doc) = get(&dev, GLOBEX, "/v1/stats?workflow=big&since=7d").await;
    assert_eq!(
        (&doc["runs"], &doc["window"]["since"]),
        (&json!(1), &json!("7d"))
    );
    // Figures are kept per UTC hour: a short window starts on the hour `now - since` falls
    // in and counts that hour whole — the runs created since then, and no earlier one.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (s, doc) = get(&dev, ACME, "/v1/stats?since=10ms").await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    let from = doc["window"]["from"].as_u64().unwrap();
    assert_eq!(from % 3_600_000, 0, "{doc}");
    let (_, all) = get(&dev, ACME, "/v1/stats?since=1d").await;
    let (_, listed) = get(&dev, ACME, "/v1/runs?limit=100").await;
    let since_the_hour = listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["created_at"].as_u64().unwrap() >= from)
        .count();
    assert_eq!(doc["runs"], since_the_hour, "{doc}");
    assert!(doc["runs"].as_u64() <= all["runs"].as_u64(), "{all}");

    for (query, field) in [
        ("since=soon", "since"),
        ("since=0s", "since"),
        ("since=", "since"),
        ("since=-1h", "since"),
        ("since=1h&since=2h", "since"),
        ("workflow=", "workflow"),
        ("workflow=a%2Fb", "workflow"),
        ("workflow=%00", "workflow"),
    ] {
        let (s, b) = get(&dev, ACME, &format!("/v1/stats?{query}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {b}");
        assert_eq!(code(&b), "bad_request", "{query}");
        assert_eq!(b["error"]["field"], field, "{query}: {b}");
    }
    let r = client().get(dev.at("/v1/stats")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn idempotency_replays_conflicts_and_races_to_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(&dir.path().join("data"), &workflows(dir.path()), &[]);
    let body = json!({"workflow": "quick", "input": {"text": "once"}});
    let send = |key: &'static str, body: Value| {
        let url = dev.at("/v1/runs");
        async move {
            let r = client()
                .post(url)
                .bearer_auth(ACME)
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let replayed = r
                .headers()
                .get("idempotent-replayed")
                .map(|v| v.to_str().unwrap().to_string());
            (
                r.status().as_u16(),
                replayed,
                r.json::<Value>().await.unwrap(),
            )
        }
    };
    let (s1, rep1, b1) = send("order-1", body.clone()).await;
    assert_eq!((s1, rep1), (202, None));
    let (s2, rep2, b2) = send("order-1", body.clone()).await;
    assert_eq!((s2, rep2.as_deref()), (200, Some("true")));
    assert_eq!(b1["run_id"], b2["run_id"]);
    let (s3, _, b3) = send(
        "order-1",
        json!({"workflow": "quick", "input": {"text": "other"}}),
    )
    .await;
    assert_eq!((s3, code(&b3)), (409, "idempotency_conflict"));
    // Keys are per tenant: globex's order-1 is its own run.
    let r = client()
        .post(dev.at("/v1/runs"))
        .bearer_auth(GLOBEX)
        .header("idempotency-key", "order-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let bad = client()
        .post(dev.at("/v1/runs"))
        .bearer_auth(ACME)
        .header("idempotency-key", "x".repeat(300))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"]["field"],
        "Idempotency-Key"
    );

    // Twenty identical requests at once: one run.
    let race = json!({"workflow": "quick", "input": {"text": "race"}});
    let all = futures::future::join_all((0..20).map(|_| send("race-1", race.clone()))).await;
    let ids: std::collections::BTreeSet<String> = all
        .iter()
        .map(|(_, _, b)| b["run_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{all:?}");
    let created = all.iter().filter(|(s, _, _)| *s == 202).count();
    assert_eq!(created, 1, "{all:?}");
    assert!(all.iter().all(|(s, _, _)| *s == 202 || *s == 200));
    let run = ids.into_iter().next().unwrap();
    until_status(&dev, ACME, &run, &["succeeded"]).await;
    let (_, list) = get(&dev, ACME, "/v1/runs?workflow=quick&limit=100").await;
    let races = list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["run_id"] == run.as_str())
        .count();
    assert_eq!(races, 1);
    assert_eq!(
        list["runs"].as_array().unwrap().len(),
        2,
        "order-1 and race-1 only: {list}"
    );
}

#[tokio::test]
async fn approval_and_cancel_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(&dir.path().join("data"), &workflows(dir.path()), &[]);
    let run = start(
        &dev,
        ACME,
        json!({"workflow": "gate", "input": {"title": "Spring"}}),
    )
    .await;
    let doc = until_status(&dev, ACME, &run, &["waiting"]).await;
    assert_eq!(doc["waiting_for"]["reason"], "approval", "{doc}");
    let path = format!("/v1/runs/{run}/approvals/review");
    let (s, b) = post(&dev, ACME, &path, &json!({"decision": "maybe"})).await;
    assert_eq!((s.as_u16(), code(&b)), (400, "bad_request"));
    let (s, b) = post(
        &dev,
        ACME,
        &format!("/v1/runs/{run}/approvals/nope"),
        &json!({"decision": "approve"}),
    )
    .await;
    assert_eq!((s.as_u16(), code(&b)), (404, "not_found"));
    let (s, b) = post(
        &dev,
        ACME,
        &path,
        &json!({"decision": "approve", "comment": "ship it"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["decision"], "approve");
    let done = until_status(&dev, ACME, &run, &["succeeded"]).await;
    assert_eq!(done["output"]["title"], "Spring");
    let (s, b) = post(&dev, ACME, &path, &json!({"decision": "approve"})).await;
    assert_eq!((s.as_u16(), code(&b)), (409, "conflict"));

    // A run cancelled mid-way. On a loaded machine the run may end before the cancel lands
    // (409: it has ended); then another run is tried.
    let mut cancelled = None;
    for _ in 0..5 {
        let slow = start(
            &dev,
            ACME,
            json!({"workflow": "slow-chain", "input": {"text": "t"}}),
        )
        .await;
        until_status(&dev, ACME, &slow, &["running", "succeeded"]).await;
        let (s, b) = post(&dev, ACME, &format!("/v1/runs/{slow}/cancel"), &json!({})).await;
        if s == 409 {
            continue;
        }
        assert_eq!(s, 202, "{b}");
        assert_eq!(b["cancel_requested"], true);
        cancelled = Some(slow);
        break;
    }
    let slow = cancelled.expect("no run was still going when its cancel landed");
    let doc = until_status(&dev, ACME, &slow, &["cancelled"]).await;
    assert_eq!(doc["error"]["class"], "cancelled");
    // Nothing new started after the cancellation but, at most, the one step the worker
    // started before its next look at the run (it looks every 200 ms; each step takes
    // 400 ms). Read from the history, not from how far the run got when the test looked.
    let (_, ev) = get(&dev, ACME, &format!("/v1/runs/{slow}/events")).await;
    let ev = ev["events"].as_array().unwrap();
    let asked = ev
        .iter()
        .find(|e| e["kind"] == "run_cancel_requested")
        .and_then(|e| e["at"].as_u64())
        .unwrap_or_else(|| panic!("no cancel request: {ev:?}"));
    let started_after = ev
        .iter()
        .filter(|e| e["kind"] == "step_started" && e["at"].as_u64() > Some(asked))
        .count();
    assert!(
        started_after <= 1,
        "{started_after} steps started after the cancel: {ev:?}"
    );
}

/// Makes the test venv (tests/api/venv.sh) and returns its python.
fn venv_python() -> PathBuf {
    let out = Command::new("bash")
        .arg(root().join("tests/api/venv.sh"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "venv.sh failed");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let venv = stdout.lines().last().unwrap().trim().to_string();
    PathBuf::from(venv).join("bin/python")
}

struct Receiver {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Receiver {
    fn start(dir: &Path, statuses: &str) -> Receiver {
        let log = dir.join("deliveries.jsonl");
        let mut child = Command::new(venv_python())
            .arg(root().join("tests/api/receiver.py"))
            .args([
                "--port",
                "0",
                "--secret",
                SECRET,
                "--statuses",
                statuses,
                "--log",
            ])
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().strip_prefix("listening ").unwrap().to_string();
        Receiver { child, url, log }
    }

    fn deliveries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn notifications_are_signed_retried_with_one_webhook_id_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    // The first delivery fails (500), the retry (1 s later) is accepted.
    let receiver = Receiver::start(dir.path(), "500,200");
    let dev = Dev::start(
        &dir.path().join("data"),
        &workflows(dir.path()),
        &[
            ("SWITCHYARD_CALLBACK_SECRET", SECRET),
            ("SWITCHYARD_ALLOW_PRIVATE_CALLBACKS", "1"),
        ],
    );
    let hook = format!("{}/hook", receiver.url);
    let run = start(
        &dev,
        ACME,
        json!({"workflow": "gate", "input": {"title": "T"}, "callback_url": hook}),
    )
    .await;
    until_status(&dev, ACME, &run, &["waiting"]).await;
    // Each wait has its own (generous) limit: one phase slowed by a loaded machine must not
    // eat into the next one's.
    let t0 = Instant::now();
    while receiver.deliveries().len() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{:?}",
            receiver.deliveries()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, _) = post(
        &dev,
        ACME,
        &format!("/v1/runs/{run}/approvals/review"),
        &json!({"decision": "reject"}),
    )
    .await;
    assert_eq!(s, 200);
    until_status(&dev, ACME, &run, &["failed"]).await;
    let t0 = Instant::now();
    while receiver.deliveries().len() < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{:?}",
            receiver.deliveries()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = receiver.deliveries();
    // Verified by an independent implementation (the standardwebhooks package).
    assert!(d.iter().all(|x| x["verified"] == true), "{d:?}");
    assert_eq!(d[0]["status_answered"], 500);
    assert_eq!(d[1]["status_answered"], 200);
    assert_eq!(
        d[0]["webhook_id"], d[1]["webhook_id"],
        "a retry keeps its webhook-id"
    );
    assert_eq!(d[0]["body"]["type"], "run.waiting_for_approval");
    assert_eq!(
        d[0]["body"]["data"]["waiting_for_approval"],
        json!(["review"])
    );
    assert_eq!(d[2]["body"]["type"], "run.failed");
    assert_ne!(d[2]["webhook_id"], d[0]["webhook_id"]);
    assert_eq!(d[2]["body"]["data"]["run_id"], run.as_str());
    assert_eq!(d[2]["body"]["data"]["error"]["class"], "rejected");
    // Every attempt is on the run.
    let t1 = Instant::now();
    loop {
        let (_, doc) = get(&dev, ACME, &format!("/v1/runs/{run}")).await;
        let n = doc["notifications"].as_array().unwrap().clone();
        if n.len() == 3 {
            let outcomes: Vec<&str> = n.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
            assert_eq!(outcomes, ["retry", "delivered", "delivered"]);
            assert_eq!(n[0]["status"], 500);
            assert_eq!(
                (n[0]["attempt"].as_u64(), n[1]["attempt"].as_u64()),
                (Some(1), Some(2))
            );
            // `runs show` lists them too (the CLI reads the same data dir).
            let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .args(["runs", "show", &run, "--data-dir"])
                .arg(&dev.data)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("notifications:"), "{text}");
            assert!(
                text.contains("run.waiting_for_approval   #1 HTTP 500"),
                "{text}"
            );
            break;
        }
        assert!(t1.elapsed() < Duration::from_secs(60), "{n:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_killed_dev_finishes_its_runs_after_a_restart_without_rerunning_steps() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Dev::start(&dir.path().join("data"), &workflows(dir.path()), &[]);
    let mut runs = Vec::new();
    for i in 0..6 {
        runs.push(
            start(
                &dev,
                ACME,
                json!({"workflow": "slow-chain", "input": {"text": format!("r{i}")}}),
            )
            .await,
        );
    }
    // Let them get going (each step takes 400 ms), then kill the process mid-step.
    tokio::time::sleep(Duration::from_millis(700)).await;
    dev.kill9();
    let dev = dev.restart();
    for run in &runs {
        let doc = until_status(&dev, ACME, run, &["succeeded", "failed"]).await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
        let (_, ev) = get(&dev, ACME, &format!("/v1/runs/{run}/events")).await;
        for step in ["a", "b", "c", "d"] {
            let succeeded = ev["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "step_succeeded" && e["step"] == step)
                .count();
            assert_eq!(succeeded, 1, "run {run} step {step}: {ev}");
        }
    }
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Dev::start(&dir.path().join("data"), &workflows(dir.path()), &[]);
    let run = start(
        &dev,
        ACME,
        json!({"workflow": "slow-chain", "input": {"text": "t"}}),
    )
    .await;
    // Mid-run, usually; a loaded machine may see the run only once it has ended, and the
    // drain must exit 0 then too.
    until_status(&dev, ACME, &run, &["running", "succeeded"]).await;
    let pid = dev.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = dev.child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "dev did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    // The run was left parked or ended, not leased to a stopped process.
    let dev = dev.restart();
    let doc = until_status(&dev, ACME, &run, &["succeeded"]).await;
    assert_eq!(doc["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicate_job_finishes_through_the_hooks_route_while_dev_serves() {
    const FAKE_SECRET: &str = "whsec_ZmFrZWZha2VmYWtlZmFrZWZha2U=";
    let fake = switchyard_fakes::FakeServer::start(switchyard_fakes::FakeConfig {
        webhook_secret: FAKE_SECRET.into(),
        replicate_delay_ms: 150,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{}/v1", fake.url());
    let dev = Dev::start(
        &dir.path().join("data"),
        &workflows(dir.path()),
        &[
            ("REPLICATE_BASE_URL", base.as_str()),
            ("REPLICATE_API_TOKEN", "r8_fake_token_for_tests"),
            ("SWITCHYARD_WEBHOOK_SECRET", FAKE_SECRET),
        ],
    );
    let run = start(
        &dev,
        ACME,
        json!({"workflow": "image", "input": {"prompt": "a lighthouse"}}),
    )
    .await;
    let doc = until_status(&dev, ACME, &run, &["succeeded", "failed"]).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    // The image is our copy, served by `dev` through a presigned link.
    let image = doc["output"]["image"].as_str().unwrap();
    assert!(image.contains("/v1/blobs/"), "{image}");
    let got = reqwest::get(image).await.unwrap();
    assert_eq!(got.status(), 200, "{image}");
    assert_eq!(
        got.bytes().await.unwrap().as_ref(),
        switchyard_fakes::FAKE_PNG
    );
    let (_, ev) = get(&dev, ACME, &format!("/v1/runs/{run}/events")).await;
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"webhook_received"), "{kinds:?}");
    assert!(
        !kinds.contains(&"job_polled"),
        "finished by the webhook, not by polling: {kinds:?}"
    );
    let posts = fake
        .requests()
        .iter()
        .filter(|r| r.provider == "replicate" && r.method == "POST")
        .count();
    assert_eq!(posts, 1);
}

#[tokio::test]
async fn a_large_output_is_a_presigned_link_with_its_size_and_sha256() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(&dir.path().join("data"), &workflows(dir.path()), &[]);
    let text = "lorem ipsum ".repeat(4_000);
    let run = start(
        &dev,
        ACME,
        json!({"workflow": "big", "input": {"text": text}}),
    )
    .await;
    let doc = until_status(&dev, ACME, &run, &["succeeded"]).await;
    let out = &doc["output"];
    let url = out["url"]
        .as_str()
        .unwrap_or_else(|| panic!("not offloaded: {}", &doc.to_string()[..300]));
    assert!(url.starts_with(&dev.url), "{url}");
    let bytes = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.len() as u64, out["bytes"].as_u64().unwrap());
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        out["sha256"].as_str().unwrap()
    );
    let value: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(value["text"], text.as_str());
    // The link is the credential: a changed expiry or signature does not open it.
    let forged = url.replace("expires=", "expires=9");
    let r = client().get(&forged).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(code(&r.json().await.unwrap()), "forbidden");
    let (base, sig) = url.split_once("sig=").unwrap();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    let r = client()
        .get(format!("{base}sig={flipped}{}", &sig[1..]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// Declares an upload of `bytes` as `ct`; returns the ticket.
async fn declare(dev: &Dev, key: &str, bytes: &[u8], ct: &str) -> Value {
    use sha2::{Digest, Sha256};
    let (s, ticket) = post(
        dev,
        key,
        "/v1/uploads",
        &json!({"sha256": hex::encode(Sha256::digest(bytes)), "bytes": bytes.len(), "content_type": ct}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{ticket}");
    ticket
}

/// PUTs `body` to a ticket's URL with its headers, `content_type` replacing the declared one
/// when given.
async fn put_upload(
    ticket: &Value,
    body: Vec<u8>,
    content_type: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = client().put(ticket["url"].as_str().unwrap()).body(body);
    for (k, v) in ticket["headers"].as_object().unwrap() {
        let v = match (k.as_str(), content_type) {
            ("content-type", Some(ct)) => ct,
            _ => v.as_str().unwrap(),
        };
        req = req.header(k, v);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// An input larger than a request body travels by upload: declared (bad declarations named
/// by field), PUT to the presigned link (other bytes, another type, a forged link refused),
/// adopted when the run starts (another tenant's reference is a 422 naming the field), and
/// read by the model step as its content.
#[tokio::test]
async fn a_large_input_arrives_by_upload_and_reaches_the_model_step() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(&dir.path().join("data"), &workflows(dir.path()), &[]);
    let text = "the quick brown fox. ".repeat(280_000); // 5.9 MB: over the 5 MB body limit
    let (s, _) = post(
        &dev,
        ACME,
        "/v1/runs",
        &json!({"workflow": "read-upload", "input": {"doc": text}}),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);

    for (body, field) in [
        (
            json!({"sha256": "ABC", "bytes": 1, "content_type": "text/plain"}),
            "sha256",
        ),
        (
            json!({"sha256": "a".repeat(64), "bytes": 0, "content_type": "text/plain"}),
            "bytes",
        ),
        (
            json!({"sha256": "a".repeat(64), "bytes": 1u64 << 40, "content_type": "text/plain"}),
            "bytes",
        ),
        (
            json!({"sha256": "a".repeat(64), "bytes": 1, "content_type": "plain"}),
            "content_type",
        ),
    ] {
        let (s, b) = post(&dev, ACME, "/v1/uploads", &body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        assert_eq!(b["error"]["field"], field, "{b}");
    }

    let ct = "text/plain; charset=utf-8";
    let ticket = declare(&dev, ACME, text.as_bytes(), ct).await;
    assert_eq!(ticket["method"], "PUT");
    assert_eq!(ticket["reference"]["$upload"], ticket["sha256"]);
    let reference = ticket["reference"].clone();

    // Not yet uploaded: the run is refused, naming the field.
    let input = json!({"workflow": "read-upload", "input": {"doc": reference}});
    let (s, b) = post(&dev, ACME, "/v1/runs", &input).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["error"]["field"], "input.doc", "{b}");

    let mut other = text.clone().into_bytes();
    other[0] = b'T';
    let (s, b) = put_upload(&ticket, other, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "other bytes: {b}");
    let (s, b) = put_upload(&ticket, text.as_bytes()[1..].to_vec(), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "fewer bytes: {b}");
    let (s, b) = put_upload(&ticket, text.clone().into_bytes(), Some("text/html")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "another type: {b}");
    let mut forged = ticket.clone();
    forged["url"] = json!(ticket["url"]
        .as_str()
        .unwrap()
        .replace("tenant=acme", "tenant=globex"));
    let (s, b) = put_upload(&forged, text.clone().into_bytes(), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "another tenant's link: {b}");
    let (s, b) = put_upload(&ticket, text.clone().into_bytes(), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");

    // Another tenant cannot use acme's upload, even knowing its hash.
    let (s, b) = post(&dev, GLOBEX, "/v1/runs", &input).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["error"]["field"], "input.doc", "{b}");

    let run = start(&dev, ACME, input).await;
    let doc = until_status(&dev, ACME, &run, &["succeeded"]).await;
    let url = doc["output"]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("{doc}"));
    let out: Value = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        out["bytes"],
        text.len(),
        "the reference was completed with the stored size"
    );
    assert_eq!(out["echo"], text.as_str(), "the model step got the content");

    // A JSON upload reaches the model parsed; the schema refuses a type it does not list.
    let data = serde_json::to_vec(&json!({"rows": [1, 2, 3]})).unwrap();
    let ticket = declare(&dev, ACME, &data, "application/json").await;
    assert_eq!(put_upload(&ticket, data, None).await.0, StatusCode::OK);
    let run = start(
        &dev,
        ACME,
        json!({"workflow": "read-upload", "input": {"doc": ticket["reference"]}}),
    )
    .await;
    let doc = until_status(&dev, ACME, &run, &["succeeded"]).await;
    assert_eq!(doc["output"]["echo"], json!({"rows": [1, 2, 3]}), "{doc}");
    let png = b"\x89PNG not really".to_vec();
    let ticket = declare(&dev, ACME, &png, "image/png").await;
    assert_eq!(put_upload(&ticket, png, None).await.0, StatusCode::OK);
    let (s, b) = post(
        &dev,
        ACME,
        "/v1/runs",
        &json!({"workflow": "read-upload", "input": {"doc": ticket["reference"]}}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["error"]["field"], "input.doc.content_type", "{b}");
}

/// `GET /metrics` after a known run: the Prometheus text says what the run's history says.
#[tokio::test]
async fn metrics_are_scraped_as_prometheus_text_after_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("examples");
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::copy(
        root().join("workflows/resilient-summary.yaml"),
        wf.join("resilient-summary.yaml"),
    )
    .unwrap();
    let dev = Dev::start(&dir.path().join("data"), &wf, &[]);
    let input: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("events/inputs/resilient-summary.json")).unwrap(),
    )
    .unwrap();
    let run = start(
        &dev,
        ACME,
        json!({"workflow": "resilient-summary", "input": input}),
    )
    .await;
    until_status(&dev, ACME, &run, &["succeeded"]).await;
    let (_, events) = get(&dev, ACME, &format!("/v1/runs/{run}/events")).await;
    let count = |kind: &str| {
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .count() as f64
    };

    // No API key: like /healthz.
    let r = client().get(dev.at("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    // name{labels} value → the sum over the series whose labels include all of `with`.
    let sum = |name: &str, with: &[&str]| -> f64 {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(series, _)| {
                series.split('{').next() == Some(name) && with.iter().all(|w| series.contains(w))
            })
            .map(|(_, v)| v.parse::<f64>().unwrap())
            .sum()
    };
    let wf_label = r#"workflow="resilient-summary""#;
    assert_eq!(
        sum("switchyard_runs_started_total", &[wf_label]),
        1.0,
        "{text}"
    );
    assert_eq!(
        sum(
            "switchyard_runs_ended_total",
            &[wf_label, r#"outcome="succeeded""#, r#"error_class="none""#]
        ),
        1.0
    );
    assert_eq!(
        sum("switchyard_attempts_total", &[wf_label]),
        count("step_started")
    );
    assert_eq!(
        sum(
            "switchyard_retries_total",
            &[wf_label, r#"error_class="transient""#]
        ),
        count("step_retry_scheduled")
    );
    assert_eq!(
        sum(
            "switchyard_fallbacks_total",
            &[
                r#"from_model="local/template-generator""#,
                r#"to_model="local/extractive-summarizer""#
            ]
        ),
        1.0
    );
    assert_eq!(
        sum(
            "switchyard_steps_ended_total",
            &[r#"step="summarize""#, r#"outcome="succeeded""#]
        ),
        1.0
    );
    assert_eq!(
        sum("switchyard_run_duration_ms_count", &[wf_label]),
        1.0,
        "one run's duration in the histogram"
    );
    assert!(sum("switchyard_queue_lag_ms_count", &[]) >= 1.0);
    assert!(!text.contains(&run), "a run id is never a label");
}

const OPS: &str = "ops-key-0123456789abcdef";

/// Operator routes: only an operator key opens them (a tenant key gets 403); a notification
/// that gave up is listed with its run, shown with its body, and redriven to a receiver that
/// is back, which gets it once more with the same `webhook-id`. `switchyard dlq` sees the
/// same letter through the API (`--api`) and in the data dir.
#[tokio::test]
async fn dead_letters_are_listed_shown_and_redriven_by_an_operator_only() {
    let dir = tempfile::tempdir().unwrap();
    // Six attempts fail (1 + 2 + 4 + 8 + 16 s apart), then the letter is dead; the redriven
    // delivery is accepted.
    let receiver = Receiver::start(dir.path(), "503,503,503,503,503,503,200");
    let dev = Dev::start(
        &dir.path().join("data"),
        &workflows(dir.path()),
        &[
            ("SWITCHYARD_CALLBACK_SECRET", SECRET),
            ("SWITCHYARD_ALLOW_PRIVATE_CALLBACKS", "1"),
            ("SWITCHYARD_OPERATOR_KEYS", OPS),
        ],
    );
    let list = "/v1/ops/dead-letters";
    let r = client().get(dev.at(list)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let (s, body) = get(&dev, ACME, list).await;
    assert_eq!((s, code(&body)), (StatusCode::FORBIDDEN, "forbidden"));
    let (s, _) = get(&dev, "not-a-key-at-all-0000", list).await;
    assert_eq!(s, 401);
    let (s, _) = get(&dev, OPS, "/v1/runs").await;
    assert_eq!(s, 401, "an operator key is not a tenant's key");
    let (s, body) = get(&dev, OPS, list).await;
    assert_eq!((s, body), (StatusCode::OK, json!({"dead_letters": []})));
    let (s, body) = get(&dev, OPS, &format!("{list}?queue=inbox")).await;
    assert_eq!((s, code(&body)), (StatusCode::BAD_REQUEST, "bad_request"));
    assert_eq!(body["error"]["field"], "queue");
    for bad in [
        json!({}),
        json!({"all": true, "ids": ["x"]}),
        json!({"ids": []}),
    ] {
        let (s, _) = post(&dev, OPS, &format!("{list}/redrive"), &bad).await;
        assert_eq!(s, 400, "{bad}");
    }
    let (s, _) = post(
        &dev,
        ACME,
        &format!("{list}/redrive"),
        &json!({"all": true}),
    )
    .await;
    assert_eq!(s, 403);

    let hook = format!("{}/hook", receiver.url);
    let run = start(
        &dev,
        ACME,
        json!({"workflow": "quick", "input": {"text": "hi"}, "callback_url": hook}),
    )
    .await;
    until_status(&dev, ACME, &run, &["succeeded"]).await;
    let t0 = Instant::now();
    let letter = loop {
        let (_, body) = get(&dev, OPS, &format!("{list}?queue=notify")).await;
        if let Some(d) = body["dead_letters"].as_array().and_then(|a| a.first()) {
            break d.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{:?}",
            receiver.deliveries()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(receiver.deliveries().len(), 6);
    assert_eq!(letter["queue"], "notify");
    assert_eq!(letter["run_id"], run.as_str());
    assert_eq!(letter["tenant"], "acme");
    assert_eq!(letter["workflow"], "quick");
    assert_eq!(letter["run_status"], "succeeded");
    assert_eq!(letter["step"], "a");
    assert_eq!(letter["receive_count"], 6);
    assert!(
        letter["message"]
            .as_str()
            .unwrap()
            .starts_with("notification run.succeeded"),
        "{letter}"
    );
    assert!(letter.get("body").is_none());
    let id = letter["id"].as_str().unwrap().to_string();
    let (s, shown) = get(&dev, OPS, &format!("{list}/{id}")).await;
    assert_eq!(s, 200);
    assert!(shown["body"].as_str().unwrap().contains(&run), "{shown}");
    let (s, _) = get(&dev, OPS, &format!("{list}/nope")).await;
    assert_eq!(s, 404);
    let (s, _) = get(&dev, OPS, &format!("{list}?queue=work")).await;
    assert_eq!(s, 200);

    // The CLI sees it through the API and in the data dir.
    let api = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["dlq", "list", "--api", &dev.url])
        .env("SWITCHYARD_OPERATOR_KEY", OPS)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&api.stdout);
    assert!(api.status.success(), "{text}");
    assert!(text.contains(&id) && text.contains(&run), "{text}");
    let local = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["dlq", "show", &id, "--json", "--data-dir"])
        .arg(&dev.data)
        .output()
        .unwrap();
    assert!(local.status.success());
    let doc: Value = serde_json::from_slice(&local.stdout).unwrap();
    assert_eq!(doc["run_id"], run.as_str());
    let missing_key = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["dlq", "list", "--api", &dev.url])
        .env_remove("SWITCHYARD_OPERATOR_KEY")
        .output()
        .unwrap();
    assert_eq!(missing_key.status.code(), Some(2));

    let (s, done) = post(
        &dev,
        OPS,
        &format!("{list}/redrive"),
        &json!({"queue": "notify", "ids": [id]}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(done, json!({"work": 0, "notify": 1, "not_found": []}));
    let t1 = Instant::now();
    while receiver.deliveries().len() < 7 {
        assert!(t1.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = receiver.deliveries();
    assert_eq!(d[6]["status_answered"], 200);
    assert_eq!(
        d[6]["webhook_id"], d[0]["webhook_id"],
        "the same notification"
    );
    let (_, body) = get(&dev, OPS, list).await;
    assert_eq!(body, json!({"dead_letters": []}));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.deliveries().len(), 7, "delivered once");
}

/// `POST /v1/runs/{id}/rerun`: refused while the run is open, found only by its tenant, a new
/// run linked both ways once it has ended; the same Idempotency-Key answers the same rerun;
/// the bulk route reruns each failed run once.
#[tokio::test]
async fn a_rejected_run_is_rerun_through_the_api_once() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(&dir.path().join("data"), &workflows(dir.path()), &[]);
    let run = start(
        &dev,
        ACME,
        json!({"workflow": "gate", "input": {"title": "Autumn"}}),
    )
    .await;
    until_status(&dev, ACME, &run, &["waiting"]).await;
    let rerun_path = format!("/v1/runs/{run}/rerun");
    let (s, b) = post(&dev, ACME, &rerun_path, &json!({})).await;
    assert_eq!((s.as_u16(), code(&b)), (409, "conflict"), "{b}");
    let (s, _) = post(
        &dev,
        ACME,
        &format!("/v1/runs/{run}/approvals/review"),
        &json!({"decision": "reject"}),
    )
    .await;
    assert_eq!(s, 200);
    until_status(&dev, ACME, &run, &["failed"]).await;

    let (s, b) = post(&dev, GLOBEX, &rerun_path, &json!({})).await;
    assert_eq!(
        (s.as_u16(), code(&b)),
        (404, "not_found"),
        "another tenant's run"
    );
    let (s, b) = post(&dev, ACME, &rerun_path, &json!({"from": "nope"})).await;
    assert_eq!((s.as_u16(), code(&b)), (400, "bad_request"), "{b}");
    assert_eq!(b["error"]["field"], "from");
    let (s, b) = post(&dev, ACME, &rerun_path, &json!({"frm": "review"})).await;
    assert_eq!(s.as_u16(), 400, "unknown fields are refused: {b}");

    let send = |key: &'static str| {
        client()
            .post(dev.at(&rerun_path))
            .bearer_auth(ACME)
            .header("idempotency-key", key)
            .json(&json!({"input": {"title": "Autumn, again"}}))
            .send()
    };
    let first = send("rerun-1").await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["rerun_of"], run.as_str());
    assert_eq!(first["from"], "review");
    let again = send("rerun-1").await.unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["run_id"], first["run_id"], "one rerun per key");
    let new = first["run_id"].as_str().unwrap().to_string();
    let doc = until_status(&dev, ACME, &new, &["waiting"]).await;
    assert_eq!(doc["rerun_of"], json!({"run_id": run, "from": "review"}));
    let (_, old) = get(&dev, ACME, &format!("/v1/runs/{run}")).await;
    assert_eq!(old["reruns"], json!([new]));

    // Bulk: the failed run has a rerun already, so nothing more is started.
    let (s, report) = post(&dev, ACME, "/v1/runs/rerun", &json!({"since": "1h"})).await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["matched"], 1);
    assert_eq!(report["rerun"], json!([]));
    let (s, b) = post(
        &dev,
        ACME,
        "/v1/runs/rerun",
        &json!({"status": "succeeded"}),
    )
    .await;
    assert_eq!(
        (s.as_u16(), b["error"]["field"].as_str()),
        (400, Some("status"))
    );
    // Globex has no failed runs: its bulk rerun finds nothing of Acme's.
    let (_, report) = post(&dev, GLOBEX, "/v1/runs/rerun", &json!({"dry_run": true})).await;
    assert_eq!(report["matched"], 0, "{report}");
}
