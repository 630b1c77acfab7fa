//! Who pays, and for when: the chain of a retrieval's authorization decides
//! whether it is billed and paid, and its time window when (and whether)
//! it counts. Each attack of the "who pays" issue, black-box over HTTP.

use cid::Cid;
use etracker_capabilities::consolidate::ConsolidateOk;
use etracker_e2e::attack::batch_of;
use etracker_e2e::node::{
    batch, consolidate_now, consolidate_out, consolidate_receipt, good_receipts_of, grant, node,
    ok_receipt, retrieve_invocation, start_tracker, test_settings, track_batch, BatchServer,
    RunningTracker,
};
use etracker_e2e::{alice, bob, principal};
use etracker_server::service::Settings;
use etracker_server::store::prelude::*;
use ucanto::principal::{Did, Ed25519Signer, Signer};
use ucanto::receipt::Receipt;
use ucanto::ucan::{now, Delegation, Invocation};

/// Seconds in a day.
const DAY: u64 = 86_400;

/// A retrieval of 1,000 bytes by `agent` from `space` on the node, within
/// `exp`/`nbf`.
fn retrieval(
    agent: &Ed25519Signer,
    space: &Did,
    proofs: &[Delegation],
    exp: Option<u64>,
    nbf: Option<u64>,
    tag: &str,
) -> Receipt {
    let template = retrieve_invocation(agent, node().did(), space, 0, 999, &[], tag);
    let mut builder = Delegation::builder(agent, node().did().clone())
        .capability(template.capabilities()[0].clone())
        .nonce(tag);
    builder = match exp {
        Some(exp) => builder.expiration(exp),
        None => builder.no_expiration(),
    };
    if let Some(nbf) = nbf {
        builder = builder.not_before(nbf);
    }
    for proof in proofs {
        builder = builder.proof(proof.clone());
    }
    let invocation: Invocation = builder.build().unwrap();
    ok_receipt(&node(), &invocation)
}

/// The node tracks `receipts` as one batch; one consolidation run later,
/// what its receipt says.
async fn count(tracker: &RunningTracker, receipts: &[Receipt]) -> ConsolidateOk {
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let task = track_batch(tracker, &server, &endpoint, &node(), batch(receipts)).await;
    let summary = consolidate_now(&tracker.url).await;
    let receipt = consolidate_receipt(&tracker.url, &task).await;
    let receipt = receipt.unwrap_or_else(|| panic!("not concluded: {summary}"));
    consolidate_out(&receipt).unwrap()
}

/// The error names of `ok`, by receipt.
fn errors(ok: &ConsolidateOk) -> Vec<(Cid, String)> {
    ok.errors
        .iter()
        .map(|e| (e.receipt, e.name.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn chains_decide_who_pays() {
    let space = alice();
    let indexer = principal(40);
    let mut settings: Settings = test_settings();
    settings.non_billable_actors = vec![indexer.did().clone()];
    let tracker = start_tracker(settings).await;
    let soon = Some(now() + 600);

    // Another node, known to the tracker since it tracked a batch.
    let replica = principal(41);
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (theirs, theirs_total) = good_receipts_of(&replica, 1, "replica-own");
    track_batch(&tracker, &server, &endpoint, &replica, batch(&theirs)).await;

    // Laundering: the non-billable actor re-delegates to a fresh key.
    let fresh = principal(42);
    let to_indexer = grant(&space, space.did(), indexer.did(), soon, None, &[]);
    let laundered_grant = grant(
        &indexer,
        space.did(),
        fresh.did(),
        soon,
        None,
        &[to_indexer],
    );
    let laundered = retrieval(
        &fresh,
        space.did(),
        &[laundered_grant],
        soon,
        None,
        "laundered",
    );
    // The node authorizes its own traffic with a grant the space gave it.
    let own_key = principal(43);
    let to_node = grant(&space, space.did(), node().did(), soon, None, &[]);
    let own_grant = grant(&node(), space.did(), own_key.did(), soon, None, &[to_node]);
    let own = retrieval(&own_key, space.did(), &[own_grant], soon, None, "own");
    // Replication: the other node retrieves with the space's grant.
    let to_replica = grant(&space, space.did(), replica.did(), soon, None, &[]);
    let replicated = retrieval(
        &replica,
        space.did(),
        &[to_replica],
        soon,
        None,
        "replicated",
    );
    // And an honest retrieval, by bob.
    let to_bob = grant(&space, space.did(), bob().did(), soon, None, &[]);
    let honest = retrieval(&bob(), space.did(), &[to_bob], soon, None, "honest");

    let receipts = [laundered.clone(), own.clone(), replicated.clone(), honest];
    let ok = count(&tracker, &receipts).await;
    assert_eq!(
        ok.total_egress, 1_000,
        "only the honest retrieval is billed"
    );
    assert_eq!(
        errors(&ok),
        vec![
            (laundered.cid(), "NonBillable".to_string()),
            (own.cid(), "SelfAuthorized".to_string()),
            (replicated.cid(), "NonBillable".to_string()),
        ]
    );
    assert_eq!(tracker.store.node_total(node().did()).unwrap(), 1_000);
    let billed = tracker
        .store
        .space_usage(space.did(), "1970-01-01", "9999-12-31")
        .unwrap();
    // The space pays for the honest retrieval, and for what the other
    // node served it in a batch of its own.
    assert_eq!(
        billed.iter().map(|(_, b)| b).sum::<u64>(),
        1_000 + theirs_total
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retrieval_counts_when_its_chain_was_valid_together() {
    let space = alice();
    let tracker = start_tracker(test_settings()).await;
    let start = now();

    // Valid for an hour, on a proof that ends 3 s from now: served at
    // once, tracked 4.5 s later. Paid, dated at the proof's last second.
    let short = grant(&space, space.did(), bob().did(), Some(start + 3), None, &[]);
    let long = retrieval(
        &bob(),
        space.did(),
        &[short],
        Some(start + 3_600),
        None,
        "long",
    );
    // Never valid all at once: the proof starts after the retrieval ends.
    let later = grant(
        &space,
        space.did(),
        bob().did(),
        Some(start + 600),
        Some(start + 300),
        &[],
    );
    let disjoint = retrieval(
        &bob(),
        space.did(),
        &[later],
        Some(start + 60),
        None,
        "disjoint",
    );
    tokio::time::sleep(std::time::Duration::from_millis(4_500)).await;

    let ok = count(&tracker, &[long.clone(), disjoint.clone()]).await;
    assert_eq!(ok.total_egress, 1_000, "{:?}", ok.errors);
    assert_eq!(
        errors(&ok),
        vec![(disjoint.cid(), "Unauthorized".to_string())]
    );
    assert!(
        ok.errors[0].message.contains("never valid all at once"),
        "{}",
        ok.errors[0].message
    );
    // Booked to the day of the proof's last second (to_day is exclusive).
    let day = |at: u64| etracker_capabilities::account_egress_get::format_date((at / DAY) as i64);
    let billed = tracker
        .store
        .space_usage(space.did(), &day(start + 2), &day(start + 2 + DAY))
        .unwrap();
    assert_eq!(billed, vec![(day(start + 2), 1_000)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_and_unbounded_retrievals_are_refused() {
    let space = alice();
    let tracker = start_tracker(test_settings()).await;
    let current = now();
    let open = grant(&space, space.did(), bob().did(), None, None, &[]);
    let receipts = [
        // Dated 1970-01-02: a closed past.
        retrieval(
            &bob(),
            space.did(),
            std::slice::from_ref(&open),
            Some(2 * DAY),
            None,
            "epoch",
        ),
        // Dated ten days before its track.
        retrieval(
            &bob(),
            space.did(),
            std::slice::from_ref(&open),
            Some(current - 10 * DAY),
            None,
            "old",
        ),
        // Nothing in its chain ever expires.
        retrieval(
            &bob(),
            space.did(),
            std::slice::from_ref(&open),
            None,
            None,
            "forever",
        ),
        // Valid for a month after its track: longer than the freshness age.
        retrieval(
            &bob(),
            space.did(),
            std::slice::from_ref(&open),
            Some(current + 30 * DAY),
            None,
            "month",
        ),
        // Never expiring itself, on a proof that ends in a minute: its
        // claim could not be filed under its own expiry.
        retrieval(
            &bob(),
            space.did(),
            &[grant(
                &space,
                space.did(),
                bob().did(),
                Some(current + 60),
                None,
                &[],
            )],
            None,
            None,
            "forever on a short proof",
        ),
        // Valid for ten years itself, on a proof that ends in a minute.
        retrieval(
            &bob(),
            space.did(),
            &[grant(
                &space,
                space.did(),
                bob().did(),
                Some(current + 60),
                None,
                &[],
            )],
            Some(current + 10 * 365 * DAY),
            None,
            "ten years on a short proof",
        ),
        // Within the age: counts.
        retrieval(
            &bob(),
            space.did(),
            std::slice::from_ref(&open),
            Some(current - 2 * DAY),
            None,
            "recent",
        ),
    ];
    let ok = count(&tracker, &receipts).await;
    assert_eq!(ok.total_egress, 1_000, "{:?}", ok.errors);
    let names: Vec<String> = errors(&ok).into_iter().map(|(_, name)| name).collect();
    assert_eq!(
        names,
        [
            "StaleRetrieval",
            "StaleRetrieval",
            "NoExpiry",
            "ExpiresTooLate",
            "NoExpiry",
            "ExpiresTooLate"
        ]
    );
    let nothing = tracker
        .store
        .space_usage(space.did(), "1970-01-01", "1970-01-31")
        .unwrap();
    assert!(nothing.iter().all(|(_, b)| *b == 0), "{nothing:?}");
}

/// Claims do not grow forever: once no batch could count a retrieval again,
/// the record that it was counted goes, and the same retrieval tracked
/// again is refused as stale, not counted.
#[tokio::test(flavor = "multi_thread")]
async fn claims_go_once_no_batch_could_count_them() {
    let space = alice();
    let mut settings = test_settings();
    settings.limits.max_retrieval_age = 2;
    settings.limits.give_up_after = 1;
    settings.lease_secs = 1;
    let lifetime = settings.claim_lifetime();
    assert_eq!(lifetime, 2 * 2 + 1 + 1);
    let tracker = start_tracker(settings).await;
    let start = now();
    let to_bob = grant(&space, space.did(), bob().did(), None, None, &[]);
    let first = retrieval(
        &bob(),
        space.did(),
        &[to_bob],
        Some(start + 2),
        None,
        "kept",
    );
    let ok = count(&tracker, std::slice::from_ref(&first)).await;
    assert_eq!(ok.total_egress, 1_000, "{:?}", ok.errors);
    let retrieval_id =
        ucanto::ucan::Delegation::from_blocks(&first.ran_cid(), first.blocks().clone())
            .unwrap()
            .payload_id()
            .unwrap();
    let claim = [etracker_server::store::CountedRetrieval {
        retrieval: retrieval_id,
        expires: start + 2,
    }];
    assert!(tracker.store.counted(node().did(), &claim).unwrap()[0].is_some());

    // Past the end of its claim (the batch was tracked at `start` or just
    // after), a run drops it.
    tokio::time::sleep(std::time::Duration::from_secs(lifetime + 2)).await;
    consolidate_now(&tracker.url).await;
    assert_eq!(
        tracker.store.counted(node().did(), &claim).unwrap(),
        vec![None]
    );
    assert!(tracker.store.audit().unwrap().problems.is_empty());

    // The same retrieval, in another receipt (tagged), in a new batch.
    let invocation =
        ucanto::ucan::Invocation::from_blocks(&first.ran_cid(), first.blocks().clone()).unwrap();
    let again = etracker_e2e::attack::archive_for(
        &node(),
        invocation.block(),
        &etracker_e2e::attack::carried_blocks(&invocation),
        "again",
    );
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let task = track_batch(&tracker, &server, &endpoint, &node(), batch_of(&[again])).await;
    consolidate_now(&tracker.url).await;
    let ok = consolidate_out(&consolidate_receipt(&tracker.url, &task).await.unwrap()).unwrap();
    assert_eq!(ok.total_egress, 0);
    assert_eq!(
        ok.errors[0].name, "StaleRetrieval",
        "{}",
        ok.errors[0].message
    );
    assert_eq!(tracker.store.node_total(node().did()).unwrap(), 1_000);
}
