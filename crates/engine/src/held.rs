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

use std::collections::HashMap;
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
    /// A take found the run moved (or ended) under the pass: every later take fails too
    /// until the pass has read the run again, so no other action of it writes meanwhile.
    pub(crate) moved: bool,
}

/// How long after the run fell due a pass without the run's lease takes it: half the
/// stuck-run sweep's grace (`core::recovery::STUCK_GRACE_MS`), which counts from the same
/// moment.
pub(crate) const LEASE_AFTER_MS: u64 = switchyard_core::recovery::STUCK_GRACE_MS / 2;

/// The most a pass holds, in bytes of JSON (the held records' latest states and the held
/// history): the end write carries it in one item (on DynamoDB the header, 400 KB at most,
/// where it is stored deflated). A transition that would hold more is written at once, after
/// what is held.
pub(crate) const MAX_HELD_BYTES: usize = 48 * 1024;

/// What a pass holds: the latest state of each held step (at version 0: not stored), the
/// history of every held transition in the order it happened (each event with the record it
/// was written with), and whether the history interleaves records (then they are stored
/// together, so it stays in order and no held transition is stored half).
#[derive(Debug, Default)]
pub(crate) struct Held {
    records: Vec<StepRecord>,
    /// JSON bytes of each record's latest state.
    sizes: Vec<usize>,
    /// `(index of the record it goes with, event)`, in order.
    events: Vec<(usize, HistoryEvent)>,
    event_bytes: usize,
    /// The record held last: holding another step and then this one again interleaves.
    last: Option<usize>,
    grouped: bool,
    /// A write of what was held failed part-way: nothing more is written in this pass.
    broken: Option<String>,
}

/// One write of held records stored apart: each record with the history it carries.
pub(crate) type Apart = Vec<(StepRecord, Vec<HistoryEvent>)>;

/// What [`Held::try_hold`] did with a transition.
#[derive(Debug, PartialEq)]
pub(crate) enum Holding {
    /// Held; the records as the worker sees them (version 1).
    Held(Vec<StepRecord>),
    /// Not held: it is written at once, after what is held.
    No,
    /// It was made from a state of a held step that another transition has replaced since
    /// (two repairs of one target at once): the pass must plan again.
    Stale(String),
}

fn json_len<T: serde::Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX / 4, |v| v.len())
}

impl Held {
    fn position(&self, step: &str) -> Option<usize> {
        self.records.iter().position(|r| r.step == step)
    }

    /// Holds a transition if it can be: none of its records claims an attempt or waits (a
    /// claim must be stored before its call, a wait before what it waits for), each is new
    /// (version 0) or held already (version 1, made from the held state: `base`, the
    /// records the action started from), and they fit ([`MAX_HELD_STEPS`],
    /// [`MAX_HELD_BYTES`], and [`MAX_STEPS_PER_WRITE`] once they must be stored together).
    /// `events[i]` is the history of `records[i]`'s write.
    pub(crate) fn try_hold(
        &mut self,
        records: &[StepRecord],
        events: &[Vec<HistoryEvent>],
        base: &HashMap<String, StepRecord>,
    ) -> Holding {
        // A held step's state replaced since the transition read it: whatever happens to
        // the transition, it must not be written over the newer state.
        for r in records {
            if let Some(i) = self.position(&r.step) {
                let mut seen = self.records[i].clone();
                seen.version = 1;
                if r.version != 1 || base.get(&r.step) != Some(&seen) {
                    return Holding::Stale(format!(
                        "step {} changed in this pass since the transition read it",
                        r.step
                    ));
                }
            }
        }
        if self.broken.is_some()
            || records.is_empty()
            || records.iter().any(|r| {
                matches!(r.status, StepStatus::Running | StepStatus::Waiting)
                    || (r.version != 0 && self.position(&r.step).is_none())
            })
        {
            return Holding::No;
        }
        let new = records
            .iter()
            .filter(|r| self.position(&r.step).is_none())
            .count();
        let count = self.records.len() + new;
        let interleaves = match records {
            [one] => self
                .position(&one.step)
                .is_some_and(|i| self.last != Some(i)),
            _ => true,
        };
        let grouped = self.grouped || interleaves;
        let sizes: Vec<usize> = records.iter().map(json_len).collect();
        let added: usize = events.iter().flatten().map(json_len).sum();
        let replaced: usize = records
            .iter()
            .filter_map(|r| self.position(&r.step).map(|i| self.sizes[i]))
            .sum();
        let bytes = self.sizes.iter().sum::<usize>() + self.event_bytes - replaced
            + sizes.iter().sum::<usize>()
            + added;
        if count > MAX_HELD_STEPS
            || bytes > MAX_HELD_BYTES
            || (grouped && count > MAX_STEPS_PER_WRITE)
        {
            return Holding::No;
        }
        self.grouped = grouped;
        self.event_bytes += added;
        let mut seen = Vec::with_capacity(records.len());
        for ((r, size), evs) in records.iter().zip(sizes).zip(events) {
            let mut stored = r.clone();
            stored.version = 0;
            let i = match self.position(&r.step) {
                Some(i) => {
                    self.records[i] = stored;
                    self.sizes[i] = size;
                    i
                }
                None => {
                    self.records.push(stored);
                    self.sizes.push(size);
                    self.records.len() - 1
                }
            };
            self.events.extend(evs.iter().cloned().map(|e| (i, e)));
            self.last = Some(i);
            let mut r = r.clone();
            r.version = 1;
            seen.push(r);
        }
        Holding::Held(seen)
    }

    /// Nothing held, and no failed write of what was (a broken hold is never empty: every
    /// later write of the pass goes through [`Held::take_apart`], which refuses).
    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty() && self.broken.is_none()
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Empties the hold: what it held, for the run's end write — the records (version 0)
    /// and the whole held history, in order, which the end stores before its own.
    pub(crate) fn take(&mut self) -> (Vec<StepRecord>, Vec<HistoryEvent>) {
        let held = std::mem::take(self);
        let events = held.events.into_iter().map(|(_, e)| e).collect();
        self.broken = held.broken;
        (held.records, events)
    }

    /// Empties the hold into the writes that store it apart (before another write of the
    /// pass), each write with its history in the order it happened: one write per record,
    /// with its own history (each record's history is one stretch of the whole) — or, when
    /// the history interleaves records (a repair, a step held again after another), one
    /// write of them all ([`MAX_STEPS_PER_WRITE`] at most, which holding keeps to), the whole
    /// history with the first, so no held transition is ever stored half. `Err` once a
    /// write of the pass's held records has failed ([`Held::broke`]).
    pub(crate) fn take_apart(&mut self) -> Result<Vec<Apart>, String> {
        if let Some(why) = &self.broken {
            return Err(why.clone());
        }
        let grouped = self.grouped;
        let held = std::mem::take(self);
        let mut per: Vec<(StepRecord, Vec<HistoryEvent>)> =
            held.records.into_iter().map(|r| (r, Vec::new())).collect();
        for (i, e) in held.events {
            let i = if grouped { 0 } else { i };
            if let Some((_, evs)) = per.get_mut(i) {
                evs.push(e);
            }
        }
        Ok(if grouped {
            vec![per]
        } else {
            per.into_iter().map(|one| vec![one]).collect()
        })
    }

    /// A write of what was held failed part-way: the rest of it is lost with the pass, and
    /// no later write of the pass may point past what is stored, so every later commit of
    /// the pass fails too (it plans again from what is stored).
    pub(crate) fn broke(&mut self, why: String) {
        self.broken = Some(why);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;
    use switchyard_core::state::EventKind;
    use StepStatus::*;

    fn rec(step: &str, status: StepStatus, version: u64) -> StepRecord {
        let mut r = StepRecord::pending(step);
        r.status = status;
        r.version = version;
        r
    }

    fn ev(step: &str, kind: EventKind) -> HistoryEvent {
        HistoryEvent::step(1, kind, step, 1, json!(null))
    }

    /// The records as the worker saw them after `seen` were held: the action's base.
    fn base(seen: &[StepRecord]) -> HashMap<String, StepRecord> {
        seen.iter().map(|r| (r.step.clone(), r.clone())).collect()
    }

    fn held(
        h: &mut Held,
        records: Vec<StepRecord>,
        events: Vec<Vec<HistoryEvent>>,
        b: &HashMap<String, StepRecord>,
    ) -> Vec<StepRecord> {
        match h.try_hold(&records, &events, b) {
            Holding::Held(seen) => seen,
            other => panic!("not held: {other:?}"),
        }
    }

    #[test]
    fn what_a_hold_takes() {
        let mut h = Held::default();
        let seen = held(
            &mut h,
            vec![rec("a", Succeeded, 0)],
            vec![vec![]],
            &HashMap::new(),
        );
        let b = base(&seen);
        let a_at = |status| {
            let mut r = seen[0].clone();
            r.status = status;
            r
        };
        // (records of the transition, what the hold does)
        let table: Vec<(Vec<StepRecord>, &str)> = vec![
            (vec![rec("b", Succeeded, 0)], "held"),
            (vec![rec("b", Skipped, 0)], "held"),
            (vec![rec("b", Retrying, 0)], "held"),
            (vec![rec("b", Failed, 0)], "held"),
            (vec![a_at(Retrying)], "held"),
            (vec![a_at(Pending), rec("b", Pending, 0)], "held"),
            // A claim and a wait are stored before what follows them.
            (vec![rec("b", Running, 0)], "no"),
            (vec![rec("b", Waiting, 0)], "no"),
            (vec![a_at(Running)], "no"),
            // Stored already (not held).
            (vec![rec("b", Succeeded, 1)], "no"),
            (vec![], "no"),
            // Out of step with the held state: the pass plans again.
            (vec![rec("a", Succeeded, 0)], "stale"),
            (vec![rec("a", Succeeded, 2)], "stale"),
        ];
        for (records, want) in table {
            let events = vec![Vec::new(); records.len()];
            let mut probe = Held::default();
            held(
                &mut probe,
                vec![rec("a", Succeeded, 0)],
                vec![vec![]],
                &HashMap::new(),
            );
            let got = match probe.try_hold(&records, &events, &b) {
                Holding::Held(_) => "held",
                Holding::No => "no",
                Holding::Stale(_) => "stale",
            };
            assert_eq!(got, want, "{records:?}");
        }
        // A transition made from a state another one has replaced since: stale.
        let mut b2 = b.clone();
        b2.get_mut("a").unwrap().attempt = 7;
        assert!(matches!(
            h.try_hold(&[a_at(Retrying)], &[vec![]], &b2),
            Holding::Stale(_)
        ));
    }

    #[test]
    fn a_step_held_again_is_held_once_at_its_latest_state_and_the_history_stays_in_order() {
        let mut h = Held::default();
        let seen = held(
            &mut h,
            vec![rec("draft", Succeeded, 0)],
            vec![vec![ev("draft", EventKind::StepSucceeded)]],
            &HashMap::new(),
        );
        assert_eq!(seen[0].version, 1);
        let mut reset = seen[0].clone();
        reset.status = Retrying;
        let seen = held(
            &mut h,
            vec![rec("check", Pending, 0), reset],
            vec![vec![ev("check", EventKind::StepRepairRequested)], vec![]],
            &base(&seen),
        );
        let mut again = seen[1].clone();
        again.status = Succeeded;
        held(
            &mut h,
            vec![again],
            vec![vec![ev("draft", EventKind::StepSucceeded)]],
            &base(&seen),
        );
        let apart = h.take_apart().unwrap();
        // Interleaved (draft, check, draft): one write, the history in order with the first.
        assert_eq!(apart.len(), 1);
        let got: Vec<(&str, StepStatus, u64)> = apart[0]
            .iter()
            .map(|(r, _)| (r.step.as_str(), r.status, r.version))
            .collect();
        assert_eq!(got, [("draft", Succeeded, 0), ("check", Pending, 0)]);
        let kinds: Vec<(EventKind, Option<String>)> = apart[0][0]
            .1
            .iter()
            .map(|e| (e.kind, e.step.clone()))
            .collect();
        assert_eq!(
            kinds,
            [
                (EventKind::StepSucceeded, Some("draft".into())),
                (EventKind::StepRepairRequested, Some("check".into())),
                (EventKind::StepSucceeded, Some("draft".into()))
            ],
            "in the order they happened"
        );
        assert!(apart[0][1].1.is_empty());
        assert!(h.is_empty());
    }

    #[test]
    fn stored_apart_each_record_carries_its_own_stretch_of_history() {
        let mut h = Held::default();
        let seen = held(
            &mut h,
            vec![rec("a", Retrying, 0)],
            vec![vec![ev("a", EventKind::StepStarted)]],
            &HashMap::new(),
        );
        let mut a = seen[0].clone();
        a.status = Succeeded;
        // The same step again, right after itself: no interleaving.
        let seen = held(
            &mut h,
            vec![a],
            vec![vec![ev("a", EventKind::StepSucceeded)]],
            &base(&seen),
        );
        held(
            &mut h,
            vec![rec("b", Skipped, 0)],
            vec![vec![
                ev("b", EventKind::StepSkipped),
                HistoryEvent::run(2, EventKind::RunWaiting, json!(null)),
            ]],
            &base(&seen),
        );
        let apart = h.take_apart().unwrap();
        let shape: Vec<Vec<(&str, usize)>> = apart
            .iter()
            .map(|w| w.iter().map(|(r, e)| (r.step.as_str(), e.len())).collect())
            .collect();
        assert_eq!(
            shape,
            [vec![("a", 2)], vec![("b", 2)]],
            "one write each, in order"
        );
    }

    #[test]
    fn a_hold_is_bounded_and_a_failed_write_ends_it() {
        // Bytes: a record past the budget is not held.
        let mut h = Held::default();
        let mut big = rec("big", Succeeded, 0);
        big.output = Some(switchyard_core::state::ValueRef::Inline {
            value: json!("x".repeat(MAX_HELD_BYTES)),
        });
        assert_eq!(h.try_hold(&[big], &[vec![]], &HashMap::new()), Holding::No);
        // Records held together (interleaved): at most one write's worth.
        let mut seen = Vec::new();
        for i in 0..MAX_STEPS_PER_WRITE {
            seen = held(
                &mut h,
                vec![rec(&format!("s{i}"), Succeeded, 0)],
                vec![vec![]],
                &base(&seen),
            );
        }
        let mut first = seen[0].clone();
        first.step = "s0".into();
        first.version = 1;
        let b: HashMap<String, StepRecord> = [("s0".to_string(), first.clone())].into();
        first.status = Retrying;
        assert_eq!(
            h.try_hold(
                &[first.clone(), rec("z", Pending, 0)],
                &[vec![], vec![]],
                &b
            ),
            Holding::No,
            "26 records that must be stored together are not held"
        );
        h.broke("a write failed".into());
        assert!(h.take_apart().is_err());
        assert_eq!(
            h.try_hold(&[rec("y", Succeeded, 0)], &[vec![]], &HashMap::new()),
            Holding::No
        );
    }
}
