//! A node that serves its batches slowly: a few bytes at a time, counting
//! how many of its downloads run at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cid::Cid;

/// Batches served `chunk` bytes every `pause` at `GET /receipts/{cid}`.
#[derive(Clone)]
pub struct DripServer {
    batches: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// Bytes sent at a time.
    pub chunk: usize,
    /// Silence between two sends; none: the whole batch at once.
    pub pause: Arc<Mutex<Option<Duration>>>,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

/// One download being served: counted while its body is alive (the
/// tracker cutting it off drops it).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl DripServer {
    /// Sends `chunk` bytes every `pause`.
    pub fn new(chunk: usize, pause: Duration) -> Self {
        DripServer {
            batches: Default::default(),
            chunk: chunk.max(1),
            pause: Arc::new(Mutex::new(Some(pause))),
            in_flight: Default::default(),
            most_in_flight: Default::default(),
            requests: Default::default(),
        }
    }

    /// Serves `bytes` under `cid`.
    pub fn put(&self, cid: &Cid, bytes: Vec<u8>) {
        self.batches.lock().unwrap().insert(cid.to_string(), bytes);
    }

    /// The most downloads that ran at once so far.
    pub fn most_in_flight(&self) -> usize {
        self.most_in_flight.load(Ordering::SeqCst)
    }

    /// Downloads started so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The router.
    pub fn router(&self) -> axum::Router {
        async fn get(State(s): State<DripServer>, Path(cid): Path<String>) -> Response {
            let Some(bytes) = s.batches.lock().unwrap().get(&cid).cloned() else {
                return StatusCode::NOT_FOUND.into_response();
            };
            s.requests.fetch_add(1, Ordering::SeqCst);
            let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            s.most_in_flight.fetch_max(now, Ordering::SeqCst);
            let guard = InFlight(s.in_flight.clone());
            let Some(pause) = *s.pause.lock().unwrap() else {
                drop(guard);
                return bytes.into_response();
            };
            let parts: Vec<Vec<u8>> = bytes.chunks(s.chunk).map(<[u8]>::to_vec).collect();
            let stream = futures_util::stream::unfold(
                (parts.into_iter(), guard, true),
                move |(mut parts, guard, first)| async move {
                    if !first {
                        tokio::time::sleep(pause).await;
                    }
                    let part = parts.next()?;
                    Some((
                        Ok::<_, std::io::Error>(bytes::Bytes::from(part)),
                        (parts, guard, false),
                    ))
                },
            );
            axum::body::Body::from_stream(stream).into_response()
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
