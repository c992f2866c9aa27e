//! The `StateStore` port on SQLite. Each row mirrors one DynamoDB item, and each conditional
//! write mirrors one condition expression, so the engine sees the same `Conflict`s here as on
//! AWS. The full record is kept as JSON; the few columns beside it exist for keys, conditions and
//! listing, never as a second source of truth (except `version`, which the condition reads).

use crate::db::{is_constraint, Db, DbError};
use async_trait::async_trait;
use rusqlite::{ffi, params, Connection, OptionalExtension, TransactionBehavior};
use serde::de::DeserializeOwned;
use switchyard_core::ports::{
    IdempotencyClaim, RunPage, RunQuery, RunSummary, StateStore, MAX_LIST_LIMIT,
};
use switchyard_core::state::{HistoryEvent, Lease, RunHeader, RunSnapshot, RunStatus, StepRecord};
use switchyard_core::{Millis, StoreError};

/// A handle on the run state; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    db: Db,
}

fn to_json<T: serde::Serialize>(value: &T, what: &str) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn from_json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Turns a failed insert into the port's words: a duplicate key is a `Conflict`, a missing
/// parent run is `NotFound`.
fn insert_err(e: rusqlite::Error, what: &str, run_id: &str) -> DbError {
    if is_constraint(&e, ffi::SQLITE_CONSTRAINT_PRIMARYKEY) {
        StoreError::Conflict(format!("{what} already exists")).into()
    } else if is_constraint(&e, ffi::SQLITE_CONSTRAINT_FOREIGNKEY) {
        StoreError::NotFound(format!("run {run_id}")).into()
    } else {
        e.into()
    }
}

/// The stored header, with the version column (what conditions compare against) as its version.
fn read_header(c: &Connection, run_id: &str) -> Result<Option<RunHeader>, DbError> {
    let row: Option<(String, u64)> = c
        .query_row(
            "SELECT header, version FROM runs WHERE run_id = ?1",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((json, version)) = row else {
        return Ok(None);
    };
    let mut h: RunHeader = from_json(&json, &format!("header of run {run_id}"))?;
    h.version = version;
    Ok(Some(h))
}

/// Conditional header write; returns the rows changed (0: wrong version or no such run).
fn update_header(c: &Connection, h: &RunHeader, expected: u64) -> Result<usize, DbError> {
    let json = to_json(h, &format!("header of run {}", h.run_id))?;
    Ok(c.execute(
        "UPDATE runs SET tenant = ?1, workflow = ?2, version_label = ?3, status = ?4,
                updated_at = ?5, header = ?6, version = ?7
         WHERE run_id = ?8 AND version = ?9",
        params![
            h.tenant,
            h.workflow.name,
            h.workflow.version,
            h.status.as_str(),
            h.updated_at,
            json,
            h.version,
            h.run_id,
            expected
        ],
    )?)
}

impl SqliteStore {
    pub(crate) fn new(db: Db) -> SqliteStore {
        SqliteStore { db }
    }
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn create_run(&self, h: &RunHeader) -> Result<(), StoreError> {
        let json = to_json(h, &format!("header of run {}", h.run_id))?;
        self.db.with(|c| {
            c.execute(
                "INSERT INTO runs (run_id, tenant, workflow, version_label, status, created_at,
                                   updated_at, header, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    h.run_id,
                    h.tenant,
                    h.workflow.name,
                    h.workflow.version,
                    h.status.as_str(),
                    h.created_at,
                    h.updated_at,
                    json,
                    h.version
                ],
            )
            .map_err(|e| insert_err(e, &format!("run {}", h.run_id), &h.run_id))?;
            Ok(())
        })
    }

    async fn load(&self, run_id: &str) -> Result<Option<RunSnapshot>, StoreError> {
        self.db.with(|c| {
            // One read transaction, so another process cannot slip a write between the header
            // and the steps.
            let tx = c.transaction()?;
            let Some(header) = read_header(&tx, run_id)? else {
                return Ok(None);
            };
            let mut stmt = tx.prepare(
                "SELECT step, record, version FROM steps WHERE run_id = ?1 ORDER BY rowid",
            )?;
            let rows = stmt
                .query_map([run_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut steps = Vec::with_capacity(rows.len());
            for (step, json, version) in rows {
                let mut rec: StepRecord =
                    from_json(&json, &format!("step {step} of run {run_id}"))?;
                rec.version = version;
                steps.push(rec);
            }
            Ok(Some(RunSnapshot { header, steps }))
        })
    }

    async fn put_header(&self, h: &RunHeader, expected_version: u64) -> Result<(), StoreError> {
        self.db.with(|c| {
            if update_header(c, h, expected_version)? == 1 {
                return Ok(());
            }
            let exists = c
                .query_row("SELECT 1 FROM runs WHERE run_id = ?1", [&h.run_id], |_| {
                    Ok(())
                })
                .optional()?
                .is_some();
            Err(if exists {
                StoreError::Conflict(format!(
                    "run {} is not at version {expected_version}",
                    h.run_id
                ))
            } else {
                StoreError::NotFound(format!("run {}", h.run_id))
            }
            .into())
        })
    }

    async fn acquire_lease(
        &self,
        run_id: &str,
        lease: &Lease,
        now: Millis,
    ) -> Result<RunHeader, StoreError> {
        self.db.with(|c| {
            // IMMEDIATE takes the write lock before the read, so another process cannot write
            // between the check and the update.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut h = read_header(&tx, run_id)?
                .ok_or_else(|| StoreError::NotFound(format!("run {run_id}")))?;
            if let Some(held) = &h.lease {
                if held.until > now && held.owner != lease.owner {
                    let msg = format!("lease held by {} until {}", held.owner, held.until);
                    return Err(StoreError::Conflict(msg).into());
                }
            }
            let expected = h.version;
            h.lease = Some(lease.clone());
            h.version = expected + 1;
            h.updated_at = now;
            update_header(&tx, &h, expected)?;
            tx.commit()?;
            Ok(h)
        })
    }

    async fn put_step(
        &self,
        run_id: &str,
        rec: &StepRecord,
        expected_version: u64,
    ) -> Result<(), StoreError> {
        let what = format!("step {} of run {run_id}", rec.step);
        let json = to_json(rec, &what)?;
        self.db.with(|c| {
            if expected_version == 0 {
                c.execute(
                    "INSERT INTO steps (run_id, step, record, version) VALUES (?1, ?2, ?3, ?4)",
                    params![run_id, rec.step, json, rec.version],
                )
                .map_err(|e| insert_err(e, &what, run_id))?;
                return Ok(());
            }
            let n = c.execute(
                "UPDATE steps SET record = ?1, version = ?2
                 WHERE run_id = ?3 AND step = ?4 AND version = ?5",
                params![json, rec.version, run_id, rec.step, expected_version],
            )?;
            // A missing record is a failed condition too, as in DynamoDB.
            if n == 0 {
                let msg = format!("{what} is not at version {expected_version}");
                return Err(StoreError::Conflict(msg).into());
            }
            Ok(())
        })
    }

    async fn append_events(&self, run_id: &str, events: &[HistoryEvent]) -> Result<(), StoreError> {
        let rows = events
            .iter()
            .map(|e| Ok((e.at, to_json(e, &format!("event of run {run_id}"))?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.db.with(|c| {
            let tx = c.transaction()?;
            for (at, json) in &rows {
                tx.execute(
                    "INSERT INTO events (run_id, at, event) VALUES (?1, ?2, ?3)",
                    params![run_id, at, json],
                )
                .map_err(|e| insert_err(e, "event", run_id))?;
            }
            Ok(tx.commit()?)
        })
    }

    async fn events(&self, run_id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        self.db.with(|c| {
            let mut stmt =
                c.prepare("SELECT seq, event FROM events WHERE run_id = ?1 ORDER BY seq")?;
            let rows = stmt
                .query_map([run_id], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let parse = |(seq, json): (i64, String)| {
                from_json(&json, &format!("event {seq} of run {run_id}"))
            };
            Ok(rows.into_iter().map(parse).collect::<Result<_, _>>()?)
        })
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        let limit = query.limit.clamp(1, MAX_LIST_LIMIT);
        let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
        let (after_at, after_id) = match &after {
            Some((at, id)) => (Some(*at), Some(id.as_str())),
            None => (None, None),
        };
        let status = query.status.map(|s| s.as_str());
        self.db.with(|c| {
            // `?N IS NULL` makes each filter optional without building SQL strings; the row
            // comparison continues strictly after the cursor's (created_at, run_id).
            const WHERE: &str = "WHERE (?1 IS NULL OR tenant = ?1)
                   AND (?2 IS NULL OR status = ?2)
                   AND (?3 IS NULL OR workflow = ?3)
                   AND (?4 IS NULL OR (created_at, run_id) < (?4, ?5))";
            let mut stmt = c.prepare(&format!(
                "SELECT run_id, tenant, workflow, version_label, status, created_at, updated_at
                 FROM runs {WHERE} ORDER BY created_at DESC, run_id DESC LIMIT ?6"
            ))?;
            let filters = params![
                query.tenant,
                status,
                query.workflow,
                after_at,
                after_id,
                i64::try_from(limit + 1).unwrap_or(i64::MAX)
            ];
            let rows = stmt
                .query_map(filters, |r| {
                    let summary = RunSummary {
                        run_id: r.get(0)?,
                        tenant: r.get(1)?,
                        workflow: r.get(2)?,
                        version: r.get(3)?,
                        status: RunStatus::Pending, // replaced below, where errors are ours
                        created_at: r.get(5)?,
                        updated_at: r.get(6)?,
                    };
                    Ok((summary, r.get::<_, String>(4)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut runs = Vec::with_capacity(rows.len());
            for (mut summary, status) in rows {
                summary.status = serde_json::from_value(serde_json::Value::String(status))
                    .map_err(|e| {
                        StoreError::Corrupt(format!("status of run {}: {e}", summary.run_id))
                    })?;
                runs.push(summary);
            }
            // One row more than the page was read to know whether another page follows.
            if runs.len() <= limit {
                return Ok(RunPage {
                    runs,
                    cursor: None,
                    remaining: Some(0),
                });
            }
            runs.truncate(limit);
            let last = runs.last().map(|r| (r.created_at, r.run_id.clone()));
            let (remaining, cursor) = match last {
                Some((at, id)) => {
                    let n: i64 = c.query_row(
                        &format!("SELECT COUNT(*) FROM runs {WHERE}"),
                        params![query.tenant, status, query.workflow, at, id],
                        |r| r.get(0),
                    )?;
                    (Some(n.max(0) as u64), Some(encode_cursor(at, &id)))
                }
                None => (Some(0), None),
            };
            Ok(RunPage {
                runs,
                cursor,
                remaining,
            })
        })
    }

    async fn claim_idempotency(
        &self,
        tenant: &str,
        key: &str,
        body_hash: &str,
        run_id: &str,
        now: Millis,
    ) -> Result<IdempotencyClaim, StoreError> {
        self.db.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let inserted = tx.execute(
                "INSERT INTO idempotency (tenant, key, body_hash, run_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (tenant, key) DO NOTHING",
                params![tenant, key, body_hash, run_id, now],
            )?;
            let claim = if inserted == 1 {
                IdempotencyClaim::New
            } else {
                let (stored_hash, run_id): (String, String) = tx.query_row(
                    "SELECT body_hash, run_id FROM idempotency WHERE tenant = ?1 AND key = ?2",
                    params![tenant, key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                IdempotencyClaim::Existing {
                    run_id,
                    same_body: stored_hash == body_hash,
                }
            };
            tx.commit()?;
            Ok(claim)
        })
    }

    async fn record_webhook_id(&self, id: &str, now: Millis) -> Result<bool, StoreError> {
        self.db.with(|c| {
            let n = c.execute(
                "INSERT INTO webhook_ids (id, seen_at) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING",
                params![id, now],
            )?;
            Ok(n == 1)
        })
    }
}

/// A listing cursor: `c1.<created_at>.<run_id>` of the last row of a page. Callers treat it as
/// opaque; the prefix lets a later format be told apart.
fn encode_cursor(created_at: Millis, run_id: &str) -> String {
    format!("c1.{created_at}.{run_id}")
}

fn decode_cursor(cursor: &str) -> Result<(i64, String), StoreError> {
    let bad = || StoreError::Invalid(format!("`{cursor}` is not a cursor this store handed out"));
    let rest = cursor.strip_prefix("c1.").ok_or_else(bad)?;
    let (at, id) = rest.split_once('.').ok_or_else(bad)?;
    let at = at.parse::<i64>().map_err(|_| bad())?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok((at, id.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;
    use crate::Backend;
    use serde_json::json;
    use switchyard_core::state::{EventKind, StepStatus, ValueRef, WorkflowPin};

    pub(crate) fn header(run_id: &str, tenant: &str, created_at: Millis) -> RunHeader {
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
            version: 1,
        }
    }

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = Backend::open(dir.path()).unwrap().store();
        (dir, store)
    }

    #[tokio::test]
    async fn create_load_round_trip_and_reopen() {
        let (dir, s) = store();
        assert!(s.load("r1").await.unwrap().is_none());
        let h = header("r1", "t", 100);
        s.create_run(&h).await.unwrap();
        assert!(matches!(
            s.create_run(&h).await,
            Err(StoreError::Conflict(_))
        ));
        let mut a = StepRecord::pending("a");
        a.version = 1;
        let mut b = StepRecord::pending("b");
        b.version = 1;
        b.status = StepStatus::Succeeded;
        // Inserted b first: load must return insertion order, not name order.
        s.put_step("r1", &b, 0).await.unwrap();
        s.put_step("r1", &a, 0).await.unwrap();
        let want = RunSnapshot {
            header: h,
            steps: vec![b, a],
        };
        assert_eq!(s.load("r1").await.unwrap(), Some(want.clone()));
        drop(s);
        let again = Backend::open(dir.path()).unwrap().store();
        assert_eq!(again.load("r1").await.unwrap(), Some(want));
    }

    #[tokio::test]
    async fn put_header_is_conditional() {
        let (_dir, s) = store();
        let mut h = header("r1", "t", 100);
        s.create_run(&h).await.unwrap();
        h.status = RunStatus::Running;
        h.version = 2;
        s.put_header(&h, 1).await.unwrap();
        // A second writer that loaded version 1 loses.
        let mut stale = h.clone();
        stale.status = RunStatus::Cancelled;
        assert!(matches!(
            s.put_header(&stale, 1).await,
            Err(StoreError::Conflict(_))
        ));
        let ghost = header("ghost", "t", 1);
        assert!(matches!(
            s.put_header(&ghost, 1).await,
            Err(StoreError::NotFound(_))
        ));
        let loaded = s.load("r1").await.unwrap().unwrap().header;
        assert_eq!((loaded.status, loaded.version), (RunStatus::Running, 2));
    }

    #[tokio::test]
    async fn put_step_is_conditional() {
        let (_dir, s) = store();
        s.create_run(&header("r1", "t", 1)).await.unwrap();
        let mut rec = StepRecord::pending("a");
        rec.version = 1;
        s.put_step("r1", &rec, 0).await.unwrap();
        // (expected version, record version, wants conflict)
        let table = [
            (0, 1, true),
            (2, 3, true),
            (1, 2, false),
            (1, 2, true),
            (2, 3, false),
        ];
        for (expected, version, conflict) in table {
            rec.version = version;
            rec.attempt = version as u32;
            let got = s.put_step("r1", &rec, expected).await;
            assert_eq!(
                matches!(got, Err(StoreError::Conflict(_))),
                conflict,
                "expected {expected}: {got:?}"
            );
        }
        let steps = s.load("r1").await.unwrap().unwrap().steps;
        assert_eq!((steps[0].version, steps[0].attempt), (3, 3));
        assert!(matches!(
            s.put_step("nope", &rec, 0).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn lease_rules() {
        let (_dir, s) = store();
        s.create_run(&header("r1", "t", 1)).await.unwrap();
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
                    assert_eq!(s.load("r1").await.unwrap().unwrap().header, h);
                }
                Err(StoreError::Conflict(m)) => {
                    assert!(!ok, "{owner} at {now}: {m}");
                    assert!(m.contains("lease held by"), "{m}");
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(matches!(
            s.acquire_lease("nope", &lease("w1", 1), 0).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn idempotency_and_webhooks() {
        let (_dir, s) = store();
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
                want
            );
        }
        for (id, new) in [("w1", true), ("w2", true), ("w1", false)] {
            assert_eq!(s.record_webhook_id(id, 5).await.unwrap(), new, "{id}");
        }
    }

    fn existing(run_id: &str, same_body: bool) -> IdempotencyClaim {
        IdempotencyClaim::Existing {
            run_id: run_id.into(),
            same_body,
        }
    }

    #[tokio::test]
    async fn events_keep_order_per_run() {
        let (_dir, s) = store();
        s.create_run(&header("r1", "t", 1)).await.unwrap();
        s.create_run(&header("r2", "t", 1)).await.unwrap();
        let ev = |at, kind| HistoryEvent::run(at, kind, json!(null));
        // Timestamps deliberately out of order: history order is append order.
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

    #[tokio::test]
    async fn list_runs_newest_first_with_filter() {
        let (_dir, s) = store();
        for (id, tenant, at) in [
            ("a", "t1", 10),
            ("b", "t2", 30),
            ("c", "t1", 20),
            ("d", "t1", 20),
        ] {
            s.create_run(&header(id, tenant, at)).await.unwrap();
        }
        let q = |tenant: Option<&str>, limit: usize| RunQuery {
            tenant: tenant.map(str::to_string),
            limit,
            ..RunQuery::default()
        };
        // (tenant, limit, the page's run ids, how many remain after it)
        type Row<'a> = (Option<&'a str>, usize, &'a [&'a str], Option<u64>);
        let table: [Row; 4] = [
            (None, 10, &["b", "d", "c", "a"], Some(0)),
            (Some("t1"), 10, &["d", "c", "a"], Some(0)),
            (Some("t1"), 2, &["d", "c"], Some(1)),
            (Some("t9"), 10, &[], Some(0)),
        ];
        for (tenant, limit, want, remaining) in table {
            let got = s.list_runs(&q(tenant, limit)).await.unwrap();
            let ids: Vec<_> = got.runs.iter().map(|r| r.run_id.as_str()).collect();
            assert_eq!(ids, want, "{tenant:?} {limit}");
            assert_eq!(got.remaining, remaining, "{tenant:?} {limit}");
            assert_eq!(got.cursor.is_some(), remaining != Some(0));
        }
        // Pages of one, by cursor, visit every run once in order (ties on created_at too).
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
        assert_eq!(seen, ["b", "d", "c", "a"]);
        // Filters by workflow and status.
        let none = RunQuery {
            workflow: Some("other".into()),
            ..q(None, 10)
        };
        assert!(s.list_runs(&none).await.unwrap().runs.is_empty());
        let pending = RunQuery {
            status: Some(RunStatus::Pending),
            ..q(Some("t2"), 10)
        };
        assert_eq!(s.list_runs(&pending).await.unwrap().runs.len(), 1);
        // A made-up cursor is the caller's mistake.
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

    #[tokio::test]
    async fn damaged_json_is_corrupt_naming_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let s = b.store();
        s.create_run(&header("r1", "t", 1)).await.unwrap();
        let mut rec = StepRecord::pending("a");
        rec.version = 1;
        s.put_step("r1", &rec, 0).await.unwrap();
        b.db.with(|c| Ok(c.execute("UPDATE steps SET record = '{'", [])?))
            .unwrap();
        match s.load("r1").await {
            Err(StoreError::Corrupt(m)) => assert!(m.contains("step a of run r1"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
