//! Fake model-provider HTTP servers with scripted behaviour, for tests of the provider adapters
//! and for chaos-testing workflows (`switchyard fake-provider`).
//!
//! One server speaks four wire formats, each on the paths the real API uses, so an adapter is
//! pointed at it by changing its base URL only:
//!
//! | provider | base URL to configure | routes |
//! |---|---|---|
//! | OpenAI | `{url}/v1` | `POST /v1/chat/completions`, `POST /v1/embeddings`, `POST /v1/moderations` |
//! | Anthropic | `{url}` | `POST /v1/messages` |
//! | Bedrock Runtime | `{url}` (endpoint) | `POST /model/{modelId}/converse` (SigV4 `Authorization` required, not verified) |
//! | Replicate | `{url}/v1` | `POST /v1/models/{owner}/{name}/predictions`, `POST /v1/predictions`, `GET /v1/predictions/{id}`, `POST /v1/predictions/{id}/cancel` (`Authorization: Bearer` required) |
//!
//! Every request takes the next [`Behavior`] from its provider's script (see [`parse_script`]);
//! when the script is empty the request is answered plausibly: chat answers follow the requested
//! JSON Schema ([`instance_for`]), embeddings are deterministic. Replicate predictions complete
//! after [`FakeConfig::replicate_delay_ms`] and, when the create request named a `webhook`, are
//! delivered to it signed the Standard Webhooks way with [`FakeConfig::webhook_secret`].
//!
//! A successful image prediction's output is a file URL. By default the fake serves that file
//! itself (`GET /v1/files/…`, behind the API token); [`FakeConfig::delivery_url`] puts the
//! files on another host instead, as Replicate's `https://replicate.delivery/…` are (a host
//! nobody serves makes every download fail to connect), and [`FakeServer::drop_downloads`]
//! makes the next downloads of the fake's own files fail as an unreachable host does: the
//! connection closes without an answer. Prediction and webhook are unaffected either way.
//!
//! What each behaviour does, per provider (errors use each API's documented error shape):
//!
//! | behaviour | OpenAI | Anthropic | Bedrock Converse | Replicate (create) |
//! |---|---|---|---|---|
//! | `answer` (default) | 200 completion | 200 message | 200 converse output | 201 `starting` → `succeeded` |
//! | `rate_limited[:s]` | 429 `rate_limit_exceeded` + `Retry-After` | 429 `rate_limit_error` + `retry-after` | 429 `ThrottlingException` + `Retry-After` | 429 throttled + `Retry-After` |
//! | `quota` | 429 `insufficient_quota` | 402 `billing_error` | 400 `ServiceQuotaExceededException` | 402 `Insufficient credit` |
//! | `server_error` | 500 `server_error` | 500 `api_error` | 500 `InternalServerException` | 500 |
//! | `overloaded` | 503 | 529 `overloaded_error` | 503 `ServiceUnavailableException` | 503 |
//! | `slow[:ms]` | sleeps, then answers | same | same | same (before the 201) |
//! | `malformed` | 200, truncated JSON | same | same | 201, truncated JSON |
//! | `schema_invalid` | content / tool arguments violate the schema | `tool_use` input / JSON text violates it | `toolUse` input violates it | `succeeded` with a non-URL output |
//! | `unauthorized` | 401 `invalid_api_key` | 401 `authentication_error` | 403 `AccessDeniedException` | 401 `Unauthenticated` |
//! | `context_too_long` | 400 `context_length_exceeded` | 400 "prompt is too long" | 400 `ValidationException` "Input is too long" | 422 input validation |
//! | `refusal` | `message.refusal`, content null | `stop_reason: "refusal"` | `stopReason: "guardrail_intervened"` | `failed`, "NSFW content detected" |
//! | `succeed` / `no_webhook` / `fail` | answer / answer / 500 | same | same | `succeeded` / `succeeded` without webhook / `failed` |
//!
//! Moderation, deterministic: `POST /v1/moderations` flags categories from a few trigger words
//! (`kill`, `gore`, `idiot`, `vermin`, `suicide`, `nude`, `cocaine`; see
//! `openai/moderation.rs`); a Converse request with `guardrailConfig` is judged by a
//! fake guardrail that intervenes on its own trigger words (`stopReason: "guardrail_intervened"`,
//! the blocked message as output, and with `trace: "enabled"` the `trace.guardrail` assessments;
//! see `bedrock/guardrail.rs`). Scripted behaviours apply to both as to the other routes.
//!
//! Usage: token counts are about four characters a token. The chat answers report each API's
//! prompt-cache fields: a system prompt of at least 1024 tokens is written to a per-server
//! cache the first time a model sees it and read from it after (Anthropic
//! `cache_creation_input_tokens` / `cache_read_input_tokens` and Bedrock
//! `cacheWriteInputTokens` / `cacheReadInputTokens` beside the uncached input; OpenAI
//! `prompt_tokens_details.cached_tokens` inside `prompt_tokens`, reads only), and an OpenAI
//! reasoning model (`o1*`, `o3*`, `o4*`, `gpt-5*`) reports
//! `completion_tokens_details.reasoning_tokens` inside `completion_tokens`. The real Anthropic
//! and Bedrock APIs cache only at an explicit breakpoint; the fake caches as if the system
//! prompt ended with one (see `prompt_cache.rs`). `POST /_fake/reset` empties the cache.
//!
//! Refused before the script is consulted (and without consuming it), as the real APIs do:
//! Anthropic without `x-api-key` (401) or `anthropic-version` (400); Bedrock without a SigV4
//! `Authorization` + `X-Amz-Date`, or signed for another service than `bedrock` (403);
//! Replicate without `Authorization: Bearer …` (401). OpenAI accepts keyless calls (as
//! OpenAI-compatible servers do); script `unauthorized` to test its auth failure.
//!
//! Control routes: `POST /_fake/script` (`{"provider": "openai", "behaviors": ["rate_limited:2",
//! "answer"]}`, appended), `GET /_fake/script` (what is queued), `POST /_fake/reset` (clears
//! scripts, recorded requests and the prompt cache), `GET /_fake/requests`
//! ([`RecordedRequest`]s, secrets redacted).
//!
//! In-process: [`FakeServer::start`] binds `127.0.0.1:0` and stops when dropped;
//! [`WebhookReceiver`] records the webhooks delivered to it. For a CLI: [`serve`] /
//! [`serve_with_shutdown`] on a listener the caller bound.
//!
//! Layout: this file (the server, its state and routes); `openai`, `anthropic`, `bedrock`,
//! `replicate` (one wire format each); `behavior` (the scripts); `prompt_cache` (cached and
//! reasoning tokens in chat answers); `schema` (values that validate against a requested
//! JSON Schema); `receiver` (the webhook receiver); `util` (ids, timestamps, token
//! estimates); [`aws_faults`] (a fault-injecting proxy in front of the AWS emulator).

mod anthropic;
pub mod aws_faults;
mod bedrock;
mod behavior;
mod openai;
mod prompt_cache;
mod receiver;
mod replicate;
pub use replicate::FAKE_PNG;
mod schema;
mod util;

pub use behavior::{parse_script, Behavior, PROVIDERS};
pub use receiver::{ReceivedWebhook, WebhookReceiver};
pub use schema::{instance_for, violating_instance};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinHandle};

/// Default Replicate completion delay.
pub const DEFAULT_REPLICATE_DELAY_MS: u64 = 100;

/// Recorded requests kept (oldest dropped first), so a long-running fake stays bounded.
const MAX_RECORDED: usize = 10_000;

/// How the fake behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeConfig {
    /// `whsec_<base64>` secret that signs Replicate webhook deliveries.
    pub webhook_secret: String,
    /// How long a Replicate prediction takes to complete.
    pub replicate_delay_ms: u64,
    /// Initial scripts per provider (`openai`, `anthropic`, `bedrock`, `replicate`).
    pub script: HashMap<String, Vec<Behavior>>,
    /// Where Replicate output files live (`{delivery_url}/xezq/fake-{id}/out-0.png`), like
    /// Replicate's own `https://replicate.delivery`; `None`: served by the fake itself under
    /// `/v1/files/`.
    pub delivery_url: Option<String>,
}

impl Default for FakeConfig {
    fn default() -> FakeConfig {
        FakeConfig {
            webhook_secret: switchyard_core::webhook::secret_from_bytes(
                b"switchyard-fakes-webhook-secret!",
            ),
            replicate_delay_ms: DEFAULT_REPLICATE_DELAY_MS,
            script: HashMap::new(),
            delivery_url: None,
        }
    }
}

/// One request the fake received. Secrets are not kept: `authorization` is reduced to its
/// scheme (`Bearer`, `AWS4-HMAC-SHA256`; for SigV4 the credential scope and signed headers are
/// kept as `authorization-scope` and `authorization-signed-headers`), `x-api-key` and
/// `x-amz-security-token` to `[redacted]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// `openai`, `anthropic`, `bedrock`, `replicate`, or `unknown` (no such route).
    pub provider: String,
    pub method: String,
    /// The path as sent, percent-encoding kept (e.g. `/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse`).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Selected headers, lower-case names.
    pub headers: BTreeMap<String, String>,
    /// The JSON body; a string if the body was not JSON; null if empty.
    pub body: Value,
    /// The behaviour applied (`answer`, `rate_limited:1`, ...); `get` / `cancel` for Replicate
    /// reads and cancels (which never consume a script); or why the request was refused before
    /// its script was consulted (`missing_auth`, `missing_version`, `bad_auth`, `no_route`).
    pub behavior: String,
    /// Unix milliseconds when it arrived.
    pub at_ms: u64,
}

/// Headers worth recording (never their secret parts).
const RECORDED_HEADERS: [&str; 14] = [
    "content-type",
    "accept",
    "authorization",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
    "prefer",
    "cancel-after",
    "openai-organization",
    "openai-project",
    "idempotency-key",
];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the handlers.
pub(crate) struct Shared {
    pub(crate) webhook_secret: String,
    pub(crate) replicate_delay_ms: u64,
    pub(crate) delivery_url: Option<String>,
    /// Downloads of output files still to drop (`FakeServer::drop_downloads`).
    pub(crate) drop_downloads: AtomicU32,
    scripts: Mutex<HashMap<String, VecDeque<Behavior>>>,
    requests: Mutex<Vec<RecordedRequest>>,
    pub(crate) predictions: Mutex<HashMap<String, replicate::Prediction>>,
    /// System prompts the chat APIs have seen (`prompt_cache`).
    pub(crate) prompt_cache: prompt_cache::PromptCache,
    tasks: Mutex<Vec<AbortHandle>>,
    pub(crate) client: reqwest::Client,
}

impl Shared {
    fn new(config: FakeConfig) -> std::io::Result<Shared> {
        let client = switchyard_providers::outbound::client_builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| std::io::Error::other(format!("webhook HTTP client: {e}")))?;
        let scripts = config
            .script
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.into_iter().collect()))
            .collect();
        Ok(Shared {
            webhook_secret: config.webhook_secret,
            replicate_delay_ms: config.replicate_delay_ms,
            delivery_url: config
                .delivery_url
                .map(|u| u.trim_end_matches('/').to_string()),
            drop_downloads: AtomicU32::new(0),
            scripts: Mutex::new(scripts),
            requests: Mutex::new(Vec::new()),
            predictions: Mutex::new(HashMap::new()),
            prompt_cache: prompt_cache::PromptCache::default(),
            tasks: Mutex::new(Vec::new()),
            client,
        })
    }

    fn push_script(&self, provider: &str, behaviors: Vec<Behavior>) {
        if !PROVIDERS.contains(&provider.to_ascii_lowercase().as_str()) {
            tracing::warn!(
                provider,
                "fake provider: no such provider; this script will never be used"
            );
        }
        lock(&self.scripts)
            .entry(provider.to_ascii_lowercase())
            .or_default()
            .extend(behaviors);
    }

    fn next_behavior(&self, provider: &str) -> Behavior {
        lock(&self.scripts)
            .get_mut(provider)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Behavior::Answer)
    }

    fn scripts(&self) -> BTreeMap<String, Vec<Behavior>> {
        lock(&self.scripts)
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
            .collect()
    }

    fn reset(&self) {
        lock(&self.scripts).clear();
        lock(&self.requests).clear();
        self.prompt_cache.clear();
        self.drop_downloads.store(0, Ordering::SeqCst);
    }

    fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    fn record(&self, provider: &str, req: &Incoming, behavior: &str) {
        tracing::debug!(provider, method = %req.method, path = req.uri.path(), behavior, "fake provider request");
        let mut headers = BTreeMap::new();
        for name in RECORDED_HEADERS {
            let Some(value) = req.headers.get(name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            match name {
                "authorization" => {
                    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
                    headers.insert(name.to_string(), scheme.to_string());
                    if scheme == "AWS4-HMAC-SHA256" {
                        for (key, field) in [
                            ("authorization-scope", "Credential="),
                            ("authorization-signed-headers", "SignedHeaders="),
                        ] {
                            if let Some(v) = sigv4_field(rest, field) {
                                // The access key id (before the first `/`) is dropped.
                                let v = if field == "Credential=" {
                                    v.split_once('/').map(|(_, s)| s).unwrap_or("")
                                } else {
                                    v
                                };
                                headers.insert(key.to_string(), v.to_string());
                            }
                        }
                    }
                }
                "x-api-key" | "x-amz-security-token" => {
                    headers.insert(name.to_string(), "[redacted]".to_string());
                }
                _ => {
                    headers.insert(name.to_string(), value.to_string());
                }
            }
        }
        let body = if req.body.is_empty() {
            Value::Null
        } else {
            util::parse_body(&req.body)
                .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&req.body).into_owned()))
        };
        let rec = RecordedRequest {
            provider: provider.to_string(),
            method: req.method.to_string(),
            path: req.uri.path().to_string(),
            query: req.uri.query().map(str::to_string),
            headers,
            body,
            behavior: behavior.to_string(),
            at_ms: util::now_ms(),
        };
        let mut all = lock(&self.requests);
        if all.len() >= MAX_RECORDED {
            all.remove(0);
        }
        all.push(rec);
    }

    /// Takes the provider's next behaviour and records the request with it.
    pub(crate) fn begin(&self, provider: &str, req: &Incoming) -> Behavior {
        let b = self.next_behavior(provider);
        self.record(provider, req, &b.to_string());
        b
    }

    /// Records a request refused before its script was consulted (the script is not consumed).
    pub(crate) fn note(&self, provider: &str, req: &Incoming, why: &str) {
        self.record(provider, req, why);
    }

    /// Runs a background job (a prediction completing, a webhook delivery) that is aborted
    /// when the [`FakeServer`] is dropped.
    pub(crate) fn spawn(&self, job: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(job);
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle.abort_handle());
    }

    fn abort_tasks(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

fn sigv4_field<'a>(rest: &'a str, field: &str) -> Option<&'a str> {
    rest.split(',')
        .map(str::trim)
        .find_map(|part| part.strip_prefix(field))
}

/// What a handler received: one extractor instead of four in every handler.
pub(crate) struct Incoming {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Incoming {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let body = Bytes::from_request(
            axum::extract::Request::from_parts(parts.clone(), body),
            state,
        )
        .await
        .map_err(axum::response::IntoResponse::into_response)?;
        Ok(Incoming {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body,
        })
    }
}

impl Incoming {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `http://host:port` as the client addressed the server (for URLs in responses).
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.header("host").unwrap_or("127.0.0.1"))
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/moderations", post(openai::moderation::moderations))
        .route("/v1/messages", post(anthropic::messages))
        .route("/model/{model_id}/converse", post(bedrock::converse))
        .route(
            "/v1/models/{owner}/{name}/predictions",
            post(replicate::create_for_model),
        )
        .route("/v1/predictions", post(replicate::create))
        .route("/v1/predictions/{id}", get(replicate::get))
        .route("/v1/predictions/{id}/cancel", post(replicate::cancel))
        .route("/v1/files/{id}/{name}", get(replicate::file))
        .route("/_fake/script", post(admin_script).get(admin_get_script))
        .route("/_fake/reset", post(admin_reset))
        .route("/_fake/requests", get(admin_requests))
        .fallback(no_route)
        .with_state(shared)
}

#[derive(Deserialize)]
struct ScriptBody {
    provider: String,
    #[serde(default)]
    behaviors: Vec<String>,
}

async fn admin_script(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let parsed: ScriptBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return util::json_response(
                400,
                vec![],
                &json!({"error": format!("expected {{\"provider\": ..., \"behaviors\": [...]}}: {e}")}),
            )
        }
    };
    let provider = match behavior::check_provider(&parsed.provider) {
        Ok(p) => p,
        Err(e) => return util::json_response(400, vec![], &json!({"error": e})),
    };
    let mut list = Vec::new();
    for b in &parsed.behaviors {
        match b.parse::<Behavior>() {
            Ok(b) => list.push(b),
            Err(e) => return util::json_response(400, vec![], &json!({"error": e})),
        }
    }
    s.push_script(&provider, list);
    let queued = s.scripts().remove(&provider).unwrap_or_default();
    util::json_response(
        200,
        vec![],
        &json!({"provider": provider, "queued": queued}),
    )
}

async fn admin_get_script(State(s): State<Arc<Shared>>) -> Response {
    util::json_response(200, vec![], &json!(s.scripts()))
}

async fn admin_reset(State(s): State<Arc<Shared>>) -> Response {
    s.reset();
    util::json_response(200, vec![], &json!({"reset": true}))
}

async fn admin_requests(State(s): State<Arc<Shared>>) -> Response {
    util::json_response(200, vec![], &json!(s.requests()))
}

async fn no_route(State(s): State<Arc<Shared>>, req: Incoming) -> Response {
    s.note("unknown", &req, "no_route");
    util::json_response(
        404,
        vec![],
        &json!({"error": format!("the fake provider has no route {} {}", req.method, req.uri.path())}),
    )
}

/// A fake provider server running in this process on `127.0.0.1`. Stops when dropped.
pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl FakeServer {
    /// Binds `127.0.0.1:0` and serves in a background task.
    pub async fn start(config: FakeConfig) -> std::io::Result<FakeServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config)?);
        let app = router(shared.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
        });
        Ok(FakeServer {
            addr,
            shared,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The secret Replicate webhook deliveries are signed with.
    pub fn webhook_secret(&self) -> &str {
        &self.shared.webhook_secret
    }

    /// Appends behaviours to a provider's script (`openai`, `anthropic`, `bedrock`, `replicate`).
    pub fn script(&self, provider: &str, behaviors: Vec<Behavior>) {
        self.shared.push_script(provider, behaviors);
    }

    /// What is still queued, per provider.
    pub fn queued(&self) -> BTreeMap<String, Vec<Behavior>> {
        self.shared.scripts()
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests()
    }

    /// Drops the next `n` downloads of an output file the fake serves (`GET /v1/files/…`): the
    /// connection closes without an answer, as when the file's host cannot be reached. They
    /// are recorded with the behaviour `dropped`. Adds to any still pending.
    pub fn drop_downloads(&self, n: u32) {
        self.shared.drop_downloads.fetch_add(n, Ordering::SeqCst);
    }

    /// Clears the scripts, the downloads still to drop, the recorded requests and the prompt
    /// cache.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops accepting connections, lets in-flight requests finish (at most 5 s), and aborts
    /// pending prediction completions and webhook deliveries.
    pub async fn shutdown(mut self) {
        self.shared.abort_tasks();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.shared.abort_tasks();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves the fake on a listener the caller bound, until the server fails.
pub async fn serve(listener: TcpListener, config: FakeConfig) -> std::io::Result<()> {
    serve_with_shutdown(listener, config, std::future::pending()).await
}

/// Serves the fake until `signal` completes (e.g. Ctrl-C), then finishes in-flight requests.
pub async fn serve_with_shutdown(
    listener: TcpListener,
    config: FakeConfig,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared::new(config)?);
    let result = axum::serve(listener, router(shared.clone()))
        .with_graceful_shutdown(signal)
        .await;
    shared.abort_tasks();
    result
}
