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
//! The dispatcher signs the receipt; the consolidator then invokes
//! `space/egress/conclude` on the tracker with it and the tally. Transient
//! failures (network, 5xx, timeouts) give an `EgressConsolidateRetry` answer
//! that is never concluded, so the record stays pending and the scheduler
//! retries with backoff — until the give-up age, after which the failure is
//! final (`EgressConsolidateError`).
//!
//! # Day of a retrieval
//! A retrieve invocation carries no timestamp, only its validity window, and
//! a node can only serve it while it is valid. The retrieval is dated at
//! `exp − 1` (the last second it was valid) or, without `exp`, at its `nbf`,
//! never later than the moment of consolidation; its bytes count for that UTC
//! day, and its authorization is judged at that time.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cid::Cid;
use etracker_capabilities::account_egress_get::format_date;
use etracker_capabilities::consolidate::{
    consolidate_builder, ConsolidateError, ConsolidateOk, ReceiptError,
};
use etracker_capabilities::retrieve::{egress_bytes, EgressError};
use etracker_capabilities::{Ability, Consolidate, Outcome, Retrieve, Track};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use ucanto::car::{CarReader, Limits};
use ucanto::client::{Channel, ClientError, Connection};
use ucanto::dag::{Block, CodecError, Ipld, CAR, SHA2_256};
use ucanto::message::AgentMessage;
use ucanto::principal::{verifier_for, Did, Signer, Verifier};
use ucanto::receipt::Receipt;
use ucanto::server::{error_name, BoxFuture, HandlerError, Request, Response, Server};
use ucanto::ucan::{now, Delegation, Invocation, Proof};
use ucanto::validator::{access, SignatureCache, ValidatorConfig};

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

/// One receipt archive that passed every check.
struct Counted {
    receipt: Cid,
    /// The retrieval's identity: the payload id of its retrieve invocation
    /// (what the client signed), the same for every encoding of it, so a
    /// retrieval counts once whatever receipts a node signs for it and
    /// however it re-encodes the invocation.
    retrieval: Cid,
    space: Did,
    day: String,
    bytes: u64,
    /// False when a non-billable actor made the retrieval.
    billable: bool,
}

/// The consolidator sub-service.
pub struct Consolidator {
    signer: Arc<dyn Signer>,
    tracker: Did,
    server: Server,
    state: Arc<HandlerState>,
    tracker_connection: Connection,
    conclude_proofs: Vec<Delegation>,
    paging: TallyPaging,
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
    /// Tallies of finished tasks waiting to be concluded, by task CID.
    tallies: Mutex<HashMap<Cid, (Cid, Tally)>>,
    /// Retrievals the tracker said were counted by another batch (learned from
    /// refused conclusions): what a consolidator without the store knows.
    known_counted: Mutex<HashSet<Cid>>,
    /// Tasks running now: a task asked for again meanwhile (a repeated or
    /// concurrent request) is not run a second time.
    running: Mutex<HashSet<Cid>>,
    /// Who may invoke consolidate: the tracker.
    tracker: Arc<dyn Verifier>,
    /// Which spaces count, and the invokers whose retrievals are billed to
    /// no one (set once, by [`Consolidator::with_billing`]).
    billing: std::sync::RwLock<(SpacePolicy, Arc<HashSet<Did>>)>,
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

impl Consolidator {
    /// A consolidator signing as `signer`, running tasks of the tracker verified by
    /// `tracker` and concluding them over `tracker_connection`.
    ///
    /// `store` (read only here) tells the age of a record, for the give-up
    /// rule, and which receipts were counted before; `authorities` are the
    /// principals whose `ucan/attest` count when validating retrievals;
    /// `conclude_proofs` authorize `signer` to conclude on the tracker when it
    /// is not the tracker itself.
    pub fn new(
        signer: Arc<dyn Signer>,
        tracker: Arc<dyn Verifier>,
        tracker_connection: Connection,
        store: Option<Arc<dyn Store>>,
        limits: BatchLimits,
        authorities: Vec<Arc<dyn Verifier>>,
        conclude_proofs: Vec<Delegation>,
    ) -> Self {
        remove_stale_spool_files(&limits.scratch_dir);
        let state = Arc::new(HandlerState {
            store,
            http: batch_client(&limits),
            limits,
            authorities,
            tallies: Mutex::new(HashMap::new()),
            known_counted: Mutex::new(HashSet::new()),
            running: Mutex::new(HashSet::new()),
            tracker: tracker.clone(),
            billing: std::sync::RwLock::new((SpacePolicy::Any, Arc::new(HashSet::new()))),
            known_unbillable: Mutex::new(HashSet::new()),
        });
        let handler_state = state.clone();
        let tracker_did = tracker.did().clone();
        let server = Server::builder(signer.clone())
            .audience(tracker_did.clone())
            .validator(|config| config.authority = tracker)
            .provide_on(
                &tracker_did,
                Consolidate::parser(),
                move |request: Request| {
                    let state = handler_state.clone();
                    async move { Ok::<_, HandlerError>(state.consolidate(request).await) }
                },
            )
            .build();
        Consolidator {
            signer,
            tracker: tracker_did,
            server,
            state,
            tracker_connection,
            conclude_proofs,
            paging: TallyPaging::default(),
        }
    }

    /// Counts only the spaces `spaces` says are billable (every one by
    /// default, the tracker's conclude checking them again), and records the
    /// retrievals of `non_billable` invokers apart.
    pub fn with_billing(self, spaces: SpacePolicy, non_billable: HashSet<Did>) -> Self {
        if let Ok(mut billing) = self.state.billing.write() {
            *billing = (spaces, Arc::new(non_billable));
        }
        self
    }

    /// Cuts tallies as `paging` says.
    pub fn with_paging(mut self, paging: TallyPaging) -> Self {
        self.paging = paging;
        self
    }

    /// Runs the invocations of `request` and, for each final consolidate
    /// receipt, invokes `space/egress/conclude` on the tracker before answering.
    pub async fn execute(&self, request: &AgentMessage) -> Result<AgentMessage, CodecError> {
        let response = self.server.execute(request).await?;
        for invocation in request.execute() {
            let Some(Ok(receipt)) = response.receipt_for(invocation) else {
                continue;
            };
            let pending = self
                .state
                .tallies
                .lock()
                .map(|mut t| t.remove(invocation))
                .ok()
                .flatten();
            let Some((batch, tally)) = pending else {
                continue;
            };
            if let Err(e) = self.conclude(&receipt, batch, &tally).await {
                // The record stays pending; the scheduler will run the task again.
                tracing::warn!(task = %invocation, %batch, error = %e, "conclude failed");
            }
        }
        Ok(response)
    }

    /// Invokes `space/egress/conclude` with `receipt` and `tally`, in pages
    /// of at most `chunks_per_page` tally chunks (each page also carries the
    /// first chunk, which names the batch), so no request outgrows the
    /// tracker's body limit.
    async fn conclude(&self, receipt: &Receipt, batch: Cid, tally: &Tally) -> Result<(), String> {
        let chunks = tally
            .to_blocks_of(
                batch,
                self.paging.receipts_per_chunk,
                crate::tally::CHUNK_USAGE,
            )
            .map_err(|e| e.to_string())?;
        let nb = etracker_capabilities::conclude::ConcludeNb {
            receipt: receipt.cid(),
            tally: chunks.iter().map(|b| b.cid).collect(),
        };
        let (first, rest) = chunks.split_first().expect("a tally has a chunk");
        let per_page = self.paging.chunks_per_page.max(2) - 1;
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
            let invocation = builder.build().map_err(|e| e.to_string())?;
            let answer = self
                .tracker_connection
                .invoke(&invocation)
                .await
                .map_err(|e| e.to_string())?;
            if i < last && error_name(answer.out()) == Some(TALLY_INCOMPLETE) {
                continue;
            }
            return self.concluded(&answer, receipt, batch, tally);
        }
        Err("no conclude page was sent".into())
    }

    /// Reads the tracker's answer to the (last) conclude page.
    fn concluded(
        &self,
        answer: &Receipt,
        receipt: &Receipt,
        batch: Cid,
        tally: &Tally,
    ) -> Result<(), String> {
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
                Err(format!(
                    "tracker refused conclude: {}",
                    ucanto::dag_json::to_string(error).unwrap_or_default()
                ))
            }
        }
    }
}

/// A channel into an in-process [`Consolidator`], through the CAR codec.
#[derive(Clone)]
pub struct ConsolidatorChannel(pub Arc<Consolidator>);

impl Channel for ConsolidatorChannel {
    fn request(&self, body: Vec<u8>) -> BoxFuture<Result<Vec<u8>, ClientError>> {
        let consolidator = self.0.clone();
        Box::pin(async move {
            let request = AgentMessage::from_car(&body).map_err(|e| ClientError::Status {
                status: 400,
                body: e.to_string(),
            })?;
            let response =
                consolidator
                    .execute(&request)
                    .await
                    .map_err(|e| ClientError::Status {
                        status: 400,
                        body: e.to_string(),
                    })?;
            Ok(response.to_car())
        })
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
/// within `limits`.
pub fn router_with(
    consolidator: Arc<Consolidator>,
    limits: ucanto::transport::HttpLimits,
) -> axum::Router {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{header, HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    async fn handle(
        State(c): State<Arc<Consolidator>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::response::Response {
        if let Err(response) = ucanto::transport::negotiate(&headers) {
            return response;
        }
        let result = match AgentMessage::from_car(&body) {
            Ok(request) => c.execute(&request).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(message) => (
                [(header::CONTENT_TYPE, ucanto::transport::CAR_CONTENT_TYPE)],
                message.to_car(),
            )
                .into_response(),
            Err(e) => (
                StatusCode::BAD_REQUEST,
                format!("Bad request: Malformed payload - {e}"),
            )
                .into_response(),
        }
    }
    ucanto::transport::limit(
        axum::Router::new().route("/", axum::routing::post(handle)),
        limits,
    )
    .with_state(consolidator)
}

impl HandlerState {
    async fn consolidate(&self, request: Request) -> Response {
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
        let cause = match Consolidate::parse(&request.capability) {
            Ok(parsed) => parsed.nb.cause,
            Err(e) => return failure(e.to_string()),
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
            Ok((ok, tally)) => {
                self.stash(task, batch, tally);
                Response::ok(ok.to_ipld())
            }
            Err(BatchFailure::Permanent(message)) => {
                tracing::warn!(%batch, %message, "batch cannot be consolidated");
                self.stash(task, batch, Tally::default());
                failure(message)
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
                    self.stash(task, batch, Tally::default());
                    return failure(message);
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

    /// The invokers whose retrievals are billed to no one.
    fn non_billable(&self) -> Arc<HashSet<Did>> {
        self.billing
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .1
            .clone()
    }

    /// Marks `task` running, unless it already is.
    fn start(&self, task: Cid) -> Option<RunningTask<'_>> {
        let mut running = self.running.lock().ok()?;
        running.insert(task).then_some(RunningTask {
            running: &self.running,
            task,
        })
    }

    fn stash(&self, task: Cid, batch: Cid, tally: Tally) {
        if let Ok(mut tallies) = self.tallies.lock() {
            tallies.insert(task, (batch, tally));
        }
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
        let path = self.limits.scratch_dir.join(format!(
            "{SPOOL_PREFIX}{batch}-{}-{}.car",
            std::process::id(),
            next_spool_id()
        ));
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
            non_billable: self.non_billable(),
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
                        name: "DuplicateReceipt".into(),
                        message: format!("receipt {receipt} appears more than once in the batch"),
                        receipt,
                    });
                } else {
                    // Past the bound only the count matters: no need to read it.
                    rejected.count("DuplicateReceipt");
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
                        name: "DuplicateReceipt".into(),
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
                    name: "DuplicateReceipt".into(),
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
        let policy = self
            .billing
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0
            .clone();
        let verdicts = judge_all(&policy, spaces)
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

/// Error name of a retrieval made by a non-billable actor: counted once,
/// recorded apart, billed to no one.
pub const NON_BILLABLE: &str = "NonBillable";
/// Error name of a retrieval from a space no known provider provisions.
pub const UNKNOWN_SPACE: &str = "UnknownSpace";

/// The HTTP client batches are fetched with: the download timeout and, unless
/// private endpoints are allowed, a resolver and redirect policy that only
/// reach public addresses. Filtering at resolution means a DNS answer that
/// changes between a check and the connection cannot slip through.
fn batch_client(limits: &BatchLimits) -> reqwest::Client {
    // No proxy from the environment: a proxy would fetch on our behalf from
    // wherever it sits, past the address filter below.
    let mut builder = reqwest::Client::builder()
        .timeout(limits.fetch_timeout)
        .no_proxy();
    if !limits.allow_private_endpoints {
        builder =
            builder
                .dns_resolver(Arc::new(PublicOnly))
                .redirect(reqwest::redirect::Policy::custom(|attempt| {
                    let private = attempt
                        .url()
                        .host_str()
                        .and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
                        .is_some_and(|ip| !is_public(ip));
                    if private {
                        attempt.error("redirect to a non-public address")
                    } else if attempt.previous().len() >= 5 {
                        attempt.error("too many redirects")
                    } else {
                        attempt.follow()
                    }
                }));
    }
    builder.build().unwrap_or_default()
}

/// Resolves names to their public addresses only.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addresses.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The IP address of a URL whose host is an IP literal.
fn literal_ip(url: &str) -> Option<IpAddr> {
    let url = reqwest::Url::parse(url).ok()?;
    url.host_str()?.trim_matches(['[', ']']).parse().ok()
}

/// Whether `ip` is a public unicast address (not loopback, private, link-local,
/// shared, documentation, multicast or reserved).
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 198 && (18..20).contains(&b)) // benchmarking (198.18.0.0/15)
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
                || a == 0
                || a >= 240)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                let segments = v6.segments();
                let first = segments[0];
                // NAT64 (64:ff9b::/96, and the local-use 64:ff9b:1::/48) and
                // 6to4 (2002::/16) addresses stand for an IPv4 address that a
                // gateway would reach for us, possibly a private one: refused.
                let translated = segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                    || segments[..3] == [0x64, 0xff9b, 1]
                    || first == 0x2002;
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || translated
                    || (first & 0xfe00) == 0xfc00 // unique local
                    || (first & 0xffc0) == 0xfe80) // link-local
            }
        },
    }
}

/// Archives checked per blocking task.
const CHECK_CHUNK: usize = 512;

/// What checking one archive concluded.
enum Checked {
    Counted(Counted),
    /// A valid receipt of a failed retrieval.
    NoEgress(Cid),
    Rejected(Box<ReceiptError>),
}

impl Checked {
    /// What must appear once per batch: the retrieval for a counted receipt,
    /// the receipt (or archive) otherwise.
    fn key(&self) -> Cid {
        match self {
            Checked::Counted(c) => c.retrieval,
            _ => self.receipt(),
        }
    }

    /// The receipt (the archive, when no receipt could be read).
    fn receipt(&self) -> Cid {
        match self {
            Checked::Counted(c) => c.receipt,
            Checked::NoEgress(cid) => *cid,
            Checked::Rejected(e) => e.receipt,
        }
    }
}

/// Receipt errors of one batch, bounded so that the consolidate receipt
/// stays small whatever the batch holds.
#[derive(Default)]
struct Rejections {
    listed: Vec<ReceiptError>,
    /// Errors past the bound, by name.
    unlisted: std::collections::BTreeMap<String, u64>,
    /// The first receipt not listed.
    first_unlisted: Option<Cid>,
}

impl Rejections {
    /// Whether the next error is listed, or named as the first unlisted one.
    fn lists_next(&self) -> bool {
        self.listed.len() < MAX_LISTED_ERRORS || self.first_unlisted.is_none()
    }

    /// Counts an unlisted error (when [`Rejections::lists_next`] is false).
    fn count(&mut self, name: &str) {
        *self.unlisted.entry(name.to_string()).or_default() += 1;
    }

    fn push(&mut self, error: ReceiptError) {
        if self.listed.len() < MAX_LISTED_ERRORS {
            self.listed.push(error);
        } else {
            self.first_unlisted.get_or_insert(error.receipt);
            *self.unlisted.entry(error.name).or_default() += 1;
        }
    }

    /// `errors[]`: the first [`MAX_LISTED_ERRORS`] errors, then, if there were
    /// more, one `TooManyErrors` entry that counts the rest by name and names
    /// the first of them (or the batch).
    fn into_errors(self, batch: &Cid) -> Vec<ReceiptError> {
        let mut errors = self.listed;
        if !self.unlisted.is_empty() {
            let total: u64 = self.unlisted.values().sum();
            let by_name: Vec<String> = self
                .unlisted
                .iter()
                .map(|(name, n)| format!("{name} ×{n}"))
                .collect();
            errors.push(ReceiptError {
                name: TOO_MANY_ERRORS.into(),
                message: format!(
                    "{total} more receipt(s) not counted and not listed: {}",
                    by_name.join(", ")
                ),
                receipt: self.first_unlisted.unwrap_or(*batch),
            });
        }
        errors
    }
}

/// Most receipt errors listed one by one in a consolidate receipt (~200
/// bytes each): the receipt stays well under the block size any ucanto
/// client reads.
pub const MAX_LISTED_ERRORS: usize = 1000;
/// Name of the last `errors[]` entry when more receipts were rejected than listed.
pub const TOO_MANY_ERRORS: &str = "TooManyErrors";
/// Signature verifications a batch may spend before its first receipt.
const BATCH_SIGNATURE_ALLOWANCE: u64 = 10_000;
/// Signature verifications each receipt read adds to its batch's budget:
/// an honest receipt needs two fresh ones (its own, its invocation's), the
/// proofs it shares with the rest of the batch are verified once.
const SIGNATURES_PER_RECEIPT: u64 = 4;
/// Proof checks one retrieval's authorization may take: real chains need a
/// handful (space → account → agent, with an attestation).
const PROOF_CHECKS_PER_RECEIPT: usize = 64;

/// What checking a receipt needs: the node, the tracker and its authorities,
/// and the batch's shared signature cache and budget.
struct Checks {
    max_retrieval: u64,
    non_billable: Arc<HashSet<Did>>,
    tracker: Arc<dyn Verifier>,
    authorities: Vec<Arc<dyn Verifier>>,
    signatures: Arc<SignatureCache>,
    node: Did,
    node_verifier: Arc<dyn Verifier>,
}

impl Checks {
    /// Checks `archives` on all available cores; results in batch order.
    fn check_chunk(&self, archives: &[(Cid, axum::body::Bytes)]) -> Vec<Checked> {
        let check = |(archive, bytes): &(Cid, axum::body::Bytes)| {
            self.check_archive(archive, bytes)
                .unwrap_or_else(Checked::Rejected)
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        if threads == 1 || archives.len() < 2 * threads {
            return archives.iter().map(check).collect();
        }
        let per_thread = archives.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = archives
                .chunks(per_thread)
                .map(|part| scope.spawn(move || part.iter().map(check).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    }

    /// Checks one receipt archive, all but duplicates (judged in batch order by
    /// the caller); an `Err` goes to `errors[]`.
    fn check_archive(&self, archive: &Cid, bytes: &[u8]) -> Result<Checked, Box<ReceiptError>> {
        let node = &self.node;
        let reject = |name: &str, message: String, receipt: Cid| {
            Box::new(ReceiptError {
                name: name.into(),
                message,
                receipt,
            })
        };
        if archive.codec() != CAR {
            return Err(reject(
                "InvalidArchive",
                format!("block {archive} is not a receipt archive (codec car)"),
                *archive,
            ));
        }
        let receipt = Receipt::extract(bytes)
            .map_err(|e| reject("InvalidArchive", e.to_string(), *archive))?;
        let cid = receipt.cid();
        if receipt.issuer().is_some_and(|iss| iss != node) {
            return Err(reject(
                "WrongIssuer",
                format!(
                    "receipt issued by {}, not by the node {node}",
                    receipt.issuer().map(Did::to_string).unwrap_or_default()
                ),
                cid,
            ));
        }
        if !receipt.verify_signature(self.node_verifier.as_ref()) {
            return Err(reject(
                "InvalidSignature",
                format!("receipt is not signed by the node {node}"),
                cid,
            ));
        }
        let ran = receipt.ran_cid();
        let invocation = match Invocation::from_blocks(&ran, receipt.blocks().clone()) {
            Ok(invocation) => invocation,
            Err(CodecError::MissingBlock(_)) => {
                return Err(reject(
                    "MissingInvocation",
                    format!("the invocation {ran} is not in the archive"),
                    cid,
                ))
            }
            // Bytes that are not the one dag-cbor encoding of what they say.
            Err(CodecError::NonCanonical) => {
                return Err(reject(
                    NON_CANONICAL,
                    format!("the invocation {ran} is not canonical dag-cbor"),
                    cid,
                ))
            }
            Err(e) => {
                return Err(reject(
                    "InvalidInvocation",
                    format!("the invocation {ran} does not decode: {e}"),
                    cid,
                ))
            }
        };
        if !matches!(invocation.capabilities(), [c] if c.can == Retrieve::CAN) {
            return Err(reject(
                "NotRetrieve",
                "receipt is not for a space/content/retrieve invocation".into(),
                cid,
            ));
        }
        if invocation.audience() != node {
            return Err(reject(
                "WrongAudience",
                format!(
                    "retrieval was addressed to {}, not to the node {node}",
                    invocation.audience()
                ),
                cid,
            ));
        }
        // The client signed the invocation's fields, not its bytes: only the
        // encodings JS and Go write are accepted, and the retrieval is known
        // by what was signed, so no re-encoding counts again.
        if !invocation.is_canonical() {
            return Err(reject(
                NON_CANONICAL,
                format!(
                    "retrieve invocation {} is not in canonical form (re-encoded)",
                    invocation.cid()
                ),
                cid,
            ));
        }
        let retrieval = invocation
            .payload_id()
            .map_err(|e| reject("InvalidRetrieve", e.to_string(), cid))?;
        let size = match egress_bytes(&receipt) {
            Ok(size) => size,
            // A failed retrieval served nothing: a valid receipt with no egress.
            Err(EgressError::Failed { .. }) => return Ok(Checked::NoEgress(cid)),
            Err(e @ (EgressError::EndBeforeStart { .. } | EgressError::Overflow)) => {
                return Err(reject("InvalidRange", e.to_string(), cid))
            }
            Err(e) => return Err(reject("InvalidRetrieve", e.to_string(), cid)),
        };
        if size > self.max_retrieval {
            return Err(reject(
                "InvalidRange",
                format!(
                    "nb.range claims {size} bytes, more than the {} one retrieval may",
                    self.max_retrieval
                ),
                cid,
            ));
        }
        let at = retrieval_time(&invocation);
        // The tracker is the authority, and only its configured authorities
        // attest: never the node, which would then vouch for its own receipts.
        let mut config = ValidatorConfig::new(self.tracker.clone())
            .at(at)
            .with_cache(self.signatures.clone())
            .max_validations(PROOF_CHECKS_PER_RECEIPT);
        for authority in &self.authorities {
            config = config.attester(authority.clone());
        }
        let authorization = access(&invocation, Retrieve::parser().as_ref(), &config)
            .map_err(|e| reject("Unauthorized", e.message.clone(), cid))?;
        let space = Did::parse(&authorization.capability.with)
            .map_err(|e| reject("InvalidRetrieve", e.to_string(), cid))?;
        Ok(Checked::Counted(Counted {
            receipt: cid,
            retrieval,
            space,
            day: format_date((at / 86_400) as i64),
            bytes: size,
            billable: !self.non_billable.contains(invocation.issuer()),
        }))
    }
}

/// Error name of a receipt whose retrieve invocation was re-encoded.
pub const NON_CANONICAL: &str = "NonCanonical";

/// Spool file names: `etracker-batch-<batch>-<pid>-<n>.car`.
const SPOOL_PREFIX: &str = "etracker-batch-";

/// Removes the spool files in `dir` that a process no longer running left
/// behind (a crash mid-download); returns how many. Files of live processes,
/// another consolidator's sharing the directory included, are left alone.
pub fn remove_stale_spool_files(dir: &std::path::Path) -> usize {
    // Without /proc we cannot tell who is alive: remove nothing.
    if !std::path::Path::new("/proc/self").exists() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SPOOL_PREFIX)?.strip_suffix(".car"))
            .and_then(|rest| rest.rsplit('-').nth(1))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = std::path::Path::new("/proc").join(pid.to_string()).exists();
        if !alive && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(file = %entry.path().display(), "removed a stale spool file");
            removed += 1;
        }
    }
    removed
}

/// A process-unique number, so concurrent runs of one task never share a spool file.
fn next_spool_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// When a retrieval happened, per the module's rule.
fn retrieval_time(invocation: &Invocation) -> u64 {
    let current = now();
    match (invocation.expiration(), invocation.not_before()) {
        (Some(exp), _) => exp.saturating_sub(1).min(current),
        (None, Some(nbf)) => nbf.min(current),
        (None, None) => current,
    }
}

/// Whether a consolidate receipt says "try again later".
pub fn is_retry(receipt: &Receipt) -> bool {
    matches!(error_name(receipt.out()), Some(RETRY | RETRY_INTERNAL))
}

/// Whether a consolidate receipt says "try again later" because the node failed.
pub fn is_node_failure(receipt: &Receipt) -> bool {
    error_name(receipt.out()) == Some(RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "198.18.0.1",
            "198.19.255.255",
            "192.0.0.8",
            "64:ff9b::7f00:1",
            "64:ff9b::808:808",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::1",
            "2002:808:808::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "198.20.0.1",
            "192.0.1.1",
            "2001:4860:4860::8888",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        assert_eq!(
            literal_ip("http://[::1]:8080/receipts/x"),
            Some("::1".parse().unwrap())
        );
        assert_eq!(literal_ip("https://node.example/receipts/x"), None);
    }
}
