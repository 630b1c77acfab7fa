//! A task runs only while the tracker holds its lease.
//!
//! Consolidate tasks are deterministic (no nonce, no expiry: a node finds
//! its receipt by the task's CID) and public (the track receipt's
//! `fx.fork`, `GET /receipts/{task}`), so a task alone proves nothing
//! about *now*: anyone who reaches a consolidator could replay it and make
//! it download and check the batch again. The tracker therefore sends with
//! the task, as one more block of the same agent message (which leaves the
//! task's CID alone), a *lease*: a delegation of the same capability, from
//! the tracker to the consolidator, that expires with the record's lease
//! and names the replica holding it. The consolidator runs a task only
//! with a lease it can verify, before it downloads anything.
//!
//! ```text
//! lease  iss: tracker, aud: consolidator, exp: end of the record's lease,
//!        nnc: "<replica>", att: [{ can: "space/egress/consolidate",
//!        with: <tracker DID>, nb: { cause: Link<track invocation> } }],
//!        fct: [{ tracked: <unix seconds the batch was tracked> }]
//! ```
//! The lease also tells the consolidator, under the tracker's signature,
//! when the batch was tracked: what a retrieval's freshness is judged
//! against (a track invocation carries no time of its own).

use cid::Cid;
use etracker_capabilities::consolidate::ConsolidateNb;
use etracker_capabilities::{Ability, Consolidate};
use ucanto::dag::{CodecError, Ipld, IpldMap};
use ucanto::principal::{Did, Signer, Verifier};
use ucanto::ucan::{Delegation, Invocation};

/// Most blocks of a task's message looked at for its lease: the tracker
/// sends three (the task, the track invocation, the lease).
const MAX_BLOCKS_SEARCHED: usize = 8;

/// The lease on the task of `cause` (a batch tracked at `tracked`) that
/// `tracker` grants `consolidator` until `until` (unix seconds), held by
/// `holder`.
pub fn grant(
    tracker: &dyn Signer,
    consolidator: &Did,
    cause: Cid,
    tracked: u64,
    until: u64,
    holder: &str,
) -> Result<Delegation, CodecError> {
    Delegation::builder(tracker, consolidator.clone())
        .capability(Consolidate::capability(
            tracker.did(),
            &ConsolidateNb { cause },
        ))
        .fact(IpldMap::from([(
            TRACKED.to_string(),
            Ipld::Integer(tracked.into()),
        )]))
        .expiration(until)
        .nonce(holder)
        .build()
}

/// The lease's fact naming when the batch was tracked.
const TRACKED: &str = "tracked";

/// Whether `task` carries a lease from `tracker` to `me` on its cause,
/// valid at `now`: when the batch was tracked, or what is missing.
pub(super) fn check(
    task: &Invocation,
    cause: &Cid,
    tracker: &dyn Verifier,
    me: &Did,
    now: u64,
) -> Result<u64, String> {
    let mut expired = None;
    let candidates = task
        .blocks()
        .iter()
        .filter(|block| block.cid != task.cid() && block.cid != *cause)
        .take(MAX_BLOCKS_SEARCHED);
    for block in candidates {
        let Ok(lease) = Delegation::from_blocks(&block.cid, task.blocks().clone()) else {
            continue;
        };
        let names_task = lease.issuer() == tracker.did()
            && lease.audience() == me
            && matches!(lease.capabilities(), [c] if c.can == Consolidate::CAN
                && c.with == tracker.did().as_str()
                && Consolidate::parse(c).is_ok_and(|parsed| parsed.nb.cause == *cause));
        if !names_task || !lease.verify_signature(tracker) {
            continue;
        }
        let started = lease.not_before().is_none_or(|nbf| nbf < now);
        let tracked = lease
            .data()
            .facts
            .iter()
            .find_map(|fact| match fact.get(TRACKED) {
                Some(Ipld::Integer(at)) => u64::try_from(*at).ok(),
                _ => None,
            });
        match (lease.expiration(), tracked) {
            (Some(exp), Some(tracked)) if started && now < exp => return Ok(tracked),
            (exp, _) => expired = exp.or(expired),
        }
    }
    Err(match expired {
        Some(exp) => format!("the task's lease ended at {exp}; only the tracker's current lease runs it"),
        None => "the task carries no lease from the tracker; only a task the tracker holds a lease on runs".into(),
    })
}
