//! The table and the connection to it: the client and its runtime, creating
//! the table and checking its format, and the bounded retries with back-off
//! that every read-decide-commit operation runs under.
//!
//! One table, `<prefix>etracker`, created on [`DynamoStore::connect`] if
//! missing (on-demand billing), with a string partition key `pk` and a
//! string sort key `sk`; its items are laid out in [`super::items`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::config::interceptors::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents,
};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, ConditionCheck, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus, TransactWriteItem,
};
use aws_sdk_dynamodb::Client;

use super::items::{get_u64, n, s};
use super::wire::{Wire, WireClient};
use super::DynamoStore;
use crate::store::StoreError;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::SharedHttpClient;

/// Format 4: the due index and the counters in shards ([`super::items`]),
/// counted retrievals in pages per node and hour (`claims.rs`; format 3 kept
/// one item per retrieval). A table of any other format is refused.
pub(super) const FORMAT: u64 = 4;
/// Re-reads after a cancelled transaction before giving up.
pub(super) const RETRIES: usize = 64;

/// A DynamoDB client for `endpoint` and the one-thread runtime its calls
/// block on; region and credentials as [`DynamoStore::connect`] says.
pub fn connect_client(endpoint: &str) -> Result<(Client, tokio::runtime::Runtime), StoreError> {
    let wire = Arc::new(Wire::new(Arc::default(), None));
    connect_counting(endpoint, Arc::default(), wire).map(|(client, runtime, _)| (client, runtime))
}

/// What the store counts of its own retries, for `/metrics`.
#[derive(Debug, Default)]
pub(super) struct RetryCounts {
    /// Transactions cancelled (contention), re-read and re-decided.
    pub(super) cancelled: AtomicU64,
    /// Requests the SDK sent, and requests it was asked to make: the
    /// difference is what it retried (throttling, transient errors), with
    /// its own jittered back-off.
    pub(super) attempts: AtomicU64,
    pub(super) requests: AtomicU64,
    /// `BatchGetItem` rounds for keys left unprocessed (throttling).
    pub(super) unprocessed: AtomicU64,
    /// Transactions sent again because DynamoDB was busy (throttling,
    /// another transaction on an item, a 500), not re-decided.
    pub(super) busy: AtomicU64,
}

/// Counts the SDK's requests and attempts into [`RetryCounts`].
#[derive(Debug)]
struct CountAttempts(Arc<RetryCounts>);

impl Intercept for CountAttempts {
    fn name(&self) -> &'static str {
        "etracker-count-attempts"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.attempts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// [`connect_client`], counting the SDK's retries into `counts`, every
/// request going through `wire` (see [`super::wire`]).
pub(super) fn connect_counting(
    endpoint: &str,
    counts: Arc<RetryCounts>,
    wire: Arc<Wire>,
) -> Result<(Client, tokio::runtime::Runtime, Arc<RetryCounts>), StoreError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let credentials = Credentials::new(
        env("AWS_ACCESS_KEY_ID").unwrap_or_else(|| "test".into()),
        env("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|| "test".into()),
        env("AWS_SESSION_TOKEN"),
        None,
        "etracker",
    );
    let region = env("AWS_REGION").unwrap_or_else(|| "us-east-1".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("etracker-dynamodb")
        .enable_all()
        .build()
        .map_err(|e| StoreError::backend("starting the DynamoDB runtime", e))?;
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(region))
        .credentials_provider(credentials)
        .http_client(SharedHttpClient::new(WireClient::new(http_client(), wire)))
        .interceptor(CountAttempts(counts.clone()))
        // Throttling and 500s are retried by the SDK with a short jittered
        // back-off first (its default waits a second), then by the store.
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(5)
                .with_initial_backoff(Duration::from_millis(20))
                .with_max_backoff(Duration::from_secs(2)),
        )
        .build();
    Ok((Client::from_conf(config), runtime, counts))
}

impl DynamoStore {
    /// The check, in every transaction, that the table is still of this
    /// replica's format.
    pub(super) fn format_check(&self) -> Result<TransactWriteItem, StoreError> {
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .key("pk", s("meta"))
            .key("sk", s("format"))
            .condition_expression("#f = :f")
            .expression_attribute_names("#f", "format")
            .expression_attribute_values(":f", n(FORMAT))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    /// What a failed format check found: the table's format now.
    pub(super) fn format_changed(&self) -> StoreError {
        let found = self
            .get(("meta", "format"))
            .ok()
            .flatten()
            .and_then(|item| get_u64(&item, "format").ok())
            .unwrap_or(0);
        StoreError::FormatChanged {
            found,
            expected: FORMAT,
        }
    }

    /// Creates the table if missing, waits until it is active, and checks
    /// (or writes) the format item.
    pub(super) fn init(&self) -> Result<(), StoreError> {
        let created = self.block_on(
            self.client
                .create_table()
                .table_name(&self.table)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(attr_def("pk")?)
                .attribute_definitions(attr_def("sk")?)
                .key_schema(key_schema("pk", KeyType::Hash)?)
                .key_schema(key_schema("sk", KeyType::Range)?)
                .send(),
        );
        if let Err(e) = created {
            let exists = e
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception());
            if !exists {
                return Err(backend(e));
            }
        }
        for _ in 0..600 {
            let table = self
                .block_on(self.client.describe_table().table_name(&self.table).send())
                .map_err(backend)?;
            let status = table.table().and_then(|t| t.table_status());
            if status == Some(&TableStatus::Active) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let put = self.block_on(
            self.client
                .put_item()
                .table_name(&self.table)
                .item("pk", s("meta"))
                .item("sk", s("format"))
                .item("format", n(FORMAT))
                .condition_expression("attribute_not_exists(pk)")
                .send(),
        );
        if let Err(e) = put {
            let exists = e
                .as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception());
            if !exists {
                return Err(backend(e));
            }
            let item = self.get(("meta", "format"))?.unwrap_or_default();
            let format = get_u64(&item, "format")?;
            if format != FORMAT {
                return Err(StoreError::FormatChanged {
                    found: format,
                    expected: FORMAT,
                });
            }
        }
        Ok(())
    }

    /// Runs `attempt` until it returns `Some` or the retries run out;
    /// `attempt` returns `None` when its transaction was cancelled.
    pub(super) fn retry<T>(
        &self,
        mut attempt: impl FnMut() -> Result<Option<T>, StoreError>,
    ) -> Result<T, StoreError> {
        for round in 0..RETRIES {
            if let Some(out) = attempt()? {
                return Ok(out);
            }
            self.retries.cancelled.fetch_add(1, Ordering::Relaxed);
            backoff(round);
        }
        Err(StoreError::Contended {
            attempts: RETRIES as u32,
        })
    }
}

/// The HTTP client: hyper 1 with rustls (ring) when the `tls` feature is on
/// (it also speaks plain http to local endpoints), plain http otherwise.
fn http_client() -> aws_sdk_dynamodb::config::SharedHttpClient {
    #[cfg(feature = "tls")]
    {
        use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
        aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https()
    }
    #[cfg(not(feature = "tls"))]
    {
        aws_smithy_http_client::Builder::new().build_http()
    }
}

pub(super) fn backoff(round: usize) {
    let ms = 2u64 << round.min(6);
    std::thread::sleep(Duration::from_millis(ms / 2 + fresh_u64() % ms));
}

fn fresh_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A unique id for a conclusion attempt.
pub(super) fn fresh_id() -> String {
    format!("{:016x}{:016x}", fresh_u64(), fresh_u64())
}

fn attr_def(name: &str) -> Result<AttributeDefinition, StoreError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(build_error)
}

fn key_schema(name: &str, key_type: KeyType) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(key_type)
        .build()
        .map_err(build_error)
}

/// A failed request as a store error: what load refused (throttling, a
/// conflict with a transaction, a 500) after the SDK's retries is
/// [`StoreError::Throttled`], transient; anything else keeps its cause.
pub(crate) fn backend<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let busy = matches!(
        e.code(),
        Some(
            "ThrottlingException"
                | "ProvisionedThroughputExceededException"
                | "RequestLimitExceeded"
                | "TransactionConflictException"
                | "InternalServerError"
        )
    );
    if busy {
        return StoreError::Throttled {
            operation: "a DynamoDB request",
        };
    }
    StoreError::backend("a DynamoDB request", e)
}

pub(super) fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::backend("building a DynamoDB request", e)
}
