//! The run document (docs/api.md#get-v1runsid): what `switchyard run --json`, `runs show` and
//! `GET /v1/runs/{id}` return.

use crate::{Engine, EngineError};
use serde::Serialize;
use serde_json::Value;
use switchyard_core::machine::budget::round_usd as round9;
use switchyard_core::state::{RunError, RunSnapshot, RunStatus, StepRecord, StepStatus, Usage};
use switchyard_core::workflow::Workflow;
use switchyard_core::ErrorClass;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub name: String,
    pub kind: String,
    pub status: StepStatus,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub prompt_version: Option<String>,
    pub attempts: u32,
    pub latency_ms: u64,
    pub cost_usd: f64,
    /// Tokens of every attempt's calls together (`null`: the step made no call that reported
    /// any). `cache_read_tokens`, `cache_write_tokens` and `reasoning_tokens` appear when not 0.
    pub usage: Option<Usage>,
    pub fallback_used: bool,
    pub error_class: Option<ErrorClass>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_request_id: Option<String>,
    /// Cascade steps: each move to a higher tier and why, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub escalations: Vec<switchyard_core::state::Escalation>,
    /// Cascade steps: what the top tier would have cost for the same calls (price table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_usd: Option<f64>,
    /// Cascade steps: `baseline_usd - cost_usd` (negative when escalating cost more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saving_usd: Option<f64>,
    /// Steps with `select`: the case that chose the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selected_because: Option<String>,
    /// A rerun reused this result from that run (the step was not called again here; its
    /// cost and tokens are the other run's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub run_id: String,
    pub workflow: String,
    pub version: String,
    pub definition_hash: String,
    pub status: RunStatus,
    pub output: Value,
    pub error: Option<RunError>,
    pub cost_usd: f64,
    /// The steps' tokens together.
    pub usage: Usage,
    pub created_at: u64,
    pub ended_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<Value>,
    pub steps: Vec<StepView>,
    /// Delivery attempts of the run's notifications to its `callback_url`, oldest first.
    pub notifications: Vec<crate::notifier::NotificationAttempt>,
    /// This run reruns that one, from that step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<switchyard_core::state::RerunOf>,
    /// The reruns of this run, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reruns: Vec<String>,
}

/// How long a presigned link to an offloaded output stays valid (1 hour).
pub const PRESIGN_TTL_MS: u64 = 3_600_000;

fn step_view(wf: &Workflow, id: &str, kind: &str, r: Option<&StepRecord>) -> StepView {
    let pending = StepRecord::pending(id);
    let r = r.unwrap_or(&pending);
    let _ = wf;
    StepView {
        name: id.to_string(),
        kind: kind.to_string(),
        status: r.status,
        provider: r.provider.clone(),
        model: r.model.clone(),
        prompt_version: r.prompt_version.clone(),
        attempts: r.attempt,
        latency_ms: r.latency_ms,
        cost_usd: round9(r.cost_usd),
        usage: r.usage,
        fallback_used: r.fallback_used,
        error_class: if r.status == StepStatus::Failed || r.status == StepStatus::Retrying {
            r.error.as_ref().map(|e| e.class)
        } else {
            None
        },
        error: if r.status == StepStatus::Failed {
            r.error.as_ref().map(|e| e.message.clone())
        } else {
            None
        },
        sources: r.sources.clone(),
        provider_request_id: r.provider_request_id.clone(),
        escalations: r
            .escalations
            .iter()
            .map(|e| switchyard_core::state::Escalation {
                cost_usd: round9(e.cost_usd),
                ..e.clone()
            })
            .collect(),
        baseline_usd: r.baseline_usd.map(round9),
        saving_usd: r.baseline_usd.map(|b| round9(b - r.cost_usd)),
        selected_because: r.selected.as_ref().map(|s| s.reason.clone()),
        reused_from: r.reused_from.clone(),
    }
}

impl Engine {
    /// One page of runs, newest first (the CLI's `runs list`, the API's `GET /v1/runs`).
    pub async fn list_runs(
        &self,
        query: &switchyard_core::ports::RunQuery,
    ) -> Result<switchyard_core::ports::RunPage, EngineError> {
        Ok(self.store.list_runs(query).await?)
    }

    /// A run's history, oldest first, as `tenant` sees it (another tenant's run is not found).
    pub async fn history(
        &self,
        tenant: Option<&str>,
        run_id: &str,
    ) -> Result<Vec<switchyard_core::state::HistoryEvent>, EngineError> {
        self.load_for(tenant, run_id).await?;
        Ok(self.store.events(run_id).await?)
    }

    /// The run document; large outputs are returned as a presigned link.
    pub async fn view(&self, snap: &RunSnapshot) -> Result<RunView, EngineError> {
        let wf = self.definition(&snap.header.workflow.hash).await?;
        let h = &snap.header;
        let output = self.public_output(h.output.as_ref()).await?;
        let notifications = crate::notifier::NotificationAttempt::from_history(
            &self.store.events(&h.run_id).await?,
        );
        let steps = wf
            .steps
            .iter()
            .map(|s| step_view(&wf, &s.id, s.kind.name(), snap.step(&s.id)))
            .collect();
        Ok(RunView {
            run_id: h.run_id.clone(),
            workflow: h.workflow.name.clone(),
            version: h.workflow.version.clone(),
            definition_hash: h.workflow.hash.clone(),
            status: h.status,
            output,
            error: h.error.clone(),
            cost_usd: round9(snap.cost_usd()),
            usage: snap.usage(),
            created_at: h.created_at,
            ended_at: h.ended_at,
            waiting_for: h
                .wait
                .as_ref()
                .filter(|_| h.status == switchyard_core::state::RunStatus::Waiting)
                .map(|w| serde_json::json!(w)),
            steps,
            notifications,
            rerun_of: h.rerun_of.clone(),
            reruns: h.reruns.clone(),
        })
    }

    /// A run output as clients see it ([`crate::Values::public_output`], under the step-value
    /// limit).
    pub async fn public_output(
        &self,
        output: Option<&switchyard_core::state::ValueRef>,
    ) -> Result<Value, EngineError> {
        self.values
            .public_output(output, self.config.inline_limit_bytes)
            .await
    }
}

impl crate::Values {
    /// A run output as clients see it: inline up to `inline_limit` bytes, else a presigned
    /// link to the blob with its size and sha256 (the blob key is the content's sha256).
    pub async fn public_output(
        &self,
        output: Option<&switchyard_core::state::ValueRef>,
        inline_limit: usize,
    ) -> Result<Value, EngineError> {
        use switchyard_core::state::ValueRef;
        let mut value = match output {
            None => Value::Null,
            Some(ValueRef::Inline { value }) => value.clone(),
            // Kept by reference to keep the header small, but small enough to show inline
            // (the same limit as step values).
            Some(r @ ValueRef::Blob { bytes, .. }) if *bytes <= inline_limit as u64 => {
                self.load(r).await?
            }
            Some(ValueRef::Blob { key, bytes }) => {
                let url = self.blobs.presign(key, PRESIGN_TTL_MS).await?;
                return Ok(serde_json::json!({"url": url, "bytes": bytes, "sha256": key}));
            }
        };
        // Kept assets get a fresh link on every read: the one made with the output may have
        // expired (or been signed with credentials that have).
        let mut links = std::collections::BTreeMap::new();
        for key in switchyard_core::asset::kept_keys(&value) {
            let url = self.blobs.presign(&key, PRESIGN_TTL_MS).await?;
            links.insert(key, url);
        }
        switchyard_core::asset::relink(&mut value, &links);
        Ok(value)
    }
}
