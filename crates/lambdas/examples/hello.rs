//! A hello-world `lambda_runtime` function: the baseline for the worker's init and first-invoke
//! times in `make bench-aws` (tests/bench/lambda_runtime_api.py). It echoes the event.

use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(
        |ev: LambdaEvent<serde_json::Value>| async move {
            Ok::<serde_json::Value, lambda_runtime::Error>(ev.payload)
        },
    ))
    .await
}
