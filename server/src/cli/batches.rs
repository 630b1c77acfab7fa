//! How batches are fetched, judged and billed: the flags `etracker start`
//! (its in-process consolidator) and `etracker consolidator` share, and the
//! settings both build from them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use etracker_server::consolidator::BatchLimits;
use etracker_server::registry::SpaceRegistry;
use etracker_server::service::{Settings, SpaceRule};
use ucanto::cli::{explain, BoxError};
use ucanto::principal::{Did, Ed25519Verifier, Verifier};

/// How batches are fetched and judged (the tracker's in-process consolidator
/// and a separately deployed one take the same flags).
#[derive(Args)]
pub(crate) struct BatchArgs {
    /// Smallest acceptable batch, bytes.
    #[arg(long, env = "ETRACKER_MIN_BATCH_SIZE", default_value_t = 10 * 1024 * 1024)]
    min_batch_size: u64,
    /// Largest acceptable batch, bytes.
    #[arg(long, env = "ETRACKER_MAX_BATCH_SIZE", default_value_t = 1024 * 1024 * 1024)]
    max_batch_size: u64,
    /// Seconds allowed to download one batch.
    #[arg(long, env = "ETRACKER_FETCH_TIMEOUT", default_value_t = 300)]
    fetch_timeout: u64,
    /// Slowest batch download kept up, bytes/s averaged from the request
    /// once the grace is over; slower is cut off and retried. 0: none.
    #[arg(long, env = "ETRACKER_MIN_FETCH_RATE", default_value_t = etracker_server::consolidator::DEFAULT_MIN_FETCH_RATE)]
    min_fetch_rate: u64,
    /// Seconds a batch download may stay below the minimum rate at its start.
    #[arg(long, env = "ETRACKER_MIN_FETCH_RATE_GRACE", default_value_t = 10)]
    min_fetch_rate_grace: u64,
    /// Largest range one retrieval may claim, bytes.
    #[arg(long, env = "ETRACKER_MAX_RETRIEVAL_BYTES", default_value_t = etracker_server::consolidator::DEFAULT_MAX_RETRIEVAL_BYTES)]
    max_retrieval_bytes: u64,
    /// Seconds a node may keep failing to serve a batch, from its first failed
    /// attempt, before the batch is given up.
    #[arg(long, env = "ETRACKER_GIVE_UP_AFTER", default_value_t = 48 * 3600)]
    give_up_after: u64,
    /// Seconds a retrieval stays countable: one dated earlier than its
    /// batch's track minus this is refused (StaleRetrieval), and the record
    /// of a counted one is dropped twice this plus the give-up age after
    /// its track.
    #[arg(long, env = "ETRACKER_MAX_RETRIEVAL_AGE", default_value_t = etracker_capabilities::payable::DEFAULT_MAX_AGE)]
    max_retrieval_age: u64,
    /// Also fetch batches from loopback/private/link-local addresses (local setups only).
    #[arg(long, env = "ETRACKER_ALLOW_PRIVATE_ENDPOINTS")]
    allow_private_endpoints: bool,
    /// Authorities whose ucan/attest count for retrievals, as DID=did:key
    /// (comma-separated; e.g. the upload service that verifies accounts).
    /// None by default: nodes never attest their own receipts.
    #[arg(long, env = "ETRACKER_AUTHORITIES", value_delimiter = ',')]
    authorities: Vec<String>,
}

impl BatchArgs {
    /// The limits, spooling batches under `data_dir/tmp`.
    fn limits(&self, data_dir: &Path) -> BatchLimits {
        BatchLimits {
            min_size: self.min_batch_size,
            max_size: self.max_batch_size,
            fetch_timeout: Duration::from_secs(self.fetch_timeout),
            min_fetch_rate: self.min_fetch_rate,
            min_fetch_rate_grace: Duration::from_secs(self.min_fetch_rate_grace),
            give_up_after: self.give_up_after,
            scratch_dir: data_dir.join("tmp"),
            max_retrieval_bytes: self.max_retrieval_bytes,
            max_retrieval_age: self.max_retrieval_age,
            allow_private_endpoints: self.allow_private_endpoints,
        }
    }

    /// The attesting authorities, from `DID=did:key` entries.
    fn authorities(&self) -> Result<Vec<Arc<dyn Verifier>>, BoxError> {
        let mut authorities: Vec<Arc<dyn Verifier>> = Vec::new();
        for entry in &self.authorities {
            let parsed = (|| -> Result<Arc<dyn Verifier>, BoxError> {
                let (did, key) = entry.split_once('=').ok_or("no '='")?;
                Ok(Arc::new(
                    Ed25519Verifier::parse(&key.parse()?)?.with_did(did.parse()?),
                ))
            })();
            authorities.push(parsed.map_err(explain(
                format!("ETRACKER_AUTHORITIES entry {entry:?} is not DID=did:key"),
                "Write each authority as its DID, '=', and its did:key, e.g. did:web:up.example=did:key:z6Mk….",
            ))?);
        }
        Ok(authorities)
    }
}

/// Which spaces count, and whose retrievals are billed to no one.
#[derive(Args)]
pub(crate) struct BillingArgs {
    /// known: spaces a known provider provisions, per the tracker's registry
    /// (`etracker space add`); dynamodb: per the upload service's consumer
    /// table; any: every authorized space (local setups only).
    #[arg(long, env = "ETRACKER_SPACE_POLICY", default_value = "known", value_parser = ["known", "dynamodb", "any"])]
    space_policy: String,
    /// Providers whose spaces count, besides this tracker (comma-separated DIDs).
    #[arg(long, env = "ETRACKER_KNOWN_PROVIDERS", value_delimiter = ',')]
    known_providers: Vec<String>,
    /// Invokers whose retrievals are recorded apart and billed to no one
    /// (indexing service, replicating nodes; comma-separated DIDs).
    #[arg(long, env = "ETRACKER_NON_BILLABLE_ACTORS", value_delimiter = ',')]
    non_billable_actors: Vec<String>,
    /// DynamoDB endpoint of the consumer table (space policy dynamodb).
    #[arg(long, env = "ETRACKER_CONSUMER_ENDPOINT")]
    consumer_endpoint: Option<String>,
    /// The upload service's consumer table.
    #[arg(long, env = "CONSUMER_TABLE_NAME", default_value = "consumer")]
    consumer_table: String,
    /// Its index on `consumer`.
    #[arg(long, env = "CONSUMER_CONSUMER_INDEX_NAME", default_value = "consumer")]
    consumer_index: String,
    /// Its index on `customer`.
    #[arg(long, env = "CONSUMER_CUSTOMER_INDEX_NAME", default_value = "customer")]
    customer_index: String,
}

impl BillingArgs {
    /// Sets the space rule, providers, registry and non-billable actors.
    fn apply(&self, settings: &mut Settings) -> Result<(), BoxError> {
        let dids = |list: &[String], what: &str| -> Result<Vec<Did>, BoxError> {
            list.iter()
                .map(|d| d.trim())
                .filter(|d| !d.is_empty())
                .map(|d| {
                    d.parse().map_err(explain(
                        format!("{what} entry {d:?} is not a DID"),
                        "List DIDs separated by commas, e.g. did:web:up.example,did:key:z6Mk….",
                    ))
                })
                .collect()
        };
        settings.known_providers = dids(&self.known_providers, "ETRACKER_KNOWN_PROVIDERS")?;
        settings.non_billable_actors =
            dids(&self.non_billable_actors, "ETRACKER_NON_BILLABLE_ACTORS")?;
        settings.space_rule = match self.space_policy.as_str() {
            "any" => {
                tracing::warn!(
                    "ETRACKER_SPACE_POLICY=any: every space that authorized a retrieval is counted, \
                     sybil spaces included; use it for local setups only"
                );
                SpaceRule::Any
            }
            _ => SpaceRule::Known,
        };
        if self.space_policy == "dynamodb" {
            settings.space_registry = Some(self.consumer_table()?);
        }
        Ok(())
    }

    #[cfg(feature = "dynamodb")]
    fn consumer_table(&self) -> Result<Arc<dyn SpaceRegistry>, BoxError> {
        use etracker_server::registry::consumer::{ConsumerTable, ConsumerTableConfig};
        let endpoint = self
            .consumer_endpoint
            .clone()
            .ok_or("space policy dynamodb needs ETRACKER_CONSUMER_ENDPOINT")?;
        let config = ConsumerTableConfig {
            endpoint,
            table: self.consumer_table.clone(),
            consumer_index: self.consumer_index.clone(),
            customer_index: self.customer_index.clone(),
        };
        let table = std::thread::spawn(move || ConsumerTable::connect(config))
            .join()
            .map_err(|_| "connecting to the consumer table panicked")??;
        Ok(Arc::new(etracker_server::registry::Cached::new(
            table,
            Duration::from_secs(300),
        )))
    }

    #[cfg(not(feature = "dynamodb"))]
    fn consumer_table(&self) -> Result<Arc<dyn SpaceRegistry>, BoxError> {
        Err("space policy dynamodb needs a build with --features etracker-server/dynamodb".into())
    }
}

/// What a consolidator is built from, in-process (`etracker start`) or
/// deployed apart (`etracker consolidator`), written once into `settings`:
/// the attesting authorities, the billing (space rule, providers, registry,
/// non-billable actors) and the batch limits, spooling under
/// What to do when the data directory cannot be made.
pub(crate) const DATA_DIR_HINT: &str =
    "Pass --data-dir (ETRACKER_DATA_DIR) a directory this user can create and write.";

/// `<data_dir>/tmp` (created here, with the data directory, once the flags
/// were read).
pub(crate) fn consolidation(
    batches: &BatchArgs,
    billing: &BillingArgs,
    data_dir: &Path,
    settings: &mut Settings,
) -> Result<(), BoxError> {
    settings.authorities = batches.authorities()?;
    billing.apply(settings)?;
    let limits = batches.limits(data_dir);
    std::fs::create_dir_all(&limits.scratch_dir).map_err(explain(
        format!("cannot create the data directory {}", data_dir.display()),
        DATA_DIR_HINT,
    ))?;
    settings.limits = limits;
    Ok(())
}
