//! Provider callbacks (`POST /hooks/{provider}`). The order matters:
//! 1. verify the Standard Webhooks signature (401 otherwise);
//! 2. drop a `webhook-id` seen before (providers deliver at least once);
//! 3. find the waiting step by run id and step name from the callback URL, and check the
//!    per-attempt token it carries (a callback for an old attempt is acknowledged, not applied);
//! 4. hand the answer to the step machine (`Event::Callback`), whose transition is committed
//!    with a conditional write; record the `webhook-id`; mark the run due and wake it.

use crate::exec::ActionCtx;
use crate::{trace, Engine, EngineError};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use switchyard_core::machine::{settle, Event};
use switchyard_core::model::{ModelResponse, Provider};
use switchyard_core::state::{StepRecord, WakeReason};
use switchyard_core::telemetry::{self, attr, Metric};
use switchyard_core::webhook;
use switchyard_core::workflow::{Step, StepKind, Workflow};
use switchyard_core::StepError;

/// Largest accepted callback body (documented limit).
pub const MAX_CALLBACK_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct CallbackRequest {
    pub provider: String,
    pub query: HashMap<String, String>,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl CallbackRequest {
    /// A callback as `POST /hooks/{provider}` would receive it for `url`, signed the Standard
    /// Webhooks way — how in-process providers (the built-in async model) deliver theirs.
    pub fn signed(
        provider: &str,
        url: &str,
        webhook_id: &str,
        body: &Value,
        secret: &str,
        now_secs: u64,
    ) -> Result<CallbackRequest, webhook::SignatureError> {
        let body = serde_json::to_vec(body).unwrap_or_default();
        let signature = webhook::sign(secret, webhook_id, now_secs, &body)?;
        let headers = HashMap::from([
            ("webhook-id".to_string(), webhook_id.to_string()),
            ("webhook-timestamp".to_string(), now_secs.to_string()),
            ("webhook-signature".to_string(), signature),
        ]);
        let query = url
            .split_once('?')
            .map_or("", |(_, q)| q)
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(CallbackRequest {
            provider: provider.to_string(),
            query,
            headers,
            body,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackResult {
    /// The step was settled and the run woken.
    Applied,
    /// The provider reported progress; nothing to do yet.
    Progress,
    /// A `webhook-id` seen before.
    Duplicate,
    /// For an attempt that is no longer waiting (late, or the step moved on).
    Stale,
}

impl Engine {
    /// The secret that verifies `provider`'s callbacks: its own, else the default (`*`).
    pub fn webhook_secret(&self, provider: &str) -> Option<&String> {
        self.config
            .webhook_secrets
            .get(provider)
            .or_else(|| self.config.webhook_secrets.get("*"))
    }

    /// Verifies and applies one provider callback, and counts it by verdict (`webhooks`).
    pub async fn handle_callback(
        &self,
        req: &CallbackRequest,
    ) -> Result<CallbackResult, EngineError> {
        let provider = if self.providers.get(&req.provider).is_some() {
            req.provider.as_str()
        } else {
            // Anyone can call the route: an unknown name must not become a new series.
            "unknown"
        };
        let span = trace::webhook_span(provider);
        let result = self.apply_callback(req, &span).await;
        let verdict = match &result {
            Ok(CallbackResult::Applied) => "applied",
            Ok(CallbackResult::Progress) => "progress",
            Ok(CallbackResult::Duplicate) => "duplicate",
            Ok(CallbackResult::Stale) => "stale",
            Err(EngineError::Unauthorized(_)) => "unauthorized",
            Err(EngineError::BadRequest { .. } | EngineError::NotFound(_)) => "invalid",
            Err(_) => "error",
        };
        span.record(attr::WEBHOOK_VERDICT, verdict);
        if let Err(e) = &result {
            trace::failed(&span, e.code(), &e.to_string());
        }
        self.observe(&[Metric::new(&telemetry::WEBHOOKS, &[provider, verdict], 1.0)]);
        result
    }

    /// Applies a callback; `span` (the callback's) joins the run's trace once the run is read.
    async fn apply_callback(
        &self,
        req: &CallbackRequest,
        span: &tracing::Span,
    ) -> Result<CallbackResult, EngineError> {
        let id = self.authenticate(req)?;
        // Seen before? (Recorded only after the callback is applied, so a failed attempt to
        // apply it can be retried by the provider.)
        let dedupe_key = format!("{}:{id}", req.provider);
        let (run_id, step_id, token) = target(req)?;
        let snap = self.load_for(None, &run_id).await?;
        self.join_run(span, &snap.header);
        span.record(attr::RUN_ID, run_id.as_str());
        span.record(attr::STEP, step_id.as_str());
        if snap.header.status.is_terminal() {
            // The run ended (cancelled, or failed elsewhere) while the job ran: acknowledge the
            // callback so the provider stops retrying, but change nothing.
            return self.not_applied(&dedupe_key, None).await;
        }
        let wf = self.definition(&snap.header.workflow.hash).await?;
        let step = model_step(&wf, &step_id)?;
        let rec = match snap.step(&step_id) {
            // Waiting for the job, or still in the submit call (a fast job can call back
            // before the provider's answer to the submit arrives): the claim holds the token.
            Some(r) if webhook::callback_is_current(r, &token) => r.clone(),
            // An earlier delivery may have been applied without its wake-up being sent (a
            // crash between the two): wake the run again; a spare wake-up is harmless.
            _ => return self.not_applied(&dedupe_key, Some(&run_id)).await,
        };
        let (provider, body) = self.callback_input(req)?;
        let result = match parse_for_attempt(provider.as_ref(), step, &rec, &body)? {
            Ok((_, ModelResponse::Pending { .. })) => return Ok(CallbackResult::Progress),
            Ok((_, done)) => Ok(done),
            Err(err) => Err(err),
        };
        let event = Event::Callback {
            rec,
            webhook_id: id.to_string(),
            provider: req.provider.clone(),
            result,
        };
        let cx = ActionCtx::outside(&wf, &run_id, &self.config.owner);
        self.step_event(&cx, &step_id, event).await?;
        let now = self.now();
        self.store.record_webhook_id(&dedupe_key, now).await?;
        self.due_now(&run_id).await?;
        self.wake(&run_id, WakeReason::Webhook, 0).await?;
        Ok(CallbackResult::Applied)
    }

    /// The provider that parses the callback and its body as JSON: both checked before the
    /// callback can touch the step.
    fn callback_input(
        &self,
        req: &CallbackRequest,
    ) -> Result<(Arc<dyn Provider>, Value), EngineError> {
        let provider = self
            .providers
            .get(&req.provider)
            .ok_or_else(|| EngineError::NotFound(format!("no provider `{}`", req.provider)))?;
        let body: Value =
            serde_json::from_slice(&req.body).map_err(|e| EngineError::BadRequest {
                field: Some("body".into()),
                message: format!("callback body is not JSON: {e}"),
            })?;
        Ok((provider, body))
    }

    /// Checks size, secret and Standard Webhooks signature; returns the `webhook-id`.
    fn authenticate<'r>(&self, req: &'r CallbackRequest) -> Result<&'r str, EngineError> {
        if req.body.len() > MAX_CALLBACK_BYTES {
            return Err(EngineError::TooLarge(format!(
                "callback body over {MAX_CALLBACK_BYTES} bytes"
            )));
        }
        let header = |name: &str| req.headers.get(name).map(String::as_str).unwrap_or("");
        let secret = self.webhook_secret(&req.provider).ok_or_else(|| {
            EngineError::Unauthorized(format!(
                "no webhook secret is configured for `{}`",
                req.provider
            ))
        })?;
        let id = header("webhook-id");
        if id.is_empty() {
            return Err(EngineError::Unauthorized("missing webhook-id".into()));
        }
        webhook::verify(
            secret,
            id,
            header("webhook-timestamp"),
            header("webhook-signature"),
            &req.body,
            self.now() / 1000,
        )
        .map_err(|e| EngineError::Unauthorized(format!("webhook signature: {e}")))?;
        Ok(id)
    }

    /// Acknowledges a callback that changes nothing (its run ended, or its attempt is no
    /// longer the current one): `Stale` the first time, `Duplicate` after. With `wake`, the
    /// run is woken in case an earlier, applied delivery never sent its wake-up.
    async fn not_applied(
        &self,
        dedupe_key: &str,
        wake: Option<&str>,
    ) -> Result<CallbackResult, EngineError> {
        let fresh = self.store.record_webhook_id(dedupe_key, self.now()).await?;
        if let Some(run_id) = wake {
            self.wake(run_id, WakeReason::Webhook, 0).await?;
        }
        Ok(if fresh {
            CallbackResult::Stale
        } else {
            CallbackResult::Duplicate
        })
    }
}

/// Only model steps wait for callbacks: any other step named in the URL is the caller's error.
fn model_step<'w>(wf: &'w Workflow, step_id: &str) -> Result<&'w Step, EngineError> {
    let Some(step) = wf.step(step_id) else {
        return Err(EngineError::NotFound(format!("no step `{step_id}`")));
    };
    let StepKind::Model(_) = &step.kind else {
        return Err(EngineError::BadRequest {
            field: Some("query.step".into()),
            message: "not a model step".into(),
        });
    };
    Ok(step)
}

/// The provider's reading of the callback, priced as the attempt's model; a body naming another
/// job than the step's is the caller's error (outer `Err`), not a failure of the step.
fn parse_for_attempt(
    provider: &dyn Provider,
    step: &Step,
    rec: &StepRecord,
    body: &Value,
) -> Result<Result<(String, ModelResponse), StepError>, EngineError> {
    // The model this attempt called, as the step declared it: what the record keeps and
    // what is priced, whatever the callback body names.
    let model = rec
        .model
        .clone()
        .or_else(|| settle::current_model(step, rec))
        .unwrap_or_default();
    let parsed = provider.parse_callback(&model, body);
    if let Ok((job_id, _)) = &parsed {
        if rec
            .job
            .as_ref()
            .is_some_and(|j| !j.job_id.is_empty() && &j.job_id != job_id)
        {
            return Err(EngineError::BadRequest {
                field: Some("body.id".into()),
                message: format!("callback is for job `{job_id}`, not the step's job"),
            });
        }
    }
    Ok(parsed)
}

/// The run, step and per-attempt token the callback URL names.
fn target(req: &CallbackRequest) -> Result<(String, String, String), EngineError> {
    let q = |k: &str| {
        req.query
            .get(k)
            .cloned()
            .ok_or_else(|| EngineError::BadRequest {
                field: Some(format!("query.{k}")),
                message: format!("the callback URL lacks `{k}`"),
            })
    };
    Ok((q("run_id")?, q("step")?, q("token")?))
}
