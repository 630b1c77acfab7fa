//! The conclude transaction chain: claims of the counted receipts, the
//! conclusion fence, and the final flip that adds the totals.
//!
//! Each attempt gets a random attempt id. A counted-receipt item names the
//! batch *and* attempt that claimed it; it counts only when that batch is done
//! **with that attempt** (`attempt` on the done record).
//! [`Store::counted`](super::Store::counted), the conflict check and the
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
//!   the same way) and reports `Conflict`. The non-claim part of (4) must fit
//!   one transaction: 5 items plus one per (space, day) and per day, at most
//!   100 (beyond, `Invalid`).

use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem};
use cid::Cid;

use super::items::{
    counted_pk, get_s, node_pk, non_billable_pk, opt_s, parse_cid, receipt_pk, record_pk, s,
    shard_of, space_days_pk, stats_pk, Stored,
};
use super::requests::{Add, Tx, TX_MAX};
use super::table::{build_error, fresh_id};
use super::DynamoStore;
use crate::store::{check_conclusion, ConcludeOutcome, Conclusion, StoreError, SummedUsage};

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
    /// [`Store::conclude`](super::Store::conclude): attempts, re-decided
    /// while cancelled.
    pub(super) fn conclude_batch(&self, c: &Conclusion) -> Result<ConcludeOutcome, StoreError> {
        let summed = check_conclusion(c)?;
        let whole;
        let c = if c.staged_tally.is_empty() {
            c
        } else {
            whole = self.with_staged_tally(c)?;
            &whole
        };
        let outcome = self.retry(|| self.conclude_once(c, &summed))?;
        // Staged chunks served their purpose.
        self.drop_staged(&c.batch);
        Ok(outcome)
    }

    /// `c` with the counted retrievals of its staged chunks listed. (Held in
    /// memory: claims are written per attempt, in pages of a transaction.)
    fn with_staged_tally(&self, c: &Conclusion) -> Result<Conclusion, StoreError> {
        let mut whole = c.clone();
        let staged = self.staged(&c.batch, &c.staged_tally)?;
        for (link, bytes) in c.staged_tally.iter().zip(staged) {
            whole
                .counted_receipts
                .extend(crate::store::staged_counted(&c.batch, link, bytes)?);
        }
        whole.staged_tally.clear();
        check_conclusion(&whole)?;
        Ok(whole)
    }

    /// One attempt of [`Store::conclude`](super::Store::conclude); `None`
    /// when a write was cancelled and the whole must be re-read and re-decided.
    fn conclude_once(
        &self,
        c: &Conclusion,
        summed: &SummedUsage,
    ) -> Result<Option<ConcludeOutcome>, StoreError> {
        let old = match self.check_record(c)? {
            Ok(old) => old,
            Err(receipt) => return Ok(Some(ConcludeOutcome::AlreadyConcluded { receipt })),
        };
        let claims = self.claims(&c.counted_receipts)?;
        let conflicts: Vec<Cid> = c
            .counted_receipts
            .iter()
            .zip(&claims)
            .filter(|(_, claim)| {
                claim
                    .as_ref()
                    .is_some_and(|cl| cl.batch != c.batch && cl.state != ClaimState::Orphan)
            })
            .map(|(r, _)| *r)
            .collect();
        if !conflicts.is_empty() {
            return Err(StoreError::Conflict {
                receipts: conflicts,
            });
        }
        let attempt = fresh_id();
        let fixed = 5 + summed.by_day.len() + summed.by_space_day.len() + summed.non_billable.len();
        if fixed + c.counted_receipts.len() <= TX_MAX {
            let (mut items, adds) = self.final_writes(c, summed, &old, &attempt)?;
            for (receipt, claim) in c.counted_receipts.iter().zip(&claims) {
                items.push(self.claim_write(receipt, &c.batch, &attempt, claim.as_ref())?);
            }
            return match self.transact(items)? {
                Tx::Done => Ok(Some(ConcludeOutcome::Concluded)),
                Tx::Cancelled(_) => self.cancelled(&adds),
            };
        }
        if fixed > TX_MAX {
            return Err(StoreError::Invalid(format!(
                "a conclusion touches at most {} daily totals on DynamoDB, not {}",
                TX_MAX - 5,
                fixed - 5
            )));
        }
        // Large: take the fence, claim in fenced chunks, then flip.
        let fenced = self.record_writes(Some(&old), &old.record, Some(&attempt), None)?;
        if let Tx::Cancelled(_) = self.transact(fenced)? {
            return Ok(None);
        }
        let receipts: Vec<(&Cid, Option<&Claim>)> = c
            .counted_receipts
            .iter()
            .zip(claims.iter().map(Option::as_ref))
            .collect();
        let mut claimed = Vec::new();
        for chunk in receipts.chunks(TX_MAX - 1) {
            let mut items = vec![self.fence(&c.batch, &attempt)?];
            for (receipt, claim) in chunk {
                items.push(self.claim_write(receipt, &c.batch, &attempt, *claim)?);
            }
            match self.transact(items)? {
                Tx::Done => claimed.extend(chunk.iter().map(|(r, _)| **r)),
                Tx::Cancelled(reasons) => {
                    let fence_lost = reasons.first().is_some_and(|r| r != "None");
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
        let (items, adds) = self.final_writes(c, summed, &fenced, &attempt)?;
        match self.transact(items)? {
            Tx::Done => Ok(Some(ConcludeOutcome::Concluded)),
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
        let mut batches = Vec::new();
        for key in &keys {
            match items.get(key) {
                None => raw.push(None),
                Some(item) => {
                    let batch = parse_cid(&get_s(item, "batch")?)?;
                    let attempt = get_s(item, "attempt")?;
                    batches.push((record_pk(&batch), "rec".to_string()));
                    raw.push(Some((batch, attempt)));
                }
            }
        }
        let records = self.get_many(&batches)?;
        raw.into_iter()
            .map(|claim| {
                let Some((batch, attempt)) = claim else {
                    return Ok(None);
                };
                let done_attempt = match records.get(&(record_pk(&batch), "rec".to_string())) {
                    Some(item) if get_s(item, "status")? == "done" => opt_s(item, "attempt")?,
                    _ => None,
                };
                let state = match done_attempt {
                    None => ClaimState::Pending,
                    Some(a) if a == attempt => ClaimState::Counted,
                    Some(_) => ClaimState::Orphan,
                };
                Ok(Some(Claim {
                    batch,
                    attempt,
                    state,
                }))
            })
            .collect()
    }

    /// [`Store::counted`](super::Store::counted): the batch of each
    /// receipt's claim, where the claim counts.
    pub(super) fn counted_by(&self, receipts: &[Cid]) -> Result<Vec<Option<Cid>>, StoreError> {
        Ok(self
            .claims(receipts)?
            .into_iter()
            .map(|c| {
                c.filter(|c| c.state == ClaimState::Counted)
                    .map(|c| c.batch)
            })
            .collect())
    }

    /// The claim write of `receipt` by `batch`'s `attempt`, given what
    /// claims it now.
    fn claim_write(
        &self,
        receipt: &Cid,
        batch: &Cid,
        attempt: &str,
        current: Option<&Claim>,
    ) -> Result<TransactWriteItem, StoreError> {
        let mut put = Put::builder()
            .table_name(&self.table)
            .item("pk", s(&counted_pk(receipt)))
            .item("sk", s("counted"))
            .item("batch", s(&batch.to_string()))
            .item("attempt", s(attempt));
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

    /// Steps 2 and 3 of [`Store::conclude`](super::Store::conclude) on a
    /// fresh read: `Ok(Ok(record))` when pending, `Ok(Err(receipt))` when done.
    fn check_record(&self, c: &Conclusion) -> Result<Result<Stored, Cid>, StoreError> {
        let old = self.load(&c.batch)?.ok_or(StoreError::NotFound)?;
        Ok(match crate::store::check_record(&old.record, c)? {
            Some(receipt) => Err(receipt),
            None => Ok(old),
        })
    }

    /// The commit of a conclusion, without the claims: the done record, its
    /// due entry, the receipt, the totals and the counters; and the `ADD`s
    /// among them, to tell an overflow from contention when it is cancelled.
    fn final_writes(
        &self,
        c: &Conclusion,
        summed: &SummedUsage,
        old: &Stored,
        attempt: &str,
    ) -> Result<(Vec<TransactWriteItem>, Vec<Add>), StoreError> {
        let record = old.record.concluded(c, c.counted_receipts.len() as u64);
        let mut items = self.record_writes(Some(old), &record, None, Some(attempt))?;
        let put = Put::builder()
            .table_name(&self.table)
            .item("pk", s(&receipt_pk(&c.consolidate_invocation)))
            .item("sk", s("receipt"))
            .item("body", AttributeValue::B(c.receipt_bytes.clone().into()))
            .build()
            .map_err(build_error)?;
        items.push(TransactWriteItem::builder().put(put).build());
        let node_pk = node_pk(c.node.as_str());
        let first = self.get((&node_pk, "total"))?.is_none();
        let (condition, nodes) = if first {
            ("attribute_not_exists(pk)", 1)
        } else {
            ("attribute_exists(pk)", 0)
        };
        let add = |pk: &str, sk: &str, deltas: Vec<(&'static str, u64)>| Add {
            pk: pk.to_string(),
            sk: sk.to_string(),
            deltas,
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
        // Daily totals: `(partition, day, bytes)`.
        let daily = summed
            .non_billable
            .iter()
            .map(|((space, day), bytes)| (non_billable_pk(space), day, bytes))
            .chain(
                summed
                    .by_day
                    .iter()
                    .map(|(day, bytes)| (node_pk.clone(), day, bytes)),
            )
            .chain(
                summed
                    .by_space_day
                    .iter()
                    .map(|((space, day), bytes)| (space_days_pk(space), day, bytes)),
            );
        for (pk, day, bytes) in daily {
            adds.push(add(&pk, &format!("day#{day}"), vec![("bytes", *bytes)]));
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

    /// [`Store::receipt`](super::Store::receipt): the stored consolidate receipt.
    pub(super) fn stored_receipt(
        &self,
        consolidate_invocation: &Cid,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get((&receipt_pk(consolidate_invocation), "receipt"))? {
            None => Ok(None),
            Some(item) => match item.get("body") {
                Some(AttributeValue::B(b)) => Ok(Some(b.clone().into_inner())),
                _ => Err(StoreError::Corrupt("receipt body is not bytes".into())),
            },
        }
    }
}
