//! Request bodies: JSON only, parsed with the path of the first bad field.
//!
//! axum's own `Json` extractor answers a data error with a 422 and a plain-text message; the
//! contract keeps 422 for "fails the workflow's input schema" and wants a 400 naming the field
//! of a malformed request, and a 415 for a body that is not JSON at all.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;
use switchyard_engine::EngineError;

use crate::ApiError;

/// A JSON request body of type `T`.
pub struct JsonBody<T>(pub T);

/// Whether a `Content-Type` names JSON (`application/json`, `application/*+json`, any
/// parameters such as `charset`).
fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !is_json(&content_type) {
            return Err(EngineError::UnsupportedMediaType(if content_type.is_empty() {
                "the body must be JSON, sent with `Content-Type: application/json`".into()
            } else {
                format!("the body must be JSON (`Content-Type: application/json`), not `{content_type}`")
            })
            .into());
        }
        // The body limit layer turns an oversized body into a 413 here.
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status().as_u16();
            if status == 413 {
                EngineError::TooLarge(e.body_text())
            } else {
                EngineError::BadRequest {
                    field: None,
                    message: e.body_text(),
                }
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Parses `bytes` as `T`; an error names the JSON path of the field it is about.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let syntax = inner.is_syntax() || inner.is_eof();
        // A syntax error is about the text, not a field, whatever path it was reached at.
        let field = (!syntax && path != "." && !path.is_empty()).then_some(path);
        let message = if syntax {
            format!("the body is not valid JSON: {inner}")
        } else {
            inner.to_string()
        };
        EngineError::BadRequest { field, message }.into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        for (ct, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("", false),
        ] {
            assert_eq!(is_json(ct), ok, "{ct}");
        }
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct B {
        workflow: String,
        n: Option<u32>,
    }

    #[test]
    fn parse_errors_name_the_field() {
        let table: [(&str, Option<&str>, &str); 4] = [
            (r#"{"workflow": 3}"#, Some("workflow"), "invalid type"),
            (r#"{"workflow": "w", "n": -1}"#, Some("n"), "invalid value"),
            (r#"{"n": 1}"#, None, "missing field `workflow`"),
            (r#"{"workflow": "#, None, "not valid JSON"),
        ];
        for (body, field, msg) in table {
            let e = parse::<B>(body.as_bytes()).err().unwrap().0;
            assert_eq!(e.field(), field, "{body}");
            assert!(e.to_string().contains(msg), "{body}: {e}");
            assert_eq!(e.status(), 400);
        }
    }
}
