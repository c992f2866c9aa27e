//! Amazon Bedrock through the Bedrock Runtime **Converse** API (`POST /model/{modelId}/converse`),
//! signed with AWS Signature Version 4 (service `bedrock`).
//!
//! Pure parts: [`to_request`] builds the unsigned request, [`sign`] adds the SigV4 headers (with
//! the `aws-sigv4` crate), [`from_response`] reads the answer. [`Bedrock`] only glues them to the
//! shared [`Sender`].
//!
//! Request shape:
//! - the rendered prompt (instructions) goes to `system: [{text}]`, the data to one user message
//!   `messages: [{role: "user", content: [{text}]}]` (see [`hosted::system_text`] and
//!   [`hosted::user_text`]). A step with instructions but no input sends the instructions as the
//!   user message (Converse needs a non-empty user turn);
//! - `inferenceConfig: {maxTokens, temperature}` from `params.max_tokens` / `params.temperature`;
//! - when the step wants JSON that follows a schema (an `output_schema`, or a classification),
//!   the schema becomes a single tool `answer` (`toolConfig.tools[0].toolSpec.inputSchema.json`)
//!   and the model is made to call it (`toolChoice: {tool: {name: "answer"}}`). Converse honours a
//!   forced tool only for Anthropic Claude and Amazon Nova models; for other models the choice is
//!   left to the model (`auto`), the system text asks for the tool, and a plain-text JSON answer
//!   is accepted too. Tool input must be an object, so a schema whose `type` is not `object` is
//!   wrapped as `{value: <schema>}` and unwrapped on the way back;
//! - `params.format: json` without a schema adds "answer with JSON only" to the system text.
//!
//! The model id travels in the path, percent-encoded (`:` → `%3A`, `/` of an ARN → `%2F`); the
//! signer is given exactly that URL and applies the double encoding SigV4 prescribes for
//! non-S3 services.
//!
//! Response: `stopReason` `guardrail_intervened` / `content_filtered` → `refused`; a tool call's
//! `input` (already JSON) or the text blocks → [`hosted::normalize`]; `usage.inputTokens` /
//! `outputTokens` / `cacheReadInputTokens` / `cacheWriteInputTokens` → usage and cost;
//! `x-amzn-RequestId` → the provider request id. Non-2xx
//! answers go through [`classify`](crate::classify::classify) with the Bedrock conventions
//! (`x-amzn-ErrorType`).
//!
//! Dropped by normalization: reasoning blocks, text around a tool call, the tool-use id,
//! `usage.totalTokens` and `cacheDetails`, `metrics.latencyMs` (the engine measures latency
//! itself), guardrail `trace` and `additionalModelResponseFields`.
//!
//! Converse has no embeddings, images or audio: the `embedding`, `asset`, `transcription` and
//! `retrieval` roles are `invalid` here.
//!
//! `bedrock/guardrail` is a moderation model: a Bedrock guardrail run over the step's text
//! through Converse's `guardrailConfig` ([`guardrail`]).

pub mod guardrail;

use crate::call::Call;
use crate::catalog::{estimate_tokens, Catalog};
use crate::classify::{check_status, Api};
use crate::hosted::{self, invalid, malformed};
use crate::http::{HttpRequest, HttpResponse, Sender};
use crate::keys::{first_secret, secret};
use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningParams, SigningSettings};
use aws_sigv4::sign::v4;
use serde_json::{json, Value};
use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;
use switchyard_core::model::{ModelInfo, ModelOutput, ModelRequest, ModelResponse, Provider, Role};
use switchyard_core::ports::{EnvSecrets, Secrets};
use switchyard_core::state::Usage;
use switchyard_core::{ErrorClass, StepError};

/// The provider prefix of the model ids served here (`bedrock/<modelId>`).
pub const PROVIDER: &str = "bedrock";
/// The SigV4 signing name of Bedrock Runtime.
pub const SIGNING_NAME: &str = "bedrock";
/// Name of the tool that carries a structured answer.
pub const TOOL_NAME: &str = "answer";
/// Region used when neither `AWS_REGION` nor `AWS_DEFAULT_REGION` is set.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Static AWS credentials (what Lambda provides for the function's role through the
/// environment). `Debug` never shows the secret or the session token.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl AwsCredentials {
    /// `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN` when set); `None`
    /// unless both of the first two are set and non-empty.
    pub fn from_secrets(secrets: &dyn Secrets) -> Option<AwsCredentials> {
        Some(AwsCredentials {
            access_key_id: secret(secrets, "AWS_ACCESS_KEY_ID")?,
            secret_access_key: secret(secrets, "AWS_SECRET_ACCESS_KEY")?,
            session_token: secret(secrets, "AWS_SESSION_TOKEN"),
        })
    }

    /// [`AwsCredentials::from_secrets`] of the process environment.
    pub fn from_env() -> Option<AwsCredentials> {
        AwsCredentials::from_secrets(&EnvSecrets)
    }
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key id is not a secret, but it names the account's key: show its first 4 chars.
        let id: String = self.access_key_id.chars().take(4).collect();
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &format!("{id}…"))
            .field("secret_access_key", &"[redacted]")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// The Bedrock Runtime endpoint: `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, else `AWS_ENDPOINT_URL`,
/// else `https://bedrock-runtime.{region}.amazonaws.com`.
pub fn endpoint_from_secrets(secrets: &dyn Secrets, region: &str) -> String {
    first_secret(
        secrets,
        &["AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "AWS_ENDPOINT_URL"],
    )
    .unwrap_or_else(|| format!("https://bedrock-runtime.{region}.amazonaws.com"))
}

/// [`endpoint_from_secrets`] of the process environment.
pub fn endpoint_from_env(region: &str) -> String {
    endpoint_from_secrets(&EnvSecrets, region)
}

/// `AWS_REGION` (set by Lambda), else `AWS_DEFAULT_REGION`, else [`DEFAULT_REGION`].
pub fn region_from_secrets(secrets: &dyn Secrets) -> String {
    first_secret(secrets, &["AWS_REGION", "AWS_DEFAULT_REGION"])
        .unwrap_or_else(|| DEFAULT_REGION.to_string())
}

/// [`region_from_secrets`] of the process environment.
pub fn region_from_env() -> String {
    region_from_secrets(&EnvSecrets)
}

/// The Bedrock adapter.
pub struct Bedrock {
    endpoint: String,
    region: String,
    credentials: Option<AwsCredentials>,
    catalog: Arc<Catalog>,
    sender: Sender,
}

impl Bedrock {
    pub fn new(
        endpoint: &str,
        region: &str,
        credentials: Option<AwsCredentials>,
        catalog: Arc<Catalog>,
        sender: Sender,
    ) -> Bedrock {
        Bedrock {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region: region.to_string(),
            credentials,
            catalog,
            sender,
        }
    }
}

/// Percent-encodes one path segment: everything but RFC 3986 unreserved characters.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// An absolute `http(s)://host…` URL, which the signer needs (it signs the host).
fn check_url(url: &str) -> Result<(), StepError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| invalid("the Bedrock endpoint must be an http(s):// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(invalid("the Bedrock endpoint has no host"));
    }
    Ok(())
}

/// Whether Converse accepts `toolChoice: {tool: …}` for this model (Anthropic Claude and
/// Amazon Nova, also through inference profiles such as `us.anthropic.…` or an ARN).
pub fn supports_forced_tool(model_id: &str) -> bool {
    let m = model_id.to_ascii_lowercase();
    m.contains("anthropic.") || m.contains("amazon.nova")
}

/// Whether the schema had to be wrapped as `{value: schema}` to be a tool input.
fn needs_wrap(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) != Some("object")
}

/// The Converse request body.
pub fn request_body(req: &ModelRequest) -> Result<Value, StepError> {
    let mut system = hosted::system_text(req).unwrap_or_default();
    let schema = hosted::answer_schema(req);
    let forced = supports_forced_tool(req.model_name());
    if schema.is_some() && !forced {
        system.push_str(&format!(
            "\n\nGive your answer by calling the `{TOOL_NAME}` tool."
        ));
    } else if schema.is_none() && hosted::wants_json(req) {
        system.push_str("\n\nAnswer with a single JSON value and nothing else.");
    }
    let system = system.trim().to_string();
    let mut user = hosted::user_text(req);
    let mut system_blocks = Vec::new();
    if user.trim().is_empty() {
        if system.is_empty() {
            return Err(invalid(
                "the step has neither instructions nor input to send to the model",
            ));
        }
        user = system;
    } else if !system.is_empty() {
        system_blocks.push(json!({"text": system}));
    }
    let mut inference = json!({"maxTokens": hosted::max_tokens(req)});
    if let Some(t) = hosted::temperature(req) {
        inference["temperature"] = json!(t);
    }
    let mut body = json!({
        "messages": [{"role": "user", "content": [{"text": user}]}],
        "inferenceConfig": inference,
    });
    if !system_blocks.is_empty() {
        body["system"] = Value::Array(system_blocks);
    }
    if let Some(schema) = schema {
        let input_schema = if needs_wrap(&schema) {
            json!({"type": "object", "properties": {"value": schema}, "required": ["value"]})
        } else {
            schema
        };
        let mut tool_config = json!({
            "tools": [{"toolSpec": {
                "name": TOOL_NAME,
                "description": "Give the answer as JSON that follows the input schema.",
                "inputSchema": {"json": input_schema},
            }}],
        });
        if forced {
            tool_config["toolChoice"] = json!({"tool": {"name": TOOL_NAME}});
        }
        body["toolConfig"] = tool_config;
    }
    Ok(body)
}

/// The unsigned Converse request for `req`, against `endpoint`.
pub fn to_request(endpoint: &str, req: &ModelRequest) -> Result<HttpRequest, StepError> {
    if guardrail::is_guardrail(&req.model) {
        return guardrail::to_request(endpoint, req);
    }
    match req.role {
        Role::Classification | Role::Extraction | Role::Generation => {}
        Role::Embedding => {
            return Err(invalid("the Bedrock Converse API has no embeddings; use an embedding model of another provider"))
        }
        other => return Err(invalid(format!("the Bedrock Converse API does not serve the `{}` role", other.as_str()))),
    }
    let model = req.model_name();
    if model.is_empty() {
        return Err(invalid("the Bedrock model id is empty"));
    }
    let endpoint = endpoint.trim_end_matches('/');
    check_url(endpoint)?;
    let url = format!("{endpoint}/model/{}/converse", encode_segment(model));
    Ok(HttpRequest::post_json(url, &request_body(req)?).header("accept", "application/json"))
}

/// Signs `request` with SigV4 for Bedrock in `region` at `now`: adds `authorization`,
/// `x-amz-date` and, with temporary credentials, `x-amz-security-token`. Signing headers
/// already present are replaced, so a request can be signed again (on a retry).
pub fn sign(
    mut request: HttpRequest,
    region: &str,
    creds: &AwsCredentials,
    now: SystemTime,
) -> Result<HttpRequest, StepError> {
    check_url(&request.url)?;
    if region.trim().is_empty() {
        return Err(invalid("the AWS region is empty"));
    }
    request.headers.retain(|(k, _)| {
        !matches!(
            k.to_ascii_lowercase().as_str(),
            "authorization" | "x-amz-date" | "x-amz-security-token" | "x-amz-content-sha256"
        )
    });
    let identity = Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
        creds.session_token.clone(),
        None,
        "switchyard",
    )
    .into();
    let params: SigningParams = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_NAME)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| invalid(format!("AWS signing parameters: {e}")))?
        .into();
    let headers = {
        let body = request.body.as_deref().unwrap_or(&[]);
        let signable = SignableRequest::new(
            request.method,
            request.url.as_str(),
            request
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(body),
        )
        .map_err(|e| invalid(format!("the Bedrock request cannot be signed: {e}")))?;
        let (instructions, _signature) = aws_sigv4::http_request::sign(signable, &params)
            .map_err(|e| invalid(format!("the Bedrock request cannot be signed: {e}")))?
            .into_parts();
        instructions
            .headers()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect::<Vec<_>>()
    };
    request.headers.extend(headers);
    Ok(request)
}

/// Converse `stopReason` → the normalized `finish_reason`.
fn finish_reason(stop: &str) -> &str {
    match stop {
        "end_turn" | "stop_sequence" | "tool_use" => "stop",
        "max_tokens" => "length",
        other => other,
    }
}

/// Reads a Converse answer.
pub fn from_response(
    req: &ModelRequest,
    resp: &HttpResponse,
    catalog: &Catalog,
    now_ms: u64,
) -> Result<ModelResponse, StepError> {
    if guardrail::is_guardrail(&req.model) {
        return guardrail::from_response(req, resp, catalog, now_ms);
    }
    check_status(Api::Bedrock, resp, now_ms)?;
    let body = resp
        .json()
        .ok_or_else(|| malformed("bedrock response is not JSON"))?;
    let stop = body.get("stopReason").and_then(Value::as_str).unwrap_or("");
    if matches!(stop, "guardrail_intervened" | "content_filtered") {
        return Err(StepError::new(
            ErrorClass::Refused,
            format!("bedrock stopped the answer: {stop}"),
        ));
    }
    let content = hosted::field(&body, &["output", "message", "content"], PROVIDER)?
        .as_array()
        .ok_or_else(|| malformed("bedrock response `output.message.content` is not a list"))?;
    let texts: Vec<&str> = content
        .iter()
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    let tool_input = content
        .iter()
        .filter_map(|b| b.get("toolUse"))
        .find(|t| t.get("name").and_then(Value::as_str) == Some(TOOL_NAME))
        .and_then(|t| t.get("input"))
        .cloned();
    let usage = read_usage(&body);
    let (text, parsed) = read_answer(req, tool_input, &texts, stop)?;
    let output = hosted::normalize(
        req,
        &text,
        parsed,
        usage.unwrap_or_default(),
        finish_reason(stop),
        &req.model,
    )?;
    Ok(ModelResponse::Completed(ModelOutput {
        output,
        usage,
        cost_usd: catalog.cost_usd(&req.model, usage, None),
        model: req.model.clone(),
        provider_request_id: resp.header("x-amzn-requestid").map(str::to_string),
        sources: Vec::new(),
    }))
}

/// `usage.inputTokens` / `outputTokens`, when the answer reports either, with the prompt
/// cache's `cacheReadInputTokens` / `cacheWriteInputTokens`. Converse's `inputTokens` leaves
/// the cached ones out (the total input is the three together); [`Usage::input_tokens`]
/// counts every input token, so they are added in. Reasoning is not reported apart.
fn read_usage(body: &Value) -> Option<Usage> {
    let count = |k: &str| {
        body.get("usage")
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
    };
    match (count("inputTokens"), count("outputTokens")) {
        (None, None) => None,
        (i, o) => {
            let read = count("cacheReadInputTokens").unwrap_or(0);
            let write = count("cacheWriteInputTokens").unwrap_or(0);
            Some(Usage {
                cache_read_tokens: read,
                cache_write_tokens: write,
                ..Usage::new(
                    i.unwrap_or(0).saturating_add(read).saturating_add(write),
                    o.unwrap_or(0),
                )
            })
        }
    }
}

/// The answer's text and, when it came as JSON, its value: the tool call's input (unwrapped
/// from `{value: …}` if the schema had to be wrapped), else the text blocks joined.
fn read_answer(
    req: &ModelRequest,
    tool_input: Option<Value>,
    texts: &[&str],
    stop: &str,
) -> Result<(String, Option<Value>), StepError> {
    let wrapped = hosted::answer_schema(req).is_some_and(|s| needs_wrap(&s));
    Ok(match tool_input {
        Some(input) => {
            let value = if wrapped {
                input.get("value").cloned().ok_or_else(|| {
                    malformed("the tool call lacks `value`")
                        .with_details(vec!["call the tool with {\"value\": <the answer>}".into()])
                })?
            } else {
                input
            };
            (value.to_string(), Some(value))
        }
        None if texts.is_empty() => {
            return Err(malformed(format!(
                "bedrock answer has neither text nor a tool call (stopReason `{stop}`)"
            )))
        }
        None => {
            let text = texts.join("\n");
            // A model that was asked for a wrapped value may still answer `{"value": …}` in text.
            let parsed = if wrapped {
                let v = hosted::parse_json_text(&text)?;
                Some(v.get("value").cloned().unwrap_or(v))
            } else {
                None
            };
            (text, parsed)
        }
    })
}

#[async_trait]
impl Provider for Bedrock {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn models(&self) -> Vec<ModelInfo> {
        self.catalog.models_with_prefix(PROVIDER)
    }

    fn estimate_cost_usd(&self, request: &ModelRequest) -> f64 {
        if guardrail::is_guardrail(&request.model) {
            return guardrail::estimate_usd(&self.catalog, request);
        }
        // The schema travels as a tool definition, so it is input too.
        let schema_tokens =
            hosted::answer_schema(request).map_or(0, |s| estimate_tokens(&s.to_string()));
        self.catalog.estimate_usd(
            &request.model,
            hosted::prompt_tokens(request) + schema_tokens,
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
        Call::invoke(PROVIDER, request)
            .request_id_header("x-amzn-requestid")
            .run(
                &self.sender,
                || {
                    // The request is checked before the credentials, so a workflow mistake is
                    // reported as such.
                    let unsigned = to_request(&self.endpoint, request)?;
                    let creds = self.credentials.as_ref().ok_or_else(|| {
                        StepError::new(
                            ErrorClass::Auth,
                            "AWS credentials are not set (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
                        )
                    })?;
                    sign(unsigned, &self.region, creds, SystemTime::now())
                },
                |resp, now| from_response(request, resp, &self.catalog, now),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{catalog, response as resp};
    use std::time::{Duration, UNIX_EPOCH};

    const ENDPOINT: &str = "https://bedrock-runtime.us-east-1.amazonaws.com";
    const HAIKU: &str = "bedrock/anthropic.claude-3-haiku-20240307-v1:0";
    const LLAMA: &str = "bedrock/meta.llama3-1-8b-instruct-v1:0";
    const NOW: u64 = 1_700_000_000_000;

    fn req(
        model: &str,
        role: Role,
        input: Value,
        params: Value,
        schema: Option<Value>,
    ) -> ModelRequest {
        ModelRequest {
            input,
            params,
            output_schema: schema,
            timeout_ms: 5000,
            callback: None,
            ..crate::testing::request(model, role)
        }
    }

    fn gen(model: &str) -> ModelRequest {
        req(
            model,
            Role::Generation,
            json!("Summarize: the cat sat."),
            json!({}),
            None,
        )
    }

    fn creds(token: Option<&str>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKID".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(String::from),
        }
    }

    fn body_of(r: &HttpRequest) -> Value {
        serde_json::from_slice(r.body.as_deref().unwrap()).unwrap()
    }

    fn header<'a>(r: &'a HttpRequest, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn completed(r: Result<ModelResponse, StepError>) -> ModelOutput {
        match r.unwrap() {
            ModelResponse::Completed(o) => o,
            other => panic!("expected completed, got {other:?}"),
        }
    }

    /// (case, request, path, has system, toolChoice, wrapped schema)
    type ShapeCase<'a> = (&'a str, ModelRequest, &'a str, bool, Option<Value>, bool);

    const TEXT: &str = include_str!("../tests/fixtures/bedrock_converse_text.json");
    const TOOL: &str = include_str!("../tests/fixtures/bedrock_converse_tool_use.json");
    const GUARDRAIL: &str = include_str!("../tests/fixtures/bedrock_converse_guardrail.json");

    #[test]
    fn request_shape() {
        let schema = json!({"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]});
        // (case, request, path, has system, toolChoice, wrapped schema)
        let table: Vec<ShapeCase> = vec![
            ("plain generation", gen(HAIKU), "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse", true, None, false),
            (
                "schema on a forced-tool model",
                req(HAIKU, Role::Extraction, json!({"t": 1}), json!({}), Some(schema.clone())),
                "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
                true,
                Some(json!({"tool": {"name": "answer"}})),
                false,
            ),
            (
                "schema on a model without forced tools",
                req(LLAMA, Role::Extraction, json!({"t": 1}), json!({}), Some(schema.clone())),
                "/model/meta.llama3-1-8b-instruct-v1%3A0/converse",
                true,
                None,
                false,
            ),
            (
                "classification labels",
                req(HAIKU, Role::Classification, json!("refund"), json!({"labels": ["billing", "tech"]}), None),
                "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
                true,
                Some(json!({"tool": {"name": "answer"}})),
                false,
            ),
            (
                "array schema is wrapped",
                req(HAIKU, Role::Extraction, json!("x"), json!({}), Some(json!({"type": "array", "items": {"type": "string"}}))),
                "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
                true,
                Some(json!({"tool": {"name": "answer"}})),
                true,
            ),
            (
                "inference profile ARN",
                gen("bedrock/arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0"),
                "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-haiku-20240307-v1%3A0/converse",
                true,
                None,
                false,
            ),
        ];
        for (case, r, path, has_system, choice, wrapped) in table {
            let http = to_request(&format!("{ENDPOINT}/"), &r).unwrap();
            assert_eq!(http.method, "POST", "{case}");
            assert_eq!(http.url, format!("{ENDPOINT}{path}"), "{case}");
            assert_eq!(
                header(&http, "content-type"),
                Some("application/json"),
                "{case}"
            );
            let b = body_of(&http);
            assert_eq!(b["messages"][0]["role"], "user", "{case}");
            assert_eq!(b["messages"].as_array().unwrap().len(), 1, "{case}");
            assert_eq!(b["system"].is_array(), has_system, "{case}");
            assert!(
                b["system"][0]["text"]
                    .as_str()
                    .unwrap()
                    .starts_with("Be brief."),
                "{case}"
            );
            // Instructions never leak into the user turn.
            assert!(
                !b["messages"][0]["content"][0]["text"]
                    .as_str()
                    .unwrap()
                    .contains("Be brief."),
                "{case}"
            );
            assert_eq!(b["inferenceConfig"]["maxTokens"], 1024, "{case}");
            let schema_wanted = hosted::answer_schema(&r).is_some();
            assert_eq!(b.get("toolConfig").is_some(), schema_wanted, "{case}");
            if schema_wanted {
                let spec = &b["toolConfig"]["tools"][0]["toolSpec"];
                assert_eq!(spec["name"], "answer", "{case}");
                assert_eq!(spec["inputSchema"]["json"]["type"], "object", "{case}");
                assert_eq!(
                    spec["inputSchema"]["json"]["properties"]
                        .get("value")
                        .is_some(),
                    wrapped,
                    "{case}"
                );
                assert_eq!(b["toolConfig"].get("toolChoice").cloned(), choice, "{case}");
            }
        }
        // Schema passed through unchanged; data in the user turn as JSON.
        let r = req(
            HAIKU,
            Role::Extraction,
            json!({"t": 1}),
            json!({"max_tokens": 200, "temperature": 0.2}),
            Some(schema.clone()),
        );
        let b = body_of(&to_request(ENDPOINT, &r).unwrap());
        assert_eq!(
            b["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"],
            schema
        );
        assert_eq!(b["messages"][0]["content"][0]["text"], r#"{"t":1}"#);
        assert_eq!(
            b["inferenceConfig"],
            json!({"maxTokens": 200, "temperature": 0.2})
        );
        // A model without forced tools is asked for the tool in the system text.
        let r = req(LLAMA, Role::Extraction, json!("x"), json!({}), Some(schema));
        assert!(
            body_of(&to_request(ENDPOINT, &r).unwrap())["system"][0]["text"]
                .as_str()
                .unwrap()
                .contains("`answer` tool")
        );
        // format: json without a schema: no tool, an instruction instead.
        let r = req(
            HAIKU,
            Role::Generation,
            json!("x"),
            json!({"format": "json"}),
            None,
        );
        let b = body_of(&to_request(ENDPOINT, &r).unwrap());
        assert!(b.get("toolConfig").is_none());
        assert!(b["system"][0]["text"].as_str().unwrap().contains("JSON"));
        // No input: the instructions become the user turn.
        let r = req(HAIKU, Role::Generation, Value::Null, json!({}), None);
        let b = body_of(&to_request(ENDPOINT, &r).unwrap());
        assert!(b.get("system").is_none());
        assert_eq!(b["messages"][0]["content"][0]["text"], "Be brief.");
    }

    #[test]
    fn requests_that_are_refused_before_sending() {
        let mut none = req(HAIKU, Role::Generation, Value::Null, json!({}), None);
        none.instructions = None;
        let table: Vec<(&str, &str, ModelRequest)> = vec![
            (
                "embedding",
                ENDPOINT,
                req(HAIKU, Role::Embedding, json!("x"), json!({}), None),
            ),
            (
                "asset",
                ENDPOINT,
                req(HAIKU, Role::Asset, json!("x"), json!({}), None),
            ),
            (
                "transcription",
                ENDPOINT,
                req(HAIKU, Role::Transcription, json!("x"), json!({}), None),
            ),
            ("nothing to send", ENDPOINT, none),
            ("empty model", ENDPOINT, gen("bedrock/")),
            ("relative endpoint", "/model", gen(HAIKU)),
            ("no host", "https://", gen(HAIKU)),
        ];
        for (case, endpoint, r) in table {
            let e = to_request(endpoint, &r).unwrap_err();
            assert_eq!(e.class, ErrorClass::Invalid, "{case}: {e}");
        }
        let e = to_request(
            ENDPOINT,
            &req(HAIKU, Role::Embedding, json!("x"), json!({}), None),
        )
        .unwrap_err();
        assert!(e.message.contains("no embeddings"), "{e}");
    }

    #[test]
    fn signing_adds_headers_and_is_deterministic() {
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000); // 2023-11-14T22:13:20Z
        let unsigned = to_request(ENDPOINT, &gen(HAIKU)).unwrap();
        // (case, credentials, region, expect security token)
        let table = [
            ("static", creds(None), "us-east-1", false),
            (
                "session",
                creds(Some("FwoGZXIvYXdzEXAMPLE")),
                "eu-west-1",
                true,
            ),
        ];
        for (case, c, region, token) in table {
            let a = sign(unsigned.clone(), region, &c, at).unwrap();
            let b = sign(unsigned.clone(), region, &c, at).unwrap();
            assert_eq!(a, b, "{case}: same inputs, same signature");
            let auth = header(&a, "authorization").unwrap();
            let prefix =
                format!("AWS4-HMAC-SHA256 Credential=AKID/20231114/{region}/bedrock/aws4_request");
            assert!(auth.starts_with(&prefix), "{case}: {auth}");
            assert!(
                auth.contains("SignedHeaders=") && auth.contains("Signature="),
                "{case}: {auth}"
            );
            assert!(
                auth.contains("content-type")
                    && auth.contains("host")
                    && auth.contains("x-amz-date"),
                "{case}: {auth}"
            );
            assert_eq!(header(&a, "x-amz-date"), Some("20231114T221320Z"), "{case}");
            assert_eq!(
                header(&a, "x-amz-security-token").is_some(),
                token,
                "{case}"
            );
            assert_eq!(
                auth.contains("x-amz-security-token"),
                token,
                "{case}: token is signed"
            );
            assert!(!auth.contains(&c.secret_access_key), "{case}");
            // The URL and body are what was signed, untouched.
            assert_eq!(a.url, unsigned.url, "{case}");
            assert_eq!(a.body, unsigned.body, "{case}");
            // Signing again replaces, never duplicates, the signing headers.
            let again = sign(a.clone(), region, &c, at).unwrap();
            assert_eq!(
                again
                    .headers
                    .iter()
                    .filter(|(k, _)| k == "authorization")
                    .count(),
                1,
                "{case}"
            );
            assert_eq!(again, a, "{case}");
        }
        // A different time, body or key gives a different signature.
        let base = header(
            &sign(unsigned.clone(), "us-east-1", &creds(None), at).unwrap(),
            "authorization",
        )
        .unwrap()
        .to_string();
        let later = sign(
            unsigned.clone(),
            "us-east-1",
            &creds(None),
            at + Duration::from_secs(1),
        )
        .unwrap();
        assert_ne!(header(&later, "authorization").unwrap(), base);
        let other = to_request(
            ENDPOINT,
            &req(HAIKU, Role::Generation, json!("other"), json!({}), None),
        )
        .unwrap();
        assert_ne!(
            header(
                &sign(other, "us-east-1", &creds(None), at).unwrap(),
                "authorization"
            )
            .unwrap(),
            base
        );
        let mut c = creds(None);
        c.secret_access_key.push('x');
        assert_ne!(
            header(
                &sign(unsigned.clone(), "us-east-1", &c, at).unwrap(),
                "authorization"
            )
            .unwrap(),
            base
        );
        // Bad inputs are errors, never panics.
        let mut bad = unsigned.clone();
        bad.url = "/model/x/converse".into();
        assert_eq!(
            sign(bad, "us-east-1", &creds(None), at).unwrap_err().class,
            ErrorClass::Invalid
        );
        assert_eq!(
            sign(unsigned, " ", &creds(None), at).unwrap_err().class,
            ErrorClass::Invalid
        );
    }

    /// Known answer, cross-checked with botocore's `SigV4Auth` (an independent implementation)
    /// for the same request, credentials and time: the model id's `%3A` is signed as `%253A`.
    #[test]
    fn signature_matches_an_independent_signer() {
        let mut r = req(HAIKU, Role::Generation, json!("hi"), json!({}), None);
        r.instructions = Some("Be brief.".into());
        let unsigned = to_request(ENDPOINT, &r).unwrap();
        assert_eq!(
            String::from_utf8(unsigned.body.clone().unwrap()).unwrap(),
            r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"maxTokens":1024},"system":[{"text":"Be brief."}]}"#
        );
        let c = AwsCredentials {
            access_key_id: "AKID".into(),
            secret_access_key: "SECRET".into(),
            session_token: Some("TOK".into()),
        };
        let signed = sign(
            unsigned,
            "us-east-1",
            &c,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
        .unwrap();
        assert_eq!(
            header(&signed, "authorization"),
            Some("AWS4-HMAC-SHA256 Credential=AKID/20231114/us-east-1/bedrock/aws4_request, SignedHeaders=accept;content-type;host;x-amz-date;x-amz-security-token, Signature=5e760d39b546410370304974516cd1bd274f8f6f7b0018beada1efd57eb6f8da")
        );
        assert_eq!(header(&signed, "x-amz-security-token"), Some("TOK"));
    }

    #[test]
    fn credentials_debug_hides_secrets() {
        let shown = format!("{:?}", creds(Some("FwoGZXIvYXdzEXAMPLE")));
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert!(!shown.contains("FwoGZXIvYXdzEXAMPLE"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }

    #[test]
    fn reads_text_answers() {
        let c = catalog();
        let r = gen(HAIKU);
        let out = completed(from_response(
            &r,
            &resp(
                200,
                &[("x-amzn-RequestId", "7c2d3b7e-1f0a-4a57-9d55-2f1b8b8c4d21")],
                TEXT,
            ),
            &c,
            NOW,
        ));
        assert_eq!(out.output["text"], "The cat sat on the mat.");
        assert_eq!(out.output["finish_reason"], "stop");
        assert_eq!(out.output["model"], HAIKU);
        assert!(out.output.get("json").is_none());
        assert_eq!(out.usage, Some(Usage::new(21, 10)));
        assert_eq!(out.output["usage"]["input_tokens"], 21);
        // 21 × 0.25 / 1e6 + 10 × 1.25 / 1e6
        assert!(
            (out.cost_usd - 0.00001775).abs() < 1e-12,
            "{}",
            out.cost_usd
        );
        assert_eq!(
            out.provider_request_id.as_deref(),
            Some("7c2d3b7e-1f0a-4a57-9d55-2f1b8b8c4d21")
        );
        assert_eq!(out.model, HAIKU);
        // max_tokens is reported as a truncated answer.
        let cut = TEXT.replace("end_turn", "max_tokens");
        let out = completed(from_response(&r, &resp(200, &[], &cut), &c, NOW));
        assert_eq!(out.output["finish_reason"], "length");
        assert_eq!(out.provider_request_id, None);
        // JSON asked for in text form (format: json) is parsed from the text.
        let j = req(
            HAIKU,
            Role::Generation,
            json!("x"),
            json!({"format": "json"}),
            None,
        );
        let body = TEXT.replace("The cat sat on the mat.", r#"```json\n{\"a\": 1}\n```"#);
        let out = completed(from_response(&j, &resp(200, &[], &body), &c, NOW));
        assert_eq!(out.output["json"], json!({"a": 1}));
    }

    /// Converse counts cache reads and writes beside `inputTokens`: they are added into the
    /// normalized input and priced at the table's cache prices (Nova Lite: 0.06 input, 0.015
    /// cache read, no cache-write price so 0.06, 0.24 output).
    #[test]
    fn usage_adds_cache_reads_and_writes_to_the_input() {
        let c = catalog();
        let nova = "bedrock/amazon.nova-lite-v1:0";
        // (usage as answered, as read, USD)
        let table = [
            (
                json!({"inputTokens": 21, "outputTokens": 10, "totalTokens": 31}),
                Usage::new(21, 10),
                (21.0 * 0.06 + 10.0 * 0.24) / 1e6,
            ),
            (
                json!({"inputTokens": 5, "outputTokens": 10, "totalTokens": 3015,
                       "cacheReadInputTokens": 2000, "cacheWriteInputTokens": 1000,
                       "cacheDetails": [{"inputTokens": 1000, "ttl": "5m"}]}),
                Usage {
                    cache_read_tokens: 2000,
                    cache_write_tokens: 1000,
                    ..Usage::new(3005, 10)
                },
                (5.0 * 0.06 + 2000.0 * 0.015 + 1000.0 * 0.06 + 10.0 * 0.24) / 1e6,
            ),
        ];
        for (i, (answered, want, usd)) in table.into_iter().enumerate() {
            let mut body: Value = serde_json::from_str(TEXT).unwrap();
            body["usage"] = answered;
            let out = completed(from_response(
                &gen(nova),
                &resp(200, &[], &body.to_string()),
                &c,
                NOW,
            ));
            assert_eq!(out.usage, Some(want), "case {i}");
            assert_eq!(out.output["usage"], json!(want), "case {i}");
            assert!(
                (out.cost_usd - usd).abs() < 1e-15,
                "case {i}: {}",
                out.cost_usd
            );
        }
    }

    #[test]
    fn reads_tool_answers() {
        let c = catalog();
        let schema = json!({"type": "object", "properties": {"label": {"type": "string"}, "confidence": {"type": "number"}}});
        // Classification: the tool input is the {label, confidence} answer.
        let r = req(
            HAIKU,
            Role::Classification,
            json!("refund please"),
            json!({"labels": ["billing", "tech"]}),
            None,
        );
        let out = completed(from_response(&r, &resp(200, &[], TOOL), &c, NOW));
        assert_eq!(out.output["label"], "billing");
        assert_eq!(out.output["confidence"], 0.92);
        assert_eq!(out.usage, Some(Usage::new(412, 58)));
        // Extraction with a schema: the tool input is the JSON, the text its serialization.
        let r = req(HAIKU, Role::Extraction, json!("x"), json!({}), Some(schema));
        let out = completed(from_response(&r, &resp(200, &[], TOOL), &c, NOW));
        assert_eq!(
            out.output["json"],
            json!({"label": "billing", "confidence": 0.92})
        );
        assert_eq!(out.output["finish_reason"], "stop");
        assert_eq!(
            serde_json::from_str::<Value>(out.output["text"].as_str().unwrap()).unwrap(),
            out.output["json"]
        );
        // A wrapped (array) schema is unwrapped, from a tool call or from text.
        let arr = req(
            HAIKU,
            Role::Extraction,
            json!("x"),
            json!({}),
            Some(json!({"type": "array"})),
        );
        let wrapped = TOOL.replace(
            r#""input": {"label": "billing", "confidence": 0.92}"#,
            r#""input": {"value": ["a", "b"]}"#,
        );
        assert_ne!(wrapped, TOOL);
        let out = completed(from_response(&arr, &resp(200, &[], &wrapped), &c, NOW));
        assert_eq!(out.output["json"], json!(["a", "b"]));
        let as_text = TEXT.replace("The cat sat on the mat.", r#"{\"value\": [\"c\"]}"#);
        let out = completed(from_response(&arr, &resp(200, &[], &as_text), &c, NOW));
        assert_eq!(out.output["json"], json!(["c"]));
        // A model that answered text that is not JSON: malformed, with repair details.
        let e = from_response(&arr, &resp(200, &[], TEXT), &c, NOW).unwrap_err();
        assert_eq!(e.class, ErrorClass::Malformed);
        assert!(!e.details.is_empty());
    }

    #[test]
    fn refusals_and_malformed_answers() {
        let c = catalog();
        let r = gen(HAIKU);
        // (case, body, class)
        let filtered = GUARDRAIL.replace("guardrail_intervened", "content_filtered");
        let table: Vec<(&str, String, ErrorClass)> = vec![
            ("guardrail", GUARDRAIL.to_string(), ErrorClass::Refused),
            ("content filter", filtered, ErrorClass::Refused),
            ("not json", "<html>".into(), ErrorClass::Malformed),
            ("no output", r#"{"stopReason": "end_turn"}"#.into(), ErrorClass::Malformed),
            ("empty content", r#"{"output": {"message": {"role": "assistant", "content": []}}, "stopReason": "end_turn"}"#.into(), ErrorClass::Malformed),
        ];
        for (case, body, class) in table {
            let e = from_response(&r, &resp(200, &[], &body), &c, NOW).unwrap_err();
            assert_eq!(e.class, class, "{case}: {e}");
            // The blocked text never reaches the error.
            assert!(
                !e.message.contains("Sorry, the model cannot answer"),
                "{case}"
            );
        }
    }

    #[test]
    fn errors_are_classified() {
        let c = catalog();
        let r = gen(HAIKU);
        // (status, x-amzn-ErrorType, body, class, retry_after_ms)
        let table: Vec<(u16, &str, &str, ErrorClass, Option<u64>)> = vec![
            (
                429,
                "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
                r#"{"message":"Too many requests, please wait before trying again."}"#,
                ErrorClass::RateLimited,
                None,
            ),
            (
                400,
                "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/",
                r#"{"message":"The provided model identifier is invalid."}"#,
                ErrorClass::Invalid,
                None,
            ),
            (
                403,
                "AccessDeniedException:http://internal.amazon.com/coral/com.amazon.coral.service/",
                r#"{"Message":"User: arn:aws:sts::123456789012:assumed-role/fn/x is not authorized to perform: bedrock:InvokeModel"}"#,
                ErrorClass::Auth,
                None,
            ),
            (
                408,
                "ModelTimeoutException:http://internal.amazon.com/coral/com.amazon.bedrock/",
                r#"{"message":"Model has timed out in processing the request."}"#,
                ErrorClass::Timeout,
                None,
            ),
            (
                503,
                "ServiceUnavailableException:http://internal.amazon.com/coral/com.amazon.bedrock/",
                r#"{"message":"Service unavailable"}"#,
                ErrorClass::Transient,
                None,
            ),
            (
                424,
                "ModelErrorException:http://internal.amazon.com/coral/com.amazon.bedrock/",
                r#"{"message":"The model failed"}"#,
                ErrorClass::Transient,
                None,
            ),
            (
                404,
                "ResourceNotFoundException:http://internal.amazon.com/coral/com.amazon.bedrock/",
                r#"{"message":"Could not resolve the foundation model"}"#,
                ErrorClass::Invalid,
                None,
            ),
        ];
        for (status, kind, body, class, after) in table {
            let e = from_response(
                &r,
                &resp(
                    status,
                    &[("x-amzn-ErrorType", kind), ("x-amzn-RequestId", "r")],
                    body,
                ),
                &c,
                NOW,
            )
            .unwrap_err();
            assert_eq!(e.class, class, "{kind}: {e}");
            assert_eq!(e.retry_after_ms, after, "{kind}");
            assert!(e.message.starts_with("bedrock answered"), "{e}");
        }
    }

    #[test]
    fn provider_without_credentials_is_auth() {
        let sender = Sender::new(crate::http::Timeouts::default()).unwrap();
        let p = Bedrock::new(ENDPOINT, "us-east-1", None, Arc::new(catalog()), sender);
        assert_eq!(p.name(), "bedrock");
        assert!(p.models().iter().any(|m| m.id == HAIKU));
        assert!(p.estimate_cost_usd(&gen(HAIKU)) > 0.0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt.block_on(p.invoke(&gen(HAIKU))).unwrap_err();
        assert_eq!(e.class, ErrorClass::Auth);
        assert!(e.message.contains("AWS credentials are not set"), "{e}");
        assert_eq!(
            rt.block_on(p.poll(&gen(HAIKU), "x")).unwrap_err().class,
            ErrorClass::Invalid
        );
        assert_eq!(
            p.parse_callback("bedrock/x", &json!({})).unwrap_err().class,
            ErrorClass::Invalid
        );
    }
}
