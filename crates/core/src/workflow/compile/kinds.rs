//! The other kinds' readers: route cases, a validate step and its judge and repair.

use super::*;

pub(super) fn read_route(cx: &mut Ctx, obj: &Map<String, Value>, path: &str) -> Option<StepKind> {
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

/// A validate step's `judge`: read as a model step whose prompt is `criteria`, whose input is
/// the step's value and whose answer must be a verdict.
pub(super) fn read_judge(
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
    m.output_schema = Some(crate::machine::judge::verdict_schema());
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

pub(super) fn read_validate(
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
