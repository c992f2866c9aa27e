//! The one error classifier for hosted APIs: HTTP status, provider error codes and bodies → the
//! taxonomy (docs/providers.md#errors-one-classifier). Pure and table-tested; adapters call it for
//! every non-2xx answer. Transport failures are classified in [`crate::http`].

use crate::http::HttpResponse;
use serde_json::Value;
use switchyard_core::{ErrorClass, StepError};

/// Which API's error conventions to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Anthropic,
    Bedrock,
    Replicate,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::OpenAi => "openai",
            Api::Anthropic => "anthropic",
            Api::Bedrock => "bedrock",
            Api::Replicate => "replicate",
        }
    }
}

/// What an error body says, whatever the provider's shape.
#[derive(Debug, Default, PartialEq)]
struct Said {
    code: String,
    message: String,
}

fn said(api: Api, resp: &HttpResponse) -> Said {
    let body: Value = resp.json().unwrap_or(Value::Null);
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    match api {
        // {"error": {"message", "type", "code"}}
        Api::OpenAi => {
            let e = &body["error"];
            let code = if e["code"].is_string() {
                s(&e["code"])
            } else {
                s(&e["type"])
            };
            Said {
                code,
                message: s(&e["message"]),
            }
        }
        // {"type": "error", "error": {"type", "message"}}
        Api::Anthropic => Said {
            code: s(&body["error"]["type"]),
            message: s(&body["error"]["message"]),
        },
        // x-amzn-ErrorType: ThrottlingException:http://…, body {"message": …}
        Api::Bedrock => {
            let code = resp
                .header("x-amzn-errortype")
                .map(str::to_string)
                .unwrap_or_else(|| s(&body["__type"]));
            let code = code
                .split([':', '#'])
                .find(|p| p.ends_with("Exception"))
                .unwrap_or(&code)
                .to_string();
            let message = if body["message"].is_string() {
                s(&body["message"])
            } else {
                s(&body["Message"])
            };
            Said { code, message }
        }
        // {"title", "detail", "status"}
        Api::Replicate => Said {
            code: s(&body["title"]),
            message: s(&body["detail"]),
        },
    }
}

/// The longest `Retry-After` honoured (one day); longer values are capped.
pub const MAX_RETRY_AFTER_MS: u64 = 86_400_000;

/// Phrases providers use for "the input is longer than the model's context".
const CONTEXT_TOO_LONG: [&str; 6] = [
    "context_length_exceeded",
    "maximum context length",
    "prompt is too long",
    "input is too long",
    "too many tokens",
    "context window",
];

/// Classifies a non-2xx answer.
pub fn classify(api: Api, resp: &HttpResponse, now_ms: u64) -> StepError {
    let said = said(api, resp);
    let code = said.code.to_ascii_lowercase();
    let lower = said.message.to_ascii_lowercase();
    let context_too_long = CONTEXT_TOO_LONG
        .iter()
        .any(|p| code.contains(p) || lower.contains(p));
    let class = match (resp.status, code.as_str()) {
        (_, "insufficient_quota") | (_, "servicequotaexceededexception") => {
            ErrorClass::QuotaExhausted
        }
        (_, "overloaded_error") => ErrorClass::RateLimited,
        (_, "throttlingexception") => ErrorClass::RateLimited,
        (_, "modeltimeoutexception") => ErrorClass::Timeout,
        (_, "content_policy_violation") | (_, "content_filter") => ErrorClass::Refused,
        // 402 Payment Required: the account is out of credit (Replicate; Anthropic `billing_error`).
        (402, _) => ErrorClass::QuotaExhausted,
        (429, _) | (529, _) => ErrorClass::RateLimited,
        (408, _) | (504, _) => ErrorClass::Timeout,
        (401, _) | (403, _) => ErrorClass::Auth,
        (400 | 404 | 409 | 413 | 422, _) => ErrorClass::Invalid,
        (s, _) if s >= 500 || s == 424 => ErrorClass::Transient,
        _ => ErrorClass::Invalid,
    };
    let what = if context_too_long {
        "context too long: "
    } else {
        ""
    };
    let detail = [said.code.as_str(), said.message.as_str()]
        .iter()
        .filter(|x| !x.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(": ");
    // Say what was called, so a wrong `*_BASE_URL` or model path is obvious from the error.
    let mut message = format!("{} answered {}", api.name(), resp.status);
    if !resp.request.is_empty() {
        message.push_str(" to ");
        message.push_str(&resp.request);
    }
    let detail = format!("{what}{detail}");
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(&redact(&detail));
    }
    truncate_chars(&mut message, 400);
    let mut err = StepError::new(class, message);
    if class == ErrorClass::RateLimited {
        let after = resp
            .header("retry-after-ms")
            .and_then(|v| v.trim().parse::<f64>().ok().map(|ms| ms.max(0.0) as u64))
            .or_else(|| {
                resp.header("retry-after")
                    .and_then(|v| retry_after_ms(v, now_ms))
            });
        if let Some(ms) = after {
            err = err.with_retry_after(ms);
        }
    }
    err
}

/// `Ok` for a 2xx answer; any other status is an error, classified by [`classify`].
pub fn check_status(api: Api, resp: &HttpResponse, now_ms: u64) -> Result<(), StepError> {
    if (200..300).contains(&resp.status) {
        Ok(())
    } else {
        Err(classify(api, resp, now_ms))
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date, in milliseconds from `now_ms`.
pub fn retry_after_ms(value: &str, now_ms: u64) -> Option<u64> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs >= 0.0).then_some((secs * 1000.0) as u64);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    let at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64;
    Some(at_ms.saturating_sub(now_ms))
}

/// Cuts a string to at most `max` characters (never inside a character).
pub fn truncate_chars(s: &mut String, max: usize) {
    if let Some((at, _)) = s.char_indices().nth(max) {
        s.truncate(at);
    }
}

/// Key prefixes of the providers we talk to (OpenAI `sk-`, Anthropic `sk-ant-`, Replicate
/// `r8_`, AWS access key ids).
const KEY_PREFIXES: [&str; 4] = ["sk-", "r8_", "AKIA", "ASIA"];

/// Patterns of credentials that are not single key-prefixed words, each with what replaces it:
/// - an echoed `Authorization`, `X-Amz-Security-Token`, `X-Api-Key` or `api-key` header (any
///   scheme: `Bearer`, `AWS4-HMAC-SHA256 Credential=…, Signature=…`), plain or JSON-escaped,
///   up to the end of its value;
/// - SigV4 parts anywhere (`Credential=AKID…/20260101/us-east-1/bedrock/aws4_request`,
///   `Signature=…`, their presigned-URL forms `X-Amz-Credential=`, `X-Amz-Signature=`,
///   `X-Amz-Security-Token=`);
/// - AWS access key ids by their documented prefixes (`AKIA…`, `ASIA…`, 16 more characters).
static CREDENTIAL_PATTERNS: std::sync::LazyLock<Vec<(regex::Regex, &'static str)>> =
    std::sync::LazyLock::new(|| {
        [
            (
                r#"(?i)((?:authorization|x-amz-security-token|x-api-key|api-key)\\?["']?\s*[:=]\s*\\?["']?)[^"'\\\r\n]+"#,
                "${1}[redacted]",
            ),
            (
                r"(?i)((?:x-amz-)?(?:credential|signature|security-token)=)[^\s,&;\\]+",
                "${1}[redacted]",
            ),
            (
                r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}\b",
                "[redacted]",
            ),
        ]
        .into_iter()
        .filter_map(|(p, with)| regex::Regex::new(p).ok().map(|r| (r, with)))
        .collect()
    });

/// Removes anything that looks like a credential from text that goes into errors and logs:
/// the [`CREDENTIAL_PATTERNS`], words with a known key prefix (also inside quotes or after
/// `=`), and whatever follows `Bearer`.
pub fn redact(text: &str) -> String {
    if CREDENTIAL_PATTERNS.len() != 3 {
        // Unreachable with the patterns above (a test compiles them); if one ever failed to
        // compile, saying nothing is the safe answer.
        return "[redacted: credential patterns unavailable]".to_string();
    }
    let mut text = std::borrow::Cow::Borrowed(text);
    for (re, with) in CREDENTIAL_PATTERNS.iter() {
        if let std::borrow::Cow::Owned(s) = re.replace_all(&text, *with) {
            text = std::borrow::Cow::Owned(s);
        }
    }
    let text: &str = &text;
    let mut out = String::with_capacity(text.len());
    let mut after_bearer = false;
    for word in text.split_inclusive(char::is_whitespace) {
        let bare = word.trim_end();
        let trailing = &word[bare.len()..];
        let core = bare.trim_matches(|c: char| !c.is_alphanumeric() && c != '-' && c != '_');
        let candidate = core
            .rsplit(['=', ':'])
            .next()
            .unwrap_or(core)
            .trim_matches(|c: char| !c.is_alphanumeric() && c != '-' && c != '_');
        let looks_like_key = KEY_PREFIXES
            .iter()
            .any(|p| candidate.starts_with(p) && candidate.len() > p.len() + 6);
        if (after_bearer && !bare.is_empty()) || looks_like_key {
            out.push_str("[redacted]");
            out.push_str(trailing);
        } else {
            out.push_str(word);
        }
        if !bare.is_empty() {
            after_bearer = core.eq_ignore_ascii_case("bearer");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::response as resp;
    use ErrorClass::*;

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn classifier_table() {
        // (api, status, headers, body, class, retry_after_ms)
        type Row = (
            Api,
            u16,
            Vec<(&'static str, &'static str)>,
            &'static str,
            ErrorClass,
            Option<u64>,
        );
        let table: Vec<Row> = vec![
            (
                Api::OpenAi,
                429,
                vec![],
                r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
                QuotaExhausted,
                None,
            ),
            (
                Api::OpenAi,
                429,
                vec![("retry-after", "7")],
                r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
                RateLimited,
                Some(7000),
            ),
            (
                Api::OpenAi,
                429,
                vec![("retry-after", "Tue, 14 Nov 2023 22:13:30 GMT")],
                "{}",
                RateLimited,
                Some(10_000),
            ),
            (
                Api::OpenAi,
                429,
                vec![("retry-after-ms", "250")],
                "{}",
                RateLimited,
                Some(250),
            ),
            (
                Api::OpenAi,
                400,
                vec![],
                r#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
                Invalid,
                None,
            ),
            (
                Api::OpenAi,
                400,
                vec![],
                r#"{"error":{"message":"Your request was rejected by the safety system","type":"invalid_request_error","code":"content_policy_violation"}}"#,
                Refused,
                None,
            ),
            (
                Api::OpenAi,
                401,
                vec![],
                r#"{"error":{"message":"Incorrect API key provided: sk-abc1234567890xyz","type":"invalid_request_error","code":"invalid_api_key"}}"#,
                Auth,
                None,
            ),
            (
                Api::OpenAi,
                404,
                vec![],
                r#"{"error":{"message":"The model does not exist","code":"model_not_found"}}"#,
                Invalid,
                None,
            ),
            (
                Api::OpenAi,
                500,
                vec![],
                r#"{"error":{"message":"The server had an error","type":"server_error"}}"#,
                Transient,
                None,
            ),
            (
                Api::OpenAi,
                502,
                vec![],
                "<html>Bad gateway</html>",
                Transient,
                None,
            ),
            (Api::OpenAi, 503, vec![], "", Transient, None),
            (Api::OpenAi, 504, vec![], "", Timeout, None),
            (Api::OpenAi, 408, vec![], "", Timeout, None),
            (Api::OpenAi, 413, vec![], "", Invalid, None),
            (Api::OpenAi, 422, vec![], "", Invalid, None),
            (Api::OpenAi, 403, vec![], "", Auth, None),
            (
                Api::Anthropic,
                529,
                vec![],
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                RateLimited,
                None,
            ),
            (
                Api::Anthropic,
                429,
                vec![("retry-after", "3")],
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"Rate limited"}}"#,
                RateLimited,
                Some(3000),
            ),
            (
                Api::Anthropic,
                400,
                vec![],
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#,
                Invalid,
                None,
            ),
            (
                Api::Anthropic,
                401,
                vec![],
                r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
                Auth,
                None,
            ),
            (
                Api::Anthropic,
                500,
                vec![],
                r#"{"type":"error","error":{"type":"api_error","message":"Internal"}}"#,
                Transient,
                None,
            ),
            (
                Api::Bedrock,
                429,
                vec![(
                    "x-amzn-ErrorType",
                    "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
                )],
                r#"{"message":"Too many requests"}"#,
                RateLimited,
                None,
            ),
            (
                Api::Bedrock,
                400,
                vec![("x-amzn-ErrorType", "ValidationException")],
                r#"{"message":"Input is too long for requested model."}"#,
                Invalid,
                None,
            ),
            (
                Api::Bedrock,
                400,
                vec![("x-amzn-ErrorType", "ServiceQuotaExceededException")],
                r#"{"message":"quota"}"#,
                QuotaExhausted,
                None,
            ),
            (
                Api::Bedrock,
                403,
                vec![("x-amzn-ErrorType", "AccessDeniedException")],
                r#"{"Message":"denied"}"#,
                Auth,
                None,
            ),
            (
                Api::Bedrock,
                408,
                vec![("x-amzn-ErrorType", "ModelTimeoutException")],
                "{}",
                Timeout,
                None,
            ),
            (
                Api::Bedrock,
                424,
                vec![("x-amzn-ErrorType", "ModelErrorException")],
                "{}",
                Transient,
                None,
            ),
            (
                Api::Bedrock,
                503,
                vec![("x-amzn-ErrorType", "ServiceUnavailableException")],
                "{}",
                Transient,
                None,
            ),
            (
                Api::Replicate,
                429,
                vec![("retry-after", "1")],
                r#"{"title":"Request was throttled","detail":"Request was throttled. Expected available in 1 second.","status":429}"#,
                RateLimited,
                Some(1000),
            ),
            (
                Api::Replicate,
                422,
                vec![],
                r#"{"title":"Input validation failed","detail":"prompt is required","status":422}"#,
                Invalid,
                None,
            ),
            (
                Api::Replicate,
                401,
                vec![],
                r#"{"title":"Unauthenticated","detail":"You did not pass a valid authentication token","status":401}"#,
                Auth,
                None,
            ),
        ];
        for (api, status, headers, body, class, after) in table {
            let e = classify(api, &resp(status, &headers, body), NOW);
            assert_eq!(e.class, class, "{api:?} {status} {body}");
            assert_eq!(e.retry_after_ms, after, "{api:?} {status} retry-after");
        }
    }

    #[test]
    fn messages_never_carry_keys() {
        let body = r#"{"error":{"message":"Incorrect API key provided: sk-proj-abcdefghijklmnop. Find your key at https://x","code":"invalid_api_key"}}"#;
        let e = classify(Api::OpenAi, &resp(401, &[], body), NOW);
        assert!(
            !e.message.contains("sk-proj-abcdefghijklmnop"),
            "{}",
            e.message
        );
        assert!(e.message.contains("[redacted]"), "{}", e.message);
        assert_eq!(
            redact("token r8_0123456789abcdef here"),
            "token [redacted] here"
        );
        assert_eq!(redact("short sk-1 stays"), "short sk-1 stays");
        assert_eq!(
            redact("Authorization: Bearer abc.def-ghi was refused"),
            "Authorization: [redacted]"
        );
        assert_eq!(
            redact("a Bearer abc.def-ghi token"),
            "a Bearer [redacted] token"
        );
        assert_eq!(
            redact("key='sk-proj-0123456789' is bad"),
            "[redacted] is bad"
        );
        assert_eq!(redact("(AKIAABCDEFGHIJKL)"), "[redacted]");
    }

    /// AWS credentials echoed back in every shape seen from Bedrock and proxies in front of it.
    #[test]
    fn aws_credentials_are_redacted_in_every_echo() {
        let sig = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";
        let table = [
            format!("Authorization: {sig}"),
            format!(r#"{{"message":"bad request","headers":{{"authorization":"{sig}"}}}}"#),
            // JSON inside a JSON string (a proxy that wraps the upstream error).
            format!(r#"{{"message":"{{\"Authorization\":\"{sig}\"}}"}}"#),
            format!("signature mismatch for {sig}"),
            "X-Amz-Security-Token: IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ".into(),
            "https://bedrock/x?X-Amz-Credential=ASIAXAMPLE%2F20260101&X-Amz-Signature=abcdef0123&X-Amz-Security-Token=FwoGZ".into(),
            "key AKIAIOSFODNN7EXAMPLE and ASIAIOSFODNN7EXAMPLE".into(),
        ];
        let secrets = [
            "AKIDEXAMPLE",
            "5d672d79c15b",
            "IQoJb3JpZ2lu",
            "ASIAXAMPLE",
            "abcdef0123",
            "FwoGZ",
            "AKIAIOSFODNN7EXAMPLE",
            "ASIAIOSFODNN7EXAMPLE",
        ];
        for text in &table {
            let out = redact(text);
            for s in secrets {
                assert!(!out.contains(s), "{s} survived in {out:?} (from {text:?})");
            }
            assert!(out.contains("[redacted]"), "{out}");
        }
        // The classifier's message of a Bedrock 403 that echoes the header.
        let body = format!(
            r#"{{"message":"The request signature we calculated does not match. Authorization={sig}"}}"#
        );
        let e = classify(Api::Bedrock, &resp(403, &[], &body), NOW);
        assert!(!e.message.contains("AKIDEXAMPLE"), "{}", e.message);
        assert!(!e.message.contains("5d672d79"), "{}", e.message);
        let mut long = "é".repeat(300);
        truncate_chars(&mut long, 250);
        assert_eq!(long.chars().count(), 250);
    }

    /// An error names the call (method and path, no query), and never ends in a dangling `: `.
    #[test]
    fn messages_say_what_was_called() {
        let called = |status, body: &str| HttpResponse {
            status,
            body: body.as_bytes().to_vec(),
            request: crate::http::request_line(
                "POST",
                "https://user:pw@api.replicate.com/v1/predictions?key=r8_secret",
            ),
            ..Default::default()
        };
        let table = [
            (404, "", "replicate answered 404 to POST /v1/predictions"),
            (
                404,
                r#"{"title":"Not found","detail":"The requested resource could not be found."}"#,
                "replicate answered 404 to POST /v1/predictions: Not found: The requested resource could not be found.",
            ),
            (502, "<html>bad gateway</html>", "replicate answered 502 to POST /v1/predictions"),
        ];
        for (status, body, want) in table {
            let e = classify(Api::Replicate, &called(status, body), NOW);
            assert_eq!(e.message, want);
        }
        // Without a recorded call (adapter unit tests), the message stays well-formed.
        let e = classify(Api::Replicate, &resp(404, &[], ""), NOW);
        assert_eq!(e.message, "replicate answered 404");
    }

    #[test]
    fn context_length_is_called_out() {
        let e = classify(
            Api::Anthropic,
            &resp(
                400,
                &[],
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long"}}"#,
            ),
            NOW,
        );
        assert!(e.message.contains("context too long"), "{}", e.message);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(retry_after_ms("2", NOW), Some(2000));
        assert_eq!(retry_after_ms("0.5", NOW), Some(500));
        assert_eq!(retry_after_ms("-1", NOW), None);
        assert_eq!(retry_after_ms("soon", NOW), None);
        // An HTTP-date in the past means "now".
        assert_eq!(
            retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT", NOW),
            Some(0)
        );
    }
}
