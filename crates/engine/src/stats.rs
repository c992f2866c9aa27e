//! `switchyard stats` and `GET /v1/stats` (docs/api.md#get-v1stats): per workflow and per step, over the
//! runs created in a time window — outcomes and failures by error class, latency percentiles,
//! cost and tokens, retry, fallback, validation-failure and escalation rates, judge scores,
//! and what cascades saved against always asking their top model; with `by`, the same figures
//! side by side per model or per prompt version of each step.
//!
//! # Read from aggregates, never from runs
//!
//! The figures are sums kept in hour buckets (`switchyard_core::stats`; docs/architecture.md,
//! "Stats aggregates"): a run's creation adds `started` to its tenant × workflow × hour
//! bucket (SQLite; DynamoDB saves that write and counts the runs in flight from the listing
//! below), its end adds its outcome and its steps' figures (one bucket per step × model ×
//! prompt version) in the same write that ends it (SQLite; DynamoDB right after it, or
//! after the worker's batch: approximate under faults). [`Engine::stats`] reads the buckets of the
//! window ([`StateStore::stats_buckets`])
//! and the in-flight runs' headers (the sweep's `active_runs` listing, at most
//! [`MAX_STATS_ACTIVE`]) to tell waiting runs from running ones (and, where `started` is
//! not counted, to count the runs in flight); nothing else. The cost of an
//! answer follows the window's buckets, not its runs.
//!
//! Definitions (docs/api.md, "GET /v1/stats", says the same to users):
//! - **Window**: the runs created from the start of the UTC hour `now − since` falls in, to
//!   now: buckets are whole hours, so the first hour is counted whole (`window.from` says so).
//! - **Percentiles** are read from a log-scale histogram (`switchyard_core::stats::bin_of`):
//!   the nearest-rank percentile's bin (rank `ceil(p/100 × n)` of `n` values), reported as the
//!   bin's midpoint — within 1/32 (3.125 %) of the exact nearest-rank value, exact below 32 ms.
//! - **Run outcome rates** are over the runs that have ended (succeeded, failed, cancelled);
//!   runs still pending, running or waiting are counted (`started − ended`, or the listing's
//!   runs in flight) but not in the rates. Run latency is `ended_at − created_at` of the ended runs.
//! - **A step execution** is a step that started in a run that has **ended** (a skipped or
//!   never-reached step is not one; the steps of runs in flight are added when they end). Its
//!   success rate is over the executions that finished (succeeded or failed); retry, fallback,
//!   validation-failure and escalation rates are over all its executions. Step latency is the
//!   step's `latency_ms` (the sum of its provider calls) of finished executions.
//! - **Retried**: more than one attempt, not counting one call per cascade escalation.
//!   **Validation failure**: a `validate` step that failed or requested a repair. In the `by`
//!   view a model step's validation-failure rate is over the executions a validate step
//!   checked (the validate step's `repair` target, else the first step its value names).
//! - **Judge score**: the mean of the last verdict's score of each judged execution.
//! - **Cascade figures** count only executions that carry a baseline (what the cascade's top
//!   model would have cost for the same calls): `saving_usd = baseline_usd − cost_usd`, and
//!   `saving_pct` is the saving as a percentage of the baseline.
//! - A step execution counts under the model and prompt version of its last attempt.

use crate::{Engine, EngineError};
use serde::Serialize;
use std::collections::BTreeMap;
use switchyard_core::machine::budget::round_usd as usd;
use switchyard_core::ports::{ListScope, StateStore, MAX_LIST_LIMIT};
use switchyard_core::state::RunStatus;
use switchyard_core::stats::{hour_of, names, Bucket, BucketKey, BucketQuery, Counters, Histogram};
use switchyard_core::time::Dur;
use switchyard_core::Millis;

pub use switchyard_core::stats::{RunFacts, StepFacts};

/// The window when none is given (`--since`, `since`).
pub const DEFAULT_SINCE: &str = "24h";

/// The most in-flight runs one stats answer reads to tell waiting runs from running ones,
/// and to count the runs in flight where the store does not count `started` (one page of
/// the sweep's listing). Past it the answer says `truncated: true`: some waiting runs may be
/// counted as running, and on DynamoDB the runs in flight past the page are not counted.
pub const MAX_STATS_ACTIVE: usize = MAX_LIST_LIMIT;

/// What the `by` view compares.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum By {
    /// The model of a step's last attempt.
    Model,
    /// The `prompt.version` of a model step's prompt.
    PromptVersion,
}

impl By {
    pub fn as_str(self) -> &'static str {
        match self {
            By::Model => "model",
            By::PromptVersion => "prompt_version",
        }
    }

    pub fn parse(s: &str) -> Option<By> {
        [By::Model, By::PromptVersion]
            .into_iter()
            .find(|b| b.as_str() == s)
    }
}

/// What to aggregate: whose runs, which workflow, how far back.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsQuery {
    pub scope: ListScope,
    pub workflow: Option<String>,
    /// Runs created at most this long before now (from the start of that hour).
    pub since: Dur,
    /// `since` as the caller wrote it (`24h`, `7d`), echoed in the answer's window.
    pub since_text: String,
    /// Also compare each step's models or prompt versions side by side.
    pub by: Option<By>,
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
            by: None,
        })
    }

    /// Adds the caller's `by` (`model` or `prompt_version`); anything else is a `BadRequest`
    /// naming `by`.
    pub fn with_by(mut self, by: Option<&str>) -> Result<StatsQuery, EngineError> {
        self.by = match by.map(str::trim) {
            None => None,
            Some(b) => Some(By::parse(b).ok_or_else(|| EngineError::BadRequest {
                field: Some("by".into()),
                message: "by must be `model` or `prompt_version`".into(),
            })?),
        };
        Ok(self)
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
    /// More runs were in flight than one answer reads to tell waiting from running (1000):
    /// some waiting ones may be counted as running, and where the store does not count
    /// `started` (DynamoDB) the runs in flight past those 1000 are not counted.
    pub truncated: bool,
    /// Cost of every counted run that has ended, USD.
    pub cost_usd: f64,
    /// Cascade savings over every workflow; `null` when no step execution had a baseline.
    pub cascade: Option<Saving>,
    /// By workflow name.
    pub workflows: Vec<WorkflowStats>,
    /// What `variants` compares (`model`, `prompt_version`); `null` when not asked.
    pub by: Option<By>,
    /// With `by`: each step's figures per model or prompt version, side by side (by
    /// workflow, then the steps' order, then the variant); empty otherwise.
    pub variants: Vec<VariantStats>,
}

/// The time window: runs created in `[from, to]`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    /// The duration asked for, e.g. `24h`.
    pub since: String,
    /// Milliseconds since the Unix epoch: the start of the UTC hour `to − since` falls in
    /// (figures are kept per hour, and the first hour is counted whole).
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
    /// Of the ended runs.
    pub cost_usd: f64,
    /// `cost_usd / ended` (runs in flight have no final cost yet).
    pub mean_cost_usd: f64,
    /// Tokens of the ended runs by kind (`input`, `output`).
    pub tokens: BTreeMap<String, u64>,
    /// The workflow's cascade steps together; `null` when none had a baseline.
    pub cascade: Option<Saving>,
    /// In the definition's order (the newest hour's definition).
    pub steps: Vec<StepStats>,
}

/// Latency percentiles in milliseconds, read from a log-scale histogram: the nearest-rank
/// percentile's bin midpoint, within 1/32 of the exact value (exact below 32 ms).
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
    /// Ended runs in which the step started.
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
    /// Tokens by kind (`input`, `output`).
    pub tokens: BTreeMap<String, u64>,
    /// Executions with more than one attempt / executions.
    pub retry_rate: f64,
    /// Executions answered by a fallback model / executions.
    pub fallback_rate: f64,
    /// Validate steps: executions that failed or requested a repair / executions; `null` for
    /// other kinds.
    pub validation_failure_rate: Option<f64>,
    /// Executions a judge scored.
    pub judged: u64,
    /// The mean of their scores (0–1, four places); `null` when none was judged.
    pub judge_score: Option<f64>,
    /// Executions that moved to a higher cascade tier at least once / executions; `null` for a
    /// step that never escalated and never carried a baseline (not a cascade).
    pub escalation_rate: Option<f64>,
    /// Succeeded executions by the model that gave the answer.
    pub answered_by: BTreeMap<String, u64>,
    /// What the step saved against always using the cascade's top model; `null` when no
    /// execution had a baseline.
    pub cascade: Option<Saving>,
}

/// One step's figures for one model or prompt version (`by`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantStats {
    pub workflow: String,
    pub step: String,
    pub kind: String,
    /// The model (`by=model`) or prompt version (`by=prompt_version`).
    pub variant: String,
    /// Executions of the step that ended on this variant.
    pub executions: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// `succeeded / (succeeded + failed)`.
    pub success_rate: Option<f64>,
    /// Executions a validate step checked (its own, for a validate step).
    pub validations: u64,
    /// Of those, the share that failed the check or was sent back for a repair; `null` when
    /// none was checked.
    pub validation_failure_rate: Option<f64>,
    pub judged: u64,
    /// Mean judge score; `null` when none was judged.
    pub judge_score: Option<f64>,
    pub latency_ms: Option<Latency>,
    pub tokens: BTreeMap<String, u64>,
    pub cost_usd: f64,
    pub mean_cost_usd: f64,
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

// ---- from buckets to the document ----

fn latency(h: &Histogram) -> Option<Latency> {
    Some(Latency {
        count: h.count(),
        p50: h.percentile(50)?,
        p95: h.percentile(95)?,
        p99: h.percentile(99)?,
    })
}

/// A fraction to four places.
fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| (part as f64 / whole as f64 * 1e4).round() / 1e4)
}

fn mean(sum: f64, n: u64) -> Option<f64> {
    (n > 0).then(|| (sum / n as f64 * 1e4).round() / 1e4)
}

/// The saving of counters holding `b.n`, `b.usd`, `b.cost`.
fn saving(c: &Counters) -> Option<Saving> {
    let executions = c.count(names::BASELINE_N);
    let (baseline, cost) = (c.get(names::BASELINE_USD), c.get(names::BASELINE_COST));
    (executions > 0).then(|| {
        let saving = baseline - cost;
        Saving {
            executions,
            baseline_usd: usd(baseline),
            cost_usd: usd(cost),
            saving_usd: usd(saving),
            saving_pct: (baseline > 0.0).then(|| (saving / baseline * 1e4).round() / 100.0),
        }
    })
}

/// A step's buckets together: counters summed, and the kind, place and hour of the newest.
struct StepAcc {
    kind: String,
    ord: u32,
    hour: u64,
    counters: Counters,
    answered_by: BTreeMap<String, u64>,
}

impl StepAcc {
    fn new() -> StepAcc {
        StepAcc {
            kind: String::new(),
            ord: 0,
            hour: 0,
            counters: Counters::default(),
            answered_by: BTreeMap::new(),
        }
    }

    fn add(&mut self, b: &Bucket) {
        if b.key.hour >= self.hour || self.kind.is_empty() {
            self.hour = b.key.hour;
            self.kind = b.kind.clone();
            self.ord = b.ord;
        }
        self.counters.merge(&b.counters);
        let answered = b.counters.count(names::SUCCEEDED);
        if !b.key.model.is_empty() && answered > 0 {
            *self.answered_by.entry(b.key.model.clone()).or_default() += answered;
        }
    }

    fn finish(self, step: String) -> StepStats {
        let c = &self.counters;
        let n = c.count(names::EXECUTIONS);
        let (succeeded, failed) = (c.count(names::SUCCEEDED), c.count(names::FAILED));
        let finished = succeeded + failed;
        let cost = c.get(names::COST);
        let judged = c.count(names::JUDGED);
        StepStats {
            step,
            validation_failure_rate: (self.kind == "validate")
                .then(|| rate(c.count(names::VALIDATION_FAILED), n))
                .flatten(),
            kind: self.kind.clone(),
            executions: n,
            succeeded,
            failed,
            success_rate: rate(succeeded, finished),
            failure_rate: rate(failed, finished),
            failures_by_class: c.errors(),
            latency_ms: latency(&c.latency()),
            cost_usd: usd(cost),
            mean_cost_usd: usd(if n > 0 { cost / n as f64 } else { 0.0 }),
            tokens: c.tokens(),
            retry_rate: rate(c.count(names::RETRIED), n).unwrap_or(0.0),
            fallback_rate: rate(c.count(names::FALLBACK), n).unwrap_or(0.0),
            judged,
            judge_score: mean(c.get(names::JUDGE_SCORE), judged),
            escalation_rate: if c.count(names::CASCADE) > 0 {
                rate(c.count(names::ESCALATED), n)
            } else {
                None
            },
            answered_by: self.answered_by,
            cascade: saving(c),
        }
    }
}

#[derive(Default)]
struct WorkflowAcc {
    run: Counters,
    steps: BTreeMap<String, StepAcc>,
}

impl WorkflowAcc {
    fn finish(self, workflow: String, listed: Listed, all: &mut Counters) -> WorkflowStats {
        let c = &self.run;
        let (succeeded, failed, cancelled) = (
            c.count(names::SUCCEEDED),
            c.count(names::FAILED),
            c.count(names::CANCELLED),
        );
        let ended = succeeded + failed + cancelled;
        // Runs: `started` where the store counts it at creation (SQLite: exact); else the
        // ended ones and those the listing shows in flight (DynamoDB, which saves that
        // write: exact while one page holds every run in flight). A run created before the
        // aggregates existed may end without a `started`.
        let runs = c.count(names::STARTED).max(ended + listed.in_flight);
        let in_flight = runs - ended;
        let waiting = listed.waiting.min(in_flight);
        let failures = c.errors();
        let cost = c.get(names::COST);
        let mut steps: Vec<(String, StepAcc)> = self.steps.into_iter().collect();
        steps.sort_by(|a, b| (a.1.ord, &a.0).cmp(&(b.1.ord, &b.0)));
        let mut cascade = Counters::default();
        for (_, s) in &steps {
            for name in [names::BASELINE_N, names::BASELINE_USD, names::BASELINE_COST] {
                cascade.add(name, s.counters.get(name));
            }
        }
        all.merge(&cascade);
        WorkflowStats {
            workflow,
            runs,
            succeeded,
            failed,
            cancelled,
            waiting,
            running: in_flight - waiting,
            ended,
            success_rate: rate(succeeded, ended),
            failure_rate: rate(failed, ended),
            failure_rate_by_class: failures
                .iter()
                .filter_map(|(c, n)| Some((c.clone(), rate(*n, ended)?)))
                .collect(),
            failures_by_class: failures,
            latency_ms: latency(&c.latency()),
            cost_usd: usd(cost),
            mean_cost_usd: usd(if ended > 0 { cost / ended as f64 } else { 0.0 }),
            tokens: c.tokens(),
            cascade: saving(&cascade),
            steps: steps
                .into_iter()
                .map(|(name, acc)| acc.finish(name))
                .collect(),
        }
    }
}

/// The `by` view: step buckets grouped by workflow, step and the variant (buckets without
/// one — a step with no model, or no prompt version — are left out).
fn variants(
    buckets: &[Bucket],
    by: By,
    order: &BTreeMap<(String, String), u32>,
) -> Vec<VariantStats> {
    let mut groups: BTreeMap<(String, String, String), (String, Counters)> = BTreeMap::new();
    for b in buckets.iter().filter(|b| !b.key.is_run()) {
        let variant = match by {
            By::Model => &b.key.model,
            By::PromptVersion => &b.key.prompt_version,
        };
        if variant.is_empty() {
            continue;
        }
        let g = groups
            .entry((b.key.workflow.clone(), b.key.step.clone(), variant.clone()))
            .or_insert_with(|| (b.kind.clone(), Counters::default()));
        g.1.merge(&b.counters);
    }
    let mut out: Vec<VariantStats> = groups
        .into_iter()
        .map(|((workflow, step, variant), (kind, c))| {
            let n = c.count(names::EXECUTIONS);
            let (succeeded, failed) = (c.count(names::SUCCEEDED), c.count(names::FAILED));
            let validations = c.count(names::VALIDATED);
            let judged = c.count(names::JUDGED);
            let cost = c.get(names::COST);
            VariantStats {
                workflow,
                step,
                kind,
                variant,
                executions: n,
                succeeded,
                failed,
                success_rate: rate(succeeded, succeeded + failed),
                validations,
                validation_failure_rate: rate(c.count(names::VALIDATION_FAILED), validations),
                judged,
                judge_score: mean(c.get(names::JUDGE_SCORE), judged),
                latency_ms: latency(&c.latency()),
                tokens: c.tokens(),
                cost_usd: usd(cost),
                mean_cost_usd: usd(if n > 0 { cost / n as f64 } else { 0.0 }),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        let ord = |v: &VariantStats| {
            order
                .get(&(v.workflow.clone(), v.step.clone()))
                .copied()
                .unwrap_or(u32::MAX)
        };
        (&a.workflow, ord(a), &a.step, &a.variant).cmp(&(&b.workflow, ord(b), &b.step, &b.variant))
    });
    out
}

/// What the store's buckets and the in-flight runs say, as the document.
pub struct Inputs {
    pub window: Window,
    pub tenant: Option<String>,
    pub workflow: Option<String>,
    pub buckets: Vec<Bucket>,
    /// Runs of the window that have not ended, as the sweep's listing shows them (one page),
    /// by workflow: how many, and how many of them wait.
    pub listed: BTreeMap<String, Listed>,
    pub truncated: bool,
    pub by: Option<By>,
}

/// Runs of one workflow that have not ended, from the listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Listed {
    pub in_flight: u64,
    pub waiting: u64,
}

/// The stats document from buckets. Workflows come sorted by name; steps in their
/// definition's order.
pub fn from_buckets(i: Inputs) -> Stats {
    let mut by_workflow: BTreeMap<String, WorkflowAcc> = BTreeMap::new();
    // A workflow whose runs have all been in flight since the window began has no bucket
    // where the store does not count `started` (DynamoDB): the listing names it.
    for name in i.listed.keys() {
        by_workflow.entry(name.clone()).or_default();
    }
    for b in &i.buckets {
        let acc = by_workflow.entry(b.key.workflow.clone()).or_default();
        if b.key.is_run() {
            acc.run.merge(&b.counters);
        } else {
            acc.steps
                .entry(b.key.step.clone())
                .or_insert_with(StepAcc::new)
                .add(b);
        }
    }
    let mut order = BTreeMap::new();
    for (w, acc) in &by_workflow {
        for (s, st) in &acc.steps {
            order.insert((w.clone(), s.clone()), st.ord);
        }
    }
    let mut all = Counters::default();
    let workflows: Vec<WorkflowStats> = by_workflow
        .into_iter()
        .map(|(name, acc)| {
            let listed = i.listed.get(&name).copied().unwrap_or_default();
            acc.finish(name, listed, &mut all)
        })
        .collect();
    Stats {
        window: i.window,
        tenant: i.tenant,
        workflow: i.workflow,
        runs: workflows.iter().map(|w| w.runs).sum(),
        truncated: i.truncated,
        cost_usd: usd(workflows.iter().map(|w| w.cost_usd).sum()),
        cascade: saving(&all),
        variants: i
            .by
            .map(|by| variants(&i.buckets, by, &order))
            .unwrap_or_default(),
        by: i.by,
        workflows,
    }
}

/// The document of some runs' facts, as if their buckets had been stored: each run counts as
/// started, an ended one adds its end, a waiting one counts as waiting. Tables of tests and
/// the CLI's rendering tests build documents this way.
pub fn aggregate(
    window: Window,
    tenant: Option<String>,
    workflow: Option<String>,
    runs: impl IntoIterator<Item = RunFacts>,
    truncated: bool,
) -> Stats {
    let mut buckets = Vec::new();
    let mut listed: BTreeMap<String, Listed> = BTreeMap::new();
    for r in runs {
        let mut started = Bucket {
            key: BucketKey::run(&r.tenant, &r.workflow, r.created_at),
            kind: String::new(),
            ord: 0,
            counters: Counters::default(),
        };
        started.counters.add(names::STARTED, 1.0);
        buckets.push(started);
        buckets.extend(r.buckets());
        if !r.status.is_terminal() {
            let l = listed.entry(r.workflow.clone()).or_default();
            l.in_flight += 1;
            if r.status == RunStatus::Waiting {
                l.waiting += 1;
            }
        }
    }
    from_buckets(Inputs {
        window,
        tenant,
        workflow,
        buckets: switchyard_core::stats::merge(buckets),
        listed,
        truncated,
        by: None,
    })
}

// ---- the use-case ----

/// The stats of the runs `q` selects, created from the start of the hour `now − since` falls
/// in to `now`: the window's buckets, and the in-flight runs' headers (at most
/// [`MAX_STATS_ACTIVE`]) for which of them wait. All [`Engine::stats`] reads; the benchmark
/// (`make bench-stats`) times it on each store.
pub async fn read(
    store: &dyn StateStore,
    q: &StatsQuery,
    now: Millis,
) -> Result<Stats, EngineError> {
    let to = now;
    let from = hour_of(to.saturating_sub(q.since.ms()));
    let buckets = store
        .stats_buckets(&BucketQuery {
            scope: q.scope.clone(),
            workflow: q.workflow.clone(),
            from_hour: from,
            to_hour: hour_of(to),
        })
        .await?;
    let (listed, truncated) = listed_runs(store, q, from, to).await?;
    Ok(from_buckets(Inputs {
        window: Window {
            since: q.since_text.clone(),
            from,
            to,
        },
        tenant: q.scope.tenant().map(str::to_string),
        workflow: q.workflow.clone(),
        buckets,
        listed,
        truncated,
        by: q.by,
    }))
}

/// The runs of the window in flight and those of them that wait, by workflow, from one page
/// of the runs that have not ended (the sweep's listing); `true` when there were more in
/// flight than one page.
async fn listed_runs(
    store: &dyn StateStore,
    q: &StatsQuery,
    from: Millis,
    to: Millis,
) -> Result<(BTreeMap<String, Listed>, bool), EngineError> {
    let page = store.active_runs(from, to, None, MAX_STATS_ACTIVE).await?;
    let mut listed: BTreeMap<String, Listed> = BTreeMap::new();
    for h in &page.runs {
        let mine = h.created_at >= from
            && q.scope.tenant().is_none_or(|t| t == h.tenant)
            && q.workflow.as_deref().is_none_or(|w| w == h.workflow.name);
        if mine && !h.status.is_terminal() {
            let l = listed.entry(h.workflow.name.clone()).or_default();
            l.in_flight += 1;
            if h.status == RunStatus::Waiting {
                l.waiting += 1;
            }
        }
    }
    Ok((listed, page.cursor.is_some()))
}

impl Engine {
    /// The stats of the runs `q` selects ([`read`] at the engine's clock).
    pub async fn stats(&self, q: &StatsQuery) -> Result<Stats, EngineError> {
        read(self.store.as_ref(), q, self.now()).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use switchyard_core::state::{
        RunError, RunHeader, RunSnapshot, RunStatus, StepRecord, StepStatus, ValueRef, WorkflowPin,
    };
    use switchyard_core::workflow::{compile, NoFiles};
    use switchyard_core::ErrorClass;

    fn window() -> Window {
        Window {
            since: "24h".into(),
            from: 0,
            to: 100_000,
        }
    }

    /// Table: a workflow's runs are `max(started, ended + listed in flight)`. Where the store
    /// counts no `started` (DynamoDB) the listing supplies the runs in flight, also for a
    /// workflow with no bucket at all yet; where it does (SQLite), `started` wins over a
    /// listing cut at one page.
    #[test]
    fn runs_in_flight_come_from_the_listing_where_started_is_not_counted() {
        let run_bucket = |workflow: &str, counters: &[(&str, f64)]| {
            let mut b = Bucket {
                key: BucketKey::run("t", workflow, 0),
                kind: String::new(),
                ord: 0,
                counters: Counters::default(),
            };
            for (n, v) in counters {
                b.counters.add(n, *v);
            }
            b
        };
        let listed = |in_flight, waiting| Listed { in_flight, waiting };
        let stats = from_buckets(Inputs {
            window: window(),
            tenant: Some("t".into()),
            workflow: None,
            buckets: vec![
                run_bucket(
                    "ended-and-listed",
                    &[(names::SUCCEEDED, 1.0), (names::FAILED, 1.0)],
                ),
                run_bucket(
                    "sqlite-cut-page",
                    &[(names::STARTED, 5.0), (names::SUCCEEDED, 2.0)],
                ),
            ],
            listed: BTreeMap::from([
                ("ended-and-listed".to_string(), listed(3, 1)),
                ("only-in-flight".to_string(), listed(2, 0)),
                ("sqlite-cut-page".to_string(), listed(1, 4)),
            ]),
            truncated: false,
            by: None,
        });
        let got: Vec<(&str, u64, u64, u64, u64)> = stats
            .workflows
            .iter()
            .map(|w| (w.workflow.as_str(), w.runs, w.ended, w.running, w.waiting))
            .collect();
        assert_eq!(
            got,
            [
                // (workflow, runs, ended, running, waiting)
                ("ended-and-listed", 5, 2, 2, 1),
                ("only-in-flight", 2, 0, 2, 0),
                ("sqlite-cut-page", 5, 2, 0, 3),
            ]
        );
        assert_eq!(stats.runs, 12);
    }

    fn step(name: &str, kind: &str, status: StepStatus) -> StepFacts {
        StepFacts {
            latency_ms: 10,
            ..StepFacts::bare(name, kind, status)
        }
    }

    fn run(
        workflow: &str,
        status: RunStatus,
        latency: Option<u64>,
        steps: Vec<StepFacts>,
    ) -> RunFacts {
        // Steps keep the order they are given in.
        let steps: Vec<StepFacts> = steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| StepFacts {
                ord: if s.ord == 0 { i as u32 } else { s.ord },
                ..s
            })
            .collect();
        RunFacts {
            tenant: "t".into(),
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
        // Ended latencies sorted: 10 20 50 100 150 200 300 400 → p50 rank 4 (100), p95/p99
        // rank 8 (400), read as their histogram bins' midpoints: 100 is in [100, 103], 400 in
        // [400, 415] — within 1/32 of the exact values.
        assert_eq!(
            w.latency_ms,
            Some(Latency {
                count: 8,
                p50: 101,
                p95: 407,
                p99: 407
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
            // Waiting for a person: its steps count when the run ends, not before.
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
            ("gen retry", Some(gen.retry_rate), Some(0.5)),
            ("gen fallback", Some(gen.fallback_rate), Some(0.25)),
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
        assert_eq!((gen.executions, gen.succeeded, gen.failed), (4, 3, 1));
        assert_eq!((w.waiting, w.running, w.ended), (1, 0, 4));
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
        assert_eq!((gen.cost_usd, gen.mean_cost_usd), (0.25, 0.0625));
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
            rerun_of: None,
            reruns: Vec::new(),
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
