//! The consistency check of a whole redb store.

use std::collections::{BTreeMap, HashSet};

use ::redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::{
    claims, decode_cid, decode_record, pending, OrBackend, RedbStore, COUNTED, DUE, EGRESS_DAILY,
    META, NODE_DAILY, NODE_TOTALS, RECEIPTS, RECORDS, SPACE_DAILY, TOTAL_BYTES_KEY,
};
use crate::store::audit::{Audit, Auditor};
use crate::store::StoreError;

impl RedbStore {
    /// Reads the whole database in one snapshot and checks that its tables
    /// agree with each other. For tests and the admin page; cost is linear
    /// in the size of the store.
    pub fn audit(&self) -> Result<Audit, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let records = tx.open_table(RECORDS).or_backend()?;
        let due = tx.open_table(DUE).or_backend()?;
        let receipts = tx.open_table(RECEIPTS).or_backend()?;
        let counted = tx.open_table(COUNTED).or_backend()?;
        let node_totals = tx.open_table(NODE_TOTALS).or_backend()?;
        let node_daily = tx.open_table(NODE_DAILY).or_backend()?;
        let space_daily = tx.open_table(SPACE_DAILY).or_backend()?;

        let mut auditor = Auditor::default();
        let mut done_batches = HashSet::new();
        let mut node_pending: BTreeMap<String, u64> = BTreeMap::new();
        for entry in records.iter().or_backend()? {
            let (key, value) = entry.or_backend()?;
            let record = decode_record(key.value(), value.value())?;
            if record.is_pending() {
                *node_pending
                    .entry(record.node.as_str().to_string())
                    .or_default() += 1;
            }
            let has_due_entry = || {
                let due_at = record.due_at().unwrap_or_default();
                let key = (due_at, record.received_at, key.value());
                Ok(due.get(key).or_backend()?.is_some())
            };
            let has_receipt = || {
                let cid = record.consolidate_invocation.to_bytes();
                Ok(receipts.get(cid.as_slice()).or_backend()?.is_some())
            };
            auditor.record(&record, has_due_entry, has_receipt)?;
            if !record.is_pending() {
                done_batches.insert(key.value().to_vec());
            }
        }
        auditor.check_index_sizes(due.len().or_backend()?, receipts.len().or_backend()?);
        auditor.check_node_pending(&node_pending, &pending::all(&tx)?);
        for entry in counted.iter().or_backend()? {
            let (receipt, batch) = entry.or_backend()?;
            auditor.audit.counted_receipts += 1;
            if !done_batches.contains(batch.value()) {
                let receipt = decode_cid(receipt.value())?;
                auditor.problem(format!("receipt {receipt} counted by a batch not done"));
            }
        }
        let dropped = tx
            .open_table(META)
            .or_backend()?
            .get(claims::DROPPED_KEY)
            .or_backend()?
            .map_or(0, |v| v.value());
        auditor.audit.counted_receipts += dropped;
        auditor.check_counted();
        let audit = &mut auditor.audit;
        let mut node_totals_seen = BTreeMap::new();
        for entry in node_totals.iter().or_backend()? {
            let (node, bytes) = entry.or_backend()?;
            audit.node_bytes += u128::from(bytes.value());
            node_totals_seen.insert(node.value().to_string(), u128::from(bytes.value()));
        }
        let mut node_daily_sums: BTreeMap<String, u128> = BTreeMap::new();
        let mut node_days: BTreeMap<String, u128> = BTreeMap::new();
        for entry in node_daily.iter().or_backend()? {
            let (key, bytes) = entry.or_backend()?;
            let (node, day) = key.value();
            audit.node_daily_bytes += u128::from(bytes.value());
            *node_daily_sums.entry(node.to_string()).or_default() += u128::from(bytes.value());
            *node_days.entry(day.to_string()).or_default() += u128::from(bytes.value());
        }
        let mut egress_days = BTreeMap::new();
        for entry in tx
            .open_table(EGRESS_DAILY)
            .or_backend()?
            .iter()
            .or_backend()?
        {
            let (day, bytes) = entry.or_backend()?;
            egress_days.insert(day.value().to_string(), u128::from(bytes.value()));
        }
        for entry in space_daily.iter().or_backend()? {
            let (_, bytes) = entry.or_backend()?;
            audit.space_bytes += u128::from(bytes.value());
        }
        auditor.check_totals(node_totals_seen, node_daily_sums);
        auditor.check_egress_days(node_days, egress_days);
        let meta = tx.open_table(META).or_backend()?;
        let kept = meta.get(TOTAL_BYTES_KEY).or_backend()?.map(|v| v.value());
        let summed = u64::try_from(auditor.audit.node_bytes).unwrap_or(u64::MAX);
        if kept != Some(summed) {
            auditor.problem(format!(
                "total bytes kept as {kept:?}, the nodes' totals add up to {summed}"
            ));
        }
        Ok(auditor.audit)
    }
}
