//! Every benchmark of the tracker in one run, side by side: what
//! `scripts/bench` runs. Writes `target/bench/report.json` and prints a table.
//!
//! - **track**: a load generator (pre-signed invocations, keep-alive, 64 in
//!   flight) against the `etracker` binary and against a JS @ucanto/server
//!   peer doing the same work (`fixtures/js/track-peer.js`);
//! - **consolidate**: receipts per second and per core for 10 MiB and
//!   100 MiB batches through the real path, against the signature-only floor
//!   (ed25519-dalek batch verification of the same receipts), and against
//!   the same receipts' signatures through the tracker's own verifier;
//! - **memory**: the tracker's peak RSS consolidating 10 MiB, 100 MiB and
//!   1 GiB batches, all valid and mostly duplicates;
//! - **interop**: the ratios `cargo bench --bench interop` wrote, if any.
//!
//! `BENCH_MAX_MIB` caps the batch sizes (default 1024); `BENCH_TRACKS` sets
//! the number of track invocations per peer (default 5000); `BENCH_ONE_MIB`
//! runs one consolidation of that size and nothing else (all valid, or
//! mostly duplicates with `BENCH_ONE_DUPLICATES` set); `BENCH_FLOORS` measures
//! the two signature floors and nothing else; `BENCH_HEAPTRACK=<file>`
//! records the tracker's heap there with Debian's heaptrack (raw data, for
//! `heaptrack_interpret` and `heaptrack_print`).

mod batch;
mod consolidate;
mod peers;
mod track;

use std::sync::Arc;

use serde_json::json;

use crate::track::round;

/// Receipts whose signatures the floors verify: enough CPU time (about a
/// second) that the clock's 10 ms ticks do not show.
const FLOOR_RECEIPTS: u64 = 25_000;

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run() {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let work = out.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let p = batch::Principals::new();
    let max_mib = env_u64("BENCH_MAX_MIB", 1024);
    // One consolidation of one batch, for profiling.
    if let Some(mib) = std::env::var("BENCH_ONE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let distinct = std::env::var_os("BENCH_ONE_DUPLICATES").is_none();
        let run = consolidate::run(&p, &work, mib, distinct).await;
        println!("{}", run.json());
        return;
    }
    // The two signature floors alone.
    if std::env::var_os("BENCH_FLOORS").is_some() {
        let signed = consolidate::Signed::new(&p, FLOOR_RECEIPTS);
        let (dalek, tracker) = (signed.dalek_floor(), signed.tracker_floor());
        println!(
            "{}",
            json!({"dalek_per_core_s": round(dalek), "tracker_per_core_s": round(tracker)})
        );
        return;
    }
    let tracks = env_u64("BENCH_TRACKS", 5_000) as usize;

    // Track: the same number of distinct invocations against each peer.
    eprintln!("track: signing {tracks} invocations…");
    let warmup = Arc::new(track::bodies(&p, 500, "warmup"));
    let bodies = Arc::new(track::bodies(&p, tracks, "load"));
    let tracker = peers::etracker(&p, &work.join("track-etracker")).await;
    peers::ready(&tracker.url).await;
    track::run(&tracker.url, warmup.clone()).await;
    let rust = track::run(&tracker.url, bodies.clone()).await;
    tracker.stop().await;
    let js_peer = peers::js_track_peer(&p, &work.join("track-js.log")).await;
    track::run(&js_peer.url, warmup).await;
    let js = track::run(&js_peer.url, bodies).await;
    js_peer.stop().await;
    eprintln!(
        "track: etracker {:.0}/s, JS {:.0}/s",
        rust.per_second, js.per_second
    );

    // Consolidation and memory: one fresh tracker per batch.
    let mut runs = Vec::new();
    for distinct in [true, false] {
        for mib in [10, 100, 1024].into_iter().filter(|&m| m <= max_mib) {
            eprintln!(
                "consolidate: {mib} MiB, {}…",
                if distinct {
                    "all valid"
                } else {
                    "mostly duplicates"
                }
            );
            let run = consolidate::run(&p, &work, mib, distinct).await;
            eprintln!("  {}", run.json());
            runs.push((mib, distinct, run));
        }
    }
    eprintln!("signature floor…");
    let signed = consolidate::Signed::new(&p, FLOOR_RECEIPTS);
    let floor = signed.dalek_floor();
    let tracker_floor = signed.tracker_floor();
    let _ = std::fs::remove_dir_all(&work);

    let interop: serde_json::Value = std::fs::read(out.join("interop.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    let valid = |mib: u64| {
        runs.iter()
            .find(|(m, d, _)| *m == mib && *d)
            .map(|(_, _, r)| r)
    };
    let best_per_core = [10, 100]
        .iter()
        .filter_map(|&m| valid(m))
        .map(|r| r.per_core())
        .fold(0.0, f64::max);
    let peaks: Vec<f64> = runs.iter().map(|(_, _, r)| r.peak_rss as f64).collect();
    let (min_peak, max_peak) = (
        peaks.iter().cloned().fold(f64::MAX, f64::min),
        peaks.iter().cloned().fold(0.0, f64::max),
    );
    let report = json!({
        "machine": {"cores": std::thread::available_parallelism().map_or(0, |n| n.get())},
        "track": {
            "etracker": rust.json(),
            "js": js.json(),
            "ratio_inv_per_s": round(rust.per_second / js.per_second),
            "ratio_p99": round(js.p99_ms / rust.p99_ms),
        },
        "consolidate": {
            "runs": runs.iter().filter(|(m, d, _)| *d && *m <= 100).map(|(_, _, r)| r.json()).collect::<Vec<_>>(),
            "signature_floor_per_core_s": round(floor),
            "ratio_to_floor": round(best_per_core / floor * 100.0) / 100.0,
            "tracker_signature_floor_per_core_s": round(tracker_floor),
            "ratio_to_tracker_floor": round(best_per_core / tracker_floor * 100.0) / 100.0,
        },
        "memory": runs.iter().map(|(mib, distinct, r)| json!({
            "batch_mib": mib,
            "kind": if *distinct { "all valid" } else { "mostly duplicates" },
            "peak_rss_mib": round(r.peak_rss as f64 / (1 << 20) as f64),
        })).collect::<Vec<_>>(),
        "interop": interop,
        "targets": {
            "track_20x_inv_per_s": rust.per_second >= 20.0 * js.per_second,
            "track_p99_1_20": rust.p99_ms * 20.0 <= js.p99_ms,
            "consolidate_15k_per_core": best_per_core >= 15_000.0,
            "consolidate_0_7_of_floor": best_per_core >= 0.7 * floor,
            "memory_under_128_mib": max_peak < 128.0 * (1 << 20) as f64,
            "memory_flat_20_percent": max_peak <= 1.2 * min_peak,
        },
    });
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap() + "\n",
    )
    .unwrap();
    print_table(&report);
}

fn print_table(r: &serde_json::Value) {
    let t = &r["track"];
    println!("| bench | etracker | peer / floor | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| track inv/s (64 in flight) | {} | {} (JS @ucanto) | {}× |",
        t["etracker"]["inv_per_s"], t["js"]["inv_per_s"], t["ratio_inv_per_s"]
    );
    println!(
        "| track p50 / p99 ms | {} / {} | {} / {} | p99 {}× lower |",
        t["etracker"]["p50_ms"],
        t["etracker"]["p99_ms"],
        t["js"]["p50_ms"],
        t["js"]["p99_ms"],
        t["ratio_p99"]
    );
    let c = &r["consolidate"];
    for run in c["runs"].as_array().unwrap() {
        let to_floor = run["receipts_per_core_s"].as_f64().unwrap()
            / c["signature_floor_per_core_s"].as_f64().unwrap();
        println!(
            "| consolidate {} MiB ({} receipts): receipts/s, per core | {}, {} | {} (signature floor per core) | {to_floor:.2} |",
            run["batch_mib"],
            run["receipts"],
            run["receipts_per_s"],
            run["receipts_per_core_s"],
            c["signature_floor_per_core_s"],
        );
    }
    println!(
        "| signature floor per core: ed25519-dalek batch / etracker's verifier | | {} / {} | best run {:.2} / {:.2} |",
        c["signature_floor_per_core_s"],
        c["tracker_signature_floor_per_core_s"],
        c["ratio_to_floor"].as_f64().unwrap_or_default(),
        c["ratio_to_tracker_floor"].as_f64().unwrap_or_default(),
    );
    for m in r["memory"].as_array().unwrap() {
        println!(
            "| peak RSS, {} MiB {} | {} MiB | | |",
            m["batch_mib"],
            m["kind"].as_str().unwrap(),
            m["peak_rss_mib"]
        );
    }
    if let Some(interop) = r["interop"].as_object() {
        for (name, value) in interop {
            let rate = |side: &str| {
                value
                    .as_object()
                    .and_then(|v| v.iter().find(|(k, _)| k.starts_with(side)))
                    .and_then(|(_, v)| v.as_f64())
                    .map_or(0.0, round)
            };
            println!(
                "| interop {name} (ops/s) | {} | {} (JS @ucanto) | {}× |",
                rate("rust"),
                rate("js"),
                round(value["ratio"].as_f64().unwrap_or(0.0))
            );
        }
    }
    println!();
    println!("targets: {}", r["targets"]);
}
