//! 4-5. Retries and backoff

use super::*;

pub(crate) fn retry_wf(fault: &str, retry: &str) -> String {
    format!(
        r#"
        name: retry
        version: "1"
        steps:
          - id: gen
            model: local/template-generator
            input: {{text: "${{input.text}}"}}
            timeout: 2s
            retry: {retry}
            params:
              template: "{{% if feedback %}}repaired{{% else %}}first{{% endif %}}"
              fault: {fault}
        "#
    )
}

#[tokio::test(start_paused = true)]
pub(crate) async fn transient_failures_retry_on_the_backoff_policy() {
    let no_jitter = "{max_attempts: 3, initial_backoff: 1s, multiplier: 3, jitter: false}";
    // (fault, retry policy, status, attempts, delays, final class, final text)
    type Case = (
        &'static str,
        &'static str,
        RunStatus,
        u32,
        Vec<u64>,
        Option<ErrorClass>,
        &'static str,
    );
    let table: Vec<Case> = vec![
        (
            "{kind: transient, times: 2}",
            no_jitter,
            RunStatus::Succeeded,
            3,
            vec![1000, 3000],
            None,
            "first",
        ),
        (
            // The fault sleeps past the step timeout; the engine's timer ends the attempt.
            "{kind: timeout, times: 1}",
            "{max_attempts: 2, initial_backoff: 250ms, jitter: false}",
            RunStatus::Succeeded,
            2,
            vec![250],
            None,
            "first",
        ),
        (
            // A malformed answer is re-asked with what was wrong with it.
            "{kind: malformed, times: 1}",
            no_jitter,
            RunStatus::Succeeded,
            2,
            vec![1000],
            None,
            "repaired",
        ),
        (
            "{kind: transient, times: 5}",
            no_jitter,
            RunStatus::Failed,
            3,
            vec![1000, 3000],
            Some(ErrorClass::Transient),
            "",
        ),
        (
            "{kind: invalid, times: 5}",
            no_jitter,
            RunStatus::Failed,
            1,
            vec![],
            Some(ErrorClass::Invalid),
            "",
        ),
    ];
    for (fault, retry, status, attempts, delays, class, text) in table {
        let h = H::new();
        let (run, got) = h.run(&retry_wf(fault, retry), json!({"text": "x"})).await;
        assert_eq!(got, status, "{fault}");
        let r = h.rec(&run, "gen").await;
        assert_eq!(r.attempt, attempts, "{fault}");
        assert_eq!(h.started_count(&run, "gen").await, attempts as usize);
        assert_eq!(retry_delays(&h, &run, "gen").await, delays, "{fault}");
        // The manual clock only moves to the next wake-up: attempts are exactly a delay apart.
        let starts = start_times(&h, &run, "gen").await;
        let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, delays, "{fault}");
        assert_eq!(run_class(&h.snap(&run).await), class, "{fault}");
        if status == RunStatus::Succeeded {
            assert_eq!(h.output(&run, "gen").await["text"], text, "{fault}");
        }
    }
}

/// With `wait_in_invocation_ms`, a backoff that short is waited for in the handling of the
/// wake-up that failed (no timer through the queue, no second lease take); a longer one
/// still goes through the queue. Attempts, delays and history are the same either way.
#[tokio::test]
pub(crate) async fn a_short_backoff_is_waited_for_in_the_invocation() {
    let policy = "{max_attempts: 3, initial_backoff: 100ms, multiplier: 2, jitter: false}";
    // (limit ms, wake-ups handled, timers sent)
    for (limit, handled, timers) in [(300, 1, 0), (150, 2, 1), (0, 3, 2)] {
        let h = H::with_config(|c| c.wait_in_invocation_ms = limit);
        let fault = "{kind: transient, times: 2}";
        let (run, got) = h.run(&retry_wf(fault, policy), json!({"text": "x"})).await;
        assert_eq!(got, RunStatus::Succeeded, "limit {limit}");
        assert_eq!(h.rec(&run, "gen").await.attempt, 3);
        assert_eq!(retry_delays(&h, &run, "gen").await, [100, 200]);
        let starts = start_times(&h, &run, "gen").await;
        let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, [100, 200], "limit {limit}");
        let wakes = h.handled(&run);
        assert_eq!(wakes.len(), handled, "limit {limit}: {wakes:?}");
        let sent = wakes
            .iter()
            .filter(|(_, w, _)| w.reason == WakeReason::Timer)
            .count();
        assert_eq!(sent, timers, "limit {limit}: {wakes:?}");
    }
}

#[tokio::test]
pub(crate) async fn jittered_backoff_is_deterministic_per_run_and_step() {
    let h = H::new();
    let yaml = retry_wf(
        "{kind: transient, times: 3}",
        "{max_attempts: 4, initial_backoff: 1s, max_backoff: 3s, jitter: true}",
    );
    let wf = h.compile(&yaml);
    let run = h.start_wf(&wf, json!({"text": "x"})).await;
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    let StepKind::Model(ms) = &wf.step("gen").unwrap().kind else {
        panic!("gen is a model step")
    };
    let want: Vec<u64> = (1..=3)
        .map(|n| backoff_ms(&ms.retry, n, &format!("{run}/gen")))
        .collect();
    let got = retry_delays(&h, &run, "gen").await;
    assert_eq!(got, want);
    // Equal jitter: each delay lies in [backoff/2, backoff] of 1 s, 2 s, 3 s (capped).
    for (d, full) in got.iter().zip([1000u64, 2000, 3000]) {
        assert!(
            *d >= full / 2 && *d <= full,
            "{d} not in [{}, {full}]",
            full / 2
        );
    }
    let starts = start_times(&h, &run, "gen").await;
    let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, want);
}

#[tokio::test]
pub(crate) async fn rate_limit_retry_after_is_honoured_without_sleeping() {
    let h = H::new();
    let yaml = retry_wf(
        "{kind: rate_limited, times: 1, retry_after_ms: 5000}",
        "{max_attempts: 3, initial_backoff: 100ms, jitter: false}",
    );
    let run = h.start(&yaml, json!({"text": "x"})).await;
    assert_eq!(
        h.step().await,
        [Handled::Waiting {
            reason: WaitReason::Timer,
            until: Some(T0 + 5000)
        }]
    );
    let r = h.rec(&run, "gen").await;
    assert_eq!(
        (r.status, r.next_at),
        (StepStatus::Retrying, Some(T0 + 5000))
    );
    assert_eq!(
        r.error.as_ref().map(|e| e.class),
        Some(ErrorClass::RateLimited)
    );
    // The next wake-up is not before 5 s later (not the 100 ms backoff).
    assert_eq!(h.queue.next_visible_at().await.unwrap(), Some(T0 + 5000));
    assert_eq!(retry_delays(&h, &run, "gen").await, [5000]);
    // 4.9 s in, nothing is due.
    h.clock.set(T0 + 4900);
    assert!(h.step().await.is_empty());
    assert_eq!(h.drive(&run).await, RunStatus::Succeeded);
    assert_eq!(start_times(&h, &run, "gen").await, [T0, T0 + 5000]);
    assert_eq!(h.now(), T0 + 5000);
}

#[tokio::test(start_paused = true)]
pub(crate) async fn slow_model_times_out_within_the_step_timeout() {
    // Latency matters here, so tokio's clock is paused: the 5 s provider delay is virtual.
    // (slowness, step status, attempts, run class)
    let table = [
        (500, StepStatus::Succeeded, 1, None),
        (5000, StepStatus::Failed, 2, Some(ErrorClass::Timeout)),
    ];
    for (delay, status, attempts, class) in table {
        let h = H::new();
        let yaml = format!(
            r#"
            name: slow
            version: "1"
            steps:
              - id: gen
                model: local/echo
                input: "hi"
                timeout: 1s
                retry: {{max_attempts: 2, initial_backoff: 10ms, jitter: false}}
                params: {{delay_ms: {delay}}}
            "#
        );
        let (run, _) = h.run(&yaml, json!({})).await;
        let r = h.rec(&run, "gen").await;
        assert_eq!((r.status, r.attempt), (status, attempts), "delay {delay}");
        assert_eq!(run_class(&h.snap(&run).await), class, "delay {delay}");
        if let Some(e) = &r.error {
            assert!(e.message.contains("step timeout"), "{}", e.message);
        }
    }
}
