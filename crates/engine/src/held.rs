//! Records a worker's pass holds back until the run's end ([`Config::hold_free_records`]).
//!
//! What is held: the records of transitions that are free to repeat and that nothing outside
//! the pass waits on — a pure step's result, a built-in model's answer, a skip, a retry's
//! backoff, a repair (the validator asks, its target is reset) — as long as each of their
//! records is new to the store or held already. They are stored by the write that ends the
//! run (`StateStore::end_run`'s `steps`: on DynamoDB one entry of the header's journal). Any
//! other write of the pass — a claim before a paid call, an approval gate that opens, a
//! park — stores them first. A pass that dies loses them and the next one makes them again,
//! which costs nothing; what is stored never points past what is stored.
//!
//! A step held more than once (a retried or repaired built-in step) is held once, at its
//! latest state, still new to the store: the worker sees it at version 1 however often it
//! changed, and that is the version it is stored at.
//!
//! [`Config::hold_free_records`]: crate::Config::hold_free_records

use switchyard_core::ports::{MAX_HELD_STEPS, MAX_STEPS_PER_WRITE};
use switchyard_core::state::{HistoryEvent, RunHeader, StepRecord, StepStatus};

/// The run's lease for a pass that takes it with its first write other than the run's end
/// (a pass that holds): one that runs only steps free to repeat and ends the run writes the
/// header once, the end's version condition fencing any second worker, instead of leasing
/// it first. A pass takes it before a claim (so no two workers call a paid model for one
/// run at once), and once it has run for [`LEASE_AFTER_MS`] without one (so the stuck-run
/// sweep never takes a long pass for a lost wake-up).
#[derive(Debug)]
pub(crate) struct Gate {
    /// Whether this pass holds the run's lease.
    pub(crate) taken: bool,
    /// The header version the pass plans from: a take must write the next one, else the
    /// run moved under the pass (`Conflict`: it reloads and plans again).
    pub(crate) expected: u64,
    /// The header a take wrote, for the pass to plan from next.
    pub(crate) written: Option<RunHeader>,
}

/// How long a pass runs without the run's lease before it takes it: half the stuck-run
/// sweep's grace (`core::recovery::STUCK_GRACE_MS`), which counts from when the run fell due.
pub(crate) const LEASE_AFTER_MS: u64 = switchyard_core::recovery::STUCK_GRACE_MS / 2;

/// What a pass holds: the latest state of each held step (at version 0: not stored), the
/// history of every held transition in the order it happened, and whether a transition of
/// several records was held (then they are stored together).
#[derive(Debug, Default)]
pub(crate) struct Held {
    records: Vec<StepRecord>,
    events: Vec<HistoryEvent>,
    grouped: bool,
}

impl Held {
    fn position(&self, step: &str) -> Option<usize> {
        self.records.iter().position(|r| r.step == step)
    }

    /// Whether a transition writing `records` can be held: none claims an attempt or waits
    /// (a claim must be stored before its call, a wait before what it waits for), each is new
    /// (version 0) or held already (version 1 and held), and they fit.
    pub(crate) fn takes(&self, records: &[StepRecord]) -> bool {
        let mut new = 0;
        let each = records.iter().all(|r| {
            let held = self.position(&r.step).is_some();
            new += usize::from(!held);
            !matches!(r.status, StepStatus::Running | StepStatus::Waiting)
                && ((r.version == 0 && !held) || (r.version == 1 && held))
        });
        each && !records.is_empty() && self.records.len() + new <= MAX_HELD_STEPS
    }

    /// Holds a transition [`Held::takes`]: `events` in order after what is held. Returns the
    /// records as the worker sees them (version 1).
    pub(crate) fn hold(
        &mut self,
        records: Vec<StepRecord>,
        events: impl IntoIterator<Item = HistoryEvent>,
    ) -> Vec<StepRecord> {
        self.grouped |= records.len() > 1;
        self.events.extend(events);
        records
            .into_iter()
            .map(|r| {
                let mut base = r.clone();
                base.version = 0;
                match self.position(&r.step) {
                    Some(i) => self.records[i] = base,
                    None => self.records.push(base),
                }
                let mut seen = r;
                seen.version = 1;
                seen
            })
            .collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Empties the hold: what it held, for the run's end write — the records (version 0)
    /// and the whole held history, in order, which the end stores before its own.
    pub(crate) fn take(&mut self) -> (Vec<StepRecord>, Vec<HistoryEvent>) {
        self.grouped = false;
        (
            std::mem::take(&mut self.records),
            std::mem::take(&mut self.events),
        )
    }

    /// Empties the hold into the writes that store it apart (before another write of the
    /// pass): each record with its own step's history (history of no held step goes with
    /// the first), one write per record — or, when a transition of several records was
    /// held, writes of up to [`MAX_STEPS_PER_WRITE`] records each, so that transition is
    /// never stored half.
    pub(crate) fn take_apart(&mut self) -> Vec<Vec<(StepRecord, Vec<HistoryEvent>)>> {
        let grouped = self.grouped;
        let (records, events) = self.take();
        let mut per: Vec<(StepRecord, Vec<HistoryEvent>)> =
            records.into_iter().map(|r| (r, Vec::new())).collect();
        for e in events {
            let i = e
                .step
                .as_deref()
                .and_then(|s| per.iter().position(|(r, _)| r.step == s))
                .unwrap_or(0);
            if let Some((_, evs)) = per.get_mut(i) {
                evs.push(e);
            }
        }
        if grouped {
            let mut writes = Vec::new();
            while !per.is_empty() {
                let rest = per.split_off(per.len().min(MAX_STEPS_PER_WRITE));
                writes.push(std::mem::replace(&mut per, rest));
            }
            writes
        } else {
            per.into_iter().map(|one| vec![one]).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;
    use switchyard_core::state::EventKind;

    fn rec(step: &str, status: StepStatus, version: u64) -> StepRecord {
        let mut r = StepRecord::pending(step);
        r.status = status;
        r.version = version;
        r
    }

    fn ev(step: &str, kind: EventKind) -> HistoryEvent {
        HistoryEvent::step(1, kind, step, 1, json!(null))
    }

    #[test]
    fn what_a_hold_takes() {
        use StepStatus::*;
        let mut h = Held::default();
        h.hold(vec![rec("a", Succeeded, 0)], []);
        // (records of the transition, taken)
        let table = [
            (vec![rec("b", Succeeded, 0)], true),
            (vec![rec("b", Skipped, 0)], true),
            (vec![rec("b", Retrying, 0)], true),
            (vec![rec("b", Failed, 0)], true),
            (vec![rec("a", Retrying, 1)], true),
            (vec![rec("a", Pending, 1), rec("b", Pending, 0)], true),
            // A claim and a wait are stored before what follows them.
            (vec![rec("b", Running, 0)], false),
            (vec![rec("b", Waiting, 0)], false),
            (vec![rec("a", Running, 1)], false),
            // Stored already (not held), or out of step with the hold.
            (vec![rec("b", Succeeded, 1)], false),
            (vec![rec("a", Succeeded, 0)], false),
            (vec![rec("a", Succeeded, 2)], false),
            (vec![rec("a", Pending, 1), rec("b", Running, 0)], false),
            (vec![], false),
        ];
        for (records, taken) in table {
            assert_eq!(h.takes(&records), taken, "{records:?}");
        }
    }

    #[test]
    fn a_step_held_again_is_held_once_at_its_latest_state() {
        use StepStatus::*;
        let mut h = Held::default();
        let seen = h.hold(
            vec![rec("draft", Succeeded, 0)],
            [ev("draft", EventKind::StepSucceeded)],
        );
        assert_eq!(seen[0].version, 1);
        h.hold(
            vec![rec("check", Pending, 0), rec("draft", Retrying, 1)],
            [ev("check", EventKind::StepRepairRequested)],
        );
        h.hold(
            vec![rec("draft", Succeeded, 1)],
            [ev("draft", EventKind::StepSucceeded)],
        );
        let (records, events) = h.take();
        let got: Vec<(&str, StepStatus, u64)> = records
            .iter()
            .map(|r| (r.step.as_str(), r.status, r.version))
            .collect();
        assert_eq!(got, [("draft", Succeeded, 0), ("check", Pending, 0)]);
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::StepSucceeded,
                EventKind::StepRepairRequested,
                EventKind::StepSucceeded
            ],
            "in the order they happened"
        );
        assert!(h.is_empty());
    }

    #[test]
    fn stored_apart_each_record_carries_its_history_and_a_group_stays_together() {
        use StepStatus::*;
        let mut h = Held::default();
        h.hold(
            vec![rec("a", Succeeded, 0)],
            [ev("a", EventKind::StepSucceeded)],
        );
        h.hold(
            vec![rec("b", Skipped, 0)],
            [ev("b", EventKind::StepSkipped)],
        );
        let apart = h.take_apart();
        let shape: Vec<Vec<(&str, usize)>> = apart
            .iter()
            .map(|w| w.iter().map(|(r, e)| (r.step.as_str(), e.len())).collect())
            .collect();
        assert_eq!(shape, [vec![("a", 1)], vec![("b", 1)]], "one write each");

        h.hold(
            vec![rec("a", Succeeded, 0)],
            [ev("a", EventKind::StepSucceeded)],
        );
        h.hold(
            vec![rec("c", Pending, 0), rec("a", Retrying, 1)],
            [
                ev("c", EventKind::StepRepairRequested),
                HistoryEvent::run(2, EventKind::RunWaiting, json!(null)),
            ],
        );
        let apart = h.take_apart();
        let shape: Vec<Vec<(&str, usize)>> = apart
            .iter()
            .map(|w| w.iter().map(|(r, e)| (r.step.as_str(), e.len())).collect())
            .collect();
        assert_eq!(
            shape,
            [vec![("a", 2), ("c", 1)]],
            "a held repair is one write"
        );
    }
}
