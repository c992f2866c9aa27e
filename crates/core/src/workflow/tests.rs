//! Compile tests: what a valid file turns into, and where each kind of mistake is reported.

use super::*;
use crate::model::{ModelInfo, Role};
use serde_json::json;
use std::collections::HashMap;

/// The models a test deployment offers.
fn catalog() -> Vec<ModelInfo> {
    let m = |id: &str, roles: &[Role], asynchronous: bool| ModelInfo {
        id: id.to_string(),
        roles: roles.to_vec(),
        asynchronous,
        description: String::new(),
    };
    vec![
        m("local/keyword-classifier", &[Role::Classification], false),
        m("local/template-generator", &[Role::Generation], false),
        m("local/extractive-summarizer", &[Role::Generation], false),
        m("local/keyword-retriever", &[Role::Retrieval], false),
        m("local/async-job", &[Role::Asset], true),
        m("local/rules-judge", &[Role::Generation], false),
        m(
            "replicate/black-forest-labs/flux-schnell",
            &[Role::Asset],
            true,
        ),
    ]
}

/// Included files, by relative path.
struct MapFiles(HashMap<&'static str, &'static str>);

impl FileLoader for MapFiles {
    fn read(&self, relative_path: &str) -> Result<String, String> {
        self.0
            .get(relative_path)
            .map(|s| s.to_string())
            .ok_or_else(|| format!("cannot read `{relative_path}`: no such file"))
    }
}

fn files() -> MapFiles {
    MapFiles(HashMap::from([
        (
            "prompts/draft.j2",
            "Answer the {{ input.topic }} ticket politely.",
        ),
        (
            "corpus.json",
            r#"[{"id": "d1", "title": "Refunds", "text": "Refunds take 5 days."},
                {"id": "d2", "title": "Login", "text": "Reset your password."}]"#,
        ),
        (
            "schemas/reply.json",
            r#"{"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}"#,
        ),
        ("schemas/broken.json", "{ not json"),
    ]))
}

/// Strips the common indentation (and a leading newline), so YAML can sit indented in the
/// source while line 1 of the string is line 1 of the file.
fn dedent(src: &str) -> String {
    let src = src.strip_prefix('\n').unwrap_or(src);
    let indent = src
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    src.lines()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn ok(src: &str) -> Workflow {
    match compile(&dedent(src), &files(), &catalog()) {
        Ok(wf) => wf,
        Err(diags) => panic!("expected a valid workflow, got {diags:#?}"),
    }
}

fn errs(src: &str) -> Vec<Diagnostic> {
    match compile(&dedent(src), &files(), &catalog()) {
        Ok(wf) => panic!("expected diagnostics, got a workflow: {wf:#?}"),
        Err(diags) => diags,
    }
}

/// (id, needs, gated_by, parent) of a step.
type Shape<'a> = (&'a str, Vec<&'a str>, Option<&'a str>, Option<&'a str>);

/// The shape of every step, in compiled order.
fn shape(wf: &Workflow) -> Vec<Shape<'_>> {
    wf.steps
        .iter()
        .map(|s| {
            (
                s.id.as_str(),
                s.needs.iter().map(String::as_str).collect(),
                s.gated_by.as_deref(),
                s.parent.as_deref(),
            )
        })
        .collect()
}

fn model(wf: &Workflow, id: &str) -> ModelStep {
    match wf.step(id).map(|s| &s.kind) {
        Some(StepKind::Model(m)) => ModelStep::clone(m),
        other => panic!("`{id}` is not a model step: {other:?}"),
    }
}

const CHAIN: &str = r#"
    name: chain
    version: "1"
    steps:
      - id: classify
        model: local/keyword-classifier
        input: "${input.text}"
      - id: draft
        model: local/template-generator
        input: "${steps.classify.output.label}"
      - id: summary
        model: local/extractive-summarizer
        input: "${steps.draft.output.text}"
"#;

#[test]
fn chain_needs_the_previous_step() {
    let wf = ok(CHAIN);
    assert_eq!((wf.name.as_str(), wf.version.as_str()), ("chain", "1"));
    assert_eq!(
        shape(&wf),
        vec![
            ("classify", vec![], None, None),
            ("draft", vec!["classify"], None, None),
            ("summary", vec!["draft"], None, None),
        ]
    );
    let classify = model(&wf, "classify");
    assert_eq!(
        classify.models,
        vec!["local/keyword-classifier".to_string()]
    );
    // The role defaults to the model's first role; defaults fill the rest.
    assert_eq!(classify.role, Role::Classification);
    assert_eq!(classify.input, json!("${input.text}"));
    assert_eq!(classify.retry, RetryPolicy::default());
    assert_eq!(classify.timeout, Dur(30_000));
    assert!(!classify.asynchronous);
}

#[test]
fn explicit_empty_needs_make_roots() {
    let wf = ok(r#"
        name: roots
        version: "2"
        steps:
          - id: a
            kind: transform
            value: 1
          - id: b
            kind: transform
            needs: []
            value: 2
          - id: c
            kind: transform
            needs: [a, b]
            value: "${steps.a.output} ${steps.b.output}"
          - id: d
            kind: transform
            value: 4
    "#);
    assert_eq!(
        shape(&wf),
        vec![
            ("a", vec![], None, None),
            ("b", vec![], None, None),
            ("c", vec!["a", "b"], None, None),
            ("d", vec!["c"], None, None),
        ]
    );
}

const ROUTED: &str = r#"
    name: routed
    version: "1"
    steps:
      - id: classify
        model: local/keyword-classifier
        input: "${input.text}"
      - id: triage
        kind: route
        routes:
          - when: {path: steps.classify.output.label, equals: billing}
            to: billing
        default: general
      - id: billing
        model: local/template-generator
        input: "${steps.classify.output}"
      - id: general
        kind: transform
        value: "${input.text}"
      - id: reply
        kind: transform
        needs: [billing, general]
        value: {b: "${steps.billing.output}", g: "${steps.general.output}"}
"#;

#[test]
fn route_targets_are_gated_and_need_their_route() {
    let wf = ok(ROUTED);
    assert_eq!(
        shape(&wf),
        vec![
            ("classify", vec![], None, None),
            ("triage", vec!["classify"], None, None),
            // Not `triage`'s previous step: a route target needs its route.
            ("billing", vec!["triage"], Some("triage"), None),
            ("general", vec!["triage"], Some("triage"), None),
            ("reply", vec!["billing", "general"], None, None),
        ]
    );
    let Some(StepKind::Route(r)) = wf.step("triage").map(|s| &s.kind) else {
        panic!("triage is not a route");
    };
    assert_eq!(r.targets(), vec!["billing", "general"]);
    assert_eq!(r.default.as_deref(), Some("general"));
    let when = r.routes[0].when.clone().unwrap_or_default();
    assert_eq!(when.path, "steps.classify.output.label");
    assert_eq!(when.equals, Some(json!("billing")));
}

#[test]
fn parallel_branches_become_steps() {
    let wf = ok(r#"
        name: fanout
        version: "1"
        steps:
          - id: classify
            model: local/keyword-classifier
            input: "${input.text}"
          - id: enrich
            kind: parallel
            branches:
              a:
                model: local/template-generator
                input: "${steps.classify.output}"
              b:
                kind: transform
                value: "${input.text}"
          - id: final
            kind: transform
            value: "${steps.enrich.output.a}"
    "#);
    assert_eq!(
        shape(&wf),
        vec![
            ("classify", vec![], None, None),
            // The parallel step comes first and needs its branches...
            ("enrich", vec!["enrich.a", "enrich.b"], None, None),
            // ...which need what the parallel step would have needed.
            ("enrich.a", vec!["classify"], None, Some("enrich")),
            ("enrich.b", vec!["classify"], None, Some("enrich")),
            ("final", vec!["enrich"], None, None),
        ]
    );
    assert_eq!(
        wf.step("enrich").map(|s| s.kind.clone()),
        Some(StepKind::Parallel {
            branches: vec!["enrich.a".into(), "enrich.b".into()]
        })
    );
    assert_eq!(
        wf.step("enrich.b").map(|s| s.kind.name()),
        Some("transform")
    );
}

#[test]
fn parallel_behind_a_route_passes_the_gate_to_its_branches() {
    let wf = ok(r#"
        name: gated-fanout
        version: "1"
        steps:
          - id: classify
            model: local/keyword-classifier
          - id: triage
            kind: route
            routes:
              - to: fan
          - id: fan
            kind: parallel
            branches:
              x: {kind: transform, value: 1}
    "#);
    assert_eq!(
        shape(&wf)[2..],
        [
            ("fan", vec!["fan.x"], Some("triage"), None),
            ("fan.x", vec!["triage"], Some("triage"), Some("fan")),
        ]
    );
}

#[test]
fn included_files_are_inlined() {
    let wf = ok(r#"
        name: files
        version: "1"
        input_schema: {type: object, required: [topic]}
        steps:
          - id: search
            kind: retrieve
            query: "${input.topic}"
            corpus: corpus.json
            top_k: 2
          - id: draft
            model: local/template-generator
            prompt: {version: v3, file: prompts/draft.j2}
            input: "${steps.search.output}"
            output_schema: schemas/reply.json
          - id: check
            kind: validate
            value: "${steps.draft.output.json}"
            schema: schemas/reply.json
            repair: {step: draft, max_attempts: 2}
    "#);
    assert_eq!(
        wf.input_schema,
        Some(json!({"type": "object", "required": ["topic"]}))
    );

    let search = model(&wf, "search");
    assert_eq!(wf.step("search").map(|s| s.kind.name()), Some("retrieve"));
    assert_eq!(search.models, vec!["local/keyword-retriever".to_string()]);
    assert_eq!(search.role, Role::Retrieval);
    assert_eq!(search.input, json!({"query": "${input.topic}"}));
    assert_eq!(search.params["top_k"], json!(2));
    let docs = search.params["documents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["id"], json!("d1"));

    let reply_schema = json!({"type": "object", "required": ["text"],
        "properties": {"text": {"type": "string"}}});
    let draft = model(&wf, "draft");
    assert_eq!(
        draft.prompt,
        Some(Prompt {
            version: "v3".into(),
            template: "Answer the {{ input.topic }} ticket politely.".into(),
        })
    );
    assert_eq!(draft.output_schema, Some(reply_schema.clone()));

    let Some(StepKind::Validate(v)) = wf.step("check").map(|s| &s.kind) else {
        panic!("check is not a validate step");
    };
    assert_eq!(v.schema, Some(reply_schema));
    assert_eq!(
        v.repair,
        Some(Repair {
            step: "draft".into(),
            max_attempts: 2,
            escalate: false,
        })
    );
}

#[test]
fn step_options_and_defaults() {
    let wf = ok(r#"
        name: options
        version: "1"
        timeout: 10m
        budget: {max_cost_usd: 0.5}
        defaults:
          timeout: 5s
          retry: {max_attempts: 4, jitter: false}
        steps:
          - id: draft
            model: local/template-generator
            fallback: [local/extractive-summarizer]
            fallback_on: [transient, refused]
            retry: {initial_backoff: 1s, multiplier: 3}
            max_duration: 2m
          - id: art
            model: local/async-job
            wait_timeout: 30m
            optional: true
          - id: ok
            kind: approval
            deadline: 2h
            on_timeout: approve
            message: "Publish {{ steps.draft.output.text }}?"
    "#);
    assert_eq!(wf.timeout, Some(Dur(600_000)));
    assert_eq!(wf.budget_usd, Some(0.5));
    let draft = model(&wf, "draft");
    assert_eq!(draft.models.len(), 2);
    assert_eq!(
        draft.fallback_on,
        vec![ErrorClass::Transient, ErrorClass::Refused]
    );
    assert_eq!(draft.timeout, Dur(5_000));
    assert_eq!(draft.max_duration, Some(Dur(120_000)));
    // Step retry settings override the defaults field by field.
    assert_eq!(
        draft.retry,
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Dur(1_000),
            max_backoff: Dur(30_000),
            multiplier: 3.0,
            jitter: false,
        }
    );
    let art = model(&wf, "art");
    assert!(art.asynchronous);
    assert_eq!(art.role, Role::Asset);
    assert_eq!(art.wait_timeout, Dur(1_800_000));
    // Without `fallback_on`, the classes that fall back by default.
    let defaults: Vec<ErrorClass> = ErrorClass::ALL
        .into_iter()
        .filter(|c| c.falls_back_by_default())
        .collect();
    assert_eq!(art.fallback_on, defaults);
    assert!(wf.step("art").is_some_and(|s| s.optional));
    assert_eq!(
        wf.step("ok").map(|s| s.kind.clone()),
        Some(StepKind::Approval(ApprovalStep {
            deadline: Dur(7_200_000),
            message: Some("Publish {{ steps.draft.output.text }}?".into()),
            on_timeout: OnTimeout::Approve,
        }))
    );
}

#[test]
fn content_hash_is_stable_and_tracks_changes() {
    let a = ok(CHAIN);
    let b = ok(CHAIN);
    assert_eq!(a.content_hash(), b.content_hash());
    assert_eq!(a.content_hash().len(), 64);
    // Comments and formatting do not matter; the compiled definition does.
    let reformatted = format!("# a comment\n{}", dedent(CHAIN).replace("\"1\"", "'1'"));
    assert_eq!(ok(&reformatted).content_hash(), a.content_hash());
    let changed = ok(&CHAIN.replace("${steps.draft.output.text}", "${steps.draft.output}"));
    assert_ne!(changed.content_hash(), a.content_hash());
    let other_model = ok(&CHAIN.replace("extractive-summarizer", "template-generator"));
    assert_ne!(other_model.content_hash(), a.content_hash());
    let bumped = ok(&CHAIN.replace("version: \"1\"", "version: \"2\""));
    assert_ne!(bumped.content_hash(), a.content_hash());
    // `tape: false` is the default, and leaves the hash alone; `tape: true` is a change.
    let untaped = ok(&dedent(CHAIN).replace("version: \"1\"", "version: \"1\"\ntape: false"));
    assert!(!untaped.tape);
    assert_eq!(untaped.content_hash(), a.content_hash());
    let taped = ok(&dedent(CHAIN).replace("version: \"1\"", "version: \"1\"\ntape: true"));
    assert!(taped.tape);
    assert_ne!(taped.content_hash(), a.content_hash());
}

#[test]
fn compiled_workflow_round_trips_through_json() {
    let wf = ok(ROUTED);
    let json = serde_json::to_string(&wf).unwrap();
    let back: Workflow = serde_json::from_str(&json).unwrap();
    assert_eq!(back, wf);
    assert_eq!(back.content_hash(), wf.content_hash());
}

/// A valid prefix: lines 1–6 (`classify` at line 4). Table rows append steps from line 7 on.
const HEAD: &str = r#"
    name: bad
    version: "1"
    steps:
      - id: classify
        model: local/keyword-classifier
        input: "${input.text}"
"#;

/// `HEAD` followed by more step items (written at any indentation).
fn with_head(rest: &str) -> String {
    let items: String = dedent(rest).lines().map(|l| format!("  {l}\n")).collect();
    format!("{}{items}", dedent(HEAD))
}

#[test]
fn diagnostics_point_at_the_problem() {
    // (what, source, expected line, part of the message)
    let table: Vec<(&str, String, usize, &str)> = vec![
        (
            "yaml syntax",
            dedent(
                r#"
                name: bad
                version: "1"
                steps:
                  - id: a
                    kind: transform
                   value: 1
                  - id: b
                "#,
            ),
            6,
            "YAML syntax",
        ),
        (
            "unknown top-level field",
            dedent(
                r#"
                name: bad
                version: "1"
                stpes: []
                steps:
                  - {id: a, kind: transform, value: 1}
                "#,
            ),
            3,
            "unknown field `stpes` in the workflow",
        ),
        (
            "tape is not a boolean",
            dedent(
                r#"
                name: bad
                version: "1"
                tape: "yes"
                steps:
                  - {id: a, kind: transform, value: 1}
                "#,
            ),
            3,
            "`tape` must be true or false, not a string",
        ),
        (
            "unknown field in a step",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    promt: {version: v1, template: hi}
                "#,
            ),
            9,
            "unknown field `promt` in a `model` step",
        ),
        (
            "field of another kind",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    routes: []
                "#,
            ),
            9,
            "unknown field `routes` in a `model` step",
        ),
        (
            "missing name",
            dedent(
                r#"
                version: "1"
                steps:
                  - {id: a, kind: transform, value: 1}
                "#,
            ),
            1,
            "`name` is required",
        ),
        (
            "missing version",
            dedent(
                r#"
                name: bad
                steps:
                  - {id: a, kind: transform, value: 1}
                "#,
            ),
            1,
            "`version` is required",
        ),
        (
            "unknown kind",
            with_head(
                r#"
                  - id: draft
                    kind: modle
                "#,
            ),
            8,
            "unknown step kind `modle`",
        ),
        (
            // Reported at the second definition, naming the first.
            "duplicate id",
            with_head(
                r#"
                  - id: classify
                    kind: transform
                    value: 1
                "#,
            ),
            7,
            "duplicate step id `classify` (first defined at line 4)",
        ),
        (
            "unknown needs",
            with_head(
                r#"
                  - id: draft
                    kind: transform
                    needs: [classify, ghost]
                    value: 1
                "#,
            ),
            9,
            "`needs` names `ghost`, which is not a step",
        ),
        (
            // Reported once, at the `needs` of the first step of the cycle.
            "cycle",
            with_head(
                r#"
                  - id: a
                    kind: transform
                    needs: [b]
                    value: 1
                  - id: b
                    kind: transform
                    needs: [a]
                    value: 2
                "#,
            ),
            9,
            "cycle: a → b → a",
        ),
        (
            "reference to a missing step",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    input: "${steps.ghost.output}"
                "#,
            ),
            9,
            "names step `ghost`, which does not exist",
        ),
        (
            // `draft` starts with the run, so `classify` may not have run yet.
            "reference to a step that does not run before",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    needs: []
                    input: {label: "${steps.classify.output.label}"}
                "#,
            ),
            10,
            "step `draft` does not run after `classify`",
        ),
        (
            "reference to a later step",
            with_head(
                r#"
                  - id: draft
                    kind: transform
                    value: "${steps.later.output}"
                  - id: later
                    kind: transform
                    value: 1
                "#,
            ),
            9,
            "step `draft` does not run after `later`",
        ),
        (
            "bad reference root",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    params: {key: "${secrets.x}"}
                "#,
            ),
            9,
            "starts with `secrets`",
        ),
        (
            "route target unknown",
            with_head(
                r#"
                  - id: triage
                    kind: route
                    routes:
                      - when: {path: steps.classify.output.label, equals: x}
                        to: nowhere
                "#,
            ),
            11,
            "route target `nowhere` is not a step",
        ),
        (
            "route case after a catch-all",
            with_head(
                r#"
                  - id: triage
                    kind: route
                    routes:
                      - to: a
                      - when: {path: steps.classify.output.label, equals: x}
                        to: b
                  - {id: a, kind: transform, value: 1}
                  - {id: b, kind: transform, value: 2}
                "#,
            ),
            11,
            "unreachable route",
        ),
        (
            "route condition with an unknown operator",
            with_head(
                r#"
                  - id: triage
                    kind: route
                    routes:
                      - when: {path: steps.classify.output.label, equal: x}
                        to: a
                  - {id: a, kind: transform, value: 1}
                "#,
            ),
            10,
            "unknown field `equal`",
        ),
        (
            "invalid JSON Schema",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    output_schema:
                      type: objekt
                "#,
            ),
            9,
            "not a valid JSON Schema",
        ),
        (
            "schema file that is not JSON",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    output_schema: schemas/broken.json
                "#,
            ),
            9,
            "`schemas/broken.json` is not valid JSON",
        ),
        (
            "unknown provider",
            with_head(
                r#"
                  - id: draft
                    model: acme/gpt-9
                "#,
            ),
            8,
            "unknown provider in `acme/gpt-9`",
        ),
        (
            "unknown model",
            with_head(
                r#"
                  - id: draft
                    model: local/mind-reader
                "#,
            ),
            8,
            "unknown model `local/mind-reader`",
        ),
        (
            "role mismatch",
            with_head(
                r#"
                  - id: draft
                    model: local/keyword-classifier
                    role: generation
                "#,
            ),
            8,
            "`local/keyword-classifier` does not serve the role `generation`",
        ),
        (
            // The fallback is checked against the role too, at its own line.
            "fallback role mismatch",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    fallback:
                      - local/keyword-retriever
                "#,
            ),
            10,
            "`local/keyword-retriever` does not serve the role `generation`",
        ),
        (
            "prompt without version",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    prompt: {template: "Be brief."}
                "#,
            ),
            9,
            "`prompt.version` is required",
        ),
        (
            "template syntax error",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    prompt:
                      version: v1
                      template: "{% if %}"
                "#,
            ),
            9,
            "template error",
        ),
        (
            "template using an unknown step",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    prompt: {version: v1, template: "{{ steps.ghost.output.text }}"}
                "#,
            ),
            9,
            "names step `ghost`, which does not exist",
        ),
        (
            "template using an unknown root",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    prompt: {version: v1, template: "{{ secrets.key }}"}
                "#,
            ),
            9,
            "templates see input, steps, run, feedback and attempt",
        ),
        (
            "fallback_on with auth",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    fallback: [local/extractive-summarizer]
                    fallback_on:
                      - transient
                      - auth
                "#,
            ),
            12,
            "`auth` never falls back",
        ),
        (
            "fallback_on without fallback models",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    fallback_on: [transient]
                "#,
            ),
            9,
            "has no effect",
        ),
        (
            "retry.max_attempts 0",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    retry:
                      max_attempts: 0
                "#,
            ),
            10,
            "`max_attempts` must be a whole number from 1 to 20",
        ),
        (
            // `check` needs `mid`, which needs `draft`: an ancestor, not a direct need.
            "repair step not a direct need",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                  - id: mid
                    kind: transform
                    value: "${steps.draft.output}"
                  - id: check
                    kind: validate
                    value: "${steps.mid.output}"
                    schema: {type: object}
                    repair:
                      step: draft
                "#,
            ),
            17,
            "repair step `draft` must be one this step directly needs",
        ),
        (
            "repair.max_attempts too high",
            with_head(
                r#"
                  - id: check
                    kind: validate
                    value: "${steps.classify.output}"
                    schema: {type: object}
                    repair: {step: classify, max_attempts: 9}
                "#,
            ),
            11,
            "`repair.max_attempts` must be from 1 to 5",
        ),
        (
            "bad duration",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    timeout: 5 parsecs
                "#,
            ),
            9,
            "unknown unit `parsecs`",
        ),
        (
            "a file that cannot be read",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    prompt:
                      version: v1
                      file: prompts/missing.j2
                "#,
            ),
            11,
            "cannot read `prompts/missing.j2`",
        ),
        (
            "a corpus that cannot be read",
            with_head(
                r#"
                  - id: search
                    kind: retrieve
                    query: "${input.q}"
                    corpus: nowhere.json
                "#,
            ),
            10,
            "cannot read `nowhere.json`",
        ),
        (
            "retrieve without a query",
            with_head(
                r#"
                  - id: search
                    kind: retrieve
                "#,
            ),
            7,
            "a retrieve step needs `query`",
        ),
        (
            "branch with needs",
            with_head(
                r#"
                  - id: fan
                    kind: parallel
                    branches:
                      x:
                        kind: transform
                        needs: [classify]
                        value: 1
                "#,
            ),
            12,
            "a parallel branch starts with its parallel step",
        ),
        (
            "needs naming a branch",
            with_head(
                r#"
                  - id: fan
                    kind: parallel
                    branches:
                      x: {kind: transform, value: 1}
                  - id: after
                    kind: transform
                    needs: [fan.x]
                    value: 1
                "#,
            ),
            13,
            "`fan.x` is a parallel branch",
        ),
        (
            "output naming an unknown step",
            format!("output: \"${{steps.ghost.output}}\"\n{}", dedent(HEAD)),
            1,
            "there is no step `ghost`",
        ),
        (
            "a reference inside params.template would make data template code",
            with_head(
                r#"
                  - id: draft
                    model: local/template-generator
                    input: {text: "${input.text}"}
                    params:
                      template: "Hello ${input.text}"
                "#,
            ),
            11,
            "`params.template` must not contain `${...}` references",
        ),
        (
            "a billion-laughs alias bomb",
            format!(
                "{}x0: &x0 [a, a, a, a, a, a, a, a, a, a]\n{}",
                dedent(HEAD),
                (1..=8)
                    .map(|i| format!(
                        "x{i}: &x{i} [{}]\n",
                        vec![format!("*x{}", i - 1); 10].join(", ")
                    ))
                    .collect::<String>()
            ),
            10,
            "alias expansion exceeds 10000 nodes",
        ),
        (
            "a validate step with neither schema nor judge",
            with_head(
                r#"
                  - id: check
                    kind: validate
                    value: "${steps.classify.output}"
                "#,
            ),
            7,
            "a validate step needs `schema`, `judge` or both",
        ),
        (
            "a hosted judge without criteria",
            with_head(
                r#"
                  - id: check
                    kind: validate
                    value: "${steps.classify.output}"
                    judge: {model: local/template-generator}
                "#,
            ),
            10,
            "a judge needs `criteria`",
        ),
        (
            "a judge's min_score outside 0-1",
            with_head(
                r#"
                  - id: check
                    kind: validate
                    value: "${steps.classify.output}"
                    judge:
                      model: local/rules-judge
                      params: {rules: [{forbid: x}]}
                      min_score: 2
                "#,
            ),
            13,
            "`min_score` must be a number from 0 to 1",
        ),
        (
            "a judge key of a model step that a judge does not take",
            with_head(
                r#"
                  - id: check
                    kind: validate
                    value: "${steps.classify.output}"
                    judge:
                      model: local/rules-judge
                      input: "${input.text}"
                "#,
            ),
            12,
            "unknown field `input` in judge",
        ),
        (
            "an asynchronous judge",
            with_head(
                r#"
                  - id: check
                    kind: validate
                    value: "${steps.classify.output}"
                    judge:
                      model: local/async-job
                      criteria: {version: v1, template: judge it}
                "#,
            ),
            11,
            "local/async-job",
        ),
        (
            "judge criteria naming an unknown step",
            with_head(
                r#"
                  - id: check
                    kind: validate
                    value: "${steps.classify.output}"
                    judge:
                      model: local/template-generator
                      criteria: {version: v1, template: "{{ steps.ghost.output }}"}
                "#,
            ),
            12,
            "names step `ghost`",
        ),
        (
            "a versioned id of an unknown replicate model",
            with_head(
                r#"
                  - id: art
                    model: replicate/acme/nope:5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa
                "#,
            ),
            8,
            "unknown model `replicate/acme/nope:5c7d",
        ),
    ];
    let mut failures = Vec::new();
    for (what, src, line, needle) in &table {
        let diags = match compile(src, &files(), &catalog()) {
            Ok(_) => {
                failures.push(format!("{what}: compiled without diagnostics"));
                continue;
            }
            Err(d) => d,
        };
        match diags.iter().find(|d| d.message.contains(needle)) {
            Some(d) if d.line == *line => {}
            Some(d) => failures.push(format!("{what}: at line {}, want {line}: {d:?}", d.line)),
            None => failures.push(format!(
                "{what}: no diagnostic contains {needle:?}: {diags:#?}"
            )),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn duplicate_yaml_keys_are_syntax_errors() {
    let d = errs(
        r#"
        name: bad
        version: "1"
        name: again
        steps: []
    "#,
    );
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].line, 3);
    assert!(d[0].message.contains("duplicate key `name`"), "{d:?}");
}

#[test]
fn every_problem_is_reported_in_line_order() {
    let d = errs(
        r#"
        name: many
        version: "1"
        colour: blue
        steps:
          - id: a
            model: local/nope
          - id: b
            kind: transform
            needs: [ghost]
            value: "${steps.a.output}"
          - id: c
            model: local/template-generator
            timeout: forever
          - id: a
            kind: transform
            value: 1
    "#,
    );
    let lines: Vec<usize> = d.iter().map(|x| x.line).collect();
    assert!(d.len() >= 5, "{d:#?}");
    for (line, needle) in [
        (3, "unknown field `colour`"),
        (6, "unknown model `local/nope`"),
        (9, "`needs` names `ghost`"),
        (13, "`timeout`"),
        (14, "duplicate step id `a`"),
    ] {
        assert!(
            d.iter()
                .any(|x| x.line == line && x.message.contains(needle)),
            "no {needle:?} at line {line}: {d:#?}"
        );
    }
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "{d:#?}");
    // Sorted by (line, col, message) and without repeats.
    assert!(d.windows(2).all(|w| w[0] < w[1]), "{d:#?}");
}

#[test]
fn a_file_that_is_not_a_workflow() {
    for (src, needle) in [
        ("- just\n- a list\n", "must be a mapping"),
        ("name: x\nversion: 1\nsteps: []\n", "at least one step"),
        ("name: x\nversion: 1\nsteps: {a: 1}\n", "must be a list"),
        (
            "name: has space\nversion: 1\nsteps:\n  - {id: a, kind: transform}\n",
            "`name` may hold",
        ),
    ] {
        let d = compile(src, &NoFiles, &catalog()).err().unwrap_or_default();
        assert!(
            d.iter().any(|x| x.message.contains(needle)),
            "{src:?}: {d:#?}"
        );
    }
}

#[test]
fn no_files_loader_reports_the_path() {
    let src = dedent(
        r#"
        name: nf
        version: "1"
        steps:
          - id: draft
            model: local/template-generator
            prompt: {version: v1, file: p.j2}
    "#,
    );
    let d = compile(&src, &NoFiles, &catalog())
        .err()
        .unwrap_or_default();
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].line, 6);
    assert!(d[0].message.contains("cannot read `p.j2`"), "{d:?}");
}

#[test]
fn a_pinned_replicate_version_is_the_model_it_belongs_to() {
    let wf = ok(r#"
        name: art
        version: "1"
        steps:
          - id: art
            model: replicate/black-forest-labs/flux-schnell:5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637
            input: {prompt: "${input.text}"}
        "#);
    let m = model(&wf, "art");
    assert_eq!(
        m.models,
        vec!["replicate/black-forest-labs/flux-schnell:5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637"]
    );
    assert!(m.asynchronous, "the versioned id keeps the model's traits");
}

/// The editor schema users point their YAML at (docs/workflow.schema.json) accepts every
/// example, and refuses what the loader refuses (here: a judge key it does not know).
#[test]
fn the_editor_schema_accepts_every_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("docs/workflow.schema.json")).unwrap();
    let editor: Value = serde_json::from_str(&text).unwrap();
    let mut seen = 0;
    for dir in ["workflows", "workflows/hosted"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let (doc, _) = super::yaml::parse(&std::fs::read_to_string(&p).unwrap()).unwrap();
                if let Err(errors) = crate::schema::validate(&editor, &doc) {
                    panic!("{}: {errors:?}", p.display());
                }
                seen += 1;
            }
        }
    }
    assert!(seen >= 7, "{seen} examples");
    let (bad, _) = super::yaml::parse(&dedent(
        r#"
        name: bad
        version: "1"
        steps:
          - id: check
            kind: validate
            value: 1
            judge: {model: local/rules-judge, prompt: {version: v, template: t}}
        "#,
    ))
    .unwrap();
    assert!(crate::schema::validate(&editor, &bad).is_err());
}

const CASCADE: &str = r#"
    name: cascade
    version: "1"
    steps:
      - id: classify
        role: classification
        input: "${input.text}"
        params: {default_label: none}
        cascade:
          - model: local/keyword-classifier
            params: {labels: {a: [x]}}
            escalate_if:
              - {path: output.confidence, lt: 0.8}
              - {path: input.tier, equals: free}
          - model: local/keyword-classifier
            params: {labels: {a: [x, y]}}
        fallback_on: [transient]
      - id: draft
        input: "${steps.classify.output.label}"
        select:
          - {model: local/template-generator, when: {path: estimate_usd, lte: 0.01}}
          - {model: local/extractive-summarizer}
        fallback: local/template-generator
        params: {template: "{{ input }}"}
      - id: check
        kind: validate
        needs: [classify, draft]
        value: "${steps.classify.output}"
        schema: {type: object}
        repair: {step: classify, escalate: true}
"#;

#[test]
fn cascades_and_selects_compile_to_a_chain_with_their_conditions() {
    let wf = ok(CASCADE);
    let m = model(&wf, "classify");
    assert_eq!(m.models, vec!["local/keyword-classifier"; 2]);
    let c = m.cascade.clone().unwrap();
    assert_eq!(c.escalate_if.len(), 1, "the top tier has none");
    assert_eq!(c.escalate_if[0].len(), 2);
    assert_eq!(
        m.params_for(1),
        json!({"default_label": "none", "labels": {"a": ["x", "y"]}})
    );
    assert_eq!(m.next_index(0), Some(1));
    assert_eq!(m.next_index(1), None);
    let d = model(&wf, "draft");
    assert_eq!(
        d.models,
        vec![
            "local/template-generator",
            "local/extractive-summarizer",
            "local/template-generator"
        ]
    );
    assert_eq!(d.select.as_ref().map(Vec::len), Some(2));
    assert_eq!(
        d.next_index(0),
        Some(2),
        "after a candidate come the fallbacks"
    );
    match &wf.step("check").unwrap().kind {
        StepKind::Validate(v) => assert!(v.repair.as_ref().unwrap().escalate),
        other => panic!("{other:?}"),
    }
    // A workflow without the new keys hashes as before they existed (no serialized noise).
    let plain = ok(CHAIN);
    assert!(!serde_json::to_string(&plain).unwrap().contains("cascade"));
}

#[test]
fn cascade_and_select_mistakes_are_reported_where_they_are() {
    // (what, step yaml under `steps:`, part of the message)
    let table = [
        (
            "one tier",
            "- {id: a, cascade: [{model: local/keyword-classifier}]}",
            "at least two tiers",
        ),
        (
            "cascade with model",
            "- {id: a, model: local/keyword-classifier, cascade: [{model: local/keyword-classifier}, {model: local/keyword-classifier}]}",
            "`model` cannot be combined with `cascade`",
        ),
        (
            "escalate_if on the top tier",
            "- {id: a, cascade: [{model: local/keyword-classifier}, {model: local/keyword-classifier, escalate_if: {path: output.confidence, lt: 1}}]}",
            "the top tier has no tier above it",
        ),
        (
            "a path the answer scope lacks",
            "- {id: a, cascade: [{model: local/keyword-classifier, escalate_if: {path: estimate_usd, gt: 1}}, {model: local/keyword-classifier}]}",
            "start the path with one of output",
        ),
        (
            "an unknown operator",
            "- {id: a, cascade: [{model: local/keyword-classifier, escalate_if: {path: output.x, below: 1}}, {model: local/keyword-classifier}]}",
            "unknown field `below`",
        ),
        (
            "tiers of another role",
            "- {id: a, role: classification, cascade: [{model: local/keyword-classifier}, {model: local/template-generator}]}",
            "does not serve the role `classification`",
        ),
        (
            "asynchronous tiers",
            "- {id: a, cascade: [{model: local/async-job}, {model: local/async-job}]}",
            "must answer synchronously",
        ),
        (
            "select without a default",
            "- {id: a, select: [{model: local/template-generator, when: {path: input.x, exists: true}}]}",
            "the last case must have no `when`",
        ),
        (
            "select default not last",
            "- {id: a, select: [{model: local/template-generator}, {model: local/template-generator}]}",
            "only the last case may leave out `when`",
        ),
        (
            "select reads the answer",
            "- {id: a, select: [{model: local/template-generator, when: {path: output.x, exists: true}}, {model: local/template-generator}]}",
            "start the path with one of estimate_usd",
        ),
        (
            "too many models",
            "- {id: a, model: local/template-generator, fallback: [local/template-generator, local/template-generator, local/template-generator, local/template-generator, local/template-generator, local/template-generator, local/template-generator, local/template-generator, local/template-generator, local/template-generator]}",
            "at most 10 models",
        ),
        (
            "escalating repair of a plain step",
            "- {id: a, model: local/template-generator}\n- {id: v, kind: validate, value: 1, schema: {type: object}, repair: {step: a, escalate: true}}",
            "has no `cascade`",
        ),
    ];
    for (what, steps, want) in table {
        let src = format!(
            "name: w\nversion: \"1\"\nsteps:\n{}\n",
            steps
                .lines()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let diags = match compile(&src, &files(), &catalog()) {
            Ok(_) => panic!("{what}: expected a diagnostic"),
            Err(d) => d,
        };
        assert!(
            diags.iter().any(|d| d.message.contains(want)),
            "{what}: {diags:#?}"
        );
    }
}

#[test]
fn run_timeouts_shorter_than_the_recovery_margin_are_refused() {
    // (run timeout, accepted?)
    let table = [
        ("30s", false),
        ("1m", false),
        ("299s", false),
        ("5m", true),
        ("2d", true),
    ];
    for (timeout, ok) in table {
        let src = format!(
            "name: w\nversion: \"1\"\ntimeout: {timeout}\nsteps:\n  - {{id: a, model: local/template-generator}}\n"
        );
        match compile(&src, &files(), &catalog()) {
            Ok(wf) => assert!(ok, "{timeout} was accepted: {:?}", wf.timeout),
            Err(diags) => {
                assert!(!ok, "{timeout} was refused: {diags:#?}");
                let d = diags
                    .iter()
                    .find(|d| d.message.contains("run `timeout` must be at least 300s"))
                    .unwrap_or_else(|| panic!("{timeout}: {diags:#?}"));
                assert!(
                    d.message.contains("90s"),
                    "the message names the bound: {}",
                    d.message
                );
                assert_eq!(d.line, 3, "reported at the key");
            }
        }
    }
}

/// The editor schema (`docs/workflow.schema.json`) and the loader take the same keys in every
/// mapping of the grammar: a key added to one and not the other fails here, naming it.
#[test]
fn the_editor_schema_lists_the_keys_the_loader_reads() {
    use super::compile::*;
    use std::collections::BTreeSet;
    let schema: Value =
        serde_json::from_str(include_str!("../../../../docs/workflow.schema.json")).unwrap();
    let defs = &schema["$defs"];
    // An object's keys, and whether it refuses others; in a `oneOf`/`anyOf`, the object form.
    fn object(v: &Value) -> Option<(BTreeSet<String>, bool)> {
        if let Some(p) = v["properties"].as_object() {
            return Some((
                p.keys().cloned().collect(),
                v["additionalProperties"] == Value::Bool(false),
            ));
        }
        ["oneOf", "anyOf"]
            .iter()
            .filter_map(|k| v[*k].as_array())
            .flatten()
            .find_map(object)
    }
    let mut problems = Vec::new();
    let mut check = |what: &str, got: Option<(BTreeSet<String>, bool)>, code: &[&str]| {
        let code: BTreeSet<String> = code.iter().map(|k| k.to_string()).collect();
        match got {
            None => problems.push(format!("{what}: not an object in the schema")),
            Some((keys, closed)) => {
                if keys != code {
                    problems.push(format!(
                        "{what}: only in the schema {:?}; only in the loader {:?}",
                        keys.difference(&code).collect::<Vec<_>>(),
                        code.difference(&keys).collect::<Vec<_>>()
                    ));
                }
                if !closed {
                    problems.push(format!("{what}: the schema allows other keys"));
                }
            }
        }
    };
    check("the workflow", object(&schema), TOP_KEYS);
    check(
        "defaults",
        object(&schema["properties"]["defaults"]),
        DEFAULTS_KEYS,
    );
    check(
        "budget",
        object(&schema["properties"]["budget"]),
        BUDGET_KEYS,
    );
    check("retry", object(&defs["retry"]), RETRY_KEYS);
    check("prompt", object(&defs["prompt"]), PROMPT_KEYS);
    check(
        "a cascade tier",
        object(&defs["cascadeTier"]),
        CASCADE_TIER_KEYS,
    );
    check(
        "a select case",
        object(&defs["selectCase"]),
        SELECT_CASE_KEYS,
    );
    check("a route", object(&defs["routeCase"]), ROUTE_CASE_KEYS);
    check("judge", object(&defs["judge"]), JUDGE_KEYS);
    check("repair", object(&defs["repair"]), REPAIR_KEYS);
    // Each kind's keys: the step's common keys and the kind's own.
    let step = &defs["step"];
    let kinds: Vec<&str> = step["properties"]["kind"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    check(
        "the step kinds",
        Some((kinds.iter().map(|k| k.to_string()).collect(), true)),
        KINDS,
    );
    for kind in KINDS {
        let clause = step["allOf"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["if"]["properties"]["kind"]["const"] == *kind);
        let names = clause.and_then(|c| c["then"]["propertyNames"]["enum"].as_array());
        let got = names.map(|n| {
            (
                n.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                true,
            )
        });
        let mut code = COMMON.to_vec();
        code.extend(kind_keys(kind).unwrap());
        check(&format!("a `{kind}` step"), got, &code);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
