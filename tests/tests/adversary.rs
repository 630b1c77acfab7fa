//! A dishonest node that is not on any list: from real, honest retrievals it
//! applies random sequences of mutations (re-encode a block, repeat, reorder,
//! re-sign as the node, re-issue under its own key, swap proofs between
//! receipts, change ranges, move receipts to another node's batch, replay
//! them in later batches) and has the real tracker count the batches over
//! HTTP. Whatever it does, the tracker pays and bills exactly the distinct
//! honest retrievals it counted, never one twice, never one not authorized,
//! and never one to a node that did not serve it.

use std::collections::HashMap;

use cid::Cid;
use etracker_e2e::attack::{
    archive_for, batch_of, carried_blocks, raw_block, reencode, reissued_by, Variant,
};
use etracker_e2e::node::{
    consolidate_now, invoke, retrieve_delegation, retrieve_invocation, start_tracker,
    test_settings, track_invocation, track_proof, BatchServer, RunningTracker,
};
use etracker_e2e::{alice, bob, principal, service};
use etracker_server::store::Store;
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
        2 => (0..2usize).prop_map(Op::NextBatch),
    ]
}

const RETRIEVALS: usize = 6;

/// One honest retrieval: who served it, its invocation, its bytes.
struct Retrieval {
    node: usize,
    invocation: Invocation,
    bytes: u64,
}

/// Two nodes; retrievals from two spaces, by a delegated agent and by a
/// space itself, served by either node.
fn world() -> (Vec<Ed25519Signer>, Vec<Retrieval>) {
    let nodes = vec![etracker_e2e::node::node(), principal(25)];
    let spaces = [alice(), principal(26)];
    let agent = bob();
    let stamp = format!("{}-{}", std::process::id(), ucanto::ucan::now());
    let retrievals = (0..RETRIEVALS)
        .map(|i| {
            let (node, space) = (i % 2, &spaces[(i / 2) % 2]);
            let (start, end) = (0, 99 + 100 * i as u64);
            let invocation = if i % 3 == 0 {
                retrieve_invocation(space, nodes[node].did(), space.did(), start, end, &[], "")
            } else {
                let proof = retrieve_delegation(space, agent.did());
                let nonce = format!("{stamp}-{i}");
                retrieve_invocation(
                    &agent,
                    nodes[node].did(),
                    space.did(),
                    start,
                    end,
                    &[proof],
                    &nonce,
                )
            };
            Retrieval {
                node,
                invocation,
                bytes: end - start + 1,
            }
        })
        .collect();
    (nodes, retrievals)
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

/// The batches the node's ops make: (node index, archives).
fn batches(
    ops: &[Op],
    nodes: &[Ed25519Signer],
    honest: &[Retrieval],
) -> Vec<(usize, Vec<Vec<u8>>)> {
    let mut done = Vec::new();
    let (mut owner, mut archives): (usize, Vec<Vec<u8>>) = (0, Vec::new());
    for op in ops {
        let node = &nodes[owner];
        let archive = |block: &ucanto::dag::Block, carried: &[ucanto::dag::Block], tag: &str| {
            archive_for(node, block, carried, tag)
        };
        match op {
            Op::Honest(r) => {
                let r = &honest[*r];
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
                    done.push((owner, std::mem::take(&mut archives)));
                }
                owner = *next;
            }
            Op::Repeat(_) | Op::Reorder(..) => {}
        }
    }
    if !archives.is_empty() {
        done.push((owner, archives));
    }
    done
}

/// Tracks and counts every batch in order; a batch the tracker refuses to
/// track (another node's CID) is simply not counted.
async fn run(tracker: &RunningTracker, nodes: &[Ed25519Signer], batches: &[(usize, Vec<Vec<u8>>)]) {
    let server = BatchServer::default();
    let endpoint = server.serve().await;
    for (owner, archives) in batches {
        let node = &nodes[*owner];
        let (batch, bytes) = batch_of(archives);
        server.put(&batch, bytes);
        let proof = track_proof(&service(), node.did());
        let track = track_invocation(node, service().did(), batch, &endpoint, &[proof]);
        if invoke(&tracker.url, &track).await.out().is_ok() {
            let summary = consolidate_now(&tracker.url).await;
            assert_eq!(summary["retried"], 0, "{summary}");
        }
    }
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
            let tracker = start_tracker(test_settings()).await;
            let (nodes, honest) = world();
            let batches = batches(&ops, &nodes, &honest);
            run(&tracker, &nodes, &batches).await;

            // Which honest retrievals were counted (each at most once: the
            // store keys them by what the client signed).
            let ids: Vec<Cid> = honest.iter().map(|r| r.invocation.payload_id().unwrap()).collect();
            let counted = tracker.store.counted(&ids).unwrap();
            let (mut by_node, mut by_space) = (HashMap::<usize, u64>::new(), HashMap::<Did, u64>::new());
            for (retrieval, counted) in honest.iter().zip(&counted) {
                if counted.is_some() {
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
            let honest_total: u64 = honest.iter().map(|r| r.bytes).sum();
            prop_assert!(stats.total_bytes <= honest_total);
            prop_assert_eq!(stats.total_bytes, by_node.values().sum::<u64>());
            prop_assert_eq!(stats.counted_receipts, counted.iter().filter(|c| c.is_some()).count() as u64);
            let audit = tracker.store.audit().unwrap();
            prop_assert!(audit.problems.is_empty(), "{:?}", audit.problems);
            Ok(())
        })?;
    }
}
