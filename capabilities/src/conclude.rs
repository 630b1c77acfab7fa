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
//! error       ConcludeError (see its # Format)
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
use crate::{Ability, Empty, Outcome, SchemaError};

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

/// Failure of `space/egress/conclude`.
///
/// # Format
/// ```text
/// Refused        { name: "EgressConcludeError", message: string }
/// Conflict       { name: "EgressConcludeError", message: string, count: int,
///                  conflicts: bytes }  16 bytes per retrieval counted by
///                                      another batch: the start of its
///                                      payload id's sha2-256 digest
/// UnknownSpaces  { name: "EgressConcludeError", message: string,
///                  spaces: [DID] (the first 1,024) }
/// Incomplete     { name: "TallyIncomplete", message: string, stack: string }
/// ```
/// A refusal the tracker explains tells a consolidator without the store
/// what to drop on its next run; `Incomplete` asks for the rest of a tally
/// sent in pages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConcludeError {
    /// The conclusion cannot be taken (not the consolidator, not the task,
    /// totals that do not add up…).
    #[error("{}: {message}", ConcludeError::NAME)]
    Refused {
        /// Why.
        message: String,
    },
    /// Retrievals of the tally that another batch counted meanwhile.
    #[error("{}: {message}", ConcludeError::NAME)]
    Conflict {
        /// How many.
        message: String,
        /// How many there are.
        count: u64,
        /// The first 16 bytes of each one's payload id digest, one after
        /// the other (see [`conflict_keys`]): no larger than the tally.
        conflicts: Vec<u8>,
    },
    /// Spaces of the tally the tracker does not bill.
    #[error("{}: {message}", ConcludeError::NAME)]
    UnknownSpaces {
        /// How many, with an example.
        message: String,
        /// The first of them.
        spaces: Vec<Did>,
    },
    /// A page of a tally sent in pages: staged, the rest still to come.
    #[error("{}: {message}", ConcludeError::INCOMPLETE)]
    Incomplete {
        /// How many chunks are in.
        message: String,
    },
}

impl ConcludeError {
    /// The name of every refusal.
    pub const NAME: &'static str = "EgressConcludeError";
    /// The name of a page answered "send the rest".
    pub const INCOMPLETE: &'static str = "TallyIncomplete";

    /// A refusal explained by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        ConcludeError::Refused {
            message: message.into(),
        }
    }

    /// The error name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            ConcludeError::Incomplete { .. } => Self::INCOMPLETE,
            _ => Self::NAME,
        }
    }
}

impl Outcome for ConcludeError {
    fn to_ipld(&self) -> Ipld {
        let mut map = match crate::schema::failure(self.name(), self.message()) {
            Ipld::Map(map) => map,
            _ => IpldMap::new(),
        };
        match self {
            ConcludeError::Refused { .. } => {}
            ConcludeError::Conflict {
                count, conflicts, ..
            } => {
                map.insert("count".into(), Ipld::Integer((*count).into()));
                map.insert("conflicts".into(), Ipld::Bytes(conflicts.clone()));
            }
            ConcludeError::UnknownSpaces { spaces, .. } => {
                let listed = spaces.iter().map(|s| Ipld::String(s.to_string())).collect();
                map.insert("spaces".into(), Ipld::List(listed));
            }
            ConcludeError::Incomplete { message } => {
                // As every failure of the core server: with its one-line stack.
                map.insert(
                    "stack".into(),
                    Ipld::String(format!("{}: {message}", Self::INCOMPLETE)),
                );
            }
        }
        Ipld::Map(map)
    }

    fn from_ipld(value: &Ipld) -> Result<Self, SchemaError> {
        let (name, message) = crate::schema::read_failure(value, &[Self::NAME, Self::INCOMPLETE])?;
        if name == Self::INCOMPLETE {
            return Ok(ConcludeError::Incomplete { message });
        }
        let fields = Fields::of("error", value)?;
        if let Ok(conflicts) = fields.bytes("conflicts") {
            if conflicts.len() % 16 != 0 {
                return Err(SchemaError::invalid(
                    "error.conflicts",
                    "not a whole number of 16-byte keys",
                ));
            }
            return Ok(ConcludeError::Conflict {
                message,
                count: fields.uint("count")?,
                conflicts: conflicts.to_vec(),
            });
        }
        if let Ok(spaces) = fields.list("spaces") {
            let spaces = spaces
                .iter()
                .enumerate()
                .map(|(i, s)| match s {
                    Ipld::String(did) => Did::parse(did).map_err(|e| {
                        SchemaError::invalid(format!("error.spaces[{i}]"), e.to_string())
                    }),
                    _ => Err(SchemaError::invalid(
                        format!("error.spaces[{i}]"),
                        "not a DID string",
                    )),
                })
                .collect::<Result<_, _>>()?;
            return Ok(ConcludeError::UnknownSpaces { message, spaces });
        }
        Ok(ConcludeError::Refused { message })
    }
}

/// The retrievals a conflict's `conflicts` bytes name: the first 16 bytes
/// of each one's payload id digest.
pub fn conflict_keys(conflicts: &[u8]) -> impl Iterator<Item = [u8; 16]> + '_ {
    conflicts
        .chunks_exact(16)
        .map(|key| <[u8; 16]>::try_from(key).unwrap_or_default())
}

impl ConcludeError {
    /// What the tracker said.
    pub fn message(&self) -> &str {
        match self {
            ConcludeError::Refused { message }
            | ConcludeError::Conflict { message, .. }
            | ConcludeError::UnknownSpaces { message, .. }
            | ConcludeError::Incomplete { message } => message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every refusal reads back as what was written, and keeps the wire
    /// shape a consolidator reads (`count` and `conflicts`, `spaces`, a
    /// `TallyIncomplete` with its stack).
    #[test]
    fn refusals_round_trip_with_their_fields() {
        let refusals = [
            ConcludeError::new("not the task"),
            ConcludeError::Conflict {
                message: "2 retrieval(s) were counted".into(),
                count: 2,
                conflicts: [[1; 16], [2; 16]].concat(),
            },
            ConcludeError::UnknownSpaces {
                message: "1 space(s)".into(),
                spaces: vec!["did:web:space.example".parse().unwrap()],
            },
            ConcludeError::Incomplete {
                message: "1 of 3 tally chunks received; send the rest".into(),
            },
        ];
        for refusal in refusals {
            let wire = refusal.to_ipld();
            assert_eq!(ConcludeError::from_ipld(&wire).unwrap(), refusal);
            let Ipld::Map(map) = &wire else {
                panic!("{wire:?}")
            };
            assert_eq!(map.get("name"), Some(&Ipld::String(refusal.name().into())));
        }
        let Ipld::Map(incomplete) = (ConcludeError::Incomplete {
            message: "m".into(),
        })
        .to_ipld() else {
            panic!()
        };
        assert_eq!(
            incomplete.get("stack"),
            Some(&Ipld::String("TallyIncomplete: m".into()))
        );
    }

    /// Conflict keys are read back in order; bytes that are not whole keys
    /// are refused, not cut.
    #[test]
    fn conflicts_are_whole_keys() {
        let keys = [[7; 16], [9; 16]];
        let conflict = ConcludeError::Conflict {
            message: "m".into(),
            count: 2,
            conflicts: keys.concat(),
        };
        let ConcludeError::Conflict { conflicts, .. } =
            ConcludeError::from_ipld(&conflict.to_ipld()).unwrap()
        else {
            panic!()
        };
        assert_eq!(conflict_keys(&conflicts).collect::<Vec<_>>(), keys);
        let Ipld::Map(mut wire) = conflict.to_ipld() else {
            panic!()
        };
        wire.insert("conflicts".into(), Ipld::Bytes(vec![1; 17]));
        assert!(ConcludeError::from_ipld(&Ipld::Map(wire)).is_err());
    }
}
