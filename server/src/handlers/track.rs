//! `space/egress/track`: a node asks the tracker to account for a batch.
//!
//! The record is persisted idempotently: the same batch tracked again by the
//! same node answers with the same consolidate task (so the node polls one
//! receipt), while a batch already claimed by another node is refused.

use std::sync::Arc;

use etracker_capabilities::track::TrackError;
use etracker_capabilities::{Invoked, Outcome, Track};
use ucanto::dag::{Ipld, IpldMap};
use ucanto::server::{HandlerError, Response};
use ucanto::ucan::{now, Delegation};

use super::{unexpected, Context};
use crate::consolidator::consolidate_task;
use crate::metrics::Metrics;
use crate::store::{NewRecord, PutOutcome, StoreError};

/// Handles one track invocation.
pub async fn handle(ctx: Arc<Context>, invoked: Invoked<Track>) -> Result<Response, HandlerError> {
    let nb = invoked.capability.nb;
    let track = invoked.request.invocation;
    let node = track.issuer().clone();
    let task = consolidate_task(ctx.signer.as_ref(), &track).map_err(HandlerError::new)?;
    let record = NewRecord {
        batch: nb.receipts,
        node: node.clone(),
        endpoint: nb.endpoint.clone(),
        track_invocation: track.cid(),
        track_invocation_bytes: track.archive().map_err(HandlerError::new)?,
        consolidate_invocation: task.cid(),
        received_at: now(),
    };
    let outcome = ctx.store(move |store| store.put(record)).await;
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
        Err(e) => return Err(unexpected(e)),
    };
    Ok(Response::ok(Ipld::Map(IpldMap::new())).fork(task))
}
