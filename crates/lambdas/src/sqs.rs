//! SQS events in and batch responses out: the records Lambda's event source mapping hands a
//! function become the engine's [`Record`]s, and the engine's report becomes the
//! `batchItemFailures` answer (`ReportBatchItemFailures`), so only failed records come back.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use switchyard_engine::batch::{BatchReport, Record};

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
