//! `kill -9` of the real `etracker` process in the middle of a consolidation:
//! after a restart on the same data directory the totals are exact and nothing
//! is counted twice.

use std::process::Stdio;
use std::time::Duration;

use cid::Cid;
use etracker_e2e::node::*;
use etracker_e2e::{alice, service};
use etracker_server::store::prelude::*;
use etracker_server::store::redb::RedbStore;
use tokio::process::{Child, Command};
use ucanto::principal::{Ed25519Signer, Signer};

/// Registers alice's space (the one the test retrieves from) in the
/// registry of `data_dir`, with `etracker space add`.
async fn register_space(data_dir: &std::path::Path) {
    let output = Command::new(etracker_e2e::etracker_bin())
        .args(["space", "add", alice().did().as_str()])
        .arg("--data-dir")
        .arg(data_dir)
        .env("ETRACKER_PRIVATE_KEY", service().format())
        .output()
        .await
        .expect("etracker space add");
    assert!(output.status.success(), "{output:?}");
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(line["space"], alice().did().as_str());
    assert_eq!(
        line["provider"],
        service().did().as_str(),
        "the tracker itself"
    );
}

/// Starts `etracker start` on `data_dir`; returns the child and its base URL.
async fn start(data_dir: &std::path::Path) -> (Child, String) {
    start_leasing(data_dir, 1).await
}

/// [`start`] with leases of `lease_secs` seconds.
async fn start_leasing(data_dir: &std::path::Path, lease_secs: u64) -> (Child, String) {
    let lease_secs = lease_secs.to_string();
    // The admin token in the data directory, where `etracker start` and the
    // commands run on that directory read it (the tests' constant).
    std::fs::create_dir_all(data_dir).unwrap();
    std::fs::write(data_dir.join("admin.token"), ADMIN_TOKEN).unwrap();
    let mut child = Command::new(etracker_e2e::etracker_bin())
        .args([
            "start",
            "--listen",
            "127.0.0.1:0",
            "--min-batch-size",
            "0",
            "--lease-secs",
            &lease_secs,
            "--retry-base",
            "0",
            "--allow-private-endpoints",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("ETRACKER_PRIVATE_KEY", service().format())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn etracker");
    let hello = etracker_e2e::hello_line(&mut child, "etracker start").await;
    assert_eq!(hello["did"], service().did().as_str());
    (child, hello["url"].as_str().unwrap().to_string())
}

/// Has `node` track `batch` at the tracker `child` serves at `url`, starts a
/// consolidation (the node stalls the download) and kills the tracker
/// 0.8 s into it; returns the consolidate task's CID.
async fn track_then_kill_mid_run(
    child: Child,
    url: &str,
    node: &Ed25519Signer,
    batch: Cid,
    endpoint: &str,
) -> Cid {
    let track = track_invocation(
        node,
        service().did(),
        batch,
        endpoint,
        &[track_proof(&service(), node.did())],
    );
    let task = invoke(url, &track).await.forks()[0].cid();
    let stuck = tokio::spawn({
        let url = url.to_string();
        async move {
            reqwest::Client::new()
                .post(format!("{url}consolidate"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    etracker_e2e::kill9(child).await;
    assert!(stuck.await.unwrap().is_err(), "the run never finished");
    task
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_consolidation_keeps_totals_exact() {
    let data_dir = temp_dir("crash");
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (node, space) = (node(), alice());
    let (receipts, total) = good_receipts(20, "crash");
    let (batch_cid, bytes) = batch(&receipts);
    server.put(&batch_cid, bytes);

    // The node stalls half way through the batch; the tracker dies mid-download.
    *server.stall.lock().unwrap() = Some(Duration::from_secs(60));
    register_space(&data_dir).await;
    let (child, url) = start(&data_dir).await;
    let task = track_then_kill_mid_run(child, &url, &node, batch_cid, &endpoint).await;

    // Restart; the node is healthy again; the lease of the dead run expires.
    *server.stall.lock().unwrap() = None;
    let (child, url) = start(&data_dir).await;
    assert!(
        consolidate_receipt(&url, &task).await.is_none(),
        "nothing concluded by the dead process"
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    consolidate_now(&url).await;
    let receipt = consolidate_receipt(&url, &task)
        .await
        .expect("concluded after restart");
    assert_eq!(consolidate_out(&receipt).unwrap().total_egress, total);

    // Die again right after, restart, run again: nothing more is counted.
    etracker_e2e::kill9(child).await;
    let (child, url) = start(&data_dir).await;
    assert_eq!(consolidate_now(&url).await["leased"], 0);
    assert_eq!(
        consolidate_receipt(&url, &task)
            .await
            .expect("still there")
            .cid(),
        receipt.cid()
    );
    etracker_e2e::kill9(child).await;

    let store = RedbStore::open(&data_dir).expect("reopen after the last kill");
    // Yesterday to tomorrow: immune to the run crossing midnight.
    let today = (ucanto::ucan::now() / 86_400) as i64;
    let day = etracker_capabilities::account_egress_get::format_date(today - 1);
    let next = etracker_capabilities::account_egress_get::format_date(today + 2);
    let usage: u64 = store
        .space_usage(space.did(), &day, &next)
        .unwrap()
        .iter()
        .map(|(_, b)| b)
        .sum();
    assert_eq!(usage, total, "space total counted exactly once");
    assert_eq!(
        store.node_total(node.did()).unwrap(),
        total,
        "node total counted exactly once"
    );
    assert_eq!(store.pending_count().unwrap(), 0);
}

/// A tracker killed in the first second of a consolidation takes that batch
/// back when it starts again under its (default) name: the batch concludes
/// at once, not when the 15-minute lease of the dead run would have ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_tracker_takes_back_its_lease_at_once() {
    let data_dir = temp_dir("retake");
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let node = node();
    let (receipts, total) = good_receipts(5, "retake");
    let (batch_cid, bytes) = batch(&receipts);
    server.put(&batch_cid, bytes);
    *server.stall.lock().unwrap() = Some(Duration::from_secs(60));
    register_space(&data_dir).await;
    let (child, url) = start_leasing(&data_dir, 900).await;
    let task = track_then_kill_mid_run(child, &url, &node, batch_cid, &endpoint).await;

    *server.stall.lock().unwrap() = None;
    let (child, url) = start_leasing(&data_dir, 900).await;
    let mut receipt = None;
    for _ in 0..40 {
        consolidate_now(&url).await;
        receipt = consolidate_receipt(&url, &task).await;
        if receipt.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let receipt = receipt.expect("concluded at once after the restart");
    assert_eq!(consolidate_out(&receipt).unwrap().total_egress, total);
    etracker_e2e::kill9(child).await;
}

/// `etracker space …` works on the data directory when no tracker runs, and
/// through the running tracker's admin API when one holds it.
#[tokio::test(flavor = "multi_thread")]
async fn space_commands_reach_the_registry_either_way() {
    let data_dir = temp_dir("space-cli");
    let space = |args: &[&str], url: Option<&str>| {
        let mut command = Command::new(etracker_e2e::etracker_bin());
        command
            .arg("space")
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir)
            .env("ETRACKER_PRIVATE_KEY", service().format());
        if let Some(url) = url {
            command.args(["--url", url]);
        }
        let what = format!("{args:?}");
        async move {
            let output = command.output().await.expect("etracker space");
            assert!(output.status.success(), "{what}: {output:?}");
            String::from_utf8(output.stdout).unwrap()
        }
    };
    let (bob, carol) = (etracker_e2e::bob(), etracker_e2e::mallory());
    register_space(&data_dir).await;
    let (child, url) = start(&data_dir).await;
    let added = space(
        &[
            "add",
            bob.did().as_str(),
            "--customer",
            "did:mailto:example.com:bob",
        ],
        Some(&url),
    )
    .await;
    assert!(added.contains("did:mailto:example.com:bob"), "{added}");
    space(&["add", carol.did().as_str()], Some(&url)).await;
    let removed = space(&["remove", carol.did().as_str()], Some(&url)).await;
    assert!(removed.contains("\"removed\":true"), "{removed}");
    let listed = space(&["list"], Some(&url)).await;
    assert_eq!(listed.lines().count(), 2, "{listed}");
    etracker_e2e::kill9(child).await;
    let listed = space(&["list"], None).await;
    let spaces: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dids: Vec<&str> = spaces
        .iter()
        .map(|s| s["space"].as_str().unwrap())
        .collect();
    assert!(dids.contains(&alice().did().as_str()) && dids.contains(&bob.did().as_str()));
}

/// Mistakes a new user makes get one sentence with a hint, never a Debug dump.
#[tokio::test(flavor = "multi_thread")]
async fn mistakes_get_a_sentence_and_a_hint() {
    let data_dir = temp_dir("mistakes");
    let etracker = |args: &[&str], key: &str| {
        let mut command = Command::new(etracker_e2e::etracker_bin());
        command
            .args(args)
            .env("ETRACKER_DATA_DIR", &data_dir)
            .env("ETRACKER_PRIVATE_KEY", key)
            .env("RUST_LOG", "off");
        async move {
            let output = command.output().await.expect("etracker");
            assert!(!output.status.success());
            String::from_utf8(output.stderr).unwrap()
        }
    };
    let key = service().format();
    let cases = [
        (
            etracker(
                &["consolidate", "--now", "--url", "http://127.0.0.1:9"],
                &key,
            )
            .await,
            "Is `etracker start` running there?",
        ),
        (
            etracker(&["delegate", "did:key:bogus"], &key).await,
            "is not a DID",
        ),
        (
            etracker(&["delegate", node().did().as_str()], "garbage").await,
            "`etracker key gen` makes one",
        ),
    ];
    for (stderr, hint) in &cases {
        assert!(stderr.starts_with("etracker: "), "{stderr}");
        assert!(stderr.contains(hint), "{stderr}");
        assert!(
            !stderr.contains("Error {") && !stderr.contains("Err("),
            "{stderr}"
        );
    }
    // A second tracker on the same data directory.
    let (child, _) = start(&data_dir).await;
    let stderr = etracker(&["start", "--listen", "127.0.0.1:0"], &key).await;
    assert!(stderr.contains("Is another etracker running"), "{stderr}");
    etracker_e2e::kill9(child).await;
}
