//! `etracker-node`: the storage-node operator's command line.
//!
//! Every command prints one JSON line on stdout; flags can also be set as
//! `ETRACKER_NODE_*` / `ETRACKER_TRACKER_*` environment variables (`--help`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use cid::Cid;
use clap::{Args, Parser, Subcommand};
use etracker_client::batch::batch_cid;
use etracker_client::{
    parse_proof, reconcile, verifier, BatchJournal, BatchRecord, BatchState, EgressClient,
    JournalConfig, ReceiptRecord, Reporter,
};
use ucanto::principal::Ed25519Signer;
use ucanto::receipt::Receipt;

#[derive(Parser)]
#[command(
    name = "etracker-node",
    version,
    about = "Egress tracking for a storage node: track batches, check receipts, serve the journal"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask the tracker to account for a batch file; prints its consolidate task.
    Track {
        /// The batch (a CAR in the Piri format).
        batch: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Poll the tracker once for a consolidate receipt.
    Status {
        /// The consolidate task CID (from `track`).
        consolidate: Cid,
        #[command(flatten)]
        tracker: TrackerArgs,
    },
    /// Compare the tracker's receipt for a batch file with the batch itself.
    Reconcile {
        /// The batch file.
        batch: PathBuf,
        /// Its consolidate task; learned by tracking again (idempotent) when omitted.
        #[arg(long)]
        consolidate: Option<Cid>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Journal commands.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Serve the journal's closed batches at GET /receipts/{cid}; with `--report`,
    /// also track, poll and reconcile them on a timer.
    Serve {
        /// The journal directory.
        #[arg(long, env = "ETRACKER_NODE_JOURNAL", default_value = "egress-journal")]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, env = "ETRACKER_NODE_LISTEN", default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        /// Also report batches to the tracker (needs the node flags).
        #[arg(long)]
        report: bool,
        #[command(flatten)]
        node: OptionalNodeArgs,
    },
}

#[derive(Args, Clone)]
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

#[derive(Args, Clone)]
struct NodeArgs {
    #[command(flatten)]
    tracker: TrackerArgs,
    /// The node's private key ("M…").
    #[arg(long, env = "ETRACKER_NODE_KEY", hide_env_values = true)]
    key: String,
    /// The tracker → node delegation (output of `etracker delegate <node DID>`).
    #[arg(long, env = "ETRACKER_NODE_PROOF")]
    proof: String,
    /// Where the tracker fetches batches, with a `{cid}` placeholder.
    #[arg(long, env = "ETRACKER_NODE_ENDPOINT")]
    endpoint: String,
}

#[derive(Args, Clone)]
struct OptionalNodeArgs {
    /// The tracker's URL.
    #[arg(long, env = "ETRACKER_TRACKER_URL")]
    tracker_url: Option<String>,
    /// The tracker's DID.
    #[arg(long, env = "ETRACKER_TRACKER_DID")]
    tracker_did: Option<String>,
    /// The tracker's did:key, when its DID is a did:web.
    #[arg(long, env = "ETRACKER_TRACKER_KEY")]
    tracker_key: Option<String>,
    /// The node's private key ("M…").
    #[arg(long, env = "ETRACKER_NODE_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The tracker → node delegation.
    #[arg(long, env = "ETRACKER_NODE_PROOF")]
    proof: Option<String>,
    /// Where the tracker fetches batches, with a `{cid}` placeholder.
    #[arg(long, env = "ETRACKER_NODE_ENDPOINT")]
    endpoint: Option<String>,
}

impl OptionalNodeArgs {
    fn complete(self) -> Option<NodeArgs> {
        Some(NodeArgs {
            tracker: TrackerArgs {
                tracker_url: self.tracker_url?,
                tracker_did: self.tracker_did?,
                tracker_key: self.tracker_key,
            },
            key: self.key?,
            proof: self.proof?,
            endpoint: self.endpoint?,
        })
    }
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse().command).await {
        eprintln!("etracker-node: {e}");
        std::process::exit(1);
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Track { batch, node } => {
            let bytes = std::fs::read(&batch)?;
            let cid = batch_cid(&bytes);
            let tracked = client(&node)?.track(cid).await?;
            print(
                serde_json::json!({"batch": cid.to_string(), "consolidate": tracked.consolidate.to_string()}),
            );
        }
        Command::Status {
            consolidate,
            tracker,
        } => {
            // Polling needs neither the node's key nor its endpoint; the
            // builder insists on an endpoint, so it gets one that is never used.
            let client = EgressClient::builder(
                Arc::new(Ed25519Signer::generate()),
                tracker_verifier(&tracker)?,
                tracker.tracker_url,
            )
            .endpoint("http://unused.invalid/receipts/{cid}")
            .build()?;
            match client.consolidation(consolidate).await? {
                None => print(serde_json::json!({"status": "pending"})),
                Some(consolidation) => print(match consolidation.outcome() {
                    Ok(ok) => serde_json::json!({
                        "status": "ok",
                        "receipt": consolidation.receipt().cid().to_string(),
                        "totalEgress": ok.total_egress,
                        "errors": ok.errors.iter().map(|e| serde_json::json!({
                            "name": e.name, "message": e.message, "receipt": e.receipt.to_string()
                        })).collect::<Vec<_>>(),
                    }),
                    Err(failure) => serde_json::json!({
                        "status": "error",
                        "receipt": consolidation.receipt().cid().to_string(),
                        "error": failure.to_string(),
                    }),
                }),
            }
        }
        Command::Reconcile {
            batch,
            consolidate,
            node,
        } => {
            let bytes = std::fs::read(&batch)?;
            let client = client(&node)?;
            let cid = batch_cid(&bytes);
            let consolidate = match consolidate {
                Some(cid) => cid,
                None => client.track(cid).await?.consolidate,
            };
            let Some(consolidation) = client.consolidation(consolidate).await? else {
                print(serde_json::json!({"batch": cid.to_string(), "status": "pending"}));
                return Ok(());
            };
            let track = client.track_invocation(cid)?.cid();
            let record = record_of(&bytes, track, consolidate)?;
            let reconciliation = reconcile(&record, &consolidation);
            let matched = reconciliation.is_match();
            print(serde_json::json!({
                "batch": cid.to_string(),
                "status": if matched { "match" } else { "difference" },
                "expected": reconciliation.expected_total,
                "reported": reconciliation.reported_total,
                "verdict": reconciliation.verdict.to_string(),
            }));
            if !matched {
                std::process::exit(3);
            }
        }
        Command::Journal {
            command:
                JournalCommand::Serve {
                    dir,
                    listen,
                    report,
                    node,
                },
        } => {
            let journal = BatchJournal::open(&dir, JournalConfig::default())?;
            if report {
                let node = node
                    .complete()
                    .ok_or("--report needs the tracker and node flags")?;
                Reporter::new(journal.clone(), client(&node)?).spawn();
            }
            let listener = tokio::net::TcpListener::bind(listen).await?;
            print(
                serde_json::json!({"url": format!("http://{}/", listener.local_addr()?), "batches": journal.batches().len()}),
            );
            axum::serve(listener, etracker_client::router(journal)).await?;
        }
    }
    Ok(())
}

fn print(value: serde_json::Value) {
    println!("{value}");
}

fn tracker_verifier(args: &TrackerArgs) -> Result<Arc<dyn ucanto::principal::Verifier>, Failure> {
    Ok(verifier(&args.tracker_did, args.tracker_key.as_deref())?)
}

fn client(args: &NodeArgs) -> Result<EgressClient, Failure> {
    let node = Arc::new(Ed25519Signer::parse(&args.key)?);
    Ok(EgressClient::builder(
        node,
        tracker_verifier(&args.tracker)?,
        args.tracker.tracker_url.clone(),
    )
    .proof(parse_proof(&args.proof)?)
    .endpoint(args.endpoint.clone())
    .build()?)
}

/// What a batch file says of itself, as the journal would have recorded it.
fn record_of(bytes: &[u8], track: Cid, consolidate: Cid) -> Result<BatchRecord, Failure> {
    let (_, blocks) = ucanto::car::decode(bytes)?;
    let mut receipts = Vec::new();
    for (archive, block) in blocks {
        let receipt = Receipt::extract(&block)?;
        receipts.push(ReceiptRecord::of(&receipt, archive)?);
    }
    Ok(BatchRecord {
        cid: batch_cid(bytes),
        size: bytes.len() as u64,
        created_at: 0,
        closed_at: 0,
        receipts,
        state: BatchState::Tracked {
            track,
            consolidate,
            at: 0,
        },
    })
}
