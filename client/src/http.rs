//! The route the tracker fetches batches from: `GET /receipts/{cid}`.
//!
//! # Format
//! ```text
//! GET /receipts/<batch CID>
//!   200  content-type: application/vnd.ipld.car, the batch file byte for byte
//!   400  the path segment is not a CID
//!   404  no closed batch with that CID is kept (open batches are never served)
//! ```
//! Closed batches are immutable, so responses carry an `etag` (the CID) and
//! `cache-control: immutable`. `HEAD` answers the same headers.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cid::Cid;
use ucanto::transport::CAR_CONTENT_TYPE;

use crate::journal::BatchJournal;

/// A router serving the journal's closed batches at `GET /receipts/{cid}`;
/// merge it into the node's own router. The matching endpoint template is
/// `https://<node>/receipts/{cid}`.
pub fn router(journal: BatchJournal) -> Router {
    Router::new()
        .route("/receipts/{cid}", get(serve_batch))
        .with_state(journal)
}

/// The handler behind [`router`], to mount under another path.
pub async fn serve_batch(State(journal): State<BatchJournal>, Path(cid): Path<String>) -> Response {
    let Ok(cid) = cid.parse::<Cid>() else {
        return (StatusCode::BAD_REQUEST, "invalid CID").into_response();
    };
    let not_found = || (StatusCode::NOT_FOUND, "unknown batch").into_response();
    let Some(path) = journal.batch_path(&cid) else {
        return not_found();
    };
    // Settled (deleted) since the lookup: an open handle would still serve it.
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return not_found(),
        Err(e) => {
            tracing::error!(batch = %cid, error = %e, "cannot open batch");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let len = match file.metadata().await {
        Ok(meta) => meta.len(),
        Err(e) => {
            tracing::error!(batch = %cid, error = %e, "cannot stat batch");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    (
        [
            (header::CONTENT_TYPE, CAR_CONTENT_TYPE.to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::ETAG, format!("\"{cid}\"")),
            (
                header::CACHE_CONTROL,
                "public, max-age=31536000, immutable".to_string(),
            ),
        ],
        body,
    )
        .into_response()
}
