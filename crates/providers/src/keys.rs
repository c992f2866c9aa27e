//! Which credential a hosted call carries, read through the [`Secrets`] seam.
//!
//! Adapters never read the process environment themselves: the registry hands them an
//! `Arc<dyn Secrets>` (the environment today, a parameter store later), so a test can give a
//! key with [`MapSecrets`](switchyard_core::ports::MapSecrets) and a deployment can swap where
//! keys live without touching an adapter. Error messages name the variable, never its value.

use crate::catalog::Catalog;
use std::sync::Arc;
use switchyard_core::ports::{EnvSecrets, Secrets};
use switchyard_core::{ErrorClass, StepError};

/// The seam adapters built by their old constructors use: the process environment, as before.
pub fn env_secrets() -> Arc<dyn Secrets> {
    Arc::new(EnvSecrets)
}

/// A secret, trimmed, or `None` when unset or blank (a stray newline in a key file is not a key).
pub fn secret(secrets: &dyn Secrets, name: &str) -> Option<String> {
    secrets
        .get(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The first of `names` that is set.
pub fn first_secret(secrets: &dyn Secrets, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| secret(secrets, n))
}

/// The `auth` error for a key that is not set: it names the variable so the fix is obvious.
pub fn missing(var: &str) -> StepError {
    StepError::new(ErrorClass::Auth, format!("{var} is not set"))
}

/// Which key a call uses. A catalog entry naming `api_key_env` always uses that variable;
/// otherwise the adapter's own key, but only for a model served from the adapter's own base URL
/// (an entry pointing at another server never receives the adapter's key). `openai` and
/// `anthropic` cannot work without a key, so a missing one is `auth`, naming `adapter_key_env`
/// (or the entry's variable); OpenAI-compatible local servers (Ollama...) need none.
pub fn resolve_key(
    adapter: &str,
    adapter_base: &str,
    adapter_key: Option<&str>,
    entry_base: Option<&str>,
    entry_key_env: Option<&str>,
    adapter_key_env: &str,
    secrets: &dyn Secrets,
) -> Result<Option<String>, StepError> {
    if let Some(var) = entry_key_env {
        return secret(secrets, var).map(Some).ok_or_else(|| missing(var));
    }
    let own_server = entry_base.is_none_or(|b| same_base(b, adapter_base));
    if !own_server {
        return Ok(None);
    }
    match adapter_key.filter(|k| !k.trim().is_empty()) {
        Some(k) => Ok(Some(k.to_string())),
        None if adapter == "openai" || adapter == "anthropic" => Err(missing(adapter_key_env)),
        None => Ok(None),
    }
}

/// Where a chat adapter (OpenAI and compatibles, Anthropic) sends a model's call and with
/// which key: catalog entries may name their own server (`base_url`) and key (`api_key_env`).
/// Not `Debug`: it holds the key (adapters print `[set]` in its place).
pub struct Endpoint {
    /// The provider prefix served (`openai`, `ollama`, `anthropic`...).
    pub adapter: String,
    pub base_url: String,
    pub api_key: Option<String>,
    /// The variable to name when the adapter's own key is missing.
    pub key_env: &'static str,
    /// Where entries' `api_key_env` keys are read, at call time.
    pub secrets: Arc<dyn Secrets>,
}

impl Endpoint {
    /// An empty key counts as none; entries' keys come from the environment until
    /// [`Endpoint::secrets`] is replaced.
    pub fn new(
        adapter: &str,
        base_url: &str,
        api_key: Option<String>,
        key_env: &'static str,
    ) -> Endpoint {
        Endpoint {
            adapter: adapter.to_string(),
            base_url: base_url.to_string(),
            api_key: api_key.filter(|k| !k.trim().is_empty()),
            key_env,
            secrets: env_secrets(),
        }
    }

    /// The catalog entry's `base_url`, else the adapter's.
    pub fn base_for<'a>(&'a self, catalog: &'a Catalog, model: &str) -> &'a str {
        catalog
            .get(model)
            .and_then(|e| e.base_url.as_deref())
            .unwrap_or(&self.base_url)
    }

    /// The key for a model (see [`resolve_key`]).
    pub fn key_for(&self, catalog: &Catalog, model: &str) -> Result<Option<String>, StepError> {
        let entry = catalog.get(model);
        resolve_key(
            &self.adapter,
            &self.base_url,
            self.api_key.as_deref(),
            entry.and_then(|e| e.base_url.as_deref()),
            entry.and_then(|e| e.api_key_env.as_deref()),
            self.key_env,
            self.secrets.as_ref(),
        )
    }
}

/// Two base URLs name the same server whatever their trailing slashes.
pub fn same_base(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::ports::MapSecrets;

    #[test]
    fn keys_go_only_where_they_belong() {
        let secrets = MapSecrets::new([("VLLM_KEY", "vk-1"), ("BLANK_KEY", "  ")]);
        let base = "https://api.openai.com/v1";
        // (adapter, adapter key, entry base, entry key env, expected key or error class)
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            Result<Option<&'a str>, ErrorClass>,
        );
        let table: Vec<Case> = vec![
            ("openai", Some("sk-1"), None, None, Ok(Some("sk-1"))),
            ("openai", None, None, None, Err(ErrorClass::Auth)),
            ("openai", Some(""), None, None, Err(ErrorClass::Auth)),
            ("anthropic", None, None, None, Err(ErrorClass::Auth)),
            (
                "openai",
                Some("sk-1"),
                Some("https://api.openai.com/v1/"),
                None,
                Ok(Some("sk-1")),
            ),
            // Another server never receives the adapter's key.
            (
                "openai",
                Some("sk-1"),
                Some("http://127.0.0.1:11434/v1"),
                None,
                Ok(None),
            ),
            (
                "ollama",
                None,
                Some("http://127.0.0.1:11434/v1"),
                None,
                Ok(None),
            ),
            ("ollama", None, None, None, Ok(None)),
            (
                "vllm",
                None,
                Some("http://127.0.0.1:8000/v1"),
                Some("VLLM_KEY"),
                Ok(Some("vk-1")),
            ),
            (
                "vllm",
                None,
                Some("http://127.0.0.1:8000/v1"),
                Some("UNSET_KEY"),
                Err(ErrorClass::Auth),
            ),
            (
                "vllm",
                Some("sk-1"),
                None,
                Some("BLANK_KEY"),
                Err(ErrorClass::Auth),
            ),
        ];
        for (adapter, key, entry_base, entry_env, expected) in table {
            let got = resolve_key(
                adapter,
                base,
                key,
                entry_base,
                entry_env,
                "OPENAI_API_KEY",
                &secrets,
            );
            match expected {
                Ok(k) => assert_eq!(got.unwrap().as_deref(), k, "{adapter} {entry_base:?}"),
                Err(class) => {
                    let e = got.unwrap_err();
                    assert_eq!(e.class, class);
                    assert!(e.message.ends_with("is not set"), "{}", e.message);
                    assert!(!e.message.contains("sk-1"), "{}", e.message);
                }
            }
        }
    }

    #[test]
    fn secrets_are_trimmed_and_blank_is_unset() {
        let s = MapSecrets::new([("A", " a-1\n"), ("B", "\t"), ("C", "c-1")]);
        assert_eq!(secret(&s, "A").as_deref(), Some("a-1"));
        assert_eq!(secret(&s, "B"), None);
        assert_eq!(secret(&s, "Z"), None);
        assert_eq!(first_secret(&s, &["B", "Z", "C"]).as_deref(), Some("c-1"));
        assert_eq!(first_secret(&s, &["B", "Z"]), None);
    }
}
