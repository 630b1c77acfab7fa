//! A consolidator deployed apart learns which retrievals another batch
//! counted only from the tracker's refusal. However many there are, that
//! answer names each in 16 bytes (less than the tally sent for it) and the
//! batch, settled again without them, concludes in the same run.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use etracker_capabilities::conclude::conflict_keys;
use etracker_e2e::node::{
    batch, consolidate_now, consolidate_out, fetch_receipt, good_receipts, node,
    remote_consolidator, serve_consolidator, start_tracker, test_settings, track_batch,
    BatchServer,
};
use etracker_server::service::RemoteConsolidator;
use ucanto::dag::Ipld;
use ucanto::message::AgentMessage;
use ucanto::principal::Signer;

/// Forwards `POST /` to `target` and keeps every answer's body.
async fn recording_proxy(target: String) -> (String, Arc<Mutex<Vec<bytes::Bytes>>>) {
    type Shared = (String, Arc<Mutex<Vec<bytes::Bytes>>>);
    async fn forward(State((target, seen)): State<Shared>, body: bytes::Bytes) -> Vec<u8> {
        let answer = reqwest::Client::new()
            .post(&target)
            .header("content-type", ucanto::transport::CAR_CONTENT_TYPE)
            .header("accept", ucanto::transport::CAR_CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        seen.lock().unwrap().push(answer.clone());
        answer.to_vec()
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route("/", axum::routing::post(forward))
        .with_state((target, seen.clone()));
    (etracker_e2e::serve(app).await, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn many_conflicts_are_summarised_and_the_batch_concludes() {
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut settings = test_settings();
    settings.remote_consolidator = Some(RemoteConsolidator {
        url: format!("http://{}/", listener.local_addr().unwrap()),
        verifier: etracker_e2e::principal(6).verifier(),
    });
    let tracker = start_tracker(settings).await;
    let (proxy, answers) = recording_proxy(tracker.url.clone()).await;
    serve_consolidator(listener, remote_consolidator(&proxy).build());

    // 1,500 retrievals counted, then a batch repeating all of them, with
    // one new one.
    let repeated = 1_500;
    let (receipts, total) = good_receipts(repeated + 1, "conflicts");
    track_batch(
        &tracker,
        &server,
        &endpoint,
        &node(),
        batch(&receipts[..repeated as usize]),
    )
    .await;
    assert_eq!(consolidate_now(&tracker.url).await["concluded"], 1);
    let mut again: Vec<_> = receipts[..repeated as usize]
        .iter()
        .map(|r| {
            // Another receipt for the same retrieval: a node re-signing it.
            etracker_e2e::node::ok_receipt(
                &node(),
                &ucanto::ucan::Invocation::from_blocks(&r.ran_cid(), r.blocks().clone()).unwrap(),
            )
        })
        .collect();
    again.push(receipts[repeated as usize].clone());
    let task = track_batch(&tracker, &server, &endpoint, &node(), batch(&again)).await;
    answers.lock().unwrap().clear();
    assert_eq!(
        consolidate_now(&tracker.url).await["concluded"],
        1,
        "refused once, settled again without the conflicts, concluded"
    );

    // The refusal: the count, and the 16-byte key of each retrieval.
    let answers = answers.lock().unwrap().clone();
    assert_eq!(answers.len(), 2, "one refusal, one conclusion");
    let message = AgentMessage::from_car(&answers[0]).unwrap();
    let ran: cid::Cid = message.report().keys().next().unwrap().parse().unwrap();
    let receipt = message.receipt_for(&ran).unwrap().unwrap();
    let Err(Ipld::Map(error)) = receipt.out() else {
        panic!("{:?}", receipt.out())
    };
    assert_eq!(error.get("count"), Some(&Ipld::Integer(repeated as i128)));
    let Some(Ipld::Bytes(conflicts)) = error.get("conflicts") else {
        panic!("{error:?}")
    };
    let mut named: Vec<[u8; 16]> = conflict_keys(conflicts).collect();
    named.sort_unstable();
    let mut expected: Vec<[u8; 16]> = receipts[..repeated as usize]
        .iter()
        .map(|r| {
            let invocation =
                ucanto::ucan::Invocation::from_blocks(&r.ran_cid(), r.blocks().clone()).unwrap();
            etracker_server::store::retrieval_key(&invocation.payload_id().unwrap())
        })
        .collect();
    expected.sort_unstable();
    assert_eq!(named, expected, "every conflict named, 16 bytes each");
    // (The answer also carries the conclude invocation it ran.)
    let size = ucanto::dag::Block::encode(&Ipld::Map(error.clone()))
        .unwrap()
        .bytes
        .len();
    assert!(size < 16 * repeated as usize + 1024, "{size} bytes");

    // The receipt the tracker keeps and serves counts the new one only.
    let ok = consolidate_out(&fetch_receipt(&tracker.url, &task).await.unwrap()).unwrap();
    let new_bytes = total - good_receipts(repeated, "conflicts").1;
    assert_eq!(ok.total_egress, new_bytes, "only the new retrieval counts");
    assert!(ok.errors[..10].iter().all(|e| e.name == "DuplicateReceipt"));
}
