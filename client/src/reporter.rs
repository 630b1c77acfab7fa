//! The background loop that carries batches through their life:
//! closed → tracked → settled (deleted) or disputed (kept).
//!
//! Each [`Reporter::tick`]:
//! 1. closes the current batch if it is due by age ([`BatchJournal::rotate_if_due`]);
//! 2. tracks every closed, untracked batch and records the consolidate task;
//! 3. polls the consolidate receipt of every tracked batch; once there,
//!    verified, it [`reconcile`]s and [`BatchJournal::settle`]s: a match deletes
//!    the batch, anything else marks it disputed and keeps it.
//!
//! Failures are retried on the next tick: a transport error, a refused track
//! or a receipt that fails verification never deletes anything. Disputed
//! batches are left for an operator ([`BatchJournal::remove`]).

use std::time::Duration;

use cid::Cid;

use crate::client::{ConsolidationError, EgressClient, TrackError};
use crate::journal::{BatchJournal, BatchState, JournalError, Settlement};
use crate::reconcile::{reconcile, Reconciliation};

/// Default time between two ticks.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// Something a tick did or failed to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A batch was closed by age.
    Rotated(Cid),
    /// A batch was tracked.
    Tracked {
        /// The batch.
        batch: Cid,
        /// Its consolidate task.
        consolidate: Cid,
    },
    /// Tracking a batch failed; retried next tick.
    TrackFailed {
        /// The batch.
        batch: Cid,
        /// Why.
        error: TrackError,
    },
    /// The consolidate receipt is not there yet.
    Pending(Cid),
    /// Fetching or verifying the consolidate receipt failed; retried next tick.
    PollFailed {
        /// The batch.
        batch: Cid,
        /// Why.
        error: ConsolidationError,
    },
    /// The consolidation matched; the batch was deleted.
    Settled(Reconciliation),
    /// The consolidation did not match; the batch is kept, disputed.
    Disputed(Reconciliation),
    /// The journal failed.
    Journal(JournalError),
}

/// Drives a journal's batches through an [`EgressClient`].
#[derive(Clone, Debug)]
pub struct Reporter {
    journal: BatchJournal,
    client: EgressClient,
    interval: Duration,
}

impl Reporter {
    /// A reporter for `journal`'s batches, tracked through `client`.
    pub fn new(journal: BatchJournal, client: EgressClient) -> Self {
        Reporter {
            journal,
            client,
            interval: DEFAULT_INTERVAL,
        }
    }

    /// Time between ticks (default [`DEFAULT_INTERVAL`]).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Runs one round (see the [module docs](self)) and says what happened.
    pub async fn tick(&self) -> Vec<Event> {
        let mut events = Vec::new();
        match self.journal.rotate_if_due() {
            Ok(Some(batch)) => events.push(Event::Rotated(batch.cid)),
            Ok(None) => {}
            Err(e) => events.push(Event::Journal(e)),
        }
        for batch in self.journal.batches() {
            match batch.state {
                BatchState::Closed => match self.client.track(batch.cid).await {
                    Ok(tracked) => match self.journal.mark_tracked(&batch.cid, &tracked) {
                        Ok(_) => events.push(Event::Tracked {
                            batch: batch.cid,
                            consolidate: tracked.consolidate,
                        }),
                        Err(e) => events.push(Event::Journal(e)),
                    },
                    Err(error) => events.push(Event::TrackFailed {
                        batch: batch.cid,
                        error,
                    }),
                },
                BatchState::Tracked { consolidate, .. } => {
                    match self.client.consolidation(consolidate).await {
                        Ok(None) => events.push(Event::Pending(batch.cid)),
                        Ok(Some(consolidation)) => {
                            let reconciliation = reconcile(&batch, &consolidation);
                            match self.journal.settle(&reconciliation) {
                                Ok(Settlement::Removed) => {
                                    events.push(Event::Settled(reconciliation))
                                }
                                Ok(_) => events.push(Event::Disputed(reconciliation)),
                                Err(e) => events.push(Event::Journal(e)),
                            }
                        }
                        Err(error) => events.push(Event::PollFailed {
                            batch: batch.cid,
                            error,
                        }),
                    }
                }
                _ => {}
            }
        }
        events
    }

    /// Ticks forever, logging every event with `tracing`.
    pub async fn run(self) {
        let mut timer = tokio::time::interval(self.interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            timer.tick().await;
            for event in self.tick().await {
                log(&event);
            }
        }
    }

    /// Spawns [`run`](Self::run) on the current Tokio runtime.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }
}

fn log(event: &Event) {
    match event {
        Event::Rotated(batch) => tracing::info!(%batch, "batch closed by age"),
        Event::Tracked { batch, consolidate } => {
            tracing::info!(%batch, %consolidate, "batch tracked")
        }
        Event::TrackFailed { batch, error } => {
            tracing::warn!(%batch, %error, transient = error.is_transient(), "track failed")
        }
        Event::Pending(batch) => tracing::debug!(%batch, "consolidation pending"),
        Event::PollFailed { batch, error } => {
            tracing::warn!(%batch, %error, transient = error.is_transient(), "consolidation poll failed")
        }
        Event::Settled(r) => {
            tracing::info!(batch = %r.batch, total = r.expected_total, "batch reconciled")
        }
        Event::Disputed(r) => tracing::warn!(
            batch = %r.batch,
            expected = r.expected_total,
            reported = ?r.reported_total,
            verdict = %r.verdict,
            "batch disputed"
        ),
        Event::Journal(error) => tracing::error!(%error, "journal failure"),
    }
}
