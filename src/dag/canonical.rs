//! Whether dag-cbor bytes are the one encoding of the value they decode to,
//! read in one pass without allocating: re-encoding the value to compare
//! costs as much again as decoding it, for every block a service reads.
//!
//! The one encoding (what `serde_ipld_dagcbor` writes): minimal heads,
//! definite lengths, map keys that are strings in length-then-bytes order
//! without repeats, 64-bit finite floats, and tag 42 only, around a byte
//! string of 0x00 and a CID in its own canonical bytes.

use cid::Cid;

use super::{Ipld, IpldMap};

/// Whether `bytes` are one canonical dag-cbor item and nothing more.
pub(crate) fn is_canonical(bytes: &[u8]) -> bool {
    let mut reader = Reader { bytes, at: 0 };
    reader.item() && reader.at == bytes.len()
}

/// Containers nested deeper than this are left to the general decoder,
/// whose limit (256) is higher: decoding here never refuses what it takes.
const MAX_DEPTH: usize = 128;

/// The value of `bytes` when they are one canonical dag-cbor item (nested at
/// most [`MAX_DEPTH`] deep) and nothing more, decoded in the same pass that
/// checks them; `None` otherwise, for the general decoder to explain.
pub(crate) fn decode(bytes: &[u8]) -> Option<Ipld> {
    let mut reader = Reader { bytes, at: 0 };
    let value = reader.value(MAX_DEPTH)?;
    (reader.at == bytes.len()).then_some(value)
}

/// The bytes of the value under `key` in the map that `bytes` hold, as they
/// are written: for a block that decoded (so is canonical), exactly the
/// dag-cbor of that value, with no need to encode it again.
pub(crate) fn map_value<'a>(bytes: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let mut reader = Reader { bytes, at: 0 };
    let (MAJOR_MAP, entries) = reader.head()? else {
        return None;
    };
    for _ in 0..entries {
        let name = reader.key(None)?;
        let start = reader.at;
        if !reader.item() {
            return None;
        }
        if name == key {
            return bytes.get(start..reader.at);
        }
    }
    None
}

/// Reads canonical dag-cbor item by item. Each method takes the next item
/// when it is canonical and of the kind asked for, `None` otherwise; a
/// schema decoder built on it leaves every `None` to the general decoder to
/// explain.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    /// Whether every byte was read.
    pub(crate) fn at_end(&self) -> bool {
        self.at == self.bytes.len()
    }

    /// The head of a map: its number of entries.
    pub(crate) fn map_len(&mut self) -> Option<u64> {
        self.head_of(MAJOR_MAP)
    }

    /// The key of a map's only entry (its head read by [`Reader::map_len`]).
    pub(crate) fn only_key(&mut self) -> Option<&'a str> {
        self.key(None)
    }

    /// Reads a map: `entry` reads the value of each key, in order.
    pub(crate) fn entries(
        &mut self,
        entry: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        let count = self.map_len()?;
        self.map_body(count, entry)
    }

    /// Reads a list: `item` reads each item.
    pub(crate) fn list<T>(&mut self, item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let count = self.head_of(MAJOR_ARRAY)?;
        self.list_body(count, item)
    }

    pub(crate) fn string(&mut self) -> Option<&'a str> {
        let len = self.head_of(MAJOR_TEXT)?;
        self.text(len)
    }

    pub(crate) fn byte_string(&mut self) -> Option<&'a [u8]> {
        let len = self.head_of(MAJOR_BYTES)?;
        self.take(len)
    }

    pub(crate) fn uint(&mut self) -> Option<u64> {
        self.head_of(MAJOR_UINT)
    }

    /// `null`, or an unsigned integer.
    pub(crate) fn null_or_uint(&mut self) -> Option<Option<u64>> {
        if self.bytes.get(self.at) == Some(&0xf6) {
            self.at += 1;
            return Some(None);
        }
        self.uint().map(Some)
    }

    pub(crate) fn link_value(&mut self) -> Option<Cid> {
        (self.head()? == (MAJOR_TAG, TAG_CID)).then_some(())?;
        self.link()
    }

    /// A list of links.
    pub(crate) fn links(&mut self) -> Option<Vec<Cid>> {
        self.list(Self::link_value)
    }

    /// Any value, decoded.
    pub(crate) fn any(&mut self) -> Option<Ipld> {
        self.value(MAX_DEPTH)
    }

    fn head_of(&mut self, major: u8) -> Option<u64> {
        match self.head()? {
            (m, argument) if m == major => Some(argument),
            _ => None,
        }
    }

    /// The `count` entries of a map whose head was read: each key after the
    /// one before it, then what `entry` reads for it.
    fn map_body(
        &mut self,
        count: u64,
        mut entry: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        let mut previous = None;
        for _ in 0..count {
            let key = self.key(previous)?;
            previous = Some(key);
            entry(self, key)?;
        }
        Some(())
    }

    /// The `count` items of a list whose head was read.
    fn list_body<T>(
        &mut self,
        count: u64,
        mut item: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<Vec<T>> {
        // A length is only a claim until its items are read.
        let mut items = Vec::with_capacity(count.min(16) as usize);
        for _ in 0..count {
            items.push(item(self)?);
        }
        Some(items)
    }
}

/// CBOR major types (the top 3 bits of a head), as dag-cbor uses them.
pub(crate) use super::cbor::{
    BYTES as MAJOR_BYTES, LIST as MAJOR_ARRAY, MAP as MAJOR_MAP, NEGINT as MAJOR_NEGINT,
    TAG as MAJOR_TAG, TAG_CID, TEXT as MAJOR_TEXT, UINT as MAJOR_UINT,
};
const MAJOR_SIMPLE: u8 = 7;

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
            return self.simple().is_some();
        }
        let Some((major, argument)) = self.head() else {
            return false;
        };
        match major {
            MAJOR_UINT | MAJOR_NEGINT => true,
            MAJOR_BYTES => self.take(argument).is_some(),
            MAJOR_TEXT => self.text(argument).is_some(),
            MAJOR_ARRAY => (0..argument).all(|_| self.item()),
            MAJOR_MAP => self
                .map_body(argument, |r, _| r.item().then_some(()))
                .is_some(),
            MAJOR_TAG if argument == TAG_CID => self.link().is_some(),
            _ => false,
        }
    }

    /// The next item, when it is canonical: [`Reader::item`]'s rules,
    /// building the value as it goes.
    fn value(&mut self, depth: usize) -> Option<Ipld> {
        let &first = self.bytes.get(self.at)?;
        if first >> 5 == MAJOR_SIMPLE {
            return self.simple();
        }
        let (major, argument) = self.head()?;
        match major {
            MAJOR_UINT => Some(Ipld::Integer(argument.into())),
            MAJOR_NEGINT => Some(Ipld::Integer(-1 - i128::from(argument))),
            MAJOR_BYTES => Some(Ipld::Bytes(self.take(argument)?.to_vec())),
            MAJOR_TEXT => Some(Ipld::String(self.text(argument)?.to_owned())),
            MAJOR_ARRAY => {
                let depth = depth.checked_sub(1)?;
                self.list_body(argument, |r| r.value(depth)).map(Ipld::List)
            }
            MAJOR_MAP => {
                let depth = depth.checked_sub(1)?;
                let mut map = IpldMap::new();
                self.map_body(argument, |r, key| {
                    map.insert(key.to_owned(), r.value(depth)?);
                    Some(())
                })?;
                Some(Ipld::Map(map))
            }
            MAJOR_TAG if argument == TAG_CID => self.link().map(Ipld::Link),
            _ => None,
        }
    }

    /// A simple value: false, true, null or a finite 64-bit float (none of
    /// which allocates).
    fn simple(&mut self) -> Option<Ipld> {
        let first = *self.take(1)?.first()?;
        match first {
            0xf4 => Some(Ipld::Bool(false)),
            0xf5 => Some(Ipld::Bool(true)),
            0xf6 => Some(Ipld::Null),
            0xfb => Some(f64::from_be_bytes(self.take(8)?.try_into().ok()?))
                .filter(|f| f.is_finite())
                .map(Ipld::Float),
            _ => None,
        }
    }

    /// `len` bytes of UTF-8.
    fn text(&mut self, len: u64) -> Option<&'a str> {
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// A map key: text, after `previous` in length-then-bytes order.
    fn key(&mut self, previous: Option<&str>) -> Option<&'a str> {
        let (MAJOR_TEXT, len) = self.head()? else {
            return None;
        };
        let key = self.text(len)?;
        let after = previous.is_none_or(|p| (p.len(), p.as_bytes()) < (key.len(), key.as_bytes()));
        after.then_some(key)
    }

    /// A link, its tag read: a byte string of 0x00 and a CID in its own
    /// canonical bytes.
    fn link(&mut self) -> Option<Cid> {
        let (MAJOR_BYTES, len) = self.head()? else {
            return None;
        };
        match self.take(len)? {
            // Parsed, a CID re-encodes to the same bytes exactly when it
            // took all of them: any longer form of a varint adds a byte.
            [0, bytes @ ..] => Cid::try_from(bytes)
                .ok()
                .filter(|cid| cid.encoded_len() == bytes.len()),
            _ => None,
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

    /// What the general path says: the value, when the bytes are canonical.
    fn general(bytes: &[u8]) -> Option<Ipld> {
        let value: Ipld = serde_ipld_dagcbor::from_slice(bytes).ok()?;
        is_canonical(bytes).then_some(value)
    }

    proptest! {
        /// The one-pass decoder gives what the general decoder gives for
        /// canonical bytes, and nothing for any other (mutated) bytes.
        #[test]
        fn decodes_as_the_general_decoder(
            value in value(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let mut bytes = encode_cbor(&value).unwrap();
            if edits.is_empty() {
                prop_assert_eq!(decode(&bytes), Some(value));
            }
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            prop_assert_eq!(decode(&bytes), general(&bytes), "{:02x?}", bytes);
        }

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

    /// A link is canonical only as the CID's own bytes: not with a longer
    /// varint, not with bytes after the CID.
    #[test]
    fn other_encodings_of_a_link_are_not_canonical() {
        let cid = crate::dag::cid_of(crate::dag::RAW, b"block");
        let link = |cid_bytes: &[u8]| {
            let mut out = vec![0xd8, 0x2a, 0x58, cid_bytes.len() as u8 + 1, 0x00];
            out.extend_from_slice(cid_bytes);
            out
        };
        let canonical = cid.to_bytes();
        assert!(is_canonical(&link(&canonical)));
        assert_eq!(decode(&link(&canonical)), Some(Ipld::Link(cid)));
        // The codec, raw (0x55), written in two bytes: 0xd5 0x00.
        let mut longer = canonical.clone();
        assert_eq!(longer[1], 0x55);
        longer.splice(1..2, [0xd5, 0x00]);
        let mut trailing = canonical.clone();
        trailing.push(0);
        for bytes in [link(&longer), link(&trailing)] {
            assert!(!is_canonical(&bytes), "{bytes:02x?}");
            assert_eq!(decode(&bytes), None);
        }
    }
}
