//! [`DashboardReads`] on redb: totals, daily usage and pages, read in one
//! snapshot each.

use std::ops::Bound;

use ::redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use ucanto::principal::Did;

use super::{
    decode_cid, decode_space, load, OrBackend, RedbStore, BILLED_SPACES, COUNTED, DUE,
    EGRESS_DAILY, FAILED, KNOWN_NODES, META, NODE_BATCHES, NODE_DAILY, NODE_TOTALS,
    NON_BILLABLE_BYTES_KEY, NON_BILLABLE_DAILY, RECEIPTS, RECORDS, REJECTIONS, SPACES, SPACE_DAILY,
    TOTAL_BYTES_KEY,
};
use crate::store::{
    check_day_range, BatchCursor, DashboardReads, EgressRecord, Rejections, SpaceEntry, StoreError,
    StoreStats,
};

impl DashboardReads for RedbStore {
    fn space_usage(
        &self,
        space: &Did,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.daily(SPACE_DAILY, space, from_day, to_day)
    }

    fn non_billable_usage(
        &self,
        space: &Did,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.daily(NON_BILLABLE_DAILY, space, from_day, to_day)
    }

    fn node_usage(
        &self,
        node: &Did,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.daily(NODE_DAILY, node, from_day, to_day)
    }

    fn node_total(&self, node: &Did) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let totals = tx.open_table(NODE_TOTALS).or_backend()?;
        let total = totals.get(node.as_str()).or_backend()?;
        Ok(total.map_or(0, |v| v.value()))
    }

    fn egress_by_day(
        &self,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        if !check_day_range(from_day, to_day)? {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read().or_backend()?;
        let egress = tx.open_table(EGRESS_DAILY).or_backend()?;
        let mut days = Vec::new();
        for entry in egress.range(from_day..to_day).or_backend()? {
            let (day, bytes) = entry.or_backend()?;
            days.push((day.value().to_string(), bytes.value()));
        }
        Ok(days)
    }

    fn spaces_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SpaceEntry>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let spaces = tx.open_table(SPACES).or_backend()?;
        did_listing(&spaces, prefix, after, limit, |space, bytes| {
            decode_space(space, bytes.value())
        })
    }

    fn billed_spaces_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Did>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let billed = tx.open_table(BILLED_SPACES).or_backend()?;
        did_listing(&billed, prefix, after, limit, |space, _| {
            crate::store::parse_did(space)
        })
    }

    fn nodes_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Did, u64)>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let known = tx.open_table(KNOWN_NODES).or_backend()?;
        let totals = tx.open_table(NODE_TOTALS).or_backend()?;
        did_listing(&known, prefix, after, limit, |node, _| {
            let total = totals.get(node).or_backend()?.map_or(0, |v| v.value());
            Ok((crate::store::parse_did(node)?, total))
        })
    }

    fn node_batches(
        &self,
        node: &Did,
        before: Option<&BatchCursor>,
        limit: usize,
    ) -> Result<Vec<EgressRecord>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let index = tx.open_table(NODE_BATCHES).or_backend()?;
        let records = tx.open_table(RECORDS).or_backend()?;
        let node = node.as_str();
        let empty: &[u8] = &[];
        // Keys are (node, received_at, batch bytes): the cursor's own key
        // ends the range, exclusive, so the same second's other batches
        // follow it.
        let (end_at, end_batch) = range_end(before);
        let entries = index
            .range((node, 0, empty)..(node, end_at, end_batch.as_slice()))
            .or_backend()?
            .rev()
            .map(|entry| decode_cid(entry.or_backend()?.0.value().2));
        records_named(&records, entries, limit, "node index")
    }

    fn failed_batches(
        &self,
        before: Option<&BatchCursor>,
        limit: usize,
    ) -> Result<Vec<EgressRecord>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let index = tx.open_table(FAILED).or_backend()?;
        let records = tx.open_table(RECORDS).or_backend()?;
        let empty: &[u8] = &[];
        // Keys are (concluded_at, batch bytes), ended by the cursor's own.
        let (end_at, end_batch) = range_end(before);
        let entries = index
            .range((0, empty)..(end_at, end_batch.as_slice()))
            .or_backend()?
            .rev()
            .map(|entry| decode_cid(entry.or_backend()?.0.value().1));
        records_named(&records, entries, limit, "failed index")
    }

    fn rejections(&self) -> Result<Rejections, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let table = tx.open_table(REJECTIONS).or_backend()?;
        let mut rejections = Rejections::default();
        for entry in table.iter().or_backend()? {
            let (key, n) = entry.or_backend()?;
            match key.value().strip_prefix("name:") {
                Some(name) => {
                    rejections.by_name.insert(name.to_string(), n.value());
                }
                None => rejections.failed_batches = n.value(),
            }
        }
        Ok(rejections)
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let meta = tx.open_table(META).or_backend()?;
        let sum =
            |key: &str| Ok::<_, StoreError>(meta.get(key).or_backend()?.map_or(0, |v| v.value()));
        Ok(StoreStats {
            records: tx.open_table(RECORDS).or_backend()?.len().or_backend()?,
            pending: tx.open_table(DUE).or_backend()?.len().or_backend()?,
            // One receipt per done record, keyed by its consolidate CID.
            concluded: tx.open_table(RECEIPTS).or_backend()?.len().or_backend()?,
            counted_receipts: tx.open_table(COUNTED).or_backend()?.len().or_backend()?,
            nodes: tx
                .open_table(NODE_TOTALS)
                .or_backend()?
                .len()
                .or_backend()?,
            total_bytes: sum(TOTAL_BYTES_KEY)?,
            non_billable_bytes: sum(NON_BILLABLE_BYTES_KEY)?,
        })
    }
}

impl RedbStore {
    /// Days `from..to` of a `(DID, day) → bytes` table.
    fn daily(
        &self,
        table: TableDefinition<(&str, &str), u64>,
        did: &Did,
        from: &str,
        to: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        if !check_day_range(from, to)? {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read().or_backend()?;
        let table = tx.open_table(table).or_backend()?;
        let did = did.as_str();
        let mut days = Vec::new();
        for entry in table.range((did, from)..(did, to)).or_backend()? {
            let (key, bytes) = entry.or_backend()?;
            days.push((key.value().1.to_string(), bytes.value()));
        }
        Ok(days)
    }
}

/// The key range of a page of a table keyed by DID: from `prefix`, or
/// right after `after` when it is past the prefix, so that a later page
/// starts where the last one ended instead of reading it again.
fn did_page<'a>(prefix: &'a str, after: Option<&'a str>) -> (Bound<&'a str>, Bound<&'a str>) {
    match after {
        Some(after) if after >= prefix => (Bound::Excluded(after), Bound::Unbounded),
        _ => (Bound::Included(prefix), Bound::Unbounded),
    }
}

/// A page of a table keyed by DID (see [`did_page`]): at most `limit`
/// entries whose key starts with `prefix`, each made a row by `row`.
/// Where a newest-first walk of a `(time, batch bytes)` index ends,
/// exclusive: at the cursor's own key, or past the last.
fn range_end(before: Option<&BatchCursor>) -> (u64, Vec<u8>) {
    match before {
        Some(c) => (c.received_at, c.batch.to_bytes()),
        None => (u64::MAX, Vec::new()),
    }
}

/// The records of the first `limit` of `batches` (as an index lists them,
/// named `index` when one is missing).
fn records_named(
    records: &impl ReadableTable<&'static [u8], &'static [u8]>,
    batches: impl Iterator<Item = Result<cid::Cid, StoreError>>,
    limit: usize,
    index: &str,
) -> Result<Vec<EgressRecord>, StoreError> {
    batches
        .take(limit)
        .map(|batch| {
            let batch = batch?;
            load(records, &batch)?
                .ok_or_else(|| StoreError::Corrupt(format!("{index} names missing record {batch}")))
        })
        .collect()
}

fn did_listing<V: ::redb::Value + 'static, T>(
    table: &impl ReadableTable<&'static str, V>,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    mut row: impl FnMut(&str, ::redb::AccessGuard<'_, V>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut page = Vec::new();
    for entry in table.range::<&str>(did_page(prefix, after)).or_backend()? {
        if page.len() == limit {
            break;
        }
        let (key, value) = entry.or_backend()?;
        if !key.value().starts_with(prefix) {
            break;
        }
        page.push(row(key.value(), value)?);
    }
    Ok(page)
}
