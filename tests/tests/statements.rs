//! Statements by UTC month, over HTTP and from the command line: each
//! node's pay and each customer's bill for one month, the unassigned and
//! non-billable bytes, and whether the month is final. The nodes' bytes add
//! up to the customers' plus the unassigned; each customer's figure is what
//! `account/egress/get` answers that customer for the month; other months
//! do not leak in.

use etracker_capabilities::account_egress_get::{
    format_date, parse_date, EgressGetError, EgressGetOk,
};
use etracker_capabilities::read_out;
use etracker_e2e::node::*;
use etracker_e2e::principal;
use etracker_server::service::SpaceRule;
use etracker_server::store::prelude::*;
use etracker_server::store::SpaceEntry;
use ucanto::dag::{Ipld, IpldMap};
use ucanto::principal::{Absentee, Did, Signer};

const ALICE: &str = "did:mailto:example.com:alice";
const BOB: &str = "did:mailto:example.com:bob";

/// Concludes batch `n` of `node` counting `usage` (space, day, bytes) and
/// `non_billable` bytes of the first space on its first day.
fn conclude(store: &dyn Store, n: u64, node: &Did, usage: &[(&Did, &str, u64)], non_billable: u64) {
    Seeded {
        tag: "statement",
        n,
        node,
        usage,
        non_billable,
        failure: None,
    }
    .conclude(store);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_month_s_statement_adds_up_and_agrees_with_egress_get() {
    let mut settings = test_settings();
    settings.space_rule = SpaceRule::Known;
    settings.provider_usd_per_tib = Some(1024.0);
    settings.client_usd_per_tib = Some(2048.0);
    let t = start_tracker(settings).await;
    let service = etracker_e2e::service().did().clone();
    let (alice, bob): (Did, Did) = (ALICE.parse().unwrap(), BOB.parse().unwrap());
    let spaces: Vec<Did> = (40..44).map(|i| principal(i).did().clone()).collect();
    // Alice pays for two spaces, Bob for one; the fourth has no customer.
    for (space, customer) in spaces
        .iter()
        .zip([Some(&alice), Some(&alice), Some(&bob), None])
    {
        t.store
            .put_space(&SpaceEntry {
                space: space.clone(),
                provider: service.clone(),
                customer: customer.cloned(),
            })
            .unwrap();
    }
    let (a, b) = (principal(50).did().clone(), principal(51).did().clone());
    // October: both nodes, every space, and some non-billable bytes.
    conclude(
        &*t.store,
        1,
        &a,
        &[
            (&spaces[0], "2026-10-01", 100),
            (&spaces[1], "2026-10-31", 20),
        ],
        7,
    );
    conclude(
        &*t.store,
        2,
        &b,
        &[
            (&spaces[2], "2026-10-15", 30),
            (&spaces[3], "2026-10-16", 4),
        ],
        0,
    );
    // The days around it belong to other months.
    conclude(
        &*t.store,
        3,
        &a,
        &[
            (&spaces[0], "2026-09-30", 1_000),
            (&spaces[2], "2026-11-01", 2_000),
        ],
        0,
    );

    let client = reqwest::Client::new();
    let api = |month: &str, csv: bool| {
        let mut request = client
            .get(format!("{}admin/api/statements/{month}", t.url))
            .bearer_auth(ADMIN_TOKEN);
        if csv {
            request = request.query(&[("format", "csv")]);
        }
        async move { request.send().await.unwrap() }
    };
    let response = api("2026-10", false).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["cache-control"],
        "no-store",
        "money behind credentials is never cached"
    );
    let october: serde_json::Value = response.json().await.unwrap();
    assert_eq!(october["period"]["from"], "2026-10-01");
    assert_eq!(october["period"]["to"], "2026-11-01");
    assert_eq!(october["final"], true, "{october}");
    let nodes: Vec<(String, u64)> = october["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_string(),
                n["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut expected_nodes = vec![(a.to_string(), 120), (b.to_string(), 34)];
    expected_nodes.sort();
    assert_eq!(nodes, expected_nodes);
    // 120 bytes of node a at 1,024 USD/TiB.
    let pay_a = october["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == a.as_str())
        .unwrap()["pay_usd"]
        .as_f64()
        .unwrap();
    assert_eq!(
        pay_a,
        (120.0 / (1u64 << 40) as f64 * 1024.0 * 100.0_f64).round() / 100.0
    );
    let customer = |who: &str| {
        october["customers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["customer"] == who)
            .cloned()
            .unwrap_or_else(|| panic!("{who} not in {october}"))
    };
    assert_eq!(customer(ALICE)["bytes"], 120);
    assert_eq!(customer(ALICE)["spaces"].as_array().unwrap().len(), 2);
    assert_eq!(customer(BOB)["bytes"], 30);
    assert_eq!(october["unassigned"]["bytes"], 4);
    assert_eq!(october["non_billable_bytes"], 7);
    // The nodes' bytes are the customers' plus the unassigned.
    let totals = &october["totals"];
    assert_eq!(
        totals["node_bytes"].as_u64().unwrap(),
        totals["customer_bytes"].as_u64().unwrap() + totals["unassigned_bytes"].as_u64().unwrap()
    );

    // Each customer's figure is what account/egress/get answers it for the month.
    for (account, expected) in [(ALICE, 120u64), (BOB, 30)] {
        let account = Absentee::new(account.parse().unwrap());
        let period = Ipld::Map(IpldMap::from([
            ("from".to_string(), Ipld::String("2026-10-01".into())),
            ("to".to_string(), Ipld::String("2026-11-01".into())),
        ]));
        let nb = IpldMap::from([("period".to_string(), period)]);
        let receipt = invoke(
            &t.url,
            &egress_get_invocation(&account, &principal(60), &[], nb),
        )
        .await;
        let ok = read_out::<EgressGetOk, EgressGetError>(receipt.out())
            .expect("shape")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(ok.total, expected, "{}", account.did());
        assert_eq!(customer(account.did().as_str())["bytes"], ok.total);
    }

    // The month that holds today is not final: batches may still add to it.
    let today = (ucanto::ucan::now() / 86_400) as i64;
    let this_month = &format_date(today)[..7];
    let current: serde_json::Value = api(this_month, false).await.json().await.unwrap();
    assert_eq!(current["final"], false);
    let final_at = current["final_at"].as_u64().unwrap();
    let next_month = parse_date(current["period"]["to"].as_str().unwrap()).unwrap() as u64;
    assert!(final_at > next_month * 86_400 + 7 * 86_400, "{final_at}");

    // CSV, over HTTP and from the command line.
    let csv = api("2026-10", true).await.text().await.unwrap();
    assert!(csv.starts_with("kind,party,space,bytes,usd\n"), "{csv}");
    assert_eq!(csv.lines().filter(|l| l.starts_with("node,")).count(), 2);
    assert_eq!(
        csv.lines().filter(|l| l.starts_with("customer,")).count(),
        3
    );
    let etracker = |args: &[&str]| {
        let mut command = tokio::process::Command::new(etracker_e2e::etracker_bin());
        command
            .args(args)
            .env("ETRACKER_URL", &t.url)
            .env("ETRACKER_ADMIN_TOKEN", ADMIN_TOKEN);
        async move { command.output().await.unwrap() }
    };
    let out = etracker(&["statement", "2026-10", "--csv"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), csv);
    let out = etracker(&["statement", "2026-10"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["totals"], october["totals"]);
    let out = etracker(&["statement", "October"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("YYYY-MM"));

    // Not a month; no token.
    assert_eq!(api("2026-13", false).await.status(), 400);
    let anonymous = client
        .get(format!("{}admin/api/statements/2026-10", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}
