//! `space/egress/track`: a node asks the tracker to account for a batch.
//!
//! The record is persisted idempotently: the same batch tracked again by the
//! same node answers with the same consolidate task (so the node polls one
//! receipt), while a batch already claimed by another node is refused.
//!
//! What is kept is bounded: the track invocation's own block, at most
//! [`MAX_TRACK_INVOCATION_BYTES`] (a bigger one is `TrackTooLarge`), not its
//! proofs, which the validator checked when the invocation arrived and which
//! nothing reads later (the consolidate task carries the track block alone).
//! A node has at most `max_pending_per_node` batches pending
//! (`TooManyPendingBatches` past it). Either refusal stores nothing.

use std::sync::Arc;

use etracker_capabilities::track::{
    TooManyPendingBatches, TrackError, TrackOk, TrackTooLarge, MAX_TRACK_INVOCATION_BYTES,
};
use etracker_capabilities::{Invoked, Outcome, Track};
use ucanto::server::{HandlerError, Response};
use ucanto::ucan::{now, Delegation, Invocation};

use super::{unexpected, Context};
use crate::consolidator::consolidate_task;
use crate::metrics::Metrics;
use crate::store::{NewRecord, PutOutcome, StoreError};

/// Handles one track invocation.
pub async fn handle(ctx: Arc<Context>, invoked: Invoked<Track>) -> Result<Response, HandlerError> {
    let nb = invoked.capability.nb;
    let track = invoked.request.invocation;
    let size = track.block().bytes.len();
    if size > MAX_TRACK_INVOCATION_BYTES {
        let message = format!(
            "the track invocation is {size} bytes, more than the {MAX_TRACK_INVOCATION_BYTES} kept"
        );
        return Ok(Response::error(TrackTooLarge::new(message).to_ipld()));
    }
    let node = track.issuer().clone();
    let task = consolidate_task(ctx.signer.as_ref(), &track).map_err(HandlerError::new)?;
    let record = NewRecord {
        batch: nb.receipts,
        node: node.clone(),
        endpoint: nb.endpoint.clone(),
        track_invocation: track.cid(),
        track_invocation_bytes: invocation_only(&track).map_err(HandlerError::new)?,
        consolidate_invocation: task.cid(),
        received_at: now(),
    };
    // 0: no cap.
    let cap = Some(ctx.max_pending_per_node)
        .filter(|cap| *cap > 0)
        .unwrap_or(u64::MAX);
    let outcome = ctx.store(move |store| store.put_within(record, cap)).await;
    let task = match outcome {
        Ok(PutOutcome::Inserted(_)) => {
            Metrics::add(&ctx.metrics.tracked_batches, 1);
            tracing::info!(batch = %nb.receipts, %node, task = %task.cid(), "batch tracked");
            task
        }
        // Tracked before: answer with the task created then.
        Ok(PutOutcome::Existing(existing)) => {
            let first =
                Delegation::extract(&existing.track_invocation_bytes).map_err(HandlerError::new)?;
            consolidate_task(ctx.signer.as_ref(), &first).map_err(HandlerError::new)?
        }
        Err(StoreError::NodeConflict { node: owner }) => {
            let message = format!("batch {} is already tracked by {owner}", nb.receipts);
            return Ok(Response::error(TrackError::new(message).to_ipld()));
        }
        Err(StoreError::TooManyPending { pending }) => {
            let message = format!(
                "{node} has {pending} batches waiting for consolidation, the most allowed \
                 ({cap}); track {} again once some are concluded",
                nb.receipts
            );
            return Ok(Response::error(
                TooManyPendingBatches::new(message).to_ipld(),
            ));
        }
        Err(e) => return Err(unexpected(e)),
    };
    Ok(Response::ok(TrackOk::default().to_ipld()).fork(task))
}

/// The track invocation as an archive of its own block: what
/// [`Delegation::extract`] reads back, without the proofs.
fn invocation_only(track: &Invocation) -> Result<Vec<u8>, ucanto::dag::CodecError> {
    ucanto::dag::write_archive(
        &format!("ucan@{}", track.data().version),
        track.cid(),
        vec![track.block().clone()],
    )
}
