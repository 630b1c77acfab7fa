//! Three `etracker` replicas of the real binary on one DynamoDB table
//! (moto, `ETRACKER_TEST_DYNAMODB`, started by `scripts/test.sh`), under
//! the fault layer (5% of requests throttled, cancelled by a conflicting
//! transaction or failed with a 500, some after they ran; a few ms of
//! latency each). Four nodes track 220 small batches and one large batch
//! each (1,200 receipts over 150 spaces: the multi-transaction path, with
//! usage rows): tracks sent twice to different replicas, receipts repeated
//! across batches, a node offline for half the run, one replica killed
//! with `kill -9` while it downloads and another while it concludes a large
//! batch, both restarted. Afterwards every batch is concluded exactly once,
//! every retrieval counted exactly once (none by nobody), every total is
//! the exact sum of the distinct retrievals, and the audit is clean.
//!
//! Unset `ETRACKER_TEST_DYNAMODB` fails the test (it is not skipped).

#![cfg(feature = "dynamodb")]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cid::Cid;
use etracker_e2e::node::*;
use etracker_e2e::{alice, bob, principal, service};
use etracker_server::store::dynamodb::DynamoStore;
use etracker_server::store::prelude::*;
use tokio::process::{Child, Command};
use ucanto::principal::{Ed25519Signer, Signer};
use ucanto::receipt::Receipt;

const NODES: u8 = 4;
const BATCHES_PER_NODE: u64 = 55;
/// Spaces of each node's large batch, and retrievals per space in it.
const LARGE_SPACES: u8 = 150;
const LARGE_PER_SPACE: u64 = 8;
/// Retrievals of a node's small batches its large batch repeats.
const LARGE_REPEATS: u64 = 20;
/// The fault layer every replica runs under: rate, (seed), latency in ms.
const FAULTS: &str = "0.05";
const LATENCY_MS: u64 = 4;
/// The node whose endpoint answers 503 until the killed replica is back.
const OFFLINE: usize = 3;
/// The node that serves its batches slowly until the kill.
const SLOW: usize = 2;

/// The moto endpoint and a table prefix of this test's own.
struct Table {
    endpoint: String,
    prefix: String,
}

impl Table {
    fn env(&self, command: &mut Command) {
        command
            .env("ETRACKER_STORE", "dynamodb")
            .env("ETRACKER_DYNAMODB_ENDPOINT", &self.endpoint)
            .env("ETRACKER_DYNAMODB_TABLE_PREFIX", &self.prefix)
            .env("ETRACKER_PRIVATE_KEY", service().format());
    }

    /// The store, opened off the async runtime (it blocks).
    async fn open(&self) -> DynamoStore {
        let (endpoint, prefix) = (self.endpoint.clone(), self.prefix.clone());
        tokio::task::spawn_blocking(move || DynamoStore::connect(&endpoint, &prefix))
            .await
            .unwrap()
            .expect("the test's table")
    }
}

/// `etracker start` as replica `name` on the shared table: consolidating
/// every second, a few batches per run, 5 s leases.
async fn start_replica(table: &Table, name: &str, data_dir: &Path) -> (Child, String) {
    let mut command = Command::new(etracker_e2e::etracker_bin());
    command
        .args([
            "start",
            "--listen",
            "127.0.0.1:0",
            "--min-batch-size",
            "0",
            "--consolidation-interval",
            "1",
            "--batch-limit",
            "8",
            "--lease-secs",
            "5",
            "--retry-base",
            "0",
            "--allow-private-endpoints",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("ETRACKER_REPLICA", name)
        .env(
            "ETRACKER_DYNAMODB_FAULTS",
            format!(
                "{FAULTS},{},{LATENCY_MS}",
                11 + name.len() as u64 * 7 + u64::from(name.as_bytes()[name.len() - 1])
            ),
        )
        // The large batches' spaces are not registered.
        .env("ETRACKER_SPACE_POLICY", "any")
        .env("ETRACKER_ADMIN_USER", "ops")
        .env("ETRACKER_ADMIN_PASSWORD", "replicas share this")
        .env("ETRACKER_ADMIN_TOKEN", ADMIN_TOKEN)
        // Conflicts between batches sharing a retrieval are expected here.
        .env(
            "RUST_LOG",
            std::env::var("ETRACKER_SOAK_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    table.env(&mut command);
    let mut child = command.spawn().expect("spawn etracker");
    let hello = etracker_e2e::hello_line(&mut child, "etracker start").await;
    (child, hello["url"].as_str().unwrap().to_string())
}

/// One retrieval from alice's space: its receipt, and the bytes it served.
fn retrieval(node: &Ed25519Signer, tag: &str, size: u64) -> (Receipt, u64) {
    retrieval_from(&alice(), node, tag, size)
}

/// One retrieval from `space` by bob: its receipt and bytes.
fn retrieval_from(
    space: &Ed25519Signer,
    node: &Ed25519Signer,
    tag: &str,
    size: u64,
) -> (Receipt, u64) {
    let proof = retrieve_delegation(space, bob().did());
    let invocation =
        retrieve_invocation(&bob(), node.did(), space.did(), 0, size - 1, &[proof], tag);
    (ok_receipt(node, &invocation), size)
}

/// A node's large batch: [`LARGE_PER_SPACE`] new retrievals from each of
/// [`LARGE_SPACES`] spaces, and the first receipt of its first
/// [`LARGE_REPEATS`] small batches again. Returns the batch and the bytes
/// of its new retrievals.
fn large_batch(k: u8, node: &Ed25519Signer, small: &[Receipt]) -> ((Cid, Vec<u8>), u64) {
    let mut receipts = Vec::new();
    let mut total = 0;
    for s in 0..LARGE_SPACES {
        let space = principal(100 + s);
        for j in 0..LARGE_PER_SPACE {
            let size = 100 + (u64::from(s) * 7 + j * 13 + u64::from(k)) % 50;
            let (receipt, bytes) =
                retrieval_from(&space, node, &format!("large-{k}-{s}-{j}"), size);
            total += bytes;
            receipts.push(receipt);
        }
    }
    receipts.extend(small.iter().take(LARGE_REPEATS as usize).cloned());
    (batch(&receipts), total)
}

/// A node's small batches: each batch (CID, bytes), the distinct bytes
/// they add up to, and the first receipt of each.
struct SmallBatches {
    batches: Vec<(Cid, Vec<u8>)>,
    total: u64,
    firsts: Vec<Receipt>,
}

/// A node's batches: 3 new retrievals each, and every tenth batch also
/// repeats a retrieval of the batch before it (counted once, whichever
/// batch concludes first).
fn node_batches(k: u8, node: &Ed25519Signer) -> SmallBatches {
    let mut batches = Vec::new();
    let mut total = 0;
    let mut firsts = Vec::new();
    let mut previous: Option<Receipt> = None;
    for i in 0..BATCHES_PER_NODE {
        let mut receipts = Vec::new();
        for j in 0..3 {
            let (receipt, bytes) = retrieval(
                node,
                &format!("replicas-{k}-{i}-{j}"),
                100 + (u64::from(k) * 37 + i * 11 + j * 5) % 900,
            );
            total += bytes;
            receipts.push(receipt);
        }
        if i % 10 == 9 {
            receipts.push(previous.clone().expect("a batch before"));
        }
        previous = Some(receipts[0].clone());
        firsts.push(receipts[0].clone());
        batches.push(batch(&receipts));
    }
    SmallBatches {
        batches,
        total,
        firsts,
    }
}

/// `node` tracks `batch` on the tracker at `url`; the consolidate task.
async fn track(url: &str, node: &Ed25519Signer, batch: Cid, endpoint: &str) -> Cid {
    let proof = track_proof(&service(), node.did());
    let invocation = track_invocation(node, service().did(), batch, endpoint, &[proof]);
    let receipt = invoke(url, &invocation).await;
    assert!(receipt.out().is_ok(), "track: {:?}", receipt.out());
    receipt.forks()[0].cid()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_survive_kill_9_and_count_exactly_once() {
    let table = Table {
        endpoint: std::env::var("ETRACKER_TEST_DYNAMODB")
            .expect("ETRACKER_TEST_DYNAMODB is unset: scripts/test.sh starts moto and sets it"),
        prefix: format!("replicas{}-{}-", std::process::id(), ucanto::ucan::now()),
    };
    // Alice's space is billable: registered in the shared table.
    let mut add = Command::new(etracker_e2e::etracker_bin());
    add.args(["space", "add", alice().did().as_str()])
        .arg("--data-dir")
        .arg(temp_dir("replicas-cli"));
    table.env(&mut add);
    let output = add.output().await.expect("etracker space add");
    assert!(output.status.success(), "{output:?}");

    let names = ["replica-0", "replica-1", "replica-2"];
    let dirs: Vec<PathBuf> = names.iter().map(|n| temp_dir(n)).collect();
    let mut replicas = Vec::new();
    for (name, dir) in names.iter().zip(&dirs) {
        replicas.push(start_replica(&table, name, dir).await);
    }

    // Four nodes, each serving its own batches; one of them offline.
    let mut nodes = Vec::new();
    let mut larges = Vec::new();
    for k in 0..NODES {
        let signer = principal(40 + k);
        let SmallBatches {
            batches,
            total: small_total,
            firsts,
        } = node_batches(k, &signer);
        let (large, large_total) = large_batch(k, &signer, &firsts);
        let server = BatchServer::default();
        let endpoint = server.serve().await;
        for (cid, bytes) in batches.iter().chain([&large]) {
            server.put(cid, bytes.clone());
        }
        larges.push((large.0, large_total));
        nodes.push((signer, batches, small_total + large_total, server, endpoint));
    }
    let alice_total: u64 =
        nodes.iter().map(|n| n.2).sum::<u64>() - larges.iter().map(|(_, t)| t).sum::<u64>();
    nodes[OFFLINE].3.failing.store(true, Ordering::Relaxed);
    // Until the kill, one node is slow: whoever consolidates its batches
    // holds their leases for seconds, so the kill lands in a run.
    *nodes[SLOW].3.slow.lock().unwrap() = Some(Duration::from_secs(5));

    // Tracks spread over the replicas, interleaving nodes; every seventh
    // sent again to the next replica (same task, counted once).
    let track_some = |range: std::ops::Range<u64>, urls: Vec<String>| {
        let nodes = &nodes;
        async move {
            let mut tasks = Vec::new();
            let mut n = 0usize;
            for i in range {
                for (k, (signer, batches, _, _, endpoint)) in nodes.iter().enumerate() {
                    let batch = batches[i as usize].0;
                    let url = &urls[n % urls.len()];
                    let task = track(url, signer, batch, endpoint).await;
                    if n.is_multiple_of(7) {
                        let again = &urls[(n + 1) % urls.len()];
                        assert_eq!(track(again, signer, batch, endpoint).await, task);
                    }
                    tasks.push((k, batch, task));
                    n += 1;
                }
            }
            tasks
        }
    };
    let urls: Vec<String> = replicas.iter().map(|(_, url)| url.clone()).collect();
    let half = BATCHES_PER_NODE / 2;
    let mut tasks = track_some(0..half, urls).await;

    // Kill replica 1 in the middle of a run: once it has concluded a few
    // batches and is downloading one of the slow node's.
    let victim = 1;
    let store = std::sync::Arc::new(table.open().await);
    let batches: Vec<Cid> = tasks
        .iter()
        .filter(|(k, _, _)| *k == SLOW)
        .map(|(_, batch, _)| *batch)
        .collect();
    let held_by_victim = || {
        let (store, batches) = (store.clone(), batches.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                batches
                    .iter()
                    .filter(|b| {
                        let record = store.record(b).unwrap().expect("tracked");
                        record.is_pending()
                            && record.lease.is_some_and(|l| l.owner == names[victim])
                    })
                    .count()
            })
            .await
            .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "replica 1 never got to work");
        let url = &replicas[victim].1;
        if metric(url, "etracker_concluded_batches_total").await >= 3 && held_by_victim().await > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (child, _) = replicas.remove(victim);
    etracker_e2e::kill9(child).await;
    let orphaned = held_by_victim().await;
    eprintln!("replica 1 killed holding {orphaned} leases");
    assert!(orphaned > 0, "killed between runs, not in one");

    // The rest is tracked on the two survivors, with the large batches.
    let survivors: Vec<String> = replicas.iter().map(|(_, url)| url.clone()).collect();
    tasks.extend(track_some(half..BATCHES_PER_NODE, survivors.clone()).await);
    for (k, (signer, _, _, _, endpoint)) in nodes.iter().enumerate() {
        let batch = larges[k].0;
        let task = track(&survivors[k % survivors.len()], signer, batch, endpoint).await;
        tasks.push((k, batch, task));
    }

    // Kill whichever survivor is in the middle of concluding a large batch:
    // its fence taken (usage rows being written), its lease held.
    let (client, runtime) =
        etracker_server::store::dynamodb::connect_client(&table.endpoint).expect("a raw client");
    let client = std::sync::Arc::new((client, runtime));
    let record_table = format!("{}etracker", table.prefix);
    let concluding = |batch: Cid| {
        let (client, record_table) = (client.clone(), record_table.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let (client, runtime) = &*client;
                let item = runtime
                    .block_on(
                        client
                            .get_item()
                            .table_name(&record_table)
                            .key(
                                "pk",
                                etracker_server::store::dynamodb::sdk::types::AttributeValue::S(
                                    format!("rec#{batch}"),
                                ),
                            )
                            .key(
                                "sk",
                                etracker_server::store::dynamodb::sdk::types::AttributeValue::S(
                                    "rec".into(),
                                ),
                            )
                            .consistent_read(true)
                            .send(),
                    )
                    .ok()?
                    .item?;
                let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
                (text("status").as_deref() == Some("pending") && text("token").is_some())
                    .then(|| text("lease_owner"))
                    .flatten()
            })
            .await
            .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let second_victim = 'found: loop {
        assert!(
            Instant::now() < deadline,
            "no replica was caught concluding a large batch"
        );
        for (batch, _) in &larges {
            if let Some(owner) = concluding(*batch).await {
                if let Some(i) = names.iter().position(|n| *n == owner) {
                    if i != victim {
                        break 'found i;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The raw client's runtime cannot be dropped in async code.
    if let Ok((client, runtime)) = std::sync::Arc::try_unwrap(client) {
        drop(client);
        runtime.shutdown_background();
    }
    let position = if second_victim > victim {
        second_victim - 1
    } else {
        second_victim
    };
    let (child, _) = replicas.remove(position);
    etracker_e2e::kill9(child).await;
    eprintln!(
        "{} killed while concluding a large batch",
        names[second_victim]
    );

    // Both victims restart under their names; the offline node comes back.
    for i in [victim, second_victim]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
    {
        let restarted = start_replica(&table, names[i], &dirs[i]).await;
        replicas.insert(i, restarted);
    }
    nodes[OFFLINE].3.failing.store(false, Ordering::Relaxed);
    *nodes[SLOW].3.slow.lock().unwrap() = None;
    assert_eq!(
        tasks.len(),
        usize::from(NODES) * (BATCHES_PER_NODE as usize + 1)
    );
    assert!(tasks.len() >= 200);

    // Every batch concludes, one receipt each, the same on every replica.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut receipts: BTreeMap<Cid, Receipt> = BTreeMap::new();
    while receipts.len() < tasks.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} batches concluded",
            receipts.len(),
            tasks.len()
        );
        for (_, _, task) in &tasks {
            if !receipts.contains_key(task) {
                if let Some(r) = consolidate_receipt(&replicas[0].1, task).await {
                    receipts.insert(*task, r);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (_, url) in &replicas[1..] {
        for (task, receipt) in &receipts {
            let there = consolidate_receipt(url, task).await.expect("stored once");
            assert_eq!(there.cid(), receipt.cid(), "one receipt per batch");
        }
    }

    // Each node's receipts add up to its distinct retrievals exactly; each
    // repeated retrieval was refused by exactly one of its two batches.
    let mut refused = 0;
    for (k, (_, _, total, _, _)) in nodes.iter().enumerate() {
        let mut counted = 0;
        for (node, _, task) in &tasks {
            if *node != k {
                continue;
            }
            let out = consolidate_out(&receipts[task]).expect("consolidated");
            counted += out.total_egress;
            refused += out.errors.len();
        }
        assert_eq!(counted, *total, "node {k}: counted exactly once");
    }
    let repeats = (NODES as u64 * (BATCHES_PER_NODE / 10 + LARGE_REPEATS)) as usize;
    assert_eq!(refused, repeats, "each repeat refused once, nothing else");

    // The table agrees: every batch concluded once, every total exact.
    for (child, _) in replicas {
        etracker_e2e::kill9(child).await;
    }
    let expected: u64 = nodes.iter().map(|n| n.2).sum();
    let (stats, audit, node_totals, space_total) = tokio::task::spawn_blocking({
        let signers: Vec<Ed25519Signer> = nodes.iter().map(|n| n.0.clone()).collect();
        move || {
            let today = (ucanto::ucan::now() / 86_400) as i64;
            let from = etracker_capabilities::account_egress_get::format_date(today - 1);
            let to = etracker_capabilities::account_egress_get::format_date(today + 2);
            let space: u64 = store
                .space_usage(alice().did(), &from, &to)
                .unwrap()
                .iter()
                .map(|(_, b)| b)
                .sum();
            let node_totals: Vec<u64> = signers
                .iter()
                .map(|s| store.node_total(s.did()).unwrap())
                .collect();
            (
                store.stats().unwrap(),
                store.audit().unwrap(),
                node_totals,
                space,
            )
        }
    })
    .await
    .unwrap();
    assert!(audit.is_consistent(), "{:?}", audit.problems);
    assert_eq!(stats.concluded, tasks.len() as u64, "each batch once");
    assert_eq!(stats.pending, 0);
    let distinct: HashSet<Cid> = tasks.iter().map(|(_, _, t)| *t).collect();
    assert_eq!(distinct.len(), tasks.len());
    let large_retrievals = u64::from(LARGE_SPACES) * LARGE_PER_SPACE;
    assert_eq!(
        stats.counted_receipts,
        u64::from(NODES) * (BATCHES_PER_NODE * 3 + large_retrievals),
        "every distinct retrieval counted once, repeats not: none by nobody"
    );
    for (k, node) in nodes.iter().enumerate() {
        assert_eq!(node_totals[k], node.2, "node {k} total");
    }
    assert_eq!(space_total, alice_total, "alice's space total");
    assert_eq!(stats.total_bytes, expected);
}

/// A dashboard login on one replica is a session on the others, and a
/// logout on any ends it on all (sessions live in the shared table).
#[tokio::test]
async fn dashboard_sessions_hold_across_replicas() {
    let table = Table {
        endpoint: std::env::var("ETRACKER_TEST_DYNAMODB")
            .expect("ETRACKER_TEST_DYNAMODB is unset: scripts/test.sh starts moto and sets it"),
        prefix: format!("sessions{}-{}-", std::process::id(), ucanto::ucan::now()),
    };
    let (a, url_a) = start_replica(&table, "replica-a", &temp_dir("sessions-a")).await;
    let (b, url_b) = start_replica(&table, "replica-b", &temp_dir("sessions-b")).await;
    let session = etracker_e2e::dashboard_login(&url_a, "ops", "replicas share this").await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let overview = |url: &str| {
        client
            .get(format!("{url}admin"))
            .header(
                reqwest::header::COOKIE,
                format!("etracker_session={session}"),
            )
            .send()
    };
    let on_b = overview(&url_b).await.unwrap();
    assert_eq!(on_b.status(), 200, "the session opens replica b");
    let html = on_b.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the logout form's token")
        .to_string();
    let logout = client
        .post(format!("{url_b}admin/logout"))
        .header(
            reqwest::header::COOKIE,
            format!("etracker_session={session}"),
        )
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 303);
    for url in [&url_a, &url_b] {
        let after = overview(url).await.unwrap();
        assert_eq!(after.status(), 303, "logged out on {url}");
    }
    etracker_e2e::kill9(a).await;
    etracker_e2e::kill9(b).await;
}
