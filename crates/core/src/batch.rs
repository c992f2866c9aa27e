//! A batch of wake-ups as an SQS-triggered worker receives it: several records may name the
//! same run (a duplicate delivery, a timer and a webhook at once). Each run is handled once
//! per batch — two concurrent `handle` calls for one run would only make the second one busy —
//! and every record of that run shares the outcome.
//!
//! Merging reasons matters for one rule only: parking a run re-sends its timer when the
//! wake-up being handled was the timer or a resume ([`crate::planner::must_send_timer`]). So
//! if any merged record is a timer or a resume, the merged wake-up is too; otherwise the first
//! record's reason stands.

use crate::state::WakeUp;

/// One run's share of a batch: the wake-up to handle and the indexes of its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunGroup {
    pub wake: WakeUp,
    pub records: Vec<usize>,
}

/// Groups the batch's wake-ups by run, in order of first appearance.
pub fn group_by_run(wakes: &[(usize, WakeUp)]) -> Vec<RunGroup> {
    let mut groups: Vec<RunGroup> = Vec::new();
    for (index, w) in wakes {
        match groups.iter_mut().find(|g| g.wake.run_id == w.run_id) {
            Some(g) => {
                g.records.push(*index);
                if !g.wake.reason.may_be_timer() && w.reason.may_be_timer() {
                    g.wake.reason = w.reason;
                }
            }
            None => groups.push(RunGroup {
                wake: w.clone(),
                records: vec![*index],
            }),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::WakeReason::{self, *};

    fn w(run: &str, reason: WakeReason) -> WakeUp {
        WakeUp {
            run_id: run.into(),
            reason,
            due_at: None,
        }
    }

    /// (run, merged reason, record indexes) of one group.
    type Group<'a> = (&'a str, WakeReason, Vec<usize>);
    /// (the batch's parsed wake-ups, the groups expected).
    type Row<'a> = (Vec<(usize, WakeUp)>, Vec<Group<'a>>);

    #[test]
    fn one_group_per_run_with_the_timer_kept() {
        let table: Vec<Row> = vec![
            (vec![], vec![]),
            (vec![(0, w("a", Start))], vec![("a", Start, vec![0])]),
            // A duplicate delivery: one handle.
            (
                vec![(0, w("a", Start)), (1, w("a", Start))],
                vec![("a", Start, vec![0, 1])],
            ),
            // A webhook and the run's timer: the merged wake-up is the timer.
            (
                vec![
                    (0, w("a", Webhook)),
                    (1, w("a", Timer)),
                    (2, w("b", Approval)),
                ],
                vec![("a", Timer, vec![0, 1]), ("b", Approval, vec![2])],
            ),
            // A resume first is kept over a later timer (both re-send).
            (
                vec![(3, w("a", Resume)), (5, w("a", Timer))],
                vec![("a", Resume, vec![3, 5])],
            ),
            // Order of first appearance; unparsable records (missing indexes) are not here.
            (
                vec![
                    (1, w("b", Cancel)),
                    (2, w("a", Retry)),
                    (4, w("b", Webhook)),
                ],
                vec![("b", Cancel, vec![1, 4]), ("a", Retry, vec![2])],
            ),
        ];
        for (input, want) in table {
            let groups = group_by_run(&input);
            let got: Vec<Group> = groups
                .iter()
                .map(|g| (g.wake.run_id.as_str(), g.wake.reason, g.records.clone()))
                .collect();
            assert_eq!(got, want, "{input:?}");
        }
    }
}
