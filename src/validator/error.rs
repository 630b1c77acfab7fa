//! Why a capability is not authorized, with the names and messages of
//! @ucanto/validator's error classes (messages nest through `li`).
//!
//! Messages are rendered within a byte budget: byte-identical to JS while
//! they fit in [`MAX_MESSAGE_BYTES`], and otherwise cut
//! ([`crate::bounded::cut`]). Rendering stops a few KiB past that point: no
//! later line, and no nested message that would not be kept, is rendered.
//! (So the cut marker of a longer message counts the bytes rendered past
//! the cut, not the whole explanation, which is never built.)

use std::fmt;

use cid::Cid;

use super::js::{self, li};
use crate::bounded::MAX_MESSAGE_BYTES;

/// How far a message is rendered before it is cut to [`MAX_MESSAGE_BYTES`]:
/// a message up to this long is cut exactly as the whole message would be
/// (the marker counts every byte cut).
const RENDERED: usize = 4 * MAX_MESSAGE_BYTES;
use crate::dag::{Ipld, IpldMap};
use crate::principal::Did;
use crate::ucan::Capability;

/// Why a capability does not parse, or does not cover the one claimed: what
/// [`CapabilityParser`](super::CapabilityParser)s return. The text reads as
/// @ucanto's, since it ends up in `MalformedCapability` and
/// `EscalatedCapability` messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Violation(String);

impl Violation {
    /// A violation explained by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Violation(message.into())
    }

    /// The explanation.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl From<String> for Violation {
    fn from(message: String) -> Self {
        Violation(message)
    }
}

impl From<&str> for Violation {
    fn from(message: &str) -> Self {
        Violation(message.to_string())
    }
}

impl PartialEq<&str> for Violation {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// One reason a proof or capability was rejected.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Failure {
    /// `Expired`: the UCAN's `exp` is not after `now`.
    Expired {
        /// The UCAN.
        delegation: Cid,
        /// Its `exp`.
        expiration: u64,
    },
    /// `NotValidBefore`: `now` is not after the UCAN's `nbf`.
    NotValidBefore {
        /// The UCAN.
        delegation: Cid,
        /// Its `nbf`.
        not_before: u64,
    },
    /// `InvalidSignature`: the signature does not verify with `key`.
    InvalidSignature {
        /// The UCAN.
        delegation: Cid,
        /// Its issuer.
        issuer: Did,
        /// The key (or, for keys we cannot name, the DID) it was checked against.
        key: Did,
    },
    /// `UnavailableProof`: a linked proof is neither embedded nor held locally.
    UnavailableProof {
        /// The missing proof.
        link: Cid,
    },
    /// `DIDKeyResolutionError`: no key to verify a non-`did:key` issuer with.
    DidKeyResolution {
        /// The issuer.
        did: Did,
    },
    /// `InvalidAudience` (class `PrincipalAlignmentError`): a proof is not
    /// addressed to the issuer of the UCAN that cites it.
    PrincipalAlignment {
        /// The citing UCAN's issuer, who should have been the audience.
        expected: Did,
        /// The proof.
        delegation: Cid,
        /// The proof's actual audience.
        audience: Did,
    },
    /// `SessionEscalation`: a `ucan/attest` for the UCAN was found but does not hold.
    SessionEscalation {
        /// The UCAN whose issuer needed the attestation.
        delegation: Cid,
        /// Its issuer.
        issuer: Did,
        /// Why the attestation claim failed.
        cause: Box<Unauthorized>,
    },
    /// `MalformedCapability`: the capability does not parse.
    MalformedCapability {
        /// The capability as found in the UCAN.
        capability: Capability,
        /// The parser's explanation.
        cause: String,
    },
    /// `EscalatedCapability`: the delegated capability does not cover the claim.
    EscalatedCapability {
        /// The claimed capability.
        claimed: Capability,
        /// The delegated capability, resolved against the claim.
        delegated: Capability,
        /// The `derives` explanation.
        cause: String,
    },
    /// `InvalidClaim` (class `DelegationError`): a capability could not be derived.
    Delegation {
        /// What was being derived, as JS prints it.
        context: String,
        /// Why (`MalformedCapability` or `EscalatedCapability`).
        causes: Vec<Failure>,
    },
    /// `ProofError`: a proof could not be used.
    Proof {
        /// The proof.
        proof: Cid,
        /// Why.
        cause: Box<Failure>,
    },
    /// `InvalidClaim`: no proof chain grants a delegated capability.
    InvalidClaim(Box<InvalidClaim>),
    /// `ValidationLimitExceeded` (no JS equivalent): the proof graph needed
    /// more checks than we are willing to run for one invocation.
    LimitExceeded {
        /// The limit.
        limit: usize,
    },
    /// `SignatureBudgetExceeded` (no JS equivalent): the shared budget of
    /// signature verifications (e.g. of one batch or one request) is spent.
    BudgetExceeded,
    /// `TooManyProofs` (no JS equivalent): the UCAN cites more proofs than
    /// [`ValidatorConfig::max_proofs`](super::ValidatorConfig::max_proofs);
    /// refused before any of them is resolved or verified.
    TooManyProofs {
        /// The UCAN.
        delegation: Cid,
        /// How many proofs it cites (repeated links included).
        proofs: usize,
        /// The most allowed.
        max: usize,
    },
}

impl Failure {
    /// The JS error name.
    pub fn name(&self) -> &'static str {
        match self {
            Failure::Expired { .. } => "Expired",
            Failure::NotValidBefore { .. } => "NotValidBefore",
            Failure::InvalidSignature { .. } => "InvalidSignature",
            Failure::UnavailableProof { .. } => "UnavailableProof",
            Failure::DidKeyResolution { .. } => "DIDKeyResolutionError",
            Failure::PrincipalAlignment { .. } => "InvalidAudience",
            Failure::SessionEscalation { .. } => "SessionEscalation",
            Failure::MalformedCapability { .. } => "MalformedCapability",
            Failure::EscalatedCapability { .. } => "EscalatedCapability",
            Failure::Delegation { .. } | Failure::InvalidClaim(_) => "InvalidClaim",
            Failure::Proof { .. } => "ProofError",
            Failure::LimitExceeded { .. } => "ValidationLimitExceeded",
            Failure::BudgetExceeded => "SignatureBudgetExceeded",
            Failure::TooManyProofs { .. } => "TooManyProofs",
        }
    }

    /// The JS error message, cut to [`MAX_MESSAGE_BYTES`].
    pub fn message(&self) -> String {
        crate::bounded::message(self.render(RENDERED))
    }

    /// The JS error message when it is at most `limit` bytes long; otherwise
    /// a prefix of it longer than `limit` (rendering stops once past it).
    pub(crate) fn render(&self, limit: usize) -> String {
        match self {
            Failure::Expired {
                delegation,
                expiration,
            } => {
                format!(
                    "Proof {delegation} has expired on {}",
                    js::date(*expiration)
                )
            }
            Failure::NotValidBefore {
                delegation,
                not_before,
            } => {
                format!(
                    "Proof {delegation} is not valid before {}",
                    js::date(*not_before)
                )
            }
            Failure::InvalidSignature {
                delegation,
                issuer,
                key,
            } => {
                if issuer.as_str().starts_with("did:key") {
                    format!("Proof {delegation} does not has a valid signature from {key}")
                } else {
                    format!(
                        "Proof {delegation} issued by {issuer} does not has a valid signature from {key}\n  \
                         ℹ️ Probably issuer signed with a different key, which got rotated, invalidating delegations that were issued with prior keys"
                    )
                }
            }
            Failure::UnavailableProof { link } => {
                format!("Linked proof '{link}' is not included and could not be resolved")
            }
            Failure::DidKeyResolution { did } => format!("Unable to resolve '{did}' key"),
            Failure::PrincipalAlignment {
                expected, audience, ..
            } => {
                format!("Delegation audience is '{audience}' instead of '{expected}'")
            }
            Failure::SessionEscalation {
                delegation,
                issuer,
                cause,
            } => nest(
                format!("Delegation {delegation} issued by {issuer} has an invalid session"),
                limit,
                |left| cause.render(left),
            ),
            Failure::MalformedCapability { capability, cause } => format!(
                "Encountered malformed '{}' capability: {}\n{}",
                capability.can,
                js::raw_capability(capability),
                li(cause)
            ),
            Failure::EscalatedCapability { cause, .. } => format!("Constraint violation: {cause}"),
            Failure::Delegation { context, causes } => {
                let mut out = format!("Can not derive {context} from delegated capabilities:");
                for cause in causes {
                    if !push_li(&mut out, limit, |left| cause.render(left)) {
                        break;
                    }
                }
                out
            }
            Failure::Proof { proof, cause } => nest(
                format!("Capability can not be derived from prf:{proof} because:"),
                limit,
                |left| cause.render(left),
            ),
            Failure::InvalidClaim(claim) => claim.render(limit),
            Failure::LimitExceeded { limit } => {
                format!("Proof validation limit of {limit} checks exceeded")
            }
            Failure::BudgetExceeded => "Signature verification budget exhausted".into(),
            Failure::TooManyProofs {
                delegation,
                proofs,
                max,
            } => format!(
                "Delegation {delegation} cites {proofs} proofs, more than the {max} allowed"
            ),
        }
    }

    /// The error object JS puts in a receipt (`toJSON()`), with `stack` as
    /// JS prints it without frames.
    pub fn to_ipld(&self) -> Ipld {
        let mut map = error_map(self.name(), &self.message());
        match self {
            Failure::Expired { expiration, .. } => {
                map.insert("expiredAt".into(), Ipld::Integer((*expiration).into()));
            }
            Failure::NotValidBefore { not_before, .. } => {
                map.insert("validAt".into(), Ipld::Integer((*not_before).into()));
            }
            Failure::PrincipalAlignment {
                expected, audience, ..
            } => {
                map.insert("audience".into(), Ipld::String(expected.to_string()));
                let mut delegation = IpldMap::new();
                delegation.insert("audience".into(), Ipld::String(audience.to_string()));
                map.insert("delegation".into(), Ipld::Map(delegation));
            }
            _ => {}
        }
        Ipld::Map(map)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for Failure {}

fn error_map(name: &str, message: &str) -> IpldMap {
    let mut map = IpldMap::new();
    map.insert("name".into(), Ipld::String(name.into()));
    map.insert("message".into(), Ipld::String(message.into()));
    map.insert("stack".into(), Ipld::String(format!("{name}: {message}")));
    map
}

/// `head`, then `li` of what `render` gives within the bytes left of
/// `limit` (not rendered at all when `head` is past it already).
fn nest(mut head: String, limit: usize, render: impl FnOnce(usize) -> String) -> String {
    push_li(&mut head, limit, render);
    head
}

/// Appends a line `li(render(left))`, `left` being what remains of `limit`,
/// unless `out` is past `limit` already. Whether `out` is still within it.
fn push_li(out: &mut String, limit: usize, render: impl FnOnce(usize) -> String) -> bool {
    if out.len() > limit {
        return false;
    }
    let item = render(limit - out.len());
    out.push('\n');
    out.push_str(&li(&item));
    out.len() <= limit
}

/// Appends the bullets shared by `Unauthorized` and `InvalidClaim` to
/// `out`: failed proofs, delegation errors, invalid proofs (or `fallback`),
/// then unknown capabilities; stops once `out` is past `limit`.
fn reasons(
    out: &mut String,
    limit: usize,
    failures: [&[Failure]; 3],
    unknown: &[Capability],
    fallback: &str,
) {
    let mut any = false;
    for failure in failures.into_iter().flatten() {
        any = true;
        if !push_li(out, limit, |left| failure.render(left)) {
            return;
        }
    }
    if !any && !push_li(out, limit, |_| fallback.to_string()) {
        return;
    }
    if !unknown.is_empty() {
        push_li(out, limit, |left| {
            let mut items = String::from("Encountered unknown capabilities");
            for capability in unknown {
                if !push_li(&mut items, left, |_| js::raw_capability(capability)) {
                    break;
                }
            }
            items
        });
    }
}

/// `InvalidClaim`: a capability found in a proof could be neither issued by
/// that proof's issuer nor derived from its own proofs.
#[derive(Clone, Debug)]
pub struct InvalidClaim {
    /// The capability, as JS prints it.
    pub claim: String,
    /// The issuer of the UCAN that holds it.
    pub issuer: Did,
    /// Proof capabilities that did not parse or did not cover it.
    pub delegation_errors: Vec<Failure>,
    /// Proof capabilities of other abilities.
    pub unknown_capabilities: Vec<Capability>,
    /// Proofs that are missing, misaddressed, expired or badly signed.
    pub invalid_proofs: Vec<Failure>,
    /// Matching proof capabilities whose own chains failed.
    pub failed_proofs: Vec<Failure>,
}

impl InvalidClaim {
    /// The JS message, cut to [`MAX_MESSAGE_BYTES`].
    pub fn message(&self) -> String {
        crate::bounded::message(self.render(RENDERED))
    }

    /// The JS message, or past `limit`, a prefix of it (see [`Failure::render`]).
    fn render(&self, limit: usize) -> String {
        let mut out = format!("Capability {} is not authorized because:", self.claim);
        let issuer = &self.issuer;
        if push_li(&mut out, limit, |_| {
            format!("Capability can not be (self) issued by '{issuer}'")
        }) {
            reasons(
                &mut out,
                limit,
                [
                    &self.failed_proofs,
                    &self.delegation_errors,
                    &self.invalid_proofs,
                ],
                &self.unknown_capabilities,
                "Delegated capability not found",
            );
        }
        out
    }
}

/// Why an invocation is not authorized (`Unauthorized` in JS): every path
/// explored and where it failed.
#[derive(Clone, Debug)]
pub struct Unauthorized {
    /// The claimed ability.
    pub capability: String,
    /// Invocation capabilities that did not parse.
    pub delegation_errors: Vec<Failure>,
    /// Invocation capabilities of other abilities.
    pub unknown_capabilities: Vec<Capability>,
    /// Why the invocation itself is invalid (expired, badly signed…).
    pub invalid_proofs: Vec<Failure>,
    /// Why each matching capability's proof chain failed.
    pub failed_proofs: Vec<Failure>,
    /// The rendered reasons, exactly like JS @ucanto's `Unauthorized`
    /// message when it fits in [`MAX_MESSAGE_BYTES`], else cut to it.
    pub message: String,
}

impl Unauthorized {
    pub(crate) fn new(
        capability: &str,
        delegation_errors: Vec<Failure>,
        unknown_capabilities: Vec<Capability>,
        invalid_proofs: Vec<Failure>,
        failed_proofs: Vec<Failure>,
    ) -> Self {
        let mut unauthorized = Unauthorized {
            capability: capability.to_string(),
            delegation_errors,
            unknown_capabilities,
            invalid_proofs,
            failed_proofs,
            message: String::new(),
        };
        unauthorized.message = crate::bounded::message(unauthorized.render(RENDERED));
        unauthorized
    }

    /// The JS message, or past `limit`, a prefix of it (see [`Failure::render`]).
    pub(crate) fn render(&self, limit: usize) -> String {
        let mut out = format!(
            "Claim {{\"can\":{}}} is not authorized",
            js::json_string(&self.capability)
        );
        reasons(
            &mut out,
            limit,
            [
                &self.failed_proofs,
                &self.delegation_errors,
                &self.invalid_proofs,
            ],
            &self.unknown_capabilities,
            "No matching delegated capability found",
        );
        out
    }

    /// The error name.
    pub fn name(&self) -> &'static str {
        "Unauthorized"
    }

    /// The error object for a receipt's `out.error`: `{name, message, stack}`,
    /// the `stack` being `"Unauthorized: <message>"` as JS prints it without frames.
    pub fn to_ipld(&self) -> Ipld {
        Ipld::Map(error_map(self.name(), &self.message))
    }
}

impl fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Unauthorized {}
