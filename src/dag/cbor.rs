//! The dag-cbor items of a block with a fixed shape, written directly: what
//! a CAR header or a tally chunk of thousands of links needs, without
//! building an IPLD tree first. The caller writes map keys in dag-cbor's
//! order (shorter first, then bytewise).
//!
//! ```
//! use ucanto::dag::{cbor, cid_of, encode_cbor, Ipld, IpldMap, RAW};
//! let link = cid_of(RAW, b"hello");
//! let mut out = Vec::new();
//! cbor::head(&mut out, cbor::MAP, 1);
//! cbor::text(&mut out, "link");
//! cbor::link(&mut out, &link);
//! let map = IpldMap::from([("link".to_string(), Ipld::Link(link))]);
//! assert_eq!(out, encode_cbor(&Ipld::Map(map)).unwrap());
//! ```

use cid::Cid;

/// Major type of an unsigned integer.
pub const UINT: u8 = 0;
/// Major type of a negative integer.
pub const NEGINT: u8 = 1;
/// Major type of a byte string.
pub const BYTES: u8 = 2;
/// Major type of a text string.
pub const TEXT: u8 = 3;
/// Major type of a list (array).
pub const LIST: u8 = 4;
/// Major type of a map.
pub const MAP: u8 = 5;
/// Major type of a tag.
pub const TAG: u8 = 6;
/// The tag of an IPLD link.
pub const TAG_CID: u64 = 42;

/// A head (major type and argument) in its shortest form, as dag-cbor
/// requires.
pub fn head(out: &mut Vec<u8>, major: u8, argument: u64) {
    let major = major << 5;
    match argument {
        0..=23 => out.push(major | argument as u8),
        24..=0xff => out.extend_from_slice(&[major | 24, argument as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&(argument as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend_from_slice(&(argument as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&argument.to_be_bytes());
        }
    }
}

/// A text string.
pub fn text(out: &mut Vec<u8>, text: &str) {
    head(out, TEXT, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// A link: tag 42 over the CID's bytes after a zero (identity multibase) byte.
pub fn link(out: &mut Vec<u8>, cid: &Cid) {
    let bytes = super::CidBytes::of(cid);
    head(out, TAG, TAG_CID);
    head(out, BYTES, bytes.len() as u64 + 1);
    out.push(0);
    out.extend_from_slice(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::{encode_cbor, Ipld};

    /// Heads are written in their shortest form at every width.
    #[test]
    fn heads_are_shortest() {
        let edges = [0, 23, 24, 255, 256, 65_535, 65_536, 1 << 32, u64::MAX];
        for n in edges.into_iter().chain([u64::from(u32::MAX)]) {
            let mut out = Vec::new();
            head(&mut out, UINT, n);
            assert_eq!(out, encode_cbor(&Ipld::Integer(n.into())).unwrap(), "{n}");
        }
    }
}
