//! A fault-injecting HTTP/1.1 reverse proxy for the AWS emulator (moto): point a process's
//! `AWS_ENDPOINT_URL` at [`FaultProxy::url`] and every DynamoDB, SQS, S3 (path-style) and
//! Secrets Manager call goes through it to the upstream, so a test can make a fraction of them
//! fail the ways AWS calls fail in production.
//!
//! While enabled ([`FaultProxy::set_enabled`]), each request draws from a seeded RNG
//! ([`FaultDice`]) and gets, with the configured probabilities ([`FaultRates`]):
//!
//! | kind | what the proxy does | what the client sees | did the call happen? |
//! |---|---|---|---|
//! | `error_before` | answers 500 itself, `x-amzn-ErrorType: InternalFailure`, body `{"__type":"InternalFailure","message":"injected"}` | a retryable 500 | no |
//! | `lost_answer` | forwards the call and reads the whole answer, then either closes the connection or answers the same 500 (a coin toss) | a connection error or a 500 | **yes** |
//! | `dropped_connection` | closes the connection without forwarding or answering | a connection error (EOF or reset before any answer) | no |
//!
//! Otherwise the request is forwarded unchanged (method, path and query, headers except the
//! hop-by-hop ones and `Host`, which names the upstream; body) and the upstream's answer is
//! returned unchanged. The emulator does not check SigV4 signatures, so rewriting `Host` is
//! harmless; queue URLs moto hands out then name the upstream, which the SDK never dials (it
//! sends every call to its endpoint).
//!
//! The proxy is a real socket: hyper serves each accepted connection, and a fault that closes
//! the connection drops it mid-request, so a client in another process gets exactly what a
//! broken network gives it. Counters ([`FaultCounts`]) say how many requests came in, how many
//! were forwarded, and how many faults of each kind were injected, also per AWS service (read
//! from the SigV4 credential scope) and per operation; [`FaultProxy::fault_log`] lists each
//! injected fault with its time, kind and operation.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// The body of an injected error, in the shape AWS JSON services use.
pub const INJECTED_ERROR_BODY: &str = r#"{"__type":"InternalFailure","message":"injected"}"#;

/// How long the proxy waits for the upstream's answer before answering 502 itself.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);

/// The probability of each fault per request, while the proxy is enabled. Their sum is the
/// probability that a request is faulted at all (capped at 1).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct FaultRates {
    /// Answer 500 without forwarding.
    pub error_before: f64,
    /// Forward (the call happens), then lose the answer.
    pub lost_answer: f64,
    /// Close the connection without forwarding or answering.
    pub dropped_connection: f64,
}

impl FaultRates {
    /// No faults.
    pub const NONE: FaultRates = FaultRates {
        error_before: 0.0,
        lost_answer: 0.0,
        dropped_connection: 0.0,
    };

    /// `total` split evenly over the three kinds (0.06 → 2 % each).
    pub fn even(total: f64) -> FaultRates {
        let each = total / 3.0;
        FaultRates {
            error_before: each,
            lost_answer: each,
            dropped_connection: each,
        }
    }

    /// The probability that a request is faulted at all.
    pub fn total(&self) -> f64 {
        self.error_before.max(0.0) + self.lost_answer.max(0.0) + self.dropped_connection.max(0.0)
    }
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// 500 without forwarding.
    ErrorBefore,
    /// Forwarded, then the answer is lost: the connection is closed (`close`) or a 500 is sent.
    LostAnswer { close: bool },
    /// The connection is closed without forwarding or answering.
    DroppedConnection,
}

/// A deterministic source of fault decisions: the same seed and rates give the same sequence
/// of decisions (SplitMix64; which request gets which decision depends on the order in which
/// requests arrive).
#[derive(Debug, Clone)]
pub struct FaultDice {
    state: u64,
    rates: FaultRates,
}

impl FaultDice {
    pub fn new(seed: u64, rates: FaultRates) -> FaultDice {
        FaultDice { state: seed, rates }
    }

    pub fn set_rates(&mut self, rates: FaultRates) {
        self.rates = rates;
    }

    pub fn rates(&self) -> FaultRates {
        self.rates
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The decision for the next request: `None` forwards it untouched.
    pub fn roll(&mut self) -> Option<Fault> {
        let r = self.rates;
        let u = self.next_f64();
        let before = r.error_before.max(0.0);
        let lost = before + r.lost_answer.max(0.0);
        let dropped = lost + r.dropped_connection.max(0.0);
        if u < before {
            Some(Fault::ErrorBefore)
        } else if u < lost {
            Some(Fault::LostAnswer {
                close: self.next_u64() & 1 == 1,
            })
        } else if u < dropped {
            Some(Fault::DroppedConnection)
        } else {
            None
        }
    }
}

/// Requests and faults of one AWS service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServiceCounts {
    pub requests: u64,
    pub faults: u64,
}

/// What the proxy did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FaultCounts {
    /// Every request received (faulted or not).
    pub requests: u64,
    /// Requests sent to the upstream (including the `lost_answer` ones).
    pub forwarded: u64,
    pub error_before: u64,
    pub lost_answer: u64,
    /// Of `lost_answer`: how many were lost by closing the connection (the rest got a 500).
    pub lost_answer_closed: u64,
    pub dropped_connection: u64,
    /// Forwarded requests the upstream did not answer (the client got a 502).
    pub upstream_errors: u64,
    /// Per AWS service (`dynamodb`, `sqs`, `s3`, `secretsmanager`, or `unknown`), from the
    /// SigV4 credential scope.
    pub by_service: BTreeMap<String, ServiceCounts>,
    /// Per operation: `dynamodb PutItem`, `sqs ReceiveMessage` (from `X-Amz-Target`), `s3 PUT
    /// object` (method, and whether the path names an object or a bucket).
    pub by_operation: BTreeMap<String, ServiceCounts>,
}

/// One injected fault, for a test's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultRecord {
    /// Milliseconds since the Unix epoch, when the request came in.
    pub at_ms: u64,
    /// `error_before`, `lost_answer_closed`, `lost_answer_500` or `dropped_connection`.
    pub kind: &'static str,
    /// As in [`FaultCounts::by_operation`].
    pub operation: String,
}

/// At most this many [`FaultRecord`]s are kept (the oldest first).
pub const FAULT_LOG_CAP: usize = 100_000;

impl FaultCounts {
    /// Faults injected, all kinds.
    pub fn faults(&self) -> u64 {
        self.error_before + self.lost_answer + self.dropped_connection
    }
}

struct State {
    dice: FaultDice,
    counts: FaultCounts,
    log: Vec<FaultRecord>,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    enabled: AtomicBool,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the request and decides its fate.
    fn admit(&self, service: &str, operation: String) -> Option<Fault> {
        let enabled = self.enabled.load(Ordering::SeqCst);
        let mut st = self.state();
        let fault = if enabled { st.dice.roll() } else { None };
        let c = &mut st.counts;
        c.requests += 1;
        match fault {
            Some(Fault::ErrorBefore) => c.error_before += 1,
            Some(Fault::LostAnswer { close }) => {
                c.lost_answer += 1;
                c.lost_answer_closed += u64::from(close);
            }
            Some(Fault::DroppedConnection) => c.dropped_connection += 1,
            None => {}
        }
        let faulted = u64::from(fault.is_some());
        let s = c.by_service.entry(service.to_string()).or_default();
        s.requests += 1;
        s.faults += faulted;
        let o = c.by_operation.entry(operation.clone()).or_default();
        o.requests += 1;
        o.faults += faulted;
        if let Some(f) = fault {
            if st.log.len() < FAULT_LOG_CAP {
                let at_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let kind = match f {
                    Fault::ErrorBefore => "error_before",
                    Fault::LostAnswer { close: true } => "lost_answer_closed",
                    Fault::LostAnswer { close: false } => "lost_answer_500",
                    Fault::DroppedConnection => "dropped_connection",
                };
                st.log.push(FaultRecord {
                    at_ms,
                    kind,
                    operation,
                });
            }
        }
        fault
    }

    fn count(&self, f: impl FnOnce(&mut FaultCounts)) {
        f(&mut self.state().counts);
    }
}

/// A fault-injecting reverse proxy on `127.0.0.1` in front of one upstream. Starts disabled
/// (forwarding everything); stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Binds `127.0.0.1:0` and proxies to `upstream` (e.g. `http://127.0.0.1:5055`), injecting
    /// faults at `rates` once enabled, decided by an RNG seeded with `seed`.
    pub async fn start(
        upstream: &str,
        rates: FaultRates,
        seed: u64,
    ) -> std::io::Result<FaultProxy> {
        let upstream = upstream.trim_end_matches('/').to_string();
        if !(upstream.starts_with("http://") || upstream.starts_with("https://")) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("upstream `{upstream}` is not an http(s) URL"),
            ));
        }
        let client = switchyard_providers::outbound::client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(UPSTREAM_TIMEOUT)
            .build()
            .map_err(std::io::Error::other)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            client,
            enabled: AtomicBool::new(false),
            state: Mutex::new(State {
                dice: FaultDice::new(seed, rates),
                counts: FaultCounts::default(),
                log: Vec::new(),
            }),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
        Ok(FaultProxy {
            addr,
            shared,
            stop,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`: the endpoint to give the client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream requests are forwarded to.
    pub fn upstream(&self) -> &str {
        &self.shared.upstream
    }

    /// Turns fault injection on or off; requests already decided keep their fate.
    pub fn set_enabled(&self, on: bool) {
        self.shared.enabled.store(on, Ordering::SeqCst);
    }

    pub fn enabled(&self) -> bool {
        self.shared.enabled.load(Ordering::SeqCst)
    }

    /// Changes the rates; the RNG's sequence continues.
    pub fn set_rates(&self, rates: FaultRates) {
        self.shared.state().dice.set_rates(rates);
    }

    pub fn rates(&self) -> FaultRates {
        self.shared.state().dice.rates()
    }

    /// The counters so far.
    pub fn counts(&self) -> FaultCounts {
        self.shared.state().counts.clone()
    }

    /// Every fault injected so far, oldest first (at most [`FAULT_LOG_CAP`]).
    pub fn fault_log(&self) -> Vec<FaultRecord> {
        self.shared.state().log.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, shared.clone(), stop.clone()));
            }
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "fault proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one client connection (keep-alive: many requests) until the client closes it, a
/// fault closes it, or the proxy stops. Dropping hyper's connection future closes the socket
/// with no answer written: EOF (or a reset, with unread request bytes) mid-request.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let kill = Arc::new(Notify::new());
    let svc_kill = kill.clone();
    let service =
        hyper::service::service_fn(move |req| handle(shared.clone(), svc_kill.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "fault proxy: connection ended with an error");
            }
        }
        _ = kill.notified() => {}
        _ = stop.changed() => {}
    }
}

type Answer = Response<Full<Bytes>>;

/// Closes the request's connection: it never answers.
async fn close(kill: &Notify) -> Result<Answer, Infallible> {
    kill.notify_one();
    std::future::pending().await
}

async fn handle(
    shared: Arc<Shared>,
    kill: Arc<Notify>,
    req: Request<Incoming>,
) -> Result<Answer, Infallible> {
    let service = service_of(req.headers());
    let fault = shared.admit(service, operation_of(service, &req));
    match fault {
        Some(Fault::DroppedConnection) => return close(&kill).await,
        Some(Fault::ErrorBefore) => return Ok(injected_error()),
        Some(Fault::LostAnswer { .. }) | None => {}
    }
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        // The client went away mid-body: nothing to forward or answer.
        Err(_) => return close(&kill).await,
    };
    shared.count(|c| c.forwarded += 1);
    let answer = match forward(&shared, parts, body).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "fault proxy: upstream call failed");
            shared.count(|c| c.upstream_errors += 1);
            error_answer(
                StatusCode::BAD_GATEWAY,
                "ServiceUnavailable",
                &format!("fault proxy: upstream call failed: {e}"),
            )
        }
    };
    match fault {
        Some(Fault::LostAnswer { close: true }) => close(&kill).await,
        Some(Fault::LostAnswer { close: false }) => Ok(injected_error()),
        _ => Ok(answer),
    }
}

/// The AWS service a SigV4-signed request is for: the service of its credential scope
/// (`Credential=AKID/DATE/REGION/SERVICE/aws4_request`), or of a presigned URL's query.
fn service_of(headers: &HeaderMap) -> &'static str {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let scope = auth
        .split("Credential=")
        .nth(1)
        .and_then(|s| s.split([',', ' ']).next())
        .unwrap_or_default();
    match scope.split('/').nth(3).unwrap_or_default() {
        "dynamodb" => "dynamodb",
        "sqs" => "sqs",
        "s3" => "s3",
        "secretsmanager" => "secretsmanager",
        "sts" => "sts",
        _ => "unknown",
    }
}

/// The operation, for the counters: the `X-Amz-Target` of a JSON-protocol call (DynamoDB,
/// SQS, Secrets Manager), else the method and whether a path-style URL names an object or a
/// bucket (S3).
fn operation_of(service: &str, req: &Request<Incoming>) -> String {
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok());
    match target {
        Some(t) => format!("{service} {}", t.rsplit('.').next().unwrap_or(t)),
        None => {
            let segments = req
                .uri()
                .path()
                .split('/')
                .filter(|p| !p.is_empty())
                .count();
            let what = if segments >= 2 { "object" } else { "bucket" };
            format!("{service} {} {what}", req.method())
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the proxy sets itself.
fn passes(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "expect"
            | "content-length"
    )
}

async fn forward(
    shared: &Shared,
    parts: hyper::http::request::Parts,
    body: Bytes,
) -> Result<Answer, reqwest::Error> {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if passes(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let resp = shared
        .client
        .request(parts.method, format!("{}{path}", shared.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await?;
    let status = resp.status();
    let mut out_headers = HeaderMap::new();
    for (name, value) in resp.headers() {
        // Content-Length is kept: it is the body's length, except on a HEAD answer, where it
        // is the object's and hyper sends no body.
        if passes(name) || name == header::CONTENT_LENGTH {
            out_headers.append(name.clone(), value.clone());
        }
    }
    let bytes = resp.bytes().await?;
    let mut answer = Response::new(Full::new(bytes));
    *answer.status_mut() = status;
    *answer.headers_mut() = out_headers;
    Ok(answer)
}

fn error_answer(status: StatusCode, kind: &str, message: &str) -> Answer {
    let body = serde_json::json!({"__type": kind, "message": message}).to_string();
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    let h = answer.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    if let Ok(v) = HeaderValue::from_str(kind) {
        h.insert("x-amzn-errortype", v);
    }
    answer
}

/// The injected 500: `InternalFailure`, the error every AWS service may answer and every SDK
/// retries.
fn injected_error() -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from_static(
        INJECTED_ERROR_BODY.as_bytes(),
    )));
    *answer.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    let h = answer.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    h.insert(
        "x-amzn-errortype",
        HeaderValue::from_static("InternalFailure"),
    );
    answer
}
