//! The batch being appended to: its file under `open/`, the hash of what
//! it holds so far, and closing it into `batches/`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::error::io_err;
use super::files::{batch_file, sync_dir, unix_ms, unix_now};
use super::{BatchRecord, BatchState, CurrentBatch, JournalError, ReceiptRecord};
use crate::batch;

pub(super) struct OpenBatch {
    /// Its file, `open/<created_ms>.car`.
    pub(super) path: PathBuf,
    /// Opened for appending; shared so that appends fsync outside the lock.
    pub(super) file: Arc<File>,
    /// Bytes written (header included).
    pub(super) size: u64,
    /// When it was created (Unix milliseconds).
    pub(super) created_ms: u64,
    /// sha2-256 of the bytes written: the batch CID once closed.
    pub(super) hasher: Sha256,
    /// Its receipts, in file order.
    pub(super) records: Vec<ReceiptRecord>,
}

impl OpenBatch {
    /// What [`BatchJournal::current`](super::BatchJournal::current) reports.
    pub(super) fn info(&self) -> CurrentBatch {
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

/// Starts a new open batch: `open/<ms>.car` with the header, fsynced.
pub(super) fn create_open(dir: &Path, now: SystemTime) -> Result<OpenBatch, JournalError> {
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
pub(super) fn close_open(dir: &Path, open: &mut OpenBatch) -> Result<BatchRecord, JournalError> {
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
