//! A [`StateStore`] that fails chosen writes, for the engine's fault tests on every backend:
//! a fault *before* a write (nothing stored, an error back) or *after* it (stored, and the
//! answer lost — what a dropped connection or a timed-out request looks like to the caller);
//! and a read that lost a race ([`FaultyStore::load_stale_once`]).

use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use switchyard_core::ports::{ActivePage, IdempotencyClaim, RunPage, RunQuery, StateStore};
use switchyard_core::state::{HistoryEvent, Lease, RunHeader, RunSnapshot, StepRecord};
use switchyard_core::stats::{Bucket, BucketQuery};
use switchyard_core::{Millis, StoreError};

/// Which port call a fault is planned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteKind {
    CreateRun,
    PutHeader,
    AcquireLease,
    PutStep,
    PutSteps,
}

/// When the fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The write is not made; the caller gets `Unavailable`.
    Before,
    /// The write is made; the caller gets `Unavailable` (the answer was lost).
    After,
}

/// Wraps a store; the `n`th call (1-based) of a kind fails as planned, once.
pub struct FaultyStore {
    inner: Arc<dyn StateStore>,
    plan: Mutex<Vec<(WriteKind, usize, Fault)>>,
    calls: Mutex<HashMap<WriteKind, usize>>,
    injected: Mutex<Vec<(WriteKind, usize, Fault)>>,
    /// Snapshots the next `load` of their run answers instead of what is stored: a reader
    /// that loaded the run just before another worker moved it on.
    stale: Mutex<HashMap<String, RunSnapshot>>,
    /// Runs whose lease cannot be taken and whose end cannot be written (`Invalid`) until
    /// cured: a wake-up handler that fails every time for one run, as a poison message does
    /// (a worker that holds its records takes no lease before its end write).
    poisoned: Mutex<HashSet<String>>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn StateStore>) -> FaultyStore {
        FaultyStore {
            inner,
            plan: Mutex::new(Vec::new()),
            calls: Mutex::new(HashMap::new()),
            injected: Mutex::new(Vec::new()),
            stale: Mutex::new(HashMap::new()),
            poisoned: Mutex::new(HashSet::new()),
        }
    }

    /// From now on every lease and every end of `run_id` fails `Invalid` (the worker's
    /// handling of any wake-up of the run fails), until [`FaultyStore::cure`].
    pub fn poison(&self, run_id: &str) {
        self.poisoned.lock().unwrap().insert(run_id.to_string());
    }

    pub fn cure(&self, run_id: &str) {
        self.poisoned.lock().unwrap().remove(run_id);
    }

    /// The next `load` of `snap`'s run answers `snap`, as it was when it was taken; later
    /// loads read the store again.
    pub fn load_stale_once(&self, snap: RunSnapshot) {
        self.stale
            .lock()
            .unwrap()
            .insert(snap.header.run_id.clone(), snap);
    }

    /// Plans a fault for the `nth` call of `kind` from now on counted since the store was made.
    pub fn fail(self, kind: WriteKind, nth: usize, fault: Fault) -> FaultyStore {
        self.plan.lock().unwrap().push((kind, nth, fault));
        self
    }

    /// The faults injected so far.
    pub fn injected(&self) -> Vec<(WriteKind, usize, Fault)> {
        self.injected.lock().unwrap().clone()
    }

    /// How many calls of `kind` were made.
    pub fn calls(&self, kind: WriteKind) -> usize {
        self.calls.lock().unwrap().get(&kind).copied().unwrap_or(0)
    }

    /// Counts the call and says which fault, if any, it gets.
    fn next(&self, kind: WriteKind) -> Option<Fault> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let c = calls.entry(kind).or_insert(0);
            *c += 1;
            *c
        };
        let mut plan = self.plan.lock().unwrap();
        let i = plan
            .iter()
            .position(|(k, nth, _)| *k == kind && *nth == n)?;
        let (_, _, fault) = plan.remove(i);
        self.injected.lock().unwrap().push((kind, n, fault));
        Some(fault)
    }

    async fn write<T: Send>(
        &self,
        kind: WriteKind,
        call: impl std::future::Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        match self.next(kind) {
            None => call.await,
            Some(Fault::Before) => Err(StoreError::Unavailable(format!(
                "injected fault before {kind:?}"
            ))),
            Some(Fault::After) => {
                call.await?;
                Err(StoreError::Unavailable(format!(
                    "injected fault after {kind:?}: the answer was lost"
                )))
            }
        }
    }
}

#[async_trait]
impl StateStore for FaultyStore {
    async fn create_run(&self, h: &RunHeader, events: &[HistoryEvent]) -> Result<(), StoreError> {
        self.write(WriteKind::CreateRun, self.inner.create_run(h, events))
            .await
    }

    async fn load(&self, run_id: &str) -> Result<Option<RunSnapshot>, StoreError> {
        if let Some(old) = self.stale.lock().unwrap().remove(run_id) {
            return Ok(Some(old));
        }
        self.inner.load(run_id).await
    }

    async fn load_header(&self, run_id: &str) -> Result<Option<RunHeader>, StoreError> {
        self.inner.load_header(run_id).await
    }

    async fn put_header(&self, h: &RunHeader, events: &[HistoryEvent]) -> Result<u64, StoreError> {
        self.write(WriteKind::PutHeader, self.inner.put_header(h, events))
            .await
    }

    /// Counted as a `PutHeader`: the write that ends a run is a header write (it was one
    /// before stats rode along), and fault plans count it so.
    async fn end_run(
        &self,
        h: &RunHeader,
        events: &[HistoryEvent],
        stats: &[Bucket],
        steps: &[(&StepRecord, &[HistoryEvent])],
    ) -> Result<u64, StoreError> {
        // `Invalid`, not `Unavailable`: the handling gives up at once instead of reading the
        // run again and retrying the end with pauses, as it would after a storage fault.
        if self.poisoned.lock().unwrap().contains(&h.run_id) {
            return Err(StoreError::Invalid(format!(
                "injected: the end of {} is poisoned",
                h.run_id
            )));
        }
        self.write(
            WriteKind::PutHeader,
            self.inner.end_run(h, events, stats, steps),
        )
        .await
    }

    async fn stats_buckets(&self, q: &BucketQuery) -> Result<Vec<Bucket>, StoreError> {
        self.inner.stats_buckets(q).await
    }

    fn counts_started(&self) -> bool {
        self.inner.counts_started()
    }

    fn hold_figures(&self) {
        self.inner.hold_figures()
    }

    async fn flush_figures(&self) -> Result<(), StoreError> {
        self.inner.flush_figures().await
    }

    async fn acquire_lease(
        &self,
        run_id: &str,
        lease: &Lease,
        now: Millis,
    ) -> Result<RunHeader, StoreError> {
        // `Invalid` (as the end's): a pass that takes the lease late gives up at once.
        if self.poisoned.lock().unwrap().contains(run_id) {
            return Err(StoreError::Invalid(format!(
                "injected: the lease of {run_id} is poisoned"
            )));
        }
        self.write(
            WriteKind::AcquireLease,
            self.inner.acquire_lease(run_id, lease, now),
        )
        .await
    }

    async fn put_step(
        &self,
        run_id: &str,
        record: &StepRecord,
        events: &[HistoryEvent],
    ) -> Result<u64, StoreError> {
        self.write(
            WriteKind::PutStep,
            self.inner.put_step(run_id, record, events),
        )
        .await
    }

    async fn put_steps(
        &self,
        run_id: &str,
        writes: &[(&StepRecord, &[HistoryEvent])],
    ) -> Result<Vec<u64>, StoreError> {
        self.write(WriteKind::PutSteps, self.inner.put_steps(run_id, writes))
            .await
    }

    async fn active_runs(
        &self,
        created_from: Millis,
        created_before: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ActivePage, StoreError> {
        self.inner
            .active_runs(created_from, created_before, after, limit)
            .await
    }

    async fn append_events(&self, run_id: &str, events: &[HistoryEvent]) -> Result<(), StoreError> {
        self.inner.append_events(run_id, events).await
    }

    async fn events(&self, run_id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        self.inner.events(run_id).await
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        self.inner.list_runs(query).await
    }

    async fn claim_idempotency(
        &self,
        tenant: &str,
        key: &str,
        body_hash: &str,
        run_id: &str,
        now: Millis,
    ) -> Result<IdempotencyClaim, StoreError> {
        self.inner
            .claim_idempotency(tenant, key, body_hash, run_id, now)
            .await
    }

    async fn record_webhook_id(&self, id: &str, now: Millis) -> Result<bool, StoreError> {
        self.inner.record_webhook_id(id, now).await
    }
}
