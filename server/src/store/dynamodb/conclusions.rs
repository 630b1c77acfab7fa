//! [`Conclusions`] on DynamoDB: the conclude chain (`conclude.rs`), staged
//! tally chunks (one item each, under the batch), stored receipts and
//! counted retrievals.

use aws_sdk_dynamodb::types::AttributeValue;
use cid::Cid;

use super::conclude::ClaimState;
use super::items::{get_s, parse_cid, receipt_pk, s, staged_pk};
use super::table::backend;
use super::DynamoStore;
use crate::store::{check_conclusion, ConcludeOutcome, Conclusion, Conclusions, StoreError};

impl Conclusions for DynamoStore {
    /// [`Conclusions::conclude`](crate::store::Conclusions::conclude): attempts, re-decided
    /// while cancelled.
    fn conclude(&self, c: &Conclusion) -> Result<ConcludeOutcome, StoreError> {
        let summed = check_conclusion(c)?;
        let whole;
        let c = if c.staged_tally.is_empty() {
            c
        } else {
            whole = self.with_staged_tally(c)?;
            &whole
        };
        // Listed first: a space the conclusion counts is always listed (one
        // whose conclusion then loses is listed with the egress it has).
        self.list_billed(&summed)?;
        let outcome = self.retry(|| self.conclude_once(c, &summed))?;
        // Staged chunks served their purpose.
        self.drop_staged(&c.batch);
        Ok(outcome)
    }

    /// [`Conclusions::stage_chunks`](crate::store::Conclusions::stage_chunks).
    fn stage_chunks(&self, batch: &Cid, chunks: &[(Cid, Vec<u8>)]) -> Result<(), StoreError> {
        for (cid, bytes) in chunks {
            self.block_on(
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .item("pk", s(&staged_pk(batch)))
                    .item("sk", s(&cid.to_string()))
                    .item("body", AttributeValue::B(bytes.clone().into()))
                    .send(),
            )
            .map_err(backend)?;
        }
        Ok(())
    }

    /// [`Conclusions::staged_chunks`](crate::store::Conclusions::staged_chunks).
    fn staged_chunks(&self, batch: &Cid, cids: &[Cid]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let pk = staged_pk(batch);
        let keys: Vec<(String, String)> =
            cids.iter().map(|c| (pk.clone(), c.to_string())).collect();
        let mut found = self.get_many(&keys)?;
        keys.iter()
            .map(
                |key| match found.remove(key).and_then(|mut i| i.remove("body")) {
                    None => Ok(None),
                    Some(AttributeValue::B(b)) => Ok(Some(b.into_inner())),
                    Some(_) => Err(StoreError::Corrupt("staged chunk is not bytes".into())),
                },
            )
            .collect()
    }

    /// [`Conclusions::staged_chunk_ids`](crate::store::Conclusions::staged_chunk_ids).
    fn staged_chunk_ids(&self, batch: &Cid) -> Result<Vec<Cid>, StoreError> {
        self.query(&staged_pk(batch), "0", "~", None)?
            .iter()
            .map(|item| parse_cid(&get_s(item, "sk")?))
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

    /// [`Conclusions::counted`](crate::store::Conclusions::counted): the batch of each
    /// receipt's claim, where the claim counts.
    fn counted(&self, receipts: &[Cid]) -> Result<Vec<Option<Cid>>, StoreError> {
        Ok(self
            .claims(receipts)?
            .into_iter()
            .map(|c| {
                c.filter(|c| c.state == ClaimState::Counted)
                    .map(|c| c.batch)
            })
            .collect())
    }

    fn drop_ended_claims(&self, _now: u64) -> Result<u64, StoreError> {
        // The table's time to live deletes claims whose `ttl` has passed.
        Ok(0)
    }
}

impl DynamoStore {
    /// Deletes the staged chunks of `batch`, as far as it goes: a chunk left
    /// behind by a failure is harmless (content-addressed, never read again).
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
