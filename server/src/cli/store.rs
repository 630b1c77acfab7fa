//! Where the tracker keeps its state: the flags, and opening it.

use std::path::Path;
use std::sync::Arc;

use clap::Args;
use etracker_server::store::redb::RedbStore;
use etracker_server::store::Store;
use ucanto::cli::BoxError;

/// Where the tracker keeps its state.
#[derive(Args)]
pub(crate) struct StoreArgs {
    /// Store backend: redb (embedded, in the data directory) or dynamodb.
    #[cfg(feature = "dynamodb")]
    #[arg(long = "store", env = "ETRACKER_STORE", default_value = "redb", value_parser = ["redb", "dynamodb"])]
    kind: String,
    /// DynamoDB endpoint URL (with --store dynamodb).
    #[cfg(feature = "dynamodb")]
    #[arg(
        long,
        env = "ETRACKER_DYNAMODB_ENDPOINT",
        required_if_eq("kind", "dynamodb")
    )]
    dynamodb_endpoint: Option<String>,
    /// Prefix of the DynamoDB table name (`<prefix>etracker`, created if missing).
    #[cfg(feature = "dynamodb")]
    #[arg(long, env = "ETRACKER_DYNAMODB_TABLE_PREFIX", default_value = "")]
    dynamodb_table_prefix: String,
}

impl StoreArgs {
    /// The DynamoDB endpoint and table prefix, with --store dynamodb.
    fn dynamodb(&self) -> Option<(&str, &str)> {
        match self {
            #[cfg(feature = "dynamodb")]
            StoreArgs {
                kind,
                dynamodb_endpoint: Some(endpoint),
                dynamodb_table_prefix: prefix,
            } if kind == "dynamodb" => Some((endpoint, prefix)),
            _ => None,
        }
    }

    /// The store the flags name: redb in `data_dir`, or DynamoDB.
    pub(crate) async fn open(&self, data_dir: &Path) -> Result<Arc<dyn Store>, BoxError> {
        Ok(match self.dynamodb() {
            #[cfg(feature = "dynamodb")]
            Some((endpoint, prefix)) => {
                // The store blocks on its own runtime: connect off the async threads.
                let (endpoint, prefix) = (endpoint.to_string(), prefix.to_string());
                Arc::new(
                    tokio::task::spawn_blocking(move || {
                        etracker_server::store::dynamodb::DynamoStore::connect(&endpoint, &prefix)
                    })
                    .await??,
                )
            }
            _ => Arc::new(RedbStore::open(data_dir)?),
        })
    }

    /// What to check when [`StoreArgs::open`] failed for `etracker start`.
    pub(crate) fn hint(&self) -> &'static str {
        match self.dynamodb() {
            Some(_) => "Is DynamoDB reachable at --dynamodb-endpoint (ETRACKER_DYNAMODB_ENDPOINT)?",
            None => "Is another etracker running on this data directory? Stop it, or pass another --data-dir.",
        }
    }
}
