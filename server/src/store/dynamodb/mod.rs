//! The DynamoDB backend (cargo feature `dynamodb`): several tracker replicas
//! share one table and stay safe through conditional writes.
//!
//! Its semantics are those of [`RedbStore`](super::redb::RedbStore): the same
//! calls give the same outcomes and errors (differences, all under races or
//! after a crash, are listed at the end).
//!
//! # Runtime
//!
//! [`Store`](super::Store) is synchronous. The store owns a small tokio runtime (one worker
//! thread, for the HTTP connections) and `block_on`s every SDK future on the
//! calling thread. Call it from plain threads or from
//! `tokio::task::spawn_blocking` (what the server does), **never directly from
//! async code**: tokio panics when a runtime is blocked on inside another
//! runtime's worker. Dropping the store from async code is fine (its runtime
//! is shut down in the background).
//!
//! # Files
//!
//! Each role of the store is implemented in the file named for it (see
//! [`crate::store`]); this file keeps the struct and the connection.
//!
//! - `records.rs`: [`Records`](super::Records): `put`, `lease_pending`,
//!   `reschedule` (versioned writes), with `pending.rs`, each node's count
//!   of pending records;
//! - `conclusions.rs`: [`Conclusions`](super::Conclusions): staged tally
//!   chunks, receipts, counted retrievals, and `conclude`, whose chain
//!   (claims pages, fence, final flip) is in `conclude.rs`, and the claims
//!   (pages of digests per node and hour) in `claims.rs`;
//! - `spaces.rs`: [`SpaceStore`](super::SpaceStore): the space registry;
//! - `dashboard.rs`: [`DashboardReads`](super::DashboardReads): reads of the
//!   totals, pages of spaces and nodes, counters;
//! - `sessions.rs`: [`Sessions`](super::Sessions): dashboard sessions, one
//!   item each with a `ttl`;
//! - `table.rs`: the connection, the table and its format, retries;
//! - `requests.rs`: the reads and transactions everything is made of;
//! - `items.rs`: the item layout (keys and attributes) and its encoding;
//! - `audit.rs`: the consistency check of a whole table.
//!
//! # Access patterns and their cost
//!
//! Writes are transactional (two write request units per KB of item, per
//! item); reads are strongly consistent (one read unit per 4 KB).
//!
//! | operation | items written | written by everyone? |
//! |---|---|---|
//! | track (`put`) | the record, its due entry, `ADD` to its shard of the counters, its entry in the node's list of batches, the node's pending count | no: due entry and counters in one of 16 shards, by batch; the count per node |
//! | lease (per record) | the record, its due entry moved | no |
//! | conclude | the record, its due entry removed, the receipt, `ADD` −1 to the node's pending count, the node's entry in the list of nodes, `ADD`s to the node's total (and its version), its shard of the counters and of the rejection counts, and one daily total per (space, day), per node and day and per day in its shard of all nodes' egress (or, past 95, one usage row each, written before); before that, outside the transaction, the attempt's claims pages (16 bytes per counted receipt, per node and hour) and an entry per billed space in the list of spaces with egress (once per space and process) | no: per node, per space, shards by batch |
//! | `stats` | — (reads the 17 counters items and counts the 17 due partitions) | |
//! | release (a replica's start) | each of its leased records, its due entry moved (reads the whole due index) | no |
//!
//! So a track writes five items (about 10 write units with a 1–2 KB track
//! invocation), and a counted receipt 16 bytes of a claims page (about
//! 0.016 write units) plus its share of the daily totals; checking it reads
//! the node's pages of its hour once per version of the node (about 0.004
//! read units). The items a node's every conclusion writes are its own
//! total and its entry in the list of nodes. A daily-total read costs one
//! more item per usage row of the day not yet folded. The due index is read
//! a page at a time from each shard by every lease.
//!
//! # Differences from redb
//!
//! - Claims are per node: a retrieval counted for one node and listed in
//!   another node's conclusion is not a conflict here (redb keys claims by
//!   the retrieval alone). The consolidator never lets that happen: a
//!   retrieval counts only for the node it was addressed to.
//! - Totals are refused past `u64::MAX` as redb refuses them (`Invalid`),
//!   each `ADD` conditioned on the room left; but the counters of `stats`
//!   are summed over shards when read, so a sum past `u64::MAX` (18 EB of
//!   egress) is an error of that read, not a refused conclusion.
//! - Daily totals of a conclusion written as usage rows (see `conclude.rs`)
//!   are not checked against `u64::MAX` when committed: a day's sum past it
//!   (18 EB in one day of one space) is an error of the read. The node's
//!   total, which bounds its daily totals, is still refused.
//! - Reads of several items are read-committed, not a snapshot: a read of
//!   a range of days racing a conclusion may see some of its days and not
//!   others; what is stored is all or nothing.
//! - Transactions cancelled by contention are retried a bounded number of
//!   times, then reported as `StoreError::Contended` (throttling that outlasts
//!   its retries as `StoreError::Throttled`).

use std::future::Future;

use aws_sdk_dynamodb::Client;

use super::StoreError;

mod audit;
pub mod capacity;
mod claims;
mod conclude;
mod conclusions;
mod dashboard;
mod fold;
mod items;
mod pending;
mod records;
mod requests;
mod sessions;
mod spaces;
mod table;
pub mod wire;

/// The SDK, for tests that read the table raw.
pub use aws_sdk_dynamodb as sdk;
pub(crate) use table::backend;
pub use table::connect_client;
pub use wire::{Faults, Usage};

/// The [`Store`](super::Store) on a DynamoDB table (see the module docs).
pub struct DynamoStore {
    client: Client,
    table: String,
    runtime: Option<tokio::runtime::Runtime>,
    retries: std::sync::Arc<table::RetryCounts>,
    /// What went over the wire, in DynamoDB's units.
    usage: std::sync::Arc<Usage>,
    wire: std::sync::Arc<wire::Wire>,
    /// Spaces this process has listed in [`items::BILLED_SPACES`], so that
    /// a busy space costs one write per process, not one per conclusion.
    billed_listed: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Hours of claims read, and batches known done (`claims.rs`).
    claim_cache: std::sync::Mutex<claims::ClaimCache>,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.table)
            .finish()
    }
}

impl Drop for DynamoStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids in async code.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl DynamoStore {
    /// Connects to DynamoDB at `endpoint` (e.g. `http://127.0.0.1:8000`, or
    /// `https://dynamodb.<region>.amazonaws.com` with the `tls` feature) and
    /// creates the table `<table_prefix>etracker` if missing.
    ///
    /// Region and credentials come from `AWS_REGION` (default `us-east-1`),
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`
    /// (defaults `test`/`test`, which local emulators accept). Must not be
    /// called from async code (see the module docs).
    ///
    /// `ETRACKER_DYNAMODB_FAULTS=<rate>[,<seed>]` makes that fraction of
    /// requests fail as DynamoDB under load does (see [`wire`]): for tests
    /// and soaks, never in service.
    pub fn connect(endpoint: &str, table_prefix: &str) -> Result<Self, StoreError> {
        let faults =
            match std::env::var("ETRACKER_DYNAMODB_FAULTS") {
                Ok(text) if !text.is_empty() => Some(Faults::parse(&text).map_err(|why| {
                    StoreError::Invalid(format!("ETRACKER_DYNAMODB_FAULTS: {why}"))
                })?),
                _ => None,
            };
        Self::connect_with(endpoint, table_prefix, faults)
    }

    /// [`DynamoStore::connect`] with `faults` injected (none: none).
    pub fn connect_with(
        endpoint: &str,
        table_prefix: &str,
        faults: Option<Faults>,
    ) -> Result<Self, StoreError> {
        let usage = std::sync::Arc::new(Usage::default());
        let wire = std::sync::Arc::new(wire::Wire::new(usage.clone(), faults));
        let (client, runtime, retries) =
            table::connect_counting(endpoint, Default::default(), wire.clone())?;
        let store = DynamoStore {
            client,
            table: format!("{table_prefix}etracker"),
            runtime: Some(runtime),
            retries,
            usage,
            wire,
            billed_listed: Default::default(),
            claim_cache: Default::default(),
        };
        store.init()?;
        Ok(store)
    }

    /// What this store's requests cost so far, in DynamoDB's units.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// For tests: from the `n`-th request on (0: the next), every request
    /// fails as a 500, unrun, as if the table were lost.
    pub fn lose_table_after(&self, n: u64) {
        self.wire.lose_table_after(n);
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("runtime lives until drop")
            .block_on(future)
    }
}
