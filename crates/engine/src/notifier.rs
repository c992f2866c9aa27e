//! The notifier use-case: tell a run's `callback_url` that the run ended, or that it waits for
//! a person's approval.
//!
//! A notification is queued (on the notify queue) by the worker when the run ends or an
//! approval gate opens, carrying only identities; the notifier reads the run when it delivers,
//! so what the receiver gets is the run as it is then. Delivery is a Standard Webhooks POST
//! signed with every secret of `SWITCHYARD_CALLBACK_SECRET`, with a `webhook-id` derived from
//! the run and event (the same on every attempt and every re-queue, so a receiver drops
//! repeats by it). What an attempt's result means — delivered, stop, retry after a delay,
//! give up — is decided in core ([`switchyard_core::outbound::decide`]); retries are the
//! message coming back after that delay (a visibility change, as SQS does it), and the
//! queue dead-letters it after [`MAX_NOTIFY_ATTEMPTS`] receives. Every attempt is a
//! `notification_attempted` event in the run's history: `GET /v1/runs/{id}` and
//! `runs show` list them.

use crate::batch::{parse, BatchReport, Record};
use crate::trace::TraceContext;
use crate::{trace, Config, Engine, EngineError, Values};
use futures::future::join_all;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
pub use switchyard_core::outbound::MAX_NOTIFY_ATTEMPTS;
use switchyard_core::outbound::{self, Decision, DeliveryResult};
use switchyard_core::ports::{BlobStore, CallbackSender, Inbox, Message, QueueName, StateStore};
use switchyard_core::recovery;
use switchyard_core::state::{
    EventKind, HistoryEvent, Notification, NotifyEvent, RunHeader, RunSnapshot, RunStatus,
    StepStatus,
};
use switchyard_core::telemetry::{self, attr, Metric, MetricSink};
use switchyard_core::workflow::StepKind;
use switchyard_core::Clock;
use tracing::Instrument;

/// What handling one notification message came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notified {
    /// The receiver answered 2xx.
    Delivered,
    /// The receiver answered 410 Gone: it asked not to be called again.
    Stopped,
    /// Deliver again after this long (the message's visibility is set to it).
    Retry { delay_ms: u64 },
    /// Attempts spent, or the address refused by policy: give up.
    GaveUp,
    /// Nothing to send (the run is gone, has no callback URL, was notified already, or this
    /// deployment has no signing secret).
    Skipped(&'static str),
}

/// What becomes of a notification message after [`Notifier::notify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Delete it: delivered, stopped by the receiver, skipped, or refused by the address
    /// policy (which no retry changes; the attempt is in the run's history).
    Done,
    /// Bring it back after this long (its visibility).
    Later(u64),
    /// Attempts spent: let it come back once more, past the queue's receive count, which
    /// moves it to the dead letters (`dlq` shows it there).
    DeadLetter,
}

/// The disposition of a message delivered for the `receive_count`-th time.
pub fn disposition(notified: &Notified, receive_count: u32) -> Disposition {
    match notified {
        Notified::Retry { delay_ms } => Disposition::Later(*delay_ms),
        Notified::GaveUp if receive_count >= MAX_NOTIFY_ATTEMPTS => Disposition::DeadLetter,
        _ => Disposition::Done,
    }
}

/// One delivery attempt, as the run document shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NotificationAttempt {
    pub webhook_id: String,
    /// `run.succeeded`, `run.failed`, `run.cancelled` or `run.waiting_for_approval`.
    pub event: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Milliseconds since the Unix epoch.
    pub at: u64,
    /// The receiver's HTTP status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why there was no answer: `timeout`, `connect`, `refused`, `other`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub latency_ms: u64,
    /// `delivered`, `stopped`, `retry` or `gave_up`.
    pub outcome: String,
}

impl NotificationAttempt {
    /// Reads the attempts out of a run's history.
    pub fn from_history(events: &[HistoryEvent]) -> Vec<NotificationAttempt> {
        events
            .iter()
            .filter(|e| e.kind == EventKind::NotificationAttempted)
            .filter_map(|e| {
                let d = &e.detail;
                Some(NotificationAttempt {
                    webhook_id: d.get("webhook_id")?.as_str()?.to_string(),
                    event: d.get("event")?.as_str()?.to_string(),
                    attempt: e.attempt.unwrap_or(1),
                    at: e.at,
                    status: d.get("status").and_then(Value::as_u64).map(|s| s as u16),
                    error: d.get("error").and_then(Value::as_str).map(str::to_string),
                    latency_ms: d.get("latency_ms").and_then(Value::as_u64).unwrap_or(0),
                    outcome: d.get("outcome")?.as_str()?.to_string(),
                })
            })
            .collect()
    }
}

/// The event a run's status is news of, if any.
fn end_event(status: RunStatus) -> Option<NotifyEvent> {
    match status {
        RunStatus::Succeeded => Some(NotifyEvent::RunSucceeded),
        RunStatus::Failed => Some(NotifyEvent::RunFailed),
        RunStatus::Cancelled => Some(NotifyEvent::RunCancelled),
        _ => None,
    }
}

impl Engine {
    /// Queues the notification that a run ended (if it has a callback URL).
    pub(crate) async fn notify_ended(&self, header: &RunHeader) -> Result<(), EngineError> {
        match end_event(header.status) {
            Some(event) if header.callback_url.is_some() => {
                let n = Notification::new(&header.run_id, event, "end");
                self.queue.send(&Message::Notify(n), 0).await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Queues the notification that an approval gate opened (attempt `attempt` of `step`).
    pub(crate) async fn notify_approval(
        &self,
        header: &RunHeader,
        step: &str,
        attempt: u32,
    ) -> Result<(), EngineError> {
        if header.callback_url.is_none() {
            return Ok(());
        }
        let about = format!("approval:{step}:{attempt}");
        let n = Notification::new(&header.run_id, NotifyEvent::RunWaitingForApproval, &about);
        self.queue.send(&Message::Notify(n), 0).await?;
        Ok(())
    }

    /// A wake-up came for a run that has ended: if its end notification was never attempted
    /// (the worker that ended it died before queueing it), queue it again. The `webhook-id`
    /// is the same, so a receiver that did get it drops the repeat.
    pub(crate) async fn renotify_if_lost(&self, header: &RunHeader) -> Result<(), EngineError> {
        let Some(event) = end_event(header.status) else {
            return Ok(());
        };
        if header.callback_url.is_none() {
            return Ok(());
        }
        let n = Notification::new(&header.run_id, event, "end");
        let events = self.store.events(&header.run_id).await?;
        if !attempted(&events, &n.webhook_id) {
            self.queue.send(&Message::Notify(n), 0).await?;
        }
        Ok(())
    }

    /// The notifier over this engine's ports, metrics and trace context (delivering a
    /// notification, or a batch of them, is [`Notifier::notify`], [`Notifier::handle_batch`]).
    pub fn notifier(&self) -> Notifier {
        Notifier {
            store: self.store.clone(),
            blobs: self.blobs.clone(),
            values: self.values.clone(),
            clock: self.clock.clone(),
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            trace: self.trace.clone(),
        }
    }
}

/// What delivering notifications needs: the run's state, the blob store (an offloaded output,
/// an approval's pinned definition), the clock, the settings (the signing secrets, the
/// callback policy), the metrics and trace context — and none of the workflows, providers or
/// queue. The notifier Lambda function makes one on its own ([`Notifier::new`]), so it links
/// no workflow compiler, schema validator, template engine or provider adapter (issue 25:
/// a smaller function); every other host uses [`Engine::notifier`].
#[derive(Clone)]
pub struct Notifier {
    pub store: Arc<dyn StateStore>,
    pub blobs: Arc<dyn BlobStore>,
    values: Values,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<Config>,
    pub metrics: Arc<dyn MetricSink>,
    pub trace: Arc<dyn TraceContext>,
}

impl Notifier {
    /// A notifier that records no metrics and joins no trace (see [`Notifier::with_metrics`],
    /// [`Notifier::with_trace`]).
    pub fn new(
        store: Arc<dyn StateStore>,
        blobs: Arc<dyn BlobStore>,
        clock: Arc<dyn Clock>,
        config: Config,
    ) -> Notifier {
        Notifier {
            store,
            values: Values::new(blobs.clone()),
            blobs,
            clock,
            config: Arc::new(config),
            metrics: Arc::new(switchyard_core::telemetry::NoMetrics),
            trace: Arc::new(trace::NoTraces),
        }
    }

    /// With the deployment's metric sink.
    pub fn with_metrics(mut self, sink: Arc<dyn MetricSink>) -> Notifier {
        self.metrics = sink;
        self
    }

    /// Joining each run's trace through `trace`.
    pub fn with_trace(mut self, trace: Arc<dyn TraceContext>) -> Notifier {
        self.trace = trace;
        self
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Delivers a batch of notifications. A retry sets the record's visibility to its backoff
    /// through `inbox` and reports it failed, so the queue brings it back then.
    pub async fn handle_batch(
        &self,
        records: &[Record],
        inbox: &dyn Inbox,
        sender: &dyn CallbackSender,
    ) -> BatchReport {
        let mut report = BatchReport::default();
        let parsed: Vec<_> = records
            .iter()
            .filter_map(
                |r| match parse(QueueName::Notify, r, &mut report.failures) {
                    Some(Message::Notify(n)) => Some((r, n)),
                    _ => None,
                },
            )
            .collect();
        let results = join_all(parsed.iter().map(|(r, n)| async move {
            let come_back = match self.notify(n, r.receive_count, sender).await {
                Ok(notified) => match disposition(&notified, r.receive_count) {
                    Disposition::Done => false,
                    Disposition::Later(delay_ms) => {
                        if let Err(e) = inbox.change_visibility(&r.receipt, delay_ms).await {
                            tracing::warn!(error = %e, "visibility change failed; the notification comes back at its timeout");
                        }
                        true
                    }
                    // Visible again at once: the next receive finds it past the queue's
                    // receive limit and dead-letters it.
                    Disposition::DeadLetter => {
                        if let Err(e) = inbox.change_visibility(&r.receipt, 0).await {
                            tracing::warn!(error = %e, "visibility change failed; the notification dead-letters at its timeout");
                        }
                        true
                    }
                },
                Err(e) => {
                    tracing::warn!(run_id = %n.run_id, error = %e, "notification failed; it comes back");
                    if let Err(e) = inbox.change_visibility(&r.receipt, recovery::retry_delay_ms(r.receive_count)).await {
                        tracing::debug!(error = %e, "could not give a failed notification back early");
                    }
                    true
                }
            };
            Ok::<bool, EngineError>(come_back)
        }))
        .await;
        for ((r, _), result) in parsed.iter().zip(results) {
            if !matches!(result, Ok(false)) {
                report.failures.push(r.message_id.clone());
            }
        }
        report
    }

    /// Delivers one notification; `attempt` is this delivery's number (the message's receive
    /// count). Records the attempt in the run's history.
    pub async fn notify(
        &self,
        n: &Notification,
        attempt: u32,
        sender: &dyn CallbackSender,
    ) -> Result<Notified, EngineError> {
        let Some(snap) = self.store.load(&n.run_id).await? else {
            return Ok(Notified::Skipped("the run no longer exists"));
        };
        let span = trace::notify_span(&n.run_id, n.event.as_str(), attempt);
        trace::join_run(self.trace.as_ref(), &span, &snap.header);
        let notified = self
            .deliver(n, attempt, sender, snap, &span)
            .instrument(span.clone())
            .await;
        match &notified {
            Ok(done) => {
                let outcome = match done {
                    Notified::Delivered => "delivered",
                    Notified::Stopped => "stopped",
                    Notified::Retry { .. } => "retry",
                    Notified::GaveUp => "gave_up",
                    Notified::Skipped(_) => "skipped",
                };
                span.record(attr::NOTIFY_OUTCOME, outcome);
            }
            Err(e) => trace::failed(&span, e.code(), &e.to_string()),
        }
        notified
    }

    /// [`Notifier::notify`] of a run that exists, under the attempt's span (whose trace
    /// context goes to the receiver as `traceparent`).
    async fn deliver(
        &self,
        n: &Notification,
        attempt: u32,
        sender: &dyn CallbackSender,
        snap: RunSnapshot,
        span: &tracing::Span,
    ) -> Result<Notified, EngineError> {
        let Some(url) = snap.header.callback_url.clone() else {
            return Ok(Notified::Skipped("the run has no callback_url"));
        };
        if self.config.callback_secrets.trim().is_empty() {
            tracing::warn!(run_id = %n.run_id, "SWITCHYARD_CALLBACK_SECRET is not set: notification not sent");
            return Ok(Notified::Skipped("no SWITCHYARD_CALLBACK_SECRET"));
        }
        let history = self.store.events(&n.run_id).await?;
        if delivered(&history, &n.webhook_id) {
            return Ok(Notified::Skipped("delivered already"));
        }
        let body = serde_json::to_vec(&self.notification_body(&snap, n).await?)
            .map_err(|e| EngineError::Internal(format!("encoding a notification: {e}")))?;
        let ts = self.now() / 1000;
        let signature =
            outbound::signature_header(&self.config.callback_secrets, &n.webhook_id, ts, &body)
                .map_err(|e| {
                    EngineError::Internal(format!("SWITCHYARD_CALLBACK_SECRET is unusable: {e}"))
                })?;
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("webhook-id".to_string(), n.webhook_id.clone()),
            ("webhook-timestamp".to_string(), ts.to_string()),
            ("webhook-signature".to_string(), signature),
        ];
        if let Some(tp) = trace::traceparent_of(self.trace.as_ref(), span) {
            headers.push((attr::TRACEPARENT.to_string(), tp));
        }
        let sent = sender
            .deliver(&url, &headers, body, self.config.allow_private_callbacks)
            .await;
        let decision = outbound::decide(&sent.result, attempt);
        let (status, error) = match &sent.result {
            DeliveryResult::Status(s) => (Some(*s), None),
            DeliveryResult::Failed(e) => (None, Some(e.as_str())),
        };
        if let Some(s) = status {
            span.record(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(s));
        }
        if !matches!(decision, Decision::Delivered | Decision::Stop) {
            // No answer (`timeout`, `connect`…) or the status code, as HTTP clients report it.
            let class = error.map_or_else(|| status.unwrap_or(0).to_string(), str::to_string);
            trace::failed(span, &class, "the receiver did not take the notification");
        }
        let (outcome, notified) = match decision {
            Decision::Delivered => ("delivered", Notified::Delivered),
            Decision::Stop => ("stopped", Notified::Stopped),
            Decision::Retry { delay_ms } => ("retry", Notified::Retry { delay_ms }),
            Decision::DeadLetter => ("gave_up", Notified::GaveUp),
        };
        let mut ev = HistoryEvent::run(
            self.now(),
            EventKind::NotificationAttempted,
            json!({
                "webhook_id": n.webhook_id, "event": n.event.as_str(), "status": status,
                "error": error, "latency_ms": sent.latency_ms, "outcome": outcome,
            }),
        );
        ev.attempt = Some(attempt);
        self.store.append_events(&n.run_id, &[ev]).await?;
        let m = Metric::new(&telemetry::NOTIFICATIONS, &[outcome], 1.0);
        self.metrics.record(&[m.for_run(&n.run_id)]);
        tracing::info!(
            run_id = %n.run_id, webhook_id = %n.webhook_id, event = n.event.as_str(), attempt,
            status, error, latency_ms = sent.latency_ms, outcome, "notification attempt"
        );
        Ok(notified)
    }

    /// The notification body: `{type, timestamp, data}` as Standard Webhooks suggests.
    async fn notification_body(
        &self,
        snap: &RunSnapshot,
        n: &Notification,
    ) -> Result<Value, EngineError> {
        let h = &snap.header;
        let mut data = json!({
            "run_id": h.run_id,
            "workflow": h.workflow.name,
            "version": h.workflow.version,
            "status": h.status,
            "output": self.values.public_output(h.output.as_ref(), self.config.inline_limit_bytes).await?,
            "error": h.error,
            "cost_usd": switchyard_core::machine::budget::round_usd(snap.cost_usd()),
            "usage": snap.usage(),
            "links": {"self": format!("/v1/runs/{}", h.run_id), "events": format!("/v1/runs/{}/events", h.run_id)},
        });
        if n.event == NotifyEvent::RunWaitingForApproval {
            // Read, not cached: an approval notice is one per gate opened.
            let wf = crate::read_definition(self.blobs.as_ref(), &h.workflow.hash).await?;
            let waiting: Vec<&str> = snap
                .steps
                .iter()
                .filter(|r| r.status == StepStatus::Waiting)
                .filter(|r| {
                    wf.step(&r.step)
                        .is_some_and(|s| matches!(s.kind, StepKind::Approval(_)))
                })
                .map(|r| r.step.as_str())
                .collect();
            data["waiting_for_approval"] = json!(waiting);
        }
        Ok(json!({
            "type": n.event.as_str(),
            "timestamp": switchyard_core::time::rfc3339_ms(self.now()),
            "data": data,
        }))
    }
}

fn attempted(history: &[HistoryEvent], webhook_id: &str) -> bool {
    history
        .iter()
        .any(|e| e.kind == EventKind::NotificationAttempted && e.detail["webhook_id"] == webhook_id)
}

fn delivered(history: &[HistoryEvent], webhook_id: &str) -> bool {
    history.iter().any(|e| {
        e.kind == EventKind::NotificationAttempted
            && e.detail["webhook_id"] == webhook_id
            && matches!(e.detail["outcome"].as_str(), Some("delivered" | "stopped"))
    })
}
