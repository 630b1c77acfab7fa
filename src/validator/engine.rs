//! The proof search, transcribed from @ucanto/validator's `claim`,
//! `authorize`, `resolveSources`, `validate`, `verifyAuthorization` and
//! `verifySession` (and the `select`/`resolveCapability` of `capability.js`),
//! keeping their order of exploration so failures list in the same order.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::sync::Arc;

use bytes::Bytes;
use cid::Cid;

use super::error::{Failure, InvalidClaim, Unauthorized, Violation};
use super::{default_derives, js, schema, CapabilityParser, Typed, ValidatorConfig};
use crate::dag::Ipld;
use crate::principal::{verifier_for, Did, Verifier};
use crate::ucan::{Capability, Delegation, Proof};

/// The ability of an attestation.
const ATTEST: &str = "ucan/attest";

pub(crate) struct Ctx<'a> {
    pub(crate) config: &'a ValidatorConfig,
    pub(crate) now: u64,
    budget: Cell<usize>,
    /// Capabilities that may still be examined.
    capabilities: Cell<usize>,
    /// Signature checks by (UCAN, verifier DID): a repeated path costs nothing.
    signatures: RefCell<crate::memo::FastMap<(Cid, Did), (Bytes, bool)>>,
}

/// A capability of a UCAN: the UCAN and the capability's place in it.
#[derive(Clone)]
pub(crate) struct Source {
    delegation: Delegation,
    index: usize,
}

impl Source {
    fn capability(&self) -> &Capability {
        &self.delegation.capabilities()[self.index]
    }
}

/// A source whose capability parsed (`value`, read into `typed`) and covers
/// what was asked. Both are shared: a proof that resolves to the claim itself
/// has the claim's.
pub(crate) struct Match {
    pub(crate) source: Source,
    pub(crate) value: Arc<Capability>,
    pub(crate) typed: Typed,
}

impl Match {
    pub(crate) fn delegation(&self) -> &Delegation {
        &self.source.delegation
    }
}

struct Selection {
    matches: Vec<Match>,
    errors: Vec<Failure>,
    unknown: Vec<Capability>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(config: &'a ValidatorConfig) -> Self {
        Ctx {
            config,
            now: config.time(),
            budget: Cell::new(config.max_validations),
            capabilities: Cell::new(config.max_capability_checks),
            signatures: RefCell::default(),
        }
    }

    /// JS `claim`: validates `proofs` (the invocation itself at the top), then
    /// looks for a capability `parser` accepts that is self-issued or derives
    /// from a valid chain. Returns the match and the delegation path.
    pub(crate) fn claim(
        &self,
        parser: &dyn CapabilityParser,
        proofs: &[Delegation],
    ) -> Result<(Match, Vec<Delegation>), Unauthorized> {
        let mut invalid_proofs = Vec::new();
        let mut sources = Vec::new();
        for proof in proofs {
            match self.validate(proof, proofs) {
                Ok(()) => {
                    if let Err(e) = self.add_sources(&mut sources, proof) {
                        invalid_proofs.push(e);
                        break;
                    }
                }
                Err(e) => invalid_proofs.push(e),
            }
        }
        let Selection {
            matches,
            errors,
            unknown,
        } = select(parser, sources);
        let mut failed_proofs = Vec::new();
        for matched in matches {
            if is_self_issued(&matched) {
                return Ok((matched, Vec::new()));
            }
            match self.authorize(parser, &matched) {
                Ok(path) => return Ok((matched, path)),
                Err(e) => failed_proofs.push(e),
            }
        }
        Err(Unauthorized::new(
            parser.can(),
            errors,
            unknown,
            invalid_proofs,
            failed_proofs,
        ))
    }

    /// JS `authorize`: finds a proof of `claimed.delegation()` that grants
    /// `claimed`, recursively; returns the delegations from that proof up.
    fn authorize(
        &self,
        parser: &dyn CapabilityParser,
        claimed: &Match,
    ) -> Result<Vec<Delegation>, Failure> {
        let (sources, invalid_proofs) = self.resolve_sources(claimed.delegation());
        let Selection {
            matches,
            errors,
            unknown,
        } = select_from(parser, claimed, sources);
        let mut failed_proofs = Vec::new();
        for matched in matches {
            let path = if is_self_issued(&matched) {
                Ok(Vec::new())
            } else {
                self.authorize(parser, &matched)
            };
            match path {
                Ok(mut path) => {
                    path.insert(0, matched.source.delegation);
                    return Ok(path);
                }
                Err(e) => failed_proofs.push(e),
            }
        }
        Err(Failure::InvalidClaim(Box::new(InvalidClaim {
            claim: js::parsed_capability(parser.can(), &claimed.value),
            issuer: claimed.delegation().issuer().clone(),
            delegation_errors: errors,
            unknown_capabilities: unknown,
            invalid_proofs,
            failed_proofs,
        })))
    }

    /// JS `resolveSources`: the capabilities of the valid proofs of
    /// `delegation`, and why the other proofs were rejected.
    fn resolve_sources(&self, delegation: &Delegation) -> (Vec<Source>, Vec<Failure>) {
        let mut errors = Vec::new();
        // Embedded proofs come first: JS resolves linked ones asynchronously.
        let mut embedded = Vec::new();
        let mut linked = Vec::new();
        for proof in delegation.proofs() {
            match proof {
                Proof::Delegation(d) => embedded.push(d),
                Proof::Link(link) => {
                    match self.config.local_proofs.iter().find(|d| d.cid() == link) {
                        Some(d) => linked.push(d.clone()),
                        None => errors.push(Failure::Proof {
                            proof: link,
                            cause: Box::new(Failure::UnavailableProof { link }),
                        }),
                    }
                }
            }
        }
        let mut aligned = Vec::new();
        for proof in embedded.into_iter().chain(linked) {
            if proof.audience() != delegation.issuer() {
                errors.push(Failure::Proof {
                    proof: proof.cid(),
                    cause: Box::new(Failure::PrincipalAlignment {
                        expected: delegation.issuer().clone(),
                        delegation: proof.cid(),
                        audience: proof.audience().clone(),
                    }),
                });
            } else {
                aligned.push(proof);
            }
        }
        let mut sources = Vec::new();
        for proof in &aligned {
            match self.validate(proof, &aligned) {
                Ok(()) => {
                    if let Err(e) = self.add_sources(&mut sources, proof) {
                        errors.push(e);
                        break;
                    }
                }
                Err(e) => errors.push(Failure::Proof {
                    proof: proof.cid(),
                    cause: Box::new(e),
                }),
            }
        }
        (sources, errors)
    }

    /// Adds the capabilities of `delegation` to `sources`, each taken from
    /// the budget of capability checks (a UCAN may list thousands, and each
    /// is parsed and compared with the claim); `LimitExceeded` once spent.
    fn add_sources(
        &self,
        sources: &mut Vec<Source>,
        delegation: &Delegation,
    ) -> Result<(), Failure> {
        let count = delegation.capabilities().len();
        let left = self.capabilities.get();
        self.capabilities.set(left.saturating_sub(count));
        sources.extend(sources_of(delegation).take(left));
        if count > left {
            return Err(Failure::LimitExceeded {
                limit: self.config.max_capability_checks,
            });
        }
        Ok(())
    }

    /// JS `validate`: time bounds, then the issuer's authorization.
    /// `proofs` are the siblings that may hold a `ucan/attest` for it.
    pub(crate) fn validate(
        &self,
        delegation: &Delegation,
        proofs: &[Delegation],
    ) -> Result<(), Failure> {
        let left = self.budget.get();
        if left == 0 {
            return Err(Failure::LimitExceeded {
                limit: self.config.max_validations,
            });
        }
        self.budget.set(left - 1);
        // Before anything is resolved or verified: real chains cite a
        // handful of proofs, and each costs a check.
        let cited = delegation.data().proofs.len();
        if cited > self.config.max_proofs {
            return Err(Failure::TooManyProofs {
                delegation: delegation.cid(),
                proofs: cited,
                max: self.config.max_proofs,
            });
        }
        if !self.config.timeless {
            super::validate_time(delegation, self.now)?;
        }
        self.verify_authorization(delegation, proofs)
    }

    /// JS `verifyAuthorization`.
    fn verify_authorization(
        &self,
        delegation: &Delegation,
        proofs: &[Delegation],
    ) -> Result<(), Failure> {
        let issuer = delegation.issuer();
        if issuer.is_key() {
            return match verifier_for(issuer) {
                Ok(verifier) => self.verify_signature(delegation, verifier.as_ref()),
                // JS would throw on a did:key it cannot parse; refuse it instead.
                Err(_) => Err(Failure::DidKeyResolution {
                    did: issuer.clone(),
                }),
            };
        }
        if issuer == self.config.authority.did() {
            return self.verify_signature(delegation, self.config.authority.as_ref());
        }
        match self.verify_session(delegation, proofs) {
            Ok(()) => Ok(()),
            Err(cause) if !cause.failed_proofs.is_empty() => Err(Failure::SessionEscalation {
                delegation: delegation.cid(),
                issuer: issuer.clone(),
                cause: Box::new(cause),
            }),
            // JS falls back to `resolveDIDKey`; our resolver is the attester list.
            Err(_) => match self.config.attesters.iter().find(|a| a.did() == issuer) {
                Some(attester) => self.verify_signature(delegation, attester.as_ref()),
                None => Err(Failure::DidKeyResolution {
                    did: issuer.clone(),
                }),
            },
        }
    }

    fn verify_signature(
        &self,
        delegation: &Delegation,
        verifier: &dyn Verifier,
    ) -> Result<(), Failure> {
        if self.config.is_presumed(delegation, verifier) {
            return Ok(());
        }
        let bytes = &delegation.block().bytes;
        let shared = self.config.verified.as_ref();
        // What the shared cache remembers, a success or a failure, is the
        // outcome: no verification, nothing spent.
        let remembered = shared.and_then(|cache| cache.outcome(&delegation.cid(), verifier, bytes));
        let key = (delegation.cid(), verifier.did().clone());
        let cached = remembered.or_else(|| {
            self.signatures
                .borrow()
                .get(&key)
                .filter(|(b, _)| b == bytes)
                .map(|(_, ok)| *ok)
        });
        if cached.is_none() && shared.is_some_and(|cache| !cache.spend()) {
            return Err(Failure::BudgetExceeded);
        }
        let valid = cached.unwrap_or_else(|| {
            let ok = delegation.verify_signature(verifier);
            if let Some(cache) = shared {
                cache.record(key.0, verifier, bytes, ok);
            }
            self.signatures
                .borrow_mut()
                .insert(key, (bytes.clone(), ok));
            ok
        });
        if valid {
            Ok(())
        } else {
            Err(Failure::InvalidSignature {
                delegation: delegation.cid(),
                issuer: delegation.issuer().clone(),
                // JS names the key, even for a did:web issuer.
                key: verifier.key_did().clone(),
            })
        }
    }

    /// JS `verifySession`: a valid `ucan/attest` of `delegation` by the
    /// authority (or an attester) among the sibling `proofs`.
    fn verify_session(
        &self,
        delegation: &Delegation,
        proofs: &[Delegation],
    ) -> Result<(), Unauthorized> {
        let authority = self.config.authority.did();
        let mut allowed = vec![authority.clone()];
        // As JS: audiences of `ucan/attest` delegations the authority issued
        // (held locally) may attest too…
        for proof in &self.config.local_proofs {
            if proof
                .capabilities()
                .first()
                .is_some_and(|c| c.can == ATTEST && c.with == authority.as_str())
            {
                allowed.push(proof.audience().clone());
            }
        }
        // …and so may the configured attesters.
        for attester in &self.config.attesters {
            if !allowed.contains(attester.did()) {
                allowed.push(attester.did().clone());
            }
        }
        let parser = AttestParser {
            allowed,
            proof: delegation.cid(),
        };
        let attestations: Vec<Delegation> = proofs
            .iter()
            .filter(|p| p.capabilities().first().is_some_and(|c| c.can == ATTEST))
            .filter(|p| p.cid() != delegation.cid())
            .cloned()
            .collect();
        self.claim(&parser, &attestations).map(|_| ())
    }
}

fn sources_of(delegation: &Delegation) -> impl Iterator<Item = Source> + '_ {
    (0..delegation.capabilities().len()).map(move |index| Source {
        delegation: delegation.clone(),
        index,
    })
}

/// JS `isSelfIssued`: the resource is the issuer's own DID.
fn is_self_issued(matched: &Match) -> bool {
    matched.value.with == matched.delegation().issuer().as_str()
}

/// JS `select` + `parseCapability`: the sources `parser` accepts as they are.
fn select(parser: &dyn CapabilityParser, sources: Vec<Source>) -> Selection {
    let mut selection = Selection {
        matches: Vec::new(),
        errors: Vec::new(),
        unknown: Vec::new(),
    };
    for source in sources {
        let capability = source.capability();
        if capability.can != parser.can() {
            selection.unknown.push(capability.clone());
            continue;
        }
        match parser.parse_typed(capability) {
            Ok((mut value, typed)) => {
                value.can = parser.can().to_string();
                selection.matches.push(Match {
                    source,
                    value: Arc::new(value),
                    typed,
                });
            }
            Err(cause) => selection.errors.push(Failure::Delegation {
                // JS interpolates the capability object itself here.
                context: "[object Object]".into(),
                causes: vec![Failure::MalformedCapability {
                    capability: capability.clone(),
                    cause: cause.to_string(),
                }],
            }),
        }
    }
    selection
}

/// JS `Match#select` + `resolveCapability`: the proof capabilities that,
/// resolved against `claimed`, parse and cover it.
fn select_from(parser: &dyn CapabilityParser, claimed: &Match, sources: Vec<Source>) -> Selection {
    let mut selection = Selection {
        matches: Vec::new(),
        errors: Vec::new(),
        unknown: Vec::new(),
    };
    let context = || js::parsed_capability(parser.can(), &claimed.value);
    for source in sources {
        let capability = source.capability();
        let Some(can) = resolve_ability(&capability.can, &claimed.value.can) else {
            selection.unknown.push(capability.clone());
            continue;
        };
        let candidate = resolve_capability(capability, can, &claimed.value);
        // Resolved to the claim itself, it reads as the claim did: what
        // parsing the claim's written form again would give.
        let parsed = match &candidate {
            Cow::Borrowed(_) => Ok((claimed.value.clone(), claimed.typed.clone())),
            Cow::Owned(candidate) => parser.parse_typed(candidate).map(|(mut resolved, typed)| {
                resolved.can = can.to_string();
                (Arc::new(resolved), typed)
            }),
        };
        match parsed {
            Err(cause) => selection.errors.push(Failure::Delegation {
                context: context(),
                causes: vec![Failure::MalformedCapability {
                    capability: capability.clone(),
                    cause: cause.to_string(),
                }],
            }),
            Ok((resolved, typed)) => {
                let derived =
                    parser.derives_typed((&claimed.value, &claimed.typed), (&resolved, &typed));
                match derived {
                    Ok(()) => selection.matches.push(Match {
                        source,
                        value: resolved,
                        typed,
                    }),
                    Err(cause) => selection.errors.push(Failure::Delegation {
                        context: context(),
                        causes: vec![Failure::EscalatedCapability {
                            claimed: Capability::clone(&claimed.value),
                            delegated: Arc::unwrap_or_clone(resolved),
                            cause: cause.to_string(),
                        }],
                    }),
                }
            }
        }
    }
    selection
}

/// JS `resolveCapability`: `delegated` read against the claim, whose `can`
/// (resolved already) and, for `ucan:*`, resource it takes, and whose nb
/// fields it inherits where it pins none.
fn resolve_capability<'a>(
    delegated: &Capability,
    can: &str,
    claimed: &'a Capability,
) -> Cow<'a, Capability> {
    let with = resolve_resource(&delegated.with, &claimed.with);
    // A proof that pins no nb field and names the claimed resource resolves
    // to the claim itself (the usual delegation): no copy.
    let pins_nothing = match (&delegated.nb, &claimed.nb) {
        (None, _) => true,
        (Some(pinned), Some(_)) => pinned.is_empty(),
        // `{}` over no nb resolves to `{}`, not to the claim's none.
        (Some(_), None) => false,
    };
    if pins_nothing && with == claimed.with && can == claimed.can {
        Cow::Borrowed(claimed)
    } else {
        Cow::Owned(inherit(delegated, can, with, claimed))
    }
}

/// The capability `resolve_capability` stands for, always built anew.
fn inherit(delegated: &Capability, can: &str, with: &str, claimed: &Capability) -> Capability {
    // Missing nb fields are inherited from the claim.
    let nb = match (&claimed.nb, &delegated.nb) {
        (None, None) => None,
        (claimed_nb, delegated_nb) => {
            let mut nb = claimed_nb.clone().unwrap_or_default();
            nb.extend(delegated_nb.clone().unwrap_or_default());
            Some(nb)
        }
    };
    Capability {
        can: can.to_string(),
        with: with.to_string(),
        nb,
    }
}

/// JS `resolveAbility`: `*`, `ns/*` or the exact ability grant `can`.
pub(crate) fn resolve_ability<'a>(pattern: &str, can: &'a str) -> Option<&'a str> {
    if pattern == can || pattern == "*" {
        return Some(can);
    }
    match pattern.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('/') && can.starts_with(prefix) => Some(can),
        _ => None,
    }
}

/// JS `resolveResource`: `ucan:*` stands for the claimed resource.
pub(crate) fn resolve_resource<'a>(source: &'a str, uri: &'a str) -> &'a str {
    if source == "ucan:*" {
        uri
    } else {
        source
    }
}

/// The capability `verifySession` claims: `ucan/attest` by an allowed
/// authority with `nb.proof` = the UCAN being verified.
struct AttestParser {
    allowed: Vec<Did>,
    proof: Cid,
}

impl CapabilityParser for AttestParser {
    fn can(&self) -> &str {
        ATTEST
    }

    fn parse(&self, capability: &Capability) -> Result<Capability, Violation> {
        if !self.allowed.iter().any(|d| d.as_str() == capability.with) {
            let actual = Ipld::String(capability.with.clone());
            let errors: Vec<String> = self
                .allowed
                .iter()
                .map(|d| schema::literal_error(d.as_str(), Some(&actual)))
                .collect();
            return Err(Violation::new(match errors.as_slice() {
                [one] => one.clone(),
                many => schema::union_error(many),
            }));
        }
        let proof = capability.nb.as_ref().and_then(|nb| nb.get("proof"));
        let proof = schema::link_to(proof, &self.proof)
            .map_err(|e| Violation::new(schema::field_error("proof", e.message())))?;
        let nb = [("proof".to_string(), Ipld::Link(proof))]
            .into_iter()
            .collect();
        Ok(Capability {
            can: ATTEST.into(),
            with: capability.with.clone(),
            nb: Some(nb),
        })
    }

    fn derives(&self, claimed: &Capability, delegated: &Capability) -> Result<(), Violation> {
        default_derives(claimed, delegated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolving to the claim itself, uncopied, gives what building the
    /// resolved capability anew gives, for every mix of nb and resource.
    #[test]
    fn resolving_to_the_claim_itself_is_resolving() {
        let nbs = [
            None,
            Some(crate::dag::IpldMap::new()),
            Some([("a".to_string(), Ipld::Integer(1))].into_iter().collect()),
            Some([("b".to_string(), Ipld::Integer(2))].into_iter().collect()),
        ];
        let claimed_with = "did:key:zAlice";
        for claimed_nb in &nbs[..3] {
            let claimed = Capability {
                can: "store/add".into(),
                with: claimed_with.into(),
                nb: claimed_nb.clone(),
            };
            for delegated_nb in &nbs {
                for with in [claimed_with, "ucan:*", "did:key:zBob"] {
                    for pattern in ["store/add", "store/*", "*"] {
                        let delegated = Capability {
                            can: pattern.into(),
                            with: with.into(),
                            nb: delegated_nb.clone(),
                        };
                        let can = resolve_ability(pattern, &claimed.can).unwrap();
                        let resolved = resolve_resource(&delegated.with, &claimed.with);
                        assert_eq!(
                            *resolve_capability(&delegated, can, &claimed),
                            inherit(&delegated, can, resolved, &claimed),
                            "{claimed:?} / {delegated:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn abilities_resolve_like_js() {
        assert_eq!(resolve_ability("*", "store/add"), Some("store/add"));
        assert_eq!(resolve_ability("store/*", "store/add"), Some("store/add"));
        assert_eq!(resolve_ability("store/add", "store/add"), Some("store/add"));
        assert_eq!(resolve_ability("store/", "store/add"), None);
        assert_eq!(resolve_ability("store/a*", "store/add"), None);
        assert_eq!(resolve_ability("store/list", "store/add"), None);
        assert_eq!(
            resolve_resource("ucan:*", "did:key:zAlice"),
            "did:key:zAlice"
        );
        assert_eq!(resolve_resource("did:*", "did:key:zAlice"), "did:*");
    }
}
