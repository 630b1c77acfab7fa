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
use etracker_server::consolidator::BatchLimits;
use etracker_server::service::{RemoteConsolidator, Settings, Tracker};
use etracker_server::store::redb::RedbStore;
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
    Start(StartArgs),
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
    /// Batches consolidated at once.
    #[arg(long, env = "ETRACKER_CONCURRENCY", default_value_t = 4)]
    concurrency: usize,
    /// Seconds a replica holds a record while consolidating it.
    #[arg(long, env = "ETRACKER_LEASE_SECS", default_value_t = 900)]
    lease_secs: u64,
    /// Name of this replica in leases (stable across restarts of one host).
    #[arg(long, env = "ETRACKER_REPLICA", default_value = "etracker")]
    replica: String,
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
    /// Largest range one retrieval may claim, bytes.
    #[arg(long, env = "ETRACKER_MAX_RETRIEVAL_BYTES", default_value_t = etracker_server::consolidator::DEFAULT_MAX_RETRIEVAL_BYTES)]
    max_retrieval_bytes: u64,
    /// Seconds a node may keep failing to serve a batch, from its first failed
    /// attempt, before the batch is given up.
    #[arg(long, env = "ETRACKER_GIVE_UP_AFTER", default_value_t = 48 * 3600)]
    give_up_after: u64,
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
            give_up_after: self.give_up_after,
            scratch_dir: data_dir.join("tmp"),
            max_retrieval_bytes: self.max_retrieval_bytes,
            allow_private_endpoints: self.allow_private_endpoints,
        }
    }

    /// The attesting authorities, from `DID=did:key` entries.
    fn authorities(&self) -> Result<Vec<Arc<dyn Verifier>>, Failure> {
        let mut authorities: Vec<Arc<dyn Verifier>> = Vec::new();
        for entry in &self.authorities {
            let (did, key) = entry.split_once('=').ok_or("authorities are DID=did:key")?;
            authorities.push(Arc::new(
                Ed25519Verifier::parse(&key.parse()?)?.with_did(did.parse()?),
            ));
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
    /// Address to listen on.
    #[arg(long, env = "ETRACKER_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// The tracker's ucanto endpoint, for space/egress/conclude.
    #[arg(long, env = "ETRACKER_TRACKER_URL")]
    tracker_url: String,
    /// The tracker's DID.
    #[arg(long, env = "ETRACKER_TRACKER_DID")]
    tracker_did: String,
    /// The tracker's did:key, when its DID is a did:web.
    #[arg(long, env = "ETRACKER_TRACKER_KEY")]
    tracker_key: Option<String>,
    /// Delegation tracker → this consolidator of space/egress/conclude
    /// (from `etracker delegate <DID> --ability space/egress/conclude`).
    #[arg(long, env = "ETRACKER_CONCLUDE_PROOF")]
    proof: Option<String>,
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
    /// The running service.
    #[arg(long, env = "ETRACKER_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token, when the service has one.
    #[arg(long, env = "ETRACKER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Start(args) => start(args).await,
        Command::Key {
            command: KeyCommand::Gen,
        } => {
            let key = Ed25519Signer::generate();
            println!("{{\"did\":\"{}\",\"key\":\"{}\"}}", key.did(), key.format());
            Ok(())
        }
        Command::Delegate(args) => {
            let signer = load_signer(&args.key)?;
            let node: Did = args.node.parse()?;
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
        Command::Consolidate(args) => {
            if !args.now {
                return Err(
                    "scheduled runs happen by themselves; pass --now to run one immediately".into(),
                );
            }
            let mut request = reqwest::Client::new()
                .post(format!("{}/consolidate", args.url.trim_end_matches('/')));
            if let Some(token) = args.admin_token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await?;
            let status = response.status();
            let body = response.text().await?;
            if !status.is_success() {
                return Err(format!("HTTP {status}: {body}").into());
            }
            print!("{body}");
            Ok(())
        }
    }
}

async fn start(args: StartArgs) -> Result<(), Failure> {
    let signer = load_signer(&args.key)?;
    let store: Arc<dyn etracker_server::store::Store> = match &args.store {
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
        _ => Arc::new(RedbStore::open(&args.key.data_dir)?),
    };
    let authorities = args.batches.authorities()?;
    let settings = Settings {
        interval: Duration::from_secs(args.consolidation_interval),
        batch_limit: args.batch_limit,
        concurrency: args.concurrency,
        retry_base_secs: args.retry_base,
        lease_secs: args.lease_secs,
        replica: args.replica,
        limits: args.batches.limits(&args.key.data_dir),
        authorities,
        admin_token: args.admin_token,
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

async fn consolidator(args: ConsolidatorArgs) -> Result<(), Failure> {
    let signer = load_signer(&args.key)?;
    let tracker_did: Did = args.tracker_did.parse()?;
    let tracker: Arc<dyn Verifier> = match &args.tracker_key {
        Some(key) => Arc::new(Ed25519Verifier::parse(&key.parse()?)?.with_did(tracker_did)),
        None => ucanto::principal::verifier_for(&tracker_did)?,
    };
    let proofs = match &args.proof {
        Some(text) => vec![Delegation::extract(&multibase::decode(text.trim())?.1)?],
        None => Vec::new(),
    };
    let limits = args.batches.limits(&args.key.data_dir);
    std::fs::create_dir_all(&limits.scratch_dir)?;
    let connection = ucanto::client::Connection::http(tracker.clone(), args.tracker_url.clone());
    let service = Arc::new(etracker_server::consolidator::Consolidator::new(
        signer.clone(),
        tracker,
        connection,
        None,
        limits,
        args.batches.authorities()?,
        proofs,
    ));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let address = listener.local_addr()?;
    tracing::info!(did = %signer.did(), %address, tracker = %args.tracker_url, "consolidator listening");
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
fn load_signer(args: &KeyArgs) -> Result<Arc<dyn Signer>, Failure> {
    let key = match &args.private_key {
        Some(text) => Ed25519Signer::parse(text)?,
        None => {
            let path = args
                .key_file
                .clone()
                .unwrap_or_else(|| args.data_dir.join("etracker.key"));
            load_or_create_key(&path)?
        }
    };
    Ok(match &args.did {
        Some(did) => Arc::new(key.with_did(did.parse()?)),
        None => Arc::new(key),
    })
}

fn load_or_create_key(path: &Path) -> Result<Ed25519Signer, Failure> {
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
