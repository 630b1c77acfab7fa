//! HTTP transport: agent messages as CAR bodies over `POST /`.
//!
//! Statuses are only for transport failures, as upstream: 415 for a content
//! type we cannot decode (with an `accept` hint), 406 when the client accepts
//! nothing we can encode, 400 for a body that does not decode, 413 for a body
//! over the limit. Everything else — including authorization failures — is a
//! receipt in a 200 response.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use crate::message::AgentMessage;
use crate::server::Server;

/// The media type of CAR bodies.
pub const CAR_CONTENT_TYPE: &str = "application/vnd.ipld.car";

/// Default request body limit (bytes).
pub const DEFAULT_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// A router serving `server` at `POST /` with a body limit of `body_limit` bytes.
pub fn router(server: Arc<Server>, body_limit: usize) -> Router {
    Router::new()
        .route("/", post(handle))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(server)
}

/// Decides whether a request can be served; the error is the HTTP answer.
#[allow(clippy::result_large_err)]
pub fn negotiate(headers: &HeaderMap) -> Result<(), Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case(CAR_CONTENT_TYPE) {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            [(header::ACCEPT, HeaderValue::from_static(CAR_CONTENT_TYPE))],
            "The server cannot process the request because the payload format is not supported. Please check the content-type header and try again with a supported media type.",
        )
            .into_response());
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*");
    if !accepts_car(accept) {
        return Err((
            StatusCode::NOT_ACCEPTABLE,
            [(header::ACCEPT, HeaderValue::from_static(CAR_CONTENT_TYPE))],
            "The requested resource cannot be served in the requested content type. Please specify a supported content type using the Accept header.",
        )
            .into_response());
    }
    Ok(())
}

/// Whether an `Accept` header admits CAR (`*/*`, `application/*` or the exact type, q > 0).
fn accepts_car(accept: &str) -> bool {
    accept.split(',').any(|item| {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        !refused && (media == "*/*" || media == "application/*" || media == CAR_CONTENT_TYPE)
    })
}

async fn handle(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = negotiate(&headers) {
        return response;
    }
    match respond(&server, &body).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, CAR_CONTENT_TYPE)], bytes).into_response(),
        Err(message) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("Bad request: Malformed payload - {message}"),
        )
            .into_response(),
    }
}

/// Decodes a request body, runs it and encodes the response body.
pub async fn respond(server: &Server, body: &[u8]) -> Result<Vec<u8>, String> {
    let request = AgentMessage::from_car(body).map_err(|e| e.to_string())?;
    let response = server.execute(&request).await.map_err(|e| e.to_string())?;
    Ok(response.to_car())
}
