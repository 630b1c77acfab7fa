//! `ucan/attest`: a trusted authority vouches for a delegation it did not
//! sign (e.g. one signed by a did:mailto account).
//!
//! # Format
//! ```text
//! capability  { can: "ucan/attest", with: <authority DID>,
//!               nb: { proof: Link<delegation, CIDv1> } }
//! ```
//! Delegated, never invoked, so it has no result types. A proof covers an
//! attestation with the same `with` and the same `proof`.

use cid::Cid;
use ucanto::dag::{Ipld, IpldMap};

use crate::schema::{nb_or_empty, Fields};
use crate::{Ability, Parsed, SchemaError};
use ucanto::validator::Violation;

/// The `ucan/attest` capability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UcanAttest;

/// Caveats of `ucan/attest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UcanAttestNb {
    /// The attested delegation.
    pub proof: Cid,
}

impl Ability for UcanAttest {
    const CAN: &'static str = "ucan/attest";
    type Nb = UcanAttestNb;

    fn parse_nb(nb: Option<&IpldMap>) -> Result<UcanAttestNb, SchemaError> {
        let proof = Fields::new("nb", nb_or_empty(nb)).link("proof")?;
        if proof.version() != cid::Version::V1 {
            return Err(SchemaError::invalid(
                "nb.proof",
                format!("expected a CIDv1, got {proof}"),
            ));
        }
        Ok(UcanAttestNb { proof })
    }

    fn to_nb(nb: &UcanAttestNb) -> IpldMap {
        IpldMap::from([("proof".to_string(), Ipld::Link(nb.proof))])
    }

    fn derives(
        claimed: &Parsed<UcanAttestNb>,
        delegated: &Parsed<UcanAttestNb>,
    ) -> Result<(), Violation> {
        super::equal_with(Self::CAN, &claimed.with, &delegated.with)?;
        super::check_link(&claimed.nb.proof, &delegated.nb.proof, "nb.proof")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_must_be_a_cidv1_link() {
        let v0: Cid = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"
            .parse()
            .unwrap();
        let nb = IpldMap::from([("proof".to_string(), Ipld::Link(v0))]);
        assert_eq!(
            UcanAttest::parse_nb(Some(&nb)).unwrap_err().field(),
            "nb.proof"
        );
        assert_eq!(
            UcanAttest::parse_nb(None).unwrap_err().to_string(),
            "nb.proof: missing"
        );
    }
}
