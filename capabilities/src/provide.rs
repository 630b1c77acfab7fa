//! Typed handlers: a handler of a capability receives it as its [`Ability`]
//! parsed it, as go-ucanto's `Provide` hands handlers their typed capability.
//!
//! The validator parsed the capability with [`Ability::parser`] (that is how
//! it matched) and hands the typed value along in the authorization; the
//! handler gets that very value. Only a route whose parser reads no typed
//! value (not one of [`Ability::parser`]'s) parses it here.

use std::future::Future;
use std::sync::Arc;

use ucanto::server::{BoxFuture, Handler, HandlerError, Request, Response};

use crate::{Ability, Parsed};

/// What a typed handler receives.
pub struct Invoked<A: Ability> {
    /// The invoked capability, typed.
    pub capability: Parsed<A::Nb>,
    /// The request: the invocation, its blocks and its authorization.
    pub request: Request,
}

/// A [`Handler`] for `Server::provide(A::parser(), …)` that hands `handler`
/// the capability parsed as `A`.
pub fn typed<A, F, Fut>(handler: F) -> impl Handler + 'static
where
    A: Ability,
    F: Fn(Invoked<A>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response, HandlerError>> + Send + 'static,
{
    move |request: Request| -> BoxFuture<Result<Response, HandlerError>> {
        let validated = request
            .authorization
            .typed
            .clone()
            .and_then(|typed| typed.downcast::<Parsed<A::Nb>>().ok());
        let parsed = match validated {
            Some(capability) => Ok(Arc::unwrap_or_clone(capability)),
            None => A::parse(&request.capability),
        };
        match parsed {
            Ok(capability) => Box::pin(handler(Invoked {
                capability,
                request,
            })),
            Err(e) => {
                let error = HandlerError::new(format!("{} does not parse: {e}", A::CAN));
                Box::pin(std::future::ready(Err(error)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::{Track, TrackNb};
    use ucanto::principal::{fixtures, Signer};
    use ucanto::ucan::Delegation;
    use ucanto::validator::Authorization;

    /// The handler gets the capability the validator read, as it read it,
    /// not a second reading of the request's.
    #[tokio::test]
    async fn the_validators_reading_reaches_the_handler() {
        let (tracker, node) = (fixtures::service(), fixtures::node());
        let batch = |n: u8| ucanto::dag::cid_of(ucanto::dag::CAR, &[n]);
        let asked = TrackNb::new(batch(1), "https://node.example/{cid}").unwrap();
        let read = TrackNb::new(batch(2), "https://node.example/{cid}").unwrap();
        let invocation = Delegation::builder(&node, tracker.did().clone())
            .capability(Track::capability(tracker.did(), &asked))
            .build()
            .unwrap();
        let request = Request {
            capability: invocation.capabilities()[0].clone(),
            authorization: Authorization {
                capability: invocation.capabilities()[0].clone(),
                issuer: node.did().clone(),
                invocation: invocation.cid(),
                proofs: Vec::new(),
                typed: Some(Arc::new(Parsed {
                    with: tracker.did().clone(),
                    nb: read.clone(),
                })),
            },
            invocation,
        };
        let handler = typed(|invoked: Invoked<Track>| async move {
            Ok(Response::ok(ucanto::dag::Ipld::Link(
                invoked.capability.nb.receipts,
            )))
        });
        let response = handler.handle(request).await.unwrap();
        assert_eq!(response.out(), &Ok(ucanto::dag::Ipld::Link(read.receipts)));
    }
}
