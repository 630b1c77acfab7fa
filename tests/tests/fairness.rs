//! What one node can cost the tracker is bounded, in bytes and in time:
//! a track record keeps the track invocation alone, within a size cap; a
//! node has a cap on its pending batches; a node holds one consolidation
//! slot at a time, and a download slower than the minimum rate is cut off
//! and retried, so slow nodes do not hold back anyone else's batches.

use std::time::{Duration, Instant};

use etracker_capabilities::track::{TrackNb, MAX_TRACK_INVOCATION_BYTES};
use etracker_capabilities::{Ability, Track};
use etracker_e2e::drip::DripServer;
use etracker_e2e::node::{
    batch, consolidate_now, good_receipts_of, invoke, node, start_tracker, test_settings,
    track_batch, track_invocation, track_proof, BatchServer, RunningTracker,
};
use etracker_e2e::{principal, service};
use etracker_server::store::prelude::*;
use ucanto::dag::{Ipld, IpldMap};
use ucanto::principal::{Ed25519Signer, Signer};
use ucanto::server::error_name;
use ucanto::ucan::Delegation;

/// A second storage node.
fn other_node() -> Ed25519Signer {
    principal(7)
}

/// `node` tracks `(cid, bytes)` served by `drip` at `endpoint`.
async fn track_dripped(
    tracker: &RunningTracker,
    drip: &DripServer,
    endpoint: &str,
    node: &Ed25519Signer,
    (cid, bytes): (cid::Cid, Vec<u8>),
) {
    drip.put(&cid, bytes);
    let proof = track_proof(&service(), node.did());
    let invocation = track_invocation(node, service().did(), cid, endpoint, &[proof]);
    let receipt = invoke(&tracker.url, &invocation).await;
    assert!(receipt.out().is_ok(), "track: {:?}", receipt.out());
}

/// Waits until `batch` is concluded, at most `within`; how long it took.
async fn concluded_within(
    tracker: &RunningTracker,
    batch: &cid::Cid,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let record = tracker.store.record(batch).unwrap().unwrap();
        if !record.is_pending() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{batch} not concluded within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Node A's batches download slowly (each would take ~4 s), node B's at
/// once. With two slots, B's batch is concluded while A's first download
/// is still running: A never holds more than one slot, and its batches all
/// conclude, one after the other, in the same run.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_node_holds_one_slot_and_does_not_delay_another() {
    let mut settings = test_settings();
    settings.concurrency = 2;
    settings.limits.min_fetch_rate = 0;
    let tracker = start_tracker(settings).await;
    let (a, b) = (node(), other_node());

    let (receipts, _) = good_receipts_of(&a, 40, "slow-a-0");
    let (_, size) = batch(&receipts);
    let size = size.len();
    // ~4 s a batch: 20 parts, 200 ms apart.
    let drip = DripServer::new(size / 20 + 1, Duration::from_millis(200));
    let slow_endpoint = drip.serve().await;
    let mut slow_batches = Vec::new();
    for i in 0..2 {
        let (receipts, _) = good_receipts_of(&a, 40, &format!("slow-a-{i}"));
        let (cid, bytes) = batch(&receipts);
        slow_batches.push(cid);
        track_dripped(&tracker, &drip, &slow_endpoint, &a, (cid, bytes)).await;
    }
    // B tracks a second later: its batch is leased after A's (records are
    // leased oldest first, by the second they were tracked), so without
    // one slot per node, A's two downloads would take both slots.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (receipts, _) = good_receipts_of(&b, 3, "fast-b");
    let fast = batch(&receipts).0;
    track_batch(&tracker, &server, &endpoint, &b, batch(&receipts)).await;

    let url = tracker.url.clone();
    let run = tokio::spawn(async move { consolidate_now(&url).await });
    let waited = concluded_within(&tracker, &fast, Duration::from_secs(30)).await;
    assert!(
        waited < Duration::from_secs(3),
        "B waited {waited:?} behind A's slow downloads"
    );
    assert!(
        tracker
            .store
            .record(&slow_batches[0])
            .unwrap()
            .unwrap()
            .is_pending(),
        "A's first download is still running"
    );
    let summary = run.await.unwrap();
    assert_eq!(summary["leased"], 3, "{summary}");
    assert_eq!(summary["concluded"], 3, "{summary}");
    assert_eq!(drip.requests(), 2);
    assert_eq!(drip.most_in_flight(), 1, "A held one slot at a time");
    assert_eq!(tracker.store.node_pending(a.did()).unwrap(), 0);
}

/// A node that drips its batch below the minimum rate is cut off after the
/// grace, long before the download would end, and the batch is retried
/// with the node's failure recorded ("too slow"); served at a normal rate
/// later, it counts.
#[tokio::test(flavor = "multi_thread")]
async fn a_download_below_the_minimum_rate_is_cut_off_and_retried() {
    let mut settings = test_settings();
    settings.limits.min_fetch_rate = 64 * 1024;
    settings.limits.min_fetch_rate_grace = Duration::from_secs(1);
    let tracker = start_tracker(settings).await;
    let a = node();
    let (receipts, _) = good_receipts_of(&a, 40, "dripped");
    let (cid, bytes) = batch(&receipts);
    // ~10 s at this pace: 50 parts, 200 ms apart (a few KiB/s).
    let drip = DripServer::new(bytes.len() / 50 + 1, Duration::from_millis(200));
    let endpoint = drip.serve().await;
    track_dripped(&tracker, &drip, &endpoint, &a, (cid, bytes)).await;

    let started = Instant::now();
    let summary = consolidate_now(&tracker.url).await;
    let took = started.elapsed();
    assert_eq!(summary["retried"], 1, "{summary}");
    assert!(took < Duration::from_secs(4), "cut off after {took:?}");
    let record = tracker.store.record(&cid).unwrap().unwrap();
    assert!(record.is_pending());
    assert_eq!(record.attempts, 1);
    let error = record.last_error.clone().unwrap_or_default();
    assert!(error.contains("too slow"), "{error}");
    assert!(record.first_failure_at.is_some(), "the node's failure");

    // Served at once, it is fetched and counted.
    *drip.pause.lock().unwrap() = None;
    let summary = consolidate_now(&tracker.url).await;
    assert_eq!(summary["concluded"], 1, "{summary}");
}

/// A node with as many pending batches as the cap allows is refused the
/// next one by name, and nothing of it is stored; a batch it tracked
/// already still answers with its task; once a batch is concluded, there
/// is room again. Other nodes are not affected.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_past_its_pending_cap_is_refused_by_name() {
    let mut settings = test_settings();
    settings.max_pending_per_node = 2;
    let tracker = start_tracker(settings).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let a = node();
    let proof = track_proof(&service(), a.did());
    let mut tasks = Vec::new();
    for i in 0..2 {
        let (receipts, _) = good_receipts_of(&a, 2, &format!("capped-{i}"));
        tasks.push(track_batch(&tracker, &server, &endpoint, &a, batch(&receipts)).await);
    }
    let (receipts, _) = good_receipts_of(&a, 2, "capped-2");
    let (third, bytes) = batch(&receipts);
    server.put(&third, bytes);
    let invocation = track_invocation(
        &a,
        service().did(),
        third,
        &endpoint,
        std::slice::from_ref(&proof),
    );
    let refused = invoke(&tracker.url, &invocation).await;
    assert_eq!(error_name(refused.out()), Some("TooManyPendingBatches"));
    assert!(tracker.store.record(&third).unwrap().is_none());

    // Tracked again, the first batch answers as before.
    let (receipts, _) = good_receipts_of(&a, 2, "capped-0");
    let first = track_batch(&tracker, &server, &endpoint, &a, batch(&receipts)).await;
    assert_eq!(first, tasks[0]);
    // Another node has room of its own.
    let b = other_node();
    let (receipts, _) = good_receipts_of(&b, 2, "other");
    track_batch(&tracker, &server, &endpoint, &b, batch(&receipts)).await;

    assert_eq!(consolidate_now(&tracker.url).await["concluded"], 3);
    let again = invoke(&tracker.url, &invocation).await;
    assert!(again.out().is_ok(), "{:?}", again.out());
}

/// A track invocation bigger than the tracker keeps (here: padded with a
/// fact) is refused by name, and nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_track_too_large_is_refused_and_nothing_is_stored() {
    let tracker = start_tracker(test_settings()).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let a = node();
    let (receipts, _) = good_receipts_of(&a, 2, "padded");
    let (cid, bytes) = batch(&receipts);
    server.put(&cid, bytes);
    let nb = TrackNb::new(cid, endpoint.as_str()).unwrap();
    let padding = "x".repeat(MAX_TRACK_INVOCATION_BYTES);
    let invocation = Delegation::builder(&a, service().did().clone())
        .capability(Track::capability(service().did(), &nb))
        .fact(IpldMap::from([("pad".to_string(), Ipld::String(padding))]))
        .proof(track_proof(&service(), a.did()))
        .build()
        .unwrap();
    let refused = invoke(&tracker.url, &invocation).await;
    assert_eq!(error_name(refused.out()), Some("TrackTooLarge"));
    assert!(tracker.store.record(&cid).unwrap().is_none());
    assert_eq!(tracker.store.node_pending(a.did()).unwrap(), 0);

    // An endpoint longer than any real one is refused as a bad caveat.
    let long = format!("http://n.example/{}/{{cid}}", "a".repeat(4096));
    assert!(TrackNb::new(cid, long).is_err());
}

/// A track record keeps the track invocation's block, not its proofs: what
/// the tracker needs to run and answer the consolidate task.
#[tokio::test(flavor = "multi_thread")]
async fn a_track_record_keeps_the_invocation_alone() {
    let tracker = start_tracker(test_settings()).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let a = node();
    let (receipts, _) = good_receipts_of(&a, 2, "lean");
    let (cid, bytes) = batch(&receipts);
    server.put(&cid, bytes);
    let proof = track_proof(&service(), a.did());
    let invocation = track_invocation(
        &a,
        service().did(),
        cid,
        &endpoint,
        std::slice::from_ref(&proof),
    );
    let receipt = invoke(&tracker.url, &invocation).await;
    assert!(receipt.out().is_ok(), "{:?}", receipt.out());
    let record = tracker.store.record(&cid).unwrap().unwrap();
    let kept = &record.track_invocation_bytes;
    let contains = |needle: &[u8]| kept.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(&invocation.block().bytes),
        "the invocation is kept"
    );
    assert!(!contains(&proof.block().bytes), "its proof is not");
    assert!(kept.len() < invocation.archive().unwrap().len());
    let read = Delegation::extract(kept).unwrap();
    assert_eq!(read.cid(), invocation.cid());
    // The task answered is the one the record runs, and it runs.
    assert_eq!(
        etracker_server::consolidator::consolidate_task(&service(), &read)
            .unwrap()
            .cid(),
        receipt.forks()[0].cid()
    );
    assert_eq!(consolidate_now(&tracker.url).await["concluded"], 1);
}
