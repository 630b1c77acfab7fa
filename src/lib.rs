//! ucanto: UCAN-based RPC in Rust, byte-for-byte interoperable with JS @ucanto.
//!
//! # Layout
//! One request, walked through the modules:
//! 1. [`transport`] takes `POST /` with a CAR body (content negotiation, body limit);
//! 2. [`car`] reads the CARv1, checking every block against its CID;
//! 3. [`message`] finds the agent message (`ucanto/message@7.0.0`) and its invocations;
//! 4. [`ucan`] decodes each invocation (a [`ucan::Delegation`] kept with its exact bytes),
//!    whose principals and signatures come from [`principal`] (ed25519, RSA, did:key,
//!    did:web identities, and the absentee did:mailto signer);
//! 5. [`server`] checks the audience, asks [`validator`] to authorize it against the
//!    capability's rules, and calls the registered handler;
//! 6. [`receipt`] signs the outcome, with any forked invocations;
//! 7. [`message`] and [`car`] carry the receipts back; [`client`] verifies them.
//!
//! [`dag`] (blocks, CIDs, dag-cbor, typed field reads with [`dag::Fields`]),
//! [`dag_json`] and [`varint`] hold the helpers the rest share; failures are
//! typed at every step ([`car::CarError`], [`dag::CodecError`],
//! [`message::MessageError`], [`transport::TransportError`],
//! [`validator::Violation`] and [`validator::Unauthorized`]).
//! The `ucanto` binary (`src/bin/ucanto.rs`) puts all of it behind the CLI
//! contract of the ucanto-compat harness.
//!
//! # Example: serve a capability and invoke it
//! ```
//! use std::sync::Arc;
//! use ucanto::client::{Connection, ServerChannel};
//! use ucanto::dag::{Ipld, IpldMap};
//! use ucanto::principal::{Ed25519Signer, Signer};
//! use ucanto::server::{Request, Response, Server, HandlerError};
//! use ucanto::ucan::{Capability, Delegation};
//! use ucanto::validator::{CapabilityParser, Violation};
//!
//! /// `test/echo` on any DID, with `nb.text` a string.
//! struct Echo;
//! impl CapabilityParser for Echo {
//!     fn can(&self) -> &str { "test/echo" }
//!     fn parse(&self, cap: &Capability) -> Result<Capability, Violation> {
//!         match cap.nb.as_ref().and_then(|nb| nb.get("text")) {
//!             Some(Ipld::String(_)) if cap.with.starts_with("did:") => Ok(cap.clone()),
//!             _ => Err("expected with: did, nb.text: string".into()),
//!         }
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let service = Arc::new(Ed25519Signer::from_seed([4; 32]));
//! let server = Server::builder(service.clone())
//!     .provide(Arc::new(Echo), |req: Request| async move {
//!         Ok::<_, HandlerError>(Response::ok(Ipld::Map(req.capability.nb.unwrap_or_default())))
//!     })
//!     .build();
//! let connection = Connection::new(service.verifier(), Arc::new(ServerChannel(Arc::new(server))));
//!
//! let alice = Ed25519Signer::from_seed([1; 32]);
//! let mut nb = IpldMap::new();
//! nb.insert("text".into(), Ipld::String("hello".into()));
//! let invocation = Delegation::builder(&alice, service.did().clone())
//!     .capability(Capability::new("test/echo", alice.did().as_str()).with_nb(nb.clone()))
//!     .build()
//!     .unwrap();
//! let receipt = connection.invoke(&invocation).await.unwrap();
//! assert_eq!(receipt.out(), &Ok(Ipld::Map(nb)));
//! # });
//! ```
pub mod bounded;
pub mod car;
pub mod cli;
pub mod client;
pub mod dag;
pub mod dag_json;
pub mod memo;
pub mod message;
pub mod principal;
pub mod receipt;
pub mod server;
pub mod transport;
pub mod ucan;
pub mod validator;
pub mod varint;

/// The README's code blocks, compiled as doctests so they cannot drift.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The docs/ pages' code blocks, compiled as doctests like the README's
/// (a Rust block added to one of them must compile).
#[doc = include_str!("../docs/operating.md")]
#[cfg(doctest)]
pub struct DocsOperating;

#[doc = include_str!("../docs/counting.md")]
#[cfg(doctest)]
pub struct DocsCounting;

#[doc = include_str!("../docs/security.md")]
#[cfg(doctest)]
pub struct DocsSecurity;

#[doc = include_str!("../docs/dynamodb.md")]
#[cfg(doctest)]
pub struct DocsDynamodb;

#[doc = include_str!("../docs/benchmarks.md")]
#[cfg(doctest)]
pub struct DocsBenchmarks;

#[doc = include_str!("../docs/ucanto-cli.md")]
#[cfg(doctest)]
pub struct DocsUcantoCli;
