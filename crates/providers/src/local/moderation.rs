//! `local/lexicon-moderation`: a word list per category, not a model.
//!
//! Counts whole-word, case-insensitive occurrences of each category's words or phrases in
//! [`input_text`] (the same word splitting as the keyword classifier: letters, digits and
//! apostrophes; no stemming, so `kill` does not match `killing`). A category is flagged when
//! its hits reach `params.threshold` (default 1); its score is `hits / (hits + 1)` — 0 without
//! a hit, 0.5 for one, 0.6667 for two, growing towards 1 with more evidence.
//!
//! `params.lexicon` (`{category: [word or phrase, …]}`) replaces the built-in list of a category
//! it names, adds a category the built-in lexicon does not have, and removes a category given
//! an empty list. The built-in lexicon is deliberately small and mild: it exists so moderation
//! steps, routes on `flagged` and their tests run offline, not to moderate real traffic.

use super::{input_text, invalid, param, param_positive, phrase_hits, words, Answer};
use std::collections::BTreeMap;
use switchyard_core::model::{normalized, ModelRequest};
use switchyard_core::StepError;

/// The built-in lexicon: category → words or phrases (matched as whole words).
const LEXICON: &[(&str, &[&str])] = &[
    (
        "harassment",
        &[
            "idiot",
            "moron",
            "loser",
            "stupid",
            "worthless",
            "pathetic",
            "shut up",
            "nobody likes you",
        ],
    ),
    (
        "hate",
        &[
            "subhuman",
            "vermin",
            "inferior race",
            "go back where you came from",
        ],
    ),
    (
        "illicit",
        &[
            "cocaine",
            "heroin",
            "meth",
            "counterfeit",
            "launder money",
            "stolen credit card",
            "buy drugs",
        ],
    ),
    (
        "self_harm",
        &[
            "suicide",
            "suicidal",
            "kill myself",
            "end my life",
            "self harm",
            "cut myself",
            "want to die",
        ],
    ),
    (
        "sexual",
        &["porn", "nude", "nudes", "sexting", "explicit sex", "xxx"],
    ),
    (
        "violence",
        &[
            "kill",
            "murder",
            "stab",
            "shoot",
            "bomb",
            "attack",
            "beat you up",
        ],
    ),
];

/// The model id, written into the normalized output.
const MODEL: &str = "local/lexicon-moderation";

/// The lexicon a request uses: the built-in one with `params.lexicon` applied, each phrase
/// already split into words.
fn lexicon(request: &ModelRequest) -> Result<BTreeMap<String, Vec<Vec<String>>>, StepError> {
    const SHAPE: &str = "params.lexicon must be a map of category → list of words or phrases";
    let mut out: BTreeMap<String, Vec<Vec<String>>> = LEXICON
        .iter()
        .map(|(c, ws)| (c.to_string(), ws.iter().map(|w| words(w)).collect()))
        .collect();
    let Some(custom) = param(&request.params, "lexicon") else {
        return Ok(out);
    };
    let custom = custom.as_object().ok_or_else(|| invalid(SHAPE))?;
    for (category, list) in custom {
        if category.trim().is_empty() {
            return Err(invalid(format!("{SHAPE} (a category name is empty)")));
        }
        let list = list
            .as_array()
            .ok_or_else(|| invalid(format!("{SHAPE} (params.lexicon.{category} is not a list)")))?;
        if list.is_empty() {
            out.remove(category);
            continue;
        }
        let mut phrases = Vec::with_capacity(list.len());
        for (i, w) in list.iter().enumerate() {
            let phrase = w
                .as_str()
                .map(words)
                .filter(|p| !p.is_empty())
                .ok_or_else(|| {
                    invalid(format!(
                        "params.lexicon.{category}[{i}] must be a string with at least one word"
                    ))
                })?;
            phrases.push(phrase);
        }
        out.insert(category.clone(), phrases);
    }
    Ok(out)
}

/// `local/lexicon-moderation`; see the module documentation for the rules.
pub(super) fn lexicon_moderation(request: &ModelRequest) -> Result<Answer, StepError> {
    let threshold = param_positive(&request.params, "threshold", 1)? as usize;
    let lexicon = lexicon(request)?;
    let text = input_text(&request.input);
    let text_words = words(&text);
    let mut categories = BTreeMap::new();
    let mut scores = BTreeMap::new();
    for (category, phrases) in lexicon {
        let hits: usize = phrases.iter().map(|p| phrase_hits(&text_words, p)).sum();
        scores.insert(category.clone(), hits as f64 / (hits as f64 + 1.0));
        categories.insert(category, hits >= threshold);
    }
    let output = normalized::moderation(false, categories, scores, MODEL);
    Ok(Answer::data(request, &text, output))
}

#[cfg(test)]
pub(super) fn builtin_categories() -> Vec<&'static str> {
    LEXICON.iter().map(|(c, _)| *c).collect()
}

#[cfg(test)]
pub(super) fn builtin_lexicon_is_well_formed() -> bool {
    LEXICON.iter().all(|(c, ws)| {
        !c.is_empty()
            && !ws.is_empty()
            && ws
                .iter()
                .all(|w| words(w).join(" ") == w.to_lowercase() && !w.is_empty())
    }) && LEXICON.windows(2).all(|p| p[0].0 < p[1].0)
}
