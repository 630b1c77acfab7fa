//! Records and leases: what a track stores, and how consolidator replicas
//! take, release and reschedule pending records.
//!
//! Implemented by `redb/records.rs` and `dynamodb/records.rs`.

use cid::Cid;
use ucanto::principal::Did;

use super::{Conclusion, StoreError};

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
        /// Why the batch failed as a whole (its consolidate receipt is an
        /// error, and counts nothing), when it did.
        failure: Option<String>,
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

    /// What [`Records::reschedule`] makes of this (stored) record, after its
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
            failure: c.failure.clone(),
        };
        record.lease = None;
        record
    }
}

/// What [`Records::put`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The batch was new; this is the stored record.
    Inserted(EgressRecord),
    /// The same node had already tracked the batch; nothing changed and this
    /// is the record as it is (its consolidate CID is the one to answer with).
    Existing(EgressRecord),
}

impl PutOutcome {
    /// What [`Records::put`] answers when `existing` is already stored for the
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

/// A failed attempt, as [`Records::reschedule`] records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// When to try again (Unix seconds).
    pub next_attempt_at: u64,
    /// What went wrong, for operators.
    pub last_error: String,
    /// Whether the node failed (its streak goes on) or we did (it ends).
    pub by_node: bool,
}

/// Egress records and their leases (see [`Store`](super::Store) for the
/// conditions every write keeps).
pub trait Records {
    /// Stores a new pending record for a batch, idempotently.
    ///
    /// - absent → insert, [`PutOutcome::Inserted`];
    /// - present with the same node → no write, [`PutOutcome::Existing`] with
    ///   the stored record (even if endpoint or invocations differ: the first
    ///   track invocation wins and its consolidate CID stays the answer);
    /// - present with another node → [`StoreError::NodeConflict`].
    ///
    /// As [`Records::put_within`] with no cap on the node's pending records.
    fn put(&self, record: NewRecord) -> Result<PutOutcome, StoreError> {
        self.put_within(record, u64::MAX)
    }

    /// [`Records::put`], unless the batch is new and its node already has
    /// `max_pending` pending records ([`Records::node_pending`]): then
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

    /// Releases every lease `owner` holds that runs past `now` (leases are
    /// at most `lease_secs` long), as a replica does when it starts again
    /// under its name: what it was consolidating when it stopped is due at
    /// once, not when those leases would have run out. Returns how many it
    /// released.
    fn release_leases(&self, owner: &str, now: u64, lease_secs: u64) -> Result<u64, StoreError>;

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

    /// Number of pending records (`etracker_unprocessed_batches_total`).
    fn pending_count(&self) -> Result<u64, StoreError>;
}
