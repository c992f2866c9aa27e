//! Metrics out of the engine. What each write of a run means in numbers is decided in
//! `switchyard_core::telemetry` (pure, table-tested); this module hands it to the deployment's
//! [`MetricSink`] right after the write landed, so a write that failed reports nothing and a
//! write retried after a lost answer reports once. Where the values go (EMF lines, Prometheus)
//! is the sink's business, not the engine's.

use crate::Engine;
use switchyard_core::state::{HistoryEvent, RunHeader, StepRecord};
use switchyard_core::telemetry::{self, Metric, MetricSink};
use switchyard_core::workflow::Workflow;

impl Engine {
    /// Reports to `sink` from now on (the default reports nothing).
    pub fn with_metrics(mut self, sink: std::sync::Arc<dyn MetricSink>) -> Engine {
        self.metrics = sink;
        self
    }

    /// Values that are not about one write (a webhook's verdict, a sweep's count).
    pub(crate) fn observe(&self, metrics: &[Metric]) {
        if !metrics.is_empty() {
            self.metrics.record(metrics);
        }
    }

    /// Step records just written, each with the events written with it.
    pub(crate) fn observe_steps(
        &self,
        wf: &Workflow,
        run_id: &str,
        records: &[StepRecord],
        events: &[&[HistoryEvent]],
    ) {
        for (i, rec) in records.iter().enumerate() {
            let written = events.get(i).copied().unwrap_or(&[]);
            self.observe(&telemetry::step_metrics(wf, run_id, rec, written));
        }
    }

    /// A run's end, just written.
    pub(crate) fn observe_run_end(&self, header: &RunHeader) {
        self.observe(&telemetry::run_end_metrics(header));
    }
}
