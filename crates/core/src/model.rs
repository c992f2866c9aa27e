//! The `Provider` port and the normalized shapes every model answer is turned into
//! (docs/workflows.md#model--a-model-call, "Output shapes"). Adapters hide each model API behind
//! `invoke`/`poll`/`parse_callback`; the rest of the system only sees [`ModelRequest`],
//! [`ModelResponse`] and [`StepError`].

use crate::error::StepError;
use crate::state::Usage;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a model is used for. Workflows choose models by role, not the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Classification,
    Extraction,
    Generation,
    Embedding,
    Moderation,
    Transcription,
    Asset,
    Retrieval,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Classification => "classification",
            Role::Extraction => "extraction",
            Role::Generation => "generation",
            Role::Embedding => "embedding",
            Role::Moderation => "moderation",
            Role::Transcription => "transcription",
            Role::Asset => "asset",
            Role::Retrieval => "retrieval",
        }
    }
}

/// Where an asynchronous provider should deliver its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callback {
    /// Full URL, including the query that names run, step and token.
    pub url: String,
    pub run_id: String,
    pub step: String,
    /// Per-attempt token; the webhook handler rejects a callback that does not carry it.
    pub token: String,
}

/// One call of one model, built by the engine from the step definition and earlier outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRequest {
    pub run_id: String,
    pub step: String,
    /// Attempt number over the whole step (1-based).
    pub attempt: u32,
    /// Full model id, `provider/model` (e.g. `local/keyword-classifier`).
    pub model: String,
    pub role: Role,
    /// Rendered prompt template: instructions only. Data travels in `input`, never spliced in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_version: Option<String>,
    /// The data the model works on.
    pub input: Value,
    /// Model-specific parameters from the workflow (labels, templates, top_k, fault switch...).
    #[serde(default)]
    pub params: Value,
    /// The JSON Schema the output must satisfy, when the step declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// Errors from the previous attempt to repair (schema violations, validator findings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feedback: Vec<String>,
    /// Per-attempt timeout the engine enforces; providers may pass it on.
    pub timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Callback>,
}

impl ModelRequest {
    /// The model name without the provider prefix.
    pub fn model_name(&self) -> &str {
        split_model(&self.model).1
    }
}

/// The model a pinned version belongs to: `replicate/owner/name:version` → `replicate/owner/name`.
/// Only Replicate writes versions this way; other ids may contain `:` as part of the name
/// (Bedrock's `anthropic.claude-3-haiku-20240307-v1:0`) and are returned unchanged.
pub fn unversioned(id: &str) -> &str {
    match split_model(id) {
        ("replicate", name) => match name.split_once(':') {
            Some((base, _)) => &id[.."replicate/".len() + base.len()],
            None => id,
        },
        _ => id,
    }
}

/// The one token estimate every budget check, selection and simulated usage uses: about one
/// token per four characters, rounded up. Characters, not bytes, so a non-Latin prompt is not
/// counted four times over; an estimate, so one rule everywhere matters more than its precision.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Splits `provider/model` into its parts; a bare name has provider `""`.
pub fn split_model(id: &str) -> (&str, &str) {
    match id.split_once('/') {
        Some((p, m)) => (p, m),
        None => ("", id),
    }
}

/// A normalized answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelOutput {
    /// One of the normalized shapes (classification, generation, extraction, embedding, asset,
    /// retrieval); see the `normalized` helpers.
    pub output: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub cost_usd: f64,
    /// The model that actually answered (providers may resolve aliases).
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_request_id: Option<String>,
    /// Source references (retrieval): ids of the documents the output is based on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
}

/// A provider either answers now or hands back a job that completes later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ModelResponse {
    Completed(ModelOutput),
    Pending {
        job_id: String,
        /// When polling makes sense, if the callback does not arrive. `None`: poll only once
        /// the step's wait deadline has passed (providers that deliver webhooks reliably).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        poll_after_ms: Option<u64>,
    },
}

/// A model a provider offers, for static checks and docs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub roles: Vec<Role>,
    pub asynchronous: bool,
    pub description: String,
}

/// A model API behind one adapter. Dyn-compatible: the provider is chosen at run time.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The prefix of the model ids it serves (`local`, `openai`, ...).
    fn name(&self) -> &str;

    /// The models it offers. Static checks reject a workflow naming any other.
    fn models(&self) -> Vec<ModelInfo>;

    /// Upper estimate of what the call will cost, used by the budget check before the call.
    fn estimate_cost_usd(&self, request: &ModelRequest) -> f64;

    /// What `usage` costs on `model` at this provider's list prices, when it prices by
    /// tokens: what a cascade's top model would have charged for a call another tier
    /// answered (`crate::machine::cascade`). `None`: this provider does not price that way.
    fn price_usd(&self, _model: &str, _usage: Usage) -> Option<f64> {
        None
    }

    /// Whether calling `model` again costs nothing and changes nothing outside the run: true
    /// only for built-in models computed in the process. Their calls are not claimed before
    /// they start (`crate::machine::Prices::repeat_is_free`); every hosted call is.
    fn repeat_is_free(&self, _model: &str) -> bool {
        false
    }

    /// Calls the model (or submits the job).
    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, StepError>;

    /// [`Provider::invoke`], also returning the HTTP exchanges the call made as a tape (a
    /// JSON document of redacted cassettes) for a run that keeps one (`tape: true`).
    /// Providers without HTTP exchanges (the built-in models) keep the default: no tape.
    async fn invoke_kept(
        &self,
        request: &ModelRequest,
    ) -> (Result<ModelResponse, StepError>, Option<Value>) {
        (self.invoke(request).await, None)
    }

    /// [`Provider::poll`], with its exchanges kept as [`Provider::invoke_kept`] keeps them.
    async fn poll_kept(
        &self,
        request: &ModelRequest,
        job_id: &str,
    ) -> (Result<ModelResponse, StepError>, Option<Value>) {
        (self.poll(request, job_id).await, None)
    }

    /// Asks about a job whose callback has not come. `request` is the same request that
    /// submitted it, rebuilt from persisted state. Synchronous providers keep the default.
    async fn poll(
        &self,
        _request: &ModelRequest,
        _job_id: &str,
    ) -> Result<ModelResponse, StepError> {
        Err(StepError::new(
            crate::error::ErrorClass::Invalid,
            format!(
                "`{}` answers synchronously: it has no jobs to poll",
                self.name()
            ),
        ))
    }

    /// Downloads an asset file this provider produced (`url` from its normalized asset
    /// output), so the engine keeps a copy of it (`crate::asset`). `timeout_ms` bounds the
    /// download. Providers without files keep the default; `data:` URLs never get here.
    async fn fetch_asset(
        &self,
        url: &str,
        _timeout_ms: u64,
    ) -> Result<crate::asset::Fetched, StepError> {
        Err(StepError::new(
            crate::error::ErrorClass::Invalid,
            format!(
                "`{}` has no files to fetch, so its asset `{}` cannot be kept",
                self.name(),
                url.split('?').next().unwrap_or_default()
            ),
        ))
    }

    /// Reads a provider callback body: the job it is about and its result so far. `model` is
    /// the model the waiting attempt called, as the step declared it (`:version` included):
    /// the recorded model and its price come from it, never from what the body says (a body
    /// may name a version hash, or another model). Synchronous providers keep the default.
    fn parse_callback(
        &self,
        _model: &str,
        _body: &Value,
    ) -> Result<(String, ModelResponse), StepError> {
        Err(StepError::new(
            crate::error::ErrorClass::Invalid,
            format!(
                "`{}` answers synchronously: it takes no callbacks",
                self.name()
            ),
        ))
    }

    /// Asks the provider to stop a job the run gave up on (its wait timed out). Best effort:
    /// providers without jobs, or without a cancel call, do nothing.
    async fn cancel(&self, _request: &ModelRequest, _job_id: &str) -> Result<(), StepError> {
        Ok(())
    }
}

/// Builders of the normalized output shapes, so every adapter produces the same fields.
pub mod normalized {
    use crate::state::Usage;
    use serde_json::{json, Map, Value};

    pub fn classification(label: &str, confidence: f64, scores: Map<String, Value>) -> Value {
        json!({"label": label, "confidence": round4(confidence), "scores": Value::Object(scores)})
    }

    pub fn generation(
        text: &str,
        json_value: Option<Value>,
        usage: Usage,
        finish_reason: &str,
        model: &str,
    ) -> Value {
        let mut v = json!({
            "text": text,
            "usage": usage,
            "finish_reason": finish_reason,
            "model": model,
        });
        if let (Some(j), Some(obj)) = (json_value, v.as_object_mut()) {
            obj.insert("json".into(), j);
        }
        v
    }

    pub fn embedding(vector: Vec<f64>) -> Value {
        json!({"vector": vector})
    }

    pub fn asset(url: &str, content_type: &str, bytes: u64, sha256: &str) -> Value {
        json!({"url": url, "content_type": content_type, "bytes": bytes, "sha256": sha256})
    }

    pub fn round4(x: f64) -> f64 {
        (x * 10_000.0).round() / 10_000.0
    }

    /// `{flagged, categories, scores, model}` (moderation role). `categories` maps each
    /// category to whether it was flagged and `scores` each category to a 0–1 score; both come
    /// out sorted by name (the maps are ordered), scores clamped to 0–1 (a non-finite one is 0)
    /// and rounded to 4 places. `flagged` is the provider's verdict on the whole text, OR'd
    /// with every category: a flagged category always flags the output.
    pub fn moderation(
        flagged: bool,
        categories: std::collections::BTreeMap<String, bool>,
        scores: std::collections::BTreeMap<String, f64>,
        model: &str,
    ) -> Value {
        let flagged = flagged || categories.values().any(|c| *c);
        let categories: Map<String, Value> = categories
            .into_iter()
            .map(|(k, v)| (k, Value::Bool(v)))
            .collect();
        let scores: Map<String, Value> = scores
            .into_iter()
            .map(|(k, v)| {
                let v = if v.is_finite() {
                    v.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                (k, json!(round4(v)))
            })
            .collect();
        json!({"flagged": flagged, "categories": categories, "scores": scores, "model": model})
    }
}

/// A webhook a provider running in this process wants delivered to the engine: the built-in
/// asynchronous job calls back this way, so its submit → callback path runs offline through
/// the same signed handler as `POST /hooks/{provider}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduledCallback {
    /// Deliver it this long after it was scheduled.
    pub delay_ms: u64,
    /// The provider whose webhook route receives it (`"local"`).
    pub provider: String,
    /// The job it finishes: what a waiting step's `job.job_id` names.
    pub job_id: String,
    /// `request.callback.url`, which carries run, step and token.
    pub url: String,
    /// Standard Webhooks `webhook-id`; deterministic, so redelivery is recognisable.
    pub webhook_id: String,
    pub body: Value,
}

/// A provider that delivers its own webhooks in-process (see [`ScheduledCallback`]). A driver
/// takes what it scheduled after each round and delivers each when due.
pub trait CallbackSource: Send + Sync {
    /// Everything scheduled since the last call (the source forgets it).
    fn take_scheduled(&self) -> Vec<ScheduledCallback>;
}
