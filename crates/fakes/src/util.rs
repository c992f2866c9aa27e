//! Small helpers shared by the provider handlers: random ids, timestamps, token estimates,
//! reading the last user message, and building responses.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";

fn random_from(alphabet: &[u8], n: usize) -> String {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in uuid::Uuid::new_v4().as_bytes() {
            if out.len() == n {
                break;
            }
            out.push(alphabet[*b as usize % alphabet.len()] as char);
        }
    }
    out
}

/// `n` random characters from `[A-Za-z0-9]`.
pub fn random_alnum(n: usize) -> String {
    random_from(ALNUM, n)
}

/// `n` random characters from `[a-z0-9]` (Replicate ids).
pub fn random_lower(n: usize) -> String {
    random_from(LOWER_ALNUM, n)
}

/// `n` random hex digits.
pub fn random_hex(n: usize) -> String {
    random_from(HEX, n)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// RFC 3339 UTC with microseconds (`2023-09-08T16:19:34.765994Z`), as Replicate writes times.
pub fn rfc3339_micros(ms: u64) -> String {
    let secs = ms / 1000;
    let micros = (ms % 1000) * 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Token estimate: about four characters per token, at least one.
pub fn tokens_for_chars(chars: usize) -> u64 {
    (chars.div_ceil(4)).max(1) as u64
}

/// Total characters of every string inside a JSON value (messages, system prompts...).
pub fn text_chars(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Array(a) => a.iter().map(text_chars).sum(),
        Value::Object(o) => o.values().map(text_chars).sum(),
        _ => 0,
    }
}

/// The text of a message's `content`: a string, or the `text` of its parts/blocks
/// (OpenAI `[{type: "text", text}]`, Anthropic `[{type: "text", text}]`, Bedrock `[{text}]`).
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The text of the last `role: "user"` message in a `messages` array.
pub fn last_user_text(messages: Option<&Value>) -> String {
    messages
        .and_then(Value::as_array)
        .and_then(|m| {
            m.iter()
                .rev()
                .find(|msg| msg.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|msg| msg.get("content"))
        .map(content_text)
        .unwrap_or_default()
}

/// The default text answer: `Fake answer: <first 60 characters of the last user message>`.
pub fn fake_answer(user_text: &str) -> String {
    let head: String = user_text.chars().take(60).collect();
    format!("Fake answer: {head}")
}

/// A response with a status, headers and a body (the content type is among the headers).
pub fn respond(status: u16, headers: &[(&str, String)], body: impl Into<String>) -> Response {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(*k), HeaderValue::try_from(v.as_str()))
        {
            map.append(name, value);
        }
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, map, body.into()).into_response()
}

/// A JSON response.
pub fn json_response(status: u16, mut headers: Vec<(&str, String)>, body: &Value) -> Response {
    headers.insert(0, ("content-type", "application/json".into()));
    respond(status, &headers, body.to_string())
}

/// A body that starts like the provider's JSON and stops mid-way: not JSON.
pub fn truncated(body: &Value) -> String {
    let text = body.to_string();
    let cut = text
        .char_indices()
        .map(|(i, _)| i)
        .nth(text.chars().count() * 2 / 3)
        .unwrap_or(0);
    text[..cut].to_string()
}

/// The request body as JSON, if it is JSON.
pub fn parse_body(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// A deterministic unit vector of `dims` components from a hash of `text`.
pub fn embedding_for(text: &str, dims: usize) -> Vec<f64> {
    use sha2::{Digest, Sha256};
    let mut raw = Vec::with_capacity(dims);
    let mut counter: u32 = 0;
    while raw.len() < dims {
        let mut h = Sha256::new();
        h.update(counter.to_le_bytes());
        h.update(text.as_bytes());
        for pair in h.finalize().chunks(2) {
            if raw.len() == dims {
                break;
            }
            let x = u16::from_le_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            raw.push(x as f64 / 32_767.5 - 1.0);
        }
        counter += 1;
    }
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        raw.iter()
            .map(|x| ((x / norm) * 1e8).round() / 1e8)
            .collect()
    } else {
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_694_189_974_765),
            "2023-09-08T16:19:34.765000Z"
        );
        assert_eq!(
            rfc3339_micros(951_782_400_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding_for("hello", 8);
        assert_eq!(a, embedding_for("hello", 8));
        assert_ne!(a, embedding_for("hello!", 8));
        let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6);
        assert_eq!(embedding_for("x", 40).len(), 40);
    }

    #[test]
    fn truncated_bodies_are_not_json() {
        let body = serde_json::json!({"id": "x", "choices": [{"message": {"content": "hello"}}]});
        assert!(serde_json::from_str::<Value>(&truncated(&body)).is_err());
    }
}
