//! `etracker start`: the service.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use etracker_server::service::{RemoteConsolidator, Settings, Tracker};
use ucanto::cli::{explain, BoxError};

use super::batches::{consolidation, BatchArgs, BillingArgs};
use super::keys::{load_signer, KeyArgs};
use super::serve::{bind, serve};
use super::store::StoreArgs;

#[derive(Args)]
pub(crate) struct StartArgs {
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
    /// among replicas sharing a store: by default `<host name>/<address it
    /// listens on>`, or, listening on port 0 (a port that changes at every
    /// start), `<host name>/<data directory's absolute path>`; no two
    /// running replicas share either, and a restart keeps it.
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
    /// Bearer token of every admin route (/metrics, /consolidate, /admin/*)
    /// and a dashboard password. Unset: the one in <data dir>/admin.token,
    /// written (mode 0600) the first time. Empty is refused.
    #[arg(long, env = "ETRACKER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Host names (with or without a port) the dashboard answers to, comma
    /// separated: a page elsewhere that points its own name at this machine
    /// (DNS rebinding) gets 421. Default: localhost, 127.0.0.1, [::1].
    #[arg(long, env = "ETRACKER_ADMIN_HOSTS", value_delimiter = ',')]
    admin_hosts: Vec<String>,
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

impl StartArgs {
    /// The consolidator deployed apart, when the flags name one.
    fn remote_consolidator(&self) -> Result<Option<RemoteConsolidator>, BoxError> {
        let (Some(url), Some(did)) = (&self.consolidator_url, &self.consolidator_did) else {
            return Ok(None);
        };
        let verifier = did
            .parse()
            .map_err(Into::<BoxError>::into)
            .and_then(|did| Ok(ucanto::principal::verifier_for(&did)?))
            .map_err(explain(
                format!("ETRACKER_CONSOLIDATOR_DID {did:?} cannot be used"),
                "Pass the did:key `etracker consolidator` printed (--consolidator-did).",
            ))?;
        Ok(Some(RemoteConsolidator {
            url: url.clone(),
            verifier,
        }))
    }
}

/// `etracker start`: opens the store, runs the scheduler and serves.
pub(crate) async fn start(args: StartArgs) -> Result<(), BoxError> {
    let data_dir = &args.key.data_dir;
    let listener = bind(args.listen).await?;
    let admin_token = super::token::for_start(args.admin_token.as_deref(), data_dir)?;
    let replica = match &args.replica {
        Some(name) => name.clone(),
        None => default_replica(args.listen, data_dir),
    };
    let mut settings = Settings {
        interval: Duration::from_secs(args.consolidation_interval),
        batch_limit: args.batch_limit,
        concurrency: args.concurrency,
        max_pending_per_node: args.max_pending_per_node,
        retry_base_secs: args.retry_base,
        lease_secs: args.lease_secs,
        replica,
        admin_token: Some(admin_token),
        admin_hosts: args.admin_hosts.clone(),
        admin_login: args.admin_user.clone().zip(args.admin_password.clone()),
        provider_usd_per_tib: args.provider_egress_usd_per_tib,
        client_usd_per_tib: args.client_egress_usd_per_tib,
        max_concurrent_requests: args.max_concurrent_requests,
        request_timeout: Duration::from_secs(args.request_timeout),
        remote_consolidator: args.remote_consolidator()?,
        ..Settings::default()
    };
    consolidation(&args.batches, &args.billing, data_dir, &mut settings)?;
    let signer = load_signer(&args.key)?;
    let store = args.store.open(data_dir).await.map_err(explain(
        format!("cannot open the store in {}", data_dir.display()),
        args.store.hint(),
    ))?;
    let tracker = Tracker::new(signer.clone(), store, settings);
    let replica = tracker.settings().replica.clone();
    tokio::spawn(tracker.clone().run_scheduler());
    serve(listener, tracker.app(), signer.did(), Some(&replica), |address| {
        tracing::info!(did = %signer.did(), %address, data_dir = %data_dir.display(), "etracker listening");
    })
    .await
}

/// The name a replica leases under when none is given: stable across its
/// restarts (so it takes back its leases at once) and unique among the
/// replicas running on this host. A port asked for names it; port 0, which
/// changes at every start, cannot, so the data directory does (made by
/// now: the admin token lives in it).
fn default_replica(listen: SocketAddr, data_dir: &std::path::Path) -> String {
    if listen.port() != 0 {
        return format!("{}/{listen}", host_name());
    }
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    format!("{}/{}", host_name(), dir.display())
}

/// This machine's name, for the default replica name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "etracker".to_string())
}
