//! The fault switch: makes a local model fail on purpose, so retries, fallbacks, timeouts and
//! failure reports can be tested and demonstrated without a flaky network.
//!
//! Per step, in the workflow: `params.fault = {kind, times, retry_after_ms, model}`.
//! Per process: `SWITCHYARD_LOCAL_FAULTS=classify=transient:2,draft=malformed` (see
//! [`parse_faults`]), which the CLI turns into [`LocalConfig::faults`](super::LocalConfig).

use super::{invalid, param};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use switchyard_core::model::ModelRequest;
use switchyard_core::{ErrorClass, StepError};

/// The classes a provider itself can produce. The others (budget, rejection, cancellation)
/// come from the engine, so simulating them here would test nothing.
pub(super) const KINDS: [ErrorClass; 8] = [
    ErrorClass::Transient,
    ErrorClass::Timeout,
    ErrorClass::Malformed,
    ErrorClass::RateLimited,
    ErrorClass::QuotaExhausted,
    ErrorClass::Invalid,
    ErrorClass::Auth,
    ErrorClass::Refused,
];

/// What `retry_after_ms` a simulated rate limit carries when none is given.
const DEFAULT_RETRY_AFTER_MS: u64 = 1000;

/// A simulated failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: ErrorClass,
    /// Fail while `request.attempt <= times`; later attempts succeed.
    pub times: u32,
    /// Carried on the error (rate limits default to one second).
    pub retry_after_ms: Option<u64>,
    /// Only fail calls to this model id, so a declared fallback model succeeds.
    pub model: Option<String>,
}

impl Fault {
    pub fn new(kind: ErrorClass, times: u32) -> Fault {
        Fault {
            kind,
            times,
            retry_after_ms: None,
            model: None,
        }
    }

    /// Whether this fault fires for `request`.
    pub fn applies(&self, request: &ModelRequest) -> bool {
        request.attempt <= self.times && self.model.as_deref().is_none_or(|m| m == request.model)
    }

    /// Reads `params.fault`; `Ok(None)` when absent.
    pub(super) fn from_params(params: &Value) -> Result<Option<Fault>, StepError> {
        let Some(spec) = param(params, "fault") else {
            return Ok(None);
        };
        if !spec.is_object() {
            return Err(invalid("params.fault must be a map with at least `kind`"));
        }
        let kind = param(spec, "kind")
            .and_then(Value::as_str)
            .and_then(parse_kind)
            .ok_or_else(|| invalid(format!("params.fault.kind must be one of {}", kind_list())))?;
        let times = match param(spec, "times") {
            None => 1,
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| invalid("params.fault.times must be a non-negative integer"))?,
        };
        let retry_after_ms = match param(spec, "retry_after_ms") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                invalid("params.fault.retry_after_ms must be a non-negative integer")
            })?),
        };
        let model = match param(spec, "model") {
            None => None,
            Some(Value::String(m)) => Some(m.clone()),
            Some(_) => return Err(invalid("params.fault.model must be a model id string")),
        };
        Ok(Some(Fault {
            kind,
            times,
            retry_after_ms,
            model,
        }))
    }

    /// Produces the error. A timeout first outlasts the request's own deadline, as a hung
    /// provider would; the engine's timer normally fires before this returns.
    pub(super) async fn fire(&self, request: &ModelRequest) -> StepError {
        let message = format!(
            "simulated {} fault on {} (attempt {} of {} failing)",
            self.kind, request.model, request.attempt, self.times
        );
        let mut error = StepError::new(self.kind, message);
        error.retry_after_ms = match self.kind {
            ErrorClass::RateLimited => Some(self.retry_after_ms.unwrap_or(DEFAULT_RETRY_AFTER_MS)),
            _ => self.retry_after_ms,
        };
        match self.kind {
            ErrorClass::Timeout => {
                let wait = request.timeout_ms.saturating_add(100);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                error
            }
            ErrorClass::Malformed => error.with_details(vec!["output was not valid JSON".into()]),
            _ => error,
        }
    }
}

fn parse_kind(s: &str) -> Option<ErrorClass> {
    ErrorClass::parse(s).filter(|c| KINDS.contains(c))
}

fn kind_list() -> String {
    KINDS.map(ErrorClass::as_str).join(", ")
}

/// Parses the `SWITCHYARD_LOCAL_FAULTS` format: comma-separated `step=kind[:times]` entries,
/// e.g. `classify=transient:2,draft=malformed:1,enrich=timeout` (`times` defaults to 1).
/// An empty spec means no faults. The error names the offending entry.
pub fn parse_faults(spec: &str) -> Result<HashMap<String, Fault>, String> {
    let mut faults = HashMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (step, rest) = entry
            .split_once('=')
            .ok_or_else(|| format!("fault `{entry}`: expected step=kind[:times]"))?;
        let step = step.trim();
        if step.is_empty() {
            return Err(format!("fault `{entry}`: the step id is empty"));
        }
        let (kind, times) = match rest.split_once(':') {
            Some((k, t)) => (k.trim(), Some(t.trim())),
            None => (rest.trim(), None),
        };
        let kind = parse_kind(kind).ok_or_else(|| {
            format!(
                "fault `{entry}`: unknown kind `{kind}` (expected one of {})",
                kind_list()
            )
        })?;
        let times = match times {
            None => 1,
            Some(t) => t
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("fault `{entry}`: times must be a positive integer"))?,
        };
        if faults
            .insert(step.to_string(), Fault::new(kind, times))
            .is_some()
        {
            return Err(format!("fault `{entry}`: step `{step}` is listed twice"));
        }
    }
    Ok(faults)
}
