//! The dashboard in a real headless Chromium (Debian's `chromium`, installed
//! by `scripts/test.sh`), driven by `tests/browser/dashboard.mjs`: numbers
//! seeded through a real track and consolidation, a wrong password refused,
//! the login, the overview, the logout. Screenshots go to
//! `target/dashboard/`.

use etracker_e2e::node::*;
use etracker_e2e::repo_root;

const USER: &str = "ops";
const PASSWORD: &str = "a dashboard password";

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_logs_in_reads_the_numbers_and_logs_out() {
    let mut settings = test_settings();
    settings.admin_login = Some((USER.into(), PASSWORD.into()));
    let tracker = start_tracker(settings).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (mut receipts, total) = good_receipts(6, "dashboard");
    // One retrieval twice: the repeat is refused, and counted by name.
    receipts.push(receipts[1].clone());
    track_batch(&tracker, &server, &endpoint, &node(), batch(&receipts)).await;
    // No admin token: /consolidate answers this machine.
    assert_eq!(consolidate_now(&tracker.url).await["concluded"], 1);

    let shots = repo_root().join("target/dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let browser_dir = repo_root().join("tests/browser");
    let output = tokio::process::Command::new("node")
        .arg("dashboard.mjs")
        .args([&tracker.url, USER, PASSWORD])
        .arg(&shots)
        .current_dir(&browser_dir)
        .output()
        .await
        .expect("node runs (scripts/test.sh installs it, chromium and playwright-core)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "dashboard.mjs failed: {stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));

    let login = format!("{}admin/login", tracker.url);
    let overview = format!("{}admin", tracker.url);
    assert_eq!(seen["unauthenticated_url"], login.as_str());
    assert_eq!(seen["wrong_status"], 401);
    assert_eq!(seen["wrong_message"], "Wrong user or password.");
    assert_eq!(seen["login_url"], overview.as_str());
    assert_eq!(seen["egress_bytes"], total.to_string().as_str());
    assert_eq!(seen["concluded"], "1");
    assert_eq!(seen["failed"], "0");
    assert_eq!(seen["nodes"], "1");
    assert_eq!(seen["chart_bars"], 30, "a bar a day");
    assert_eq!(seen["rejected_duplicates"], "1");
    assert_eq!(seen["chart_sum"], total, "the batch's bytes, on its day");
    assert_eq!(seen["logout_url"], login.as_str());
    assert_eq!(seen["after_logout_url"], login.as_str());
    for shot in ["login-refused.png", "overview.png"] {
        let bytes = std::fs::read(shots.join(shot)).expect(shot);
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} is a PNG");
    }
}
