//! Egress tracking for Piri-compatible storage nodes.
//!
//! A storage node signs a receipt for every `space/content/retrieve` it
//! serves. This crate journals those receipts into batches in exactly
//! Piri's format, serves the closed batches to the tracker, reports them with
//! `space/egress/track`, polls for the tracker's consolidate receipt and
//! deletes a batch only once that receipt is verified and matches the
//! journal's own count.
//!
//! # Ten lines in a node
//! ```no_run
//! # use std::sync::Arc;
//! # use etracker_client::{parse_proof, verifier, BatchJournal, EgressClient, JournalConfig, Reporter};
//! # use ucanto::principal::Ed25519Signer;
//! # async fn node(receipt: ucanto::receipt::Receipt) -> Result<(), Box<dyn std::error::Error>> {
//! # const TRACKER_KEY: &str = "did:key:z6Mkt6316e2PN3mZdB6N9CrzomJYUd1s5yBZi1XYHmwT9TUP";
//! let node = Arc::new(Ed25519Signer::parse(&std::env::var("NODE_KEY")?)?); // the node's "Mg…" key
//! let journal = BatchJournal::open("/var/lib/node/egress", JournalConfig::default())?;
//! let tracker = verifier("did:web:tracker.example", Some(TRACKER_KEY))?;
//! let client = EgressClient::builder(node, tracker, "https://tracker.example")
//!     .proof(parse_proof(&std::env::var("TRACKER_PROOF")?)?) // the tracker → node delegation
//!     .endpoint("https://node.example/receipts/{cid}")
//!     .build()?;
//! Reporter::new(journal.clone(), client).spawn(); // rotate, track, poll, reconcile, delete
//! let app = axum::Router::new().merge(etracker_client::router(journal.clone())); // + your routes
//! // …and for every retrieval served, journal its signed receipt:
//! journal.append(&receipt)?;
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! # Before serving: will anyone pay for it?
//! [`will_be_paid`] judges an incoming `space/content/retrieve` invocation by
//! the tracker's own rules ([`payable`], the code the tracker runs on every
//! receipt): that the space authorized it through its chain, that the chain
//! is valid now and expires within the freshness age, that it does not pass
//! through this node, and whether a non-billable actor is in it. A node can
//! refuse, or serve unpaid, what the tracker will not count.
//! ```
//! # use std::sync::Arc;
//! # use etracker_client::payable::{Refusal, Rules};
//! # use ucanto::principal::{Ed25519Signer, Signer};
//! # use ucanto::ucan::{now, Capability, Delegation};
//! # let (tracker, node) = (Ed25519Signer::from_seed([4; 32]), Ed25519Signer::from_seed([5; 32]));
//! # let space = Ed25519Signer::from_seed([1; 32]);
//! let rules = Rules::new(tracker.verifier()); // + authorities, non-billable actors, max age
//! // A node retrieving from itself with the space's grant: it would not be paid.
//! let grant = Delegation::builder(&space, node.did().clone())
//!     .capability(Capability::new("space/content/retrieve", space.did().as_str()))
//!     .expiration(now() + 3600)
//!     .build()
//!     .unwrap();
//! # let nb = ucanto::dag::IpldMap::from([
//! #     ("blob".to_string(), ucanto::dag::Ipld::Map(ucanto::dag::IpldMap::from([(
//! #         "digest".to_string(),
//! #         ucanto::dag::Ipld::Bytes([[0x12, 0x20].as_slice(), &[7; 32]].concat()),
//! #     )]))),
//! #     ("range".to_string(), ucanto::dag::Ipld::List(vec![0.into(), 99.into()])),
//! # ]);
//! let retrieval = Delegation::builder(&node, node.did().clone())
//!     .capability(Capability::new("space/content/retrieve", space.did().as_str()).with_nb(nb))
//!     .expiration(now() + 30)
//!     .proof(grant)
//!     .build()
//!     .unwrap();
//! let refused = etracker_client::will_be_paid(&retrieval, node.did(), &rules).unwrap_err();
//! assert!(matches!(refused, Refusal::SelfAuthorized { .. }));
//! ```
//! What only the tracker's registry knows is left in the answer: whether a
//! known provider provisions [`payable::Judgement::space`], and whether any
//! of [`payable::Judgement::chain`] is another node (replication, unpaid).
//!
//! # Layout
//! One batch, walked through the modules:
//! 1. [`journal`]: [`BatchJournal::append`] writes each receipt's archive as a
//!    section of the open batch file ([`batch`] has the format) and rotates
//!    the batch by size or age, naming it by its CID; what it knows of each
//!    batch and receipt is a [`BatchRecord`] of [`ReceiptRecord`]s
//!    (module `record`), and on open it repairs what a crash left;
//! 2. [`http`]: [`router`] serves closed batches at `GET /receipts/{cid}`;
//! 3. [`client`]: [`EgressClient::track`] invokes `space/egress/track` with
//!    that endpoint and checks the receipt forks one consolidate task;
//!    [`EgressClient::consolidation`] fetches `GET /receipts/{task}` from the
//!    tracker and verifies the receipt ([`Consolidation`]);
//! 4. [`reconcile`](mod@reconcile): [`reconcile()`] compares it with the
//!    journal's record of the batch; [`BatchJournal::settle`] deletes the
//!    batch on a match and keeps it, disputed, otherwise;
//! 5. [`reporter`]: [`Reporter`] runs steps 1–4 on a timer.
//!
//! Modules depend on each other one way only: `batch` on `record`,
//! `reconcile` on `client` and `record`, `journal` on all four, and
//! `http` and `reporter` on top. The `etracker-node` binary's [`cli`]
//! names the tracker; how a key, a delegation or an error reads on a command
//! line is the core's (`ucanto::cli`), which the tracker's `etracker` uses
//! too: the tracker links nothing of this crate.
//!
//! # Running it
//! `cargo run -p etracker-client --example node` plays a node against a
//! running tracker end to end (see `examples/node.rs`).

use ucanto::principal::Did;

pub mod batch;
pub mod cli;
pub mod client;
pub mod http;
pub mod journal;
pub mod reconcile;
mod record;
pub mod reporter;

pub use client::{
    BuildError, Consolidation, ConsolidationError, EgressClient, EgressClientBuilder, Failure,
    TrackError, Tracked,
};
pub use http::router;

/// The tracker's rules of who pays and for when (see [`will_be_paid`]).
pub use etracker_capabilities::payable;

/// Whether the tracker will pay this node for serving `retrieval` now, by
/// the tracker's own rules ([`payable::judge`], as if its batch were
/// tracked now): the judgement, or why not.
pub fn will_be_paid(
    retrieval: &ucanto::ucan::Invocation,
    node: &Did,
    rules: &payable::Rules,
) -> Result<payable::Judgement, payable::Refusal> {
    let when = payable::When::now();
    payable::judge(retrieval, node, &when, rules, rules.validator())
}
pub use journal::{
    Appended, BatchJournal, BatchRecord, BatchState, CurrentBatch, JournalConfig, JournalError,
    ReceiptRecord, Recovery, Settlement,
};
pub use reconcile::{reconcile, Reconciliation, Rejection, Verdict};
pub use reporter::{Event, Reporter};

pub use ucanto::cli::{parse_proof, verifier, ProofError};
