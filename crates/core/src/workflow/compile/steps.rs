//! Reading one step: its common keys, its kind, and the kind's own reader.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) fn read_step(
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
