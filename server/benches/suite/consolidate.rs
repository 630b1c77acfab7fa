//! Consolidation through the real path, in the `etracker` binary: track a
//! batch served by a node on loopback, then `POST /consolidate` (fetch, hash,
//! stream, check every receipt, conclude, commit). Measured: wall time, the
//! tracker's CPU time and its peak resident memory; and, for comparison, how
//! fast this machine verifies the same receipts' signatures alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::json;
use ucanto::principal::{Signer, Verifier};

use crate::batch::{self, BatchFile, Principals, RETRIEVAL_BYTES};
use crate::peers;
use crate::track::round;

/// One consolidation of one batch.
#[derive(Clone)]
pub(crate) struct Run {
    pub(crate) batch: BatchFile,
    pub(crate) seconds: f64,
    pub(crate) cpu_seconds: f64,
    pub(crate) peak_rss: u64,
}

impl Run {
    /// Receipts checked per second of wall time.
    pub(crate) fn per_second(&self) -> f64 {
        self.batch.receipts as f64 / self.seconds
    }

    /// Receipts checked per CPU-second of the tracker: per core.
    pub(crate) fn per_core(&self) -> f64 {
        self.batch.receipts as f64 / self.cpu_seconds.max(1e-3)
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        json!({
            "batch_mib": round(self.batch.bytes as f64 / (1 << 20) as f64),
            "receipts": self.batch.receipts,
            "counted": self.batch.distinct,
            "seconds": round(self.seconds),
            "cpu_seconds": round(self.cpu_seconds),
            "receipts_per_s": round(self.per_second()),
            "receipts_per_core_s": round(self.per_core()),
            "peak_rss_mib": round(self.peak_rss as f64 / (1 << 20) as f64),
        })
    }
}

/// A batch written once, in a directory of its own (removed on drop), to be
/// consolidated by as many fresh trackers as wanted.
pub(crate) struct Prepared {
    pub(crate) batch: BatchFile,
    pub(crate) dir: PathBuf,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes a batch of `mib` MiB: every receipt a new retrieval (`distinct`)
/// or mostly duplicates.
pub(crate) fn prepare(p: &Principals, work: &Path, mib: u64, distinct: bool) -> Prepared {
    let dir = work.join(format!(
        "batch-{mib}-{}",
        if distinct { "valid" } else { "dup" }
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut batch = batch::write(p, &dir, mib << 20, distinct);
    let named = dir.join(format!("{}.car", batch.cid));
    std::fs::rename(&batch.path, &named).unwrap();
    batch.path = named;
    Prepared { batch, dir }
}

/// Has a fresh tracker consolidate `prepared`, and checks it counted every
/// distinct retrieval once.
pub(crate) async fn run(p: &Principals, work: &Path, prepared: &Prepared) -> Run {
    let batch = prepared.batch.clone();
    let batches = prepared.dir.clone();
    let endpoint = peers::node_server(batches.clone()).await;
    let tracker = peers::etracker(p, &work.join("tracker")).await;
    peers::ready(&tracker.url).await;

    peers::track(p, &tracker.url, batch.cid, endpoint).await;

    let cpu_before = tracker.cpu_seconds();
    let started = Instant::now();
    let summary = peers::consolidate_now(&tracker.url).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = tracker.cpu_seconds() - cpu_before;
    assert_eq!(summary["concluded"], 1, "{summary}");
    let counted = peers::metric(&tracker.url, "etracker_consolidated_bytes_total").await as u64;
    assert_eq!(
        counted,
        batch.distinct * RETRIEVAL_BYTES,
        "every retrieval counted once"
    );
    let peak_rss = tracker.peak_rss();
    tracker.stop().await;
    Run {
        batch,
        seconds,
        cpu_seconds,
        peak_rss,
    }
}

/// The two signatures of each of `receipts` receipts (the node's on the
/// receipt, the agent's on the retrieval), as the tracker verifies them.
pub(crate) struct Signed {
    receipts: u64,
    items: Vec<(Vec<u8>, ucanto::principal::Signature, bool)>,
    node: Arc<dyn Verifier>,
    agent: Arc<dyn Verifier>,
}

impl Signed {
    pub(crate) fn new(p: &Principals, receipts: u64) -> Self {
        let mut items = Vec::new();
        for i in 0..receipts {
            let receipt = p.receipt(i);
            let invocation = receipt.ran().unwrap();
            items.push((
                receipt.data().signing_payload().unwrap(),
                receipt.data().signature.clone(),
                true,
            ));
            items.push((
                invocation.data().signing_payload().unwrap(),
                invocation.data().signature.clone(),
                false,
            ));
        }
        Signed {
            receipts,
            items,
            node: p.node.verifier(),
            agent: p.agent.verifier(),
        }
    }

    /// Receipts per second per core that ed25519-dalek's batch verification
    /// of their signatures allows on this machine, on every core: the
    /// floor the targets are set against.
    pub(crate) fn dalek_floor(&self) -> f64 {
        let key = |v: &Arc<dyn Verifier>| *v.ed25519().unwrap();
        let (node, agent) = (key(&self.node), key(&self.agent));
        self.per_core(|chunk| {
            let messages: Vec<&[u8]> = chunk.iter().map(|(m, _, _)| m.as_slice()).collect();
            let signatures: Vec<Signature> = chunk
                .iter()
                .map(|(_, s, _)| Signature::from_slice(&s.raw).unwrap())
                .collect();
            let keys: Vec<VerifyingKey> = chunk
                .iter()
                .map(|(_, _, by_node)| if *by_node { node } else { agent })
                .collect();
            ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
        })
    }

    /// The same with the tracker's own verifier (`verify_all`, which merges
    /// the terms of repeated keys): what the signatures cost the tracker.
    pub(crate) fn tracker_floor(&self) -> f64 {
        self.per_core(|chunk| {
            let items: Vec<(&dyn Verifier, &[u8], &ucanto::principal::Signature)> = chunk
                .iter()
                .map(|(m, s, by_node)| {
                    let v = if *by_node { &self.node } else { &self.agent };
                    (v.as_ref(), m.as_slice(), s)
                })
                .collect();
            ucanto::principal::verify_all(&items)
        })
    }

    /// Receipts per CPU-second when every core verifies its share, in calls
    /// of as many signatures as the tracker verifies per call: its chunk of
    /// archives split across the cores, two signatures each. Batch
    /// verification gets cheaper per signature as batches grow, and flattens
    /// out there: on the 2-core machine one core verified 30.6k signatures/s
    /// in batches of 64, 41.0k/s in batches of 512 and 42.4k/s in batches of
    /// 4096. A floor measured with small batches would flatter the ratio.
    fn per_core(
        &self,
        verify: impl Fn(&[(Vec<u8>, ucanto::principal::Signature, bool)]) -> bool + Sync,
    ) -> f64 {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let per_call = 2 * etracker_server::consolidator::CHECK_CHUNK.div_ceil(threads);
        let cpu_started = cpu_time();
        std::thread::scope(|scope| {
            for part in self.items.chunks(self.items.len().div_ceil(threads)) {
                let verify = &verify;
                scope.spawn(move || {
                    for chunk in part.chunks(per_call) {
                        assert!(verify(chunk), "valid signatures");
                    }
                });
            }
        });
        self.receipts as f64 / (cpu_time() - cpu_started)
    }
}

fn cpu_time() -> f64 {
    peers::cpu_seconds("self")
}
