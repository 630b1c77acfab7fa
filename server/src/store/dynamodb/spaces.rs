//! The registry of billable spaces: one item per space, plus the `spaces`
//! partition that lists them in DID order.

use ucanto::principal::Did;

use super::items::{decode_space, did_range, get_s, parse_did, s, space_entry_pk};
use super::table::backend;
use super::DynamoStore;
use crate::store::{SpaceEntry, StoreError};

impl DynamoStore {
    /// [`Store::put_space`](super::Store::put_space).
    pub(super) fn put_space_entry(&self, entry: &SpaceEntry) -> Result<(), StoreError> {
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(&space_entry_pk(&entry.space)))
            .item("sk", s("space"))
            .item("space", s(entry.space.as_str()))
            .item("provider", s(entry.provider.as_str()));
        if let Some(customer) = &entry.customer {
            request = request.item("customer", s(customer.as_str()));
        }
        self.block_on(request.send()).map_err(backend)?;
        // The list of spaces: one partition, sorted by DID.
        self.block_on(
            self.client
                .put_item()
                .table_name(&self.table)
                .item("pk", s("spaces"))
                .item("sk", s(entry.space.as_str()))
                .send(),
        )
        .map_err(backend)?;
        Ok(())
    }

    /// [`Store::remove_space`](super::Store::remove_space).
    pub(super) fn remove_space_entry(&self, space: &Did) -> Result<bool, StoreError> {
        let out = self
            .block_on(
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .key("pk", s(&space_entry_pk(space)))
                    .key("sk", s("space"))
                    .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
                    .send(),
            )
            .map_err(backend)?;
        self.block_on(
            self.client
                .delete_item()
                .table_name(&self.table)
                .key("pk", s("spaces"))
                .key("sk", s(space.as_str()))
                .send(),
        )
        .map_err(backend)?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }

    /// [`Store::space`](super::Store::space).
    pub(super) fn space_entry(&self, space: &Did) -> Result<Option<SpaceEntry>, StoreError> {
        self.get((&space_entry_pk(space), "space"))?
            .map(|item| decode_space(&item))
            .transpose()
    }

    /// [`Store::spaces`](super::Store::spaces): the list, then each entry.
    pub(super) fn space_entries(&self) -> Result<Vec<SpaceEntry>, StoreError> {
        let listed = self.query("spaces", "did:", "did;", None)?;
        let mut entries = Vec::new();
        for item in listed {
            let space = parse_did(&get_s(&item, "sk")?)?;
            if let Some(entry) = self.space_entry(&space)? {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// [`Store::spaces_page`](super::Store::spaces_page): the list of
    /// spaces, then their entries.
    pub(super) fn space_entries_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SpaceEntry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (lo, hi) = did_range(prefix, after);
        let listed = self.query("spaces", &lo, &hi, Some(limit))?;
        let mut keys = Vec::with_capacity(listed.len());
        for item in &listed {
            let space = parse_did(&get_s(item, "sk")?)?;
            keys.push((space_entry_pk(&space), "space".to_string()));
        }
        let entries = self.get_many(&keys)?;
        keys.iter()
            .filter_map(|key| entries.get(key))
            .map(decode_space)
            .collect()
    }
}
