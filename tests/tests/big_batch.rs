//! A 1 GiB batch made of one retrieval's receipt repeated ~800,000 times:
//! the worst a node can send within the size limits. It concludes, counts
//! the retrieval once, keeps its receipt small enough for any ucanto client
//! (read here by real JS @ucanto), and the tracker's memory stays bounded.
//!
//! Alone in its test binary, so the process's peak memory is this test's.

use std::io::Write;
use std::path::PathBuf;

use cid::Cid;
use etracker_e2e::node::{
    consolidate_now, consolidate_out, consolidate_receipt, good_receipts, invoke, node,
    start_tracker, temp_dir, test_settings, track_invocation, track_proof,
};
use etracker_e2e::node::{js_read_receipt, serve_file};
use etracker_e2e::{peak_rss, service};
use etracker_server::consolidator::{MAX_LISTED_ERRORS, TOO_MANY_ERRORS};
use sha2::{Digest, Sha256};
use ucanto::dag::{cid_of, CAR};
use ucanto::principal::Signer;

/// Writes a batch of `archive` repeated until the file is as close to
/// `size` as it gets; returns its CID, path and the number of copies.
fn write_batch(archive: &[u8], size: u64) -> (Cid, PathBuf, u64) {
    let path = temp_dir("big-batch").join("batch.car");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut hasher = Sha256::new();
    let header = ucanto::car::encode(&[], std::iter::empty::<(Cid, Vec<u8>)>());
    let one = ucanto::car::encode(&[], [(cid_of(CAR, archive), archive.to_vec())]);
    let section = &one[header.len()..];
    let copies = (size - header.len() as u64) / section.len() as u64;
    for bytes in std::iter::once(header.as_slice()).chain((0..copies).map(|_| section)) {
        hasher.update(bytes);
        file.write_all(bytes).unwrap();
    }
    file.flush().unwrap();
    let digest = hasher.finalize();
    let cid = Cid::new_v1(
        CAR,
        multihash::Multihash::wrap(0x12, digest.as_slice()).unwrap(),
    );
    (cid, path, copies)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gibibyte_of_duplicates_concludes_small_and_bounded() {
    let (receipts, total) = good_receipts(1, "gibibyte");
    let archive = receipts[0].archive().unwrap();
    let settings = test_settings();
    let max = settings.limits.max_size;
    let (batch, path, copies) = write_batch(&archive, max);
    assert!(std::fs::metadata(&path).unwrap().len() > max - 4096);
    let endpoint = serve_file(path.clone()).await;

    let tracker = start_tracker(settings).await;
    let node = node();
    let track = track_invocation(
        &node,
        service().did(),
        batch,
        &endpoint,
        &[track_proof(&service(), node.did())],
    );
    let receipt = invoke(&tracker.url, &track).await;
    let task = receipt.forks()[0].cid();
    let summary = consolidate_now(&tracker.url).await;
    assert_eq!(summary["concluded"], 1, "{summary}");
    std::fs::remove_file(&path).unwrap();

    let receipt = consolidate_receipt(&tracker.url, &task).await.unwrap();
    let ok = consolidate_out(&receipt).unwrap();
    assert_eq!(ok.total_egress, total, "the retrieval counts once");
    assert_eq!(ok.errors.len(), MAX_LISTED_ERRORS + 1);
    assert!(ok.errors[..MAX_LISTED_ERRORS]
        .iter()
        .all(|e| e.name == "DuplicateReceipt" && e.receipt == receipts[0].cid()));
    let last = ok.errors.last().unwrap();
    assert_eq!(last.name, TOO_MANY_ERRORS);
    let unlisted = copies - 1 - MAX_LISTED_ERRORS as u64;
    assert!(
        last.message
            .starts_with(&format!("{unlisted} more receipt(s) not counted")),
        "{}",
        last.message
    );

    // What a node downloads: small, and JS @ucanto decodes it.
    let read = js_read_receipt(&tracker.url, &task).await;
    assert_eq!(read["totalEgress"], total);
    assert_eq!(read["errors"], MAX_LISTED_ERRORS as u64 + 1);
    assert_eq!(read["lastError"]["name"], TOO_MANY_ERRORS);
    assert!(read["bytes"].as_u64().unwrap() < 512 * 1024, "{read}");

    // Nothing held the batch in memory.
    if let Some(peak) = peak_rss() {
        assert!(peak < 384 << 20, "peak RSS {} MiB", peak >> 20);
    }
}
