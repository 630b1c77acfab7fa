//! The table as DynamoDB bills and refuses it. Every request the SDK sends
//! goes through [`WireClient`], an HTTP client around the real one, which
//! 1. counts requests, items and bytes per operation and turns them into
//!    capacity units by DynamoDB's published rules ([`Usage`]; see
//!    [`capacity`]);
//! 2. refuses what real DynamoDB refuses and an emulator (moto) lets
//!    through: an item over 400 KB, a transaction over 100 items or 4 MB,
//!    a batch over its count, a key condition whose lower bound is above its
//!    upper bound (`ValidationException`, as DynamoDB answers);
//! 3. when given [`Faults`], fails a stated fraction of requests as real
//!    DynamoDB does under load and an emulator serving one request at a
//!    time never does: throttling and provisioned-throughput errors,
//!    transactions cancelled by a conflict, and 500s, some of them after
//!    the request ran (the caller cannot tell whether it did).
//!
//! The requests are DynamoDB's JSON protocol: the operation is the
//! `x-amz-target` header, the body a JSON document in its typed attribute
//! form, so the layer reads what goes over the wire, not what the code
//! meant to send.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::SharedHttpClient;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use serde_json::Value;

use super::capacity::{self, Sizes};

/// What went over the wire, summed since the client was made.
#[derive(Debug, Default)]
pub struct Usage {
    /// Requests that reached the table (not those refused or failed here).
    pub requests: AtomicU64,
    /// Items written (put, updated or deleted), transactions' included.
    pub items_written: AtomicU64,
    /// Bytes of the items written, as DynamoDB sizes them.
    pub bytes_written: AtomicU64,
    /// Write capacity units, in halves (a transactional write costs two
    /// units per KB, a standard one one).
    pub write_half_units: AtomicU64,
    /// Read capacity units, in halves (an eventually consistent read of up
    /// to 4 KB costs half a unit).
    pub read_half_units: AtomicU64,
    /// Items read (returned, or counted by a count-only query).
    pub items_read: AtomicU64,
    /// Requests failed on purpose ([`Faults`]).
    pub faults: AtomicU64,
    /// Requests refused as real DynamoDB would.
    pub refused: AtomicU64,
}

impl Usage {
    /// Write capacity units so far.
    pub fn write_units(&self) -> f64 {
        self.write_half_units.load(Ordering::Relaxed) as f64 / 2.0
    }

    /// Read capacity units so far.
    pub fn read_units(&self) -> f64 {
        self.read_half_units.load(Ordering::Relaxed) as f64 / 2.0
    }
}

/// Failures to inject, as a fraction of requests.
#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    /// The fraction of requests that fail (0 to 1).
    pub rate: f64,
    /// Added to every request (a table farther away): milliseconds.
    pub latency_ms: u64,
    /// Seeds the choice of requests and failures.
    pub seed: u64,
}

impl Faults {
    /// Reads `rate[,seed[,latency_ms]]`, e.g. `0.05`, `0.05,7` or
    /// `0.05,7,10`.
    pub fn parse(text: &str) -> Result<Faults, String> {
        let mut parts = text.split(',');
        let rate: f64 = parts
            .next()
            .unwrap_or_default()
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a fault rate (0 to 1)"))?;
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("fault rate {rate} is not between 0 and 1"));
        }
        let seed = match parts.next() {
            Some(seed) => seed
                .trim()
                .parse()
                .map_err(|_| format!("{seed:?} is not a seed"))?,
            None => 1,
        };
        let latency_ms = match parts.next() {
            Some(ms) => ms
                .trim()
                .parse()
                .map_err(|_| format!("{ms:?} is not a latency in milliseconds"))?,
            None => 0,
        };
        Ok(Faults {
            rate,
            seed,
            latency_ms,
        })
    }
}

/// A failure DynamoDB gives under load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// `ThrottlingException` (400), nothing done.
    Throttling,
    /// `ProvisionedThroughputExceededException` (400), nothing done.
    Provisioned,
    /// A transaction cancelled for a conflict (400), nothing done; other
    /// writes: `TransactionConflictException`.
    Conflict,
    /// `InternalServerError` (500), nothing done.
    Internal,
    /// `InternalServerError` (500) after the request ran.
    InternalAfter,
}

/// The layer's state, shared by every connection of a client.
#[derive(Debug)]
pub(crate) struct Wire {
    usage: Arc<Usage>,
    faults: Option<Faults>,
    random: Mutex<u64>,
    sizes: Mutex<Sizes>,
    /// Requests seen, and the first that fails with every later one (the
    /// table lost; `u64::MAX`: none).
    seen: AtomicU64,
    lost_from: AtomicU64,
}

impl Wire {
    pub(crate) fn new(usage: Arc<Usage>, faults: Option<Faults>) -> Wire {
        let seed = faults.as_ref().map_or(1, |f| f.seed);
        Wire {
            usage,
            faults,
            random: Mutex::new(seed),
            sizes: Mutex::new(Sizes::default()),
            seen: AtomicU64::new(0),
            lost_from: AtomicU64::new(u64::MAX),
        }
    }

    /// From the `n`-th request on (0: the next), every request fails with a
    /// 500 and is not run: the table is lost.
    pub(crate) fn lose_table_after(&self, n: u64) {
        let seen = self.seen.load(Ordering::Relaxed);
        self.lost_from
            .store(seen.saturating_add(n), Ordering::Relaxed);
    }

    /// A number in `0..1`: splitmix64 over the seed (well mixed from the
    /// first draw, whatever the seed).
    fn next_random(&self) -> f64 {
        let Ok(mut state) = self.random.lock() else {
            return 1.0;
        };
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The fault this request meets, if any.
    fn fault(&self, operation: &str) -> Option<Fault> {
        let seen = self.seen.fetch_add(1, Ordering::Relaxed);
        if seen >= self.lost_from.load(Ordering::Relaxed) {
            return Some(Fault::Internal);
        }
        let rate = self.faults.as_ref()?.rate;
        if self.next_random() >= rate {
            return None;
        }
        let kinds: &[Fault] = match operation {
            "TransactWriteItems" | "PutItem" | "UpdateItem" | "DeleteItem" => &[
                Fault::Throttling,
                Fault::Provisioned,
                Fault::Conflict,
                Fault::Conflict,
                Fault::Internal,
                Fault::InternalAfter,
            ],
            _ => &[
                Fault::Throttling,
                Fault::Provisioned,
                Fault::Internal,
                Fault::InternalAfter,
            ],
        };
        let pick = (self.next_random() * kinds.len() as f64) as usize;
        Some(kinds[pick.min(kinds.len() - 1)])
    }
}

/// The SDK's HTTP client with the layer around it.
#[derive(Clone, Debug)]
pub(crate) struct WireClient {
    inner: SharedHttpClient,
    wire: Arc<Wire>,
}

impl WireClient {
    pub(crate) fn new(inner: SharedHttpClient, wire: Arc<Wire>) -> WireClient {
        WireClient { inner, wire }
    }
}

impl HttpClient for WireClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(WireConnector {
            inner: self.inner.http_connector(settings, components),
            wire: self.wire.clone(),
        })
    }
}

#[derive(Debug)]
struct WireConnector {
    inner: SharedHttpConnector,
    wire: Arc<Wire>,
}

impl HttpConnector for WireConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let inner = self.inner.clone();
        let wire = self.wire.clone();
        HttpConnectorFuture::new(async move {
            let operation = request
                .headers()
                .get("x-amz-target")
                .and_then(|t| t.rsplit('.').next())
                .unwrap_or_default()
                .to_string();
            let body: Option<Value> = request
                .body()
                .bytes()
                .and_then(|b| serde_json::from_slice(b).ok());
            let Some(body) = body else {
                return inner.call(request).await;
            };
            if let Err(why) = capacity::refusal(&operation, &body) {
                wire.usage.refused.fetch_add(1, Ordering::Relaxed);
                return Ok(error_response(400, "ValidationException", &why, None));
            }
            if let Some(ms) = wire
                .faults
                .as_ref()
                .map(|f| f.latency_ms)
                .filter(|ms| *ms > 0)
            {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            let fault = wire.fault(&operation);
            if let Some(fault) = fault.filter(|f| *f != Fault::InternalAfter) {
                wire.usage.faults.fetch_add(1, Ordering::Relaxed);
                return Ok(fault_response(fault, &operation, &body));
            }
            let response = inner.call(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = ByteStream::new(response.into_body())
                .collect()
                .await
                .map_err(|e| ConnectorError::io(e.into()))?
                .into_bytes();
            if let Ok(answer) = serde_json::from_slice::<Value>(&bytes) {
                let charged = status.is_success() || charged_failure(&answer);
                if charged {
                    wire.usage.requests.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut sizes) = wire.sizes.lock() {
                        capacity::count(&operation, &body, &answer, &mut sizes, &wire.usage);
                    }
                }
            }
            if fault == Some(Fault::InternalAfter) {
                wire.usage.faults.fetch_add(1, Ordering::Relaxed);
                return Ok(fault_response(Fault::Internal, &operation, &body));
            }
            let mut rebuilt = HttpResponse::new(status, SdkBody::from(bytes));
            *rebuilt.headers_mut() = headers;
            Ok(rebuilt)
        })
    }
}

/// Whether a failed request still consumed capacity: a condition that did
/// not hold (the item was read to judge it) and a cancelled transaction do.
fn charged_failure(answer: &Value) -> bool {
    let kind = answer["__type"].as_str().unwrap_or_default();
    kind.ends_with("ConditionalCheckFailedException")
        || kind.ends_with("TransactionCanceledException")
}

/// A DynamoDB error answer.
fn error_response(
    status: u16,
    kind: &str,
    message: &str,
    extra: Option<(&str, Value)>,
) -> HttpResponse {
    let mut body = serde_json::json!({
        "__type": format!("com.amazonaws.dynamodb.v20120810#{kind}"),
        "message": message,
    });
    if let Some((key, value)) = extra {
        body[key] = value;
    }
    let mut response = HttpResponse::new(
        StatusCode::try_from(status).unwrap_or_else(|_| StatusCode::try_from(500).unwrap()),
        SdkBody::from(body.to_string()),
    );
    response
        .headers_mut()
        .insert("content-type", "application/x-amz-json-1.0");
    response
}

fn fault_response(fault: Fault, operation: &str, body: &Value) -> HttpResponse {
    match fault {
        Fault::Throttling => error_response(
            400,
            "ThrottlingException",
            "Rate of requests exceeds the allowed throughput.",
            None,
        ),
        Fault::Provisioned => error_response(
            400,
            "ProvisionedThroughputExceededException",
            "The level of configured provisioned throughput for the table was exceeded.",
            None,
        ),
        Fault::Conflict if operation == "TransactWriteItems" => {
            let items = body["TransactItems"].as_array().map_or(1, Vec::len);
            let reasons: Vec<Value> = (0..items)
                .map(|i| {
                    if i == 0 {
                        serde_json::json!({"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"})
                    } else {
                        serde_json::json!({"Code": "None"})
                    }
                })
                .collect();
            error_response(
                400,
                "TransactionCanceledException",
                "Transaction cancelled, please refer cancellation reasons for specific reasons [TransactionConflict]",
                Some(("CancellationReasons", Value::Array(reasons))),
            )
        }
        Fault::Conflict => error_response(
            400,
            "TransactionConflictException",
            "Transaction is ongoing for the item",
            None,
        ),
        Fault::Internal | Fault::InternalAfter => {
            error_response(500, "InternalServerError", "Internal server error", None)
        }
    }
}
