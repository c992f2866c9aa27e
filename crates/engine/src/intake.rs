//! Starting a run: check the input, pin the definition, write the header, send the first
//! wake-up. The header is written before the wake-up is sent, so a wake-up always finds its run.

use crate::{trace, Engine, EngineError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchyard_core::ports::IdempotencyClaim;
use switchyard_core::state::{
    EventKind, HistoryEvent, RunHeader, RunStatus, ValueRef, WakeReason, WorkflowPin,
};
use switchyard_core::telemetry::{self, attr, Metric};
use switchyard_core::workflow::Workflow;
use switchyard_core::{schema, sha256_hex};
use tracing::Instrument;

/// Largest accepted run input, in bytes of JSON (documented limit).
pub const MAX_INPUT_BYTES: usize = 5 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartRequest {
    pub workflow: String,
    #[serde(default)]
    pub version: Option<String>,
    pub input: Value,
    #[serde(default)]
    pub callback_url: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Started {
    pub run_id: String,
    pub status: RunStatus,
    /// True when an idempotency key matched an earlier run (nothing new was started).
    pub existing: bool,
}

impl Engine {
    /// Starts a run of a registered workflow.
    pub async fn start_run(
        &self,
        tenant: &str,
        req: StartRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Started, EngineError> {
        let wf = self
            .workflows
            .get(&req.workflow, req.version.as_deref())
            .ok_or_else(|| match &req.version {
                Some(v) => EngineError::NotFound(format!(
                    "workflow `{}` version `{v}` is not served here",
                    req.workflow
                )),
                None => {
                    EngineError::NotFound(format!("workflow `{}` is not served here", req.workflow))
                }
            })?;
        self.start_workflow(tenant, &wf, req, idempotency_key).await
    }

    /// Starts a run of a given compiled workflow (the CLI's `run FILE`).
    pub async fn start_workflow(
        &self,
        tenant: &str,
        wf: &Workflow,
        req: StartRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Started, EngineError> {
        let span = trace::start_span(&wf.name, &wf.version);
        let started = self
            .start_traced(tenant, wf, req, idempotency_key, &span)
            .instrument(span.clone())
            .await;
        match &started {
            Ok(s) => {
                span.record(attr::RUN_ID, s.run_id.as_str());
            }
            Err(e) => trace::failed(&span, e.code(), &e.to_string()),
        }
        started
    }

    /// [`Engine::start_workflow`] under its span, whose trace context the run keeps.
    async fn start_traced(
        &self,
        tenant: &str,
        wf: &Workflow,
        req: StartRequest,
        idempotency_key: Option<&str>,
        span: &tracing::Span,
    ) -> Result<Started, EngineError> {
        let body = serde_json::to_vec(&req).map_err(|e| EngineError::BadRequest {
            field: None,
            message: e.to_string(),
        })?;
        if body.len() > MAX_INPUT_BYTES {
            return Err(EngineError::TooLarge(format!(
                "the request is {} bytes; the limit is {MAX_INPUT_BYTES}",
                body.len()
            )));
        }
        // Uploads are adopted (and their references completed) before the schema sees the
        // input, so a schema can bound their size or type.
        let mut req = req;
        req.input = self.adopt_uploads(tenant, req.input).await?;
        check_input(wf, &req.input)?;
        let now = self.now();
        let run_id = match idempotency_key {
            None => new_run_id(),
            Some(key) => match self.claim_key(tenant, key, &body, now).await? {
                Claim::Create(run_id) => run_id,
                Claim::Replay(started) => return Ok(started),
            },
        };
        let hash = self.pin_definition(wf).await?;
        let input = self.store_header_value(req.input).await?;
        let extra = (req.callback_url, req.metadata.unwrap_or(Value::Null));
        let mut header = new_header(&run_id, tenant, wf, &hash, input, extra, now);
        header.traceparent = self.traceparent_of(span);
        let created = HistoryEvent::run(
            now,
            EventKind::RunCreated,
            json!({"workflow": wf.name, "version": wf.version, "hash": hash}),
        );
        match self.store.create_run(&header, &[created]).await {
            Ok(()) => {
                let started = Metric::new(&telemetry::RUNS_STARTED, &[&wf.name], 1.0);
                self.observe(&[started.for_run(&run_id)]);
            }
            // Two requests with one idempotency key raced to create the same run: one did —
            // or this request did, and the answer was lost and the retry found it. The start
            // may not have been sent yet either way: a duplicate wake-up is harmless.
            Err(switchyard_core::StoreError::Conflict(_)) if idempotency_key.is_some() => {
                self.wake(&run_id, WakeReason::Start, 0).await?;
                return Ok(Started {
                    run_id,
                    status: RunStatus::Pending,
                    existing: true,
                });
            }
            Err(e) => return Err(e.into()),
        }
        self.wake(&run_id, WakeReason::Start, 0).await?;
        tracing::info!(run_id = %run_id, workflow = %wf.name, version = %wf.version, "run created");
        Ok(Started {
            run_id,
            status: RunStatus::Pending,
            existing: false,
        })
    }

    /// Claims `(tenant, key)` for a new run id, or finds the run it already names: the same
    /// body replays that run (and re-sends the start of a run that is still pending, in case
    /// the first request died before sending it); another body is a conflict.
    pub(crate) async fn claim_key(
        &self,
        tenant: &str,
        key: &str,
        body: &[u8],
        now: u64,
    ) -> Result<Claim, EngineError> {
        let run_id = new_run_id();
        let existing = match self
            .store
            .claim_idempotency(tenant, key, &sha256_hex(body), &run_id, now)
            .await?
        {
            IdempotencyClaim::New => return Ok(Claim::Create(run_id)),
            IdempotencyClaim::Existing {
                run_id: existing,
                same_body: true,
            } => existing,
            IdempotencyClaim::Existing { .. } => {
                return Err(EngineError::IdempotencyConflict(format!(
                    "Idempotency-Key `{key}` was used with another request body"
                )));
            }
        };
        match self.store.load(&existing).await? {
            Some(snap) => {
                // A duplicate wake-up is harmless; a lost one would strand the run.
                if snap.header.status == RunStatus::Pending {
                    self.wake(&existing, WakeReason::Start, 0).await?;
                }
                Ok(Claim::Replay(Started {
                    run_id: existing,
                    status: snap.header.status,
                    existing: true,
                }))
            }
            // The first request claimed the key but failed before creating the run: create it
            // now, under the id the key points at.
            None => Ok(Claim::Create(existing)),
        }
    }
}

/// What an idempotency key comes to.
pub(crate) enum Claim {
    /// Create the run under this id.
    Create(String),
    /// The key's run exists: answer with it.
    Replay(Started),
}

/// The header of a run intake is about to create (version 1, pending).
pub(crate) fn new_header(
    run_id: &str,
    tenant: &str,
    wf: &Workflow,
    hash: &str,
    input: ValueRef,
    (callback_url, metadata): (Option<String>, Value),
    now: u64,
) -> RunHeader {
    RunHeader {
        run_id: run_id.to_string(),
        tenant: tenant.to_string(),
        workflow: WorkflowPin {
            name: wf.name.clone(),
            version: wf.version.clone(),
            hash: hash.to_string(),
        },
        status: RunStatus::Pending,
        input,
        output: None,
        error: None,
        created_at: now,
        updated_at: now,
        ended_at: None,
        deadline_at: wf.timeout.map(|t| now + t.ms()),
        wait: None,
        cancel_requested: false,
        lease: None,
        callback_url,
        metadata,
        traceparent: None,
        rerun_of: None,
        reruns: Vec::new(),
        version: 1,
    }
}

/// Checks the input against the workflow's input schema, naming the first failing field.
pub fn check_input(wf: &Workflow, input: &Value) -> Result<(), EngineError> {
    let Some(s) = &wf.input_schema else {
        return Ok(());
    };
    schema::validate(s, input).map_err(|errors| {
        // The first failing field, a missing required property included: `input.ticket.id`.
        let field = schema::first_error_field(s, input).map(|p| {
            if p.is_empty() {
                "input".to_string()
            } else {
                format!("input.{p}")
            }
        });
        EngineError::InvalidInput {
            field,
            message: format!(
                "input does not match the workflow's input_schema: {}",
                errors.join("; ")
            ),
        }
    })
}

/// A time-ordered, unique run id (UUID v7): listing by id is listing by creation time.
pub fn new_run_id() -> String {
    format!("run_{}", uuid::Uuid::now_v7().simple())
}
