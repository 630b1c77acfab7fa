//! Who pays for a retrieval, and for when: the rules a signed
//! `space/content/retrieve` invocation must pass, beyond its signatures,
//! for its bytes to be paid to the node that served it and billed to its
//! space. The tracker judges every receipt of a batch with [`judge`]; a
//! node can judge an incoming retrieval with the same call before it
//! serves it, and refuse work nobody will pay for.
//!
//! # The rules
//! - **Authorized**: the space authorized the retrieval through a chain of
//!   delegations ([`ucanto::validator::access`], the tracker as authority,
//!   its configured authorities as the only attesters).
//! - **At one time**: there is a second, no later than the batch's track,
//!   at which the invocation and every delegation of its chain were valid
//!   together (`nbf < t < exp`). The retrieval is dated at the latest such
//!   second: a node serves a retrieval while it is valid, so that is the
//!   latest it can have happened. A client that signs a retrieval valid
//!   for an hour on a proof that ends in 3 s is dated at the proof's end.
//! - **Bounded in time**: the retrieval itself expires (`NoExpiry`
//!   otherwise; JS and Go ucanto set an expiry by default, 30 s in JS), no
//!   later than the freshness age after the track (`ExpiresTooLate`). Only
//!   then can the tracker drop the record that it counted the retrieval and
//!   still refuse it ever after: see *Fresh*. Its own expiry, not its
//!   chain's: the expiry is part of the signed bytes, so every copy of the
//!   retrieval has the same one whatever proofs it is validated with, and
//!   the tracker files the record that it counted it under that hour
//!   ([`Judgement::expires`]).
//! - **Fresh**: dated no earlier than the freshness age before the track
//!   (`StaleRetrieval`), nor than the freshness age plus the longest a batch
//!   waits to conclude before now: a month already invoiced does not change.
//! - **Not the node's own**: no principal the authority passed through (the
//!   audiences of the chain's delegations, and the invoker) is the serving
//!   node (`SelfAuthorized`): a node does not authorize its own pay.
//! - **Billable**: a chain through a non-billable actor (the indexing
//!   service, the upload service, a replicating node) is recorded apart and
//!   billed to no one (`NonBillable`, see [`Judgement::billable`]).
//!
//! What needs the tracker's registry is left to the caller, and named in the
//! [`Judgement`]: whether a known provider provisions the space, and whether
//! a principal of the chain is a known node (replication, not billed).
//!
//! # Example: a node judges a retrieval before serving it
//! ```
//! use std::sync::Arc;
//! use etracker_capabilities::payable::{judge, Rules, When};
//! use etracker_capabilities::{Ability, Retrieve};
//! use ucanto::dag::{Ipld, IpldMap};
//! use ucanto::principal::{Ed25519Signer, Signer};
//! use ucanto::ucan::{now, Capability, Delegation};
//!
//! let (tracker, node) = (Ed25519Signer::from_seed([4; 32]), Ed25519Signer::from_seed([5; 32]));
//! let (space, agent) = (Ed25519Signer::from_seed([1; 32]), Ed25519Signer::from_seed([2; 32]));
//! let grant = Delegation::builder(&space, agent.did().clone())
//!     .capability(Capability::new(Retrieve::CAN, space.did().as_str()))
//!     .expiration(now() + 3600)
//!     .build()
//!     .unwrap();
//! let nb = IpldMap::from([
//!     ("blob".to_string(), Ipld::Map(IpldMap::from([(
//!         "digest".to_string(),
//!         Ipld::Bytes([[0x12, 0x20].as_slice(), &[7; 32]].concat()),
//!     )]))),
//!     ("range".to_string(), Ipld::List(vec![Ipld::Integer(0), Ipld::Integer(99)])),
//! ]);
//! let retrieval = Delegation::builder(&agent, node.did().clone())
//!     .capability(Capability::new(Retrieve::CAN, space.did().as_str()).with_nb(nb))
//!     .expiration(now() + 30)
//!     .proof(grant)
//!     .build()
//!     .unwrap();
//!
//! let rules = Rules::new(tracker.verifier());
//! let judged = judge(&retrieval, node.did(), &When::now(), &rules, rules.validator()).unwrap();
//! assert!(judged.billable);
//! assert_eq!(&judged.space, space.did());
//! // Still to ask the tracker's registry: does a known provider provision
//! // `judged.space`, and is any of `judged.chain` a known node?
//! assert_eq!(judged.chain, vec![agent.did().clone()]);
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use ucanto::principal::{Did, Verifier};
use ucanto::ucan::{now, Invocation};
use ucanto::validator::{access, window, ValidatorConfig};

use crate::{Ability, Retrieve};

/// Default freshness age: 7 days. A week covers a node that closes a batch
/// every 12 hours and tracks it late after a few days offline, and the
/// tracker retrying it; it is short enough that a month's figures are final
/// a week (plus the give-up age) after it ends, and that the records of
/// counted retrievals stay a few weeks' worth.
pub const DEFAULT_MAX_AGE: u64 = 7 * 86_400;

/// Most proof checks one retrieval's authorization may take: real chains
/// need a handful (space → account → agent, with an attestation).
pub const PROOF_CHECKS_PER_RETRIEVAL: usize = 64;

/// What judging needs to know besides the retrieval.
#[derive(Clone, Debug)]
pub struct Rules {
    /// The tracker: the authority retrievals are validated with.
    pub tracker: Arc<dyn Verifier>,
    /// The only principals whose `ucan/attest` count (never the node).
    pub authorities: Vec<Arc<dyn Verifier>>,
    /// Principals whose retrievals, or chains, are billed to no one.
    pub non_billable: Arc<HashSet<Did>>,
    /// The freshness age, in seconds ([`DEFAULT_MAX_AGE`]).
    pub max_age: u64,
    /// The longest a tracked batch may wait to conclude, in seconds (the
    /// tracker's give-up age).
    pub conclude_within: u64,
}

impl Rules {
    /// The rules of the tracker verified by `tracker`, with no authorities,
    /// no non-billable actors, the default freshness age and a give-up age
    /// of 48 hours.
    pub fn new(tracker: Arc<dyn Verifier>) -> Self {
        Rules {
            tracker,
            authorities: Vec::new(),
            non_billable: Arc::new(HashSet::new()),
            max_age: DEFAULT_MAX_AGE,
            conclude_within: 48 * 3600,
        }
    }

    /// The validator configuration retrievals are authorized with; a caller
    /// may add a signature cache or a presumed signature before [`judge`].
    pub fn validator(&self) -> ValidatorConfig {
        let mut config =
            ValidatorConfig::new(self.tracker.clone()).max_validations(PROOF_CHECKS_PER_RETRIEVAL);
        for authority in &self.authorities {
            config = config.attester(authority.clone());
        }
        config
    }

    /// The last second at which a retrieval counted in a batch tracked at
    /// `tracked` could still be counted by another batch (see
    /// [`claims_end`]).
    pub fn claim_ends(&self, tracked: u64) -> u64 {
        claims_end(tracked, self.max_age, self.conclude_within)
    }
}

/// The last second at which a retrieval counted in a batch tracked at
/// `tracked` could still be counted by another batch, under a freshness age
/// of `max_age` and batches concluding within `conclude_within` of their
/// track: after it, the record that it was counted may go. Valid until at
/// most `max_age` after the track (`ExpiresTooLate`), the retrieval is dated
/// no later than that; a batch tracked up to `max_age` later still finds it
/// fresh, and concludes within `conclude_within` (at a later conclusion it
/// is stale by the rule on `now`).
pub fn claims_end(tracked: u64, max_age: u64, conclude_within: u64) -> u64 {
    tracked
        .saturating_add(max_age.saturating_mul(2))
        .saturating_add(conclude_within)
}

/// When a retrieval is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct When {
    /// When its batch was tracked (for a node about to serve it: now).
    pub tracked: u64,
    /// Now.
    pub now: u64,
}

impl When {
    /// A retrieval judged now, as if tracked now (what a node asks before
    /// serving it).
    pub fn now() -> Self {
        let t = now();
        When { tracked: t, now: t }
    }
}

/// A retrieval that passed the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    /// The second it is dated at (its bytes count for that UTC day).
    pub at: u64,
    /// The last second it was valid.
    pub last: u64,
    /// The retrieval's own expiry (its `exp`): the same for every copy of
    /// it, so the record that it was counted is filed under it.
    pub expires: u64,
    /// The space billed (the capability's `with`).
    pub space: Did,
    /// False when the chain passes through a non-billable actor.
    pub billable: bool,
    /// The principals the authority passed through, in order: the
    /// audiences of the chain's delegations, then the invoker (once each).
    /// The tracker refuses to bill a chain through a known node.
    pub chain: Vec<Did>,
}

/// Why a retrieval is not paid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Not authorized by the space, or never valid all at once before the
    /// track.
    #[error("{0}")]
    Unauthorized(String),
    /// The retrieval itself does not expire.
    #[error("the retrieval sets no expiry: it could be counted again whenever tracked")]
    NoExpiry,
    /// The retrieval is valid until later than the freshness age after the track.
    #[error("the retrieval stays valid until {last}, later than {limit} (the freshness age after its batch was tracked)")]
    ExpiresTooLate {
        /// The last second it is valid.
        last: u64,
        /// The latest allowed.
        limit: u64,
    },
    /// Dated before the oldest second still counted.
    #[error("the retrieval is dated {at}, before {oldest}, the oldest second still counted")]
    Stale {
        /// Its date.
        at: u64,
        /// The oldest second counted.
        oldest: u64,
    },
    /// The chain passes through the serving node.
    #[error("the retrieval's authorization passes through the node {node} that served it")]
    SelfAuthorized {
        /// The node.
        node: Did,
    },
}

impl Refusal {
    /// The error name a receipt lists it under.
    pub fn name(&self) -> &'static str {
        match self {
            Refusal::Unauthorized(_) => "Unauthorized",
            Refusal::NoExpiry => NO_EXPIRY,
            Refusal::ExpiresTooLate { .. } => EXPIRES_TOO_LATE,
            Refusal::Stale { .. } => STALE_RETRIEVAL,
            Refusal::SelfAuthorized { .. } => SELF_AUTHORIZED,
        }
    }
}

/// Error name of a retrieval whose chain never expires.
pub const NO_EXPIRY: &str = "NoExpiry";
/// Error name of a retrieval valid until too long after its track.
pub const EXPIRES_TOO_LATE: &str = "ExpiresTooLate";
/// Error name of a retrieval dated before the freshness age.
pub const STALE_RETRIEVAL: &str = "StaleRetrieval";
/// Error name of a retrieval whose chain passes through the serving node.
pub const SELF_AUTHORIZED: &str = "SelfAuthorized";

/// Judges `retrieval`, served by `node`, per the module's rules; `config` is
/// [`Rules::validator`], perhaps with a signature cache or a presumed
/// signature added.
pub fn judge(
    retrieval: &Invocation,
    node: &Did,
    when: &When,
    rules: &Rules,
    config: ValidatorConfig,
) -> Result<Judgement, Refusal> {
    let parser = Retrieve::parser();
    // The chain first, whatever the time; then when it was valid.
    let mut config = config.timeless();
    let found = access(retrieval, parser.as_ref(), &config)
        .map_err(|e| Refusal::Unauthorized(e.message))?;
    let window = window(retrieval, &found.proofs);
    let expires = retrieval.expiration().ok_or(Refusal::NoExpiry)?;
    let limit = when.tracked.saturating_add(rules.max_age);
    if expires > limit {
        return Err(Refusal::ExpiresTooLate {
            last: expires,
            limit,
        });
    }
    // Bounded by the retrieval's own expiry, whatever the proofs say.
    let last = window.last.unwrap_or(expires).min(expires);
    let at = window.latest_by(when.tracked).ok_or_else(|| {
        Refusal::Unauthorized(
            "the retrieval and its proofs were never valid all at once before its batch was tracked"
                .into(),
        )
    })?;
    let oldest = when.tracked.saturating_sub(rules.max_age).max(
        when.now
            .saturating_sub(rules.max_age.saturating_add(rules.conclude_within)),
    );
    if at < oldest {
        return Err(Refusal::Stale { at, oldest });
    }
    // Every UCAN of a chain of did:keys is valid at `at` by construction;
    // attestations of other principals are judged again at that time.
    let all_keys = std::iter::once(retrieval)
        .chain(&found.proofs)
        .all(|ucan| ucan.issuer().is_key());
    if !all_keys {
        config.timeless = false;
        access(retrieval, parser.as_ref(), &config.at(at))
            .map_err(|e| Refusal::Unauthorized(e.message))?;
    }
    let mut chain: Vec<Did> = Vec::new();
    for principal in found
        .proofs
        .iter()
        .map(|proof| proof.audience())
        .chain(std::iter::once(retrieval.issuer()))
    {
        if !chain.contains(principal) {
            chain.push(principal.clone());
        }
    }
    if chain.contains(node) {
        return Err(Refusal::SelfAuthorized { node: node.clone() });
    }
    let space = Did::parse(&found.capability.with)
        .map_err(|e| Refusal::Unauthorized(format!("with: {e}")))?;
    let billable = !chain.iter().any(|p| rules.non_billable.contains(p));
    Ok(Judgement {
        at,
        last,
        expires,
        space,
        billable,
        chain,
    })
}
