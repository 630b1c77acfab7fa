//! What DynamoDB costs per counted receipt, measured: the `etracker` binary
//! on a DynamoDB endpoint (`BENCH_DYNAMODB=<url>`, moto as `scripts/bench`
//! starts it) tracks and consolidates a batch of valid receipts; its wire
//! layer counts every request's capacity units by DynamoDB's published
//! rules (`etracker_dynamodb_{write,read}_units_total` on `/metrics`), and
//! a scan of the table afterwards gives the bytes stored. Everything the
//! batch cost is in the figures: track, lease, consolidation, conclusion.

use std::path::Path;

use etracker_server::store::dynamodb::DynamoStore;
use serde_json::json;

use crate::batch::Principals;
use crate::consolidate::Prepared;
use crate::peers;
use crate::track::round;

/// Tracks and consolidates `prepared` on a fresh table at `endpoint`.
pub(crate) async fn run(
    p: &Principals,
    work: &Path,
    endpoint: &str,
    prepared: &Prepared,
) -> serde_json::Value {
    let batch = prepared.batch.clone();
    let prefix = format!("bench{}-", std::process::id());
    let node_endpoint = peers::node_server(prepared.dir.clone()).await;
    let data = work.join("dynamodb-tracker");
    let _ = std::fs::remove_dir_all(&data);
    let tracker = peers::etracker_on(
        p,
        &data,
        &[
            ("ETRACKER_STORE", "dynamodb"),
            ("ETRACKER_DYNAMODB_ENDPOINT", endpoint),
            ("ETRACKER_DYNAMODB_TABLE_PREFIX", &prefix),
        ],
    )
    .await;
    peers::ready(&tracker.url).await;
    peers::track(p, &tracker.url, batch.cid, node_endpoint).await;
    let summary = peers::consolidate_now(&tracker.url).await;
    assert_eq!(summary["concluded"], 1, "{summary}");
    let metric = |name: &'static str| peers::metric(&tracker.url, name);
    assert_eq!(
        metric("etracker_consolidated_bytes_total").await as u64,
        batch.distinct * crate::batch::RETRIEVAL_BYTES,
        "every retrieval counted once"
    );
    let counted = batch.distinct as f64;
    let write = metric("etracker_dynamodb_write_units_total").await;
    let read = metric("etracker_dynamodb_read_units_total").await;
    tracker.stop().await;
    let endpoint = endpoint.to_string();
    let (stored, items) = tokio::task::spawn_blocking(move || {
        DynamoStore::connect(&endpoint, &prefix)
            .unwrap()
            .stored_bytes()
            .unwrap()
    })
    .await
    .unwrap();
    json!({
        "batch_mib": round(batch.bytes as f64 / (1 << 20) as f64),
        "counted_receipts": counted,
        "write_units": write,
        "read_units": read,
        "stored_bytes": stored,
        "stored_items": items,
        "write_units_per_counted_receipt": round4(write / counted),
        "read_units_per_counted_receipt": round4(read / counted),
        "stored_bytes_per_counted_receipt": round4(stored as f64 / counted),
    })
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}
