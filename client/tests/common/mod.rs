//! Shared test helpers: fixed principals, retrieve receipts, temporary
//! journal directories and the JS fixtures.
//!
//! Principals (seeds of 32 equal bytes, as in `fixtures/README.md`):
//! alice (1) `did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX` — the space and client;
//! mallory (3) `did:key:z6MkvRXNYcE7MMduynWTgeKbDaT1iijDSC8pZqXZc8rHPrf2`;
//! service (4) `did:key:z6Mkt6316e2PN3mZdB6N9CrzomJYUd1s5yBZi1XYHmwT9TUP` — the tracker;
//! node (5) `did:key:z6MkmtWtY63GQVBrpMyRJWEzsnxfsGkemu6CtMDwGTv4RYj2` — the storage node.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use etracker_capabilities::retrieve::{Blob, ByteRange, Retrieve, RetrieveNb};
use etracker_capabilities::Ability;
use etracker_client::JournalConfig;
use ucanto::dag::{Block, BlockStore, Ipld, IpldMap};
use ucanto::principal::Signer;
use ucanto::receipt::{Receipt, ReceiptParts};
use ucanto::ucan::{Delegation, Invocation};

// Each test binary uses some of them.
#[allow(unused_imports)]
pub use ucanto::principal::fixtures::{alice, mallory, node, service as tracker};

/// A sha2-256 multihash of a fake blob.
pub fn digest(seed: u8) -> Vec<u8> {
    let mut d = vec![0x12, 0x20];
    d.extend([seed; 32]);
    d
}

/// alice's `space/content/retrieve` of bytes `[start, end]` on the node.
pub fn retrieve(start: u64, end: u64) -> Invocation {
    let nb = RetrieveNb {
        blob: Blob { digest: digest(7) },
        range: ByteRange::new(start, end).unwrap(),
    };
    Delegation::builder(&alice(), node().did().clone())
        .capability(Retrieve::capability(alice().did(), &nb))
        .expiration(4102444800)
        .build()
        .unwrap()
}

/// The node's ok receipt for a retrieve of `[start, end]` (`end − start + 1` bytes).
pub fn ok_receipt(start: u64, end: u64) -> Receipt {
    Receipt::issue(
        &node(),
        ReceiptParts::new(retrieve(start, end), Ok(Ipld::Map(IpldMap::new()))),
    )
    .unwrap()
}

/// The node's error receipt (NotFound) for a retrieve of `[start, end]`: 0 bytes.
pub fn error_receipt(start: u64, end: u64) -> Receipt {
    let error = IpldMap::from([
        ("name".to_string(), Ipld::String("NotFound".into())),
        ("message".to_string(), Ipld::String("no such blob".into())),
    ]);
    Receipt::issue(
        &node(),
        ReceiptParts::new(retrieve(start, end), Err(Ipld::Map(error))),
    )
    .unwrap()
}

/// Journal settings for tests: tiny batches, explicitly allowed.
pub fn tiny(max_batch_bytes: u64) -> JournalConfig {
    JournalConfig::default()
        .allow_small_batches(true)
        .min_batch_bytes(0)
        .max_batch_bytes(max_batch_bytes)
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "etracker-client-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `fixtures/capabilities/<name>`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/capabilities")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A receipt fixture: a CAR whose root is the receipt block (`CAR.encode` in JS).
pub fn fixture_receipt(name: &str) -> Receipt {
    let (header, blocks) = ucanto::car::decode(&fixture(&format!("{name}.car"))).unwrap();
    let store: BlockStore = blocks
        .into_iter()
        .map(|(cid, bytes)| Block { cid, bytes })
        .collect();
    Receipt::from_blocks(&header.roots[0], Arc::new(store)).unwrap()
}

/// The open batch file of a journal directory.
pub fn open_file(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("open"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.remove(0)
}
