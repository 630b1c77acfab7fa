//! The tracker's peak memory, and how long it takes to answer, under the
//! attacks of the security table that cost it the most: `POST /` saturated
//! with invocations citing badly signed proofs, or one citing 220,000
//! missing ones (`/health` polled meanwhile); a batch padded with receipts
//! the validator explains at length; a batch whose every retrieval cites
//! its own proof, padded to 100 KiB.
//! `BENCH_ATTACKS=1` runs these alone (into `target/bench/attacks.json`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etracker_capabilities::track::TrackNb;
use etracker_capabilities::{Ability, Track};
use serde_json::json;
use ucanto::dag::{cid_of, RAW};
use ucanto::message::AgentMessage;
use ucanto::principal::{Did, Ed25519Signer, Signature, Signer, Verifier};
use ucanto::receipt::{Receipt, ReceiptParts};
use ucanto::ucan::{now, Delegation, Invocation, Proof};

use crate::batch::Principals;
use crate::peers;
use crate::track::round;

/// Presents `did` but signs with another key: every signature it makes
/// fails to verify, which only a verification can tell.
#[derive(Debug)]
struct Impostor {
    did: Did,
    key: Ed25519Signer,
}

impl Signer for Impostor {
    fn did(&self) -> &Did {
        &self.did
    }
    fn sign(&self, payload: &[u8]) -> Signature {
        self.key.sign(payload)
    }
    fn signature_code(&self) -> u64 {
        self.key.signature_code()
    }
    fn verifier(&self) -> Arc<dyn Verifier> {
        self.key.verifier()
    }
}

/// `n` delegations of track from the service to the node, badly signed.
fn bad_proofs(p: &Principals, n: usize, tag: &str) -> Vec<Delegation> {
    let impostor = Impostor {
        did: p.service.did().clone(),
        key: Ed25519Signer::generate(),
    };
    (0..n)
        .map(|i| {
            Delegation::builder(&impostor, p.node.did().clone())
                .capability(Track::unrestricted(p.service.did()))
                .nonce(format!("{tag}-{i}"))
                .no_expiration()
                .build()
                .unwrap()
        })
        .collect()
}

/// One message of `per_message` track invocations citing `proofs`.
fn message(p: &Principals, proofs: &[Delegation], per_message: usize, tag: &str) -> Vec<u8> {
    let invocations: Vec<Invocation> = (0..per_message)
        .map(|i| {
            let batch = cid_of(ucanto::dag::CAR, format!("{tag}-{i}").as_bytes());
            let nb = TrackNb::new(batch, "https://node.example/{cid}".to_string()).unwrap();
            let mut builder = Delegation::builder(&p.node, p.service.did().clone())
                .capability(Track::capability(p.service.did(), &nb));
            for proof in proofs {
                builder = builder.proof(proof.clone());
            }
            builder.build().unwrap()
        })
        .collect();
    AgentMessage::build(&invocations, &[]).unwrap().to_car()
}

/// Sends `bodies` at once while polling `/health`; returns (seconds to
/// answer them all, slowest `/health` in ms).
async fn saturate(url: &str, bodies: Vec<Vec<u8>>) -> (f64, f64) {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let sends = bodies.into_iter().map(|body| {
        let client = client.clone();
        async move {
            let response = client
                .post(url)
                .header("content-type", ucanto::transport::CAR_CONTENT_TYPE)
                .header("accept", ucanto::transport::CAR_CONTENT_TYPE)
                .body(body)
                .send()
                .await
                .unwrap();
            response.bytes().await.unwrap();
        }
    });
    let attack = futures_util::future::join_all(sends);
    tokio::pin!(attack);
    let mut slowest: f64 = 0.0;
    loop {
        tokio::select! {
            _ = &mut attack => break,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                let asked = Instant::now();
                let _ = client.get(format!("{url}health")).send().await;
                slowest = slowest.max(asked.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    (started.elapsed().as_secs_f64(), slowest)
}

/// A batch of `wordy` receipts whose retrievals cite 60 missing proofs,
/// three that cite 50,000, and 20 good ones; written to `dir`.
fn padded_batch(p: &Principals, dir: &Path, wordy: usize) -> (cid::Cid, usize) {
    let unproven = |missing: usize, tag: String| {
        let template = p.receipt(0);
        let ran = Invocation::from_blocks(&template.ran_cid(), template.blocks().clone()).unwrap();
        let mut builder = Delegation::builder(&p.agent, p.node.did().clone())
            .capability(ran.capabilities()[0].clone())
            .expiration(now() + 3600)
            .nonce(tag.clone());
        for i in 0..missing {
            builder = builder.proof(Proof::Link(cid_of(RAW, format!("{tag}-{i}").as_bytes())));
        }
        let invocation = builder.build().unwrap();
        Receipt::issue(
            &p.node,
            ReceiptParts::new(&invocation, Ok(ucanto::dag::Ipld::Map(Default::default()))),
        )
        .unwrap()
        .archive()
        .unwrap()
    };
    let mut archives: Vec<Vec<u8>> = (0..wordy).map(|i| unproven(60, format!("w{i}"))).collect();
    archives.extend((0..3).map(|i| unproven(50_000, format!("h{i}"))));
    archives.extend((1..=20).map(|i| p.receipt(1_000_000 + i).archive().unwrap()));
    let blocks = archives
        .iter()
        .map(|a| (cid_of(ucanto::dag::CAR, a), a.clone()));
    let bytes = ucanto::car::encode(&[], blocks);
    let cid = cid_of(ucanto::dag::CAR, &bytes);
    std::fs::write(dir.join(format!("{cid}.car")), &bytes).unwrap();
    (cid, bytes.len())
}

/// A batch of `n` retrievals, each citing its own proof padded to
/// 100 KiB, written to `dir` as it is made; returns its CID and size.
fn padded_proofs_batch(p: &Principals, dir: &Path, n: u64) -> (cid::Cid, u64) {
    use sha2::Digest;
    use std::io::Write;
    let path = dir.join("padded.car");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    let mut write = |bytes: &[u8]| {
        hasher.update(bytes);
        file.write_all(bytes).unwrap();
        size += bytes.len() as u64;
    };
    let header = ucanto::car::encode(&[], std::iter::empty::<(cid::Cid, Vec<u8>)>());
    write(&header);
    for i in 0..n {
        let pad: Vec<u8> = (0..100 << 10)
            .map(|j: usize| (j as u64 + i * 31) as u8)
            .collect();
        let proof = Delegation::builder(&p.space, p.agent.did().clone())
            .capability(ucanto::ucan::Capability::new(
                "space/content/retrieve",
                p.space.did().as_str(),
            ))
            .fact(ucanto::dag::IpldMap::from([(
                "pad".to_string(),
                ucanto::dag::Ipld::Bytes(pad),
            )]))
            .nonce(format!("padded-{i}"))
            .no_expiration()
            .build()
            .unwrap();
        let template = p.receipt(2_000_000 + i);
        let ran = Invocation::from_blocks(&template.ran_cid(), template.blocks().clone()).unwrap();
        let invocation = Delegation::builder(&p.agent, p.node.did().clone())
            .capability(ran.capabilities()[0].clone())
            .expiration(now() + 3600)
            .nonce(format!("padded-{i}"))
            .proof(proof)
            .build()
            .unwrap();
        let archive = Receipt::issue(
            &p.node,
            ReceiptParts::new(&invocation, Ok(ucanto::dag::Ipld::Map(Default::default()))),
        )
        .unwrap()
        .archive()
        .unwrap();
        let one = ucanto::car::encode(&[], [(cid_of(ucanto::dag::CAR, &archive), archive)]);
        write(&one[header.len()..]);
    }
    file.flush().unwrap();
    drop(file);
    let digest: [u8; 32] = hasher.finalize().into();
    let cid = ucanto::dag::cid_of_digest(ucanto::dag::CAR, digest);
    std::fs::rename(&path, dir.join(format!("{cid}.car"))).unwrap();
    (cid, size)
}

/// Tracks `batch` (in `dir`) on a fresh `etracker` and consolidates it;
/// the attack's row.
async fn consolidate_attack(
    p: &Principals,
    work: &Path,
    dir: &Path,
    name: &str,
    batch: cid::Cid,
    size: u64,
) -> serde_json::Value {
    let endpoint = peers::node_server(dir.to_path_buf()).await;
    let tracker = peers::etracker(p, &work.join("attack-batch")).await;
    peers::ready(&tracker.url).await;
    let task = peers::track(p, &tracker.url, batch, endpoint).await;
    let started = Instant::now();
    reqwest::Client::new()
        .post(format!("{}consolidate", tracker.url))
        .send()
        .await
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let served = reqwest::get(format!("{}receipts/{task}", tracker.url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let row = json!({
        "attack": name,
        "batch_bytes": size,
        "ms": round(seconds * 1000.0),
        "receipt_bytes": served.len(),
        "peak_rss_mib": round(tracker.peak_rss() as f64 / (1 << 20) as f64),
    });
    tracker.stop().await;
    row
}

/// Runs every attack against a fresh `etracker` each; one JSON object each.
pub(crate) async fn run(p: &Principals, work: &Path) -> Vec<serde_json::Value> {
    let mut results = Vec::new();
    // POST / saturated: 8 messages × 16 invocations, each citing the same
    // 2,000 bad proofs (past the proof cap), then 60 distinct ones each
    // (within it: the signature budget and the remembered failures bound it).
    for (name, per_invocation, shared) in [
        ("post: 8 × 16 invocations × 2,000 bad proofs", 2_000, true),
        (
            "post: 8 × 16 invocations × 60 distinct bad proofs",
            60,
            false,
        ),
    ] {
        let tracker = peers::etracker(p, &work.join("attack-post")).await;
        peers::ready(&tracker.url).await;
        let common = bad_proofs(p, per_invocation, "shared");
        let bodies = (0..8)
            .map(|m| {
                let own;
                let proofs = if shared {
                    &common
                } else {
                    own = bad_proofs(p, per_invocation, &format!("m{m}"));
                    &own
                };
                message(p, proofs, 16, &format!("{name}-{m}"))
            })
            .collect();
        let (seconds, health_ms) = saturate(&tracker.url, bodies).await;
        results.push(json!({
            "attack": name,
            "ms": round(seconds * 1000.0),
            "health_max_ms": round(health_ms),
            "peak_rss_mib": round(tracker.peak_rss() as f64 / (1 << 20) as f64),
        }));
        tracker.stop().await;
    }
    // One invocation citing 220,000 missing proofs: an 8 MiB block.
    let tracker = peers::etracker(p, &work.join("attack-links")).await;
    peers::ready(&tracker.url).await;
    let body = {
        let batch = cid_of(ucanto::dag::CAR, b"links");
        let nb = TrackNb::new(batch, "https://node.example/{cid}".to_string()).unwrap();
        let mut builder = Delegation::builder(&p.node, p.service.did().clone())
            .capability(Track::capability(p.service.did(), &nb));
        for i in 0..220_000u32 {
            builder = builder.proof(Proof::Link(cid_of(RAW, &i.to_be_bytes())));
        }
        AgentMessage::build(&[builder.build().unwrap()], &[])
            .unwrap()
            .to_car()
    };
    let (seconds, health_ms) = saturate(&tracker.url, vec![body]).await;
    results.push(json!({
        "attack": "post: one invocation citing 220,000 missing proofs (8 MiB)",
        "ms": round(seconds * 1000.0),
        "health_max_ms": round(health_ms),
        "peak_rss_mib": round(tracker.peak_rss() as f64 / (1 << 20) as f64),
    }));
    tracker.stop().await;

    // A batch padded with 1,100 receipts the validator explains at length.
    let dir = work.join("attack-batches");
    std::fs::create_dir_all(&dir).unwrap();
    let (batch, size) = padded_batch(p, &dir, 1_100);
    let name = "batch: 1,100 long explanations, 3 × 50,000 missing proofs, 20 good";
    results.push(consolidate_attack(p, work, &dir, name, batch, size as u64).await);
    // A batch whose every retrieval cites its own proof, padded.
    let (batch, size) = padded_proofs_batch(p, &dir, 1_600);
    let name = "batch: 1,600 retrievals, each with its own proof padded to 100 KiB";
    results.push(consolidate_attack(p, work, &dir, name, batch, size).await);
    results
}

/// The attacks as table rows.
pub(crate) fn print(attacks: &[serde_json::Value]) {
    for a in attacks {
        let health = a
            .get("health_max_ms")
            .map_or("".to_string(), |ms| format!("/health at most {ms} ms"));
        println!(
            "| attack: {} | answered in {} ms, peak RSS {} MiB | {health} | |",
            a["attack"].as_str().unwrap_or_default(),
            a["ms"],
            a["peak_rss_mib"],
        );
    }
}
