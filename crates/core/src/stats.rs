//! Stats aggregates (docs/architecture.md, "Stats aggregates"): what one run adds to the
//! figures of `switchyard stats` / `GET /v1/stats`, as counters that stores only ever *add*
//! to (SQLite in the run's end transaction, DynamoDB with `UpdateItem ADD`), so reading the
//! figures of a window is reading its buckets, never its runs.
//!
//! - **Buckets** ([`BucketKey`]): per tenant × workflow × UTC hour of the run's *creation*
//!   (the document counts the runs created in a window), one *run bucket* (`step` empty) and
//!   one *step bucket* per step × model × prompt version (model and prompt version of the
//!   step's last attempt, empty when it has none), so `--by model` and `--by prompt_version`
//!   read them side by side.
//! - **When**: a run's creation adds `started` to its run bucket ([`started`]) in the
//!   creating write; its end adds everything else ([`RunFacts::buckets`], from the final state)
//!   in the write that ends it. Steps of runs that have not ended are not counted yet.
//! - **Counters** ([`Counters`]): a name → number map; the names are in [`names`]. Token sums
//!   are one counter per [`Usage::counts`] field (`t.input`, `t.output`, …), so a new `Usage`
//!   field is a new counter with no change here.
//! - **Latency** is a fixed log-scale histogram ([`bin_of`]): values below 32 ms exactly, above
//!   that 16 bins per power of two. A percentile read from it ([`Histogram::percentile`]) is
//!   the nearest-rank percentile's bin, reported as the bin's midpoint: within **1/32 (3.125 %)
//!   of the exact nearest-rank value**, exact below 32 ms.
//!
//! Everything here is pure: adapters store [`Bucket`]s, the engine reads them back and turns
//! them into the document.

use crate::error::ErrorClass;
use crate::state::ListScope;
use crate::state::{RunHeader, RunSnapshot, RunStatus, StepStatus, Usage};
use crate::time::Millis;
use crate::workflow::{StepKind, Workflow};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One bucket's width: an hour.
pub const HOUR_MS: Millis = 3_600_000;

/// The start of the UTC hour `at` falls in.
pub fn hour_of(at: Millis) -> Millis {
    at - at % HOUR_MS
}

/// The counter names. Per run bucket: `started`, the outcomes, `e.<class>`, `l.<bin>`, `usd`,
/// `t.<field>`. Per step bucket: `exec`, `succeeded`, `failed`, `e.<class>`, `l.<bin>`, `usd`,
/// `t.<field>` and the rest below.
pub mod names {
    /// Runs created (run bucket).
    pub const STARTED: &str = "started";
    pub const SUCCEEDED: &str = "succeeded";
    pub const FAILED: &str = "failed";
    /// Runs cancelled (run bucket).
    pub const CANCELLED: &str = "cancelled";
    /// Step executions (step bucket).
    pub const EXECUTIONS: &str = "exec";
    /// Failures by error class: `e.timeout`.
    pub const ERROR: &str = "e.";
    /// Latency histogram bins: `l.37`.
    pub const LATENCY: &str = "l.";
    /// Cost, USD.
    pub const COST: &str = "usd";
    /// Token sums by `Usage` field: `t.input`.
    pub const TOKENS: &str = "t.";
    /// Executions with more than one attempt (not counting cascade moves).
    pub const RETRIED: &str = "retried";
    /// Executions answered by a fallback model.
    pub const FALLBACK: &str = "fallback";
    /// Executions whose value a validate step checked (the validate step's own, and the step
    /// it checked: its `repair` target, else the first step its `value` names).
    pub const VALIDATED: &str = "vcheck";
    /// Of those, the ones that failed the check or requested a repair.
    pub const VALIDATION_FAILED: &str = "vfail";
    /// Executions that moved up a cascade tier at least once.
    pub const ESCALATED: &str = "escalated";
    /// Executions of a cascade (escalated, or carrying a baseline).
    pub const CASCADE: &str = "cascade";
    /// Executions with a baseline, its sum and their cost.
    pub const BASELINE_N: &str = "b.n";
    pub const BASELINE_USD: &str = "b.usd";
    pub const BASELINE_COST: &str = "b.cost";
    /// Judge verdicts (the last of each execution) and the sum of their scores.
    pub const JUDGED: &str = "judged";
    pub const JUDGE_SCORE: &str = "jscore";
}

/// Where a bucket's counters belong. `step` is empty for the run bucket; `model` and
/// `prompt_version` are empty when the step has none (and always in the run bucket).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BucketKey {
    pub tenant: String,
    pub workflow: String,
    /// Start of the UTC hour the run was created in (ms).
    pub hour: Millis,
    pub step: String,
    pub model: String,
    pub prompt_version: String,
}

impl BucketKey {
    /// The run bucket of a run of `tenant`'s `workflow` created at `created_at`.
    pub fn run(tenant: &str, workflow: &str, created_at: Millis) -> BucketKey {
        BucketKey {
            tenant: tenant.to_string(),
            workflow: workflow.to_string(),
            hour: hour_of(created_at),
            step: String::new(),
            model: String::new(),
            prompt_version: String::new(),
        }
    }

    pub fn is_run(&self) -> bool {
        self.step.is_empty()
    }
}

/// Counter name → value. Values only ever grow by [`Counters::add`]: what an `ADD` does.
/// Counts are whole numbers kept as `f64` (exact up to 2^53).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Counters(pub BTreeMap<String, f64>);

impl Counters {
    pub fn add(&mut self, name: &str, value: f64) {
        if value != 0.0 {
            *self.0.entry(name.to_string()).or_default() += value;
        }
    }

    pub fn inc(&mut self, name: &str, yes: bool) {
        if yes {
            self.add(name, 1.0);
        }
    }

    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }

    /// A count (a counter that only counts).
    pub fn count(&self, name: &str) -> u64 {
        self.get(name).max(0.0).round() as u64
    }

    pub fn merge(&mut self, other: &Counters) {
        for (k, v) in &other.0 {
            self.add(k, *v);
        }
    }

    /// `(rest of the name, value)` of the counters named `prefix…`.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, f64)> {
        self.0
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(move |(k, v)| (&k[prefix.len()..], *v))
    }

    /// The latency histogram kept in `l.<bin>` counters.
    pub fn latency(&self) -> Histogram {
        let mut h = Histogram::default();
        for (bin, n) in self.with_prefix(names::LATENCY) {
            if let Ok(bin) = bin.parse::<u32>() {
                *h.0.entry(bin).or_default() += n.max(0.0).round() as u64;
            }
        }
        h
    }

    /// Token sums by `Usage` field name.
    pub fn tokens(&self) -> BTreeMap<String, u64> {
        self.with_prefix(names::TOKENS)
            .map(|(k, v)| (k.to_string(), v.max(0.0).round() as u64))
            .collect()
    }

    /// Counts by error class.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.with_prefix(names::ERROR)
            .map(|(k, v)| (k.to_string(), v.max(0.0).round() as u64))
            .filter(|(_, v)| *v > 0)
            .collect()
    }

    fn add_latency(&mut self, ms: u64) {
        self.add(&format!("{}{}", names::LATENCY, bin_of(ms)), 1.0);
    }

    fn add_usage(&mut self, u: &Usage) {
        for (field, n) in u.counts() {
            self.add(&format!("{}{field}", names::TOKENS), n as f64);
        }
    }
}

/// One bucket as stored: its key, what its step is (`kind`: `model`, `validate`…, empty for
/// the run bucket; `ord`: the step's place in the definition) and its counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub key: BucketKey,
    pub kind: String,
    pub ord: u32,
    pub counters: Counters,
}

impl Bucket {
    fn new(key: BucketKey) -> Bucket {
        Bucket {
            key,
            kind: String::new(),
            ord: 0,
            counters: Counters::default(),
        }
    }
}

/// Adds buckets with the same key together (a store reading several writes, a delta of two
/// runs). `kind` and `ord` are the last one's. The order is the keys'.
pub fn merge(buckets: impl IntoIterator<Item = Bucket>) -> Vec<Bucket> {
    let mut out: BTreeMap<BucketKey, Bucket> = BTreeMap::new();
    for b in buckets {
        match out.get_mut(&b.key) {
            Some(acc) => {
                acc.counters.merge(&b.counters);
                acc.kind = b.kind;
                acc.ord = b.ord;
            }
            None => {
                out.insert(b.key.clone(), b);
            }
        }
    }
    out.into_values().collect()
}

/// What creating a run adds: `started` in its run bucket.
pub fn started(h: &RunHeader) -> Bucket {
    let mut b = Bucket::new(BucketKey::run(&h.tenant, &h.workflow.name, h.created_at));
    b.counters.add(names::STARTED, 1.0);
    b
}

/// Which buckets a stats answer reads: `scope`'s (and `workflow`'s) buckets of the hours from
/// `from_hour` to `to_hour`, both included (hour starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketQuery {
    pub scope: ListScope,
    pub workflow: Option<String>,
    pub from_hour: Millis,
    pub to_hour: Millis,
}

impl BucketQuery {
    /// Whether a bucket is one this query reads (what adapters filter by).
    pub fn matches(&self, k: &BucketKey) -> bool {
        self.scope.tenant().is_none_or(|t| t == k.tenant)
            && self.workflow.as_deref().is_none_or(|w| w == k.workflow)
            && k.hour >= self.from_hour
            && k.hour <= self.to_hour
    }
}

// ---- the latency histogram ----

/// Histogram bins of `2^SUB_BITS` per power of two.
pub const SUB_BITS: u32 = 4;
/// Values below this have a bin of their own (exact).
pub const EXACT_BELOW: u64 = 2 << SUB_BITS;

/// The bin of a latency in ms: `v` itself below 32; above, `v`'s power of two split in 16
/// equal bins (width `2^(e−4)` for `v` in `[2^e, 2^(e+1))`), so a bin is never wider than
/// 1/16 of its lower bound.
pub fn bin_of(v: u64) -> u32 {
    if v < EXACT_BELOW {
        return v as u32;
    }
    let e = 63 - v.leading_zeros();
    let shift = e - SUB_BITS;
    let sub = ((v >> shift) - (1 << SUB_BITS)) as u32;
    EXACT_BELOW as u32 + (e - SUB_BITS - 1) * (1 << SUB_BITS) + sub
}

/// The values `[lo, hi]` of a bin.
pub fn bin_range(bin: u32) -> (u64, u64) {
    let exact = EXACT_BELOW as u32;
    if bin < exact {
        return (u64::from(bin), u64::from(bin));
    }
    let per = 1u32 << SUB_BITS;
    let e = (bin - exact) / per + SUB_BITS + 1;
    let sub = u64::from((bin - exact) % per);
    let shift = e - SUB_BITS;
    let lo = (u64::from(per) + sub) << shift;
    (lo, lo + ((1u64 << shift) - 1))
}

/// What a bin reports: its midpoint, rounded down. Off from any value of the bin by at most
/// half its width, which is at most 1/32 of the value.
pub fn bin_estimate(bin: u32) -> u64 {
    let (lo, hi) = bin_range(bin);
    lo + (hi - lo) / 2
}

/// Counts by bin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram(pub BTreeMap<u32, u64>);

impl Histogram {
    pub fn record(&mut self, ms: u64) {
        *self.0.entry(bin_of(ms)).or_default() += 1;
    }

    pub fn count(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (b, n) in &other.0 {
            *self.0.entry(*b).or_default() += n;
        }
    }

    /// The `p`-th percentile (0 < p ≤ 100): the estimate of the bin holding the value of rank
    /// `ceil(p/100 × count)` (nearest rank); `None` when empty.
    pub fn percentile(&self, p: u32) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = (u64::from(p.clamp(1, 100)) * n).div_ceil(100).max(1);
        let mut seen = 0;
        for (bin, c) in &self.0 {
            seen += c;
            if seen >= rank {
                return Some(bin_estimate(*bin));
            }
        }
        None
    }
}

// ---- one run's facts ----

/// What stats needs of one run: a few numbers per step, nothing of its inputs or outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFacts {
    pub tenant: String,
    pub workflow: String,
    pub status: RunStatus,
    /// The class a failed run ended with.
    pub error_class: Option<ErrorClass>,
    pub created_at: Millis,
    pub ended_at: Option<Millis>,
    pub cost_usd: f64,
    /// In the definition's order; steps that never started are left out.
    pub steps: Vec<StepFacts>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepFacts {
    pub step: String,
    pub kind: String,
    /// The step's place in the definition.
    pub ord: u32,
    pub status: StepStatus,
    /// The class a failed step ended with.
    pub error_class: Option<ErrorClass>,
    pub attempts: u32,
    pub latency_ms: u64,
    pub cost_usd: f64,
    pub usage: Usage,
    pub fallback_used: bool,
    /// Validate steps: repairs requested.
    pub repairs: u32,
    /// The model of the last attempt (the one that answered, when the step succeeded).
    pub model: Option<String>,
    pub prompt_version: Option<String>,
    /// Moves to a higher cascade tier.
    pub escalations: usize,
    /// What the cascade's top model would have cost for the step's calls.
    pub baseline_usd: Option<f64>,
    /// Validate steps that checked this execution's value (a validate step's own check is
    /// read from its status and repairs), and how many of them failed it or asked for a
    /// repair.
    pub validations: u32,
    pub validation_failures: u32,
    /// The last judge verdicts' scores: a validate step's own, or those of the validate
    /// steps that checked this execution's value.
    pub judge_scores: Vec<f64>,
}

impl StepFacts {
    pub fn finished(&self) -> bool {
        matches!(self.status, StepStatus::Succeeded | StepStatus::Failed)
    }

    /// A step with only a name, a kind and a status, for tables of tests.
    pub fn bare(step: &str, kind: &str, status: StepStatus) -> StepFacts {
        StepFacts {
            step: step.into(),
            kind: kind.into(),
            ord: 0,
            status,
            error_class: None,
            attempts: 1,
            latency_ms: 0,
            cost_usd: 0.0,
            usage: Usage::default(),
            fallback_used: false,
            repairs: 0,
            model: None,
            prompt_version: None,
            escalations: 0,
            baseline_usd: None,
            validations: 0,
            validation_failures: 0,
            judge_scores: Vec::new(),
        }
    }
}

/// The step a validate step checks: its repair target, else the first step its value names.
fn checked_step(v: &crate::workflow::ValidateStep) -> Option<String> {
    if let Some(r) = &v.repair {
        return Some(r.step.clone());
    }
    crate::refs::refs_in(&v.value).into_iter().find_map(|r| {
        let segs = crate::refs::segments(&r).ok()?;
        (segs.first().map(String::as_str) == Some("steps"))
            .then(|| segs.get(1).cloned())
            .flatten()
    })
}

impl RunFacts {
    /// The facts of a run, from its persisted state and the definition it pinned (for the
    /// order and kind of its steps), read the way the run document reads them.
    pub fn from_snapshot(wf: &Workflow, snap: &RunSnapshot) -> RunFacts {
        let h = &snap.header;
        let mut steps: Vec<StepFacts> = wf
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let r = snap.step(&s.id)?;
                // A rerun's reused result ran (and is counted) in the run it came from.
                if r.reused_from.is_some() {
                    return None;
                }
                let started = match r.status {
                    StepStatus::Skipped => false,
                    // A validate step sent back to pending by a repair has run already.
                    StepStatus::Pending => r.attempt > 0,
                    _ => true,
                };
                started.then(|| StepFacts {
                    step: s.id.clone(),
                    kind: s.kind.name().to_string(),
                    ord: u32::try_from(i).unwrap_or(u32::MAX),
                    status: r.status,
                    error_class: if r.status == StepStatus::Failed {
                        r.error.as_ref().map(|e| e.class)
                    } else {
                        None
                    },
                    attempts: r.attempt,
                    latency_ms: r.latency_ms,
                    cost_usd: r.cost_usd,
                    usage: r.usage.unwrap_or_default(),
                    fallback_used: r.fallback_used,
                    repairs: r.repairs,
                    model: r.model.clone(),
                    prompt_version: r.prompt_version.clone(),
                    escalations: r.escalations.len(),
                    baseline_usd: r.baseline_usd,
                    validations: 0,
                    validation_failures: 0,
                    judge_scores: Vec::new(),
                })
            })
            .collect();
        // Each validate step that ran checked its own value and the step that made it.
        for s in &wf.steps {
            let StepKind::Validate(v) = &s.kind else {
                continue;
            };
            let Some(own) = steps.iter().find(|f| f.step == s.id) else {
                continue;
            };
            let failed = u32::from(own.status == StepStatus::Failed || own.repairs > 0);
            let score = snap.step(&s.id).and_then(|r| r.judge_score);
            if let Some(own) = steps.iter_mut().find(|f| f.step == s.id) {
                own.judge_scores.extend(score);
            }
            let target = checked_step(v).filter(|t| *t != s.id);
            if let Some(f) = steps.iter_mut().find(|f| Some(&f.step) == target.as_ref()) {
                f.validations += 1;
                f.validation_failures += failed;
                f.judge_scores.extend(score);
            }
        }
        steps.sort_by_key(|f| f.ord);
        RunFacts {
            tenant: h.tenant.clone(),
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

    /// What the run's end adds to its buckets: the run bucket (outcome, error class, latency,
    /// cost, tokens) and one step bucket per step that started. `started` is not among them
    /// (the run's creation added it). For a run that has not ended: nothing.
    pub fn buckets(&self) -> Vec<Bucket> {
        if !self.status.is_terminal() {
            return Vec::new();
        }
        let key = BucketKey::run(&self.tenant, &self.workflow, self.created_at);
        let mut run = Bucket::new(key.clone());
        let c = &mut run.counters;
        c.inc(names::SUCCEEDED, self.status == RunStatus::Succeeded);
        c.inc(names::FAILED, self.status == RunStatus::Failed);
        c.inc(names::CANCELLED, self.status == RunStatus::Cancelled);
        if let Some(class) = self.error_class {
            c.add(&format!("{}{}", names::ERROR, class.as_str()), 1.0);
        }
        if let Some(end) = self.ended_at {
            c.add_latency(end.saturating_sub(self.created_at));
        }
        c.add(names::COST, self.cost_usd);
        for s in &self.steps {
            c.add_usage(&s.usage);
        }
        let mut out = vec![run];
        for s in &self.steps {
            let mut b = Bucket::new(BucketKey {
                step: s.step.clone(),
                model: s.model.clone().unwrap_or_default(),
                prompt_version: s.prompt_version.clone().unwrap_or_default(),
                ..key.clone()
            });
            b.kind = s.kind.clone();
            b.ord = s.ord;
            let c = &mut b.counters;
            c.add(names::EXECUTIONS, 1.0);
            match s.status {
                StepStatus::Succeeded => c.add(names::SUCCEEDED, 1.0),
                StepStatus::Failed => {
                    c.add(names::FAILED, 1.0);
                    if let Some(class) = s.error_class {
                        c.add(&format!("{}{}", names::ERROR, class.as_str()), 1.0);
                    }
                }
                _ => {}
            }
            if s.finished() {
                c.add_latency(s.latency_ms);
            }
            c.add(names::COST, s.cost_usd);
            c.add_usage(&s.usage);
            // A cascade's move up a tier is a call on another model, not a retry.
            c.inc(names::RETRIED, s.attempts as usize > 1 + s.escalations);
            c.inc(names::FALLBACK, s.fallback_used);
            // A validate step checks itself; another step counts the checks of its value.
            let own = s.kind == "validate";
            let failed_check = own && (s.status == StepStatus::Failed || s.repairs > 0);
            c.add(names::VALIDATED, f64::from(s.validations + u32::from(own)));
            c.add(
                names::VALIDATION_FAILED,
                f64::from(s.validation_failures + u32::from(failed_check)),
            );
            c.inc(names::ESCALATED, s.escalations > 0);
            c.inc(
                names::CASCADE,
                s.escalations > 0 || s.baseline_usd.is_some(),
            );
            if let Some(base) = s.baseline_usd {
                c.add(names::BASELINE_N, 1.0);
                c.add(names::BASELINE_USD, base);
                c.add(names::BASELINE_COST, s.cost_usd);
            }
            c.add(names::JUDGED, s.judge_scores.len() as f64);
            c.add(names::JUDGE_SCORE, s.judge_scores.iter().sum());
            out.push(b);
        }
        merge(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// Every value falls in the bin whose range holds it, bins are in value order, and the
    /// estimate is within 1/32 of every value of its bin.
    #[test]
    fn bins_cover_values_in_order_within_the_bound() {
        let mut values: Vec<u64> = (0..5000).collect();
        values.extend([
            65_535,
            65_536,
            1_000_000,
            3_600_000,
            86_400_000,
            u64::MAX / 2,
            u64::MAX,
        ]);
        let mut last = 0;
        for v in values {
            let b = bin_of(v);
            let (lo, hi) = bin_range(b);
            assert!(lo <= v && v <= hi, "{v} in bin {b} = [{lo}, {hi}]");
            assert!(b >= last, "bins follow values: {v}");
            last = b;
            let est = bin_estimate(b);
            let err = est.abs_diff(v) as f64;
            assert!(err <= v as f64 / 32.0, "{v}: estimate {est}");
            if v < EXACT_BELOW {
                assert_eq!(est, v);
            }
        }
        // Contiguous: each bin starts where the previous ended.
        for b in 1..900 {
            assert_eq!(bin_range(b).0, bin_range(b - 1).1 + 1, "bin {b}");
        }
    }

    #[test]
    fn histogram_percentiles_are_the_nearest_rank_bins() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(50), None);
        for v in [10, 20, 50, 100, 150, 200, 300, 400] {
            h.record(v);
        }
        // (p, exact nearest rank, estimate)
        for (p, exact, want) in [(50, 100, 101), (95, 400, 407), (99, 400, 407), (1, 10, 10)] {
            let got = h.percentile(p).unwrap();
            assert_eq!(got, want, "p{p}");
            assert!(got.abs_diff(exact) as f64 <= exact as f64 / 32.0);
        }
    }

    #[test]
    fn counters_add_and_read_by_prefix() {
        let mut c = Counters::default();
        c.add("e.timeout", 1.0);
        c.add("e.malformed", 2.0);
        c.add("exec", 3.0);
        c.add("f", 0.0);
        let mut d = Counters::default();
        d.add("e.timeout", 1.0);
        c.merge(&d);
        assert_eq!(
            c.errors(),
            BTreeMap::from([("malformed".into(), 2), ("timeout".into(), 2)])
        );
        assert_eq!(c.count("exec"), 3);
        assert!(!c.0.contains_key("f"), "a zero is not stored");
    }
}
