//! Rerun a run that ended, from a step: `switchyard runs rerun`, `POST /v1/runs/{id}/rerun`
//! and the bulk form (`POST /v1/runs/rerun`). What is rerun and what is reused is decided in
//! `switchyard_core::rerun`; this module loads, checks and writes.
//!
//! **Two writes, one place that copies.** The request creates the new run's header (with
//! `rerun_of`) and links it from the old run's header; it does not copy the reused results.
//! The new run's first activation does (`Engine::adopt_reused`), under its lease, before it
//! plans anything: a process that dies between the header and the copy leaves a run that
//! still copies (the sweep or the redelivered start wakes it), never one that calls the
//! reused steps' models again. Copies are conditional writes of records that do not exist
//! yet, so a copy made twice lands once.

use crate::intake::{check_input, new_header, new_run_id, Claim};
use crate::{Engine, EngineError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use switchyard_core::ports::{ListScope, RunQuery, MAX_LIST_LIMIT, MAX_STEPS_PER_WRITE};
use switchyard_core::rerun::{self as plan, Refusal};
use switchyard_core::state::{
    EventKind, HistoryEvent, RerunOf, RunSnapshot, RunStatus, WakeReason,
};
use switchyard_core::workflow::Workflow;
use switchyard_core::{ErrorClass, Millis, StoreError};

/// Most runs one bulk rerun starts; more matching runs are left for the next call (which
/// skips the ones already rerun).
pub const MAX_BULK_RERUNS: usize = 100;
/// Most runs one bulk rerun looks at to find its matches.
pub const MAX_BULK_SCAN: usize = 2_000;

/// What to rerun a run with.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RerunRequest {
    /// The step to rerun from (with every step that depends on it). Default: the first step
    /// that failed, else the first that did not finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A new input (checked against the input schema); default: the old run's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub input: Option<Value>,
    /// Run on the workflow's newest served version instead of the pinned one: refused when a
    /// step whose result is reused is defined differently there.
    #[serde(default)]
    pub latest: bool,
}

/// A rerun that was started (or found again by its idempotency key).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rerun {
    pub run_id: String,
    pub rerun_of: String,
    /// The step it reruns from.
    pub from: String,
    /// The steps whose recorded results it reuses (not called again).
    pub reused: Vec<String>,
    pub workflow: String,
    pub version: String,
    pub status: RunStatus,
    /// True when an idempotency key matched an earlier rerun (nothing new was started).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub existing: bool,
}

impl Engine {
    /// Starts a new run that reruns `run_id` (which must have ended) from a step.
    pub async fn rerun(
        &self,
        tenant: Option<&str>,
        run_id: &str,
        req: RerunRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Rerun, EngineError> {
        let old = self.load_for(tenant, run_id).await?;
        let old_wf = self.definition(&old.header.workflow.hash).await?;
        let new_wf = if req.latest {
            self.workflows
                .get(&old.header.workflow.name, None)
                .ok_or_else(|| {
                    EngineError::Conflict(format!(
                        "workflow `{}` is not served here any more: rerun on the pinned version",
                        old.header.workflow.name
                    ))
                })?
        } else {
            old_wf.clone()
        };
        let (from, reused) =
            plan::plan(&old_wf, &new_wf, &old, req.from.as_deref()).map_err(refused)?;
        let input = match &req.input {
            Some(v) => v.clone(),
            None => self.load_value(&old.header.input).await?,
        };
        check_input(&new_wf, &input)?;

        let tenant = old.header.tenant.clone();
        let now = self.now();
        let new_id = match idempotency_key {
            None => new_run_id(),
            Some(key) => {
                let body = serde_json::to_vec(&json!({"rerun_of": run_id, "request": &req}))
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                match self.claim_key(&tenant, key, &body, now).await? {
                    Claim::Create(id) => id,
                    Claim::Replay(s) => {
                        // The first request may have died before linking it.
                        self.link_rerun(run_id, &s.run_id, &from).await?;
                        return Ok(Rerun {
                            run_id: s.run_id,
                            rerun_of: run_id.to_string(),
                            from,
                            reused,
                            workflow: new_wf.name.clone(),
                            version: new_wf.version.clone(),
                            status: s.status,
                            existing: true,
                        });
                    }
                }
            }
        };
        let hash = self.pin_definition(&new_wf).await?;
        let input_ref = match req.input {
            Some(v) => self.store_header_value(v).await?,
            None => old.header.input.clone(),
        };
        let extra = (old.header.callback_url.clone(), old.header.metadata.clone());
        let mut header = new_header(&new_id, &tenant, &new_wf, &hash, input_ref, extra, now);
        header.rerun_of = Some(RerunOf {
            run_id: run_id.to_string(),
            from: from.clone(),
        });
        let created = HistoryEvent::run(
            now,
            EventKind::RunCreated,
            json!({
                "workflow": new_wf.name, "version": new_wf.version, "hash": hash,
                "rerun_of": run_id, "from": from, "reused": reused,
            }),
        );
        match self.store.create_run(&header, &[created]).await {
            Ok(()) => {}
            // The key's first request created it and its answer was lost.
            Err(StoreError::Conflict(_)) if idempotency_key.is_some() => {}
            Err(e) => return Err(e.into()),
        }
        self.link_rerun(run_id, &new_id, &from).await?;
        self.wake(&new_id, WakeReason::Start, 0).await?;
        tracing::info!(run_id = %new_id, rerun_of = %run_id, from = %from, "rerun created");
        Ok(Rerun {
            run_id: new_id,
            rerun_of: run_id.to_string(),
            from,
            reused,
            workflow: new_wf.name.clone(),
            version: new_wf.version.clone(),
            status: RunStatus::Pending,
            existing: false,
        })
    }

    /// Adds the rerun to the old run's `reruns` (and its history), so it links both ways.
    async fn link_rerun(&self, old_id: &str, new_id: &str, from: &str) -> Result<(), EngineError> {
        for _ in 0..8 {
            let Some(mut h) = self.store.load_header(old_id).await? else {
                return Err(EngineError::NotFound(format!("no run `{old_id}`")));
            };
            if h.reruns.iter().any(|r| r == new_id) {
                return Ok(());
            }
            h.reruns.push(new_id.to_string());
            let ev = HistoryEvent::run(
                self.now(),
                EventKind::RunRerun,
                json!({"rerun": new_id, "from": from}),
            );
            match self.store.put_header(&h, &[ev]).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::Conflict(format!(
            "run `{old_id}` kept changing; the rerun {new_id} exists but is not linked from it yet"
        )))
    }

    /// A rerun's first activation: copies the old run's results of the steps it reuses that
    /// have no record here yet. Returns whether it wrote anything (the caller reloads).
    pub(crate) async fn adopt_reused(
        &self,
        wf: &Arc<Workflow>,
        snap: &RunSnapshot,
    ) -> Result<bool, EngineError> {
        let Some(of) = &snap.header.rerun_of else {
            return Ok(false);
        };
        let Some(old) = self.store.load(&of.run_id).await? else {
            // The old run is gone (expired): nothing to reuse; the steps run.
            tracing::warn!(run_id = %snap.header.run_id, rerun_of = %of.run_id, "the rerun run is gone; rerunning every step");
            return Ok(false);
        };
        let old_wf = self.definition(&old.header.workflow.hash).await?;
        let reused = match plan::plan(&old_wf, wf, &old, Some(&of.from)) {
            Ok((_, reused)) => reused,
            // Checked when the rerun was made; nothing about the old run changes after it
            // ended, so this is not expected — the steps then simply run.
            Err(e) => {
                tracing::warn!(run_id = %snap.header.run_id, error = %e, "rerun plan refused at start; rerunning every step");
                return Ok(false);
            }
        };
        let now = self.now();
        let missing: Vec<_> = reused
            .iter()
            .filter(|id| snap.step(id).is_none())
            .filter_map(|id| old.step(id))
            .map(|r| {
                let rec = plan::reused_record(r, &of.run_id, now);
                let ev = HistoryEvent::step(
                    now,
                    EventKind::StepReused,
                    &rec.step,
                    rec.attempt,
                    json!({"from_run": of.run_id}),
                );
                (rec, vec![ev])
            })
            .collect();
        if missing.is_empty() {
            return Ok(false);
        }
        for chunk in missing.chunks(MAX_STEPS_PER_WRITE) {
            let writes: Vec<_> = chunk.iter().map(|(r, e)| (r, e.as_slice())).collect();
            match self.store.put_steps(&snap.header.run_id, &writes).await {
                // Conflict: a record exists already — an earlier copy landed.
                Ok(_) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Reruns every run that matches `q` (ended `failed` by default) and has not been rerun
    /// yet, newest first, at most [`MAX_BULK_RERUNS`] per call; with `dry_run`, only says
    /// which.
    pub async fn rerun_many(&self, q: &BulkRerun) -> Result<BulkRerunReport, EngineError> {
        let since = q.since_ms.map(|s| self.now().saturating_sub(s));
        let limit = q.limit.clamp(1, MAX_BULK_RERUNS);
        let mut report = BulkRerunReport::default();
        let mut cursor = None;
        let mut scanned = 0;
        'pages: loop {
            let page = self
                .store
                .list_runs(&RunQuery {
                    scope: q.scope.clone(),
                    status: Some(q.status),
                    workflow: q.workflow.clone(),
                    cursor: cursor.clone(),
                    limit: MAX_LIST_LIMIT.min(200),
                })
                .await?;
            for item in &page.runs {
                scanned += 1;
                if since.is_some_and(|s| item.created_at < s) {
                    break 'pages;
                }
                let Some(h) = self.store.load_header(&item.run_id).await? else {
                    continue;
                };
                if let Some(class) = q.error_class {
                    if h.error.as_ref().map(|e| e.class) != Some(class) {
                        continue;
                    }
                }
                report.matched += 1;
                if let Some(done) = h.reruns.last() {
                    report.skipped.push(Skipped {
                        run_id: h.run_id.clone(),
                        reason: format!("already rerun as {done}"),
                    });
                    continue;
                }
                if report.rerun.len() >= limit {
                    report.more = true;
                    break 'pages;
                }
                if q.dry_run {
                    report.rerun.push(Rerunned {
                        run_id: h.run_id.clone(),
                        rerun: None,
                    });
                    continue;
                }
                // The key makes a repeated bulk call (a retry after a lost answer) find the
                // same rerun instead of starting another.
                let key = format!("rerun:{}", h.run_id);
                match self
                    .rerun(None, &h.run_id, RerunRequest::default(), Some(&key))
                    .await
                {
                    Ok(r) => report.rerun.push(Rerunned {
                        run_id: h.run_id.clone(),
                        rerun: Some(r.run_id),
                    }),
                    Err(e @ (EngineError::Conflict(_) | EngineError::InvalidInput { .. })) => {
                        report.skipped.push(Skipped {
                            run_id: h.run_id.clone(),
                            reason: e.to_string(),
                        })
                    }
                    Err(e) => return Err(e),
                }
            }
            if scanned >= MAX_BULK_SCAN {
                report.more = page.cursor.is_some();
                break;
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        report.scanned = scanned;
        Ok(report)
    }
}

/// A refusal of the rerun plan as the API answers it.
fn refused(r: Refusal) -> EngineError {
    match r {
        Refusal::UnknownStep { .. } | Refusal::NothingToRerun(_) => EngineError::BadRequest {
            field: Some("from".into()),
            message: r.to_string(),
        },
        Refusal::NotEnded(_) | Refusal::Changed { .. } => EngineError::Conflict(r.to_string()),
    }
}

/// Which runs a bulk rerun takes.
#[derive(Debug, Clone)]
pub struct BulkRerun {
    pub scope: ListScope,
    /// `failed` (default) or `cancelled`.
    pub status: RunStatus,
    pub workflow: Option<String>,
    /// Only runs created at most this long ago.
    pub since_ms: Option<Millis>,
    pub error_class: Option<ErrorClass>,
    pub dry_run: bool,
    /// At most this many reruns (capped at [`MAX_BULK_RERUNS`]).
    pub limit: usize,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BulkRerunReport {
    /// Runs looked at.
    pub scanned: usize,
    /// Runs that matched the filter.
    pub matched: usize,
    /// Reruns started (or, with `dry_run`, that would be: `rerun` absent).
    pub rerun: Vec<Rerunned>,
    /// Matching runs not rerun, and why (already rerun, refused).
    pub skipped: Vec<Skipped>,
    /// More matching runs are left: call again.
    pub more: bool,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rerunned {
    pub run_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerun: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Skipped {
    pub run_id: String,
    pub reason: String,
}
