//! One consolidate task: fetch the batch, check and count its receipts,
//! answer `{totalEgress, errors}` with the tally as the effect to conclude.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use cid::Cid;
use etracker_capabilities::consolidate::{ConsolidateError, ConsolidateOk, ReceiptError};
use etracker_capabilities::{Ability, Consolidate, Invoked, Outcome, Track};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use ucanto::car::{CarReader, Limits};
use ucanto::dag::{CAR, SHA2_256};
use ucanto::principal::{verifier_for, Did};
use ucanto::receipt::Receipt;
use ucanto::server::Response;
use ucanto::ucan::{now, Delegation};
use ucanto::validator::SignatureCache;

use super::check::{
    Checked, Checks, Counted, Rejections, BATCH_SIGNATURE_ALLOWANCE, CHECK_CHUNK,
    DUPLICATE_RECEIPT, SIGNATURES_PER_RECEIPT,
};
use super::fetch::{is_public, literal_ip, spool_path};
use super::{
    BatchFailure, Concludable, HandlerState, RunningTask, NON_BILLABLE, RETRY, RETRY_INTERNAL,
    UNKNOWN_SPACE,
};
use crate::registry::{judge_all, Billing};
use crate::tally::Tally;

impl HandlerState {
    pub(super) async fn consolidate(&self, invoked: Invoked<Consolidate>) -> Response {
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
