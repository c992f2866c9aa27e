//! Scripted behaviours: what the fake does with the next request to a provider.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// The providers the fake serves, as named in scripts.
pub const PROVIDERS: [&str; 4] = ["openai", "anthropic", "bedrock", "replicate"];

/// One scripted behaviour. Scripts are consumed in order, one behaviour per request to that
/// provider; when a provider's script is empty the default ([`Behavior::Answer`]) applies.
///
/// Text forms (for [`FromStr`], `--script` and `POST /_fake/script`): `answer`,
/// `rate_limited[:SECS]`, `quota`, `server_error`, `overloaded`, `slow[:MS]`, `malformed`,
/// `schema_invalid`, `unauthorized`, `context_too_long`, `refusal`, and for Replicate `succeed`,
/// `fail`, `no_webhook`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// A plausible success (Replicate: the prediction succeeds, like [`Behavior::Succeed`]).
    Answer,
    /// 429 with `Retry-After: retry_after_secs` (default 1).
    RateLimited { retry_after_secs: u64 },
    /// Quota / credit exhausted: OpenAI 429 `insufficient_quota`, Anthropic 402 `billing_error`,
    /// Bedrock 400 `ServiceQuotaExceededException`, Replicate 402 `Insufficient credit`.
    Quota,
    /// 500 in the provider's error shape.
    ServerError,
    /// Anthropic 529 `overloaded_error`; the others 503.
    Overloaded,
    /// Sleeps `ms` milliseconds, then answers (for client timeouts). Default 1000.
    Slow { ms: u64 },
    /// A success status with a body that is not JSON (truncated).
    Malformed,
    /// A success whose structured answer violates the requested schema (Replicate: a
    /// `succeeded` prediction whose output is not a list of URLs).
    SchemaInvalid,
    /// 401 (Bedrock: 403 `AccessDeniedException`).
    Unauthorized,
    /// The provider's "input too long" error (OpenAI 400 `context_length_exceeded`, Anthropic 400
    /// "prompt is too long", Bedrock 400 `ValidationException`, Replicate 422).
    ContextTooLong,
    /// OpenAI `message.refusal`; Anthropic `stop_reason: "refusal"`; Bedrock
    /// `stopReason: "guardrail_intervened"`; Replicate: the prediction fails with an NSFW error.
    Refusal,
    /// Replicate: the prediction succeeds after the delay (chat providers: an answer).
    Succeed,
    /// Replicate: the prediction fails after the delay (chat providers: a 500).
    Fail,
    /// Replicate: the prediction succeeds but no webhook is sent (chat providers: an answer).
    NoWebhook,
}

impl Behavior {
    /// The name without parameters (`rate_limited`, `slow`, ...), as logged.
    pub fn name(&self) -> &'static str {
        match self {
            Behavior::Answer => "answer",
            Behavior::RateLimited { .. } => "rate_limited",
            Behavior::Quota => "quota",
            Behavior::ServerError => "server_error",
            Behavior::Overloaded => "overloaded",
            Behavior::Slow { .. } => "slow",
            Behavior::Malformed => "malformed",
            Behavior::SchemaInvalid => "schema_invalid",
            Behavior::Unauthorized => "unauthorized",
            Behavior::ContextTooLong => "context_too_long",
            Behavior::Refusal => "refusal",
            Behavior::Succeed => "succeed",
            Behavior::Fail => "fail",
            Behavior::NoWebhook => "no_webhook",
        }
    }
}

impl fmt::Display for Behavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behavior::RateLimited { retry_after_secs } => {
                write!(f, "rate_limited:{retry_after_secs}")
            }
            Behavior::Slow { ms } => write!(f, "slow:{ms}"),
            other => f.write_str(other.name()),
        }
    }
}

const NAMES: &str = "answer, rate_limited[:SECS], quota, server_error, overloaded, slow[:MS], malformed, schema_invalid, unauthorized, context_too_long, refusal, succeed, fail, no_webhook";

impl FromStr for Behavior {
    type Err = String;

    fn from_str(s: &str) -> Result<Behavior, String> {
        let text = s.trim().to_ascii_lowercase().replace('-', "_");
        let (name, arg) = match text.split_once(':') {
            Some((n, a)) => (n.trim().to_string(), Some(a.trim().to_string())),
            None => (text.clone(), None),
        };
        let number = |what: &str, default: u64| -> Result<u64, String> {
            match &arg {
                None => Ok(default),
                Some(a) => a
                    .parse::<u64>()
                    .map_err(|_| format!("`{s}`: {what} must be a whole number")),
            }
        };
        let no_arg = |b: Behavior| -> Result<Behavior, String> {
            match arg {
                None => Ok(b),
                Some(_) => Err(format!("`{s}`: `{name}` takes no parameter")),
            }
        };
        match name.as_str() {
            "answer" => no_arg(Behavior::Answer),
            "rate_limited" => Ok(Behavior::RateLimited {
                retry_after_secs: number("the Retry-After seconds", 1)?,
            }),
            "quota" => no_arg(Behavior::Quota),
            "server_error" => no_arg(Behavior::ServerError),
            "overloaded" => no_arg(Behavior::Overloaded),
            "slow" => Ok(Behavior::Slow {
                ms: number("the delay in milliseconds", 1000)?,
            }),
            "malformed" => no_arg(Behavior::Malformed),
            "schema_invalid" => no_arg(Behavior::SchemaInvalid),
            "unauthorized" => no_arg(Behavior::Unauthorized),
            "context_too_long" => no_arg(Behavior::ContextTooLong),
            "refusal" => no_arg(Behavior::Refusal),
            "succeed" => no_arg(Behavior::Succeed),
            "fail" => no_arg(Behavior::Fail),
            "no_webhook" => no_arg(Behavior::NoWebhook),
            _ => Err(format!(
                "unknown behaviour `{}` (expected one of: {NAMES})",
                s.trim()
            )),
        }
    }
}

impl Serialize for Behavior {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Behavior {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Behavior, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks a provider name used in a script.
pub fn check_provider(name: &str) -> Result<String, String> {
    let p = name.trim().to_ascii_lowercase();
    if PROVIDERS.contains(&p.as_str()) {
        Ok(p)
    } else {
        Err(format!(
            "unknown provider `{}` (expected one of: {})",
            name.trim(),
            PROVIDERS.join(", ")
        ))
    }
}

/// Parses a script such as `openai=rate_limited:2,answer;anthropic=overloaded;replicate=no_webhook`:
/// `;`-separated `provider=behaviour,behaviour,...` groups. A provider named twice gets both lists,
/// in order.
pub fn parse_script(spec: &str) -> Result<HashMap<String, Vec<Behavior>>, String> {
    let mut out: HashMap<String, Vec<Behavior>> = HashMap::new();
    for group in spec.split(';').map(str::trim).filter(|g| !g.is_empty()) {
        let (provider, list) = group
            .split_once('=')
            .ok_or_else(|| format!("`{group}`: expected provider=behaviour[,behaviour...]"))?;
        let provider = check_provider(provider)?;
        let queue = out.entry(provider.clone()).or_default();
        for item in list.split(',').map(str::trim).filter(|b| !b.is_empty()) {
            queue.push(item.parse().map_err(|e| format!("{provider}: {e}"))?);
        }
    }
    Ok(out)
}
