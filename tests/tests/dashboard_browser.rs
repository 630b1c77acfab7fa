//! The dashboard in a real headless Chromium (Debian's `chromium`, installed
//! by `scripts/test.sh`), driven by `tests/browser/dashboard.mjs`: numbers
//! seeded through a real track and consolidation, a wrong password refused,
//! the login, the overview, the nodes page and its CSV, a node's page and
//! the signed receipt its batch links to, the spaces page and its CSV, the
//! logout. Screenshots go to
//! `target/dashboard/`.

use etracker_e2e::node::*;
use etracker_e2e::repo_root;
use etracker_server::store::prelude::*;
use ucanto::principal::Signer;

const USER: &str = "ops";
const PASSWORD: &str = "a dashboard password";

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_logs_in_reads_the_numbers_and_logs_out() {
    let mut settings = test_settings();
    settings.admin_login = Some((USER.into(), PASSWORD.into()));
    settings.provider_usd_per_tib = Some(1024.0);
    settings.client_usd_per_tib = Some(2048.0);
    let tracker = start_tracker(settings).await;
    // Alice's space, registered with its customer.
    let customer = "did:mailto:example.com:alice";
    tracker
        .store
        .put_space(&etracker_server::store::SpaceEntry {
            space: etracker_e2e::alice().did().clone(),
            provider: etracker_e2e::service().did().clone(),
            customer: Some(customer.parse().unwrap()),
        })
        .unwrap();
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (mut receipts, total) = good_receipts(6, "dashboard");
    // One retrieval twice: the repeat is refused, and counted by name.
    receipts.push(receipts[1].clone());
    let task = track_batch(&tracker, &server, &endpoint, &node(), batch(&receipts)).await;
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
    // The nodes page, its CSV, the node's page and the receipt it links.
    let did = node().did().as_str().to_string();
    assert_eq!(seen["node_rows"], 1);
    let payout = format!("{:.2}", total as f64 * 1024.0 / (1u64 << 40) as f64);
    let csv = std::fs::read_to_string(shots.join("nodes.csv")).unwrap();
    assert_eq!(
        csv,
        format!("node,total_bytes,payout_usd\n{did},{total},{payout}\n")
    );
    assert_eq!(seen["node_total"], total.to_string().as_str());
    assert_eq!(seen["node_payout"], payout.as_str());
    assert_eq!(seen["node_batch_states"], serde_json::json!(["concluded"]));
    assert_eq!(seen["receipt_href"], format!("/receipts/{task}").as_str());
    let served = reqwest::get(format!("{}receipts/{task}", tracker.url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let followed = std::fs::read(shots.join("receipt.car")).unwrap();
    assert_eq!(followed, served, "the link downloads the signed receipt");
    assert!(consolidate_receipt(&tracker.url, &task).await.is_some());
    // Spaces and customers: alice's space, her customer, bytes and cost.
    let alice = etracker_e2e::alice().did().as_str().to_string();
    let cost = format!("{:.2}", total as f64 * 2048.0 / (1u64 << 40) as f64);
    let cells: Vec<String> = serde_json::from_value(seen["space_cells"].clone()).unwrap();
    assert_eq!(cells[0], alice);
    assert_eq!(cells[1], customer);
    assert_eq!(cells[3], total.to_string());
    assert_eq!(cells[4], cost);
    let csv = std::fs::read_to_string(shots.join("spaces.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "space,customer,day,bytes,cost_usd");
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(
        rows[1].starts_with(&format!("{alice},{customer},")),
        "{csv}"
    );
    assert!(rows[1].ends_with(&format!(",{total},{cost}")), "{csv}");
    let bill = seen["customer_total"].as_str().unwrap();
    assert!(
        bill.contains(customer) && bill.contains(&format!("({total} bytes), {cost} USD")),
        "{bill}"
    );
    for shot in [
        "login-refused.png",
        "overview.png",
        "nodes.png",
        "node.png",
        "spaces.png",
        "customer.png",
    ] {
        let bytes = std::fs::read(shots.join(shot)).expect(shot);
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} is a PNG");
    }
}

/// Long listings, hostile names and a statement in the browser: 56 nodes
/// paged by 50 (every one listed once), a node whose `did:web` carries
/// markup and a customer whose name has quotes and markup (shown as text,
/// nothing run, the node's link leading to its own page), this month's
/// statement, and "log out everywhere".
#[tokio::test(flavor = "multi_thread")]
async fn listings_page_and_hostile_names_stay_text() {
    use ucanto::principal::Did;
    let mut settings = test_settings();
    settings.admin_login = Some((USER.into(), PASSWORD.into()));
    settings.provider_usd_per_tib = Some(1024.0);
    settings.client_usd_per_tib = Some(2048.0);
    let tracker = start_tracker(settings).await;
    let hostile: Did = "did:web:evil.example:<img src=x onerror=alert(1)><b>\"bold\"</b>"
        .parse()
        .unwrap();
    let customer: Did = "did:mailto:example.com:\"o'brien\"<b>x</b>"
        .parse()
        .unwrap();
    let space = etracker_e2e::alice().did().clone();
    tracker
        .store
        .put_space(&etracker_server::store::SpaceEntry {
            space: space.clone(),
            provider: etracker_e2e::service().did().clone(),
            customer: Some(customer.clone()),
        })
        .unwrap();
    let mut nodes: Vec<Did> = (0..55u8)
        .map(|i| etracker_e2e::principal(100 + i).did().clone())
        .collect();
    nodes.push(hostile.clone());
    let today = etracker_capabilities::account_egress_get::format_date(
        (ucanto::ucan::now() / 86_400) as i64,
    );
    for (n, node) in nodes.iter().enumerate() {
        Seeded {
            tag: "listing",
            n: n as u64,
            node,
            usage: &[(&space, &today, 1_000 + n as u64)],
            non_billable: 0,
            failure: None,
        }
        .conclude(&*tracker.store);
    }
    // One batch failed as a whole, with an error that carries markup.
    let failure = "the batch at https://node.example/x answered 404 <i>gone</i>";
    Seeded {
        tag: "listing failed",
        n: 200,
        node: &nodes[0],
        usage: &[],
        non_billable: 0,
        failure: Some(failure),
    }
    .conclude(&*tracker.store);
    let failed_node = nodes[0].to_string();
    nodes.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let month = etracker_capabilities::account_egress_get::format_date(
        (ucanto::ucan::now() / 86_400) as i64,
    )[..7]
        .to_string();

    let shots = repo_root().join("target/dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let output = tokio::process::Command::new("node")
        .arg("listings.mjs")
        .args([&tracker.url, USER, PASSWORD, &month, hostile.as_str()])
        .arg(&shots)
        .current_dir(repo_root().join("tests/browser"))
        .output()
        .await
        .expect("node runs (scripts/test.sh installs it, chromium and playwright-core)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "listings.mjs failed: {stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));

    let listed: Vec<String> = serde_json::from_value(seen["nodes"].clone()).unwrap();
    assert_eq!(
        listed,
        nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "every node once, in order, over two pages"
    );
    assert_eq!(seen["dialogs"], 0, "no markup ran");
    let failed: Vec<Vec<String>> = serde_json::from_value(seen["failed_rows"].clone()).unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0][1], failed_node, "the failed batch's node");
    assert_eq!(failed[0][3], failure, "its error, as text");
    for injected in [
        "nodes_injected",
        "hostile_injected",
        "spaces_injected",
        "statement_injected",
        "failed_injected",
    ] {
        assert_eq!(seen[injected], 0, "{injected}");
    }
    assert_eq!(
        seen["hostile_page_title"],
        format!("Node {hostile}").as_str(),
        "the link leads to that node's own page"
    );
    assert_eq!(seen["hostile_total"], "1055");
    let customers: Vec<String> = serde_json::from_value(seen["customers"].clone()).unwrap();
    assert!(customers.contains(&customer.to_string()), "{customers:?}");
    assert_eq!(
        seen["statement_url"],
        format!("{}admin/statements/{month}", tracker.url).as_str(),
        "the navigation leads to this month's statement"
    );
    assert_eq!(
        seen["statement_title"],
        format!("Statement {month}").as_str()
    );
    assert!(
        seen["statement_final"]
            .as_str()
            .unwrap()
            .starts_with("Not final"),
        "{}",
        seen["statement_final"]
    );
    assert_eq!(seen["statement_nodes"], 56);
    assert_eq!(
        seen["statement_customers"],
        serde_json::json!([customer.as_str()])
    );
    assert_eq!(seen["logout_everywhere"], true);
    assert_eq!(
        seen["after_logout_url"],
        format!("{}admin/login", tracker.url).as_str()
    );
    for shot in ["hostile-node.png", "statement.png", "failed.png"] {
        let bytes = std::fs::read(shots.join(shot)).expect(shot);
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} is a PNG");
    }
}
