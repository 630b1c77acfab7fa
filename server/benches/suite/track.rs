//! `space/egress/track` under load: pre-signed invocations (one batch each)
//! posted by 64 concurrent keep-alive connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use etracker_capabilities::track::TrackNb;
use etracker_capabilities::{Ability, Track};
use serde_json::json;
use ucanto::dag::{cid_of, CAR};
use ucanto::message::AgentMessage;
use ucanto::principal::Signer;
use ucanto::ucan::{now, Delegation};

use crate::batch::Principals;

pub(crate) const CONCURRENCY: usize = 64;

/// Request bodies: agent messages of `count` distinct track invocations.
pub(crate) fn bodies(p: &Principals, count: usize, salt: &str) -> Vec<Vec<u8>> {
    let proof = Delegation::builder(&p.service, p.node.did().clone())
        .capability(Track::unrestricted(p.service.did()))
        .no_expiration()
        .build()
        .unwrap();
    (0..count)
        .map(|i| {
            let batch = cid_of(CAR, format!("{salt}-{i}").as_bytes());
            let nb = TrackNb::new(batch, "http://node.example/receipts/{cid}").unwrap();
            let invocation = Delegation::builder(&p.node, p.service.did().clone())
                .capability(Track::capability(p.service.did(), &nb))
                .expiration(now() + 3600)
                .proof(proof.clone())
                .build()
                .unwrap();
            AgentMessage::build(&[invocation], &[]).unwrap().to_car()
        })
        .collect()
}

/// Throughput and latency of one run.
pub(crate) struct Load {
    pub(crate) per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Load {
    pub(crate) fn json(&self) -> serde_json::Value {
        json!({"inv_per_s": round(self.per_second), "p50_ms": round(self.p50_ms), "p99_ms": round(self.p99_ms)})
    }
}

pub(crate) fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Posts every body to `url` with [`CONCURRENCY`] requests in flight, and
/// checks each answer is a 200 carrying an `ok` receipt.
pub(crate) async fn run(url: &str, bodies: Arc<Vec<Vec<u8>>>) -> Load {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, next, bodies, url) = (
                client.clone(),
                next.clone(),
                bodies.clone(),
                url.to_string(),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else {
                        return latencies;
                    };
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("content-type", "application/vnd.ipld.car")
                        .header("accept", "application/vnd.ipld.car")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("track request");
                    assert!(response.status().is_success(), "{}", response.status());
                    let answer = response.bytes().await.expect("track answer");
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                    if i.is_multiple_of(997) {
                        check_ok(&answer);
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Load {
        per_second: bodies.len() as f64 / seconds,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

fn check_ok(answer: &[u8]) {
    let message = AgentMessage::from_car(answer).expect("an agent message");
    let ran: cid::Cid = message
        .report()
        .keys()
        .next()
        .expect("a receipt")
        .parse()
        .unwrap();
    let receipt = message.receipt_for(&ran).unwrap().expect("decodes");
    assert!(receipt.out().is_ok(), "{:?}", receipt.out());
}
