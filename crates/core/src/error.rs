//! The one error taxonomy (docs/workflows.md#fallbacks-and-error-classes).
//!
//! Every failure that reaches the planner carries an [`ErrorClass`]. Adapters classify once, at
//! the boundary where the failure happens (provider HTTP response, store write, our own
//! deadline); nothing downstream re-inspects status codes or message text.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What kind of failure happened, which decides retry and fallback policy.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The request itself is wrong (400/404/413/422, context too long, input fails a schema).
    Invalid,
    /// Credentials missing or refused (401/403).
    Auth,
    /// The account has no quota left (429 `insufficient_quota`).
    QuotaExhausted,
    /// Slow down (429, Anthropic 529); may carry a `retry_after`.
    RateLimited,
    /// Connection reset, 500/502/503: likely to work a moment later.
    Transient,
    /// Our deadline passed, or the provider said 408/504.
    Timeout,
    /// The answer could not be parsed or failed its output schema.
    Malformed,
    /// The model refused for safety or content reasons.
    Refused,
    /// The run's cost budget would be exceeded by this step.
    BudgetExceeded,
    /// A person rejected an approval gate, or a judge failed a value with no repair left.
    Rejected,
    /// The run was cancelled.
    Cancelled,
}

impl ErrorClass {
    /// All classes, for documentation and table tests.
    pub const ALL: [ErrorClass; 11] = [
        ErrorClass::Invalid,
        ErrorClass::Auth,
        ErrorClass::QuotaExhausted,
        ErrorClass::RateLimited,
        ErrorClass::Transient,
        ErrorClass::Timeout,
        ErrorClass::Malformed,
        ErrorClass::Refused,
        ErrorClass::BudgetExceeded,
        ErrorClass::Rejected,
        ErrorClass::Cancelled,
    ];

    /// Whether trying the same model again can help. Deterministic failures are never retried:
    /// retrying a bad request wastes money and worsens rate limiting.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimited
                | ErrorClass::Transient
                | ErrorClass::Timeout
                | ErrorClass::Malformed
        )
    }

    /// Classes for which a declared fallback chain is used when the step does not list
    /// `fallback_on` itself. `invalid`, `auth`, `refused` and `budget_exceeded` fall back only
    /// when the workflow names them; `rejected` and `cancelled` never do.
    pub fn falls_back_by_default(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimited
                | ErrorClass::Transient
                | ErrorClass::Timeout
                | ErrorClass::QuotaExhausted
                | ErrorClass::Malformed
        )
    }

    /// Whether a workflow may ever declare a fallback for this class.
    pub fn may_fall_back(self) -> bool {
        !matches!(
            self,
            ErrorClass::Auth | ErrorClass::Rejected | ErrorClass::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Invalid => "invalid",
            ErrorClass::Auth => "auth",
            ErrorClass::QuotaExhausted => "quota_exhausted",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Transient => "transient",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Malformed => "malformed",
            ErrorClass::Refused => "refused",
            ErrorClass::BudgetExceeded => "budget_exceeded",
            ErrorClass::Rejected => "rejected",
            ErrorClass::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorClass> {
        ErrorClass::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified failure of one step attempt. The message never contains secrets or raw model
/// output; adapters are responsible for that when they build it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepError {
    pub class: ErrorClass,
    pub message: String,
    /// Wait at least this long before trying again (from `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Details a repair attempt can feed back to the model (schema errors, for example).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

impl StepError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        StepError {
            class,
            message: message.into(),
            retry_after_ms: None,
            details: Vec::new(),
        }
    }

    pub fn with_retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    pub fn with_details(mut self, details: Vec<String>) -> Self {
        self.details = details;
        self
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

/// Failures of the ports (state store, queue, blob store). `Conflict` is the optimistic
/// concurrency signal: the caller re-loads and re-plans; it is not an error to report.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (a listing cursor this store did not hand out): the
    /// caller's mistake, never retried.
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_round_trip() {
        for c in ErrorClass::ALL {
            assert_eq!(ErrorClass::parse(c.as_str()), Some(c));
            let json = serde_json::to_string(&c).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
        }
        assert_eq!(ErrorClass::parse("nope"), None);
    }

    #[test]
    fn policy_table() {
        // (class, retryable, falls back by default, may fall back)
        let table = [
            (ErrorClass::Invalid, false, false, true),
            (ErrorClass::Auth, false, false, false),
            (ErrorClass::QuotaExhausted, false, true, true),
            (ErrorClass::RateLimited, true, true, true),
            (ErrorClass::Transient, true, true, true),
            (ErrorClass::Timeout, true, true, true),
            (ErrorClass::Malformed, true, true, true),
            (ErrorClass::Refused, false, false, true),
            (ErrorClass::BudgetExceeded, false, false, true),
            (ErrorClass::Rejected, false, false, false),
            (ErrorClass::Cancelled, false, false, false),
        ];
        for (c, r, d, m) in table {
            assert_eq!(c.is_retryable(), r, "{c} retryable");
            assert_eq!(c.falls_back_by_default(), d, "{c} default fallback");
            assert_eq!(c.may_fall_back(), m, "{c} may fall back");
        }
    }
}
