//! The consistency audit of a whole table.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::items::{decode_record, due_sk, get_s, get_u64, parse_cid, Item};
use super::table::backend;
use super::DynamoStore;
use crate::store::redb::Audit;
use crate::store::{RecordStatus, StoreError, StoreStats};

impl DynamoStore {
    /// Scans the whole table and checks that its items agree with each other,
    /// like [`RedbStore::audit`](crate::store::redb::RedbStore::audit). For tests and
    /// the admin page; not a snapshot, so run it when the store is quiet.
    pub fn audit(&self) -> Result<Audit, StoreError> {
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
                _ => break,
            }
        }
        let mut audit = Audit::default();
        let mut problems = Vec::new();
        let mut records = HashMap::new();
        let mut due = HashSet::new();
        let mut receipts = HashSet::new();
        let mut claims = Vec::new();
        let mut node_totals: BTreeMap<String, u128> = BTreeMap::new();
        let mut node_daily: BTreeMap<String, u128> = BTreeMap::new();
        let mut non_billable_bytes: u128 = 0;
        for item in &items {
            let pk = get_s(item, "pk")?;
            let sk = get_s(item, "sk")?;
            if let Some(batch) = pk.strip_prefix("rec#") {
                let batch = parse_cid(batch)?;
                records.insert(batch, decode_record(&batch, item)?);
            } else if pk == "due" {
                due.insert(sk);
            } else if let Some(cid) = pk.strip_prefix("receipt#") {
                receipts.insert(parse_cid(cid)?);
            } else if pk.starts_with("counted#") {
                claims.push((parse_cid(&get_s(item, "batch")?)?, get_s(item, "attempt")?));
            } else if let Some(node) = pk.strip_prefix("node#") {
                let bytes = u128::from(get_u64(item, "bytes")?);
                if sk == "total" {
                    audit.node_bytes += bytes;
                    node_totals.insert(node.to_string(), bytes);
                } else {
                    audit.node_daily_bytes += bytes;
                    *node_daily.entry(node.to_string()).or_default() += bytes;
                }
            } else if pk.starts_with("space#") {
                audit.space_bytes += u128::from(get_u64(item, "bytes")?);
            } else if pk.starts_with("nonbillable#") {
                non_billable_bytes += u128::from(get_u64(item, "bytes")?);
            }
        }
        let mut expected_node_totals: BTreeMap<String, u128> = BTreeMap::new();
        for stored in records.values() {
            let record = &stored.record;
            audit.records += 1;
            match &record.status {
                RecordStatus::Pending => {
                    audit.pending += 1;
                    let sk = due_sk(record.due_at().unwrap_or_default(), record);
                    if !due.contains(&sk) {
                        problems.push(format!("pending {} has no due entry", record.batch));
                    }
                }
                RecordStatus::Done {
                    total_bytes,
                    counted_receipts,
                    ..
                } => {
                    audit.add_done(
                        &record.node,
                        *total_bytes,
                        *counted_receipts,
                        &mut expected_node_totals,
                    );
                    if !receipts.contains(&record.consolidate_invocation) {
                        problems.push(format!("done {} has no receipt", record.batch));
                    }
                }
            }
        }
        if due.len() as u64 != audit.pending {
            problems.push("due index and pending records differ in number".into());
        }
        if receipts.len() as u64 != audit.concluded {
            problems.push("receipts and done records differ in number".into());
        }
        // Claims of pending batches or of attempts that lost never count.
        for (batch, attempt) in &claims {
            let counts = records
                .get(batch)
                .is_some_and(|r| !r.record.is_pending() && r.attempt.as_ref() == Some(attempt));
            if counts {
                audit.counted_receipts += 1;
            }
        }
        if u128::from(audit.counted_receipts) != audit.concluded_receipts {
            problems.push("counted receipts and done records' counts differ".into());
        }
        if node_totals != expected_node_totals {
            problems.push("node totals differ from the done records' totals".into());
        }
        node_daily.retain(|_, b| *b != 0);
        node_totals.retain(|_, b| *b != 0);
        if node_daily != node_totals {
            problems.push("node daily totals differ from node totals".into());
        }
        if audit.space_bytes != audit.node_bytes {
            problems.push("space totals differ from node totals".into());
        }
        let stats = self.counters()?;
        let expected = StoreStats {
            records: audit.records,
            pending: audit.pending,
            concluded: audit.concluded,
            counted_receipts: audit.counted_receipts,
            nodes: expected_node_totals.len() as u64,
            total_bytes: u64::try_from(audit.node_bytes).unwrap_or(u64::MAX),
            non_billable_bytes: u64::try_from(non_billable_bytes).unwrap_or(u64::MAX),
        };
        if stats != expected {
            problems.push(format!(
                "counters {stats:?} differ from the items {expected:?}"
            ));
        }
        audit.problems = problems;
        Ok(audit)
    }
}
