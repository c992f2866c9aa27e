//! 12. Asynchronous jobs and webhooks

use super::*;

pub(crate) fn async_wf(params: &str, wait_timeout: &str) -> String {
    format!(
        r#"
        name: render
        version: "1"
        steps:
          - id: render
            model: local/async-job
            input: {{title: "${{input.title}}", text: "hello"}}
            wait_timeout: {wait_timeout}
            params: {params}
          - id: done
            kind: transform
            value: {{type: "${{steps.render.output.content_type}}", title: "${{input.title}}"}}
        "#
    )
}

#[tokio::test]
pub(crate) async fn callback_is_verified_deduplicated_and_continues_the_run() {
    let h = H::new();
    h.set_auto_deliver(false);
    let (run, status) = h
        .run(
            &async_wf("{poll_after_ms: 60000}", "10m"),
            json!({"title": "Card"}),
        )
        .await;
    assert_eq!(status, RunStatus::Waiting);
    assert_eq!(
        h.last_handled(&run),
        Handled::Waiting {
            reason: WaitReason::Callback,
            until: Some(T0 + 60_000)
        }
    );
    let waiting = h.rec(&run, "render").await;
    assert_eq!(waiting.status, StepStatus::Waiting);
    let job = waiting.job.clone().unwrap();
    let cbs = h.take_callbacks();
    assert_eq!(cbs.len(), 1);
    let cb = cbs[0].clone();
    assert!(
        cb.url.starts_with("http://switchyard.test/hooks/local?"),
        "{}",
        cb.url
    );
    assert!(cb.url.contains(&format!("token={}", job.callback_token)));
    h.clock.advance(cb.delay_ms);

    // Wrong token (an old attempt's callback): acknowledged, not applied.
    let mut stale = cb.clone();
    stale.url = cb.url.replace(&job.callback_token, "0123456789abcdef");
    stale.webhook_id = "msg_from_an_old_attempt".into();
    assert_eq!(h.deliver(&stale).await.unwrap(), CallbackResult::Stale);
    assert_eq!(h.rec(&run, "render").await, waiting);

    // A bad signature, or a body that is not the one signed: unauthorized.
    let mut forged = h.callback_request(&cb);
    forged
        .headers
        .insert("webhook-signature".into(), "v1,AAAA".into());
    let r = h.engine.handle_callback(&forged).await;
    assert!(matches!(r, Err(EngineError::Unauthorized(_))), "{r:?}");
    let mut tampered = h.callback_request(&cb);
    tampered.body = br#"{"id": "x", "status": "succeeded"}"#.to_vec();
    let r = h.engine.handle_callback(&tampered).await;
    assert!(matches!(r, Err(EngineError::Unauthorized(_))), "{r:?}");
    assert_eq!(h.rec(&run, "render").await, waiting);

    // The genuine callback settles the step and wakes the run.
    assert_eq!(h.deliver(&cb).await.unwrap(), CallbackResult::Applied);
    let r = h.rec(&run, "render").await;
    assert_eq!((r.status, r.attempt), (StepStatus::Succeeded, 1));
    assert!(r.cost_usd > 0.0);
    assert_eq!(
        h.step_events(&run, EventKind::WebhookReceived, "render")
            .await
            .len(),
        1
    );
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    assert_eq!(
        h.output(&run, "done").await,
        json!({"type": "image/svg+xml", "title": "Card"})
    );
    let wakes: Vec<WakeReason> = h.handled(&run).iter().map(|(_, w, _)| w.reason).collect();
    assert!(wakes.contains(&WakeReason::Webhook), "{wakes:?}");

    // The same callback again: a duplicate, nothing changes.
    let (snap, events) = (h.snap(&run).await, h.events(&run).await);
    assert_eq!(h.deliver(&cb).await.unwrap(), CallbackResult::Duplicate);
    assert_eq!(h.snap(&run).await, snap);
    assert_eq!(h.events(&run).await, events);
}

#[tokio::test]
pub(crate) async fn callbacks_delivered_by_the_driver_complete_the_job() {
    let h = H::new();
    let (run, status) = h
        .run(
            &async_wf("{delay_ms: 300}", "10m"),
            json!({"title": "Auto"}),
        )
        .await;
    assert_eq!(status, RunStatus::Succeeded);
    // Delivered 300 ms after the submit, well before the 1 s poll.
    assert_eq!(h.rec(&run, "render").await.finished_at, Some(T0 + 300));
    assert!(h
        .step_events(&run, EventKind::JobPolled, "render")
        .await
        .is_empty());
}

#[tokio::test]
pub(crate) async fn without_a_callback_the_engine_polls_after_poll_after() {
    // (params, wait_timeout, when the step finishes)
    let table = [
        ("{callback: never, poll_after_ms: 2000}", "10m", T0 + 2000),
        // The wait deadline comes before the poll: the engine polls at the deadline, and the
        // local job, which is always done, completes there.
        ("{callback: never, poll_after_ms: 5000}", "2s", T0 + 2000),
    ];
    for (params, wait_timeout, finished) in table {
        let h = H::new();
        let (run, status) = h
            .run(&async_wf(params, wait_timeout), json!({"title": "P"}))
            .await;
        // Nobody will call back: the driver stops, as the CLI's does.
        assert_eq!(status, RunStatus::Waiting, "{params}");
        assert!(h.take_callbacks().is_empty());
        assert_eq!(
            h.last_handled(&run),
            Handled::Waiting {
                reason: WaitReason::Callback,
                until: Some(finished)
            }
        );
        assert_eq!(h.skip_to_next_wake().await, Some(finished));
        assert_eq!(h.drive(&run).await, RunStatus::Succeeded, "{params}");
        let r = h.rec(&run, "render").await;
        assert_eq!((r.finished_at, r.attempt), (Some(finished), 1), "{params}");
        assert_eq!(
            h.output(&run, "render").await["content_type"],
            "image/svg+xml"
        );
    }
}

/// A provider whose asynchronous jobs never finish and never call back.
/// A job provider whose jobs never finish; it counts the jobs it was asked to cancel.
#[derive(Default)]
pub(crate) struct Stuck {
    pub(crate) cancels: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait]
impl Provider for Stuck {
    fn name(&self) -> &str {
        "stuck"
    }

    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: "stuck/job".into(),
            roles: vec![Role::Asset],
            asynchronous: true,
            description: "never finishes".into(),
        }]
    }

    fn estimate_cost_usd(&self, _request: &ModelRequest) -> f64 {
        0.0
    }

    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, StepError> {
        Ok(ModelResponse::Pending {
            job_id: format!("job-{}", request.attempt),
            poll_after_ms: Some(1000),
        })
    }

    async fn poll(
        &self,
        _request: &ModelRequest,
        job_id: &str,
    ) -> Result<ModelResponse, StepError> {
        Ok(ModelResponse::Pending {
            job_id: job_id.into(),
            poll_after_ms: None,
        })
    }

    async fn cancel(&self, _request: &ModelRequest, _job_id: &str) -> Result<(), StepError> {
        self.cancels
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn parse_callback(
        &self,
        _model: &str,
        _body: &Value,
    ) -> Result<(String, ModelResponse), StepError> {
        Err(StepError::new(ErrorClass::Malformed, "no callbacks"))
    }
}

/// Drives a run whose waits nobody outside will end, moving the clock to each next wake-up.
pub(crate) async fn drive_through_waits(h: &H, run: &str) -> RunStatus {
    let mut status = h.drive(run).await;
    for _ in 0..50 {
        if status != RunStatus::Waiting || h.skip_to_next_wake().await.is_none() {
            break;
        }
        status = h.drive(run).await;
    }
    status
}

#[tokio::test]
pub(crate) async fn a_wait_timeout_fails_the_attempt_and_retry_and_fallback_rules_apply() {
    // (extra step fields, run status, attempts, model that answered last, run class)
    let table = [
        (
            "retry: {max_attempts: 3, initial_backoff: 100ms, jitter: false}",
            RunStatus::Failed,
            3,
            "stuck/job",
            Some(ErrorClass::Timeout),
        ),
        (
            // The retry after the first wait (at 3.1 s) is within max_duration; the second
            // wait ends at 6.1 s, past it, so no further retry is scheduled.
            "retry: {max_attempts: 3, initial_backoff: 100ms, jitter: false}\n    max_duration: 5s",
            RunStatus::Failed,
            2,
            "stuck/job",
            Some(ErrorClass::Timeout),
        ),
        (
            // `timeout` falls back by default: the next model of the chain gets a new job.
            "retry: {max_attempts: 1}\n    fallback: [local/async-job]",
            RunStatus::Succeeded,
            2,
            "local/async-job",
            None,
        ),
    ];
    for (extra, status, attempts, model, class) in table {
        let h = H::build(|_| {}, vec![Arc::new(Stuck::default())]);
        let yaml = format!(
            "name: stuck\nversion: \"1\"\nsteps:\n  - id: render\n    model: stuck/job\n    input: x\n    wait_timeout: 3s\n    {extra}\n"
        );
        let run = h.start(&yaml, json!({})).await;
        assert_eq!(drive_through_waits(&h, &run).await, status, "{extra}");
        let snap = h.snap(&run).await;
        assert_eq!(run_class(&snap), class, "{extra}");
        let r = snap.step("render").unwrap();
        assert_eq!(
            (r.attempt, r.model.as_deref()),
            (attempts, Some(model)),
            "{extra}"
        );
        // Each attempt submitted its own job: one StepStarted per attempt.
        let starts = start_times(&h, &run, "render").await;
        assert_eq!(starts.len(), attempts as usize, "{extra}");
        // Every stuck attempt was polled at 1 s (still pending) and once more at its 3 s wait
        // deadline, where it failed.
        let polled: Vec<u64> = h
            .step_events(&run, EventKind::JobPolled, "render")
            .await
            .iter()
            .map(|e| e.at)
            .collect();
        let stuck_starts = if status == RunStatus::Failed {
            &starts[..]
        } else {
            &starts[..1]
        };
        assert_eq!(
            polled,
            stuck_starts
                .iter()
                .flat_map(|t| [t + 1000, t + 3000])
                .collect::<Vec<_>>(),
            "{extra}"
        );
        if status == RunStatus::Failed {
            assert_eq!(
                r.finished_at,
                Some(starts.last().unwrap() + 3000),
                "{extra}"
            );
            let retried = h
                .step_events(&run, EventKind::StepRetryScheduled, "render")
                .await;
            assert_eq!(retried.len(), attempts as usize - 1, "{extra}");
            assert!(retried.iter().all(|e| e.detail["class"] == "timeout"));
        } else {
            assert!(r.fallback_used);
            assert_eq!(starts, [T0, T0 + 3000]);
            // The local job called back 50 ms after it was submitted.
            assert_eq!(r.finished_at, Some(T0 + 3050));
        }
    }
}
