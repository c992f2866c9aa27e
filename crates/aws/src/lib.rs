//! The AWS backend of Switchyard: the core's ports on DynamoDB, SQS and S3 (see
//! `docs/aws-progress.md`). The core and the engine never depend on this crate: the
//! Lambda mains and the CLI pick it (docs/architecture.md#crates).
//!
//! Layout:
//!
//! - [`error`]: SDK errors into `StoreError`, classified once — one function per SDK
//!   (`sqs_error`, `s3_error`, `dynamo_error`) over a shared table (throttling, transport).
//! - [`dynamo`]: [`DynamoStore`], the `StateStore` on one table (layout and costs in the
//!   module docs), and [`create_table`], which makes that table.
//! - [`sqs`]: [`SqsQueues`] (the deployment's `Queue`: each message to its own queue) and
//!   [`SqsQueue`] (`Inbox` of one queue, with its DLQ): delays capped at 15 minutes,
//!   visibility, receive counts, dead letters, redrive.
//! - [`s3`]: [`S3BlobStore`], content-addressed blobs with conditional puts and presigned GETs.
//! - `metrics` (cargo feature `meter`, bench tooling only): `Meter`, an SDK interceptor
//!   counting requests per operation and the DynamoDB capacity units they are billed, from
//!   item sizes (`make bench-aws`, `make bench-stats`). Nothing deployed links it.
//! - [`secrets`]: the deployment's settings map, one Secrets Manager secret read per cold start.
//! - [`sdk_config`]: one `SdkConfig` for all clients, with an optional endpoint (an emulator
//!   such as moto, `infra/moto.sh`).
//!
//! Tests: `tests/contract.rs` (queues, blobs) and `tests/state_contract.rs` (state) run the port
//! contract suite (`switchyard-contract`) against moto at `SWITCHYARD_TEST_AWS_ENDPOINT`
//! (`make test-aws` starts and stops it).

pub mod dynamo;
pub mod error;
#[cfg(feature = "meter")]
pub mod metrics;
pub mod s3;
pub mod secrets;
pub mod sqs;

pub use dynamo::{create_table, DynamoStore};
pub use s3::{s3_client, S3BlobStore};
pub use sqs::{SqsQueue, SqsQueueUrls, SqsQueues};

use aws_config::{BehaviorVersion, Region};

/// Where every SDK configuration starts: the latest behavior version and the HTTPS client
/// of [`http_client`]. The SDK crates are built without their default client
/// (`default-https-client`, rustls on aws-lc: 3.6 MB of machine code in each Lambda
/// function, issue 25), so a configuration loaded any other way has no HTTP client and its
/// first request fails.
pub fn config_loader() -> aws_config::ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest()).http_client(http_client())
}

/// The SDK's own hyper/rustls client on the `ring` provider, with the system's roots;
/// connections are pooled per client as by the default one.
pub fn http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Loads the SDK configuration the usual way (environment, profile, instance role), with
/// `region` and `endpoint` overriding it when given (an emulator: `http://127.0.0.1:5055`).
pub async fn sdk_config(region: Option<&str>, endpoint: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = config_loader();
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_string()));
    }
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}

/// How long one AWS request may take, and one operation with the SDK's retries. The SDK sets
/// no such bound by default, so a request whose answer never comes (a half-open connection,
/// a stalled endpoint) would hold its caller — a worker and the wake-ups it heartbeats — until
/// the invocation's deadline. Bounded, it fails as `Unavailable` and is retried or re-planned
/// (docs/architecture.md, "Recovery").
pub const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// See [`ATTEMPT_TIMEOUT`]: the SDK's standard retries (3 attempts) fit in this.
pub const OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(40);

/// `sdk` with [`ATTEMPT_TIMEOUT`] and [`OPERATION_TIMEOUT`] (its connect timeout kept).
pub fn with_timeouts(sdk: &aws_config::SdkConfig) -> aws_config::SdkConfig {
    let mut timeouts = aws_config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT);
    if let Some(connect) = sdk.timeout_config().and_then(|t| t.connect_timeout()) {
        timeouts = timeouts.connect_timeout(connect);
    }
    sdk.to_builder().timeout_config(timeouts.build()).build()
}

/// The configuration for an emulator at `endpoint`: fixed test credentials, `us-east-1`.
pub async fn emulator_config(endpoint: &str) -> aws_config::SdkConfig {
    let creds = aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "emulator");
    config_loader()
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .load()
        .await
}
