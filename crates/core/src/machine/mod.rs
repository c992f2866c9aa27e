//! The step machine: one step's lifecycle as a sans-I/O state machine.
//!
//! A step's record is its state ([`StepState`] is the typed reading of it). Everything that
//! happens to a step is an [`Event`]: the planner found it due (`Due`), the request of the
//! attempt about to be claimed was prepared, a model answered, a poll or a download came
//! back, a provider called back, a person decided. [`handle`] takes the state and one event
//! and returns a [`Transition`]: what to observe (`notes`) and what to do next ([`Next`]) —
//! commit records and history together, or do one piece of I/O (call, poll, cancel,
//! download, keep a file) whose result comes back as the next event.
//!
//! ```text
//!            Due(Start) ──► Prepare ──► Prepared ──► Call{claim} ──► Answered ─┐
//!            Due(Poll)  ──► Poll ─────────────────────────────────► Polled ───┤
//!  planner   Due(Download) ► Download ──────────────────────────────► Downloaded┤ ──► Commit
//!  webhook   Callback ───────────────────────────────────────────────────────┤      (records +
//!  API       Decided ────────────────────────────────────────────────────────┤       history,
//!            Due(Skip | Expire | ApprovalTimeout), pure steps ────────────────┘       together)
//!                          (an asset's data: URL: Keep ──► Kept ──► Commit)
//! ```
//!
//! The engine (`switchyard_engine::exec`) is the interpreter: it performs each [`Next`] over
//! the ports and feeds the result back, until the machine says `Commit`. Every rule about a
//! step's attempts lives here and only here: retry with backoff and fallback ([`settle`]),
//! cascades and `select` ([`cascade`]), judges ([`judge`]), repairs, the run budget
//! ([`budget`]), deadlines and lost attempts. Each is table-tested in its module, and
//! `tests` drives the whole machine through event sequences.
//!
//! Layout:
//! - [`state`]: [`StepState`], the typed reading of a stored record; a record that reads as
//!   no legal state is refused before it is written.
//! - [`settle`]: record transitions (claim, succeed, fail → retry/fallback/fail, waits,
//!   downloads, decisions, repairs).
//! - [`attempt`]: what one attempt cost and who answered it.
//! - [`cascade`], [`judge`], [`budget`], [`retry`]: the rules named above.
//! - `request`: the model request of an attempt, `select`, the budget reservation.
//! - `pure`: steps decided from the run's scope alone (route, transform, parallel, validate),
//!   approvals and lost attempts.
//! - `answer`: what an answer, a poll, a callback or a download makes of an attempt.

pub mod attempt;
pub mod budget;
pub mod cascade;
pub mod judge;
pub mod retry;
pub mod settle;
pub mod state;

mod answer;
mod pure;
mod request;

#[cfg(test)]
mod tests;

pub use request::build_request;
pub use state::{Illegal, StepState};

use crate::asset::Fetched;
use crate::model::{ModelRequest, ModelResponse};
use crate::planner::Action;
use crate::state::{HistoryEvent, JobRef, StepRecord, Usage};
use crate::workflow::{Step, StepKind, Workflow};
use crate::{ErrorClass, Millis, StepError};
use attempt::AttemptMeta;
use budget::Ledger;
use judge::Verdict;
use serde_json::Value;
use settle::invalid;
use std::collections::HashMap;
use std::sync::Mutex;

/// What the machine asks of the providers without calling them: prices. Implemented by the
/// engine over its provider registry (each adapter's price table).
pub trait Prices: Send + Sync {
    /// Whether a provider serves `model`.
    fn serves(&self, model: &str) -> bool;
    /// The estimated cost of a request, by the provider that serves its model; `None` when
    /// no provider serves it.
    fn estimate_usd(&self, request: &ModelRequest) -> Option<f64>;
    /// What `usage` costs on `model`, if its price is known.
    fn price_usd(&self, model: &str, usage: Usage) -> Option<f64>;
    /// Whether calling `model` again costs nothing and changes nothing outside the run (the
    /// built-in models): such a call is not claimed before it starts, and its attempt is
    /// written once, with its answer. A crash mid-call then leaves the step pending, and the
    /// call is simply made again. Hosted models and asynchronous jobs are always claimed.
    fn repeat_is_free(&self, _model: &str) -> bool {
        false
    }
}

/// The settings the machine's rules read from the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Added to a call's timeout for its claim's lease (the worker's own overhead).
    pub lease_margin_ms: u64,
    /// When to poll a job again whose provider gave no hint.
    pub default_poll_ms: u64,
}

/// What the machine knows about the run when it handles one step's event.
pub struct Ctx<'a> {
    pub wf: &'a Workflow,
    pub run_id: &'a str,
    /// `{input, steps: {id: {status, output, sources, error}}, run}`.
    pub scope: &'a Value,
    /// The run's step records when the action started (a repair resets another step).
    pub records: &'a HashMap<String, StepRecord>,
    /// The run's spending, shared by the actions of one invocation.
    pub ledger: &'a Mutex<Ledger>,
    /// Who claims the steps: the holder of the run's lease.
    pub owner: &'a str,
    pub now: Millis,
    /// A fresh random value: the callback token of an asynchronous attempt claimed now (the
    /// machine makes no randomness of its own).
    pub nonce: &'a str,
    /// The public base URL callbacks are sent to.
    pub public_url: &'a str,
    pub limits: Limits,
    pub prices: &'a dyn Prices,
}

/// Something that happened to one step.
// An event is built once and moved into `handle`; boxing the large variants would only add
// an allocation per transition.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Event {
    /// The planner found the step due for `action`; `rec` is its record.
    Due { action: Action, rec: StepRecord },
    /// The request of the attempt about to be claimed, with its uploads read in (after
    /// [`Next::Prepare`]); `rec` is the record the attempt is claimed from.
    Prepared {
        rec: StepRecord,
        token: Option<String>,
        request: Result<ModelRequest, StepError>,
    },
    /// The claimed call answered or failed (after [`Next::Call`]).
    Answered {
        claimed: StepRecord,
        request: ModelRequest,
        token: Option<String>,
        provider: String,
        latency_ms: u64,
        result: Result<ModelResponse, StepError>,
    },
    /// A poll of the waiting job came back (after [`Next::Poll`]).
    Polled {
        rec: StepRecord,
        result: Result<ModelResponse, StepError>,
    },
    /// A finished job's file was downloaded and kept — its kept output — or the download
    /// failed (after [`Next::Download`]).
    Downloaded {
        rec: StepRecord,
        result: Result<Value, StepError>,
    },
    /// An answer's `data:` file was kept in the blob store (after [`Next::Keep`]).
    Kept { settling: Settling, value: Value },
    /// The provider called back for the waiting (or still submitting) attempt.
    Callback {
        rec: StepRecord,
        webhook_id: String,
        provider: String,
        result: Result<ModelResponse, StepError>,
    },
    /// A person decided the approval gate.
    Decided {
        rec: StepRecord,
        approved: bool,
        comment: Option<String>,
    },
}

/// Records and the history that goes with them, committed together: one record as one
/// conditional write, several (a repair) as one all-or-nothing write.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Writes {
    pub records: Vec<StepRecord>,
    /// In order; see [`Writes::events_for`] for which record's write carries which.
    pub events: Vec<HistoryEvent>,
}

impl Writes {
    pub fn one((r, ev): (StepRecord, HistoryEvent)) -> Writes {
        Writes {
            records: vec![r],
            events: vec![ev],
        }
    }

    /// The events record `i`'s write carries: one per record, in order; any beyond that
    /// ride with the last record's write, so every write carries its own history.
    pub fn events_for(&self, i: usize) -> &[HistoryEvent] {
        let n = self.records.len();
        match (i + 1 == n, self.events.get(i)) {
            (true, Some(_)) => &self.events[i..],
            (false, Some(_)) => &self.events[i..=i],
            (_, None) => &[],
        }
    }
}

/// What to do next. Every variant but `Commit` is one piece of I/O whose result comes back
/// as the event it names.
// Moved once out of each transition (see `Event`).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Next {
    /// Commit these writes; the step's event is handled.
    Commit(Writes),
    /// Read the uploads `request` refers to into it → [`Event::Prepared`].
    Prepare {
        rec: StepRecord,
        token: Option<String>,
        request: ModelRequest,
    },
    /// Commit the claim (state before side effects), then call the model → [`Event::Answered`].
    /// With `commit_claim: false` (a call free to repeat, [`Prices::repeat_is_free`]) the
    /// claim is not written: its record is the one read, and its history rides on the
    /// step's next write.
    Call {
        claim: Writes,
        request: ModelRequest,
        token: Option<String>,
        commit_claim: bool,
    },
    /// Poll the job → [`Event::Polled`].
    Poll {
        rec: StepRecord,
        job: JobRef,
        request: ModelRequest,
    },
    /// Give up on the job at its provider (best effort: it stops billing), then commit.
    CancelThenCommit {
        job: JobRef,
        request: Option<ModelRequest>,
        writes: Writes,
    },
    /// Download a finished job's file with the provider of `model` and keep it →
    /// [`Event::Downloaded`].
    Download {
        rec: StepRecord,
        model: String,
        url: String,
    },
    /// Keep an answer's decoded `data:` file in the blob store → [`Event::Kept`].
    Keep {
        settling: Settling,
        source: String,
        file: Fetched,
    },
}

/// An answer on its way to its record while its file is kept (opaque to the interpreter).
#[derive(Debug, Clone)]
pub struct Settling {
    claimed: StepRecord,
    meta: AttemptMeta,
    baseline: Option<f64>,
    before: Vec<HistoryEvent>,
}

/// Something to observe (log, span attribute) about a transition; no decision rides on it.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    Selected {
        model: String,
        reason: String,
    },
    Escalated {
        from: String,
        reason: String,
    },
    AttemptFailed {
        attempt: u32,
        model: String,
        class: ErrorClass,
    },
    OutputRejected {
        class: ErrorClass,
    },
    NotAVerdict {
        class: ErrorClass,
    },
    Judged {
        verdict: Verdict,
        pass: bool,
    },
    PollFailed {
        class: ErrorClass,
    },
    DownloadFailed {
        host: String,
        download: u32,
        class: ErrorClass,
        message: String,
    },
    DataUrlUnreadable {
        class: ErrorClass,
    },
}

/// What handling one event comes to.
#[derive(Debug, Clone)]
pub struct Transition {
    pub notes: Vec<Note>,
    pub next: Next,
}

impl Transition {
    fn commit(writes: Writes) -> Transition {
        Transition {
            notes: vec![],
            next: Next::Commit(writes),
        }
    }

    fn to(next: Next) -> Transition {
        Transition {
            notes: vec![],
            next,
        }
    }

    fn noted(mut self, note: Note) -> Transition {
        self.notes.insert(0, note);
        self
    }
}

/// An event that does not apply to the step's state or kind (a planner or caller bug, or a
/// record no legal state reads): nothing is written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("step `{step}`: {why}")]
pub struct Refused {
    pub step: String,
    pub why: String,
}

/// Handles one event of step `step_id`: the one entry point of the step machine.
pub fn handle(cx: &Ctx, step_id: &str, event: Event) -> Result<Transition, Refused> {
    let refuse = |why: String| Refused {
        step: step_id.to_string(),
        why,
    };
    let step = cx
        .wf
        .step(step_id)
        .ok_or_else(|| refuse("the step is not in the definition".into()))?;
    let (rec, expects) = match &event {
        Event::Due { action, rec } => (rec, due_states(action)),
        Event::Prepared { rec, .. } => (rec, &[Kind::Pending, Kind::Retrying][..]),
        Event::Answered { claimed, .. } => (claimed, &[Kind::Claimed][..]),
        Event::Polled { rec, .. } => (rec, &[Kind::WaitingJob][..]),
        Event::Downloaded { rec, .. } => (rec, &[Kind::Downloading][..]),
        Event::Kept { settling, .. } => (
            &settling.claimed,
            &[Kind::Claimed, Kind::WaitingJob, Kind::Retrying][..],
        ),
        Event::Callback { rec, .. } => (rec, &[Kind::Claimed, Kind::WaitingJob][..]),
        Event::Decided { rec, .. } => (rec, &[Kind::WaitingApproval][..]),
    };
    let state = StepState::read(rec).map_err(|e| refuse(e.to_string()))?;
    let kind = Kind::of(&state);
    if !expects.contains(&kind) {
        return Err(refuse(format!(
            "{} does not apply to a step that is {}",
            event.name(),
            kind.name()
        )));
    }
    dispatch(cx, step, event).map_err(refuse)
}

fn dispatch(cx: &Ctx, step: &Step, event: Event) -> Result<Transition, String> {
    let now = cx.now;
    Ok(match event {
        Event::Due { action, rec } => match (&action, &step.kind) {
            (Action::Skip { reason, .. }, _) => {
                Transition::commit(Writes::one(settle::skip(&step.id, &rec, reason, now)))
            }
            (Action::Expire { .. }, _) => Transition::commit(pure::expire(cx, step, &rec)),
            (Action::ApprovalTimeout { .. }, StepKind::Approval(a)) => {
                Transition::commit(Writes::one(pure::approval_timeout(cx, step, a, &rec)))
            }
            (Action::Start { .. }, StepKind::Approval(a)) => {
                Transition::commit(Writes::one(pure::open_approval(cx, a, &rec)))
            }
            (Action::Start { .. }, StepKind::Model(ms)) => request::start(cx, step, ms, rec),
            (Action::Start { .. }, StepKind::Validate(v)) if v.judge.is_some() => {
                pure::start_judged(cx, step, v, rec)?
            }
            (Action::Start { .. }, kind) => Transition::commit(pure::start(cx, step, kind, &rec)),
            (Action::Poll { .. }, StepKind::Model(ms)) => answer::poll(cx, step, ms, rec)?,
            (Action::Download { .. }, StepKind::Model(_)) => answer::download(cx, step, rec)?,
            (other, kind) => {
                return Err(format!(
                    "action {other:?} does not apply to a {} step",
                    kind.name()
                ))
            }
        },
        Event::Prepared {
            rec,
            token,
            request,
        } => request::claim(cx, step, rec, token, request),
        Event::Answered {
            claimed,
            request,
            token,
            provider,
            latency_ms,
            result,
        } => answer::answered(
            cx,
            step,
            answer::Call {
                claimed,
                request,
                token,
                provider,
                latency_ms,
            },
            result,
        )?,
        Event::Polled { rec, result } => answer::polled(cx, step, rec, result)?,
        Event::Downloaded { rec, result } => answer::downloaded(cx, step, rec, result),
        Event::Kept { settling, value } => answer::kept(cx, settling, value),
        Event::Callback {
            rec,
            webhook_id,
            provider,
            result,
        } => answer::callback(cx, step, rec, &webhook_id, &provider, result)?,
        Event::Decided {
            rec,
            approved,
            comment,
        } => Transition::commit(Writes::one(settle::decide(&rec, approved, comment, now))),
    })
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Event::Due { action, .. } => match action {
                Action::Start { .. } => "a start",
                Action::Skip { .. } => "a skip",
                Action::Expire { .. } => "an expiry",
                Action::Poll { .. } => "a poll",
                Action::ApprovalTimeout { .. } => "an approval timeout",
                Action::Download { .. } => "a download",
            },
            Event::Prepared { .. } => "a prepared request",
            Event::Answered { .. } => "an answer",
            Event::Polled { .. } => "a poll result",
            Event::Downloaded { .. } => "a download result",
            Event::Kept { .. } => "a kept file",
            Event::Callback { .. } => "a callback",
            Event::Decided { .. } => "a decision",
        }
    }
}

/// Claims `owner` made that nothing drives any more (after a failed or conflicting write
/// nothing of its `handle` call is in flight): the claim's write landed but its answer was
/// lost, or the call was made and its checkpoint was lost. Nobody runs those attempts, so
/// their claims end now — the planner expires them (a lost attempt, retried under its
/// policy) instead of waiting for the lease.
pub fn end_orphaned_claims(steps: &mut [StepRecord], owner: &str, now: Millis) {
    for r in steps {
        if matches!(StepState::read(r), Ok(StepState::Claimed { owner: o, .. }) if o == owner) {
            r.lease_until = Some(now);
        }
    }
}

/// Whether `new` opened an approval gate — its step waits on an approval at an attempt `old`
/// did not — so the gate's notification is due (one per gate attempt).
pub fn opened_gate(old: Option<&StepRecord>, new: &StepRecord) -> bool {
    matches!(StepState::read(new), Ok(StepState::WaitingApproval { .. }))
        && old.map(|o| (o.status, o.attempt)) != Some((new.status, new.attempt))
}

/// The state's shape, without its data: what [`handle`] checks an event against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pending,
    Claimed,
    Retrying,
    Downloading,
    WaitingJob,
    WaitingApproval,
    Ended,
}

impl Kind {
    fn of(s: &StepState) -> Kind {
        match s {
            StepState::Pending { .. } => Kind::Pending,
            StepState::Claimed { .. } => Kind::Claimed,
            StepState::Retrying { .. } => Kind::Retrying,
            StepState::Downloading { .. } => Kind::Downloading,
            StepState::WaitingJob { .. } => Kind::WaitingJob,
            StepState::WaitingApproval { .. } => Kind::WaitingApproval,
            StepState::Succeeded { .. } | StepState::Failed { .. } | StepState::Skipped { .. } => {
                Kind::Ended
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Pending => "pending",
            Kind::Claimed => "claimed",
            Kind::Retrying => "retrying",
            Kind::Downloading => "downloading",
            Kind::WaitingJob => "waiting on a job",
            Kind::WaitingApproval => "waiting on an approval",
            Kind::Ended => "ended",
        }
    }
}

/// The states a planner action applies to (the planner's own reading of the records).
fn due_states(action: &Action) -> &'static [Kind] {
    match action {
        Action::Start { .. } => &[Kind::Pending, Kind::Retrying],
        Action::Skip { .. } => &[Kind::Pending],
        Action::Expire { .. } => &[Kind::Claimed],
        Action::Poll { .. } => &[Kind::WaitingJob],
        Action::ApprovalTimeout { .. } => &[Kind::WaitingApproval],
        Action::Download { .. } => &[Kind::Downloading],
    }
}
