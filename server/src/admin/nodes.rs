//! The nodes pages: every node paid with its total and payout (search by
//! DID prefix, pages of 50, CSV), and one node's egress per day and
//! batches, each concluded one linked to its signed consolidate receipt.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use ucanto::principal::Did;

use super::access::{api_json, ApiCaller, ApiError, Operator, PageError};
use super::html::{bytes, escape, page, respond, urlencode};
use super::{money, next_page, state, svg, time, usd, ListQuery, Period, PAGE};
use crate::service::Tracker;
use crate::store::StoreError;
use crate::store::{BatchCursor, EgressRecord, RecordStatus};

#[derive(Deserialize, Default)]
pub(super) struct NodeQuery {
    /// The previous page's last batch (`<received_at>-<batch CID>`).
    before: Option<String>,
    /// `csv` for this page of batches as a download.
    format: Option<String>,
}

impl NodeQuery {
    /// The page's cursor, if it names one.
    fn cursor(&self) -> Result<Option<BatchCursor>, String> {
        self.before.as_deref().map(str::parse).transpose()
    }
}

/// A node's row: DID, total bytes, payout.
struct NodeRow {
    node: Did,
    total: u64,
    payout: Option<f64>,
}

/// Whether the listing is by payout, largest first (else by DID).
fn by_payout(query: &ListQuery) -> bool {
    query.sort.as_deref() == Some("payout")
}

/// The `?after=` of the page after `row`: its DID, or by payout
/// `<total>-<DID>` (a tie-break, so no node of an equal total is skipped).
fn cursor(query: &ListQuery, row: &NodeRow) -> String {
    if by_payout(query) {
        format!("{}-{}", row.total, row.node)
    } else {
        row.node.to_string()
    }
}

async fn rows(tracker: &Tracker, query: &ListQuery) -> Result<Vec<NodeRow>, StoreError> {
    let (q, after) = (query.q.trim().to_string(), query.after.clone());
    let sorted = by_payout(query);
    let page = tracker
        .context()
        .store(move |s| {
            if !sorted {
                return s.nodes_page(&q, after.as_deref(), PAGE);
            }
            // By payout: every node read, then sorted (largest first, then
            // by DID), the page after the cursor `<total>-<DID>`.
            let mut all = Vec::new();
            let mut from: Option<String> = None;
            loop {
                let page = s.nodes_page(&q, from.as_deref(), 1000)?;
                let full = page.len() == 1000;
                from = page.last().map(|(node, _)| node.to_string());
                all.extend(page);
                if !full {
                    break;
                }
            }
            all.sort_by(|(a, x), (b, y)| y.cmp(x).then_with(|| a.as_str().cmp(b.as_str())));
            // The first row after the cursor in that order.
            let start = match after.as_deref().and_then(|a| a.split_once('-')) {
                Some((total, node)) => {
                    let total: u64 = total.parse().unwrap_or(u64::MAX);
                    all.iter()
                        .position(|(n, t)| *t < total || (*t == total && n.as_str() > node))
                        .unwrap_or(all.len())
                }
                None => 0,
            };
            Ok(all.into_iter().skip(start).take(PAGE).collect())
        })
        .await?;
    let price = tracker.settings().provider_usd_per_tib;
    Ok(page
        .into_iter()
        .map(|(node, total)| NodeRow {
            payout: price.map(|p| usd(total, p)),
            node,
            total,
        })
        .collect())
}

/// `GET /admin/nodes`.
pub(super) async fn list(
    State(tracker): State<Arc<Tracker>>,
    Operator(session): Operator,
    Query(query): Query<ListQuery>,
) -> Result<Response, PageError> {
    let rows = rows(&tracker, &query).await?;
    if query.csv() {
        let mut csv = String::from(super::csv::NODES_HEADER);
        for r in &rows {
            csv.push_str(&super::csv::node_row(r.node.as_str(), r.total, r.payout));
        }
        return Ok(super::csv_response("nodes.csv", csv));
    }
    let q = escape(query.q.trim());
    let mut body = format!(
        "<form method=\"get\" action=\"/admin/nodes\"><label>DID starts with \
         <input name=\"q\" id=\"q\" value=\"{q}\"></label><button id=\"search\">Search</button></form>\
         <table id=\"nodes-table\"><tr><th>Node</th><th>Egress</th><th>Bytes</th><th>Payout (USD)</th></tr>"
    );
    for r in &rows {
        let did = escape(r.node.as_str());
        body.push_str(&format!(
            "<tr><td><a href=\"/admin/nodes/{link}\">{did}</a></td><td class=\"n\">{human}</td>\
             <td class=\"n\">{total}</td><td class=\"n\">{payout}</td></tr>",
            link = urlencode(r.node.as_str()),
            human = bytes(r.total),
            total = r.total,
            payout = money(r.payout),
        ));
    }
    body.push_str("</table>");
    let last = next_page(&rows).map(|r| cursor(&query, r));
    body.push_str(&super::page_links(
        "/admin/nodes",
        &query,
        "This page as CSV",
        last.as_deref(),
    ));
    body.push_str(if by_payout(&query) {
        "<p><a id=\"sort\" href=\"/admin/nodes\">By DID</a></p>"
    } else {
        "<p><a id=\"sort\" href=\"/admin/nodes?sort=payout\">By payout, largest first</a></p>"
    });
    if tracker.settings().provider_usd_per_tib.is_none() {
        body.push_str("<p>Set ETRACKER_PROVIDER_EGRESS_USD_PER_TIB for payouts.</p>");
    }
    Ok(respond(
        StatusCode::OK,
        page("Nodes", Some(&session.csrf), &body),
    ))
}

/// `GET /admin/api/nodes`.
pub(super) async fn api_list(
    State(tracker): State<Arc<Tracker>>,
    _: ApiCaller,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let rows = rows(&tracker, &query).await?;
    let list: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::json!({"node": r.node.as_str(), "total_bytes": r.total, "payout_usd": r.payout}))
        .collect();
    // The cursor of the next page (`?after=`), when this one is full.
    let next = next_page(&rows).map(|r| cursor(&query, r));
    Ok(api_json(serde_json::json!({ "nodes": list, "next": next })))
}

/// What one node's page shows.
struct NodeDetail {
    total: u64,
    by_day: Vec<(String, u64)>,
    batches: Vec<EgressRecord>,
}

async fn detail(
    tracker: &Tracker,
    node: Did,
    before: Option<BatchCursor>,
) -> Result<NodeDetail, StoreError> {
    let period = Period::now();
    let (from, to) = (period.from.clone(), period.to.clone());
    let (total, counted, batches) = tracker
        .context()
        .store(move |s| {
            Ok((
                s.node_total(&node)?,
                s.node_usage(&node, &from, &to)?,
                s.node_batches(&node, before.as_ref(), PAGE)?,
            ))
        })
        .await?;
    let by_day = period.fill(counted);
    Ok(NodeDetail {
        total,
        by_day,
        batches,
    })
}

/// `GET /admin/nodes/{did}`.
pub(super) async fn show(
    State(tracker): State<Arc<Tracker>>,
    Operator(session): Operator,
    Path(did): Path<String>,
    Query(query): Query<NodeQuery>,
) -> Result<Response, PageError> {
    let node =
        Did::parse(&did).map_err(|_| PageError::BadRequest("Not a DID", "That is not a DID."))?;
    let cursor = query.cursor().map_err(|_| {
        PageError::BadRequest("Not a cursor", "That is not a page of this node's batches.")
    })?;
    let d = detail(&tracker, node.clone(), cursor).await?;
    if query.format.as_deref() == Some("csv") {
        let mut csv = String::from(super::csv::BATCHES_HEADER);
        for r in &d.batches {
            let (egress, counted, receipt) = match counts(r) {
                Some((total, counted)) => (
                    total.to_string(),
                    counted.to_string(),
                    format!("/receipts/{}", r.consolidate_invocation),
                ),
                None => Default::default(),
            };
            csv.push_str(&super::csv::row(&[
                r.batch.to_string(),
                r.received_at.to_string(),
                state(r).to_string(),
                egress,
                counted,
                error_of(r).unwrap_or_default().to_string(),
                receipt,
            ]));
        }
        return Ok(super::csv_response("batches.csv", csv));
    }
    let price = tracker.settings().provider_usd_per_tib;
    let mut body = format!(
        "<p>Total egress <span id=\"node-total\">{total}</span> bytes ({human}); payout \
         <span id=\"node-payout\">{payout}</span> USD.</p>\
         <h2>Egress per day, last 30 days (UTC)</h2>{chart}\
         <h2>Batches, newest first</h2>\
         <table id=\"batches\"><tr><th>Batch</th><th>Tracked</th><th>State</th><th>Egress</th>\
         <th>Retrievals counted</th><th>Last error</th><th>Receipt</th></tr>",
        total = d.total,
        human = bytes(d.total),
        payout = money(price.map(|p| usd(d.total, p))),
        chart = svg::bars("node-chart", &d.by_day),
    );
    for r in &d.batches {
        let (egress, counted, receipt) = match counts(r) {
            Some((total, counted)) => (
                total.to_string(),
                counted.to_string(),
                format!(
                    "<a class=\"receipt\" href=\"/receipts/{task}\">{task}</a>",
                    task = escape(&r.consolidate_invocation.to_string())
                ),
            ),
            None => Default::default(),
        };
        body.push_str(&format!(
            "<tr><td>{batch}</td><td>{tracked}</td><td>{state}</td><td class=\"n\">{egress}</td>\
             <td class=\"n\">{counted}</td><td>{error}</td><td>{receipt}</td></tr>",
            batch = escape(&r.batch.to_string()),
            tracked = time(r.received_at),
            state = state(r),
            error = escape(error_of(r).unwrap_or_default()),
        ));
    }
    body.push_str("</table>");
    let before = query
        .before
        .as_deref()
        .map(|b| format!("&amp;before={}", urlencode(b)))
        .unwrap_or_default();
    body.push_str(&format!(
        "<p><a id=\"csv\" href=\"/admin/nodes/{}?format=csv{before}\">These batches as CSV</a></p>",
        urlencode(node.as_str()),
    ));
    if let Some(last) = next_page(&d.batches) {
        body.push_str(&format!(
            "<p><a id=\"next\" href=\"/admin/nodes/{}?before={}\">Older batches</a></p>",
            urlencode(node.as_str()),
            urlencode(&BatchCursor::after(last).to_string())
        ));
    }
    let title = format!("Node {}", node.as_str());
    Ok(respond(
        StatusCode::OK,
        page(&title, Some(&session.csrf), &body),
    ))
}

/// Why a batch failed as a whole, or else why its last attempt did.
fn error_of(r: &EgressRecord) -> Option<&str> {
    match &r.status {
        RecordStatus::Done {
            failure: Some(failure),
            ..
        } => Some(failure),
        _ => r.last_error.as_deref(),
    }
}

/// A concluded batch's bytes and retrievals counted; `None` while pending.
fn counts(r: &EgressRecord) -> Option<(u64, u64)> {
    match &r.status {
        RecordStatus::Done {
            total_bytes,
            counted_receipts,
            ..
        } => Some((*total_bytes, *counted_receipts)),
        RecordStatus::Pending => None,
    }
}

/// `GET /admin/api/nodes/{did}`.
pub(super) async fn api_show(
    State(tracker): State<Arc<Tracker>>,
    _: ApiCaller,
    Path(did): Path<String>,
    Query(query): Query<NodeQuery>,
) -> Result<Response, ApiError> {
    let node = Did::parse(&did).map_err(|_| ApiError::BadRequest("the node is not a DID"))?;
    let cursor = query
        .cursor()
        .map_err(|_| ApiError::BadRequest("before is not <received_at>-<batch CID>"))?;
    let d = detail(&tracker, node.clone(), cursor).await?;
    let batches: Vec<serde_json::Value> = d
        .batches
        .iter()
        .map(|r| {
            let (total, counted) = counts(r).unzip();
            serde_json::json!({
                "batch": r.batch.to_string(),
                "received_at": r.received_at,
                "state": state(r),
                "total_bytes": total,
                "counted_receipts": counted,
                "last_error": error_of(r),
                "receipt": (!r.is_pending())
                    .then(|| format!("/receipts/{}", r.consolidate_invocation)),
            })
        })
        .collect();
    let price = tracker.settings().provider_usd_per_tib;
    Ok(api_json(serde_json::json!({
        "node": node.as_str(),
        "total_bytes": d.total,
        "payout_usd": price.map(|p| usd(d.total, p)),
        "egress_by_day": d.by_day.iter().map(|(day, b)| serde_json::json!({"day": day, "bytes": b})).collect::<Vec<_>>(),
        "batches": batches,
        // The cursor of the next page (`?before=`), when this one is full.
        "next": next_page(&d.batches).map(|last| BatchCursor::after(last).to_string()),
    })))
}
