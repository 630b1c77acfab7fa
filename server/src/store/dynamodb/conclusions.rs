//! [`Conclusions`] on DynamoDB: the conclude chain (`conclude.rs`), staged
//! tally chunks (their claims pages, and a summary item each under the
//! batch), stored receipts and counted retrievals (`claims.rs`).

use aws_sdk_dynamodb::types::AttributeValue;
use cid::Cid;

use super::conclude::Attempt;
use super::items::{get_s, get_u64, n, parse_cid, receipt_pk, s, staged_pk};
use super::table::backend;
use super::DynamoStore;
use crate::store::{
    check_conclusion, ConcludeOutcome, Conclusion, Conclusions, CountedRetrieval, StagedChunk,
    Staging, StoreError,
};
use crate::tally::Chunk;
use ucanto::principal::Did;

impl Conclusions for DynamoStore {
    /// [`Conclusions::conclude`](crate::store::Conclusions::conclude): attempts, re-decided
    /// while cancelled.
    fn conclude(&self, c: &Conclusion) -> Result<ConcludeOutcome, StoreError> {
        let summed = check_conclusion(c)?;
        // Listed first: a space the conclusion counts is always listed (one
        // whose conclusion then loses is listed with the egress it has).
        self.list_billed(&summed)?;
        let mut attempt = Attempt::new(c);
        let outcome = self.retry(|| self.conclude_once(c, &summed, &mut attempt))?;
        // Staged summaries served their purpose (their pages stay: they
        // are the claims).
        self.drop_staged(&c.batch);
        Ok(outcome)
    }

    /// [`Conclusions::stage_chunks`](crate::store::Conclusions::stage_chunks): each chunk's
    /// counted retrievals become claims pages of the staging's receipt, then
    /// a small summary item says the chunk is in (written last, so a
    /// summary means its pages are all there).
    fn stage_chunks(&self, staging: &Staging, chunks: &[(Cid, Vec<u8>)]) -> Result<(), StoreError> {
        let attempt = staging.attempt();
        for (cid, bytes) in chunks {
            if !staging.tally.contains(cid) {
                return Err(StoreError::Invalid(format!(
                    "chunk {cid} is not one of the tally's"
                )));
            }
            let chunk = crate::store::staged_chunk(&staging.batch, cid, Some(bytes.clone()))?;
            let count = chunk.counted.len() as u64;
            let hours = self.write_pages(
                &staging.node,
                &staging.batch,
                &attempt,
                &format!("c{cid}"),
                &chunk.counted,
                staging.claims_end,
            )?;
            let rest = Chunk {
                counted: Vec::new(),
                ..chunk
            }
            .encode(staging.batch)
            .map_err(|e| StoreError::Invalid(format!("tally chunk {cid}: {e}")))?;
            let hours: Vec<u8> = hours
                .iter()
                .flat_map(|h| u32::try_from(*h).unwrap_or(u32::MAX).to_be_bytes())
                .collect();
            self.block_on(
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .item("pk", s(&staged_pk(&staging.batch)))
                    .item("sk", s(&format!("{attempt}#{cid}")))
                    .item("body", AttributeValue::B(rest.bytes.to_vec().into()))
                    .item("count", n(count))
                    .item("hours", AttributeValue::B(hours.into()))
                    .send(),
            )
            .map_err(backend)?;
        }
        Ok(())
    }

    /// [`Conclusions::staged_chunks`](crate::store::Conclusions::staged_chunks): read from
    /// the summaries.
    fn staged_chunks(
        &self,
        staging: &Staging,
        cids: &[Cid],
    ) -> Result<Vec<Option<StagedChunk>>, StoreError> {
        Ok(self
            .summaries(staging, cids)?
            .into_iter()
            .map(|summary| summary.map(|s| s.chunk))
            .collect())
    }

    /// [`Conclusions::staged_chunk_ids`](crate::store::Conclusions::staged_chunk_ids).
    fn staged_chunk_ids(&self, staging: &Staging) -> Result<Vec<Cid>, StoreError> {
        let prefix = format!("{}#", staging.attempt());
        self.query(
            &staged_pk(&staging.batch),
            &prefix,
            &format!("{prefix}~"),
            None,
        )?
        .iter()
        .map(|item| {
            let sk = get_s(item, "sk")?;
            parse_cid(sk.strip_prefix(&prefix).unwrap_or_default())
        })
        .collect()
    }

    /// [`Conclusions::receipt`](crate::store::Conclusions::receipt): the
    /// stored consolidate receipt.
    fn receipt(&self, consolidate_invocation: &Cid) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get((&receipt_pk(consolidate_invocation), "receipt"))? {
            None => Ok(None),
            Some(item) => match item.get("body") {
                Some(AttributeValue::B(b)) => Ok(Some(b.clone().into_inner())),
                _ => Err(StoreError::Corrupt("receipt body is not bytes".into())),
            },
        }
    }

    /// [`Conclusions::counted`](crate::store::Conclusions::counted): read from the node's
    /// pages of each retrieval's hour (cached while the node's version
    /// stays).
    fn counted(
        &self,
        node: &Did,
        retrievals: &[CountedRetrieval],
    ) -> Result<Vec<Option<Cid>>, StoreError> {
        let version = self.node_version(node.as_str())?;
        self.counted_by(node, version, retrievals)
    }

    fn drop_ended_claims(&self, _now: u64) -> Result<u64, StoreError> {
        // The table's time to live deletes claims whose `ttl` has passed.
        Ok(0)
    }
}

/// A staged chunk's summary: what it adds, and the hours of its pages.
pub(super) struct Summary {
    pub(super) chunk: StagedChunk,
    pub(super) hours: Vec<u64>,
}

impl DynamoStore {
    /// The summaries of the chunks `cids` staged for `staging`, in order
    /// (`None` where missing).
    pub(super) fn summaries(
        &self,
        staging: &Staging,
        cids: &[Cid],
    ) -> Result<Vec<Option<Summary>>, StoreError> {
        let pk = staged_pk(&staging.batch);
        let attempt = staging.attempt();
        let keys: Vec<(String, String)> = cids
            .iter()
            .map(|c| (pk.clone(), format!("{attempt}#{c}")))
            .collect();
        let mut found = self.get_many(&keys)?;
        keys.iter()
            .zip(cids)
            .map(|(key, cid)| {
                let Some(item) = found.remove(key) else {
                    return Ok(None);
                };
                let body = match item.get("body") {
                    Some(AttributeValue::B(b)) => b.as_ref().to_vec(),
                    _ => return Err(StoreError::Corrupt("staged summary without body".into())),
                };
                let block = ucanto::dag::Block {
                    cid: ucanto::dag::cid_of(ucanto::dag::DAG_CBOR, &body),
                    bytes: body.into(),
                };
                let chunk = Chunk::decode(&staging.batch, &block)
                    .map_err(|e| StoreError::Corrupt(format!("staged summary of {cid}: {e}")))?;
                let hours = match item.get("hours") {
                    Some(AttributeValue::B(b)) => b
                        .as_ref()
                        .chunks_exact(4)
                        .map(|h| u64::from(u32::from_be_bytes(h.try_into().unwrap_or_default())))
                        .collect(),
                    _ => return Err(StoreError::Corrupt("staged summary without hours".into())),
                };
                Ok(Some(Summary {
                    chunk: StagedChunk {
                        usage: chunk.usage,
                        non_billable: chunk.non_billable,
                        counted: get_u64(&item, "count")?,
                    },
                    hours,
                }))
            })
            .collect()
    }

    /// The staged parts of `c`: each chunk of its staged tally with its
    /// summary; one not staged for its receipt is [`StoreError::Invalid`].
    pub(super) fn staged_parts(&self, c: &Conclusion) -> Result<Vec<(Cid, Summary)>, StoreError> {
        if c.staged_tally.is_empty() {
            return Ok(Vec::new());
        }
        // `get_many` reads them in requests of as many as DynamoDB takes.
        let summaries = self.summaries(&Staging::from(c), &c.staged_tally)?;
        c.staged_tally
            .iter()
            .zip(summaries)
            .map(|(cid, summary)| {
                let summary = summary.ok_or_else(|| {
                    StoreError::Invalid(format!("tally chunk {cid} is not staged"))
                })?;
                Ok((*cid, summary))
            })
            .collect()
    }

    /// Deletes the staged summaries of `batch`, as far as it goes: one left
    /// behind by a failure is harmless (never read again).
    pub(super) fn drop_staged(&self, batch: &Cid) {
        let pk = staged_pk(batch);
        if let Ok(staged) = self.query(&pk, "0", "~", None) {
            for item in staged {
                if let Ok(sk) = get_s(&item, "sk") {
                    let _ = self.block_on(
                        self.client
                            .delete_item()
                            .table_name(&self.table)
                            .key("pk", s(&pk))
                            .key("sk", s(&sk))
                            .send(),
                    );
                }
            }
        }
    }
}
