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
//! Neither side holds a whole tally in memory: the consolidator writes chunks
//! as retrievals are counted ([`TallyWriter`], to a scratch file), and the
//! tracker reads them one at a time ([`Chunk::decode`]).
//!
//! # Format
//! ```text
//! chunk  { batch: Link<batch>, usage: [{space: DID, day: "YYYY-MM-DD", bytes: int}],
//!          counted: [Link<retrieval payload id>], expires: [int],
//!          nonBillable?: [as usage] }
//! ```
//! `expires[i]` is the expiry (unix seconds) of the retrieval `counted[i]`
//! itself, which the store files the record that it was counted under.
//! Usage entries and counted retrievals may be spread over any number of chunks;
//! every chunk names the same batch. A counted retrieval is the payload id
//! of its `space/content/retrieve` invocation (raw CID of what the client
//! signed), the same for every encoding of it. [`TallyWriter`] puts the
//! counted retrievals first and the usage in the last chunks.

use std::collections::BTreeMap;

use cid::Cid;
use ucanto::dag::{cbor, Block, CodecError, Ipld};
use ucanto::principal::Did;

use crate::scratch::ScratchFile;
use crate::store::CountedRetrieval;

/// Counted retrievals per chunk: ~150 KiB.
pub const CHUNK_RECEIPTS: usize = 4096;
/// Usage entries per chunk: ~100 KiB.
pub const CHUNK_USAGE: usize = 1024;

/// Bytes per (space, day).
pub type Usage = BTreeMap<(Did, String), u64>;

/// What one tally chunk says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Billable bytes per space and day.
    pub usage: Vec<(Did, String, u64)>,
    /// Bytes per space and day retrieved by non-billable actors.
    pub non_billable: Vec<(Did, String, u64)>,
    /// Retrievals counted, each with its own expiry.
    pub counted: Vec<CountedRetrieval>,
}

impl Chunk {
    /// Encodes a chunk of `batch`: dag-cbor written directly, since a chunk
    /// holds thousands of links that the general encoder would copy several
    /// times each. Keys in dag-cbor's order (shorter first, then bytewise).
    pub fn encode(&self, batch: Cid) -> Result<Block, CodecError> {
        let entries = |out: &mut Vec<u8>, list: &[(Did, String, u64)]| {
            cbor::head(out, cbor::LIST, list.len() as u64);
            for (space, day, bytes) in list {
                cbor::head(out, cbor::MAP, 3);
                cbor::text(out, "day");
                cbor::text(out, day);
                cbor::text(out, "bytes");
                cbor::head(out, cbor::UINT, *bytes);
                cbor::text(out, "space");
                cbor::text(out, space.as_str());
            }
        };
        let mut out = Vec::with_capacity(64 + 45 * self.counted.len() + 80 * self.usage.len());
        let fields = if self.non_billable.is_empty() { 4 } else { 5 };
        cbor::head(&mut out, cbor::MAP, fields);
        cbor::text(&mut out, "batch");
        cbor::link(&mut out, &batch);
        cbor::text(&mut out, "usage");
        entries(&mut out, &self.usage);
        cbor::text(&mut out, "counted");
        cbor::head(&mut out, cbor::LIST, self.counted.len() as u64);
        for counted in &self.counted {
            cbor::link(&mut out, &counted.retrieval);
        }
        cbor::text(&mut out, "expires");
        cbor::head(&mut out, cbor::LIST, self.counted.len() as u64);
        for counted in &self.counted {
            cbor::head(&mut out, cbor::UINT, counted.expires);
        }
        if !self.non_billable.is_empty() {
            cbor::text(&mut out, "nonBillable");
            entries(&mut out, &self.non_billable);
        }
        Ok(Block {
            cid: ucanto::dag::cid_of(ucanto::dag::DAG_CBOR, &out),
            bytes: out.into(),
        })
    }

    /// Reads the chunk `block`, which must name `batch`.
    pub fn decode(batch: &Cid, block: &Block) -> Result<Chunk, CodecError> {
        let link = block.cid;
        let bad = |why: String| CodecError::schema("tally", why);
        let Ipld::Map(mut map) = block.decode()? else {
            return Err(bad(format!("chunk {link} is not a map")));
        };
        if map.get("batch") != Some(&Ipld::Link(*batch)) {
            return Err(bad(format!("chunk {link} is not for batch {batch}")));
        }
        let mut list = |key: &str, required: bool| match map.remove(key) {
            Some(Ipld::List(items)) => Ok(items),
            None if !required => Ok(Vec::new()),
            _ => Err(bad(format!("chunk {link} has no {key} list"))),
        };
        let usage = entries(list("usage", true)?)?;
        let non_billable = entries(list("nonBillable", false)?)?;
        let retrievals = list("counted", true)?;
        let expiries = list("expires", true)?;
        if retrievals.len() != expiries.len() {
            return Err(bad(format!(
                "chunk {link} lists {} counted retrievals and {} expiries",
                retrievals.len(),
                expiries.len()
            )));
        }
        let counted = retrievals
            .into_iter()
            .zip(expiries)
            .map(|pair| match pair {
                (Ipld::Link(retrieval), Ipld::Integer(expires)) => Ok(CountedRetrieval {
                    retrieval,
                    expires: u64::try_from(expires)
                        .map_err(|_| bad(format!("expiry {expires} out of range")))?,
                }),
                _ => Err(bad("counted entries are links, expiries integers".into())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Chunk {
            usage,
            non_billable,
            counted,
        })
    }
}

fn entries(list: Vec<Ipld>) -> Result<Vec<(Did, String, u64)>, CodecError> {
    let bad = |why: String| CodecError::schema("tally", why);
    list.into_iter()
        .map(|entry| {
            let Ipld::Map(entry) = entry else {
                return Err(bad("usage entry is not a map".into()));
            };
            let (Some(Ipld::String(space)), Some(Ipld::String(day)), Some(Ipld::Integer(bytes))) =
                (entry.get("space"), entry.get("day"), entry.get("bytes"))
            else {
                return Err(bad("usage entry needs space, day and bytes".into()));
            };
            let space = Did::parse(space).map_err(|e| bad(e.to_string()))?;
            let bytes =
                u64::try_from(*bytes).map_err(|_| bad(format!("bytes {bytes} out of range")))?;
            Ok((space, day.clone(), bytes))
        })
        .collect()
}

/// The block of a staged chunk `link` read back as `bytes`, if they still
/// hash to it.
pub fn staged_block(link: &Cid, bytes: Vec<u8>) -> Option<Block> {
    let block = Block {
        cid: ucanto::dag::cid_of(link.codec(), &bytes),
        bytes: bytes.into(),
    };
    (block.cid == *link).then_some(block)
}

/// Adds `bytes` to `usage[(space, day)]`, refusing an overflow.
pub fn add_usage(usage: &mut Usage, space: Did, day: String, bytes: u64) -> Option<()> {
    let slot = usage.entry((space, day)).or_default();
    *slot = slot.checked_add(bytes)?;
    Some(())
}

/// A tally of one batch, written as it is counted: every
/// `receipts_per_chunk` retrievals become a chunk block in a scratch file (or
/// in memory), and [`TallyWriter::finish`] appends the usage.
pub struct TallyWriter {
    batch: Cid,
    receipts_per_chunk: usize,
    usage_per_chunk: usize,
    pending: Vec<CountedRetrieval>,
    usage: Usage,
    non_billable: Usage,
    counted: u64,
    chunks: Chunks,
}

impl TallyWriter {
    /// A tally of `batch` whose chunks go to `file` (in memory without one).
    pub fn new(batch: Cid, file: Option<ScratchFile>) -> Self {
        Self::with_chunking(batch, file, CHUNK_RECEIPTS, CHUNK_USAGE)
    }

    /// As [`TallyWriter::new`], with at most `receipts` counted retrievals and
    /// `usage` usage entries a chunk.
    pub fn with_chunking(
        batch: Cid,
        file: Option<ScratchFile>,
        receipts: usize,
        usage: usize,
    ) -> Self {
        TallyWriter {
            batch,
            receipts_per_chunk: receipts.max(1),
            usage_per_chunk: usage.max(1),
            pending: Vec::new(),
            usage: Usage::new(),
            non_billable: Usage::new(),
            counted: 0,
            chunks: Chunks {
                file,
                index: Vec::new(),
                memory: Vec::new(),
            },
        }
    }

    /// Adds `bytes` retrieved from `space` on `day` by the retrieval `retrieval`.
    pub fn add(
        &mut self,
        space: Did,
        day: String,
        bytes: u64,
        retrieval: CountedRetrieval,
    ) -> Result<(), TallyError> {
        add_usage(&mut self.usage, space, day, bytes).ok_or(TallyError::Overflow)?;
        self.count(retrieval)
    }

    /// Adds `bytes` retrieved from `space` on `day` by a non-billable actor
    /// in the retrieval `retrieval`.
    pub fn add_non_billable(
        &mut self,
        space: Did,
        day: String,
        bytes: u64,
        retrieval: CountedRetrieval,
    ) -> Result<(), TallyError> {
        add_usage(&mut self.non_billable, space, day, bytes).ok_or(TallyError::Overflow)?;
        self.count(retrieval)
    }

    fn count(&mut self, retrieval: CountedRetrieval) -> Result<(), TallyError> {
        self.pending.push(retrieval);
        self.counted += 1;
        if self.pending.len() >= self.receipts_per_chunk {
            let chunk = Chunk {
                counted: std::mem::take(&mut self.pending),
                ..Chunk::default()
            };
            self.chunks.push(chunk.encode(self.batch)?)?;
        }
        Ok(())
    }

    /// The tally: the last counted retrievals and the usage written out.
    pub fn finish(mut self) -> Result<Tally, TallyError> {
        let flat = |usage: &Usage| -> Vec<(Did, String, u64)> {
            usage
                .iter()
                .map(|((space, day), bytes)| (space.clone(), day.clone(), *bytes))
                .collect()
        };
        let (usage, non_billable) = (flat(&self.usage), flat(&self.non_billable));
        let per = self.usage_per_chunk;
        let mut usage_parts = usage.chunks(per);
        let mut exempt_parts = non_billable.chunks(per);
        // The counted retrievals left, then usage entries, at least one chunk.
        let mut first = true;
        loop {
            let chunk = Chunk {
                counted: std::mem::take(&mut self.pending),
                usage: usage_parts.next().map(<[_]>::to_vec).unwrap_or_default(),
                non_billable: exempt_parts.next().map(<[_]>::to_vec).unwrap_or_default(),
            };
            let empty = chunk == Chunk::default();
            if empty && !(first && self.chunks.len() == 0) {
                break;
            }
            first = false;
            self.chunks.push(chunk.encode(self.batch)?)?;
        }
        let total = self
            .usage
            .values()
            .try_fold(0u64, |sum, bytes| sum.checked_add(*bytes))
            .ok_or(TallyError::Overflow)?;
        Ok(Tally {
            usage: self.usage,
            non_billable: self.non_billable,
            counted: self.counted,
            total,
            chunks: self.chunks,
        })
    }
}

/// Why a tally could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TallyError {
    /// A chunk could not be encoded.
    #[error("cannot encode a tally chunk: {0}")]
    Encode(#[from] CodecError),
    /// The scratch file failed.
    #[error("tally scratch file: {0}")]
    Io(#[from] std::io::Error),
    /// Usage beyond u64.
    #[error("usage overflows u64")]
    Overflow,
}

/// Egress of one batch, per space and day, with the chunks listing the
/// retrievals it counted.
pub struct Tally {
    /// Bytes per (space, day).
    pub usage: Usage,
    /// Bytes per (space, day) retrieved by non-billable actors: counted once
    /// like the rest, billed to no one.
    pub non_billable: Usage,
    /// Retrievals counted.
    pub counted: u64,
    total: u64,
    chunks: Chunks,
}

impl Tally {
    /// The tally of a batch that counted nothing.
    pub fn empty(batch: Cid) -> Result<Tally, TallyError> {
        TallyWriter::new(batch, None).finish()
    }

    /// Sum of the billable usage.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The chunks' CIDs, in order (at least one).
    pub fn links(&self) -> Vec<Cid> {
        match &self.chunks.file {
            Some(_) => self.chunks.index.iter().map(|(cid, ..)| *cid).collect(),
            None => self.chunks.memory.iter().map(|b| b.cid).collect(),
        }
    }

    /// Chunk `i`.
    pub fn chunk(&self, i: usize) -> Result<Block, TallyError> {
        self.chunks.get(i)
    }
}

/// Chunk blocks, in a scratch file (or in memory, without one).
struct Chunks {
    file: Option<ScratchFile>,
    /// CID, offset and length of each chunk in the file.
    index: Vec<(Cid, u64, usize)>,
    memory: Vec<Block>,
}

impl Chunks {
    fn len(&self) -> usize {
        self.index.len() + self.memory.len()
    }

    fn push(&mut self, block: Block) -> Result<(), std::io::Error> {
        match &mut self.file {
            Some(file) => {
                let offset = file.append(&block.bytes)?;
                self.index.push((block.cid, offset, block.bytes.len()));
            }
            None => self.memory.push(block),
        }
        Ok(())
    }

    fn get(&self, i: usize) -> Result<Block, TallyError> {
        let missing = || std::io::Error::other(format!("no tally chunk {i}"));
        match &self.file {
            Some(file) => {
                let (cid, offset, len) = *self.index.get(i).ok_or_else(missing)?;
                let bytes = file.read_at(offset, len)?;
                Ok(Block {
                    cid,
                    bytes: bytes.into(),
                })
            }
            None => Ok(self.memory.get(i).ok_or_else(missing)?.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ucanto::dag::IpldMap;

    /// The chunk as the general dag-cbor encoder writes it.
    fn encoded_generally(chunk: &Chunk, batch: Cid) -> Block {
        let entries = |list: &[(Did, String, u64)]| -> Ipld {
            Ipld::List(
                list.iter()
                    .map(|(space, day, bytes)| {
                        Ipld::Map(IpldMap::from([
                            ("space".to_string(), Ipld::String(space.to_string())),
                            ("day".to_string(), Ipld::String(day.clone())),
                            ("bytes".to_string(), Ipld::Integer((*bytes).into())),
                        ]))
                    })
                    .collect(),
            )
        };
        let mut map = IpldMap::from([
            ("batch".to_string(), Ipld::Link(batch)),
            ("usage".to_string(), entries(&chunk.usage)),
            (
                "counted".to_string(),
                Ipld::List(
                    chunk
                        .counted
                        .iter()
                        .map(|c| Ipld::Link(c.retrieval))
                        .collect(),
                ),
            ),
            (
                "expires".to_string(),
                Ipld::List(
                    chunk
                        .counted
                        .iter()
                        .map(|c| Ipld::Integer(c.expires.into()))
                        .collect(),
                ),
            ),
        ]);
        if !chunk.non_billable.is_empty() {
            map.insert("nonBillable".into(), entries(&chunk.non_billable));
        }
        Block::encode(&Ipld::Map(map)).unwrap()
    }

    proptest::proptest! {
        /// Chunks written directly are byte for byte what the general
        /// encoder writes, and read back as they were, whatever their sizes
        /// (list lengths and byte counts across every head width).
        #[test]
        fn chunks_are_written_as_the_general_encoder_writes_them(
            counted in proptest::collection::vec((proptest::num::u32::ANY, proptest::num::u64::ANY), 0..300),
            usage in proptest::collection::vec((0u8..3, 0u16..400, proptest::num::u64::ANY), 0..30),
            non_billable in proptest::collection::vec((0u8..3, 0u16..400, proptest::num::u64::ANY), 0..3),
        ) {
            let entries = |list: Vec<(u8, u16, u64)>| -> Vec<(Did, String, u64)> {
                list.into_iter()
                    .map(|(space, day, bytes)| {
                        let space = format!("did:web:space{space}.example").parse().unwrap();
                        (space, format!("2026-{:02}-{:02}", 1 + day % 12, 1 + day % 28), bytes)
                    })
                    .collect()
            };
            let chunk = Chunk {
                usage: entries(usage),
                non_billable: entries(non_billable),
                counted: counted
                    .iter()
                    .map(|(n, expires)| CountedRetrieval {
                        retrieval: ucanto::dag::cid_of(ucanto::dag::RAW, &n.to_be_bytes()),
                        expires: *expires,
                    })
                    .collect(),
            };
            let batch = ucanto::dag::cid_of(ucanto::dag::CAR, b"batch");
            let block = chunk.encode(batch).unwrap();
            proptest::prop_assert_eq!(&block, &encoded_generally(&chunk, batch));
            proptest::prop_assert_eq!(Chunk::decode(&batch, &block).unwrap(), chunk);
        }
    }

    /// A counted retrieval, expiring within a day of 2027-01-15.
    fn counted(i: u64) -> CountedRetrieval {
        CountedRetrieval {
            retrieval: ucanto::dag::cid_of(ucanto::dag::RAW, &i.to_le_bytes()),
            expires: 1_800_000_000 + i % 86_400,
        }
    }

    /// Reads every chunk of `tally` back: usage, non-billable usage and counted.
    fn read_back(batch: &Cid, tally: &Tally) -> (Usage, Usage, Vec<CountedRetrieval>) {
        let (mut usage, mut non_billable, mut counted) = (Usage::new(), Usage::new(), Vec::new());
        for i in 0..tally.links().len() {
            let chunk = Chunk::decode(batch, &tally.chunk(i).unwrap()).unwrap();
            for (space, day, bytes) in chunk.usage {
                add_usage(&mut usage, space, day, bytes).unwrap();
            }
            for (space, day, bytes) in chunk.non_billable {
                add_usage(&mut non_billable, space, day, bytes).unwrap();
            }
            counted.extend(chunk.counted);
        }
        (usage, non_billable, counted)
    }

    #[test]
    fn chunks_round_trip_through_a_scratch_file() {
        let batch = ucanto::dag::cid_of(ucanto::dag::CAR, b"batch");
        let space: Did = "did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX"
            .parse()
            .unwrap();
        let file = ScratchFile::create(&std::env::temp_dir(), "tally-test").unwrap();
        let mut writer = TallyWriter::new(batch, Some(file));
        let mut expected = Vec::new();
        for i in 0..(CHUNK_RECEIPTS * 2 + 3) {
            let retrieval = counted(i as u64);
            let day = format!("2026-11-{:02}", 1 + i % 3);
            writer.add(space.clone(), day, 10, retrieval).unwrap();
            expected.push(retrieval);
        }
        let tally = writer.finish().unwrap();
        assert_eq!(tally.links().len(), 3);
        assert_eq!(tally.counted, expected.len() as u64);
        assert_eq!(tally.total(), 10 * expected.len() as u64);
        let (usage, non_billable, counted) = read_back(&batch, &tally);
        assert_eq!(usage, tally.usage);
        assert!(non_billable.is_empty());
        assert_eq!(counted, expected);
        let other = ucanto::dag::cid_of(ucanto::dag::CAR, b"other");
        assert!(Chunk::decode(&other, &tally.chunk(0).unwrap()).is_err());
    }

    /// Many spaces, non-billable bytes and small chunks: every part is spread
    /// over the chunks and read back whole.
    #[test]
    fn small_chunks_round_trip() {
        let batch = ucanto::dag::cid_of(ucanto::dag::CAR, b"batch");
        let mut writer = TallyWriter::with_chunking(batch, None, 4, 3);
        let mut expected = Vec::new();
        for i in 0..50u64 {
            let space: Did = format!("did:web:space{i}.example").parse().unwrap();
            let retrieval = counted(i);
            expected.push(retrieval);
            if i % 5 == 0 {
                writer
                    .add_non_billable(space, "2026-11-01".into(), i, retrieval)
                    .unwrap();
            } else {
                writer
                    .add(space, "2026-11-01".into(), i, retrieval)
                    .unwrap();
            }
        }
        let tally = writer.finish().unwrap();
        // 12 full chunks of counted retrievals, then 14 for 40 usage entries,
        // 3 a chunk (the first with the last 2 retrievals).
        assert_eq!(tally.links().len(), 12 + 14);
        let (usage, non_billable, counted) = read_back(&batch, &tally);
        assert_eq!(
            (usage, non_billable),
            (tally.usage.clone(), tally.non_billable.clone())
        );
        assert_eq!(counted, expected);
    }

    #[test]
    fn an_empty_tally_is_one_chunk() {
        let batch = ucanto::dag::cid_of(ucanto::dag::CAR, b"batch");
        let tally = Tally::empty(batch).unwrap();
        assert_eq!(tally.links().len(), 1);
        assert_eq!(read_back(&batch, &tally).2, Vec::new());
    }

    #[test]
    fn usage_overflow_is_refused() {
        let batch = ucanto::dag::cid_of(ucanto::dag::CAR, b"batch");
        let space: Did = "did:web:space.example".parse().unwrap();
        let mut writer = TallyWriter::new(batch, None);
        let r = |i: u8| counted(i.into());
        writer
            .add(space.clone(), "2026-11-01".into(), u64::MAX, r(1))
            .unwrap();
        assert!(matches!(
            writer.add(space, "2026-11-01".into(), 1, r(2)),
            Err(TallyError::Overflow)
        ));
    }
}
