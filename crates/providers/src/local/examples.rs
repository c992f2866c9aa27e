//! `local/example-classifier`: labels a text by the labelled examples it shares the most
//! (rare) words with. The offline stand-in for the bigger, dearer model at the top of a
//! classifier cascade: it needs no keyword list, only examples, and answers phrasing a
//! keyword list misses — but it is word overlap, not understanding.

use super::{input_text, invalid, is_stopword, param, param_str, words, Answer};
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use switchyard_core::model::{normalized, ModelRequest};
use switchyard_core::StepError;

const SHAPE: &str = "params.examples must be a map of label → list of example texts";

/// Scores every label by its best example: `Σ idf(t)` over the distinct non-stopword terms
/// the text and the example share, with `idf = ln(1 + N/df)` over all N examples (a word in
/// every example says little). Scores are each label's share of the labels' sum, confidence
/// the winner's share; no shared term at all gives `default_label` with confidence 0; ties go
/// to the label listed first.
pub(super) fn example_classifier(request: &ModelRequest) -> Result<Answer, StepError> {
    let labels = param(&request.params, "examples")
        .and_then(Value::as_object)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| invalid(SHAPE))?;
    let default_label = param_str(&request.params, "default_label")?.unwrap_or("other");
    let mut examples: Vec<(&str, BTreeSet<String>)> = Vec::new();
    for (label, list) in labels {
        let list = list.as_array().filter(|l| !l.is_empty()).ok_or_else(|| {
            invalid(format!(
                "{SHAPE} (params.examples.{label} is not a non-empty list)"
            ))
        })?;
        for (i, e) in list.iter().enumerate() {
            let text = e
                .as_str()
                .ok_or_else(|| invalid(format!("params.examples.{label}[{i}] must be a string")))?;
            examples.push((label.as_str(), terms(text)));
        }
    }
    let n = examples.len() as f64;
    let mut df: HashMap<&str, usize> = HashMap::new();
    for (_, t) in &examples {
        for w in t {
            *df.entry(w.as_str()).or_default() += 1;
        }
    }
    let text = input_text(&request.input);
    let query = terms(&text);
    let mut best: Vec<(&str, f64)> = labels.keys().map(|l| (l.as_str(), 0.0)).collect();
    for (label, t) in &examples {
        let score: f64 = query
            .intersection(t)
            .map(|w| (1.0 + n / df.get(w.as_str()).copied().unwrap_or(1) as f64).ln())
            .sum();
        if let Some(slot) = best.iter_mut().find(|(l, _)| l == label) {
            slot.1 = slot.1.max(score);
        }
    }
    let total: f64 = best.iter().map(|(_, s)| s).sum();
    let share = |s: f64| if total > 0.0 { s / total } else { 0.0 };
    let scores: Map<String, Value> = best
        .iter()
        .map(|(l, s)| (l.to_string(), json!(normalized::round4(share(*s)))))
        .collect();
    let winner = best
        .iter()
        .fold(None::<(&str, f64)>, |acc, &(l, s)| match acc {
            Some((_, bs)) if bs >= s => acc,
            _ => Some((l, s)),
        });
    let (label, confidence) = match winner {
        Some((l, s)) if s > 0.0 => (l, share(s)),
        _ => (default_label, 0.0),
    };
    Ok(Answer::data(
        request,
        &text,
        normalized::classification(label, confidence, scores),
    ))
}

fn terms(text: &str) -> BTreeSet<String> {
    words(text)
        .into_iter()
        .filter(|w| !is_stopword(w))
        .collect()
}
