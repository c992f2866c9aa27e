//! Scripts, the control routes, recording, and the `serve` entry point.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

mod common;

use common::*;
use serde_json::{json, Value};
use switchyard_fakes::{parse_script, Behavior, FakeConfig, FakeServer};

fn chat() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn scripts_are_consumed_in_order_then_answer() {
    let s = server().await;
    let url = format!("{}/v1/chat/completions", s.url());
    s.script(
        "openai",
        vec![
            Behavior::RateLimited {
                retry_after_secs: 3,
            },
            Behavior::ServerError,
        ],
    );
    s.script("openai", vec![Behavior::Answer, Behavior::Overloaded]);
    s.script("anthropic", vec![Behavior::Overloaded]);
    let statuses = [
        post(&url, &[], &chat()).await.status,
        post(&url, &[], &chat()).await.status,
        post(&url, &[], &chat()).await.status,
        post(&url, &[], &chat()).await.status,
        post(&url, &[], &chat()).await.status,
        post(&url, &[], &chat()).await.status,
    ];
    assert_eq!(statuses, [429, 500, 200, 503, 200, 200]);
    // Other providers' scripts are untouched.
    assert_eq!(s.queued()["anthropic"], vec![Behavior::Overloaded]);
    let behaviours: Vec<String> = s.requests().iter().map(|r| r.behavior.clone()).collect();
    assert_eq!(
        behaviours,
        [
            "rate_limited:3",
            "server_error",
            "answer",
            "overloaded",
            "answer",
            "answer"
        ]
    );
}

#[tokio::test]
async fn config_scripts_apply_from_the_start() {
    let config = FakeConfig {
        script: parse_script("openai=quota;bedrock=server_error").unwrap(),
        ..FakeConfig::default()
    };
    let s = FakeServer::start(config).await.unwrap();
    let url = format!("{}/v1/chat/completions", s.url());
    assert_eq!(post(&url, &[], &chat()).await.status, 429);
    assert_eq!(post(&url, &[], &chat()).await.status, 200);
    assert_eq!(s.queued()["bedrock"], vec![Behavior::ServerError]);
}

#[tokio::test]
async fn control_routes() {
    let s = server().await;
    let base = s.url();
    let r = post(
        &format!("{base}/_fake/script"),
        &[],
        &json!({"provider": "openai", "behaviors": ["rate_limited:2", "answer"]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json(),
        json!({"provider": "openai", "queued": ["rate_limited:2", "answer"]})
    );
    let r = post(
        &format!("{base}/_fake/script"),
        &[],
        &json!({"provider": "openai", "behaviors": ["quota"]}),
    )
    .await;
    assert_eq!(
        r.json()["queued"],
        json!(["rate_limited:2", "answer", "quota"]),
        "appended"
    );
    assert_eq!(
        get(&format!("{base}/_fake/script"), &[]).await.json()["openai"],
        json!(["rate_limited:2", "answer", "quota"])
    );

    for bad in [
        json!({"provider": "mistral", "behaviors": []}),
        json!({"provider": "openai", "behaviors": ["explode"]}),
        json!({"behaviors": []}),
    ] {
        let r = post(&format!("{base}/_fake/script"), &[], &bad).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.json()["error"].is_string());
    }

    let r = post(
        &format!("{base}/v1/chat/completions"),
        &[("authorization", "Bearer sk-secret-value")],
        &chat(),
    )
    .await;
    assert_eq!(r.status, 429);
    post(
        &format!("{base}/v1/messages"),
        &ANTHROPIC_HEADERS,
        &json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    let r = get(&format!("{base}/nowhere"), &[]).await;
    assert_eq!(r.status, 404);

    let recorded = get(&format!("{base}/_fake/requests"), &[]).await.json();
    let list = recorded.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["provider"], "openai");
    assert_eq!(list[0]["method"], "POST");
    assert_eq!(list[0]["path"], "/v1/chat/completions");
    assert_eq!(list[0]["headers"]["authorization"], "Bearer");
    assert_eq!(list[0]["body"]["messages"][0]["content"], "hi");
    assert_eq!(list[0]["behavior"], "rate_limited:2");
    assert_eq!(list[1]["provider"], "anthropic");
    assert_eq!(list[1]["headers"]["x-api-key"], "[redacted]");
    assert_eq!(list[1]["headers"]["anthropic-version"], "2023-06-01");
    assert_eq!(list[2]["provider"], "unknown");
    assert_eq!(list[2]["behavior"], "no_route");
    assert!(!recorded.to_string().contains("sk-secret-value"));
    assert!(!recorded.to_string().contains("sk-ant-test-key"));

    let r = post(&format!("{base}/_fake/reset"), &[], &json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        get(&format!("{base}/_fake/requests"), &[]).await.json(),
        json!([])
    );
    assert_eq!(
        get(&format!("{base}/_fake/script"), &[]).await.json(),
        json!({})
    );
    assert_eq!(
        post(&format!("{base}/v1/chat/completions"), &[], &chat())
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn serve_on_a_listener_until_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = FakeConfig {
        script: parse_script("openai=unauthorized").unwrap(),
        ..FakeConfig::default()
    };
    let task = tokio::spawn(switchyard_fakes::serve_with_shutdown(
        listener,
        config,
        async move {
            let _ = rx.await;
        },
    ));
    let url = format!("http://{addr}/v1/chat/completions");
    assert_eq!(post(&url, &[], &chat()).await.status, 401);
    assert_eq!(post(&url, &[], &chat()).await.status, 200);
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let s = server().await;
    let url = format!("{}/v1/chat/completions", s.url());
    assert_eq!(post(&url, &[], &chat()).await.status, 200);
    drop(s);
    let mut refused = false;
    for _ in 0..100 {
        let r = client()
            .post(&url)
            .header("connection", "close")
            .body(chat().to_string())
            .send()
            .await;
        if r.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(refused, "the server still answers after being dropped");
}
