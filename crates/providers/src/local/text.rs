//! Text models: keyword classifier, lexicon sentiment, extractive summarizer, regex extractor.
//! All work on [`input_text`] and are pure functions of the request.

use super::{
    input_text, invalid, is_stopword, param, param_positive, param_str, phrase_hits, words, Answer,
};
use regex::Regex;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::LazyLock;
use switchyard_core::model::{normalized, ModelRequest};
use switchyard_core::StepError;

/// `local/keyword-classifier`. Each occurrence of a keyword (a word or a phrase, matched
/// case-insensitively on whole words) is one hit for its label. Scores are each label's share
/// of all hits and the confidence is the winner's share; ties go to the label listed first.
/// With no hits at all the answer is `default_label` with confidence 0.0, so a workflow can
/// route "nothing matched" with an ordinary confidence threshold.
pub(super) fn keyword_classifier(request: &ModelRequest) -> Result<Answer, StepError> {
    const SHAPE: &str = "params.labels must be a map of label → list of keywords";
    let labels = param(&request.params, "labels")
        .and_then(Value::as_object)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| invalid(SHAPE))?;
    let default_label = param_str(&request.params, "default_label")?.unwrap_or("other");
    let text = input_text(&request.input);
    let text_words = words(&text);

    let mut hits: Vec<(&str, usize)> = Vec::with_capacity(labels.len());
    for (label, keywords) in labels {
        let keywords = keywords
            .as_array()
            .ok_or_else(|| invalid(format!("{SHAPE} (params.labels.{label} is not a list)")))?;
        let mut n = 0;
        for (i, keyword) in keywords.iter().enumerate() {
            let phrase = keyword
                .as_str()
                .map(words)
                .filter(|w| !w.is_empty())
                .ok_or_else(|| {
                    invalid(format!(
                        "params.labels.{label}[{i}] must be a non-empty string"
                    ))
                })?;
            n += phrase_hits(&text_words, &phrase);
        }
        hits.push((label, n));
    }

    let total: usize = hits.iter().map(|(_, n)| n).sum();
    let share = |n: usize| {
        if total == 0 {
            0.0
        } else {
            n as f64 / total as f64
        }
    };
    let scores: Map<String, Value> = hits
        .iter()
        .map(|(l, n)| (l.to_string(), json!(normalized::round4(share(*n)))))
        .collect();
    // `max_by_key` returns the last maximum; reversing makes that the first-listed label.
    let (label, confidence) = match hits.iter().rev().max_by_key(|(_, n)| *n) {
        Some((l, n)) if *n > 0 => (*l, share(*n)),
        _ => (default_label, 0.0),
    };
    let output = normalized::classification(label, confidence, scores);
    Ok(Answer::data(request, &text, output))
}

const POSITIVE: &[&str] = &[
    "good",
    "great",
    "excellent",
    "amazing",
    "awesome",
    "love",
    "loved",
    "loves",
    "happy",
    "pleased",
    "fantastic",
    "wonderful",
    "helpful",
    "fast",
    "easy",
    "perfect",
    "best",
    "nice",
    "recommend",
    "satisfied",
    "thanks",
    "thank",
    "glad",
    "resolved",
    "friendly",
    "reliable",
    "smooth",
    "enjoy",
    "enjoyed",
    "impressed",
];

const NEGATIVE: &[&str] = &[
    "bad",
    "terrible",
    "awful",
    "horrible",
    "hate",
    "hated",
    "poor",
    "slow",
    "broken",
    "angry",
    "disappointed",
    "disappointing",
    "worst",
    "useless",
    "problem",
    "issue",
    "fail",
    "failed",
    "fails",
    "error",
    "crash",
    "crashes",
    "unhappy",
    "annoyed",
    "frustrated",
    "frustrating",
    "difficult",
    "wrong",
    "rude",
    "expensive",
];

/// A negator within the two words before a sentiment word flips it ("not good", "never
/// really helpful"). Crude, and documented as such.
const NEGATORS: &[&str] = &[
    "not", "no", "never", "don't", "doesn't", "didn't", "isn't", "wasn't", "aren't", "weren't",
    "won't", "can't", "cannot", "couldn't", "hardly", "without",
];

/// `local/lexicon-sentiment`. Counts positive (p) and negative (n) words; the label is the
/// majority (neutral on a tie or with no sentiment words). Scores are `p/(p+n+1)`,
/// `n/(p+n+1)` and `1/(p+n+1)` for neutral: the `+1` is a pseudo-count for "no evidence", so
/// confidence grows with the number of agreeing words and a text without any sentiment word
/// is neutral with confidence 1.0.
pub(super) fn lexicon_sentiment(request: &ModelRequest) -> Result<Answer, StepError> {
    let text = input_text(&request.input);
    let w = words(&text);
    let (mut p, mut n) = (0usize, 0usize);
    for (i, word) in w.iter().enumerate() {
        let polarity = if POSITIVE.contains(&word.as_str()) {
            1
        } else if NEGATIVE.contains(&word.as_str()) {
            -1
        } else {
            continue;
        };
        let negated = w[i.saturating_sub(2)..i]
            .iter()
            .any(|x| NEGATORS.contains(&x.as_str()));
        if (polarity > 0) != negated {
            p += 1;
        } else {
            n += 1;
        }
    }
    let denom = (p + n + 1) as f64;
    let (pos, neg, neu) = (p as f64 / denom, n as f64 / denom, 1.0 / denom);
    let (label, confidence) = match p.cmp(&n) {
        std::cmp::Ordering::Greater => ("positive", pos),
        std::cmp::Ordering::Less => ("negative", neg),
        std::cmp::Ordering::Equal => ("neutral", neu),
    };
    let mut scores = Map::new();
    for (k, v) in [("positive", pos), ("negative", neg), ("neutral", neu)] {
        scores.insert(k.into(), json!(normalized::round4(v)));
    }
    let output = normalized::classification(label, confidence, scores);
    Ok(Answer::data(request, &text, output))
}

/// Splits at `.`, `!` or `?` followed by whitespace, and at line breaks. Every boundary eats
/// at least one whitespace character, so re-joining with single spaces never makes the text
/// longer (the cost estimate relies on that).
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let end = match c {
            '\n' => Some(i),
            '.' | '!' | '?' => match chars.peek() {
                Some((_, next)) if next.is_whitespace() => Some(i + 1),
                _ => None,
            },
            _ => None,
        };
        if let Some(end) = end {
            out.push(text[start..end].trim());
            start = end;
        }
    }
    out.push(text[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

/// `local/extractive-summarizer`. Scores each sentence by the average document frequency of
/// its non-stopwords and keeps the best `params.sentences` (default 2) in their original
/// order. Nothing is paraphrased: the summary is a selection of the input's own sentences.
pub(super) fn extractive_summarizer(request: &ModelRequest) -> Result<Answer, StepError> {
    let keep = param_positive(&request.params, "sentences", 2)? as usize;
    let text = input_text(&request.input);
    let sents = sentences(&text);
    let content: Vec<Vec<String>> = sents
        .iter()
        .map(|s| words(s).into_iter().filter(|w| !is_stopword(w)).collect())
        .collect();
    let mut freq: HashMap<&str, usize> = HashMap::new();
    for w in content.iter().flatten() {
        *freq.entry(w.as_str()).or_default() += 1;
    }
    let score = |ws: &Vec<String>| {
        let sum: usize = ws
            .iter()
            .map(|w| freq.get(w.as_str()).copied().unwrap_or(0))
            .sum();
        sum as f64 / ws.len().max(1) as f64
    };
    let mut ranked: Vec<(usize, f64)> = content.iter().map(score).enumerate().collect();
    // Best first; earlier sentence wins a tie, so the result is deterministic.
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut chosen: Vec<usize> = ranked.into_iter().take(keep).map(|(i, _)| i).collect();
    chosen.sort_unstable();
    let summary = chosen
        .iter()
        .map(|i| sents[*i])
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Answer::generation(request, &text, &summary, None))
}

/// Built-in entity patterns, in reporting order. Deliberately simple (US-style phones,
/// symbol- or code-marked amounts, ISO and English month-name dates).
const DEFAULT_PATTERNS: &[(&str, &str)] = &[
    ("email", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    // The last character may not be sentence punctuation: "see https://x.io." ends at "io".
    ("url", r#"https?://[^\s<>"']*[^\s<>"'.,;:!?)\]]"#),
    (
        "phone",
        r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{3}\)[\s.-]?|\b\d{3}[\s.-])\d{3}[\s.-]\d{4}\b",
    ),
    (
        "money",
        r"[$€£]\s?\d+(?:,\d{3})*(?:\.\d+)?|\b\d+(?:,\d{3})*(?:\.\d+)?\s?(?:USD|EUR|GBP|dollars|euros)\b",
    ),
    (
        "date",
        r"\b\d{4}-\d{2}-\d{2}\b|\b(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4}\b",
    ),
];

/// Compiled once. A pattern that failed to compile would simply be missing; a test checks
/// that all of them compile.
static DEFAULT_REGEXES: LazyLock<Vec<(String, Regex)>> = LazyLock::new(|| {
    DEFAULT_PATTERNS
        .iter()
        .filter_map(|(t, p)| Regex::new(p).ok().map(|r| (t.to_string(), r)))
        .collect()
});

#[cfg(test)]
pub(super) fn default_pattern_count() -> usize {
    DEFAULT_REGEXES.len()
}

/// `local/regex-extractor`. `params.patterns` (`{type: regex}`) replaces built-in types of the
/// same name and adds new ones. Offsets are character (not byte) positions, end exclusive.
/// Where matches overlap, the one starting first (then the longest) is kept.
pub(super) fn regex_extractor(request: &ModelRequest) -> Result<Answer, StepError> {
    let mut patterns = DEFAULT_REGEXES.clone();
    if let Some(custom) = param(&request.params, "patterns") {
        let custom = custom
            .as_object()
            .ok_or_else(|| invalid("params.patterns must be a map of type → regex"))?;
        for (ty, source) in custom {
            let source = source
                .as_str()
                .ok_or_else(|| invalid(format!("params.patterns.{ty} must be a regex string")))?;
            let re = Regex::new(source)
                .map_err(|e| invalid(format!("params.patterns.{ty} is not a valid regex: {e}")))?;
            match patterns.iter_mut().find(|(t, _)| t == ty) {
                Some(slot) => slot.1 = re,
                None => patterns.push((ty.clone(), re)),
            }
        }
    }

    let text = input_text(&request.input);
    let mut found: Vec<(usize, usize, usize)> = Vec::new();
    for (idx, (_, re)) in patterns.iter().enumerate() {
        found.extend(
            re.find_iter(&text)
                .filter(|m| !m.is_empty())
                .map(|m| (m.start(), m.end(), idx)),
        );
    }
    found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));

    let mut counts: Map<String, Value> = patterns
        .iter()
        .map(|(t, _)| (t.clone(), json!(0)))
        .collect();
    let mut entities = Vec::new();
    let mut last_end = 0;
    let char_pos = |b: usize| text[..b].chars().count();
    for (start, end, idx) in found {
        if start < last_end {
            continue;
        }
        last_end = end;
        let ty = &patterns[idx].0;
        if let Some(c) = counts.get_mut(ty) {
            *c = json!(c.as_u64().unwrap_or(0) + 1);
        }
        entities.push(json!({
            "type": ty,
            "text": &text[start..end],
            "start": char_pos(start),
            "end": char_pos(end),
        }));
    }
    let output = json!({"entities": entities, "counts": counts});
    Ok(Answer::data(request, &text, output))
}
