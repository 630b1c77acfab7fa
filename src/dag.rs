//! Blocks and links: dag-cbor encoding, CIDs and an ordered block store.
//!
//! Every ucanto object (delegation, invocation, receipt, agent message) is a
//! dag-cbor block addressed by a CIDv1 over its sha2-256 digest. Decoding is
//! strict: bytes that are not the canonical dag-cbor encoding of the value they
//! decode to are refused, so a CID always names exactly one value.

use std::collections::BTreeMap;

use bytes::Bytes;
use cid::Cid;
pub use ipld_core::ipld::Ipld;
use multihash::Multihash;
use sha2::{Digest, Sha256};

pub(crate) mod canonical;
pub mod cbor;
mod fields;
#[cfg(test)]
pub(crate) mod testing;
pub use fields::{uint, FieldError, Fields};

/// Multicodec code of dag-cbor.
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec code of raw bytes.
pub const RAW: u64 = 0x55;
/// Multicodec code of a CAR file (used for receipt archives and batches).
pub const CAR: u64 = 0x0202;
/// Multihash code of sha2-256.
pub const SHA2_256: u64 = 0x12;
/// Multihash code of the identity "hash" (the digest is the data itself).
pub const IDENTITY: u64 = 0x00;

/// A map of IPLD values, as used for `nb`, `meta` and result payloads.
pub type IpldMap = BTreeMap<String, Ipld>;

/// Failure to encode or decode a dag-cbor block.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes are not valid dag-cbor.
    #[error("invalid dag-cbor: {0}")]
    InvalidCbor(String),
    /// The bytes decode, but are not the canonical encoding of what they decode to.
    #[error("non-canonical dag-cbor encoding")]
    NonCanonical,
    /// The value has the wrong shape for what was expected.
    #[error("invalid {context}: {reason}")]
    Schema {
        /// Which value or field was being read.
        context: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A linked block is not present in the store.
    #[error("block {0} is not present")]
    MissingBlock(Cid),
    /// The value cannot be encoded (e.g. a float that is NaN).
    #[error("cannot encode: {0}")]
    Encode(String),
}

impl CodecError {
    /// A schema error for `context` explained by `reason`.
    pub fn schema(context: impl Into<String>, reason: impl Into<String>) -> Self {
        CodecError::Schema {
            context: context.into(),
            reason: reason.into(),
        }
    }
}

/// A CID's binary form, kept on the stack: what store keys and spilled
/// records need once per receipt, without the two allocations of
/// [`Cid::to_bytes`].
///
/// ```
/// use ucanto::dag::{cid_of, CidBytes, RAW};
/// let cid = cid_of(RAW, b"hello");
/// assert_eq!(CidBytes::of(&cid).as_ref(), cid.to_bytes().as_slice());
/// ```
#[derive(Clone)]
pub struct CidBytes(CidBytesInner);

#[derive(Clone)]
enum CidBytesInner {
    Inline([u8; CidBytes::MAX], usize),
    /// Not expected (any `Cid` fits inline), kept so that nothing is lost.
    Heap(Vec<u8>),
}

impl CidBytes {
    /// Room for any `Cid` (digests up to 64 bytes): a version byte, three
    /// varints of up to 10 bytes and the digest.
    const MAX: usize = 1 + 3 * 10 + 64;

    /// The binary form of `cid`.
    pub fn of(cid: &Cid) -> Self {
        let mut bytes = [0; Self::MAX];
        let mut rest = &mut bytes[..];
        match cid.write_bytes(&mut rest) {
            Ok(len) => CidBytes(CidBytesInner::Inline(bytes, len)),
            Err(_) => CidBytes(CidBytesInner::Heap(cid.to_bytes())),
        }
    }
}

impl AsRef<[u8]> for CidBytes {
    fn as_ref(&self) -> &[u8] {
        match &self.0 {
            CidBytesInner::Inline(bytes, len) => &bytes[..*len],
            CidBytesInner::Heap(bytes) => bytes,
        }
    }
}

impl std::ops::Deref for CidBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_ref()
    }
}

/// CIDv1 of `bytes` under `codec`, hashed with sha2-256.
pub fn cid_of(codec: u64, bytes: &[u8]) -> Cid {
    cid_of_digest(codec, Sha256::digest(bytes).into())
}

/// CIDv1 under `codec` of content whose sha2-256 digest is `digest`, for
/// callers that hash as the bytes stream by.
pub fn cid_of_digest(codec: u64, digest: [u8; 32]) -> Cid {
    let mh = Multihash::<64>::wrap(SHA2_256, &digest).expect("32-byte digest fits in 64");
    Cid::new_v1(codec, mh)
}

/// Encodes an IPLD value as canonical dag-cbor.
pub fn encode_cbor(value: &Ipld) -> Result<Vec<u8>, CodecError> {
    check_encodable(value)?;
    serde_ipld_dagcbor::to_vec(value).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes canonical dag-cbor into an IPLD value, refusing any other encoding
/// (indefinite lengths, unsorted or duplicate keys, non-minimal integers, trailing bytes).
pub fn decode_cbor(bytes: &[u8]) -> Result<Ipld, CodecError> {
    // Canonical bytes decode in one pass; anything else is judged below,
    // where the error says what is wrong.
    if let Some(value) = canonical::decode(bytes) {
        return Ok(value);
    }
    let value: Ipld = serde_ipld_dagcbor::from_slice(bytes)
        .map_err(|e| CodecError::InvalidCbor(e.to_string()))?;
    // dag-cbor has exactly one encoding per value: anything else is refused
    // (checked in one pass, as re-encoding would, see `canonical`).
    if !canonical::is_canonical(bytes) {
        return Err(CodecError::NonCanonical);
    }
    Ok(value)
}

fn check_encodable(value: &Ipld) -> Result<(), CodecError> {
    match value {
        Ipld::Float(f) if !f.is_finite() => Err(CodecError::Encode(
            "NaN and infinities are not in the IPLD data model".into(),
        )),
        Ipld::Integer(i) if *i > u64::MAX as i128 || *i < -(u64::MAX as i128) - 1 => Err(
            CodecError::Encode(format!("integer {i} does not fit in 64 bits")),
        ),
        Ipld::List(items) => items.iter().try_for_each(check_encodable),
        Ipld::Map(map) => map.values().try_for_each(check_encodable),
        _ => Ok(()),
    }
}

/// One content-addressed block: its CID and the exact bytes it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The block's CID.
    pub cid: Cid,
    /// The block's bytes, exactly as received or encoded.
    pub bytes: Bytes,
}

impl Block {
    /// Encodes `value` as a dag-cbor block.
    pub fn encode(value: &Ipld) -> Result<Block, CodecError> {
        let bytes = encode_cbor(value)?;
        Ok(Block {
            cid: cid_of(DAG_CBOR, &bytes),
            bytes: bytes.into(),
        })
    }

    /// Decodes the block's bytes as dag-cbor.
    pub fn decode(&self) -> Result<Ipld, CodecError> {
        decode_cbor(&self.bytes)
    }
}

/// An insertion-ordered set of blocks keyed by CID.
///
/// The order matters because JS @ucanto writes blocks into CARs in the order it
/// first met them; keeping the same order is what makes our CARs byte-identical.
/// Inserting a CID that is already present keeps the first position.
#[derive(Clone, Debug, Default)]
pub struct BlockStore {
    order: Vec<Cid>,
    blocks: crate::memo::FastMap<Cid, Bytes>,
}

impl BlockStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a block unless one with the same CID is already present.
    pub fn insert(&mut self, block: Block) {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.blocks.entry(block.cid) {
            slot.insert(block.bytes);
            self.order.push(block.cid);
        }
    }

    /// Adds every block of `blocks`, in order.
    pub fn extend(&mut self, blocks: impl IntoIterator<Item = Block>) {
        for block in blocks {
            self.insert(block);
        }
    }

    /// The bytes of the block named `cid`. Identity CIDs carry their bytes inline.
    pub fn get(&self, cid: &Cid) -> Option<Bytes> {
        if cid.hash().code() == IDENTITY {
            return Some(Bytes::copy_from_slice(cid.hash().digest()));
        }
        self.blocks.get(cid).cloned()
    }

    /// The block named `cid`, or [`CodecError::MissingBlock`].
    pub fn block(&self, cid: &Cid) -> Result<Block, CodecError> {
        self.get(cid)
            .map(|bytes| Block { cid: *cid, bytes })
            .ok_or(CodecError::MissingBlock(*cid))
    }

    /// Whether a block named `cid` is present.
    pub fn contains(&self, cid: &Cid) -> bool {
        self.blocks.contains_key(cid)
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the store holds no block.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Blocks in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = Block> + '_ {
        self.order.iter().map(|cid| Block {
            cid: *cid,
            bytes: self.blocks[cid].clone(),
        })
    }
}

impl FromIterator<Block> for BlockStore {
    fn from_iter<I: IntoIterator<Item = Block>>(iter: I) -> Self {
        let iter = iter.into_iter();
        // Sized once: an archive's few blocks would otherwise grow the map
        // and its order list several times.
        let (expected, _) = iter.size_hint();
        let mut store = BlockStore {
            order: Vec::with_capacity(expected),
            blocks: crate::memo::FastMap::with_capacity_and_hasher(expected, Default::default()),
        };
        store.extend(iter);
        store
    }
}

/// Encodes an archive: a CAR whose single root is the block `{<tag>: Link<root>}`,
/// after `blocks` (the form JS writes for delegations and receipts).
pub fn write_archive(tag: &str, root: Cid, mut blocks: Vec<Block>) -> Result<Vec<u8>, CodecError> {
    let mut variant = IpldMap::new();
    variant.insert(tag.to_string(), Ipld::Link(root));
    let variant = Block::encode(&Ipld::Map(variant))?;
    blocks.push(variant.clone());
    Ok(crate::car::encode(
        &[variant.cid],
        blocks.into_iter().map(|b| (b.cid, b.bytes)),
    ))
}

/// Reads an archive written by [`write_archive`] (or JS): the link under `tag`
/// and every block of the CAR, in whatever order they came.
pub fn read_archive(
    archive: &[u8],
    tag: &str,
) -> Result<(Cid, std::sync::Arc<BlockStore>), CodecError> {
    read_archive_shared(&Bytes::copy_from_slice(archive), tag)
}

/// [`read_archive`] without copying: the blocks are slices of `archive`.
pub fn read_archive_shared(
    archive: &Bytes,
    tag: &str,
) -> Result<(Cid, std::sync::Arc<BlockStore>), CodecError> {
    let context = || format!("{tag} archive");
    let (header, blocks) = crate::car::decode_shared(archive, crate::car::Limits::default())
        .map_err(|e| CodecError::InvalidCbor(e.to_string()))?;
    let [root] = header.roots.as_slice() else {
        return Err(CodecError::schema(context(), "expected exactly one root"));
    };
    let store: BlockStore = blocks
        .into_iter()
        .map(|(cid, bytes)| Block { cid, bytes })
        .collect();
    let root = store.block(root)?;
    // `{tag: link}`, read directly; anything else is explained by the
    // general decoder.
    let direct = || {
        let mut r = canonical::Reader::new(&root.bytes);
        (r.map_len()? == 1 && r.only_key()? == tag).then_some(())?;
        let link = r.link_value()?;
        r.at_end().then_some(link)
    };
    let link = match direct() {
        Some(link) => link,
        None => Fields::of(context(), &root.decode()?)?
            .only(&[tag])?
            .link(tag)?,
    };
    Ok((link, std::sync::Arc::new(store)))
}

impl From<FieldError> for CodecError {
    fn from(e: FieldError) -> Self {
        CodecError::schema(e.field(), e.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stack form is the CID's bytes whatever its version, codec and
    /// digest length, up to the largest `Cid` holds.
    #[test]
    fn cid_bytes_are_the_binary_form() {
        let v0 = Cid::new_v0(cid::multihash::Multihash::wrap(SHA2_256, &[7; 32]).unwrap()).unwrap();
        let largest = Cid::new_v1(
            u64::MAX,
            cid::multihash::Multihash::wrap(u64::MAX, &[9; 64]).unwrap(),
        );
        for cid in [v0, cid_of(RAW, b"x"), largest] {
            assert_eq!(CidBytes::of(&cid).as_ref(), cid.to_bytes().as_slice());
        }
    }

    #[test]
    fn maps_are_encoded_length_first() {
        let mut map = IpldMap::new();
        map.insert("version".into(), Ipld::Integer(1));
        map.insert("roots".into(), Ipld::List(vec![]));
        map.insert("a".into(), Ipld::Null);
        let bytes = encode_cbor(&Ipld::Map(map)).unwrap();
        // {"a": null, "roots": [], "version": 1}
        assert_eq!(
            hex::encode(&bytes),
            "a36161f665726f6f7473806776657273696f6e01"
        );
    }

    /// A node could nest a block's values as deep as its size allows:
    /// decoding refuses it rather than exhausting the stack.
    #[test]
    fn deep_nesting_is_refused() {
        for open in [0x81u8, 0xa1] {
            let mut bytes = Vec::new();
            for _ in 0..100_000 {
                bytes.push(open);
                if open == 0xa1 {
                    bytes.extend_from_slice(&[0x61, b'a']);
                }
            }
            bytes.push(0xf6);
            assert!(decode_cbor(&bytes).is_err());
        }
    }

    #[test]
    fn non_canonical_input_is_refused() {
        // {"roots": [], "a": null} — keys out of canonical order.
        let unsorted = hex::decode("a265726f6f7473806161f6").unwrap();
        assert!(matches!(
            decode_cbor(&unsorted),
            Err(CodecError::NonCanonical)
        ));
        // 1 encoded on two bytes instead of one.
        assert!(matches!(
            decode_cbor(&[0x18, 0x01]),
            Err(CodecError::NonCanonical)
        ));
        // Indefinite-length list.
        assert!(decode_cbor(&[0x9f, 0x01, 0xff]).is_err());
        // Trailing bytes.
        assert!(decode_cbor(&[0x01, 0x01]).is_err());
    }

    #[test]
    fn store_keeps_first_position() {
        let a = Block::encode(&Ipld::Integer(1)).unwrap();
        let b = Block::encode(&Ipld::Integer(2)).unwrap();
        let store: BlockStore = [a.clone(), b.clone(), a.clone()].into_iter().collect();
        let order: Vec<Cid> = store.iter().map(|b| b.cid).collect();
        assert_eq!(order, vec![a.cid, b.cid]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = decode_cbor(&bytes);
        }
    }
}
