//! intake: the public HTTP API (`POST /v1/runs`, `GET /v1/runs/{id}`, approvals, cancel, …)
//! behind API Gateway's HTTP API. The router is the one `switchyard dev` serves; API keys come
//! from the settings secret (`SWITCHYARD_API_KEYS`, `sha256:<hex>:tenant` entries), operator
//! keys for `/v1/ops/…` from `SWITCHYARD_OPERATOR_KEYS` there. The deployment and the router
//! are made off the init path (`switchyard_lambdas::ready`).

use anyhow::Context;
use switchyard_api::{ApiKeys, OperatorKeys, Serving};
use switchyard_engine::settings::OPERATOR_KEYS;
use switchyard_lambdas::deploy::required_setting;
use switchyard_lambdas::ready::{serve_http, Ready};
use switchyard_lambdas::{init_tracing, with_emf, Deployment};

async fn router() -> anyhow::Result<axum::Router> {
    let d = Deployment::from_env().await?;
    let spec = required_setting(
        d.secrets.as_ref(),
        "SWITCHYARD_API_KEYS",
        "no client could call the API",
    )?;
    let keys = ApiKeys::parse(&spec).context("SWITCHYARD_API_KEYS")?;
    // Operator keys are optional: without them the operator routes answer 401.
    let operators = match d.secrets.get(OPERATOR_KEYS) {
        Some(spec) => OperatorKeys::parse(&spec).context(OPERATOR_KEYS)?,
        None => OperatorKeys::default(),
    };
    let serving = Serving {
        operators: Some((operators, d.inboxes())),
        ..Serving::default()
    };
    let app = switchyard_api::app(d.engine.clone(), keys, serving);
    Ok(with_emf(app, d.emf.clone(), "intake"))
}

// One thread: a function has at most a few vCPUs (a fraction of one below 1,769 MB) and its
// work is waiting on AWS and providers (measured: a little less memory, the same init).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    init_tracing("intake");
    serve_http(Ready::new(router)).await
}
