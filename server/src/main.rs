//! `etracker`: the egress tracker service and its admin commands.
//!
//! Every flag can also be set as an `ETRACKER_*` environment variable; see
//! `etracker <command> --help`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use etracker_capabilities::{Ability, Conclude, Track};
use etracker_server::admin::csv as admin_csv;
use etracker_server::consolidator::BatchLimits;
use etracker_server::registry::{SpacePolicy, SpaceRegistry};
use etracker_server::service::{space_json, RemoteConsolidator, Settings, SpaceRule, Tracker};
use etracker_server::store::redb::RedbStore;
use etracker_server::store::{blocking, SpaceEntry, Store};
use ucanto::cli::{explain, parse_proof, sentence, BoxError};
use ucanto::principal::{Did, Ed25519Signer, Ed25519Verifier, Signer, Verifier};
use ucanto::ucan::Delegation;

#[derive(Parser)]
#[command(
    name = "etracker",
    version,
    about = "Egress tracker for a decentralized storage network, over UCAN/ucanto"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (embedded redb store; a key is generated on first start).
    Start(Box<StartArgs>),
    /// Key management.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Print a delegation that lets a node invoke space/egress/track.
    Delegate(DelegateArgs),
    /// Trigger consolidation on a running service.
    Consolidate(ConsolidateArgs),
    /// Run a separately deployed consolidator (the tracker invokes it over HTTP).
    Consolidator(ConsolidatorArgs),
    /// The registry of billable spaces (ETRACKER_SPACE_POLICY=known).
    Space {
        #[command(subcommand)]
        command: SpaceCommand,
    },
    /// The dashboard's overview from a running tracker: egress per day,
    /// counters, pending batches, rejections (one JSON object).
    Overview(ApiArgs),
    /// Every node paid, with its total and payout, one JSON object a line;
    /// or, given a DID, that node's egress per day and batches.
    Nodes {
        /// One node: its page of the dashboard, as JSON.
        node: Option<String>,
        /// Only nodes whose DID starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// CSV (node, total_bytes, payout_usd), as the dashboard exports.
        #[arg(long)]
        csv: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Every space registered or with egress, with its customer, its egress
    /// over the last 30 days and its cost, one JSON object a line.
    Usage {
        /// Only spaces whose DID starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// CSV, one row per space and day (space, customer, day, bytes,
        /// cost_usd), as the dashboard exports.
        #[arg(long)]
        csv: bool,
        /// Only the spaces of this customer (their bill: the rows add up).
        #[arg(long, default_value = "")]
        customer: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// A running tracker, reached over HTTP with its admin token.
#[derive(Args)]
struct ApiArgs {
    /// The running service.
    #[arg(long, env = "ETRACKER_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token, when the service has one.
    #[arg(long, env = "ETRACKER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

/// What to check when `etracker start` cannot be reached.
const IS_IT_RUNNING: &str = "Is `etracker start` running there? Set --url or ETRACKER_URL.";

impl ApiArgs {
    /// A request of `method` to `<url><path>`, with the token.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let request = reqwest::Client::new().request(method, url);
        match &self.admin_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request`: its status and body; `hint` says what to check
    /// when the tracker cannot be reached.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        hint: &str,
    ) -> Result<(reqwest::StatusCode, String), BoxError> {
        let response = request
            .send()
            .await
            .map_err(|e| explain(format!("cannot reach the tracker at {}", self.url), hint)(e))?;
        let status = response.status();
        Ok((status, response.text().await?))
    }

    /// `GET /admin/api/<path>` with `query`, as JSON.
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<serde_json::Value, BoxError> {
        let path = format!("/admin/api/{path}");
        let request = self.request(reqwest::Method::GET, &path).query(query);
        let (status, body) = self.send(request, IS_IT_RUNNING).await?;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(
                "the tracker refused: set --admin-token or ETRACKER_ADMIN_TOKEN to its admin token"
                    .into(),
            );
        }
        if !status.is_success() {
            let url = format!("{}{path}", self.url.trim_end_matches('/'));
            return Err(format!("HTTP {status} from {url}: {body}").into());
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Prints every row of the listing at `path` (the array `rows` of each
    /// page) as `line` makes it, following the pages' `next` cursor.
    async fn print_all(
        &self,
        path: &str,
        rows: &str,
        filters: &[(&str, &str)],
        line: impl Fn(&serde_json::Value) -> String,
    ) -> Result<(), BoxError> {
        let mut after: Option<String> = None;
        loop {
            let mut query = filters.to_vec();
            if let Some(after) = &after {
                query.push(("after", after));
            }
            let page = self.get(path, &query).await?;
            for row in page[rows].as_array().into_iter().flatten() {
                print!("{}", line(row));
            }
            match page["next"].as_str() {
                Some(next) if Some(next) != after.as_deref() => after = Some(next.to_string()),
                _ => return Ok(()),
            }
        }
    }
}

#[derive(Subcommand)]
enum SpaceCommand {
    /// Register spaces (prints each entry as a JSON line).
    Add {
        /// Space DIDs.
        #[arg(required = true)]
        spaces: Vec<String>,
        /// The provider that provisions them (default: this tracker).
        #[arg(long)]
        provider: Option<String>,
        /// The account they belong to (lets it read their egress).
        #[arg(long)]
        customer: Option<String>,
        #[command(flatten)]
        access: RegistryAccess,
    },
    /// Unregister spaces.
    Remove {
        /// Space DIDs.
        #[arg(required = true)]
        spaces: Vec<String>,
        #[command(flatten)]
        access: RegistryAccess,
    },
    /// List the registered spaces, one JSON object a line.
    List {
        #[command(flatten)]
        access: RegistryAccess,
    },
}

/// How `etracker space` reaches the registry: the store in the data
/// directory, or, while a tracker holds it, that tracker's admin API.
#[derive(Args)]
struct RegistryAccess {
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    store: StoreArgs,
    // The running service, used when it holds the data directory.
    #[command(flatten)]
    api: ApiArgs,
}

/// Which spaces count, and whose retrievals are billed to no one.
#[derive(Args)]
struct BillingArgs {
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
        let dids = |list: &[String]| -> Result<Vec<Did>, BoxError> {
            list.iter()
                .filter(|d| !d.trim().is_empty())
                .map(|d| Ok(d.trim().parse()?))
                .collect()
        };
        settings.known_providers = dids(&self.known_providers)?;
        settings.non_billable_actors = dids(&self.non_billable_actors)?;
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

/// Where the tracker keeps its state.
#[derive(Args)]
struct StoreArgs {
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

#[derive(Subcommand)]
enum KeyCommand {
    /// Generate an ed25519 key; prints its DID and its "M…" private key.
    Gen,
}

#[derive(Args)]
struct KeyArgs {
    /// Private key ("M…" multibase, as upstream).
    #[arg(long, env = "ETRACKER_PRIVATE_KEY", hide_env_values = true)]
    private_key: Option<String>,
    /// File holding the private key; created with a fresh key if absent.
    #[arg(long, env = "ETRACKER_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Present the service under this DID (e.g. did:web:tracker.example).
    #[arg(long, env = "ETRACKER_DID")]
    did: Option<String>,
    /// Data directory (holds the store, and the key file by default).
    #[arg(long, env = "ETRACKER_DATA_DIR", default_value = "etracker-data")]
    data_dir: PathBuf,
}

#[derive(Args)]
struct StartArgs {
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    batches: BatchArgs,
    #[command(flatten)]
    billing: BillingArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// Address to listen on.
    #[arg(long, env = "ETRACKER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Seconds between consolidation runs.
    #[arg(long, env = "ETRACKER_CONSOLIDATION_INTERVAL", default_value_t = 3600)]
    consolidation_interval: u64,
    /// Records consolidated per run.
    #[arg(long, env = "ETRACKER_BATCH_LIMIT", default_value_t = 200)]
    batch_limit: usize,
    /// Batches consolidated at once (one per node at a time).
    #[arg(long, env = "ETRACKER_CONCURRENCY", default_value_t = 4)]
    concurrency: usize,
    /// Batches a node may have waiting for consolidation; past it, a track
    /// is refused (TooManyPendingBatches). 0: no cap.
    #[arg(long, env = "ETRACKER_MAX_PENDING_PER_NODE", default_value_t = etracker_server::service::DEFAULT_MAX_PENDING_PER_NODE)]
    max_pending_per_node: u64,
    /// Seconds a replica holds a record while consolidating it.
    #[arg(long, env = "ETRACKER_LEASE_SECS", default_value_t = 900)]
    lease_secs: u64,
    /// Name of this replica in leases, stable across its restarts and unique
    /// among replicas sharing a store: by default `<host name>/<listen
    /// address>`, which no two running replicas share.
    #[arg(long, env = "ETRACKER_REPLICA")]
    replica: Option<String>,
    /// First retry delay after a transient failure, seconds (doubles per attempt).
    #[arg(long, env = "ETRACKER_RETRY_BASE", default_value_t = 60)]
    retry_base: u64,
    /// ucanto requests (`POST /`) handled at once; more wait, within the timeout.
    #[arg(long, env = "ETRACKER_MAX_CONCURRENT_REQUESTS", default_value_t = 64)]
    max_concurrent_requests: usize,
    /// Seconds a ucanto request may take, waiting included (then 408).
    #[arg(long, env = "ETRACKER_REQUEST_TIMEOUT", default_value_t = 60)]
    request_timeout: u64,
    /// Bearer token for /metrics and /consolidate (unset: /metrics is open,
    /// /consolidate answers loopback callers only).
    #[arg(long, env = "ETRACKER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// User name of the dashboard's login (/admin), with --admin-password.
    #[arg(long, env = "ETRACKER_ADMIN_USER", requires = "admin_password")]
    admin_user: Option<String>,
    /// Password of the dashboard's login (the admin token also logs in).
    #[arg(
        long,
        env = "ETRACKER_ADMIN_PASSWORD",
        hide_env_values = true,
        requires = "admin_user"
    )]
    admin_password: Option<String>,
    /// USD per TiB of egress paid to nodes (the dashboard's payouts).
    #[arg(long, env = "ETRACKER_PROVIDER_EGRESS_USD_PER_TIB")]
    provider_egress_usd_per_tib: Option<f64>,
    /// USD per TiB of egress charged to customers (the dashboard's costs).
    #[arg(long, env = "ETRACKER_CLIENT_EGRESS_USD_PER_TIB")]
    client_egress_usd_per_tib: Option<f64>,
    /// URL of a separately deployed consolidator (in-process when unset).
    #[arg(long, env = "ETRACKER_CONSOLIDATOR_URL", requires = "consolidator_did")]
    consolidator_url: Option<String>,
    /// DID (did:key) of that consolidator.
    #[arg(long, env = "ETRACKER_CONSOLIDATOR_DID", requires = "consolidator_url")]
    consolidator_did: Option<String>,
}

/// How batches are fetched and judged (the tracker's in-process consolidator
/// and a separately deployed one take the same flags).
#[derive(Args)]
struct BatchArgs {
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

#[derive(Args)]
struct ConsolidatorArgs {
    /// This consolidator's key and scratch directory.
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    batches: BatchArgs,
    /// Its space policy: `dynamodb` looks spaces up itself; otherwise it
    /// counts every authorized space and the tracker, which judges them
    /// again at conclude, tells it which it does not bill.
    #[command(flatten)]
    billing: BillingArgs,
    /// Address to listen on.
    #[arg(long, env = "ETRACKER_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// The tracker, which the consolidator invokes with space/egress/conclude.
    #[command(flatten)]
    tracker: TrackerArgs,
    /// Delegation tracker → this consolidator of space/egress/conclude
    /// (from `etracker delegate <DID> --ability space/egress/conclude`).
    #[arg(long, env = "ETRACKER_CONCLUDE_PROOF")]
    proof: Option<String>,
}

/// The tracker a consolidator deployed apart concludes on (the same flags
/// as `etracker-node`'s, which this binary does not link).
#[derive(Args)]
struct TrackerArgs {
    /// The tracker's URL.
    #[arg(long, env = "ETRACKER_TRACKER_URL")]
    tracker_url: String,
    /// The tracker's DID.
    #[arg(long, env = "ETRACKER_TRACKER_DID")]
    tracker_did: String,
    /// The tracker's did:key, when its DID is a did:web.
    #[arg(long, env = "ETRACKER_TRACKER_KEY")]
    tracker_key: Option<String>,
}

impl TrackerArgs {
    /// The tracker's principal, which verifies its receipts.
    fn verifier(&self) -> Result<Arc<dyn Verifier>, BoxError> {
        ucanto::cli::verifier(&self.tracker_did, self.tracker_key.as_deref()).map_err(explain(
            format!("the tracker DID {:?} cannot be used", self.tracker_did),
            "Pass the DID `etracker start` printed (--tracker-did), and for a did:web its did:key (--tracker-key).",
        ))
    }
}

#[derive(Args)]
struct DelegateArgs {
    /// The DID of the node (or consolidator) to authorize.
    node: String,
    /// The ability to delegate.
    #[arg(long, default_value = "space/egress/track")]
    ability: String,
    #[command(flatten)]
    key: KeyArgs,
}

#[derive(Args)]
struct ConsolidateArgs {
    /// Run now (required: scheduled runs happen by themselves).
    #[arg(long)]
    now: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(serve_cli()),
        Err(e) => {
            eprintln!("etracker: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc gives every thread that allocates an arena of its own (up to 8
/// per core), and each arena keeps what was freed in it: with the threads
/// that check receipts and run store calls, the tracker's memory would be
/// the sum of their high-water marks. Two arenas keep it near what is in
/// use (one costs about 40% more CPU in lock contention). glibc reads the
/// limit from the environment when a process starts, so the tracker sets it
/// and starts again, unless the operator chose one. (Fixing the mmap and
/// trim thresholds at 128 KiB too took another MiB off every batch, and
/// cost 1–2% CPU in page faults: not done.)
/// This machine's name, for the default replica name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "etracker".to_string())
}

fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        use std::os::unix::process::CommandExt;
        let arenas = etracker_server::MALLOC_ARENA_MAX;
        let mut args = std::env::args_os();
        let mut again = std::process::Command::new("/proc/self/exe");
        if let Some(name) = args.next() {
            again.arg0(name);
        }
        // `exec` returns only when it failed: carry on as started.
        let error = again.args(args).env("MALLOC_ARENA_MAX", arenas).exec();
        eprintln!("etracker: cannot restart with MALLOC_ARENA_MAX={arenas} ({error}); going on");
    }
}

async fn serve_cli() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A sentence, not a Debug dump.
        Err(error) => {
            eprintln!("etracker: {}", sentence(error.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), BoxError> {
    match command {
        Command::Start(args) => start(*args).await,
        Command::Key {
            command: KeyCommand::Gen,
        } => {
            let key = Ed25519Signer::generate();
            println!("{{\"did\":\"{}\",\"key\":\"{}\"}}", key.did(), key.format());
            Ok(())
        }
        Command::Delegate(args) => {
            let signer = load_signer(&args.key)?;
            let node: Did = args
                .node
                .parse()
                .map_err(|e: ucanto::principal::PrincipalError| {
                    explain(
                        format!("{:?} is not a DID", args.node),
                        "A node's DID looks like did:key:z6Mk…; its operator gets it from its key.",
                    )(e)
                })?;
            let capability = match args.ability.as_str() {
                "space/egress/track" => Track::unrestricted(signer.did()),
                "space/egress/conclude" => Conclude::unrestricted(signer.did()),
                other => {
                    return Err(format!(
                        "cannot delegate {other:?}: space/egress/track or space/egress/conclude"
                    )
                    .into())
                }
            };
            let delegation = Delegation::builder(signer.as_ref(), node)
                .capability(capability)
                .no_expiration()
                .build()?;
            println!(
                "{}",
                multibase::encode(multibase::Base::Base64, delegation.archive()?)
            );
            Ok(())
        }
        Command::Consolidator(args) => consolidator(args).await,
        Command::Space { command } => space(command).await,
        Command::Overview(api) => {
            let overview = api.get("overview", &[]).await?;
            println!("{}", serde_json::to_string_pretty(&overview)?);
            Ok(())
        }
        Command::Nodes {
            node: Some(node),
            api,
            ..
        } => {
            let node: Did = node.parse()?;
            let page = api.get(&format!("nodes/{node}"), &[]).await?;
            println!("{}", serde_json::to_string_pretty(&page)?);
            Ok(())
        }
        Command::Nodes {
            node: None,
            prefix,
            csv,
            api,
        } => {
            if csv {
                print!("{}", admin_csv::NODES_HEADER);
            }
            api.print_all("nodes", "nodes", &[("q", &prefix)], |node| match csv {
                true => admin_csv::node_row(
                    node["node"].as_str().unwrap_or_default(),
                    node["total_bytes"].as_u64().unwrap_or_default(),
                    node["payout_usd"].as_f64(),
                ),
                false => format!("{node}\n"),
            })
            .await
        }
        Command::Usage {
            prefix,
            csv,
            customer,
            api,
        } => {
            if csv {
                print!("{}", admin_csv::SPACES_HEADER);
            }
            let filters = [("q", prefix.as_str()), ("customer", customer.as_str())];
            api.print_all("usage", "spaces", &filters, |space| match csv {
                true => space["egress_by_day"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|day| {
                        admin_csv::space_row(
                            space["space"].as_str().unwrap_or_default(),
                            space["customer"].as_str(),
                            day["day"].as_str().unwrap_or_default(),
                            day["bytes"].as_u64().unwrap_or_default(),
                            day["cost_usd"].as_f64(),
                        )
                    })
                    .collect(),
                false => format!("{space}\n"),
            })
            .await
        }
        Command::Consolidate(args) => {
            if !args.now {
                return Err(
                    "scheduled runs happen by themselves; pass --now to run one immediately".into(),
                );
            }
            let request = args.api.request(reqwest::Method::POST, "/consolidate");
            let (status, body) = args.api.send(request, IS_IT_RUNNING).await?;
            if !status.is_success() {
                return Err(format!("HTTP {status}: {body}").into());
            }
            print!("{body}");
            Ok(())
        }
    }
}

/// The store the flags name: redb in `data_dir`, or DynamoDB.
async fn open_store(args: &StoreArgs, data_dir: &Path) -> Result<Arc<dyn Store>, BoxError> {
    Ok(match args {
        #[cfg(feature = "dynamodb")]
        StoreArgs {
            kind,
            dynamodb_endpoint: Some(endpoint),
            dynamodb_table_prefix: prefix,
        } if kind == "dynamodb" => {
            // The store blocks on its own runtime: connect off the async threads.
            let (endpoint, prefix) = (endpoint.clone(), prefix.clone());
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

/// `etracker space …`: on the store when it can be opened, else (a tracker
/// holds the data directory) through that tracker's admin API.
async fn space(command: SpaceCommand) -> Result<(), BoxError> {
    let access = match &command {
        SpaceCommand::Add { access, .. }
        | SpaceCommand::Remove { access, .. }
        | SpaceCommand::List { access } => access,
    };
    let store = match open_store(&access.store, &access.key.data_dir).await {
        Ok(store) => Some(store),
        Err(e) if e.to_string().contains("already open") => None,
        Err(e) => return Err(e),
    };
    let admin = |method: reqwest::Method, path: String, body: Option<String>| {
        let mut request = access.api.request(method, &format!("/admin/spaces{path}"));
        if let Some(body) = body {
            request = request.body(body);
        }
        async move {
            let (status, text) = access
                .api
                .send(
                    request,
                    "The data directory is in use, so a tracker should be running: set --url or ETRACKER_URL to it.",
                )
                .await?;
            if !status.is_success() {
                return Err::<String, BoxError>(format!("HTTP {status}: {text}").into());
            }
            Ok(text)
        }
    };
    match &command {
        SpaceCommand::Add {
            spaces,
            provider,
            customer,
            ..
        } => {
            let spaces: Vec<Did> = spaces.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
            let provider: Option<Did> = provider.as_deref().map(str::parse).transpose()?;
            let customer: Option<Did> = customer.as_deref().map(str::parse).transpose()?;
            match &store {
                Some(store) => {
                    // All in one commit: registering many spaces stays fast.
                    let provider = match provider {
                        Some(provider) => provider,
                        None => load_signer(&access.key)?.did().clone(),
                    };
                    let entries: Vec<SpaceEntry> = spaces
                        .into_iter()
                        .map(|space| SpaceEntry {
                            space,
                            provider: provider.clone(),
                            customer: customer.clone(),
                        })
                        .collect();
                    let put = entries.clone();
                    blocking(store.clone(), move |s| s.put_spaces(&put)).await?;
                    for entry in &entries {
                        println!("{}", space_json(entry));
                    }
                }
                None => {
                    let mut body = serde_json::Map::new();
                    if let Some(provider) = provider {
                        body.insert("provider".into(), provider.as_str().into());
                    }
                    if let Some(customer) = customer {
                        body.insert("customer".into(), customer.as_str().into());
                    }
                    let body = serde_json::Value::Object(body).to_string();
                    for space in spaces {
                        let path = format!("/{space}");
                        print!(
                            "{}",
                            admin(reqwest::Method::PUT, path, Some(body.clone())).await?
                        );
                    }
                }
            }
        }
        SpaceCommand::Remove { spaces, .. } => {
            for space in spaces {
                let space: Did = space.parse()?;
                match &store {
                    Some(store) => {
                        let gone = space.clone();
                        let removed =
                            blocking(store.clone(), move |s| s.remove_space(&gone)).await?;
                        println!(
                            "{}",
                            serde_json::json!({"space": space.as_str(), "removed": removed})
                        );
                    }
                    None => {
                        let path = format!("/{space}");
                        print!("{}", admin(reqwest::Method::DELETE, path, None).await?);
                    }
                }
            }
        }
        SpaceCommand::List { .. } => match &store {
            Some(store) => {
                for entry in blocking(store.clone(), |s| s.spaces()).await? {
                    println!("{}", space_json(&entry));
                }
            }
            None => print!(
                "{}",
                admin(reqwest::Method::GET, String::new(), None).await?
            ),
        },
    }
    Ok(())
}

async fn start(args: StartArgs) -> Result<(), BoxError> {
    let signer = load_signer(&args.key)?;
    let store = open_store(&args.store, &args.key.data_dir)
        .await
        .map_err(explain(
        format!("cannot open the store in {}", args.key.data_dir.display()),
        "Is another etracker running on this data directory? Stop it, or pass another --data-dir.",
    ))?;
    let authorities = args.batches.authorities()?;
    let mut settings = Settings {
        interval: Duration::from_secs(args.consolidation_interval),
        batch_limit: args.batch_limit,
        concurrency: args.concurrency,
        max_pending_per_node: args.max_pending_per_node,
        retry_base_secs: args.retry_base,
        lease_secs: args.lease_secs,
        replica: args
            .replica
            .unwrap_or_else(|| format!("{}/{}", host_name(), args.listen)),
        limits: args.batches.limits(&args.key.data_dir),
        authorities,
        admin_token: args.admin_token,
        admin_login: args.admin_user.zip(args.admin_password),
        provider_usd_per_tib: args.provider_egress_usd_per_tib,
        client_usd_per_tib: args.client_egress_usd_per_tib,
        max_concurrent_requests: args.max_concurrent_requests,
        request_timeout: Duration::from_secs(args.request_timeout),
        remote_consolidator: match (&args.consolidator_url, &args.consolidator_did) {
            (Some(url), Some(did)) => Some(RemoteConsolidator {
                url: url.clone(),
                verifier: ucanto::principal::verifier_for(&did.parse()?)?,
            }),
            _ => None,
        },
        ..Settings::default()
    };
    args.billing.apply(&mut settings)?;
    std::fs::create_dir_all(&settings.limits.scratch_dir)?;
    let tracker = Tracker::new(signer.clone(), store, settings);
    tokio::spawn(tracker.clone().run_scheduler());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let address = listener.local_addr()?;
    tracing::info!(did = %signer.did(), %address, data_dir = %args.key.data_dir.display(), "etracker listening");
    // One line on stdout so scripts and tests can find the service.
    println!(
        "{{\"url\":\"http://{address}/\",\"did\":\"{}\"}}",
        signer.did()
    );
    let app = tracker
        .app()
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

async fn consolidator(args: ConsolidatorArgs) -> Result<(), BoxError> {
    let signer = load_signer(&args.key)?;
    let tracker = args.tracker.verifier()?;
    let proofs = match &args.proof {
        Some(text) => vec![parse_proof(text).map_err(explain(
            "ETRACKER_CONCLUDE_PROOF is not a delegation",
            "Pass what `etracker delegate <DID> --ability space/egress/conclude` printed.",
        ))?],
        None => Vec::new(),
    };
    let limits = args.batches.limits(&args.key.data_dir);
    std::fs::create_dir_all(&limits.scratch_dir)?;
    let connection =
        ucanto::client::Connection::http(tracker.clone(), args.tracker.tracker_url.clone());
    let tracker_did = tracker.did().clone();
    // Its own registry when it has one (dynamodb); otherwise every space,
    // the tracker judging them again at conclude.
    let mut billing = Settings::default();
    args.billing.apply(&mut billing)?;
    let spaces = match billing.space_registry {
        Some(registry) => SpacePolicy::Known {
            providers: billing
                .known_providers
                .into_iter()
                .chain([tracker_did])
                .collect(),
            registry,
        },
        None => SpacePolicy::Any,
    };
    let service = Arc::new(
        etracker_server::consolidator::Consolidator::builder(signer.clone(), tracker, connection)
            .limits(limits)
            .authorities(args.batches.authorities()?)
            .conclude_proofs(proofs)
            .billing(spaces, billing.non_billable_actors.into_iter().collect())
            .build(),
    );
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let address = listener.local_addr()?;
    tracing::info!(did = %signer.did(), %address, tracker = %args.tracker.tracker_url, "consolidator listening");
    println!(
        "{{\"url\":\"http://{address}/\",\"did\":\"{}\"}}",
        signer.did()
    );
    let app = etracker_server::consolidator::router(service, 64 * 1024 * 1024);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
}

/// The key from the flag/env, else the key file (generated and persisted on first use).
fn load_signer(args: &KeyArgs) -> Result<Arc<dyn Signer>, BoxError> {
    let key = match &args.private_key {
        Some(text) => Ed25519Signer::parse(text).map_err(|e| {
            explain(
                "ETRACKER_PRIVATE_KEY is not an ed25519 private key in the \"M…\" format",
                "`etracker key gen` makes one; or unset it to use the key file.",
            )(e)
        })?,
        None => {
            let path = args
                .key_file
                .clone()
                .unwrap_or_else(|| args.data_dir.join("etracker.key"));
            load_or_create_key(&path).map_err(explain(
                format!("cannot load the key file {}", path.display()),
                "It holds an \"M…\" key (`etracker key gen`); remove it to generate a new one.",
            ))?
        }
    };
    Ok(match &args.did {
        Some(did) => Arc::new(key.with_did(did.parse().map_err(
            |e: ucanto::principal::PrincipalError| {
                explain(
                    format!("ETRACKER_DID {did:?} is not a DID"),
                    "Present the service as e.g. did:web:tracker.example.",
                )(e)
            },
        )?)),
        None => Arc::new(key),
    })
}

fn load_or_create_key(path: &Path) -> Result<Ed25519Signer, BoxError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Ed25519Signer::parse(&text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Ed25519Signer::generate();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            write_private(path, &key.format())?;
            tracing::info!(path = %path.display(), did = %key.did(), "generated a new service key");
            Ok(key)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}
