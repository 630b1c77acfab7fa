//! Comparing a consolidate receipt with the journal's own record of a batch.
//!
//! The journal knows, per receipt, the bytes it should count for (see
//! [`ReceiptRecord`](crate::ReceiptRecord)); the tracker reports
//! `totalEgress` and the receipts it did not count (`errors`). The verdict,
//! in order of precedence:
//!
//! | verdict | when |
//! |---|---|
//! | [`Verdict::WrongTask`] | the receipt is for another task than the one tracked for the batch |
//! | [`Verdict::Failed`] | the tracker could not process the batch (`out.error`) |
//! | [`Verdict::UnknownReceipts`] | `errors` names receipts that are not in the batch |
//! | [`Verdict::Mismatch`] | `totalEgress` ≠ expected − bytes of the rejected receipts |
//! | [`Verdict::Rejected`] | the totals agree, but only because counted receipts were rejected |
//! | [`Verdict::Match`] | `totalEgress` = expected (rejections of 0-byte error receipts, and `NonBillable` retrievals, are expected) |
//!
//! Only [`Verdict::Match`] lets [`BatchJournal::settle`](crate::BatchJournal::settle)
//! delete the batch; every other verdict keeps it as evidence.

use std::collections::BTreeSet;
use std::fmt;

use cid::Cid;
use etracker_capabilities::consolidate::NON_BILLABLE;

use crate::client::{Consolidation, Failure};
use crate::record::BatchRecord;

/// A receipt the tracker did not count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The receipt.
    pub receipt: Cid,
    /// The tracker's error name.
    pub name: String,
    /// The tracker's message.
    pub message: String,
    /// The bytes the journal counted for it (`None`: not in the batch).
    pub bytes: Option<u64>,
}

/// The outcome of comparing a consolidation with the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The tracker counted exactly what the journal expects.
    Match,
    /// The tracker's total is the journal's minus the receipts it rejected.
    Rejected {
        /// Counted receipts it rejected.
        receipts: usize,
        /// Their bytes.
        bytes: u64,
    },
    /// The totals disagree (after subtracting rejected receipts).
    Mismatch {
        /// What the journal expects, less the rejected receipts' bytes.
        expected: u64,
        /// What the tracker reported.
        reported: u64,
    },
    /// The tracker rejected receipts the batch does not contain.
    UnknownReceipts(Vec<Cid>),
    /// The tracker could not process the batch at all.
    Failed(Failure),
    /// The receipt is for another consolidate task than the batch's.
    WrongTask {
        /// The task recorded for the batch (none if never tracked).
        expected: Option<Cid>,
        /// The task the receipt ran.
        got: Cid,
    },
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Match => write!(f, "match"),
            Verdict::Rejected { receipts, bytes } => write!(
                f,
                "the tracker rejected {receipts} counted receipt(s) ({bytes} bytes)"
            ),
            Verdict::Mismatch { expected, reported } => write!(
                f,
                "total mismatch: expected {expected} bytes, the tracker reported {reported}"
            ),
            Verdict::UnknownReceipts(cids) => write!(
                f,
                "the tracker rejected {} receipt(s) that are not in the batch",
                cids.len()
            ),
            Verdict::Failed(failure) => write!(f, "consolidation failed: {failure}"),
            Verdict::WrongTask { expected, got } => match expected {
                Some(expected) => write!(f, "receipt ran {got}, the batch's task is {expected}"),
                None => write!(f, "receipt ran {got}, the batch was never tracked"),
            },
        }
    }
}

/// A consolidate receipt compared with the journal's record of its batch.
/// Made only by [`reconcile`], from a verified [`Consolidation`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reconciliation {
    /// The batch.
    pub batch: Cid,
    /// The consolidate task the receipt ran.
    pub consolidate: Cid,
    /// The consolidate receipt.
    pub receipt: Cid,
    /// Egress the journal expects: the sum of its receipts' bytes.
    pub expected_total: u64,
    /// `totalEgress` reported (none for an error receipt).
    pub reported_total: Option<u64>,
    /// The receipts the tracker did not count (`errors`), with the journal's bytes for each.
    pub rejected: Vec<Rejection>,
    /// The verdict.
    pub verdict: Verdict,
}

impl Reconciliation {
    /// Whether the tracker counted exactly what the journal expects.
    pub fn is_match(&self) -> bool {
        self.verdict == Verdict::Match
    }
}

/// Compares `consolidation` with `record`, the journal's record of the batch.
pub fn reconcile(record: &BatchRecord, consolidation: &Consolidation) -> Reconciliation {
    let expected_total = record.expected_egress();
    let mut out = Reconciliation {
        batch: record.cid,
        consolidate: consolidation.consolidate(),
        receipt: consolidation.receipt().cid(),
        expected_total,
        reported_total: None,
        rejected: Vec::new(),
        verdict: Verdict::Match,
    };
    if record.consolidate() != Some(consolidation.consolidate()) {
        out.verdict = Verdict::WrongTask {
            expected: record.consolidate(),
            got: consolidation.consolidate(),
        };
        return out;
    }
    let ok = match consolidation.outcome() {
        Ok(ok) => ok,
        Err(failure) => {
            out.verdict = Verdict::Failed(failure.clone());
            return out;
        }
    };
    out.reported_total = Some(ok.total_egress);

    let mut seen = BTreeSet::new();
    let (mut rejected_receipts, mut rejected_bytes) = (0usize, 0u64);
    let mut non_billable_bytes = 0u64;
    let mut unknown = Vec::new();
    for error in &ok.errors {
        let bytes = record.receipt(&error.receipt).map(|r| r.bytes);
        out.rejected.push(Rejection {
            receipt: error.receipt,
            name: error.name.clone(),
            message: error.message.clone(),
            bytes,
        });
        if !seen.insert(error.receipt) {
            continue;
        }
        match bytes {
            None => unknown.push(error.receipt),
            Some(0) => {}
            // Served to a non-billable actor (replication, indexing): not
            // paid, as expected; the total just leaves it out.
            Some(bytes) if error.name == NON_BILLABLE => {
                non_billable_bytes = non_billable_bytes.saturating_add(bytes);
            }
            Some(bytes) => {
                rejected_receipts += 1;
                rejected_bytes = rejected_bytes.saturating_add(bytes);
            }
        }
    }
    let expected = expected_total
        .saturating_sub(rejected_bytes)
        .saturating_sub(non_billable_bytes);
    out.verdict = if !unknown.is_empty() {
        Verdict::UnknownReceipts(unknown)
    } else if ok.total_egress != expected {
        Verdict::Mismatch {
            expected,
            reported: ok.total_egress,
        }
    } else if rejected_receipts > 0 {
        Verdict::Rejected {
            receipts: rejected_receipts,
            bytes: rejected_bytes,
        }
    } else {
        Verdict::Match
    };
    out
}
