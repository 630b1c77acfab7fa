//! The tracker's ucanto handlers, one per capability.

pub mod conclude;
pub mod egress_get;
pub mod track;

use std::sync::Arc;

use ucanto::principal::{Signer, Verifier};
use ucanto::server::HandlerError;

use crate::metrics::Metrics;
use crate::registry::SpacePolicy;
use crate::store::{Store, StoreError};

/// What every handler shares.
pub struct Context {
    /// The tracker's identity.
    pub signer: Arc<dyn Signer>,
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The consolidator whose receipts `space/egress/conclude` accepts.
    pub consolidator: Arc<dyn Verifier>,
    /// Which spaces count, and who their customers are.
    pub spaces: SpacePolicy,
    /// Batches a node may have pending; a track past it is refused.
    pub max_pending_per_node: u64,
    /// Seconds after its track that a batch's counted retrievals could no
    /// longer be counted again: their records may go then (see
    /// [`etracker_capabilities::payable::Rules::claim_ends`]).
    pub claim_lifetime: u64,
}

impl Context {
    /// Runs a store operation off the async runtime (redb is synchronous).
    pub async fn store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        crate::store::blocking(self.store.clone(), f).await
    }
}

/// A store failure a handler did not expect: the invocation fails with
/// `HandlerExecutionError` and the caller may retry.
pub fn unexpected(error: StoreError) -> HandlerError {
    HandlerError {
        name: "StoreError".into(),
        message: error.to_string(),
    }
}
