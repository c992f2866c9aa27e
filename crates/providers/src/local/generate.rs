//! Generators that produce text without any language model: a MiniJinja template and echo.

use super::{input_text, invalid, json_string, param, param_str, Answer};
use serde_json::{json, Value};
use switchyard_core::model::ModelRequest;
use switchyard_core::{ErrorClass, StepError};

/// Renders `params.template` with `input`, `instructions`, `feedback` (the previous attempt's
/// errors, so templates can show a "repair" branch) and `attempt`. Also used by the cost
/// estimate, which is why it is separate from the model itself.
pub(super) fn render(request: &ModelRequest) -> Result<String, StepError> {
    let template = param(&request.params, "template")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("params.template must be a string (a MiniJinja template)"))?;
    let context = json!({
        "input": request.input,
        "instructions": request.instructions,
        "feedback": request.feedback,
        "attempt": request.attempt,
    });
    // No auto-escaping: the output is text or JSON, not HTML (use `|tojson` for JSON values).
    // The core's render applies the fuel and output caps every template runs under.
    switchyard_core::refs::render_lenient(template, &context)
        .map_err(|e| invalid(format!("params.template failed to render: {e}")))
}

/// `local/template-generator`. With `params.format: json` or an output schema on the step,
/// the rendered text must parse as JSON; it is then also returned as `json`.
pub(super) fn template_generator(request: &ModelRequest) -> Result<Answer, StepError> {
    let as_json = match param_str(&request.params, "format") {
        Ok(None | Some("text")) => false,
        Ok(Some("json")) => true,
        _ => return Err(invalid("params.format must be \"text\" or \"json\"")),
    } || request.output_schema.is_some();
    let text = render(request)?;
    let parsed = if as_json {
        let value = serde_json::from_str::<Value>(text.trim()).map_err(|e| {
            StepError::new(ErrorClass::Malformed, "template output is not valid JSON")
                .with_details(vec![e.to_string()])
        })?;
        Some(value)
    } else {
        None
    };
    // The whole input is template context, so it all counts as read.
    let read = json_string(&request.input);
    Ok(Answer::generation(request, &read, &text, parsed))
}

/// `local/echo`: the input back, as text (`input.text`, a string input, or its JSON) and
/// unchanged as `json`. Free and instant, so benchmarks measure the engine alone.
pub(super) fn echo(request: &ModelRequest) -> Answer {
    let text = match &request.input {
        Value::String(s) => s.clone(),
        other => json_string(other),
    };
    let read = input_text(&request.input);
    Answer::generation(request, &read, &text, Some(request.input.clone()))
}
