//! Typed handlers: a handler of a capability receives it as its [`Ability`]
//! parsed it, as go-ucanto's `Provide` hands handlers their typed capability.
//!
//! The validator has already parsed the capability with [`Ability::parser`]
//! (that is how it matched), so parsing again here cannot fail for a
//! capability the server routed; should it, the invocation fails with a
//! `HandlerExecutionError` rather than reaching the handler.

use std::future::Future;

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
        match A::parse(&request.capability) {
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
