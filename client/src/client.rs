//! The node's side of the tracker protocol: `space/egress/track` a batch, then
//! fetch and verify the consolidate receipt.
//!
//! # Format
//! ```text
//! POST {tracker}/                      space/egress/track
//!   invocation  iss: node, aud: tracker, with: tracker,
//!               nb: {receipts: Link<batch>, endpoint: "https://node/receipts/{cid}"},
//!               prf: [tracker → node delegation]
//!   receipt     ok {} with fx.fork = [consolidate invocation],
//!               consolidate: iss = with = tracker, nb: {cause: Link<track invocation>}
//! GET {tracker}/receipts/{consolidate CID}
//!   404 while the task runs; then a CAR agent message whose report maps
//!   the consolidate invocation CID to its receipt:
//!   ok {totalEgress, errors: [{name, message, receipt}]} | error {name, message}
//! ```

use std::sync::Arc;
use std::time::Duration;

use cid::Cid;
use etracker_capabilities::consolidate::{Consolidate, ConsolidateOk};
use etracker_capabilities::track::{Track, TrackNb};
use etracker_capabilities::{Ability, Outcome, SchemaError};
use ucanto::client::{ClientError, Connection, HttpChannel};
use ucanto::dag::{CodecError, Ipld};
use ucanto::message::{AgentMessage, MessageError};
use ucanto::principal::{Did, Signer, Verifier};
use ucanto::receipt::Receipt;
use ucanto::transport::CAR_CONTENT_TYPE;
use ucanto::ucan::{Delegation, Invocation};
use url::Url;

/// The error name of a consolidate receipt that means "not yet, retrying"
/// (etracker's consolidator; never published as final, but treated as
/// pending if it is).
pub const RETRY: &str = "EgressConsolidateRetry";

/// Default timeout of one request to the tracker.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The tracker accepted a batch: the track invocation and the consolidate
/// task it forked (whose receipt to poll for).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tracked {
    /// The `space/egress/track` invocation.
    pub track: Cid,
    /// The `space/egress/consolidate` invocation forked by the tracker.
    pub consolidate: Cid,
}

/// A failure to build an [`EgressClient`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No endpoint was given.
    #[error("the endpoint where the tracker fetches batches is required")]
    MissingEndpoint,
    /// The endpoint is not an absolute http(s) URL with a `{cid}` placeholder.
    #[error("invalid endpoint: {0}")]
    Endpoint(#[source] SchemaError),
    /// The tracker URL does not parse.
    #[error("invalid tracker URL {url:?}: {reason}")]
    TrackerUrl {
        /// The URL given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// A failure of [`EgressClient::track`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrackError {
    /// The invocation could not be built.
    #[error("cannot build the track invocation: {0}")]
    Invocation(#[source] CodecError),
    /// No verified receipt came back (transport, HTTP status, bad signature).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The tracker answered with an error receipt.
    #[error("the tracker refused the batch: {0}")]
    Refused(Failure),
    /// The receipt does not fork exactly one task.
    #[error("expected exactly one fork in the track receipt, found {0}")]
    ForkCount(usize),
    /// The forked invocation is not among the receipt's blocks.
    #[error("the forked invocation {0} is not among the receipt's blocks")]
    MissingFork(Cid),
    /// The fork is not the consolidate task of this track invocation.
    #[error("fork {fork} is not the space/egress/consolidate of our track invocation: {reason}")]
    NotConsolidate {
        /// The forked invocation.
        fork: Cid,
        /// What is wrong.
        reason: String,
    },
}

impl TrackError {
    /// Whether trying again later may succeed (network failures, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        matches!(self, TrackError::Client(e) if e.is_transient())
    }
}

/// A failure of [`EgressClient::consolidation`] or [`Consolidation::verify`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsolidationError {
    /// The request failed or the response could not be read.
    #[error("transport failure: {0}")]
    Transport(#[source] reqwest::Error),
    /// The receipt's URL cannot be made from the tracker's.
    #[error("invalid receipt URL: {0}")]
    InvalidUrl(#[source] url::ParseError),
    /// An HTTP status other than 200 or 404.
    #[error("HTTP {status}: {body}")]
    Status {
        /// Status code.
        status: u16,
        /// Start of the response body.
        body: String,
    },
    /// The body is not a CAR agent message.
    #[error("invalid response: {0}")]
    Decode(#[from] MessageError),
    /// The message reports no (readable) receipt for the consolidate invocation.
    #[error("the response has no receipt for {consolidate}{}", .reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    MissingReceipt {
        /// The consolidate invocation asked for.
        consolidate: Cid,
        /// Why the reported receipt could not be read, if there was one.
        reason: Option<String>,
    },
    /// The receipt ran another invocation than the consolidate task asked for.
    #[error("the receipt ran {got}, not the consolidate task asked for")]
    WrongTask {
        /// What the receipt ran.
        got: Cid,
    },
    /// The receipt is not signed by the expected principal.
    #[error("receipt {receipt} is not signed by {signer}")]
    InvalidSignature {
        /// The receipt.
        receipt: Cid,
        /// Who should have signed it.
        signer: Did,
    },
    /// `out.ok` is not a `ConsolidateOk`.
    #[error("malformed consolidate result: {0}")]
    Malformed(#[source] SchemaError),
}

impl ConsolidationError {
    /// Whether trying again later may succeed (network failures, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            ConsolidationError::Transport(_) => true,
            ConsolidationError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// An error result `{name, message}` of a receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The error name, when it has one.
    pub name: Option<String>,
    /// The message, when it has one.
    pub message: String,
}

impl Failure {
    fn of(value: &Ipld) -> Self {
        let field = |key: &str| match value {
            Ipld::Map(map) => match map.get(key) {
                Some(Ipld::String(s)) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        };
        Failure {
            name: field("name"),
            message: field("message").unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.name.as_deref().unwrap_or("unnamed error"),
            self.message
        )
    }
}

/// A consolidate receipt that is verified: signed by the consolidator (the
/// tracker unless configured otherwise) and for the expected consolidate task.
/// Only [`Consolidation::verify`] makes one, so whatever holds one holds a
/// checked receipt.
#[derive(Clone, Debug)]
pub struct Consolidation {
    receipt: Receipt,
    consolidate: Cid,
    outcome: Result<ConsolidateOk, Failure>,
}

impl Consolidation {
    /// Checks that `receipt` ran `consolidate` and is signed by `signer`,
    /// and reads its result.
    pub fn verify(
        receipt: Receipt,
        consolidate: Cid,
        signer: &dyn Verifier,
    ) -> Result<Self, ConsolidationError> {
        if receipt.ran_cid() != consolidate {
            return Err(ConsolidationError::WrongTask {
                got: receipt.ran_cid(),
            });
        }
        if !receipt.verify_signature(signer) {
            return Err(ConsolidationError::InvalidSignature {
                receipt: receipt.cid(),
                signer: signer.did().clone(),
            });
        }
        let outcome = match receipt.out() {
            Ok(value) => {
                Ok(ConsolidateOk::from_ipld(value).map_err(ConsolidationError::Malformed)?)
            }
            Err(value) => Err(Failure::of(value)),
        };
        Ok(Consolidation {
            receipt,
            consolidate,
            outcome,
        })
    }

    /// The verified receipt.
    pub fn receipt(&self) -> &Receipt {
        &self.receipt
    }

    /// The consolidate invocation it ran.
    pub fn consolidate(&self) -> Cid {
        self.consolidate
    }

    /// Its result: the totals, or why the batch could not be processed.
    pub fn outcome(&self) -> &Result<ConsolidateOk, Failure> {
        &self.outcome
    }
}

/// Talks to one tracker on behalf of one node.
///
/// Cheap to clone. Build it with [`EgressClient::builder`].
#[derive(Clone)]
pub struct EgressClient {
    inner: Arc<Inner>,
}

struct Inner {
    node: Arc<dyn Signer>,
    tracker: Arc<dyn Verifier>,
    consolidator: Arc<dyn Verifier>,
    connection: Connection,
    base: Url,
    proofs: Vec<Delegation>,
    endpoint: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for EgressClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressClient")
            .field("node", self.inner.node.did())
            .field("tracker", self.inner.tracker.did())
            .field("url", &self.inner.base.as_str())
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

/// Builds an [`EgressClient`].
pub struct EgressClientBuilder {
    node: Arc<dyn Signer>,
    tracker: Arc<dyn Verifier>,
    consolidator: Option<Arc<dyn Verifier>>,
    url: String,
    proofs: Vec<Delegation>,
    endpoint: Option<String>,
    http: Option<reqwest::Client>,
    timeout: Duration,
}

impl EgressClientBuilder {
    /// Adds a proof that the node may invoke `space/egress/track` on the
    /// tracker: the tracker → node delegation (or the last link of a chain
    /// that starts at the tracker).
    pub fn proof(mut self, proof: Delegation) -> Self {
        self.proofs.push(proof);
        self
    }

    /// Where the tracker fetches batches: an absolute http(s) URL with a
    /// `{cid}` placeholder, e.g. `https://node.example/receipts/{cid}`
    /// (see [`crate::router`]).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Who signs consolidate receipts, when not the tracker itself.
    pub fn consolidator(mut self, consolidator: Arc<dyn Verifier>) -> Self {
        self.consolidator = Some(consolidator);
        self
    }

    /// Uses a configured HTTP client (TLS, proxies, pools) for both routes.
    /// The builder's timeout then does not apply.
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// Timeout of one request (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Checks the configuration and builds the client.
    pub fn build(self) -> Result<EgressClient, BuildError> {
        let endpoint = self.endpoint.ok_or(BuildError::MissingEndpoint)?;
        etracker_capabilities::track::check_endpoint(&endpoint).map_err(BuildError::Endpoint)?;
        let bad_url = |reason: String| BuildError::TrackerUrl {
            url: self.url.clone(),
            reason,
        };
        let mut base = Url::parse(&self.url).map_err(|e| bad_url(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad_url("not an http(s) URL".into()));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base.set_query(None);
        base.set_fragment(None);
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder()
                .timeout(self.timeout)
                .build()
                .map_err(|e| BuildError::Http(e.to_string()))?,
        };
        let channel = HttpChannel::with_client(base.as_str(), http.clone());
        let connection = Connection::new(self.tracker.clone(), Arc::new(channel));
        Ok(EgressClient {
            inner: Arc::new(Inner {
                consolidator: self.consolidator.unwrap_or_else(|| self.tracker.clone()),
                node: self.node,
                tracker: self.tracker,
                connection,
                base,
                proofs: self.proofs,
                endpoint,
                http,
            }),
        })
    }
}

impl EgressClient {
    /// Starts building a client for `node` (its signer), talking to the
    /// tracker verified by `tracker` (its DID, e.g. did:web, and key) at
    /// `tracker_url` (where it serves `POST /` and `GET /receipts/{cid}`).
    pub fn builder(
        node: Arc<dyn Signer>,
        tracker: Arc<dyn Verifier>,
        tracker_url: impl Into<String>,
    ) -> EgressClientBuilder {
        EgressClientBuilder {
            node,
            tracker,
            consolidator: None,
            url: tracker_url.into(),
            proofs: Vec::new(),
            endpoint: None,
            http: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The node's DID.
    pub fn node(&self) -> &Did {
        self.inner.node.did()
    }

    /// The tracker's DID.
    pub fn tracker(&self) -> &Did {
        self.inner.tracker.did()
    }

    /// The endpoint template sent with every track invocation.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The `space/egress/track` invocation for `batch`.
    ///
    /// It has no expiry and no nonce, so — like the consolidate task it
    /// forks — its CID is a pure function of the node, the tracker, the
    /// batch, the endpoint and the proofs: a track retried after a lost
    /// response (or a crash) is the same invocation, and the tracker's
    /// idempotent answer (the task it forked the first time) still names it
    /// as `nb.cause`. Replaying it can only re-track the same batch for the
    /// same node, which trackers treat as a no-op.
    pub fn track_invocation(&self, batch: Cid) -> Result<Invocation, TrackError> {
        let inner = &self.inner;
        let tracker = inner.tracker.did();
        let nb = TrackNb {
            receipts: batch,
            endpoint: inner.endpoint.clone(),
        };
        let mut builder = Delegation::builder(inner.node.as_ref(), tracker.clone())
            .capability(Track::capability(tracker, &nb))
            .no_expiration();
        for proof in &inner.proofs {
            builder = builder.proof(proof.clone());
        }
        builder.build().map_err(TrackError::Invocation)
    }

    /// Asks the tracker to account for `batch`, which must be served at the
    /// endpoint. Returns the consolidate task to poll for with
    /// [`consolidation`](Self::consolidation).
    pub async fn track(&self, batch: Cid) -> Result<Tracked, TrackError> {
        let invocation = self.track_invocation(batch)?;
        let receipt = self.inner.connection.invoke(&invocation).await?;
        tracked(self.inner.tracker.did(), &invocation, &receipt)
    }

    /// The verified consolidate receipt of task `consolidate`, or `None`
    /// while the tracker has none (HTTP 404, or a verified
    /// [`RETRY`] receipt).
    pub async fn consolidation(
        &self,
        consolidate: Cid,
    ) -> Result<Option<Consolidation>, ConsolidationError> {
        let url = self
            .inner
            .base
            .join(&format!("receipts/{consolidate}"))
            .map_err(ConsolidationError::InvalidUrl)?;
        let response = self
            .inner
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, CAR_CONTENT_TYPE)
            .send()
            .await
            .map_err(ConsolidationError::Transport)?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = response
            .bytes()
            .await
            .map_err(ConsolidationError::Transport)?;
        if status != reqwest::StatusCode::OK {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(ConsolidationError::Status {
                status: status.as_u16(),
                body: text,
            });
        }
        let message = AgentMessage::from_car(&body)?;
        let receipt = match message.receipt_for(&consolidate) {
            Some(Ok(receipt)) => receipt,
            Some(Err(e)) => {
                return Err(ConsolidationError::MissingReceipt {
                    consolidate,
                    reason: Some(e.to_string()),
                })
            }
            None => {
                return Err(ConsolidationError::MissingReceipt {
                    consolidate,
                    reason: None,
                })
            }
        };
        let consolidation =
            Consolidation::verify(receipt, consolidate, self.inner.consolidator.as_ref())?;
        // A verified "try again later" is still pending.
        match consolidation.outcome() {
            Err(failure) if failure.name.as_deref() == Some(RETRY) => Ok(None),
            _ => Ok(Some(consolidation)),
        }
    }
}

/// Reads a (verified) track receipt: ok, exactly one fork, and that fork a
/// `space/egress/consolidate` issued by `tracker` on itself whose `nb.cause`
/// is `invocation`.
pub fn tracked(
    tracker: &Did,
    invocation: &Invocation,
    receipt: &Receipt,
) -> Result<Tracked, TrackError> {
    if let Err(error) = receipt.out() {
        return Err(TrackError::Refused(Failure::of(error)));
    }
    let track = invocation.cid();
    let forks = &receipt.data().fx.fork;
    let [fork] = forks.as_slice() else {
        return Err(TrackError::ForkCount(forks.len()));
    };
    let task = Delegation::from_blocks(fork, receipt.blocks().clone())
        .map_err(|_| TrackError::MissingFork(*fork))?;
    let wrong = |reason: String| TrackError::NotConsolidate {
        fork: *fork,
        reason,
    };
    let [capability] = task.capabilities() else {
        return Err(wrong(format!("{} capabilities", task.capabilities().len())));
    };
    let parsed = Consolidate::parse(capability).map_err(|e| wrong(e.to_string()))?;
    if parsed.nb.cause != track {
        return Err(wrong(format!(
            "nb.cause is {}, our track invocation is {track}",
            parsed.nb.cause
        )));
    }
    if &parsed.with != tracker || task.issuer() != tracker {
        return Err(wrong(format!(
            "issued by {} on {}, expected {tracker}",
            task.issuer(),
            parsed.with
        )));
    }
    Ok(Tracked {
        track,
        consolidate: *fork,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors stay under clippy's `result_large_err` threshold, so callers'
    /// `Result`s do not trip it.
    #[test]
    fn errors_stay_small() {
        assert!(std::mem::size_of::<TrackError>() <= 128);
        assert!(std::mem::size_of::<ConsolidationError>() <= 128);
        assert!(std::mem::size_of::<BuildError>() <= 128);
    }
}
