//! `account/egress/get`: egress per space and day, for an account.
//!
//! Which spaces an account may read:
//! - where the space registry knows a space's customer, the account it names
//!   (and no other, whatever the proofs say);
//! - elsewhere, a space that granted the account itself: the invocation's
//!   blocks include a valid delegation issued by the space to the account of
//!   `*` or `space/*` on the space (as a space grants its owner), not merely
//!   some capability on it.
//!
//! Without `nb.spaces`, every space so found is reported. Without
//! `nb.period`, the last 30 days up to today are. Periods are `from`
//! inclusive, `to` exclusive, at most 60 days.

use std::collections::BTreeSet;
use std::sync::Arc;

use etracker_capabilities::account_egress_get::{
    format_date, DailyStats, EgressGetError, EgressGetOk, Period, SpaceEgress,
};
use etracker_capabilities::{EgressGet, Invoked, Outcome};
use ucanto::principal::{verifier_for, Did};
use ucanto::server::{HandlerError, Response};
use ucanto::ucan::{now, Delegation, Invocation};

use super::{unexpected, Context};

/// Handles one `account/egress/get` invocation.
pub async fn handle(
    ctx: Arc<Context>,
    invoked: Invoked<EgressGet>,
) -> Result<Response, HandlerError> {
    let (parsed, request) = (invoked.capability, invoked.request);
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
    let proven = owned_spaces(&request.invocation, &account);
    let customers = Customers::look_up(&ctx, &account, &proven, parsed.nb.spaces.as_deref())
        .await
        .map_err(unexpected)?;
    let spaces: Vec<Did> = match parsed.nb.spaces {
        Some(spaces) => {
            if let Some(space) = spaces.iter().find(|s| !customers.may_read(s, &proven)) {
                let message = match customers.of.get(space) {
                    Some(customer) => format!("{space} belongs to {customer}, not to {account}"),
                    None => format!(
                        "{account} has no delegation of {space} itself (* or space/*) among the invocation's proofs"
                    ),
                };
                return Ok(Response::error(
                    EgressGetError::SpaceUnauthorized { message }.to_ipld(),
                ));
            }
            spaces
        }
        None => customers
            .listed
            .iter()
            .chain(proven.iter())
            .filter(|s| customers.may_read(s, &proven))
            .cloned()
            .collect::<BTreeSet<Did>>()
            .into_iter()
            .collect(),
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

/// What the space registry says of an account and the spaces in question.
struct Customers {
    /// The account.
    account: Did,
    /// The spaces the registry lists as the account's.
    listed: Vec<Did>,
    /// The customer of each space in question, where the registry knows it.
    of: std::collections::HashMap<Did, Did>,
}

impl Customers {
    /// Asks the registry about `account` and the spaces `asked` (or, without
    /// them, those `proven`).
    async fn look_up(
        ctx: &Arc<Context>,
        account: &Did,
        proven: &BTreeSet<Did>,
        asked: Option<&[Did]>,
    ) -> Result<Self, crate::store::StoreError> {
        let mut customers = Customers {
            account: account.clone(),
            listed: Vec::new(),
            of: Default::default(),
        };
        let Some(registry) = ctx.spaces.registry().cloned() else {
            return Ok(customers);
        };
        let wanted: Vec<Did> =
            asked.map_or_else(|| proven.iter().cloned().collect(), <[Did]>::to_vec);
        let account = account.clone();
        let (listed, of) = tokio::task::spawn_blocking(move || {
            let listed = registry.customer_spaces(&account)?;
            let mut of = std::collections::HashMap::new();
            for space in wanted {
                let customer = registry
                    .provisions(&space)?
                    .into_iter()
                    .find_map(|p| p.customer);
                if let Some(customer) = customer {
                    of.insert(space, customer);
                }
            }
            Ok::<_, crate::store::StoreError>((listed, of))
        })
        .await
        .map_err(|e| crate::store::StoreError::backend("reading customers", e))??;
        customers.listed = listed;
        customers.of = of;
        Ok(customers)
    }

    /// Whether the account may read `space`: its customer, where the
    /// registry knows one; a space that granted it itself, elsewhere.
    fn may_read(&self, space: &Did, proven: &BTreeSet<Did>) -> bool {
        match self.of.get(space) {
            Some(customer) => *customer == self.account,
            None => self.listed.contains(space) || proven.contains(space),
        }
    }
}

/// Spaces that delegated themselves (`*` or `space/*` on the space) to
/// `account` in a UCAN found among the invocation's blocks, signed and
/// valid now.
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
                .any(|c| c.with == d.issuer().as_str() && (c.can == "*" || c.can == "space/*"))
        })
        .filter(|d| verifier_for(d.issuer()).is_ok_and(|v| d.verify_signature(v.as_ref())))
        .map(|d| d.issuer().clone())
        .collect()
}
