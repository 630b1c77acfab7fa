//! The DynamoDB backend (cargo feature `dynamodb`): several tracker replicas
//! share one table and stay safe through conditional writes.
//!
//! Its semantics are those of [`RedbStore`](super::redb::RedbStore): the same
//! calls give the same outcomes and errors (differences, all under races or
//! after a crash, are listed at the end).
//!
//! # Runtime
//!
//! [`Store`] is synchronous. The store owns a small tokio runtime (one worker
//! thread, for the HTTP connections) and `block_on`s every SDK future on the
//! calling thread. Call it from plain threads or from
//! `tokio::task::spawn_blocking` (what the server does), **never directly from
//! async code**: tokio panics when a runtime is blocked on inside another
//! runtime's worker. Dropping the store from async code is fine (its runtime
//! is shut down in the background).
//!
//! # Table
//!
//! One table, `<prefix>etracker`, created on [`DynamoStore::connect`] if
//! missing (on-demand billing), with a string partition key `pk` and a string
//! sort key `sk`. CIDs are written as their default string form, days as
//! `YYYY-MM-DD`, numbers as DynamoDB numbers.
//!
//! | item              | `pk`                  | `sk`                                   | attributes                                       |
//! |-------------------|-----------------------|----------------------------------------|--------------------------------------------------|
//! | format            | `meta`                | `format`                               | `format` = 2                                     |
//! | record            | `rec#<batch>`         | `rec`                                  | the record's fields, `ver`, `token`?, `attempt`? |
//! | due index entry   | `due`                 | `<due_at:020>#<received_at:020>#<hex>` | `batch`                                          |
//! | consolidate receipt | `receipt#<consolidate>` | `receipt`                          | `body` (CAR bytes)                               |
//! | staged tally chunk | `staged#<batch>`     | `<chunk CID>`                          | `body` (dag-cbor bytes)                          |
//! | non-billable bytes | `nonbillable#<space>` | `day#<day>`                          | `bytes`                                          |
//! | registered space  | `space-entry#<space>` | `space`                                | `space`, `provider`, `customer`?                 |
//! | list of spaces    | `spaces`              | `<space DID>`                          |                                                  |
//! | counted receipt   | `counted#<receipt>`   | `counted`                              | `batch`, `attempt`                               |
//! | node total        | `node#<did>`          | `total`                                | `bytes`                                          |
//! | node daily total  | `node#<did>`          | `day#<day>`                            | `bytes`                                          |
//! | space daily total | `space#<did>`         | `day#<day>`                            | `bytes`                                          |
//! | counters          | `stats`               | `stats`                                | `records`, `concluded`, `counted`, `nodes`, `total_bytes` |
//!
//! The due index is the redb `due` table as items of one partition, sorted
//! like it (`<hex>` is the batch CID's bytes in hex), read with strongly
//! consistent queries: a record is leasable when its entry's time is `<= now`.
//! (One partition bounds write throughput to what a single partition takes,
//! ample for a tracker; a sharded GSI would be eventually consistent.) The
//! counters item is written by every `put` and `conclude` transaction, so
//! that `stats` is one read; concurrent writers of it cancel each other's
//! transactions, which are then retried.
//!
//! # Conditions
//!
//! Every record item carries a version `ver`. A record changes by
//! `TransactWriteItems`: `Put` of the record with `ver = :read_ver` (or
//! `attribute_not_exists(pk)` when new), `Delete` of its old due entry and
//! `Put` of the new one, plus whatever else the operation changes. So each
//! method reads the record (consistently), decides exactly as redb does, and
//! commits only if nothing changed meanwhile; a cancelled transaction is
//! re-read and re-decided (bounded retries). Hence:
//!
//! - `put`: record `attribute_not_exists(pk)` + due entry + counters `ADD
//!   records 1`; on failure the record is read: same node → `Existing`,
//!   another → `NodeConflict`.
//! - `lease_pending`: query due entries `<= now` in order, then per record the
//!   versioned write above; a record changed by another replica is re-read
//!   and skipped unless still due. Each record is leased atomically, the set
//!   is not.
//! - `reschedule`: same, after redb's checks (`NotFound`, `NotPending`,
//!   `NotLeaseOwner`) on the read record.
//!
//! # Conclude
//!
//! Each attempt gets a random attempt id. A counted-receipt item names the
//! batch *and* attempt that claimed it; it counts only when that batch is done
//! **with that attempt** (`attempt` on the done record). [`Store::counted`],
//! the conflict check and the audit all apply that rule, so a claim left by
//! an interrupted attempt never counts. Claims are `Put` with
//! `attribute_not_exists(pk) OR batch = :batch` (own leftovers are taken over),
//! or, for an orphan (its batch is done with another attempt, so it never
//! counts), `batch = :other AND attempt = :its_attempt`.
//!
//! - **Small** (everything fits one `TransactWriteItems`, 100 items): one
//!   transaction puts the done record (`ver = :v`), deletes its due entry,
//!   puts the receipt, `ADD`s the node total (`attribute_exists`, or
//!   `attribute_not_exists` plus `ADD nodes 1` to the counters when it is the
//!   node's first), the node and space daily totals and the counters, and
//!   claims every receipt. All or nothing, like redb.
//! - **Large**: (1) check as redb does; (2) take the record's conclusion
//!   fence: `SET token = :attempt` with `ver = :v`; (3) claim the receipts in
//!   transactions of 99 claims plus a `ConditionCheck` that the record is
//!   still pending with `token = :attempt`, so once another attempt takes the
//!   fence no claim of this one can land any more; (4) the final transaction
//!   is the small one without the claims, conditioned on `ver` and `token`.
//!   Totals move only in (4), atomically with the flip, so nothing is ever
//!   counted twice; a crash before (4) leaves only claims that never count,
//!   and concluding again resumes (own claims are taken over). If a claim
//!   hits a receipt counted meanwhile, the attempt deletes its claims (fenced
//!   the same way) and reports `Conflict`. The non-claim part of (4) must fit
//!   one transaction: 5 items plus one per (space, day) and per day, at most
//!   100 (beyond, `Invalid`).
//!
//! # Differences from redb
//!
//! - A receipt claimed by an attempt of another batch that is still pending
//!   (racing right now, or interrupted by a crash) is reported in `Conflict`
//!   although it does not count yet: the tracker treats `Conflict` as
//!   "consolidate again", and the claim is released once that batch concludes
//!   without it.
//! - Totals are DynamoDB numbers (38 digits), so a u64 overflow of a total is
//!   not reported as `Invalid` (redb does; 18 EB of egress).
//! - Transactions cancelled by contention are retried a bounded number of
//!   times, then reported as `Backend`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, KeySchemaElement,
    KeyType, KeysAndAttributes, Put, ScalarAttributeType, Select, TableStatus, TransactWriteItem,
    Update,
};
use aws_sdk_dynamodb::Client;
use cid::Cid;
use ucanto::principal::Did;

use super::redb::Audit;
use super::{
    check_conclusion, check_day, ConcludeOutcome, Conclusion, EgressRecord, Lease, NewRecord,
    PutOutcome, RecordStatus, SpaceEntry, Store, StoreError, StoreStats,
};

/// Format 2: counted retrievals are keyed by payload id (see the redb store).
const FORMAT: u64 = 2;
/// Items per `TransactWriteItems`.
const TX_MAX: usize = 100;
/// Keys per `BatchGetItem`.
const GET_MAX: usize = 100;
/// Re-reads after a cancelled transaction before giving up.
const RETRIES: usize = 64;

type Item = HashMap<String, AttributeValue>;

/// The [`Store`] on a DynamoDB table (see the module docs).
pub struct DynamoStore {
    client: Client,
    table: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.table)
            .finish()
    }
}

/// A DynamoDB client for `endpoint` and the one-thread runtime its calls
/// block on; region and credentials as [`DynamoStore::connect`] says.
pub fn connect_client(endpoint: &str) -> Result<(Client, tokio::runtime::Runtime), StoreError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let credentials = Credentials::new(
        env("AWS_ACCESS_KEY_ID").unwrap_or_else(|| "test".into()),
        env("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|| "test".into()),
        env("AWS_SESSION_TOKEN"),
        None,
        "etracker",
    );
    let region = env("AWS_REGION").unwrap_or_else(|| "us-east-1".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("etracker-dynamodb")
        .enable_all()
        .build()
        .map_err(|e| StoreError::Backend(format!("cannot start runtime: {e}")))?;
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(region))
        .credentials_provider(credentials)
        .http_client(http_client())
        .build();
    Ok((Client::from_conf(config), runtime))
}

impl Drop for DynamoStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids in async code.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A record as stored: the record plus the item's bookkeeping.
#[derive(Clone, Debug)]
struct Stored {
    record: EgressRecord,
    ver: u64,
    token: Option<String>,
    attempt: Option<String>,
}

/// Whether a transaction went through.
enum Tx {
    Done,
    /// Cancelled; the reason codes, one per item.
    Cancelled(Vec<String>),
}

impl DynamoStore {
    /// Connects to DynamoDB at `endpoint` (e.g. `http://127.0.0.1:8000`, or
    /// `https://dynamodb.<region>.amazonaws.com` with the `tls` feature) and
    /// creates the table `<table_prefix>etracker` if missing.
    ///
    /// Region and credentials come from `AWS_REGION` (default `us-east-1`),
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`
    /// (defaults `test`/`test`, which local emulators accept). Must not be
    /// called from async code (see the module docs).
    pub fn connect(endpoint: &str, table_prefix: &str) -> Result<Self, StoreError> {
        let (client, runtime) = connect_client(endpoint)?;
        let store = DynamoStore {
            client,
            table: format!("{table_prefix}etracker"),
            runtime: Some(runtime),
        };
        store.init()?;
        Ok(store)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("runtime lives until drop")
            .block_on(future)
    }

    /// Creates the table if missing, waits until it is active, and checks
    /// (or writes) the format item.
    fn init(&self) -> Result<(), StoreError> {
        let created = self.block_on(
            self.client
                .create_table()
                .table_name(&self.table)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(attr_def("pk")?)
                .attribute_definitions(attr_def("sk")?)
                .key_schema(key_schema("pk", KeyType::Hash)?)
                .key_schema(key_schema("sk", KeyType::Range)?)
                .send(),
        );
        if let Err(e) = created {
            let exists = e
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception());
            if !exists {
                return Err(backend(e));
            }
        }
        for _ in 0..600 {
            let table = self
                .block_on(self.client.describe_table().table_name(&self.table).send())
                .map_err(backend)?;
            let status = table.table().and_then(|t| t.table_status());
            if status == Some(&TableStatus::Active) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let put = self.block_on(
            self.client
                .put_item()
                .table_name(&self.table)
                .item("pk", s("meta"))
                .item("sk", s("format"))
                .item("format", n(FORMAT))
                .condition_expression("attribute_not_exists(pk)")
                .send(),
        );
        if let Err(e) = put {
            let exists = e
                .as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception());
            if !exists {
                return Err(backend(e));
            }
            let item = self.get(("meta", "format"))?.unwrap_or_default();
            let format = get_u64(&item, "format")?;
            if format != FORMAT {
                return Err(super::unsupported_format(format, FORMAT));
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ requests

    fn get(&self, (pk, sk): (&str, &str)) -> Result<Option<Item>, StoreError> {
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
    fn get_many(
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
                    return Err(StoreError::Backend("BatchGetItem keeps throttling".into()));
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
                    std::thread::sleep(Duration::from_millis(20 * rounds as u64));
                }
            }
        }
        Ok(found)
    }

    /// All items of partition `pk` with `lo <= sk <= hi`, in sort order,
    /// at most `limit` (strongly consistent).
    fn query(
        &self,
        pk: &str,
        lo: &str,
        hi: &str,
        limit: Option<usize>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut request = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
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

    /// Number of items of partition `pk`.
    fn count(&self, pk: &str) -> Result<u64, StoreError> {
        let mut count = 0u64;
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .block_on(
                    self.client
                        .query()
                        .table_name(&self.table)
                        .consistent_read(true)
                        .select(Select::Count)
                        .key_condition_expression("pk = :pk")
                        .expression_attribute_values(":pk", s(pk))
                        .set_exclusive_start_key(start.take())
                        .send(),
                )
                .map_err(backend)?;
            count += out.count as u64;
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(count),
            }
        }
    }

    fn transact(&self, items: Vec<TransactWriteItem>) -> Result<Tx, StoreError> {
        debug_assert!(items.len() <= TX_MAX);
        let out = self.block_on(
            self.client
                .transact_write_items()
                // The SDK retries (after a timeout, say) with the same token,
                // which DynamoDB answers as the first try: idempotent.
                .client_request_token(fresh_id())
                .set_transact_items(Some(items))
                .send(),
        );
        match out {
            Ok(_) => Ok(Tx::Done),
            Err(e) => match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                    Ok(Tx::Cancelled(
                        c.cancellation_reasons()
                            .iter()
                            .map(|r| r.code().unwrap_or("None").to_string())
                            .collect(),
                    ))
                }
                Some(TransactWriteItemsError::TransactionInProgressException(_)) => {
                    Ok(Tx::Cancelled(Vec::new()))
                }
                _ => Err(backend(e)),
            },
        }
    }

    // ------------------------------------------------------------ records

    fn load(&self, batch: &Cid) -> Result<Option<Stored>, StoreError> {
        self.get((&record_pk(batch), "rec"))?
            .map(|item| decode_record(batch, &item))
            .transpose()
    }

    /// The items that replace `old` by `new` (version checked, due entry
    /// moved); `token` and `attempt` are written as given.
    fn record_writes(
        &self,
        old: Option<&Stored>,
        new: &EgressRecord,
        token: Option<&str>,
        attempt: Option<&str>,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let mut items = Vec::new();
        let mut item = encode_record(new);
        item.insert("ver".into(), n(old.map_or(0, |o| o.ver + 1)));
        if let Some(token) = token {
            item.insert("token".into(), s(token));
        }
        if let Some(attempt) = attempt {
            item.insert("attempt".into(), s(attempt));
        }
        let mut put = Put::builder().table_name(&self.table).set_item(Some(item));
        put = match old {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(old) => put
                .condition_expression("#v = :ver")
                .expression_attribute_names("#v", "ver")
                .expression_attribute_values(":ver", n(old.ver)),
        };
        items.push(
            TransactWriteItem::builder()
                .put(put.build().map_err(build_error)?)
                .build(),
        );
        let old_due = old.and_then(|o| o.record.due_at().map(|d| due_sk(d, &o.record)));
        let new_due = new.due_at().map(|d| due_sk(d, new));
        if old_due != new_due {
            if let Some(sk) = old_due {
                items.push(self.delete(("due", &sk))?);
            }
            if let Some(sk) = new_due {
                let put = Put::builder()
                    .table_name(&self.table)
                    .item("pk", s("due"))
                    .item("sk", s(&sk))
                    .item("batch", s(&new.batch.to_string()))
                    .build()
                    .map_err(build_error)?;
                items.push(TransactWriteItem::builder().put(put).build());
            }
        }
        Ok(items)
    }

    fn delete(&self, (pk, sk): (&str, &str)) -> Result<TransactWriteItem, StoreError> {
        let delete = Delete::builder()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().delete(delete).build())
    }

    /// `ADD` of numbers to one item, with an optional condition.
    fn add(
        &self,
        (pk, sk): (&str, &str),
        deltas: &[(&str, u64)],
        condition: Option<&str>,
    ) -> Result<TransactWriteItem, StoreError> {
        let expression = deltas
            .iter()
            .enumerate()
            .map(|(i, _)| format!("#a{i} :a{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression(format!("ADD {expression}"))
            .set_condition_expression(condition.map(str::to_string));
        for (i, (name, delta)) in deltas.iter().enumerate() {
            update = update
                .expression_attribute_names(format!("#a{i}"), *name)
                .expression_attribute_values(format!(":a{i}"), n(*delta));
        }
        Ok(TransactWriteItem::builder()
            .update(update.build().map_err(build_error)?)
            .build())
    }

    /// Runs `attempt` until it returns `Some` or the retries run out;
    /// `attempt` returns `None` when its transaction was cancelled.
    fn retry<T>(
        &self,
        mut attempt: impl FnMut() -> Result<Option<T>, StoreError>,
    ) -> Result<T, StoreError> {
        for round in 0..RETRIES {
            if let Some(out) = attempt()? {
                return Ok(out);
            }
            backoff(round);
        }
        Err(StoreError::Backend(
            "too much contention: transaction cancelled too often".into(),
        ))
    }

    // ------------------------------------------------------------ counted

    /// For each receipt, its claim: `(batch, attempt, counts)`, where
    /// `counts` says whether the claiming batch is done with that attempt.
    fn claims(&self, receipts: &[Cid]) -> Result<Vec<Option<Claim>>, StoreError> {
        let keys: Vec<(String, String)> = receipts
            .iter()
            .map(|r| (counted_pk(r), "counted".to_string()))
            .collect();
        let items = self.get_many(&keys)?;
        let mut raw = Vec::with_capacity(receipts.len());
        let mut batches = Vec::new();
        for key in &keys {
            match items.get(key) {
                None => raw.push(None),
                Some(item) => {
                    let batch = parse_cid(&get_s(item, "batch")?)?;
                    let attempt = get_s(item, "attempt")?;
                    batches.push((record_pk(&batch), "rec".to_string()));
                    raw.push(Some((batch, attempt)));
                }
            }
        }
        let records = self.get_many(&batches)?;
        raw.into_iter()
            .map(|claim| {
                let Some((batch, attempt)) = claim else {
                    return Ok(None);
                };
                let done_attempt = match records.get(&(record_pk(&batch), "rec".to_string())) {
                    Some(item) if get_s(item, "status")? == "done" => opt_s(item, "attempt")?,
                    _ => None,
                };
                let state = match done_attempt {
                    None => ClaimState::Pending,
                    Some(a) if a == attempt => ClaimState::Counted,
                    Some(_) => ClaimState::Orphan,
                };
                Ok(Some(Claim {
                    batch,
                    attempt,
                    state,
                }))
            })
            .collect()
    }

    /// The claim write of `receipt` by `batch`'s `attempt`, given what
    /// claims it now.
    fn claim_write(
        &self,
        receipt: &Cid,
        batch: &Cid,
        attempt: &str,
        current: Option<&Claim>,
    ) -> Result<TransactWriteItem, StoreError> {
        let mut put = Put::builder()
            .table_name(&self.table)
            .item("pk", s(&counted_pk(receipt)))
            .item("sk", s("counted"))
            .item("batch", s(&batch.to_string()))
            .item("attempt", s(attempt));
        put = match current {
            Some(c) if c.batch != *batch => put
                .condition_expression("attribute_exists(pk) AND #b = :other AND #at = :its")
                .expression_attribute_names("#b", "batch")
                .expression_attribute_names("#at", "attempt")
                .expression_attribute_values(":other", s(&c.batch.to_string()))
                .expression_attribute_values(":its", s(&c.attempt)),
            _ => put
                .condition_expression("attribute_not_exists(pk) OR #b = :batch")
                .expression_attribute_names("#b", "batch")
                .expression_attribute_values(":batch", s(&batch.to_string())),
        };
        Ok(TransactWriteItem::builder()
            .put(put.build().map_err(build_error)?)
            .build())
    }

    /// A `ConditionCheck` that `batch` is pending with fence `token`.
    fn fence(&self, batch: &Cid, token: &str) -> Result<TransactWriteItem, StoreError> {
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .key("pk", s(&record_pk(batch)))
            .key("sk", s("rec"))
            .condition_expression("#st = :pending AND #tk = :token")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#tk", "token")
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":token", s(token))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    /// One attempt of [`Store::conclude`]; `None` when a write was cancelled
    /// and the whole must be re-read and re-decided.
    fn conclude_once(
        &self,
        c: &Conclusion,
        summed: &super::SummedUsage,
    ) -> Result<Option<ConcludeOutcome>, StoreError> {
        let old = match self.check_record(c)? {
            Ok(old) => old,
            Err(receipt) => return Ok(Some(ConcludeOutcome::AlreadyConcluded { receipt })),
        };
        let claims = self.claims(&c.counted_receipts)?;
        let conflicts: Vec<Cid> = c
            .counted_receipts
            .iter()
            .zip(&claims)
            .filter(|(_, claim)| {
                claim
                    .as_ref()
                    .is_some_and(|cl| cl.batch != c.batch && cl.state != ClaimState::Orphan)
            })
            .map(|(r, _)| *r)
            .collect();
        if !conflicts.is_empty() {
            return Err(StoreError::Conflict {
                receipts: conflicts,
            });
        }
        let attempt = fresh_id();
        let fixed = 5 + summed.by_day.len() + summed.by_space_day.len() + summed.non_billable.len();
        if fixed + c.counted_receipts.len() <= TX_MAX {
            let mut items = self.final_writes(c, summed, &old, &attempt)?;
            for (receipt, claim) in c.counted_receipts.iter().zip(&claims) {
                items.push(self.claim_write(receipt, &c.batch, &attempt, claim.as_ref())?);
            }
            return match self.transact(items)? {
                Tx::Done => Ok(Some(ConcludeOutcome::Concluded)),
                Tx::Cancelled(_) => Ok(None),
            };
        }
        if fixed > TX_MAX {
            return Err(StoreError::Invalid(format!(
                "a conclusion touches at most {} daily totals on DynamoDB, not {}",
                TX_MAX - 5,
                fixed - 5
            )));
        }
        // Large: take the fence, claim in fenced chunks, then flip.
        let fenced = self.record_writes(Some(&old), &old.record, Some(&attempt), None)?;
        if let Tx::Cancelled(_) = self.transact(fenced)? {
            return Ok(None);
        }
        let receipts: Vec<(&Cid, Option<&Claim>)> = c
            .counted_receipts
            .iter()
            .zip(claims.iter().map(Option::as_ref))
            .collect();
        let mut claimed = Vec::new();
        for chunk in receipts.chunks(TX_MAX - 1) {
            let mut items = vec![self.fence(&c.batch, &attempt)?];
            for (receipt, claim) in chunk {
                items.push(self.claim_write(receipt, &c.batch, &attempt, *claim)?);
            }
            match self.transact(items)? {
                Tx::Done => claimed.extend(chunk.iter().map(|(r, _)| **r)),
                Tx::Cancelled(reasons) => {
                    let fence_lost = reasons.first().is_some_and(|r| r != "None");
                    let claim_lost = reasons
                        .iter()
                        .skip(1)
                        .any(|r| r == "ConditionalCheckFailed");
                    if claim_lost && !fence_lost {
                        // Counted (or claimed) meanwhile by another batch:
                        // withdraw, then re-decide (usually `Conflict`).
                        self.withdraw(&c.batch, &attempt, &claimed)?;
                    }
                    return Ok(None);
                }
            }
        }
        let Ok(fenced) = self.check_record(c)? else {
            return Ok(None);
        };
        if fenced.token.as_deref() != Some(attempt.as_str()) {
            return Ok(None);
        }
        let items = self.final_writes(c, summed, &fenced, &attempt)?;
        match self.transact(items)? {
            Tx::Done => Ok(Some(ConcludeOutcome::Concluded)),
            Tx::Cancelled(_) => Ok(None),
        }
    }

    /// Deletes the claims of `attempt`, each chunk fenced by the record.
    fn withdraw(&self, batch: &Cid, attempt: &str, receipts: &[Cid]) -> Result<(), StoreError> {
        for chunk in receipts.chunks(TX_MAX - 1) {
            let mut items = vec![self.fence(batch, attempt)?];
            for receipt in chunk {
                let delete = Delete::builder()
                    .table_name(&self.table)
                    .key("pk", s(&counted_pk(receipt)))
                    .key("sk", s("counted"))
                    .condition_expression("#b = :batch AND #at = :attempt")
                    .expression_attribute_names("#b", "batch")
                    .expression_attribute_names("#at", "attempt")
                    .expression_attribute_values(":batch", s(&batch.to_string()))
                    .expression_attribute_values(":attempt", s(attempt))
                    .build()
                    .map_err(build_error)?;
                items.push(TransactWriteItem::builder().delete(delete).build());
            }
            if let Tx::Cancelled(_) = self.transact(items)? {
                // Fence lost or claims taken over: they are no longer ours.
                return Ok(());
            }
        }
        Ok(())
    }

    /// Steps 2 and 3 of [`Store::conclude`] on a fresh read: `Ok(Ok(record))`
    /// when pending, `Ok(Err(receipt))` when done.
    fn check_record(&self, c: &Conclusion) -> Result<Result<Stored, Cid>, StoreError> {
        let old = self.load(&c.batch)?.ok_or(StoreError::NotFound)?;
        Ok(match super::check_record(&old.record, c)? {
            Some(receipt) => Err(receipt),
            None => Ok(old),
        })
    }

    /// The commit of a conclusion, without the claims: the done record, its
    /// due entry, the receipt, the totals and the counters.
    fn final_writes(
        &self,
        c: &Conclusion,
        summed: &super::SummedUsage,
        old: &Stored,
        attempt: &str,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let mut record = old.record.clone();
        record.status = RecordStatus::Done {
            receipt: c.receipt,
            concluded_at: c.concluded_at,
            total_bytes: c.total_bytes,
            counted_receipts: c.counted_receipts.len() as u64,
        };
        record.lease = None;
        let mut items = self.record_writes(Some(old), &record, None, Some(attempt))?;
        let put = Put::builder()
            .table_name(&self.table)
            .item("pk", s(&receipt_pk(&c.consolidate_invocation)))
            .item("sk", s("receipt"))
            .item("body", AttributeValue::B(c.receipt_bytes.clone().into()))
            .build()
            .map_err(build_error)?;
        items.push(TransactWriteItem::builder().put(put).build());
        let node_pk = format!("node#{}", c.node.as_str());
        let first = self.get((&node_pk, "total"))?.is_none();
        let (condition, nodes) = if first {
            ("attribute_not_exists(pk)", 1)
        } else {
            ("attribute_exists(pk)", 0)
        };
        items.push(self.add(
            (&node_pk, "total"),
            &[("bytes", c.total_bytes)],
            Some(condition),
        )?);
        items.push(self.add(
            ("stats", "stats"),
            &[
                ("concluded", 1),
                ("counted", c.counted_receipts.len() as u64),
                ("nodes", nodes),
                ("total_bytes", c.total_bytes),
                ("non_billable_bytes", summed.non_billable.values().sum()),
            ],
            None,
        )?);
        // Daily totals: `(partition, day, bytes)`.
        let daily = summed
            .non_billable
            .iter()
            .map(|((space, day), bytes)| (format!("nonbillable#{space}"), day, bytes))
            .chain(
                summed
                    .by_day
                    .iter()
                    .map(|(day, bytes)| (node_pk.clone(), day, bytes)),
            )
            .chain(
                summed
                    .by_space_day
                    .iter()
                    .map(|((space, day), bytes)| (format!("space#{space}"), day, bytes)),
            );
        for (pk, day, bytes) in daily {
            items.push(self.add((&pk, &format!("day#{day}")), &[("bytes", *bytes)], None)?);
        }
        Ok(items)
    }

    /// Bytes per day of a `<prefix>#<did>` partition, days `from..to`.
    fn daily(&self, pk: &str, from: &str, to: &str) -> Result<Vec<(String, u64)>, StoreError> {
        check_day(from)?;
        check_day(to)?;
        if from >= to {
            return Ok(Vec::new());
        }
        let items = self.query(pk, &format!("day#{from}"), &format!("day#{to}"), None)?;
        let mut days = Vec::new();
        for item in items {
            let sk = get_s(&item, "sk")?;
            let day = sk.strip_prefix("day#").unwrap_or(&sk).to_string();
            if day.as_str() < to {
                days.push((day, get_u64(&item, "bytes")?));
            }
        }
        Ok(days)
    }

    /// Scans the whole table and checks that its items agree with each other,
    /// like [`RedbStore::audit`](super::redb::RedbStore::audit). For tests and
    /// the admin page; not a snapshot, so run it when the store is quiet.
    pub fn audit(&self) -> Result<Audit, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .block_on(
                    self.client
                        .scan()
                        .table_name(&self.table)
                        .consistent_read(true)
                        .set_exclusive_start_key(start.take())
                        .send(),
                )
                .map_err(backend)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        let mut audit = Audit::default();
        let mut problems = Vec::new();
        let mut records = HashMap::new();
        let mut due = HashSet::new();
        let mut receipts = HashSet::new();
        let mut claims = Vec::new();
        let mut node_totals: BTreeMap<String, u128> = BTreeMap::new();
        let mut node_daily: BTreeMap<String, u128> = BTreeMap::new();
        let mut non_billable_bytes: u128 = 0;
        for item in &items {
            let pk = get_s(item, "pk")?;
            let sk = get_s(item, "sk")?;
            if let Some(batch) = pk.strip_prefix("rec#") {
                let batch = parse_cid(batch)?;
                records.insert(batch, decode_record(&batch, item)?);
            } else if pk == "due" {
                due.insert(sk);
            } else if let Some(cid) = pk.strip_prefix("receipt#") {
                receipts.insert(parse_cid(cid)?);
            } else if pk.starts_with("counted#") {
                claims.push((parse_cid(&get_s(item, "batch")?)?, get_s(item, "attempt")?));
            } else if let Some(node) = pk.strip_prefix("node#") {
                let bytes = u128::from(get_u64(item, "bytes")?);
                if sk == "total" {
                    audit.node_bytes += bytes;
                    node_totals.insert(node.to_string(), bytes);
                } else {
                    audit.node_daily_bytes += bytes;
                    *node_daily.entry(node.to_string()).or_default() += bytes;
                }
            } else if pk.starts_with("space#") {
                audit.space_bytes += u128::from(get_u64(item, "bytes")?);
            } else if pk.starts_with("nonbillable#") {
                non_billable_bytes += u128::from(get_u64(item, "bytes")?);
            }
        }
        let mut expected_node_totals: BTreeMap<String, u128> = BTreeMap::new();
        for stored in records.values() {
            let record = &stored.record;
            audit.records += 1;
            match &record.status {
                RecordStatus::Pending => {
                    audit.pending += 1;
                    let sk = due_sk(record.due_at().unwrap_or_default(), record);
                    if !due.contains(&sk) {
                        problems.push(format!("pending {} has no due entry", record.batch));
                    }
                }
                RecordStatus::Done {
                    total_bytes,
                    counted_receipts,
                    ..
                } => {
                    audit.add_done(
                        &record.node,
                        *total_bytes,
                        *counted_receipts,
                        &mut expected_node_totals,
                    );
                    if !receipts.contains(&record.consolidate_invocation) {
                        problems.push(format!("done {} has no receipt", record.batch));
                    }
                }
            }
        }
        if due.len() as u64 != audit.pending {
            problems.push("due index and pending records differ in number".into());
        }
        if receipts.len() as u64 != audit.concluded {
            problems.push("receipts and done records differ in number".into());
        }
        // Claims of pending batches or of attempts that lost never count.
        for (batch, attempt) in &claims {
            let counts = records
                .get(batch)
                .is_some_and(|r| !r.record.is_pending() && r.attempt.as_ref() == Some(attempt));
            if counts {
                audit.counted_receipts += 1;
            }
        }
        if u128::from(audit.counted_receipts) != audit.concluded_receipts {
            problems.push("counted receipts and done records' counts differ".into());
        }
        if node_totals != expected_node_totals {
            problems.push("node totals differ from the done records' totals".into());
        }
        node_daily.retain(|_, b| *b != 0);
        node_totals.retain(|_, b| *b != 0);
        if node_daily != node_totals {
            problems.push("node daily totals differ from node totals".into());
        }
        if audit.space_bytes != audit.node_bytes {
            problems.push("space totals differ from node totals".into());
        }
        let stats = self.stats()?;
        let expected = StoreStats {
            records: audit.records,
            pending: audit.pending,
            concluded: audit.concluded,
            counted_receipts: audit.counted_receipts,
            nodes: expected_node_totals.len() as u64,
            total_bytes: u64::try_from(audit.node_bytes).unwrap_or(u64::MAX),
            non_billable_bytes: u64::try_from(non_billable_bytes).unwrap_or(u64::MAX),
        };
        if stats != expected {
            problems.push(format!(
                "counters {stats:?} differ from the items {expected:?}"
            ));
        }
        audit.problems = problems;
        Ok(audit)
    }
}

/// Who claims a receipt, and whether the claim counts.
#[derive(Clone, Debug)]
struct Claim {
    batch: Cid,
    attempt: String,
    state: ClaimState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClaimState {
    /// The batch is done with this attempt: the receipt is counted.
    Counted,
    /// The batch is still pending: the attempt may yet commit.
    Pending,
    /// The batch is done with another attempt: this claim never counts.
    Orphan,
}

impl Store for DynamoStore {
    fn put(&self, new: NewRecord) -> Result<PutOutcome, StoreError> {
        let record = EgressRecord::from_new(new);
        self.retry(|| {
            if let Some(existing) = self.load(&record.batch)? {
                return if existing.record.node == record.node {
                    Ok(Some(PutOutcome::Existing(existing.record)))
                } else {
                    Err(StoreError::NodeConflict {
                        node: existing.record.node,
                    })
                };
            }
            let mut items = self.record_writes(None, &record, None, None)?;
            items.push(self.add(("stats", "stats"), &[("records", 1)], None)?);
            match self.transact(items)? {
                Tx::Done => Ok(Some(PutOutcome::Inserted(record.clone()))),
                Tx::Cancelled(_) => Ok(None),
            }
        })
    }

    fn record(&self, batch: &Cid) -> Result<Option<EgressRecord>, StoreError> {
        Ok(self.load(batch)?.map(|s| s.record))
    }

    fn lease_pending(
        &self,
        now: u64,
        owner: &str,
        lease_secs: u64,
        limit: usize,
    ) -> Result<Vec<EgressRecord>, StoreError> {
        if lease_secs == 0 {
            return Err(StoreError::Invalid("a lease must last at least 1 s".into()));
        }
        let until = now
            .checked_add(lease_secs)
            .ok_or_else(|| StoreError::Invalid("lease end overflows u64".into()))?;
        let mut leased = Vec::new();
        // Due entries `<= now`: every key starts with 20 digits.
        let hi = format!("{now:020}#~");
        let mut lo = "0".to_string();
        while leased.len() < limit {
            let entries = self.query("due", &lo, &hi, Some(limit - leased.len()))?;
            let Some(last) = entries.last() else { break };
            // Continue after the last entry seen: keys have one length, so
            // any later key sorts after this one with a byte appended.
            lo = format!("{}\u{1}", get_s(last, "sk")?);
            for entry in &entries {
                let batch = parse_cid(&get_s(entry, "batch")?)?;
                let got = self.retry(|| {
                    let Some(old) = self.load(&batch)? else {
                        return Ok(Some(None));
                    };
                    if old.record.due_at().is_none_or(|d| d > now) {
                        // Taken (or concluded) by another replica meanwhile.
                        return Ok(Some(None));
                    }
                    let mut record = old.record.clone();
                    record.lease = Some(Lease {
                        owner: owner.to_string(),
                        until,
                    });
                    let items =
                        self.record_writes(Some(&old), &record, old.token.as_deref(), None)?;
                    match self.transact(items)? {
                        Tx::Done => Ok(Some(Some(record))),
                        Tx::Cancelled(_) => Ok(None),
                    }
                })?;
                leased.extend(got);
                if leased.len() == limit {
                    break;
                }
            }
        }
        Ok(leased)
    }

    fn reschedule(
        &self,
        batch: &Cid,
        owner: &str,
        now: u64,
        next_attempt_at: u64,
        last_error: &str,
        by_node: bool,
    ) -> Result<EgressRecord, StoreError> {
        self.retry(|| {
            let old = self.load(batch)?.ok_or(StoreError::NotFound)?;
            if !old.record.is_pending() {
                return Err(StoreError::NotPending);
            }
            let holder = old.record.lease.as_ref().map(|l| l.owner.as_str());
            if holder != Some(owner) {
                return Err(StoreError::NotLeaseOwner {
                    holder: holder.map(str::to_string),
                });
            }
            let mut record = old.record.clone();
            record.attempts = record.attempts.saturating_add(1);
            // The give-up age counts the node's consecutive failures: a
            // failure on our side ends the streak.
            if by_node {
                record.first_failure_at.get_or_insert(now);
            } else {
                record.first_failure_at = None;
            }
            record.last_error = Some(last_error.to_string());
            record.next_attempt_at = next_attempt_at;
            record.lease = None;
            let items = self.record_writes(Some(&old), &record, old.token.as_deref(), None)?;
            match self.transact(items)? {
                Tx::Done => Ok(Some(record)),
                Tx::Cancelled(_) => Ok(None),
            }
        })
    }

    fn conclude(&self, c: &Conclusion) -> Result<ConcludeOutcome, StoreError> {
        let summed = check_conclusion(c)?;
        let outcome = self.retry(|| self.conclude_once(c, &summed))?;
        // Staged chunks served their purpose; one left behind by a failure
        // here is harmless (content-addressed, never read again).
        let pk = staged_pk(&c.batch);
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
        Ok(outcome)
    }

    fn non_billable_usage(
        &self,
        space: &Did,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.daily(&format!("nonbillable#{}", space.as_str()), from_day, to_day)
    }

    fn put_space(&self, entry: &SpaceEntry) -> Result<(), StoreError> {
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(&space_pk(&entry.space)))
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

    fn remove_space(&self, space: &Did) -> Result<bool, StoreError> {
        let out = self
            .block_on(
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .key("pk", s(&space_pk(space)))
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

    fn space(&self, space: &Did) -> Result<Option<SpaceEntry>, StoreError> {
        self.get((&space_pk(space), "space"))?
            .map(|item| decode_space(&item))
            .transpose()
    }

    fn spaces(&self) -> Result<Vec<SpaceEntry>, StoreError> {
        let listed = self.query("spaces", "did:", "did;", None)?;
        let mut entries = Vec::new();
        for item in listed {
            let space = parse_did(&get_s(&item, "sk")?)?;
            if let Some(entry) = self.space(&space)? {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

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

    fn receipt(&self, consolidate_invocation: &Cid) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get((&receipt_pk(consolidate_invocation), "receipt"))? {
            None => Ok(None),
            Some(item) => match item.get("body") {
                Some(AttributeValue::B(b)) => Ok(Some(b.clone().into_inner())),
                _ => Err(StoreError::Corrupt("receipt body is not bytes".into())),
            },
        }
    }

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

    fn space_usage(
        &self,
        space: &Did,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.daily(&format!("space#{}", space.as_str()), from_day, to_day)
    }

    fn node_usage(
        &self,
        node: &Did,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.daily(&format!("node#{}", node.as_str()), from_day, to_day)
    }

    fn node_total(&self, node: &Did) -> Result<u64, StoreError> {
        match self.get((&format!("node#{}", node.as_str()), "total"))? {
            None => Ok(0),
            Some(item) => get_u64(&item, "bytes"),
        }
    }

    fn pending_count(&self) -> Result<u64, StoreError> {
        self.count("due")
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let counters = self.get(("stats", "stats"))?.unwrap_or_default();
        let field = |k: &str| match counters.get(k) {
            None => Ok(0),
            Some(_) => get_u64(&counters, k),
        };
        Ok(StoreStats {
            records: field("records")?,
            pending: self.pending_count()?,
            concluded: field("concluded")?,
            counted_receipts: field("counted")?,
            nodes: field("nodes")?,
            total_bytes: field("total_bytes")?,
            non_billable_bytes: field("non_billable_bytes")?,
        })
    }
}

// ---------------------------------------------------------------- helpers

/// The HTTP client: hyper 1 with rustls (ring) when the `tls` feature is on
/// (it also speaks plain http to local endpoints), plain http otherwise.
fn http_client() -> aws_sdk_dynamodb::config::SharedHttpClient {
    #[cfg(feature = "tls")]
    {
        use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
        aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https()
    }
    #[cfg(not(feature = "tls"))]
    {
        aws_smithy_http_client::Builder::new().build_http()
    }
}

fn backoff(round: usize) {
    let ms = 2u64 << round.min(6);
    std::thread::sleep(Duration::from_millis(ms / 2 + fresh_u64() % ms));
}

fn fresh_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A unique id for a conclusion attempt.
fn fresh_id() -> String {
    format!("{:016x}{:016x}", fresh_u64(), fresh_u64())
}

fn record_pk(batch: &Cid) -> String {
    format!("rec#{batch}")
}

fn counted_pk(receipt: &Cid) -> String {
    format!("counted#{receipt}")
}

fn receipt_pk(consolidate: &Cid) -> String {
    format!("receipt#{consolidate}")
}

fn staged_pk(batch: &Cid) -> String {
    format!("staged#{batch}")
}

fn space_pk(space: &Did) -> String {
    format!("space-entry#{}", space.as_str())
}

fn parse_did(text: &str) -> Result<Did, StoreError> {
    Did::parse(text).map_err(|e| StoreError::Corrupt(format!("{text}: {e}")))
}

/// A registry entry from its item.
fn decode_space(item: &Item) -> Result<SpaceEntry, StoreError> {
    Ok(SpaceEntry {
        space: parse_did(&get_s(item, "space")?)?,
        provider: parse_did(&get_s(item, "provider")?)?,
        customer: opt_s(item, "customer")?
            .map(|c| parse_did(&c))
            .transpose()?,
    })
}

/// The due index key: redb's `(due_at, received_at, batch bytes)` order.
fn due_sk(due_at: u64, r: &EgressRecord) -> String {
    let hex: String = r
        .batch
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{due_at:020}#{:020}#{hex}", r.received_at)
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn attr_def(name: &str) -> Result<AttributeDefinition, StoreError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(build_error)
}

fn key_schema(name: &str, key_type: KeyType) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(key_type)
        .build()
        .map_err(build_error)
}

pub(crate) fn backend<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Backend(format!("dynamodb: {}", DisplayErrorContext(e)))
}

fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Backend(format!("dynamodb request: {e}"))
}

fn get_s(item: &Item, key: &str) -> Result<String, StoreError> {
    opt_s(item, key)?.ok_or_else(|| StoreError::Corrupt(format!("item lacks {key}")))
}

fn opt_s(item: &Item, key: &str) -> Result<Option<String>, StoreError> {
    match item.get(key) {
        None => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
        Some(_) => Err(StoreError::Corrupt(format!("{key} is not a string"))),
    }
}

fn get_u64(item: &Item, key: &str) -> Result<u64, StoreError> {
    opt_u64(item, key)?.ok_or_else(|| StoreError::Corrupt(format!("item lacks {key}")))
}

fn opt_u64(item: &Item, key: &str) -> Result<Option<u64>, StoreError> {
    match item.get(key) {
        None => Ok(None),
        Some(AttributeValue::N(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("{key} is not a u64: {v}"))),
        Some(_) => Err(StoreError::Corrupt(format!("{key} is not a number"))),
    }
}

fn parse_cid(v: &str) -> Result<Cid, StoreError> {
    Cid::try_from(v).map_err(|e| StoreError::Corrupt(format!("bad CID {v:?}: {e}")))
}

/// The record's attributes (without `ver`, `token`, `attempt`).
fn encode_record(r: &EgressRecord) -> Item {
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
        } => {
            item.insert("status".into(), s("done"));
            item.insert("done_receipt".into(), s(&receipt.to_string()));
            item.insert("concluded_at".into(), n(*concluded_at));
            item.insert("total_bytes".into(), n(*total_bytes));
            item.insert("counted_receipts".into(), n(*counted_receipts));
        }
    }
    item
}

fn decode_record(batch: &Cid, item: &Item) -> Result<Stored, StoreError> {
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
    })
}
