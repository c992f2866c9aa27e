//! The Lambda functions' metrics: CloudWatch Embedded Metric Format (EMF). The engine's values
//! ([`MetricSink`]) are kept in memory during an invocation and written by [`EmfSink::flush`]
//! at its end, one JSON object per stdout line; CloudWatch Logs turns them into metrics in the
//! namespace `SWITCHYARD_METRICS_NAMESPACE` (default `Switchyard`; template.yaml sets it from its
//! `MetricsNamespace` parameter). No `PutMetricData` call, no extra latency, no client: the log
//! line is the delivery.
//!
//! One object per run and label set, so the run id rides along as a plain property
//! (searchable in Logs Insights, never a dimension). Counters are summed within the object;
//! a histogram's values are an array (at most [`MAX_VALUES`] per object, more objects if
//! needed). Each object has one directive whose dimension sets are the metric's full set and
//! its rollups (`[]`: the deployment-wide total an alarm reads). The limits the specification
//! sets — at most 100 metrics per directive, 30 keys per dimension set, 100 values per array
//! — hold by construction and are checked by `tests/emf.rs` against `docs/emf.schema.json`.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use switchyard_core::telemetry::{Kind, Metric, MetricDef, MetricSink, COLD_STARTS};

/// The namespace when `SWITCHYARD_METRICS_NAMESPACE` is not set.
pub const DEFAULT_NAMESPACE: &str = "Switchyard";

/// Values in one metric's array (the EMF limit).
pub const MAX_VALUES: usize = 100;

/// Metrics in one directive (the EMF limit).
pub const MAX_METRICS: usize = 100;

pub struct EmfSink {
    namespace: String,
    pending: Mutex<Vec<Metric>>,
    warm: AtomicBool,
}

impl EmfSink {
    pub fn new(namespace: &str) -> EmfSink {
        EmfSink {
            namespace: namespace.to_string(),
            pending: Mutex::new(Vec::new()),
            warm: AtomicBool::new(false),
        }
    }

    /// The namespace from `SWITCHYARD_METRICS_NAMESPACE`, else [`DEFAULT_NAMESPACE`].
    pub fn from_env() -> EmfSink {
        let ns = std::env::var("SWITCHYARD_METRICS_NAMESPACE")
            .ok()
            .filter(|s| !s.trim().is_empty());
        EmfSink::new(ns.as_deref().unwrap_or(DEFAULT_NAMESPACE))
    }

    /// Marks an invocation of `function`; the container's first one is its cold start.
    pub fn invoked(&self, function: &str) {
        if !self.warm.swap(true, Ordering::Relaxed) {
            self.record(&[Metric::new(&COLD_STARTS, &[function], 1.0)]);
        }
    }

    /// The pending values as EMF objects, and forgets them.
    pub fn take_lines(&self, now_ms: u64) -> Vec<String> {
        let pending = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        emf_objects(&self.namespace, &pending, now_ms)
            .into_iter()
            .map(|o| o.to_string())
            .collect()
    }

    /// Writes the pending values to stdout, one object per line (each line whole: written
    /// with one call under stdout's lock, so log lines cannot interleave inside it).
    pub fn flush(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let lines = self.take_lines(now);
        if lines.is_empty() {
            return;
        }
        let mut out = std::io::stdout().lock();
        for line in lines {
            // Metrics are best effort: a closed stdout must not fail the invocation.
            let _ = out.write_all(format!("{line}\n").as_bytes());
        }
        let _ = out.flush();
    }
}

impl MetricSink for EmfSink {
    fn record(&self, metrics: &[Metric]) {
        match self.pending.lock() {
            Ok(mut p) => p.extend_from_slice(metrics),
            Err(poisoned) => poisoned.into_inner().extend_from_slice(metrics),
        }
    }
}

/// One object's identity: the label set (names and values), the dimension sets, the run.
type Group = (
    Vec<(&'static str, String)>,
    Vec<Vec<&'static str>>,
    Option<String>,
);

/// The EMF objects for `metrics`, grouped by label set and run.
pub fn emf_objects(namespace: &str, metrics: &[Metric], now_ms: u64) -> Vec<Value> {
    let mut groups: BTreeMap<Group, BTreeMap<&'static str, (&'static MetricDef, Vec<f64>)>> =
        BTreeMap::new();
    for m in metrics {
        let labels: Vec<(&'static str, String)> =
            m.labels().map(|(k, v)| (k, v.to_string())).collect();
        let mut sets: Vec<Vec<&'static str>> = vec![m.def.dims.to_vec()];
        sets.extend(m.def.rollups.iter().map(|r| r.to_vec()));
        sets.dedup();
        let entry = groups
            .entry((labels, sets, m.run_id.clone()))
            .or_default()
            .entry(m.def.name)
            .or_insert((m.def, Vec::new()));
        match m.def.kind {
            Kind::Counter => match entry.1.first_mut() {
                Some(sum) => *sum += m.value,
                None => entry.1.push(m.value),
            },
            Kind::Histogram => entry.1.push(m.value),
        }
    }
    let mut out = Vec::new();
    for ((labels, sets, run_id), by_name) in groups {
        // Histograms with more values than one array holds continue in further objects.
        let mut round = 0;
        loop {
            let mut root = Map::new();
            let mut defs = Vec::new();
            for (name, (def, values)) in &by_name {
                let chunk: Vec<f64> = values
                    .iter()
                    .skip(round * MAX_VALUES)
                    .take(MAX_VALUES)
                    .copied()
                    .collect();
                if chunk.is_empty() {
                    continue;
                }
                let value = match (def.kind, chunk.as_slice()) {
                    (Kind::Counter, [one]) => json!(one),
                    _ => json!(chunk),
                };
                root.insert(name.to_string(), value);
                defs.push(json!({"Name": name, "Unit": def.unit.as_str()}));
            }
            if defs.is_empty() {
                break;
            }
            for chunk in defs.chunks(MAX_METRICS) {
                let mut obj = root.clone();
                for (k, v) in &labels {
                    obj.insert(k.to_string(), json!(v));
                }
                if let Some(r) = &run_id {
                    obj.insert("run_id".into(), json!(r));
                }
                obj.insert(
                    "_aws".into(),
                    json!({
                        "Timestamp": now_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": namespace,
                            "Dimensions": sets,
                            "Metrics": chunk,
                        }],
                    }),
                );
                // Values of metrics outside this chunk are not this directive's.
                let named: Vec<&str> = chunk.iter().filter_map(|d| d["Name"].as_str()).collect();
                obj.retain(|k, _| !by_name.contains_key(k.as_str()) || named.contains(&k.as_str()));
                out.push(Value::Object(obj));
            }
            round += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::telemetry::{QUEUE_LAG, RUNS_ENDED, RUN_DURATION};

    #[test]
    fn values_of_one_run_and_label_set_share_an_object() {
        let ms = [
            Metric::new(&RUNS_ENDED, &["wf", "succeeded", "none"], 1.0).for_run("r1"),
            Metric::new(&RUN_DURATION, &["wf", "succeeded"], 40.0).for_run("r1"),
            Metric::new(&RUNS_ENDED, &["wf", "succeeded", "none"], 1.0).for_run("r2"),
            Metric::new(&RUNS_ENDED, &["wf", "succeeded", "none"], 1.0).for_run("r2"),
        ];
        let objs = emf_objects("Switchyard", &ms, 1_000);
        // r1's end and duration have different label sets: two objects; r2: one, summed.
        assert_eq!(objs.len(), 3, "{objs:#?}");
        let r2 = objs.iter().find(|o| o["run_id"] == "r2").unwrap();
        assert_eq!(r2["runs_ended"], 2.0);
        assert_eq!(r2["workflow"], "wf");
        assert_eq!(
            r2["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["workflow", "outcome", "error_class"], [], ["outcome"]])
        );
        assert_eq!(r2["_aws"]["Timestamp"], 1_000);
    }

    #[test]
    fn a_histogram_past_100_values_continues_in_another_object() {
        let ms: Vec<Metric> = (0..250)
            .map(|i| Metric::new(&QUEUE_LAG, &["timer"], f64::from(i)))
            .collect();
        let objs = emf_objects("Switchyard", &ms, 1);
        let lens: Vec<usize> = objs
            .iter()
            .map(|o| o["queue_lag_ms"].as_array().unwrap().len())
            .collect();
        assert_eq!(lens, [100, 100, 50]);
    }

    #[test]
    fn the_first_invocation_is_the_cold_start() {
        let sink = EmfSink::new("Switchyard");
        sink.invoked("worker");
        sink.invoked("worker");
        let lines = sink.take_lines(5);
        assert_eq!(lines.len(), 1);
        let obj: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(obj["cold_starts"], 1.0);
        assert_eq!(obj["function"], "worker");
        assert!(sink.take_lines(6).is_empty(), "flushed values are gone");
    }
}
