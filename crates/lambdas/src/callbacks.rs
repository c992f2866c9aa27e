//! The built-in asynchronous model (`local/async-job`, the offline examples' job) finishes the
//! way a hosted provider's job does on AWS: by a signed `POST` to the webhook function's URL
//! (`SWITCHYARD_PUBLIC_URL/hooks/local?…`). Locally the driver hands such callbacks to the
//! engine in-process; a Lambda container has no driver that outlives the invocation, so the
//! worker sends what its batch scheduled over HTTP, and the webhook function verifies it like
//! any other provider's (`SWITCHYARD_WEBHOOK_SECRET` must be the same in every function: it is
//! in the settings secret).

use crate::Deployment;
use switchyard_core::model::ScheduledCallback;
use switchyard_engine::webhook::CallbackRequest;

/// A callback ready to send: when (ms after it was scheduled), where, and the signed request.
pub struct Outgoing {
    pub delay_ms: u64,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn sign(d: &Deployment, cb: &ScheduledCallback) -> Option<Outgoing> {
    let secret = d
        .engine
        .webhook_secret(&cb.provider)
        .cloned()
        .unwrap_or_default();
    match CallbackRequest::signed(
        &cb.provider,
        &cb.url,
        &cb.webhook_id,
        &cb.body,
        &secret,
        d.engine.now() / 1000,
    ) {
        Ok(req) => Some(Outgoing {
            delay_ms: cb.delay_ms,
            url: cb.url.clone(),
            headers: req.headers.into_iter().collect(),
            body: req.body,
        }),
        Err(e) => {
            tracing::error!(job_id = %cb.job_id, error = %e, "a built-in job's callback could not be signed");
            None
        }
    }
}

/// The callbacks the built-in provider scheduled since the last call, signed.
pub fn take(d: &Deployment) -> Vec<Outgoing> {
    d.local
        .take_scheduled()
        .iter()
        .filter_map(|cb| sign(d, cb))
        .collect()
}

/// Sends `out` with `client`, each `delay_ms` after now but none later than `budget_ms` from
/// now (the invocation's deadline): a callback that cannot be sent is logged, and its step's
/// timeout settles it, so nothing is lost silently.
pub async fn send(client: &reqwest::Client, mut out: Vec<Outgoing>, budget_ms: u64) {
    out.sort_by_key(|o| o.delay_ms);
    let start = tokio::time::Instant::now();
    for o in out {
        let at = start + std::time::Duration::from_millis(o.delay_ms.min(budget_ms));
        tokio::time::sleep_until(at).await;
        let mut req = client
            .post(&o.url)
            .header("content-type", "application/json");
        for (k, v) in &o.headers {
            req = req.header(k, v);
        }
        match req.body(o.body).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!(
                status = r.status().as_u16(),
                "built-in job callback refused"
            ),
            Err(e) => tracing::warn!(error = %e, "built-in job callback not delivered"),
        }
    }
}
