//! Handling one wake-up: the worker loop.
//!
//! Lease the run, then plan → execute → checkpoint until the run ends or has to wait. Ready
//! steps run concurrently (parallel branches, independent roots); after each one finishes the
//! run is planned again, so a step starts as soon as what it needs is done. Waiting never
//! sleeps: the run is parked with the time it next needs attention, and a delayed wake-up is
//! sent for that time. A pass that holds its free steps' records until the run's end
//! (`crate::held`) takes the lease only with its first other write: one that only holds and
//! ends the run writes the header once, its end fenced by the version it read.

use crate::exec::ActionCtx;
use crate::{trace, Engine, EngineError};
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};

/// Step records by step name, as actions read them.
type Records = HashMap<String, StepRecord>;
use std::sync::Arc;
use switchyard_core::machine;
use switchyard_core::planner::{self, Outcome, Plan};
use switchyard_core::ports::Message;
use switchyard_core::state::{
    EventKind, HistoryEvent, Lease, RunError, RunSnapshot, RunStatus, StepRecord, StepStatus,
    WaitInfo, WaitReason, WakeReason, WakeUp,
};
use switchyard_core::stats::RunFacts;
use switchyard_core::telemetry::{self, attr};
use switchyard_core::workflow::{StepKind, Workflow};
use switchyard_core::{refs, schema, ErrorClass, Millis, StoreError};
use tracing::Instrument;

/// What handling a wake-up came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// No such run (e.g. a wake-up for a run deleted by retention).
    Gone,
    /// The run had already ended; the wake-up was a late duplicate.
    AlreadyEnded(RunStatus),
    /// Another worker holds the lease; a wake-up was sent for when it expires.
    Busy,
    Ended(RunStatus),
    Waiting {
        reason: WaitReason,
        until: Option<Millis>,
    },
    /// The invocation deadline came near; a wake-up was sent to continue.
    Yielded,
}

/// One handling of a wake-up: what it knows from its start to its end.
struct Pass<'a> {
    wf: &'a Arc<Workflow>,
    wake: &'a WakeUp,
    /// The invocation's deadline, if it has one.
    deadline: Option<Millis>,
    /// Until when the header said the run waits, when it was loaded.
    prev_wait_until: Option<Millis>,
    /// Whether the run was waiting (parking it again is then no news for its history).
    was_waiting: bool,
    /// Who holds the run's lease and claims its steps: this handling.
    owner: &'a str,
    /// The lease, when this pass takes it with its first write (`held::Gate`); `None`: it
    /// was taken before the pass.
    gate: Option<crate::exec::GateRef>,
    /// When the handling started (a pass without the lease takes it after
    /// `held::LEASE_AFTER_MS`).
    started_at: Millis,
}

/// A run whose header says it ended is never parked or ended again (a pass that read the
/// end from another worker plans again from what is stored).
fn refuse_ended(snap: &RunSnapshot) -> Result<(), EngineError> {
    if snap.header.status.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "run {} has ended meanwhile",
            snap.header.run_id
        ))
        .into());
    }
    Ok(())
}

/// Whether the pass holds the run's lease (taken before it, or lazily since).
async fn leased(pass: &Pass<'_>) -> bool {
    match &pass.gate {
        Some(gate) => gate.lock().await.taken,
        None => true,
    }
}

/// What the actions of one pass read, kept up to date record by record: the reference
/// scope, the records by step, and the run's spending.
struct Views {
    scope: Arc<Value>,
    records: Arc<Records>,
    ledger: Arc<std::sync::Mutex<crate::exec::Ledger>>,
    /// The records held back for the run's end write (`crate::held`).
    held: Option<crate::exec::Hold>,
}

/// The actions in flight, and the steps they are for.
#[derive(Default)]
struct Flights {
    running: FuturesUnordered<Flight>,
    steps: HashSet<String>,
}

/// How many times a conflicting or failed write makes the worker reload and re-plan before
/// giving up (the wake-up is then retried by the queue).
const MAX_CONFLICTS: usize = 8;

/// What handling a wake-up came to, on its span.
fn record_handled(span: &tracing::Span, handled: &Result<Handled, EngineError>) {
    let (outcome, status) = match handled {
        Ok(Handled::Gone) => ("gone", None),
        Ok(Handled::AlreadyEnded(s)) => ("already_ended", Some(*s)),
        Ok(Handled::Busy) => ("busy", None),
        Ok(Handled::Ended(s)) => ("ended", Some(*s)),
        Ok(Handled::Waiting { .. }) => ("waiting", Some(RunStatus::Waiting)),
        Ok(Handled::Yielded) => ("yielded", Some(RunStatus::Waiting)),
        Err(e) => {
            trace::failed(span, e.code(), &e.to_string());
            return;
        }
    };
    span.record(attr::WAKE_OUTCOME, outcome);
    if let Some(s) = status {
        span.record(attr::RUN_STATUS, s.as_str());
    }
}

type Flight = std::pin::Pin<
    Box<dyn std::future::Future<Output = (String, Result<Vec<StepRecord>, EngineError>)> + Send>,
>;

impl Engine {
    /// Handles one wake-up. `deadline` is when this invocation must stop (Lambda's remaining
    /// time); `None` runs until the run ends or waits.
    pub async fn handle(
        &self,
        wake: &WakeUp,
        deadline: Option<Millis>,
    ) -> Result<Handled, EngineError> {
        let run_id = wake.run_id.as_str();
        if let Some(due) = wake.due_at {
            let lag = telemetry::queue_lag(wake.reason.as_str(), due, self.now());
            self.observe(&[lag.for_run(run_id)]);
        }
        let Some(snap) = self.store.load(run_id).await? else {
            tracing::warn!(run_id, "wake-up for an unknown run");
            return Ok(Handled::Gone);
        };
        if snap.header.status.is_terminal() {
            self.renotify_if_lost(&snap.header).await?;
            return Ok(Handled::AlreadyEnded(snap.header.status));
        }
        // The wake-up's span is a child of the span that created the run, whoever sent it.
        let span = trace::run_span(&snap.header, wake.reason);
        self.join_run(&span, &snap.header);
        let handled = self
            .handle_loaded(wake, deadline, snap)
            .instrument(span.clone())
            .await;
        record_handled(&span, &handled);
        handled
    }

    /// [`Engine::handle`] once the run is loaded and known not to have ended.
    async fn handle_loaded(
        &self,
        wake: &WakeUp,
        deadline: Option<Millis>,
        mut snap: RunSnapshot,
    ) -> Result<Handled, EngineError> {
        let run_id = wake.run_id.as_str();
        let wf = self.definition(&snap.header.workflow.hash).await?;
        let prev_wait_until = snap.header.wait.as_ref().and_then(|w| w.until);
        // Taking the lease marks the run running; whether it was waiting before decides if
        // parking it again is news for its history.
        let was_waiting = snap.header.status == RunStatus::Waiting;
        let now = self.now();
        // The lease owner is this call, not the process: two records of one SQS batch for the
        // same run (handled concurrently in one invocation) must not both hold the run.
        let owner = format!(
            "{}:{}",
            self.config.owner,
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let lease = Lease {
            owner: owner.clone(),
            until: now + self.config.run_lease_ms,
        };
        // A rerun's first activation copies what it reuses (writes) before anything else.
        let adopts = snap.header.rerun_of.is_some()
            && matches!(wake.reason, WakeReason::Start | WakeReason::Recover);
        // A pass that holds takes the lease with its first write other than the end
        // (`held::Gate`); it only checks here that no live worker holds it.
        let lazy = self.config.hold_free_records && !adopts;
        let taken = if lazy {
            match &snap.header.lease {
                Some(l) if l.until > now && l.owner != owner => Err(StoreError::Conflict(format!(
                    "lease of run {run_id} held by {}",
                    l.owner
                ))),
                _ => Ok(None),
            }
        } else {
            self.store
                .acquire_lease(run_id, &lease, now)
                .await
                .map(Some)
        };
        match taken {
            Ok(None) => {}
            Ok(Some(h)) => {
                // The lease is one version on from what was loaded, unless another worker
                // wrote the run in between (its records may have moved on, or it may have
                // ended the run and let its lease go): plan from what is stored, not from
                // the older load, which would park or re-drive a run that is over.
                let moved = h.version != snap.header.version + 1;
                snap.header = h;
                if moved {
                    match self.store.load(run_id).await {
                        Ok(Some(s)) => snap = s,
                        Ok(None) => return Err(EngineError::NotFound(run_id.to_string())),
                        Err(e) => {
                            self.release_lease(run_id, &owner).await;
                            return Err(e.into());
                        }
                    }
                }
                if snap.header.status.is_terminal() {
                    self.release_lease(run_id, &owner).await;
                    self.renotify_if_lost(&snap.header).await?;
                    return Ok(Handled::AlreadyEnded(snap.header.status));
                }
            }
            Err(StoreError::Conflict(_)) => return self.busy(wake, &snap, now).await,
            Err(e) => {
                // The take may have landed with its answer lost: give it back, so the
                // redelivered wake-up does not wait for this call's lease to lapse.
                self.release_lease(run_id, &owner).await;
                return Err(e.into());
            }
        }
        // A rerun's first activation copies the results it reuses before anything is planned
        // (`crate::rerun`); a redelivered start or the sweep's wake-up finishes a copy that
        // was cut short.
        if adopts {
            let adopted = match self.adopt_reused(&wf, &snap).await {
                Ok(true) => self.store.load(run_id).await.map_err(EngineError::from),
                Ok(false) => Ok(None),
                Err(e) => Err(e),
            };
            match adopted {
                Ok(Some(s)) => snap = s,
                Ok(None) => {}
                Err(e) => {
                    self.release_lease(run_id, &owner).await;
                    return Err(e);
                }
            }
        }
        let pass = Pass {
            wf: &wf,
            wake,
            deadline,
            prev_wait_until,
            was_waiting,
            owner: &owner,
            // The sweep's grace counts from when the run fell due, which may be before now.
            started_at: switchyard_core::recovery::due_at(&snap.header).map_or(now, |d| d.min(now)),
            gate: lazy.then(|| {
                Arc::new(tokio::sync::Mutex::new(crate::held::Gate {
                    taken: false,
                    expected: snap.header.version,
                    written: None,
                    moved: false,
                }))
            }),
        };
        let mut retries = 0;
        loop {
            let driven = self.drive(&pass, &mut snap).await;
            let error = match driven {
                Ok(handled) => return Ok(handled),
                Err(e) => e,
            };
            // A conflict (another writer moved a record) or a storage fault (the write may or
            // may not have landed: its answer was lost) is met by reading the run again and
            // planning from what is stored, still holding the lease.
            let again = matches!(
                error,
                EngineError::Store(StoreError::Conflict(_) | StoreError::Unavailable(_))
            ) && retries < MAX_CONFLICTS;
            if !again {
                self.release_lease(run_id, &owner).await;
                return Err(error);
            }
            retries += 1;
            tracing::debug!(run_id, error = %error, "write failed or conflicted; reloading");
            if matches!(error, EngineError::Store(StoreError::Unavailable(_))) {
                // The SDK has retried already; a short pause lets a brief fault pass.
                tokio::time::sleep(std::time::Duration::from_millis(50 << retries.min(5))).await;
            }
            snap = match self.store.load(run_id).await {
                Ok(Some(s)) => s,
                Ok(None) => return Err(EngineError::NotFound(run_id.to_string())),
                Err(e) => {
                    self.release_lease(run_id, &owner).await;
                    return Err(e.into());
                }
            };
            if let Some(gate) = &pass.gate {
                gate.lock().await.moved = false;
            }
            if snap.header.status.is_terminal() {
                // A lease this pass took on a run another worker ended is given back.
                if snap.header.lease.as_ref().is_some_and(|l| l.owner == owner) {
                    self.release_lease(run_id, &owner).await;
                }
                // The end may be this call's own write whose answer was lost: its
                // notification must still go out.
                self.renotify_if_lost(&snap.header).await?;
                return Ok(Handled::AlreadyEnded(snap.header.status));
            }
            // A pass that has not taken the lease meets another worker's live one as a take
            // would have: the run is that worker's (it may be mid-call) until its lease ends.
            let now = self.now();
            if !leased(&pass).await
                && snap
                    .header
                    .lease
                    .as_ref()
                    .is_some_and(|l| l.until > now && l.owner != owner)
            {
                return self.busy(wake, &snap, now).await;
            }
            machine::end_orphaned_claims(&mut snap.steps, &owner, self.now());
        }
    }

    /// Another worker holds the run's lease: the wake-up is sent again for when it ends.
    async fn busy(
        &self,
        wake: &WakeUp,
        snap: &RunSnapshot,
        now: Millis,
    ) -> Result<Handled, EngineError> {
        let until = snap.header.lease.as_ref().map_or(now, |l| l.until);
        let delay = until.saturating_sub(now) + 100;
        let again = WakeUp {
            due_at: Some(now + delay),
            ..wake.clone()
        };
        self.queue.send(&Message::Wake(again), delay).await?;
        Ok(Handled::Busy)
    }

    /// Gives the run's lease back after a failed `handle`, so the wake-up's redelivery (or the
    /// sweep's) takes the run at once instead of waiting for the lease to lapse. Best effort:
    /// if this fails too, the lease lapses after [`Config::run_lease_ms`](crate::Config).
    async fn release_lease(&self, run_id: &str, owner: &str) {
        let Ok(Some(mut h)) = self.store.load_header(run_id).await else {
            return;
        };
        if h.lease.as_ref().is_none_or(|l| l.owner != owner) {
            return;
        }
        h.lease = None;
        h.updated_at = self.now();
        if let Err(e) = self.store.put_header(&h, &[]).await {
            tracing::debug!(run_id, error = %e, "could not give the lease back; it lapses");
        }
    }

    async fn drive(&self, pass: &Pass<'_>, snap: &mut RunSnapshot) -> Result<Handled, EngineError> {
        let (wf, deadline, owner) = (pass.wf, pass.deadline, pass.owner);
        let run_id = snap.header.run_id.clone();
        let mut flights = Flights::default();
        let mut failure: Option<EngineError> = None;
        let mut views = Views {
            ledger: Arc::new(std::sync::Mutex::new(crate::exec::Ledger::new(
                snap.cost_usd(),
            ))),
            // Built once per call and updated record by record (copied only while an action
            // that still reads the previous one is in flight).
            scope: Arc::new(self.scope(wf, snap).await?),
            // The same for the records actions read: one map per call, not one per round.
            records: Arc::new(
                snap.steps
                    .iter()
                    .map(|r| (r.step.clone(), r.clone()))
                    .collect(),
            ),
            held: self.config.hold_free_records.then(Default::default),
        };
        // When the header was last read (`handle` just loaded it).
        let mut header_read_at = self.now();
        // Whether an in-invocation wait is still allowed: not after one the clock did not
        // move past (a clock that is not the waits' own; then the queue takes over).
        let mut may_wait = true;
        loop {
            // A failed lease take starts nothing more; what is in flight finishes first.
            if let Err(e) = self.sync_gate(pass, snap).await {
                failure.get_or_insert(e);
            }
            let now = self.now();
            let plan = planner::plan(wf, snap, now);
            let near_deadline = deadline.is_some_and(|d| now + self.config.deadline_margin_ms >= d);
            let margin = self.config.deadline_margin_ms;
            let (fresh, held_back): (Vec<_>, Vec<_>) = plan
                .actions
                .iter()
                .filter(|a| !flights.steps.contains(a.step()))
                .cloned()
                .partition(|a| planner::fits_before_deadline(wf, a, now, deadline, margin));
            // An action that does not fit this invocation is left to the next one: yield once
            // nothing is in flight rather than start a call the platform would kill.
            let near_deadline = near_deadline || !held_back.is_empty();
            if plan.outcome.is_none() && !near_deadline && failure.is_none() && !fresh.is_empty() {
                let lease_less = !leased(pass).await;
                if self
                    .cancelled_meanwhile(snap, &mut header_read_at, now, lease_less)
                    .await?
                {
                    continue;
                }
                // A pass that has not taken the lease writes nothing before it needs to.
                if leased(pass).await {
                    if snap.header.status != RunStatus::Running {
                        self.set_status(snap, RunStatus::Running, None).await?;
                    }
                    self.renew_lease_at_half_time(snap, owner, now).await?;
                }
                if let Err(e) = self.sync_gate(pass, snap).await {
                    failure.get_or_insert(e);
                    continue;
                }
                let cx = ActionCtx {
                    wf: wf.clone(),
                    run_id: run_id.clone(),
                    scope: views.scope.clone(),
                    records: views.records.clone(),
                    ledger: views.ledger.clone(),
                    owner: owner.to_string(),
                    held: views.held.clone(),
                    gate: pass.gate.clone(),
                };
                self.launch(snap, &cx, fresh, &mut flights);
                continue;
            }
            if !flights.running.is_empty() {
                // Calls in flight keep the lease alive: a live worker's lease never lapses,
                // so a lapsed one means a dead worker (`core::recovery`).
                let half = self.config.run_lease_ms / 2;
                let lease_until = snap.header.lease.as_ref().map_or(now, |l| l.until);
                let renew_in = lease_until.saturating_sub(now).saturating_sub(half);
                let timer =
                    tokio::time::sleep(std::time::Duration::from_millis(renew_in.max(1_000)));
                tokio::select! {
                    next = flights.running.next() => {
                        if let Some((step, result)) = next {
                            flights.steps.remove(&step);
                            if let Err(e) = self.absorb(wf, snap, &mut views, &step, result).await {
                                failure.get_or_insert(e);
                            }
                        }
                    }
                    _ = timer => {
                        let renewed = match &pass.gate {
                            Some(gate) if !leased(pass).await => {
                                // A long pass takes the lease before the sweep would take it
                                // for a lost wake-up.
                                if self.now() >= pass.started_at + crate::held::LEASE_AFTER_MS {
                                    self.take_lease(gate, &run_id, owner).await
                                } else {
                                    Ok(())
                                }
                            }
                            _ => self.renew_lease_at_half_time(snap, owner, self.now()).await,
                        };
                        if let Err(e) = renewed {
                            failure.get_or_insert(e);
                        }
                    }
                }
                continue;
            }
            // Nothing in flight.
            if let Some(e) = failure {
                return Err(e);
            }
            if let Some(at) = self.wait_here(&plan, now, deadline).filter(|_| may_wait) {
                self.waits.until(self.clock.as_ref(), at).await;
                may_wait = self.now() >= at;
                continue;
            }
            return self
                .come_to_rest(pass, snap, plan, near_deadline, views.held.as_ref())
                .await;
        }
    }

    /// Plans from the header a lazy take of the lease wrote (`held::Gate`), and makes the
    /// header the pass plans from the one a take must move on from.
    async fn sync_gate(&self, pass: &Pass<'_>, snap: &mut RunSnapshot) -> Result<(), EngineError> {
        if let Some(gate) = &pass.gate {
            // A long pass takes the lease before the sweep would take it for a lost wake-up
            // (also checked while a call is in flight: the drive loop's timer).
            if !leased(pass).await && self.now() >= pass.started_at + crate::held::LEASE_AFTER_MS {
                self.take_lease(gate, &snap.header.run_id, pass.owner)
                    .await?;
            }
            let mut g = gate.lock().await;
            if let Some(h) = g.written.take() {
                if h.version > snap.header.version {
                    snap.header = h;
                }
            }
            g.expected = snap.header.version;
        }
        Ok(())
    }

    /// The time to wait for in this invocation, if the run's only next thing is a timer
    /// due within `wait_in_invocation_ms` that also leaves the deadline's margin.
    fn wait_here(
        &self,
        plan: &planner::Plan,
        now: Millis,
        deadline: Option<Millis>,
    ) -> Option<Millis> {
        let limit = self.config.wait_in_invocation_ms;
        let quiet = plan.outcome.is_none() && plan.actions.is_empty() && plan.running.is_empty();
        let at = plan.wake_at.filter(|_| quiet && limit > 0)?;
        let fits = deadline.is_none_or(|d| at + self.config.deadline_margin_ms < d);
        (plan.wait == Some(WaitReason::Timer) && at > now && at - now <= limit && fits)
            .then_some(at)
    }

    /// Starts each action as a future of its own; they run concurrently with the planning loop.
    fn launch(
        &self,
        snap: &RunSnapshot,
        cx: &ActionCtx,
        actions: Vec<planner::Action>,
        flights: &mut Flights,
    ) {
        for action in actions {
            let step = action.step().to_string();
            let rec = snap
                .step(&step)
                .cloned()
                .unwrap_or_else(|| StepRecord::pending(&step));
            flights.steps.insert(step.clone());
            let span = cx.wf.step(&step).map_or_else(tracing::Span::none, |s| {
                trace::step_span(&cx.run_id, s, &action)
            });
            let (this, cx) = (self.clone(), cx.clone());
            flights.running.push(Box::pin(async move {
                let r = this
                    .execute(&cx, &action, rec)
                    .instrument(span.clone())
                    .await;
                trace::record_step(&span, &step, &r);
                (step, r)
            }));
        }
    }

    /// Whether a cancellation was requested since the header was read (read again at most
    /// every `cancel_check_ms`): then the run is planned again, and starts nothing new.
    async fn cancelled_meanwhile(
        &self,
        snap: &mut RunSnapshot,
        read_at: &mut Millis,
        now: Millis,
        lease_less: bool,
    ) -> Result<bool, EngineError> {
        if snap.header.cancel_requested
            || now.saturating_sub(*read_at) < self.config.cancel_check_ms
        {
            return Ok(false);
        }
        *read_at = now;
        match self.store.load_header(&snap.header.run_id).await? {
            // A pass without the lease plans nothing from a header it did not write: another
            // worker may have ended the run or hold its lease. It reads the whole run again
            // (`handle_loaded`: an ended run is left ended, a live lease is `Busy`).
            Some(h) if h.cancel_requested && lease_less => Err(StoreError::Conflict(format!(
                "run {}: cancellation requested while a pass without the lease drove it",
                h.run_id
            ))
            .into()),
            Some(h) if h.cancel_requested => {
                tracing::info!(run_id = %h.run_id, "cancellation seen while driving");
                snap.header = h;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// A long invocation renews its lease at half-time, so no other worker takes the run over
    /// while this one is still driving it.
    async fn renew_lease_at_half_time(
        &self,
        snap: &mut RunSnapshot,
        owner: &str,
        now: Millis,
    ) -> Result<(), EngineError> {
        let lease_until = snap.header.lease.as_ref().map_or(0, |l| l.until);
        if now + self.config.run_lease_ms / 2 >= lease_until {
            let lease = Lease {
                owner: owner.to_string(),
                until: now + self.config.run_lease_ms,
            };
            snap.header = self
                .store
                .acquire_lease(&snap.header.run_id, &lease, now)
                .await?;
        }
        Ok(())
    }

    /// Takes a finished action's records into the snapshot, the scope, the records map and the
    /// budget ledger.
    async fn absorb(
        &self,
        wf: &Workflow,
        snap: &mut RunSnapshot,
        views: &mut Views,
        step: &str,
        result: Result<Vec<StepRecord>, EngineError>,
    ) -> Result<(), EngineError> {
        let ledger = &views.ledger;
        let records = match result {
            Ok(records) => records,
            Err(e) => {
                if let Ok(mut l) = ledger.lock() {
                    l.settle(step, 0.0);
                }
                tracing::warn!(run_id = %snap.header.run_id, step = %step, error = %e, "step action failed to checkpoint");
                return Err(e);
            }
        };
        let mut failure = None;
        for r in records {
            if let Err(e) = self.update_scope(Arc::make_mut(&mut views.scope), &r).await {
                failure.get_or_insert(e.into());
            }
            let before = snap.step(&r.step).map_or(0.0, |old| old.cost_usd);
            if let Ok(mut l) = ledger.lock() {
                l.settle(&r.step, r.cost_usd - before);
            }
            let gate = wf
                .step(&r.step)
                .is_some_and(|s| matches!(s.kind, StepKind::Approval(_)));
            if gate && machine::opened_gate(snap.step(&r.step), &r) {
                if let Err(e) = self.notify_approval(&snap.header, &r.step, r.attempt).await {
                    failure.get_or_insert(e);
                }
            }
            Arc::make_mut(&mut views.records).insert(r.step.clone(), r.clone());
            snap.upsert(r);
        }
        failure.map_or(Ok(()), Err)
    }

    /// Nothing is in flight and nothing more starts in this call: end the run, yield it to
    /// the next invocation, or park it until what it waits for.
    async fn come_to_rest(
        &self,
        pass: &Pass<'_>,
        snap: &mut RunSnapshot,
        plan: planner::Plan,
        near_deadline: bool,
        held: Option<&crate::exec::Hold>,
    ) -> Result<Handled, EngineError> {
        let (wf, was_waiting) = (pass.wf, pass.was_waiting);
        let mut held = match held {
            Some(h) => std::mem::take(&mut *h.lock().await),
            None => crate::held::Held::default(),
        };
        if held.is_broken() {
            return Err(StoreError::Conflict(format!(
                "run {}: a write of the held records failed in this pass",
                snap.header.run_id
            ))
            .into());
        }
        if let Some(outcome) = plan.outcome {
            return self.finish(wf, snap, outcome, held.take()).await;
        }
        // The run goes on later: what was held is stored before the header says so — under
        // the run's lease, so never beside another worker's.
        if !held.is_empty() {
            if let Some(gate) = &pass.gate {
                self.take_lease(gate, &snap.header.run_id, pass.owner)
                    .await?;
                self.sync_gate(pass, snap).await?;
            }
        }
        self.write_held(wf, &snap.header.run_id, &mut held).await?;
        if near_deadline && !plan.actions.is_empty() {
            self.park(snap, &plan, None, was_waiting).await?;
            self.wake(&snap.header.run_id, WakeReason::Resume, 0)
                .await?;
            return Ok(Handled::Yielded);
        }
        let resend = planner::must_send_timer(pass.wake.reason, pass.prev_wait_until, plan.wake_at);
        let until = plan.wake_at;
        self.park(snap, &plan, until.filter(|_| resend), was_waiting)
            .await?;
        Ok(Handled::Waiting {
            reason: plan.wait.unwrap_or(WaitReason::Timer),
            until,
        })
    }

    async fn set_status(
        &self,
        snap: &mut RunSnapshot,
        status: RunStatus,
        wait: Option<WaitInfo>,
    ) -> Result<(), EngineError> {
        let mut h = snap.header.clone();
        h.status = status;
        h.wait = wait;
        h.updated_at = self.now();
        h.version = self.store.put_header(&h, &[]).await?;
        snap.header = h;
        Ok(())
    }

    /// Parks the run: releases the lease, records what it waits for, and sends a delayed
    /// wake-up for `send_at` if given.
    async fn park(
        &self,
        snap: &mut RunSnapshot,
        plan: &Plan,
        send_at: Option<Millis>,
        was_waiting: bool,
    ) -> Result<(), EngineError> {
        refuse_ended(snap)?;
        let now = self.now();
        let wait = WaitInfo {
            reason: plan.wait.unwrap_or(WaitReason::Timer),
            until: plan.wake_at,
        };
        // The timer goes out before the header says it exists: if anything fails after it,
        // an extra timer is harmless, a missing one would strand the run.
        if let Some(at) = send_at {
            let wake = WakeUp {
                run_id: snap.header.run_id.clone(),
                reason: WakeReason::Timer,
                due_at: Some(at.max(now)),
            };
            self.queue
                .send(&Message::Wake(wake), at.saturating_sub(now))
                .await?;
        }
        let mut h = snap.header.clone();
        h.status = RunStatus::Waiting;
        h.wait = Some(wait.clone());
        h.lease = None;
        h.updated_at = now;
        // The history says when the run started waiting, not each re-park of a waiting run.
        let events: Vec<HistoryEvent> = (!was_waiting)
            .then(|| {
                HistoryEvent::run(
                    now,
                    EventKind::RunWaiting,
                    json!({"for": wait.reason, "until": wait.until}),
                )
            })
            .into_iter()
            .collect();
        h.version = self.store.put_header(&h, &events).await?;
        snap.header = h;
        tracing::info!(run_id = %snap.header.run_id, reason = ?wait.reason, until = ?wait.until, "run waiting");
        Ok(())
    }

    /// Ends the run: computes and checks its output, writes the final header.
    async fn finish(
        &self,
        wf: &Arc<Workflow>,
        snap: &mut RunSnapshot,
        outcome: Outcome,
        (held, held_events): (Vec<StepRecord>, Vec<HistoryEvent>),
    ) -> Result<Handled, EngineError> {
        refuse_ended(snap)?;
        self.cancel_abandoned_jobs(wf, snap).await;
        let now = self.now();
        let (status, output, error) = match outcome {
            Outcome::Succeeded => match self.final_output(wf, snap).await? {
                Ok(v) => (
                    RunStatus::Succeeded,
                    Some(self.store_header_value(v).await?),
                    None,
                ),
                Err(e) => (RunStatus::Failed, None, Some(e)),
            },
            Outcome::Failed(e) => (RunStatus::Failed, None, Some(e)),
            Outcome::Cancelled => (
                RunStatus::Cancelled,
                None,
                Some(RunError {
                    class: ErrorClass::Cancelled,
                    message: "cancelled on request".into(),
                    step: None,
                }),
            ),
        };
        let mut h = snap.header.clone();
        h.status = status;
        h.output = output;
        h.error = error.clone();
        h.ended_at = Some(now);
        h.updated_at = now;
        h.lease = None;
        h.wait = None;
        let kind = match status {
            RunStatus::Succeeded => EventKind::RunSucceeded,
            RunStatus::Cancelled => EventKind::RunCancelled,
            _ => EventKind::RunFailed,
        };
        if let Some(e) = error.as_ref().filter(|_| status == RunStatus::Failed) {
            trace::failed(&tracing::Span::current(), e.class.as_str(), &e.message);
        }
        let detail = json!({"cost_usd": snap.cost_usd(), "error": error});
        let ended = HistoryEvent::run(now, kind, detail);
        // The run's figures ride on the write that ends it: it happens once (its version
        // condition), so they are added once (crate::stats).
        let read = std::mem::replace(&mut snap.header, h.clone());
        let buckets = RunFacts::from_snapshot(wf, snap).buckets();
        snap.header = read;
        // The records held back ride on it too: stored with the end, or not at all; their
        // history (all of it, in the order it happened) before the end's.
        let steps: Vec<(&StepRecord, &[HistoryEvent])> = held
            .iter()
            .enumerate()
            .map(|(i, r)| (r, if i == 0 { &held_events[..] } else { &[] }))
            .collect();
        h.version = self.store.end_run(&h, &[ended], &buckets, &steps).await?;
        for r in &held {
            let mut stored = r.clone();
            stored.version += 1;
            let own: Vec<HistoryEvent> = held_events
                .iter()
                .filter(|e| e.step.as_deref() == Some(r.step.as_str()))
                .cloned()
                .collect();
            self.observe_steps(wf, &snap.header.run_id, &[stored], &[&own]);
        }
        snap.header = h;
        self.observe_run_end(&snap.header);
        // After the state that it reports: a notification never runs ahead of the run.
        self.notify_ended(&snap.header).await?;
        tracing::info!(run_id = %snap.header.run_id, status = status.as_str(), cost_usd = snap.cost_usd(), "run ended");
        Ok(Handled::Ended(status))
    }

    /// A run that ends (failed elsewhere, cancelled) while jobs still run at providers tells
    /// them to stop, so they stop billing. Best effort.
    async fn cancel_abandoned_jobs(&self, wf: &Arc<Workflow>, snap: &RunSnapshot) {
        let waiting: Vec<&StepRecord> = snap
            .steps
            .iter()
            .filter(|r| r.status == StepStatus::Waiting && r.job.is_some())
            .collect();
        if waiting.is_empty() {
            return;
        }
        let Ok(scope) = self.scope(wf, snap).await else {
            return;
        };
        let cx = ActionCtx {
            wf: wf.clone(),
            run_id: snap.header.run_id.clone(),
            scope: Arc::new(scope),
            records: Arc::new(Records::new()),
            ledger: Default::default(),
            owner: self.config.owner.clone(),
            held: None,
            gate: None,
        };
        for r in waiting {
            if let Some(step) = wf.step(&r.step) {
                self.cancel_job(&cx, step, r).await;
            }
        }
    }

    /// The run's output: the workflow's `output` template, or the output of the step that
    /// finished last; checked against `output_schema`.
    async fn final_output(
        &self,
        wf: &Workflow,
        snap: &RunSnapshot,
    ) -> Result<Result<Value, RunError>, EngineError> {
        let scope = self.scope(wf, snap).await?;
        let bad = |class, message: String| RunError {
            class,
            message,
            step: None,
        };
        let value = match &wf.output {
            Some(t) => match refs::resolve(t, &scope) {
                Ok(v) => v,
                Err(e) => {
                    return Ok(Err(bad(
                        ErrorClass::Invalid,
                        format!("the workflow's `output` cannot be built: {e}"),
                    )))
                }
            },
            None => {
                // Steps that finished in the same millisecond (fast steps often do) are
                // ordered by their place in the definition, not by record version (a model
                // step writes more versions than the transform after it).
                let position = |id: &str| wf.steps.iter().position(|s| s.id == id);
                let last = snap
                    .steps
                    .iter()
                    .filter(|r| r.status == StepStatus::Succeeded && !r.step.contains('.'))
                    .max_by_key(|r| (r.finished_at, position(&r.step)));
                match last.and_then(|r| r.output.as_ref()) {
                    Some(o) => self.load_value(o).await?,
                    None => Value::Null,
                }
            }
        };
        if let Some(s) = &wf.output_schema {
            if let Err(errors) = schema::validate(s, &value) {
                return Ok(Err(bad(
                    ErrorClass::Malformed,
                    format!(
                        "the run's output fails output_schema: {}",
                        errors.join("; ")
                    ),
                )));
            }
        }
        Ok(Ok(value))
    }
}
