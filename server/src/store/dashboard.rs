//! Dashboard reads: totals, usage per day, pages of spaces and nodes, and
//! the counters of metrics. Reads only.
//!
//! Implemented by `redb/dashboard.rs` and `dynamodb/dashboard.rs`.

use ucanto::principal::Did;

use super::{EgressRecord, SpaceEntry, StoreError};

/// Where a page of batches ended: its last batch, by time and CID (the
/// time it was received, for a node's batches; concluded, for the failed
/// ones). Batches of the same second are told apart by their CID, so
/// paging never skips one. Written `<time>-<batch CID>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchCursor {
    /// When the last batch shown was received (or concluded).
    pub received_at: u64,
    /// Its CID.
    pub batch: cid::Cid,
}

impl BatchCursor {
    /// The cursor after `record`.
    pub fn after(record: &EgressRecord) -> Self {
        BatchCursor {
            received_at: record.received_at,
            batch: record.batch,
        }
    }
}

impl std::fmt::Display for BatchCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.received_at, self.batch)
    }
}

impl std::str::FromStr for BatchCursor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a batch cursor (<received_at>-<batch CID>)");
        let (at, batch) = text.split_once('-').ok_or_else(bad)?;
        Ok(BatchCursor {
            received_at: at.parse().map_err(|_| bad())?,
            batch: batch.parse().map_err(|_| bad())?,
        })
    }
}

/// What consolidation refused, over all conclusions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rejections {
    /// Batches concluded with an error receipt.
    pub failed_batches: u64,
    /// Receipts not counted, by error name.
    pub by_name: std::collections::BTreeMap<String, u64>,
}

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

/// What the dashboard, `/metrics` and `account/egress/get` read.
pub trait DashboardReads {
    /// Counters for metrics and the admin page.
    fn stats(&self) -> Result<StoreStats, StoreError>;

    /// What the backend counts of its own retries (none for redb, whose
    /// writes never contend).
    fn retry_counters(&self) -> Vec<RetryCounter> {
        Vec::new()
    }

    /// Bytes per day for a space, for days in `from_day..to_day` (from
    /// inclusive, to exclusive), in day order; days without egress are absent.
    fn space_usage(
        &self,
        space: &Did,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError>;

    /// Non-billable bytes retrieved from `space` per day, `from_day` to
    /// `to_day` (exclusive), as [`DashboardReads::space_usage`].
    fn non_billable_usage(
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

    /// Bytes per day counted for all nodes together, for days in
    /// `from_day..to_day` (days with none are left out): the sum of every
    /// node's [`DashboardReads::node_usage`], kept as its own total so that reading
    /// it does not visit every node.
    fn egress_by_day(&self, from_day: &str, to_day: &str)
        -> Result<Vec<(String, u64)>, StoreError>;

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

    /// The batches `node` tracked, newest first (by `received_at`, then by
    /// CID), those after the cursor `before` (the previous page's last)
    /// when given, at most `limit`.
    fn node_batches(
        &self,
        node: &Did,
        before: Option<&BatchCursor>,
        limit: usize,
    ) -> Result<Vec<EgressRecord>, StoreError>;

    /// The batches that failed as a whole (an error receipt: see
    /// [`RecordStatus::Done`](super::RecordStatus::Done)'s `failure`),
    /// newest conclusion first, those after the cursor `before` (whose time
    /// is the conclusion's) when given, at most `limit`.
    fn failed_batches(
        &self,
        before: Option<&BatchCursor>,
        limit: usize,
    ) -> Result<Vec<EgressRecord>, StoreError>;

    /// What consolidation refused so far: failed batches, and receipts not
    /// counted by error name (added by each conclusion, with its totals).
    fn rejections(&self) -> Result<Rejections, StoreError>;
}
