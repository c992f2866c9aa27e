//! Decisions from outside the worker: approvals, cancellation, and taking over a run whose
//! worker died. Each writes state with a condition first, then wakes the run.

use crate::exec::ActionCtx;
use crate::{Engine, EngineError};
use serde_json::json;
use switchyard_core::machine::Event;
use switchyard_core::state::{EventKind, HistoryEvent, RunStatus, StepStatus, WakeReason};
use switchyard_core::workflow::StepKind;
use switchyard_core::StoreError;

impl Engine {
    /// Loads a run, as a tenant sees it (another tenant's run does not exist for it).
    pub async fn load_for(
        &self,
        tenant: Option<&str>,
        run_id: &str,
    ) -> Result<switchyard_core::state::RunSnapshot, EngineError> {
        match self.store.load(run_id).await? {
            Some(s) if tenant.is_none_or(|t| t == s.header.tenant) => Ok(s),
            _ => Err(EngineError::NotFound(format!("no run `{run_id}`"))),
        }
    }

    /// Approves or rejects a waiting approval gate, then wakes the run.
    pub async fn decide(
        &self,
        tenant: Option<&str>,
        run_id: &str,
        step: &str,
        approved: bool,
        comment: Option<String>,
    ) -> Result<(), EngineError> {
        let snap = self.load_for(tenant, run_id).await?;
        if snap.header.status.is_terminal() {
            return Err(EngineError::Conflict(format!(
                "run `{run_id}` has already ended ({})",
                snap.header.status.as_str()
            )));
        }
        let wf = self.definition(&snap.header.workflow.hash).await?;
        match wf.step(step).map(|s| &s.kind) {
            Some(StepKind::Approval(_)) => {}
            Some(_) => {
                return Err(EngineError::BadRequest {
                    field: Some("step".into()),
                    message: format!("step `{step}` is not an approval step"),
                })
            }
            None => {
                return Err(EngineError::NotFound(format!(
                    "run `{run_id}` has no step `{step}`"
                )))
            }
        }
        let rec = match snap.step(step) {
            Some(r) if r.status == StepStatus::Waiting => r.clone(),
            // The same decision again (a retry after an answer that was lost, or after the
            // wake-up failed): the decision stands; the run is woken again, so a retry is
            // what mends a decision whose wake-up never went out.
            Some(r) if r.approval.as_ref().is_some_and(|d| d.approved == approved) => {
                self.due_now(run_id).await?;
                self.wake(run_id, WakeReason::Approval, 0).await?;
                return Ok(());
            }
            other => {
                let status = other.map_or("pending", |r| r.status.as_str());
                return Err(EngineError::Conflict(format!(
                    "step `{step}` is not waiting for approval (it is {status})"
                )));
            }
        };
        let event = Event::Decided {
            rec,
            approved,
            comment,
        };
        let cx = ActionCtx::outside(&wf, run_id, &self.config.owner);
        self.step_event(&cx, step, event).await?;
        self.due_now(run_id).await?;
        self.wake(run_id, WakeReason::Approval, 0).await?;
        Ok(())
    }

    /// Marks a waiting run as due now, after something outside the worker (a decision, a
    /// callback) settled what it waited for and before the wake-up is sent. The wake-up can
    /// be lost (the send fails, or the process dies first); the header then still says the
    /// run waits until a deadline hours away, and the stuck-run sweep would not look at it
    /// before. Due now, the sweep wakes it within [`RECOVERY_BOUND_MS`] — the same bound as
    /// every other lost wake-up. The worker that handles the run writes the real wait back.
    ///
    /// A run that is not waiting is left alone: a pending run is due already, and a running
    /// one is held by a live worker (whose lease the sweep watches) that gets the wake-up
    /// after it lets the run go.
    ///
    /// [`RECOVERY_BOUND_MS`]: switchyard_core::recovery::RECOVERY_BOUND_MS
    pub(crate) async fn due_now(&self, run_id: &str) -> Result<(), EngineError> {
        for _ in 0..8 {
            let Some(mut h) = self.store.load_header(run_id).await? else {
                return Ok(());
            };
            let now = self.now();
            let Some(wait) = h.wait.as_mut().filter(|_| h.status == RunStatus::Waiting) else {
                return Ok(());
            };
            if wait.until.is_some_and(|u| u <= now) {
                return Ok(());
            }
            wait.until = Some(now);
            h.updated_at = now;
            match self.store.put_header(&h, &[]).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::Conflict(format!(
            "run `{run_id}` kept changing; try again"
        )))
    }

    /// Asks a run to stop: steps in flight finish, nothing new starts.
    pub async fn cancel(
        &self,
        tenant: Option<&str>,
        run_id: &str,
    ) -> Result<RunStatus, EngineError> {
        for _ in 0..8 {
            let snap = self.load_for(tenant, run_id).await?;
            if snap.header.status.is_terminal() {
                return Err(EngineError::Conflict(format!(
                    "run `{run_id}` has already ended ({})",
                    snap.header.status.as_str()
                )));
            }
            if snap.header.cancel_requested {
                return Ok(snap.header.status);
            }
            let mut h = snap.header.clone();
            h.cancel_requested = true;
            h.updated_at = self.now();
            let ev = HistoryEvent::run(
                self.now(),
                EventKind::RunCancelRequested,
                serde_json::Value::Null,
            );
            match self.store.put_header(&h, &[ev]).await {
                Ok(_) => {
                    self.wake(run_id, WakeReason::Cancel, 0).await?;
                    return Ok(h.status);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::Conflict(format!(
            "run `{run_id}` kept changing; try again"
        )))
    }

    /// Takes over a run whose lease holder is known to be dead (the local CLI checks the
    /// process id): its lease and its in-flight step claims end now, so the run can go on
    /// without waiting for them to expire.
    pub async fn take_over(&self, run_id: &str, dead_owner: &str) -> Result<(), EngineError> {
        let snap = self.load_for(None, run_id).await?;
        let now = self.now();
        for rec in snap.steps.iter().filter(|r| {
            r.status == StepStatus::Running && r.lease_owner.as_deref() == Some(dead_owner)
        }) {
            let mut r = rec.clone();
            r.lease_until = Some(now);
            self.store.put_step(run_id, &r, &[]).await?;
        }
        let ev = HistoryEvent::run(now, EventKind::LeaseTakenOver, json!({"from": dead_owner}));
        if snap
            .header
            .lease
            .as_ref()
            .is_some_and(|l| l.owner == dead_owner)
        {
            let mut h = snap.header.clone();
            h.lease = None;
            self.store.put_header(&h, &[ev]).await?;
        } else {
            // Only step claims were taken over: the event belongs to no header change.
            self.store.append_events(run_id, &[ev]).await?;
        }
        Ok(())
    }
}
