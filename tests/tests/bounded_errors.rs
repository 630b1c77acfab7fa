//! However much the validator explains, a batch's consolidate receipt stays
//! small: every `errors[]` message is cut to 1 KiB with a marker, the
//! listed messages share a budget, and the receipt stays under 256 KiB,
//! so a batch padded with bad receipts still concludes and pays its good
//! ones (read here by real JS @ucanto), in bounded memory.

use cid::Cid;
use etracker_e2e::attack::batch_of;
use etracker_e2e::node::{
    consolidate_now, consolidate_out, consolidate_receipt, good_receipts, js_read_receipt, node,
    ok_receipt, retrieve_invocation, start_tracker, test_settings, track_batch, BatchServer,
};
use etracker_e2e::{alice, bob, peak_rss};
use etracker_server::consolidator::{MAX_LISTED_ERRORS, TOO_MANY_ERRORS};
use etracker_server::store::prelude::*;
use ucanto::bounded::MAX_MESSAGE_BYTES;
use ucanto::dag::{cid_of, RAW};
use ucanto::principal::Signer;
use ucanto::ucan::{now, Delegation, Invocation, Proof};

/// A retrieval by bob from alice's space whose invocation cites `missing`
/// proofs that are not in its archive: the validator explains each one.
fn unproven_retrieval(missing: usize, tag: &str) -> Invocation {
    let (node, agent) = (node(), bob());
    let template = retrieve_invocation(&agent, node.did(), alice().did(), 0, 99, &[], tag);
    let mut builder = Delegation::builder(&agent, node.did().clone())
        .capability(template.capabilities()[0].clone())
        .expiration(now() + 30)
        .nonce(tag);
    for i in 0..missing {
        let link = cid_of(RAW, format!("{tag}-missing-{i}").as_bytes());
        builder = builder.proof(Proof::Link(link));
    }
    builder.build().expect("retrieval")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_padded_with_long_explanations_concludes_small() {
    let node = node();
    // 1,100 receipts the validator refuses at length (60 missing proofs:
    // kilobytes of explanation each), three whose retrievals cite 50,000
    // missing proofs (megabytes each), and 20 good ones.
    let mut archives = Vec::new();
    for i in 0..1_100 {
        let receipt = ok_receipt(&node, &unproven_retrieval(60, &format!("wordy-{i}")));
        archives.push(receipt.archive().unwrap());
    }
    for i in 0..3 {
        let receipt = ok_receipt(&node, &unproven_retrieval(50_000, &format!("huge-{i}")));
        archives.push(receipt.archive().unwrap());
    }
    let (good, total) = good_receipts(20, "paid");
    archives.extend(good.iter().map(|r| r.archive().unwrap()));
    let (batch, bytes): (Cid, Vec<u8>) = batch_of(&archives);
    assert!(bytes.len() > 5 << 20, "{} bytes", bytes.len());

    let tracker = start_tracker(test_settings()).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let task = track_batch(&tracker, &server, &endpoint, &node, (batch, bytes)).await;
    let summary = consolidate_now(&tracker.url).await;
    assert_eq!(summary["concluded"], 1, "{summary}");

    let receipt = consolidate_receipt(&tracker.url, &task).await.unwrap();
    let ok = consolidate_out(&receipt).unwrap();
    assert_eq!(ok.total_egress, total, "the good receipts are paid");
    assert_eq!(
        tracker.store.node_total(node.did()).unwrap(),
        total,
        "and booked to the node"
    );
    assert_eq!(ok.errors.len(), MAX_LISTED_ERRORS + 1);
    for error in &ok.errors[..MAX_LISTED_ERRORS] {
        assert_eq!(error.name, "Unauthorized");
        assert!(
            error.message.len() <= MAX_MESSAGE_BYTES,
            "{}",
            error.message.len()
        );
    }
    assert!(
        ok.errors[..MAX_LISTED_ERRORS]
            .iter()
            .any(|e| e.message.ends_with(" bytes cut]")),
        "long explanations are cut with a marker"
    );
    assert_eq!(ok.errors[MAX_LISTED_ERRORS].name, TOO_MANY_ERRORS);

    // What a node downloads: under 256 KiB, and JS @ucanto decodes it.
    let read = js_read_receipt(&tracker.url, &task).await;
    assert_eq!(read["totalEgress"], total);
    assert_eq!(read["errors"], MAX_LISTED_ERRORS as u64 + 1);
    assert!(read["bytes"].as_u64().unwrap() < 256 * 1024, "{read}");
    assert!(
        read["longestMessage"].as_u64().unwrap() <= MAX_MESSAGE_BYTES as u64,
        "{read}"
    );

    // Alone in its binary: the process's peak is this test's, the batch
    // it built included.
    if let Some(peak) = peak_rss() {
        assert!(peak < 128 << 20, "peak RSS {} MiB", peak >> 20);
    }
}
