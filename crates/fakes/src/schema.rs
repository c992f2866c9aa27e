//! Example values for JSON Schemas: [`instance_for`] builds a value that validates against a
//! schema (for the fake's structured answers), [`violating_instance`] one that does not (for
//! `schema_invalid`). Covers the keywords model output schemas use in practice; `$ref`,
//! `pattern` and `not` are not interpreted.

use serde_json::{json, Map, Value};

const MAX_DEPTH: usize = 32;
/// Arrays are built with at most this many items, whatever `minItems` says.
const MAX_ITEMS: u64 = 1000;

/// A value that validates against `schema`: objects get every listed property (and every
/// `required` one), `enum` its first value, `const` itself, strings honour
/// `minLength`/`maxLength` and common formats, numbers `minimum`/`maximum` (exclusive too) and
/// `multipleOf`, arrays `max(minItems, 1)` items (bounded by `maxItems`), `anyOf`/`oneOf` their
/// first branch, `allOf` the merge of its branches.
pub fn instance_for(schema: &Value) -> Value {
    instance(schema, 0)
}

fn instance(schema: &Value, depth: usize) -> Value {
    let Some(s) = schema.as_object() else {
        return match schema {
            Value::Bool(false) => Value::Null,
            _ => json!("Fake answer"),
        };
    };
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    if let Some(c) = s.get("const") {
        return c.clone();
    }
    if let Some(first) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(first) = s.get(key).and_then(Value::as_array).and_then(|a| a.first()) {
            let mut merged = s.clone();
            merged.remove(key);
            return merge(
                instance(&Value::Object(merged), depth + 1),
                instance(first, depth + 1),
                has_type_hints(s),
            );
        }
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        let mut base = s.clone();
        base.remove("allOf");
        let mut v = instance(&Value::Object(base), depth + 1);
        let mut hinted = has_type_hints(s);
        for branch in all {
            v = merge(v, instance(branch, depth + 1), hinted);
            hinted = true;
        }
        return v;
    }
    match type_of(s) {
        "object" => object(s, depth),
        "array" => array(s, depth),
        "string" => string(s),
        "integer" => integer(s),
        "number" => number(s),
        "boolean" => Value::Bool(true),
        "null" => Value::Null,
        _ => json!("Fake answer"),
    }
}

/// Whether a schema object says anything about its own type (so its instance is meaningful
/// when merged with a branch's).
fn has_type_hints(s: &Map<String, Value>) -> bool {
    type_of(s) != "any"
}

/// Combines the instance of a schema's own keywords with a branch's: objects merge, otherwise
/// the branch wins unless only the schema itself carried type information.
fn merge(own: Value, branch: Value, own_hinted: bool) -> Value {
    match (own, branch) {
        (Value::Object(mut a), Value::Object(b)) => {
            for (k, v) in b {
                a.insert(k, v);
            }
            Value::Object(a)
        }
        (own, branch) => {
            if own_hinted && branch == json!("Fake answer") {
                own
            } else {
                branch
            }
        }
    }
}

/// The schema's type: `type` (the first non-null one of a list), else inferred from keywords.
fn type_of(s: &Map<String, Value>) -> &str {
    match s.get("type") {
        Some(Value::String(t)) => return t.as_str(),
        Some(Value::Array(ts)) => {
            let names: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
            return names
                .iter()
                .copied()
                .find(|t| *t != "null")
                .or(names.first().copied())
                .unwrap_or("any");
        }
        _ => {}
    }
    let has = |keys: &[&str]| keys.iter().any(|k| s.contains_key(*k));
    if has(&[
        "properties",
        "required",
        "additionalProperties",
        "minProperties",
    ]) {
        "object"
    } else if has(&["items", "prefixItems", "minItems", "maxItems", "contains"]) {
        "array"
    } else if has(&["minLength", "maxLength", "pattern", "format"]) {
        "string"
    } else if has(&[
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
    ]) {
        "number"
    } else {
        "any"
    }
}

fn object(s: &Map<String, Value>, depth: usize) -> Value {
    let mut out = Map::new();
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            out.insert(name.clone(), instance(sub, depth + 1));
        }
    }
    let extra = match s.get("additionalProperties") {
        Some(Value::Object(o)) => Some(Value::Object(o.clone())),
        Some(Value::Bool(false)) => None,
        _ => Some(json!({})),
    };
    if let Some(required) = s.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !out.contains_key(name) {
                let v = extra
                    .as_ref()
                    .map(|e| instance(e, depth + 1))
                    .unwrap_or(json!("Fake answer"));
                out.insert(name.to_string(), v);
            }
        }
    }
    if let (Some(min), Some(e)) = (
        s.get("minProperties").and_then(Value::as_u64),
        extra.as_ref(),
    ) {
        let mut i = 0;
        while (out.len() as u64) < min.min(MAX_ITEMS) {
            i += 1;
            let key = format!("extra_{i}");
            if !out.contains_key(&key) {
                out.insert(key, instance(e, depth + 1));
            }
        }
    }
    Value::Object(out)
}

fn array(s: &Map<String, Value>, depth: usize) -> Value {
    let min = s.get("minItems").and_then(Value::as_u64).unwrap_or(0);
    let max = s
        .get("maxItems")
        .and_then(Value::as_u64)
        .unwrap_or(u64::MAX);
    let n = min.max(1).min(max).min(MAX_ITEMS) as usize;
    let prefix: Vec<Value> = match (s.get("prefixItems"), s.get("items")) {
        (Some(Value::Array(p)), _) => p.clone(),
        (_, Some(Value::Array(p))) => p.clone(),
        _ => Vec::new(),
    };
    let rest = match (s.get("prefixItems"), s.get("items")) {
        (Some(Value::Array(_)), Some(items)) => Some(items.clone()),
        (None, Some(Value::Array(_))) => s.get("additionalItems").cloned(),
        (None, Some(items)) => Some(items.clone()),
        _ => None,
    }
    .or_else(|| s.get("contains").cloned())
    .unwrap_or(json!({}));
    let n = n.max(prefix.len().min(max as usize));
    let unique = s
        .get("uniqueItems")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let items = (0..n)
        .map(|i| {
            let v = instance(prefix.get(i).unwrap_or(&rest), depth + 1);
            if unique && i > 0 {
                vary(v, i)
            } else {
                v
            }
        })
        .collect();
    Value::Array(items)
}

/// Makes the i-th copy of an item differ from the others (for `uniqueItems`).
fn vary(v: Value, i: usize) -> Value {
    match v {
        Value::String(s) => Value::String(format!("{s} {i}")),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(x), _) => json!(x + i as i64),
            (None, Some(x)) => json!(x + i as f64),
            _ => Value::Number(n),
        },
        Value::Object(mut o) => {
            o.insert(format!("extra_{i}"), json!(i));
            Value::Object(o)
        }
        other => other,
    }
}

fn string(s: &Map<String, Value>) -> Value {
    let base = match s.get("format").and_then(Value::as_str) {
        Some("date-time") => "2024-01-01T00:00:00Z",
        Some("date") => "2024-01-01",
        Some("time") => "12:00:00Z",
        Some("email") | Some("idn-email") => "fake@example.com",
        Some("uri") | Some("url") | Some("iri") | Some("uri-reference") | Some("iri-reference") => {
            "https://example.com/fake"
        }
        Some("uuid") => "00000000-0000-4000-8000-000000000000",
        Some("ipv4") => "127.0.0.1",
        Some("ipv6") => "::1",
        Some("hostname") | Some("idn-hostname") => "example.com",
        Some("duration") => "PT1S",
        _ => "Fake answer",
    };
    let mut text = base.to_string();
    let len = text.chars().count() as u64;
    if let Some(min) = s.get("minLength").and_then(Value::as_u64) {
        if len < min {
            text.extend(std::iter::repeat_n(
                'x',
                (min - len).min(1_000_000) as usize,
            ));
        }
    }
    if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
        if (text.chars().count() as u64) > max {
            text = text.chars().take(max as usize).collect();
        }
    }
    Value::String(text)
}

/// Lower and upper bounds (value, exclusive?) from draft-4 boolean or draft-6+ numeric forms.
/// A bound: the value and whether it is exclusive.
type Bound = Option<(f64, bool)>;

fn bounds(s: &Map<String, Value>) -> (Bound, Bound) {
    let f = |k: &str| s.get(k).and_then(Value::as_f64);
    let flag = |k: &str| s.get(k).and_then(Value::as_bool).unwrap_or(false);
    let lo = match (f("minimum"), f("exclusiveMinimum")) {
        (Some(m), Some(x)) => Some(if x >= m { (x, true) } else { (m, false) }),
        (Some(m), None) => Some((m, flag("exclusiveMinimum"))),
        (None, Some(x)) => Some((x, true)),
        (None, None) => None,
    };
    let hi = match (f("maximum"), f("exclusiveMaximum")) {
        (Some(m), Some(x)) => Some(if x <= m { (x, true) } else { (m, false) }),
        (Some(m), None) => Some((m, flag("exclusiveMaximum"))),
        (None, Some(x)) => Some((x, true)),
        (None, None) => None,
    };
    (lo, hi)
}

fn integer(s: &Map<String, Value>) -> Value {
    let (lo, hi) = bounds(s);
    let lo = lo.map(|(v, excl)| if excl { v.floor() + 1.0 } else { v.ceil() });
    let hi = hi.map(|(v, excl)| if excl { v.ceil() - 1.0 } else { v.floor() });
    let mut v: f64 = 1.0;
    if let Some(l) = lo {
        v = v.max(l);
    }
    if let Some(h) = hi {
        v = v.min(h);
    }
    if let Some(m) = s
        .get("multipleOf")
        .and_then(Value::as_f64)
        .filter(|m| *m > 0.0)
    {
        let up = (v / m).ceil() * m;
        v = if hi.is_some_and(|h| up > h) {
            (v / m).floor() * m
        } else {
            up
        };
    }
    json!(v as i64)
}

fn number(s: &Map<String, Value>) -> Value {
    let (lo, hi) = bounds(s);
    let mut v: f64 = 1.0;
    if let Some((l, excl)) = lo {
        if v < l || (excl && v <= l) {
            v = match hi {
                Some((h, _)) if excl => (l + h) / 2.0,
                _ if excl => l + 1.0,
                _ => l,
            };
        }
    }
    if let Some((h, excl)) = hi {
        if v > h || (excl && v >= h) {
            v = match lo {
                Some((l, _)) if excl => (l + h) / 2.0,
                _ if excl => h - 1.0,
                _ => h,
            };
        }
    }
    if let Some(m) = s
        .get("multipleOf")
        .and_then(Value::as_f64)
        .filter(|m| *m > 0.0)
    {
        let up = (v / m).ceil() * m;
        v = if hi.is_some_and(|(h, _)| up > h) {
            (v / m).floor() * m
        } else {
            up
        };
    }
    json!(v)
}

/// A value that does NOT validate against `schema`, for `schema_invalid` answers: an object
/// missing its required properties (`{}`), a wrongly typed property, an unexpected property where
/// `additionalProperties` is false, or a value of the wrong type. A schema that accepts anything
/// (`{}`) gets `{}`.
pub fn violating_instance(schema: &Value) -> Value {
    let Some(s) = schema.as_object() else {
        return json!({});
    };
    if let Some(c) = s.get("const") {
        return if c == &json!("not the constant") {
            json!(0)
        } else {
            json!("not the constant")
        };
    }
    if s.get("enum").and_then(Value::as_array).is_some() {
        return json!({"not": "one of the enumerated values"});
    }
    match type_of(s) {
        "object" => violating_object(s),
        "array" => json!({"not": "an array"}),
        "string" => json!(12345),
        "integer" | "number" => json!("not a number"),
        "boolean" => json!("not a boolean"),
        "null" => json!("not null"),
        _ => json!({}),
    }
}

/// An object that violates an object schema where possible (tool-use inputs must be objects).
pub fn violating_object_for(schema: &Value) -> Value {
    match schema.as_object() {
        Some(s) => violating_object(s),
        None => json!({}),
    }
}

fn violating_object(s: &Map<String, Value>) -> Value {
    let required = s
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|r| !r.is_empty());
    if required {
        return json!({});
    }
    if let Some((name, sub)) = s
        .get("properties")
        .and_then(Value::as_object)
        .and_then(|p| p.iter().next())
    {
        let mut o = Map::new();
        o.insert(name.clone(), violating_instance(sub));
        return Value::Object(o);
    }
    json!({"unexpected_field": true})
}
