//! Engine tests: whole runs on the embedded backend (SQLite and files in a temp dir) with the
//! built-in `local/*` models, driven by hand with a manual clock — no test sleeps.
//!
//! One file per group: `chain` (chains and outputs), `wakeups` (duplicated, early and late
//! wake-ups), `retries` (retries and backoff), `fallback`, `budget`, `route` (route and skip),
//! `parallel`, `validate` (validate with repair), `judge` (validate with a judge), `approval`,
//! `jobs` (asynchronous jobs and webhooks), `lazy` (a pass without the run's lease), `crash` (crash recovery), `cancel`, `large_values`,
//! `intake` (input schema, idempotency), `property` (random wake-up interleavings) and
//! `faults` (faults between and after writes). Helpers shared by several groups live here or
//! in `../support/mod.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

#[path = "../support/mod.rs"]
mod support;

use async_trait::async_trait;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use support::{close, compile_with, local_price, run_class, H, REASONS, T0};
use switchyard_core::machine::retry::backoff_ms;
use switchyard_core::machine::settle;
use switchyard_core::model::{ModelInfo, ModelRequest, ModelResponse, Provider, Role};
use switchyard_core::ports::Inbox;
use switchyard_core::state::{
    EventKind, HistoryEvent, Lease, RunStatus, StepRecord, StepStatus, ValueRef, WaitReason,
    WakeReason, WakeUp,
};
use switchyard_core::workflow::StepKind;
use switchyard_core::{ErrorClass, StepError};
use switchyard_engine::webhook::CallbackResult;
use switchyard_engine::worker::Handled;
use switchyard_engine::EngineError;

// ---------------------------------------------------------------------------------------------
// Helpers

/// The `delay_ms` of every StepRetryScheduled event of a step.
pub(crate) async fn retry_delays(h: &H, run: &str, step: &str) -> Vec<u64> {
    h.step_events(run, EventKind::StepRetryScheduled, step)
        .await
        .iter()
        .map(|e| e.detail["delay_ms"].as_u64().expect("delay_ms"))
        .collect()
}

/// When each attempt of a step started.
pub(crate) async fn start_times(h: &H, run: &str, step: &str) -> Vec<u64> {
    h.step_events(run, EventKind::StepStarted, step)
        .await
        .iter()
        .map(|e| e.at)
        .collect()
}

// One module per group, each its own file; every group sees the helpers above and the
// others' (`use super::*`).
mod approval;
mod budget;
mod cancel;
mod chain;
mod crash;
mod fallback;
mod faults;
mod intake;
mod jobs;
mod judge;
mod large_values;
mod lazy;
mod parallel;
mod property;
mod retries;
mod route;
mod validate;
mod wakeups;

use approval::*;
use chain::*;
use crash::*;
use fallback::*;
use jobs::*;
use judge::*;
use lazy::answer;
use property::*;
use wakeups::*;
