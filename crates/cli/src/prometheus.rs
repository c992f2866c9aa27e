//! `switchyard dev`'s metrics: the engine's [`MetricSink`] over a Prometheus registry
//! (`metrics-exporter-prometheus`, without its own listener), rendered at `GET /metrics` on
//! the same address as the API.
//!
//! Names are `switchyard_<name>` from `switchyard_core::telemetry::ALL`, with `_total` on
//! counters. Two kinds of value need a choice:
//! - Dollar amounts (`cost_usd`) are not whole numbers, and the `metrics` crate's counters
//!   are: they are rendered as a gauge that only grows (`switchyard_cost_usd`).
//! - Distributions are Prometheus histograms with fixed buckets (so they can be summed across
//!   instances and read with `histogram_quantile`): milliseconds from 10 ms to 10 min, and
//!   judge scores in tenths.
//!
//! A run id is never a label: Prometheus keeps a series per label set, forever.

use metrics::{Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use switchyard_core::telemetry::{Kind, Metric, MetricDef, MetricSink, Unit, ALL};

static META: Metadata<'static> = Metadata::new("switchyard", Level::INFO, None);

/// Bucket bounds for millisecond histograms.
pub const MS_BUCKETS: &[f64] = &[
    10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 30_000.0, 60_000.0,
    120_000.0, 300_000.0, 600_000.0,
];

/// Bucket bounds for judge scores (0–1).
pub const SCORE_BUCKETS: &[f64] = &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// The Prometheus name of a metric.
pub fn name(def: &MetricDef) -> String {
    match (def.kind, def.unit) {
        (Kind::Counter, Unit::None) => format!("switchyard_{}", def.name),
        (Kind::Counter, _) => format!("switchyard_{}_total", def.name),
        (Kind::Histogram, _) => format!("switchyard_{}", def.name),
    }
}

pub struct PrometheusSink {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl PrometheusSink {
    pub fn new() -> anyhow::Result<PrometheusSink> {
        let mut builder = PrometheusBuilder::new();
        for def in ALL.iter().filter(|d| d.kind == Kind::Histogram) {
            let buckets = match def.unit {
                Unit::Milliseconds => MS_BUCKETS,
                _ => SCORE_BUCKETS,
            };
            builder = builder.set_buckets_for_metric(Matcher::Full(name(def)), buckets)?;
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        for def in ALL {
            let (n, help) = (name(def), def.help.into());
            match (def.kind, def.unit) {
                (Kind::Counter, Unit::None) => recorder.describe_gauge(n.into(), None, help),
                (Kind::Counter, _) => recorder.describe_counter(n.into(), None, help),
                (Kind::Histogram, _) => recorder.describe_histogram(n.into(), None, help),
            }
        }
        Ok(PrometheusSink { recorder, handle })
    }

    /// The text exposition format (what `GET /metrics` answers).
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

impl MetricSink for PrometheusSink {
    fn record(&self, metrics: &[Metric]) {
        for m in metrics {
            let labels: Vec<Label> = m
                .labels()
                .map(|(k, v)| Label::new(k, v.to_string()))
                .collect();
            let key = Key::from_parts(name(m.def), labels);
            match (m.def.kind, m.def.unit) {
                (Kind::Counter, Unit::None) => {
                    self.recorder.register_gauge(&key, &META).increment(m.value)
                }
                (Kind::Counter, _) => self
                    .recorder
                    .register_counter(&key, &META)
                    .increment(m.value.max(0.0).round() as u64),
                (Kind::Histogram, _) => self
                    .recorder
                    .register_histogram(&key, &META)
                    .record(m.value),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::telemetry::{COST, RUNS_ENDED, RUN_DURATION};

    #[test]
    fn values_render_as_prometheus_series_without_the_run_id() {
        let sink = PrometheusSink::new().unwrap();
        sink.record(&[
            Metric::new(&RUNS_ENDED, &["wf", "succeeded", "none"], 1.0).for_run("run_1"),
            Metric::new(&RUNS_ENDED, &["wf", "succeeded", "none"], 1.0).for_run("run_2"),
            Metric::new(&COST, &["wf", "s", "local", "local/x"], 0.25),
            Metric::new(&COST, &["wf", "s", "local", "local/x"], 0.5),
            Metric::new(&RUN_DURATION, &["wf", "succeeded"], 40.0),
        ]);
        let text = sink.render();
        assert!(
            text.contains(
                r#"switchyard_runs_ended_total{workflow="wf",outcome="succeeded",error_class="none"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"switchyard_cost_usd{workflow="wf",step="s",provider="local",model="local/x"} 0.75"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"switchyard_run_duration_ms_bucket{workflow="wf",outcome="succeeded",le="50"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("# HELP switchyard_runs_ended_total"),
            "{text}"
        );
        assert!(!text.contains("run_1"), "a run id is never a label: {text}");
    }
}
