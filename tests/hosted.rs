//! End-to-end tests of the hosted-provider adapters through the `switchyard` binary, against
//! the fake provider servers (`switchyard-fakes`) on localhost. No real provider is called.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use switchyard_fakes::{Behavior, FakeConfig, FakeServer};

const SECRET: &str = "whsec_ZmFrZWZha2VmYWtlZmFrZWZha2U=";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fake server on its own runtime (it keeps serving while the test blocks on a process).
struct Fake {
    server: FakeServer,
    _rt: tokio::runtime::Runtime,
}

fn fake() -> Fake {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config = FakeConfig {
        webhook_secret: SECRET.into(),
        replicate_delay_ms: 150,
        ..FakeConfig::default()
    };
    let server = rt.block_on(FakeServer::start(config)).unwrap();
    Fake { server, _rt: rt }
}

fn switchyard(fake: &Fake, dir: &Path, args: &[&str]) -> Output {
    command(&fake.server.url(), dir)
        .args(args)
        .output()
        .unwrap()
}

/// `switchyard` with its data in `dir` and every provider pointed at the fakes at `url`.
fn command(url: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.env("SWITCHYARD_DATA_DIR", dir)
        .env_remove("SWITCHYARD_PUBLIC_URL")
        .env_remove("SWITCHYARD_LISTEN")
        .env_remove("SWITCHYARD_PRICES")
        .env("OPENAI_BASE_URL", format!("{url}/v1"))
        .env("OPENAI_API_KEY", "sk-fake-key-for-tests")
        .env("ANTHROPIC_BASE_URL", url)
        .env("ANTHROPIC_API_KEY", "fake-anthropic-key")
        .env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", url)
        .env("AWS_ACCESS_KEY_ID", "AKIDFAKEFAKE")
        .env("AWS_SECRET_ACCESS_KEY", "fake-secret")
        .env("AWS_REGION", "us-east-1")
        .env("REPLICATE_BASE_URL", format!("{url}/v1"))
        .env("REPLICATE_API_TOKEN", "r8_fake_token_for_tests")
        .env("SWITCHYARD_WEBHOOK_SECRET", SECRET)
        .env_remove("SWITCHYARD_RECORD")
        .env_remove("SWITCHYARD_REPLAY")
        .env_remove("SWITCHYARD_TAPES");
    cmd
}

fn doc(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn events(fake: &Fake, dir: &Path, run_id: &str) -> Vec<Value> {
    doc(&switchyard(fake, dir, &["runs", "show", run_id, "--json"]))["events"]
        .as_array()
        .cloned()
        .unwrap()
}

fn launch_kit(fake: &Fake, dir: &Path) -> Output {
    let wf = root().join("workflows/hosted/launch-kit.yaml");
    let input = root().join("events/inputs/hosted/launch-kit.json");
    switchyard(
        fake,
        dir,
        &[
            "run",
            wf.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--json",
        ],
    )
}

#[test]
fn launch_kit_runs_across_four_providers_and_the_signed_webhook_reaches_the_waiting_run() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let out = launch_kit(&fake, dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = doc(&out);
    assert_eq!(d["status"], "succeeded");
    assert!(["developers", "consumers", "enterprise"]
        .contains(&d["output"]["audience"].as_str().unwrap()));
    assert_eq!(d["output"]["copy"]["bullets"].as_array().unwrap().len(), 3);
    // The image is kept in the blob store (a file on the embedded backend), not linked.
    assert_kept_png(&d["output"]["image"]);
    assert!(d["cost_usd"].as_f64().unwrap() > 0.0);
    let steps = d["steps"].as_array().unwrap();
    assert_eq!(steps[0]["provider"], "openai");
    assert_eq!(steps[1]["provider"], "anthropic");
    assert_eq!(steps[2]["provider"], "replicate");
    let ev = events(&fake, dir.path(), d["run_id"].as_str().unwrap());
    assert!(
        ev.iter()
            .any(|e| e["kind"] == "webhook_received" && e["step"] == "image"),
        "the result came by webhook"
    );
    assert!(
        !ev.iter().any(|e| e["kind"] == "job_polled"),
        "no polling was needed"
    );
    // What the adapters sent: keys never recorded, instructions apart from data.
    let reqs = fake.server.requests();
    let providers: Vec<&str> = reqs.iter().map(|r| r.provider.as_str()).collect();
    for p in ["openai", "anthropic", "replicate"] {
        assert!(providers.contains(&p), "{providers:?}");
    }
}

#[test]
fn overload_and_rate_limits_retry_then_fall_back_on_purpose() {
    let fake = fake();
    fake.server.script(
        "openai",
        vec![Behavior::RateLimited {
            retry_after_secs: 1,
        }],
    );
    fake.server.script(
        "anthropic",
        vec![Behavior::Overloaded, Behavior::Overloaded],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = launch_kit(&fake, dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = doc(&out);
    let steps = d["steps"].as_array().unwrap();
    assert_eq!(steps[0]["attempts"], 2, "rate limit retried");
    assert_eq!(
        steps[1]["fallback_used"], true,
        "Anthropic overloaded twice → Bedrock"
    );
    assert_eq!(steps[1]["provider"], "bedrock");
    let ev = events(&fake, dir.path(), d["run_id"].as_str().unwrap());
    let retry = ev
        .iter()
        .find(|e| e["kind"] == "step_retry_scheduled" && e["step"] == "audience")
        .unwrap();
    assert_eq!(retry["detail"]["class"], "rate_limited");
    assert!(
        retry["detail"]["delay_ms"].as_u64().unwrap() >= 1000,
        "Retry-After honoured: {retry}"
    );
    assert!(ev
        .iter()
        .any(|e| e["kind"] == "step_fallback" && e["detail"]["class"] == "rate_limited"));
    // Bedrock was called with a SigV4 signature.
    assert!(fake
        .server
        .requests()
        .iter()
        .any(|r| r.provider == "bedrock"));
}

#[test]
fn errors_that_must_not_fall_back_fail_the_run_with_their_class() {
    // (behaviour for OpenAI's classification step, expected error class)
    let table = [
        (Behavior::Unauthorized, "auth"),
        (Behavior::ContextTooLong, "invalid"),
        (Behavior::Refusal, "refused"),
        (Behavior::Quota, "quota_exhausted"),
    ];
    for (behavior, class) in table {
        let fake = fake();
        fake.server.script("openai", vec![behavior.clone()]);
        let dir = tempfile::tempdir().unwrap();
        let out = launch_kit(&fake, dir.path());
        assert_eq!(out.status.code(), Some(1), "{behavior:?}");
        let d = doc(&out);
        assert_eq!(d["error"]["class"], class, "{behavior:?}");
        assert_eq!(d["error"]["step"], "audience");
        assert_eq!(d["steps"][0]["attempts"], 1, "{behavior:?} is not retried");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("sk-fake-key-for-tests")
                && !out.stdout.windows(8).any(|w| w == b"sk-fake-"),
            "no key in output"
        );
    }
}

#[test]
fn a_webhook_that_never_comes_is_replaced_by_polling_after_the_wait() {
    let fake = fake();
    fake.server.script("replicate", vec![Behavior::NoWebhook]);
    let dir = tempfile::tempdir().unwrap();
    let wf = root().join("tests/fixtures/replicate-poll.yaml");
    let input = root().join("tests/fixtures/prompt.json");
    let out = switchyard(
        &fake,
        dir.path(),
        &[
            "run",
            wf.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = doc(&out);
    assert_kept_png(&d["output"]["image"]);
    let ev = events(&fake, dir.path(), d["run_id"].as_str().unwrap());
    assert!(ev.iter().any(|e| e["kind"] == "job_polled"), "polled");
    assert!(!ev.iter().any(|e| e["kind"] == "webhook_received"));
    let gets: Vec<String> = fake
        .server
        .requests()
        .iter()
        .filter(|r| r.provider == "replicate" && r.method == "GET")
        .map(|r| r.path.clone())
        .collect();
    // One poll, once the wait deadline passed, then the download of the output file.
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(gets[0].starts_with("/v1/predictions/"), "{gets:?}");
    assert!(gets[1].starts_with("/v1/files/"), "{gets:?}");
}

#[test]
fn a_schema_breaking_answer_is_re_asked_with_the_errors() {
    let fake = fake();
    fake.server
        .script("anthropic", vec![Behavior::SchemaInvalid]);
    let dir = tempfile::tempdir().unwrap();
    let out = launch_kit(&fake, dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = doc(&out);
    assert_eq!(d["steps"][1]["attempts"], 2);
    assert_eq!(d["steps"][1]["fallback_used"], false);
    let ev = events(&fake, dir.path(), d["run_id"].as_str().unwrap());
    let retry = ev
        .iter()
        .find(|e| e["kind"] == "step_retry_scheduled" && e["step"] == "copy")
        .unwrap();
    assert_eq!(retry["detail"]["class"], "malformed");
    // The second request carried the schema errors as feedback.
    let second = fake
        .server
        .requests()
        .into_iter()
        .filter(|r| r.provider == "anthropic")
        .nth(1)
        .unwrap();
    assert!(
        second
            .body
            .to_string()
            .contains("previous answer had these problems"),
        "{}",
        second.body
    );
}

#[test]
fn a_failed_replicate_prediction_is_retried_as_a_new_prediction() {
    let fake = fake();
    fake.server.script("replicate", vec![Behavior::Fail]);
    let dir = tempfile::tempdir().unwrap();
    let out = launch_kit(&fake, dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = doc(&out);
    assert_eq!(d["steps"][2]["attempts"], 2);
    let ev = events(&fake, dir.path(), d["run_id"].as_str().unwrap());
    let retry = ev
        .iter()
        .find(|e| e["kind"] == "step_retry_scheduled" && e["step"] == "image")
        .unwrap();
    assert_eq!(retry["detail"]["class"], "transient");
    // Two webhooks arrived (one per prediction); the run moved on after the second.
    assert_eq!(
        ev.iter()
            .filter(|e| e["kind"] == "webhook_received")
            .count(),
        2
    );
    let creates = fake
        .server
        .requests()
        .iter()
        .filter(|r| r.provider == "replicate" && r.method == "POST")
        .count();
    assert_eq!(creates, 2, "a retry submits a new prediction");
}

/// Issue 22: the prediction succeeds and its webhook arrives, but its output file cannot be
/// reached at first. The download is tried again on its own backoff; the prediction is not
/// made (or paid for) again.
#[test]
fn an_output_file_out_of_reach_is_downloaded_again_not_paid_for_again() {
    let fake = fake();
    fake.server.drop_downloads(2);
    let dir = tempfile::tempdir().unwrap();
    let out = launch_kit(&fake, dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = doc(&out);
    assert_kept_png(&d["output"]["image"]);
    let image = &d["steps"][2];
    assert_eq!(image["attempts"], 1, "{image}");
    assert!(
        (image["cost_usd"].as_f64().unwrap() - 0.003).abs() < 1e-9,
        "one prediction's price: {image}"
    );
    let creates = fake
        .server
        .requests()
        .iter()
        .filter(|r| r.provider == "replicate" && r.method == "POST")
        .count();
    assert_eq!(creates, 1, "the job is not run again");
    let ev = events(&fake, dir.path(), d["run_id"].as_str().unwrap());
    let downloads: Vec<&Value> = ev
        .iter()
        .filter(|e| e["kind"] == "asset_download_scheduled" && e["step"] == "image")
        .map(|e| &e["detail"]["download"])
        .collect();
    assert_eq!(downloads, [1, 2, 3], "{ev:?}");
    assert!(!ev
        .iter()
        .any(|e| e["kind"] == "step_retry_scheduled" && e["step"] == "image"));
}

/// `url` is a `file://` link to our copy of the fake's PNG.
fn assert_kept_png(url: &serde_json::Value) {
    let url = url
        .as_str()
        .unwrap_or_else(|| panic!("no image url: {url}"));
    let path = url
        .strip_prefix("file://")
        .unwrap_or_else(|| panic!("not a kept file: {url}"));
    let path = path.replace("%20", " ");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        switchyard_fakes::FAKE_PNG,
        "{url}"
    );
}

/// Every file under `dir`, read as text.
fn files_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let text = std::fs::read_to_string(&p).unwrap();
                out.push((p, text));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_run_recorded_against_the_fakes_replays_offline_with_the_same_output() {
    let wf = root().join("tests/fixtures/taped.yaml");
    let input = root().join("events/inputs/hosted/launch-kit.json");
    let tape = tempfile::tempdir().unwrap();
    let run = |cmd: &mut Command| -> Output {
        cmd.args([
            "run",
            wf.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap()
    };

    // 1. Record, with one rate limit on the way: the retry is recorded too.
    let fake = fake();
    fake.server.script(
        "openai",
        vec![Behavior::RateLimited {
            retry_after_secs: 1,
        }],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(&fake.server.url(), dir.path());
    let recorded = run(cmd.env("SWITCHYARD_RECORD", tape.path()));
    assert_eq!(
        recorded.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&recorded.stderr)
    );
    let first = doc(&recorded);
    assert_eq!(first["status"], "succeeded");
    assert_eq!(first["steps"][0]["attempts"], 2);
    let cassettes = files_under(tape.path());
    let providers: std::collections::BTreeSet<String> = cassettes
        .iter()
        .map(|(p, _)| {
            p.strip_prefix(tape.path())
                .unwrap()
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        providers.into_iter().collect::<Vec<_>>(),
        ["anthropic", "bedrock", "openai"]
    );
    // Keys and signatures are not written.
    for (path, text) in &cassettes {
        for secret in [
            "sk-fake-key-for-tests",
            "fake-anthropic-key",
            "fake-secret",
            "Signature=",
        ] {
            assert!(!text.contains(secret), "{} holds {secret}", path.display());
        }
    }
    let openai: Value = serde_json::from_str(
        &cassettes
            .iter()
            .find(|(p, _)| p.to_string_lossy().contains("openai"))
            .unwrap()
            .1,
    )
    .unwrap();
    assert_eq!(
        openai["exchanges"].as_array().unwrap().len(),
        2,
        "429, then the answer"
    );
    let url = fake.server.url();
    drop(fake);

    // 2. Replay with the fakes stopped and no keys: the same run, call for call.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(&url, dir.path());
    for var in [
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "REPLICATE_API_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    let replayed = run(cmd.env("SWITCHYARD_REPLAY", tape.path()));
    assert_eq!(
        replayed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    let second = doc(&replayed);
    assert_eq!(second["output"], first["output"]);
    assert_eq!(second["cost_usd"], first["cost_usd"]);
    let summary = |d: &Value| -> Vec<(Value, Value, Value, Value)> {
        d["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].clone(),
                    s["model"].clone(),
                    s["attempts"].clone(),
                    s["status"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(summary(&second), summary(&first));

    // 3. A request nobody recorded fails loudly, naming the cassette it looked for.
    let other = tempfile::tempdir().unwrap();
    let changed = other.path().join("input.json");
    std::fs::write(
        &changed,
        r#"{"product": "Other", "announcement": "Something that was never recorded."}"#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missed = command(&url, dir.path())
        .env("SWITCHYARD_REPLAY", tape.path())
        .args([
            "run",
            wf.to_str().unwrap(),
            "--input",
            changed.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    let d = doc(&missed);
    assert_eq!(d["status"], "failed");
    assert_eq!(d["error"]["class"], "invalid");
    let msg = d["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("SWITCHYARD_REPLAY: no cassette") && msg.contains("openai"),
        "{msg}"
    );
}

#[test]
fn a_replayed_asynchronous_job_is_finished_by_its_recorded_poll() {
    let wf = root().join("tests/fixtures/replicate-poll.yaml");
    let input = root().join("tests/fixtures/prompt.json");
    let tape = tempfile::tempdir().unwrap();
    let args = [
        "run",
        wf.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--json",
    ];
    // Recorded where no webhook reaches the run, so the job is polled (and the poll taped).
    let fake = fake();
    fake.server.script("replicate", vec![Behavior::NoWebhook]);
    let dir = tempfile::tempdir().unwrap();
    let recorded = command(&fake.server.url(), dir.path())
        .env("SWITCHYARD_RECORD", tape.path())
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        recorded.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&recorded.stderr)
    );
    let first = doc(&recorded);
    let url = fake.server.url();
    drop(fake);

    let dir = tempfile::tempdir().unwrap();
    let replayed = command(&url, dir.path())
        .env_remove("REPLICATE_API_TOKEN")
        .env("SWITCHYARD_REPLAY", tape.path())
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        replayed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    let second = doc(&replayed);
    assert_kept_png(&second["output"]["image"]);
    // The same file, kept again from the taped download.
    // The same file (the blob's name is its sha256), kept again from the taped download.
    let blob = |d: &Value| {
        let url = d["output"]["image"].as_str().unwrap().to_string();
        url.rsplit('/').next().unwrap().to_string()
    };
    assert_eq!(blob(&second), blob(&first));
    assert_eq!(second["cost_usd"], first["cost_usd"]);
    let files = files_under(tape.path());
    for part in ["/invoke-", "/poll-", "http/"] {
        assert!(
            files
                .iter()
                .any(|(p, _)| p.to_string_lossy().contains(part)),
            "no {part} cassette in {:?}",
            files.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
    }
}

/// Issue 10, moderation as a role: the input screened by OpenAI's moderation endpoint, the
/// answer by a Bedrock guardrail through Converse (both the fakes), each with the normalized
/// `{flagged, categories, scores, model}`, and the workflow's routes acting on `flagged`.
#[test]
fn input_and_output_moderation_route_flagged_content_with_hosted_models() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("moderated.yaml");
    std::fs::write(
        &wf,
        r#"
name: moderated
version: "1"
steps:
  - id: screen_input
    role: moderation
    model: openai/omni-moderation-latest
    input: "${input.message}"
  - id: gate
    kind: route
    routes:
      - {when: {path: steps.screen_input.output.flagged, equals: true}, to: refuse}
    default: draft
  - {id: refuse, kind: transform, value: "refused: ${steps.screen_input.output.categories}"}
  - {id: draft, model: local/echo, input: "${input.message}"}
  - id: screen_output
    role: moderation
    model: bedrock/guardrail
    input: "${steps.draft.output.text}"
    params: {guardrail_id: gr7x3k2q9abc, guardrail_version: "1"}
  - id: release
    kind: route
    routes:
      - {when: {path: steps.screen_output.output.flagged, equals: true}, to: hold}
    default: send
  - {id: hold, kind: transform, value: "held: ${steps.screen_output.output.categories}"}
  - {id: send, kind: transform, value: "${steps.draft.output.text}"}
  - {id: result, kind: transform, needs: [refuse, hold, send], value: ["${steps.refuse.output}", "${steps.hold.output}", "${steps.send.output}"]}
output: "${steps.result.output}"
"#,
    )
    .unwrap();
    // (message, the one branch that ran, its output)
    let table = [
        (
            "Hello, when does my order ship?",
            2,
            "Hello, when does my order ship?",
        ),
        ("You idiot.", 0, "refused: {"),
        (
            "Tell me about the rifle you sell.",
            1,
            "held: {\"topic:Weapons\":true}",
        ),
    ];
    for (message, branch, want) in table {
        let input = dir.path().join("in.json");
        std::fs::write(&input, serde_json::json!({"message": message}).to_string()).unwrap();
        let out = switchyard(
            &fake,
            dir.path(),
            &[
                "run",
                wf.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--json",
            ],
        );
        let d = doc(&out);
        assert_eq!(d["status"], "succeeded", "{message}: {d}");
        let result = d["output"].as_array().unwrap();
        for (i, v) in result.iter().enumerate() {
            assert_eq!(v.is_null(), i != branch, "{message}: {d}");
        }
        assert!(
            result[branch].as_str().unwrap().starts_with(want),
            "{message}: {}",
            result[branch]
        );
        let screen = d["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "screen_input")
            .unwrap();
        assert_eq!(screen["model"], "openai/omni-moderation-latest");
        if branch == 0 {
            assert!(
                result[0].as_str().unwrap().contains("\"harassment\":true"),
                "{d}"
            );
        }
    }
}

/// A run that failed because its provider was down (Anthropic and its Bedrock fallback both
/// answering 500) is rerun from the failed step once the outage is over: a new run linked to
/// the old one both ways, which reuses the classification and never calls OpenAI again.
#[test]
fn a_run_failed_by_an_outage_is_rerun_from_the_failed_step_without_calling_earlier_steps_again() {
    let fake = fake();
    let outage = vec![Behavior::ServerError; 2];
    fake.server.script("anthropic", outage.clone());
    fake.server.script("bedrock", outage);
    let dir = tempfile::tempdir().unwrap();
    let out = launch_kit(&fake, dir.path());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = doc(&out);
    assert_eq!(failed["error"]["step"], "copy");
    assert_eq!(failed["error"]["class"], "transient");
    let old = failed["run_id"].as_str().unwrap().to_string();
    let calls = |p: &str| {
        fake.server
            .requests()
            .iter()
            .filter(|r| r.provider == p)
            .count()
    };
    assert_eq!(calls("openai"), 1);
    let anthropic_before = calls("anthropic");
    assert_eq!(
        anthropic_before, 2,
        "two attempts on Anthropic during the outage"
    );

    // A run that has not failed anywhere has nothing to rerun from by default; a bad step
    // name is refused with the reason. Neither starts anything.
    let bad = switchyard(
        &fake,
        dir.path(),
        &["runs", "rerun", &old, "--from", "nope"],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("has no step `nope`"));

    // The outage is over (the fakes answer again): rerun from the failed step (the default).
    let out = switchyard(&fake, dir.path(), &["runs", "rerun", &old, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rerun = doc(&out);
    let new = rerun["run_id"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(rerun["status"], "succeeded");
    assert_eq!(rerun["rerun_of"], json!({"run_id": old, "from": "copy"}));
    let steps = rerun["steps"].as_array().unwrap();
    assert_eq!(steps[0]["name"], "audience");
    assert_eq!(steps[0]["reused_from"], old.as_str());
    assert_eq!(
        steps[0]["cost_usd"], 0.0,
        "the reused step was paid for by the old run"
    );
    assert!(steps[1].get("reused_from").is_none());
    assert_eq!(steps[1]["status"], "succeeded");
    assert!(
        rerun["output"]["audience"].is_string(),
        "the old classification went into the new run: {rerun}"
    );
    assert_eq!(
        calls("openai"),
        1,
        "the classification was not called again"
    );
    assert_eq!(
        calls("anthropic"),
        anthropic_before + 1,
        "the failed step was"
    );
    let ev = events(&fake, dir.path(), &new);
    assert!(ev
        .iter()
        .any(|e| e["kind"] == "step_reused" && e["step"] == "audience"));

    // The old run links to its rerun; rerunning it again is a second rerun, not refused.
    let old_doc = doc(&switchyard(
        &fake,
        dir.path(),
        &["runs", "show", &old, "--json"],
    ));
    assert_eq!(old_doc["reruns"], json!([new]));
    // Bulk: the failed run has been rerun, so a bulk rerun skips it, saying why.
    let bulk = switchyard(
        &fake,
        dir.path(),
        &[
            "runs", "rerun", "--status", "failed", "--since", "1h", "--json",
        ],
    );
    assert_eq!(
        bulk.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&bulk.stderr)
    );
    let report = doc(&bulk);
    assert_eq!(report["matched"], 1, "{report}");
    assert_eq!(report["rerun"], json!([]), "{report}");
    assert!(report["skipped"][0]["reason"]
        .as_str()
        .unwrap()
        .contains(&new));
    assert_eq!(calls("openai"), 1);
}

/// `runs replay` of a recorded run on a changed definition: the unchanged calls (OpenAI's
/// classification, Bedrock's summary) are answered from the tape, the changed prompt reaches
/// Anthropic once; `--offline` instead fails that step loudly. The printed diff names the
/// changed step with its tokens and cost on both sides.
#[test]
fn a_recorded_run_replayed_on_a_changed_prompt_calls_only_the_changed_step() {
    let wf = root().join("tests/fixtures/taped.yaml");
    let input = root().join("events/inputs/hosted/launch-kit.json");
    let tape = tempfile::tempdir().unwrap();
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let recorded = command(&fake.server.url(), dir.path())
        .env("SWITCHYARD_RECORD", tape.path())
        .args([
            "run",
            wf.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        recorded.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&recorded.stderr)
    );
    let old = doc(&recorded)["run_id"].as_str().unwrap().to_string();
    let changed_dir = tempfile::tempdir().unwrap();
    let changed = changed_dir.path().join("taped-v2.yaml");
    let text = std::fs::read_to_string(&wf)
        .unwrap()
        .replace("version: \"1\"", "version: \"2\"")
        .replace("version: copy-v1", "version: copy-v2")
        .replace(
            "Write launch copy for",
            "Write short, plain launch copy for",
        );
    assert!(text.contains("copy-v2"));
    std::fs::write(&changed, text).unwrap();
    let calls = |p: &str| {
        fake.server
            .requests()
            .iter()
            .filter(|r| r.provider == p)
            .count()
    };
    let before = [calls("openai"), calls("anthropic"), calls("bedrock")];

    // Offline: the changed call has no cassette, and its step says which file it looked for.
    let offline = switchyard(
        &fake,
        dir.path(),
        &[
            "runs",
            "replay",
            &old,
            "--workflow",
            changed.to_str().unwrap(),
            "--tape",
            tape.path().to_str().unwrap(),
            "--offline",
            "--json",
        ],
    );
    assert_eq!(
        offline.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    let r = doc(&offline);
    assert_eq!(r["new_status"], "failed");
    let copy = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "copy")
        .unwrap();
    assert_eq!(copy["new_status"], "failed");
    assert_eq!(
        [calls("openai"), calls("anthropic"), calls("bedrock")],
        before,
        "nothing called"
    );

    // With the provider reachable: only the changed step calls it.
    let out = switchyard(
        &fake,
        dir.path(),
        &[
            "runs",
            "replay",
            &old,
            "--workflow",
            changed.to_str().unwrap(),
            "--tape",
            tape.path().to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = doc(&out);
    assert_eq!(
        (r["old_version"].as_str(), r["new_version"].as_str()),
        (Some("1"), Some("2"))
    );
    assert_eq!(r["new_status"], "succeeded");
    assert_eq!(
        [calls("openai"), calls("anthropic"), calls("bedrock")],
        [before[0], before[1] + 1, before[2]],
        "the changed prompt reached Anthropic; the rest came from the tape"
    );
    let step = |id: &str| {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(step("audience")["output_changed"], false);
    assert_eq!(
        step("audience")["old_tokens"],
        step("audience")["new_tokens"]
    );
    assert!(step("copy")["new_tokens"][0].as_u64().unwrap() > 0);
    // The human table says the same.
    let table = switchyard(
        &fake,
        dir.path(),
        &[
            "runs",
            "replay",
            &old,
            "--workflow",
            changed.to_str().unwrap(),
            "--tape",
            tape.path().to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains(&format!("of {old} (v1 -> v2)")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("copy ")), "{text}");
    assert_eq!(
        calls("anthropic"),
        before[1] + 1,
        "the new call was recorded and replayed"
    );
}

/// A run whose workflow says `tape: true` keeps its provider exchanges in the blob store (no
/// `SWITCHYARD_RECORD` directory): `runs replay` without `--tape` answers the unchanged calls
/// from that kept tape — offline, every call is served from it; a changed prompt fails its
/// step offline and reaches the provider once online. The kept cassettes carry no credential.
/// `SWITCHYARD_TAPES=1` keeps one for a workflow that does not ask; without either, a run
/// keeps none and `--offline` says so.
#[test]
fn a_run_keeps_its_tape_in_the_blob_store_and_replays_from_it() {
    let src = std::fs::read_to_string(root().join("tests/fixtures/taped.yaml")).unwrap();
    let files = tempfile::tempdir().unwrap();
    let kept = files.path().join("kept.yaml");
    std::fs::write(
        &kept,
        src.replace("version: \"1\"\n", "version: \"1\"\ntape: true\n"),
    )
    .unwrap();
    let bumped = files.path().join("kept-v2.yaml");
    std::fs::write(
        &bumped,
        src.replace("version: \"1\"\n", "version: \"2\"\ntape: true\n"),
    )
    .unwrap();
    let changed = files.path().join("kept-v3.yaml");
    std::fs::write(
        &changed,
        src.replace("version: \"1\"\n", "version: \"3\"\ntape: true\n")
            .replace("version: copy-v1", "version: copy-v2")
            .replace(
                "Write launch copy for",
                "Write short, plain launch copy for",
            ),
    )
    .unwrap();
    let input = root().join("events/inputs/hosted/launch-kit.json");
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let run_it = |wf: &Path, tapes: bool| {
        let mut cmd = command(&fake.server.url(), dir.path());
        if tapes {
            cmd.env("SWITCHYARD_TAPES", "1");
        }
        let out = cmd
            .args([
                "run",
                wf.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--json",
            ])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        doc(&out)["run_id"].as_str().unwrap().to_string()
    };
    let calls = || fake.server.requests().len();
    let replay = |run: &str, wf: &Path, offline: bool| {
        let mut args = vec![
            "runs",
            "replay",
            run,
            "--workflow",
            wf.to_str().unwrap(),
            "--json",
        ];
        if offline {
            args.push("--offline");
        }
        switchyard(&fake, dir.path(), &args)
    };

    let old = run_it(&kept, false);
    let recorded = calls();
    assert!(recorded >= 3, "three hosted calls: {recorded}");

    // Offline on an unchanged definition: every call from the kept tape.
    let out = replay(&old, &bumped, true);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = doc(&out);
    assert_eq!(r["new_status"], "succeeded");
    assert_eq!(r["output_changed"], false, "{r}");
    assert!(
        r["tape"]
            .as_str()
            .unwrap()
            .contains("exchanges kept by the run"),
        "{r}"
    );
    assert_eq!(calls(), recorded, "nothing reached a provider");
    // The kept cassettes, written out under the data dir, hold no credential.
    let tapes = dir.path().join("tapes").join(&old);
    let mut text = String::new();
    let mut stack = vec![tapes.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                text.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    assert!(
        text.contains("gpt-4o-mini"),
        "the cassettes are there: {tapes:?}"
    );
    for secret in [
        "sk-fake-key-for-tests",
        "fake-anthropic-key",
        "AKIDFAKEFAKE",
        "fake-secret",
    ] {
        assert!(!text.contains(secret), "{secret} was kept");
    }

    // A changed prompt: offline its step fails loudly; online it reaches Anthropic once.
    let out = replay(&old, &changed, true);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(calls(), recorded);
    let out = replay(&old, &changed, false);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = doc(&out);
    assert_eq!(r["new_status"], "succeeded");
    let anthropic: Vec<_> = fake.server.requests().into_iter().skip(recorded).collect();
    assert_eq!(anthropic.len(), 1, "only the changed call: {anthropic:?}");
    assert_eq!(anthropic[0].provider, "anthropic");

    // The deployment setting keeps a tape for a workflow that does not ask for one ...
    let plain = root().join("tests/fixtures/taped.yaml");
    let by_setting = run_it(&plain, true);
    let before = calls();
    let out = replay(&by_setting, &bumped, true);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(calls(), before);
    // ... and without either a run keeps none: --offline says so.
    let untaped = run_it(&plain, false);
    let out = replay(&untaped, &bumped, true);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kept no tape"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
