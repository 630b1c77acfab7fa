//! Batches of signed retrieve receipts, as a node would serve them, written
//! to a file so the bench process holds none of a 1 GiB batch in memory.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use cid::Cid;
use sha2::{Digest, Sha256};
use ucanto::car::CarWriter;
use ucanto::dag::{cid_of, cid_of_digest, Ipld, IpldMap, CAR};
use ucanto::principal::{fixtures, Ed25519Signer, Signer};
use ucanto::receipt::{Receipt, ReceiptParts};
use ucanto::ucan::{now, Capability, Delegation};

/// Bytes each retrieval counts for.
pub(crate) const RETRIEVAL_BYTES: u64 = 1 << 20;

/// Who signs what: the space delegates retrieval to an agent, the agent
/// invokes it on the node, the node signs the receipt; the tracker is the
/// service.
pub(crate) struct Principals {
    pub(crate) space: Ed25519Signer,
    pub(crate) agent: Ed25519Signer,
    pub(crate) service: Ed25519Signer,
    pub(crate) node: Ed25519Signer,
    pub(crate) proof: Delegation,
}

impl Principals {
    pub(crate) fn new() -> Self {
        let (space, agent, service, node) = (
            fixtures::alice(),
            fixtures::bob(),
            fixtures::service(),
            fixtures::node(),
        );
        let proof = Delegation::builder(&space, agent.did().clone())
            .capability(Capability::new(
                "space/content/retrieve",
                space.did().as_str(),
            ))
            .no_expiration()
            .build()
            .unwrap();
        Principals {
            space,
            agent,
            service,
            node,
            proof,
        }
    }

    /// Retrieval `i`, served by the node: its receipt archive.
    pub(crate) fn receipt(&self, i: u64) -> Receipt {
        let mut digest = vec![0x12, 0x20];
        digest.extend_from_slice(&Sha256::digest(i.to_le_bytes()));
        let nb = IpldMap::from([
            (
                "blob".to_string(),
                Ipld::Map(IpldMap::from([("digest".to_string(), Ipld::Bytes(digest))])),
            ),
            (
                "range".to_string(),
                Ipld::List(vec![
                    Ipld::Integer(0),
                    Ipld::Integer(i128::from(RETRIEVAL_BYTES - 1)),
                ]),
            ),
        ]);
        let invocation = Delegation::builder(&self.agent, self.node.did().clone())
            .capability(
                Capability::new("space/content/retrieve", self.space.did().as_str()).with_nb(nb),
            )
            .expiration(now() + 3600)
            .nonce(i.to_string())
            .proof(self.proof.clone())
            .build()
            .unwrap();
        Receipt::issue(
            &self.node,
            ReceiptParts::new(&invocation, Ok(Ipld::Map(IpldMap::new()))),
        )
        .unwrap()
    }
}

/// A batch file on disk.
#[derive(Clone)]
pub(crate) struct BatchFile {
    pub(crate) path: PathBuf,
    pub(crate) cid: Cid,
    pub(crate) bytes: u64,
    /// Sections in the file.
    pub(crate) receipts: u64,
    /// Distinct retrievals among them: what the tracker counts.
    pub(crate) distinct: u64,
}

/// Writes a batch of at least `target_bytes` to `dir`: every receipt a new
/// retrieval (`distinct`), or else one retrieval in every 100 sections and
/// repeats of the first otherwise. Receipts are signed on every core.
pub(crate) fn write(p: &Principals, dir: &Path, target_bytes: u64, distinct: bool) -> BatchFile {
    let sample = p.receipt(0).archive().unwrap();
    let per_receipt = sample.len() as u64 + 40;
    let receipts = target_bytes.div_ceil(per_receipt).max(1);
    let fresh = |i: u64| distinct || i.is_multiple_of(100);
    // Sign the fresh receipts in parallel, in order.
    let indices: Vec<u64> = (0..receipts).filter(|&i| fresh(i)).collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per_thread = indices.len().div_ceil(threads).max(1);
    let archives: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let handles: Vec<_> = indices
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&i| p.receipt(i).archive().unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let path = dir.join(format!(
        "batch-{}-{}.car",
        target_bytes,
        if distinct { "valid" } else { "dup" }
    ));
    let file = std::fs::File::create(&path).unwrap();
    let mut hashing = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    {
        let mut car = CarWriter::new(&mut hashing, &[]).unwrap();
        let mut next = archives.iter();
        let repeated = &archives[0];
        for i in 0..receipts {
            let archive = if fresh(i) {
                next.next().unwrap()
            } else {
                repeated
            };
            car.write_block(&cid_of(CAR, archive), archive).unwrap();
        }
        car.finish().unwrap();
    }
    hashing.inner.flush().unwrap();
    BatchFile {
        path,
        cid: cid_of_digest(CAR, hashing.hasher.finalize().into()),
        bytes: hashing.bytes,
        receipts,
        distinct: indices.len() as u64,
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
