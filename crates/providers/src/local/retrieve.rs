//! `local/keyword-retriever`: ranks the documents given inline in `params.documents` (the
//! engine loads them from the workflow's corpus file) by how many query terms they contain.

use super::{input_text, invalid, is_stopword, param, param_positive, words, Answer};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use switchyard_core::model::{normalized, ModelRequest};
use switchyard_core::StepError;

struct Doc<'a> {
    id: &'a str,
    title: &'a str,
    text: &'a str,
    /// Term frequencies over title and text.
    tf: HashMap<String, usize>,
}

/// `documents[i].key` as a string; absent or null is `None`.
fn field<'a>(d: &'a Value, i: usize, key: &str) -> Result<Option<&'a str>, StepError> {
    match d.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(invalid(format!(
            "params.documents[{i}].{key} must be a string"
        ))),
    }
}

fn documents(params: &Value) -> Result<Vec<Doc<'_>>, StepError> {
    let list = param(params, "documents")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("params.documents must be a list of {id, title, text}"))?;
    let mut docs = Vec::with_capacity(list.len());
    for (i, d) in list.iter().enumerate() {
        let required = |key| {
            field(d, i, key)?
                .ok_or_else(|| invalid(format!("params.documents[{i}].{key} must be a string")))
        };
        let (id, text) = (required("id")?, required("text")?);
        let title = field(d, i, "title")?.unwrap_or("");
        let mut tf = HashMap::new();
        for w in words(title).into_iter().chain(words(text)) {
            *tf.entry(w).or_default() += 1;
        }
        docs.push(Doc {
            id,
            title,
            text,
            tf,
        });
    }
    Ok(docs)
}

/// Scores each document by `Σ idf(t) · tf/(tf+1)` over the query's distinct non-stopword
/// terms, with `idf = ln(1 + (N − df + ½)/(df + ½))` (BM25 without length normalization).
/// Documents sharing no term are left out; ties are broken by id, so output is stable.
pub(super) fn keyword_retriever(request: &ModelRequest) -> Result<Answer, StepError> {
    let docs = documents(&request.params)?;
    let top_k = param_positive(&request.params, "top_k", 3)? as usize;
    let query = match request.input.get("query") {
        Some(Value::String(q)) => q.clone(),
        Some(_) => return Err(invalid("input.query must be a string")),
        None => input_text(&request.input),
    };
    let terms: BTreeSet<String> = words(&query)
        .into_iter()
        .filter(|w| !is_stopword(w))
        .collect();
    let n = docs.len() as f64;
    let idf: Vec<f64> = terms
        .iter()
        .map(|t| {
            let df = docs.iter().filter(|d| d.tf.contains_key(t)).count() as f64;
            (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
        })
        .collect();
    let mut ranked: Vec<(f64, &Doc)> = docs
        .iter()
        .map(|d| {
            let score = terms
                .iter()
                .zip(&idf)
                .map(|(t, idf)| {
                    let tf = d.tf.get(t).copied().unwrap_or(0) as f64;
                    idf * tf / (tf + 1.0)
                })
                .sum::<f64>();
            (score, d)
        })
        .filter(|(score, _)| *score > 0.0)
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.id.cmp(b.1.id)));
    ranked.truncate(top_k);

    let sources: Vec<String> = ranked.iter().map(|(_, d)| d.id.to_string()).collect();
    let hits: Vec<Value> = ranked
        .iter()
        .map(|(score, d)| {
            json!({
                "id": d.id, "title": d.title, "text": d.text, "score": normalized::round4(*score),
            })
        })
        .collect();
    let output = json!({"query": query, "documents": hits});
    let mut answer = Answer::data(request, &query, output);
    answer.sources = sources;
    Ok(answer)
}
