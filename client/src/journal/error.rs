//! How the journal fails.

use std::io;
use std::path::{Path, PathBuf};

use cid::Cid;
use etracker_capabilities::retrieve::EgressError;
use ucanto::dag::CodecError;

/// A journal failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal I/O on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The configuration is not acceptable.
    #[error("invalid journal configuration: {0}")]
    Config(String),
    /// Another journal holds the directory's lock.
    #[error("journal directory {} is in use by another journal", .0.display())]
    Locked(PathBuf),
    /// The bytes are not a receipt archive.
    #[error("invalid receipt archive: {0}")]
    InvalidArchive(#[source] CodecError),
    /// The receipt is not one the journal can count.
    #[error("receipt {receipt} cannot be journaled: {source}")]
    NotCountable {
        /// The receipt.
        receipt: Cid,
        /// Why.
        #[source]
        source: Box<EgressError>,
    },
    /// The archive is larger than
    /// [`MAX_ARCHIVE_BYTES`](super::MAX_ARCHIVE_BYTES), or would not fit in a
    /// batch of the configured maximum size.
    #[error("a receipt archive of {size} bytes does not fit (limit {max} bytes)")]
    TooLarge {
        /// Archive (or section) size.
        size: u64,
        /// The limit it exceeds.
        max: u64,
    },
    /// No closed batch has this CID.
    #[error("unknown batch {0}")]
    UnknownBatch(Cid),
    /// The reconciliation is for another consolidate task than the one
    /// recorded for the batch.
    #[error("batch {batch} was tracked as consolidate task {}, not {got}",
        expected.as_ref().map_or("(none: never tracked)".to_string(), |c| c.to_string()))]
    WrongTask {
        /// The batch.
        batch: Cid,
        /// The task recorded for it (none if not tracked).
        expected: Option<Box<Cid>>,
        /// The task of the reconciliation.
        got: Box<Cid>,
    },
    /// A write failed and could not be undone; reopen the journal to repair it.
    #[error("journal stopped after a failed write ({0}); reopen it to repair")]
    Poisoned(String),
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors stay under clippy's `result_large_err` threshold, so callers'
    /// `Result<_, JournalError>` closures do not trip it.
    #[test]
    fn errors_stay_small() {
        assert!(std::mem::size_of::<JournalError>() <= 128);
    }
}
