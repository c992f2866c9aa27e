//! Output: a step table for people, one JSON document with `--json`.

use serde_json::{json, Value};
use switchyard_core::state::HistoryEvent;
use switchyard_engine::view::RunView;

pub fn run_json(v: &RunView) -> Value {
    let steps: Vec<Value> = v.steps.iter().map(|s| json!({
        "name": s.name, "kind": s.kind, "status": s.status, "provider": s.provider, "model": s.model,
        "prompt_version": s.prompt_version, "attempts": s.attempts, "latency_ms": s.latency_ms,
        "cost_usd": s.cost_usd, "fallback_used": s.fallback_used, "error_class": s.error_class,
        "error": s.error, "sources": s.sources,
    })).collect();
    json!({
        "run_id": v.run_id, "workflow": v.workflow, "version": v.version, "definition_hash": v.definition_hash,
        "status": v.status, "output": v.output,
        "error": v.error.as_ref().map(|e| json!({"class": e.class, "message": e.message, "step": e.step})),
        "cost_usd": v.cost_usd, "waiting_for": v.waiting_for, "steps": steps,
        "notifications": v.notifications,
    })
}

fn money(x: f64) -> String {
    format!("${x:.6}")
}

pub fn run_table(v: &RunView) -> String {
    let mut out = format!(
        "run {}  workflow {} v{}  status {}  cost {}\n",
        v.run_id,
        v.workflow,
        v.version,
        v.status.as_str().to_uppercase(),
        money(v.cost_usd)
    );
    let rows: Vec<[String; 7]> = v
        .steps
        .iter()
        .map(|s| {
            let mut model = s.model.clone().unwrap_or_else(|| "-".into());
            if s.fallback_used {
                model.push_str(" (fallback)");
            }
            let status = match &s.error_class {
                Some(c) => format!("{} ({c})", s.status.as_str()),
                None => s.status.as_str().to_string(),
            };
            [
                s.name.clone(),
                s.kind.clone(),
                status,
                model,
                s.attempts.to_string(),
                format!("{}ms", s.latency_ms),
                money(s.cost_usd),
            ]
        })
        .collect();
    let head = [
        "STEP", "KIND", "STATUS", "MODEL", "ATTEMPTS", "LATENCY", "COST",
    ]
    .map(String::from);
    let mut widths = [0usize; 7];
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
