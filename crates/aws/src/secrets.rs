//! The deployment's secrets on AWS: one Secrets Manager secret whose `SecretString` is a JSON
//! object of names → values, the names being docs/configuration.md's setting names
//! (`SWITCHYARD_API_KEYS`, `SWITCHYARD_CALLBACK_SECRET`, `SWITCHYARD_WEBHOOK_SECRET`,
//! `OPENAI_API_KEY`, …). The Lambda mains read it once per container, at cold start, and hand
//! the map to the engine as its `Secrets` seam (layered over the function's environment), so
//! no key is in the template, the environment or the logs.
//!
//! One secret rather than one parameter per key: one `GetSecretValue` call per cold start, one
//! ARN in each function's policy, and a rotation is one `PutSecretValue`.

use crate::error::{fault, shared};
use std::collections::BTreeMap;
use switchyard_core::StoreError;

/// Reads secret `id` (name or ARN) and parses it with [`parse_secret_map`].
pub async fn load_secret_map(
    client: &aws_sdk_secretsmanager::Client,
    id: &str,
) -> Result<BTreeMap<String, String>, StoreError> {
    let out = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| {
            let f = fault(&e);
            shared("Secrets Manager", "GetSecretValue", &f, &e)
        })?;
    let text = out.secret_string().ok_or_else(|| {
        StoreError::Invalid(format!(
            "secret `{id}` has no SecretString (a binary secret cannot hold the settings map)"
        ))
    })?;
    parse_secret_map(text).map_err(|e| StoreError::Invalid(format!("secret `{id}`: {e}")))
}

/// Parses a settings map: a JSON object whose keys are configuration names (upper case,
/// digits and `_`) and whose values are strings. Errors name the offending key, never a value.
pub fn parse_secret_map(text: &str) -> Result<BTreeMap<String, String>, String> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("not JSON (expected an object of names to strings): {e}"))?;
    let serde_json::Value::Object(map) = value else {
        return Err("expected a JSON object of names to strings".into());
    };
    let mut out = BTreeMap::new();
    for (name, v) in map {
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !valid_name {
            return Err(format!(
                "key `{name}` is not a configuration name (upper case letters, digits, `_`)"
            ));
        }
        match v {
            serde_json::Value::String(s) => {
                out.insert(name, s);
            }
            _ => return Err(format!("`{name}` must be a string")),
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A case: the secret's text, and the pairs it gives or a part of the error.
    type Case<'a> = (&'a str, Result<&'a [(&'a str, &'a str)], &'a str>);

    #[test]
    fn settings_maps() {
        let cases: &[Case] = &[
            (
                r#"{"OPENAI_API_KEY":"sk-1","SWITCHYARD_API_KEYS":"sha256:ab:acme"}"#,
                Ok(&[
                    ("OPENAI_API_KEY", "sk-1"),
                    ("SWITCHYARD_API_KEYS", "sha256:ab:acme"),
                ]),
            ),
            ("{}", Ok(&[])),
            ("[1]", Err("expected a JSON object")),
            ("nope", Err("not JSON")),
            (r#"{"openai_api_key":"x"}"#, Err("key `openai_api_key`")),
            (r#"{"PORT":8080}"#, Err("`PORT` must be a string")),
        ];
        for (text, want) in cases {
            match (parse_secret_map(text), want) {
                (Ok(got), Ok(pairs)) => {
                    let want: BTreeMap<String, String> = pairs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    assert_eq!(got, want, "{text}");
                }
                (Err(e), Err(part)) => assert!(e.contains(part), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn errors_never_echo_a_value() {
        let e = parse_secret_map(r#"{"KEY":["sk-secret-value"]}"#).unwrap_err();
        assert!(!e.contains("sk-secret-value"), "{e}");
    }
}
