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
use std::time::{Duration, SystemTime};

use cid::Cid;
use sha2::Digest;
use ucanto::receipt::Receipt;

use crate::batch;
use crate::client::Tracked;
use crate::reconcile::Reconciliation;

mod config;
mod error;
mod files;
mod meta;
mod open_batch;
mod recover;

pub use crate::record::{BatchRecord, BatchState, ReceiptRecord};
pub use config::{
    JournalConfig, DEFAULT_BATCH_AGE, DEFAULT_BATCH_BYTES, MAX_ARCHIVE_BYTES, MAX_BATCH_BYTES,
    MIN_BATCH_BYTES,
};
pub use error::JournalError;
pub use recover::Recovery;

use error::io_err;
use files::{batch_file, meta_file, remove_if_exists, sync_dir, unix_ms, unix_now};
use open_batch::{close_open, create_open, OpenBatch};
use recover::{load_closed, load_open};

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

/// What [`BatchJournal::settle`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// The consolidation matched; the batch is deleted.
    Removed,
    /// It did not; the batch is kept, marked disputed, for this reason.
    Kept(String),
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
        meta::write(&self.shared.dir, &record)?;
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
        meta::write(&self.shared.dir, &updated)?;
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
