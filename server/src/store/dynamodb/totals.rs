//! Reads of the totals: daily totals per node and space, node totals and
//! the counters item.

use std::collections::BTreeMap;

use cid::Cid;
use ucanto::principal::Did;

use super::items::{
    due_partitions, egress_pk, get_s, get_u64, node_pk, parse_day_sk, rejected_pk, stats_pk,
    LEGACY_STATS, SHARDS,
};
use super::DynamoStore;
use crate::store::{check_day_range, Rejections, StoreError, StoreStats};

impl DynamoStore {
    /// Bytes per day of a `<prefix>#<did>` partition, days `from..to`: each
    /// day's total plus the usage rows of batches done with the rows'
    /// attempt (rows of other attempts never count).
    pub(super) fn daily(
        &self,
        pk: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        if !check_day_range(from, to)? {
            return Ok(Vec::new());
        }
        // `day#<to>` sorts before `day#<to>#…` rows: they are out of range.
        let items = self.query(pk, &format!("day#{from}"), &format!("day#{to}"), None)?;
        let mut totals = Vec::new();
        let mut rows = Vec::new();
        for item in &items {
            let sk = get_s(item, "sk")?;
            let (day, batch) = parse_day_sk(&sk)?;
            if day >= to {
                continue;
            }
            let bytes = get_u64(item, "bytes")?;
            match batch {
                None => totals.push((day.to_string(), bytes)),
                Some(batch) => rows.push((day.to_string(), batch, get_s(item, "attempt")?, bytes)),
            }
        }
        if rows.is_empty() {
            return Ok(totals);
        }
        let batches: Vec<Cid> = rows.iter().map(|(_, batch, _, _)| *batch).collect();
        let winners = self.done_attempts(&batches)?;
        let mut days: BTreeMap<String, u64> = BTreeMap::new();
        let counted = rows
            .into_iter()
            .filter(|(_, batch, attempt, _)| winners.get(batch) == Some(attempt))
            .map(|(day, _, _, bytes)| (day, bytes));
        for (day, bytes) in totals.into_iter().chain(counted) {
            let sum = days.entry(day).or_default();
            *sum = sum.checked_add(bytes).ok_or_else(|| {
                StoreError::Corrupt(format!("the daily total of {pk} overflows u64"))
            })?;
        }
        Ok(days.into_iter().collect())
    }

    /// [`Store::egress_by_day`](super::Store::egress_by_day): the day
    /// totals of the 16 shards, added up.
    pub(super) fn egress_days(
        &self,
        from: &str,
        to: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut days: BTreeMap<String, u64> = BTreeMap::new();
        for shard in 0..SHARDS {
            for (day, bytes) in self.daily(&egress_pk(shard), from, to)? {
                let sum = days.entry(day).or_default();
                *sum = sum
                    .checked_add(bytes)
                    .ok_or_else(|| StoreError::Corrupt("egress of a day overflows u64".into()))?;
            }
        }
        Ok(days.into_iter().collect())
    }

    /// [`Store::rejections`](super::Store::rejections): the counts of the
    /// 16 shards, added up.
    pub(super) fn rejection_counts(&self) -> Result<Rejections, StoreError> {
        let keys: Vec<(String, String)> = (0..SHARDS)
            .map(|shard| (rejected_pk(shard), "rejected".to_string()))
            .collect();
        let mut rejections = Rejections::default();
        for item in self.get_many(&keys)?.values() {
            for name in item.keys() {
                let n = get_u64(item, name);
                if name == "failed" {
                    rejections.failed_batches = rejections.failed_batches.saturating_add(n?);
                } else if let Some(error) = name.strip_prefix("n_") {
                    let sum = rejections.by_name.entry(error.to_string()).or_default();
                    *sum = sum.saturating_add(n?);
                }
            }
        }
        Ok(rejections)
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
