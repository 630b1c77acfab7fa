//! The upload service's consumer table on DynamoDB, read only.
//!
//! Upstream schema: one item per subscription of a consumer (a space) to a
//! provider, with `consumer`, `provider`, `customer` and `subscription`
//! attributes; a global secondary index on `consumer` (upstream
//! `CONSUMER_CONSUMER_INDEX_NAME`, usually `consumer`) finds a space's
//! provisions, one on `customer` (`CONSUMER_CUSTOMER_INDEX_NAME`) an
//! account's spaces.

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use ucanto::principal::Did;

use super::{Provision, SpaceRegistry};
use crate::store::dynamodb::{backend, connect_client};
use crate::store::StoreError;

/// Where the consumer table is.
#[derive(Clone, Debug)]
pub struct ConsumerTableConfig {
    /// The DynamoDB endpoint.
    pub endpoint: String,
    /// The table (upstream `CONSUMER_TABLE_NAME`).
    pub table: String,
    /// The index on `consumer` (upstream `CONSUMER_CONSUMER_INDEX_NAME`).
    pub consumer_index: String,
    /// The index on `customer` (upstream `CONSUMER_CUSTOMER_INDEX_NAME`).
    pub customer_index: String,
}

/// The consumer table, as a [`SpaceRegistry`].
pub struct ConsumerTable {
    client: Client,
    runtime: Option<tokio::runtime::Runtime>,
    config: ConsumerTableConfig,
}

impl Drop for ConsumerTable {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids in async code.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl ConsumerTable {
    /// Connects (no request is made until a lookup). Must not be called
    /// from async code.
    pub fn connect(config: ConsumerTableConfig) -> Result<Self, StoreError> {
        let (client, runtime) = connect_client(&config.endpoint)?;
        Ok(ConsumerTable {
            client,
            runtime: Some(runtime),
            config,
        })
    }

    /// Every item of `index` whose `key` is `value`, all pages.
    fn query(
        &self,
        index: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<std::collections::HashMap<String, AttributeValue>>, StoreError> {
        let runtime = self.runtime.as_ref().expect("runtime lives until drop");
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = runtime
                .block_on(
                    self.client
                        .query()
                        .table_name(&self.config.table)
                        .index_name(index)
                        .key_condition_expression("#k = :v")
                        .expression_attribute_names("#k", key)
                        .expression_attribute_values(":v", AttributeValue::S(value.into()))
                        .set_exclusive_start_key(start.take())
                        .send(),
                )
                .map_err(backend)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(next) if !next.is_empty() => start = Some(next),
                _ => return Ok(items),
            }
        }
    }
}

fn did_attribute(
    item: &std::collections::HashMap<String, AttributeValue>,
    key: &str,
) -> Result<Option<Did>, StoreError> {
    match item.get(key) {
        None => Ok(None),
        Some(AttributeValue::S(text)) => Did::parse(text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("consumer table {key} {text:?}: {e}"))),
        Some(_) => Err(StoreError::Corrupt(format!(
            "consumer table {key} is not a string"
        ))),
    }
}

impl SpaceRegistry for ConsumerTable {
    fn provisions(&self, space: &Did) -> Result<Vec<Provision>, StoreError> {
        let items = self.query(&self.config.consumer_index, "consumer", space.as_str())?;
        let mut provisions = Vec::new();
        for item in &items {
            if let Some(provider) = did_attribute(item, "provider")? {
                provisions.push(Provision {
                    provider,
                    customer: did_attribute(item, "customer")?,
                });
            }
        }
        Ok(provisions)
    }

    fn customer_spaces(&self, account: &Did) -> Result<Vec<Did>, StoreError> {
        let items = self.query(&self.config.customer_index, "customer", account.as_str())?;
        let mut spaces = Vec::new();
        for item in &items {
            if let Some(space) = did_attribute(item, "consumer")? {
                if !spaces.contains(&space) {
                    spaces.push(space);
                }
            }
        }
        Ok(spaces)
    }
}
