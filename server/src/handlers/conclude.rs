//! `space/egress/conclude`: the consolidator hands over a signed consolidate
//! receipt and its tally; this is the only place totals change.
//!
//! The receipt must have run a consolidate task this tracker created (the
//! record's task) and be signed by the trusted consolidator; its
//! `totalEgress` must equal the tally. Then one store transaction stores the
//! receipt (as the agent message `GET /receipts/{task}` serves), adds the
//! node and space totals, records the counted retrievals and marks the batch
//! done. Concluding the same receipt again changes nothing.

use std::collections::HashSet;
use std::sync::Arc;

use cid::Cid;
use etracker_capabilities::conclude::{attached_receipt, ConcludeError, ConcludeNb, ConcludeOk};
use etracker_capabilities::consolidate::{ConsolidateError, ConsolidateOk};
use etracker_capabilities::{read_out, Conclude, Invoked, Outcome};
use ucanto::dag::{BlockStore, Ipld};
use ucanto::message::AgentMessage;
use ucanto::principal::Did;
use ucanto::receipt::Receipt;
use ucanto::server::{HandlerError, Request, Response};
use ucanto::ucan::{now, Delegation};

use super::{unexpected, Context};
use crate::consolidator::consolidate_task;
use crate::metrics::Metrics;
use crate::registry::{judge_all, Billing};
use crate::store::{
    ConcludeOutcome, Conclusion, CountedRetrieval, DailyUsage, RetrievalKey, StagedChunk, Staging,
    StoreError,
};
use crate::tally::{add_usage, Chunk, Usage};

/// Handles one conclude invocation.
pub async fn handle(
    ctx: Arc<Context>,
    invoked: Invoked<Conclude>,
) -> Result<Response, HandlerError> {
    let (nb, request) = (invoked.capability.nb, invoked.request);
    Metrics::add(&ctx.metrics.conclude_invocations, 1);
    tracing::info!(invocation = %request.invocation.cid(), issuer = %request.invocation.issuer(), "space/egress/conclude");
    let refused = match conclude(&ctx, nb, &request).await {
        Ok(outcome) => return Ok(outcome),
        Err(Refusal::Unexpected(e)) => return Err(unexpected(e)),
        Err(Refusal::Error(message)) => ConcludeError::new(message),
        Err(Refusal::Conflict(retrievals)) => ConcludeError::Conflict {
            message: format!(
                "{} retrieval(s) were counted by another batch meanwhile; consolidate again without them",
                retrievals.len()
            ),
            count: retrievals.len() as u64,
            conflicts: retrievals
                .iter()
                .take(MAX_CONFLICT_KEYS)
                .flat_map(|key| key.iter().copied())
                .collect(),
        },
        Err(Refusal::UnknownSpaces(spaces)) => ConcludeError::UnknownSpaces {
            message: format!(
                "{} space(s) counted are provisioned by no known provider (e.g. {}); consolidate again",
                spaces.len(),
                spaces[0]
            ),
            spaces: spaces.into_iter().take(MAX_LISTED_SPACES).collect(),
        },
        Err(Refusal::Incomplete { received, total }) => ConcludeError::Incomplete {
            message: format!("{received} of {total} tally chunks received; send the rest"),
        },
    };
    if !matches!(refused, ConcludeError::Incomplete { .. }) {
        tracing::warn!(message = %refused.message(), "conclude refused");
    }
    Ok(Response::error(refused.to_ipld()))
}

/// Most retrievals a conflict answer names (16 bytes each, 1 MiB): a
/// consolidator without the store drops those and settles again, and learns
/// the rest, if any, from the next answer.
pub const MAX_CONFLICT_KEYS: usize = 65_536;

/// Most spaces a refusal of unbilled spaces lists: a consolidator drops
/// those and learns the rest on its next run.
pub const MAX_LISTED_SPACES: usize = 1024;

/// What a tally says, read a chunk at a time: the usage summed, and the
/// counted retrievals of a tally in one piece; those of a tally in pages stay
/// staged in the store, which reads them as it commits, so no tally of more
/// than one page is ever held in memory.
struct TallySummary {
    usage: Usage,
    non_billable: Usage,
    /// Retrievals counted, in all chunks.
    counted: u64,
    /// The counted retrievals of a tally in one piece.
    listed: Vec<CountedRetrieval>,
    /// The chunks of a tally in pages, all staged.
    staged: Vec<Cid>,
}

/// Reads the tally chunks `links` of the conclusion `staging`, attached to
/// this invocation or staged by earlier pages. When some are still missing,
/// stages the attached ones and answers [`Refusal::Incomplete`].
async fn read_tally(
    ctx: &Arc<Context>,
    staging: &Staging,
    links: &[Cid],
    blocks: &BlockStore,
) -> Result<TallySummary, Refusal> {
    let batch = staging.batch;
    let staged: HashSet<Cid> = if links.iter().all(|link| blocks.block(link).is_ok()) {
        HashSet::new()
    } else {
        let staging = staging.clone();
        ctx.store(move |store| store.staged_chunk_ids(&staging))
            .await
            .map_err(Refusal::Unexpected)?
            .into_iter()
            .collect()
    };
    let missing = links
        .iter()
        .filter(|link| blocks.block(link).is_err() && !staged.contains(link))
        .count();
    if missing > 0 {
        stage_attached(ctx, staging, links, blocks, &staged).await?;
        return Err(Refusal::Incomplete {
            received: links.len() - missing,
            total: links.len(),
        });
    }
    let mut summary = TallySummary {
        usage: Usage::new(),
        non_billable: Usage::new(),
        counted: 0,
        listed: Vec::new(),
        staged: Vec::new(),
    };
    let overflow = || "the tally's usage overflows u64".to_string();
    let add = |summary: &mut TallySummary, chunk: StagedChunk| -> Result<(), Refusal> {
        for (space, day, bytes) in chunk.usage {
            add_usage(&mut summary.usage, space, day, bytes).ok_or_else(overflow)?;
        }
        for (space, day, bytes) in chunk.non_billable {
            add_usage(&mut summary.non_billable, space, day, bytes).ok_or_else(overflow)?;
        }
        summary.counted += chunk.counted;
        Ok(())
    };
    if staged.is_empty() {
        // A tally in one piece: read here, its retrievals listed.
        for link in links {
            let block = blocks.block(link).map_err(|e| e.to_string())?;
            let chunk = Chunk::decode(&batch, &block).map_err(|e| e.to_string())?;
            add(
                &mut summary,
                StagedChunk {
                    usage: chunk.usage,
                    non_billable: chunk.non_billable,
                    counted: chunk.counted.len() as u64,
                },
            )?;
            summary.listed.extend(chunk.counted);
        }
        return Ok(summary);
    }
    // A tally in pages: this page's chunks are staged too, so that the store
    // reads every chunk's retrievals as it commits and none is held here.
    stage_attached(ctx, staging, links, blocks, &staged).await?;
    for page in links.chunks(64) {
        let (staging, page_links) = (staging.clone(), page.to_vec());
        let read = ctx
            .store(move |store| store.staged_chunks(&staging, &page_links))
            .await
            .map_err(Refusal::Unexpected)?;
        for (link, chunk) in page.iter().zip(read) {
            let chunk = chunk.ok_or_else(|| format!("tally chunk {link} is no longer staged"))?;
            add(&mut summary, chunk)?;
            summary.staged.push(*link);
        }
    }
    Ok(summary)
}

/// Stages the chunks among `links` attached to this invocation and not
/// `staged` already.
async fn stage_attached(
    ctx: &Arc<Context>,
    staging: &Staging,
    links: &[Cid],
    blocks: &BlockStore,
    staged: &HashSet<Cid>,
) -> Result<(), Refusal> {
    let attached: Vec<(Cid, Vec<u8>)> = links
        .iter()
        .filter(|link| !staged.contains(link))
        .filter_map(|link| blocks.block(link).ok())
        .map(|block| (block.cid, block.bytes.to_vec()))
        .collect();
    let staging = staging.clone();
    match ctx
        .store(move |store| store.stage_chunks(&staging, &attached))
        .await
    {
        Ok(()) => Ok(()),
        Err(StoreError::Invalid(why)) => Err(format!("cannot stage the tally: {why}").into()),
        Err(e) => Err(Refusal::Unexpected(e)),
    }
}

enum Refusal {
    Error(String),
    /// Spaces this tracker does not bill; listed so a consolidator with
    /// another registry drops them on its next run.
    UnknownSpaces(Vec<Did>),
    /// A page of a large tally: staged, waiting for the rest.
    Incomplete {
        received: usize,
        total: usize,
    },
    /// Retrievals another batch counted meanwhile, and their marks over
    /// the tally (see [`conflict_marks`]), so a consolidator without store
    /// access can drop them on its next run.
    Conflict(Vec<RetrievalKey>),
    Unexpected(StoreError),
}

impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Refusal::Error(message)
    }
}

async fn conclude(
    ctx: &Arc<Context>,
    nb: ConcludeNb,
    request: &Request,
) -> Result<Response, Refusal> {
    let consolidator = ctx.consolidator.did();
    if request.invocation.issuer() != consolidator {
        return Err(format!("only the consolidator {consolidator} concludes tasks").into());
    }
    let receipt = attached_receipt(&request.invocation, &nb)
        .map_err(|e| format!("receipt {} is not attached: {e}", nb.receipt))?;
    if !receipt.verify_signature(ctx.consolidator.as_ref()) {
        return Err(format!(
            "receipt {} is not signed by the consolidator {consolidator}",
            receipt.cid()
        )
        .into());
    }
    // Every page attaches the first chunk, which names the batch.
    let Some(first) = nb.tally.first() else {
        return Err("nb.tally is empty: the batch is unknown".to_string().into());
    };
    let blocks = request.invocation.blocks();
    let batch = match blocks.block(first).and_then(|b| b.decode()) {
        Ok(Ipld::Map(chunk)) => match chunk.get("batch") {
            Some(Ipld::Link(batch)) => *batch,
            _ => return Err("tally chunk names no batch".to_string().into()),
        },
        _ => return Err(format!("tally chunk {first} is missing or malformed").into()),
    };

    let record = ctx
        .store(move |store| store.record(&batch))
        .await
        .map_err(Refusal::Unexpected)?
        .ok_or_else(|| format!("batch {batch} was never tracked"))?;
    if record.consolidate_invocation != receipt.ran_cid() {
        return Err(format!(
            "receipt ran {}, not the task {} this tracker created",
            receipt.ran_cid(),
            record.consolidate_invocation
        )
        .into());
    }
    let staging = Staging {
        batch,
        receipt: receipt.cid(),
        tally: nb.tally.clone(),
        node: record.node.clone(),
        claims_end: record.received_at.saturating_add(ctx.claim_lifetime),
    };
    let tally = read_tally(ctx, &staging, &nb.tally, blocks).await?;
    let tally_total = tally
        .usage
        .values()
        .try_fold(0u64, |sum, bytes| sum.checked_add(*bytes))
        .ok_or_else(|| "the tally's usage overflows u64".to_string())?;
    // The total, the receipts `errors[]` lists by name, and whether the
    // batch failed whole.
    let (total, rejected, failure) =
        match read_out::<ConsolidateOk, ConsolidateError>(receipt.out()) {
            Ok(Ok(ok)) if ok.total_egress == tally_total => {
                (ok.total_egress, rejections_by_name(&ok.errors), None)
            }
            Ok(Ok(ok)) => {
                return Err(format!(
                    "totalEgress {} differs from the tally's {tally_total}",
                    ok.total_egress,
                )
                .into())
            }
            Ok(Err(e)) if tally.counted == 0 => {
                (0, Vec::new(), Some(ucanto::bounded::message(e.message)))
            }
            Ok(Err(_)) => return Err("an error receipt cannot count receipts".to_string().into()),
            Err(e) => return Err(format!("receipt result is not a consolidate result: {e}").into()),
        };
    let rejected_count: u64 = rejected.iter().map(|(_, n)| n).sum();

    // The consolidator judged the spaces; judge them again, so that one with
    // another registry (or none) never bills a space this tracker does not.
    let spaces = tally.usage.keys().map(|(space, _)| space.clone()).collect();
    let verdicts = judge_all(&ctx.spaces, spaces)
        .await
        .map_err(Refusal::Unexpected)?;
    let mut unknown: Vec<Did> = verdicts
        .into_iter()
        .filter(|(_, billing)| matches!(billing, Billing::Unknown(_)))
        .map(|(space, _)| space)
        .collect();
    if !unknown.is_empty() {
        unknown.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        return Err(Refusal::UnknownSpaces(unknown));
    }

    // What `GET /receipts/{task}` serves: the receipt with the task it ran.
    let track = Delegation::extract(&record.track_invocation_bytes).map_err(|e| e.to_string())?;
    let task = consolidate_task(ctx.signer.as_ref(), &track).map_err(|e| e.to_string())?;
    let mut linked: BlockStore = task.export().into_iter().collect();
    linked.insert(receipt.block().clone());
    let receipt =
        Receipt::from_blocks(&receipt.cid(), Arc::new(linked)).map_err(|e| e.to_string())?;
    let message =
        AgentMessage::build(&[], std::slice::from_ref(&receipt)).map_err(|e| e.to_string())?;

    let conclusion = Conclusion {
        batch,
        consolidate_invocation: task.cid(),
        receipt: receipt.cid(),
        receipt_bytes: message.to_car(),
        node: record.node.clone(),
        total_bytes: total,
        usage: daily_usage(&tally.usage),
        counted_receipts: tally.listed,
        staged_tally: tally.staged,
        non_billable: daily_usage(&tally.non_billable),
        concluded_at: now(),
        claims_end: staging.claims_end,
        rejected,
        failure,
    };
    let non_billable: u64 = tally.non_billable.values().sum();
    let receipt_cid = receipt.cid();
    match ctx.store(move |store| store.conclude(&conclusion)).await {
        Ok(ConcludeOutcome::Concluded) => {
            Metrics::add(&ctx.metrics.concluded_batches, 1);
            Metrics::add(&ctx.metrics.consolidated_bytes, total);
            Metrics::add(&ctx.metrics.non_billable_bytes, non_billable);
            Metrics::add(&ctx.metrics.rejected_receipts, rejected_count);
            tracing::info!(%batch, receipt = %receipt_cid, total, "batch concluded");
            Ok(Response::ok(ConcludeOk::default().to_ipld()))
        }
        Ok(ConcludeOutcome::AlreadyConcluded { receipt }) if receipt == receipt_cid => {
            Ok(Response::ok(ConcludeOk::default().to_ipld()))
        }
        Ok(ConcludeOutcome::AlreadyConcluded { receipt }) => {
            Err(format!("batch {batch} was concluded with receipt {receipt}").into())
        }
        Err(StoreError::Conflict { retrievals }) => Err(Refusal::Conflict(retrievals)),
        // A conclusion the store can never keep: refused, typed.
        Err(StoreError::Invalid(why)) => Err(format!("cannot conclude: {why}").into()),
        // Busy (throttled, contended): the record stays pending and the
        // task runs again.
        Err(e) if e.is_transient() => Err(format!("not concluded yet: {e}").into()),
        Err(e) => Err(Refusal::Unexpected(e)),
    }
}

fn daily_usage(usage: &Usage) -> Vec<DailyUsage> {
    usage
        .iter()
        .map(|((space, day), bytes)| DailyUsage {
            space: space.clone(),
            day: day.clone(),
            bytes: *bytes,
        })
        .collect()
}

/// `errors[]` counted by name. The last entry, when it is `TooManyErrors`,
/// stands for the receipts not listed, which its message counts by name
/// (`Name ×n, …`); its receipts are counted under those names.
fn rejections_by_name(
    errors: &[etracker_capabilities::consolidate::ReceiptError],
) -> Vec<(String, u64)> {
    use crate::consolidator::{unlisted_counts, TOO_MANY_ERRORS};
    let mut by_name: std::collections::BTreeMap<String, u64> = Default::default();
    for error in errors {
        let unlisted = (error.name == TOO_MANY_ERRORS)
            .then(|| unlisted_counts(&error.message))
            .flatten();
        match unlisted {
            Some(counts) => {
                for (name, n) in counts {
                    *by_name.entry(name).or_default() += n;
                }
            }
            None => *by_name.entry(error.name.clone()).or_default() += 1,
        }
    }
    by_name.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use etracker_capabilities::consolidate::ReceiptError;

    fn error(name: &str, message: &str) -> ReceiptError {
        ReceiptError {
            name: name.into(),
            message: message.into(),
            receipt: cid::Cid::default(),
        }
    }

    #[test]
    fn rejections_count_listed_and_unlisted_receipts_by_name() {
        let errors = [
            error("InvalidSignature", "bad"),
            error("DuplicateReceipt", "again"),
            error("InvalidSignature", "bad"),
            error(
                crate::consolidator::TOO_MANY_ERRORS,
                "7 more receipt(s) not counted and not listed: InvalidSignature ×5, WrongIssuer ×2",
            ),
        ];
        assert_eq!(
            rejections_by_name(&errors),
            [
                ("DuplicateReceipt".to_string(), 1),
                ("InvalidSignature".to_string(), 7),
                ("WrongIssuer".to_string(), 2),
            ]
        );
        // A TooManyErrors entry that does not count by name counts as one.
        let odd = [error(crate::consolidator::TOO_MANY_ERRORS, "lots")];
        assert_eq!(
            rejections_by_name(&odd),
            [(crate::consolidator::TOO_MANY_ERRORS.to_string(), 1)]
        );
    }
}
