//! A stranger's CPU flood: `space/egress/track` invocations on the tracker,
//! each citing delegations whose signatures fail, sent many at once. It
//! needs no credentials at all: any key signs the invocations.

use cid::Cid;
use etracker_capabilities::track::TrackNb;
use etracker_capabilities::{Ability, Track};
use ucanto::dag::cid_of;
use ucanto::message::AgentMessage;
use ucanto::principal::{Did, Ed25519Signer};
use ucanto::ucan::{Delegation, Invocation};

/// `n` delegations of `space/egress/track` on `tracker` to `audience`,
/// claiming the tracker as issuer but signed with another key: every
/// signature fails. `tag` makes them distinct from other sets.
pub fn forged_track_delegations(
    tracker: &Did,
    audience: &Did,
    tag: &str,
    n: usize,
) -> Vec<Delegation> {
    let forger = Ed25519Signer::from_seed([9; 32]).with_did(tracker.clone());
    (0..n)
        .map(|i| {
            Delegation::builder(&forger, audience.clone())
                .capability(Track::unrestricted(tracker))
                .no_expiration()
                .nonce(format!("{tag}-{i}"))
                .build()
                .expect("delegation")
        })
        .collect()
}

/// `attacker`'s track of a made-up batch (named by `tag`) on `tracker`,
/// citing `proofs` by link.
pub fn track_citing(
    attacker: &Ed25519Signer,
    tracker: &Did,
    tag: &str,
    proofs: &[Cid],
) -> Invocation {
    let batch = cid_of(ucanto::dag::CAR, tag.as_bytes());
    let nb = TrackNb::new(batch, "https://node.example/{cid}").expect("track nb");
    let mut builder = Delegation::builder(attacker, tracker.clone())
        .capability(Track::capability(tracker, &nb))
        .no_expiration();
    for proof in proofs {
        builder = builder.proof(*proof);
    }
    builder.build().expect("track invocation")
}

/// The CAR body of a message running `invocations` that also carries
/// `proofs` (which the invocations cite by link, so they count as embedded).
pub fn message_with(invocations: &[Invocation], proofs: &[Delegation]) -> Vec<u8> {
    let message = AgentMessage::build(invocations, &[]).expect("message");
    let blocks = message
        .blocks()
        .iter()
        .map(|b| (b.cid, b.bytes))
        .chain(proofs.iter().map(|p| (p.cid(), p.block().bytes.clone())));
    ucanto::car::encode(&[message.cid()], blocks)
}
