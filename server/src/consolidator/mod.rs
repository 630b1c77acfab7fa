//! The consolidator: runs `space/egress/consolidate` tasks and concludes them.
//!
//! It is a ucanto service of its own (in-process by default, or deployed
//! apart and reached over HTTP): the scheduler *invokes* each task through a
//! real connection, the dispatcher validates it and calls [`Consolidator`]'s
//! handler, which
//! 1. fetches the batch from the node's endpoint, streaming it to a scratch
//!    file with a size limit and a timeout, hashing as it goes;
//! 2. refuses the batch unless its bytes hash to the batch CID (codec car,
//!    sha2-256) and its size is within the limits;
//! 3. reads it block by block (bounded memory) and checks every receipt
//!    archive: archive CID, receipt signature by the node, that it ran a
//!    `space/content/retrieve` addressed to the node, that the space
//!    authorized it (validator over the invocation's proofs, judged at the time
//!    of the retrieval), a sane range, and that it was not counted before;
//! 4. answers `{totalEgress, errors}`; bad receipts are listed, not counted.
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
//! This module is the service (task, conclusion, routes); `fetch` holds the
//! batch download's HTTP client, address filter and spool files; `check`
//! the rules a receipt must pass and the bounded `errors[]`.
//!
//! # Day of a retrieval
//! A retrieve invocation carries no timestamp, only its validity window, and
//! a node can only serve it while it is valid. The retrieval is dated at
//! `exp − 1` (the last second it was valid) or, without `exp`, at its `nbf`,
//! never later than the moment of consolidation; its bytes count for that UTC
//! day, and its authorization is judged at that time.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cid::Cid;
use etracker_capabilities::consolidate::{
    consolidate_builder, ConsolidateError, ConsolidateOk, ReceiptError,
};
use etracker_capabilities::{typed, Ability, Consolidate, Invoked, Outcome, Track};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use ucanto::car::{CarReader, Limits};
use ucanto::client::Connection;
use ucanto::dag::{Block, CodecError, Ipld, CAR, SHA2_256};
use ucanto::principal::{verifier_for, Did, Signer, Verifier};
use ucanto::receipt::Receipt;
use ucanto::server::{error_name, HandlerError, Response, Server};
use ucanto::ucan::{now, Delegation, Invocation, Proof};
use ucanto::validator::SignatureCache;

mod check;
mod fetch;

use check::{
    Checked, Checks, Counted, Rejections, BATCH_SIGNATURE_ALLOWANCE, CHECK_CHUNK,
    SIGNATURES_PER_RECEIPT,
};
pub use check::{DUPLICATE_RECEIPT, MAX_LISTED_ERRORS, NON_CANONICAL, TOO_MANY_ERRORS};
pub use fetch::remove_stale_spool_files;
use fetch::{batch_client, is_public, literal_ip, spool_path};

use crate::handlers::conclude::TALLY_INCOMPLETE;
use crate::registry::{judge_all, Billing, SpacePolicy};
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

/// Limits and timings of batch processing.
#[derive(Clone, Debug)]
pub struct BatchLimits {
    /// Smallest acceptable batch (bytes).
    pub min_size: u64,
    /// Largest acceptable batch (bytes).
    pub max_size: u64,
    /// Timeout of the whole download.
    pub fetch_timeout: Duration,
    /// After this many seconds since tracking, a failing fetch becomes final.
    pub give_up_after: u64,
    /// Where batches are spooled while being checked.
    pub scratch_dir: PathBuf,
    /// Largest range one retrieval may claim (bytes); a bigger one is an
    /// `InvalidRange`, whatever the client signed.
    pub max_retrieval_bytes: u64,
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
            give_up_after: 48 * 3600,
            scratch_dir: std::env::temp_dir(),
            max_retrieval_bytes: DEFAULT_MAX_RETRIEVAL_BYTES,
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
    /// Where refusals teach what the tracker knows.
    state: Arc<HandlerState>,
}

/// What the consolidate handler hands to the delivery: the batch and its
/// tally, for a receipt that is final.
struct Concludable {
    batch: Cid,
    tally: Tally,
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
    /// 4096 retrievals (~150 KiB) a chunk, 16 chunks (~2.5 MiB) a page: far
    /// under the default body limits.
    fn default() -> Self {
        TallyPaging {
            receipts_per_chunk: crate::tally::CHUNK_RECEIPTS,
            chunks_per_page: 16,
        }
    }
}

struct HandlerState {
    store: Option<Arc<dyn Store>>,
    limits: BatchLimits,
    authorities: Vec<Arc<dyn Verifier>>,
    http: reqwest::Client,
    /// Retrievals the tracker said were counted by another batch (learned from
    /// refused conclusions): what a consolidator without the store knows.
    known_counted: Mutex<HashSet<Cid>>,
    /// Tasks running now: a task asked for again meanwhile (a repeated or
    /// concurrent request) is not run a second time.
    running: Mutex<HashSet<Cid>>,
    /// Who may invoke consolidate: the tracker.
    tracker: Arc<dyn Verifier>,
    /// Which spaces count.
    spaces: SpacePolicy,
    /// The invokers whose retrievals are billed to no one.
    non_billable: Arc<HashSet<Did>>,
    /// Spaces the tracker refused as unknown (learned from refused
    /// conclusions): what a consolidator with another registry learns.
    known_unbillable: Mutex<HashSet<Did>>,
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
        let state = Arc::new(HandlerState {
            store: self.store,
            http: batch_client(&self.limits),
            limits: self.limits,
            authorities: self.authorities,
            known_counted: Mutex::new(HashSet::new()),
            running: Mutex::new(HashSet::new()),
            tracker: tracker.clone(),
            spaces: self.spaces,
            non_billable: Arc::new(self.non_billable),
            known_unbillable: Mutex::new(HashSet::new()),
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
                        return;
                    };
                    if let Err(e) = delivery.conclude(&receipt, done.batch, &done.tally).await {
                        // The record stays pending; the scheduler runs the task again.
                        tracing::warn!(task = %task.cid(), batch = %done.batch, error = %e, "conclude failed");
                    }
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

/// Why the consolidate receipt did not reach the tracker; the record stays
/// pending and the task runs again.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    /// The tally or the conclude invocation could not be encoded.
    #[error("cannot encode conclude: {0}")]
    Encode(#[from] ucanto::dag::CodecError),
    /// The tracker could not be reached, or its answer not read.
    #[error("cannot reach the tracker: {0}")]
    Unreachable(#[from] ucanto::client::ClientError),
    /// The tracker answered with an error (dag-json).
    #[error("tracker refused conclude: {0}")]
    Refused(String),
}

impl Delivery {
    /// Invokes `space/egress/conclude` with `receipt` and `tally`, in pages
    /// of at most `chunks_per_page` tally chunks (each page also carries the
    /// first chunk, which names the batch), so no request outgrows the
    /// tracker's body limit.
    async fn conclude(
        &self,
        receipt: &Receipt,
        batch: Cid,
        tally: &Tally,
    ) -> Result<(), DeliveryError> {
        let paging = self.paging;
        let chunks =
            tally.to_blocks_of(batch, paging.receipts_per_chunk, crate::tally::CHUNK_USAGE)?;
        let nb = etracker_capabilities::conclude::ConcludeNb {
            receipt: receipt.cid(),
            tally: chunks.iter().map(|b| b.cid).collect(),
        };
        let (first, rest) = chunks.split_first().expect("a tally has a chunk");
        let per_page = paging.chunks_per_page.max(2) - 1;
        let pages: Vec<&[Block]> = if rest.is_empty() {
            vec![&[]]
        } else {
            rest.chunks(per_page).collect()
        };
        let last = pages.len() - 1;
        for (i, page) in pages.into_iter().enumerate() {
            let mut builder = Delegation::builder(self.signer.as_ref(), self.tracker.clone())
                .capability(etracker_capabilities::Conclude::capability(
                    &self.tracker,
                    &nb,
                ))
                .attach(receipt.block().clone())
                .attach(first.clone());
            for chunk in page {
                builder = builder.attach(chunk.clone());
            }
            for proof in &self.conclude_proofs {
                builder = builder.proof(Proof::Delegation(proof.clone()));
            }
            let invocation = builder.build()?;
            let answer = self.tracker_connection.invoke(&invocation).await?;
            if i < last && error_name(answer.out()) == Some(TALLY_INCOMPLETE) {
                continue;
            }
            return self.concluded(&answer, receipt, batch, tally);
        }
        unreachable!("a tally has at least one page")
    }

    /// Reads the tracker's answer to the (last) conclude page.
    fn concluded(
        &self,
        answer: &Receipt,
        receipt: &Receipt,
        batch: Cid,
        tally: &Tally,
    ) -> Result<(), DeliveryError> {
        match answer.out() {
            Ok(_) => {
                tracing::info!(%batch, receipt = %receipt.cid(), total = tally.total(), "concluded");
                Ok(())
            }
            Err(error) => {
                // A conflict lists the retrievals counted elsewhere meanwhile;
                // a refusal of spaces, the spaces the tracker does not bill.
                if let Ipld::Map(map) = error {
                    if let Some(Ipld::List(spaces)) = map.get("spaces") {
                        if let Ok(mut known) = self.state.known_unbillable.lock() {
                            known.extend(spaces.iter().filter_map(|s| match s {
                                Ipld::String(did) => Did::parse(did).ok(),
                                _ => None,
                            }));
                        }
                    }
                    if let Some(Ipld::List(receipts)) = map.get("receipts") {
                        if let Ok(mut known) = self.state.known_counted.lock() {
                            known.extend(receipts.iter().filter_map(|r| match r {
                                Ipld::Link(cid) => Some(*cid),
                                _ => None,
                            }));
                        }
                    }
                }
                Err(DeliveryError::Refused(
                    ucanto::dag_json::to_string(error).unwrap_or_default(),
                ))
            }
        }
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

impl HandlerState {
    async fn consolidate(&self, invoked: Invoked<Consolidate>) -> Response {
        let (cause, request) = (invoked.capability.nb.cause, invoked.request);
        let task = request.invocation.cid();
        let failure = |message: String| Response::error(ConsolidateError::new(message).to_ipld());
        // Tasks come from the tracker only: a delegation of consolidate to
        // anyone else would let them make this service download batches.
        if request.invocation.issuer() != self.tracker.did() {
            return Response::failure(
                "Unauthorized",
                format!(
                    "only the tracker {} invokes consolidate, not {}",
                    self.tracker.did(),
                    request.invocation.issuer()
                ),
            );
        }
        let Some(_running) = self.start(task) else {
            return Response::failure(RETRY_INTERNAL, format!("task {task} is already running"));
        };
        let Ok(track) = Delegation::from_blocks(&cause, request.invocation.blocks().clone()) else {
            return failure(format!(
                "the track invocation {cause} is not attached to the task"
            ));
        };
        let track_nb = match track.capabilities() {
            [capability] => match Track::parse(capability) {
                Ok(parsed) => parsed.nb,
                Err(e) => return failure(format!("invalid track invocation: {e}")),
            },
            _ => return failure("the track invocation must have one capability".into()),
        };
        let batch = track_nb.receipts;
        let node = track.issuer().clone();
        match self.process(&node, &batch, &track_nb.url()).await {
            Ok((ok, tally)) => Response::ok(ok.to_ipld()).with_effect(Concludable { batch, tally }),
            Err(BatchFailure::Permanent(message)) => {
                tracing::warn!(%batch, %message, "batch cannot be consolidated");
                failure(message).with_effect(Concludable {
                    batch,
                    tally: Tally::default(),
                })
            }
            Err(BatchFailure::Transient(message)) => {
                // The give-up age counts from the first failed attempt: a
                // batch that waited in the queue has not failed yet.
                let failing_since = self.failing_since(&batch).await;
                if failing_since
                    .is_some_and(|at| now().saturating_sub(at) >= self.limits.give_up_after)
                {
                    let message =
                        format!("gave up after {} s: {message}", self.limits.give_up_after);
                    return failure(message).with_effect(Concludable {
                        batch,
                        tally: Tally::default(),
                    });
                }
                tracing::info!(%batch, %message, "batch unavailable, will retry");
                Response::failure(RETRY, message)
            }
            Err(BatchFailure::Internal(message)) => {
                tracing::error!(%batch, %message, "consolidation failed on our side, will retry");
                Response::failure(RETRY_INTERNAL, message)
            }
        }
    }

    /// Marks `task` running, unless it already is.
    fn start(&self, task: Cid) -> Option<RunningTask<'_>> {
        let mut running = self.running.lock().ok()?;
        running.insert(task).then_some(RunningTask {
            running: &self.running,
            task,
        })
    }

    /// When the batch's first failed attempt was (from the store, so that a
    /// restart or another replica keeps counting).
    async fn failing_since(&self, batch: &Cid) -> Option<u64> {
        let store = self.store.clone()?;
        let batch = *batch;
        tokio::task::spawn_blocking(move || {
            store
                .record(&batch)
                .ok()
                .flatten()
                .and_then(|r| r.first_failure_at)
        })
        .await
        .ok()
        .flatten()
    }

    async fn process(
        &self,
        node: &Did,
        batch: &Cid,
        url: &str,
    ) -> Result<(ConsolidateOk, Tally), BatchFailure> {
        if batch.codec() != CAR || batch.hash().code() != SHA2_256 || batch.hash().size() != 32 {
            return Err(BatchFailure::Permanent(format!(
                "batch CID {batch} is not a sha2-256 CID with codec car (0x0202)"
            )));
        }
        let path = spool_path(&self.limits.scratch_dir, batch);
        let result = async {
            self.download(url, batch, &path).await?;
            self.count(node, &path).await
        }
        .await;
        let _ = tokio::fs::remove_file(&path).await;
        let (rejected, candidates) = result?;
        self.finish(batch, rejected, candidates).await
    }

    /// Streams the batch to `path`, enforcing the size limits and the hash.
    async fn download(&self, url: &str, batch: &Cid, path: &PathBuf) -> Result<(), BatchFailure> {
        let limits = &self.limits;
        let transient =
            |e: &dyn std::fmt::Display| BatchFailure::Transient(format!("fetching {url}: {e}"));
        if !self.limits.allow_private_endpoints {
            if let Some(ip) = literal_ip(url).filter(|ip| !is_public(*ip)) {
                return Err(BatchFailure::Permanent(format!(
                    "endpoint {url} is a non-public address ({ip})"
                )));
            }
        }
        let mut response = self.http.get(url).send().await.map_err(|e| transient(&e))?;
        if !response.status().is_success() {
            return Err(BatchFailure::Transient(format!(
                "fetching {url}: HTTP {}",
                response.status()
            )));
        }
        if let Some(len) = response.content_length() {
            if len > limits.max_size {
                return Err(BatchFailure::Permanent(format!(
                    "batch is {len} bytes, more than the {} allowed",
                    limits.max_size
                )));
            }
        }
        let spool = |e: std::io::Error| BatchFailure::internal("spooling the batch", e);
        let mut file = tokio::fs::File::create(path).await.map_err(spool)?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = response.chunk().await.map_err(|e| transient(&e))? {
            size += chunk.len() as u64;
            if size > limits.max_size {
                return Err(BatchFailure::Permanent(format!(
                    "batch is more than the {} bytes allowed",
                    limits.max_size
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(spool)?;
        }
        file.flush().await.map_err(spool)?;
        if size < limits.min_size {
            return Err(BatchFailure::Permanent(format!(
                "batch is {size} bytes, less than the {} required",
                limits.min_size
            )));
        }
        if hasher.finalize().as_slice() != batch.hash().digest() {
            return Err(BatchFailure::Permanent(format!(
                "the bytes served for {batch} do not hash to its CID"
            )));
        }
        Ok(())
    }

    /// Reads the spooled batch block by block and checks every receipt.
    async fn count(
        &self,
        node: &Did,
        path: &PathBuf,
    ) -> Result<(Rejections, Vec<Counted>), BatchFailure> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| BatchFailure::internal("reading the spooled batch", e))?;
        let limits = Limits {
            max_header_len: 64 * 1024,
            max_block_len: 16 * 1024 * 1024,
        };
        let undecodable = |e: ucanto::car::CarError| {
            BatchFailure::Permanent(format!("batch is not a valid CAR: {e}"))
        };
        let mut reader = CarReader::new(tokio::io::BufReader::new(file), limits)
            .await
            .map_err(undecodable)?;
        let node_verifier =
            verifier_for(node).map_err(|e| BatchFailure::Permanent(format!("node {node}: {e}")))?;
        // A batch's retrievals mostly share their proofs: verify each once,
        // within a budget that grows with the receipts read, so that proofs
        // crafted to be expensive cannot make one batch cost more than a few
        // honest ones.
        let signatures = Arc::new(SignatureCache::with_budget(BATCH_SIGNATURE_ALLOWANCE));
        let checks = Arc::new(Checks {
            max_retrieval: self.limits.max_retrieval_bytes,
            non_billable: self.non_billable.clone(),
            tracker: self.tracker.clone(),
            authorities: self.authorities.clone(),
            signatures: signatures.clone(),
            node: node.clone(),
            node_verifier,
        });
        let mut rejected = Rejections::default();
        let mut counted = Vec::new();
        // Retrievals judged in this batch, and archives already seen: a
        // repeated archive is a duplicate without checking it again.
        let mut seen = HashSet::new();
        let mut seen_archives = HashSet::new();
        let mut chunk = Vec::with_capacity(CHECK_CHUNK);
        loop {
            let next = reader.next_block().await.map_err(undecodable)?;
            let end = next.is_none();
            if let Some((archive, bytes)) = next {
                if seen_archives.insert(archive.hash().digest().to_vec()) {
                    signatures.credit(SIGNATURES_PER_RECEIPT);
                    chunk.push((archive, bytes));
                } else if rejected.lists_next() {
                    let receipt = Receipt::archived_cid(&bytes).unwrap_or(archive);
                    rejected.push(ReceiptError {
                        name: DUPLICATE_RECEIPT.into(),
                        message: format!("receipt {receipt} appears more than once in the batch"),
                        receipt,
                    });
                } else {
                    // Past the bound only the count matters: no need to read it.
                    rejected.count(DUPLICATE_RECEIPT);
                }
            }
            if chunk.len() < CHECK_CHUNK && !end {
                continue;
            }
            // Checking is CPU work (signatures, validation): it runs off the async
            // runtime, on every core, a bounded chunk of archives at a time.
            let archives = std::mem::take(&mut chunk);
            let checks = checks.clone();
            let checked = tokio::task::spawn_blocking(move || checks.check_chunk(&archives))
                .await
                .map_err(|e| BatchFailure::internal("checking receipts", e))?;
            // In batch order: the first copy of a retrieval is judged, later
            // copies (the same receipt, another receipt for the same
            // retrieval, or the retrieval re-encoded) are duplicates.
            for outcome in checked {
                if !seen.insert(outcome.key()) {
                    rejected.push(ReceiptError {
                        name: DUPLICATE_RECEIPT.into(),
                        message: format!(
                            "retrieval {} appears more than once in the batch",
                            outcome.key()
                        ),
                        receipt: outcome.receipt(),
                    });
                    continue;
                }
                match outcome {
                    Checked::Counted(entry) => counted.push(entry),
                    Checked::NoEgress(_) => {}
                    Checked::Rejected(error) => rejected.push(*error),
                }
            }
            if end {
                break;
            }
        }
        Ok((rejected, counted))
    }

    /// Drops retrievals an earlier batch already counted, sets apart those
    /// of non-billable actors and of spaces no known provider provisions,
    /// then totals the rest.
    async fn finish(
        &self,
        batch: &Cid,
        mut rejected: Rejections,
        candidates: Vec<Counted>,
    ) -> Result<(ConsolidateOk, Tally), BatchFailure> {
        let earlier: Vec<Option<Cid>> = match self.store.clone() {
            Some(store) => {
                let cids: Vec<Cid> = candidates.iter().map(|c| c.retrieval).collect();
                tokio::task::spawn_blocking(move || store.counted(&cids))
                    .await
                    .map_err(|e| BatchFailure::internal("reading counted retrievals", e))?
                    .map_err(|e| BatchFailure::internal("reading counted retrievals", e))?
            }
            None => vec![None; candidates.len()],
        };
        let known = self
            .known_counted
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default();
        let mut fresh = Vec::with_capacity(candidates.len());
        for (entry, counted_by) in candidates.into_iter().zip(earlier) {
            let duplicate = match counted_by {
                Some(batch) => Some(format!(
                    "retrieval {} already counted in batch {batch}",
                    entry.retrieval
                )),
                None if known.contains(&entry.retrieval) => Some(format!(
                    "retrieval {} already counted in another batch",
                    entry.retrieval
                )),
                None => None,
            };
            match duplicate {
                Some(message) => rejected.push(ReceiptError {
                    name: DUPLICATE_RECEIPT.into(),
                    message,
                    receipt: entry.receipt,
                }),
                None => fresh.push(entry),
            }
        }
        let spaces = fresh
            .iter()
            .filter(|e| e.billable)
            .map(|e| e.space.clone())
            .collect();
        let verdicts = judge_all(&self.spaces, spaces)
            .await
            .map_err(|e| BatchFailure::internal("looking up spaces", e))?;
        let refused = self
            .known_unbillable
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default();
        let mut tally = Tally::default();
        for entry in fresh {
            if !entry.billable {
                rejected.push(ReceiptError {
                    name: NON_BILLABLE.into(),
                    message: format!(
                        "retrieval {} by a non-billable actor: {} bytes recorded apart, billed to no one",
                        entry.retrieval, entry.bytes
                    ),
                    receipt: entry.receipt,
                });
                tally.add_non_billable(entry.space, entry.day, entry.bytes, entry.retrieval);
                continue;
            }
            let unknown = match verdicts.get(&entry.space) {
                Some(Billing::Unknown(why)) => Some(why.clone()),
                _ if refused.contains(&entry.space) => {
                    Some(format!("the tracker does not bill space {}", entry.space))
                }
                _ => None,
            };
            match unknown {
                Some(message) => rejected.push(ReceiptError {
                    name: UNKNOWN_SPACE.into(),
                    message,
                    receipt: entry.receipt,
                }),
                None => tally.add(entry.space, entry.day, entry.bytes, entry.retrieval),
            }
        }
        let ok = ConsolidateOk {
            total_egress: tally.total(),
            errors: rejected.into_errors(batch),
        };
        Ok((ok, tally))
    }
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
