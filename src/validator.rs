//! Validator: decides whether an invocation is authorized.
//!
//! INTERFACE STUB — implementation in progress.

use std::sync::Arc;

use cid::Cid;

use crate::dag::{Ipld, IpldMap};
use crate::principal::{Did, Verifier};
use crate::ucan::{Capability, Delegation};

/// Parsing and derivation rules of one capability ("a capability is a value").
///
/// The validator matches an invocation's capability against proofs: a
/// delegated capability is first resolved against the claimed one (`can`
/// patterns `*`/`ns/*` and resource `ucan:*` take the claimed values, missing
/// `nb` fields are inherited from the claim), then parsed, then
/// [`CapabilityParser::derives`] decides whether it covers the claim.
pub trait CapabilityParser: Send + Sync {
    /// The ability, e.g. `space/egress/track`.
    fn can(&self) -> &str;

    /// Checks `with` and `nb`; the error explains which field is wrong.
    fn parse(&self, capability: &Capability) -> Result<Capability, String>;

    /// Whether `delegated` covers `claimed`; the error explains why not.
    fn derives(&self, claimed: &Capability, delegated: &Capability) -> Result<(), String> {
        default_derives(claimed, delegated)
    }
}

/// The default rule: same resource (or a `prefix*` resource), and every `nb`
/// field the delegation pins is equal in the claim.
pub fn default_derives(claimed: &Capability, delegated: &Capability) -> Result<(), String> {
    if let Some(prefix) = delegated.with.strip_suffix('*') {
        if !claimed.with.starts_with(prefix) {
            return Err(format!("Resource {} does not match delegated {} ", claimed.with, delegated.with));
        }
    } else if delegated.with != claimed.with {
        return Err(format!("Resource {} is not contained by {}", claimed.with, delegated.with));
    }
    let empty = IpldMap::new();
    let claimed_nb = claimed.nb.as_ref().unwrap_or(&empty);
    for (name, value) in delegated.nb.as_ref().unwrap_or(&empty) {
        if claimed_nb.get(name) != Some(value) {
            return Err(format!("{name}: {} violates {}", show(claimed_nb.get(name)), show(Some(value))));
        }
    }
    Ok(())
}

fn show(value: Option<&Ipld>) -> String {
    match value {
        None => "undefined".into(),
        Some(v) => crate::dag_json::to_string(v).unwrap_or_default(),
    }
}

/// What the validator needs to know about the service.
#[derive(Clone)]
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
    /// Delegations from the invocation's proof up to the resource owner.
    pub proofs: Vec<Delegation>,
}

/// Why an invocation is not authorized.
#[derive(Clone, Debug)]
pub struct Unauthorized {
    /// The rendered reasons, like JS @ucanto's `Unauthorized` message.
    pub message: String,
}

impl Unauthorized {
    /// The error name.
    pub fn name(&self) -> &'static str {
        "Unauthorized"
    }
}

/// Checks that `invocation` is authorized to invoke the capability `parser` describes.
pub fn access(
    _invocation: &Delegation,
    _parser: &dyn CapabilityParser,
    _config: &ValidatorConfig,
) -> Result<Authorization, Unauthorized> {
    Err(Unauthorized { message: "validator not implemented".into() })
}
