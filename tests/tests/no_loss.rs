//! Nothing legitimate is lost: the give-up age runs only while the node
//! fails, our own failures are retried forever, a crash's spool files are
//! removed, and a tally too big for one request travels in pages.

use etracker_e2e::node::{
    batch, consolidate_now, consolidate_out, consolidate_receipt, fetch_receipt, good_receipts,
    node, remote_consolidator, serve_consolidator, start_tracker, temp_dir, test_settings,
    track_batch, track_invocation, track_proof, BatchServer,
};
use etracker_e2e::{principal, service};
use etracker_server::consolidator::TallyPaging;
use etracker_server::service::RemoteConsolidator;
use etracker_server::store::prelude::*;
use etracker_server::store::NewRecord;
use ucanto::principal::Signer;
use ucanto::ucan::now;

/// A batch tracked days ago that fails for the first time now is not given
/// up: the give-up age counts from the node's first failed attempt.
#[tokio::test(flavor = "multi_thread")]
async fn the_give_up_age_counts_from_the_first_failure() {
    let mut settings = test_settings();
    settings.limits.give_up_after = 3600;
    let tracker = start_tracker(settings).await;
    let server = BatchServer::default();
    server
        .failing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let endpoint = server.serve().await;

    // Tracked three days ago (queued that long, never tried).
    let (receipts, _) = good_receipts(2, "late");
    let (cid, bytes) = batch(&receipts);
    server.put(&cid, bytes);
    let node = node();
    let track = track_invocation(
        &node,
        service().did(),
        cid,
        &endpoint,
        &[track_proof(&service(), node.did())],
    );
    let task = etracker_server::consolidator::consolidate_task(&service(), &track).unwrap();
    tracker
        .store
        .put(NewRecord {
            batch: cid,
            node: node.did().clone(),
            endpoint: endpoint.clone(),
            track_invocation: track.cid(),
            track_invocation_bytes: track.archive().unwrap(),
            consolidate_invocation: task.cid(),
            received_at: now() - 3 * 86_400,
        })
        .unwrap();

    for _ in 0..2 {
        let summary = consolidate_now(&tracker.url).await;
        assert_eq!(summary["retried"], 1, "{summary}");
    }
    let record = tracker.store.record(&cid).unwrap().unwrap();
    assert!(record.is_pending());
    assert!(record.first_failure_at.unwrap() + 60 > now());
    assert!(consolidate_receipt(&tracker.url, &task.cid())
        .await
        .is_none());

    // Once the node serves it, it counts.
    server
        .failing
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(consolidate_now(&tracker.url).await["concluded"], 1);
}

/// Failures on the tracker's side (here: the spool directory is unusable)
/// are retried, never final, even past the give-up age, and do not start
/// the node's streak of failures.
#[tokio::test(flavor = "multi_thread")]
async fn our_own_failures_are_never_final() {
    let mut settings = test_settings();
    settings.limits.give_up_after = 0;
    let not_a_dir = temp_dir("spool").join("file");
    std::fs::write(&not_a_dir, b"in the way").unwrap();
    settings.limits.scratch_dir = not_a_dir;
    let tracker = start_tracker(settings).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (receipts, _) = good_receipts(2, "disk");
    let task = track_batch(&tracker, &server, &endpoint, &node(), batch(&receipts)).await;
    for _ in 0..3 {
        let summary = consolidate_now(&tracker.url).await;
        assert_eq!(summary["retried"], 1, "{summary}");
    }
    assert!(consolidate_receipt(&tracker.url, &task).await.is_none());
    let (cid, _) = batch(&receipts);
    let record = tracker.store.record(&cid).unwrap().unwrap();
    assert!(record.is_pending());
    assert_eq!(record.first_failure_at, None, "not the node's failure");
    assert!(
        record
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("spooling"),
        "{:?}",
        record.last_error
    );
}

/// Spool files of a process that died (a crash mid-download) are removed at
/// start; a live process's and unrelated files are not.
#[tokio::test(flavor = "multi_thread")]
async fn stale_spool_files_are_removed_at_start() {
    let dir = temp_dir("stale-spool");
    let batch = ucanto::dag::cid_of(ucanto::dag::CAR, b"spooled");
    // No process has this id: Linux pids stay below 2^22.
    let dead = dir.join(format!("etracker-batch-{batch}-4294967-0.car"));
    let alive = dir.join(format!(
        "etracker-batch-{batch}-{}-0.car",
        std::process::id()
    ));
    let other = dir.join("notes.txt");
    for path in [&dead, &alive, &other] {
        std::fs::write(path, b"x").unwrap();
    }
    let mut settings = test_settings();
    settings.limits.scratch_dir = dir;
    let _tracker = start_tracker(settings).await;
    assert!(!dead.exists());
    assert!(alive.exists() && other.exists());
}

/// A consolidator deployed apart sends a big tally in pages, each within the
/// tracker's body limit; in one piece the same tally would be refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_big_tally_travels_in_pages() {
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let consolidator_key = principal(6);
    let (receipts, total) = good_receipts(60, "pages");

    for (chunks_per_page, concludes) in [(1000, false), (3, true)] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let consolidator_url = format!("http://{}/", listener.local_addr().unwrap());
        let mut settings = test_settings();
        settings.body_limit = 3 * 1024;
        settings.remote_consolidator = Some(RemoteConsolidator {
            url: consolidator_url,
            verifier: consolidator_key.verifier(),
        });
        let tracker = start_tracker(settings).await;
        let consolidator = remote_consolidator(&tracker.url)
            .paging(TallyPaging {
                receipts_per_chunk: 4,
                chunks_per_page,
            })
            .build();
        serve_consolidator(listener, consolidator);

        let task = track_batch(&tracker, &server, &endpoint, &node(), batch(&receipts)).await;
        let summary = consolidate_now(&tracker.url).await;
        let receipt = fetch_receipt(&tracker.url, &task).await;
        if !concludes {
            assert_eq!(summary["concluded"], 0, "{summary}");
            assert!(receipt.is_none(), "one piece is over the body limit");
            continue;
        }
        assert_eq!(summary["concluded"], 1, "{summary}");
        let ok = consolidate_out(&receipt.expect("concluded")).unwrap();
        assert_eq!(ok.total_egress, total);
        assert_eq!(
            tracker
                .store
                .space_usage(etracker_e2e::alice().did(), "2000-01-01", "2100-01-01")
                .unwrap()
                .iter()
                .map(|(_, b)| b)
                .sum::<u64>(),
            total
        );
    }
}
