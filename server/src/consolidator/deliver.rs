//! Delivery: the signed consolidate receipt and its tally reach the tracker
//! by invoking `space/egress/conclude`, in pages under its body limit.

use cid::Cid;
use etracker_capabilities::conclude::{conflict_keys, ConcludeError};
use etracker_capabilities::{Ability, Outcome};
use ucanto::dag::Block;
use ucanto::receipt::{Receipt, ReceiptParts};
use ucanto::server::error_name;
use ucanto::ucan::{Delegation, Invocation, Proof};

use super::{Concludable, Delivery, Refused};
use crate::tally::Tally;

/// Why the consolidate receipt did not reach the tracker; the record stays
/// pending and the task runs again.
#[derive(Debug, thiserror::Error)]
pub(super) enum DeliveryError {
    /// The conclude invocation could not be encoded.
    #[error("cannot encode conclude: {0}")]
    Encode(#[from] ucanto::dag::CodecError),
    /// The tally could not be read back.
    #[error("cannot read the tally: {0}")]
    Tally(#[from] crate::tally::TallyError),
    /// The tracker could not be reached, or its answer not read.
    #[error("cannot reach the tracker: {0}")]
    Unreachable(#[from] ucanto::client::ClientError),
    /// The tracker answered with an error (dag-json).
    #[error("tracker refused conclude: {0}")]
    Refused(String),
}

/// A conclusion that did not go through: why, and the tracker's answer
/// when it gave one (a refusal).
pub(super) struct Undelivered {
    pub(super) answer: Option<Receipt>,
    pub(super) error: DeliveryError,
}

impl Delivery {
    /// Invokes `space/egress/conclude` with `receipt` and `tally` (none:
    /// nothing counted), in pages of at most `chunks_per_page` tally chunks
    /// (each page also carries the first chunk, which names the batch), so
    /// no request outgrows the tracker's body limit; chunks are read from
    /// the tally's scratch file a page at a time. Returns the tracker's
    /// answer to the last page: what the caller of the task learns, with
    /// its receipt, of how the conclusion went (a refusal is `Err` too).
    pub(super) async fn conclude(
        &self,
        receipt: &Receipt,
        batch: Cid,
        tally: Option<&Tally>,
    ) -> Result<Receipt, Box<Undelivered>> {
        self.deliver(receipt, batch, tally).await
    }

    async fn deliver(
        &self,
        receipt: &Receipt,
        batch: Cid,
        tally: Option<&Tally>,
    ) -> Result<Receipt, Box<Undelivered>> {
        let failed = |error: DeliveryError| {
            Box::new(Undelivered {
                answer: None,
                error,
            })
        };
        let empty;
        let tally = match tally {
            Some(tally) => tally,
            None => {
                empty = Tally::empty(batch).map_err(|e| failed(e.into()))?;
                &empty
            }
        };
        let links = tally.links();
        let nb = etracker_capabilities::conclude::ConcludeNb {
            receipt: receipt.cid(),
            tally: links.clone(),
        };
        let first = tally.chunk(0).map_err(|e| failed(e.into()))?;
        let per_page = self.paging.chunks_per_page.max(2) - 1;
        let rest: Vec<usize> = (1..links.len()).collect();
        let pages: Vec<&[usize]> = if rest.is_empty() {
            vec![&[]]
        } else {
            rest.chunks(per_page).collect()
        };
        // Every page but the last is answered "incomplete" while the
        // tracker stages chunks; any other answer ends the delivery.
        let last = pages.len() - 1;
        for page in &pages[..last] {
            let answer = self
                .send_page(&nb, receipt, &first, tally, page)
                .await
                .map_err(failed)?;
            if error_name(answer.out()) != Some(ConcludeError::INCOMPLETE) {
                return self.concluded(answer, receipt, batch, tally);
            }
        }
        let answer = self
            .send_page(&nb, receipt, &first, tally, pages[last])
            .await
            .map_err(failed)?;
        self.concluded(answer, receipt, batch, tally)
    }

    /// Invokes conclude with the receipt, the first tally chunk and `page`.
    async fn send_page(
        &self,
        nb: &etracker_capabilities::conclude::ConcludeNb,
        receipt: &Receipt,
        first: &Block,
        tally: &Tally,
        page: &[usize],
    ) -> Result<Receipt, DeliveryError> {
        let mut builder = Delegation::builder(self.signer.as_ref(), self.tracker.clone())
            .capability(etracker_capabilities::Conclude::capability(
                &self.tracker,
                nb,
            ))
            .attach(receipt.block().clone())
            .attach(first.clone());
        for i in page {
            builder = builder.attach(tally.chunk(*i)?);
        }
        for proof in &self.conclude_proofs {
            builder = builder.proof(Proof::Delegation(proof.clone()));
        }
        let invocation = builder.build()?;
        Ok(self.tracker_connection.invoke(&invocation).await?)
    }

    /// Reads the tracker's answer to the (last) conclude page.
    fn concluded(
        &self,
        answer: Receipt,
        receipt: &Receipt,
        batch: Cid,
        tally: &Tally,
    ) -> Result<Receipt, Box<Undelivered>> {
        match answer.out() {
            Ok(_) => {
                tracing::info!(%batch, receipt = %receipt.cid(), total = tally.total(), "concluded");
                Ok(answer)
            }
            Err(error) => {
                let refused =
                    DeliveryError::Refused(ucanto::dag_json::to_string(error).unwrap_or_default());
                Err(Box::new(Undelivered {
                    answer: Some(answer.clone()),
                    error: refused,
                }))
            }
        }
    }

    /// Concludes a task's run: delivers `receipt`, and when the tracker
    /// refuses part of it (a conflict or unbilled spaces, read from its
    /// typed answer) settles the batch again without that part, signs the
    /// new receipt and delivers it, up to [`MAX_SETTLINGS`] times. Returns
    /// the tracker's last answer, if it gave one; without success the
    /// record stays pending and the scheduler runs the task again.
    pub(super) async fn conclude_run(
        &self,
        task: &Invocation,
        mut receipt: Receipt,
        done: &Concludable,
    ) -> Option<Receipt> {
        let batch = done.batch;
        let mut settled: Option<Tally> = None;
        let mut refused = Refused::default();
        for settling in 1..=MAX_SETTLINGS {
            let tally = settled.as_ref().or(done.tally.as_ref());
            let undelivered = match self.conclude(&receipt, batch, tally).await {
                Ok(answer) => return Some(answer),
                Err(undelivered) => undelivered,
            };
            tracing::warn!(task = %task.cid(), %batch, error = %undelivered.error, "conclude failed");
            let answer = undelivered.answer?;
            let (Some(again), Some(_), Err(error)) = (&done.again, tally, answer.out()) else {
                return Some(answer);
            };
            match ConcludeError::from_ipld(error) {
                Ok(ConcludeError::UnknownSpaces { spaces, .. }) => refused.spaces.extend(spaces),
                Ok(ConcludeError::Conflict { conflicts, .. }) => {
                    refused.retrievals.extend(conflict_keys(&conflicts));
                    refused.retrievals.sort_unstable();
                    refused.retrievals.dedup();
                }
                _ => return Some(answer),
            }
            if settling == MAX_SETTLINGS {
                return Some(answer);
            }
            let (ok, tally) = match self
                .state
                .settle_again(task.cid(), &batch, again, &refused)
                .await
            {
                Ok(settled) => settled,
                Err(failure) => {
                    tracing::warn!(%batch, ?failure, "settling again failed, will retry");
                    return Some(answer);
                }
            };
            let parts = ReceiptParts::new(task.clone(), Ok(ok.to_ipld()));
            receipt = match Receipt::issue(self.signer.as_ref(), parts) {
                Ok(receipt) => receipt,
                Err(error) => {
                    tracing::error!(%batch, %error, "cannot sign the settled receipt");
                    return Some(answer);
                }
            };
            settled = Some(tally);
        }
        None
    }
}

/// Most times a run concludes: the first settling, then one more for each
/// refusal (a new one can only come from another batch concluding in the
/// meantime, again).
const MAX_SETTLINGS: usize = 3;
