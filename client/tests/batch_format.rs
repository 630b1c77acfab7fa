//! Batches the journal writes are exactly Piri's format (PROTOCOL.md §5), and
//! the journal rotates them by size and age within the configured bounds.

mod common;

use std::time::{Duration, SystemTime};

use cid::Cid;
use common::*;
use etracker_client::{BatchJournal, BatchState, JournalConfig, JournalError};
use sha2::{Digest, Sha256};
use ucanto::dag::{Ipld, IpldMap};
use ucanto::principal::Signer;
use ucanto::receipt::{Receipt, ReceiptParts};

/// CIDv1, codec car (0x0202), sha2-256 of `bytes`, built from the spec's words.
fn car_cid(bytes: &[u8]) -> Cid {
    let mh = cid::multihash::Multihash::<64>::wrap(0x12, &Sha256::digest(bytes)).unwrap();
    Cid::new_v1(0x0202, mh)
}

/// A reader written from the §5 description: a CARv1 with empty roots whose
/// blocks are receipt archives under car-codec sha2-256 CIDs.
fn read_batch(bytes: &[u8]) -> Vec<(Cid, Receipt)> {
    let (header, blocks) = ucanto::car::decode(bytes).unwrap();
    assert!(header.roots.is_empty(), "a batch has no roots");
    blocks
        .into_iter()
        .map(|(cid, archive)| {
            assert_eq!(cid.version(), cid::Version::V1);
            assert_eq!(cid.codec(), 0x0202, "archive CIDs have codec car");
            assert_eq!(
                cid,
                car_cid(&archive),
                "archive CID = sha2-256 of its bytes"
            );
            (cid, Receipt::extract(&archive).unwrap())
        })
        .collect()
}

/// Appended receipts come back, in order, from a plain CAR reader; the batch
/// CID is the car-codec sha2-256 of the file.
#[test]
fn a_journal_batch_reads_with_a_plain_car_reader() {
    let dir = TempDir::new("format");
    let journal = BatchJournal::open(dir.path(), tiny(1 << 20)).unwrap();
    let receipts = vec![
        ok_receipt(0, 1023),
        error_receipt(0, 99),
        ok_receipt(1024, 4095),
        ok_receipt(4096, 4096),
    ];
    for r in &receipts {
        let appended = journal.append(r).unwrap();
        assert!(!appended.duplicate && appended.closed.is_none());
    }
    let current = journal.current().unwrap();
    assert_eq!(
        (current.receipts, current.expected_egress),
        (4, 1024 + 3072 + 1)
    );
    let record = journal
        .rotate()
        .unwrap()
        .expect("a batch with receipts closes");
    assert!(journal.current().is_none());

    let bytes = journal.read_batch(&record.cid).unwrap().unwrap();
    assert_eq!(record.cid, car_cid(&bytes));
    assert_eq!(record.size, bytes.len() as u64);
    let read = read_batch(&bytes);
    assert_eq!(read.len(), receipts.len());
    for ((archive, receipt), (want, rec)) in read.iter().zip(receipts.iter().zip(&record.receipts))
    {
        assert_eq!(receipt.cid(), want.cid());
        assert_eq!(
            receipt.ran_cid(),
            want.ran_cid(),
            "the invocation travels along"
        );
        assert!(receipt.ran().is_some());
        assert!(receipt.verify_signature(node().verifier().as_ref()));
        assert_eq!((rec.receipt, rec.archive), (want.cid(), *archive));
        assert_eq!(&rec.space, alice().did());
    }
    let bytes_counted: Vec<(u64, bool)> = record.receipts.iter().map(|r| (r.bytes, r.ok)).collect();
    assert_eq!(
        bytes_counted,
        [(1024, true), (0, false), (3072, true), (1, true)]
    );
    assert_eq!(record.expected_egress(), 4097);
    assert_eq!(record.egress_by_space().get(alice().did()), Some(&4097));
    assert_eq!(record.state, BatchState::Closed);
}

/// The JS-generated sample batch: fed the same archives in the same order,
/// the journal writes the identical file under the identical CID; and the
/// fixture receipts archive (`Receipt::archive`) to exactly those archives.
#[test]
fn the_js_sample_batch_is_reproduced_byte_for_byte() {
    let sample = fixture("batch.car");
    let vectors: serde_json::Value = serde_json::from_slice(&fixture("vectors.json")).unwrap();
    let manifest = &vectors["batch"];
    let sample_cid: Cid = manifest["cid"].as_str().unwrap().parse().unwrap();
    assert_eq!(car_cid(&sample), sample_cid);

    let (_, blocks) = ucanto::car::decode(&sample).unwrap();
    let archives = manifest["archives"].as_array().unwrap();
    assert_eq!(blocks.len(), archives.len());

    // Through append_archive, byte for byte.
    let dir = TempDir::new("js-archives");
    let journal = BatchJournal::open(dir.path(), tiny(1 << 20)).unwrap();
    for ((cid, archive), entry) in blocks.iter().zip(archives) {
        assert_eq!(cid.to_string(), entry["cid"].as_str().unwrap());
        assert_eq!(journal.append_archive(archive).unwrap().archive, *cid);
    }
    let record = journal.rotate().unwrap().unwrap();
    assert_eq!(record.cid, sample_cid);
    assert_eq!(journal.read_batch(&record.cid).unwrap().unwrap(), sample);
    assert_eq!(
        record.expected_egress(),
        manifest["totalEgress"].as_u64().unwrap()
    );

    // Through append(&Receipt), from the receipt fixtures.
    let dir = TempDir::new("js-receipts");
    let journal = BatchJournal::open(dir.path(), tiny(1 << 20)).unwrap();
    for ((_, archive), entry) in blocks.iter().zip(archives) {
        let receipt = fixture_receipt(entry["receipt"].as_str().unwrap());
        assert_eq!(&receipt.archive().unwrap()[..], &archive[..]);
        journal.append(&receipt).unwrap();
    }
    let record = journal.rotate().unwrap().unwrap();
    assert_eq!(record.cid, sample_cid);
    assert_eq!(journal.read_batch(&record.cid).unwrap().unwrap(), sample);
}

/// Size rotation: a batch is closed before an append would push it over the
/// maximum, so every batch stays within it; the closed batch is returned.
#[test]
fn batches_rotate_by_size_within_the_maximum() {
    let dir = TempDir::new("size");
    let section = etracker_client::batch::section(
        &etracker_client::batch::archive_cid(&ok_receipt(0, 0).archive().unwrap()),
        &ok_receipt(0, 0).archive().unwrap(),
    )
    .len() as u64;
    let max = 18 + 3 * section + section / 2; // room for three receipts
    let journal = BatchJournal::open(dir.path(), tiny(max)).unwrap();
    let mut closed = Vec::new();
    for i in 0..10u64 {
        let appended = journal.append(&ok_receipt(i * 10, i * 10 + 9)).unwrap();
        closed.extend(appended.closed);
    }
    assert_eq!(closed.len(), 3, "10 receipts, 3 per batch");
    for batch in &closed {
        assert!(batch.size <= max, "{} > {max}", batch.size);
        assert_eq!(batch.receipts.len(), 3);
        assert_eq!(batch.expected_egress(), 30);
        let bytes = journal.read_batch(&batch.cid).unwrap().unwrap();
        assert_eq!(read_batch(&bytes).len(), 3);
    }
    assert_eq!(journal.current().unwrap().receipts, 1);
    assert_eq!(journal.batches().len(), 3);

    // A receipt that cannot fit in any batch is refused.
    let small = BatchJournal::open(TempDir::new("too-large").path(), tiny(100)).unwrap();
    assert!(matches!(
        small.append(&ok_receipt(0, 1)),
        Err(JournalError::TooLarge { .. })
    ));
}

/// Age rotation: due once the batch is older than the maximum age, and only
/// if it has reached the minimum size.
#[test]
fn batches_rotate_by_age_but_never_below_the_minimum() {
    let dir = TempDir::new("age");
    let config = tiny(1 << 20)
        .min_batch_bytes(4096)
        .max_batch_age(Duration::from_secs(3600));
    let journal = BatchJournal::open(dir.path(), config).unwrap();
    let now = SystemTime::now();
    let later = now + Duration::from_secs(3601);
    assert!(journal.rotate_if_due_at(later).unwrap().is_none(), "empty");
    journal.append(&ok_receipt(0, 9)).unwrap();
    assert!(
        journal.rotate_if_due_at(now).unwrap().is_none(),
        "too young"
    );
    assert!(
        journal.rotate_if_due_at(later).unwrap().is_none(),
        "too small"
    );
    assert!(
        journal.rotate().unwrap().is_none(),
        "too small even when asked"
    );
    let mut i = 1;
    while journal.current().unwrap().size < 4096 {
        journal.append(&ok_receipt(i * 10, i * 10 + 9)).unwrap();
        i += 1;
    }
    assert!(
        journal.rotate_if_due_at(now).unwrap().is_none(),
        "big enough, too young"
    );
    let batch = journal.rotate_if_due_at(later).unwrap().expect("due");
    assert_eq!(batch.receipts.len() as u64, i);
    assert!(journal.current().is_none());
}

/// The defaults are Piri's; batches below the spec's 10 MiB minimum or above
/// 1 GiB need saying so.
#[test]
fn configuration_is_checked() {
    let dir = TempDir::new("config");
    let open = |config: JournalConfig| BatchJournal::open(dir.path(), config).map(drop);
    open(JournalConfig::default()).unwrap();
    for bad in [
        JournalConfig::default().min_batch_bytes(1 << 20),
        JournalConfig::default()
            .max_batch_bytes(1 << 20)
            .min_batch_bytes(0),
        JournalConfig::default().max_batch_bytes(2 << 30),
        tiny(1000).min_batch_bytes(2000),
        tiny(1000).max_batch_age(Duration::ZERO),
    ] {
        assert!(matches!(open(bad), Err(JournalError::Config(_))));
    }
    open(tiny(1000)).unwrap();
}

/// Only countable `space/content/retrieve` receipts are journaled, each once.
#[test]
fn appends_are_checked_and_idempotent() {
    let dir = TempDir::new("append");
    let journal = BatchJournal::open(dir.path(), tiny(1 << 20)).unwrap();
    let receipt = ok_receipt(0, 9);
    assert!(!journal.append(&receipt).unwrap().duplicate);
    assert!(journal.append(&receipt).unwrap().duplicate);
    assert!(
        journal
            .append_archive(&receipt.archive().unwrap())
            .unwrap()
            .duplicate
    );
    assert_eq!(journal.current().unwrap().receipts, 1);

    // A receipt of another ability.
    let echo = ucanto::ucan::Delegation::builder(&alice(), node().did().clone())
        .capability(ucanto::ucan::Capability::new(
            "test/echo",
            alice().did().as_str(),
        ))
        .build()
        .unwrap();
    let other = Receipt::issue(
        &node(),
        ReceiptParts::new(&echo, Ok(Ipld::Map(IpldMap::new()))),
    )
    .unwrap();
    assert!(matches!(
        journal.append(&other),
        Err(JournalError::NotCountable { .. })
    ));
    // A receipt without its invocation.
    let bare = Receipt::issue(
        &node(),
        ReceiptParts::new(retrieve(0, 1).cid(), Ok(Ipld::Map(IpldMap::new()))),
    )
    .unwrap();
    assert!(matches!(
        journal.append(&bare),
        Err(JournalError::NotCountable { .. })
    ));
    // Not an archive.
    assert!(matches!(
        journal.append_archive(b"nope"),
        Err(JournalError::InvalidArchive(_))
    ));
    assert_eq!(journal.current().unwrap().receipts, 1);
}

/// One journal per directory; state survives a reopen.
#[test]
fn the_directory_is_locked_and_state_survives_reopening() {
    let dir = TempDir::new("lock");
    let journal = BatchJournal::open(dir.path(), tiny(1 << 20)).unwrap();
    assert!(matches!(
        BatchJournal::open(dir.path(), tiny(1 << 20)),
        Err(JournalError::Locked(_))
    ));
    journal.append(&ok_receipt(0, 9)).unwrap();
    let closed = journal.rotate().unwrap().unwrap();
    let tracked = etracker_client::Tracked {
        track: retrieve(0, 0).cid(),
        consolidate: retrieve(1, 1).cid(),
    };
    journal.mark_tracked(&closed.cid, &tracked).unwrap();
    journal.append(&ok_receipt(10, 19)).unwrap();
    drop(journal);

    let journal = BatchJournal::open(dir.path(), tiny(1 << 20)).unwrap();
    assert!(journal.recovery().is_clean(), "{:?}", journal.recovery());
    let again = journal.batch(&closed.cid).unwrap();
    assert_eq!(again.receipts, closed.receipts);
    assert_eq!(again.consolidate(), Some(tracked.consolidate));
    assert_eq!(journal.current().unwrap().receipts, 1);
    assert!(
        journal.append(&ok_receipt(0, 9)).unwrap().duplicate,
        "still known"
    );

    // Lost metadata is rebuilt from the batch file (tracking state is lost with it).
    drop(journal);
    std::fs::remove_file(dir.path().join(format!("batches/{}.json", closed.cid))).unwrap();
    let journal = BatchJournal::open(dir.path(), tiny(1 << 20)).unwrap();
    assert_eq!(journal.recovery().rebuilt, vec![closed.cid]);
    let rebuilt = journal.batch(&closed.cid).unwrap();
    assert_eq!(
        (rebuilt.receipts, rebuilt.state),
        (closed.receipts, BatchState::Closed)
    );
}

/// Concurrent appends (with rotations among them) lose nothing and write
/// every receipt exactly once, each batch still a valid batch.
#[test]
fn concurrent_appends_are_all_kept_once() {
    let dir = TempDir::new("concurrent");
    let journal = BatchJournal::open(dir.path(), tiny(8 * 1024)).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                for i in 0..25u64 {
                    let start = (t * 100 + i) * 10;
                    journal.append(&ok_receipt(start, start + 9)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    journal.rotate().unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for batch in journal.batches() {
        let bytes = journal.read_batch(&batch.cid).unwrap().unwrap();
        assert_eq!(car_cid(&bytes), batch.cid);
        for (_, receipt) in read_batch(&bytes) {
            assert!(seen.insert(receipt.cid()), "written twice");
        }
        total += batch.expected_egress();
    }
    assert_eq!((seen.len(), total), (100, 1000));
    assert!(journal.batches().len() > 5, "rotated along the way");
}
