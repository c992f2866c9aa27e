//! SQS events in and batch responses out: the records Lambda's event source mapping hands a
//! function become the engine's [`Record`]s, and the engine's report becomes the
//! `batchItemFailures` answer (`ReportBatchItemFailures`), so only failed records come back.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use serde::Deserialize;
use switchyard_engine::batch::{BatchReport, Record};

/// What invokes the worker: the work queue's event source mapping, or the EventBridge
/// schedule of the stuck-run sweep (`template.yaml`, `WorkerFunction.Events.Sweep`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum WorkerEvent {
    /// A scheduled event (`"detail-type": "Scheduled Event"`): run one sweep.
    Sweep(Scheduled),
    Batch(SqsEvent),
}

/// The fields of an EventBridge scheduled event the worker tells it apart by.
#[derive(Debug, Deserialize)]
pub struct Scheduled {
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    pub source: String,
}

/// The records of `event`. A record without a message id or receipt cannot be acked nor
/// reported, so it is left out (logged): SQS redelivers it after its visibility timeout.
pub fn records(event: &SqsEvent) -> Vec<Record> {
    event
        .records
        .iter()
        .filter_map(|m| {
            let (Some(id), Some(receipt)) = (&m.message_id, &m.receipt_handle) else {
                tracing::warn!("an SQS record without messageId or receiptHandle was skipped");
                return None;
            };
            Some(Record {
                message_id: id.clone(),
                receipt: receipt.clone(),
                body: m.body.clone().unwrap_or_default(),
                receive_count: m
                    .attributes
                    .get("ApproximateReceiveCount")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1),
            })
        })
        .collect()
}

/// The answer for `report`: its failed records, each once.
pub fn response(report: &BatchReport) -> SqsBatchResponse {
    let mut ids: Vec<&String> = report.failures.iter().collect();
    ids.sort();
    ids.dedup();
    let mut out = SqsBatchResponse::default();
    out.batch_item_failures = ids
        .into_iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id.clone();
            f
        })
        .collect();
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn event(name: &str) -> SqsEvent {
        let path = format!("{}/../../events/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    #[test]
    fn the_fixture_batch_becomes_records() {
        let recs = records(&event("worker-sqs-batch.json"));
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].receive_count, 1);
        assert!(recs[0].body.contains("\"run_id\""));
        assert_eq!(recs[1].receive_count, 2);
    }

    #[test]
    fn the_worker_tells_a_schedule_from_a_batch() {
        let read = |name: &str| -> WorkerEvent {
            let path = format!("{}/../../events/{name}", env!("CARGO_MANIFEST_DIR"));
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
        };
        match read("worker-schedule-sweep.json") {
            WorkerEvent::Sweep(s) => {
                assert_eq!(s.detail_type, "Scheduled Event");
                assert_eq!(s.source, "aws.events");
            }
            other => panic!("a schedule read as {other:?}"),
        }
        match read("worker-sqs-batch.json") {
            WorkerEvent::Batch(b) => assert_eq!(records(&b).len(), 2),
            other => panic!("a batch read as {other:?}"),
        }
    }

    #[test]
    fn failures_are_reported_once_each() {
        let report = BatchReport {
            failures: vec!["b".into(), "a".into(), "b".into()],
            ..BatchReport::default()
        };
        let json = serde_json::to_value(response(&report)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"batchItemFailures": [{"itemIdentifier": "a"}, {"itemIdentifier": "b"}]})
        );
    }
}
