//! CARv1 (Content Addressable aRchive) encoding and decoding.
//!
//! A CARv1 is a length-prefixed dag-cbor header followed by length-prefixed
//! block sections:
//!
//! ```text
//! varint(len) ‖ dag-cbor {"roots": [CID, ...], "version": 1}
//! varint(len) ‖ CID bytes ‖ block bytes      (repeated)
//! ```
//!
//! Varints are unsigned LEB128 as in the multiformats `unsigned-varint` spec:
//! at most 9 bytes and minimally encoded. Output is byte-for-byte identical
//! to JS `@ipld/car`'s `CarWriter`.
//!
//! Readers are defensive, since CARs arrive from the network:
//!
//! * every block is verified against its CID (see [`verify_block`]); only
//!   sha2-256 and identity multihashes are accepted, any codec is fine;
//! * header and section lengths are checked against [`Limits`] *before* any
//!   buffer is allocated;
//! * the header is parsed strictly: exactly the keys `roots` (possibly empty)
//!   and `version` (must be 1), no trailing bytes;
//! * malformed input yields a [`CarError`], never a panic.
//!
//! Writers trust their input: they do not re-hash blocks.
//!
//! ```
//! use ucanto::car;
//! use ucanto::dag::{cid_of, RAW};
//!
//! let block = b"hello".to_vec();
//! let cid = cid_of(RAW, &block);
//!
//! let bytes = car::encode(&[cid], [(cid, &block)]);
//! let (header, blocks) = car::decode(&bytes)?;
//!
//! assert_eq!(header.roots, vec![cid]);
//! assert_eq!(blocks, vec![(cid, bytes::Bytes::from(block))]);
//! # Ok::<(), car::CarError>(())
//! ```

use std::io::{self, Cursor, Write};

use bytes::Bytes;
use cid::Cid;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::dag::{IDENTITY, SHA2_256};
use crate::varint::{self, VarintError};
/// Upper bound on an encoded CID whose digest fits in `Multihash<64>`:
/// 1 (version) + 10 (codec) + 10 (hash code) + 1 (digest size) + 64.
/// Used to bound a section before its CID has been parsed.
const MAX_CID_LEN: u64 = 86;
/// Streaming reads start with at most this much capacity and grow as bytes
/// actually arrive, so a peer that announces a large section but sends
/// little cannot make us allocate the whole limit up front.
const PREALLOC: usize = 64 * 1024;

/// Errors produced while decoding (or verifying) a CAR.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CarError {
    /// The input ended in the middle of a varint, the header or a section.
    #[error("unexpected end of CAR data")]
    Truncated,
    /// A length-prefix varint is longer than 9 bytes.
    #[error("varint length prefix is longer than 9 bytes")]
    VarintOverflow,
    /// A length-prefix varint has redundant trailing zero groups.
    #[error("varint length prefix is not minimally encoded")]
    VarintNotMinimal,
    /// The declared header length exceeds [`Limits::max_header_len`].
    #[error("CAR header of {len} bytes exceeds the limit of {max} bytes")]
    HeaderTooLarge {
        /// Declared header length.
        len: u64,
        /// Configured limit.
        max: usize,
    },
    /// A block (or, before its CID is parsed, a whole section) exceeds
    /// [`Limits::max_block_len`].
    #[error("CAR block of {len} bytes exceeds the limit of {max} bytes")]
    BlockTooLarge {
        /// Declared length: of the whole section if it was rejected before
        /// its CID was read, otherwise of the block bytes.
        len: u64,
        /// Configured limit.
        max: usize,
    },
    /// A section has length zero (it cannot even hold a CID).
    #[error("zero-length CAR section")]
    EmptySection,
    /// The header is not a well-formed CARv1 header.
    #[error("invalid CAR header: {0}")]
    InvalidHeader(String),
    /// The header's `version` is not 1 (e.g. a CARv2 pragma).
    #[error("unsupported CAR version {0} (only CARv1 is supported)")]
    UnsupportedVersion(u64),
    /// A CID in the header or at the start of a section is malformed.
    #[error("invalid CID: {0}")]
    InvalidCid(String),
    /// A block's CID uses a multihash other than sha2-256 or identity, so
    /// it cannot be verified.
    #[error("unsupported multihash code {0:#x} (only sha2-256 and identity can be verified)")]
    UnsupportedHash(u64),
    /// A block's bytes do not hash to its CID.
    #[error("block bytes do not match CID {cid}")]
    BlockHashMismatch {
        /// The CID the block claimed.
        cid: Cid,
    },
    /// The underlying reader failed.
    #[error("I/O error while reading CAR: {0}")]
    Io(#[from] io::Error),
}

/// Size limits applied by the readers before allocating.
///
/// The defaults are 64 KiB for the header (over 1,500 CIDv1 roots) and
/// 8 MiB for a block (go-car's section default, well above the usual 1 MiB
/// IPFS block). Raise `max_block_len` for CARs whose blocks are themselves
/// archives, e.g.
/// `Limits { max_block_len: 256 << 20, ..Limits::default() }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum length in bytes of the dag-cbor header.
    pub max_header_len: usize,
    /// Maximum length in bytes of a single block (excluding its CID).
    pub max_block_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_len: 64 * 1024,
            max_block_len: 8 * 1024 * 1024,
        }
    }
}

/// A CARv1 header. The version is implicitly 1.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CarHeader {
    /// Root CIDs; may be empty.
    pub roots: Vec<Cid>,
}

impl CarHeader {
    /// Creates a header with the given roots.
    pub fn new(roots: Vec<Cid>) -> Self {
        Self { roots }
    }

    /// Encodes the header as canonical dag-cbor (without the varint length
    /// prefix): `{"roots": [...], "version": 1}`.
    pub fn encode(&self) -> Vec<u8> {
        encode_header(&self.roots)
    }

    /// Decodes a dag-cbor header (without the varint length prefix).
    ///
    /// Strict: the input must be exactly one map with the keys `roots` (an
    /// array of CID links) and `version` (the integer 1), in either order,
    /// each once, with minimal dag-cbor integer encodings and no trailing
    /// bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, CarError> {
        decode_header(bytes)
    }
}

/// Checks that `bytes` is the content addressed by `cid`.
///
/// sha2-256 multihashes must be the full 32-byte digest of `bytes`; identity
/// multihashes must equal `bytes`. Other hash functions are rejected with
/// [`CarError::UnsupportedHash`] rather than silently trusted.
pub fn verify_block(cid: &Cid, bytes: &[u8]) -> Result<(), CarError> {
    let mh = cid.hash();
    let ok = match mh.code() {
        SHA2_256 => mh.size() == 32 && mh.digest() == Sha256::digest(bytes).as_slice(),
        IDENTITY => mh.digest() == bytes,
        code => return Err(CarError::UnsupportedHash(code)),
    };
    if ok {
        Ok(())
    } else {
        Err(CarError::BlockHashMismatch { cid: *cid })
    }
}

/// Encodes a complete CARv1 in memory.
///
/// Blocks are written in iteration order and are not re-hashed.
pub fn encode<B: AsRef<[u8]>>(
    roots: &[Cid],
    blocks: impl IntoIterator<Item = (Cid, B)>,
) -> Vec<u8> {
    let mut writer = CarWriter::new(Vec::new(), roots).expect("writing to a Vec cannot fail");
    for (cid, block) in blocks {
        writer
            .write_block(&cid, block.as_ref())
            .expect("writing to a Vec cannot fail");
    }
    writer.finish().expect("writing to a Vec cannot fail")
}

/// Decodes a complete in-memory CARv1 with [`Limits::default`].
///
/// Blocks are returned in file order, each verified against its CID.
pub fn decode(bytes: &[u8]) -> Result<(CarHeader, Vec<(Cid, Bytes)>), CarError> {
    decode_with_limits(bytes, Limits::default())
}

/// Decodes a complete in-memory CARv1 with the given limits.
///
/// The body is copied once; every returned block is a slice of that copy,
/// so holding any block keeps the whole body alive.
pub fn decode_with_limits(
    bytes: &[u8],
    limits: Limits,
) -> Result<(CarHeader, Vec<(Cid, Bytes)>), CarError> {
    decode_shared(&Bytes::copy_from_slice(bytes), limits)
}

/// [`decode_with_limits`] without the copy: every returned block is a slice
/// of `bytes`, which holding any block keeps alive.
pub fn decode_shared(
    bytes: &Bytes,
    limits: Limits,
) -> Result<(CarHeader, Vec<(Cid, Bytes)>), CarError> {
    let (header_len, mut pos) = varint_from_slice(bytes)?.ok_or(CarError::Truncated)?;
    let header_len = check_header_len(header_len, &limits)?;
    let header_bytes = bytes
        .get(pos..)
        .and_then(|rest| rest.get(..header_len))
        .ok_or(CarError::Truncated)?;
    let header = decode_header(header_bytes)?;
    pos += header_len;

    let mut blocks = Vec::new();
    while let Some((section_len, varint_len)) = varint_from_slice(&bytes[pos..])? {
        pos += varint_len;
        let section_len = check_section_len(section_len, &limits)?;
        if bytes.len() - pos < section_len {
            return Err(CarError::Truncated);
        }
        blocks.push(parse_section(bytes.slice(pos..pos + section_len), &limits)?);
        pos += section_len;
    }
    Ok((header, blocks))
}

/// Streaming CARv1 writer over a [`std::io::Write`].
///
/// Blocks are written through as they come; wrap unbuffered sinks in a
/// [`std::io::BufWriter`].
#[derive(Debug)]
pub struct CarWriter<W: Write> {
    writer: W,
}

impl<W: Write> CarWriter<W> {
    /// Writes the header for `roots` and returns a writer ready for blocks.
    pub fn new(mut writer: W, roots: &[Cid]) -> io::Result<Self> {
        let header = encode_header(roots);
        let mut prefix = Vec::with_capacity(varint::MAX_LEN);
        varint::encode(header.len() as u64, &mut prefix);
        writer.write_all(&prefix)?;
        writer.write_all(&header)?;
        Ok(Self { writer })
    }

    /// Writes one block section. The block is not checked against `cid`.
    pub fn write_block(&mut self, cid: &Cid, block: &[u8]) -> io::Result<()> {
        let cid_bytes = cid.to_bytes();
        let mut prefix = Vec::with_capacity(varint::MAX_LEN + cid_bytes.len());
        varint::encode((cid_bytes.len() + block.len()) as u64, &mut prefix);
        prefix.extend_from_slice(&cid_bytes);
        self.writer.write_all(&prefix)?;
        self.writer.write_all(block)
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.writer.flush()?;
        Ok(self.writer)
    }
}

/// Streaming CARv1 reader over a [`tokio::io::AsyncRead`].
///
/// Memory use is bounded by one section (at most
/// [`Limits::max_block_len`] plus a CID). Varint prefixes are read a byte at
/// a time, so wrap unbuffered sources (sockets) in a
/// [`tokio::io::BufReader`]. After an error the stream position is
/// unspecified; drop the reader.
#[derive(Debug)]
pub struct CarReader<R: AsyncRead + Unpin> {
    reader: R,
    header: CarHeader,
    limits: Limits,
}

impl<R: AsyncRead + Unpin> CarReader<R> {
    /// Reads and validates the header.
    pub async fn new(mut reader: R, limits: Limits) -> Result<Self, CarError> {
        let header_len = read_varint(&mut reader).await?.ok_or(CarError::Truncated)?;
        let header_len = check_header_len(header_len, &limits)?;
        let header = decode_header(&read_bounded(&mut reader, header_len).await?)?;
        Ok(Self {
            reader,
            header,
            limits,
        })
    }

    /// The header read by [`CarReader::new`].
    pub fn header(&self) -> &CarHeader {
        &self.header
    }

    /// Reads and verifies the next block.
    ///
    /// Returns `Ok(None)` on a clean end of input at a section boundary and
    /// [`CarError::Truncated`] if the input ends inside a section.
    pub async fn next_block(&mut self) -> Result<Option<(Cid, Bytes)>, CarError> {
        let Some(section_len) = read_varint(&mut self.reader).await? else {
            return Ok(None);
        };
        let section_len = check_section_len(section_len, &self.limits)?;
        let section = read_bounded(&mut self.reader, section_len).await?;
        parse_section(Bytes::from(section), &self.limits).map(Some)
    }
}

// ---------------------------------------------------------------------------
// Sections and limits

fn check_header_len(len: u64, limits: &Limits) -> Result<usize, CarError> {
    let too_large = CarError::HeaderTooLarge {
        len,
        max: limits.max_header_len,
    };
    let len = usize::try_from(len).map_err(|_| too_large)?;
    if len > limits.max_header_len {
        return Err(CarError::HeaderTooLarge {
            len: len as u64,
            max: limits.max_header_len,
        });
    }
    if len == 0 {
        return Err(CarError::InvalidHeader("zero-length header".into()));
    }
    Ok(len)
}

/// Bounds a section before its CID is known: the block limit plus room for
/// the largest CID. The exact block length is checked in `parse_section`.
fn check_section_len(len: u64, limits: &Limits) -> Result<usize, CarError> {
    if len == 0 {
        return Err(CarError::EmptySection);
    }
    let max_block = u64::try_from(limits.max_block_len).unwrap_or(u64::MAX);
    let too_large = || CarError::BlockTooLarge {
        len,
        max: limits.max_block_len,
    };
    if len > max_block.saturating_add(MAX_CID_LEN) {
        return Err(too_large());
    }
    usize::try_from(len).map_err(|_| too_large())
}

fn parse_section(section: Bytes, limits: &Limits) -> Result<(Cid, Bytes), CarError> {
    let (cid, cid_len) = read_cid(&section)?;
    let block = section.slice(cid_len..);
    if block.len() > limits.max_block_len {
        return Err(CarError::BlockTooLarge {
            len: block.len() as u64,
            max: limits.max_block_len,
        });
    }
    verify_block(&cid, &block)?;
    Ok((cid, block))
}

/// Parses a CID (v0 or v1) from the start of `bytes`, returning it and the
/// number of bytes it occupied.
fn read_cid(bytes: &[u8]) -> Result<(Cid, usize), CarError> {
    let mut cursor = Cursor::new(bytes);
    let cid = Cid::read_bytes(&mut cursor).map_err(|e| CarError::InvalidCid(e.to_string()))?;
    // The cursor never moves past `bytes.len()`, which is a usize.
    Ok((cid, cursor.position() as usize))
}

/// Reads exactly `len` bytes, growing the buffer only as data arrives (see
/// [`PREALLOC`]). Callers have already checked `len` against the limits.
async fn read_bounded<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
) -> Result<Vec<u8>, CarError> {
    let mut buf = Vec::with_capacity(len.min(PREALLOC));
    while buf.len() < len {
        if buf.len() == buf.capacity() {
            // Double, but never beyond `len`.
            buf.reserve_exact(buf.capacity().max(PREALLOC).min(len - buf.len()));
        }
        let remaining = (len - buf.len()) as u64;
        if (&mut *reader).take(remaining).read_buf(&mut buf).await? == 0 {
            return Err(CarError::Truncated);
        }
    }
    Ok(buf)
}

// ---------------------------------------------------------------------------
// Varints

impl From<VarintError> for CarError {
    fn from(e: VarintError) -> Self {
        match e {
            VarintError::Truncated => CarError::Truncated,
            VarintError::Overflow => CarError::VarintOverflow,
            VarintError::NotMinimal => CarError::VarintNotMinimal,
        }
    }
}

/// Decodes a varint from the start of `bytes`, returning the value and its
/// encoded length; `None` if `bytes` is empty (a clean section boundary).
fn varint_from_slice(bytes: &[u8]) -> Result<Option<(u64, usize)>, CarError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    Ok(Some(varint::decode(bytes)?))
}

/// Reads a varint; `None` on EOF before its first byte.
async fn read_varint<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<u64>, CarError> {
    let mut decoder = varint::Decoder::default();
    loop {
        let mut byte = [0u8; 1];
        if reader.read(&mut byte).await? == 0 {
            return if decoder.is_empty() {
                Ok(None)
            } else {
                Err(CarError::Truncated)
            };
        }
        if let Some(value) = decoder.push(byte[0])? {
            return Ok(Some(value));
        }
    }
}

// ---------------------------------------------------------------------------
// Header dag-cbor. Hand-rolled because the header has a fixed shape and this
// lets us be exactly as strict as we want (duplicate keys, trailing bytes,
// minimal encodings) with precise errors.

use crate::dag::canonical::{
    MAJOR_ARRAY, MAJOR_BYTES, MAJOR_MAP, MAJOR_NEGINT, MAJOR_TAG, MAJOR_TEXT, MAJOR_UINT, TAG_CID,
};
use crate::dag::cbor;

fn encode_header(roots: &[Cid]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + roots.len() * 42);
    cbor::head(&mut out, MAJOR_MAP, 2);
    // Canonical dag-cbor key order: shorter keys first, so "roots" < "version".
    cbor::text(&mut out, "roots");
    cbor::head(&mut out, MAJOR_ARRAY, roots.len() as u64);
    for root in roots {
        cbor::link(&mut out, root);
    }
    cbor::text(&mut out, "version");
    cbor::head(&mut out, MAJOR_UINT, 1);
    out
}

fn invalid(msg: impl Into<String>) -> CarError {
    CarError::InvalidHeader(msg.into())
}

/// Minimal reader for the subset of dag-cbor a CAR header uses.
struct CborReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> CborReader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], CarError> {
        let rest = &self.buf[self.pos..];
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= rest.len())
            .ok_or_else(|| invalid("unexpected end of header"))?;
        self.pos += n;
        Ok(&rest[..n])
    }

    /// Reads an item head: (major type, argument). Rejects indefinite
    /// lengths and non-minimal arguments, as dag-cbor requires.
    fn head(&mut self) -> Result<(u8, u64), CarError> {
        let initial = self.take(1)?[0];
        let (major, info) = (initial >> 5, initial & 0x1f);
        let (value, min) = match info {
            0..=23 => return Ok((major, u64::from(info))),
            24 => (u64::from(self.take(1)?[0]), 24),
            25 => (u64::from(u16::from_be_bytes(self.array()?)), 0x100),
            26 => (u64::from(u32::from_be_bytes(self.array()?)), 0x1_0000),
            27 => (u64::from_be_bytes(self.array()?), 0x1_0000_0000),
            31 => {
                return Err(invalid(
                    "indefinite-length items are not allowed in dag-cbor",
                ))
            }
            _ => return Err(invalid(format!("reserved CBOR additional info {info}"))),
        };
        if value < min {
            return Err(invalid("non-minimal CBOR integer encoding"));
        }
        Ok((major, value))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CarError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn cid_link(&mut self) -> Result<Cid, CarError> {
        if self.head()? != (MAJOR_TAG, TAG_CID) {
            return Err(invalid("root is not a CID link (tag 42)"));
        }
        let (major, len) = self.head()?;
        if major != MAJOR_BYTES {
            return Err(invalid("CID link payload is not a byte string"));
        }
        let Some((&0x00, cid_bytes)) = self.take(len)?.split_first() else {
            return Err(invalid("CID link is missing its 0x00 prefix"));
        };
        let (cid, used) = read_cid(cid_bytes)?;
        if used != cid_bytes.len() {
            return Err(CarError::InvalidCid(
                "trailing bytes after CID in link".into(),
            ));
        }
        Ok(cid)
    }
}

fn decode_header(bytes: &[u8]) -> Result<CarHeader, CarError> {
    let mut r = CborReader { buf: bytes, pos: 0 };
    let (major, entries) = r.head()?;
    if major != MAJOR_MAP {
        return Err(invalid("header is not a map"));
    }
    let mut roots = None;
    let mut version = None;
    // `entries` is untrusted, but every iteration consumes input or fails.
    for _ in 0..entries {
        let (major, key_len) = r.head()?;
        if major != MAJOR_TEXT {
            return Err(invalid("map key is not a string"));
        }
        match r.take(key_len)? {
            b"roots" => {
                if roots.is_some() {
                    return Err(invalid("duplicate key \"roots\""));
                }
                let (major, count) = r.head()?;
                if major != MAJOR_ARRAY {
                    return Err(invalid("\"roots\" is not an array"));
                }
                let mut list = Vec::with_capacity(count.min(16) as usize);
                for _ in 0..count {
                    list.push(r.cid_link()?);
                }
                roots = Some(list);
            }
            b"version" => {
                if version.is_some() {
                    return Err(invalid("duplicate key \"version\""));
                }
                match r.head()? {
                    (MAJOR_UINT, v) => version = Some(v),
                    (MAJOR_NEGINT, _) => return Err(invalid("\"version\" is negative")),
                    _ => return Err(invalid("\"version\" is not an integer")),
                }
            }
            other => {
                return Err(invalid(format!(
                    "unknown key {:?}",
                    String::from_utf8_lossy(other)
                )))
            }
        }
    }
    if r.pos != bytes.len() {
        return Err(invalid("trailing bytes after header map"));
    }
    // Version first, so a CARv2 pragma (`{version: 2}`, no roots) reports as such.
    match version {
        None => return Err(invalid("missing \"version\"")),
        Some(1) => {}
        Some(v) => return Err(CarError::UnsupportedVersion(v)),
    }
    let roots = roots.ok_or_else(|| invalid("missing \"roots\""))?;
    Ok(CarHeader { roots })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::cid_of;
    use ipld_core::ipld::Ipld;
    use multihash::Multihash;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    const RAW: u64 = 0x55;
    const DAG_CBOR: u64 = 0x71;
    const DAG_PB: u64 = 0x70;

    // Generated by fixtures/js/gen-car.js with JS @ipld/car.
    const BASIC: &[u8] = include_bytes!("../fixtures/car/basic.car");
    const EMPTY_ROOTS: &[u8] = include_bytes!("../fixtures/car/empty-roots.car");
    const V0: &[u8] = include_bytes!("../fixtures/car/v0.car");
    const GOLDENS: [&[u8]; 3] = [BASIC, EMPTY_ROOTS, V0];

    fn dag_cbor(value: &Ipld) -> Vec<u8> {
        serde_ipld_dagcbor::to_vec(value).unwrap()
    }

    fn map(entries: Vec<(&str, Ipld)>) -> Ipld {
        Ipld::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    fn block(codec: u64, bytes: Vec<u8>) -> (Cid, Vec<u8>) {
        (cid_of(codec, &bytes), bytes)
    }

    fn identity_block(codec: u64, bytes: &[u8]) -> (Cid, Vec<u8>) {
        let cid = Cid::new_v1(codec, Multihash::wrap(IDENTITY, bytes).unwrap());
        (cid, bytes.to_vec())
    }

    fn raw_hello() -> (Cid, Vec<u8>) {
        block(RAW, b"hello car".to_vec())
    }

    /// Mirrors the blocks built by gen-car.js for basic.car.
    fn basic_blocks() -> Vec<(Cid, Vec<u8>)> {
        let raw_a = raw_hello();
        let cbor_b = block(
            DAG_CBOR,
            dag_cbor(&map(vec![
                ("list", Ipld::List(vec![1.into(), 2.into(), 3.into()])),
                ("nested", map(vec![("ok", true.into()), ("s", "x".into())])),
            ])),
        );
        let inline = identity_block(RAW, b"inline");
        let root = block(
            DAG_CBOR,
            dag_cbor(&map(vec![
                ("name", "root".into()),
                (
                    "links",
                    Ipld::List(vec![
                        Ipld::Link(raw_a.0),
                        Ipld::Link(cbor_b.0),
                        Ipld::Link(inline.0),
                    ]),
                ),
            ])),
        );
        vec![root, raw_a, cbor_b, inline]
    }

    fn empty_roots_blocks() -> Vec<(Cid, Vec<u8>)> {
        vec![
            block(RAW, vec![0, 1, 2, 3, 255]),
            block(DAG_CBOR, dag_cbor(&map(vec![("batch", 7.into())]))),
        ]
    }

    fn v0_blocks() -> Vec<(Cid, Vec<u8>)> {
        let pb = vec![0x0a, 0x02, 0x08, 0x01];
        let mh = Multihash::wrap(SHA2_256, &Sha256::digest(&pb)).unwrap();
        vec![(Cid::new_v0(mh).unwrap(), pb), raw_hello()]
    }

    fn as_bytes(blocks: Vec<(Cid, Vec<u8>)>) -> Vec<(Cid, Bytes)> {
        blocks
            .into_iter()
            .map(|(c, b)| (c, Bytes::from(b)))
            .collect()
    }

    /// Header followed by the given raw body bytes.
    fn with_header(roots: &[Cid], body: &[u8]) -> Vec<u8> {
        let mut car = encode::<&[u8]>(roots, []);
        car.extend_from_slice(body);
        car
    }

    fn varint(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint::encode(v, &mut out);
        out
    }

    /// An AsyncRead that hands out one byte per read and alternates with
    /// `Pending`, to exercise partial reads and wake-ups.
    struct Trickle<'a> {
        data: &'a [u8],
        pending: bool,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.pending {
                self.pending = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.pending = true;
            if let Some((&b, rest)) = self.data.split_first() {
                if buf.remaining() > 0 {
                    buf.put_slice(&[b]);
                    self.data = rest;
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    async fn stream_all<R: AsyncRead + Unpin>(
        reader: R,
        limits: Limits,
    ) -> Result<(CarHeader, Vec<(Cid, Bytes)>), CarError> {
        let mut reader = CarReader::new(reader, limits).await?;
        let mut blocks = Vec::new();
        while let Some(b) = reader.next_block().await? {
            blocks.push(b);
        }
        Ok((reader.header().clone(), blocks))
    }

    fn stream_decode(
        bytes: &[u8],
        limits: Limits,
    ) -> Result<(CarHeader, Vec<(Cid, Bytes)>), CarError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(stream_all(bytes, limits))
    }

    /// Decodes with all three readers and checks they agree.
    fn decode_all_ways(
        bytes: &[u8],
        limits: Limits,
    ) -> Result<(CarHeader, Vec<(Cid, Bytes)>), CarError> {
        let buffered = decode_with_limits(bytes, limits);
        let streamed = stream_decode(bytes, limits);
        let trickled = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(stream_all(
                Trickle {
                    data: bytes,
                    pending: false,
                },
                limits,
            ));
        match (&buffered, &streamed, &trickled) {
            (Ok(a), Ok(b), Ok(c)) => {
                assert_eq!(a, b);
                assert_eq!(a, c);
            }
            (Err(a), Err(b), Err(c)) => {
                assert_eq!(a.to_string(), b.to_string());
                assert_eq!(a.to_string(), c.to_string());
            }
            _ => panic!("readers disagree: {buffered:?} / {streamed:?} / {trickled:?}"),
        }
        buffered
    }

    fn decode_err(bytes: &[u8]) -> CarError {
        decode_all_ways(bytes, Limits::default()).unwrap_err()
    }

    // --- golden interop ---------------------------------------------------

    #[test]
    fn golden_basic_matches_js() {
        let blocks = basic_blocks();
        assert_eq!(encode(&[blocks[0].0], blocks.clone()), BASIC);
        let (header, decoded) = decode(BASIC).unwrap();
        assert_eq!(header.roots, vec![blocks[0].0]);
        assert_eq!(decoded, as_bytes(blocks));
        // Exercises identity and sha2-256, dag-cbor and raw.
        assert_eq!(decoded[3].0.hash().code(), IDENTITY);
    }

    /// Decoding shared bytes gives the same blocks, as slices of the input.
    #[test]
    fn shared_decoding_slices_the_input() {
        let input = Bytes::from_static(BASIC);
        let (header, blocks) = decode_shared(&input, Limits::default()).unwrap();
        assert_eq!((header, blocks.clone()), decode(BASIC).unwrap());
        let range = input.as_ptr_range();
        for (_, block) in &blocks {
            assert!(range.contains(&block.as_ptr()), "a copy, not a slice");
        }
    }

    #[test]
    fn golden_empty_roots_matches_js() {
        let blocks = empty_roots_blocks();
        assert_eq!(encode(&[], blocks.clone()), EMPTY_ROOTS);
        let (header, decoded) = decode(EMPTY_ROOTS).unwrap();
        assert!(header.roots.is_empty());
        assert_eq!(decoded, as_bytes(blocks));
    }

    #[test]
    fn golden_cidv0_matches_js() {
        let blocks = v0_blocks();
        let roots = [blocks[0].0, blocks[1].0];
        assert_eq!(roots[0].version(), cid::Version::V0);
        assert_eq!(roots[0].codec(), DAG_PB);
        assert_eq!(encode(&roots, blocks.clone()), V0);
        let (header, decoded) = decode(V0).unwrap();
        assert_eq!(header.roots, roots);
        assert_eq!(decoded, as_bytes(blocks));
    }

    #[test]
    fn sha256_cid_matches_js() {
        assert_eq!(
            raw_hello().0.to_string(),
            "bafkreibkndny6zoinx5lkrvbgzq27y5ni6y5plc5oxkaspnwe4gm5iohc4"
        );
    }

    #[test]
    fn goldens_reencode_identically_and_readers_agree() {
        for golden in GOLDENS {
            let (header, blocks) = decode_all_ways(golden, Limits::default()).unwrap();
            assert_eq!(encode(&header.roots, blocks), golden);
            let header_len = golden[0] as usize; // all goldens: 1-byte prefix
            assert_eq!(header.encode(), &golden[1..1 + header_len]);
            assert_eq!(CarHeader::decode(&header.encode()).unwrap(), header);
        }
    }

    #[test]
    fn car_writer_matches_encode() {
        let blocks = basic_blocks();
        let mut w = CarWriter::new(Vec::new(), &[blocks[0].0]).unwrap();
        for (cid, bytes) in &blocks {
            w.write_block(cid, bytes).unwrap();
        }
        assert_eq!(w.finish().unwrap(), BASIC);
    }

    #[test]
    fn header_with_many_roots_round_trips() {
        // 300 roots needs a 2-byte CBOR array length.
        let roots: Vec<Cid> = (0..300u32).map(|i| cid_of(RAW, &i.to_be_bytes())).collect();
        let header = CarHeader::new(roots);
        assert_eq!(CarHeader::decode(&header.encode()).unwrap(), header);
        let car = encode::<&[u8]>(&header.roots, []);
        assert_eq!(decode(&car).unwrap().0, header);
    }

    // --- truncation -------------------------------------------------------

    #[test]
    fn every_prefix_is_truncated_or_a_section_boundary() {
        for golden in GOLDENS {
            // Offsets at which a complete prefix ends, with its block count.
            let mut boundaries = vec![];
            let (hlen, mut pos) = varint_from_slice(golden).unwrap().unwrap();
            pos += hlen as usize;
            boundaries.push((pos, 0));
            while pos < golden.len() {
                let (len, n) = varint_from_slice(&golden[pos..]).unwrap().unwrap();
                pos += n + len as usize;
                boundaries.push((pos, boundaries.len()));
            }
            for cut in 0..golden.len() {
                let result = decode_all_ways(&golden[..cut], Limits::default());
                match boundaries.iter().find(|(end, _)| *end == cut) {
                    Some(&(_, count)) => assert_eq!(result.unwrap().1.len(), count, "cut {cut}"),
                    None => assert!(
                        matches!(result, Err(CarError::Truncated)),
                        "cut {cut}: {result:?}"
                    ),
                }
            }
        }
    }

    // --- block verification -------------------------------------------------

    #[test]
    fn corrupted_identity_block_is_rejected() {
        let mut car = BASIC.to_vec();
        *car.last_mut().unwrap() ^= 1;
        let inline = basic_blocks()[3].0;
        assert!(matches!(decode_err(&car), CarError::BlockHashMismatch { cid } if cid == inline));
    }

    #[test]
    fn corrupted_sha256_block_is_rejected() {
        let (cid, bytes) = raw_hello();
        let car = encode(&[], [(cid, b"hello cat".as_slice())]);
        assert!(matches!(decode_err(&car), CarError::BlockHashMismatch { cid: c } if c == cid));
        assert!(verify_block(&cid, &bytes).is_ok());
        assert!(verify_block(&cid, b"").is_err());
    }

    #[test]
    fn truncated_sha256_digest_is_a_mismatch() {
        let digest = Sha256::digest(b"x");
        let cid = Cid::new_v1(RAW, Multihash::wrap(SHA2_256, &digest[..20]).unwrap());
        assert!(matches!(
            verify_block(&cid, b"x"),
            Err(CarError::BlockHashMismatch { .. })
        ));
    }

    #[test]
    fn unknown_hash_is_rejected() {
        const BLAKE3: u64 = 0x1e;
        let cid = Cid::new_v1(RAW, Multihash::wrap(BLAKE3, &[7; 32]).unwrap());
        let car = encode(&[], [(cid, b"data".as_slice())]);
        assert!(matches!(
            decode_err(&car),
            CarError::UnsupportedHash(BLAKE3)
        ));
    }

    #[test]
    fn any_codec_is_accepted() {
        const CAR: u64 = 0x0202;
        let blocks = vec![block(CAR, BASIC.to_vec()), block(0x1234_5678, vec![1, 2])];
        let car = encode(&[blocks[0].0], blocks.clone());
        assert_eq!(decode(&car).unwrap().1, as_bytes(blocks));
    }

    // --- varints and limits -------------------------------------------------

    #[test]
    fn oversized_varint_is_rejected() {
        assert!(matches!(decode_err(&[0xff; 12]), CarError::VarintOverflow));
        // 9 bytes is the maximum; the 9th must end the varint.
        let mut nine = vec![0x80; 8];
        nine.push(0x01);
        assert!(
            matches!(decode_err(&nine), CarError::HeaderTooLarge { len, .. } if len == 1 << 56)
        );
        let body = [0xff; 10];
        assert!(matches!(
            decode_err(&with_header(&[], &body)),
            CarError::VarintOverflow
        ));
    }

    #[test]
    fn non_minimal_varint_is_rejected() {
        assert!(matches!(
            decode_err(&[0x81, 0x00]),
            CarError::VarintNotMinimal
        ));
        let car = with_header(&[], &[0x80, 0x80, 0x00]);
        assert!(matches!(decode_err(&car), CarError::VarintNotMinimal));
    }

    #[test]
    fn huge_section_length_errors_without_allocating() {
        let car = with_header(&[], &varint(1 << 60));
        assert!(matches!(
            decode_err(&car),
            CarError::BlockTooLarge { len, .. } if len == 1 << 60
        ));
        // Even with no effective limit nothing is allocated up front: the
        // data simply is not there. (An attempted 2^60-byte allocation would
        // abort the test process.)
        let unlimited = Limits {
            max_header_len: usize::MAX,
            max_block_len: usize::MAX,
        };
        let result = decode_all_ways(&car, unlimited);
        assert!(matches!(result, Err(CarError::Truncated)), "{result:?}");
    }

    #[test]
    fn header_over_limit_is_rejected() {
        let limits = Limits::default();
        let mut car = varint(limits.max_header_len as u64 + 1);
        car.extend_from_slice(&[0xa2; 16]);
        assert!(
            matches!(decode_err(&car), CarError::HeaderTooLarge { max, .. } if max == limits.max_header_len)
        );
        assert!(matches!(
            decode_err(&varint(1 << 60)),
            CarError::HeaderTooLarge { .. }
        ));
        let tight = Limits {
            max_header_len: 8,
            ..limits
        };
        let result = decode_all_ways(BASIC, tight);
        assert!(
            matches!(result, Err(CarError::HeaderTooLarge { len: 58, max: 8 })),
            "{result:?}"
        );
    }

    #[test]
    fn block_over_limit_is_rejected() {
        let big = block(RAW, vec![9; 1000]);
        let car = encode(&[], [big.clone()]);
        let at_limit = Limits {
            max_block_len: 1000,
            ..Limits::default()
        };
        assert_eq!(
            decode_all_ways(&car, at_limit).unwrap().1,
            as_bytes(vec![big])
        );
        // Within the section slack, so caught by the exact post-CID check.
        let under = Limits {
            max_block_len: 999,
            ..at_limit
        };
        let result = decode_all_ways(&car, under);
        assert!(
            matches!(
                result,
                Err(CarError::BlockTooLarge {
                    len: 1000,
                    max: 999
                })
            ),
            "{result:?}"
        );
        // Far beyond: caught before reading the section.
        let tiny = Limits {
            max_block_len: 10,
            ..at_limit
        };
        let result = decode_all_ways(&car, tiny);
        assert!(
            matches!(result, Err(CarError::BlockTooLarge { len: 1036, max: 10 })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn large_block_streams_through_growth_path() {
        // Bigger than PREALLOC so `read_bounded` has to grow.
        let big = block(RAW, (0..200_000u32).map(|i| i as u8).collect());
        let car = encode(&[big.0], [big.clone()]);
        let (_, blocks) = stream_all(&car[..], Limits::default()).await.unwrap();
        assert_eq!(blocks, as_bytes(vec![big]));
    }

    #[tokio::test]
    async fn streaming_reader_is_fused_at_eof() {
        let mut reader = CarReader::new(EMPTY_ROOTS, Limits::default())
            .await
            .unwrap();
        assert!(reader.header().roots.is_empty());
        assert!(reader.next_block().await.unwrap().is_some());
        assert!(reader.next_block().await.unwrap().is_some());
        assert!(reader.next_block().await.unwrap().is_none());
        assert!(reader.next_block().await.unwrap().is_none());
    }

    // --- sections -------------------------------------------------------------

    #[test]
    fn empty_section_is_rejected() {
        assert!(matches!(
            decode_err(&with_header(&[], &[0x00])),
            CarError::EmptySection
        ));
    }

    #[test]
    fn malformed_cid_is_rejected() {
        // CID version 2, a CID cut short, and an explicit CIDv0 marker.
        for section in [
            &[0x02, 0x55, 0x12][..],
            &[0x01, 0x55, 0x12, 0x20, 0x00],
            &[0x00, 0x70],
        ] {
            let mut body = varint(section.len() as u64);
            body.extend_from_slice(section);
            let err = decode_err(&with_header(&[], &body));
            assert!(matches!(err, CarError::InvalidCid(_)), "{err:?}");
        }
    }

    // --- header ---------------------------------------------------------------

    fn framed(header: &[u8]) -> Vec<u8> {
        let mut car = varint(header.len() as u64);
        car.extend_from_slice(header);
        car
    }

    fn header_err(header: &[u8]) -> CarError {
        let err = CarHeader::decode(header).unwrap_err();
        // Framed into a CAR, every reader must report the same thing.
        assert_eq!(decode_err(&framed(header)).to_string(), err.to_string());
        err
    }

    fn assert_invalid(header: &[u8], needle: &str) {
        match header_err(header) {
            CarError::InvalidHeader(msg) => {
                assert!(msg.contains(needle), "{msg:?} lacks {needle:?}")
            }
            other => panic!("expected InvalidHeader({needle}), got {other:?}"),
        }
    }

    fn ipld_header(entries: Vec<(&str, Ipld)>) -> Vec<u8> {
        dag_cbor(&map(entries))
    }

    #[test]
    fn header_version_2_is_unsupported() {
        // The CARv2 pragma: {"version": 2}.
        let pragma = hex::decode("a16776657273696f6e02").unwrap();
        assert!(matches!(
            header_err(&pragma),
            CarError::UnsupportedVersion(2)
        ));
        let v2 = ipld_header(vec![("roots", Ipld::List(vec![])), ("version", 2.into())]);
        assert!(matches!(header_err(&v2), CarError::UnsupportedVersion(2)));
    }

    #[test]
    fn header_structure_is_strict() {
        let roots = || ("roots", Ipld::List(vec![]));
        let v1 = || ("version", Ipld::Integer(1));
        assert_invalid(&dag_cbor(&Ipld::List(vec![])), "not a map");
        assert_invalid(&dag_cbor(&Ipld::Integer(1)), "not a map");
        assert_invalid(
            &ipld_header(vec![roots(), v1(), ("extra", 0.into())]),
            "unknown key",
        );
        assert_invalid(&ipld_header(vec![v1()]), "missing \"roots\"");
        assert_invalid(&ipld_header(vec![roots()]), "missing \"version\"");
        assert_invalid(
            &ipld_header(vec![roots(), ("version", "1".into())]),
            "not an integer",
        );
        assert_invalid(
            &ipld_header(vec![roots(), ("version", 1.0.into())]),
            "not an integer",
        );
        assert_invalid(
            &ipld_header(vec![roots(), ("version", (-1).into())]),
            "negative",
        );
        assert_invalid(
            &ipld_header(vec![("roots", Ipld::Null), v1()]),
            "not an array",
        );
        assert_invalid(
            &ipld_header(vec![("roots", Ipld::List(vec![1.into()])), v1()]),
            "tag 42",
        );
        assert!(matches!(
            CarHeader::decode(&[]),
            Err(CarError::InvalidHeader(_))
        ));

        let good = encode_header(&[]);
        let mut trailing = good.clone();
        trailing.push(0x00);
        assert_invalid(&trailing, "trailing bytes");

        // Duplicate key: {"roots": [], "roots": [], "version": 1}.
        let dup = hex::decode("a365726f6f74738065726f6f7473806776657273696f6e01").unwrap();
        assert_invalid(&dup, "duplicate");
        // Indefinite-length map.
        let indefinite = hex::decode("bf65726f6f7473806776657273696f6e01ff").unwrap();
        assert_invalid(&indefinite, "indefinite");
        // Non-minimal version integer (0x18 0x01).
        let non_minimal = hex::decode("a265726f6f7473806776657273696f6e1801").unwrap();
        assert_invalid(&non_minimal, "non-minimal");
        // Non-canonical key order is unambiguous, so it is accepted.
        let reordered = hex::decode("a26776657273696f6e0165726f6f747380").unwrap();
        assert_eq!(CarHeader::decode(&reordered).unwrap(), CarHeader::default());
        // Zero-length header.
        assert!(matches!(decode_err(&[0x00]), CarError::InvalidHeader(_)));
    }

    #[test]
    fn header_cid_links_are_validated() {
        let cid = raw_hello().0.to_bytes();
        let link = |payload: &[u8]| {
            let mut h = hex::decode("a265726f6f747381d82a").unwrap();
            cbor::head(&mut h, MAJOR_BYTES, payload.len() as u64);
            h.extend_from_slice(payload);
            h.extend_from_slice(&hex::decode("6776657273696f6e01").unwrap());
            h
        };
        let mut ok = vec![0x00];
        ok.extend_from_slice(&cid);
        assert_eq!(
            CarHeader::decode(&link(&ok)).unwrap().roots,
            vec![raw_hello().0]
        );
        assert_invalid(&link(&cid), "0x00 prefix");
        assert_invalid(&link(&[]), "0x00 prefix");
        let mut trailing = ok.clone();
        trailing.push(0xaa);
        assert!(matches!(
            header_err(&link(&trailing)),
            CarError::InvalidCid(_)
        ));
        assert!(matches!(
            header_err(&link(&ok[..10])),
            CarError::InvalidCid(_)
        ));
    }

    #[test]
    fn errors_have_readable_messages() {
        let cid = raw_hello().0;
        assert_eq!(
            CarError::BlockHashMismatch { cid }.to_string(),
            format!("block bytes do not match CID {cid}")
        );
        assert_eq!(
            CarError::UnsupportedHash(0x1e).to_string(),
            "unsupported multihash code 0x1e (only sha2-256 and identity can be verified)"
        );
    }

    // --- properties -------------------------------------------------------------

    fn arb_block() -> impl Strategy<Value = (Cid, Vec<u8>)> {
        (
            prop_oneof![
                Just(RAW),
                Just(DAG_CBOR),
                Just(0x0202u64),
                any::<u64>().prop_map(|c| c >> 1)
            ],
            prop::collection::vec(any::<u8>(), 0..300),
            any::<bool>(),
        )
            .prop_map(|(codec, bytes, inline)| {
                if inline && bytes.len() <= 64 {
                    identity_block(codec, &bytes)
                } else {
                    block(codec, bytes)
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_all_ways(&bytes, Limits::default());
        }

        #[test]
        fn arbitrary_body_after_valid_header_never_panics(
            body in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            let _ = decode_all_ways(&with_header(&[], &body), Limits::default());
        }

        #[test]
        fn mutated_golden_never_panics(
            idx in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            golden in prop::sample::select(GOLDENS.to_vec()),
        ) {
            let mut car = golden.to_vec();
            car[idx.index(golden.len())] = byte;
            let _ = decode_all_ways(&car, Limits::default());
        }

        #[test]
        fn arbitrary_blocks_round_trip(
            blocks in prop::collection::vec(arb_block(), 0..8),
            root_count in 0usize..4,
        ) {
            let roots: Vec<Cid> = blocks.iter().take(root_count).map(|(c, _)| *c).collect();
            let car = encode(&roots, blocks.clone());
            let (header, decoded) = decode_all_ways(&car, Limits::default()).unwrap();
            prop_assert_eq!(&header.roots, &roots);
            prop_assert_eq!(&decoded, &as_bytes(blocks));
            prop_assert_eq!(encode(&header.roots, decoded), car);
        }
    }
}
