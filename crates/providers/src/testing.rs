//! Helpers the crate's unit tests share (compiled for tests only).

use crate::catalog::Catalog;
use crate::http::HttpResponse;
use serde_json::json;
use switchyard_core::model::{Callback, ModelRequest, Role};
use switchyard_core::{ErrorClass, StepError};

/// A step request with instructions, a short text input, a 10 s attempt timeout and a
/// callback URL (so asynchronous adapters accept it too).
pub fn request(model: &str, role: Role) -> ModelRequest {
    ModelRequest {
        run_id: "r1".into(),
        step: "s1".into(),
        attempt: 1,
        model: model.into(),
        role,
        instructions: Some("Be brief.".into()),
        prompt_version: None,
        input: json!("Hello!"),
        params: json!({}),
        output_schema: None,
        feedback: vec![],
        timeout_ms: 10_000,
        callback: Some(Callback {
            url: "https://example.test/hook?run=r1&step=s1&token=t".into(),
            run_id: "r1".into(),
            step: "s1".into(),
            token: "t".into(),
        }),
    }
}

/// A provider's answer as the sender hands it over: the status, the headers (names in lower
/// case, like the sender's) and the body; no recorded call.
pub fn response(status: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    HttpResponse {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect(),
        body: body.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// The built-in price table and model catalog (no override file).
pub fn catalog() -> Catalog {
    Catalog::load(None).unwrap()
}

/// A row of an adapter's error table: (case, status, headers, body, class, retry_after_ms).
pub type ErrorCase<'a> = (
    &'a str,
    u16,
    Vec<(&'a str, &'a str)>,
    &'a str,
    ErrorClass,
    Option<u64>,
);

/// Reads each row's answer with `read`: it must fail with the row's class and delay.
pub fn assert_errors<T: std::fmt::Debug>(
    table: Vec<ErrorCase>,
    read: impl Fn(&HttpResponse) -> Result<T, StepError>,
) {
    for (case, status, headers, body, class, after) in table {
        let e = read(&response(status, &headers, body)).unwrap_err();
        assert_eq!(e.class, class, "{case}: {e}");
        assert_eq!(e.retry_after_ms, after, "{case}");
    }
}
