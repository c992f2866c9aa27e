//! What an in-process driver does after a round (deliver due callbacks, handle the wake-ups
//! it received): return to its caller, go again at once, or wait until something is due.
//!
//! The driver (`switchyard_engine::driver`) does the I/O; this decides. A run that waits for
//! something outside the process ends the drive: a person's approval, or a provider job whose
//! webhook cannot reach this process and that this process will not deliver itself. What a
//! waiting run waits for comes from its state (the waiting steps' `job` references), never
//! from looking inside callback URLs.

use crate::state::{RunHeader, RunStatus, StepRecord, StepStatus, WaitReason};
use crate::time::Millis;

/// Everything the decision looks at, read by the driver just after a round.
#[derive(Debug, Clone)]
pub struct Look<'a> {
    pub header: &'a RunHeader,
    pub steps: &'a [StepRecord],
    pub now: Millis,
    /// Whether a provider's webhook can reach this process (it serves `/hooks/{provider}`).
    pub listening: bool,
    /// Jobs whose callback this process holds and will deliver: `(provider, job id)`.
    pub held_jobs: &'a [(&'a str, &'a str)],
    /// When the next queued message or held callback is due, if anything is.
    pub next_due: Option<Millis>,
    /// Whether the round did anything (handled a wake-up or delivered a callback).
    pub progressed: bool,
    /// When the drive last made progress.
    pub idle_since: Millis,
    /// How long a drive sits through nothing happening before it returns.
    pub max_idle_ms: u64,
    /// Look at the run at least this often while waiting, because another process sharing
    /// the backend may move it (`None`: this driver is the only one, so when nothing is due
    /// the run cannot move and the drive returns).
    pub watch_ms: Option<u64>,
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Return this status to the caller: the run ended, waits outside, or sat idle too long.
    Return(RunStatus),
    /// Something is due already: go again.
    Again,
    /// Sleep until then (or until a callback arrives over HTTP), then go again.
    SleepUntil(Millis),
}

/// Whether the run waits on something this process will not bring.
pub fn waits_outside(look: &Look<'_>) -> bool {
    let h = look.header;
    if h.status != RunStatus::Waiting {
        return false;
    }
    match h.wait.as_ref().map(|w| w.reason) {
        Some(WaitReason::Approval) => true,
        Some(WaitReason::Callback) => {
            let held = |s: &StepRecord| {
                s.job.as_ref().is_some_and(|j| {
                    look.held_jobs
                        .iter()
                        .any(|(p, id)| *p == j.provider && *id == j.job_id)
                })
            };
            let waiting_jobs = look
                .steps
                .iter()
                .filter(|s| s.status == StepStatus::Waiting && s.job.is_some());
            !look.listening && !waiting_jobs.clone().any(held)
        }
        _ => false,
    }
}

/// The decision after a round.
pub fn after_round(look: &Look<'_>) -> Next {
    let status = look.header.status;
    if status.is_terminal() || waits_outside(look) {
        return Next::Return(status);
    }
    let idle_since = if look.progressed {
        look.now
    } else {
        look.idle_since
    };
    let give_up = idle_since.saturating_add(look.max_idle_ms);
    if look.now >= give_up {
        return Next::Return(status);
    }
    match (look.next_due, look.watch_ms) {
        (Some(t), _) if t <= look.now => Next::Again,
        (next, Some(watch)) => {
            let until = next
                .unwrap_or(give_up)
                .min(give_up)
                .min(look.now.saturating_add(watch));
            Next::SleepUntil(until)
        }
        (Some(t), None) => Next::SleepUntil(t.min(give_up)),
        (None, None) => Next::Return(status),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::state::{JobRef, StepRecord, WaitInfo};

    fn header(status: RunStatus, wait: Option<WaitReason>) -> RunHeader {
        let mut h: RunHeader = serde_json::from_value(serde_json::json!({
            "run_id": "r", "tenant": "t",
            "workflow": {"name": "w", "version": "1", "hash": "h"},
            "status": "pending", "input": {"kind": "inline", "value": null},
            "created_at": 0, "updated_at": 0, "version": 1
        }))
        .unwrap();
        h.status = status;
        h.wait = wait.map(|reason| WaitInfo {
            reason,
            until: None,
        });
        h
    }

    fn waiting_on(job: &str) -> StepRecord {
        let mut s = StepRecord::pending("gen");
        s.status = StepStatus::Waiting;
        s.job = Some(JobRef {
            provider: "local".into(),
            model: "local/async-job".into(),
            job_id: job.into(),
            callback_token: "tok".into(),
        });
        s
    }

    struct Case {
        name: &'static str,
        status: RunStatus,
        wait: Option<WaitReason>,
        listening: bool,
        held: &'static [(&'static str, &'static str)],
        next_due: Option<Millis>,
        progressed: bool,
        idle_since: Millis,
        watch_ms: Option<u64>,
        want: Next,
    }

    const NOW: Millis = 1_000_000;

    fn base(name: &'static str) -> Case {
        Case {
            name,
            status: RunStatus::Running,
            wait: None,
            listening: false,
            held: &[],
            next_due: None,
            progressed: true,
            idle_since: NOW,
            watch_ms: Some(100),
            want: Next::SleepUntil(NOW + 100),
        }
    }

    #[test]
    fn decisions_after_a_round() {
        let cases = [
            Case {
                status: RunStatus::Succeeded,
                want: Next::Return(RunStatus::Succeeded),
                ..base("an ended run returns")
            },
            Case {
                status: RunStatus::Waiting,
                wait: Some(WaitReason::Approval),
                listening: true,
                want: Next::Return(RunStatus::Waiting),
                ..base("an approval is always outside")
            },
            Case {
                status: RunStatus::Waiting,
                wait: Some(WaitReason::Callback),
                want: Next::Return(RunStatus::Waiting),
                ..base("a job nobody will call back, not listening: outside")
            },
            Case {
                status: RunStatus::Waiting,
                wait: Some(WaitReason::Callback),
                held: &[("local", "job_1")],
                next_due: Some(NOW + 50),
                want: Next::SleepUntil(NOW + 50),
                ..base("a job whose callback this process holds: wait for it")
            },
            Case {
                status: RunStatus::Waiting,
                wait: Some(WaitReason::Callback),
                held: &[("local", "job_other")],
                next_due: Some(NOW + 50),
                want: Next::Return(RunStatus::Waiting),
                ..base("a held callback for another job does not count")
            },
            Case {
                status: RunStatus::Waiting,
                wait: Some(WaitReason::Callback),
                held: &[("replicate", "job_1")],
                want: Next::Return(RunStatus::Waiting),
                ..base("same job id from another provider does not count")
            },
            Case {
                status: RunStatus::Waiting,
                wait: Some(WaitReason::Callback),
                listening: true,
                want: Next::SleepUntil(NOW + 100),
                ..base("listening: a remote webhook can arrive, keep watching")
            },
            Case {
                status: RunStatus::Waiting,
                wait: Some(WaitReason::Timer),
                next_due: Some(NOW + 3_000),
                want: Next::SleepUntil(NOW + 100),
                ..base("a timer: sleep, but look again within the watch period")
            },
            Case {
                next_due: Some(NOW),
                want: Next::Again,
                ..base("something due now: go again")
            },
            Case {
                next_due: Some(NOW + 3_000),
                watch_ms: None,
                want: Next::SleepUntil(NOW + 3_000),
                ..base("the only driver sleeps right up to what is due")
            },
            Case {
                watch_ms: None,
                want: Next::Return(RunStatus::Running),
                ..base("the only driver, nothing due: the run cannot move")
            },
            Case {
                progressed: false,
                idle_since: NOW - 120_000,
                next_due: Some(NOW + 1),
                want: Next::Return(RunStatus::Running),
                ..base("idle for the whole allowance: return")
            },
            Case {
                progressed: false,
                idle_since: NOW - 119_950,
                want: Next::SleepUntil(NOW + 50),
                ..base("never sleep past the idle allowance")
            },
        ];
        for c in cases {
            let h = header(c.status, c.wait);
            let steps = [waiting_on("job_1")];
            let look = Look {
                header: &h,
                steps: &steps,
                now: NOW,
                listening: c.listening,
                held_jobs: c.held,
                next_due: c.next_due,
                progressed: c.progressed,
                idle_since: c.idle_since,
                max_idle_ms: 120_000,
                watch_ms: c.watch_ms,
            };
            assert_eq!(after_round(&look), c.want, "{}", c.name);
        }
    }
}
