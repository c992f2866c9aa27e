//! Behaviour names, scripts, and the schema instances the fake answers with.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

use serde_json::{json, Value};
use switchyard_fakes::{instance_for, parse_script, violating_instance, Behavior};

#[test]
fn behaviours_parse_and_print() {
    let table: Vec<(&str, Behavior, &str)> = vec![
        ("answer", Behavior::Answer, "answer"),
        (
            "rate_limited",
            Behavior::RateLimited {
                retry_after_secs: 1,
            },
            "rate_limited:1",
        ),
        (
            "rate_limited:7",
            Behavior::RateLimited {
                retry_after_secs: 7,
            },
            "rate_limited:7",
        ),
        ("quota", Behavior::Quota, "quota"),
        ("server_error", Behavior::ServerError, "server_error"),
        ("overloaded", Behavior::Overloaded, "overloaded"),
        ("slow:1500", Behavior::Slow { ms: 1500 }, "slow:1500"),
        ("slow", Behavior::Slow { ms: 1000 }, "slow:1000"),
        ("malformed", Behavior::Malformed, "malformed"),
        ("schema_invalid", Behavior::SchemaInvalid, "schema_invalid"),
        ("unauthorized", Behavior::Unauthorized, "unauthorized"),
        (
            "context_too_long",
            Behavior::ContextTooLong,
            "context_too_long",
        ),
        ("refusal", Behavior::Refusal, "refusal"),
        ("succeed", Behavior::Succeed, "succeed"),
        ("fail", Behavior::Fail, "fail"),
        ("no_webhook", Behavior::NoWebhook, "no_webhook"),
        (
            " Rate-Limited:3 ",
            Behavior::RateLimited {
                retry_after_secs: 3,
            },
            "rate_limited:3",
        ),
    ];
    for (text, want, printed) in table {
        let got: Behavior = text.parse().unwrap();
        assert_eq!(got, want, "{text}");
        assert_eq!(got.to_string(), printed);
        assert_eq!(
            printed.parse::<Behavior>().unwrap(),
            want,
            "round trip of {printed}"
        );
        assert_eq!(serde_json::to_value(&got).unwrap(), json!(printed));
        assert_eq!(
            serde_json::from_value::<Behavior>(json!(printed)).unwrap(),
            want
        );
    }
    for bad in ["explode", "slow:soon", "rate_limited:-1", "answer:3", ""] {
        assert!(bad.parse::<Behavior>().is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn scripts_parse() {
    let s = parse_script(
        "openai=rate_limited:2,answer; anthropic=overloaded;replicate=no_webhook;openai=quota",
    )
    .unwrap();
    assert_eq!(
        s["openai"],
        vec![
            Behavior::RateLimited {
                retry_after_secs: 2
            },
            Behavior::Answer,
            Behavior::Quota
        ]
    );
    assert_eq!(s["anthropic"], vec![Behavior::Overloaded]);
    assert_eq!(s["replicate"], vec![Behavior::NoWebhook]);
    assert!(!s.contains_key("bedrock"));
    assert!(parse_script("").unwrap().is_empty());
    for bad in [
        "openai",
        "mistral=answer",
        "openai=answer,explode",
        "bedrock=slow:x",
    ] {
        let e = parse_script(bad).unwrap_err();
        assert!(!e.is_empty(), "{bad}");
    }
}

fn check_valid(schema: &Value, instance: &Value) {
    let v = jsonschema::validator_for(schema).unwrap();
    let errors: Vec<String> = v.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{instance} does not follow {schema}: {errors:?}"
    );
}

fn schemas() -> Vec<Value> {
    vec![
        // The classification shape the adapters send.
        json!({
            "type": "object",
            "properties": {
                "label": {"type": "string", "enum": ["billing", "tech"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1}
            },
            "required": ["label", "confidence"],
            "additionalProperties": false
        }),
        // Product copy: lengths, arrays, nested objects, integers.
        json!({
            "type": "object",
            "required": ["title", "bullets", "price", "meta"],
            "properties": {
                "title": {"type": "string", "minLength": 20, "maxLength": 60},
                "bullets": {"type": "array", "items": {"type": "string", "maxLength": 5}, "minItems": 3, "maxItems": 5},
                "price": {"type": "integer", "minimum": 100, "maximum": 200, "multipleOf": 7},
                "meta": {
                    "type": "object",
                    "properties": {"sku": {"type": "string", "const": "SKU-1"}, "live": {"type": "boolean"}, "note": {"type": ["string", "null"]}},
                    "required": ["sku", "live", "tags"],
                    "additionalProperties": {"type": "string"}
                }
            }
        }),
        // Exclusive bounds (draft 2020-12 numbers), tiny ranges, number multiples.
        json!({
            "type": "object",
            "properties": {
                "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "n": {"type": "integer", "exclusiveMinimum": 5, "maximum": 6},
                "neg": {"type": "number", "maximum": -10},
                "step": {"type": "number", "minimum": 0.5, "multipleOf": 0.25}
            },
            "required": ["score", "n", "neg", "step"]
        }),
        // anyOf / oneOf / allOf, formats, unique items, tuples.
        json!({
            "type": "object",
            "properties": {
                "when": {"type": "string", "format": "date-time"},
                "mail": {"type": "string", "format": "email"},
                "id": {"type": "string", "format": "uuid"},
                "either": {"anyOf": [{"type": "integer", "minimum": 3}, {"type": "string"}]},
                "one": {"oneOf": [{"type": "string", "enum": ["x"]}, {"type": "integer"}]},
                "both": {"allOf": [
                    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                    {"properties": {"b": {"type": "string"}}, "required": ["b"]}
                ]},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3, "uniqueItems": true},
                "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2}
            },
            "required": ["when", "mail", "id", "either", "one", "both", "tags", "pair"],
            "additionalProperties": false
        }),
        // Non-object roots.
        json!({"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}, "required": ["k"]}}),
        json!({"type": "string", "enum": ["red", "green"]}),
        json!({"type": "integer", "minimum": 40}),
        json!({"type": "boolean"}),
        json!({"type": "null"}),
        json!({"minProperties": 2, "additionalProperties": {"type": "integer"}}),
        json!({}),
        json!(true),
    ]
}

#[test]
fn instances_follow_their_schema() {
    for schema in schemas() {
        let instance = instance_for(&schema);
        check_valid(&schema, &instance);
    }
    // Objects list every property, not only the required ones.
    let v = instance_for(
        &json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}),
    );
    assert_eq!(v, json!({"a": "Fake answer", "b": 1}));
}

#[test]
fn violating_instances_do_not_follow_their_schema() {
    for schema in schemas() {
        // `{}` and `true` accept everything: nothing can violate them.
        if schema == json!({}) || schema == json!(true) {
            continue;
        }
        let bad = violating_instance(&schema);
        let v = jsonschema::validator_for(&schema).unwrap();
        assert!(!v.is_valid(&bad), "{bad} should violate {schema}");
    }
}
