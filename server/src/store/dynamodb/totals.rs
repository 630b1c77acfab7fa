//! Reads of the totals: daily totals per node and space, node totals and
//! the counters item.

use ucanto::principal::Did;

use super::items::{due_partitions, get_s, get_u64, node_pk, stats_pk, LEGACY_STATS, SHARDS};
use super::DynamoStore;
use crate::store::{check_day_range, StoreError, StoreStats};

impl DynamoStore {
    /// Bytes per day of a `<prefix>#<did>` partition, days `from..to`.
    pub(super) fn daily(
        &self,
        pk: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        if !check_day_range(from, to)? {
            return Ok(Vec::new());
        }
        let items = self.query(pk, &format!("day#{from}"), &format!("day#{to}"), None)?;
        let mut days = Vec::new();
        for item in items {
            let sk = get_s(&item, "sk")?;
            let day = sk.strip_prefix("day#").unwrap_or(&sk).to_string();
            if day.as_str() < to {
                days.push((day, get_u64(&item, "bytes")?));
            }
        }
        Ok(days)
    }

    /// [`Store::node_total`](super::Store::node_total).
    pub(super) fn node_total_bytes(&self, node: &Did) -> Result<u64, StoreError> {
        match self.get((&node_pk(node.as_str()), "total"))? {
            None => Ok(0),
            Some(item) => get_u64(&item, "bytes"),
        }
    }

    /// [`Store::stats`](super::Store::stats): the counters, summed over their
    /// shards (and the format-2 item), plus the due index's size for
    /// `pending`.
    pub(super) fn counters(&self) -> Result<StoreStats, StoreError> {
        let keys: Vec<(String, String)> = (0..SHARDS)
            .map(stats_pk)
            .chain([LEGACY_STATS.to_string()])
            .map(|pk| (pk, "stats".to_string()))
            .collect();
        let shards = self.get_many(&keys)?;
        let field = |k: &str| -> Result<u64, StoreError> {
            let mut sum = 0u64;
            for item in shards.values() {
                if item.contains_key(k) {
                    sum = sum
                        .checked_add(get_u64(item, k)?)
                        .ok_or_else(|| StoreError::Corrupt(format!("counter {k} overflows")))?;
                }
            }
            Ok(sum)
        };
        Ok(StoreStats {
            records: field("records")?,
            pending: self.pending()?,
            concluded: field("concluded")?,
            counted_receipts: field("counted")?,
            nodes: field("nodes")?,
            total_bytes: field("total_bytes")?,
            non_billable_bytes: field("non_billable_bytes")?,
        })
    }

    /// [`Store::pending_count`](super::Store::pending_count): the due
    /// entries of every shard (and of the format-2 partition).
    pub(super) fn pending(&self) -> Result<u64, StoreError> {
        let mut pending = 0;
        for pk in due_partitions() {
            pending += self.count(&pk)?;
        }
        Ok(pending)
    }
}
