//! Every pending batch, node by node (in DID order) and each node's newest
//! first, 50 to a page, paged by the last one shown. The overview lists the
//! first due, an order every lease changes; this listing walks the nodes'
//! lists of batches instead, which never move, so no pending batch is
//! skipped or shown twice however leases and retries reorder them.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use ucanto::principal::Did;

use super::access::{api_json, ApiCaller, ApiError, Operator, PageError};
use super::html::{escape, page, respond, urlencode};
use super::{state, time, PAGE};
use crate::service::Tracker;
use crate::store::{BatchCursor, EgressRecord, Store, StoreError};

/// Nodes read at a time.
const NODES_READ: usize = 100;
/// A node's batches read at a time.
const BATCHES_READ: usize = 200;

/// `?after=` the previous page's last.
#[derive(Deserialize, Default)]
pub(super) struct PendingQuery {
    after: Option<String>,
}

/// Where a page ended: the last batch shown and its node, written
/// `<received_at>-<batch CID>~<node DID>` (the first `~` ends the batch).
fn cursor(r: &EgressRecord) -> String {
    format!("{}~{}", BatchCursor::after(r), r.node)
}

fn parse_cursor(text: &str) -> Option<(Did, BatchCursor)> {
    let (batch, node) = text.split_once('~')?;
    Some((Did::parse(node).ok()?, batch.parse().ok()?))
}

/// Up to `limit` pending batches after `after`.
fn read(
    store: &dyn Store,
    after: Option<(Did, BatchCursor)>,
    limit: usize,
) -> Result<Vec<EgressRecord>, StoreError> {
    let mut out = Vec::new();
    // A node's pending batches, from `before`, until the page is full.
    let drain = |node: &Did, mut before: Option<BatchCursor>, out: &mut Vec<EgressRecord>| loop {
        let batches = store.node_batches(node, before.as_ref(), BATCHES_READ)?;
        for r in &batches {
            if r.is_pending() {
                out.push(r.clone());
                if out.len() == limit {
                    return Ok::<_, StoreError>(());
                }
            }
        }
        match batches.last() {
            Some(last) if batches.len() == BATCHES_READ => before = Some(BatchCursor::after(last)),
            _ => return Ok(()),
        }
    };
    let mut node_after: Option<String> = None;
    if let Some((node, cursor)) = after {
        drain(&node, Some(cursor), &mut out)?;
        node_after = Some(node.to_string());
    }
    while out.len() < limit {
        let nodes = store.nodes_page("", node_after.as_deref(), NODES_READ)?;
        for (node, _) in &nodes {
            drain(node, None, &mut out)?;
            if out.len() == limit {
                return Ok(out);
            }
        }
        match nodes.last() {
            Some((last, _)) if nodes.len() == NODES_READ => node_after = Some(last.to_string()),
            _ => break,
        }
    }
    Ok(out)
}

async fn rows(tracker: &Tracker, after: Option<&str>) -> Result<Vec<EgressRecord>, PageError> {
    let after = match after {
        Some(text) => Some(parse_cursor(text).ok_or(PageError::BadRequest(
            "Not a cursor",
            "That is not a page of pending batches.",
        ))?),
        None => None,
    };
    Ok(tracker
        .context()
        .store(move |s| read(s, after, PAGE))
        .await?)
}

/// The cursor of the next page, when this one is full.
fn next(rows: &[EgressRecord]) -> Option<String> {
    rows.last().filter(|_| rows.len() == PAGE).map(cursor)
}

/// `GET /admin/pending`.
pub(super) async fn list(
    State(tracker): State<Arc<Tracker>>,
    Operator(session): Operator,
    Query(query): Query<PendingQuery>,
) -> Result<Response, PageError> {
    let rows = rows(&tracker, query.after.as_deref()).await?;
    let mut body = String::from(
        "<p>Every batch waiting to be concluded, node by node, newest first.</p>\
         <table id=\"pending-all\"><tr><th>Batch</th><th>Node</th><th>Tracked</th><th>State</th>\
         <th>Attempts</th><th>Last error</th><th>Next attempt</th></tr>",
    );
    for r in &rows {
        body.push_str(&format!(
            "<tr><td>{batch}</td><td><a href=\"/admin/nodes/{link}\">{node}</a></td><td>{tracked}</td>\
             <td>{state}</td><td class=\"n\">{attempts}</td><td>{error}</td><td>{next}</td></tr>",
            batch = escape(&r.batch.to_string()),
            link = urlencode(r.node.as_str()),
            node = escape(r.node.as_str()),
            tracked = time(r.received_at),
            state = state(r),
            attempts = r.attempts,
            error = escape(r.last_error.as_deref().unwrap_or_default()),
            next = time(r.next_attempt_at),
        ));
    }
    body.push_str("</table>");
    if let Some(next) = next(&rows) {
        body.push_str(&format!(
            "<p><a id=\"next\" href=\"/admin/pending?after={}\">More pending batches</a></p>",
            urlencode(&next)
        ));
    }
    Ok(respond(
        axum::http::StatusCode::OK,
        page("Pending batches", Some(&session.csrf), &body),
    ))
}

/// `GET /admin/api/pending`: the same, as JSON, with the `next` cursor.
pub(super) async fn api_list(
    State(tracker): State<Arc<Tracker>>,
    _: ApiCaller,
    Query(query): Query<PendingQuery>,
) -> Result<Response, ApiError> {
    let rows = rows(&tracker, query.after.as_deref())
        .await
        .map_err(|e| e.for_api("not a cursor of pending batches"))?;
    let pending: Vec<serde_json::Value> = rows.iter().map(super::pending_json).collect();
    Ok(api_json(serde_json::json!({
        "pending": pending,
        "next": next(&rows),
    })))
}
