//! The `local` provider: built-in, deterministic, offline models.
//!
//! None of these is an AI model. Each is a few dozen lines of ordinary code (word counts, a
//! lexicon, regular expressions, a template engine) chosen so that a workflow written for hosted
//! models can be run, tested and benchmarked without network, keys or money, and so that the
//! same input always gives the same output. Every model also honours the fault switch
//! ([`Fault`]) and `params.delay_ms`, so retries, fallbacks and timeouts can be exercised.
//!
//! Usage is counted the way hosted APIs roughly do: about one token per four characters
//! (`ceil(chars / 4)`) of what the model read (plus the instructions) and of what it wrote.
//! Costs come from the *simulated* price table ([`price_table`]), documented as such.

mod async_job;
mod examples;
mod faults;
mod generate;
mod judge;
mod moderation;
mod retrieve;
#[cfg(test)]
mod tests;
mod text;

pub use async_job::ScheduledCallback;
pub use faults::{parse_faults, Fault};

// Simulated usage counts tokens the way budgets estimate them: one rule for both.
use crate::catalog::estimate_tokens;
use async_trait::async_trait;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_core::model::{
    normalized, ModelInfo, ModelOutput, ModelRequest, ModelResponse, Provider, Role,
};
use switchyard_core::state::Usage;
use switchyard_core::{sha256_hex, ErrorClass, StepError};

/// The provider prefix of every model id served here.
const PROVIDER: &str = "local";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algo {
    KeywordClassifier,
    LexiconSentiment,
    ExtractiveSummarizer,
    RegexExtractor,
    TemplateGenerator,
    KeywordRetriever,
    Echo,
    AsyncJob,
    RulesJudge,
    ExampleClassifier,
    LexiconModeration,
}

struct ModelSpec {
    /// Full id, `local/<name>`.
    id: &'static str,
    algo: Algo,
    role: Role,
    description: &'static str,
    /// Simulated USD per 1,000 input tokens.
    usd_per_1k_in: f64,
    /// Simulated USD per 1,000 output tokens.
    usd_per_1k_out: f64,
}

/// Every local model, with its **simulated** prices. Running these models costs nothing; the
/// prices exist only so budgets, pre-call estimates and cost reports have numbers to work with
/// offline. Models whose output is derived data (labels, entities, ids, an image) bill input
/// only, like hosted classification and moderation APIs; the two text generators also bill
/// output. `echo` is free so benchmarks measure the engine, not the price arithmetic.
#[rustfmt::skip]
const MODELS: &[ModelSpec] = &[
    spec("local/keyword-classifier", Algo::KeywordClassifier, Role::Classification, 0.0001, 0.0,
        "Counts configured keywords per label; not a learned model."),
    spec("local/example-classifier", Algo::ExampleClassifier, Role::Classification, 0.003, 0.0,
        "Labels a text by the labelled examples it shares the most rare words with; not a learned model."),
    spec("local/lexicon-sentiment", Algo::LexiconSentiment, Role::Classification, 0.0001, 0.0,
        "Counts words from a small positive/negative word list, with naive negation."),
    spec("local/extractive-summarizer", Algo::ExtractiveSummarizer, Role::Generation, 0.0005, 0.0015,
        "Keeps the sentences with the most frequent words; writes nothing new."),
    spec("local/regex-extractor", Algo::RegexExtractor, Role::Extraction, 0.0002, 0.0,
        "Finds emails, URLs, phone numbers, amounts and dates with regular expressions."),
    spec("local/template-generator", Algo::TemplateGenerator, Role::Generation, 0.001, 0.003,
        "Renders a MiniJinja template over the input; optionally parses it as JSON."),
    spec("local/keyword-retriever", Algo::KeywordRetriever, Role::Retrieval, 0.0002, 0.0,
        "Ranks inline documents by query-term overlap (tf with idf weighting)."),
    spec("local/echo", Algo::Echo, Role::Generation, 0.0, 0.0,
        "Returns its input unchanged; for benchmarks and plumbing tests."),
    spec("local/async-job", Algo::AsyncJob, Role::Asset, 0.002, 0.0,
        "Asynchronous job that draws a titled SVG card and delivers it by callback."),
    spec("local/rules-judge", Algo::RulesJudge, Role::Generation, 0.0001, 0.0,
        "Judges a value by regex rules (forbid/require) for validate steps; not a model."),
    spec("local/lexicon-moderation", Algo::LexiconModeration, Role::Moderation, 0.0001, 0.0,
        "Flags categories from whole-word matches of a small word lexicon; not a model."),
];

const fn spec(
    id: &'static str,
    algo: Algo,
    role: Role,
    usd_per_1k_in: f64,
    usd_per_1k_out: f64,
    description: &'static str,
) -> ModelSpec {
    ModelSpec {
        id,
        algo,
        role,
        description,
        usd_per_1k_in,
        usd_per_1k_out,
    }
}

/// The simulated price table: `(model id, USD per 1k input tokens, USD per 1k output tokens)`.
pub fn price_table() -> Vec<(&'static str, f64, f64)> {
    MODELS
        .iter()
        .map(|m| (m.id, m.usd_per_1k_in, m.usd_per_1k_out))
        .collect()
}

/// Provider-wide settings.
#[derive(Debug, Clone, Default)]
pub struct LocalConfig {
    /// Faults by step id, e.g. from `SWITCHYARD_LOCAL_FAULTS` via [`parse_faults`]. A step's
    /// own `params.fault` takes precedence.
    pub faults: HashMap<String, Fault>,
    /// Treat the built-in models' calls as paid ones: claimed before they start, like a hosted
    /// call (`Provider::repeat_is_free` says no). For tests and simulations of what a hosted
    /// workflow writes; off by default (a built-in call is free to repeat).
    pub claim_calls: bool,
}

/// The `local` provider. Cheap to construct; holds the callbacks its async jobs have scheduled
/// until the host (CLI, test harness) takes and delivers them.
#[derive(Debug, Default)]
pub struct LocalProvider {
    config: LocalConfig,
    scheduled: Arc<Mutex<Vec<ScheduledCallback>>>,
}

impl LocalProvider {
    pub fn new(config: LocalConfig) -> LocalProvider {
        LocalProvider {
            config,
            scheduled: Arc::default(),
        }
    }

    /// Drains the callbacks scheduled so far, oldest first. The host delivers each to its
    /// `url` after `delay_ms`, signed like any provider webhook.
    pub fn take_scheduled(&self) -> Vec<ScheduledCallback> {
        // A poisoned lock only means another thread panicked mid-push; the Vec is still valid.
        let mut guard = self.scheduled.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *guard)
    }
}

impl switchyard_core::model::CallbackSource for LocalProvider {
    fn take_scheduled(&self) -> Vec<ScheduledCallback> {
        LocalProvider::take_scheduled(self)
    }
}

impl LocalProvider {
    /// The fault to fire for this request, if any: `params.fault` first, then the table.
    fn fault_for(&self, request: &ModelRequest) -> Result<Option<Fault>, StepError> {
        let fault = match Fault::from_params(&request.params)? {
            Some(f) => Some(f),
            None => self.config.faults.get(&request.step).cloned(),
        };
        Ok(fault.filter(|f| f.applies(request)))
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn models(&self) -> Vec<ModelInfo> {
        MODELS
            .iter()
            .map(|m| ModelInfo {
                id: m.id.to_string(),
                roles: vec![m.role],
                asynchronous: m.algo == Algo::AsyncJob,
                description: m.description.to_string(),
            })
            .collect()
    }

    /// The built-in models compute in the process and bill nothing: a repeated call is
    /// free. The asynchronous job model is not (it holds a job and sends a callback).
    fn repeat_is_free(&self, model: &str) -> bool {
        !self.config.claim_calls && lookup(model).is_ok_and(|spec| spec.algo != Algo::AsyncJob)
    }

    fn estimate_cost_usd(&self, request: &ModelRequest) -> f64 {
        let Ok(spec) = lookup(&request.model) else {
            return 0.0;
        };
        // Every model reads at most the whole input as JSON: a text field or a string input is
        // never longer than its JSON encoding.
        let input = estimate_tokens(&json_string(&request.input)) + instruction_tokens(request);
        let output = match spec.algo {
            // A summary is a subset of the input's sentences.
            Algo::ExtractiveSummarizer => input,
            // Rendering is deterministic and cheap, so the estimate is exact.
            Algo::TemplateGenerator => generate::render(request).map_or(0, |s| estimate_tokens(&s)),
            // Priced at zero per output token (checked by a test).
            _ => 0,
        };
        price(spec, Usage::new(input, output))
    }

    fn price_usd(&self, model: &str, usage: Usage) -> Option<f64> {
        lookup(model).ok().map(|spec| price(spec, usage))
    }

    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, StepError> {
        let spec = lookup(&request.model)?;
        if !(request.params.is_object() || request.params.is_null()) {
            return Err(invalid("params must be a map"));
        }
        let fault = self.fault_for(request)?;
        // For async-job, `delay_ms` is the callback delay, not latency of the submit call.
        if spec.algo != Algo::AsyncJob {
            let delay = param_u64(&request.params, "delay_ms", 0)?;
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
        }
        if let Some(fault) = fault {
            tracing::debug!(step = %request.step, model = %request.model, kind = %fault.kind,
                attempt = request.attempt, "local provider: firing simulated fault");
            return Err(fault.fire(request).await);
        }
        let answer = match spec.algo {
            Algo::KeywordClassifier => text::keyword_classifier(request)?,
            Algo::LexiconSentiment => text::lexicon_sentiment(request)?,
            Algo::ExtractiveSummarizer => text::extractive_summarizer(request)?,
            Algo::RegexExtractor => text::regex_extractor(request)?,
            Algo::TemplateGenerator => generate::template_generator(request)?,
            Algo::Echo => generate::echo(request),
            Algo::KeywordRetriever => retrieve::keyword_retriever(request)?,
            Algo::AsyncJob => return async_job::submit(request, &self.scheduled),
            Algo::RulesJudge => judge::rules_judge(request)?,
            Algo::LexiconModeration => moderation::lexicon_moderation(request)?,
            Algo::ExampleClassifier => examples::example_classifier(request)?,
        };
        let cost_usd = price(spec, answer.usage);
        Ok(ModelResponse::Completed(ModelOutput {
            output: answer.output,
            usage: Some(answer.usage),
            cost_usd,
            model: request.model.clone(),
            provider_request_id: Some(request_id(request)),
            sources: answer.sources,
        }))
    }

    async fn poll(&self, request: &ModelRequest, job_id: &str) -> Result<ModelResponse, StepError> {
        let spec = lookup(&request.model)?;
        if spec.algo != Algo::AsyncJob {
            return Err(invalid(format!(
                "{} is synchronous and has no jobs to poll",
                request.model
            )));
        }
        async_job::poll(request, job_id)
    }

    fn parse_callback(
        &self,
        _model: &str,
        body: &Value,
    ) -> Result<(String, ModelResponse), StepError> {
        async_job::parse_callback(body)
    }
}

/// What an algorithm produced, before cost and ids are attached.
struct Answer {
    output: Value,
    usage: Usage,
    sources: Vec<String>,
}

impl Answer {
    /// A data-shaped answer (labels, entities...): output tokens count its JSON.
    fn data(request: &ModelRequest, read: &str, output: Value) -> Answer {
        let usage = usage(request, read, &json_string(&output));
        Answer {
            output,
            usage,
            sources: Vec::new(),
        }
    }

    /// A generation-shaped answer: usage counts `read` (plus instructions) and `text`.
    fn generation(request: &ModelRequest, read: &str, text: &str, json: Option<Value>) -> Answer {
        let usage = usage(request, read, text);
        let output = normalized::generation(text, json, usage, "stop", &request.model);
        Answer {
            output,
            usage,
            sources: Vec::new(),
        }
    }
}

fn lookup(model: &str) -> Result<&'static ModelSpec, StepError> {
    MODELS.iter().find(|m| m.id == model).ok_or_else(|| {
        let known: Vec<&str> = MODELS.iter().map(|m| m.id).collect();
        invalid(format!(
            "unknown model `{model}`: the local provider serves {}",
            known.join(", ")
        ))
    })
}

fn price(spec: &ModelSpec, usage: Usage) -> f64 {
    usage.input_tokens as f64 / 1000.0 * spec.usd_per_1k_in
        + usage.output_tokens as f64 / 1000.0 * spec.usd_per_1k_out
}

/// Cost of `usage` on a model named in a callback body (async-job prices if unknown).
fn cost_of(model: &str, usage: Usage) -> f64 {
    let spec = lookup(model)
        .ok()
        .or_else(|| MODELS.iter().find(|m| m.algo == Algo::AsyncJob));
    spec.map_or(0.0, |s| price(s, usage))
}

/// `local-` + 12 hex digits: stable across retries of the same attempt, distinct per attempt.
fn request_id(request: &ModelRequest) -> String {
    let key = format!(
        "{}\n{}\n{}\n{}",
        request.run_id, request.step, request.attempt, request.model
    );
    format!("local-{}", hex_prefix(&key, 12))
}

fn hex_prefix(key: &str, n: usize) -> String {
    sha256_hex(key.as_bytes()).chars().take(n).collect()
}

fn instruction_tokens(request: &ModelRequest) -> u64 {
    request.instructions.as_deref().map_or(0, estimate_tokens)
}

fn usage(request: &ModelRequest, read: &str, written: &str) -> Usage {
    Usage::new(
        estimate_tokens(read) + instruction_tokens(request),
        estimate_tokens(written),
    )
}

fn json_string(v: &Value) -> String {
    // Serializing a `Value` cannot fail (its keys are strings).
    serde_json::to_string(v).unwrap_or_default()
}

/// The text a text model works on: `input.text`, else a string input, else the input's JSON
/// (the rule every moderation model shares, [`crate::hosted::input_text`]).
fn input_text(input: &Value) -> String {
    crate::hosted::input_text(input)
}

/// Lowercased words: runs of letters, digits and apostrophes (curly ones normalized), so
/// "Don’t" and "don't" are the same word and punctuation never matters.
/// How often a phrase (already split by [`words`]) stands in a text's words, whole words only.
fn phrase_hits(text_words: &[String], phrase: &[String]) -> usize {
    text_words
        .windows(phrase.len())
        .filter(|w| *w == phrase)
        .count()
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’'))
        .map(|w| w.trim_matches(|c| c == '\'' || c == '’'))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase().replace('’', "'"))
        .collect()
}

/// Words too common to say what a text is about (summarizer and retriever ignore them).
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been",
    "but", "by", "can", "could", "did", "do", "does", "for", "from", "had", "has", "have", "he",
    "her", "his", "how", "i", "if", "in", "into", "is", "it", "it's", "its", "just", "me", "my",
    "no", "not", "of", "on", "or", "our", "she", "so", "than", "that", "the", "their", "them",
    "then", "there", "these", "they", "this", "to", "us", "was", "we", "were", "what", "when",
    "which", "who", "will", "with", "would", "you", "your",
];

fn is_stopword(w: &str) -> bool {
    STOPWORDS.contains(&w)
}

fn invalid(message: impl Into<String>) -> StepError {
    StepError::new(ErrorClass::Invalid, message)
}

/// A parameter, treating an explicit `null` as absent.
fn param<'a>(params: &'a Value, key: &str) -> Option<&'a Value> {
    params.get(key).filter(|v| !v.is_null())
}

fn param_u64(params: &Value, key: &str, default: u64) -> Result<u64, StepError> {
    match param(params, key) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| invalid(format!("params.{key} must be a non-negative integer"))),
    }
}

fn param_positive(params: &Value, key: &str, default: u64) -> Result<u64, StepError> {
    match param_u64(params, key, default) {
        Ok(0) | Err(_) => Err(invalid(format!("params.{key} must be a positive integer"))),
        ok => ok,
    }
}

fn param_str<'a>(params: &'a Value, key: &str) -> Result<Option<&'a str>, StepError> {
    match param(params, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("params.{key} must be a string"))),
    }
}
