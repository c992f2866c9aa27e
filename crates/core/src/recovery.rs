//! Bounded recovery: how long a run can sit still because of the platform (a worker that died,
//! an invocation that timed out, a receive whose answer was lost, a wake-up that never reached
//! the queue), and the pure decision of which runs a sweep must wake again.
//!
//! Three mechanisms, each with its own number, add up to [`RECOVERY_BOUND_MS`]:
//!
//! 1. **Held wake-ups come back soon.** A worker keeps each wake-up it handles hidden for only
//!    [`HOLD_MS`], extending it every [`HEARTBEAT_MS`] while it still works on it. A worker that
//!    dies stops extending, so the message is visible again within `HOLD_MS` — not after the
//!    queue's visibility timeout (on AWS 6× the function timeout, kept for Lambda's throttled
//!    retries). A wake-up whose handling failed is given back after [`retry_delay_ms`].
//! 2. **Leases lapse.** The redelivered wake-up may find the run still leased by the dead
//!    worker; it is sent again for when that lease ends, at most [`RUN_LEASE_MS`] after the
//!    worker's last renewal. A live worker renews the lease at half-time, also while a call is
//!    in flight, so a lapsed lease means a dead or stalled worker.
//! 3. **Stuck runs are swept.** Every [`SWEEP_INTERVAL_MS`] a sweep looks at the runs that
//!    have not ended and wakes those that are [`stuck`]: due for attention ([`due_at`]) more
//!    than [`STUCK_GRACE_MS`] ago. That catches what (1) and (2) cannot: a first wake-up that
//!    intake never managed to send, a wake-up that reached a dead-letter queue, a timer that was
//!    lost, a batch a Lambda invocation received but never started.
//!
//! So a run moves again at most `max(HOLD_MS, RUN_LEASE_MS)` after its worker dies when its
//! message survives, and at most `STUCK_GRACE_MS + SWEEP_INTERVAL_MS` after it fell due when
//! its message was lost: [`RECOVERY_BOUND_MS`] covers both. An attempt whose model call was in
//! flight when the worker died is settled when its claim ends (the step's `timeout` + 5 s),
//! and retried under its retry policy.
//!
//! A run's own `timeout` must not be spent by the platform: the loader refuses run timeouts
//! under [`MIN_RUN_TIMEOUT_MS`], a multiple of the bound.

use crate::state::{RunHeader, RunStatus};
use crate::time::Millis;

/// How long a wake-up stays hidden while a worker handles it (extended by heartbeats).
pub const HOLD_MS: Millis = 30_000;

/// How often a worker extends the wake-ups it still handles: a third of [`HOLD_MS`], so two
/// heartbeats can fail (a slow or lost `ChangeMessageVisibility`) before a live worker's
/// message shows again.
pub const HEARTBEAT_MS: Millis = HOLD_MS / 3;

/// A run's lease: how long a worker may go without renewing it before another may take the run.
pub const RUN_LEASE_MS: Millis = 60_000;

/// How long after a run fell due for attention it counts as stuck. Covers a redelivered
/// wake-up's way back ([`HOLD_MS`]) and the queue's receive.
pub const STUCK_GRACE_MS: Millis = 30_000;

/// How often the sweep runs: on AWS a scheduled invocation of the worker (EventBridge's
/// `rate(1 minute)`, its shortest), in `switchyard dev` (both backends) a loop of the pool.
pub const SWEEP_INTERVAL_MS: Millis = 60_000;

/// The documented recovery bound: a run held up by the platform moves again within this long
/// of falling due (its lease lapsed, its timer passed, its start was accepted).
pub const RECOVERY_BOUND_MS: Millis = STUCK_GRACE_MS + SWEEP_INTERVAL_MS;

/// The shortest run `timeout` the loader accepts: a run that lost [`RECOVERY_BOUND_MS`] to the
/// platform still has more than two thirds of this left.
pub const MIN_RUN_TIMEOUT_MS: Millis = 5 * 60_000;

/// Most runs one sweep reads; the rest wait for the next sweep (oldest first, so none starves:
/// a run woken leaves the set of due runs).
pub const MAX_SWEEP_RUNS: usize = 10_000;

// The bound must cover a dead worker's redelivery path too.
const _: () = assert!(HOLD_MS <= RECOVERY_BOUND_MS && RUN_LEASE_MS <= RECOVERY_BOUND_MS);
const _: () = assert!(MIN_RUN_TIMEOUT_MS >= 3 * RECOVERY_BOUND_MS);

/// When a run that has not ended next needs a worker, if nothing else happens:
/// - `pending`: at once (its start wake-up is due since it was accepted);
/// - `running`: when its lease ends (a live worker renews it before);
/// - `waiting`: when what it waits for times out (`wait.until`); never for a wait without one.
///
/// `None` for an ended run and for a wait with no end.
pub fn due_at(h: &RunHeader) -> Option<Millis> {
    match h.status {
        RunStatus::Pending => Some(h.updated_at),
        RunStatus::Running => Some(h.lease.as_ref().map_or(h.updated_at, |l| l.until)),
        RunStatus::Waiting => h.wait.as_ref().and_then(|w| w.until),
        RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled => None,
    }
}

/// Whether the sweep must wake the run: it fell due more than [`STUCK_GRACE_MS`] before `now`.
/// A cancellation request counts as due at once: its wake-up may be the one that was lost.
pub fn stuck(h: &RunHeader, now: Millis) -> bool {
    if h.status.is_terminal() {
        return false;
    }
    let due = if h.cancel_requested {
        Some(h.lease.as_ref().map_or(h.updated_at, |l| l.until))
    } else {
        due_at(h)
    };
    due.is_some_and(|d| now >= d.saturating_add(STUCK_GRACE_MS))
}

/// When a wake-up whose handling failed (a storage error, a provider outage the engine could
/// not settle) is given back to the queue: 1 s, doubling with each receive, at most
/// [`HOLD_MS`] — soon, but not a hot loop, and the queue's receive count still dead-letters
/// a message that keeps failing.
pub fn retry_delay_ms(receive_count: u32) -> Millis {
    let doublings = receive_count.saturating_sub(1).min(16);
    (1_000u64 << doublings).min(HOLD_MS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::state::{Lease, ValueRef, WaitInfo, WaitReason, WorkflowPin};

    fn header(status: RunStatus) -> RunHeader {
        RunHeader {
            run_id: "r".into(),
            tenant: "t".into(),
            workflow: WorkflowPin {
                name: "w".into(),
                version: "1".into(),
                hash: "h".into(),
            },
            status,
            input: ValueRef::Inline {
                value: serde_json::Value::Null,
            },
            output: None,
            error: None,
            created_at: 1_000,
            updated_at: 2_000,
            ended_at: None,
            deadline_at: None,
            wait: None,
            cancel_requested: false,
            lease: None,
            callback_url: None,
            metadata: serde_json::Value::Null,
            traceparent: None,
            rerun_of: None,
            reruns: Vec::new(),
            version: 1,
        }
    }

    #[test]
    fn which_runs_are_stuck() {
        let g = STUCK_GRACE_MS;
        let leased = |until| {
            let mut h = header(RunStatus::Running);
            h.lease = Some(Lease {
                owner: "w".into(),
                until,
            });
            h
        };
        let waiting = |until| {
            let mut h = header(RunStatus::Waiting);
            h.wait = Some(WaitInfo {
                reason: WaitReason::Timer,
                until,
            });
            h
        };
        let cancelling = {
            let mut h = waiting(None);
            h.cancel_requested = true;
            h
        };
        // (case, header, now, stuck?)
        let table: Vec<(&str, RunHeader, Millis, bool)> = vec![
            (
                "pending, just accepted",
                header(RunStatus::Pending),
                2_000,
                false,
            ),
            (
                "pending, within the grace",
                header(RunStatus::Pending),
                2_000 + g - 1,
                false,
            ),
            (
                "pending, past the grace",
                header(RunStatus::Pending),
                2_000 + g,
                true,
            ),
            ("running, lease live", leased(50_000), 49_000 + g, false),
            (
                "running, lease lapsed within grace",
                leased(50_000),
                50_000 + g - 1,
                false,
            ),
            (
                "running, lease lapsed past grace",
                leased(50_000),
                50_000 + g,
                true,
            ),
            (
                "running without a lease",
                header(RunStatus::Running),
                2_000 + g,
                true,
            ),
            (
                "waiting on a timer not yet due",
                waiting(Some(90_000)),
                90_000,
                false,
            ),
            (
                "waiting, timer lost",
                waiting(Some(90_000)),
                90_000 + g,
                true,
            ),
            ("waiting with no end", waiting(None), u64::MAX / 2, false),
            (
                "cancel requested, wake-up lost",
                cancelling,
                2_000 + g,
                true,
            ),
            (
                "succeeded",
                header(RunStatus::Succeeded),
                u64::MAX / 2,
                false,
            ),
            ("failed", header(RunStatus::Failed), u64::MAX / 2, false),
            (
                "cancelled",
                header(RunStatus::Cancelled),
                u64::MAX / 2,
                false,
            ),
        ];
        for (case, h, now, want) in table {
            assert_eq!(stuck(&h, now), want, "{case}");
        }
    }

    #[test]
    fn due_times() {
        assert_eq!(due_at(&header(RunStatus::Pending)), Some(2_000));
        assert_eq!(due_at(&header(RunStatus::Succeeded)), None);
        let mut h = header(RunStatus::Running);
        h.lease = Some(Lease {
            owner: "w".into(),
            until: 7,
        });
        assert_eq!(due_at(&h), Some(7));
    }

    #[test]
    fn failed_wake_ups_come_back_soon_then_less_often() {
        let table = [
            (0, 1_000),
            (1, 1_000),
            (2, 2_000),
            (3, 4_000),
            (5, 16_000),
            (6, HOLD_MS),
            (40, HOLD_MS),
        ];
        for (receives, want) in table {
            assert_eq!(retry_delay_ms(receives), want, "receive {receives}");
        }
    }
}
