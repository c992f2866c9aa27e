//! The workflow model.
//!
//! A workflow file (YAML) is loaded by [`compile`] into a [`Workflow`]: steps with explicit
//! dependencies, prompts/schemas/corpora inlined from their files, defaults applied, and a
//! content hash. The compiled form is what a run pins and what the planner reads; it is stored
//! with the run so a resumed run uses exactly the definition it started with.
//!
//! Step order: a step needs the step listed before it unless it says `needs:`; `needs: []`
//! starts it with the run. Route targets need their route. A step runs once all its needs have
//! ended; it is skipped when all of them were skipped (so a step after a route's branches runs
//! after whichever branch ran), or when it is a route target the route did not choose.

mod compile;
pub mod yaml;

pub use compile::{compile, valid_id as valid_name, Diagnostic, FileLoader, NoFiles};

use crate::error::ErrorClass;
use crate::model::Role;
use crate::refs::Condition;
use crate::time::Dur;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Limits on what a workflow may declare (documented in docs/workflows.md).
pub mod limits {
    /// Steps in one workflow, branches included.
    pub const MAX_STEPS: usize = 200;
    /// Attempts per model of one step.
    pub const MAX_ATTEMPTS: u32 = 20;
    /// Models one step may name: cascade tiers or `select` cases, plus fallbacks.
    pub const MAX_MODELS: usize = 10;
    /// Repairs a validate step may request.
    pub const MAX_REPAIRS: u32 = 5;
    /// Bytes of a workflow file, or of a file it includes.
    pub const MAX_FILE_BYTES: usize = 1024 * 1024;
    /// The render limits are the template engine's own (`crate::refs`), listed here with
    /// the others.
    pub use crate::refs::{MAX_RENDER_BYTES, MAX_RENDER_FUEL};
}

/// The first words of a path that a cascade's `escalate_if` may read (checked by the
/// loader; evaluated by `crate::machine::cascade`): the tier's answer and
/// its metadata, besides the run (`input`, `steps`, `run`).
pub const ESCALATION_ROOTS: &[&str] = &[
    "output",
    "usage",
    "cost_usd",
    "model",
    "schema_valid",
    "input",
    "steps",
    "run",
];

/// The first words of a path a `select` case may read.
pub const SELECT_ROOTS: &[&str] = &[
    "estimate_usd",
    "input_tokens",
    "model",
    "input",
    "steps",
    "run",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// Cost budget per run in USD; a step that would exceed it fails with `budget_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// Run-level deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Template of the run's output; without it, the output of the last step that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Keep each run's provider exchanges as a tape in the blob store (`tape: true`; off by
    /// default). Left out of the serialized definition when off, so the content hash of every
    /// workflow without it is what it was.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tape: bool,
    pub steps: Vec<Step>,
}

impl Workflow {
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// sha256 over the canonical JSON of the compiled definition.
    pub fn content_hash(&self) -> String {
        crate::sha256_hex(&serde_json::to_vec(self).unwrap_or_default())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: String,
    pub needs: Vec<String>,
    /// The route step that must choose this step for it to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gated_by: Option<String>,
    /// For a parallel branch: the parallel step it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// A failed optional step does not fail the run; its output is null.
    #[serde(default)]
    pub optional: bool,
    pub kind: StepKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepKind {
    /// A model call (also `retrieve`, which is a model call of role retrieval).
    Model(Box<ModelStep>),
    Route(RouteStep),
    /// Merges the outputs of its branches (which are steps of their own) into one object.
    Parallel {
        branches: Vec<String>,
    },
    Validate(ValidateStep),
    Transform {
        value: Value,
    },
    Approval(ApprovalStep),
}

impl Step {
    /// The model call this step makes, if it makes one: a model step's, or a validate step's
    /// judge. Retries, fallbacks, leases and deadlines follow it.
    pub fn call(&self) -> Option<&ModelStep> {
        match &self.kind {
            StepKind::Model(m) => Some(m),
            StepKind::Validate(ValidateStep { judge: Some(j), .. }) => Some(&j.call),
            _ => None,
        }
    }
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Model(m) if m.role == Role::Retrieval => "retrieve",
            StepKind::Model(_) => "model",
            StepKind::Route(_) => "route",
            StepKind::Parallel { .. } => "parallel",
            StepKind::Validate(_) => "validate",
            StepKind::Transform { .. } => "transform",
            StepKind::Approval(_) => "approval",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub version: String,
    pub template: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStep {
    /// The model, then its declared fallbacks, in order.
    pub models: Vec<String>,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Prompt>,
    /// Data for the model (with references), kept apart from the instructions.
    pub input: Value,
    #[serde(default)]
    pub params: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// Classes for which the next model of the chain is tried.
    pub fallback_on: Vec<ErrorClass>,
    pub retry: RetryPolicy,
    /// Per attempt.
    pub timeout: Dur,
    /// All attempts of the step together, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<Dur>,
    /// How long an asynchronous job may take before the wait counts as a timeout.
    pub wait_timeout: Dur,
    /// Provider job + callback instead of an answer in the call.
    pub asynchronous: bool,
    /// A cascade: `models` are its tiers, cheapest first, and an answer that meets one of
    /// its tier's conditions is passed over for the next tier's (`crate::machine::cascade`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cascade: Option<Cascade>,
    /// Model selection: the first `select.len()` entries of `models` are candidates, chosen
    /// once per step by the first `when` that holds; the rest are the fallbacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<Vec<Option<Condition>>>,
}

/// What turns a model step into a cascade (`crate::machine::cascade`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cascade {
    /// Per tier but the top one: the conditions on its answer that send the step on to the
    /// next tier (any one holding is enough; none: only an error in `fallback_on` does).
    pub escalate_if: Vec<Vec<Condition>>,
    /// Per tier: parameters laid over the step's `params` (`null`: none), since tiers are
    /// different models that want different settings (labels, examples, `max_tokens`).
    pub params: Vec<Value>,
}

impl ModelStep {
    /// The index of the model tried after `index` fails or escalates: the next tier or
    /// fallback; after any `select` candidate, the first fallback.
    pub fn next_index(&self, index: usize) -> Option<usize> {
        let next = match &self.select {
            Some(cands) if index < cands.len() => cands.len(),
            _ => index + 1,
        };
        (next < self.models.len()).then_some(next)
    }

    /// The parameters for the model at `index`: the step's, with a cascade tier's own laid
    /// over them key by key.
    pub fn params_for(&self, index: usize) -> Value {
        let tier = self
            .cascade
            .as_ref()
            .and_then(|c| c.params.get(index))
            .and_then(Value::as_object);
        match (tier, &self.params) {
            (Some(t), Value::Object(base)) => {
                let mut merged = base.clone();
                merged.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
                Value::Object(merged)
            }
            (Some(t), _) => Value::Object(t.clone()),
            (None, p) => p.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts per model, the first included.
    pub max_attempts: u32,
    pub initial_backoff: Dur,
    pub max_backoff: Dur,
    pub multiplier: f64,
    /// Full jitter: the delay is drawn in [backoff/2, backoff] (deterministically per attempt).
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Dur(200),
            max_backoff: Dur(30_000),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteCase {
    /// No condition: always taken (a catch-all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteStep {
    pub routes: Vec<RouteCase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

impl RouteStep {
    /// Every step this route may choose.
    pub fn targets(&self) -> Vec<&str> {
        let mut t: Vec<&str> = self.routes.iter().map(|r| r.to.as_str()).collect();
        if let Some(d) = &self.default {
            t.push(d);
        }
        t.sort();
        t.dedup();
        t
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidateStep {
    pub value: Value,
    /// Checked first; at least one of `schema` and `judge` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// A model asked for a verdict on values that pass the schema (`crate::machine::judge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<Judge>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<Repair>,
}

/// A validate step's judge: the call (its `input` is the step's value, its prompt the
/// criteria, its `output_schema` the verdict's) and the score a passing verdict needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judge {
    pub call: Box<ModelStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repair {
    /// The model step to re-run with the validation errors as feedback.
    pub step: String,
    pub max_attempts: u32,
    /// A cascade target moves up a tier instead of being re-asked (`crate::machine::cascade`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub escalate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    Reject,
    Approve,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalStep {
    pub deadline: Dur,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub on_timeout: OnTimeout,
}

#[cfg(test)]
mod tests;
