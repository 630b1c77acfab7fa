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
use etracker_client::cli::{explain, sentence, BoxError, TrackerArgs};
use etracker_client::{
    parse_proof, reconcile, BatchJournal, BatchRecord, BatchState, EgressClient, JournalConfig,
    ReceiptRecord, Reporter,
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command).await {
        Ok(code) => code,
        // A sentence with a hint, not a Debug dump.
        Err(error) => {
            eprintln!("etracker-node: {}", sentence(error.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Reads a batch file the node wrote.
fn read_batch(path: &std::path::Path) -> Result<Vec<u8>, BoxError> {
    std::fs::read(path).map_err(explain(
        format!("cannot read the batch file {}", path.display()),
        "Give the path of a batch (CAR) file the node's journal wrote.",
    ))
}

/// The hint for a request the tracker did not answer as asked.
fn unreachable<E: Into<BoxError>>(url: &str) -> impl FnOnce(E) -> BoxError + '_ {
    explain(
        format!("the tracker at {url} did not accept the request"),
        "Check --tracker-url and that the tracker is running; `Unauthorized` means the proof was not delegated to this node's key.",
    )
}

async fn run(command: Command) -> Result<std::process::ExitCode, BoxError> {
    match command {
        Command::Track { batch, node } => {
            let bytes = read_batch(&batch)?;
            let cid = batch_cid(&bytes);
            let tracked = client(&node)?
                .track(cid)
                .await
                .map_err(unreachable(&node.tracker.tracker_url))?;
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
                tracker.verifier()?,
                tracker.tracker_url.clone(),
            )
            .endpoint("http://unused.invalid/receipts/{cid}")
            .build()?;
            let consolidation = client
                .consolidation(consolidate)
                .await
                .map_err(unreachable(&tracker.tracker_url))?;
            match consolidation {
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
            let bytes = read_batch(&batch)?;
            let client = client(&node)?;
            let cid = batch_cid(&bytes);
            let url = &node.tracker.tracker_url;
            let consolidate = match consolidate {
                Some(cid) => cid,
                None => {
                    client
                        .track(cid)
                        .await
                        .map_err(unreachable(url))?
                        .consolidate
                }
            };
            let consolidation = client
                .consolidation(consolidate)
                .await
                .map_err(unreachable(url))?;
            let Some(consolidation) = consolidation else {
                print(serde_json::json!({"batch": cid.to_string(), "status": "pending"}));
                return Ok(std::process::ExitCode::SUCCESS);
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
                return Ok(std::process::ExitCode::from(3));
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
            let journal = BatchJournal::open(&dir, JournalConfig::default()).map_err(explain(
                format!("cannot open the journal in {}", dir.display()),
                "Is another etracker-node using it? Otherwise check --dir and its permissions.",
            ))?;
            if report {
                let node = node.complete().ok_or(
                    "--report needs the tracker and node flags: set --tracker-url, --tracker-did, --key, --proof and --endpoint (or their ETRACKER_* variables)",
                )?;
                Reporter::new(journal.clone(), client(&node)?).spawn();
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(explain(
                    format!("cannot listen on {listen}"),
                    "Choose a free address with --listen (ETRACKER_NODE_LISTEN).",
                ))?;
            print(
                serde_json::json!({"url": format!("http://{}/", listener.local_addr()?), "batches": journal.batches().len()}),
            );
            axum::serve(listener, etracker_client::router(journal)).await?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn print(value: serde_json::Value) {
    println!("{value}");
}

fn client(args: &NodeArgs) -> Result<EgressClient, BoxError> {
    let node = Arc::new(Ed25519Signer::parse(&args.key).map_err(explain(
        "the node key (--key, ETRACKER_NODE_KEY) is not an ed25519 private key",
        "Give the node's key in the \"M…\" format, as `etracker key gen` prints it.",
    ))?);
    let proof = parse_proof(&args.proof).map_err(explain(
        "the node proof (--proof, ETRACKER_NODE_PROOF) is not a delegation",
        "Pass what the tracker's operator printed with `etracker delegate <node DID>`.",
    ))?;
    EgressClient::builder(node, args.tracker.verifier()?, args.tracker.tracker_url.clone())
        .proof(proof)
        .endpoint(args.endpoint.clone())
        .build()
        .map_err(explain(
            format!("the endpoint {:?} cannot be used", args.endpoint),
            "Give the URL the tracker fetches batches from, with a {cid} placeholder, e.g. https://node.example/receipts/{cid}.",
        ))
}

/// What a batch file says of itself, as the journal would have recorded it.
fn record_of(bytes: &[u8], track: Cid, consolidate: Cid) -> Result<BatchRecord, BoxError> {
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
