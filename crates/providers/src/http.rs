//! The one HTTP sender every hosted-API adapter shares.
//!
//! Adapters are pure: `to_request` builds an [`HttpRequest`] (method, URL, headers, body) and
//! `from_response` reads an [`HttpResponse`]. Only [`Sender::send`] does I/O, with explicit
//! connect and request timeouts (never the library defaults), and it classifies transport
//! failures once, here. Status codes are classified by [`crate::classify`].

use std::time::Duration;
use switchyard_core::{ErrorClass, StepError};

/// A request an adapter wants sent. Header values may hold secrets: never log them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl HttpRequest {
    pub fn post_json(url: impl Into<String>, body: &serde_json::Value) -> HttpRequest {
        HttpRequest {
            method: "POST",
            url: url.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: Some(serde_json::to_vec(body).unwrap_or_default()),
        }
    }

    pub fn get(url: impl Into<String>) -> HttpRequest {
        HttpRequest {
            method: "GET",
            url: url.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> HttpRequest {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What was called, for error messages: method and path (`POST /v1/predictions`), never
    /// the host's credentials or the query string (which can carry a key). Empty in tests.
    pub request: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Explicit limits for every call (documented in docs/providers.md).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// Whole request, when the step gives none.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(60),
        }
    }
}

/// Largest response body read (a model answer larger than this is `malformed`).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// The HTTP client every hosted adapter shares. It is built on the first call, not when the
/// sender is made: building it loads the system's CA certificates (milliseconds), which a run
/// of local models only, and a Lambda cold start that never calls a hosted API, should not pay.
#[derive(Clone)]
pub struct Sender {
    client: std::sync::Arc<tokio::sync::OnceCell<reqwest::Client>>,
    timeouts: Timeouts,
}

impl Sender {
    pub fn new(timeouts: Timeouts) -> Result<Sender, StepError> {
        Ok(Sender {
            client: std::sync::Arc::new(tokio::sync::OnceCell::new()),
            timeouts,
        })
    }

    /// The client, built once (clones of this sender share it).
    async fn client(&self) -> Result<&reqwest::Client, StepError> {
        self.client
            .get_or_try_init(|| async {
                reqwest::Client::builder()
                    .connect_timeout(self.timeouts.connect)
                    .timeout(self.timeouts.request)
                    // Provider APIs do not redirect; following one could leak the key to
                    // another host.
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| StepError::new(ErrorClass::Invalid, format!("HTTP client: {e}")))
            })
            .await
    }

    /// Sends a request; `timeout` (the step's attempt timeout) bounds the whole exchange.
    pub async fn send(
        &self,
        req: HttpRequest,
        timeout: Option<Duration>,
    ) -> Result<HttpResponse, StepError> {
        let method = reqwest::Method::from_bytes(req.method.as_bytes()).map_err(|_| {
            StepError::new(ErrorClass::Invalid, format!("bad method {}", req.method))
        })?;
        let mut b = self
            .client()
            .await?
            .request(method, &req.url)
            .timeout(timeout.unwrap_or(self.timeouts.request));
        for (k, v) in &req.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        if let Some(body) = req.body {
            b = b.body(body);
        }
        let called = request_line(req.method, &req.url);
        let resp = b.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let too_large = || {
            StepError::new(
                ErrorClass::Malformed,
                format!("response body over {MAX_RESPONSE_BYTES} bytes"),
            )
        };
        // Refuse a declared length over the cap before reading, and stop reading at the cap
        // otherwise: a runaway body costs at most the cap in memory and transfer.
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
            request: called,
        })
    }
}

/// `METHOD /path` of a URL: no scheme, host, user info, query or fragment.
pub fn request_line(method: &str, url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{method} {}", u.path()),
        Err(_) => method.to_string(),
    }
}

/// Transport failures: our deadline is `timeout`, a refused or reset connection `transient`.
/// The message names the kind of failure only (a URL can carry a key in its query).
fn transport(e: reqwest::Error) -> StepError {
    if e.is_timeout() {
        StepError::new(
            ErrorClass::Timeout,
            "no response within the request timeout",
        )
    } else if e.is_connect() {
        StepError::new(ErrorClass::Transient, "could not connect to the provider")
    } else if e.is_body() || e.is_decode() {
        StepError::new(
            ErrorClass::Transient,
            "the connection failed while reading the response",
        )
    } else if e.is_builder() {
        StepError::new(
            ErrorClass::Invalid,
            "the request could not be built (check the base URL)",
        )
    } else {
        StepError::new(ErrorClass::Transient, "the request failed in transit")
    }
}
