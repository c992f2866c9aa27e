//! The planner: a pure function from persisted state to decisions.
//!
//! `plan(workflow, snapshot, now)` never does I/O and never mutates: the worker applies the
//! actions (each a conditional write), then plans again. Because it reads only persisted state,
//! a duplicated, reordered or late wake-up yields the same plan for the same state — which the
//! property tests check.

use crate::error::ErrorClass;
use crate::state::{RunError, RunSnapshot, StepRecord, StepStatus, WaitReason};
use crate::time::Millis;
use crate::workflow::{Step, StepKind, Workflow};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Claim the next attempt of this step and execute it.
    Start { step: String },
    /// The step will not run (route chose another branch, or all its needs were skipped).
    Skip { step: String, reason: String },
    /// The in-flight attempt's lease lapsed (its worker died): settle it as a timeout.
    Expire { step: String },
    /// An asynchronous job is due for a poll, or its wait deadline has passed.
    Poll { step: String },
    /// An approval gate's deadline has passed.
    ApprovalTimeout { step: String },
    /// A finished asset job's output file is due for a download (`crate::asset`): the job
    /// is not run again.
    Download { step: String },
}

impl Action {
    pub fn step(&self) -> &str {
        match self {
            Action::Start { step }
            | Action::Skip { step, .. }
            | Action::Expire { step }
            | Action::Poll { step }
            | Action::ApprovalTimeout { step }
            | Action::Download { step } => step,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded,
    Failed(RunError),
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// When something becomes due without an outside event (retry, poll, lease, deadline).
    pub wake_at: Option<Millis>,
    /// What the run waits on when there is nothing to do now.
    pub wait: Option<WaitReason>,
    /// Set when the run has ended. In-flight attempts (`running` steps) are not waited for.
    pub outcome: Option<Outcome>,
    /// Steps with an attempt in flight.
    pub running: Vec<String>,
}

/// Whether an action may start in an invocation that must end by `deadline` (Lambda's), keeping
/// `margin_ms` for the checkpoint after it. A model call is started only if its whole attempt
/// timeout fits: one the platform kills mid-call is paid for and then made again. A download
/// of an asset file needs its own bound (`asset::DOWNLOAD_TIMEOUT_MS`). Other actions (pure
/// steps, polls, skips) take milliseconds and fit whenever the margin does.
pub fn fits_before_deadline(
    wf: &Workflow,
    action: &Action,
    now: Millis,
    deadline: Option<Millis>,
    margin_ms: u64,
) -> bool {
    let Some(deadline) = deadline else {
        return true;
    };
    let needs = match (action, wf.step(action.step()).and_then(Step::call)) {
        (Action::Start { .. }, Some(m)) => m.timeout.ms(),
        (Action::Download { .. }, _) => crate::asset::DOWNLOAD_TIMEOUT_MS,
        _ => 0,
    };
    now.saturating_add(needs).saturating_add(margin_ms) < deadline
}

/// Whether parking a run must send a delayed wake-up for `wake_at`. The header says a timer
/// for `prev_wait_until` is already queued; that is only sure when the wake-up being handled is
/// not that timer itself (nor a resume after a yield, which queued none). So: send when this
/// wake-up was the timer or a resume, or when the time changed. Sending one too many is
/// harmless (a wake-up re-plans); one too few would strand the run.
pub fn must_send_timer(
    reason: crate::state::WakeReason,
    prev_wait_until: Option<Millis>,
    wake_at: Option<Millis>,
) -> bool {
    wake_at.is_some() && (reason.may_be_timer() || prev_wait_until != wake_at)
}

fn min_opt(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Decides what happens next.
pub fn plan(wf: &Workflow, snap: &RunSnapshot, now: Millis) -> Plan {
    let mut p = Plan::default();
    let header = &snap.header;
    if header.status.is_terminal() {
        return p;
    }
    let pending = StepRecord::pending("");
    let recs: HashMap<&str, &StepRecord> =
        snap.steps.iter().map(|r| (r.step.as_str(), r)).collect();
    let rec = |id: &str| -> &StepRecord { recs.get(id).copied().unwrap_or(&pending) };
    let status =
        |id: &str| -> StepStatus { recs.get(id).map_or(StepStatus::Pending, |r| r.status) };

    p.running = wf
        .steps
        .iter()
        .filter(|s| status(&s.id) == StepStatus::Running)
        .map(|s| s.id.clone())
        .collect();

    if header.cancel_requested {
        if p.running.is_empty() {
            p.outcome = Some(Outcome::Cancelled);
        } else {
            // Let in-flight attempts finish (or lapse), start nothing new.
            p.wake_at = wf
                .steps
                .iter()
                .filter_map(|s| {
                    let r = rec(&s.id);
                    (r.status == StepStatus::Running)
                        .then_some(r.lease_until)
                        .flatten()
                })
                .min();
            for s in &p.running {
                if rec(s).lease_until.is_some_and(|t| t <= now) {
                    p.actions.push(Action::Expire { step: s.clone() });
                }
            }
        }
        return p;
    }

    if let Some(deadline) = header.deadline_at {
        if now >= deadline {
            p.outcome = Some(Outcome::Failed(RunError {
                class: ErrorClass::Timeout,
                message: "the run's timeout passed before it finished".into(),
                step: None,
            }));
            return p;
        }
        p.wake_at = Some(deadline);
    }

    // A failed required step fails the run (the first in definition order, for determinism).
    for s in &wf.steps {
        let r = rec(&s.id);
        if r.status == StepStatus::Failed && !s.optional {
            let (class, message) = r
                .error
                .as_ref()
                .map_or((ErrorClass::Invalid, "step failed".to_string()), |e| {
                    (e.class, e.message.clone())
                });
            p.outcome = Some(Outcome::Failed(RunError {
                class,
                message,
                step: Some(s.id.clone()),
            }));
            return p;
        }
    }

    if wf.steps.iter().all(|s| status(&s.id).is_terminal()) {
        p.outcome = Some(Outcome::Succeeded);
        return p;
    }

    let mut waits_on_approval = false;
    let mut waits_on_callback = false;
    for s in &wf.steps {
        let r = rec(&s.id);
        match r.status {
            StepStatus::Pending => {
                if let Some(a) = readiness(s, &rec) {
                    p.actions.push(a);
                }
            }
            StepStatus::Retrying => {
                // A step reset by a repair waits for its own needs like a pending one.
                if !needs_done(s, &rec) {
                    continue;
                }
                let step = s.id.clone();
                match r.next_at {
                    Some(t) if t > now => p.wake_at = min_opt(p.wake_at, Some(t)),
                    // The job is done; only its file is left to download.
                    _ if r.download.is_some() => p.actions.push(Action::Download { step }),
                    _ => p.actions.push(Action::Start { step }),
                }
            }
            StepStatus::Running => match r.lease_until {
                Some(t) if t <= now => p.actions.push(Action::Expire { step: s.id.clone() }),
                t => p.wake_at = min_opt(p.wake_at, t),
            },
            StepStatus::Waiting => {
                let is_approval = matches!(s.kind, StepKind::Approval(_));
                let due = min_opt(r.next_at, r.deadline_at);
                match due {
                    Some(t) if t <= now => p.actions.push(if is_approval {
                        Action::ApprovalTimeout { step: s.id.clone() }
                    } else {
                        Action::Poll { step: s.id.clone() }
                    }),
                    t => p.wake_at = min_opt(p.wake_at, t),
                }
                if is_approval {
                    waits_on_approval = true;
                } else {
                    waits_on_callback = true;
                }
            }
            StepStatus::Succeeded | StepStatus::Failed | StepStatus::Skipped => {}
        }
    }
    if p.actions.is_empty() && p.running.is_empty() {
        p.wait = Some(if waits_on_approval {
            WaitReason::Approval
        } else if waits_on_callback {
            WaitReason::Callback
        } else {
            WaitReason::Timer
        });
    }
    p
}

fn needs_done<'a>(s: &Step, rec: &impl Fn(&str) -> &'a StepRecord) -> bool {
    s.needs.iter().all(|n| rec(n).status.is_terminal())
        && s.gated_by
            .as_ref()
            .is_none_or(|g| rec(g).status.is_terminal())
}

/// What to do with a pending step whose record says nothing has happened yet.
fn readiness<'a>(s: &Step, rec: &impl Fn(&str) -> &'a StepRecord) -> Option<Action> {
    if !needs_done(s, rec) {
        return None;
    }
    if let Some(route) = &s.gated_by {
        let r = rec(route);
        // A parallel branch inherits its parent's gate: the route chose the parent.
        let target = s.parent.as_deref().unwrap_or(&s.id);
        let chosen = r.status == StepStatus::Succeeded && r.chosen.as_deref() == Some(target);
        if !chosen {
            return Some(Action::Skip {
                step: s.id.clone(),
                reason: format!(
                    "route `{route}` chose {}",
                    r.chosen
                        .as_deref()
                        .map_or("no branch".to_string(), |c| format!("`{c}`"))
                ),
            });
        }
    }
    let own_needs: Vec<&String> = s
        .needs
        .iter()
        .filter(|n| Some(*n) != s.gated_by.as_ref())
        .collect();
    if !own_needs.is_empty()
        && own_needs
            .iter()
            .all(|n| rec(n).status == StepStatus::Skipped)
    {
        return Some(Action::Skip {
            step: s.id.clone(),
            reason: "every step it needs was skipped".into(),
        });
    }
    Some(Action::Start { step: s.id.clone() })
}

#[cfg(test)]
pub(crate) mod tests;
