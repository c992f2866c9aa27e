//! The stuck-run sweep: reads the runs that have not ended and wakes again those that
//! [`switchyard_core::recovery::stuck`] says were due for attention too long ago — a first
//! wake-up that intake never managed to send, a wake-up that went to a dead-letter queue, a
//! lost timer, a batch that a Lambda invocation received but never started. The decision is
//! core's; this reads the store and sends the wake-ups. On AWS a scheduled invocation of the
//! worker calls it every minute; `switchyard dev` (both backends) runs it in a loop.

use crate::{Engine, EngineError};
use switchyard_core::ports::MAX_LIST_LIMIT;
use switchyard_core::recovery::{self, MAX_SWEEP_RUNS, STUCK_GRACE_MS};
use switchyard_core::state::WakeReason;
use switchyard_core::telemetry::{self, Metric};

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Runs read (not ended, created more than the grace ago).
    pub checked: usize,
    /// Runs found stuck and woken again.
    pub rewoken: Vec<String>,
    /// More runs were active than one sweep reads ([`MAX_SWEEP_RUNS`]).
    pub truncated: bool,
}

impl Engine {
    /// One sweep over the runs that have not ended. A run can only be stuck once it is older
    /// than the grace, so younger ones are not read. Waking a run that was not really stuck
    /// costs one wake-up that re-plans and finds nothing new to do.
    pub async fn sweep(&self) -> Result<Swept, EngineError> {
        let now = self.now();
        let mut swept = Swept::default();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .store
                .active_runs(
                    0,
                    now.saturating_sub(STUCK_GRACE_MS),
                    cursor.as_deref(),
                    MAX_LIST_LIMIT,
                )
                .await?;
            for h in &page.runs {
                swept.checked += 1;
                if recovery::stuck(h, now) {
                    self.wake(&h.run_id, WakeReason::Recover, 0).await?;
                    tracing::info!(run_id = %h.run_id, status = h.status.as_str(), "stuck run woken again");
                    swept.rewoken.push(h.run_id.clone());
                    let m = Metric::new(&telemetry::SWEEP_REWOKEN, &[], 1.0);
                    self.observe(&[m.for_run(&h.run_id)]);
                }
            }
            cursor = page.cursor;
            if cursor.is_none() {
                break;
            }
            if swept.checked >= MAX_SWEEP_RUNS {
                swept.truncated = true;
                break;
            }
        }
        if swept.rewoken.is_empty() {
            tracing::debug!(checked = swept.checked, "stuck-run sweep: nothing stuck");
        } else {
            tracing::warn!(
                checked = swept.checked,
                rewoken = swept.rewoken.len(),
                truncated = swept.truncated,
                "stuck-run sweep woke runs again"
            );
        }
        Ok(swept)
    }
}
