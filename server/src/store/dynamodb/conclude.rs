//! The conclude transaction chain: claims of the counted receipts, the
//! conclusion fence, and the final flip that adds the totals.
//!
//! Each attempt gets a random attempt id. A counted-receipt item names the
//! batch *and* attempt that claimed it; it counts only when that batch is done
//! **with that attempt** (`attempt` on the done record).
//! [`Conclusions::counted`](crate::store::Conclusions::counted), the conflict check and the
//! audit all apply that rule, so a claim left by an interrupted attempt never
//! counts. Claims are `Put` with
//! `attribute_not_exists(pk) OR batch = :batch` (own leftovers are taken over),
//! or, for an orphan (its batch is done with another attempt, so it never
//! counts), `batch = :other AND attempt = :its_attempt`.
//!
//! - **Small** (everything fits one `TransactWriteItems`, 100 items): one
//!   transaction puts the done record (`ver = :v`), deletes its due entry,
//!   puts the receipt, `ADD`s the node total (`attribute_exists`, or
//!   `attribute_not_exists` plus `ADD nodes 1` to the counters when it is the
//!   node's first), the node and space daily totals and the counters, and
//!   claims every receipt. All or nothing, like redb.
//! - **Large**: (1) check as redb does; (2) take the record's conclusion
//!   fence: `SET token = :attempt` with `ver = :v`; (3) claim the receipts in
//!   transactions of 99 claims plus a `ConditionCheck` that the record is
//!   still pending with `token = :attempt`, so once another attempt takes the
//!   fence no claim of this one can land any more; (4) the final transaction
//!   is the small one without the claims, conditioned on `ver` and `token`.
//!   Totals move only in (4), atomically with the flip, so nothing is ever
//!   counted twice; a crash before (4) leaves only claims that never count,
//!   and concluding again resumes (own claims are taken over). If a claim
//!   hits a receipt counted meanwhile, the attempt deletes its claims (fenced
//!   the same way) and reports `Conflict`.
//! - **Any number of daily totals**: when the daily totals do not fit (4)
//!   beside its fixed items (the record, its due entry, the receipt, the
//!   node's total, the counters, the node's pending count), step (3) also writes one **usage row** per
//!   daily total, `day#<day>#<batch>` in the total's partition, naming the
//!   attempt; (4) then adds none of them. A row counts exactly when its batch
//!   is done with its attempt, the rule of the claims, so all of a batch's
//!   rows start counting at once, with the flip, and the rows of an attempt
//!   that lost never count (another attempt of the batch overwrites them;
//!   rows of days it does not touch stay, ignored). Reads of daily totals add
//!   the counting rows to the day's total. Rows are not folded into the
//!   totals afterwards: a fold could not be seen atomically by a query, which
//!   DynamoDB runs read-committed, and a read would count a batch twice.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem};
use cid::Cid;

use super::fold::Row;
use super::items::{
    counted_pk, egress_pk, get_s, n, node_pk, non_billable_pk, opt_s, parse_cid, receipt_pk,
    record_pk, rejected_pk, s, shard_of, space_days_pk, stats_pk, usage_row_sk, Stored,
    BILLED_SPACES, NODES,
};
use super::requests::{Add, Tx, TX_MAX};
use super::table::{build_error, fresh_id};
use super::DynamoStore;
use crate::store::{
    check_conclusion, ConcludeOutcome, Conclusion, Conclusions, StoreError, SummedUsage,
};

/// Who claims a receipt, and whether the claim counts.
#[derive(Clone, Debug)]
pub(super) struct Claim {
    /// The batch that claims it.
    pub(super) batch: Cid,
    /// The attempt of that batch that claims it.
    pub(super) attempt: String,
    /// Whether the claim counts.
    pub(super) state: ClaimState,
}

/// Whether a claim counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ClaimState {
    /// The batch is done with this attempt: the receipt is counted.
    Counted,
    /// The batch is still pending: the attempt may yet commit.
    Pending,
    /// The batch is done with another attempt: this claim never counts.
    Orphan,
}

impl DynamoStore {
    /// Lists the spaces of `summed` in [`BILLED_SPACES`], those this process
    /// has not listed already.
    pub(super) fn list_billed(&self, summed: &SummedUsage) -> Result<(), StoreError> {
        let mut spaces: Vec<&String> = summed.by_space_day.keys().map(|(s, _)| s).collect();
        spaces.dedup();
        let known = |space: &String| {
            self.billed_listed
                .lock()
                .is_ok_and(|listed| listed.contains(space))
        };
        let keys: Vec<(String, String)> = spaces
            .into_iter()
            .filter(|space| !known(space))
            .map(|space| (BILLED_SPACES.to_string(), space.clone()))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        self.put_keys(&keys)?;
        if let Ok(mut listed) = self.billed_listed.lock() {
            if listed.len() + keys.len() > 1_000_000 {
                listed.clear();
            }
            listed.extend(keys.into_iter().map(|(_, space)| space));
        }
        Ok(())
    }

    /// `c` with the counted retrievals of its staged chunks listed. (Held in
    /// memory: claims are written per attempt, in pages of a transaction.)
    pub(super) fn with_staged_tally(&self, c: &Conclusion) -> Result<Conclusion, StoreError> {
        let mut whole = c.clone();
        let staged = self.staged_chunks(&c.batch, &c.staged_tally)?;
        for (link, bytes) in c.staged_tally.iter().zip(staged) {
            whole
                .counted_receipts
                .extend(crate::store::staged_counted(&c.batch, link, bytes)?);
        }
        whole.staged_tally.clear();
        check_conclusion(&whole)?;
        Ok(whole)
    }

    /// One attempt of [`Conclusions::conclude`](crate::store::Conclusions::conclude); `None`
    /// when a write was cancelled and the whole must be re-read and re-decided.
    pub(super) fn conclude_once(
        &self,
        c: &Conclusion,
        summed: &SummedUsage,
    ) -> Result<Option<ConcludeOutcome>, StoreError> {
        let old = match self.check_record(c)? {
            Ok(old) => old,
            Err(receipt) => return Ok(Some(ConcludeOutcome::AlreadyConcluded { receipt })),
        };
        let claims = self.claims(&c.counted_receipts)?;
        let held_by = |state: ClaimState| {
            c.counted_receipts
                .iter()
                .zip(&claims)
                .filter_map(move |(r, claim)| match claim {
                    Some(cl) if cl.batch != c.batch && cl.state == state => Some((*r, cl.batch)),
                    _ => None,
                })
        };
        // Counted by another batch: a conflict, which the consolidator
        // settles by leaving them out.
        let conflicts: Vec<Cid> = held_by(ClaimState::Counted).map(|(r, _)| r).collect();
        if !conflicts.is_empty() {
            return Err(StoreError::Conflict {
                receipts: conflicts,
            });
        }
        // Claimed by a conclusion of another batch still under way (or cut
        // short, to be resumed): not counted yet, so not a conflict, or the
        // retrieval could end counted by nobody; this one waits for it.
        if let Some((_, batch)) = held_by(ClaimState::Pending).next() {
            return Err(StoreError::HeldByPending { batch });
        }
        let attempt = fresh_id();
        let dailies = daily_deltas(c, summed);
        // The flip's own items: the record, its due entry, the receipt, the
        // node's entry in the list of nodes and its total, the counters,
        // and the rejection counts if any.
        let fixed = 6 + usize::from(rejection_add(c).is_some()) + usize::from(old.counted_pending);
        if fixed + dailies.len() + c.counted_receipts.len() <= TX_MAX {
            let (mut items, adds) = self.final_writes(c, summed, &old, &attempt, &dailies)?;
            for (receipt, claim) in c.counted_receipts.iter().zip(&claims) {
                items.push(self.claim_write(receipt, c, &attempt, claim.as_ref())?);
            }
            return match self.transact(items)? {
                Tx::Done => Ok(Some(ConcludeOutcome::Concluded)),
                Tx::Cancelled(_) => self.cancelled(&adds),
            };
        }
        // Large: take the fence, claim (and write usage rows) in fenced
        // chunks, then flip. Daily totals that do not fit the flip become
        // usage rows, which count from the flip on.
        let as_rows = fixed + dailies.len() > TX_MAX;
        let fenced = self.record_writes(Some(&old), &old.record, Some(&attempt), None)?;
        if let Tx::Cancelled(_) = self.transact(fenced)? {
            return Ok(None);
        }
        let mut writes = Vec::new();
        for (receipt, claim) in c.counted_receipts.iter().zip(&claims) {
            writes.push((
                Some(*receipt),
                self.claim_write(receipt, c, &attempt, claim.as_ref())?,
            ));
        }
        if as_rows {
            for daily in &dailies {
                writes.push((None, self.usage_row(daily, &c.batch, &attempt)?));
            }
        }
        let mut claimed = Vec::new();
        let mut writes = writes.into_iter().peekable();
        while writes.peek().is_some() {
            let chunk: Vec<_> = writes.by_ref().take(TX_MAX - 1).collect();
            let mut items = vec![self.fence(&c.batch, &attempt)?];
            let mut receipts = Vec::new();
            for (receipt, write) in chunk {
                receipts.extend(receipt);
                items.push(write);
            }
            match self.transact(items)? {
                Tx::Done => claimed.extend(receipts),
                Tx::Cancelled(reasons) => {
                    let fence_lost = reasons.first().is_some_and(|r| r != "None");
                    // Only claims carry conditions: usage rows are written
                    // under the fence alone.
                    let claim_lost = reasons
                        .iter()
                        .skip(1)
                        .any(|r| r == "ConditionalCheckFailed");
                    if claim_lost && !fence_lost {
                        // Counted (or claimed) meanwhile by another batch:
                        // withdraw, then re-decide (usually `Conflict`).
                        self.withdraw(&c.batch, &attempt, &claimed)?;
                    }
                    return Ok(None);
                }
            }
        }
        let Ok(fenced) = self.check_record(c)? else {
            return Ok(None);
        };
        if fenced.token.as_deref() != Some(attempt.as_str()) {
            return Ok(None);
        }
        let in_flip = if as_rows { &[][..] } else { &dailies[..] };
        let (items, adds) = self.final_writes(c, summed, &fenced, &attempt, in_flip)?;
        match self.transact(items)? {
            Tx::Done => {
                if as_rows {
                    // Counted from the flip on; folded into the totals now
                    // (or by the first read that meets them, if this stops).
                    let rows: Vec<Row> = dailies
                        .iter()
                        .map(|d| Row {
                            pk: d.pk.clone(),
                            day: d.day.clone(),
                            batch: c.batch,
                            attempt: attempt.clone(),
                            bytes: d.bytes,
                        })
                        .collect();
                    if let Err(error) = self.fold(&rows) {
                        tracing::warn!(%error, batch = %c.batch, "cannot fold usage rows yet");
                    }
                }
                Ok(Some(ConcludeOutcome::Concluded))
            }
            Tx::Cancelled(_) => self.cancelled(&adds).inspect_err(|_| {
                // Refused: its claims must not hold other batches back.
                let _ = self.withdraw(&c.batch, &attempt, &claimed);
            }),
        }
    }

    /// For each receipt, its claim: `(batch, attempt, counts)`, where
    /// `counts` says whether the claiming batch is done with that attempt.
    pub(super) fn claims(&self, receipts: &[Cid]) -> Result<Vec<Option<Claim>>, StoreError> {
        let keys: Vec<(String, String)> = receipts
            .iter()
            .map(|r| (counted_pk(r), "counted".to_string()))
            .collect();
        let items = self.get_many(&keys)?;
        let mut raw = Vec::with_capacity(receipts.len());
        for key in &keys {
            raw.push(match items.get(key) {
                None => None,
                Some(item) => Some((parse_cid(&get_s(item, "batch")?)?, get_s(item, "attempt")?)),
            });
        }
        let batches: Vec<Cid> = raw.iter().flatten().map(|(batch, _)| *batch).collect();
        let winners = self.done_attempts(&batches)?;
        Ok(raw
            .into_iter()
            .map(|claim| {
                let (batch, attempt) = claim?;
                let state = match winners.get(&batch) {
                    None => ClaimState::Pending,
                    Some(a) if *a == attempt => ClaimState::Counted,
                    Some(_) => ClaimState::Orphan,
                };
                Some(Claim {
                    batch,
                    attempt,
                    state,
                })
            })
            .collect())
    }

    /// The attempt each of `batches` is done with; pending (or unknown)
    /// batches are absent. A claim or usage row counts only when its
    /// attempt is its batch's.
    pub(super) fn done_attempts(
        &self,
        batches: &[Cid],
    ) -> Result<HashMap<Cid, String>, StoreError> {
        let keys: Vec<(String, String)> = batches
            .iter()
            .map(|b| (record_pk(b), "rec".to_string()))
            .collect();
        let records = self.get_many(&keys)?;
        let mut done = HashMap::new();
        for (batch, key) in batches.iter().zip(&keys) {
            if let Some(item) = records.get(key) {
                if get_s(item, "status")? == "done" {
                    if let Some(attempt) = opt_s(item, "attempt")? {
                        done.insert(*batch, attempt);
                    }
                }
            }
        }
        Ok(done)
    }

    /// The claim write of `receipt` by the conclusion `c`'s `attempt`,
    /// given what claims it now. It carries the conclusion's `claims_end`
    /// as `ttl`: the table's time to live drops it once no batch could
    /// count the retrieval again.
    fn claim_write(
        &self,
        receipt: &Cid,
        c: &Conclusion,
        attempt: &str,
        current: Option<&Claim>,
    ) -> Result<TransactWriteItem, StoreError> {
        let batch = &c.batch;
        let mut put = Put::builder()
            .table_name(&self.table)
            .item("pk", s(&counted_pk(receipt)))
            .item("sk", s("counted"))
            .item("batch", s(&batch.to_string()))
            .item("attempt", s(attempt));
        if c.claims_end != u64::MAX {
            put = put.item("ttl", n(c.claims_end));
        }
        put = match current {
            Some(c) if c.batch != *batch => put
                .condition_expression("attribute_exists(pk) AND #b = :other AND #at = :its")
                .expression_attribute_names("#b", "batch")
                .expression_attribute_names("#at", "attempt")
                .expression_attribute_values(":other", s(&c.batch.to_string()))
                .expression_attribute_values(":its", s(&c.attempt)),
            _ => put
                .condition_expression("attribute_not_exists(pk) OR #b = :batch")
                .expression_attribute_names("#b", "batch")
                .expression_attribute_values(":batch", s(&batch.to_string())),
        };
        Ok(TransactWriteItem::builder()
            .put(put.build().map_err(build_error)?)
            .build())
    }

    /// A `ConditionCheck` that `batch` is pending with fence `token`.
    fn fence(&self, batch: &Cid, token: &str) -> Result<TransactWriteItem, StoreError> {
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .key("pk", s(&record_pk(batch)))
            .key("sk", s("rec"))
            .condition_expression("#st = :pending AND #tk = :token")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#tk", "token")
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":token", s(token))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    /// The usage row of `daily` for `batch`'s `attempt`: written under the
    /// fence only (a row of an earlier attempt of the batch is taken over;
    /// one of an attempt that lost never counts).
    fn usage_row(
        &self,
        daily: &Daily,
        batch: &Cid,
        attempt: &str,
    ) -> Result<TransactWriteItem, StoreError> {
        let put = Put::builder()
            .table_name(&self.table)
            .item("pk", s(&daily.pk))
            .item("sk", s(&usage_row_sk(&daily.day, batch)))
            .item("bytes", n(daily.bytes))
            .item("batch", s(&batch.to_string()))
            .item("attempt", s(attempt))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Deletes the claims of `attempt`, each chunk fenced by the record.
    fn withdraw(&self, batch: &Cid, attempt: &str, receipts: &[Cid]) -> Result<(), StoreError> {
        for chunk in receipts.chunks(TX_MAX - 1) {
            let mut items = vec![self.fence(batch, attempt)?];
            for receipt in chunk {
                let delete = Delete::builder()
                    .table_name(&self.table)
                    .key("pk", s(&counted_pk(receipt)))
                    .key("sk", s("counted"))
                    .condition_expression("#b = :batch AND #at = :attempt")
                    .expression_attribute_names("#b", "batch")
                    .expression_attribute_names("#at", "attempt")
                    .expression_attribute_values(":batch", s(&batch.to_string()))
                    .expression_attribute_values(":attempt", s(attempt))
                    .build()
                    .map_err(build_error)?;
                items.push(TransactWriteItem::builder().delete(delete).build());
            }
            if let Tx::Cancelled(_) = self.transact(items)? {
                // Fence lost or claims taken over: they are no longer ours.
                return Ok(());
            }
        }
        Ok(())
    }

    /// Steps 2 and 3 of [`Conclusions::conclude`](crate::store::Conclusions::conclude) on a
    /// fresh read: `Ok(Ok(record))` when pending, `Ok(Err(receipt))` when done.
    fn check_record(&self, c: &Conclusion) -> Result<Result<Stored, Cid>, StoreError> {
        let old = self.load(&c.batch)?.ok_or(StoreError::NotFound)?;
        Ok(match crate::store::check_record(&old.record, c)? {
            Some(receipt) => Err(receipt),
            None => Ok(old),
        })
    }

    /// The commit of a conclusion, without the claims: the done record, its
    /// due entry, the receipt, the node's total, the counters and `dailies`
    /// (none when they were written as usage rows); and the `ADD`s among
    /// them, to tell an overflow from contention when it is cancelled.
    fn final_writes(
        &self,
        c: &Conclusion,
        summed: &SummedUsage,
        old: &Stored,
        attempt: &str,
        dailies: &[Daily],
    ) -> Result<(Vec<TransactWriteItem>, Vec<Add>), StoreError> {
        let record = old.record.concluded(c, c.counted_receipts.len() as u64);
        let mut items = self.record_writes(Some(old), &record, None, Some(attempt))?;
        if old.counted_pending {
            items.push(self.pending_taken(c.node.as_str())?);
        }
        let put = Put::builder()
            .table_name(&self.table)
            .item("pk", s(&receipt_pk(&c.consolidate_invocation)))
            .item("sk", s("receipt"))
            .item("body", AttributeValue::B(c.receipt_bytes.clone().into()))
            .build()
            .map_err(build_error)?;
        items.push(TransactWriteItem::builder().put(put).build());
        // The list of nodes paid (idempotent).
        let listed = Put::builder()
            .table_name(&self.table)
            .item("pk", s(NODES))
            .item("sk", s(c.node.as_str()))
            .build()
            .map_err(build_error)?;
        items.push(TransactWriteItem::builder().put(listed).build());
        let node_pk = node_pk(c.node.as_str());
        let first = self.get((&node_pk, "total"))?.is_none();
        let (condition, nodes) = if first {
            ("attribute_not_exists(pk)", 1)
        } else {
            ("attribute_exists(pk)", 0)
        };
        let add = |pk: &str, sk: &str, deltas: Vec<(&str, u64)>| Add {
            pk: pk.to_string(),
            sk: sk.to_string(),
            deltas: deltas
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            condition: None,
        };
        let mut adds = vec![
            // The node's total says whether this is the node's first.
            Add {
                condition: Some(condition),
                ..add(&node_pk, "total", vec![("bytes", c.total_bytes)])
            },
            add(
                &stats_pk(shard_of(&c.batch)),
                "stats",
                vec![
                    ("concluded", 1),
                    ("counted", c.counted_receipts.len() as u64),
                    ("nodes", nodes),
                    ("total_bytes", c.total_bytes),
                    ("non_billable_bytes", summed.non_billable.values().sum()),
                ],
            ),
        ];
        if let Some(rejected) = rejection_add(c) {
            adds.push(rejected);
        }
        for daily in dailies {
            adds.push(add(
                &daily.pk,
                &format!("day#{}", daily.day),
                vec![("bytes", daily.bytes)],
            ));
        }
        for add in &adds {
            items.push(self.add(add)?);
        }
        Ok((items, adds))
    }

    /// What a cancelled final transaction means: an overflow (`Invalid`, as
    /// redb refuses it), or contention (`None`: re-read and re-decide).
    fn cancelled<T>(&self, adds: &[Add]) -> Result<Option<T>, StoreError> {
        match self.overflows(adds)? {
            Some(overflow) => Err(overflow),
            None => Ok(None),
        }
    }
}

/// One daily total a conclusion adds to: its partition, day and bytes.
struct Daily {
    pk: String,
    day: String,
    bytes: u64,
}

/// The daily totals `c` adds to: per node and day, all nodes per day (in
/// the batch's shard), per space and day, and non-billable per space and day.
fn daily_deltas(c: &Conclusion, summed: &SummedUsage) -> Vec<Daily> {
    let node = node_pk(c.node.as_str());
    let egress = egress_pk(shard_of(&c.batch));
    let daily = |pk: String, day: &String, bytes: &u64| Daily {
        pk,
        day: day.clone(),
        bytes: *bytes,
    };
    let by_node = summed
        .by_day
        .iter()
        .map(|(day, bytes)| daily(node.clone(), day, bytes));
    let all_nodes = summed
        .by_day
        .iter()
        .map(|(day, bytes)| daily(egress.clone(), day, bytes));
    let by_space = summed
        .by_space_day
        .iter()
        .map(|((space, day), bytes)| daily(space_days_pk(space), day, bytes));
    let non_billable = summed
        .non_billable
        .iter()
        .map(|((space, day), bytes)| daily(non_billable_pk(space), day, bytes));
    by_node
        .chain(all_nodes)
        .chain(by_space)
        .chain(non_billable)
        .collect()
}

/// The `ADD` of `c`'s rejections to its shard's rejection counts: `failed`,
/// and `n_<error name>` per name; `None` when it has none.
fn rejection_add(c: &Conclusion) -> Option<Add> {
    let mut deltas: Vec<(String, u64)> = c
        .rejected
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| (format!("n_{}", crate::store::rejection_name(name)), *n))
        .collect();
    if c.failed {
        deltas.push(("failed".to_string(), 1));
    }
    // One `ADD` per attribute: names made equal by the cleaning add up.
    deltas.sort();
    deltas.dedup_by(|later, first| {
        let same = later.0 == first.0;
        if same {
            first.1 = first.1.saturating_add(later.1);
        }
        same
    });
    (!deltas.is_empty()).then(|| Add {
        pk: rejected_pk(shard_of(&c.batch)),
        sk: "rejected".to_string(),
        deltas,
        condition: None,
    })
}
