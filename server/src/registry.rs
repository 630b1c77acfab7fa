//! Billable spaces: which spaces the tracker counts, and who pays for them.
//!
//! Anyone can make a space key, delegate to an agent and retrieve from a
//! node it runs: authorization alone would pay nodes for egress nobody pays
//! for (sybil spaces). So a space counts only when a known provider
//! provisions it, per a [`SpaceRegistry`]:
//! - the tracker's own registry in its store (`etracker space add`, or the
//!   admin API), where the tracker itself is the provider of what its
//!   operator registers;
//! - the upload service's consumer table on DynamoDB (`consumer`, feature
//!   `dynamodb`), read only, with the upstream schema.
//!
//! [`SpacePolicy::Any`] counts every authorized space (local setups).

#[cfg(feature = "dynamodb")]
pub mod consumer;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ucanto::principal::Did;

use crate::store::{Store, StoreError};

/// One provisioning of a space: by which provider, for which customer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provision {
    /// The provider (e.g. `did:web:up.storacha.network`).
    pub provider: Did,
    /// The customer account, when the registry knows it.
    pub customer: Option<Did>,
}

/// Where the tracker learns who provisions a space.
pub trait SpaceRegistry: Send + Sync {
    /// Every provisioning of `space` (none when unknown).
    fn provisions(&self, space: &Did) -> Result<Vec<Provision>, StoreError>;

    /// The spaces whose customer is `account`.
    fn customer_spaces(&self, account: &Did) -> Result<Vec<Did>, StoreError>;
}

/// The registry in the tracker's own store.
pub struct StoreRegistry(pub Arc<dyn Store>);

impl SpaceRegistry for StoreRegistry {
    fn provisions(&self, space: &Did) -> Result<Vec<Provision>, StoreError> {
        Ok(self
            .0
            .space(space)?
            .map(|entry| Provision {
                provider: entry.provider,
                customer: entry.customer,
            })
            .into_iter()
            .collect())
    }

    fn customer_spaces(&self, account: &Did) -> Result<Vec<Did>, StoreError> {
        self.0.customer_spaces(account)
    }
}

/// A registry whose answers are kept for `ttl`: a consolidation run looks a
/// space up once, however many batches name it.
pub struct Cached<R> {
    inner: R,
    ttl: Duration,
    entries: Mutex<HashMap<Did, (Instant, Vec<Provision>)>>,
}

impl<R: SpaceRegistry> Cached<R> {
    /// `inner`, its lookups kept for `ttl`.
    pub fn new(inner: R, ttl: Duration) -> Self {
        Cached {
            inner,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<R: SpaceRegistry> SpaceRegistry for Cached<R> {
    fn provisions(&self, space: &Did) -> Result<Vec<Provision>, StoreError> {
        let fresh = |at: &Instant| at.elapsed() < self.ttl;
        if let Some((_, found)) = self
            .entries
            .lock()
            .ok()
            .and_then(|e| e.get(space).filter(|(at, _)| fresh(at)).cloned())
        {
            return Ok(found);
        }
        let found = self.inner.provisions(space)?;
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= 100_000 {
                entries.clear();
            }
            entries.insert(space.clone(), (Instant::now(), found.clone()));
        }
        Ok(found)
    }

    fn customer_spaces(&self, account: &Did) -> Result<Vec<Did>, StoreError> {
        self.inner.customer_spaces(account)
    }
}

/// Which spaces count.
#[derive(Clone)]
pub enum SpacePolicy {
    /// Every space that authorized a retrieval (local setups and tests).
    Any,
    /// Spaces a known provider provisions, per `registry`.
    Known {
        /// The known providers.
        providers: HashSet<Did>,
        /// Where provisions are looked up.
        registry: Arc<dyn SpaceRegistry>,
    },
}

/// What the policy says of a space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Billing {
    /// Counted; its customer when known.
    Billable {
        /// The account that pays, when the registry knows it.
        customer: Option<Did>,
    },
    /// Not counted: why.
    Unknown(String),
}

impl SpacePolicy {
    /// Judges `space`. An `Err` is a lookup that failed (retry later), never
    /// a verdict.
    pub fn judge(&self, space: &Did) -> Result<Billing, StoreError> {
        let (providers, registry) = match self {
            SpacePolicy::Any => return Ok(Billing::Billable { customer: None }),
            SpacePolicy::Known {
                providers,
                registry,
            } => (providers, registry),
        };
        let provisions = registry.provisions(space)?;
        if provisions.is_empty() {
            return Ok(Billing::Unknown(format!(
                "space {space} is provisioned by no provider this tracker knows of"
            )));
        }
        match provisions.iter().find(|p| providers.contains(&p.provider)) {
            Some(known) => Ok(Billing::Billable {
                customer: known.customer.clone(),
            }),
            None => {
                let named: Vec<&str> = provisions.iter().map(|p| p.provider.as_str()).collect();
                Ok(Billing::Unknown(format!(
                    "space {space} is provisioned by {}, not a known provider",
                    named.join(", ")
                )))
            }
        }
    }

    /// The registry, unless every space counts.
    pub fn registry(&self) -> Option<&Arc<dyn SpaceRegistry>> {
        match self {
            SpacePolicy::Any => None,
            SpacePolicy::Known { registry, .. } => Some(registry),
        }
    }
}

/// Judges each of `spaces` once, off the async runtime.
pub async fn judge_all(
    policy: &SpacePolicy,
    spaces: HashSet<Did>,
) -> Result<HashMap<Did, Billing>, StoreError> {
    let policy = policy.clone();
    tokio::task::spawn_blocking(move || {
        spaces
            .into_iter()
            .map(|space| policy.judge(&space).map(|billing| (space, billing)))
            .collect()
    })
    .await
    .map_err(|e| StoreError::backend("judging spaces", e))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;
    use crate::store::{SpaceEntry, SpaceStore};

    fn did(text: &str) -> Did {
        text.parse().unwrap()
    }

    #[test]
    fn known_providers_only() {
        let store = Arc::new(RedbStore::in_memory().unwrap());
        let known = did("did:web:up.example");
        for (space, provider) in [
            ("did:web:a.example", "did:web:up.example"),
            ("did:web:b.example", "did:web:other.example"),
        ] {
            store
                .put_space(&SpaceEntry {
                    space: did(space),
                    provider: did(provider),
                    customer: Some(did("did:mailto:example.com:c")),
                })
                .unwrap();
        }
        let policy = SpacePolicy::Known {
            providers: HashSet::from([known]),
            registry: Arc::new(Cached::new(
                StoreRegistry(store.clone()),
                Duration::from_secs(60),
            )),
        };
        assert_eq!(
            policy.judge(&did("did:web:a.example")).unwrap(),
            Billing::Billable {
                customer: Some(did("did:mailto:example.com:c"))
            }
        );
        for unknown in ["did:web:b.example", "did:web:sybil.example"] {
            assert!(matches!(
                policy.judge(&did(unknown)).unwrap(),
                Billing::Unknown(_)
            ));
        }
        assert_eq!(
            SpacePolicy::Any
                .judge(&did("did:web:sybil.example"))
                .unwrap(),
            Billing::Billable { customer: None }
        );
    }
}
