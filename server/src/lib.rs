//! The egress tracker service.
//!
//! Storage nodes report the retrievals they served in batches of receipts
//! (`space/egress/track`); the tracker fetches each batch, counts its bytes per
//! space and day, and publishes a signed consolidate receipt that the node
//! polls for.
//!
//! # Layout
//!
//! - [`store`]: the durable state — egress records, leases for the
//!   consolidator replicas, consolidate receipts and the totals — behind the
//!   [`store::Store`] trait, with the embedded [`store::redb::RedbStore`] as
//!   the default backend. [`store::Store::conclude`] is the single commit
//!   point: a batch's receipt, totals and counted retrievals land together or
//!   not at all.
pub mod consolidator;
pub mod handlers;
pub mod metrics;
pub mod service;
pub mod store;
pub mod tally;
