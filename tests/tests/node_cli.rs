//! `etracker-node`, the operator's command line, against the real tracker:
//! track a batch file, poll its status, reconcile it, serve a journal.

use std::path::PathBuf;
use std::process::Stdio;

use cid::Cid;
use etracker_client::{BatchJournal, JournalConfig};
use etracker_e2e::node::*;
use etracker_e2e::service;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use ucanto::principal::Signer;

/// The `etracker-node` binary of this build.
fn binary() -> PathBuf {
    etracker_e2e::workspace_bin("etracker-client", "etracker-node")
}

/// Runs `etracker-node args…` with the node's settings in the environment.
async fn node_cli(tracker_url: &str, endpoint: &str, args: &[&str]) -> (i32, serde_json::Value) {
    let proof = track_proof(&service(), node().did());
    let proof = multibase::encode(multibase::Base::Base64, proof.archive().unwrap());
    let output = Command::new(binary())
        .args(args)
        .env("ETRACKER_TRACKER_URL", tracker_url)
        .env("ETRACKER_TRACKER_DID", service().did().as_str())
        .env("ETRACKER_NODE_KEY", node().format())
        .env("ETRACKER_NODE_PROOF", proof)
        .env("ETRACKER_NODE_ENDPOINT", endpoint)
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("run etracker-node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{args:?} printed {stdout:?}: {e}"));
    (output.status.code().unwrap_or(-1), value)
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_tracks_polls_and_reconciles_a_batch_file() {
    let tracker = start_tracker(test_settings()).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (receipts, total) = good_receipts(3, "node-cli");
    let (batch_cid, bytes) = batch(&receipts);
    server.put(&batch_cid, bytes.clone());
    let file = temp_dir("node-cli").join("batch.car");
    std::fs::write(&file, &bytes).unwrap();
    let file = file.to_str().unwrap();

    let (code, tracked) = node_cli(&tracker.url, &endpoint, &["track", file]).await;
    assert_eq!(code, 0, "{tracked}");
    assert_eq!(tracked["batch"], batch_cid.to_string());
    let task: Cid = tracked["consolidate"].as_str().unwrap().parse().unwrap();

    let (code, status) = node_cli(&tracker.url, &endpoint, &["status", &task.to_string()]).await;
    assert_eq!((code, status["status"].as_str()), (0, Some("pending")));

    consolidate_now(&tracker.url).await;
    let (code, status) = node_cli(&tracker.url, &endpoint, &["status", &task.to_string()]).await;
    assert_eq!(
        (code, status["status"].as_str()),
        (0, Some("ok")),
        "{status}"
    );
    assert_eq!(status["totalEgress"], total);

    let (code, reconciled) = node_cli(&tracker.url, &endpoint, &["reconcile", file]).await;
    assert_eq!(
        (code, reconciled["status"].as_str()),
        (0, Some("match")),
        "{reconciled}"
    );
    assert_eq!(reconciled["expected"], total);

    // A file that is not the batch the tracker counted: a difference, exit 3.
    let (other_receipts, _) = good_receipts(2, "node-cli-other");
    let (_, other) = batch(&other_receipts);
    let other_file = temp_dir("node-cli-other").join("batch.car");
    std::fs::write(&other_file, &other).unwrap();
    let (code, reconciled) = node_cli(
        &tracker.url,
        &endpoint,
        &[
            "reconcile",
            other_file.to_str().unwrap(),
            "--consolidate",
            &task.to_string(),
        ],
    )
    .await;
    assert_eq!(
        (code, reconciled["status"].as_str()),
        (3, Some("difference")),
        "{reconciled}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn journal_serve_serves_closed_batches() {
    let dir = temp_dir("journal-serve");
    let cid = {
        let journal = BatchJournal::open(
            &dir,
            JournalConfig::default()
                .allow_small_batches(true)
                .min_batch_bytes(0),
        )
        .unwrap();
        for receipt in good_receipts(2, "journal-serve").0 {
            journal.append(&receipt).unwrap();
        }
        journal.rotate().unwrap().unwrap().cid
    };
    let mut child = Command::new(binary())
        .args(["journal", "serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .await
        .unwrap();
    let hello: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(hello["batches"], 1);
    let bytes = reqwest::get(format!("{}receipts/{cid}", hello["url"].as_str().unwrap()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        etracker_client::batch::batch_cid(&bytes),
        cid,
        "served bytes match the batch CID"
    );
    let missing = reqwest::get(format!(
        "{}receipts/{}",
        hello["url"].as_str().unwrap(),
        ucanto::dag::cid_of(ucanto::dag::CAR, b"x")
    ))
    .await
    .unwrap();
    assert_eq!(missing.status(), 404);
}

/// An operator's mistakes get one sentence with a hint, never a Debug dump.
#[tokio::test(flavor = "multi_thread")]
async fn mistakes_get_a_sentence_and_a_hint() {
    let (receipts, _) = good_receipts(1, "node-cli-mistakes");
    let (_, bytes) = batch(&receipts);
    let file = temp_dir("node-cli-mistakes").join("batch.car");
    std::fs::write(&file, &bytes).unwrap();
    let file = file.to_str().unwrap().to_string();
    let proof = track_proof(&service(), node().did());
    let proof = multibase::encode(multibase::Base::Base64, proof.archive().unwrap());
    let run = |args: Vec<String>, overrides: Vec<(&'static str, String)>| {
        let mut command = Command::new(binary());
        command
            .args(args)
            .env("ETRACKER_TRACKER_URL", "http://127.0.0.1:9/")
            .env("ETRACKER_TRACKER_DID", service().did().as_str())
            .env("ETRACKER_NODE_KEY", node().format())
            .env("ETRACKER_NODE_PROOF", &proof)
            .env(
                "ETRACKER_NODE_ENDPOINT",
                "http://127.0.0.1:9/receipts/{cid}",
            )
            .env("RUST_LOG", "off");
        for (key, value) in overrides {
            command.env(key, value);
        }
        async move {
            let output = command.output().await.expect("etracker-node");
            assert!(!output.status.success());
            String::from_utf8(output.stderr).unwrap()
        }
    };
    let track = vec!["track".to_string(), file.clone()];
    let cases = [
        (
            run(track.clone(), vec![]).await,
            "did not accept the request: ",
        ),
        (
            run(
                track.clone(),
                vec![("ETRACKER_TRACKER_DID", "did:key:bogus".into())],
            )
            .await,
            "for a did:web its did:key",
        ),
        (
            run(track.clone(), vec![("ETRACKER_NODE_KEY", "garbage".into())]).await,
            "as `etracker key gen` prints it",
        ),
        (
            run(track.clone(), vec![("ETRACKER_NODE_PROOF", "mAAAA".into())]).await,
            "`etracker delegate <node DID>`",
        ),
        (
            run(
                vec!["track".into(), "/nonexistent/batch.car".into()],
                vec![],
            )
            .await,
            "cannot read the batch file /nonexistent/batch.car",
        ),
    ];
    for (stderr, hint) in &cases {
        assert!(stderr.starts_with("etracker-node: "), "{stderr}");
        assert!(stderr.contains(hint), "{hint:?} not in {stderr}");
        assert!(
            !stderr.contains(" { ") && !stderr.contains("Err(") && !stderr.contains("(\""),
            "{stderr}"
        );
    }
}
