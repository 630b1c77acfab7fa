//! A storage node for tests: retrieve receipts, batches in the Piri format, a
//! batch server that can go offline, and a running tracker.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cid::Cid;
use etracker_capabilities::consolidate::{ConsolidateError, ConsolidateOk};
use etracker_capabilities::track::TrackNb;
use etracker_capabilities::{read_out, Ability, Track};
use etracker_server::service::{Settings, SpaceRule, Tracker};
use etracker_server::store::redb::RedbStore;
use ucanto::client::Connection;
use ucanto::dag::{cid_of, Ipld, IpldMap, CAR};
use ucanto::message::AgentMessage;
use ucanto::principal::{Absentee, Did, Ed25519Signer, Signer};
use ucanto::receipt::{Receipt, ReceiptParts};
use ucanto::ucan::{now, Capability, Delegation, Invocation};

use crate::principal;

pub use ucanto::principal::fixtures::node;

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("etracker-e2e-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// `space` lets `agent` retrieve from it (no expiry).
pub fn retrieve_delegation(space: &Ed25519Signer, agent: &Did) -> Delegation {
    Delegation::builder(space, agent.clone())
        .capability(Capability::new(
            "space/content/retrieve",
            space.did().as_str(),
        ))
        .no_expiration()
        .build()
        .expect("delegation")
}

/// `space/content/retrieve` of `[start, end]` of a blob, by `agent` on `space`, addressed to `node`.
pub fn retrieve_invocation(
    agent: &Ed25519Signer,
    node: &Did,
    space: &Did,
    start: u64,
    end: u64,
    proofs: &[Delegation],
    nonce: &str,
) -> Invocation {
    let digest = {
        let mut mh = vec![0x12, 0x20];
        mh.extend_from_slice(cid_of(0x55, nonce.as_bytes()).hash().digest());
        mh
    };
    let nb = IpldMap::from([
        (
            "blob".to_string(),
            Ipld::Map(IpldMap::from([("digest".to_string(), Ipld::Bytes(digest))])),
        ),
        (
            "range".to_string(),
            Ipld::List(vec![Ipld::Integer(start.into()), Ipld::Integer(end.into())]),
        ),
    ]);
    let mut builder = Delegation::builder(agent, node.clone())
        .capability(Capability::new("space/content/retrieve", space.as_str()).with_nb(nb))
        .expiration(now() + 30)
        .nonce(nonce);
    for proof in proofs {
        builder = builder.proof(proof.clone());
    }
    builder.build().expect("retrieve invocation")
}

/// The node's ok receipt for `invocation`.
pub fn ok_receipt(node: &Ed25519Signer, invocation: &Invocation) -> Receipt {
    Receipt::issue(
        node,
        ReceiptParts::new(invocation, Ok(Ipld::Map(IpldMap::new()))),
    )
    .expect("receipt")
}

/// A batch in the Piri format: empty roots, one receipt archive per block
/// under a CID with codec car. Returns (batch CID, bytes).
pub fn batch(receipts: &[Receipt]) -> (Cid, Vec<u8>) {
    let blocks = receipts.iter().map(|r| {
        let archive = r.archive().expect("archive");
        (cid_of(CAR, &archive), archive)
    });
    let bytes = ucanto::car::encode(&[], blocks);
    (cid_of(CAR, &bytes), bytes)
}

/// Receipts of `n` good retrievals from alice's space by bob, served by the node;
/// returns them and the bytes they add up to.
pub fn good_receipts(n: u64, tag: &str) -> (Vec<Receipt>, u64) {
    good_receipts_of(&node(), n, tag)
}

/// [`good_receipts`] served by `node`.
pub fn good_receipts_of(node: &Ed25519Signer, n: u64, tag: &str) -> (Vec<Receipt>, u64) {
    let (node, space, agent) = (node.clone(), crate::alice(), crate::bob());
    let proof = retrieve_delegation(&space, agent.did());
    let mut receipts = Vec::new();
    let mut total = 0;
    for i in 0..n {
        let (start, end) = (i * 1000, i * 1000 + 99 + i);
        total += end - start + 1;
        let inv = retrieve_invocation(
            &agent,
            node.did(),
            space.did(),
            start,
            end,
            std::slice::from_ref(&proof),
            &format!("{tag}-{i}"),
        );
        receipts.push(ok_receipt(&node, &inv));
    }
    (receipts, total)
}

/// Batches served at `GET /receipts/{cid}`, with switches to misbehave.
#[derive(Clone, Default)]
pub struct BatchServer {
    batches: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// Answer 503 instead of the batch.
    pub failing: Arc<std::sync::atomic::AtomicBool>,
    /// Send half the batch, then stall this long.
    pub stall: Arc<Mutex<Option<Duration>>>,
    /// Send half the batch, pause this long, then send the rest: a slow node.
    pub slow: Arc<Mutex<Option<Duration>>>,
    /// Requests for a batch answered so far.
    pub gets: Arc<std::sync::atomic::AtomicU64>,
}

impl BatchServer {
    /// Serves `bytes` under `cid` (any CID: tests also serve wrong bytes).
    pub fn put(&self, cid: &Cid, bytes: Vec<u8>) {
        self.batches.lock().unwrap().insert(cid.to_string(), bytes);
    }

    /// The router.
    pub fn router(&self) -> axum::Router {
        async fn get(State(s): State<BatchServer>, Path(cid): Path<String>) -> Response {
            s.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if s.failing.load(std::sync::atomic::Ordering::Relaxed) {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            let Some(bytes) = s.batches.lock().unwrap().get(&cid).cloned() else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let stall = *s.stall.lock().unwrap();
            let slow = *s.slow.lock().unwrap();
            let half = bytes.len() / 2;
            match (stall, slow) {
                (Some(pause), _) => {
                    let stream = futures_stall(vec![bytes[..half].to_vec(), Vec::new()], pause);
                    axum::body::Body::from_stream(stream).into_response()
                }
                (None, Some(pause)) => {
                    let parts = vec![bytes[..half].to_vec(), bytes[half..].to_vec()];
                    axum::body::Body::from_stream(futures_stall(parts, pause)).into_response()
                }
                (None, None) => bytes.into_response(),
            }
        }
        axum::Router::new()
            .route("/receipts/{cid}", axum::routing::get(get))
            .with_state(self.clone())
    }

    /// Serves on 127.0.0.1; returns the endpoint template `http://…/receipts/{cid}`.
    pub async fn serve(&self) -> String {
        format!("{}receipts/{{cid}}", crate::serve(self.router()).await)
    }
}

/// The parts with `pause` of silence between them: a node that is slow
/// (the whole batch in two parts) or stalls mid-batch (half, then nothing).
fn futures_stall(
    parts: Vec<Vec<u8>>,
    pause: Duration,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(
        (parts.into_iter(), true),
        move |(mut parts, first)| async move {
            if !first {
                tokio::time::sleep(pause).await;
            }
            let part = parts.next()?;
            Some((Ok(bytes::Bytes::from(part)), (parts, false)))
        },
    )
}

/// Tracker settings for tests: tiny batches allowed, immediate retries.
pub fn test_settings() -> Settings {
    let mut settings = Settings::default();
    settings.limits.min_size = 0;
    // Nodes in tests serve on 127.0.0.1.
    settings.limits.allow_private_endpoints = true;
    settings.limits.scratch_dir = temp_dir("scratch");
    settings.retry_base_secs = 0;
    settings.interval = Duration::from_secs(3600);
    // Every authorized space counts here; the billable-space tests set their
    // own policy.
    settings.space_rule = SpaceRule::Any;
    settings.admin_token = Some(ADMIN_TOKEN.into());
    settings
}

/// The admin token of [`test_settings`]' trackers: every admin route
/// (`/consolidate`, `/metrics`, `/admin/*`) needs it as a bearer.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A tracker (signed by `service`) on a fresh redb store, served over HTTP.
pub struct RunningTracker {
    /// The tracker.
    pub tracker: Arc<Tracker>,
    /// Its store.
    pub store: Arc<RedbStore>,
    /// Base URL, ending in `/`.
    pub url: String,
}

/// Starts a tracker with `settings`.
pub async fn start_tracker(settings: Settings) -> RunningTracker {
    let store = Arc::new(RedbStore::open(&temp_dir("store")).expect("store"));
    let tracker = Tracker::new(Arc::new(crate::service()), store.clone(), settings);
    let url = crate::serve(tracker.app()).await;
    RunningTracker {
        tracker,
        store,
        url,
    }
}

/// The delegation a node needs to track on the tracker `service`.
pub fn track_proof(service: &Ed25519Signer, node: &Did) -> Delegation {
    Delegation::builder(service, node.clone())
        .capability(Track::unrestricted(service.did()))
        .no_expiration()
        .build()
        .expect("track delegation")
}

/// The node's track invocation for `batch` at `endpoint`.
pub fn track_invocation(
    node: &Ed25519Signer,
    tracker: &Did,
    batch: Cid,
    endpoint: &str,
    proofs: &[Delegation],
) -> Invocation {
    let nb = TrackNb::new(batch, endpoint).expect("track nb");
    let mut builder =
        Delegation::builder(node, tracker.clone()).capability(Track::capability(tracker, &nb));
    for proof in proofs {
        builder = builder.proof(proof.clone());
    }
    builder.build().expect("track invocation")
}

/// `node` tracks the batch `(batch, bytes)`, served by `server` at
/// `endpoint`, on `tracker`; returns the consolidate task's CID.
pub async fn track_batch(
    tracker: &RunningTracker,
    server: &BatchServer,
    endpoint: &str,
    node: &Ed25519Signer,
    (batch, bytes): (Cid, Vec<u8>),
) -> Cid {
    server.put(&batch, bytes);
    let proof = track_proof(&crate::service(), node.did());
    let invocation = track_invocation(node, crate::service().did(), batch, endpoint, &[proof]);
    let receipt = invoke(&tracker.url, &invocation).await;
    assert!(receipt.out().is_ok(), "track: {:?}", receipt.out());
    receipt.forks()[0].cid()
}

/// Sends `invocation` to the tracker at `url` over HTTP; the receipt is verified.
pub async fn invoke(url: &str, invocation: &Invocation) -> Receipt {
    Connection::http(crate::service().verifier(), url)
        .invoke(invocation)
        .await
        .expect("receipt")
}

/// `POST /consolidate`; returns the JSON summary.
pub async fn consolidate_now(url: &str) -> serde_json::Value {
    let response = reqwest::Client::new()
        .post(format!("{url}consolidate"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("consolidate");
    assert!(response.status().is_success());
    response.json().await.expect("summary")
}

/// `GET /receipts/{task}`: `None` on 404; otherwise the receipt, checked to be
/// signed by the service and to be for `task`.
pub async fn consolidate_receipt(url: &str, task: &Cid) -> Option<Receipt> {
    let receipt = fetch_receipt(url, task).await?;
    assert!(
        receipt.verify_signature(crate::service().verifier().as_ref()),
        "signed by the service"
    );
    Some(receipt)
}

/// `GET /receipts/{task}`: `None` on 404; otherwise the receipt, checked to
/// be for `task` (whoever signed it).
pub async fn fetch_receipt(url: &str, task: &Cid) -> Option<Receipt> {
    let response = reqwest::get(format!("{url}receipts/{task}"))
        .await
        .expect("GET receipt");
    if response.status() == StatusCode::NOT_FOUND {
        return None;
    }
    assert!(response.status().is_success(), "{}", response.status());
    let message =
        AgentMessage::from_car(&response.bytes().await.expect("body")).expect("agent message");
    let receipt = message
        .receipt_for(task)
        .expect("report has the task")
        .expect("receipt decodes");
    assert_eq!(&receipt.ran_cid(), task);
    Some(receipt)
}

/// The consolidate result of `receipt`.
pub fn consolidate_out(receipt: &Receipt) -> Result<ConsolidateOk, ConsolidateError> {
    read_out::<ConsolidateOk, ConsolidateError>(receipt.out()).expect("a consolidate result")
}

/// `GET /metrics` value of `name`.
pub async fn metric(url: &str, name: &str) -> u64 {
    let text = reqwest::Client::new()
        .get(format!("{url}metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}

/// `account/egress/get` by `agent` for `account`: the account's delegation to the
/// agent, the service's attestation of it, and the spaces' delegations to the
/// account travel as proofs.
pub fn egress_get_invocation(
    account: &Absentee,
    agent: &Ed25519Signer,
    spaces: &[&Ed25519Signer],
    nb: IpldMap,
) -> Invocation {
    let service = crate::service();
    let access = Delegation::builder(account, agent.did().clone())
        .capability(Capability::new(
            "account/egress/get",
            account.did().as_str(),
        ))
        .no_expiration()
        .build()
        .expect("account delegation");
    let attest = Delegation::builder(&service, agent.did().clone())
        .capability(
            Capability::new("ucan/attest", service.did().as_str()).with_nb(IpldMap::from([(
                "proof".to_string(),
                Ipld::Link(access.cid()),
            )])),
        )
        .no_expiration()
        .build()
        .expect("attestation");
    let mut capability = Capability::new("account/egress/get", account.did().as_str());
    if !nb.is_empty() {
        capability = capability.with_nb(nb);
    }
    let mut builder = Delegation::builder(agent, service.did().clone())
        .capability(capability)
        .proof(access)
        .proof(attest);
    for space in spaces {
        let owner = Delegation::builder(*space, account.did().clone())
            .capability(Capability::new("space/*", space.did().as_str()))
            .no_expiration()
            .build()
            .expect("space delegation");
        builder = builder.proof(owner);
    }
    builder.build().expect("egress get invocation")
}

/// A consolidator deployed apart, for tests: `principal(6)`, holding the
/// tracker's conclude delegation, concluding on the tracker at `tracker_url`
/// (to be built).
pub fn remote_consolidator(
    tracker_url: &str,
) -> etracker_server::consolidator::ConsolidatorBuilder {
    let key = principal(6);
    let proof = Delegation::builder(&crate::service(), key.did().clone())
        .capability(etracker_capabilities::Conclude::unrestricted(
            crate::service().did(),
        ))
        .no_expiration()
        .build()
        .expect("conclude delegation");
    etracker_server::consolidator::Consolidator::builder(
        Arc::new(key),
        crate::service().verifier(),
        Connection::http(crate::service().verifier(), tracker_url),
    )
    .limits(test_settings().limits)
    .conclude_proofs(vec![proof])
}

/// Serves `consolidator` on `listener` (bound before the tracker started, so
/// the tracker knows its URL).
pub fn serve_consolidator(
    listener: tokio::net::TcpListener,
    consolidator: etracker_server::consolidator::Consolidator,
) {
    let app = etracker_server::consolidator::router(Arc::new(consolidator), 1 << 20)
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
}

/// Serves the batch in the file at `path` for any CID at
/// `GET /receipts/{cid}`, streamed from disk; returns the endpoint template.
pub async fn serve_file(path: PathBuf) -> String {
    async fn get(
        axum::extract::State(path): axum::extract::State<PathBuf>,
        axum::extract::Path(_cid): axum::extract::Path<String>,
    ) -> axum::body::Body {
        let file = tokio::fs::File::open(path).await.expect("batch file");
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20))
    }
    let router = axum::Router::new()
        .route("/receipts/{cid}", axum::routing::get(get))
        .with_state(path);
    format!("{}receipts/{{cid}}", crate::serve(router).await)
}

/// `from` lets `to` retrieve from `space`, within `exp`/`nbf`, on the
/// strength of `proofs`.
pub fn grant(
    from: &Ed25519Signer,
    space: &Did,
    to: &Did,
    exp: Option<u64>,
    nbf: Option<u64>,
    proofs: &[Delegation],
) -> Delegation {
    let mut builder = Delegation::builder(from, to.clone())
        .capability(Capability::new("space/content/retrieve", space.as_str()));
    builder = match exp {
        Some(exp) => builder.expiration(exp),
        None => builder.no_expiration(),
    };
    if let Some(nbf) = nbf {
        builder = builder.not_before(nbf);
    }
    for proof in proofs {
        builder = builder.proof(proof.clone());
    }
    builder.build().expect("grant")
}

/// What real JS @ucanto reads of the consolidate receipt of `task` at the
/// tracker at `url` (`fixtures/js/read-receipt.js`): `{bytes, totalEgress,
/// errors, lastError, issuer, longestMessage}`. Fails the test when JS
/// cannot decode it.
pub async fn js_read_receipt(url: &str, task: &Cid) -> serde_json::Value {
    let receipt_url = format!("{url}receipts/{task}");
    let (code, out) = crate::run_js(
        "read-receipt.js",
        &["--url", &receipt_url, "--task", &task.to_string()],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(out.trim()).expect("read-receipt.js prints one JSON line")
}

/// A batch concluded straight in the store, for dashboard and statement
/// tests that need many: batch `tag`/`n` of `node`, tracked at `n`,
/// counting `usage` (space, day, bytes) with one retrieval, or failed as
/// a whole with `failure`.
pub struct Seeded<'a> {
    /// Names the batch's CIDs apart from other tests'.
    pub tag: &'a str,
    /// The batch's number (and the second it is tracked and concluded).
    pub n: u64,
    /// The node that tracked it.
    pub node: &'a Did,
    /// Bytes per (space, day).
    pub usage: &'a [(&'a Did, &'a str, u64)],
    /// Non-billable bytes of the first usage entry's space and day.
    pub non_billable: u64,
    /// Why it failed as a whole, if it did.
    pub failure: Option<&'a str>,
}

impl Seeded<'_> {
    /// Puts and concludes it in `store`.
    pub fn conclude(&self, store: &dyn etracker_server::store::Store) {
        use etracker_server::store::{Conclusion, CountedRetrieval, DailyUsage, NewRecord};
        use ucanto::dag::DAG_CBOR;
        let (tag, n) = (self.tag, self.n);
        let batch = cid_of(CAR, format!("{tag} batch {n}").as_bytes());
        let consolidate = cid_of(DAG_CBOR, format!("{tag} consolidate {n}").as_bytes());
        store
            .put(NewRecord {
                batch,
                node: self.node.clone(),
                endpoint: "https://node.example/{cid}".into(),
                track_invocation: cid_of(DAG_CBOR, format!("{tag} track {n}").as_bytes()),
                track_invocation_bytes: vec![1],
                consolidate_invocation: consolidate,
                received_at: n,
            })
            .expect("put");
        let usage: Vec<DailyUsage> = self
            .usage
            .iter()
            .map(|(space, day, bytes)| DailyUsage {
                space: (*space).clone(),
                day: day.to_string(),
                bytes: *bytes,
            })
            .collect();
        let non_billable = match usage.first() {
            Some(first) if self.non_billable > 0 => vec![DailyUsage {
                bytes: self.non_billable,
                ..first.clone()
            }],
            _ => Vec::new(),
        };
        let counted_receipts = match self.failure {
            Some(_) => Vec::new(),
            None => vec![CountedRetrieval {
                retrieval: cid_of(DAG_CBOR, format!("{tag} retrieval {n}").as_bytes()),
                expires: 1_800_000_000,
            }],
        };
        store
            .conclude(&Conclusion {
                batch,
                consolidate_invocation: consolidate,
                receipt: cid_of(DAG_CBOR, format!("{tag} receipt {n}").as_bytes()),
                receipt_bytes: vec![2],
                node: self.node.clone(),
                total_bytes: usage.iter().map(|u| u.bytes).sum(),
                usage,
                counted_receipts,
                staged_tally: Vec::new(),
                non_billable,
                concluded_at: n,
                claims_end: u64::MAX,
                rejected: Vec::new(),
                failure: self.failure.map(str::to_string),
            })
            .expect("conclude");
    }
}
