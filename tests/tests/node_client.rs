//! The node's client crate against the real tracker over HTTP: journal →
//! serve → track → consolidate → poll → reconcile → delete; and a tracker
//! answer tampered in transit (wrong total, wrong signer) is never accepted.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cid::Cid;
use etracker_capabilities::consolidate::ConsolidateOk;
use etracker_capabilities::{read_out, Outcome};
use etracker_client::{BatchJournal, EgressClient, Event, JournalConfig, Reporter, Verdict};
use etracker_e2e::node::*;
use etracker_e2e::{mallory, serve, service};
use ucanto::message::AgentMessage;
use ucanto::principal::{Ed25519Signer, Signer};
use ucanto::receipt::{Receipt, ReceiptParts};

/// How the proxy between node and tracker rewrites consolidate receipts.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Tamper {
    /// Pass everything through.
    None,
    /// Re-sign with the tracker's key, adding 1 byte to the total.
    WrongTotal,
    /// Re-sign with mallory's key.
    WrongSigner,
}

#[derive(Clone)]
struct Proxy {
    tracker: String,
    tamper: Tamper,
}

/// Forwards ucanto calls; rewrites `GET /receipts/{cid}` answers per `tamper`.
fn proxy(tracker: String, tamper: Tamper) -> axum::Router {
    async fn forward(State(p): State<Proxy>, headers: HeaderMap, body: Bytes) -> Response {
        let mut request = reqwest::Client::new().post(&p.tracker).body(body);
        for (name, value) in &headers {
            if name == "content-type" || name == "accept" {
                request = request.header(name.as_str(), value.as_bytes());
            }
        }
        let response = request.send().await.unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        (
            status,
            [("content-type", ucanto::transport::CAR_CONTENT_TYPE)],
            response.bytes().await.unwrap(),
        )
            .into_response()
    }
    async fn receipt(State(p): State<Proxy>, Path(cid): Path<String>) -> Response {
        let response = reqwest::get(format!("{}receipts/{cid}", p.tracker))
            .await
            .unwrap();
        if !response.status().is_success() {
            return StatusCode::from_u16(response.status().as_u16())
                .unwrap()
                .into_response();
        }
        let bytes = response.bytes().await.unwrap();
        if p.tamper == Tamper::None {
            return bytes.into_response();
        }
        let task: Cid = cid.parse().unwrap();
        let message = AgentMessage::from_car(&bytes).unwrap();
        let genuine = message.receipt_for(&task).unwrap().unwrap();
        let mut ok =
            read_out::<ConsolidateOk, etracker_capabilities::consolidate::ConsolidateError>(
                genuine.out(),
            )
            .unwrap()
            .unwrap();
        let signer: Ed25519Signer = match p.tamper {
            Tamper::WrongTotal => {
                ok.total_egress += 1;
                service()
            }
            _ => mallory(),
        };
        let forged = Receipt::issue(
            &signer,
            ReceiptParts::new(genuine.ran().unwrap(), Ok(ok.to_ipld())),
        )
        .unwrap();
        AgentMessage::build(&[], &[forged])
            .unwrap()
            .to_car()
            .into_response()
    }
    axum::Router::new()
        .route("/", axum::routing::post(forward))
        .route("/receipts/{cid}", axum::routing::get(receipt))
        .with_state(Proxy { tracker, tamper })
}

async fn run(tamper: Tamper) -> (Vec<Event>, BatchJournal, u64) {
    run_with(tamper, test_settings()).await
}

async fn run_with(
    tamper: Tamper,
    settings: etracker_server::service::Settings,
) -> (Vec<Event>, BatchJournal, u64) {
    let tracker = start_tracker(settings).await;
    let node = node();
    let journal = BatchJournal::open(
        temp_dir("journal"),
        JournalConfig::default()
            .allow_small_batches(true)
            .min_batch_bytes(0),
    )
    .expect("journal");
    let batches = format!(
        "{}receipts/{{cid}}",
        serve(etracker_client::router(journal.clone())).await
    );
    let tracker_url = match tamper {
        Tamper::None => tracker.url.clone(),
        _ => serve(proxy(tracker.url.clone(), tamper)).await,
    };
    let client = EgressClient::builder(Arc::new(node.clone()), service().verifier(), tracker_url)
        .proof(track_proof(&service(), node.did()))
        .endpoint(batches)
        .build()
        .expect("client");

    let (receipts, total) = good_receipts(4, &format!("client-{tamper:?}"));
    for receipt in &receipts {
        journal.append(receipt).expect("append");
    }
    journal.rotate().expect("rotate").expect("a batch");
    let reporter = Reporter::new(journal.clone(), client);
    let mut events = reporter.tick().await; // tracks
    assert!(
        events.iter().any(|e| matches!(e, Event::Tracked { .. })),
        "{events:?}"
    );
    events.extend(reporter.tick().await); // not yet consolidated
    assert!(
        events.iter().any(|e| matches!(e, Event::Pending(_))),
        "{events:?}"
    );
    consolidate_now(&tracker.url).await;
    events.extend(reporter.tick().await); // polls and reconciles
    (events, journal, total)
}

/// Matching totals: the batch is settled and deleted from the journal.
#[tokio::test(flavor = "multi_thread")]
async fn node_reconciles_with_the_real_tracker() {
    let (events, journal, total) = run(Tamper::None).await;
    let settled = events.iter().find_map(|e| match e {
        Event::Settled(r) => Some(r),
        _ => None,
    });
    let settled = settled.unwrap_or_else(|| panic!("settled: {events:?}"));
    assert_eq!(settled.verdict, Verdict::Match);
    assert_eq!(settled.reported_total, Some(total));
    assert_eq!(settled.expected_total, total);
    assert!(
        journal.batches().is_empty(),
        "deleted after a verified match"
    );
}

/// A tracker answer whose total was changed (validly signed) is a mismatch:
/// the batch is kept.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_total_is_a_mismatch_and_keeps_the_batch() {
    let (events, journal, total) = run(Tamper::WrongTotal).await;
    let disputed = events.iter().find_map(|e| match e {
        Event::Disputed(r) => Some(r),
        _ => None,
    });
    let disputed = disputed.unwrap_or_else(|| panic!("disputed: {events:?}"));
    assert!(
        matches!(disputed.verdict, Verdict::Mismatch { .. }),
        "{:?}",
        disputed.verdict
    );
    assert_eq!(disputed.reported_total, Some(total + 1));
    assert_eq!(journal.batches().len(), 1, "kept");
}

/// A receipt signed by someone else is refused before reconciling: the batch is kept.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_signer_is_refused_and_keeps_the_batch() {
    let (events, journal, _) = run(Tamper::WrongSigner).await;
    assert!(
        events.iter().any(|e| matches!(e, Event::PollFailed { .. })),
        "the forged receipt is an error: {events:?}"
    );
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::Settled(_) | Event::Disputed(_))));
    assert_eq!(journal.batches().len(), 1, "kept");
}

/// Retrievals by a non-billable actor (here the batch's agent) are listed as
/// `NonBillable` and left out of the total: expected, so the batch settles.
#[tokio::test(flavor = "multi_thread")]
async fn non_billable_retrievals_are_expected() {
    let mut settings = test_settings();
    settings.non_billable_actors = vec![etracker_e2e::bob().did().clone()];
    let (events, journal, total) = run_with(Tamper::None, settings).await;
    let settled = events.iter().find_map(|e| match e {
        Event::Settled(r) => Some(r),
        _ => None,
    });
    let settled = settled.unwrap_or_else(|| panic!("settled: {events:?}"));
    assert_eq!(settled.verdict, Verdict::Match);
    assert_eq!(settled.reported_total, Some(0));
    assert_eq!(settled.expected_total, total);
    assert_eq!(settled.rejected.len(), 4);
    assert!(settled.rejected.iter().all(|r| r.name == "NonBillable"));
    assert!(journal.batches().is_empty());
}
