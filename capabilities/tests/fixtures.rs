//! The capabilities against the JS fixtures in `fixtures/capabilities/`
//! (written by `fixtures/js/gen-capabilities.js` with @storacha/capabilities
//! 2.3.1 and @ucanto/core).
//!
//! Principals are `Ed25519Signer::from_seed([n; 32])`: alice 1
//! (`did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX`), bob 2
//! (`did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH`), mallory 3,
//! service (the tracker) 4 (`did:key:z6Mkt6316e2PN3mZdB6N9CrzomJYUd1s5yBZi1XYHmwT9TUP`),
//! node 5 (`did:key:z6MkmtWtY63GQVBrpMyRJWEzsnxfsGkemu6CtMDwGTv4RYj2`), authority 6.

use std::sync::Arc;

use cid::Cid;
use etracker_capabilities::account_egress_get::{
    DailyStats, EgressGetNb, EgressGetOk, Period, SpaceEgress,
};
use etracker_capabilities::conclude::{
    attached_receipt, conclude_builder, conclude_invocation, ConcludeNb,
};
use etracker_capabilities::consolidate::{
    consolidate_invocation, ConsolidateError, ConsolidateNb, ConsolidateOk,
};
use etracker_capabilities::retrieve::{
    egress_bytes, Blob, ByteRange, EgressError, RetrieveError, RetrieveNb,
};
use etracker_capabilities::track::{TrackError, TrackNb, TrackOk};
use etracker_capabilities::ucan::attest::UcanAttestNb;
use etracker_capabilities::{
    read_out, Ability, Conclude, Consolidate, EgressGet, Empty, Outcome, Retrieve, Track,
    UcanAttest,
};
use ucanto::dag::{Block, BlockStore, Ipld, IpldMap, CAR, RAW};
use ucanto::principal::{Did, Ed25519Signer, Signer};
use ucanto::receipt::{Receipt, ReceiptParts};
use ucanto::ucan::{Capability, Delegation, Invocation};

/// `exp` of every fixture UCAN that expires (2100-01-01).
const EXP: u64 = 4102444800;
const ACCOUNT: &str = "did:mailto:example.com:alice";
const ENDPOINT: &str = "https://node.example/receipts/{cid}";

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../../fixtures/capabilities/", $name)).as_slice()
    };
}

fn vectors() -> serde_json::Value {
    serde_json::from_str(include_str!("../../fixtures/capabilities/vectors.json")).unwrap()
}

use ucanto::principal::fixtures::{alice, bob, node, service};

/// The blocks of a fixture CAR and its single root.
fn blocks(car: &[u8]) -> (Cid, Arc<BlockStore>) {
    let (header, blocks) = ucanto::car::decode(car).unwrap();
    let store = blocks
        .into_iter()
        .map(|(cid, bytes)| Block { cid, bytes })
        .collect();
    (header.roots[0], Arc::new(store))
}

fn delegation(car: &[u8]) -> Delegation {
    let (root, store) = blocks(car);
    Delegation::from_blocks(&root, store).unwrap()
}

fn receipt(car: &[u8]) -> Receipt {
    let (root, store) = blocks(car);
    Receipt::from_blocks(&root, store).unwrap()
}

fn car_of(root: Cid, blocks: Vec<Block>) -> Vec<u8> {
    ucanto::car::encode(&[root], blocks.into_iter().map(|b| (b.cid, b.bytes)))
}

/// The Rust-built UCAN is the JS one, byte for byte, blocks and order included.
fn assert_same_ucan(rust: &Delegation, js_car: &[u8]) {
    let js = delegation(js_car);
    assert_eq!(rust.cid(), js.cid());
    assert_eq!(rust.block().bytes, js.block().bytes);
    assert_eq!(car_of(rust.cid(), rust.export()), js_car);
}

fn assert_same_receipt(rust: &Receipt, js_car: &[u8]) {
    let js = receipt(js_car);
    assert_eq!(rust.cid(), js.cid());
    assert_eq!(car_of(rust.cid(), rust.export()), js_car);
}

/// sha2-256 multihash of `text`, as the generator's `multihashOf`.
fn multihash(text: &str) -> Vec<u8> {
    ucanto::dag::cid_of(RAW, text.as_bytes()).hash().to_bytes()
}

fn did(text: &str) -> Did {
    Did::parse(text).unwrap()
}

fn only_capability(ucan: &Delegation) -> &Capability {
    let [capability] = ucan.capabilities() else {
        panic!("expected one capability")
    };
    capability
}

fn retrieve_nb(range: (u64, u64)) -> RetrieveNb {
    RetrieveNb {
        blob: Blob {
            digest: multihash("etracker-rs fixture blob"),
        },
        range: ByteRange::new(range.0, range.1).unwrap(),
    }
}

fn retrieve_proof() -> Delegation {
    Delegation::builder(&alice(), bob().did().clone())
        .capability(Retrieve::capability(alice().did(), &retrieve_nb((0, 1023))))
        .expiration(EXP)
        .build()
        .unwrap()
}

fn batch_cid() -> Cid {
    ucanto::dag::cid_of(CAR, fixture!("batch.car"))
}

fn track_proof() -> Delegation {
    Delegation::builder(&service(), node().did().clone())
        .capability(Track::unrestricted(service().did()))
        .no_expiration()
        .build()
        .unwrap()
}

fn track_invocation() -> Invocation {
    Delegation::builder(&node(), service().did().clone())
        .capability(Track::capability(
            service().did(),
            &TrackNb::new(batch_cid(), ENDPOINT).unwrap(),
        ))
        .expiration(EXP)
        .proof(track_proof())
        .build()
        .unwrap()
}

// ---- 1. round trips: parse the JS UCAN, rebuild it in Rust, same bytes ----

#[test]
fn retrieve_round_trips() {
    let js = delegation(fixture!("retrieve-invocation.car"));
    let parsed = Retrieve::parse(only_capability(&js)).unwrap();
    assert_eq!(parsed.with, *alice().did());
    assert_eq!(parsed.nb, retrieve_nb((0, 1023)));
    let rust = Delegation::builder(&alice(), node().did().clone())
        .capability(Retrieve::capability(&parsed.with, &parsed.nb))
        .expiration(EXP)
        .build()
        .unwrap();
    assert_same_ucan(&rust, fixture!("retrieve-invocation.car"));

    let rust = Delegation::builder(&alice(), node().did().clone())
        .capability(Retrieve::capability(
            alice().did(),
            &retrieve_nb((1024, 4095)),
        ))
        .expiration(EXP)
        .nonce("2")
        .build()
        .unwrap();
    assert_same_ucan(&rust, fixture!("retrieve-invocation-2.car"));

    assert_same_ucan(&retrieve_proof(), fixture!("retrieve-proof-alice-bob.car"));
    let rust = Delegation::builder(&bob(), node().did().clone())
        .capability(Retrieve::capability(
            alice().did(),
            &retrieve_nb((100, 199)),
        ))
        .expiration(EXP)
        .proof(retrieve_proof())
        .build()
        .unwrap();
    assert_same_ucan(&rust, fixture!("retrieve-invocation-delegated.car"));
}

#[test]
fn account_egress_get_round_trips() {
    let account = did(ACCOUNT);
    let build = |nb: &EgressGetNb, proofs: Vec<Delegation>| {
        proofs
            .into_iter()
            .fold(
                Delegation::builder(&alice(), service().did().clone())
                    .capability(EgressGet::capability(&account, nb))
                    .expiration(EXP),
                |b, p| b.proof(p),
            )
            .build()
            .unwrap()
    };

    let empty = delegation(fixture!("egress-get-empty.car"));
    assert_eq!(only_capability(&empty).nb, None);
    assert_eq!(
        EgressGet::parse(only_capability(&empty)).unwrap().nb,
        EgressGetNb::default()
    );
    assert_same_ucan(
        &build(&EgressGetNb::default(), vec![]),
        fixture!("egress-get-empty.car"),
    );

    let spaces = EgressGetNb {
        spaces: Some(vec![alice().did().clone(), bob().did().clone()]),
        period: None,
    };
    let js = delegation(fixture!("egress-get-spaces.car"));
    assert_eq!(EgressGet::parse(only_capability(&js)).unwrap().nb, spaces);
    assert_same_ucan(&build(&spaces, vec![]), fixture!("egress-get-spaces.car"));

    let period = EgressGetNb {
        spaces: None,
        period: Some(Period::new("2025-01-01", "2025-02-01")),
    };
    let js = delegation(fixture!("egress-get-period.car"));
    assert_eq!(EgressGet::parse(only_capability(&js)).unwrap().nb, period);
    assert_same_ucan(&build(&period, vec![]), fixture!("egress-get-period.car"));

    // account → alice, signed by the JS Absentee (did:mailto) signer.
    let pinned = EgressGetNb {
        spaces: Some(vec![alice().did().clone()]),
        period: None,
    };
    let account_proof = Delegation::builder(
        &ucanto::principal::Absentee::new(account.clone()),
        alice().did().clone(),
    )
    .capability(EgressGet::capability(&account, &pinned))
    .expiration(EXP)
    .build()
    .unwrap();
    assert_same_ucan(&account_proof, fixture!("egress-proof-account-alice.car"));

    let attestation = Delegation::builder(&service(), alice().did().clone())
        .capability(UcanAttest::capability(
            service().did(),
            &UcanAttestNb {
                proof: account_proof.cid(),
            },
        ))
        .expiration(EXP)
        .build()
        .unwrap();
    assert_same_ucan(&attestation, fixture!("egress-proof-attestation.car"));
    let js = delegation(fixture!("egress-proof-attestation.car"));
    assert_eq!(
        UcanAttest::parse(only_capability(&js)).unwrap().nb.proof,
        account_proof.cid()
    );

    let full = EgressGetNb {
        spaces: Some(vec![alice().did().clone()]),
        period: Some(Period::new("2025-01-01", "2025-02-01")),
    };
    let js = delegation(fixture!("egress-get-full.car"));
    assert_eq!(EgressGet::parse(only_capability(&js)).unwrap().nb, full);
    assert_same_ucan(
        &build(&full, vec![account_proof, attestation]),
        fixture!("egress-get-full.car"),
    );
}

#[test]
fn track_round_trips() {
    assert_eq!(batch_cid().to_string(), vectors()["batch"]["cid"]);
    let js = delegation(fixture!("track-invocation.car"));
    let parsed = Track::parse(only_capability(&js)).unwrap();
    assert_eq!(parsed.with, *service().did());
    assert_eq!(parsed.nb, TrackNb::new(batch_cid(), ENDPOINT).unwrap());
    assert_eq!(
        parsed.nb.url(),
        format!("https://node.example/receipts/{}", batch_cid())
    );
    assert_same_ucan(&track_proof(), fixture!("track-proof.car"));
    assert_same_ucan(&track_invocation(), fixture!("track-invocation.car"));
}

/// 2. The consolidate task is a pure function of the track invocation.
#[test]
fn consolidate_invocation_matches_js() {
    let track = delegation(fixture!("track-invocation.car"));
    let rust = consolidate_invocation(&service(), &track).unwrap();
    assert_same_ucan(&rust, fixture!("consolidate-invocation.car"));
    assert_eq!(rust.expiration(), None);
    assert_eq!(rust.data().nonce, None);
    let parsed = Consolidate::parse(only_capability(&rust)).unwrap();
    assert_eq!(parsed.nb, ConsolidateNb { cause: track.cid() });
    // Again, from the Rust-built track invocation: same CID.
    assert_eq!(
        consolidate_invocation(&service(), &track_invocation())
            .unwrap()
            .cid(),
        rust.cid()
    );
}

#[test]
fn conclude_round_trips() {
    let consolidate_receipt = receipt(fixture!("consolidate-receipt.car"));
    let rust = conclude_builder(&service(), service().did(), &consolidate_receipt)
        .expiration(EXP)
        .build()
        .unwrap();
    assert_same_ucan(&rust, fixture!("conclude-invocation.car"));

    let js = delegation(fixture!("conclude-invocation.car"));
    let parsed = Conclude::parse(only_capability(&js)).unwrap();
    assert_eq!(
        parsed.nb,
        ConcludeNb {
            receipt: consolidate_receipt.cid(),
            tally: Vec::new(),
        }
    );
    let attached = attached_receipt(&js, &parsed.nb).unwrap();
    assert_eq!(attached.data(), consolidate_receipt.data());
    assert!(attached.verify_signature(service().verifier().as_ref()));

    let bare = Delegation::builder(&service(), service().did().clone())
        .capability(Conclude::capability(service().did(), &parsed.nb))
        .expiration(EXP)
        .build()
        .unwrap();
    assert_same_ucan(&bare, fixture!("conclude-invocation-bare.car"));
    assert!(attached_receipt(&bare, &parsed.nb).is_err());

    // From a separate consolidator, with its proof and the default expiry.
    let consolidator = ucanto::principal::fixtures::authority();
    let proof = Delegation::builder(&service(), consolidator.did().clone())
        .capability(Conclude::unrestricted(service().did()))
        .no_expiration()
        .build()
        .unwrap();
    let invocation = conclude_invocation(
        &consolidator,
        service().did(),
        &consolidate_receipt,
        [proof.clone().into()],
    )
    .unwrap();
    assert_eq!(
        invocation.capabilities(),
        &[Conclude::capability(service().did(), &parsed.nb)]
    );
    assert_eq!(invocation.data().proofs, vec![proof.cid()]);
    assert!(invocation.expiration().is_some());
    assert_eq!(
        attached_receipt(&invocation, &parsed.nb).unwrap().cid(),
        consolidate_receipt.cid()
    );
    let authorization =
        ucanto::validator::access(&invocation, Conclude::parser().as_ref(), &tracker_config())
            .unwrap();
    assert_eq!(authorization.issuer, *consolidator.did());
}

#[test]
fn receipts_round_trip() {
    let issue =
        |signer: &Ed25519Signer, parts: ReceiptParts| Receipt::issue(signer, parts).unwrap();

    let ran = delegation(fixture!("retrieve-invocation.car"));
    let rust = issue(&node(), ReceiptParts::new(&ran, Ok(Empty.to_ipld())));
    assert_same_receipt(&rust, fixture!("retrieve-receipt-ok.car"));
    let ran = delegation(fixture!("retrieve-invocation-2.car"));
    assert_same_receipt(
        &issue(&node(), ReceiptParts::new(&ran, Ok(Empty.to_ipld()))),
        fixture!("retrieve-receipt-ok-2.car"),
    );

    let js = receipt(fixture!("retrieve-receipt-error.car"));
    let error = read_out::<Empty, RetrieveError>(js.out())
        .unwrap()
        .unwrap_err();
    assert_eq!(
        error,
        RetrieveError::RangeNotSatisfiable {
            message: "range [100, 199] is not satisfiable".into()
        }
    );
    let ran = delegation(fixture!("retrieve-invocation-delegated.car"));
    let rust = issue(&node(), ReceiptParts::new(&ran, Err(error.to_ipld())));
    assert_same_receipt(&rust, fixture!("retrieve-receipt-error.car"));

    let js = receipt(fixture!("egress-get-receipt-ok.car"));
    let ok = read_out::<EgressGetOk, Empty>(js.out()).unwrap().unwrap();
    let expected = EgressGetOk {
        total: 4096,
        spaces: [(
            alice().did().clone(),
            SpaceEgress {
                total: 4096,
                daily_stats: vec![
                    DailyStats {
                        date: "2025-01-05".into(),
                        egress: 1024,
                    },
                    DailyStats {
                        date: "2025-01-06".into(),
                        egress: 3072,
                    },
                ],
            },
        )]
        .into(),
    };
    assert_eq!(ok, expected);
    let ran = delegation(fixture!("egress-get-full.car"));
    assert_same_receipt(
        &issue(&service(), ReceiptParts::new(&ran, Ok(expected.to_ipld()))),
        fixture!("egress-get-receipt-ok.car"),
    );

    let track = track_invocation();
    let consolidate = consolidate_invocation(&service(), &track).unwrap();
    let rust = issue(
        &service(),
        ReceiptParts::new(&track, Ok(TrackOk::default().to_ipld())).fork(consolidate.clone()),
    );
    assert_same_receipt(&rust, fixture!("track-receipt.car"));
    let js = receipt(fixture!("track-receipt.car"));
    assert_eq!(
        js.forks().iter().map(Delegation::cid).collect::<Vec<_>>(),
        vec![consolidate.cid()]
    );

    let js = receipt(fixture!("track-receipt-error.car"));
    let error = read_out::<Empty, TrackError>(js.out())
        .unwrap()
        .unwrap_err();
    assert_eq!(error, TrackError::new("could not track batch"));
    assert_same_receipt(
        &issue(&service(), ReceiptParts::new(&track, Err(error.to_ipld()))),
        fixture!("track-receipt-error.car"),
    );

    let js = receipt(fixture!("consolidate-receipt.car"));
    let ok = read_out::<ConsolidateOk, ConsolidateError>(js.out())
        .unwrap()
        .unwrap();
    assert_eq!(
        ok,
        ConsolidateOk {
            total_egress: 4096,
            errors: vec![]
        }
    );
    assert_same_receipt(
        &issue(
            &service(),
            ReceiptParts::new(&consolidate, Ok(ok.to_ipld())),
        ),
        fixture!("consolidate-receipt.car"),
    );
}

// ---- 5. egress of retrieve receipts ----

#[test]
fn egress_bytes_of_fixture_receipts() {
    assert_eq!(
        egress_bytes(&receipt(fixture!("retrieve-receipt-ok.car"))),
        Ok(1024)
    );
    assert_eq!(
        egress_bytes(&receipt(fixture!("retrieve-receipt-ok-2.car"))),
        Ok(3072)
    );
    let error = receipt(fixture!("retrieve-receipt-error.car"));
    assert_eq!(
        egress_bytes(&error),
        Err(EgressError::Failed {
            receipt: error.cid(),
            name: Some("RangeNotSatisfiable".into())
        })
    );
    assert!(matches!(
        egress_bytes(&receipt(fixture!("track-receipt.car"))),
        Err(EgressError::NotRetrieve { can }) if can == "space/egress/track"
    ));

    // The whole batch: receipt archives stored under car-codec CIDs.
    let (header, archives) = ucanto::car::decode(fixture!("batch.car")).unwrap();
    assert!(header.roots.is_empty());
    let total: u64 = archives
        .iter()
        .filter_map(|(_, archive)| egress_bytes(&Receipt::extract(archive).unwrap()).ok())
        .sum();
    assert_eq!(total, vectors()["batch"]["totalEgress"].as_u64().unwrap());
}

#[test]
fn egress_bytes_errors() {
    let ok = || Ok(Empty.to_ipld());
    // Only the invocation's link: its blocks are not in the receipt.
    let ran = delegation(fixture!("retrieve-invocation.car"));
    let linked = Receipt::issue(&node(), ReceiptParts::new(ran.cid(), ok())).unwrap();
    assert_eq!(
        egress_bytes(&linked),
        Err(EgressError::MissingInvocation(ran.cid()))
    );

    // A range written by a peer that did not check it.
    let with_range = |range: Vec<Ipld>| {
        let mut nb = Retrieve::to_nb(&retrieve_nb((0, 1)));
        nb.insert("range".into(), Ipld::List(range));
        let invocation = Delegation::builder(&alice(), node().did().clone())
            .capability(Capability::new(Retrieve::CAN, alice().did().as_str()).with_nb(nb))
            .expiration(EXP)
            .build()
            .unwrap();
        egress_bytes(&Receipt::issue(&node(), ReceiptParts::new(&invocation, ok())).unwrap())
    };
    let int = |i: i128| Ipld::Integer(i);
    assert_eq!(
        with_range(vec![int(5), int(3)]),
        Err(EgressError::EndBeforeStart { start: 5, end: 3 })
    );
    assert_eq!(
        with_range(vec![int(0), int(u64::MAX.into())]),
        Err(EgressError::Overflow)
    );
    assert_eq!(with_range(vec![int(1), int(u64::MAX.into())]), Ok(u64::MAX));
    assert_eq!(with_range(vec![int(7), int(7)]), Ok(1));
    let Err(EgressError::Malformed(err)) = with_range(vec![int(-1), int(3)]) else {
        panic!()
    };
    assert_eq!(err.field(), "nb.range[0]");
    let Err(EgressError::Malformed(err)) = with_range(vec![int(0)]) else {
        panic!()
    };
    assert_eq!(err.field(), "nb.range");
}

// ---- 3. derivation at the `derives` level ----

/// JS `resolveCapability`: the delegated capability takes the claim's `can`
/// (and `with` for `ucan:*`) and inherits the `nb` fields it does not pin.
fn resolve(claimed: &Capability, delegated: &Capability) -> Capability {
    let mut nb: IpldMap = claimed.nb.clone().unwrap_or_default();
    nb.extend(delegated.nb.clone().unwrap_or_default());
    let with = if delegated.with == "ucan:*" {
        claimed.with.clone()
    } else {
        delegated.with.clone()
    };
    Capability {
        can: claimed.can.clone(),
        with,
        nb: Some(nb),
    }
}

/// The validator's decision, reading each capability once (typed) as it
/// does; checked to be the decision on the capabilities as written.
fn derives<A: Ability>(
    claimed: &Capability,
    delegated: &Capability,
) -> Result<(), ucanto::validator::Violation> {
    let parser = A::parser();
    let resolved = resolve(claimed, delegated);
    let as_written = parser
        .parse(&resolved)
        .and_then(|d| parser.derives(&parser.parse(claimed)?, &d));
    let (claimed, claimed_typed) = parser.parse_typed(claimed)?;
    let (delegated, delegated_typed) = parser.parse_typed(&resolved)?;
    let typed = parser.derives_typed((&claimed, &claimed_typed), (&delegated, &delegated_typed));
    assert_eq!(typed, as_written, "typed and written derivations differ");
    // A proof that resolves to the claim itself is taken as the claim read:
    // reading what a parser wrote must give that again.
    for (written, typed) in [(&claimed, &claimed_typed), (&delegated, &delegated_typed)] {
        let read: Option<&etracker_capabilities::Parsed<A::Nb>> =
            typed.as_ref().and_then(|t| t.downcast_ref());
        let (again, again_typed) = parser.parse_typed(written).expect("reads what it wrote");
        assert_eq!(&again, written, "written form changed on a second reading");
        assert_eq!(again_typed.as_ref().and_then(|t| t.downcast_ref()), read);
        assert!(read.is_some(), "typed value of {}", A::CAN);
    }
    typed
}

fn proof_capability(invocation: &Delegation) -> Capability {
    let ucanto::ucan::Proof::Delegation(proof) = &invocation.proofs()[0] else {
        panic!("embedded proof")
    };
    only_capability(proof).clone()
}

#[test]
fn retrieve_proof_pins_blob_and_range() {
    let case = |car: &[u8]| {
        let invocation = delegation(car);
        derives::<Retrieve>(only_capability(&invocation), &proof_capability(&invocation))
    };
    assert_eq!(
        case(fixture!("derivations/retrieve-within-range.car")),
        Ok(())
    );
    assert_eq!(
        case(fixture!("derivations/retrieve-outside-range.car")).unwrap_err(),
        "byte range [0,2047] violates imposed [0,1023] constraint."
    );
    assert!(case(fixture!("derivations/retrieve-other-blob.car"))
        .unwrap_err()
        .message()
        .starts_with("digest z"));

    let proof = only_capability(&retrieve_proof()).clone();
    let claim = |with: &Did, range| Retrieve::capability(with, &retrieve_nb(range));
    assert_eq!(
        derives::<Retrieve>(&claim(alice().did(), (0, 1023)), &proof),
        Ok(())
    );
    assert!(derives::<Retrieve>(&claim(alice().did(), (1000, 1024)), &proof).is_err());
    assert!(derives::<Retrieve>(&claim(bob().did(), (0, 1)), &proof)
        .unwrap_err()
        .message()
        .starts_with("Can not derive"));
}

#[test]
fn account_proof_pins_spaces_and_period() {
    let case = |car: &[u8]| {
        let invocation = delegation(car);
        derives::<EgressGet>(only_capability(&invocation), &proof_capability(&invocation))
    };
    assert_eq!(
        case(fixture!("derivations/egress-get-allowed-space.car")),
        Ok(())
    );
    assert!(case(fixture!("derivations/egress-get-other-space.car"))
        .unwrap_err()
        .message()
        .contains("spaces constraint"));
    assert!(case(fixture!("derivations/egress-get-all-spaces.car"))
        .unwrap_err()
        .message()
        .contains("asks for all spaces"));
    assert!(case(fixture!("derivations/egress-get-other-period.car"))
        .unwrap_err()
        .message()
        .contains("period.to"));
}

#[test]
fn track_proof_pins_receipts_and_endpoint() {
    let other_batch = ucanto::dag::cid_of(CAR, b"another batch");
    let claim = |batch: Cid, endpoint: &str| {
        Track::capability(service().did(), &TrackNb::new(batch, endpoint).unwrap())
    };
    let pinned = Capability::new(Track::CAN, service().did().as_str()).with_nb(IpldMap::from([(
        "receipts".to_string(),
        Ipld::Link(batch_cid()),
    )]));
    assert_eq!(
        derives::<Track>(&claim(batch_cid(), ENDPOINT), &pinned),
        Ok(())
    );
    assert!(derives::<Track>(&claim(other_batch, ENDPOINT), &pinned)
        .unwrap_err()
        .message()
        .starts_with("receipts: "));

    let endpoint_pinned = Capability::new(Track::CAN, service().did().as_str()).with_nb(
        IpldMap::from([("endpoint".to_string(), Ipld::String(ENDPOINT.into()))]),
    );
    assert_eq!(
        derives::<Track>(&claim(other_batch, ENDPOINT), &endpoint_pinned),
        Ok(())
    );
    assert!(derives::<Track>(
        &claim(other_batch, "https://evil.example/{cid}"),
        &endpoint_pinned
    )
    .is_err());

    // Wildcard abilities and `ucan:*` resolve to the claim, then derive it.
    for (can, with) in [
        ("space/egress/*", service().did().as_str()),
        ("*", service().did().as_str()),
        ("*", "ucan:*"),
    ] {
        assert_eq!(
            derives::<Track>(&claim(batch_cid(), ENDPOINT), &Capability::new(can, with)),
            Ok(()),
            "{can} {with}"
        );
    }
    // Another tracker's capability does not.
    assert!(derives::<Track>(
        &claim(batch_cid(), ENDPOINT),
        &Track::unrestricted(alice().did())
    )
    .is_err());
}

#[test]
fn parser_parse_reports_the_field_and_drops_unknown_fields() {
    let parser = Track::parser();
    assert_eq!(parser.can(), "space/egress/track");
    let mut nb = Track::to_nb(&TrackNb::new(batch_cid(), ENDPOINT).unwrap());
    nb.insert("extra".into(), Ipld::Bool(true));
    let capability = Capability::new(Track::CAN, service().did().as_str()).with_nb(nb.clone());
    assert_eq!(
        parser.parse(&capability).unwrap(),
        Track::capability(service().did(), &Track::parse_nb(Some(&nb)).unwrap())
    );

    nb.insert(
        "endpoint".into(),
        Ipld::String("gopher://node.example/{cid}".into()),
    );
    let err = parser
        .parse(&Capability::new(Track::CAN, service().did().as_str()).with_nb(nb.clone()))
        .unwrap_err();
    assert!(err.message().starts_with("nb.endpoint: "), "{err}");
    let err = parser
        .parse(&Capability::new(Track::CAN, "tracker").with_nb(nb.clone()))
        .unwrap_err();
    assert!(err.message().starts_with("with: "), "{err}");
    let err = parser
        .parse(&Capability::new(
            "space/egress/consolidate",
            service().did().as_str(),
        ))
        .unwrap_err();
    assert!(err.message().starts_with("can: "), "{err}");
}

// ---- 3. derivation through `ucanto::validator::access`, against JS `access()` ----

fn derivation_car(name: &str) -> &'static [u8] {
    macro_rules! cars {
        ($($name:literal),* $(,)?) => {
            match name {
                $($name => include_bytes!(concat!("../../fixtures/capabilities/derivations/", $name, ".car")).as_slice(),)*
                other => panic!("no derivation fixture {other}"),
            }
        };
    }
    cars!(
        "consolidate-self-issued",
        "egress-get-all-spaces",
        "egress-get-allowed-space",
        "egress-get-no-attestation",
        "egress-get-other-period",
        "egress-get-other-space",
        "retrieve-content-wildcard",
        "retrieve-other-blob",
        "retrieve-outside-range",
        "retrieve-self-issued",
        "retrieve-within-range",
        "track-direct",
        "track-egress-wildcard",
        "track-no-proof",
        "track-proof-not-from-service",
        "track-space-wildcard",
        "track-star",
        "track-ucan-star",
        "track-wrong-ability",
    )
}

fn parser_for(can: &str) -> Arc<dyn ucanto::validator::CapabilityParser> {
    match can {
        "space/content/retrieve" => Retrieve::parser(),
        "account/egress/get" => EgressGet::parser(),
        "space/egress/track" => Track::parser(),
        "space/egress/consolidate" => Consolidate::parser(),
        other => panic!("no parser for {other}"),
    }
}

/// JS prints a parsed capability's `nb` fields in schema order, ucanto in
/// dag-cbor key order (shorter keys first); the only two places that differ
/// in these fixtures.
fn in_dag_cbor_key_order(js: &str) -> String {
    let batch = batch_cid();
    js.replace(
        &format!(r#"{{"receipts":{{"/":"{batch}"}},"endpoint":"{ENDPOINT}"}}"#),
        &format!(r#"{{"endpoint":"{ENDPOINT}","receipts":{{"/":"{batch}"}}}}"#),
    )
    .replace(
        r#"{"from":"2025-01-01","to":"2025-03-01"}"#,
        r#"{"to":"2025-03-01","from":"2025-01-01"}"#,
    )
}

/// Every JS derivation outcome (ok: capability, issuer, proof chain; error:
/// name and message), reproduced by `access` with our parsers.
#[test]
fn access_matches_js_derivations() {
    let vectors = vectors();
    let cases = vectors["derivations"].as_array().unwrap();
    assert_eq!(cases.len(), 19);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let invocation = delegation(derivation_car(name));
        assert_eq!(invocation.cid().to_string(), case["root"], "{name}");
        let authority =
            ucanto::principal::verifier_for(&did(case["authority"].as_str().unwrap())).unwrap();
        let config = ucanto::validator::ValidatorConfig::new(authority).at(1_750_000_000);
        let parser = parser_for(case["capability"].as_str().unwrap());
        let result = ucanto::validator::access(&invocation, parser.as_ref(), &config);
        match (&case["ok"], result) {
            (ok, Ok(authorization)) if !ok.is_null() => {
                let capability =
                    Capability::from_ipld(&ucanto::dag_json::from_json(&ok["capability"]).unwrap())
                        .unwrap();
                assert_eq!(authorization.capability, capability, "{name}");
                assert_eq!(authorization.issuer.as_str(), ok["issuer"], "{name}");
                let chain: Vec<String> = std::iter::once(authorization.invocation)
                    .chain(authorization.proofs.iter().map(Delegation::cid))
                    .map(|c| c.to_string())
                    .collect();
                let expected: Vec<String> = ok["chain"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap().to_string())
                    .collect();
                assert_eq!(chain, expected, "{name}");
            }
            (ok, Err(unauthorized)) if ok.is_null() => {
                assert_eq!(unauthorized.name(), case["error"]["name"], "{name}");
                let js = case["error"]["message"].as_str().unwrap();
                assert_eq!(
                    unauthorized.message,
                    ucanto::bounded::message(in_dag_cbor_key_order(js)),
                    "{name}"
                );
            }
            (_, result) => panic!("{name}: JS says {case}, Rust says {result:?}"),
        }
    }
}

fn tracker_config() -> ucanto::validator::ValidatorConfig {
    ucanto::validator::ValidatorConfig::new(service().verifier()).at(1_750_000_000)
}

/// A tracker → node delegation pinning `receipts` authorizes only that batch.
#[test]
fn access_with_a_proof_pinning_receipts() {
    let other_batch = ucanto::dag::cid_of(CAR, b"another batch");
    let pinned = Delegation::builder(&service(), node().did().clone())
        .capability(
            Capability::new(Track::CAN, service().did().as_str()).with_nb(IpldMap::from([(
                "receipts".to_string(),
                Ipld::Link(batch_cid()),
            )])),
        )
        .no_expiration()
        .build()
        .unwrap();
    let invoke = |batch: Cid| {
        Delegation::builder(&node(), service().did().clone())
            .capability(Track::capability(
                service().did(),
                &TrackNb::new(batch, ENDPOINT).unwrap(),
            ))
            .expiration(EXP)
            .proof(pinned.clone())
            .build()
            .unwrap()
    };
    let parser = Track::parser();
    let ok = ucanto::validator::access(&invoke(batch_cid()), parser.as_ref(), &tracker_config())
        .unwrap();
    assert_eq!(
        Track::parse(&ok.capability).unwrap().nb.receipts,
        batch_cid()
    );
    assert_eq!(
        ok.proofs.iter().map(Delegation::cid).collect::<Vec<_>>(),
        vec![pinned.cid()]
    );
    let err = ucanto::validator::access(&invoke(other_batch), parser.as_ref(), &tracker_config())
        .unwrap_err();
    assert!(
        err.message
            .contains(&format!("receipts: {other_batch} violates {}", batch_cid())),
        "{}",
        err.message
    );

    // A malformed endpoint is refused before any proof is looked at, naming the field.
    let bad = Delegation::builder(&node(), service().did().clone())
        .capability(
            Capability::new(Track::CAN, service().did().as_str()).with_nb(IpldMap::from([
                ("receipts".to_string(), Ipld::Link(batch_cid())),
                (
                    "endpoint".to_string(),
                    Ipld::String("https://node.example/receipts".into()),
                ),
            ])),
        )
        .expiration(EXP)
        .proof(track_proof())
        .build()
        .unwrap();
    let err = ucanto::validator::access(&bad, parser.as_ref(), &tracker_config()).unwrap_err();
    assert!(err.message.contains("nb.endpoint: "), "{}", err.message);
}

/// A ucanto server providing `Track::parser()` answers the JS track
/// invocation with the JS track receipt, byte for byte (fork included).
#[tokio::test]
async fn server_track_receipt_matches_js() {
    use ucanto::server::{HandlerError, Request, Response, Server};
    let tracker: Arc<Ed25519Signer> = Arc::new(service());
    let signer = tracker.clone();
    let server = Server::builder(tracker)
        .provide(Track::parser(), move |request: Request| {
            let signer = signer.clone();
            async move {
                let parsed = Track::parse(&request.capability).map_err(HandlerError::new)?;
                assert_eq!(parsed.nb.receipts, batch_cid());
                let consolidate = consolidate_invocation(signer.as_ref(), &request.invocation)
                    .map_err(HandlerError::new)?;
                Ok(Response::ok(TrackOk::default().to_ipld()).fork(consolidate))
            }
        })
        .build();
    let receipt = server
        .run(delegation(fixture!("track-invocation.car")))
        .await
        .unwrap();
    assert_same_receipt(&receipt, fixture!("track-receipt.car"));
}
