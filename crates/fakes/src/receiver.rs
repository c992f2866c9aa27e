//! A webhook receiver for tests: a tiny server on `127.0.0.1` that records every POST it gets
//! (any path) and answers 204, so a test can hand its URL to an adapter as the callback URL and
//! then look at what the fake Replicate delivered.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Router;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One delivery as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedWebhook {
    /// Path and query as requested (`/webhook?run_id=...`).
    pub path_and_query: String,
    /// Headers, lower-case names.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl ReceivedWebhook {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// Checks the Standard Webhooks signature (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`) with `secret` at `now_secs`.
    pub fn verify(
        &self,
        secret: &str,
        now_secs: u64,
    ) -> Result<(), switchyard_core::webhook::SignatureError> {
        switchyard_core::webhook::verify(
            secret,
            self.header("webhook-id").unwrap_or(""),
            self.header("webhook-timestamp").unwrap_or(""),
            self.header("webhook-signature").unwrap_or(""),
            &self.body,
            now_secs,
        )
    }
}

/// Records webhook deliveries; stops when dropped.
pub struct WebhookReceiver {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<ReceivedWebhook>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn record(
    State(tx): State<mpsc::UnboundedSender<ReceivedWebhook>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let headers = headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_ascii_lowercase(), v.to_string()))
        })
        .collect();
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| uri.path().to_string());
    let _ = tx.send(ReceivedWebhook {
        path_and_query,
        headers,
        body: body.to_vec(),
    });
    StatusCode::NO_CONTENT
}

impl WebhookReceiver {
    /// Binds `127.0.0.1:0` and starts recording.
    pub async fn start() -> std::io::Result<WebhookReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new().fallback(record).with_state(tx);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(WebhookReceiver {
            addr,
            rx,
            stop: Some(stop),
        })
    }

    /// `http://127.0.0.1:PORT/webhook`; any path on the receiver works.
    pub fn url(&self) -> String {
        format!("http://{}/webhook", self.addr)
    }

    /// The next delivery, waiting at most `within`.
    pub async fn next(&mut self, within: Duration) -> Option<ReceivedWebhook> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
