//! 8. Route and skip

use super::*;

pub(crate) const ROUTED: &str = r#"
    name: routed
    version: "1"
    steps:
      - id: classify
        model: local/keyword-classifier
        input: "${input.text}"
        params:
          labels: {billing: [refund, invoice], tech: [crash, error]}
      - id: triage
        kind: route
        routes:
          - when: {path: steps.classify.output.label, equals: billing}
            to: billing
        default: support
      - id: billing
        kind: transform
        value: "billing for ${steps.classify.output.label}"
      - id: support
        model: local/template-generator
        input: "${input.text}"
        params: {template: "support: {{ input }}"}
      - id: join
        kind: transform
        needs: [billing, support]
        value:
          billing: "${steps.billing.output}"
          support: "${steps.support.output}"
"#;

#[tokio::test]
pub(crate) async fn route_runs_one_branch_skips_the_other_and_the_join_runs() {
    // (text, chosen, skipped, join's `billing`, join's `support.text`); a skipped step's
    // output is null.
    let table = [
        (
            "refund my invoice",
            "billing",
            "support",
            json!("billing for billing"),
            Value::Null,
        ),
        (
            "app crash error",
            "support",
            "billing",
            Value::Null,
            json!("support: app crash error"),
        ),
    ];
    for (text, chosen, skipped, billing, support) in table {
        let h = H::new();
        let (run, status) = h.run(ROUTED, json!({"text": text})).await;
        assert_eq!(status, RunStatus::Succeeded, "{text}");
        let snap = h.snap(&run).await;
        assert_eq!(snap.step("triage").unwrap().chosen.as_deref(), Some(chosen));
        assert_eq!(snap.step(chosen).unwrap().status, StepStatus::Succeeded);
        assert_eq!(snap.step(skipped).unwrap().status, StepStatus::Skipped);
        let skip = h.step_events(&run, EventKind::StepSkipped, skipped).await;
        assert_eq!(skip.len(), 1);
        assert_eq!(
            skip[0].detail["reason"],
            format!("route `triage` chose `{chosen}`")
        );
        let join = h.output(&run, "join").await;
        assert_eq!(join["billing"], billing, "{text}");
        assert_eq!(join["support"]["text"], support, "{text}");
        assert_eq!(
            h.started_count(&run, "support").await,
            usize::from(chosen == "support")
        );
        assert_eq!(snap.step("join").unwrap().attempt, 1);
    }
}
