//! Output: a step table for people, one JSON document with `--json`.

use serde_json::{json, Value};
use switchyard_core::state::{HistoryEvent, Usage};
use switchyard_engine::view::RunView;

pub fn run_json(v: &RunView) -> Value {
    let steps: Vec<Value> = v.steps.iter().map(|s| {
        let mut doc = json!({
            "name": s.name, "kind": s.kind, "status": s.status, "provider": s.provider, "model": s.model,
            "prompt_version": s.prompt_version, "attempts": s.attempts, "latency_ms": s.latency_ms,
            "cost_usd": s.cost_usd, "usage": s.usage, "fallback_used": s.fallback_used, "error_class": s.error_class,
            "error": s.error, "sources": s.sources,
        });
        // Cost-aware choice, only on the steps that made one (the fields README.md#the-cli
        // lists stay as they were for every other step).
        if let Some(obj) = doc.as_object_mut() {
            if !s.escalations.is_empty() {
                obj.insert("escalations".into(), json!(s.escalations));
            }
            if let Some(b) = s.baseline_usd {
                obj.insert("baseline_usd".into(), json!(b));
                obj.insert("saving_usd".into(), json!(s.saving_usd));
            }
            if let Some(r) = &s.selected_because {
                obj.insert("selected_because".into(), json!(r));
            }
            if let Some(r) = &s.reused_from {
                obj.insert("reused_from".into(), json!(r));
            }
        }
        doc
    }).collect();
    let mut doc = json!({
        "run_id": v.run_id, "workflow": v.workflow, "version": v.version, "definition_hash": v.definition_hash,
        "status": v.status, "output": v.output,
        "error": v.error.as_ref().map(|e| json!({"class": e.class, "message": e.message, "step": e.step})),
        "cost_usd": v.cost_usd, "usage": v.usage, "waiting_for": v.waiting_for, "steps": steps,
        "notifications": v.notifications,
    });
    if let Some(obj) = doc.as_object_mut() {
        if let Some(r) = &v.rerun_of {
            obj.insert("rerun_of".into(), json!(r));
        }
        if !v.reruns.is_empty() {
            obj.insert("reruns".into(), json!(v.reruns));
        }
    }
    doc
}

/// How a step chose its model, under the table: each escalation of a cascade with its
/// reason, the saving against always using the top tier, and a selection's reason.
fn choice_lines(s: &switchyard_engine::view::StepView) -> String {
    let mut out = String::new();
    for e in &s.escalations {
        out.push_str(&format!(
            "{}: escalated {} -> {}: {} (paid {})\n",
            s.name,
            e.from,
            e.to,
            e.reason,
            money(e.cost_usd)
        ));
    }
    if let (Some(b), Some(saved)) = (s.baseline_usd, s.saving_usd) {
        out.push_str(&format!(
            "{}: answered by {}; always using the top tier would have cost {}: {}\n",
            s.name,
            s.model.as_deref().unwrap_or("-"),
            money(b),
            if saved >= 0.0 {
                format!("saved {}", money(saved))
            } else {
                format!("cost {} more", money(-saved))
            }
        ));
    }
    if let Some(r) = &s.selected_because {
        out.push_str(&format!(
            "{}: selected {} because {r}\n",
            s.name,
            s.model.as_deref().unwrap_or("-")
        ));
    }
    out
}

fn money(x: f64) -> String {
    format!("${x:.6}")
}

/// `812 in / 96 out`, then the cache and reasoning parts that are not 0:
/// `(1920 cache read, 1400 cache write, 192 reasoning)`.
fn tokens(u: &Usage) -> String {
    let parts: Vec<String> = [
        (u.cache_read_tokens, "cache read"),
        (u.cache_write_tokens, "cache write"),
        (u.reasoning_tokens, "reasoning"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    let detail = if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    };
    format!("{} in / {} out{detail}", u.input_tokens, u.output_tokens)
}

/// A table cell: `in/out`, or `-` for a step that made no call that reported tokens.
fn tokens_cell(u: Option<&Usage>) -> String {
    u.map_or_else(
        || "-".into(),
        |u| format!("{}/{}", u.input_tokens, u.output_tokens),
    )
}

pub fn run_table(v: &RunView) -> String {
    let mut out = format!(
        "run {}  workflow {} v{}  status {}  cost {}  tokens {}\n",
        v.run_id,
        v.workflow,
        v.version,
        v.status.as_str().to_uppercase(),
        money(v.cost_usd),
        tokens(&v.usage)
    );
    if let Some(r) = &v.rerun_of {
        out.push_str(&format!("rerun of {} from `{}`\n", r.run_id, r.from));
    }
    if !v.reruns.is_empty() {
        out.push_str(&format!("rerun as {}\n", v.reruns.join(", ")));
    }
    let rows: Vec<[String; 8]> = v
        .steps
        .iter()
        .map(|s| {
            let mut model = s.model.clone().unwrap_or_else(|| "-".into());
            if s.fallback_used {
                model.push_str(" (fallback)");
            }
            let status = match (&s.error_class, &s.reused_from) {
                (Some(c), _) => format!("{} ({c})", s.status.as_str()),
                (None, Some(_)) => format!("{} (reused)", s.status.as_str()),
                (None, None) => s.status.as_str().to_string(),
            };
            [
                s.name.clone(),
                s.kind.clone(),
                status,
                model,
                s.attempts.to_string(),
                format!("{}ms", s.latency_ms),
                money(s.cost_usd),
                tokens_cell(s.usage.as_ref()),
            ]
        })
        .collect();
    let head = [
        "STEP", "KIND", "STATUS", "MODEL", "ATTEMPTS", "LATENCY", "COST", "TOKENS",
    ]
    .map(String::from);
    let mut widths = [0usize; 8];
    for r in std::iter::once(&head).chain(rows.iter()) {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    for r in std::iter::once(&head).chain(rows.iter()) {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for s in &v.steps {
        out.push_str(&choice_lines(s));
    }
    if let Some(e) = &v.error {
        out.push_str(&format!(
            "error: {} ({}){}\n",
            e.message,
            e.class,
            e.step
                .as_ref()
                .map(|s| format!(" at step `{s}`"))
                .unwrap_or_default()
        ));
    }
    if let Some(w) = &v.waiting_for {
        let until = w["until"].as_u64().map(|ms| {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
            format!(" (until {})", humantime::format_rfc3339_seconds(t))
        });
        out.push_str(&format!(
            "waiting for: {}{}\n",
            w["reason"].as_str().unwrap_or("?"),
            until.unwrap_or_default()
        ));
    }
    if !v.output.is_null() {
        out.push_str("output:\n");
        out.push_str(&serde_json::to_string_pretty(&v.output).unwrap_or_default());
        out.push('\n');
    }
    if !v.notifications.is_empty() {
        out.push_str("notifications:\n");
        for n in &v.notifications {
            let answer = match (n.status, &n.error) {
                (Some(s), _) => format!("HTTP {s}"),
                (None, Some(e)) => e.clone(),
                (None, None) => "-".into(),
            };
            out.push_str(&format!(
                "  {:<26} #{} {:<10} {:>5} ms  {:<9} {}\n",
                n.event, n.attempt, answer, n.latency_ms, n.outcome, n.webhook_id
            ));
        }
    }
    out
}

pub fn events_table(events: &[HistoryEvent]) -> String {
    let start = events.first().map_or(0, |e| e.at);
    let mut out = String::from("history:\n");
    for e in events {
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let step = e
            .step
            .as_ref()
            .map(|s| format!(" {s}#{}", e.attempt.unwrap_or(0)))
            .unwrap_or_default();
        let detail = if e.detail.is_null() {
            String::new()
        } else {
            format!(" {}", e.detail)
        };
        out.push_str(&format!(
            "  +{:>6}ms  {kind}{step}{detail}\n",
            e.at.saturating_sub(start)
        ));
    }
    out
}

/// `1 run`, `2 runs`.
fn runs(n: u64) -> String {
    format!("{n} run{}", if n == 1 { "" } else { "s" })
}

/// A fraction as a percentage with one decimal; `-` for none.
fn pct(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0))
}

fn when(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `saving $X (Y% of $Z always-top-model)`.
fn saving_line(s: &switchyard_engine::stats::Saving) -> String {
    let share = s
        .saving_pct
        .map(|p| format!("{p:.1}% of "))
        .unwrap_or_default();
    format!(
        "saving {} ({share}{} always-top-model)",
        money(s.saving_usd),
        money(s.baseline_usd)
    )
}

fn counts(map: &std::collections::BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows padded to their columns' widths, two spaces apart, each line indented.
fn aligned(indent: &str, rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            let w = c.chars().count();
            match widths.get_mut(i) {
                Some(x) => *x = (*x).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(indent);
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `switchyard stats`: a summary line, then per workflow its outcomes and a step table.
/// Stats keep tokens by kind (`input`, `cache_read`, …: `Usage::counts`); back into a `Usage`
/// for the same rendering as a run's.
fn usage_of(kinds: &std::collections::BTreeMap<String, u64>) -> Usage {
    let n = |k: &str| kinds.get(k).copied().unwrap_or(0);
    Usage {
        cache_read_tokens: n("cache_read"),
        cache_write_tokens: n("cache_write"),
        reasoning_tokens: n("reasoning"),
        ..Usage::new(n("input"), n("output"))
    }
}

pub fn stats_table(s: &switchyard_engine::stats::Stats) -> String {
    let scope = match &s.tenant {
        Some(t) => format!("tenant {t}"),
        None => "all tenants".into(),
    };
    let mut out = format!(
        "runs created in the last {} ({} to {}), {scope}{}: {}, cost {}, tokens {}\n",
        s.window.since,
        when(s.window.from),
        when(s.window.to),
        s.workflow
            .as_ref()
            .map(|w| format!(", workflow {w}"))
            .unwrap_or_default(),
        runs(s.runs),
        money(s.cost_usd),
        tokens(&s.workflows.iter().map(|w| usage_of(&w.tokens)).sum())
    );
    if s.truncated {
        out.push_str(
            "(more runs are in flight than one answer reads: some waiting runs may be counted as running)\n",
        );
    }
    if let Some(c) = &s.cascade {
        out.push_str(&format!("cascades: {}\n", saving_line(c)));
    }
    for w in &s.workflows {
        out.push('\n');
        out.push_str(&format!(
            "{}: {}: {} succeeded, {} failed, {} cancelled, {} waiting, {} running\n",
            w.workflow,
            runs(w.runs),
            w.succeeded,
            w.failed,
            w.cancelled,
            w.waiting,
            w.running
        ));
        let classes = if w.failures_by_class.is_empty() {
            String::new()
        } else {
            format!(" ({})", counts(&w.failures_by_class))
        };
        out.push_str(&format!(
            "  success {}  failure {}{classes}\n",
            pct(w.success_rate),
            pct(w.failure_rate)
        ));
        let latency = w.latency_ms.map_or_else(
            || "latency -".to_string(),
            |l| format!("latency p50 {}ms  p95 {}ms  p99 {}ms", l.p50, l.p95, l.p99),
        );
        out.push_str(&format!(
            "  {latency}  cost {} (mean {} a run)\n",
            money(w.cost_usd),
            money(w.mean_cost_usd)
        ));
        out.push_str(&format!("  tokens {}\n", tokens(&usage_of(&w.tokens))));
        if let Some(c) = &w.cascade {
            out.push_str(&format!("  cascade: {}\n", saving_line(c)));
        }
        let mut rows = vec![[
            "STEP",
            "KIND",
            "EXECUTIONS",
            "SUCCESS",
            "FAILURES",
            "P50",
            "P95",
            "P99",
            "COST",
            "TOKENS",
            "RETRIED",
            "FALLBACK",
            "VALIDATION-FAILED",
            "ESCALATED",
        ]
        .map(String::from)
        .to_vec()];
        for st in &w.steps {
            let (p50, p95, p99) = st.latency_ms.map_or_else(
                || ("-".to_string(), "-".to_string(), "-".to_string()),
                |l| {
                    (
                        format!("{}ms", l.p50),
                        format!("{}ms", l.p95),
                        format!("{}ms", l.p99),
                    )
                },
            );
            rows.push(vec![
                st.step.clone(),
                st.kind.clone(),
                st.executions.to_string(),
                pct(st.success_rate),
                counts(&st.failures_by_class),
                p50,
                p95,
                p99,
                money(st.cost_usd),
                tokens_cell(Some(&usage_of(&st.tokens))),
                pct(Some(st.retry_rate)),
                pct(Some(st.fallback_rate)),
                pct(st.validation_failure_rate),
                pct(st.escalation_rate),
            ]);
        }
        out.push_str(&aligned("  ", &rows));
        for st in &w.steps {
            let u = &usage_of(&st.tokens);
            if u.cache_read_tokens + u.cache_write_tokens + u.reasoning_tokens > 0 {
                out.push_str(&format!("  {}: tokens {}\n", st.step, tokens(u)));
            }
            if st.answered_by.len() > 1 || st.escalation_rate.is_some() || st.cascade.is_some() {
                out.push_str(&format!(
                    "  {}: answered by {}",
                    st.step,
                    counts(&st.answered_by)
                ));
                if let Some(c) = &st.cascade {
                    out.push_str(&format!("; {}", saving_line(c)));
                }
                out.push('\n');
            }
        }
    }
    if s.workflows.is_empty() {
        out.push_str("no runs in this window\n");
    }
    if let Some(by) = s.by {
        out.push_str(&variants_table(by.as_str(), &s.variants));
    }
    out
}

/// `--by model|prompt_version`: each step's variants side by side.
fn variants_table(by: &str, variants: &[switchyard_engine::stats::VariantStats]) -> String {
    let mut out = format!("\nby {by}:\n");
    if variants.is_empty() {
        out.push_str(&format!("  no step of these runs has a {by}\n"));
        return out;
    }
    let mut rows = vec![[
        "WORKFLOW",
        "STEP",
        &by.to_uppercase(),
        "EXECUTIONS",
        "SUCCESS",
        "VALIDATION-FAILED",
        "JUDGE",
        "P95",
        "TOKENS-IN",
        "TOKENS-OUT",
        "COST",
        "MEAN-COST",
    ]
    .map(String::from)
    .to_vec()];
    for v in variants {
        let tokens = |k: &str| v.tokens.get(k).map_or("0".to_string(), u64::to_string);
        rows.push(vec![
            v.workflow.clone(),
            v.step.clone(),
            v.variant.clone(),
            v.executions.to_string(),
            pct(v.success_rate),
            pct(v.validation_failure_rate),
            v.judge_score
                .map_or_else(|| "-".to_string(), |j| format!("{j:.2}")),
            v.latency_ms
                .map_or_else(|| "-".to_string(), |l| format!("{}ms", l.p95)),
            tokens("input"),
            tokens("output"),
            money(v.cost_usd),
            money(v.mean_cost_usd),
        ]);
    }
    out.push_str(&aligned("  ", &rows));
    out
}

/// `dlq list`: one line per dead letter (the `{"dead_letters": [...]}` document).
pub fn dead_letters_table(doc: &Value) -> String {
    let rows = doc["dead_letters"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return "no dead letters\n".to_string();
    }
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut out = format!(
        "{:<38} {:<6} {:<28} {:<10} {:<18} {:<12} {:>8}  {:<20}  {}\n",
        "ID",
        "QUEUE",
        "RUN",
        "TENANT",
        "WORKFLOW",
        "STEP",
        "RECEIVES",
        "FAILED AT",
        "MESSAGE: REASON"
    );
    for d in &rows {
        out.push_str(&format!(
            "{:<38} {:<6} {:<28} {:<10} {:<18} {:<12} {:>8}  {:<20}  {}: {}\n",
            s(&d["id"]),
            s(&d["queue"]),
            s(&d["run_id"]),
            s(&d["tenant"]),
            s(&d["workflow"]),
            s(&d["step"]),
            d["receive_count"].as_u64().unwrap_or(0),
            when(d["failed_at"].as_u64().unwrap_or(0)),
            s(&d["message"]),
            s(&d["reason"]),
        ));
    }
    out.push_str(&format!("{} dead letter(s)\n", rows.len()));
    out
}

/// `dlq show`: one dead letter, field by field, and its raw body.
pub fn dead_letter_detail(d: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut out = String::new();
    for (label, v) in [
        ("id", s(&d["id"])),
        ("queue", s(&d["queue"])),
        ("message", s(&d["message"])),
        ("reason", s(&d["reason"])),
        (
            "receives",
            d["receive_count"].as_u64().unwrap_or(0).to_string(),
        ),
        ("failed at", when(d["failed_at"].as_u64().unwrap_or(0))),
        ("run", s(&d["run_id"])),
        ("tenant", s(&d["tenant"])),
        ("workflow", s(&d["workflow"])),
        ("run status", s(&d["run_status"])),
        ("step", s(&d["step"])),
    ] {
        out.push_str(&format!("{label:<11} {v}\n"));
    }
    out.push_str(&format!("body:\n  {}\n", s(&d["body"])));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use switchyard_core::state::{RunStatus, StepStatus, Usage};
    use switchyard_core::ErrorClass;
    use switchyard_engine::stats::{aggregate, RunFacts, StepFacts, Window};

    fn answer(cost: f64, baseline: f64, escalations: usize, model: &str) -> StepFacts {
        StepFacts {
            attempts: 1 + escalations as u32,
            latency_ms: 120,
            cost_usd: cost,
            model: Some(model.into()),
            escalations,
            baseline_usd: Some(baseline),
            usage: Usage {
                cache_read_tokens: 64,
                ..Usage::new(100, 10)
            },
            ..StepFacts::bare("answer", "model", StepStatus::Succeeded)
        }
    }

    fn run(status: RunStatus, steps: Vec<StepFacts>) -> RunFacts {
        RunFacts {
            tenant: "t".into(),
            workflow: "triage".into(),
            status,
            error_class: (status == RunStatus::Failed).then_some(ErrorClass::Transient),
            created_at: 1_000,
            ended_at: Some(1_250),
            cost_usd: steps.iter().map(|s| s.cost_usd).sum(),
            steps,
        }
    }

    fn step_view(name: &str, usage: Option<Usage>) -> switchyard_engine::view::StepView {
        switchyard_engine::view::StepView {
            name: name.into(),
            kind: if usage.is_some() {
                "model"
            } else {
                "transform"
            }
            .into(),
            status: StepStatus::Succeeded,
            provider: None,
            model: usage.map(|_| "openai/o4-mini".to_string()),
            prompt_version: None,
            attempts: 1,
            latency_ms: 5,
            cost_usd: 0.001,
            usage,
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

    /// `runs show`: a TOKENS column (`in/out`, `-` for a step without a call) and the run's
    /// tokens, with the cached and reasoning parts, on the first line; `--json` has `usage`
    /// per step and per run.
    #[test]
    fn run_table_and_json_show_tokens() {
        let cached = Usage {
            cache_read_tokens: 1920,
            reasoning_tokens: 192,
            ..Usage::new(2006, 300)
        };
        let v = switchyard_engine::view::RunView {
            run_id: "run_1".into(),
            workflow: "wf".into(),
            version: "1".into(),
            definition_hash: "h".into(),
            status: RunStatus::Succeeded,
            output: serde_json::Value::Null,
            error: None,
            cost_usd: 0.002,
            usage: cached + Usage::new(10, 2),
            created_at: 0,
            ended_at: Some(1),
            waiting_for: None,
            steps: vec![
                step_view("draft", Some(cached)),
                step_view("tidy", Some(Usage::new(10, 2))),
                step_view("shape", None),
            ],
            notifications: vec![],
            rerun_of: None,
            reruns: vec![],
        };
        let text = super::run_table(&v);
        assert!(
            text.lines()
                .next()
                .unwrap()
                .ends_with("tokens 2016 in / 302 out (1920 cache read, 192 reasoning)"),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        let at = lines[1].find("TOKENS").unwrap();
        for (line, cell) in [(2, "2006/300"), (3, "10/2"), (4, "-")] {
            assert_eq!(&lines[line][at..], cell, "{text}");
        }
        let doc = super::run_json(&v);
        assert_eq!(doc["usage"]["input_tokens"], 2016);
        assert_eq!(doc["steps"][0]["usage"]["cache_read_tokens"], 1920);
        assert_eq!(doc["steps"][2]["usage"], serde_json::Value::Null);
    }

    /// The table: a cascade line per workflow and per cascade step, failure classes, and
    /// every row's columns starting where the header's do.
    #[test]
    fn stats_table_shows_cascade_saving_and_aligns_columns() {
        let runs = vec![
            run(
                RunStatus::Succeeded,
                vec![answer(0.001, 0.01, 0, "local/small")],
            ),
            run(
                RunStatus::Succeeded,
                vec![answer(0.001, 0.01, 0, "local/small")],
            ),
            run(
                RunStatus::Failed,
                vec![answer(0.012, 0.01, 1, "local/large-model-name")],
            ),
        ];
        let window = Window {
            since: "24h".into(),
            from: 0,
            to: 86_400_000,
        };
        let text = super::stats_table(&aggregate(window, None, None, runs, false));
        for want in [
            "all tenants: 3 runs, cost $0.014000, tokens 300 in / 30 out (192 cache read)",
            "  tokens 300 in / 30 out (192 cache read)",
            "answer: tokens 300 in / 30 out (192 cache read)",
            "triage: 3 runs: 2 succeeded, 1 failed, 0 cancelled, 0 waiting, 0 running",
            "success 66.7%  failure 33.3% (transient 1)",
            // 250 ms read from its histogram bin [248, 255]: its midpoint.
            "latency p50 251ms  p95 251ms  p99 251ms",
            "cascades: saving $0.016000 (53.3% of $0.030000 always-top-model)",
            "  cascade: saving $0.016000 (53.3% of $0.030000 always-top-model)",
            "answer: answered by local/large-model-name 1, local/small 2; saving $0.016000 (53.3% of $0.030000 always-top-model)",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let lines: Vec<&str> = text.lines().collect();
        let h = lines
            .iter()
            .position(|l| l.trim_start().starts_with("STEP"))
            .unwrap();
        let (header, row) = (lines[h], lines[h + 1]);
        assert!(row.trim_start().starts_with("answer"), "{row}");
        assert!(row.contains("  300/30  "), "{row}");
        for col in [
            "KIND",
            "EXECUTIONS",
            "SUCCESS",
            "P50",
            "COST",
            "TOKENS",
            "ESCALATED",
        ] {
            let at = header.find(col).unwrap();
            let b = row.as_bytes();
            assert!(
                b[at - 1] == b' ' && b[at] != b' ',
                "{col} is not aligned:\n{header}\n{row}"
            );
        }
        assert!(row.ends_with("33.3%"), "escalated 1 of 3: {row}");
    }
}
