//! 7. Budget

use super::*;

#[tokio::test]
pub(crate) async fn budget_stops_a_model_step_before_it_is_called() {
    let long = "word ".repeat(400);
    // (budget, step expected to fail, steps expected to succeed)
    let table = [
        (0.000_000_1, "classify", vec![]),
        (0.0002, "draft", vec!["classify"]),
    ];
    for (budget, fails, ok) in table {
        let h = H::new();
        let yaml = format!(
            r#"
            name: budget
            version: "1"
            budget: {{max_cost_usd: {budget}}}
            steps:
              - id: classify
                model: local/keyword-classifier
                input: "refund my invoice please, it was charged twice"
                params: {{labels: {{billing: [refund]}}}}
              - id: draft
                model: local/template-generator
                input: {{long: "${{input.long}}"}}
                params: {{template: "{{{{ input.long }}}}"}}
            "#
        );
        let (run, status) = h.run(&yaml, json!({"long": long})).await;
        assert_eq!(status, RunStatus::Failed, "{budget}");
        let snap = h.snap(&run).await;
        let err = snap.header.error.clone().unwrap();
        assert_eq!(err.class, ErrorClass::BudgetExceeded, "{budget}");
        assert_eq!(err.step.as_deref(), Some(fails));
        assert!(err.message.contains("budget"), "{}", err.message);
        // The model was never called: no StepStarted, no cost, no usage.
        assert_eq!(h.started_count(&run, fails).await, 0, "{budget}");
        let r = snap.step(fails).unwrap();
        assert_eq!(r.status, StepStatus::Failed);
        assert_eq!((r.cost_usd, r.usage), (0.0, None));
        for s in ok {
            assert_eq!(snap.step(s).unwrap().status, StepStatus::Succeeded);
            assert_eq!(h.started_count(&run, s).await, 1);
        }
        assert!(snap.cost_usd() <= budget);
    }
}
