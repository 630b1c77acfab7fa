//! The dashboard at scale: the same pages served from a small store (100
//! nodes, 1,000 spaces) and from a large one (10,000 nodes, 100,000 spaces,
//! registered and with egress), by the `etracker` binary over HTTP. Every
//! listing reads a page of keys, so the large store's pages should cost
//! about what the small one's do: the report gives each page's median
//! latency on both and their ratio.
//!
//! The stores are seeded through the store's own API (the same tables a
//! track and a conclusion write): one conclusion per node, counting ten
//! spaces over the last 30 days, 200 batches for the first node, and 1,000
//! batches still pending.

use std::path::Path;
use std::time::Instant;

use cid::Cid;
use etracker_capabilities::account_egress_get::format_date;
use etracker_server::store::prelude::*;
use etracker_server::store::redb::RedbStore;
use etracker_server::store::{Conclusion, DailyUsage, NewRecord, SpaceEntry};
use serde_json::json;
use ucanto::dag::{cid_of, CAR, DAG_CBOR};
use ucanto::principal::{Did, Ed25519Signer, Signer};

use crate::batch::Principals;
use crate::peers;
use crate::track::round;

/// Requests per page and store, after one unmeasured.
const SAMPLES: usize = 15;
/// Spaces each node's conclusion counts.
const SPACES_PER_NODE: usize = 10;
/// Batches of the first node, for its page.
const BUSY_NODE_BATCHES: u64 = 200;
/// Batches left pending, for the overview.
const PENDING: u64 = 1_000;

const TOKEN: &str = "dashboard-bench";
const USER: &str = "ops";
const PASSWORD: &str = "dashboard bench password";

/// A size of store: how many nodes and spaces.
#[derive(Clone, Copy)]
pub(crate) struct Size {
    pub(crate) nodes: usize,
    pub(crate) spaces: usize,
}

/// The DID of principal `i` of kind `kind` (distinct keys, made fast).
fn did(kind: u8, i: usize) -> Did {
    let mut seed = [kind; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Ed25519Signer::from_seed(seed).did().clone()
}

fn record(batch: Cid, node: &Did, at: u64) -> NewRecord {
    NewRecord {
        batch,
        node: node.clone(),
        endpoint: "https://node.example/receipts/{cid}".into(),
        track_invocation: cid_of(DAG_CBOR, &batch.to_bytes()),
        track_invocation_bytes: batch.to_bytes(),
        consolidate_invocation: cid_of(DAG_CBOR, format!("consolidate {batch}").as_bytes()),
        received_at: at,
    }
}

/// Seeds a redb store in `dir` with `size`; returns a node with many
/// batches and the seconds seeding took.
fn seed(dir: &Path, size: Size) -> (Did, f64) {
    let started = Instant::now();
    let _ = std::fs::remove_dir_all(dir);
    let store = RedbStore::open(dir).unwrap();
    let provider = did(200, 0);
    let spaces: Vec<Did> = (0..size.spaces).map(|i| did(201, i)).collect();
    for (k, chunk) in spaces.chunks(10_000).enumerate() {
        let entries: Vec<SpaceEntry> = chunk
            .iter()
            .enumerate()
            .map(|(i, space)| SpaceEntry {
                space: space.clone(),
                provider: provider.clone(),
                customer: Some(did(202, (k * 10_000 + i) / 5)),
            })
            .collect();
        store.put_spaces(&entries).unwrap();
    }
    let today = (ucanto::ucan::now() / 86_400) as i64;
    let nodes: Vec<Did> = (0..size.nodes).map(|i| did(203, i)).collect();
    let mut n: u64 = 0;
    let mut conclude = |node: &Did, usage: Vec<DailyUsage>| {
        n += 1;
        let batch = cid_of(CAR, format!("dashboard batch {n}").as_bytes());
        let new = record(batch, node, 1_000_000 + n);
        let consolidate_invocation = new.consolidate_invocation;
        store.put(new).unwrap();
        let receipt = cid_of(DAG_CBOR, format!("receipt {n}").as_bytes());
        let counted_receipts = (0..usage.len())
            .map(|r| etracker_server::store::CountedRetrieval {
                retrieval: cid_of(DAG_CBOR, format!("retrieve {n} {r}").as_bytes()),
                expires: 1_000_000 + n,
            })
            .collect();
        store
            .conclude(&Conclusion {
                batch,
                consolidate_invocation,
                receipt,
                receipt_bytes: receipt.to_bytes(),
                node: node.clone(),
                total_bytes: usage.iter().map(|u| u.bytes).sum(),
                usage,
                counted_receipts,
                staged_tally: Vec::new(),
                non_billable: Vec::new(),
                concluded_at: 2_000_000 + n,
                claims_end: u64::MAX,
                rejected: vec![("InvalidSignature".into(), n % 3)],
                failure: None,
            })
            .unwrap();
    };
    for (i, node) in nodes.iter().enumerate() {
        let usage = (0..SPACES_PER_NODE)
            .map(|k| {
                let s = (i * SPACES_PER_NODE + k) % spaces.len();
                DailyUsage {
                    space: spaces[s].clone(),
                    day: format_date(today - ((i + k) % 30) as i64),
                    bytes: 1_000_000 + (i * 7 + k) as u64,
                }
            })
            .collect();
        conclude(node, usage);
    }
    let busy = nodes[0].clone();
    for b in 0..BUSY_NODE_BATCHES {
        let usage = vec![DailyUsage {
            space: spaces[b as usize % spaces.len()].clone(),
            day: format_date(today - (b % 30) as i64),
            bytes: 4_096,
        }];
        conclude(&busy, usage);
    }
    for p in 0..PENDING {
        let batch = cid_of(CAR, format!("dashboard pending {p}").as_bytes());
        store
            .put(record(
                batch,
                &nodes[p as usize % nodes.len()],
                3_000_000 + p,
            ))
            .unwrap();
    }
    (busy, started.elapsed().as_secs_f64())
}

/// The pages measured: name and path (with the session or the token).
fn pages(size: Size, busy: &Did) -> Vec<(&'static str, String)> {
    let middle_node = did(203, size.nodes / 2);
    let middle_space = did(201, size.spaces / 2);
    let prefix = |d: &Did| d.as_str()[..d.as_str().len() - 4].to_string();
    vec![
        ("overview", "admin".into()),
        ("nodes, first page", "admin/nodes".into()),
        (
            "nodes, a middle page",
            format!("admin/nodes?after={middle_node}"),
        ),
        (
            "nodes, search",
            format!("admin/nodes?q={}", prefix(&middle_node)),
        ),
        ("nodes, page as CSV", "admin/nodes?format=csv".into()),
        ("a node's page (200 batches)", format!("admin/nodes/{busy}")),
        ("spaces, first page", "admin/usage".into()),
        (
            "spaces, a middle page",
            format!("admin/usage?after={middle_space}"),
        ),
        (
            "spaces, search",
            format!("admin/usage?q={}", prefix(&middle_space)),
        ),
        ("spaces, page as CSV", "admin/usage?format=csv".into()),
        ("API overview", "admin/api/overview".into()),
        ("API nodes", "admin/api/nodes".into()),
        ("API spaces", "admin/api/usage".into()),
    ]
}

/// Logs in through the form; the session cookie.
async fn log_in(client: &reqwest::Client, url: &str) -> String {
    let cookie_of = |response: &reqwest::Response, name: &str| {
        response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.split(';').next())
            .map(str::to_string)
            .expect("cookie")
    };
    let form = client
        .get(format!("{url}admin/login"))
        .send()
        .await
        .unwrap();
    let csrf = cookie_of(&form, "etracker_login");
    let body = format!(
        "user={USER}&password={}&csrf={csrf}",
        PASSWORD.replace(' ', "+")
    );
    let login = client
        .post(format!("{url}admin/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("etracker_login={csrf}"))
        .body(body)
        .send()
        .await
        .unwrap();
    cookie_of(&login, "etracker_session")
}

/// Median latency in ms of each page, and its response's size.
async fn measure(url: &str, pages: &[(&'static str, String)]) -> Vec<(f64, usize)> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let session = log_in(&client, url).await;
    let mut results = Vec::new();
    for (name, path) in pages {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..=SAMPLES {
            let started = Instant::now();
            let response = client
                .get(format!("{url}{path}"))
                .header("cookie", format!("etracker_session={session}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{name}: {path}");
            size = response.bytes().await.unwrap().len();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.remove(0);
        times.sort_by(f64::total_cmp);
        results.push((times[times.len() / 2], size));
    }
    results
}

/// Seeds both stores, serves each with `etracker` and measures its pages.
pub(crate) async fn run(p: &Principals, work: &Path) -> serde_json::Value {
    let sizes = [
        Size {
            nodes: 100,
            spaces: 1_000,
        },
        Size {
            nodes: 10_000,
            spaces: 100_000,
        },
    ];
    let mut measured = Vec::new();
    for size in sizes {
        let dir = work.join(format!("dashboard-{}", size.nodes));
        eprintln!(
            "dashboard: seeding {} nodes, {} spaces…",
            size.nodes, size.spaces
        );
        let (busy, seconds) = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || seed(&dir, size)
        })
        .await
        .unwrap();
        let tracker = peers::etracker_on(
            p,
            &dir,
            &[
                ("ETRACKER_ADMIN_TOKEN", TOKEN),
                ("ETRACKER_ADMIN_USER", USER),
                ("ETRACKER_ADMIN_PASSWORD", PASSWORD),
                ("ETRACKER_PROVIDER_EGRESS_USD_PER_TIB", "2"),
                ("ETRACKER_CLIENT_EGRESS_USD_PER_TIB", "5"),
            ],
        )
        .await;
        peers::ready(&tracker.url).await;
        let pages = pages(size, &busy);
        let times = measure(&tracker.url, &pages).await;
        let file_mib = std::fs::metadata(dir.join(etracker_server::store::redb::FILE_NAME))
            .map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64);
        tracker.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("  seeded in {seconds:.0} s, store {file_mib:.0} MiB");
        measured.push((size, seconds, file_mib, pages, times));
    }
    let (small, large) = (&measured[0], &measured[1]);
    let rows: Vec<serde_json::Value> = small
        .3
        .iter()
        .zip(small.4.iter().zip(&large.4))
        .map(|((name, _), ((small_ms, _), (large_ms, large_bytes)))| {
            json!({
                "page": name,
                "small_ms": round(*small_ms),
                "large_ms": round(*large_ms),
                "ratio_large_to_small": round(large_ms / small_ms),
                "large_response_bytes": large_bytes,
            })
        })
        .collect();
    let store = |m: &(Size, f64, f64, _, _)| json!({"nodes": m.0.nodes, "spaces": m.0.spaces, "seed_s": round(m.1), "file_mib": round(m.2)});
    json!({
        "samples_per_page": SAMPLES,
        "small": store(small),
        "large": store(large),
        "pages": rows,
    })
}

/// The dashboard's rows of the report's table.
pub(crate) fn print(report: &serde_json::Value) {
    let (small, large) = (&report["small"], &report["large"]);
    for page in report["pages"].as_array().into_iter().flatten() {
        println!(
            "| dashboard {}: median ms, {} nodes / {} spaces vs {} / {} | {} | {} | {}× |",
            page["page"].as_str().unwrap_or_default(),
            large["nodes"],
            large["spaces"],
            small["nodes"],
            small["spaces"],
            page["large_ms"],
            page["small_ms"],
            page["ratio_large_to_small"]
        );
    }
}
