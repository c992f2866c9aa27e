//! The fakes' prompt cache: what the chat answers report as cached input and reasoning.
//!
//! One rule for the three chat APIs, so that their usage fields carry real numbers: a system
//! prompt of at least [`MIN_CACHED_TOKENS`] tokens is written to the cache the first time a
//! model sees it and read from it every later time (per fake server, per API and model).
//! What the answer says about it is each API's own:
//!
//! - OpenAI caches on its own and reports reads only, inside `prompt_tokens`:
//!   `prompt_tokens_details.cached_tokens`, in 128-token steps.
//! - Anthropic reports `cache_creation_input_tokens` / `cache_read_input_tokens` beside
//!   `input_tokens`, which leaves them out.
//! - Bedrock Converse reports `cacheWriteInputTokens` / `cacheReadInputTokens` beside
//!   `inputTokens`, which leaves them out (`totalTokens` counts them).
//!
//! The real Anthropic and Bedrock APIs cache only up to an explicit breakpoint in the request
//! (`cache_control`, a `cachePoint` block); the fake caches as if the system prompt ended with
//! one.
//!
//! Reasoning: an OpenAI reasoning model (a name starting `o1`, `o3`, `o4` or `gpt-5`) reports
//! [`REASONING_PER_OUTPUT_TOKEN`] reasoning tokens per visible output token in
//! `completion_tokens_details.reasoning_tokens`, counted in `completion_tokens` too.

use crate::lock;
use std::collections::HashSet;
use std::sync::Mutex;

/// The smallest system prompt the fake caches (OpenAI's and Anthropic's minimum for most
/// models).
pub const MIN_CACHED_TOKENS: u64 = 1024;

/// OpenAI reports cached tokens in steps of this many.
pub const OPENAI_CACHE_STEP: u64 = 128;

/// Hidden reasoning tokens per visible output token of an OpenAI reasoning model.
pub const REASONING_PER_OUTPUT_TOKEN: u64 = 3;

/// Prompts remembered at most; past it the cache starts over (a long-running fake stays
/// bounded).
const MAX_ENTRIES: usize = 10_000;

/// What the cache did with a request's system prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cached {
    /// Too short to cache (or no system prompt).
    No,
    /// Seen for the first time: this many tokens written.
    Write(u64),
    /// Seen before: this many tokens read.
    Read(u64),
}

impl Cached {
    pub(crate) fn read(self) -> u64 {
        match self {
            Cached::Read(n) => n,
            _ => 0,
        }
    }

    pub(crate) fn write(self) -> u64 {
        match self {
            Cached::Write(n) => n,
            _ => 0,
        }
    }
}

#[derive(Default)]
pub(crate) struct PromptCache {
    seen: Mutex<HashSet<String>>,
}

impl PromptCache {
    /// Looks up (and remembers) a system prompt of `tokens` tokens for `api` and `model`.
    pub(crate) fn lookup(&self, api: &str, model: &str, system: &str, tokens: u64) -> Cached {
        if tokens < MIN_CACHED_TOKENS {
            return Cached::No;
        }
        let key = switchyard_core::sha256_hex(format!("{api}\n{model}\n{system}").as_bytes());
        let mut seen = lock(&self.seen);
        if seen.contains(&key) {
            return Cached::Read(tokens);
        }
        if seen.len() >= MAX_ENTRIES {
            seen.clear();
        }
        seen.insert(key);
        Cached::Write(tokens)
    }

    pub(crate) fn clear(&self) {
        lock(&self.seen).clear();
    }
}

/// Whether an OpenAI model name is a reasoning model's.
pub(crate) fn is_reasoning_model(model: &str) -> bool {
    ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|p| model.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_once_then_read_per_api_and_model() {
        let c = PromptCache::default();
        let long = MIN_CACHED_TOKENS;
        // (api, model, system, tokens, what the cache does)
        let table = [
            ("openai", "m", "sys", long - 1, Cached::No),
            ("openai", "m", "sys", long, Cached::Write(long)),
            ("openai", "m", "sys", long, Cached::Read(long)),
            ("openai", "other", "sys", long, Cached::Write(long)),
            ("anthropic", "m", "sys", long, Cached::Write(long)),
            ("anthropic", "m", "sys", long, Cached::Read(long)),
            ("anthropic", "m", "changed", long, Cached::Write(long)),
        ];
        for (i, (api, model, system, tokens, want)) in table.into_iter().enumerate() {
            assert_eq!(c.lookup(api, model, system, tokens), want, "case {i}");
        }
        c.clear();
        assert_eq!(c.lookup("openai", "m", "sys", long), Cached::Write(long));
        assert!(is_reasoning_model("o4-mini") && is_reasoning_model("gpt-5-nano"));
        assert!(!is_reasoning_model("gpt-4o-mini"));
    }
}
