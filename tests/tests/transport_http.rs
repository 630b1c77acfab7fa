//! HTTP transport over a real listener: the statuses JS @ucanto's transport gives
//! (fixtures/ucanto/vectors.json `httpErrors`), body limits, and bad bodies.

use std::sync::Arc;

use etracker_e2e::{echo_server, fixture, serve, service};
use ucanto::transport::{router, CAR_CONTENT_TYPE, DEFAULT_BODY_LIMIT};

async fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, String, String) {
    let mut request = reqwest_like::post(url, body);
    for (k, v) in headers {
        request = request.header(k, v);
    }
    request.send().await
}

/// A minimal HTTP/1.1 client on a TCP socket, so headers are sent exactly as given
/// (no defaults added).
mod reqwest_like {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub(crate) struct Request {
        url: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    pub(crate) fn post(url: &str, body: Vec<u8>) -> Request {
        Request {
            url: url.into(),
            headers: Vec::new(),
            body,
        }
    }

    impl Request {
        pub(crate) fn header(mut self, k: &str, v: &str) -> Self {
            self.headers.push((k.into(), v.into()));
            self
        }

        /// Returns (status, content-type or accept header seen, body).
        pub(crate) async fn send(self) -> (u16, String, String) {
            let addr = self
                .url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let mut head = format!(
                "POST / HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
                self.body.len()
            );
            for (k, v) in &self.headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(&self.body).await.unwrap();
            let mut raw = Vec::new();
            let _ = stream.read_to_end(&mut raw).await;
            let text = String::from_utf8_lossy(&raw).into_owned();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let headers = head.to_ascii_lowercase();
            (status, headers, body.to_string())
        }
    }
}

/// Every HTTP-level case JS answers with a status, we answer with the same status
/// (and, for 415/406, the same `accept` hint and message).
#[tokio::test]
async fn statuses_match_js_transport() {
    let url = serve(router(
        Arc::new(echo_server(Arc::new(service()))),
        DEFAULT_BODY_LIMIT,
    ))
    .await;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("ucanto/vectors.json")).unwrap()).unwrap();
    let valid = std::fs::read(fixture("ucanto/errors/ok.request.car")).unwrap();
    for case in manifest["httpErrors"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let Some(status) = case["status"].as_u64() else {
            continue;
        };
        if name == "legacy-content-type" {
            // JS's CAR-only inbound codec refuses it; we also speak the legacy codec
            // (see `legacy_codec_is_understood`).
            continue;
        }
        let body = match name {
            "garbage-body" => b"definitely not a CAR".to_vec(),
            "empty-body" => Vec::new(),
            "root-not-a-message" => {
                let block = ucanto::dag::Block::encode(
                    &ucanto::dag_json::decode(r#"{"hello":"world"}"#).unwrap(),
                )
                .unwrap();
                ucanto::car::encode(&[block.cid], [(block.cid, block.bytes)])
            }
            _ => valid.clone(),
        };
        let headers: Vec<(&str, &str)> = case["requestHeaders"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
            .collect();
        let (got, head, text) = post(&url, &headers, body).await;
        assert_eq!(u64::from(got), status, "{name}: {text}");
        match got {
            415 | 406 => {
                assert!(
                    head.contains(&format!("accept: {CAR_CONTENT_TYPE}")),
                    "{name}: accept hint in {head}"
                );
                assert_eq!(text, case["body"].as_str().unwrap(), "{name}");
            }
            400 => assert!(
                text.starts_with("Bad request: Malformed payload - "),
                "{name}: {text}"
            ),
            200 => assert!(
                head.contains(&format!("content-type: {CAR_CONTENT_TYPE}")),
                "{name}"
            ),
            _ => {}
        }
    }
}

/// A body over the configured limit is refused with 413 before it is decoded.
#[tokio::test]
async fn body_limit_is_enforced() {
    let url = serve(router(Arc::new(echo_server(Arc::new(service()))), 1024)).await;
    let (status, _, _) = post(
        &url,
        &[
            ("content-type", CAR_CONTENT_TYPE),
            ("accept", CAR_CONTENT_TYPE),
        ],
        vec![0u8; 4096],
    )
    .await;
    assert_eq!(status, 413);
}

/// A message whose invocation block is missing is a 400, not a crash (JS throws).
#[tokio::test]
async fn missing_invocation_block_is_bad_request() {
    let url = serve(router(
        Arc::new(echo_server(Arc::new(service()))),
        DEFAULT_BODY_LIMIT,
    ))
    .await;
    let valid = std::fs::read(fixture("ucanto/errors/ok.request.car")).unwrap();
    let (header, blocks) = ucanto::car::decode(&valid).unwrap();
    // Keep only the message root: the execute link now points nowhere.
    let root = header.roots[0];
    let stripped = ucanto::car::encode(&[root], blocks.into_iter().filter(|(cid, _)| *cid == root));
    let (status, _, text) = post(
        &url,
        &[
            ("content-type", CAR_CONTENT_TYPE),
            ("accept", CAR_CONTENT_TYPE),
        ],
        stripped,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("is not present"), "{text}");
}

/// Legacy JS clients send `application/car` with the invocations as roots; we
/// answer a dag-cbor list of results (`error: true` on failures) when they ask
/// for `application/cbor`, and the current CAR message when they accept it.
#[tokio::test]
async fn legacy_codec_is_understood() {
    use ucanto::dag::{decode_cbor, Ipld};
    use ucanto::principal::Signer;
    use ucanto::ucan::{Capability, Delegation};

    let url = serve(router(
        Arc::new(echo_server(Arc::new(service()))),
        DEFAULT_BODY_LIMIT,
    ))
    .await;
    let alice = etracker_e2e::alice();
    let nb = ucanto::dag::IpldMap::from([("text".to_string(), Ipld::String("legacy".into()))]);
    let echo = Delegation::builder(&alice, service().did().clone())
        .capability(Capability::new("test/echo", alice.did().as_str()).with_nb(nb.clone()))
        .build()
        .unwrap();
    let unknown = Delegation::builder(&alice, service().did().clone())
        .capability(Capability::new("test/unknown", alice.did().as_str()))
        .build()
        .unwrap();
    let blocks = echo
        .export()
        .into_iter()
        .chain(unknown.export())
        .map(|b| (b.cid, b.bytes));
    let body = ucanto::car::encode(&[echo.cid(), unknown.cid()], blocks);

    let (status, head, _) = post(
        &url,
        &[
            ("content-type", "application/car"),
            ("accept", "application/cbor"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/cbor"), "{head}");
    // Read the raw body bytes again over a byte-exact path.
    let bytes = reqwest_bytes(&url, "application/car", "application/cbor", body.clone()).await;
    let Ipld::List(results) = decode_cbor(&bytes).unwrap() else {
        panic!("a list")
    };
    assert_eq!(results[0], Ipld::Map(nb));
    let Ipld::Map(error) = &results[1] else {
        panic!("an error map")
    };
    assert_eq!(error.get("error"), Some(&Ipld::Bool(true)));
    assert_eq!(
        error.get("name"),
        Some(&Ipld::String("HandlerNotFound".into()))
    );

    let bytes = reqwest_bytes(&url, "application/car", CAR_CONTENT_TYPE, body).await;
    let message = ucanto::message::AgentMessage::from_car(&bytes).unwrap();
    assert!(message.receipt_for(&echo.cid()).is_some());
}

async fn reqwest_bytes(url: &str, content_type: &str, accept: &str, body: Vec<u8>) -> Vec<u8> {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .header("accept", accept)
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    response.bytes().await.unwrap().to_vec()
}
