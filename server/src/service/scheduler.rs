//! The scheduler: a run leases the due records and consolidates them, each
//! through its task invoked on the consolidator (with the tracker's lease
//! on it), one batch per node at a time; what fails is rescheduled with
//! backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use ucanto::principal::Did;
use ucanto::ucan::{now, Delegation};

use super::Tracker;
use crate::consolidator::{concluded, is_node_failure, is_retry, leased_task};
use crate::metrics::Metrics;
use crate::store::{EgressRecord, Lease, Retry};

/// What one consolidation run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Records leased.
    pub leased: usize,
    /// Records concluded.
    pub concluded: usize,
    /// Records postponed.
    pub retried: usize,
}

impl Tracker {
    /// Runs consolidation every interval, or when triggered, until the task is dropped.
    pub async fn run_scheduler(self: Arc<Self>) {
        // What this replica held when it stopped is due at once, not when
        // its leases would have run out; a first run at start then resumes
        // it, with whatever else a previous process left pending.
        let owner = self.settings.replica.clone();
        let lease_secs = self.settings.lease_secs;
        let now = ucanto::ucan::now();
        match self
            .ctx
            .store(move |s| s.release_leases(&owner, now, lease_secs))
            .await
        {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "took back this replica's leases"),
            Err(e) => tracing::warn!(error = %e, "cannot take back this replica's leases"),
        }
        loop {
            let summary = self.consolidate().await;
            tracing::info!(?summary, "consolidation run");
            tokio::select! {
                _ = tokio::time::sleep(self.settings.interval) => {}
                _ = self.trigger.notified() => {}
            }
        }
    }

    /// Asks the scheduler for a run now.
    pub fn trigger(&self) {
        self.trigger.notify_one();
    }

    /// Leases due records and consolidates them (one run at a time per process).
    pub async fn consolidate(&self) -> RunSummary {
        let _one_at_a_time = self.run_lock.lock().await;
        let started = Instant::now();
        let (owner, lease, limit) = (
            self.settings.replica.clone(),
            self.settings.lease_secs,
            self.settings.batch_limit,
        );
        // Records of counted retrievals no batch could count again go.
        match self.ctx.store(|s| s.drop_ended_claims(now())).await {
            Ok(0) => {}
            Ok(dropped) => tracing::info!(dropped, "dropped claims past their end"),
            Err(e) => tracing::warn!(error = %e, "cannot drop ended claims"),
        }
        let leased = match self
            .ctx
            .store(move |s| s.lease_pending(now(), &owner, lease, limit))
            .await
        {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(error = %e, "cannot lease records");
                return RunSummary::default();
            }
        };
        let mut summary = RunSummary {
            leased: leased.len(),
            ..Default::default()
        };
        // One slot per node: a node's batches take turns, oldest first, so
        // a node whose downloads are slow holds one slot at most while the
        // others serve other nodes' batches.
        let slots = self.settings.concurrency.max(1);
        let mut queue: std::collections::VecDeque<EgressRecord> = leased.into();
        let mut busy: std::collections::HashSet<Did> = Default::default();
        let mut running = futures_util::stream::FuturesUnordered::new();
        let mut outcomes = Vec::with_capacity(queue.len());
        loop {
            while running.len() < slots {
                let Some(next) = queue.iter().position(|r| !busy.contains(&r.node)) else {
                    break;
                };
                let Some(record) = queue.remove(next) else {
                    break;
                };
                busy.insert(record.node.clone());
                let node = record.node.clone();
                running.push(async move { (node, self.consolidate_one(record).await) });
            }
            let Some((node, done)) = running.next().await else {
                break;
            };
            busy.remove(&node);
            outcomes.push(done);
        }
        summary.concluded = outcomes.iter().filter(|done| **done).count();
        summary.retried = outcomes.len() - summary.concluded;
        Metrics::add(&self.ctx.metrics.consolidation_runs, 1);
        self.ctx
            .metrics
            .last_run_duration_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        summary
    }

    /// Invokes the record's consolidate task; true when the batch is concluded.
    async fn consolidate_one(&self, record: EgressRecord) -> bool {
        let batch = record.batch;
        // A batch that waited for its node's slot past our lease is due
        // again (and maybe another replica's now): the consolidator would
        // refuse its task as not leased, so it is left to the next run,
        // neither tried nor rescheduled.
        if record
            .lease
            .as_ref()
            .is_some_and(|lease| lease.until <= now())
        {
            tracing::info!(%batch, "lease ended before the node's slot was free");
            return false;
        }
        // Whether the node is to blame for a failure (only then does the
        // give-up age run); anything else failing is ours.
        let mut by_node = false;
        let outcome = async {
            let track =
                Delegation::extract(&record.track_invocation_bytes).map_err(|e| e.to_string())?;
            // The lease lets the consolidator run the task until ours ends,
            // and tells it when the batch was tracked.
            let ours = record.lease.clone().unwrap_or(Lease {
                owner: self.settings.replica.clone(),
                until: now(),
            });
            let (task, lease) = leased_task(
                self.ctx.signer.as_ref(),
                &track,
                self.ctx.consolidator.did(),
                &ours,
                record.received_at,
            )
            .map_err(|e| e.to_string())?;
            let (mut receipts, message) = self
                .consolidator
                .exchange(std::slice::from_ref(&task), vec![lease])
                .await
                .map_err(|e| e.to_string())?;
            let receipt = receipts.remove(0);
            if is_retry(&receipt) {
                by_node = is_node_failure(&receipt);
                return Err(
                    ucanto::dag_json::to_string(receipt.out().as_ref().unwrap_err())
                        .unwrap_or_default(),
                );
            }
            // How the conclusion went: the tracker's own signed answer,
            // reported by the consolidator with the task's receipt.
            let tracker = self.ctx.signer.verifier();
            match concluded(&message, &task.cid(), tracker.as_ref()) {
                Some(Ok(())) => Ok(()),
                Some(Err(refused)) => Err(refused.to_string()),
                None => Err("the consolidator concluded nothing".into()),
            }
        }
        .await;
        let Err(reason) = outcome else {
            return true;
        };
        let backoff = self
            .settings
            .retry_base_secs
            .saturating_mul(1u64 << record.attempts.min(20))
            .min(self.settings.retry_max_secs);
        let owner = self.settings.replica.clone();
        let current = now();
        // Stored with the record and shown on the dashboard: bounded,
        // whatever a node's endpoint or the consolidator said.
        let message = ucanto::bounded::message(reason.clone());
        if let Err(e) = self
            .ctx
            .store(move |s| {
                let retry = Retry {
                    next_attempt_at: current + backoff,
                    last_error: message,
                    by_node,
                };
                s.reschedule(&batch, &owner, current, &retry)
            })
            .await
        {
            tracing::warn!(%batch, error = %e, "cannot reschedule");
        }
        Metrics::add(&self.ctx.metrics.consolidation_retries, 1);
        tracing::info!(%batch, %reason, retry_in = backoff, "consolidation postponed");
        false
    }
}
