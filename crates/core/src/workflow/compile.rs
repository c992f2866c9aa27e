//! Loading and statically checking a workflow file.
//!
//! Every problem is reported with the line and column where it starts, and checking goes on
//! after a problem so that one `switchyard validate` shows all of them. Files a workflow
//! includes (prompt templates, schemas, a retrieval corpus) come through a [`FileLoader`], so
//! this module stays free of I/O.

use super::yaml::{self, join, PosIndex};
use super::*;
use crate::model::{split_model, ModelInfo};
use crate::refs;
use crate::schema;
use serde_json::{json, Map};
use std::collections::{BTreeMap, HashMap, HashSet};

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

#[allow(clippy::too_many_arguments)]
fn read_step(
    cx: &mut Ctx,
    item: &Value,
    path: &str,
    top_index: usize,
    defaults: &Defaults,
    parent: Option<&str>,
    out: &mut Vec<Raw>,
) {
    let Some(obj) = item.as_object() else {
        cx.err(
            path,
            "a step must be a mapping with at least `id` and `kind`",
        );
        return;
    };
    let id = match (parent, cx.string(obj, path, "id")) {
        (Some(p), Some(id)) => format!("{p}.{id}"),
        (_, Some(id)) => id,
        (_, None) => {
            cx.err(path, "a step needs an `id`");
            return;
        }
    };
    let short = id.rsplit('.').next().unwrap_or(&id).to_string();
    if !valid_id(&short) {
        cx.err(
            &join(path, "id"),
            format!("step id `{short}` may hold letters, digits, `_` and `-` only (at most 64)"),
        );
    }
    let kind = match obj.get("kind") {
        None => "model".to_string(),
        Some(Value::String(k)) => k.clone(),
        Some(_) => {
            cx.err(&join(path, "kind"), "`kind` must be a string");
            return;
        }
    };
    let Some(allowed) = kind_keys(&kind) else {
        let expected = KINDS.join(", ");
        cx.err(
            &join(path, "kind"),
            format!("unknown step kind `{kind}` (expected one of {expected})"),
        );
        return;
    };
    let mut keys: Vec<&str> = COMMON.to_vec();
    keys.extend_from_slice(allowed);
    cx.keys(obj, path, &keys, &format!("a `{kind}` step"));
    if parent.is_some() && !matches!(kind.as_str(), "model" | "retrieve" | "transform") {
        cx.err(
            &join(path, "kind"),
            "a parallel branch must be a model, retrieve or transform step",
        );
    }
    let explicit_needs = if parent.is_some() {
        if obj.contains_key("needs") {
            cx.err(
                &join(path, "needs"),
                "a parallel branch starts with its parallel step; it takes no `needs`",
            );
        }
        None
    } else {
        cx.str_list(obj, path, "needs")
    };
    let optional = cx.bool(obj, path, "optional");
    cx.string(obj, path, "description");
    let gated_by = None;

    let kind_v = match kind.as_str() {
        "model" | "retrieve" => read_model(cx, obj, path, &kind, defaults),
        "route" => read_route(cx, obj, path),
        "transform" => Some(StepKind::Transform {
            value: obj.get("value").cloned().unwrap_or(Value::Null),
        }),
        "validate" => read_validate(cx, obj, path, defaults),
        "approval" => {
            let on_timeout = match cx.string(obj, path, "on_timeout").as_deref() {
                None | Some("reject") => OnTimeout::Reject,
                Some("approve") => OnTimeout::Approve,
                Some(other) => {
                    cx.err(
                        &join(path, "on_timeout"),
                        format!("`on_timeout` must be reject or approve, not `{other}`"),
                    );
                    OnTimeout::Reject
                }
            };
            Some(StepKind::Approval(ApprovalStep {
                deadline: cx
                    .dur(obj, path, "deadline")
                    .unwrap_or(defaults.approval_deadline),
                message: cx.string(obj, path, "message"),
                on_timeout,
            }))
        }
        "parallel" => {
            let bpath = join(path, "branches");
            let mut names = Vec::new();
            match obj.get("branches") {
                Some(Value::Object(branches)) if !branches.is_empty() => {
                    for (name, spec) in branches {
                        let mut spec = spec.clone();
                        if let Some(m) = spec.as_object_mut() {
                            if m.contains_key("id") {
                                cx.err_key(&join(&join(&bpath, name), "id"), "a branch is named by its key under `branches`; it takes no `id`");
                            }
                            m.insert("id".into(), Value::String(name.clone()));
                        }
                        let before = out.len();
                        read_step(
                            cx,
                            &spec,
                            &join(&bpath, name),
                            top_index,
                            defaults,
                            Some(&id),
                            out,
                        );
                        if out.len() > before {
                            names.push(format!("{id}.{name}"));
                        }
                    }
                }
                _ => cx.err(
                    &bpath,
                    "a parallel step needs `branches`: a mapping of branch name to step",
                ),
            }
            Some(StepKind::Parallel { branches: names })
        }
        _ => None,
    };
    let Some(kind_v) = kind_v else { return };
    let parent_id = parent.map(str::to_string);
    // Branches are pushed before their parallel step; reorder so the parent comes first.
    let raw = Raw {
        step: Step {
            id,
            needs: Vec::new(),
            gated_by,
            parent: parent_id,
            optional,
            kind: kind_v,
        },
        path: path.to_string(),
        explicit_needs,
        top_index,
    };
    if let StepKind::Parallel { branches } = &raw.step.kind {
        let n = branches.len();
        let at = out.len().saturating_sub(n);
        out.insert(at, raw);
    } else {
        out.push(raw);
    }
}

fn read_model(
    cx: &mut Ctx,
    obj: &Map<String, Value>,
    path: &str,
    kind: &str,
    defaults: &Defaults,
) -> Option<StepKind> {
    let retrieve = kind == "retrieve";
    let (mut models, mut paths, cascade, select) = if obj.contains_key("cascade") {
        for key in ["model", "fallback", "select"] {
            if obj.contains_key(key) {
                cx.err(
                    &join(path, key),
                    format!("`{key}` cannot be combined with `cascade`: the tiers are the models (errors in `fallback_on` move up them)"),
                );
            }
        }
        let (models, paths, c) = read_cascade(cx, obj, path)?;
        (models, paths, Some(c), None)
    } else if obj.contains_key("select") {
        if obj.contains_key("model") {
            cx.err(
                &join(path, "model"),
                "`model` cannot be combined with `select`: the cases name the models",
            );
        }
        let (models, paths, cases) = read_select(cx, obj, path)?;
        (models, paths, None, Some(cases))
    } else {
        let primary = match cx.string(obj, path, "model") {
            Some(m) => m,
            None if retrieve => "local/keyword-retriever".to_string(),
            None => {
                cx.err(
                    path,
                    "a model step needs `model` (e.g. local/keyword-classifier), `cascade` or `select`",
                );
                return None;
            }
        };
        (vec![primary], vec![join(path, "model")], None, None)
    };
    let fallbacks = cx.str_list(obj, path, "fallback").unwrap_or_default();
    for (i, m) in fallbacks.into_iter().enumerate() {
        paths.push(join(&join(path, "fallback"), &i.to_string()));
        models.push(m);
    }
    if models.len() > limits::MAX_MODELS {
        cx.err(
            path,
            format!(
                "a step may name at most {} models (tiers or cases, and fallbacks); this one names {}",
                limits::MAX_MODELS,
                models.len()
            ),
        );
    }
    let mut infos = Vec::new();
    for (m, p) in models.iter().zip(&paths) {
        infos.push(cx.model_info(m, p));
    }
    let role = match obj.get("role") {
        Some(r) => match serde_json::from_value::<Role>(r.clone()) {
            Ok(r) => Some(r),
            Err(_) => {
                cx.err(&join(path, "role"), "`role` must be one of classification, extraction, generation, embedding, moderation, transcription, asset, retrieval");
                None
            }
        },
        None if retrieve => Some(Role::Retrieval),
        None => None,
    };
    let role = role
        .or_else(|| {
            infos
                .first()
                .and_then(|i| i.as_ref())
                .and_then(|i| i.roles.first().copied())
        })
        .unwrap_or(Role::Generation);
    for (info, p) in infos.iter().zip(&paths) {
        if let Some(info) = info {
            if !info.roles.contains(&role) {
                cx.err(
                    p,
                    format!("`{}` does not serve the role `{}`", info.id, role.as_str()),
                );
            }
        }
    }
    let asynchronous = infos.iter().flatten().any(|i| i.asynchronous);
    if asynchronous && cascade.is_some() {
        cx.err(
            &join(path, "cascade"),
            "a cascade's tiers must answer synchronously: its conditions read each answer as it comes",
        );
    }
    let prompt = match obj.get("prompt") {
        None => None,
        Some(Value::Object(p)) => {
            let pp = join(path, "prompt");
            cx.keys(p, &pp, PROMPT_KEYS, "prompt");
            let version = cx.string(p, &pp, "version");
            if version.is_none() {
                cx.err(
                    &pp,
                    "`prompt.version` is required: every step record keeps the prompt version",
                );
            }
            let template = match (cx.string(p, &pp, "template"), cx.string(p, &pp, "file")) {
                (Some(t), None) => Some(t),
                (None, Some(f)) => match cx.files.read(&f) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        cx.err(&join(&pp, "file"), e);
                        None
                    }
                },
                _ => {
                    cx.err(&pp, "`prompt` takes exactly one of `template` and `file`");
                    None
                }
            };
            match (version, template) {
                (Some(version), Some(template)) => Some(Prompt { version, template }),
                _ => None,
            }
        }
        Some(_) => {
            cx.err(
                &join(path, "prompt"),
                "`prompt` must be a mapping with `version` and `template` or `file`",
            );
            None
        }
    };
    let mut params = match obj.get("params") {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            cx.err(&join(path, "params"), "`params` must be a mapping");
            json!({})
        }
    };
    // `${...}` references are substituted into params before the model sees them, so a
    // reference inside template text would turn data (a user's input) into template code:
    // `{{ 7*7 }}` in an input would be evaluated. Templates read data as variables instead.
    if let Some(t) = params.get("template").and_then(Value::as_str) {
        if t.contains("${") {
            cx.err(
                &join(&join(path, "params"), "template"),
                "`params.template` must not contain `${...}` references: they would make \
                 data part of the template; pass the value through `input:` and write \
                 `{{ input.NAME }}` in the template",
            );
        }
    }
    let input = if retrieve {
        if obj.get("query").is_none() {
            cx.err(
                path,
                "a retrieve step needs `query` (e.g. \"${input.question}\")",
            );
        }
        if let Some(k) = obj.get("top_k") {
            match k.as_u64() {
                Some(k) if (1..=50).contains(&k) => {
                    if let Some(m) = params.as_object_mut() {
                        m.insert("top_k".into(), json!(k));
                    }
                }
                _ => cx.err(
                    &join(path, "top_k"),
                    "`top_k` must be a whole number from 1 to 50",
                ),
            }
        }
        if let Some(corpus) = cx.string(obj, path, "corpus") {
            match cx
                .files
                .read(&corpus)
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    serde_json::from_str::<Value>(&t)
                        .map_err(|e| format!("`{corpus}` is not valid JSON: {e}"))
                }) {
                Ok(Value::Array(docs)) => {
                    if let Some(m) = params.as_object_mut() {
                        m.insert("documents".into(), Value::Array(docs));
                    }
                }
                Ok(_) => cx.err(
                    &join(path, "corpus"),
                    format!("`{corpus}` must hold a JSON list of {{id, title, text}} documents"),
                ),
                Err(e) => cx.err(&join(path, "corpus"), e),
            }
        }
        json!({"query": obj.get("query").cloned().unwrap_or(Value::Null)})
    } else {
        obj.get("input").cloned().unwrap_or(Value::Null)
    };
    let fallback_on = match cx.str_list(obj, path, "fallback_on") {
        None => ErrorClass::ALL
            .into_iter()
            .filter(|c| c.falls_back_by_default())
            .collect(),
        Some(list) => {
            let mut out = Vec::new();
            for (i, c) in list.iter().enumerate() {
                let p = join(&join(path, "fallback_on"), &i.to_string());
                match ErrorClass::parse(c) {
                    Some(cl) if cl.may_fall_back() => out.push(cl),
                    Some(cl) => cx.err(
                        &p,
                        format!("`{cl}` never falls back (a fallback cannot fix it)"),
                    ),
                    None => cx.err(&p, format!("unknown error class `{c}`")),
                }
            }
            out
        }
    };
    if obj.contains_key("fallback_on") && models.len() < 2 {
        cx.err(
            &join(path, "fallback_on"),
            "`fallback_on` without `fallback` models has no effect",
        );
    }
    let output_schema = cx.schema(obj, path, "output_schema");
    let retry = cx.retry(obj.get("retry"), path, &defaults.retry);
    Some(StepKind::Model(Box::new(ModelStep {
        models,
        role,
        prompt,
        input,
        params,
        output_schema,
        fallback_on,
        retry,
        timeout: cx.dur(obj, path, "timeout").unwrap_or(defaults.timeout),
        max_duration: cx.dur(obj, path, "max_duration").or(defaults.max_duration),
        wait_timeout: cx
            .dur(obj, path, "wait_timeout")
            .unwrap_or(defaults.wait_timeout),
        asynchronous,
        cascade,
        select,
    })))
}

/// Reads a condition of a cascade tier or a `select` case, whose path must start at one of
/// `roots` (what that scope holds).
fn read_condition(cx: &mut Ctx, v: &Value, path: &str, roots: &[&str]) -> Option<refs::Condition> {
    match serde_path_to_error::deserialize::<_, refs::Condition>(v.clone()) {
        Ok(c) => {
            let first = refs::segments(&c.path)
                .ok()
                .and_then(|s| s.first().cloned())
                .unwrap_or_default();
            if roots.contains(&first.as_str()) {
                Some(c)
            } else {
                cx.err(
                    &join(path, "path"),
                    format!(
                        "`{}` is not something this condition can read: start the path with one of {}",
                        c.path,
                        roots.join(", ")
                    ),
                );
                None
            }
        }
        Err(e) => {
            cx.err(path, format!("a condition: {}", e.inner()));
            None
        }
    }
}

/// `cascade: [{model, params?, escalate_if?}, …]`: two tiers or more, cheapest first; every
/// tier but the top one may say when its answer is passed over.
fn read_cascade(
    cx: &mut Ctx,
    obj: &Map<String, Value>,
    path: &str,
) -> Option<(Vec<String>, Vec<String>, Cascade)> {
    let cpath = join(path, "cascade");
    let Some(Value::Array(items)) = obj.get("cascade") else {
        cx.err(
            &cpath,
            "`cascade` must be a list of tiers {model, params, escalate_if}, cheapest first",
        );
        return None;
    };
    if items.len() < 2 {
        cx.err(
            &cpath,
            "a cascade needs at least two tiers (cheapest first)",
        );
        return None;
    }
    let (mut models, mut paths) = (Vec::new(), Vec::new());
    let mut c = Cascade {
        escalate_if: Vec::new(),
        params: Vec::new(),
    };
    for (i, item) in items.iter().enumerate() {
        let p = join(&cpath, &i.to_string());
        let Some(o) = item.as_object() else {
            cx.err(&p, "a tier must be a mapping {model, params, escalate_if}");
            return None;
        };
        cx.keys(o, &p, CASCADE_TIER_KEYS, "a cascade tier");
        match cx.string(o, &p, "model") {
            Some(m) => models.push(m),
            None => {
                cx.err(&p, "a tier needs `model`");
                return None;
            }
        }
        paths.push(join(&p, "model"));
        c.params.push(match o.get("params") {
            None | Some(Value::Null) => Value::Null,
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                cx.err(&join(&p, "params"), "`params` must be a mapping");
                Value::Null
            }
        });
        let top = i + 1 == items.len();
        let conds = match o.get("escalate_if") {
            None => Vec::new(),
            Some(_) if top => {
                cx.err(
                    &join(&p, "escalate_if"),
                    "the top tier has no tier above it to escalate to: its answer stands",
                );
                Vec::new()
            }
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .filter_map(|(j, v)| {
                    read_condition(
                        cx,
                        v,
                        &join(&join(&p, "escalate_if"), &j.to_string()),
                        super::ESCALATION_ROOTS,
                    )
                })
                .collect(),
            Some(v) => read_condition(cx, v, &join(&p, "escalate_if"), super::ESCALATION_ROOTS)
                .into_iter()
                .collect(),
        };
        if !top {
            c.escalate_if.push(conds);
        }
    }
    Some((models, paths, c))
}

/// A `select` list's conditions, one per case (the last one `None`).
type SelectCases = Vec<Option<refs::Condition>>;

/// `select: [{model, when?}, …]`: the first case whose `when` holds picks the step's model;
/// the last case has no `when` (the model used otherwise).
fn read_select(
    cx: &mut Ctx,
    obj: &Map<String, Value>,
    path: &str,
) -> Option<(Vec<String>, Vec<String>, SelectCases)> {
    let spath = join(path, "select");
    let Some(Value::Array(items)) = obj
        .get("select")
        .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    else {
        cx.err(&spath, "`select` must be a non-empty list of {model, when}");
        return None;
    };
    let (mut models, mut paths, mut cases) = (Vec::new(), Vec::new(), Vec::new());
    for (i, item) in items.iter().enumerate() {
        let p = join(&spath, &i.to_string());
        let Some(o) = item.as_object() else {
            cx.err(&p, "a case must be a mapping {model, when}");
            return None;
        };
        cx.keys(o, &p, SELECT_CASE_KEYS, "a select case");
        let last = i + 1 == items.len();
        match (o.get("when"), last) {
            (None, false) => cx.err(
                &p,
                "only the last case may leave out `when`: a case without it always matches",
            ),
            (Some(_), true) => cx.err(
                &join(&p, "when"),
                "the last case must have no `when`: it names the model used when no case matches",
            ),
            _ => {}
        }
        let when = o
            .get("when")
            .and_then(|w| read_condition(cx, w, &join(&p, "when"), super::SELECT_ROOTS));
        match cx.string(o, &p, "model") {
            Some(m) => models.push(m),
            None => {
                cx.err(&p, "a case needs `model`");
                return None;
            }
        }
        paths.push(join(&p, "model"));
        cases.push(when);
    }
    Some((models, paths, cases))
}

fn read_route(cx: &mut Ctx, obj: &Map<String, Value>, path: &str) -> Option<StepKind> {
    let rpath = join(path, "routes");
    let mut routes = Vec::new();
    match obj.get("routes") {
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut catch_all: Option<usize> = None;
            for (i, item) in items.iter().enumerate() {
                let p = join(&rpath, &i.to_string());
                let Some(o) = item.as_object() else {
                    cx.err(&p, "a route must be a mapping with `when` and `to`");
                    continue;
                };
                cx.keys(o, &p, ROUTE_CASE_KEYS, "a route");
                if let Some(first) = catch_all {
                    cx.err(
                        &p,
                        format!(
                            "unreachable route: route {first} has no `when` and always matches"
                        ),
                    );
                }
                let when = match o.get("when") {
                    None => {
                        catch_all.get_or_insert(i);
                        None
                    }
                    Some(w) => {
                        match serde_path_to_error::deserialize::<_, refs::Condition>(w.clone()) {
                            Ok(c) => Some(c),
                            Err(e) => {
                                cx.err(&join(&p, "when"), format!("`when`: {}", e.inner()));
                                None
                            }
                        }
                    }
                };
                match cx.string(o, &p, "to") {
                    Some(to) => routes.push(RouteCase { when, to }),
                    None => cx.err(&p, "a route needs `to`: the step it starts"),
                }
            }
            if catch_all.is_some() && obj.contains_key("default") {
                cx.err(
                    &join(path, "default"),
                    "unreachable `default`: a route without `when` always matches first",
                );
            }
        }
        _ => cx.err(&rpath, "a route step needs `routes`: a list of {when, to}"),
    }
    Some(StepKind::Route(RouteStep {
        routes,
        default: cx.string(obj, path, "default"),
    }))
}

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

/// A validate step's `judge`: read as a model step whose prompt is `criteria`, whose input is
/// the step's value and whose answer must be a verdict.
fn read_judge(
    cx: &mut Ctx,
    j: &Map<String, Value>,
    path: &str,
    value: &Value,
    defaults: &Defaults,
) -> Option<crate::workflow::Judge> {
    cx.keys(j, path, JUDGE_KEYS, "judge");
    let mut call = j.clone();
    call.remove("min_score");
    if let Some(c) = call.remove("criteria") {
        call.insert("prompt".into(), c);
    }
    call.insert("input".into(), value.clone());
    call.insert("role".into(), json!("generation"));
    let rules_judge = j.get("model").and_then(Value::as_str) == Some("local/rules-judge");
    if !rules_judge && !j.contains_key("criteria") {
        cx.err(
            path,
            "a judge needs `criteria` ({version, template}): what the value must satisfy",
        );
    }
    let Some(StepKind::Model(mut m)) = read_model(cx, &call, path, "model", defaults) else {
        return None;
    };
    if m.asynchronous {
        cx.err(&join(path, "model"), "a judge must answer synchronously");
    }
    m.output_schema = Some(crate::judge::verdict_schema());
    let min_score = match j.get("min_score") {
        None => None,
        Some(v) => match v.as_f64() {
            Some(x) if (0.0..=1.0).contains(&x) => Some(x),
            _ => {
                cx.err(
                    &join(path, "min_score"),
                    "`min_score` must be a number from 0 to 1",
                );
                None
            }
        },
    };
    Some(crate::workflow::Judge { call: m, min_score })
}

fn read_validate(
    cx: &mut Ctx,
    obj: &Map<String, Value>,
    path: &str,
    defaults: &Defaults,
) -> Option<StepKind> {
    let value = match obj.get("value") {
        Some(v) => v.clone(),
        None => {
            cx.err(
                path,
                "a validate step needs `value` (e.g. \"${steps.draft.output.json}\")",
            );
            Value::Null
        }
    };
    let schema = cx.schema(obj, path, "schema");
    let judge = match obj.get("judge") {
        None => None,
        Some(Value::Object(j)) => read_judge(cx, j, &join(path, "judge"), &value, defaults),
        Some(_) => {
            cx.err(
                &join(path, "judge"),
                "`judge` must be a mapping with `model` and `criteria`",
            );
            None
        }
    };
    if !obj.contains_key("schema") && !obj.contains_key("judge") {
        cx.err(path, "a validate step needs `schema`, `judge` or both");
        return None;
    }
    if (obj.contains_key("schema") && schema.is_none())
        || (obj.contains_key("judge") && judge.is_none())
    {
        return None;
    }
    let repair = match obj.get("repair") {
        None => None,
        Some(Value::Object(r)) => {
            let p = join(path, "repair");
            cx.keys(r, &p, REPAIR_KEYS, "repair");
            let escalate = cx.bool(r, &p, "escalate");
            let max_attempts = match r.get("max_attempts") {
                None => 1,
                Some(n) => match n.as_u64() {
                    Some(n) if (1..=u64::from(limits::MAX_REPAIRS)).contains(&n) => n as u32,
                    _ => {
                        cx.err(
                            &join(&p, "max_attempts"),
                            format!(
                                "`repair.max_attempts` must be from 1 to {}",
                                limits::MAX_REPAIRS
                            ),
                        );
                        1
                    }
                },
            };
            match cx.string(r, &p, "step") {
                Some(step) => Some(Repair {
                    step,
                    max_attempts,
                    escalate,
                }),
                None => {
                    cx.err(
                        &p,
                        "`repair` needs `step`: the model step to re-run with the errors",
                    );
                    None
                }
            }
        }
        Some(_) => {
            cx.err(
                &join(path, "repair"),
                "`repair` must be a mapping with `step` and `max_attempts`",
            );
            None
        }
    };
    Some(StepKind::Validate(ValidateStep {
        value,
        schema,
        judge,
        repair,
    }))
}

/// Decides every step's `needs` and `gated_by`.
fn settle_needs(cx: &mut Ctx, raws: &mut [Raw]) {
    let ids: HashSet<String> = raws.iter().map(|r| r.step.id.clone()).collect();
    // Route targets.
    let mut gate: BTreeMap<String, String> = BTreeMap::new();
    for r in raws.iter() {
        if let StepKind::Route(route) = &r.step.kind {
            for (i, case) in route.routes.iter().enumerate() {
                check_target(
                    cx,
                    &ids,
                    &r.step.id,
                    &case.to,
                    &join(&join(&r.path, "routes"), &format!("{i}.to")),
                    &mut gate,
                );
            }
            if let Some(d) = &route.default {
                check_target(
                    cx,
                    &ids,
                    &r.step.id,
                    d,
                    &join(&r.path, "default"),
                    &mut gate,
                );
            }
        }
    }
    // The previous top-level step, for default needs.
    let mut prev_top: Vec<Option<String>> = Vec::new();
    let mut last: Option<String> = None;
    let mut last_index = usize::MAX;
    for r in raws.iter() {
        if r.step.parent.is_some() {
            prev_top.push(None);
            continue;
        }
        if r.top_index != last_index {
            prev_top.push(last.clone());
            last = Some(r.step.id.clone());
            last_index = r.top_index;
        } else {
            prev_top.push(None);
        }
    }
    let parents: HashMap<String, (Vec<String>, Option<String>)> = HashMap::new();
    let mut parents = parents;
    for (i, r) in raws.iter_mut().enumerate() {
        if r.step.parent.is_some() {
            continue;
        }
        let gated = gate.get(&r.step.id).cloned();
        let mut needs = match (&r.explicit_needs, &gated) {
            (Some(n), _) => n.clone(),
            (None, Some(route)) => vec![route.clone()],
            (None, None) => prev_top[i].clone().into_iter().collect(),
        };
        if let Some(route) = &gated {
            if !needs.contains(route) {
                needs.push(route.clone());
            }
        }
        for (j, n) in needs.iter().enumerate() {
            if !ids.contains(n) {
                cx.err(
                    &join(&join(&r.path, "needs"), &j.to_string()),
                    format!("`needs` names `{n}`, which is not a step of this workflow"),
                );
            } else if n.contains('.') {
                cx.err(
                    &join(&join(&r.path, "needs"), &j.to_string()),
                    format!("`{n}` is a parallel branch; depend on its parallel step instead"),
                );
            }
        }
        r.step.gated_by = gated.clone();
        if let StepKind::Parallel { branches } = &r.step.kind {
            for b in branches {
                parents.insert(b.clone(), (needs.clone(), gated.clone()));
            }
            r.step.needs = branches.clone();
        } else {
            r.step.needs = needs;
        }
    }
    for r in raws.iter_mut() {
        if let Some((needs, gated)) = parents.get(&r.step.id) {
            r.step.needs = needs.clone();
            r.step.gated_by = gated.clone();
        }
    }
}

fn check_target(
    cx: &mut Ctx,
    ids: &HashSet<String>,
    route: &str,
    to: &str,
    path: &str,
    gate: &mut BTreeMap<String, String>,
) {
    if !ids.contains(to) || to.contains('.') {
        cx.err(
            path,
            format!("route target `{to}` is not a step of this workflow"),
        );
    } else if to == route {
        cx.err(path, "a route cannot choose itself");
    } else if let Some(other) = gate.get(to) {
        if other != route {
            cx.err(path, format!("`{to}` is already a target of route `{other}`; a step can be chosen by one route only"));
        }
    } else {
        gate.insert(to.to_string(), route.to_string());
    }
}

/// Cycles, and repair targets.
fn check_graph(cx: &mut Ctx, raws: &[Raw]) {
    let by_id: HashMap<&str, &Raw> = raws.iter().map(|r| (r.step.id.as_str(), r)).collect();
    // Depth-first search with colours; report each cycle once, at its first step.
    let mut colour: HashMap<&str, u8> = HashMap::new();
    for r in raws {
        let mut stack: Vec<&str> = Vec::new();
        visit(&r.step.id, &by_id, &mut colour, &mut stack, cx);
    }
    for r in raws {
        if let StepKind::Validate(v) = &r.step.kind {
            if let Some(rep) = &v.repair {
                let p = join(&join(&r.path, "repair"), "step");
                match by_id.get(rep.step.as_str()) {
                    Some(t) if matches!(t.step.kind, StepKind::Model(_)) => {
                        let cascade =
                            matches!(&t.step.kind, StepKind::Model(m) if m.cascade.is_some());
                        if rep.escalate && !cascade {
                            cx.err(
                                &join(&join(&r.path, "repair"), "escalate"),
                                format!(
                                    "`repair.escalate` moves a cascade up a tier, but `{}` has no `cascade`",
                                    rep.step
                                ),
                            );
                        }
                        if !r.step.needs.contains(&rep.step) {
                            cx.err(
                                &p,
                                format!(
                                    "repair step `{}` must be one this step directly needs",
                                    rep.step
                                ),
                            );
                        }
                    }
                    Some(_) => cx.err(
                        &p,
                        format!("repair step `{}` must be a model step", rep.step),
                    ),
                    None => cx.err(
                        &p,
                        format!("repair step `{}` is not a step of this workflow", rep.step),
                    ),
                }
            }
        }
    }
}

fn visit<'a>(
    id: &'a str,
    by_id: &HashMap<&'a str, &'a Raw>,
    colour: &mut HashMap<&'a str, u8>,
    stack: &mut Vec<&'a str>,
    cx: &mut Ctx,
) {
    match colour.get(id) {
        Some(2) => return,
        Some(1) => {
            let start = stack.iter().position(|s| *s == id).unwrap_or(0);
            let mut cycle: Vec<&str> = stack[start..].to_vec();
            cycle.push(id);
            let path = by_id
                .get(id)
                .map(|r| join(&r.path, "needs"))
                .unwrap_or_default();
            cx.err(&path, format!("cycle: {}", cycle.join(" → ")));
            return;
        }
        _ => {}
    }
    let Some(raw) = by_id.get(id) else { return };
    colour.insert(id, 1);
    stack.push(id);
    for n in &raw.step.needs {
        if by_id.contains_key(n.as_str()) {
            visit(
                by_id
                    .get(n.as_str())
                    .map(|r| r.step.id.as_str())
                    .unwrap_or(""),
                by_id,
                colour,
                stack,
                cx,
            );
        }
    }
    stack.pop();
    colour.insert(id, 2);
}

/// Every reference must name an existing step that runs before the one using it.
fn check_refs(cx: &mut Ctx, raws: &[Raw], steps: &[Step]) {
    let needs: HashMap<&str, &Vec<String>> =
        steps.iter().map(|s| (s.id.as_str(), &s.needs)).collect();
    let ancestors = |id: &str| -> HashSet<String> {
        let mut seen = HashSet::new();
        let mut todo: Vec<String> = needs.get(id).map(|n| n.to_vec()).unwrap_or_default();
        while let Some(n) = todo.pop() {
            if seen.insert(n.clone()) {
                todo.extend(
                    needs
                        .get(n.as_str())
                        .map(|x| x.to_vec())
                        .unwrap_or_default(),
                );
            }
        }
        seen
    };
    for r in raws {
        let anc = ancestors(&r.step.id);
        let mut uses: Vec<(String, String)> = Vec::new(); // (field path, reference)
        let mut templates: Vec<(String, String)> = Vec::new();
        match &r.step.kind {
            StepKind::Model(m) => {
                let field = if m.role == Role::Retrieval {
                    "query"
                } else {
                    "input"
                };
                uses.extend(
                    refs::refs_in(&m.input)
                        .into_iter()
                        .map(|x| (join(&r.path, field), x)),
                );
                uses.extend(
                    refs::refs_in(&m.params)
                        .into_iter()
                        .map(|x| (join(&r.path, "params"), x)),
                );
                if let Some(p) = &m.prompt {
                    templates.push((join(&r.path, "prompt"), p.template.clone()));
                }
                // Tier parameters and the run-reading conditions of cascades and selects
                // name steps too.
                let run_root = |p: &str| {
                    matches!(
                        refs::segments(p)
                            .ok()
                            .and_then(|s| s.first().cloned())
                            .as_deref(),
                        Some("input" | "steps" | "run")
                    )
                };
                if let Some(c) = &m.cascade {
                    let at = join(&r.path, "cascade");
                    for (i, tp) in c.params.iter().enumerate() {
                        uses.extend(
                            refs::refs_in(tp)
                                .into_iter()
                                .map(|x| (join(&join(&at, &i.to_string()), "params"), x)),
                        );
                    }
                    for (i, conds) in c.escalate_if.iter().enumerate() {
                        for w in conds.iter().filter(|w| run_root(&w.path)) {
                            uses.push((
                                join(&join(&at, &i.to_string()), "escalate_if"),
                                w.path.clone(),
                            ));
                        }
                    }
                }
                for (i, w) in m.select.iter().flatten().enumerate() {
                    if let Some(w) = w.as_ref().filter(|w| run_root(&w.path)) {
                        uses.push((
                            join(&join(&r.path, "select"), &format!("{i}.when.path")),
                            w.path.clone(),
                        ));
                    }
                }
            }
            StepKind::Transform { value } => uses.extend(
                refs::refs_in(value)
                    .into_iter()
                    .map(|x| (join(&r.path, "value"), x)),
            ),
            StepKind::Validate(v) => {
                uses.extend(
                    refs::refs_in(&v.value)
                        .into_iter()
                        .map(|x| (join(&r.path, "value"), x)),
                );
                if let Some(j) = &v.judge {
                    let at = join(&r.path, "judge");
                    uses.extend(
                        refs::refs_in(&j.call.params)
                            .into_iter()
                            .map(|x| (join(&at, "params"), x)),
                    );
                    if let Some(p) = &j.call.prompt {
                        templates.push((join(&at, "criteria"), p.template.clone()));
                    }
                }
            }
            StepKind::Route(route) => {
                for (i, c) in route.routes.iter().enumerate() {
                    if let Some(w) = &c.when {
                        uses.push((
                            join(&join(&r.path, "routes"), &format!("{i}.when.path")),
                            w.path.clone(),
                        ));
                    }
                }
            }
            StepKind::Approval(a) => {
                if let Some(m) = &a.message {
                    templates.push((join(&r.path, "message"), m.clone()));
                }
            }
            StepKind::Parallel { .. } => {}
        }
        for (path, tpl) in templates {
            match refs::check_template(&tpl) {
                Ok(vars) => {
                    for v in vars {
                        let root = v.split('.').next().unwrap_or("");
                        if root == "steps" {
                            uses.push((path.clone(), v));
                        } else if !["input", "run", "feedback", "attempt"].contains(&root) {
                            cx.err(&path, format!("template uses `{v}`; templates see input, steps, run, feedback and attempt"));
                        }
                    }
                }
                Err(e) => cx.err(&path, e),
            }
        }
        for (path, reference) in uses {
            match refs::check_ref(&reference) {
                Ok(Some(id)) => {
                    if !needs.contains_key(id.as_str()) {
                        cx.err(
                            &path,
                            format!("`{reference}` names step `{id}`, which does not exist"),
                        );
                    } else if id == r.step.id {
                        cx.err(&path, format!("step `{id}` cannot use its own output"));
                    } else if !anc.contains(&id) {
                        cx.err(&path, format!("`{reference}`: step `{}` does not run after `{id}`; add `{id}` to its `needs`", r.step.id));
                    }
                }
                Ok(None) => {}
                Err(e) => cx.err(&path, e),
            }
        }
    }
}
