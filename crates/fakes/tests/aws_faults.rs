//! The AWS fault proxy (`switchyard_fakes::aws_faults`) against a tiny local upstream: it
//! forwards requests unchanged while disabled, and each fault kind does what it says (answered
//! or not, forwarded or not, connection closed or not).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test crate: failing is the point

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use std::sync::{Arc, Mutex};
use switchyard_fakes::aws_faults::{Fault, FaultDice, FaultProxy, FaultRates, INJECTED_ERROR_BODY};

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

/// An upstream that records every request and answers 201 with a marker header and body.
async fn upstream() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(Seen {
                    method,
                    uri: uri.to_string(),
                    headers,
                    body,
                });
                (
                    StatusCode::CREATED,
                    [("x-upstream", "yes")],
                    r#"{"from":"upstream"}"#,
                )
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

const DYNAMO_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc";

async fn call(client: &reqwest::Client, url: &str) -> Result<reqwest::Response, reqwest::Error> {
    client
        .post(format!("{url}/p/q?x=1&y=%2F"))
        .header("authorization", DYNAMO_AUTH)
        .header("x-amz-target", "DynamoDB_20120810.PutItem")
        .body(r#"{"TableName":"t"}"#)
        .send()
        .await
}

#[tokio::test]
async fn forwards_requests_and_answers_unchanged_while_disabled() {
    let (up, seen) = upstream().await;
    let proxy = FaultProxy::start(&up, FaultRates::even(1.0), 7)
        .await
        .unwrap();
    assert!(!proxy.enabled(), "a new proxy starts disabled");
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let resp = call(&client, &proxy.url()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers()["x-upstream"], "yes");
        assert_eq!(resp.text().await.unwrap(), r#"{"from":"upstream"}"#);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let s = &seen[0];
    assert_eq!(s.method, Method::POST);
    assert_eq!(s.uri, "/p/q?x=1&y=%2F");
    assert_eq!(s.headers["authorization"], DYNAMO_AUTH);
    assert_eq!(s.headers["x-amz-target"], "DynamoDB_20120810.PutItem");
    assert_eq!(&s.body[..], br#"{"TableName":"t"}"#);
    // Host names the upstream: a reverse proxy's request.
    assert_eq!(
        s.headers["host"].to_str().unwrap(),
        up.trim_start_matches("http://")
    );
    let c = proxy.counts();
    assert_eq!((c.requests, c.forwarded, c.faults()), (3, 3, 0));
    assert_eq!(c.by_service["dynamodb"].requests, 3);
}

#[tokio::test]
async fn error_before_answers_an_aws_500_without_forwarding() {
    let (up, seen) = upstream().await;
    let rates = FaultRates {
        error_before: 1.0,
        ..FaultRates::NONE
    };
    let proxy = FaultProxy::start(&up, rates, 1).await.unwrap();
    proxy.set_enabled(true);
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let resp = call(&client, &proxy.url()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers()["x-amzn-errortype"], "InternalFailure");
        assert_eq!(resp.text().await.unwrap(), INJECTED_ERROR_BODY);
    }
    assert!(seen.lock().unwrap().is_empty(), "nothing was forwarded");

    proxy.set_enabled(false);
    let resp = call(&client, &proxy.url()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let c = proxy.counts();
    assert_eq!((c.requests, c.forwarded, c.error_before), (6, 1, 5));
    assert_eq!(c.by_service["dynamodb"].faults, 5);
    assert_eq!(c.by_operation["dynamodb PutItem"].requests, 6);
    let log = proxy.fault_log();
    assert_eq!(log.len(), 5);
    assert!(log
        .iter()
        .all(|f| f.kind == "error_before" && f.operation == "dynamodb PutItem"));
}

#[tokio::test]
async fn lost_answer_forwards_then_closes_or_answers_500() {
    let (up, seen) = upstream().await;
    let rates = FaultRates {
        lost_answer: 1.0,
        ..FaultRates::NONE
    };
    let proxy = FaultProxy::start(&up, rates, 2).await.unwrap();
    proxy.set_enabled(true);
    let client = reqwest::Client::new();
    let (mut closed, mut errors) = (0, 0);
    for _ in 0..20 {
        match call(&client, &proxy.url()).await {
            Ok(resp) => {
                assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
                assert_eq!(resp.text().await.unwrap(), INJECTED_ERROR_BODY);
                errors += 1;
            }
            Err(e) => {
                assert!(e.status().is_none() && !e.is_timeout(), "{e:?}");
                closed += 1;
            }
        }
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        20,
        "every call reached the upstream"
    );
    assert!(
        closed > 0 && errors > 0,
        "both ways: {closed} closed, {errors} 500s"
    );
    let c = proxy.counts();
    assert_eq!((c.requests, c.forwarded, c.lost_answer), (20, 20, 20));
    assert_eq!(c.lost_answer_closed, closed);
}

#[tokio::test]
async fn dropped_connection_is_a_connection_error_and_forwards_nothing() {
    let (up, seen) = upstream().await;
    let rates = FaultRates {
        dropped_connection: 1.0,
        ..FaultRates::NONE
    };
    let proxy = FaultProxy::start(&up, rates, 3).await.unwrap();
    proxy.set_enabled(true);
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let e = call(&client, &proxy.url()).await.unwrap_err();
        assert!(e.status().is_none() && !e.is_timeout(), "{e:?}");
    }
    // A raw client sees the socket closed with no byte of an answer.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = s.read_to_end(&mut buf).await;
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "no answer: {read:?} {buf:?}"
    );
    assert!(seen.lock().unwrap().is_empty());
    let c = proxy.counts();
    assert_eq!((c.requests, c.forwarded, c.dropped_connection), (6, 0, 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_concurrent_load_the_counters_add_up() {
    let (up, seen) = upstream().await;
    let proxy = FaultProxy::start(&up, FaultRates::even(0.45), 4)
        .await
        .unwrap();
    proxy.set_enabled(true);
    let client = reqwest::Client::new();
    let url = proxy.url();
    let calls = (0..60).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { call(&client, &url).await.map(|r| r.status()) })
    });
    let mut created = 0;
    for c in calls {
        if let Ok(StatusCode::CREATED) = c.await.unwrap() {
            created += 1;
        }
    }
    let c = proxy.counts();
    assert_eq!(c.requests, 60);
    assert_eq!(c.forwarded, seen.lock().unwrap().len() as u64);
    assert_eq!(c.forwarded, 60 - c.error_before - c.dropped_connection);
    assert_eq!(created, 60 - c.faults(), "{c:?}");
    assert!(c.faults() > 0, "{c:?}");
}

#[test]
fn the_dice_are_deterministic_and_near_their_rates() {
    let rates = FaultRates::even(0.06);
    let roll = |seed| {
        let mut d = FaultDice::new(seed, rates);
        (0..30_000).map(|_| d.roll()).collect::<Vec<_>>()
    };
    let a = roll(42);
    assert_eq!(a, roll(42), "same seed, same decisions");
    assert_ne!(a, roll(43));
    let n = |f: &dyn Fn(&Option<Fault>) -> bool| a.iter().filter(|x| f(x)).count();
    // 2 % of 30 000 = 600 each; 4 sigma is about 100.
    for (kind, count) in [
        (
            "error_before",
            n(&|x| matches!(x, Some(Fault::ErrorBefore))),
        ),
        (
            "lost_answer",
            n(&|x| matches!(x, Some(Fault::LostAnswer { .. }))),
        ),
        (
            "dropped",
            n(&|x| matches!(x, Some(Fault::DroppedConnection))),
        ),
    ] {
        assert!((500..=700).contains(&count), "{kind}: {count}");
    }
    let mut none = FaultDice::new(1, FaultRates::NONE);
    assert!((0..1000).all(|_| none.roll().is_none()));
}
