//! Where the journal's files are, and the file operations it makes durable.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cid::Cid;

use super::error::io_err;
use super::JournalError;

/// The file of closed batch `cid`.
pub(super) fn batch_file(dir: &Path, cid: &Cid) -> PathBuf {
    dir.join("batches").join(format!("{cid}.car"))
}

/// The metadata of closed batch `cid`.
pub(super) fn meta_file(dir: &Path, cid: &Cid) -> PathBuf {
    dir.join("batches").join(format!("{cid}.json"))
}

/// Removes `path`; already gone is fine.
pub(super) fn remove_if_exists(path: &Path) -> Result<(), JournalError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// The entries of `dir`, sorted.
pub(super) fn list(dir: &Path) -> Result<Vec<PathBuf>, JournalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        out.push(entry.map_err(io_err(dir))?.path());
    }
    out.sort();
    Ok(out)
}

/// Fsyncs directory `dir`, so that a rename or creation in it is durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync dir.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(path.parent().expect("journal files live in a directory"))
}

/// `t` in Unix milliseconds (0 before the epoch).
pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Now, in Unix seconds.
pub(super) fn unix_now() -> u64 {
    unix_ms(SystemTime::now()) / 1000
}
