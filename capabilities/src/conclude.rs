//! `space/egress/conclude` (ours; nowhere upstream): the consolidator hands
//! the receipt of a consolidate task to the tracker.
//!
//! # Format
//! ```text
//! invocation  iss: consolidator, aud: tracker, prf: [tracker → consolidator, unless they are one]
//!             blocks: the receipt's root block is attached
//! capability  { can: "space/egress/conclude", with: <tracker DID>,
//!               nb: { receipt: Link<consolidate receipt>, tally?: [Link<tally chunk>] } }
//! ok          {}
//! error       { name: "EgressConcludeError", message: string,
//!               // when retrievals were counted by another batch meanwhile:
//!               receipts?: [Link<retrieval>] (the first 1,024), count?: int,
//!               conflicts?: bytes (bit i % 8 of byte i / 8 set: the tally's
//!                           i-th counted retrieval, chunk by chunk, conflicts),
//!               // when spaces are not billed: spaces?: [DID] (the first 1,024) }
//! ```
//! Only the receipt's root block travels with the invocation: ucanto attaches
//! blocks linked directly from `nb`, so the invocation the receipt ran (the
//! consolidate task, which the tracker created) is not among them.
//!
//! `tally` links the blocks that say what the receipt's `totalEgress` is made
//! of (bytes per space and day, and which retrieve receipts were counted).
//! They are too large for the receipt a node downloads, so they travel here,
//! attached like the receipt; their format belongs to the tracker service.
//! An absent `tally` reads as empty (a batch that counted nothing).

use cid::Cid;
use ucanto::dag::{CodecError, Ipld, IpldMap};
use ucanto::principal::{Did, Signer};
use ucanto::receipt::Receipt;
use ucanto::ucan::{Delegation, DelegationBuilder, Invocation, Proof};

use crate::schema::{nb_or_empty, Fields};
use crate::{named_failure, Ability, Empty, SchemaError};

/// The `space/egress/conclude` capability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conclude;

/// Caveats of `space/egress/conclude`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConcludeNb {
    /// The consolidate receipt.
    pub receipt: Cid,
    /// Blocks detailing the receipt's total; empty when nothing was counted.
    pub tally: Vec<Cid>,
}

impl Ability for Conclude {
    const CAN: &'static str = "space/egress/conclude";
    type Nb = ConcludeNb;

    fn parse_nb(nb: Option<&IpldMap>) -> Result<ConcludeNb, SchemaError> {
        let fields = Fields::new("nb", nb_or_empty(nb));
        let tally = match fields.get("tally") {
            None => Vec::new(),
            Some(_) => fields
                .list("tally")?
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Ipld::Link(cid) => Ok(*cid),
                    _ => Err(SchemaError::wrong_type(format!("nb.tally[{i}]"), "a link")),
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(ConcludeNb {
            receipt: fields.link("receipt")?,
            tally,
        })
    }

    fn to_nb(nb: &ConcludeNb) -> IpldMap {
        let mut map = IpldMap::from([("receipt".to_string(), Ipld::Link(nb.receipt))]);
        if !nb.tally.is_empty() {
            let links = nb.tally.iter().map(|c| Ipld::Link(*c)).collect();
            map.insert("tally".to_string(), Ipld::List(links));
        }
        map
    }
}

/// Starts the conclude invocation of `receipt`, from `consolidator` to
/// `tracker`, with the receipt's root block attached. Add proofs, expiry or a
/// nonce, then `build()`.
pub fn conclude_builder<'a>(
    consolidator: &'a dyn Signer,
    tracker: &Did,
    receipt: &Receipt,
) -> DelegationBuilder<'a> {
    Delegation::builder(consolidator, tracker.clone())
        .capability(Conclude::capability(
            tracker,
            &ConcludeNb {
                receipt: receipt.cid(),
                tally: Vec::new(),
            },
        ))
        .attach(receipt.block().clone())
}

/// The conclude invocation of `receipt`, from `consolidator` to `tracker`,
/// with `proofs` and the default expiry (30 s from now).
pub fn conclude_invocation(
    consolidator: &dyn Signer,
    tracker: &Did,
    receipt: &Receipt,
    proofs: impl IntoIterator<Item = Proof>,
) -> Result<Invocation, CodecError> {
    proofs
        .into_iter()
        .fold(conclude_builder(consolidator, tracker, receipt), |b, p| {
            b.proof(p)
        })
        .build()
}

/// The receipt `nb.receipt` names, from the blocks that came with `invocation`.
pub fn attached_receipt(invocation: &Invocation, nb: &ConcludeNb) -> Result<Receipt, CodecError> {
    Receipt::from_blocks(&nb.receipt, invocation.blocks().clone())
}

/// Success of `space/egress/conclude`: `{}`.
pub type ConcludeOk = Empty;

named_failure! {
    /// Failure of `space/egress/conclude`: `{name: "EgressConcludeError", message}`.
    ConcludeError = "EgressConcludeError"
}
