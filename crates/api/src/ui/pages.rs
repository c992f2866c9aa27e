//! The console's pages and form posts. Each handler is thin: it reads the session and the
//! request, calls the engine's use-cases with the session's tenant (`None` for an operator),
//! and renders a template with what they returned. Forms check the CSRF token before
//! anything else, and answer with a 303 to the page that shows the result.

use super::{
    charts, query, render, see_other, session_cookie, timeline, who, Form, OperatorSession,
    Session, UiError,
};
use crate::ApiState;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use switchyard_core::ports::{ListScope, QueueName, RunQuery};
use switchyard_core::state::{RunStatus, StepStatus, ValueRef};
use switchyard_core::time::{rfc3339_ms, Dur};
use switchyard_core::workflow::StepKind;
use switchyard_core::ErrorClass;
use switchyard_engine::deadletters::{self, DeadLetterView};
use switchyard_engine::notifier::NotificationAttempt;
use switchyard_engine::stats::{Stats, StatsQuery};
use switchyard_engine::view::RunView;

/// Rows of a runs page.
pub const PAGE_ROWS: usize = 50;
/// The most runs one runs-page request reads when it filters by error class, model or prompt
/// version (each is one more read of a run); past it the page says the scan was cut and its
/// "next" link goes on from there.
pub const MAX_SCANNED: usize = 300;
/// The most waiting runs the approvals page reads.
pub const MAX_WAITING: usize = 200;
/// Longest input or output shown inline on the run page, in characters of pretty JSON.
pub const MAX_SHOWN_CHARS: usize = 20_000;

type Page = Result<Response, UiError>;

fn time(ms: u64) -> String {
    let t = rfc3339_ms(ms);
    // `2026-12-03T13:04:05.123Z` → `2026-12-03 13:04:05Z`: seconds are enough to read.
    match (t.get(..10), t.get(11..19)) {
        (Some(d), Some(h)) => format!("{d} {h}Z"),
        _ => t,
    }
}

fn pretty(v: &Value) -> (String, bool) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    if text.chars().count() > MAX_SHOWN_CHARS {
        (text.chars().take(MAX_SHOWN_CHARS).collect(), true)
    } else {
        (text, false)
    }
}

/// A fixed sentence for a `done` query parameter (never the parameter itself).
fn flash(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "approved" => "Approved: the run goes on.",
        "rejected" => "Rejected: the run ends failed (rejected).",
        "cancel_requested" => "Cancellation requested: steps in flight finish, nothing new starts.",
        "resent" => "The notification is queued again, with the same webhook-id.",
        "redriven" => "Put back on their queue.",
        "rerun" => "Rerun started: this new run reruns the old one from the chosen step and reuses the rest.",
        _ => return None,
    })
}

// ---- sign-in ----

#[derive(Serialize)]
struct LoginPage {
    error: Option<&'static str>,
}

pub(crate) async fn login_form() -> Response {
    render(
        StatusCode::OK,
        "login.html",
        None,
        LoginPage { error: None },
    )
}

/// Checks the key like a bearer key and, if it is one, signs the browser in with it.
pub(crate) async fn login(
    State(s): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    form: Form,
) -> Response {
    // No session yet, so no token: a login posted from another site (to sign a victim in as
    // someone else) is refused by what the browser says of its origin.
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return UiError::forbidden("Sign in from the console's own login page.").into_response();
    }
    let Some(key) = form.get("key") else {
        let page = LoginPage {
            error: Some("Enter an API key or an operator key."),
        };
        return render(StatusCode::BAD_REQUEST, "login.html", None, page);
    };
    if who(&s, key).is_none() {
        let page = LoginPage {
            error: Some("That key is not valid here."),
        };
        return render(StatusCode::UNAUTHORIZED, "login.html", None, page);
    }
    let mut resp = see_other("/ui/runs");
    let cookie = session_cookie(Some(key), super::is_https(&headers, &uri));
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// Clears the session cookie. The key itself stays valid (it is the API's key): signing out
/// removes it from this browser.
pub(crate) async fn logout(me: Session, headers: HeaderMap, uri: Uri, form: Form) -> Page {
    me.check_csrf(&form)?;
    let mut resp = see_other("/ui/login");
    let cookie = session_cookie(None, super::is_https(&headers, &uri));
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

// ---- runs ----

#[derive(Serialize, Default)]
struct Filters {
    status: Option<String>,
    workflow: Option<String>,
    error_class: Option<String>,
    model: Option<String>,
    prompt_version: Option<String>,
    since: Option<String>,
    tenant: Option<String>,
}

impl Filters {
    fn url(&self, cursor: Option<&str>) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("status", &self.status),
            ("workflow", &self.workflow),
            ("error_class", &self.error_class),
            ("model", &self.model),
            ("prompt_version", &self.prompt_version),
            ("since", &self.since),
            ("tenant", &self.tenant),
        ] {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
        if let Some(c) = cursor {
            q.append_pair("cursor", c);
        }
        let q = q.finish();
        if q.is_empty() {
            "/ui/runs".into()
        } else {
            format!("/ui/runs?{q}")
        }
    }

    /// Filters the store cannot apply: each needs the run read.
    fn deep(&self) -> bool {
        self.error_class.is_some() || self.model.is_some() || self.prompt_version.is_some()
    }
}

#[derive(Serialize)]
struct RunRow {
    run_id: String,
    tenant: String,
    workflow: String,
    version: String,
    status: &'static str,
    created: String,
    updated: String,
}

#[derive(Serialize)]
struct RunsPage {
    filters: Filters,
    statuses: Vec<&'static str>,
    workflows: Vec<String>,
    error_classes: Vec<&'static str>,
    rows: Vec<RunRow>,
    next_url: Option<String>,
    first_url: Option<String>,
    /// Runs read for the error class / model / prompt version filters.
    scanned: usize,
    /// The scan stopped at [`MAX_SCANNED`] before the page was full.
    cut: bool,
    deep: bool,
    max_scanned: usize,
}

fn parse_status(s: &str) -> Result<RunStatus, UiError> {
    serde_json::from_value(Value::String(s.to_string())).map_err(|_| {
        UiError::bad_request(format!(
            "`{s}` is not a run status (pending, running, waiting, succeeded, failed, cancelled)"
        ))
    })
}

/// Whether a run matches the filters that need its state.
fn matches_deep(f: &Filters, snap: &switchyard_core::state::RunSnapshot) -> bool {
    let class_ok = f.error_class.as_deref().is_none_or(|c| {
        snap.header
            .error
            .as_ref()
            .is_some_and(|e| e.class.as_str() == c)
            || snap
                .steps
                .iter()
                .any(|r| r.error.as_ref().is_some_and(|e| e.class.as_str() == c))
    });
    let model_ok = f.model.as_deref().is_none_or(|m| {
        snap.steps.iter().any(|r| {
            r.model.as_deref() == Some(m) || r.escalations.iter().any(|e| e.from == m || e.to == m)
        })
    });
    let pv_ok = f.prompt_version.as_deref().is_none_or(|p| {
        snap.steps
            .iter()
            .any(|r| r.prompt_version.as_deref() == Some(p))
    });
    class_ok && model_ok && pv_ok
}

/// `/ui` and `/ui/runs`: a page of runs, newest first, filtered.
pub(crate) async fn runs(State(s): State<ApiState>, me: Session, RawQuery(raw): RawQuery) -> Page {
    runs_page(&s, &me, raw.as_deref())
        .await
        .map_err(|e| e.for_session(&me))
}

async fn runs_page(s: &ApiState, me: &Session, raw: Option<&str>) -> Page {
    let q = query(raw);
    let own = |k: &str| q.get(k).map(str::to_string);
    let filters = Filters {
        status: own("status"),
        workflow: own("workflow"),
        error_class: own("error_class"),
        model: own("model"),
        prompt_version: own("prompt_version"),
        since: own("since"),
        // Only an operator chooses whose runs: a tenant's scope is its own.
        tenant: own("tenant").filter(|_| me.is_operator()),
    };
    let status = filters.status.as_deref().map(parse_status).transpose()?;
    if let Some(c) = filters.error_class.as_deref() {
        if ErrorClass::parse(c).is_none() {
            return Err(UiError::bad_request(format!("`{c}` is not an error class")));
        }
    }
    let since_ms = match filters.since.as_deref() {
        None => None,
        Some(t) => {
            let d = Dur::parse(t).map_err(UiError::bad_request)?;
            Some(s.engine.now().saturating_sub(d.ms()))
        }
    };
    let scope = match (&filters.tenant, me.scope()) {
        (Some(t), ListScope::AllTenants) => ListScope::Tenant(t.clone()),
        (_, scope) => scope,
    };
    let deep = filters.deep();
    let mut rows = Vec::new();
    let mut scanned = 0;
    let mut cursor = q.get("cursor").map(str::to_string);
    let mut cut = false;
    loop {
        // Without deep filters one store page is the page; with them, pages of at least 25
        // until the page is full or the scan bound is reached (the last store page ends
        // exactly where the next "next" link goes on).
        let limit = if deep {
            (PAGE_ROWS - rows.len()).max(25).min(MAX_SCANNED - scanned)
        } else {
            PAGE_ROWS
        };
        let mut rq = RunQuery::new(scope.clone(), limit);
        rq.status = status;
        rq.workflow = filters.workflow.clone();
        rq.cursor = cursor.take();
        let page = s.engine.list_runs(&rq).await?;
        let mut older = false;
        for r in page.runs {
            if since_ms.is_some_and(|t| r.created_at < t) {
                older = true;
                break;
            }
            scanned += 1;
            if deep {
                let snap = s.engine.load_for(me.tenant(), &r.run_id).await?;
                if !matches_deep(&filters, &snap) {
                    continue;
                }
            }
            rows.push(RunRow {
                status: r.status.as_str(),
                created: time(r.created_at),
                updated: time(r.updated_at),
                run_id: r.run_id,
                tenant: r.tenant,
                workflow: r.workflow,
                version: r.version,
            });
        }
        // Newest first: past `since` nothing newer follows.
        cursor = if older { None } else { page.cursor };
        if !deep || cursor.is_none() || rows.len() >= PAGE_ROWS {
            break;
        }
        if scanned >= MAX_SCANNED {
            cut = true;
            break;
        }
    }
    let page = RunsPage {
        next_url: cursor.as_deref().map(|c| filters.url(Some(c))),
        first_url: q.get("cursor").map(|_| filters.url(None)),
        filters,
        statuses: [
            RunStatus::Pending,
            RunStatus::Running,
            RunStatus::Waiting,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect(),
        workflows: s
            .engine
            .workflows
            .list()
            .into_iter()
            .map(|(n, _)| n)
            .collect(),
        error_classes: ErrorClass::ALL.iter().map(|c| c.as_str()).collect(),
        rows,
        scanned,
        cut,
        deep,
        max_scanned: MAX_SCANNED,
    };
    Ok(render(StatusCode::OK, "runs.html", Some(me), page))
}

// ---- one run ----

#[derive(Serialize)]
struct AttemptRow {
    attempt: u32,
    at: String,
    status: Option<u16>,
    error: Option<String>,
    latency_ms: u64,
    outcome: String,
}

#[derive(Serialize)]
struct NotificationGroup {
    webhook_id: String,
    event: String,
    last_outcome: String,
    resendable: bool,
    attempts: Vec<AttemptRow>,
}

#[derive(Serialize)]
struct EventRow {
    at: String,
    offset: String,
    kind: Value,
    step: Option<String>,
    attempt: Option<u32>,
    detail: String,
}

#[derive(Serialize)]
struct OutputLink {
    url: String,
    bytes: u64,
    sha256: String,
}

#[derive(Serialize)]
struct RerunForm {
    steps: Vec<String>,
    /// The step a rerun starts from when none is chosen (the first failed one).
    default_from: Option<String>,
    nonce: String,
}

#[derive(Serialize)]
struct RunPage {
    run: RunView,
    tenant: String,
    created: String,
    ended: Option<String>,
    duration: String,
    input: String,
    input_cut: bool,
    output: String,
    output_cut: bool,
    /// A large output: its presigned link instead of its text.
    output_link: Option<OutputLink>,
    timeline: timeline::Timeline,
    /// Approval steps waiting for a decision.
    gates: Vec<String>,
    cancellable: bool,
    /// An ended run can be rerun from a step (`crate::rerun`): the form's steps, and the
    /// token that makes a double submit one rerun (it is the form's idempotency key).
    rerun: Option<RerunForm>,
    notifications: Vec<NotificationGroup>,
    history: Vec<EventRow>,
    flash: Option<&'static str>,
    /// Reload every few seconds while the run moves by itself.
    refresh: bool,
}

fn group_notifications(
    attempts: &[NotificationAttempt],
    may_resend: bool,
) -> Vec<NotificationGroup> {
    let mut groups: Vec<NotificationGroup> = Vec::new();
    for a in attempts {
        let row = AttemptRow {
            attempt: a.attempt,
            at: time(a.at),
            status: a.status,
            error: a.error.clone(),
            latency_ms: a.latency_ms,
            outcome: a.outcome.clone(),
        };
        match groups.iter_mut().find(|g| g.webhook_id == a.webhook_id) {
            Some(g) => {
                g.last_outcome = a.outcome.clone();
                g.attempts.push(row);
            }
            None => groups.push(NotificationGroup {
                webhook_id: a.webhook_id.clone(),
                event: a.event.clone(),
                last_outcome: a.outcome.clone(),
                resendable: false,
                attempts: vec![row],
            }),
        }
    }
    for g in &mut groups {
        g.resendable =
            may_resend && switchyard_engine::resend::gave_up(attempts, &g.webhook_id) == Some(true);
    }
    groups
}

/// `/ui/runs/{id}`: the waterfall, the decisions, the output, the notifications, the history.
pub(crate) async fn run(
    State(s): State<ApiState>,
    me: Session,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Page {
    run_page(&s, &me, &id, raw.as_deref())
        .await
        .map_err(|e| e.for_session(&me))
}

async fn run_page(s: &ApiState, me: &Session, id: &str, raw: Option<&str>) -> Page {
    let snap = s.engine.load_for(me.tenant(), id).await?;
    let view = s.engine.view(&snap).await?;
    let events = s.engine.history(me.tenant(), id).await?;
    let now = s.engine.now();
    let h = &snap.header;
    let input = s
        .engine
        .load_value(&h.input)
        .await
        .map_err(switchyard_engine::EngineError::from)?;
    let (input, input_cut) = pretty(&input);
    // An output past the inline limit is answered as a presigned link (RunView::output):
    // show the link, not a document describing it.
    let output_link = match &h.output {
        Some(ValueRef::Blob { bytes, .. })
            if *bytes > s.engine.config.inline_limit_bytes as u64 =>
        {
            Some(OutputLink {
                url: view.output["url"].as_str().unwrap_or_default().to_string(),
                bytes: view.output["bytes"].as_u64().unwrap_or(*bytes),
                sha256: view.output["sha256"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            })
        }
        _ => None,
    };
    let (output, output_cut) = pretty(&view.output);
    let timeline = timeline::build(&view, &snap, &events, now);
    let gates = view
        .steps
        .iter()
        .filter(|st| st.kind == "approval" && st.status == StepStatus::Waiting)
        .map(|st| st.name.clone())
        .collect();
    let history = events
        .iter()
        .map(|e| EventRow {
            at: time(e.at),
            offset: format!("+{}", timeline::fmt_ms(e.at.saturating_sub(h.created_at))),
            kind: serde_json::to_value(e.kind).unwrap_or(Value::Null),
            step: e.step.clone(),
            attempt: e.attempt,
            detail: if e.detail.is_null() {
                String::new()
            } else {
                e.detail.to_string()
            },
        })
        .collect();
    let end = view.ended_at.unwrap_or(now);
    let page = RunPage {
        tenant: h.tenant.clone(),
        created: time(view.created_at),
        ended: view.ended_at.map(time),
        duration: timeline::fmt_ms(end.saturating_sub(view.created_at)),
        input,
        input_cut,
        output,
        output_cut,
        output_link,
        timeline,
        gates,
        cancellable: !h.status.is_terminal() && !h.cancel_requested,
        rerun: h.status.is_terminal().then(|| RerunForm {
            steps: view.steps.iter().map(|st| st.name.clone()).collect(),
            default_from: view
                .steps
                .iter()
                .find(|st| st.status == StepStatus::Failed)
                .map(|st| st.name.clone()),
            nonce: uuid::Uuid::new_v4().simple().to_string(),
        }),
        notifications: group_notifications(&view.notifications, true),
        history,
        flash: flash(query(raw).get("done")),
        refresh: matches!(h.status, RunStatus::Pending | RunStatus::Running),
        run: view,
    };
    Ok(render(StatusCode::OK, "run.html", Some(me), page))
}

/// Where a decision sends the browser back to: the approvals page when it was made there.
fn back_to(form: &Form, id: &str, done: &str) -> String {
    match form.get("back") {
        Some("approvals") => format!("/ui/approvals?done={done}"),
        _ => format!("/ui/runs/{id}?done={done}"),
    }
}

/// Approve or reject a waiting approval gate (`decision`: `approve` or `reject`).
pub(crate) async fn decide(
    State(s): State<ApiState>,
    me: Session,
    Path((id, step)): Path<(String, String)>,
    form: Form,
) -> Page {
    me.check_csrf(&form)?;
    let approved = match form.get("decision") {
        Some("approve") => true,
        Some("reject") => false,
        _ => {
            return Err(UiError::bad_request("decision must be approve or reject").for_session(&me))
        }
    };
    let comment = form.get("comment").map(str::to_string);
    if comment
        .as_ref()
        .is_some_and(|c| c.len() > crate::routes::MAX_COMMENT_BYTES)
    {
        return Err(UiError::bad_request(format!(
            "the comment is longer than {} bytes",
            crate::routes::MAX_COMMENT_BYTES
        ))
        .for_session(&me));
    }
    s.engine
        .decide(me.tenant(), &id, &step, approved, comment)
        .await
        .map_err(|e| UiError::from(e).for_session(&me))?;
    s.kicked();
    let done = if approved { "approved" } else { "rejected" };
    Ok(see_other(&back_to(&form, &id, done)))
}

/// Ask a run to stop.
pub(crate) async fn cancel(
    State(s): State<ApiState>,
    me: Session,
    Path(id): Path<String>,
    form: Form,
) -> Page {
    me.check_csrf(&form)?;
    s.engine
        .cancel(me.tenant(), &id)
        .await
        .map_err(|e| UiError::from(e).for_session(&me))?;
    s.kicked();
    Ok(see_other(&format!("/ui/runs/{id}?done=cancel_requested")))
}

/// Queue again a notification that gave up.
pub(crate) async fn resend(
    State(s): State<ApiState>,
    me: Session,
    Path((id, webhook_id)): Path<(String, String)>,
    form: Form,
) -> Page {
    me.check_csrf(&form)?;
    s.engine
        .resend_notification(me.tenant(), &id, &webhook_id)
        .await
        .map_err(|e| UiError::from(e).for_session(&me))?;
    s.kicked();
    Ok(see_other(&format!("/ui/runs/{id}?done=resent")))
}

/// Rerun an ended run from a step (`from`; empty: the first failed step), optionally on the
/// workflow's newest version (`latest`), then show the new run. The form's `nonce` is the
/// rerun's idempotency key, so a second submit of the same form lands on the same rerun.
pub(crate) async fn rerun(
    State(s): State<ApiState>,
    me: Session,
    Path(id): Path<String>,
    form: Form,
) -> Page {
    me.check_csrf(&form)?;
    let from = form
        .get("from")
        .filter(|f| !f.is_empty())
        .map(str::to_string);
    let latest = form.get("latest").is_some_and(|v| v == "on" || v == "true");
    let key = form
        .get("nonce")
        .filter(|n| !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(|n| format!("console-rerun:{n}"));
    let req = switchyard_engine::rerun::RerunRequest {
        from,
        input: None,
        latest,
    };
    let r = s
        .engine
        .rerun(me.tenant(), &id, req, key.as_deref())
        .await
        .map_err(|e| UiError::from(e).for_session(&me))?;
    s.kicked();
    Ok(see_other(&format!("/ui/runs/{}?done=rerun", r.run_id)))
}

// ---- approvals ----

#[derive(Serialize)]
struct Gate {
    step: String,
    message: Option<String>,
    deadline: Option<String>,
}

#[derive(Serialize)]
struct Waiting {
    run_id: String,
    tenant: String,
    workflow: String,
    version: String,
    created: String,
    input: String,
    gates: Vec<Gate>,
}

#[derive(Serialize)]
struct ApprovalsPage {
    runs: Vec<Waiting>,
    /// More waiting runs than one page reads.
    cut: bool,
    max_waiting: usize,
    flash: Option<&'static str>,
}

/// `/ui/approvals`: every run waiting for a person, with its gates' forms.
pub(crate) async fn approvals(
    State(s): State<ApiState>,
    me: Session,
    RawQuery(raw): RawQuery,
) -> Page {
    approvals_page(&s, &me, raw.as_deref())
        .await
        .map_err(|e| e.for_session(&me))
}

async fn approvals_page(s: &ApiState, me: &Session, raw: Option<&str>) -> Page {
    let mut out = Vec::new();
    let mut cursor = None;
    let mut read = 0;
    let mut cut = false;
    loop {
        let mut q = RunQuery::new(me.scope(), 100.min(MAX_WAITING - read));
        q.status = Some(RunStatus::Waiting);
        q.cursor = cursor.take();
        let page = s.engine.list_runs(&q).await?;
        read += page.runs.len();
        for r in page.runs {
            let snap = s.engine.load_for(me.tenant(), &r.run_id).await?;
            let wf = s.engine.definition(&snap.header.workflow.hash).await?;
            let gates: Vec<Gate> = snap
                .steps
                .iter()
                .filter(|rec| rec.status == StepStatus::Waiting)
                .filter_map(|rec| match wf.step(&rec.step).map(|st| &st.kind) {
                    Some(StepKind::Approval(a)) => Some(Gate {
                        step: rec.step.clone(),
                        message: a.message.clone(),
                        deadline: rec.deadline_at.map(time),
                    }),
                    _ => None,
                })
                .collect();
            if gates.is_empty() {
                continue;
            }
            let input = s
                .engine
                .load_value(&snap.header.input)
                .await
                .map_err(switchyard_engine::EngineError::from)?;
            let mut input = input.to_string();
            if input.chars().count() > 600 {
                input = input.chars().take(600).collect::<String>() + "…";
            }
            out.push(Waiting {
                run_id: r.run_id,
                tenant: r.tenant,
                workflow: r.workflow,
                version: r.version,
                created: time(r.created_at),
                input,
                gates,
            });
        }
        match page.cursor {
            Some(c) if read < MAX_WAITING => cursor = Some(c),
            Some(_) => {
                cut = true;
                break;
            }
            None => break,
        }
    }
    let page = ApprovalsPage {
        runs: out,
        cut,
        max_waiting: MAX_WAITING,
        flash: flash(query(raw).get("done")),
    };
    Ok(render(StatusCode::OK, "approvals.html", Some(me), page))
}

// ---- dead letters (operators) ----

#[derive(Serialize)]
struct LetterRow {
    #[serde(flatten)]
    letter: DeadLetterView,
    failed: String,
}

#[derive(Serialize)]
struct DeadLettersPage {
    queue: Option<&'static str>,
    letters: Vec<LetterRow>,
    work: usize,
    notify: usize,
    redriven: Option<usize>,
}

fn parse_queue(q: Option<&str>) -> Result<Option<QueueName>, UiError> {
    q.map(|q| {
        QueueName::parse(q)
            .ok_or_else(|| UiError::bad_request(format!("queue must be work or notify, not `{q}`")))
    })
    .transpose()
}

fn inboxes(s: &ApiState) -> Result<&switchyard_engine::deadletters::Inboxes, UiError> {
    s.inboxes.as_ref().ok_or_else(|| {
        UiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "This server was started without access to the queues' dead letters.",
        )
    })
}

/// `/ui/dead-letters`: both queues' dead letters with their runs, and redrive forms.
pub(crate) async fn dead_letters(
    State(s): State<ApiState>,
    OperatorSession(me): OperatorSession,
    RawQuery(raw): RawQuery,
) -> Page {
    let q = query(raw.as_deref());
    let result = async {
        let queue = parse_queue(q.get("queue"))?;
        let letters = deadletters::list(&s.engine, inboxes(&s)?, queue).await?;
        let page = DeadLettersPage {
            queue: queue.map(QueueName::as_str),
            work: letters.iter().filter(|l| l.queue == "work").count(),
            notify: letters.iter().filter(|l| l.queue == "notify").count(),
            letters: letters
                .into_iter()
                .map(|l| LetterRow {
                    failed: time(l.failed_at),
                    letter: l,
                })
                .collect(),
            redriven: q.get("redriven").and_then(|n| n.parse().ok()),
        };
        Ok::<_, UiError>(render(StatusCode::OK, "dead_letters.html", Some(&me), page))
    }
    .await;
    result.map_err(|e| e.for_session(&me))
}

/// Put back one dead letter (`id`) or all of a queue's (`all=1`).
pub(crate) async fn redrive(
    State(s): State<ApiState>,
    OperatorSession(me): OperatorSession,
    form: Form,
) -> Page {
    me.check_csrf(&form)?;
    let result = async {
        let queue = parse_queue(form.get("queue"))?;
        let ids = match (form.get("all"), form.get("id")) {
            (Some("1"), None) => None,
            (None, Some(id)) => Some(vec![id.to_string()]),
            _ => {
                return Err(UiError::bad_request(
                    "give either one dead letter's id or all=1",
                ))
            }
        };
        let done = deadletters::redrive(inboxes(&s)?, queue, ids.as_deref()).await?;
        s.kicked();
        Ok(see_other(&format!(
            "/ui/dead-letters?redriven={}",
            done.work + done.notify
        )))
    }
    .await;
    result.map_err(|e: UiError| e.for_session(&me))
}

// ---- stats ----

#[derive(Serialize)]
struct StatsPage {
    stats: Stats,
    charts: std::collections::BTreeMap<String, charts::WorkflowCharts>,
    workflow: Option<String>,
    since: String,
    by: Option<String>,
    /// An operator's tenant filter (every tenant when absent).
    tenant: Option<String>,
    workflows: Vec<String>,
    from: String,
    to: String,
}

/// `/ui/stats`: per workflow and step, figures and their hourly charts, the model or
/// prompt-version comparison, cascade savings. A tenant sees its own runs; an operator every
/// tenant's, or one tenant's (`tenant`).
pub(crate) async fn stats(State(s): State<ApiState>, me: Session, RawQuery(raw): RawQuery) -> Page {
    let q = query(raw.as_deref());
    let tenant = q
        .get("tenant")
        .filter(|_| me.is_operator())
        .map(str::to_string);
    let scope = match &tenant {
        Some(t) => ListScope::Tenant(t.clone()),
        None => me.scope(),
    };
    let all_tenants = scope == ListScope::AllTenants;
    let result = async {
        let sq = StatsQuery::parse(scope, q.get("workflow"), q.get("since"))?
            .with_by(q.get("by"))?;
        let read = async {
            let stats = s.engine.stats(&sq).await?;
            let series = s.engine.stats_series(&sq).await?;
            Ok::<_, switchyard_engine::EngineError>((stats, series))
        };
        let (stats, series) = match read.await {
            Ok(r) => r,
            // DynamoDB keeps the aggregates per tenant and will not add every tenant up
            // (docs/architecture.md, "Stats aggregates"): say what to do instead.
            Err(switchyard_engine::EngineError::Store(switchyard_core::StoreError::Invalid(m)))
                if all_tenants =>
            {
                return Err(UiError::bad_request(format!(
                    "This deployment's store keeps stats per tenant and cannot add every tenant up ({m}): choose a tenant."
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let page = StatsPage {
            charts: charts::for_series(&series),
            workflow: sq.workflow.clone(),
            since: sq.since_text.clone(),
            by: sq.by.map(|b| b.as_str().to_string()),
            tenant: tenant.clone(),
            workflows: s.engine.workflows.list().into_iter().map(|(n, _)| n).collect(),
            from: time(stats.window.from),
            to: time(stats.window.to),
            stats,
        };
        Ok::<_, UiError>(render(StatusCode::OK, "stats.html", Some(&me), page))
    }
    .await;
    result.map_err(|e| e.for_session(&me))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn filter_urls_keep_the_filters_and_encode_them() {
        let f = Filters {
            status: Some("failed".into()),
            model: Some("local/gen & <x>".into()),
            ..Filters::default()
        };
        assert_eq!(
            f.url(Some("c.1.r")),
            "/ui/runs?status=failed&model=local%2Fgen+%26+%3Cx%3E&cursor=c.1.r"
        );
        assert_eq!(Filters::default().url(None), "/ui/runs");
        assert!(f.deep());
        assert!(!Filters::default().deep());
    }

    #[test]
    fn flash_messages_are_fixed_sentences() {
        assert!(flash(Some("approved")).is_some());
        assert_eq!(flash(Some("<script>")), None);
        assert_eq!(flash(None), None);
    }
}
