//! `account/egress/get`: egress per space and day, for an account.
//!
//! The tracker keeps no registry of which spaces an account owns, so the
//! invocation proves it: for every space reported, its blocks must include a
//! valid delegation issued by the space to the account (as a space grants its
//! owner). Without `nb.spaces`, every space so proven is reported. Without
//! `nb.period`, the last 30 days up to today are. Periods are `from`
//! inclusive, `to` exclusive, at most 60 days.

use std::collections::BTreeSet;
use std::sync::Arc;

use etracker_capabilities::account_egress_get::{
    format_date, DailyStats, EgressGetError, EgressGetOk, Period, SpaceEgress,
};
use etracker_capabilities::{Ability, EgressGet, Outcome};
use ucanto::principal::{verifier_for, Did};
use ucanto::server::{HandlerError, Request, Response};
use ucanto::ucan::{now, Delegation, Invocation};

use super::{unexpected, Context};

/// Handles one `account/egress/get` invocation.
pub async fn handle(ctx: Arc<Context>, request: Request) -> Result<Response, HandlerError> {
    let parsed = match EgressGet::parse(&request.capability) {
        Ok(parsed) => parsed,
        Err(e) => {
            let error = EgressGetError::PeriodNotAcceptable {
                message: e.to_string(),
            };
            return Ok(Response::error(error.to_ipld()));
        }
    };
    let account = parsed.with;
    let today = (now() / 86_400) as i64;
    let period = parsed
        .nb
        .period
        .unwrap_or_else(|| Period::new(format_date(today - 29), format_date(today + 1)));
    let days = match period.days() {
        Ok(days) => days,
        Err(e) => return Ok(Response::error(e.to_ipld())),
    };
    let owned = owned_spaces(&request.invocation, &account);
    let spaces: Vec<Did> = match parsed.nb.spaces {
        Some(spaces) => {
            if let Some(space) = spaces.iter().find(|s| !owned.contains(*s)) {
                let message = format!(
                    "{account} has no delegation from {space} among the invocation's proofs"
                );
                return Ok(Response::error(
                    EgressGetError::SpaceUnauthorized { message }.to_ipld(),
                ));
            }
            spaces
        }
        None => owned.into_iter().collect(),
    };
    let (from, to) = (format_date(days.start), format_date(days.end));
    let mut ok = EgressGetOk::default();
    for space in spaces {
        let (s, f, t) = (space.clone(), from.clone(), to.clone());
        let usage = ctx
            .store(move |store| store.space_usage(&s, &f, &t))
            .await
            .map_err(unexpected)?;
        let total: u64 = usage.iter().map(|(_, bytes)| bytes).sum();
        ok.total += total;
        let daily_stats = usage
            .into_iter()
            .map(|(date, egress)| DailyStats { date, egress })
            .collect();
        ok.spaces.insert(space, SpaceEgress { total, daily_stats });
    }
    Ok(Response::ok(ok.to_ipld()))
}

/// Spaces that delegated to `account` in a UCAN found among the invocation's
/// blocks, signed and valid now.
fn owned_spaces(invocation: &Invocation, account: &Did) -> BTreeSet<Did> {
    let current = now();
    invocation
        .blocks()
        .iter()
        .filter_map(|block| Delegation::from_block(block).ok())
        .filter(|d| d.audience() == account && d.issuer().is_key())
        .filter(|d| {
            d.expiration().is_none_or(|exp| exp > current)
                && d.not_before().is_none_or(|nbf| nbf <= current)
        })
        .filter(|d| {
            d.capabilities()
                .iter()
                .any(|c| c.with == d.issuer().as_str())
        })
        .filter(|d| verifier_for(d.issuer()).is_ok_and(|v| d.verify_signature(v.as_ref())))
        .map(|d| d.issuer().clone())
        .collect()
}
