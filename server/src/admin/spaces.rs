//! The spaces page: each space registered or with egress counted, with its
//! customer (from the registry, or the consumer table), its egress
//! over the last 30 days and what that costs the customer at
//! `ETRACKER_CLIENT_EGRESS_USD_PER_TIB` (search by DID prefix, pages of
//! 50); as CSV, one row per space and day. With
//! `?customer=`, one customer's spaces and their sum: the customer's bill.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::access::{api_json, ApiCaller, ApiError, Operator, PageError};
use super::html::{bytes, escape, page, respond};
use super::{csv_response, money, next_page, usd, ListQuery, Period, PAGE};
use crate::registry::{Billing, SpacePolicy};
use crate::service::Tracker;
use crate::store::{SpaceEntry, Store, StoreError};
use ucanto::principal::Did;

/// A space's row: who provisions and pays for it, and its egress per day
/// over the period.
struct SpaceRow {
    space: Did,
    /// The registry's entry, when the space is registered here.
    provider: Option<Did>,
    customer: Option<Did>,
    by_day: Vec<(String, u64)>,
}

impl SpaceRow {
    fn total(&self) -> u64 {
        self.by_day.iter().map(|(_, b)| b).sum()
    }
}

/// A page of spaces, and with a customer asked, that customer's egress
/// over the period (all their spaces, not only the page's).
struct Listing {
    rows: Vec<SpaceRow>,
    customer_total: Option<u64>,
}

/// The customer a query asks about: `Err` when it is not a DID.
fn asked_customer(query: &ListQuery) -> Result<Option<Did>, ()> {
    match query.customer.trim() {
        "" => Ok(None),
        text => Did::parse(text).map(Some).map_err(|_| ()),
    }
}

/// A page of spaces: the registered ones and those with billed egress
/// (a consumer table's, or any space's), merged in DID order. Each list is
/// read from `after` for a page, so their merge's first page is exact.
/// With `customer`, the spaces the registry names that customer's instead.
async fn rows(
    tracker: &Tracker,
    query: &ListQuery,
    customer: Option<Did>,
) -> Result<Listing, StoreError> {
    let Period { from, to, .. } = Period::now();
    let (q, after) = (query.q.trim().to_string(), query.after.clone());
    let policy = tracker.context().spaces.clone();
    tracker
        .context()
        .store(move |s| {
            if let Some(customer) = customer {
                return customer_rows(s, &policy, &customer, &q, after.as_deref(), (&from, &to));
            }
            let mut page: BTreeMap<String, Option<SpaceEntry>> = BTreeMap::new();
            for space in s.billed_spaces_page(&q, after.as_deref(), PAGE)? {
                page.insert(space.as_str().to_string(), None);
            }
            for entry in s.spaces_page(&q, after.as_deref(), PAGE)? {
                page.insert(entry.space.as_str().to_string(), Some(entry));
            }
            let mut rows = Vec::new();
            for (space, entry) in page.into_iter().take(PAGE) {
                let space = crate::store::parse_did(&space)?;
                let (provider, customer) = match entry {
                    Some(entry) => (Some(entry.provider), entry.customer),
                    // Not registered here: the policy's registry (a consumer
                    // table) may know who pays.
                    None => match policy.judge(&space)? {
                        Billing::Billable { customer } => (None, customer),
                        Billing::Unknown(_) => (None, None),
                    },
                };
                let by_day = s.space_usage(&space, &from, &to)?;
                rows.push(SpaceRow {
                    space,
                    provider,
                    customer,
                    by_day,
                });
            }
            Ok(Listing {
                rows,
                customer_total: None,
            })
        })
        .await
}

/// One customer's spaces (per the policy's registry: this tracker's, or
/// the consumer table), a page of them as rows, and their egress summed.
fn customer_rows(
    s: &dyn Store,
    policy: &SpacePolicy,
    customer: &Did,
    q: &str,
    after: Option<&str>,
    (from, to): (&str, &str),
) -> Result<Listing, StoreError> {
    let mut spaces = match policy.registry() {
        Some(registry) => registry.customer_spaces(customer)?,
        None => s.customer_spaces(customer)?,
    };
    spaces.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    spaces.dedup();
    let mut rows = Vec::new();
    let mut total: u64 = 0;
    for space in spaces {
        let by_day = s.space_usage(&space, from, to)?;
        total = by_day.iter().fold(total, |t, (_, b)| t.saturating_add(*b));
        let on_page = space.as_str().starts_with(q) && after.is_none_or(|a| space.as_str() > a);
        if on_page && rows.len() < PAGE {
            let provider = s.space(&space)?.map(|entry| entry.provider);
            rows.push(SpaceRow {
                space,
                provider,
                customer: Some(customer.clone()),
                by_day,
            });
        }
    }
    Ok(Listing {
        rows,
        customer_total: Some(total),
    })
}

fn cost(tracker: &Tracker, bytes: u64) -> Option<f64> {
    tracker.settings().client_usd_per_tib.map(|p| usd(bytes, p))
}

/// `GET /admin/usage`.
pub(super) async fn list(
    State(tracker): State<Arc<Tracker>>,
    Operator(session): Operator,
    Query(query): Query<ListQuery>,
) -> Result<Response, PageError> {
    let customer = asked_customer(&query)
        .map_err(|_| PageError::BadRequest("Spaces and customers", "The customer is not a DID."))?;
    let Listing {
        rows,
        customer_total,
    } = rows(&tracker, &query, customer).await?;
    if query.csv() {
        let mut csv = String::from(super::csv::SPACES_HEADER);
        for r in &rows {
            let customer = r.customer.as_ref().map(|c| c.as_str());
            for (day, b) in &r.by_day {
                let cost = cost(&tracker, *b);
                csv.push_str(&super::csv::space_row(
                    r.space.as_str(),
                    customer,
                    day,
                    *b,
                    cost,
                ));
            }
        }
        return Ok(csv_response("spaces.csv", csv));
    }
    let mut body = format!(
        "<form method=\"get\" action=\"/admin/usage\"><label>Space DID starts with \
         <input name=\"q\" id=\"q\" value=\"{q}\"></label> <label>Customer \
         <input name=\"customer\" id=\"customer\" value=\"{customer}\"></label>\
         <button id=\"search\">Search</button></form>\
         <p>Egress over the last 30 days (UTC).</p>{bill}\
         <table id=\"spaces-table\"><tr><th>Space</th><th>Customer</th><th>Egress</th><th>Bytes</th>\
         <th>Cost (USD)</th></tr>",
        q = escape(query.q.trim()),
        customer = escape(query.customer.trim()),
        bill = customer_total.map_or(String::new(), |total| format!(
            "<p id=\"customer-total\">All spaces of {customer}: {human} ({total} bytes), \
             {cost} USD.</p>",
            customer = escape(query.customer.trim()),
            human = bytes(total),
            cost = money(cost(&tracker, total)),
        )),
    );
    for r in &rows {
        let total = r.total();
        body.push_str(&format!(
            "<tr><td>{space}</td><td>{customer}</td><td class=\"n\">{human}</td>\
             <td class=\"n\">{total}</td><td class=\"n\">{cost}</td></tr>",
            space = escape(r.space.as_str()),
            customer = escape(r.customer.as_ref().map_or("", |c| c.as_str())),
            human = bytes(total),
            cost = money(cost(&tracker, total)),
        ));
    }
    body.push_str("</table>");
    let last = next_page(&rows).map(|r| r.space.as_str());
    body.push_str(&super::page_links(
        "/admin/usage",
        &query,
        "This page as CSV, per space and day",
        last,
    ));
    if tracker.settings().client_usd_per_tib.is_none() {
        body.push_str("<p>Set ETRACKER_CLIENT_EGRESS_USD_PER_TIB for costs.</p>");
    }
    Ok(respond(
        StatusCode::OK,
        page("Spaces and customers", Some(&session.csrf), &body),
    ))
}

/// `GET /admin/api/usage`.
pub(super) async fn api_list(
    State(tracker): State<Arc<Tracker>>,
    _: ApiCaller,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let customer =
        asked_customer(&query).map_err(|_| ApiError::BadRequest("the customer is not a DID"))?;
    let Listing {
        rows,
        customer_total,
    } = rows(&tracker, &query, customer).await?;
    let spaces: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "space": r.space.as_str(),
                "customer": r.customer.as_ref().map(|c| c.as_str()),
                "provider": r.provider.as_ref().map(|p| p.as_str()),
                "egress_by_day": r.by_day.iter().map(|(day, b)| serde_json::json!({
                    "day": day,
                    "bytes": b,
                    "cost_usd": cost(&tracker, *b),
                })).collect::<Vec<_>>(),
                "total_bytes": r.total(),
                "cost_usd": cost(&tracker, r.total()),
            })
        })
        .collect();
    // The cursor of the next page (`?after=`), when this one is full.
    let next = next_page(&rows).map(|r| r.space.as_str());
    let mut listing = serde_json::json!({ "spaces": spaces, "next": next });
    if let Some(total) = customer_total {
        // The customer's bill over the period: every space, not the page.
        listing["customer_total_bytes"] = total.into();
        listing["customer_cost_usd"] = cost(&tracker, total).into();
    }
    Ok(api_json(listing))
}
