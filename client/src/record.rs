//! What the journal records of a closed batch and of each of its receipts.
//!
//! A leaf module, so that the modules using these types need not import
//! each other: [`batch`](crate::batch) reads receipts into
//! [`ReceiptRecord`]s, [`journal`](crate::journal) keeps [`BatchRecord`]s,
//! and [`reconcile`](mod@crate::reconcile) compares a consolidation with one.
//! Re-exported by `journal` and at the crate root.

use std::collections::BTreeMap;

use cid::Cid;
use etracker_capabilities::retrieve::{egress_bytes, retrieve_capability, EgressError, Retrieve};
use etracker_capabilities::Ability;
use ucanto::principal::Did;
use ucanto::receipt::Receipt;

/// One receipt of a batch, as the journal counted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptRecord {
    /// The receipt's CID.
    pub receipt: Cid,
    /// The CID its archive is stored under in the batch (codec car).
    pub archive: Cid,
    /// The space retrieved from (`with` of the retrieve invocation).
    pub space: Did,
    /// Egress bytes: `end − start + 1` for an ok receipt, 0 for an error receipt.
    pub bytes: u64,
    /// Whether the retrieval succeeded (`out.ok`).
    pub ok: bool,
}

impl ReceiptRecord {
    /// Reads what `receipt` (stored under `archive`) counts for. Ok and error
    /// receipts of a single `space/content/retrieve` invocation, carried
    /// among the receipt's blocks, are accepted.
    pub fn of(receipt: &Receipt, archive: Cid) -> Result<Self, EgressError> {
        let capability = retrieve_capability(receipt)?;
        let space = Retrieve::parse_with(&capability.with).map_err(EgressError::Malformed)?;
        let (bytes, ok) = match egress_bytes(receipt) {
            Ok(bytes) => (bytes, true),
            Err(EgressError::Failed { .. }) => (0, false),
            Err(e) => return Err(e),
        };
        Ok(ReceiptRecord {
            receipt: receipt.cid(),
            archive,
            space,
            bytes,
            ok,
        })
    }
}

/// Where a closed batch is in its life with the tracker.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchState {
    /// Closed, not yet tracked.
    Closed,
    /// `space/egress/track` accepted; waiting for the consolidate receipt.
    Tracked {
        /// The track invocation.
        track: Cid,
        /// The consolidate invocation the tracker forked.
        consolidate: Cid,
        /// When (Unix seconds).
        at: u64,
    },
    /// The consolidate receipt did not match the journal; the batch is kept
    /// (and still served) until an operator removes it.
    Disputed {
        /// The track invocation.
        track: Cid,
        /// The consolidate invocation.
        consolidate: Cid,
        /// The consolidate receipt.
        receipt: Cid,
        /// What did not match.
        reason: String,
        /// When (Unix seconds).
        at: u64,
    },
}

/// What the journal knows of a closed batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRecord {
    /// The batch CID (codec car, sha2-256 of the file).
    pub cid: Cid,
    /// File size in bytes.
    pub size: u64,
    /// When the batch was opened (Unix seconds).
    pub created_at: u64,
    /// When it was closed (Unix seconds).
    pub closed_at: u64,
    /// Its receipts, in file order.
    pub receipts: Vec<ReceiptRecord>,
    /// Tracking state.
    pub state: BatchState,
}

impl BatchRecord {
    /// Egress the batch should be credited with: the sum of its receipts' bytes.
    pub fn expected_egress(&self) -> u64 {
        self.receipts
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.bytes))
    }

    /// Expected egress per space.
    pub fn egress_by_space(&self) -> BTreeMap<Did, u64> {
        let mut out = BTreeMap::new();
        for r in &self.receipts {
            let sum: &mut u64 = out.entry(r.space.clone()).or_default();
            *sum = sum.saturating_add(r.bytes);
        }
        out
    }

    /// The record of receipt `cid`, if it is in this batch.
    pub fn receipt(&self, cid: &Cid) -> Option<&ReceiptRecord> {
        self.receipts.iter().find(|r| r.receipt == *cid)
    }

    /// The consolidate invocation the tracker forked for this batch, once tracked.
    pub fn consolidate(&self) -> Option<Cid> {
        match &self.state {
            BatchState::Closed => None,
            BatchState::Tracked { consolidate, .. } | BatchState::Disputed { consolidate, .. } => {
                Some(*consolidate)
            }
        }
    }
}
