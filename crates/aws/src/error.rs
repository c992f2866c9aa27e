//! SDK errors into [`StoreError`], classified once, here: one function per SDK, each naming the
//! error codes its service uses, over one shared classification of what every SDK error shares
//! (timeouts, unreachable endpoints, HTTP 429/503, throttling codes).
//!
//! | what                                              | becomes                    |
//! |---------------------------------------------------|----------------------------|
//! | `ConditionalCheckFailedException` (DynamoDB), a cancelled transaction whose reason is a failed condition, `PreconditionFailed` / 412 (S3) | `Conflict` |
//! | `NoSuchKey`, `NotFound` / 404 (S3 objects)         | `NotFound`                 |
//! | throttling (codes below, HTTP 429, S3 `SlowDown`)   | `Unavailable`, message says "throttled" |
//! | everything else (network, timeouts, 5xx, unknown queue or bucket, bad credentials) | `Unavailable` |
//!
//! Callers never look at codes again: an adapter matches on the `StoreError` it got.

// The three SDKs re-export the same smithy types; S3's re-exports serve all of them.
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use switchyard_core::StoreError;

/// Error codes that mean "slow down" on any of the services.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "SlowDown",
    "KMS.ThrottlingException",
    "AWS.SimpleQueueService.RequestThrottled",
];

/// What an SDK error says, service-independently.
pub(crate) struct Fault<'a> {
    code: Option<&'a str>,
    message: Option<&'a str>,
    status: Option<u16>,
    /// No service answer at all (dispatch failure, timeout, unreadable response).
    transport: Option<&'static str>,
}

pub(crate) fn fault<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Fault<'_> {
    match err {
        SdkError::ServiceError(se) => Fault {
            code: se.err().code(),
            message: se.err().message(),
            status: Some(se.raw().status().as_u16()),
            transport: None,
        },
        SdkError::TimeoutError(_) => Fault::transport("timed out"),
        SdkError::DispatchFailure(_) => Fault::transport("could not reach the endpoint"),
        SdkError::ResponseError(_) => Fault::transport("unreadable response"),
        SdkError::ConstructionFailure(_) => Fault::transport("could not build the request"),
        _ => Fault::transport("unknown SDK failure"),
    }
}

impl Fault<'_> {
    fn transport(what: &'static str) -> Fault<'static> {
        Fault {
            code: None,
            message: None,
            status: None,
            transport: Some(what),
        }
    }

    fn code_is(&self, codes: &[&str]) -> bool {
        self.code.is_some_and(|c| codes.contains(&c))
    }

    fn throttled(&self) -> bool {
        self.code_is(THROTTLING_CODES) || self.status == Some(429)
    }
}

fn describe<E>(service: &str, op: &str, f: &Fault<'_>, err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match (f.transport, f.code) {
        (Some(what), _) => format!("{service} {op}: {what}: {}", DisplayErrorContext(err)),
        (None, code) => format!(
            "{service} {op}: {} (HTTP {}): {}",
            code.unwrap_or("no error code"),
            f.status.map_or_else(|| "?".to_string(), |s| s.to_string()),
            f.message.unwrap_or("no message")
        ),
    }
}

/// The classes every service shares; `None` when the service-specific table must decide.
pub(crate) fn shared<E>(
    service: &str,
    op: &str,
    f: &Fault<'_>,
    err: &SdkError<E, HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if f.throttled() {
        throttled(service, op, f, err)
    } else {
        StoreError::Unavailable(describe(service, op, f, err))
    }
}

fn throttled<E>(
    service: &str,
    op: &str,
    f: &Fault<'_>,
    err: &SdkError<E, HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    StoreError::Unavailable(format!(
        "throttled by {service} (retry with backoff, or raise the table's/queue's capacity): {}",
        describe(service, op, f, err)
    ))
}

/// An SQS error. Nothing in SQS is a `Conflict`; a stale receipt is told apart by
/// [`sqs_stale_receipt`], which the queue adapter asks first.
pub fn sqs_error<E>(op: &str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let f = fault(&err);
    shared("SQS", op, &f, &err)
}

/// Whether an SQS error says the receipt handle no longer names an in-flight message
/// (`ReceiptHandleIsInvalid`, `MessageNotInflight`, `InvalidParameterValue` about a receipt).
pub fn sqs_stale_receipt<E>(err: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata,
{
    let f = fault(err);
    f.code_is(&[
        "ReceiptHandleIsInvalid",
        "AWS.SimpleQueueService.ReceiptHandleIsInvalid",
        "MessageNotInflight",
        "AWS.SimpleQueueService.MessageNotInflight",
    ]) || (f.code_is(&["InvalidParameterValue"])
        && f.message.is_some_and(|m| m.contains("receipt handle")))
}

/// An S3 error: 412 `PreconditionFailed` is `Conflict` (a conditional put found the object
/// there), a missing object `NotFound`.
pub fn s3_error<E>(op: &str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let f = fault(&err);
    if f.code_is(&["PreconditionFailed"]) || f.status == Some(412) {
        StoreError::Conflict(describe("S3", op, &f, &err))
    } else if f.code_is(&["NoSuchKey", "NotFound"])
        || (f.status == Some(404) && !f.code_is(&["NoSuchBucket"]))
    {
        StoreError::NotFound(describe("S3", op, &f, &err))
    } else {
        shared("S3", op, &f, &err)
    }
}

/// A DynamoDB error: a failed condition — on a single write, or as the reason a transaction
/// was cancelled — is `Conflict` (the engine re-plans), and so is a transaction cancelled
/// because another write was busy with one of its items (`TransactionConflict`: re-reading is
/// the answer there too); throttling, also as a cancellation reason, is `Unavailable`.
pub fn dynamo_error<E>(op: &str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let f = fault(&err);
    // A cancelled transaction lists one reason per item in its message
    // (`[None, ConditionalCheckFailed]`); the typed reasons are read by `dynamo_failed_condition`.
    let reason = |r: &str| {
        f.code_is(&["TransactionCanceledException"]) && f.message.is_some_and(|m| m.contains(r))
    };
    if f.code_is(&["ConditionalCheckFailedException"])
        || reason("ConditionalCheckFailed")
        || reason("TransactionConflict")
    {
        StoreError::Conflict(describe("DynamoDB", op, &f, &err))
    } else if reason("ThrottlingError") || reason("ProvisionedThroughputExceeded") {
        throttled("DynamoDB", op, &f, &err)
    } else {
        shared("DynamoDB", op, &f, &err)
    }
}

/// A DynamoDB item, as the SDK hands it out.
pub type DynamoItem = std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>;

/// The DynamoDB write errors that can say "the condition failed", and with which stored item
/// (the request asks `ReturnValuesOnConditionCheckFailure = ALL_OLD`).
pub trait FailedCondition {
    /// `Some(old)` if the write failed on its condition, `old` being the item as stored (`None`:
    /// there was none); `None` for any other error.
    fn failed_condition(&self) -> Option<Option<&DynamoItem>>;
}

impl FailedCondition for aws_sdk_dynamodb::operation::put_item::PutItemError {
    fn failed_condition(&self) -> Option<Option<&DynamoItem>> {
        match self {
            Self::ConditionalCheckFailedException(e) => Some(e.item()),
            _ => None,
        }
    }
}

impl FailedCondition for aws_sdk_dynamodb::operation::update_item::UpdateItemError {
    fn failed_condition(&self) -> Option<Option<&DynamoItem>> {
        match self {
            Self::ConditionalCheckFailedException(e) => Some(e.item()),
            _ => None,
        }
    }
}

impl FailedCondition
    for aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError
{
    /// The first item whose condition failed (reasons come one per item, in request order).
    fn failed_condition(&self) -> Option<Option<&DynamoItem>> {
        match self {
            Self::TransactionCanceledException(e) => e
                .cancellation_reasons()
                .iter()
                .find(|r| r.code() == Some("ConditionalCheckFailed"))
                .map(|r| r.item()),
            _ => None,
        }
    }
}

/// Whether a DynamoDB write error is a failed condition, and the item it found (see
/// [`FailedCondition`]); the caller decides between `Conflict` and `NotFound` from it.
pub fn dynamo_failed_condition<E: FailedCondition>(
    err: &SdkError<E, HttpResponse>,
) -> Option<Option<DynamoItem>> {
    err.as_service_error()
        .and_then(FailedCondition::failed_condition)
        .map(|old| old.cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_sdk_s3::primitives::SdkBody;

    fn service(code: &str, message: &str, status: u16) -> SdkError<PutItemError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        SdkError::service_error(PutItemError::generic(meta), raw)
    }

    #[test]
    fn each_sdk_classifies_its_codes() {
        let conflict = |e| matches!(e, StoreError::Conflict(_));
        assert!(conflict(dynamo_error(
            "PutItem",
            service(
                "ConditionalCheckFailedException",
                "The conditional request failed",
                400
            )
        )));
        assert!(conflict(dynamo_error(
            "TransactWriteItems",
            service(
                "TransactionCanceledException",
                "Transaction cancelled, please refer cancellation reasons for specific reasons [ConditionalCheckFailed, None]",
                400
            )
        )));
        assert!(conflict(s3_error(
            "PutObject",
            service("PreconditionFailed", "", 412)
        )));
        assert!(matches!(
            s3_error("GetObject", service("NoSuchKey", "", 404)),
            StoreError::NotFound(_)
        ));
        assert!(matches!(
            s3_error("GetObject", service("NoSuchBucket", "", 404)),
            StoreError::Unavailable(_)
        ));
        for (code, status) in [
            ("ProvisionedThroughputExceededException", 400),
            ("ThrottlingException", 400),
            ("RequestThrottled", 403),
            ("", 429),
        ] {
            match dynamo_error("PutItem", service(code, "slow down", status)) {
                StoreError::Unavailable(m) => {
                    assert!(m.starts_with("throttled by DynamoDB"), "{m}")
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        match sqs_error(
            "SendMessage",
            service("AWS.SimpleQueueService.NonExistentQueue", "no", 400),
        ) {
            StoreError::Unavailable(m) => {
                assert!(
                    m.contains("SQS SendMessage") && !m.contains("throttled"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(sqs_stale_receipt(&service(
            "ReceiptHandleIsInvalid",
            "",
            400
        )));
        assert!(!sqs_stale_receipt(&service("AccessDenied", "", 403)));
    }
}
