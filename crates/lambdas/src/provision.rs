//! Creating a deployment's resources on an emulator (moto) from Rust: the table, the two queues
//! with their dead-letter queues and redrive policies, and the bucket, under one name prefix.
//! The emulator tests and `switchyard dev --backend aws` use it; `infra/local_aws.py` does the
//! same from template.yaml's definitions for the shell. Everything here is idempotent, so a
//! second run against the same prefix finds what the first made.

use crate::deploy::{Resources, DEFAULT_MAX_RECEIVE_COUNT};
use anyhow::{Context, Result};
use switchyard_aws::sqs::create_queue_with_dlq;
use switchyard_aws::SqsQueueUrls;

/// The work queue's visibility timeout: 6 × the worker's timeout (template.yaml's default
/// `WorkerTimeout` of 180 s).
pub const WORK_VISIBILITY_SECONDS: u32 = 6 * 180;
/// The notify queue's visibility timeout: 6 × the notifier's timeout.
pub const NOTIFY_VISIBILITY_SECONDS: u32 = 6 * 30;

async fn queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_s: u32,
    max_receive_count: u32,
) -> Result<SqsQueueUrls> {
    create_queue_with_dlq(sqs, name, Some(visibility_s), max_receive_count)
        .await
        .with_context(|| format!("creating queue {name} and its DLQ"))
}

/// Creates (or finds) the resources named `<prefix>-table`, `<prefix>-work`(`-dlq`),
/// `<prefix>-notify`(`-dlq`) and bucket `<prefix>-blobs`.
pub async fn provision(sdk: &aws_types::SdkConfig, prefix: &str) -> Result<Resources> {
    let table = format!("{prefix}-table");
    let dynamo = aws_sdk_dynamodb::Client::new(sdk);
    switchyard_aws::dynamo::create_table(&dynamo, &table)
        .await
        .with_context(|| format!("creating table {table}"))?;
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let work = queue(
        &sqs,
        &format!("{prefix}-work"),
        WORK_VISIBILITY_SECONDS,
        DEFAULT_MAX_RECEIVE_COUNT,
    )
    .await?;
    let notify = queue(
        &sqs,
        &format!("{prefix}-notify"),
        NOTIFY_VISIBILITY_SECONDS,
        switchyard_engine::notifier::MAX_NOTIFY_ATTEMPTS,
    )
    .await?;
    let bucket = format!("{prefix}-blobs");
    let s3 = switchyard_aws::s3_client(sdk, true);
    if let Err(e) = s3.create_bucket().bucket(&bucket).send().await {
        let owned = e
            .as_service_error()
            .is_some_and(|s| s.is_bucket_already_owned_by_you());
        if !owned {
            return Err(anyhow::Error::new(e).context(format!("creating bucket {bucket}")));
        }
    }
    Ok(Resources {
        table,
        bucket,
        blob_prefix: "blobs/".into(),
        work,
        notify,
        secret_id: None,
        s3_path_style: true,
    })
}
