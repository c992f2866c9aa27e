//! The state store contract (docs/architecture.md#decisions): every write is conditional on the
//! version the caller read, the store owns the version arithmetic, and a state change's history
//! events are written with it.

use serde_json::json;
use switchyard_core::ports::{IdempotencyClaim, ListScope, RunQuery, StateStore};
use switchyard_core::state::{
    EventKind, HistoryEvent, Lease, RunHeader, RunSnapshot, RunStatus, StepRecord, StepStatus,
    ValueRef, WorkflowPin,
};
use switchyard_core::stats::{names, Bucket, BucketKey, BucketQuery, Counters};
use switchyard_core::{Millis, StoreError};

/// A run header as intake writes it (version 1).
pub fn header(run_id: &str, tenant: &str, created_at: Millis) -> RunHeader {
    RunHeader {
        run_id: run_id.into(),
        tenant: tenant.into(),
        workflow: WorkflowPin {
            name: "summarize".into(),
            version: "v1".into(),
            hash: "ab".repeat(32),
        },
        status: RunStatus::Pending,
        input: ValueRef::Inline {
            value: json!({"text": "hi"}),
        },
        output: None,
        error: None,
        created_at,
        updated_at: created_at,
        ended_at: None,
        deadline_at: None,
        wait: None,
        cancel_requested: false,
        lease: None,
        callback_url: None,
        metadata: json!(null),
        traceparent: None,
        rerun_of: None,
        reruns: Vec::new(),
        version: 1,
    }
}

fn ev(at: Millis, kind: EventKind) -> HistoryEvent {
    HistoryEvent::run(at, kind, json!(null))
}

/// The kinds of a run's history, in order.
async fn event_kinds(s: &dyn StateStore, run_id: &str) -> Vec<EventKind> {
    s.events(run_id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect()
}

fn conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    is_conflict(&r)
}

fn is_conflict<T>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict(_)))
}

/// Create, load, duplicate create; step records come back in the order they were created.
pub async fn create_load_round_trip(s: &dyn StateStore) {
    assert!(s.load("r1").await.unwrap().is_none());
    let h = header("r1", "t", 100);
    s.create_run(&h, &[ev(100, EventKind::RunCreated)])
        .await
        .unwrap();
    assert!(conflict(s.create_run(&h, &[]).await), "a run id is unique");
    let a = StepRecord::pending("a");
    let mut b = StepRecord::pending("b");
    b.status = StepStatus::Succeeded;
    // b first: load returns creation order, not name order.
    assert_eq!(s.put_step("r1", &b, &[]).await.unwrap(), 1);
    assert_eq!(s.put_step("r1", &a, &[]).await.unwrap(), 1);
    let mut want_b = b.clone();
    want_b.version = 1;
    let mut want_a = a.clone();
    want_a.version = 1;
    let want = RunSnapshot {
        header: h,
        steps: vec![want_b, want_a],
    };
    assert_eq!(s.load("r1").await.unwrap(), Some(want.clone()));
    assert_eq!(
        s.load_header("r1").await.unwrap(),
        Some(want.header),
        "the header alone is the loaded run's header"
    );
    assert!(s.load_header("nope").await.unwrap().is_none());
    assert_eq!(
        s.events("r1").await.unwrap().len(),
        1,
        "create wrote its event"
    );
}

/// A header write succeeds only from the version stored now, and returns the next one.
pub async fn put_header_is_conditional_and_owns_the_version(s: &dyn StateStore) {
    let h = header("r1", "t", 100);
    s.create_run(&h, &[]).await.unwrap();
    let mut running = h.clone();
    running.status = RunStatus::Running;
    assert_eq!(s.put_header(&running, &[]).await.unwrap(), 2);
    // A second writer that read version 1 loses, and writes nothing.
    let mut stale = h.clone();
    stale.status = RunStatus::Cancelled;
    assert!(conflict(
        s.put_header(&stale, &[ev(1, EventKind::RunCancelRequested)])
            .await
    ));
    assert!(
        s.events("r1").await.unwrap().is_empty(),
        "a lost write adds no history"
    );
    assert!(matches!(
        s.put_header(&header("ghost", "t", 1), &[]).await,
        Err(StoreError::NotFound(_))
    ));
    let loaded = s.load("r1").await.unwrap().unwrap().header;
    assert_eq!((loaded.status, loaded.version), (RunStatus::Running, 2));
    running.version = 2;
    assert_eq!(s.put_header(&running, &[]).await.unwrap(), 3);
}

/// A step write succeeds only from the stored version (0: the record must not exist).
pub async fn put_step_is_conditional_and_owns_the_version(s: &dyn StateStore) {
    s.create_run(&header("r1", "t", 1), &[]).await.unwrap();
    let mut rec = StepRecord::pending("a");
    // (version the writer read, wants conflict, version stored after)
    let table = [
        (0, false, 1),
        (0, true, 1),  // created twice
        (2, true, 1),  // from the future
        (1, false, 2), // the right one
        (1, true, 2),  // a second writer that read 1
        (2, false, 3),
    ];
    for (read, wants_conflict, stored) in table {
        rec.version = read;
        rec.attempt = stored as u32;
        let got = s.put_step("r1", &rec, &[]).await;
        assert_eq!(is_conflict(&got), wants_conflict, "read {read}: {got:?}");
        if let Ok(v) = got {
            assert_eq!(v, stored);
        }
        let steps = s.load("r1").await.unwrap().unwrap().steps;
        assert_eq!(steps[0].version, stored, "read {read}");
    }
    rec.version = 0;
    assert!(
        matches!(
            s.put_step("nope", &rec, &[]).await,
            Err(StoreError::NotFound(_)) | Err(StoreError::Conflict(_))
        ),
        "a step of no run is refused"
    );
}

/// The events of a write land with it, after the history before it, in order.
pub async fn a_write_and_its_events_are_one(s: &dyn StateStore) {
    s.create_run(&header("r1", "t", 1), &[ev(1, EventKind::RunCreated)])
        .await
        .unwrap();
    let started = HistoryEvent::step(2, EventKind::StepStarted, "a", 1, json!({"model": "m"}));
    let done = HistoryEvent::step(3, EventKind::StepSucceeded, "a", 1, json!(null));
    let mut rec = StepRecord::pending("a");
    rec.version = s
        .put_step("r1", &rec, std::slice::from_ref(&started))
        .await
        .unwrap();
    // A conflicting write of the same record adds nothing.
    let mut stale = rec.clone();
    stale.version = 0;
    assert!(conflict(
        s.put_step("r1", &stale, std::slice::from_ref(&done)).await
    ));
    s.put_step("r1", &rec, std::slice::from_ref(&done))
        .await
        .unwrap();
    let mut h = header("r1", "t", 1);
    h.status = RunStatus::Succeeded;
    s.put_header(&h, &[ev(4, EventKind::RunSucceeded)])
        .await
        .unwrap();
    let kinds = event_kinds(s, "r1").await;
    assert_eq!(
        kinds,
        [
            EventKind::RunCreated,
            EventKind::StepStarted,
            EventKind::StepSucceeded,
            EventKind::RunSucceeded
        ]
    );
}

/// A lease is taken when free, expired, or held by the same owner; each take is one write,
/// which also marks the run running.
pub async fn lease_rules(s: &dyn StateStore) {
    s.create_run(&header("r1", "t", 1), &[]).await.unwrap();
    let lease = |owner: &str, until| Lease {
        owner: owner.into(),
        until,
    };
    // (owner, until, now, ok) applied in order on the same run.
    let table = [
        ("w1", 1_000, 10, true),    // free → taken
        ("w2", 2_000, 500, false),  // held by w1, not expired
        ("w1", 1_500, 600, true),   // same owner extends
        ("w2", 2_000, 1_500, true), // expired exactly at `until` → taken
        ("w1", 3_000, 1_600, false),
    ];
    let mut version = 1;
    for (owner, until, now, ok) in table {
        match s.acquire_lease("r1", &lease(owner, until), now).await {
            Ok(h) => {
                assert!(ok, "{owner} at {now} should have been refused");
                version += 1;
                assert_eq!(h.version, version);
                assert_eq!(h.updated_at, now);
                assert_eq!(h.lease, Some(lease(owner, until)));
                assert_eq!(
                    h.status,
                    RunStatus::Running,
                    "the lease write marks it running"
                );
                assert_eq!(s.load("r1").await.unwrap().unwrap().header, h);
            }
            Err(StoreError::Conflict(m)) => assert!(!ok, "{owner} at {now}: {m}"),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(matches!(
        s.acquire_lease("nope", &lease("w1", 1), 0).await,
        Err(StoreError::NotFound(_))
    ));
}

fn existing(run_id: &str, same_body: bool) -> IdempotencyClaim {
    IdempotencyClaim::Existing {
        run_id: run_id.into(),
        same_body,
    }
}

/// Keys are per tenant; a reused key reports its run and whether the body matched. A webhook
/// id is new once.
pub async fn idempotency_claims_and_webhook_ids(s: &dyn StateStore) {
    let table = [
        ("t1", "k", "h1", "r1", IdempotencyClaim::New),
        ("t1", "k", "h1", "r2", existing("r1", true)),
        ("t1", "k", "h2", "r3", existing("r1", false)),
        ("t2", "k", "h2", "r4", IdempotencyClaim::New),
    ];
    for (tenant, key, hash, run, want) in table {
        assert_eq!(
            s.claim_idempotency(tenant, key, hash, run, 5)
                .await
                .unwrap(),
            want,
            "{tenant} {key} {hash}"
        );
    }
    for (id, new) in [("w1", true), ("w2", true), ("w1", false)] {
        assert_eq!(s.record_webhook_id(id, 5).await.unwrap(), new, "{id}");
    }
    // A key expires IDEMPOTENCY_TTL_MS after its claim (at 5): one millisecond before, it
    // still names r1; at the limit it is free, and the new claim holds from then on.
    let ttl = switchyard_core::ports::IDEMPOTENCY_TTL_MS;
    let later = [
        (5 + ttl - 1, "h9", "r5", existing("r1", false)),
        (5 + ttl, "h9", "r6", IdempotencyClaim::New),
        (5 + ttl + 1, "h9", "r7", existing("r6", true)),
    ];
    for (now, hash, run, want) in later {
        let got = s
            .claim_idempotency("t1", "k", hash, run, now)
            .await
            .unwrap();
        assert_eq!(got, want, "at {now}");
    }
}

/// History is in append order (not timestamp order), per run.
pub async fn events_keep_append_order_per_run(s: &dyn StateStore) {
    s.create_run(&header("r1", "t", 1), &[]).await.unwrap();
    s.create_run(&header("r2", "t", 1), &[]).await.unwrap();
    let first = vec![
        ev(30, EventKind::RunCreated),
        ev(10, EventKind::LeaseTakenOver),
    ];
    s.append_events("r1", &first).await.unwrap();
    s.append_events("r2", &[ev(5, EventKind::RunCreated)])
        .await
        .unwrap();
    let step = HistoryEvent::step(20, EventKind::StepStarted, "a", 1, json!({"m": 1}));
    s.append_events("r1", std::slice::from_ref(&step))
        .await
        .unwrap();
    let mut want = first;
    want.push(step);
    assert_eq!(s.events("r1").await.unwrap(), want);
    assert_eq!(s.events("r2").await.unwrap().len(), 1);
    assert!(s.events("none").await.unwrap().is_empty());
    assert!(matches!(
        s.append_events("none", &[ev(1, EventKind::RunCreated)])
            .await,
        Err(StoreError::NotFound(_))
    ));
}

/// Newest first; by tenant, status and workflow; pages by an opaque cursor that visits every
/// run once; a cursor the store did not hand out is `Invalid`.
pub async fn listing_filters_and_pages_by_cursor(s: &dyn StateStore) {
    for (id, tenant, at) in [
        ("a", "t1", 10),
        ("b", "t2", 30),
        ("c", "t1", 20),
        ("d", "t1", 20),
    ] {
        s.create_run(&header(id, tenant, at), &[]).await.unwrap();
    }
    let q = |tenant: Option<&str>, limit: usize| {
        let scope = match tenant {
            Some(t) => ListScope::Tenant(t.to_string()),
            None => ListScope::AllTenants,
        };
        RunQuery::new(scope, limit)
    };
    // (tenant, limit, the page's run ids, whether another page follows)
    type Row<'a> = (Option<&'a str>, usize, &'a [&'a str], bool);
    let table: [Row; 4] = [
        (None, 10, &["b", "d", "c", "a"], false),
        (Some("t1"), 10, &["d", "c", "a"], false),
        (Some("t1"), 2, &["d", "c"], true),
        (Some("t9"), 10, &[], false),
    ];
    for (tenant, limit, want, more) in table {
        let got = s.list_runs(&q(tenant, limit)).await.unwrap();
        let ids: Vec<_> = got.runs.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, want, "{tenant:?} {limit}");
        assert_eq!(got.cursor.is_some(), more, "{tenant:?} {limit}");
        if let Some(n) = got.remaining {
            assert_eq!(n > 0, more, "{tenant:?} {limit}: remaining {n}");
        }
    }
    let mut seen = Vec::new();
    let mut query = q(None, 1);
    loop {
        let page = s.list_runs(&query).await.unwrap();
        seen.extend(page.runs.iter().map(|r| r.run_id.clone()));
        match page.cursor {
            Some(c) => query.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["b", "d", "c", "a"],
        "pages of one visit every run once, in order"
    );
    let other_workflow = RunQuery {
        workflow: Some("other".into()),
        ..q(None, 10)
    };
    assert!(s.list_runs(&other_workflow).await.unwrap().runs.is_empty());
    let pending = RunQuery {
        status: Some(RunStatus::Pending),
        workflow: Some("summarize".into()),
        ..q(Some("t2"), 10)
    };
    assert_eq!(s.list_runs(&pending).await.unwrap().runs.len(), 1);
    let running = RunQuery {
        status: Some(RunStatus::Running),
        ..q(None, 10)
    };
    assert!(s.list_runs(&running).await.unwrap().runs.is_empty());
    let forged = RunQuery {
        cursor: Some("page2".into()),
        ..q(None, 10)
    };
    assert!(matches!(
        s.list_runs(&forged).await,
        Err(StoreError::Invalid(_))
    ));
    let top = &s.list_runs(&q(None, 1)).await.unwrap().runs[0];
    assert_eq!(
        (top.workflow.as_str(), top.version.as_str(), top.status),
        ("summarize", "v1", RunStatus::Pending)
    );
}

/// Records a worker held back until the run's end are stored by the end write, their history
/// before the end's and after what was written before; a stale end stores none of them;
/// afterwards each is a record like any other (rewritten from its stored version, a second
/// writer of that version conflicts, alone or in a several-step write); and only new
/// records can be held.
pub async fn held_records_ride_on_the_end(s: &dyn StateStore) {
    let h = header("r1", "t", 1);
    s.create_run(&h, &[ev(1, EventKind::RunCreated)])
        .await
        .unwrap();
    let step_ev = |at, kind, step: &str| HistoryEvent::step(at, kind, step, 1, json!(null));
    let mut a = StepRecord::pending("a");
    a.status = StepStatus::Succeeded;
    a.version = s
        .put_step("r1", &a, &[step_ev(2, EventKind::StepSucceeded, "a")])
        .await
        .unwrap();
    let (mut b, mut c) = (StepRecord::pending("b"), StepRecord::pending("c"));
    b.status = StepStatus::Succeeded;
    c.status = StepStatus::Skipped;
    let (eb, ec) = (
        [step_ev(3, EventKind::StepSucceeded, "b")],
        [step_ev(4, EventKind::StepSkipped, "c")],
    );
    let held: [(&StepRecord, &[HistoryEvent]); 2] = [(&b, &eb), (&c, &ec)];
    let mut ended = h.clone();
    ended.status = RunStatus::Succeeded;
    ended.ended_at = Some(5);

    let mut stale = ended.clone();
    stale.version = 7;
    assert!(conflict(
        s.end_run(&stale, &[ev(5, EventKind::RunSucceeded)], &[], &held)
            .await
    ));
    let snap = s.load("r1").await.unwrap().unwrap();
    assert_eq!(snap.steps.len(), 1, "a stale end stores no held record");
    let mut not_new = a.clone();
    not_new.status = StepStatus::Failed;
    assert!(matches!(
        s.end_run(&ended, &[], &[], &[(&not_new, &[])]).await,
        Err(StoreError::Invalid(_))
    ));

    assert_eq!(
        s.end_run(&ended, &[ev(5, EventKind::RunSucceeded)], &[], &held)
            .await
            .unwrap(),
        2
    );
    let snap = s.load("r1").await.unwrap().unwrap();
    let got: Vec<(&str, StepStatus, u64)> = snap
        .steps
        .iter()
        .map(|r| (r.step.as_str(), r.status, r.version))
        .collect();
    assert_eq!(
        got,
        [
            ("a", StepStatus::Succeeded, 1),
            ("b", StepStatus::Succeeded, 1),
            ("c", StepStatus::Skipped, 1)
        ]
    );
    assert_eq!(snap.header.status, RunStatus::Succeeded);
    let kinds = event_kinds(s, "r1").await;
    assert_eq!(
        kinds,
        [
            EventKind::RunCreated,
            EventKind::StepSucceeded,
            EventKind::StepSucceeded,
            EventKind::StepSkipped,
            EventKind::RunSucceeded
        ]
    );

    // Rewritten from the stored version: once; a second writer of that version conflicts.
    b.version = 1;
    b.attempt = 2;
    assert_eq!(s.put_step("r1", &b, &[]).await.unwrap(), 2);
    assert!(conflict(s.put_step("r1", &b, &[]).await));
    // With a stale record beside it, a held one's rewrite does not land either.
    c.version = 1;
    c.attempt = 3;
    a.status = StepStatus::Failed;
    a.version = 0;
    assert!(conflict(s.put_steps("r1", &[(&c, &[]), (&a, &[])]).await));
    a.version = 1;
    assert_eq!(
        s.put_steps("r1", &[(&c, &[]), (&a, &[])]).await.unwrap(),
        [2, 2]
    );
    assert!(conflict(s.put_steps("r1", &[(&c, &[]), (&a, &[])]).await));
    let snap = s.load("r1").await.unwrap().unwrap();
    let got: Vec<(&str, u64, u32)> = snap
        .steps
        .iter()
        .map(|r| (r.step.as_str(), r.version, r.attempt))
        .collect();
    assert_eq!(
        got,
        [("a", 2, 0), ("b", 2, 2), ("c", 2, 3)],
        "creation order kept"
    );
}

/// Several step records are one write: all of them with their events, or — when any one's
/// version is stale — none of them and no event (a repair is never stored half-applied).
pub async fn several_steps_are_one_write(s: &dyn StateStore) {
    s.create_run(&header("r1", "t", 1), &[]).await.unwrap();
    let mut target = StepRecord::pending("draft");
    target.version = s.put_step("r1", &target, &[]).await.unwrap();
    let mut check = StepRecord::pending("check");
    check.status = StepStatus::Running;
    check.version = s.put_step("r1", &check, &[]).await.unwrap();
    let asked = HistoryEvent::step(5, EventKind::StepRepairRequested, "check", 1, json!(null));

    // The validator's record is stale: the target's reset must not land either.
    let mut reset = target.clone();
    reset.status = StepStatus::Retrying;
    let mut stale = check.clone();
    stale.version = 0;
    stale.status = StepStatus::Pending;
    let got = s
        .put_steps(
            "r1",
            &[(&reset, std::slice::from_ref(&asked)), (&stale, &[])],
        )
        .await;
    assert!(
        is_conflict(&got),
        "a stale record fails the whole write: {got:?}"
    );
    let stored = s.load("r1").await.unwrap().unwrap().steps;
    assert_eq!(
        stored
            .iter()
            .map(|r| (r.step.as_str(), r.status, r.version))
            .collect::<Vec<_>>(),
        [
            ("draft", StepStatus::Pending, 1),
            ("check", StepStatus::Running, 1)
        ],
        "nothing was written"
    );
    assert!(s.events("r1").await.unwrap().is_empty(), "nor any event");

    // Both current: both land, with their events, and the versions come back in order.
    let mut asking = check.clone();
    asking.status = StepStatus::Pending;
    let created = StepRecord::pending("new");
    let versions = s
        .put_steps(
            "r1",
            &[
                (&reset, std::slice::from_ref(&asked)),
                (&asking, &[]),
                (&created, &[]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(versions, [2, 2, 1]);
    let stored = s.load("r1").await.unwrap().unwrap().steps;
    assert_eq!(
        stored
            .iter()
            .map(|r| (r.step.as_str(), r.status, r.version))
            .collect::<Vec<_>>(),
        [
            ("draft", StepStatus::Retrying, 2),
            ("check", StepStatus::Pending, 2),
            ("new", StepStatus::Pending, 1)
        ]
    );
    let kinds = event_kinds(s, "r1").await;
    assert_eq!(kinds, [EventKind::StepRepairRequested]);
    assert!(
        matches!(s.put_steps("r1", &[]).await, Err(StoreError::Invalid(_))),
        "an empty write is refused"
    );
}

/// The sweep's listing: runs that have not ended, created at or before the cutoff (and at or
/// after a lower bound, for the stats' window), oldest first, page by page; an ended run
/// leaves it.
pub async fn active_runs_are_the_unended_oldest_first(s: &dyn StateStore) {
    for (id, at) in [
        ("r3", 300),
        ("r1", 100),
        ("r2", 200),
        ("r4", 400),
        ("r5", 500),
    ] {
        s.create_run(&header(id, "t", at), &[]).await.unwrap();
    }
    // r2 ends; r4 waits (still active).
    let mut ended = header("r2", "t", 200);
    ended.status = RunStatus::Succeeded;
    s.put_header(&ended, &[]).await.unwrap();
    let mut waiting = header("r4", "t", 400);
    waiting.status = RunStatus::Waiting;
    s.put_header(&waiting, &[]).await.unwrap();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = s.active_runs(0, 450, cursor.as_deref(), 2).await.unwrap();
        assert!(page.runs.len() <= 2);
        seen.extend(page.runs.iter().map(|h| (h.run_id.clone(), h.status)));
        cursor = page.cursor;
        if cursor.is_none() {
            break;
        }
    }
    // Eventually consistent indexes may lag the end of r2 for a moment: it is never counted
    // active once read, since an ended header is left out.
    assert_eq!(
        seen,
        [
            ("r1".to_string(), RunStatus::Pending),
            ("r3".to_string(), RunStatus::Pending),
            ("r4".to_string(), RunStatus::Waiting)
        ],
        "r2 ended, r5 is younger than the cutoff"
    );
    assert!(matches!(
        s.active_runs(0, 450, Some("not-a-cursor"), 2).await,
        Err(StoreError::Invalid(_))
    ));
    // From 300 on (inclusive): the older r1 is not read, whatever the page size.
    let from: Vec<String> = s
        .active_runs(300, 500, None, 10)
        .await
        .unwrap()
        .runs
        .into_iter()
        .map(|h| h.run_id)
        .collect();
    assert_eq!(from, ["r3", "r4", "r5"]);
    let first = s.active_runs(300, 500, None, 1).await.unwrap();
    assert_eq!(first.runs[0].run_id, "r3");
    let next = s
        .active_runs(300, 500, first.cursor.as_deref(), 1)
        .await
        .unwrap();
    assert_eq!(next.runs[0].run_id, "r4");
}

fn bucket(tenant: &str, workflow: &str, created_at: Millis, step: &str, model: &str) -> Bucket {
    Bucket {
        key: BucketKey {
            step: step.into(),
            model: model.into(),
            prompt_version: if step.is_empty() { "" } else { "v1" }.into(),
            ..BucketKey::run(tenant, workflow, created_at)
        },
        kind: if step.is_empty() { "" } else { "model" }.into(),
        ord: 0,
        counters: Counters::default(),
    }
}

fn find<'a>(buckets: &'a [Bucket], step: &str, model: &str) -> &'a Bucket {
    buckets
        .iter()
        .find(|b| b.key.step == step && b.key.model == model)
        .unwrap_or_else(|| panic!("no bucket {step}/{model} in {buckets:?}"))
}

/// Stats buckets: a run's creation counts it `started` in its hour's bucket (or, for a store
/// that leaves `started` to the listing of runs in flight, nothing); the write that ends it
/// adds its buckets, once (a stale end adds nothing, nor does an ordinary header
/// write); a query reads its tenant's, workflow's and hours' buckets, summed.
pub async fn stats_buckets_count_each_run_once(s: &dyn StateStore) {
    const HOUR: Millis = 3_600_000;
    let t0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR; // an hour's start
    let q = |scope: ListScope, workflow: Option<&str>, from: Millis, to: Millis| BucketQuery {
        scope,
        workflow: workflow.map(str::to_string),
        from_hour: from,
        to_hour: to,
    };
    let t = || ListScope::Tenant("t".into());
    // Two runs of t in the first hour, one in the next; one of another tenant.
    let mut a = header("a", "t", t0 + 10);
    let b = header("b", "t", t0 + HOUR - 1);
    let c = header("c", "t", t0 + HOUR);
    let mut other = header("d", "u#1", t0 + 20);
    other.workflow.name = "other".into();
    for h in [&a, &b, &c, &other] {
        s.create_run(h, &[ev(h.created_at, EventKind::RunCreated)])
            .await
            .unwrap();
    }
    // A store counts `started` at creation for every run (SQLite), or, as it says, for none
    // (DynamoDB: the stats count the runs in flight from `active_runs`).
    let got = s.stats_buckets(&q(t(), None, t0, t0)).await.unwrap();
    let counts_started = s.counts_started();
    let started = |n: u64| if counts_started { n } else { 0 };
    if counts_started {
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].key, BucketKey::run("t", "summarize", t0));
        assert_eq!(got[0].counters.count(names::STARTED), 2);
    } else {
        assert!(got.is_empty(), "{got:?}");
    }
    // An ordinary header write adds nothing.
    a.status = RunStatus::Running;
    a.version = s.put_header(&a, &[]).await.unwrap();
    // The end: the run bucket and two step buckets (one with 0.25 USD of a float sum).
    let mut run = bucket("t", "summarize", a.created_at, "", "");
    run.counters.add(names::SUCCEEDED, 1.0);
    run.counters.add("l.40", 1.0);
    run.counters.add(names::COST, 0.35);
    let mut gen = bucket("t", "summarize", a.created_at, "gen", "m/small");
    gen.ord = 1;
    gen.counters.add(names::EXECUTIONS, 1.0);
    gen.counters.add(names::COST, 0.25);
    gen.counters.add("t.input", 120.0);
    let mut check = bucket("t", "summarize", a.created_at, "check", "m/judge");
    check.kind = "validate".into();
    check.ord = 2;
    check.counters.add(names::JUDGE_SCORE, 0.75);
    let ended_buckets = vec![run, gen, check];
    let mut ended = a.clone();
    ended.status = RunStatus::Succeeded;
    ended.ended_at = Some(t0 + 500);
    let v = s
        .end_run(
            &ended,
            &[ev(500, EventKind::RunSucceeded)],
            &ended_buckets,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(v, a.version + 1);
    assert_eq!(
        s.load_header("a").await.unwrap().unwrap().status,
        RunStatus::Succeeded
    );
    // A second end from the same read (a duplicated wake-up) loses, and adds nothing.
    assert!(conflict(
        s.end_run(
            &ended,
            &[ev(501, EventKind::RunSucceeded)],
            &ended_buckets,
            &[]
        )
        .await
    ));
    assert!(matches!(
        s.end_run(&header("ghost", "t", t0), &[], &ended_buckets, &[])
            .await,
        Err(StoreError::NotFound(_))
    ));
    // b ends too, on the same step bucket.
    let mut b_end = b.clone();
    b_end.status = RunStatus::Failed;
    let mut b_run = bucket("t", "summarize", b.created_at, "", "");
    b_run.counters.add(names::FAILED, 1.0);
    b_run.counters.add("e.timeout", 1.0);
    let mut b_gen = bucket("t", "summarize", b.created_at, "gen", "m/small");
    b_gen.ord = 1;
    b_gen.counters.add(names::EXECUTIONS, 1.0);
    b_gen.counters.add(names::COST, 0.1);
    s.end_run(&b_end, &[], &[b_run, b_gen], &[]).await.unwrap();
    // c (the next hour) and the other tenant's run end too.
    for h in [&c, &other] {
        let mut ended = h.clone();
        ended.status = RunStatus::Succeeded;
        let mut run = bucket(&h.tenant, &h.workflow.name, h.created_at, "", "");
        run.counters.add(names::SUCCEEDED, 1.0);
        s.end_run(&ended, &[], &[run], &[]).await.unwrap();
    }

    let got = s.stats_buckets(&q(t(), None, t0, t0)).await.unwrap();
    assert_eq!(got.len(), 3, "{got:?}");
    let run = find(&got, "", "");
    let want = [
        (names::STARTED, started(2) as f64),
        (names::SUCCEEDED, 1.0),
        (names::FAILED, 1.0),
        ("e.timeout", 1.0),
        ("l.40", 1.0),
    ];
    for (name, v) in want {
        assert_eq!(run.counters.get(name), v, "{name}: {run:?}");
    }
    assert!((run.counters.get(names::COST) - 0.35).abs() < 1e-12);
    let gen = find(&got, "gen", "m/small");
    assert_eq!(
        (gen.kind.as_str(), gen.ord, gen.key.prompt_version.as_str()),
        ("model", 1, "v1")
    );
    assert_eq!(gen.counters.get(names::EXECUTIONS), 2.0);
    assert!((gen.counters.get(names::COST) - 0.35).abs() < 1e-12);
    assert_eq!(gen.counters.get("t.input"), 120.0);
    let check = find(&got, "check", "m/judge");
    assert_eq!((check.kind.as_str(), check.ord), ("validate", 2));
    assert_eq!(check.counters.get(names::JUDGE_SCORE), 0.75);

    // Hours, workflow and tenant select.
    let two_hours = s.stats_buckets(&q(t(), None, t0, t0 + HOUR)).await.unwrap();
    let started_sum: u64 = two_hours
        .iter()
        .map(|b| b.counters.count(names::STARTED))
        .sum();
    assert_eq!((two_hours.len(), started_sum), (4, started(3)));
    let later = s
        .stats_buckets(&q(t(), None, t0 + HOUR, t0 + 5 * HOUR))
        .await
        .unwrap();
    assert_eq!(later.len(), 1);
    assert!(s
        .stats_buckets(&q(t(), Some("other"), t0, t0 + HOUR))
        .await
        .unwrap()
        .is_empty());
    let u = s
        .stats_buckets(&q(ListScope::Tenant("u#1".into()), None, t0, t0))
        .await
        .unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].key.workflow, "other");
    assert!(s
        .stats_buckets(&q(ListScope::Tenant("u".into()), None, t0, t0 + HOUR))
        .await
        .unwrap()
        .is_empty());
    // Every tenant: answered whole, or refused as a query the store does not serve.
    match s
        .stats_buckets(&q(ListScope::AllTenants, None, t0, t0 + HOUR))
        .await
    {
        Ok(all) => assert_eq!(all.len(), 5, "{all:?}"),
        Err(StoreError::Invalid(_)) => {}
        Err(e) => panic!("every tenant's stats: {e}"),
    }
}

/// Figures held for a batch (`hold_figures` … `flush_figures`) are all there after the
/// flush, each run's once: two runs ended inside the batch, a duplicated end that lost its
/// condition adds nothing, a second flush adds nothing, and an end after the flush (no batch
/// open) is added as before. Two holders: the first flush writes what both held.
pub async fn held_figures_are_added_once_at_the_flush(s: &dyn StateStore) {
    const HOUR: Millis = 3_600_000;
    let t0 = 1_700_003_600_000 - 1_700_003_600_000 % HOUR;
    let q = BucketQuery {
        scope: ListScope::Tenant("t".into()),
        workflow: None,
        from_hour: t0,
        to_hour: t0,
    };
    let runs: Vec<RunHeader> = ["h1", "h2", "h3", "h4"]
        .iter()
        .enumerate()
        .map(|(i, id)| header(id, "t", t0 + i as Millis))
        .collect();
    for h in &runs {
        s.create_run(h, &[]).await.unwrap();
    }
    let counts_started = s.counts_started();
    assert_eq!(
        s.stats_buckets(&q).await.unwrap().is_empty(),
        !counts_started
    );
    let end = |h: &RunHeader| {
        let mut ended = h.clone();
        ended.status = RunStatus::Succeeded;
        let mut run = bucket("t", "summarize", h.created_at, "", "");
        run.counters.add(names::SUCCEEDED, 1.0);
        let mut gen = bucket("t", "summarize", h.created_at, "gen", "m/small");
        gen.ord = 1;
        gen.counters.add(names::EXECUTIONS, 1.0);
        gen.counters.add(names::COST, 0.25);
        (ended, vec![run, gen])
    };
    let counts = |got: &[Bucket]| {
        (
            find(got, "", "").counters.get(names::SUCCEEDED),
            got.iter()
                .find(|b| b.key.step == "gen")
                .map_or(0.0, |b| b.counters.get(names::EXECUTIONS)),
        )
    };
    s.hold_figures();
    s.hold_figures();
    for h in &runs[..2] {
        let (ended, buckets) = end(h);
        s.end_run(&ended, &[], &buckets, &[]).await.unwrap();
        assert!(conflict(s.end_run(&ended, &[], &buckets, &[]).await));
    }
    s.flush_figures().await.unwrap();
    let got = s.stats_buckets(&q).await.unwrap();
    assert_eq!(counts(&got), (2.0, 2.0), "{got:?}");
    let gen = got.iter().find(|b| b.key.step == "gen").unwrap();
    assert!((gen.counters.get(names::COST) - 0.5).abs() < 1e-12);
    // The second holder's flush: nothing more held, nothing doubled.
    let (ended, buckets) = end(&runs[2]);
    s.end_run(&ended, &[], &buckets, &[]).await.unwrap();
    s.flush_figures().await.unwrap();
    s.flush_figures().await.unwrap();
    assert_eq!(counts(&s.stats_buckets(&q).await.unwrap()), (3.0, 3.0));
    // No batch open: added with the end.
    let (ended, buckets) = end(&runs[3]);
    s.end_run(&ended, &[], &buckets, &[]).await.unwrap();
    let got = s.stats_buckets(&q).await.unwrap();
    assert_eq!(counts(&got), (4.0, 4.0), "{got:?}");
    assert_eq!(
        find(&got, "", "").counters.count(names::STARTED),
        if counts_started { 4 } else { 0 }
    );
}

/// A run that ends with more step buckets than one write of the store holds (a DynamoDB
/// transaction: 100 items; an update of its ends item: 150 counters) still adds every one.
pub async fn stats_of_a_run_with_many_steps_are_all_added(s: &dyn StateStore) {
    let h = header("big", "t", 7_200_000);
    s.create_run(&h, &[]).await.unwrap();
    let hour = BucketQuery {
        scope: ListScope::Tenant("t".into()),
        workflow: Some("summarize".into()),
        from_hour: 7_200_000,
        to_hour: 7_200_000,
    };
    let counts_started = s.counts_started();
    assert_eq!(
        s.stats_buckets(&hour).await.unwrap().is_empty(),
        !counts_started
    );
    let mut buckets = vec![bucket("t", "summarize", h.created_at, "", "")];
    buckets[0].counters.add(names::SUCCEEDED, 1.0);
    for i in 0..130 {
        let mut b = bucket("t", "summarize", h.created_at, &format!("s{i:03}"), "m/x");
        b.ord = i;
        b.counters.add(names::EXECUTIONS, 1.0);
        b.counters.add(names::COST, 0.5);
        buckets.push(b);
    }
    let mut ended = h.clone();
    ended.status = RunStatus::Succeeded;
    s.end_run(&ended, &[ev(1, EventKind::RunSucceeded)], &buckets, &[])
        .await
        .unwrap();
    let got = s
        .stats_buckets(&BucketQuery {
            scope: ListScope::Tenant("t".into()),
            workflow: Some("summarize".into()),
            from_hour: 7_200_000,
            to_hour: 7_200_000,
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 131);
    let executions: u64 = got
        .iter()
        .map(|b| b.counters.count(names::EXECUTIONS))
        .sum();
    assert_eq!(executions, 130);
    // Two counters a step: more than one update of a DynamoDB ends item carries.
    let cost: f64 = got.iter().map(|b| b.counters.get(names::COST)).sum();
    assert!((cost - 65.0).abs() < 1e-9, "{cost}");
    assert_eq!(
        find(&got, "", "").counters.count(names::STARTED),
        u64::from(counts_started)
    );
}
