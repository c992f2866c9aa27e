//! What one attempt cost and who answered it, and how that adds up on a step record. Its own
//! module because two deciders apply it — `settle` (an attempt's outcome) and `cascade` (a
//! tier passed over) — and neither should import the other for it.

use crate::model::split_model;
use crate::state::{StepRecord, Usage};

/// What one attempt cost and who answered it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttemptMeta {
    pub model: Option<String>,
    pub prompt_version: Option<String>,
    pub latency_ms: u64,
    pub cost_usd: f64,
    pub usage: Option<Usage>,
    pub provider_request_id: Option<String>,
    pub sources: Vec<String>,
}

/// Adds an attempt's cost, latency and tokens to the record, and notes who answered.
pub(crate) fn apply_meta(rec: &mut StepRecord, meta: AttemptMeta) {
    rec.latency_ms += meta.latency_ms;
    rec.cost_usd += meta.cost_usd;
    if let Some(m) = meta.model {
        rec.provider = Some(split_model(&m).0.to_string());
        rec.model = Some(m);
    }
    if meta.prompt_version.is_some() {
        rec.prompt_version = meta.prompt_version;
    }
    if let Some(u) = meta.usage {
        rec.usage = Some(rec.usage.unwrap_or_default() + u);
    }
    if meta.provider_request_id.is_some() {
        rec.provider_request_id = meta.provider_request_id;
    }
    if !meta.sources.is_empty() {
        rec.sources = meta.sources;
    }
}
