//! worker: batches of wake-ups from the work queue, and the stuck-run sweep on a schedule.
//! Records are handled concurrently (records of one run once) and held by heartbeats while
//! they are, each run is advanced until the invocation's deadline allows no further step, and
//! only the records that must come back are reported (`ReportBatchItemFailures`).

use aws_lambda_events::event::sqs::SqsBatchResponse;
use lambda_runtime::{service_fn, LambdaEvent};
use std::sync::Arc;
use switchyard_engine::settings::WEBHOOK_SECRET;
use switchyard_lambdas::deploy::{required_setting, Function};
use switchyard_lambdas::ready::Ready;
use switchyard_lambdas::sqs::{self, WorkerEvent};
use switchyard_lambdas::{callbacks, flush_traces, init_tracing, invocation_deadline, Deployment};

async fn deployment() -> anyhow::Result<Deployment> {
    let d = Deployment::from_env_pinned(Function::Worker).await?;
    required_setting(d.secrets.as_ref(), WEBHOOK_SECRET, "without one secret shared by all instances, built-in jobs' callbacks signed here fail verification in the webhook function")?;
    Ok(d)
}

// One thread: a function has at most a few vCPUs (a fraction of one below 1,769 MB) and its
// work is waiting on AWS and providers (measured: a little less memory, the same init).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing("worker");
    // Made on first use, off the init path (`switchyard_lambdas::ready`); the HTTP client for
    // built-in jobs' callbacks on the first callback.
    let ready = Ready::new(deployment);
    let http = Arc::new(tokio::sync::OnceCell::<reqwest::Client>::new());
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<WorkerEvent>| {
        let ready = ready.clone();
        let http = http.clone();
        async move {
            let d = ready.get().await?;
            d.emf.invoked("worker");
            let batch = match ev.payload {
                WorkerEvent::Sweep(_) => {
                    let swept = d.engine.sweep().await;
                    d.emf.flush();
                    flush_traces().await;
                    swept?;
                    return Ok(SqsBatchResponse::default());
                }
                WorkerEvent::Batch(batch) => batch,
            };
            let records = sqs::records(&batch);
            let deadline = invocation_deadline(ev.context.deadline, d.engine.now());
            let report = d
                .engine
                .handle_work_batch(&records, Some(deadline), d.work.as_ref())
                .await;
            // Built-in async jobs call back through the webhook function, like a provider would.
            let due = callbacks::take(&d);
            if !due.is_empty() {
                let budget = deadline.saturating_sub(d.engine.now() + 1_000);
                let client = http
                    .get_or_try_init(|| async {
                        switchyard_providers::outbound::client_builder().build()
                    })
                    .await?;
                callbacks::send(client, due, budget).await;
            }
            d.emf.flush();
            flush_traces().await;
            Ok::<SqsBatchResponse, lambda_runtime::Error>(sqs::response(&report))
        }
    }))
    .await
}
