//! The port contract suite on the AWS adapters, against an emulator (moto: `infra/moto.sh start`,
//! or `make test-aws`, which starts it, runs these, and stops it).
//!
//! Each test makes its own queues (work and notify, each with a DLQ and a redrive policy
//! whose `maxReceiveCount` is the fixture's) and bucket, with unique names, so tests run in
//! parallel and a rerun needs no cleanup. Without `SWITCHYARD_TEST_AWS_ENDPOINT` every test
//! fails, saying how to start the emulator: a missing emulator is not a pass.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;
use switchyard_aws::sqs::create_queue_with_dlq;
use switchyard_aws::{emulator_config, s3_client, S3BlobStore, SqsQueueUrls, SqsQueues};
use switchyard_contract::queues::QueueFixture;
use switchyard_core::ports::{BlobStore, Inbox, Queue, QueueName};

const MAX_RECEIVE_COUNT: u32 = 3;

fn endpoint() -> String {
    switchyard_contract::emulator_endpoint()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn make_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> SqsQueueUrls {
    create_queue_with_dlq(sqs, name, None, MAX_RECEIVE_COUNT)
        .await
        .unwrap()
}

async fn queues() -> (SqsQueues, aws_sdk_sqs::Client) {
    let config = emulator_config(&endpoint()).await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let base = unique("sy");
    let work = make_queue(&sqs, &format!("{base}-work")).await;
    let notify = make_queue(&sqs, &format!("{base}-notify")).await;
    (SqsQueues::new(sqs.clone(), work, notify), sqs)
}

async fn queue_fixture() -> ((), QueueFixture) {
    let (all, _) = queues().await;
    let fixture = QueueFixture {
        sender: Arc::new(all.clone()),
        work: Arc::new(all.queue(QueueName::Work)),
        notify: Arc::new(all.queue(QueueName::Notify)),
        max_receive_count: MAX_RECEIVE_COUNT,
        // Real time passes on the emulator.
        elapse: Box::new(|ms| Box::pin(tokio::time::sleep(Duration::from_millis(ms)))),
    };
    ((), fixture)
}

async fn blob_store() -> ((), Arc<dyn BlobStore>) {
    let config = emulator_config(&endpoint()).await;
    let client = s3_client(&config, true);
    let bucket = unique("sy-blobs");
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    (
        (),
        Arc::new(S3BlobStore::new(client, bucket).with_prefix("blobs")),
    )
}

mod queue {
    use super::*;
    switchyard_contract::queue_contract!(queue_fixture().await);
}

mod blobs {
    use super::*;
    switchyard_contract::blob_store_contract!(blob_store().await);
}

/// A body that is no message of the queue is dead-lettered with its reason, not returned.
#[tokio::test]
async fn unreadable_body_is_dead_lettered_not_returned() {
    let (all, sqs) = queues().await;
    let work = all.queue(QueueName::Work);
    all.send(&switchyard_contract::queues::wake("good"), 0)
        .await
        .unwrap();
    let url = all.urls(QueueName::Work).url.clone();
    sqs.send_message()
        .queue_url(url)
        .message_body("not json")
        .send()
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.extend(work.receive(10, 30_000).await.unwrap());
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message.run_id(), "good");
    let dead = work.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].body, "not json");
    assert!(
        dead[0].reason.starts_with("unreadable body"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].receive_count, 1);
    // Listing is a look, not a take.
    assert_eq!(work.dead_letters().await.unwrap().len(), 1);
    assert!(all
        .queue(QueueName::Notify)
        .dead_letters()
        .await
        .unwrap()
        .is_empty());
}

/// Stale receipts answer `false`; next_visible_at is unknown on SQS.
#[tokio::test]
async fn sqs_specifics() {
    let (all, _) = queues().await;
    let work = all.queue(QueueName::Work);
    assert_eq!(work.next_visible_at().await.unwrap(), None);
    assert!(!work.change_visibility("not-a-receipt", 0).await.unwrap());
}

/// A delay past SQS's 15 minutes is sent capped (SQS would refuse `DelaySeconds` > 900).
#[tokio::test]
async fn long_delays_are_capped_not_refused() {
    let (all, _) = queues().await;
    all.send(&switchyard_contract::queues::wake("later"), 3_600_000)
        .await
        .unwrap();
    assert!(all
        .queue(QueueName::Work)
        .receive(10, 30_000)
        .await
        .unwrap()
        .is_empty());
}

/// The conditional put is real: S3 refuses to overwrite (412, classified `Conflict`), which
/// the blob store's put takes as "stored already".
#[tokio::test]
async fn second_put_is_refused_by_the_precondition() {
    let config = emulator_config(&endpoint()).await;
    let client = s3_client(&config, true);
    let bucket = unique("sy-blobs");
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    let store = S3BlobStore::new(client.clone(), &bucket);
    let key = store.put(b"once", "text/plain").await.unwrap();
    let again = client
        .put_object()
        .bucket(&bucket)
        .key(&key)
        .if_none_match("*")
        .body(b"twice".to_vec().into())
        .send()
        .await
        .map_err(|e| switchyard_aws::error::s3_error("PutObject", e));
    assert!(
        matches!(again, Err(switchyard_core::StoreError::Conflict(_))),
        "{again:?}"
    );
    assert_eq!(store.put(b"once", "text/plain").await.unwrap(), key);
    assert_eq!(store.get(&key).await.unwrap(), b"once");
    let url = store.presign(&key, 60_000).await.unwrap();
    assert!(
        url.contains(&bucket) && url.contains("X-Amz-Signature"),
        "{url}"
    );
}

/// An unreachable endpoint is `Unavailable`, naming the service and the operation.
#[tokio::test]
async fn unreachable_endpoint_is_unavailable() {
    let config = emulator_config("http://127.0.0.1:9").await;
    let store = S3BlobStore::new(s3_client(&config, true), "nowhere");
    match store.put(b"x", "text/plain").await {
        Err(switchyard_core::StoreError::Unavailable(m)) => {
            assert!(m.contains("S3 PutObject"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

/// A presigned upload is a PUT any HTTP client can send with the headers it names (the
/// signature covers type, length and checksum); a run then adopts it from `uploads/`.
#[tokio::test]
async fn presigned_upload_put_then_adopt() {
    use switchyard_core::upload::Declared;
    let config = emulator_config(&endpoint()).await;
    let client = s3_client(&config, true);
    let bucket = unique("sy-blobs");
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    let store = S3BlobStore::new(client.clone(), &bucket).with_prefix("blobs");
    let bytes = vec![b'x'; 300 * 1024];
    let declared = Declared {
        sha256: switchyard_core::sha256_hex(&bytes),
        bytes: bytes.len() as u64,
        content_type: "text/plain; charset=utf-8".into(),
    };
    let put = store
        .presign_upload("acme", &declared, 60_000)
        .await
        .unwrap();
    assert!(put.url.contains("X-Amz-Signature"), "{}", put.url);
    assert!(
        put.url
            .contains(&format!("uploads/acme/{}", declared.sha256)),
        "{}",
        put.url
    );
    let names: Vec<&str> = put.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert!(names.contains(&"content-type"), "{names:?}");
    assert!(names.contains(&"x-amz-checksum-sha256"), "{names:?}");
    let http = reqwest::Client::new();
    let mut req = http.put(&put.url).body(bytes.clone());
    for (k, v) in &put.headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    assert!(matches!(
        store.adopt_upload("globex", &declared.sha256).await,
        Err(switchyard_core::StoreError::NotFound(_))
    ));
    assert_eq!(
        store.adopt_upload("acme", &declared.sha256).await.unwrap(),
        declared
    );
    assert_eq!(store.get(&declared.sha256).await.unwrap(), bytes);
    let head = client
        .head_object()
        .bucket(&bucket)
        .key(format!("blobs/{}", declared.sha256))
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("text/plain; charset=utf-8"));
}
