//! After every step is read: `needs` settled, the graph checked (targets, cycles,
//! reachability), and every reference resolved against the steps it may read.

use super::*;

/// Decides every step's `needs` and `gated_by`.
pub(super) fn settle_needs(cx: &mut Ctx, raws: &mut [Raw]) {
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

pub(super) fn check_target(
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
pub(super) fn check_graph(cx: &mut Ctx, raws: &[Raw]) {
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

pub(super) fn visit<'a>(
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
pub(super) fn check_refs(cx: &mut Ctx, raws: &[Raw], steps: &[Step]) {
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
