//! The one HTTP sender every hosted-API adapter shares.
//!
//! Adapters are pure: `to_request` builds an [`HttpRequest`] (method, URL, headers, body) and
//! `from_response` reads an [`HttpResponse`]. Only [`Sender::send`] does I/O, with explicit
//! connect and request timeouts (never the library defaults), and it classifies transport
//! failures once, here. Status codes are classified by [`crate::classify`].

use crate::tape::{Key, Mode, Tape};
use std::time::Duration;
use switchyard_core::{ErrorClass, StepError};

pub use crate::wire::{HttpRequest, HttpResponse};

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
///
/// With a [`Tape`] it records every exchange, or answers from the recording without network
/// (`crate::tape`).
#[derive(Clone)]
pub struct Sender {
    client: std::sync::Arc<tokio::sync::OnceCell<reqwest::Client>>,
    timeouts: Timeouts,
    tape: Option<std::sync::Arc<Tape>>,
}

impl Sender {
    pub fn new(timeouts: Timeouts) -> Result<Sender, StepError> {
        Ok(Sender {
            client: std::sync::Arc::new(tokio::sync::OnceCell::new()),
            timeouts,
            tape: None,
        })
    }

    /// This sender recording into, or replaying from, `tape`.
    pub fn with_tape(self, tape: Option<Tape>) -> Sender {
        Sender {
            tape: tape.map(std::sync::Arc::new),
            ..self
        }
    }

    /// Whether exchanges are recorded or replayed.
    pub fn taped(&self) -> bool {
        self.tape.is_some()
    }

    /// Whether calls are answered from a recording (no network, no keys needed).
    pub fn replaying(&self) -> bool {
        self.tape.as_ref().is_some_and(|t| t.mode() == Mode::Replay)
    }

    /// Sends a model call's request: with a tape, `key` (the normalized request's) names its
    /// cassette. Without a key, the request is keyed by method and URL.
    pub async fn send_keyed(
        &self,
        key: Option<Key>,
        req: HttpRequest,
        timeout: Option<Duration>,
    ) -> Result<HttpResponse, StepError> {
        let capturing = crate::tape::capturing();
        if self.tape.is_none() && !capturing {
            return self.send_http(req, timeout).await;
        }
        let key = key.unwrap_or_else(|| Key::for_http(&req));
        let sent = req.clone();
        let resp = match &self.tape {
            Some(tape)
                if tape.mode() == Mode::Replay
                    || (tape.mode() == Mode::Patch && tape.has(&key)) =>
            {
                tape.replay(&key)?
            }
            tape => {
                let resp = self.send_http(req, timeout).await?;
                if let Some(tape) = tape {
                    tape.record(&key, &sent, &resp);
                }
                resp
            }
        };
        // A run that keeps its tape keeps every answer its call got, however it came.
        if capturing {
            crate::tape::keep(&key, &sent, &resp);
        }
        Ok(resp)
    }

    /// The client, built once (clones of this sender share it).
    async fn client(&self) -> Result<&reqwest::Client, StepError> {
        self.client
            .get_or_try_init(|| async {
                crate::outbound::client_builder()
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
    /// With a tape, it is recorded or replayed keyed by method and URL (a download).
    pub async fn send(
        &self,
        req: HttpRequest,
        timeout: Option<Duration>,
    ) -> Result<HttpResponse, StepError> {
        self.send_keyed(None, req, timeout).await
    }

    /// The network exchange itself.
    async fn send_http(
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
        let body = read_capped(resp, MAX_RESPONSE_BYTES).await?;
        Ok(HttpResponse {
            status,
            headers,
            body,
            request: called,
        })
    }
}

/// The body, read chunk by chunk and abandoned as soon as it passes `cap`: a runaway (or
/// never-ending) body costs at most the cap in memory and transfer, and fails at once rather
/// than at the request timeout. A declared length over the cap is refused before any read.
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, StepError> {
    let too_large = || {
        StepError::new(
            ErrorClass::Malformed,
            format!("response body over {cap} bytes"),
        )
    };
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `METHOD /path` of a URL: no scheme, host, user info, query or fragment.
pub fn request_line(method: &str, url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{method} {}", u.path()),
        Err(_) => method.to_string(),
    }
}

/// Transport failures: our deadline is `timeout`, a refused or reset connection `transient`.
/// The message names the kind of failure, and the host a connection failed to (an output
/// file's host is not the API's); never the URL's path or query, which can carry a key.
fn transport(e: reqwest::Error) -> StepError {
    if e.is_timeout() {
        StepError::new(
            ErrorClass::Timeout,
            "no response within the request timeout",
        )
    } else if e.is_connect() {
        let host = e.url().and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            })
        });
        let to = host.unwrap_or_else(|| "the provider".to_string());
        StepError::new(ErrorClass::Transient, format!("could not connect to {to}"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers one request with `head`, then `body_bytes` bytes, then holds the
    /// connection open without ending the body (as a stuck or hostile upstream would).
    async fn stalling_server(head: &'static str, body_bytes: usize) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            if sock.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b' '; 64 * 1024];
            let mut written = 0;
            while written < body_bytes {
                if sock.write_all(&chunk).await.is_err() {
                    return;
                }
                written += chunk.len();
            }
            // Never finish: only the client can end this exchange early.
            tokio::time::sleep(Duration::from_secs(600)).await;
            drop(sock);
        });
        addr
    }

    /// GETs `addr` with a 120 s request timeout, but fails the test unless the send returns
    /// within `within`: the point of these tests is that the sender does not wait.
    async fn send_within(
        addr: std::net::SocketAddr,
        path: &str,
        within: Duration,
    ) -> Result<HttpResponse, StepError> {
        let sender = Sender::new(Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(120),
        })
        .unwrap();
        let get = HttpRequest::get(format!("http://{addr}{path}"));
        tokio::time::timeout(within, sender.send(get, None))
            .await
            .unwrap_or_else(|_| panic!("no answer within {within:?}"))
    }

    /// Past the cap the send fails at once, long before the request timeout: had it read on to
    /// the end of the body it would wait for a server that never ends it.
    #[tokio::test]
    async fn an_endless_body_over_the_cap_fails_at_the_cap() {
        let addr = stalling_server(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n",
            MAX_RESPONSE_BYTES + 256 * 1024,
        )
        .await;
        let started = Instant::now();
        let err = send_within(addr, "/big", Duration::from_secs(30))
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Malformed);
        assert_eq!(
            err.message,
            format!("response body over {MAX_RESPONSE_BYTES} bytes")
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    /// A declared length over the cap is refused before reading any of the body.
    #[tokio::test]
    async fn a_declared_length_over_the_cap_is_refused_unread() {
        let addr = stalling_server(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 99999999999\r\n\r\n",
            0,
        )
        .await;
        let err = send_within(addr, "/big", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Malformed);
        assert!(err.message.starts_with("response body over"), "{err}");
    }

    /// A body under the cap is read whole, and its declared length ends it: the sender does
    /// not wait for the connection to close.
    #[tokio::test]
    async fn a_small_body_is_read_whole() {
        let addr = stalling_server(
            "HTTP/1.1 200 OK\r\nx-request-id: r1\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
            0,
        )
        .await;
        let resp = send_within(addr, "/v1/x?key=secret", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("X-Request-Id"), Some("r1"));
        assert_eq!(resp.json(), Some(serde_json::json!({"ok": true})));
        assert_eq!(resp.request, "GET /v1/x");
    }

    /// A host nobody answers on is named (the failing host may not be the API's: an output
    /// file's), its path and query are not.
    #[tokio::test]
    async fn a_refused_connection_names_the_host() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = send_within(closed, "/files/x?sig=secret", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient);
        assert_eq!(err.message, format!("could not connect to {closed}"));
    }
}
