//! Conclusions and claims: the commit point of a consolidation, the tally
//! chunks staged before it, the stored receipts and the counted retrievals.
//!
//! Implemented by `redb/conclusions.rs` and `dynamodb/conclusions.rs`.

use cid::Cid;
use ucanto::principal::Did;

use super::StoreError;

/// Egress bytes of one space on one day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DailyUsage {
    /// The space (the `with` of the retrieve receipts).
    pub space: Did,
    /// The UTC day of the retrievals, `YYYY-MM-DD`.
    pub day: String,
    /// Bytes served.
    pub bytes: u64,
}

/// A retrieval a conclusion counts: the payload id of its
/// `space/content/retrieve` invocation, and that invocation's own expiry.
/// The expiry is part of what was signed, so every copy of the retrieval
/// carries the same one; DynamoDB files the record that it was counted
/// under its node and the hour it expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountedRetrieval {
    /// The payload id (raw CID) of the retrieve invocation.
    pub retrieval: Cid,
    /// Its `exp`, unix seconds.
    pub expires: u64,
}

/// How claims and conflicts name a retrieval: the first 16 bytes of its
/// payload id's digest (random: two retrievals of one node and hour share
/// them with odds of about 2⁻¹¹⁰ at a billion an hour).
pub type RetrievalKey = [u8; 16];

/// The [`RetrievalKey`] of a retrieval's payload id.
pub fn retrieval_key(retrieval: &Cid) -> RetrievalKey {
    let mut key = [0; 16];
    let digest = retrieval.hash().digest();
    let n = digest.len().min(16);
    key[..n].copy_from_slice(&digest[..n]);
    key
}

/// The conclusion that tally chunks are staged for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Staging {
    /// The batch.
    pub batch: Cid,
    /// The consolidate receipt the chunks detail.
    pub receipt: Cid,
    /// Every chunk of the tally, in order (the conclusion's `staged_tally`).
    pub tally: Vec<Cid>,
    /// The node that tracked the batch.
    pub node: Did,
    /// The conclusion's `claims_end`.
    pub claims_end: u64,
}

impl From<&Conclusion> for Staging {
    /// The staging of `c`'s staged tally.
    fn from(c: &Conclusion) -> Self {
        Staging {
            batch: c.batch,
            receipt: c.receipt,
            tally: c.staged_tally.clone(),
            node: c.node.clone(),
            claims_end: c.claims_end,
        }
    }
}

impl Staging {
    /// The name of the conclusion the chunks are staged for: chunks staged
    /// for another receipt or tally of the batch (an earlier settling) are
    /// not this one's. See [`staged_attempt`].
    pub fn attempt(&self) -> String {
        staged_attempt(&self.receipt, &self.tally)
    }
}

/// The name of the conclusion of `receipt` with the staged tally `chunks`:
/// the start of a sha2-256 over both, so that the same receipt and tally
/// always get the same name, and any other gets another.
pub fn staged_attempt(receipt: &Cid, chunks: &[Cid]) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(receipt.to_bytes());
    for chunk in chunks {
        hash.update(chunk.to_bytes());
    }
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a staged chunk adds to its conclusion, as read back; its counted
/// retrievals stay with the store, which reads them as it commits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StagedChunk {
    /// Billable bytes per space and day.
    pub usage: Vec<(Did, String, u64)>,
    /// Non-billable bytes per space and day.
    pub non_billable: Vec<(Did, String, u64)>,
    /// How many retrievals it counts.
    pub counted: u64,
}

/// The outcome of consolidating a batch, committed by [`Conclusions::conclude`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conclusion {
    /// The batch being concluded.
    pub batch: Cid,
    /// The consolidate invocation the receipt answers; must be the record's.
    pub consolidate_invocation: Cid,
    /// CID of the consolidate receipt.
    pub receipt: Cid,
    /// The consolidate receipt as an opaque CAR, served to the node later.
    pub receipt_bytes: Vec<u8>,
    /// The node that tracked the batch; must be the record's.
    pub node: Did,
    /// Total bytes counted; must equal the sum of `usage`.
    pub total_bytes: u64,
    /// Bytes per (space, day). Repeated (space, day) pairs are added up.
    pub usage: Vec<DailyUsage>,
    /// Retrievals counted in `usage` or `non_billable`, with those of
    /// `staged_tally`; no duplicates. Every one was addressed to `node`
    /// (the consolidator checks it), so claims are the node's.
    pub counted_receipts: Vec<CountedRetrieval>,
    /// Tally chunks of the batch staged by [`Conclusions::stage_chunks`] whose
    /// `counted` retrievals count too: the store reads them a chunk at a
    /// time as it commits, so that a conclusion of any size takes bounded
    /// memory (see [`crate::tally`]).
    pub staged_tally: Vec<Cid>,
    /// Bytes per (space, day) retrieved by non-billable actors (replication,
    /// indexing): recorded apart, in neither the node's nor the space's totals.
    pub non_billable: Vec<DailyUsage>,
    /// When the conclusion is committed (unix seconds).
    pub concluded_at: u64,
    /// After this second no batch could count a retrieval of this one
    /// again (it would be stale): the records that they were counted may go
    /// ([`Conclusions::drop_ended_claims`]; `u64::MAX` keeps them).
    pub claims_end: u64,
    /// Receipts of the batch not counted, by error name (`errors[]` of the
    /// receipt), for the operators' counts.
    pub rejected: Vec<(String, u64)>,
    /// Why the batch failed as a whole, when its receipt is an error (the
    /// error's message, at most 1 KiB): kept on the record and listed.
    pub failure: Option<String>,
}

/// What [`Conclusions::conclude`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConcludeOutcome {
    /// Committed: receipt stored, totals added, record done.
    Concluded,
    /// The batch was already concluded; nothing changed. `receipt` is the
    /// CID of the receipt stored then (the one to serve).
    AlreadyConcluded {
        /// CID of the stored consolidate receipt.
        receipt: Cid,
    },
}

/// An error name as the store keeps it: ASCII letters, digits and `_`, at
/// most 64 of them; anything else is `Other`.
pub fn rejection_name(name: &str) -> &str {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if plain {
        name
    } else {
        "Other"
    }
}

/// Committing consolidations and reading what they counted.
pub trait Conclusions {
    /// Commits a consolidation, all or nothing. The commit point of the tracker.
    ///
    /// In order:
    /// 1. malformed conclusion (bad day, `total_bytes` ≠ Σ `usage`, a receipt
    ///    listed twice in `counted_receipts`) → [`StoreError::Invalid`];
    /// 2. no record → [`StoreError::NotFound`]; another consolidate CID or node
    ///    → [`StoreError::Mismatch`];
    /// 3. record done → `Ok(`[`ConcludeOutcome::AlreadyConcluded`]`)`, no write;
    /// 4. a chunk of `staged_tally` not staged for this receipt, or a
    ///    retrieval listed twice across `counted_receipts` and the chunks →
    ///    [`StoreError::Invalid`], no write;
    /// 5. any counted retrieval already counted → [`StoreError::Conflict`]
    ///    naming them by [`RetrievalKey`], no write;
    /// 6. otherwise, in one transaction: store the receipt bytes under the
    ///    consolidate CID, add `total_bytes` to the node total, add each
    ///    (space, day) to the space and node daily totals, map every counted
    ///    receipt to the batch, mark the record done and clear its lease →
    ///    [`ConcludeOutcome::Concluded`].
    ///
    /// The lease is not required: whoever concludes first wins, and the
    /// conditions above make a racing second conclusion harmless.
    ///
    /// DynamoDB: a batch can count hundreds of thousands of receipts, more
    /// than one `TransactWriteItems` (100 items) holds. Each attempt writes
    /// its counted retrievals as pages of digests per node and hour of
    /// expiry, which count only once the batch is done with that attempt,
    /// so the pages of an interrupted attempt never count; one final
    /// transaction, conditioned on the record's version and on the node's
    /// version of conclusions (which it bumps), stores the receipt, `ADD`s
    /// the totals and marks the record done: totals move only with that
    /// flip. A conclusion of the same node that flipped in between changed
    /// the node's version, so this one re-reads and finds what that one
    /// counted (`Conflict`). Daily totals that do not fit the final
    /// transaction are written before it as usage rows under a fence on the
    /// record, and count from the flip on.
    fn conclude(&self, conclusion: &Conclusion) -> Result<ConcludeOutcome, StoreError>;

    /// Keeps tally chunks (CID, bytes, each hashing to its CID) that arrive
    /// before their conclusion: a large tally travels over several conclude
    /// invocations. Chunks are content-addressed, so staging one twice
    /// changes nothing; a malformed one is [`StoreError::Invalid`].
    /// [`Conclusions::conclude`] of the batch drops them. DynamoDB keeps no
    /// chunk: it writes their counted retrievals as claims pages of the
    /// staging's receipt (which count only if the batch concludes with it)
    /// and a summary of the rest.
    fn stage_chunks(&self, staging: &Staging, chunks: &[(Cid, Vec<u8>)]) -> Result<(), StoreError>;

    /// The chunks staged for `staging` among `cids`, in order (`None` where
    /// missing).
    fn staged_chunks(
        &self,
        staging: &Staging,
        cids: &[Cid],
    ) -> Result<Vec<Option<StagedChunk>>, StoreError>;

    /// The CIDs of the chunks staged for `staging`.
    fn staged_chunk_ids(&self, staging: &Staging) -> Result<Vec<Cid>, StoreError>;

    /// The consolidate receipt (CAR bytes) stored for a consolidate invocation.
    fn receipt(&self, consolidate_invocation: &Cid) -> Result<Option<Vec<u8>>, StoreError>;

    /// For each retrieval served by `node`, the batch that counted it, if
    /// any. The answer has the same length and order as `retrievals`.
    fn counted(
        &self,
        node: &Did,
        retrievals: &[CountedRetrieval],
    ) -> Result<Vec<Option<Cid>>, StoreError>;

    /// Drops the records of counted retrievals whose conclusion's
    /// `claims_end` is before `now`: none of them could be counted again
    /// (the rules of [`etracker_capabilities::payable`] refuse them as
    /// stale). Returns how many went. DynamoDB leaves this to the table's
    /// time to live (attribute `ttl` of each claim).
    fn drop_ended_claims(&self, now: u64) -> Result<u64, StoreError>;
}
