//! Validator: decides whether an invocation is authorized, exactly as
//! @ucanto/validator's `access()` does — same search through the proof
//! chain, same outcome, same error names and message texts.
//!
//! # How a claim is checked
//! 1. The invocation is validated like any proof: time bounds (`exp <= now`
//!    is expired, `now <= nbf` is too early) and its issuer's authorization:
//!    a did:key verifies its own signature, the authority's DID (a did:web
//!    included) verifies with the authority's key, any other DID needs a
//!    `ucan/attest` session from the authority (or an attester) among the
//!    sibling proofs, or an attester key of that DID.
//! 2. Its capabilities with the parser's ability are parsed; a capability on
//!    the issuer's own DID is authorized outright ("self-issued").
//! 3. Otherwise each proof (embedded, or linked and held locally) must be
//!    addressed to the issuer, valid as in 1., and grant a capability that —
//!    resolved against the claim (`*`/`ns/*` abilities, `ucan:*` resources,
//!    missing `nb` fields inherited) — parses and
//!    [`derives`](CapabilityParser::derives) the claim; recursively until a
//!    self-issued link.
//!
//! Failures are collected along every path tried and rendered like JS (see
//! [`Unauthorized`]); [`Unauthorized::to_ipld`] is the receipt's `out.error`.
//!
//! Known differences from JS: the `InvalidSignature` message names the
//! verifier's DID where JS names its did:key (they differ when a did:web
//! authority's or attester's signature fails); a parsed `nb` with several
//! fields prints in dag-cbor key order where JS uses the schema's order;
//! default `derives` compares object-valued caveats by value (JS compares
//! references, so pinned links never match there); a did:key of a type we
//! cannot verify is a `DIDKeyResolutionError` (JS throws); dates print in
//! UTC (JS uses the server's zone); exploration stops after
//! [`MAX_VALIDATIONS`] proof checks.

// Failures carry CIDs and DIDs (and `Unauthorized` every reason) by value:
// they are built once per rejected check, off the hot path, and boxing them
// would only make the public API clumsier.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use cid::Cid;

use crate::dag::IpldMap;
use crate::principal::{Did, Verifier};
use crate::ucan::{Capability, Delegation};

mod engine;
mod error;
mod js;
pub mod schema;
#[cfg(test)]
mod tests;

pub use error::{Failure, InvalidClaim, Unauthorized, Violation};

/// Most proof validations one [`access`] call runs. Proof DAGs can fan out
/// exponentially (a UCAN citing two proofs that each cite the same two…) and
/// JS explores every path; real chains need a handful of checks.
pub const MAX_VALIDATIONS: usize = 10_000;

/// Parsing and derivation rules of one capability ("a capability is a value").
///
/// The validator matches an invocation's capability against proofs: a
/// delegated capability is first resolved against the claimed one (`can`
/// patterns `*`/`ns/*` and resource `ucan:*` take the claimed values, missing
/// `nb` fields are inherited from the claim), then parsed, then
/// [`CapabilityParser::derives`] decides whether it covers the claim.
///
/// To read like JS in error messages, check `with` before `nb`, treat a
/// missing `nb` like an empty one, and word errors as @ucanto's `Schema`
/// does ([`schema`] has the usual ones).
pub trait CapabilityParser: Send + Sync {
    /// The ability, e.g. `space/egress/track`.
    fn can(&self) -> &str;

    /// Checks `with` and `nb`; the error explains which field is wrong.
    fn parse(&self, capability: &Capability) -> Result<Capability, Violation>;

    /// Whether `delegated` covers `claimed`; the error explains why not.
    fn derives(&self, claimed: &Capability, delegated: &Capability) -> Result<(), Violation> {
        default_derives(claimed, delegated)
    }

    /// [`CapabilityParser::parse`], also giving the typed value read, which
    /// [`CapabilityParser::derives_typed`] then uses instead of reading the
    /// capability again. None by default.
    fn parse_typed(&self, capability: &Capability) -> Result<(Capability, Typed), Violation> {
        self.parse(capability).map(|parsed| (parsed, None))
    }

    /// [`CapabilityParser::derives`] of two capabilities this parser gave,
    /// each with the typed value [`CapabilityParser::parse_typed`] gave along.
    fn derives_typed(
        &self,
        claimed: (&Capability, &Typed),
        delegated: (&Capability, &Typed),
    ) -> Result<(), Violation> {
        self.derives(claimed.0, delegated.0)
    }
}

/// What a [`CapabilityParser`] read a capability into, kept by the validator
/// so that the capability is read once.
pub type Typed = Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>;

/// The default rule: same resource (or a `prefix*` resource), and every `nb`
/// field the delegation pins is equal in the claim. Messages as in JS.
pub fn default_derives(claimed: &Capability, delegated: &Capability) -> Result<(), Violation> {
    if let Some(prefix) = delegated.with.strip_suffix('*') {
        if !claimed.with.starts_with(prefix) {
            // The trailing space is in the JS message too.
            return Err(Violation::new(format!(
                "Resource {} does not match delegated {} ",
                claimed.with, delegated.with
            )));
        }
    } else if delegated.with != claimed.with {
        return Err(Violation::new(format!(
            "Resource {} is not contained by {}",
            claimed.with, delegated.with
        )));
    }
    let empty = IpldMap::new();
    let claimed_nb = claimed.nb.as_ref().unwrap_or(&empty);
    for (name, value) in delegated.nb.as_ref().unwrap_or(&empty) {
        if !js::loosely_equal(claimed_nb.get(name), Some(value)) {
            // JS interpolates the values with String(), not JSON.
            return Err(Violation::new(format!(
                "{name}: {} violates {}",
                js::string(claimed_nb.get(name)),
                js::string(Some(value))
            )));
        }
    }
    Ok(())
}

/// What the validator needs to know about the service.
#[derive(Clone, Debug)]
pub struct ValidatorConfig {
    /// The service's verifier; UCANs issued by its DID (did:web included) verify with it.
    pub authority: Arc<dyn Verifier>,
    /// Other authorities whose `ucan/attest` is accepted (with their keys, since
    /// they are usually did:web). The authority's own attestations always count.
    pub attesters: Vec<Arc<dyn Verifier>>,
    /// Delegations the service already holds, used to resolve proofs that are
    /// linked but not embedded.
    pub local_proofs: Vec<Delegation>,
    /// Evaluate time bounds at this Unix time instead of now.
    pub now: Option<u64>,
    /// Signatures already verified, shared across calls (e.g. the same proof in
    /// every receipt of a batch); `None` verifies each call afresh.
    pub verified: Option<Arc<SignatureCache>>,
    /// Most proof checks one `access` call runs ([`MAX_VALIDATIONS`] by default).
    pub max_validations: usize,
    /// A UCAN whose signature the caller verified already (in a batch, say),
    /// with the verifier that did: taken as signed, not checked again.
    pub presumed: Option<(Delegation, Arc<dyn Verifier>)>,
}

/// Verified signatures, by UCAN CID, the verifier (its DID and its key) and
/// the exact bytes. Only successes are kept: a failure is re-checked (and
/// reported) every time.
///
/// It can also hold a budget of signature verifications (see
/// [`SignatureCache::with_budget`]): what a batch of invocations from one
/// party may cost, whatever their proofs look like.
#[derive(Debug, Default)]
pub struct SignatureCache {
    entries: std::sync::Mutex<crate::memo::FastMap<Cid, Vec<Verified>>>,
    /// Verifications left; `None` is unlimited.
    budget: Option<std::sync::atomic::AtomicU64>,
    /// Most entries kept, when not [`SignatureCache::CAPACITY`].
    capacity: Option<usize>,
}

impl SignatureCache {
    /// Most entries kept by default; the cache starts over past it.
    pub const CAPACITY: usize = 100_000;

    /// A cache keeping at most `capacity` entries: a server's cache of the
    /// proofs its callers repeat, small since most entries are one-off
    /// invocations.
    pub fn with_capacity(capacity: usize) -> Self {
        SignatureCache {
            capacity: Some(capacity),
            ..Default::default()
        }
    }

    /// A cache allowing `initial` signature verifications that are not cached
    /// already; [`SignatureCache::credit`] adds more.
    pub fn with_budget(initial: u64) -> Self {
        SignatureCache {
            budget: Some(std::sync::atomic::AtomicU64::new(initial)),
            ..Default::default()
        }
    }

    /// Allows `n` more verifications.
    pub fn credit(&self, n: u64) {
        if let Some(budget) = &self.budget {
            budget.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Takes one verification from the budget; false when none is left.
    pub fn spend(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.budget.as_ref().is_none_or(|budget| {
            budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(1)
                })
                .is_ok()
        })
    }

    /// Whether `bytes`, named `cid`, was verified by `verifier`.
    pub fn contains(&self, cid: &Cid, verifier: &dyn Verifier, bytes: &bytes::Bytes) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(cid).is_some_and(|verified| {
            verified
                .iter()
                .any(|v| v.is_by(verifier) && same_bytes(&v.bytes, bytes))
        })
    }

    /// Records that `bytes`, named `cid`, verified with `verifier`.
    pub fn insert(&self, cid: Cid, verifier: &dyn Verifier, bytes: bytes::Bytes) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity.unwrap_or(Self::CAPACITY) {
            entries.clear();
        }
        let by = entries.entry(cid).or_default();
        by.retain(|v| !v.is_by(verifier));
        by.push(Verified {
            did: verifier.did().clone(),
            key_did: verifier.key_did().clone(),
            bytes,
        });
    }
}

/// Whether `a` and `b` hold the same bytes: at once when they share their
/// buffer (a block presumed signed and then met again), else compared.
fn same_bytes(a: &bytes::Bytes, b: &bytes::Bytes) -> bool {
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b
}

/// One verifier's success with one UCAN's bytes.
#[derive(Debug)]
struct Verified {
    did: Did,
    key_did: Did,
    bytes: bytes::Bytes,
}

impl Verified {
    /// Whether `verifier` is the one (the same DID with the same key).
    fn is_by(&self, verifier: &dyn Verifier) -> bool {
        self.did == *verifier.did() && self.key_did == *verifier.key_did()
    }
}

impl ValidatorConfig {
    /// A configuration for the service `authority`: no attesters, no local
    /// proofs, the system clock.
    pub fn new(authority: Arc<dyn Verifier>) -> Self {
        ValidatorConfig {
            authority,
            attesters: Vec::new(),
            local_proofs: Vec::new(),
            now: None,
            verified: None,
            max_validations: MAX_VALIDATIONS,
            presumed: None,
        }
    }

    /// Runs at most `limit` proof checks per `access` call: a service that
    /// validates many invocations from one party bounds each one's cost.
    pub fn max_validations(mut self, limit: usize) -> Self {
        self.max_validations = limit;
        self
    }

    /// Shares verified signatures with other calls through `cache`.
    pub fn with_cache(mut self, cache: Arc<SignatureCache>) -> Self {
        self.verified = Some(cache);
        self
    }

    /// Takes `delegation` as signed by `verifier`, which the caller checked
    /// (in an ed25519 batch, say): only that UCAN, those very bytes, and a
    /// verifier with the same DID and key.
    pub fn presume_signed(mut self, delegation: Delegation, verifier: Arc<dyn Verifier>) -> Self {
        self.presumed = Some((delegation, verifier));
        self
    }

    /// Whether the signature of `delegation` by `verifier` is presumed valid.
    pub(crate) fn is_presumed(&self, delegation: &Delegation, verifier: &dyn Verifier) -> bool {
        self.presumed.as_ref().is_some_and(|(presumed, by)| {
            presumed.cid() == delegation.cid()
                && same_bytes(&presumed.block().bytes, &delegation.block().bytes)
                && by.did() == verifier.did()
                && by.key_did() == verifier.key_did()
        })
    }

    /// Judges time bounds (of the invocation, its proofs and attestations) at
    /// Unix time `now`, e.g. when the invocation was made.
    pub fn at(mut self, now: u64) -> Self {
        self.now = Some(now);
        self
    }

    /// Also accepts `ucan/attest` from `attester`, whose signatures verify with it.
    pub fn attester(mut self, attester: Arc<dyn Verifier>) -> Self {
        self.attesters.push(attester);
        self
    }

    /// Resolves linked proofs to `proof` too.
    pub fn local_proof(mut self, proof: Delegation) -> Self {
        self.local_proofs.push(proof);
        self
    }

    /// The time bounds are judged at: [`ValidatorConfig::now`] or the system clock.
    pub fn time(&self) -> u64 {
        self.now.unwrap_or_else(crate::ucan::now)
    }
}

/// A successful authorization.
#[derive(Clone, Debug)]
pub struct Authorization {
    /// The invoked capability, as parsed.
    pub capability: Capability,
    /// Who invoked it.
    pub issuer: Did,
    /// The invocation.
    pub invocation: Cid,
    /// Delegations from the invocation's proof up to the resource owner
    /// (empty for a self-issued capability).
    pub proofs: Vec<Delegation>,
}

/// Checks that `invocation` is authorized to invoke the capability `parser`
/// describes (JS `access`). The invocation's audience is not checked here.
pub fn access(
    invocation: &Delegation,
    parser: &dyn CapabilityParser,
    config: &ValidatorConfig,
) -> Result<Authorization, Unauthorized> {
    let ctx = engine::Ctx::new(config);
    let (matched, proofs) = ctx.claim(parser, std::slice::from_ref(invocation))?;
    Ok(Authorization {
        issuer: matched.delegation().issuer().clone(),
        capability: std::sync::Arc::unwrap_or_clone(matched.value),
        invocation: invocation.cid(),
        proofs,
    })
}

/// The time-bound check of JS `validate`: `Expired` when `exp <= now`,
/// `NotValidBefore` when `now <= nbf`.
pub fn validate_time(delegation: &Delegation, now: u64) -> Result<(), Failure> {
    if let Some(expiration) = delegation.expiration().filter(|exp| *exp <= now) {
        return Err(Failure::Expired {
            delegation: delegation.cid(),
            expiration,
        });
    }
    if let Some(not_before) = delegation.not_before().filter(|nbf| now <= *nbf) {
        return Err(Failure::NotValidBefore {
            delegation: delegation.cid(),
            not_before,
        });
    }
    Ok(())
}

/// JS `validate` on one UCAN: time bounds at [`ValidatorConfig::time`], then
/// its issuer's signature or `ucan/attest` session (looked for in `siblings`,
/// the other proofs of the UCAN that cites it).
pub fn validate(
    delegation: &Delegation,
    siblings: &[Delegation],
    config: &ValidatorConfig,
) -> Result<(), Failure> {
    engine::Ctx::new(config).validate(delegation, siblings)
}
