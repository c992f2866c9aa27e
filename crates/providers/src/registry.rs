//! Building the hosted-API adapters a deployment offers, from the environment (CONTRACT.md):
//! `OPENAI_API_KEY`/`OPENAI_BASE_URL`, `ANTHROPIC_API_KEY`/`ANTHROPIC_BASE_URL`, the standard
//! AWS variables for Bedrock (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`),
//! `REPLICATE_API_TOKEN`/`REPLICATE_BASE_URL`, and `SWITCHYARD_PRICES` for the price table.
//!
//! Every adapter is registered even without its key, so workflows naming its models pass the
//! static checks; a call without a key fails with class `auth` and names the variable to set.

use crate::anthropic::Anthropic;
use crate::bedrock::{AwsCredentials, Bedrock};
use crate::catalog::Catalog;
use crate::http::{Sender, Timeouts};
use crate::openai::OpenAi;
use crate::replicate::Replicate;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::model::Provider;

/// Reads a variable, treating empty as unset.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// What the environment configures: the catalog and one adapter per hosted API.
pub struct Hosted {
    /// Built-in prices plus `SWITCHYARD_PRICES`.
    pub catalog: Arc<Catalog>,
    pub providers: Vec<Arc<dyn Provider>>,
}

/// The catalog and the hosted adapters, from the environment.
pub fn from_env() -> Result<Hosted, String> {
    let override_text = match var("SWITCHYARD_PRICES") {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| format!("SWITCHYARD_PRICES `{path}`: {e}"))?,
        ),
        None => None,
    };
    let catalog = Arc::new(Catalog::load(override_text.as_deref())?);
    let ms = |name: &str, default: u64| -> Result<Duration, String> {
        match var(name) {
            Some(v) => v
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{name} must be a number of milliseconds")),
            None => Ok(Duration::from_millis(default)),
        }
    };
    let timeouts = Timeouts {
        connect: ms("SWITCHYARD_CONNECT_TIMEOUT_MS", 5_000)?,
        request: ms("SWITCHYARD_REQUEST_TIMEOUT_MS", 60_000)?,
    };
    let sender = Sender::new(timeouts).map_err(|e| e.message)?;
    let mut out: Vec<Arc<dyn Provider>> = Vec::new();

    for prefix in catalog.prefixes_for("openai") {
        let (base, key) = if prefix == "openai" {
            (
                var("OPENAI_BASE_URL").unwrap_or_else(|| "https://api.openai.com/v1".into()),
                var("OPENAI_API_KEY"),
            )
        } else {
            // An OpenAI-compatible server: its entries carry the base URL (and key variable).
            let entry = catalog
                .models
                .iter()
                .find(|(id, _)| id.starts_with(&format!("{prefix}/")))
                .map(|(_, e)| e);
            let base = entry
                .and_then(|e| e.base_url.clone())
                .or_else(|| var("OPENAI_BASE_URL"))
                .unwrap_or_else(|| "http://127.0.0.1:11434/v1".into());
            (
                base,
                entry.and_then(|e| e.api_key_env.as_deref()).and_then(var),
            )
        };
        out.push(Arc::new(OpenAi::new(
            &prefix,
            &base,
            key,
            catalog.clone(),
            sender.clone(),
        )));
    }
    let anthropic_base =
        var("ANTHROPIC_BASE_URL").unwrap_or_else(|| "https://api.anthropic.com".into());
    out.push(Arc::new(Anthropic::new(
        &anthropic_base,
        var("ANTHROPIC_API_KEY"),
        catalog.clone(),
        sender.clone(),
    )));
    let region = var("AWS_REGION")
        .or_else(|| var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    let endpoint = crate::bedrock::endpoint_from_env(&region);
    out.push(Arc::new(Bedrock::new(
        &endpoint,
        &region,
        AwsCredentials::from_env(),
        catalog.clone(),
        sender.clone(),
    )));
    let replicate_base =
        var("REPLICATE_BASE_URL").unwrap_or_else(|| "https://api.replicate.com/v1".into());
    out.push(Arc::new(Replicate::new(
        &replicate_base,
        var("REPLICATE_API_TOKEN"),
        catalog.clone(),
        sender,
    )));
    Ok(Hosted {
        catalog,
        providers: out,
    })
}
