//! Pending records per node, for the cap on a node's queue
//! ([`Records::put_within`](crate::store::Records::put_within)).
//!
//! One item per node, `pending#<node DID>`/`pending`, attribute `count`: the
//! node's pending records that count (below). `put` reads it and, in the
//! transaction that puts the record, sets it to the value read plus one,
//! conditioned on that value (absent: `attribute_not_exists`), so two
//! replicas tracking for one node at once cannot both pass the cap: the
//! second is cancelled, re-reads and decides again. The record is marked
//! as counted (`pc`, kept by every later write of the record), and the
//! final transaction of its conclusion `ADD`s −1 to the count, so the count
//! is exact whenever a transaction ends.
//!
//! Records tracked before this version are not marked: they are neither in
//! the count nor taken off it, so a node may have that many more pending
//! for a while after an upgrade. A replica of an earlier version drops the
//! mark when it writes a record (lease, reschedule), and does not take its
//! conclusion off the count: upgrade every replica together.

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};

use super::items::{get_u64, n, s};
use super::table::build_error;
use super::DynamoStore;
use crate::store::StoreError;

/// The attribute a record counted in its node's pending count carries.
pub(super) const COUNTED: &str = "pc";

/// The key of `node`'s pending count.
fn key(node: &str) -> (String, String) {
    (format!("pending#{node}"), "pending".to_string())
}

impl DynamoStore {
    /// `node`'s pending count as read (strongly consistent), `None` when it
    /// has no item yet.
    pub(super) fn pending_of(&self, node: &str) -> Result<Option<u64>, StoreError> {
        let (pk, sk) = key(node);
        self.get((&pk, &sk))?
            .map(|item| get_u64(&item, "count"))
            .transpose()
    }

    /// The write that adds one to `node`'s count, read as `read`: cancelled
    /// if it changed meanwhile.
    pub(super) fn pending_added(
        &self,
        node: &str,
        read: Option<u64>,
    ) -> Result<TransactWriteItem, StoreError> {
        let (pk, sk) = key(node);
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .key("sk", s(&sk))
            .update_expression("SET #c = :new")
            .expression_attribute_names("#c", "count")
            .expression_attribute_values(":new", n(read.unwrap_or(0).saturating_add(1)));
        update = match read {
            None => update.condition_expression("attribute_not_exists(pk)"),
            Some(read) => update
                .condition_expression("#c = :read")
                .expression_attribute_values(":read", n(read)),
        };
        Ok(TransactWriteItem::builder()
            .update(update.build().map_err(build_error)?)
            .build())
    }

    /// The write that takes one off `node`'s count, for a counted record
    /// being concluded.
    pub(super) fn pending_taken(&self, node: &str) -> Result<TransactWriteItem, StoreError> {
        let (pk, sk) = key(node);
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .key("sk", s(&sk))
            .update_expression("ADD #c :minus")
            .expression_attribute_names("#c", "count")
            .expression_attribute_values(":minus", AttributeValue::N("-1".into()))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }
}

/// The node whose pending count the item `(pk, sk)` is, if it is one.
pub(super) fn count_of<'a>(pk: &'a str, sk: &str) -> Option<&'a str> {
    pk.strip_prefix("pending#").filter(|_| sk == "pending")
}
