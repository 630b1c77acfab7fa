//! The DynamoDB calls every operation is made of: strongly consistent reads
//! (one item, many items, a range of one partition) and `TransactWriteItems`
//! with the write items they are built from.

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    Delete, KeysAndAttributes, PutRequest, TransactWriteItem, Update, WriteRequest,
};

use super::items::{get_s, n, s, Item};
use super::table::{backend, build_error, fresh_id, RETRIES};
use super::DynamoStore;
use crate::store::StoreError;

/// Items an operation may put in one transaction: DynamoDB takes 100, and
/// [`DynamoStore::transact`] adds the check of the table's format.
pub(super) const TX_MAX: usize = 99;
/// Keys per `BatchGetItem`.
const GET_MAX: usize = 100;
/// Items per `BatchWriteItem`.
const PUT_MAX: usize = 25;

/// Whether a transaction went through.
pub(super) enum Tx {
    /// Committed.
    Done,
    /// Cancelled by a condition (or an overflow); the reason codes, one per
    /// item. Cancellations by load are retried by [`DynamoStore::transact`]
    /// and never come back as this.
    Cancelled(Vec<String>),
}

/// Sends of one transaction before it counts as throttled.
const BUSY_RETRIES: usize = 32;

/// What one send of a transaction came to.
enum Sent {
    Done,
    Cancelled(Vec<String>),
    /// DynamoDB was busy: nothing ran (`false`), or it may have run (`true`:
    /// a 500, a timeout), so it is sent again with the same token, which
    /// DynamoDB answers as the first when it ran.
    Busy(bool),
}

/// Whether a cancellation is the load's, not a condition's: every item's
/// reason is none, a conflict with another transaction, or throttling
/// (none given: a transaction with the same token in progress).
fn cancelled_by_load(reasons: &[String]) -> bool {
    reasons.iter().all(|r| {
        matches!(
            r.as_str(),
            "None" | "TransactionConflict" | "ThrottlingError" | "ProvisionedThroughputExceeded"
        )
    })
}

impl DynamoStore {
    /// One item, read strongly consistent.
    pub(super) fn get(&self, (pk, sk): (&str, &str)) -> Result<Option<Item>, StoreError> {
        let out = self
            .block_on(
                self.client
                    .get_item()
                    .table_name(&self.table)
                    .key("pk", s(pk))
                    .key("sk", s(sk))
                    .consistent_read(true)
                    .send(),
            )
            .map_err(backend)?;
        Ok(out.item)
    }

    /// Strongly consistent reads of many items, keyed by `(pk, sk)`.
    pub(super) fn get_many(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), Item>, StoreError> {
        let mut found = HashMap::new();
        let unique: Vec<&(String, String)> = {
            let mut seen = HashSet::new();
            keys.iter().filter(|k| seen.insert(*k)).collect()
        };
        for chunk in unique.chunks(GET_MAX) {
            let mut request = KeysAndAttributes::builder().consistent_read(true);
            for (pk, sk) in chunk {
                request = request.keys(HashMap::from([
                    ("pk".to_string(), s(pk)),
                    ("sk".to_string(), s(sk)),
                ]));
            }
            let mut pending = Some(request.build().map_err(build_error)?);
            let mut rounds = 0;
            while let Some(request) = pending.take() {
                rounds += 1;
                if rounds > RETRIES {
                    return Err(StoreError::Throttled {
                        operation: "BatchGetItem",
                    });
                }
                let out = self
                    .block_on(
                        self.client
                            .batch_get_item()
                            .request_items(&self.table, request)
                            .send(),
                    )
                    .map_err(backend)?;
                for item in out
                    .responses
                    .and_then(|mut r| r.remove(&self.table))
                    .unwrap_or_default()
                {
                    let key = (get_s(&item, "pk")?, get_s(&item, "sk")?);
                    found.insert(key, item);
                }
                pending = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .filter(|k| !k.keys().is_empty());
                if pending.is_some() {
                    self.retries
                        .unprocessed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    super::table::backoff(rounds);
                }
            }
        }
        Ok(found)
    }

    /// Unconditional puts of items that hold only their key, for lists whose
    /// entries are idempotent (not transactional, hence cheaper).
    pub(super) fn put_keys(&self, keys: &[(String, String)]) -> Result<(), StoreError> {
        for chunk in keys.chunks(PUT_MAX) {
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|(pk, sk)| {
                    let put = PutRequest::builder()
                        .item("pk", s(pk))
                        .item("sk", s(sk))
                        .build()
                        .map_err(build_error)?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<Result<_, StoreError>>()?;
            let mut rounds = 0;
            while !pending.is_empty() {
                rounds += 1;
                if rounds > RETRIES {
                    return Err(StoreError::Throttled {
                        operation: "BatchWriteItem",
                    });
                }
                let out = self
                    .block_on(
                        self.client
                            .batch_write_item()
                            .request_items(&self.table, std::mem::take(&mut pending))
                            .send(),
                    )
                    .map_err(backend)?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.table))
                    .unwrap_or_default();
                if !pending.is_empty() {
                    self.retries
                        .unprocessed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    super::table::backoff(rounds);
                }
            }
        }
        Ok(())
    }

    /// All items of partition `pk` with `lo <= sk <= hi`, in sort order,
    /// at most `limit` (strongly consistent).
    pub(super) fn query(
        &self,
        pk: &str,
        lo: &str,
        hi: &str,
        limit: Option<usize>,
    ) -> Result<Vec<Item>, StoreError> {
        self.query_ordered(pk, lo, hi, limit, true)
    }

    /// [`DynamoStore::query`] from the other end: the last `limit` items,
    /// in reverse sort order.
    pub(super) fn query_last(
        &self,
        pk: &str,
        lo: &str,
        hi: &str,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        self.query_ordered(pk, lo, hi, Some(limit), false)
    }

    fn query_ordered(
        &self,
        pk: &str,
        lo: &str,
        hi: &str,
        limit: Option<usize>,
        forward: bool,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        if limit == Some(0) {
            return Ok(items);
        }
        let mut start: Option<Item> = None;
        loop {
            let mut request = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .scan_index_forward(forward)
                .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
                .expression_attribute_values(":pk", s(pk))
                .expression_attribute_values(":lo", s(lo))
                .expression_attribute_values(":hi", s(hi))
                .set_exclusive_start_key(start.take());
            if let Some(limit) = limit {
                let left = limit.saturating_sub(items.len()).clamp(1, 1000);
                request = request.limit(left as i32);
            }
            let out = self.block_on(request.send()).map_err(backend)?;
            items.extend(out.items.unwrap_or_default());
            if limit.is_some_and(|l| items.len() >= l) {
                items.truncate(limit.unwrap_or(usize::MAX));
                return Ok(items);
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(items),
            }
        }
    }

    /// One `TransactWriteItems`, sent until DynamoDB decides it: when load
    /// cancels or refuses it (another transaction on an item, throttling, a
    /// 500), the same transaction is sent again after a jittered back-off,
    /// never re-decided, so a large conclusion does not start over for a
    /// busy moment. A condition that failed is a [`Tx::Cancelled`].
    pub(super) fn transact(&self, items: Vec<TransactWriteItem>) -> Result<Tx, StoreError> {
        debug_assert!(items.len() <= TX_MAX);
        // Every write checks the table's format: a replica of another
        // format (the table upgraded under it) can change nothing.
        let mut items = items;
        items.push(self.format_check()?);
        let mut token = fresh_id();
        for round in 0..BUSY_RETRIES {
            match self.send_transaction(&items, &token)? {
                Sent::Done => return Ok(Tx::Done),
                Sent::Cancelled(mut reasons) if !cancelled_by_load(&reasons) => {
                    if reasons.pop().as_deref() == Some("ConditionalCheckFailed") {
                        return Err(self.format_changed());
                    }
                    return Ok(Tx::Cancelled(reasons));
                }
                Sent::Cancelled(_) | Sent::Busy(false) => token = fresh_id(),
                Sent::Busy(true) => {}
            }
            self.retries
                .busy
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            super::table::backoff(round);
        }
        Err(StoreError::Throttled {
            operation: "TransactWriteItems",
        })
    }

    fn send_transaction(
        &self,
        items: &[TransactWriteItem],
        token: &str,
    ) -> Result<Sent, StoreError> {
        let out = self.block_on(
            self.client
                .transact_write_items()
                // The SDK retries (after a timeout, say) with the same token,
                // which DynamoDB answers as the first try: idempotent.
                .client_request_token(token)
                .set_transact_items(Some(items.to_vec()))
                .send(),
        );
        let e = match out {
            Ok(_) => return Ok(Sent::Done),
            Err(e) => e,
        };
        use aws_sdk_dynamodb::error::SdkError;
        Ok(match &e {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => Sent::Busy(true),
            _ => match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => Sent::Cancelled(
                    c.cancellation_reasons()
                        .iter()
                        .map(|r| r.code().unwrap_or("None").to_string())
                        .collect(),
                ),
                Some(TransactWriteItemsError::TransactionInProgressException(_)) => {
                    Sent::Cancelled(Vec::new())
                }
                Some(
                    TransactWriteItemsError::ThrottlingException(_)
                    | TransactWriteItemsError::ProvisionedThroughputExceededException(_)
                    | TransactWriteItemsError::RequestLimitExceeded(_),
                ) => Sent::Busy(false),
                Some(TransactWriteItemsError::InternalServerError(_)) => Sent::Busy(true),
                _ => return Err(backend(e)),
            },
        })
    }

    /// `Delete` of one item, unconditional.
    pub(super) fn delete(&self, (pk, sk): (&str, &str)) -> Result<TransactWriteItem, StoreError> {
        let delete = Delete::builder()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().delete(delete).build())
    }

    /// `ADD` of numbers to one item, with an optional condition, and never
    /// past `u64::MAX`: each number must have room for its delta (DynamoDB
    /// numbers would go on to 38 digits), else the write's condition fails
    /// and [`DynamoStore::overflows`] tells why.
    pub(super) fn add(&self, add: &Add) -> Result<TransactWriteItem, StoreError> {
        let Add {
            pk,
            sk,
            deltas,
            condition,
            version,
        } = add;
        let expression = deltas
            .iter()
            .enumerate()
            .map(|(i, _)| format!("#a{i} :a{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let room = deltas
            .iter()
            .enumerate()
            .map(|(i, _)| format!("(attribute_not_exists(#a{i}) OR #a{i} <= :r{i})"));
        let guard = condition
            .map(|c| format!("({c})"))
            .into_iter()
            .chain(version.map(|_| "#cv = :cv".to_string()))
            .chain(room)
            .collect::<Vec<_>>()
            .join(" AND ");
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression(format!("ADD {expression}"))
            .condition_expression(guard);
        if let Some(version) = version {
            update = update
                .expression_attribute_names("#cv", "cv")
                .expression_attribute_values(":cv", n(*version));
        }
        for (i, (name, delta)) in deltas.iter().enumerate() {
            update = update
                .expression_attribute_names(format!("#a{i}"), name.as_str())
                .expression_attribute_values(format!(":a{i}"), n(*delta))
                .expression_attribute_values(format!(":r{i}"), n(u64::MAX - delta));
        }
        Ok(TransactWriteItem::builder()
            .update(update.build().map_err(build_error)?)
            .build())
    }

    /// Whether one of `adds` (item, then `(number, delta)`s) would take a
    /// number past `u64::MAX`: the refusal redb gives, `Invalid`.
    pub(super) fn overflows(&self, adds: &[Add]) -> Result<Option<StoreError>, StoreError> {
        let keys: Vec<(String, String)> =
            adds.iter().map(|a| (a.pk.clone(), a.sk.clone())).collect();
        let found = self.get_many(&keys)?;
        for add in adds {
            let Some(item) = found.get(&(add.pk.clone(), add.sk.clone())) else {
                continue;
            };
            for (name, delta) in &add.deltas {
                let now = match item.get(name) {
                    Some(_) => super::items::get_u64(item, name)?,
                    None => 0,
                };
                if now.checked_add(*delta).is_none() {
                    return Ok(Some(StoreError::Invalid("total overflows u64".into())));
                }
            }
        }
        Ok(None)
    }
}

/// An `ADD` to one item: its key, the numbers it adds to, and a condition
/// of its own if any.
pub(super) struct Add {
    pub(super) pk: String,
    pub(super) sk: String,
    pub(super) deltas: Vec<(String, u64)>,
    pub(super) condition: Option<&'static str>,
    /// The item's version (`cv`) must be this.
    pub(super) version: Option<u64>,
}
