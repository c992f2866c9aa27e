//! Model and retrieve steps: models and fallbacks, prompts, conditions, cascades and `select`.

use super::*;

pub(super) fn read_model(
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
pub(super) fn read_condition(
    cx: &mut Ctx,
    v: &Value,
    path: &str,
    roots: &[&str],
) -> Option<refs::Condition> {
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
pub(super) fn read_cascade(
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
pub(super) type SelectCases = Vec<Option<refs::Condition>>;

/// `select: [{model, when?}, …]`: the first case whose `when` holds picks the step's model;
/// the last case has no `when` (the model used otherwise).
pub(super) fn read_select(
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
