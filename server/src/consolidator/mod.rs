//! The consolidator: runs `space/egress/consolidate` tasks and concludes them.
//!
//! It is a ucanto service of its own (in-process by default, or deployed
//! apart and reached over HTTP): the scheduler *invokes* each task through a
//! real connection, with the tracker's lease on it (see [`lease`]: a task
//! is public, so it runs only under a lease), the dispatcher validates it
//! and calls [`Consolidator`]'s handler, which
//! 1. fetches the batch from the node's endpoint, streaming it to a scratch
//!    file with a size limit and a timeout, hashing as it goes;
//! 2. refuses the batch unless its bytes hash to the batch CID (codec car,
//!    sha2-256) and its size is within the limits;
//! 3. reads it block by block and checks every receipt archive: archive
//!    CID, receipt signature by the node, that it ran a
//!    `space/content/retrieve` addressed to the node, that the space
//!    authorized it (validator over the invocation's proofs, judged at the time
//!    of the retrieval), a sane range; what passes is spilled to a scratch
//!    file in sorted runs, so memory does not grow with the batch;
//! 4. merges the runs, so that a retrieval repeated anywhere in the batch
//!    counts once, drops those an earlier batch counted, and writes the
//!    tally chunk by chunk to another scratch file;
//! 5. answers `{totalEgress, errors}`; bad receipts are listed, not counted.
//!
//! The dispatcher signs the receipt; the server's after-receipt hook
//! (`ServerBuilder::after`), handed the tally as the handler's effect, then
//! invokes `space/egress/conclude` on the tracker with both before the answer
//! goes out. It is served like any ucanto service (`Consolidator::server`,
//! the core transport or an in-process channel). Transient
//! failures (network, 5xx, timeouts) give an `EgressConsolidateRetry` answer
//! that is never concluded, so the record stays pending and the scheduler
//! retries with backoff — until the give-up age, after which the failure is
//! final (`EgressConsolidateError`).
//!
//! # Layout
//! This module builds the service and serves it; `task` runs one
//! consolidate task (fetch, check, count, settle, answer); `fetch` holds the
//! batch download's HTTP client, address filter and spool files; `check` the
//! rules a receipt must pass and the bounded `errors[]`; `spill` the sorted
//! runs of counted retrievals; `deliver` invokes `space/egress/conclude` with
//! the signed receipt and the tally, a page of chunks at a time, and when
//! the tracker refuses part of it (retrievals another batch counted
//! meanwhile, spaces it does not bill) settles the batch again without them
//! in the same run; `lease` the lease a task runs under; `nodes` the nodes
//! the tracker knows.
//!
//! # Who pays, and for when
//! Each retrieval is judged by [`etracker_capabilities::payable`] (the rules
//! a node can also ask before serving): its chain must have been valid all
//! at once at some second no later than the batch's track, which the lease
//! names; it is dated at the latest such second and its bytes count for
//! that UTC day; it must be fresh (`ETRACKER_MAX_RETRIEVAL_AGE`) and bounded
//! in time; a chain through the serving node is `SelfAuthorized`, one
//! through a non-billable actor or another node the tracker knows
//! (`nodes`) is `NonBillable`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cid::Cid;
use etracker_capabilities::consolidate::consolidate_builder;
use etracker_capabilities::{typed, Ability, Consolidate, Invoked};
use ucanto::client::Connection;
use ucanto::dag::CodecError;
use ucanto::principal::{Did, Signer, Verifier};
use ucanto::receipt::Receipt;
use ucanto::server::{error_name, HandlerError, Server};
use ucanto::ucan::{Delegation, Invocation};

mod check;
mod deliver;
mod fetch;
pub mod lease;
mod nodes;
mod spill;
mod task;

pub use check::{
    unlisted_counts, CHECK_CHUNK, CHECK_CHUNK_BYTES, DUPLICATE_RECEIPT, LISTED_MESSAGE_BUDGET,
    MAX_LISTED_ERRORS, NON_CANONICAL, TOO_MANY_ERRORS,
};
use fetch::batch_client;
pub use fetch::remove_stale_spool_files;

use crate::registry::SpacePolicy;
use crate::store::Store;
use crate::tally::Tally;

/// Default largest retrieval: 4 GiB, the largest blob (shard) a space stores.
pub const DEFAULT_MAX_RETRIEVAL_BYTES: u64 = 4 << 30;

/// Error name of a consolidation postponed because the node failed
/// (unreachable, 5xx, cut off): retried until the give-up age.
pub const RETRY: &str = "EgressConsolidateRetry";
/// Error name of a consolidation postponed by a failure on our side (disk,
/// store, a crashed task, the task already running): retried, never final.
pub const RETRY_INTERNAL: &str = "EgressConsolidateInternalRetry";

/// Default [`BatchLimits::min_fetch_rate`]: 64 KiB/s, a rate any node
/// serving retrievals exceeds by far (the smallest batch, 10 MiB, would take
/// 160 s at it), while a node that drips its batch is cut off after the
/// grace instead of holding a download for the whole fetch timeout.
pub const DEFAULT_MIN_FETCH_RATE: u64 = 64 * 1024;

/// Limits and timings of batch processing.
#[derive(Clone, Debug)]
pub struct BatchLimits {
    /// Smallest acceptable batch (bytes).
    pub min_size: u64,
    /// Largest acceptable batch (bytes).
    pub max_size: u64,
    /// Timeout of the whole download.
    pub fetch_timeout: Duration,
    /// Slowest download kept up (bytes per second, averaged from the
    /// request): once `min_fetch_rate_grace` has passed, a download that
    /// has received less than this rate times the time elapsed is cut off,
    /// a failure of the node retried as any other. 0: no minimum.
    pub min_fetch_rate: u64,
    /// How long a download may go below `min_fetch_rate` at its start
    /// (connecting, the node finding the batch).
    pub min_fetch_rate_grace: Duration,
    /// After this many seconds since tracking, a failing fetch becomes final.
    pub give_up_after: u64,
    /// Where batches are spooled while being checked.
    pub scratch_dir: PathBuf,
    /// Largest range one retrieval may claim (bytes); a bigger one is an
    /// `InvalidRange`, whatever the client signed.
    pub max_retrieval_bytes: u64,
    /// The freshness age (seconds): a retrieval dated earlier than its
    /// batch's track minus this is a `StaleRetrieval` (see
    /// [`etracker_capabilities::payable`]).
    pub max_retrieval_age: u64,
    /// Fetch batches from loopback, private and link-local addresses too.
    /// Off by default: a node must not make the tracker reach into its own
    /// network (cloud metadata, admin ports).
    pub allow_private_endpoints: bool,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            min_size: 10 * 1024 * 1024,
            max_size: 1024 * 1024 * 1024,
            fetch_timeout: Duration::from_secs(300),
            min_fetch_rate: DEFAULT_MIN_FETCH_RATE,
            min_fetch_rate_grace: Duration::from_secs(10),
            give_up_after: 48 * 3600,
            scratch_dir: std::env::temp_dir(),
            max_retrieval_bytes: DEFAULT_MAX_RETRIEVAL_BYTES,
            max_retrieval_age: etracker_capabilities::payable::DEFAULT_MAX_AGE,
            allow_private_endpoints: false,
        }
    }
}

/// The consolidate task for `track`: the deterministic invocation the tracker
/// forks (iss = aud = with = tracker, no expiry, no nonce), with the track
/// invocation attached so a consolidator needs nothing else to run it.
pub fn consolidate_task(
    tracker: &dyn Signer,
    track: &Invocation,
) -> Result<Invocation, CodecError> {
    consolidate_builder(tracker, track)
        .attach(track.block().clone())
        .build()
}

/// The task for `track` as the scheduler sends it, and the block of its
/// lease (see [`lease`]) to carry in the same message: the lease cannot be
/// part of the task, whose CID nodes know.
pub fn leased_task(
    tracker: &dyn Signer,
    track: &Invocation,
    consolidator: &Did,
    lease: &crate::store::Lease,
    tracked: u64,
) -> Result<(Invocation, ucanto::dag::Block), CodecError> {
    let lease = lease::grant(
        tracker,
        consolidator,
        track.cid(),
        tracked,
        lease.until,
        &lease.owner,
    )?;
    Ok((consolidate_task(tracker, track)?, lease.block().clone()))
}

/// `receipt` without the blocks of the invocation it ran (a conclude page
/// carries tally chunks): what a response reports of a follow-up.
fn receipt_alone(receipt: Receipt) -> Receipt {
    let blocks: ucanto::dag::BlockStore = std::iter::once(receipt.block().clone()).collect();
    Receipt::from_blocks(&receipt.cid(), Arc::new(blocks)).unwrap_or(receipt)
}

/// What the tracker answered to the conclusion a task's run led to, from
/// the follow-ups the consolidator reported with the task's receipt: `None`
/// when there was none (a retry), else the tracker's signed answer, read.
pub fn concluded(
    message: &ucanto::message::AgentMessage,
    task: &Cid,
    tracker: &dyn Verifier,
) -> Option<Result<(), etracker_capabilities::conclude::ConcludeError>> {
    use etracker_capabilities::Outcome;
    message
        .report()
        .keys()
        .filter_map(|ran| ran.parse::<Cid>().ok())
        .filter(|ran| ran != task)
        .filter_map(|ran| message.receipt_for(&ran)?.ok())
        .find(|answer| answer.verify_signature(tracker))
        .map(|answer| match answer.out() {
            Ok(_) => Ok(()),
            Err(error) => Err(
                etracker_capabilities::conclude::ConcludeError::from_ipld(error).unwrap_or_else(
                    |_| {
                        etracker_capabilities::conclude::ConcludeError::new(
                            ucanto::dag_json::to_string(error).unwrap_or_default(),
                        )
                    },
                ),
            ),
        })
}

/// Error name of a task refused because the tracker holds no lease on it
/// now (replayed, or its lease ended): nothing is downloaded.
pub const NOT_LEASED: &str = "TaskNotLeased";

/// What a failed batch download or check means.
#[derive(Debug)]
enum BatchFailure {
    /// The node's side failed (unreachable, 5xx, cut off): try again later,
    /// and give up once the node has failed for the give-up age.
    Transient(String),
    /// Our side failed (disk, store, a crashed task): try again later, never
    /// final, since the node did nothing wrong.
    Internal(String),
    /// Final: the batch can never be counted.
    Permanent(String),
}

impl BatchFailure {
    fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        BatchFailure::Internal(format!("{context}: {error}"))
    }
}

/// The consolidator sub-service: a ucanto [`Server`] whose consolidate
/// handler counts a batch, and whose after-receipt hook delivers each final
/// receipt to the tracker.
pub struct Consolidator {
    server: Arc<Server>,
}

/// Delivers final consolidate receipts to the tracker by invoking
/// `space/egress/conclude` (the server's after-receipt hook).
struct Delivery {
    signer: Arc<dyn Signer>,
    tracker: Did,
    tracker_connection: Connection,
    conclude_proofs: Vec<Delegation>,
    paging: TallyPaging,
    /// What settles a batch again after a refusal.
    state: Arc<HandlerState>,
}

/// What the consolidate handler hands to the delivery: the batch and its
/// tally (none when nothing counted), for a receipt that is final, and
/// what it takes to run the batch again (none for a final failure).
struct Concludable {
    batch: Cid,
    tally: Option<Tally>,
    again: Option<Again>,
}

/// Where a task's batch comes from: its node, endpoint and track time.
struct Again {
    node: Did,
    url: String,
    tracked: u64,
}

/// What the tracker refused of a conclusion, read from its typed answer:
/// retrievals another batch counted meanwhile (sorted keys: the first 16
/// bytes of their payload ids' digests) and spaces it does not bill. It is a value of one run of a
/// task, passed from the delivery to settling the batch again; nothing is
/// remembered between runs (a later run reads the store, or is told again).
#[derive(Clone, Debug, Default)]
struct Refused {
    retrievals: Vec<[u8; 16]>,
    spaces: HashSet<Did>,
}

/// How a tally is cut for `space/egress/conclude`.
#[derive(Clone, Copy, Debug)]
pub struct TallyPaging {
    /// Counted retrievals per chunk.
    pub receipts_per_chunk: usize,
    /// Chunks per conclude invocation (at least 2: the first chunk travels
    /// with every page).
    pub chunks_per_page: usize,
}

impl Default for TallyPaging {
    /// 4096 retrievals (~150 KiB) a chunk, 2 chunks (~300 KiB) a page: far
    /// under the default body limits, and small enough that handling a page
    /// takes little memory on either side (with 4 a page, the allocator
    /// held ~2 MiB more after a 1 GiB batch).
    fn default() -> Self {
        TallyPaging {
            receipts_per_chunk: crate::tally::CHUNK_RECEIPTS,
            chunks_per_page: 2,
        }
    }
}

struct HandlerState {
    store: Option<Arc<dyn Store>>,
    limits: BatchLimits,
    http: reqwest::Client,
    /// Who pays, and for when: what a retrieval must pass.
    rules: etracker_capabilities::payable::Rules,
    /// The nodes the tracker knows (through the store, when it has one).
    known_nodes: Arc<nodes::KnownNodes>,
    /// This consolidator's DID: the audience a task's lease must name.
    me: Did,
    /// Tasks running now: a task asked for again meanwhile (a repeated or
    /// concurrent request) is not run a second time.
    running: Mutex<HashSet<Cid>>,
    /// Who may invoke consolidate: the tracker.
    tracker: Arc<dyn Verifier>,
    /// Which spaces count.
    spaces: SpacePolicy,
    /// How tallies are cut into chunks.
    paging: TallyPaging,
}

/// Removes a task from [`HandlerState::running`] when its run ends, however.
struct RunningTask<'a> {
    running: &'a Mutex<HashSet<Cid>>,
    task: Cid,
}

impl Drop for RunningTask<'_> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&self.task);
        }
    }
}

/// Builds a [`Consolidator`]: who it is, whose tasks it runs and where it
/// concludes them, then what it may read and how it counts.
pub struct ConsolidatorBuilder {
    signer: Arc<dyn Signer>,
    tracker: Arc<dyn Verifier>,
    tracker_connection: Connection,
    store: Option<Arc<dyn Store>>,
    limits: BatchLimits,
    authorities: Vec<Arc<dyn Verifier>>,
    conclude_proofs: Vec<Delegation>,
    spaces: SpacePolicy,
    non_billable: HashSet<Did>,
    paging: TallyPaging,
}

impl ConsolidatorBuilder {
    /// The tracker's store (read only here): the age of a record for the
    /// give-up rule, and which retrievals were counted before. Without it
    /// (deployed apart) the tracker's refusals teach the latter.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Batch limits and timings (default [`BatchLimits::default`]).
    pub fn limits(mut self, limits: BatchLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The principals whose `ucan/attest` count when validating retrievals.
    pub fn authorities(mut self, authorities: Vec<Arc<dyn Verifier>>) -> Self {
        self.authorities = authorities;
        self
    }

    /// Delegations authorizing the signer to conclude on the tracker, when it
    /// is not the tracker itself.
    pub fn conclude_proofs(mut self, proofs: Vec<Delegation>) -> Self {
        self.conclude_proofs = proofs;
        self
    }

    /// Counts only the spaces `spaces` says are billable (every one by
    /// default, the tracker's conclude judging them again), and records the
    /// retrievals of `non_billable` invokers apart.
    pub fn billing(mut self, spaces: SpacePolicy, non_billable: HashSet<Did>) -> Self {
        self.spaces = spaces;
        self.non_billable = non_billable;
        self
    }

    /// Cuts tallies as `paging` says.
    pub fn paging(mut self, paging: TallyPaging) -> Self {
        self.paging = paging;
        self
    }

    /// The consolidator.
    pub fn build(self) -> Consolidator {
        remove_stale_spool_files(&self.limits.scratch_dir);
        let tracker = self.tracker;
        let rules = etracker_capabilities::payable::Rules {
            tracker: tracker.clone(),
            authorities: self.authorities,
            non_billable: Arc::new(self.non_billable),
            max_age: self.limits.max_retrieval_age,
            conclude_within: self.limits.give_up_after,
        };
        let state = Arc::new(HandlerState {
            known_nodes: Arc::new(nodes::KnownNodes::new(self.store.clone())),
            store: self.store,
            http: batch_client(&self.limits),
            limits: self.limits,
            rules,
            me: self.signer.did().clone(),
            running: Mutex::new(HashSet::new()),
            tracker: tracker.clone(),
            spaces: self.spaces,
            paging: self.paging,
        });
        let tracker_did = tracker.did().clone();
        let delivery = Arc::new(Delivery {
            signer: self.signer.clone(),
            tracker: tracker_did.clone(),
            tracker_connection: self.tracker_connection,
            conclude_proofs: self.conclude_proofs,
            paging: self.paging,
            state: state.clone(),
        });
        let handler_state = state.clone();
        let server = Server::builder(self.signer)
            .audience(tracker_did.clone())
            .validator(|config| config.authority = tracker)
            .provide_on(
                &tracker_did,
                Consolidate::parser(),
                typed(move |invoked: Invoked<Consolidate>| {
                    let state = handler_state.clone();
                    async move { Ok::<_, HandlerError>(state.consolidate(invoked).await) }
                }),
            )
            .after(Arc::new(move |task, receipt, effect| {
                let delivery = delivery.clone();
                Box::pin(async move {
                    let Some(done) = effect.as_ref().and_then(|e| e.get::<Concludable>()) else {
                        return Vec::new();
                    };
                    // The tracker's answer goes back with the task's receipt:
                    // how the conclusion went reaches the scheduler as a
                    // receipt the tracker signed, not through the store.
                    let answer = delivery.conclude_run(&task, receipt, done).await;
                    answer.map(receipt_alone).into_iter().collect()
                })
            }))
            .build();
        Consolidator {
            server: Arc::new(server),
        }
    }
}

impl Consolidator {
    /// Starts a consolidator signing as `signer`, running tasks of the
    /// tracker verified by `tracker` and concluding them over
    /// `tracker_connection`.
    pub fn builder(
        signer: Arc<dyn Signer>,
        tracker: Arc<dyn Verifier>,
        tracker_connection: Connection,
    ) -> ConsolidatorBuilder {
        ConsolidatorBuilder {
            signer,
            tracker,
            tracker_connection,
            store: None,
            limits: BatchLimits::default(),
            authorities: Vec::new(),
            conclude_proofs: Vec::new(),
            spaces: SpacePolicy::Any,
            non_billable: HashSet::new(),
            paging: TallyPaging::default(),
        }
    }

    /// The ucanto server: serve it with [`ucanto::transport::router_with`]
    /// or reach it in process with [`ucanto::client::ServerChannel`].
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }
}

/// An HTTP router serving a separately deployed consolidator at `POST /`.
///
/// A task runs while its request is open (the batch download alone may take
/// the fetch timeout), so requests may last an hour; only the tracker can
/// start one, and a task runs once at a time.
pub fn router(consolidator: Arc<Consolidator>, body_limit: usize) -> axum::Router {
    let limits = ucanto::transport::HttpLimits {
        body_limit,
        timeout: TASK_TIMEOUT,
        ..Default::default()
    };
    router_with(consolidator, limits)
}

/// Longest a consolidate request to a consolidator deployed apart may take.
pub const TASK_TIMEOUT: Duration = Duration::from_secs(3600);

/// An HTTP router serving a separately deployed consolidator at `POST /`
/// within `limits`: the ucanto transport, as for any service.
pub fn router_with(
    consolidator: Arc<Consolidator>,
    limits: ucanto::transport::HttpLimits,
) -> axum::Router {
    ucanto::transport::router_with(consolidator.server().clone(), limits)
}

pub use etracker_capabilities::consolidate::NON_BILLABLE;
/// Error name of a retrieval from a space no known provider provisions.
pub const UNKNOWN_SPACE: &str = "UnknownSpace";

/// Whether a consolidate receipt says "try again later".
pub fn is_retry(receipt: &Receipt) -> bool {
    matches!(error_name(receipt.out()), Some(RETRY | RETRY_INTERNAL))
}

/// Whether a consolidate receipt says "try again later" because the node failed.
pub fn is_node_failure(receipt: &Receipt) -> bool {
    error_name(receipt.out()) == Some(RETRY)
}
