//! The consistency audit of a store: the report, and the checks that every
//! backend applies to what it reads (each backend reads its own layout).

use std::collections::BTreeMap;

use super::{EgressRecord, RecordStatus, StoreError};

/// A consistency report of a store (see [`RedbStore::audit`]).
///
/// [`RedbStore::audit`]: super::redb::RedbStore::audit
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Records stored.
    pub records: u64,
    /// Pending records.
    pub pending: u64,
    /// Done records.
    pub concluded: u64,
    /// Σ `total_bytes` of the done records.
    pub concluded_bytes: u128,
    /// Σ `counted_receipts` of the done records.
    pub concluded_receipts: u128,
    /// Entries in `counted`.
    pub counted_receipts: u64,
    /// Σ node totals.
    pub node_bytes: u128,
    /// Σ node daily totals.
    pub node_daily_bytes: u128,
    /// Σ space daily totals.
    pub space_bytes: u128,
    /// Every disagreement found; empty when the store is consistent.
    pub problems: Vec<String>,
}

impl Audit {
    /// Whether no problem was found.
    pub fn is_consistent(&self) -> bool {
        self.problems.is_empty()
    }
}

/// An [`Audit`] being filled by a backend, in this order: every record
/// ([`Auditor::record`]), the index sizes, the counted receipts, the totals.
#[derive(Debug, Default)]
pub(crate) struct Auditor {
    pub(crate) audit: Audit,
    /// Node DID → Σ `total_bytes` of its done records.
    expected_node_totals: BTreeMap<String, u128>,
}

impl Auditor {
    /// Checks every node's pending count kept (`kept`) against its pending
    /// records (`expected`, nodes with none left out).
    pub(crate) fn check_node_pending(
        &mut self,
        expected: &BTreeMap<String, u64>,
        kept: &BTreeMap<String, u64>,
    ) {
        let nodes: std::collections::BTreeSet<&String> =
            expected.keys().chain(kept.keys()).collect();
        for node in nodes {
            let (want, have) = (
                expected.get(node).copied().unwrap_or(0),
                kept.get(node).copied().unwrap_or(0),
            );
            if want != have {
                self.problem(format!(
                    "node {node} has {want} pending records, its count says {have}"
                ));
            }
        }
    }

    /// Counts `record` and checks that its index entry exists: the due entry
    /// of a pending record (`has_due_entry`), the receipt of a done one
    /// (`has_receipt`).
    pub(crate) fn record(
        &mut self,
        record: &EgressRecord,
        has_due_entry: impl FnOnce() -> Result<bool, StoreError>,
        has_receipt: impl FnOnce() -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let audit = &mut self.audit;
        audit.records += 1;
        match &record.status {
            RecordStatus::Pending => {
                audit.pending += 1;
                if !has_due_entry()? {
                    audit
                        .problems
                        .push(format!("pending {} has no due entry", record.batch));
                }
            }
            RecordStatus::Done {
                total_bytes,
                counted_receipts,
                ..
            } => {
                audit.concluded += 1;
                audit.concluded_bytes += u128::from(*total_bytes);
                audit.concluded_receipts += u128::from(*counted_receipts);
                *self
                    .expected_node_totals
                    .entry(record.node.as_str().to_string())
                    .or_default() += u128::from(*total_bytes);
                if !has_receipt()? {
                    audit
                        .problems
                        .push(format!("done {} has no receipt", record.batch));
                }
            }
        }
        Ok(())
    }

    /// One due entry per pending record, one receipt per done record.
    pub(crate) fn check_index_sizes(&mut self, due_entries: u64, receipts: u64) {
        if due_entries != self.audit.pending {
            self.problem("due index and pending records differ in number");
        }
        if receipts != self.audit.concluded {
            self.problem("receipts and done records differ in number");
        }
    }

    /// The counted receipts are those the done records say they counted.
    pub(crate) fn check_counted(&mut self) {
        if u128::from(self.audit.counted_receipts) != self.audit.concluded_receipts {
            self.problem("counted receipts and done records' counts differ");
        }
    }

    /// Node totals (node DID → bytes) are the sums of the done records and
    /// of the node daily totals (node DID → Σ bytes), and the space daily
    /// totals add up to the node totals.
    pub(crate) fn check_totals(
        &mut self,
        mut node_totals: BTreeMap<String, u128>,
        mut node_daily: BTreeMap<String, u128>,
    ) {
        if node_totals != self.expected_node_totals {
            self.problem("node totals differ from the done records' totals");
        }
        node_daily.retain(|_, b| *b != 0);
        node_totals.retain(|_, b| *b != 0);
        if node_daily != node_totals {
            self.problem("node daily totals differ from node totals");
        }
        if self.audit.space_bytes != self.audit.node_bytes {
            self.problem("space totals differ from node totals");
        }
    }

    /// The all-nodes egress per day (day → bytes) is the sum of the node
    /// daily totals per day.
    pub(crate) fn check_egress_days(
        &mut self,
        mut node_days: BTreeMap<String, u128>,
        mut egress_days: BTreeMap<String, u128>,
    ) {
        node_days.retain(|_, b| *b != 0);
        egress_days.retain(|_, b| *b != 0);
        if node_days != egress_days {
            self.problem("egress per day differs from the node daily totals");
        }
    }

    /// Nodes with a done record (DynamoDB keeps their number in a counter).
    #[cfg(feature = "dynamodb")]
    pub(crate) fn nodes(&self) -> u64 {
        self.expected_node_totals.len() as u64
    }

    pub(crate) fn problem(&mut self, problem: impl Into<String>) {
        self.audit.problems.push(problem.into());
    }
}
