//! Pending records per node, for the cap on a node's queue
//! ([`Records::put_within`](crate::store::Records::put_within)).
//!
//! Table `node_pending`: node DID → `u64`, the node's pending records; a
//! node with none has no entry. `put` adds one for each record it inserts
//! and `conclude` takes one off for the record it makes done, each in its
//! own write transaction, so the count is exact whenever a transaction
//! ends; the audit checks it against the records.

use std::collections::BTreeMap;

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::OrBackend;
use crate::store::StoreError;

/// Node DID → its pending records.
pub(super) const NODE_PENDING: TableDefinition<&str, u64> = TableDefinition::new("node_pending");

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
