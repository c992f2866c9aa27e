//! References to earlier results, prompt templates and route conditions — all pure.
//!
//! A workflow value may contain `${path}` references. A string that is exactly one reference
//! becomes the referenced JSON value (objects stay objects); a reference inside longer text is
//! interpolated (non-strings as compact JSON). Paths start at `input`, `steps.<id>` (fields
//! `output`, `status`, `sources`, `error`) or `run` (`id`, `workflow`, `version`), and go on
//! with `.field` or `.0` / `[0]` for array items.
//!
//! Prompts are MiniJinja templates rendered against the same scope. They hold instructions;
//! the data a model works on travels separately in the step's `input`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Bytes one template render (a prompt, an approval message, `params.template`) may produce;
/// past it the render fails with `invalid` instead of filling memory.
pub const MAX_RENDER_BYTES: usize = 1024 * 1024;
/// MiniJinja fuel (instructions) one render may spend: loops that run away stop here.
/// Rendering the examples' templates takes a few hundred.
pub const MAX_RENDER_FUEL: u64 = 1_000_000;

/// The roots a reference may start from.
pub const ROOTS: [&str; 3] = ["input", "steps", "run"];

/// Every `${…}` expression inside the strings of `v`, in order.
pub fn refs_in(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect(v, &mut out);
    out
}

fn collect(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.extend(refs_in_str(s)),
        Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect(x, out)),
        _ => {}
    }
}

/// The `${…}` expressions of one string.
pub fn refs_in_str(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                out.push(after[..end].trim().to_string());
                rest = &after[end + 1..];
            }
            None => {
                out.push(after.trim().to_string());
                break;
            }
        }
    }
    out
}

/// Splits `steps.a.output.items[0].x` into `["steps","a","output","items","0","x"]`.
pub fn segments(path: &str) -> Result<Vec<String>, String> {
    let path = path.trim();
    let path = path
        .strip_prefix("${")
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(path);
    if path.is_empty() {
        return Err("empty reference".into());
    }
    let mut segs = Vec::new();
    for part in path.split('.') {
        let (name, mut idx) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() && idx.is_empty() {
            return Err(format!("`{path}` has an empty segment"));
        }
        if !name.is_empty() {
            segs.push(name.to_string());
        }
        while !idx.is_empty() {
            let close = idx
                .find(']')
                .ok_or_else(|| format!("`{path}` has an unclosed `[`"))?;
            let n = &idx[1..close];
            if n.parse::<usize>().is_err() {
                return Err(format!("`{path}`: `[{n}]` is not an array index"));
            }
            segs.push(n.to_string());
            idx = &idx[close + 1..];
            if !idx.is_empty() && !idx.starts_with('[') {
                return Err(format!("`{path}`: unexpected `{idx}`"));
            }
        }
    }
    Ok(segs)
}

/// Checks the shape of a reference; returns the step id it depends on, if any.
pub fn check_ref(path: &str) -> Result<Option<String>, String> {
    let segs = segments(path)?;
    match segs.first().map(String::as_str) {
        Some("input") | Some("run") => Ok(None),
        Some("steps") => match (segs.get(1), segs.get(2).map(String::as_str)) {
            (Some(id), None | Some("output" | "status" | "sources" | "error")) => {
                Ok(Some(id.clone()))
            }
            (Some(_), Some(other)) => Err(format!(
                "`{path}`: a step has `output`, `status`, `sources` and `error`, not `{other}`"
            )),
            (None, _) => Err(format!("`{path}` names no step")),
        },
        Some(other) => Err(format!(
            "`{path}` starts with `{other}`; references start with input, steps or run"
        )),
        None => Err("empty reference".into()),
    }
}

/// Looks a path up in the scope (`{"input":…, "steps":{id:{output,…}}, "run":…}`).
pub fn lookup<'a>(scope: &'a Value, path: &str) -> Result<&'a Value, String> {
    let segs = segments(path)?;
    let mut cur = scope;
    for (i, seg) in segs.iter().enumerate() {
        let next = match cur {
            Value::Object(m) => m.get(seg),
            Value::Array(a) => seg.parse::<usize>().ok().and_then(|n| a.get(n)),
            _ => None,
        };
        cur = next.ok_or_else(|| {
            let at = segs[..=i].join(".");
            if i == 2 && segs.first().map(String::as_str) == Some("steps") {
                format!(
                    "`{at}` is not available (step `{}` has not produced it)",
                    segs[1]
                )
            } else {
                format!("`{at}` does not exist")
            }
        })?;
    }
    Ok(cur)
}

/// Replaces the references in a template value by what they point at.
pub fn resolve(template: &Value, scope: &Value) -> Result<Value, String> {
    match template {
        Value::String(s) => resolve_str(s, scope),
        Value::Array(a) => a
            .iter()
            .map(|x| resolve(x, scope))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                out.insert(k.clone(), resolve(v, scope)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

fn resolve_str(s: &str, scope: &Value) -> Result<Value, String> {
    let trimmed = s.trim();
    if trimmed.starts_with("${") && trimmed.ends_with('}') && refs_in_str(trimmed).len() == 1 {
        return lookup(scope, &trimmed[2..trimmed.len() - 1]).cloned();
    }
    if !s.contains("${") {
        return Ok(Value::String(s.to_string()));
    }
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{s}`"))?;
        match lookup(scope, &after[..end])? {
            Value::String(v) => out.push_str(v),
            other => out.push_str(&other.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// A route condition: every operator given must hold for the value at `path`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_equals: Option<Value>,
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
}

impl Condition {
    /// Evaluates the condition. A missing value only satisfies `exists: false`.
    pub fn holds(&self, scope: &Value) -> Result<bool, String> {
        let value = lookup(scope, &self.path).ok();
        if let Some(want) = self.exists {
            if value.is_some() != want {
                return Ok(false);
            }
        }
        let Some(v) = value else {
            return Ok(self.exists == Some(false));
        };
        let num = v.as_f64();
        let num_ok = |bound: Option<f64>, f: fn(f64, f64) -> bool| -> Result<bool, String> {
            match (bound, num) {
                (None, _) => Ok(true),
                (Some(b), Some(n)) => Ok(f(n, b)),
                (Some(_), None) => Err(format!("`{}` is not a number: {v}", self.path)),
            }
        };
        Ok(self.equals.as_ref().is_none_or(|e| loosely_equal(e, v))
            && self
                .not_equals
                .as_ref()
                .is_none_or(|e| !loosely_equal(e, v))
            && self
                .one_of
                .as_ref()
                .is_none_or(|l| l.iter().any(|e| loosely_equal(e, v)))
            && num_ok(self.gt, |n, b| n > b)?
            && num_ok(self.gte, |n, b| n >= b)?
            && num_ok(self.lt, |n, b| n < b)?
            && num_ok(self.lte, |n, b| n <= b)?
            && self.contains.as_ref().is_none_or(|c| match v {
                Value::String(s) => s.contains(c.as_str()),
                Value::Array(a) => a.iter().any(|x| x.as_str() == Some(c.as_str())),
                _ => false,
            }))
    }
}

/// Numbers compare by value (`1` equals `1.0`); everything else structurally.
fn loosely_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < f64::EPSILON,
        _ => a == b,
    }
}

/// A MiniJinja environment with strict undefined (a typo in a prompt is an error, not an
/// empty string silently sent to a model) and the render fuel of
/// [`MAX_RENDER_FUEL`].
fn env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_fuel(Some(MAX_RENDER_FUEL));
    env
}

/// Checks a prompt template's syntax; returns the top-level variables it uses (e.g.
/// `steps.classify.output`), so static checks can verify them.
pub fn check_template(template: &str) -> Result<Vec<String>, String> {
    let env = env();
    let t = env
        .template_from_str(template)
        .map_err(|e| format!("template error: {e}"))?;
    let mut vars: Vec<String> = t.undeclared_variables(true).into_iter().collect();
    vars.sort();
    Ok(vars)
}

/// Renders a prompt template against the scope, within the render limits.
pub fn render_template(template: &str, scope: &Value) -> Result<String, String> {
    render_with(&env(), template, scope)
}

/// Renders a template with lenient undefined (a missing field renders empty), within the
/// render limits: what `local/template-generator` uses for `params.template`.
pub fn render_lenient(template: &str, context: &Value) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(MAX_RENDER_FUEL));
    render_with(&env, template, context)
}

/// Every render goes through here, so no template — an author's or a provider's — can run
/// without the fuel and output caps ([`MAX_RENDER_FUEL`], [`MAX_RENDER_BYTES`]).
fn render_with(
    env: &minijinja::Environment<'_>,
    template: &str,
    context: &Value,
) -> Result<String, String> {
    let t = env
        .template_from_str(template)
        .map_err(|e| format!("template error: {e}"))?;
    let mut out = Capped {
        buf: Vec::new(),
        cap: MAX_RENDER_BYTES,
    };
    match t.render_captured_to(context, &mut out) {
        Ok(_) => String::from_utf8(out.buf).map_err(|e| format!("template error: {e}")),
        Err(_) if out.buf.len() >= MAX_RENDER_BYTES => Err(format!(
            "template error: the rendered text exceeds {MAX_RENDER_BYTES} bytes"
        )),
        Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(format!(
            "template error: rendering took more than {} steps (fuel); is a loop unbounded?",
            MAX_RENDER_FUEL
        )),
        Err(e) => Err(format!("template error: {e}")),
    }
}

/// A writer that refuses to grow past `cap` bytes, so a runaway render stops at the cap
/// instead of after it has filled memory.
struct Capped {
    buf: Vec<u8>,
    cap: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            let room = self.cap - self.buf.len();
            self.buf.extend_from_slice(&data[..room]);
            return Err(std::io::Error::other("render output cap reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Value {
        json!({
            "input": {"ticket": {"text": "refund please", "tier": "pro"}, "n": 3},
            "steps": {"classify": {"status": "succeeded",
                "output": {"label": "billing", "confidence": 0.82, "tags": ["a", "b"]}}},
            "run": {"id": "r1"}
        })
    }

    #[test]
    fn resolves_values_and_interpolation() {
        let table = [
            (json!("${input.ticket.text}"), json!("refund please")),
            (
                json!("${steps.classify.output}"),
                json!({"label": "billing", "confidence": 0.82, "tags": ["a", "b"]}),
            ),
            (
                json!("label=${steps.classify.output.label} n=${input.n}"),
                json!("label=billing n=3"),
            ),
            (
                json!({"t": "${steps.classify.output.tags[1]}", "k": [1, "${input.n}"]}),
                json!({"t": "b", "k": [1, 3]}),
            ),
            (json!("${steps.classify.output.tags.0}"), json!("a")),
            (json!("plain"), json!("plain")),
        ];
        for (tpl, want) in table {
            assert_eq!(resolve(&tpl, &scope()).unwrap(), want, "{tpl}");
        }
    }

    /// Runaway templates stop at the documented caps instead of taking the process down.
    #[test]
    fn renders_are_bounded_in_output_and_fuel() {
        let table = [
            // Output: 2 MB of text from one expression.
            ("{{ 'x' * 2000000 }}", "exceeds 1048576 bytes"),
            // Output from nested loops (10^10 iterations were it not for the caps).
            (
                "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
                "template error",
            ),
            // Fuel: a loop that writes nothing never reaches the output cap.
            (
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                "fuel",
            ),
        ];
        for (tpl, needle) in table {
            for result in [
                render_template(tpl, &scope()),
                render_lenient(tpl, &scope()),
            ] {
                let e = result.unwrap_err();
                assert!(e.contains(needle), "{tpl}: {e}");
            }
        }
        // Data is never template code: an input that looks like a template renders as text.
        let data = json!({"input": {"text": "{{ 7*7 }}{% for x in range(9) %}!{% endfor %}"}});
        assert_eq!(
            render_lenient("Hello {{ input.text }}", &data).unwrap(),
            "Hello {{ 7*7 }}{% for x in range(9) %}!{% endfor %}"
        );
        // Ordinary templates are far inside both caps.
        assert_eq!(
            render_template("{{ steps.classify.output.label }}", &scope()).unwrap(),
            "billing"
        );
    }

    #[test]
    fn missing_references_say_where() {
        let e = resolve(&json!("${steps.classify.output.labl}"), &scope()).unwrap_err();
        assert!(e.contains("steps.classify.output.labl"), "{e}");
        let e = resolve(&json!("${steps.draft.output}"), &scope()).unwrap_err();
        assert!(e.contains("steps.draft"), "{e}");
    }

    #[test]
    fn checks_reference_shapes() {
        let table = [
            ("input.x", Ok(None)),
            ("steps.a.output.x", Ok(Some("a".to_string()))),
            ("steps.a", Ok(Some("a".to_string()))),
            ("steps.a.outptu", Err("not `outptu`")),
            ("secrets.key", Err("starts with `secrets`")),
            ("steps", Err("names no step")),
            ("input.a[x]", Err("not an array index")),
        ];
        for (path, want) in table {
            match (check_ref(path), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{path}"),
                (Err(got), Err(w)) => assert!(got.contains(w), "{path}: {got}"),
                (got, w) => panic!("{path}: got {got:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn conditions() {
        let c = |v: Value| -> Condition { serde_json::from_value(v).unwrap() };
        let table = [
            (
                json!({"path": "steps.classify.output.label", "equals": "billing"}),
                true,
            ),
            (
                json!({"path": "steps.classify.output.label", "in": ["tech", "billing"]}),
                true,
            ),
            (
                json!({"path": "steps.classify.output.confidence", "lt": 0.6}),
                false,
            ),
            (
                json!({"path": "steps.classify.output.confidence", "gte": 0.8, "lt": 0.9}),
                true,
            ),
            (
                json!({"path": "input.ticket.tier", "not_equals": "free"}),
                true,
            ),
            (json!({"path": "input.missing", "exists": false}), true),
            (json!({"path": "input.missing", "equals": 1}), false),
            (
                json!({"path": "steps.classify.output.tags", "contains": "b"}),
                true,
            ),
            (json!({"path": "input.n", "equals": 3.0}), true),
        ];
        for (cond, want) in table {
            assert_eq!(c(cond.clone()).holds(&scope()).unwrap(), want, "{cond}");
        }
        assert!(c(json!({"path": "input.ticket.text", "gt": 1}))
            .holds(&scope())
            .is_err());
    }

    #[test]
    fn templates_are_strict() {
        let s = scope();
        assert_eq!(
            render_template("Label: {{ steps.classify.output.label }}", &s).unwrap(),
            "Label: billing"
        );
        assert!(render_template("{{ steps.classify.output.nope }}", &s).is_err());
        assert!(check_template("{% if %}").is_err());
        let vars = check_template("{{ input.x }} {{ steps.a.output.y }}").unwrap();
        assert!(vars.iter().any(|v| v.starts_with("steps.a")), "{vars:?}");
    }
}
