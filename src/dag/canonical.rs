//! Whether dag-cbor bytes are the one encoding of the value they decode to,
//! read in one pass without allocating: re-encoding the value to compare
//! costs as much again as decoding it, for every block a service reads.
//!
//! The one encoding (what `serde_ipld_dagcbor` writes): minimal heads,
//! definite lengths, map keys that are strings in length-then-bytes order
//! without repeats, 64-bit finite floats, and tag 42 only, around a byte
//! string of 0x00 and a CID in its own canonical bytes.

use cid::Cid;

/// Whether `bytes` are one canonical dag-cbor item and nothing more.
pub(crate) fn is_canonical(bytes: &[u8]) -> bool {
    let mut reader = Reader { bytes, at: 0 };
    reader.item() && reader.at == bytes.len()
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// CBOR major types (the top 3 bits of a head), as dag-cbor uses them.
pub(crate) const MAJOR_UINT: u8 = 0;
pub(crate) const MAJOR_NEGINT: u8 = 1;
pub(crate) const MAJOR_BYTES: u8 = 2;
pub(crate) const MAJOR_TEXT: u8 = 3;
pub(crate) const MAJOR_ARRAY: u8 = 4;
pub(crate) const MAJOR_MAP: u8 = 5;
pub(crate) const MAJOR_TAG: u8 = 6;
const MAJOR_SIMPLE: u8 = 7;
/// CBOR tag for IPLD links.
pub(crate) const TAG_CID: u64 = 42;

impl<'a> Reader<'a> {
    fn take(&mut self, len: u64) -> Option<&'a [u8]> {
        let end = self.at.checked_add(usize::try_from(len).ok()?)?;
        let taken = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(taken)
    }

    /// A head in its shortest form: (major type, argument).
    fn head(&mut self) -> Option<(u8, u64)> {
        let first = *self.take(1)?.first()?;
        let (major, info) = (first >> 5, first & 0x1f);
        let argument = match info {
            0..=23 => u64::from(info),
            24 => Some(u64::from(self.take(1)?[0])).filter(|v| *v >= 24)?,
            25 => Some(u64::from(u16::from_be_bytes(
                self.take(2)?.try_into().ok()?,
            )))
            .filter(|v| *v > 0xff)?,
            26 => Some(u64::from(u32::from_be_bytes(
                self.take(4)?.try_into().ok()?,
            )))
            .filter(|v| *v > 0xffff)?,
            27 => Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
                .filter(|v| *v > 0xffff_ffff)?,
            // Reserved, or an indefinite length.
            _ => return None,
        };
        Some((major, argument))
    }

    fn item(&mut self) -> bool {
        let Some(&first) = self.bytes.get(self.at) else {
            return false;
        };
        if first >> 5 == MAJOR_SIMPLE {
            self.at += 1;
            return match first {
                0xf4..=0xf6 => true, // false, true, null
                0xfb => self
                    .take(8)
                    .and_then(|b| b.try_into().ok())
                    .is_some_and(|b| f64::from_be_bytes(b).is_finite()),
                _ => false,
            };
        }
        let Some((major, argument)) = self.head() else {
            return false;
        };
        match major {
            MAJOR_UINT | MAJOR_NEGINT => true,
            MAJOR_BYTES => self.take(argument).is_some(),
            MAJOR_TEXT => self
                .take(argument)
                .is_some_and(|text| std::str::from_utf8(text).is_ok()),
            MAJOR_ARRAY => (0..argument).all(|_| self.item()),
            MAJOR_MAP => self.map_entries(argument),
            MAJOR_TAG if argument == TAG_CID => self.cid(),
            _ => false,
        }
    }

    fn map_entries(&mut self, count: u64) -> bool {
        let mut previous: Option<&[u8]> = None;
        for _ in 0..count {
            let key = match self.head() {
                Some((MAJOR_TEXT, len)) => match self.take(len) {
                    Some(key) if std::str::from_utf8(key).is_ok() => key,
                    _ => return false,
                },
                _ => return false,
            };
            if previous.is_some_and(|p| (p.len(), p) >= (key.len(), key)) {
                return false;
            }
            previous = Some(key);
            if !self.item() {
                return false;
            }
        }
        true
    }

    fn cid(&mut self) -> bool {
        let Some((MAJOR_BYTES, len)) = self.head() else {
            return false;
        };
        match self.take(len) {
            Some([0, cid @ ..]) => Cid::try_from(cid).is_ok_and(|c| c.to_bytes() == cid),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::{encode_cbor, Ipld, IpldMap};
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Ipld> {
        let leaf = prop_oneof![
            Just(Ipld::Null),
            any::<bool>().prop_map(Ipld::Bool),
            any::<i64>().prop_map(|i| Ipld::Integer(i.into())),
            any::<u64>().prop_map(|i| Ipld::Integer(i.into())),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Ipld::Float),
            ".{0,30}".prop_map(Ipld::String),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Ipld::Bytes),
            any::<[u8; 8]>().prop_map(|b| Ipld::Link(crate::dag::cid_of(crate::dag::RAW, &b))),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Ipld::List),
                proptest::collection::btree_map("[a-z]{0,6}", inner, 0..6)
                    .prop_map(|m| Ipld::Map(m.into_iter().collect::<IpldMap>())),
            ]
        })
    }

    /// What re-encoding says: decodes, and encodes back to the same bytes.
    fn reencodes(bytes: &[u8]) -> Option<bool> {
        let value: Ipld = serde_ipld_dagcbor::from_slice(bytes).ok()?;
        Some(encode_cbor(&value).is_ok_and(|again| again == bytes))
    }

    proptest! {
        /// Every encoding is canonical.
        #[test]
        fn encodings_are_canonical(value in value()) {
            let bytes = encode_cbor(&value).unwrap();
            prop_assert!(is_canonical(&bytes));
        }

        /// Changed bytes that still decode: canonical exactly when they
        /// re-encode to themselves.
        #[test]
        fn agrees_with_reencoding(
            value in value(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
            extend in any::<bool>(),
        ) {
            let mut bytes = encode_cbor(&value).unwrap();
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            if extend {
                bytes.insert(cut.index(bytes.len() + 1), 0x00);
            }
            if let Some(expected) = reencodes(&bytes) {
                prop_assert_eq!(is_canonical(&bytes), expected, "{:02x?}", bytes);
            }
        }
    }

    #[test]
    fn other_encodings_of_a_value_are_not_canonical() {
        for bytes in [
            &[0x18, 0x01][..],                           // 1 in two bytes
            &[0x9f, 0xff],                               // indefinite list
            &[0xa2, 0x61, 0x62, 0x01, 0x61, 0x61, 0x02], // keys out of order
            &[0xa2, 0x61, 0x61, 0x01, 0x61, 0x61, 0x02], // a repeated key
            &[0xfa, 0x3f, 0x80, 0x00, 0x00],             // a 32-bit float
            &[0x01, 0x01],                               // trailing bytes
        ] {
            assert!(!is_canonical(bytes), "{bytes:02x?}");
        }
        assert!(is_canonical(&[
            0xa2, 0x61, 0x62, 0x01, 0x62, 0x61, 0x61, 0x02
        ]));
    }
}
