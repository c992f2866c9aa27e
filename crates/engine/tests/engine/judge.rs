//! 10b. Validate with a judge

use super::*;

/// A draft, a validate step with an optional schema and a judge, and a step reading the result.
pub(crate) fn judge_wf(template: &str, schema: bool, judge: &str, max_repairs: u32) -> String {
    let schema = if schema {
        "schema: {type: object, required: [title], properties: {title: {type: string}}}"
    } else {
        ""
    };
    format!(
        r#"
        name: judged
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
            {schema}
            judge: {judge}
            repair: {{step: draft, max_attempts: {max_repairs}}}
          - {{id: publish, kind: transform, value: "${{steps.check.output.title}}"}}
        "#
    )
}

pub(crate) const NO_BEST: &str = r#"{model: local/rules-judge, params: {rules: [{id: no-best, at: /title, forbid: "\\bbest\\b", message: no superlatives}]}}"#;

#[tokio::test]
pub(crate) async fn a_judge_passes_repairs_with_its_reasons_or_rejects() {
    // (draft template, schema, run status, publish output, judge calls, repairs)
    let table = [
        (
            r#"{"title": "A pack"}"#,
            false,
            RunStatus::Succeeded,
            json!("A pack"),
            1,
            0,
        ),
        // Fails the judge first; the repaired draft reads the judge's reasons as feedback.
        (
            r#"{% if feedback %}{"title": "{{ feedback[0][:13] }}"}{% else %}{"title": "The best pack"}{% endif %}"#,
            false,
            RunStatus::Succeeded,
            json!("judge: no sup"),
            2,
            1,
        ),
        // Fails the schema first: the judge is not asked about that value.
        (
            r#"{% if feedback %}{"title": "fixed"}{% else %}{"title": 5}{% endif %}"#,
            true,
            RunStatus::Succeeded,
            json!("fixed"),
            1,
            1,
        ),
        // Never fixed: repairs run out and the step fails `rejected`.
        (
            r#"{"title": "The best pack"}"#,
            true,
            RunStatus::Failed,
            Value::Null,
            3,
            2,
        ),
    ];
    for (template, schema, status, publish, calls, repairs) in table {
        let h = H::new();
        let (run, got) = h
            .run(
                &judge_wf(template, schema, NO_BEST, 2),
                json!({"topic": "t"}),
            )
            .await;
        assert_eq!(got, status, "{template}");
        let check = h.rec(&run, "check").await;
        assert_eq!(check.repairs, repairs, "{template}");
        let judged = h.step_events(&run, EventKind::StepJudged, "check").await;
        assert_eq!(judged.len(), calls, "{template}");
        assert_eq!(h.started_count(&run, "check").await, calls, "{template}");
        // The judge's calls are the step's: model, cost and tokens on its record.
        assert_eq!(check.model.as_deref(), Some("local/rules-judge"));
        assert!(check.cost_usd > 0.0 && check.usage.is_some(), "{template}");
        let costs: f64 = judged
            .iter()
            .map(|e| e.detail["cost_usd"].as_f64().unwrap())
            .sum();
        assert!(
            close(costs, check.cost_usd),
            "{template}: {costs} vs {}",
            check.cost_usd
        );
        let snap = h.snap(&run).await;
        if status == RunStatus::Succeeded {
            assert_eq!(h.output(&run, "publish").await, publish, "{template}");
            assert_eq!(judged.last().unwrap().detail["pass"], true);
        } else {
            let err = snap.header.error.clone().unwrap();
            assert_eq!(
                (err.class, err.step.as_deref()),
                (ErrorClass::Rejected, Some("check"))
            );
            let details = check.error.unwrap().details;
            assert_eq!(
                details,
                vec!["judge: no superlatives [no-best] (at /title: \"best\")".to_string()]
            );
            assert!(snap.step("publish").is_none());
        }
        let asked = h
            .step_events(&run, EventKind::StepRepairRequested, "check")
            .await;
        assert_eq!(asked.len() as u32, repairs);
        if schema && repairs > 0 {
            // The schema's problems went first, without a verdict.
            assert!(asked[0].detail["errors"][0]
                .as_str()
                .unwrap()
                .contains("/title"));
        }
    }
}

#[tokio::test]
pub(crate) async fn a_judge_is_retried_like_any_model_call() {
    // A transient fault on the judge's first call is retried; the verdict then passes.
    let judge = r#"{model: local/rules-judge, retry: {max_attempts: 3, initial_backoff: 1s}, params: {fault: {kind: transient, times: 1}, rules: [{forbid: "nope"}]}}"#;
    let h = H::new();
    let (run, status) = h
        .run(
            &judge_wf(r#"{"title": "ok"}"#, true, judge, 1),
            json!({"topic": "t"}),
        )
        .await;
    assert_eq!(status, RunStatus::Succeeded);
    assert_eq!(h.started_count(&run, "check").await, 2);
    assert_eq!(retry_delays(&h, &run, "check").await.len(), 1);
    assert_eq!(h.rec(&run, "draft").await.attempt, 1);
}

/// A hosted-style judge answering scripted verdicts in order (then the last one again).
pub(crate) struct ScriptedJudge {
    answers: Vec<Value>,
    requests: std::sync::Mutex<Vec<ModelRequest>>,
}

#[async_trait]
impl Provider for ScriptedJudge {
    fn name(&self) -> &str {
        "scripted"
    }

    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: "scripted/judge".into(),
            roles: vec![Role::Generation],
            asynchronous: false,
            description: "answers scripted verdicts".into(),
        }]
    }

    fn estimate_cost_usd(&self, _request: &ModelRequest) -> f64 {
        0.01
    }

    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, StepError> {
        let mut seen = self.requests.lock().unwrap();
        seen.push(request.clone());
        let answer = self.answers[(seen.len() - 1).min(self.answers.len() - 1)].clone();
        Ok(ModelResponse::Completed(
            switchyard_core::model::ModelOutput {
                output: json!({"text": answer.to_string(), "json": answer}),
                usage: None,
                cost_usd: 0.01,
                model: request.model.clone(),
                provider_request_id: None,
                sources: Vec::new(),
            },
        ))
    }
}

#[tokio::test]
pub(crate) async fn a_hosted_judge_gets_criteria_and_value_apart_and_its_verdict_is_checked() {
    let judge = r#"{model: scripted/judge, criteria: {version: policy@1, template: "Judge the copy for {{ input.topic }}."}, min_score: 0.8, retry: {max_attempts: 2, initial_backoff: 1s}}"#;
    // (scripted answers, run status, judge calls, what the last failure says)
    let table = [
        // Not a verdict: re-asked with what was wrong, then a passing verdict.
        (
            vec![
                json!({"verdict": "fine"}),
                json!({"pass": true, "score": 0.9, "reasons": []}),
            ],
            RunStatus::Succeeded,
            2,
            None,
        ),
        // `pass` but below `min_score`: a failing verdict, here with no repair left.
        (
            vec![json!({"pass": true, "score": 0.6, "reasons": ["thin"]})],
            RunStatus::Failed,
            2,
            Some(vec![
                "judge: thin",
                "judge: score 0.60 is below the required 0.80",
            ]),
        ),
    ];
    for (answers, status, calls, details) in table {
        let scripted = Arc::new(ScriptedJudge {
            answers,
            requests: Default::default(),
        });
        let h = H::build(|_| {}, vec![scripted.clone()]);
        let (run, got) = h
            .run(
                &judge_wf(r#"{"title": "ok"}"#, false, judge, 1),
                json!({"topic": "bags"}),
            )
            .await;
        let seen = scripted.requests.lock().unwrap().clone();
        assert_eq!(seen.len(), calls);
        let first = &seen[0];
        // The criteria are the instructions; the value is the input, never spliced in.
        assert_eq!(
            first.instructions.as_deref(),
            Some("Judge the copy for bags.")
        );
        assert_eq!(first.input, json!({"title": "ok"}));
        assert_eq!(first.prompt_version.as_deref(), Some("policy@1"));
        assert_eq!(
            first.output_schema,
            Some(switchyard_core::machine::judge::verdict_schema())
        );
        let check = h.rec(&run, "check").await;
        assert!(close(check.cost_usd, 0.01 * calls as f64));
        match details {
            None => {
                assert_eq!(got, RunStatus::Succeeded);
                assert!(
                    seen[1].feedback.iter().any(|f| f.contains("\"pass\"")),
                    "{:?}",
                    seen[1].feedback
                );
            }
            Some(lines) => {
                assert_eq!(got, status);
                // One repair is allowed: the draft ran again, got the same verdict, and
                // the step then failed `rejected`.
                let err = check.error.unwrap();
                assert_eq!(err.class, ErrorClass::Rejected);
                assert_eq!(err.details, lines);
            }
        }
    }
}
