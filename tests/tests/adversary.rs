//! A dishonest node that is not on any list: from real retrievals it
//! applies random sequences of mutations (re-encode a block, repeat, reorder,
//! re-sign as the node, re-issue under its own key, swap proofs between
//! receipts, change ranges, bloat archives, move receipts to another node's
//! batch, replay them in later batches) and has the real tracker count the
//! batches over HTTP. The retrievals include chains shifted in time (a proof
//! that has expired since: paid; one never valid with its retrieval: never),
//! chains laundered through a non-billable actor or through the other node
//! (never billed), and one the node authorizes for itself (never counted).
//! Whatever it does, the tracker pays and bills exactly the distinct
//! payable retrievals it counted, never one twice, never one not authorized,
//! never one to a node that did not serve it; and an honest node is never
//! paid less: what it submitted as signed is counted.

use std::collections::HashMap;

use etracker_e2e::attack::{
    archive_for, batch_of, carried_blocks, raw_block, reencode, reissued_by, Variant,
};
use etracker_e2e::node::{
    consolidate_now, invoke, retrieve_delegation, retrieve_invocation, start_tracker,
    test_settings, track_invocation, track_proof, BatchServer, RunningTracker,
};
use etracker_e2e::{alice, bob, principal, service};
use etracker_server::store::prelude::*;
use proptest::prelude::*;
use ucanto::dag::{decode_cbor, encode_cbor, Ipld};
use ucanto::principal::{Did, Ed25519Signer, Signer};
use ucanto::ucan::Invocation;

/// What the node does next.
#[derive(Clone, Debug)]
enum Op {
    /// The honest receipt of retrieval `r`, signed by the batch's node.
    Honest(usize),
    /// Retrieval `r`'s invocation re-encoded.
    Reencode(usize, Variant),
    /// Another receipt (another `meta`) for retrieval `r`.
    Resign(usize, u8),
    /// Retrieval `r` re-issued under the batch node's own key.
    Reissue(usize),
    /// Retrieval `r`'s range widened in its block (signature kept).
    WidenRange(usize),
    /// Retrieval `r`'s invocation with retrieval `s`'s proof blocks.
    SwapProofs(usize, usize),
    /// The `k`-th archive of the batch so far, again.
    Repeat(usize),
    /// Swap two archives of the batch so far.
    Reorder(usize, usize),
    /// Retrieval `r`'s archive padded with a block of `k` KiB.
    Bloat(usize, u8),
    /// Close the batch (to be tracked and counted), start one by node `n`.
    NextBatch(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0..RETRIEVALS;
    prop_oneof![
        3 => r.clone().prop_map(Op::Honest),
        3 => (r.clone(), 0..Variant::ALL.len()).prop_map(|(r, v)| Op::Reencode(r, Variant::ALL[v])),
        2 => (r.clone(), any::<u8>()).prop_map(|(r, t)| Op::Resign(r, t)),
        1 => r.clone().prop_map(Op::Reissue),
        1 => r.clone().prop_map(Op::WidenRange),
        1 => (r.clone(), r.clone()).prop_map(|(a, b)| Op::SwapProofs(a, b)),
        2 => any::<usize>().prop_map(Op::Repeat),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::Reorder(a, b)),
        1 => (r.clone(), 1..64u8).prop_map(|(r, k)| Op::Bloat(r, k)),
        2 => (0..2usize).prop_map(Op::NextBatch),
    ]
}

const RETRIEVALS: usize = 11;

/// How a retrieval of the world should be counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Billed to its space and paid to its node, once.
    Paid,
    /// Counted at most once, billed to no one, paid to no one: its chain
    /// passes through a non-billable actor, or another node.
    NonBillable,
    /// Never counted: its chain passes through its own node, or was never
    /// valid all at once.
    Never,
}

/// One retrieval: who served it, its invocation, its bytes, how it counts.
struct Retrieval {
    node: usize,
    invocation: Invocation,
    bytes: u64,
    kind: Kind,
}

/// The non-billable actor of the world's tracker.
fn indexer() -> Ed25519Signer {
    principal(27)
}

/// Two nodes; retrievals from two spaces, by a delegated agent and by a
/// space itself, served by either node; and, served by node 0: one on a
/// proof that expired since (paid), one on a proof never valid with it
/// (never), one laundered through the non-billable actor to a fresh key,
/// one the node authorizes for itself with the space's grant (never), and
/// one the other node makes with the space's grant (replication).
fn world() -> (Vec<Ed25519Signer>, Vec<Retrieval>) {
    let nodes = vec![etracker_e2e::node::node(), principal(25)];
    let spaces = [alice(), principal(26)];
    let agent = bob();
    let stamp = format!("{}-{}", std::process::id(), ucanto::ucan::now());
    let current = ucanto::ucan::now();
    // The space's own grants, and re-delegations of the first space's.
    let grant = |from: &Ed25519Signer,
                 to: &Did,
                 exp: Option<u64>,
                 nbf: Option<u64>,
                 proofs: &[ucanto::ucan::Delegation]| {
        let space = if proofs.is_empty() {
            from.did().clone()
        } else {
            spaces[0].did().clone()
        };
        etracker_e2e::node::grant(from, &space, to, exp, nbf, proofs)
    };
    let retrievals = (0..RETRIEVALS)
        .map(|i| {
            let (mut node, space) = (i % 2, &spaces[(i / 2) % 2]);
            let (start, end) = (0, 99 + 100 * i as u64);
            let nonce = format!("{stamp}-{i}");
            let by = |who: &Ed25519Signer, on: &Did, proofs: &[ucanto::ucan::Delegation]| {
                retrieve_invocation(who, on, spaces[0].did(), start, end, proofs, &nonce)
            };
            let mut kind = Kind::Paid;
            let invocation = match i {
                0..=5 if i % 3 == 0 => {
                    retrieve_invocation(space, nodes[node].did(), space.did(), start, end, &[], "")
                }
                0..=5 => {
                    let proof = retrieve_delegation(space, agent.did());
                    retrieve_invocation(
                        &agent,
                        nodes[node].did(),
                        space.did(),
                        start,
                        end,
                        &[proof],
                        &nonce,
                    )
                }
                6 => {
                    // Valid for an hour; its proof ended 100 s ago: dated then.
                    node = 0;
                    let proof = grant(&spaces[0], agent.did(), Some(current - 100), None, &[]);
                    let template = by(&agent, nodes[0].did(), &[]);
                    ucanto::ucan::Delegation::builder(&agent, nodes[0].did().clone())
                        .capability(template.capabilities()[0].clone())
                        .expiration(current + 3_600)
                        .nonce(nonce.clone())
                        .proof(proof)
                        .build()
                        .unwrap()
                }
                7 => {
                    // The proof starts after the retrieval ends.
                    node = 0;
                    kind = Kind::Never;
                    let proof = grant(
                        &spaces[0],
                        agent.did(),
                        Some(current + 600),
                        Some(current + 300),
                        &[],
                    );
                    by(&agent, nodes[0].did(), &[proof])
                }
                8 => {
                    node = 0;
                    kind = Kind::NonBillable;
                    let fresh = principal(28);
                    let to_indexer = grant(&spaces[0], indexer().did(), None, None, &[]);
                    let laundered = grant(&indexer(), fresh.did(), None, None, &[to_indexer]);
                    by(&fresh, nodes[0].did(), &[laundered])
                }
                9 => {
                    node = 0;
                    kind = Kind::Never;
                    let own = principal(29);
                    let to_node = grant(&spaces[0], nodes[0].did(), None, None, &[]);
                    let to_own = grant(&nodes[0], own.did(), None, None, &[to_node]);
                    by(&own, nodes[0].did(), &[to_own])
                }
                _ => {
                    node = 0;
                    kind = Kind::NonBillable;
                    let to_other = grant(&spaces[0], nodes[1].did(), None, None, &[]);
                    by(&nodes[1], nodes[0].did(), &[to_other])
                }
            };
            Retrieval {
                node,
                invocation,
                bytes: end - start + 1,
                kind,
            }
        })
        .collect();
    (nodes, retrievals)
}

/// The archive of retrieval `r` with a padding block of `kib` KiB carried
/// besides its proofs: a bloated archive, which counts as the plain one.
fn bloated(node: &Ed25519Signer, r: &Retrieval, kib: u8) -> Vec<u8> {
    let mut carried = carried_blocks(&r.invocation);
    carried.push(raw_block(vec![kib; usize::from(kib) * 1024]));
    archive_for(node, r.invocation.block(), &carried, "bloated")
}

/// Retrieval `r`'s invocation block with `nb.range` widened tenfold.
fn widened(invocation: &Invocation) -> Option<ucanto::dag::Block> {
    let Ipld::Map(mut map) = decode_cbor(&invocation.block().bytes).ok()? else {
        return None;
    };
    let Some(Ipld::List(att)) = map.get_mut("att") else {
        return None;
    };
    let Some(Ipld::Map(capability)) = att.first_mut() else {
        return None;
    };
    let Some(Ipld::Map(nb)) = capability.get_mut("nb") else {
        return None;
    };
    let Some(Ipld::List(range)) = nb.get_mut("range") else {
        return None;
    };
    if let Some(Ipld::Integer(end)) = range.get_mut(1) {
        *end = *end * 10 + 9;
    }
    Some(raw_block(encode_cbor(&Ipld::Map(map)).ok()?))
}

/// A batch the node's ops make: its node, its archives, and the
/// retrievals it holds as their node honestly signed them.
struct Batch {
    owner: usize,
    archives: Vec<Vec<u8>>,
    honest: Vec<usize>,
}

/// The batches the node's ops make.
fn batches(ops: &[Op], nodes: &[Ed25519Signer], honest: &[Retrieval]) -> Vec<Batch> {
    let mut done = Vec::new();
    let (mut owner, mut archives): (usize, Vec<Vec<u8>>) = (0, Vec::new());
    let mut submitted: Vec<usize> = Vec::new();
    for op in ops {
        let node = &nodes[owner];
        let archive = |block: &ucanto::dag::Block, carried: &[ucanto::dag::Block], tag: &str| {
            archive_for(node, block, carried, tag)
        };
        match op {
            Op::Honest(index) => {
                let r = &honest[*index];
                if r.node == owner {
                    submitted.push(*index);
                }
                archives.push(archive(
                    r.invocation.block(),
                    &carried_blocks(&r.invocation),
                    "",
                ));
            }
            Op::Reencode(r, variant) => {
                let r = &honest[*r];
                if let Some(block) = reencode(&r.invocation, *variant) {
                    archives.push(archive(&block, &carried_blocks(&r.invocation), ""));
                }
            }
            Op::Resign(r, tag) => {
                let r = &honest[*r];
                archives.push(archive(
                    r.invocation.block(),
                    &carried_blocks(&r.invocation),
                    &tag.to_string(),
                ));
            }
            Op::Reissue(r) => {
                let r = &honest[*r];
                let reissued = reissued_by(node, &r.invocation);
                archives.push(archive(reissued.block(), &carried_blocks(&reissued), ""));
            }
            Op::WidenRange(r) => {
                let r = &honest[*r];
                if let Some(block) = widened(&r.invocation) {
                    archives.push(archive(&block, &carried_blocks(&r.invocation), ""));
                }
            }
            Op::SwapProofs(a, b) => {
                let (a, b) = (&honest[*a], &honest[*b]);
                archives.push(archive(
                    a.invocation.block(),
                    &carried_blocks(&b.invocation),
                    "swap",
                ));
            }
            Op::Bloat(r, kib) => archives.push(bloated(node, &honest[*r], *kib)),
            Op::Repeat(k) if !archives.is_empty() => {
                let again = archives[k % archives.len()].clone();
                archives.push(again);
            }
            Op::Reorder(i, j) if !archives.is_empty() => {
                let n = archives.len();
                archives.swap(i % n, j % n);
            }
            Op::NextBatch(next) => {
                if !archives.is_empty() {
                    done.push(Batch {
                        owner,
                        archives: std::mem::take(&mut archives),
                        honest: std::mem::take(&mut submitted),
                    });
                }
                owner = *next;
            }
            Op::Repeat(_) | Op::Reorder(..) => {}
        }
    }
    if !archives.is_empty() {
        done.push(Batch {
            owner,
            archives,
            honest: submitted,
        });
    }
    done
}

/// Tracks and counts every batch in order; a batch the tracker refuses to
/// track (another node's CID) is simply not counted. First each node tracks
/// a batch of its own, so the tracker knows both as nodes. Returns the
/// retrievals honestly submitted, by their node, in batches it tracked.
async fn run(tracker: &RunningTracker, nodes: &[Ed25519Signer], batches: &[Batch]) -> Vec<usize> {
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    let mut submitted = Vec::new();
    let known = nodes.iter().enumerate().map(|(i, _)| Batch {
        owner: i,
        archives: vec![format!("not an archive {i}").into_bytes()],
        honest: Vec::new(),
    });
    let known: Vec<Batch> = known.collect();
    for batch in known.iter().chain(batches) {
        let node = &nodes[batch.owner];
        let (cid, bytes) = batch_of(&batch.archives);
        server.put(&cid, bytes);
        let proof = track_proof(&service(), node.did());
        let track = track_invocation(node, service().did(), cid, &endpoint, &[proof]);
        if invoke(&tracker.url, &track).await.out().is_ok() {
            let summary = consolidate_now(&tracker.url).await;
            assert_eq!(summary["retried"], 0, "{summary}");
            submitted.extend(&batch.honest);
        }
    }
    submitted
}

fn total(usage: Vec<(String, u64)>) -> u64 {
    usage.into_iter().map(|(_, bytes)| bytes).sum()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn a_dishonest_node_is_paid_for_honest_retrievals_only(ops in prop::collection::vec(op(), 1..24)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut settings = test_settings();
            settings.non_billable_actors = vec![indexer().did().clone()];
            let tracker = start_tracker(settings).await;
            let (nodes, honest) = world();
            let batches = batches(&ops, &nodes, &honest);
            let submitted = run(&tracker, &nodes, &batches).await;

            // Which honest retrievals were counted (each at most once: the
            // store keys them by what the client signed).
            let mut counted = Vec::new();
            for r in &honest {
                let id = etracker_server::store::CountedRetrieval {
                    retrieval: r.invocation.payload_id().unwrap(),
                    expires: r.invocation.expiration().unwrap_or_default(),
                };
                counted.extend(tracker.store.counted(nodes[r.node].did(), &[id]).unwrap());
            }
            let (mut by_node, mut by_space) = (HashMap::<usize, u64>::new(), HashMap::<Did, u64>::new());
            for (i, (retrieval, counted)) in honest.iter().zip(&counted).enumerate() {
                // Never counted: through its own node, or never valid at once.
                prop_assert!(retrieval.kind != Kind::Never || counted.is_none(), "retrieval {} counted", i);
                // An honest node is never paid less: what it submitted as
                // signed is counted (by that batch, or an earlier one).
                prop_assert!(retrieval.kind == Kind::Never || !submitted.contains(&i) || counted.is_some(), "retrieval {} submitted, not counted", i);
                if counted.is_some() && retrieval.kind == Kind::Paid {
                    *by_node.entry(retrieval.node).or_default() += retrieval.bytes;
                    let space = Did::parse(&retrieval.invocation.capabilities()[0].with).unwrap();
                    *by_space.entry(space).or_default() += retrieval.bytes;
                }
            }
            // Every node is paid exactly its counted honest retrievals…
            for (i, node) in nodes.iter().enumerate() {
                let paid = tracker.store.node_total(node.did()).unwrap();
                prop_assert_eq!(paid, by_node.get(&i).copied().unwrap_or(0), "node {}", i);
            }
            // …every space billed exactly its counted honest retrievals…
            for space in [alice(), principal(26)] {
                let billed = total(tracker.store.space_usage(space.did(), "2000-01-01", "2100-01-01").unwrap());
                prop_assert_eq!(billed, by_space.get(space.did()).copied().unwrap_or(0));
            }
            // …and nothing else was counted: the store's books balance.
            let stats = tracker.store.stats().unwrap();
            let honest_total: u64 = honest.iter().filter(|r| r.kind == Kind::Paid).map(|r| r.bytes).sum();
            prop_assert!(stats.total_bytes <= honest_total);
            prop_assert_eq!(stats.total_bytes, by_node.values().sum::<u64>());
            prop_assert_eq!(stats.counted_receipts, counted.iter().filter(|c| c.is_some()).count() as u64);
            let audit = tracker.store.audit().unwrap();
            prop_assert!(audit.problems.is_empty(), "{:?}", audit.problems);
            Ok(())
        })?;
    }
}
