//! Switchyard model adapters: implementations of the core [`Provider`] port.
//!
//! Layout:
//! - [`local`]: the built-in `local/*` models. They are small deterministic algorithms
//!   (word counting, regular expressions, a template engine), **not** AI models. They exist so
//!   that workflows, tests, demos and benchmarks run offline, reproducibly and for free, while
//!   exercising every path the engine has for real providers: classification, generation,
//!   extraction, retrieval, asynchronous jobs with webhooks and polling, failures of every
//!   [`ErrorClass`](switchyard_core::ErrorClass) (the fault switch) and simulated cost.
//!   - `local/mod.rs`: [`LocalProvider`], the model table (roles, descriptions, simulated
//!     prices), dispatch, usage and cost.
//!   - `local/faults.rs`: [`Fault`], the `params.fault` switch and [`parse_faults`] for the
//!     `SWITCHYARD_LOCAL_FAULTS` variable.
//!   - `local/text.rs`: keyword classifier, lexicon sentiment, extractive summarizer, regex
//!     extractor.
//!   - `local/generate.rs`: template generator (MiniJinja) and echo.
//!   - `local/retrieve.rs`: keyword retriever over inline documents.
//!   - `local/async_job.rs`: the asynchronous asset job (Replicate-shaped callbacks).
//!   - `local/moderation.rs`: lexicon moderation (a word list per category).
//!
//! - Hosted APIs, each a pair of pure functions (`to_request`, `from_response`) around the one
//!   shared sender: [`openai`] (and any OpenAI-compatible server), [`anthropic`], [`bedrock`]
//!   (Converse, SigV4), [`replicate`] (asynchronous predictions + webhooks).
//!   - [`call`]: the one glue around them (build, send under the step's timeout, time, read,
//!     log), so every adapter logs the same fields;
//!   - [`keys`]: which key a call carries, read through the core's `Secrets` seam;
//!   - [`http`]: the sender (explicit connect/request timeouts, transport errors classified);
//!   - [`wire`]: the request an adapter builds and the response it reads (plain data);
//!   - [`tape`]: record/replay of exchanges (`SWITCHYARD_RECORD`/`REPLAY`) and the per-call
//!     capture behind a run's kept tape (`tape: true`);
//!   - [`classify`]: the one classifier of HTTP errors into the taxonomy;
//!   - [`hosted`]: instructions apart from data, JSON answers, normalized outputs;
//!   - [`catalog`]: the versioned price table and model catalog (`SWITCHYARD_PRICES` overrides);
//!   - [`registry`]: the adapters a deployment offers, from its secrets (the environment).
//!
//! - [`outbound`]: the callback client the notifier delivers with (address pinned to what
//!   the core's SSRF policy checked, no redirects, time and size caps).
//!
//! Nothing outside this crate knows which provider answered.
//!
//! [`Provider`]: switchyard_core::model::Provider

pub mod anthropic;
pub mod bedrock;
pub mod call;
pub mod catalog;
pub mod classify;
pub mod hosted;
pub mod http;
pub mod keys;
pub mod local;
pub mod openai;
pub mod outbound;
pub mod registry;
pub mod replicate;
pub mod tape;
#[cfg(test)]
mod testing;
pub mod wire;

pub use local::{parse_faults, price_table, Fault, LocalConfig, LocalProvider, ScheduledCallback};
