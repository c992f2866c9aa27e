//! 17. Property: extra wake-ups at random points change nothing

use super::*;

pub(crate) const PROP: &str = r#"
    name: prop
    version: "1"
    defaults:
      retry: {max_attempts: 3, initial_backoff: 500ms, jitter: true}
    steps:
      - id: classify
        model: local/keyword-classifier
        input: "${input.text}"
        params:
          labels: {billing: [refund, invoice], tech: [crash]}
      - id: triage
        kind: route
        routes:
          - when: {path: steps.classify.output.label, equals: billing}
            to: fan
        default: plain
      - id: fan
        kind: parallel
        branches:
          x: {kind: transform, value: "x:${input.text}"}
          y:
            model: local/template-generator
            input: "${input}"
            params:
              template: "y for {{ input.text }}"
              fault: {kind: transient, times: 2}
      - {id: plain, kind: transform, value: "plain:${input.text}"}
      - id: flaky
        needs: [fan, plain]
        model: local/template-generator
        input: {fan: "${steps.fan.output}", plain: "${steps.plain.output}"}
        params:
          template: "done {{ input.fan | tojson }} {{ input.plain }}"
          fault: {kind: transient, times: 1}
"#;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn extra_wake_ups_at_random_points_change_nothing(
        billing in any::<bool>(),
        extra in prop::collection::vec((0usize..REASONS.len(), 0u64..3_000, 0usize..10), 0..12),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let text = if billing { "refund my invoice" } else { "the app crashed" };
            let input = json!({"text": text});

            let clean = H::new();
            let (clean_run, clean_status) = clean.run(PROP, input.clone()).await;
            assert_eq!(clean_status, RunStatus::Succeeded);
            let want = clean.summary(&clean_run).await;

            let h = H::new();
            let run = h.start(PROP, input).await;
            let inject: Vec<(usize, WakeReason, u64)> =
                extra.iter().map(|(r, delay, at)| (*at, REASONS[*r], *delay)).collect();
            assert_eq!(h.drive_injecting(&run, &inject).await, RunStatus::Succeeded);
            // Wake-ups still queued (late ones) are handled too.
            for r in h.drain().await {
                assert_eq!(r, Handled::AlreadyEnded(RunStatus::Succeeded));
            }
            // Injections planned after the run ended are late duplicates as well.
            for (_, reason, _) in &inject {
                let late = WakeUp { run_id: run.clone(), reason: *reason, due_at: None };
                assert_eq!(
                    h.engine.handle(&late, None).await.unwrap(),
                    Handled::AlreadyEnded(RunStatus::Succeeded)
                );
            }

            assert_eq!(h.summary(&run).await, want);
            // No attempt started twice, no step succeeded twice.
            let snap = h.snap(&run).await;
            for r in &snap.steps {
                let started = h.started_count(&run, &r.step).await;
                let is_model = matches!(
                    h.engine.definition(&snap.header.workflow.hash).await.unwrap()
                        .step(&r.step).unwrap().kind,
                    StepKind::Model(_)
                );
                if is_model {
                    assert_eq!(started, r.attempt as usize, "{}", r.step);
                }
                let succeeded = h.step_events(&run, EventKind::StepSucceeded, &r.step).await.len();
                assert_eq!(succeeded, usize::from(r.status == StepStatus::Succeeded), "{}", r.step);
            }
            let expected_attempts: &[(&str, u32)] = if billing {
                &[("fan.y", 3), ("flaky", 2), ("fan", 1)]
            } else {
                &[("flaky", 2), ("plain", 1)]
            };
            for (step, attempts) in expected_attempts {
                assert_eq!(snap.step(step).unwrap().attempt, *attempts, "{step}");
            }
        });
    }
}

/// The property's workflow compiles against the local catalog (a quick check that a typo in
/// it fails here, not as 24 confusing proptest cases).
#[test]
pub(crate) fn property_workflow_compiles() {
    let wf = compile_with(PROP, &LocalModels::catalog());
    assert_eq!(wf.steps.len(), 7);
}

/// Parallel branches that start together share the budget: each one's estimate is reserved
/// until its real cost is recorded, so three branches cannot all spend what only two may.
#[tokio::test]
pub(crate) async fn parallel_branches_cannot_overspend_the_budget_together() {
    use switchyard_core::model::Provider;
    let h = H::new();
    let branch = |n: u32| {
        format!(
            "      b{n}:\n        model: local/template-generator\n        input: {{text: \"${{input.text}}\"}}\n        params: {{template: \"{{{{ input.text }}}}\"}}\n        optional: true\n"
        )
    };
    let text = "word ".repeat(200);
    // The estimate of one branch, as the engine will compute it.
    let probe = switchyard_providers::LocalProvider::new(Default::default());
    let req = switchyard_core::model::ModelRequest {
        run_id: "r".into(),
        step: "fan.b0".into(),
        attempt: 1,
        model: "local/template-generator".into(),
        role: switchyard_core::model::Role::Generation,
        instructions: None,
        prompt_version: None,
        input: json!({"text": text}),
        params: json!({"template": "{{ input.text }}"}),
        output_schema: None,
        feedback: vec![],
        timeout_ms: 30_000,
        callback: None,
    };
    let estimate = probe.estimate_cost_usd(&req);
    assert!(estimate > 0.0);
    let budget = estimate * 2.5;
    let yaml = format!(
        "name: fan\nversion: \"1\"\nbudget: {{max_cost_usd: {budget}}}\nsteps:\n  - id: fan\n    kind: parallel\n    branches:\n{}{}{}",
        branch(0),
        branch(1),
        branch(2)
    );
    let (run, status) = h.run(&yaml, json!({"text": text})).await;
    assert_eq!(status, RunStatus::Succeeded);
    let snap = h.snap(&run).await;
    let failed: Vec<_> = snap
        .steps
        .iter()
        .filter(|r| r.status == StepStatus::Failed)
        .map(|r| (r.step.clone(), r.error.clone().unwrap().class))
        .collect();
    assert_eq!(failed.len(), 1, "exactly one branch is refused: {failed:?}");
    assert_eq!(failed[0].1, ErrorClass::BudgetExceeded);
    assert!(
        snap.cost_usd() <= budget,
        "spent {} of {budget}",
        snap.cost_usd()
    );
}

/// Jobs a run gives up on are cancelled at the provider: when their wait times out, and when
/// the run is cancelled while they run.
#[tokio::test]
pub(crate) async fn abandoned_jobs_are_cancelled_at_the_provider() {
    use std::sync::atomic::Ordering;
    let yaml = "name: job\nversion: \"1\"\nsteps:\n  - id: render\n    model: stuck/job\n    input: x\n    wait_timeout: 3s\n    retry: {max_attempts: 1}\n";

    // The wait times out: one poll at the deadline, then the job is cancelled.
    let stuck = Arc::new(Stuck::default());
    let cancels = stuck.cancels.clone();
    let h = H::build(|_| {}, vec![stuck]);
    let run = h.start(yaml, json!({})).await;
    assert_eq!(drive_through_waits(&h, &run).await, RunStatus::Failed);
    assert_eq!(run_class(&h.snap(&run).await), Some(ErrorClass::Timeout));
    assert_eq!(cancels.load(Ordering::SeqCst), 1);

    // The run is cancelled while the job runs.
    let stuck = Arc::new(Stuck::default());
    let cancels = stuck.cancels.clone();
    let h = H::build(|_| {}, vec![stuck]);
    let run = h.start(yaml, json!({})).await;
    assert_eq!(h.drive(&run).await, RunStatus::Waiting);
    h.engine.cancel(None, &run).await.unwrap();
    assert_eq!(h.drive(&run).await, RunStatus::Cancelled);
    assert_eq!(cancels.load(Ordering::SeqCst), 1);
}

pub(crate) fn all_runs() -> switchyard_core::ports::RunQuery {
    switchyard_core::ports::RunQuery::new(switchyard_core::ports::ListScope::AllTenants, 100)
}

/// Every error of the webhook route is the contract's JSON error body — the handler's own, and
/// the ones axum writes before the handler runs (a body over the limit, an unknown route, a
/// wrong method), which are plain text unless the router converts them.
#[tokio::test]
pub(crate) async fn webhook_route_errors_are_json_bodies() {
    let h = H::new();
    let router = switchyard_engine::http::hooks_router(h.engine.clone(), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let too_big = vec![b'x'; switchyard_engine::http::MAX_CALLBACK_BYTES + 1];
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "over the body limit",
            client.post(format!("{base}/hooks/local")).body(too_big),
            413,
            "too_large",
        ),
        (
            "unsigned",
            client.post(format!("{base}/hooks/local")).body("{}"),
            401,
            "unauthorized",
        ),
        (
            "unknown route",
            client.post(format!("{base}/hooks")).body("{}"),
            404,
            "not_found",
        ),
        (
            "wrong method",
            client.get(format!("{base}/hooks/local")),
            405,
            "method_not_allowed",
        ),
    ];
    for (what, req, status, code) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{what}");
        let text = resp.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
    }
}

/// Two records of one SQS batch for the same run, handled concurrently by one invocation (one
/// engine, one configured owner): the lease is per `handle` call, so only one drives the run.
#[tokio::test]
pub(crate) async fn two_records_of_one_batch_for_one_run_are_handled_once() {
    let (h, gate, run, wake) = start_one_held_step().await;
    let first = inside_the_call(&h.engine, &gate, &wake).await;
    assert_eq!(
        h.engine.handle(&wake, None).await.unwrap(),
        Handled::Busy,
        "the same engine, another `handle` call: not the lease's owner"
    );
    gate.open.add_permits(1);
    assert_eq!(
        first.await.unwrap().unwrap(),
        Handled::Ended(RunStatus::Succeeded)
    );
    assert_eq!(h.started_count(&run, "slow").await, 1);
}

/// A wake-up that read the run just before another worker ended it, and took the lease just
/// after (an ended run's lease is free): it must see the end and leave the run ended — not
/// park it as `waiting`, which would reopen it and end it a second time.
#[tokio::test]
pub(crate) async fn a_wake_up_that_read_the_run_before_it_ended_leaves_it_ended() {
    use switchyard_contract::faults::FaultyStore;
    let slot: Arc<std::sync::Mutex<Option<Arc<FaultyStore>>>> = Arc::default();
    let keep = slot.clone();
    let h = H::with_store(move |inner| {
        let faulty = Arc::new(FaultyStore::new(inner));
        *keep.lock().unwrap() = Some(faulty.clone());
        faulty
    });
    let faulty = slot.lock().unwrap().clone().unwrap();
    let run = h.start(CHAIN, json!({"text": "refund please"})).await;
    let before = h.snap(&run).await;
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    let ended = h.snap(&run).await;
    let events = h.events(&run).await.len();

    faulty.load_stale_once(before);
    let wake = WakeUp {
        run_id: run.clone(),
        reason: WakeReason::Start,
        due_at: None,
    };
    let late = h
        .other_worker("worker-2")
        .handle(&wake, None)
        .await
        .unwrap();
    assert_eq!(late, Handled::AlreadyEnded(RunStatus::Succeeded));
    let after = h.snap(&run).await.header;
    assert_eq!(
        (
            after.status,
            &after.output,
            after.ended_at,
            &after.wait,
            &after.lease
        ),
        (
            RunStatus::Succeeded,
            &ended.header.output,
            ended.header.ended_at,
            &None,
            &None
        )
    );
    assert_eq!(h.events(&run).await.len(), events, "nothing happened again");
}

/// A model call is started only if its whole attempt timeout fits before the invocation's
/// deadline; otherwise the run is handed to the next invocation without starting it.
#[tokio::test]
pub(crate) async fn a_call_that_would_outlive_the_invocation_is_not_started() {
    let h = H::new();
    let yaml = r#"
        name: long
        version: "1"
        steps:
          - id: first
            kind: transform
            value: "${input.text}"
          - id: call
            model: local/echo
            input: "${steps.first.output}"
            timeout: 30s
    "#;
    let run = h.start(yaml, json!({"text": "hi"})).await;
    h.queue.receive(16, 60_000).await.unwrap(); // the Start wake-up, taken by this "invocation"
    let wake = WakeUp {
        run_id: run.clone(),
        reason: WakeReason::Start,
        due_at: None,
    };
    // 10 s left: enough for the transform, not for a call that may take 30 s.
    let handled = h
        .engine
        .handle(&wake, Some(h.now() + 10_000))
        .await
        .unwrap();
    assert_eq!(handled, Handled::Yielded);
    assert_eq!(h.rec(&run, "first").await.status, StepStatus::Succeeded);
    assert_eq!(h.started_count(&run, "call").await, 0, "not started");
    // The next invocation (no deadline here) runs it.
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    assert_eq!(h.started_count(&run, "call").await, 1);
}

/// Offloaded values are content-addressed and never change: once read, a re-plan takes them
/// from memory (here: the blob file is gone, and the value still loads).
#[tokio::test]
pub(crate) async fn offloaded_values_are_read_once() {
    let h = H::new();
    let big = json!({"text": "x".repeat(100_000)});
    let r = h.engine.store_value(big.clone()).await.unwrap();
    let ValueRef::Blob { key, .. } = &r else {
        panic!("a 100 kB value is offloaded: {r:?}")
    };
    assert_eq!(h.engine.load_value(&r).await.unwrap(), big);
    let file = h
        .backend
        .data_dir()
        .join("blobs")
        .join(&key[..2])
        .join(&key[2..]);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        h.engine.load_value(&r).await.unwrap(),
        big,
        "served from memory"
    );
    // Another engine on the same store has no such memory: the read goes to the store.
    let other = h.other_worker("w2");
    assert!(matches!(
        other.load_value(&r).await,
        Err(switchyard_core::StoreError::NotFound(_))
    ));
}

/// The run header stays small: an input or output above `header_inline_bytes` (1 KiB) is
/// kept in the blob store and the header holds its reference; small ones stay inline.
#[tokio::test]
pub(crate) async fn the_run_header_keeps_large_inputs_and_outputs_by_reference() {
    let h = H::new();
    let yaml = r#"
        name: big
        version: "1"
        steps:
          - {id: echo, kind: transform, value: "${input.text}"}
        output: {text: "${steps.echo.output}"}
    "#;
    for (len, offloaded) in [(100, false), (5_000, true)] {
        let text = "y".repeat(len);
        let (run, status) = h.run(yaml, json!({"text": text})).await;
        assert_eq!(status, RunStatus::Succeeded);
        let header = h.snap(&run).await.header;
        let is_blob = |v: &Option<ValueRef>| matches!(v, Some(ValueRef::Blob { .. }));
        assert_eq!(
            is_blob(&Some(header.input.clone())),
            offloaded,
            "input of {len}"
        );
        assert_eq!(is_blob(&header.output), offloaded, "output of {len}");
        let out = h
            .engine
            .load_value(header.output.as_ref().unwrap())
            .await
            .unwrap();
        assert_eq!(out["text"], text);
    }
}

/// A receiver that never answers 2xx: every attempt is a 503, with the headers it was sent.
#[derive(Default)]
pub(crate) struct DownReceiver {
    seen: std::sync::Mutex<Vec<Vec<(String, String)>>>,
}

#[async_trait]
impl switchyard_core::ports::CallbackSender for DownReceiver {
    async fn deliver(
        &self,
        _url: &str,
        headers: &[(String, String)],
        _body: Vec<u8>,
        _allow_private: bool,
    ) -> switchyard_core::ports::OutboundAttempt {
        self.seen.lock().unwrap().push(headers.to_vec());
        switchyard_core::ports::OutboundAttempt {
            result: switchyard_core::outbound::DeliveryResult::Status(503),
            latency_ms: 3,
            address: Some("203.0.113.7:443".into()),
        }
    }
}

/// The notifier retries a receiver that stays down with backoff (the message comes back after
/// each delay), with one `webhook-id` on every attempt, records each attempt on the run, and
/// moves the message to the notify dead letters after the last one.
#[tokio::test]
pub(crate) async fn a_receiver_that_stays_down_is_retried_then_dead_lettered() {
    use switchyard_core::outbound::{backoff_ms as notify_backoff, MAX_NOTIFY_ATTEMPTS};
    use switchyard_core::ports::QueueName;
    use switchyard_engine::pool::{Pool, PoolOptions};

    let h = H::with_config(|c| c.callback_secrets = support::secret());
    let wf =
        h.compile("name: quick\nversion: \"1\"\nsteps:\n  - {id: a, kind: transform, value: 1}\n");
    let mut req = H::request(&wf, json!({}));
    req.callback_url = Some("https://receiver.example/hook".into());
    let run = h
        .engine
        .start_workflow(support::TENANT, &wf, req, None)
        .await
        .unwrap()
        .run_id;
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);

    let clock: Arc<dyn switchyard_core::Clock> = Arc::new(h.clock.clone());
    let notify = h
        .backend
        .queue(QueueName::Notify, clock)
        .with_max_receive_count(MAX_NOTIFY_ATTEMPTS);
    let down = Arc::new(DownReceiver::default());
    let callbacks = switchyard_engine::driver::Driver::new(
        h.engine.clone(),
        Arc::new(h.queue.clone()),
        Default::default(),
    );
    let pool = Arc::new(Pool {
        engine: h.engine.clone(),
        work: Arc::new(h.queue.clone()),
        notify: Arc::new(notify.clone()),
        sender: down.clone(),
        callbacks: Arc::new(callbacks),
        kick: Arc::new(tokio::sync::Notify::new()),
        opts: PoolOptions {
            workers: 1,
            idle_ms: 2,
            ..PoolOptions::default()
        },
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(pool.run(stopped));
    // Move the engine's clock on while the pool works (its loops sleep at most 2 ms real).
    let mut steps = 0;
    while notify.dead_letters().await.unwrap().is_empty() {
        steps += 1;
        assert!(
            steps < 5_000,
            "never dead-lettered: {} attempts",
            down.seen.lock().unwrap().len()
        );
        h.clock.advance(500);
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();

    let seen = down.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), MAX_NOTIFY_ATTEMPTS as usize);
    let ids: std::collections::BTreeSet<String> = seen
        .iter()
        .map(|hs| {
            hs.iter()
                .find(|(k, _)| k == "webhook-id")
                .unwrap()
                .1
                .clone()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one webhook-id across retries: {ids:?}");
    let attempts: Vec<HistoryEvent> = h
        .events(&run)
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::NotificationAttempted)
        .collect();
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|e| e.detail["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["retry", "retry", "retry", "retry", "retry", "gave_up"]
    );
    // Each retry came after (at least) its backoff.
    for (i, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= notify_backoff(i as u32 + 1),
            "attempt {}: {gap} ms",
            i + 2
        );
    }
    assert_eq!(attempts[0].attempt, Some(1));
    let dead = notify.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].body.contains(ids.iter().next().unwrap()),
        "{:?}",
        dead[0]
    );
}

pub(crate) fn record(id: &str, body: &str, receive_count: u32) -> switchyard_engine::batch::Record {
    switchyard_engine::batch::Record {
        message_id: id.into(),
        receipt: format!("rcpt-{id}"),
        body: body.into(),
        receive_count,
    }
}

/// An SQS batch as the worker function gets it: two records of one run (a duplicate
/// delivery) are handled once, a poisoned body is reported failed (SQS dead-letters it after
/// its max receives), and the other runs go on.
#[tokio::test]
pub(crate) async fn a_work_batch_handles_each_run_once_and_reports_only_the_failed_records() {
    let h = H::new();
    let wf = h.compile(CHAIN);
    let a = h.start_wf(&wf, json!({"text": "a"})).await;
    let b = h.start_wf(&wf, json!({"text": "b"})).await;
    let wake = |run: &str, reason: &str| format!(r#"{{"run_id": "{run}", "reason": "{reason}"}}"#);
    let records = [
        record("m1", &wake(&a, "start"), 1),
        record("m2", "{not json", 1),
        record("m3", &wake(&a, "start"), 2),
        record("m4", &wake(&b, "start"), 1),
        record("m5", r#"{"run_id": "x"}"#, 1),
    ];
    let report = h.engine.handle_work_batch(&records, None, &h.queue).await;
    assert_eq!(report.failures, ["m2", "m5"]);
    let runs: Vec<&str> = report.handled.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(runs, [a.as_str(), b.as_str()], "one handle per run");
    for (_, handled) in &report.handled {
        assert_eq!(*handled, Handled::Ended(RunStatus::Succeeded));
    }
    assert_eq!(h.started_count(&a, "classify").await, 1);
}

/// A notification batch: a receiver that answers 503 gets the record back after the backoff
/// (its visibility is set, and it is reported failed); a delivered one is not reported.
#[tokio::test]
pub(crate) async fn a_notify_batch_reports_retries_and_sets_their_visibility() {
    use switchyard_core::ports::{Message, QueueName};
    let h = H::with_config(|c| c.callback_secrets = support::secret());
    let wf =
        h.compile("name: quick\nversion: \"1\"\nsteps:\n  - {id: a, kind: transform, value: 1}\n");
    let mut req = H::request(&wf, json!({}));
    req.callback_url = Some("https://receiver.example/hook".into());
    let run = h
        .engine
        .start_workflow(support::TENANT, &wf, req, None)
        .await
        .unwrap()
        .run_id;
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    let clock: Arc<dyn switchyard_core::Clock> = Arc::new(h.clock.clone());
    let notify = h.backend.queue(QueueName::Notify, clock);
    let got = notify.receive(10, 30_000).await.unwrap();
    assert_eq!(got.len(), 1, "the end notification was queued");
    let Message::Notify(n) = &got[0].message else {
        panic!()
    };
    let body = Message::Notify(n.clone()).to_body().unwrap();
    let records = [
        switchyard_engine::batch::Record {
            message_id: got[0].id.clone(),
            receipt: got[0].receipt.clone(),
            body,
            receive_count: got[0].receive_count,
        },
        record("junk", "[]", 1),
    ];
    let down = DownReceiver::default();
    let report = h
        .engine
        .notifier()
        .handle_batch(&records, &notify, &down)
        .await;
    let mut failed = report.failures.clone();
    failed.sort();
    assert_eq!(failed, [got[0].id.clone(), "junk".to_string()]);
    // Hidden for the first backoff (1 s), then back.
    assert!(notify.receive(10, 30_000).await.unwrap().is_empty());
    h.clock.advance(1_000);
    assert_eq!(notify.receive(10, 30_000).await.unwrap().len(), 1);
}
