//! [`Conclusions`] on redb: the conclusion's one write transaction, the
//! staged tally chunks, receipts and claims.

use ::redb::{ReadableDatabase, ReadableTable};
use cid::Cid;
use ucanto::dag::CidBytes;

use super::{
    add, add_daily, claims, decode_cid, load, pending, save, space_days, OrBackend, RedbStore,
    BILLED_SPACES, COUNTED, DUE, EGRESS_DAILY, FAILED, META, NODE_DAILY, NODE_TOTALS,
    NON_BILLABLE_BYTES_KEY, NON_BILLABLE_DAILY, RECEIPTS, RECORDS, REJECTIONS, SPACE_DAILY, STAGED,
    TOTAL_BYTES_KEY,
};
use crate::store::{
    check_conclusion, retrieval_key, ConcludeOutcome, Conclusion, Conclusions, CountedRetrieval,
    StagedChunk, Staging, StoreError,
};
use ucanto::principal::Did;

impl Conclusions for RedbStore {
    fn conclude(&self, c: &Conclusion) -> Result<ConcludeOutcome, StoreError> {
        let summed = check_conclusion(c)?;
        let tx = self.db.begin_write().or_backend()?;
        {
            let mut records = tx.open_table(RECORDS).or_backend()?;
            let mut due = tx.open_table(DUE).or_backend()?;
            let mut receipts = tx.open_table(RECEIPTS).or_backend()?;
            let mut counted = tx.open_table(COUNTED).or_backend()?;
            let mut node_totals = tx.open_table(NODE_TOTALS).or_backend()?;
            let mut node_daily = tx.open_table(NODE_DAILY).or_backend()?;
            let mut space_daily = tx.open_table(SPACE_DAILY).or_backend()?;

            let old = load(&records, &c.batch)?.ok_or(StoreError::NotFound)?;
            if let Some(receipt) = crate::store::check_record(&old, c)? {
                return Ok(ConcludeOutcome::AlreadyConcluded { receipt });
            }

            // One pass over the counted retrievals, a staged chunk at a time:
            // each is marked counted by this batch, and one that was marked
            // already is a conflict (another batch) or a repeat (this one).
            // Any error drops (aborts) the transaction: nothing changes.
            let batch_key = c.batch.to_bytes();
            let mut staged = tx.open_table(STAGED).or_backend()?;
            let mut conflicts = Vec::new();
            let mut marked: u64 = 0;
            let mut ends = tx.open_table(claims::CLAIM_ENDS).or_backend()?;
            let mut mark = |counted_now: &[CountedRetrieval]| -> Result<(), StoreError> {
                for CountedRetrieval { retrieval: cid, .. } in counted_now {
                    let key = CidBytes::of(cid);
                    let previous = counted.insert(&*key, batch_key.as_slice()).or_backend()?;
                    if previous.is_none() {
                        claims::noted(&mut ends, c.claims_end, &key)?;
                    }
                    match previous {
                        Some(batch) if batch.value() == batch_key.as_slice() => {
                            return Err(StoreError::Invalid(format!("receipt {cid} listed twice")))
                        }
                        Some(_) => conflicts.push(retrieval_key(cid)),
                        None => marked += 1,
                    }
                }
                Ok(())
            };
            mark(&c.counted_receipts)?;
            for link in &c.staged_tally {
                let bytes = staged
                    .get((batch_key.as_slice(), link.to_bytes().as_slice()))
                    .or_backend()?
                    .map(|v| v.value().to_vec());
                mark(&crate::store::staged_counted(&c.batch, link, bytes)?)?;
            }
            if !conflicts.is_empty() {
                return Err(StoreError::Conflict {
                    retrievals: conflicts,
                });
            }

            let mut staged_keys = Vec::new();
            let from: (&[u8], &[u8]) = (batch_key.as_slice(), &[]);
            for entry in staged.range(from..).or_backend()? {
                let (key, _) = entry.or_backend()?;
                let (staged_batch, chunk) = key.value();
                if staged_batch != batch_key.as_slice() {
                    break;
                }
                staged_keys.push(chunk.to_vec());
            }
            for chunk in &staged_keys {
                staged
                    .remove((batch_key.as_slice(), chunk.as_slice()))
                    .or_backend()?;
            }
            receipts
                .insert(
                    c.consolidate_invocation.to_bytes().as_slice(),
                    c.receipt_bytes.as_slice(),
                )
                .or_backend()?;
            let node = c.node.as_str();
            let total = node_totals.get(node).or_backend()?.map_or(0, |v| v.value());
            node_totals
                .insert(node, add(total, c.total_bytes)?)
                .or_backend()?;
            add_daily(&mut space_daily, space_days(&summed.by_space_day))?;
            let mut billed = tx.open_table(BILLED_SPACES).or_backend()?;
            for (space, _) in summed.by_space_day.keys() {
                billed.insert(space.as_str(), ()).or_backend()?;
            }
            add_daily(
                &mut node_daily,
                summed
                    .by_day
                    .iter()
                    .map(|(day, bytes)| (node, day.as_str(), *bytes)),
            )?;
            let mut egress = tx.open_table(EGRESS_DAILY).or_backend()?;
            for (day, bytes) in &summed.by_day {
                let now = egress
                    .get(day.as_str())
                    .or_backend()?
                    .map_or(0, |v| v.value());
                egress
                    .insert(day.as_str(), add(now, *bytes)?)
                    .or_backend()?;
            }
            let mut rejections = tx.open_table(REJECTIONS).or_backend()?;
            let counts = c
                .rejected
                .iter()
                .map(|(name, n)| (format!("name:{}", crate::store::rejection_name(name)), *n))
                .chain(c.failure.is_some().then(|| ("failed".to_string(), 1)));
            for (key, n) in counts {
                let now = rejections
                    .get(key.as_str())
                    .or_backend()?
                    .map_or(0, |v| v.value());
                rejections
                    .insert(key.as_str(), now.saturating_add(n))
                    .or_backend()?;
            }
            let mut non_billable = tx.open_table(NON_BILLABLE_DAILY).or_backend()?;
            add_daily(&mut non_billable, space_days(&summed.non_billable))?;
            let mut meta = tx.open_table(META).or_backend()?;
            let non_billable_bytes = summed
                .non_billable
                .values()
                .fold(0u64, |sum, b| sum.saturating_add(*b));
            for (key, bytes) in [
                (TOTAL_BYTES_KEY, c.total_bytes),
                (NON_BILLABLE_BYTES_KEY, non_billable_bytes),
            ] {
                let now = meta.get(key).or_backend()?.map_or(0, |v| v.value());
                meta.insert(key, now.saturating_add(bytes)).or_backend()?;
            }

            if c.failure.is_some() {
                tx.open_table(FAILED)
                    .or_backend()?
                    .insert((c.concluded_at, batch_key.as_slice()), ())
                    .or_backend()?;
            }
            save(
                &mut records,
                &mut due,
                Some(&old),
                &old.concluded(c, marked),
            )?;
            pending::concluded(&tx, old.node.as_str())?;
        }
        tx.commit().or_backend()?;
        Ok(ConcludeOutcome::Concluded)
    }

    /// Keeps the chunks whole, keyed by batch: a chunk staged for an earlier
    /// receipt of the batch says the same, so it serves this one too.
    fn stage_chunks(&self, staging: &Staging, chunks: &[(Cid, Vec<u8>)]) -> Result<(), StoreError> {
        for (cid, bytes) in chunks {
            crate::store::staged_chunk(&staging.batch, cid, Some(bytes.clone()))?;
        }
        let tx = self.db.begin_write().or_backend()?;
        {
            let mut staged = tx.open_table(STAGED).or_backend()?;
            let batch_key = staging.batch.to_bytes();
            for (cid, bytes) in chunks {
                staged
                    .insert(
                        (batch_key.as_slice(), cid.to_bytes().as_slice()),
                        bytes.as_slice(),
                    )
                    .or_backend()?;
            }
        }
        tx.commit().or_backend()?;
        Ok(())
    }

    fn staged_chunks(
        &self,
        staging: &Staging,
        cids: &[Cid],
    ) -> Result<Vec<Option<StagedChunk>>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let staged = tx.open_table(STAGED).or_backend()?;
        let batch_key = staging.batch.to_bytes();
        cids.iter()
            .map(|cid| {
                let Some(bytes) = staged
                    .get((batch_key.as_slice(), cid.to_bytes().as_slice()))
                    .or_backend()?
                    .map(|v| v.value().to_vec())
                else {
                    return Ok(None);
                };
                let chunk = crate::store::staged_chunk(&staging.batch, cid, Some(bytes))?;
                Ok(Some(StagedChunk {
                    usage: chunk.usage,
                    non_billable: chunk.non_billable,
                    counted: chunk.counted.len() as u64,
                }))
            })
            .collect()
    }

    fn staged_chunk_ids(&self, staging: &Staging) -> Result<Vec<Cid>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let staged = tx.open_table(STAGED).or_backend()?;
        let batch_key = staging.batch.to_bytes();
        let from: (&[u8], &[u8]) = (batch_key.as_slice(), &[]);
        let mut ids = Vec::new();
        for entry in staged.range(from..).or_backend()? {
            let (key, _) = entry.or_backend()?;
            let (staged_batch, chunk) = key.value();
            if staged_batch != batch_key.as_slice() {
                break;
            }
            ids.push(decode_cid(chunk)?);
        }
        Ok(ids)
    }

    fn receipt(&self, consolidate_invocation: &Cid) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let receipts = tx.open_table(RECEIPTS).or_backend()?;
        let key = consolidate_invocation.to_bytes();
        let value = receipts.get(key.as_slice()).or_backend()?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn drop_ended_claims(&self, now: u64) -> Result<u64, StoreError> {
        let mut dropped = 0u64;
        loop {
            let tx = self.db.begin_write().or_backend()?;
            let page = claims::drop_page(&tx, now)?;
            tx.commit().or_backend()?;
            dropped += page as u64;
            if page == 0 {
                return Ok(dropped);
            }
        }
    }

    /// Keyed by the retrieval alone: a retrieval is addressed to one node
    /// (the consolidator checks it), so the node and expiry add nothing here.
    fn counted(
        &self,
        _node: &Did,
        retrievals: &[CountedRetrieval],
    ) -> Result<Vec<Option<Cid>>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let counted = tx.open_table(COUNTED).or_backend()?;
        retrievals
            .iter()
            .map(
                |r| match counted.get(&*CidBytes::of(&r.retrieval)).or_backend()? {
                    Some(batch) => decode_cid(batch.value()).map(Some),
                    None => Ok(None),
                },
            )
            .collect()
    }
}
