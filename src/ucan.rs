//! UCAN 0.9.1 delegations and invocations in ucanto's dag-cbor form.
//!
//! An invocation is a delegation addressed to the service that should run it,
//! so both are [`Delegation`]s. A decoded delegation keeps the exact bytes it
//! arrived as; its CID is never recomputed from a re-encoding.
//!
//! # Format
//! ```text
//! { v: "0.9.1", iss: bytes, aud: bytes, att: [{can, with, nb?}], exp: int | null,
//!   prf: [Link], nbf?: int (omitted when 0), nnc?: string, fct?: [map] (omitted when empty),
//!   s: varsig bytes }
//! ```
//! The signature covers `base64url(header) "." base64url(payload)`, where the
//! header is `{"alg":"EdDSA","typ":"JWT","ucv":"0.9.1"}` and the payload is the
//! dag-json of `{iss, aud, att, exp, prf, fct?, nnc?, nbf?}` with DIDs and
//! proof CIDs as strings.
//!
//! # Layout
//! This module holds [`Delegation`] (a UCAN with its blocks, its proofs and
//! archives); `capability` one `{can, with, nb?}`; `data` the decoded fields
//! ([`UcanData`]), their canonical form and the signing payload; `builder`
//! [`DelegationBuilder`], which signs new ones.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cid::Cid;

use crate::dag::{Block, BlockStore, CodecError, DAG_CBOR};
use crate::memo::Memo;
use crate::principal::{Did, Signer, Verifier};

/// The UCAN version ucanto speaks.
pub const UCAN_VERSION: &str = "0.9.1";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

mod builder;
use builder::Expiration;
mod capability;
mod data;

pub use builder::DelegationBuilder;
pub use capability::Capability;
pub use data::UcanData;

/// A proof given to a builder: a whole delegation (embedded) or just its link.
#[derive(Clone, Debug)]
pub enum Proof {
    /// A delegation whose blocks travel with the new UCAN.
    Delegation(Delegation),
    /// A link to a delegation the recipient is expected to have.
    Link(Cid),
}

impl From<Delegation> for Proof {
    fn from(d: Delegation) -> Self {
        Proof::Delegation(d)
    }
}

impl From<Cid> for Proof {
    fn from(c: Cid) -> Self {
        Proof::Link(c)
    }
}

/// A signed UCAN with the blocks it carries (embedded proofs, attached blocks).
#[derive(Clone, Debug)]
pub struct Delegation {
    root: Block,
    data: Arc<UcanData>,
    blocks: Arc<BlockStore>,
    /// The signing payload, made once: it is needed to verify the signature
    /// and to name the retrieval ([`Delegation::payload_id`]).
    payload: Arc<std::sync::OnceLock<Vec<u8>>>,
    /// Whether the block is what JS or Go writes for its fields.
    canonical: bool,
}

/// Most proofs [`Delegation::proofs`] remembers decoded (~1 KiB each).
pub const DECODED_PROOFS: usize = 256;

/// Largest proof block [`Delegation::proofs`] remembers decoded: with
/// [`DECODED_PROOFS`], the memo holds a few MiB at most.
pub const DECODED_PROOF_BYTES: usize = 4096;

/// An invocation is a delegation to the service that runs it.
pub type Invocation = Delegation;

impl PartialEq for Delegation {
    fn eq(&self, other: &Self) -> bool {
        self.root == other.root
    }
}

impl Delegation {
    /// Starts building a UCAN signed by `issuer` for `audience`.
    pub fn builder(issuer: &dyn Signer, audience: Did) -> DelegationBuilder<'_> {
        DelegationBuilder {
            issuer,
            audience,
            capabilities: Vec::new(),
            expiration: Expiration::Default,
            not_before: None,
            nonce: None,
            facts: Vec::new(),
            proofs: Vec::new(),
            attached: Vec::new(),
        }
    }

    /// Views the UCAN named `root` among `blocks`.
    pub fn from_blocks(root: &Cid, blocks: Arc<BlockStore>) -> Result<Self, CodecError> {
        if root.codec() != DAG_CBOR {
            return Err(CodecError::schema(
                "ucan",
                format!("{root} is not dag-cbor"),
            ));
        }
        let block = blocks.block(root)?;
        let (data, canonical) = match UcanData::read_canonical(&block.bytes) {
            Some(read) => read,
            None => {
                let value = block.decode()?;
                let data = UcanData::from_ipld(&value)?;
                let canonical = data.is_written_as(&value);
                (data, canonical)
            }
        };
        Ok(Delegation {
            root: block,
            canonical,
            data: Arc::new(data),
            blocks,
            payload: Default::default(),
        })
    }

    /// Decodes a UCAN from a single block.
    pub fn from_block(block: Block) -> Result<Self, CodecError> {
        let cid = block.cid;
        Self::from_blocks(&cid, Arc::new(BlockStore::from_iter([block])))
    }

    /// The UCAN's CID.
    pub fn cid(&self) -> Cid {
        self.root.cid
    }

    /// The UCAN's root block.
    pub fn block(&self) -> &Block {
        &self.root
    }

    /// The decoded fields.
    pub fn data(&self) -> &UcanData {
        &self.data
    }

    /// The issuer.
    pub fn issuer(&self) -> &Did {
        &self.data.issuer
    }

    /// The audience.
    pub fn audience(&self) -> &Did {
        &self.data.audience
    }

    /// The capabilities.
    pub fn capabilities(&self) -> &[Capability] {
        &self.data.capabilities
    }

    /// Expiry (Unix seconds); `None` never expires.
    pub fn expiration(&self) -> Option<u64> {
        self.data.expiration
    }

    /// Not-before (Unix seconds).
    pub fn not_before(&self) -> Option<u64> {
        self.data.not_before
    }

    /// The blocks this UCAN was found among (or built with).
    pub fn blocks(&self) -> &Arc<BlockStore> {
        &self.blocks
    }

    /// Proofs: embedded delegations where their blocks are present, links otherwise.
    pub fn proofs(&self) -> Vec<Proof> {
        self.data
            .proofs
            .iter()
            .map(
                |cid| match Delegation::proof_from_blocks(cid, self.blocks.clone()) {
                    Ok(d) => Proof::Delegation(d),
                    Err(_) => Proof::Link(*cid),
                },
            )
            .collect()
    }

    /// As [`Delegation::from_blocks`], remembering what a block decodes to
    /// (by the SHA-256 of its bytes, so that no CID can stand for other
    /// bytes, and no entry keeps the buffer the block was cut from): the
    /// invocations a service sees mostly share their proofs. Blocks over
    /// [`DECODED_PROOF_BYTES`] are decoded each time: honest proofs are far
    /// smaller, and padded ones must not fill the memo with their bytes.
    fn proof_from_blocks(root: &Cid, blocks: Arc<BlockStore>) -> Result<Self, CodecError> {
        type Decoded = (Arc<UcanData>, Arc<std::sync::OnceLock<Vec<u8>>>, bool);
        static DECODED: Memo<[u8; 32], Decoded> = Memo::new(DECODED_PROOFS);
        let block = blocks.block(root)?;
        if root.codec() != DAG_CBOR || block.bytes.len() > DECODED_PROOF_BYTES {
            return Self::from_blocks(root, blocks);
        }
        let key: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&block.bytes).into();
        let (data, payload, canonical) = DECODED.get_or_try_insert_with(&key, |_| {
            let decoded = Self::from_blocks(root, blocks.clone())?;
            Ok::<Decoded, CodecError>((decoded.data, decoded.payload, decoded.canonical))
        })?;
        Ok(Delegation {
            root: block,
            data,
            blocks,
            payload,
            canonical,
        })
    }

    /// Whether the block is exactly what JS @ucanto or go-ucanto writes for
    /// its fields. The signature covers the fields, not the block, so a
    /// UCAN can be re-encoded (`nbf: 0`, `fct: []` written out) under a new
    /// CID that still verifies; a service that counts UCANs refuses those.
    pub fn is_canonical(&self) -> bool {
        self.canonical
    }

    /// Names what the issuer signed: a CIDv1 (codec raw, sha2-256) of the
    /// signing payload. Every encoding of one signed UCAN has the same
    /// payload id, whatever its block CID, so this, not [`Delegation::cid`],
    /// is the key of "counted once".
    pub fn payload_id(&self) -> Result<Cid, CodecError> {
        Ok(crate::dag::cid_of(crate::dag::RAW, self.signing_payload()?))
    }

    /// The exact bytes the issuer signed ([`UcanData::signing_payload`]),
    /// made on first use and kept.
    pub fn signing_payload(&self) -> Result<&[u8], CodecError> {
        if let Some(payload) = self.payload.get() {
            return Ok(payload);
        }
        let payload = self.data.signing_payload()?;
        Ok(self.payload.get_or_init(|| payload))
    }

    /// Whether `verifier` is the issuer and the signature is theirs.
    pub fn verify_signature(&self, verifier: &dyn Verifier) -> bool {
        verifier.did() == &self.data.issuer
            && self
                .signing_payload()
                .map(|payload| verifier.verify(payload, &self.data.signature))
                .unwrap_or(false)
    }

    /// The blocks to send with this UCAN, in the order JS @ucanto exports them:
    /// embedded proofs depth-first, then attached blocks, then the root.
    pub fn export(&self) -> Vec<Block> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        self.export_into(&mut out, &mut seen, true);
        out
    }

    fn export_into(&self, out: &mut Vec<Block>, seen: &mut BTreeSet<Cid>, with_attached: bool) {
        for cid in &self.data.proofs {
            // A proof already exported brought its own proofs along; walking it
            // again would make diamond-shaped proof DAGs exponential.
            if seen.contains(cid) {
                continue;
            }
            if let Ok(proof) = Delegation::from_blocks(cid, self.blocks.clone()) {
                proof.export_into(out, seen, false);
            }
        }
        if with_attached {
            for cid in self.data.attached_links() {
                if let Ok(block) = self.blocks.block(&cid) {
                    push_unique(out, seen, block);
                }
            }
        }
        push_unique(out, seen, self.root.clone());
    }

    /// The attached blocks present (links in `nb` and facts whose blocks travel along).
    pub fn attached_blocks(&self) -> Vec<Block> {
        self.data
            .attached_links()
            .iter()
            .filter_map(|cid| self.blocks.block(cid).ok())
            .collect()
    }

    /// Encodes the delegation as a CAR archive with root `{"ucan@0.9.1": Link}`,
    /// the form JS `delegation.archive()` produces.
    pub fn archive(&self) -> Result<Vec<u8>, CodecError> {
        crate::dag::write_archive(
            &format!("ucan@{}", self.data.version),
            self.cid(),
            self.export(),
        )
    }

    /// Reads a delegation from a CAR archive made by [`Delegation::archive`] or JS.
    pub fn extract(archive: &[u8]) -> Result<Self, CodecError> {
        let (link, store) = crate::dag::read_archive(archive, "ucan@0.9.1")?;
        Delegation::from_blocks(&link, store)
    }
}

fn push_unique(out: &mut Vec<Block>, seen: &mut BTreeSet<Cid>, block: Block) {
    if seen.insert(block.cid) {
        out.push(block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::{Ipld, IpldMap};
    use crate::principal::fixtures::{alice, bob};
    use crate::principal::Ed25519Signer;

    /// Alice lets Bob `test/echo` on her DID until `exp`.
    fn echo(exp: u64) -> Delegation {
        Delegation::builder(&alice(), bob().did().clone())
            .capability(Capability::new("test/echo", alice().did().as_str()))
            .expiration(exp)
            .build()
            .unwrap()
    }

    /// The block of `d` with its map changed by `f`, decoded again.
    fn reencoded(d: &Delegation, f: impl FnOnce(&mut IpldMap)) -> Result<Delegation, CodecError> {
        let Ipld::Map(mut map) = d.block().decode().unwrap() else {
            unreachable!()
        };
        f(&mut map);
        Delegation::from_block(Block::encode(&Ipld::Map(map)).unwrap())
    }

    /// JS's and Go's encodings of one signed UCAN are canonical; written-out
    /// defaults are not; all share one payload id, and still verify.
    #[test]
    fn canonical_shapes_and_payload_id() {
        let d = echo(4102444800);
        assert!(d.is_canonical());
        let id = d.payload_id().unwrap();
        assert_eq!(id.codec(), crate::dag::RAW);

        // go-ucanto leaves an empty `prf` out; JS writes an empty nonce.
        let go = reencoded(&d, |m| {
            m.remove("prf");
        })
        .unwrap();
        let empty_nonce = reencoded(&d, |m| {
            m.insert("nnc".into(), Ipld::String(String::new()));
        })
        .unwrap();
        // Defaults written out: decodable and verifiable, not canonical.
        let nbf = reencoded(&d, |m| {
            m.insert("nbf".into(), Ipld::Integer(0));
        })
        .unwrap();
        let facts = reencoded(&d, |m| {
            m.insert("fct".into(), Ipld::List(Vec::new()));
        })
        .unwrap();
        for (name, variant, canonical) in [
            ("go", &go, true),
            ("empty nonce", &empty_nonce, true),
            ("nbf 0", &nbf, false),
            ("fct []", &facts, false),
        ] {
            assert_ne!(variant.cid(), d.cid(), "{name}");
            assert_eq!(variant.is_canonical(), canonical, "{name}");
            assert_eq!(variant.payload_id().unwrap(), id, "{name}");
            assert!(
                variant.verify_signature(alice().verifier().as_ref()),
                "{name}"
            );
        }
        // Another signed payload, another id.
        let other = echo(4102444801);
        assert_ne!(other.payload_id().unwrap(), id);
    }

    /// The signing payload written directly is the dag-json of the UCAN's
    /// JSON form, for every field set (nb and facts with keys JS sorts
    /// apart from Rust, escapes, a nonce, nbf, several proofs).
    #[test]
    fn signing_payload_is_the_dag_json_of_the_payload() {
        use base64::Engine;
        let nb = IpldMap::from([
            ("z".to_string(), Ipld::Integer(1)),
            ("\u{ffff}".to_string(), Ipld::String("a\"b\\c\u{1}".into())),
            (
                "\u{10000}".to_string(),
                Ipld::List(vec![Ipld::Null, Ipld::Bool(true)]),
            ),
            ("b".to_string(), Ipld::Bytes(vec![1, 2, 3])),
        ]);
        let proof = echo(4102444800);
        let d = Delegation::builder(&alice(), bob().did().clone())
            .capability(Capability::new("test/echo", alice().did().as_str()).with_nb(nb.clone()))
            .capability(Capability::new("test/other", bob().did().as_str()))
            .expiration(4102444801)
            .not_before(7)
            .nonce("n\u{e9}")
            .fact(nb.clone())
            .proof(proof.clone())
            .proof(Proof::Link(crate::dag::cid_of(DAG_CBOR, b"linked")))
            .build()
            .unwrap();
        let data = d.data();
        let cap = |c: &Capability| {
            let mut m = IpldMap::from([
                ("can".to_string(), Ipld::String(c.can.clone())),
                ("with".to_string(), Ipld::String(c.with.clone())),
            ]);
            if let Some(nb) = &c.nb {
                m.insert("nb".into(), Ipld::Map(nb.clone()));
            }
            Ipld::Map(m)
        };
        let payload = IpldMap::from([
            ("iss".to_string(), Ipld::String(data.issuer.to_string())),
            ("aud".to_string(), Ipld::String(data.audience.to_string())),
            (
                "att".to_string(),
                Ipld::List(data.capabilities.iter().map(cap).collect()),
            ),
            ("exp".to_string(), Ipld::Integer(4102444801)),
            ("nbf".to_string(), Ipld::Integer(7)),
            ("nnc".to_string(), Ipld::String("n\u{e9}".into())),
            ("fct".to_string(), Ipld::List(vec![Ipld::Map(nb)])),
            (
                "prf".to_string(),
                Ipld::List(
                    data.proofs
                        .iter()
                        .map(|c| Ipld::String(c.to_string()))
                        .collect(),
                ),
            ),
        ]);
        let header = IpldMap::from([
            ("alg".to_string(), Ipld::String("EdDSA".into())),
            ("typ".to_string(), Ipld::String("JWT".into())),
            ("ucv".to_string(), Ipld::String(data.version.clone())),
        ]);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let json = |m: IpldMap| b64.encode(crate::dag_json::encode(&Ipld::Map(m)).unwrap());
        let expected = format!("{}.{}", json(header), json(payload));
        assert_eq!(
            String::from_utf8(d.signing_payload().unwrap().to_vec()).unwrap(),
            expected
        );
    }

    /// Comparing a decoded block with the fields in place says what
    /// re-encoding the JS and Go shapes and comparing bytes says, for every
    /// mix of optional fields written out, left out or set.
    #[test]
    fn canonical_in_place_agrees_with_reencoding() {
        let edits: [fn(&mut IpldMap); 8] = [
            |m| drop(m.remove("prf")),
            |m| drop(m.insert("nnc".into(), Ipld::String(String::new()))),
            |m| drop(m.insert("nnc".into(), Ipld::String("n".into()))),
            |m| drop(m.insert("nbf".into(), Ipld::Integer(0))),
            |m| drop(m.insert("nbf".into(), Ipld::Integer(5))),
            |m| drop(m.insert("fct".into(), Ipld::List(Vec::new()))),
            |m| drop(m.insert("fct".into(), Ipld::List(vec![Ipld::Map(IpldMap::new())]))),
            |m| {
                if let Some(Ipld::List(att)) = m.get_mut("att") {
                    if let Some(Ipld::Map(cap)) = att.first_mut() {
                        cap.insert("nb".into(), Ipld::Map(IpldMap::new()));
                    }
                }
            },
        ];
        let base = echo(4102444800);
        let mut seen = [0; 2];
        for mask in 0u32..(1 << edits.len()) {
            let Ok(variant) = reencoded(&base, |m| {
                for (i, edit) in edits.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        edit(m);
                    }
                }
            }) else {
                continue;
            };
            let bytes = &variant.block().bytes;
            let data = variant.data();
            let reencodes = |shape: Ipld| crate::dag::encode_cbor(&shape).unwrap() == *bytes;
            let expected = reencodes(data.to_ipld()) || reencodes(data.to_go_ipld());
            assert_eq!(variant.is_canonical(), expected, "edits {mask:08b}");
            seen[usize::from(expected)] += 1;
        }
        assert!(
            seen[0] > 50 && seen[1] > 2,
            "{seen:?} (not, canonical) variants"
        );
    }

    /// Principals and signatures have one byte form each: the generic form of
    /// a did:key and padded varints are refused.
    #[test]
    fn other_byte_forms_are_refused() {
        let d = echo(4102444800);
        let generic = reencoded(&d, |m| {
            let mut bytes = vec![0x9d, 0x1a];
            bytes.extend_from_slice(&alice().did().as_str().as_bytes()[4..]);
            m.insert("iss".into(), Ipld::Bytes(bytes));
        });
        assert!(generic.is_err());
        let padded_key = reencoded(&d, |m| {
            let Some(Ipld::Bytes(aud)) = m.get("aud") else {
                unreachable!()
            };
            let bytes = [&[0xed, 0x81, 0x00][..], &aud[2..]].concat();
            m.insert("aud".into(), Ipld::Bytes(bytes));
        });
        assert!(padded_key.is_err());
        let padded_sig = reencoded(&d, |m| {
            let Some(Ipld::Bytes(s)) = m.get("s") else {
                unreachable!()
            };
            let bytes = [&[0xed, 0xa1, 0x83, 0x00][..], &s[3..]].concat();
            m.insert("s".into(), Ipld::Bytes(bytes));
        });
        assert!(padded_sig.is_err());
        // did:web keeps its (only) generic form.
        let web: Did = "did:web:tracker.example".parse().unwrap();
        assert_eq!(Did::from_ucan_bytes(&web.to_ucan_bytes()).unwrap(), web);
    }

    #[test]
    fn build_decode_verify() {
        let d = echo(4102444800);
        let again = Delegation::from_block(d.block().clone()).unwrap();
        assert_eq!(again.data(), d.data());
        assert!(again.verify_signature(alice().verifier().as_ref()));
        assert!(!again.verify_signature(bob().verifier().as_ref()));
        assert_eq!(
            &d.block().bytes[..],
            &crate::dag::encode_cbor(&d.data().to_ipld()).unwrap()[..]
        );
    }

    #[test]
    fn export_puts_proofs_first() {
        let root = Delegation::builder(&alice(), bob().did().clone())
            .capability(Capability::new("*", "ucan:*"))
            .no_expiration()
            .build()
            .unwrap();
        let child = Delegation::builder(&bob(), alice().did().clone())
            .capability(Capability::new("test/echo", alice().did().as_str()))
            .proof(root.clone())
            .build()
            .unwrap();
        let cids: Vec<Cid> = child.export().iter().map(|b| b.cid).collect();
        assert_eq!(cids, vec![root.cid(), child.cid()]);
        let archived = Delegation::extract(&child.archive().unwrap()).unwrap();
        assert_eq!(archived.cid(), child.cid());
        assert!(matches!(&archived.proofs()[0], Proof::Delegation(p) if p.cid() == root.cid()));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let d = Delegation::builder(&alice(), bob().did().clone())
            .build()
            .unwrap();
        let Ipld::Map(mut map) = d.data().to_ipld() else {
            unreachable!()
        };
        map.insert("zzz".into(), Ipld::Null);
        let block = Block::encode(&Ipld::Map(map)).unwrap();
        assert!(matches!(
            Delegation::from_block(block),
            Err(CodecError::Schema { .. })
        ));
    }

    /// The general reading of a block: decode, fields, shape.
    fn read_generally(bytes: &[u8]) -> Option<(UcanData, bool)> {
        let value = crate::dag::decode_cbor(bytes).ok()?;
        let data = UcanData::from_ipld(&value).ok()?;
        let written = data.is_written_as(&value);
        Some((data, written))
    }

    /// UCAN-like maps: every field present or not, well-formed or not, in
    /// the shapes JS and Go write and in others; about a quarter valid UCANs.
    fn ucan_like() -> impl proptest::strategy::Strategy<Value = Ipld> {
        use crate::dag::testing::{field, map_of};
        use proptest::prelude::*;
        let signer = Ed25519Signer::from_seed([3; 32]);
        let did = Ipld::Bytes(signer.did().to_ucan_bytes());
        let web = Ipld::Bytes(Did::parse("did:web:example.com").unwrap().to_ucan_bytes());
        let sig = Ipld::Bytes(signer.sign(b"payload").encode());
        let link = Ipld::Link(crate::dag::cid_of(DAG_CBOR, b"proof"));
        let small_map = Ipld::Map(IpldMap::from([("x".to_string(), Ipld::Integer(1))]));
        let text = |s: &str| Ipld::String(s.into());
        let capability = (
            field(
                0.97,
                vec![text("store/add"), text("*")],
                vec![text("nope"), Ipld::Integer(1)],
            ),
            field(0.97, vec![text("did:key:z6Mk")], vec![text("nouri")]),
            field(
                0.5,
                vec![Ipld::Map(IpldMap::new()), small_map.clone()],
                vec![Ipld::Integer(2)],
            ),
            proptest::bool::weighted(0.03),
        )
            .prop_map(|(can, with, nb, extra)| {
                map_of([
                    ("can", can),
                    ("with", with),
                    ("nb", nb),
                    ("zz", extra.then_some(Ipld::Null)),
                ])
            });
        let att = prop_oneof![
            9 => proptest::collection::vec(capability, 0..3).prop_map(Ipld::List),
            1 => Just(Ipld::Integer(0)),
        ];
        (
            (
                field(
                    0.97,
                    vec![text("0.9.1")],
                    vec![text("0.8.1"), Ipld::Integer(9)],
                ),
                field(
                    0.97,
                    vec![did.clone(), web.clone()],
                    vec![Ipld::Bytes(vec![1, 2]), text("did")],
                ),
                field(0.97, vec![did, web], vec![Ipld::Bytes(vec![0x0d])]),
                proptest::option::weighted(0.97, att),
                field(
                    0.97,
                    vec![Ipld::Null, Ipld::Integer(100)],
                    vec![Ipld::Integer(-1), text("1")],
                ),
            ),
            (
                field(
                    0.5,
                    vec![Ipld::Integer(0), Ipld::Integer(5)],
                    vec![Ipld::Null],
                ),
                field(0.5, vec![text(""), text("n")], vec![Ipld::Integer(3)]),
                field(
                    0.5,
                    vec![Ipld::List(vec![]), Ipld::List(vec![small_map])],
                    vec![Ipld::List(vec![Ipld::Integer(1)])],
                ),
                field(
                    0.5,
                    vec![Ipld::List(vec![]), Ipld::List(vec![link.clone()])],
                    vec![Ipld::List(vec![Ipld::Integer(1)]), link],
                ),
                field(
                    0.97,
                    vec![sig],
                    vec![Ipld::Bytes(vec![0xed, 0xa1]), Ipld::Null],
                ),
                proptest::bool::weighted(0.03),
            ),
        )
            .prop_map(
                |((v, iss, aud, att, exp), (nbf, nnc, fct, prf, s, extra))| {
                    map_of([
                        ("v", v),
                        ("iss", iss),
                        ("aud", aud),
                        ("att", att),
                        ("exp", exp),
                        ("nbf", nbf),
                        ("nnc", nnc),
                        ("fct", fct),
                        ("prf", prf),
                        ("s", s),
                        ("extra", extra.then_some(Ipld::Null)),
                    ])
                },
            )
    }

    /// Many generated maps are UCANs, of both shapes and neither: the
    /// agreement below is tested on what matters.
    #[test]
    fn generated_ucans_are_often_valid() {
        use crate::dag::testing::accepted_of;
        let total = 1000;
        let valid = accepted_of(ucan_like(), total, |b| read_generally(b).is_some());
        let written = accepted_of(ucan_like(), total, |b| {
            read_generally(b).is_some_and(|(_, w)| w)
        });
        assert!(valid > total / 5, "{valid} of {total} valid");
        assert!(
            written > valid / 4 && written < valid,
            "{written} of {valid} as written"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
        /// The direct reading of a block agrees with the general one: the
        /// same fields and shape whenever it reads one, and it reads every
        /// canonical block the general reading accepts; also with one byte
        /// of the block changed.
        #[test]
        fn reading_directly_agrees_with_reading_generally(
            value in ucan_like(),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            flip in 0u8..=255,
        ) {
            for bytes in crate::dag::testing::written_and_changed(&value, at, flip) {
                let direct = UcanData::read_canonical(&bytes);
                proptest::prop_assert_eq!(&direct, &read_generally(&bytes), "{:02x?}", bytes);
            }
        }
    }

    /// Both shapes are read as written (so the direct reading's shape rule
    /// is exercised on the real thing, not only on generated maps).
    #[test]
    fn js_and_go_blocks_read_directly_as_written() {
        let signer = Ed25519Signer::from_seed([4; 32]);
        let ucan = Delegation::builder(&signer, signer.did().clone())
            .capability(Capability::new("store/add", signer.did().as_str()))
            .nonce(String::new())
            .build()
            .unwrap();
        let js = crate::dag::encode_cbor(&ucan.data().to_ipld()).unwrap();
        let go = crate::dag::encode_cbor(&ucan.data().to_go_ipld()).unwrap();
        assert_ne!(js, go, "Go leaves out the empty prf and nnc");
        let (data, written) = UcanData::read_canonical(&js).expect("read directly");
        assert!(written);
        assert_eq!(&data, ucan.data());
        // Go's block has no nonce at all.
        let (data, written) = UcanData::read_canonical(&go).expect("read directly");
        assert!(written);
        assert_eq!(data.nonce, None);
        assert_eq!(Some((data, written)), read_generally(&go));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let block = Block { cid: crate::dag::cid_of(DAG_CBOR, &bytes), bytes: bytes.into() };
            let _ = Delegation::from_block(block);
        }
    }
}
