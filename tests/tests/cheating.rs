//! A dishonest storage node against the real tracker, over HTTP: every way
//! it could be paid for bytes nobody authorized, and what the tracker does.

use std::sync::Arc;

use cid::Cid;
use etracker_capabilities::conclude::ConcludeNb;
use etracker_capabilities::consolidate::{ConsolidateNb, ConsolidateOk};
use etracker_capabilities::track::TrackNb;
use etracker_capabilities::{Ability, Conclude, Consolidate, Track};
use etracker_e2e::attack::{archive_for, batch_of, carried_blocks, reencode, Variant};
use etracker_e2e::node::{
    consolidate_now, consolidate_out, consolidate_receipt, invoke, node, retrieve_delegation,
    retrieve_invocation, start_tracker, test_settings, track_batch, BatchServer, RunningTracker,
};
use etracker_e2e::{alice, bob, principal, service};
use etracker_server::store::prelude::*;
use ucanto::dag::{Ipld, IpldMap};
use ucanto::principal::{Absentee, Did, Ed25519Signer, Signer};
use ucanto::receipt::Receipt;
use ucanto::server::error_name;
use ucanto::ucan::{now, Capability, Delegation, Invocation};

/// Tracks `archives` as one batch of `node` and consolidates it; returns the
/// batch and the consolidate result.
async fn consolidate(
    tracker: &RunningTracker,
    server: &BatchServer,
    endpoint: &str,
    node: &Ed25519Signer,
    archives: &[Vec<u8>],
) -> (Cid, ConsolidateOk) {
    let (batch, bytes) = batch_of(archives);
    let task = track_batch(tracker, server, endpoint, node, (batch, bytes)).await;
    consolidate_now(&tracker.url).await;
    let receipt = consolidate_receipt(&tracker.url, &task)
        .await
        .expect("concluded");
    (batch, consolidate_out(&receipt).expect("a consolidate ok"))
}

/// The archive of an honest receipt for `invocation`.
fn honest(node: &Ed25519Signer, invocation: &Invocation) -> Vec<u8> {
    archive_for(node, invocation.block(), &carried_blocks(invocation), "")
}

fn receipt_of(archive: &[u8]) -> Cid {
    Receipt::archived_cid(archive).expect("an archive")
}

/// What the tracker answers for each re-encoding of a counted retrieval.
fn expected_error(variant: Variant) -> &'static str {
    match variant {
        // Written out defaults and wide integers: not what JS or Go write.
        Variant::NotBeforeZero | Variant::EmptyFacts | Variant::WideInteger => "NonCanonical",
        // Both shapes are canonical (JS writes `prf: []` and an empty nonce,
        // Go leaves them out): the same signed payload, the same retrieval.
        Variant::EmptyNonce | Variant::EmptyProofs => "DuplicateReceipt",
        // Bytes the decoder refuses outright.
        _ => "InvalidInvocation",
    }
}

/// A retrieval counts once whatever bytes carry it: every re-encoding a node
/// can make without the client's key, in the same batch and in later ones.
#[tokio::test(flavor = "multi_thread")]
async fn a_reencoded_retrieval_counts_once() {
    let tracker = start_tracker(test_settings()).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (node, space, agent) = (node(), alice(), bob());

    // Delegated (bob on alice's space, with a nonce) and direct (the space
    // itself, no nonce, no proofs: the shapes JS and Go differ on).
    let proof = retrieve_delegation(&space, agent.did());
    let delegated = retrieve_invocation(&agent, node.did(), space.did(), 0, 99, &[proof], "one");
    let direct = Delegation::builder(&space, node.did().clone())
        .capability(
            Capability::new("space/content/retrieve", space.did().as_str()).with_nb(IpldMap::from(
                [
                    (
                        "blob".to_string(),
                        Ipld::Map(IpldMap::from([(
                            "digest".to_string(),
                            Ipld::Bytes([[0x12, 0x20].as_slice(), &[9; 32]].concat()),
                        )])),
                    ),
                    (
                        "range".to_string(),
                        Ipld::List(vec![Ipld::Integer(0), Ipld::Integer(999)]),
                    ),
                ],
            )),
        )
        .expiration(now() + 30)
        .build()
        .unwrap();
    assert!(delegated.is_canonical() && direct.is_canonical());
    let honest_total = 100 + 1000;

    let mut archives = vec![honest(&node, &delegated), honest(&node, &direct)];
    let mut expected = Vec::new();
    for original in [&delegated, &direct] {
        for variant in Variant::ALL {
            let Some(block) = reencode(original, variant) else {
                continue;
            };
            assert_ne!(block.cid, original.cid(), "{variant:?} is a new block");
            let archive = archive_for(&node, &block, &carried_blocks(original), "");
            expected.push((receipt_of(&archive), variant));
            archives.push(archive);
        }
    }
    // Every class applies to one of the two retrievals.
    let classes: std::collections::HashSet<_> = expected.iter().map(|(_, v)| *v).collect();
    assert_eq!(classes.len(), Variant::ALL.len());

    let (first, ok) = consolidate(&tracker, &server, &endpoint, &node, &archives).await;
    assert_eq!(ok.total_egress, honest_total, "{:?}", ok.errors);
    assert_eq!(ok.errors.len(), expected.len(), "{:?}", ok.errors);
    for (receipt, variant) in &expected {
        let error = ok
            .errors
            .iter()
            .find(|e| e.receipt == *receipt)
            .unwrap_or_else(|| panic!("{variant:?} is not in errors[]"));
        assert_eq!(
            error.name,
            expected_error(*variant),
            "{variant:?}: {error:?}"
        );
    }

    // Later batches: the accepted re-encodings and the originals, in new
    // receipts the node signs, count nothing.
    let mut later = Vec::new();
    for original in [&delegated, &direct] {
        later.push(archive_for(
            &node,
            original.block(),
            &carried_blocks(original),
            "again",
        ));
        for variant in [Variant::EmptyNonce, Variant::EmptyProofs] {
            if let Some(block) = reencode(original, variant) {
                later.push(archive_for(
                    &node,
                    &block,
                    &carried_blocks(original),
                    "again",
                ));
            }
        }
    }
    let (_, ok) = consolidate(&tracker, &server, &endpoint, &node, &later).await;
    assert_eq!(ok.total_egress, 0, "{:?}", ok.errors);
    assert_eq!(ok.errors.len(), later.len());
    assert!(ok.errors.iter().all(|e| e.name == "DuplicateReceipt"));
    // One per retrieval names the batch that counted it; the other copies are
    // duplicates within this batch.
    let named = ok
        .errors
        .iter()
        .filter(|e| e.message.contains(&first.to_string()));
    assert_eq!(named.count(), 2, "{:?}", ok.errors);
    assert_eq!(
        tracker
            .store
            .space_usage(space.did(), "2000-01-01", "2100-01-01")
            .unwrap()
            .iter()
            .map(|(_, b)| b)
            .sum::<u64>(),
        honest_total
    );
}

/// A did:mailto account's delegation, forged (the account never signed it),
/// attested by `attester`, authorizes `agent` to retrieve from `space`: the
/// retrieval invocation the node makes up with it.
fn forged_retrieval(
    attester: &Ed25519Signer,
    node: &Did,
    space: &Ed25519Signer,
    agent: &Ed25519Signer,
    nonce: &str,
) -> Invocation {
    let account = Absentee::new("did:mailto:example.com:victim".parse().unwrap());
    // Real: the space owner delegated to their account (the node has seen it).
    let space_to_account = Delegation::builder(space, account.did().clone())
        .capability(Capability::new("space/*", space.did().as_str()))
        .no_expiration()
        .build()
        .unwrap();
    // Forged: the account cannot sign, so anyone can write this.
    let account_to_agent = Delegation::builder(&account, agent.did().clone())
        .capability(Capability::new(
            "space/content/retrieve",
            space.did().as_str(),
        ))
        .proof(space_to_account)
        .no_expiration()
        .build()
        .unwrap();
    let attestation = Delegation::builder(attester, agent.did().clone())
        .capability(
            Capability::new("ucan/attest", attester.did().as_str()).with_nb(IpldMap::from([(
                "proof".to_string(),
                Ipld::Link(account_to_agent.cid()),
            )])),
        )
        .no_expiration()
        .build()
        .unwrap();
    retrieve_invocation(
        agent,
        node,
        space.did(),
        0,
        4095,
        &[account_to_agent, attestation],
        nonce,
    )
}

/// The node is never an authority for its own receipts: its attestation of a
/// chain it forged counts nothing; the same chain attested by a configured
/// authority (the upload service that verified the account) counts.
#[tokio::test(flavor = "multi_thread")]
async fn only_configured_authorities_attest() {
    let upload_service = principal(21).with_did("did:web:upload.example".parse().unwrap());
    let mut settings = test_settings();
    settings.authorities = vec![upload_service.verifier()];
    let tracker = start_tracker(settings).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (node, space) = (node(), alice());
    let agent = principal(22); // a key the node holds

    // The node attests, and so does another key of the node's presenting
    // itself as an authority that is not configured.
    let impostor = principal(23).with_did("did:web:upload.example".parse().unwrap());
    let by_node = forged_retrieval(&node, node.did(), &space, &agent, "self");
    let by_impostor = forged_retrieval(&impostor, node.did(), &space, &agent, "impostor");
    let (_, ok) = consolidate(
        &tracker,
        &server,
        &endpoint,
        &node,
        &[honest(&node, &by_node), honest(&node, &by_impostor)],
    )
    .await;
    assert_eq!(ok.total_egress, 0, "{:?}", ok.errors);
    assert_eq!(ok.errors.len(), 2);
    for error in &ok.errors {
        assert_eq!(error.name, "Unauthorized", "{error:?}");
    }

    let by_authority = forged_retrieval(&upload_service, node.did(), &space, &agent, "authority");
    let (_, ok) = consolidate(
        &tracker,
        &server,
        &endpoint,
        &node,
        &[honest(&node, &by_authority)],
    )
    .await;
    assert_eq!(ok.total_egress, 4096, "{:?}", ok.errors);
    assert!(ok.errors.is_empty());
}

/// A capability on one's own DID needs no proof: track and conclude on the
/// node's DID, instead of the tracker's, are refused and store nothing.
#[tokio::test(flavor = "multi_thread")]
async fn self_issued_track_and_conclude_are_unauthorized() {
    let tracker = start_tracker(test_settings()).await;
    let node = node();
    let batch = ucanto::dag::cid_of(ucanto::dag::CAR, b"self-issued");
    let nb = TrackNb::new(batch, "http://node.example/receipts/{cid}").unwrap();
    let track = Delegation::builder(&node, service().did().clone())
        .capability(Track::capability(node.did(), &nb))
        .build()
        .unwrap();
    let receipt = invoke(&tracker.url, &track).await;
    assert_eq!(error_name(receipt.out()), Some("Unauthorized"));
    assert!(receipt.forks().is_empty());
    assert_eq!(tracker.store.record(&batch).unwrap(), None);

    let conclude = Delegation::builder(&node, service().did().clone())
        .capability(Conclude::capability(
            node.did(),
            &ConcludeNb {
                receipt: batch,
                tally: Vec::new(),
            },
        ))
        .build()
        .unwrap();
    let receipt = invoke(&tracker.url, &conclude).await;
    assert_eq!(error_name(receipt.out()), Some("Unauthorized"));
    assert_eq!(tracker.store.stats().unwrap().concluded, 0);
}

/// A consolidator deployed apart runs tasks of its tracker only: not a
/// node's own, nor one the node holds a delegation for.
#[tokio::test(flavor = "multi_thread")]
async fn a_remote_consolidator_runs_its_trackers_tasks_only() {
    use etracker_server::consolidator::{router, Consolidator};
    use ucanto::client::Connection;

    let consolidator_key = principal(6);
    let consolidator = Consolidator::builder(
        Arc::new(consolidator_key.clone()),
        service().verifier(),
        Connection::http(service().verifier(), "http://127.0.0.1:9/"),
    )
    .limits(test_settings().limits)
    .build();
    let url = etracker_e2e::serve(router(Arc::new(consolidator), 1 << 20)).await;
    let node = node();
    let cause = ucanto::dag::cid_of(ucanto::dag::DAG_CBOR, b"track");
    let nb = ConsolidateNb { cause };
    let delegated = Delegation::builder(&service(), node.did().clone())
        .capability(Capability::new(Consolidate::CAN, service().did().as_str()))
        .no_expiration()
        .build()
        .unwrap();
    let tasks = [
        // On the node's own DID: needs no proof, so refused before anything.
        Delegation::builder(&node, service().did().clone())
            .capability(Consolidate::capability(node.did(), &nb))
            .no_expiration()
            .build()
            .unwrap(),
        // On the tracker, without proof.
        Delegation::builder(&node, service().did().clone())
            .capability(Consolidate::capability(service().did(), &nb))
            .no_expiration()
            .build()
            .unwrap(),
        // On the tracker, with a delegation: still not the tracker.
        Delegation::builder(&node, service().did().clone())
            .capability(Consolidate::capability(service().did(), &nb))
            .proof(delegated)
            .no_expiration()
            .build()
            .unwrap(),
    ];
    for task in &tasks {
        let receipt = Connection::http(consolidator_key.verifier(), url.clone())
            .invoke(task)
            .await
            .unwrap();
        assert_eq!(
            error_name(receipt.out()),
            Some("Unauthorized"),
            "{:?}",
            receipt.out()
        );
    }
    // The tracker's own task, as public as its track receipt's fork, runs
    // only under a lease the tracker signed: not bare, not under a lease
    // the node made up, not under the tracker's lease for another batch.
    let track = Delegation::builder(&node, service().did().clone())
        .capability(Capability::new(
            "space/egress/track",
            service().did().as_str(),
        ))
        .build()
        .unwrap();
    let bare = etracker_server::consolidator::consolidate_task(&service(), &track).unwrap();
    let forged_lease = etracker_server::consolidator::lease::grant(
        &node,
        consolidator_key.did(),
        track.cid(),
        ucanto::ucan::now(),
        ucanto::ucan::now() + 600,
        "node",
    )
    .unwrap();
    let other_lease = etracker_server::consolidator::lease::grant(
        &service(),
        consolidator_key.did(),
        cause,
        ucanto::ucan::now(),
        ucanto::ucan::now() + 600,
        "replica",
    )
    .unwrap();
    for lease in [None, Some(&forged_lease), Some(&other_lease)] {
        let blocks = lease.map(|l| vec![l.block().clone()]).unwrap_or_default();
        let receipt = Connection::http(consolidator_key.verifier(), url.clone())
            .execute_with(std::slice::from_ref(&bare), blocks)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            error_name(receipt.out()),
            Some(etracker_server::consolidator::NOT_LEASED),
            "{:?}",
            receipt.out()
        );
    }
}

/// Authorization is judged when the retrieval was made (its invocation's
/// `exp − 1`), not when the batch is counted: a retrieval made just before
/// its proof expired counts; one made before its proof's `nbf` does not.
#[tokio::test(flavor = "multi_thread")]
async fn authorization_is_judged_when_the_retrieval_was_made() {
    let tracker = start_tracker(test_settings()).await;
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let (node, space, agent) = (node(), alice(), bob());
    let t = now();
    let proof = |exp: u64, nbf: Option<u64>| {
        let mut builder = Delegation::builder(&space, agent.did().clone())
            .capability(Capability::new(
                "space/content/retrieve",
                space.did().as_str(),
            ))
            .expiration(exp);
        if let Some(nbf) = nbf {
            builder = builder.not_before(nbf);
        }
        builder.build().unwrap()
    };
    // Both retrievals were made 60 s ago (their invocations expired 59 s ago).
    let made_at = t - 60;
    let retrieval = |proof: Delegation, tag: &str| {
        let template = retrieve_invocation(&agent, node.did(), space.did(), 0, 999, &[proof], tag);
        let mut builder = Delegation::builder(&agent, node.did().clone())
            .capability(template.capabilities()[0].clone())
            .expiration(made_at + 1)
            .nonce(tag);
        for proof in template.proofs() {
            builder = builder.proof(proof);
        }
        builder.build().unwrap()
    };
    // The proof expired 30 s ago, after the retrieval: counts.
    let before_expiry = retrieval(proof(t - 30, None), "before-expiry");
    // The proof became valid 30 s ago, after the retrieval: does not.
    let before_nbf = retrieval(proof(t + 3600, Some(t - 30)), "before-nbf");
    let (_, ok) = consolidate(
        &tracker,
        &server,
        &endpoint,
        &node,
        &[honest(&node, &before_expiry), honest(&node, &before_nbf)],
    )
    .await;
    assert_eq!(ok.total_egress, 1000, "{:?}", ok.errors);
    assert_eq!(ok.errors.len(), 1);
    assert_eq!(ok.errors[0].name, "Unauthorized");
    assert_eq!(
        ok.errors[0].receipt,
        receipt_of(&honest(&node, &before_nbf))
    );
}
