//! 6. Fallback

use super::*;

pub(crate) fn fallback_wf(fault: &str, fallback_on: &str) -> String {
    format!(
        r#"
        name: fallback
        version: "1"
        steps:
          - id: gen
            model: local/template-generator
            fallback: [local/echo]
            {fallback_on}
            input: "hello"
            retry: {{max_attempts: 2, initial_backoff: 100ms, jitter: false}}
            params:
              template: "primary"
              fault: {{kind: {fault}, times: 99, model: local/template-generator}}
        "#
    )
}

#[tokio::test]
pub(crate) async fn fallback_is_used_only_for_the_declared_classes() {
    // (fault, fallback_on line, status, attempts, fallback used, model that answered last)
    let table = [
        (
            "transient",
            "fallback_on: [transient]",
            RunStatus::Succeeded,
            3,
            true,
            "local/echo",
        ),
        ("transient", "", RunStatus::Succeeded, 3, true, "local/echo"),
        (
            "invalid",
            "",
            RunStatus::Failed,
            1,
            false,
            "local/template-generator",
        ),
        (
            "invalid",
            "fallback_on: [transient]",
            RunStatus::Failed,
            1,
            false,
            "local/template-generator",
        ),
        (
            "invalid",
            "fallback_on: [invalid]",
            RunStatus::Succeeded,
            2,
            true,
            "local/echo",
        ),
        (
            "auth",
            "",
            RunStatus::Failed,
            1,
            false,
            "local/template-generator",
        ),
        (
            "auth",
            "fallback_on: [transient, invalid]",
            RunStatus::Failed,
            1,
            false,
            "local/template-generator",
        ),
        (
            "quota_exhausted",
            "",
            RunStatus::Succeeded,
            2,
            true,
            "local/echo",
        ),
    ];
    for (fault, on, status, attempts, used, model) in table {
        let h = H::new();
        let (run, got) = h.run(&fallback_wf(fault, on), json!({})).await;
        let case = format!("{fault} / {on:?}");
        assert_eq!(got, status, "{case}");
        let r = h.rec(&run, "gen").await;
        assert_eq!(r.attempt, attempts, "{case}");
        assert_eq!(r.fallback_used, used, "{case}");
        assert_eq!(r.model.as_deref(), Some(model), "{case}");
        let fallbacks = h.step_events(&run, EventKind::StepFallback, "gen").await;
        assert_eq!(fallbacks.len(), usize::from(used), "{case}");
        if used {
            assert_eq!(fallbacks[0].detail["to"], "local/echo");
            assert_eq!(h.output(&run, "gen").await["text"], "hello", "{case}");
            let view = h.engine.view(&h.snap(&run).await).await.unwrap();
            assert!(view.steps[0].fallback_used);
            assert_eq!(view.steps[0].model.as_deref(), Some("local/echo"));
        } else {
            assert_eq!(
                run_class(&h.snap(&run).await),
                ErrorClass::parse(fault),
                "{case}"
            );
        }
        // Which model each attempt called.
        let called: Vec<String> = h
            .step_events(&run, EventKind::StepStarted, "gen")
            .await
            .iter()
            .map(|e| e.detail["model"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(called.last().map(String::as_str), Some(model), "{case}");
    }
}

#[test]
pub(crate) fn auth_cannot_be_declared_as_a_fallback_class() {
    use switchyard_core::workflow::{compile, NoFiles};
    let models = LocalModels::catalog();
    let err = compile(
        &support::dedent(&fallback_wf("auth", "fallback_on: [auth]")),
        &NoFiles,
        &models,
    )
    .unwrap_err();
    assert!(
        err.iter().any(|d| d.message.contains("never falls back")),
        "{err:?}"
    );
}

pub(crate) struct LocalModels;
impl LocalModels {
    pub(crate) fn catalog() -> Vec<ModelInfo> {
        switchyard_providers::LocalProvider::default().models()
    }
}
