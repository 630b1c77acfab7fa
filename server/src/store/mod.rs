//! Durable state of the tracker: egress records, consolidation receipts and totals.
//!
//! The store knows nothing about UCANs or handlers. It keeps bytes and plain
//! records, and enforces the few rules that make egress accounting safe:
//!
//! - **One record per batch.** [`Records::put`] is idempotent for the node that
//!   tracked the batch and refuses any other node ([`StoreError::NodeConflict`]).
//! - **A bounded queue per node.** Each backend counts every node's pending
//!   records exactly, in the transactions that track and conclude them, so
//!   [`Records::put_within`] can refuse a node's batch past a cap
//!   ([`StoreError::TooManyPending`]) without reading its records.
//! - **Leases, not locks.** Consolidator replicas take pending records with
//!   [`Records::lease_pending`]; a lease that is not renewed simply expires, so a
//!   crashed replica never strands a record. Only the lease owner may
//!   [`Records::reschedule`] a record after a transient failure.
//! - **One commit point.** [`Conclusions::conclude`] stores the consolidate receipt,
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
//!
//! # Roles
//!
//! [`Store`] is the sum of five role traits, one per concern; each backend
//! implements each of them in the file named for it:
//!
//! | role | concern | redb | DynamoDB |
//! |---|---|---|---|
//! | [`Records`] | records and leases | `redb/records.rs` | `dynamodb/records.rs` |
//! | [`Conclusions`] | conclusion, staged chunks, receipts, claims | `redb/conclusions.rs` | `dynamodb/conclusions.rs` |
//! | [`SpaceStore`] | the space registry | `redb/spaces.rs` | `dynamodb/spaces.rs` |
//! | [`DashboardReads`] | totals, usage, pages, counters | `redb/dashboard.rs` | `dynamodb/dashboard.rs` |
//! | [`Sessions`] | dashboard sessions | `redb/sessions.rs` | `dynamodb/sessions.rs` |
//!
//! The types of each role live with its trait (`records.rs`, ...), the
//! errors in `error.rs`, and the checks that every backend shares (days,
//! conclusions, leases) in `checks.rs`. Callers holding an
//! `Arc<dyn Store>` call every method directly; code naming a backend's
//! type brings the roles into scope with `use crate::store::prelude::*`.

use std::sync::Arc;

mod audit;
mod checks;
mod conclusions;
mod dashboard;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
mod error;
mod group_commit;
mod records;
pub mod redb;
mod sessions;
mod spaces;

#[cfg(feature = "dynamodb")]
pub(crate) use checks::SummedUsage;
/// Largest consolidate receipt (the agent message served at
/// `GET /receipts/{task}`) a store keeps: one DynamoDB item holds 400 KB
/// with its keys, and a consolidator's receipts stay under 256 KiB (their
/// `errors[]` are bounded), so an honest one always fits.
pub const MAX_RECEIPT_BYTES: usize = 384 * 1024;

pub(crate) use checks::{
    check_conclusion, check_day_range, check_record, lease_end, parse_did, staged_chunk,
    staged_counted, unsupported_format,
};
pub use conclusions::{
    rejection_name, retrieval_key, staged_attempt, ConcludeOutcome, Conclusion, Conclusions,
    CountedRetrieval, DailyUsage, RetrievalKey, StagedChunk, Staging,
};
pub use dashboard::{BatchCursor, DashboardReads, Rejections, RetryCounter, StoreStats};
pub use error::{BackendError, StoreError};
pub use records::{EgressRecord, Lease, NewRecord, PutOutcome, RecordStatus, Records, Retry};
pub use sessions::{Sessions, StoredSession, MAX_SESSIONS};
pub use spaces::{SpaceEntry, SpaceStore};

/// The role traits, to call a store's methods on a backend's own type
/// (`RedbStore`, `DynamoStore`): `use etracker_server::store::prelude::*`.
pub mod prelude {
    pub use super::{Conclusions, DashboardReads, Records, Sessions, SpaceStore, Store};
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
pub trait Store:
    Records + Conclusions + SpaceStore + DashboardReads + Sessions + Send + Sync + 'static
{
}

impl<T> Store for T where
    T: Records + Conclusions + SpaceStore + DashboardReads + Sessions + Send + Sync + 'static
{
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
        .map_err(|e| StoreError::backend("a store call", e))?
}
