//! The run budget (`budget.max_cost_usd`): whether a model call may start, decided before the
//! call from what the run has spent, what its in-flight calls may still spend, and the call's
//! estimate. Pure; the worker keeps one [`Ledger`] per invocation behind a lock.

use crate::error::{ErrorClass, StepError};

/// Dollars to nine places (a nano-dollar): how every cost is shown and compared, so sums of
/// float prices print without noise in their last digits (0.00011599999999999999).
pub fn round_usd(usd: f64) -> f64 {
    (usd * 1e9).round() / 1e9
}
use std::collections::HashMap;

/// What a run has spent and what its in-flight model calls may still spend. Parallel steps
/// that start together must not each see the whole remaining budget: each reserves its
/// estimate until the worker has its record, and with it its real cost.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ledger {
    pub committed_usd: f64,
    pub reserved_usd: HashMap<String, f64>,
}

impl Ledger {
    pub fn new(committed_usd: f64) -> Ledger {
        Ledger {
            committed_usd,
            reserved_usd: HashMap::new(),
        }
    }

    /// Reserves `estimate_usd` for `step`'s call of `model` if spent + in flight + estimate
    /// stays within `budget_usd`; otherwise `budget_exceeded`, saying what was spent.
    pub fn reserve(
        &mut self,
        step: &str,
        model: &str,
        estimate_usd: f64,
        budget_usd: f64,
    ) -> Result<(), StepError> {
        let in_flight: f64 = self.reserved_usd.values().sum();
        let spent = self.committed_usd;
        if spent + in_flight + estimate_usd > budget_usd {
            return Err(StepError::new(
                ErrorClass::BudgetExceeded,
                format!(
                    "`{model}` may cost up to ${estimate_usd:.6}; the run has spent ${spent:.6} \
                     (and ${in_flight:.6} is in flight) of its ${budget_usd:.6} budget"
                ),
            ));
        }
        self.reserved_usd.insert(step.to_string(), estimate_usd);
        Ok(())
    }

    /// A step's attempt ended: its reservation goes, the change in its recorded cost stays.
    pub fn settle(&mut self, step: &str, cost_delta_usd: f64) {
        self.reserved_usd.remove(step);
        self.committed_usd += cost_delta_usd;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reservations of calls in flight count against the budget until they settle.
    #[test]
    fn reservations_and_settlements() {
        let mut l = Ledger::new(0.5);
        // (operation, ok) applied in order on a $1.00 budget
        enum Op {
            Reserve(&'static str, f64),
            Settle(&'static str, f64),
        }
        let table = [
            (Op::Reserve("a", 0.3), true),  // 0.5 + 0.3 ≤ 1
            (Op::Reserve("b", 0.3), false), // 0.5 + 0.3 in flight + 0.3 > 1
            (Op::Settle("a", 0.1), true),   // a cost 0.1, not 0.3: 0.6 spent
            (Op::Reserve("b", 0.4), true),  // 0.6 + 0.4 = 1, at the limit
            (Op::Reserve("c", 0.0001), false),
            (Op::Settle("b", 0.0), true), // b was free after all
            (Op::Reserve("c", 0.4), true),
        ];
        for (i, (op, ok)) in table.into_iter().enumerate() {
            match op {
                Op::Reserve(step, est) => {
                    let r = l.reserve(step, "m", est, 1.0);
                    assert_eq!(r.is_ok(), ok, "row {i}: {r:?}");
                    if let Err(e) = r {
                        assert_eq!(e.class, ErrorClass::BudgetExceeded);
                        assert!(e.message.contains("of its $1.000000 budget"), "{e}");
                    }
                }
                Op::Settle(step, delta) => l.settle(step, delta),
            }
        }
        assert!((l.committed_usd - 0.6).abs() < 1e-9);
    }
}
