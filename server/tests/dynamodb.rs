//! The DynamoDB backend against a local emulator (moto's server, started by
//! `scripts/test.sh`): the behavioural scenarios of `tests/store.rs`, each
//! on a table of its own, plus races between two replicas (two clients of one
//! table) and conclusions too large for one transaction.
//!
//! `ETRACKER_TEST_DYNAMODB` must be the emulator's URL: unset, every test
//! here fails (it is not skipped).

#![cfg(feature = "dynamodb")]

mod common;

use std::sync::Arc;

use common::*;
use etracker_server::store::dynamodb::DynamoStore;
use etracker_server::store::prelude::*;
use etracker_server::store::{ConcludeOutcome, RecordStatus, StoreError};
use proptest::prelude::*;

const ENDPOINT: &str = "ETRACKER_TEST_DYNAMODB";

fn endpoint() -> String {
    std::env::var(ENDPOINT).unwrap_or_else(|_| {
        panic!("{ENDPOINT} is unset: run a DynamoDB emulator (scripts/test.sh starts moto) and set it to its URL")
    })
}

/// A prefix no other test uses: every store starts on an empty table.
fn fresh_prefix() -> String {
    format!("t{}-{:x}-", std::process::id(), random())
}

fn store() -> DynamoStore {
    DynamoStore::connect(&endpoint(), &fresh_prefix()).unwrap()
}

common::scenarios!(store);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    /// The model-checked sequence of `tests/store.rs`, fewer cases (each
    /// step scans the table).
    #[test]
    fn totals_agree_and_nothing_counts_twice(
        steps in proptest::collection::vec((0..30u64, op()), 1..40)
    ) {
        run_steps(&store, steps)?;
    }
}

/// A table created by one replica is reused by another, and the format item
/// is checked rather than rewritten.
#[test]
fn second_replica_shares_the_table() {
    let prefix = fresh_prefix();
    let a = DynamoStore::connect(&endpoint(), &prefix).unwrap();
    a.put(new_record(1, node(), 1)).unwrap();
    let b = DynamoStore::connect(&endpoint(), &prefix).unwrap();
    assert_eq!(b.table(), format!("{prefix}etracker"));
    assert_eq!(b.record(&batch(1)).unwrap(), a.record(&batch(1)).unwrap());
}

/// Two replicas (two clients of one table, on two threads) lease and
/// conclude overlapping batches as fast as they can: every record is leased
/// by one of them at a time, each shared receipt is counted by exactly one
/// batch, and the totals are exactly the winners' bytes.
#[test]
fn two_replicas_race_to_lease_and_conclude() {
    let prefix = fresh_prefix();
    let replicas = [
        Arc::new(DynamoStore::connect(&endpoint(), &prefix).unwrap()),
        Arc::new(DynamoStore::connect(&endpoint(), &prefix).unwrap()),
    ];
    // Batches 2k and 2k+1 share receipts 100k and 100k+1.
    let receipts = |n: u64| [100 * (n / 2), 100 * (n / 2) + 1, 1000 + n];
    for n in 0..12 {
        replicas[0].put(new_record(n, node(), n)).unwrap();
    }
    let threads: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, store)| {
            let store = Arc::clone(store);
            std::thread::spawn(move || {
                let me = format!("replica-{i}");
                let mut outcomes = Vec::new();
                // Both conclude every batch they see, leased or not (a
                // conclusion does not need the lease), so they collide.
                // Replica 1 takes each pair the other way round, so that
                // the two batches sharing receipts are concluded at once.
                for k in 0..12u64 {
                    let n = if i == 0 { k } else { k ^ 1 };
                    let _ = store.lease_pending(100, &me, 60, 1).unwrap();
                    let c = conclusion(n, vec![usage(space_a(), "2025-01-01", 10)], &receipts(n));
                    outcomes.push((n, store.conclude(&c)));
                }
                outcomes
            })
        })
        .collect();
    let outcomes: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let store = &replicas[1];
    let mut done = 0;
    for pair in 0..6 {
        let [a, b] = [2 * pair, 2 * pair + 1].map(|n| store.record(&batch(n)).unwrap().unwrap());
        let winners = [&a, &b].iter().filter(|r| !r.is_pending()).count();
        assert_eq!(winners, 1, "pair {pair}: {a:?} / {b:?}");
        let winner = if a.is_pending() {
            2 * pair + 1
        } else {
            2 * pair
        };
        assert_eq!(
            store
                .counted(&node(), &[counted(100 * pair), counted(100 * pair + 1)])
                .unwrap(),
            [Some(batch(winner)), Some(batch(winner))]
        );
        done += 1;
    }
    for (n, out) in &outcomes {
        let record = store.record(&batch(*n)).unwrap().unwrap();
        match out {
            Ok(ConcludeOutcome::Concluded) | Ok(ConcludeOutcome::AlreadyConcluded { .. }) => {
                assert!(!record.is_pending(), "{n}: {out:?}")
            }
            Err(StoreError::Conflict { .. }) => assert!(record.is_pending(), "{n}"),
            Err(e) => panic!("{n}: {e}"),
        }
    }
    // Each batch was reported concluded exactly once.
    let concluded = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Ok(ConcludeOutcome::Concluded)))
        .count();
    assert_eq!(concluded, done);
    assert_eq!(store.node_total(&node()).unwrap(), 10 * done as u64);
    let audit = consistent(store.as_ref());
    assert_eq!(audit.counted_receipts, 3 * done as u64);
    assert_eq!(audit.space_bytes, 10 * done as u128);
}

/// A conclusion counting more receipts than one transaction holds commits
/// through the fenced multi-step protocol: all receipts counted, totals
/// added once, concluding again changes nothing, and another batch sharing
/// one receipt is refused whole.
#[test]
fn large_conclusion_commits_once() {
    let store = store();
    store.put(new_record(1, node(), 1)).unwrap();
    store.put(new_record(2, node(), 2)).unwrap();
    let receipts: Vec<u64> = (0..450).collect();
    let c = conclusion(
        1,
        vec![
            usage(space_a(), "2025-01-01", 4000),
            usage(space_b(), "2025-01-02", 500),
        ],
        &receipts,
    );
    assert_eq!(store.conclude(&c).unwrap(), ConcludeOutcome::Concluded);
    assert_eq!(
        store.conclude(&c).unwrap(),
        ConcludeOutcome::AlreadyConcluded { receipt: c.receipt }
    );
    let record = store.record(&batch(1)).unwrap().unwrap();
    assert!(matches!(
        record.status,
        RecordStatus::Done {
            total_bytes: 4500,
            counted_receipts: 450,
            ..
        }
    ));
    let all: Vec<_> = receipts.iter().copied().map(counted).collect();
    assert!(store
        .counted(&node(), &all)
        .unwrap()
        .iter()
        .all(|b| *b == Some(batch(1))));
    assert_eq!(store.node_total(&node()).unwrap(), 4500);
    let before = consistent(&store);
    assert_eq!(before.counted_receipts, 450);

    let mut overlapping: Vec<u64> = (1000..1200).collect();
    overlapping.push(449);
    let c2 = conclusion(2, vec![usage(space_a(), "2025-01-03", 7)], &overlapping);
    assert_eq!(
        in_key_order(store.conclude(&c2).unwrap_err()),
        conflict(&[449])
    );
    assert_eq!(store.audit().unwrap(), before);
    overlapping.pop();
    let c2 = conclusion(2, vec![usage(space_a(), "2025-01-03", 7)], &overlapping);
    assert_eq!(store.conclude(&c2).unwrap(), ConcludeOutcome::Concluded);
    assert_eq!(consistent(&store).counted_receipts, 650);
}

/// Two replicas conclude one batch at once, each its conclusion: one
/// `Concluded`, the other `AlreadyConcluded`.
fn one_concludes(racers: [(Arc<DynamoStore>, etracker_server::store::Conclusion); 2]) {
    let receipt = racers[0].1.receipt;
    let outcomes: Vec<_> = racers
        .map(|(store, c)| std::thread::spawn(move || store.conclude(&c)))
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert!(
        outcomes.contains(&ConcludeOutcome::Concluded),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&ConcludeOutcome::AlreadyConcluded { receipt }),
        "{outcomes:?}"
    );
}

/// Two replicas concluding the same large batch at once: one `Concluded`,
/// the other `AlreadyConcluded`, counted once.
#[test]
fn racing_large_conclusions_of_one_batch() {
    let prefix = fresh_prefix();
    let a = Arc::new(DynamoStore::connect(&endpoint(), &prefix).unwrap());
    let b = Arc::new(DynamoStore::connect(&endpoint(), &prefix).unwrap());
    a.put(new_record(1, node(), 1)).unwrap();
    let receipts: Vec<u64> = (0..300).collect();
    let c = conclusion(1, vec![usage(space_a(), "2025-01-01", 300)], &receipts);
    one_concludes([(a.clone(), c.clone()), (b, c.clone())]);
    assert_eq!(a.node_total(&node()).unwrap(), 300);
    assert_eq!(consistent(a.as_ref()).counted_receipts, 300);
}

/// Two replicas conclude one batch at once with different usage (as two
/// attempts may, one of them after a conflict dropped receipts), each with
/// more daily totals than the final transaction holds, so both write usage
/// rows: exactly one wins, and every total is the winner's, none of the
/// loser's rows counting.
#[test]
fn racing_conclusions_with_usage_rows_count_the_winner_only() {
    let prefix = fresh_prefix();
    let a = Arc::new(DynamoStore::connect(&endpoint(), &prefix).unwrap());
    let b = Arc::new(DynamoStore::connect(&endpoint(), &prefix).unwrap());
    a.put(new_record(1, node(), 1)).unwrap();
    let spaces = many_spaces(90);
    let receipts: Vec<u64> = (0..120).collect();
    let ca = conclusion(1, usage_grid(&spaces[..60], 5, 0), &receipts);
    let cb = conclusion(1, usage_grid(&spaces[30..], 5, 3), &receipts[..110]);
    assert_ne!(ca.total_bytes, cb.total_bytes);
    one_concludes([(a.clone(), ca.clone()), (b, cb.clone())]);
    let RecordStatus::Done { total_bytes, .. } = a.record(&batch(1)).unwrap().unwrap().status
    else {
        panic!("batch 1 is not done");
    };
    let winner = if total_bytes == ca.total_bytes {
        &ca
    } else {
        &cb
    };
    assert_eq!(total_bytes, winner.total_bytes);
    let (from, to) = (day(0), day(58));
    for space in &spaces {
        assert_eq!(
            a.space_usage(space, &from, &to).unwrap(),
            grid_days(&winner.usage, space)
        );
    }
    assert_eq!(
        a.node_usage(&node(), &from, &to).unwrap(),
        grid_node_days(&winner.usage)
    );
    let audit = consistent(a.as_ref());
    assert_eq!(audit.space_bytes, u128::from(winner.total_bytes));
    assert_eq!(audit.counted_receipts, winner.counted_receipts.len() as u64);
}

/// What an attempt interrupted by a crash leaves, usage rows of its own,
/// never counts: not while the batch is pending, and not once another
/// attempt concluded it (rows of the same day and space are taken over,
/// rows of others stay, ignored).
#[test]
fn an_interrupted_attempt_s_usage_rows_never_count() {
    let store = store();
    let raw = Raw::of(&store);
    store.put(new_record(1, node(), 1)).unwrap();
    let row = |pk: String, day: &str, bytes: u64| {
        Item::from([
            ("pk".to_string(), text(&pk)),
            ("sk".to_string(), text(&format!("day#{day}#{}", batch(1)))),
            ("bytes".to_string(), number(bytes)),
            ("batch".to_string(), text(&batch(1).to_string())),
            ("attempt".to_string(), text("interrupted")),
        ])
    };
    raw.put(row(
        format!("space#{}", space_a().as_str()),
        "2025-01-01",
        999,
    ));
    raw.put(row(
        format!("space#{}", space_b().as_str()),
        "2025-03-03",
        777,
    ));
    raw.put(row(format!("node#{}", node().as_str()), "2025-03-03", 1776));
    let all = ("2025-01-01", "2025-12-31");
    assert!(store
        .space_usage(&space_a(), all.0, all.1)
        .unwrap()
        .is_empty());
    assert!(store.node_usage(&node(), all.0, all.1).unwrap().is_empty());
    assert_eq!(consistent(&store).space_bytes, 0);

    let mut usage = usage_grid(&many_spaces(40), 5, 0);
    usage.push(common::usage(space_a(), "2025-01-01", 5));
    let c = conclusion(1, usage.clone(), &[1, 2, 3]);
    assert_eq!(store.conclude(&c).unwrap(), ConcludeOutcome::Concluded);
    assert_eq!(
        store.space_usage(&space_a(), all.0, all.1).unwrap(),
        [("2025-01-01".to_string(), 5)]
    );
    assert!(store
        .space_usage(&space_b(), all.0, all.1)
        .unwrap()
        .is_empty());
    assert_eq!(
        store.node_usage(&node(), all.0, all.1).unwrap(),
        grid_node_days(&usage)
    );
    assert_eq!(consistent(&store).space_bytes, u128::from(c.total_bytes));
    // The row of space b is still there, its attempt's.
    let stale: Vec<Item> = raw
        .scan()
        .into_iter()
        .filter(|i| string(i, "sk").starts_with("day#"))
        .filter(|i| string(i, "sk").ends_with(&batch(1).to_string()))
        .filter(|i| string(i, "attempt") == "interrupted")
        .collect();
    assert_eq!(stale.len(), 2, "{stale:?}");
}

/// A conclusion cut short after writing its claims holds nothing back: its
/// pages count only with its flip, so another batch of the node counts the
/// retrieval, and the first, concluding later, finds it counted (a
/// conflict, settled by leaving it out). Never counted by nobody, never
/// twice.
#[test]
fn a_conclusion_cut_short_holds_nothing_back() {
    let store = store();
    let raw = Raw::of(&store);
    store.put(new_record(1, node(), 1)).unwrap();
    store.put(new_record(2, node(), 2)).unwrap();
    // Batch 2's conclusion wrote its page with retrieval 7 and stopped.
    let claim = counted(7);
    let mut digests = claim.retrieval.hash().digest()[..16].to_vec();
    digests.extend([0xff; 16]);
    raw.put(Item::from([
        (
            "pk".to_string(),
            text(&format!("claims#{}#{}", node(), claim.expires / 3600)),
        ),
        (
            "sk".to_string(),
            text(&format!("{}#cut-short#0000", batch(2))),
        ),
        ("batch".to_string(), text(&batch(2).to_string())),
        ("attempt".to_string(), text("cut-short")),
        (
            "d".to_string(),
            aws_sdk_dynamodb::types::AttributeValue::B(digests.into()),
        ),
    ]));
    let mine = conclusion(1, vec![usage(space_a(), "2025-01-01", 20)], &[6, 7]);
    assert_eq!(store.conclude(&mine).unwrap(), ConcludeOutcome::Concluded);
    let theirs = conclusion(2, vec![usage(space_a(), "2025-01-01", 10)], &[7]);
    assert_eq!(
        in_key_order(store.conclude(&theirs).unwrap_err()),
        conflict(&[7])
    );
    let without = conclusion(2, vec![usage(space_a(), "2025-01-01", 10)], &[8]);
    assert_eq!(
        store.conclude(&without).unwrap(),
        ConcludeOutcome::Concluded
    );
    assert_eq!(
        store.counted(&node(), &[counted(7), counted(8)]).unwrap(),
        [Some(batch(1)), Some(batch(2))]
    );
    assert_eq!(consistent(&store).counted_receipts, 3);
}

/// Usage rows are folded into the daily totals: after a conclusion too
/// large for one commit, no row of it is left and every total is exact; a
/// winning row left unfolded (its replica stopped) is counted by the first
/// read and folded by it; reads after that read totals only.
#[test]
fn usage_rows_are_folded_into_the_totals() {
    use std::sync::atomic::Ordering::Relaxed;
    let store = store();
    let raw = Raw::of(&store);
    store.put(new_record(1, node(), 1)).unwrap();
    let spaces = many_spaces(40);
    let usage = usage_grid(&spaces, 5, 0);
    let c = conclusion(1, usage.clone(), &[1, 2, 3]);
    assert_eq!(store.conclude(&c).unwrap(), ConcludeOutcome::Concluded);
    let rows = |raw: &Raw| -> Vec<Item> {
        raw.scan()
            .into_iter()
            .filter(|i| {
                string(i, "sk").starts_with("day#") && string(i, "sk").matches('#').count() == 2
            })
            .collect()
    };
    assert!(rows(&raw).is_empty(), "{:?}", rows(&raw));
    let all = ("2025-01-01", "2025-12-31");
    assert_eq!(
        store.node_usage(&node(), all.0, all.1).unwrap(),
        grid_node_days(&usage)
    );
    assert_eq!(consistent(&store).space_bytes, u128::from(c.total_bytes));

    // A winning row its replica did not fold: counted, then folded.
    let attempt = raw
        .scan()
        .into_iter()
        .find(|i| string(i, "pk") == format!("rec#{}", batch(1)))
        .map(|i| string(&i, "attempt"))
        .unwrap();
    raw.put(Item::from([
        (
            "pk".to_string(),
            text(&format!("space#{}", space_a().as_str())),
        ),
        (
            "sk".to_string(),
            text(&format!("day#2025-06-01#{}", batch(1))),
        ),
        ("bytes".to_string(), number(42)),
        ("batch".to_string(), text(&batch(1).to_string())),
        ("attempt".to_string(), text(&attempt)),
    ]));
    let expected = [("2025-06-01".to_string(), 42)];
    assert_eq!(
        store.space_usage(&space_a(), all.0, all.1).unwrap(),
        expected
    );
    assert!(rows(&raw).is_empty(), "folded by the read");
    let before = store.usage().items_read.load(Relaxed);
    assert_eq!(
        store.space_usage(&space_a(), all.0, all.1).unwrap(),
        expected
    );
    // The fold counter twice and the one total.
    assert!(store.usage().items_read.load(Relaxed) - before <= 3);
}

/// The upload service's consumer table, in its upstream schema (key
/// `subscription` + `provider`; indexes on `consumer` and `customer`), made
/// here and read through the space registry and the policy.
#[test]
fn consumer_table_registry() {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
        KeyType, Projection, ProjectionType, ScalarAttributeType,
    };
    use etracker_server::registry::consumer::{ConsumerTable, ConsumerTableConfig};
    use etracker_server::registry::{Billing, SpacePolicy, SpaceRegistry};
    use ucanto::principal::Did;

    let (client, runtime) = etracker_server::store::dynamodb::connect_client(&endpoint()).unwrap();
    let table = format!("{}consumer", fresh_prefix());
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .unwrap()
    };
    let index = |name: &str| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(name, KeyType::Hash))
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::Include)
                    .non_key_attributes("provider")
                    .non_key_attributes("subscription")
                    .non_key_attributes("customer")
                    .non_key_attributes("consumer")
                    .build(),
            )
            .build()
            .unwrap()
    };
    runtime
        .block_on(
            client
                .create_table()
                .table_name(&table)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(attribute("subscription"))
                .attribute_definitions(attribute("provider"))
                .attribute_definitions(attribute("consumer"))
                .attribute_definitions(attribute("customer"))
                .key_schema(key("subscription", KeyType::Hash))
                .key_schema(key("provider", KeyType::Range))
                .global_secondary_indexes(index("consumer"))
                .global_secondary_indexes(index("customer"))
                .send(),
        )
        .unwrap();
    let up = "did:web:up.example";
    let account = "did:mailto:example.com:alice";
    for (subscription, provider, consumer, customer) in [
        (
            "sub-1",
            up,
            "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
            account,
        ),
        (
            "sub-2",
            "did:web:elsewhere.example",
            "did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH",
            account,
        ),
        (
            "sub-3",
            up,
            "did:key:z6MknGc3ocHs3zdPiJbnaaqDi58NGb4pk1Sp9WxWufuXSdxf",
            "did:mailto:example.com:bob",
        ),
    ] {
        runtime
            .block_on(
                client
                    .put_item()
                    .table_name(&table)
                    .item("subscription", AttributeValue::S(subscription.into()))
                    .item("provider", AttributeValue::S(provider.into()))
                    .item("consumer", AttributeValue::S(consumer.into()))
                    .item("customer", AttributeValue::S(customer.into()))
                    .item("cause", AttributeValue::S("bafy".into()))
                    .send(),
            )
            .unwrap();
    }
    runtime.shutdown_background();

    let registry = ConsumerTable::connect(ConsumerTableConfig {
        endpoint: endpoint(),
        table,
        consumer_index: "consumer".into(),
        customer_index: "customer".into(),
    })
    .unwrap();
    let did = |text: &str| -> Did { text.parse().unwrap() };
    let alice_space = did("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK");
    let foreign_space = did("did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH");
    let provisions = registry.provisions(&alice_space).unwrap();
    assert_eq!(provisions.len(), 1);
    assert_eq!(provisions[0].provider, did(up));
    assert_eq!(provisions[0].customer, Some(did(account)));
    let mut spaces = registry.customer_spaces(&did(account)).unwrap();
    spaces.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut expected = vec![alice_space.clone(), foreign_space.clone()];
    expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(spaces, expected);

    let policy = SpacePolicy::Known {
        providers: [did(up)].into_iter().collect(),
        registry: Arc::new(registry),
    };
    assert_eq!(
        policy.judge(&alice_space).unwrap(),
        Billing::Billable {
            customer: Some(did(account))
        }
    );
    assert!(matches!(
        policy.judge(&foreign_space).unwrap(),
        Billing::Unknown(_)
    ));
    let sybil = did("did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp");
    assert!(matches!(policy.judge(&sybil).unwrap(), Billing::Unknown(_)));
}

/// The table seen directly: what a test checks of the item layout.
struct Raw {
    client: aws_sdk_dynamodb::Client,
    runtime: tokio::runtime::Runtime,
    table: String,
}

type Item = std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>;

impl Raw {
    fn of(store: &DynamoStore) -> Raw {
        let (client, runtime) =
            etracker_server::store::dynamodb::connect_client(&endpoint()).unwrap();
        Raw {
            client,
            runtime,
            table: store.table().to_string(),
        }
    }

    fn scan(&self) -> Vec<Item> {
        let out = self
            .runtime
            .block_on(self.client.scan().table_name(&self.table).send())
            .unwrap();
        assert!(out.last_evaluated_key.is_none(), "one page in these tests");
        out.items.unwrap_or_default()
    }

    fn put(&self, item: Item) {
        self.runtime
            .block_on(
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .send(),
            )
            .unwrap();
    }
}

fn number(v: u64) -> aws_sdk_dynamodb::types::AttributeValue {
    aws_sdk_dynamodb::types::AttributeValue::N(v.to_string())
}

fn text(v: &str) -> aws_sdk_dynamodb::types::AttributeValue {
    aws_sdk_dynamodb::types::AttributeValue::S(v.to_string())
}

fn string(item: &Item, key: &str) -> String {
    item[key].as_s().unwrap().clone()
}

/// Items per partition whose key starts with `prefix`.
fn per_partition(items: &[Item], prefix: &str) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for item in items {
        let pk = string(item, "pk");
        if pk.starts_with(prefix) {
            *counts.entry(pk).or_default() += 1;
        }
    }
    counts
}

/// No partition takes every track: the due entries and the counters of 64
/// batches spread over the shards, the unsharded partitions stay empty; and
/// leasing in small calls still hands out every record once, oldest first
/// across shards, as from one index.
#[test]
fn tracks_spread_over_shards_and_leases_miss_none() {
    let store = store();
    let raw = Raw::of(&store);
    // Received in an order unrelated to the shards.
    let received = |n: u64| 1_000 + (n * 37) % 64;
    for n in 0..64 {
        store.put(new_record(n, node(), received(n))).unwrap();
    }
    let items = raw.scan();
    let due = per_partition(&items, "due");
    let stats = per_partition(&items, "stats");
    assert!(due.len() >= 10 && stats.len() >= 10, "{due:?} {stats:?}");
    assert!(due.values().all(|n| *n <= 16), "{due:?}");
    assert!(!due.contains_key("due") && !stats.contains_key("stats"));
    assert_eq!(due.values().sum::<usize>(), 64);
    assert_eq!(store.stats().unwrap().records, 64);
    assert_eq!(store.pending_count().unwrap(), 64);

    let mut leased = Vec::new();
    loop {
        let got = store.lease_pending(5_000, "a", 60, 5).unwrap();
        if got.is_empty() {
            break;
        }
        assert!(got.len() <= 5);
        leased.extend(got);
    }
    let mut expected: Vec<u64> = (0..64).collect();
    expected.sort_by_key(|n| received(*n));
    assert_eq!(
        leased_batches(&leased),
        expected.into_iter().map(batch).collect::<Vec<_>>()
    );
    consistent(&store);
}

/// What `/health` and `/metrics` read, and what a starting replica reads
/// to take back its leases, does not grow with the backlog: the pending
/// count comes from the 16 counters (read with the table's format), and the take-back reads only the
/// window where running leases end.
#[test]
fn probes_and_take_back_do_not_read_the_backlog() {
    use std::sync::atomic::Ordering::Relaxed;
    let store = store();
    for n in 1..=120 {
        store.put(new_record(n, node(), n)).unwrap();
    }
    let now = 1_000;
    assert_eq!(store.lease_pending(now, "a", 900, 2).unwrap().len(), 2);
    let read = |store: &DynamoStore| store.usage().items_read.load(Relaxed);
    let before = read(&store);
    assert_eq!(store.pending_count().unwrap(), 120);
    // The 16 counters and the table's format.
    assert!(
        read(&store) - before <= 17,
        "{} items",
        read(&store) - before
    );
    let before = read(&store);
    assert_eq!(store.release_leases("a", now, 900).unwrap(), 2);
    assert!(
        read(&store) - before <= 8,
        "{} items",
        read(&store) - before
    );
    consistent(&store);
}

/// A lease walk the table fails part-way hands over the leases it took
/// (they are held, and would otherwise idle for the lease's time); one that
/// took none reports the failure.
#[test]
fn a_lease_walk_cut_short_hands_over_what_it_took() {
    let store = store();
    for n in 1..=5 {
        store.put(new_record(n, node(), n)).unwrap();
    }
    // The walk reads the 16 shards, then each entry's record and leases it
    // (two requests): the table is lost after two leases.
    store.lose_table_after(16 + 2 * 2);
    let leased = store.lease_pending(1_000, "a", 900, 5).unwrap();
    assert_eq!(leased.len(), 2, "the two it took");
    assert!(leased
        .iter()
        .all(|r| r.lease.as_ref().is_some_and(|l| l.owner == "a")));
    store.lose_table_after(0);
    assert!(store.lease_pending(1_000, "a", 900, 5).is_err());
}

/// A large conclusion under load (a quarter of requests throttled,
/// cancelled by a conflicting transaction, or failed with a 500) commits
/// once, and exactly: what load refused is sent again, not decided again,
/// so it writes about what it writes on a quiet table.
#[test]
fn a_large_conclusion_under_load_commits_once_without_starting_over() {
    use etracker_server::store::dynamodb::Faults;
    use std::sync::atomic::Ordering::Relaxed;
    let run = |faults: Option<Faults>| {
        let store = DynamoStore::connect_with(&endpoint(), &fresh_prefix(), faults).unwrap();
        store.put(new_record(1, node(), 1)).unwrap();
        let receipts: Vec<u64> = (0..450).collect();
        let c = conclusion(1, vec![usage(space_a(), "2025-01-01", 4500)], &receipts);
        let before = store.usage().items_written.load(Relaxed);
        assert_eq!(store.conclude(&c).unwrap(), ConcludeOutcome::Concluded);
        let written = store.usage().items_written.load(Relaxed) - before;
        assert_eq!(store.node_total(&node()).unwrap(), 4500);
        assert_eq!(consistent(&store).counted_receipts, 450);
        (written, store.usage().faults.load(Relaxed))
    };
    let (quiet, _) = run(None);
    let (loaded, faults) = run(Some(Faults {
        rate: 0.25,
        seed: 7,
        latency_ms: 0,
    }));
    assert!(
        faults >= 5,
        "{faults} faults injected, quiet {quiet}, loaded {loaded}"
    );
    assert!(
        loaded <= quiet + quiet / 4,
        "{loaded} items written under load, {quiet} quiet"
    );
}

/// A receipt at the largest a store keeps fits DynamoDB's 400 KB item
/// (which the wire layer enforces, as DynamoDB does); a larger one is
/// refused as invalid before any write, not failed for ever by the table.
#[test]
fn receipts_up_to_the_item_limit_are_kept() {
    use etracker_server::store::MAX_RECEIPT_BYTES;
    let store = store();
    store.put(new_record(1, node(), 1)).unwrap();
    store.put(new_record(2, node(), 2)).unwrap();
    let mut c = conclusion(1, vec![usage(space_a(), "2025-01-01", 10)], &[1]);
    c.receipt_bytes = vec![7; MAX_RECEIPT_BYTES];
    assert_eq!(store.conclude(&c).unwrap(), ConcludeOutcome::Concluded);
    let mut c = conclusion(2, vec![usage(space_a(), "2025-01-01", 10)], &[2]);
    c.receipt_bytes = vec![7; MAX_RECEIPT_BYTES + 1];
    assert!(matches!(store.conclude(&c), Err(StoreError::Invalid(_))));
    // Past DynamoDB's own limit too: refused the same way, nothing sent.
    c.receipt_bytes = vec![7; 420 * 1024];
    assert!(matches!(store.conclude(&c), Err(StoreError::Invalid(_))));
    assert_eq!(
        store
            .usage()
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    consistent(&store);
}

/// A table upgraded under a running replica (its format item changed by
/// another version): the replica writes nothing more, tracks and
/// conclusions are refused with a sentence saying what to do, the probe
/// fails, and a replica starting on it refuses it the same way.
#[test]
fn a_replica_of_another_format_changes_nothing() {
    let prefix = fresh_prefix();
    let store = DynamoStore::connect(&endpoint(), &prefix).unwrap();
    store.put(new_record(1, node(), 1)).unwrap();
    let raw = Raw::of(&store);
    raw.put(Item::from([
        ("pk".to_string(), text("meta")),
        ("sk".to_string(), text("format")),
        ("format".to_string(), number(5)),
    ]));
    let changed = |e: StoreError| {
        assert!(
            matches!(
                e,
                StoreError::FormatChanged {
                    found: 5,
                    expected: 4
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("run the etracker version of format 5"),
            "{e}"
        );
    };
    changed(store.put(new_record(2, node(), 2)).unwrap_err());
    let c = conclusion(1, vec![usage(space_a(), "2025-01-01", 10)], &[1]);
    changed(store.conclude(&c).unwrap_err());
    changed(store.pending_count().unwrap_err());
    changed(DynamoStore::connect(&endpoint(), &prefix).unwrap_err());
    assert!(
        store.record(&batch(2)).unwrap().is_none(),
        "nothing written"
    );
}

/// The store's retry counters, for `/metrics`: an uncontended table shows
/// none, although every request went through the counting.
#[test]
fn retries_are_counted_for_metrics() {
    let store = store();
    store.put(new_record(1, node(), 1)).unwrap();
    store.lease_pending(10, "a", 60, 10).unwrap();
    let counters = store.retry_counters();
    let names: Vec<&str> = counters.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "etracker_store_transactions_cancelled_total",
            "etracker_store_requests_retried_total",
            "etracker_dynamodb_write_units_total",
            "etracker_dynamodb_read_units_total",
            "etracker_dynamodb_requests_refused_total",
        ]
    );
    let value = |name: &str| counters.iter().find(|c| c.name == name).unwrap().value;
    assert_eq!(value("etracker_store_transactions_cancelled_total"), 0);
    assert_eq!(value("etracker_store_requests_retried_total"), 0);
    assert_eq!(value("etracker_dynamodb_requests_refused_total"), 0);
    assert!(
        value("etracker_dynamodb_write_units_total") >= 2,
        "{counters:?}"
    );
    assert!(
        value("etracker_dynamodb_read_units_total") >= 1,
        "{counters:?}"
    );
}

/// Claims are pages of 16-byte digests, one per node and hour the
/// retrievals expire in, each carrying its conclusion's end as `ttl`: the
/// table's time to live drops it once no batch could count the retrievals
/// again.
#[test]
fn claims_are_pages_per_node_and_hour_with_their_end_as_ttl() {
    let store = store();
    store.put(new_record(1, node(), 1_000)).unwrap();
    // Retrievals 10, 14 and 18 expire in one hour, 11 in the next.
    let mut c = conclusion(
        1,
        vec![usage(space_a(), "2025-01-01", 10)],
        &[10, 14, 18, 11],
    );
    c.claims_end = 50_000;
    store.conclude(&c).unwrap();
    let pages: Vec<Item> = Raw::of(&store)
        .scan()
        .into_iter()
        .filter(|item| string(item, "pk").starts_with("claims#"))
        .collect();
    let hour = |n: u64| counted(n).expires / 3600;
    let mut found: Vec<(String, usize)> = pages
        .iter()
        .map(|page| {
            assert_eq!(page.get("ttl"), Some(&number(50_000)), "{page:?}");
            let Some(aws_sdk_dynamodb::types::AttributeValue::B(d)) = page.get("d") else {
                panic!("{page:?}");
            };
            (string(page, "pk"), d.as_ref().len())
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            (format!("claims#{}#{}", node(), hour(10)), 3 * 16),
            (format!("claims#{}#{}", node(), hour(11)), 16),
        ]
    );
}
