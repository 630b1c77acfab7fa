//! A dishonest storage node: it re-encodes, re-signs, repeats and rearranges
//! the real retrievals it served, to be paid for more than it served.
//!
//! Everything here is what a node can do without any client's key: it holds
//! the signed retrieve invocations, its own key, and every delegation it has
//! seen.

use cid::Cid;
use ucanto::dag::{cid_of, decode_cbor, encode_cbor, Block, Ipld, CAR, DAG_CBOR};
use ucanto::principal::{Ed25519Signer, Signer};
use ucanto::receipt::{Ran, Receipt, ReceiptParts};
use ucanto::ucan::Invocation;

/// One way to re-encode a signed UCAN without its issuer's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// `nbf: 0` written out (the signed payload omits a zero `nbf`).
    NotBeforeZero,
    /// `fct: []` written out (the payload omits empty facts).
    EmptyFacts,
    /// `nnc: ""` added or removed (the payload omits an empty nonce); only
    /// for a UCAN without a nonce or with an empty one.
    EmptyNonce,
    /// `prf: []` added or removed (go-ucanto leaves it out); only for a UCAN
    /// without proofs.
    EmptyProofs,
    /// The issuer, a did:key, in the generic DID byte form (`9d 1a "key:…"`).
    IssuerGenericForm,
    /// The audience, a did:key, in the generic DID byte form.
    AudienceGenericForm,
    /// The varsig algorithm varint padded to a non-minimal form.
    PaddedVarsig,
    /// The issuer's key-type varint padded (`ed 81 00` for `ed 01`).
    PaddedKeyVarint,
    /// `exp` as an 8-byte integer (non-canonical dag-cbor).
    WideInteger,
}

impl Variant {
    /// Every variant.
    pub const ALL: [Variant; 9] = [
        Variant::NotBeforeZero,
        Variant::EmptyFacts,
        Variant::EmptyNonce,
        Variant::EmptyProofs,
        Variant::IssuerGenericForm,
        Variant::AudienceGenericForm,
        Variant::PaddedVarsig,
        Variant::PaddedKeyVarint,
        Variant::WideInteger,
    ];
}

/// The root block of `invocation` re-encoded as `variant`, or `None` when the
/// variant does not apply (e.g. toggling `prf` on a UCAN that has proofs).
pub fn reencode(invocation: &Invocation, variant: Variant) -> Option<Block> {
    let Ipld::Map(mut map) = decode_cbor(&invocation.block().bytes).ok()? else {
        return None;
    };
    let generic = |key: &str, map: &mut ucanto::dag::IpldMap| {
        let did = match key {
            "iss" => invocation.issuer(),
            _ => invocation.audience(),
        };
        let rest = did.as_str().strip_prefix("did:")?;
        let mut bytes = vec![0x9d, 0x1a];
        bytes.extend_from_slice(rest.as_bytes());
        map.insert(key.into(), Ipld::Bytes(bytes));
        Some(())
    };
    match variant {
        Variant::NotBeforeZero => {
            map.insert("nbf".into(), Ipld::Integer(0));
        }
        Variant::EmptyFacts => {
            if map.contains_key("fct") {
                return None;
            }
            map.insert("fct".into(), Ipld::List(Vec::new()));
        }
        Variant::EmptyNonce => match map.get("nnc") {
            None => {
                map.insert("nnc".into(), Ipld::String(String::new()));
            }
            Some(Ipld::String(nonce)) if nonce.is_empty() => {
                map.remove("nnc");
            }
            Some(_) => return None,
        },
        Variant::EmptyProofs => match map.get("prf") {
            None => {
                map.insert("prf".into(), Ipld::List(Vec::new()));
            }
            Some(Ipld::List(proofs)) if proofs.is_empty() => {
                map.remove("prf");
            }
            Some(_) => return None,
        },
        Variant::IssuerGenericForm => generic("iss", &mut map)?,
        Variant::AudienceGenericForm => generic("aud", &mut map)?,
        Variant::PaddedVarsig => {
            let Some(Ipld::Bytes(signature)) = map.get("s") else {
                return None;
            };
            // `ed a1 03` (0xd0ed) → `ed a1 83 00`.
            let mut padded = signature.get(..3)?.to_vec();
            *padded.last_mut()? |= 0x80;
            padded.push(0x00);
            padded.extend_from_slice(&signature[3..]);
            map.insert("s".into(), Ipld::Bytes(padded));
        }
        Variant::PaddedKeyVarint => {
            let Some(Ipld::Bytes(issuer)) = map.get("iss") else {
                return None;
            };
            if issuer.get(..2)? != [0xed, 0x01] {
                return None;
            }
            let mut padded = vec![0xed, 0x81, 0x00];
            padded.extend_from_slice(&issuer[2..]);
            map.insert("iss".into(), Ipld::Bytes(padded));
        }
        Variant::WideInteger => {
            let bytes = encode_cbor(&Ipld::Map(map)).ok()?;
            // `63 "exp" 1a xx xx xx xx` → `63 "exp" 1b 00 00 00 00 xx xx xx xx`.
            let at = bytes.windows(5).position(|w| w == b"\x63exp\x1a")?;
            let mut wide = bytes[..at + 4].to_vec();
            wide.push(0x1b);
            wide.extend_from_slice(&[0; 4]);
            wide.extend_from_slice(&bytes[at + 5..]);
            return Some(raw_block(wide));
        }
    }
    Some(raw_block(encode_cbor(&Ipld::Map(map)).ok()?))
}

/// A dag-cbor block over exactly `bytes`, whatever they decode to.
pub fn raw_block(bytes: Vec<u8>) -> Block {
    Block {
        cid: cid_of(DAG_CBOR, &bytes),
        bytes: bytes.into(),
    }
}

/// A receipt archive, signed by `node`, saying it ran the invocation whose
/// root block is `invocation` (any bytes) successfully; `carried` are the
/// other blocks the archive holds (the invocation's proofs). A non-empty
/// `tag` goes in the receipt's `meta`: another receipt for the same run.
pub fn archive_for(
    node: &Ed25519Signer,
    invocation: &Block,
    carried: &[Block],
    tag: &str,
) -> Vec<u8> {
    let mut parts = ReceiptParts::new(Ran::Link(invocation.cid), Ok(Ipld::Map(Default::default())));
    if !tag.is_empty() {
        parts.meta.insert("tag".into(), Ipld::String(tag.into()));
    }
    let receipt = Receipt::issue(node, parts).expect("receipt");
    let mut blocks: Vec<Block> = carried.to_vec();
    blocks.push(invocation.clone());
    blocks.extend(receipt.export());
    ucanto::dag::write_archive("ucan/receipt@0.9.1", receipt.cid(), blocks).expect("archive")
}

/// The blocks an invocation carries besides its root (its proofs).
pub fn carried_blocks(invocation: &Invocation) -> Vec<Block> {
    invocation
        .export()
        .into_iter()
        .filter(|b| b.cid != invocation.cid())
        .collect()
}

/// A batch in the Piri format of the given receipt archives; returns (CID, bytes).
pub fn batch_of(archives: &[Vec<u8>]) -> (Cid, Vec<u8>) {
    let blocks = archives.iter().map(|a| (cid_of(CAR, a), a.clone()));
    let bytes = ucanto::car::encode(&[], blocks);
    (cid_of(CAR, &bytes), bytes)
}

/// The node re-issues `invocation` under its own key (same capability,
/// proofs and expiry): it now claims the retrieval was authorized by itself.
pub fn reissued_by(signer: &dyn Signer, invocation: &Invocation) -> Invocation {
    let mut builder = ucanto::ucan::Delegation::builder(signer, invocation.audience().clone());
    for capability in invocation.capabilities() {
        builder = builder.capability(capability.clone());
    }
    builder = match invocation.expiration() {
        Some(exp) => builder.expiration(exp),
        None => builder.no_expiration(),
    };
    for proof in invocation.proofs() {
        builder = builder.proof(proof);
    }
    builder.build().expect("reissued invocation")
}
