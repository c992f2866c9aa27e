//! Helpers shared by the fake-server tests.
#![allow(dead_code)] // each test uses a part of the helpers

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post as post_route;
use axum::Router;
use serde_json::Value;
use std::time::Duration;
use switchyard_fakes::{FakeConfig, FakeServer};
use tokio::sync::mpsc;

/// A status, the response headers (lower-case names) and the body text.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Reply {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut b = client().request(m, url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if let Some(body) = body {
        b = b
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let r = b.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    Reply {
        status,
        headers,
        text,
    }
}

pub async fn post(url: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    send("POST", url, headers, Some(body)).await
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send("GET", url, headers, None).await
}

pub async fn server() -> FakeServer {
    FakeServer::start(FakeConfig::default()).await.unwrap()
}

pub const ANTHROPIC_HEADERS: [(&str, &str); 2] = [
    ("x-api-key", "sk-ant-test-key"),
    ("anthropic-version", "2023-06-01"),
];

pub const SIGV4: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub fn bedrock_headers() -> Vec<(&'static str, &'static str)> {
    vec![("authorization", SIGV4), ("x-amz-date", "20240101T000000Z")]
}

pub const BEARER: [(&str, &str); 1] = [("authorization", "Bearer r8_test_token_0123456789")];

/// One webhook delivery as the test receiver saw it.
#[derive(Debug)]
pub struct Delivery {
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Delivery {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn hook(
    State(tx): State<mpsc::UnboundedSender<Delivery>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let _ = tx.send(Delivery { uri, headers, body });
    StatusCode::NO_CONTENT
}

/// A small webhook receiver: its URL (`http://127.0.0.1:PORT/hook`) and what it receives.
pub async fn receiver() -> (String, mpsc::UnboundedReceiver<Delivery>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/hook", post_route(hook))
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), rx)
}

/// The next delivery, waiting at most `ms`.
pub async fn next_delivery(
    rx: &mut mpsc::UnboundedReceiver<Delivery>,
    ms: u64,
) -> Option<Delivery> {
    tokio::time::timeout(Duration::from_millis(ms), rx.recv())
        .await
        .ok()
        .flatten()
}

/// Polls `GET url` until the prediction's status is terminal (bounded).
pub async fn wait_terminal(url: &str) -> Value {
    for _ in 0..400 {
        let r = get(url, &BEARER).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let v = r.json();
        if matches!(
            v["status"].as_str(),
            Some("succeeded" | "failed" | "canceled")
        ) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("prediction at {url} did not finish");
}
