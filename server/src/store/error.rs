//! Why a store operation failed.

use cid::Cid;
use ucanto::principal::Did;

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
    /// Another process holds the store (redb opens a file in one process
    /// at a time): a running tracker, say.
    #[error("the store {path} is open in another process")]
    InUse {
        /// The store's file.
        path: String,
    },
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
