//! End-to-end tests: the `switchyard` binary as a user runs it, on the embedded backend.
//!
//! These tests drive a real process, so they wait for it; the waits poll the process's
//! persisted state, never a fixed sleep standing in for "long enough".

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    c.env_remove("SWITCHYARD_DATA_DIR")
        .env_remove("SWITCHYARD_LOCAL_FAULTS")
        .env_remove("SWITCHYARD_DURABILITY");
    c
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

fn run(args: &[&str], dir: &Path) -> Output {
    bin()
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

/// `switchyard run WORKFLOW --input INPUT --json` on the data dir `dir`.
fn run_json(workflow: &Path, input: &Path, dir: &Path) -> Output {
    run(
        &[
            "run",
            workflow.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--json",
        ],
        dir,
    )
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn events(dir: &Path, run_id: &str) -> Vec<Value> {
    let out = run(&["runs", "show", run_id, "--json"], dir);
    json(&out)["events"].as_array().cloned().unwrap_or_default()
}

fn count(events: &[Value], kind: &str, step: &str) -> usize {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["step"] == step)
        .count()
}

/// Polls until `f` is true or the limit passes.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn killed_mid_run_then_resumed_runs_no_finished_step_again() {
    let dir = tempfile::tempdir().unwrap();
    // The chain with a long third step: the kill lands mid-run however slowly this machine
    // notices that `b` has finished (it looks through two `switchyard` processes per check;
    // under load that took longer than the 800 ms the chain's last two steps take).
    let wf_dir = tempfile::tempdir().unwrap();
    let third = "input: {n: 3, prev: \"${steps.b.output.json.n}\"}\n    params: {delay_ms: 400}";
    let chain = std::fs::read_to_string(fixture("slow-chain.yaml")).unwrap();
    assert!(chain.contains(third), "{chain}");
    let wf = wf_dir.path().join("slow-chain.yaml");
    std::fs::write(&wf, chain.replace(third, &third.replace("400", "5000"))).unwrap();
    let mut child = bin()
        .args(["run"])
        .arg(&wf)
        .arg("--input")
        .arg(fixture("text.json"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--json")
        .env("SWITCHYARD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("run.stderr")).unwrap())
        .spawn()
        .unwrap();
    // Wait until step b has finished, then kill the process while the run is mid-way.
    let mut run_id = String::new();
    let reached = wait_until(Duration::from_secs(60), || {
        let list = run(&["runs", "list", "--json"], dir.path());
        let Some(id) = serde_json::from_slice::<Value>(&list.stdout)
            .ok()
            .and_then(|v| v["runs"][0]["run_id"].as_str().map(String::from))
        else {
            return false;
        };
        run_id = id;
        let show = json(&run(&["runs", "show", &run_id, "--json"], dir.path()));
        show["steps"][1]["status"] == "succeeded"
    });
    if !reached {
        let status = child.try_wait().ok().flatten();
        let _ = child.kill();
        panic!(
            "the run did not reach step b; the process {}; its stderr: {}",
            status.map_or("was still running".to_string(), |s| format!(
                "exited with {s}"
            )),
            std::fs::read_to_string(dir.path().join("run.stderr")).unwrap_or_default()
        );
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let before = json(&run(&["runs", "show", &run_id, "--json"], dir.path()));
    assert_eq!(before["status"], "running", "the kill must land mid-run");
    let steps = before["steps"].as_array().unwrap();
    let finished: Vec<String> = steps
        .iter()
        .filter(|s| s["status"] == "succeeded")
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    let in_flight: Vec<String> = steps
        .iter()
        .filter(|s| s["status"] == "running")
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert!(finished.len() >= 2 && finished.len() < 4, "{finished:?}");

    let out = run(&["resume", &run_id, "--json"], dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = json(&out);
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["output"]["last"]["n"], 4);
    let ev = events(dir.path(), &run_id);
    for step in &finished {
        assert_eq!(
            count(&ev, "step_started", step),
            1,
            "finished step {step} ran again"
        );
    }
    for step in ["a", "b", "c", "d"] {
        assert_eq!(
            count(&ev, "step_succeeded", step),
            1,
            "step {step} succeeded once"
        );
    }
    // An attempt in flight when the process died is retried as a new attempt.
    for step in &in_flight {
        assert_eq!(count(&ev, "step_started", step), 2, "{step}");
        assert!(ev.iter().any(|e| e["kind"] == "lease_taken_over"));
    }
}

#[test]
fn approval_gate_waits_then_approve_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["run"])
        .arg(fixture("gate.yaml"))
        .arg("--input")
        .arg(fixture("title.json"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "waiting exits 3");
    let doc = json(&out);
    assert_eq!(doc["status"], "waiting");
    let run_id = doc["run_id"].as_str().unwrap().to_string();
    // Rejecting a step that is not an approval gate is a usage error, and changes nothing.
    let bad = run(&["approve", &run_id, "nope"], dir.path());
    assert_eq!(bad.status.code(), Some(2));
    let out = run(
        &[
            "approve",
            &run_id,
            "review",
            "--comment",
            "ship it",
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
    let doc = json(&out);
    assert_eq!(doc["output"]["decision"]["approved"], true);
    assert_eq!(doc["output"]["decision"]["comment"], "ship it");
    // Deciding again is refused: the run has ended.
    assert_eq!(
        run(&["approve", &run_id, "review"], dir.path())
            .status
            .code(),
        Some(2)
    );
    // Cancelling an ended run exits 1.
    assert_eq!(run(&["cancel", &run_id], dir.path()).status.code(), Some(1));
}

#[test]
fn reject_fails_and_cancel_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let start = |d: &Path| -> String {
        let out = bin()
            .args(["run"])
            .arg(fixture("gate.yaml"))
            .arg("--input")
            .arg(fixture("title.json"))
            .arg("--data-dir")
            .arg(d)
            .arg("--json")
            .output()
            .unwrap();
        json(&out)["run_id"].as_str().unwrap().to_string()
    };
    let a = start(dir.path());
    let out = run(&["approve", &a, "review", "--reject", "--json"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["error"]["class"], "rejected");
    let b = start(dir.path());
    let out = run(&["cancel", &b, "--json"], dir.path());
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(json(&out)["status"], "cancelled");
    let list = json(&run(&["runs", "list", "--json"], dir.path()));
    assert_eq!(list["runs"].as_array().unwrap().len(), 2);
}

#[test]
fn validate_reports_every_problem_with_a_position() {
    let out = bin()
        .arg("validate")
        .arg(fixture("broken.yaml"))
        .arg(fixture("gate.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let broken: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("broken.yaml:"))
        .collect();
    assert!(
        broken
            .iter()
            .any(|l| l.contains(":5:12: unknown model `local/nope`")),
        "{text}"
    );
    assert!(
        broken
            .iter()
            .any(|l| l.contains(":9:5: unknown field `colour`")),
        "{text}"
    );
    assert!(
        broken
            .iter()
            .any(|l| l.contains(":8:12: `steps.zzz.output` names step `zzz`")),
        "{text}"
    );
    assert!(text.contains("gate.yaml: ok"), "{text}");
    assert_eq!(
        bin()
            .arg("validate")
            .arg(fixture("gate.yaml"))
            .output()
            .unwrap()
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        bin().arg("validate").output().unwrap().status.code(),
        Some(2)
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gate = fixture("gate.yaml");
    let gate = gate.to_str().unwrap();
    // A missing input file.
    let out = run(
        &["run", gate, "--input", "/nonexistent/input.json"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read input file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Input that fails the input schema names the field.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"title": ""}"#).unwrap();
    let out = run(&["run", gate, "--input", bad.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("input.title"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Input that is not JSON.
    std::fs::write(&bad, "{title: nope").unwrap();
    let out = run(&["run", gate, "--input", bad.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
    // A durability setting that does not exist names the choices.
    let good = dir.path().join("good.json");
    std::fs::write(&good, r#"{"title": "t"}"#).unwrap();
    let out = bin()
        .args(["run", gate, "--input", good.to_str().unwrap(), "--data-dir"])
        .arg(dir.path())
        .env("SWITCHYARD_DURABILITY", "paranoid")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`normal` or `full`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing was stored by any of them.
    let list = json(&run(&["runs", "list", "--json"], dir.path()));
    assert_eq!(list["runs"].as_array().unwrap().len(), 0);
    // An unknown run.
    assert_eq!(
        run(&["resume", "run_nope"], dir.path()).status.code(),
        Some(1)
    );
}

#[test]
fn corrupt_data_dir_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("switchyard.sqlite");
    std::fs::write(&db, b"this is not a database").unwrap();
    let out = run(&["runs", "list"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("switchyard.sqlite"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(std::fs::read(&db).unwrap(), b"this is not a database");
}

#[test]
fn every_example_workflow_validates_and_runs() {
    let wf_dir = root().join("workflows");
    let mut names: Vec<String> = std::fs::read_dir(&wf_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 6, "six examples expected, found {names:?}");
    for name in names {
        let dir = tempfile::tempdir().unwrap();
        let wf = wf_dir.join(format!("{name}.yaml"));
        let input = root().join("events/inputs").join(format!("{name}.json"));
        let out = run_json(&wf, &input, dir.path());
        let doc = json(&out);
        match out.status.code() {
            Some(0) => assert_eq!(doc["status"], "succeeded", "{name}"),
            Some(3) => {
                // Waits for a person: approve every gate and expect success.
                assert_eq!(doc["status"], "waiting", "{name}");
                let run_id = doc["run_id"].as_str().unwrap();
                let gate = doc["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["status"] == "waiting")
                    .unwrap()["name"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let out = run(&["approve", run_id, &gate, "--json"], dir.path());
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            other => panic!(
                "{name} exited {other:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

/// Issue 6 regressions that a user meets at the command line.
#[test]
fn validate_refuses_alias_bombs_with_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    let mut src = String::from(
        "name: bomb\nversion: \"1\"\nsteps:\n  - {id: a, kind: transform, value: 1}\nx0: &x0 [a, a, a, a, a, a, a, a, a, a]\n",
    );
    for i in 1..=8 {
        src.push_str(&format!(
            "x{i}: &x{i} [{}]\n",
            vec![format!("*x{}", i - 1); 10].join(", ")
        ));
    }
    assert!(src.len() < 700, "a small file: {} bytes", src.len());
    let wf = dir.path().join("bomb.yaml");
    std::fs::write(&wf, &src).unwrap();
    let started = Instant::now();
    let out = bin().arg("validate").arg(&wf).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("bomb.yaml:8:") && text.contains("alias expansion exceeds 10000 nodes"),
        "{text}"
    );
    // Refused before the copies are built (it used to take minutes and gigabytes).
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn included_files_cannot_escape_the_workflow_folder_through_symlinks() {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "root:x:0:0").unwrap();
    std::fs::write(
        outside.path().join("corpus.json"),
        r#"[{"id": "s", "title": "t", "text": "root:x:0:0"}]"#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("prompts")).unwrap();
    std::fs::write(
        dir.path().join("prompts/ok.txt"),
        "Say hi to {{ input.text }}",
    )
    .unwrap();
    symlink(
        outside.path().join("secret.txt"),
        dir.path().join("prompts/p.txt"),
    )
    .unwrap();
    symlink(outside.path(), dir.path().join("linked")).unwrap();
    symlink(
        dir.path().join("prompts/ok.txt"),
        dir.path().join("prompts/inside.txt"),
    )
    .unwrap();
    let wf = |prompt: &str, corpus: &str| {
        format!(
            "name: esc\nversion: \"1\"\nsteps:\n  - id: find\n    kind: retrieve\n    query: \"${{input.text}}\"\n    corpus: {corpus}\n  - id: draft\n    model: local/template-generator\n    prompt: {{version: \"1\", file: {prompt}}}\n    input: {{text: \"${{input.text}}\"}}\n    params: {{template: \"{{{{ input.text }}}}\"}}\n"
        )
    };
    let table = [
        (
            "file symlink",
            wf("prompts/p.txt", "linked/../linked/corpus.json"),
            "10:",
        ),
        (
            "directory symlink",
            wf("prompts/ok.txt", "linked/corpus.json"),
            "7:",
        ),
        (
            "directory symlink to a prompt",
            wf("linked/secret.txt", "corpus.json"),
            "10:",
        ),
    ];
    std::fs::write(
        dir.path().join("corpus.json"),
        r#"[{"id": "d", "title": "t", "text": "hi"}]"#,
    )
    .unwrap();
    for (what, src, line) in table {
        let path = dir.path().join("esc.yaml");
        std::fs::write(&path, src).unwrap();
        let out = bin().arg("validate").arg(&path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{what}: {text}");
        assert!(
            text.lines().any(|l| l.contains(&format!("esc.yaml:{line}"))
                && l.contains("must be a path inside the workflow's folder")),
            "{what}: {text}"
        );
    }
    // A symlink that stays inside the folder is fine.
    let path = dir.path().join("esc.yaml");
    std::fs::write(&path, wf("prompts/inside.txt", "corpus.json")).unwrap();
    let out = bin().arg("validate").arg(&path).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn runs_list_pages_with_limit_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("tiny.yaml");
    std::fs::write(
        &wf,
        "name: tiny\nversion: \"1\"\nsteps:\n  - {id: a, kind: transform, value: \"${input.n}\"}\n",
    )
    .unwrap();
    let mut started = Vec::new();
    for n in 0..5 {
        let input = dir.path().join(format!("in{n}.json"));
        std::fs::write(&input, format!("{{\"n\": {n}}}")).unwrap();
        let out = run_json(&wf, &input, dir.path());
        assert_eq!(out.status.code(), Some(0));
        started.push(json(&out)["run_id"].as_str().unwrap().to_string());
    }
    started.reverse(); // newest first
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut remaining = Vec::new();
    loop {
        let mut args = vec!["runs", "list", "--json", "--limit", "2"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let doc = json(&run(&args, dir.path()));
        for r in doc["runs"].as_array().unwrap() {
            seen.push(r["run_id"].as_str().unwrap().to_string());
        }
        remaining.push(doc["remaining"].as_u64().unwrap());
        match doc["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, started);
    assert_eq!(remaining, [3, 1, 0]);
    // The table says how many more there are and how to get them.
    let out = run(&["runs", "list", "--limit", "4"], dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("… 1 more; next page: switchyard runs list --after c1."),
        "{text}"
    );
    // A cursor we did not hand out, and a bad limit, are usage errors.
    assert_eq!(
        run(&["runs", "list", "--after", "nope"], dir.path())
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        run(&["runs", "list", "--limit", "0"], dir.path())
            .status
            .code(),
        Some(2)
    );
}

/// Issue 10: the classifier cascade as a user runs it. The sure message stays on the cheap
/// tier and saves against the top one; the unclear one escalates, and `runs show` says from
/// which model to which, why, and what going straight to the top tier would have cost.
#[test]
fn the_classifier_cascade_records_who_answered_why_and_the_saving() {
    let dir = tempfile::tempdir().unwrap();
    let wf = root().join("workflows/classifier-cascade.yaml");
    let inputs = root().join("events/inputs");
    let sure = json(&run_json(
        &wf,
        &inputs.join("classifier-cascade.json"),
        dir.path(),
    ));
    let unclear = json(&run_json(
        &wf,
        &inputs.join("classifier-cascade-unclear.json"),
        dir.path(),
    ));
    let classify = |doc: &Value| {
        doc["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "classify")
            .unwrap()
            .clone()
    };
    let (a, b) = (classify(&sure), classify(&unclear));
    assert_eq!(sure["output"]["label"], "billing");
    assert_eq!(a["model"], "local/keyword-classifier");
    assert!(a.get("escalations").is_none(), "{a}");
    assert!(a["saving_usd"].as_f64().unwrap() > 0.0, "{a}");
    assert_eq!(unclear["output"]["label"], "shipping");
    assert_eq!(b["model"], "local/example-classifier");
    let e = &b["escalations"][0];
    assert_eq!(
        (e["from"].as_str(), e["to"].as_str()),
        (
            Some("local/keyword-classifier"),
            Some("local/example-classifier")
        )
    );
    assert!(
        e["reason"].as_str().unwrap().starts_with("output.label"),
        "{e}"
    );
    let (base, cost, saved) = (
        b["baseline_usd"].as_f64().unwrap(),
        b["cost_usd"].as_f64().unwrap(),
        b["saving_usd"].as_f64().unwrap(),
    );
    assert!((base - cost - saved).abs() < 1e-9, "{b}");
    // The draft's model was selected by the price table's estimate, and says so.
    let draft = sure["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "draft")
        .unwrap();
    assert_eq!(draft["model"], "local/template-generator");
    assert!(
        draft["selected_because"]
            .as_str()
            .unwrap()
            .starts_with("estimate_usd = "),
        "{draft}"
    );
    // The table a person reads says the same.
    let run_id = unclear["run_id"].as_str().unwrap();
    let out = run(&["runs", "show", run_id], dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "classify: escalated local/keyword-classifier -> local/example-classifier: output.label"
        ),
        "{text}"
    );
    assert!(
        text.contains("always using the top tier would have cost"),
        "{text}"
    );
}

/// `compare` runs a set of inputs through two versions and reports both side by side: the
/// stricter review threshold of the fixture sends the double-charge ticket (confidence 0.91)
/// to human review, and that input — only that one — is reported as different, step by step.
/// `--runs` then compares again over the inputs of runs already in the data dir.
#[test]
fn compare_reports_two_versions_side_by_side_and_the_inputs_that_differ() {
    let dir = tempfile::tempdir().unwrap();
    let a = root().join("workflows/support-triage.yaml");
    let b = fixture("support-triage-strict.yaml");
    let inputs = fixture("compare");
    let out = run(
        &[
            "compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--json",
        ],
        dir.path(),
    );
    let r = json(&out);
    assert_eq!(r["inputs"], 4);
    for v in ["a", "b"] {
        assert_eq!(r[v]["runs"], 4, "{r}");
        assert_eq!(r[v]["succeeded"], 4, "{r}");
        assert!(r[v]["cost_usd"].as_f64().unwrap() > 0.0);
        assert!(r[v]["input_tokens"].as_u64().unwrap() > 0);
        assert!(r[v]["p95_latency_ms"].is_u64());
    }
    assert_eq!(
        (r["a"]["version"].as_str(), r["b"]["version"].as_str()),
        (Some("1.0.0"), Some("1.1.0"))
    );
    let diffs = r["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), 1, "{r}");
    assert_eq!(diffs[0]["input"], "1-double-charge.json");
    assert_eq!(
        diffs[0]["steps"],
        json!(["triage", "billing_reply", "human_review", "compose"])
    );
    assert_eq!(diffs[0]["output_differs"], true);
    // B answers that ticket with a template reply instead of billing's: fewer tokens.
    assert!(
        r["a"]["output_tokens"].as_u64() > r["b"]["output_tokens"].as_u64(),
        "{r}"
    );
    // Every run is a run of the data dir, inspectable afterwards.
    let shown = run(
        &[
            "runs",
            "show",
            diffs[0]["run_b"].as_str().unwrap(),
            "--json",
        ],
        dir.path(),
    );
    let steps = json(&shown)["steps"].as_array().unwrap().clone();
    let review = steps.iter().find(|s| s["name"] == "human_review").unwrap();
    assert_eq!(review["status"], "succeeded", "{steps:?}");

    // Over the inputs of runs already there (A's four and B's four): same verdicts.
    let out = run(
        &[
            "compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--runs",
            "workflow=support-triage,status=succeeded,limit=8",
            "--json",
        ],
        dir.path(),
    );
    let r = json(&out);
    assert_eq!(r["inputs"], 8, "{r}");
    assert_eq!(
        r["differences"].as_array().unwrap().len(),
        2,
        "the double charge, twice"
    );
    let bad = run(
        &[
            "compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--runs",
            "flavour=x",
        ],
        dir.path(),
    );
    assert_eq!(bad.status.code(), Some(2));
}
