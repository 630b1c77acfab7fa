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
//!   records 1` (the batch's shard of each) + the node's pending count, set
//!   to the value read plus one if still that value (`pending.rs`); when a
//!   record exists: same node → `Existing`, another → `NodeConflict`; when
//!   the count read is at the cap → `TooManyPending`, no write.
//! - `lease_pending`: query due entries `<= now` of every shard (and the
//!   format-2 partition), a page at a time, and take them oldest first
//!   across shards, as from one index; per record the versioned write
//!   above. A record changed by another replica is re-read and skipped
//!   unless still due, and an entry its record no longer names is deleted.
//!   Each record is leased atomically, the set is not.
//! - `reschedule`: same, after redb's checks (`NotFound`, `NotPending`,
//!   `NotLeaseOwner`) on the read record.

use std::collections::VecDeque;

use aws_sdk_dynamodb::types::{ConditionCheck, Put, TransactWriteItem};
use cid::Cid;

use ucanto::principal::Did;

use super::items::{
    decode_record, due_partitions, due_pk, due_sk, encode_record, get_s, n, node_batch_sk,
    node_batches_pk, parse_cid, record_pk, s, shard_of, stats_pk, Stored,
};
use super::requests::{Add, Tx};
use super::table::build_error;
use super::DynamoStore;
use crate::store::{lease_end, EgressRecord, NewRecord, PutOutcome, Records, Retry, StoreError};

/// A lease's place in one due index partition: entries read and not yet
/// tried, and where to read on.
struct DueCursor {
    partition: String,
    after: String,
    read: VecDeque<(String, Cid)>,
    exhausted: bool,
}

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
        let shard = due_pk(shard_of(&new.batch));
        item.insert("ver".into(), n(old.map_or(0, |o| o.ver + 1)));
        item.insert("due_pk".into(), s(&shard));
        if let Some(token) = token {
            item.insert("token".into(), s(token));
        }
        if let Some(attempt) = attempt {
            item.insert("attempt".into(), s(attempt));
        }
        // A new record is counted in its node's pending count; the mark
        // stays with it.
        if old.is_none_or(|o| o.counted_pending) {
            item.insert(super::pending::COUNTED.into(), n(1));
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
        let old_due = old.and_then(|o| {
            let sk = due_sk(o.record.due_at()?, &o.record);
            Some((o.due_partition.as_str(), sk))
        });
        let new_due = new.due_at().map(|d| (shard.as_str(), due_sk(d, new)));
        if old_due != new_due {
            if let Some((pk, sk)) = &old_due {
                items.push(self.delete((pk, sk))?);
            }
            if let Some((pk, sk)) = new_due {
                let put = Put::builder()
                    .table_name(&self.table)
                    .item("pk", s(pk))
                    .item("sk", s(&sk))
                    .item("batch", s(&new.batch.to_string()))
                    .build()
                    .map_err(build_error)?;
                items.push(TransactWriteItem::builder().put(put).build());
            }
        }
        Ok(items)
    }

    /// Visits the due entries with keys up to `hi`, oldest first across
    /// every partition, as from one index, until `visit` has taken `limit`
    /// of them (it says whether it took each).
    fn walk_due(
        &self,
        hi: &str,
        limit: usize,
        mut visit: impl FnMut(&str, &str, &Cid) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut shards: Vec<DueCursor> = due_partitions()
            .map(|partition| DueCursor {
                partition,
                after: "0".to_string(),
                read: VecDeque::new(),
                exhausted: false,
            })
            .collect();
        let mut taken = 0;
        while taken < limit {
            // The oldest entry of all shards next, as from one index.
            let page = limit - taken;
            for shard in shards
                .iter_mut()
                .filter(|c| c.read.is_empty() && !c.exhausted)
            {
                let entries = self.query(&shard.partition, &shard.after, hi, Some(page))?;
                shard.exhausted = entries.len() < page;
                if let Some(last) = entries.last() {
                    // Continue after the last entry seen: keys have one
                    // length, so any later key sorts after this one with a
                    // byte appended.
                    shard.after = format!("{}\u{1}", get_s(last, "sk")?);
                }
                for entry in entries {
                    shard
                        .read
                        .push_back((get_s(&entry, "sk")?, parse_cid(&get_s(&entry, "batch")?)?));
                }
            }
            let Some(shard) = shards
                .iter_mut()
                .filter(|c| !c.read.is_empty())
                .min_by(|a, b| a.read[0].0.cmp(&b.read[0].0))
            else {
                break;
            };
            let Some((sk, batch)) = shard.read.pop_front() else {
                break;
            };
            let partition = shard.partition.clone();
            if visit(&partition, &sk, &batch)? {
                taken += 1;
            }
        }
        Ok(())
    }

    /// Leases the record of the due entry `(partition, sk)` of `batch`,
    /// unless another replica changed it meanwhile so that it is no longer
    /// due, or the entry is no longer its record's.
    fn lease_entry(
        &self,
        partition: &str,
        sk: &str,
        batch: &Cid,
        now: u64,
        owner: &str,
        until: u64,
    ) -> Result<Option<EgressRecord>, StoreError> {
        self.retry(|| {
            let Some(old) = self.load(batch)? else {
                return Ok(Some(None));
            };
            let named = old.record.due_at().map(|d| due_sk(d, &old.record));
            if old.due_partition != partition || named.as_deref() != Some(sk) {
                // Left behind by a replica of the format-2 version (it moves
                // entries only within `due`), or moved by another replica
                // meanwhile: not the record's entry, as long as the record
                // stays as read.
                let unchanged = ConditionCheck::builder()
                    .table_name(&self.table)
                    .key("pk", s(&record_pk(batch)))
                    .key("sk", s("rec"))
                    .condition_expression("#v = :ver")
                    .expression_attribute_names("#v", "ver")
                    .expression_attribute_values(":ver", n(old.ver))
                    .build()
                    .map_err(build_error)?;
                let items = vec![
                    self.delete((partition, sk))?,
                    TransactWriteItem::builder()
                        .condition_check(unchanged)
                        .build(),
                ];
                return match self.transact(items)? {
                    Tx::Done => Ok(Some(None)),
                    Tx::Cancelled(_) => Ok(None),
                };
            }
            if old.record.due_at().is_none_or(|d| d > now) {
                return Ok(Some(None));
            }
            let record = old.record.leased(owner, until);
            Ok(self.replace(&old, &record)?.then_some(Some(record)))
        })
    }

    /// Replaces `old` by `new`, its fence kept, by the versioned write
    /// above: whether it committed (not: re-read and re-decide).
    fn replace(&self, old: &Stored, new: &EgressRecord) -> Result<bool, StoreError> {
        let items = self.record_writes(Some(old), new, old.token.as_deref(), None)?;
        Ok(matches!(self.transact(items)?, Tx::Done))
    }
}

impl Records for DynamoStore {
    /// [`Records::put_within`](crate::store::Records::put_within).
    fn put_within(&self, new: NewRecord, max_pending: u64) -> Result<PutOutcome, StoreError> {
        let record = EgressRecord::from_new(new);
        self.retry(|| {
            if let Some(existing) = self.load(&record.batch)? {
                return PutOutcome::existing(existing.record, &record.node).map(Some);
            }
            let queued = self.pending_of(record.node.as_str())?;
            if queued.unwrap_or(0) >= max_pending {
                return Err(StoreError::TooManyPending {
                    pending: queued.unwrap_or(0),
                });
            }
            let mut items = self.record_writes(None, &record, None, None)?;
            items.push(self.pending_added(record.node.as_str(), queued)?);
            items.push(self.add(&Add {
                pk: stats_pk(shard_of(&record.batch)),
                sk: "stats".into(),
                deltas: vec![("records".to_string(), 1)],
                condition: None,
                version: None,
            })?);
            // The node's list of its batches, by time.
            let listed = Put::builder()
                .table_name(&self.table)
                .item("pk", s(&node_batches_pk(record.node.as_str())))
                .item("sk", s(&node_batch_sk(&record)))
                .item("batch", s(&record.batch.to_string()))
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().put(listed).build());
            // The list of nodes, which shows those with only pending or
            // failed batches too (idempotent).
            let known = Put::builder()
                .table_name(&self.table)
                .item("pk", s(super::items::NODES))
                .item("sk", s(record.node.as_str()))
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().put(known).build());
            match self.transact(items)? {
                Tx::Done => Ok(Some(PutOutcome::Inserted(record.clone()))),
                Tx::Cancelled(_) => Ok(None),
            }
        })
    }

    /// [`Records::node_pending`](crate::store::Records::node_pending).
    fn node_pending(&self, node: &Did) -> Result<u64, StoreError> {
        Ok(self.pending_of(node.as_str())?.unwrap_or(0))
    }

    fn record(&self, batch: &Cid) -> Result<Option<EgressRecord>, StoreError> {
        Ok(self.load(batch)?.map(|s| s.record))
    }

    /// [`Records::lease_pending`](crate::store::Records::lease_pending).
    fn lease_pending(
        &self,
        now: u64,
        owner: &str,
        lease_secs: u64,
        limit: usize,
    ) -> Result<Vec<EgressRecord>, StoreError> {
        let until = lease_end(now, lease_secs)?;
        let mut leased = Vec::new();
        // Due entries `<= now`: every key starts with 20 digits.
        let walked = self.walk_due(&format!("{now:020}#~"), limit, |partition, sk, batch| {
            let record = self.lease_entry(partition, sk, batch, now, owner, until)?;
            let taken = record.is_some();
            leased.extend(record);
            Ok(taken)
        });
        match walked {
            Ok(()) => Ok(leased),
            // The leases taken are held: hand them to the caller, which
            // runs them, rather than leave them idle for the lease's time.
            Err(error) if !leased.is_empty() => {
                tracing::warn!(%error, leased = leased.len(), "lease walk cut short");
                Ok(leased)
            }
            Err(error) => Err(error),
        }
    }

    /// [`Records::pending_records`](crate::store::Records::pending_records): the
    /// records of the first due entries, read only.
    fn pending_records(&self, limit: usize) -> Result<Vec<EgressRecord>, StoreError> {
        let mut pending = Vec::new();
        self.walk_due("~", limit, |_, _, batch| {
            let record = self.load(batch)?.map(|s| s.record);
            let found = record.as_ref().is_some_and(EgressRecord::is_pending);
            pending.extend(record.filter(EgressRecord::is_pending));
            Ok(found)
        })?;
        Ok(pending)
    }

    /// [`Records::release_leases`](crate::store::Records::release_leases): a lease
    /// still running is in the due index at its end, between now and
    /// `now + lease_secs`; only that window of each shard is read (not the
    /// backlog due already, nor retries due later), and each of `owner`'s
    /// records released by the versioned write.
    fn release_leases(&self, owner: &str, now: u64, lease_secs: u64) -> Result<u64, StoreError> {
        let mut released = 0;
        let (lo, hi) = (
            format!("{now:020}"),
            format!("{:020}~", now.saturating_add(lease_secs)),
        );
        for partition in due_partitions() {
            for entry in self.query(&partition, &lo, &hi, None)? {
                let batch = parse_cid(&get_s(&entry, "batch")?)?;
                released += self.retry(|| {
                    let Some(old) = self.load(&batch)? else {
                        return Ok(Some(0));
                    };
                    if !old.record.leased_by(owner) {
                        return Ok(Some(0));
                    }
                    Ok(self.replace(&old, &old.record.released())?.then_some(1))
                })?;
            }
        }
        Ok(released)
    }

    /// [`Records::reschedule`](crate::store::Records::reschedule).
    fn reschedule(
        &self,
        batch: &Cid,
        owner: &str,
        now: u64,
        retry: &Retry,
    ) -> Result<EgressRecord, StoreError> {
        self.retry(|| {
            let old = self.load(batch)?.ok_or(StoreError::NotFound)?;
            let record = old.record.rescheduled(owner, now, retry)?;
            Ok(self.replace(&old, &record)?.then_some(record))
        })
    }

    /// [`Records::pending_count`](crate::store::Records::pending_count): from the
    /// counters (16 items read, however many batches wait), so that
    /// `/health` and `/metrics` cost the same on any table.
    fn pending_count(&self) -> Result<u64, StoreError> {
        Ok(crate::store::DashboardReads::stats(self)?.pending)
    }
}
