//! A batch whose every retrieval cites its own proof, padded to 100 KiB:
//! what the batch's signature cache remembers of each proof must not keep
//! the receipt archive it came from in memory, so the tracker's memory
//! stays flat however large the batch.
//!
//! Alone in its test binary, so the process's peak memory is this test's.

use std::io::Write;

use cid::Cid;
use etracker_e2e::node::serve_file;
use etracker_e2e::node::{
    consolidate_now, consolidate_out, consolidate_receipt, invoke, node, ok_receipt,
    retrieve_invocation, start_tracker, temp_dir, test_settings, track_invocation, track_proof,
};
use etracker_e2e::{alice, bob, peak_rss, service};
use sha2::{Digest, Sha256};
use ucanto::dag::{cid_of, Ipld, IpldMap, CAR};
use ucanto::principal::Signer;
use ucanto::ucan::{Capability, Delegation};

/// Receipts in the batch, and the padding of each one's proof.
const RECEIPTS: u64 = 1_600;
const PADDING: usize = 100 << 10;

#[tokio::test(flavor = "multi_thread")]
async fn padded_unique_proofs_do_not_keep_the_batch_in_memory() {
    let (node, space, agent) = (node(), alice(), bob());
    // The batch, written as it is made: the test holds one archive at a time.
    let path = temp_dir("padded-proofs").join("batch.car");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut hasher = Sha256::new();
    let mut write = |bytes: &[u8]| {
        hasher.update(bytes);
        file.write_all(bytes).unwrap();
    };
    let header = ucanto::car::encode(&[], std::iter::empty::<(Cid, Vec<u8>)>());
    write(&header);
    let mut total = 0;
    for i in 0..RECEIPTS {
        let pad: Vec<u8> = (0..PADDING).map(|j| (i as usize * 31 + j) as u8).collect();
        let proof = Delegation::builder(&space, agent.did().clone())
            .capability(Capability::new(
                "space/content/retrieve",
                space.did().as_str(),
            ))
            .fact(IpldMap::from([("pad".to_string(), Ipld::Bytes(pad))]))
            .nonce(format!("proof-{i}"))
            .no_expiration()
            .build()
            .unwrap();
        let (start, end) = (0, 999);
        total += end - start + 1;
        let retrieval = retrieve_invocation(
            &agent,
            node.did(),
            space.did(),
            start,
            end,
            &[proof],
            &format!("padded-{i}"),
        );
        let archive = ok_receipt(&node, &retrieval).archive().unwrap();
        let one = ucanto::car::encode(&[], [(cid_of(CAR, &archive), archive)]);
        write(&one[header.len()..]);
    }
    file.flush().unwrap();
    drop(file);
    let batch = Cid::new_v1(
        CAR,
        multihash::Multihash::wrap(0x12, hasher.finalize().as_slice()).unwrap(),
    );
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > RECEIPTS * PADDING as u64, "{size} bytes");

    let endpoint = serve_file(path.clone()).await;

    let tracker = start_tracker(test_settings()).await;
    let track = track_invocation(
        &node,
        service().did(),
        batch,
        &endpoint,
        &[track_proof(&service(), node.did())],
    );
    let task = invoke(&tracker.url, &track).await.forks()[0].cid();
    let summary = consolidate_now(&tracker.url).await;
    assert_eq!(summary["concluded"], 1, "{summary}");
    std::fs::remove_file(&path).unwrap();
    let ok = consolidate_out(&consolidate_receipt(&tracker.url, &task).await.unwrap()).unwrap();
    assert!(ok.errors.is_empty(), "{:?}", ok.errors.first());
    assert_eq!(ok.total_egress, total);

    if let Some(peak) = peak_rss() {
        eprintln!("peak RSS {} MiB for a {} MiB batch", peak >> 20, size >> 20);
        assert!(
            peak < 128 << 20,
            "peak RSS {} MiB for a {} MiB batch",
            peak >> 20,
            size >> 20
        );
    }
}
