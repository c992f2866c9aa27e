//! The run console at `/ui` over real HTTP (`switchyard dev`, reqwest, no browser): sign-in
//! and the session cookie's attributes, the security headers of every page, HTML escaping of
//! what runs carry, tenant isolation, the operator-only page, CSRF on every form, sign-out;
//! and a notification that gave up, resent from the console and over the API, its dead letter
//! redriven from the console. The browser test is tests/ui_browser.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

#[path = "ui_support.rs"]
mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::*;

const XSS: &str = "<script>alert(1)</script>";

/// The headers every console answer carries, and those of a page.
fn assert_secured(a: &Answer, what: &str) {
    assert_eq!(a.header("content-security-policy"), CSP, "{what}");
    assert_eq!(a.header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(a.header("referrer-policy"), "no-referrer", "{what}");
}

fn assert_page(a: &Answer, what: &str) {
    assert_secured(a, what);
    assert_eq!(a.header("cache-control"), "no-store", "{what}");
    assert!(a.header("content-type").starts_with("text/html"), "{what}");
    // The console's own pages hold no inline script or style (the CSP would block them).
    for inline in ["<script>", "style=", "onclick=", "onsubmit=", "<style"] {
        assert!(!a.body.contains(inline), "{what}: `{inline}` in the page");
    }
    // Nothing a run carried came through unescaped.
    assert!(
        !a.body.contains("<script>alert(1)"),
        "{what}: unescaped script"
    );
}

#[tokio::test]
async fn the_console_signs_in_escapes_isolates_tenants_and_checks_every_form() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(&dir.path().join("data"), &workflows(dir.path()), &[]);

    // ---- sign-in ----
    let a = ui_get(&dev, None, "/ui/runs").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.header("location"), "/ui/login");
    assert_secured(&a, "redirect to login");
    let a = ui_get(&dev, None, "/ui/login").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_page(&a, "login");
    assert!(
        a.body.contains(r#"<form method="post" action="/ui/login""#),
        "{}",
        a.body
    );
    let a = ui_post(
        &dev,
        None,
        "/ui/login",
        &[("key", "not-a-key-at-all-000")],
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.set_cookies().is_empty());
    assert_page(&a, "bad login");
    let a = ui_post(&dev, None, "/ui/login", &[], &[]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    // A login posted from another site is refused even with a good key.
    let a = ui_post(
        &dev,
        None,
        "/ui/login",
        &[("key", ACME)],
        &[("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.set_cookies().is_empty());
    // Over plain http: HttpOnly, SameSite=Strict, Path=/ui, not Secure.
    let a = ui_post(
        &dev,
        None,
        "/ui/login",
        &[("key", ACME)],
        &[("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let cookie = a.set_cookies().pop().unwrap();
    let attrs: Vec<&str> = cookie.split(';').map(str::trim).collect();
    assert_eq!(attrs[0], format!("sy_console={}", hex::encode(ACME)));
    for want in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(attrs.contains(&want), "{want} missing: {cookie}");
    }
    assert!(!attrs.contains(&"Secure"), "{cookie}");
    // Behind an https proxy: Secure as well.
    let a = ui_post(
        &dev,
        None,
        "/ui/login",
        &[("key", ACME)],
        &[("x-forwarded-proto", "https")],
    )
    .await;
    let cookie = a.set_cookies().pop().unwrap();
    assert!(
        cookie.split(';').map(str::trim).any(|x| x == "Secure"),
        "{cookie}"
    );

    let acme = login(&dev, ACME).await;
    let globex = login(&dev, GLOBEX).await;
    let ops = login(&dev, OPS).await;
    let acme = Some(acme.as_str());
    let globex = Some(globex.as_str());
    let ops = Some(ops.as_str());

    // ---- runs that carry markup ----
    let said = start(&dev, ACME, say(XSS)).await;
    until_status(&dev, ACME, &said, &["succeeded"]).await;
    let gate = start(
        &dev,
        ACME,
        json!({"workflow": "gate", "input": {"title": XSS}}),
    )
    .await;
    let gate2 = start(
        &dev,
        ACME,
        json!({"workflow": "gate", "input": {"title": "second"}}),
    )
    .await;
    let theirs = start(&dev, GLOBEX, say("globex's own")).await;
    until_status(&dev, ACME, &gate, &["waiting"]).await;
    until_status(&dev, ACME, &gate2, &["waiting"]).await;
    until_status(&dev, GLOBEX, &theirs, &["succeeded"]).await;

    // Every page: the headers, and markup from runs shown as text.
    let xss_q = "%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    let escaped = "&lt;script&gt;alert(1)";
    let pages = [
        ("/ui".to_string(), false),
        ("/ui/runs".to_string(), false),
        (
            format!("/ui/runs?model={xss_q}&prompt_version={xss_q}"),
            true,
        ),
        (format!("/ui/runs/{said}"), true),
        (format!("/ui/runs/{gate}"), true),
        ("/ui/approvals".to_string(), true),
        ("/ui/stats".to_string(), false),
        ("/ui/stats?by=model".to_string(), false),
    ];
    for (path, shows_xss) in &pages {
        let a = ui_get(&dev, acme, path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
        assert_page(&a, path);
        if *shows_xss {
            assert!(
                a.body.contains(escaped),
                "{path}: the escaped text is missing"
            );
        }
        // Every signed-in page carries the session's token for its forms (sign-out).
        assert!(a.body.contains(&csrf(ACME)), "{path}: no CSRF token");
    }
    // Errors are pages too, escaped, with the same headers.
    for (path, status) in [
        (
            format!("/ui/stats?workflow={xss_q}"),
            StatusCode::BAD_REQUEST,
        ),
        (format!("/ui/runs?status={xss_q}"), StatusCode::BAD_REQUEST),
        ("/ui/runs/run_nope".to_string(), StatusCode::NOT_FOUND),
        ("/ui/no-such-page".to_string(), StatusCode::NOT_FOUND),
    ] {
        let a = ui_get(&dev, acme, &path).await;
        assert_eq!(a.status, status, "{path}: {}", a.body);
        assert_page(&a, &path);
    }
    // An error that repeats what was asked repeats it escaped.
    let a = ui_get(&dev, acme, &format!("/ui/runs?status={xss_q}")).await;
    assert!(a.body.contains(escaped), "{}", a.body);
    // The static files: the same CSP, their own types.
    for (file, ct) in [
        ("console.css", "text/css"),
        ("console.js", "text/javascript"),
    ] {
        let a = ui_get(&dev, None, &format!("/ui/static/{file}")).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_secured(&a, file);
        assert!(a.header("content-type").starts_with(ct), "{file}");
    }
    // The run page: the output as text, the gate's forms, the waterfall.
    let a = ui_get(&dev, acme, &format!("/ui/runs/{gate}")).await;
    assert!(a
        .body
        .contains(&format!(r#"action="/ui/runs/{gate}/approvals/review""#)));
    assert!(a.body.contains(r#"class="o-waiting""#), "no waiting bar");
    let a = ui_get(&dev, acme, &format!("/ui/runs/{said}")).await;
    assert!(
        a.body
            .contains("&quot;said&quot;: &quot;&lt;script&gt;alert(1)"),
        "{}",
        a.body
    );
    assert!(
        a.body.contains(r#"class="o-succeeded""#),
        "no bar for the transform"
    );

    // ---- tenant isolation ----
    let a = ui_get(&dev, globex, &format!("/ui/runs/{said}")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let mine = ui_get(&dev, acme, "/ui/runs").await.body;
    let other = ui_get(&dev, globex, "/ui/runs").await.body;
    assert!(mine.contains(&said) && mine.contains(&gate) && !mine.contains(&theirs));
    assert!(other.contains(&theirs) && !other.contains(&said) && !other.contains(&gate));
    let approvals = ui_get(&dev, globex, "/ui/approvals").await.body;
    assert!(!approvals.contains(&gate), "globex sees acme's gate");
    let stats = ui_get(&dev, globex, "/ui/stats").await.body;
    assert!(stats.contains(r#"data-workflow="say""#) && !stats.contains(r#"data-workflow="gate""#));
    // A decision on another tenant's run is not found, token or not.
    let path = format!("/ui/runs/{gate}/approvals/review");
    let g = csrf(GLOBEX);
    let a = ui_post(
        &dev,
        globex,
        &path,
        &[("csrf", &g), ("decision", "approve")],
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
    // The operator sees every tenant's runs.
    let all = ui_get(&dev, ops, "/ui/runs").await.body;
    assert!(all.contains(&said) && all.contains(&theirs));
    let only = ui_get(&dev, ops, "/ui/runs?tenant=globex").await.body;
    assert!(only.contains(&theirs) && !only.contains(&said));
    assert_eq!(
        ui_get(&dev, ops, &format!("/ui/runs/{said}")).await.status,
        StatusCode::OK
    );

    // ---- the operator page ----
    let a = ui_get(&dev, acme, "/ui/dead-letters").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_page(&a, "dead letters as a tenant");
    let a = ui_post(
        &dev,
        acme,
        "/ui/dead-letters/redrive",
        &[("csrf", &csrf(ACME)), ("all", "1")],
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = ui_get(&dev, ops, "/ui/dead-letters").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_page(&a, "dead letters");
    assert!(a.body.contains("No dead letters."));

    // ---- CSRF ----
    let mine = csrf(ACME);
    for (what, pairs) in [
        ("no token", vec![("decision", "approve")]),
        (
            "another session's token",
            vec![("csrf", g.as_str()), ("decision", "approve")],
        ),
        (
            "a made-up token",
            vec![("csrf", "00"), ("decision", "approve")],
        ),
    ] {
        let a = ui_post(&dev, acme, &path, &pairs, &[]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{what}");
        assert_page(&a, what);
    }
    for p in [format!("/ui/runs/{gate}/cancel"), "/ui/logout".to_string()] {
        assert_eq!(
            ui_post(&dev, acme, &p, &[], &[]).await.status,
            StatusCode::FORBIDDEN,
            "{p}"
        );
    }
    // Not signed in: a form post is refused, whatever it carries.
    let a = ui_post(
        &dev,
        None,
        &path,
        &[("csrf", &mine), ("decision", "approve")],
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    until_status(&dev, ACME, &gate, &["waiting"]).await;
    // With the token: approved, and back on the run page.
    let a = ui_post(
        &dev,
        acme,
        &path,
        &[("csrf", &mine), ("decision", "approve"), ("comment", "ok")],
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(
        a.header("location"),
        format!("/ui/runs/{gate}?done=approved")
    );
    let doc = until_status(&dev, ACME, &gate, &["succeeded"]).await;
    assert_eq!(doc["output"]["title"], XSS);
    let a = ui_get(&dev, acme, &format!("/ui/runs/{gate}?done=approved")).await;
    assert!(a.body.contains("Approved: the run goes on."));
    assert!(a.body.contains(r#"class="o-approved""#));
    // Rejected from the approvals page, then found by its error class.
    let a = ui_post(
        &dev,
        acme,
        &format!("/ui/runs/{gate2}/approvals/review"),
        &[
            ("csrf", &mine),
            ("decision", "reject"),
            ("back", "approvals"),
        ],
        &[],
    )
    .await;
    assert_eq!(a.header("location"), "/ui/approvals?done=rejected");
    until_status(&dev, ACME, &gate2, &["failed"]).await;
    let a = ui_get(&dev, acme, "/ui/runs?error_class=rejected").await;
    assert!(
        a.body.contains(&gate2) && !a.body.contains(&gate) && !a.body.contains(&said),
        "{}",
        a.body
    );
    assert!(a.body.contains("this page read 3 runs"), "{}", a.body);
    // ---- rerun from the console ----
    // The rejected run offers a rerun from its failed step; the form posts with its token and
    // a nonce, lands on the new run, and the same form posted twice is one rerun.
    let a = ui_get(&dev, acme, &format!("/ui/runs/{gate2}")).await;
    assert!(a.body.contains(r#"id="rerun""#), "{}", a.body);
    assert!(
        a.body.contains(r#"<option value="review" selected>"#),
        "the failed step is chosen: {}",
        a.body
    );
    let nonce = a
        .body
        .split(r#"name="nonce" value=""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let rerun_path = format!("/ui/runs/{gate2}/rerun");
    let no_token = ui_post(&dev, acme, &rerun_path, &[("from", "review")], &[]).await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN);
    let other = ui_post(
        &dev,
        globex,
        &rerun_path,
        &[("csrf", &g), ("from", "review")],
        &[],
    )
    .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND, "another tenant's run");
    let form = [
        ("csrf", mine.as_str()),
        ("from", "review"),
        ("nonce", nonce.as_str()),
    ];
    let first = ui_post(&dev, acme, &rerun_path, &form, &[]).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.body);
    let location = first.header("location").to_string();
    let rerun = location
        .strip_prefix("/ui/runs/")
        .and_then(|l| l.strip_suffix("?done=rerun"))
        .unwrap()
        .to_string();
    assert_ne!(rerun, gate2);
    let again = ui_post(&dev, acme, &rerun_path, &form, &[]).await;
    assert_eq!(again.header("location"), location, "one rerun per form");
    until_status(&dev, ACME, &rerun, &["waiting"]).await;
    let a = ui_get(&dev, acme, &location).await;
    assert!(a.body.contains("Rerun started"), "{}", a.body);
    assert!(
        a.body
            .contains(&format!(r#"href="/ui/runs/{gate2}" id="rerun-of""#)),
        "{}",
        a.body
    );
    let old = ui_get(&dev, acme, &format!("/ui/runs/{gate2}")).await;
    assert_eq!(old.body.matches(r#"class="rerun-link""#).count(), 1);
    // A run that has not ended offers no rerun, and refuses one.
    let a = ui_get(&dev, acme, &location).await;
    assert!(!a.body.contains(r#"id="rerun""#));
    let a = ui_post(
        &dev,
        acme,
        &format!("/ui/runs/{rerun}/rerun"),
        &[("csrf", &mine)],
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);

    let a = ui_get(&dev, acme, "/ui/runs?status=succeeded&workflow=say").await;
    assert!(a.body.contains(&said) && !a.body.contains(&gate));
    // Cancel: a run that has ended cannot be, and the page says why.
    let a = ui_post(
        &dev,
        acme,
        &format!("/ui/runs/{gate}/cancel"),
        &[("csrf", &mine)],
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert!(a.body.contains("has already ended"));

    // ---- sign-out ----
    let a = ui_post(&dev, acme, "/ui/logout", &[("csrf", &mine)], &[]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.header("location"), "/ui/login");
    let cleared = a.set_cookies().pop().unwrap();
    let attrs: Vec<&str> = cleared.split(';').map(str::trim).collect();
    assert_eq!(attrs[0], "sy_console=");
    assert!(
        attrs.contains(&"Max-Age=0") && attrs.contains(&"Path=/ui"),
        "{cleared}"
    );
    // A cookie whose key is no longer valid sends the browser to sign in, and is cleared.
    let stale = format!("sy_console={}", hex::encode("key-retired-0123456789"));
    let a = ui_get(&dev, Some(&stale), "/ui/runs").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert!(a.set_cookies().iter().any(|c| c.contains("Max-Age=0")));
}

/// A notification that gave up (six failed deliveries, ~31 s): the run page offers to resend
/// it, the resend keeps its webhook-id and is delivered; the API route refuses what it must;
/// its dead letter is listed for the operator and redriven from the console without a second
/// delivery.
#[tokio::test]
async fn a_notification_that_gave_up_is_resent_and_its_dead_letter_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(6).await;
    let dev = Dev::start(
        &dir.path().join("data"),
        &workflows(dir.path()),
        &[
            ("SWITCHYARD_CALLBACK_SECRET", SECRET),
            ("SWITCHYARD_ALLOW_PRIVATE_CALLBACKS", "1"),
        ],
    );
    let acme = login(&dev, ACME).await;
    let ops = login(&dev, OPS).await;
    let mut body = say("hello");
    body["callback_url"] = json!(receiver.url);
    let run = start(&dev, ACME, body).await;
    until_status(&dev, ACME, &run, &["succeeded"]).await;
    // While it is being retried, it cannot be resent.
    let doc = until(&dev, ACME, &run, 30, |d| {
        d["notifications"].as_array().is_some_and(|n| !n.is_empty())
    })
    .await;
    let wid = doc["notifications"][0]["webhook_id"]
        .as_str()
        .unwrap()
        .to_string();
    let resend = format!("/v1/runs/{run}/notifications/{wid}/resend");
    let (s, b) = api_post(&dev, ACME, &resend, &json!({})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict")),
        "{b}"
    );
    let a = ui_get(&dev, Some(&acme), &format!("/ui/runs/{run}")).await;
    assert!(
        !a.body.contains("/resend"),
        "a resend form while it is retried"
    );

    // Six attempts, the last gave up.
    let doc = until(&dev, ACME, &run, 90, |d| {
        d["notifications"].as_array().is_some_and(|n| n.len() == 6)
    })
    .await;
    assert_eq!(doc["notifications"][5]["outcome"], "gave_up");
    assert_eq!(receiver.deliveries().len(), 6);
    // The API: another tenant's run, an unknown notification.
    let (s, _) = api_post(&dev, GLOBEX, &resend, &json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api_post(
        &dev,
        ACME,
        &format!("/v1/runs/{run}/notifications/msg_nope/resend"),
        &json!({}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The console: the form is there; without its token it is refused.
    let page = ui_get(&dev, Some(&acme), &format!("/ui/runs/{run}")).await;
    let action = format!("/ui/runs/{run}/notifications/{wid}/resend");
    assert!(
        page.body.contains(&format!(r#"action="{action}""#)),
        "{}",
        page.body
    );
    assert!(page.body.contains("gave_up"));
    let a = ui_post(&dev, Some(&acme), &action, &[], &[]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = ui_post(&dev, Some(&acme), &action, &[("csrf", &csrf(ACME))], &[]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.header("location"), format!("/ui/runs/{run}?done=resent"));
    receiver.wait_for(7, 30).await;
    let ids = receiver.deliveries();
    assert!(
        ids.iter().all(|i| *i == wid),
        "one webhook-id throughout: {ids:?}"
    );
    let doc = until(&dev, ACME, &run, 30, |d| {
        d["notifications"].as_array().is_some_and(|n| n.len() == 7)
    })
    .await;
    assert_eq!(doc["notifications"][6]["outcome"], "delivered");
    assert_eq!(doc["notifications"][6]["attempt"], 1, "a fresh schedule");
    // Delivered now: nothing to resend.
    let (s, _) = api_post(&dev, ACME, &resend, &json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT);

    // The dead letter is still listed for the operator; redriven from the console, it is
    // skipped by the notifier (delivered already).
    let letters = ui_get(&dev, Some(&ops), "/ui/dead-letters").await;
    assert_eq!(letters.status, StatusCode::OK);
    assert!(letters.body.contains(&run), "{}", letters.body);
    let (_, list) = api_get(&dev, OPS, "/v1/ops/dead-letters?queue=notify").await;
    let id = list["dead_letters"][0]["id"].as_str().unwrap().to_string();
    assert!(letters.body.contains(&format!(r#"data-letter="{id}""#)));
    let a = ui_post(
        &dev,
        Some(&ops),
        "/ui/dead-letters/redrive",
        &[("queue", "notify"), ("id", &id)],
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "no token");
    let a = ui_post(
        &dev,
        Some(&ops),
        "/ui/dead-letters/redrive",
        &[("csrf", &csrf(OPS)), ("queue", "notify"), ("id", &id)],
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.header("location"), "/ui/dead-letters?redriven=1");
    let a = ui_get(&dev, Some(&ops), "/ui/dead-letters?redriven=1").await;
    assert!(
        a.body.contains("Put back 1 message on its queue.") && a.body.contains("No dead letters.")
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(receiver.deliveries().len(), 7, "delivered once");
}
