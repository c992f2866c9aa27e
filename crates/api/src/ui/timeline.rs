//! The run page's waterfall: each step's attempts as bars on one time axis (the run's
//! start to its end, or to now while it goes on), with why each attempt ended the way it did.
//!
//! Derived, never stored: from the run document ([`RunView`]: steps in definition order,
//! their model, tokens, cost), the step records' start and finish times, and the history
//! events. Model calls open an attempt with `step_started`; every other kind of step has no
//! start event, so its bar starts at its record's `started_at` (or where its previous bar
//! ended). An attempt ends at the event that settles it: succeeded, failed, retry scheduled,
//! fallback, cascade escalation, approval decided, or a lost lease.
//!
//! Geometry is in SVG user units: the axis is [`WIDTH`] wide, and templates draw the bars
//! with `x`/`width` attributes (the CSP forbids inline styles).

use serde::Serialize;
use serde_json::Value;
use switchyard_core::state::{EventKind, HistoryEvent, RunSnapshot};
use switchyard_engine::view::RunView;

/// The axis width in SVG user units.
pub const WIDTH: f64 = 1000.0;
/// The narrowest bar drawn: an instant step stays visible.
pub const MIN_BAR: f64 = 3.0;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    /// The axis spans this many milliseconds from the run's creation.
    pub total_ms: u64,
    pub ticks: Vec<Tick>,
    pub steps: Vec<Lane>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tick {
    pub x: f64,
    pub label: String,
}

/// One step's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lane {
    pub name: String,
    pub kind: String,
    pub status: String,
    pub model: Option<String>,
    pub prompt_version: Option<String>,
    pub attempts: u32,
    pub latency_ms: u64,
    pub cost_usd: f64,
    /// `120 in / 35 out`, when the step's calls reported tokens.
    pub tokens: Option<String>,
    /// A rerun reused this step's result from that run (not called again here).
    pub reused_from: Option<String>,
    pub bars: Vec<Bar>,
    /// Why, oldest first: retries and their error class, fallbacks, escalations, judge
    /// verdicts, skips, decisions.
    pub why: Vec<String>,
}

/// One attempt (or wait) of a step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bar {
    pub x: f64,
    pub width: f64,
    /// `succeeded`, `failed`, `retry`, `fallback`, `escalated`, `lost`, `skipped`,
    /// `approved`, `rejected`, `waiting`, `running`: the bar's CSS class.
    pub outcome: String,
    pub attempt: Option<u32>,
    pub model: Option<String>,
    pub prompt_version: Option<String>,
    /// Offset of its start from the run's creation, ms.
    pub start_ms: u64,
    pub duration_ms: u64,
    /// The tooltip: `attempt 2 · local/gen · 120 ms · retry`.
    pub title: String,
}

/// `1234` → `1.2 s`; `85` → `85 ms`; `125000` → `2m 05s`.
pub fn fmt_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn opt(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// An attempt that has started and not ended yet.
struct Open {
    start: u64,
    attempt: Option<u32>,
    model: Option<String>,
    prompt_version: Option<String>,
}

/// Why an event matters, in a sentence; `None` for events that say nothing a person needs.
fn why(e: &HistoryEvent) -> Option<String> {
    let d = &e.detail;
    let at = e
        .attempt
        .map(|a| format!("attempt {a}: "))
        .unwrap_or_default();
    Some(match e.kind {
        EventKind::StepRetryScheduled => format!(
            "{at}{} on {} — retry in {}: {}",
            s(&d["class"]),
            d["model"].as_str().unwrap_or("this step"),
            fmt_ms(d["delay_ms"].as_u64().unwrap_or(0)),
            s(&d["message"])
        ),
        EventKind::StepFallback => format!(
            "{at}fallback {} → {} after {}: {}",
            s(&d["from"]),
            s(&d["to"]),
            s(&d["class"]),
            s(&d["message"])
        ),
        EventKind::StepEscalated => format!(
            "{at}cascade escalation {} → {}: {}",
            s(&d["from"]),
            s(&d["to"]),
            s(&d["reason"])
        ),
        EventKind::StepJudged => {
            let v = &d["verdict"];
            let reasons: Vec<String> = v["reasons"]
                .as_array()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default();
            format!(
                "{at}judge {}, score {}{}",
                if d["pass"].as_bool() == Some(true) {
                    "passed"
                } else {
                    "failed"
                },
                s(&v["score"]),
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(": {}", reasons.join("; "))
                }
            )
        }
        EventKind::StepSkipped => format!("skipped: {}", s(&d["reason"])),
        EventKind::StepRepairRequested => {
            let mut m = format!("{at}repair requested");
            if let Some(t) = d["target"].as_str() {
                m.push_str(&format!(" of `{t}`"));
            }
            if let Some(to) = d["escalated_to"].as_str() {
                m.push_str(&format!(", escalated to {to}"));
            }
            m
        }
        EventKind::ApprovalDecided => {
            let verdict = if d["approved"].as_bool() == Some(true) {
                "approved"
            } else {
                "rejected"
            };
            match d["comment"].as_str() {
                Some(c) => format!("{verdict}: {c}"),
                None => verdict.to_string(),
            }
        }
        EventKind::StepFailed => format!("{at}failed: {}: {}", s(&d["class"]), s(&d["message"])),
        EventKind::StepLeaseExpired => format!("{at}attempt lost: its worker stopped"),
        EventKind::StepWaiting => format!("waiting for {}", s(&d["for"])),
        _ => return None,
    })
}

/// The outcome an event settles an attempt with, if it settles one.
fn settles(e: &HistoryEvent) -> Option<&'static str> {
    Some(match e.kind {
        EventKind::StepSucceeded => "succeeded",
        EventKind::StepFailed => "failed",
        EventKind::StepRetryScheduled => "retry",
        EventKind::StepFallback => "fallback",
        EventKind::StepEscalated => "escalated",
        EventKind::StepLeaseExpired => "lost",
        EventKind::ApprovalDecided if e.detail["approved"].as_bool() == Some(true) => "approved",
        EventKind::ApprovalDecided => "rejected",
        _ => return None,
    })
}

/// The waterfall of a run at `now`.
pub fn build(view: &RunView, snap: &RunSnapshot, events: &[HistoryEvent], now: u64) -> Timeline {
    let t0 = view.created_at;
    let last_event = events.iter().map(|e| e.at).max().unwrap_or(t0);
    let end = view.ended_at.unwrap_or(now).max(last_event).max(t0);
    let total = (end - t0).max(1);
    let x_of = |t: u64| (t.saturating_sub(t0)) as f64 * WIDTH / total as f64;
    let bar = |start: u64, stop: u64, outcome: &str, o: &Open| {
        let stop = stop.max(start);
        let x = x_of(start).min(WIDTH - MIN_BAR);
        let width = (x_of(stop) - x).max(MIN_BAR);
        let mut title = Vec::new();
        if let Some(a) = o.attempt {
            title.push(format!("attempt {a}"));
        }
        if let Some(m) = &o.model {
            title.push(m.clone());
        }
        title.push(fmt_ms(stop - start));
        title.push(outcome.to_string());
        Bar {
            x: (x * 10.0).round() / 10.0,
            width: (width * 10.0).round() / 10.0,
            outcome: outcome.to_string(),
            attempt: o.attempt,
            model: o.model.clone(),
            prompt_version: o.prompt_version.clone(),
            start_ms: start.saturating_sub(t0),
            duration_ms: stop - start,
            title: title.join(" · "),
        }
    };
    let steps = view
        .steps
        .iter()
        .map(|sv| {
            let rec = snap.step(&sv.name);
            let mut bars = Vec::new();
            let mut why_list = Vec::new();
            if let Some(reason) = &sv.selected_because {
                why_list.push(format!("model selected: {reason}"));
            }
            let mut open: Option<Open> = None;
            // Where a step without start events begins its next bar.
            let mut cursor = rec.and_then(|r| r.started_at);
            for e in events
                .iter()
                .filter(|e| e.step.as_deref() == Some(&sv.name))
            {
                if let Some(w) = why(e) {
                    why_list.push(w);
                }
                match e.kind {
                    EventKind::StepStarted => {
                        if let Some(o) = open.take() {
                            bars.push(bar(o.start, e.at, "lost", &o));
                        }
                        open = Some(Open {
                            start: e.at,
                            attempt: e.attempt,
                            model: opt(&e.detail["model"]),
                            prompt_version: opt(&e.detail["prompt_version"]),
                        });
                    }
                    // An approval gate (or a job's wait) is one bar from when it opened.
                    EventKind::StepWaiting if open.is_none() => {
                        open = Some(Open {
                            start: cursor.unwrap_or(e.at).min(e.at),
                            attempt: e.attempt,
                            model: None,
                            prompt_version: None,
                        });
                    }
                    EventKind::StepSkipped => {
                        let o = Open {
                            start: e.at,
                            attempt: None,
                            model: None,
                            prompt_version: None,
                        };
                        bars.push(bar(e.at, e.at, "skipped", &o));
                    }
                    _ => {
                        if let Some(outcome) = settles(e) {
                            let o = open.take().unwrap_or(Open {
                                start: cursor.unwrap_or(e.at).min(e.at),
                                attempt: e.attempt,
                                model: opt(&e.detail["model"]).or_else(|| opt(&e.detail["from"])),
                                prompt_version: None,
                            });
                            bars.push(bar(o.start, e.at, outcome, &o));
                            cursor = Some(e.at);
                        }
                    }
                }
            }
            if let Some(o) = open.take() {
                let outcome = if sv.status.as_str() == "waiting" {
                    "waiting"
                } else {
                    "running"
                };
                bars.push(bar(o.start, end, outcome, &o));
            }
            if bars.is_empty() {
                // A step that started without any event yet (its first checkpoint is on
                // its way).
                if let Some(start) = rec.and_then(|r| r.started_at) {
                    let stop = rec.and_then(|r| r.finished_at).unwrap_or(end);
                    let o = Open {
                        start,
                        attempt: None,
                        model: sv.model.clone(),
                        prompt_version: sv.prompt_version.clone(),
                    };
                    bars.push(bar(start, stop, sv.status.as_str(), &o));
                }
            }
            Lane {
                name: sv.name.clone(),
                kind: sv.kind.clone(),
                status: sv.status.as_str().to_string(),
                model: sv.model.clone(),
                prompt_version: sv.prompt_version.clone(),
                attempts: sv.attempts,
                latency_ms: sv.latency_ms,
                cost_usd: sv.cost_usd,
                tokens: sv
                    .usage
                    .map(|u| format!("{} in / {} out", u.input_tokens, u.output_tokens)),
                reused_from: sv.reused_from.clone(),
                bars,
                why: why_list,
            }
        })
        .collect();
    Timeline {
        total_ms: total,
        ticks: (0u32..=4)
            .map(|i| Tick {
                x: WIDTH * f64::from(i) / 4.0,
                label: fmt_ms(total * u64::from(i) / 4),
            })
            .collect(),
        steps,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use serde_json::json;
    use switchyard_core::state::{
        RunHeader, RunStatus, StepRecord, StepStatus, Usage, ValueRef, WorkflowPin,
    };
    use switchyard_engine::view::StepView;

    fn step_view(name: &str, kind: &str, status: StepStatus) -> StepView {
        StepView {
            name: name.into(),
            kind: kind.into(),
            status,
            provider: None,
            model: None,
            prompt_version: None,
            attempts: 1,
            latency_ms: 0,
            cost_usd: 0.0,
            usage: None,
            fallback_used: false,
            error_class: None,
            error: None,
            sources: vec![],
            provider_request_id: None,
            escalations: vec![],
            baseline_usd: None,
            saving_usd: None,
            selected_because: None,
            reused_from: None,
        }
    }

    fn header() -> RunHeader {
        RunHeader {
            run_id: "r".into(),
            tenant: "t".into(),
            workflow: WorkflowPin {
                name: "wf".into(),
                version: "1".into(),
                hash: "h".into(),
            },
            status: RunStatus::Succeeded,
            input: ValueRef::Inline { value: json!({}) },
            output: None,
            error: None,
            created_at: 1_000,
            updated_at: 2_000,
            ended_at: Some(2_000),
            deadline_at: None,
            wait: None,
            cancel_requested: false,
            lease: None,
            callback_url: None,
            metadata: Value::Null,
            traceparent: None,
            rerun_of: None,
            reruns: vec![],
            version: 1,
        }
    }

    fn ev(at: u64, kind: EventKind, step: &str, attempt: u32, detail: Value) -> HistoryEvent {
        HistoryEvent::step(at, kind, step, attempt, detail)
    }

    fn view(steps: Vec<StepView>) -> RunView {
        RunView {
            run_id: "r".into(),
            workflow: "wf".into(),
            version: "1".into(),
            definition_hash: "h".into(),
            status: RunStatus::Succeeded,
            output: Value::Null,
            error: None,
            cost_usd: 0.0,
            usage: Usage::default(),
            created_at: 1_000,
            ended_at: Some(2_000),
            waiting_for: None,
            steps,
            notifications: vec![],
            rerun_of: None,
            reruns: vec![],
        }
    }

    #[test]
    fn a_retried_then_fallen_back_model_step_and_a_transform() {
        let mut gen = step_view("gen", "model", StepStatus::Succeeded);
        gen.usage = Some(Usage {
            input_tokens: 12,
            output_tokens: 3,
            ..Usage::default()
        });
        let shape = step_view("shape", "transform", StepStatus::Succeeded);
        let skipped = step_view("other", "model", StepStatus::Skipped);
        let mut shape_rec = StepRecord::pending("shape");
        shape_rec.started_at = Some(1_900);
        let snap = RunSnapshot {
            header: header(),
            steps: vec![shape_rec],
        };
        let events = vec![
            ev(
                1_000,
                EventKind::StepStarted,
                "gen",
                1,
                json!({"model": "m/a", "prompt_version": "v1"}),
            ),
            ev(
                1_100,
                EventKind::StepRetryScheduled,
                "gen",
                1,
                json!({"class": "transient", "message": "503", "delay_ms": 200, "model": "m/a"}),
            ),
            ev(
                1_300,
                EventKind::StepStarted,
                "gen",
                2,
                json!({"model": "m/a"}),
            ),
            ev(
                1_400,
                EventKind::StepFallback,
                "gen",
                2,
                json!({"class": "timeout", "message": "slow", "from": "m/a", "to": "m/b"}),
            ),
            ev(
                1_400,
                EventKind::StepStarted,
                "gen",
                3,
                json!({"model": "m/b"}),
            ),
            ev(
                1_800,
                EventKind::StepSucceeded,
                "gen",
                3,
                json!({"model": "m/b"}),
            ),
            ev(
                1_850,
                EventKind::StepSkipped,
                "other",
                0,
                json!({"reason": "route chose gen"}),
            ),
            ev(2_000, EventKind::StepSucceeded, "shape", 1, Value::Null),
        ];
        let t = build(&view(vec![gen, skipped, shape]), &snap, &events, 5_000);
        assert_eq!(t.total_ms, 1_000);
        let gen = &t.steps[0];
        // (outcome, x, width, attempt, model)
        type Seen<'a> = (&'a str, f64, f64, Option<u32>, Option<&'a str>);
        let got: Vec<Seen> = gen
            .bars
            .iter()
            .map(|b| {
                (
                    b.outcome.as_str(),
                    b.x,
                    b.width,
                    b.attempt,
                    b.model.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("retry", 0.0, 100.0, Some(1), Some("m/a")),
                ("fallback", 300.0, 100.0, Some(2), Some("m/a")),
                ("succeeded", 400.0, 400.0, Some(3), Some("m/b")),
            ]
        );
        assert_eq!(gen.bars[0].prompt_version.as_deref(), Some("v1"));
        assert_eq!(gen.tokens.as_deref(), Some("12 in / 3 out"));
        assert_eq!(gen.why.len(), 2);
        assert!(gen.why[0].contains("transient on m/a"), "{:?}", gen.why);
        assert!(
            gen.why[1].contains("fallback m/a → m/b after timeout"),
            "{:?}",
            gen.why
        );
        // A skipped step: a minimal mark and its reason.
        let other = &t.steps[1];
        assert_eq!(
            (other.bars[0].outcome.as_str(), other.bars[0].width),
            ("skipped", MIN_BAR)
        );
        assert_eq!(other.why, ["skipped: route chose gen"]);
        // A transform has no start event: its record's start.
        let shape = &t.steps[2];
        assert_eq!((shape.bars[0].x, shape.bars[0].width), (900.0, 100.0));
        assert_eq!(t.ticks.last().map(|t| t.label.as_str()), Some("1.0 s"));
    }

    #[test]
    fn a_waiting_gate_runs_to_now_and_a_decided_one_ends_at_the_decision() {
        let gate = step_view("review", "approval", StepStatus::Waiting);
        let mut h = header();
        h.status = RunStatus::Waiting;
        h.ended_at = None;
        let mut v = view(vec![gate]);
        v.ended_at = None;
        let snap = RunSnapshot {
            header: h,
            steps: vec![],
        };
        let waiting = vec![ev(
            1_000,
            EventKind::StepWaiting,
            "review",
            1,
            json!({"for": "approval"}),
        )];
        let t = build(&v, &snap, &waiting, 3_000);
        let b = &t.steps[0].bars[0];
        assert_eq!((b.outcome.as_str(), b.x, b.width), ("waiting", 0.0, 1000.0));
        assert_eq!(t.steps[0].why, ["waiting for approval"]);

        let mut decided = waiting.clone();
        decided.push(ev(
            2_000,
            EventKind::ApprovalDecided,
            "review",
            1,
            json!({"approved": false, "comment": "<b>no</b>"}),
        ));
        let t = build(&v, &snap, &decided, 3_000);
        let b = &t.steps[0].bars[0];
        assert_eq!((b.outcome.as_str(), b.x, b.width), ("rejected", 0.0, 500.0));
        // Kept as text: the template escapes it.
        assert_eq!(t.steps[0].why[1], "rejected: <b>no</b>");
    }

    #[test]
    fn durations_read_like_a_person_would_write_them() {
        for (ms, want) in [
            (0, "0 ms"),
            (999, "999 ms"),
            (1_260, "1.3 s"),
            (125_000, "2m 05s"),
        ] {
            assert_eq!(fmt_ms(ms), want);
        }
    }
}
