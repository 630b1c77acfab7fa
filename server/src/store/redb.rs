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
//! | `claim_ends`  | `(end, retrieval payload id)`              | `()` (see `claims`)           |
//!
//! Every table is made, and the running sums start at 0, when a store is
//! made; opening one reads nothing else (no store of an earlier layout
//! exists to fill in).
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cid::Cid;
use redb::backends::InMemoryBackend;
use redb::{Database, ReadableTable, Table, TableDefinition};
use ucanto::dag::Ipld;

mod audit;
mod claims;
mod conclusions;
mod dashboard;
mod pending;
mod records;
mod sessions;
mod spaces;

pub use super::audit::Audit;
use super::group_commit::GroupCommit;
use super::{EgressRecord, NewRecord, PutOutcome, StoreError};
use records::{decode_record, encode_record};
use spaces::decode_space;

/// Name of the database file inside the data directory.
pub const FILE_NAME: &str = "etracker.redb";

const FORMAT_KEY: &str = "format";
/// Format 2: `counted` is keyed by a retrieval's payload id (what its client
/// signed); format 1 keyed it by the retrieve invocation's CID, which a
/// re-encoding changes. The two cannot be converted (the invocations are
/// not kept), so a format 1 store is refused, never read as format 2.
const FORMAT: u64 = 2;
const RECORD_VERSION: u64 = 1;
/// `meta` keys of the running sums
/// [`DashboardReads::stats`](crate::store::DashboardReads::stats) reports (saturating),
/// added by each conclusion so that reading them does not visit every node.
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

/// Every node that tracked a batch: the nodes listing shows those with
/// only pending or failed batches too.
const KNOWN_NODES: TableDefinition<&str, ()> = TableDefinition::new("known_nodes");

/// (concluded_at, batch CID bytes) of every batch that failed as a whole:
/// the dashboard lists them newest first.
const FAILED: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("failed");

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
    /// Opens (creating if needed) the store in `dir`, file [`FILE_NAME`],
    /// with a cache of [`CACHE_BYTES`].
    ///
    /// After a crash, redb repairs the file on open; everything committed is
    /// there, and leases held by the dead process expire as usual. The file is
    /// locked: a second open, in this or another process, fails until the
    /// first store is dropped.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::backend(format!("creating {}", dir.display()), e))?;
        let path = dir.join(FILE_NAME);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                    path: path.display().to_string(),
                },
                e => StoreError::backend(format!("opening {}", path.display()), e),
            })?;
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
            tx.open_table(CUSTOMER_SPACES).or_backend()?;
            tx.open_table(NODE_BATCHES).or_backend()?;
            tx.open_table(BILLED_SPACES).or_backend()?;
            tx.open_table(EGRESS_DAILY).or_backend()?;
            tx.open_table(FAILED).or_backend()?;
            tx.open_table(KNOWN_NODES).or_backend()?;
            tx.open_table(pending::NODE_PENDING).or_backend()?;
            tx.open_table(claims::CLAIM_ENDS).or_backend()?;
            // A new store starts its running sums at 0. (No store of an
            // earlier layout exists: the crates are unpublished, so nothing
            // is filled in from older tables when a store opens.)
            if format.is_none() {
                meta.insert(TOTAL_BYTES_KEY, 0).or_backend()?;
                meta.insert(NON_BILLABLE_BYTES_KEY, 0).or_backend()?;
            }
        }
        tx.commit().or_backend()?;
        Ok(RedbStore {
            db,
            path,
            puts: GroupCommit::default(),
        })
    }
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

trait OrBackend<T> {
    fn or_backend(self) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> OrBackend<T> for Result<T, E> {
    fn or_backend(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::backend("redb", e.into()))
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

#[cfg(test)]
mod tests {
    use super::*;

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
