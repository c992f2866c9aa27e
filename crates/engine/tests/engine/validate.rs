//! 10. Validate with repair

use super::*;

pub(crate) fn repair_wf(template: &str, max_repairs: u32) -> String {
    format!(
        r#"
        name: repair
        version: "1"
        steps:
          - id: draft
            model: local/template-generator
            input: "${{input.topic}}"
            params:
              format: json
              template: '{template}'
          - id: check
            kind: validate
            value: "${{steps.draft.output.json}}"
            schema:
              type: object
              required: [title]
              properties:
                title: {{type: string}}
            repair: {{step: draft, max_attempts: {max_repairs}}}
          - {{id: publish, kind: transform, value: "${{steps.check.output.title}}"}}
        "#
    )
}

#[tokio::test]
pub(crate) async fn validate_requests_a_repair_and_the_model_fixes_itself() {
    // Templates that answer badly first, then use `attempt` or `feedback` to fix themselves.
    let table = [
        (
            r#"{% if attempt > 1 %}{"title": "fixed"}{% else %}{"title": 5}{% endif %}"#,
            "fixed",
        ),
        (
            r#"{% if feedback %}{"title": "{{ feedback | length }} problem"}{% else %}{"nope": 1}{% endif %}"#,
            "1 problem",
        ),
    ];
    for (template, title) in table {
        let h = H::new();
        let (run, status) = h.run(&repair_wf(template, 2), json!({"topic": "t"})).await;
        assert_eq!(status, RunStatus::Succeeded, "{template}");
        assert_eq!(h.output(&run, "publish").await, title);
        let draft = h.rec(&run, "draft").await;
        assert_eq!((draft.attempt, draft.feedback.len()), (2, 0));
        assert_eq!(h.started_count(&run, "draft").await, 2);
        let check = h.rec(&run, "check").await;
        assert_eq!((check.status, check.repairs), (StepStatus::Succeeded, 1));
        let asked = h
            .step_events(&run, EventKind::StepRepairRequested, "check")
            .await;
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].detail["target"], "draft");
        assert!(!asked[0].detail["errors"].as_array().unwrap().is_empty());
    }
}

#[tokio::test]
pub(crate) async fn repairs_exhausted_fail_the_run_as_malformed() {
    let h = H::new();
    let (run, status) = h
        .run(&repair_wf(r#"{"title": 5}"#, 2), json!({"topic": "t"}))
        .await;
    assert_eq!(status, RunStatus::Failed);
    let err = h.snap(&run).await.header.error.unwrap();
    assert_eq!(
        (err.class, err.step.as_deref()),
        (ErrorClass::Malformed, Some("check"))
    );
    // The first answer plus two repairs.
    assert_eq!(h.started_count(&run, "draft").await, 3);
    assert_eq!(h.rec(&run, "check").await.repairs, 2);
    let failed = h.rec(&run, "check").await;
    assert!(failed
        .error
        .unwrap()
        .details
        .iter()
        .any(|d| d.contains("/title")));
    assert!(h.snap(&run).await.step("publish").is_none());
}
