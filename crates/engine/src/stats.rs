//! `switchyard stats` and `GET /v1/stats` (CONTRACT.md): per workflow and per step, over the
//! runs created in a time window — outcomes and failures by error class, latency percentiles,
//! cost, retry, fallback, validation-failure and escalation rates, and what cascades saved
//! against always asking their top model.
//!
//! Two halves:
//! - [`RunFacts::from_snapshot`] and [`aggregate`] are pure: a run's persisted state (the same
//!   records the run document is built from, `crate::view`) becomes a few numbers, and runs
//!   become the figures. Table tests cover them.
//! - [`Engine::stats`] pages through the store's run listing, newest first, for one tenant
//!   (the HTTP API) or all (the local CLI), loads each run in the window and aggregates.
//!
//! Definitions (docs/api.md, "GET /v1/stats", says the same to users):
//! - **Percentiles** are nearest-rank: of `n` values sorted ascending, the p-th percentile is
//!   the value at rank `ceil(p/100 × n)` (1-based). Always one of the observed values.
//! - **Run outcome rates** are over the runs that have ended (succeeded, failed, cancelled);
//!   runs still pending, running or waiting are counted but not in the rates. Run latency is
//!   `ended_at − created_at` of the ended runs.
//! - **A step execution** is a step that started in a run (a skipped or never-reached step is
//!   not one). A step with no execution in the window is left out. Its success rate is over the
//!   executions that finished (succeeded or failed); retry, fallback, validation-failure and
//!   escalation rates are over all its executions. Step latency is the step's `latency_ms`
//!   (the sum of its provider calls) of finished executions.
//! - **Retried**: more than one attempt, not counting one call per cascade escalation. **Validation failure**: a `validate` step that failed
//!   or requested a repair (its `repairs` count, one per `step_repair_requested` event).
//! - **Cascade figures** count only executions that carry a baseline (what the cascade's top
//!   model would have cost for the same calls): `saving_usd = baseline_usd − cost_usd`, and
//!   `saving_pct` is the saving as a percentage of the baseline.

use crate::{Engine, EngineError};
use futures::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
use switchyard_core::budget::round_usd as usd;
use switchyard_core::ports::{ListScope, RunQuery, MAX_LIST_LIMIT};
use switchyard_core::state::{RunSnapshot, RunStatus, StepStatus};
use switchyard_core::time::Dur;
use switchyard_core::workflow::Workflow;
use switchyard_core::ErrorClass;

/// The window when none is given (`--since`, `since`).
pub const DEFAULT_SINCE: &str = "24h";

/// The most runs one stats answer reads: the newest this many in the window. Past it the
/// answer says `truncated: true` (a narrower `since` or a `workflow` filter covers the rest).
pub const MAX_STATS_RUNS: usize = 10_000;

/// Runs loaded at once while aggregating (each is one read of the store).
const LOAD_CONCURRENCY: usize = 8;

/// What to aggregate: whose runs, which workflow, how far back.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsQuery {
    pub scope: ListScope,
    pub workflow: Option<String>,
    /// Runs created at most this long before now.
    pub since: Dur,
    /// `since` as the caller wrote it (`24h`, `7d`), echoed in the answer's window.
    pub since_text: String,
}

impl StatsQuery {
    /// Reads the caller's `workflow` and `since` as given (a flag, a query parameter). A
    /// `since` that is not a positive duration, or a `workflow` that can never be a workflow's
    /// name (1–64 of `A-Z a-z 0-9 _ -`, as workflow files require), is a `BadRequest` naming
    /// the field.
    pub fn parse(
        scope: ListScope,
        workflow: Option<&str>,
        since: Option<&str>,
    ) -> Result<StatsQuery, EngineError> {
        let bad = |field: &str, message: String| EngineError::BadRequest {
            field: Some(field.to_string()),
            message,
        };
        let since_text = since.unwrap_or(DEFAULT_SINCE).trim().to_string();
        let since = Dur::parse(&since_text).map_err(|e| bad("since", e))?;
        if since.ms() == 0 {
            return Err(bad(
                "since",
                "since must be a positive duration such as 30m, 24h or 7d".into(),
            ));
        }
        if let Some(w) = workflow {
            if !switchyard_core::workflow::valid_name(w) {
                return Err(bad(
                    "workflow",
                    "workflow must be a workflow name: 1-64 letters, digits, `_` or `-`".into(),
                ));
            }
        }
        Ok(StatsQuery {
            scope,
            workflow: workflow.map(str::to_string),
            since,
            since_text,
        })
    }
}

// ---- the document ----

/// The stats document: `switchyard stats --json` and `GET /v1/stats`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub window: Window,
    /// The tenant whose runs these are; `null`: every tenant (the local CLI).
    pub tenant: Option<String>,
    /// The workflow filter, if one was given.
    pub workflow: Option<String>,
    /// Runs counted.
    pub runs: u64,
    /// More runs were created in the window than one answer reads (10000); the newest were
    /// counted.
    pub truncated: bool,
    /// Cost of every counted run, USD.
    pub cost_usd: f64,
    /// Cascade savings over every workflow; `null` when no step execution had a baseline.
    pub cascade: Option<Saving>,
    /// By workflow name.
    pub workflows: Vec<WorkflowStats>,
}

/// The time window: runs created in `[from, to]`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    /// The duration asked for, e.g. `24h`.
    pub since: String,
    /// Milliseconds since the Unix epoch.
    pub from: u64,
    pub to: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowStats {
    pub workflow: String,
    pub runs: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub waiting: u64,
    /// Pending or running.
    pub running: u64,
    /// Succeeded, failed or cancelled: the denominator of the rates below.
    pub ended: u64,
    /// `succeeded / ended`; `null` when no run has ended.
    pub success_rate: Option<f64>,
    /// `failed / ended`.
    pub failure_rate: Option<f64>,
    /// Failed runs by error class.
    pub failures_by_class: BTreeMap<String, u64>,
    /// `failures_by_class / ended`.
    pub failure_rate_by_class: BTreeMap<String, f64>,
    /// Created → ended, over the ended runs; `null` when none has ended.
    pub latency_ms: Option<Latency>,
    pub cost_usd: f64,
    /// `cost_usd / runs`.
    pub mean_cost_usd: f64,
    /// The workflow's cascade steps together; `null` when none had a baseline.
    pub cascade: Option<Saving>,
    /// In the definition's order (newest run's definition first).
    pub steps: Vec<StepStats>,
}

/// Nearest-rank percentiles, in milliseconds: of `count` values sorted ascending, the p-th is
/// the value at rank `ceil(p/100 × count)`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// How many values the percentiles are of.
    pub count: u64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepStats {
    pub step: String,
    /// `model`, `retrieve`, `route`, `parallel`, `validate`, `transform`, `approval`.
    pub kind: String,
    /// Runs in which the step started.
    pub executions: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// `succeeded / (succeeded + failed)`; `null` when none finished.
    pub success_rate: Option<f64>,
    /// `failed / (succeeded + failed)`.
    pub failure_rate: Option<f64>,
    pub failures_by_class: BTreeMap<String, u64>,
    /// The step's `latency_ms` over finished executions.
    pub latency_ms: Option<Latency>,
    pub cost_usd: f64,
    /// `cost_usd / executions`.
    pub mean_cost_usd: f64,
    /// Executions with more than one attempt / executions.
    pub retry_rate: f64,
    /// Executions answered by a fallback model / executions.
    pub fallback_rate: f64,
    /// Validate steps: executions that failed or requested a repair / executions; `null` for
    /// other kinds.
    pub validation_failure_rate: Option<f64>,
    /// Executions that moved to a higher cascade tier at least once / executions; `null` for a
    /// step that never escalated and never carried a baseline (not a cascade).
    pub escalation_rate: Option<f64>,
    /// Succeeded executions by the model that gave the answer.
    pub answered_by: BTreeMap<String, u64>,
    /// What the step saved against always using the cascade's top model; `null` when no
    /// execution had a baseline.
    pub cascade: Option<Saving>,
}

/// A cascade's saving over the executions that carry a baseline.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Saving {
    /// Step executions with a baseline.
    pub executions: u64,
    /// What always using the top model would have cost, USD.
    pub baseline_usd: f64,
    /// What those executions cost, USD.
    pub cost_usd: f64,
    /// `baseline_usd − cost_usd` (negative when escalating cost more than the top model alone).
    pub saving_usd: f64,
    /// `saving_usd / baseline_usd × 100`, two decimals; `null` when the baseline is 0.
    pub saving_pct: Option<f64>,
}

// ---- one run's facts ----

/// What stats needs of one run: a few numbers per step, nothing of its inputs or outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFacts {
    pub workflow: String,
    pub status: RunStatus,
    /// The class a failed run ended with.
    pub error_class: Option<ErrorClass>,
    pub created_at: u64,
    pub ended_at: Option<u64>,
    pub cost_usd: f64,
    /// In the definition's order; steps that never started are left out.
    pub steps: Vec<StepFacts>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepFacts {
    pub step: String,
    pub kind: String,
    pub status: StepStatus,
    /// The class a failed step ended with.
    pub error_class: Option<ErrorClass>,
    pub attempts: u32,
    pub latency_ms: u64,
    pub cost_usd: f64,
    pub fallback_used: bool,
    /// Validate steps: repairs requested.
    pub repairs: u32,
    /// The model of the last attempt (the one that answered, when the step succeeded).
    pub model: Option<String>,
    /// Moves to a higher cascade tier.
    pub escalations: usize,
    /// What the cascade's top model would have cost for the step's calls.
    pub baseline_usd: Option<f64>,
}

impl StepFacts {
    fn finished(&self) -> bool {
        matches!(self.status, StepStatus::Succeeded | StepStatus::Failed)
    }
}

impl RunFacts {
    /// The facts of a run, from its persisted state and the definition it pinned (for the
    /// order and kind of its steps), read the way the run document reads them (`crate::view`).
    pub fn from_snapshot(wf: &Workflow, snap: &RunSnapshot) -> RunFacts {
        let h = &snap.header;
        let steps = wf
            .steps
            .iter()
            .filter_map(|s| {
                let r = snap.step(&s.id)?;
                let started = match r.status {
                    StepStatus::Skipped => false,
                    // A validate step sent back to pending by a repair has run already.
                    StepStatus::Pending => r.attempt > 0,
                    _ => true,
                };
                started.then(|| StepFacts {
                    step: s.id.clone(),
                    kind: s.kind.name().to_string(),
                    status: r.status,
                    error_class: if r.status == StepStatus::Failed {
                        r.error.as_ref().map(|e| e.class)
                    } else {
                        None
                    },
                    attempts: r.attempt,
                    latency_ms: r.latency_ms,
                    cost_usd: r.cost_usd,
                    fallback_used: r.fallback_used,
                    repairs: r.repairs,
                    model: r.model.clone(),
                    escalations: r.escalations.len(),
                    baseline_usd: r.baseline_usd,
                })
            })
            .collect();
        RunFacts {
            workflow: h.workflow.name.clone(),
            status: h.status,
            error_class: if h.status == RunStatus::Failed {
                h.error.as_ref().map(|e| e.class)
            } else {
                None
            },
            created_at: h.created_at,
            ended_at: h.ended_at,
            cost_usd: snap.cost_usd(),
            steps,
        }
    }
}

// ---- aggregation ----

/// The `p`-th nearest-rank percentile (0 < p ≤ 100) of values sorted ascending; `None` for
/// no values.
pub fn percentile(sorted: &[u64], p: u32) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = (p.clamp(1, 100) as usize * n).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

fn latency(mut values: Vec<u64>) -> Option<Latency> {
    values.sort_unstable();
    Some(Latency {
        count: values.len() as u64,
        p50: percentile(&values, 50)?,
        p95: percentile(&values, 95)?,
        p99: percentile(&values, 99)?,
    })
}

/// A fraction to four places.
fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| (part as f64 / whole as f64 * 1e4).round() / 1e4)
}

#[derive(Default)]
struct SavingAcc {
    executions: u64,
    baseline: f64,
    cost: f64,
}

impl SavingAcc {
    fn add(&mut self, baseline: f64, cost: f64) {
        self.executions += 1;
        self.baseline += baseline;
        self.cost += cost;
    }

    fn merge(&mut self, other: &SavingAcc) {
        self.executions += other.executions;
        self.baseline += other.baseline;
        self.cost += other.cost;
    }

    fn finish(&self) -> Option<Saving> {
        (self.executions > 0).then(|| {
            let saving = self.baseline - self.cost;
            Saving {
                executions: self.executions,
                baseline_usd: usd(self.baseline),
                cost_usd: usd(self.cost),
                saving_usd: usd(saving),
                saving_pct: (self.baseline > 0.0)
                    .then(|| (saving / self.baseline * 1e4).round() / 100.0),
            }
        })
    }
}

#[derive(Default)]
struct StepAcc {
    kind: String,
    executions: u64,
    succeeded: u64,
    failed: u64,
    failures: BTreeMap<String, u64>,
    latencies: Vec<u64>,
    cost: f64,
    retried: u64,
    fallbacks: u64,
    validation_failures: u64,
    escalated: u64,
    cascade_seen: bool,
    answered_by: BTreeMap<String, u64>,
    saving: SavingAcc,
}

impl StepAcc {
    fn add(&mut self, s: &StepFacts) {
        self.executions += 1;
        match s.status {
            StepStatus::Succeeded => {
                self.succeeded += 1;
                if let Some(m) = &s.model {
                    *self.answered_by.entry(m.clone()).or_default() += 1;
                }
            }
            StepStatus::Failed => {
                self.failed += 1;
                if let Some(c) = s.error_class {
                    *self.failures.entry(c.as_str().to_string()).or_default() += 1;
                }
            }
            _ => {}
        }
        if s.finished() {
            self.latencies.push(s.latency_ms);
        }
        self.cost += s.cost_usd;
        // A cascade's move up a tier is a call on another model, not a retry.
        self.retried += u64::from(s.attempts as usize > 1 + s.escalations);
        self.fallbacks += u64::from(s.fallback_used);
        self.validation_failures += u64::from(s.status == StepStatus::Failed || s.repairs > 0);
        self.escalated += u64::from(s.escalations > 0);
        self.cascade_seen |= s.escalations > 0 || s.baseline_usd.is_some();
        if let Some(b) = s.baseline_usd {
            self.saving.add(b, s.cost_usd);
        }
    }

    fn finish(self, step: String) -> StepStats {
        let finished = self.succeeded + self.failed;
        let n = self.executions;
        StepStats {
            step,
            validation_failure_rate: (self.kind == "validate")
                .then(|| rate(self.validation_failures, n))
                .flatten(),
            kind: self.kind,
            executions: n,
            succeeded: self.succeeded,
            failed: self.failed,
            success_rate: rate(self.succeeded, finished),
            failure_rate: rate(self.failed, finished),
            failures_by_class: self.failures,
            latency_ms: latency(self.latencies),
            cost_usd: usd(self.cost),
            mean_cost_usd: usd(if n > 0 { self.cost / n as f64 } else { 0.0 }),
            retry_rate: rate(self.retried, n).unwrap_or(0.0),
            fallback_rate: rate(self.fallbacks, n).unwrap_or(0.0),
            escalation_rate: if self.cascade_seen {
                rate(self.escalated, n)
            } else {
                None
            },
            answered_by: self.answered_by,
            cascade: self.saving.finish(),
        }
    }
}

#[derive(Default)]
struct WorkflowAcc {
    runs: u64,
    by_status: BTreeMap<&'static str, u64>,
    failures: BTreeMap<String, u64>,
    latencies: Vec<u64>,
    cost: f64,
    /// Step name → figures, in first-seen order.
    steps: Vec<(String, StepAcc)>,
}

impl WorkflowAcc {
    fn add(&mut self, r: &RunFacts) {
        self.runs += 1;
        let bucket = match r.status {
            RunStatus::Pending | RunStatus::Running => "running",
            other => other.as_str(),
        };
        *self.by_status.entry(bucket).or_default() += 1;
        if let Some(c) = r.error_class {
            *self.failures.entry(c.as_str().to_string()).or_default() += 1;
        }
        if r.status.is_terminal() {
            if let Some(end) = r.ended_at {
                self.latencies.push(end.saturating_sub(r.created_at));
            }
        }
        self.cost += r.cost_usd;
        for s in &r.steps {
            let i = match self.steps.iter().position(|(name, _)| *name == s.step) {
                Some(i) => i,
                None => {
                    let acc = StepAcc {
                        kind: s.kind.clone(),
                        ..StepAcc::default()
                    };
                    self.steps.push((s.step.clone(), acc));
                    self.steps.len() - 1
                }
            };
            if let Some((_, acc)) = self.steps.get_mut(i) {
                acc.add(s);
            }
        }
    }

    fn finish(self, workflow: String, all: &mut SavingAcc) -> WorkflowStats {
        let count = |k: &str| self.by_status.get(k).copied().unwrap_or(0);
        let (succeeded, failed, cancelled) =
            (count("succeeded"), count("failed"), count("cancelled"));
        let ended = succeeded + failed + cancelled;
        let mut saving = SavingAcc::default();
        for (_, s) in &self.steps {
            saving.merge(&s.saving);
        }
        all.merge(&saving);
        WorkflowStats {
            workflow,
            runs: self.runs,
            succeeded,
            failed,
            cancelled,
            waiting: count("waiting"),
            running: count("running"),
            ended,
            success_rate: rate(succeeded, ended),
            failure_rate: rate(failed, ended),
            failure_rate_by_class: self
                .failures
                .iter()
                .filter_map(|(c, n)| Some((c.clone(), rate(*n, ended)?)))
                .collect(),
            failures_by_class: self.failures,
            latency_ms: latency(self.latencies),
            cost_usd: usd(self.cost),
            mean_cost_usd: usd(if self.runs > 0 {
                self.cost / self.runs as f64
            } else {
                0.0
            }),
            cascade: saving.finish(),
            steps: self
                .steps
                .into_iter()
                .map(|(name, acc)| acc.finish(name))
                .collect(),
        }
    }
}

/// Aggregates runs into the stats document. Workflows come sorted by name; steps in the order
/// they are first met (give runs newest first, and steps follow the newest definition).
pub fn aggregate(
    window: Window,
    tenant: Option<String>,
    workflow: Option<String>,
    runs: impl IntoIterator<Item = RunFacts>,
    truncated: bool,
) -> Stats {
    let mut by_workflow: BTreeMap<String, WorkflowAcc> = BTreeMap::new();
    let (mut count, mut cost) = (0u64, 0.0f64);
    for r in runs {
        count += 1;
        cost += r.cost_usd;
        by_workflow.entry(r.workflow.clone()).or_default().add(&r);
    }
    let mut all = SavingAcc::default();
    let workflows = by_workflow
        .into_iter()
        .map(|(name, acc)| acc.finish(name, &mut all))
        .collect();
    Stats {
        window,
        tenant,
        workflow,
        runs: count,
        truncated,
        cost_usd: usd(cost),
        cascade: all.finish(),
        workflows,
    }
}

// ---- the use-case ----

impl Engine {
    /// The stats of the runs `q` selects, created from `now − since` to now: pages through the
    /// listing newest first, loads each run in the window (at most [`MAX_STATS_RUNS`]) and
    /// aggregates. Runs whose record vanished between the listing and the read are left out.
    pub async fn stats(&self, q: &StatsQuery) -> Result<Stats, EngineError> {
        let to = self.now();
        let from = to.saturating_sub(q.since.ms());
        let mut ids: Vec<String> = Vec::new();
        let mut truncated = false;
        let mut query = RunQuery::new(q.scope.clone(), MAX_LIST_LIMIT);
        query.workflow = q.workflow.clone();
        'pages: loop {
            let page = self.list_runs(&query).await?;
            for r in page.runs {
                // Newest first: the first run older than the window ends the listing.
                if r.created_at < from {
                    break 'pages;
                }
                if ids.len() == MAX_STATS_RUNS {
                    truncated = true;
                    break 'pages;
                }
                ids.push(r.run_id);
            }
            match page.cursor {
                Some(c) => query.cursor = Some(c),
                None => break,
            }
        }
        let loaded: Vec<Option<RunFacts>> = futures::stream::iter(ids)
            .map(|id| async move { self.run_facts(&id).await })
            .buffered(LOAD_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        Ok(aggregate(
            Window {
                since: q.since_text.clone(),
                from,
                to,
            },
            q.scope.tenant().map(str::to_string),
            q.workflow.clone(),
            loaded.into_iter().flatten(),
            truncated,
        ))
    }

    async fn run_facts(&self, run_id: &str) -> Result<Option<RunFacts>, EngineError> {
        let Some(snap) = self.store.load(run_id).await? else {
            return Ok(None);
        };
        let wf = self.definition(&snap.header.workflow.hash).await?;
        Ok(Some(RunFacts::from_snapshot(&wf, &snap)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use switchyard_core::state::{RunError, RunHeader, StepRecord, ValueRef, WorkflowPin};
    use switchyard_core::workflow::{compile, NoFiles};

    #[test]
    fn nearest_rank_percentiles() {
        let hundred: Vec<u64> = (1..=100).collect();
        let twenty: Vec<u64> = (1..=20).map(|i| i * 10).collect();
        // (values sorted, p, expected)
        let table: [(&[u64], u32, Option<u64>); 12] = [
            (&[], 50, None),
            (&[7], 50, Some(7)),
            (&[7], 99, Some(7)),
            (&[1, 2], 50, Some(1)),
            (&[1, 2], 51, Some(2)),
            (&[1, 2, 3, 4], 50, Some(2)),
            (&[1, 2, 3, 4], 95, Some(4)),
            (&hundred, 50, Some(50)),
            (&hundred, 95, Some(95)),
            (&hundred, 99, Some(99)),
            // rank ceil(0.95 × 20) = 19, ceil(0.99 × 20) = 20
            (&twenty, 95, Some(190)),
            (&twenty, 99, Some(200)),
        ];
        for (values, p, want) in table {
            assert_eq!(percentile(values, p), want, "p{p} of {values:?}");
        }
    }

    fn window() -> Window {
        Window {
            since: "24h".into(),
            from: 0,
            to: 100_000,
        }
    }

    fn step(name: &str, kind: &str, status: StepStatus) -> StepFacts {
        StepFacts {
            step: name.into(),
            kind: kind.into(),
            status,
            error_class: None,
            attempts: 1,
            latency_ms: 10,
            cost_usd: 0.0,
            fallback_used: false,
            repairs: 0,
            model: None,
            escalations: 0,
            baseline_usd: None,
        }
    }

    fn run(
        workflow: &str,
        status: RunStatus,
        latency: Option<u64>,
        steps: Vec<StepFacts>,
    ) -> RunFacts {
        RunFacts {
            workflow: workflow.into(),
            status,
            error_class: None,
            created_at: 1_000,
            ended_at: latency.map(|l| 1_000 + l),
            cost_usd: steps.iter().map(|s| s.cost_usd).sum(),
            steps,
        }
    }

    fn failed(mut s: StepFacts, class: ErrorClass) -> StepFacts {
        s.status = StepStatus::Failed;
        s.error_class = Some(class);
        s
    }

    #[test]
    fn run_outcomes_rates_and_latency() {
        let mut f1 = run("wf", RunStatus::Failed, Some(400), vec![]);
        f1.error_class = Some(ErrorClass::Transient);
        let mut f2 = run("wf", RunStatus::Failed, Some(300), vec![]);
        f2.error_class = Some(ErrorClass::Malformed);
        let mut f3 = run("wf", RunStatus::Failed, Some(200), vec![]);
        f3.error_class = Some(ErrorClass::Transient);
        let runs = vec![
            run("wf", RunStatus::Succeeded, Some(100), vec![]),
            run("wf", RunStatus::Succeeded, Some(50), vec![]),
            run("wf", RunStatus::Succeeded, Some(150), vec![]),
            f1,
            f2,
            f3,
            run("wf", RunStatus::Cancelled, Some(10), vec![]),
            run("wf", RunStatus::Cancelled, Some(20), vec![]),
            // Not ended: counted, not in the rates or the latency.
            run("wf", RunStatus::Waiting, None, vec![]),
            run("wf", RunStatus::Running, None, vec![]),
            run("wf", RunStatus::Pending, None, vec![]),
            run("other", RunStatus::Succeeded, Some(5), vec![]),
        ];
        let s = aggregate(window(), None, None, runs, false);
        assert_eq!(s.runs, 12);
        let names: Vec<&str> = s.workflows.iter().map(|w| w.workflow.as_str()).collect();
        assert_eq!(names, ["other", "wf"]);
        let w = &s.workflows[1];
        // (field, got, want)
        let counts = [
            ("runs", w.runs, 11),
            ("succeeded", w.succeeded, 3),
            ("failed", w.failed, 3),
            ("cancelled", w.cancelled, 2),
            ("waiting", w.waiting, 1),
            ("running", w.running, 2),
            ("ended", w.ended, 8),
        ];
        for (field, got, want) in counts {
            assert_eq!(got, want, "{field}");
        }
        assert_eq!(w.success_rate, Some(0.375));
        assert_eq!(w.failure_rate, Some(0.375));
        assert_eq!(
            w.failures_by_class,
            BTreeMap::from([("malformed".into(), 1), ("transient".into(), 2)])
        );
        assert_eq!(
            w.failure_rate_by_class,
            BTreeMap::from([("malformed".into(), 0.125), ("transient".into(), 0.25)])
        );
        // Ended latencies sorted: 10 20 50 100 150 200 300 400 → p50 rank 4, p95/p99 rank 8.
        assert_eq!(
            w.latency_ms,
            Some(Latency {
                count: 8,
                p50: 100,
                p95: 400,
                p99: 400
            })
        );
        assert!(w.steps.is_empty());
        assert_eq!(s.cascade, None);
    }

    #[test]
    fn no_ended_run_has_no_rates() {
        let s = aggregate(
            window(),
            None,
            None,
            vec![run("wf", RunStatus::Waiting, None, vec![])],
            false,
        );
        let w = &s.workflows[0];
        assert_eq!(
            (w.success_rate, w.failure_rate, w.latency_ms),
            (None, None, None)
        );
    }

    #[test]
    fn step_rates_by_definition() {
        let retried = StepFacts {
            attempts: 3,
            ..step("gen", "model", StepStatus::Succeeded)
        };
        let fell_back = StepFacts {
            attempts: 2,
            fallback_used: true,
            model: Some("local/echo".into()),
            ..step("gen", "model", StepStatus::Succeeded)
        };
        let answered = StepFacts {
            model: Some("local/gen".into()),
            cost_usd: 0.25,
            latency_ms: 30,
            ..step("gen", "model", StepStatus::Succeeded)
        };
        let repaired = StepFacts {
            repairs: 1,
            attempts: 2,
            ..step("check", "validate", StepStatus::Succeeded)
        };
        let runs = vec![
            run(
                "wf",
                RunStatus::Succeeded,
                Some(1),
                vec![retried, step("check", "validate", StepStatus::Succeeded)],
            ),
            run(
                "wf",
                RunStatus::Succeeded,
                Some(1),
                vec![fell_back, repaired],
            ),
            run(
                "wf",
                RunStatus::Failed,
                Some(1),
                vec![
                    answered,
                    failed(
                        step("check", "validate", StepStatus::Failed),
                        ErrorClass::Malformed,
                    ),
                ],
            ),
            run(
                "wf",
                RunStatus::Failed,
                Some(1),
                vec![failed(
                    step("gen", "model", StepStatus::Failed),
                    ErrorClass::Timeout,
                )],
            ),
            // Waiting for a person: an execution, not finished.
            run(
                "wf",
                RunStatus::Waiting,
                None,
                vec![step("gen", "model", StepStatus::Waiting)],
            ),
        ];
        let s = aggregate(window(), None, None, runs, false);
        let w = &s.workflows[0];
        let names: Vec<&str> = w.steps.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(names, ["gen", "check"]);
        let gen = &w.steps[0];
        let check = &w.steps[1];
        // (what, got, want)
        let table: [(&str, Option<f64>, Option<f64>); 10] = [
            ("gen success", gen.success_rate, Some(0.75)),
            ("gen failure", gen.failure_rate, Some(0.25)),
            ("gen retry", Some(gen.retry_rate), Some(0.4)),
            ("gen fallback", Some(gen.fallback_rate), Some(0.2)),
            ("gen validation", gen.validation_failure_rate, None),
            ("gen escalation", gen.escalation_rate, None),
            ("check success", check.success_rate, Some(0.6667)),
            ("check retry", Some(check.retry_rate), Some(0.3333)),
            // One repaired, one failed, of three.
            (
                "check validation",
                check.validation_failure_rate,
                Some(0.6667),
            ),
            ("check fallback", Some(check.fallback_rate), Some(0.0)),
        ];
        for (what, got, want) in table {
            assert_eq!(got, want, "{what}");
        }
        assert_eq!((gen.executions, gen.succeeded, gen.failed), (5, 3, 1));
        assert_eq!(
            gen.failures_by_class,
            BTreeMap::from([("timeout".into(), 1)])
        );
        assert_eq!(
            check.failures_by_class,
            BTreeMap::from([("malformed".into(), 1)])
        );
        assert_eq!(
            gen.answered_by,
            BTreeMap::from([("local/echo".into(), 1), ("local/gen".into(), 1)])
        );
        // Finished executions only: 10 10 30 10 → sorted 10 10 10 30.
        assert_eq!(
            gen.latency_ms,
            Some(Latency {
                count: 4,
                p50: 10,
                p95: 30,
                p99: 30
            })
        );
        assert_eq!((gen.cost_usd, gen.mean_cost_usd), (0.25, 0.05));
        assert_eq!(gen.cascade, None);
    }

    fn cascade_step(
        cost: f64,
        baseline: Option<f64>,
        escalations: usize,
        model: &str,
    ) -> StepFacts {
        StepFacts {
            cost_usd: cost,
            baseline_usd: baseline,
            escalations,
            model: Some(model.into()),
            ..step("answer", "model", StepStatus::Succeeded)
        }
    }

    #[test]
    fn cascade_escalations_answers_and_saving() {
        // (steps of one run each, escalation rate, answered_by, saving: (executions,
        //  baseline, cost, saving, pct))
        type Want = (
            Option<f64>,
            Vec<(&'static str, u64)>,
            Option<(u64, f64, f64, f64, Option<f64>)>,
        );
        let table: Vec<(Vec<StepFacts>, Want)> = vec![
            // Not a cascade: no baseline, no escalation.
            (
                vec![cascade_step(0.01, None, 0, "m/big")],
                (None, vec![("m/big", 1)], None),
            ),
            // Three cheap answers and one escalation to the top model.
            (
                vec![
                    cascade_step(0.001, Some(0.01), 0, "m/small"),
                    cascade_step(0.001, Some(0.01), 0, "m/small"),
                    cascade_step(0.001, Some(0.01), 0, "m/small"),
                    cascade_step(0.011, Some(0.01), 1, "m/big"),
                ],
                (
                    Some(0.25),
                    vec![("m/big", 1), ("m/small", 3)],
                    Some((4, 0.04, 0.014, 0.026, Some(65.0))),
                ),
            ),
            // Escalating every time costs more than the top model alone: a negative saving.
            (
                vec![
                    cascade_step(0.03, Some(0.02), 1, "m/big"),
                    cascade_step(0.03, Some(0.02), 2, "m/big"),
                ],
                (
                    Some(1.0),
                    vec![("m/big", 2)],
                    Some((2, 0.04, 0.06, -0.02, Some(-50.0))),
                ),
            ),
            // A free baseline has no percentage; an execution without a baseline is not in it.
            (
                vec![
                    cascade_step(0.0, Some(0.0), 0, "m/small"),
                    cascade_step(0.5, None, 1, "m/big"),
                ],
                (
                    Some(0.5),
                    vec![("m/big", 1), ("m/small", 1)],
                    Some((1, 0.0, 0.0, 0.0, None)),
                ),
            ),
        ];
        for (i, (steps, (esc, answered, saving))) in table.into_iter().enumerate() {
            let runs: Vec<RunFacts> = steps
                .into_iter()
                .map(|s| run("wf", RunStatus::Succeeded, Some(1), vec![s]))
                .collect();
            let s = aggregate(window(), None, None, runs, false);
            let w = &s.workflows[0];
            let st = &w.steps[0];
            assert_eq!(st.escalation_rate, esc, "case {i}");
            let answered: BTreeMap<String, u64> = answered
                .into_iter()
                .map(|(m, n)| (m.to_string(), n))
                .collect();
            assert_eq!(st.answered_by, answered, "case {i}");
            let want = saving.map(
                |(executions, baseline_usd, cost_usd, saving_usd, saving_pct)| Saving {
                    executions,
                    baseline_usd,
                    cost_usd,
                    saving_usd,
                    saving_pct,
                },
            );
            assert_eq!(st.cascade, want, "case {i}");
            // One cascade step: the workflow's and the document's totals are the step's.
            assert_eq!(w.cascade, want, "case {i}");
            assert_eq!(s.cascade, want, "case {i}");
        }
    }

    #[test]
    fn cascade_totals_add_up_over_steps_and_workflows() {
        let a = StepFacts {
            step: "a".into(),
            ..cascade_step(0.002, Some(0.01), 0, "m/small")
        };
        let b = StepFacts {
            step: "b".into(),
            ..cascade_step(0.003, Some(0.01), 1, "m/big")
        };
        let c = cascade_step(0.005, Some(0.02), 0, "m/small");
        let runs = vec![
            run("one", RunStatus::Succeeded, Some(1), vec![a, b]),
            run("two", RunStatus::Succeeded, Some(1), vec![c]),
        ];
        let s = aggregate(window(), None, None, runs, false);
        let one = s.workflows[0].cascade.clone().unwrap();
        assert_eq!(
            (
                one.executions,
                one.baseline_usd,
                one.cost_usd,
                one.saving_usd,
                one.saving_pct
            ),
            (2, 0.02, 0.005, 0.015, Some(75.0))
        );
        let all = s.cascade.unwrap();
        assert_eq!(
            (
                all.executions,
                all.baseline_usd,
                all.cost_usd,
                all.saving_usd,
                all.saving_pct
            ),
            (3, 0.04, 0.01, 0.03, Some(75.0))
        );
        assert_eq!(s.cost_usd, 0.01);
    }

    #[test]
    fn parses_the_query_and_refuses_bad_values() {
        let ok =
            StatsQuery::parse(ListScope::AllTenants, Some("support-triage"), Some("7d")).unwrap();
        assert_eq!(ok.since.ms(), 7 * 86_400_000);
        assert_eq!(ok.workflow.as_deref(), Some("support-triage"));
        let default = StatsQuery::parse(ListScope::AllTenants, None, None).unwrap();
        assert_eq!(default.since.ms(), 86_400_000);
        assert_eq!(default.since_text, "24h");
        let spaced = StatsQuery::parse(ListScope::AllTenants, None, Some(" 90m ")).unwrap();
        assert_eq!(
            (spaced.since.ms(), spaced.since_text.as_str()),
            (5_400_000, "90m")
        );
        // (workflow, since, field refused)
        let table = [
            (None, Some("0s"), "since"),
            (None, Some("soon"), "since"),
            (None, Some("-1h"), "since"),
            (None, Some("3 weeks"), "since"),
            (None, Some(""), "since"),
            (Some(""), None, "workflow"),
            (Some("a/b"), None, "workflow"),
            (Some("x".repeat(65).leak() as &str), None, "workflow"),
            (Some("with space"), None, "workflow"),
        ];
        for (workflow, since, field) in table {
            match StatsQuery::parse(ListScope::AllTenants, workflow, since) {
                Err(e @ EngineError::BadRequest { .. }) => {
                    assert_eq!(e.field(), Some(field), "{workflow:?} {since:?}")
                }
                other => panic!("{workflow:?} {since:?}: {other:?}"),
            }
        }
    }

    /// A snapshot's records become facts the way the run document reads them: skipped and
    /// unreached steps are not executions, a validate step sent back by a repair is.
    #[test]
    fn facts_from_a_snapshot() {
        let wf = compile(
            "name: wf\nversion: \"1\"\nsteps:\n  - {id: a, kind: transform, value: 1}\n  - {id: b, kind: transform, value: 2}\n  - {id: c, kind: validate, value: \"${steps.a.output}\", schema: {type: integer}}\n  - {id: d, kind: transform, value: 3}\n",
            &NoFiles,
            &[],
        )
        .unwrap();
        let header = RunHeader {
            run_id: "r".into(),
            tenant: "t".into(),
            workflow: WorkflowPin {
                name: "wf".into(),
                version: "1".into(),
                hash: "h".into(),
            },
            status: RunStatus::Failed,
            input: ValueRef::Inline {
                value: serde_json::json!({}),
            },
            output: None,
            error: Some(RunError {
                class: ErrorClass::Malformed,
                message: "m".into(),
                step: Some("c".into()),
            }),
            created_at: 100,
            updated_at: 500,
            ended_at: Some(500),
            deadline_at: None,
            wait: None,
            cancel_requested: false,
            lease: None,
            callback_url: None,
            metadata: serde_json::Value::Null,
            traceparent: None,
            version: 3,
        };
        let mut a = StepRecord::pending("a");
        a.status = StepStatus::Succeeded;
        a.attempt = 1;
        a.cost_usd = 0.5;
        a.latency_ms = 7;
        a.baseline_usd = Some(2.0);
        a.escalations = vec![switchyard_core::state::Escalation {
            from: "m/small".into(),
            to: "m/big".into(),
            reason: "r".into(),
            cost_usd: 0.1,
            at: 1,
        }];
        a.model = Some("m/big".into());
        let mut b = StepRecord::pending("b");
        b.status = StepStatus::Skipped;
        let mut c = StepRecord::pending("c");
        c.status = StepStatus::Failed;
        c.attempt = 2;
        c.repairs = 1;
        c.error = Some(switchyard_core::error::StepError::new(
            ErrorClass::Malformed,
            "bad",
        ));
        let snap = RunSnapshot {
            header,
            steps: vec![c, b, a],
        };
        let f = RunFacts::from_snapshot(&wf, &snap);
        assert_eq!(
            (
                f.workflow.as_str(),
                f.status,
                f.error_class,
                f.created_at,
                f.ended_at,
                f.cost_usd
            ),
            (
                "wf",
                RunStatus::Failed,
                Some(ErrorClass::Malformed),
                100,
                Some(500),
                0.5
            )
        );
        let names: Vec<&str> = f.steps.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        let (a, c) = (&f.steps[0], &f.steps[1]);
        assert_eq!(
            (
                a.kind.as_str(),
                a.escalations,
                a.baseline_usd,
                a.model.as_deref(),
                a.latency_ms
            ),
            ("transform", 1, Some(2.0), Some("m/big"), 7)
        );
        assert_eq!(
            (
                c.kind.as_str(),
                c.status,
                c.error_class,
                c.attempts,
                c.repairs
            ),
            (
                "validate",
                StepStatus::Failed,
                Some(ErrorClass::Malformed),
                2,
                1
            )
        );
        // And aggregated: the step saved 1.5 of 2.0.
        let s = aggregate(window(), None, None, vec![f], false);
        let a = &s.workflows[0].steps[0];
        assert_eq!(
            a.cascade.as_ref().map(|c| (c.saving_usd, c.saving_pct)),
            Some((1.5, Some(75.0)))
        );
        assert_eq!(s.workflows[0].steps[1].validation_failure_rate, Some(1.0));
    }
}
