//! Loading and statically checking a workflow file.
//!
//! Every problem is reported with the line and column where it starts, and checking goes on
//! after a problem so that one `switchyard validate` shows all of them. Files a workflow
//! includes (prompt templates, schemas, a retrieval corpus) come through a [`FileLoader`], so
//! this module stays free of I/O.
//!
//! Layout: this file holds the entry point ([`compile`]), the reading context and the
//! grammar's key lists; [`steps`] reads one step, [`model`] the model and retrieve steps,
//! [`kinds`] the route, validate and judge steps, and [`graph`] settles `needs` and checks the
//! graph and the references once every step is read.

use super::yaml::{self, join, PosIndex};
use super::*;
use crate::model::{split_model, ModelInfo};
use crate::refs;
use crate::schema;
use serde_json::{json, Map};
use std::collections::{BTreeMap, HashMap, HashSet};

mod graph;
mod kinds;
mod model;
mod steps;

use graph::*;
use kinds::*;
use model::*;
use steps::*;

/// One problem in a workflow file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Reads files a workflow names, relative to the workflow file.
pub trait FileLoader {
    fn read(&self, relative_path: &str) -> Result<String, String>;
}

/// A loader for workflows that include no files.
pub struct NoFiles;

impl FileLoader for NoFiles {
    fn read(&self, relative_path: &str) -> Result<String, String> {
        Err(format!(
            "cannot read `{relative_path}`: no files available here"
        ))
    }
}

struct Ctx<'a> {
    idx: PosIndex,
    diags: Vec<Diagnostic>,
    files: &'a dyn FileLoader,
    models: &'a [ModelInfo],
}

impl Ctx<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        let p = self.idx.at(path);
        self.push(p, message);
    }

    /// An error about a field itself (unknown, misplaced): reported at its key.
    fn err_key(&mut self, path: &str, message: impl Into<String>) {
        let p = self.idx.key(path);
        self.push(p, message);
    }

    fn push(&mut self, p: yaml::Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            line: p.line,
            col: p.col,
            message: message.into(),
        });
    }

    fn keys(&mut self, obj: &Map<String, Value>, path: &str, allowed: &[&str], what: &str) {
        for k in obj.keys() {
            if !allowed.contains(&k.as_str()) {
                self.err_key(
                    &join(path, k),
                    format!(
                        "unknown field `{k}` in {what} (expected one of: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn string(&mut self, obj: &Map<String, Value>, path: &str, key: &str) -> Option<String> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                self.err(
                    &join(path, key),
                    format!("`{key}` must be a string, not {}", kind_of(other)),
                );
                None
            }
        }
    }

    fn dur(&mut self, obj: &Map<String, Value>, path: &str, key: &str) -> Option<Dur> {
        let v = obj.get(key)?;
        match serde_json::from_value::<Dur>(v.clone()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(&join(path, key), format!("`{key}`: {e}"));
                None
            }
        }
    }

    fn bool(&mut self, obj: &Map<String, Value>, path: &str, key: &str) -> bool {
        match obj.get(key) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.err(
                    &join(path, key),
                    format!("`{key}` must be true or false, not {}", kind_of(other)),
                );
                false
            }
        }
    }

    fn str_list(&mut self, obj: &Map<String, Value>, path: &str, key: &str) -> Option<Vec<String>> {
        let v = obj.get(key)?;
        let p = join(path, key);
        match v {
            Value::String(s) => Some(vec![s.clone()]),
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, it) in items.iter().enumerate() {
                    match it.as_str() {
                        Some(s) => out.push(s.to_string()),
                        None => self.err(
                            &join(&p, &i.to_string()),
                            format!("`{key}` items must be strings"),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                self.err(
                    &p,
                    format!("`{key}` must be a list of strings, not {}", kind_of(other)),
                );
                None
            }
        }
    }

    /// A JSON Schema given inline or as a path to a JSON file.
    fn schema(&mut self, obj: &Map<String, Value>, path: &str, key: &str) -> Option<Value> {
        let p = join(path, key);
        let schema = match obj.get(key)? {
            Value::String(file) => match self.files.read(file) {
                Ok(text) => match serde_json::from_str::<Value>(&text) {
                    Ok(v) => v,
                    Err(e) => {
                        self.err(&p, format!("`{file}` is not valid JSON: {e}"));
                        return None;
                    }
                },
                Err(e) => {
                    self.err(&p, e);
                    return None;
                }
            },
            v @ (Value::Object(_) | Value::Bool(_)) => v.clone(),
            other => {
                self.err(
                    &p,
                    format!(
                        "`{key}` must be a JSON Schema object or a file path, not {}",
                        kind_of(other)
                    ),
                );
                return None;
            }
        };
        if let Err(e) = schema::check_schema(&schema) {
            self.err(&p, format!("`{key}`: {e}"));
            return None;
        }
        Some(schema)
    }

    fn retry(&mut self, v: Option<&Value>, path: &str, base: &RetryPolicy) -> RetryPolicy {
        let mut r = base.clone();
        let Some(v) = v else { return r };
        let p = join(path, "retry");
        let Some(obj) = v.as_object() else {
            self.err(&p, "`retry` must be a mapping");
            return r;
        };
        self.keys(obj, &p, RETRY_KEYS, "retry");
        if let Some(n) = obj.get("max_attempts") {
            match n.as_u64() {
                Some(n) if (1..=u64::from(limits::MAX_ATTEMPTS)).contains(&n) => {
                    r.max_attempts = n as u32
                }
                _ => self.err(
                    &join(&p, "max_attempts"),
                    format!(
                        "`max_attempts` must be a whole number from 1 to {}",
                        limits::MAX_ATTEMPTS
                    ),
                ),
            }
        }
        if let Some(d) = self.dur(obj, &p, "initial_backoff") {
            r.initial_backoff = d;
        }
        if let Some(d) = self.dur(obj, &p, "max_backoff") {
            r.max_backoff = d;
        }
        if let Some(m) = obj.get("multiplier") {
            match m.as_f64() {
                Some(m) if (1.0..=10.0).contains(&m) => r.multiplier = m,
                _ => self.err(
                    &join(&p, "multiplier"),
                    "`multiplier` must be a number from 1 to 10",
                ),
            }
        }
        if obj.contains_key("jitter") {
            r.jitter = self.bool(obj, &p, "jitter");
        }
        r
    }

    fn model_info(&mut self, id: &str, path: &str) -> Option<ModelInfo> {
        if let Some(m) = self.models.iter().find(|m| m.id == id) {
            return Some(m.clone());
        }
        // A pinned version (`replicate/owner/name:version`) is the model it belongs to.
        let base = crate::model::unversioned(id);
        if base != id {
            if let Some(m) = self.models.iter().find(|m| m.id == base) {
                return Some(ModelInfo {
                    id: id.to_string(),
                    ..m.clone()
                });
            }
        }
        let (provider, _) = split_model(id);
        let known: Vec<&str> = self
            .models
            .iter()
            .filter(|m| split_model(&m.id).0 == provider)
            .map(|m| m.id.as_str())
            .collect();
        if known.is_empty() {
            let mut providers: Vec<&str> =
                self.models.iter().map(|m| split_model(&m.id).0).collect();
            providers.sort_unstable();
            providers.dedup();
            self.err(
                path,
                format!(
                    "unknown provider in `{id}` (known providers: {})",
                    providers.join(", ")
                ),
            );
        } else {
            self.err(
                path,
                format!("unknown model `{id}` (known: {})", known.join(", ")),
            );
        }
        None
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

pub(crate) const TOP_KEYS: &[&str] = &[
    "name",
    "version",
    "description",
    "input_schema",
    "output_schema",
    "defaults",
    "budget",
    "timeout",
    "output",
    "tape",
    "steps",
];
// The grammar's key lists: every mapping the loader reads refuses keys not listed here.
// `docs/workflow.schema.json` (the editor schema) must list the same keys; `grammar` below
// gives them to the test that compares the two.
pub(crate) const COMMON: &[&str] = &["id", "kind", "needs", "description", "optional"];
pub(crate) const DEFAULTS_KEYS: &[&str] = &[
    "timeout",
    "wait_timeout",
    "max_duration",
    "approval_deadline",
    "retry",
];
pub(crate) const BUDGET_KEYS: &[&str] = &["max_cost_usd"];
pub(crate) const RETRY_KEYS: &[&str] = &[
    "max_attempts",
    "initial_backoff",
    "max_backoff",
    "multiplier",
    "jitter",
];
pub(crate) const PROMPT_KEYS: &[&str] = &["version", "template", "file"];
pub(crate) const CASCADE_TIER_KEYS: &[&str] = &["model", "params", "escalate_if"];
pub(crate) const SELECT_CASE_KEYS: &[&str] = &["model", "when"];
pub(crate) const ROUTE_CASE_KEYS: &[&str] = &["when", "to"];
pub(crate) const REPAIR_KEYS: &[&str] = &["step", "max_attempts", "escalate"];
/// Keys of a validate step's `judge`.
pub(crate) const JUDGE_KEYS: &[&str] = &[
    "model",
    "fallback",
    "fallback_on",
    "criteria",
    "params",
    "retry",
    "timeout",
    "max_duration",
    "min_score",
];
/// The step kinds, in the order the docs list them.
pub(crate) const KINDS: &[&str] = &[
    "model",
    "retrieve",
    "route",
    "parallel",
    "validate",
    "transform",
    "approval",
];
pub(crate) const MODEL_KEYS: &[&str] = &[
    "model",
    "cascade",
    "select",
    "fallback",
    "fallback_on",
    "role",
    "prompt",
    "input",
    "params",
    "output_schema",
    "retry",
    "timeout",
    "max_duration",
    "wait_timeout",
];
pub(crate) const RETRIEVE_KEYS: &[&str] = &[
    "model",
    "fallback",
    "fallback_on",
    "query",
    "corpus",
    "top_k",
    "params",
    "retry",
    "timeout",
    "max_duration",
];

pub(crate) fn kind_keys(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "model" => MODEL_KEYS,
        "retrieve" => RETRIEVE_KEYS,
        "route" => &["routes", "default"],
        "parallel" => &["branches"],
        "validate" => &["value", "schema", "judge", "repair"],
        "transform" => &["value"],
        "approval" => &["deadline", "message", "on_timeout"],
        _ => return None,
    })
}

struct Defaults {
    timeout: Dur,
    wait_timeout: Dur,
    max_duration: Option<Dur>,
    approval_deadline: Dur,
    retry: RetryPolicy,
}

/// A step as read, before dependencies are settled.
struct Raw {
    step: Step,
    path: String,
    explicit_needs: Option<Vec<String>>,
    /// Position in the file's top-level list (branches share their parent's).
    top_index: usize,
}

/// Parses and checks a workflow file. `models` lists every model the deployment offers.
pub fn compile(
    src: &str,
    files: &dyn FileLoader,
    models: &[ModelInfo],
) -> Result<Workflow, Vec<Diagnostic>> {
    if src.len() > limits::MAX_FILE_BYTES {
        return Err(vec![Diagnostic {
            line: 1,
            col: 1,
            message: format!("file is larger than {} bytes", limits::MAX_FILE_BYTES),
        }]);
    }
    let (root, idx) = yaml::parse(src).map_err(|e| {
        vec![Diagnostic {
            line: e.pos.line,
            col: e.pos.col,
            message: format!("YAML syntax: {}", e.message),
        }]
    })?;
    let mut cx = Ctx {
        idx,
        diags: Vec::new(),
        files,
        models,
    };
    let Some(top) = root.as_object() else {
        cx.err(
            "",
            "a workflow file must be a mapping with name, version and steps",
        );
        return Err(cx.diags);
    };
    cx.keys(top, "", TOP_KEYS, "the workflow");
    let name = cx.string(top, "", "name").unwrap_or_default();
    if name.is_empty() {
        cx.err("name", "`name` is required");
    } else if !valid_id(&name) {
        cx.err("name", "`name` may hold letters, digits, `_` and `-` only");
    }
    let version = cx.string(top, "", "version").unwrap_or_default();
    if version.is_empty() {
        cx.err("version", "`version` is required (runs pin it)");
    }
    let description = cx.string(top, "", "description");
    let input_schema = cx.schema(top, "", "input_schema");
    let output_schema = cx.schema(top, "", "output_schema");
    let timeout = cx.dur(top, "", "timeout");
    if let Some(t) = timeout.filter(|t| t.ms() < crate::recovery::MIN_RUN_TIMEOUT_MS) {
        cx.err(
            "timeout",
            format!(
                "the run `timeout` must be at least {}s, not {}s: recovering from a failed \
                 worker can take up to {}s (docs/architecture.md, \"Recovery\"), and that \
                 time must not fail the run",
                crate::recovery::MIN_RUN_TIMEOUT_MS / 1000,
                t.ms() / 1000,
                crate::recovery::RECOVERY_BOUND_MS / 1000
            ),
        );
    }

    let mut defaults = Defaults {
        timeout: Dur(30_000),
        wait_timeout: Dur(3_600_000),
        max_duration: None,
        approval_deadline: Dur(86_400_000),
        retry: RetryPolicy::default(),
    };
    if let Some(d) = top.get("defaults") {
        match d.as_object() {
            Some(obj) => {
                cx.keys(obj, "defaults", DEFAULTS_KEYS, "defaults");
                if let Some(t) = cx.dur(obj, "defaults", "timeout") {
                    defaults.timeout = t;
                }
                if let Some(t) = cx.dur(obj, "defaults", "wait_timeout") {
                    defaults.wait_timeout = t;
                }
                if let Some(t) = cx.dur(obj, "defaults", "approval_deadline") {
                    defaults.approval_deadline = t;
                }
                defaults.max_duration = cx.dur(obj, "defaults", "max_duration");
                defaults.retry = cx.retry(obj.get("retry"), "defaults", &RetryPolicy::default());
            }
            None => cx.err("defaults", "`defaults` must be a mapping"),
        }
    }
    let budget_usd = match top.get("budget") {
        None => None,
        Some(b) => match b.as_object() {
            Some(obj) => {
                cx.keys(obj, "budget", BUDGET_KEYS, "budget");
                match obj.get("max_cost_usd").and_then(Value::as_f64) {
                    Some(x) if x > 0.0 => Some(x),
                    _ => {
                        cx.err(
                            "budget.max_cost_usd",
                            "`budget.max_cost_usd` must be a number above 0",
                        );
                        None
                    }
                }
            }
            None => {
                cx.err("budget", "`budget` must be a mapping with `max_cost_usd`");
                None
            }
        },
    };

    let tape = match top.get("tape") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            cx.err(
                "tape",
                format!("`tape` must be true or false, not {}", kind_of(other)),
            );
            false
        }
    };

    // Steps.
    let mut raws: Vec<Raw> = Vec::new();
    match top.get("steps") {
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("steps.{i}");
                read_step(&mut cx, item, &path, i, &defaults, None, &mut raws);
            }
        }
        Some(Value::Array(_)) | None => cx.err("steps", "`steps` must list at least one step"),
        Some(other) => cx.err(
            "steps",
            format!("`steps` must be a list, not {}", kind_of(other)),
        ),
    }
    if raws.len() > limits::MAX_STEPS {
        cx.err(
            "steps",
            format!(
                "a workflow may have at most {} steps (branches included)",
                limits::MAX_STEPS
            ),
        );
    }

    // Unique ids.
    let mut seen: HashMap<String, String> = HashMap::new();
    for r in &raws {
        if let Some(first) = seen.insert(r.step.id.clone(), r.path.clone()) {
            let at = cx.idx.at(&first);
            cx.err(
                &join(&r.path, "id"),
                format!(
                    "duplicate step id `{}` (first defined at line {})",
                    r.step.id, at.line
                ),
            );
        }
    }

    settle_needs(&mut cx, &mut raws);
    let steps: Vec<Step> = raws.iter().map(|r| r.step.clone()).collect();
    check_graph(&mut cx, &raws);
    check_refs(&mut cx, &raws, &steps);

    let output = top.get("output").cloned();
    if let Some(out) = &output {
        for r in refs::refs_in(out) {
            match refs::check_ref(&r) {
                Ok(Some(id)) if !steps.iter().any(|s| s.id == id) => cx.err(
                    "output",
                    format!("`output` uses `{r}`, but there is no step `{id}`"),
                ),
                Err(e) => cx.err("output", e),
                _ => {}
            }
        }
    }

    if !cx.diags.is_empty() {
        cx.diags.sort();
        cx.diags.dedup();
        return Err(cx.diags);
    }
    Ok(Workflow {
        name,
        version,
        description,
        input_schema,
        output_schema,
        budget_usd,
        timeout,
        output,
        tape,
        steps,
    })
}

/// The rule for workflow names and step ids: letters, digits, `_`, `-`; 1–64 characters.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
