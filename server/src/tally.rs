//! The tally: what a consolidate receipt's `totalEgress` is made of.
//!
//! The consolidator hands it to the tracker as blocks attached to the
//! `space/egress/conclude` invocation (linked from `nb.tally`), because a batch
//! can hold hundreds of thousands of receipts — far too many CIDs for the
//! receipt a node downloads. A tally too big for one request travels in
//! pages: every page links all chunks and attaches the first and some others;
//! the tracker stages what it gets until it has them all (see
//! [`crate::handlers::conclude`]).
//!
//! # Format
//! ```text
//! chunk  { batch: Link<batch>, usage: [{space: DID, day: "YYYY-MM-DD", bytes: int}],
//!          counted: [Link<retrieval payload id>], nonBillable?: [as usage] }
//! ```
//! Usage entries and counted retrievals may be spread over any number of chunks;
//! every chunk names the same batch. A counted retrieval is the payload id
//! of its `space/content/retrieve` invocation (raw CID of what the client
//! signed), the same for every encoding of it.

use std::collections::BTreeMap;

use cid::Cid;
use ucanto::dag::{Block, BlockStore, CodecError, Ipld, IpldMap};
use ucanto::principal::Did;

/// Counted retrievals per chunk: ~150 KiB.
pub const CHUNK_RECEIPTS: usize = 4096;
/// Usage entries per chunk: ~100 KiB.
pub const CHUNK_USAGE: usize = 1024;

/// Egress of one batch, per space and day, and the receipts it counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Bytes per (space, day).
    pub usage: BTreeMap<(Did, String), u64>,
    /// Bytes per (space, day) retrieved by non-billable actors: counted once
    /// like the rest, billed to no one.
    pub non_billable: BTreeMap<(Did, String), u64>,
    /// Retrievals counted (their `space/content/retrieve` invocations, so a
    /// retrieval counts once however many receipts a node signs for it), in
    /// batch order.
    pub counted: Vec<Cid>,
}

impl Tally {
    /// Adds `bytes` retrieved from `space` on `day` by the retrieval `invocation`.
    pub fn add(&mut self, space: Did, day: String, bytes: u64, invocation: Cid) {
        *self.usage.entry((space, day)).or_default() += bytes;
        self.counted.push(invocation);
    }

    /// Adds `bytes` retrieved from `space` on `day` by a non-billable actor
    /// in the retrieval `invocation`.
    pub fn add_non_billable(&mut self, space: Did, day: String, bytes: u64, invocation: Cid) {
        *self.non_billable.entry((space, day)).or_default() += bytes;
        self.counted.push(invocation);
    }

    /// Sum of all usage.
    pub fn total(&self) -> u64 {
        self.usage.values().sum()
    }

    /// Encodes the tally of `batch` as chunk blocks (at least one) of at most
    /// [`CHUNK_RECEIPTS`] counted retrievals and [`CHUNK_USAGE`] usage entries.
    pub fn to_blocks(&self, batch: Cid) -> Result<Vec<Block>, CodecError> {
        self.to_blocks_of(batch, CHUNK_RECEIPTS, CHUNK_USAGE)
    }

    /// Encodes the tally of `batch` as chunk blocks (at least one) of at most
    /// `receipts` counted retrievals and `usage` usage entries each.
    pub fn to_blocks_of(
        &self,
        batch: Cid,
        receipts: usize,
        usage: usize,
    ) -> Result<Vec<Block>, CodecError> {
        let (receipts, usage_per_chunk) = (receipts.max(1), usage.max(1));
        let entries = |map: &BTreeMap<(Did, String), u64>| -> Vec<Ipld> {
            map.iter()
                .map(|((space, day), bytes)| {
                    Ipld::Map(IpldMap::from([
                        ("space".to_string(), Ipld::String(space.to_string())),
                        ("day".to_string(), Ipld::String(day.clone())),
                        ("bytes".to_string(), Ipld::Integer((*bytes).into())),
                    ]))
                })
                .collect()
        };
        let (usage, non_billable) = (entries(&self.usage), entries(&self.non_billable));
        let count = self
            .counted
            .len()
            .div_ceil(receipts)
            .max(usage.len().div_ceil(usage_per_chunk))
            .max(non_billable.len().div_ceil(usage_per_chunk))
            .max(1);
        (0..count)
            .map(|i| {
                let part = |len: usize, per: usize| (i * per).min(len)..((i + 1) * per).min(len);
                let usage = usage[part(usage.len(), usage_per_chunk)].to_vec();
                let counted = self.counted[part(self.counted.len(), receipts)]
                    .iter()
                    .map(|c| Ipld::Link(*c))
                    .collect();
                let mut chunk = IpldMap::from([
                    ("batch".to_string(), Ipld::Link(batch)),
                    ("usage".to_string(), Ipld::List(usage)),
                    ("counted".to_string(), Ipld::List(counted)),
                ]);
                let exempt = &non_billable[part(non_billable.len(), usage_per_chunk)];
                if !exempt.is_empty() {
                    chunk.insert("nonBillable".into(), Ipld::List(exempt.to_vec()));
                }
                Block::encode(&Ipld::Map(chunk))
            })
            .collect()
    }

    /// Reads the chunks `links` from `blocks`; every chunk must name `batch`.
    pub fn from_blocks(
        batch: &Cid,
        links: &[Cid],
        blocks: &BlockStore,
    ) -> Result<Tally, CodecError> {
        let bad = |why: String| CodecError::schema("tally", why);
        let mut tally = Tally::default();
        for link in links {
            let Ipld::Map(chunk) = blocks.block(link)?.decode()? else {
                return Err(bad(format!("chunk {link} is not a map")));
            };
            if chunk.get("batch") != Some(&Ipld::Link(*batch)) {
                return Err(bad(format!("chunk {link} is not for batch {batch}")));
            }
            let list = |key: &str| match chunk.get(key) {
                Some(Ipld::List(items)) => Ok(items.clone()),
                _ => Err(bad(format!("chunk {link} has no {key} list"))),
            };
            let exempt = match chunk.get("nonBillable") {
                None => Vec::new(),
                Some(_) => list("nonBillable")?,
            };
            let usage = list("usage")?.into_iter().map(|e| (e, false));
            for (entry, non_billable) in usage.chain(exempt.into_iter().map(|e| (e, true))) {
                let Ipld::Map(entry) = entry else {
                    return Err(bad("usage entry is not a map".into()));
                };
                let (
                    Some(Ipld::String(space)),
                    Some(Ipld::String(day)),
                    Some(Ipld::Integer(bytes)),
                ) = (entry.get("space"), entry.get("day"), entry.get("bytes"))
                else {
                    return Err(bad("usage entry needs space, day and bytes".into()));
                };
                let space = Did::parse(space).map_err(|e| bad(e.to_string()))?;
                let bytes = u64::try_from(*bytes)
                    .map_err(|_| bad(format!("bytes {bytes} out of range")))?;
                let map = if non_billable {
                    &mut tally.non_billable
                } else {
                    &mut tally.usage
                };
                let slot = map.entry((space, day.clone())).or_default();
                *slot = slot
                    .checked_add(bytes)
                    .ok_or_else(|| bad("usage overflows".into()))?;
            }
            for item in list("counted")? {
                let Ipld::Link(cid) = item else {
                    return Err(bad("counted entries are links".into()));
                };
                tally.counted.push(cid);
            }
        }
        Ok(tally)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip() {
        let batch = ucanto::dag::cid_of(ucanto::dag::CAR, b"batch");
        let space: Did = "did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX"
            .parse()
            .unwrap();
        let mut tally = Tally::default();
        for i in 0..(CHUNK_RECEIPTS * 2 + 3) {
            let receipt = ucanto::dag::cid_of(ucanto::dag::DAG_CBOR, &i.to_le_bytes());
            tally.add(
                space.clone(),
                format!("2026-11-{:02}", 1 + i % 3),
                10,
                receipt,
            );
        }
        let blocks = tally.to_blocks(batch).unwrap();
        assert_eq!(blocks.len(), 3);
        let links: Vec<Cid> = blocks.iter().map(|b| b.cid).collect();
        let store: BlockStore = blocks.into_iter().collect();
        assert_eq!(Tally::from_blocks(&batch, &links, &store).unwrap(), tally);
        let other = ucanto::dag::cid_of(ucanto::dag::CAR, b"other");
        assert!(Tally::from_blocks(&other, &links, &store).is_err());
    }

    /// Many spaces, non-billable bytes and small chunks: every part is spread
    /// over the chunks and read back whole.
    #[test]
    fn small_chunks_round_trip() {
        let batch = ucanto::dag::cid_of(ucanto::dag::CAR, b"batch");
        let mut tally = Tally::default();
        for i in 0..50u64 {
            let space: Did = format!("did:web:space{i}.example").parse().unwrap();
            let retrieval = ucanto::dag::cid_of(ucanto::dag::RAW, &i.to_le_bytes());
            if i % 5 == 0 {
                tally.add_non_billable(space, "2026-11-01".into(), i, retrieval);
            } else {
                tally.add(space, "2026-11-01".into(), i, retrieval);
            }
        }
        let blocks = tally.to_blocks_of(batch, 4, 3).unwrap();
        assert_eq!(blocks.len(), 14, "40 usage entries, 3 a chunk");
        let links: Vec<Cid> = blocks.iter().map(|b| b.cid).collect();
        let store: BlockStore = blocks.into_iter().collect();
        assert_eq!(Tally::from_blocks(&batch, &links, &store).unwrap(), tally);
    }
}
