//! Reading a deployment's settings through the [`Secrets`] seam (docs/configuration.md): the
//! process environment locally; on AWS, the settings secret layered over the environment.
//! Every entry point (CLI, `dev`, the Lambda mains) builds its [`Config`] here, so a setting
//! means the same thing everywhere.

use crate::Config;
use std::collections::HashMap;
use switchyard_core::ports::Secrets;
use switchyard_core::webhook;

/// The default webhook secret: `SWITCHYARD_WEBHOOK_SECRET`.
/// Keys of the operator routes and `switchyard dlq --api` (`/v1/ops/…`): comma-separated,
/// each a key of ≥ 16 characters or `sha256:<64 hex>`; separate from tenants' API keys.
pub const OPERATOR_KEYS: &str = "SWITCHYARD_OPERATOR_KEYS";
pub const WEBHOOK_SECRET: &str = "SWITCHYARD_WEBHOOK_SECRET";
/// Base URL providers call back.
pub const PUBLIC_URL: &str = "SWITCHYARD_PUBLIC_URL";
/// Secrets that sign outbound notifications (space-separated while rotating).
pub const CALLBACK_SECRET: &str = "SWITCHYARD_CALLBACK_SECRET";
/// `1` allows `http` and private callback addresses (local development only).
pub const ALLOW_PRIVATE_CALLBACKS: &str = "SWITCHYARD_ALLOW_PRIVATE_CALLBACKS";
/// `1` keeps every run's provider exchanges as a tape in the blob store (docs/operations.md,
/// "Replay with changes"); off by default, and a workflow can ask for it with `tape: true`.
pub const TAPES: &str = "SWITCHYARD_TAPES";

impl Config {
    /// The settings `secrets` gives, on top of the defaults.
    ///
    /// - `owner`: this process's lease-owner prefix (each `handle` call adds its own suffix).
    /// - `fallback_public_url`: used when `SWITCHYARD_PUBLIC_URL` is unset (locally: the
    ///   address this process listens on).
    ///
    /// Webhook secrets: `SWITCHYARD_WEBHOOK_SECRET` for every provider and
    /// `SWITCHYARD_<PROVIDER>_WEBHOOK_SECRET` for one. Without the default, a random secret is
    /// made for this process: enough for the callbacks it delivers to itself, and nothing
    /// from outside verifies against it (on AWS the template always sets one).
    pub fn from_secrets(secrets: &dyn Secrets, owner: String, fallback_public_url: &str) -> Config {
        let mut webhook_secrets = HashMap::new();
        let default = secrets
            .get(WEBHOOK_SECRET)
            .unwrap_or_else(|| webhook::secret_from_bytes(uuid::Uuid::new_v4().as_bytes()));
        webhook_secrets.insert("*".to_string(), default);
        for (name, value) in secrets.with_prefix("SWITCHYARD_") {
            let provider = name
                .strip_prefix("SWITCHYARD_")
                .and_then(|r| r.strip_suffix("_WEBHOOK_SECRET"))
                .filter(|p| !p.is_empty());
            if let Some(p) = provider {
                webhook_secrets.insert(p.to_ascii_lowercase(), value);
            }
        }
        Config {
            owner,
            public_url: secrets
                .get(PUBLIC_URL)
                .unwrap_or_else(|| fallback_public_url.to_string()),
            webhook_secrets,
            callback_secrets: secrets.get(CALLBACK_SECRET).unwrap_or_default(),
            allow_private_callbacks: secrets.get(ALLOW_PRIVATE_CALLBACKS).as_deref() == Some("1"),
            tapes: secrets.get(TAPES).as_deref().map(str::trim) == Some("1"),
            ..Config::default()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use switchyard_core::ports::MapSecrets;

    #[test]
    fn settings_come_from_the_secrets_seam() {
        let s = MapSecrets::new([
            ("SWITCHYARD_WEBHOOK_SECRET", "whsec_default"),
            ("SWITCHYARD_REPLICATE_WEBHOOK_SECRET", "whsec_rep"),
            ("SWITCHYARD_LOCAL_WEBHOOK_SECRET", "  "),
            ("SWITCHYARD_PUBLIC_URL", "https://hooks.example.com"),
            ("SWITCHYARD_TAPES", "1"),
        ]);
        let c = Config::from_secrets(&s, "w".into(), "http://127.0.0.1:1");
        assert_eq!(c.owner, "w");
        assert!(c.tapes);
        assert_eq!(c.public_url, "https://hooks.example.com");
        assert_eq!(c.webhook_secrets["*"], "whsec_default");
        assert_eq!(c.webhook_secrets["replicate"], "whsec_rep");
        // Blank counts as unset: no override for `local`.
        assert!(!c.webhook_secrets.contains_key("local"));
    }

    #[test]
    fn without_settings_a_process_secret_and_the_fallback_url() {
        let empty = MapSecrets::default();
        let a = Config::from_secrets(&empty, "w".into(), "http://127.0.0.1:9");
        let b = Config::from_secrets(&empty, "w".into(), "http://127.0.0.1:9");
        assert_eq!(a.public_url, "http://127.0.0.1:9");
        assert!(!a.tapes, "tapes are off by default");
        assert!(a.webhook_secrets["*"].starts_with("whsec_"));
        assert_ne!(
            a.webhook_secrets["*"], b.webhook_secrets["*"],
            "made per process"
        );
    }
}
