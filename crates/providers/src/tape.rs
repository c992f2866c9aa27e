//! Record and replay of provider exchanges.
//!
//! `SWITCHYARD_RECORD=DIR` writes every HTTP exchange a hosted adapter makes (request and
//! response, bodies as sent, credentials removed) as **cassettes** under `DIR`;
//! `SWITCHYARD_REPLAY=DIR` answers the same calls from them without any network, and fails a
//! call that has no cassette with class `invalid` and the file it looked for. A pipeline
//! recorded once (against real keys or the fake servers) then runs offline in CI, with the
//! same answers every time.
//!
//! A cassette is keyed by provider, model, operation (`invoke`, `poll`, `cancel`) and the
//! sha256 of the **normalized** request (model, role, instructions, prompt version, input,
//! params, output schema, feedback) — not of the HTTP body, which carries run ids, callback
//! URLs and signatures that differ between runs. File: `DIR/<provider>/<model>/<operation>-
//! <first 16 hex digits>.json`. Calls with the same key (a retry after a 503, the same
//! request in two runs) are kept in order in one cassette and replayed in that order; past
//! the last, the last one is served again, so a replay never depends on how many runs came
//! before it. A fresh recording replaces a cassette's earlier exchanges the first time this
//! process writes it. Downloads that are not model calls (an asset file) are keyed by method
//! and URL under `DIR/http/`.
//!
//! What is removed before writing: `authorization`, `proxy-authorization`, `cookie`,
//! `set-cookie` and every header whose name contains `key`, `token`, `secret`, `signature`
//! or `credential` (`x-api-key`, `x-amz-security-token`…), and the values of query
//! parameters named like them. Bodies are kept as sent: do not record runs whose inputs you
//! would not commit.
//!
//! Not covered: the built-in `local/*` models (no HTTP; already deterministic) and webhooks a
//! provider sends *to* us — a replayed asynchronous job is polled at once (no webhook comes
//! for a job this run did not create: [`is_replayed`]), so its poll must have been recorded
//! (record where no webhook reaches the run), or be allowed to reach the provider.

use crate::wire::{HttpRequest, HttpResponse};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use switchyard_core::model::ModelRequest;
use switchyard_core::{ErrorClass, StepError};

/// Records into this directory.
pub const RECORD_VAR: &str = "SWITCHYARD_RECORD";
/// Replays from this directory.
pub const REPLAY_VAR: &str = "SWITCHYARD_REPLAY";
/// With [`REPLAY_VAR`]: `call` makes a call the tape does not have reach the provider (and
/// be recorded) instead of failing ([`Mode::Patch`]).
pub const MISSING_VAR: &str = "SWITCHYARD_REPLAY_MISSING";

/// Whether the tape writes exchanges or serves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Record,
    Replay,
    /// Replay what the tape has; call the provider for what it has not, and record that
    /// (`switchyard runs replay` of a changed workflow: unchanged calls come from the tape,
    /// changed prompts or models reach the provider).
    Patch,
}

/// What one cassette is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub provider: String,
    pub model: String,
    pub operation: String,
    /// sha256 (hex) of the normalized request (or of method and URL for a download).
    pub hash: String,
}

/// The fields of a request that decide its answer; run ids, attempts, timeouts and callback
/// tokens are left out so a second run finds the first run's cassettes.
#[derive(Serialize)]
struct Normalized<'a> {
    model: &'a str,
    role: &'a str,
    instructions: &'a Option<String>,
    prompt_version: &'a Option<String>,
    input: &'a Value,
    params: &'a Value,
    output_schema: &'a Option<Value>,
    feedback: &'a [String],
}

impl Key {
    /// The key of a model call.
    pub fn for_request(provider: &str, operation: &str, req: &ModelRequest) -> Key {
        let n = Normalized {
            model: &req.model,
            role: req.role.as_str(),
            instructions: &req.instructions,
            prompt_version: &req.prompt_version,
            input: &req.input,
            params: &req.params,
            output_schema: &req.output_schema,
            feedback: &req.feedback,
        };
        Key {
            provider: provider.to_string(),
            model: req.model.clone(),
            operation: operation.to_string(),
            hash: switchyard_core::sha256_hex(&serde_json::to_vec(&n).unwrap_or_default()),
        }
    }

    /// The key of a plain download (method and URL).
    pub fn for_http(req: &HttpRequest) -> Key {
        let host = req
            .url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split(['/', '?']).next())
            .unwrap_or("unknown");
        Key {
            provider: "http".into(),
            model: host.to_string(),
            operation: req.method.to_ascii_lowercase(),
            hash: switchyard_core::sha256_hex(format!("{} {}", req.method, req.url).as_bytes()),
        }
    }

    /// Where its cassette lives under `dir`.
    pub fn path(&self, dir: &Path) -> PathBuf {
        dir.join(slug(&self.provider))
            .join(slug(&self.model))
            .join(format!(
                "{}-{}.json",
                slug(&self.operation),
                &self.hash[..16.min(self.hash.len())]
            ))
    }
}

/// A path segment from a model id: `/`, `:` and anything unusual become `_`.
fn slug(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with('.') {
        format!("_{out}")
    } else {
        out
    }
}

/// One recorded exchange, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Exchange {
    request: Value,
    response: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cassette {
    provider: String,
    model: String,
    operation: String,
    /// The full normalized-request hash.
    key: String,
    exchanges: Vec<Exchange>,
}

/// The record/replay switch a [`crate::http::Sender`] carries.
#[derive(Debug)]
pub struct Tape {
    mode: Mode,
    dir: PathBuf,
    /// Replay: exchanges served per cassette. Record: cassettes written by this process.
    served: Mutex<HashMap<PathBuf, usize>>,
    written: Mutex<HashSet<PathBuf>>,
}

impl Tape {
    pub fn new(mode: Mode, dir: impl Into<PathBuf>) -> Tape {
        Tape {
            mode,
            dir: dir.into(),
            served: Mutex::default(),
            written: Mutex::default(),
        }
    }

    /// From `SWITCHYARD_RECORD` / `SWITCHYARD_REPLAY` (read through `get`); both set is an
    /// error, as is a replay directory that does not exist.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Tape>, String> {
        let nonempty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        match (nonempty(RECORD_VAR), nonempty(REPLAY_VAR)) {
            (Some(_), Some(_)) => Err(format!(
                "{RECORD_VAR} and {REPLAY_VAR} are both set: record or replay, not both"
            )),
            (Some(dir), None) => Ok(Some(Tape::new(Mode::Record, dir))),
            (None, Some(dir)) => {
                if !Path::new(&dir).is_dir() {
                    return Err(format!(
                        "{REPLAY_VAR}={dir}: no such directory (record one with {RECORD_VAR}={dir})"
                    ));
                }
                match nonempty(MISSING_VAR).as_deref().map(str::trim) {
                    None | Some("fail") => Ok(Some(Tape::new(Mode::Replay, dir))),
                    Some("call") => Ok(Some(Tape::new(Mode::Patch, dir))),
                    Some(other) => Err(format!(
                        "{MISSING_VAR}={other}: `fail` (the default) or `call`"
                    )),
                }
            }
            (None, None) => Ok(None),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the tape has a cassette for `key`.
    pub fn has(&self, key: &Key) -> bool {
        key.path(&self.dir).is_file()
    }

    /// The recorded answer to the call `key` names: the next exchange of its cassette (the
    /// last one again once all have been served). No cassette: `invalid`, naming the file.
    pub fn replay(&self, key: &Key) -> Result<HttpResponse, StepError> {
        let path = key.path(&self.dir);
        let loud = |why: String| {
            StepError::new(
                ErrorClass::Invalid,
                format!(
                    "{REPLAY_VAR}: {why} for {} {} ({}); record it with {RECORD_VAR}",
                    key.operation,
                    key.model,
                    path.display()
                ),
            )
        };
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => loud("no cassette".into()),
            _ => loud(format!("the cassette cannot be read ({e})")),
        })?;
        let cassette: Cassette = serde_json::from_str(&text)
            .map_err(|e| loud(format!("the cassette is not valid ({e})")))?;
        let n = {
            let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
            let n = served.entry(path.clone()).or_insert(0);
            let this = *n;
            *n += 1;
            this
        };
        let Some(ex) = cassette
            .exchanges
            .get(n)
            .or_else(|| cassette.exchanges.last())
        else {
            return Err(loud("an empty cassette".into()));
        };
        response_from(&ex.response).map_err(|e| loud(format!("a bad response ({e})")))
    }

    /// Adds an exchange to the cassette of `key` (replacing what an earlier process recorded
    /// there). A failure is logged, not returned: the call itself succeeded and was paid for.
    pub fn record(&self, key: &Key, req: &HttpRequest, resp: &HttpResponse) {
        let path = key.path(&self.dir);
        if let Err(e) = self.append(key, &path, req, resp) {
            tracing::error!(path = %path.display(), error = %e, "could not record the exchange");
        }
    }

    fn append(
        &self,
        key: &Key,
        path: &Path,
        req: &HttpRequest,
        resp: &HttpResponse,
    ) -> Result<(), String> {
        // One writer at a time: two calls with the same key must not lose an exchange.
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = written.insert(path.to_path_buf());
        let mut cassette = match (fresh, std::fs::read_to_string(path)) {
            (false, Ok(text)) => serde_json::from_str(&text).map_err(|e| e.to_string())?,
            _ => Cassette {
                provider: key.provider.clone(),
                model: key.model.clone(),
                operation: key.operation.clone(),
                key: key.hash.clone(),
                exchanges: Vec::new(),
            },
        };
        cassette.exchanges.push(Exchange {
            request: request_doc(req),
            response: response_doc(resp),
        });
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let text = serde_json::to_string_pretty(&cassette).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())
    }
}

// ---- tapes kept with runs (in the blob store) ----

/// One cassette kept by a run: where it goes under a tape directory, and its exchanges.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kept {
    /// `<provider>/<model>/<operation>-<hash>.json`, as [`Key::path`] names it.
    pub path: String,
    cassette: Cassette,
}

/// The exchanges one provider call made (a retry inside the adapter, a download, a poll),
/// in order and redacted as a recording is: what a run keeps in its blob store when its
/// workflow says `tape: true` (or the deployment sets `SWITCHYARD_TAPES=1`), one bundle per
/// call. `switchyard runs replay` writes a run's bundles into a directory with
/// [`Bundle::write_into`] and replays from it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Bundle {
    pub cassettes: Vec<Kept>,
}

tokio::task_local! {
    /// The bundle the current call's exchanges go to, while [`capture`] runs it.
    static CAPTURE: std::sync::Arc<Mutex<Vec<Kept>>>;
}

/// Runs `call`, keeping every exchange it makes through a [`crate::http::Sender`] (recorded,
/// replayed or live) — scoped to this call, so concurrent calls of other runs on the same
/// sender keep their own.
pub async fn capture<F: std::future::Future>(call: F) -> (F::Output, Bundle) {
    let sink = std::sync::Arc::new(Mutex::new(Vec::new()));
    let out = CAPTURE.scope(sink.clone(), call).await;
    let cassettes = std::mem::take(&mut *sink.lock().unwrap_or_else(|e| e.into_inner()));
    (out, Bundle { cassettes })
}

/// [`capture`], with the bundle as the JSON a run keeps (`None` when no exchange was made).
pub async fn kept<T, F: std::future::Future<Output = T>>(call: F) -> (T, Option<Value>) {
    let (out, bundle) = capture(call).await;
    let doc = (!bundle.cassettes.is_empty())
        .then(|| serde_json::to_value(&bundle).ok())
        .flatten();
    (out, doc)
}

/// Whether the current task keeps its exchanges (a call then computes its normalized key).
pub fn capturing() -> bool {
    CAPTURE.try_with(|_| ()).is_ok()
}

/// Keeps one exchange in the current task's bundle, if [`capture`] runs it.
pub(crate) fn keep(key: &Key, req: &HttpRequest, resp: &HttpResponse) {
    let _ = CAPTURE.try_with(|sink| {
        let kept = Kept {
            path: key.path(Path::new("")).to_string_lossy().into_owned(),
            cassette: Cassette {
                provider: key.provider.clone(),
                model: key.model.clone(),
                operation: key.operation.clone(),
                key: key.hash.clone(),
                exchanges: vec![Exchange {
                    request: request_doc(req),
                    response: response_doc(resp),
                }],
            },
        };
        sink.lock().unwrap_or_else(|e| e.into_inner()).push(kept);
    });
}

impl Bundle {
    /// Writes the cassettes under `dir` as a recording of the same calls would have: the
    /// exchanges of one key are appended in order, after what the file already holds (write
    /// a run's bundles oldest first). Returns how many exchanges were written. A path that
    /// would leave `dir` is refused: bundles are read back from storage.
    pub fn write_into(&self, dir: &Path) -> Result<usize, String> {
        let mut n = 0;
        for k in &self.cassettes {
            let rel = Path::new(&k.path);
            let inside = !rel.as_os_str().is_empty()
                && rel
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !inside {
                return Err(format!("a kept cassette names the path `{}`", k.path));
            }
            let path = dir.join(rel);
            let mut cassette = match std::fs::read_to_string(&path) {
                Ok(text) => serde_json::from_str::<Cassette>(&text)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
                Err(_) => Cassette {
                    exchanges: Vec::new(),
                    ..k.cassette.clone()
                },
            };
            cassette
                .exchanges
                .extend(k.cassette.exchanges.iter().cloned());
            n += k.cassette.exchanges.len();
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            let text = serde_json::to_string_pretty(&cassette).map_err(|e| e.to_string())?;
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(n)
    }
}

/// Whether an answer came from a tape rather than the network.
pub fn is_replayed(resp: &HttpResponse) -> bool {
    resp.request == REPLAYED
}

const REPLAYED: &str = "replayed";

/// What a replaying process is given for a provider key it does not have.
pub const PLACEHOLDER_KEY: &str = "replayed-without-a-key";

/// Secrets for a replaying process: a replay sends nothing, so CI needs no provider keys.
/// Every credential-like name that is not set (`OPENAI_API_KEY`, `AWS_SECRET_ACCESS_KEY`, a
/// catalog entry's `api_key_env`…) reads as [`PLACEHOLDER_KEY`], so adapters build their
/// requests (and the keys they would carry are never recorded anyway). Webhook secrets are
/// left alone: they guard our own endpoint, not a provider call.
pub struct ReplaySecrets(pub std::sync::Arc<dyn switchyard_core::ports::Secrets>);

impl switchyard_core::ports::Secrets for ReplaySecrets {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).or_else(|| {
            (secret_name(name) && !name.to_ascii_lowercase().contains("webhook"))
                .then(|| PLACEHOLDER_KEY.to_string())
        })
    }

    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.0.with_prefix(prefix)
    }
}

/// Whether a header or query parameter may carry a credential.
fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || ["key", "token", "secret", "signature", "credential"]
        .iter()
        .any(|w| n.contains(w))
}

const REDACTED: &str = "[redacted]";

fn headers_doc(headers: &[(String, String)]) -> Value {
    Value::Array(
        headers
            .iter()
            .map(|(k, v)| {
                let v = if secret_name(k) { REDACTED } else { v.as_str() };
                json!([k, v])
            })
            .collect(),
    )
}

/// The URL with credential-like query values removed.
fn redact_url(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if secret_name(k) => format!("{k}={REDACTED}"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", parts.join("&"))
}

/// A body as JSON when it is JSON, text when it is UTF-8, else base64.
fn body_fields(body: &[u8], doc: &mut serde_json::Map<String, Value>) {
    if body.is_empty() {
        return;
    }
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        doc.insert("body".into(), v);
    } else if let Ok(t) = std::str::from_utf8(body) {
        doc.insert("body_text".into(), json!(t));
    } else {
        doc.insert(
            "body_base64".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(body)),
        );
    }
}

fn request_doc(req: &HttpRequest) -> Value {
    let mut doc = serde_json::Map::new();
    doc.insert("method".into(), json!(req.method));
    doc.insert("url".into(), json!(redact_url(&req.url)));
    doc.insert("headers".into(), headers_doc(&req.headers));
    body_fields(req.body.as_deref().unwrap_or_default(), &mut doc);
    Value::Object(doc)
}

fn response_doc(resp: &HttpResponse) -> Value {
    let mut doc = serde_json::Map::new();
    doc.insert("status".into(), json!(resp.status));
    doc.insert("headers".into(), headers_doc(&resp.headers));
    body_fields(&resp.body, &mut doc);
    Value::Object(doc)
}

fn response_from(doc: &Value) -> Result<HttpResponse, String> {
    let status = doc
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .ok_or("no `status`")?;
    let headers = doc
        .get("headers")
        .and_then(Value::as_array)
        .map(|hs| {
            hs.iter()
                .filter_map(|h| {
                    Some((
                        h.get(0)?.as_str()?.to_ascii_lowercase(),
                        h.get(1)?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let body = if let Some(v) = doc.get("body") {
        serde_json::to_vec(v).map_err(|e| e.to_string())?
    } else if let Some(t) = doc.get("body_text").and_then(Value::as_str) {
        t.as_bytes().to_vec()
    } else if let Some(b) = doc.get("body_base64").and_then(Value::as_str) {
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
        request: REPLAYED.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::model::Role;

    fn req() -> ModelRequest {
        crate::testing::request("openai/gpt-4o-mini", Role::Generation)
    }

    #[test]
    fn the_key_ignores_what_differs_between_runs() {
        let a = req();
        let mut b = req();
        b.run_id = "another-run".into();
        b.attempt = 3;
        b.timeout_ms = 1;
        b.callback = None;
        b.step = "s2".into();
        assert_eq!(
            Key::for_request("openai", "invoke", &a),
            Key::for_request("openai", "invoke", &b)
        );
        // What the model sees is part of the key.
        let mut c = req();
        c.input = json!("Hello?");
        let mut d = req();
        d.feedback = vec!["too long".into()];
        for other in [c, d] {
            assert_ne!(
                Key::for_request("openai", "invoke", &a).hash,
                Key::for_request("openai", "invoke", &other).hash
            );
        }
        assert_ne!(
            Key::for_request("openai", "invoke", &a),
            Key::for_request("openai", "poll", &a)
        );
    }

    #[test]
    fn paths_are_safe_segments() {
        let mut r = req();
        r.model = "bedrock/anthropic.claude-3-haiku-20240307-v1:0".into();
        let k = Key::for_request("bedrock", "invoke", &r);
        let p = k.path(Path::new("/tapes"));
        let s = p.to_string_lossy();
        assert!(
            s.starts_with("/tapes/bedrock/bedrock_anthropic.claude-3-haiku-20240307-v1_0/invoke-"),
            "{s}"
        );
        assert_eq!(slug(".."), "_..");
        assert_eq!(slug(""), "_");
    }

    #[test]
    fn credentials_are_not_written() {
        let http = HttpRequest::post_json(
            "https://api.example.test/v1/x?api_key=sk-1&stream=false&X-Amz-Signature=abc",
            &json!({"model": "m"}),
        )
        .header("authorization", "Bearer sk-secret")
        .header("x-api-key", "sk-ant")
        .header("x-amz-security-token", "tok")
        .header("anthropic-version", "2023-06-01");
        let doc = request_doc(&http);
        let text = doc.to_string();
        for secret in ["sk-secret", "sk-ant", "sk-1", "tok\"", "abc"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("anthropic-version"));
        assert!(text.contains("stream=false"));
        assert_eq!(doc["body"], json!({"model": "m"}));
    }

    #[test]
    fn record_then_replay_in_order_then_the_last_again() {
        let dir = std::env::temp_dir().join(format!("sy-tape-{}", uuid_like()));
        let key = Key::for_request("openai", "invoke", &req());
        let http = HttpRequest::post_json("http://127.0.0.1:1/v1/chat", &json!({}));
        let answer = |status: u16, body: &[u8]| HttpResponse {
            status,
            headers: vec![("x-request-id".into(), "req_1".into())],
            body: body.to_vec(),
            request: String::new(),
        };
        let rec = Tape::new(Mode::Record, &dir);
        rec.record(&key, &http, &answer(503, b"overloaded"));
        rec.record(&key, &http, &answer(200, br#"{"ok":true}"#));
        rec.record(
            &Key::for_http(&HttpRequest::get("http://files.test/a.png")),
            &HttpRequest::get("http://files.test/a.png"),
            &answer(200, &[0x89, 0x50, 0xff]),
        );

        let play = Tape::new(Mode::Replay, &dir);
        let first = play.replay(&key).unwrap();
        assert_eq!(
            (first.status, first.body.as_slice()),
            (503, &b"overloaded"[..])
        );
        assert_eq!(first.header("x-request-id"), Some("req_1"));
        let second = play.replay(&key).unwrap();
        assert_eq!(second.status, 200);
        assert_eq!(second.json(), Some(json!({"ok": true})));
        assert_eq!(play.replay(&key).unwrap().status, 200, "the last again");
        let file = play
            .replay(&Key::for_http(&HttpRequest::get("http://files.test/a.png")))
            .unwrap();
        assert_eq!(file.body, vec![0x89, 0x50, 0xff]);

        // A request that was never recorded fails loudly, naming the file.
        let mut other = req();
        other.input = json!("never recorded");
        let e = play
            .replay(&Key::for_request("openai", "invoke", &other))
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Invalid);
        assert!(
            e.message.contains("no cassette") && e.message.contains(".json"),
            "{}",
            e.message
        );

        // A new recording process replaces the cassette instead of growing it.
        let again = Tape::new(Mode::Record, &dir);
        again.record(&key, &http, &answer(200, b"{}"));
        let fresh = Tape::new(Mode::Replay, &dir);
        assert_eq!(fresh.replay(&key).unwrap().status, 200);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_capture_keeps_its_own_calls_and_writes_a_replayable_recording() {
        let key = Key::for_request("openai", "invoke", &req());
        let http = HttpRequest::post_json("http://127.0.0.1:1/v1/chat", &json!({}))
            .header("authorization", "Bearer sk-secret");
        let answer = |status: u16| HttpResponse {
            status,
            headers: vec![],
            body: format!("{{\"status\":{status}}}").into_bytes(),
            request: String::new(),
        };
        // Outside a capture nothing is kept; two concurrent captures keep their own.
        keep(&key, &http, &answer(500));
        assert!(!capturing());
        let one = async {
            assert!(capturing());
            keep(&key, &http, &answer(503));
            tokio::task::yield_now().await;
            keep(&key, &http, &answer(200));
            "one"
        };
        let two = async {
            tokio::task::yield_now().await;
            keep(&key, &http, &answer(201));
            "two"
        };
        let ((a, bundle_a), (b, bundle_b)) = tokio::join!(capture(one), capture(two));
        assert_eq!((a, b), ("one", "two"));
        assert_eq!(bundle_a.cassettes.len(), 2);
        assert_eq!(bundle_b.cassettes.len(), 1);
        assert!(!serde_json::to_string(&bundle_a)
            .unwrap()
            .contains("sk-secret"));
        let (_, none) = kept(async {}).await;
        assert!(none.is_none(), "a call without exchanges keeps no tape");

        // Written out (through JSON, as a run keeps it), the exchanges of one key follow each
        // other in order, and replay in that order.
        let dir = std::env::temp_dir().join(format!("sy-kept-{}", uuid_like()));
        let back: Bundle =
            serde_json::from_value(serde_json::to_value(&bundle_a).unwrap()).unwrap();
        assert_eq!(back.write_into(&dir).unwrap(), 2);
        assert_eq!(bundle_b.write_into(&dir).unwrap(), 1);
        let play = Tape::new(Mode::Replay, &dir);
        let got: Vec<u16> = (0..4).map(|_| play.replay(&key).unwrap().status).collect();
        assert_eq!(got, vec![503, 200, 201, 201]);

        // A kept path that would leave the directory is refused.
        let mut bad = back.clone();
        bad.cassettes[0].path = "../escape.json".into();
        assert!(bad.write_into(&dir).unwrap_err().contains("../escape.json"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_variables() {
        let none = |_: &str| None::<String>;
        assert!(Tape::from_vars(none).unwrap().is_none());
        let both = |_: &str| Some("/tmp".to_string());
        assert!(Tape::from_vars(both).unwrap_err().contains("both set"));
        let missing = |k: &str| (k == REPLAY_VAR).then(|| "/nonexistent/tapes".to_string());
        assert!(Tape::from_vars(missing)
            .unwrap_err()
            .contains("no such directory"));
        let rec = |k: &str| (k == RECORD_VAR).then(|| "/tmp/new-tapes".to_string());
        assert_eq!(Tape::from_vars(rec).unwrap().unwrap().mode(), Mode::Record);
        // A replay that calls the provider for what the tape lacks.
        let patch = |k: &str| match k {
            REPLAY_VAR => Some("/tmp".to_string()),
            MISSING_VAR => Some("call".to_string()),
            _ => None,
        };
        assert_eq!(Tape::from_vars(patch).unwrap().unwrap().mode(), Mode::Patch);
        let strict = |k: &str| match k {
            REPLAY_VAR => Some("/tmp".to_string()),
            MISSING_VAR => Some("fail".to_string()),
            _ => None,
        };
        assert_eq!(
            Tape::from_vars(strict).unwrap().unwrap().mode(),
            Mode::Replay
        );
        let bad = |k: &str| match k {
            REPLAY_VAR => Some("/tmp".to_string()),
            MISSING_VAR => Some("maybe".to_string()),
            _ => None,
        };
        assert!(Tape::from_vars(bad)
            .unwrap_err()
            .contains("`fail` (the default) or `call`"));
    }

    fn uuid_like() -> String {
        format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        )
    }
}
