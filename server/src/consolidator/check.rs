//! Checking the receipt archives of a batch: every rule a receipt must pass
//! to count, run on every core a bounded chunk at a time, and the bounded
//! list of the receipts that did not.

use std::collections::BTreeMap;
use std::sync::Arc;

use cid::Cid;
use etracker_capabilities::consolidate::ReceiptError;
use etracker_capabilities::payable::{self, Rules, When};
use etracker_capabilities::retrieve::{egress_of, EgressError};
use etracker_capabilities::{Ability, Retrieve};
use ucanto::dag::{CodecError, CAR};
use ucanto::principal::{Did, SignatureBatch, Verifier};
use ucanto::receipt::Receipt;
use ucanto::ucan::Invocation;
use ucanto::validator::SignatureCache;

use super::nodes::KnownNodes;

/// One receipt archive that passed every check.
pub(super) struct Counted {
    pub(super) receipt: Cid,
    /// The retrieval's identity: the payload id of its retrieve invocation
    /// (what the client signed), the same for every encoding of it, so a
    /// retrieval counts once whatever receipts a node signs for it and
    /// however it re-encodes the invocation.
    pub(super) retrieval: Cid,
    pub(super) space: Did,
    /// Days since the Unix epoch (UTC).
    pub(super) day: i64,
    pub(super) bytes: u64,
    /// The retrieval's own expiry ([`payable::Judgement::expires`]).
    pub(super) expires: u64,
    /// False when a non-billable actor made the retrieval.
    pub(super) billable: bool,
}

/// Archives checked per blocking task, split across the cores: on two,
/// 512 archives and so 1,024 signatures per batch verification, where the
/// multiscalar multiplication costs about a fifth less per signature than
/// at half that. Only the chunk's bytes are held (this one and the next,
/// read while it is checked); what an archive is read into is dropped as
/// soon as it is judged.
pub const CHECK_CHUNK: usize = 1024;

/// Bytes of archives checked per blocking task, at most (a chunk ends at
/// whichever of this and [`CHECK_CHUNK`] comes first): honest archives
/// (~1.2 KB) fill a chunk by count, padded ones by bytes, so the two chunks
/// in hand never hold more than about twice this.
pub const CHECK_CHUNK_BYTES: usize = 8 << 20;

/// What checking one archive concluded.
pub(super) enum Checked {
    Counted(Counted),
    /// A valid receipt of a failed retrieval.
    NoEgress,
    Rejected(ReceiptError),
    /// Judging it failed on our side (the store): the batch is retried.
    Failed(String),
}

/// Receipt errors of one batch, bounded so that the consolidate receipt
/// stays small whatever the batch holds: the first [`MAX_LISTED_ERRORS`] in
/// batch order are listed, whenever they are found.
#[derive(Default)]
pub(super) struct Rejections {
    /// Errors listed, by the position of their receipt in the batch.
    listed: BTreeMap<u64, ReceiptError>,
    /// Errors past the bound, by name.
    unlisted: BTreeMap<String, u64>,
    /// The first receipt not listed, and its position.
    first_unlisted: Option<(u64, Cid)>,
}

impl Rejections {
    /// Whether an error of the receipt at `seq` would name its receipt
    /// (listed, or the first unlisted); when not, [`Rejections::count`] it.
    pub(super) fn names(&self, seq: u64) -> bool {
        self.listed.len() < MAX_LISTED_ERRORS
            || self
                .listed
                .last_key_value()
                .is_some_and(|(last, _)| seq < *last)
            || self.first_unlisted.is_none_or(|(first, _)| seq < first)
    }

    /// Counts an error that [`Rejections::names`] said would not be named.
    pub(super) fn count(&mut self, name: &str) {
        *self.unlisted.entry(name.to_string()).or_default() += 1;
    }

    /// The error of the receipt at `seq`, its message cut to
    /// [`ucanto::bounded::MAX_MESSAGE_BYTES`]: what a validator explains
    /// grows with what the node sent.
    pub(super) fn push(&mut self, seq: u64, mut error: ReceiptError) {
        error.message = ucanto::bounded::message(error.message);
        self.listed.insert(seq, error);
        if self.listed.len() > MAX_LISTED_ERRORS {
            if let Some((seq, error)) = self.listed.pop_last() {
                if self.first_unlisted.is_none_or(|(first, _)| seq < first) {
                    self.first_unlisted = Some((seq, error.receipt));
                }
                self.count(&error.name);
            }
        }
    }

    /// `errors[]`: the first [`MAX_LISTED_ERRORS`] errors, then, if there were
    /// more, one `TooManyErrors` entry that counts the rest by name and names
    /// the first of them (or the batch).
    ///
    /// The listed messages share [`LISTED_MESSAGE_BUDGET`] bytes: each gets
    /// at most its fair share of what is left (and never more than
    /// 1 KiB), so short messages leave room for long ones after them and
    /// the receipt stays small whatever the validator explained.
    pub(super) fn into_errors(self, batch: &Cid) -> Vec<ReceiptError> {
        let listed = self.listed.len();
        let mut left = LISTED_MESSAGE_BUDGET;
        let mut errors: Vec<ReceiptError> = Vec::with_capacity(listed + 1);
        for (i, mut error) in self.listed.into_values().enumerate() {
            let share = (left / (listed - i)).min(ucanto::bounded::MAX_MESSAGE_BYTES);
            error.message = ucanto::bounded::cut(error.message, share);
            left -= error.message.len().min(left);
            errors.push(error);
        }
        if !self.unlisted.is_empty() {
            let total: u64 = self.unlisted.values().sum();
            let by_name: Vec<String> = self
                .unlisted
                .iter()
                .map(|(name, n)| format!("{name}{UNLISTED_COUNT}{n}"))
                .collect();
            errors.push(ReceiptError {
                name: TOO_MANY_ERRORS.into(),
                message: format!(
                    "{total} more receipt(s) not counted and not listed{UNLISTED_FROM}{}",
                    by_name.join(UNLISTED_BETWEEN)
                ),
                receipt: self.first_unlisted.map_or(*batch, |(_, cid)| cid),
            });
        }
        errors
    }
}

/// How a `TooManyErrors` message counts the receipts it stands for:
/// `…<UNLISTED_FROM>Name<UNLISTED_COUNT>n<UNLISTED_BETWEEN>Name…`.
const UNLISTED_FROM: &str = ": ";
const UNLISTED_COUNT: &str = " ×";
const UNLISTED_BETWEEN: &str = ", ";

/// The receipts a `TooManyErrors` entry's message counts, by error name, as
/// `Rejections::into_errors` writes them; `None` when it counts none.
pub fn unlisted_counts(message: &str) -> Option<Vec<(String, u64)>> {
    let (_, counts) = message.split_once(UNLISTED_FROM)?;
    let counts: Vec<(String, u64)> = counts
        .split(UNLISTED_BETWEEN)
        .filter_map(|part| {
            let (name, n) = part.split_once(UNLISTED_COUNT)?;
            Some((name.to_string(), n.parse().ok()?))
        })
        .collect();
    (!counts.is_empty()).then_some(counts)
}

/// Most receipt errors listed one by one in a consolidate receipt: with
/// [`LISTED_MESSAGE_BUDGET`], the receipt stays under 256 KiB, well under
/// the block size any ucanto client reads.
pub const MAX_LISTED_ERRORS: usize = 1000;
/// Bytes of message all listed errors share: with 1,000 entries (~90
/// bytes each besides the message) and the task, the consolidate receipt
/// stays under 256 KiB.
pub const LISTED_MESSAGE_BUDGET: usize = 128 * 1024;
/// Name of the last `errors[]` entry when more receipts were rejected than listed.
pub const TOO_MANY_ERRORS: &str = "TooManyErrors";
/// Signature verifications a batch may spend before its first receipt.
pub(super) const BATCH_SIGNATURE_ALLOWANCE: u64 = 10_000;
/// Signature verifications each receipt read adds to its batch's budget:
/// an honest receipt needs two fresh ones (its own, its invocation's), the
/// proofs it shares with the rest of the batch are verified once.
pub(super) const SIGNATURES_PER_RECEIPT: u64 = 4;
/// What checking a receipt needs: the node, the rules of who pays and
/// when, the nodes the tracker knows, and the batch's shared signature
/// cache and budget.
pub(super) struct Checks {
    pub(super) max_retrieval: u64,
    pub(super) rules: Rules,
    pub(super) when: When,
    pub(super) known_nodes: Arc<KnownNodes>,
    pub(super) signatures: Arc<SignatureCache>,
    pub(super) node: Did,
    pub(super) node_verifier: Arc<dyn Verifier>,
}

impl Checks {
    /// Checks `archives` on all available cores, one part per core on
    /// rayon's pool; results in batch order. The pool's threads live as
    /// long as the process: threads made per chunk would each cost a spawn
    /// and leave the allocator with more memory to hold.
    pub(super) fn check_chunk(&self, archives: &[(u64, Cid, axum::body::Bytes)]) -> Vec<Checked> {
        use rayon::prelude::*;
        let threads = rayon::current_num_threads();
        if threads == 1 || archives.len() < 2 * threads {
            return self.check_part(archives);
        }
        let per_thread = archives.len().div_ceil(threads);
        let parts: Vec<Vec<Checked>> = archives
            .par_chunks(per_thread)
            .map(|part| self.check_part(part))
            .collect();
        parts.into_iter().flatten().collect()
    }

    /// Checks a run of archives. Each is read and judged as if its
    /// signatures, and its retrieval's, were valid, and only those
    /// signatures are kept (reduced: nothing they were read from); then
    /// they are verified in one batch. When all are valid, so are the
    /// judgements. When any is not (or a receipt's payload cannot be made),
    /// nothing is presumed: every archive is judged again, each signature
    /// verified alone and the bad one reported, as without this step (so a
    /// node that sends a bad signature makes its own batch cost up to twice
    /// as much, never anyone else's).
    fn check_part(&self, part: &[(u64, Cid, axum::body::Bytes)]) -> Vec<Checked> {
        let mut signatures = SignatureBatch::with_capacity(2 * part.len());
        let mut judged = Vec::with_capacity(part.len());
        for (_, archive, bytes) in part {
            let checked = match self.open(archive, bytes) {
                Err(error) => Checked::Rejected(*error),
                Ok(opened) => {
                    let Some(presumed) = self.add_signatures(&opened, &mut signatures) else {
                        return self.check_each(part);
                    };
                    self.judge(opened, presumed)
                        .unwrap_or_else(|error| Checked::Rejected(*error))
                }
            };
            judged.push(checked);
        }
        if signatures.verify() {
            judged
        } else {
            self.check_each(part)
        }
    }

    /// Checks each archive alone, every signature verified on its own.
    fn check_each(&self, part: &[(u64, Cid, axum::body::Bytes)]) -> Vec<Checked> {
        part.iter()
            .map(|(_, archive, bytes)| {
                self.open(archive, bytes)
                    .and_then(|o| self.judge(o, Signatures::Unchecked))
                    .unwrap_or_else(|error| Checked::Rejected(*error))
            })
            .collect()
    }

    /// Adds the receipt's signature, and its retrieval's when the retrieval
    /// could be read, to `batch`: what `judge` may then presume. `None`
    /// when the receipt's signing payload cannot be made.
    fn add_signatures(&self, o: &Opened, batch: &mut SignatureBatch) -> Option<Signatures> {
        let payload = o.receipt.signing_payload().ok()?;
        batch.push(
            self.node_verifier.as_ref(),
            &payload,
            &o.receipt.data().signature,
        );
        let retrieval = o.invocation.as_ref().ok().and_then(|invocation| {
            let verifier = ucanto::principal::verifier_for(invocation.issuer()).ok()?;
            let payload = invocation.signing_payload().ok()?;
            batch.push(verifier.as_ref(), payload, &invocation.data().signature);
            Some(verifier)
        });
        Some(Signatures::Verified { retrieval })
    }

    /// Reads a receipt archive and the retrieval it ran.
    fn open(&self, archive: &Cid, bytes: &axum::body::Bytes) -> Result<Opened, Box<ReceiptError>> {
        if archive.codec() != CAR {
            return Err(reject(
                "InvalidArchive",
                format!("block {archive} is not a receipt archive (codec car)"),
                *archive,
            ));
        }
        let receipt = Receipt::extract_shared(bytes)
            .map_err(|e| reject("InvalidArchive", e.to_string(), *archive))?;
        let invocation = Invocation::from_blocks(&receipt.ran_cid(), receipt.blocks().clone());
        Ok(Opened {
            receipt,
            invocation,
        })
    }

    /// Checks one opened receipt, all but duplicates (judged in batch order
    /// by the caller); an `Err` goes to `errors[]`.
    fn judge(&self, opened: Opened, signatures: Signatures) -> Result<Checked, Box<ReceiptError>> {
        let node = &self.node;
        let Opened {
            receipt,
            invocation,
        } = opened;
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
        let verified = matches!(signatures, Signatures::Verified { .. });
        if !verified && !receipt.verify_signature(self.node_verifier.as_ref()) {
            return Err(reject(
                "InvalidSignature",
                format!("receipt is not signed by the node {node}"),
                cid,
            ));
        }
        let ran = receipt.ran_cid();
        let invocation = match invocation {
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
        let (retrieve, size) = match egress_of(&receipt, &invocation) {
            Ok(read) => read,
            // A failed retrieval served nothing: a valid receipt with no egress.
            Err(EgressError::Failed { .. }) => return Ok(Checked::NoEgress),
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
        // The tracker is the authority, and only its configured authorities
        // attest: never the node, which would then vouch for its own receipts.
        let mut config = self.rules.validator().with_cache(self.signatures.clone());
        if let Signatures::Verified {
            retrieval: Some(verifier),
        } = signatures
        {
            config = config.presume_signed(invocation.clone(), verifier);
        }
        // Who pays, and for when (chain, time, freshness): the rules a node
        // can ask of a retrieval before serving it.
        let judged = payable::judge(&invocation, node, &self.when, &self.rules, config)
            .map_err(|refusal| reject(refusal.name(), refusal.to_string(), cid))?;
        // Replication: the authority passed through another node (never
        // this one: that is SelfAuthorized).
        let mut billable = judged.billable;
        for principal in &judged.chain {
            if !billable {
                break;
            }
            match self.known_nodes.is_node(principal) {
                Ok(known) => billable = !known,
                Err(e) => return Ok(Checked::Failed(e.to_string())),
            }
        }
        Ok(Checked::Counted(Counted {
            receipt: cid,
            retrieval,
            space: retrieve.with,
            day: (judged.at / 86_400) as i64,
            bytes: size,
            expires: judged.expires,
            billable,
        }))
    }
}

/// A receipt not counted, and why.
fn reject(name: &str, message: String, receipt: Cid) -> Box<ReceiptError> {
    Box::new(ReceiptError {
        name: name.into(),
        message,
        receipt,
    })
}

/// What `judge` takes as established about a receipt's signatures.
enum Signatures {
    /// Nothing: each is checked here.
    Unchecked,
    /// The receipt's signature is valid, and so is its retrieval's, by
    /// this verifier, when the retrieval could be read: a judgement made so
    /// is kept only once the batch holding both signatures verifies.
    Verified {
        retrieval: Option<Arc<dyn Verifier>>,
    },
}

/// A receipt archive, read, with the retrieval it ran (or why not).
struct Opened {
    receipt: Receipt,
    invocation: Result<Invocation, CodecError>,
}

/// Error name of a retrieval already counted: earlier in the batch (the same
/// archive, another receipt, or a re-encoding) or by another batch.
pub const DUPLICATE_RECEIPT: &str = "DuplicateReceipt";

/// Error name of a receipt whose retrieve invocation was re-encoded.
pub const NON_CANONICAL: &str = "NonCanonical";

#[cfg(test)]
mod tests {
    use super::*;
    use ucanto::dag::{cid_of, DAG_CBOR};

    /// The errors listed are the first in batch order, even those found
    /// after later ones (duplicates are found at the end); the rest are
    /// counted by name, naming the first of them.
    #[test]
    fn the_first_errors_in_batch_order_are_listed_whenever_found() {
        let receipt = |seq: u64| cid_of(DAG_CBOR, &seq.to_be_bytes());
        let error = |seq: u64| ReceiptError {
            name: "InvalidSignature".into(),
            message: format!("receipt {seq}"),
            receipt: receipt(seq),
        };
        let max = MAX_LISTED_ERRORS as u64;
        let mut rejected = Rejections::default();
        for seq in 1..=max + 1 {
            assert!(rejected.names(seq));
            rejected.push(seq, error(seq));
        }
        assert!(rejected.names(0), "earlier than every listed error");
        rejected.push(0, error(0));
        assert!(!rejected.names(max + 5));
        rejected.count("InvalidSignature");
        let errors = rejected.into_errors(&cid_of(ucanto::dag::CAR, b"batch"));
        assert_eq!(errors.len(), MAX_LISTED_ERRORS + 1);
        let listed: Vec<Cid> = errors[..MAX_LISTED_ERRORS]
            .iter()
            .map(|e| e.receipt)
            .collect();
        assert_eq!(listed, (0..max).map(receipt).collect::<Vec<_>>());
        let last = &errors[MAX_LISTED_ERRORS];
        assert_eq!(last.name, TOO_MANY_ERRORS);
        assert_eq!(last.receipt, receipt(max), "the first receipt not listed");
        assert!(last.message.starts_with("3 more"), "{}", last.message);
    }

    /// However long what the validator explains, each listed message is at
    /// most 1 KiB and cut with a marker, all of them share the budget, and
    /// short messages are kept whole.
    #[test]
    fn listed_messages_are_cut_and_share_a_budget() {
        let receipt = |seq: u64| cid_of(DAG_CBOR, &seq.to_be_bytes());
        let batch = cid_of(ucanto::dag::CAR, b"batch");
        let mut rejected = Rejections::default();
        for seq in 0..MAX_LISTED_ERRORS as u64 + 5 {
            let message = if seq % 2 == 0 {
                "x".repeat(2 << 20)
            } else {
                format!("short {seq}")
            };
            rejected.push(
                seq,
                ReceiptError {
                    name: "Unauthorized".into(),
                    message,
                    receipt: receipt(seq),
                },
            );
        }
        let errors = rejected.into_errors(&batch);
        assert_eq!(errors.len(), MAX_LISTED_ERRORS + 1);
        let listed = &errors[..MAX_LISTED_ERRORS];
        let total: usize = listed.iter().map(|e| e.message.len()).sum();
        assert!(total <= LISTED_MESSAGE_BUDGET, "{total}");
        for (seq, error) in listed.iter().enumerate() {
            assert!(error.message.len() <= ucanto::bounded::MAX_MESSAGE_BYTES);
            if seq % 2 == 0 {
                assert!(error.message.ends_with(" bytes cut]"), "{}", error.message);
            } else {
                assert_eq!(error.message, format!("short {seq}"));
            }
        }
        // Few errors: each long one gets its whole kilobyte.
        let mut few = Rejections::default();
        few.push(
            0,
            ReceiptError {
                name: "Unauthorized".into(),
                message: "y".repeat(5000),
                receipt: receipt(0),
            },
        );
        let errors = few.into_errors(&batch);
        assert!(errors[0].message.len() > 1000 && errors[0].message.len() <= 1024);
    }
}
