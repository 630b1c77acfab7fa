//! `space/content/retrieve`: a client reads a byte range of a blob from a
//! storage node. Batches are made of these receipts; [`egress_bytes`] is what
//! one of them counts for.
//!
//! # Format
//! ```text
//! capability  { can: "space/content/retrieve", with: <space DID, did:key>,
//!               nb: { blob: { digest: bytes (multihash) },
//!                     range: [start: int, end: int] } }      both inclusive
//! ok          {}
//! error       { name: "NotFound" | "RangeNotSatisfiable", message: string }
//! ```
//! As in `@storacha/capabilities` 2.3.1 (`space/content.js`): both `blob` and
//! `range` are required, the range is a 2-tuple of integers `> -1`; a proof
//! covers an invocation with the same `with` (exactly), the same digest, and
//! a range inside its own. Stricter than JS, as go-libstoracha: the digest
//! must be a well-formed multihash and `start <= end`.

use cid::Cid;
use ucanto::dag::{Ipld, IpldMap};
use ucanto::principal::Did;
use ucanto::receipt::Receipt;
use ucanto::ucan::{Capability, Invocation};
use ucanto::varint;

use crate::schema::{self, nb_or_empty, Fields};
use crate::{Ability, Empty, Outcome, Parsed, SchemaError};
use ucanto::validator::Violation;

/// The `space/content/retrieve` capability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retrieve;

/// Caveats of `space/content/retrieve`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrieveNb {
    /// The blob.
    pub blob: Blob,
    /// The bytes asked for.
    pub range: ByteRange,
}

/// `nb.blob`: which blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// Multihash of the blob.
    pub digest: Vec<u8>,
}

/// An inclusive byte range, `start <= end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
}

impl ByteRange {
    /// `[start, end]`; fails, naming `nb.range`, if `end < start`.
    pub fn new(start: u64, end: u64) -> Result<Self, SchemaError> {
        if end < start {
            return Err(SchemaError::invalid(
                "nb.range",
                format!("end {end} is before start {start}"),
            ));
        }
        Ok(ByteRange { start, end })
    }

    /// Number of bytes: `end − start + 1`; `None` for `[0, u64::MAX]`.
    pub fn size(&self) -> Option<u64> {
        (self.end - self.start).checked_add(1)
    }

    /// Whether `other` lies within this range.
    pub fn contains(&self, other: &ByteRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }
}

impl std::fmt::Display for ByteRange {
    /// Like JS `${range}`: `0,1023`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.start, self.end)
    }
}

/// Reads `nb.range` without checking the order of its ends.
fn read_range(fields: &Fields<'_>) -> Result<(u64, u64), SchemaError> {
    // Paths are made only for an error: this runs for every receipt.
    let end = |i: usize, value: &Ipld| {
        schema::uint("", value)
            .or_else(|_| schema::uint(&format!("{}[{i}]", fields.path("range")), value))
    };
    match fields.list("range")? {
        [start, stop] => Ok((end(0, start)?, end(1, stop)?)),
        items => Err(SchemaError::invalid(
            fields.path("range"),
            format!("expected [start, end], got {} elements", items.len()),
        )),
    }
}

/// Checks that `digest` is a multihash: `varint code ‖ varint length ‖ digest`.
fn check_multihash(digest: &[u8]) -> Result<(), SchemaError> {
    let bad = || SchemaError::invalid("nb.blob.digest", "not a multihash");
    let (_, a) = varint::decode(digest).map_err(|_| bad())?;
    let (len, b) = varint::decode(&digest[a..]).map_err(|_| bad())?;
    if (digest.len() - a - b) as u64 != len {
        return Err(bad());
    }
    Ok(())
}

fn base58(bytes: &[u8]) -> String {
    multibase::encode(multibase::Base::Base58Btc, bytes)
}

impl Ability for Retrieve {
    const CAN: &'static str = "space/content/retrieve";
    type Nb = RetrieveNb;

    fn parse_with(with: &str) -> Result<Did, SchemaError> {
        schema::did("with", with, Some("key"))
    }

    fn parse_nb(nb: Option<&IpldMap>) -> Result<RetrieveNb, SchemaError> {
        let fields = Fields::new("nb", nb_or_empty(nb));
        let digest = fields.fields("blob")?.bytes("digest")?;
        check_multihash(digest)?;
        let (start, end) = read_range(&fields)?;
        Ok(RetrieveNb {
            blob: Blob {
                digest: digest.to_vec(),
            },
            range: ByteRange::new(start, end)?,
        })
    }

    fn to_nb(nb: &RetrieveNb) -> IpldMap {
        let blob = IpldMap::from([("digest".to_string(), Ipld::Bytes(nb.blob.digest.clone()))]);
        let range = vec![
            Ipld::Integer(nb.range.start.into()),
            Ipld::Integer(nb.range.end.into()),
        ];
        IpldMap::from([
            ("blob".to_string(), Ipld::Map(blob)),
            ("range".to_string(), Ipld::List(range)),
        ])
    }

    /// JS `equalWith`, then `equalDigest`, then `equalByteRange`.
    fn derives(
        claimed: &Parsed<RetrieveNb>,
        delegated: &Parsed<RetrieveNb>,
    ) -> Result<(), Violation> {
        if claimed.with != delegated.with {
            return Err(Violation::new(format!(
                "Can not derive {} with {} from {}",
                Self::CAN,
                claimed.with,
                delegated.with
            )));
        }
        if claimed.nb.blob.digest != delegated.nb.blob.digest {
            return Err(Violation::new(format!(
                "digest {} violates imposed {} constraint.",
                base58(&claimed.nb.blob.digest),
                base58(&delegated.nb.blob.digest)
            )));
        }
        if !delegated.nb.range.contains(&claimed.nb.range) {
            return Err(Violation::new(format!(
                "byte range [{}] violates imposed [{}] constraint.",
                claimed.nb.range, delegated.nb.range
            )));
        }
        Ok(())
    }
}

/// Success of `space/content/retrieve`: `{}`.
pub type RetrieveOk = Empty;

/// Failure of `space/content/retrieve`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetrieveError {
    /// The blob is not stored here.
    #[error("NotFound: {message}")]
    NotFound {
        /// What went wrong.
        message: String,
    },
    /// The range is outside the blob.
    #[error("RangeNotSatisfiable: {message}")]
    RangeNotSatisfiable {
        /// What went wrong.
        message: String,
    },
}

impl RetrieveError {
    /// The error name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            RetrieveError::NotFound { .. } => "NotFound",
            RetrieveError::RangeNotSatisfiable { .. } => "RangeNotSatisfiable",
        }
    }

    fn message(&self) -> &str {
        match self {
            RetrieveError::NotFound { message }
            | RetrieveError::RangeNotSatisfiable { message } => message,
        }
    }
}

impl Outcome for RetrieveError {
    fn to_ipld(&self) -> Ipld {
        schema::failure(self.name(), self.message())
    }

    fn from_ipld(value: &Ipld) -> Result<Self, SchemaError> {
        let (name, message) = schema::read_failure(value, &["NotFound", "RangeNotSatisfiable"])?;
        Ok(match name {
            "NotFound" => RetrieveError::NotFound { message },
            _ => RetrieveError::RangeNotSatisfiable { message },
        })
    }
}

/// Why a receipt counts for no egress.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EgressError {
    /// The retrieval failed (`out.error`); `name` is the error name when it has one.
    #[error("receipt {receipt} is an error receipt ({})", name.as_deref().unwrap_or("unnamed error"))]
    Failed {
        /// The receipt.
        receipt: Cid,
        /// The error's name.
        name: Option<String>,
    },
    /// The invocation the receipt ran is not among its blocks.
    #[error("the invocation {0} the receipt ran is not among its blocks")]
    MissingInvocation(Cid),
    /// The receipt ran something other than one `space/content/retrieve`.
    #[error("the receipt ran {can:?}, not space/content/retrieve")]
    NotRetrieve {
        /// The abilities invoked, comma-separated.
        can: String,
    },
    /// `nb.range` ends before it starts.
    #[error("nb.range: end {end} is before start {start}")]
    EndBeforeStart {
        /// First byte.
        start: u64,
        /// Last byte.
        end: u64,
    },
    /// `[0, u64::MAX]`: 2^64 bytes do not fit in a `u64`.
    #[error("nb.range: [0, {}] is 2^64 bytes", u64::MAX)]
    Overflow,
    /// The retrieve capability is malformed.
    #[error("malformed space/content/retrieve: {0}")]
    Malformed(#[source] SchemaError),
}

/// The `space/content/retrieve` capability a receipt ran: its invocation must
/// be among the receipt's blocks and invoke exactly that one capability.
pub fn retrieve_capability(receipt: &Receipt) -> Result<Capability, EgressError> {
    let invocation = receipt
        .ran()
        .ok_or(EgressError::MissingInvocation(receipt.ran_cid()))?;
    retrieve_capability_of(&invocation).cloned()
}

/// The `space/content/retrieve` capability `invocation` invokes.
fn retrieve_capability_of(invocation: &Invocation) -> Result<&Capability, EgressError> {
    match invocation.capabilities() {
        [capability] if capability.can == Retrieve::CAN => Ok(capability),
        caps => {
            let can = caps
                .iter()
                .map(|c| c.can.as_str())
                .collect::<Vec<_>>()
                .join(",");
            Err(EgressError::NotRetrieve { can })
        }
    }
}

/// Bytes served by an ok receipt of a `space/content/retrieve` invocation:
/// `end − start + 1` of its range. The invocation must be among the
/// receipt's blocks (as in receipt archives).
///
/// This does not check who issued the receipt; the caller decides whom to trust.
pub fn egress_bytes(receipt: &Receipt) -> Result<u64, EgressError> {
    if let Some(failed) = failure(receipt) {
        return Err(failed);
    }
    let invocation = receipt
        .ran()
        .ok_or(EgressError::MissingInvocation(receipt.ran_cid()))?;
    egress_bytes_of(receipt, &invocation)
}

/// [`egress_bytes`] of a receipt whose invocation the caller decoded already.
pub fn egress_bytes_of(receipt: &Receipt, invocation: &Invocation) -> Result<u64, EgressError> {
    egress_of(receipt, invocation).map(|(_, bytes)| bytes)
}

/// [`egress_bytes_of`], with the retrieve capability it read (its space is
/// `with`): read once for both.
pub fn egress_of(
    receipt: &Receipt,
    invocation: &Invocation,
) -> Result<(Parsed<RetrieveNb>, u64), EgressError> {
    if let Some(failed) = failure(receipt) {
        return Err(failed);
    }
    let capability = retrieve_capability_of(invocation)?;
    let (start, end) = read_range(&Fields::new("nb", nb_or_empty(capability.nb.as_ref())))
        .map_err(EgressError::Malformed)?;
    if end < start {
        return Err(EgressError::EndBeforeStart { start, end });
    }
    let parsed = Retrieve::parse(capability).map_err(EgressError::Malformed)?;
    let bytes = parsed.nb.range.size().ok_or(EgressError::Overflow)?;
    Ok((parsed, bytes))
}

/// A failed retrieval served nothing: the error saying so, if it failed.
fn failure(receipt: &Receipt) -> Option<EgressError> {
    let error = receipt.out().as_ref().err()?;
    let name = match error {
        Ipld::Map(map) => match map.get("name") {
            Some(Ipld::String(name)) => Some(name.clone()),
            _ => None,
        },
        _ => None,
    };
    Some(EgressError::Failed {
        receipt: receipt.cid(),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Vec<u8> {
        let mut d = vec![0x12, 0x20];
        d.extend([7; 32]);
        d
    }

    fn nb(range: Vec<Ipld>) -> IpldMap {
        IpldMap::from([
            (
                "blob".to_string(),
                Ipld::Map(IpldMap::from([(
                    "digest".to_string(),
                    Ipld::Bytes(digest()),
                )])),
            ),
            ("range".to_string(), Ipld::List(range)),
        ])
    }

    #[test]
    fn malformed_nb_names_the_field() {
        let int = |i: i128| Ipld::Integer(i);
        let cases: Vec<(IpldMap, &str)> = vec![
            (nb(vec![int(-1), int(3)]), "nb.range[0]: -1 is negative"),
            (nb(vec![int(0), int(-3)]), "nb.range[1]: -3 is negative"),
            (
                nb(vec![int(5), int(3)]),
                "nb.range: end 3 is before start 5",
            ),
            (
                nb(vec![int(0)]),
                "nb.range: expected [start, end], got 1 elements",
            ),
            (
                nb(vec![int(0), Ipld::Float(1.5)]),
                "nb.range[1]: expected an integer",
            ),
            (
                nb(vec![int(0), int(1 << 64)]),
                "nb.range[1]: 18446744073709551616 does not fit in 64 bits",
            ),
            (
                IpldMap::from([("range".to_string(), Ipld::List(vec![int(0), int(1)]))]),
                "nb.blob: missing",
            ),
            (
                IpldMap::from([("blob".to_string(), Ipld::Map(IpldMap::new()))]),
                "nb.blob.digest: missing",
            ),
            (
                IpldMap::from([(
                    "blob".to_string(),
                    Ipld::Map(IpldMap::from([(
                        "digest".to_string(),
                        Ipld::Bytes(digest()),
                    )])),
                )]),
                "nb.range: missing",
            ),
            (
                IpldMap::from([
                    (
                        "blob".to_string(),
                        Ipld::Map(IpldMap::from([(
                            "digest".to_string(),
                            Ipld::Bytes(vec![0x12, 0x20, 1]),
                        )])),
                    ),
                    ("range".to_string(), Ipld::List(vec![int(0), int(1)])),
                ]),
                "nb.blob.digest: not a multihash",
            ),
            (
                IpldMap::from([
                    (
                        "blob".to_string(),
                        Ipld::Map(IpldMap::from([(
                            "digest".to_string(),
                            Ipld::String("x".into()),
                        )])),
                    ),
                    ("range".to_string(), Ipld::List(vec![int(0), int(1)])),
                ]),
                "nb.blob.digest: expected bytes",
            ),
        ];
        for (nb, message) in cases {
            assert_eq!(
                Retrieve::parse_nb(Some(&nb)).unwrap_err().to_string(),
                message
            );
        }
        assert_eq!(
            Retrieve::parse_nb(Some(&nb(vec![int(3), int(3)])))
                .unwrap()
                .range
                .size(),
            Some(1)
        );
    }

    #[test]
    fn with_must_be_a_did_key() {
        assert!(
            Retrieve::parse_with("did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX")
                .is_ok()
        );
        for with in [
            "did:web:space.example",
            "did:mailto:example.com:alice",
            "space",
            "did:key:nope",
        ] {
            assert_eq!(
                Retrieve::parse_with(with).unwrap_err().field(),
                "with",
                "{with}"
            );
        }
    }

    #[test]
    fn range_arithmetic() {
        assert_eq!(ByteRange::new(0, 1023).unwrap().size(), Some(1024));
        assert_eq!(ByteRange::new(0, u64::MAX).unwrap().size(), None);
        assert_eq!(ByteRange::new(1, u64::MAX).unwrap().size(), Some(u64::MAX));
        let outer = ByteRange::new(0, 1023).unwrap();
        assert!(outer.contains(&ByteRange::new(100, 199).unwrap()));
        assert!(outer.contains(&outer));
        assert!(!outer.contains(&ByteRange::new(0, 1024).unwrap()));
        assert!(!ByteRange::new(1, 10)
            .unwrap()
            .contains(&ByteRange::new(0, 5).unwrap()));
    }
}
