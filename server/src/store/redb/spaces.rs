//! [`SpaceStore`] on redb: table `spaces` and its index by customer.

use std::collections::BTreeMap;

use ::redb::{ReadableDatabase, ReadableTable};
use ucanto::dag::{decode_cbor, encode_cbor, Ipld};
use ucanto::principal::Did;

use super::{OrBackend, RedbStore, CUSTOMER_SPACES, SPACES};
use crate::store::{SpaceEntry, SpaceStore, StoreError};

impl SpaceStore for RedbStore {
    fn put_space(&self, entry: &SpaceEntry) -> Result<(), StoreError> {
        self.put_spaces(std::slice::from_ref(entry))
    }

    fn put_spaces(&self, entries: &[SpaceEntry]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().or_backend()?;
        {
            let mut spaces = tx.open_table(SPACES).or_backend()?;
            let mut by_customer = tx.open_table(CUSTOMER_SPACES).or_backend()?;
            for entry in entries {
                let mut map = BTreeMap::from([(
                    "provider".to_string(),
                    Ipld::String(entry.provider.to_string()),
                )]);
                if let Some(customer) = &entry.customer {
                    map.insert("customer".into(), Ipld::String(customer.to_string()));
                }
                let bytes =
                    encode_cbor(&Ipld::Map(map)).map_err(|e| StoreError::Invalid(e.to_string()))?;
                let space = entry.space.as_str();
                let old = spaces
                    .insert(space, bytes.as_slice())
                    .or_backend()?
                    .map(|old| decode_space(space, old.value()))
                    .transpose()?;
                if let Some(customer) = old.and_then(|old| old.customer) {
                    by_customer
                        .remove((customer.as_str(), space))
                        .or_backend()?;
                }
                if let Some(customer) = &entry.customer {
                    by_customer
                        .insert((customer.as_str(), space), ())
                        .or_backend()?;
                }
            }
        }
        tx.commit().or_backend()
    }

    fn remove_space(&self, space: &Did) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().or_backend()?;
        let removed = {
            let mut spaces = tx.open_table(SPACES).or_backend()?;
            let space = space.as_str();
            let old = spaces
                .remove(space)
                .or_backend()?
                .map(|old| decode_space(space, old.value()))
                .transpose()?;
            if let Some(customer) = old.as_ref().and_then(|old| old.customer.as_ref()) {
                tx.open_table(CUSTOMER_SPACES)
                    .or_backend()?
                    .remove((customer.as_str(), space))
                    .or_backend()?;
            }
            old.is_some()
        };
        tx.commit().or_backend()?;
        Ok(removed)
    }

    fn customer_spaces(&self, account: &Did) -> Result<Vec<Did>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let by_customer = tx.open_table(CUSTOMER_SPACES).or_backend()?;
        let account = account.as_str();
        let mut spaces = Vec::new();
        for entry in by_customer.range((account, "")..).or_backend()? {
            let (key, _) = entry.or_backend()?;
            let (customer, space) = key.value();
            if customer != account {
                break;
            }
            spaces.push(crate::store::parse_did(space)?);
        }
        Ok(spaces)
    }

    fn space(&self, space: &Did) -> Result<Option<SpaceEntry>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let spaces = tx.open_table(SPACES).or_backend()?;
        let entry = spaces.get(space.as_str()).or_backend()?;
        entry
            .map(|bytes| decode_space(space.as_str(), bytes.value()))
            .transpose()
    }

    fn spaces(&self) -> Result<Vec<SpaceEntry>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let spaces = tx.open_table(SPACES).or_backend()?;
        let mut entries = Vec::new();
        for entry in spaces.iter().or_backend()? {
            let (space, bytes) = entry.or_backend()?;
            entries.push(decode_space(space.value(), bytes.value())?);
        }
        Ok(entries)
    }
}

/// A registry entry from its stored form.
pub(super) fn decode_space(space: &str, bytes: &[u8]) -> Result<SpaceEntry, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt(format!("space {space}: {why}"));
    let Ipld::Map(map) = decode_cbor(bytes).map_err(|e| corrupt(&e.to_string()))? else {
        return Err(corrupt("not a map"));
    };
    let did = |key: &str| match map.get(key) {
        None => Ok(None),
        Some(Ipld::String(text)) => Did::parse(text)
            .map(Some)
            .map_err(|e| corrupt(&e.to_string())),
        Some(_) => Err(corrupt(&format!("{key} is not a string"))),
    };
    Ok(SpaceEntry {
        space: Did::parse(space).map_err(|e| corrupt(&e.to_string()))?,
        provider: did("provider")?.ok_or_else(|| corrupt("no provider"))?,
        customer: did("customer")?,
    })
}
