//! The step machine's interpreter. `switchyard_core::machine` decides every transition of
//! a step; this module does the I/O each transition asks for — read uploads, commit a claim,
//! call, poll or cancel at a provider, download and keep a file — feeds the result back as
//! the next event, and commits each transition's records and history together
//! ([`Engine::commit`]: values too large for a record go to the blob store first, and a
//! record that reads as no legal step state is refused). Only model calls that cost money or
//! have an effect are claimed before they start ("state before side effects"); pure steps and
//! built-in models write their result once, the attempt's start with it — in a Lambda
//! worker's pass, with the run's end write ([`crate::held`]).

use crate::uploads::ReadFail;
use crate::{trace, Engine, EngineError};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::machine::{self, Event, Next, Note, StepState, Writes};
use switchyard_core::model::{ModelRequest, ModelResponse, Provider};
use switchyard_core::planner::Action;
use switchyard_core::state::{HistoryEvent, JobRef, StepRecord, StepStatus, Usage, ValueRef};
use switchyard_core::workflow::{Step, Workflow};
use switchyard_core::{asset, ErrorClass, StepError, StoreError};
use tracing::Instrument;

/// What an action needs to know about the run, captured when it starts.
#[derive(Clone)]
pub(crate) struct ActionCtx {
    pub wf: Arc<Workflow>,
    pub run_id: String,
    /// `{input, steps: {id: {status, output, sources, error}}, run}`.
    pub scope: Arc<Value>,
    /// The step records when the action started.
    pub records: Arc<std::collections::HashMap<String, StepRecord>>,
    /// The run's spending, shared by the actions of one invocation.
    pub ledger: Arc<std::sync::Mutex<Ledger>>,
    /// Who claims the steps: the `handle` call that holds the run's lease.
    pub owner: String,
    /// Where a worker's pass holds back the records it may store with the run's end
    /// (`None`: every record is written at once — outside the worker, or when
    /// [`crate::Config::hold_free_records`] is off).
    pub held: Option<Hold>,
    /// The run's lease, when the pass has yet to take it (`None`: taken before the pass).
    pub gate: Option<GateRef>,
}

/// A worker pass's hold: the records it stores with the run's end ([`crate::held`]).
pub(crate) type Hold = Arc<tokio::sync::Mutex<crate::held::Held>>;

/// A pass's run lease when it takes it with its first write ([`crate::held::Gate`]).
pub(crate) type GateRef = Arc<tokio::sync::Mutex<crate::held::Gate>>;

pub(crate) use switchyard_core::machine::budget::Ledger;

impl ActionCtx {
    /// The context of an event from outside the worker (a provider's callback, a person's
    /// decision): its transitions read no scope and start no call, so none is built.
    pub(crate) fn outside(wf: &Arc<Workflow>, run_id: &str, owner: &str) -> ActionCtx {
        ActionCtx {
            wf: wf.clone(),
            run_id: run_id.to_string(),
            scope: Arc::new(Value::Null),
            records: Default::default(),
            ledger: Default::default(),
            owner: owner.to_string(),
            held: None,
            gate: None,
        }
    }
}

impl Engine {
    /// Builds the reference scope of a run from its records.
    pub(crate) async fn scope(
        &self,
        wf: &Workflow,
        snap: &switchyard_core::state::RunSnapshot,
    ) -> Result<Value, StoreError> {
        let input = self.load_value(&snap.header.input).await?;
        let mut steps = Map::new();
        for r in &snap.steps {
            steps.insert(r.step.clone(), self.step_scope(r).await?);
        }
        Ok(json!({
            "input": input,
            "steps": steps,
            "run": {"id": snap.header.run_id, "workflow": wf.name, "version": wf.version},
        }))
    }

    /// Brings a scope up to date with one changed record, so a worker re-planning after each
    /// step does not rebuild the scope of the whole chain (which grew with its length).
    pub(crate) async fn update_scope(
        &self,
        scope: &mut Value,
        r: &StepRecord,
    ) -> Result<(), StoreError> {
        let entry = self.step_scope(r).await?;
        if let Some(steps) = scope.get_mut("steps").and_then(Value::as_object_mut) {
            steps.insert(r.step.clone(), entry);
        }
        Ok(())
    }

    /// One step's part of the scope: `{status, output?, sources?, error?}`.
    async fn step_scope(&self, r: &StepRecord) -> Result<Value, StoreError> {
        let mut s = Map::new();
        s.insert("status".into(), json!(r.status.as_str()));
        if let (StepStatus::Succeeded | StepStatus::Failed, Some(o)) = (r.status, &r.output) {
            s.insert("output".into(), self.load_value(o).await?);
        } else if r.status == StepStatus::Failed || r.status == StepStatus::Skipped {
            s.insert("output".into(), Value::Null);
        }
        if r.status == StepStatus::Succeeded || !r.sources.is_empty() {
            s.insert("sources".into(), json!(r.sources));
        }
        if let Some(e) = &r.error {
            s.insert(
                "error".into(),
                json!({"class": e.class, "message": e.message}),
            );
        }
        Ok(Value::Object(s))
    }

    /// Writes records (one conditional write, or several as one) through storage faults: a
    /// write that failed is tried again ([`WRITE_TRIES`] in all), and when a later try
    /// conflicts, the records are read back — the first try may have landed with its answer
    /// lost, and then the write is done, not a conflict. So a claim whose answer was lost is
    /// still this worker's claim, and a verdict whose write failed is not thrown away.
    async fn put_records(
        &self,
        wf: &Workflow,
        run_id: &str,
        records: &mut [StepRecord],
        events: &[&[HistoryEvent]],
    ) -> Result<(), EngineError> {
        let mut faulted = false;
        for attempt in 0..WRITE_TRIES {
            let written = if let [rec] = &*records {
                self.store
                    .put_step(run_id, rec, events.first().copied().unwrap_or(&[]))
                    .await
                    .map(|v| vec![v])
            } else {
                let writes: Vec<(&StepRecord, &[HistoryEvent])> = records
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r, events.get(i).copied().unwrap_or(&[])))
                    .collect();
                self.store.put_steps(run_id, &writes).await
            };
            match written {
                Ok(versions) => {
                    for (r, v) in records.iter_mut().zip(versions) {
                        r.version = v;
                    }
                    self.observe_steps(wf, run_id, records, events);
                    return Ok(());
                }
                Err(StoreError::Unavailable(msg)) if attempt + 1 < WRITE_TRIES => {
                    tracing::debug!(run_id, %msg, "step write failed; trying again");
                    faulted = true;
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(StoreError::Conflict(msg)) if faulted => {
                    if self.landed(run_id, records).await? {
                        for r in records.iter_mut() {
                            r.version += 1;
                        }
                        self.observe_steps(wf, run_id, records, events);
                        return Ok(());
                    }
                    return Err(StoreError::Conflict(msg).into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Unavailable(format!("run {run_id}: step write kept failing")).into())
    }

    /// Whether the store holds exactly `records`, one version on: an earlier try's write.
    async fn landed(&self, run_id: &str, records: &[StepRecord]) -> Result<bool, StoreError> {
        let Some(snap) = self.store.load(run_id).await? else {
            return Ok(false);
        };
        Ok(records.iter().all(|r| {
            let mut mine = r.clone();
            mine.version += 1;
            snap.step(&r.step) == Some(&mine)
        }))
    }

    /// The step machine's context for one event of `cx`'s run, at `now`.
    fn machine<'a>(&'a self, cx: &'a ActionCtx, nonce: &'a str) -> machine::Ctx<'a> {
        machine::Ctx {
            wf: &cx.wf,
            run_id: &cx.run_id,
            scope: &cx.scope,
            records: &cx.records,
            ledger: &cx.ledger,
            owner: &cx.owner,
            now: self.now(),
            nonce,
            public_url: &self.config.public_url,
            limits: machine::Limits {
                lease_margin_ms: self.config.step_lease_margin_ms,
                default_poll_ms: self.config.default_poll_ms,
            },
            prices: self.providers.as_ref(),
        }
    }

    /// Hands one event of a step to the step machine and interprets what it asks for,
    /// feeding each result back as the next event, until it commits; returns the records
    /// written (the caller updates its snapshot).
    pub(crate) async fn step_event(
        &self,
        cx: &ActionCtx,
        step_id: &str,
        first: Event,
    ) -> Result<Vec<StepRecord>, EngineError> {
        // The callback token of an asynchronous attempt claimed in this event's handling.
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        // The history of a claim not written (a call free to repeat): it rides on the step's
        // next write, whichever transition makes it.
        let mut carried: Vec<HistoryEvent> = Vec::new();
        let mut event = first;
        loop {
            let t = machine::handle(&self.machine(cx, &nonce), step_id, event)
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            for note in &t.notes {
                observe_note(&cx.run_id, step_id, note);
            }
            event = match t.next {
                Next::Commit(writes) => {
                    return self.commit_carrying(cx, step_id, writes, carried).await
                }
                Next::Prepare {
                    rec,
                    token,
                    mut request,
                } => {
                    let request = match self.read_uploads(&cx.scope["input"], &mut request).await {
                        Ok(()) => Ok(request),
                        Err(ReadFail::Step(err)) => Err(err),
                        Err(ReadFail::Store(e)) => return Err(e.into()),
                    };
                    Event::Prepared {
                        rec,
                        token,
                        request,
                    }
                }
                Next::Call {
                    claim,
                    request,
                    token,
                    commit_claim,
                } => {
                    let claimed = if commit_claim {
                        let written = self
                            .commit_carrying(cx, step_id, claim, std::mem::take(&mut carried))
                            .await?;
                        written.into_iter().next()
                    } else {
                        carried.extend(claim.events);
                        claim.records.into_iter().next()
                    };
                    let claimed = claimed
                        .ok_or_else(|| EngineError::Internal("a claim wrote no record".into()))?;
                    self.call(cx, step_id, claimed, request, token).await?
                }
                Next::Poll {
                    mut rec,
                    job,
                    request,
                } => {
                    let result = self.poll(cx, step_id, &mut rec, &job, &request).await;
                    Event::Polled { rec, result }
                }
                Next::CancelThenCommit {
                    job,
                    request,
                    writes,
                } => {
                    if let Some(req) = request {
                        self.cancel_at_provider(&cx.run_id, step_id, &req, &job)
                            .await;
                    }
                    return self.commit_carrying(cx, step_id, writes, carried).await;
                }
                Next::Download { rec, model, url } => {
                    let result = match self.download(&model, &url).await {
                        Ok(file) => Ok(self.keep(&url, &file).await?),
                        Err(err) => Err(err),
                    };
                    Event::Downloaded { rec, result }
                }
                Next::Keep {
                    settling,
                    source,
                    file,
                } => Event::Kept {
                    value: self.keep(&source, &file).await?,
                    settling,
                },
            };
        }
    }

    /// Executes one planner action: the step machine's `Due` event.
    pub(crate) async fn execute(
        &self,
        cx: &ActionCtx,
        action: &Action,
        rec: StepRecord,
    ) -> Result<Vec<StepRecord>, EngineError> {
        let event = Event::Due {
            action: action.clone(),
            rec,
        };
        self.step_event(cx, action.step(), event).await
    }

    /// [`Engine::commit`] with the history of an unwritten claim (`carried`) put before the
    /// step's own events in its record's write.
    async fn commit_carrying(
        &self,
        cx: &ActionCtx,
        step_id: &str,
        writes: Writes,
        carried: Vec<HistoryEvent>,
    ) -> Result<Vec<StepRecord>, EngineError> {
        let carried = (!carried.is_empty()).then_some((step_id, carried));
        self.commit(cx, writes, carried).await
    }

    /// Takes the run's lease for a pass that has not yet ([`crate::held::Gate`]).
    pub(crate) async fn take_lease(
        &self,
        gate: &GateRef,
        run_id: &str,
        owner: &str,
    ) -> Result<(), EngineError> {
        let mut g = gate.lock().await;
        let moved = |run_id: &str| {
            EngineError::Store(StoreError::Conflict(format!(
                "run {run_id} moved since this pass read it; planning again"
            )))
        };
        if g.moved {
            return Err(moved(run_id));
        }
        if g.taken {
            return Ok(());
        }
        let now = self.now();
        let lease = switchyard_core::state::Lease {
            owner: owner.to_string(),
            until: now + self.config.run_lease_ms,
        };
        let h = self.store.acquire_lease(run_id, &lease, now).await?;
        g.taken = true;
        if h.version != g.expected + 1 || h.status.is_terminal() {
            // Another worker wrote the run meanwhile (it may have ended it): nothing more of
            // this pass is written until it has read the run again.
            g.moved = true;
            return Err(moved(run_id));
        }
        g.written = Some(h);
        Ok(())
    }

    /// Stores what `held` holds apart (before another write of the pass), and empties it.
    pub(crate) async fn write_held(
        &self,
        wf: &Workflow,
        run_id: &str,
        held: &mut crate::held::Held,
    ) -> Result<(), EngineError> {
        let writes = held
            .take_apart()
            .map_err(|why| EngineError::Store(StoreError::Conflict(why)))?;
        for write in writes {
            let (mut records, events): (Vec<StepRecord>, Vec<Vec<HistoryEvent>>) =
                write.into_iter().unzip();
            let events: Vec<&[HistoryEvent]> = events.iter().map(Vec::as_slice).collect();
            if let Err(e) = self.put_records(wf, run_id, &mut records, &events).await {
                held.broke(format!(
                    "run {run_id}: a write of the held records failed: {e}"
                ));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Commits one transition's writes: each value too large for its record goes to the
    /// blob store first (the record points to it), every record must read as a legal step
    /// state, then the records and their history are written together; `carried` (a step
    /// and the history of its unwritten claim) goes before that step's own events. With
    /// `held` (a worker's pass), a transition free to repeat is held back for the run's end
    /// write instead ([`crate::held`]), and anything else is written after what is held.
    pub(crate) async fn commit(
        &self,
        cx: &ActionCtx,
        writes: Writes,
        carried: Option<(&str, Vec<HistoryEvent>)>,
    ) -> Result<Vec<StepRecord>, EngineError> {
        let (wf, run_id) = (cx.wf.as_ref(), cx.run_id.as_str());
        let mut records = writes.records.clone();
        for r in records.iter_mut() {
            if let Some(ValueRef::Inline { value }) = &mut r.output {
                let value = std::mem::take(value);
                r.output = Some(self.store_value(value).await?);
            }
            StepState::read(r).map_err(|e| {
                EngineError::Internal(format!("step `{}`: refusing to write {e}", r.step))
            })?;
        }
        let mut per_record: Vec<Vec<HistoryEvent>> = (0..records.len())
            .map(|i| writes.events_for(i).to_vec())
            .collect();
        if let Some((step, mut before)) = carried {
            // The step's own record (a transition may write others beside it).
            let i = records.iter().position(|r| r.step == step).unwrap_or(0);
            if let Some(own) = per_record.get_mut(i) {
                before.append(own);
                *own = before;
            }
        }
        if let Some(held) = &cx.held {
            let mut held = held.lock().await;
            match held.try_hold(&records, &per_record, &cx.records) {
                crate::held::Holding::Held(seen) => return Ok(seen),
                crate::held::Holding::Stale(why) => {
                    // What is held is stored first (under the lease), so the pass that plans
                    // again starts from it instead of making the same hold and meeting the
                    // same stale transition forever.
                    if !held.is_empty() {
                        if let Some(gate) = &cx.gate {
                            self.take_lease(gate, run_id, &cx.owner).await?;
                        }
                        self.write_held(wf, run_id, &mut held).await?;
                    }
                    return Err(EngineError::Store(StoreError::Conflict(format!(
                        "run {run_id}: {why}"
                    ))));
                }
                crate::held::Holding::No => {}
            }
            // A pass without the run's lease takes it before its first write that is not
            // held (a claim, a gate that opens): no two workers call a paid model for one
            // run at once, and nothing is written beside another worker's lease.
            if let Some(gate) = &cx.gate {
                self.take_lease(gate, run_id, &cx.owner).await?;
            }
            if !held.is_empty() {
                self.write_held(wf, run_id, &mut held).await?;
            }
        }
        let per_record: Vec<&[HistoryEvent]> = per_record.iter().map(Vec::as_slice).collect();
        self.put_records(wf, run_id, &mut records, &per_record)
            .await?;
        Ok(records)
    }

    /// Calls the model of a claimed attempt under the step's timeout (keeping the call's
    /// tape when the run keeps them): the `Answered` event.
    async fn call(
        &self,
        cx: &ActionCtx,
        step_id: &str,
        mut claimed: StepRecord,
        req: ModelRequest,
        token: Option<String>,
    ) -> Result<Event, EngineError> {
        tracing::info!(run_id = %cx.run_id, step = %step_id, attempt = claimed.attempt, model = %req.model, prompt_version = ?req.prompt_version, "step started");
        let provider = self
            .providers
            .for_model(&req.model)
            .ok_or_else(|| EngineError::Internal(format!("no provider serves `{}`", req.model)))?;
        let timeout_ms = req.timeout_ms;
        let span = trace::attempt_span(&cx.run_id, &req, provider.name(), claimed.model_index);
        let keep = self.keeps_tape(&cx.wf);
        let ((result, latency_ms), tape) = invoke_within(provider.as_ref(), &req, timeout_ms, keep)
            .instrument(span.clone())
            .await;
        trace::record_answer(&span, &result);
        drop(span);
        self.keep_tape(&cx.run_id, step_id, &mut claimed, tape)
            .await;
        Ok(Event::Answered {
            claimed,
            provider: provider.name().to_string(),
            request: req,
            token,
            latency_ms,
            result,
        })
    }

    /// Polls a job under the step's timeout (keeping the poll's tape on `rec`).
    async fn poll(
        &self,
        cx: &ActionCtx,
        step_id: &str,
        rec: &mut StepRecord,
        job: &JobRef,
        req: &ModelRequest,
    ) -> Result<ModelResponse, StepError> {
        let Some(provider) = self.providers.get(&job.provider) else {
            return Err(StepError::new(
                ErrorClass::Invalid,
                format!("no provider `{}`", job.provider),
            ));
        };
        let keep = self.keeps_tape(&cx.wf);
        let call = async {
            if keep {
                provider.poll_kept(req, &job.job_id).await
            } else {
                (provider.poll(req, &job.job_id).await, None)
            }
        };
        match tokio::time::timeout(Duration::from_millis(req.timeout_ms), call).await {
            Ok((r, tape)) => {
                self.keep_tape(&cx.run_id, step_id, rec, tape).await;
                r
            }
            Err(_) => Err(StepError::new(ErrorClass::Timeout, "poll timed out")),
        }
    }

    /// An asset file copied into the blob store (`core::asset`): the provider's URL expires,
    /// our copy does not. A store failure is the engine's.
    async fn keep(&self, source: &str, file: &asset::Fetched) -> Result<Value, EngineError> {
        let key = self.blobs.put(&file.bytes, &file.content_type).await?;
        let url = self
            .blobs
            .presign(&key, crate::view::PRESIGN_TTL_MS)
            .await?;
        Ok(asset::kept(source, file, &key, &url))
    }

    /// One download of an output file by the provider of the model that made it, bounded by
    /// `asset::DOWNLOAD_TIMEOUT_MS`.
    async fn download(&self, model: &str, url: &str) -> Result<asset::Fetched, StepError> {
        let Some(provider) = self.providers.for_model(model) else {
            return Err(StepError::new(
                ErrorClass::Invalid,
                format!("no provider serves `{model}`, whose asset this is"),
            ));
        };
        let bound = asset::DOWNLOAD_TIMEOUT_MS;
        match tokio::time::timeout(
            Duration::from_millis(bound),
            provider.fetch_asset(url, bound),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(StepError::new(
                ErrorClass::Timeout,
                format!(
                    "no answer within the download timeout of {}",
                    switchyard_core::time::Dur(bound)
                ),
            )),
        }
    }

    /// Whether this run keeps its provider exchanges (`tape: true`, or `SWITCHYARD_TAPES=1`).
    fn keeps_tape(&self, wf: &Workflow) -> bool {
        wf.tape || self.config.tapes
    }

    /// Stores a call's tape in the blob store and adds its key to the step's record (the
    /// record is written with the attempt's outcome). Best effort: the call happened and was
    /// paid for whether or not its tape could be kept, so a failed put is logged, not raised.
    async fn keep_tape(&self, run_id: &str, step: &str, rec: &mut StepRecord, tape: Option<Value>) {
        let Some(tape) = tape else { return };
        let bytes = match serde_json::to_vec(&tape) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(run_id, step, error = %e, "tape not kept");
                return;
            }
        };
        match self.blobs.put(&bytes, "application/json").await {
            Ok(key) => rec.tapes.push(key),
            Err(e) => {
                tracing::warn!(run_id, step, error = %e, "tape not kept")
            }
        }
    }

    /// Gives up on a waiting step's job (the run ended while it ran): tells the provider so
    /// it stops (and stops billing). Best effort.
    pub(crate) async fn cancel_job(&self, cx: &ActionCtx, step: &Step, rec: &StepRecord) {
        let (Some(ms), Some(job)) = (step.call(), &rec.job) else {
            return;
        };
        let nonce = String::new();
        let mcx = self.machine(cx, &nonce);
        if let Ok(req) = machine::build_request(&mcx, step, ms, rec, Some(&job.callback_token)) {
            self.cancel_at_provider(&cx.run_id, &step.id, &req, job)
                .await;
        }
    }

    async fn cancel_at_provider(&self, run_id: &str, step: &str, req: &ModelRequest, job: &JobRef) {
        if let Some(provider) = self.providers.get(&job.provider) {
            if let Err(e) = provider.cancel(req, &job.job_id).await {
                tracing::warn!(run_id, step, error = %e, "could not cancel the job");
            }
        }
    }
}

/// Calls the provider, bounded by the step's timeout so a hung call cannot outlive its lease;
/// returns the result and how long it took.
/// With `keep`, also the call's exchanges as a tape (a call cut off by the timeout keeps none).
async fn invoke_within(
    provider: &dyn Provider,
    req: &ModelRequest,
    timeout_ms: u64,
    keep: bool,
) -> ((Result<ModelResponse, StepError>, u64), Option<Value>) {
    let t0 = std::time::Instant::now();
    let call = async {
        if keep {
            provider.invoke_kept(req).await
        } else {
            (provider.invoke(req).await, None)
        }
    };
    let (result, tape) = match tokio::time::timeout(Duration::from_millis(timeout_ms), call).await {
        Ok(r) => r,
        Err(_) => (
            Err(StepError::new(
                ErrorClass::Timeout,
                format!(
                    "no answer within the step timeout of {}",
                    switchyard_core::time::Dur(timeout_ms)
                ),
            )),
            None,
        ),
    };
    ((result, t0.elapsed().as_millis() as u64), tape)
}

/// Tries of one step write through storage faults (`Engine::put_records`).
const WRITE_TRIES: u32 = 3;

/// Logs what the step machine noted about a transition (and a judge's verdict on the span).
fn observe_note(run_id: &str, step: &str, note: &Note) {
    match note {
        Note::Selected { model, reason } => {
            tracing::info!(run_id, step, model = %model, reason = %reason, "model selected")
        }
        Note::Escalated { from, reason } => {
            tracing::info!(run_id, step, from = %from, reason = %reason, "cascade escalated")
        }
        Note::AttemptFailed {
            attempt,
            model,
            class,
        } => {
            tracing::warn!(run_id, step, attempt, model = %model, error_class = %class, "step attempt failed")
        }
        Note::OutputRejected { class } => {
            tracing::warn!(run_id, step, error_class = %class, "model output failed its schema")
        }
        Note::NotAVerdict { class } => {
            tracing::warn!(run_id, step, error_class = %class, "the judge's answer is not a verdict")
        }
        Note::Judged { verdict, pass } => {
            trace::evaluation(step, verdict, *pass);
            if !pass {
                tracing::info!(
                    run_id,
                    step,
                    score = verdict.score,
                    "the judge failed the value"
                );
            }
        }
        Note::PollFailed { class } => {
            tracing::warn!(run_id, step, error_class = %class, "poll failed; polling again later")
        }
        Note::DownloadFailed {
            host,
            download,
            class,
            message,
        } => {
            tracing::warn!(run_id, step, host = %host, download, error_class = %class, error = %message, "the asset's download failed")
        }
        Note::DataUrlUnreadable { class } => {
            tracing::warn!(run_id, step, error_class = %class, "the asset's data: URL is unreadable")
        }
    }
}

/// The step machine reads prices from the providers' own tables.
impl machine::Prices for crate::registry::Providers {
    fn serves(&self, model: &str) -> bool {
        self.for_model(model).is_some()
    }

    fn estimate_usd(&self, request: &ModelRequest) -> Option<f64> {
        self.for_model(&request.model)
            .map(|p| p.estimate_cost_usd(request))
    }

    fn price_usd(&self, model: &str, usage: Usage) -> Option<f64> {
        self.for_model(model)?.price_usd(model, usage)
    }

    fn repeat_is_free(&self, model: &str) -> bool {
        self.for_model(model)
            .is_some_and(|p| p.repeat_is_free(model))
    }
}
