//! `space/egress/consolidate`: the task a track invocation forks — read the
//! batch and total its egress.
//!
//! # Format
//! ```text
//! invocation  iss = aud = tracker, exp: null, no nonce, prf: []
//! capability  { can: "space/egress/consolidate", with: <tracker DID>,
//!               nb: { cause: Link<track invocation> } }
//! ok          { totalEgress: int,
//!               errors: [{ name: string, message: string, receipt: Link }] }
//! error       { name: "EgressConsolidateError", message: string }
//! ```
//! Without expiry or nonce the invocation's CID is a pure function of the
//! tracker and the track invocation's CID ([`consolidate_invocation`]), so a
//! retried track never creates a second task. `errors` lists the receipts of
//! the batch that could not be counted; the error result is for a batch that
//! cannot be processed at all.

use cid::Cid;
use ucanto::dag::{CodecError, Ipld, IpldMap};
use ucanto::principal::Signer;
use ucanto::ucan::{Delegation, DelegationBuilder, Invocation};

use crate::schema::{nb_or_empty, Fields};
use crate::{named_failure, Ability, Outcome, SchemaError};

/// The `space/egress/consolidate` capability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Consolidate;

/// Caveats of `space/egress/consolidate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsolidateNb {
    /// The track invocation this task consolidates.
    pub cause: Cid,
}

impl Ability for Consolidate {
    const CAN: &'static str = "space/egress/consolidate";
    type Nb = ConsolidateNb;

    fn parse_nb(nb: Option<&IpldMap>) -> Result<ConsolidateNb, SchemaError> {
        Ok(ConsolidateNb {
            cause: Fields::new("nb", nb_or_empty(nb)).link("cause")?,
        })
    }

    fn to_nb(nb: &ConsolidateNb) -> IpldMap {
        IpldMap::from([("cause".to_string(), Ipld::Link(nb.cause))])
    }
}

/// The consolidate invocation `tracker` forks for `track`: iss = aud = with =
/// the tracker's DID, `nb.cause` = the track invocation's CID, no expiry, no
/// nonce. Deterministic: the same inputs always give the same CID.
pub fn consolidate_invocation(
    tracker: &dyn Signer,
    track: &Invocation,
) -> Result<Invocation, CodecError> {
    consolidate_builder(tracker, track).build()
}

/// The builder behind [`consolidate_invocation`], to attach blocks (which
/// travel with the invocation without changing its CID).
pub fn consolidate_builder<'a>(
    tracker: &'a dyn Signer,
    track: &Invocation,
) -> DelegationBuilder<'a> {
    Delegation::builder(tracker, tracker.did().clone())
        .capability(Consolidate::capability(
            tracker.did(),
            &ConsolidateNb { cause: track.cid() },
        ))
        .no_expiration()
}

/// Success of `space/egress/consolidate`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsolidateOk {
    /// Bytes served by the ok retrieve receipts of the batch.
    pub total_egress: u64,
    /// Receipts of the batch that were not counted, and why.
    pub errors: Vec<ReceiptError>,
}

/// `errors[]` name of a retrieval made by a non-billable actor (replication,
/// indexing): counted once and recorded apart, billed to no one. The tracker
/// writes it and the node client expects it: it never makes a batch disputed.
pub const NON_BILLABLE: &str = "NonBillable";

/// A receipt of a batch that could not be counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptError {
    /// Error name.
    pub name: String,
    /// What was wrong.
    pub message: String,
    /// The receipt.
    pub receipt: Cid,
}

impl Outcome for ConsolidateOk {
    fn to_ipld(&self) -> Ipld {
        let errors = self
            .errors
            .iter()
            .map(|e| {
                Ipld::Map(IpldMap::from([
                    ("name".to_string(), Ipld::String(e.name.clone())),
                    ("message".to_string(), Ipld::String(e.message.clone())),
                    ("receipt".to_string(), Ipld::Link(e.receipt)),
                ]))
            })
            .collect();
        Ipld::Map(IpldMap::from([
            (
                "totalEgress".to_string(),
                Ipld::Integer(self.total_egress.into()),
            ),
            ("errors".to_string(), Ipld::List(errors)),
        ]))
    }

    fn from_ipld(value: &Ipld) -> Result<Self, SchemaError> {
        let fields = Fields::of("ok", value)?;
        let errors = fields
            .list("errors")?
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let e = Fields::of(format!("ok.errors[{i}]"), item)?;
                Ok(ReceiptError {
                    name: e.string("name")?.to_string(),
                    message: e.string("message")?.to_string(),
                    receipt: e.link("receipt")?,
                })
            })
            .collect::<Result<_, SchemaError>>()?;
        Ok(ConsolidateOk {
            total_egress: fields.uint("totalEgress")?,
            errors,
        })
    }
}

named_failure! {
    /// Failure of `space/egress/consolidate` (the batch cannot be processed at
    /// all): `{name: "EgressConsolidateError", message}`.
    ConsolidateError = "EgressConsolidateError"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_round_trips_and_names_fields() {
        let receipt: Cid = "bafyreidlj3mk56xjd5sursikr4q7rcbhnglby3m3pjsj2kb23ee3lq3jtu"
            .parse()
            .unwrap();
        let ok = ConsolidateOk {
            total_egress: 4096,
            errors: vec![ReceiptError {
                name: "InvalidReceipt".into(),
                message: "bad".into(),
                receipt,
            }],
        };
        assert_eq!(ConsolidateOk::from_ipld(&ok.to_ipld()).unwrap(), ok);

        let Ipld::Map(mut map) = ok.to_ipld() else {
            unreachable!()
        };
        map.insert("totalEgress".into(), Ipld::Integer(-1));
        assert_eq!(
            ConsolidateOk::from_ipld(&Ipld::Map(map.clone()))
                .unwrap_err()
                .field(),
            "ok.totalEgress"
        );
        map.insert("totalEgress".into(), Ipld::Integer(1));
        map.insert("errors".into(), Ipld::List(vec![Ipld::Map(IpldMap::new())]));
        assert_eq!(
            ConsolidateOk::from_ipld(&Ipld::Map(map))
                .unwrap_err()
                .to_string(),
            "ok.errors[0].name: missing"
        );
    }

    #[test]
    fn malformed_nb_names_the_field() {
        assert_eq!(
            Consolidate::parse_nb(None).unwrap_err().to_string(),
            "nb.cause: missing"
        );
        let nb = IpldMap::from([("cause".to_string(), Ipld::Bytes(vec![1]))]);
        assert_eq!(
            Consolidate::parse_nb(Some(&nb)).unwrap_err().to_string(),
            "nb.cause: expected a link"
        );
    }
}
