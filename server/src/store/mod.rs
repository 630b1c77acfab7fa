//! Durable state of the tracker: egress records, consolidation receipts and totals.
//!
//! The store knows nothing about UCANs or handlers. It keeps bytes and plain
//! records, and enforces the few rules that make egress accounting safe:
//!
//! - **One record per batch.** [`Store::put`] is idempotent for the node that
//!   tracked the batch and refuses any other node ([`StoreError::NodeConflict`]).
//! - **A bounded queue per node.** Each backend counts every node's pending
//!   records exactly, in the transactions that track and conclude them, so
//!   [`Store::put_within`] can refuse a node's batch past a cap
//!   ([`StoreError::TooManyPending`]) without reading its records.
//! - **Leases, not locks.** Consolidator replicas take pending records with
//!   [`Store::lease_pending`]; a lease that is not renewed simply expires, so a
//!   crashed replica never strands a record. Only the lease owner may
//!   [`Store::reschedule`] a record after a transient failure.
//! - **One commit point.** [`Store::conclude`] stores the consolidate receipt,
//!   adds the totals, records every counted retrieve receipt and marks the
//!   batch done, all or nothing. A retrieve receipt can be counted by one batch
//!   only ([`StoreError::Conflict`]), and concluding twice changes nothing, so
//!   no byte is ever counted twice, whatever the replicas race on.
//!
//! [`redb::RedbStore`] is the embedded default backend. `dynamodb::DynamoStore`
//! (cargo feature `dynamodb`) keeps the same rules on one DynamoDB table that
//! several replicas share. The trait documents, per method, the conditions
//! that must hold when a write lands, and how the DynamoDB backend makes sure
//! they do.
//!
//! Times are unix seconds (`u64`), passed in by the caller so that every
//! replica and every test decides "now" explicitly. Days are UTC dates written
//! `YYYY-MM-DD`, whose byte order is their chronological order.

use std::sync::Arc;

use cid::Cid;
use ucanto::principal::Did;

mod audit;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
mod group_commit;
pub mod redb;

/// Everything `space/egress/track` learns about a batch, as first stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    /// The batch CID (CIDv1, codec `car`, sha2-256 of the batch file).
    pub batch: Cid,
    /// The storage node that tracked the batch (the track invocation's issuer).
    pub node: Did,
    /// Where the batch can be fetched; contains a `{cid}` placeholder.
    pub endpoint: String,
    /// CID of the track invocation.
    pub track_invocation: Cid,
    /// The track invocation as an opaque CAR (the tracker keeps its block
    /// alone; records of earlier versions have its proofs too).
    pub track_invocation_bytes: Vec<u8>,
    /// CID of the consolidate invocation forked from the track receipt.
    pub consolidate_invocation: Cid,
    /// When the track invocation was received (unix seconds). A new record
    /// becomes due for consolidation at this time.
    pub received_at: u64,
}

/// Where a record is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordStatus {
    /// Waiting to be consolidated (or being consolidated under a lease).
    Pending,
    /// Concluded: the consolidate receipt is stored and the totals are counted.
    Done {
        /// CID of the consolidate receipt.
        receipt: Cid,
        /// When it was concluded (unix seconds).
        concluded_at: u64,
        /// Bytes this batch added to the totals.
        total_bytes: u64,
        /// Number of retrieve receipts this batch counted.
        counted_receipts: u64,
    },
}

/// A consolidator replica's claim on a pending record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The replica holding the lease.
    pub owner: String,
    /// The lease is free again from this time on (unix seconds).
    pub until: u64,
}

/// A stored egress record: the tracked batch and its consolidation progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressRecord {
    /// The batch CID; the record's key.
    pub batch: Cid,
    /// The storage node that tracked the batch.
    pub node: Did,
    /// Where the batch can be fetched; contains a `{cid}` placeholder.
    pub endpoint: String,
    /// CID of the track invocation.
    pub track_invocation: Cid,
    /// The track invocation as an opaque CAR (see [`NewRecord`]).
    pub track_invocation_bytes: Vec<u8>,
    /// CID of the consolidate invocation.
    pub consolidate_invocation: Cid,
    /// When the track invocation was received (unix seconds).
    pub received_at: u64,
    /// Pending or done.
    pub status: RecordStatus,
    /// Number of failed consolidation attempts.
    pub attempts: u32,
    /// Not to be leased before this time (unix seconds).
    pub next_attempt_at: u64,
    /// When the first attempt failed, if one has.
    pub first_failure_at: Option<u64>,
    /// Why the last attempt failed, if one has.
    pub last_error: Option<String>,
    /// The current (possibly expired) lease; `None` when free or done.
    pub lease: Option<Lease>,
}

impl EgressRecord {
    /// The record `put` creates from `new`: pending, due at `received_at`.
    pub fn from_new(new: NewRecord) -> Self {
        EgressRecord {
            batch: new.batch,
            node: new.node,
            endpoint: new.endpoint,
            track_invocation: new.track_invocation,
            track_invocation_bytes: new.track_invocation_bytes,
            consolidate_invocation: new.consolidate_invocation,
            next_attempt_at: new.received_at,
            received_at: new.received_at,
            status: RecordStatus::Pending,
            attempts: 0,
            first_failure_at: None,
            last_error: None,
            lease: None,
        }
    }

    /// Whether the record is still waiting to be concluded.
    pub fn is_pending(&self) -> bool {
        self.status == RecordStatus::Pending
    }

    /// The earliest time a replica may lease this record: after both the
    /// back-off and any lease (expired or not) have run out. `None` once done.
    pub fn due_at(&self) -> Option<u64> {
        self.is_pending().then(|| {
            let lease_until = self.lease.as_ref().map_or(0, |l| l.until);
            self.next_attempt_at.max(lease_until)
        })
    }

    /// This record with its lease released: due again when it would have
    /// been without the lease (at once, for a record leased when due).
    pub(crate) fn released(&self) -> EgressRecord {
        let mut record = self.clone();
        record.lease = None;
        record
    }

    /// Whether `owner` holds this record's lease (expired or not).
    pub(crate) fn leased_by(&self, owner: &str) -> bool {
        self.is_pending() && self.lease.as_ref().is_some_and(|l| l.owner == owner)
    }

    /// This record leased to `owner` until `until`.
    pub(crate) fn leased(&self, owner: &str, until: u64) -> EgressRecord {
        let mut record = self.clone();
        record.lease = Some(Lease {
            owner: owner.to_string(),
            until,
        });
        record
    }

    /// What [`Store::reschedule`] makes of this (stored) record, after its
    /// checks: pending ([`StoreError::NotPending`]) and leased to `owner`
    /// ([`StoreError::NotLeaseOwner`]).
    pub(crate) fn rescheduled(
        &self,
        owner: &str,
        now: u64,
        retry: &Retry,
    ) -> Result<EgressRecord, StoreError> {
        if !self.is_pending() {
            return Err(StoreError::NotPending);
        }
        let holder = self.lease.as_ref().map(|l| l.owner.as_str());
        if holder != Some(owner) {
            return Err(StoreError::NotLeaseOwner {
                holder: holder.map(str::to_string),
            });
        }
        let mut record = self.clone();
        record.attempts = record.attempts.saturating_add(1);
        // The give-up age counts the node's consecutive failures: a
        // failure on our side ends the streak.
        if retry.by_node {
            record.first_failure_at.get_or_insert(now);
        } else {
            record.first_failure_at = None;
        }
        record.last_error = Some(retry.last_error.clone());
        record.next_attempt_at = retry.next_attempt_at;
        record.lease = None;
        Ok(record)
    }

    /// This record concluded by `c`: done, its lease released.
    /// The record once `c`, which counted `counted` retrievals, is committed.
    pub(crate) fn concluded(&self, c: &Conclusion, counted: u64) -> EgressRecord {
        let mut record = self.clone();
        record.status = RecordStatus::Done {
            receipt: c.receipt,
            concluded_at: c.concluded_at,
            total_bytes: c.total_bytes,
            counted_receipts: counted,
        };
        record.lease = None;
        record
    }
}

/// What [`Store::put`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The batch was new; this is the stored record.
    Inserted(EgressRecord),
    /// The same node had already tracked the batch; nothing changed and this
    /// is the record as it is (its consolidate CID is the one to answer with).
    Existing(EgressRecord),
}

impl PutOutcome {
    /// What [`Store::put`] answers when `existing` is already stored for the
    /// batch that `node` tracks: the record if it is the same node's, else
    /// [`StoreError::NodeConflict`].
    pub(crate) fn existing(existing: EgressRecord, node: &Did) -> Result<Self, StoreError> {
        if existing.node == *node {
            Ok(PutOutcome::Existing(existing))
        } else {
            Err(StoreError::NodeConflict {
                node: existing.node,
            })
        }
    }

    /// The stored record, new or existing.
    pub fn record(&self) -> &EgressRecord {
        match self {
            PutOutcome::Inserted(r) | PutOutcome::Existing(r) => r,
        }
    }
}

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

/// The outcome of consolidating a batch, committed by [`Store::conclude`].
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
    /// Tally chunks of the batch staged by [`Store::stage_chunks`] whose
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
    /// ([`Store::drop_ended_claims`]; `u64::MAX` keeps them).
    pub claims_end: u64,
    /// Receipts of the batch not counted, by error name (`errors[]` of the
    /// receipt), for the operators' counts.
    pub rejected: Vec<(String, u64)>,
    /// Whether the receipt is an error: the batch failed as a whole.
    pub failed: bool,
}

/// What consolidation refused, over all conclusions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rejections {
    /// Batches concluded with an error receipt.
    pub failed_batches: u64,
    /// Receipts not counted, by error name.
    pub by_name: std::collections::BTreeMap<String, u64>,
}

/// Runs `call` on `store` off the async threads: the store's methods block
/// (redb on disk, DynamoDB on a runtime of its own, which tokio forbids
/// inside another).
pub async fn blocking<T: Send + 'static>(
    store: Arc<dyn Store>,
    call: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(move || call(store.as_ref()))
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
}

/// A DID read back from the store.
pub(crate) fn parse_did(text: &str) -> Result<Did, StoreError> {
    Did::parse(text).map_err(|e| StoreError::Corrupt(format!("{text}: {e}")))
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

/// A space in the tracker's own registry: who provisions it (its provider)
/// and who pays for it (its customer), when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceEntry {
    /// The space.
    pub space: Did,
    /// The provider that provisions it.
    pub provider: Did,
    /// The account it belongs to, if known.
    pub customer: Option<Did>,
}

/// What [`Store::conclude`] did.
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

/// A dashboard login, kept in the store so that every replica knows it and
/// a logout ends it everywhere. Stored under the SHA-256 of its cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    /// Who logged in.
    pub user: String,
    /// The token every form of the session must carry.
    pub csrf: String,
    /// When it ends (unix seconds).
    pub expires_at: u64,
}

/// Sessions a store keeps at most, where it can count them (redb); the
/// soonest to expire go first.
pub const MAX_SESSIONS: usize = 10_000;

/// Counters for metrics and the admin page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Records stored (pending and done).
    pub records: u64,
    /// Records waiting to be concluded (`etracker_unprocessed_batches_total`).
    pub pending: u64,
    /// Records concluded.
    pub concluded: u64,
    /// Retrieve receipts counted.
    pub counted_receipts: u64,
    /// Nodes with a total.
    pub nodes: u64,
    /// Bytes counted, over all nodes.
    pub total_bytes: u64,
    /// Bytes retrieved by non-billable actors, over all spaces.
    pub non_billable_bytes: u64,
}

/// A failed attempt, as [`Store::reschedule`] records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// When to try again (Unix seconds).
    pub next_attempt_at: u64,
    /// What went wrong, for operators.
    pub last_error: String,
    /// Whether the node failed (its streak goes on) or we did (it ends).
    pub by_node: bool,
}

/// Why a store operation failed.
///
/// Variants name what the caller did not already know (the conflicting node,
/// the lease holder, the counted receipts), not the batch it passed in: that
/// keeps the error small (a `Cid` alone is 96 bytes) on every `Result`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The batch is already tracked by another node.
    #[error("batch already tracked by {node}")]
    NodeConflict {
        /// The node that tracked it first.
        node: Did,
    },
    /// The node already has as many pending records as allowed; nothing
    /// was stored.
    #[error("the node already has {pending} batches pending")]
    TooManyPending {
        /// The node's pending records.
        pending: u64,
    },
    /// Some receipts were already counted by another batch; nothing changed.
    #[error("{} retrieve receipt(s) already counted by another batch", receipts.len())]
    Conflict {
        /// The receipts already counted.
        receipts: Vec<Cid>,
    },
    /// No record for the batch.
    #[error("no egress record for the batch")]
    NotFound,
    /// The caller does not hold the record's lease.
    #[error("lease held by {}", holder.as_deref().unwrap_or("nobody"))]
    NotLeaseOwner {
        /// Who holds the lease, if anyone.
        holder: Option<String>,
    },
    /// The record is done; only pending records can be rescheduled.
    #[error("batch already concluded")]
    NotPending,
    /// A conclusion does not belong to the record it names.
    #[error("conclusion does not match the record: {0}")]
    Mismatch(String),
    /// An argument is malformed (a day that is not `YYYY-MM-DD`, totals that
    /// do not add up, a receipt listed twice, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Stored bytes do not decode; the data was written by something else.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The backend failed (I/O, transaction, ...).
    #[error("storage backend failed: {0}")]
    Backend(String),
}

/// A stored value without the fields its format has.
impl From<ucanto::dag::FieldError> for StoreError {
    fn from(e: ucanto::dag::FieldError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

/// A count a backend keeps of its own retries, shown in `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryCounter {
    /// The metric's name.
    pub name: &'static str,
    /// What it counts.
    pub help: &'static str,
    /// Its value.
    pub value: u64,
}

/// The tracker's storage.
///
/// Methods are synchronous (redb is); async callers wrap them in
/// `tokio::task::spawn_blocking`. The trait is object-safe: the server holds an
/// `Arc<dyn Store>`.
///
/// Each method's documentation says which conditions must hold *at the moment
/// of the write*. redb serialises write transactions, so checking then
/// writing in one transaction is enough. The DynamoDB backend reads the
/// record (strongly consistent), decides exactly as redb does, and commits
/// with one `TransactWriteItems` conditioned on the record's version `ver`,
/// so the decision still holds when it lands; a cancelled transaction is
/// re-read and re-decided (a bounded number of times).
pub trait Store: Send + Sync + 'static {
    /// Stores a new pending record for a batch, idempotently.
    ///
    /// - absent → insert, [`PutOutcome::Inserted`];
    /// - present with the same node → no write, [`PutOutcome::Existing`] with
    ///   the stored record (even if endpoint or invocations differ: the first
    ///   track invocation wins and its consolidate CID stays the answer);
    /// - present with another node → [`StoreError::NodeConflict`].
    ///
    /// As [`Store::put_within`] with no cap on the node's pending records.
    fn put(&self, record: NewRecord) -> Result<PutOutcome, StoreError> {
        self.put_within(record, u64::MAX)
    }

    /// [`Store::put`], unless the batch is new and its node already has
    /// `max_pending` pending records ([`Store::node_pending`]): then
    /// [`StoreError::TooManyPending`] and no write. A batch already stored
    /// answers as `put` does whatever the count.
    ///
    /// Every new record adds one to its node's pending count, in the same
    /// transaction; the conclusion that makes it done takes one off, in its
    /// transaction.
    ///
    /// DynamoDB: read the record and the node's count (item
    /// `node#<DID>`/`pending`); when absent, one transaction puts the record
    /// with `attribute_not_exists(pk)` together with its due entry, the
    /// `records` counter and the count set to the read value plus one,
    /// conditioned on the read value. If another replica put the record or
    /// changed the count meanwhile, the transaction is cancelled and the
    /// re-read decides again.
    fn put_within(&self, record: NewRecord, max_pending: u64) -> Result<PutOutcome, StoreError>;

    /// How many of `node`'s records are pending (tracked, not concluded).
    fn node_pending(&self, node: &Did) -> Result<u64, StoreError>;

    /// The record of `batch`, if any.
    fn record(&self, batch: &Cid) -> Result<Option<EgressRecord>, StoreError>;

    /// Leases up to `limit` due records to `owner` for `lease_secs` seconds and
    /// returns them, earliest due first (a fresh record is due at its
    /// `received_at`, so fresh records come oldest first).
    ///
    /// A record is due when it is pending, `next_attempt_at <= now`, and it has
    /// no lease or its lease has expired (`lease.until <= now`). Leasing sets
    /// `lease = {owner, until: now + lease_secs}`.
    ///
    /// DynamoDB: query the due index (items of one partition sorted by due
    /// time, read strongly consistent) for entries `<= now`; per record,
    /// re-read it and, if still due, write the leased record conditioned on
    /// its version, moving its due entry. A record another replica changed
    /// meanwhile is re-read and skipped unless still due. The set need not be
    /// taken atomically, each record must.
    fn lease_pending(
        &self,
        now: u64,
        owner: &str,
        lease_secs: u64,
        limit: usize,
    ) -> Result<Vec<EgressRecord>, StoreError>;

    /// Up to `limit` pending records, earliest due first (leased ones
    /// included, at the time their lease ends): what the dashboard lists as
    /// waiting or retrying. Reads only.
    fn pending_records(&self, limit: usize) -> Result<Vec<EgressRecord>, StoreError>;

    /// Releases every lease `owner` holds, as a replica does when it starts
    /// again under its name: what it was consolidating when it stopped is
    /// due at once, not when those leases would have run out. Returns how
    /// many it released.
    fn release_leases(&self, owner: &str) -> Result<u64, StoreError>;

    /// Records a transient failure of the attempt `owner` leased: increments
    /// `attempts`, sets `last_error` and `next_attempt_at` from `retry`, and
    /// releases the lease. `first_failure_at` starts the node's streak of
    /// failures: set to `now` if unset when the node failed (`by_node`),
    /// cleared when we did.
    /// Returns the updated record.
    ///
    /// Condition: the record exists ([`StoreError::NotFound`]), is pending
    /// ([`StoreError::NotPending`]) and `lease.owner == owner`
    /// ([`StoreError::NotLeaseOwner`]); an expired lease still belongs to its
    /// owner until another replica takes it. DynamoDB: these checks on a
    /// consistent read, then the versioned write (re-read and re-checked if
    /// cancelled).
    fn reschedule(
        &self,
        batch: &Cid,
        owner: &str,
        now: u64,
        retry: &Retry,
    ) -> Result<EgressRecord, StoreError>;

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
    /// [`Store::conclude`] of the batch drops them.
    fn stage_chunks(&self, batch: &Cid, chunks: &[(Cid, Vec<u8>)]) -> Result<(), StoreError>;

    /// Adds or replaces `entry` in the registry of billable spaces.
    fn put_space(&self, entry: &SpaceEntry) -> Result<(), StoreError>;

    /// Adds or replaces each of `entries`: one transaction where the backend
    /// has them (redb), so that registering many spaces costs one commit.
    fn put_spaces(&self, entries: &[SpaceEntry]) -> Result<(), StoreError> {
        entries.iter().try_for_each(|entry| self.put_space(entry))
    }

    /// Removes `space` from the registry; false when it was not there.
    fn remove_space(&self, space: &Did) -> Result<bool, StoreError>;

    /// The registry's entry for `space`.
    fn space(&self, space: &Did) -> Result<Option<SpaceEntry>, StoreError>;

    /// Every registered space, in DID order.
    fn spaces(&self) -> Result<Vec<SpaceEntry>, StoreError>;

    /// The registered spaces whose customer is `account`, in DID order
    /// (read from an index: the cost grows with the account's spaces, not
    /// the registry's).
    fn customer_spaces(&self, account: &Did) -> Result<Vec<Did>, StoreError>;

    /// Non-billable bytes retrieved from `space` per day, `from_day` to
    /// `to_day` (exclusive), as [`Store::space_usage`].
    fn non_billable_usage(
        &self,
        space: &Did,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError>;

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

    /// Bytes per day for a space, for days in `from_day..to_day` (from
    /// inclusive, to exclusive), in day order; days without egress are absent.
    fn space_usage(
        &self,
        space: &Did,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError>;

    /// Bytes per day served by a node, for days in `from_day..to_day`.
    fn node_usage(
        &self,
        node: &Did,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError>;

    /// All bytes ever counted for a node (0 if none).
    fn node_total(&self, node: &Did) -> Result<u64, StoreError>;

    /// Registered spaces in DID order: those whose DID starts with
    /// `prefix`, after `after` (exclusive) when given, at most `limit`.
    fn spaces_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SpaceEntry>, StoreError>;

    /// Spaces with billable egress counted (whether or not in the
    /// registry), in DID order: those whose DID starts with `prefix`, after
    /// `after` (exclusive) when given, at most `limit`. A space may be
    /// listed by a conclusion that then lost its race: with no egress, then.
    fn billed_spaces_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Did>, StoreError>;

    /// Nodes that have concluded batches, in DID order: those whose DID
    /// starts with `prefix`, after `after` (exclusive) when given, at most
    /// `limit`, each with its total bytes.
    fn nodes_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Did, u64)>, StoreError>;

    /// The batches `node` tracked, newest first (by `received_at`), those
    /// received before `before` when given, at most `limit`.
    fn node_batches(
        &self,
        node: &Did,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<EgressRecord>, StoreError>;

    /// What consolidation refused so far: failed batches, and receipts not
    /// counted by error name (added by each conclusion, with its totals).
    fn rejections(&self) -> Result<Rejections, StoreError>;

    /// Bytes per day counted for all nodes together, for days in
    /// `from_day..to_day` (days with none are left out): the sum of every
    /// node's [`Store::node_usage`], kept as its own total so that reading
    /// it does not visit every node.
    fn egress_by_day(&self, from_day: &str, to_day: &str)
        -> Result<Vec<(String, u64)>, StoreError>;

    /// Keeps dashboard session `id` (the SHA-256 of its cookie), dropping
    /// expired ones (and, past [`MAX_SESSIONS`], the soonest to expire).
    fn put_session(&self, id: &[u8; 32], session: &StoredSession) -> Result<(), StoreError>;

    /// Session `id` unless it expired by `now` (unix seconds).
    fn session(&self, id: &[u8; 32], now: u64) -> Result<Option<StoredSession>, StoreError>;

    /// Ends session `id` (nothing when there is none).
    fn remove_session(&self, id: &[u8; 32]) -> Result<(), StoreError>;

    /// Number of pending records (`etracker_unprocessed_batches_total`).
    fn pending_count(&self) -> Result<u64, StoreError>;

    /// Counters for metrics and the admin page.
    fn stats(&self) -> Result<StoreStats, StoreError>;

    /// What the backend counts of its own retries (none for redb, whose
    /// writes never contend).
    fn retry_counters(&self) -> Vec<RetryCounter> {
        Vec::new()
    }
}

/// The refusal to open a store written in another format.
pub(crate) fn unsupported_format(found: u64, expected: u64) -> StoreError {
    let why = match found {
        1 => {
            " (format 1 knows counted retrievals by invocation CID, which a node can \
               change by re-encoding; it cannot be converted: let the old version \
               conclude its pending batches, then start this one on a new store)"
        }
        _ => "",
    };
    StoreError::Corrupt(format!(
        "store format {found} is not supported: this etracker reads format {expected}{why}"
    ))
}

/// Steps 2 and 3 of [`Store::conclude`]: the conclusion must be for the
/// record's task and node; `Some(receipt)` when the record is done already.
pub(crate) fn check_record(
    record: &EgressRecord,
    c: &Conclusion,
) -> Result<Option<Cid>, StoreError> {
    if record.consolidate_invocation != c.consolidate_invocation {
        return Err(StoreError::Mismatch(format!(
            "consolidate invocation is {}, not {}",
            record.consolidate_invocation, c.consolidate_invocation
        )));
    }
    if record.node != c.node {
        return Err(StoreError::Mismatch(format!(
            "tracked by {}, not {}",
            record.node, c.node
        )));
    }
    Ok(match record.status {
        RecordStatus::Done { receipt, .. } => Some(receipt),
        RecordStatus::Pending => None,
    })
}

/// The end of a lease of `lease_secs` taken at `now` ([`Store::lease_pending`]).
pub(crate) fn lease_end(now: u64, lease_secs: u64) -> Result<u64, StoreError> {
    if lease_secs == 0 {
        return Err(StoreError::Invalid("a lease must last at least 1 s".into()));
    }
    now.checked_add(lease_secs)
        .ok_or_else(|| StoreError::Invalid("lease end overflows u64".into()))
}

/// Checks the days of a `from..to` range; false when the range is empty.
pub(crate) fn check_day_range(from: &str, to: &str) -> Result<bool, StoreError> {
    check_day(from)?;
    check_day(to)?;
    Ok(from < to)
}

/// Checks that `day` is a `YYYY-MM-DD` date, so that byte order is date order.
pub(crate) fn check_day(day: &str) -> Result<(), StoreError> {
    let b = day.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && digits(0..4)
        && digits(5..7)
        && digits(8..10)
        && (1..=12).contains(&((b[5] - b'0') * 10 + (b[6] - b'0')))
        && (1..=31).contains(&((b[8] - b'0') * 10 + (b[9] - b'0')));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "day {day:?} is not YYYY-MM-DD"
        )))
    }
}

/// Checks what [`Store::conclude`] step 1 requires and returns the usage
/// summed per (space, day) and per day, so backends add each key once.
pub(crate) fn check_conclusion(c: &Conclusion) -> Result<SummedUsage, StoreError> {
    let mut summed = SummedUsage::default();
    let mut total: u64 = 0;
    let overflow = || StoreError::Invalid("byte counts overflow u64".into());
    for u in &c.usage {
        check_day(&u.day)?;
        total = total.checked_add(u.bytes).ok_or_else(overflow)?;
        let space_day = summed
            .by_space_day
            .entry((u.space.as_str().to_string(), u.day.clone()))
            .or_default();
        *space_day = space_day.checked_add(u.bytes).ok_or_else(overflow)?;
        let day = summed.by_day.entry(u.day.clone()).or_default();
        *day = day.checked_add(u.bytes).ok_or_else(overflow)?;
    }
    if total != c.total_bytes {
        return Err(StoreError::Invalid(format!(
            "total_bytes {} is not the sum of usage {total}",
            c.total_bytes
        )));
    }
    for u in &c.non_billable {
        check_day(&u.day)?;
        let space_day = summed
            .non_billable
            .entry((u.space.as_str().to_string(), u.day.clone()))
            .or_default();
        *space_day = space_day.checked_add(u.bytes).ok_or_else(overflow)?;
    }
    let mut seen = std::collections::HashSet::with_capacity(c.counted_receipts.len());
    if let Some(dup) = c.counted_receipts.iter().find(|r| !seen.insert(**r)) {
        return Err(StoreError::Invalid(format!("receipt {dup} listed twice")));
    }
    Ok(summed)
}

/// The counted retrievals of the staged tally chunk `link` of `batch`,
/// `bytes` (`None`: not staged).
pub(crate) fn staged_counted(
    batch: &Cid,
    link: &Cid,
    bytes: Option<Vec<u8>>,
) -> Result<Vec<Cid>, StoreError> {
    let bytes =
        bytes.ok_or_else(|| StoreError::Invalid(format!("tally chunk {link} is not staged")))?;
    let block = crate::tally::staged_block(link, bytes).ok_or_else(|| {
        StoreError::Corrupt(format!("staged chunk {link} does not hash to its CID"))
    })?;
    crate::tally::Chunk::decode(batch, &block)
        .map(|chunk| chunk.counted)
        .map_err(|e| StoreError::Invalid(format!("tally chunk {link}: {e}")))
}

/// A conclusion's usage with repeated keys added up.
#[derive(Debug, Default)]
pub(crate) struct SummedUsage {
    /// (space DID, day) → bytes.
    pub(crate) by_space_day: std::collections::BTreeMap<(String, String), u64>,
    /// day → bytes (the node's daily totals).
    pub(crate) by_day: std::collections::BTreeMap<String, u64>,
    /// (space DID, day) → bytes of non-billable retrievals.
    pub(crate) non_billable: std::collections::BTreeMap<(String, String), u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Cid` in a variant would make every `Result` of the store 128+ bytes
    /// and trip clippy's `result_large_err` in every caller.
    #[test]
    fn errors_stay_small() {
        assert!(std::mem::size_of::<StoreError>() <= 48);
    }

    #[test]
    fn days_must_be_iso_dates() {
        for good in ["2025-01-01", "1999-12-31"] {
            assert!(check_day(good).is_ok(), "{good}");
        }
        for bad in [
            "2025-1-01",
            "2025-13-01",
            "2025-00-10",
            "2025-01-32",
            "2025/01/01",
            "",
            "2025-01-011",
        ] {
            assert!(check_day(bad).is_err(), "{bad}");
        }
    }
}
