//! What one client can make the tracker spend over HTTP: repeated and
//! numerous invocations per message, slow requests, and whether the health
//! check stays answerable meanwhile.

use std::time::Duration;

use etracker_capabilities::conclude::ConcludeNb;
use etracker_capabilities::{Ability, Conclude};
use etracker_e2e::node::{metric, start_tracker, test_settings};
use etracker_e2e::service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ucanto::message::AgentMessage;
use ucanto::principal::Signer;
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
