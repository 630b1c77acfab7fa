//! The `.json` metadata of a closed batch (see the format in the
//! [module docs](super)): its encoding, and its atomic write next to the batch.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::files::{meta_file, write_atomic};
use super::{BatchRecord, BatchState, JournalError, ReceiptRecord};

#[derive(Serialize, Deserialize)]
struct Meta {
    version: u32,
    cid: String,
    size: u64,
    created_at: u64,
    closed_at: u64,
    total_egress: u64,
    state: State,
    receipts: Vec<Receipt>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum State {
    Closed,
    Tracked {
        track: String,
        consolidate: String,
        at: u64,
    },
    Disputed {
        track: String,
        consolidate: String,
        receipt: String,
        reason: String,
        at: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct Receipt {
    receipt: String,
    archive: String,
    space: String,
    bytes: u64,
    ok: bool,
}

pub(super) fn encode(record: &BatchRecord) -> Vec<u8> {
    let state = match &record.state {
        BatchState::Closed => State::Closed,
        BatchState::Tracked {
            track,
            consolidate,
            at,
        } => State::Tracked {
            track: track.to_string(),
            consolidate: consolidate.to_string(),
            at: *at,
        },
        BatchState::Disputed {
            track,
            consolidate,
            receipt,
            reason,
            at,
        } => State::Disputed {
            track: track.to_string(),
            consolidate: consolidate.to_string(),
            receipt: receipt.to_string(),
            reason: reason.clone(),
            at: *at,
        },
    };
    let meta = Meta {
        version: 1,
        cid: record.cid.to_string(),
        size: record.size,
        created_at: record.created_at,
        closed_at: record.closed_at,
        total_egress: record.expected_egress(),
        state,
        receipts: record
            .receipts
            .iter()
            .map(|r| Receipt {
                receipt: r.receipt.to_string(),
                archive: r.archive.to_string(),
                space: r.space.to_string(),
                bytes: r.bytes,
                ok: r.ok,
            })
            .collect(),
    };
    serde_json::to_vec_pretty(&meta).expect("metadata serializes")
}

pub(super) fn decode(bytes: &[u8]) -> Result<BatchRecord, String> {
    let meta: Meta = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if meta.version != 1 {
        return Err(format!("unknown metadata version {}", meta.version));
    }
    let cid = |s: &str| s.parse().map_err(|e| format!("{s}: {e}"));
    let state = match meta.state {
        State::Closed => BatchState::Closed,
        State::Tracked {
            track,
            consolidate,
            at,
        } => BatchState::Tracked {
            track: cid(&track)?,
            consolidate: cid(&consolidate)?,
            at,
        },
        State::Disputed {
            track,
            consolidate,
            receipt,
            reason,
            at,
        } => BatchState::Disputed {
            track: cid(&track)?,
            consolidate: cid(&consolidate)?,
            receipt: cid(&receipt)?,
            reason,
            at,
        },
    };
    let receipts = meta
        .receipts
        .iter()
        .map(|r| {
            Ok(ReceiptRecord {
                receipt: cid(&r.receipt)?,
                archive: cid(&r.archive)?,
                space: r.space.parse().map_err(|e| format!("{}: {e}", r.space))?,
                bytes: r.bytes,
                ok: r.ok,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(BatchRecord {
        cid: cid(&meta.cid)?,
        size: meta.size,
        created_at: meta.created_at,
        closed_at: meta.closed_at,
        receipts,
        state,
    })
}

/// Writes the metadata of `record` into `dir/batches/`.
pub(super) fn write(dir: &Path, record: &BatchRecord) -> Result<(), JournalError> {
    write_atomic(&meta_file(dir, &record.cid), &encode(record))
}
