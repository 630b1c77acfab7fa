//! What one invocation may make the validator spend: proofs cited, signature
//! checks (remembered, failures included, and budgeted) and message bytes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;
use crate::bounded::MAX_MESSAGE_BYTES;
use crate::dag::Ipld;
use crate::principal::{Ed25519Signer, Signature, Signer};
use crate::ucan::Proof;

const NOW: u64 = 1_800_000_000;
const EXP: u64 = 4_102_444_800;
const WEB_DID: &str = "did:web:tracker.example";

fn signer(seed: u8) -> Ed25519Signer {
    Ed25519Signer::from_seed([seed; 32])
}

fn web() -> Did {
    Did::parse(WEB_DID).unwrap()
}

/// `test/echo` on any resource, any nb.
struct Echo;

impl CapabilityParser for Echo {
    fn can(&self) -> &str {
        "test/echo"
    }
    fn parse(&self, capability: &Capability) -> Result<Capability, Violation> {
        Ok(capability.clone())
    }
}

/// The service's key under its did:web, counting the signatures it checks.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Verifier>,
    checks: AtomicUsize,
}

impl Counting {
    fn new() -> Arc<Self> {
        Arc::new(Counting {
            inner: signer(4).with_did(web()).verifier(),
            checks: AtomicUsize::new(0),
        })
    }
    fn checks(&self) -> usize {
        self.checks.load(Ordering::Relaxed)
    }
}

impl Verifier for Counting {
    fn did(&self) -> &Did {
        self.inner.did()
    }
    fn key_did(&self) -> &Did {
        self.inner.key_did()
    }
    fn verify(&self, payload: &[u8], signature: &Signature) -> bool {
        self.checks.fetch_add(1, Ordering::Relaxed);
        self.inner.verify(payload, signature)
    }
}

/// A delegation of test/echo on the service's did:web to bob, claiming the
/// service as issuer but signed with another key: its signature fails.
fn forged(nonce: &str) -> Delegation {
    Delegation::builder(&signer(6).with_did(web()), signer(2).did().clone())
        .capability(Capability::new("test/echo", WEB_DID))
        .expiration(EXP)
        .nonce(nonce)
        .build()
        .unwrap()
}

/// Bob's echo on the service's did:web citing `proofs`.
fn echo(proofs: impl IntoIterator<Item = Proof>) -> Delegation {
    let bob = signer(2);
    let mut builder = Delegation::builder(&bob, web())
        .capability(Capability::new("test/echo", WEB_DID))
        .expiration(EXP);
    for proof in proofs {
        builder = builder.proof(proof);
    }
    builder.build().unwrap()
}

/// `builder` citing each of `links`.
fn citing<'a>(
    builder: crate::ucan::DelegationBuilder<'a>,
    links: impl IntoIterator<Item = Cid>,
) -> crate::ucan::DelegationBuilder<'a> {
    links.into_iter().fold(builder, |b, link| b.proof(link))
}

fn config(authority: Arc<dyn Verifier>) -> ValidatorConfig {
    ValidatorConfig::new(authority).at(NOW)
}

/// A UCAN citing more proofs than allowed (a repeated link counts each
/// time) is refused before anything is resolved or verified, with a short
/// message; within the limit, it is validated.
#[test]
fn too_many_proofs_are_refused_before_any_check() {
    let authority = Counting::new();
    let missing = crate::dag::cid_of(crate::dag::DAG_CBOR, b"missing");
    // Issued by the authority, so its own signature is checked by `Counting`.
    let too_many = citing(
        Delegation::builder(&signer(4).with_did(web()), web())
            .capability(Capability::new("test/echo", signer(2).did().as_str()))
            .expiration(EXP),
        std::iter::repeat_n(missing, MAX_PROOFS + 1),
    )
    .build()
    .unwrap();
    let error = access(&too_many, &Echo, &config(authority.clone())).unwrap_err();
    assert_eq!(
        error.message,
        format!(
            "Claim {{\"can\":\"test/echo\"}} is not authorized\n  - Delegation {} cites 65 proofs, more than the 64 allowed",
            too_many.cid()
        )
    );
    assert!(matches!(
        error.invalid_proofs[..],
        [Failure::TooManyProofs {
            proofs: 65,
            max: 64,
            ..
        }]
    ));
    assert_eq!(error.invalid_proofs[0].name(), "TooManyProofs");
    assert_eq!(authority.checks(), 0, "nothing verified");

    // Allowed more, it is validated: signed, then its proofs are missing.
    let error = access(&too_many, &Echo, &config(authority.clone()).max_proofs(65)).unwrap_err();
    assert_eq!(authority.checks(), 1);
    assert!(
        error.message.contains("is not included"),
        "{}",
        error.message
    );

    // A proof in the chain citing too many is refused the same way.
    let proof = citing(
        Delegation::builder(&signer(1), signer(2).did().clone())
            .capability(Capability::new("test/echo", signer(1).did().as_str()))
            .expiration(EXP),
        (0..=MAX_PROOFS as u8).map(|n| crate::dag::cid_of(crate::dag::DAG_CBOR, &[n])),
    )
    .build()
    .unwrap();
    let invocation = Delegation::builder(&signer(2), web())
        .capability(Capability::new("test/echo", signer(1).did().as_str()))
        .expiration(EXP)
        .proof(proof.clone())
        .build()
        .unwrap();
    let error = access(&invocation, &Echo, &config(authority)).unwrap_err();
    let expected = format!(
        "Delegation {} cites 65 proofs, more than the 64 allowed",
        proof.cid()
    );
    assert!(error.message.contains(&expected), "{}", error.message);
}

/// A failed signature check is remembered like a success: the same bad
/// proof in many invocations is verified once, and reported each time as a
/// fresh check reports it.
#[test]
fn failed_signatures_are_remembered() {
    let authority = Counting::new();
    let bad = forged("a");
    let invocations: Vec<Delegation> = (0..5)
        .map(|n| {
            Delegation::builder(&signer(2), web())
                .capability(Capability::new("test/echo", WEB_DID))
                .expiration(EXP)
                .nonce(n.to_string())
                .proof(bad.clone())
                .build()
                .unwrap()
        })
        .collect();
    let fresh: Vec<String> = invocations
        .iter()
        .map(|i| {
            access(i, &Echo, &config(authority.clone()))
                .unwrap_err()
                .message
        })
        .collect();
    assert_eq!(authority.checks(), 5, "without a cache, every time");
    assert!(
        fresh[0].contains("does not has a valid signature"),
        "{}",
        fresh[0]
    );

    let cache = Arc::new(SignatureCache::with_capacity(16));
    let cached = config(authority.clone()).with_cache(cache.clone());
    for (invocation, message) in invocations.iter().zip(&fresh) {
        let error = access(invocation, &Echo, &cached).unwrap_err();
        assert_eq!(&error.message, message);
        let Failure::InvalidClaim(claim) = &error.failed_proofs[0] else {
            panic!("{error:?}")
        };
        let Failure::Proof { cause, .. } = &claim.invalid_proofs[0] else {
            panic!("{claim:?}")
        };
        assert_eq!(cause.name(), "InvalidSignature");
    }
    assert_eq!(authority.checks(), 6, "once with the cache");
    let bytes = &bad.block().bytes;
    assert_eq!(
        cache.outcome(&bad.cid(), authority.as_ref(), bytes),
        Some(false)
    );
    assert!(!cache.contains(&bad.cid(), authority.as_ref(), bytes));
    // Only for those bytes and that verifier.
    let other_bytes = bytes::Bytes::from([bytes.as_ref(), b"x"].concat());
    assert_eq!(
        cache.outcome(&bad.cid(), authority.as_ref(), &other_bytes),
        None
    );
    let other_key = signer(6).with_did(web()).verifier();
    assert_eq!(cache.outcome(&bad.cid(), other_key.as_ref(), bytes), None);

    // A remembered failure costs no budget; a view shares what was learnt.
    let view = Arc::new(cache.budgeted(0));
    let error = access(
        &invocations[0],
        &Echo,
        &config(authority.clone()).with_cache(view),
    )
    .unwrap_err();
    assert!(error.message.contains("does not has a valid signature"));
    assert_eq!(authority.checks(), 6);
}

/// A view of a shared cache with a budget of its own (one request's) stops
/// verifying when it is spent, while what the cache knows still counts.
#[test]
fn a_request_budget_bounds_fresh_checks() {
    let authority = Counting::new();
    let shared = SignatureCache::with_capacity(64);
    let proofs: Vec<Delegation> = (0..10).map(|n| forged(&n.to_string())).collect();
    let invocation = echo(proofs.iter().cloned().map(Proof::Delegation));
    let request = Arc::new(shared.budgeted(4));
    let error = access(
        &invocation,
        &Echo,
        &config(authority.clone()).with_cache(request.clone()),
    )
    .unwrap_err();
    // Bob's own signature (did:key) is one check; three proofs follow.
    assert_eq!(authority.checks(), 3);
    let full = error.render(usize::MAX);
    assert_eq!(
        full.matches("Signature verification budget exhausted")
            .count(),
        7
    );
    assert_eq!(full.matches("does not has a valid signature").count(), 3);
    assert!(!request.spend(), "spent");
    // The next request has a budget again, and the three failures are known.
    let next = Arc::new(shared.budgeted(7));
    let error = access(
        &invocation,
        &Echo,
        &config(authority.clone()).with_cache(next),
    )
    .unwrap_err();
    assert_eq!(authority.checks(), 10);
    let full = error.render(usize::MAX);
    assert_eq!(full.matches("does not has a valid signature").count(), 10);
}

/// An explanation of thousands of failures is rendered only as far as it
/// is kept: the message is at most 1 KiB, cut with a marker, and begins as
/// the whole message does.
#[test]
fn long_messages_are_cut_without_rendering_everything() {
    let links = (0..20_000u32).map(|n| crate::dag::cid_of(crate::dag::DAG_CBOR, &n.to_be_bytes()));
    let invocation = citing(
        Delegation::builder(&signer(2), web())
            .capability(Capability::new("test/echo", WEB_DID))
            .expiration(EXP),
        links,
    )
    .build()
    .unwrap();
    let authority = signer(4).with_did(web()).verifier();
    let error = access(&invocation, &Echo, &config(authority).max_proofs(20_000)).unwrap_err();
    assert!(
        error.message.len() <= MAX_MESSAGE_BYTES,
        "{}",
        error.message.len()
    );
    assert!(error.message.ends_with(" bytes cut]"), "{}", error.message);
    let full = error.render(usize::MAX);
    assert!(full.len() > 2_000_000, "{}", full.len());
    let kept = error.message.rsplit_once("… [").unwrap().0;
    assert!(full.starts_with(kept));
    // Rendering stopped a line or so past its budget.
    assert!(error.render(4096).len() < 4096 + 512);
    let claim = &error.failed_proofs[0];
    assert!(claim.message().len() <= MAX_MESSAGE_BYTES);
    assert!(claim.render(100).len() < 1024);
    let Ipld::Map(map) = error.to_ipld() else {
        panic!()
    };
    assert_eq!(map["message"], Ipld::String(error.message.clone()));
}

/// Short messages are rendered in full, as before: the nested and flat
/// renderings agree with each failure's own message.
#[test]
fn short_messages_are_whole() {
    let bad = forged("short");
    let authority = signer(4).with_did(web()).verifier();
    let error = access(
        &echo([Proof::Delegation(bad.clone())]),
        &Echo,
        &config(authority),
    )
    .unwrap_err();
    assert!(error.message.len() < MAX_MESSAGE_BYTES);
    assert_eq!(error.message, error.render(usize::MAX));
    let Failure::InvalidClaim(claim) = &error.failed_proofs[0] else {
        panic!()
    };
    let cause = &claim.invalid_proofs[0];
    assert_eq!(
        cause.message(),
        format!(
            "Capability can not be derived from prf:{} because:\n  - Proof {} issued by {WEB_DID} does not has a valid signature from {}\n    ℹ️ Probably issuer signed with a different key, which got rotated, invalidating delegations that were issued with prior keys",
            bad.cid(),
            bad.cid(),
            signer(4).did()
        )
    );
    assert!(error
        .message
        .contains(&super::js::li(&error.failed_proofs[0].message())));
    assert!(claim.message().contains(&super::js::li(&cause.message())));
}

/// Capabilities examined are bounded: a proof listing hundreds of
/// capabilities, cited again and again, ends at the limit instead of being
/// compared with the claim hundreds of thousands of times.
#[test]
fn capabilities_examined_count_as_checks() {
    let (alice, bob) = (signer(1), signer(2));
    let mut builder = Delegation::builder(&alice, bob.did().clone()).expiration(EXP);
    for i in 0..500 {
        builder = builder.capability(Capability::new("test/echo", format!("did:key:z{i}")));
    }
    let proof = builder.build().unwrap();
    let invocation = Delegation::builder(&bob, web())
        .capability(Capability::new("test/echo", alice.did().as_str()))
        .expiration(EXP);
    let invocation = (0..MAX_PROOFS)
        .fold(invocation, |b, _| b.proof(proof.clone()))
        .build()
        .unwrap();
    let authority = signer(4).with_did(web()).verifier();
    let error = access(
        &invocation,
        &Echo,
        &config(authority).max_capability_checks(1_000),
    )
    .unwrap_err();
    let Failure::InvalidClaim(claim) = &error.failed_proofs[0] else {
        panic!("{error:?}")
    };
    // The invocation's capability, then a proof's 500, then 499 of the
    // same proof cited again: 1,000.
    assert_eq!(claim.delegation_errors.len(), 499 + 500);
    assert!(matches!(
        claim.invalid_proofs[..],
        [Failure::LimitExceeded { limit: 1_000 }]
    ));
    assert!(error.render(usize::MAX).contains("limit of 1000 checks"));
}
