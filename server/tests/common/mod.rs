//! Fixtures and behavioural scenarios of the [`Store`] trait, shared by the
//! backends' test files: `tests/store.rs` (redb) and `tests/dynamodb.rs`.
//! Each scenario takes a function that makes a fresh, empty store.

// Each test crate uses a part of this module.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cid::Cid;
use etracker_server::store::redb::{Audit, RedbStore};
use etracker_server::store::{
    retrieval_key, ConcludeOutcome, Conclusion, CountedRetrieval, DailyUsage, NewRecord,
    PutOutcome, RecordStatus, Rejections, RetrievalKey, Retry, StagedChunk, Staging, Store,
    StoreError,
};
use proptest::prelude::*;
use ucanto::dag::{cid_of, CAR, DAG_CBOR};
use ucanto::principal::{Did, Ed25519Signer, Signer};

/// One `#[test]` per shared scenario, each on a fresh store from `$make`.
macro_rules! scenarios {
    ($make:path) => {
        #[test]
        fn put_is_idempotent_for_the_same_node() {
            common::put_is_idempotent_for_the_same_node(&$make);
        }

        #[test]
        fn a_nodes_batches_page_without_skipping_a_second() {
            common::a_nodes_batches_page_without_skipping_a_second(&$make);
        }

        #[test]
        fn nodes_with_only_pending_batches_are_listed() {
            common::nodes_with_only_pending_batches_are_listed(&$make);
        }

        #[test]
        fn failed_batches_are_listed_with_their_error_without_skipping() {
            common::failed_batches_are_listed_with_their_error_without_skipping(&$make);
        }

        #[test]
        fn put_by_another_node_conflicts() {
            common::put_by_another_node_conflicts(&$make);
        }

        #[test]
        fn a_nodes_pending_batches_are_counted_and_capped() {
            common::a_nodes_pending_batches_are_counted_and_capped(&$make);
        }

        #[test]
        fn racing_tracks_of_one_node_stay_within_the_cap() {
            common::racing_tracks_of_one_node_stay_within_the_cap(&$make);
        }

        #[test]
        fn lease_excludes_other_owners_until_expiry() {
            common::lease_excludes_other_owners_until_expiry(&$make);
        }

        #[test]
        fn expired_lease_is_taken_over() {
            common::expired_lease_is_taken_over(&$make);
        }

        #[test]
        fn a_restarted_replica_takes_back_its_leases() {
            common::a_restarted_replica_takes_back_its_leases(&$make);
        }

        #[test]
        fn reschedule_only_by_owner_and_backs_off() {
            common::reschedule_only_by_owner_and_backs_off(&$make);
        }

        #[test]
        fn concurrent_leases_are_disjoint() {
            common::concurrent_leases_are_disjoint(&$make);
        }

        #[test]
        fn conclude_commits_everything_once() {
            common::conclude_commits_everything_once(&$make);
        }

        #[test]
        fn conclude_refuses_what_does_not_match() {
            common::conclude_refuses_what_does_not_match(&$make);
        }

        #[test]
        fn totals_never_overflow() {
            common::totals_never_overflow(&$make);
        }

        #[test]
        fn spaces_are_listed_by_page() {
            common::spaces_are_listed_by_page(&$make);
        }

        #[test]
        fn sessions_are_kept_until_they_end() {
            common::sessions_are_kept_until_they_end(&$make);
        }

        #[test]
        fn billed_spaces_are_listed() {
            common::billed_spaces_are_listed(&$make);
        }

        #[test]
        fn nodes_and_their_batches_are_listed() {
            common::nodes_and_their_batches_are_listed(&$make);
        }

        #[test]
        fn rejections_are_counted_once_by_name() {
            common::rejections_are_counted_once_by_name(&$make);
        }

        #[test]
        fn pending_records_list_earliest_due_first() {
            common::pending_records_list_earliest_due_first(&$make);
        }

        #[test]
        fn egress_by_day_adds_up_every_node() {
            common::egress_by_day_adds_up_every_node(&$make);
        }

        #[test]
        fn conclusions_of_any_size() {
            common::conclusions_of_any_size(&$make);
        }

        #[test]
        fn overlapping_receipts_conflict_and_change_nothing() {
            common::overlapping_receipts_conflict_and_change_nothing(&$make);
        }

        #[test]
        fn racing_conclusions_count_a_receipt_once() {
            common::racing_conclusions_count_a_receipt_once(&$make);
        }

        #[test]
        fn space_usage_by_day_range() {
            common::space_usage_by_day_range(&$make);
        }

        #[test]
        fn staged_chunks_wait_for_their_conclusion() {
            common::staged_chunks_wait_for_their_conclusion(&$make);
        }

        #[test]
        fn a_staged_tally_counts_a_chunk_at_a_time() {
            common::a_staged_tally_counts_a_chunk_at_a_time(&$make);
        }

        #[test]
        fn registered_spaces_are_kept_and_listed() {
            common::registered_spaces_are_kept_and_listed(&$make);
        }

        #[test]
        fn non_billable_bytes_are_kept_apart() {
            common::non_billable_bytes_are_kept_apart(&$make);
        }
    };
}
pub(crate) use scenarios;

/// A backend under test: a [`Store`] with a consistency audit.
pub trait TestStore: Store + Sized {
    /// Reads the whole store and checks that it agrees with itself.
    fn audit(&self) -> Result<Audit, StoreError>;
}

impl TestStore for RedbStore {
    fn audit(&self) -> Result<Audit, StoreError> {
        RedbStore::audit(self)
    }
}

#[cfg(feature = "dynamodb")]
impl TestStore for etracker_server::store::dynamodb::DynamoStore {
    fn audit(&self) -> Result<Audit, StoreError> {
        etracker_server::store::dynamodb::DynamoStore::audit(self)
    }
}

// ---------------------------------------------------------------- fixtures

/// The DID of the fixed principal with seed `[byte; 32]` (the workspace's
/// convention: alice 1, bob 2, mallory 3, service 4, node 5).
pub fn did(byte: u8) -> Did {
    ucanto::principal::fixtures::principal(byte).did().clone()
}
/// The storage node that tracks batches.
pub fn node() -> Did {
    did(5)
}
/// A node that tries to track someone else's batch.
pub fn mallory() -> Did {
    did(3)
}
/// alice's space.
pub fn space_a() -> Did {
    did(1)
}
/// bob's space.
pub fn space_b() -> Did {
    did(2)
}

/// A failed attempt to record.
pub fn retry(next_attempt_at: u64, last_error: &str, by_node: bool) -> Retry {
    Retry {
        next_attempt_at,
        last_error: last_error.to_string(),
        by_node,
    }
}

pub fn batch(n: u64) -> Cid {
    cid_of(CAR, format!("batch {n}").as_bytes())
}
pub fn consolidate(n: u64) -> Cid {
    cid_of(DAG_CBOR, format!("consolidate {n}").as_bytes())
}
pub fn retrieve(n: u64) -> Cid {
    cid_of(DAG_CBOR, format!("retrieve receipt {n}").as_bytes())
}
/// The key a conflict names retrieval `n` by.
pub fn key(n: u64) -> RetrievalKey {
    retrieval_key(&retrieve(n))
}
/// The conflict naming retrievals `ns`, in key order.
pub fn conflict(ns: &[u64]) -> StoreError {
    let mut retrievals: Vec<RetrievalKey> = ns.iter().map(|n| key(*n)).collect();
    retrievals.sort_unstable();
    StoreError::Conflict { retrievals }
}
/// `e` with a conflict's retrievals in key order (the order is the store's).
pub fn in_key_order(e: StoreError) -> StoreError {
    match e {
        StoreError::Conflict { mut retrievals } => {
            retrievals.sort_unstable();
            StoreError::Conflict { retrievals }
        }
        other => other,
    }
}
/// The staging of batch `n`'s [`conclusion`] with the staged tally `tally`.
pub fn staging(n: u64, tally: &[Cid]) -> Staging {
    let mut c = conclusion(n, Vec::new(), &[]);
    c.staged_tally = tally.to_vec();
    Staging::from(&c)
}
/// Retrieval `n` as a conclusion counts it: expiring in one of four hours.
pub fn counted(n: u64) -> CountedRetrieval {
    CountedRetrieval {
        retrieval: retrieve(n),
        expires: 1_800_000_000 + (n % 4) * 3_600,
    }
}

/// The record a track of batch `n` by `node` at time `at` stores.
pub fn new_record(n: u64, node: Did, at: u64) -> NewRecord {
    NewRecord {
        batch: batch(n),
        node,
        endpoint: "https://node.example/receipts/{cid}".into(),
        track_invocation: cid_of(DAG_CBOR, format!("track {n}").as_bytes()),
        track_invocation_bytes: format!("track car {n}").into_bytes(),
        consolidate_invocation: consolidate(n),
        received_at: at,
    }
}

pub fn usage(space: Did, day: &str, bytes: u64) -> DailyUsage {
    DailyUsage {
        space,
        day: day.into(),
        bytes,
    }
}

/// The conclusion of batch `n` tracked by [`node`], counting `receipts`.
pub fn conclusion(n: u64, usage: Vec<DailyUsage>, receipts: &[u64]) -> Conclusion {
    Conclusion {
        batch: batch(n),
        consolidate_invocation: consolidate(n),
        receipt: cid_of(DAG_CBOR, format!("consolidate receipt {n}").as_bytes()),
        receipt_bytes: format!("receipt car {n}").into_bytes(),
        node: node(),
        total_bytes: usage.iter().map(|u| u.bytes).sum(),
        usage,
        counted_receipts: receipts.iter().copied().map(counted).collect(),
        staged_tally: Vec::new(),
        non_billable: Vec::new(),
        concluded_at: 10_000 + n,
        claims_end: u64::MAX,
        rejected: Vec::new(),
        failure: None,
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "etracker-store-{name}-{}-{}",
            std::process::id(),
            random() % 1_000_000
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A random number from std's per-process hash seed (no rand dependency).
pub fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

pub fn consistent<S: TestStore>(store: &S) -> Audit {
    let audit = store.audit().unwrap();
    assert!(audit.is_consistent(), "{:?}", audit.problems);
    audit
}

pub fn leased_batches(records: &[etracker_server::store::EgressRecord]) -> Vec<Cid> {
    records.iter().map(|r| r.batch).collect()
}

// ---------------------------------------------------------------- tracking

/// Re-tracking a batch by its node changes nothing and returns the record
/// (with the first consolidate CID, which is what the node is polling for).
pub fn put_is_idempotent_for_the_same_node<S: TestStore>(store: &dyn Fn() -> S) {
    let store = store();
    let first = store.put(new_record(1, node(), 100)).unwrap();
    let PutOutcome::Inserted(record) = first else {
        panic!("expected Inserted, got {first:?}")
    };
    assert!(record.is_pending());
    assert_eq!(record.next_attempt_at, 100);

    let mut again = new_record(1, node(), 500);
    again.consolidate_invocation = consolidate(99);
    again.endpoint = "https://elsewhere.example/{cid}".into();
    assert_eq!(
        store.put(again).unwrap(),
        PutOutcome::Existing(record.clone())
    );
    assert_eq!(store.record(&batch(1)).unwrap(), Some(record));
    assert_eq!(store.pending_count().unwrap(), 1);
    consistent(&store);
}

/// A batch tracked by one node cannot be claimed by another.
pub fn put_by_another_node_conflicts<S: TestStore>(store: &dyn Fn() -> S) {
    let store = store();
    store.put(new_record(1, node(), 100)).unwrap();
    let err = store.put(new_record(1, mallory(), 100)).unwrap_err();
    assert_eq!(err, StoreError::NodeConflict { node: node() });
    assert_eq!(store.record(&batch(1)).unwrap().unwrap().node, node());
}

/// Each node's pending records are counted exactly (a track adds one, a
/// conclusion takes one off, nothing else moves it), and a new batch past
/// the cap is refused with nothing stored, while a batch already tracked
/// still answers as before and other nodes are not held back.
pub fn a_nodes_pending_batches_are_counted_and_capped<S: TestStore>(make: &dyn Fn() -> S) {
    let store = make();
    let inserted = |outcome: Result<PutOutcome, StoreError>| {
        assert!(
            matches!(outcome, Ok(PutOutcome::Inserted(_))),
            "{outcome:?}"
        );
    };
    assert_eq!(store.node_pending(&node()).unwrap(), 0);
    for n in 0..3 {
        inserted(store.put_within(new_record(n, node(), 100 + n), 3));
    }
    assert_eq!(store.node_pending(&node()).unwrap(), 3);
    assert_eq!(
        store.put_within(new_record(3, node(), 200), 3),
        Err(StoreError::TooManyPending { pending: 3 })
    );
    assert_eq!(store.record(&batch(3)).unwrap(), None, "nothing stored");
    assert!(matches!(
        store.put_within(new_record(0, node(), 300), 3),
        Ok(PutOutcome::Existing(_))
    ));
    assert_eq!(
        store.put_within(new_record(0, mallory(), 300), 3),
        Err(StoreError::NodeConflict { node: node() }),
        "another node's batch is a conflict, not a count"
    );
    inserted(store.put_within(new_record(10, mallory(), 300), 3));
    assert_eq!(store.node_pending(&mallory()).unwrap(), 1);

    // Leases and retries leave the count alone; a conclusion takes one off,
    // once.
    let leased = store.lease_pending(1_000, "r1", 60, 10).unwrap();
    assert_eq!(leased.len(), 4);
    store
        .reschedule(&batch(1), "r1", 1_000, &retry(1_100, "503", true))
        .unwrap();
    assert_eq!(store.node_pending(&node()).unwrap(), 3);
    let c = conclusion(0, vec![usage(space_a(), "2025-01-01", 10)], &[1]);
    assert_eq!(store.conclude(&c).unwrap(), ConcludeOutcome::Concluded);
    assert!(matches!(
        store.conclude(&c).unwrap(),
        ConcludeOutcome::AlreadyConcluded { .. }
    ));
    assert_eq!(store.node_pending(&node()).unwrap(), 2);
    inserted(store.put_within(new_record(3, node(), 400), 3));
    // `put` has no cap, and counts too.
    inserted(store.put(new_record(4, node(), 500)));
    assert_eq!(store.node_pending(&node()).unwrap(), 4);
    assert_eq!(store.node_pending(&mallory()).unwrap(), 1);
    for n in [1, 2, 3, 4] {
        let mut failed = conclusion(n, Vec::new(), &[]);
        failed.failure = Some("the batch could not be fetched".into());
        store.conclude(&failed).unwrap();
    }
    assert_eq!(store.node_pending(&node()).unwrap(), 0);
    inserted(store.put_within(new_record(5, node(), 600), 1));
    consistent(&store);
}

/// Tracks of one node racing each other (replicas, or concurrent requests)
/// never take it past its cap.
pub fn racing_tracks_of_one_node_stay_within_the_cap<S: TestStore + Sync>(make: &dyn Fn() -> S) {
    let store = make();
    let refused = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for n in 0..8 {
            let (store, refused) = (&store, &refused);
            scope.spawn(
                move || match store.put_within(new_record(n, node(), 100), 5) {
                    Ok(PutOutcome::Inserted(_)) => {}
                    Err(StoreError::TooManyPending { pending: 5 }) => {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    other => panic!("batch {n}: {other:?}"),
                },
            );
        }
    });
    assert_eq!(refused.into_inner(), 3);
    assert_eq!(store.node_pending(&node()).unwrap(), 5);
    assert_eq!(store.pending_count().unwrap(), 5);
    consistent(&store);
}

/// `n` distinct spaces (seeds unlike the fixed principals').
pub fn many_spaces(n: u16) -> Vec<Did> {
    (0..n)
        .map(|k| {
            let mut seed = [0xA5; 32];
            seed[..2].copy_from_slice(&k.to_be_bytes());
            Ed25519Signer::from_seed(seed).did().clone()
        })
        .collect()
}

/// Day `d` (0-based) of January and February 2025.
pub fn day(d: u64) -> String {
    assert!(d < 59);
    let (month, day) = if d < 31 { (1, d + 1) } else { (2, d - 30) };
    format!("2025-{month:02}-{day:02}")
}

/// `spaces` × `days` usage entries, each a byte count of its own, shifted
/// by `salt`.
pub fn usage_grid(spaces: &[Did], days: u64, salt: u64) -> Vec<DailyUsage> {
    let mut grid = Vec::new();
    for (s, space) in spaces.iter().enumerate() {
        for d in 0..days {
            let bytes = (s as u64 * 31 + d * 7 + salt) % 997 + 1;
            grid.push(usage(space.clone(), &day(d), bytes));
        }
    }
    grid
}

/// Bytes per day of `grid` for `space`, as [`Store::space_usage`] lists them.
pub fn grid_days(grid: &[DailyUsage], space: &Did) -> Vec<(String, u64)> {
    let mut days = std::collections::BTreeMap::<String, u64>::new();
    for u in grid.iter().filter(|u| u.space == *space) {
        *days.entry(u.day.clone()).or_default() += u.bytes;
    }
    days.into_iter().collect()
}

/// Bytes per day of `grid`, all spaces.
pub fn grid_node_days(grid: &[DailyUsage]) -> Vec<(String, u64)> {
    let mut days = std::collections::BTreeMap::<String, u64>::new();
    for u in grid {
        *days.entry(u.day.clone()).or_default() += u.bytes;
    }
    days.into_iter().collect()
}

/// Registered spaces are listed in DID order, by prefix and page.
pub fn spaces_are_listed_by_page<S: TestStore>(make: &dyn Fn() -> S) {
    use etracker_server::store::SpaceEntry;
    let store = make();
    let mut entries: Vec<SpaceEntry> = [30, 31, 32]
        .map(|k| SpaceEntry {
            space: did(k),
            provider: did(4),
            customer: (k != 31).then(|| did(k + 10)),
        })
        .into();
    for entry in &entries {
        store.put_space(entry).unwrap();
    }
    entries.sort_by(|a, b| a.space.as_str().cmp(b.space.as_str()));
    assert_eq!(store.spaces_page("", None, 10).unwrap(), entries);
    let first = store.spaces_page("", None, 2).unwrap();
    assert_eq!(first, entries[..2]);
    let rest = store
        .spaces_page("", Some(first[1].space.as_str()), 2)
        .unwrap();
    assert_eq!(rest, entries[2..]);
    assert_eq!(
        store
            .spaces_page(entries[1].space.as_str(), None, 10)
            .unwrap(),
        entries[1..2]
    );
    assert!(store.spaces_page("did:web:", None, 10).unwrap().is_empty());
    // A cursor past every DID with the prefix: nothing follows (a key
    // condition with its bounds reversed would be refused by DynamoDB).
    let prefix = &entries[0].space.as_str()[..9];
    assert!(store
        .spaces_page(prefix, Some("did:zzz"), 10)
        .unwrap()
        .is_empty());
    assert!(store
        .billed_spaces_page(prefix, Some("did:zzz"), 10)
        .unwrap()
        .is_empty());
    assert!(store
        .nodes_page(prefix, Some("did:zzz"), 10)
        .unwrap()
        .is_empty());
}

/// A dashboard session is read back until it ends or is removed; another
/// session is untouched by either.
pub fn sessions_are_kept_until_they_end<S: TestStore>(make: &dyn Fn() -> S) {
    use etracker_server::store::StoredSession;
    let store = make();
    let (a, b) = ([1u8; 32], [2u8; 32]);
    // Real times: a store may drop the sessions that ended by its clock.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let session = |csrf: &str, expires_at| StoredSession {
        user: "ops".into(),
        csrf: csrf.into(),
        expires_at,
        started_at: now - 10,
        credentials: "c0ffee".into(),
    };
    assert_eq!(store.session(&a, now).unwrap(), None);
    store.put_session(&a, &session("ca", now + 1_000)).unwrap();
    store.put_session(&b, &session("cb", now + 2_000)).unwrap();
    assert_eq!(
        store.session(&a, now + 999).unwrap(),
        Some(session("ca", now + 1_000))
    );
    assert_eq!(store.session(&a, now + 1_000).unwrap(), None);
    store.remove_session(&b).unwrap();
    assert_eq!(store.session(&b, now).unwrap(), None);
    assert_eq!(
        store.session(&a, now).unwrap(),
        Some(session("ca", now + 1_000))
    );
    store.remove_session(&b).unwrap();

    // Log out everywhere: every session begun before the time ends, on
    // every replica of the store; one begun after lives.
    store.put_session(&b, &session("cb", now + 2_000)).unwrap();
    store.end_sessions(now - 5).unwrap();
    assert_eq!(store.session(&a, now).unwrap(), None);
    assert_eq!(store.session(&b, now).unwrap(), None);
    let later = StoredSession {
        started_at: now,
        ..session("cc", now + 1_000)
    };
    store.put_session(&a, &later).unwrap();
    assert_eq!(store.session(&a, now).unwrap(), Some(later.clone()));
    // An earlier time never brings the ended ones back.
    store.end_sessions(0).unwrap();
    assert_eq!(store.session(&a, now).unwrap(), Some(later));
}

/// Spaces with billable egress are listed in DID order, by prefix and page,
/// whether or not they are registered; bytes not billable list no space.
pub fn billed_spaces_are_listed<S: TestStore>(make: &dyn Fn() -> S) {
    let store = make();
    assert!(store.billed_spaces_page("", None, 10).unwrap().is_empty());
    for n in 1..=2 {
        store.put(new_record(n, node(), n)).unwrap();
    }
    let mut c1 = conclusion(1, vec![usage(space_a(), "2025-01-01", 5)], &[1]);
    c1.non_billable = vec![usage(did(40), "2025-01-01", 9)];
    assert_eq!(store.conclude(&c1).unwrap(), ConcludeOutcome::Concluded);
    let c2 = conclusion(
        2,
        vec![
            usage(space_b(), "2025-01-02", 1),
            usage(space_a(), "2025-01-02", 2),
        ],
        &[2],
    );
    assert_eq!(store.conclude(&c2).unwrap(), ConcludeOutcome::Concluded);
    let mut sorted = vec![space_a(), space_b()];
    sorted.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    assert_eq!(store.billed_spaces_page("", None, 10).unwrap(), sorted);
    assert_eq!(store.billed_spaces_page("", None, 1).unwrap(), sorted[..1]);
    assert_eq!(
        store
            .billed_spaces_page("", Some(sorted[0].as_str()), 10)
            .unwrap(),
        sorted[1..]
    );
    assert_eq!(
        store
            .billed_spaces_page(sorted[1].as_str(), None, 10)
            .unwrap(),
        sorted[1..]
    );
    assert!(store
        .billed_spaces_page("did:web:", None, 10)
        .unwrap()
        .is_empty());
    // Listed without being registered.
    assert!(store.spaces_page("", None, 10).unwrap().is_empty());
    consistent(&store);
}

/// Every node that tracked a batch is listed in DID order with its total
/// (0 for one whose batches are all pending), by prefix and page; a
/// node's batches newest first, pending ones too, by page.
pub fn nodes_and_their_batches_are_listed<S: TestStore>(make: &dyn Fn() -> S) {
    let store = make();
    let (a, b, idle) = (did(20), did(21), did(22));
    let mut sorted = [a.clone(), b.clone(), idle.clone()];
    sorted.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    for (n, who, at) in [
        (1, &a, 10),
        (2, &a, 30),
        (3, &a, 20),
        (4, &b, 5),
        (5, &idle, 1),
    ] {
        store.put(new_record(n, who.clone(), at)).unwrap();
    }
    let concluded = |n: u64, who: &Did, bytes: u64| {
        let mut c = conclusion(n, vec![usage(space_a(), "2025-01-01", bytes)], &[n]);
        c.node = who.clone();
        assert_eq!(store.conclude(&c).unwrap(), ConcludeOutcome::Concluded);
    };
    concluded(1, &a, 100);
    concluded(3, &a, 20);
    concluded(4, &b, 7);
    let total = |who: &Did| match who {
        _ if *who == a => 120,
        _ if *who == b => 7,
        _ => 0,
    };
    let all = store.nodes_page("", None, 10).unwrap();
    assert_eq!(
        all,
        sorted
            .iter()
            .map(|d| (d.clone(), total(d)))
            .collect::<Vec<_>>()
    );
    let first = store.nodes_page("", None, 1).unwrap();
    assert_eq!(first, all[..1]);
    let next = store.nodes_page("", Some(first[0].0.as_str()), 10).unwrap();
    assert_eq!(next, all[1..]);
    assert_eq!(
        store.nodes_page(a.as_str(), None, 10).unwrap(),
        [(a.clone(), 120)]
    );
    assert!(store.nodes_page("did:web:", None, 10).unwrap().is_empty());
    assert!(store.nodes_page("", None, 0).unwrap().is_empty());

    let listed = store.node_batches(&a, None, 10).unwrap();
    assert_eq!(leased_batches(&listed), [batch(2), batch(3), batch(1)]);
    assert!(listed[0].is_pending() && !listed[1].is_pending());
    let after =
        |r: &etracker_server::store::EgressRecord| etracker_server::store::BatchCursor::after(r);
    assert_eq!(
        leased_batches(&store.node_batches(&a, Some(&after(&listed[0])), 1).unwrap()),
        [batch(3)]
    );
    assert_eq!(
        leased_batches(
            &store
                .node_batches(&a, Some(&after(&listed[1])), 10)
                .unwrap()
        ),
        [batch(1)]
    );
    assert_eq!(
        leased_batches(&store.node_batches(&idle, None, 10).unwrap()),
        [batch(5)]
    );
    assert!(store.node_batches(&did(23), None, 10).unwrap().is_empty());
    consistent(&store);
}

/// Receipts not counted add up by error name, and failed batches by one,
/// once per conclusion: not again when concluding again, not when refused.
pub fn rejections_are_counted_once_by_name<S: TestStore>(make: &dyn Fn() -> S) {
    let store = make();
    for n in 1..=4 {
        store.put(new_record(n, node(), n)).unwrap();
    }
    let mut c1 = conclusion(1, vec![usage(space_a(), "2025-01-01", 5)], &[1]);
    c1.rejected = vec![
        ("InvalidSignature".into(), 2),
        ("DuplicateReceipt".into(), 1),
    ];
    let mut c2 = conclusion(2, Vec::new(), &[]);
    c2.failure = Some("the batch is not a CAR".into());
    let mut c3 = conclusion(3, vec![usage(space_a(), "2025-01-01", 5)], &[3]);
    c3.rejected = vec![("InvalidSignature".into(), 1), ("<script>".into(), 4)];
    // Refused (receipt 1 is counted already): its rejections do not count.
    let mut c4 = conclusion(4, vec![usage(space_a(), "2025-01-01", 5)], &[1]);
    c4.rejected = vec![("InvalidSignature".into(), 100)];
    assert_eq!(store.rejections().unwrap(), Rejections::default());
    for c in [&c1, &c2, &c3] {
        assert_eq!(store.conclude(c).unwrap(), ConcludeOutcome::Concluded);
    }
    assert!(store.conclude(&c1).is_ok());
    assert!(matches!(
        store.conclude(&c4),
        Err(StoreError::Conflict { .. })
    ));
    let rejections = store.rejections().unwrap();
    assert_eq!(rejections.failed_batches, 1);
    assert_eq!(
        rejections.by_name.into_iter().collect::<Vec<_>>(),
        [
            ("DuplicateReceipt".to_string(), 1),
            ("InvalidSignature".to_string(), 3),
            ("Other".to_string(), 4),
        ]
    );
    consistent(&store);
}

/// The pending records are listed earliest due first, a retried one with
/// its attempts, error and next attempt; concluded ones are not listed, and
/// listing changes nothing.
pub fn pending_records_list_earliest_due_first<S: TestStore>(make: &dyn Fn() -> S) {
    let store = make();
    for (n, at) in [(1, 300), (2, 100), (3, 200), (4, 50)] {
        store.put(new_record(n, node(), at)).unwrap();
    }
    // Batch 4 concludes; batch 2 fails once and waits until 1,000.
    store
        .conclude(&conclusion(
            4,
            vec![usage(space_a(), "2025-01-01", 1)],
            &[4],
        ))
        .unwrap();
    store.lease_pending(100, "a", 60, 1).unwrap();
    store
        .reschedule(&batch(2), "a", 110, &retry(1_000, "fetch: 503", true))
        .unwrap();
    let listed = store.pending_records(10).unwrap();
    assert_eq!(leased_batches(&listed), [batch(3), batch(1), batch(2)]);
    let retried = &listed[2];
    assert_eq!(retried.attempts, 1);
    assert_eq!(retried.last_error.as_deref(), Some("fetch: 503"));
    assert_eq!(retried.next_attempt_at, 1_000);
    assert_eq!(
        leased_batches(&store.pending_records(1).unwrap()),
        [batch(3)]
    );
    assert!(store.pending_records(0).unwrap().is_empty());
    // Only read: all three are still leasable.
    assert_eq!(store.lease_pending(2_000, "b", 60, 10).unwrap().len(), 3);
    consistent(&store);
}

/// All nodes' egress per day is the sum of every node's daily totals, read
/// by day range.
pub fn egress_by_day_adds_up_every_node<S: TestStore>(make: &dyn Fn() -> S) {
    let store = make();
    let other = did(9);
    store.put(new_record(1, node(), 1)).unwrap();
    store.put(new_record(2, other.clone(), 2)).unwrap();
    let c1 = conclusion(
        1,
        vec![
            usage(space_a(), "2025-01-01", 10),
            usage(space_b(), "2025-01-02", 20),
        ],
        &[1],
    );
    let mut c2 = conclusion(
        2,
        vec![
            usage(space_a(), "2025-01-02", 5),
            usage(space_a(), "2025-01-03", 7),
        ],
        &[2],
    );
    c2.node = other;
    assert!(store
        .egress_by_day("2025-01-01", "2025-02-01")
        .unwrap()
        .is_empty());
    for c in [&c1, &c2] {
        assert_eq!(store.conclude(c).unwrap(), ConcludeOutcome::Concluded);
    }
    let day = |d: &str, b: u64| (d.to_string(), b);
    assert_eq!(
        store.egress_by_day("2025-01-01", "2025-02-01").unwrap(),
        [
            day("2025-01-01", 10),
            day("2025-01-02", 25),
            day("2025-01-03", 7)
        ]
    );
    assert_eq!(
        store.egress_by_day("2025-01-02", "2025-01-03").unwrap(),
        [day("2025-01-02", 25)]
    );
    assert!(store
        .egress_by_day("2025-01-04", "2025-02-01")
        .unwrap()
        .is_empty());
    assert!(store
        .egress_by_day("2025-01-03", "2025-01-01")
        .unwrap()
        .is_empty());
    consistent(&store);
}

/// A batch touching 5,000 distinct (space, day) totals, plus non-billable
/// ones and more receipts than one DynamoDB transaction holds, concludes
/// whole: every daily total exact, counted once; concluding again changes
/// nothing; a second such batch sharing one receipt is refused whole, and
/// without it adds exactly its own bytes.
pub fn conclusions_of_any_size<S: TestStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.put(new_record(1, node(), 1)).unwrap();
    store.put(new_record(2, node(), 2)).unwrap();
    let spaces = many_spaces(200);
    let first = usage_grid(&spaces, 25, 0);
    assert_eq!(first.len(), 5_000);
    let mut c1 = conclusion(1, first.clone(), &(0..150).collect::<Vec<_>>());
    c1.non_billable = usage_grid(&spaces[..40], 3, 5);
    assert_eq!(store.conclude(&c1).unwrap(), ConcludeOutcome::Concluded);
    let all_days = (day(0), day(58));
    for space in [&spaces[0], &spaces[117], &spaces[199]] {
        assert_eq!(
            store.space_usage(space, &all_days.0, &all_days.1).unwrap(),
            grid_days(&first, space)
        );
    }
    assert_eq!(
        store
            .non_billable_usage(&spaces[39], &all_days.0, &all_days.1)
            .unwrap(),
        grid_days(&c1.non_billable, &spaces[39])
    );
    assert_eq!(
        store.node_usage(&node(), &all_days.0, &all_days.1).unwrap(),
        grid_node_days(&first)
    );
    assert_eq!(
        store.egress_by_day(&all_days.0, &all_days.1).unwrap(),
        grid_node_days(&first)
    );
    // A range inside the batch's days.
    assert_eq!(
        store.space_usage(&spaces[5], &day(3), &day(5)).unwrap(),
        grid_days(&first, &spaces[5])[3..5]
    );
    assert_eq!(store.node_total(&node()).unwrap(), c1.total_bytes);
    let mut sorted = spaces.clone();
    sorted.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    assert_eq!(store.billed_spaces_page("", None, 1_000).unwrap(), sorted);
    let before = consistent(&store);
    assert_eq!(before.counted_receipts, 150);
    assert_eq!(before.space_bytes, u128::from(c1.total_bytes));
    assert_eq!(
        store.conclude(&c1).unwrap(),
        ConcludeOutcome::AlreadyConcluded {
            receipt: c1.receipt
        }
    );
    assert_eq!(store.audit().unwrap(), before);

    // Another 5,000 entries over the same spaces and days, one receipt
    // already counted: nothing of it lands.
    let second = usage_grid(&spaces, 25, 400);
    let mut receipts: Vec<u64> = (1_000..1_150).collect();
    receipts.push(149);
    let c2 = conclusion(2, second.clone(), &receipts);
    assert_eq!(
        in_key_order(store.conclude(&c2).unwrap_err()),
        conflict(&[149])
    );
    assert!(store.record(&batch(2)).unwrap().unwrap().is_pending());
    assert_eq!(store.audit().unwrap(), before);
    receipts.pop();
    let c2 = conclusion(2, second.clone(), &receipts);
    assert_eq!(store.conclude(&c2).unwrap(), ConcludeOutcome::Concluded);
    let both: Vec<DailyUsage> = first.iter().chain(&second).cloned().collect();
    for space in [&spaces[0], &spaces[64], &spaces[199]] {
        assert_eq!(
            store.space_usage(space, &all_days.0, &all_days.1).unwrap(),
            grid_days(&both, space)
        );
    }
    assert_eq!(
        store.node_usage(&node(), &all_days.0, &all_days.1).unwrap(),
        grid_node_days(&both)
    );
    assert_eq!(
        store.egress_by_day(&all_days.0, &all_days.1).unwrap(),
        grid_node_days(&both)
    );
    let after = consistent(&store);
    assert_eq!(after.counted_receipts, 300);
    assert_eq!(
        after.space_bytes,
        u128::from(c1.total_bytes + c2.total_bytes)
    );
}

/// A conclusion that would take a total past `u64::MAX` is refused whole
/// (`Invalid`), in one transaction or in several: nothing moves, the batch
/// stays pending, and its receipts are free for another batch.
pub fn totals_never_overflow<S: TestStore>(store: &dyn Fn() -> S) {
    let store = store();
    for n in 1..=3 {
        store.put(new_record(n, node(), n)).unwrap();
    }
    let c1 = conclusion(1, vec![usage(space_a(), "2025-01-01", u64::MAX - 10)], &[1]);
    assert_eq!(store.conclude(&c1).unwrap(), ConcludeOutcome::Concluded);
    let before = consistent(&store);
    // Another space and day, but the node's total would overflow; once
    // with a claim or two, once with more claims than one transaction takes.
    for (n, receipts) in [(2, vec![2, 3]), (3, (100..400).collect::<Vec<u64>>())] {
        let c = conclusion(n, vec![usage(space_b(), "2025-01-02", 11)], &receipts);
        assert_eq!(
            store.conclude(&c).unwrap_err(),
            StoreError::Invalid("total overflows u64".into())
        );
        assert!(store.record(&batch(n)).unwrap().unwrap().is_pending());
        assert_eq!(store.audit().unwrap(), before);
    }
    assert_eq!(store.node_total(&node()).unwrap(), u64::MAX - 10);
    // Within the room left, it concludes.
    let c2 = conclusion(2, vec![usage(space_b(), "2025-01-02", 10)], &[2, 3]);
    assert_eq!(store.conclude(&c2).unwrap(), ConcludeOutcome::Concluded);
    assert_eq!(store.node_total(&node()).unwrap(), u64::MAX);
    consistent(&store);
}

// ---------------------------------------------------------------- leases

/// A replica that starts again releases the leases it held under its name:
/// those records are due at once, for it or any replica, while another
/// replica's leases stay as they are.
pub fn a_restarted_replica_takes_back_its_leases<S: TestStore>(store: &dyn Fn() -> S) {
    let store = store();
    for n in 1..=3 {
        store.put(new_record(n, node(), 100 + n)).unwrap();
    }
    assert_eq!(store.lease_pending(200, "a", 900, 2).unwrap().len(), 2);
    assert_eq!(
        leased_batches(&store.lease_pending(200, "b", 900, 10).unwrap()),
        [batch(3)]
    );
    assert!(store.lease_pending(201, "a", 900, 10).unwrap().is_empty());

    assert_eq!(store.release_leases("a", 201, 900).unwrap(), 2);
    assert_eq!(store.release_leases("a", 201, 900).unwrap(), 0);
    let again = store.lease_pending(201, "a", 900, 10).unwrap();
    assert_eq!(leased_batches(&again), [batch(1), batch(2)]);
    assert_eq!(
        store
            .record(&batch(3))
            .unwrap()
            .unwrap()
            .lease
            .unwrap()
            .owner,
        "b"
    );
    consistent(&store);
}

/// A lease hides records from other replicas until it expires; records are
/// handed out oldest first, and never before they were received.
pub fn lease_excludes_other_owners_until_expiry<S: TestStore>(store: &dyn Fn() -> S) {
    let store = store();
    for n in [3, 1, 2] {
        store.put(new_record(n, node(), 100 + n)).unwrap();
    }
    assert!(store.lease_pending(50, "a", 60, 10).unwrap().is_empty());

    let a = store.lease_pending(200, "a", 60, 2).unwrap();
    assert_eq!(leased_batches(&a), [batch(1), batch(2)]);
    assert!(a.iter().all(|r| r.lease.as_ref().unwrap().owner == "a"));
    assert!(a.iter().all(|r| r.lease.as_ref().unwrap().until == 260));

    let b = store.lease_pending(200, "b", 60, 10).unwrap();
    assert_eq!(leased_batches(&b), [batch(3)]);
    assert!(store.lease_pending(259, "c", 60, 10).unwrap().is_empty());
    // Leases are still counted as pending: they are not done.
    assert_eq!(store.pending_count().unwrap(), 3);
    consistent(&store);
}

/// Once a lease expires another replica takes the record over, and the
/// first owner can no longer reschedule it.
pub fn expired_lease_is_taken_over<S: TestStore>(store: &dyn Fn() -> S) {
    let store = store();
    store.put(new_record(1, node(), 100)).unwrap();
    store.lease_pending(100, "a", 30, 10).unwrap();
    let b = store.lease_pending(130, "b", 30, 10).unwrap();
    assert_eq!(leased_batches(&b), [batch(1)]);
    assert_eq!(b[0].lease.as_ref().unwrap().until, 160);

    let err = store
        .reschedule(&batch(1), "a", 131, &retry(200, "late", true))
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::NotLeaseOwner {
            holder: Some("b".into())
        }
    );
}

/// Only the lease owner records a failure; it backs the record off until
/// `next_attempt_at`, counts attempts and keeps the first failure time.
pub fn reschedule_only_by_owner_and_backs_off<S: TestStore>(store: &dyn Fn() -> S) {
    let store = store();
    store.put(new_record(1, node(), 100)).unwrap();

    let unleased = store
        .reschedule(&batch(1), "a", 100, &retry(200, "x", true))
        .unwrap_err();
    assert!(matches!(
        unleased,
        StoreError::NotLeaseOwner { holder: None, .. }
    ));
    let missing = store
        .reschedule(&batch(9), "a", 100, &retry(200, "x", true))
        .unwrap_err();
    assert_eq!(missing, StoreError::NotFound);

    store.lease_pending(100, "a", 60, 10).unwrap();
    let other = store
        .reschedule(&batch(1), "b", 110, &retry(200, "x", true))
        .unwrap_err();
    assert!(matches!(other, StoreError::NotLeaseOwner { .. }));
    assert_eq!(store.record(&batch(1)).unwrap().unwrap().attempts, 0);

    let r = store
        .reschedule(
            &batch(1),
            "a",
            110,
            &retry(400, "fetch: connection refused", true),
        )
        .unwrap();
    assert_eq!(r.attempts, 1);
    assert_eq!(r.first_failure_at, Some(110));
    assert_eq!(r.next_attempt_at, 400);
    assert_eq!(r.last_error.as_deref(), Some("fetch: connection refused"));
    assert_eq!(r.lease, None);
    assert_eq!(store.record(&batch(1)).unwrap(), Some(r));

    // Released, but not due before 400 — for anyone.
    assert!(store.lease_pending(399, "b", 60, 10).unwrap().is_empty());
    let b = store.lease_pending(400, "b", 60, 10).unwrap();
    assert_eq!(leased_batches(&b), [batch(1)]);
    let r = store
        .reschedule(&batch(1), "b", 401, &retry(900, "again", true))
        .unwrap();
    assert_eq!((r.attempts, r.first_failure_at), (2, Some(110)));
    // A failure on the tracker's side ends the node's streak; the next
    // failure of the node starts a new one.
    store.lease_pending(900, "b", 60, 10).unwrap();
    let r = store
        .reschedule(&batch(1), "b", 901, &retry(900, "disk full", false))
        .unwrap();
    assert_eq!((r.attempts, r.first_failure_at), (3, None));
    store.lease_pending(902, "b", 60, 10).unwrap();
    let r = store
        .reschedule(&batch(1), "b", 903, &retry(900, "refused", true))
        .unwrap();
    assert_eq!((r.attempts, r.first_failure_at), (4, Some(903)));
    consistent(&store);

    store.lease_pending(900, "a", 60, 10).unwrap();
    store
        .conclude(&conclusion(
            1,
            vec![usage(space_a(), "2025-01-01", 5)],
            &[1],
        ))
        .unwrap();
    let done = store
        .reschedule(&batch(1), "a", 901, &retry(999, "x", true))
        .unwrap_err();
    assert_eq!(done, StoreError::NotPending);
}

/// Replicas leasing at the same moment from several threads never get the
/// same record.
pub fn concurrent_leases_are_disjoint<S: TestStore>(store: &dyn Fn() -> S) {
    let store = Arc::new(store());
    for n in 0..40 {
        store.put(new_record(n, node(), n)).unwrap();
    }
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for _ in 0..10 {
                    mine.extend(leased_batches(
                        &store.lease_pending(100, &format!("r{i}"), 60, 3).unwrap(),
                    ));
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<Cid> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let leased = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), leased, "a record was leased twice");
    assert_eq!(leased, 40);
}

// ---------------------------------------------------------------- conclude

/// Concluding stores the receipt, adds node and space totals, marks the
/// receipts counted and the record done, together; doing it again is
/// reported and changes nothing.
pub fn conclude_commits_everything_once<S: TestStore>(store: &dyn Fn() -> S) {
    let store = store();
    store.put(new_record(1, node(), 100)).unwrap();
    store.lease_pending(100, "a", 60, 10).unwrap();
    let c = conclusion(
        1,
        vec![
            usage(space_a(), "2025-01-01", 100),
            usage(space_a(), "2025-01-02", 20),
            usage(space_b(), "2025-01-01", 3),
            usage(space_a(), "2025-01-01", 1), // repeated key: added up
        ],
        &[1, 2, 3, 4],
    );
    assert_eq!(store.conclude(&c).unwrap(), ConcludeOutcome::Concluded);

    let record = store.record(&batch(1)).unwrap().unwrap();
    assert_eq!(
        record.status,
        RecordStatus::Done {
            receipt: c.receipt,
            concluded_at: c.concluded_at,
            total_bytes: 124,
            counted_receipts: 4,
            failure: None,
        }
    );
    assert_eq!(record.lease, None);
    assert_eq!(
        store.receipt(&consolidate(1)).unwrap(),
        Some(c.receipt_bytes.clone())
    );
    assert_eq!(
        store
            .counted(&node(), &[counted(1), counted(5), counted(4)])
            .unwrap(),
        [Some(batch(1)), None, Some(batch(1))]
    );
    assert_eq!(store.node_total(&node()).unwrap(), 124);
    assert_eq!(store.node_total(&mallory()).unwrap(), 0);
    assert_eq!(
        store
            .node_usage(&node(), "2025-01-01", "2025-02-01")
            .unwrap(),
        [
            ("2025-01-01".to_string(), 104),
            ("2025-01-02".to_string(), 20)
        ]
    );
    assert_eq!(
        store
            .space_usage(&space_a(), "2025-01-01", "2025-01-03")
            .unwrap(),
        [
            ("2025-01-01".to_string(), 101),
            ("2025-01-02".to_string(), 20)
        ]
    );
    assert_eq!(store.pending_count().unwrap(), 0);
    assert!(store.lease_pending(10_000, "b", 60, 10).unwrap().is_empty());
    let stats = store.stats().unwrap();
    assert_eq!(
        (
            stats.records,
            stats.pending,
            stats.concluded,
            stats.counted_receipts,
            stats.nodes,
            stats.total_bytes
        ),
        (1, 0, 1, 4, 1, 124)
    );
    let before = consistent(&store);
    assert_eq!((before.space_bytes, before.node_bytes), (124, 124));

    // A second conclusion, even with other numbers, changes nothing.
    let mut again = conclusion(1, vec![usage(space_b(), "2025-01-05", 999)], &[7]);
    again.receipt = cid_of(DAG_CBOR, b"another receipt");
    assert_eq!(
        store.conclude(&again).unwrap(),
        ConcludeOutcome::AlreadyConcluded { receipt: c.receipt }
    );
    assert_eq!(store.audit().unwrap(), before);
    assert_eq!(
        store.receipt(&consolidate(1)).unwrap(),
        Some(c.receipt_bytes)
    );
    assert_eq!(store.node_total(&node()).unwrap(), 124);
}

/// A conclusion for a batch that is unknown, that is not the record's
/// consolidate task or node, or whose numbers do not add up, is refused.
pub fn conclude_refuses_what_does_not_match<S: TestStore>(store: &dyn Fn() -> S) {
    let store = store();
    let c = conclusion(1, vec![usage(space_a(), "2025-01-01", 10)], &[1]);
    assert_eq!(store.conclude(&c).unwrap_err(), StoreError::NotFound);

    store.put(new_record(1, node(), 100)).unwrap();
    let mut wrong_task = c.clone();
    wrong_task.consolidate_invocation = consolidate(2);
    assert!(matches!(
        store.conclude(&wrong_task),
        Err(StoreError::Mismatch(_))
    ));
    let mut wrong_node = c.clone();
    wrong_node.node = mallory();
    assert!(matches!(
        store.conclude(&wrong_node),
        Err(StoreError::Mismatch(_))
    ));
    let mut wrong_total = c.clone();
    wrong_total.total_bytes = 11;
    assert!(matches!(
        store.conclude(&wrong_total),
        Err(StoreError::Invalid(_))
    ));
    let mut bad_day = c.clone();
    bad_day.usage[0].day = "2025-1-1".into();
    assert!(matches!(
        store.conclude(&bad_day),
        Err(StoreError::Invalid(_))
    ));
    let twice = conclusion(1, vec![usage(space_a(), "2025-01-01", 10)], &[1, 1]);
    assert!(matches!(
        store.conclude(&twice),
        Err(StoreError::Invalid(_))
    ));

    assert!(store.record(&batch(1)).unwrap().unwrap().is_pending());
    assert_eq!(store.stats().unwrap().total_bytes, 0);
    assert_eq!(store.conclude(&c).unwrap(), ConcludeOutcome::Concluded);
}

/// A batch that would count a retrieve receipt another batch already
/// counted is refused whole: no total, receipt, counted mark or status
/// changes, so nothing is ever counted twice.
pub fn overlapping_receipts_conflict_and_change_nothing<S: TestStore>(store: &dyn Fn() -> S) {
    let store = store();
    store.put(new_record(1, node(), 100)).unwrap();
    store.put(new_record(2, node(), 101)).unwrap();
    store
        .conclude(&conclusion(
            1,
            vec![usage(space_a(), "2025-01-01", 10)],
            &[1, 2],
        ))
        .unwrap();
    let before = consistent(&store);
    let record_before = store.record(&batch(2)).unwrap();

    let overlapping = conclusion(
        2,
        vec![
            usage(space_a(), "2025-01-01", 7),
            usage(space_b(), "2025-01-02", 5),
        ],
        &[3, 2, 4, 1],
    );
    assert_eq!(
        in_key_order(store.conclude(&overlapping).unwrap_err()),
        conflict(&[2, 1])
    );
    assert_eq!(store.audit().unwrap(), before);
    assert_eq!(store.record(&batch(2)).unwrap(), record_before);
    assert_eq!(store.receipt(&consolidate(2)).unwrap(), None);
    assert_eq!(
        store.counted(&node(), &[counted(3), counted(4)]).unwrap(),
        [None, None]
    );
    assert_eq!(
        store
            .space_usage(&space_b(), "2025-01-01", "2026-01-01")
            .unwrap(),
        []
    );

    // Without the already-counted receipts, the batch concludes.
    let rest = conclusion(2, vec![usage(space_a(), "2025-01-01", 7)], &[3, 4]);
    assert_eq!(store.conclude(&rest).unwrap(), ConcludeOutcome::Concluded);
    assert_eq!(store.node_total(&node()).unwrap(), 17);
    consistent(&store);
}

/// Two replicas concluding batches that share receipts at the same time:
/// exactly one wins, the other gets `Conflict`.
pub fn racing_conclusions_count_a_receipt_once<S: TestStore>(store: &dyn Fn() -> S) {
    for _ in 0..20 {
        let store = Arc::new(store());
        store.put(new_record(1, node(), 1)).unwrap();
        store.put(new_record(2, node(), 2)).unwrap();
        let racers: Vec<_> = [1, 2]
            .map(|n| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let c = conclusion(n, vec![usage(space_a(), "2025-01-01", 10)], &[5, 6, n]);
                    store.conclude(&c)
                })
            })
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let wins = racers.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "{racers:?}");
        assert_eq!(store.node_total(&node()).unwrap(), 10);
        consistent(&*store);
    }
}

// ---------------------------------------------------------------- reads

/// Space usage is read per day for `from` (inclusive) to `to` (exclusive).
pub fn space_usage_by_day_range<S: TestStore>(store: &dyn Fn() -> S) {
    let store = store();
    store.put(new_record(1, node(), 1)).unwrap();
    store.put(new_record(2, node(), 2)).unwrap();
    let days = ["2025-01-30", "2025-01-31", "2025-02-01", "2025-02-02"];
    let mut first: Vec<_> = days.iter().map(|d| usage(space_a(), d, 10)).collect();
    first.push(usage(space_b(), "2025-01-31", 1000));
    store.conclude(&conclusion(1, first, &[1])).unwrap();
    store
        .conclude(&conclusion(
            2,
            vec![usage(space_a(), "2025-01-31", 5)],
            &[2],
        ))
        .unwrap();

    let read = |from, to| store.space_usage(&space_a(), from, to).unwrap();
    assert_eq!(
        read("2025-01-31", "2025-02-02"),
        [
            ("2025-01-31".to_string(), 15),
            ("2025-02-01".to_string(), 10)
        ]
    );
    assert_eq!(read("2025-01-01", "2026-01-01").len(), 4);
    assert_eq!(read("2025-02-01", "2025-02-01"), []);
    assert_eq!(read("2025-02-02", "2025-01-01"), []);
    assert!(matches!(
        store.space_usage(&space_a(), "2025-01", "2025-02-01"),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        store
            .space_usage(&space_b(), "2025-01-01", "2026-01-01")
            .unwrap(),
        [("2025-01-31".to_string(), 1000)]
    );
}

// ---------------------------------------------------------------- properties

/// One step of a replica, or of a node, in the property test.
#[derive(Clone, Debug)]
pub enum Op {
    Put {
        n: u64,
        mallory: bool,
    },
    Lease {
        owner: u8,
        secs: u64,
        limit: usize,
    },
    /// `owner: None` is the current lease holder (so that rescheduling is
    /// not almost always refused).
    Reschedule {
        n: u64,
        owner: Option<u8>,
        delay: u64,
    },
    Conclude {
        n: u64,
        receipts: Vec<u64>,
        space_b: bool,
        day: u8,
    },
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..6u64, proptest::bool::weighted(0.2)).prop_map(|(n, mallory)| Op::Put { n, mallory }),
        (0..3u8, 1..40u64, 0..4usize).prop_map(|(owner, secs, limit)| Op::Lease {
            owner,
            secs,
            limit
        }),
        (0..6u64, proptest::option::weighted(0.3, 0..3u8), 0..40u64)
            .prop_map(|(n, owner, delay)| Op::Reschedule { n, owner, delay }),
        (
            0..6u64,
            proptest::collection::btree_set(0..16u64, 0..5),
            any::<bool>(),
            1..4u8
        )
            .prop_map(|(n, receipts, space_b, day)| Op::Conclude {
                n,
                receipts: receipts.into_iter().collect(),
                space_b,
                day
            }),
    ]
}

/// Applies `steps` (time advance, operation) to a fresh store, checking each
/// outcome against a model and the store's invariants after every step.
pub fn run_steps<S: TestStore>(
    store: &dyn Fn() -> S,
    steps: Vec<(u64, Op)>,
) -> Result<(), TestCaseError> {
    let store = store();
    let mut now = 0;
    let mut counted = std::collections::BTreeSet::new();
    let mut total: u128 = 0;
    for (dt, op) in steps {
        now += dt;
        match op {
            Op::Put { n, mallory: m } => {
                let who = if m { mallory() } else { node() };
                let before = store.record(&batch(n)).unwrap();
                let out = store.put(new_record(n, who.clone(), now));
                match before {
                    None => prop_assert!(matches!(out, Ok(PutOutcome::Inserted(_))), "{out:?}"),
                    Some(r) if r.node == who => prop_assert_eq!(out, Ok(PutOutcome::Existing(r))),
                    Some(_) => prop_assert!(
                        matches!(out, Err(StoreError::NodeConflict { .. })),
                        "{out:?}"
                    ),
                }
            }
            Op::Lease { owner, secs, limit } => {
                let mut due: Vec<_> = (0..6)
                    .filter_map(|n| store.record(&batch(n)).unwrap())
                    .filter(|r| r.due_at().is_some_and(|d| d <= now))
                    .map(|r| (r.due_at(), r.received_at, r.batch.to_bytes(), r.batch))
                    .collect();
                due.sort();
                let expected: Vec<Cid> = due.iter().take(limit).map(|d| d.3).collect();
                let owner = format!("r{owner}");
                let leased = store.lease_pending(now, &owner, secs, limit).unwrap();
                prop_assert_eq!(leased_batches(&leased), expected);
                for r in &leased {
                    prop_assert_eq!(
                        r.lease.as_ref().map(|l| (&l.owner, l.until)),
                        Some((&owner, now + secs))
                    );
                }
            }
            Op::Reschedule { n, owner, delay } => {
                let before = store.record(&batch(n)).unwrap();
                let holder = before
                    .as_ref()
                    .and_then(|r| r.lease.as_ref())
                    .map(|l| l.owner.clone());
                let owner = match owner {
                    Some(o) => format!("r{o}"),
                    None => holder.clone().unwrap_or_else(|| "r0".into()),
                };
                let out = store.reschedule(
                    &batch(n),
                    &owner,
                    now,
                    &retry(now + delay, "transient", true),
                );
                match before {
                    None => prop_assert!(matches!(out, Err(StoreError::NotFound)), "{out:?}"),
                    Some(r) if !r.is_pending() => {
                        prop_assert!(matches!(out, Err(StoreError::NotPending)), "{out:?}")
                    }
                    Some(r) if holder.as_ref() == Some(&owner) => {
                        let after = out.unwrap();
                        prop_assert_eq!(after.attempts, r.attempts + 1);
                        prop_assert_eq!(after.next_attempt_at, now + delay);
                        prop_assert_eq!(after.lease, None);
                    }
                    Some(_) => prop_assert_eq!(out, Err(StoreError::NotLeaseOwner { holder })),
                }
            }
            Op::Conclude {
                n,
                receipts,
                space_b: b,
                day,
            } => {
                let before = store.record(&batch(n)).unwrap();
                let space = if b { space_b() } else { space_a() };
                let bytes = receipts.len() as u64 * 100 + 1;
                // A retrieval is addressed to one node (the consolidator
                // checks it): mallory's retrievals are its own.
                let node = before.as_ref().map_or_else(node, |r| r.node.clone());
                let receipts: Vec<u64> = receipts
                    .iter()
                    .map(|r| if node == mallory() { r + 10_000 } else { *r })
                    .collect();
                let mut c = conclusion(
                    n,
                    vec![usage(space, &format!("2025-05-0{day}"), bytes)],
                    &receipts,
                );
                c.node = node;
                let out = store.conclude(&c);
                let overlap: Vec<u64> = receipts
                    .iter()
                    .filter(|r| counted.contains(*r))
                    .copied()
                    .collect();
                match before {
                    None => prop_assert!(matches!(out, Err(StoreError::NotFound)), "{out:?}"),
                    Some(r) if !r.is_pending() => prop_assert!(
                        matches!(out, Ok(ConcludeOutcome::AlreadyConcluded { .. })),
                        "{out:?}"
                    ),
                    Some(_) if !overlap.is_empty() => {
                        prop_assert_eq!(out.map_err(in_key_order), Err(conflict(&overlap)))
                    }
                    Some(_) => {
                        prop_assert_eq!(out, Ok(ConcludeOutcome::Concluded));
                        counted.extend(receipts);
                        total += u128::from(bytes);
                    }
                }
            }
        }
        let audit = store.audit().unwrap();
        prop_assert!(audit.is_consistent(), "{:?}", audit.problems);
        prop_assert_eq!(audit.space_bytes, total);
        prop_assert_eq!(audit.node_bytes, total);
        prop_assert_eq!(audit.concluded_bytes, total);
        prop_assert_eq!(audit.counted_receipts, counted.len() as u64);
    }
    Ok(())
}

// ---------------------------------------------------------------- staging

/// Tally chunks staged for a batch are read back by CID as what they add
/// (missing ones as `None`), staging one twice is harmless, a chunk that is
/// not one of the batch's is refused, other batches see none of them, and
/// the batch's conclusion drops them.
pub fn staged_chunks_wait_for_their_conclusion<S: TestStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.put(new_record(1, node(), 100)).unwrap();
    let chunk = |n: u64| {
        let chunk = etracker_server::tally::Chunk {
            usage: vec![(space_a(), "2025-01-01".into(), n)],
            counted: (0..n).map(|r| counted(100 * n + r)).collect(),
            ..Default::default()
        };
        let block = chunk.encode(batch(1)).unwrap();
        (block.cid, block.bytes.to_vec())
    };
    let read = |n: u64| {
        Some(StagedChunk {
            usage: vec![(space_a(), "2025-01-01".into(), n)],
            non_billable: Vec::new(),
            counted: n,
        })
    };
    let garbage = (cid_of(DAG_CBOR, b"not a chunk"), b"not a chunk".to_vec());
    let tally = [chunk(1).0, chunk(2).0, chunk(3).0, garbage.0];
    let staged = staging(1, &tally);
    store.stage_chunks(&staged, &[chunk(1), chunk(2)]).unwrap();
    store.stage_chunks(&staged, &[chunk(2)]).unwrap();
    let wanted = [chunk(1).0, chunk(3).0, chunk(2).0];
    assert_eq!(
        store.staged_chunks(&staged, &wanted).unwrap(),
        [read(1), None, read(2)]
    );
    assert_eq!(
        store.staged_chunks(&staging(2, &tally), &wanted).unwrap(),
        [None, None, None]
    );
    assert!(matches!(
        store.stage_chunks(&staged, &[garbage]),
        Err(StoreError::Invalid(_) | StoreError::Corrupt(_))
    ));
    store.lease_pending(100, "a", 60, 10).unwrap();
    store
        .conclude(&conclusion(
            1,
            vec![usage(space_a(), "2025-01-01", 5)],
            &[1],
        ))
        .unwrap();
    assert_eq!(
        store.staged_chunks(&staged, &wanted).unwrap(),
        [None, None, None]
    );
    consistent(&store);
}

/// A tally chunk of batch `n` counting the retrievals `receipts`.
fn tally_chunk(n: u64, receipts: &[u64]) -> (Cid, Vec<u8>) {
    let chunk = etracker_server::tally::Chunk {
        counted: receipts.iter().copied().map(counted).collect(),
        ..Default::default()
    };
    let block = chunk.encode(batch(n)).unwrap();
    (block.cid, block.bytes.to_vec())
}

/// A conclusion whose counted retrievals are in staged chunks as well as
/// listed counts them all, once; a repeat across them, a missing chunk or
/// a chunk of another batch is refused, a retrieval another batch counted
/// is a conflict, and none of these writes anything.
pub fn a_staged_tally_counts_a_chunk_at_a_time<S: TestStore>(make: &dyn Fn() -> S) {
    let store = make();
    for n in 1..=3 {
        store.put(new_record(n, node(), 100 + n)).unwrap();
    }
    store
        .conclude(&conclusion(
            3,
            vec![usage(space_a(), "2025-01-01", 1)],
            &[99],
        ))
        .unwrap();
    let (first, second) = (tally_chunk(1, &[10, 11, 12]), tally_chunk(1, &[13, 14]));
    let both = staging(1, &[first.0, second.0]);
    store
        .stage_chunks(&both, &[first.clone(), second.clone()])
        .unwrap();
    let mut staged = store.staged_chunk_ids(&both).unwrap();
    staged.sort();
    let mut expected = vec![first.0, second.0];
    expected.sort();
    assert_eq!(staged, expected);
    let before = consistent(&store);
    let with = |listed: &[u64], chunks: Vec<Cid>| {
        let mut c = conclusion(1, vec![usage(space_a(), "2025-01-01", 60)], listed);
        c.staged_tally = chunks;
        c
    };
    let repeated = with(&[1, 12], vec![first.0, second.0]);
    assert!(matches!(
        store.conclude(&repeated),
        Err(StoreError::Invalid(_))
    ));
    let missing = with(&[1], vec![first.0, tally_chunk(1, &[20]).0]);
    assert!(matches!(
        store.conclude(&missing),
        Err(StoreError::Invalid(_))
    ));
    let foreign = tally_chunk(2, &[30]);
    assert!(matches!(
        store.stage_chunks(&staging(1, &[foreign.0]), std::slice::from_ref(&foreign)),
        Err(StoreError::Invalid(_))
    ));
    let other_batch = with(&[1], vec![foreign.0]);
    assert!(store.conclude(&other_batch).is_err());
    let conflicting = tally_chunk(1, &[99]);
    store
        .stage_chunks(
            &staging(1, &[first.0, conflicting.0]),
            &[first.clone(), conflicting.clone()],
        )
        .unwrap();
    match store.conclude(&with(&[1], vec![first.0, conflicting.0])) {
        Err(e) => assert_eq!(in_key_order(e), conflict(&[99])),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(consistent(&store).counted_receipts, before.counted_receipts);
    assert!(store.record(&batch(1)).unwrap().unwrap().status == RecordStatus::Pending);

    store
        .conclude(&with(&[1, 2], vec![first.0, second.0]))
        .unwrap();
    let after = consistent(&store);
    assert_eq!(after.counted_receipts, before.counted_receipts + 7);
    match store.record(&batch(1)).unwrap().unwrap().status {
        RecordStatus::Done {
            counted_receipts, ..
        } => assert_eq!(counted_receipts, 7),
        other => panic!("not done: {other:?}"),
    }
    let counted = store
        .counted(
            &node(),
            &[counted(1), counted(12), counted(14), counted(30)],
        )
        .unwrap();
    assert_eq!(
        counted,
        [Some(batch(1)), Some(batch(1)), Some(batch(1)), None]
    );
    assert!(store.staged_chunk_ids(&both).unwrap().is_empty());
    // Sent again once its chunks are gone (an answer lost on the way): the
    // batch is concluded, with that receipt, as step 3 says before step 4.
    let again = with(&[1, 2], vec![first.0, second.0]);
    assert_eq!(
        store.conclude(&again).unwrap(),
        ConcludeOutcome::AlreadyConcluded {
            receipt: again.receipt
        }
    );
}

// ---------------------------------------------------------------- spaces

/// The registry of billable spaces: added, replaced, listed in DID order,
/// removed.
pub fn registered_spaces_are_kept_and_listed<S: TestStore>(make: &dyn Fn() -> S) {
    use etracker_server::store::SpaceEntry;
    let store = make();
    let provider: Did = "did:web:up.example".parse().unwrap();
    let account: Did = "did:mailto:example.com:alice".parse().unwrap();
    assert_eq!(store.space(&space_a()).unwrap(), None);
    assert!(store.spaces().unwrap().is_empty());
    let a = SpaceEntry {
        space: space_a(),
        provider: provider.clone(),
        customer: Some(account.clone()),
    };
    let b = SpaceEntry {
        space: space_b(),
        provider: provider.clone(),
        customer: None,
    };
    store.put_space(&a).unwrap();
    store.put_space(&b).unwrap();
    store.put_space(&a).unwrap();
    assert_eq!(store.space(&space_a()).unwrap(), Some(a.clone()));
    assert_eq!(store.customer_spaces(&account).unwrap(), [space_a()]);
    assert!(store.customer_spaces(&provider).unwrap().is_empty());
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort_by(|x, y| x.space.as_str().cmp(y.space.as_str()));
    assert_eq!(store.spaces().unwrap(), expected);
    // Replaced whole: the customer goes.
    let a2 = SpaceEntry {
        customer: None,
        ..a.clone()
    };
    store.put_space(&a2).unwrap();
    assert_eq!(store.space(&space_a()).unwrap(), Some(a2));
    assert!(store.customer_spaces(&account).unwrap().is_empty());
    // Another customer takes it, then it goes: the index follows.
    let other: Did = "did:mailto:example.com:bob".parse().unwrap();
    store.put_space(&a).unwrap();
    store
        .put_space(&SpaceEntry {
            customer: Some(other.clone()),
            ..a.clone()
        })
        .unwrap();
    assert!(store.customer_spaces(&account).unwrap().is_empty());
    assert_eq!(store.customer_spaces(&other).unwrap(), [space_a()]);
    assert!(store.remove_space(&space_a()).unwrap());
    assert!(store.customer_spaces(&other).unwrap().is_empty());
    store.put_space(&a).unwrap();
    assert!(store.remove_space(&space_a()).unwrap());
    assert!(!store.remove_space(&space_a()).unwrap());
    assert_eq!(store.spaces().unwrap(), vec![b.clone()]);
    // Many at once: added, or replaced whole.
    let many: Vec<SpaceEntry> = many_spaces(5)
        .into_iter()
        .chain([space_b()])
        .map(|space| SpaceEntry {
            space,
            provider: provider.clone(),
            customer: Some(account.clone()),
        })
        .collect();
    store.put_spaces(&many).unwrap();
    let mut expected = many.clone();
    expected.sort_by(|x, y| x.space.as_str().cmp(y.space.as_str()));
    assert_eq!(store.spaces().unwrap(), expected);
    let theirs: Vec<Did> = expected.into_iter().map(|e| e.space).collect();
    assert_eq!(store.customer_spaces(&account).unwrap(), theirs);
}

/// Non-billable bytes go to their own table: not in node or space totals,
/// but their retrievals are counted (never again) and shown in the stats.
pub fn non_billable_bytes_are_kept_apart<S: TestStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.put(new_record(1, node(), 100)).unwrap();
    store.lease_pending(100, "a", 60, 10).unwrap();
    let mut c = conclusion(1, vec![usage(space_a(), "2025-01-01", 5)], &[1, 2]);
    c.non_billable = vec![
        usage(space_a(), "2025-01-01", 70),
        usage(space_b(), "2025-01-02", 30),
    ];
    store.conclude(&c).unwrap();
    assert_eq!(store.node_total(&node()).unwrap(), 5);
    assert_eq!(
        store
            .space_usage(&space_a(), "2025-01-01", "2025-02-01")
            .unwrap(),
        [("2025-01-01".to_string(), 5)]
    );
    assert_eq!(
        store
            .non_billable_usage(&space_a(), "2025-01-01", "2025-02-01")
            .unwrap(),
        [("2025-01-01".to_string(), 70)]
    );
    assert_eq!(
        store
            .non_billable_usage(&space_b(), "2025-01-01", "2025-02-01")
            .unwrap(),
        [("2025-01-02".to_string(), 30)]
    );
    let stats = store.stats().unwrap();
    assert_eq!((stats.total_bytes, stats.non_billable_bytes), (5, 100));
    assert_eq!(
        store.counted(&node(), &[counted(2)]).unwrap(),
        [Some(batch(1))]
    );
    consistent(&store);
}

/// Sixty batches of one node received in the same second, paged seven at a
/// time by the cursor of each page's last: every batch is listed once, in
/// the store's order, none skipped.
pub fn a_nodes_batches_page_without_skipping_a_second<S: TestStore>(make: &dyn Fn() -> S) {
    use etracker_server::store::BatchCursor;
    let store = make();
    for n in 1..=60 {
        store.put(new_record(n, node(), 1_000)).unwrap();
    }
    store.put(new_record(61, node(), 999)).unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<BatchCursor> = None;
    loop {
        let page = store.node_batches(&node(), cursor.as_ref(), 7).unwrap();
        seen.extend(page.iter().map(|r| r.batch));
        match page.last() {
            Some(last) if page.len() == 7 => cursor = Some(BatchCursor::after(last)),
            _ => break,
        }
    }
    assert_eq!(seen.len(), 61, "every batch listed once");
    let distinct: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), 61);
    assert_eq!(seen[60], batch(61), "the older second last");
    let text = BatchCursor::after(&store.node_batches(&node(), None, 1).unwrap()[0]).to_string();
    assert_eq!(text.parse::<BatchCursor>().unwrap().to_string(), text);
}

/// Batches that failed as a whole are listed newest first with their
/// error, paged by a cursor of (conclusion time, CID): 60 failed in one
/// second and one before are each listed once; a concluded batch is not.
pub fn failed_batches_are_listed_with_their_error_without_skipping<S: TestStore>(
    make: &dyn Fn() -> S,
) {
    use etracker_server::store::BatchCursor;
    let store = make();
    for n in 1..=62 {
        store.put(new_record(n, node(), n)).unwrap();
    }
    for n in 1..=61 {
        let mut c = conclusion(n, Vec::new(), &[]);
        c.failure = Some(format!("batch {n} is not a CAR"));
        c.concluded_at = if n == 61 { 1_999 } else { 2_000 };
        store.conclude(&c).unwrap();
    }
    let fine = conclusion(62, vec![usage(space_a(), "2025-01-01", 5)], &[62]);
    store.conclude(&fine).unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<BatchCursor> = None;
    loop {
        let page = store.failed_batches(cursor.as_ref(), 7).unwrap();
        for r in &page {
            let RecordStatus::Done {
                failure: Some(failure),
                concluded_at,
                ..
            } = &r.status
            else {
                panic!("not failed: {r:?}");
            };
            let n = (1..=61)
                .find(|n| batch(*n) == r.batch)
                .expect("a failed batch");
            assert_eq!(*failure, format!("batch {n} is not a CAR"));
            seen.push((r.batch, *concluded_at));
        }
        match page.last() {
            Some(last) if page.len() == 7 => {
                cursor = Some(BatchCursor {
                    received_at: seen.last().unwrap().1,
                    batch: last.batch,
                })
            }
            _ => break,
        }
    }
    assert_eq!(seen.len(), 61, "every failed batch listed once");
    let distinct: std::collections::HashSet<_> = seen.iter().map(|(b, _)| b).collect();
    assert_eq!(distinct.len(), 61);
    assert_eq!(seen[60], (batch(61), 1_999), "the older second last");
    assert!(
        !distinct.contains(&batch(62)),
        "a concluded batch is not listed"
    );
    consistent(&store);
}

/// A node that tracked only batches still pending (or failed) is listed,
/// with nothing paid; the count of nodes paid is unchanged by it.
pub fn nodes_with_only_pending_batches_are_listed<S: TestStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.put(new_record(1, node(), 1)).unwrap();
    store.put(new_record(2, mallory(), 2)).unwrap();
    store
        .conclude(&conclusion(
            1,
            vec![usage(space_a(), "2025-01-01", 5)],
            &[1],
        ))
        .unwrap();
    let mut listed = store.nodes_page("", None, 10).unwrap();
    listed.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let mut expected = vec![(node(), 5), (mallory(), 0)];
    expected.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    assert_eq!(listed, expected);
    consistent(&store);
    assert_eq!(store.stats().unwrap().nodes, 1, "one node paid");
}
