//! Helpers the crate's unit tests share (compiled for tests only).

use serde_json::json;
use switchyard_core::model::{Callback, ModelRequest, Role};

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
