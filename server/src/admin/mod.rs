//! The operator dashboard at `/admin`: server-rendered pages behind a login
//! ([`auth`]), and the JSON they are made from at `/admin/api/…`.
//!
//! | route | what |
//! |---|---|
//! | `GET /admin/login`, `POST /admin/login` | the login form; a session cookie on success |
//! | `POST /admin/logout` | ends the session, or with `everywhere` every session on every replica (CSRF token required) |
//! | `GET /admin?csv=` | overview: egress per day over the last 30 days (chart), the store's counters, pending batches, rejections by error name; `csv=egress\|pending\|rejected` downloads a table |
//! | `GET /admin/api/overview` | the same, as JSON (session, or the admin token as bearer) |
//! | `GET /admin/nodes?q=&after=&format=csv` | nodes paid: total, payout; search by DID prefix, pages, CSV |
//! | `GET /admin/nodes/{did}?before=&format=csv` | a node: egress per day, total, payout, its batches with their receipts, paged by the cursor of the last shown (`<received_at>-<batch CID>`, so batches of one second are never skipped); CSV of the batches |
//! | `GET /admin/usage?q=&after=&customer=&format=csv` | spaces registered or with egress: customer, egress over 30 days, cost; one customer's spaces and bill; CSV per space and day |
//! | `GET /admin/api/nodes`, `/admin/api/nodes/{did}`, `/admin/api/usage` | the same, as JSON |
//! | `GET /admin/pending?after=`, `/admin/api/pending` | every pending batch, node by node, paged by the last shown ([`pending`]) |
//! | `GET /admin/failed?before=`, `/admin/api/failed` | the batches that failed as a whole, newest first: node, when, the error ([`failed`]) |
//! | `GET /admin/statements/{YYYY-MM}?format=csv`, `/admin/api/statements/{YYYY-MM}` | a UTC month's statement: nodes' pay, customers' bills, unassigned and non-billable bytes, whether it is final ([`statements`]) |
//!
//! A page asked for without a session redirects to the login; the API
//! answers 401 (the extractors and error types of [`access`]).

use self::access::{api_json, ApiCaller, ApiError, Operator, PageError};

mod access;
pub mod auth;
pub mod csv;
mod failed;
pub mod html;
pub mod nodes;
mod pending;
pub mod spaces;
pub mod statements;
pub mod svg;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use self::auth::{Login, LOGIN_COOKIE, SESSION_COOKIE, SESSION_SECS};
use self::html::{bytes, escape, page, respond};
use crate::service::Tracker;
use crate::store::{EgressRecord, RecordStatus, Rejections, StoreError, StoreStats};

/// The dashboard's routes.
pub fn routes(tracker: Arc<Tracker>) -> Router<Arc<Tracker>> {
    Router::new()
        .route("/admin", get(overview))
        .route("/admin/login", get(login_form).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/api/overview", get(api_overview))
        .route("/admin/nodes", get(nodes::list))
        .route("/admin/nodes/{did}", get(nodes::show))
        .route("/admin/api/nodes", get(nodes::api_list))
        .route("/admin/api/nodes/{did}", get(nodes::api_show))
        .route("/admin/usage", get(spaces::list))
        .route("/admin/api/usage", get(spaces::api_list))
        .route("/admin/pending", get(pending::list))
        .route("/admin/api/pending", get(pending::api_list))
        .route("/admin/failed", get(failed::list))
        .route("/admin/api/failed", get(failed::api_list))
        .route("/admin/statements/{month}", get(statements::show))
        .route("/admin/api/statements/{month}", get(statements::api_show))
        .route_layer(axum::middleware::from_fn_with_state(
            tracker,
            access::known_host,
        ))
}

/// The client's address, when served with connect info (`etracker start`).
struct Peer(Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let info = parts.extensions.get::<ConnectInfo<SocketAddr>>();
        Ok(Peer(info.map(|ConnectInfo(p)| p.ip())))
    }
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
    /// Set by the "log out everywhere" button.
    everywhere: Option<String>,
}

/// `GET /admin/login`: the form, with a fresh login CSRF token in a cookie
/// and in the form.
async fn login_form(State(tracker): State<Arc<Tracker>>, headers: HeaderMap) -> Response {
    login_page(&tracker, &headers, StatusCode::OK, None)
}

fn login_page(
    tracker: &Tracker,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let csrf = auth::random_token();
    let note = if tracker.admin().credentials().configured() {
        String::new()
    } else {
        "<p class=\"error\">No login is configured: set ETRACKER_ADMIN_USER and \
         ETRACKER_ADMIN_PASSWORD, or ETRACKER_ADMIN_TOKEN.</p>"
            .to_string()
    };
    let error = error
        .map(|e| format!("<p class=\"error\" id=\"login-error\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "{note}{error}<form method=\"post\" action=\"/admin/login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label>User <input name=\"user\" id=\"user\" autocomplete=\"username\"></label>\
         <label>Password (or the admin token) <input type=\"password\" name=\"password\" \
         id=\"password\" autocomplete=\"current-password\"></label>\
         <button id=\"login\">Log in</button></form>"
    );
    let mut response = respond(status, page("Log in", None, &body));
    let cookie = auth::set_cookie(LOGIN_COOKIE, &csrf, 3600, auth::over_https(headers));
    add_cookie(&mut response, &cookie);
    response
}

/// Adds a `Set-Cookie` of [`auth::set_cookie`] to `response`.
fn add_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = cookie.parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// `POST /admin/login`.
async fn login(
    State(tracker): State<Arc<Tracker>>,
    Peer(address): Peer,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let outcome = tracker
        .admin()
        .login(
            address,
            &form.user,
            &form.password,
            &form.csrf,
            (
                auth::cookie(&headers, LOGIN_COOKIE),
                auth::cookie(&headers, auth::DEVICE_COOKIE),
            ),
        )
        .await;
    match outcome {
        Login::Session { session, device } => {
            let secure = auth::over_https(&headers);
            let mut response = Redirect::to("/admin").into_response();
            let cookies = [
                auth::set_cookie(SESSION_COOKIE, &session, SESSION_SECS, secure),
                auth::set_cookie(LOGIN_COOKIE, "", 0, secure),
                auth::set_cookie(auth::DEVICE_COOKIE, &device, auth::DEVICE_SECS, secure),
            ];
            for cookie in cookies {
                add_cookie(&mut response, &cookie);
            }
            tracing::info!(user = %form.user, ?address, "admin login");
            response
        }
        Login::Refused => {
            tracing::warn!(user = %form.user, ?address, "admin login refused");
            login_page(
                &tracker,
                &headers,
                StatusCode::UNAUTHORIZED,
                Some("Wrong user or password."),
            )
        }
        Login::Forged => login_page(
            &tracker,
            &headers,
            StatusCode::FORBIDDEN,
            Some("The form expired: log in again."),
        ),
        Login::Unavailable => login_page(
            &tracker,
            &headers,
            StatusCode::SERVICE_UNAVAILABLE,
            Some("The tracker cannot keep sessions right now: try again shortly."),
        ),
        Login::Limited(wait) => {
            let mut response = login_page(
                &tracker,
                &headers,
                StatusCode::TOO_MANY_REQUESTS,
                Some(&format!(
                    "Too many wrong logins: try again in {wait} s. A browser that logged in here before is not held back."
                )),
            );
            if let Ok(value) = wait.to_string().parse() {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
    }
}

/// `POST /admin/logout`: needs the session's CSRF token, so that another
/// site cannot log the operator out either.
async fn logout(
    State(tracker): State<Arc<Tracker>>,
    Operator(session): Operator,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !auth::constant_time_eq(session.csrf.as_bytes(), form.csrf.as_bytes()) {
        return respond(
            StatusCode::FORBIDDEN,
            page("Forbidden", Some(&session.csrf), "<p>Bad form token.</p>"),
        );
    }
    if form.everywhere.is_some() {
        if let Err(error) = tracker.admin().logout_everywhere().await {
            tracing::error!(%error, "dashboard: cannot end every session");
            return PageError::Unavailable.into_response();
        }
    } else {
        tracker.admin().logout(&headers).await;
    }
    let mut response = Redirect::to("/admin/login").into_response();
    let cookie = auth::set_cookie(SESSION_COOKIE, "", 0, auth::over_https(&headers));
    add_cookie(&mut response, &cookie);
    response
}

/// The query of a listing page: a DID prefix, the previous page's last
/// DID, `format=csv` for a download, and (spaces) one customer's spaces.
#[derive(Deserialize, Default)]
pub(super) struct ListQuery {
    #[serde(default)]
    q: String,
    after: Option<String>,
    format: Option<String>,
    #[serde(default)]
    customer: String,
    /// `payout`: nodes by payout, largest first.
    sort: Option<String>,
}

impl ListQuery {
    fn csv(&self) -> bool {
        self.format.as_deref() == Some("csv")
    }
}

/// The links under a listing at `path`: this page as CSV (`csv_label`),
/// and the next page when this one is full (`last` is its last DID).
fn page_links(path: &str, query: &ListQuery, csv_label: &str, last: Option<&str>) -> String {
    let mut q = html::urlencode(query.q.trim());
    if let Some(sort) = &query.sort {
        q.push_str(&format!("&amp;sort={}", html::urlencode(sort)));
    }
    if !query.customer.trim().is_empty() {
        q.push_str(&format!(
            "&amp;customer={}",
            html::urlencode(query.customer.trim())
        ));
    }
    let after = query
        .after
        .as_deref()
        .map(|a| format!("&amp;after={}", html::urlencode(a)))
        .unwrap_or_default();
    let mut html =
        format!("<p><a id=\"csv\" href=\"{path}?q={q}{after}&amp;format=csv\">{csv_label}</a>");
    if let Some(last) = last {
        html.push_str(&format!(
            " · <a id=\"next\" href=\"{path}?q={q}&amp;after={}\">Next page</a>",
            html::urlencode(last)
        ));
    }
    html.push_str("</p>");
    html
}

/// USD for `bytes` at `usd_per_tib`.
fn usd(bytes: u64, usd_per_tib: f64) -> f64 {
    bytes as f64 / (1u64 << 40) as f64 * usd_per_tib
}

/// A CSV download.
fn csv_response(file: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        body,
    )
        .into_response()
}

/// Days the charts and the spaces' egress cover, today included.
const CHART_DAYS: i64 = 30;

/// Rows per page of a listing.
const PAGE: usize = 50;

/// The row the next page starts after: this page's last, when it is full.
fn next_page<T>(rows: &[T]) -> Option<&T> {
    rows.last().filter(|_| rows.len() == PAGE)
}

/// The last [`CHART_DAYS`] days (UTC), today included.
struct Period {
    /// The days, oldest first.
    days: Vec<String>,
    /// The store's day range for them: `from..to`.
    from: String,
    to: String,
}

impl Period {
    fn now() -> Period {
        use etracker_capabilities::account_egress_get::format_date;
        let today = (ucanto::ucan::now() / 86_400) as i64;
        let days: Vec<String> = (today - CHART_DAYS + 1..=today).map(format_date).collect();
        Period {
            from: days[0].clone(),
            to: format_date(today + 1),
            days,
        }
    }

    /// Every day of the period with its bytes in `counted` (a store's
    /// daily totals), 0 where it has none.
    fn fill(self, counted: Vec<(String, u64)>) -> Vec<(String, u64)> {
        let counted: std::collections::HashMap<String, u64> = counted.into_iter().collect();
        self.days
            .into_iter()
            .map(|day| {
                let bytes = counted.get(&day).copied().unwrap_or(0);
                (day, bytes)
            })
            .collect()
    }
}

/// `value` in USD with cents, or a dash when no price is set.
fn money(value: Option<f64>) -> String {
    value
        .map(|v| format!("{v:.2}"))
        .unwrap_or_else(|| "—".into())
}

/// Pending batches the overview lists.
const PENDING_LISTED: usize = 50;

/// What the overview shows.
struct Overview {
    stats: StoreStats,
    /// The first pending batches, earliest due first.
    pending: Vec<EgressRecord>,
    /// Failed batches and receipts not counted, by error name.
    rejections: Rejections,
    /// The last [`CHART_DAYS`] days (UTC), oldest first, days without
    /// egress as 0.
    egress_by_day: Vec<(String, u64)>,
}

async fn overview_data(tracker: &Tracker) -> Result<Overview, StoreError> {
    let period = Period::now();
    let (from, to) = (period.from.clone(), period.to.clone());
    let (stats, counted, pending, rejections) = tracker
        .context()
        .store(move |s| {
            Ok((
                s.stats()?,
                s.egress_by_day(&from, &to)?,
                s.pending_records(PENDING_LISTED)?,
                s.rejections()?,
            ))
        })
        .await?;
    let egress_by_day = period.fill(counted);
    Ok(Overview {
        stats,
        pending,
        rejections,
        egress_by_day,
    })
}

/// The overview's query: `csv=egress|pending|rejected` downloads that table.
#[derive(Deserialize, Default)]
struct OverviewQuery {
    csv: Option<String>,
}

/// `GET /admin`.
async fn overview(
    State(tracker): State<Arc<Tracker>>,
    Operator(session): Operator,
    Query(query): Query<OverviewQuery>,
) -> Result<Response, PageError> {
    let Overview {
        stats,
        pending,
        rejections,
        egress_by_day,
    } = overview_data(&tracker).await?;
    match query.csv.as_deref() {
        None => {}
        Some("egress") => {
            let mut body = String::from(csv::DAYS_HEADER);
            for (day, b) in &egress_by_day {
                body.push_str(&csv::row(&[day.as_str(), &b.to_string()]));
            }
            return Ok(csv_response("egress.csv", body));
        }
        Some("pending") => {
            let mut body = String::from(csv::PENDING_HEADER);
            for r in &pending {
                body.push_str(&csv::row(&[
                    r.batch.to_string(),
                    r.node.to_string(),
                    r.received_at.to_string(),
                    state(r).to_string(),
                    r.attempts.to_string(),
                    r.last_error.clone().unwrap_or_default(),
                    r.next_attempt_at.to_string(),
                ]));
            }
            return Ok(csv_response("pending.csv", body));
        }
        Some("rejected") => {
            let mut body = String::from(csv::REJECTED_HEADER);
            for (name, n) in &rejections.by_name {
                body.push_str(&csv::row(&[name.as_str(), &n.to_string()]));
            }
            return Ok(csv_response("rejected.csv", body));
        }
        Some(_) => return Err(PageError::NotFound),
    }
    let csv_link = |table: &str| {
        format!("<p><a id=\"csv-{table}\" href=\"/admin?csv={table}\">As CSV</a></p>")
    };
    let row = |id: &str, name: &str, value: String| {
        format!("<tr><th>{name}</th><td class=\"n\" id=\"{id}\">{value}</td></tr>")
    };
    let body = [
        "<h2>Egress per day, last 30 days (UTC)</h2>".to_string(),
        svg::bars("egress-chart", &egress_by_day),
        csv_link("egress"),
        "<h2>Totals</h2><table>".to_string(),
        row("egress", "Egress counted", bytes(stats.total_bytes)),
        row(
            "egress-bytes",
            "Egress counted, bytes",
            stats.total_bytes.to_string(),
        ),
        row(
            "non-billable",
            "Non-billable egress",
            bytes(stats.non_billable_bytes),
        ),
        row("batches", "Batches tracked", stats.records.to_string()),
        row("pending", "Batches pending", stats.pending.to_string()),
        row(
            "concluded",
            "Batches concluded",
            stats.concluded.to_string(),
        ),
        row(
            "failed",
            "Batches failed (an error receipt)",
            format!(
                "<a href=\"/admin/failed\" id=\"failed-link\">{}</a>",
                rejections.failed_batches
            ),
        ),
        row(
            "receipts",
            "Retrievals counted",
            stats.counted_receipts.to_string(),
        ),
        row("nodes", "Nodes paid", stats.nodes.to_string()),
        "</table>".to_string(),
        pending_table(&pending, stats.pending),
        csv_link("pending"),
        rejections_table(&rejections),
        csv_link("rejected"),
    ]
    .concat();
    Ok(respond(
        StatusCode::OK,
        page("Overview", Some(&session.csrf), &body),
    ))
}

/// A unix time as `YYYY-MM-DD hh:mm:ss` UTC.
fn time(unix: u64) -> String {
    let day = etracker_capabilities::account_egress_get::format_date((unix / 86_400) as i64);
    let s = unix % 86_400;
    format!("{day} {:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// A batch's state in words: concluded, or pending and `waiting` for its
/// first run or `retrying` after a failure.
fn state(r: &EgressRecord) -> &'static str {
    match &r.status {
        RecordStatus::Done {
            failure: Some(_), ..
        } => "failed",
        RecordStatus::Done { .. } => "concluded",
        RecordStatus::Pending if r.attempts > 0 => "retrying",
        RecordStatus::Pending => "waiting",
    }
}

/// The overview's table of pending batches: waiting for their first run,
/// or retrying with their last error and next attempt.
fn pending_table(pending: &[EgressRecord], count: u64) -> String {
    let mut html = format!(
        "<h2>Pending batches</h2><p>{count} pending, {retrying} of the first {listed} \
         retrying; earliest due first. <a href=\"/admin/pending\" id=\"all-pending\">All \
         pending batches</a>, node by node.</p>",
        retrying = pending.iter().filter(|r| state(r) == "retrying").count(),
        listed = pending.len(),
    );
    if pending.is_empty() {
        return html;
    }
    html.push_str(
        "<table id=\"pending\"><tr><th>Batch</th><th>Node</th><th>Tracked</th>\
         <th>State</th><th>Attempts</th><th>Last error</th><th>Next attempt</th></tr>",
    );
    for r in pending {
        html.push_str(&format!(
            "<tr><td>{batch}</td><td>{node}</td><td>{tracked}</td><td>{state}</td>\
             <td class=\"n\">{attempts}</td><td>{error}</td><td>{next}</td></tr>",
            batch = escape(&r.batch.to_string()),
            node = escape(r.node.as_str()),
            tracked = time(r.received_at),
            state = state(r),
            attempts = r.attempts,
            error = escape(r.last_error.as_deref().unwrap_or("")),
            next = time(r.next_attempt_at),
        ));
    }
    html.push_str("</table>");
    html
}

/// The overview's table of receipts not counted, by error name.
fn rejections_table(rejections: &Rejections) -> String {
    let mut html = "<h2>Receipts not counted, by error</h2>".to_string();
    if rejections.by_name.is_empty() {
        html.push_str("<p>None.</p>");
        return html;
    }
    html.push_str("<table id=\"rejected\"><tr><th>Error</th><th>Receipts</th></tr>");
    for (name, n) in &rejections.by_name {
        html.push_str(&format!(
            "<tr><td>{name}</td><td class=\"n\" id=\"rejected-{name}\">{n}</td></tr>",
            name = escape(name),
        ));
    }
    html.push_str("</table>");
    html
}

fn pending_json(r: &EgressRecord) -> serde_json::Value {
    serde_json::json!({
        "batch": r.batch.to_string(),
        "node": r.node.as_str(),
        "received_at": r.received_at,
        "state": state(r),
        "attempts": r.attempts,
        "last_error": r.last_error,
        "next_attempt_at": r.next_attempt_at,
    })
}

/// `GET /admin/api/overview`.
async fn api_overview(
    State(tracker): State<Arc<Tracker>>,
    _: ApiCaller,
) -> Result<Response, ApiError> {
    let Overview {
        stats: s,
        pending,
        rejections,
        egress_by_day,
    } = overview_data(&tracker).await?;
    Ok(api_json(serde_json::json!({
            "failed_batches": rejections.failed_batches,
            "rejected_receipts": rejections.by_name,
            "pending_batches": pending.iter().map(pending_json).collect::<Vec<_>>(),
            "egress_by_day": egress_by_day
                .iter()
                .map(|(day, bytes)| serde_json::json!({"day": day, "bytes": bytes}))
                .collect::<Vec<_>>(),
            "total_bytes": s.total_bytes,
            "non_billable_bytes": s.non_billable_bytes,
            "batches": s.records,
            "pending": s.pending,
            "concluded": s.concluded,
            "counted_receipts": s.counted_receipts,
            "nodes": s.nodes,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payouts_are_per_tib() {
        assert_eq!(usd(1 << 40, 2.5), 2.5);
        assert_eq!(usd(1 << 39, 10.0), 5.0);
        assert_eq!(usd(0, 10.0), 0.0);
    }
}
