//! 1. A chain of model and transform steps

use super::*;

pub(crate) const CHAIN: &str = r#"
    name: chain
    version: "1"
    input_schema:
      type: object
      required: [text]
      properties:
        text: {type: string}
    output_schema:
      type: object
      required: [label, reply, confidence, shape]
      properties:
        label: {type: string}
        reply: {type: string}
        confidence: {type: number}
        shape: {type: object}
    output:
      label: "${steps.classify.output.label}"
      reply: "${steps.draft.output.text}"
      confidence: "${steps.classify.output.confidence}"
      shape: "${steps.shape.output}"
    steps:
      - id: classify
        model: local/keyword-classifier
        input: "${input.text}"
        params:
          labels: {billing: [refund, invoice], tech: [crash]}
      - id: draft
        model: local/template-generator
        prompt:
          version: draft@1
          template: "Answer the {{ steps.classify.output.label }} ticket."
        input:
          label: "${steps.classify.output.label}"
          text: "${input.text}"
        params:
          template: "Reply for {{ input.label }}: {{ input.text }}"
      - id: shape
        kind: transform
        value:
          tag: "${steps.classify.output.label}/${steps.draft.output.finish_reason}"
          words: "${steps.draft.output.usage.output_tokens}"
"#;

#[tokio::test]
pub(crate) async fn chain_succeeds_with_outputs_by_reference_and_summed_cost() {
    let h = H::new();
    let (run, status) = h
        .run(CHAIN, json!({"text": "Please refund my invoice"}))
        .await;
    assert_eq!(status, RunStatus::Succeeded);

    // Outputs flow by reference: the draft saw the classifier's label, the transform both.
    let classify = h.output(&run, "classify").await;
    assert_eq!(classify["label"], "billing");
    let draft = h.output(&run, "draft").await;
    assert_eq!(draft["text"], "Reply for billing: Please refund my invoice");
    let shape = h.output(&run, "shape").await;
    assert_eq!(shape["tag"], "billing/stop");
    assert_eq!(shape["words"], draft["usage"]["output_tokens"]);

    // Each step ran once; model steps record model, provider and prompt version.
    let snap = h.snap(&run).await;
    for step in ["classify", "draft", "shape"] {
        let r = snap.step(step).unwrap();
        assert_eq!((r.status, r.attempt), (StepStatus::Succeeded, 1), "{step}");
    }
    for step in ["classify", "draft"] {
        assert_eq!(h.started_count(&run, step).await, 1, "{step}");
    }
    let d = snap.step("draft").unwrap();
    assert_eq!(d.model.as_deref(), Some("local/template-generator"));
    assert_eq!(d.provider.as_deref(), Some("local"));
    assert_eq!(d.prompt_version.as_deref(), Some("draft@1"));

    // Cost: each model step's cost is its usage at the simulated prices; the run's is the sum.
    let mut total = 0.0;
    for (step, model) in [
        ("classify", "local/keyword-classifier"),
        ("draft", "local/template-generator"),
    ] {
        let r = snap.step(step).unwrap();
        let u = r.usage.expect("usage");
        assert!(u.input_tokens > 0, "{step}");
        assert!(
            close(
                r.cost_usd,
                local_price(model, u.input_tokens, u.output_tokens)
            ),
            "{step}: {}",
            r.cost_usd
        );
        total += r.cost_usd;
    }
    assert!(total > 0.0);
    assert!(close(snap.cost_usd(), total));
    let view = h.engine.view(&snap).await.unwrap();
    assert!((view.cost_usd - total).abs() < 1e-9);
    assert_eq!(view.status, RunStatus::Succeeded);
    let names: Vec<(&str, &str, u32)> = view
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.kind.as_str(), s.attempts))
        .collect();
    assert_eq!(
        names,
        [
            ("classify", "model", 1),
            ("draft", "model", 1),
            ("shape", "transform", 1)
        ]
    );
    let ended = h.events(&run).await.last().cloned().unwrap();
    assert_eq!(ended.kind, EventKind::RunSucceeded);
    assert!(close(ended.detail["cost_usd"].as_f64().unwrap(), total));

    // The run's output template, resolved (and checked against output_schema).
    assert_eq!(
        h.run_output(&run).await,
        json!({
            "label": "billing",
            "reply": "Reply for billing: Please refund my invoice",
            "confidence": 1.0,
            "shape": shape,
        })
    );
    assert_eq!(view.output, h.run_output(&run).await);
}

#[tokio::test]
pub(crate) async fn output_failing_output_schema_fails_the_run_as_malformed() {
    let h = H::new();
    let yaml = CHAIN.replace("confidence: {type: number}", "confidence: {type: string}");
    let (run, status) = h.run(&yaml, json!({"text": "refund"})).await;
    assert_eq!(status, RunStatus::Failed);
    let snap = h.snap(&run).await;
    let err = snap.header.error.clone().unwrap();
    assert_eq!((err.class, err.step), (ErrorClass::Malformed, None));
    assert!(err.message.contains("output_schema"), "{}", err.message);
    assert_eq!(snap.header.output, None);
    // Every step itself succeeded.
    assert!(snap.steps.iter().all(|r| r.status == StepStatus::Succeeded));
}

#[tokio::test]
pub(crate) async fn without_output_template_the_last_step_output_is_the_run_output() {
    // Every step finishes at the same (manual) millisecond, as fast steps do on a real clock;
    // the model step's record has a higher version (claim + result) than the transforms'.
    // (workflow, run output)
    let table = [
        (
            r#"
            name: last
            version: "1"
            steps:
              - {id: a, kind: transform, value: 1}
              - {id: b, kind: transform, value: {from_a: "${steps.a.output}"}}
            "#,
            json!({"from_a": 1}),
        ),
        (
            r#"
            name: last
            version: "1"
            steps:
              - {id: gen, model: local/echo, input: "hi"}
              - {id: wrap, kind: transform, value: {text: "${steps.gen.output.text}"}}
            "#,
            json!({"text": "hi"}),
        ),
        (
            r#"
            name: last
            version: "1"
            steps:
              - {id: z, kind: transform, value: first}
              - {id: y, model: local/echo, input: "${steps.z.output}"}
              - {id: x, kind: transform, value: "last:${steps.y.output.text}"}
            "#,
            json!("last:first"),
        ),
    ];
    for (yaml, want) in table {
        let h = H::new();
        let (run, status) = h.run(yaml, json!({})).await;
        assert_eq!(status, RunStatus::Succeeded);
        assert_eq!(h.run_output(&run).await, want, "{yaml}");
    }
}
