//! Why a store operation failed.

use std::sync::Arc;

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
    /// Some retrievals were already counted by another batch; nothing changed.
    #[error("{} retrieval(s) already counted by another batch", retrievals.len())]
    Conflict {
        /// The retrievals already counted.
        retrievals: Vec<super::RetrievalKey>,
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
    /// The table is of another format than this replica reads (made, or
    /// upgraded meanwhile, by another version): nothing is written.
    #[error("the table is of format {found}, and this etracker reads format {expected}: run the etracker version of format {found} against it (or this version against a new table); this replica changes nothing in it")]
    FormatChanged {
        /// The table's format.
        found: u64,
        /// This replica's.
        expected: u64,
    },
    /// The backend kept refusing for want of capacity (DynamoDB throttling)
    /// through every retry: transient, try again later.
    #[error("the storage backend kept throttling {operation}")]
    Throttled {
        /// The operation throttled.
        operation: &'static str,
    },
    /// Transactions kept being cancelled by others (contention) through
    /// every retry: transient, try again later.
    #[error("too much contention: the transaction was cancelled {attempts} times")]
    Contended {
        /// Attempts made.
        attempts: u32,
    },
    /// The backend failed (I/O, a transaction, a request); `cause` keeps the
    /// backend's own error.
    #[error("storage backend failed: {context}: {cause}")]
    Backend {
        /// What was being done.
        context: String,
        /// The backend's error.
        cause: BackendError,
    },
}

impl StoreError {
    /// The backend failed at `context` with `error`.
    pub fn backend(
        context: impl Into<String>,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Backend {
            context: context.into(),
            cause: BackendError(Arc::new(error)),
        }
    }

    /// Whether trying again later may succeed (the backend was busy), as
    /// opposed to a refusal or a fault that stays.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Throttled { .. } | StoreError::Contended { .. } | StoreError::InUse { .. }
        )
    }
}

/// A backend's error, kept whole (its type and chain) and shared, so that a
/// [`StoreError`] stays `Clone`; it displays with its chain of sources.
#[derive(Clone)]
pub struct BackendError(Arc<dyn std::error::Error + Send + Sync>);

impl BackendError {
    /// The backend's error itself, for `downcast_ref`.
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.0.as_ref()
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

impl std::fmt::Debug for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

/// Two backend errors are equal when they are the same error or read the
/// same (errors of most backends are not comparable themselves).
impl PartialEq for BackendError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.to_string() == other.to_string()
    }
}

impl Eq for BackendError {}

/// A failure of the store's own machinery, with no backend error under it
/// (a group commit whose leader went away).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Internal(pub(crate) &'static str);

/// A stored value without the fields its format has.
impl From<ucanto::dag::FieldError> for StoreError {
    fn from(e: ucanto::dag::FieldError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend failure keeps the backend's own error, typed: the caller
    /// matches the variant and reads the cause, never the text.
    #[test]
    fn a_backend_failure_keeps_its_cause() {
        let file = std::env::temp_dir().join(format!("etracker-not-a-dir-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        let Err(error) = crate::store::redb::RedbStore::open(&file.join("store")) else {
            panic!("a store under a file opened");
        };
        let StoreError::Backend { cause, .. } = &error else {
            panic!("{error:?}");
        };
        let io = cause.get().downcast_ref::<std::io::Error>().unwrap();
        assert_eq!(io.kind(), std::io::ErrorKind::NotADirectory);
        assert!(!error.is_transient());
        assert_eq!(error.clone(), error, "comparable, and Clone");
        assert!(StoreError::Contended { attempts: 64 }.is_transient());
        let _ = std::fs::remove_file(&file);
    }
}
