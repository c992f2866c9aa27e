//! The `StateStore` port on SQLite. Each row mirrors one DynamoDB item, and each conditional
//! write mirrors one condition expression, so the engine sees the same `Conflict`s here as on
//! AWS. The full record is kept as JSON; the few columns beside it exist for keys, conditions and
//! listing, never as a second source of truth (except `version`, which the condition reads).

use crate::db::{is_constraint, Db, DbError};
use async_trait::async_trait;
use rusqlite::{ffi, params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use switchyard_core::ports::{
    check_held, ActivePage, IdempotencyClaim, RunPage, RunQuery, RunSummary, StateStore,
    IDEMPOTENCY_TTL_MS, MAX_LIST_LIMIT, MAX_STEPS_PER_WRITE,
};
use switchyard_core::state::{HistoryEvent, Lease, RunHeader, RunSnapshot, RunStatus, StepRecord};
use switchyard_core::stats::{self, Bucket, BucketKey, BucketQuery, Counters};
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

/// Adds `buckets` to the stored ones (read, add, write back: the job's transaction holds the
/// write lock, so no other writer comes between).
fn add_stats(c: &Connection, buckets: &[Bucket]) -> Result<(), DbError> {
    for b in buckets {
        let k = &b.key;
        let hour = i64::try_from(k.hour).map_err(|_| StoreError::Invalid("hour".into()))?;
        let stored: Option<String> = c
            .prepare_cached(
                "SELECT counters FROM stats_buckets WHERE tenant = ?1 AND hour = ?2
                   AND workflow = ?3 AND step = ?4 AND model = ?5 AND prompt_version = ?6",
            )?
            .query_row(
                params![
                    k.tenant,
                    hour,
                    k.workflow,
                    k.step,
                    k.model,
                    k.prompt_version
                ],
                |r| r.get(0),
            )
            .optional()?;
        let mut counters: Counters = match stored {
            Some(json) => from_json(&json, "stats bucket")?,
            None => Counters::default(),
        };
        counters.merge(&b.counters);
        c.prepare_cached(
            "INSERT INTO stats_buckets (tenant, hour, workflow, step, model, prompt_version, kind,
                                        ord, counters)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (tenant, hour, workflow, step, model, prompt_version)
             DO UPDATE SET kind = excluded.kind, ord = excluded.ord, counters = excluded.counters",
        )?
        .execute(params![
            k.tenant,
            hour,
            k.workflow,
            k.step,
            k.model,
            k.prompt_version,
            b.kind,
            b.ord,
            to_json(&counters, "stats bucket")?
        ])?;
    }
    Ok(())
}

/// The stored buckets `q` selects.
fn read_stats(c: &Connection, q: &BucketQuery) -> Result<Vec<Bucket>, DbError> {
    let from = i64::try_from(q.from_hour).unwrap_or(i64::MAX);
    let to = i64::try_from(q.to_hour).unwrap_or(i64::MAX);
    let sql = match q.scope.tenant() {
        Some(_) => {
            "SELECT tenant, hour, workflow, step, model, prompt_version, kind, ord, counters
             FROM stats_buckets WHERE tenant = ?1 AND hour BETWEEN ?2 AND ?3
               AND (?4 IS NULL OR workflow = ?4)"
        }
        None => {
            "SELECT tenant, hour, workflow, step, model, prompt_version, kind, ord, counters
             FROM stats_buckets WHERE ?1 IS NULL AND hour BETWEEN ?2 AND ?3
               AND (?4 IS NULL OR workflow = ?4)"
        }
    };
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt
        .query_map(params![q.scope.tenant(), from, to, q.workflow], |r| {
            Ok((
                BucketKey {
                    tenant: r.get(0)?,
                    hour: r.get::<_, i64>(1)?.max(0) as u64,
                    workflow: r.get(2)?,
                    step: r.get(3)?,
                    model: r.get(4)?,
                    prompt_version: r.get(5)?,
                },
                r.get::<_, String>(6)?,
                r.get::<_, u32>(7)?,
                r.get::<_, String>(8)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (key, kind, ord, json) in rows {
        out.push(Bucket {
            key,
            kind,
            ord,
            counters: from_json(&json, "stats bucket")?,
        });
    }
    Ok(out)
}

/// A header ready to write: its columns and its JSON at the version it will have.
struct HeaderRow {
    run_id: String,
    tenant: String,
    workflow: String,
    version_label: String,
    status: &'static str,
    created_at: Millis,
    updated_at: Millis,
    json: String,
    version: u64,
}

fn header_row(h: &RunHeader, new_version: u64) -> Result<HeaderRow, StoreError> {
    let mut h = h.clone();
    h.version = new_version;
    Ok(HeaderRow {
        json: to_json(&h, &format!("header of run {}", h.run_id))?,
        status: h.status.as_str(),
        run_id: h.run_id,
        tenant: h.tenant,
        workflow: h.workflow.name,
        version_label: h.workflow.version,
        created_at: h.created_at,
        updated_at: h.updated_at,
        version: new_version,
    })
}

/// Conditional header write: `row` if the stored version is `expected`. Returns the rows
/// changed (0: wrong version or no such run).
fn update_header(c: &Connection, row: &HeaderRow, expected: u64) -> Result<usize, DbError> {
    Ok(c.prepare_cached(
        "UPDATE runs SET tenant = ?1, workflow = ?2, version_label = ?3, status = ?4,
                updated_at = ?5, header = ?6, version = ?7
         WHERE run_id = ?8 AND version = ?9",
    )?
    .execute(params![
        row.tenant,
        row.workflow,
        row.version_label,
        row.status,
        row.updated_at,
        row.json,
        row.version,
        row.run_id,
        expected
    ])?)
}

/// A step record ready to write: its JSON at the version it will have, and its events.
struct StepRow {
    what: String,
    step: String,
    expected: u64,
    json: String,
    events: EventRows,
}

impl StepRow {
    fn new(run_id: &str, rec: &StepRecord, events: &[HistoryEvent]) -> Result<StepRow, StoreError> {
        let what = format!("step {} of run {run_id}", rec.step);
        let mut stored = rec.clone();
        stored.version = rec.version + 1;
        Ok(StepRow {
            json: to_json(&stored, &what)?,
            what,
            step: rec.step.clone(),
            expected: rec.version,
            events: event_rows(run_id, events)?,
        })
    }

    /// The conditional write: insert at version 0, else update if the version still matches.
    fn write(&self, c: &Connection, run_id: &str) -> Result<u64, DbError> {
        let new_version = self.expected + 1;
        if self.expected == 0 {
            c.prepare_cached(
                "INSERT INTO steps (run_id, step, record, version) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![run_id, self.step, self.json, new_version])
            .map_err(|e| insert_err(e, &self.what, run_id))?;
        } else {
            let n = c
                .prepare_cached(
                    "UPDATE steps SET record = ?1, version = ?2
                     WHERE run_id = ?3 AND step = ?4 AND version = ?5",
                )?
                .execute(params![
                    self.json,
                    new_version,
                    run_id,
                    self.step,
                    self.expected
                ])?;
            // A missing record is a failed condition too, as in DynamoDB.
            if n == 0 {
                let msg = format!("{} is not at version {}", self.what, self.expected);
                return Err(StoreError::Conflict(msg).into());
            }
        }
        insert_events(c, run_id, &self.events)?;
        Ok(new_version)
    }
}

/// `Invalid` for a multi-step write with no records or more than the port allows.
fn check_write_count(n: usize) -> Result<(), StoreError> {
    if n == 0 || n > MAX_STEPS_PER_WRITE {
        return Err(StoreError::Invalid(format!(
            "put_steps takes 1 to {MAX_STEPS_PER_WRITE} records, not {n}"
        )));
    }
    Ok(())
}

/// Events serialized on the caller's thread, so the SQLite thread only runs statements.
type EventRows = Vec<(Millis, String)>;

fn event_rows(run_id: &str, events: &[HistoryEvent]) -> Result<EventRows, StoreError> {
    let what = format!("event of run {run_id}");
    events
        .iter()
        .map(|e| Ok((e.at, to_json(e, &what)?)))
        .collect()
}

/// Appends events in the same job as the state change they belong to, so both are one commit
/// (one fsync), as they are one item write or transaction on DynamoDB.
fn insert_events(c: &Connection, run_id: &str, rows: &EventRows) -> Result<(), DbError> {
    let mut stmt =
        c.prepare_cached("INSERT INTO events (run_id, at, event) VALUES (?1, ?2, ?3)")?;
    for (at, json) in rows {
        stmt.execute(params![run_id, at, json])
            .map_err(|e| insert_err(e, "event", run_id))?;
    }
    Ok(())
}

impl SqliteStore {
    pub(crate) fn new(db: Db) -> SqliteStore {
        SqliteStore { db }
    }
}

impl SqliteStore {
    /// The conditional header write of `put_header` and `end_run`, with its events and the
    /// stats buckets to add, in one transaction.
    async fn write_header(
        &self,
        h: &RunHeader,
        events: &[HistoryEvent],
        buckets: Vec<Bucket>,
        steps: Vec<StepRow>,
    ) -> Result<u64, StoreError> {
        let expected_version = h.version;
        let new_version = expected_version + 1;
        let run_id = h.run_id.clone();
        let row = header_row(h, new_version)?;
        let rows = event_rows(&run_id, events)?;
        self.db
            .write(move |c| {
                if update_header(c, &row, expected_version)? == 1 {
                    // Held-back records first (their history goes before the header's); a
                    // record that exists already fails the job, which rolls back the header.
                    for step in &steps {
                        step.write(c, &run_id)?;
                    }
                    insert_events(c, &run_id, &rows)?;
                    add_stats(c, &buckets)?;
                    return Ok(new_version);
                }
                let exists = c
                    .query_row(
                        "SELECT 1 FROM runs WHERE run_id = ?1",
                        [&run_id],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                Err(if exists {
                    StoreError::Conflict(format!(
                        "run {run_id} is not at version {expected_version}"
                    ))
                } else {
                    StoreError::NotFound(format!("run {run_id}"))
                }
                .into())
            })
            .await
    }
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn create_run(&self, h: &RunHeader, events: &[HistoryEvent]) -> Result<(), StoreError> {
        let row = header_row(h, 1)?;
        let started = stats::started(h);
        let rows = event_rows(&row.run_id, events)?;
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO runs (run_id, tenant, workflow, version_label, status, created_at,
                                       updated_at, header, version)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    row.run_id,
                    row.tenant,
                    row.workflow,
                    row.version_label,
                    row.status,
                    row.created_at,
                    row.updated_at,
                    row.json,
                    row.version
                ])
                .map_err(|e| insert_err(e, &format!("run {}", row.run_id), &row.run_id))?;
                insert_events(c, &row.run_id, &rows)?;
                add_stats(c, &[started])
            })
            .await
    }

    async fn load(&self, run_id: &str) -> Result<Option<RunSnapshot>, StoreError> {
        let run_id = run_id.to_string();
        // One job is one transaction: another process cannot slip a write between the header
        // and the steps.
        self.db
            .read(move |c| {
                let Some(header) = read_header(c, &run_id)? else {
                    return Ok(None);
                };
                let mut stmt = c.prepare_cached(
                    "SELECT step, record, version FROM steps WHERE run_id = ?1 ORDER BY rowid",
                )?;
                let rows = stmt
                    .query_map([&run_id], |r| {
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
            .await
    }

    async fn load_header(&self, run_id: &str) -> Result<Option<RunHeader>, StoreError> {
        let run_id = run_id.to_string();
        self.db.read(move |c| read_header(c, &run_id)).await
    }

    async fn put_header(&self, h: &RunHeader, events: &[HistoryEvent]) -> Result<u64, StoreError> {
        self.write_header(h, events, Vec::new(), Vec::new()).await
    }

    async fn end_run(
        &self,
        h: &RunHeader,
        events: &[HistoryEvent],
        buckets: &[Bucket],
        steps: &[(&StepRecord, &[HistoryEvent])],
    ) -> Result<u64, StoreError> {
        check_held(steps)?;
        let rows = steps
            .iter()
            .map(|(rec, events)| StepRow::new(&h.run_id, rec, events))
            .collect::<Result<Vec<_>, _>>()?;
        self.write_header(h, events, buckets.to_vec(), rows).await
    }

    async fn stats_buckets(&self, q: &BucketQuery) -> Result<Vec<Bucket>, StoreError> {
        let q = q.clone();
        self.db.read(move |c| read_stats(c, &q)).await
    }

    async fn acquire_lease(
        &self,
        run_id: &str,
        lease: &Lease,
        now: Millis,
    ) -> Result<RunHeader, StoreError> {
        let run_id = run_id.to_string();
        let lease = lease.clone();
        // The write lock of the job's transaction is taken before the read, so another process
        // cannot write between the check and the update.
        self.db
            .write(move |c| {
                let mut h = read_header(c, &run_id)?
                    .ok_or_else(|| StoreError::NotFound(format!("run {run_id}")))?;
                if let Some(held) = &h.lease {
                    if held.until > now && held.owner != lease.owner {
                        let msg = format!("lease held by {} until {}", held.owner, held.until);
                        return Err(StoreError::Conflict(msg).into());
                    }
                }
                let expected = h.version;
                h.lease = Some(lease);
                if !h.status.is_terminal() {
                    h.status = RunStatus::Running;
                }
                h.version = expected + 1;
                h.updated_at = now;
                update_header(c, &header_row(&h, h.version)?, expected)?;
                Ok(h)
            })
            .await
    }

    async fn put_step(
        &self,
        run_id: &str,
        rec: &StepRecord,
        events: &[HistoryEvent],
    ) -> Result<u64, StoreError> {
        let row = StepRow::new(run_id, rec, events)?;
        let run_id = run_id.to_string();
        self.db.write(move |c| row.write(c, &run_id)).await
    }

    async fn put_steps(
        &self,
        run_id: &str,
        writes: &[(&StepRecord, &[HistoryEvent])],
    ) -> Result<Vec<u64>, StoreError> {
        check_write_count(writes.len())?;
        let rows = writes
            .iter()
            .map(|(rec, events)| StepRow::new(run_id, rec, events))
            .collect::<Result<Vec<_>, _>>()?;
        let run_id = run_id.to_string();
        // One job is one transaction (a savepoint under group commit): a failed condition
        // rolls back the rows written before it.
        self.db
            .write(move |c| rows.iter().map(|r| r.write(c, &run_id)).collect())
            .await
    }

    async fn active_runs(
        &self,
        created_from: Millis,
        created_before: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ActivePage, StoreError> {
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        let after = after.map(decode_cursor).transpose()?;
        self.db
            .read(move |c| {
                let (at, id) = after.unwrap_or((0, String::new()));
                let mut stmt = c.prepare_cached(
                    "SELECT header, version FROM runs
                     WHERE status IN ('pending', 'running', 'waiting') AND created_at <= ?1
                       AND created_at >= ?5 AND (created_at, run_id) > (?2, ?3)
                     ORDER BY created_at, run_id LIMIT ?4",
                )?;
                let rows = stmt
                    .query_map(
                        params![created_before, at, id, limit as i64 + 1, created_from],
                        |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)),
                    )?
                    .collect::<Result<Vec<_>, _>>()?;
                let mut runs = Vec::with_capacity(rows.len());
                for (json, version) in rows {
                    let mut h: RunHeader = from_json(&json, "header of an active run")?;
                    h.version = version;
                    runs.push(h);
                }
                let more = runs.len() > limit;
                runs.truncate(limit);
                let cursor = more
                    .then(|| runs.last().map(|h| encode_cursor(h.created_at, &h.run_id)))
                    .flatten();
                Ok(ActivePage { runs, cursor })
            })
            .await
    }

    async fn append_events(&self, run_id: &str, events: &[HistoryEvent]) -> Result<(), StoreError> {
        let run_id = run_id.to_string();
        let rows = event_rows(&run_id, events)?;
        self.db
            .write(move |c| insert_events(c, &run_id, &rows))
            .await
    }

    async fn events(&self, run_id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        let run_id = run_id.to_string();
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT seq, event FROM events WHERE run_id = ?1 ORDER BY seq",
                )?;
                let rows = stmt
                    .query_map([&run_id], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                let parse = |(seq, json): (i64, String)| {
                    from_json(&json, &format!("event {seq} of run {run_id}"))
                };
                Ok(rows.into_iter().map(parse).collect::<Result<_, _>>()?)
            })
            .await
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        let limit = query.limit.clamp(1, MAX_LIST_LIMIT);
        let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
        let tenant = query.scope.tenant().map(str::to_string);
        let status = query.status.map(|s| s.as_str());
        let workflow = query.workflow.clone();
        self.db
            .read(move |c| {
                list_page(
                    c,
                    &Filters {
                        tenant,
                        status,
                        workflow,
                    },
                    after,
                    limit,
                )
            })
            .await
    }

    async fn claim_idempotency(
        &self,
        tenant: &str,
        key: &str,
        body_hash: &str,
        run_id: &str,
        now: Millis,
    ) -> Result<IdempotencyClaim, StoreError> {
        let (tenant, key) = (tenant.to_string(), key.to_string());
        let (body_hash, run_id) = (body_hash.to_string(), run_id.to_string());
        self.db
            .write(move |c| {
                // An expired claim is overwritten, as if the key were new (DynamoDB: a
                // conditional put on `attribute_not_exists OR created_at <= :expired`).
                let expired = now.saturating_sub(IDEMPOTENCY_TTL_MS);
                let inserted = c.execute(
                    "INSERT INTO idempotency (tenant, key, body_hash, run_id, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (tenant, key) DO UPDATE SET
                       body_hash = excluded.body_hash, run_id = excluded.run_id,
                       created_at = excluded.created_at
                     WHERE idempotency.created_at <= ?6",
                    params![tenant, key, body_hash, run_id, now, expired],
                )?;
                if inserted == 1 {
                    return Ok(IdempotencyClaim::New);
                }
                let (stored_hash, run_id): (String, String) = c.query_row(
                    "SELECT body_hash, run_id FROM idempotency WHERE tenant = ?1 AND key = ?2",
                    params![tenant, key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                Ok(IdempotencyClaim::Existing {
                    run_id,
                    same_body: stored_hash == body_hash,
                })
            })
            .await
    }

    async fn record_webhook_id(&self, id: &str, now: Millis) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.db
            .write(move |c| {
                let n = c.execute(
                    "INSERT INTO webhook_ids (id, seen_at) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING",
                    params![id, now],
                )?;
                Ok(n == 1)
            })
            .await
    }
}

/// A listing's filters, owned so they can travel to the SQLite thread.
struct Filters {
    tenant: Option<String>,
    status: Option<&'static str>,
    workflow: Option<String>,
}

/// One page of runs, newest first, strictly after the cursor's (created_at, run_id).
fn list_page(
    c: &Connection,
    f: &Filters,
    after: Option<(i64, String)>,
    limit: usize,
) -> Result<RunPage, DbError> {
    // `?N IS NULL` makes each filter optional without building SQL strings; the row
    // comparison continues strictly after the cursor's (created_at, run_id).
    const WHERE: &str = "WHERE (?1 IS NULL OR tenant = ?1)
           AND (?2 IS NULL OR status = ?2)
           AND (?3 IS NULL OR workflow = ?3)
           AND (?4 IS NULL OR (created_at, run_id) < (?4, ?5))";
    let (after_at, after_id) = match &after {
        Some((at, id)) => (Some(*at), Some(id.as_str())),
        None => (None, None),
    };
    let mut stmt = c.prepare_cached(&format!(
        "SELECT run_id, tenant, workflow, version_label, status, created_at, updated_at
         FROM runs {WHERE} ORDER BY created_at DESC, run_id DESC LIMIT ?6"
    ))?;
    let filters = params![
        f.tenant,
        f.status,
        f.workflow,
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
            .map_err(|e| StoreError::Corrupt(format!("status of run {}: {e}", summary.run_id)))?;
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
                params![f.tenant, f.status, f.workflow, at, id],
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
}

/// A listing cursor: `c1.<created_at>.<run_id>` of the last row of a page.
fn encode_cursor(created_at: Millis, run_id: &str) -> String {
    switchyard_core::ports::encode_cursor("c1", created_at, run_id)
}

fn decode_cursor(cursor: &str) -> Result<(i64, String), StoreError> {
    let (at, id) = switchyard_core::ports::decode_cursor("c1", cursor)?;
    let at = i64::try_from(at).map_err(|_| {
        StoreError::Invalid(format!("`{cursor}` is not a cursor this store handed out"))
    })?;
    Ok((at, id))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::Backend;
    use std::sync::Arc;
    use switchyard_contract::state::header;

    fn fresh() -> (tempfile::TempDir, Arc<dyn StateStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Backend::open(dir.path()).unwrap().store();
        (dir, Arc::new(store))
    }

    // The port contract, on SQLite: the same rules the AWS adapters are held to.
    switchyard_contract::state_store_contract!(fresh());

    #[tokio::test]
    async fn state_survives_reopening_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let s = Backend::open(dir.path()).unwrap().store();
        s.create_run(&header("r1", "t", 100), &[]).await.unwrap();
        s.put_step("r1", &StepRecord::pending("a"), &[])
            .await
            .unwrap();
        let before = s.load("r1").await.unwrap();
        drop(s);
        let again = Backend::open(dir.path()).unwrap().store();
        assert_eq!(again.load("r1").await.unwrap(), before);
    }

    #[tokio::test]
    async fn damaged_json_is_corrupt_naming_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let s = b.store();
        s.create_run(&header("r1", "t", 1), &[]).await.unwrap();
        s.put_step("r1", &StepRecord::pending("a"), &[])
            .await
            .unwrap();
        b.db.write(|c| Ok(c.execute("UPDATE steps SET record = '{'", [])?))
            .await
            .unwrap();
        match s.load("r1").await {
            Err(StoreError::Corrupt(m)) => assert!(m.contains("step a of run r1"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
