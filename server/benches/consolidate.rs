//! How fast the tracker consolidates: one batch of signed retrieve receipts,
//! tracked and consolidated through the real path (HTTP fetch from a node on
//! loopback, CAR streaming, signature and authorization checks, conclude,
//! redb commit). Run: `cargo bench -p etracker-server --bench consolidate`.
//! Writes `target/bench/consolidate.json`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Path;
use etracker_capabilities::track::TrackNb;
use etracker_capabilities::{Ability, Track};
use etracker_server::service::{Settings, Tracker};
use etracker_server::store::redb::RedbStore;
use etracker_server::store::{SpaceEntry, Store};
use ucanto::client::Connection;
use ucanto::dag::{cid_of, Ipld, IpldMap, CAR};
use ucanto::principal::{Ed25519Signer, Signer};
use ucanto::receipt::{Receipt, ReceiptParts};
use ucanto::ucan::{now, Capability, Delegation};

const RECEIPTS: u64 = 5_000;

fn main() {
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}

async fn run() {
    let (space, agent, service, node) = (
        Ed25519Signer::from_seed([1; 32]),
        Ed25519Signer::from_seed([2; 32]),
        Ed25519Signer::from_seed([4; 32]),
        Ed25519Signer::from_seed([5; 32]),
    );
    let proof = Delegation::builder(&space, agent.did().clone())
        .capability(Capability::new(
            "space/content/retrieve",
            space.did().as_str(),
        ))
        .no_expiration()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut blocks = Vec::new();
    for i in 0..RECEIPTS {
        let nb = IpldMap::from([
            (
                "blob".to_string(),
                Ipld::Map(IpldMap::from([(
                    "digest".to_string(),
                    Ipld::Bytes(vec![0x12, 0x20].into_iter().chain([i as u8; 32]).collect()),
                )])),
            ),
            (
                "range".to_string(),
                Ipld::List(vec![Ipld::Integer(0), Ipld::Integer(1_048_575)]),
            ),
        ]);
        let invocation = Delegation::builder(&agent, node.did().clone())
            .capability(Capability::new("space/content/retrieve", space.did().as_str()).with_nb(nb))
            .expiration(now() + 600)
            .nonce(i.to_string())
            .proof(proof.clone())
            .build()
            .unwrap();
        let receipt = Receipt::issue(
            &node,
            ReceiptParts::new(&invocation, Ok(Ipld::Map(IpldMap::new()))),
        )
        .unwrap();
        let archive = receipt.archive().unwrap();
        blocks.push((cid_of(CAR, &archive), archive));
    }
    let batch = ucanto::car::encode(&[], blocks);
    let batch_cid = cid_of(CAR, &batch);
    let build_secs = started.elapsed().as_secs_f64();

    // The node serves the batch.
    let served = Arc::new(batch.clone());
    let node_app = axum::Router::new().route(
        "/receipts/{cid}",
        axum::routing::get(move |Path(_): Path<String>| {
            let bytes = served.clone();
            async move { bytes.as_ref().clone() }
        }),
    );
    let node_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!(
        "http://{}/receipts/{{cid}}",
        node_listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(node_listener, node_app).await.unwrap() });

    // The tracker, on a fresh store.
    let dir = std::env::temp_dir().join(format!("etracker-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(RedbStore::open(&dir).unwrap());
    // The default space policy counts registered spaces only.
    store
        .put_space(&SpaceEntry {
            space: space.did().clone(),
            provider: service.did().clone(),
            customer: None,
        })
        .unwrap();
    let mut settings = Settings::default();
    settings.limits.min_size = 0;
    settings.limits.allow_private_endpoints = true;
    settings.limits.scratch_dir = dir.clone();
    let tracker = Tracker::new(Arc::new(service.clone()), store.clone(), settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let app = tracker.app();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let track_proof = Delegation::builder(&service, node.did().clone())
        .capability(Track::unrestricted(service.did()))
        .no_expiration()
        .build()
        .unwrap();
    let track = Delegation::builder(&node, service.did().clone())
        .capability(Track::capability(
            service.did(),
            &TrackNb::new(batch_cid, endpoint).unwrap(),
        ))
        .proof(track_proof)
        .build()
        .unwrap();
    let receipt = Connection::http(service.verifier(), url)
        .invoke(&track)
        .await
        .unwrap();
    assert!(receipt.out().is_ok());

    let started = Instant::now();
    let summary = tracker.consolidate().await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(summary.concluded, 1, "{summary:?}");
    assert_eq!(
        store.stats().unwrap().total_bytes,
        RECEIPTS << 20,
        "every receipt counted"
    );
    let rate = RECEIPTS as f64 / secs;
    let mib = batch.len() as f64 / (1024.0 * 1024.0);
    println!("batch: {RECEIPTS} receipts, {mib:.1} MiB (built in {build_secs:.1} s)");
    println!(
        "consolidated in {secs:.2} s: {rate:.0} receipts/s, {:.1} MiB/s",
        mib / secs
    );
    let report = format!(
        "{{\"receipts\":{RECEIPTS},\"batch_bytes\":{},\"seconds\":{secs:.3},\"receipts_per_s\":{rate:.0}}}\n",
        batch.len()
    );
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(format!("{out}/consolidate.json"), report).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
