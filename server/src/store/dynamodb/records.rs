//! Egress records: `put`, `lease_pending` and `reschedule`.
//!
//! Every record item carries a version `ver`. A record changes by
//! `TransactWriteItems`: `Put` of the record with `ver = :read_ver` (or
//! `attribute_not_exists(pk)` when new), `Delete` of its old due entry and
//! `Put` of the new one, plus whatever else the operation changes. So each
//! method reads the record (consistently), decides exactly as redb does, and
//! commits only if nothing changed meanwhile; a cancelled transaction is
//! re-read and re-decided (bounded retries). Hence:
//!
//! - `put`: record `attribute_not_exists(pk)` + due entry + counters `ADD
//!   records 1`; when a record exists: same node → `Existing`, another →
//!   `NodeConflict`.
//! - `lease_pending`: query due entries `<= now` in order, then per record the
//!   versioned write above; a record changed by another replica is re-read
//!   and skipped unless still due. Each record is leased atomically, the set
//!   is not.
//! - `reschedule`: same, after redb's checks (`NotFound`, `NotPending`,
//!   `NotLeaseOwner`) on the read record.

use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use cid::Cid;

use super::items::{
    decode_record, due_sk, encode_record, get_s, n, parse_cid, record_pk, s, Stored,
};
use super::requests::Tx;
use super::table::build_error;
use super::DynamoStore;
use crate::store::{lease_end, EgressRecord, NewRecord, PutOutcome, Retry, StoreError};

impl DynamoStore {
    /// The record of `batch` as stored (strongly consistent read).
    pub(super) fn load(&self, batch: &Cid) -> Result<Option<Stored>, StoreError> {
        self.get((&record_pk(batch), "rec"))?
            .map(|item| decode_record(batch, &item))
            .transpose()
    }

    /// The items that replace `old` by `new` (version checked, due entry
    /// moved); `token` and `attempt` are written as given.
    pub(super) fn record_writes(
        &self,
        old: Option<&Stored>,
        new: &EgressRecord,
        token: Option<&str>,
        attempt: Option<&str>,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let mut items = Vec::new();
        let mut item = encode_record(new);
        item.insert("ver".into(), n(old.map_or(0, |o| o.ver + 1)));
        if let Some(token) = token {
            item.insert("token".into(), s(token));
        }
        if let Some(attempt) = attempt {
            item.insert("attempt".into(), s(attempt));
        }
        let mut put = Put::builder().table_name(&self.table).set_item(Some(item));
        put = match old {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(old) => put
                .condition_expression("#v = :ver")
                .expression_attribute_names("#v", "ver")
                .expression_attribute_values(":ver", n(old.ver)),
        };
        items.push(
            TransactWriteItem::builder()
                .put(put.build().map_err(build_error)?)
                .build(),
        );
        let old_due = old.and_then(|o| o.record.due_at().map(|d| due_sk(d, &o.record)));
        let new_due = new.due_at().map(|d| due_sk(d, new));
        if old_due != new_due {
            if let Some(sk) = old_due {
                items.push(self.delete(("due", &sk))?);
            }
            if let Some(sk) = new_due {
                let put = Put::builder()
                    .table_name(&self.table)
                    .item("pk", s("due"))
                    .item("sk", s(&sk))
                    .item("batch", s(&new.batch.to_string()))
                    .build()
                    .map_err(build_error)?;
                items.push(TransactWriteItem::builder().put(put).build());
            }
        }
        Ok(items)
    }

    /// [`Store::put`](super::Store::put).
    pub(super) fn put_record(&self, new: NewRecord) -> Result<PutOutcome, StoreError> {
        let record = EgressRecord::from_new(new);
        self.retry(|| {
            if let Some(existing) = self.load(&record.batch)? {
                return PutOutcome::existing(existing.record, &record.node).map(Some);
            }
            let mut items = self.record_writes(None, &record, None, None)?;
            items.push(self.add(("stats", "stats"), &[("records", 1)], None)?);
            match self.transact(items)? {
                Tx::Done => Ok(Some(PutOutcome::Inserted(record.clone()))),
                Tx::Cancelled(_) => Ok(None),
            }
        })
    }

    /// [`Store::lease_pending`](super::Store::lease_pending).
    pub(super) fn lease_due(
        &self,
        now: u64,
        owner: &str,
        lease_secs: u64,
        limit: usize,
    ) -> Result<Vec<EgressRecord>, StoreError> {
        let until = lease_end(now, lease_secs)?;
        let mut leased = Vec::new();
        // Due entries `<= now`: every key starts with 20 digits.
        let hi = format!("{now:020}#~");
        let mut lo = "0".to_string();
        while leased.len() < limit {
            let entries = self.query("due", &lo, &hi, Some(limit - leased.len()))?;
            let Some(last) = entries.last() else { break };
            // Continue after the last entry seen: keys have one length, so
            // any later key sorts after this one with a byte appended.
            lo = format!("{}\u{1}", get_s(last, "sk")?);
            for entry in &entries {
                let batch = parse_cid(&get_s(entry, "batch")?)?;
                let got = self.retry(|| {
                    let Some(old) = self.load(&batch)? else {
                        return Ok(Some(None));
                    };
                    if old.record.due_at().is_none_or(|d| d > now) {
                        // Taken (or concluded) by another replica meanwhile.
                        return Ok(Some(None));
                    }
                    let record = old.record.leased(owner, until);
                    let items =
                        self.record_writes(Some(&old), &record, old.token.as_deref(), None)?;
                    match self.transact(items)? {
                        Tx::Done => Ok(Some(Some(record))),
                        Tx::Cancelled(_) => Ok(None),
                    }
                })?;
                leased.extend(got);
                if leased.len() == limit {
                    break;
                }
            }
        }
        Ok(leased)
    }

    /// [`Store::reschedule`](super::Store::reschedule).
    pub(super) fn reschedule_record(
        &self,
        batch: &Cid,
        owner: &str,
        now: u64,
        retry: &Retry,
    ) -> Result<EgressRecord, StoreError> {
        self.retry(|| {
            let old = self.load(batch)?.ok_or(StoreError::NotFound)?;
            let record = old.record.rescheduled(owner, now, retry)?;
            let items = self.record_writes(Some(&old), &record, old.token.as_deref(), None)?;
            match self.transact(items)? {
                Tx::Done => Ok(Some(record)),
                Tx::Cancelled(_) => Ok(None),
            }
        })
    }
}
