//! The items of the table: their keys and attributes, and the encoding of
//! records and registry entries as DynamoDB attribute maps. CIDs are written
//! as their default string form, days as `YYYY-MM-DD`, numbers as DynamoDB
//! numbers.
//!
//! | item              | `pk`                  | `sk`                                   | attributes                                       |
//! |-------------------|-----------------------|----------------------------------------|--------------------------------------------------|
//! | format            | `meta`                | `format`                               | `format` = 4 (3: claims one item per retrieval)  |
//! | record            | `rec#<batch>`         | `rec`                                  | the record's fields, `ver`, `token`?, `attempt`?, `due_pk`?, `pc`? (in its node's pending count) |
//! | node's pending count | `pending#<did>`    | `pending`                              | `count` (see `pending.rs`)                       |
//! | due index entry   | `due#<shard>`         | `<due_at:020>#<received_at:020>#<hex>` | `batch`                                          |
//! | consolidate receipt | `receipt#<consolidate>` | `receipt`                          | `body` (CAR bytes)                               |
//! | staged chunk summary | `staged#<batch>`   | `<attempt>#<chunk CID>`                | `body` (the chunk's usage, dag-cbor), `count`, `hours` |
//! | non-billable bytes | `nonbillable#<space>` | `day#<day>`                          | `bytes`                                          |
//! | registered space  | `space-entry#<space>` | `space`                                | `space`, `provider`, `customer`?                 |
//! | list of spaces    | `spaces`              | `<space DID>`                          |                                                  |
//! | claims page       | `claims#<node>#<hour>` | `<batch>#<attempt>#<part>#<n>`        | `d` (16-byte keys), `batch`, `attempt`, `ttl`?   |
//! | node total        | `node#<did>`          | `total`                                | `bytes`, `cv` (its conclusions' version)         |
//! | node daily total  | `node#<did>`          | `day#<day>`                            | `bytes`                                          |
//! | space daily total | `space#<did>`         | `day#<day>`                            | `bytes`                                          |
//! | node paid         | `nodes`               | `<node DID>`                           |                                                  |
//! | node's batch      | `nodebatches#<did>`   | `<received_at:020>#<batch>`            | `batch`                                          |
//! | rejection counts  | `rejected#<shard>`    | `rejected`                             | `failed`, `n_<error name>` (summed over the shards when read) |
//! | all nodes' egress per day | `egress#<shard>` | `day#<day>`                         | `bytes` (summed over the shards when read)        |
//! | usage row         | `space#`, `node#` or `nonbillable#<did>` | `day#<day>#<batch>`  | `bytes`, `batch`, `attempt`                      |
//! | counters          | `stats#<shard>`       | `stats`                                | `records`, `concluded`, `counted`, `nodes`, `total_bytes`, `non_billable_bytes` |
//!
//! `<shard>` is two digits, `00` to `15`: the last byte of the batch CID's
//! digest modulo [`SHARDS`], so batches spread evenly and a batch's items
//! always go to the same shard.
//!
//! The due index is the redb `due` table spread over [`SHARDS`] partitions,
//! each sorted like it (`<hex>` is the batch CID's bytes in hex) and read
//! with strongly consistent queries: a record is leasable when its entry's
//! time is `<= now`. A lease reads every shard a page at a time and takes
//! their entries oldest first, as from one index, so none is left unread
//! and none waits behind newer ones. The counters are spread the same way, each
//! `put` and `conclude` adding to its batch's shard, and `stats` sums them
//! (sixteen items in one `BatchGetItem`). So no item or partition is
//! written by every track or every conclusion; what each one writes is in
//! the module docs of [`super`].
//!
//! A record names the partition of its due entry (`due_pk`), so every write
//! finds the entry where it is.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use cid::Cid;
use ucanto::principal::Did;

use crate::store::{EgressRecord, Lease, RecordStatus, SpaceEntry, StoreError};

pub(super) type Item = HashMap<String, AttributeValue>;

/// A record as stored: the record plus the item's bookkeeping.
#[derive(Clone, Debug)]
pub(super) struct Stored {
    pub(super) record: EgressRecord,
    /// Bumped by every write of the record: the condition of the next one.
    pub(super) ver: u64,
    /// The conclusion fence: the attempt allowed to claim receipts.
    pub(super) token: Option<String>,
    /// The attempt the record was concluded with, once done.
    pub(super) attempt: Option<String>,
    /// The partition of the record's due entry, if it has one.
    pub(super) due_partition: String,
    /// Whether the record is in its node's pending count (tracked by a
    /// version that counts).
    pub(super) counted_pending: bool,
}

/// Partitions of the due index and items of the counters.
pub(super) const SHARDS: u8 = 16;

/// The shard of `batch`'s due entry and counters.
pub(super) fn shard_of(batch: &Cid) -> u8 {
    batch.hash().digest().last().copied().unwrap_or(0) % SHARDS
}

/// The due index partition of shard `shard`.
pub(super) fn due_pk(shard: u8) -> String {
    format!("due#{shard:02}")
}

/// The counters item (partition) of shard `shard`.
pub(super) fn stats_pk(shard: u8) -> String {
    format!("stats#{shard:02}")
}

/// The sort-key range of a listing keyed by DID: those starting with
/// `prefix`, after `after` (exclusive). DIDs are ASCII below `~`, so
/// `<prefix>~` is past all of them; a key is never empty, and every DID
/// sorts after `!`.
///
/// `None` when nothing can follow: an `after` past every DID with the prefix
/// would make a key condition whose lower bound is above its upper bound,
/// which DynamoDB refuses.
pub(super) fn did_range(prefix: &str, after: Option<&str>) -> Option<(String, String)> {
    let lo = match after {
        Some(after) if after >= prefix => format!("{after}\u{1}"),
        _ if prefix.is_empty() => "!".to_string(),
        _ => prefix.to_string(),
    };
    let hi = format!("{prefix}~");
    (lo <= hi).then_some((lo, hi))
}

/// The list of nodes paid: one item per node, `sk` its DID.
pub(super) const NODES: &str = "nodes";

/// The list of spaces with billable egress: one item per space, `sk` its
/// DID, written before the conclusion that counts it.
pub(super) const BILLED_SPACES: &str = "billedspaces";

/// The partition listing `node`'s batches by time.
pub(super) fn node_batches_pk(node: &str) -> String {
    format!("nodebatches#{node}")
}

/// A record's key in its node's list: time received, then batch.
pub(super) fn node_batch_sk(r: &EgressRecord) -> String {
    format!("{:020}#{}", r.received_at, r.batch)
}

/// The rejection counts of shard `shard` (item `rejected`).
pub(super) fn rejected_pk(shard: u8) -> String {
    format!("rejected#{shard:02}")
}

/// The partition of all nodes' egress per day, shard `shard`.
pub(super) fn egress_pk(shard: u8) -> String {
    format!("egress#{shard:02}")
}

/// Every due index partition: the shards.
pub(super) fn due_partitions() -> impl Iterator<Item = String> {
    (0..SHARDS).map(due_pk)
}

/// Whether `pk` is a due index partition.
pub(super) fn is_due_pk(pk: &str) -> bool {
    pk.strip_prefix("due#").is_some_and(|k| k.len() == 2)
}

/// The partition listing the batches that failed as a whole.
pub(super) const FAILED: &str = "failed";

pub(super) fn record_pk(batch: &Cid) -> String {
    format!("rec#{batch}")
}

pub(super) fn receipt_pk(consolidate: &Cid) -> String {
    format!("receipt#{consolidate}")
}

pub(super) fn staged_pk(batch: &Cid) -> String {
    format!("staged#{batch}")
}

pub(super) fn space_entry_pk(space: &Did) -> String {
    format!("space-entry#{}", space.as_str())
}

/// The partition listing the spaces whose registry entry names `account`
/// as customer (`sk` a space DID, no attributes). Entries may be stale (a
/// customer changed): readers check each space's entry.
pub(super) fn customer_pk(account: &str) -> String {
    format!("customer#{account}")
}

/// The partition of a node's total and daily totals.
pub(super) fn node_pk(node: &str) -> String {
    format!("node#{node}")
}

/// The partition of a space's daily totals.
pub(super) fn space_days_pk(space: &str) -> String {
    format!("space#{space}")
}

/// The partition of a space's non-billable daily bytes.
pub(super) fn non_billable_pk(space: &str) -> String {
    format!("nonbillable#{space}")
}

/// The sort key of a usage row: `batch`'s share of a daily total, written
/// before the conclusion's flip when its daily totals do not fit the flip's
/// transaction. It sorts right after the day's total (`day#<day>`), so one
/// query of a day range reads both.
pub(super) fn usage_row_sk(day: &str, batch: &Cid) -> String {
    format!("day#{day}#{batch}")
}

/// The day of a daily total's or usage row's sort key, and the row's batch.
pub(super) fn parse_day_sk(sk: &str) -> Result<(&str, Option<Cid>), StoreError> {
    let rest = sk
        .strip_prefix("day#")
        .ok_or_else(|| StoreError::Corrupt(format!("not a day key: {sk:?}")))?;
    Ok(match rest.split_once('#') {
        None => (rest, None),
        Some((day, batch)) => (day, Some(parse_cid(batch)?)),
    })
}

/// The due index key: redb's `(due_at, received_at, batch bytes)` order.
pub(super) fn due_sk(due_at: u64, r: &EgressRecord) -> String {
    let hex: String = r
        .batch
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{due_at:020}#{:020}#{hex}", r.received_at)
}

pub(super) fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

pub(super) fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn get_s(item: &Item, key: &str) -> Result<String, StoreError> {
    opt_s(item, key)?.ok_or_else(|| StoreError::Corrupt(format!("item lacks {key}")))
}

pub(super) fn opt_s(item: &Item, key: &str) -> Result<Option<String>, StoreError> {
    match item.get(key) {
        None => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
        Some(_) => Err(StoreError::Corrupt(format!("{key} is not a string"))),
    }
}

pub(super) fn get_u64(item: &Item, key: &str) -> Result<u64, StoreError> {
    opt_u64(item, key)?.ok_or_else(|| StoreError::Corrupt(format!("item lacks {key}")))
}

pub(super) fn opt_u64(item: &Item, key: &str) -> Result<Option<u64>, StoreError> {
    match item.get(key) {
        None => Ok(None),
        Some(AttributeValue::N(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("{key} is not a u64: {v}"))),
        Some(_) => Err(StoreError::Corrupt(format!("{key} is not a number"))),
    }
}

pub(super) fn parse_cid(v: &str) -> Result<Cid, StoreError> {
    Cid::try_from(v).map_err(|e| StoreError::Corrupt(format!("bad CID {v:?}: {e}")))
}

pub(super) use crate::store::parse_did;

/// The record's attributes (without `ver`, `token`, `attempt`).
pub(super) fn encode_record(r: &EgressRecord) -> Item {
    let mut item = HashMap::from([
        ("pk".to_string(), s(&record_pk(&r.batch))),
        ("sk".to_string(), s("rec")),
        ("batch".to_string(), s(&r.batch.to_string())),
        ("node".to_string(), s(r.node.as_str())),
        ("endpoint".to_string(), s(&r.endpoint)),
        ("track".to_string(), s(&r.track_invocation.to_string())),
        (
            "track_bytes".to_string(),
            AttributeValue::B(r.track_invocation_bytes.clone().into()),
        ),
        (
            "consolidate".to_string(),
            s(&r.consolidate_invocation.to_string()),
        ),
        ("received_at".to_string(), n(r.received_at)),
        ("attempts".to_string(), n(r.attempts.into())),
        ("next_attempt_at".to_string(), n(r.next_attempt_at)),
    ]);
    if let Some(t) = r.first_failure_at {
        item.insert("first_failure_at".into(), n(t));
    }
    if let Some(e) = &r.last_error {
        item.insert("last_error".into(), s(e));
    }
    if let Some(lease) = &r.lease {
        item.insert("lease_owner".into(), s(&lease.owner));
        item.insert("lease_until".into(), n(lease.until));
    }
    match &r.status {
        RecordStatus::Pending => {
            item.insert("status".into(), s("pending"));
        }
        RecordStatus::Done {
            receipt,
            concluded_at,
            total_bytes,
            counted_receipts,
            failure,
        } => {
            item.insert("status".into(), s("done"));
            item.insert("done_receipt".into(), s(&receipt.to_string()));
            item.insert("concluded_at".into(), n(*concluded_at));
            item.insert("total_bytes".into(), n(*total_bytes));
            item.insert("counted_receipts".into(), n(*counted_receipts));
            if let Some(failure) = failure {
                item.insert("failure".into(), s(failure));
            }
        }
    }
    item
}

pub(super) fn decode_record(batch: &Cid, item: &Item) -> Result<Stored, StoreError> {
    let stored_batch = parse_cid(&get_s(item, "batch")?)?;
    if stored_batch != *batch {
        return Err(StoreError::Corrupt(format!(
            "record of {stored_batch} stored under {batch}"
        )));
    }
    let node = Did::parse(&get_s(item, "node")?)
        .map_err(|e| StoreError::Corrupt(format!("record node: {e}")))?;
    let status = match get_s(item, "status")?.as_str() {
        "pending" => RecordStatus::Pending,
        "done" => RecordStatus::Done {
            receipt: parse_cid(&get_s(item, "done_receipt")?)?,
            concluded_at: get_u64(item, "concluded_at")?,
            total_bytes: get_u64(item, "total_bytes")?,
            counted_receipts: get_u64(item, "counted_receipts")?,
            failure: opt_s(item, "failure")?,
        },
        other => return Err(StoreError::Corrupt(format!("record status {other:?}"))),
    };
    let lease = match (opt_s(item, "lease_owner")?, opt_u64(item, "lease_until")?) {
        (Some(owner), Some(until)) => Some(Lease { owner, until }),
        (None, None) => None,
        _ => return Err(StoreError::Corrupt("half a lease".into())),
    };
    let track_invocation_bytes = match item.get("track_bytes") {
        Some(AttributeValue::B(b)) => b.clone().into_inner(),
        _ => return Err(StoreError::Corrupt("track_bytes is not bytes".into())),
    };
    let record = EgressRecord {
        batch: *batch,
        node,
        endpoint: get_s(item, "endpoint")?,
        track_invocation: parse_cid(&get_s(item, "track")?)?,
        track_invocation_bytes,
        consolidate_invocation: parse_cid(&get_s(item, "consolidate")?)?,
        received_at: get_u64(item, "received_at")?,
        status,
        attempts: u32::try_from(get_u64(item, "attempts")?)
            .map_err(|_| StoreError::Corrupt("record attempts overflow u32".into()))?,
        next_attempt_at: get_u64(item, "next_attempt_at")?,
        first_failure_at: opt_u64(item, "first_failure_at")?,
        last_error: opt_s(item, "last_error")?,
        lease,
    };
    Ok(Stored {
        record,
        ver: get_u64(item, "ver")?,
        token: opt_s(item, "token")?,
        attempt: opt_s(item, "attempt")?,
        due_partition: get_s(item, "due_pk")?,
        counted_pending: item.contains_key(super::pending::COUNTED),
    })
}

/// A registry entry from its item.
pub(super) fn decode_space(item: &Item) -> Result<SpaceEntry, StoreError> {
    Ok(SpaceEntry {
        space: parse_did(&get_s(item, "space")?)?,
        provider: parse_did(&get_s(item, "provider")?)?,
        customer: opt_s(item, "customer")?
            .map(|c| parse_did(&c))
            .transpose()?,
    })
}
