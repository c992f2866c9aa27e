//! The run console at `/ui` (docs/operations.md, "Run console"): server-rendered HTML over
//! the same engine use-cases and tenant checks as the JSON API, served by the same router, so
//! `switchyard dev` and the AWS intake function both serve it.
//!
//! Decisions (docs/architecture.md, "The run console"):
//! - **Stateless sign-in.** `POST /ui/login` checks the key with the API's own tables
//!   ([`ApiKeys`](crate::ApiKeys), [`OperatorKeys`](crate::OperatorKeys)) and puts the key
//!   itself in an `HttpOnly`, `SameSite=Strict`, `Path=/ui` cookie (`Secure` when the request
//!   came over https). Every request authenticates the key again, exactly as a bearer key is:
//!   no session table, so any Lambda container serves any request, and removing a key from the
//!   configuration ends its sessions. The price: the key sits in the browser's cookie jar
//!   (unreadable by scripts); signing out clears it.
//! - **CSRF.** Every state-changing form carries a token derived from the session key
//!   ([`csrf_token`]), compared in constant time; `SameSite=Strict` is the second layer. The
//!   login form, which has no session yet, is refused when the browser says it was posted
//!   from another site (`Sec-Fetch-Site: cross-site`).
//! - **CSP.** Every `/ui` response carries [`CSP`]: no inline script or style, so the CSS and
//!   the little JavaScript are files under `/ui/static/` (embedded in the binary), charts are
//!   inline SVG sized by attributes, and every value is HTML-escaped by minijinja's autoescape.
//!
//! Layout: this file holds the router, the session, the security headers and the rendering;
//! [`pages`] the handlers (thin: a use-case, then a template); [`timeline`] and [`charts`] the
//! pure computations behind the run waterfall and the stats charts.

mod charts;
mod pages;
mod timeline;

use crate::ApiState;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::Router;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use switchyard_core::ports::ListScope;
use switchyard_core::webhook::constant_eq;
use switchyard_engine::EngineError;

/// The session cookie's name.
pub const COOKIE: &str = "sy_console";
/// How long a browser keeps the session cookie: a console left signed in on a shared machine
/// does not stay signed in for good.
pub const SESSION_MAX_AGE_S: u64 = 12 * 3600;
/// The Content-Security-Policy of every `/ui` response.
pub const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// The name of the CSRF field of every console form.
pub const CSRF_FIELD: &str = "csrf";
/// Largest form body the console reads (a key, a comment, a few ids).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The console's routes, with their security headers. Merged into [`crate::router`] outside
/// the JSON error mapping: the console answers errors as HTML pages.
pub(crate) fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/ui", get(pages::runs))
        .route("/ui/", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/runs", get(pages::runs))
        .route("/ui/runs/{id}", get(pages::run))
        .route("/ui/runs/{id}/approvals/{step}", post(pages::decide))
        .route("/ui/runs/{id}/cancel", post(pages::cancel))
        .route("/ui/runs/{id}/rerun", post(pages::rerun))
        .route(
            "/ui/runs/{id}/notifications/{webhook_id}/resend",
            post(pages::resend),
        )
        .route("/ui/approvals", get(pages::approvals))
        .route("/ui/dead-letters", get(pages::dead_letters))
        .route("/ui/dead-letters/redrive", post(pages::redrive))
        .route("/ui/stats", get(pages::stats))
        .route("/ui/static/{file}", get(static_file))
        .route("/ui/{*rest}", any(not_found))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// The headers of every console response: the CSP, no sniffing, no referrer (run ids in
/// URLs stay here), no framing, and no caching of pages (they show tenants' data).
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

// ---- static files ----

const CSS: &str = include_str!("../../ui/static/console.css");
const JS: &str = include_str!("../../ui/static/console.js");

async fn static_file(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, ct) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return not_found().await,
    };
    (
        [
            (header::CONTENT_TYPE, ct),
            // Embedded in the binary: they change with a deploy, so a short cache is enough.
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn not_found() -> Response {
    UiError::new(StatusCode::NOT_FOUND, "There is no such page.").into_response()
}

// ---- rendering ----

/// The templates, compiled once, with HTML autoescape for every `.html` template.
fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        // Printing a value that does not exist is a template bug, not an empty string.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        for (name, source) in TEMPLATES {
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "a console template does not compile");
            }
        }
        env
    })
}

const TEMPLATES: [(&str, &str); 9] = [
    ("base.html", include_str!("../../ui/templates/base.html")),
    ("login.html", include_str!("../../ui/templates/login.html")),
    ("error.html", include_str!("../../ui/templates/error.html")),
    ("runs.html", include_str!("../../ui/templates/runs.html")),
    ("run.html", include_str!("../../ui/templates/run.html")),
    (
        "approvals.html",
        include_str!("../../ui/templates/approvals.html"),
    ),
    (
        "dead_letters.html",
        include_str!("../../ui/templates/dead_letters.html"),
    ),
    ("stats.html", include_str!("../../ui/templates/stats.html")),
    (
        "macros.html",
        include_str!("../../ui/templates/macros.html"),
    ),
];

/// Renders `template` with `page` as its data and `me` (who is signed in, the CSRF token)
/// beside it; a template error is a 500 page that says so in the log.
pub(crate) fn render(
    status: StatusCode,
    template: &str,
    me: Option<&Session>,
    page: impl Serialize,
) -> Response {
    let nav = match template {
        "runs.html" | "run.html" => "runs",
        "approvals.html" => "approvals",
        "stats.html" => "stats",
        "dead_letters.html" => "dead_letters",
        _ => "",
    };
    let ctx = minijinja::context! {
        nav => nav,
        me => me.map(Session::public),
        page => minijinja::Value::from_serialize(&page),
    };
    match env().get_template(template).and_then(|t| t.render(ctx)) {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(template, error = %e, "rendering a console page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "the page could not be rendered (see the server log)",
            )
                .into_response()
        }
    }
}

/// An error as the console answers it: an HTML page with the status and a sentence.
#[derive(Debug)]
pub(crate) struct UiError {
    status: StatusCode,
    message: String,
    /// Who was signed in, when known: the page keeps its navigation.
    me: Option<Session>,
}

impl UiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> UiError {
        UiError {
            status,
            message: message.into(),
            me: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> UiError {
        UiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> UiError {
        UiError::new(StatusCode::FORBIDDEN, message)
    }

    /// The same error, on a page that shows `me`'s navigation.
    pub(crate) fn for_session(mut self, me: &Session) -> UiError {
        self.me = Some(me.clone());
        self
    }
}

impl From<switchyard_core::StoreError> for UiError {
    fn from(e: switchyard_core::StoreError) -> UiError {
        EngineError::from(e).into()
    }
}

impl From<EngineError> for UiError {
    fn from(e: EngineError) -> UiError {
        if e.status() >= 500 {
            tracing::error!(error_code = e.code(), error = %e, "console request failed");
        }
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        UiError::new(status, e.to_string())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct ErrorPage {
            status: u16,
            reason: &'static str,
            message: String,
        }
        render(
            self.status,
            "error.html",
            self.me.as_ref(),
            ErrorPage {
                status: self.status.as_u16(),
                reason: self.status.canonical_reason().unwrap_or("Error"),
                message: self.message,
            },
        )
    }
}

// ---- the session ----

/// Who a console session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Who {
    /// A tenant's API key: that tenant's runs only, as on `/v1`.
    Tenant(String),
    /// An operator key: every tenant's runs (decisions with no tenant), and the operator
    /// pages (dead letters).
    Operator,
}

/// A signed-in request: the key from the cookie, authenticated again on this request.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) who: Who,
    csrf: String,
}

/// What templates see of a session (never the key).
#[derive(Serialize)]
struct PublicSession {
    /// `acme` or `operator`.
    name: String,
    operator: bool,
    csrf: String,
}

impl Session {
    /// The tenant whose runs this session sees; `None` for an operator (every tenant's).
    pub(crate) fn tenant(&self) -> Option<&str> {
        match &self.who {
            Who::Tenant(t) => Some(t),
            Who::Operator => None,
        }
    }

    pub(crate) fn scope(&self) -> ListScope {
        match &self.who {
            Who::Tenant(t) => ListScope::Tenant(t.clone()),
            Who::Operator => ListScope::AllTenants,
        }
    }

    pub(crate) fn is_operator(&self) -> bool {
        self.who == Who::Operator
    }

    /// 403 unless `form` carries this session's CSRF token.
    pub(crate) fn check_csrf(&self, form: &Form) -> Result<(), UiError> {
        match form.get(CSRF_FIELD) {
            Some(t) if constant_eq(t, &self.csrf) => Ok(()),
            _ => Err(UiError::forbidden(
                "This form is missing its security token, or the token is not this session's. \
                 Reload the page and try again.",
            )
            .for_session(self)),
        }
    }

    fn public(&self) -> PublicSession {
        PublicSession {
            name: match &self.who {
                Who::Tenant(t) => t.clone(),
                Who::Operator => "operator".into(),
            },
            operator: self.is_operator(),
            csrf: self.csrf.clone(),
        }
    }
}

/// The CSRF token of a session: hex SHA-256 of `"switchyard-csrf\n" + key`. Derived from the
/// key, so it needs no storage and is the same in every container; a page from another site
/// cannot read it (the cookie is `HttpOnly` and the pages are same-origin).
pub fn csrf_token(key: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"switchyard-csrf\n");
    h.update(key.as_bytes());
    hex::encode(h.finalize())
}

/// Who `key` is: an operator key first (an operator may hold a key that is also a tenant's;
/// it signed in to operate), then a tenant's key. The same constant-time tables as the API.
pub(crate) fn who(state: &ApiState, key: &str) -> Option<Who> {
    if state.operators.contains(key) {
        return Some(Who::Operator);
    }
    state.keys.tenant(key).map(|t| Who::Tenant(t.to_string()))
}

/// The session cookie's value in the request, if any (the last one wins, as browsers send
/// the most specific path first and there is one path here).
fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then(|| value.trim().to_string())
        })
        .next_back()
}

/// The key a cookie value holds: the key's bytes in hex, which keeps any key a valid cookie
/// value whatever characters it has.
fn key_of(cookie: &str) -> Option<String> {
    hex::decode(cookie)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|k| !k.is_empty())
}

/// Whether the request came over https: the scheme of its URI, or a proxy's
/// `X-Forwarded-Proto` (API Gateway and load balancers set it).
pub(crate) fn is_https(parts_headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    uri.scheme_str() == Some("https")
        || parts_headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value that signs `key` in (or, with `None`, signs out).
pub(crate) fn session_cookie(key: Option<&str>, secure: bool) -> String {
    let (value, age) = match key {
        Some(k) => (hex::encode(k.as_bytes()), SESSION_MAX_AGE_S),
        None => (String::new(), 0),
    };
    let mut c = format!("{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={age}");
    if secure {
        c.push_str("; Secure");
    }
    c
}

impl FromRequestParts<ApiState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Response> {
        let cookie = cookie_value(&parts.headers);
        if let Some(key) = cookie.as_deref().and_then(key_of) {
            if let Some(who) = who(state, &key) {
                return Ok(Session {
                    who,
                    csrf: csrf_token(&key),
                });
            }
        }
        // Not signed in, or the key is no longer valid: pages send the browser to the login
        // form (clearing a stale cookie); a form post cannot be replayed after a login, so it
        // is refused.
        let secure = is_https(&parts.headers, &parts.uri);
        let mut resp = if parts.method == Method::GET || parts.method == Method::HEAD {
            Redirect::to("/ui/login").into_response()
        } else {
            UiError::new(
                StatusCode::UNAUTHORIZED,
                "You are not signed in (or your key is no longer valid). Sign in and try again.",
            )
            .into_response()
        };
        if cookie.is_some() {
            if let Ok(v) = HeaderValue::from_str(&session_cookie(None, secure)) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
        }
        Err(resp)
    }
}

/// A session that must be an operator's: a tenant is answered 403, as on `/v1/ops`.
pub(crate) struct OperatorSession(pub(crate) Session);

impl FromRequestParts<ApiState> for OperatorSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Response> {
        let s = Session::from_request_parts(parts, state).await?;
        if !s.is_operator() {
            return Err(UiError::forbidden(
                "This page is for operators: sign in with an operator key (SWITCHYARD_OPERATOR_KEYS).",
            )
            .for_session(&s)
            .into_response());
        }
        Ok(OperatorSession(s))
    }
}

// ---- forms and queries ----

/// A form body (`application/x-www-form-urlencoded`) or a query string, as name → value
/// pairs. Read by hand rather than into a struct, so that a missing CSRF field is answered
/// 403 by the session check, not 422 by a deserializer.
#[derive(Debug, Default)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub(crate) fn parse(bytes: &[u8]) -> Form {
        Form(
            url::form_urlencoded::parse(bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `name`, trimmed; `None` when absent or blank.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Form {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Form::parse(&bytes))
    }
}

/// A query string as a [`Form`].
pub(crate) fn query(raw: Option<&str>) -> Form {
    Form::parse(raw.unwrap_or("").as_bytes())
}

/// A 303 to `to` (after a form post: the browser loads the page with GET).
pub(crate) fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn the_csrf_token_is_the_hash_of_the_prefixed_key() {
        // sha256("switchyard-csrf\nkey-acme-0123456789"), computed independently.
        let want = hex::encode(Sha256::digest(b"switchyard-csrf\nkey-acme-0123456789"));
        assert_eq!(csrf_token("key-acme-0123456789"), want);
        assert_ne!(
            csrf_token("key-acme-0123456789"),
            csrf_token("key-acme-012345678")
        );
    }

    #[test]
    fn cookies_carry_the_attributes_and_round_trip_the_key() {
        let c = session_cookie(Some("k;ey =,\"x"), false);
        assert!(c.starts_with("sy_console="));
        for attr in ["Path=/ui", "HttpOnly", "SameSite=Strict", "Max-Age=43200"] {
            assert!(c.contains(attr), "{c}");
        }
        assert!(!c.contains("Secure"));
        let value = c
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("sy_console=")
            .unwrap();
        assert_eq!(key_of(value).as_deref(), Some("k;ey =,\"x"));
        assert!(session_cookie(Some("k"), true).ends_with("; Secure"));
        let out = session_cookie(None, false);
        assert!(
            out.starts_with("sy_console=;") && out.contains("Max-Age=0"),
            "{out}"
        );
        // Not hex, or empty: no key.
        assert_eq!(key_of("zz"), None);
        assert_eq!(key_of(""), None);
    }

    #[test]
    fn the_cookie_is_found_among_others_and_https_is_recognised() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sy_console=6b; b=2"),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("6b"));
        assert_eq!(cookie_value(&HeaderMap::new()), None);
        let plain: axum::http::Uri = "/ui".parse().unwrap();
        let tls: axum::http::Uri = "https://example.com/ui".parse().unwrap();
        assert!(!is_https(&HeaderMap::new(), &plain));
        assert!(is_https(&HeaderMap::new(), &tls));
        let mut fwd = HeaderMap::new();
        fwd.insert("x-forwarded-proto", HeaderValue::from_static("HTTPS, http"));
        assert!(is_https(&fwd, &plain));
        fwd.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        assert!(!is_https(&fwd, &plain));
    }

    #[test]
    fn every_template_compiles() {
        for (name, _) in TEMPLATES {
            env()
                .get_template(name)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    #[test]
    fn autoescape_is_on_for_html_templates() {
        let page = serde_json::json!({"status": 400, "reason": "Bad Request",
            "message": "<script>alert(1)</script>"});
        let html = env()
            .get_template("error.html")
            .unwrap()
            .render(minijinja::context! { me => (), page => page })
            .unwrap();
        // `/` is escaped too (`&#x2f;`), as minijinja's HTML escaping does.
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<script>alert(1)"), "{html}");
    }
}
