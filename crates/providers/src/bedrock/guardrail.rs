//! Amazon Bedrock Guardrails as a moderation model, through **Converse**: the step's model is
//! `bedrock/guardrail`, its params name the guardrail and the Converse model that carries it.
//!
//! | param | meaning |
//! |---|---|
//! | `guardrail_id` (required) | the guardrail's id (`gr7x3k2q9abc`) or ARN |
//! | `guardrail_version` (required) | `1`, `2`, … or `DRAFT` (a string or a number) |
//! | `model` | the Converse model id (`bedrock/` optional); default [`DEFAULT_MODEL`] |
//! | `max_tokens` | cap on the model's reply, which is discarded; default [`DEFAULT_MAX_TOKENS`] |
//!
//! Request: `POST /model/{model}/converse` with the text to judge (read by
//! [`hosted::input_text`]) as the only user message — so the guardrail assesses exactly that
//! text — no system prompt, `inferenceConfig.maxTokens` small, and `guardrailConfig
//! {guardrailIdentifier, guardrailVersion, trace: "enabled"}`. Signed like every Bedrock call.
//!
//! Response: `stopReason` (`guardrail_intervened` when the guardrail blocked the text) and the
//! trace, `trace.guardrail.inputAssessment` (guardrail id → assessment) and
//! `outputAssessments` (guardrail id → list of assessments of the model's reply), whose findings
//! become categories:
//!
//! | finding | category | score |
//! |---|---|---|
//! | `contentPolicy.filters[]` `{type, confidence, action, detected}` | the type in lower case: `hate`, `insults`, `sexual`, `violence`, `misconduct`, `prompt_attack` | confidence `NONE` 0, `LOW` 0.3333, `MEDIUM` 0.6667, `HIGH` 1 |
//! | `topicPolicy.topics[]` `{name, action, detected}` | `topic:<name>` | 1 when found, else 0 |
//! | `wordPolicy.customWords[]` / `managedWordLists[]` `{match, type}` | `custom_words` / the list type in lower case (`profanity`) | 1 / 0 |
//! | `sensitiveInformationPolicy.piiEntities[]` / `regexes[]` | `pii:<type in lower case>` / `regex:<name>` | 1 / 0 |
//!
//! A finding counts (its category is `true`) when the guardrail acted on it (`action` other
//! than `NONE`: `BLOCKED`, `ANONYMIZED`) or reports it `detected` (a policy in detect-only
//! mode). A category found several times is `true` if any finding counts, with the highest
//! score. `guardrail_intervened` without a finding in the trace gives the category `guardrail`;
//! the model's own filter (`content_filtered`) gives `content_filtered`. Contextual grounding
//! and automated reasoning policies are not moderation and are ignored.
//!
//! Cost: the Converse model's tokens at its table price, plus the `bedrock/guardrail` entry's
//! own price (0 in the built-in table). AWS bills guardrail policy units separately; they are
//! not counted here.

use super::{check_url, encode_segment, read_usage};
use crate::catalog::Catalog;
use crate::classify::{check_status, Api};
use crate::hosted::{self, invalid, malformed};
use crate::http::{HttpRequest, HttpResponse};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use switchyard_core::model::{
    normalized, split_model, ModelOutput, ModelRequest, ModelResponse, Role,
};
use switchyard_core::state::Usage;
use switchyard_core::StepError;

/// The model id of a guardrail step.
pub const MODEL_ID: &str = "bedrock/guardrail";
/// The Converse model that carries the guardrail when `params.model` names none: cheap, and
/// supports guardrails.
pub const DEFAULT_MODEL: &str = "amazon.nova-lite-v1:0";
/// The model's reply is discarded, so it is kept short.
pub const DEFAULT_MAX_TOKENS: u64 = 16;

/// Whether a step's model is a guardrail (`bedrock/guardrail`).
pub fn is_guardrail(model: &str) -> bool {
    split_model(model) == ("bedrock", "guardrail")
}

/// What a guardrail step's params say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guardrail {
    pub id: String,
    pub version: String,
    /// The Converse model id, without the `bedrock/` prefix.
    pub model: String,
    pub max_tokens: u64,
}

impl Guardrail {
    /// Reads and checks `params` (the patterns are the Converse API's own).
    pub fn from_request(req: &ModelRequest) -> Result<Guardrail, StepError> {
        let p = &req.params;
        let id = p
            .get("guardrail_id")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                invalid("bedrock/guardrail needs params.guardrail_id (the guardrail's id or ARN)")
            })?;
        if !valid_id(id) {
            return Err(invalid(format!(
                "params.guardrail_id `{id}` is neither a guardrail id (lower-case letters and digits) nor a guardrail ARN"
            )));
        }
        let version = match p.get("guardrail_version") {
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(invalid(
                    "bedrock/guardrail needs params.guardrail_version (`1`, `2`, … or `DRAFT`)",
                ))
            }
        };
        if !valid_version(&version) {
            return Err(invalid(format!(
                "params.guardrail_version `{version}` must be a version number (1–99999999) or DRAFT"
            )));
        }
        let model = match p.get("model") {
            None | Some(Value::Null) => DEFAULT_MODEL.to_string(),
            Some(Value::String(m)) => {
                let m = m.trim();
                let m = m.strip_prefix("bedrock/").unwrap_or(m);
                if m.is_empty() || m == "guardrail" {
                    return Err(invalid(
                        "params.model must name the Converse model that carries the guardrail",
                    ));
                }
                m.to_string()
            }
            Some(_) => return Err(invalid("params.model must be a Bedrock model id string")),
        };
        let max_tokens = match p.get("max_tokens") {
            None | Some(Value::Null) => DEFAULT_MAX_TOKENS,
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("params.max_tokens must be a positive integer"))?,
        };
        Ok(Guardrail {
            id: id.to_string(),
            version,
            model,
            max_tokens,
        })
    }

    /// `bedrock/<model>`: the catalog entry the tokens are priced by.
    pub fn model_id(&self) -> String {
        format!("bedrock/{}", self.model)
    }

    /// What the normalized output names as its model: `bedrock/guardrail/<id>:<version>`.
    pub fn judge(&self) -> String {
        format!("{MODEL_ID}/{}:{}", self.id, self.version)
    }
}

fn lower_digits(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// `[a-z0-9]+` or `arn:aws(-…)?:bedrock:<region>:<12 digits>:guardrail/[a-z0-9]+`.
fn valid_id(id: &str) -> bool {
    if lower_digits(id) {
        return true;
    }
    let parts: Vec<&str> = id.split(':').collect();
    match parts.as_slice() {
        [arn, partition, "bedrock", region, account, resource] => {
            *arn == "arn"
                && (*partition == "aws" || partition.starts_with("aws-"))
                && (1..=20).contains(&region.len())
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource
                    .strip_prefix("guardrail/")
                    .is_some_and(lower_digits)
        }
        _ => false,
    }
}

/// `[1-9][0-9]{0,7}` or `DRAFT`.
fn valid_version(v: &str) -> bool {
    v == "DRAFT"
        || (!v.is_empty()
            && v.len() <= 8
            && v.bytes().all(|b| b.is_ascii_digit())
            && !v.starts_with('0'))
}

/// The unsigned Converse request that runs the guardrail over the step's text.
pub fn to_request(endpoint: &str, req: &ModelRequest) -> Result<HttpRequest, StepError> {
    if req.role != Role::Moderation {
        return Err(invalid(format!(
            "{MODEL_ID} serves the moderation role only, not {}",
            req.role.as_str()
        )));
    }
    let g = Guardrail::from_request(req)?;
    let text = hosted::input_text(&req.input);
    if text.trim().is_empty() {
        return Err(invalid("the moderation step has no text to judge"));
    }
    let endpoint = endpoint.trim_end_matches('/');
    check_url(endpoint)?;
    let url = format!("{endpoint}/model/{}/converse", encode_segment(&g.model));
    let body = json!({
        "messages": [{"role": "user", "content": [{"text": text}]}],
        "inferenceConfig": {"maxTokens": g.max_tokens},
        "guardrailConfig": {
            "guardrailIdentifier": g.id,
            "guardrailVersion": g.version,
            "trace": "enabled",
        },
    });
    Ok(HttpRequest::post_json(url, &body).header("accept", "application/json"))
}

/// Categories and scores gathered from the trace's findings.
#[derive(Debug, Default)]
struct Findings {
    categories: BTreeMap<String, bool>,
    scores: BTreeMap<String, f64>,
}

impl Findings {
    fn add(&mut self, category: String, hit: bool, score: f64) {
        let flag = self.categories.entry(category.clone()).or_insert(false);
        *flag |= hit;
        let best = self.scores.entry(category).or_insert(0.0);
        *best = best.max(score);
    }

    /// Every finding of one `GuardrailAssessment`.
    fn assessment(&mut self, a: &Value) {
        let list = |path: [&str; 2]| -> &[Value] {
            a.get(path[0])
                .and_then(|p| p.get(path[1]))
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[])
        };
        let text = |v: &Value, k: &str| -> Option<String> {
            v.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .map(str::to_string)
        };
        for f in list(["contentPolicy", "filters"]) {
            let Some(kind) = text(f, "type") else {
                continue;
            };
            let hit = counts(f);
            let score = match f.get("confidence").and_then(Value::as_str) {
                Some("HIGH") => 1.0,
                Some("MEDIUM") => 2.0 / 3.0,
                Some("LOW") => 1.0 / 3.0,
                Some(_) => 0.0,
                None => flag_score(hit),
            };
            self.add(kind.to_ascii_lowercase(), hit, score);
        }
        for t in list(["topicPolicy", "topics"]) {
            let Some(name) = text(t, "name") else {
                continue;
            };
            let hit = counts(t);
            self.add(format!("topic:{name}"), hit, flag_score(hit));
        }
        for w in list(["wordPolicy", "customWords"]) {
            let hit = counts(w);
            self.add("custom_words".into(), hit, flag_score(hit));
        }
        for w in list(["wordPolicy", "managedWordLists"]) {
            let kind = text(w, "type").unwrap_or_else(|| "managed_words".into());
            let hit = counts(w);
            self.add(kind.to_ascii_lowercase(), hit, flag_score(hit));
        }
        for e in list(["sensitiveInformationPolicy", "piiEntities"]) {
            let Some(kind) = text(e, "type") else {
                continue;
            };
            let hit = counts(e);
            self.add(
                format!("pii:{}", kind.to_ascii_lowercase()),
                hit,
                flag_score(hit),
            );
        }
        for r in list(["sensitiveInformationPolicy", "regexes"]) {
            let name = text(r, "name").unwrap_or_else(|| "unnamed".into());
            let hit = counts(r);
            self.add(format!("regex:{name}"), hit, flag_score(hit));
        }
    }

    fn any(&self) -> bool {
        self.categories.values().any(|c| *c)
    }
}

/// Whether a finding counts: the guardrail acted on it, or reports it detected.
fn counts(finding: &Value) -> bool {
    let acted = finding
        .get("action")
        .and_then(Value::as_str)
        .is_some_and(|a| a != "NONE");
    acted || finding.get("detected").and_then(Value::as_bool) == Some(true)
}

fn flag_score(hit: bool) -> f64 {
    if hit {
        1.0
    } else {
        0.0
    }
}

/// The assessments in a trace map: `inputAssessment` maps a guardrail id to one assessment,
/// `outputAssessments` to a list of them.
fn assessments(map: Option<&Value>) -> Vec<&Value> {
    let Some(Value::Object(m)) = map else {
        return Vec::new();
    };
    m.values()
        .flat_map(|v| match v {
            Value::Array(a) => a.iter().collect::<Vec<_>>(),
            other => vec![other],
        })
        .collect()
}

/// Reads a Converse answer of a guardrail step into the normalized moderation output.
pub fn from_response(
    req: &ModelRequest,
    resp: &HttpResponse,
    catalog: &Catalog,
    now_ms: u64,
) -> Result<ModelResponse, StepError> {
    check_status(Api::Bedrock, resp, now_ms)?;
    let g = Guardrail::from_request(req)?;
    let body = resp
        .json()
        .ok_or_else(|| malformed("bedrock response is not JSON"))?;
    let stop = body
        .get("stopReason")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("bedrock response lacks `stopReason`"))?;
    let trace = body.get("trace").and_then(|t| t.get("guardrail"));
    let mut findings = Findings::default();
    for a in assessments(trace.and_then(|t| t.get("inputAssessment")))
        .into_iter()
        .chain(assessments(trace.and_then(|t| t.get("outputAssessments"))))
    {
        findings.assessment(a);
    }
    match stop {
        "guardrail_intervened" if !findings.any() => findings.add("guardrail".into(), true, 1.0),
        "content_filtered" => findings.add("content_filtered".into(), true, 1.0),
        _ => {}
    }
    let usage = read_usage(&body);
    let output = normalized::moderation(
        findings.any(),
        findings.categories,
        findings.scores,
        &g.judge(),
    );
    Ok(ModelResponse::Completed(ModelOutput {
        output,
        usage,
        cost_usd: cost_usd(catalog, &g, &req.model, usage),
        model: req.model.clone(),
        provider_request_id: resp.header("x-amzn-requestid").map(str::to_string),
        sources: Vec::new(),
    }))
}

/// The carrying model's tokens at its price, plus the guardrail entry's own price.
fn cost_usd(catalog: &Catalog, g: &Guardrail, model: &str, usage: Option<Usage>) -> f64 {
    catalog.cost_usd(&g.model_id(), usage, None) + catalog.cost_usd(model, usage, None)
}

/// The budget's upper estimate: the text in, `max_tokens` out, at the carrying model's price.
pub fn estimate_usd(catalog: &Catalog, req: &ModelRequest) -> f64 {
    let Ok(g) = Guardrail::from_request(req) else {
        return 0.0;
    };
    let input = crate::catalog::estimate_tokens(&hosted::input_text(&req.input));
    catalog.estimate_usd(&g.model_id(), input, Some(g.max_tokens))
        + catalog.estimate_usd(&req.model, input, Some(g.max_tokens))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_errors, catalog, response as resp, ErrorCase};
    use switchyard_core::ErrorClass;

    const ENDPOINT: &str = "https://bedrock-runtime.us-east-1.amazonaws.com";
    const BLOCKED: &str =
        include_str!("../../tests/fixtures/bedrock_converse_guardrail_trace.json");
    const PASSED: &str = include_str!("../../tests/fixtures/bedrock_converse_guardrail_pass.json");
    const NOW: u64 = 1_700_000_000_000;

    fn req(input: Value, params: Value) -> ModelRequest {
        ModelRequest {
            input,
            params,
            ..crate::testing::request(MODEL_ID, Role::Moderation)
        }
    }

    fn params() -> Value {
        json!({"guardrail_id": "gr7x3k2q9abc", "guardrail_version": "1"})
    }

    fn output(r: &ModelRequest, body: &str) -> ModelOutput {
        match from_response(
            r,
            &resp(200, &[("x-amzn-RequestId", "rid-1")], body),
            &catalog(),
            NOW,
        ) {
            Ok(ModelResponse::Completed(o)) => o,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn the_model_id() {
        for (model, yes) in [
            ("bedrock/guardrail", true),
            ("bedrock/guardrails", false),
            ("openai/guardrail", false),
            ("bedrock/anthropic.claude-3-haiku-20240307-v1:0", false),
        ] {
            assert_eq!(is_guardrail(model), yes, "{model}");
        }
    }

    #[test]
    fn request_shapes() {
        let arn = "arn:aws:bedrock:eu-west-1:123456789012:guardrail/gr7x3k2q9abc";
        // (case, input, params, path, guardrailConfig, maxTokens)
        let table = [
            (
                "defaults",
                json!("I will hurt you"),
                params(),
                "/model/amazon.nova-lite-v1%3A0/converse",
                json!({"guardrailIdentifier": "gr7x3k2q9abc", "guardrailVersion": "1", "trace": "enabled"}),
                16,
                "I will hurt you",
            ),
            (
                "ARN, numeric version, another model, input.text",
                json!({"text": "hello", "user": 7}),
                json!({"guardrail_id": arn, "guardrail_version": 3,
                       "model": "bedrock/anthropic.claude-3-haiku-20240307-v1:0", "max_tokens": 4}),
                "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
                json!({"guardrailIdentifier": arn, "guardrailVersion": "3", "trace": "enabled"}),
                4,
                "hello",
            ),
            (
                "draft",
                json!("x"),
                json!({"guardrail_id": "abc", "guardrail_version": "DRAFT", "model": "amazon.nova-lite-v1:0"}),
                "/model/amazon.nova-lite-v1%3A0/converse",
                json!({"guardrailIdentifier": "abc", "guardrailVersion": "DRAFT", "trace": "enabled"}),
                16,
                "x",
            ),
        ];
        for (case, input, params, path, config, max_tokens, text) in table {
            let mut r = req(input, params);
            r.feedback = vec!["not sent".into()];
            let http = to_request(&format!("{ENDPOINT}/"), &r).unwrap();
            assert_eq!(http.method, "POST", "{case}");
            assert_eq!(http.url, format!("{ENDPOINT}{path}"), "{case}");
            let b: Value = serde_json::from_slice(http.body.as_deref().unwrap()).unwrap();
            assert_eq!(b["guardrailConfig"], config, "{case}");
            assert_eq!(
                b["messages"],
                json!([{"role": "user", "content": [{"text": text}]}]),
                "{case}: the text alone, so the guardrail judges exactly it"
            );
            assert_eq!(
                b["inferenceConfig"],
                json!({"maxTokens": max_tokens}),
                "{case}"
            );
            assert!(b.get("system").is_none(), "{case}: no instructions sent");
            assert!(b.get("toolConfig").is_none(), "{case}");
        }
    }

    #[test]
    fn bad_steps_are_invalid_before_sending() {
        let mut generation = req(json!("x"), params());
        generation.role = Role::Generation;
        // (case, request, part of the message)
        let table = vec![
            ("not moderation", generation, "moderation role only"),
            (
                "no id",
                req(json!("x"), json!({"guardrail_version": "1"})),
                "guardrail_id",
            ),
            (
                "bad id",
                req(
                    json!("x"),
                    json!({"guardrail_id": "GR-1", "guardrail_version": "1"}),
                ),
                "guardrail_id",
            ),
            (
                "bad ARN",
                req(
                    json!("x"),
                    json!({"guardrail_id": "arn:aws:bedrock:us-east-1:123:guardrail/x", "guardrail_version": "1"}),
                ),
                "guardrail_id",
            ),
            (
                "no version",
                req(json!("x"), json!({"guardrail_id": "abc"})),
                "guardrail_version",
            ),
            (
                "version 0",
                req(
                    json!("x"),
                    json!({"guardrail_id": "abc", "guardrail_version": 0}),
                ),
                "guardrail_version",
            ),
            (
                "version draft",
                req(
                    json!("x"),
                    json!({"guardrail_id": "abc", "guardrail_version": "draft"}),
                ),
                "guardrail_version",
            ),
            (
                "model not a string",
                req(
                    json!("x"),
                    json!({"guardrail_id": "abc", "guardrail_version": "1", "model": 5}),
                ),
                "params.model",
            ),
            (
                "model is the guardrail",
                req(
                    json!("x"),
                    json!({"guardrail_id": "abc", "guardrail_version": "1", "model": "bedrock/guardrail"}),
                ),
                "params.model",
            ),
            (
                "max_tokens 0",
                req(
                    json!("x"),
                    json!({"guardrail_id": "abc", "guardrail_version": "1", "max_tokens": 0}),
                ),
                "max_tokens",
            ),
            ("no text", req(json!(""), params()), "no text"),
        ];
        for (case, r, message) in table {
            let e = to_request(ENDPOINT, &r).unwrap_err();
            assert_eq!(e.class, ErrorClass::Invalid, "{case}: {e}");
            assert!(e.message.contains(message), "{case}: {e}");
        }
    }

    #[test]
    fn traces_become_categories() {
        let r = req(json!("x"), params());
        let detect_only = r#"{"output": {"message": {"role": "assistant", "content": [{"text": "Noted."}]}},
            "stopReason": "end_turn", "usage": {"inputTokens": 30, "outputTokens": 2, "totalTokens": 32},
            "trace": {"guardrail": {"inputAssessment": {"abc": {
                "sensitiveInformationPolicy": {
                    "piiEntities": [{"match": "ann@example.com", "type": "EMAIL", "action": "NONE", "detected": true}],
                    "regexes": [{"name": "order_id", "match": "A-123", "regex": "A-\\d+", "action": "NONE", "detected": false}]},
                "wordPolicy": {"customWords": [{"match": "frobnicate", "action": "NONE", "detected": true}]}}}}}}"#;
        let in_reply = r#"{"output": {"message": {"role": "assistant", "content": [{"text": "Sorry."}]}},
            "stopReason": "guardrail_intervened", "usage": {"inputTokens": 12, "outputTokens": 5, "totalTokens": 17},
            "trace": {"guardrail": {"inputAssessment": {"abc": {"invocationMetrics": {"guardrailProcessingLatency": 90}}},
                "outputAssessments": {"abc": [{"contentPolicy": {"filters": [
                    {"type": "SEXUAL", "confidence": "MEDIUM", "action": "BLOCKED"}]}}]}}}}"#;
        let no_trace = r#"{"output": {"message": {"role": "assistant", "content": [{"text": "Sorry."}]}},
            "stopReason": "guardrail_intervened", "usage": {"inputTokens": 0, "outputTokens": 0, "totalTokens": 0}}"#;
        let filtered = PASSED.replace("\"end_turn\"", "\"content_filtered\"");
        // (case, body, output)
        let table = vec![
            (
                "blocked input",
                BLOCKED.to_string(),
                json!({"flagged": true,
                       "categories": {"insults": false, "profanity": true, "topic:Weapons": true, "violence": true},
                       "scores": {"insults": 0.3333, "profanity": 1.0, "topic:Weapons": 1.0, "violence": 1.0},
                       "model": "bedrock/guardrail/gr7x3k2q9abc:1"}),
            ),
            (
                "clean",
                PASSED.to_string(),
                json!({"flagged": false, "categories": {}, "scores": {}, "model": "bedrock/guardrail/gr7x3k2q9abc:1"}),
            ),
            (
                "detect-only findings still flag",
                detect_only.to_string(),
                json!({"flagged": true,
                       "categories": {"custom_words": true, "pii:email": true, "regex:order_id": false},
                       "scores": {"custom_words": 1.0, "pii:email": 1.0, "regex:order_id": 0.0},
                       "model": "bedrock/guardrail/gr7x3k2q9abc:1"}),
            ),
            (
                "the model's reply blocked (an older trace: no `detected`)",
                in_reply.to_string(),
                json!({"flagged": true, "categories": {"sexual": true}, "scores": {"sexual": 0.6667},
                       "model": "bedrock/guardrail/gr7x3k2q9abc:1"}),
            ),
            (
                "intervened without a trace",
                no_trace.to_string(),
                json!({"flagged": true, "categories": {"guardrail": true}, "scores": {"guardrail": 1.0},
                       "model": "bedrock/guardrail/gr7x3k2q9abc:1"}),
            ),
            (
                "the model's own filter",
                filtered,
                json!({"flagged": true, "categories": {"content_filtered": true}, "scores": {"content_filtered": 1.0},
                       "model": "bedrock/guardrail/gr7x3k2q9abc:1"}),
            ),
        ];
        for (case, body, want) in table {
            let out = output(&r, &body);
            assert_eq!(out.output, want, "{case}");
            assert_eq!(out.model, MODEL_ID, "{case}");
            assert_eq!(out.provider_request_id.as_deref(), Some("rid-1"), "{case}");
        }
    }

    #[test]
    fn cost_is_the_carrying_models_tokens() {
        let c = catalog();
        let r = req(json!("x"), params());
        let out = output(&r, PASSED);
        let usage = out.usage.unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (25, 3));
        // amazon.nova-lite-v1:0: 0.06 / 0.24 per million tokens.
        let want = 25.0 * 0.06 / 1e6 + 3.0 * 0.24 / 1e6;
        assert!((out.cost_usd - want).abs() < 1e-15, "{}", out.cost_usd);
        let estimate = estimate_usd(&c, &req(json!("x".repeat(100)), params()));
        assert!(estimate > 0.0 && estimate >= out.cost_usd, "{estimate}");
        // A model the table does not price costs 0 (and says so by being 0, not an error).
        let mut other = params();
        other["model"] = json!("cohere.command-r-v1:0");
        assert_eq!(output(&req(json!("x"), other), PASSED).cost_usd, 0.0);
        assert_eq!(estimate_usd(&c, &req(json!("x"), json!({}))), 0.0);
    }

    #[test]
    fn errors_are_classified() {
        let c = catalog();
        let r = req(json!("x"), params());
        let table: Vec<ErrorCase> = vec![
            (
                "throttled",
                429,
                vec![("x-amzn-ErrorType", "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"), ("retry-after", "2")],
                r#"{"message":"Too many requests, please wait before trying again."}"#,
                ErrorClass::RateLimited,
                Some(2000),
            ),
            (
                "no such guardrail",
                400,
                vec![("x-amzn-ErrorType", "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/")],
                r#"{"message":"The guardrail identifier or version provided in the request does not exist."}"#,
                ErrorClass::Invalid,
                None,
            ),
            (
                "access denied",
                403,
                vec![("x-amzn-ErrorType", "AccessDeniedException:http://internal.amazon.com/coral/com.amazon.coral.service/")],
                r#"{"Message":"not authorized to perform: bedrock:ApplyGuardrail"}"#,
                ErrorClass::Auth,
                None,
            ),
            ("not JSON", 200, vec![], "<html>", ErrorClass::Malformed, None),
            ("no stopReason", 200, vec![], r#"{"output": {}}"#, ErrorClass::Malformed, None),
        ];
        assert_errors(table, |resp| from_response(&r, resp, &c, NOW));
    }
}
