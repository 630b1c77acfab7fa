//! Every benchmark of the tracker in one run, side by side: what
//! `scripts/bench` runs. Writes `target/bench/report.json` and prints a table.
//!
//! - **track**: a load generator (pre-signed invocations, keep-alive, 64 in
//!   flight) against the `etracker` binary and against a JS @ucanto/server
//!   peer doing the same work (`fixtures/js/track-peer.js`);
//! - **consolidate**: receipts per second and per core for 10 MiB and
//!   100 MiB batches through the real path, against the signature-only floor
//!   (ed25519-dalek batch verification of the same receipts), and against
//!   the same receipts' signatures through the tracker's own verifier. Each
//!   is measured in three rounds, floors next to consolidations, and the
//!   medians reported: one run on this shared 2-core machine can be 30% off;
//! - **memory**: the tracker's peak RSS consolidating 10 MiB, 100 MiB and
//!   1 GiB batches, all valid and mostly duplicates;
//! - **dashboard**: each dashboard page's median latency with 10,000 nodes
//!   and 100,000 spaces in the store, against 100 nodes and 1,000 spaces;
//! - **attacks**: the tracker's peak RSS and answer times under the costliest
//!   attacks of the security table (`attacks`; `BENCH_ATTACKS=1` alone);
//! - **interop**: the ratios `cargo bench --bench interop` wrote, if any;
//! - **dynamodb** (built with the `dynamodb` feature, `BENCH_DYNAMODB=<url>`
//!   set): write and read units and stored bytes per counted receipt of a
//!   100 MiB batch on that endpoint (`dynamo.rs`); `BENCH_DYNAMODB_ONLY`
//!   measures it alone and adds it to an existing report.
//!
//! `BENCH_MAX_MIB` caps the batch sizes (default 1024); `BENCH_TRACKS` sets
//! the number of track invocations per peer (default 5000); `BENCH_ONE_MIB`
//! runs one consolidation of that size and nothing else (all valid, or
//! mostly duplicates with `BENCH_ONE_DUPLICATES` set); `BENCH_FLOORS` measures
//! the two signature floors and nothing else; `BENCH_DASHBOARD` measures
//! the dashboard and nothing else (`target/bench/dashboard.json`); `BENCH_HEAPTRACK=<file>`
//! records the tracker's heap there with Debian's heaptrack (raw data, for
//! `heaptrack_interpret` and `heaptrack_print`).

mod attacks;
mod batch;
mod consolidate;
mod dashboard;
#[cfg(feature = "dynamodb")]
mod dynamo;
mod peers;
mod track;

use std::sync::Arc;

use serde_json::json;

use crate::track::round;

/// Receipts whose signatures the floors verify: enough CPU time (about a
/// second) that the clock's 10 ms ticks do not show.
const FLOOR_RECEIPTS: u64 = 25_000;

/// Rounds of the consolidation speed measures (floors, 10 MiB, 100 MiB).
const ROUNDS: usize = 3;

/// One round: the floors (ed25519-dalek, the tracker's verifier), then a
/// consolidation of each size.
struct Round {
    floors: (f64, f64),
    runs: Vec<(u64, consolidate::Run)>,
}

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

/// The DynamoDB figures, when built with the feature and given an endpoint.
#[allow(unused_variables)]
async fn dynamodb_cost(
    p: &batch::Principals,
    work: &std::path::Path,
    max_mib: u64,
) -> serde_json::Value {
    #[cfg(feature = "dynamodb")]
    if let Ok(endpoint) = std::env::var("BENCH_DYNAMODB") {
        let mib = max_mib.min(100);
        eprintln!("dynamodb: {mib} MiB, all valid, on {endpoint}…");
        let prepared = consolidate::prepare(p, work, mib, true);
        let figures = dynamo::run(p, work, &endpoint, &prepared).await;
        eprintln!("  {figures}");
        return figures;
    }
    serde_json::Value::Null
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
        let prepared = consolidate::prepare(&p, &work, mib, distinct);
        let run = consolidate::run(&p, &work, &prepared).await;
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
    // The dashboard alone.
    if std::env::var_os("BENCH_DASHBOARD").is_some() {
        let report = dashboard::run(&p, &work).await;
        std::fs::write(
            out.join("dashboard.json"),
            serde_json::to_string_pretty(&report).unwrap() + "\n",
        )
        .unwrap();
        dashboard::print(&report);
        let _ = std::fs::remove_dir_all(&work);
        return;
    }
    // The attacks alone.
    if std::env::var_os("BENCH_ATTACKS").is_some() {
        let attacks = attacks::run(&p, &work).await;
        std::fs::write(
            out.join("attacks.json"),
            serde_json::to_string_pretty(&attacks).unwrap() + "\n",
        )
        .unwrap();
        attacks::print(&attacks);
        let _ = std::fs::remove_dir_all(&work);
        return;
    }
    let dynamodb = dynamodb_cost(&p, &work, max_mib).await;
    if std::env::var_os("BENCH_DYNAMODB_ONLY").is_some() {
        let path = out.join("report.json");
        let mut report: serde_json::Value = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| json!({}));
        report["dynamodb"] = dynamodb.clone();
        std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap() + "\n").unwrap();
        println!("{}", serde_json::to_string_pretty(&dynamodb).unwrap());
        let _ = std::fs::remove_dir_all(&work);
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

    // Consolidation speed: ROUNDS rounds of (both floors, 10 MiB, 100 MiB),
    // so that each ratio compares measures taken minutes apart at most on
    // this noisy machine; medians are reported. One fresh tracker per run.
    let signed = consolidate::Signed::new(&p, FLOOR_RECEIPTS);
    let speed: Vec<(u64, consolidate::Prepared)> = [10, 100]
        .into_iter()
        .filter(|&m| m <= max_mib)
        .map(|mib| (mib, consolidate::prepare(&p, &work, mib, true)))
        .collect();
    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        eprintln!("round {round}/{ROUNDS}: signature floors…");
        let floors = (signed.dalek_floor(), signed.tracker_floor());
        let mut runs = Vec::new();
        for (mib, prepared) in &speed {
            eprintln!("round {round}/{ROUNDS}: consolidate {mib} MiB, all valid…");
            let run = consolidate::run(&p, &work, prepared).await;
            eprintln!("  {}", run.json());
            runs.push((*mib, run));
        }
        rounds.push(Round { floors, runs });
    }
    drop(speed);
    // Memory: the rest of the sizes and kinds, once each.
    let mut memory: Vec<(u64, bool, consolidate::Run)> = Vec::new();
    for distinct in [true, false] {
        for mib in [10, 100, 1024].into_iter().filter(|&m| m <= max_mib) {
            let peak = if distinct {
                // The speed rounds measured these: their highest peak.
                rounds
                    .iter()
                    .flat_map(|r| r.runs.iter().filter(|(m, _)| *m == mib))
                    .max_by_key(|(_, run)| run.peak_rss)
                    .map(|(_, run)| run.clone())
            } else {
                None
            };
            let run = match peak {
                Some(run) => run,
                None => {
                    eprintln!(
                        "consolidate: {mib} MiB, {}…",
                        if distinct {
                            "all valid"
                        } else {
                            "mostly duplicates"
                        }
                    );
                    let prepared = consolidate::prepare(&p, &work, mib, distinct);
                    let run = consolidate::run(&p, &work, &prepared).await;
                    eprintln!("  {}", run.json());
                    run
                }
            };
            memory.push((mib, distinct, run));
        }
    }
    let dashboard = dashboard::run(&p, &work).await;
    let attacks = attacks::run(&p, &work).await;
    let _ = std::fs::remove_dir_all(&work);

    let interop: serde_json::Value = std::fs::read(out.join("interop.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or_default()
    };
    // Per round: the better of the two sizes, and its ratios to that
    // round's floors.
    let best_of = |r: &Round| {
        r.runs
            .iter()
            .map(|(_, run)| run.per_core())
            .fold(0.0, f64::max)
    };
    let best_per_core = median(rounds.iter().map(best_of).collect());
    let ratio_to_floor = median(rounds.iter().map(|r| best_of(r) / r.floors.0).collect());
    let ratio_to_tracker_floor = median(rounds.iter().map(|r| best_of(r) / r.floors.1).collect());
    let floor = median(rounds.iter().map(|r| r.floors.0).collect());
    let tracker_floor = median(rounds.iter().map(|r| r.floors.1).collect());
    let per_size: Vec<serde_json::Value> = [10, 100]
        .into_iter()
        .filter(|&m| m <= max_mib)
        .map(|mib| {
            let runs: Vec<&consolidate::Run> = rounds
                .iter()
                .flat_map(|r| r.runs.iter().filter(|(m, _)| *m == mib).map(|(_, run)| run))
                .collect();
            let mut by_core = runs.clone();
            by_core.sort_by(|a, b| a.per_core().total_cmp(&b.per_core()));
            let mut typical = by_core[by_core.len() / 2].json();
            typical["rounds_receipts_per_core_s"] =
                json!(runs.iter().map(|r| round(r.per_core())).collect::<Vec<_>>());
            typical
        })
        .collect();
    let peaks: Vec<f64> = memory.iter().map(|(_, _, r)| r.peak_rss as f64).collect();
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
            "rounds": ROUNDS,
            "runs": per_size,
            "best_receipts_per_core_s": round(best_per_core),
            "signature_floor_per_core_s": round(floor),
            "rounds_signature_floor_per_core_s": rounds.iter().map(|r| round(r.floors.0)).collect::<Vec<_>>(),
            "ratio_to_floor": round(ratio_to_floor * 100.0) / 100.0,
            "tracker_signature_floor_per_core_s": round(tracker_floor),
            "ratio_to_tracker_floor": round(ratio_to_tracker_floor * 100.0) / 100.0,
        },
        "memory": memory.iter().map(|(mib, distinct, r)| json!({
            "batch_mib": mib,
            "kind": if *distinct { "all valid" } else { "mostly duplicates" },
            "peak_rss_mib": round(r.peak_rss as f64 / (1 << 20) as f64),
        })).collect::<Vec<_>>(),
        "dashboard": dashboard,
        "attacks": attacks,
        "interop": interop,
        "dynamodb": dynamodb,
        "targets": {
            "track_20x_inv_per_s": rust.per_second >= 20.0 * js.per_second,
            "track_p99_1_20": rust.p99_ms * 20.0 <= js.p99_ms,
            "consolidate_15k_per_core": best_per_core >= 15_000.0,
            "consolidate_0_7_of_floor": ratio_to_floor >= 0.7,
            "memory_under_128_mib": max_peak < 128.0 * (1 << 20) as f64,
            "memory_flat_20_percent": max_peak <= 1.2 * min_peak,
            "attacks_under_128_mib": attacks.iter().all(|a| {
                a["peak_rss_mib"].as_f64().is_some_and(|mib| mib < 128.0)
            }),
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
        println!(
            "| consolidate {} MiB ({} receipts): receipts/s, per core (median of {} rounds) | {}, {} | | |",
            run["batch_mib"],
            run["receipts"],
            c["rounds"],
            run["receipts_per_s"],
            run["receipts_per_core_s"],
        );
    }
    println!(
        "| signature floor per core: ed25519-dalek batch / etracker's verifier (medians) | {} (better size) | {} / {} | {:.2} / {:.2} |",
        c["best_receipts_per_core_s"],
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
    dashboard::print(&r["dashboard"]);
    if let Some(attacks) = r["attacks"].as_array() {
        attacks::print(attacks);
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
