//! Shared pieces of the tests that check a direct reader (straight from
//! canonical dag-cbor into fields) against the general decoder: generated
//! maps, and their bytes as written and with one byte changed.

use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::ValueTree;

use super::{encode_cbor, Ipld, IpldMap};

/// A field: present with probability `presence`, and then nine times in
/// ten one of `valid`, else one of `invalid`.
pub(crate) fn field(
    presence: f64,
    valid: Vec<Ipld>,
    invalid: Vec<Ipld>,
) -> impl Strategy<Value = Option<Ipld>> {
    proptest::option::weighted(
        presence,
        prop_oneof![9 => select(valid), 1 => select(invalid)],
    )
}

/// The map of the entries present.
pub(crate) fn map_of<'a>(entries: impl IntoIterator<Item = (&'a str, Option<Ipld>)>) -> Ipld {
    Ipld::Map(
        entries
            .into_iter()
            .filter_map(|(key, value)| value.map(|value| (key.to_string(), value)))
            .collect::<IpldMap>(),
    )
}

/// `value`'s dag-cbor, and the same with byte `at` xor `flip`.
pub(crate) fn written_and_changed(value: &Ipld, at: Index, flip: u8) -> [Vec<u8>; 2] {
    let written = encode_cbor(value).unwrap();
    let mut changed = written.clone();
    changed[at.index(written.len())] ^= flip;
    [written, changed]
}

/// How many of `total` values drawn from `strategy` (deterministically)
/// `accepted` takes, as dag-cbor.
pub(crate) fn accepted_of(
    strategy: impl Strategy<Value = Ipld>,
    total: usize,
    accepted: impl Fn(&[u8]) -> bool,
) -> usize {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    (0..total)
        .filter(|_| {
            let value = strategy.new_tree(&mut runner).unwrap().current();
            accepted(&encode_cbor(&value).unwrap())
        })
        .count()
}
