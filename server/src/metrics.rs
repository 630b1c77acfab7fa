//! Prometheus metrics, rendered as text at `GET /metrics`.
//!
//! The first four names are the upstream Go etracker's, so existing
//! dashboards keep working.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters and gauges of one tracker process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Batches accepted by `space/egress/track` (first time only).
    pub tracked_batches: AtomicU64,
    /// Bytes committed by `space/egress/conclude`.
    pub consolidated_bytes: AtomicU64,
    /// Duration of the last consolidation run, in milliseconds.
    pub last_run_duration_ms: AtomicU64,
    /// Consolidation runs.
    pub consolidation_runs: AtomicU64,
    /// `space/egress/conclude` invocations that reached the handler.
    pub conclude_invocations: AtomicU64,
    /// Batches concluded (receipt stored, totals added).
    pub concluded_batches: AtomicU64,
    /// Consolidation attempts postponed by a transient failure.
    pub consolidation_retries: AtomicU64,
    /// Receipts reported in `errors[]` (not counted).
    pub rejected_receipts: AtomicU64,
    /// Bytes retrieved by non-billable actors, recorded apart.
    pub non_billable_bytes: AtomicU64,
}

impl Metrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text exposition; `pending` is the number of unprocessed
    /// batches, `retries` what the store counts of its own retries.
    pub fn render(&self, pending: u64, retries: &[crate::store::RetryCounter]) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "etracker_tracked_batches_total",
            "counter",
            "Batches tracked.",
            get(&self.tracked_batches),
        );
        metric(
            "etracker_consolidated_bytes_total",
            "counter",
            "Egress bytes consolidated.",
            get(&self.consolidated_bytes),
        );
        metric(
            "etracker_unprocessed_batches_total",
            "gauge",
            "Batches waiting for consolidation.",
            pending,
        );
        metric(
            "etracker_consolidation_run_duration_ms",
            "gauge",
            "Duration of the last consolidation run.",
            get(&self.last_run_duration_ms),
        );
        metric(
            "etracker_consolidation_runs_total",
            "counter",
            "Consolidation runs.",
            get(&self.consolidation_runs),
        );
        metric(
            "etracker_conclude_invocations_total",
            "counter",
            "space/egress/conclude invocations handled.",
            get(&self.conclude_invocations),
        );
        metric(
            "etracker_concluded_batches_total",
            "counter",
            "Batches concluded.",
            get(&self.concluded_batches),
        );
        metric(
            "etracker_consolidation_retries_total",
            "counter",
            "Consolidations postponed by a transient failure.",
            get(&self.consolidation_retries),
        );
        metric(
            "etracker_rejected_receipts_total",
            "counter",
            "Receipts reported in errors[].",
            get(&self.rejected_receipts),
        );
        metric(
            "etracker_non_billable_bytes_total",
            "counter",
            "Bytes retrieved by non-billable actors (replication, indexing), billed to no one.",
            get(&self.non_billable_bytes),
        );
        for counter in retries {
            metric(counter.name, "counter", counter.help, counter.value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RetryCounter;

    /// The store's own counters follow the tracker's, in Prometheus form.
    #[test]
    fn the_store_counters_are_rendered() {
        let text = Metrics::default().render(
            3,
            &[RetryCounter {
                name: "etracker_store_transactions_cancelled_total",
                help: "Cancelled.",
                value: 7,
            }],
        );
        assert!(text.contains("etracker_unprocessed_batches_total 3\n"));
        assert!(text.ends_with(
            "# HELP etracker_store_transactions_cancelled_total Cancelled.\n\
             # TYPE etracker_store_transactions_cancelled_total counter\n\
             etracker_store_transactions_cancelled_total 7\n"
        ));
    }
}
