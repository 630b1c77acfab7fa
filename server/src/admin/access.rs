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
