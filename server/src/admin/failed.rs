//! The batches that failed as a whole: what is stuck for good, and why.
//! Each with its node, when it was concluded and the error its receipt
//! gives, newest first, 50 to a page, paged by the cursor of the last shown
//! (`<concluded_at>-<batch CID>`, so failures of one second are never
//! skipped).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::access::{api_json, ApiCaller, ApiError, Operator, PageError};
use super::html::{escape, page, respond, urlencode};
use super::{time, PAGE};
use crate::service::Tracker;
use crate::store::{BatchCursor, EgressRecord, RecordStatus};

/// `?before=` the previous page's last.
#[derive(Deserialize, Default)]
pub(super) struct FailedQuery {
    before: Option<String>,
}

/// When a failed batch was concluded, and why it failed.
fn failure(r: &EgressRecord) -> (u64, &str) {
    match &r.status {
        RecordStatus::Done {
            concluded_at,
            failure,
            ..
        } => (*concluded_at, failure.as_deref().unwrap_or_default()),
        RecordStatus::Pending => (0, ""),
    }
}

/// The cursor after `r` in this listing.
fn after(r: &EgressRecord) -> BatchCursor {
    BatchCursor {
        received_at: failure(r).0,
        batch: r.batch,
    }
}

/// A page of failed batches, after `before`.
async fn rows(tracker: &Tracker, before: Option<&str>) -> Result<Vec<EgressRecord>, PageError> {
    let before: Option<BatchCursor> = before.map(str::parse).transpose().map_err(|_| {
        PageError::BadRequest("Not a cursor", "That is not a page of failed batches.")
    })?;
    Ok(tracker
        .context()
        .store(move |s| s.failed_batches(before.as_ref(), PAGE))
        .await?)
}

/// `GET /admin/failed`.
pub(super) async fn list(
    State(tracker): State<Arc<Tracker>>,
    Operator(session): Operator,
    Query(query): Query<FailedQuery>,
) -> Result<Response, PageError> {
    let rows = rows(&tracker, query.before.as_deref()).await?;
    let mut body = String::from(
        "<p>Batches whose consolidation failed as a whole: nothing of them was counted. \
         The node may track the batch again once it is fixed.</p>\
         <table id=\"failed-batches\"><tr><th>Batch</th><th>Node</th><th>Concluded</th><th>Error</th></tr>",
    );
    for r in &rows {
        let (concluded_at, error) = failure(r);
        body.push_str(&format!(
            "<tr><td>{batch}</td><td><a href=\"/admin/nodes/{link}\">{node}</a></td>\
             <td>{concluded}</td><td class=\"error\">{error}</td></tr>",
            batch = escape(&r.batch.to_string()),
            link = urlencode(r.node.as_str()),
            node = escape(r.node.as_str()),
            concluded = time(concluded_at),
            error = escape(error),
        ));
    }
    body.push_str("</table>");
    if let Some(last) = rows.last().filter(|_| rows.len() == PAGE) {
        body.push_str(&format!(
            "<p><a id=\"next\" href=\"/admin/failed?before={}\">Older failures</a></p>",
            urlencode(&after(last).to_string())
        ));
    }
    Ok(respond(
        axum::http::StatusCode::OK,
        page("Failed batches", Some(&session.csrf), &body),
    ))
}

/// `GET /admin/api/failed`: the same, as JSON, with the `next` cursor.
pub(super) async fn api_list(
    State(tracker): State<Arc<Tracker>>,
    _: ApiCaller,
    Query(query): Query<FailedQuery>,
) -> Result<Response, ApiError> {
    let rows = rows(&tracker, query.before.as_deref())
        .await
        .map_err(|e| e.for_api("not a cursor of failed batches"))?;
    let failed: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let (concluded_at, error) = failure(r);
            serde_json::json!({
                "batch": r.batch.to_string(),
                "node": r.node.as_str(),
                "concluded_at": concluded_at,
                "error": error,
            })
        })
        .collect();
    Ok(api_json(serde_json::json!({
        "failed": failed,
        "next": rows.last().filter(|_| rows.len() == PAGE).map(|r| after(r).to_string()),
    })))
}
