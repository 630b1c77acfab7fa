//! Who may see a dashboard answer, and how a failed one reads: the
//! extractors every handler takes instead of checking the session itself,
//! and the two error types (`IntoResponse`) its `?` turns store failures
//! and bad input into.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;

use super::auth::Session;
use super::html::{escape, page, respond};
use crate::service::Tracker;
use crate::store::StoreError;

/// An operator signed in with a browser session: a page handler's
/// argument. Without one, the browser is sent to the login.
pub(super) struct Operator(pub(super) Session);

impl FromRequestParts<Arc<Tracker>> for Operator {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        tracker: &Arc<Tracker>,
    ) -> Result<Self, Self::Rejection> {
        match tracker.admin().session(&parts.headers).await {
            Some(session) => Ok(Operator(session)),
            None => Err(Redirect::to("/admin/login").into_response()),
        }
    }
}

/// A caller of the JSON API: a browser session or the admin token as a
/// bearer. Without either, 401.
pub(super) struct ApiCaller;

impl FromRequestParts<Arc<Tracker>> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        tracker: &Arc<Tracker>,
    ) -> Result<Self, Self::Rejection> {
        let admin = tracker.admin();
        if admin.credentials().bearer(&parts.headers)
            || admin.session(&parts.headers).await.is_some()
        {
            Ok(ApiCaller)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// Answers 421 to a dashboard request whose `Host` is not one the tracker
/// answers to ([`host_allowed`]): a page elsewhere that points its own name
/// at this machine (DNS rebinding) reads nothing, even from a browser on it.
pub(super) async fn known_host(
    axum::extract::State(tracker): axum::extract::State<Arc<Tracker>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if host_allowed(host, &tracker.settings().admin_hosts) {
        return next.run(request).await;
    }
    respond(
        StatusCode::MISDIRECTED_REQUEST,
        page(
            "Unknown host",
            None,
            "<p>The dashboard does not answer to this host name. Its operator lists the names it answers to in ETRACKER_ADMIN_HOSTS.</p>",
        ),
    )
}

/// Whether the dashboard answers to `host` (a `Host` header, with or
/// without its port): `localhost`, `127.0.0.1`, `[::1]`, and each of
/// `allowed` (a name alone admits any port).
pub(super) fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .map_or(host, |(inside, _)| &host[..inside.len() + 2]),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    if name.is_empty() {
        return false;
    }
    ["localhost", "127.0.0.1", "[::1]"]
        .iter()
        .any(|known| name.eq_ignore_ascii_case(known))
        || allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(name))
}

/// Why a dashboard page could not be shown.
#[derive(Debug)]
pub(super) enum PageError {
    /// The store failed (logged where it is made).
    Unavailable,
    /// The request names something malformed: a title and a sentence.
    BadRequest(&'static str, &'static str),
    /// No such page (an unknown CSV table, say).
    NotFound,
}

impl From<StoreError> for PageError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "dashboard: the store failed");
        PageError::Unavailable
    }
}

impl PageError {
    /// What the JSON API answers where a page would fail so: a bad request
    /// says `bad_request`, the store's failure stays one.
    pub(super) fn for_api(self, bad_request: &'static str) -> ApiError {
        match self {
            PageError::BadRequest(..) => ApiError::BadRequest(bad_request),
            PageError::Unavailable | PageError::NotFound => ApiError::Unavailable,
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, sentence) = match self {
            PageError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The store does not answer.",
            ),
            PageError::BadRequest(title, sentence) => (StatusCode::BAD_REQUEST, title, sentence),
            PageError::NotFound => (StatusCode::NOT_FOUND, "Not found", "There is no such page."),
        };
        respond(
            status,
            page(title, None, &format!("<p>{}</p>", escape(sentence))),
        )
    }
}

/// Why a JSON API request failed: a status and `{"error": "…"}`.
#[derive(Debug)]
pub(super) enum ApiError {
    /// Neither a session nor the admin token.
    Unauthorized,
    /// A malformed argument.
    BadRequest(&'static str),
    /// The store failed (logged where it is made).
    Unavailable,
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "admin API: the store failed");
        ApiError::Unavailable
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "a session or the admin token (Authorization: Bearer) is required",
            ),
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "the store does not answer"),
        };
        no_store((status, Json(serde_json::json!({ "error": message }))).into_response())
    }
}

/// An API answer: JSON, never cached (it is behind credentials).
pub(super) fn api_json(value: serde_json::Value) -> Response {
    no_store(Json(value).into_response())
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn the_dashboard_answers_to_its_own_names_only() {
        let none: Vec<String> = Vec::new();
        for good in [
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "LOCALHOST",
            "127.0.0.1",
        ] {
            assert!(host_allowed(good, &none), "{good}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "",
            ":8080",
            "[::1",
        ] {
            assert!(!host_allowed(bad, &none), "{bad}");
        }
        let listed = vec![
            "tracker.example".to_string(),
            "ops.example:8443".to_string(),
        ];
        assert!(host_allowed("tracker.example", &listed));
        assert!(host_allowed("tracker.example:443", &listed));
        assert!(host_allowed("ops.example:8443", &listed));
        assert!(!host_allowed("ops.example:9000", &listed));
        assert!(host_allowed("localhost:8080", &listed));
    }
}
