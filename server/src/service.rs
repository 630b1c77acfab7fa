//! Wiring: the tracker's dispatcher, the consolidator, the scheduler and the
//! HTTP routes.
//!
//! ```text
//! POST /                  ucanto (track, conclude, account/egress/get)
//! GET  /receipts/{cid}    consolidate receipt as a CAR agent message (400 bad CID, 404 not yet)
//! GET  /                  banner with the service DID
//! GET  /health            store reachable
//! GET  /metrics           Prometheus text (bearer token when configured)
//! POST /consolidate       run consolidation now (bearer token when configured)
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use cid::Cid;
use etracker_capabilities::{typed, Ability, Conclude, EgressGet, Track};
use tokio::sync::Notify;
use ucanto::client::{Connection, ServerChannel};
use ucanto::principal::{Did, Signer, Verifier};
use ucanto::server::Server;

use crate::consolidator::{BatchLimits, Consolidator};
use crate::handlers::{self, Context};
use crate::metrics::Metrics;
use crate::registry::{SpacePolicy, SpaceRegistry, StoreRegistry};
use crate::store::{SpaceEntry, Store};

mod scheduler;
pub use scheduler::RunSummary;

/// Tracker settings (the binary fills them from flags and `ETRACKER_*`).
#[derive(Clone)]
pub struct Settings {
    /// Time between scheduled consolidation runs.
    pub interval: Duration,
    /// Records leased per run.
    pub batch_limit: usize,
    /// Batches consolidated at once (by different nodes: a node's batches
    /// take turns, so that one node holds one slot at most).
    pub concurrency: usize,
    /// Batches a node may have pending (tracked, not yet concluded); a
    /// track past it is refused (`TooManyPendingBatches`). 0: no cap.
    pub max_pending_per_node: u64,
    /// How long a replica holds a record while consolidating it.
    pub lease_secs: u64,
    /// First retry delay after a transient failure; doubles per attempt.
    pub retry_base_secs: u64,
    /// Longest retry delay.
    pub retry_max_secs: u64,
    /// Batch download limits.
    pub limits: BatchLimits,
    /// Principals whose `ucan/attest` count when validating retrievals.
    pub authorities: Vec<Arc<dyn Verifier>>,
    /// Bearer token of every admin route (`/metrics`, `/consolidate`,
    /// `/admin/*`): with `None` they are closed to everyone. (`etracker
    /// start` always has one.)
    pub admin_token: Option<String>,
    /// Host names the dashboard answers to (`Host`, with or without its
    /// port); empty: `localhost`, `127.0.0.1` and `[::1]`.
    pub admin_hosts: Vec<String>,
    /// User and password of the dashboard's login (the admin token is
    /// accepted as the password too).
    pub admin_login: Option<(String, String)>,
    /// What a node is paid per TiB of egress, for the dashboard.
    pub provider_usd_per_tib: Option<f64>,
    /// What a customer pays per TiB of egress, for the dashboard.
    pub client_usd_per_tib: Option<f64>,
    /// Largest ucanto request body.
    pub body_limit: usize,
    /// ucanto requests handled at once; more wait, within the timeout.
    pub max_concurrent_requests: usize,
    /// Longest a ucanto request may take, waiting included (then 408).
    pub request_timeout: Duration,
    /// Name of this replica in leases.
    pub replica: String,
    /// A separately deployed consolidator; in-process (same identity) when `None`.
    pub remote_consolidator: Option<RemoteConsolidator>,
    /// Which spaces count: only those a known provider provisions
    /// ([`SpaceRule::Known`], the default), or every authorized one.
    pub space_rule: SpaceRule,
    /// Providers whose spaces count, besides the tracker itself (the
    /// provider of the spaces its operator registers).
    pub known_providers: Vec<Did>,
    /// Where provisions are looked up; the tracker's store when `None`.
    pub space_registry: Option<Arc<dyn SpaceRegistry>>,
    /// Invokers whose retrievals are recorded apart and billed to no one
    /// (indexing service, replicating nodes, upload service).
    pub non_billable_actors: Vec<Did>,
}

/// Default of [`Settings::max_pending_per_node`]: 64 batches. A node that
/// closes a batch every few minutes stays far under it while the tracker
/// keeps up (hourly runs); it bounds what one node can queue (records the
/// dashboard and every lease walk past) to 64 per node DID.
pub const DEFAULT_MAX_PENDING_PER_NODE: u64 = 64;

/// Which spaces count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceRule {
    /// Spaces a known provider provisions.
    Known,
    /// Every space that authorized a retrieval.
    Any,
}

/// Where a separately deployed consolidator listens and who it is.
#[derive(Clone)]
pub struct RemoteConsolidator {
    /// Its ucanto endpoint (`POST`).
    pub url: String,
    /// Its identity: it signs consolidate receipts and conclude invocations,
    /// holding a tracker → consolidator delegation of `space/egress/conclude`.
    pub verifier: Arc<dyn Verifier>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interval: Duration::from_secs(3600),
            batch_limit: 200,
            concurrency: 4,
            max_pending_per_node: DEFAULT_MAX_PENDING_PER_NODE,
            lease_secs: 15 * 60,
            retry_base_secs: 60,
            retry_max_secs: 3600,
            limits: BatchLimits::default(),
            authorities: Vec::new(),
            admin_token: None,
            admin_hosts: Vec::new(),
            admin_login: None,
            provider_usd_per_tib: None,
            client_usd_per_tib: None,
            body_limit: 64 * 1024 * 1024,
            max_concurrent_requests: 64,
            request_timeout: Duration::from_secs(60),
            replica: format!("etracker-{}", std::process::id()),
            remote_consolidator: None,
            space_rule: SpaceRule::Known,
            known_providers: Vec::new(),
            space_registry: None,
            non_billable_actors: Vec::new(),
        }
    }
}

impl Settings {
    /// The space policy of a tracker signing as `tracker` over `store`.
    pub fn space_policy(&self, tracker: &Did, store: &Arc<dyn Store>) -> SpacePolicy {
        match self.space_rule {
            SpaceRule::Any => SpacePolicy::Any,
            SpaceRule::Known => SpacePolicy::Known {
                providers: self
                    .known_providers
                    .iter()
                    .chain(std::iter::once(tracker))
                    .cloned()
                    .collect(),
                registry: self
                    .space_registry
                    .clone()
                    .unwrap_or_else(|| Arc::new(StoreRegistry(store.clone()))),
            },
        }
    }

    /// Seconds after its track that a batch's counted retrievals can be
    /// counted by no other batch: twice the freshness age (a retrieval may
    /// be dated up to the age after the track, and is fresh for batches
    /// tracked up to the age after that), plus the give-up age (the longest
    /// such a batch waits to conclude), plus a lease, for a conclusion
    /// already under way.
    pub fn claim_lifetime(&self) -> u64 {
        etracker_capabilities::payable::claims_end(
            0,
            self.limits.max_retrieval_age,
            self.limits.give_up_after,
        )
        .saturating_add(self.lease_secs)
    }

    /// The limits of `POST /`.
    pub fn http_limits(&self) -> ucanto::transport::HttpLimits {
        ucanto::transport::HttpLimits {
            body_limit: self.body_limit,
            max_concurrent: self.max_concurrent_requests,
            timeout: self.request_timeout,
        }
    }
}

/// The tracker: its dispatcher, consolidator and scheduler.
pub struct Tracker {
    ctx: Arc<Context>,
    server: Arc<Server>,
    consolidator: Connection,
    settings: Settings,
    trigger: Notify,
    run_lock: tokio::sync::Mutex<()>,
    admin: crate::admin::auth::Sessions,
}

impl Tracker {
    /// A tracker signing as `signer` over `store`. Its consolidator is
    /// in-process with the same identity unless `settings.remote_consolidator`
    /// names one; either way tasks go through a real ucanto connection.
    pub fn new(signer: Arc<dyn Signer>, store: Arc<dyn Store>, settings: Settings) -> Arc<Self> {
        let metrics = Arc::new(Metrics::default());
        let consolidator_key = match &settings.remote_consolidator {
            Some(remote) => remote.verifier.clone(),
            None => signer.verifier(),
        };
        let spaces = settings.space_policy(signer.did(), &store);
        let ctx = Arc::new(Context {
            signer: signer.clone(),
            store: store.clone(),
            metrics,
            consolidator: consolidator_key.clone(),
            spaces: spaces.clone(),
            max_pending_per_node: settings.max_pending_per_node,
            claim_lifetime: settings.claim_lifetime(),
        });
        let server = Arc::new(tracker_server(ctx.clone(), &settings.authorities));
        let consolidator = match &settings.remote_consolidator {
            Some(remote) => Connection::http(consolidator_key, remote.url.clone()),
            None => {
                let tracker_connection =
                    Connection::new(signer.verifier(), Arc::new(ServerChannel(server.clone())));
                let local =
                    Consolidator::builder(signer.clone(), signer.verifier(), tracker_connection)
                        .store(store)
                        .limits(settings.limits.clone())
                        .authorities(settings.authorities.clone())
                        .billing(
                            spaces,
                            settings.non_billable_actors.iter().cloned().collect(),
                        )
                        .build();
                Connection::new(
                    consolidator_key,
                    Arc::new(ServerChannel(local.server().clone())),
                )
            }
        };
        let admin = crate::admin::auth::Sessions::new(
            crate::admin::auth::Credentials {
                user_password: settings.admin_login.clone(),
                token: settings.admin_token.clone(),
            },
            ctx.store.clone(),
        );
        Arc::new(Tracker {
            ctx,
            server,
            consolidator,
            admin,
            settings,
            trigger: Notify::new(),
            run_lock: Default::default(),
        })
    }

    /// The dispatcher (for in-process clients).
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// What the handlers share: identity, store, counters, space policy.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The second after which no batch can add to the days before
    /// `next_day` (days since the epoch): a retrieval dated then is stale
    /// past the freshness age plus the give-up age after it (the rules of
    /// [`etracker_capabilities::payable`]), and a conclusion judged just in
    /// time commits within a lease.
    pub fn final_at(&self, next_day: i64) -> u64 {
        let limits = &self.settings.limits;
        u64::try_from(next_day)
            .unwrap_or_default()
            .saturating_mul(86_400)
            .saturating_add(limits.max_retrieval_age)
            .saturating_add(limits.give_up_after)
            .saturating_add(self.settings.lease_secs)
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The dashboard's sessions.
    pub fn admin(&self) -> &crate::admin::auth::Sessions {
        &self.admin
    }

    /// Counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.ctx.metrics
    }

    /// The HTTP routes.
    pub fn app(self: &Arc<Self>) -> Router {
        let ucanto =
            ucanto::transport::router_with(self.server.clone(), self.settings.http_limits());
        // Admin routes: the token when one is set, else this machine only.
        let admin = Router::new()
            .route("/consolidate", post(consolidate_now))
            .route("/admin/spaces", get(list_spaces))
            .route("/admin/spaces/{did}", put(put_space).delete(remove_space))
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                admin_only,
            ));
        Router::new()
            .route("/receipts/{cid}", get(receipt))
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/", get(banner))
            .merge(admin)
            .merge(crate::admin::routes(self.clone()))
            .with_state(self.clone())
            .merge(ucanto)
            .layer(tower_http::trace::TraceLayer::new_for_http())
    }

    /// Whether the request may use the admin routes (run a consolidation,
    /// manage the space registry, read the metrics): the admin token as a
    /// bearer, wherever the caller is. A run downloads batches and the
    /// registry decides what is billed; the network says nothing of who is
    /// asking (behind a proxy on the same host every caller is loopback).
    fn is_admin(&self, headers: &HeaderMap) -> bool {
        self.settings
            .admin_token
            .as_ref()
            .is_some_and(|token| crate::admin::auth::bearer_is(headers, token))
    }
}

/// The tracker's ucanto dispatcher: track, conclude and account/egress/get.
/// `authorities` attest for every ability it handles, as for retrievals:
/// an account's agent holds a session the upload service attested.
pub fn tracker_server(ctx: Arc<Context>, authorities: &[Arc<dyn Verifier>]) -> Server {
    let (track, conclude, get) = (ctx.clone(), ctx.clone(), ctx.clone());
    // Track and conclude act on the tracker itself: only invocations on its
    // DID, never one a node or a stranger issues on their own.
    let tracker = ctx.signer.did().clone();
    let attesters = authorities.to_vec();
    Server::builder(ctx.signer.clone())
        .validator(move |config| {
            for attester in attesters {
                config.attesters.push(attester);
            }
        })
        .provide_on(
            &tracker,
            Track::parser(),
            typed(move |invoked| handlers::track::handle(track.clone(), invoked)),
        )
        .provide_on(
            &tracker,
            Conclude::parser(),
            typed(move |invoked| handlers::conclude::handle(conclude.clone(), invoked)),
        )
        .provide(
            EgressGet::parser(),
            typed(move |invoked| handlers::egress_get::handle(get.clone(), invoked)),
        )
        .catch(Arc::new(|invocation, error| {
            tracing::error!(invocation = %invocation.cid(), %error, "handler failed");
        }))
        .build()
}

async fn receipt(State(tracker): State<Arc<Tracker>>, Path(cid): Path<String>) -> Response {
    let Ok(cid) = cid.parse::<Cid>() else {
        return (StatusCode::BAD_REQUEST, format!("invalid CID {cid:?}")).into_response();
    };
    match tracker.ctx.store(move |s| s.receipt(&cid)).await {
        Ok(Some(bytes)) => (
            [(header::CONTENT_TYPE, ucanto::transport::CAR_CONTENT_TYPE)],
            bytes,
        )
            .into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, format!("no receipt for {cid}")).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn banner(State(tracker): State<Arc<Tracker>>) -> String {
    format!(
        "🚚 etracker {} — egress tracker\n{}\n",
        env!("CARGO_PKG_VERSION"),
        tracker.ctx.signer.did()
    )
}

async fn health(State(tracker): State<Arc<Tracker>>) -> Response {
    match tracker.ctx.store(|s| s.pending_count()).await {
        Ok(_) => "ok\n".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn metrics(State(tracker): State<Arc<Tracker>>, headers: HeaderMap) -> Response {
    if !tracker.is_admin(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let (pending, retries) = tracker
        .ctx
        .store(|s| Ok((s.pending_count().unwrap_or(0), s.retry_counters())))
        .await
        .unwrap_or_default();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        tracker.ctx.metrics.render(pending, &retries),
    )
        .into_response()
}

/// Lets through the requests [`Tracker::is_admin`] admits; 401 otherwise.
async fn admin_only(
    State(tracker): State<Arc<Tracker>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !tracker.is_admin(request.headers()) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    next.run(request).await
}

/// A registry entry as one line of JSON.
pub fn space_json(entry: &SpaceEntry) -> String {
    let mut map = serde_json::Map::new();
    map.insert("space".into(), entry.space.as_str().into());
    map.insert("provider".into(), entry.provider.as_str().into());
    if let Some(customer) = &entry.customer {
        map.insert("customer".into(), customer.as_str().into());
    }
    serde_json::Value::Object(map).to_string()
}

/// `GET /admin/spaces`: the registry, one JSON object a line.
async fn list_spaces(State(tracker): State<Arc<Tracker>>) -> Response {
    match tracker.ctx.store(|s| s.spaces()).await {
        Ok(spaces) => {
            let body: String = spaces.iter().map(|e| space_json(e) + "\n").collect();
            ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// `PUT /admin/spaces/{did}` with `{"provider"?, "customer"?}` (the provider
/// defaults to the tracker itself): registers the space.
async fn put_space(
    State(tracker): State<Arc<Tracker>>,
    Path(did): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let entry = match space_entry(&did, &body, tracker.ctx.signer.did()) {
        Ok(entry) => entry,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    let line = space_json(&entry) + "\n";
    match tracker.ctx.store(move |s| s.put_space(&entry)).await {
        Ok(()) => ([(header::CONTENT_TYPE, "application/json")], line).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// The entry `PUT /admin/spaces/{did}` asks for.
fn space_entry(did: &str, body: &[u8], tracker: &Did) -> Result<SpaceEntry, String> {
    let space: Did = did.parse().map_err(|e| format!("space {did:?}: {e}"))?;
    let fields: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Object(Default::default())
    } else {
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?
    };
    let did_field = |key: &str| -> Result<Option<Did>, String> {
        match fields.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(text)) => text
                .parse()
                .map(Some)
                .map_err(|e| format!("{key} {text:?}: {e}")),
            Some(_) => Err(format!("{key} must be a DID string")),
        }
    };
    Ok(SpaceEntry {
        space,
        provider: did_field("provider")?.unwrap_or_else(|| tracker.clone()),
        customer: did_field("customer")?,
    })
}

/// `DELETE /admin/spaces/{did}`: unregisters the space.
async fn remove_space(State(tracker): State<Arc<Tracker>>, Path(did): Path<String>) -> Response {
    let space: Did = match did.parse() {
        Ok(space) => space,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("space {did:?}: {e}")).into_response(),
    };
    let key = space.clone();
    match tracker.ctx.store(move |s| s.remove_space(&key)).await {
        Ok(removed) => (
            [(header::CONTENT_TYPE, "application/json")],
            format!(
                "{}\n",
                serde_json::json!({"space": space.as_str(), "removed": removed})
            ),
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn consolidate_now(State(tracker): State<Arc<Tracker>>) -> Response {
    let s = tracker.consolidate().await;
    let body = format!(
        "{{\"leased\":{},\"concluded\":{},\"retried\":{}}}\n",
        s.leased, s.concluded, s.retried
    );
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;
    use ucanto::principal::Ed25519Signer;

    fn tracker(token: Option<&str>) -> Arc<Tracker> {
        let settings = Settings {
            admin_token: token.map(str::to_string),
            ..Settings::default()
        };
        let store = Arc::new(RedbStore::in_memory().unwrap());
        Tracker::new(Arc::new(Ed25519Signer::generate()), store, settings)
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    /// Only holders of the token start runs, wherever they are; without a
    /// token, nobody (no caller is trusted for its address).
    #[test]
    fn who_may_start_a_consolidation_run() {
        let closed = tracker(None);
        assert!(!closed.is_admin(&HeaderMap::new()));
        assert!(!closed.is_admin(&bearer("")));

        let guarded = tracker(Some("s3cret"));
        assert!(guarded.is_admin(&bearer("s3cret")));
        assert!(!guarded.is_admin(&bearer("s3cres")));
        assert!(!guarded.is_admin(&bearer("s3cret ")));
        assert!(!guarded.is_admin(&HeaderMap::new()));
    }

    #[test]
    fn secrets_compare_whole() {
        use crate::admin::auth::constant_time_eq;
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
