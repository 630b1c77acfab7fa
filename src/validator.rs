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
//! [`MAX_VALIDATIONS`] proof checks or [`MAX_CAPABILITY_CHECKS`]
//! capabilities examined; a UCAN citing more than [`MAX_PROOFS`]
//! proofs is refused (`TooManyProofs`); messages are cut to
//! [`crate::bounded::MAX_MESSAGE_BYTES`].

// Failures carry CIDs and DIDs (and `Unauthorized` every reason) by value:
// they are built once per rejected check, off the hot path, and boxing them
// would only make the public API clumsier.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use cid::Cid;

use crate::dag::IpldMap;
use crate::principal::{Did, Verifier};
use crate::ucan::{Capability, Delegation};

#[cfg(test)]
mod bounds_tests;
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

/// Most capabilities one [`access`] call examines by default: real chains
/// list a few dozen.
pub const MAX_CAPABILITY_CHECKS: usize = 10_000;

/// Most proofs one UCAN may cite by default: real chains cite a handful, and
/// every proof cited costs a check.
pub const MAX_PROOFS: usize = 64;

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
    /// Signature outcomes already known (successes and failures), shared
    /// across calls (e.g. the same proof in every receipt of a batch), with
    /// its budget of fresh verifications; `None` verifies each call afresh.
    pub verified: Option<Arc<SignatureCache>>,
    /// Most proof checks one `access` call runs ([`MAX_VALIDATIONS`] by default).
    pub max_validations: usize,
    /// Most capabilities of valid UCANs one `access` call examines (parses
    /// and compares with the claim), [`MAX_CAPABILITY_CHECKS`] by default:
    /// a proof may list thousands, and be cited again and again.
    pub max_capability_checks: usize,
    /// Most proofs one UCAN (the invocation, or any delegation in its
    /// chain) may cite, repeated links included ([`MAX_PROOFS`] by default);
    /// one citing more is refused (`TooManyProofs`) before any is resolved.
    pub max_proofs: usize,
    /// A UCAN whose signature the caller verified already (in a batch, say),
    /// with the verifier that did: taken as signed, not checked again.
    pub presumed: Option<(Delegation, Arc<dyn Verifier>)>,
    /// Judge no time bounds: the caller finds the chain first, then judges
    /// *when* it was valid (see [`window`]), and must not take the result
    /// as an authorization before it has.
    pub timeless: bool,
}

/// Signature checks remembered, successes and failures alike, by UCAN CID,
/// the verifier (its DID and its key) and the exact bytes: the same proof
/// in every receipt of a batch, or a bad one in every invocation of every
/// request, is verified once. A remembered failure is reported as a fresh
/// one is (`InvalidSignature`).
///
/// It can also hold a budget of signature verifications (see
/// [`SignatureCache::with_budget`]): what a batch of invocations from one
/// party may cost, whatever their proofs look like. A
/// [`SignatureCache::budgeted`] view shares a cache's outcomes under a
/// budget of its own (a server's, for one request).
#[derive(Debug, Default)]
pub struct SignatureCache {
    outcomes: Arc<Outcomes>,
    /// Verifications left; `None` is unlimited.
    budget: Option<std::sync::atomic::AtomicU64>,
}

/// What [`SignatureCache`]s sharing them remember.
#[derive(Debug, Default)]
struct Outcomes {
    verified: std::sync::Mutex<crate::memo::FastMap<Cid, Vec<Verified>>>,
    /// Failures, by digest of the bytes: they are the senders' to choose,
    /// so the bytes themselves (and the buffers they are cut from) are not kept.
    failed: std::sync::Mutex<crate::memo::FastMap<Cid, Vec<Failed>>>,
    /// Most entries kept on each side, when not [`SignatureCache::CAPACITY`].
    capacity: Option<usize>,
}

impl SignatureCache {
    /// Most entries kept by default, on each side (successes, failures);
    /// a side starts over past it.
    pub const CAPACITY: usize = 100_000;

    /// A cache keeping at most `capacity` successes and as many failures: a
    /// server's cache of the proofs its callers repeat, small since most
    /// entries are one-off invocations. Failures fill their own side, so
    /// they never push successes out.
    pub fn with_capacity(capacity: usize) -> Self {
        SignatureCache {
            outcomes: Arc::new(Outcomes {
                capacity: Some(capacity),
                ..Default::default()
            }),
            budget: None,
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

    /// A view of this cache's outcomes (what either learns, both know)
    /// allowing `budget` fresh verifications of its own, whatever this
    /// cache's budget: e.g. a server's cache, for one request.
    pub fn budgeted(&self, budget: u64) -> Self {
        SignatureCache {
            outcomes: self.outcomes.clone(),
            budget: Some(std::sync::atomic::AtomicU64::new(budget)),
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
        let verified = lock(&self.outcomes.verified);
        let Some(by) = verified
            .get(cid)
            .filter(|by| by.iter().any(|v| v.by.is(verifier)))
        else {
            return false;
        };
        let digest = digest(bytes);
        by.iter().any(|v| v.by.is(verifier) && v.digest == digest)
    }

    /// What checking the signature of `bytes`, named `cid`, with `verifier`
    /// gave before: `Some(true)` verified, `Some(false)` failed, `None` not
    /// remembered.
    pub fn outcome(
        &self,
        cid: &Cid,
        verifier: &dyn Verifier,
        bytes: &bytes::Bytes,
    ) -> Option<bool> {
        let mut known = None;
        let mut digest_of = || *known.get_or_insert_with(|| digest(bytes));
        {
            let verified = lock(&self.outcomes.verified);
            if let Some(by) = verified.get(cid) {
                if by.iter().any(|v| v.by.is(verifier)) {
                    let digest = digest_of();
                    if by.iter().any(|v| v.by.is(verifier) && v.digest == digest) {
                        return Some(true);
                    }
                }
            }
        }
        let failed = lock(&self.outcomes.failed);
        let by = failed.get(cid)?;
        if !by.iter().any(|f| f.by.is(verifier)) {
            return None;
        }
        let digest = digest_of();
        by.iter()
            .any(|f| f.by.is(verifier) && f.digest == digest)
            .then_some(false)
    }

    /// Records that `bytes`, named `cid`, verified with `verifier`.
    pub fn insert(&self, cid: Cid, verifier: &dyn Verifier, bytes: bytes::Bytes) {
        let mut verified = lock(&self.outcomes.verified);
        if verified.len() >= self.capacity() {
            verified.clear();
        }
        let by = verified.entry(cid).or_default();
        by.retain(|v| !v.by.is(verifier));
        by.push(Verified {
            by: By::of(verifier),
            digest: digest(&bytes),
        });
    }

    /// Records the outcome of checking the signature of `bytes`, named
    /// `cid`, with `verifier`: [`SignatureCache::insert`] when `valid`, else
    /// a failure, remembered by the bytes' digest.
    pub fn record(&self, cid: Cid, verifier: &dyn Verifier, bytes: &bytes::Bytes, valid: bool) {
        if valid {
            return self.insert(cid, verifier, bytes.clone());
        }
        let digest = digest(bytes);
        let mut failed = lock(&self.outcomes.failed);
        if failed.len() >= self.capacity() {
            failed.clear();
        }
        let by = failed.entry(cid).or_default();
        // One per verifier and bytes; a CID met with many byte strings keeps few.
        by.retain(|f| !(f.by.is(verifier) && f.digest == digest));
        if by.len() >= 4 {
            by.remove(0);
        }
        by.push(Failed {
            by: By::of(verifier),
            digest,
        });
    }

    fn capacity(&self) -> usize {
        self.outcomes.capacity.unwrap_or(Self::CAPACITY)
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The SHA-256 of `bytes`.
fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Whether `a` and `b` hold the same bytes: at once when they share their
/// buffer (a block presumed signed and then met again), else compared.
fn same_bytes(a: &bytes::Bytes, b: &bytes::Bytes) -> bool {
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b
}

/// A verifier: its DID and its key.
#[derive(Debug)]
struct By {
    did: Did,
    key_did: Did,
}

impl By {
    fn of(verifier: &dyn Verifier) -> Self {
        By {
            did: verifier.did().clone(),
            key_did: verifier.key_did().clone(),
        }
    }

    /// Whether `verifier` is this one (the same DID with the same key).
    fn is(&self, verifier: &dyn Verifier) -> bool {
        self.did == *verifier.did() && self.key_did == *verifier.key_did()
    }
}

/// One verifier's success with one UCAN's bytes, known by their digest:
/// keeping the bytes would keep the whole buffer they are a slice of (a
/// request body, a receipt archive) for as long as the entry lives.
#[derive(Debug)]
struct Verified {
    by: By,
    digest: [u8; 32],
}

/// One verifier's failure with one UCAN's bytes, known by their digest.
#[derive(Debug)]
struct Failed {
    by: By,
    digest: [u8; 32],
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
            max_capability_checks: MAX_CAPABILITY_CHECKS,
            max_proofs: MAX_PROOFS,
            presumed: None,
            timeless: false,
        }
    }

    /// Judges no time bounds (see
    /// [`ValidatorConfig::timeless`](ValidatorConfig#structfield.timeless)).
    pub fn timeless(mut self) -> Self {
        self.timeless = true;
        self
    }

    /// Runs at most `limit` proof checks per `access` call: a service that
    /// validates many invocations from one party bounds each one's cost.
    pub fn max_validations(mut self, limit: usize) -> Self {
        self.max_validations = limit;
        self
    }

    /// Examines at most `limit` capabilities per `access` call (see
    /// [`ValidatorConfig::max_capability_checks`](ValidatorConfig#structfield.max_capability_checks)).
    pub fn max_capability_checks(mut self, limit: usize) -> Self {
        self.max_capability_checks = limit;
        self
    }

    /// Refuses a UCAN citing more than `limit` proofs (see
    /// [`ValidatorConfig::max_proofs`](ValidatorConfig#structfield.max_proofs)).
    pub fn max_proofs(mut self, limit: usize) -> Self {
        self.max_proofs = limit;
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
    /// The capability as the parser read it
    /// ([`CapabilityParser::parse_typed`]), when it reads a typed value: a
    /// typed handler takes it as it is instead of parsing again.
    pub typed: Typed,
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
        typed: matched.typed,
    })
}

/// The seconds at which every UCAN of a chain is valid together: after the
/// latest `nbf`, before the earliest `exp` (UCAN time bounds are whole
/// seconds: valid at `t` when `nbf < t < exp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// The first second all are valid, if any has a `nbf`.
    pub first: Option<u64>,
    /// The last second all are valid, if any has an `exp`.
    pub last: Option<u64>,
}

impl Window {
    /// The latest second, no later than `by`, at which all are valid.
    pub fn latest_by(&self, by: u64) -> Option<u64> {
        let at = self.last.map_or(by, |last| last.min(by));
        self.first.is_none_or(|first| first <= at).then_some(at)
    }
}

/// The [`Window`] of `invocation` and the chain that authorized it.
pub fn window<'a>(
    invocation: &'a Delegation,
    chain: impl IntoIterator<Item = &'a Delegation>,
) -> Window {
    let mut window = Window::default();
    for ucan in std::iter::once(invocation).chain(chain) {
        if let Some(nbf) = ucan.not_before() {
            let first = nbf.saturating_add(1);
            window.first = Some(window.first.map_or(first, |f| f.max(first)));
        }
        if let Some(exp) = ucan.expiration() {
            // `exp` 0 is never valid: no last second.
            let last = exp.checked_sub(1);
            window.last = Some(match (window.last, last) {
                (Some(l), Some(e)) => l.min(e),
                (_, None) => 0,
                (None, Some(e)) => e,
            });
            if last.is_none() {
                window.first = Some(u64::MAX);
            }
        }
    }
    window
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
