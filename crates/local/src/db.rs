//! Opening the data directory: the SQLite file, its schema, and the shared connection.

use crate::{FsBlobStore, SqliteQueue, SqliteStore};
use rusqlite::{Connection, ErrorCode};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use switchyard_core::ports::QueueName;
use switchyard_core::{Clock, StoreError};
use tokio::sync::oneshot;

/// The database file name inside the data directory.
pub const DB_FILE: &str = "switchyard.sqlite";

/// Schema migrations; entry `i` brings the schema from version `i` to `i + 1`. Append only:
/// a released migration is never edited, because existing files already ran it.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    workflow      TEXT NOT NULL,
    version_label TEXT NOT NULL,
    status        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    header        TEXT NOT NULL,
    version       INTEGER NOT NULL
);
CREATE INDEX runs_newest ON runs(created_at DESC, run_id DESC);
CREATE INDEX runs_by_tenant ON runs(tenant, created_at DESC, run_id DESC);
CREATE TABLE steps (
    run_id  TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    step    TEXT NOT NULL,
    record  TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE events (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    at     INTEGER NOT NULL,
    event  TEXT NOT NULL
);
CREATE INDEX events_by_run ON events(run_id, seq);
CREATE TABLE idempotency (
    tenant     TEXT NOT NULL,
    key        TEXT NOT NULL,
    body_hash  TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE TABLE webhook_ids (
    id      TEXT PRIMARY KEY,
    seen_at INTEGER NOT NULL
);
CREATE TABLE queue_messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT NOT NULL,
    body          TEXT NOT NULL,
    visible_at    INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT UNIQUE,
    sent_at       INTEGER NOT NULL
);
CREATE INDEX queue_visible ON queue_messages(queue, visible_at);
CREATE TABLE dead_letters (
    id            INTEGER PRIMARY KEY,
    queue         TEXT NOT NULL,
    body          TEXT NOT NULL,
    receive_count INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    failed_at     INTEGER NOT NULL
);
"#,
    r#"
-- The stuck-run sweep (core::recovery) reads the runs that have not ended, oldest first.
CREATE INDEX runs_active ON runs(created_at, run_id)
    WHERE status IN ('pending', 'running', 'waiting');
"#,
    r#"
-- Stats aggregates (core::stats): one row per tenant x workflow x UTC hour (the run bucket,
-- step = '') and per step x model x prompt version in it; `counters` is the JSON object of
-- counter name -> sum, added to in the transaction that creates or ends a run.
CREATE TABLE stats_buckets (
    tenant         TEXT NOT NULL,
    hour           INTEGER NOT NULL,
    workflow       TEXT NOT NULL,
    step           TEXT NOT NULL,
    model          TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    kind           TEXT NOT NULL,
    ord            INTEGER NOT NULL,
    counters       TEXT NOT NULL,
    PRIMARY KEY (tenant, hour, workflow, step, model, prompt_version)
) WITHOUT ROWID;
CREATE INDEX stats_by_hour ON stats_buckets(hour);
"#,
];

/// The schema version this build writes: the number of migrations.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How often a first open retries switching a new file to WAL while another opener holds it
/// (20 ms apart: at most about 5 s, like the busy timeout).
const WAL_SWITCH_TRIES: u32 = 250;

/// The most jobs one group commit takes. Bounds how long the first job of a batch waits for
/// the last one's statements (each is an indexed point read or write, well under 0.1 ms).
pub const MAX_GROUP_COMMIT: usize = 64;

/// Under concurrency (the last batch had several jobs), how long the writer waits for each
/// further job, up to the last batch's size, before committing: a fraction of one fsync.
pub const GROUP_COMMIT_WAIT: Duration = Duration::from_micros(150);

/// The handle on the one connection. Every store and queue call is a *job*: a closure run on
/// the connection inside its own savepoint of a batch transaction. Who runs the batch depends on
/// the durability setting, because what a commit costs does:
///
/// - `normal`: a commit writes the WAL without an fsync and takes microseconds, so the caller
///   runs its job itself, on its own thread, under a mutex (a batch of one). Handing it to
///   another thread would cost more than the work: measured, 0.39 ms per step instead of
///   0.09 ms, from the two thread wake-ups per call.
/// - `full`: every commit is an fsync (~0.4 ms on the CI machine). Jobs go to a dedicated
///   thread (the *writer*), so no async runtime thread ever blocks on a sync, and whatever
///   arrives while one commit is syncing is committed together with one fsync (group commit).
///
/// Either way a job's answer is sent only after the commit holding its writes returned, so
/// `Ok` means durable at the chosen setting, and a job that fails is rolled back to its
/// savepoint alone while the others of its batch still commit.
#[derive(Clone)]
pub(crate) struct Db {
    runner: Runner,
    stats: Arc<Stats>,
}

#[derive(Clone)]
enum Runner {
    /// The caller runs its job (see [`Db`]).
    Inline(Arc<Mutex<Connection>>),
    /// The writer thread runs it, in group commits.
    Writer(mpsc::Sender<Job>),
}

/// What the writer has done, for benchmarks and tests (relaxed counters: figures, not locks).
#[derive(Default)]
struct Stats {
    jobs: AtomicU64,
    write_commits: AtomicU64,
    changed: AtomicU64,
}

/// Counters of the SQLite thread since the backend was opened: `jobs` store and queue calls
/// run, `write_commits` transactions that could write (each one fsync under `FULL`; several
/// jobs share one when they arrive together), `changed` committed jobs that changed at least
/// one row (the writes a per-item-billed store such as DynamoDB would be charged for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbStats {
    pub jobs: u64,
    pub write_commits: u64,
    pub changed: u64,
}

/// What closures passed to [`Db::read`] / [`Db::write`] return, so `?` works on rusqlite and
/// store errors alike.
pub(crate) enum DbError {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sql(e)
    }
}

impl From<StoreError> for DbError {
    fn from(e: StoreError) -> Self {
        DbError::Store(e)
    }
}

fn store_error(e: DbError) -> StoreError {
    match e {
        DbError::Sql(e) => sql(e),
        DbError::Store(e) => e,
    }
}

/// One caller's work, type-erased: run it on the connection inside its savepoint (or, if the
/// batch's transaction could not begin, answer with that error unrun), learn whether it
/// succeeded, and later tell it how the commit went.
/// Runs a job on the connection, or (given the batch's error) answers it unrun.
type RunJob = Box<dyn FnOnce(Result<&Connection, &StoreError>) -> Ran + Send>;

/// Sends the caller its answer, given the batch's commit error if there was one.
type Answer = Box<dyn FnOnce(Option<&StoreError>) + Send>;

struct Job {
    writes: bool,
    run: RunJob,
}

struct Ran {
    ok: bool,
    /// Sends the caller its answer, given the batch's commit error if there was one.
    answer: Answer,
}

impl Db {
    fn start(conn: Connection, threading: Threading) -> Result<Db, StoreError> {
        let stats = Arc::new(Stats::default());
        let runner = match threading {
            Threading::Inline => Runner::Inline(Arc::new(Mutex::new(conn))),
            Threading::Writer => {
                let (jobs, inbox) = mpsc::channel::<Job>();
                let counters = stats.clone();
                std::thread::Builder::new()
                    .name("switchyard-sqlite".into())
                    .spawn(move || writer(conn, inbox, &counters))
                    .map_err(|e| {
                        StoreError::Unavailable(format!("cannot start the sqlite thread: {e}"))
                    })?;
                Runner::Writer(jobs)
            }
        };
        Ok(Db { runner, stats })
    }

    pub(crate) fn stats(&self) -> DbStats {
        DbStats {
            jobs: self.stats.jobs.load(Ordering::Relaxed),
            write_commits: self.stats.write_commits.load(Ordering::Relaxed),
            changed: self.stats.changed.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` on the connection in a read transaction (no write lock is taken if every job of
    /// its batch reads).
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.submit(false, f).await
    }

    /// Runs `f` on the connection inside the write transaction of its batch; its writes are
    /// committed (and, under `FULL`, synced) before this returns `Ok`.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.submit(true, f).await
    }

    async fn submit<T: Send + 'static>(
        &self,
        writes: bool,
        f: impl FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
        let run = Box::new(move |c: Result<&Connection, &StoreError>| {
            let out = match c {
                Ok(c) => f(c).map_err(store_error),
                Err(e) => Err(e.clone()),
            };
            Ran {
                ok: out.is_ok(),
                answer: Box::new(move |commit: Option<&StoreError>| {
                    let out = match (out, commit) {
                        (Ok(_), Some(e)) => Err(e.clone()),
                        (out, _) => out,
                    };
                    // The caller may have stopped waiting (its future was dropped): nothing to do.
                    let _ = tx.send(out);
                }),
            }
        });
        let gone = || StoreError::Unavailable("the sqlite thread has stopped".into());
        let job = Job { writes, run };
        match &self.runner {
            Runner::Inline(conn) => {
                // A poisoned lock means a thread panicked mid-job; SQLite rolled back what it
                // was doing, but we report rather than guess.
                let mut conn = conn.lock().map_err(|_| {
                    StoreError::Unavailable("sqlite connection lock poisoned by a panic".into())
                })?;
                commit_batch(&mut conn, vec![job], &self.stats);
            }
            Runner::Writer(jobs) => jobs.send(job).map_err(|_| gone())?,
        }
        rx.await.map_err(|_| gone())?
    }
}

/// The writer thread: takes the next job, then every job already waiting (up to
/// [`MAX_GROUP_COMMIT`]), and commits them as one transaction. Ends when every handle is gone.
fn writer(mut conn: Connection, inbox: mpsc::Receiver<Job>, stats: &Stats) {
    // How many jobs the last batch had: more than one means several callers are active, and
    // then waiting a moment for the next one costs less than the fsync it saves.
    let mut last = 0usize;
    while let Ok(first) = inbox.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP_COMMIT {
            let next = if last > 1 && batch.len() < last {
                inbox.recv_timeout(GROUP_COMMIT_WAIT)
            } else {
                inbox
                    .try_recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Timeout)
            };
            match next {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        last = batch.len();
        commit_batch(&mut conn, batch, stats);
    }
}

fn commit_batch(conn: &mut Connection, batch: Vec<Job>, stats: &Stats) {
    stats.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
    if batch.iter().any(|j| j.writes) {
        stats.write_commits.fetch_add(1, Ordering::Relaxed);
    }
    run_batch(conn, batch, stats);
}

/// Runs a transaction-control statement from the statement cache (no re-parse per job).
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Counts the batch's committed jobs that changed rows in `stats` before answering anyone
/// (a caller that reads the figures after its answer sees its own job counted).
fn run_batch(conn: &mut Connection, batch: Vec<Job>, stats: &Stats) {
    let writes = batch.iter().any(|j| j.writes);
    let begin = if writes { "BEGIN IMMEDIATE" } else { "BEGIN" };
    if let Err(e) = control(conn, begin) {
        // Busy past the timeout, or the file is gone: every job of the batch gets the reason.
        let e = sql(e);
        for job in batch {
            ((job.run)(Err(&e)).answer)(None);
        }
        return;
    }
    // A batch of one needs no savepoint: its own failure rolls back the transaction.
    let alone = batch.len() == 1;
    let (mut failed, mut changed) = (false, 0);
    let answers: Vec<_> = batch
        .into_iter()
        .map(|job| {
            let before = conn.total_changes();
            let (ok, answer) = run_job(conn, job, !alone);
            failed |= !ok;
            changed += u64::from(ok && conn.total_changes() != before);
            answer
        })
        .collect();
    let commit = if alone && failed {
        control(conn, "ROLLBACK").err().map(sql)
    } else {
        control(conn, "COMMIT").err().map(sql)
    };
    if commit.is_some() {
        // Leave no half-open transaction behind for the next batch.
        let _ = control(conn, "ROLLBACK");
    }
    if commit.is_none() && !(alone && failed) {
        stats.changed.fetch_add(changed, Ordering::Relaxed);
    }
    for answer in answers {
        answer(commit.as_ref());
    }
}

/// Runs one job, inside its own savepoint when it shares the transaction: a failure (or a
/// panic, which must not take the thread and every later caller with it) undoes that job's
/// statements only. Returns whether it succeeded, and how to answer it.
fn run_job(conn: &Connection, job: Job, savepoint: bool) -> (bool, Answer) {
    if savepoint {
        if let Err(e) = control(conn, "SAVEPOINT job") {
            let e = sql(e);
            return (false, (job.run)(Err(&e)).answer);
        }
    }
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.run)(Ok(conn))));
    let ok = matches!(&ran, Ok(r) if r.ok);
    if savepoint {
        if !ok {
            let _ = control(conn, "ROLLBACK TO job");
        }
        let _ = control(conn, "RELEASE job");
    }
    match ran {
        Ok(r) => (ok, r.answer),
        // The job's sender went down with the panic, so its caller hears "stopped".
        Err(_) => {
            tracing::error!("a sqlite job panicked; its statements were rolled back");
            (false, Box::new(|_| {}))
        }
    }
}

/// Maps a rusqlite error: lock contention is retryable, a damaged file is not.
pub(crate) fn sql(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt(format!("sqlite: {e}"))
        }
        _ => StoreError::Unavailable(format!("sqlite: {e}")),
    }
}

/// Whether `e` is a constraint violation with this extended code (`rusqlite::ffi::SQLITE_…`).
pub(crate) fn is_constraint(e: &rusqlite::Error, extended: std::os::raw::c_int) -> bool {
    e.sqlite_error()
        .is_some_and(|x| x.extended_code == extended)
}

/// The embedded backend rooted at one data directory. Cloning is cheap (handles share one
/// connection); every handle it gives out is cheap to clone as well.
#[derive(Clone)]
pub struct Backend {
    pub(crate) db: Db,
    data_dir: PathBuf,
}

/// How hard a commit holds on the embedded backend (`SWITCHYARD_DURABILITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL` in WAL mode (the default): a commit survives the process being
    /// killed; a power loss or OS crash may lose the last commits.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is fsynced before it returns, so every checkpoint
    /// survives a power loss, at the price of one fsync per commit.
    Full,
}

impl Durability {
    /// `normal` or `full` (case-insensitive); anything else is an error naming the choices.
    pub fn parse(s: &str) -> Result<Durability, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "normal" => Ok(Durability::Normal),
            "full" => Ok(Durability::Full),
            other => Err(format!(
                "SWITCHYARD_DURABILITY must be `normal` or `full`, not `{other}`"
            )),
        }
    }

    fn pragma(self) -> &'static str {
        match self {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        }
    }
}

/// Who runs the SQLite work: the caller, inline under a lock (cheapest per call: no thread
/// hop), or a dedicated writer thread with group commit (keeps SQLite off the async worker
/// threads, so a server's HTTP answers do not wait behind commits and WAL checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threading {
    Inline,
    Writer,
}

impl Threading {
    /// The default for a durability: inline for `normal` (a commit does not fsync),
    /// the writer thread for `full` (fsyncs are shared by group commit).
    pub fn for_durability(d: Durability) -> Threading {
        match d {
            Durability::Normal => Threading::Inline,
            Durability::Full => Threading::Writer,
        }
    }
}

impl Backend {
    /// [`Backend::open_with`] at [`Durability::Normal`].
    pub fn open(data_dir: &Path) -> Result<Backend, StoreError> {
        Backend::open_with(data_dir, Durability::Normal)
    }

    /// Opens (creating if needed) `data_dir` and `data_dir/switchyard.sqlite`, migrating the
    /// schema. A file that is not a SQLite database, is some other program's database, or has a
    /// schema newer than this build gives `Corrupt` and is left byte-for-byte untouched.
    pub fn open_with(data_dir: &Path, durability: Durability) -> Result<Backend, StoreError> {
        Backend::open_threaded(data_dir, durability, Threading::for_durability(durability))
    }

    /// [`Backend::open_with`], choosing who runs the SQLite work (`switchyard dev` always uses
    /// the writer thread).
    pub fn open_threaded(
        data_dir: &Path,
        durability: Durability,
        threading: Threading,
    ) -> Result<Backend, StoreError> {
        let io = |what: &str, p: &Path, e: std::io::Error| {
            StoreError::Unavailable(format!("{what} {}: {e}", p.display()))
        };
        std::fs::create_dir_all(data_dir).map_err(|e| io("cannot create", data_dir, e))?;
        // Absolute, so presigned `file://` URLs work from any working directory.
        let data_dir =
            std::fs::canonicalize(data_dir).map_err(|e| io("cannot resolve", data_dir, e))?;
        let blobs = data_dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(|e| io("cannot create", &blobs, e))?;

        let path = data_dir.join(DB_FILE);
        check_magic(&path)?;
        let corrupt = |why: String| StoreError::Corrupt(format!("{}: {why}", path.display()));
        let not_db = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                corrupt(format!("not a usable SQLite database ({e})"))
            }
            _ => StoreError::Unavailable(format!("{}: {e}", path.display())),
        };

        let mut conn = Connection::open(&path).map_err(not_db)?;
        conn.busy_timeout(Duration::from_millis(5000))
            .map_err(not_db)?;
        // Read the version before anything that writes (switching to WAL rewrites the header),
        // so a file we refuse is never modified.
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(not_db)?;
        if version > SCHEMA_VERSION {
            return Err(corrupt(format!(
                "schema version {version} is newer than this build supports ({SCHEMA_VERSION}); \
                 upgrade switchyard"
            )));
        }
        if version < SCHEMA_VERSION {
            // Several processes may open a new data dir at once (`switchyard run` and a
            // `runs list` beside it): migrate under the write lock, re-reading the version
            // there, so exactly one of them creates the schema.
            match migrate(&mut conn).map_err(not_db)? {
                Migration::Done => {}
                Migration::Foreign => {
                    return Err(corrupt(
                        "has tables but no switchyard schema version; not a switchyard database"
                            .into(),
                    ))
                }
            }
        }
        // WAL lets readers (the CLI listing runs) proceed while a worker writes; NORMAL sync is
        // durable across process crashes and only risks the last commits on power loss.
        // WAL mode is stored in the file: only the first opener switches it. The switch needs
        // an exclusive lock, and SQLite answers BUSY at once (without its busy handler) while
        // another connection opening the same new file holds a shared one, so concurrent first
        // opens retry it briefly. The bound keeps a stuck lock from hanging `open`.
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .map_err(not_db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            let mut tries = 0;
            loop {
                match conn.pragma_update(None, "journal_mode", "WAL") {
                    Ok(()) => break,
                    Err(e)
                        if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                            && tries < WAL_SWITCH_TRIES =>
                    {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(not_db(e)),
                }
            }
        }
        conn.pragma_update(None, "synchronous", durability.pragma())
            .map_err(not_db)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(not_db)?;

        Ok(Backend {
            db: Db::start(conn, threading)?,
            data_dir,
        })
    }

    /// The absolute data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// What the SQLite thread has done since this backend was opened (see [`DbStats`]).
    pub fn stats(&self) -> DbStats {
        self.db.stats()
    }

    pub fn store(&self) -> SqliteStore {
        SqliteStore::new(self.db.clone())
    }

    /// A named queue; all queues share one table. The clock decides visibility, so tests pass a
    /// [`crate::ManualClock`].
    /// A handle on one of the queues (see [`SqliteQueue`]).
    pub fn queue(&self, name: QueueName, clock: Arc<dyn Clock>) -> SqliteQueue {
        SqliteQueue::new(self.db.clone(), name, clock)
    }

    pub fn blobs(&self) -> FsBlobStore {
        FsBlobStore::new(self.data_dir.join("blobs"))
    }
}

/// Refuses a non-empty file that does not start with SQLite's magic header. SQLite would refuse
/// it too, but this gives a clearer message and needs no SQLite call on a stranger's file.
fn check_magic(path: &Path) -> Result<(), StoreError> {
    const MAGIC: &[u8; 16] = b"SQLite format 3\0";
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::Unavailable(format!("{}: {e}", path.display()))),
    };
    let mut head = Vec::with_capacity(16);
    file.by_ref()
        .take(16)
        .read_to_end(&mut head)
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
    if head.is_empty() || head == MAGIC {
        return Ok(());
    }
    Err(StoreError::Corrupt(format!(
        "{} is not a SQLite database (refusing to open or modify it)",
        path.display()
    )))
}

enum Migration {
    Done,
    /// Tables exist but no switchyard schema version: someone else's database.
    Foreign,
}

/// Runs the missing migrations in one `BEGIN IMMEDIATE` transaction with the version bump: the
/// write lock makes concurrent openers wait (busy timeout) and then see the new version, and a
/// crash mid-migration leaves the old schema rather than half of the new one.
fn migrate(conn: &mut Connection) -> rusqlite::Result<Migration> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let from: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if from == 0 {
        let tables: i64 = tx.query_row(
            "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'",
            [],
            |r| r.get(0),
        )?;
        if tables > 0 {
            return Ok(Migration::Foreign);
        }
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(from.max(0) as usize) {
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
    }
    tx.commit()?;
    Ok(Migration::Done)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_first_opens_create_the_schema_once() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    let d = dir.path().to_path_buf();
                    std::thread::spawn(move || Backend::open(&d).map(|_| ()))
                })
                .collect();
            for h in handles {
                let r = h.join().unwrap();
                assert!(r.is_ok(), "{r:?}");
            }
        }
    }

    fn open_err(dir: &Path) -> String {
        match Backend::open(dir) {
            Err(StoreError::Corrupt(m)) => m,
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("expected Corrupt, got a backend"),
        }
    }

    #[test]
    fn garbage_file_is_corrupt_and_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let cases: [&[u8]; 3] = [
            b"this is not a database, it is a grocery list\n",
            b"x",
            // Right magic, garbage after it: SQLite itself has to refuse this one.
            &[b"SQLite format 3\0".as_slice(), &[0xAB; 200]].concat(),
        ];
        for bytes in cases {
            std::fs::write(&path, bytes).unwrap();
            let msg = open_err(dir.path());
            assert!(msg.contains(DB_FILE), "{msg}");
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
            assert!(!dir.path().join(format!("{DB_FILE}-wal")).exists());
        }
    }

    #[test]
    fn newer_or_foreign_schema_is_refused_untouched() {
        for (version, table) in [(SCHEMA_VERSION + 1, "t"), (0, "someone_elses")] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(DB_FILE);
            {
                let c = Connection::open(&path).unwrap();
                c.execute_batch(&format!(
                    "CREATE TABLE {table}(x); PRAGMA user_version={version};"
                ))
                .unwrap();
            }
            let before = std::fs::read(&path).unwrap();
            let msg = open_err(dir.path());
            assert!(msg.contains(DB_FILE), "{msg}");
            assert_eq!(std::fs::read(&path).unwrap(), before);
        }
    }

    /// Jobs that arrive while the thread is busy share one commit, and one failing job is rolled
    /// back alone: the others of its batch still commit.
    #[tokio::test]
    async fn waiting_writes_share_one_commit_and_a_failure_stays_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open_with(dir.path(), Durability::Full).unwrap();
        b.db.write(|c| Ok(c.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)")?))
            .await
            .unwrap();
        let before = b.stats();
        // Hold the thread inside a job until ten more have been sent.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        let blocker = b.db.write(move |_| {
            let _ = started.send(());
            Ok(held.recv().is_ok())
        });
        let writes: Vec<_> = (0..10)
            .map(|k| {
                b.db.write(move |c| {
                    // Job 3 inserts a row and then fails: its row must not survive.
                    c.execute("INSERT INTO t (k) VALUES (?1)", [k + 100])?;
                    if k == 3 {
                        return Err(StoreError::Conflict("job 3 fails".into()).into());
                    }
                    Ok(c.execute("INSERT INTO t (k) VALUES (?1)", [k])?)
                })
            })
            .collect();
        let (held_ok, results) = tokio::join!(blocker, async {
            // `join!` polled the blocker first (a job is sent on its future's first poll); once
            // it runs on the thread, send the ten writes (their first poll), then release it.
            running.recv().unwrap();
            let all = futures::future::join_all(writes);
            let (results, ()) = tokio::join!(all, async {
                let _ = release.send(());
            });
            results
        });
        assert!(held_ok.unwrap());
        for (k, r) in results.iter().enumerate() {
            assert_eq!(r.is_ok(), k != 3, "job {k}: {r:?}");
        }
        let after = b.stats();
        // One commit for the blocker, one for the ten that waited behind it.
        assert_eq!(after.write_commits - before.write_commits, 2);
        assert_eq!(after.jobs - before.jobs, 11);
        // Nine jobs changed rows; the blocker wrote nothing and job 3 was rolled back.
        assert_eq!(after.changed - before.changed, 9);
        let keys: Vec<i64> =
            b.db.read(|c| {
                let mut st = c.prepare("SELECT k FROM t ORDER BY k")?;
                let rows = st.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<Vec<i64>, _>>()?)
            })
            .await
            .unwrap();
        let want: Vec<i64> = (0..10)
            .filter(|k| *k != 3)
            .chain((100..110).filter(|k| *k != 103))
            .collect();
        assert_eq!(keys, want);
    }

    #[tokio::test]
    async fn durability_sets_the_sync_mode() {
        // (setting, SQLite's `PRAGMA synchronous` answer: 1 NORMAL, 2 FULL)
        for (text, want) in [("normal", 1), ("FULL", 2), (" full ", 2)] {
            let dir = tempfile::tempdir().unwrap();
            let d = Durability::parse(text).unwrap();
            let b = Backend::open_with(dir.path(), d).unwrap();
            let got: i64 =
                b.db.read(|c| Ok(c.pragma_query_value(None, "synchronous", |r| r.get(0))?))
                    .await
                    .unwrap();
            assert_eq!(got, want, "{text}");
        }
        let e = Durability::parse("paranoid").unwrap_err();
        assert!(
            e.contains("`normal` or `full`") && e.contains("paranoid"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn opens_fresh_and_again() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        let b = Backend::open(&nested).unwrap();
        assert!(b.data_dir().is_absolute());
        assert!(nested.join("blobs").is_dir());
        drop(b);
        let b = Backend::open(&nested).unwrap();
        let pragmas = |c: &Connection| {
            let get =
                |name| c.pragma_query_value(None, name, |r| r.get::<_, rusqlite::types::Value>(0));
            Ok([
                get("user_version")?,
                get("journal_mode")?,
                get("foreign_keys")?,
            ])
        };
        use rusqlite::types::Value::{Integer, Text};
        let want = [Integer(SCHEMA_VERSION), Text("wal".into()), Integer(1)];
        assert_eq!(b.db.read(pragmas).await.unwrap(), want);
    }
}
