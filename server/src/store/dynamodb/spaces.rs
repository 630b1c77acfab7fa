//! The registry of billable spaces: one item per space, plus the `spaces`
//! partition that lists them in DID order.

use ucanto::principal::Did;

use super::items::{customer_pk, decode_space, get_s, opt_s, parse_did, s, space_entry_pk, Item};
use super::table::backend;
use super::DynamoStore;
use crate::store::{SpaceEntry, SpaceStore, StoreError};

impl DynamoStore {
    /// Deletes one item, unconditionally.
    fn delete_key(&self, pk: &str, sk: &str) -> Result<(), StoreError> {
        self.block_on(
            self.client
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(pk))
                .key("sk", s(sk))
                .send(),
        )
        .map_err(backend)?;
        Ok(())
    }

    /// The registry entries of the spaces a list names (its items' `sk`),
    /// in its order, read a hundred at a time; listed spaces without an
    /// entry (removed meanwhile) are left out.
    pub(super) fn entries_listed(&self, listed: &[Item]) -> Result<Vec<SpaceEntry>, StoreError> {
        let mut keys = Vec::with_capacity(listed.len());
        for item in listed {
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

impl SpaceStore for DynamoStore {
    /// [`SpaceStore::put_space`](crate::store::SpaceStore::put_space): the customer's index
    /// entry first (an index may name a space whose entry says otherwise,
    /// never miss one), then the entry, the list, and the old customer's
    /// index entry goes.
    fn put_space(&self, entry: &SpaceEntry) -> Result<(), StoreError> {
        let space = entry.space.as_str();
        if let Some(customer) = &entry.customer {
            self.put_keys(&[(customer_pk(customer.as_str()), space.to_string())])?;
        }
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(&space_entry_pk(&entry.space)))
            .item("sk", s("space"))
            .item("space", s(space))
            .item("provider", s(entry.provider.as_str()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld);
        if let Some(customer) = &entry.customer {
            request = request.item("customer", s(customer.as_str()));
        }
        let old = self.block_on(request.send()).map_err(backend)?;
        // The list of spaces: one partition, sorted by DID.
        self.put_keys(&[("spaces".to_string(), space.to_string())])?;
        let old_customer = match &old.attributes {
            Some(item) => opt_s(item, "customer")?,
            None => None,
        };
        if let Some(old_customer) = old_customer {
            if Some(old_customer.as_str()) != entry.customer.as_ref().map(|c| c.as_str()) {
                self.delete_key(&customer_pk(&old_customer), space)?;
            }
        }
        Ok(())
    }

    /// [`SpaceStore::remove_space`](crate::store::SpaceStore::remove_space).
    fn remove_space(&self, space: &Did) -> Result<bool, StoreError> {
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
        self.delete_key("spaces", space.as_str())?;
        let old = out.attributes.filter(|a| !a.is_empty());
        let customer = match &old {
            Some(item) => opt_s(item, "customer")?,
            None => None,
        };
        if let Some(customer) = customer {
            self.delete_key(&customer_pk(&customer), space.as_str())?;
        }
        Ok(old.is_some())
    }

    /// [`SpaceStore::space`](crate::store::SpaceStore::space).
    fn space(&self, space: &Did) -> Result<Option<SpaceEntry>, StoreError> {
        self.get((&space_entry_pk(space), "space"))?
            .map(|item| decode_space(&item))
            .transpose()
    }

    /// [`SpaceStore::spaces`](crate::store::SpaceStore::spaces): the list, then the entries.
    fn spaces(&self) -> Result<Vec<SpaceEntry>, StoreError> {
        let listed = self.query("spaces", "did:", "did;", None)?;
        self.entries_listed(&listed)
    }

    /// [`SpaceStore::customer_spaces`](crate::store::SpaceStore::customer_spaces): the
    /// customer's index, checked against the entries.
    fn customer_spaces(&self, account: &Did) -> Result<Vec<Did>, StoreError> {
        let listed = self.query(&customer_pk(account.as_str()), "did:", "did;", None)?;
        Ok(self
            .entries_listed(&listed)?
            .into_iter()
            .filter(|entry| entry.customer.as_ref() == Some(account))
            .map(|entry| entry.space)
            .collect())
    }
}
