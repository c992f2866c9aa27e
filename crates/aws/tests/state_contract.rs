//! The state store contract on [`DynamoStore`], against an emulator (moto: `infra/moto.sh
//! start`, or `make test-aws`), plus what the contract does not cover: expiry of records moto
//! keeps (it does not enforce TTL), cursors across tenants and filters, full pages behind
//! filters, failed conditions, and the billed size of the items a run writes.
//!
//! Each test makes its own table (`create_table`, unique name), so tests run in parallel and a
//! rerun needs no cleanup. Without `SWITCHYARD_TEST_AWS_ENDPOINT` every test fails, saying how
//! to start the emulator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_sdk_dynamodb::types::{AttributeValue, ProjectionType, TimeToLiveStatus};
use aws_sdk_dynamodb::Client;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use switchyard_aws::dynamo::{
    item_size, INDEX_ACTIVE, INDEX_ALL_RUNS, INDEX_BY_TENANT, WEBHOOK_ID_TTL_MS,
};
use switchyard_aws::error::dynamo_error;
use switchyard_aws::{create_table, emulator_config, DynamoStore};
use switchyard_contract::state::header;
use switchyard_core::ports::{
    IdempotencyClaim, ListScope, RunQuery, StateStore, IDEMPOTENCY_TTL_MS,
};
use switchyard_core::state::{
    EventKind, HistoryEvent, Lease, RunStatus, StepRecord, StepStatus, Usage, ValueRef,
};
use switchyard_core::{Millis, StoreError};

fn endpoint() -> String {
    switchyard_contract::emulator_endpoint()
}

/// A store on a fresh table, the client, and the table's name.
async fn fresh() -> (DynamoStore, Client, String) {
    let config = emulator_config(&endpoint()).await;
    let client = Client::new(&config);
    let table = format!("sy-state-{}", uuid::Uuid::new_v4().simple());
    create_table(&client, &table).await.unwrap();
    (DynamoStore::new(client.clone(), &table), client, table)
}

async fn store() -> ((), Arc<dyn StateStore>) {
    let (store, _, _) = fresh().await;
    ((), Arc::new(store))
}

mod state {
    use super::*;
    switchyard_contract::state_store_contract!(store().await);
}

fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as Millis
}

async fn raw_item(
    client: &Client,
    table: &str,
    pk: &str,
    sk: &str,
) -> Option<HashMap<String, AttributeValue>> {
    client
        .get_item()
        .table_name(table)
        .key("PK", AttributeValue::S(pk.into()))
        .key("SK", AttributeValue::S(sk.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

/// The table is what the module documents: keys, the three indexes with their keys and
/// projection, on-demand billing, TTL on `ttl`; creating it again is harmless.
#[tokio::test]
async fn create_table_makes_the_documented_table() {
    let (_, client, table) = fresh().await;
    create_table(&client, &table).await.unwrap();
    let t = client
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let keys = |k: &[aws_sdk_dynamodb::types::KeySchemaElement]| {
        k.iter()
            .map(|e| format!("{}:{}", e.attribute_name(), e.key_type().as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(t.key_schema()), ["PK:HASH", "SK:RANGE"]);
    let mut indexes: Vec<_> = t
        .global_secondary_indexes()
        .iter()
        .map(|i| {
            let p = i.projection().unwrap();
            if i.index_name() == Some(INDEX_ACTIVE) {
                // The sweep's index: keys only, so no header update rewrites it.
                assert_eq!(p.projection_type(), Some(&ProjectionType::KeysOnly));
            } else {
                assert_eq!(p.projection_type(), Some(&ProjectionType::Include));
                assert_eq!(p.non_key_attributes(), ["workflow"]);
            }
            (i.index_name().unwrap().to_string(), keys(i.key_schema()))
        })
        .collect();
    indexes.sort();
    assert_eq!(
        indexes,
        [
            (
                INDEX_ACTIVE.to_string(),
                vec!["GSI3PK:HASH".to_string(), "GSI3SK:RANGE".into()]
            ),
            (
                INDEX_ALL_RUNS.to_string(),
                vec!["GSI2PK:HASH".to_string(), "GSI2SK:RANGE".into()]
            ),
            (
                INDEX_BY_TENANT.to_string(),
                vec!["GSI1PK:HASH".to_string(), "GSI1SK:RANGE".into()]
            ),
        ]
    );
    let billing = t
        .billing_mode_summary()
        .and_then(|b| b.billing_mode())
        .map(|b| b.as_str());
    assert_eq!(billing, Some("PAY_PER_REQUEST"));
    let ttl = client
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    let ttl = ttl.time_to_live_description().unwrap();
    assert_eq!(ttl.attribute_name(), Some("ttl"));
    assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));
}

/// moto never deletes expired items (DynamoDB deletes them late): a record past its expiry is
/// still in the table, and counts as gone all the same.
#[tokio::test]
async fn expired_records_still_in_the_table_count_as_expired() {
    let (s, client, table) = fresh().await;
    let now = now_ms();
    // Expired two hours ago: past the TTL's hour of slack too.
    let then = now - IDEMPOTENCY_TTL_MS - 2 * 3_600_000;
    assert_eq!(
        s.claim_idempotency("t1", "k", "h1", "r1", then)
            .await
            .unwrap(),
        IdempotencyClaim::New
    );
    let stored = raw_item(&client, &table, "IDEM#t1#k", "I").await.unwrap();
    let ttl: u64 = stored["ttl"].as_n().unwrap().parse().unwrap();
    assert!(
        ttl * 1000 < now,
        "its ttl ({ttl} s) has passed: DynamoDB may delete it any time"
    );
    let got = s
        .claim_idempotency("t1", "k", "h1", "r2", now)
        .await
        .unwrap();
    assert_eq!(
        got,
        IdempotencyClaim::New,
        "an expired key is claimed afresh"
    );
    let got = s
        .claim_idempotency("t1", "k", "h1", "r3", now + 1)
        .await
        .unwrap();
    let want = IdempotencyClaim::Existing {
        run_id: "r2".into(),
        same_body: true,
    };
    assert_eq!(got, want);

    let then = now - WEBHOOK_ID_TTL_MS - 2 * 3_600_000;
    assert!(s.record_webhook_id("msg_1", then).await.unwrap());
    assert!(raw_item(&client, &table, "WH#msg_1", "W").await.is_some());
    assert!(
        !s.record_webhook_id("msg_1", then + 1).await.unwrap(),
        "seen within the window"
    );
    assert!(
        s.record_webhook_id("msg_1", now).await.unwrap(),
        "expired: new again"
    );
    assert!(!s.record_webhook_id("msg_1", now).await.unwrap());
}

/// A `#` in a tenant cannot make two tenants' keys one.
#[tokio::test]
async fn tenants_with_separators_do_not_share_keys() {
    let (s, _, _) = fresh().await;
    for (tenant, key, run) in [("a#b", "c", "r1"), ("a", "b#c", "r2"), ("a%23b", "c", "r3")] {
        let got = s.claim_idempotency(tenant, key, "h", run, 5).await.unwrap();
        assert_eq!(got, IdempotencyClaim::New, "{tenant} {key}");
    }
}

async fn create_runs(s: &DynamoStore, runs: &[(&str, &str, Millis)]) {
    for (id, tenant, at) in runs {
        s.create_run(&header(id, tenant, *at), &[]).await.unwrap();
    }
}

fn page_ids(page: &switchyard_core::ports::RunPage) -> Vec<&str> {
    page.runs.iter().map(|r| r.run_id.as_str()).collect()
}

/// A cursor only continues the listing it was made for: not another tenant's, not all
/// tenants', not the same tenant's with other filters; a hand-made one that names the caller
/// only moves within the caller's runs.
#[tokio::test]
async fn cursors_cannot_cross_tenants_or_filters() {
    let (s, _, _) = fresh().await;
    create_runs(
        &s,
        &[
            ("a", "t1", 10),
            ("b", "t1", 20),
            ("c", "t1", 30),
            ("x", "t2", 25),
        ],
    )
    .await;
    let t1 = RunQuery::new(ListScope::Tenant("t1".into()), 1);
    let first = s.list_runs(&t1).await.unwrap();
    assert_eq!(page_ids(&first), ["c"]);
    let cursor = first.cursor.unwrap();
    let with = |q: &RunQuery| RunQuery {
        cursor: Some(cursor.clone()),
        ..q.clone()
    };
    let others = [
        RunQuery::new(ListScope::Tenant("t2".into()), 1),
        RunQuery::new(ListScope::AllTenants, 1),
        RunQuery {
            status: Some(RunStatus::Pending),
            ..t1.clone()
        },
        RunQuery {
            workflow: Some("summarize".into()),
            ..t1.clone()
        },
    ];
    for q in &others {
        match s.list_runs(&with(q)).await {
            Err(StoreError::Invalid(m)) => {
                assert!(m.contains("another tenant or other filters"), "{m}")
            }
            other => panic!("{q:?}: {other:?}"),
        }
    }
    assert_eq!(page_ids(&s.list_runs(&with(&t1)).await.unwrap()), ["b"]);
    // Forged for t1 at t2's run `x` (created at 25): t1's runs after that position, no `x`.
    let forged =
        serde_json::to_vec(&json!({"t": "t1", "s": null, "w": null, "at": 25, "id": "x"})).unwrap();
    use base64::Engine;
    let forged = format!(
        "v1.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged)
    );
    let q = RunQuery {
        cursor: Some(forged),
        limit: 10,
        ..t1.clone()
    };
    assert_eq!(page_ids(&s.list_runs(&q).await.unwrap()), ["b", "a"]);
    for junk in ["v1.", "v1.%%%", "c1.20.b"] {
        let q = RunQuery {
            cursor: Some(junk.into()),
            ..t1.clone()
        };
        assert!(
            matches!(s.list_runs(&q).await, Err(StoreError::Invalid(_))),
            "{junk}"
        );
    }
}

/// Filters that drop most rows still give full pages: the store keeps querying.
#[tokio::test]
async fn filtered_pages_are_full() {
    let (s, _, _) = fresh().await;
    let mut runs = Vec::new();
    for i in 0..12u64 {
        let mut h = header(&format!("r{i:02}"), "t", 100 + i);
        if i % 5 == 0 {
            h.workflow.name = "rare".into();
        }
        s.create_run(&h, &[]).await.unwrap();
        runs.push(h);
    }
    // r00, r05, r10 are "rare"; r01, r02 and r03 fail.
    for i in [1, 2, 3] {
        let mut h = runs[i].clone();
        h.status = RunStatus::Failed;
        s.put_header(&h, &[]).await.unwrap();
    }
    let scope = ListScope::Tenant("t".into());
    let table: [(Option<&str>, Option<RunStatus>, &[&str]); 2] = [
        (Some("rare"), None, &["r10", "r05", "r00"]),
        (None, Some(RunStatus::Failed), &["r03", "r02", "r01"]),
    ];
    for (workflow, status, want) in table {
        let mut q = RunQuery {
            workflow: workflow.map(str::to_string),
            status,
            ..RunQuery::new(scope.clone(), 2)
        };
        let first = s.list_runs(&q).await.unwrap();
        assert_eq!(page_ids(&first), want[..2], "{workflow:?} {status:?}");
        q.cursor = first.cursor;
        let rest = s.list_runs(&q).await.unwrap();
        assert_eq!(page_ids(&rest), want[2..], "{workflow:?} {status:?}");
        assert!(rest.cursor.is_none());
    }
    let all = s
        .list_runs(&RunQuery::new(ListScope::AllTenants, 1000))
        .await
        .unwrap();
    assert_eq!(all.runs.len(), 12);
    assert_eq!(
        all.runs[10].status,
        RunStatus::Failed,
        "the status is the header's, now"
    );
}

/// A header write that fails its condition tells a missing run from a stale version, with or
/// without events (one item or a transaction), and leaves no history; the raw SDK errors of
/// both kinds are `Conflict`.
#[tokio::test]
async fn failed_conditions_tell_missing_from_stale() {
    let (s, client, table) = fresh().await;
    let ev = [HistoryEvent::run(
        1,
        EventKind::RunCancelRequested,
        json!(null),
    )];
    let ghost = header("ghost", "t", 1);
    for events in [&[][..], &ev[..]] {
        assert!(matches!(
            s.put_header(&ghost, events).await,
            Err(StoreError::NotFound(_))
        ));
    }
    let h = header("r1", "t", 1);
    s.create_run(&h, &[]).await.unwrap();
    s.put_header(&h, &[]).await.unwrap();
    assert!(matches!(
        s.put_header(&h, &ev).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.events("r1").await.unwrap().is_empty());
    assert!(s.events("ghost").await.unwrap().is_empty());
    assert!(
        raw_item(&client, &table, "RUN#ghost", "H").await.is_none(),
        "no ghost header"
    );
    let mut stray = StepRecord::pending("a");
    assert!(matches!(
        s.put_step("ghost", &stray, &[]).await,
        Err(StoreError::NotFound(_))
    ));
    stray.version = 3;
    assert!(matches!(
        s.put_step("r1", &stray, &[]).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        raw_item(&client, &table, "RUN#r1", "S#a").await.is_none(),
        "no step item made"
    );

    let single = client
        .put_item()
        .table_name(&table)
        .item("PK", AttributeValue::S("RUN#r1".into()))
        .item("SK", AttributeValue::S("H".into()))
        .condition_expression("attribute_not_exists(PK)")
        .send()
        .await
        .map_err(|e| dynamo_error("PutItem", e));
    assert!(matches!(single, Err(StoreError::Conflict(_))), "{single:?}");
    let put = aws_sdk_dynamodb::types::Put::builder()
        .table_name(&table)
        .item("PK", AttributeValue::S("RUN#r1".into()))
        .item("SK", AttributeValue::S("H".into()))
        .condition_expression("attribute_not_exists(PK)")
        .build()
        .unwrap();
    let tx = client
        .transact_write_items()
        .transact_items(
            aws_sdk_dynamodb::types::TransactWriteItem::builder()
                .put(put)
                .build(),
        )
        .send()
        .await
        .map_err(|e| dynamo_error("TransactWriteItems", e));
    assert!(matches!(tx, Err(StoreError::Conflict(_))), "{tx:?}");
}

/// A lease take by another worker after a header write in between still sees the new
/// version: the take is conditional on what it read.
#[tokio::test]
async fn lease_take_after_another_write_uses_the_new_version() {
    let (s, _, _) = fresh().await;
    s.create_run(&header("r1", "t", 1), &[]).await.unwrap();
    let lease = Lease {
        owner: "w1".into(),
        until: 100,
    };
    let h = s.acquire_lease("r1", &lease, 10).await.unwrap();
    let mut waiting = h.clone();
    waiting.status = RunStatus::Waiting;
    assert_eq!(s.put_header(&waiting, &[]).await.unwrap(), 3);
    let again = s
        .acquire_lease(
            "r1",
            &Lease {
                owner: "w2".into(),
                until: 300,
            },
            200,
        )
        .await
        .unwrap();
    assert_eq!((again.version, again.status), (4, RunStatus::Running));
    assert_eq!(s.load_header("r1").await.unwrap().unwrap(), again);
}

fn units(size: usize) -> usize {
    size.div_ceil(1024)
}

/// What a run writes, in billed bytes (computed as DynamoDB bills them; moto's capacity figures
/// are constants): a model step with its two writes and events stays under 1 KB, one write unit
/// per write; header writes are one unit each and touch no index.
#[tokio::test]
async fn items_stay_small() {
    let (s, client, table) = fresh().await;
    let run_id = "0193a8a0-5e1b-7c3d-9f00-1a2b3c4d5e6f";
    let mut h = header(run_id, "acme", 1_733_000_000_000);
    h.callback_url = Some("https://example.com/hooks/switchyard".into());
    let created = [HistoryEvent::run(
        h.created_at,
        EventKind::RunCreated,
        json!({"workflow": "summarize"}),
    )];
    s.create_run(&h, &created).await.unwrap();
    let header_size = item_size(
        &raw_item(&client, &table, &format!("RUN#{run_id}"), "H")
            .await
            .unwrap(),
    );
    let t0 = h.created_at + 40;
    let lease = Lease {
        owner: "worker-7f3a".into(),
        until: t0 + 60_000,
    };
    let leased = s.acquire_lease(run_id, &lease, t0).await.unwrap();
    let leased_size = item_size(
        &raw_item(&client, &table, &format!("RUN#{run_id}"), "H")
            .await
            .unwrap(),
    );

    let mut rec = StepRecord::pending("summarize");
    rec.status = StepStatus::Running;
    rec.attempt = 1;
    rec.model_attempt = 1;
    rec.started_at = Some(t0 + 5);
    rec.lease_owner = Some("worker-7f3a".into());
    rec.lease_until = Some(t0 + 120_000);
    rec.provider = Some("openai".into());
    rec.model = Some("openai/gpt-4o-mini".into());
    let started = HistoryEvent::step(
        t0 + 5,
        EventKind::StepStarted,
        "summarize",
        1,
        json!({"model": "openai/gpt-4o-mini", "prompt_version": "summarize@3"}),
    );
    rec.version = s.put_step(run_id, &rec, &[started]).await.unwrap();
    let claim_size = item_size(
        &raw_item(&client, &table, &format!("RUN#{run_id}"), "S#summarize")
            .await
            .unwrap(),
    );
    rec.status = StepStatus::Succeeded;
    rec.finished_at = Some(t0 + 1_830);
    rec.lease_owner = None;
    rec.lease_until = None;
    rec.output = Some(ValueRef::Inline {
        value: json!({"summary": "The quarterly report shows revenue up 12% on the year, driven by the \
            new subscription tier; costs rose 4%, mostly hosting. The board approved the hiring plan \
            for two more engineers and asked for a pricing review before the next quarter."}),
    });
    rec.prompt_version = Some("summarize@3".into());
    rec.provider_request_id = Some("chatcmpl-AZ8xq3Ld9mN2pQ7rT1vW4yB6".into());
    rec.latency_ms = 1_790;
    rec.cost_usd = 0.000_241_5;
    rec.usage = Some(Usage::new(812, 96));
    let done = HistoryEvent::step(
        t0 + 1_830,
        EventKind::StepSucceeded,
        "summarize",
        1,
        json!({"model": "openai/gpt-4o-mini", "latency_ms": 1790, "cost_usd": 0.0002415, "fallback_used": false}),
    );
    s.put_step(run_id, &rec, &[done]).await.unwrap();
    let step_size = item_size(
        &raw_item(&client, &table, &format!("RUN#{run_id}"), "S#summarize")
            .await
            .unwrap(),
    );

    let mut ended = leased.clone();
    ended.status = RunStatus::Succeeded;
    ended.output = rec.output.clone();
    ended.ended_at = Some(t0 + 1_900);
    ended.lease = None;
    let ev = [HistoryEvent::run(
        t0 + 1_900,
        EventKind::RunSucceeded,
        json!(null),
    )];
    s.put_header(&ended, &ev).await.unwrap();
    let ended_size = item_size(
        &raw_item(&client, &table, &format!("RUN#{run_id}"), "H")
            .await
            .unwrap(),
    );

    println!("billed item sizes (bytes → write units):");
    for (what, size) in [
        ("header at create", header_size),
        ("header after a lease take", leased_size),
        ("step after its claim (running + StepStarted)", claim_size),
        (
            "step after success (output, usage + both events)",
            step_size,
        ),
        ("header at the end (output inline)", ended_size),
    ] {
        println!("  {what}: {size} B → {} WCU", units(size));
    }
    assert!(
        step_size < 1024,
        "a typical model step fits one write unit: {step_size} B"
    );
    assert!(claim_size < 1024 && leased_size < 1024 && header_size < 1024);
    assert_eq!(s.events(run_id).await.unwrap().len(), 4);
}

/// On DynamoDB, the figures of runs ended while a batch holds them are not written until the
/// flush, which adds them in one update of the workflow-hour's item (the contract rule
/// `held_figures_are_added_once_at_the_flush` checks the sums on every store).
#[tokio::test]
async fn held_figures_wait_for_the_flush() {
    use switchyard_core::stats::{names, Bucket, BucketKey, BucketQuery, Counters};
    let (s, _, _) = fresh().await;
    let t0 = 1_700_007_200_000 - 1_700_007_200_000 % 3_600_000; // an hour's start
    let q = BucketQuery {
        scope: ListScope::Tenant("t".into()),
        workflow: None,
        from_hour: t0,
        to_hour: t0,
    };
    let succeeded = |got: &[Bucket]| {
        got.iter()
            .filter(|b| b.key.step.is_empty())
            .map(|b| b.counters.get(names::SUCCEEDED))
            .sum::<f64>()
    };
    s.hold_figures();
    for id in ["a", "b", "c"] {
        let h = header(id, "t", t0 + 1);
        s.create_run(&h, &[]).await.unwrap();
        let mut ended = h.clone();
        ended.status = RunStatus::Succeeded;
        let mut run = Bucket {
            key: BucketKey::run("t", &h.workflow.name, t0),
            kind: String::new(),
            ord: 0,
            counters: Counters::default(),
        };
        run.counters.add(names::SUCCEEDED, 1.0);
        s.end_run(&ended, &[], &[run], &[]).await.unwrap();
    }
    assert_eq!(succeeded(&s.stats_buckets(&q).await.unwrap()), 0.0);
    s.flush_figures().await.unwrap();
    assert_eq!(succeeded(&s.stats_buckets(&q).await.unwrap()), 3.0);
}
