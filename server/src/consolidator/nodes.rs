//! Which principals the tracker knows as storage nodes: those that have
//! tracked a batch with it. A retrieval whose authorization passes through
//! one is replication between nodes, which nobody is billed for and no node
//! is paid for (`NonBillable`).
//!
//! Read from the store (a node's list of batches), remembered per process:
//! a node stays a node, so a yes is kept (up to a bound); a no is asked
//! again after an hour (every distinct client of a batch is a principal of
//! some chain: asking the store about each on every batch would cost a
//! read per client), so a principal that starts tracking is known within
//! the hour. A node that holds a track delegation but has never tracked is
//! not known until it tracks.
//! A consolidator deployed apart has no store: it knows only the serving
//! node and the configured non-billable actors (README, *Security*).

use std::sync::{Arc, Mutex};

use ucanto::memo::FastMap;
use ucanto::principal::Did;
use ucanto::ucan::now;

use crate::store::{Store, StoreError};

/// Principals remembered; past it the memo starts over.
const REMEMBERED: usize = 100_000;
/// Seconds a "not a node" is trusted.
const NOT_A_NODE_FOR: u64 = 3600;

/// The tracker's nodes, as far as its store knows.
pub(super) struct KnownNodes {
    store: Option<Arc<dyn Store>>,
    /// Principal → (is a node, when learned).
    memo: Mutex<FastMap<Did, (bool, u64)>>,
}

impl KnownNodes {
    pub(super) fn new(store: Option<Arc<dyn Store>>) -> Self {
        KnownNodes {
            store,
            memo: Mutex::new(FastMap::default()),
        }
    }

    /// Whether `did` has tracked a batch here.
    pub(super) fn is_node(&self, did: &Did) -> Result<bool, StoreError> {
        let Some(store) = &self.store else {
            return Ok(false);
        };
        let current = now();
        if let Some((known, at)) = self.memo.lock().ok().and_then(|m| m.get(did).copied()) {
            if known || current.saturating_sub(at) < NOT_A_NODE_FOR {
                return Ok(known);
            }
        }
        let known = !store.node_batches(did, None, 1)?.is_empty();
        if let Ok(mut memo) = self.memo.lock() {
            if memo.len() >= REMEMBERED {
                memo.clear();
            }
            memo.insert(did.clone(), (known, current));
        }
        Ok(known)
    }
}
