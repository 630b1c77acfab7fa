//! HTTP transport: agent messages as CAR bodies over `POST /`.
//!
//! Statuses are only for transport failures, as upstream: 415 for a content
//! type we cannot decode (with an `accept` hint), 406 when the client accepts
//! nothing we can encode, 400 for a body that does not decode, 413 for a body
//! over the limit. Everything else — including authorization failures — is a
//! receipt in a 200 response.
//!
//! The legacy JS codec is understood too: a request `application/car` whose
//! roots are the invocations, answered with a dag-cbor list of results when the
//! client asks for `application/cbor`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use cid::Cid;

use crate::car::CarError;
use crate::dag::{encode_cbor, Block, BlockStore, CodecError, Ipld};
use crate::message::{AgentMessage, MessageError};
use crate::server::Server;
use crate::ucan::Delegation;

/// The media type of CAR bodies.
pub const CAR_CONTENT_TYPE: &str = "application/vnd.ipld.car";

/// Default request body limit (bytes).
pub const DEFAULT_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// A router serving `server` at `POST /` with a body limit of `body_limit`
/// bytes and the default [`HttpLimits`] otherwise.
pub fn router(server: Arc<Server>, body_limit: usize) -> Router {
    router_with(
        server,
        HttpLimits {
            body_limit,
            ..HttpLimits::default()
        },
    )
}

/// What one client can make a ucanto endpoint spend.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Largest request body (bytes); past it, 413.
    pub body_limit: usize,
    /// Requests handled at once; more wait their turn (within the timeout).
    pub max_concurrent: usize,
    /// Longest a request may take, waiting included; past it, 408.
    pub timeout: std::time::Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            body_limit: DEFAULT_BODY_LIMIT,
            max_concurrent: 64,
            timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// Applies `limits` to the routes of `router` (and only to them: routes merged
/// later, such as a health check, stay reachable when these are busy).
pub fn limit<S: Clone + Send + Sync + 'static>(router: Router<S>, limits: HttpLimits) -> Router<S> {
    router
        .layer(DefaultBodyLimit::max(limits.body_limit))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.max_concurrent.max(1),
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            http::StatusCode::REQUEST_TIMEOUT,
            limits.timeout,
        ))
}

/// A router serving `server` at `POST /` within `limits`.
pub fn router_with(server: Arc<Server>, limits: HttpLimits) -> Router {
    limit(Router::new().route("/", post(handle)), limits).with_state(server)
}

/// Media type of the legacy request codec: a CAR whose roots are the invocations.
pub const LEGACY_REQUEST_CONTENT_TYPE: &str = "application/car";
/// Media type of the legacy response codec: a dag-cbor list of results.
pub const LEGACY_RESPONSE_CONTENT_TYPE: &str = "application/cbor";

/// How a request body is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestCodec {
    /// `application/vnd.ipld.car`: an agent message.
    Car,
    /// `application/car` (legacy JS clients): the CAR's roots are the invocations.
    LegacyCar,
}

/// How a response body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseCodec {
    /// `application/vnd.ipld.car`: an agent message with the receipts.
    Car,
    /// `application/cbor` (legacy): the results, `{…error, error: true}` for failures.
    LegacyCbor,
}

/// The codecs chosen for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Request codec.
    pub request: RequestCodec,
    /// Response codec.
    pub response: ResponseCodec,
}

/// Chooses the codecs from the headers; the error is the HTTP answer (415/406).
/// Any `Accept` that admits CAR gets CAR, as JS's inbound codec does; only
/// an explicit `application/cbor` gets the legacy response.
#[allow(clippy::result_large_err)]
pub fn negotiate(headers: &HeaderMap) -> Result<Negotiated, Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    let request = if media_type.eq_ignore_ascii_case(CAR_CONTENT_TYPE) {
        RequestCodec::Car
    } else if media_type.eq_ignore_ascii_case(LEGACY_REQUEST_CONTENT_TYPE) {
        RequestCodec::LegacyCar
    } else {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            [(header::ACCEPT, HeaderValue::from_static(CAR_CONTENT_TYPE))],
            "The server cannot process the request because the payload format is not supported. Please check the content-type header and try again with a supported media type.",
        )
            .into_response());
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*");
    let response = if accepts(accept, CAR_CONTENT_TYPE) {
        ResponseCodec::Car
    } else if accepts(accept, LEGACY_RESPONSE_CONTENT_TYPE) {
        ResponseCodec::LegacyCbor
    } else {
        return Err((
            StatusCode::NOT_ACCEPTABLE,
            [(header::ACCEPT, HeaderValue::from_static(CAR_CONTENT_TYPE))],
            "The requested resource cannot be served in the requested content type. Please specify a supported content type using the Accept header.",
        )
            .into_response());
    };
    Ok(Negotiated { request, response })
}

/// Whether an `Accept` header admits `media` (`*/*`, `application/*` or the exact type, q > 0).
fn accepts(accept: &str, wanted: &str) -> bool {
    accept.split(',').any(|item| {
        let mut parts = item.split(';');
        let item_media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        !refused && (item_media == "*/*" || item_media == "application/*" || item_media == wanted)
    })
}

async fn handle(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    let codecs = match negotiate(&headers) {
        Ok(codecs) => codecs,
        Err(response) => return response,
    };
    match respond_shared(&server, body, codecs).await {
        Ok((content_type, bytes)) => {
            ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
        Err(message) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain")],
            crate::bounded::message(format!("Bad request: Malformed payload - {message}")),
        )
            .into_response(),
    }
}

/// Why a request body could not be answered: it is malformed (HTTP 400).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The body is not an agent message.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The body is not a CAR (legacy codec).
    #[error(transparent)]
    Car(#[from] CarError),
    /// A block does not decode, or the response cannot be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The server gave no receipt for an invocation (legacy codec).
    #[error("no receipt for {0}")]
    MissingReceipt(Cid),
}

/// Decodes a CAR agent message, runs it and encodes the CAR response.
pub async fn respond(server: &Server, body: &[u8]) -> Result<Vec<u8>, TransportError> {
    let codecs = Negotiated {
        request: RequestCodec::Car,
        response: ResponseCodec::Car,
    };
    respond_with(server, body, codecs)
        .await
        .map(|(_, bytes)| bytes)
}

/// Decodes a request body with the chosen codec, runs it and encodes the
/// response; returns its content type and bytes.
pub async fn respond_with(
    server: &Server,
    body: &[u8],
    codecs: Negotiated,
) -> Result<(&'static str, Vec<u8>), TransportError> {
    respond_shared(server, Bytes::copy_from_slice(body), codecs).await
}

/// [`respond_with`] of a body it may keep: decoded on the server's
/// validation pool (reading a CAR hashes every block), off the async workers.
async fn respond_shared(
    server: &Server,
    body: Bytes,
    codecs: Negotiated,
) -> Result<(&'static str, Vec<u8>), TransportError> {
    let decode = move || match codecs.request {
        RequestCodec::Car => Ok(AgentMessage::from_car(&body)?),
        RequestCodec::LegacyCar => legacy_request(&body),
    };
    let request = server.offload(decode).await.ok_or_else(|| {
        TransportError::Codec(CodecError::schema(
            "message",
            "the service is shutting down",
        ))
    })??;
    let response = server.execute(&request).await?;
    match codecs.response {
        ResponseCodec::Car => Ok((CAR_CONTENT_TYPE, response.to_car())),
        ResponseCodec::LegacyCbor => Ok((
            LEGACY_RESPONSE_CONTENT_TYPE,
            legacy_response(&request, &response)?,
        )),
    }
}

/// The legacy request: every root of the CAR is an invocation.
fn legacy_request(body: &[u8]) -> Result<AgentMessage, TransportError> {
    let (header, blocks) = crate::car::decode(body)?;
    let store: Arc<BlockStore> = Arc::new(
        blocks
            .into_iter()
            .map(|(cid, bytes)| Block { cid, bytes })
            .collect(),
    );
    let invocations = header
        .roots
        .iter()
        .map(|root| Delegation::from_blocks(root, store.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AgentMessage::build(&invocations, &[])?)
}

/// The legacy response: results in invocation order; failures carry `error: true`.
fn legacy_response(
    request: &AgentMessage,
    response: &AgentMessage,
) -> Result<Vec<u8>, TransportError> {
    let mut results = Vec::new();
    for invocation in request.execute() {
        let receipt = response
            .receipt_for(invocation)
            .ok_or(TransportError::MissingReceipt(*invocation))??;
        results.push(match receipt.out() {
            Ok(value) => value.clone(),
            Err(Ipld::Map(error)) => {
                let mut error = error.clone();
                error.insert("error".into(), Ipld::Bool(true));
                Ipld::Map(error)
            }
            Err(other) => other.clone(),
        });
    }
    Ok(encode_cbor(&Ipld::List(results))?)
}
