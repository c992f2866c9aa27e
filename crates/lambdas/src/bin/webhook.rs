//! webhook: provider callbacks (`POST /hooks/{provider}`) on a Lambda function URL. Requests
//! are authenticated by their Standard Webhooks signature and the step's callback token, not
//! by IAM; a verified callback settles the waiting step and sends the run's wake-up. The
//! deployment is made off the init path (`switchyard_lambdas::ready`).

use switchyard_engine::settings::WEBHOOK_SECRET;
use switchyard_lambdas::deploy::{required_setting, Function};
use switchyard_lambdas::ready::{serve_http, Ready};
use switchyard_lambdas::{init_tracing, with_emf, Deployment};

async fn router() -> anyhow::Result<axum::Router> {
    let d = Deployment::from_env_pinned(Function::Webhook).await?;
    required_setting(d.secrets.as_ref(), WEBHOOK_SECRET, "without one secret shared by all instances, each makes its own and callbacks signed elsewhere fail verification")?;
    let emf = d.emf.clone();
    Ok(with_emf(
        switchyard_engine::http::hooks_router(d.engine, None),
        emf,
        "webhook",
    ))
}

// One thread: a function has at most a few vCPUs (a fraction of one below 1,769 MB) and its
// work is waiting on AWS and providers (measured: a little less memory, the same init).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    init_tracing("webhook");
    serve_http(Ready::new(router)).await
}
