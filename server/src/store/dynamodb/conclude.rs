//! The conclude chain: the attempt's claims pages, the conclusion fence
//! (for usage rows), and the final flip that adds the totals.
//!
//! An attempt's claims are pages of keys filed per node and hour
//! (`claims.rs`), and its usage rows, when it has them, name the attempt
//! too: both count exactly when the batch is done **with that attempt**
//! (`attempt` on the done record), so those of an attempt that lost, was
//! refused or stopped never count. A tally staged in chunks had its pages
//! written as the chunks arrived, under a name made of its receipt and
//! chunks; any other attempt gets a random name and writes its pages here.
//!
//! 1. Check as redb does; read the node's version (`cv` on its total), then
//!    the retrievals this conclusion counts (listed, and read back from its
//!    staged pages) against what the node's earlier conclusions counted in
//!    the same hours: one counted by another batch is a `Conflict`.
//! 2. Write the listed retrievals' pages (plain puts: they count only from
//!    the flip).
//! 3. **Small** (the daily totals fit the final transaction): the final
//!    transaction puts the done record (`ver = :v`), deletes its due entry,
//!    puts the receipt, `ADD`s the node total (conditioned on the version
//!    read in 1, which it bumps; `attribute_not_exists` plus `ADD nodes 1`
//!    to the counters for the node's first), the daily totals and the
//!    counters. All or nothing, like redb; a conclusion of the same node
//!    that flipped meanwhile changed the version, so this one reads again
//!    and finds what that one counted.
//! 4. **Any number of daily totals**: when they do not fit the final
//!    transaction beside its fixed items (the record, its due entry, the
//!    receipt, the node's total, the counters, the node's pending count),
//!    the attempt takes the record's conclusion fence (`SET token =
//!    :attempt` with `ver = :v`), writes one **usage row** per daily total,
//!    `day#<day>#<batch>` in the total's partition, in transactions of 99
//!    rows plus a `ConditionCheck` that the record is still pending with
//!    its token (so once another attempt takes the fence no row of this
//!    one lands any more), then flips as in 3 without the daily totals, also
//!    conditioned on the token. All of a batch's rows start counting at
//!    once, with the flip; reads add counting rows to the day's total, and
//!    the concluding replica folds them in right after (`fold.rs`).

use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};
use cid::Cid;

use super::claims::OwnKeys;
use super::fold::Row;
use super::items::{
    egress_pk, n, node_pk, non_billable_pk, receipt_pk, record_pk, rejected_pk, s, shard_of,
    space_days_pk, stats_pk, usage_row_sk, Stored, BILLED_SPACES, NODES,
};
use super::requests::{Add, Tx, TX_MAX};
use super::table::build_error;
use super::DynamoStore;
use crate::store::{ConcludeOutcome, Conclusion, StoreError, SummedUsage};

/// One conclusion's attempt, kept across the re-reads of a `conclude`
/// call: the retrievals it counts are read once (its staged pages do not
/// change), and its listed pages are written once. A staged tally's
/// attempt is named by its receipt and chunks
/// ([`crate::store::staged_attempt`]), the name its pages were written
/// under as the chunks arrived; any other gets a random name.
pub(super) struct Attempt {
    id: String,
    mine: Option<OwnKeys>,
    pages_written: bool,
}

impl Attempt {
    pub(super) fn new(c: &Conclusion) -> Self {
        let id = if c.staged_tally.is_empty() {
            super::table::fresh_id()
        } else {
            crate::store::staged_attempt(&c.receipt, &c.staged_tally)
        };
        Attempt {
            id,
            mine: None,
            pages_written: false,
        }
    }
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

    /// One try of [`Conclusions::conclude`](crate::store::Conclusions::conclude); `None`
    /// when a write was cancelled and the whole must be re-read and re-decided.
    pub(super) fn conclude_once(
        &self,
        c: &Conclusion,
        summed: &SummedUsage,
        attempt: &mut Attempt,
    ) -> Result<Option<ConcludeOutcome>, StoreError> {
        let old = match self.check_record(c)? {
            Ok(old) => old,
            Err(receipt) => return Ok(Some(ConcludeOutcome::AlreadyConcluded { receipt })),
        };
        // The version first: a conclusion of the node that flips after this
        // read changes it, and the flip below is refused.
        let version = self.node_version(c.node.as_str())?;
        // Read once the record says the batch is pending (a batch concluded
        // already answers so, its staged chunks gone or not).
        let mine = match attempt.mine.take() {
            Some(mine) => mine,
            None => {
                let staged = self.staged_parts(c)?;
                self.own_keys(c, &staged, &attempt.id)?
            }
        };
        let counted = mine.len() as u64;
        let mut conflicts = Vec::new();
        for (hour, keys) in &mine.by_hour {
            let earlier = self.hour_counted(c.node.as_str(), *hour, version)?;
            // Counted by this very batch: another attempt of it won since
            // the record was read; the flip below fails and the re-read
            // answers `AlreadyConcluded`. Only other batches conflict.
            conflicts.extend(
                keys.iter()
                    .filter(|key| earlier.get(*key).is_some_and(|by| *by != c.batch)),
            );
        }
        attempt.mine = Some(mine);
        if !conflicts.is_empty() {
            return Err(StoreError::Conflict {
                retrievals: conflicts,
            });
        }
        if !attempt.pages_written && !c.counted_receipts.is_empty() {
            self.write_pages(
                &c.node,
                &c.batch,
                &attempt.id,
                "l",
                &c.counted_receipts,
                c.claims_end,
            )?;
        }
        attempt.pages_written = true;
        let id = attempt.id.as_str();
        let flip = Flip {
            attempt: id,
            version,
            counted,
        };
        let dailies = daily_deltas(c, summed);
        // The flip's own items: the record, its due entry, the receipt, the
        // node's entry in the list of nodes and its total, the counters,
        // and the rejection counts if any.
        let fixed = 6
            + usize::from(rejection_add(c).is_some())
            + usize::from(old.counted_pending)
            + usize::from(c.failure.is_some());
        if fixed + dailies.len() <= TX_MAX {
            let (items, adds) = self.final_writes(c, summed, &old, &dailies, &flip)?;
            return match self.transact(items)? {
                Tx::Done => Ok(Some(ConcludeOutcome::Concluded)),
                Tx::Cancelled(_) => self.cancelled(&adds),
            };
        }
        // Daily totals that do not fit the flip become usage rows, written
        // under the fence, which count from the flip on.
        let fenced = self.record_writes(Some(&old), &old.record, Some(id), None)?;
        if let Tx::Cancelled(_) = self.transact(fenced)? {
            return Ok(None);
        }
        for rows in dailies.chunks(TX_MAX - 1) {
            let mut items = vec![self.fence(&c.batch, id)?];
            for daily in rows {
                items.push(self.usage_row(daily, &c.batch, id)?);
            }
            if let Tx::Cancelled(_) = self.transact(items)? {
                return Ok(None);
            }
        }
        let Ok(fenced) = self.check_record(c)? else {
            return Ok(None);
        };
        if fenced.token.as_deref() != Some(id) {
            return Ok(None);
        }
        let (items, adds) = self.final_writes(c, summed, &fenced, &[], &flip)?;
        match self.transact(items)? {
            Tx::Done => {
                // Counted from the flip on; folded into the totals now (or
                // by the first read that meets them, if this stops).
                let rows: Vec<Row> = dailies
                    .iter()
                    .map(|d| Row {
                        pk: d.pk.clone(),
                        day: d.day.clone(),
                        batch: c.batch,
                        attempt: id.to_string(),
                        bytes: d.bytes,
                    })
                    .collect();
                if let Err(error) = self.fold(&rows) {
                    tracing::warn!(%error, batch = %c.batch, "cannot fold usage rows yet");
                }
                Ok(Some(ConcludeOutcome::Concluded))
            }
            Tx::Cancelled(_) => self.cancelled(&adds),
        }
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
        dailies: &[Daily],
        flip: &Flip,
    ) -> Result<(Vec<TransactWriteItem>, Vec<Add>), StoreError> {
        let Flip {
            attempt,
            version,
            counted,
        } = *flip;
        let record = old.record.concluded(c, counted);
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
        // A failed batch is listed, for the dashboard.
        if c.failure.is_some() {
            let failed = Put::builder()
                .table_name(&self.table)
                .item("pk", s(super::items::FAILED))
                .item("sk", s(&format!("{:020}#{}", c.concluded_at, c.batch)))
                .item("batch", s(&c.batch.to_string()))
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().put(failed).build());
        }
        // The list of nodes paid (idempotent).
        let listed = Put::builder()
            .table_name(&self.table)
            .item("pk", s(NODES))
            .item("sk", s(c.node.as_str()))
            .build()
            .map_err(build_error)?;
        items.push(TransactWriteItem::builder().put(listed).build());
        let node_pk = node_pk(c.node.as_str());
        // The node's first conclusion makes its total; any other requires
        // the version its claims were checked at.
        let (condition, nodes) = match version {
            None => (Some("attribute_not_exists(pk)"), 1),
            Some(_) => (None, 0),
        };
        let add = |pk: &str, sk: &str, deltas: Vec<(&str, u64)>| Add {
            pk: pk.to_string(),
            sk: sk.to_string(),
            deltas: deltas
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            condition: None,
            version: None,
        };
        let mut adds = vec![
            // The node's total says whether this is the node's first, and
            // orders its conclusions.
            Add {
                condition,
                version,
                ..add(&node_pk, "total", vec![("bytes", c.total_bytes), ("cv", 1)])
            },
            add(
                &stats_pk(shard_of(&c.batch)),
                "stats",
                vec![
                    ("concluded", 1),
                    ("counted", counted),
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

/// What the final transaction names besides the conclusion: the attempt
/// that wins with it, the node's version it was checked at, and how many
/// retrievals it counts.
#[derive(Clone, Copy)]
struct Flip<'a> {
    attempt: &'a str,
    version: Option<u64>,
    counted: u64,
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
    if c.failure.is_some() {
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
        version: None,
    })
}
