//! OpenAI's moderation endpoint (`POST {base}/moderations`), for the `omni-moderation-*` and
//! `text-moderation-*` models. Free to call: the price table lists them at 0.
//!
//! Request: `{"model": <name>, "input": <text>}`, the text read by [`hosted::input_text`] (the
//! one rule every moderation model shares). Response: `{id, model, results: [{flagged,
//! categories: {name: bool}, category_scores: {name: number}, category_applied_input_types?}]}`
//! — one result per input; one input is sent, so `results[0]` is the answer. It becomes
//! [`normalized::moderation`] with the category names exactly as OpenAI gives them
//! (`harassment/threatening`, `self-harm`, `illicit/violent`, …); `category_applied_input_types`
//! is dropped. Errors go through the one classifier, like the chat path.

use crate::catalog::Catalog;
use crate::classify::{check_status, Api};
use crate::hosted::{self, answered_by, field, invalid, malformed};
use crate::http::{HttpRequest, HttpResponse};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use switchyard_core::model::{
    normalized, split_model, ModelOutput, ModelRequest, ModelResponse, Role,
};
use switchyard_core::StepError;

/// Whether `model` (`openai/omni-moderation-latest` or the bare name) is one of OpenAI's
/// moderation models, which the moderations endpoint serves instead of chat completions.
pub fn is_moderation_model(model: &str) -> bool {
    let name = split_model(model).1;
    name.starts_with("omni-moderation") || name.starts_with("text-moderation")
}

/// `POST {base}/moderations` for a moderation step.
pub fn to_request(
    base_url: &str,
    api_key: Option<&str>,
    req: &ModelRequest,
) -> Result<HttpRequest, StepError> {
    if req.role != Role::Moderation {
        return Err(invalid(format!(
            "`{}` is a moderation model: it serves the moderation role only, not {}",
            req.model,
            req.role.as_str()
        )));
    }
    let text = hosted::input_text(&req.input);
    if text.trim().is_empty() {
        return Err(invalid("the moderation step has no text to judge"));
    }
    let url = format!("{}/moderations", base_url.trim_end_matches('/'));
    let body = json!({"model": req.model_name(), "input": text});
    Ok(super::post(url, &body, api_key))
}

/// Reads a moderations answer into the normalized moderation output.
pub fn from_response(
    req: &ModelRequest,
    resp: &HttpResponse,
    catalog: &Catalog,
    now_ms: u64,
) -> Result<ModelResponse, StepError> {
    check_status(Api::OpenAi, resp, now_ms)?;
    let body = resp
        .json()
        .ok_or_else(|| malformed("the OpenAI moderation answer is not JSON"))?;
    let result = field(&body, &["results", "0"], "openai")?;
    let categories = field(result, &["categories"], "openai")?
        .as_object()
        .ok_or_else(|| malformed("openai moderation `categories` is not an object"))?;
    let mut flags = BTreeMap::new();
    for (name, v) in categories {
        let flag = v.as_bool().ok_or_else(|| {
            malformed(format!(
                "openai moderation category `{name}` is not true or false"
            ))
        })?;
        flags.insert(name.clone(), flag);
    }
    let mut scores = BTreeMap::new();
    if let Some(s) = result.get("category_scores").and_then(Value::as_object) {
        for (name, v) in s {
            let score = v.as_f64().ok_or_else(|| {
                malformed(format!(
                    "openai moderation score of `{name}` is not a number"
                ))
            })?;
            scores.insert(name.clone(), score);
        }
    }
    let flagged = result
        .get("flagged")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let model = answered_by(req, super::answer_model(req, &body));
    Ok(ModelResponse::Completed(ModelOutput {
        output: normalized::moderation(flagged, flags, scores, &model),
        usage: None,
        // Priced at 0 in the table; asked anyway, so an override file can price it.
        cost_usd: catalog.cost_usd(&req.model, None, None),
        model,
        provider_request_id: super::request_id(resp, &body),
        sources: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_errors, catalog, response as resp, ErrorCase};
    use switchyard_core::ErrorClass;

    const OMNI: &str = include_str!("../../tests/fixtures/openai_moderation_omni.json");
    const TEXT: &str = include_str!("../../tests/fixtures/openai_moderation_text.json");
    const NOW: u64 = 1_700_000_000_000;
    const BASE: &str = "https://api.openai.com/v1";

    fn req(model: &str, role: Role, input: Value) -> ModelRequest {
        ModelRequest {
            input,
            ..crate::testing::request(model, role)
        }
    }

    #[test]
    fn which_models_use_the_endpoint() {
        let table = [
            ("openai/omni-moderation-latest", true),
            ("openai/omni-moderation-2024-09-26", true),
            ("openai/text-moderation-latest", true),
            ("text-moderation-stable", true),
            ("openai/gpt-4o-mini", false),
            ("ollama/llama3.2", false),
            ("openai/moderation", false),
        ];
        for (model, yes) in table {
            assert_eq!(is_moderation_model(model), yes, "{model}");
        }
    }

    #[test]
    fn request_shapes() {
        // (case, model, input, key, expected body, bearer)
        let table = [
            (
                "string input",
                "openai/omni-moderation-latest",
                json!("I will kill you"),
                Some("sk-test"),
                json!({"model": "omni-moderation-latest", "input": "I will kill you"}),
                Some("Bearer sk-test"),
            ),
            (
                "input.text",
                "openai/text-moderation-latest",
                json!({"text": "hello there", "lang": "en"}),
                None,
                json!({"model": "text-moderation-latest", "input": "hello there"}),
                None,
            ),
            (
                "structured input as JSON",
                "openai/omni-moderation-latest",
                json!({"title": "hi"}),
                Some(" "),
                json!({"model": "omni-moderation-latest", "input": "{\"title\":\"hi\"}"}),
                None,
            ),
        ];
        for (case, model, input, key, body, bearer) in table {
            let mut r = req(model, Role::Moderation, input);
            // Instructions and feedback never reach the moderation endpoint.
            r.feedback = vec!["be nicer".into()];
            let http = to_request(&format!("{BASE}/"), key, &r).unwrap();
            assert_eq!(http.method, "POST", "{case}");
            assert_eq!(http.url, format!("{BASE}/moderations"), "{case}");
            let sent: Value = serde_json::from_slice(http.body.as_deref().unwrap()).unwrap();
            assert_eq!(sent, body, "{case}");
            let auth = http
                .headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .map(|(_, v)| v.as_str());
            assert_eq!(auth, bearer, "{case}");
        }
        // (case, request): refused before sending.
        let table = [
            (
                "not the moderation role",
                req(
                    "openai/omni-moderation-latest",
                    Role::Classification,
                    json!("x"),
                ),
            ),
            (
                "nothing to judge",
                req(
                    "openai/omni-moderation-latest",
                    Role::Moderation,
                    json!("  "),
                ),
            ),
        ];
        for (case, r) in table {
            let e = to_request(BASE, Some("sk"), &r).unwrap_err();
            assert_eq!(e.class, ErrorClass::Invalid, "{case}: {e}");
        }
    }

    #[test]
    fn answers_normalize() {
        let c = catalog();
        let omni = req(
            "openai/omni-moderation-latest",
            Role::Moderation,
            json!("x"),
        );
        let text = req(
            "openai/text-moderation-latest",
            Role::Moderation,
            json!("x"),
        );
        let clean = OMNI
            .replace("\"flagged\": true", "\"flagged\": false")
            .replace("\"violence\": true", "\"violence\": false")
            .replace(
                "\"harassment/threatening\": true",
                "\"harassment/threatening\": false",
            );
        assert_ne!(clean, OMNI);
        // (case, request, body, headers, flagged, true categories, one score, model, request id)
        type Case<'a> = (
            &'a str,
            &'a ModelRequest,
            &'a str,
            Vec<(&'a str, &'a str)>,
            bool,
            Vec<&'a str>,
            (&'a str, f64),
            &'a str,
            &'a str,
        );
        let table: Vec<Case> = vec![
            (
                "omni, flagged",
                &omni,
                OMNI,
                vec![("x-request-id", "req_mod1")],
                true,
                vec!["harassment/threatening", "violence"],
                ("violence", 0.9724),
                "openai/omni-moderation-latest",
                "req_mod1",
            ),
            (
                "omni, clean (the body's id without the header)",
                &omni,
                &clean,
                vec![],
                false,
                vec![],
                ("self-harm", 0.0011),
                "openai/omni-moderation-latest",
                "modr-970d409ef3bef3b70c73d8232df86e7d",
            ),
            (
                "legacy text model",
                &text,
                TEXT,
                vec![],
                true,
                vec!["harassment"],
                ("harassment", 0.8412),
                "openai/text-moderation-007",
                "modr-AB8CjOTu2jiq12hp1AQPfeqFWaORR",
            ),
        ];
        for (case, r, body, headers, flagged, trues, (cat, score), model, id) in table {
            let ModelResponse::Completed(out) =
                from_response(r, &resp(200, &headers, body), &c, NOW).unwrap()
            else {
                panic!("{case}: not completed");
            };
            assert_eq!(out.output["flagged"], flagged, "{case}");
            let on: Vec<&str> = out.output["categories"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.as_str())
                .collect();
            assert_eq!(on, trues, "{case}");
            assert_eq!(out.output["scores"][cat], score, "{case}");
            assert_eq!(out.output["model"], model, "{case}");
            assert_eq!(out.model, model, "{case}");
            assert_eq!(out.provider_request_id.as_deref(), Some(id), "{case}");
            assert_eq!((out.usage, out.cost_usd), (None, 0.0), "{case}: free");
            assert_eq!(
                out.output.as_object().unwrap().keys().collect::<Vec<_>>(),
                ["flagged", "categories", "scores", "model"],
                "{case}"
            );
        }
        // The omni categories, all of them, as OpenAI names them.
        let ModelResponse::Completed(out) =
            from_response(&omni, &resp(200, &[], OMNI), &c, NOW).unwrap()
        else {
            panic!("not completed");
        };
        assert_eq!(out.output["categories"].as_object().unwrap().len(), 13);
        assert_eq!(out.output["scores"].as_object().unwrap().len(), 13);
        assert!(out.output["categories"].get("illicit/violent").is_some());
    }

    #[test]
    fn failures_are_classified() {
        let c = catalog();
        let r = req(
            "openai/omni-moderation-latest",
            Role::Moderation,
            json!("x"),
        );
        let table: Vec<ErrorCase> = vec![
            (
                "429",
                429,
                vec![("retry-after", "3")],
                r#"{"error":{"message":"Rate limit reached for omni-moderation-latest","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
                ErrorClass::RateLimited,
                Some(3000),
            ),
            (
                "quota",
                429,
                vec![],
                r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
                ErrorClass::QuotaExhausted,
                None,
            ),
            (
                "401",
                401,
                vec![],
                r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
                ErrorClass::Auth,
                None,
            ),
            (
                "500",
                500,
                vec![],
                r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#,
                ErrorClass::Transient,
                None,
            ),
            (
                "not JSON",
                200,
                vec![],
                "<html>",
                ErrorClass::Malformed,
                None,
            ),
            (
                "no results",
                200,
                vec![],
                r#"{"id":"modr-1","model":"omni-moderation-latest","results":[]}"#,
                ErrorClass::Malformed,
                None,
            ),
            (
                "no categories",
                200,
                vec![],
                r#"{"id":"modr-1","results":[{"flagged":false}]}"#,
                ErrorClass::Malformed,
                None,
            ),
            (
                "a category that is not a flag",
                200,
                vec![],
                r#"{"id":"modr-1","results":[{"flagged":false,"categories":{"hate":"no"}}]}"#,
                ErrorClass::Malformed,
                None,
            ),
            (
                "a score that is not a number",
                200,
                vec![],
                r#"{"id":"modr-1","results":[{"flagged":false,"categories":{"hate":false},"category_scores":{"hate":"low"}}]}"#,
                ErrorClass::Malformed,
                None,
            ),
        ];
        assert_errors(table, |resp| from_response(&r, resp, &c, NOW));
    }
}
