//! Pending records per node, for the cap on a node's queue
//! ([`Records::put_within`](crate::store::Records::put_within)).
//!
//! Table `node_pending`: node DID → `u64`, the node's pending records; a
//! node with none has no entry. `put` adds one for each record it inserts
//! and `conclude` takes one off for the record it makes done, each in its
//! own write transaction, so the count is exact whenever a transaction
//! ends. When the counts do not add up to the pending records at open (a
//! store made before the table), they are counted again from the records.

use std::collections::BTreeMap;

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::{decode_record, OrBackend, DUE, RECORDS};
use crate::store::StoreError;

/// Node DID → its pending records.
pub(super) const NODE_PENDING: TableDefinition<&str, u64> = TableDefinition::new("node_pending");

/// Creates the table and counts the pending records of every node again
/// when its counts do not add up to the pending records (the `due` index
/// has one entry each): a store made before the table, or written since by
/// a version that did not keep it.
pub(super) fn init(tx: &WriteTransaction) -> Result<(), StoreError> {
    let mut table = tx.open_table(NODE_PENDING).or_backend()?;
    let pending = tx.open_table(DUE).or_backend()?.len().or_backend()?;
    let mut kept: u64 = 0;
    for entry in table.iter().or_backend()? {
        kept = kept.saturating_add(entry.or_backend()?.1.value());
    }
    if kept == pending {
        return Ok(());
    }
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let records = tx.open_table(RECORDS).or_backend()?;
    for entry in records.iter().or_backend()? {
        let (key, value) = entry.or_backend()?;
        let record = decode_record(key.value(), value.value())?;
        if record.is_pending() {
            *counts.entry(record.node.as_str().to_string()).or_default() += 1;
        }
    }
    table.retain(|_, _| false).or_backend()?;
    for (node, count) in counts {
        table.insert(node.as_str(), count).or_backend()?;
    }
    Ok(())
}

/// The pending records of `node` in `table`.
pub(super) fn count(
    table: &impl ReadableTable<&'static str, u64>,
    node: &str,
) -> Result<u64, StoreError> {
    Ok(table.get(node).or_backend()?.map_or(0, |v| v.value()))
}

/// Adds one to `node`'s count, for a record `put` inserts.
pub(super) fn added(
    table: &mut redb::Table<'_, &'static str, u64>,
    node: &str,
) -> Result<(), StoreError> {
    let now = count(table, node)?;
    table.insert(node, now.saturating_add(1)).or_backend()?;
    Ok(())
}

/// Takes one off `node`'s count, for a record `conclude` makes done.
pub(super) fn concluded(tx: &WriteTransaction, node: &str) -> Result<(), StoreError> {
    let mut table = tx.open_table(NODE_PENDING).or_backend()?;
    // At 0 (not possible unless a version that did not count wrote the
    // store since it was opened) it stays 0; the audit reports it.
    match count(&table, node)? {
        0 | 1 => {
            table.remove(node).or_backend()?;
        }
        n => {
            table.insert(node, n - 1).or_backend()?;
        }
    }
    Ok(())
}

/// Every node's count, for the audit.
pub(super) fn all(tx: &redb::ReadTransaction) -> Result<BTreeMap<String, u64>, StoreError> {
    let table = tx.open_table(NODE_PENDING).or_backend()?;
    let mut counts = BTreeMap::new();
    for entry in table.iter().or_backend()? {
        let (node, count) = entry.or_backend()?;
        counts.insert(node.value().to_string(), count.value());
    }
    Ok(counts)
}
