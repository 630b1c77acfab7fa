//! Receipts: the signed outcome of running an invocation.
//!
//! # Format
//! ```text
//! { ocm: { ran: Link<invocation>, out: {ok: any} | {error: any},
//!          fx: { fork: [Link], join?: Link }, meta: {}, iss?: DID string, prf: [Link] },
//!   sig: varsig bytes over dag-cbor(ocm) }
//! ```
//! JS @ucanto always writes `iss`; the executor's DID, did:web included.

use std::collections::BTreeSet;
use std::sync::Arc;

use cid::Cid;

use crate::dag::{Block, BlockStore, CodecError, Fields, Ipld, IpldMap};
use crate::principal::{Did, Signature, Signer, Verifier};
use crate::ucan::{Delegation, Invocation};

/// The variant tag of a receipt archive's root block.
pub const RECEIPT_TAG: &str = "ucan/receipt@0.9.1";

/// The result of an invocation: `{ok: …}` or `{error: …}`.
pub type Out = Result<Ipld, Ipld>;

/// Effects an invocation produced: forks (tasks started) and an optional join.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effects {
    /// Invocations this one started.
    pub fork: Vec<Cid>,
    /// The invocation whose result this one's result continues as.
    pub join: Option<Cid>,
}

/// The decoded fields of a receipt.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceiptData {
    /// The invocation that ran.
    pub ran: Cid,
    /// Its result.
    pub out: Out,
    /// Its effects.
    pub fx: Effects,
    /// Metadata.
    pub meta: IpldMap,
    /// The issuer's DID, when written.
    pub issuer: Option<Did>,
    /// Proofs that the issuer may speak for the executor.
    pub proofs: Vec<Cid>,
    /// Signature over dag-cbor of the outcome.
    pub signature: Signature,
}

impl ReceiptData {
    /// The exact bytes the issuer signs: dag-cbor of the outcome.
    pub fn signing_payload(&self) -> Result<Vec<u8>, CodecError> {
        crate::dag::encode_cbor(&self.outcome())
    }

    fn outcome(&self) -> Ipld {
        let mut out = IpldMap::new();
        match &self.out {
            Ok(v) => out.insert("ok".into(), v.clone()),
            Err(e) => out.insert("error".into(), e.clone()),
        };
        let mut fx = IpldMap::new();
        fx.insert(
            "fork".into(),
            Ipld::List(self.fx.fork.iter().map(|c| Ipld::Link(*c)).collect()),
        );
        if let Some(join) = self.fx.join {
            fx.insert("join".into(), Ipld::Link(join));
        }
        let mut ocm = IpldMap::new();
        ocm.insert("ran".into(), Ipld::Link(self.ran));
        ocm.insert("out".into(), Ipld::Map(out));
        ocm.insert("fx".into(), Ipld::Map(fx));
        ocm.insert("meta".into(), Ipld::Map(self.meta.clone()));
        if let Some(iss) = &self.issuer {
            ocm.insert("iss".into(), Ipld::String(iss.to_string()));
        }
        ocm.insert(
            "prf".into(),
            Ipld::List(self.proofs.iter().map(|c| Ipld::Link(*c)).collect()),
        );
        Ipld::Map(ocm)
    }

    fn to_ipld(&self) -> Ipld {
        let mut map = IpldMap::new();
        map.insert("ocm".into(), self.outcome());
        map.insert("sig".into(), Ipld::Bytes(self.signature.encode()));
        Ipld::Map(map)
    }

    /// Decodes a block straight into fields, with no IPLD tree in between,
    /// when it is canonical dag-cbor and a valid receipt; `None` leaves the
    /// block to [`ReceiptData::from_ipld`], which explains what is wrong
    /// with it. The two agree on every block, as a property test checks.
    fn read_canonical(bytes: &[u8]) -> Option<Self> {
        let mut r = crate::dag::canonical::Reader::new(bytes);
        let (mut outcome, mut signature) = (None, None);
        r.entries(|r, key| {
            match key {
                "ocm" => outcome = Some(Self::read_outcome(r)?),
                "sig" => signature = Some(r.byte_string()?),
                _ => return None,
            }
            Some(())
        })?;
        if !r.at_end() {
            return None;
        }
        let (ran, out, fx, meta, issuer, proofs) = outcome?;
        Some(ReceiptData {
            ran,
            out,
            fx,
            meta,
            issuer,
            proofs,
            signature: Signature::decode(signature?).ok()?,
        })
    }

    /// The outcome's fields, as [`ReceiptData::from_ipld`] reads them.
    #[allow(clippy::type_complexity)]
    fn read_outcome(
        r: &mut crate::dag::canonical::Reader<'_>,
    ) -> Option<(Cid, Out, Effects, IpldMap, Option<Did>, Vec<Cid>)> {
        let (mut ran, mut out, mut fx, mut meta, mut issuer, mut proofs) =
            (None, None, None, None, None, None);
        r.entries(|r, key| {
            match key {
                "ran" => ran = Some(r.link_value()?),
                "out" => {
                    // Exactly one of `ok` and `error`.
                    if r.map_len()? != 1 {
                        return None;
                    }
                    out = Some(match r.only_key()? {
                        "ok" => Ok(r.any()?),
                        "error" => Err(r.any()?),
                        _ => return None,
                    });
                }
                "fx" => {
                    let (mut fork, mut join) = (None, None);
                    r.entries(|r, key| {
                        match key {
                            "fork" => fork = Some(r.links()?),
                            "join" => join = Some(r.link_value()?),
                            _ => return None,
                        }
                        Some(())
                    })?;
                    fx = Some(Effects { fork: fork?, join });
                }
                "meta" => match r.any()? {
                    Ipld::Map(map) => meta = Some(map),
                    _ => return None,
                },
                "iss" => issuer = Some(Did::parse(r.string()?).ok()?),
                "prf" => proofs = Some(r.links()?),
                _ => return None,
            }
            Some(())
        })?;
        Some((
            ran?,
            out?,
            fx?,
            meta.unwrap_or_default(),
            issuer,
            proofs.unwrap_or_default(),
        ))
    }

    fn from_ipld(value: &Ipld) -> Result<Self, CodecError> {
        let top = Fields::of("receipt", value)?.only(&["ocm", "sig"])?;
        let ocm = Fields::of("receipt.ocm", top.required("ocm")?)?
            .only(&["ran", "out", "fx", "meta", "iss", "prf"])?;
        let out = Fields::of("receipt.ocm.out", ocm.required("out")?)?.only(&["ok", "error"])?;
        let out = match (out.get("ok"), out.get("error")) {
            (Some(ok), None) => Ok(ok.clone()),
            (None, Some(err)) => Err(err.clone()),
            _ => {
                return Err(CodecError::schema(
                    "receipt.ocm.out",
                    "expected exactly one of ok or error",
                ))
            }
        };
        let fx = Fields::of("receipt.ocm.fx", ocm.required("fx")?)?.only(&["fork", "join"])?;
        let issuer = ocm
            .opt_string("iss")?
            .map(Did::parse)
            .transpose()
            .map_err(|e| CodecError::schema("receipt.ocm.iss", e.to_string()))?;
        let meta = match ocm.get("meta") {
            None => IpldMap::new(),
            Some(_) => ocm.submap("meta")?.clone(),
        };
        Ok(ReceiptData {
            ran: ocm.link("ran")?,
            out,
            fx: Effects {
                fork: fx.links("fork")?,
                join: fx.opt_link("join")?,
            },
            meta,
            issuer,
            proofs: if ocm.get("prf").is_some() {
                ocm.links("prf")?
            } else {
                Vec::new()
            },
            signature: Signature::decode(top.bytes("sig")?)
                .map_err(|e| CodecError::schema("receipt.sig", e.to_string()))?,
        })
    }
}

/// A signed receipt with the blocks it carries.
#[derive(Clone, Debug)]
pub struct Receipt {
    root: Block,
    data: Arc<ReceiptData>,
    blocks: Arc<BlockStore>,
}

impl PartialEq for Receipt {
    fn eq(&self, other: &Self) -> bool {
        self.root == other.root
    }
}

/// What a receipt says ran: the whole invocation, or only its link.
#[derive(Clone, Debug)]
pub enum Ran {
    /// The invocation, whose blocks travel with the receipt.
    Invocation(Invocation),
    /// Only the invocation's CID.
    Link(Cid),
}

impl Ran {
    fn cid(&self) -> Cid {
        match self {
            Ran::Invocation(i) => i.cid(),
            Ran::Link(c) => *c,
        }
    }
}

impl From<Invocation> for Ran {
    fn from(i: Invocation) -> Self {
        Ran::Invocation(i)
    }
}

impl From<&Invocation> for Ran {
    fn from(i: &Invocation) -> Self {
        Ran::Invocation(i.clone())
    }
}

impl From<Cid> for Ran {
    fn from(c: Cid) -> Self {
        Ran::Link(c)
    }
}

/// The parts of a receipt to issue; see [`Receipt::issue`].
#[derive(Clone, Debug)]
pub struct ReceiptParts {
    /// What ran.
    pub ran: Ran,
    /// The result.
    pub out: Out,
    /// Forked invocations, carried along.
    pub fork: Vec<Invocation>,
    /// Joined invocation, carried along.
    pub join: Option<Invocation>,
    /// Metadata.
    pub meta: IpldMap,
    /// Proofs the issuer speaks for the executor.
    pub proofs: Vec<Delegation>,
}

impl ReceiptParts {
    /// A receipt for `ran` with result `out` and nothing else.
    pub fn new(ran: impl Into<Ran>, out: Out) -> Self {
        ReceiptParts {
            ran: ran.into(),
            out,
            fork: Vec::new(),
            join: None,
            meta: IpldMap::new(),
            proofs: Vec::new(),
        }
    }

    /// Adds a forked invocation.
    pub fn fork(mut self, invocation: Invocation) -> Self {
        self.fork.push(invocation);
        self
    }

    /// Sets the joined invocation.
    pub fn join(mut self, invocation: Invocation) -> Self {
        self.join = Some(invocation);
        self
    }
}

impl Receipt {
    /// Signs a receipt with `issuer`. Blocks are gathered in JS order:
    /// the invocation, forks, join, proofs, then the receipt itself.
    pub fn issue(issuer: &dyn Signer, parts: ReceiptParts) -> Result<Receipt, CodecError> {
        let mut blocks = BlockStore::new();
        if let Ran::Invocation(inv) = &parts.ran {
            blocks.extend(inv.export());
        }
        for inv in parts.fork.iter().chain(parts.join.iter()) {
            blocks.extend(inv.export());
        }
        for proof in &parts.proofs {
            blocks.extend(proof.export());
        }
        let mut data = ReceiptData {
            ran: parts.ran.cid(),
            out: parts.out,
            fx: Effects {
                fork: parts.fork.iter().map(|i| i.cid()).collect(),
                join: parts.join.map(|i| i.cid()),
            },
            meta: parts.meta,
            issuer: Some(issuer.did().clone()),
            proofs: parts.proofs.iter().map(|p| p.cid()).collect(),
            signature: Signature {
                code: issuer.signature_code(),
                raw: Vec::new(),
            },
        };
        let payload = data.signing_payload()?;
        data.signature = issuer.sign(&payload);
        let root = Block::encode(&data.to_ipld())?;
        blocks.insert(root.clone());
        Ok(Receipt {
            root,
            data: Arc::new(data),
            blocks: Arc::new(blocks),
        })
    }

    /// Views the receipt named `root` among `blocks`.
    pub fn from_blocks(root: &Cid, blocks: Arc<BlockStore>) -> Result<Receipt, CodecError> {
        let block = blocks.block(root)?;
        let data = match ReceiptData::read_canonical(&block.bytes) {
            Some(data) => data,
            None => ReceiptData::from_ipld(&block.decode()?)?,
        };
        Ok(Receipt {
            root: block,
            data: Arc::new(data),
            blocks,
        })
    }

    /// The receipt's CID.
    pub fn cid(&self) -> Cid {
        self.root.cid
    }

    /// The receipt's root block.
    pub fn block(&self) -> &Block {
        &self.root
    }

    /// The decoded fields.
    pub fn data(&self) -> &ReceiptData {
        &self.data
    }

    /// The result.
    pub fn out(&self) -> &Out {
        &self.data.out
    }

    /// CID of the invocation that ran.
    pub fn ran_cid(&self) -> Cid {
        self.data.ran
    }

    /// The invocation that ran, when its blocks are present.
    pub fn ran(&self) -> Option<Invocation> {
        Delegation::from_blocks(&self.data.ran, self.blocks.clone()).ok()
    }

    /// Forked invocations whose blocks are present (missing ones are skipped).
    pub fn forks(&self) -> Vec<Invocation> {
        self.data
            .fx
            .fork
            .iter()
            .filter_map(|cid| Delegation::from_blocks(cid, self.blocks.clone()).ok())
            .collect()
    }

    /// The issuer's DID, when written.
    pub fn issuer(&self) -> Option<&Did> {
        self.data.issuer.as_ref()
    }

    /// The blocks this receipt was found among.
    pub fn blocks(&self) -> &Arc<BlockStore> {
        &self.blocks
    }

    /// Whether `verifier` signed this receipt's outcome (and, when the receipt
    /// names its issuer, whether that is the verifier's DID).
    pub fn verify_signature(&self, verifier: &dyn Verifier) -> bool {
        if self
            .data
            .issuer
            .as_ref()
            .is_some_and(|iss| iss != verifier.did())
        {
            return false;
        }
        self.signing_payload()
            .is_ok_and(|payload| verifier.verify(&payload, &self.data.signature))
    }

    /// The bytes the issuer signed: the outcome as written in the receipt's
    /// block. Blocks are canonical dag-cbor (decoding refuses any other), so
    /// these are the outcome's dag-cbor, which JS gets by encoding the
    /// decoded outcome again; reading them in place saves that encoding.
    pub fn signing_payload(&self) -> Result<std::borrow::Cow<'_, [u8]>, CodecError> {
        match crate::dag::canonical::map_value(&self.root.bytes, "ocm") {
            Some(ocm) => Ok(std::borrow::Cow::Borrowed(ocm)),
            None => self.data.signing_payload().map(std::borrow::Cow::Owned),
        }
    }

    /// The blocks to send with this receipt, in JS order.
    pub fn export(&self) -> Vec<Block> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        let mut push = |blocks: Vec<Block>, out: &mut Vec<Block>| {
            for block in blocks {
                if seen.insert(block.cid) {
                    out.push(block);
                }
            }
        };
        let linked = std::iter::once(self.data.ran)
            .chain(self.data.fx.fork.iter().copied())
            .chain(self.data.fx.join)
            .chain(self.data.proofs.iter().copied());
        for cid in linked {
            if let Ok(inv) = Delegation::from_blocks(&cid, self.blocks.clone()) {
                push(inv.export(), &mut out);
            }
        }
        push(vec![self.root.clone()], &mut out);
        out
    }

    /// A receipt archive: a CAR whose single root is `{"ucan/receipt@0.9.1": Link}`.
    pub fn archive(&self) -> Result<Vec<u8>, CodecError> {
        crate::dag::write_archive(RECEIPT_TAG, self.cid(), self.export())
    }

    /// Reads a receipt archive; blocks may come in any order.
    pub fn extract(archive: &[u8]) -> Result<Receipt, CodecError> {
        Receipt::extract_shared(&bytes::Bytes::copy_from_slice(archive))
    }

    /// [`Receipt::extract`] without copying: the receipt's blocks are
    /// slices of `archive`, kept alive as long as the receipt.
    pub fn extract_shared(archive: &bytes::Bytes) -> Result<Receipt, CodecError> {
        let (link, store) = crate::dag::read_archive_shared(archive, RECEIPT_TAG)?;
        Receipt::from_blocks(&link, store)
    }

    /// The CID of the receipt an archive holds, without decoding the receipt.
    pub fn archived_cid(archive: &[u8]) -> Result<Cid, CodecError> {
        crate::dag::read_archive(archive, RECEIPT_TAG).map(|(link, _)| link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::Ed25519Signer;
    use crate::ucan::Capability;

    /// The signature covers the outcome as the issuer wrote it, as in JS:
    /// an outcome without `meta` and `prf` verifies over those bytes, and
    /// not over the fuller outcome this crate would have written.
    #[test]
    fn the_signature_covers_the_outcome_as_written() {
        let node = Ed25519Signer::from_seed([7; 32]);
        let ran = crate::dag::cid_of(crate::dag::DAG_CBOR, b"invocation");
        let mut out = IpldMap::new();
        out.insert("ok".into(), Ipld::Map(IpldMap::new()));
        let mut fx = IpldMap::new();
        fx.insert("fork".into(), Ipld::List(Vec::new()));
        let mut ocm = IpldMap::new();
        ocm.insert("ran".into(), Ipld::Link(ran));
        ocm.insert("out".into(), Ipld::Map(out));
        ocm.insert("fx".into(), Ipld::Map(fx));
        ocm.insert("iss".into(), Ipld::String(node.did().to_string()));
        let written = crate::dag::encode_cbor(&Ipld::Map(ocm.clone())).unwrap();
        let receipt_signed_over = |payload: &[u8]| {
            let mut root = IpldMap::new();
            root.insert("ocm".into(), Ipld::Map(ocm.clone()));
            root.insert("sig".into(), Ipld::Bytes(node.sign(payload).encode()));
            let block = Block::encode(&Ipld::Map(root)).unwrap();
            let cid = block.cid;
            Receipt::from_blocks(&cid, Arc::new(BlockStore::from_iter([block]))).unwrap()
        };
        let receipt = receipt_signed_over(&written);
        assert_eq!(*receipt.signing_payload().unwrap(), written[..]);
        assert!(receipt.verify_signature(node.verifier().as_ref()));
        let fuller = receipt.data().signing_payload().unwrap();
        assert_ne!(fuller, written, "this crate writes meta and prf");
        assert!(!receipt_signed_over(&fuller).verify_signature(node.verifier().as_ref()));
    }

    #[test]
    fn issue_decode_verify() {
        let alice = Ed25519Signer::from_seed([1; 32]);
        let service = Ed25519Signer::from_seed([4; 32]);
        let inv = Delegation::builder(&alice, service.did().clone())
            .capability(Capability::new("test/echo", alice.did().as_str()))
            .expiration(4102444800)
            .build()
            .unwrap();
        let fork = Delegation::builder(&service, service.did().clone())
            .capability(Capability::new("test/next", service.did().as_str()))
            .no_expiration()
            .build()
            .unwrap();
        let receipt = Receipt::issue(
            &service,
            ReceiptParts::new(&inv, Ok(Ipld::Map(IpldMap::new()))).fork(fork.clone()),
        )
        .unwrap();
        let order: Vec<Cid> = receipt.export().iter().map(|b| b.cid).collect();
        assert_eq!(order, vec![inv.cid(), fork.cid(), receipt.cid()]);
        let back = Receipt::extract(&receipt.archive().unwrap()).unwrap();
        assert_eq!(back.data(), receipt.data());
        // The payload read in place is the outcome's encoding.
        assert_eq!(
            *back.signing_payload().unwrap(),
            receipt.data().signing_payload().unwrap()
        );
        assert!(back.verify_signature(service.verifier().as_ref()));
        assert!(!back.verify_signature(alice.verifier().as_ref()));
        assert_eq!(back.ran().unwrap().cid(), inv.cid());
        assert_eq!(back.forks()[0].cid(), fork.cid());
    }

    #[test]
    fn malformed_receipts_are_typed_errors() {
        let service = Ed25519Signer::from_seed([4; 32]);
        let ran = crate::dag::cid_of(crate::dag::DAG_CBOR, b"x");
        let receipt = Receipt::issue(&service, ReceiptParts::new(ran, Ok(Ipld::Null))).unwrap();
        let Ipld::Map(mut top) = receipt.data().to_ipld() else {
            unreachable!()
        };
        top.insert("extra".into(), Ipld::Null);
        let block = Block::encode(&Ipld::Map(top)).unwrap();
        let cid = block.cid;
        let err = Receipt::from_blocks(&cid, Arc::new(BlockStore::from_iter([block]))).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");

        let both = ucanto_out_both();
        let block = Block::encode(&both).unwrap();
        let cid = block.cid;
        let err = Receipt::from_blocks(&cid, Arc::new(BlockStore::from_iter([block]))).unwrap_err();
        assert!(
            err.to_string().contains("exactly one of ok or error"),
            "{err}"
        );
    }

    fn ucanto_out_both() -> Ipld {
        let service = Ed25519Signer::from_seed([4; 32]);
        let ran = crate::dag::cid_of(crate::dag::DAG_CBOR, b"x");
        let receipt = Receipt::issue(&service, ReceiptParts::new(ran, Ok(Ipld::Null))).unwrap();
        let Ipld::Map(mut top) = receipt.data().to_ipld() else {
            unreachable!()
        };
        let Some(Ipld::Map(ocm)) = top.get_mut("ocm") else {
            unreachable!()
        };
        let mut out = IpldMap::new();
        out.insert("ok".into(), Ipld::Null);
        out.insert("error".into(), Ipld::Null);
        ocm.insert("out".into(), Ipld::Map(out));
        Ipld::Map(top)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let block = Block { cid: crate::dag::cid_of(crate::dag::DAG_CBOR, &bytes), bytes: bytes.clone().into() };
            let cid = block.cid;
            let _ = Receipt::from_blocks(&cid, Arc::new(BlockStore::from_iter([block])));
            let _ = Receipt::extract(&bytes);
        }
    }

    /// Receipt-like maps: every field present or not, well-formed or not;
    /// many of them valid receipts.
    fn receipt_like() -> impl proptest::strategy::Strategy<Value = Ipld> {
        use crate::dag::testing::{field, map_of};
        use proptest::prelude::*;
        let signer = Ed25519Signer::from_seed([5; 32]);
        let link = Ipld::Link(crate::dag::cid_of(crate::dag::DAG_CBOR, b"ran"));
        let small_map = Ipld::Map(IpldMap::from([("x".to_string(), Ipld::Integer(1))]));
        let extra = || proptest::bool::weighted(0.03).prop_map(|e| e.then_some(Ipld::Null));
        let out = (
            field(
                0.9,
                vec![Ipld::Map(IpldMap::new()), small_map.clone()],
                vec![Ipld::Null],
            ),
            field(0.1, vec![small_map.clone()], vec![Ipld::Integer(1)]),
        )
            .prop_map(|(ok, error)| map_of([("ok", ok), ("error", error)]));
        let fx = (
            field(
                0.97,
                vec![Ipld::List(vec![]), Ipld::List(vec![link.clone()])],
                vec![Ipld::List(vec![Ipld::Integer(1)]), Ipld::Null],
            ),
            field(0.2, vec![link.clone()], vec![Ipld::Integer(1)]),
            extra(),
        )
            .prop_map(|(fork, join, zz)| map_of([("fork", fork), ("join", join), ("zz", zz)]));
        let ocm = (
            field(
                0.97,
                vec![link.clone()],
                vec![Ipld::Integer(1), Ipld::Bytes(vec![1])],
            ),
            proptest::option::weighted(0.97, out),
            proptest::option::weighted(0.97, fx),
            field(
                0.5,
                vec![Ipld::Map(IpldMap::new()), small_map],
                vec![Ipld::List(vec![])],
            ),
            field(
                0.5,
                vec![Ipld::String(signer.did().to_string())],
                vec![Ipld::String("not a did".into()), Ipld::Integer(1)],
            ),
            field(
                0.5,
                vec![Ipld::List(vec![]), Ipld::List(vec![link])],
                vec![Ipld::List(vec![Ipld::Null])],
            ),
            extra(),
        )
            .prop_map(|(ran, out, fx, meta, iss, prf, zz)| {
                map_of([
                    ("ran", ran),
                    ("out", out),
                    ("fx", fx),
                    ("meta", meta),
                    ("iss", iss),
                    ("prf", prf),
                    ("zz", zz),
                ])
            });
        let sig = Ipld::Bytes(signer.sign(b"outcome").encode());
        (
            proptest::option::weighted(0.97, ocm),
            field(0.97, vec![sig], vec![Ipld::Bytes(vec![0xed]), Ipld::Null]),
            extra(),
        )
            .prop_map(|(ocm, sig, zz)| map_of([("ocm", ocm), ("sig", sig), ("zz", zz)]))
    }

    fn read_generally(bytes: &[u8]) -> Option<ReceiptData> {
        ReceiptData::from_ipld(&crate::dag::decode_cbor(bytes).ok()?).ok()
    }

    #[test]
    fn generated_receipts_are_often_valid() {
        let total = 1000;
        let valid = crate::dag::testing::accepted_of(receipt_like(), total, |b| {
            read_generally(b).is_some()
        });
        assert!(valid > total / 5, "{valid} of {total} valid");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
        /// The direct reading of a block agrees with the general one: the
        /// same fields whenever it reads one, and it reads every canonical
        /// block the general reading accepts; also with one byte changed.
        #[test]
        fn reading_directly_agrees_with_reading_generally(
            value in receipt_like(),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            flip in 0u8..=255,
        ) {
            for bytes in crate::dag::testing::written_and_changed(&value, at, flip) {
                let direct = ReceiptData::read_canonical(&bytes);
                proptest::prop_assert_eq!(direct, read_generally(&bytes), "{:02x?}", bytes);
            }
        }
    }
}
