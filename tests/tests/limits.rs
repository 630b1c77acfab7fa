//! What one client can make the tracker spend over HTTP: repeated and
//! numerous invocations per message, slow requests, hostile proofs, and
//! whether the health check stays answerable meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etracker_capabilities::conclude::ConcludeNb;
use etracker_capabilities::{Ability, Conclude};
use etracker_e2e::flood::{forged_track_delegations, message_with, track_citing};
use etracker_e2e::node::{metric, start_tracker, test_settings};
use etracker_e2e::service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ucanto::dag::Ipld;
use ucanto::message::AgentMessage;
use ucanto::principal::{Ed25519Signer, Signer};
use ucanto::server::error_name;
use ucanto::transport::CAR_CONTENT_TYPE;
use ucanto::ucan::{Delegation, Invocation};

/// A conclude the tracker's handler runs and refuses (nothing to conclude):
/// each run shows in `etracker_conclude_invocations_total`.
fn conclude(tag: u8) -> Invocation {
    let nothing = ucanto::dag::cid_of(ucanto::dag::DAG_CBOR, &[tag]);
    Delegation::builder(&service(), service().did().clone())
        .capability(Conclude::capability(
            service().did(),
            &ConcludeNb {
                receipt: nothing,
                tally: Vec::new(),
            },
        ))
        .build()
        .unwrap()
}

async fn post(url: &str, message: &AgentMessage) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", CAR_CONTENT_TYPE)
        .header("accept", CAR_CONTENT_TYPE)
        .body(message.to_car())
        .send()
        .await
        .unwrap()
}

/// A message listing one invocation 50,000 times runs it once and answers
/// with its one receipt; a message with more distinct invocations than the
/// limit is refused whole, before any runs.
#[tokio::test(flavor = "multi_thread")]
async fn repeated_and_numerous_invocations_are_bounded() {
    let tracker = start_tracker(test_settings()).await;
    let runs = "etracker_conclude_invocations_total";

    let repeated = vec![conclude(0); 50_000];
    let message = AgentMessage::build(&repeated, &[]).unwrap();
    assert_eq!(message.execute().len(), 50_000);
    // A guard against hanging, not a speed claim (see the interop bench).
    let response = tokio::time::timeout(Duration::from_secs(30), post(&tracker.url, &message))
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    let answer = AgentMessage::from_car(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(answer.report().len(), 1);
    let receipt = answer.receipt_for(&repeated[0].cid()).unwrap().unwrap();
    assert!(receipt.out().is_err(), "nothing to conclude");
    assert_eq!(metric(&tracker.url, runs).await, 1, "ran once");

    let limit = ucanto::server::DEFAULT_MAX_INVOCATIONS;
    let many: Vec<Invocation> = (1..=limit as u8 + 1).map(conclude).collect();
    let response = post(&tracker.url, &AgentMessage::build(&many, &[]).unwrap()).await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(text.contains("distinct invocations"), "{text}");
    assert_eq!(metric(&tracker.url, runs).await, 1, "none of them ran");

    // At the limit, every one runs.
    let response = post(
        &tracker.url,
        &AgentMessage::build(&many[..limit], &[]).unwrap(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let answer = AgentMessage::from_car(&response.bytes().await.unwrap()).unwrap();
    for invocation in &many[..limit] {
        let receipt = answer.receipt_for(&invocation.cid()).unwrap().unwrap();
        assert_eq!(error_name(receipt.out()), Some("EgressConcludeError"));
    }
    assert_eq!(metric(&tracker.url, runs).await, 1 + limit as u64);
}

/// Clients that hold `POST /` (here: a body that never finishes) take the
/// concurrency slots, never the health check, and are cut off at the
/// request timeout.
#[tokio::test(flavor = "multi_thread")]
async fn slow_requests_are_cut_off_and_health_stays_up() {
    let mut settings = test_settings();
    settings.max_concurrent_requests = 1;
    settings.request_timeout = Duration::from_secs(2);
    let tracker = start_tracker(settings).await;
    let address = tracker
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();

    // Headers and half a body, then nothing: holds the only slot.
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nhost: {address}\r\ncontent-type: {CAR_CONTENT_TYPE}\r\ncontent-length: 1000\r\n\r\n"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&[0; 500]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Another request waits for the slot, while the health check answers.
    let waiting = tokio::spawn({
        let url = tracker.url.clone();
        async move {
            let message = AgentMessage::build(&[conclude(9)], &[]).unwrap();
            post(&url, &message).await.status()
        }
    });
    let health = tokio::time::timeout(
        Duration::from_secs(1),
        reqwest::get(format!("{}health", tracker.url)),
    )
    .await
    .expect("health answers while POST / is busy")
    .unwrap();
    assert_eq!(health.status(), 200);
    assert!(!waiting.is_finished(), "the second POST waits for the slot");

    // The slow request is cut off at the timeout: 408.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer))
        .await
        .expect("cut off")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // The waiting request then ran, or timed out while waiting: never hung.
    let status = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("not hung")
        .unwrap();
    assert!(status == 200 || status == 408, "{status}");
}

/// Polls `url` every ~20 ms until `stop`; returns the slowest answer and
/// how many answered (each must be a 200).
fn poll(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(Duration, usize)> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let (mut slowest, mut answered) = (Duration::ZERO, 0);
        while !stop.load(Ordering::Relaxed) {
            let start = Instant::now();
            let response = client
                .get(&url)
                .bearer_auth(etracker_e2e::node::ADMIN_TOKEN)
                .send()
                .await
                .expect("answers");
            assert!(
                response.status().is_success(),
                "{url}: {}",
                response.status()
            );
            response.bytes().await.expect("body");
            slowest = slowest.max(start.elapsed());
            answered += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (slowest, answered)
    })
}

/// Sends `bodies` at once; returns the answers and how long the last took.
async fn flood(url: &str, bodies: Vec<Vec<u8>>) -> (Vec<AgentMessage>, Duration) {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let requests = bodies.into_iter().map(|body| {
        let request = client
            .post(url)
            .header("content-type", CAR_CONTENT_TYPE)
            .header("accept", CAR_CONTENT_TYPE)
            .body(body)
            .send();
        async move {
            let response = request.await.expect("answered");
            assert_eq!(response.status(), 200);
            response.bytes().await.expect("body")
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    let took = start.elapsed();
    let answers = answers
        .iter()
        .map(|bytes| AgentMessage::from_car(bytes).expect("agent message"))
        .collect();
    (answers, took)
}

/// Each of `invocations` got an `Unauthorized` receipt whose message is
/// at most 1 KiB and mentions `why`.
fn all_unauthorized(answer: &AgentMessage, invocations: &[Invocation], why: &str) {
    for invocation in invocations {
        let receipt = answer.receipt_for(&invocation.cid()).unwrap().unwrap();
        assert_eq!(error_name(receipt.out()), Some("Unauthorized"));
        let Err(Ipld::Map(error)) = receipt.out() else {
            panic!("{:?}", receipt.out())
        };
        let Some(Ipld::String(message)) = error.get("message") else {
            panic!("{error:?}")
        };
        assert!(
            message.len() <= ucanto::bounded::MAX_MESSAGE_BYTES,
            "{}",
            message.len()
        );
        assert!(message.contains(why), "{message}");
    }
}

/// A CPU flood that needs no credentials: 8 requests at once, each of 16
/// track invocations citing delegations whose signatures fail. Citing 2,000
/// (a ~2 MB body), each invocation is refused before any is verified;
/// citing 60 each (480 per request, met by several invocations), the
/// request's budget of signature checks and the memory of failed checks
/// bound the work. Each invocation gets a short `Unauthorized`, every
/// request is answered well within 5 s, and `/health` and `/metrics`,
/// polled meanwhile, answer each time within 100 ms.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_proofs_are_bounded_and_health_stays_up() {
    const REQUESTS: usize = 8;
    const INVOCATIONS: usize = 16;
    let tracker = start_tracker(test_settings()).await;
    let tracker_did = service().did().clone();
    let attacker = Ed25519Signer::from_seed([42; 32]);

    // Variant 1: every invocation cites the same 2,000 bad delegations.
    let forged = forged_track_delegations(&tracker_did, attacker.did(), "many", 2_000);
    let links: Vec<_> = forged.iter().map(Delegation::cid).collect();
    let mut many = Vec::new();
    let mut bodies = Vec::new();
    for r in 0..REQUESTS {
        let invocations: Vec<Invocation> = (0..INVOCATIONS)
            .map(|i| track_citing(&attacker, &tracker_did, &format!("many-{r}-{i}"), &links))
            .collect();
        bodies.push(message_with(&invocations, &forged));
        many.push(invocations);
    }
    assert!(bodies[0].len() > 1_800_000, "{}", bodies[0].len());

    // Variant 2: within the proof cap, 480 bad delegations per request, each
    // invocation citing 60 of them (half of them also cited by the previous).
    let mut within = Vec::new();
    let mut within_bodies = Vec::new();
    for r in 0..REQUESTS {
        let pool = forged_track_delegations(&tracker_did, attacker.did(), &format!("r{r}"), 480);
        let invocations: Vec<Invocation> = (0..INVOCATIONS)
            .map(|i| {
                let cited: Vec<_> = (0..60).map(|k| pool[(i * 30 + k) % 480].cid()).collect();
                track_citing(&attacker, &tracker_did, &format!("within-{r}-{i}"), &cited)
            })
            .collect();
        within_bodies.push(message_with(&invocations, &pool));
        within.push(invocations);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let health = poll(format!("{}health", tracker.url), stop.clone());
    let metrics = poll(format!("{}metrics", tracker.url), stop.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (answers, took_many) = flood(&tracker.url, bodies).await;
    for (answer, invocations) in answers.iter().zip(&many) {
        all_unauthorized(
            answer,
            invocations,
            "cites 2000 proofs, more than the 64 allowed",
        );
    }
    let (answers, took_within) = flood(&tracker.url, within_bodies).await;
    for (answer, invocations) in answers.iter().zip(&within) {
        all_unauthorized(
            answer,
            invocations,
            "Claim {\"can\":\"space/egress/track\"}",
        );
    }

    stop.store(true, Ordering::Relaxed);
    let (health_slowest, health_polls) = health.await.unwrap();
    let (metrics_slowest, metrics_polls) = metrics.await.unwrap();
    eprintln!(
        "2,000 proofs: {took_many:?}; 60 proofs: {took_within:?}; \
         /health slowest {health_slowest:?} of {health_polls}; \
         /metrics slowest {metrics_slowest:?} of {metrics_polls}"
    );
    assert!(took_many < Duration::from_millis(2_500), "{took_many:?}");
    assert!(
        took_within < Duration::from_millis(2_500),
        "{took_within:?}"
    );
    assert!(health_polls >= 3 && metrics_polls >= 3);
    assert!(
        health_slowest < Duration::from_millis(100),
        "{health_slowest:?}"
    );
    assert!(
        metrics_slowest < Duration::from_millis(100),
        "{metrics_slowest:?}"
    );
}
