//! The dashboard's login over real HTTP, tried as a stranger would: no
//! session, forged forms, guessing, and what the cookies allow.

use etracker_e2e::node::*;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{redirect::Policy, Client, StatusCode};
use ucanto::principal::Signer;

const USER: &str = "ops";
const PASSWORD: &str = "correct horse battery";
const TOKEN: &str = "admin-token-for-tests";

async fn tracker() -> RunningTracker {
    let mut settings = test_settings();
    settings.admin_login = Some((USER.into(), PASSWORD.into()));
    settings.admin_token = Some(TOKEN.into());
    settings.provider_usd_per_tib = Some(2048.0);
    settings.client_usd_per_tib = Some(4096.0);
    start_tracker(settings).await
}

fn client() -> Client {
    Client::builder().redirect(Policy::none()).build().unwrap()
}

/// The `Set-Cookie` value for `name`, whole.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .unwrap()
        .1
        .to_string()
}

/// The login form's CSRF token and its cookie.
async fn login_form(url: &str) -> (String, String) {
    let response = client()
        .get(format!("{url}admin/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = cookie_value(&set_cookie(&response, "etracker_login").expect("login cookie"));
    let html = response.text().await.unwrap();
    let field = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("csrf field")
        .to_string();
    assert_eq!(field, cookie, "double submit: the same token twice");
    (field, cookie)
}

/// Posts the login form; returns the response.
async fn post_login(
    url: &str,
    user: &str,
    password: &str,
    csrf: &str,
    cookie: Option<&str>,
    forwarded_https: bool,
) -> reqwest::Response {
    let mut request = client().post(format!("{url}admin/login")).form(&[
        ("user", user),
        ("password", password),
        ("csrf", csrf),
    ]);
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, format!("etracker_login={cookie}"));
    }
    if forwarded_https {
        request = request.header("x-forwarded-proto", "https");
    }
    request.send().await.unwrap()
}

/// `POST /consolidate` with the admin token.
async fn consolidate_with_token(url: &str) {
    let run = client()
        .post(format!("{url}consolidate"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), StatusCode::OK);
}

/// `GET <url>admin/api/<path>` with the admin token, as JSON.
async fn api_json(url: &str, path: &str) -> serde_json::Value {
    let response = client()
        .get(format!("{url}admin/api/{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    assert_eq!(
        response.headers()[reqwest::header::CACHE_CONTROL],
        "no-store",
        "{path}: behind credentials, never cached"
    );
    response.json().await.unwrap()
}

/// Logs in through the form; the session cookie's value.
async fn log_in(url: &str, user: &str, password: &str) -> String {
    etracker_e2e::dashboard_login(url, user, password).await
}

#[tokio::test]
async fn pages_and_api_need_a_login() {
    let t = tracker().await;
    let page = client()
        .get(format!("{}admin", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()[LOCATION], "/admin/login");
    let api = client()
        .get(format!("{}admin/api/overview", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
    let said: serde_json::Value = api.json().await.unwrap();
    assert!(
        said["error"].as_str().unwrap().contains("admin token"),
        "{said}"
    );
    // Every page and API route checks, through the same extractors.
    for path in [
        "admin/nodes",
        "admin/usage",
        "admin/nodes/did:key:z6Mk",
        "admin/failed",
        "admin/pending",
        "admin/statements/2026-11",
    ] {
        let page = client()
            .get(format!("{}{path}", t.url))
            .send()
            .await
            .unwrap();
        assert_eq!(page.headers()[LOCATION], "/admin/login", "{path}");
    }
    for path in [
        "nodes",
        "usage",
        "nodes/did:key:z6Mk",
        "failed",
        "pending",
        "statements/2026-11",
    ] {
        let api = client()
            .get(format!("{}admin/api/{path}", t.url))
            .send()
            .await
            .unwrap();
        assert_eq!(api.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let bad = client()
        .get(format!("{}admin/api/nodes/not-a-did", t.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let said: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(said["error"], "the node is not a DID");
    // A made-up session cookie is no session.
    let forged = client()
        .get(format!("{}admin/api/overview", t.url))
        .header(COOKIE, format!("etracker_session={}", "ab".repeat(32)))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    // The admin token opens the API, not with a wrong one.
    let bearer = |token: &str| {
        client()
            .get(format!("{}admin/api/overview", t.url))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(bearer(TOKEN).await.unwrap().status(), StatusCode::OK);
    // Every API answer behind credentials is never cached.
    for path in [
        "overview",
        "nodes",
        "usage",
        "failed",
        "pending",
        "statements/2026-11",
    ] {
        api_json(&t.url, path).await;
    }
    assert_eq!(
        bearer("admin-token-for-test").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_login_opens_the_pages_until_logout() {
    let t = tracker().await;
    // A batch tracked and consolidated for real: the overview shows it.
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (mut receipts, total) = good_receipts(4, "admin");
    // One retrieval twice: counted once, the repeat refused by name.
    receipts.push(receipts[0].clone());
    track_batch(&t, &server, &endpoint, &node(), batch(&receipts)).await;
    // And one whose node answers 503: it stays pending, retrying.
    let down = BatchServer::default();
    down.failing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let down_endpoint = down.serve().await;
    let (receipts, _) = good_receipts(2, "admin-down");
    let (failing_batch, bytes) = batch(&receipts);
    track_batch(&t, &down, &down_endpoint, &node(), (failing_batch, bytes)).await;
    consolidate_with_token(&t.url).await;
    let (csrf, cookie) = login_form(&t.url).await;
    let response = post_login(&t.url, USER, PASSWORD, &csrf, Some(&cookie), true).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/admin");
    let set = set_cookie(&response, "etracker_session").expect("session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/admin"] {
        assert!(set.contains(flag), "{set}");
    }
    let session = cookie_value(&set);
    let with_session = |path: &str| {
        client()
            .get(format!("{}{path}", t.url))
            .header(COOKIE, format!("etracker_session={session}"))
            .send()
    };
    let page = with_session("admin").await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains(&failing_batch.to_string()),
        "listed as pending"
    );
    assert!(
        html.contains(&format!("id=\"egress-bytes\">{total}<")),
        "{html}"
    );
    let logout_csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    let overview: serde_json::Value = with_session("admin/api/overview")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(overview["concluded"], 1);
    assert_eq!(overview["total_bytes"], total);
    let days = overview["egress_by_day"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    let charted: u64 = days.iter().map(|d| d["bytes"].as_u64().unwrap()).sum();
    assert_eq!(charted, total, "the batch's bytes, on its day");
    assert_eq!(
        overview["rejected_receipts"],
        serde_json::json!({"DuplicateReceipt": 1})
    );
    assert_eq!(overview["failed_batches"], 0);
    let pending = overview["pending_batches"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["batch"], failing_batch.to_string());
    assert_eq!(pending[0]["state"], "retrying");
    assert_eq!(pending[0]["attempts"], 1);
    assert!(
        pending[0]["last_error"].as_str().unwrap().contains("503"),
        "{pending:?}"
    );

    // Logging out needs the session's form token: a page elsewhere cannot.
    let logout = |csrf: String| {
        client()
            .post(format!("{}admin/logout", t.url))
            .header(COOKIE, format!("etracker_session={session}"))
            .form(&[("csrf", csrf)])
            .send()
    };
    assert_eq!(
        logout("0".repeat(64)).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        with_session("admin").await.unwrap().status(),
        StatusCode::OK
    );
    let out = logout(logout_csrf).await.unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(set_cookie(&out, "etracker_session")
        .unwrap()
        .contains("Max-Age=0"));
    // The old cookie is dead, server-side.
    assert_eq!(
        with_session("admin").await.unwrap().status(),
        StatusCode::SEE_OTHER
    );
    // Over plain http the cookie is not marked Secure (it would be dropped).
    let (csrf, cookie) = login_form(&t.url).await;
    let plain = post_login(&t.url, "anyone", TOKEN, &csrf, Some(&cookie), false).await;
    assert_eq!(plain.status(), StatusCode::SEE_OTHER, "the token logs in");
    assert!(!set_cookie(&plain, "etracker_session")
        .unwrap()
        .contains("Secure"));
}

#[tokio::test]
async fn forged_and_guessed_logins_are_refused() {
    let t = tracker().await;
    let (csrf, cookie) = login_form(&t.url).await;
    // Without the login cookie (a form posted from another site), or with
    // another token, even the right password is refused.
    let forged = post_login(&t.url, USER, PASSWORD, &csrf, None, false).await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let other = post_login(
        &t.url,
        USER,
        PASSWORD,
        &"1".repeat(64),
        Some(&cookie),
        false,
    )
    .await;
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    assert!(set_cookie(&other, "etracker_session").is_none());

    // Wrong passwords: refused, then the address is held back, right
    // password or not.
    for _ in 0..etracker_server::admin::auth::MAX_FAILURES {
        let wrong = post_login(&t.url, USER, "wrong", &csrf, Some(&cookie), false).await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        assert!(set_cookie(&wrong, "etracker_session").is_none());
        assert!(wrong
            .text()
            .await
            .unwrap()
            .contains("Wrong user or password"));
    }
    let held = post_login(&t.url, USER, PASSWORD, &csrf, Some(&cookie), false).await;
    assert_eq!(held.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = held.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 0 && wait <= etracker_server::admin::auth::FAILURE_WINDOW_SECS);
    assert!(set_cookie(&held, "etracker_session").is_none());
}

/// The nodes pages' JSON and CSV: a node's total and payout, its batches
/// newest first with the concluded one's receipt, the receipt served.
#[tokio::test]
async fn nodes_are_listed_with_payouts_batches_and_receipts() {
    let t = tracker().await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (receipts, total) = good_receipts(3, "admin-nodes");
    let task = track_batch(&t, &server, &endpoint, &node(), batch(&receipts)).await;
    consolidate_with_token(&t.url).await;
    let get = |path: String| {
        client()
            .get(format!("{}{path}", t.url))
            .bearer_auth(TOKEN)
            .send()
    };
    let nodes: serde_json::Value = get("admin/api/nodes".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let did = node().did().as_str().to_string();
    // 2048 USD per TiB: 2048 × total / 2^40.
    let payout = total as f64 * 2048.0 / (1u64 << 40) as f64;
    assert_eq!(
        nodes["nodes"],
        serde_json::json!([{"node": did, "total_bytes": total, "payout_usd": payout}])
    );
    let none: serde_json::Value = get("admin/api/nodes?q=did:web:".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(none["nodes"], serde_json::json!([]));
    let one: serde_json::Value = get(format!("admin/api/nodes/{did}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["total_bytes"], total);
    let batches = one["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0]["state"], "concluded");
    assert_eq!(batches[0]["total_bytes"], total);
    let receipt = batches[0]["receipt"].as_str().unwrap();
    assert_eq!(receipt, format!("/receipts/{task}"));
    // The link serves the signed receipt.
    assert!(consolidate_receipt(&t.url, &task).await.is_some());
    // CSV needs a session, like the page: log in with the token.
    let session = log_in(&t.url, "", TOKEN).await;
    let csv = client()
        .get(format!("{}admin/nodes?format=csv", t.url))
        .header(COOKIE, format!("etracker_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(csv.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("nodes.csv"));
    assert_eq!(
        csv.text().await.unwrap(),
        format!("node,total_bytes,payout_usd\n{did},{total},{payout:.2}\n")
    );
    // Every other table has its CSV too: the node's batches, and the
    // overview's egress per day, pending batches and rejections.
    let csv_of = |path: String| {
        let request = client()
            .get(format!("{}{path}", t.url))
            .header(COOKIE, format!("etracker_session={session}"));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            response.text().await.unwrap()
        }
    };
    let batches = csv_of(format!("admin/nodes/{did}?format=csv")).await;
    let lines: Vec<&str> = batches.lines().collect();
    assert_eq!(
        lines[0],
        "batch,received_at,state,total_bytes,counted_receipts,last_error,receipt"
    );
    assert_eq!(lines.len(), 2);
    assert!(
        lines[1].contains(&format!(",concluded,{total},3,,/receipts/{task}")),
        "{batches}"
    );
    let egress = csv_of("admin?csv=egress".into()).await;
    assert!(egress.starts_with("day,bytes\n"));
    assert_eq!(egress.lines().count(), 31, "30 days and the header");
    let summed: u64 = egress
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(summed, total);
    assert_eq!(csv_of("admin?csv=pending".into()).await.lines().count(), 1);
    assert_eq!(
        csv_of("admin?csv=rejected".into()).await,
        "error,receipts\n"
    );
    // Without a session the CSV is the login's.
    for path in ["admin/nodes?format=csv", "admin?csv=pending"] {
        let anonymous = client()
            .get(format!("{}{path}", t.url))
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    }
}

/// The spaces page's JSON and CSV: a registered space, its customer, its
/// egress of the last 30 days and its cost.
#[tokio::test]
async fn spaces_are_listed_with_customers_and_costs() {
    use etracker_server::store::prelude::*;
    use etracker_server::store::SpaceEntry;
    let t = tracker().await;
    let customer: ucanto::principal::Did = "did:mailto:example.com:alice".parse().unwrap();
    t.store
        .put_space(&SpaceEntry {
            space: etracker_e2e::alice().did().clone(),
            provider: etracker_e2e::service().did().clone(),
            customer: Some(customer.clone()),
        })
        .unwrap();
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (receipts, total) = good_receipts(3, "admin-spaces");
    track_batch(&t, &server, &endpoint, &node(), batch(&receipts)).await;
    consolidate_with_token(&t.url).await;
    let usage = api_json(&t.url, "usage").await;
    let spaces = usage["spaces"].as_array().unwrap();
    assert_eq!(spaces.len(), 1);
    let alice = etracker_e2e::alice().did().as_str().to_string();
    assert_eq!(spaces[0]["space"], alice.as_str());
    assert_eq!(spaces[0]["customer"], customer.as_str());
    assert_eq!(spaces[0]["total_bytes"], total);
    let cost = total as f64 * 4096.0 / (1u64 << 40) as f64;
    assert_eq!(spaces[0]["cost_usd"], cost);
    let day = spaces[0]["egress_by_day"][0]["day"]
        .as_str()
        .unwrap()
        .to_string();

    let session = log_in(&t.url, USER, PASSWORD).await;
    let csv = client()
        .get(format!("{}admin/usage?format=csv", t.url))
        .header(COOKIE, format!("etracker_session={session}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        csv,
        format!(
            "space,customer,day,bytes,cost_usd\n{alice},{},{day},{total},{cost:.2}\n",
            customer.as_str()
        )
    );
    // One customer's bill: their spaces, and the sum of them all.
    let bill = api_json(&t.url, &format!("usage?customer={}", customer.as_str())).await;
    assert_eq!(bill["customer_total_bytes"], total);
    assert_eq!(bill["customer_cost_usd"], cost);
    assert_eq!(bill["spaces"].as_array().unwrap().len(), 1);
    let nobody = api_json(&t.url, "usage?customer=did:mailto:example.com:nobody").await;
    assert_eq!(nobody["customer_total_bytes"], 0);
    assert!(nobody["spaces"].as_array().unwrap().is_empty());
    let html = client()
        .get(format!(
            "{}admin/usage?customer={}",
            t.url,
            customer.as_str()
        ))
        .header(COOKIE, format!("etracker_session={session}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(&format!("({total} bytes)")), "{html}");
    let bad = client()
        .get(format!("{}admin/api/usage?customer=alice", t.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

/// A space billed through another registry (as the upload service's
/// consumer table) is listed with the customer that registry names, beside
/// a space registered here that has no egress yet.
#[tokio::test]
async fn spaces_billed_through_a_consumer_table_are_listed() {
    use etracker_server::registry::{Provision, SpaceRegistry};
    use etracker_server::service::SpaceRule;
    use etracker_server::store::prelude::*;
    use etracker_server::store::{SpaceEntry, StoreError};
    use ucanto::principal::Did;

    /// The upload service's view: alice's space, paid by `customer`.
    struct ConsumerTable {
        customer: Did,
    }
    impl SpaceRegistry for ConsumerTable {
        fn provisions(&self, space: &Did) -> Result<Vec<Provision>, StoreError> {
            Ok(Vec::from_iter((space == etracker_e2e::alice().did()).then(
                || Provision {
                    provider: etracker_e2e::service().did().clone(),
                    customer: Some(self.customer.clone()),
                },
            )))
        }
        fn customer_spaces(&self, account: &Did) -> Result<Vec<Did>, StoreError> {
            Ok(Vec::from_iter(
                (*account == self.customer).then(|| etracker_e2e::alice().did().clone()),
            ))
        }
    }

    let customer: Did = "did:mailto:example.com:carol".parse().unwrap();
    let mut settings = test_settings();
    settings.admin_token = Some(TOKEN.into());
    settings.space_rule = SpaceRule::Known;
    settings.space_registry = Some(std::sync::Arc::new(ConsumerTable {
        customer: customer.clone(),
    }));
    let t = start_tracker(settings).await;
    let idle = etracker_e2e::principal(77).did().clone();
    t.store
        .put_space(&SpaceEntry {
            space: idle.clone(),
            provider: etracker_e2e::service().did().clone(),
            customer: None,
        })
        .unwrap();
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (receipts, total) = good_receipts(2, "admin-consumer");
    track_batch(&t, &server, &endpoint, &node(), batch(&receipts)).await;
    consolidate_with_token(&t.url).await;
    assert_eq!(t.store.node_total(node().did()).unwrap(), total);

    let usage = api_json(&t.url, "usage").await;
    let spaces = usage["spaces"].as_array().unwrap();
    let alice = etracker_e2e::alice().did().as_str().to_string();
    let alice = alice.as_str();
    let mut expected = vec![alice, idle.as_str()];
    expected.sort();
    let dids: Vec<&str> = spaces
        .iter()
        .map(|s| s["space"].as_str().unwrap())
        .collect();
    assert_eq!(dids, expected);
    let row = |did: &str| spaces.iter().find(|s| s["space"] == did).unwrap().clone();
    assert_eq!(row(alice)["customer"], customer.as_str());
    assert_eq!(row(alice)["provider"], serde_json::Value::Null);
    assert_eq!(row(alice)["total_bytes"], total);
    assert_eq!(row(idle.as_str())["total_bytes"], 0);
    assert_eq!(
        row(idle.as_str())["provider"],
        etracker_e2e::service().did().as_str()
    );
    // Search by prefix finds alice alone.
    let prefix = &alice[..alice.len() - 3];
    let found = api_json(&t.url, &format!("usage?q={prefix}")).await;
    assert_eq!(found["spaces"].as_array().unwrap().len(), 1);
    assert_eq!(found["spaces"][0]["space"], alice);
    // The customer's bill, from the consumer table's index.
    let bill = api_json(&t.url, &format!("usage?customer={}", customer.as_str())).await;
    assert_eq!(bill["customer_total_bytes"], total);
    assert_eq!(bill["spaces"][0]["space"], alice);
}

/// `etracker overview`, `nodes` and `usage` read the admin API of a running
/// tracker: every node across pages (the API's `next` cursor), one node's
/// page, every space; a wrong token is refused with a clear message.
#[tokio::test]
async fn cli_reads_the_admin_api_across_pages() {
    use ucanto::principal::Did;

    let t = tracker().await;
    // 120 nodes paid: more than two pages of 50.
    let today = etracker_capabilities::account_egress_get::format_date(
        (ucanto::ucan::now() / 86_400) as i64,
    );
    let mut nodes: Vec<Did> = Vec::new();
    for n in 0..120u64 {
        let node = etracker_e2e::principal(100 + n as u8).did().clone();
        let alice = etracker_e2e::alice().did().clone();
        Seeded {
            tag: "cli",
            n,
            node: &node,
            usage: &[(&alice, &today, 1_000 + n)],
            non_billable: 0,
            failure: None,
        }
        .conclude(&*t.store);
        nodes.push(node);
    }
    nodes.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    // Async: the tracker serves from this test's runtime.
    let etracker = |args: &[&str], token: &str| {
        let mut command = tokio::process::Command::new(etracker_e2e::etracker_bin());
        command
            .args(args)
            .env("ETRACKER_URL", &t.url)
            .env("ETRACKER_ADMIN_TOKEN", token);
        async move {
            let output = command.output().await.unwrap();
            (
                output.status.success(),
                String::from_utf8(output.stdout).unwrap(),
                String::from_utf8(output.stderr).unwrap(),
            )
        }
    };
    let (ok, out, err) = etracker(&["nodes"], TOKEN).await;
    assert!(ok, "{err}");
    let listed: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dids: Vec<&str> = listed.iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(dids, nodes.iter().map(Did::as_str).collect::<Vec<_>>());
    let sum: u64 = listed
        .iter()
        .map(|n| n["total_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, (0..120).map(|n| 1_000 + n).sum::<u64>());

    let prefix = &nodes[7].as_str()[..nodes[7].as_str().len() - 2];
    let (ok, out, _) = etracker(&["nodes", "--prefix", prefix], TOKEN).await;
    assert!(ok);
    assert_eq!(out.lines().count(), 1);

    let (ok, out, _) = etracker(&["nodes", nodes[3].as_str()], TOKEN).await;
    assert!(ok);
    let page: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["node"], nodes[3].as_str());
    assert_eq!(page["batches"].as_array().unwrap().len(), 1);
    assert_eq!(page["total_bytes"], listed[3]["total_bytes"]);

    let (ok, out, _) = etracker(&["usage"], TOKEN).await;
    assert!(ok);
    let spaces: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(spaces.len(), 1);
    assert_eq!(spaces[0]["total_bytes"], sum);

    // The same as CSV, as the dashboard exports it.
    let (ok, out, _) = etracker(&["nodes", "--csv"], TOKEN).await;
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 121);
    assert_eq!(lines[0], "node,total_bytes,payout_usd");
    let payout = |bytes: u64| format!("{:.2}", bytes as f64 * 2048.0 / (1u64 << 40) as f64);
    let first = listed[0]["total_bytes"].as_u64().unwrap();
    assert_eq!(
        lines[1],
        format!("{},{first},{}", nodes[0].as_str(), payout(first))
    );
    let (ok, out, _) = etracker(&["usage", "--csv"], TOKEN).await;
    assert!(ok);
    assert_eq!(
        out,
        format!(
            "space,customer,day,bytes,cost_usd\n{},,{today},{sum},0.00\n",
            etracker_e2e::alice().did().as_str()
        )
    );

    // A customer with no spaces: nothing (alice's space has no customer).
    let (ok, out, _) = etracker(
        &["usage", "--customer", "did:mailto:example.com:nobody"],
        TOKEN,
    )
    .await;
    assert!(ok);
    assert!(out.is_empty(), "{out}");

    let (ok, out, _) = etracker(&["overview"], TOKEN).await;
    assert!(ok);
    let overview: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(overview["total_bytes"], sum);
    assert_eq!(overview["concluded"], 120);

    let (ok, out, err) = etracker(&["nodes"], "not-the-token").await;
    assert!(!ok);
    assert!(out.is_empty());
    assert!(err.contains("admin token"), "{err}");
}

/// DNS rebinding: a page elsewhere points its own name at the tracker's
/// address, so a browser on the operator's machine sends its requests
/// here with that name in `Host`. The dashboard answers 421 to every such
/// request, pages and API alike, even with the token; its own names (and
/// those listed in `admin_hosts`) are served.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_answers_its_own_host_names_only() {
    let mut settings = test_settings();
    settings.admin_login = Some((USER.into(), PASSWORD.into()));
    settings.admin_token = Some(TOKEN.into());
    settings.admin_hosts = vec!["tracker.example".into()];
    let tracker = start_tracker(settings).await;
    let port = tracker
        .url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let get = |path: &str, host: String| {
        let request = client()
            .get(format!("{}{path}", tracker.url))
            .header(reqwest::header::HOST, host)
            .bearer_auth(TOKEN);
        async move { request.send().await.unwrap().status() }
    };
    for path in ["admin/login", "admin", "admin/api/overview", "admin/nodes"] {
        for foreign in [
            format!("attacker.example:{port}"),
            "attacker.example".to_string(),
            format!("127.0.0.1.attacker.example:{port}"),
        ] {
            assert_eq!(
                get(path, foreign.clone()).await,
                StatusCode::MISDIRECTED_REQUEST,
                "{path} for {foreign}"
            );
        }
    }
    assert_eq!(
        get("admin/api/overview", format!("localhost:{port}")).await,
        StatusCode::OK
    );
    assert_eq!(
        get("admin/api/overview", "tracker.example".into()).await,
        StatusCode::OK
    );
    assert_eq!(
        get("admin/login", format!("127.0.0.1:{port}")).await,
        StatusCode::OK
    );
}

/// A node's link is its DID percent-encoded: a `did:web` with a `%2F` in
/// it (legal in a DID) leads to that node's page, not to another path, and
/// its markup never becomes markup.
#[tokio::test(flavor = "multi_thread")]
async fn node_links_are_url_encoded() {
    let t = tracker().await;
    let node: ucanto::principal::Did = "did:web:a%2Fb.example%3Cb%3E".parse().unwrap();
    let alice = etracker_e2e::alice().did().clone();
    Seeded {
        tag: "encoded node",
        n: 1,
        node: &node,
        usage: &[(&alice, "2026-11-01", 5)],
        non_billable: 0,
        failure: None,
    }
    .conclude(&*t.store);
    let session = log_in(&t.url, USER, PASSWORD).await;
    let get = |path: String| {
        let request = client()
            .get(format!("{}{path}", t.url))
            .header(COOKIE, format!("etracker_session={session}"));
        async move { request.send().await.unwrap() }
    };
    let list = get("admin/nodes".into()).await.text().await.unwrap();
    let href = list
        .split("href=\"/admin/nodes/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    assert_eq!(href, "did:web:a%252Fb.example%253Cb%253E");
    assert!(!list.contains("<b>"), "markup stays text");
    let page = get(format!("admin/nodes/{href}")).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("did:web:a%2Fb.example%3Cb%3E"), "{html}");
}

/// Nodes by payout, largest first, paged through the API: with many equal
/// totals, every node is listed once (the cursor is the total and the DID).
#[tokio::test(flavor = "multi_thread")]
async fn nodes_sort_by_payout_without_skipping_ties() {
    let t = tracker().await;
    let mut expected = Vec::new();
    for n in 0..60u64 {
        let node = etracker_e2e::principal(100 + n as u8).did().clone();
        let total = 1_000 + n % 3;
        let alice = etracker_e2e::alice().did().clone();
        Seeded {
            tag: "payout",
            n,
            node: &node,
            usage: &[(&alice, "2026-11-01", total)],
            non_billable: 0,
            failure: None,
        }
        .conclude(&*t.store);
        expected.push((total, node.to_string()));
    }
    expected.sort_by(|(a, x), (b, y)| b.cmp(a).then_with(|| x.cmp(y)));
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut request = client()
            .get(format!("{}admin/api/nodes", t.url))
            .bearer_auth(TOKEN)
            .query(&[("sort", "payout")]);
        if let Some(after) = &after {
            request = request.query(&[("after", after.as_str())]);
        }
        let page: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
        for node in page["nodes"].as_array().unwrap() {
            seen.push((
                node["total_bytes"].as_u64().unwrap(),
                node["node"].as_str().unwrap().to_string(),
            ));
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, expected, "largest first, ties by DID, each once");
}

/// Every pending batch is listed once, node by node, over pages, whatever
/// their times: 55 tracked in one second by one node, 5 by another, and
/// concluded ones left out; a lease taken meanwhile reorders nothing.
#[tokio::test(flavor = "multi_thread")]
async fn pending_batches_are_paged_without_skipping() {
    use etracker_server::store::prelude::*;
    use etracker_server::store::NewRecord;
    use ucanto::dag::{cid_of, CAR, DAG_CBOR};

    let t = tracker().await;
    let (a, b) = (
        etracker_e2e::principal(150).did().clone(),
        etracker_e2e::principal(151).did().clone(),
    );
    let mut expected = Vec::new();
    for n in 0..60u64 {
        let node = if n < 55 { &a } else { &b };
        let batch = cid_of(CAR, format!("pending batch {n}").as_bytes());
        t.store
            .put(NewRecord {
                batch,
                node: node.clone(),
                endpoint: "https://node.example/{cid}".into(),
                track_invocation: cid_of(DAG_CBOR, format!("pending track {n}").as_bytes()),
                track_invocation_bytes: vec![1],
                consolidate_invocation: cid_of(DAG_CBOR, format!("pending task {n}").as_bytes()),
                received_at: if n < 55 { 1_000 } else { n },
            })
            .unwrap();
        expected.push(batch.to_string());
    }
    let alice = etracker_e2e::alice().did().clone();
    for n in 0..3 {
        Seeded {
            tag: "pending done",
            n,
            node: &a,
            usage: &[(&alice, "2026-11-01", 10)],
            non_billable: 0,
            failure: None,
        }
        .conclude(&*t.store);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut request = client()
            .get(format!("{}admin/api/pending", t.url))
            .bearer_auth(TOKEN);
        if let Some(after) = &after {
            request = request.query(&[("after", after.as_str())]);
        }
        let page: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
        for r in page["pending"].as_array().unwrap() {
            seen.push(r["batch"].as_str().unwrap().to_string());
        }
        // A lease between pages moves batches in the due index, not here.
        t.store.lease_pending(10_000, "r", 60, 5).unwrap();
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    let mut sorted_seen = seen.clone();
    sorted_seen.sort();
    expected.sort();
    assert_eq!(sorted_seen, expected, "every pending batch once, none done");
    assert_eq!(seen.len(), 60);
}
