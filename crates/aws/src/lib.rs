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
//! - [`environment_config`]: a Lambda function's `SdkConfig`, from its environment alone (no
//!   aws-config); [`sdk_config`] (feature `loader`, default): aws-config's provider chains,
//!   with an optional endpoint (an emulator such as moto, `infra/moto.sh`), for the CLI and
//!   the tests. Both use [`http_client`] (rustls on `ring`).
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

use aws_smithy_runtime_api::client::behavior_version::BehaviorVersion;
use aws_types::region::Region;
use aws_types::sdk_config::SdkConfig;

/// The SDK configuration of a Lambda function, from its environment alone: the region
/// (`AWS_REGION`, or `AWS_DEFAULT_REGION`), the execution role's credentials Lambda puts in
/// the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), and
/// `AWS_ENDPOINT_URL` when set (an emulator; `sam local`), and the SDK's
/// `AWS_REQUEST_CHECKSUM_CALCULATION` / `AWS_RESPONSE_CHECKSUM_VALIDATION` (S3-compatible
/// stores that refuse the default checksums; docs/deploy.md). That is all a function is given,
/// so the functions do not link aws-config's provider chains (profile files, SSO, STS,
/// instance and container metadata: issue 25, smaller packages and a shorter first
/// invocation). The HTTPS client is [`http_client`]; retries are the SDK's standard ones and
/// timeouts [`with_timeouts`]'s. `env` looks a variable up (`std::env::var` in a function);
/// an error names the variable that is missing.
pub fn environment_config(env: &dyn Fn(&str) -> Option<String>) -> Result<SdkConfig, String> {
    use aws_credential_types::provider::SharedCredentialsProvider;
    use aws_credential_types::Credentials;
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let region = var("AWS_REGION")
        .or_else(|| var("AWS_DEFAULT_REGION"))
        .ok_or(
            "AWS_REGION is not set (Lambda sets it; elsewhere set it to the deployment's region)",
        )?;
    let key = var("AWS_ACCESS_KEY_ID").ok_or(
        "AWS_ACCESS_KEY_ID is not set (Lambda sets the execution role's credentials in the environment)",
    )?;
    let secret = var("AWS_SECRET_ACCESS_KEY").ok_or(
        "AWS_SECRET_ACCESS_KEY is not set (Lambda sets the execution role's credentials in the environment)",
    )?;
    let credentials = Credentials::new(key, secret, var("AWS_SESSION_TOKEN"), None, "Environment");
    let mut b = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .http_client(http_client())
        .retry_config(aws_smithy_types::retry::RetryConfig::standard())
        .time_source(aws_smithy_async::time::SystemTimeSource::new());
    if let Some(sleep) = aws_smithy_async::rt::sleep::default_async_sleep() {
        b = b.sleep_impl(sleep);
    }
    if let Some(endpoint) = var("AWS_ENDPOINT_URL") {
        b = b.endpoint_url(endpoint);
    }
    // The SDK's own checksum settings, which aws-config would have read (docs/deploy.md).
    const WHEN: &str = "WHEN_SUPPORTED or WHEN_REQUIRED";
    let name = "AWS_REQUEST_CHECKSUM_CALCULATION";
    if let Some(c) = parsed(name, var(name), WHEN)? {
        b = b.request_checksum_calculation(c);
    }
    let name = "AWS_RESPONSE_CHECKSUM_VALIDATION";
    if let Some(c) = parsed(name, var(name), WHEN)? {
        b = b.response_checksum_validation(c);
    }
    let sdk = b
        .timeout_config(
            aws_smithy_types::timeout::TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .build(),
        )
        .build();
    Ok(with_timeouts(&sdk))
}

/// `name`'s value parsed, if it is set; the error names the variable and what it takes.
fn parsed<T: std::str::FromStr>(
    name: &str,
    value: Option<String>,
    expected: &str,
) -> Result<Option<T>, String> {
    value
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| format!("{name} `{v}`: expected {expected}"))
        })
        .transpose()
}

/// How long connecting to an AWS endpoint may take (aws-config's default, kept).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(3_100);

/// Where every SDK configuration of the CLI and the tests starts: aws-config's provider
/// chains, the latest behavior version and the HTTPS client of [`http_client`]. The SDK
/// crates are built without their default client (`default-https-client`, rustls on
/// aws-lc), so a configuration loaded any other way has no HTTP client and its first
/// request fails.
#[cfg(feature = "loader")]
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
#[cfg(feature = "loader")]
pub async fn sdk_config(region: Option<&str>, endpoint: Option<&str>) -> SdkConfig {
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
pub fn with_timeouts(sdk: &SdkConfig) -> SdkConfig {
    let mut timeouts = aws_smithy_types::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT);
    if let Some(connect) = sdk.timeout_config().and_then(|t| t.connect_timeout()) {
        timeouts = timeouts.connect_timeout(connect);
    }
    sdk.to_builder().timeout_config(timeouts.build()).build()
}

/// The configuration for an emulator at `endpoint`: fixed test credentials, `us-east-1`.
#[cfg(feature = "loader")]
pub async fn emulator_config(endpoint: &str) -> SdkConfig {
    let creds = aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "emulator");
    config_loader()
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .load()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::provider::ProvideCredentials;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    const CREDS: [(&str, &str); 3] = [
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_SESSION_TOKEN", "token"),
    ];

    /// An environment, and the region and endpoint it configures (or the variable the error
    /// names).
    type Case<'a> = (
        &'a [(&'a str, &'a str)],
        Result<(&'a str, Option<&'a str>), &'a str>,
    );

    /// What a function's environment must hold, and what each missing variable says.
    #[test]
    fn a_functions_configuration_comes_from_its_environment() {
        let table: &[Case] = &[
            (
                &[("AWS_REGION", "eu-west-1"), CREDS[0], CREDS[1], CREDS[2]],
                Ok(("eu-west-1", None)),
            ),
            (
                &[("AWS_DEFAULT_REGION", "us-west-2"), CREDS[0], CREDS[1]],
                Ok(("us-west-2", None)),
            ),
            (
                &[
                    ("AWS_REGION", "us-east-1"),
                    CREDS[0],
                    CREDS[1],
                    ("AWS_ENDPOINT_URL", "http://127.0.0.1:5055"),
                ],
                Ok(("us-east-1", Some("http://127.0.0.1:5055"))),
            ),
            (&[CREDS[0], CREDS[1]], Err("AWS_REGION")),
            (
                &[("AWS_REGION", " "), CREDS[0], CREDS[1]],
                Err("AWS_REGION"),
            ),
            (
                &[("AWS_REGION", "us-east-1"), CREDS[1]],
                Err("AWS_ACCESS_KEY_ID"),
            ),
            (
                &[("AWS_REGION", "us-east-1"), CREDS[0]],
                Err("AWS_SECRET_ACCESS_KEY"),
            ),
            (
                &[
                    ("AWS_REGION", "us-east-1"),
                    CREDS[0],
                    CREDS[1],
                    ("AWS_REQUEST_CHECKSUM_CALCULATION", "sometimes"),
                ],
                Err("AWS_REQUEST_CHECKSUM_CALCULATION"),
            ),
        ];
        for (vars, want) in table {
            let got = environment_config(&env(vars));
            match (got, want) {
                (Ok(sdk), Ok((region, endpoint))) => {
                    assert_eq!(sdk.region().map(|r| r.as_ref()), Some(*region), "{vars:?}");
                    assert_eq!(sdk.endpoint_url(), *endpoint, "{vars:?}");
                    assert!(sdk.http_client().is_some() && sdk.sleep_impl().is_some());
                    let t = sdk.timeout_config().expect("timeouts");
                    assert_eq!(t.operation_attempt_timeout(), Some(ATTEMPT_TIMEOUT));
                    assert_eq!(t.operation_timeout(), Some(OPERATION_TIMEOUT));
                    assert_eq!(t.connect_timeout(), Some(CONNECT_TIMEOUT));
                    assert_eq!(sdk.request_checksum_calculation(), None);
                }
                (Err(e), Err(var)) => assert!(e.starts_with(var), "{vars:?}: {e}"),
                (got, want) => panic!("{vars:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// The SDK's checksum settings, which aws-config would have read from the environment.
    #[test]
    fn checksum_settings_are_read_from_the_environment() {
        use aws_smithy_types::checksum_config::{
            RequestChecksumCalculation, ResponseChecksumValidation,
        };
        let sdk = environment_config(&env(&[
            ("AWS_REGION", "us-east-1"),
            CREDS[0],
            CREDS[1],
            ("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED"),
            ("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required"),
        ]))
        .expect("a configuration");
        assert_eq!(
            sdk.request_checksum_calculation(),
            Some(RequestChecksumCalculation::WhenRequired)
        );
        assert_eq!(
            sdk.response_checksum_validation(),
            Some(ResponseChecksumValidation::WhenRequired)
        );
    }

    #[tokio::test]
    async fn the_credentials_are_the_environments() {
        let sdk = environment_config(&env(&[
            ("AWS_REGION", "us-east-1"),
            CREDS[0],
            CREDS[1],
            CREDS[2],
        ]))
        .expect("a configuration");
        let creds = sdk
            .credentials_provider()
            .expect("a provider")
            .provide_credentials()
            .await
            .expect("credentials");
        assert_eq!(
            (
                creds.access_key_id(),
                creds.secret_access_key(),
                creds.session_token()
            ),
            ("AKIDEXAMPLE", "secret", Some("token"))
        );
    }
}
