//! Billable spaces and non-billable actors, against the real tracker over
//! HTTP: only spaces a known provider provisions are counted, retrievals by
//! non-billable actors are recorded apart, and accounts read the spaces the
//! registry (or a space's own delegation) says are theirs.

use std::collections::HashSet;

use etracker_e2e::attack::{archive_for, batch_of, carried_blocks};
use etracker_e2e::node::{
    consolidate_now, consolidate_out, consolidate_receipt, fetch_receipt, metric, node,
    remote_consolidator, retrieve_delegation, retrieve_invocation, serve_consolidator,
    start_tracker, test_settings, track_batch, BatchServer, RunningTracker,
};
use etracker_e2e::{alice, bob, principal, run_js, service};
use etracker_server::service::{RemoteConsolidator, Settings, SpaceRule};
use etracker_server::store::prelude::*;
use etracker_server::store::SpaceEntry;
use ucanto::principal::{Did, Ed25519Signer, Signer};
use ucanto::ucan::Invocation;

const FAR: (&str, &str) = ("2000-01-01", "2100-01-01");

fn known_settings(providers: &[&str]) -> Settings {
    let mut settings = test_settings();
    settings.space_rule = SpaceRule::Known;
    settings.known_providers = providers.iter().map(|p| p.parse().unwrap()).collect();
    settings
}

/// A retrieval of `bytes` bytes the space itself makes (no proofs).
fn direct(space: &Ed25519Signer, bytes: u64, tag: &str) -> Invocation {
    retrieve_invocation(space, node().did(), space.did(), 0, bytes - 1, &[], tag)
}

fn archive(invocation: &Invocation) -> Vec<u8> {
    archive_for(&node(), invocation.block(), &carried_blocks(invocation), "")
}

async fn count(
    tracker: &RunningTracker,
    server: &BatchServer,
    endpoint: &str,
    retrievals: &[&Invocation],
) -> etracker_capabilities::consolidate::ConsolidateOk {
    let archives: Vec<Vec<u8>> = retrievals.iter().map(|r| archive(r)).collect();
    let task = track_batch(tracker, server, endpoint, &node(), batch_of(&archives)).await;
    consolidate_now(&tracker.url).await;
    let receipt = consolidate_receipt(&tracker.url, &task)
        .await
        .expect("concluded");
    consolidate_out(&receipt).expect("ok")
}

fn billed(tracker: &RunningTracker, space: &Did) -> u64 {
    let usage = tracker.store.space_usage(space, FAR.0, FAR.1).unwrap();
    usage.iter().map(|(_, b)| b).sum()
}

/// A sybil space (registered by no one), a space of an unknown provider and
/// spaces of known providers (one configured, and the tracker itself for
/// what its operator registers over the admin API).
#[tokio::test(flavor = "multi_thread")]
async fn only_spaces_of_known_providers_count() {
    let tracker = start_tracker(known_settings(&["did:web:up.example"])).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (known, operator, foreign, sybil) =
        (principal(30), principal(31), principal(32), principal(33));
    let register = |space: &Ed25519Signer, provider: &str| SpaceEntry {
        space: space.did().clone(),
        provider: provider.parse().unwrap(),
        customer: None,
    };
    tracker
        .store
        .put_space(&register(&known, "did:web:up.example"))
        .unwrap();
    tracker
        .store
        .put_space(&register(&foreign, "did:web:elsewhere.example"))
        .unwrap();
    // The operator registers a space over the admin API: the tracker is its
    // provider.
    let response = reqwest::Client::new()
        .put(format!("{}admin/spaces/{}", tracker.url, operator.did()))
        .bearer_auth(etracker_e2e::node::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let entry: serde_json::Value = response.json().await.unwrap();
    assert_eq!(entry["provider"], service().did().as_str());

    let retrievals = [
        direct(&known, 100, "known"),
        direct(&operator, 200, "operator"),
        direct(&foreign, 400, "foreign"),
        direct(&sybil, 800, "sybil"),
    ];
    let ok = count(
        &tracker,
        &server,
        &endpoint,
        &retrievals.iter().collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(ok.total_egress, 300, "{:?}", ok.errors);
    assert_eq!(ok.errors.len(), 2);
    assert!(
        ok.errors.iter().all(|e| e.name == "UnknownSpace"),
        "{:?}",
        ok.errors
    );
    assert!(ok
        .errors
        .iter()
        .any(|e| e.message.contains("elsewhere.example")));
    assert_eq!(billed(&tracker, known.did()), 100);
    assert_eq!(billed(&tracker, operator.did()), 200);
    assert_eq!(billed(&tracker, foreign.did()), 0);
    assert_eq!(billed(&tracker, sybil.did()), 0);
    assert_eq!(tracker.store.node_total(node().did()).unwrap(), 300);
}

/// The admin API manages the registry from this machine; a token, when set,
/// is required from anywhere.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_manages_the_registry() {
    let mut settings = known_settings(&[]);
    settings.admin_token = Some("s3cret".into());
    let tracker = start_tracker(settings).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}admin/spaces{path}", tracker.url);
    let space = alice().did().to_string();
    assert_eq!(client.get(url("")).send().await.unwrap().status(), 401);
    assert_eq!(
        client
            .put(url(&format!("/{space}")))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let put = client
        .put(url(&format!("/{space}")))
        .bearer_auth("s3cret")
        .body(r#"{"provider": "did:web:up.example", "customer": "did:mailto:example.com:alice"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let list = client
        .get(url(""))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    let lines = list.text().await.unwrap();
    let entries: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["space"], space.as_str());
    assert_eq!(entries[0]["customer"], "did:mailto:example.com:alice");
    let bad = client
        .put(url("/not-a-did"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let removed = client
        .delete(url(&format!("/{space}")))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    let removed: serde_json::Value = removed.json().await.unwrap();
    assert_eq!(removed["removed"], true);
    assert!(tracker.store.spaces().unwrap().is_empty());
}

/// Retrievals by non-billable actors (here an indexer with a delegation
/// from the space) count neither in `totalEgress` nor in the space's usage:
/// they are listed as `NonBillable`, recorded apart, shown in the metrics,
/// and counted once.
#[tokio::test(flavor = "multi_thread")]
async fn non_billable_retrievals_are_recorded_apart() {
    let indexer = principal(34);
    let mut settings = test_settings();
    settings.non_billable_actors = vec![indexer.did().clone()];
    let tracker = start_tracker(settings).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let space = alice();
    let by_client = retrieve_invocation(
        &bob(),
        node().did(),
        space.did(),
        0,
        99,
        &[retrieve_delegation(&space, bob().did())],
        "client",
    );
    let by_indexer = retrieve_invocation(
        &indexer,
        node().did(),
        space.did(),
        0,
        999,
        &[retrieve_delegation(&space, indexer.did())],
        "indexer",
    );
    let ok = count(&tracker, &server, &endpoint, &[&by_client, &by_indexer]).await;
    assert_eq!(ok.total_egress, 100);
    assert_eq!(ok.errors.len(), 1);
    assert_eq!(ok.errors[0].name, "NonBillable");
    assert!(
        ok.errors[0].message.contains("1000 bytes"),
        "{}",
        ok.errors[0].message
    );
    assert_eq!(billed(&tracker, space.did()), 100);
    assert_eq!(tracker.store.node_total(node().did()).unwrap(), 100);
    let apart = tracker
        .store
        .non_billable_usage(space.did(), FAR.0, FAR.1)
        .unwrap();
    assert_eq!(apart.iter().map(|(_, b)| b).sum::<u64>(), 1000);
    assert_eq!(tracker.store.stats().unwrap().non_billable_bytes, 1000);
    assert_eq!(
        metric(&tracker.url, "etracker_non_billable_bytes_total").await,
        1000
    );

    // Replayed: counted once, as any retrieval.
    let ok = count(&tracker, &server, &endpoint, &[&by_indexer]).await;
    assert_eq!(ok.errors[0].name, "DuplicateReceipt");
    assert_eq!(tracker.store.stats().unwrap().non_billable_bytes, 1000);
}

/// A consolidator deployed apart, counting every space, is told by the
/// tracker which spaces it does not bill; it settles the batch again in
/// the same run, listing them as `UnknownSpace`, and concludes.
#[tokio::test(flavor = "multi_thread")]
async fn a_remote_consolidator_learns_which_spaces_are_not_billed() {
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let consolidator_key = principal(6);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut settings = known_settings(&[]);
    settings.remote_consolidator = Some(RemoteConsolidator {
        url: format!("http://{}/", listener.local_addr().unwrap()),
        verifier: consolidator_key.verifier(),
    });
    let tracker = start_tracker(settings).await;
    let (registered, sybil) = (principal(35), principal(36));
    tracker
        .store
        .put_space(&SpaceEntry {
            space: registered.did().clone(),
            provider: service().did().clone(),
            customer: None,
        })
        .unwrap();
    let consolidator = remote_consolidator(&tracker.url)
        .billing(etracker_server::registry::SpacePolicy::Any, HashSet::new())
        .build();
    serve_consolidator(listener, consolidator);

    let archives = [
        archive(&direct(&registered, 10, "r")),
        archive(&direct(&sybil, 90, "s")),
    ];
    let task = track_batch(&tracker, &server, &endpoint, &node(), batch_of(&archives)).await;
    assert_eq!(
        consolidate_now(&tracker.url).await["concluded"],
        1,
        "refused once, settled again, concluded in one run"
    );
    let ok = consolidate_out(&fetch_receipt(&tracker.url, &task).await.unwrap()).unwrap();
    assert_eq!(ok.total_egress, 10);
    assert_eq!(ok.errors.len(), 1);
    assert_eq!(ok.errors[0].name, "UnknownSpace");
    assert_eq!(billed(&tracker, sybil.did()), 0);
}

/// `account/egress/get` from the real JS client (`AccountEgress.get` of
/// @storacha/capabilities): where the registry knows a space's customer, an
/// account reads the spaces it is the customer of, and no other whatever
/// its proofs; where it does not, only a space that granted the account
/// itself (`space/*`), not merely some capability on it.
#[tokio::test(flavor = "multi_thread")]
async fn accounts_read_their_spaces() {
    let account = "did:mailto:example.com:alice";
    let space = alice().did().to_string();
    let egress_get = |url: String, args: Vec<&'static str>| async move {
        let mut all = vec!["--url", url.as_str(), "--account", account];
        all.extend(args);
        let (code, out) = run_js("egress-get.js", &all).await;
        assert_eq!(code, 0, "{out}");
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        line["out"].clone()
    };
    let spaces_arg: &'static str = Box::leak(space.clone().into_boxed_str());

    // No registry (policy any): the space's own delegation decides.
    let open = start_tracker(test_settings()).await;
    let out = egress_get(
        open.url.clone(),
        vec!["--space-proof", "all", "--spaces", spaces_arg],
    )
    .await;
    assert!(out["ok"]["spaces"][&space].is_object(), "{out}");
    let out = egress_get(
        open.url.clone(),
        vec!["--space-proof", "retrieve", "--spaces", spaces_arg],
    )
    .await;
    assert_eq!(out["error"]["name"], "SpaceUnauthorized", "{out}");
    let out = egress_get(open.url.clone(), vec!["--space-proof", "retrieve"]).await;
    assert_eq!(out["ok"]["spaces"], serde_json::json!({}), "{out}");

    // The registry names the customer.
    let known = start_tracker(known_settings(&[])).await;
    let put = |customer: &str| SpaceEntry {
        space: alice().did().clone(),
        provider: service().did().clone(),
        customer: Some(customer.parse().unwrap()),
    };
    known.store.put_space(&put(account)).unwrap();
    let out = egress_get(known.url.clone(), vec![]).await;
    assert!(
        out["ok"]["spaces"][&space].is_object(),
        "no proof needed: {out}"
    );
    known
        .store
        .put_space(&put("did:mailto:example.com:mallory"))
        .unwrap();
    let out = egress_get(
        known.url.clone(),
        vec!["--space-proof", "all", "--spaces", spaces_arg],
    )
    .await;
    assert_eq!(out["error"]["name"], "SpaceUnauthorized", "{out}");
    let out = egress_get(known.url.clone(), vec!["--space-proof", "all"]).await;
    assert_eq!(out["ok"]["spaces"], serde_json::json!({}), "{out}");
}

/// Accounts as Storacha signs them in: the agent holds the account's
/// delegation attested by the upload service (a separate authority, not
/// the tracker). Configured in `ETRACKER_AUTHORITIES`, its attestation opens
/// `account/egress/get` (the real JS client invoking); the same session
/// attested under its DID with another key, or by an authority the tracker
/// does not know, is `Unauthorized`.
#[tokio::test(flavor = "multi_thread")]
async fn accounts_attested_by_the_upload_service_read_their_egress() {
    let account = "did:mailto:example.com:alice";
    let space = alice().did().to_string();
    let egress_get = |url: String, attester: &'static str| async move {
        let (code, out) = run_js(
            "egress-get.js",
            &["--url", &url, "--account", account, "--attester", attester],
        )
        .await;
        assert_eq!(code, 0, "{out}");
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        line["out"].clone()
    };
    let upload_service = principal(6).with_did("did:web:up.example".parse().unwrap());
    let entry = SpaceEntry {
        space: alice().did().clone(),
        provider: service().did().clone(),
        customer: Some(account.parse().unwrap()),
    };
    let mut settings = known_settings(&[]);
    settings.authorities = vec![upload_service.verifier()];
    let tracker = start_tracker(settings).await;
    tracker.store.put_space(&entry).unwrap();
    let out = egress_get(tracker.url.clone(), "authority").await;
    assert!(out["ok"]["spaces"][&space].is_object(), "{out}");
    let out = egress_get(tracker.url.clone(), "impostor").await;
    assert_eq!(out["error"]["name"], "Unauthorized", "{out}");

    // A tracker that does not count the upload service as an authority.
    let unaware = start_tracker(known_settings(&[])).await;
    unaware.store.put_space(&entry).unwrap();
    let out = egress_get(unaware.url.clone(), "authority").await;
    assert_eq!(out["error"]["name"], "Unauthorized", "{out}");
    let out = egress_get(unaware.url.clone(), "service").await;
    assert!(out["ok"]["spaces"][&space].is_object(), "{out}");
}
