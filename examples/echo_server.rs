//! A ucanto service with one capability, `test/echo`, served over HTTP.
//!
//! Run: `cargo run --example echo_server` (listens on 127.0.0.1:8787; set
//! `ECHO_ADDR` to change it). It prints its URL and DID; any JS or Rust
//! ucanto client can invoke `test/echo` with `nb: {text}` on its own DID.

use std::sync::Arc;

use ucanto::dag::Ipld;
use ucanto::principal::{Ed25519Signer, Signer};
use ucanto::server::{HandlerError, Request, Response, Server};
use ucanto::transport::{router, DEFAULT_BODY_LIMIT};
use ucanto::ucan::Capability;
use ucanto::validator::{CapabilityParser, Violation};

/// `test/echo` on any DID with a string `nb.text`.
struct Echo;

impl CapabilityParser for Echo {
    fn can(&self) -> &str {
        "test/echo"
    }
    fn parse(&self, cap: &Capability) -> Result<Capability, Violation> {
        match cap.nb.as_ref().and_then(|nb| nb.get("text")) {
            Some(Ipld::String(_)) if cap.with.starts_with("did:") => Ok(cap.clone()),
            _ => Err("expected with: a DID and nb.text: a string".into()),
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let signer = Arc::new(Ed25519Signer::generate());
    let server = Server::builder(signer.clone())
        .provide(Arc::new(Echo), |req: Request| async move {
            Ok::<_, HandlerError>(Response::ok(Ipld::Map(
                req.capability.nb.unwrap_or_default(),
            )))
        })
        .build();
    let addr = std::env::var("ECHO_ADDR").unwrap_or_else(|_| "127.0.0.1:8787".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "{{\"url\":\"http://{}/\",\"did\":\"{}\"}}",
        listener.local_addr()?,
        signer.did()
    );
    axum::serve(listener, router(Arc::new(server), DEFAULT_BODY_LIMIT)).await
}
