//! Reads of the totals: daily totals per node and space, node totals and
//! the counters item.

use ucanto::principal::Did;

use super::items::{get_s, get_u64, node_pk};
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

    /// [`Store::stats`](super::Store::stats): the counters item, plus the
    /// due index's size for `pending`.
    pub(super) fn counters(&self) -> Result<StoreStats, StoreError> {
        let counters = self.get(("stats", "stats"))?.unwrap_or_default();
        let field = |k: &str| match counters.get(k) {
            None => Ok(0),
            Some(_) => get_u64(&counters, k),
        };
        Ok(StoreStats {
            records: field("records")?,
            pending: self.count("due")?,
            concluded: field("concluded")?,
            counted_receipts: field("counted")?,
            nodes: field("nodes")?,
            total_bytes: field("total_bytes")?,
            non_billable_bytes: field("non_billable_bytes")?,
        })
    }
}
