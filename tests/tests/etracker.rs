//! The tracker end to end: real HTTP on 127.0.0.1, a real redb store, a node
//! serving batches in the Piri format.

use std::sync::atomic::Ordering;

use cid::Cid;
use etracker_e2e::node::*;
use etracker_e2e::{alice, bob, mallory, principal, service};
use ucanto::dag::{Ipld, IpldMap};
use ucanto::principal::{Did, Ed25519Signer, Signer};
use ucanto::receipt::{Receipt, ReceiptParts};
use ucanto::server::error_name;
use ucanto::ucan::{Capability, Delegation};

/// Tracks `receipts` as one batch served by `server`; returns (batch, consolidate task CID).
async fn track(
    tracker: &RunningTracker,
    server: &BatchServer,
    endpoint: &str,
    receipts: &[Receipt],
) -> (Cid, Cid) {
    let (batch, bytes) = batch(receipts);
    server.put(&batch, bytes);
    let node = node();
    let proof = track_proof(&service(), node.did());
    let invocation = track_invocation(&node, service().did(), batch, endpoint, &[proof]);
    let receipt = invoke(&tracker.url, &invocation).await;
    assert_eq!(receipt.out(), &Ok(Ipld::Map(IpldMap::new())), "track ok");
    let forks = receipt.forks();
    assert_eq!(forks.len(), 1, "exactly one fork: the consolidate task");
    assert_eq!(forks[0].capabilities()[0].can, "space/egress/consolidate");
    (batch, forks[0].cid())
}

/// A node tracks a batch with a delegated proof; consolidation runs through the
/// dispatcher and invokes conclude; the receipt at `GET /receipts/{task}` is
/// signed by the tracker and its totalEgress is the sum of the batch's ranges.
#[tokio::test(flavor = "multi_thread")]
async fn tracks_consolidates_and_concludes() {
    let tracker = start_tracker(test_settings()).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (receipts, total) = good_receipts(5, "happy");
    let (_batch, task) = track(&tracker, &server, &endpoint, &receipts).await;
    assert!(
        consolidate_receipt(&tracker.url, &task).await.is_none(),
        "404 before consolidation"
    );

    let summary = consolidate_now(&tracker.url).await;
    assert_eq!(summary["concluded"], 1, "{summary}");
    let receipt = consolidate_receipt(&tracker.url, &task)
        .await
        .expect("concluded");
    let ok = consolidate_out(&receipt).expect("ok receipt");
    assert_eq!(ok.total_egress, total);
    assert!(ok.errors.is_empty(), "{:?}", ok.errors);
    assert_eq!(
        metric(&tracker.url, "etracker_conclude_invocations_total").await,
        1
    );
    assert_eq!(
        metric(&tracker.url, "etracker_consolidated_bytes_total").await,
        total
    );
    assert_eq!(
        metric(&tracker.url, "etracker_unprocessed_batches_total").await,
        0
    );

    // Re-tracking the same batch answers with the same task; nothing changes.
    let node = node();
    let (batch, _) = batch(&receipts);
    let again = track_invocation(
        &node,
        service().did(),
        batch,
        &endpoint,
        &[track_proof(&service(), node.did())],
    );
    let receipt = invoke(&tracker.url, &again).await;
    assert_eq!(receipt.forks()[0].cid(), task);
    assert_eq!(consolidate_now(&tracker.url).await["leased"], 0);
    assert_eq!(
        metric(&tracker.url, "etracker_consolidated_bytes_total").await,
        total
    );

    // The same batch claimed by another node is refused.
    let other = principal(7);
    let stolen = track_invocation(
        &other,
        service().did(),
        batch,
        &endpoint,
        &[track_proof(&service(), other.did())],
    );
    let receipt = invoke(&tracker.url, &stolen).await;
    assert_eq!(error_name(receipt.out()), Some("EgressTrackError"));
}

/// Bad receipts are reported in errors[] and not counted; the rest are.
#[tokio::test(flavor = "multi_thread")]
async fn bad_receipts_are_reported_not_counted() {
    let tracker = start_tracker(test_settings()).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (node, space, agent) = (node(), alice(), bob());
    let proof = retrieve_delegation(&space, agent.did());

    // An earlier batch, concluded, whose receipt will be repeated.
    let (earlier, _) = good_receipts(1, "earlier");
    let (_, earlier_task) = track(&tracker, &server, &endpoint, &earlier).await;
    consolidate_now(&tracker.url).await;
    assert!(consolidate_receipt(&tracker.url, &earlier_task)
        .await
        .is_some());
    let earlier_bytes = consolidate_out(
        &consolidate_receipt(&tracker.url, &earlier_task)
            .await
            .unwrap(),
    )
    .unwrap()
    .total_egress;

    let (good, good_total) = good_receipts(3, "good");
    // Forged: a receipt signed by mallory but claiming the node as issuer is
    // impossible to build, so sign as mallory and rewrite iss via a different node key.
    let inv = retrieve_invocation(
        &agent,
        node.did(),
        space.did(),
        0,
        9,
        std::slice::from_ref(&proof),
        "forged",
    );
    let forged = forge(&ok_receipt(&node, &inv));
    // Another node's receipt (issuer and audience are someone else).
    let other = principal(7);
    let inv = retrieve_invocation(
        &agent,
        other.did(),
        space.did(),
        0,
        9,
        std::slice::from_ref(&proof),
        "other-node",
    );
    let other_node = ok_receipt(&other, &inv);
    // Not a retrieval.
    let not_retrieve_inv = Delegation::builder(&agent, node.did().clone())
        .capability(Capability::new("blob/allocate", space.did().as_str()))
        .proof(proof.clone())
        .build()
        .unwrap();
    let not_retrieve = ok_receipt(&node, &not_retrieve_inv);
    // A retrieval the space never authorized (no proof; mallory's own delegation).
    let inv = retrieve_invocation(
        &mallory(),
        node.did(),
        space.did(),
        0,
        9,
        &[],
        "unauthorized",
    );
    let unauthorized = ok_receipt(&node, &inv);
    let inv = retrieve_invocation(
        &mallory(),
        node.did(),
        space.did(),
        0,
        9,
        &[retrieve_delegation(&principal(8), mallory().did())],
        "wrong-space-proof",
    );
    let wrong_proof = ok_receipt(&node, &inv);
    // end < start.
    let inv = retrieve_invocation(
        &agent,
        node.did(),
        space.did(),
        100,
        10,
        std::slice::from_ref(&proof),
        "reversed",
    );
    let reversed = ok_receipt(&node, &inv);
    // A range bigger than any blob: 5 GiB claimed by one retrieval.
    let inv = retrieve_invocation(
        &agent,
        node.did(),
        space.did(),
        0,
        5 << 30,
        std::slice::from_ref(&proof),
        "huge",
    );
    let huge = ok_receipt(&node, &inv);
    // A failed retrieval: valid, counts nothing, not an error.
    let inv = retrieve_invocation(
        &agent,
        node.did(),
        space.did(),
        0,
        9,
        std::slice::from_ref(&proof),
        "not-found",
    );
    let mut not_found_err = IpldMap::new();
    not_found_err.insert("name".into(), Ipld::String("NotFound".into()));
    not_found_err.insert("message".into(), Ipld::String("no such blob".into()));
    let not_found = Receipt::issue(
        &node,
        ReceiptParts::new(&inv, Err(Ipld::Map(not_found_err))),
    )
    .unwrap();

    // The same retrieval as good[1], receipted again with other metadata: a
    // new receipt CID, but the retrieval was already counted.
    let mut meta = IpldMap::new();
    meta.insert("again".into(), Ipld::Bool(true));
    let mut parts = ReceiptParts::new(good[1].ran().unwrap(), Ok(Ipld::Map(IpldMap::new())));
    parts.meta = meta;
    let resigned = Receipt::issue(&node, parts).unwrap();
    assert_ne!(resigned.cid(), good[1].cid());
    // And an earlier batch's retrieval, receipted again.
    let mut parts = ReceiptParts::new(earlier[0].ran().unwrap(), Ok(Ipld::Map(IpldMap::new())));
    parts.meta = IpldMap::from([("again".to_string(), Ipld::Bool(true))]);
    let resigned_earlier = Receipt::issue(&node, parts).unwrap();

    let mut all = good.clone();
    let bad = [
        &forged,
        &other_node,
        &not_retrieve,
        &unauthorized,
        &wrong_proof,
        &reversed,
        &huge,
        &earlier[0],
    ];
    all.extend(bad.iter().map(|r| (*r).clone()));
    all.push(good[0].clone()); // repeated within the batch
    all.push(resigned.clone());
    all.push(resigned_earlier.clone());
    all.push(not_found);
    let (_, task) = track(&tracker, &server, &endpoint, &all).await;
    consolidate_now(&tracker.url).await;
    let ok = consolidate_out(
        &consolidate_receipt(&tracker.url, &task)
            .await
            .expect("concluded"),
    )
    .expect("ok");
    assert_eq!(ok.total_egress, good_total, "only the good receipts count");
    let named = |cid: Cid| {
        ok.errors
            .iter()
            .find(|e| e.receipt == cid)
            .map(|e| e.name.clone())
    };
    assert_eq!(named(forged.cid()), Some("InvalidSignature".into()));
    assert_eq!(named(other_node.cid()), Some("WrongIssuer".into()));
    assert_eq!(named(not_retrieve.cid()), Some("NotRetrieve".into()));
    assert_eq!(named(unauthorized.cid()), Some("Unauthorized".into()));
    assert_eq!(named(wrong_proof.cid()), Some("Unauthorized".into()));
    assert_eq!(named(reversed.cid()), Some("InvalidRange".into()));
    assert_eq!(named(huge.cid()), Some("InvalidRange".into()));
    assert_eq!(named(earlier[0].cid()), Some("DuplicateReceipt".into()));
    assert_eq!(
        ok.errors
            .iter()
            .filter(|e| e.receipt == good[0].cid())
            .count(),
        1,
        "the repeat, not the first"
    );
    assert_eq!(named(resigned.cid()), Some("DuplicateReceipt".into()));
    assert_eq!(
        named(resigned_earlier.cid()),
        Some("DuplicateReceipt".into())
    );
    assert_eq!(ok.errors.len(), bad.len() + 3);
    assert_eq!(
        metric(&tracker.url, "etracker_consolidated_bytes_total").await,
        earlier_bytes + good_total,
        "nothing else was added"
    );
}

/// The same receipt with one signature byte flipped.
fn forge(receipt: &Receipt) -> Receipt {
    let Ipld::Map(mut top) = receipt.block().decode().unwrap() else {
        unreachable!()
    };
    let Some(Ipld::Bytes(sig)) = top.get_mut("sig") else {
        unreachable!()
    };
    let last = sig.len() - 1;
    sig[last] ^= 1;
    let block = ucanto::dag::Block::encode(&Ipld::Map(top)).unwrap();
    let mut blocks: ucanto::dag::BlockStore = receipt
        .export()
        .into_iter()
        .filter(|b| b.cid != receipt.cid())
        .collect();
    blocks.insert(block.clone());
    Receipt::from_blocks(&block.cid, std::sync::Arc::new(blocks)).unwrap()
}

/// A node offline at first (connection refused), then failing (503), then
/// back: no receipt and the record stays pending until the batch is served,
/// then the exact total.
#[tokio::test(flavor = "multi_thread")]
async fn offline_node_is_retried_not_concluded() {
    let tracker = start_tracker(test_settings()).await;
    // A port that refuses connections: bind, note, close.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}/receipts/{{cid}}");
    let server = BatchServer::default();
    let (receipts, total) = good_receipts(4, "offline");
    let (batch, task) = track(&tracker, &server, &endpoint, &receipts).await;

    let summary = consolidate_now(&tracker.url).await;
    assert_eq!(
        (summary["leased"].as_u64(), summary["concluded"].as_u64()),
        (Some(1), Some(0)),
        "{summary}"
    );
    assert!(
        consolidate_receipt(&tracker.url, &task).await.is_none(),
        "no receipt while offline"
    );
    assert_eq!(
        metric(&tracker.url, "etracker_unprocessed_batches_total").await,
        1
    );

    // Online but failing.
    server.failing.store(true, Ordering::Relaxed);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("port still free");
    let router = server.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    consolidate_now(&tracker.url).await;
    assert!(
        consolidate_receipt(&tracker.url, &task).await.is_none(),
        "no receipt on 5xx"
    );
    let record = ucanto_record(&tracker, &batch);
    assert!(record.is_pending() && record.attempts >= 2, "{record:?}");

    server.failing.store(false, Ordering::Relaxed);
    consolidate_now(&tracker.url).await;
    let ok = consolidate_out(
        &consolidate_receipt(&tracker.url, &task)
            .await
            .expect("concluded"),
    )
    .unwrap();
    assert_eq!(ok.total_egress, total);
}

fn ucanto_record(tracker: &RunningTracker, batch: &Cid) -> etracker_server::store::EgressRecord {
    use etracker_server::store::prelude::*;
    tracker.store.record(batch).unwrap().expect("record")
}

/// A batch whose bytes don't match its CID, one too small and one too large
/// each get a final EgressConsolidateError receipt; nothing is counted.
#[tokio::test(flavor = "multi_thread")]
async fn unprocessable_batches_get_error_receipts() {
    let mut settings = test_settings();
    let (receipts, _) = good_receipts(2, "sizes");
    let (_, bytes) = batch(&receipts);
    settings.limits.min_size = bytes.len() as u64;
    settings.limits.max_size = bytes.len() as u64 + 10_000;
    let tracker = start_tracker(settings).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;

    // Wrong hash: serve other bytes under the batch CID.
    let (batch_cid, task_hash) = track(&tracker, &server, &endpoint, &receipts).await;
    let (_, other) = batch(&good_receipts(2, "impostor").0);
    server.put(&batch_cid, other);
    // Too small.
    let (small, _) = good_receipts(1, "small");
    let (_, task_small) = track(&tracker, &server, &endpoint, &small).await;
    // Too large.
    let (large, _) = good_receipts(60, "large");
    let (_, task_large) = track(&tracker, &server, &endpoint, &large).await;

    let summary = consolidate_now(&tracker.url).await;
    assert_eq!(summary["concluded"], 3, "{summary}");
    for (task, phrase) in [
        (task_hash, "do not hash"),
        (task_small, "less than"),
        (task_large, "more than"),
    ] {
        let receipt = consolidate_receipt(&tracker.url, &task)
            .await
            .expect("final receipt");
        let error = consolidate_out(&receipt).expect_err("error receipt");
        assert!(error.message.contains(phrase), "{}", error.message);
        assert_eq!(error_name(receipt.out()), Some("EgressConsolidateError"));
    }
    assert_eq!(
        metric(&tracker.url, "etracker_consolidated_bytes_total").await,
        0
    );
}

/// Track invocations that must not pass: error receipts with ucanto's error
/// names, and the store is unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn unauthorized_track_changes_nothing() {
    use etracker_server::store::prelude::*;
    let tracker = start_tracker(test_settings()).await;
    let node = node();
    let endpoint = "http://127.0.0.1:9/receipts/{cid}";
    let (batch, _) = batch(&good_receipts(1, "unauth").0);
    let service = service();
    let expired_proof = Delegation::builder(&service, node.did().clone())
        .capability(
            <etracker_capabilities::Track as etracker_capabilities::Ability>::unrestricted(
                service.did(),
            ),
        )
        .expiration(1_600_000_000)
        .build()
        .unwrap();
    let other_service = principal(9);
    let cases: Vec<(&str, ucanto::ucan::Invocation, &str)> = vec![
        (
            "wrong audience",
            track_on(
                &node,
                mallory().did(),
                service.did(),
                batch,
                endpoint,
                &[track_proof(&service, node.did())],
            ),
            "InvalidAudience",
        ),
        (
            "no proof",
            track_invocation(&node, service.did(), batch, endpoint, &[]),
            "Unauthorized",
        ),
        (
            "expired proof",
            track_invocation(&node, service.did(), batch, endpoint, &[expired_proof]),
            "Unauthorized",
        ),
        (
            "proof for another service",
            track_invocation(
                &node,
                service.did(),
                batch,
                endpoint,
                &[track_proof(&other_service, node.did())],
            ),
            "Unauthorized",
        ),
    ];
    for (scenario, invocation, expected) in cases {
        let receipt = invoke(&tracker.url, &invocation).await;
        assert_eq!(
            error_name(receipt.out()),
            Some(expected),
            "{scenario}: {:?}",
            receipt.out()
        );
        assert!(receipt.forks().is_empty(), "{scenario}: no task");
    }
    assert_eq!(tracker.store.stats().unwrap().records, 0, "nothing stored");
    assert!(tracker.store.record(&batch).unwrap().is_none());
}

/// A track invocation addressed to `audience` (not necessarily the tracker).
fn track_on(
    node: &Ed25519Signer,
    audience: &Did,
    tracker: &Did,
    batch: Cid,
    endpoint: &str,
    proofs: &[Delegation],
) -> ucanto::ucan::Invocation {
    use etracker_capabilities::{track::TrackNb, Ability, Track};
    let nb = TrackNb::new(batch, endpoint).unwrap();
    let mut builder =
        Delegation::builder(node, audience.clone()).capability(Track::capability(tracker, &nb));
    for p in proofs {
        builder = builder.proof(p.clone());
    }
    builder.build().unwrap()
}

/// A JS @ucanto client (standing in for a Go Piri node) tracks a batch against
/// our tracker over HTTP and reads the fork: the same consolidate task Rust computes.
#[tokio::test(flavor = "multi_thread")]
async fn js_node_tracks_and_reads_the_fork() {
    let tracker = start_tracker(test_settings()).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (receipts, total) = good_receipts(2, "js");
    let (batch_cid, bytes) = batch(&receipts);
    server.put(&batch_cid, bytes);
    let (code, stdout) = etracker_e2e::run_js(
        "track.js",
        &[
            "--url",
            &tracker.url,
            "--batch",
            &batch_cid.to_string(),
            "--endpoint",
            &endpoint,
        ],
    )
    .await;
    assert_eq!(code, 0, "{stdout}");
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["out"], serde_json::json!({"ok": {}}), "{result}");
    assert_eq!(result["signatureValid"], true);
    assert_eq!(result["ran"], result["invocation"]);
    let forks = result["forks"].as_array().unwrap();
    assert_eq!(forks.len(), 1);
    assert_eq!(forks[0]["can"], "space/egress/consolidate");
    assert_eq!(forks[0]["cause"], result["invocation"]);

    consolidate_now(&tracker.url).await;
    let task: Cid = forks[0]["cid"].as_str().unwrap().parse().unwrap();
    let ok = consolidate_out(
        &consolidate_receipt(&tracker.url, &task)
            .await
            .expect("concluded"),
    )
    .unwrap();
    assert_eq!(ok.total_egress, total);
}

/// A separately deployed consolidator with its own identity, reached over
/// HTTP: it signs the receipts and concludes with a tracker → consolidator
/// delegation; without that delegation its conclusions are refused and the
/// record stays pending.
#[tokio::test(flavor = "multi_thread")]
async fn remote_consolidator_concludes_with_a_delegation() {
    use etracker_capabilities::{Ability, Conclude};
    use etracker_server::consolidator::{router, Consolidator};
    use etracker_server::service::RemoteConsolidator;
    use std::sync::Arc;
    use ucanto::client::Connection;

    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let consolidator_key = principal(6);

    for authorized in [false, true] {
        // The consolidator's address must be known before the tracker starts.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let consolidator_url = format!("http://{}/", listener.local_addr().unwrap());
        let mut settings = test_settings();
        settings.remote_consolidator = Some(RemoteConsolidator {
            url: consolidator_url,
            verifier: consolidator_key.verifier(),
        });
        let tracker = start_tracker(settings).await;

        let proofs = if authorized {
            vec![
                Delegation::builder(&service(), consolidator_key.did().clone())
                    .capability(Conclude::unrestricted(service().did()))
                    .no_expiration()
                    .build()
                    .unwrap(),
            ]
        } else {
            Vec::new()
        };
        let consolidator = Consolidator::builder(
            Arc::new(consolidator_key.clone()),
            service().verifier(),
            Connection::http(service().verifier(), tracker.url.clone()),
        )
        .limits(test_settings().limits)
        .conclude_proofs(proofs)
        .build();
        let consolidator_url = format!("http://{}/", listener.local_addr().unwrap());
        let app = router(Arc::new(consolidator), 1 << 20);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let (receipts, total) =
            good_receipts(3, if authorized { "remote-ok" } else { "remote-no" });
        let (batch, task) = track(&tracker, &server, &endpoint, &receipts).await;
        let summary = consolidate_now(&tracker.url).await;
        let response = reqwest::get(format!("{}receipts/{task}", tracker.url))
            .await
            .unwrap();
        if !authorized {
            assert_eq!(summary["concluded"], 0, "{summary}");
            assert_eq!(response.status(), 404);
            assert!(ucanto_record(&tracker, &batch).is_pending());
            continue;
        }
        assert_eq!(summary["concluded"], 1, "{summary}");
        let message =
            ucanto::message::AgentMessage::from_car(&response.bytes().await.unwrap()).unwrap();
        let receipt = message.receipt_for(&task).unwrap().unwrap();
        assert_eq!(
            receipt.issuer(),
            Some(consolidator_key.did()),
            "signed by the consolidator"
        );
        assert!(receipt.verify_signature(consolidator_key.verifier().as_ref()));
        assert_eq!(consolidate_out(&receipt).unwrap().total_egress, total);

        // The task replayed as anyone can read it (the track receipt's
        // fork): refused without the tracker's lease, and nothing is
        // downloaded.
        let record = ucanto_record(&tracker, &batch);
        let track_invocation = Delegation::extract(&record.track_invocation_bytes).unwrap();
        let replayed =
            etracker_server::consolidator::consolidate_task(&service(), &track_invocation).unwrap();
        assert_eq!(replayed.cid(), task);
        let gets = server.gets.load(std::sync::atomic::Ordering::Relaxed);
        let refused = Connection::http(consolidator_key.verifier(), consolidator_url.clone())
            .invoke(&replayed)
            .await
            .unwrap();
        assert_eq!(
            ucanto::server::error_name(refused.out()),
            Some(etracker_server::consolidator::NOT_LEASED)
        );
        // A lease that has ended is no better.
        let (ended, lease) = etracker_server::consolidator::leased_task(
            &service(),
            &track_invocation,
            consolidator_key.did(),
            &etracker_server::store::Lease {
                owner: "replica-a".into(),
                until: ucanto::ucan::now() - 1,
            },
            record.received_at,
        )
        .unwrap();
        let refused = Connection::http(consolidator_key.verifier(), consolidator_url.clone())
            .execute_with(std::slice::from_ref(&ended), vec![lease])
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            ucanto::server::error_name(refused.out()),
            Some(etracker_server::consolidator::NOT_LEASED)
        );
        assert_eq!(server.gets.load(std::sync::atomic::Ordering::Relaxed), gets);

        // The same task delivered again under a lease (a duplicate delivery,
        // or a replica whose lease ran out): the same signed receipt,
        // concluded again, changes nothing.
        let (task_invocation, lease) = etracker_server::consolidator::leased_task(
            &service(),
            &track_invocation,
            consolidator_key.did(),
            &etracker_server::store::Lease {
                owner: "replica-a".into(),
                until: ucanto::ucan::now() + 60,
            },
            record.received_at,
        )
        .unwrap();
        assert_eq!(task_invocation.cid(), task);
        let concludes = metric(&tracker.url, "etracker_conclude_invocations_total").await;
        let again = Connection::http(consolidator_key.verifier(), consolidator_url.clone())
            .execute_with(std::slice::from_ref(&task_invocation), vec![lease])
            .await
            .unwrap()
            .remove(0);
        assert_eq!(again.cid(), receipt.cid(), "deterministic receipt");
        assert_eq!(
            metric(&tracker.url, "etracker_conclude_invocations_total").await,
            concludes + 1,
            "concluded again"
        );
        assert_eq!(
            metric(&tracker.url, "etracker_consolidated_bytes_total").await,
            total
        );

        // A later batch repeats a counted receipt. This consolidator has no
        // store to look it up: the tracker refuses the conclusion (nothing is
        // double-counted) and marks the retrieval; the run settles the batch
        // again without it, and its receipt reports it.
        let (fresh, fresh_total) = good_receipts(1, "remote-fresh");
        let (_, task) = track(
            &tracker,
            &server,
            &endpoint,
            &[receipts[0].clone(), fresh[0].clone()],
        )
        .await;
        let concludes = metric(&tracker.url, "etracker_conclude_invocations_total").await;
        assert_eq!(consolidate_now(&tracker.url).await["concluded"], 1);
        assert_eq!(
            metric(&tracker.url, "etracker_conclude_invocations_total").await,
            concludes + 2,
            "refused once, then concluded"
        );
        assert_eq!(
            metric(&tracker.url, "etracker_consolidated_bytes_total").await,
            total + fresh_total
        );
        let response = reqwest::get(format!("{}receipts/{task}", tracker.url))
            .await
            .unwrap();
        let message =
            ucanto::message::AgentMessage::from_car(&response.bytes().await.unwrap()).unwrap();
        let ok = consolidate_out(&message.receipt_for(&task).unwrap().unwrap()).unwrap();
        assert_eq!(ok.total_egress, fresh_total);
        assert_eq!(ok.errors.len(), 1);
        assert_eq!(
            (ok.errors[0].name.as_str(), ok.errors[0].receipt),
            ("DuplicateReceipt", receipts[0].cid())
        );
        assert_eq!(
            metric(&tracker.url, "etracker_consolidated_bytes_total").await,
            total + fresh_total
        );
    }
}

/// An account reads egress per space and day with account/egress/get, for the
/// spaces its proofs show it owns; other spaces and long periods are refused.
#[tokio::test(flavor = "multi_thread")]
async fn account_reads_egress_per_space_and_day() {
    use etracker_capabilities::account_egress_get::{format_date, EgressGetError, EgressGetOk};
    use etracker_capabilities::read_out;

    let tracker = start_tracker(test_settings()).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (receipts, total) = good_receipts(3, "account");
    let (_, task) = track(&tracker, &server, &endpoint, &receipts).await;
    consolidate_now(&tracker.url).await;
    assert!(consolidate_receipt(&tracker.url, &task).await.is_some());

    let account = ucanto::principal::Absentee::new("did:mailto:example.com:alice".parse().unwrap());
    let agent = principal(10);
    let today = (ucanto::ucan::now() / 86_400) as i64;
    let period = |from: i64, to: i64| {
        Ipld::Map(IpldMap::from([
            ("from".to_string(), Ipld::String(format_date(from))),
            ("to".to_string(), Ipld::String(format_date(to))),
        ]))
    };
    let nb = IpldMap::from([("period".to_string(), period(today - 1, today + 1))]);
    let receipt = invoke(
        &tracker.url,
        &egress_get_invocation(&account, &agent, &[&alice()], nb),
    )
    .await;
    let ok = read_out::<EgressGetOk, EgressGetError>(receipt.out())
        .expect("shape")
        .expect("ok");
    assert_eq!(ok.total, total, "{:?}", receipt.out());
    let space = &ok.spaces[alice().did()];
    assert_eq!(space.total, total);
    assert_eq!(
        space.daily_stats.iter().map(|d| d.egress).sum::<u64>(),
        total
    );

    // A space the account does not own.
    let nb = IpldMap::from([(
        "spaces".to_string(),
        Ipld::List(vec![Ipld::String(mallory().did().to_string())]),
    )]);
    let receipt = invoke(
        &tracker.url,
        &egress_get_invocation(&account, &agent, &[&alice()], nb),
    )
    .await;
    assert_eq!(error_name(receipt.out()), Some("SpaceUnauthorized"));
    // More than 60 days.
    let nb = IpldMap::from([("period".to_string(), period(today - 90, today))]);
    let receipt = invoke(
        &tracker.url,
        &egress_get_invocation(&account, &agent, &[&alice()], nb),
    )
    .await;
    assert_eq!(error_name(receipt.out()), Some("PeriodNotAcceptable"));
    // Without the service's attestation the account's delegation proves nothing.
    let mut unattested = egress_get_invocation(&account, &agent, &[&alice()], IpldMap::new());
    unattested = Delegation::builder(&agent, service().did().clone())
        .capability(unattested.capabilities()[0].clone())
        .proof(match &unattested.proofs()[0] {
            ucanto::ucan::Proof::Delegation(d) => d.clone(),
            ucanto::ucan::Proof::Link(_) => unreachable!(),
        })
        .build()
        .unwrap();
    let receipt = invoke(&tracker.url, &unattested).await;
    assert_eq!(error_name(receipt.out()), Some("Unauthorized"));
}

/// Past the give-up age, counted from the first failed attempt, a batch that
/// cannot be fetched gets a final EgressConsolidateError receipt (before it:
/// none, see the offline test).
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_batch_is_given_up_after_the_give_up_age() {
    let mut settings = test_settings();
    settings.limits.give_up_after = 0;
    let tracker = start_tracker(settings).await;
    let server = BatchServer::default();
    server.failing.store(true, Ordering::Relaxed);
    let endpoint = server.serve().await;
    let (receipts, _) = good_receipts(2, "give-up");
    let (_, task) = track(&tracker, &server, &endpoint, &receipts).await;
    // The first failure starts the clock; the next attempt is past the age.
    assert_eq!(consolidate_now(&tracker.url).await["retried"], 1);
    assert!(consolidate_receipt(&tracker.url, &task).await.is_none());
    assert_eq!(consolidate_now(&tracker.url).await["concluded"], 1);
    let receipt = consolidate_receipt(&tracker.url, &task)
        .await
        .expect("final receipt");
    let error = consolidate_out(&receipt).expect_err("an error receipt");
    assert!(error.message.contains("gave up"), "{}", error.message);
    assert_eq!(
        metric(&tracker.url, "etracker_consolidated_bytes_total").await,
        0
    );
}

/// With an admin token, /metrics and /consolidate need it; the rest stays open.
#[tokio::test(flavor = "multi_thread")]
async fn admin_routes_need_the_token() {
    let mut settings = test_settings();
    settings.admin_token = Some("s3cret".into());
    let tracker = start_tracker(settings).await;
    let call = |post: bool, path: &str, token: Option<&str>| {
        let url = format!("{}{path}", tracker.url);
        let client = reqwest::Client::new();
        let mut request = if post {
            client.post(url)
        } else {
            client.get(url)
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap() }
    };
    assert_eq!(call(false, "metrics", None).await.status(), 401);
    assert_eq!(call(true, "consolidate", None).await.status(), 401);
    assert_eq!(call(false, "metrics", Some("nope")).await.status(), 401);
    let metrics = call(false, "metrics", Some("s3cret")).await;
    assert_eq!(metrics.status(), 200);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("etracker_tracked_batches_total 0"));
    assert_eq!(
        call(true, "consolidate", Some("s3cret")).await.status(),
        200
    );
    let banner = call(false, "", None).await.text().await.unwrap();
    assert!(banner.contains(service().did().as_str()));
    assert_eq!(call(false, "health", None).await.status(), 200);
    assert_eq!(call(false, "receipts/not-a-cid", None).await.status(), 400);
}

/// By default the tracker fetches only from public addresses: a node cannot
/// point it at loopback or its cloud's metadata service. An IP literal is
/// refused at once; a name resolving only to private addresses never connects.
#[tokio::test(flavor = "multi_thread")]
async fn private_endpoints_are_refused_by_default() {
    let mut settings = test_settings();
    settings.limits.allow_private_endpoints = false;
    let tracker = start_tracker(settings).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await; // http://127.0.0.1:PORT/receipts/{cid}
    let (receipts, _) = good_receipts(1, "private-literal");
    let (_, task) = track(&tracker, &server, &endpoint, &receipts).await;
    let by_name = endpoint.replace("127.0.0.1", "localhost");
    let (receipts, _) = good_receipts(1, "private-name");
    let (batch, by_name_task) = track(&tracker, &server, &by_name, &receipts).await;

    consolidate_now(&tracker.url).await;
    let receipt = consolidate_receipt(&tracker.url, &task)
        .await
        .expect("final");
    let error = consolidate_out(&receipt).expect_err("refused");
    assert!(
        error.message.contains("non-public address"),
        "{}",
        error.message
    );
    assert!(consolidate_receipt(&tracker.url, &by_name_task)
        .await
        .is_none());
    assert!(
        ucanto_record(&tracker, &batch).is_pending(),
        "retried, never fetched"
    );
    assert_eq!(
        metric(&tracker.url, "etracker_consolidated_bytes_total").await,
        0
    );
}
