//! Tally chunks staged before their conclusion: items of partition
//! `staged#<batch>`, one per chunk CID.

use aws_sdk_dynamodb::types::AttributeValue;
use cid::Cid;

use super::items::{get_s, parse_cid, s, staged_pk};
use super::table::backend;
use super::DynamoStore;
use crate::store::StoreError;

impl DynamoStore {
    /// [`Store::stage_chunks`](super::Store::stage_chunks).
    pub(super) fn stage(&self, batch: &Cid, chunks: &[(Cid, Vec<u8>)]) -> Result<(), StoreError> {
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

    /// [`Store::staged_chunks`](super::Store::staged_chunks).
    pub(super) fn staged(
        &self,
        batch: &Cid,
        cids: &[Cid],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
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

    /// [`Store::staged_chunk_ids`](super::Store::staged_chunk_ids).
    pub(super) fn staged_ids(&self, batch: &Cid) -> Result<Vec<Cid>, StoreError> {
        self.query(&staged_pk(batch), "0", "~", None)?
            .iter()
            .map(|item| parse_cid(&get_s(item, "sk")?))
            .collect()
    }

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
