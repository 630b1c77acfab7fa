//! A storage node, end to end against a running etracker: it serves
//! retrievals (fabricated: a fixed client key invokes `space/content/retrieve`,
//! the node signs the receipts), journals the receipts, serves the batch at
//! `GET /receipts/{cid}`, tracks it, polls for the consolidate receipt,
//! reconciles it with its journal and deletes the batch on a match.
//!
//! Run, with a tracker at 127.0.0.1:8080 that can reach this node (on one
//! machine: `etracker start --allow-private-endpoints --consolidation-interval 5`):
//!
//! ```text
//! cargo run -p etracker-client --example node -- \
//!     --tracker-url http://127.0.0.1:8080 \
//!     --tracker-did did:key:z6Mkt6316e2PN3mZdB6N9CrzomJYUd1s5yBZi1XYHmwT9TUP \
//!     --proof mAYIEA…            # the tracker → node space/egress/track delegation (multibase)
//! ```
//!
//! For a development tracker whose private key you hold, `--tracker-secret Mg…`
//! issues that delegation locally instead of `--proof` (the DID above is the
//! fixtures' "service" key, `MgCYEBAQ…`, seed 32 × 0x04). A did:web tracker needs
//! `--tracker-key-did did:key:…` too. By default the node journals receipts until
//! the batch reaches the spec's 10 MiB minimum (about 15,000 receipts);
//! `--receipts 20` makes a tiny batch instead, for trackers that accept one.
//! The node listens on `--listen` (default 127.0.0.1:3400) and tells the
//! tracker to fetch from `--public-url` (default `http://<listen>`). Make the
//! tracker consolidate often (e.g. every few seconds) or raise `--timeout`.
//! Exit status: 0 when the tracker's total matches the journal, 1 otherwise.

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use etracker_capabilities::retrieve::{Blob, ByteRange, Retrieve, RetrieveNb};
use etracker_capabilities::track::Track;
use etracker_capabilities::Ability;
use etracker_client::{
    parse_proof, reconcile, router, verifier, BatchJournal, EgressClient, JournalConfig, Settlement,
};
use ucanto::dag::{Ipld, IpldMap};
use ucanto::principal::{Ed25519Signer, Signer};
use ucanto::receipt::{Receipt, ReceiptParts};
use ucanto::ucan::Delegation;

#[derive(Parser, Debug)]
#[command(about = "Play a storage node against a running etracker")]
struct Args {
    /// Where the tracker serves `POST /` and `GET /receipts/{cid}`.
    #[arg(long, env = "ETRACKER_URL", default_value = "http://127.0.0.1:8080")]
    tracker_url: String,
    /// The tracker's DID (did:key, or did:web with --tracker-key-did).
    #[arg(long, env = "ETRACKER_DID")]
    tracker_did: String,
    /// The did:key a did:web tracker signs with.
    #[arg(long)]
    tracker_key_did: Option<String>,
    /// The tracker → node delegation, multibase-encoded archive.
    #[arg(long, env = "NODE_PROOF", conflicts_with = "tracker_secret")]
    proof: Option<String>,
    /// Development only: the tracker's private key ("Mg…"), to issue the delegation here.
    #[arg(long, env = "ETRACKER_SECRET")]
    tracker_secret: Option<String>,
    /// The node's private key ("Mg…"); default: the fixtures' node key (seed 32 × 0x05).
    #[arg(long, env = "NODE_SECRET")]
    node_secret: Option<String>,
    /// Address to serve the batch on.
    #[arg(long, default_value = "127.0.0.1:3400")]
    listen: String,
    /// Base URL the tracker fetches from (default `http://<listen>`).
    #[arg(long)]
    public_url: Option<String>,
    /// Journal directory (default: a fresh temporary directory).
    #[arg(long)]
    journal: Option<std::path::PathBuf>,
    /// Journal this many receipts in a small batch, instead of filling 10 MiB.
    #[arg(long)]
    receipts: Option<u64>,
    /// Seconds between two polls of the consolidate receipt.
    #[arg(long, default_value_t = 5)]
    poll: u64,
    /// Seconds to wait for the consolidate receipt.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();

    // Who is who.
    let node = Arc::new(match &args.node_secret {
        Some(secret) => Ed25519Signer::parse(secret)?,
        None => Ed25519Signer::from_seed([5; 32]),
    });
    let tracker = verifier(&args.tracker_did, args.tracker_key_did.as_deref())?;
    let proof = match (&args.proof, &args.tracker_secret) {
        (Some(proof), _) => parse_proof(proof)?,
        (None, Some(secret)) => {
            let key = Ed25519Signer::parse(secret)?.with_did(tracker.did().clone());
            Delegation::builder(&key, node.did().clone())
                .capability(Track::unrestricted(tracker.did()))
                .no_expiration()
                .build()?
        }
        (None, None) => return Err("give --proof (or --tracker-secret for a dev tracker)".into()),
    };
    println!("node    {}", node.did());
    println!("tracker {} at {}", tracker.did(), args.tracker_url);

    // The journal and the route the tracker fetches batches from.
    let temp = std::env::temp_dir().join(format!("etracker-node-{}", std::process::id()));
    let dir = args.journal.clone().unwrap_or(temp);
    let config = match args.receipts {
        Some(_) => JournalConfig::default()
            .allow_small_batches(true)
            .min_batch_bytes(0),
        None => JournalConfig::default(),
    }
    // This demo journals thousands of receipts in a tight loop; a real node
    // keeps the default (an fdatasync per receipt). Rotation fsyncs either way.
    .sync_appends(false);
    let journal = BatchJournal::open(&dir, config)?;
    println!("journal {}", dir.display());
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let public = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.listen));
    let app = router(journal.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = EgressClient::builder(node.clone(), tracker, &args.tracker_url)
        .proof(proof)
        .endpoint(format!("{}/receipts/{{cid}}", public.trim_end_matches('/')))
        .build()?;

    // Serve retrievals: a client (fixed key, seed 32 × 0x01) retrieves 1 KiB
    // ranges of one blob; every tenth is NotFound (journaled, counts 0 bytes).
    let client_key = Ed25519Signer::from_seed([1; 32]);
    let mut digest = vec![0x12, 0x20];
    digest.extend([7; 32]);
    let mut served = 0u64;
    for i in 0u64.. {
        let done = match args.receipts {
            Some(n) => i >= n,
            None => journal.current().is_some_and(|c| c.size >= journal_min()),
        };
        if done {
            break;
        }
        let nb = RetrieveNb {
            blob: Blob {
                digest: digest.clone(),
            },
            range: ByteRange::new(i * 1024, i * 1024 + 1023)?,
        };
        let invocation = Delegation::builder(&client_key, node.did().clone())
            .capability(Retrieve::capability(client_key.did(), &nb))
            .build()?;
        let out = if i % 10 == 9 {
            Err(ucanto::server::error_value(
                "NotFound",
                "blob not found".into(),
            ))
        } else {
            served += 1024;
            Ok(Ipld::Map(IpldMap::new()))
        };
        let receipt = Receipt::issue(node.as_ref(), ReceiptParts::new(invocation, out))?;
        journal.append(&receipt)?;
    }
    let batch = journal.rotate()?.ok_or("nothing to close")?;
    println!(
        "batch   {} ({} bytes, {} receipts, {} egress bytes, served at {}/receipts/{})",
        batch.cid,
        batch.size,
        batch.receipts.len(),
        batch.expected_egress(),
        public,
        batch.cid
    );
    assert_eq!(batch.expected_egress(), served);

    // A tracker counts only spaces a known provider provisions: register the
    // client's space with it (its admin API needs its admin token:
    // ETRACKER_ADMIN_TOKEN, or the admin.token `etracker start` wrote in its
    // data directory). A tracker you do not run has its own registry: ask
    // its operator.
    register_space(&args.tracker_url, client_key.did()).await;

    // Track it.
    let tracked = client.track(batch.cid).await?;
    journal.mark_tracked(&batch.cid, &tracked)?;
    println!(
        "tracked {} → consolidate task {}",
        tracked.track, tracked.consolidate
    );

    // Wait for the consolidate receipt.
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let consolidation = loop {
        match client.consolidation(tracked.consolidate).await {
            Ok(Some(c)) => break c,
            Ok(None) => println!("pending …"),
            Err(e) if e.is_transient() => println!("poll failed ({e}), retrying"),
            Err(e) => return Err(e.into()),
        }
        if Instant::now() > deadline {
            return Err("timed out waiting for the consolidate receipt".into());
        }
        tokio::time::sleep(Duration::from_secs(args.poll)).await;
    };
    println!("receipt {}", consolidation.receipt().cid());

    // Reconcile, and delete the batch only on a match.
    let record = journal.batch(&batch.cid).ok_or("batch vanished")?;
    let reconciliation = reconcile(&record, &consolidation);
    println!(
        "expected {} bytes, tracker reported {:?}: {}",
        reconciliation.expected_total, reconciliation.reported_total, reconciliation.verdict
    );
    for rejected in &reconciliation.rejected {
        println!(
            "  rejected {} ({} bytes): {}: {}",
            rejected.receipt,
            rejected.bytes.map_or("?".into(), |b| b.to_string()),
            rejected.name,
            rejected.message
        );
    }
    match journal.settle(&reconciliation)? {
        Settlement::Removed => {
            println!("settled: batch deleted");
            Ok(())
        }
        other => {
            println!("kept: {other:?}");
            std::process::exit(1)
        }
    }
}

/// `PUT <tracker>/admin/spaces/<space>`: registers `space`, provided by the
/// tracker itself. Failing only warns: the tracker may know it already.
async fn register_space(tracker_url: &str, space: &ucanto::principal::Did) {
    let url = format!("{}/admin/spaces/{space}", tracker_url.trim_end_matches('/'));
    let mut request = reqwest::Client::new().put(url);
    if let Some(token) = admin_token() {
        request = request.bearer_auth(token);
    }
    match request.send().await {
        Ok(response) if response.status().is_success() => println!("space   {space} registered"),
        Ok(response) => println!(
            "space   {space} not registered (HTTP {}): it counts only if the tracker knows it",
            response.status()
        ),
        Err(e) => println!("space   {space} not registered ({e})"),
    }
}

/// The tracker's admin token: `ETRACKER_ADMIN_TOKEN`, else the file
/// `etracker start` keeps it in (`ETRACKER_ADMIN_TOKEN_FILE`, else
/// `$ETRACKER_DATA_DIR/admin.token`, else `etracker-data/admin.token`).
fn admin_token() -> Option<String> {
    if let Some(token) = std::env::var("ETRACKER_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Some(token);
    }
    let file = std::env::var_os("ETRACKER_ADMIN_TOKEN_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("ETRACKER_DATA_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| "etracker-data".into())
                .join("admin.token")
        });
    let token = std::fs::read_to_string(file).ok()?;
    Some(token.trim().to_string()).filter(|t| !t.is_empty())
}

/// The spec's minimum batch size.
fn journal_min() -> u64 {
    etracker_client::journal::MIN_BATCH_BYTES
}
