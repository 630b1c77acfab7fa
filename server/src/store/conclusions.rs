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
    /// `staged_tally`; no duplicates.
    pub counted_receipts: Vec<Cid>,
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
    /// Whether the receipt is an error: the batch failed as a whole.
    pub failed: bool,
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
    /// 4. a chunk of `staged_tally` missing or malformed, or a retrieval
    ///    listed twice across `counted_receipts` and the chunks →
    ///    [`StoreError::Invalid`], no write;
    /// 5. any counted retrieval already counted → [`StoreError::Conflict`]
    ///    listing them, no write;
    /// 6. otherwise, in one transaction: store the receipt bytes under the
    ///    consolidate CID, add `total_bytes` to the node total, add each
    ///    (space, day) to the space and node daily totals, map every counted
    ///    receipt to the batch, mark the record done and clear its lease →
    ///    [`ConcludeOutcome::Concluded`].
    ///
    /// The lease is not required: whoever concludes first wins, and the
    /// conditions above make a racing second conclusion harmless.
    ///
    /// DynamoDB: a batch can count tens of thousands of receipts, more than
    /// one `TransactWriteItems` (100 items) holds. Each counted receipt gets
    /// a claim item naming the batch and the conclusion attempt; a claim
    /// counts only once its batch is done with that attempt, so the claims
    /// of an interrupted attempt never count. When everything fits, one
    /// transaction writes the claims, the receipt, the totals (`ADD`) and the
    /// done record. Otherwise the attempt takes a fence on the record
    /// (`token`), claims in transactions of 99 claims each checked against
    /// the fence, and a final transaction, conditioned on the record's
    /// version and fence, stores the receipt, `ADD`s the totals and marks the
    /// record done: totals move only with that flip. A claim that meets a
    /// receipt counted meanwhile withdraws the attempt's claims and reports
    /// `Conflict`, as does a receipt claimed by a pending attempt of another
    /// batch. The totals of one conclusion (5 items plus one per (space, day)
    /// and per day) must fit one transaction, else [`StoreError::Invalid`].
    fn conclude(&self, conclusion: &Conclusion) -> Result<ConcludeOutcome, StoreError>;

    /// Keeps tally chunks of `batch` (CID, bytes) that arrive before their
    /// conclusion: a large tally travels over several conclude invocations.
    /// Chunks are content-addressed, so staging one twice changes nothing.
    /// [`Conclusions::conclude`] of the batch drops them.
    fn stage_chunks(&self, batch: &Cid, chunks: &[(Cid, Vec<u8>)]) -> Result<(), StoreError>;

    /// The staged chunks of `batch` among `cids`, in order (`None` where missing).
    fn staged_chunks(&self, batch: &Cid, cids: &[Cid]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;

    /// The CIDs of the chunks staged for `batch`.
    fn staged_chunk_ids(&self, batch: &Cid) -> Result<Vec<Cid>, StoreError>;

    /// The consolidate receipt (CAR bytes) stored for a consolidate invocation.
    fn receipt(&self, consolidate_invocation: &Cid) -> Result<Option<Vec<u8>>, StoreError>;

    /// For each retrieve receipt, the batch that counted it, if any.
    /// The answer has the same length and order as `receipts`.
    fn counted(&self, receipts: &[Cid]) -> Result<Vec<Option<Cid>>, StoreError>;

    /// Drops the records of counted retrievals whose conclusion's
    /// `claims_end` is before `now`: none of them could be counted again
    /// (the rules of [`etracker_capabilities::payable`] refuse them as
    /// stale). Returns how many went. DynamoDB leaves this to the table's
    /// time to live (attribute `ttl` of each claim).
    fn drop_ended_claims(&self, now: u64) -> Result<u64, StoreError>;
}
