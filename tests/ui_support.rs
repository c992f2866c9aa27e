//! What the console's tests share (tests/ui.rs over plain HTTP, tests/ui_browser.rs in
//! Chromium): a `switchyard dev` with two tenants' keys and an operator key, a client that
//! signs in through `POST /ui/login` and carries the session cookie by hand, and a
//! notification receiver that fails a given number of deliveries before it takes one.

#![allow(dead_code)] // each test binary uses its part

use axum::http::{HeaderMap, StatusCode as AxStatus};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ACME: &str = "key-acme-0123456789";
pub const GLOBEX: &str = "key-globex-0123456789";
pub const OPS: &str = "key-operator-0123456789";
pub const SECRET: &str = "whsec_dGVzdC1jYWxsYmFjay1zZWNyZXQtMTIzNA==";
pub const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The CSRF token of a key, computed here from the documented formula (not by the server's
/// code): hex SHA-256 of `"switchyard-csrf\n" + key`.
pub fn csrf(key: &str) -> String {
    hex::encode(Sha256::digest(format!("switchyard-csrf\n{key}").as_bytes()))
}

/// A running `switchyard dev` (killed when dropped).
pub struct Dev {
    child: Child,
    pub url: String,
    pub data: PathBuf,
}

impl Dev {
    pub fn start(data: &Path, workflows: &Path, env: &[(&str, &str)]) -> Dev {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.args(["dev", "--addr", "127.0.0.1:0", "--workers", "4"])
            .arg("--data-dir")
            .arg(data)
            .arg("--workflows")
            .arg(workflows)
            .env(
                "SWITCHYARD_API_KEYS",
                format!("{ACME}:acme,{GLOBEX}:globex"),
            )
            .env("SWITCHYARD_OPERATOR_KEYS", OPS)
            .env_remove("SWITCHYARD_PUBLIC_URL")
            .env_remove("SWITCHYARD_CALLBACK_SECRET")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let url = first
            .strip_prefix("switchyard dev: serving ")
            .unwrap_or_else(|| panic!("unexpected banner: {first}"))
            .to_string();
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Dev {
            child,
            url,
            data: data.to_path_buf(),
        }
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that never follows redirects: the tests look at each 303 and `Set-Cookie`.
pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub async fn api_post(dev: &Dev, key: &str, path: &str, body: &Value) -> (StatusCode, Value) {
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

pub async fn api_get(dev: &Dev, key: &str, path: &str) -> (StatusCode, Value) {
    let r = client()
        .get(dev.at(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn start(dev: &Dev, key: &str, body: Value) -> String {
    let (s, b) = api_post(dev, key, "/v1/runs", &body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    b["run_id"].as_str().unwrap().to_string()
}

/// Polls the run (over the API) until `done(doc)`, for at most `secs` seconds.
pub async fn until(
    dev: &Dev,
    key: &str,
    run: &str,
    secs: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let t0 = Instant::now();
    loop {
        let (s, doc) = api_get(dev, key, &format!("/v1/runs/{run}")).await;
        assert_eq!(s, StatusCode::OK, "{doc}");
        if done(&doc) {
            return doc;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "run {run} never got there: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn until_status(dev: &Dev, key: &str, run: &str, want: &[&str]) -> Value {
    until(dev, key, run, 60, |d| {
        want.contains(&d["status"].as_str().unwrap_or(""))
    })
    .await
}

/// A receiver of notifications: answers 503 to the first `failures` deliveries, then 200;
/// keeps each delivery's `webhook-id`.
pub struct Receiver {
    pub url: String,
    pub ids: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(failures: usize) -> Receiver {
        let ids: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = ids.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap| {
                let seen = seen.clone();
                async move {
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let mut all = seen.lock().unwrap();
                    all.push(id);
                    if all.len() <= failures {
                        AxStatus::SERVICE_UNAVAILABLE
                    } else {
                        AxStatus::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, ids, task }
    }

    pub fn deliveries(&self) -> Vec<String> {
        self.ids.lock().unwrap().clone()
    }

    /// Waits until at least `n` deliveries came.
    pub async fn wait_for(&self, n: usize, secs: u64) {
        let t0 = Instant::now();
        while self.deliveries().len() < n {
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "{} deliveries after {secs} s, wanted {n}",
                self.deliveries().len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The workflows the console tests start: the gate fixture, and `say`, whose output is its
/// input text.
pub fn workflows(dir: &Path) -> PathBuf {
    let wf = dir.join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::copy(
        root().join("tests/fixtures/gate.yaml"),
        wf.join("gate.yaml"),
    )
    .unwrap();
    std::fs::write(
        wf.join("say.yaml"),
        "name: say\nversion: \"1\"\noutput: {said: \"${steps.a.output}\"}\nsteps:\n  - {id: a, kind: transform, value: \"${input.text}\"}\n",
    )
    .unwrap();
    wf
}

/// A run's body for `say`.
pub fn say(text: &str) -> Value {
    json!({"workflow": "say", "input": {"text": text}})
}

/// `application/x-www-form-urlencoded` of some pairs.
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// An answer of the console: status, headers, body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Every `Set-Cookie` of the answer.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }
}

async fn answer(r: reqwest::Response) -> Answer {
    Answer {
        status: r.status(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap_or_default(),
    }
}

/// `GET path` with `cookie` (a `name=value` pair) when given.
pub async fn ui_get(dev: &Dev, cookie: Option<&str>, path: &str) -> Answer {
    let mut req = client().get(dev.at(path));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    answer(req.send().await.unwrap()).await
}

/// `POST path` of a form, with `cookie` when given and extra headers.
pub async fn ui_post(
    dev: &Dev,
    cookie: Option<&str>,
    path: &str,
    pairs: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = client()
        .post(dev.at(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(pairs));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    answer(req.send().await.unwrap()).await
}

/// Signs in through the login form; returns the cookie pair to send back.
pub async fn login(dev: &Dev, key: &str) -> String {
    let a = ui_post(dev, None, "/ui/login", &[("key", key)], &[]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.header("location"), "/ui/runs");
    let c = a
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("sy_console="))
        .expect("no session cookie");
    c.split(';').next().unwrap().to_string()
}
