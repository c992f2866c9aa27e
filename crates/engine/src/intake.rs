//! Starting a run: check the input, pin the definition, write the header, send the first
//! wake-up. The header is written before the wake-up is sent, so a wake-up always finds its run.

use crate::{Engine, EngineError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchyard_core::ports::IdempotencyClaim;
use switchyard_core::ports::Message;
use switchyard_core::state::{
    EventKind, HistoryEvent, RunHeader, RunStatus, WakeReason, WakeUp, WorkflowPin,
};
use switchyard_core::workflow::Workflow;
use switchyard_core::{schema, sha256_hex};

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
        check_input(wf, &req.input)?;
        let now = self.now();
        let run_id = new_run_id();
        let mut run_id = run_id;
        if let Some(key) = idempotency_key {
            match self
                .store
                .claim_idempotency(tenant, key, &sha256_hex(&body), &run_id, now)
                .await?
            {
                IdempotencyClaim::New => {}
                IdempotencyClaim::Existing {
                    run_id: existing,
                    same_body: true,
                } => match self.store.load(&existing).await? {
                    Some(snap) => {
                        // The first request may have died before its wake-up was sent: a
                        // pending run gets another (a duplicate wake-up is harmless).
                        if snap.header.status == RunStatus::Pending {
                            let wake = WakeUp {
                                run_id: existing.clone(),
                                reason: WakeReason::Start,
                            };
                            self.queue.send(&Message::Wake(wake), 0).await?;
                        }
                        return Ok(Started {
                            run_id: existing,
                            status: snap.header.status,
                            existing: true,
                        });
                    }
                    // The first request claimed the key but failed before creating the run:
                    // create it now, under the id the key points at.
                    None => run_id = existing,
                },
                IdempotencyClaim::Existing { .. } => {
                    return Err(EngineError::Conflict(format!(
                        "Idempotency-Key `{key}` was used with another request body"
                    )));
                }
            }
        }
        let hash = self.pin_definition(wf).await?;
        let input = self.store_header_value(req.input).await?;
        let header = RunHeader {
            run_id: run_id.clone(),
            tenant: tenant.to_string(),
            workflow: WorkflowPin {
                name: wf.name.clone(),
                version: wf.version.clone(),
                hash: hash.clone(),
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
            callback_url: req.callback_url,
            metadata: req.metadata.unwrap_or(Value::Null),
            version: 1,
        };
        let created = HistoryEvent::run(
            now,
            EventKind::RunCreated,
            json!({"workflow": wf.name, "version": wf.version, "hash": hash}),
        );
        match self.store.create_run(&header, &[created]).await {
            Ok(()) => {}
            // Two requests with one idempotency key raced to create the same run: one did.
            Err(switchyard_core::StoreError::Conflict(_)) if idempotency_key.is_some() => {
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
}

/// Checks the input against the workflow's input schema, naming the first failing field.
pub fn check_input(wf: &Workflow, input: &Value) -> Result<(), EngineError> {
    let Some(s) = &wf.input_schema else {
        return Ok(());
    };
    schema::validate(s, input).map_err(|errors| {
        let first = errors.first().cloned().unwrap_or_default();
        // "at /ticket/text: …" → field "input.ticket.text"
        let field = first
            .strip_prefix("at ")
            .and_then(|r| r.split(':').next())
            .map(|p| {
                let p = p.trim_matches('/').replace('/', ".");
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
