//! Statements by UTC month: what each node is paid and each customer is
//! billed for one month, and whether those figures are final.
//!
//! - **Nodes**: each node's bytes over the month's days (its daily totals)
//!   and the payout at `ETRACKER_PROVIDER_EGRESS_USD_PER_TIB`.
//! - **Customers**: each space with billable egress in the month, under the
//!   account the registry names its customer (as `account/egress/get`
//!   finds it), with the bill at `ETRACKER_CLIENT_EGRESS_USD_PER_TIB`;
//!   spaces without a customer are `unassigned`. Every billable byte a node
//!   is paid for is a byte of exactly one space, so the nodes' bytes add up
//!   to the customers' plus the unassigned.
//! - **Non-billable** bytes (replication, indexing) are counted apart, paid
//!   to no one and billed to no one.
//! - **Final**: a retrieval dated in the month can be counted until the
//!   freshness age plus the give-up age after the month ends (the rules of
//!   [`etracker_capabilities::payable`]), plus a lease for its conclusion to
//!   commit; after that second (`final_at`) the figures never change.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use ucanto::principal::Did;

use super::access::{api_json, ApiCaller, ApiError, Operator, PageError};
use super::html::{bytes, escape, page, respond};
use super::{csv_response, money, usd};
use crate::registry::{SpaceRegistry, StoreRegistry};
use crate::service::Tracker;
use crate::store::{Store, StoreError};
use etracker_capabilities::account_egress_get::{format_date, parse_date};

/// Rows read from the store at a time.
const READ_PAGE: usize = 1000;

/// One month's figures.
pub struct Statement {
    /// `YYYY-MM`.
    pub month: String,
    /// Its first day and the next month's (exclusive), `YYYY-MM-DD`.
    pub from: String,
    /// The first day after it.
    pub to: String,
    /// The second after which no batch can add to it.
    pub final_at: u64,
    /// Bytes per node, in DID order (nodes with none left out).
    pub nodes: Vec<(Did, u64)>,
    /// Per customer, their spaces' bytes, in DID order.
    pub customers: BTreeMap<String, Vec<(Did, u64)>>,
    /// Spaces with billable bytes and no customer.
    pub unassigned: Vec<(Did, u64)>,
    /// Bytes retrieved by non-billable actors.
    pub non_billable: u64,
}

impl Statement {
    /// Bytes paid to nodes.
    pub fn node_bytes(&self) -> u64 {
        self.nodes.iter().map(|(_, b)| b).sum()
    }

    /// Bytes of `spaces`.
    fn sum(spaces: &[(Did, u64)]) -> u64 {
        spaces.iter().map(|(_, b)| b).sum()
    }
}

/// The month `text` (`YYYY-MM`): its first day and the next month's, as
/// days since the epoch; `None` when it is not a month.
pub fn month_days(text: &str) -> Option<(i64, i64)> {
    let (year, month) = text.split_once('-')?;
    if year.len() != 4 || month.len() != 2 {
        return None;
    }
    let (year, month): (i32, u32) = (year.parse().ok()?, month.parse().ok()?);
    if !(1..=12).contains(&month) {
        return None;
    }
    let first = parse_date(&format!("{year:04}-{month:02}-01"))?;
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let next = parse_date(&format!("{next_year:04}-{next_month:02}-01"))?;
    Some((first, next))
}

/// Reads the statement of `month` (`from`..`to` as days since the epoch);
/// `final_at` as [`Tracker::final_at`] says.
pub fn read(
    store: &dyn Store,
    registry: &dyn SpaceRegistry,
    month: &str,
    (first, next): (i64, i64),
    final_at: u64,
) -> Result<Statement, StoreError> {
    let (from, to) = (format_date(first), format_date(next));
    let mut nodes = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.nodes_page("", after.as_deref(), READ_PAGE)?;
        for (node, _) in &page {
            let bytes: u64 = store
                .node_usage(node, &from, &to)?
                .iter()
                .map(|(_, b)| b)
                .sum();
            if bytes > 0 {
                nodes.push((node.clone(), bytes));
            }
        }
        match page.last() {
            Some((last, _)) if page.len() == READ_PAGE => after = Some(last.to_string()),
            _ => break,
        }
    }
    let (mut customers, mut unassigned) = (BTreeMap::<String, Vec<(Did, u64)>>::new(), Vec::new());
    let mut non_billable = 0u64;
    let mut after: Option<String> = None;
    loop {
        let page = store.billed_spaces_page("", after.as_deref(), READ_PAGE)?;
        for space in &page {
            let sum = |days: Vec<(String, u64)>| days.iter().map(|(_, b)| *b).sum::<u64>();
            non_billable += sum(store.non_billable_usage(space, &from, &to)?);
            let bytes = sum(store.space_usage(space, &from, &to)?);
            if bytes == 0 {
                continue;
            }
            let customer = registry
                .provisions(space)?
                .into_iter()
                .find_map(|p| p.customer);
            match customer {
                Some(customer) => customers
                    .entry(customer.to_string())
                    .or_default()
                    .push((space.clone(), bytes)),
                None => unassigned.push((space.clone(), bytes)),
            }
        }
        match page.last() {
            Some(last) if page.len() == READ_PAGE => after = Some(last.to_string()),
            _ => break,
        }
    }
    Ok(Statement {
        month: month.to_string(),
        from,
        to,
        final_at,
        nodes,
        customers,
        unassigned,
        non_billable,
    })
}

/// `?format=csv`.
#[derive(Deserialize, Default)]
pub(super) struct StatementQuery {
    #[serde(default)]
    format: Option<String>,
}

/// The statement of `month` as the tracker reads it now.
async fn statement(tracker: &Arc<Tracker>, month: &str) -> Result<Option<Statement>, StoreError> {
    let Some(days) = month_days(month) else {
        return Ok(None);
    };
    let final_at = tracker.final_at(days.1);
    let registry: Arc<dyn SpaceRegistry> = match tracker.context().spaces.registry() {
        Some(registry) => registry.clone(),
        None => Arc::new(StoreRegistry(tracker.context().store.clone())),
    };
    let month = month.to_string();
    tracker
        .context()
        .store(move |s| read(s, registry.as_ref(), &month, days, final_at).map(Some))
        .await
}

/// The statement as JSON: the period, whether it is final, nodes with
/// bytes and payout, customers with their spaces, bytes and bill, the
/// unassigned spaces and the non-billable bytes.
pub fn json(s: &Statement, prices: (Option<f64>, Option<f64>), now: u64) -> serde_json::Value {
    use serde_json::json;
    let (pay, bill) = prices;
    let priced =
        |bytes: u64, price: Option<f64>| price.map(|p| (usd(bytes, p) * 100.0).round() / 100.0);
    let spaces = |list: &[(Did, u64)]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|(space, bytes)| json!({"space": space.as_str(), "bytes": bytes}))
            .collect()
    };
    let customer_bytes: u64 = s.customers.values().map(|l| Statement::sum(l)).sum();
    json!({
        "period": {"month": s.month, "from": s.from, "to": s.to},
        "final": now >= s.final_at,
        "final_at": s.final_at,
        "nodes": s.nodes.iter().map(|(node, bytes)| json!({
            "node": node.as_str(), "bytes": bytes, "pay_usd": priced(*bytes, pay),
        })).collect::<Vec<_>>(),
        "customers": s.customers.iter().map(|(customer, list)| {
            let bytes = Statement::sum(list);
            json!({"customer": customer, "bytes": bytes, "bill_usd": priced(bytes, bill), "spaces": spaces(list)})
        }).collect::<Vec<_>>(),
        "unassigned": {"bytes": Statement::sum(&s.unassigned), "spaces": spaces(&s.unassigned)},
        "non_billable_bytes": s.non_billable,
        "totals": {
            "node_bytes": s.node_bytes(),
            "customer_bytes": customer_bytes,
            "unassigned_bytes": Statement::sum(&s.unassigned),
            "pay_usd": priced(s.node_bytes(), pay),
            "bill_usd": priced(customer_bytes, bill),
        },
    })
}

/// The header of a statement's CSV: one row per node, per customer's
/// space, per unassigned space, and one for the non-billable bytes.
pub const STATEMENT_HEADER: &str = "kind,party,space,bytes,usd\n";

/// The statement as CSV (money to the cent).
pub fn csv(s: &Statement, prices: (Option<f64>, Option<f64>)) -> String {
    use super::csv::row;
    let (pay, bill) = prices;
    let cents = |bytes: u64, price: Option<f64>| {
        price
            .map(|p| format!("{:.2}", usd(bytes, p)))
            .unwrap_or_default()
    };
    let mut out = String::from(STATEMENT_HEADER);
    for (node, bytes) in &s.nodes {
        out.push_str(&row(&[
            "node",
            node.as_str(),
            "",
            &bytes.to_string(),
            &cents(*bytes, pay),
        ]));
    }
    for (customer, list) in &s.customers {
        for (space, bytes) in list {
            out.push_str(&row(&[
                "customer",
                customer,
                space.as_str(),
                &bytes.to_string(),
                &cents(*bytes, bill),
            ]));
        }
    }
    for (space, bytes) in &s.unassigned {
        out.push_str(&row(&[
            "unassigned",
            "",
            space.as_str(),
            &bytes.to_string(),
            "",
        ]));
    }
    out.push_str(&row(&[
        "non_billable",
        "",
        "",
        &s.non_billable.to_string(),
        "",
    ]));
    out
}

fn prices(tracker: &Tracker) -> (Option<f64>, Option<f64>) {
    let settings = tracker.settings();
    (settings.provider_usd_per_tib, settings.client_usd_per_tib)
}

/// `GET /admin/api/statements/{month}` (`?format=csv`).
pub(super) async fn api_show(
    State(tracker): State<Arc<Tracker>>,
    _caller: ApiCaller,
    Path(month): Path<String>,
    Query(query): Query<StatementQuery>,
) -> Result<Response, ApiError> {
    let s = statement(&tracker, &month)
        .await?
        .ok_or(ApiError::BadRequest("the month is not YYYY-MM"))?;
    if query.format.as_deref() == Some("csv") {
        return Ok(csv_response("statement.csv", csv(&s, prices(&tracker))));
    }
    Ok(api_json(json(&s, prices(&tracker), ucanto::ucan::now())))
}

/// `GET /admin/statements/{month}` (`?format=csv`).
pub(super) async fn show(
    State(tracker): State<Arc<Tracker>>,
    Operator(session): Operator,
    Path(month): Path<String>,
    Query(query): Query<StatementQuery>,
) -> Result<Response, PageError> {
    let s = statement(&tracker, &month)
        .await?
        .ok_or(PageError::BadRequest(
            "Not a month",
            "A statement is for a month written YYYY-MM.",
        ))?;
    let (pay, bill) = prices(&tracker);
    if query.format.as_deref() == Some("csv") {
        return Ok(csv_response("statement.csv", csv(&s, (pay, bill))));
    }
    let now = ucanto::ucan::now();
    let state = if now >= s.final_at {
        "Final: no batch can add to this month any more.".to_string()
    } else {
        format!(
            "Not final: batches may still add to this month until {} (unix seconds).",
            s.final_at
        )
    };
    let (first, next) = month_days(&s.month).unwrap_or_default();
    let mut body = format!(
        "<p id=\"final\">{}</p><p><a href=\"/admin/statements/{previous}\" id=\"previous-month\">Previous month</a> · \
         <a href=\"/admin/statements/{following}\" id=\"next-month\">Next month</a> · \
         <a href=\"/admin/statements/{month}?format=csv\" id=\"statement-csv\">CSV</a></p>\
         <h2>Nodes</h2><table id=\"statement-nodes\"><tr><th>Node</th><th>Egress</th><th>Bytes</th><th>Pay (USD)</th></tr>",
        escape(&state),
        month = escape(&s.month),
        previous = &format_date(first - 1)[..7],
        following = &format_date(next)[..7],
    );
    for (node, n) in &s.nodes {
        body.push_str(&format!(
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{n}</td><td class=\"n\">{}</td></tr>",
            escape(node.as_str()),
            bytes(*n),
            money(pay.map(|p| usd(*n, p))),
        ));
    }
    body.push_str(
        "</table><h2>Customers</h2><table id=\"statement-customers\"><tr><th>Customer</th>\
         <th>Spaces</th><th>Egress</th><th>Bytes</th><th>Bill (USD)</th></tr>",
    );
    for (customer, list) in &s.customers {
        let n = Statement::sum(list);
        let spaces: Vec<String> = list.iter().map(|(s, _)| escape(s.as_str())).collect();
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{n}</td><td class=\"n\">{}</td></tr>",
            escape(customer),
            spaces.join("<br>"),
            bytes(n),
            money(bill.map(|p| usd(n, p))),
        ));
    }
    body.push_str(&format!(
        "</table><p>Without a customer: {} in {} space(s). Non-billable (paid to no one, billed to no one): {}.</p>",
        bytes(Statement::sum(&s.unassigned)),
        s.unassigned.len(),
        bytes(s.non_billable),
    ));
    Ok(respond(
        axum::http::StatusCode::OK,
        page(
            &format!("Statement {}", s.month),
            Some(&session.csrf),
            &body,
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_read_whole() {
        let day = |d: &str| parse_date(d).unwrap();
        assert_eq!(
            month_days("2026-11"),
            Some((day("2026-11-01"), day("2026-12-01")))
        );
        assert_eq!(
            month_days("2026-12"),
            Some((day("2026-12-01"), day("2027-01-01")))
        );
        for bad in [
            "2026-13",
            "2026-00",
            "2026-1",
            "26-11",
            "2026-11-01",
            "november",
            "",
        ] {
            assert_eq!(month_days(bad), None, "{bad}");
        }
    }
}
