//! The one piece of glue between an adapter's pure halves: build the request (which resolves
//! the key, so a missing one fails before any network), send it under the step's timeout,
//! measure the latency, read the answer with the adapter's `from_response`, and log the
//! outcome with the same fields for every provider.
//!
//! Logs carry metadata only — provider, model, operation, status, latency, error class and the
//! provider's request id — never prompts, outputs or keys, so they can be shipped anywhere.
//! The messages are fixed strings (`model call answered`, `model call failed`, `model call
//! failed before an answer`) so one query finds every provider's failures.

use crate::catalog::Catalog;
use crate::hosted;
use crate::http::{HttpRequest, HttpResponse, Sender};
use crate::keys::Endpoint;
use async_trait::async_trait;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchyard_core::model::{ModelInfo, ModelRequest, ModelResponse, Provider};
use switchyard_core::ports::Secrets;
use switchyard_core::state::Usage;
use switchyard_core::StepError;

/// Wall-clock milliseconds, for `Retry-After` dates in the classifier.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The attempt timeout as the sender wants it (`0` means "the sender's default").
pub fn attempt_timeout(req: &ModelRequest) -> Option<Duration> {
    (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms))
}

/// What an adapter read out of an answer, as far as the log is concerned: the provider's id
/// for it, when the answer carries one in its body rather than a header.
pub trait Answered {
    fn answer_id(&self) -> Option<&str>;
}

impl Answered for ModelResponse {
    fn answer_id(&self) -> Option<&str> {
        match self {
            ModelResponse::Completed(out) => out.provider_request_id.as_deref(),
            ModelResponse::Pending { job_id, .. } => Some(job_id),
        }
    }
}

/// A prediction id with its response (Replicate): the id is what support asks for.
impl Answered for (String, ModelResponse) {
    fn answer_id(&self) -> Option<&str> {
        Some(&self.0)
    }
}

/// An answer with nothing in it (a cancel).
impl Answered for () {
    fn answer_id(&self) -> Option<&str> {
        None
    }
}

/// One exchange with a provider, described for the log.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    /// `invoke`, `poll` or `cancel`: a poll that fails reads differently from a call that does.
    pub operation: &'static str,
    /// The response header carrying the provider's request id (`x-request-id`...), if any.
    pub request_id_header: Option<&'static str>,
    pub timeout: Option<Duration>,
    /// The step's request, when the exchange is a model call: with a record/replay tape, its
    /// normalized form names the cassette (`crate::tape::Key::for_request`); without, the
    /// exchange is keyed by method and URL.
    pub request: Option<&'a ModelRequest>,
}

impl<'a> Call<'a> {
    /// An `invoke` of a step's model under the step's attempt timeout.
    pub fn invoke(provider: &'a str, request: &'a ModelRequest) -> Call<'a> {
        Call {
            provider,
            model: &request.model,
            operation: "invoke",
            request_id_header: None,
            timeout: attempt_timeout(request),
            request: Some(request),
        }
    }

    pub fn operation(self, operation: &'static str) -> Call<'a> {
        Call { operation, ..self }
    }

    pub fn request_id_header(self, header: &'static str) -> Call<'a> {
        Call {
            request_id_header: Some(header),
            ..self
        }
    }

    pub fn timeout(self, timeout: Option<Duration>) -> Call<'a> {
        Call { timeout, ..self }
    }

    /// Builds the request with `prepare`, sends it, and reads the answer with `read` (given
    /// the response and the time it came back). A `prepare` failure (a missing key, a step the
    /// API cannot serve) returns before any network and is not logged: it is the workflow's
    /// error, reported by the engine, not a provider outcome.
    pub async fn run<T: Answered>(
        self,
        sender: &Sender,
        prepare: impl FnOnce() -> Result<HttpRequest, StepError>,
        read: impl FnOnce(&HttpResponse, u64) -> Result<T, StepError>,
    ) -> Result<T, StepError> {
        let http = prepare()?;
        let started = Instant::now();
        let key = (sender.taped() || crate::tape::capturing())
            .then_some(self.request)
            .flatten()
            .map(|r| crate::tape::Key::for_request(self.provider, self.operation, r));
        let resp = match sender.send_keyed(key, http, self.timeout).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(provider = %self.provider, model = %self.model,
                    operation = self.operation, latency_ms = elapsed_ms(started),
                    error_class = %e.class, "model call failed before an answer");
                return Err(e);
            }
        };
        let latency_ms = elapsed_ms(started);
        let result = read(&resp, now_ms());
        let request_id = request_id(&resp, self.request_id_header, &result);
        match &result {
            Ok(_) => tracing::info!(provider = %self.provider, model = %self.model,
                operation = self.operation, status = resp.status, latency_ms, request_id,
                "model call answered"),
            Err(e) => tracing::warn!(provider = %self.provider, model = %self.model,
                operation = self.operation, status = resp.status, latency_ms, request_id,
                error_class = %e.class, "model call failed"),
        }
        result
    }
}

/// A chat API's pure request builder: base URL, key, step.
pub type ToRequest = fn(&str, Option<&str>, &ModelRequest) -> Result<HttpRequest, StepError>;
/// A chat API's pure answer reader: step, response, catalog, now.
pub type FromResponse =
    fn(&ModelRequest, &HttpResponse, &Catalog, u64) -> Result<ModelResponse, StepError>;

/// The pure halves of a chat API (OpenAI and compatibles, Anthropic): everything that differs
/// between them. The rest of the adapter — key and base URL per model, budget estimate, the
/// call itself — is [`Chat`], written once.
pub trait ChatApi: Send + Sync + 'static {
    /// The adapter's type name, for `Debug`.
    const TYPE_NAME: &'static str;
    /// The response header carrying the provider's request id.
    const REQUEST_ID_HEADER: &'static str;
    /// [`crate::openai::to_request`] and the like: base URL, key, step.
    const TO_REQUEST: ToRequest;
    /// [`crate::openai::from_response`] and the like: step, response, catalog, now.
    const FROM_RESPONSE: FromResponse;
}

/// A chat adapter: one provider prefix, served through the API `A`
/// ([`OpenAi`](crate::openai::OpenAi), [`Anthropic`](crate::anthropic::Anthropic)).
pub struct Chat<A> {
    pub(crate) endpoint: Endpoint,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) sender: Sender,
    api: PhantomData<fn() -> A>,
}

impl<A> Chat<A> {
    pub(crate) fn from_parts(endpoint: Endpoint, catalog: Arc<Catalog>, sender: Sender) -> Self {
        Chat {
            endpoint,
            catalog,
            sender,
            api: PhantomData,
        }
    }

    /// Reads entries' `api_key_env` keys from `secrets` instead of the environment.
    pub fn with_secrets(mut self, secrets: Arc<dyn Secrets>) -> Self {
        self.endpoint.secrets = secrets;
        self
    }
}

/// Shows where calls go, never the key.
impl<A: ChatApi> std::fmt::Debug for Chat<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(A::TYPE_NAME)
            .field("name", &self.endpoint.adapter)
            .field("base_url", &self.endpoint.base_url)
            .field("api_key", &self.endpoint.api_key.as_ref().map(|_| "[set]"))
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<A: ChatApi> Provider for Chat<A> {
    fn name(&self) -> &str {
        &self.endpoint.adapter
    }

    fn models(&self) -> Vec<ModelInfo> {
        self.catalog.models_with_prefix(&self.endpoint.adapter)
    }

    fn estimate_cost_usd(&self, request: &ModelRequest) -> f64 {
        self.catalog.estimate_usd(
            &request.model,
            hosted::prompt_tokens(request),
            Some(hosted::max_tokens(request)),
        )
    }

    fn price_usd(&self, model: &str, usage: Usage) -> Option<f64> {
        self.catalog.price_tokens(model, usage)
    }

    async fn invoke_kept(
        &self,
        request: &ModelRequest,
    ) -> (Result<ModelResponse, StepError>, Option<serde_json::Value>) {
        crate::tape::kept(self.invoke(request)).await
    }

    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, StepError> {
        let (endpoint, catalog) = (&self.endpoint, self.catalog.as_ref());
        Call::invoke(&endpoint.adapter, request)
            .request_id_header(A::REQUEST_ID_HEADER)
            .run(
                &self.sender,
                || {
                    let key = endpoint.key_for(catalog, &request.model)?;
                    (A::TO_REQUEST)(
                        endpoint.base_for(catalog, &request.model),
                        key.as_deref(),
                        request,
                    )
                },
                |resp, now| (A::FROM_RESPONSE)(request, resp, catalog, now),
            )
            .await
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

/// The id to log: the provider's request-id header when it sent one (present on errors too),
/// else the id the answer carries, else empty.
fn request_id<'r, T: Answered>(
    resp: &'r HttpResponse,
    header: Option<&str>,
    result: &'r Result<T, StepError>,
) -> &'r str {
    header
        .and_then(|h| resp.header(h))
        .filter(|v| !v.trim().is_empty())
        .or_else(|| result.as_ref().ok().and_then(Answered::answer_id))
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::response;
    use switchyard_core::model::ModelOutput;
    use switchyard_core::ErrorClass;

    fn completed(id: Option<&str>) -> Result<ModelResponse, StepError> {
        Ok(ModelResponse::Completed(ModelOutput {
            output: serde_json::Value::Null,
            usage: None,
            cost_usd: 0.0,
            model: "m".into(),
            provider_request_id: id.map(str::to_string),
            sources: Vec::new(),
        }))
    }

    #[test]
    fn the_logged_request_id() {
        let with = response(200, &[("x-request-id", "req_1")], "");
        let blank = response(200, &[("x-request-id", " ")], "");
        let none = response(200, &[], "");
        let failed: Result<ModelResponse, StepError> =
            Err(StepError::new(ErrorClass::Transient, "x"));
        let pending: Result<ModelResponse, StepError> = Ok(ModelResponse::Pending {
            job_id: "job_9".into(),
            poll_after_ms: None,
        });
        let body_1 = completed(Some("body_1"));
        let no_id = completed(None);
        // (response, header, result, logged id)
        type Case<'a> = (
            &'a HttpResponse,
            Option<&'a str>,
            &'a Result<ModelResponse, StepError>,
            &'a str,
        );
        let table: Vec<Case> = vec![
            (&with, Some("x-request-id"), &body_1, "req_1"),
            (&blank, Some("x-request-id"), &body_1, "body_1"),
            (&none, Some("x-request-id"), &no_id, ""),
            (&with, None, &body_1, "body_1"),
            (&with, Some("x-request-id"), &failed, "req_1"),
            (&none, Some("x-request-id"), &failed, ""),
            (&none, None, &pending, "job_9"),
        ];
        for (i, (r, h, result, want)) in table.into_iter().enumerate() {
            assert_eq!(request_id(r, h, result), want, "case {i}");
        }
        let pair: Result<(String, ModelResponse), StepError> = Ok((
            "p1".into(),
            ModelResponse::Pending {
                job_id: "p1".into(),
                poll_after_ms: None,
            },
        ));
        assert_eq!(request_id(&none, None, &pair), "p1");
        assert_eq!(request_id(&none, None, &Ok::<(), StepError>(())), "");
    }

    #[test]
    fn attempt_timeouts() {
        let mut r = crate::testing::request("openai/x", switchyard_core::model::Role::Generation);
        r.timeout_ms = 0;
        assert_eq!(attempt_timeout(&r), None);
        r.timeout_ms = 1500;
        assert_eq!(attempt_timeout(&r), Some(Duration::from_millis(1500)));
    }

    #[tokio::test]
    async fn a_prepare_failure_sends_nothing() {
        let sender = Sender::new(crate::http::Timeouts::default()).unwrap();
        let call = Call {
            provider: "openai",
            model: "openai/x",
            operation: "invoke",
            request_id_header: None,
            timeout: None,
            request: None,
        };
        let mut read_called = false;
        let e = call
            .run(
                &sender,
                || {
                    Err(StepError::new(
                        ErrorClass::Auth,
                        "OPENAI_API_KEY is not set",
                    ))
                },
                |_, _| {
                    read_called = true;
                    Ok(())
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Auth);
        assert!(!read_called);
    }
}
