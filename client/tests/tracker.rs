//! EgressClient, reconcile and settle against an in-process fake tracker: a
//! real `ucanto::server::Server` providing `space/egress/track` (ok + fork of
//! `consolidate_invocation`) and an axum `GET /receipts/{cid}`, both over
//! real HTTP on 127.0.0.1, fetching the batch from the node's own router.
//! The fake can be told to misbehave, one way per test.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;
use axum::Router;
use cid::Cid;
use common::*;
use etracker_capabilities::consolidate::{
    consolidate_invocation, Consolidate, ConsolidateError, ConsolidateNb, ConsolidateOk,
    ReceiptError,
};
use etracker_capabilities::retrieve::egress_bytes;
use etracker_capabilities::track::{Track, TrackNb};
use etracker_capabilities::{Ability, Outcome};
use etracker_client::{
    reconcile, BatchJournal, BatchRecord, BatchState, Consolidation, ConsolidationError,
    EgressClient, Event, JournalError, Reporter, Settlement, TrackError, Tracked, Verdict,
};
use ucanto::client::ClientError;
use ucanto::dag::{Ipld, IpldMap};
use ucanto::message::AgentMessage;
use ucanto::principal::{Ed25519Signer, Signer};
use ucanto::receipt::{Receipt, ReceiptParts};
use ucanto::server::{HandlerError, Request, Response, Server};
use ucanto::transport::{CAR_CONTENT_TYPE, DEFAULT_BODY_LIMIT};
use ucanto::ucan::{Delegation, Invocation};

/// How the fake answers `space/egress/track`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum TrackMode {
    /// ok + fork of `consolidate_invocation(tracker, track)`.
    Fork,
    /// `EgressTrackError`.
    Refuse,
    /// ok without fork.
    NoFork,
    /// ok + the right fork and another.
    TwoForks,
    /// ok + a consolidate fork whose cause is not the track invocation.
    WrongCause,
}

/// What the fake publishes at `/receipts/{consolidate}` once concluded.
#[derive(Clone, Debug)]
enum Answer {
    /// The batch's true total, signed by the tracker.
    Honest,
    /// The true total plus this.
    Inflated(u64),
    /// The true total, signed by another key (whatever DID it claims).
    SignedBy(Box<Ed25519Signer>),
    /// `EgressConsolidateError`.
    Fail,
    /// `EgressConsolidateRetry`: not yet.
    Retry,
    /// The first ok receipt listed in `errors` and left out of the total.
    RejectFirst,
    /// A receipt that is not in the batch listed in `errors`.
    RejectUnknown,
    /// HTTP 200 with a body that is not a CAR.
    Garbage,
    /// HTTP 200 with an agent message without the receipt.
    EmptyMessage,
}

struct FakeState {
    mode: TrackMode,
    answer: Answer,
    /// Consolidate tasks forked and the track caveats they consolidate.
    pending: Vec<(Invocation, TrackNb)>,
    /// Track invocations seen → consolidate task forked.
    tracked: Vec<(Cid, Cid)>,
    /// Response bodies by consolidate invocation CID.
    concluded: HashMap<Cid, Vec<u8>>,
}

#[derive(Clone)]
struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    fn new(mode: TrackMode, answer: Answer) -> Self {
        Fake(Arc::new(Mutex::new(FakeState {
            mode,
            answer,
            pending: Vec::new(),
            tracked: Vec::new(),
            concluded: HashMap::new(),
        })))
    }

    fn on_track(&self, req: Request) -> Result<Response, HandlerError> {
        let tracker = tracker();
        let nb = Track::parse(&req.capability).map_err(HandlerError::new)?.nb;
        let consolidate =
            consolidate_invocation(&tracker, &req.invocation).map_err(HandlerError::new)?;
        let other = Delegation::builder(&tracker, tracker.did().clone())
            .capability(Consolidate::capability(
                tracker.did(),
                &ConsolidateNb { cause: nb.receipts },
            ))
            .no_expiration()
            .build()
            .map_err(HandlerError::new)?;
        let mut state = self.0.lock().unwrap();
        let ok = Response::ok(Ipld::Map(IpldMap::new()));
        Ok(match state.mode {
            TrackMode::Fork => {
                state
                    .tracked
                    .push((req.invocation.cid(), consolidate.cid()));
                state.pending.push((consolidate.clone(), nb));
                ok.fork(consolidate)
            }
            TrackMode::Refuse => Response::failure("EgressTrackError", "no thanks"),
            TrackMode::NoFork => ok,
            TrackMode::TwoForks => ok.fork(consolidate).fork(other),
            TrackMode::WrongCause => ok.fork(other),
        })
    }

    /// Runs the pending consolidations: fetches each batch from the node's
    /// endpoint, counts it and publishes the (possibly tampered) receipt.
    async fn conclude(&self) {
        let (pending, answer) = {
            let mut state = self.0.lock().unwrap();
            (std::mem::take(&mut state.pending), state.answer.clone())
        };
        for (task, nb) in pending {
            let bytes = reqwest::get(nb.url()).await.unwrap().bytes().await.unwrap();
            assert_eq!(etracker_client::batch::batch_cid(&bytes), nb.receipts);
            let (_, blocks) = ucanto::car::decode(&bytes).unwrap();
            let receipts: Vec<Receipt> = blocks
                .iter()
                .map(|(_, archive)| Receipt::extract(archive).unwrap())
                .collect();
            let total = receipts.iter().filter_map(|r| egress_bytes(r).ok()).sum();
            let mut ok = ConsolidateOk {
                total_egress: total,
                errors: Vec::new(),
            };
            let mut signer = tracker();
            let out = match answer.clone() {
                Answer::Honest => Ok(ok.to_ipld()),
                Answer::Inflated(n) => {
                    ok.total_egress += n;
                    Ok(ok.to_ipld())
                }
                Answer::SignedBy(other) => {
                    signer = *other;
                    Ok(ok.to_ipld())
                }
                Answer::Fail => Err(ConsolidateError::new("batch is too small").to_ipld()),
                Answer::Retry => Err(ucanto::server::error_value(
                    etracker_client::client::RETRY,
                    "node unreachable".into(),
                )),
                Answer::RejectFirst => {
                    let first = receipts.iter().find(|r| egress_bytes(r).is_ok()).unwrap();
                    ok.total_egress -= egress_bytes(first).unwrap();
                    ok.errors.push(ReceiptError {
                        name: "InvalidReceipt".into(),
                        message: "not issued by the node".into(),
                        receipt: first.cid(),
                    });
                    Ok(ok.to_ipld())
                }
                Answer::RejectUnknown => {
                    ok.errors.push(ReceiptError {
                        name: "InvalidReceipt".into(),
                        message: "?".into(),
                        receipt: ok_receipt(1 << 40, 1 << 40).cid(),
                    });
                    Ok(ok.to_ipld())
                }
                Answer::Garbage | Answer::EmptyMessage => Ok(Ipld::Null),
            };
            let receipt = Receipt::issue(&signer, ReceiptParts::new(task.clone(), out)).unwrap();
            let body = match answer {
                Answer::Garbage => b"all good, trust me".to_vec(),
                Answer::EmptyMessage => AgentMessage::build(&[], &[]).unwrap().to_car(),
                _ => AgentMessage::build(&[], &[receipt]).unwrap().to_car(),
            };
            self.0.lock().unwrap().concluded.insert(task.cid(), body);
        }
    }
}

async fn receipts(State(fake): State<Fake>, Path(cid): Path<String>) -> HttpResponse {
    let Ok(cid) = cid.parse::<Cid>() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match fake.0.lock().unwrap().concluded.get(&cid) {
        Some(body) => ([(header::CONTENT_TYPE, CAR_CONTENT_TYPE)], body.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Serves `app` on 127.0.0.1 and returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Starts a fake tracker signing as `signer` and returns its URL.
async fn start_tracker(fake: Fake, signer: Ed25519Signer) -> String {
    let handler_fake = fake.clone();
    let server = Server::builder(Arc::new(signer))
        .provide(Track::parser(), move |req: Request| {
            let fake = handler_fake.clone();
            async move { fake.on_track(req) }
        })
        .build();
    let app = ucanto::transport::router(Arc::new(server), DEFAULT_BODY_LIMIT).merge(
        Router::new()
            .route("/receipts/{cid}", get(receipts))
            .with_state(fake),
    );
    serve(app).await
}

/// The tracker → node delegation of `space/egress/track`.
fn proof() -> Delegation {
    Delegation::builder(&tracker(), node().did().clone())
        .capability(Track::unrestricted(tracker().did()))
        .no_expiration()
        .build()
        .unwrap()
}

struct Setup {
    _dir: TempDir,
    journal: BatchJournal,
    batch: BatchRecord,
    fake: Fake,
    client: EgressClient,
    node_url: String,
}

/// A journal with one closed batch (1024 + 3072 ok bytes and an error
/// receipt: 4096 expected), served by the node, and a client of the fake.
async fn setup(mode: TrackMode, answer: Answer) -> Setup {
    let dir = TempDir::new("tracker");
    let journal = BatchJournal::open(dir.path(), tiny(1 << 20)).unwrap();
    for r in [
        ok_receipt(0, 1023),
        error_receipt(0, 99),
        ok_receipt(1024, 4095),
    ] {
        journal.append(&r).unwrap();
    }
    let batch = journal.rotate().unwrap().unwrap();
    assert_eq!(batch.expected_egress(), 4096);
    let node_url = serve(etracker_client::router(journal.clone())).await;
    let fake = Fake::new(mode, answer);
    let tracker_url = start_tracker(fake.clone(), tracker()).await;
    let client = EgressClient::builder(Arc::new(node()), tracker().verifier(), tracker_url)
        .proof(proof())
        .endpoint(format!("{node_url}/receipts/{{cid}}"))
        .build()
        .unwrap();
    Setup {
        _dir: dir,
        journal,
        batch,
        fake,
        client,
        node_url,
    }
}

impl Setup {
    /// Tracks the batch, checks the receipt is 404 until the fake concludes,
    /// and returns what `consolidation` says afterwards.
    async fn track_and_poll(&self) -> (Tracked, Result<Option<Consolidation>, ConsolidationError>) {
        let tracked = self.client.track(self.batch.cid).await.unwrap();
        let seen = self.fake.0.lock().unwrap().tracked.clone();
        assert_eq!(seen, vec![(tracked.track, tracked.consolidate)]);
        self.journal
            .mark_tracked(&self.batch.cid, &tracked)
            .unwrap();
        assert!(self
            .client
            .consolidation(tracked.consolidate)
            .await
            .unwrap()
            .is_none());
        self.fake.conclude().await;
        (
            tracked,
            self.client.consolidation(tracked.consolidate).await,
        )
    }

    async fn served(&self) -> StatusCode {
        let url = format!("{}/receipts/{}", self.node_url, self.batch.cid);
        StatusCode::from_u16(reqwest::get(url).await.unwrap().status().as_u16()).unwrap()
    }

    fn assert_kept(&self, disputed: bool) {
        let record = self.journal.batch(&self.batch.cid).expect("batch kept");
        assert_eq!(
            matches!(record.state, BatchState::Disputed { .. }),
            disputed,
            "{record:?}"
        );
        let bytes = self.journal.read_batch(&self.batch.cid).unwrap().unwrap();
        assert_eq!(etracker_client::batch::batch_cid(&bytes), self.batch.cid);
    }
}

// --- reconciliation outcomes -------------------------------------------------

/// Honest tracker: totals match, the batch is deleted and no longer served.
#[tokio::test]
async fn matching_totals_settle_and_delete_the_batch() {
    let s = setup(TrackMode::Fork, Answer::Honest).await;
    assert_eq!(s.served().await, StatusCode::OK);
    let (tracked, consolidation) = s.track_and_poll().await;
    let consolidation = consolidation.unwrap().expect("concluded");
    assert_eq!(consolidation.consolidate(), tracked.consolidate);
    let r = reconcile(&s.journal.batch(&s.batch.cid).unwrap(), &consolidation);
    assert_eq!(r.verdict, Verdict::Match);
    assert_eq!((r.expected_total, r.reported_total), (4096, Some(4096)));
    assert!(r.rejected.is_empty());
    assert_eq!(s.journal.settle(&r).unwrap(), Settlement::Removed);
    assert!(s.journal.batch(&s.batch.cid).is_none());
    assert!(!s
        ._dir
        .path()
        .join(format!("batches/{}.car", s.batch.cid))
        .exists());
    assert!(!s
        ._dir
        .path()
        .join(format!("batches/{}.json", s.batch.cid))
        .exists());
    assert_eq!(s.served().await, StatusCode::NOT_FOUND);
}

/// Tampered total: a mismatch; the batch is kept, disputed, and still served.
#[tokio::test]
async fn a_wrong_total_is_a_mismatch_and_the_batch_is_kept() {
    let s = setup(TrackMode::Fork, Answer::Inflated(1)).await;
    let (_, consolidation) = s.track_and_poll().await;
    let r = reconcile(
        &s.journal.batch(&s.batch.cid).unwrap(),
        &consolidation.unwrap().unwrap(),
    );
    assert_eq!(
        r.verdict,
        Verdict::Mismatch {
            expected: 4096,
            reported: 4097
        }
    );
    assert!(
        matches!(s.journal.settle(&r).unwrap(), Settlement::Kept(reason) if reason.contains("4097"))
    );
    s.assert_kept(true);
    assert_eq!(s.served().await, StatusCode::OK);
}

/// Receipts signed by another key — under its own DID or claiming the
/// tracker's — are refused before any comparison; the batch stays tracked.
#[tokio::test]
async fn a_wrong_signer_is_an_error_and_the_batch_is_kept() {
    for signer in [mallory(), mallory().with_did(tracker().did().clone())] {
        let s = setup(TrackMode::Fork, Answer::SignedBy(Box::new(signer))).await;
        let (_, consolidation) = s.track_and_poll().await;
        assert!(
            matches!(
                consolidation,
                Err(ConsolidationError::InvalidSignature { ref signer, .. }) if signer == tracker().did()
            ),
            "{consolidation:?}"
        );
        s.assert_kept(false);
    }
}

/// An error receipt (`EgressConsolidateError`) never deletes the batch.
#[tokio::test]
async fn a_consolidate_error_receipt_keeps_the_batch() {
    let s = setup(TrackMode::Fork, Answer::Fail).await;
    let (_, consolidation) = s.track_and_poll().await;
    let consolidation = consolidation.unwrap().unwrap();
    let r = reconcile(&s.journal.batch(&s.batch.cid).unwrap(), &consolidation);
    let Verdict::Failed(failure) = &r.verdict else {
        panic!("{r:?}")
    };
    assert_eq!(failure.name.as_deref(), Some("EgressConsolidateError"));
    assert_eq!(r.reported_total, None);
    assert!(matches!(s.journal.settle(&r).unwrap(), Settlement::Kept(_)));
    s.assert_kept(true);
}

/// A verified "retry later" receipt counts as pending, not as a failure.
#[tokio::test]
async fn a_retry_receipt_is_still_pending() {
    let s = setup(TrackMode::Fork, Answer::Retry).await;
    let (_, consolidation) = s.track_and_poll().await;
    assert!(consolidation.unwrap().is_none());
    s.assert_kept(false);
}

/// Rejected receipts are reported with the bytes the journal counted for
/// them; totals that agree only because of rejections still keep the batch.
#[tokio::test]
async fn rejected_receipts_are_reported_and_keep_the_batch() {
    let s = setup(TrackMode::Fork, Answer::RejectFirst).await;
    let (_, consolidation) = s.track_and_poll().await;
    let r = reconcile(
        &s.journal.batch(&s.batch.cid).unwrap(),
        &consolidation.unwrap().unwrap(),
    );
    assert_eq!(
        r.verdict,
        Verdict::Rejected {
            receipts: 1,
            bytes: 1024
        }
    );
    assert_eq!(r.reported_total, Some(3072));
    assert_eq!(r.rejected.len(), 1);
    assert_eq!(r.rejected[0].receipt, ok_receipt(0, 1023).cid());
    assert_eq!(r.rejected[0].bytes, Some(1024));
    assert_eq!(r.rejected[0].name, "InvalidReceipt");
    assert!(matches!(s.journal.settle(&r).unwrap(), Settlement::Kept(_)));
    s.assert_kept(true);

    let s = setup(TrackMode::Fork, Answer::RejectUnknown).await;
    let (_, consolidation) = s.track_and_poll().await;
    let r = reconcile(
        &s.journal.batch(&s.batch.cid).unwrap(),
        &consolidation.unwrap().unwrap(),
    );
    assert_eq!(
        r.verdict,
        Verdict::UnknownReceipts(vec![ok_receipt(1 << 40, 1 << 40).cid()])
    );
    assert_eq!(r.rejected[0].bytes, None);
    assert!(matches!(s.journal.settle(&r).unwrap(), Settlement::Kept(_)));
}

/// A bare HTTP 200 is not a receipt: garbage and a message without the
/// receipt are errors, and nothing is deleted.
#[tokio::test]
async fn a_bare_http_200_is_not_a_receipt() {
    let s = setup(TrackMode::Fork, Answer::Garbage).await;
    let (_, consolidation) = s.track_and_poll().await;
    assert!(
        matches!(consolidation, Err(ConsolidationError::Decode(_))),
        "{consolidation:?}"
    );
    s.assert_kept(false);

    let s = setup(TrackMode::Fork, Answer::EmptyMessage).await;
    let (tracked, consolidation) = s.track_and_poll().await;
    assert!(
        matches!(consolidation, Err(ConsolidationError::MissingReceipt { consolidate, .. }) if consolidate == tracked.consolidate),
        "{consolidation:?}"
    );
    s.assert_kept(false);
}

/// A verified receipt of another batch's task cannot settle this batch.
#[tokio::test]
async fn a_receipt_for_another_task_settles_nothing() {
    let a = setup(TrackMode::Fork, Answer::Honest).await;
    let (_, ca) = a.track_and_poll().await;
    let ca = ca.unwrap().unwrap();

    let b = setup(TrackMode::Fork, Answer::Honest).await;
    let (_, cb) = b.track_and_poll().await;
    let cb = cb.unwrap().unwrap();
    // Same receipts, different track invocations: different tasks.
    assert_ne!(ca.consolidate(), cb.consolidate());
    let record_a = a.journal.batch(&a.batch.cid).unwrap();
    let crossed = reconcile(&record_a, &cb);
    assert!(matches!(crossed.verdict, Verdict::WrongTask { .. }));
    assert!(matches!(
        a.journal.settle(&crossed),
        Err(JournalError::WrongTask { .. })
    ));
    a.assert_kept(false);

    // Consolidation::verify itself refuses a receipt that ran something else.
    let err = Consolidation::verify(
        cb.receipt().clone(),
        ca.consolidate(),
        tracker().verifier().as_ref(),
    );
    assert!(matches!(err, Err(ConsolidationError::WrongTask { .. })));
    // An untracked batch cannot be settled either.
    let untracked = a.journal.batch(&a.batch.cid).unwrap();
    let mut closed = untracked.clone();
    closed.state = BatchState::Closed;
    assert!(matches!(
        reconcile(&closed, &ca).verdict,
        Verdict::WrongTask { expected: None, .. }
    ));
}

// --- track failures ----------------------------------------------------------

/// Tracking is idempotent: the same batch gives the same invocation, so a
/// retry (after a lost response) is answered with the same task.
#[tokio::test]
async fn tracking_again_names_the_same_task() {
    let s = setup(TrackMode::Fork, Answer::Honest).await;
    let first = s.client.track(s.batch.cid).await.unwrap();
    let again = s.client.track(s.batch.cid).await.unwrap();
    assert_eq!(first, again);
    let invocation = s.client.track_invocation(s.batch.cid).unwrap();
    assert_eq!(invocation.cid(), first.track);
    assert_eq!(invocation.expiration(), None);
}

/// Every way a track receipt can be unacceptable is a typed error.
#[tokio::test]
async fn unacceptable_track_receipts_are_typed_errors() {
    let s = setup(TrackMode::Refuse, Answer::Honest).await;
    let err = s.client.track(s.batch.cid).await.unwrap_err();
    assert!(
        matches!(&err, TrackError::Refused(f) if f.name.as_deref() == Some("EgressTrackError")),
        "{err}"
    );
    assert!(!err.is_transient());

    let s = setup(TrackMode::NoFork, Answer::Honest).await;
    assert!(matches!(
        s.client.track(s.batch.cid).await,
        Err(TrackError::ForkCount(0))
    ));

    let s = setup(TrackMode::TwoForks, Answer::Honest).await;
    assert!(matches!(
        s.client.track(s.batch.cid).await,
        Err(TrackError::ForkCount(2))
    ));

    let s = setup(TrackMode::WrongCause, Answer::Honest).await;
    let err = s.client.track(s.batch.cid).await.unwrap_err();
    assert!(
        matches!(&err, TrackError::NotConsolidate { reason, .. } if reason.contains("nb.cause")),
        "{err}"
    );
}

/// Without the tracker's delegation the tracker refuses (Unauthorized); an
/// impostor's receipts fail verification; an unreachable tracker is transient.
#[tokio::test]
async fn authorization_and_transport_failures() {
    let s = setup(TrackMode::Fork, Answer::Honest).await;
    let tracker_url = start_tracker(s.fake.clone(), tracker()).await;
    let endpoint = format!("{}/receipts/{{cid}}", s.node_url);
    let no_proof = EgressClient::builder(Arc::new(node()), tracker().verifier(), &tracker_url)
        .endpoint(&endpoint)
        .build()
        .unwrap();
    let err = no_proof.track(s.batch.cid).await.unwrap_err();
    assert!(
        matches!(&err, TrackError::Refused(f) if f.name.as_deref() == Some("Unauthorized")),
        "{err}"
    );

    let impostor_url = start_tracker(s.fake.clone(), mallory()).await;
    let impostor = EgressClient::builder(Arc::new(node()), tracker().verifier(), impostor_url)
        .proof(proof())
        .endpoint(&endpoint)
        .build()
        .unwrap();
    let err = impostor.track(s.batch.cid).await.unwrap_err();
    assert!(
        matches!(err, TrackError::Client(ClientError::InvalidSignature(_))),
        "{err}"
    );

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let down = EgressClient::builder(Arc::new(node()), tracker().verifier(), dead)
        .proof(proof())
        .endpoint(&endpoint)
        .build()
        .unwrap();
    assert!(down.track(s.batch.cid).await.unwrap_err().is_transient());
    assert!(down
        .consolidation(s.batch.cid)
        .await
        .unwrap_err()
        .is_transient());
}

/// The builder checks the endpoint and the tracker URL.
#[test]
fn the_builder_checks_its_configuration() {
    let build = |url: &str, endpoint: Option<&str>| {
        let b = EgressClient::builder(Arc::new(node()), tracker().verifier(), url);
        match endpoint {
            Some(e) => b.endpoint(e).build(),
            None => b.build(),
        }
    };
    use etracker_client::BuildError;
    assert!(matches!(
        build("http://t.example", None),
        Err(BuildError::MissingEndpoint)
    ));
    assert!(matches!(
        build("http://t.example", Some("http://n.example/receipts/")),
        Err(BuildError::Endpoint(_))
    ));
    assert!(matches!(
        build("t.example", Some("http://n.example/{cid}")),
        Err(BuildError::TrackerUrl { .. })
    ));
    assert!(matches!(
        build("ftp://t.example", Some("http://n.example/{cid}")),
        Err(BuildError::TrackerUrl { .. })
    ));
    let client = build("http://t.example/api", Some("http://n.example/{cid}")).unwrap();
    assert_eq!(client.tracker(), tracker().did());
    assert_eq!(client.node(), node().did());
    let invocation = client
        .track_invocation(ucanto::dag::cid_of(ucanto::dag::CAR, b""))
        .unwrap();
    assert_eq!(invocation.audience(), tracker().did());
    assert_eq!(invocation.capabilities()[0].can, "space/egress/track");
}

// --- the node's receipts route ----------------------------------------------

/// `GET /receipts/{cid}`: the batch file as a CAR; 400 for a bad CID; 404
/// for unknown batches and for the open batch.
#[tokio::test]
async fn the_receipts_route_serves_closed_batches_only() {
    let s = setup(TrackMode::Fork, Answer::Honest).await;
    s.journal.append(&ok_receipt(5000, 5999)).unwrap(); // an open batch
    let base = s.node_url.clone();
    let get = |path: String| {
        let url = format!("{base}{path}");
        async move { reqwest::get(url).await.unwrap() }
    };

    let ok = get(format!("/receipts/{}", s.batch.cid)).await;
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(ok.headers()["content-type"], CAR_CONTENT_TYPE);
    assert_eq!(ok.headers()["etag"], format!("\"{}\"", s.batch.cid));
    let body = ok.bytes().await.unwrap();
    assert_eq!(
        &body[..],
        &s.journal.read_batch(&s.batch.cid).unwrap().unwrap()[..]
    );

    assert_eq!(
        get("/receipts/not-a-cid".into()).await.status().as_u16(),
        400
    );
    let unknown = ucanto::dag::cid_of(ucanto::dag::CAR, b"nothing");
    assert_eq!(
        get(format!("/receipts/{unknown}")).await.status().as_u16(),
        404
    );
    let open = std::fs::read(open_file(s._dir.path())).unwrap();
    let open_cid = etracker_client::batch::batch_cid(&open);
    assert_eq!(
        get(format!("/receipts/{open_cid}")).await.status().as_u16(),
        404
    );
}

// --- the reporter ------------------------------------------------------------

/// The reporter tracks closed batches, waits while the receipt is pending,
/// then reconciles and deletes on a match — and keeps a disputed batch.
#[tokio::test]
async fn the_reporter_drives_batches_to_settlement() {
    let s = setup(TrackMode::Fork, Answer::Honest).await;
    let reporter = Reporter::new(s.journal.clone(), s.client.clone());
    let events = reporter.tick().await;
    assert!(
        matches!(events.as_slice(), [Event::Tracked { batch, .. }] if *batch == s.batch.cid),
        "{events:?}"
    );
    let events = reporter.tick().await;
    assert!(
        matches!(events.as_slice(), [Event::Pending(b)] if *b == s.batch.cid),
        "{events:?}"
    );
    s.fake.conclude().await;
    let events = reporter.tick().await;
    assert!(
        matches!(events.as_slice(), [Event::Settled(r)] if r.is_match()),
        "{events:?}"
    );
    assert!(s.journal.batches().is_empty());
    assert!(reporter.tick().await.is_empty());

    let s = setup(TrackMode::Fork, Answer::Inflated(10)).await;
    let reporter = Reporter::new(s.journal.clone(), s.client.clone());
    reporter.tick().await;
    s.fake.conclude().await;
    let events = reporter.tick().await;
    assert!(
        matches!(events.as_slice(), [Event::Disputed(r)] if !r.is_match()),
        "{events:?}"
    );
    assert!(
        reporter.tick().await.is_empty(),
        "disputed batches are left alone"
    );
    s.assert_kept(true);

    let s = setup(TrackMode::Refuse, Answer::Honest).await;
    let reporter = Reporter::new(s.journal.clone(), s.client.clone());
    let events = reporter.tick().await;
    assert!(
        matches!(events.as_slice(), [Event::TrackFailed { .. }]),
        "{events:?}"
    );
    s.assert_kept(false);
    assert_eq!(
        s.journal.batch(&s.batch.cid).unwrap().state,
        BatchState::Closed,
        "retried next tick"
    );
}
