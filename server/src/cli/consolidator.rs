//! `etracker consolidator`: a consolidator deployed apart from the tracker.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Args;
use etracker_server::consolidator::{router, Consolidator};
use etracker_server::registry::SpacePolicy;
use etracker_server::service::Settings;
use ucanto::cli::{explain, parse_proof, BoxError};
use ucanto::principal::Verifier;

use super::batches::{consolidation, BatchArgs, BillingArgs};
use super::keys::{load_signer, KeyArgs};
use super::serve::{bind, serve};

#[derive(Args)]
pub(crate) struct ConsolidatorArgs {
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
pub(crate) struct TrackerArgs {
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

/// `etracker consolidator`: serves space/egress/consolidate, concluding on
/// the tracker over HTTP.
pub(crate) async fn consolidator(args: ConsolidatorArgs) -> Result<(), BoxError> {
    let tracker = args.tracker.verifier()?;
    let proofs = match &args.proof {
        Some(text) => vec![parse_proof(text).map_err(explain(
            "ETRACKER_CONCLUDE_PROOF is not a delegation",
            "Pass what `etracker delegate <DID> --ability space/egress/conclude` printed.",
        ))?],
        None => Vec::new(),
    };
    let mut settings = Settings::default();
    consolidation(
        &args.batches,
        &args.billing,
        &args.key.data_dir,
        &mut settings,
    )?;
    let signer = load_signer(&args.key)?;
    // Its own registry when it has one (dynamodb); otherwise every space,
    // the tracker judging them again at conclude.
    let spaces = match settings.space_registry {
        Some(registry) => SpacePolicy::Known {
            providers: settings
                .known_providers
                .into_iter()
                .chain([tracker.did().clone()])
                .collect(),
            registry,
        },
        None => SpacePolicy::Any,
    };
    let connection =
        ucanto::client::Connection::http(tracker.clone(), args.tracker.tracker_url.clone());
    let service = Arc::new(
        Consolidator::builder(signer.clone(), tracker, connection)
            .limits(settings.limits)
            .authorities(settings.authorities)
            .conclude_proofs(proofs)
            .billing(spaces, settings.non_billable_actors.into_iter().collect())
            .build(),
    );
    let listener = bind(args.listen).await?;
    let app = router(service, 64 * 1024 * 1024);
    serve(listener, app, signer.did(), None, |address| {
        tracing::info!(did = %signer.did(), %address, tracker = %args.tracker.tracker_url, "consolidator listening");
    })
    .await
}
