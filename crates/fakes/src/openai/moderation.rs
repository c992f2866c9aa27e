//! OpenAI moderations (`POST /v1/moderations`), deterministic: a few trigger words flag their
//! categories, everything else scores near zero.
//!
//! Shapes follow the API reference's moderation object: `{id: "modr-…", model, results: [{flagged,
//! categories, category_scores, category_applied_input_types}]}`, one result per input (a string,
//! a list of strings, or a list of `{type: "text", text}` parts, which count as one input). The
//! omni models report 13 categories (with `illicit` and `illicit/violent`) and the input types
//! each applied to; `text-moderation-*` reports the 11 older ones and answers as
//! `text-moderation-007`. The script's error behaviours, `slow` and `malformed` apply as on the
//! other routes; the others answer normally.

use super::{answer, error, prelude, Prelude};
use crate::util::random_hex;
use crate::{Incoming, Shared};
use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The categories of the omni models, in the order the API lists them.
pub const OMNI_CATEGORIES: [&str; 13] = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

/// Whole words (case-insensitive) that flag categories: `kill` flags `violence` and
/// `harassment/threatening`, `gore` `violence/graphic`, `idiot` `harassment`, `vermin` `hate`,
/// `suicide` `self-harm` and `self-harm/intent`, `nude` `sexual`, `cocaine` `illicit`.
pub const TRIGGERS: &[(&str, &[&str])] = &[
    ("kill", &["violence", "harassment/threatening"]),
    ("gore", &["violence", "violence/graphic"]),
    ("idiot", &["harassment"]),
    ("vermin", &["hate"]),
    ("suicide", &["self-harm", "self-harm/intent"]),
    ("nude", &["sexual"]),
    ("cocaine", &["illicit"]),
];

/// Score of a triggered category, and of every other one.
const FLAGGED_SCORE: f64 = 0.9731;
const CLEAN_SCORE: f64 = 0.000112;

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The inputs a request names, or `None` when `input` is missing or of no known shape.
fn inputs(v: &Value) -> Option<Vec<String>> {
    match v.get("input")? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) if items.iter().all(Value::is_string) && !items.is_empty() => Some(
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
        ),
        Value::Array(parts) if !parts.is_empty() => {
            let text: Vec<&str> = parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            (!text.is_empty()).then(|| vec![text.join("\n")])
        }
        _ => None,
    }
}

/// One moderation result for one text.
pub fn result_for(text: &str, omni: bool) -> Value {
    let ws = words(text);
    let mut hit: Vec<&str> = Vec::new();
    for (word, cats) in TRIGGERS {
        if ws.iter().any(|w| w == word) {
            hit.extend(cats.iter());
        }
    }
    let names: Vec<&str> = OMNI_CATEGORIES
        .iter()
        .copied()
        .filter(|c| omni || !c.starts_with("illicit"))
        .collect();
    let mut categories = Map::new();
    let mut scores = Map::new();
    let mut types = Map::new();
    for name in &names {
        let on = hit.contains(name);
        categories.insert(name.to_string(), json!(on));
        scores.insert(
            name.to_string(),
            json!(if on { FLAGGED_SCORE } else { CLEAN_SCORE }),
        );
        types.insert(name.to_string(), json!(["text"]));
    }
    let flagged = categories.values().any(|v| v == &json!(true));
    let mut result =
        json!({"flagged": flagged, "categories": categories, "category_scores": scores});
    if omni {
        result["category_applied_input_types"] = Value::Object(types);
    }
    result
}

pub(crate) async fn moderations(State(s): State<Arc<Shared>>, req: Incoming) -> Response {
    let Prelude {
        b,
        request_id,
        model,
        body: v,
    } = match prelude(&s, &req, "omni-moderation-latest").await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(texts) = inputs(&v) else {
        return error(
            400,
            &request_id,
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
            "invalid_request_error",
            Some("input"),
            None,
        );
    };
    let omni = !model.starts_with("text-moderation");
    let answered = if model == "text-moderation-latest" || model == "text-moderation-stable" {
        "text-moderation-007".to_string()
    } else {
        model
    };
    let out = json!({
        "id": format!("modr-{}", random_hex(32)),
        "model": answered,
        "results": texts.iter().map(|t| result_for(t, omni)).collect::<Vec<_>>(),
    });
    answer(&b, &request_id, &out)
}
