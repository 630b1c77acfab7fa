//! One consolidate task: fetch the batch, check and count its receipts,
//! answer `{totalEgress, errors}` with the tally as the effect to conclude.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use cid::Cid;
use etracker_capabilities::account_egress_get::format_date;
use etracker_capabilities::consolidate::{ConsolidateError, ConsolidateOk, ReceiptError};
use etracker_capabilities::payable::When;
use etracker_capabilities::{Ability, Consolidate, Invoked, Outcome, Track};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use ucanto::car::{CarReader, Limits};
use ucanto::dag::{CAR, SHA2_256};
use ucanto::memo::{FastMap, FastSet};
use ucanto::principal::{verifier_for, Did};
use ucanto::receipt::Receipt;
use ucanto::server::Response;
use ucanto::ucan::{now, Delegation};
use ucanto::validator::SignatureCache;

use super::check::{
    Checked, Checks, Counted, Rejections, BATCH_SIGNATURE_ALLOWANCE, CHECK_CHUNK,
    CHECK_CHUNK_BYTES, DUPLICATE_RECEIPT, SIGNATURES_PER_RECEIPT,
};
use super::fetch::{is_public, literal_ip, spool_path, RateFloor};
use super::spill::{Entry, Spill};
use super::{
    Again, BatchFailure, Concludable, HandlerState, Refused, RunningTask, NON_BILLABLE, NOT_LEASED,
    RETRY, RETRY_INTERNAL, UNKNOWN_SPACE,
};
use crate::registry::{judge_all, Billing};
use crate::scratch::ScratchFile;
use crate::store::{CountedRetrieval, Store};
use crate::tally::{Tally, TallyError, TallyWriter};

impl HandlerState {
    pub(super) async fn consolidate(&self, invoked: Invoked<Consolidate>) -> Response {
        let (cause, request) = (invoked.capability.nb.cause, invoked.request);
        let task = request.invocation.cid();
        let failure = |message: String| {
            Response::error(ConsolidateError::new(ucanto::bounded::message(message)).to_ipld())
        };
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
        // A task is public and deterministic: it runs only with the
        // tracker's current lease, checked before anything is downloaded.
        let tracked = match super::lease::check(
            &request.invocation,
            &cause,
            self.tracker.as_ref(),
            &self.me,
            now(),
        ) {
            Ok(tracked) => tracked,
            Err(why) => return Response::failure(NOT_LEASED, why),
        };
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
        let again = Again {
            node,
            url: track_nb.url(),
            tracked,
        };
        match self.process(&batch, &again, &Refused::default()).await {
            Ok((ok, tally)) => Response::ok(ok.to_ipld()).with_effect(Concludable {
                batch,
                tally: Some(tally),
                again: Some(again),
            }),
            Err(BatchFailure::Permanent(message)) => {
                tracing::warn!(%batch, %message, "batch cannot be consolidated");
                failure(message).with_effect(Concludable {
                    batch,
                    tally: None,
                    again: None,
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
                        tally: None,
                        again: None,
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

    /// Runs `task` again for `batch`, leaving out what the tracker refused
    /// in this run's conclusion (see [`Refused`]).
    pub(super) async fn settle_again(
        &self,
        task: Cid,
        batch: &Cid,
        again: &Again,
        refused: &Refused,
    ) -> Result<(ConsolidateOk, Tally), BatchFailure> {
        let Some(_running) = self.start(task) else {
            return Err(BatchFailure::Internal(format!(
                "task {task} is already running"
            )));
        };
        self.process(batch, again, refused).await
    }

    async fn process(
        &self,
        batch: &Cid,
        again: &Again,
        refused: &Refused,
    ) -> Result<(ConsolidateOk, Tally), BatchFailure> {
        let Again { node, url, tracked } = again;
        if batch.codec() != CAR || batch.hash().code() != SHA2_256 || batch.hash().size() != 32 {
            return Err(BatchFailure::Permanent(format!(
                "batch CID {batch} is not a sha2-256 CID with codec car (0x0202)"
            )));
        }
        let path = spool_path(&self.limits.scratch_dir, batch);
        let result = async {
            self.download(url, batch, &path).await?;
            self.count(node, &path, *tracked).await
        }
        .await;
        let _ = tokio::fs::remove_file(&path).await;
        self.finish(node, batch, result?, refused).await
    }

    /// Streams the batch to `path`, enforcing the size limits, the minimum
    /// rate and the hash.
    async fn download(&self, url: &str, batch: &Cid, path: &PathBuf) -> Result<(), BatchFailure> {
        let limits = &self.limits;
        let transient =
            |e: &dyn std::fmt::Display| BatchFailure::Transient(format!("fetching {url}: {e}"));
        // Slower than the minimum rate: cut off, the node's failure.
        let floor = RateFloor::new(limits);
        if !self.limits.allow_private_endpoints {
            if let Some(ip) = literal_ip(url).filter(|ip| !is_public(*ip)) {
                return Err(BatchFailure::Permanent(format!(
                    "endpoint {url} is a non-public address ({ip})"
                )));
            }
        }
        let mut response = floor
            .within(0, self.http.get(url).send())
            .await
            .map_err(|slow| transient(&slow))?
            .map_err(|e| transient(&e))?;
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
        let file = tokio::fs::File::create(path).await.map_err(spool)?;
        let mut file = tokio::io::BufWriter::with_capacity(SPOOL_IO_BYTES, file);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = floor
            .within(size, response.chunk())
            .await
            .map_err(|slow| transient(&slow))?
            .map_err(|e| transient(&e))?
        {
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

    /// Reads the spooled batch block by block and checks every receipt,
    /// one chunk while the next is read; what passes goes to the spill.
    async fn count(
        &self,
        node: &Did,
        path: &PathBuf,
        tracked: u64,
    ) -> Result<Counting, BatchFailure> {
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
        let file = tokio::io::BufReader::with_capacity(SPOOL_IO_BYTES, file);
        let mut reader = CarReader::new(file, limits).await.map_err(undecodable)?;
        let node_verifier =
            verifier_for(node).map_err(|e| BatchFailure::Permanent(format!("node {node}: {e}")))?;
        // A batch's retrievals mostly share their proofs: verify each once,
        // within a budget that grows with the receipts read, so that proofs
        // crafted to be expensive cannot make one batch cost more than a few
        // honest ones.
        let signatures = Arc::new(SignatureCache::with_budget(BATCH_SIGNATURE_ALLOWANCE));
        let checks = Arc::new(Checks {
            max_retrieval: self.limits.max_retrieval_bytes,
            rules: self.rules.clone(),
            when: When {
                tracked,
                now: now(),
            },
            known_nodes: self.known_nodes.clone(),
            signatures: signatures.clone(),
            node: node.clone(),
            node_verifier,
        });
        let mut counting = Counting::new(&self.limits.scratch_dir)?;
        // Archives met lately: a repeat is a duplicate without checking it
        // again. Repeats farther apart are checked again, and found out when
        // the counted retrievals are sorted.
        let mut recent_archives = FastSet::default();
        let mut chunk = Vec::with_capacity(CHECK_CHUNK);
        let mut chunk_bytes = 0usize;
        let mut checking: Option<tokio::task::JoinHandle<_>> = None;
        let mut seq = 0u64;
        loop {
            let next = reader.next_block().await.map_err(undecodable)?;
            let end = next.is_none();
            if let Some((archive, bytes)) = next {
                let at = seq;
                seq += 1;
                if recent_archives.len() >= RECENT_ARCHIVES {
                    recent_archives.clear();
                }
                if recent_archives.insert(archive) {
                    signatures.credit(SIGNATURES_PER_RECEIPT);
                    chunk_bytes += bytes.len();
                    chunk.push((at, archive, bytes));
                } else if counting.rejected.names(at) {
                    let receipt = Receipt::archived_cid(&bytes).unwrap_or(archive);
                    counting.rejected.push(
                        at,
                        ReceiptError {
                            name: DUPLICATE_RECEIPT.into(),
                            message: format!(
                                "receipt {receipt} appears more than once in the batch"
                            ),
                            receipt,
                        },
                    );
                } else {
                    // Past the bound only the count matters: no need to read it.
                    counting.rejected.count(DUPLICATE_RECEIPT);
                }
            }
            // A chunk is cut by count and by bytes: two are held at once
            // (one checked, one read), so padded archives cost their bytes.
            if chunk.len() < CHECK_CHUNK && chunk_bytes < CHECK_CHUNK_BYTES && !end {
                continue;
            }
            chunk_bytes = 0;
            // Checking is CPU work (signatures, validation): it runs off the
            // async runtime, on every core, while the next chunk is read.
            if let Some(previous) = checking.take() {
                counting.take(previous.await)?;
            }
            let archives = std::mem::take(&mut chunk);
            let checks = checks.clone();
            checking = Some(tokio::task::spawn_blocking(move || {
                let checked = checks.check_chunk(&archives);
                (archives.into_iter().map(|(seq, ..)| seq).collect(), checked)
            }));
            if end {
                break;
            }
        }
        if let Some(last) = checking {
            counting.take(last.await)?;
        }
        Ok(counting)
    }

    /// Finds the duplicates among the counted retrievals (in the batch, in
    /// earlier batches), sets apart those of non-billable actors and of
    /// spaces no known provider provisions, and tallies the rest.
    async fn finish(
        &self,
        node: &Did,
        batch: &Cid,
        counting: Counting,
        refused: &Refused,
    ) -> Result<(ConsolidateOk, Tally), BatchFailure> {
        let billable_spaces = counting
            .usage
            .iter()
            .filter(|(_, _, billable)| *billable)
            .map(|(space, ..)| space.clone())
            .collect();
        let verdicts = judge_all(&self.spaces, billable_spaces)
            .await
            .map_err(|e| BatchFailure::internal("looking up spaces", e))?;
        let settle = Settle {
            node: node.clone(),
            store: self.store.clone(),
            verdicts,
            refused: refused.clone(),
        };
        let file = ScratchFile::create(&self.limits.scratch_dir, "tally").map_err(spilling)?;
        let tally = TallyWriter::with_chunking(
            *batch,
            Some(file),
            self.paging.receipts_per_chunk,
            crate::tally::CHUNK_USAGE,
        );
        let batch = *batch;
        tokio::task::spawn_blocking(move || settle.run(batch, counting, tally))
            .await
            .map_err(|e| BatchFailure::internal("tallying", e))?
    }
}

/// Bytes written to, and read from, the spooled batch at a time: each is
/// one hand-off to tokio's blocking pool, so not the default 8 KiB.
const SPOOL_IO_BYTES: usize = 256 * 1024;

/// Distinct archives remembered while reading a batch.
const RECENT_ARCHIVES: usize = 4096;

/// Retrievals looked up in the store at a time.
const SETTLE_PAGE: usize = 4096;

/// What counting a batch found: the errors, and the retrievals that passed
/// their own checks, spilled, with the table of their (space, day, billable).
pub(super) struct Counting {
    rejected: Rejections,
    spill: Spill,
    usage: Vec<(Did, String, bool)>,
    /// Where each (space, day number, billable) is in `usage`: the day is
    /// written out once per entry, not per receipt.
    usage_index: FastMap<(Did, i64, bool), u32>,
}

type CheckedChunk = (Vec<u64>, Vec<Checked>);

impl Counting {
    fn new(scratch_dir: &std::path::Path) -> Result<Self, BatchFailure> {
        Ok(Counting {
            rejected: Rejections::default(),
            spill: Spill::create(scratch_dir).map_err(spilling)?,
            usage: Vec::new(),
            usage_index: FastMap::default(),
        })
    }

    /// Takes in one checked chunk, in batch order.
    fn take(
        &mut self,
        checked: Result<CheckedChunk, tokio::task::JoinError>,
    ) -> Result<(), BatchFailure> {
        let (seqs, checked) =
            checked.map_err(|e| BatchFailure::internal("checking receipts", e))?;
        for (seq, outcome) in seqs.into_iter().zip(checked) {
            match outcome {
                Checked::Counted(counted) => self.add(seq, counted)?,
                Checked::NoEgress => {}
                Checked::Rejected(error) => self.rejected.push(seq, error),
                Checked::Failed(why) => {
                    return Err(BatchFailure::internal("judging receipts", why))
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, seq: u64, counted: Counted) -> Result<(), BatchFailure> {
        let Counted {
            receipt,
            retrieval,
            space,
            day,
            bytes,
            expires,
            billable,
        } = counted;
        // Payload ids are raw sha2-256 CIDs: the digest stands for the CID.
        let retrieval = <[u8; 32]>::try_from(retrieval.hash().digest()).map_err(|_| {
            BatchFailure::internal("spilling", format!("retrieval {retrieval} is not sha2-256"))
        })?;
        let key = (space, day, billable);
        let usage = match self.usage_index.get(&key) {
            Some(index) => *index,
            None => {
                let index = u32::try_from(self.usage.len())
                    .map_err(|e| BatchFailure::internal("spilling", e))?;
                self.usage.push((key.0.clone(), format_date(key.1), key.2));
                self.usage_index.insert(key, index);
                index
            }
        };
        self.spill
            .push(Entry {
                retrieval,
                seq,
                usage,
                bytes,
                expires,
                receipt,
            })
            .map_err(spilling)
    }
}

/// A usage beyond u64 is the batch's doing (final); the rest is ours.
fn tallying(e: TallyError) -> BatchFailure {
    match e {
        TallyError::Overflow => BatchFailure::Permanent("the batch's usage overflows u64".into()),
        e => BatchFailure::internal("tallying", e),
    }
}

fn spilling(e: std::io::Error) -> BatchFailure {
    BatchFailure::internal("spilling counted retrievals", e)
}

/// What settling the counted retrievals needs to know.
struct Settle {
    /// The node that served the batch: every retrieval counted was its own.
    node: Did,
    store: Option<Arc<dyn Store>>,
    verdicts: HashMap<Did, Billing>,
    /// What the tracker refused in this run's earlier conclusion.
    refused: Refused,
}

impl Settle {
    /// Reads the counted retrievals sorted, drops the repeats and those
    /// counted before, and tallies the rest (into a scratch file).
    fn run(
        self,
        batch: Cid,
        counting: Counting,
        mut tally: TallyWriter,
    ) -> Result<(ConsolidateOk, Tally), BatchFailure> {
        let Counting {
            mut rejected,
            spill,
            usage,
            ..
        } = counting;
        let mut page = Vec::with_capacity(SETTLE_PAGE);
        let mut last = None;
        for entry in spill.into_sorted().map_err(spilling)? {
            let entry = entry.map_err(spilling)?;
            // Sorted by retrieval, then position: the first copy is judged,
            // later ones (another receipt, a re-encoding) are duplicates.
            if last == Some(entry.retrieval) {
                rejected.push(
                    entry.seq,
                    ReceiptError {
                        name: DUPLICATE_RECEIPT.into(),
                        message: format!(
                            "retrieval {} appears more than once in the batch",
                            retrieval_cid(&entry)
                        ),
                        receipt: entry.receipt,
                    },
                );
                continue;
            }
            last = Some(entry.retrieval);
            page.push(entry);
            if page.len() == SETTLE_PAGE {
                self.settle_page(&mut page, &usage, &mut rejected, &mut tally)?;
            }
        }
        self.settle_page(&mut page, &usage, &mut rejected, &mut tally)?;
        let tally = tally.finish().map_err(tallying)?;
        let ok = ConsolidateOk {
            total_egress: tally.total(),
            errors: rejected.into_errors(&batch),
        };
        Ok((ok, tally))
    }

    /// Settles a page of distinct retrievals (and empties it).
    fn settle_page(
        &self,
        page: &mut Vec<Entry>,
        usage: &[(Did, String, bool)],
        rejected: &mut Rejections,
        tally: &mut TallyWriter,
    ) -> Result<(), BatchFailure> {
        let cids: Vec<CountedRetrieval> = page.iter().map(counted_retrieval).collect();
        let earlier = match &self.store {
            Some(store) if !cids.is_empty() => store
                .counted(&self.node, &cids)
                .map_err(|e| BatchFailure::internal("reading counted retrievals", e))?,
            _ => vec![None; cids.len()],
        };
        for ((entry, counted), counted_by) in page.drain(..).zip(cids).zip(earlier) {
            let retrieval = counted.retrieval;
            let reject = |name: &str, message: String| ReceiptError {
                name: name.into(),
                message,
                receipt: entry.receipt,
            };
            let duplicate = match counted_by {
                Some(batch) => Some(format!(
                    "retrieval {retrieval} already counted in batch {batch}"
                )),
                None if self
                    .refused
                    .retrievals
                    .binary_search(&crate::store::retrieval_key(&retrieval))
                    .is_ok() =>
                {
                    Some(format!(
                        "retrieval {retrieval} already counted in another batch"
                    ))
                }
                None => None,
            };
            if let Some(message) = duplicate {
                rejected.push(entry.seq, reject(DUPLICATE_RECEIPT, message));
                continue;
            }
            let Some((space, day, billable)) = usage.get(entry.usage as usize) else {
                return Err(BatchFailure::internal(
                    "tallying",
                    "a spilled entry lost its usage",
                ));
            };
            if !billable {
                rejected.push(
                    entry.seq,
                    reject(
                        NON_BILLABLE,
                        format!(
                            "retrieval {retrieval} by a non-billable actor: {} bytes recorded apart, billed to no one",
                            entry.bytes
                        ),
                    ),
                );
                tally
                    .add_non_billable(space.clone(), day.clone(), entry.bytes, counted)
                    .map_err(tallying)?;
                continue;
            }
            let unknown = match self.verdicts.get(space) {
                Some(Billing::Unknown(why)) => Some(why.clone()),
                _ if self.refused.spaces.contains(space) => {
                    Some(format!("the tracker does not bill space {space}"))
                }
                _ => None,
            };
            match unknown {
                Some(message) => rejected.push(entry.seq, reject(UNKNOWN_SPACE, message)),
                None => tally
                    .add(space.clone(), day.clone(), entry.bytes, counted)
                    .map_err(tallying)?,
            }
        }
        Ok(())
    }
}

/// The retrieval's payload id (a raw sha2-256 CID).
fn retrieval_cid(entry: &Entry) -> Cid {
    ucanto::dag::cid_of_digest(ucanto::dag::RAW, entry.retrieval)
}

/// The retrieval of `entry` with its own expiry.
fn counted_retrieval(entry: &Entry) -> CountedRetrieval {
    CountedRetrieval {
        retrieval: retrieval_cid(entry),
        expires: entry.expires,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use ucanto::dag::{cid_of, DAG_CBOR, RAW};

    /// Whatever runs the spill cuts it into, the first copy of a retrieval
    /// in batch order counts, and every later one, near or far, is listed as
    /// a duplicate in batch order, as is one another batch counted.
    #[test]
    fn repeats_anywhere_in_a_batch_count_once() {
        let batch = cid_of(ucanto::dag::CAR, b"batch");
        let space: Did = "did:web:space.example".parse().unwrap();
        let receipt = |seq: u64| cid_of(DAG_CBOR, &seq.to_be_bytes());
        let retrieval = |r: u8| cid_of(RAW, &[r]);
        let mut counting = Counting {
            rejected: Rejections::default(),
            spill: Spill::with_run_entries(&std::env::temp_dir(), 3).unwrap(),
            usage: Vec::new(),
            usage_index: FastMap::default(),
        };
        for (seq, r) in [1u8, 2, 3, 1, 4, 2, 5, 1].into_iter().enumerate() {
            let seq = seq as u64;
            let counted = Counted {
                receipt: receipt(seq),
                retrieval: retrieval(r),
                space: space.clone(),
                day: 20_758, // 2026-11-01
                bytes: 10,
                expires: 1_800_000_000,
                billable: true,
            };
            counting.add(seq, counted).unwrap();
        }
        let settle = Settle {
            node: space.clone(),
            store: None,
            verdicts: HashMap::new(),
            refused: Refused {
                retrievals: vec![crate::store::retrieval_key(&retrieval(5))],
                spaces: HashSet::new(),
            },
        };
        let tally = TallyWriter::with_chunking(batch, None, 2, 10);
        let Ok((ok, tally)) = settle.run(batch, counting, tally) else {
            panic!("settling failed");
        };
        assert_eq!((tally.counted, ok.total_egress), (4, 40));
        let errors: Vec<(&str, Cid)> = ok
            .errors
            .iter()
            .map(|e| (e.name.as_str(), e.receipt))
            .collect();
        let duplicate = |seq| (DUPLICATE_RECEIPT, receipt(seq));
        assert_eq!(
            errors,
            [duplicate(3), duplicate(5), duplicate(6), duplicate(7)]
        );
        let mut counted = Vec::new();
        for i in 0..tally.links().len() {
            let chunk = crate::tally::Chunk::decode(&batch, &tally.chunk(i).unwrap()).unwrap();
            counted.extend(chunk.counted.into_iter().map(|c| c.retrieval));
        }
        let mut expected: Vec<Cid> = [1, 2, 3, 4].map(retrieval).to_vec();
        expected.sort_by_key(|c| c.hash().digest().to_vec());
        assert_eq!(counted, expected, "sorted by retrieval, once each");
    }
}
