//! Rerun from a step: which steps a rerun runs again and which results it reuses.
//!
//! A rerun is a **new run** linked to the old one (`RunHeader::rerun_of`, and the old run's
//! `reruns`). It reruns step `from` and every step that depends on it — through `needs`, a
//! route's gate, or a parallel step and its branches — and reuses what the old run recorded
//! for every other step that succeeded or was skipped there: the step is not called again,
//! its record is copied with `reused_from` set, and this run is charged nothing for it. This
//! is Step Functions' "redrive from failure" shaped as Temporal's reset: the old run keeps its
//! history untouched, the new one has its own.
//!
//! `from` defaults to the first step (in definition order) that failed, else the first that
//! did not finish (a cancelled run). A rerun on another version of the workflow (`--latest`)
//! is allowed only when every reused step is defined exactly as in the pinned version:
//! reusing the output of a step whose prompt, model or input changed would silently mix two
//! versions in one run.
//!
//! Everything here is pure: the engine loads the runs and definitions and writes the result.

use crate::state::{RunSnapshot, StepRecord, StepStatus};
use crate::workflow::{Step, StepKind, Workflow};
use crate::Millis;
use std::collections::BTreeSet;

/// Why a rerun is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("run {0} has not ended: wait for it, or cancel it, before rerunning it")]
    NotEnded(String),
    #[error("run {0} has no failed or unfinished step to rerun from: name one with `from`")]
    NothingToRerun(String),
    #[error("workflow `{workflow}` version `{version}` has no step `{step}`")]
    UnknownStep {
        workflow: String,
        version: String,
        step: String,
    },
    #[error(
        "step `{step}` differs between version `{old}` and `{new}`, so its recorded output cannot be \
         reused: rerun on the pinned version (without latest), or from `{step}` or an earlier step"
    )]
    Changed {
        step: String,
        old: String,
        new: String,
    },
}

/// The step a rerun starts from when none is named: the first failed step, else the first
/// that did not finish, in the definition's order.
pub fn default_from(wf: &Workflow, old: &RunSnapshot) -> Option<String> {
    let status = |s: &Step| old.step(&s.id).map(|r| r.status);
    wf.steps
        .iter()
        .find(|s| status(s) == Some(StepStatus::Failed))
        .or_else(|| {
            wf.steps
                .iter()
                .find(|s| !matches!(status(s), Some(StepStatus::Succeeded | StepStatus::Skipped)))
        })
        .map(|s| s.id.clone())
}

/// What a rerun of `old` (run on `old_wf`) from `from` on `new_wf` reuses: the ids of the
/// steps whose old records it copies, in definition order. `old_wf` and `new_wf` are the same
/// definition unless the rerun moves to another version.
pub fn plan(
    old_wf: &Workflow,
    new_wf: &Workflow,
    old: &RunSnapshot,
    from: Option<&str>,
) -> Result<(String, Vec<String>), Refusal> {
    let run_id = &old.header.run_id;
    if !old.header.status.is_terminal() {
        return Err(Refusal::NotEnded(run_id.clone()));
    }
    let from = match from {
        Some(f) => f.to_string(),
        None => default_from(old_wf, old).ok_or_else(|| Refusal::NothingToRerun(run_id.clone()))?,
    };
    for wf in [new_wf, old_wf] {
        if wf.step(&from).is_none() {
            return Err(Refusal::UnknownStep {
                workflow: wf.name.clone(),
                version: wf.version.clone(),
                step: from,
            });
        }
    }
    let rerun = downstream(new_wf, &from);
    let mut reused = Vec::new();
    for s in &new_wf.steps {
        if rerun.contains(s.id.as_str()) {
            continue;
        }
        let Some(rec) = old.step(&s.id) else { continue };
        if !matches!(rec.status, StepStatus::Succeeded | StepStatus::Skipped) {
            continue;
        }
        // Only a step defined the same way in both versions can lend its result.
        let same = old_wf.step(&s.id).is_some_and(|o| same_definition(o, s));
        if !same {
            return Err(Refusal::Changed {
                step: s.id.clone(),
                old: old_wf.version.clone(),
                new: new_wf.version.clone(),
            });
        }
        reused.push(s.id.clone());
    }
    Ok((from, reused))
}

/// `from` and every step that depends on it, directly or not.
fn downstream<'a>(wf: &'a Workflow, from: &'a str) -> BTreeSet<&'a str> {
    let mut set = BTreeSet::from([from]);
    loop {
        let before = set.len();
        for s in &wf.steps {
            if set.contains(s.id.as_str()) {
                continue;
            }
            let hit = |id: &str| set.contains(id);
            let depends = s.needs.iter().any(|n| hit(n))
                || s.gated_by.as_deref().is_some_and(hit)
                // A branch reruns with its parallel step, and the parallel step (which
                // merges its branches) with any of them.
                || s.parent.as_deref().is_some_and(hit)
                || matches!(&s.kind, StepKind::Parallel { branches } if branches.iter().any(|b| hit(b)));
            if depends {
                set.insert(s.id.as_str());
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

fn same_definition(a: &Step, b: &Step) -> bool {
    // The compiled form is what runs: equal values mean the same call.
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// The record a rerun stores for a reused step: the old result (output, route choice, model,
/// prompt version, approval) with no cost, tokens or latency of its own, marked
/// `reused_from`, not yet stored (version 0).
pub fn reused_record(old: &StepRecord, from_run: &str, now: Millis) -> StepRecord {
    let mut r = StepRecord::pending(&old.step);
    r.status = old.status;
    r.attempt = old.attempt;
    r.model_index = old.model_index;
    r.started_at = Some(now);
    r.finished_at = Some(now);
    r.output = old.output.clone();
    r.chosen = old.chosen.clone();
    r.provider = old.provider.clone();
    r.model = old.model.clone();
    r.prompt_version = old.prompt_version.clone();
    r.fallback_used = old.fallback_used;
    r.sources = old.sources.clone();
    r.approval = old.approval.clone();
    r.selected = old.selected.clone();
    r.reused_from = Some(from_run.to_string());
    r
}

#[cfg(test)]
mod tests;
