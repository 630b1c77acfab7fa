//! The consistency audit of a whole table.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::items::{
    decode_record, due_sk, get_s, get_u64, is_due_pk, parse_cid, parse_day_sk, Item,
};
use super::table::backend;
use super::DynamoStore;
use crate::store::audit::{Audit, Auditor};
use crate::store::{DashboardReads, StoreError, StoreStats};

impl DynamoStore {
    /// Scans the whole table and checks that its items agree with each other,
    /// like [`RedbStore::audit`](crate::store::redb::RedbStore::audit). For tests and
    /// the admin page; not a snapshot, so run it when the store is quiet.
    pub fn audit(&self) -> Result<Audit, StoreError> {
        let items = self.scan_all()?;
        let mut auditor = Auditor::default();
        let audit = &mut auditor.audit;
        let mut records = HashMap::new();
        let mut due = HashSet::new();
        let mut receipts = HashSet::new();
        let mut claims = Vec::new();
        let mut node_totals: BTreeMap<String, u128> = BTreeMap::new();
        let mut node_daily: BTreeMap<String, u128> = BTreeMap::new();
        let mut non_billable_bytes: u128 = 0;
        let mut rows = Vec::new();
        let mut pending_kept: BTreeMap<String, u64> = BTreeMap::new();
        // Day → bytes, of the node daily totals and of all nodes' egress.
        let mut node_days: BTreeMap<String, u128> = BTreeMap::new();
        let mut egress_days: BTreeMap<String, u128> = BTreeMap::new();
        for item in &items {
            let pk = get_s(item, "pk")?;
            let sk = get_s(item, "sk")?;
            if sk == super::fold::FOLD_SK {
                continue;
            }
            if let Some(batch) = pk.strip_prefix("rec#") {
                let batch = parse_cid(batch)?;
                records.insert(batch, decode_record(&batch, item)?);
            } else if is_due_pk(&pk) {
                due.insert((pk, sk));
            } else if let Some(cid) = pk.strip_prefix("receipt#") {
                receipts.insert(parse_cid(cid)?);
            } else if let Some(node_hour) = pk.strip_prefix("claims#") {
                claims.push((
                    node_hour.to_string(),
                    parse_cid(&get_s(item, "batch")?)?,
                    get_s(item, "attempt")?,
                    super::claims::page_digests(item)?,
                ));
            } else if sk.starts_with("day#") && parse_day_sk(&sk)?.1.is_some() {
                // A usage row: counted below, once the records are known.
                rows.push((
                    pk,
                    sk.clone(),
                    get_s(item, "batch")?,
                    get_s(item, "attempt")?,
                    get_u64(item, "bytes")?,
                ));
            } else if let Some(node) = pk.strip_prefix("node#") {
                let bytes = u128::from(get_u64(item, "bytes")?);
                if sk == "total" {
                    audit.node_bytes += bytes;
                    node_totals.insert(node.to_string(), bytes);
                } else {
                    audit.node_daily_bytes += bytes;
                    *node_daily.entry(node.to_string()).or_default() += bytes;
                    *node_days
                        .entry(parse_day_sk(&sk)?.0.to_string())
                        .or_default() += bytes;
                }
            } else if pk.starts_with("egress#") {
                let day = parse_day_sk(&sk)?.0.to_string();
                *egress_days.entry(day).or_default() += u128::from(get_u64(item, "bytes")?);
            } else if pk.starts_with("space#") {
                audit.space_bytes += u128::from(get_u64(item, "bytes")?);
            } else if pk.starts_with("nonbillable#") {
                non_billable_bytes += u128::from(get_u64(item, "bytes")?);
            } else if let Some(node) = super::pending::count_of(&pk, &sk) {
                pending_kept.insert(node.to_string(), get_u64(item, "count")?);
            }
        }
        // Only records tracked by a version that counts are in the counts.
        let mut pending_expected: BTreeMap<String, u64> = BTreeMap::new();
        for stored in records.values() {
            if stored.counted_pending && stored.record.is_pending() {
                *pending_expected
                    .entry(stored.record.node.as_str().to_string())
                    .or_default() += 1;
            }
        }
        pending_kept.retain(|_, count| *count > 0);
        auditor.check_node_pending(&pending_expected, &pending_kept);
        for stored in records.values() {
            let record = &stored.record;
            let has_due_entry = || {
                let sk = due_sk(record.due_at().unwrap_or_default(), record);
                Ok(due.contains(&(stored.due_partition.clone(), sk)))
            };
            let has_receipt = || Ok(receipts.contains(&record.consolidate_invocation));
            auditor.record(record, has_due_entry, has_receipt)?;
        }
        auditor.check_index_sizes(due.len() as u64, receipts.len() as u64);
        // Pages of pending batches or of attempts that lost never count;
        // a retrieval in two pages that count is counted twice.
        let mut counted_once: HashSet<(String, [u8; 16])> = HashSet::new();
        for (node_hour, batch, attempt, digests) in &claims {
            let counts = records
                .get(batch)
                .is_some_and(|r| !r.record.is_pending() && r.attempt.as_ref() == Some(attempt));
            if !counts {
                continue;
            }
            for digest in super::claims::page_keys(digests) {
                if !counted_once.insert((node_hour.clone(), digest)) {
                    auditor.problem(format!(
                        "a retrieval of {node_hour} is counted twice (batch {batch})"
                    ));
                }
                auditor.audit.counted_receipts += 1;
            }
        }
        auditor.check_counted();
        // Usage rows count as the claims do.
        for (pk, sk, batch, attempt, bytes) in rows {
            let batch = parse_cid(&batch)?;
            let counts = records
                .get(&batch)
                .is_some_and(|r| !r.record.is_pending() && r.attempt.as_ref() == Some(&attempt));
            if !counts {
                continue;
            }
            let bytes = u128::from(bytes);
            let audit = &mut auditor.audit;
            let day = parse_day_sk(&sk)?.0.to_string();
            if let Some(node) = pk.strip_prefix("node#") {
                audit.node_daily_bytes += bytes;
                *node_daily.entry(node.to_string()).or_default() += bytes;
                *node_days.entry(day).or_default() += bytes;
            } else if pk.starts_with("egress#") {
                *egress_days.entry(day).or_default() += bytes;
            } else if pk.starts_with("space#") {
                audit.space_bytes += bytes;
            } else if pk.starts_with("nonbillable#") {
                non_billable_bytes += bytes;
            } else {
                auditor.problem(format!("usage row in partition {pk}"));
            }
        }
        auditor.check_totals(node_totals, node_daily);
        auditor.check_egress_days(node_days, egress_days);
        let stats = self.stats()?;
        let audit = &auditor.audit;
        let expected = StoreStats {
            records: audit.records,
            pending: audit.pending,
            concluded: audit.concluded,
            counted_receipts: audit.counted_receipts,
            nodes: auditor.nodes(),
            total_bytes: u64::try_from(audit.node_bytes).unwrap_or(u64::MAX),
            non_billable_bytes: u64::try_from(non_billable_bytes).unwrap_or(u64::MAX),
        };
        if stats != expected {
            auditor.problem(format!(
                "counters {stats:?} differ from the items {expected:?}"
            ));
        }
        Ok(auditor.audit)
    }
}

impl DynamoStore {
    /// The bytes the table stores, by DynamoDB's rules (each attribute's
    /// name and value), summed over a scan: what storage is billed on,
    /// before the 100 bytes of overhead per item DynamoDB adds. For the
    /// benchmarks.
    /// Returns the bytes and the number of items.
    pub fn stored_bytes(&self) -> Result<(u64, u64), StoreError> {
        let items = self.scan_all()?;
        let bytes = items
            .iter()
            .flat_map(|item| item.iter())
            .map(|(name, value)| name.len() as u64 + value_size(value))
            .sum();
        Ok((bytes, items.len() as u64))
    }

    /// Every item of the table, read strongly consistent.
    fn scan_all(&self) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .block_on(
                    self.client
                        .scan()
                        .table_name(&self.table)
                        .consistent_read(true)
                        .set_exclusive_start_key(start.take())
                        .send(),
                )
                .map_err(backend)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(items),
            }
        }
    }
}

/// A value's size as DynamoDB counts it (numbers: about a byte per two
/// digits, plus one).
fn value_size(value: &aws_sdk_dynamodb::types::AttributeValue) -> u64 {
    use aws_sdk_dynamodb::types::AttributeValue as V;
    match value {
        V::S(s) => s.len() as u64,
        V::N(n) => (n.trim_start_matches('-').len() as u64).div_ceil(2) + 1,
        V::B(b) => b.as_ref().len() as u64,
        V::Bool(_) | V::Null(_) => 1,
        V::Ss(list) => list.iter().map(|s| s.len() as u64).sum(),
        V::L(list) => 3 + list.iter().map(|v| 1 + value_size(v)).sum::<u64>(),
        V::M(map) => {
            3 + map
                .iter()
                .map(|(k, v)| 1 + k.len() as u64 + value_size(v))
                .sum::<u64>()
        }
        _ => 0,
    }
}
