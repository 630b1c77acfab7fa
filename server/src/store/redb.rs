//! The embedded default backend: one [redb] file, one write transaction per
//! store operation.
//!
//! redb commits with `Durability::Immediate` (fsync before `commit` returns)
//! and is crash-safe, so a `kill -9` loses nothing that was reported done and
//! never leaves half an operation behind. Write transactions are serialised by
//! redb, which is what makes each method's check-then-write atomic.
//!
//! # Format
//!
//! File `<dir>/etracker.redb`, format 2 (`meta["format"]`; another value is
//! refused at open rather than misread). CIDs are stored as their binary form
//! (`Cid::to_bytes`), DIDs and days (`YYYY-MM-DD`) as UTF-8.
//!
//! | table         | key                                        | value                         |
//! |---------------|--------------------------------------------|-------------------------------|
//! | `meta`        | `"format"`, `"total_bytes"`, `"non_billable_bytes"` | `u64` (2; running sums) |
//! | `records`     | batch CID                                  | record, dag-cbor (below)      |
//! | `due`         | `(due_at u64, received_at u64, batch CID)` | `()`                          |
//! | `receipts`    | consolidate invocation CID                 | receipt CAR bytes             |
//! | `counted`     | retrieval payload id (raw CID)             | CID of the batch counting it  |
//! | `node_totals` | node DID                                   | `u64` bytes                   |
//! | `node_daily`  | `(node DID, day)`                          | `u64` bytes                   |
//! | `space_daily` | `(space DID, day)`                         | `u64` bytes                   |
//! | `non_billable_daily` | `(space DID, day)`                  | `u64` bytes, not billed       |
//! | `spaces`      | space DID                                  | `{provider, customer?}`       |
//! | `staged_chunks` | `(batch CID, chunk CID)`                 | tally chunk bytes             |
//! | `egress_daily` | day                                       | `u64` bytes of all nodes      |
//! | `node_batches` | `(node DID, received_at, batch CID)`      | `()`                          |
//! | `rejections`  | `"failed"`, `"name:<error>"`               | `u64` count                   |
//! | `billed_spaces` | space DID                                | `()`                          |
//! | `customer_spaces` | `(customer DID, space DID)`            | `()`                          |
//! | `sessions`    | SHA-256 of a dashboard session's cookie    | `{user, csrf, expires_at}`    |
//! | `node_pending` | node DID                                  | `u64` pending records (see `pending`) |
//!
//! Tables and sums added after a store was made are filled in from what it
//! holds when it is opened.
//!
//! `due` is the sparse index of pending records, keyed by the time each
//! becomes leasable (`max(next_attempt_at, lease.until)`), so leasing is a
//! range scan over entries that are all due. Every write of a record rewrites
//! its `due` entry in the same transaction.
//!
//! A record is a canonical dag-cbor map (decoding is strict: unknown keys,
//! missing keys, another version and non-canonical bytes are refused):
//!
//! ```text
//! { "v": 1, "batch": bytes(CID), "node": DID, "endpoint": string,
//!   "track": bytes(CID), "trackBytes": bytes, "consolidate": bytes(CID),
//!   "receivedAt": int, "attempts": int, "nextAttemptAt": int,
//!   "firstFailureAt"?: int, "lastError"?: string,
//!   "lease"?: { "owner": string, "until": int },
//!   "done"?: { "receipt": bytes(CID), "concludedAt": int,
//!              "totalBytes": int, "countedReceipts": int } }
//! ```
//!
//! [redb]: https://www.redb.org

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use cid::Cid;
use redb::backends::InMemoryBackend;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
};
use ucanto::dag::{decode_cbor, encode_cbor, CidBytes, Fields, Ipld};
use ucanto::principal::Did;

mod claims;
mod pending;

pub use super::audit::Audit;
use super::audit::Auditor;
use super::group_commit::GroupCommit;
use super::{
    check_conclusion, check_day_range, lease_end, ConcludeOutcome, Conclusion, EgressRecord, Lease,
    NewRecord, PutOutcome, RecordStatus, Rejections, Retry, SpaceEntry, Store, StoreError,
    StoreStats, StoredSession,
};

/// Name of the database file inside the data directory.
pub const FILE_NAME: &str = "etracker.redb";

const FORMAT_KEY: &str = "format";
/// Format 2: `counted` is keyed by a retrieval's payload id (what its client
/// signed); format 1 keyed it by the retrieve invocation's CID, which a
/// re-encoding changes. The two cannot be converted (the invocations are
/// not kept), so a format 1 store is refused, never read as format 2.
const FORMAT: u64 = 2;
const RECORD_VERSION: u64 = 1;
/// `meta` keys of the running sums [`Store::stats`] reports (saturating),
/// added by each conclusion so that reading them does not visit every node.
/// Stores made before them get them summed when opened.
const TOTAL_BYTES_KEY: &str = "total_bytes";
const NON_BILLABLE_BYTES_KEY: &str = "non_billable_bytes";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const DUE: TableDefinition<(u64, u64, &[u8]), ()> = TableDefinition::new("due");
const RECEIPTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("receipts");
const COUNTED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("counted");
const NODE_TOTALS: TableDefinition<&str, u64> = TableDefinition::new("node_totals");
const NODE_DAILY: TableDefinition<(&str, &str), u64> = TableDefinition::new("node_daily");
const SPACE_DAILY: TableDefinition<(&str, &str), u64> = TableDefinition::new("space_daily");
const STAGED: TableDefinition<(&[u8], &[u8]), &[u8]> = TableDefinition::new("staged_chunks");
const NON_BILLABLE_DAILY: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("non_billable_daily");
/// Space DID → dag-cbor `{provider: DID, customer?: DID}`.
const SPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("spaces");
/// Day → bytes of all nodes: Σ of `node_daily` per day. Stores made before
/// it are filled from `node_daily` when opened.
const EGRESS_DAILY: TableDefinition<&str, u64> = TableDefinition::new("egress_daily");
/// (node, received_at, batch) of every record: a node's batches by time.
/// Stores made before it are filled from `records` when opened.
const NODE_BATCHES: TableDefinition<(&str, u64, &[u8]), ()> = TableDefinition::new("node_batches");
/// `failed` → batches concluded with an error receipt; `name:<error>` →
/// receipts not counted with that error.
const REJECTIONS: TableDefinition<&str, u64> = TableDefinition::new("rejections");
/// Spaces with billable egress counted: the spaces page lists them, whether
/// or not they are in the registry (a consumer table, or any space).
const BILLED_SPACES: TableDefinition<&str, ()> = TableDefinition::new("billed_spaces");

/// (customer DID, space DID) of every registered space with a customer:
/// `account/egress/get` reads an account's spaces without reading them all.
const CUSTOMER_SPACES: TableDefinition<(&str, &str), ()> = TableDefinition::new("customer_spaces");

/// SHA-256 of a dashboard session's cookie → dag-cbor
/// `{user, csrf, expires_at}`.
const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");

/// The [`Store`] on an embedded redb database.
pub struct RedbStore {
    db: Database,
    path: Option<PathBuf>,
    /// Concurrent `put`s share one durable commit.
    puts: GroupCommit<(NewRecord, u64), Result<PutOutcome, StoreError>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

/// redb's page cache: reads beyond it come from the operating system's file
/// cache, and a transaction's dirty pages beyond half of it are written out
/// before its commit, so that a conclusion of any size takes bounded memory
/// (redb's default, 1 GiB, would let one big batch hold that much). Small,
/// because a cache fills only as far as the file is read: at 2 MiB a big
/// batch's conclusion filled what a small one's did not, and the tracker's
/// memory grew with the batch.
pub const CACHE_BYTES: usize = 512 << 10;

impl RedbStore {
    /// Inserts a group of new records in one transaction: each answered as
    /// a lone `put` would be (a batch tracked twice in one group is
    /// `Existing` the second time), all durable at one commit.
    fn put_group(&self, group: Vec<(NewRecord, u64)>) -> Vec<Result<PutOutcome, StoreError>> {
        let count = group.len();
        let written = (|| {
            let tx = self.db.begin_write().or_backend()?;
            let mut results = Vec::with_capacity(count);
            let mut inserted = false;
            {
                let mut records = tx.open_table(RECORDS).or_backend()?;
                let mut due = tx.open_table(DUE).or_backend()?;
                let mut node_batches = tx.open_table(NODE_BATCHES).or_backend()?;
                let mut node_pending = tx.open_table(pending::NODE_PENDING).or_backend()?;
                for (new, max_pending) in group {
                    if let Some(existing) = load(&records, &new.batch)? {
                        results.push(PutOutcome::existing(existing, &new.node));
                        continue;
                    }
                    let queued = pending::count(&node_pending, new.node.as_str())?;
                    if queued >= max_pending {
                        results.push(Err(StoreError::TooManyPending { pending: queued }));
                        continue;
                    }
                    pending::added(&mut node_pending, new.node.as_str())?;
                    let record = EgressRecord::from_new(new);
                    save(&mut records, &mut due, None, &record)?;
                    let key = record.batch.to_bytes();
                    node_batches
                        .insert(
                            (record.node.as_str(), record.received_at, key.as_slice()),
                            (),
                        )
                        .or_backend()?;
                    results.push(Ok(PutOutcome::Inserted(record)));
                    inserted = true;
                }
            }
            // With nothing inserted, dropping the transaction aborts it.
            if inserted {
                tx.commit().or_backend()?;
            }
            Ok::<_, StoreError>(results)
        })();
        written.unwrap_or_else(|e| vec![Err(e); count])
    }

    /// Opens (creating if needed) the store in `dir`, file [`FILE_NAME`],
    /// with a cache of [`CACHE_BYTES`].
    ///
    /// After a crash, redb repairs the file on open; everything committed is
    /// there, and leases held by the dead process expire as usual. The file is
    /// locked: a second open, in this or another process, fails until the
    /// first store is dropped.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        Self::init(db, Some(path))
    }

    /// A store that lives in memory only, for tests and dry runs.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .or_backend()?;
        Self::init(db, None)
    }

    /// The database file, or `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Checks the format and creates the tables, so that readers never meet
    /// a missing table.
    fn init(db: Database, path: Option<PathBuf>) -> Result<Self, StoreError> {
        let tx = db.begin_write().or_backend()?;
        {
            let mut meta = tx.open_table(META).or_backend()?;
            let format = meta.get(FORMAT_KEY).or_backend()?.map(|v| v.value());
            match format {
                None => {
                    meta.insert(FORMAT_KEY, FORMAT).or_backend()?;
                }
                Some(FORMAT) => {}
                Some(other) => return Err(super::unsupported_format(other, FORMAT)),
            }
            tx.open_table(RECORDS).or_backend()?;
            tx.open_table(DUE).or_backend()?;
            tx.open_table(RECEIPTS).or_backend()?;
            tx.open_table(COUNTED).or_backend()?;
            tx.open_table(NODE_TOTALS).or_backend()?;
            tx.open_table(NODE_DAILY).or_backend()?;
            tx.open_table(SPACE_DAILY).or_backend()?;
            tx.open_table(STAGED).or_backend()?;
            tx.open_table(NON_BILLABLE_DAILY).or_backend()?;
            tx.open_table(SPACES).or_backend()?;
            tx.open_table(REJECTIONS).or_backend()?;
            tx.open_table(SESSIONS).or_backend()?;
            let mut by_customer = tx.open_table(CUSTOMER_SPACES).or_backend()?;
            if by_customer.is_empty().or_backend()? {
                // A store from before the index: index its registry.
                let spaces = tx.open_table(SPACES).or_backend()?;
                for entry in spaces.iter().or_backend()? {
                    let (space, bytes) = entry.or_backend()?;
                    let entry = decode_space(space.value(), bytes.value())?;
                    if let Some(customer) = &entry.customer {
                        by_customer
                            .insert((customer.as_str(), entry.space.as_str()), ())
                            .or_backend()?;
                    }
                }
            }
            let mut node_batches = tx.open_table(NODE_BATCHES).or_backend()?;
            if node_batches.is_empty().or_backend()? {
                // A store from before the table: index what it holds.
                let records = tx.open_table(RECORDS).or_backend()?;
                for entry in records.iter().or_backend()? {
                    let (key, value) = entry.or_backend()?;
                    let record = decode_record(key.value(), value.value())?;
                    node_batches
                        .insert((record.node.as_str(), record.received_at, key.value()), ())
                        .or_backend()?;
                }
            }
            let mut billed = tx.open_table(BILLED_SPACES).or_backend()?;
            if billed.is_empty().or_backend()? {
                // A store from before the table: list the spaces it counted.
                let space_daily = tx.open_table(SPACE_DAILY).or_backend()?;
                for entry in space_daily.iter().or_backend()? {
                    let (key, _) = entry.or_backend()?;
                    billed.insert(key.value().0, ()).or_backend()?;
                }
            }
            if meta.get(TOTAL_BYTES_KEY).or_backend()?.is_none() {
                let mut total: u64 = 0;
                for entry in tx
                    .open_table(NODE_TOTALS)
                    .or_backend()?
                    .iter()
                    .or_backend()?
                {
                    total = total.saturating_add(entry.or_backend()?.1.value());
                }
                let mut non_billable: u64 = 0;
                let daily = tx.open_table(NON_BILLABLE_DAILY).or_backend()?;
                for entry in daily.iter().or_backend()? {
                    non_billable = non_billable.saturating_add(entry.or_backend()?.1.value());
                }
                meta.insert(TOTAL_BYTES_KEY, total).or_backend()?;
                meta.insert(NON_BILLABLE_BYTES_KEY, non_billable)
                    .or_backend()?;
            }
            let mut egress = tx.open_table(EGRESS_DAILY).or_backend()?;
            if egress.is_empty().or_backend()? {
                // A store from before the table: sum what the nodes served.
                let node_daily = tx.open_table(NODE_DAILY).or_backend()?;
                let mut days: BTreeMap<String, u64> = BTreeMap::new();
                for entry in node_daily.iter().or_backend()? {
                    let (key, bytes) = entry.or_backend()?;
                    let day = days.entry(key.value().1.to_string()).or_default();
                    *day = add(*day, bytes.value())?;
                }
                for (day, bytes) in days {
                    egress.insert(day.as_str(), bytes).or_backend()?;
                }
            }
        }
        pending::init(&tx)?;
        tx.commit().or_backend()?;
        Ok(RedbStore {
            db,
            path,
            puts: GroupCommit::default(),
        })
    }

    /// Reads the whole database in one snapshot and checks that its tables
    /// agree with each other. For tests and the admin page; cost is linear
    /// in the size of the store.
    pub fn audit(&self) -> Result<Audit, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let records = tx.open_table(RECORDS).or_backend()?;
        let due = tx.open_table(DUE).or_backend()?;
        let receipts = tx.open_table(RECEIPTS).or_backend()?;
        let counted = tx.open_table(COUNTED).or_backend()?;
        let node_totals = tx.open_table(NODE_TOTALS).or_backend()?;
        let node_daily = tx.open_table(NODE_DAILY).or_backend()?;
        let space_daily = tx.open_table(SPACE_DAILY).or_backend()?;

        let mut auditor = Auditor::default();
        let mut done_batches = HashSet::new();
        let mut node_pending: BTreeMap<String, u64> = BTreeMap::new();
        for entry in records.iter().or_backend()? {
            let (key, value) = entry.or_backend()?;
            let record = decode_record(key.value(), value.value())?;
            if record.is_pending() {
                *node_pending
                    .entry(record.node.as_str().to_string())
                    .or_default() += 1;
            }
            let has_due_entry = || {
                let due_at = record.due_at().unwrap_or_default();
                let key = (due_at, record.received_at, key.value());
                Ok(due.get(key).or_backend()?.is_some())
            };
            let has_receipt = || {
                let cid = record.consolidate_invocation.to_bytes();
                Ok(receipts.get(cid.as_slice()).or_backend()?.is_some())
            };
            auditor.record(&record, has_due_entry, has_receipt)?;
            if !record.is_pending() {
                done_batches.insert(key.value().to_vec());
            }
        }
        auditor.check_index_sizes(due.len().or_backend()?, receipts.len().or_backend()?);
        auditor.check_node_pending(&node_pending, &pending::all(&tx)?);
        for entry in counted.iter().or_backend()? {
            let (receipt, batch) = entry.or_backend()?;
            auditor.audit.counted_receipts += 1;
            if !done_batches.contains(batch.value()) {
                let receipt = decode_cid(receipt.value())?;
                auditor.problem(format!("receipt {receipt} counted by a batch not done"));
            }
        }
        let dropped = tx
            .open_table(META)
            .or_backend()?
            .get(claims::DROPPED_KEY)
            .or_backend()?
            .map_or(0, |v| v.value());
        auditor.audit.counted_receipts += dropped;
        auditor.check_counted();
        let audit = &mut auditor.audit;
        let mut node_totals_seen = BTreeMap::new();
        for entry in node_totals.iter().or_backend()? {
            let (node, bytes) = entry.or_backend()?;
            audit.node_bytes += u128::from(bytes.value());
            node_totals_seen.insert(node.value().to_string(), u128::from(bytes.value()));
        }
        let mut node_daily_sums: BTreeMap<String, u128> = BTreeMap::new();
        let mut node_days: BTreeMap<String, u128> = BTreeMap::new();
        for entry in node_daily.iter().or_backend()? {
            let (key, bytes) = entry.or_backend()?;
            let (node, day) = key.value();
            audit.node_daily_bytes += u128::from(bytes.value());
            *node_daily_sums.entry(node.to_string()).or_default() += u128::from(bytes.value());
            *node_days.entry(day.to_string()).or_default() += u128::from(bytes.value());
        }
        let mut egress_days = BTreeMap::new();
        for entry in tx
            .open_table(EGRESS_DAILY)
            .or_backend()?
            .iter()
            .or_backend()?
        {
            let (day, bytes) = entry.or_backend()?;
            egress_days.insert(day.value().to_string(), u128::from(bytes.value()));
        }
        for entry in space_daily.iter().or_backend()? {
            let (_, bytes) = entry.or_backend()?;
            audit.space_bytes += u128::from(bytes.value());
        }
        auditor.check_totals(node_totals_seen, node_daily_sums);
        auditor.check_egress_days(node_days, egress_days);
        let meta = tx.open_table(META).or_backend()?;
        let kept = meta.get(TOTAL_BYTES_KEY).or_backend()?.map(|v| v.value());
        let summed = u64::try_from(auditor.audit.node_bytes).unwrap_or(u64::MAX);
        if kept != Some(summed) {
            auditor.problem(format!(
                "total bytes kept as {kept:?}, the nodes' totals add up to {summed}"
            ));
        }
        Ok(auditor.audit)
    }
}

impl Store for RedbStore {
    fn put_within(&self, new: NewRecord, max_pending: u64) -> Result<PutOutcome, StoreError> {
        self.puts
            .submit((new, max_pending), |group| self.put_group(group))
            .unwrap_or_else(|| Err(StoreError::Backend("a group commit failed".into())))
    }

    fn node_pending(&self, node: &Did) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let table = tx.open_table(pending::NODE_PENDING).or_backend()?;
        pending::count(&table, node.as_str())
    }

    fn record(&self, batch: &Cid) -> Result<Option<EgressRecord>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let records = tx.open_table(RECORDS).or_backend()?;
        load(&records, batch)
    }

    fn lease_pending(
        &self,
        now: u64,
        owner: &str,
        lease_secs: u64,
        limit: usize,
    ) -> Result<Vec<EgressRecord>, StoreError> {
        let until = lease_end(now, lease_secs)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_write().or_backend()?;
        let mut leased = Vec::new();
        {
            let mut records = tx.open_table(RECORDS).or_backend()?;
            let mut due = tx.open_table(DUE).or_backend()?;
            let mut picked = Vec::new();
            for entry in due.iter().or_backend()? {
                let (key, _) = entry.or_backend()?;
                let (due_at, _, batch) = key.value();
                if due_at > now || picked.len() == limit {
                    break;
                }
                picked.push((due_at, decode_cid(batch)?));
            }
            for (due_at, batch) in picked {
                let old = load(&records, &batch)?.ok_or_else(|| {
                    StoreError::Corrupt(format!("due index names missing record {batch}"))
                })?;
                if old.due_at() != Some(due_at) {
                    return Err(StoreError::Corrupt(format!(
                        "due index of {batch} is stale"
                    )));
                }
                let record = old.leased(owner, until);
                save(&mut records, &mut due, Some(&old), &record)?;
                leased.push(record);
            }
        }
        if !leased.is_empty() {
            tx.commit().or_backend()?;
        }
        Ok(leased)
    }

    fn pending_records(&self, limit: usize) -> Result<Vec<EgressRecord>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let records = tx.open_table(RECORDS).or_backend()?;
        let due = tx.open_table(DUE).or_backend()?;
        let mut pending = Vec::new();
        for entry in due.iter().or_backend()?.take(limit) {
            let (key, _) = entry.or_backend()?;
            let batch = decode_cid(key.value().2)?;
            let record = load(&records, &batch)?.ok_or_else(|| {
                StoreError::Corrupt(format!("due index names missing record {batch}"))
            })?;
            pending.push(record);
        }
        Ok(pending)
    }

    fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_write().or_backend()?;
        let mut released = 0;
        {
            let mut records = tx.open_table(RECORDS).or_backend()?;
            let mut due = tx.open_table(DUE).or_backend()?;
            // Leased records are in the due index, at their lease's end.
            let mut mine = Vec::new();
            for entry in due.iter().or_backend()? {
                let (key, _) = entry.or_backend()?;
                let batch = decode_cid(key.value().2)?;
                let record = load(&records, &batch)?.ok_or_else(|| {
                    StoreError::Corrupt(format!("due index names missing record {batch}"))
                })?;
                if record.leased_by(owner) {
                    mine.push(record);
                }
            }
            for old in mine {
                save(&mut records, &mut due, Some(&old), &old.released())?;
                released += 1;
            }
        }
        tx.commit().or_backend()?;
        Ok(released)
    }

    fn reschedule(
        &self,
        batch: &Cid,
        owner: &str,
        now: u64,
        retry: &Retry,
    ) -> Result<EgressRecord, StoreError> {
        let tx = self.db.begin_write().or_backend()?;
        let record = {
            let mut records = tx.open_table(RECORDS).or_backend()?;
            let mut due = tx.open_table(DUE).or_backend()?;
            let old = load(&records, batch)?.ok_or(StoreError::NotFound)?;
            let record = old.rescheduled(owner, now, retry)?;
            save(&mut records, &mut due, Some(&old), &record)?;
            record
        };
        tx.commit().or_backend()?;
        Ok(record)
    }

    fn conclude(&self, c: &Conclusion) -> Result<ConcludeOutcome, StoreError> {
        let summed = check_conclusion(c)?;
        let tx = self.db.begin_write().or_backend()?;
        {
            let mut records = tx.open_table(RECORDS).or_backend()?;
            let mut due = tx.open_table(DUE).or_backend()?;
            let mut receipts = tx.open_table(RECEIPTS).or_backend()?;
            let mut counted = tx.open_table(COUNTED).or_backend()?;
            let mut node_totals = tx.open_table(NODE_TOTALS).or_backend()?;
            let mut node_daily = tx.open_table(NODE_DAILY).or_backend()?;
            let mut space_daily = tx.open_table(SPACE_DAILY).or_backend()?;

            let old = load(&records, &c.batch)?.ok_or(StoreError::NotFound)?;
            if let Some(receipt) = super::check_record(&old, c)? {
                return Ok(ConcludeOutcome::AlreadyConcluded { receipt });
            }

            // One pass over the counted retrievals, a staged chunk at a time:
            // each is marked counted by this batch, and one that was marked
            // already is a conflict (another batch) or a repeat (this one).
            // Any error drops (aborts) the transaction: nothing changes.
            let batch_key = c.batch.to_bytes();
            let mut staged = tx.open_table(STAGED).or_backend()?;
            let mut conflicts = Vec::new();
            let mut marked: u64 = 0;
            let mut ends = tx.open_table(claims::CLAIM_ENDS).or_backend()?;
            let mut mark = |cids: &[Cid]| -> Result<(), StoreError> {
                for cid in cids {
                    let key = CidBytes::of(cid);
                    let previous = counted.insert(&*key, batch_key.as_slice()).or_backend()?;
                    if previous.is_none() {
                        claims::noted(&mut ends, c.claims_end, &key)?;
                    }
                    match previous {
                        Some(batch) if batch.value() == batch_key.as_slice() => {
                            return Err(StoreError::Invalid(format!("receipt {cid} listed twice")))
                        }
                        Some(_) => conflicts.push(*cid),
                        None => marked += 1,
                    }
                }
                Ok(())
            };
            mark(&c.counted_receipts)?;
            for link in &c.staged_tally {
                let bytes = staged
                    .get((batch_key.as_slice(), link.to_bytes().as_slice()))
                    .or_backend()?
                    .map(|v| v.value().to_vec());
                mark(&super::staged_counted(&c.batch, link, bytes)?)?;
            }
            if !conflicts.is_empty() {
                return Err(StoreError::Conflict {
                    receipts: conflicts,
                });
            }

            let mut staged_keys = Vec::new();
            let from: (&[u8], &[u8]) = (batch_key.as_slice(), &[]);
            for entry in staged.range(from..).or_backend()? {
                let (key, _) = entry.or_backend()?;
                let (staged_batch, chunk) = key.value();
                if staged_batch != batch_key.as_slice() {
                    break;
                }
                staged_keys.push(chunk.to_vec());
            }
            for chunk in &staged_keys {
                staged
                    .remove((batch_key.as_slice(), chunk.as_slice()))
                    .or_backend()?;
            }
            receipts
                .insert(
                    c.consolidate_invocation.to_bytes().as_slice(),
                    c.receipt_bytes.as_slice(),
                )
                .or_backend()?;
            let node = c.node.as_str();
            let total = node_totals.get(node).or_backend()?.map_or(0, |v| v.value());
            node_totals
                .insert(node, add(total, c.total_bytes)?)
                .or_backend()?;
            add_daily(&mut space_daily, space_days(&summed.by_space_day))?;
            let mut billed = tx.open_table(BILLED_SPACES).or_backend()?;
            for (space, _) in summed.by_space_day.keys() {
                billed.insert(space.as_str(), ()).or_backend()?;
            }
            add_daily(
                &mut node_daily,
                summed
                    .by_day
                    .iter()
                    .map(|(day, bytes)| (node, day.as_str(), *bytes)),
            )?;
            let mut egress = tx.open_table(EGRESS_DAILY).or_backend()?;
            for (day, bytes) in &summed.by_day {
                let now = egress
                    .get(day.as_str())
                    .or_backend()?
                    .map_or(0, |v| v.value());
                egress
                    .insert(day.as_str(), add(now, *bytes)?)
                    .or_backend()?;
            }
            let mut rejections = tx.open_table(REJECTIONS).or_backend()?;
            let counts = c
                .rejected
                .iter()
                .map(|(name, n)| (format!("name:{}", super::rejection_name(name)), *n))
                .chain(c.failed.then(|| ("failed".to_string(), 1)));
            for (key, n) in counts {
                let now = rejections
                    .get(key.as_str())
                    .or_backend()?
                    .map_or(0, |v| v.value());
                rejections
                    .insert(key.as_str(), now.saturating_add(n))
                    .or_backend()?;
            }
            let mut non_billable = tx.open_table(NON_BILLABLE_DAILY).or_backend()?;
            add_daily(&mut non_billable, space_days(&summed.non_billable))?;
            let mut meta = tx.open_table(META).or_backend()?;
            let non_billable_bytes = summed
                .non_billable
                .values()
                .fold(0u64, |sum, b| sum.saturating_add(*b));
            for (key, bytes) in [
                (TOTAL_BYTES_KEY, c.total_bytes),
                (NON_BILLABLE_BYTES_KEY, non_billable_bytes),
            ] {
                let now = meta.get(key).or_backend()?.map_or(0, |v| v.value());
                meta.insert(key, now.saturating_add(bytes)).or_backend()?;
            }

            save(
                &mut records,
                &mut due,
                Some(&old),
                &old.concluded(c, marked),
            )?;
            pending::concluded(&tx, old.node.as_str())?;
        }
        tx.commit().or_backend()?;
        Ok(ConcludeOutcome::Concluded)
    }

    fn stage_chunks(&self, batch: &Cid, chunks: &[(Cid, Vec<u8>)]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().or_backend()?;
        {
            let mut staged = tx.open_table(STAGED).or_backend()?;
            let batch_key = batch.to_bytes();
            for (cid, bytes) in chunks {
                staged
                    .insert(
                        (batch_key.as_slice(), cid.to_bytes().as_slice()),
                        bytes.as_slice(),
                    )
                    .or_backend()?;
            }
        }
        tx.commit().or_backend()?;
        Ok(())
    }

    fn staged_chunks(&self, batch: &Cid, cids: &[Cid]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let staged = tx.open_table(STAGED).or_backend()?;
        let batch_key = batch.to_bytes();
        cids.iter()
            .map(|cid| {
                Ok(staged
                    .get((batch_key.as_slice(), cid.to_bytes().as_slice()))
                    .or_backend()?
                    .map(|v| v.value().to_vec()))
            })
            .collect()
    }

    fn staged_chunk_ids(&self, batch: &Cid) -> Result<Vec<Cid>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let staged = tx.open_table(STAGED).or_backend()?;
        let batch_key = batch.to_bytes();
        let from: (&[u8], &[u8]) = (batch_key.as_slice(), &[]);
        let mut ids = Vec::new();
        for entry in staged.range(from..).or_backend()? {
            let (key, _) = entry.or_backend()?;
            let (staged_batch, chunk) = key.value();
            if staged_batch != batch_key.as_slice() {
                break;
            }
            ids.push(decode_cid(chunk)?);
        }
        Ok(ids)
    }

    fn receipt(&self, consolidate_invocation: &Cid) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let receipts = tx.open_table(RECEIPTS).or_backend()?;
        let key = consolidate_invocation.to_bytes();
        let value = receipts.get(key.as_slice()).or_backend()?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn drop_ended_claims(&self, now: u64) -> Result<u64, StoreError> {
        let mut dropped = 0u64;
        loop {
            let tx = self.db.begin_write().or_backend()?;
            let page = claims::drop_page(&tx, now)?;
            tx.commit().or_backend()?;
            dropped += page as u64;
            if page == 0 {
                return Ok(dropped);
            }
        }
    }

    fn counted(&self, receipts: &[Cid]) -> Result<Vec<Option<Cid>>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let counted = tx.open_table(COUNTED).or_backend()?;
        receipts
            .iter()
            .map(|cid| match counted.get(&*CidBytes::of(cid)).or_backend()? {
                Some(batch) => decode_cid(batch.value()).map(Some),
                None => Ok(None),
            })
            .collect()
    }

    fn space_usage(
        &self,
        space: &Did,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.daily(SPACE_DAILY, space, from_day, to_day)
    }

    fn non_billable_usage(
        &self,
        space: &Did,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.daily(NON_BILLABLE_DAILY, space, from_day, to_day)
    }

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
            spaces.push(super::parse_did(space)?);
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

    fn node_usage(
        &self,
        node: &Did,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.daily(NODE_DAILY, node, from_day, to_day)
    }

    fn node_total(&self, node: &Did) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let totals = tx.open_table(NODE_TOTALS).or_backend()?;
        let total = totals.get(node.as_str()).or_backend()?;
        Ok(total.map_or(0, |v| v.value()))
    }

    fn egress_by_day(
        &self,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        if !check_day_range(from_day, to_day)? {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read().or_backend()?;
        let egress = tx.open_table(EGRESS_DAILY).or_backend()?;
        let mut days = Vec::new();
        for entry in egress.range(from_day..to_day).or_backend()? {
            let (day, bytes) = entry.or_backend()?;
            days.push((day.value().to_string(), bytes.value()));
        }
        Ok(days)
    }

    fn spaces_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SpaceEntry>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let spaces = tx.open_table(SPACES).or_backend()?;
        did_listing(&spaces, prefix, after, limit, |space, bytes| {
            decode_space(space, bytes.value())
        })
    }

    fn billed_spaces_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Did>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let billed = tx.open_table(BILLED_SPACES).or_backend()?;
        did_listing(&billed, prefix, after, limit, |space, _| {
            super::parse_did(space)
        })
    }

    fn nodes_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Did, u64)>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let totals = tx.open_table(NODE_TOTALS).or_backend()?;
        did_listing(&totals, prefix, after, limit, |node, bytes| {
            Ok((super::parse_did(node)?, bytes.value()))
        })
    }

    fn node_batches(
        &self,
        node: &Did,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<EgressRecord>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let index = tx.open_table(NODE_BATCHES).or_backend()?;
        let records = tx.open_table(RECORDS).or_backend()?;
        let node = node.as_str();
        let empty: &[u8] = &[];
        let end = before.unwrap_or(u64::MAX);
        let mut batches = Vec::new();
        for entry in index
            .range((node, 0, empty)..(node, end, empty))
            .or_backend()?
            .rev()
        {
            if batches.len() == limit {
                break;
            }
            let (key, _) = entry.or_backend()?;
            let batch = decode_cid(key.value().2)?;
            batches.push(load(&records, &batch)?.ok_or_else(|| {
                StoreError::Corrupt(format!("node index names missing record {batch}"))
            })?);
        }
        Ok(batches)
    }

    fn rejections(&self) -> Result<Rejections, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let table = tx.open_table(REJECTIONS).or_backend()?;
        let mut rejections = Rejections::default();
        for entry in table.iter().or_backend()? {
            let (key, n) = entry.or_backend()?;
            match key.value().strip_prefix("name:") {
                Some(name) => {
                    rejections.by_name.insert(name.to_string(), n.value());
                }
                None => rejections.failed_batches = n.value(),
            }
        }
        Ok(rejections)
    }

    fn pending_count(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let due = tx.open_table(DUE).or_backend()?;
        due.len().or_backend()
    }

    fn put_session(&self, id: &[u8; 32], session: &StoredSession) -> Result<(), StoreError> {
        let tx = self.db.begin_write().or_backend()?;
        {
            let mut sessions = tx.open_table(SESSIONS).or_backend()?;
            // Few (operators' logins): the whole table is read to drop the
            // expired ones, and the soonest to expire past the cap.
            let mut kept = Vec::new();
            for entry in sessions.iter().or_backend()? {
                let (key, value) = entry.or_backend()?;
                let expires_at = decode_session(value.value())?.expires_at;
                kept.push((expires_at, key.value().to_vec()));
            }
            kept.sort();
            let now = ucanto::ucan::now();
            let full = kept.len().saturating_sub(super::MAX_SESSIONS - 1);
            for (i, (expires_at, key)) in kept.iter().enumerate() {
                if *expires_at <= now || i < full {
                    sessions.remove(key.as_slice()).or_backend()?;
                }
            }
            let value = encode_cbor(&Ipld::Map(BTreeMap::from([
                ("user".to_string(), Ipld::String(session.user.clone())),
                ("csrf".to_string(), Ipld::String(session.csrf.clone())),
                (
                    "expires_at".to_string(),
                    Ipld::Integer(session.expires_at.into()),
                ),
            ])))
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
            sessions
                .insert(id.as_slice(), value.as_slice())
                .or_backend()?;
        }
        tx.commit().or_backend()
    }

    fn session(&self, id: &[u8; 32], now: u64) -> Result<Option<StoredSession>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let sessions = tx.open_table(SESSIONS).or_backend()?;
        let Some(value) = sessions.get(id.as_slice()).or_backend()? else {
            return Ok(None);
        };
        Ok(Some(decode_session(value.value())?).filter(|s| s.expires_at > now))
    }

    fn remove_session(&self, id: &[u8; 32]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().or_backend()?;
        tx.open_table(SESSIONS)
            .or_backend()?
            .remove(id.as_slice())
            .or_backend()?;
        tx.commit().or_backend()
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let meta = tx.open_table(META).or_backend()?;
        let sum =
            |key: &str| Ok::<_, StoreError>(meta.get(key).or_backend()?.map_or(0, |v| v.value()));
        Ok(StoreStats {
            records: tx.open_table(RECORDS).or_backend()?.len().or_backend()?,
            pending: tx.open_table(DUE).or_backend()?.len().or_backend()?,
            // One receipt per done record, keyed by its consolidate CID.
            concluded: tx.open_table(RECEIPTS).or_backend()?.len().or_backend()?,
            counted_receipts: tx.open_table(COUNTED).or_backend()?.len().or_backend()?,
            nodes: tx
                .open_table(NODE_TOTALS)
                .or_backend()?
                .len()
                .or_backend()?,
            total_bytes: sum(TOTAL_BYTES_KEY)?,
            non_billable_bytes: sum(NON_BILLABLE_BYTES_KEY)?,
        })
    }
}

impl RedbStore {
    /// Days `from..to` of a `(DID, day) → bytes` table.
    fn daily(
        &self,
        table: TableDefinition<(&str, &str), u64>,
        did: &Did,
        from: &str,
        to: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        if !check_day_range(from, to)? {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read().or_backend()?;
        let table = tx.open_table(table).or_backend()?;
        let did = did.as_str();
        let mut days = Vec::new();
        for entry in table.range((did, from)..(did, to)).or_backend()? {
            let (key, bytes) = entry.or_backend()?;
            days.push((key.value().1.to_string(), bytes.value()));
        }
        Ok(days)
    }
}

/// The key range of a page of a table keyed by DID: from `prefix`, or
/// right after `after` when it is past the prefix, so that a later page
/// starts where the last one ended instead of reading it again.
fn did_page<'a>(prefix: &'a str, after: Option<&'a str>) -> (Bound<&'a str>, Bound<&'a str>) {
    match after {
        Some(after) if after >= prefix => (Bound::Excluded(after), Bound::Unbounded),
        _ => (Bound::Included(prefix), Bound::Unbounded),
    }
}

/// A page of a table keyed by DID (see [`did_page`]): at most `limit`
/// entries whose key starts with `prefix`, each made a row by `row`.
fn did_listing<V: redb::Value + 'static, T>(
    table: &impl ReadableTable<&'static str, V>,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    mut row: impl FnMut(&str, redb::AccessGuard<'_, V>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut page = Vec::new();
    for entry in table.range::<&str>(did_page(prefix, after)).or_backend()? {
        if page.len() == limit {
            break;
        }
        let (key, value) = entry.or_backend()?;
        if !key.value().starts_with(prefix) {
            break;
        }
        page.push(row(key.value(), value)?);
    }
    Ok(page)
}

fn add(a: u64, b: u64) -> Result<u64, StoreError> {
    a.checked_add(b)
        .ok_or_else(|| StoreError::Invalid("total overflows u64".into()))
}

/// Reads and decodes the record of `batch`.
fn load(
    records: &impl ReadableTable<&'static [u8], &'static [u8]>,
    batch: &Cid,
) -> Result<Option<EgressRecord>, StoreError> {
    let key = batch.to_bytes();
    match records.get(key.as_slice()).or_backend()? {
        Some(value) => decode_record(&key, value.value()).map(Some),
        None => Ok(None),
    }
}

/// Writes `new` and moves its `due` entry from where `old` had it.
fn save(
    records: &mut Table<'_, &'static [u8], &'static [u8]>,
    due: &mut Table<'_, (u64, u64, &'static [u8]), ()>,
    old: Option<&EgressRecord>,
    new: &EgressRecord,
) -> Result<(), StoreError> {
    let key = new.batch.to_bytes();
    if let Some(due_at) = old.and_then(EgressRecord::due_at) {
        due.remove((due_at, old.map_or(0, |o| o.received_at), key.as_slice()))
            .or_backend()?;
    }
    if let Some(due_at) = new.due_at() {
        due.insert((due_at, new.received_at, key.as_slice()), ())
            .or_backend()?;
    }
    records
        .insert(key.as_slice(), encode_record(new)?.as_slice())
        .or_backend()?;
    Ok(())
}

/// Maps any redb error to [`StoreError::Backend`].
/// Adds each `(DID, day, bytes)` to a `(DID, day) → bytes` table.
fn add_daily<'a>(
    table: &mut Table<(&'static str, &'static str), u64>,
    entries: impl IntoIterator<Item = (&'a str, &'a str, u64)>,
) -> Result<(), StoreError> {
    for (did, day, bytes) in entries {
        let old = table.get((did, day)).or_backend()?.map_or(0, |v| v.value());
        table.insert((did, day), add(old, bytes)?).or_backend()?;
    }
    Ok(())
}

/// The `(space, day, bytes)` entries of summed usage.
fn space_days(
    sums: &BTreeMap<(String, String), u64>,
) -> impl Iterator<Item = (&str, &str, u64)> + '_ {
    sums.iter()
        .map(|((space, day), bytes)| (space.as_str(), day.as_str(), *bytes))
}

/// A dashboard session from its stored form.
fn decode_session(bytes: &[u8]) -> Result<StoredSession, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt(format!("session: {why}"));
    let Ipld::Map(map) = decode_cbor(bytes).map_err(|e| corrupt(&e.to_string()))? else {
        return Err(corrupt("not a map"));
    };
    let text = |key: &str| match map.get(key) {
        Some(Ipld::String(s)) => Ok(s.clone()),
        _ => Err(corrupt(&format!("no {key}"))),
    };
    let expires_at = match map.get("expires_at") {
        Some(Ipld::Integer(n)) => u64::try_from(*n).map_err(|_| corrupt("bad expires_at"))?,
        _ => return Err(corrupt("no expires_at")),
    };
    Ok(StoredSession {
        user: text("user")?,
        csrf: text("csrf")?,
        expires_at,
    })
}

/// A registry entry from its stored form.
fn decode_space(space: &str, bytes: &[u8]) -> Result<SpaceEntry, StoreError> {
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

trait OrBackend<T> {
    fn or_backend(self) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> OrBackend<T> for Result<T, E> {
    fn or_backend(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Backend(e.into().to_string()))
    }
}

fn decode_cid(bytes: &[u8]) -> Result<Cid, StoreError> {
    let cid = Cid::try_from(bytes).map_err(|e| StoreError::Corrupt(format!("bad CID: {e}")))?;
    // `try_from` ignores trailing bytes; a stored CID must be exactly one.
    if cid.to_bytes() != bytes {
        return Err(StoreError::Corrupt("CID with trailing bytes".into()));
    }
    Ok(cid)
}

fn int(n: u64) -> Ipld {
    Ipld::Integer(n.into())
}

fn cid_bytes(cid: &Cid) -> Ipld {
    Ipld::Bytes(cid.to_bytes())
}

/// Encodes a record as format-1 dag-cbor (see the module docs).
fn encode_record(r: &EgressRecord) -> Result<Vec<u8>, StoreError> {
    let mut map = BTreeMap::new();
    map.insert("v".to_string(), int(RECORD_VERSION));
    map.insert("batch".to_string(), cid_bytes(&r.batch));
    map.insert("node".to_string(), Ipld::String(r.node.as_str().into()));
    map.insert("endpoint".to_string(), Ipld::String(r.endpoint.clone()));
    map.insert("track".to_string(), cid_bytes(&r.track_invocation));
    map.insert(
        "trackBytes".to_string(),
        Ipld::Bytes(r.track_invocation_bytes.clone()),
    );
    map.insert(
        "consolidate".to_string(),
        cid_bytes(&r.consolidate_invocation),
    );
    map.insert("receivedAt".to_string(), int(r.received_at));
    map.insert("attempts".to_string(), int(r.attempts.into()));
    map.insert("nextAttemptAt".to_string(), int(r.next_attempt_at));
    if let Some(t) = r.first_failure_at {
        map.insert("firstFailureAt".to_string(), int(t));
    }
    if let Some(e) = &r.last_error {
        map.insert("lastError".to_string(), Ipld::String(e.clone()));
    }
    if let Some(lease) = &r.lease {
        let lease = BTreeMap::from([
            ("owner".to_string(), Ipld::String(lease.owner.clone())),
            ("until".to_string(), int(lease.until)),
        ]);
        map.insert("lease".to_string(), Ipld::Map(lease));
    }
    if let RecordStatus::Done {
        receipt,
        concluded_at,
        total_bytes,
        counted_receipts,
    } = &r.status
    {
        let done = BTreeMap::from([
            ("receipt".to_string(), cid_bytes(receipt)),
            ("concludedAt".to_string(), int(*concluded_at)),
            ("totalBytes".to_string(), int(*total_bytes)),
            ("countedReceipts".to_string(), int(*counted_receipts)),
        ]);
        map.insert("done".to_string(), Ipld::Map(done));
    }
    encode_cbor(&Ipld::Map(map)).map_err(|e| StoreError::Corrupt(format!("encode record: {e}")))
}

/// Fields a stored record may have: any other is from a newer format.
const RECORD_FIELDS: [&str; 14] = [
    "v",
    "batch",
    "node",
    "endpoint",
    "track",
    "trackBytes",
    "consolidate",
    "receivedAt",
    "attempts",
    "nextAttemptAt",
    "firstFailureAt",
    "lastError",
    "lease",
    "done",
];

/// Decodes a record stored under `key`, refusing anything but this format.
fn decode_record(key: &[u8], bytes: &[u8]) -> Result<EgressRecord, StoreError> {
    let value = decode_cbor(bytes).map_err(|e| StoreError::Corrupt(format!("record: {e}")))?;
    let f = Fields::of("record", &value)?.only(&RECORD_FIELDS)?;
    let version = f.uint("v")?;
    if version != RECORD_VERSION {
        return Err(StoreError::Corrupt(format!(
            "record version {version} is not supported"
        )));
    }
    let batch = decode_cid(f.bytes("batch")?)?;
    if batch.to_bytes() != key {
        return Err(StoreError::Corrupt(format!(
            "record of {batch} stored under another key"
        )));
    }
    let node = Did::parse(f.string("node")?)
        .map_err(|e| StoreError::Corrupt(format!("record node: {e}")))?;
    let lease = match f.get("lease") {
        None => None,
        Some(_) => {
            let l = f.fields("lease")?.only(&["owner", "until"])?;
            Some(Lease {
                owner: l.string("owner")?.to_string(),
                until: l.uint("until")?,
            })
        }
    };
    let status = match f.get("done") {
        None => RecordStatus::Pending,
        Some(_) => {
            let d = f.fields("done")?.only(&[
                "receipt",
                "concludedAt",
                "totalBytes",
                "countedReceipts",
            ])?;
            RecordStatus::Done {
                receipt: decode_cid(d.bytes("receipt")?)?,
                concluded_at: d.uint("concludedAt")?,
                total_bytes: d.uint("totalBytes")?,
                counted_receipts: d.uint("countedReceipts")?,
            }
        }
    };
    Ok(EgressRecord {
        batch,
        node,
        endpoint: f.string("endpoint")?.to_string(),
        track_invocation: decode_cid(f.bytes("track")?)?,
        track_invocation_bytes: f.bytes("trackBytes")?.to_vec(),
        consolidate_invocation: decode_cid(f.bytes("consolidate")?)?,
        received_at: f.uint("receivedAt")?,
        status,
        attempts: u32::try_from(f.uint("attempts")?)
            .map_err(|_| StoreError::Corrupt("record attempts overflow u32".into()))?,
        next_attempt_at: f.uint("nextAttemptAt")?,
        first_failure_at: f.opt_uint("firstFailureAt", false)?,
        last_error: f.opt_string("lastError")?.map(str::to_string),
        lease,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ucanto::dag::{cid_of, CAR, DAG_CBOR};

    fn record() -> EgressRecord {
        let mut r = EgressRecord::from_new(NewRecord {
            batch: cid_of(CAR, b"batch"),
            node: Did::parse("did:web:node.example").unwrap(),
            endpoint: "https://node.example/receipts/{cid}".into(),
            track_invocation: cid_of(DAG_CBOR, b"track"),
            track_invocation_bytes: b"car".to_vec(),
            consolidate_invocation: cid_of(DAG_CBOR, b"consolidate"),
            received_at: 100,
        });
        r.attempts = 2;
        r.first_failure_at = Some(150);
        r.last_error = Some("fetch failed".into());
        r.lease = Some(Lease {
            owner: "replica-1".into(),
            until: 200,
        });
        r
    }

    /// Every field survives a round trip, pending or done.
    #[test]
    fn record_round_trips() {
        let mut r = record();
        let key = r.batch.to_bytes();
        assert_eq!(decode_record(&key, &encode_record(&r).unwrap()).unwrap(), r);
        r.status = RecordStatus::Done {
            receipt: cid_of(DAG_CBOR, b"receipt"),
            concluded_at: 300,
            total_bytes: 42,
            counted_receipts: 3,
        };
        r.lease = None;
        assert_eq!(decode_record(&key, &encode_record(&r).unwrap()).unwrap(), r);
    }

    /// A record from a newer format, with an unknown field, or under another
    /// key is refused rather than misread.
    #[test]
    fn record_decoding_is_strict() {
        let r = record();
        let key = r.batch.to_bytes();
        let Ipld::Map(map) = decode_cbor(&encode_record(&r).unwrap()).unwrap() else {
            unreachable!()
        };
        let with = |k: &str, v: Ipld| {
            let mut m = map.clone();
            m.insert(k.into(), v);
            encode_cbor(&Ipld::Map(m)).unwrap()
        };
        assert!(decode_record(&key, &with("v", int(2))).is_err());
        assert!(decode_record(&key, &with("extra", int(1))).is_err());
        assert!(decode_record(b"other", &encode_record(&r).unwrap()).is_err());
        let mut missing = map.clone();
        missing.remove("endpoint");
        let missing = encode_cbor(&Ipld::Map(missing)).unwrap();
        assert!(decode_record(&key, &missing).is_err());
    }

    /// A file written with another store format is refused at open, never
    /// read as the current one; format 1 (retrievals counted by invocation
    /// CID) with an explanation.
    #[test]
    fn other_format_is_refused() {
        let dir = std::env::temp_dir().join(format!("etracker-format-{}", std::process::id()));
        for (format, explained) in [(1, true), (99, false)] {
            let _ = std::fs::remove_dir_all(&dir);
            drop(RedbStore::open(&dir).unwrap());
            {
                let db = Database::create(dir.join(FILE_NAME)).unwrap();
                let tx = db.begin_write().unwrap();
                tx.open_table(META)
                    .unwrap()
                    .insert(FORMAT_KEY, format)
                    .unwrap();
                tx.commit().unwrap();
            }
            let error = RedbStore::open(&dir).unwrap_err();
            assert!(matches!(error, StoreError::Corrupt(_)));
            let message = error.to_string();
            assert!(
                message.contains(&format!("store format {format} is not supported")),
                "{message}"
            );
            assert_eq!(message.contains("invocation CID"), explained, "{message}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
