//! JSON Schema checks (the `jsonschema` crate, without its network resolvers: a schema that
//! points at a remote `$ref` is an error, not a fetch at run time).

use serde_json::Value;

/// Checks that `schema` is a valid JSON Schema and can be compiled.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    jsonschema::meta::validate(schema).map_err(|e| format!("not a valid JSON Schema: {e}"))?;
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| format!("JSON Schema cannot be compiled: {e}"))
}

/// Validates `instance`; on failure returns one line per problem, `at /path: message`, at most
/// 20 of them (a repair prompt does not need more).
pub fn validate(schema: &Value, instance: &Value) -> Result<(), Vec<String>> {
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| vec![format!("JSON Schema cannot be compiled: {e}")])?;
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .take(20)
        .map(|e| {
            let path = e.instance_path().to_string();
            let at = if path.is_empty() {
                "/".to_string()
            } else {
                path
            };
            format!("at {at}: {e}")
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The dotted path of the field the first problem is about (`ticket.customer.name`), `""`
/// for the instance itself: a missing required property names the property, not the object
/// that lacks it. `None` when `instance` is valid (or the schema cannot be compiled).
pub fn first_error_field(schema: &Value, instance: &Value) -> Option<String> {
    let validator = jsonschema::validator_for(schema).ok()?;
    let e = validator.iter_errors(instance).next()?;
    let mut parts: Vec<String> = e
        .instance_path()
        .to_string()
        .split('/')
        .filter(|p| !p.is_empty())
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    if let jsonschema::error::ValidationErrorKind::Required { property } = e.kind() {
        parts.push(
            property
                .as_str()
                .map_or_else(|| property.to_string(), str::to_string),
        );
    }
    Some(parts.join("."))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_first_error_names_its_field() {
        let schema = json!({"type": "object", "required": ["ticket"], "properties": {"ticket": {
            "type": "object", "required": ["id", "customer"], "properties": {
                "id": {"type": "string"},
                "customer": {"type": "object", "required": ["name"]}}}}});
        let table = [
            (json!({}), Some("ticket")),
            (
                json!({"ticket": {"customer": {"name": "x"}}}),
                Some("ticket.id"),
            ),
            (
                json!({"ticket": {"id": 5, "customer": {"name": "x"}}}),
                Some("ticket.id"),
            ),
            (
                json!({"ticket": {"id": "5", "customer": {}}}),
                Some("ticket.customer.name"),
            ),
            (json!([]), Some("")),
            (
                json!({"ticket": {"id": "5", "customer": {"name": "x"}}}),
                None,
            ),
        ];
        for (instance, want) in table {
            assert_eq!(
                first_error_field(&schema, &instance).as_deref(),
                want,
                "{instance}"
            );
        }
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn validates_with_paths() {
        let schema = json!({"type": "object", "required": ["title"],
            "properties": {"title": {"type": "string"}, "n": {"type": "integer"}}});
        assert!(validate(&schema, &json!({"title": "x"})).is_ok());
        let errs = validate(&schema, &json!({"n": "three"})).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("/n")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("title")), "{errs:?}");
    }

    #[test]
    fn rejects_bad_schemas() {
        assert!(check_schema(&json!({"type": "objekt"})).is_err());
        assert!(check_schema(&json!({"type": "object", "required": "title"})).is_err());
        assert!(check_schema(&json!({"type": "string", "maxLength": 3})).is_ok());
    }
}
