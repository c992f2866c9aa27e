//! 11. Approval

use super::*;

pub(crate) fn approval_wf(on_timeout: &str) -> String {
    format!(
        r#"
        name: gate
        version: "1"
        steps:
          - {{id: prep, kind: transform, value: "${{input.what}}"}}
          - id: gate
            kind: approval
            deadline: 1h
            message: "Approve {{{{ input.what }}}}?"
            on_timeout: {on_timeout}
          - {{id: ship, kind: transform, value: {{approved: "${{steps.gate.output.approved}}", what: "${{steps.prep.output}}"}}}}
        "#
    )
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Decision {
    Approve,
    Reject,
    Deadline,
}

#[tokio::test]
pub(crate) async fn approval_waits_then_decisions_and_deadlines_settle_it() {
    // (on_timeout, what happens, run status, run class, gate output `approved`)
    let table = [
        (
            "reject",
            Decision::Approve,
            RunStatus::Succeeded,
            None,
            Some(true),
        ),
        (
            "reject",
            Decision::Reject,
            RunStatus::Failed,
            Some(ErrorClass::Rejected),
            Some(false),
        ),
        (
            "reject",
            Decision::Deadline,
            RunStatus::Failed,
            Some(ErrorClass::Timeout),
            None,
        ),
        (
            "approve",
            Decision::Deadline,
            RunStatus::Succeeded,
            None,
            Some(true),
        ),
    ];
    for (on_timeout, decision, status, class, approved) in table {
        let case = format!("{on_timeout} / {decision:?}");
        let h = H::new();
        let (run, waiting) = h
            .run(&approval_wf(on_timeout), json!({"what": "deploy"}))
            .await;
        assert_eq!(waiting, RunStatus::Waiting, "{case}");
        let deadline = T0 + 3_600_000;
        assert_eq!(
            h.last_handled(&run),
            Handled::Waiting {
                reason: WaitReason::Approval,
                until: Some(deadline)
            }
        );
        let opened = h.step_events(&run, EventKind::StepWaiting, "gate").await;
        assert_eq!(opened[0].detail["message"], "Approve deploy?");
        let view = h.engine.view(&h.snap(&run).await).await.unwrap();
        assert_eq!(view.waiting_for.unwrap()["reason"], "approval");

        h.clock.advance(1000);
        match decision {
            Decision::Approve => {
                h.engine
                    .decide(Some("acme"), &run, "gate", true, Some("ok".into()))
                    .await
                    .unwrap();
                // A different decision on the same gate is a conflict; the same one again
                // (a retry) stands and answers as the first did.
                let again = h.engine.decide(None, &run, "gate", false, None).await;
                assert!(matches!(again, Err(EngineError::Conflict(_))), "{again:?}");
                h.engine
                    .decide(None, &run, "gate", true, Some("retried".into()))
                    .await
                    .unwrap();
                let rec = h.rec(&run, "gate").await;
                assert_eq!(rec.approval.unwrap().comment.as_deref(), Some("ok"));
            }
            Decision::Reject => {
                h.engine
                    .decide(None, &run, "gate", false, Some("no".into()))
                    .await
                    .unwrap();
            }
            Decision::Deadline => h.clock.set(deadline),
        }
        assert_eq!(h.drive(&run).await, status, "{case}");
        let snap = h.snap(&run).await;
        assert_eq!(run_class(&snap), class, "{case}");
        let gate = snap.step("gate").unwrap();
        let got = gate.output.as_ref().map(|o| match o {
            ValueRef::Inline { value } => value["approved"].as_bool().unwrap(),
            ValueRef::Blob { .. } => panic!("small output in a blob"),
        });
        assert_eq!(got, approved, "{case}");
        if status == RunStatus::Succeeded {
            assert_eq!(
                h.output(&run, "ship").await,
                json!({"approved": true, "what": "deploy"})
            );
        }
        if let Decision::Deadline = decision {
            assert_eq!(gate.finished_at, Some(deadline), "{case}");
        }
        let decided = h
            .step_events(&run, EventKind::ApprovalDecided, "gate")
            .await;
        assert_eq!(decided.len(), usize::from(approved.is_some()), "{case}");
    }
}

#[tokio::test]
pub(crate) async fn decide_rejects_wrong_steps_and_tenants() {
    let h = H::new();
    let (run, _) = h.run(&approval_wf("reject"), json!({"what": "x"})).await;
    let not_approval = h.engine.decide(None, &run, "prep", true, None).await;
    assert!(
        matches!(not_approval, Err(EngineError::BadRequest { .. })),
        "{not_approval:?}"
    );
    let missing = h.engine.decide(None, &run, "nope", true, None).await;
    assert!(
        matches!(missing, Err(EngineError::NotFound(_))),
        "{missing:?}"
    );
    let other_tenant = h
        .engine
        .decide(Some("globex"), &run, "gate", true, None)
        .await;
    assert!(
        matches!(other_tenant, Err(EngineError::NotFound(_))),
        "{other_tenant:?}"
    );
    assert_eq!(h.rec(&run, "gate").await.status, StepStatus::Waiting);
}
