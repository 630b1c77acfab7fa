//! The batch journal: retrieve receipts appended to Piri-format batch files,
//! rotated by size and age, kept until the tracker's consolidation matches.
//!
//! # On-disk layout
//! ```text
//! <dir>/LOCK                        held (flock) while a journal is open: one writer per directory
//! <dir>/open/<created-unix-ms>.car  the batch being appended to (at most one), header written at creation
//! <dir>/batches/<batch CID>.car     closed batches: immutable, their bytes hash to the CID in the name
//! <dir>/batches/<batch CID>.json    what the journal knows of each: receipts, bytes, spaces, tracking state
//! <dir>/quarantine/                 files that failed verification on open (never served, never deleted)
//! ```
//! The `.json` metadata (written atomically: temporary file, fsync, rename)
//! looks like this; it is a cache of what the batch file says plus the
//! tracking state, and is rebuilt from the batch file when missing:
//! ```text
//! { "version": 1, "cid": "bagbaiera…", "size": 12345, "created_at": 1700000000, "closed_at": 1700043200,
//!   "total_egress": 4096,
//!   "state": {"status": "closed"}
//!          | {"status": "tracked", "track": "bafy…", "consolidate": "bafy…", "at": …}
//!          | {"status": "disputed", "track": …, "consolidate": …, "receipt": "bafy…", "reason": "…", "at": …},
//!   "receipts": [{"receipt": "bafy…", "archive": "bagbaiera…", "space": "did:key:…", "bytes": 1024, "ok": true}, …] }
//! ```
//!
//! # Crash safety
//! An append is one `write` of a whole section to the open batch, followed
//! by `fdatasync` outside the journal's lock, so concurrent appends share
//! flushes (unless [`JournalConfig::sync_appends`] is off). A crash can
//! only leave the last section incomplete; [`BatchJournal::open`] re-reads
//! the open batch, verifies every section (length prefix, archive CID, hash,
//! decodable retrieve receipt) and truncates the file back to the last
//! complete, verified section. Bytes that are not an interrupted write but
//! corrupt are copied to `quarantine/` before the cut.
//!
//! Rotation fsyncs the open batch, renames it to `batches/<CID>.car` (the CID
//! was computed incrementally while appending) and then writes its
//! metadata. On open every closed batch is hashed again; one whose bytes do
//! not match its name is moved to `quarantine/` and never served. A batch is
//! deleted only by [`BatchJournal::settle`] with a [`Reconciliation`] whose
//! verdict is [`Verdict::Match`](crate::Verdict::Match) for the consolidate
//! task recorded for that batch (or explicitly by [`BatchJournal::remove`]).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cid::Cid;
use etracker_capabilities::retrieve::{egress_bytes, retrieve_capability, EgressError, Retrieve};
use etracker_capabilities::Ability;
use sha2::{Digest, Sha256};
use ucanto::dag::{CodecError, CAR};
use ucanto::principal::Did;
use ucanto::receipt::Receipt;

use crate::batch::{self, Stop};
use crate::client::Tracked;
use crate::reconcile::Reconciliation;

/// The smallest batch the spec allows: 10 MiB.
pub const MIN_BATCH_BYTES: u64 = 10 * 1024 * 1024;
/// The largest batch the spec allows: 1 GiB.
pub const MAX_BATCH_BYTES: u64 = 1024 * 1024 * 1024;
/// Default size at which a batch is closed: 100 MiB, as Piri.
pub const DEFAULT_BATCH_BYTES: u64 = 100 * 1024 * 1024;
/// Default age at which a batch is closed: 12 hours, as Piri.
pub const DEFAULT_BATCH_AGE: Duration = Duration::from_secs(12 * 3600);
/// Largest receipt archive accepted: 8 MiB, the default block limit of CAR
/// readers (go-car, [`ucanto::car::Limits`]), so any reader can read the batch.
pub const MAX_ARCHIVE_BYTES: u64 = 8 * 1024 * 1024;

/// When batches are closed, and how hard appends are made durable.
///
/// ```
/// use std::time::Duration;
/// use etracker_client::JournalConfig;
///
/// // Piri's defaults: close at 100 MiB or after 12 h, never below 10 MiB.
/// let production = JournalConfig::default();
/// // Tests and demos: tiny batches, explicitly allowed.
/// let demo = JournalConfig::default()
///     .allow_small_batches(true)
///     .min_batch_bytes(0)
///     .max_batch_bytes(64 * 1024)
///     .max_batch_age(Duration::from_secs(60));
/// # let _ = (production, demo);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    max_batch_bytes: u64,
    max_batch_age: Duration,
    min_batch_bytes: u64,
    allow_small_batches: bool,
    sync_appends: bool,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            max_batch_bytes: DEFAULT_BATCH_BYTES,
            max_batch_age: DEFAULT_BATCH_AGE,
            min_batch_bytes: MIN_BATCH_BYTES,
            allow_small_batches: false,
            sync_appends: true,
        }
    }
}

impl JournalConfig {
    /// Close a batch before an append would make it larger than `bytes`
    /// (default 100 MiB; at most 1 GiB).
    pub fn max_batch_bytes(mut self, bytes: u64) -> Self {
        self.max_batch_bytes = bytes;
        self
    }

    /// Close a batch once its first receipt is this old (default 12 h).
    pub fn max_batch_age(mut self, age: Duration) -> Self {
        self.max_batch_age = age;
        self
    }

    /// Never close a batch smaller than `bytes` (default 10 MiB, the spec's
    /// minimum; lower values need [`allow_small_batches`](Self::allow_small_batches)).
    pub fn min_batch_bytes(mut self, bytes: u64) -> Self {
        self.min_batch_bytes = bytes;
        self
    }

    /// Allow batch sizes below the spec's 10 MiB minimum (for tests and
    /// demos; a spec-following tracker may refuse such batches).
    pub fn allow_small_batches(mut self, allow: bool) -> Self {
        self.allow_small_batches = allow;
        self
    }

    /// Whether every append is flushed to disk before it returns (default
    /// true). Without it a power loss may lose more than the last receipt.
    pub fn sync_appends(mut self, sync: bool) -> Self {
        self.sync_appends = sync;
        self
    }

    fn validate(&self) -> Result<(), JournalError> {
        let bad = |why: String| Err(JournalError::Config(why));
        if self.max_batch_bytes > MAX_BATCH_BYTES {
            return bad(format!(
                "max_batch_bytes {} is above the spec's 1 GiB",
                self.max_batch_bytes
            ));
        }
        if self.min_batch_bytes > self.max_batch_bytes {
            return bad(format!(
                "min_batch_bytes {} is above max_batch_bytes {}",
                self.min_batch_bytes, self.max_batch_bytes
            ));
        }
        if !self.allow_small_batches
            && (self.min_batch_bytes < MIN_BATCH_BYTES || self.max_batch_bytes < MIN_BATCH_BYTES)
        {
            return bad(format!(
                "batches below the spec's minimum of {MIN_BATCH_BYTES} bytes need allow_small_batches(true)"
            ));
        }
        if self.max_batch_age.is_zero() {
            return bad("max_batch_age must be positive".into());
        }
        Ok(())
    }
}

/// One receipt of a batch, as the journal counted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptRecord {
    /// The receipt's CID.
    pub receipt: Cid,
    /// The CID its archive is stored under in the batch (codec car).
    pub archive: Cid,
    /// The space retrieved from (`with` of the retrieve invocation).
    pub space: Did,
    /// Egress bytes: `end − start + 1` for an ok receipt, 0 for an error receipt.
    pub bytes: u64,
    /// Whether the retrieval succeeded (`out.ok`).
    pub ok: bool,
}

impl ReceiptRecord {
    /// Reads what `receipt` (stored under `archive`) counts for. Ok and error
    /// receipts of a single `space/content/retrieve` invocation, carried
    /// among the receipt's blocks, are accepted.
    pub fn of(receipt: &Receipt, archive: Cid) -> Result<Self, EgressError> {
        let capability = retrieve_capability(receipt)?;
        let space = Retrieve::parse_with(&capability.with).map_err(EgressError::Malformed)?;
        let (bytes, ok) = match egress_bytes(receipt) {
            Ok(bytes) => (bytes, true),
            Err(EgressError::Failed { .. }) => (0, false),
            Err(e) => return Err(e),
        };
        Ok(ReceiptRecord {
            receipt: receipt.cid(),
            archive,
            space,
            bytes,
            ok,
        })
    }
}

/// Where a closed batch is in its life with the tracker.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchState {
    /// Closed, not yet tracked.
    Closed,
    /// `space/egress/track` accepted; waiting for the consolidate receipt.
    Tracked {
        /// The track invocation.
        track: Cid,
        /// The consolidate invocation the tracker forked.
        consolidate: Cid,
        /// When (Unix seconds).
        at: u64,
    },
    /// The consolidate receipt did not match the journal; the batch is kept
    /// (and still served) until an operator removes it.
    Disputed {
        /// The track invocation.
        track: Cid,
        /// The consolidate invocation.
        consolidate: Cid,
        /// The consolidate receipt.
        receipt: Cid,
        /// What did not match.
        reason: String,
        /// When (Unix seconds).
        at: u64,
    },
}

/// What the journal knows of a closed batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRecord {
    /// The batch CID (codec car, sha2-256 of the file).
    pub cid: Cid,
    /// File size in bytes.
    pub size: u64,
    /// When the batch was opened (Unix seconds).
    pub created_at: u64,
    /// When it was closed (Unix seconds).
    pub closed_at: u64,
    /// Its receipts, in file order.
    pub receipts: Vec<ReceiptRecord>,
    /// Tracking state.
    pub state: BatchState,
}

impl BatchRecord {
    /// Egress the batch should be credited with: the sum of its receipts' bytes.
    pub fn expected_egress(&self) -> u64 {
        self.receipts
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.bytes))
    }

    /// Expected egress per space.
    pub fn egress_by_space(&self) -> BTreeMap<Did, u64> {
        let mut out = BTreeMap::new();
        for r in &self.receipts {
            let sum: &mut u64 = out.entry(r.space.clone()).or_default();
            *sum = sum.saturating_add(r.bytes);
        }
        out
    }

    /// The record of receipt `cid`, if it is in this batch.
    pub fn receipt(&self, cid: &Cid) -> Option<&ReceiptRecord> {
        self.receipts.iter().find(|r| r.receipt == *cid)
    }

    /// The consolidate invocation the tracker forked for this batch, once tracked.
    pub fn consolidate(&self) -> Option<Cid> {
        match &self.state {
            BatchState::Closed => None,
            BatchState::Tracked { consolidate, .. } | BatchState::Disputed { consolidate, .. } => {
                Some(*consolidate)
            }
        }
    }
}

/// The batch being appended to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CurrentBatch {
    /// Its file under `open/`.
    pub path: PathBuf,
    /// Size in bytes (header included).
    pub size: u64,
    /// Number of receipts.
    pub receipts: usize,
    /// Egress bytes so far.
    pub expected_egress: u64,
    /// When it was opened (Unix milliseconds).
    pub created_at_ms: u64,
}

/// The result of an append.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Appended {
    /// The receipt.
    pub receipt: Cid,
    /// Its archive's CID in the batch.
    pub archive: Cid,
    /// Egress bytes it counts for.
    pub bytes: u64,
    /// True if the receipt was already in the journal (nothing was written).
    pub duplicate: bool,
    /// The batch closed to make room, if the append rotated.
    pub closed: Option<BatchRecord>,
}

/// What [`BatchJournal::open`] repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovery {
    /// Bytes cut from the end of the open batch (an interrupted append).
    pub truncated: u64,
    /// Files moved to `quarantine/`, and why.
    pub quarantined: Vec<(PathBuf, String)>,
    /// Closed batches whose metadata was rebuilt from the batch file.
    pub rebuilt: Vec<Cid>,
    /// Extra open batches found (an interrupted rotation) and closed.
    pub closed: Vec<Cid>,
}

impl Recovery {
    /// Whether open found everything in order.
    pub fn is_clean(&self) -> bool {
        *self == Recovery::default()
    }
}

/// What [`BatchJournal::settle`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// The consolidation matched; the batch is deleted.
    Removed,
    /// It did not; the batch is kept, marked disputed, for this reason.
    Kept(String),
}

/// A journal failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal I/O on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The configuration is not acceptable.
    #[error("invalid journal configuration: {0}")]
    Config(String),
    /// Another journal holds the directory's lock.
    #[error("journal directory {} is in use by another journal", .0.display())]
    Locked(PathBuf),
    /// The bytes are not a receipt archive.
    #[error("invalid receipt archive: {0}")]
    InvalidArchive(#[source] CodecError),
    /// The receipt is not one the journal can count.
    #[error("receipt {receipt} cannot be journaled: {source}")]
    NotCountable {
        /// The receipt.
        receipt: Cid,
        /// Why.
        #[source]
        source: Box<EgressError>,
    },
    /// The archive is larger than [`MAX_ARCHIVE_BYTES`], or would not fit
    /// in a batch of the configured maximum size.
    #[error("a receipt archive of {size} bytes does not fit (limit {max} bytes)")]
    TooLarge {
        /// Archive (or section) size.
        size: u64,
        /// The limit it exceeds.
        max: u64,
    },
    /// No closed batch has this CID.
    #[error("unknown batch {0}")]
    UnknownBatch(Cid),
    /// The reconciliation is for another consolidate task than the one
    /// recorded for the batch.
    #[error("batch {batch} was tracked as consolidate task {}, not {got}",
        expected.as_ref().map_or("(none: never tracked)".to_string(), |c| c.to_string()))]
    WrongTask {
        /// The batch.
        batch: Cid,
        /// The task recorded for it (none if not tracked).
        expected: Option<Box<Cid>>,
        /// The task of the reconciliation.
        got: Box<Cid>,
    },
    /// A write failed and could not be undone; reopen the journal to repair it.
    #[error("journal stopped after a failed write ({0}); reopen it to repair")]
    Poisoned(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The journal of retrieve receipts (see the [module docs](self) for the
/// on-disk layout and crash safety). Cheap to clone; all clones share one
/// journal. Methods do blocking file I/O of at most one section, except
/// [`open`](Self::open) (which reads everything) and rotation (an fsync and
/// a rename).
#[derive(Clone)]
pub struct BatchJournal {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BatchJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchJournal")
            .field("dir", &self.shared.dir)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

struct Shared {
    dir: PathBuf,
    config: JournalConfig,
    recovery: Recovery,
    state: Mutex<State>,
    _lock: File,
}

struct State {
    open: Option<OpenBatch>,
    closed: BTreeMap<Cid, BatchRecord>,
    seen: HashSet<Cid>,
    poisoned: Option<String>,
}

struct OpenBatch {
    path: PathBuf,
    file: Arc<File>,
    size: u64,
    created_ms: u64,
    hasher: Sha256,
    records: Vec<ReceiptRecord>,
}

impl OpenBatch {
    fn info(&self) -> CurrentBatch {
        CurrentBatch {
            path: self.path.clone(),
            size: self.size,
            receipts: self.records.len(),
            expected_egress: self
                .records
                .iter()
                .fold(0u64, |s, r| s.saturating_add(r.bytes)),
            created_at_ms: self.created_ms,
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn unix_now() -> u64 {
    unix_ms(SystemTime::now()) / 1000
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync dir.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(path.parent().expect("journal files live in a directory"))
}

impl BatchJournal {
    /// Opens (creating if needed) the journal in `dir`, verifying and
    /// repairing it: the open batch is truncated to its last complete,
    /// verified section; closed batches whose bytes do not match their CID
    /// are quarantined; missing metadata is rebuilt. See [`recovery`](Self::recovery).
    pub fn open(dir: impl AsRef<Path>, config: JournalConfig) -> Result<Self, JournalError> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        for sub in ["open", "batches", "quarantine"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(JournalError::Locked(dir)),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }

        let mut recovery = Recovery::default();
        let mut state = State {
            open: None,
            closed: BTreeMap::new(),
            seen: HashSet::new(),
            poisoned: None,
        };
        load_closed(&dir, &mut state, &mut recovery)?;
        load_open(&dir, &mut state, &mut recovery)?;
        for record in state.closed.values() {
            state.seen.extend(record.receipts.iter().map(|r| r.receipt));
        }
        if let Some(open) = &state.open {
            state.seen.extend(open.records.iter().map(|r| r.receipt));
        }
        if !recovery.is_clean() {
            tracing::warn!(dir = %dir.display(), ?recovery, "journal repaired on open");
        }
        Ok(BatchJournal {
            shared: Arc::new(Shared {
                dir,
                config,
                recovery,
                state: Mutex::new(state),
                _lock: lock,
            }),
        })
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// What [`open`](Self::open) repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.shared.recovery
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as
        // the files (every mutation is file first, then memory).
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends a signed `space/content/retrieve` receipt (ok or error) as its
    /// archive ([`Receipt::archive`]), closing the current batch first if it
    /// is due (too old, or too full for this receipt). A receipt already in
    /// the journal is not written again (`duplicate`).
    pub fn append(&self, receipt: &Receipt) -> Result<Appended, JournalError> {
        let archive = receipt.archive().map_err(JournalError::InvalidArchive)?;
        self.append_checked(receipt, &archive)
    }

    /// Appends a receipt archive as given (byte for byte), after checking
    /// that it is one: a CAR with root `{"ucan/receipt@0.9.1": Link}` holding
    /// a countable retrieve receipt.
    pub fn append_archive(&self, archive: &[u8]) -> Result<Appended, JournalError> {
        let receipt = Receipt::extract(archive).map_err(JournalError::InvalidArchive)?;
        self.append_checked(&receipt, archive)
    }

    fn append_checked(&self, receipt: &Receipt, archive: &[u8]) -> Result<Appended, JournalError> {
        let archive_cid = batch::archive_cid(archive);
        let record = ReceiptRecord::of(receipt, archive_cid).map_err(|source| {
            JournalError::NotCountable {
                receipt: receipt.cid(),
                source: Box::new(source),
            }
        })?;
        if archive.len() as u64 > MAX_ARCHIVE_BYTES {
            return Err(JournalError::TooLarge {
                size: archive.len() as u64,
                max: MAX_ARCHIVE_BYTES,
            });
        }
        let section = batch::section(&archive_cid, archive);
        let max = self.shared.config.max_batch_bytes;
        if batch::header().len() as u64 + section.len() as u64 > max {
            return Err(JournalError::TooLarge {
                size: section.len() as u64,
                max,
            });
        }

        let mut state = self.state();
        if let Some(why) = &state.poisoned {
            return Err(JournalError::Poisoned(why.clone()));
        }
        let mut appended = Appended {
            receipt: record.receipt,
            archive: archive_cid,
            bytes: record.bytes,
            duplicate: false,
            closed: None,
        };
        if state.seen.contains(&record.receipt) {
            appended.duplicate = true;
            return Ok(appended);
        }
        let now = SystemTime::now();
        let full = state
            .open
            .as_ref()
            .is_some_and(|o| o.size + section.len() as u64 > max);
        if full || self.due(&state, now) {
            // Below the minimum size a full batch takes this section anyway:
            // the minimum wins over the maximum (see `JournalConfig`).
            appended.closed = self.close(&mut state)?;
        }
        if state.open.is_none() {
            state.open = Some(create_open(&self.shared.dir, now)?);
        }
        let sync = self.shared.config.sync_appends;
        let durable = {
            let state = &mut *state;
            let open = state.open.as_mut().expect("just ensured");
            let before = open.size;
            if let Err(e) = (&*open.file).write_all(&section) {
                // Undo the partial section so the file stays a valid batch.
                let undo = open
                    .file
                    .set_len(before)
                    .and_then(|()| open.file.sync_data());
                if let Err(undo) = undo {
                    state.poisoned = Some(format!("{e}; truncating back failed: {undo}"));
                }
                let path = open.path.clone();
                return Err(io_err(&path)(e));
            }
            open.size += section.len() as u64;
            open.hasher.update(&section);
            open.records.push(record);
            state.seen.insert(appended.receipt);
            sync.then(|| (open.file.clone(), open.path.clone()))
        };
        drop(state);
        // fsync outside the lock: concurrent appends do not queue behind each
        // other's flush (the kernel can commit them together).
        if let Some((file, path)) = durable {
            if let Err(e) = file.sync_data() {
                // After a failed fsync the kernel may have dropped the pages:
                // only a reopen (which re-verifies the file) can be trusted.
                self.state().poisoned = Some(format!("fsync failed: {e}"));
                return Err(io_err(&path)(e));
            }
        }
        Ok(appended)
    }

    fn due(&self, state: &State, now: SystemTime) -> bool {
        let config = &self.shared.config;
        state.open.as_ref().is_some_and(|open| {
            let age = unix_ms(now).saturating_sub(open.created_ms);
            !open.records.is_empty()
                && open.size >= config.min_batch_bytes
                && Duration::from_millis(age) >= config.max_batch_age
        })
    }

    /// Closes the current batch (fsync, CID, rename) if it has receipts and
    /// has reached the minimum size.
    fn close(&self, state: &mut State) -> Result<Option<BatchRecord>, JournalError> {
        let Some(open) = state.open.as_mut() else {
            return Ok(None);
        };
        if open.records.is_empty() || open.size < self.shared.config.min_batch_bytes {
            return Ok(None);
        }
        let record = close_open(&self.shared.dir, open)?;
        state.open = None;
        state.closed.insert(record.cid, record.clone());
        write_meta(&self.shared.dir, &record)?;
        tracing::info!(batch = %record.cid, size = record.size, receipts = record.receipts.len(), "batch closed");
        Ok(Some(record))
    }

    /// Closes the current batch now, whatever its age, if it has receipts
    /// and is at least the configured minimum size. Returns the closed batch.
    pub fn rotate(&self) -> Result<Option<BatchRecord>, JournalError> {
        let mut state = self.state();
        self.close(&mut state)
    }

    /// Closes the current batch if it is older than the maximum age (and
    /// at least the minimum size). Call it periodically ([`crate::Reporter`] does).
    pub fn rotate_if_due(&self) -> Result<Option<BatchRecord>, JournalError> {
        self.rotate_if_due_at(SystemTime::now())
    }

    /// [`rotate_if_due`](Self::rotate_if_due) as if the time were `now`.
    pub fn rotate_if_due_at(&self, now: SystemTime) -> Result<Option<BatchRecord>, JournalError> {
        let mut state = self.state();
        if self.due(&state, now) {
            self.close(&mut state)
        } else {
            Ok(None)
        }
    }

    /// The batch being appended to, if any.
    pub fn current(&self) -> Option<CurrentBatch> {
        self.state().open.as_ref().map(OpenBatch::info)
    }

    /// Closed batches still kept, oldest first.
    pub fn batches(&self) -> Vec<BatchRecord> {
        let mut out: Vec<BatchRecord> = self.state().closed.values().cloned().collect();
        out.sort_by_key(|b| (b.closed_at, b.cid));
        out
    }

    /// The closed batch `cid`, if kept.
    pub fn batch(&self, cid: &Cid) -> Option<BatchRecord> {
        self.state().closed.get(cid).cloned()
    }

    /// The file of closed batch `cid`, if kept.
    pub fn batch_path(&self, cid: &Cid) -> Option<PathBuf> {
        self.state()
            .closed
            .contains_key(cid)
            .then(|| batch_file(&self.shared.dir, cid))
    }

    /// The bytes of closed batch `cid`, if kept.
    pub fn read_batch(&self, cid: &Cid) -> Result<Option<Vec<u8>>, JournalError> {
        let Some(path) = self.batch_path(cid) else {
            return Ok(None);
        };
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            // Removed (settled) since the lookup.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Records that the tracker accepted `space/egress/track` for `batch`
    /// and forked consolidate task `tracked.consolidate`.
    pub fn mark_tracked(
        &self,
        batch: &Cid,
        tracked: &Tracked,
    ) -> Result<BatchRecord, JournalError> {
        self.update(batch, |record| {
            record.state = BatchState::Tracked {
                track: tracked.track,
                consolidate: tracked.consolidate,
                at: unix_now(),
            };
        })
    }

    fn update(
        &self,
        batch: &Cid,
        change: impl FnOnce(&mut BatchRecord),
    ) -> Result<BatchRecord, JournalError> {
        let mut state = self.state();
        let record = state
            .closed
            .get_mut(batch)
            .ok_or(JournalError::UnknownBatch(*batch))?;
        let mut updated = record.clone();
        change(&mut updated);
        write_meta(&self.shared.dir, &updated)?;
        *record = updated.clone();
        Ok(updated)
    }

    /// Acts on a verified reconciliation of one of the journal's batches:
    /// deletes the batch if the verdict is [`Verdict::Match`](crate::Verdict::Match),
    /// otherwise keeps it and marks it disputed. Fails if the reconciliation
    /// is for another consolidate task than the one recorded for the batch.
    pub fn settle(&self, reconciliation: &Reconciliation) -> Result<Settlement, JournalError> {
        let batch = reconciliation.batch;
        let record = self
            .batch(&batch)
            .ok_or(JournalError::UnknownBatch(batch))?;
        let (track, expected) = match &record.state {
            BatchState::Tracked {
                track, consolidate, ..
            }
            | BatchState::Disputed {
                track, consolidate, ..
            } => (*track, Some(*consolidate)),
            BatchState::Closed => (reconciliation.consolidate, None),
        };
        if expected != Some(reconciliation.consolidate) {
            return Err(JournalError::WrongTask {
                batch,
                expected: expected.map(Box::new),
                got: Box::new(reconciliation.consolidate),
            });
        }
        if reconciliation.is_match() {
            self.delete(&batch)?;
            tracing::info!(%batch, total = reconciliation.expected_total, "batch settled and removed");
            return Ok(Settlement::Removed);
        }
        let reason = reconciliation.verdict.to_string();
        self.update(&batch, |record| {
            record.state = BatchState::Disputed {
                track,
                consolidate: reconciliation.consolidate,
                receipt: reconciliation.receipt,
                reason: reason.clone(),
                at: unix_now(),
            };
        })?;
        tracing::warn!(%batch, %reason, "batch disputed, kept");
        Ok(Settlement::Kept(reason))
    }

    /// Deletes closed batch `cid` whatever its state (an operator's
    /// decision, e.g. for a disputed batch). Returns whether it was kept.
    pub fn remove(&self, cid: &Cid) -> Result<bool, JournalError> {
        if self.batch(cid).is_none() {
            return Ok(false);
        }
        self.delete(cid)?;
        Ok(true)
    }

    fn delete(&self, cid: &Cid) -> Result<(), JournalError> {
        let mut state = self.state();
        let Some(record) = state.closed.get(cid) else {
            return Ok(());
        };
        let receipts: Vec<Cid> = record.receipts.iter().map(|r| r.receipt).collect();
        // Batch file first: a crash in between leaves an orphan .json, which
        // open removes, never a batch without its tracking state.
        let car = batch_file(&self.shared.dir, cid);
        remove_if_exists(&car)?;
        remove_if_exists(&meta_file(&self.shared.dir, cid))?;
        sync_dir(&self.shared.dir.join("batches"))?;
        state.closed.remove(cid);
        for r in receipts {
            state.seen.remove(&r);
        }
        Ok(())
    }
}

fn remove_if_exists(path: &Path) -> Result<(), JournalError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

fn batch_file(dir: &Path, cid: &Cid) -> PathBuf {
    dir.join("batches").join(format!("{cid}.car"))
}

fn meta_file(dir: &Path, cid: &Cid) -> PathBuf {
    dir.join("batches").join(format!("{cid}.json"))
}

/// Starts a new open batch: `open/<ms>.car` with the header, fsynced.
fn create_open(dir: &Path, now: SystemTime) -> Result<OpenBatch, JournalError> {
    let open_dir = dir.join("open");
    let mut created_ms = unix_ms(now);
    let (path, mut file) = loop {
        let path = open_dir.join(format!("{created_ms}.car"));
        match OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => break (path, file),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => created_ms += 1,
            Err(e) => return Err(io_err(&path)(e)),
        }
    };
    let header = batch::header();
    file.write_all(&header)
        .and_then(|()| file.sync_all())
        .map_err(io_err(&path))?;
    sync_dir(&open_dir)?;
    let mut hasher = Sha256::new();
    hasher.update(&header);
    Ok(OpenBatch {
        path,
        file: Arc::new(file),
        size: header.len() as u64,
        created_ms,
        hasher,
        records: Vec::new(),
    })
}

/// Fsyncs `open`, computes its CID and renames it into `batches/`.
fn close_open(dir: &Path, open: &mut OpenBatch) -> Result<BatchRecord, JournalError> {
    open.file.sync_all().map_err(io_err(&open.path))?;
    let cid = batch::cid_from_hasher(open.hasher.clone());
    let dest = batch_file(dir, &cid);
    fs::rename(&open.path, &dest).map_err(io_err(&dest))?;
    sync_dir(&dir.join("batches"))?;
    sync_dir(&dir.join("open"))?;
    Ok(BatchRecord {
        cid,
        size: open.size,
        created_at: open.created_ms / 1000,
        closed_at: unix_now(),
        receipts: std::mem::take(&mut open.records),
        state: BatchState::Closed,
    })
}

fn quarantine(
    dir: &Path,
    path: &Path,
    reason: String,
    recovery: &mut Recovery,
) -> Result<(), JournalError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dest = dir
        .join("quarantine")
        .join(format!("{}-{name}", unix_ms(SystemTime::now())));
    fs::rename(path, &dest).map_err(io_err(path))?;
    tracing::error!(file = %path.display(), to = %dest.display(), %reason, "quarantined");
    recovery.quarantined.push((dest, reason));
    Ok(())
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, JournalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        out.push(entry.map_err(io_err(dir))?.path());
    }
    out.sort();
    Ok(out)
}

fn load_closed(dir: &Path, state: &mut State, recovery: &mut Recovery) -> Result<(), JournalError> {
    let batches = dir.join("batches");
    let files = list(&batches)?;
    for path in &files {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "tmp" {
            remove_if_exists(path)?;
            continue;
        }
        if ext != "car" {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let cid = match stem.parse::<Cid>() {
            Ok(cid) if cid.codec() == CAR => cid,
            _ => {
                quarantine(dir, path, "not named by a batch CID".into(), recovery)?;
                continue;
            }
        };
        let file = File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        let actual = batch::hash_reader(file).map_err(io_err(path))?;
        if actual != cid {
            let meta = meta_file(dir, &cid);
            quarantine(
                dir,
                path,
                format!("bytes hash to {actual}, not {cid}"),
                recovery,
            )?;
            if meta.exists() {
                quarantine(
                    dir,
                    &meta,
                    format!("metadata of quarantined batch {cid}"),
                    recovery,
                )?;
            }
            continue;
        }
        let meta = meta_file(dir, &cid);
        let record = match fs::read(&meta).ok().and_then(|b| meta::decode(&b).ok()) {
            Some(record) if record.cid == cid && record.size == len => record,
            _ => {
                let file = File::open(path).map_err(io_err(path))?;
                let scan = batch::scan(file, len).map_err(io_err(path))?;
                if scan.stop.is_some() || scan.good_len != len || scan.records.is_empty() {
                    quarantine(
                        dir,
                        path,
                        format!("not a valid batch: {:?}", scan.stop),
                        recovery,
                    )?;
                    continue;
                }
                let mtime = fs::metadata(path)
                    .and_then(|m| m.modified())
                    .map(|t| unix_ms(t) / 1000)
                    .unwrap_or_else(|_| unix_now());
                let record = BatchRecord {
                    cid,
                    size: len,
                    created_at: mtime,
                    closed_at: mtime,
                    receipts: scan.records,
                    state: BatchState::Closed,
                };
                write_meta(dir, &record)?;
                recovery.rebuilt.push(cid);
                record
            }
        };
        state.closed.insert(cid, record);
    }
    // Metadata whose batch is gone: the batch was settled (deleted first).
    for path in files {
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            let known = stem
                .parse::<Cid>()
                .is_ok_and(|cid| state.closed.contains_key(&cid));
            if !known && !path.with_extension("car").exists() {
                remove_if_exists(&path)?;
            }
        }
    }
    Ok(())
}

fn load_open(dir: &Path, state: &mut State, recovery: &mut Recovery) -> Result<(), JournalError> {
    let open_dir = dir.join("open");
    let files: Vec<PathBuf> = list(&open_dir)?
        .into_iter()
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("car"))
        .collect();
    let count = files.len();
    for (i, path) in files.into_iter().enumerate() {
        let newest = i + 1 == count;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        let scan = batch::scan(&mut file, len).map_err(io_err(&path))?;
        if scan.good_len == 0 {
            // Not even a complete header: an interrupted creation, or not a batch.
            match scan.stop {
                Some(Stop::Corrupt(why)) => quarantine(dir, &path, why, recovery)?,
                _ => {
                    recovery.truncated += len;
                    remove_if_exists(&path)?;
                }
            }
            continue;
        }
        if scan.good_len < len {
            if let Some(Stop::Corrupt(why)) = &scan.stop {
                save_tail(dir, &path, scan.good_len, why, recovery)?;
            }
            file.set_len(scan.good_len)
                .and_then(|()| file.sync_all())
                .map_err(io_err(&path))?;
            recovery.truncated += len - scan.good_len;
        }
        let created_ms = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or_else(|| unix_ms(SystemTime::now()));
        let mut open = OpenBatch {
            path: path.clone(),
            file: Arc::new(file),
            size: scan.good_len,
            created_ms,
            hasher: scan.hasher,
            records: scan.records,
        };
        if newest {
            state.open = Some(open);
        } else if open.records.is_empty() {
            remove_if_exists(&path)?;
        } else {
            // An older open batch (an interrupted rotation): close it whatever its size.
            let record = close_open(dir, &mut open)?;
            write_meta(dir, &record)?;
            recovery.closed.push(record.cid);
            state.closed.insert(record.cid, record);
        }
    }
    Ok(())
}

/// Copies the bytes of `path` after `from` to `quarantine/` before they are cut.
fn save_tail(
    dir: &Path,
    path: &Path,
    from: u64,
    why: &str,
    recovery: &mut Recovery,
) -> Result<(), JournalError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let name = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dest = dir
        .join("quarantine")
        .join(format!("{name}-from-{from}.tail"));
    write_atomic(&dest, &bytes[from as usize..])?;
    tracing::error!(file = %path.display(), from, reason = %why, "corrupt tail quarantined");
    recovery
        .quarantined
        .push((dest, format!("corrupt section: {why}")));
    Ok(())
}

fn write_meta(dir: &Path, record: &BatchRecord) -> Result<(), JournalError> {
    write_atomic(&meta_file(dir, &record.cid), &meta::encode(record))
}

/// The `.json` metadata format.
mod meta {
    use serde::{Deserialize, Serialize};

    use super::{BatchRecord, BatchState, ReceiptRecord};

    #[derive(Serialize, Deserialize)]
    struct Meta {
        version: u32,
        cid: String,
        size: u64,
        created_at: u64,
        closed_at: u64,
        total_egress: u64,
        state: State,
        receipts: Vec<Receipt>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "status", rename_all = "lowercase")]
    enum State {
        Closed,
        Tracked {
            track: String,
            consolidate: String,
            at: u64,
        },
        Disputed {
            track: String,
            consolidate: String,
            receipt: String,
            reason: String,
            at: u64,
        },
    }

    #[derive(Serialize, Deserialize)]
    struct Receipt {
        receipt: String,
        archive: String,
        space: String,
        bytes: u64,
        ok: bool,
    }

    pub(super) fn encode(record: &BatchRecord) -> Vec<u8> {
        let state = match &record.state {
            BatchState::Closed => State::Closed,
            BatchState::Tracked {
                track,
                consolidate,
                at,
            } => State::Tracked {
                track: track.to_string(),
                consolidate: consolidate.to_string(),
                at: *at,
            },
            BatchState::Disputed {
                track,
                consolidate,
                receipt,
                reason,
                at,
            } => State::Disputed {
                track: track.to_string(),
                consolidate: consolidate.to_string(),
                receipt: receipt.to_string(),
                reason: reason.clone(),
                at: *at,
            },
        };
        let meta = Meta {
            version: 1,
            cid: record.cid.to_string(),
            size: record.size,
            created_at: record.created_at,
            closed_at: record.closed_at,
            total_egress: record.expected_egress(),
            state,
            receipts: record
                .receipts
                .iter()
                .map(|r| Receipt {
                    receipt: r.receipt.to_string(),
                    archive: r.archive.to_string(),
                    space: r.space.to_string(),
                    bytes: r.bytes,
                    ok: r.ok,
                })
                .collect(),
        };
        serde_json::to_vec_pretty(&meta).expect("metadata serializes")
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<BatchRecord, String> {
        let meta: Meta = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if meta.version != 1 {
            return Err(format!("unknown metadata version {}", meta.version));
        }
        let cid = |s: &str| s.parse().map_err(|e| format!("{s}: {e}"));
        let state = match meta.state {
            State::Closed => BatchState::Closed,
            State::Tracked {
                track,
                consolidate,
                at,
            } => BatchState::Tracked {
                track: cid(&track)?,
                consolidate: cid(&consolidate)?,
                at,
            },
            State::Disputed {
                track,
                consolidate,
                receipt,
                reason,
                at,
            } => BatchState::Disputed {
                track: cid(&track)?,
                consolidate: cid(&consolidate)?,
                receipt: cid(&receipt)?,
                reason,
                at,
            },
        };
        let receipts = meta
            .receipts
            .iter()
            .map(|r| {
                Ok(ReceiptRecord {
                    receipt: cid(&r.receipt)?,
                    archive: cid(&r.archive)?,
                    space: r.space.parse().map_err(|e| format!("{}: {e}", r.space))?,
                    bytes: r.bytes,
                    ok: r.ok,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(BatchRecord {
            cid: cid(&meta.cid)?,
            size: meta.size,
            created_at: meta.created_at,
            closed_at: meta.closed_at,
            receipts,
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors stay under clippy's `result_large_err` threshold, so callers'
    /// `Result<_, JournalError>` closures do not trip it.
    #[test]
    fn errors_stay_small() {
        assert!(std::mem::size_of::<JournalError>() <= 128);
    }
}
