//! The run console in a real browser: headless Chromium driven over WebDriver (chromedriver,
//! through `fantoccini`), against `switchyard dev` serving the repository's example workflows.
//! It signs in through the login form, opens a run waiting at an approval gate, clicks
//! Approve and sees the run succeed; reruns a rejected run from its failed step and approves
//! the rerun; then signs in as an operator and redrives a dead letter
//! (a notification that gave up after six failed deliveries, ~31 s) and sees it delivered.
//!
//! Needs `chromium` and `chromedriver` (`infra/chromium.sh` installs Debian's; `make test`
//! runs it first). Without chromedriver the test fails saying so, unless
//! `SWITCHYARD_UI_TEST_OPTIONAL=1`, where it is skipped with a message.
//!
//! `SWITCHYARD_UI_SCREENSHOTS=DIR` also saves the runs, run, rerun and stats pages as PNGs there
//! (`docs/screenshots/console-*.png` were made so); they are always taken and checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

#[path = "ui_support.rs"]
mod support;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// The examples seeded (each with `events/inputs/<name>.json`), so the pages show real runs.
const EXAMPLES: [&str; 9] = [
    "support-triage",
    "knowledge-answer",
    "product-copy",
    "document-enrichment",
    "resilient-summary",
    "classifier-cascade",
    "classifier-cascade-unclear",
    "moderated-reply",
    "moderated-reply-flagged",
];

/// chromedriver, or why not.
fn chromedriver() -> Option<PathBuf> {
    let ok = Command::new("chromedriver")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| PathBuf::from("chromedriver"))
}

struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(bin: &Path) -> Driver {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(format!("{url}/status")).await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Driver { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut args = vec![
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1440,1100",
        "--hide-scrollbars",
    ];
    args.push("--force-device-scale-factor=1");
    let mut chrome = json!({"args": args});
    if Path::new("/usr/bin/chromium").exists() {
        chrome["binary"] = json!("/usr/bin/chromium");
    }
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert("goog:chromeOptions".into(), chrome);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session (is chromium installed? infra/chromium.sh)")
}

/// The repository's example workflows (not the hosted ones: they need providers' keys), the
/// gate fixture, and `say`.
fn example_workflows(dir: &Path) -> PathBuf {
    let wf = workflows(dir);
    let src = root().join("workflows");
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_owned();
        if p.is_dir() && name != "hosted" {
            copy_dir(&p, &wf.join(&name));
        } else if p.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&p, wf.join(&name)).unwrap();
        }
    }
    wf
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}

/// The text of the page (its HTML source).
async fn source(c: &Client) -> String {
    c.source().await.unwrap()
}

/// Reloads `path` until its source satisfies `ok`, for at most `secs` seconds.
async fn until_page(
    c: &Client,
    dev: &Dev,
    path: &str,
    secs: u64,
    ok: impl Fn(&str) -> bool,
) -> String {
    let t0 = Instant::now();
    loop {
        c.goto(&dev.at(path)).await.unwrap();
        let html = source(c).await;
        if ok(&html) {
            return html;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{path} never showed what was awaited:\n{html}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits (at most 10 s) until the page the browser shows, without navigating, satisfies `ok`
/// — what a form post lands on; returns its source.
async fn until_shown(c: &Client, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let html = source(c).await;
        if ok(&html) {
            return html;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{what}: {html}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most 10 s) until the browser's URL path starts with `prefix`.
async fn until_at(c: &Client, prefix: &str, what: &str) {
    let t0 = Instant::now();
    while !c.current_url().await.unwrap().path().starts_with(prefix) {
        assert!(t0.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the element `css` selects.
async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn screenshot(c: &Client, name: &str, tmp: &Path) {
    let png = c.screenshot().await.unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{name}: not a real PNG"
    );
    std::fs::write(tmp.join(name), &png).unwrap();
    if let Ok(dir) = std::env::var("SWITCHYARD_UI_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(Path::new(&dir).join(name), &png).unwrap();
    }
}

async fn sign_in(c: &Client, dev: &Dev, key: &str) {
    c.goto(&dev.at("/ui/login")).await.unwrap();
    let field = c.find(Locator::Css("#key")).await.unwrap();
    field.send_keys(key).await.unwrap();
    click(c, "#login button[type=submit]").await;
    until_at(c, "/ui/runs", "the login did not land on the runs page").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_approves_a_gate_and_an_operator_redrives_a_dead_letter_in_chromium() {
    let Some(bin) = chromedriver() else {
        if std::env::var("SWITCHYARD_UI_TEST_OPTIONAL").as_deref() == Ok("1") {
            eprintln!("SKIPPED: chromedriver is not installed (run infra/chromium.sh); SWITCHYARD_UI_TEST_OPTIONAL=1 allows skipping");
            return;
        }
        panic!("chromedriver is not installed: run infra/chromium.sh (installs Debian's chromium and chromium-driver), or set SWITCHYARD_UI_TEST_OPTIONAL=1 to skip this test");
    };
    let dir = tempfile::tempdir().unwrap();
    let shots = dir.path().join("shots");
    std::fs::create_dir_all(&shots).unwrap();
    let receiver = Receiver::start(6).await;
    let dev = Dev::start(
        &dir.path().join("data"),
        &example_workflows(dir.path()),
        &[
            ("SWITCHYARD_CALLBACK_SECRET", SECRET),
            ("SWITCHYARD_ALLOW_PRIVATE_CALLBACKS", "1"),
        ],
    );

    // The dead letter first: it takes ~31 s to give up, while the rest goes on.
    let mut body = say("a receiver that is down");
    body["callback_url"] = json!(receiver.url);
    let doomed = start(&dev, ACME, body).await;
    // Real runs of the examples, for pages that look like a deployment's.
    let mut seeded = Vec::new();
    for name in EXAMPLES {
        let input: Value = serde_json::from_slice(
            &std::fs::read(root().join("events/inputs").join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        let workflow = name
            .trim_end_matches("-unclear")
            .trim_end_matches("-flagged");
        seeded.push(start(&dev, ACME, json!({"workflow": workflow, "input": input})).await);
    }
    let gate = start(
        &dev,
        ACME,
        json!({"workflow": "gate", "input": {"title": "Spring launch"}}),
    )
    .await;
    for run in &seeded {
        until_status(&dev, ACME, run, &["succeeded", "failed"]).await;
    }
    until_status(&dev, ACME, &gate, &["waiting"]).await;
    // A second gate, rejected: a failed run to rerun from the console.
    let rejected = start(
        &dev,
        ACME,
        json!({"workflow": "gate", "input": {"title": "Autumn launch"}}),
    )
    .await;
    until_status(&dev, ACME, &rejected, &["waiting"]).await;
    let (st, _) = api_post(
        &dev,
        ACME,
        &format!("/v1/runs/{rejected}/approvals/review"),
        &json!({"decision": "reject", "comment": "not this week"}),
    )
    .await;
    assert!(st.is_success(), "{st}");
    until_status(&dev, ACME, &rejected, &["failed"]).await;

    let driver = Driver::start(&bin).await;
    let c = browser(&driver).await;

    // ---- a person approves the gate ----
    sign_in(&c, &dev, ACME).await;
    let runs = source(&c).await;
    assert!(
        runs.contains(&gate) && runs.contains(&seeded[0]),
        "the runs page lists the runs"
    );
    screenshot(&c, "console-runs.png", &shots).await;
    click(&c, &format!("a[href='/ui/runs/{gate}']")).await;
    let html = source(&c).await;
    assert!(html.contains("waits for a person"), "{html}");
    click(&c, "#approve-review").await;
    // The form posts, the console answers 303 to the run page with the news.
    until_shown(&c, "no confirmation", |h| {
        h.contains("Approved: the run goes on.")
    })
    .await;
    until_page(&c, &dev, &format!("/ui/runs/{gate}"), 30, |h| {
        h.contains(r#"<span class="status st-succeeded">succeeded</span></h1>"#)
    })
    .await;
    let doc = until_status(&dev, ACME, &gate, &["succeeded"]).await;
    assert_eq!(doc["output"]["decision"]["approved"], true);

    // ---- the rejected run is rerun from its failed step, and approved this time ----
    let html = until_page(&c, &dev, &format!("/ui/runs/{rejected}"), 10, |h| {
        h.contains(r#"id="rerun""#)
    })
    .await;
    assert!(
        // (the browser serializes the attribute as `selected=""`)
        html.contains(r#"<option value="review" selected"#),
        "the failed step is preselected: {html}"
    );
    click(&c, "#rerun-submit").await;
    // The run id from the page itself (its URL is read in another call, and the browser may
    // navigate in between on a busy machine).
    let html = until_shown(&c, "no confirmation", |h| h.contains("Rerun started")).await;
    let rerun = html
        .split(r#"id="run-id">"#)
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_default()
        .to_string();
    assert!(
        rerun.starts_with("run_") && rerun != rejected,
        "{rerun}: {html}"
    );
    assert!(html.contains(r#"id="rerun-of""#), "{html}");
    until_page(&c, &dev, &format!("/ui/runs/{rerun}"), 30, |h| {
        h.contains("waits for a person")
    })
    .await;
    click(&c, "#approve-review").await;
    let doc = until_status(&dev, ACME, &rerun, &["succeeded"]).await;
    assert_eq!(doc["rerun_of"]["run_id"], rejected.as_str());
    assert_eq!(doc["rerun_of"]["from"], "review");
    assert_eq!(doc["output"]["decision"]["approved"], true);
    let old = until_page(&c, &dev, &format!("/ui/runs/{rejected}"), 10, |h| {
        h.contains("class=\"rerun-link\"")
    })
    .await;
    assert!(old.contains(&rerun), "the old run links its rerun");
    screenshot(&c, "console-rerun.png", &shots).await;

    // The waterfall says why: a cascade's escalation and its condition.
    let cascade = &seeded[6];
    let html = until_page(&c, &dev, &format!("/ui/runs/{cascade}"), 10, |h| {
        h.contains("id=\"timeline\"")
    })
    .await;
    assert!(
        html.contains("cascade escalation"),
        "the escalation and its condition: {html}"
    );
    // Retries with their error class, then a fallback (resilient-summary fails its primary
    // model on purpose).
    let resilient = &seeded[4];
    let html = until_page(&c, &dev, &format!("/ui/runs/{resilient}"), 10, |h| {
        h.contains("id=\"timeline\"")
    })
    .await;
    assert!(
        html.contains("transient on local/template-generator"),
        "{html}"
    );
    assert!(
        html.contains("fallback local/template-generator → local/extractive-summarizer"),
        "{html}"
    );
    assert!(html.contains("class=\"o-retry\"") && html.contains("class=\"o-fallback\""));
    screenshot(&c, "console-run.png", &shots).await;
    let html = until_page(&c, &dev, "/ui/stats?since=6h&by=model", 10, |h| {
        h.contains("data-workflow=\"classifier-cascade\"")
    })
    .await;
    assert!(
        html.contains("<polyline") || html.contains("<circle"),
        "the charts have points"
    );
    assert!(html.contains("Cascades saved"), "the cascade saving");
    screenshot(&c, "console-stats.png", &shots).await;

    // ---- an operator redrives the dead letter ----
    click(&c, "button.link").await;
    until_at(&c, "/ui/login", "sign-out did not land on the login page").await;
    sign_in(&c, &dev, OPS).await;
    until_page(&c, &dev, "/ui/dead-letters", 120, |h| {
        h.contains(&doomed) && h.contains("class=\"redrive\"")
    })
    .await;
    assert_eq!(receiver.deliveries().len(), 6);
    click(&c, "tr[data-letter] button.redrive").await;
    let html = until_shown(&c, "no confirmation", |h| {
        h.contains("Put back 1 message on its queue.")
    })
    .await;
    assert!(html.contains("No dead letters."), "{html}");
    receiver.wait_for(7, 30).await;
    let html = until_page(&c, &dev, &format!("/ui/runs/{doomed}"), 30, |h| {
        h.contains("delivered")
    })
    .await;
    assert!(
        html.contains("gave_up"),
        "the history of attempts stays: {html}"
    );
    c.close().await.unwrap();
}
