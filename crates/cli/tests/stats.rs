//! `switchyard stats` as a user runs it: example workflows run on a temp data dir, then the
//! figures of `stats --json` are checked against what the runs' own documents and histories
//! say (`run --json`, `runs show --json`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn switchyard(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .env_remove("SWITCHYARD_DATA_DIR")
        .env_remove("SWITCHYARD_LOCAL_FAULTS")
        .env_remove("SWITCHYARD_DURABILITY")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

/// Stdout as exactly one JSON document (trailing text fails the parse).
fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs `workflows/NAME.yaml` on its example input; returns the run document.
fn run_example(name: &str, dir: &Path) -> Value {
    let wf = root().join("workflows").join(format!("{name}.yaml"));
    let input = root().join("events/inputs").join(format!("{name}.json"));
    let out = switchyard(
        &[
            "run",
            wf.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--json",
        ],
        dir,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&out)
}

fn stats(args: &[&str], dir: &Path) -> Value {
    let mut all = vec!["stats", "--json"];
    all.extend_from_slice(args);
    let out = switchyard(&all, dir);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&out)
}

fn workflow<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["workflow"] == name)
        .unwrap_or_else(|| panic!("no {name} in {doc}"))
}

fn step<'a>(w: &'a Value, name: &str) -> &'a Value {
    w["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {w}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-8
}

/// Steps that ran (`skipped` and `pending` ones are not executions).
fn ran(doc: &Value) -> Vec<&Value> {
    doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] != "skipped" && s["status"] != "pending")
        .collect()
}

#[test]
fn stats_json_adds_up_the_runs_of_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    // resilient-summary retries and falls back on purpose; product-copy's validate step
    // sends its draft back for repair.
    let summaries = [
        run_example("resilient-summary", dir.path()),
        run_example("resilient-summary", dir.path()),
    ];
    let copy = run_example("product-copy", dir.path());

    let doc = stats(&[], dir.path());
    assert_eq!(doc["runs"], 3);
    assert_eq!(
        doc["tenant"],
        Value::Null,
        "the local CLI counts every tenant"
    );
    assert_eq!(doc["truncated"], false);
    assert_eq!(doc["window"]["since"], "24h");
    let names: Vec<&str> = doc["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["workflow"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["product-copy", "resilient-summary"]);
    let total: f64 = summaries
        .iter()
        .chain([&copy])
        .map(|d| d["cost_usd"].as_f64().unwrap())
        .sum();
    assert!(close(doc["cost_usd"].as_f64().unwrap(), total), "{doc}");

    // resilient-summary: two runs, both succeeded; each step's figures follow from the two
    // run documents.
    let w = workflow(&doc, "resilient-summary");
    for (field, want) in [("runs", 2), ("succeeded", 2), ("failed", 0), ("ended", 2)] {
        assert_eq!(w[field], want, "{field}: {w}");
    }
    assert_eq!(w["success_rate"], 1.0);
    assert_eq!(w["failures_by_class"], serde_json::json!({}));
    let latency = &w["latency_ms"];
    assert_eq!(latency["count"], 2);
    assert!(latency["p50"].as_u64().unwrap() <= latency["p99"].as_u64().unwrap());
    let run_cost: f64 = summaries
        .iter()
        .map(|d| d["cost_usd"].as_f64().unwrap())
        .sum();
    assert!(close(w["cost_usd"].as_f64().unwrap(), run_cost), "{w}");
    let first = &summaries[0];
    assert_eq!(
        w["steps"].as_array().unwrap().len(),
        ran(first).len(),
        "{w}"
    );
    let mut saw_fallback = false;
    for s in ran(first) {
        let name = s["name"].as_str().unwrap();
        let st = step(w, name);
        let both: Vec<&Value> = summaries
            .iter()
            .map(|d| {
                d["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|x| x["name"] == name)
                    .unwrap()
            })
            .collect();
        let share = |f: &dyn Fn(&Value) -> bool| {
            both.iter().filter(|x| f(x)).count() as f64 / both.len() as f64
        };
        assert_eq!(st["executions"], 2, "{name}");
        assert_eq!(st["kind"], s["kind"], "{name}");
        assert_eq!(
            st["retry_rate"].as_f64().unwrap(),
            share(&|x| x["attempts"].as_u64().unwrap() > 1),
            "{name}"
        );
        assert_eq!(
            st["fallback_rate"].as_f64().unwrap(),
            share(&|x| x["fallback_used"] == true),
            "{name}"
        );
        saw_fallback |= s["fallback_used"] == true;
        let cost: f64 = both.iter().map(|x| x["cost_usd"].as_f64().unwrap()).sum();
        assert!(close(st["cost_usd"].as_f64().unwrap(), cost), "{name}");
        let mut latencies: Vec<u64> = both
            .iter()
            .map(|x| x["latency_ms"].as_u64().unwrap())
            .collect();
        latencies.sort_unstable();
        // Nearest rank of two values: p50 is the smaller, p95 and p99 the larger — read from
        // the latency histogram, so within 1/32 of them (exact below 32 ms).
        let near = |got: &Value, exact: u64| {
            let got = got.as_u64().unwrap();
            got.abs_diff(exact) as f64 <= exact as f64 / 32.0
        };
        let l = &st["latency_ms"];
        assert!(
            near(&l["p50"], latencies[0])
                && near(&l["p95"], latencies[1])
                && near(&l["p99"], latencies[1]),
            "{name}: {l} of {latencies:?}"
        );
        if let Some(model) = s["model"].as_str() {
            assert_eq!(st["answered_by"], serde_json::json!({ model: 2 }), "{name}");
        }
        assert_eq!(st["validation_failure_rate"], Value::Null, "{name}");
    }
    assert!(
        saw_fallback,
        "resilient-summary falls back on purpose: {first}"
    );

    // product-copy: a validate step's validation-failure rate is 1 exactly when the run's
    // history shows it requesting a repair (or it failed).
    let run_id = copy["run_id"].as_str().unwrap();
    let shown = switchyard(&["runs", "show", run_id, "--json"], dir.path());
    let events = json(&shown)["events"].as_array().cloned().unwrap();
    let w = workflow(&doc, "product-copy");
    let mut validates = 0;
    for s in ran(&copy) {
        let name = s["name"].as_str().unwrap();
        let st = step(w, name);
        assert_eq!(st["executions"], 1, "{name}");
        if s["kind"] != "validate" {
            assert_eq!(st["validation_failure_rate"], Value::Null, "{name}");
            continue;
        }
        validates += 1;
        let repaired = events
            .iter()
            .any(|e| e["kind"] == "step_repair_requested" && e["step"] == name);
        let want = if repaired || s["status"] == "failed" {
            1.0
        } else {
            0.0
        };
        assert_eq!(st["validation_failure_rate"], want, "{name}: {st}");
    }
    assert!(validates > 0, "product-copy has a validate step: {copy}");
    assert!(
        events.iter().any(|e| e["kind"] == "step_repair_requested"),
        "product-copy repairs its draft on purpose"
    );

    // --workflow filters; a window shorter than the time since the runs holds none.
    let only = stats(&["--workflow", "product-copy"], dir.path());
    assert_eq!(
        (&only["runs"], &only["workflow"]),
        (&serde_json::json!(1), &serde_json::json!("product-copy"))
    );
    // Figures are kept per UTC hour: a window starts on the hour its `since` falls in, and
    // counts that hour whole — so a 10 ms window holds the runs created since the hour began.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let recent = stats(&["--since", "10ms"], dir.path());
    let from = recent["window"]["from"].as_u64().unwrap();
    let to = recent["window"]["to"].as_u64().unwrap();
    assert_eq!(from % 3_600_000, 0, "{recent}");
    assert_eq!(from, (to - 10) - (to - 10) % 3_600_000, "{recent}");
    let listed = json(&switchyard(&["runs", "list", "--json"], dir.path()));
    let in_hour = listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["created_at"].as_u64().unwrap() >= from)
        .count();
    assert_eq!(recent["runs"], in_hour, "{recent}");
    let week = stats(&["--since", "7d"], dir.path());
    assert_eq!(
        (&week["runs"], &week["window"]["since"]),
        (&serde_json::json!(3), &serde_json::json!("7d"))
    );

    // The table for people: one block per workflow, a step table with aligned columns.
    let out = switchyard(&["stats"], dir.path());
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 runs"), "{text}");
    assert!(
        text.contains("resilient-summary: 2 runs: 2 succeeded"),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    let block = lines
        .iter()
        .position(|l| l.starts_with("resilient-summary: "))
        .unwrap();
    let h = block
        + lines[block..]
            .iter()
            .position(|l| l.trim_start().starts_with("STEP"))
            .unwrap_or_else(|| panic!("no step table: {text}"));
    let header = lines[h];
    for col in [
        "P50",
        "P95",
        "P99",
        "RETRIED",
        "FALLBACK",
        "VALIDATION-FAILED",
    ] {
        assert!(header.contains(col), "{header}");
    }
    // The rows under the header start each column where the header's name starts.
    let rows = &lines[h + 1..h + 1 + ran(first).len()];
    let starts: Vec<usize> = ["KIND", "EXECUTIONS", "SUCCESS", "FAILURES"]
        .iter()
        .map(|c| header.find(c).unwrap())
        .collect();
    for row in rows {
        for &at in &starts {
            let b = row.as_bytes();
            assert!(
                b[at - 1] == b' ' && b[at] != b' ',
                "columns are aligned:\n{header}\n{row}"
            );
        }
    }
}

#[test]
fn bad_flags_are_usage_errors_and_an_empty_dir_has_no_runs() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["stats", "--since", "soon"][..],
        &["stats", "--since", "0s"][..],
        &["stats", "--workflow", "a/b"][..],
    ] {
        let out = switchyard(args, dir.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: --"), "{args:?}: {err}");
    }
    let doc = stats(&[], dir.path());
    assert_eq!(
        (&doc["runs"], &doc["workflows"]),
        (&serde_json::json!(0), &serde_json::json!([]))
    );
    let out = switchyard(&["stats"], dir.path());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no runs in this window"));
}

/// Cascade figures against the run documents: the escalation rate, who answered, and the
/// baseline, cost and saving summed over the executions that carry a baseline.
#[test]
fn stats_sum_the_cascade_saving_of_the_run_documents() {
    let dir = tempfile::tempdir().unwrap();
    let wf = root().join("workflows/classifier-cascade.yaml");
    let mut docs = Vec::new();
    for input in [
        "classifier-cascade",
        "classifier-cascade-unclear",
        "classifier-cascade",
    ] {
        let input = root().join("events/inputs").join(format!("{input}.json"));
        let out = switchyard(
            &[
                "run",
                wf.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--json",
            ],
            dir.path(),
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        docs.push(json(&out));
    }
    let name = docs[0]["workflow"].as_str().unwrap().to_string();
    let doc = stats(&[], dir.path());
    let w = workflow(&doc, &name);
    let mut cascades = 0;
    let (mut all_baseline, mut all_cost) = (0.0, 0.0);
    for s in ran(&docs[0]) {
        let step_name = s["name"].as_str().unwrap();
        let runs: Vec<&Value> = docs
            .iter()
            .map(|d| {
                d["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|x| x["name"] == step_name)
                    .unwrap()
            })
            .collect();
        let st = step(w, step_name);
        let priced: Vec<&&Value> = runs
            .iter()
            .filter(|x| x["baseline_usd"].is_number())
            .collect();
        if priced.is_empty() {
            assert_eq!(st["cascade"], Value::Null, "{step_name}: {st}");
            continue;
        }
        cascades += 1;
        let escalated = runs
            .iter()
            .filter(|x| x["escalations"].as_array().is_some_and(|e| !e.is_empty()))
            .count();
        assert_eq!(
            st["escalation_rate"].as_f64().unwrap(),
            ((escalated as f64 / runs.len() as f64) * 1e4).round() / 1e4,
            "{step_name}"
        );
        let mut answered = serde_json::Map::new();
        for x in &runs {
            let m = x["model"].as_str().unwrap().to_string();
            let n = answered.get(&m).and_then(Value::as_u64).unwrap_or(0);
            answered.insert(m, (n + 1).into());
        }
        assert_eq!(st["answered_by"], Value::Object(answered), "{step_name}");
        let baseline: f64 = priced
            .iter()
            .map(|x| x["baseline_usd"].as_f64().unwrap())
            .sum();
        let cost: f64 = priced.iter().map(|x| x["cost_usd"].as_f64().unwrap()).sum();
        let saving: f64 = priced
            .iter()
            .map(|x| x["saving_usd"].as_f64().unwrap())
            .sum();
        let c = &st["cascade"];
        assert_eq!(c["executions"], priced.len(), "{step_name}");
        assert!(close(c["baseline_usd"].as_f64().unwrap(), baseline), "{c}");
        assert!(close(c["cost_usd"].as_f64().unwrap(), cost), "{c}");
        assert!(close(c["saving_usd"].as_f64().unwrap(), saving), "{c}");
        let pct = c["saving_pct"].as_f64().unwrap();
        assert!((pct - saving / baseline * 100.0).abs() < 0.01, "{c}");
        all_baseline += baseline;
        all_cost += cost;
    }
    assert!(
        cascades > 0,
        "classifier-cascade has a cascade step: {}",
        docs[0]
    );
    // The workflow's and the document's totals are the steps' together.
    for total in [&w["cascade"], &doc["cascade"]] {
        assert!(
            close(total["baseline_usd"].as_f64().unwrap(), all_baseline),
            "{total}"
        );
        assert!(
            close(total["cost_usd"].as_f64().unwrap(), all_cost),
            "{total}"
        );
        assert!(
            close(
                total["saving_usd"].as_f64().unwrap(),
                all_baseline - all_cost
            ),
            "{total}"
        );
    }
    // And the table says it in words.
    let out = switchyard(&["stats"], dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cascade: saving $") && text.contains("always-top-model)"),
        "{text}"
    );
}

/// `--by model` and `--by prompt_version`: each step's figures per model and per prompt
/// version equal a hand count over the run documents (executions, successes, cost);
/// a `--by` of anything else is a usage error.
#[test]
fn stats_by_model_and_prompt_version_add_up_the_run_documents() {
    let dir = tempfile::tempdir().unwrap();
    let mut docs = vec![
        run_example("resilient-summary", dir.path()),
        run_example("product-copy", dir.path()),
        run_example("resilient-summary", dir.path()),
    ];
    docs.push(run_example("support-triage", dir.path()));
    for (by, field) in [("model", "model"), ("prompt_version", "prompt_version")] {
        let doc = stats(&["--by", by], dir.path());
        assert_eq!(doc["by"], by);
        // The hand count: (workflow, step, variant) → (executions, succeeded, cost).
        let mut want: std::collections::BTreeMap<(String, String, String), (u64, u64, f64)> =
            Default::default();
        for d in &docs {
            for s in ran(d) {
                let Some(variant) = s[field].as_str() else {
                    continue;
                };
                let e = want
                    .entry((
                        d["workflow"].as_str().unwrap().to_string(),
                        s["name"].as_str().unwrap().to_string(),
                        variant.to_string(),
                    ))
                    .or_default();
                e.0 += 1;
                e.1 += u64::from(s["status"] == "succeeded");
                e.2 += s["cost_usd"].as_f64().unwrap();
            }
        }
        let variants = doc["variants"].as_array().unwrap();
        assert_eq!(variants.len(), want.len(), "{by}: {doc}");
        assert!(!want.is_empty(), "{by}: the examples have some");
        for v in variants {
            let key = (
                v["workflow"].as_str().unwrap().to_string(),
                v["step"].as_str().unwrap().to_string(),
                v["variant"].as_str().unwrap().to_string(),
            );
            let (n, ok, cost) = want
                .get(&key)
                .unwrap_or_else(|| panic!("{by}: {key:?} not in the runs"));
            assert_eq!(v["executions"], *n, "{key:?}");
            assert_eq!(v["succeeded"], *ok, "{key:?}");
            assert!(
                close(v["cost_usd"].as_f64().unwrap(), *cost),
                "{key:?}: {v}"
            );
        }
        let out = switchyard(&["stats", "--by", by], dir.path());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("by {by}:")), "{text}");
    }
    // product-copy's draft is checked by a judge: its prompt version carries the verdict.
    let doc = stats(
        &["--by", "prompt_version", "--workflow", "product-copy"],
        dir.path(),
    );
    let draft = doc["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["step"] == "draft")
        .unwrap_or_else(|| panic!("{doc}"));
    assert!(draft["validations"].as_u64().unwrap() >= 1, "{draft}");
    assert!(draft["judge_score"].is_number(), "{draft}");
    let out = switchyard(&["stats", "--by", "workflow"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: --by"));
}
