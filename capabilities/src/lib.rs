//! Typed UCAN capabilities of the egress tracker, wire-compatible with
//! go-libstoracha and npm `@storacha/capabilities` 2.3.x.
//!
//! # Layout
//! One module per capability, each with its wire form in a `# Format` block:
//!
//! | module | ability | who invokes it |
//! |---|---|---|
//! | [`track`] | `space/egress/track` | a storage node, on the tracker |
//! | [`consolidate`] | `space/egress/consolidate` | the tracker, on itself (a fork of track) |
//! | [`conclude`] | `space/egress/conclude` | the consolidator, on the tracker (ours) |
//! | [`retrieve`] | `space/content/retrieve` | a client, on a node (what a batch holds) |
//! | [`account_egress_get`] | `account/egress/get` | an account's agent, on the tracker |
//! | [`ucan`] | `ucan/conclude`, `ucan/attest` | |
//!
//! Each capability is a unit type implementing [`Ability`]: its ability
//! string, how to read `with` and `nb`, how to write `nb` back, and its
//! derivation rule. [`Ability::parser`] turns it into the
//! [`CapabilityParser`] that [`ucanto::server::ServerBuilder::provide`] and
//! [`ucanto::validator::access`] take. Results have types implementing
//! [`Outcome`] (`to_ipld` / `from_ipld`).
//!
//! One invocation, walked through: the server matches its capability with
//! [`Ability::parser`]; the validator checks it derives from the proofs with
//! [`Ability::derives`] (a [`ucanto::validator::Violation`] explains why
//! not); [`provide::typed`] hands the handler an [`Invoked`] with the
//! capability already parsed ([`Parsed`]), as go-ucanto's `Provide` does;
//! the handler answers with an [`Outcome`].
//!
//! Malformed input fails with a [`SchemaError`] (core's
//! [`ucanto::dag::FieldError`]) whose message names the field
//! (`nb.endpoint: …`, `nb.range[1]: …`, `with: …`).
//!
//! # Example
//! ```
//! use etracker_capabilities::track::{Track, TrackNb};
//! use etracker_capabilities::Ability;
//! use ucanto::principal::{Ed25519Signer, Signer};
//! use ucanto::ucan::Delegation;
//!
//! let tracker = Ed25519Signer::from_seed([4; 32]);
//! let node = Ed25519Signer::from_seed([5; 32]);
//! let batch = "bagbaiera42benrzjlyi254badv3tqj4f3uidekih7dcqjfovcfi5vccqq3uq".parse().unwrap();
//! let nb = TrackNb::new(batch, "https://node.example/receipts/{cid}").unwrap();
//!
//! // The node invokes space/egress/track on the tracker…
//! let invocation = Delegation::builder(&node, tracker.did().clone())
//!     .capability(Track::capability(tracker.did(), &nb))
//!     .build()
//!     .unwrap();
//!
//! // …and the tracker reads it back, typed.
//! let parsed = Track::parse(&invocation.capabilities()[0]).unwrap();
//! assert_eq!(parsed.nb, nb);
//! assert_eq!(
//!     etracker_capabilities::track::endpoint_url(&parsed.nb.endpoint, &batch),
//!     format!("https://node.example/receipts/{batch}"),
//! );
//!
//! // Malformed nb names the field.
//! let err = TrackNb::new(batch, "ftp://node.example/{cid}").unwrap_err();
//! assert!(err.to_string().starts_with("nb.endpoint: "));
//! ```

use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;

use ucanto::dag::{Ipld, IpldMap};
use ucanto::principal::Did;
use ucanto::receipt::Out;
use ucanto::ucan::Capability;
use ucanto::validator::{CapabilityParser, Typed, Violation};

pub mod account_egress_get;
pub mod conclude;
pub mod consolidate;
pub mod payable;
pub mod provide;
pub mod retrieve;
mod schema;
pub mod track;
pub mod ucan;

pub use account_egress_get::EgressGet;
pub use conclude::Conclude;
pub use consolidate::Consolidate;
pub use provide::{typed, Invoked};
pub use retrieve::Retrieve;
pub use schema::SchemaError;
pub use track::Track;
pub use ucan::{UcanAttest, UcanConclude};

/// A capability read from the wire: its resource and typed caveats.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed<N> {
    /// The resource (`with`).
    pub with: Did,
    /// The caveats (`nb`).
    pub nb: N,
}

/// One capability: ability string, `with` and `nb` readers, `nb` writer and
/// derivation rule ("a capability is a value").
pub trait Ability: Sized + Send + Sync + 'static {
    /// The ability, e.g. `space/egress/track`.
    const CAN: &'static str;

    /// The typed caveats.
    type Nb: Clone + Debug + PartialEq + Send + Sync + 'static;

    /// Reads the resource. By default any well-formed DID.
    fn parse_with(with: &str) -> Result<Did, SchemaError> {
        schema::did("with", with, None)
    }

    /// Reads the caveats; `None` (no `nb` key) reads as an empty map, as in JS.
    fn parse_nb(nb: Option<&IpldMap>) -> Result<Self::Nb, SchemaError>;

    /// Writes the caveats.
    fn to_nb(nb: &Self::Nb) -> IpldMap;

    /// Whether `delegated` (already resolved against `claimed`, so its `nb` is
    /// complete) covers `claimed`. By default
    /// [`ucanto::validator::default_derives`]: same resource (or a `prefix*`
    /// one) and every `nb` field equal.
    fn derives(claimed: &Parsed<Self::Nb>, delegated: &Parsed<Self::Nb>) -> Result<(), Violation> {
        ucanto::validator::default_derives(
            &Self::capability(&claimed.with, &claimed.nb),
            &Self::capability(&delegated.with, &delegated.nb),
        )
    }

    /// Reads a capability of this ability.
    fn parse(capability: &Capability) -> Result<Parsed<Self::Nb>, SchemaError> {
        if capability.can != Self::CAN {
            return Err(SchemaError::invalid(
                "can",
                format!("expected {:?}, got {:?}", Self::CAN, capability.can),
            ));
        }
        Ok(Parsed {
            with: Self::parse_with(&capability.with)?,
            nb: Self::parse_nb(capability.nb.as_ref())?,
        })
    }

    /// The capability `{can, with, nb}`; an empty `nb` is left out, as JS
    /// `capability().invoke()` does.
    fn capability(with: &Did, nb: &Self::Nb) -> Capability {
        let nb = Self::to_nb(nb);
        let capability = Capability::new(Self::CAN, with.as_str());
        if nb.is_empty() {
            capability
        } else {
            capability.with_nb(nb)
        }
    }

    /// The capability on `with` without any caveat: what a delegation that
    /// pins nothing grants (e.g. tracker → node `space/egress/track`).
    fn unrestricted(with: &Did) -> Capability {
        Capability::new(Self::CAN, with.as_str())
    }

    /// This capability as a validator/server parser.
    fn parser() -> Arc<dyn CapabilityParser> {
        Arc::new(Parser::<Self>::new())
    }
}

/// Adapts an [`Ability`] to [`CapabilityParser`].
///
/// `parse` returns the capability re-encoded from its typed form, so fields
/// the schema does not know are dropped, as JS `Schema.struct` drops them.
pub struct Parser<A>(PhantomData<fn() -> A>);

impl<A: Ability> Parser<A> {
    /// The parser of `A`.
    pub fn new() -> Self {
        Parser(PhantomData)
    }
}

impl<A: Ability> Default for Parser<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Ability> CapabilityParser for Parser<A> {
    fn can(&self) -> &str {
        A::CAN
    }

    fn parse(&self, capability: &Capability) -> Result<Capability, Violation> {
        let parsed = A::parse(capability).map_err(|e| Violation::new(e.to_string()))?;
        Ok(A::capability(&parsed.with, &parsed.nb))
    }

    fn derives(&self, claimed: &Capability, delegated: &Capability) -> Result<(), Violation> {
        let claimed = A::parse(claimed).map_err(|e| Violation::new(e.to_string()))?;
        let delegated = A::parse(delegated).map_err(|e| Violation::new(e.to_string()))?;
        A::derives(&claimed, &delegated)
    }

    fn parse_typed(&self, capability: &Capability) -> Result<(Capability, Typed), Violation> {
        let parsed = A::parse(capability).map_err(|e| Violation::new(e.to_string()))?;
        let written = A::capability(&parsed.with, &parsed.nb);
        Ok((written, Some(Arc::new(parsed))))
    }

    fn derives_typed(
        &self,
        claimed: (&Capability, &Typed),
        delegated: (&Capability, &Typed),
    ) -> Result<(), Violation> {
        fn typed<N: 'static>(value: &Typed) -> Option<&Parsed<N>> {
            value.as_ref()?.downcast_ref()
        }
        match (typed::<A::Nb>(claimed.1), typed::<A::Nb>(delegated.1)) {
            (Some(claimed), Some(delegated)) => A::derives(claimed, delegated),
            _ => self.derives(claimed.0, delegated.0),
        }
    }
}

/// A typed result value (`out.ok` or `out.error` of a receipt).
pub trait Outcome: Sized {
    /// The IPLD value.
    fn to_ipld(&self) -> Ipld;
    /// Reads the IPLD value; unknown fields are ignored.
    fn from_ipld(value: &Ipld) -> Result<Self, SchemaError>;
}

/// Reads a receipt's `out` as `O` (ok) or `E` (error).
pub fn read_out<O: Outcome, E: Outcome>(out: &Out) -> Result<Result<O, E>, SchemaError> {
    match out {
        Ok(value) => O::from_ipld(value).map(Ok),
        Err(value) => E::from_ipld(value).map(Err),
    }
}

/// The empty result `{}` (track, retrieve and conclude succeed with it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Empty;

impl Outcome for Empty {
    fn to_ipld(&self) -> Ipld {
        Ipld::Map(IpldMap::new())
    }

    fn from_ipld(value: &Ipld) -> Result<Self, SchemaError> {
        schema::Fields::of("ok", value).map(|_| Empty)
    }
}

/// Defines a `{name, message}` failure with one fixed name.
macro_rules! named_failure {
    ($(#[$doc:meta])* $ty:ident = $name:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
        #[error("{}: {message}", Self::NAME)]
        pub struct $ty {
            /// What went wrong.
            pub message: String,
        }

        impl $ty {
            /// The error name on the wire.
            pub const NAME: &'static str = $name;

            /// A failure explained by `message`.
            pub fn new(message: impl Into<String>) -> Self {
                $ty { message: message.into() }
            }
        }

        impl $crate::Outcome for $ty {
            fn to_ipld(&self) -> ::ucanto::dag::Ipld {
                $crate::schema::failure(Self::NAME, &self.message)
            }

            fn from_ipld(value: &::ucanto::dag::Ipld) -> Result<Self, $crate::SchemaError> {
                let (_, message) = $crate::schema::read_failure(value, &[Self::NAME])?;
                Ok($ty { message })
            }
        }
    };
}
pub(crate) use named_failure;
