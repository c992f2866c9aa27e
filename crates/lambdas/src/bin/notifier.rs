//! notifier: batches of run notifications from the notify queue, delivered to each run's
//! `callback_url` signed the Standard Webhooks way, through the SSRF guard. A retry sets the
//! record's visibility to its backoff and reports it failed; past the attempt limit the queue
//! dead-letters it.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, LambdaEvent};
use std::sync::Arc;
use switchyard_lambdas::ready::Ready;
use switchyard_lambdas::{flush_traces, init_tracing, sqs, NotifierDeployment};
use switchyard_providers::outbound::CallbackClient;

// One thread: a function has at most a few vCPUs (a fraction of one below 1,769 MB) and its
// work is waiting on AWS and providers (measured: a little less memory, the same init).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing("notifier");
    // Made on first use, off the init path (`switchyard_lambdas::ready`); no engine: the
    // notifier needs the run's state and the blob store, not workflows or providers.
    let ready = Ready::new(NotifierDeployment::from_env);
    let sender = Arc::new(CallbackClient::new(Default::default()));
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<SqsEvent>| {
        let ready = ready.clone();
        let sender = sender.clone();
        async move {
            let d = ready.get().await?;
            d.emf.invoked("notifier");
            let records = sqs::records(&ev.payload);
            let report = d
                .notifier
                .handle_batch(&records, d.notify.as_ref(), sender.as_ref())
                .await;
            d.emf.flush();
            flush_traces().await;
            Ok::<SqsBatchResponse, lambda_runtime::Error>(sqs::response(&report))
        }
    }))
    .await
}
