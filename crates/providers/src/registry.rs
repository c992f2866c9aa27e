//! Building the hosted-API adapters a deployment offers, from its secrets (the environment or
//! the settings secret, through the core's `Secrets` seam; docs/configuration.md#providers):
//! `OPENAI_API_KEY`/`OPENAI_BASE_URL`, `ANTHROPIC_API_KEY`/`ANTHROPIC_BASE_URL`, the standard
//! AWS variables for Bedrock (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`),
//! `REPLICATE_API_TOKEN`/`REPLICATE_BASE_URL`, `SWITCHYARD_PRICES` for the price table, and
//! `SWITCHYARD_RECORD` / `SWITCHYARD_REPLAY` for record and replay (`crate::tape`).
//!
//! Every adapter is registered even without its key, so workflows naming its models pass the
//! static checks; a call without a key fails with class `auth` and names the variable to set.
//!
//! The decisions (which base URL and key each adapter gets) are pure functions of the secrets
//! and the catalog; the only I/O here is reading the `SWITCHYARD_PRICES` file.

use crate::anthropic::Anthropic;
use crate::bedrock::{self, AwsCredentials, Bedrock};
use crate::catalog::Catalog;
use crate::http::{Sender, Timeouts};
use crate::keys::secret;
use crate::openai::OpenAi;
use crate::replicate::{self, Replicate};
use crate::tape::{Mode, ReplaySecrets, Tape};
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::model::Provider;
use switchyard_core::ports::{EnvSecrets, Secrets};

/// What the deployment configures: the catalog and one adapter per hosted API.
pub struct Hosted {
    /// Built-in prices plus `SWITCHYARD_PRICES`.
    pub catalog: Arc<Catalog>,
    pub providers: Vec<Arc<dyn Provider>>,
}

/// The catalog and the hosted adapters, from the process environment.
pub fn from_env() -> Result<Hosted, String> {
    from_secrets(Arc::new(EnvSecrets))
}

/// The catalog and the hosted adapters, from `secrets`. Adapters keep the seam, so keys that
/// catalog entries name (`api_key_env`) are read from it at call time too.
pub fn from_secrets(secrets: Arc<dyn Secrets>) -> Result<Hosted, String> {
    let tape = Tape::from_vars(|k| secret(secrets.as_ref(), k))?;
    let secrets: Arc<dyn Secrets> = match tape.as_ref().map(Tape::mode) {
        Some(Mode::Replay) => Arc::new(ReplaySecrets(secrets)),
        _ => secrets,
    };
    if let Some(t) = &tape {
        tracing::info!(mode = ?t.mode(), dir = %t.dir().display(), "provider exchanges are taped");
    }
    let catalog = Arc::new(load_catalog(secrets.as_ref())?);
    let sender = Sender::new(timeouts(secrets.as_ref())?)
        .map_err(|e| e.message)?
        .with_tape(tape);
    let s = secrets.as_ref();
    let mut out: Vec<Arc<dyn Provider>> = Vec::new();
    for prefix in catalog.prefixes_for("openai") {
        let (base, key) = openai_endpoint(&catalog, &prefix, s);
        let adapter = OpenAi::new(&prefix, &base, key, catalog.clone(), sender.clone());
        out.push(Arc::new(adapter.with_secrets(secrets.clone())));
    }
    let anthropic_base = secret(s, "ANTHROPIC_BASE_URL")
        .unwrap_or_else(|| crate::anthropic::DEFAULT_BASE_URL.into());
    let anthropic = Anthropic::new(
        &anthropic_base,
        secret(s, "ANTHROPIC_API_KEY"),
        catalog.clone(),
        sender.clone(),
    );
    out.push(Arc::new(anthropic.with_secrets(secrets.clone())));
    let region = bedrock::region_from_secrets(s);
    out.push(Arc::new(Bedrock::new(
        &bedrock::endpoint_from_secrets(s, &region),
        &region,
        AwsCredentials::from_secrets(s),
        catalog.clone(),
        sender.clone(),
    )));
    let replicate_base =
        secret(s, "REPLICATE_BASE_URL").unwrap_or_else(|| replicate::DEFAULT_BASE_URL.into());
    out.push(Arc::new(Replicate::new(
        &replicate_base,
        replicate::token_from_secrets(s),
        catalog.clone(),
        sender,
    )));
    Ok(Hosted {
        catalog,
        providers: out,
    })
}

/// The built-in table plus the file `SWITCHYARD_PRICES` names, if any.
fn load_catalog(secrets: &dyn Secrets) -> Result<Catalog, String> {
    let override_text = match secret(secrets, "SWITCHYARD_PRICES") {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| format!("SWITCHYARD_PRICES `{path}`: {e}"))?,
        ),
        None => None,
    };
    Catalog::load(override_text.as_deref())
}

/// `SWITCHYARD_CONNECT_TIMEOUT_MS` / `SWITCHYARD_REQUEST_TIMEOUT_MS`, else 5 s / 60 s.
fn timeouts(secrets: &dyn Secrets) -> Result<Timeouts, String> {
    let ms = |name: &str, default: u64| -> Result<Duration, String> {
        match secret(secrets, name) {
            Some(v) => v
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{name} must be a number of milliseconds")),
            None => Ok(Duration::from_millis(default)),
        }
    };
    Ok(Timeouts {
        connect: ms("SWITCHYARD_CONNECT_TIMEOUT_MS", 5_000)?,
        request: ms("SWITCHYARD_REQUEST_TIMEOUT_MS", 60_000)?,
    })
}

/// The base URL and key of the adapter for one prefix served through the OpenAI API:
/// `OPENAI_BASE_URL` / `OPENAI_API_KEY` for `openai` itself; for an OpenAI-compatible server,
/// its entries' `base_url` (else `OPENAI_BASE_URL`, else a local Ollama) and their key variable.
fn openai_endpoint(
    catalog: &Catalog,
    prefix: &str,
    secrets: &dyn Secrets,
) -> (String, Option<String>) {
    if prefix == "openai" {
        let base = secret(secrets, "OPENAI_BASE_URL")
            .unwrap_or_else(|| crate::openai::DEFAULT_BASE_URL.into());
        return (base, secret(secrets, "OPENAI_API_KEY"));
    }
    let entry = catalog
        .models
        .iter()
        .find(|(id, _)| id.starts_with(&format!("{prefix}/")))
        .map(|(_, e)| e);
    let base = entry
        .and_then(|e| e.base_url.clone())
        .or_else(|| secret(secrets, "OPENAI_BASE_URL"))
        .unwrap_or_else(|| "http://127.0.0.1:11434/v1".into());
    let key = entry
        .and_then(|e| e.api_key_env.as_deref())
        .and_then(|var| secret(secrets, var));
    (base, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::request;
    use switchyard_core::model::{ModelResponse, Role};
    use switchyard_core::ports::MapSecrets;
    use switchyard_core::ErrorClass;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const CHAT: &str = include_str!("../tests/fixtures/openai_chat_completion.json");

    /// A one-request server: answers `body` (200, JSON) and hands back the request's head (the
    /// request line and headers, as sent) — the fake servers redact keys, this one must not.
    async fn capture_one(body: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 8192];
            // The head ends at the blank line; the body (small here) comes with it or after.
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before sending its headers");
                seen.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&seen).to_string();
            let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(reply.as_bytes()).await.unwrap();
            head
        });
        (url, task)
    }

    fn header_of(head: &str, name: &str) -> Option<String> {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    fn provider(hosted: &Hosted, name: &str) -> Arc<dyn Provider> {
        hosted
            .providers
            .iter()
            .find(|p| p.name() == name)
            .cloned()
            .unwrap_or_else(|| panic!("no `{name}` adapter"))
    }

    #[tokio::test]
    async fn a_key_from_map_secrets_is_the_one_sent() {
        let (url, head) = capture_one(CHAT).await;
        let secrets = MapSecrets::new([
            ("OPENAI_API_KEY", "sk-from-the-map-123"),
            ("OPENAI_BASE_URL", &format!("{url}/v1")),
        ]);
        let hosted = from_secrets(Arc::new(secrets)).unwrap();
        let out = provider(&hosted, "openai")
            .invoke(&request("openai/gpt-4o-mini", Role::Generation))
            .await
            .unwrap();
        assert!(matches!(out, ModelResponse::Completed(_)), "{out:?}");
        let head = head.await.unwrap();
        assert!(head.starts_with("POST /v1/chat/completions "), "{head}");
        assert_eq!(
            header_of(&head, "authorization").as_deref(),
            Some("Bearer sk-from-the-map-123")
        );
    }

    /// A catalog entry's own key variable is read from the adapter's secrets at call time.
    #[tokio::test]
    async fn an_entry_key_comes_from_the_adapters_secrets() {
        let (url, head) = capture_one(CHAT).await;
        let table = format!(
            r#"{{"version": "t", "models": {{"vllm/qwen": {{"roles": ["generation"], "api": "openai",
                "base_url": "{url}/v1", "api_key_env": "VLLM_KEY"}}}}}}"#
        );
        let catalog = Arc::new(Catalog::load(Some(&table)).unwrap());
        let sender = Sender::new(Timeouts::default()).unwrap();
        let p = OpenAi::new("vllm", &format!("{url}/v1"), None, catalog, sender)
            .with_secrets(Arc::new(MapSecrets::new([("VLLM_KEY", "vk-map-7")])));
        p.invoke(&request("vllm/qwen", Role::Generation))
            .await
            .unwrap();
        let head = head.await.unwrap();
        assert_eq!(
            header_of(&head, "authorization").as_deref(),
            Some("Bearer vk-map-7")
        );
    }

    #[tokio::test]
    async fn a_missing_key_names_the_variable_never_a_value() {
        // Values that must never appear in a message, set next to the missing ones.
        let values = ["sk-other-999", "AKIAEXAMPLE123", "vk-old-555"];
        let secrets = MapSecrets::new([
            ("OTHER_API_KEY", values[0]),
            ("AWS_ACCESS_KEY_ID", values[1]), // the secret key is missing: no credentials
            ("VLLM_KEY_OLD", values[2]),
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9"),
            ("REPLICATE_BASE_URL", "http://127.0.0.1:9/v1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ]);
        let secrets: Arc<dyn Secrets> = Arc::new(secrets);
        let hosted = from_secrets(secrets.clone()).unwrap();
        let table = r#"{"version": "t", "models": {"vllm/qwen": {"roles": ["generation"],
            "api": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "VLLM_KEY"}}}"#;
        let vllm = OpenAi::new(
            "vllm",
            "http://127.0.0.1:9/v1",
            None,
            Arc::new(Catalog::load(Some(table)).unwrap()),
            Sender::new(Timeouts::default()).unwrap(),
        )
        .with_secrets(secrets);
        // (adapter, model, role, the variable the message must name)
        let cases: Vec<(Arc<dyn Provider>, &str, Role, &str)> = vec![
            (
                provider(&hosted, "openai"),
                "openai/gpt-4o-mini",
                Role::Generation,
                "OPENAI_API_KEY",
            ),
            (
                provider(&hosted, "anthropic"),
                "anthropic/claude-3-5-haiku-latest",
                Role::Generation,
                "ANTHROPIC_API_KEY",
            ),
            (
                provider(&hosted, "replicate"),
                "replicate/black-forest-labs/flux-schnell",
                Role::Asset,
                "REPLICATE_API_TOKEN",
            ),
            (
                provider(&hosted, "bedrock"),
                "bedrock/anthropic.claude-3-haiku-20240307-v1:0",
                Role::Generation,
                "AWS_SECRET_ACCESS_KEY",
            ),
            (Arc::new(vllm), "vllm/qwen", Role::Generation, "VLLM_KEY"),
        ];
        for (p, model, role, var) in cases {
            let e = p.invoke(&request(model, role)).await.unwrap_err();
            assert_eq!(e.class, ErrorClass::Auth, "{model}: {e}");
            assert!(e.message.contains(var), "{model}: {}", e.message);
            let shown = format!("{} {:?}", e.message, e.details);
            for v in values {
                assert!(!shown.contains(v), "{model} leaked a value: {shown}");
            }
        }
    }
}
