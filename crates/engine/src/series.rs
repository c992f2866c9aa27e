//! Stats over time: the hourly figures behind the console's charts (`/ui/stats`).
//!
//! [`crate::stats`] folds a window's hour buckets into one document; this reads the *same*
//! buckets ([`StateStore::stats_buckets`]) and keeps the hours apart, per workflow and per
//! step: how many runs ended (step executions finished), their latency percentiles and their
//! cost in each UTC hour of the window. Nothing new is stored and nothing existing changes:
//! a bucket's key already carries its hour, and the buckets of one hour differ only by tenant
//! (an operator's view), model and prompt version, which are added together here.
//!
//! The definitions are [`crate::stats`]'s: an hour is the hour the run was *created* in, a
//! run counts once it has ended, latency percentiles are read from the log-scale histogram
//! (within 1/32 of the exact value).

use crate::stats::StatsQuery;
use crate::EngineError;
use serde::Serialize;
use std::collections::BTreeMap;
use switchyard_core::machine::budget::round_usd as usd;
use switchyard_core::ports::StateStore;
use switchyard_core::stats::{hour_of, names, Bucket, BucketQuery, Counters};
use switchyard_core::Millis;

/// One hour's figures of a workflow or a step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Start of the UTC hour (ms since the Unix epoch).
    pub hour: Millis,
    /// Runs that ended (run series), or step executions that finished (step series).
    pub count: u64,
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    /// Cost of those runs or executions, USD.
    pub cost_usd: f64,
}

/// One step's hours, oldest first (hours without a finished execution are left out).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepSeries {
    pub step: String,
    pub kind: String,
    pub points: Vec<Point>,
}

/// One workflow's hours: its runs, then its steps in the definition's order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowSeries {
    pub workflow: String,
    pub runs: Vec<Point>,
    pub steps: Vec<StepSeries>,
}

/// The hours of a window, per workflow (by name).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// Start of the window's first hour and of its last (both included).
    pub from_hour: Millis,
    pub to_hour: Millis,
    pub workflows: Vec<WorkflowSeries>,
}

fn point(hour: Millis, c: &Counters, count: u64) -> Point {
    let h = c.latency();
    Point {
        hour,
        count,
        p50_ms: h.percentile(50),
        p95_ms: h.percentile(95),
        cost_usd: usd(c.get(names::COST)),
    }
}

/// One workflow's run (step `""`) or one step's buckets, hour by hour.
struct Acc {
    kind: String,
    ord: u32,
    /// The hour `kind` and `ord` were read from.
    newest: Millis,
    hours: BTreeMap<Millis, Counters>,
}

/// The series of some buckets (any order, any mix of tenants, models and prompt versions).
pub fn from_buckets(from_hour: Millis, to_hour: Millis, buckets: &[Bucket]) -> Series {
    // workflow → step ("" for the run) → its hours
    let mut acc: BTreeMap<&str, BTreeMap<&str, Acc>> = BTreeMap::new();
    for b in buckets {
        let e = acc
            .entry(&b.key.workflow)
            .or_default()
            .entry(&b.key.step)
            .or_insert_with(|| Acc {
                kind: b.kind.clone(),
                ord: b.ord,
                newest: b.key.hour,
                hours: BTreeMap::new(),
            });
        // The kind and place of the newest hour's definition, as the stats document does.
        if b.key.hour >= e.newest {
            (e.kind, e.ord, e.newest) = (b.kind.clone(), b.ord, b.key.hour);
        }
        e.hours.entry(b.key.hour).or_default().merge(&b.counters);
    }
    let workflows = acc
        .into_iter()
        .map(|(workflow, steps)| {
            let mut runs = Vec::new();
            let mut step_series = Vec::new();
            for (
                step,
                Acc {
                    kind, ord, hours, ..
                },
            ) in steps
            {
                if step.is_empty() {
                    runs = hours
                        .iter()
                        .map(|(h, c)| {
                            let ended = [names::SUCCEEDED, names::FAILED, names::CANCELLED]
                                .iter()
                                .map(|n| c.count(n))
                                .sum();
                            point(*h, c, ended)
                        })
                        .filter(|p| p.count > 0)
                        .collect();
                } else {
                    let points = hours
                        .iter()
                        .map(|(h, c)| {
                            point(*h, c, c.count(names::SUCCEEDED) + c.count(names::FAILED))
                        })
                        .filter(|p| p.count > 0)
                        .collect();
                    step_series.push((ord, step.to_string(), kind, points));
                }
            }
            step_series.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            WorkflowSeries {
                workflow: workflow.to_string(),
                runs,
                steps: step_series
                    .into_iter()
                    .map(|(_, step, kind, points)| StepSeries { step, kind, points })
                    .collect(),
            }
        })
        .collect();
    Series {
        from_hour,
        to_hour,
        workflows,
    }
}

/// The hourly series of the runs `q` selects (its scope, workflow and window; `by` is not
/// used: a series adds every model and prompt version of a step together).
pub async fn read(
    store: &dyn StateStore,
    q: &StatsQuery,
    now: Millis,
) -> Result<Series, EngineError> {
    let from_hour = hour_of(now.saturating_sub(q.since.ms()));
    let to_hour = hour_of(now);
    let buckets = store
        .stats_buckets(&BucketQuery {
            scope: q.scope.clone(),
            workflow: q.workflow.clone(),
            from_hour,
            to_hour,
        })
        .await?;
    Ok(from_buckets(from_hour, to_hour, &buckets))
}

impl crate::Engine {
    /// The hourly series of the runs `q` selects ([`read`] at the engine's clock).
    pub async fn stats_series(&self, q: &StatsQuery) -> Result<Series, EngineError> {
        read(self.store.as_ref(), q, self.now()).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use switchyard_core::stats::{BucketKey, HOUR_MS};

    fn bucket(
        tenant: &str,
        hour: u64,
        step: &str,
        model: &str,
        counters: &[(&str, f64)],
    ) -> Bucket {
        let mut c = Counters::default();
        for (n, v) in counters {
            c.add(n, *v);
        }
        Bucket {
            key: BucketKey {
                tenant: tenant.into(),
                workflow: "wf".into(),
                hour: hour * HOUR_MS,
                step: step.into(),
                model: model.into(),
                prompt_version: String::new(),
            },
            kind: if step.is_empty() { "" } else { "model" }.into(),
            ord: u32::from(step == "b"),
            counters: c,
        }
    }

    #[test]
    fn hours_stay_apart_and_tenants_and_models_add_up() {
        let buckets = vec![
            // Hour 1: two tenants' runs, one ended each.
            bucket(
                "t1",
                1,
                "",
                "",
                &[
                    ("started", 2.0),
                    ("succeeded", 1.0),
                    ("usd", 0.5),
                    ("l.10", 1.0),
                ],
            ),
            bucket(
                "t2",
                1,
                "",
                "",
                &[
                    ("started", 1.0),
                    ("failed", 1.0),
                    ("usd", 0.25),
                    ("l.20", 1.0),
                ],
            ),
            // Hour 3: started, none ended yet: no point.
            bucket("t1", 3, "", "", &[("started", 1.0)]),
            // Step b before step a in the definition (ord 1 vs 0 — `a` has ord 0).
            bucket(
                "t1",
                1,
                "b",
                "m/x",
                &[
                    ("exec", 1.0),
                    ("succeeded", 1.0),
                    ("usd", 0.1),
                    ("l.5", 1.0),
                ],
            ),
            bucket(
                "t1",
                1,
                "b",
                "m/y",
                &[("exec", 1.0), ("failed", 1.0), ("usd", 0.2), ("l.7", 1.0)],
            ),
            bucket(
                "t1",
                2,
                "a",
                "m/x",
                &[("exec", 1.0), ("succeeded", 1.0), ("l.3", 1.0)],
            ),
        ];
        let s = from_buckets(HOUR_MS, 3 * HOUR_MS, &buckets);
        assert_eq!(s.workflows.len(), 1);
        let w = &s.workflows[0];
        assert_eq!(
            w.runs,
            vec![Point {
                hour: HOUR_MS,
                count: 2,
                p50_ms: Some(10),
                p95_ms: Some(20),
                cost_usd: 0.75
            }]
        );
        let names: Vec<&str> = w.steps.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let b = &w.steps[1];
        assert_eq!(b.points.len(), 1);
        assert_eq!(
            (
                b.points[0].count,
                b.points[0].p50_ms,
                b.points[0].p95_ms,
                b.points[0].cost_usd
            ),
            (2, Some(5), Some(7), 0.3)
        );
        assert_eq!(w.steps[0].points[0].hour, 2 * HOUR_MS);
    }
}
