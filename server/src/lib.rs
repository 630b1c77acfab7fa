//! The egress tracker service.
//!
//! Storage nodes report the retrievals they served in batches of receipts
//! (`space/egress/track`); the tracker fetches each batch, counts its bytes per
//! space and day, and publishes a signed consolidate receipt that the node
//! polls for.
//!
//! # Layout
//! A track invocation, walked through the modules:
//! 1. [`service`] serves `POST /` with the core crate's transport: CAR →
//!    agent message → invocation; the dispatcher checks the audience and the
//!    validator the proofs (tracker → node delegation);
//! 2. [`handlers::track`], handed the capability parsed (see
//!    [`etracker_capabilities::typed`]), persists the egress record in the
//!    [`store`] (idempotently) and answers `ok {}` with the consolidate task
//!    forked;
//! 3. the scheduler in [`service`] leases due records and *invokes* each task
//!    on the [`consolidator`], a ucanto server of its own, through a
//!    connection (in process, or over HTTP when deployed apart); its handler
//!    fetches the batch, checks it against the CID and checks every receipt
//!    (and, per the [`registry`], that a known provider provisions its
//!    space), and its dispatcher signs the receipt;
//! 4. the consolidator's after-receipt hook invokes `space/egress/conclude`
//!    with the receipt and the [`tally`] (in pages when large);
//!    [`handlers::conclude`] verifies both and commits receipt, totals and
//!    counted retrievals in one [`store::Store::conclude`];
//! 5. the node reads the receipt at `GET /receipts/{task}`; accounts read
//!    totals with [`handlers::egress_get`]; [`metrics`] counts it all.
//!
//! The store ([`store::Store`], embedded [`store::redb::RedbStore`] by
//! default) is shaped for several replicas: leases on records, writes only the
//! lease owner may make, and a conclude that refuses receipts already counted.
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//! use etracker_server::service::{Settings, Tracker};
//! use etracker_server::store::redb::RedbStore;
//! use ucanto::principal::Ed25519Signer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Arc::new(RedbStore::open(std::path::Path::new("etracker-data"))?);
//! let tracker = Tracker::new(Arc::new(Ed25519Signer::generate()), store, Settings::default());
//! tokio::spawn(tracker.clone().run_scheduler());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, tracker.app()).await?;
//! # Ok(()) }
//! ```

/// The `MALLOC_ARENA_MAX` that `etracker` restarts itself with, unless the
/// variable is set already (why: `limit_malloc_arenas` in `main.rs`).
pub const MALLOC_ARENA_MAX: &str = "2";

pub mod admin;
pub mod consolidator;
pub mod handlers;
pub mod metrics;
pub mod registry;
pub mod scratch;
pub mod service;
pub mod store;
pub mod tally;

/// The cargo features of this build, so that tests which run the `etracker`
/// binary build it with the same ones (and cargo builds nothing twice).
pub const FEATURES: &[&str] = &[
    #[cfg(feature = "tls")]
    "tls",
    #[cfg(feature = "dynamodb")]
    "dynamodb",
];
