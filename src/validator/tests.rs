//! Replays the decisions of the real JS `access()` recorded by
//! `fixtures/js/gen-validator.js`, then checks what fixtures cannot show
//! (`now`, attesters, local proofs, bounded exploration, no panics).

use std::sync::Arc;

use serde_json::Value;

use super::*;
use crate::dag::{Block, BlockStore, Ipld};
use crate::principal::Signer;

/// Fixture times are valid until 2100, expired in 2020 or not valid before
/// 2096, so any time in between judges them like the JS run did.
const NOW: u64 = 1_800_000_000;
const EXP: u64 = 4_102_444_800;
const WEB_DID: &str = "did:web:tracker.example";

macro_rules! fixtures {
    ($($file:literal,)*) => {
        /// The CARs next to `cases.json`, by file name.
        fn fixture(file: &str) -> &'static [u8] {
            match file {
                $($file => include_bytes!(concat!("../../fixtures/validator/", $file)),)*
                other => panic!("fixture {other} is not embedded; add it to fixtures!"),
            }
        }
    };
}

fixtures! {
    "self-issued.car",
    "delegated.car",
    "chain-two-levels.car",
    "wildcard-ability.car",
    "namespace-ability.car",
    "ucan-resource.car",
    "nb-pinned-equal.car",
    "second-proof-valid.car",
    "linked-proof-resolved.car",
    "linked-proof-resolved.local-0.car",
    "did-web-issuer-is-authority.car",
    "mailto-attested.car",
    "did-web-issuer-attested.car",
    "pin-prefix.car",
    "no-proof.car",
    "proof-other-resource.car",
    "proof-other-ability.car",
    "nb-pinned-mismatch.car",
    "pin-prefix-mismatch.car",
    "proof-malformed-resource.car",
    "expired-proof.car",
    "proof-not-yet-valid.car",
    "proof-audience-mismatch.car",
    "forged-proof-signature.car",
    "forged-authority-signature.car",
    "linked-proof-missing.car",
    "malformed-nb.car",
    "missing-nb.car",
    "unknown-ability.car",
    "mailto-without-attestation.car",
    "attestation-other-cid.car",
    "attestation-not-by-authority.car",
    "attestation-escalated.car",
    "chain-expired-root.car",
    "expired-invocation.car",
    "invocation-not-yet-valid.car",
    "forged-invocation-signature.car",
    "did-web-invoker.car",
}

const CASES: &str = include_str!("../../fixtures/validator/cases.json");

fn cases() -> Vec<Value> {
    let all: Value = serde_json::from_str(CASES).expect("cases.json");
    all["cases"].as_array().expect("cases").clone()
}

fn case(name: &str) -> Value {
    cases()
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

/// Reads a CAR whose single root is a UCAN.
fn load(file: &str) -> Delegation {
    let (header, blocks) = crate::car::decode(fixture(file)).expect("car");
    let store: BlockStore = blocks
        .into_iter()
        .map(|(cid, bytes)| Block { cid, bytes })
        .collect();
    Delegation::from_blocks(&header.roots[0], Arc::new(store)).expect("ucan")
}

use crate::principal::fixtures::principal as signer;

use crate::principal::fixtures::{alice, bob, mallory, service};
fn did(text: &str) -> Did {
    Did::parse(text).expect("did")
}

/// The verifier of the service key under the DID a case names.
fn authority(did_text: &str) -> Arc<dyn Verifier> {
    if did_text == service().did().as_str() {
        service().verifier()
    } else {
        assert_eq!(did_text, WEB_DID);
        service().with_did(did(WEB_DID)).verifier()
    }
}

/// `test/echo` as the JS fixtures define it: `with: Schema.did()`,
/// `nb: Schema.struct({ text: Schema.string() })`, default `derives`.
struct Echo;

impl CapabilityParser for Echo {
    fn can(&self) -> &str {
        "test/echo"
    }
    fn parse(&self, capability: &Capability) -> Result<Capability, Violation> {
        parse_text(self.can(), capability)
    }
}

/// `test/pin`: like `test/echo`, but a delegation pins a prefix of `text`.
struct Pin;

impl CapabilityParser for Pin {
    fn can(&self) -> &str {
        "test/pin"
    }
    fn parse(&self, capability: &Capability) -> Result<Capability, Violation> {
        parse_text(self.can(), capability)
    }
    fn derives(&self, claimed: &Capability, delegated: &Capability) -> Result<(), Violation> {
        if claimed.with != delegated.with {
            return Err(format!("Resource {} is not {}", claimed.with, delegated.with).into());
        }
        let text = |c: &Capability| match c.nb.as_ref().and_then(|nb| nb.get("text")) {
            Some(Ipld::String(s)) => s.clone(),
            _ => String::new(),
        };
        let (claimed, delegated) = (text(claimed), text(delegated));
        if claimed.starts_with(&delegated) {
            Ok(())
        } else {
            Err(format!("text '{claimed}' does not start with '{delegated}'").into())
        }
    }
}

fn parse_text(can: &str, capability: &Capability) -> Result<Capability, Violation> {
    schema::did(&capability.with)?;
    let text = schema::string_field(capability.nb.as_ref(), "text")?;
    let nb = IpldMap::from([("text".to_string(), Ipld::String(text))]);
    Ok(Capability::new(can, capability.with.clone()).with_nb(nb))
}

fn parser(can: &str) -> &'static dyn CapabilityParser {
    match can {
        "test/echo" => &Echo,
        "test/pin" => &Pin,
        other => panic!("no parser for {other}"),
    }
}

/// The configuration a case ran with in JS, judged at `now`.
fn config_of(case: &Value, now: u64) -> ValidatorConfig {
    let mut config = ValidatorConfig::new(authority(case["authority"].as_str().unwrap())).at(now);
    for file in case["localProofs"].as_array().into_iter().flatten() {
        config = config.local_proof(load(file.as_str().unwrap()));
    }
    config
}

fn run(case: &Value, now: u64) -> Result<Authorization, Unauthorized> {
    let invocation = load(case["invocation"].as_str().unwrap());
    assert_eq!(invocation.cid().to_string(), case["cid"], "invocation CID");
    access(
        &invocation,
        parser(case["can"].as_str().unwrap()),
        &config_of(case, now),
    )
}

/// Runs a fixture case and asserts the JS outcome: the same parsed capability,
/// issuer and proof path, or the same error name and message, byte for byte.
fn check(name: &str) {
    let case = case(name);
    let result = run(&case, NOW);
    let expected = &case["result"];
    match (result, expected.get("ok"), expected.get("error")) {
        (Ok(auth), Some(ok), _) => {
            let capability = crate::dag_json::from_json(&ok["capability"]).unwrap();
            assert_eq!(auth.capability.to_ipld(), capability, "{name}: capability");
            assert_eq!(auth.issuer.as_str(), ok["issuer"], "{name}: issuer");
            let path: Vec<String> = auth.proofs.iter().map(|d| d.cid().to_string()).collect();
            let js_path: Vec<String> = ok["proofs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
            assert_eq!(path, js_path, "{name}: proof path");
        }
        (Err(error), _, Some(js)) => {
            assert_eq!(error.name(), js["name"], "{name}: error name");
            let js_message = js["message"].as_str().unwrap().to_string();
            let full = error.render(usize::MAX);
            assert_eq!(
                full, js_message,
                "{name}: message\n--- ours\n{full}\n--- js\n{js_message}"
            );
            // What a receipt carries: the same, cut to 1 KiB like any message.
            assert_eq!(error.message, crate::bounded::message(js_message));
        }
        (Ok(auth), None, _) => panic!("{name}: authorized ({auth:?}) but JS refused: {expected}"),
        (Err(error), Some(_), _) => panic!("{name}: refused but JS authorized:\n{}", error.message),
        (Err(error), None, None) => panic!("{name}: malformed case; ours: {}", error.message),
    }
}

macro_rules! cases {
    ($($(#[$doc:meta])* $test:ident = $name:literal;)*) => {
        $($(#[$doc])* #[test] fn $test() { super::check($name); })*
        /// The fixture cases this group covers.
        pub(super) const NAMES: &[&str] = &[$($name),*];
    };
}

mod authorized {
    cases! {
        /// Alice invokes test/echo on her own DID, no proofs.
        self_issued = "self-issued";
        /// Alice → bob test/echo on alice; bob invokes.
        delegated = "delegated";
        /// Alice → bob → mallory; mallory invokes on alice.
        chain_two_levels = "chain-two-levels";
        /// Alice → bob `{can: "*", with: alice}`.
        wildcard_ability = "wildcard-ability";
        /// Alice → bob `{can: "test/*", with: alice}`.
        namespace_ability = "namespace-ability";
        /// Alice → bob `{can: "test/echo", with: "ucan:*"}`.
        ucan_resource = "ucan-resource";
        /// Alice → bob pins nb.text = "hello"; bob invokes with "hello".
        nb_pinned_equal = "nb-pinned-equal";
        /// Bob invokes with an expired alice → bob proof and a valid one.
        second_proof_valid = "second-proof-valid";
        /// The alice → bob proof is only linked; the validator holds it locally.
        linked_proof_resolved = "linked-proof-resolved";
        /// The did:web authority (service key) → bob on itself; bob invokes.
        did_web_issuer_is_authority = "did-web-issuer-is-authority";
        /// did:mailto account (absent signature) → bob, attested by the did:web authority.
        mailto_attested = "mailto-attested";
        /// did:web:other.example → bob on itself, attested by the did:key service.
        did_web_issuer_attested = "did-web-issuer-attested";
        /// Custom derives: alice → bob test/pin text "hel"; bob invokes "hello".
        pin_prefix = "pin-prefix";
    }
}

mod unauthorized {
    cases! {
        /// Bob invokes on alice's DID without proofs.
        no_proof = "no-proof";
        /// Alice → bob test/echo on mallory's DID; bob invokes on alice's.
        proof_other_resource = "proof-other-resource";
        /// Alice → bob test/other; bob invokes test/echo (unknown capability).
        proof_other_ability = "proof-other-ability";
        /// Alice → bob pins nb.text = "other"; bob invokes with "hello".
        nb_pinned_mismatch = "nb-pinned-mismatch";
        /// Custom derives: alice → bob test/pin text "bye"; bob invokes "hello".
        pin_prefix_mismatch = "pin-prefix-mismatch";
        /// Alice → bob test/echo on "https://example.com" (malformed resource).
        proof_malformed_resource = "proof-malformed-resource";
        /// Alice → bob proof expired in 2020.
        expired_proof = "expired-proof";
        /// Alice → bob proof not valid before 2096.
        proof_not_yet_valid = "proof-not-yet-valid";
        /// Alice → mallory; bob invokes with it (principal alignment).
        proof_audience_mismatch = "proof-audience-mismatch";
        /// Alice → bob proof with one signature byte flipped.
        forged_proof_signature = "forged-proof-signature";
        /// The did:web authority → bob proof with one signature byte flipped.
        forged_authority_signature = "forged-authority-signature";
        /// The alice → bob proof is only linked and nobody holds it.
        linked_proof_missing = "linked-proof-missing";
        /// Alice invokes test/echo with nb `{text: 5}`.
        malformed_nb = "malformed-nb";
        /// Alice invokes test/echo without nb.
        missing_nb = "missing-nb";
        /// Alice invokes test/other; the claim is test/echo.
        unknown_ability = "unknown-ability";
        /// did:mailto account → bob without attestation.
        mailto_without_attestation = "mailto-without-attestation";
        /// did:mailto account → bob with an attestation of another delegation.
        attestation_other_cid = "attestation-other-cid";
        /// did:mailto account → bob attested by mallory on her own DID.
        attestation_not_by_authority = "attestation-not-by-authority";
        /// did:mailto account → bob with a ucan/attest on the authority issued by mallory.
        attestation_escalated = "attestation-escalated";
        /// Alice → bob (expired) → mallory; mallory invokes.
        chain_expired_root = "chain-expired-root";
    }
}

mod invalid {
    cases! {
        /// The invocation expired in 2020.
        expired_invocation = "expired-invocation";
        /// The invocation is not valid before 2096.
        invocation_not_yet_valid = "invocation-not-yet-valid";
        /// The invocation has one signature byte flipped.
        forged_invocation_signature = "forged-invocation-signature";
        /// did:web:other.example invokes on itself; its key cannot be resolved.
        did_web_invoker = "did-web-invoker";
    }
}

/// Every case in cases.json has its test, in the group it was generated in.
#[test]
fn every_fixture_case_is_tested() {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let group = match case["group"].as_str().unwrap() {
            "authorized" => authorized::NAMES,
            "unauthorized" => unauthorized::NAMES,
            "invalid" => invalid::NAMES,
            other => panic!("unknown group {other}"),
        };
        assert!(
            group.contains(&name),
            "case {name} has no test in its group"
        );
    }
}

/// An invocation of test/echo on `with` with `text`, with proofs.
fn echo(issuer: &dyn Signer, with: &str, text: &str, proofs: Vec<Delegation>) -> Delegation {
    let nb = IpldMap::from([("text".to_string(), Ipld::String(text.into()))]);
    let mut builder = Delegation::builder(issuer, service().did().clone())
        .capability(Capability::new("test/echo", with).with_nb(nb))
        .expiration(EXP);
    for proof in proofs {
        builder = builder.proof(proof);
    }
    builder.build().unwrap()
}

fn delegation(issuer: &dyn Signer, audience: &Did, capability: Capability, exp: u64) -> Delegation {
    Delegation::builder(issuer, audience.clone())
        .capability(capability)
        .expiration(exp)
        .build()
        .unwrap()
}

fn attestation(issuer: &dyn Signer, with: &Did, proof: &Delegation, exp: u64) -> Delegation {
    let nb = IpldMap::from([("proof".to_string(), Ipld::Link(proof.cid()))]);
    delegation(
        issuer,
        bob().did(),
        Capability::new("ucan/attest", with.as_str()).with_nb(nb),
        exp,
    )
}

/// `now` moves every time bound: a proof that expired in 2020 was fine in 2017,
/// an invocation valid from 2096 is fine after it.
#[test]
fn now_is_honored_for_invocations_and_proofs() {
    let expired = case("expired-proof");
    assert!(run(&expired, NOW).is_err());
    assert!(run(&expired, 1_500_000_000).is_ok());
    let early = case("invocation-not-yet-valid");
    assert!(
        run(&early, 4_000_000_000).is_err(),
        "nbf == now is still too early, as in JS"
    );
    assert!(run(&early, 4_000_000_001).is_ok());
    let delegated = case("delegated");
    assert!(run(&delegated, EXP - 1).is_ok());
    assert!(
        run(&delegated, EXP).is_err(),
        "exp == now is expired, as in JS"
    );
}

/// The attestation's own expiry is judged at `now` too.
#[test]
fn now_is_honored_for_attestations() {
    let web = mallory().with_did(did("did:web:other.example"));
    let proof = delegation(
        &web,
        bob().did(),
        Capability::new("test/echo", web.did().as_str()),
        EXP,
    );
    let attest = attestation(&service(), service().did(), &proof, 1_700_000_000);
    let invocation = echo(&bob(), web.did().as_str(), "hi", vec![proof, attest]);
    let config = ValidatorConfig::new(service().verifier());
    assert!(access(&invocation, &Echo, &config.clone().at(1_650_000_000)).is_ok());
    let error = access(&invocation, &Echo, &config.at(1_750_000_000)).unwrap_err();
    assert!(
        error
            .message
            .contains("Unable to resolve 'did:web:other.example' key"),
        "{}",
        error.message
    );
}

/// Configured attesters' sessions count, and their signatures must hold.
#[test]
fn attesters_are_accepted() {
    let web = mallory().with_did(did("did:web:other.example"));
    let attester = signer(5).with_did(did("did:web:attester.example"));
    let proof = delegation(
        &web,
        bob().did(),
        Capability::new("test/echo", web.did().as_str()),
        EXP,
    );
    let invocation = echo(
        &bob(),
        web.did().as_str(),
        "hi",
        vec![
            proof.clone(),
            attestation(&attester, attester.did(), &proof, EXP),
        ],
    );
    let config = ValidatorConfig::new(service().verifier()).at(NOW);
    assert!(
        access(&invocation, &Echo, &config).is_err(),
        "unknown attester"
    );
    let with_attester = config.clone().attester(attester.verifier());
    let auth = access(&invocation, &Echo, &with_attester).unwrap();
    assert_eq!(auth.proofs, vec![proof.clone()]);

    // The attester's DID, signed with another key.
    let impostor = signer(6).with_did(did("did:web:attester.example"));
    let forged = echo(
        &bob(),
        web.did().as_str(),
        "hi",
        vec![
            proof.clone(),
            attestation(&impostor, impostor.did(), &proof, EXP),
        ],
    );
    let error = access(&forged, &Echo, &with_attester).unwrap_err();
    assert!(
        error
            .message
            .contains("Unable to resolve 'did:web:other.example' key"),
        "{}",
        error.message
    );
}

/// As in JS, an audience of a `ucan/attest` the authority delegated (held
/// locally) may attest.
#[test]
fn locally_delegated_attesters_are_accepted() {
    let node = signer(5);
    let web = mallory().with_did(did("did:web:other.example"));
    let proof = delegation(
        &web,
        bob().did(),
        Capability::new("test/echo", web.did().as_str()),
        EXP,
    );
    let invocation = echo(
        &bob(),
        web.did().as_str(),
        "hi",
        vec![proof.clone(), attestation(&node, node.did(), &proof, EXP)],
    );
    let grant = delegation(
        &service(),
        node.did(),
        Capability::new("ucan/attest", service().did().as_str()),
        EXP,
    );
    let config = ValidatorConfig::new(service().verifier()).at(NOW);
    assert!(access(&invocation, &Echo, &config).is_err());
    assert!(access(&invocation, &Echo, &config.local_proof(grant)).is_ok());
}

/// The receipt error object is `{name, message, stack}` like JS's `toJSON()`.
#[test]
fn unauthorized_to_ipld() {
    let error = run(&case("no-proof"), NOW).unwrap_err();
    let Ipld::Map(map) = error.to_ipld() else {
        panic!("not a map")
    };
    assert_eq!(map["name"], Ipld::String("Unauthorized".into()));
    assert_eq!(map["message"], Ipld::String(error.message.clone()));
    assert_eq!(
        map["stack"],
        Ipld::String(format!("Unauthorized: {}", error.message))
    );
    assert_eq!(map.len(), 3);
    assert!(matches!(
        &error.failed_proofs[..],
        [Failure::InvalidClaim(_)]
    ));
}

/// `validate_time` and `validate` on single UCANs.
#[test]
fn single_ucan_checks() {
    let d = delegation(
        &alice(),
        bob().did(),
        Capability::new("test/echo", alice().did().as_str()),
        2_000,
    );
    assert!(validate_time(&d, 1_999).is_ok());
    assert!(matches!(
        validate_time(&d, 2_000),
        Err(Failure::Expired {
            expiration: 2_000,
            ..
        })
    ));
    let config = ValidatorConfig::new(service().verifier()).at(1_000);
    assert!(validate(&d, &[], &config).is_ok());
    let web = mallory().with_did(did("did:web:other.example"));
    let w = delegation(
        &web,
        bob().did(),
        Capability::new("test/echo", web.did().as_str()),
        2_000,
    );
    let error = validate(&w, &[], &config).unwrap_err();
    assert_eq!(error.name(), "DIDKeyResolutionError");
    assert_eq!(
        error.message(),
        "Unable to resolve 'did:web:other.example' key"
    );
}

/// A proof DAG with 2^16 paths, none of which grants the claim, ends at the
/// validation limit instead of exploring every path. (Proofs are linked and
/// held locally: embedding them would make building the DAG exponential.)
#[test]
fn exploration_is_bounded() {
    let wrong = Capability::new("test/echo", mallory().did().as_str());
    let mut held = Vec::new();
    let mut level: Vec<Delegation> = (0..2)
        .map(|n| {
            Delegation::builder(&alice(), bob().did().clone())
                .capability(wrong.clone())
                .expiration(EXP)
                .nonce(n.to_string())
                .build()
                .unwrap()
        })
        .collect();
    for depth in 0..16 {
        held.extend(level.iter().cloned());
        level = (0..2)
            .map(|n| {
                Delegation::builder(&bob(), bob().did().clone())
                    .capability(Capability::new("test/echo", alice().did().as_str()))
                    .expiration(EXP)
                    .nonce(format!("{depth}-{n}"))
                    .proof(level[0].cid())
                    .proof(level[1].cid())
                    .build()
                    .unwrap()
            })
            .collect();
    }
    let invocation = echo(&bob(), alice().did().as_str(), "hi", level);
    let mut config = ValidatorConfig::new(service().verifier()).at(NOW);
    config.local_proofs = held;
    let error = access(&invocation, &Echo, &config).unwrap_err();
    assert!(error
        .render(usize::MAX)
        .contains("Proof validation limit of 10000 checks exceeded"));
    assert!(error.message.len() <= crate::bounded::MAX_MESSAGE_BYTES);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Arbitrary abilities, resources and caveats, in the invocation and in
    /// its proof, never make `access` panic.
    #[test]
    fn access_never_panics(
        can in "[a-z*/]{0,12}",
        with in ".{0,24}",
        text in ".{0,16}",
        proof_can in "[a-z*/]{0,12}",
        proof_with in "(ucan:\\*|did:key:|did:web:)?.{0,16}",
        proof_text in proptest::option::of(".{0,8}"),
    ) {
        let nb = IpldMap::from([("text".to_string(), Ipld::String(text))]);
        let mut delegated = Capability::new(proof_can, proof_with);
        if let Some(proof_text) = proof_text {
            delegated = delegated.with_nb(IpldMap::from([("text".to_string(), Ipld::String(proof_text))]));
        }
        let proof = delegation(&alice(), bob().did(), delegated, EXP);
        let invocation = Delegation::builder(&bob(), service().did().clone())
            .capability(Capability::new(can, with).with_nb(nb))
            .expiration(EXP)
            .proof(proof)
            .build()
            .unwrap();
        let config = ValidatorConfig::new(service().verifier()).at(NOW);
        for parser in [&Echo as &dyn CapabilityParser, &Pin] {
            match access(&invocation, parser, &config) {
                Ok(auth) => proptest::prop_assert_eq!(auth.invocation, invocation.cid()),
                Err(error) => {
                    let prefix = "Claim {\"can\":";
                    proptest::prop_assert!(error.message.starts_with(prefix), "{}", error.message);
                }
            }
        }
    }
}

/// A signature cache shared by every case (as the consolidator shares one
/// across a batch) changes no outcome, however the cases are ordered: a
/// forged signature is never cached, and a verified one only for its verifier.
#[test]
fn shared_signature_cache_changes_no_outcome() {
    let cache = Arc::new(crate::validator::SignatureCache::default());
    let cases = cases();
    for round in 0..2 {
        for case in cases.iter().rev() {
            let name = case["name"].as_str().unwrap();
            let invocation = load(case["invocation"].as_str().unwrap());
            let parser = parser(case["can"].as_str().unwrap());
            let plain = access(&invocation, parser, &config_of(case, NOW));
            let cached = access(
                &invocation,
                parser,
                &config_of(case, NOW).with_cache(cache.clone()),
            );
            match (plain, cached) {
                (Ok(a), Ok(b)) => assert_eq!(
                    (a.capability, a.issuer, a.invocation),
                    (b.capability, b.issuer, b.invocation),
                    "{name} (round {round})"
                ),
                (Err(a), Err(b)) => assert_eq!(a.message, b.message, "{name} (round {round})"),
                (a, b) => panic!("{name} (round {round}): without cache {a:?}, with {b:?}"),
            }
        }
    }
}

/// Bob echoes on alice's DID with her delegation: two signatures to check.
fn delegated_echo() -> Delegation {
    let proof = delegation(
        &alice(),
        bob().did(),
        Capability::new("test/echo", alice().did().as_str()),
        EXP,
    );
    echo(&bob(), alice().did().as_str(), "hi", vec![proof])
}

/// A shared budget bounds the fresh signature checks of many calls (a batch):
/// spent, validation fails with `SignatureBudgetExceeded`; credited, it
/// goes on; signatures already verified cost nothing.
#[test]
fn a_shared_budget_bounds_signature_checks() {
    let invocation = delegated_echo();
    let cache = Arc::new(SignatureCache::with_budget(1));
    let config = ValidatorConfig::new(service().verifier())
        .at(NOW)
        .with_cache(cache.clone());
    let error = access(&invocation, &Echo, &config).unwrap_err();
    assert!(
        error
            .message
            .contains("Signature verification budget exhausted"),
        "{}",
        error.message
    );
    cache.credit(2);
    assert!(access(&invocation, &Echo, &config).is_ok());
    // One fresh check was needed (the first call verified the other): one
    // credit is left.
    assert!(cache.spend());
    assert!(!cache.spend());
    // With none left, signatures already verified still pass.
    assert!(access(&invocation, &Echo, &config).is_ok());
}

/// Proof checks per call are bounded by the configuration.
#[test]
fn max_validations_bounds_one_call() {
    let invocation = delegated_echo();
    let config = ValidatorConfig::new(service().verifier()).at(NOW);
    assert!(access(&invocation, &Echo, &config).is_ok());
    let error = access(&invocation, &Echo, &config.max_validations(1)).unwrap_err();
    assert!(
        error.message.contains("limit of 1 checks"),
        "{}",
        error.message
    );
}

/// A signature the caller verified itself (in a batch) is taken as valid for
/// that very UCAN and verifier, and for nothing else.
#[test]
fn a_presumed_signature_covers_one_ucan_and_one_verifier() {
    let case = case("forged-invocation-signature");
    let forged = load(case["invocation"].as_str().unwrap());
    let issuer = crate::principal::verifier_for(forged.issuer()).unwrap();
    let config = || config_of(&case, NOW);
    assert!(access(&forged, &Echo, &config()).is_err());
    let vouched = config().presume_signed(forged.clone(), issuer.clone());
    assert!(access(&forged, &Echo, &vouched).is_ok());
    // Another UCAN presumed signed leaves this one checked…
    let other = config().presume_signed(delegated_echo(), issuer);
    assert!(access(&forged, &Echo, &other).is_err());
    // …and so does the same UCAN presumed signed by another key.
    let by_mallory = config().presume_signed(forged.clone(), mallory().verifier());
    let error = access(&forged, &Echo, &by_mallory).unwrap_err();
    assert!(
        error.message.contains("valid signature"),
        "{}",
        error.message
    );
}
