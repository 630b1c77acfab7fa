//! The Piri batch format: a CARv1 of receipt archives.
//!
//! # Format
//! ```text
//! varint(len) ‖ dag-cbor {"roots": [], "version": 1}              header, empty roots
//! varint(len) ‖ CIDv1(car 0x0202, sha2-256(archive)) ‖ archive   one section per receipt
//! …
//! batch CID = CIDv1(car 0x0202, sha2-256(whole file))
//! ```
//! Each archive is itself a CAR whose single root is the block
//! `{"ucan/receipt@0.9.1": Link<receipt>}` and which carries the receipt's
//! blocks (the retrieve invocation and the receipt), as
//! [`Receipt::archive`](ucanto::receipt::Receipt::archive) writes it.
//!
//! Any CARv1 reader that accepts empty roots reads a batch, e.g.
//! [`ucanto::car::decode`]. This module holds what the journal needs to write
//! and re-check batches section by section (its incremental reader, used
//! on open, repairs a batch cut short by a crash).

use std::io::{self, Read};

use cid::Cid;
use sha2::{Digest, Sha256};
use ucanto::car::CarHeader;
use ucanto::dag::{cid_of, cid_of_digest, CAR};
use ucanto::receipt::Receipt;
use ucanto::varint::{self, VarintError};

use crate::record::ReceiptRecord;

/// Bytes a batch starts with: the varint-prefixed header `{roots: [], version: 1}`.
pub fn header() -> Vec<u8> {
    let header = CarHeader::new(Vec::new()).encode();
    let mut out = Vec::with_capacity(header.len() + 1);
    varint::encode(header.len() as u64, &mut out);
    out.extend_from_slice(&header);
    out
}

/// The CID of a batch file: CIDv1, codec car (0x0202), sha2-256 of its bytes.
pub fn batch_cid(bytes: &[u8]) -> Cid {
    cid_of(CAR, bytes)
}

/// The CID a receipt archive is stored under: CIDv1, codec car, sha2-256.
pub fn archive_cid(archive: &[u8]) -> Cid {
    cid_of(CAR, archive)
}

/// The CID of a batch whose bytes went through `hasher`.
pub(crate) fn cid_from_hasher(hasher: Sha256) -> Cid {
    cid_of_digest(CAR, hasher.finalize().into())
}

/// One batch section: `varint(len) ‖ archive CID ‖ archive`.
pub fn section(archive_cid: &Cid, archive: &[u8]) -> Vec<u8> {
    let cid = archive_cid.to_bytes();
    let mut out = Vec::with_capacity(10 + cid.len() + archive.len());
    varint::encode((cid.len() + archive.len()) as u64, &mut out);
    out.extend_from_slice(&cid);
    out.extend_from_slice(archive);
    out
}

/// Why a scan stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The file ends inside the header or a section: an interrupted write.
    Truncated,
    /// Bytes that are not a valid section (or header): corruption.
    Corrupt(String),
}

/// The result of reading a batch from the start.
pub(crate) struct Scan {
    /// Length of the valid prefix: the header and every complete, verified section.
    pub good_len: u64,
    /// The receipts of the valid prefix, in order.
    pub records: Vec<ReceiptRecord>,
    /// sha2-256 state over the valid prefix.
    pub hasher: Sha256,
    /// Why the scan stopped early, if it did; `None` when the valid prefix is the whole file.
    pub stop: Option<Stop>,
}

/// Reads a batch of `len` bytes from `reader`, verifying every section (CID
/// codec and hash, canonical length prefix, decodable retrieve receipt), and
/// stops at the first byte that is not part of a complete, valid section.
///
/// A file that is a strict prefix of the header scans as `good_len = 0`,
/// stop [`Stop::Truncated`].
pub(crate) fn scan(reader: impl Read, len: u64) -> io::Result<Scan> {
    let mut reader = io::BufReader::with_capacity(256 * 1024, reader);
    let expected = header();
    let mut hasher = Sha256::new();
    let result = |good_len, records, hasher, stop| {
        Ok(Scan {
            good_len,
            records,
            hasher,
            stop,
        })
    };

    let head_len = expected.len().min(len as usize);
    let mut head = vec![0; head_len];
    reader.read_exact(&mut head)?;
    if head != expected[..head_len] {
        return result(
            0,
            Vec::new(),
            Sha256::new(),
            Some(Stop::Corrupt("not a batch header".into())),
        );
    }
    if head_len < expected.len() {
        return result(0, Vec::new(), Sha256::new(), Some(Stop::Truncated));
    }
    hasher.update(&head);
    let mut pos = expected.len() as u64;
    let mut records = Vec::new();

    loop {
        if pos == len {
            return result(pos, records, hasher, None);
        }
        let (section_len, varint_len) = match read_varint(&mut reader, len - pos)? {
            None => return result(pos, records, hasher, Some(Stop::Truncated)),
            Some(Err(why)) => {
                return result(pos, records, hasher, Some(Stop::Corrupt(why.to_string())))
            }
            Some(Ok(read)) => read,
        };
        if section_len > len - pos - varint_len as u64 {
            // Either a cut-off section or a corrupt length; both end the valid prefix.
            return result(pos, records, hasher, Some(Stop::Truncated));
        }
        let mut body = vec![0; section_len as usize];
        reader.read_exact(&mut body)?;
        match check_section(&body) {
            Ok(record) => {
                let mut prefix = Vec::with_capacity(varint_len);
                varint::encode(section_len, &mut prefix);
                hasher.update(&prefix);
                hasher.update(&body);
                pos += (varint_len as u64) + section_len;
                records.push(record);
            }
            Err(why) => return result(pos, records, hasher, Some(Stop::Corrupt(why))),
        }
    }
}

/// Reads a section-length varint from the `available` bytes left: `None`
/// if they end within it.
fn read_varint(
    reader: &mut impl Read,
    available: u64,
) -> io::Result<Option<Result<(u64, usize), VarintError>>> {
    let mut decoder = varint::Decoder::default();
    while (decoder.len() as u64) < available {
        let mut byte = [0u8];
        reader.read_exact(&mut byte)?;
        match decoder.push(byte[0]) {
            Ok(Some(value)) => return Ok(Some(Ok((value, decoder.len())))),
            Ok(None) => {}
            Err(why) => return Ok(Some(Err(why))),
        }
    }
    Ok(None)
}

/// Checks one section body (`CID ‖ archive`) and reads its receipt.
fn check_section(body: &[u8]) -> Result<ReceiptRecord, String> {
    let mut cursor = body;
    let cid = Cid::read_bytes(&mut cursor).map_err(|e| format!("invalid CID: {e}"))?;
    let cid_len = body.len() - cursor.len();
    if cid.to_bytes() != body[..cid_len] {
        return Err("non-canonical CID".into());
    }
    let archive = &body[cid_len..];
    if cid.version() != cid::Version::V1 || cid.codec() != CAR {
        return Err(format!("section CID {cid} is not a CIDv1 with codec car"));
    }
    if cid != archive_cid(archive) {
        return Err(format!("archive bytes do not hash to {cid}"));
    }
    let receipt = Receipt::extract(archive).map_err(|e| format!("archive {cid}: {e}"))?;
    ReceiptRecord::of(&receipt, cid).map_err(|e| format!("archive {cid}: {e}"))
}

/// sha2-256 of everything `reader` yields, as a batch CID.
pub(crate) fn hash_reader(mut reader: impl Read) -> io::Result<Cid> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(cid_from_hasher(hasher));
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_the_empty_roots_carv1_header() {
        // varint 0x11, {"roots": [], "version": 1} in dag-cbor.
        assert_eq!(
            header(),
            [
                0x11, 0xa2, 0x65, b'r', b'o', b'o', b't', b's', 0x80, 0x67, b'v', b'e', b'r', b's',
                b'i', b'o', b'n', 0x01
            ]
        );
        let (head, blocks) = ucanto::car::decode(&header()).unwrap();
        assert!(head.roots.is_empty() && blocks.is_empty());
    }

    #[test]
    fn section_lengths_read_whole_cut_or_padded() {
        for n in [0u64, 1, 127, 128, 300, 16_383, 16_384, 1 << 40] {
            let mut out = Vec::new();
            varint::encode(n, &mut out);
            let got = read_varint(&mut &out[..], out.len() as u64).unwrap();
            assert_eq!(got, Some(Ok((n, out.len()))));
            if out.len() > 1 {
                let cut = read_varint(&mut &out[..out.len() - 1], out.len() as u64 - 1).unwrap();
                assert_eq!(cut, None);
            }
        }
        let padded = [0x81, 0x00];
        let got = read_varint(&mut &padded[..], 2).unwrap();
        assert_eq!(got, Some(Err(VarintError::NotMinimal)));
    }

    #[test]
    fn a_strict_prefix_of_the_header_is_truncated_anything_else_corrupt() {
        let h = header();
        for cut in 0..h.len() {
            let s = scan(&h[..cut], cut as u64).unwrap();
            assert_eq!((s.good_len, s.stop), (0, Some(Stop::Truncated)), "{cut}");
        }
        let mut bad = h.clone();
        bad[3] ^= 1;
        let s = scan(&bad[..], bad.len() as u64).unwrap();
        assert!(matches!(s.stop, Some(Stop::Corrupt(_))));
        let s = scan(&h[..], h.len() as u64).unwrap();
        assert_eq!((s.good_len, s.stop), (h.len() as u64, None));
    }
}
