//! 9. Parallel

use super::*;

#[tokio::test]
pub(crate) async fn parallel_merges_branch_outputs_and_reports_optional_failures() {
    let h = H::new();
    let yaml = r#"
        name: fan
        version: "1"
        steps:
          - {id: prep, kind: transform, value: {text: "${input.text}"}}
          - id: fan
            kind: parallel
            branches:
              x: {kind: transform, value: "x:${steps.prep.output.text}"}
              y:
                model: local/template-generator
                input: "${steps.prep.output}"
                params: {template: "y:{{ input.text }}"}
              z:
                model: local/template-generator
                optional: true
                input: "${steps.prep.output}"
                params:
                  template: "never"
                  fault: {kind: invalid, times: 9}
          - id: after
            kind: transform
            value: {x: "${steps.fan.output.x}", z: "${steps.fan.output.z}"}
    "#;
    let (run, status) = h.run(yaml, json!({"text": "hi"})).await;
    assert_eq!(status, RunStatus::Succeeded);
    let fan = h.output(&run, "fan").await;
    assert_eq!(fan["x"], "x:hi");
    assert_eq!(fan["y"]["text"], "y:hi");
    assert_eq!(fan["z"], Value::Null);
    assert_eq!(fan["_errors"]["z"]["class"], "invalid");
    assert!(fan["_errors"].get("x").is_none() && fan["_errors"].get("y").is_none());
    assert_eq!(
        h.output(&run, "after").await,
        json!({"x": "x:hi", "z": null})
    );
    let snap = h.snap(&run).await;
    assert_eq!(snap.step("fan.z").unwrap().status, StepStatus::Failed);
    for s in ["prep", "fan.x", "fan.y", "fan", "after"] {
        assert_eq!(snap.step(s).unwrap().status, StepStatus::Succeeded, "{s}");
    }

    // The same branch, not optional, fails the run.
    let h = H::new();
    let (run, status) = h
        .run(&yaml.replace("optional: true", ""), json!({"text": "hi"}))
        .await;
    assert_eq!(status, RunStatus::Failed);
    let err = h.snap(&run).await.header.error.unwrap();
    assert_eq!(
        (err.class, err.step.as_deref()),
        (ErrorClass::Invalid, Some("fan.z"))
    );
}
