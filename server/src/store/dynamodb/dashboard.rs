//! [`DashboardReads`] on DynamoDB: daily totals per node and space, node
//! totals, pages of spaces and nodes, a node's batches, and the counters
//! items.

use std::collections::BTreeMap;

use cid::Cid;
use ucanto::principal::Did;

use super::fold::Row;
use super::items::{
    decode_record, did_range, egress_pk, get_s, get_u64, node_batches_pk, node_pk, non_billable_pk,
    parse_cid, parse_day_sk, parse_did, record_pk, rejected_pk, space_days_pk, stats_pk,
    BILLED_SPACES, NODES, SHARDS,
};
use super::DynamoStore;
use crate::store::{
    check_day_range, BatchCursor, DashboardReads, EgressRecord, Rejections, RetryCounter,
    SpaceEntry, StoreError, StoreStats,
};

/// A partition's bytes per day, and the winning usage rows among them.
type DaysAndRows = (Vec<(String, u64)>, Vec<Row>);

impl DynamoStore {
    /// Bytes per day of a `<prefix>#<did>` partition, days `from..to`: each
    /// day's total plus the usage rows of batches done with the rows'
    /// attempt (rows of other attempts never count), read while no fold
    /// lands (see [`super::fold`]); the winning rows met are folded then.
    pub(super) fn daily(
        &self,
        pk: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        if !check_day_range(from, to)? {
            return Ok(Vec::new());
        }
        let (days, unfolded) = self.without_folds(pk, || self.daily_once(pk, from, to))?;
        if !unfolded.is_empty() {
            // Left by a replica that stopped before folding them.
            if let Err(error) = self.fold(&unfolded) {
                tracing::warn!(%error, pk, "cannot fold usage rows yet");
            }
        }
        Ok(days)
    }

    /// One read of [`DynamoStore::daily`]: the days, and the winning rows.
    fn daily_once(&self, pk: &str, from: &str, to: &str) -> Result<DaysAndRows, StoreError> {
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
            return Ok((totals, Vec::new()));
        }
        let batches: Vec<Cid> = rows.iter().map(|(_, batch, _, _)| *batch).collect();
        let winners = self.done_attempts(&batches)?;
        let won: Vec<Row> = rows
            .into_iter()
            .filter(|(_, batch, attempt, _)| winners.get(batch) == Some(attempt))
            .map(|(day, batch, attempt, bytes)| Row {
                pk: pk.to_string(),
                day,
                batch,
                attempt,
                bytes,
            })
            .collect();
        let mut days: BTreeMap<String, u64> = BTreeMap::new();
        let counted = won.iter().map(|row| (row.day.clone(), row.bytes));
        for (day, bytes) in totals.into_iter().chain(counted) {
            let sum = days.entry(day).or_default();
            *sum = sum.checked_add(bytes).ok_or_else(|| {
                StoreError::Corrupt(format!("the daily total of {pk} overflows u64"))
            })?;
        }
        Ok((days.into_iter().collect(), won))
    }
}

impl DashboardReads for DynamoStore {
    fn space_usage(
        &self,
        space: &Did,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.daily(&space_days_pk(space.as_str()), from_day, to_day)
    }

    fn non_billable_usage(
        &self,
        space: &Did,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.daily(&non_billable_pk(space.as_str()), from_day, to_day)
    }

    fn node_usage(
        &self,
        node: &Did,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.daily(&node_pk(node.as_str()), from_day, to_day)
    }

    /// [`DashboardReads::node_total`](crate::store::DashboardReads::node_total).
    fn node_total(&self, node: &Did) -> Result<u64, StoreError> {
        match self.get((&node_pk(node.as_str()), "total"))? {
            None => Ok(0),
            Some(item) => get_u64(&item, "bytes"),
        }
    }

    /// [`DashboardReads::egress_by_day`](crate::store::DashboardReads::egress_by_day): the day
    /// totals of the 16 shards, added up.
    fn egress_by_day(&self, from: &str, to: &str) -> Result<Vec<(String, u64)>, StoreError> {
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

    /// [`DashboardReads::spaces_page`](crate::store::DashboardReads::spaces_page): the list of
    /// spaces, then their entries.
    fn spaces_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SpaceEntry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some((lo, hi)) = did_range(prefix, after) else {
            return Ok(Vec::new());
        };
        let listed = self.query("spaces", &lo, &hi, Some(limit))?;
        self.entries_listed(&listed)
    }

    /// [`DashboardReads::billed_spaces_page`](crate::store::DashboardReads::billed_spaces_page).
    fn billed_spaces_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Did>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some((lo, hi)) = did_range(prefix, after) else {
            return Ok(Vec::new());
        };
        self.query(BILLED_SPACES, &lo, &hi, Some(limit))?
            .iter()
            .map(|item| parse_did(&get_s(item, "sk")?))
            .collect()
    }

    /// [`DashboardReads::nodes_page`](crate::store::DashboardReads::nodes_page): the list of nodes
    /// paid, then their totals.
    fn nodes_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Did, u64)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some((lo, hi)) = did_range(prefix, after) else {
            return Ok(Vec::new());
        };
        let listed = self.query(NODES, &lo, &hi, Some(limit))?;
        let dids: Vec<String> = listed
            .iter()
            .map(|item| get_s(item, "sk"))
            .collect::<Result<_, _>>()?;
        let keys: Vec<(String, String)> = dids
            .iter()
            .map(|did| (node_pk(did), "total".to_string()))
            .collect();
        let totals = self.get_many(&keys)?;
        dids.iter()
            .zip(&keys)
            .map(|(did, key)| {
                let total = match totals.get(key) {
                    Some(item) => get_u64(item, "bytes")?,
                    None => 0,
                };
                Ok((parse_did(did)?, total))
            })
            .collect()
    }

    /// [`DashboardReads::node_batches`](crate::store::DashboardReads::node_batches): the node's
    /// list, newest first, then the records.
    fn node_batches(
        &self,
        node: &Did,
        before: Option<&BatchCursor>,
        limit: usize,
    ) -> Result<Vec<EgressRecord>, StoreError> {
        self.batches_before(&node_batches_pk(node.as_str()), before, limit)
    }

    /// [`DashboardReads::failed_batches`](crate::store::DashboardReads::failed_batches): the
    /// partition `failed`, one entry per failed batch, written with its
    /// conclusion (failures are rare: one partition holds them).
    fn failed_batches(
        &self,
        before: Option<&BatchCursor>,
        limit: usize,
    ) -> Result<Vec<EgressRecord>, StoreError> {
        self.batches_before(super::items::FAILED, before, limit)
    }

    /// [`DashboardReads::rejections`](crate::store::DashboardReads::rejections): the counts of the
    /// 16 shards, added up.
    fn rejections(&self) -> Result<Rejections, StoreError> {
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

    /// [`DashboardReads::stats`](crate::store::DashboardReads::stats): the
    /// counters, summed over their shards (one `BatchGetItem` of 16 items,
    /// whatever the table holds); `pending` is tracked less concluded, both
    /// kept by the transactions that track and conclude.
    fn stats(&self) -> Result<StoreStats, StoreError> {
        let format_key = ("meta".to_string(), "format".to_string());
        let keys: Vec<(String, String)> = (0..SHARDS)
            .map(stats_pk)
            .map(|pk| (pk, "stats".to_string()))
            .chain([format_key.clone()])
            .collect();
        let mut shards = self.get_many(&keys)?;
        // Read with the counters (so `/health` fails on a table another
        // version upgraded): the table's format.
        let found = match shards.remove(&format_key) {
            Some(item) => get_u64(&item, "format")?,
            None => 0,
        };
        if found != super::table::FORMAT {
            return Err(StoreError::FormatChanged {
                found,
                expected: super::table::FORMAT,
            });
        }
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
        let (records, concluded) = (field("records")?, field("concluded")?);
        Ok(StoreStats {
            records,
            pending: records.checked_sub(concluded).ok_or_else(|| {
                StoreError::Corrupt(format!("{concluded} concluded of {records} tracked"))
            })?,
            concluded,
            counted_receipts: field("counted")?,
            nodes: field("nodes")?,
            total_bytes: field("total_bytes")?,
            non_billable_bytes: field("non_billable_bytes")?,
        })
    }

    fn retry_counters(&self) -> Vec<RetryCounter> {
        use std::sync::atomic::Ordering::Relaxed;
        let r = &self.retries;
        vec![
            RetryCounter {
                name: "etracker_store_transactions_cancelled_total",
                help: "DynamoDB transactions cancelled by contention, then re-read and re-decided after a jittered back-off.",
                value: r.cancelled.load(Relaxed),
            },
            RetryCounter {
                name: "etracker_store_requests_retried_total",
                help: "DynamoDB requests the SDK sent again (throttling, transient errors), after its jittered back-off.",
                value: r.attempts.load(Relaxed).saturating_sub(r.requests.load(Relaxed))
                    + r.unprocessed.load(Relaxed)
                    + r.busy.load(Relaxed),
            },
            RetryCounter {
                name: "etracker_dynamodb_write_units_total",
                help: "DynamoDB write capacity units consumed, by its published rules from the bytes sent.",
                value: self.usage.write_units() as u64,
            },
            RetryCounter {
                name: "etracker_dynamodb_read_units_total",
                help: "DynamoDB read capacity units consumed, by its published rules from the bytes read.",
                value: self.usage.read_units() as u64,
            },
            RetryCounter {
                name: "etracker_dynamodb_requests_refused_total",
                help: "Requests real DynamoDB would refuse (item, transaction or batch limits, key condition bounds), refused before they were sent.",
                value: self.usage.refused.load(Relaxed),
            },
        ]
    }
}

impl DynamoStore {
    /// The batches listed in partition `pk` (sort keys `<time, 20
    /// digits>#<batch>`, attribute `batch`), newest first, after the cursor
    /// `before`, at most `limit`.
    fn batches_before(
        &self,
        pk: &str,
        before: Option<&BatchCursor>,
        limit: usize,
    ) -> Result<Vec<EgressRecord>, StoreError> {
        // Keys are `<time, 20 digits>#<batch>`: the cursor's own key
        // bounds the range (inclusive in a key condition, so one more is
        // read and the cursor's own entry dropped), and the same second's
        // other batches follow it.
        let hi = match before {
            Some(c) => format!("{:020}#{}", c.received_at, c.batch),
            None => "~".to_string(),
        };
        let entries = self.query_last(pk, "0", &hi, limit + 1)?;
        let batches: Vec<Cid> = entries
            .iter()
            .filter(|entry| before.is_none() || get_s(entry, "sk").ok().as_deref() != Some(&hi))
            .take(limit)
            .map(|entry| parse_cid(&get_s(entry, "batch")?))
            .collect::<Result<_, _>>()?;
        let keys: Vec<(String, String)> = batches
            .iter()
            .map(|batch| (record_pk(batch), "rec".to_string()))
            .collect();
        let found = self.get_many(&keys)?;
        batches
            .iter()
            .zip(&keys)
            .map(|(batch, key)| {
                let item = found.get(key).ok_or_else(|| {
                    StoreError::Corrupt(format!("batch list names missing record {batch}"))
                })?;
                Ok(decode_record(batch, item)?.record)
            })
            .collect()
    }
}
