//! What [`BatchJournal::open`](super::BatchJournal::open) does before the
//! journal is used: verify every batch, rebuild missing metadata, cut an
//! interrupted append, close batches left open by an interrupted rotation,
//! and quarantine whatever is corrupt.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use cid::Cid;
use ucanto::dag::CAR;

use super::error::io_err;
use super::files::{list, meta_file, remove_if_exists, unix_ms, unix_now, write_atomic};
use super::open_batch::{close_open, OpenBatch};
use super::{meta, BatchRecord, BatchState, JournalError, State};
use crate::batch::{self, Stop};

/// What [`BatchJournal::open`](super::BatchJournal::open) repaired.
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

/// Loads `batches/`: re-hashes every batch, quarantines those whose bytes
/// do not match their name, rebuilds missing metadata, removes orphan
/// metadata and leftover temporary files.
pub(super) fn load_closed(
    dir: &Path,
    state: &mut State,
    recovery: &mut Recovery,
) -> Result<(), JournalError> {
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
                meta::write(dir, &record)?;
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

/// Loads `open/`: cuts each batch back to its last verified section, keeps
/// the newest open and closes the others (an interrupted rotation).
pub(super) fn load_open(
    dir: &Path,
    state: &mut State,
    recovery: &mut Recovery,
) -> Result<(), JournalError> {
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
            meta::write(dir, &record)?;
            recovery.closed.push(record.cid);
            state.closed.insert(record.cid, record);
        }
    }
    Ok(())
}

/// Moves `path` to `quarantine/`, never to be served or deleted.
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
