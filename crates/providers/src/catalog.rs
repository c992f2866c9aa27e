//! The model catalog and price table: which hosted models a deployment offers, for which roles,
//! through which API, at what price.
//!
//! The table ships in the repository (`crates/providers/data/prices.json`, with a `version`
//! date) and a user can override or extend it with `SWITCHYARD_PRICES=path.json` in the same
//! format. An entry's provider prefix names its adapter unless `api` says otherwise, which is
//! how an OpenAI-compatible server (Ollama, vLLM, LM Studio) is added: `"ollama/llama3.2":
//! {"api": "openai", "base_url": "http://127.0.0.1:11434/v1", …}`.

use serde::Deserialize;
use std::collections::BTreeMap;
use switchyard_core::model::{split_model, ModelInfo, Role};
use switchyard_core::state::{TokenPrices, Usage};

/// The one token estimate (it lives in core, where `select` reads it too).
pub use switchyard_core::model::estimate_tokens;

/// The table that ships with this version.
pub const BUILTIN_PRICES: &str = include_str!("../data/prices.json");

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub roles: Vec<Role>,
    /// Which adapter serves it: `openai`, `anthropic`, `bedrock`, `replicate`. Default: the prefix.
    #[serde(default)]
    pub api: Option<String>,
    /// Overrides the adapter's base URL for this model (OpenAI-compatible servers).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name of the environment variable holding this model's API key, if not the adapter's.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default, rename = "async")]
    pub asynchronous: bool,
    #[serde(default)]
    pub input_per_mtok: f64,
    #[serde(default)]
    pub output_per_mtok: f64,
    /// Input read from the provider's prompt cache, per million tokens; absent: `input_per_mtok`.
    #[serde(default)]
    pub cache_read_per_mtok: Option<f64>,
    /// Input written to the provider's prompt cache, per million tokens; absent:
    /// `input_per_mtok`.
    #[serde(default)]
    pub cache_write_per_mtok: Option<f64>,
    #[serde(default)]
    pub per_second: f64,
    #[serde(default)]
    pub per_prediction: f64,
    /// Output tokens assumed by the budget estimate when a step sets no `max_tokens`.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Table {
    pub version: String,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    pub models: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    /// Versions of the tables merged, builtin first.
    pub versions: Vec<String>,
    pub models: BTreeMap<String, Entry>,
}

impl Entry {
    /// The entry's token prices.
    pub fn token_prices(&self) -> TokenPrices {
        TokenPrices {
            input_per_mtok: self.input_per_mtok,
            output_per_mtok: self.output_per_mtok,
            cache_read_per_mtok: self.cache_read_per_mtok,
            cache_write_per_mtok: self.cache_write_per_mtok,
        }
    }
}

impl Catalog {
    /// The built-in table, then the override's entries (replacing by model id).
    pub fn load(override_json: Option<&str>) -> Result<Catalog, String> {
        let base: Table = serde_json::from_str(BUILTIN_PRICES)
            .map_err(|e| format!("built-in price table: {e}"))?;
        let mut c = Catalog {
            versions: vec![base.version],
            models: base.models,
        };
        if let Some(text) = override_json {
            let t: Table =
                serde_json::from_str(text).map_err(|e| format!("price override: {e}"))?;
            c.versions.push(t.version);
            c.models.extend(t.models);
        }
        for (id, e) in &c.models {
            if !id.contains('/') {
                return Err(format!("price table: `{id}` must be `provider/model`"));
            }
            if e.roles.is_empty() {
                return Err(format!("price table: `{id}` lists no roles"));
            }
            let cache_prices = [
                ("cache_read_per_mtok", e.cache_read_per_mtok),
                ("cache_write_per_mtok", e.cache_write_per_mtok),
            ];
            for (field, price) in cache_prices {
                if price.is_some_and(|p| !p.is_finite() || p < 0.0) {
                    return Err(format!(
                        "price table: `{id}`: `{field}` must be a price >= 0"
                    ));
                }
            }
        }
        Ok(c)
    }

    pub fn get(&self, model: &str) -> Option<&Entry> {
        self.models.get(model)
    }

    /// The adapter an entry uses.
    pub fn api_of<'a>(&'a self, model: &'a str) -> Option<&'a str> {
        let e = self.models.get(model)?;
        Some(e.api.as_deref().unwrap_or(split_model(model).0))
    }

    /// Provider prefixes served through `api`, e.g. `openai` → `["ollama", "openai"]`.
    pub fn prefixes_for(&self, api: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .models
            .iter()
            .filter(|(id, e)| e.api.as_deref().unwrap_or(split_model(id).0) == api)
            .map(|(id, _)| split_model(id).0.to_string())
            .collect();
        out.dedup();
        out
    }

    /// The models with a given provider prefix, for static checks.
    pub fn models_with_prefix(&self, prefix: &str) -> Vec<ModelInfo> {
        self.models
            .iter()
            .filter(|(id, _)| split_model(id).0 == prefix)
            .map(|(id, e)| ModelInfo {
                id: id.clone(),
                roles: e.roles.clone(),
                asynchronous: e.asynchronous,
                description: format!("{} via the {} API", id, e.api.as_deref().unwrap_or(prefix)),
            })
            .collect()
    }

    /// Cost of a call from its usage (token-priced models: cache reads and writes at the
    /// entry's cache prices where it has them, [`Usage::cost_usd`]) or its run time
    /// (per-second models).
    pub fn cost_usd(&self, model: &str, usage: Option<Usage>, predict_seconds: Option<f64>) -> f64 {
        let Some(e) = self.models.get(model) else {
            return 0.0;
        };
        let tokens = usage.unwrap_or_default().cost_usd(&e.token_prices());
        tokens + predict_seconds.unwrap_or(0.0) * e.per_second + e.per_prediction
    }

    /// What `usage` costs on a token-priced model (a cascade's baseline); `None` for a model
    /// not in the table or priced by time or per prediction, where tokens say nothing.
    pub fn price_tokens(&self, model: &str, usage: Usage) -> Option<f64> {
        let e = self.models.get(model)?;
        (e.per_second == 0.0 && e.per_prediction == 0.0)
            .then(|| self.cost_usd(model, Some(usage), None))
    }

    /// Upper estimate before a call: `input_tokens` (from [`estimate_tokens`]), plus the output
    /// allowance (`max_tokens` or the entry's `max_output_tokens`, default 1024), plus 60 s of
    /// run time for per-second models.
    pub fn estimate_usd(
        &self,
        model: &str,
        input_tokens: u64,
        max_output_tokens: Option<u64>,
    ) -> f64 {
        let Some(e) = self.models.get(model) else {
            return 0.0;
        };
        let input = input_tokens;
        let output = max_output_tokens.or(e.max_output_tokens).unwrap_or(1024);
        self.cost_usd(model, Some(Usage::new(input, output)), Some(60.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_loads_and_prices() {
        let c = Catalog::load(None).unwrap();
        assert_eq!(c.versions, vec!["2026-11-01".to_string()]);
        let cost = c.cost_usd(
            "openai/gpt-4o-mini",
            Some(Usage::new(1_000_000, 1_000_000)),
            None,
        );
        assert!((cost - 0.75).abs() < 1e-9, "{cost}");
        assert_eq!(c.api_of("ollama/llama3.2"), Some("openai"));
        assert_eq!(
            c.api_of("anthropic/claude-3-5-haiku-latest"),
            Some("anthropic")
        );
        assert!(c.prefixes_for("openai").contains(&"ollama".to_string()));
        assert!(c
            .models_with_prefix("replicate")
            .iter()
            .all(|m| m.asynchronous));
        assert!(
            c.estimate_usd("openai/gpt-4o-mini", 100, Some(100))
                >= c.cost_usd("openai/gpt-4o-mini", Some(Usage::new(100, 100)), None)
        );
    }

    /// Cache reads and writes are priced from the table where it has cache prices, at the
    /// input price where it does not; an override may set them, and must set them to prices.
    #[test]
    fn cache_prices_from_the_table() {
        let c = Catalog::load(Some(
            r#"{"version": "mine-1", "models": {
                "openai/o4-mini": {"roles": ["generation"], "input_per_mtok": 1.10,
                    "cache_read_per_mtok": 0.275, "output_per_mtok": 4.40}}}"#,
        ))
        .unwrap();
        let m = 1_000_000;
        let usage = |read, write, reasoning| Usage {
            cache_read_tokens: read,
            cache_write_tokens: write,
            reasoning_tokens: reasoning,
            ..Usage::new(4 * m, m)
        };
        // (model, usage, USD)
        let table = [
            // 2M uncached × 0.80 + 1M read × 0.08 + 1M written × 1.00 + 1M out × 4.00.
            (
                "anthropic/claude-3-5-haiku-latest",
                usage(m, m, 0),
                1.60 + 0.08 + 1.00 + 4.00,
            ),
            // Reasoning is output: priced once, inside `output_tokens`.
            ("openai/gpt-4o-mini", usage(2 * m, 0, m), 0.30 + 0.15 + 0.60),
            ("openai/o4-mini", usage(2 * m, 0, m), 2.20 + 0.55 + 4.40),
            // No cache prices for this model: cached input at the input price.
            (
                "bedrock/anthropic.claude-3-haiku-20240307-v1:0",
                usage(m, m, 0),
                4.0 * 0.25 + 1.25,
            ),
            (
                "bedrock/amazon.nova-lite-v1:0",
                usage(m, m, 0),
                0.18 + 0.015 + 0.24,
            ),
            ("not/in-the-table", usage(m, m, 0), 0.0),
        ];
        for (model, u, want) in table {
            let got = c.cost_usd(model, Some(u), None);
            assert!((got - want).abs() < 1e-9, "{model}: {got} != {want}");
            if model != "not/in-the-table" {
                assert_eq!(c.price_tokens(model, u), Some(got), "{model}");
            }
        }
        for bad in ["-0.1", "\"x\""] {
            let o = format!(
                r#"{{"version": "x", "models": {{"a/b": {{"roles": ["generation"], "cache_write_per_mtok": {bad}}}}}}}"#
            );
            assert!(Catalog::load(Some(&o)).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_token_estimate() {
        // (text, tokens): a quarter of the characters, rounded up; characters, not bytes.
        let table = [
            ("", 0),
            ("a", 1),
            ("abcd", 1),
            ("abcde", 2),
            ("abcdefgh", 2),
            ("héllo wörld", 3),
            ("日本語のテキスト", 2),
            ("🦀🦀🦀🦀🦀", 2),
        ];
        for (text, tokens) in table {
            assert_eq!(estimate_tokens(text), tokens, "{text:?}");
        }
    }

    #[test]
    fn overrides_replace_and_extend() {
        let o = r#"{"version": "mine-1", "models": {
            "openai/gpt-4o-mini": {"roles": ["generation"], "input_per_mtok": 1.0, "output_per_mtok": 1.0},
            "vllm/qwen": {"roles": ["generation"], "api": "openai", "base_url": "http://127.0.0.1:8000/v1"}}}"#;
        let c = Catalog::load(Some(o)).unwrap();
        assert_eq!(
            c.versions,
            vec!["2026-11-01".to_string(), "mine-1".to_string()]
        );
        assert_eq!(c.get("openai/gpt-4o-mini").unwrap().input_per_mtok, 1.0);
        assert_eq!(c.api_of("vllm/qwen"), Some("openai"));
        assert!(Catalog::load(Some(
            r#"{"version": "x", "models": {"nope": {"roles": ["generation"]}}}"#
        ))
        .is_err());
        assert!(Catalog::load(Some(
            r#"{"version": "x", "models": {"a/b": {"roles": [], "typo": 1}}}"#
        ))
        .is_err());
    }
}
