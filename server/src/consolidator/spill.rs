//! The retrievals a batch counts, spilled to a scratch file in sorted runs
//! and read back merged, so that a batch's duplicates are found by sorting
//! and its memory does not grow with its size.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;

use cid::Cid;

use crate::scratch::ScratchFile;

/// A retrieval that passed every check of its own, at position `seq` of the
/// batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// The sha2-256 digest of the retrieval's payload id (a raw CID).
    pub(super) retrieval: [u8; 32],
    /// Position of the receipt in the batch.
    pub(super) seq: u64,
    /// Index of its (space, day, billable) in the batch's table of those.
    pub(super) usage: u32,
    pub(super) bytes: u64,
    /// The retrieval's own expiry (what its record of being counted is
    /// filed under).
    pub(super) expires: u64,
    pub(super) receipt: Cid,
}

/// Bytes of an entry, in memory and on disk: retrieval, seq (big-endian, so
/// that the first 40 bytes sort as (retrieval, seq)), usage, bytes, expires,
/// then the receipt CID's length and bytes (a CID of a 64-byte digest takes
/// 86 at most).
const RECORD: usize = 32 + 8 + 4 + 8 + 8 + 1 + RECEIPT_SLOT;
const RECEIPT_SLOT: usize = 95;
/// The sorting key: retrieval, then position.
const KEY: usize = 40;

/// Entries sorted in memory before a run is written (~1.2 MiB).
const RUN_ENTRIES: usize = 8192;
/// Entries read from a run at a time while merging.
const READ_ENTRIES: usize = 16;

type Record = [u8; RECORD];

impl Entry {
    fn record(&self) -> std::io::Result<Record> {
        let receipt = ucanto::dag::CidBytes::of(&self.receipt);
        if receipt.len() > RECEIPT_SLOT {
            return Err(std::io::Error::other("receipt CID too long to spill"));
        }
        let mut record = [0; RECORD];
        record[..32].copy_from_slice(&self.retrieval);
        record[32..40].copy_from_slice(&self.seq.to_be_bytes());
        record[40..44].copy_from_slice(&self.usage.to_be_bytes());
        record[44..52].copy_from_slice(&self.bytes.to_be_bytes());
        record[52..60].copy_from_slice(&self.expires.to_be_bytes());
        record[60] = receipt.len() as u8;
        record[61..61 + receipt.len()].copy_from_slice(&receipt);
        Ok(record)
    }

    fn read(record: &[u8]) -> std::io::Result<Entry> {
        let bad = || std::io::Error::other("corrupt spill record");
        let (retrieval, rest) = record.split_first_chunk::<32>().ok_or_else(bad)?;
        let (seq, rest) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
        let (usage, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let (bytes, rest) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
        let (expires, rest) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
        let (len, rest) = rest.split_first().ok_or_else(bad)?;
        let receipt = rest.get(..usize::from(*len)).ok_or_else(bad)?;
        Ok(Entry {
            retrieval: *retrieval,
            seq: u64::from_be_bytes(*seq),
            usage: u32::from_be_bytes(*usage),
            bytes: u64::from_be_bytes(*bytes),
            expires: u64::from_be_bytes(*expires),
            receipt: Cid::try_from(receipt).map_err(|_| bad())?,
        })
    }
}

/// Entries written in sorted runs of [`RUN_ENTRIES`].
pub(super) struct Spill {
    file: ScratchFile,
    run: Vec<Record>,
    /// Offset and length (in entries) of each run written.
    runs: Vec<(u64, usize)>,
    run_entries: usize,
}

impl Spill {
    /// An empty spill in `dir`.
    pub(super) fn create(dir: &Path) -> std::io::Result<Spill> {
        Self::with_run_entries(dir, RUN_ENTRIES)
    }

    pub(super) fn with_run_entries(dir: &Path, run_entries: usize) -> std::io::Result<Spill> {
        Ok(Spill {
            file: ScratchFile::create(dir, "counted")?,
            run: Vec::new(),
            runs: Vec::new(),
            run_entries: run_entries.max(1),
        })
    }

    pub(super) fn push(&mut self, entry: Entry) -> std::io::Result<()> {
        self.run.push(entry.record()?);
        if self.run.len() >= self.run_entries {
            self.write_run()?;
        }
        Ok(())
    }

    fn write_run(&mut self) -> std::io::Result<()> {
        if self.run.is_empty() {
            return Ok(());
        }
        self.run.sort_unstable_by(|a, b| a[..KEY].cmp(&b[..KEY]));
        let offset = self.file.append(self.run.as_flattened())?;
        self.runs.push((offset, self.run.len()));
        self.run.clear();
        Ok(())
    }

    /// Every entry pushed, by retrieval, then by position in the batch.
    pub(super) fn into_sorted(mut self) -> std::io::Result<Sorted> {
        self.write_run()?;
        let mut sorted = Sorted {
            file: self.file,
            runs: self
                .runs
                .into_iter()
                .map(|(offset, left)| Run {
                    offset,
                    left,
                    read: Vec::new(),
                })
                .collect(),
            heap: BinaryHeap::new(),
        };
        for i in 0..sorted.runs.len() {
            sorted.advance(i)?;
        }
        Ok(sorted)
    }
}

/// One sorted run being read.
struct Run {
    offset: u64,
    left: usize,
    /// Entries read ahead, last first.
    read: Vec<Entry>,
}

/// The merge of a spill's runs.
pub(super) struct Sorted {
    file: ScratchFile,
    runs: Vec<Run>,
    /// The next entry of every run not yet exhausted, smallest first.
    heap: BinaryHeap<Reverse<(Key, usize)>>,
}

/// What entries are sorted by: retrieval, then position.
type Key = ([u8; 32], u64);

impl Sorted {
    /// Puts run `i`'s next entry on the heap.
    fn advance(&mut self, i: usize) -> std::io::Result<()> {
        let run = &mut self.runs[i];
        if run.read.is_empty() && run.left > 0 {
            let n = run.left.min(READ_ENTRIES);
            let bytes = self.file.read_at(run.offset, n * RECORD)?;
            run.read = bytes
                .chunks_exact(RECORD)
                .rev()
                .map(Entry::read)
                .collect::<Result<_, _>>()?;
            run.offset += (n * RECORD) as u64;
            run.left -= n;
        }
        if let Some(next) = run.read.last() {
            self.heap.push(Reverse(((next.retrieval, next.seq), i)));
        }
        Ok(())
    }
}

impl Iterator for Sorted {
    type Item = std::io::Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        let Reverse((_, i)) = self.heap.pop()?;
        let entry = self.runs[i].read.pop()?;
        Some(self.advance(i).map(|()| entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(retrieval: u8, seq: u64) -> Entry {
        let mut digest = [0; 32];
        digest[0] = retrieval;
        Entry {
            retrieval: digest,
            seq,
            usage: (seq % 7) as u32,
            bytes: seq * 3,
            expires: 1_800_000_000 + seq,
            receipt: ucanto::dag::cid_of(ucanto::dag::DAG_CBOR, &seq.to_be_bytes()),
        }
    }

    proptest! {
        /// Whatever the order pushed and the run size, entries come back
        /// whole, sorted by retrieval and then by position.
        #[test]
        fn entries_come_back_sorted(
            retrievals in proptest::collection::vec(any::<u8>(), 0..400),
            run in 1usize..50,
        ) {
            let mut spill = Spill::with_run_entries(&std::env::temp_dir(), run).unwrap();
            let mut expected = Vec::new();
            for (seq, r) in retrievals.iter().enumerate() {
                let e = entry(*r, seq as u64);
                expected.push(e.clone());
                spill.push(e).unwrap();
            }
            expected.sort_by_key(|e| (e.retrieval, e.seq));
            let sorted: Vec<Entry> = spill.into_sorted().unwrap().map(Result::unwrap).collect();
            prop_assert_eq!(sorted, expected);
        }
    }
}
