//! Crash safety: an append cut short anywhere is repaired on open, losing at
//! most that receipt; closed batches are served only if their bytes match
//! their CID.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use etracker_client::batch::batch_cid;
use etracker_client::BatchJournal;

fn reopen(dir: &Path) -> BatchJournal {
    // Crashes are simulated by cutting files, so per-append fsyncs add nothing here.
    BatchJournal::open(dir, tiny(1 << 20).sync_appends(false)).unwrap()
}

/// Checks that a closed batch's bytes are a valid batch matching its CID.
fn assert_served_batch_is_sound(journal: &BatchJournal, receipts: usize) {
    let batch = journal.rotate().unwrap().expect("batch closes");
    let bytes = journal.read_batch(&batch.cid).unwrap().unwrap();
    assert_eq!(batch_cid(&bytes), batch.cid);
    let (header, blocks) = ucanto::car::decode(&bytes).unwrap();
    assert!(header.roots.is_empty());
    assert_eq!(blocks.len(), receipts);
    for (_, archive) in blocks {
        ucanto::receipt::Receipt::extract(&archive).unwrap();
    }
}

/// Truncating the open batch at every length inside its last section (as a
/// crash mid-append would): the journal reopens cleanly with the earlier
/// receipts, accepts new appends, and the batch it closes matches its CID.
#[test]
fn a_cut_anywhere_in_the_last_section_loses_only_that_receipt() {
    let dir = TempDir::new("cut");
    let journal = reopen(dir.path());
    journal.append(&ok_receipt(0, 9)).unwrap();
    journal.append(&error_receipt(10, 19)).unwrap();
    let before = journal.current().unwrap().size;
    journal.append(&ok_receipt(20, 29)).unwrap();
    let after = journal.current().unwrap().size;
    let path = open_file(dir.path());
    drop(journal);
    let full = fs::read(&path).unwrap();
    assert_eq!(full.len() as u64, after);

    for cut in before..after {
        fs::write(&path, &full[..cut as usize]).unwrap();
        let journal = reopen(dir.path());
        assert_eq!(journal.recovery().truncated, cut - before, "cut at {cut}");
        assert!(journal.recovery().quarantined.is_empty(), "cut at {cut}");
        let current = journal.current().unwrap();
        assert_eq!(
            (current.size, current.receipts),
            (before, 2),
            "cut at {cut}"
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), before);
        // The lost receipt can be appended again (the retrieval is re-journaled).
        assert!(!journal.append(&ok_receipt(20, 29)).unwrap().duplicate);
        assert_eq!(journal.current().unwrap().size, after);
        drop(journal);
    }
    fs::write(&path, &full[..before as usize]).unwrap();
    let journal = reopen(dir.path());
    assert!(journal.recovery().is_clean());
    assert_served_batch_is_sound(&journal, 2);
}

/// A crash while creating the open batch (inside its header) leaves nothing
/// to keep; the journal starts the next batch afresh.
#[test]
fn a_cut_inside_the_header_starts_afresh() {
    let dir = TempDir::new("header");
    let journal = reopen(dir.path());
    journal.append(&ok_receipt(0, 9)).unwrap();
    let path = open_file(dir.path());
    drop(journal);
    let full = fs::read(&path).unwrap();
    for cut in 0..18 {
        fs::write(&path, &full[..cut]).unwrap();
        let journal = reopen(dir.path());
        assert!(journal.current().is_none(), "cut at {cut}");
        assert_eq!(journal.recovery().truncated, cut as u64);
        journal.append(&ok_receipt(0, 9)).unwrap();
        let path_now = open_file(dir.path());
        drop(journal);
        fs::rename(&path_now, &path).unwrap();
    }
    let journal = reopen(dir.path());
    assert_served_batch_is_sound(&journal, 1);
}

/// Bytes that are not an interrupted write (a section whose archive does not
/// hash to its CID) are cut too, but kept in quarantine/ first.
#[test]
fn a_corrupt_section_is_quarantined_and_cut() {
    let dir = TempDir::new("corrupt");
    let journal = reopen(dir.path());
    journal.append(&ok_receipt(0, 9)).unwrap();
    let before = journal.current().unwrap().size;
    journal.append(&ok_receipt(10, 19)).unwrap();
    journal.append(&ok_receipt(20, 29)).unwrap();
    let path = open_file(dir.path());
    drop(journal);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 5;
    bytes[before as usize + 60] ^= 0xff; // inside the second section's archive
    bytes[last] ^= 0xff;
    fs::write(&path, &bytes).unwrap();

    let journal = reopen(dir.path());
    let recovery = journal.recovery();
    assert_eq!(recovery.truncated, bytes.len() as u64 - before);
    assert_eq!(recovery.quarantined.len(), 1);
    let (tail, _) = &recovery.quarantined[0];
    assert_eq!(fs::read(tail).unwrap(), &bytes[before as usize..]);
    assert_eq!(journal.current().unwrap().receipts, 1);
    assert_served_batch_is_sound(&journal, 1);
}

/// A closed batch whose bytes no longer match its CID is never served: it
/// is moved to quarantine/ on open.
#[test]
fn a_tampered_closed_batch_is_quarantined_not_served() {
    let dir = TempDir::new("tamper");
    let journal = reopen(dir.path());
    journal.append(&ok_receipt(0, 9)).unwrap();
    let good = journal.rotate().unwrap().unwrap();
    journal.append(&ok_receipt(10, 19)).unwrap();
    let bad = journal.rotate().unwrap().unwrap();
    drop(journal);
    let path = dir.path().join(format!("batches/{}.car", bad.cid));
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    fs::write(&path, &bytes).unwrap();

    let journal = reopen(dir.path());
    assert_eq!(
        journal.recovery().quarantined.len(),
        2,
        "batch and its metadata"
    );
    assert!(journal.batch(&bad.cid).is_none());
    assert!(journal.read_batch(&bad.cid).unwrap().is_none());
    assert!(journal.batch(&good.cid).is_some());
    let served = journal.read_batch(&good.cid).unwrap().unwrap();
    assert_eq!(batch_cid(&served), good.cid);
}

/// Two files in open/ (an interrupted rotation, a restored backup): the
/// older is closed on open, the newer stays open.
#[test]
fn an_extra_open_batch_is_closed_on_open() {
    use etracker_client::batch::{archive_cid, header, section};
    let dir = TempDir::new("two-open");
    drop(reopen(dir.path()));
    for (name, receipt) in [("1.car", ok_receipt(0, 9)), ("2.car", ok_receipt(10, 19))] {
        let archive = receipt.archive().unwrap();
        let mut bytes = header();
        bytes.extend(section(&archive_cid(&archive), &archive));
        fs::write(dir.path().join("open").join(name), bytes).unwrap();
    }
    let journal = reopen(dir.path());
    assert_eq!(journal.recovery().closed.len(), 1);
    let closed = journal.batch(&journal.recovery().closed[0]).unwrap();
    assert_eq!(closed.receipts[0].receipt, ok_receipt(0, 9).cid());
    assert_eq!(closed.created_at, 0, "from the file name, in ms");
    let current = journal.current().unwrap();
    assert_eq!((current.receipts, current.created_at_ms), (1, 2));
    assert_served_batch_is_sound(&journal, 1);
}
