//! Server: dispatches invocations to typed handlers and signs their receipts.
//!
//! For each invocation of a message, in order: it must carry exactly one
//! capability (`InvocationCapabilityError`), a handler must be registered for
//! its ability (`HandlerNotFound`), its audience must be the service
//! (`InvalidAudience`), the validator must authorize it (`Unauthorized`), and
//! then the handler runs. A handler has two failure channels: a domain error it
//! returns as a [`Response::error`] goes into the receipt as is, while an
//! unexpected [`HandlerError`] becomes a `HandlerExecutionError` receipt and is
//! reported to the catch hook.
//!
//! # What one message may cost
//! At most [`DEFAULT_MAX_INVOCATIONS`] distinct invocations, each validated
//! with at most [`DEFAULT_MAX_VALIDATIONS`] proof checks and as many
//! capabilities examined, sharing a budget
//! of [`DEFAULT_MAX_SIGNATURE_CHECKS`] fresh signature verifications (past
//! it: `Unauthorized`, `SignatureBudgetExceeded`); signature outcomes, bad
//! ones included, are remembered across messages. Decoding the invocations
//! and validating them run on a bounded pool of blocking threads (one per
//! core by default, [`ServerBuilder::validation_workers`]), never on the
//! async workers, so a flood of hostile `POST /` leaves the rest of the
//! service answering; waiting for the pool is cancelled with the request.
//! Every error message in a receipt is at most
//! [`crate::bounded::MAX_MESSAGE_BYTES`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::dag::{CodecError, Ipld, IpldMap};
use crate::message::AgentMessage;
use crate::principal::{Did, Signer, Verifier};
use crate::receipt::{Out, Ran, Receipt, ReceiptParts};
use crate::ucan::{Capability, Invocation};
use crate::validator::{access, Authorization, CapabilityParser, SignatureCache, ValidatorConfig};
use cid::Cid;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a handler receives.
#[derive(Clone, Debug)]
pub struct Request {
    /// The invocation being run (with every block of its message).
    pub invocation: Invocation,
    /// The invoked capability, as the validator parsed it.
    pub capability: Capability,
    /// The proof chain that authorized it.
    pub authorization: Authorization,
}

/// What a handler answers: a result plus effects.
#[derive(Clone, Debug)]
pub struct Response {
    out: Out,
    fork: Vec<Invocation>,
    join: Option<Invocation>,
    meta: IpldMap,
    effect: Option<Effect>,
}

/// What a handler hands to the server's [after-receipt hook](ServerBuilder::after)
/// besides its result (it is not part of the receipt): e.g. data the hook
/// delivers along with the signed receipt.
#[derive(Clone)]
pub struct Effect(pub Arc<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Effect(..)")
    }
}

impl Effect {
    /// The value, if it is a `T`.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

/// Runs after a receipt is signed and before the response is sent: a step
/// that needs the signed receipt (delivering it to another service) without
/// a side channel between handler and caller. It gets the invocation, its
/// receipt and the handler's [`Effect`], if any, and answers with the
/// receipts of what it invoked in turn (e.g. the other service's answer):
/// the response reports them beside the invocation's own, so the caller
/// learns how the follow-up went from the answer itself.
pub type AfterHook =
    Arc<dyn Fn(Invocation, Receipt, Option<Effect>) -> BoxFuture<Vec<Receipt>> + Send + Sync>;

impl Response {
    /// A success.
    pub fn ok(value: Ipld) -> Self {
        Response {
            out: Ok(value),
            fork: Vec::new(),
            join: None,
            meta: IpldMap::new(),
            effect: None,
        }
    }

    /// A domain failure, to be put in the receipt as is.
    pub fn error(value: Ipld) -> Self {
        Response {
            out: Err(value),
            fork: Vec::new(),
            join: None,
            meta: IpldMap::new(),
            effect: None,
        }
    }

    /// Hands `effect` to the server's after-receipt hook.
    pub fn with_effect(mut self, effect: impl std::any::Any + Send + Sync) -> Self {
        self.effect = Some(Effect(Arc::new(effect)));
        self
    }

    /// A domain failure `{name, message}`, the message cut to
    /// [`crate::bounded::MAX_MESSAGE_BYTES`].
    pub fn failure(name: &str, message: impl Into<String>) -> Self {
        Self::error(error_value(name, message.into()))
    }

    /// Adds a forked invocation (its blocks travel with the receipt).
    pub fn fork(mut self, invocation: Invocation) -> Self {
        self.fork.push(invocation);
        self
    }

    /// Sets the joined invocation.
    pub fn join(mut self, invocation: Invocation) -> Self {
        self.join = Some(invocation);
        self
    }

    /// The result.
    pub fn out(&self) -> &Out {
        &self.out
    }
}

/// The error object ucanto puts in `out.error`: `{name, message, stack}`.
pub fn error_value(name: &str, message: String) -> Ipld {
    Ipld::Map(failure_fields(name, message))
}

/// `{name, message, stack}` as JS @ucanto's `Failure#toJSON` writes them. JS
/// puts a stack trace in `stack`; ours holds only its first line
/// (`"<name>: <message>"`, what JS writes with stack traces disabled), which
/// keeps the field JS peers expect without leaking anything. The name and the
/// message are cut to [`crate::bounded::MAX_MESSAGE_BYTES`] each.
pub fn failure_fields(name: &str, message: String) -> IpldMap {
    let message = crate::bounded::message(message);
    let name = if name.len() > crate::bounded::MAX_MESSAGE_BYTES {
        std::borrow::Cow::Owned(crate::bounded::message(name.to_string()))
    } else {
        std::borrow::Cow::Borrowed(name)
    };
    let mut map = IpldMap::new();
    map.insert("stack".into(), Ipld::String(format!("{name}: {message}")));
    map.insert("name".into(), Ipld::String(name.into_owned()));
    map.insert("message".into(), Ipld::String(message));
    map
}

/// An unexpected handler failure; becomes a `HandlerExecutionError` receipt.
#[derive(Debug, Clone)]
pub struct HandlerError {
    /// Error name of the cause.
    pub name: String,
    /// What went wrong.
    pub message: String,
}

impl HandlerError {
    /// A failure explained by `message` (cut to
    /// [`crate::bounded::MAX_MESSAGE_BYTES`]).
    pub fn new(message: impl std::fmt::Display) -> Self {
        HandlerError {
            name: "Error".into(),
            message: crate::bounded::message(message.to_string()),
        }
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

/// Runs one capability.
pub trait Handler: Send + Sync {
    /// Handles an authorized request.
    fn handle(&self, request: Request) -> BoxFuture<Result<Response, HandlerError>>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Response, HandlerError>> + Send + 'static,
{
    fn handle(&self, request: Request) -> BoxFuture<Result<Response, HandlerError>> {
        Box::pin(self(request))
    }
}

struct Route {
    parser: Arc<dyn CapabilityParser>,
    handler: Arc<dyn Handler>,
    /// The only resource (`with`) the capability may be invoked on, if limited.
    resource: Option<String>,
}

/// Hook told about every `HandlerExecutionError`.
pub type CatchHook = Arc<dyn Fn(&Invocation, &HandlerError) + Send + Sync>;

/// A ucanto service: a signer, a validator configuration and handlers by ability.
pub struct Server {
    signer: Arc<dyn Signer>,
    routes: HashMap<String, Route>,
    validator: ValidatorConfig,
    catch: Option<CatchHook>,
    after: Option<AfterHook>,
    audiences: Vec<Did>,
    max_invocations: usize,
    max_signature_checks: u64,
    /// Permits to run decoding and validation on the blocking pool.
    workers: Arc<tokio::sync::Semaphore>,
}

/// Default most distinct invocations run per message.
pub const DEFAULT_MAX_INVOCATIONS: usize = 64;

/// Default most fresh signature verifications one message may cause, all its
/// invocations together (about 4 for each of [`DEFAULT_MAX_INVOCATIONS`]:
/// an invocation and its proofs; proofs verified before cost nothing).
pub const DEFAULT_MAX_SIGNATURE_CHECKS: u64 = 256;

/// Default most proof validations, and most capabilities examined, for one
/// invocation on a server: real chains need a few dozen; each of the 64
/// invocations of a message may cost this many.
pub const DEFAULT_MAX_VALIDATIONS: usize = 1_000;

/// The default number of validations run at once: one per core.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Builds a [`Server`].
pub struct ServerBuilder {
    server: Server,
}

impl ServerBuilder {
    /// Registers `handler` for the capability `parser` describes.
    pub fn provide(
        mut self,
        parser: Arc<dyn CapabilityParser>,
        handler: impl Handler + 'static,
    ) -> Self {
        let can = parser.can().to_string();
        self.server.routes.insert(
            can,
            Route {
                parser,
                handler: Arc::new(handler),
                resource: None,
            },
        );
        self
    }

    /// Registers `handler` for the capability `parser` describes, invoked on
    /// `resource` only. Anyone may invoke a capability on their own DID
    /// without proof, so a capability that acts on the service itself must
    /// be pinned to it: an invocation on another resource is `Unauthorized`
    /// before the validator or the handler runs.
    pub fn provide_on(
        self,
        resource: &Did,
        parser: Arc<dyn CapabilityParser>,
        handler: impl Handler + 'static,
    ) -> Self {
        let can = parser.can().to_string();
        let mut builder = self.provide(parser, handler);
        if let Some(route) = builder.server.routes.get_mut(&can) {
            route.resource = Some(resource.to_string());
        }
        builder
    }

    /// Replaces the validator configuration (authority must stay the service).
    pub fn validator(mut self, f: impl FnOnce(&mut ValidatorConfig)) -> Self {
        f(&mut self.server.validator);
        self
    }

    /// Also accepts invocations addressed to `did` (e.g. a consolidator that runs
    /// tasks the tracker addressed to itself). The service DID is always accepted.
    pub fn audience(mut self, did: Did) -> Self {
        self.server.audiences.push(did);
        self
    }

    /// Runs at most `limit` distinct invocations per message (default
    /// [`DEFAULT_MAX_INVOCATIONS`]); a message listing more is refused whole.
    pub fn max_invocations(mut self, limit: usize) -> Self {
        self.server.max_invocations = limit;
        self
    }

    /// Allows each message at most `limit` fresh signature verifications
    /// (default [`DEFAULT_MAX_SIGNATURE_CHECKS`]), shared by its invocations;
    /// past them an invocation is `Unauthorized`. Signatures the server
    /// checked before, good or bad, cost nothing.
    pub fn max_signature_checks(mut self, limit: u64) -> Self {
        self.server.max_signature_checks = limit;
        self
    }

    /// Decodes and validates at most `n` invocations at once (default: one
    /// per core), on tokio's blocking threads; the rest wait their turn.
    pub fn validation_workers(mut self, n: usize) -> Self {
        self.server.workers = Arc::new(tokio::sync::Semaphore::new(n.max(1)));
        self
    }

    /// Sets the hook run after each receipt is signed (see [`AfterHook`]).
    pub fn after(mut self, hook: AfterHook) -> Self {
        self.server.after = Some(hook);
        self
    }

    /// Sets the hook told about handler failures.
    pub fn catch(mut self, hook: CatchHook) -> Self {
        self.server.catch = Some(hook);
        self
    }

    /// Finishes.
    pub fn build(self) -> Server {
        self.server
    }
}

/// Signature outcomes a server remembers, as many successes and as many
/// failures: enough for the proofs of many callers, while one-off
/// invocations (and forged proofs) churn through them.
pub const PROOF_CACHE_ENTRIES: usize = 4096;

impl Server {
    /// Starts a server that signs receipts with `signer`.
    pub fn builder(signer: Arc<dyn Signer>) -> ServerBuilder {
        let authority: Arc<dyn Verifier> = signer.verifier();
        ServerBuilder {
            server: Server {
                signer,
                routes: HashMap::new(),
                // Callers repeat their proofs (a node's delegation in every
                // track): each is verified once, then found in the cache.
                validator: ValidatorConfig::new(authority)
                    .with_cache(Arc::new(SignatureCache::with_capacity(PROOF_CACHE_ENTRIES)))
                    .max_validations(DEFAULT_MAX_VALIDATIONS)
                    .max_capability_checks(DEFAULT_MAX_VALIDATIONS),
                catch: None,
                after: None,
                audiences: Vec::new(),
                max_invocations: DEFAULT_MAX_INVOCATIONS,
                max_signature_checks: DEFAULT_MAX_SIGNATURE_CHECKS,
                workers: Arc::new(tokio::sync::Semaphore::new(default_workers())),
            },
        }
    }

    /// The service DID.
    pub fn did(&self) -> &Did {
        self.signer.did()
    }

    /// The service's signer.
    pub fn signer(&self) -> &Arc<dyn Signer> {
        &self.signer
    }

    /// Runs every invocation of `request` (concurrently) and answers with their
    /// receipts, in invocation order. An invocation listed several times runs
    /// once (the response reports receipts by invocation, so it has one
    /// anyway). Fails if an invocation cannot be decoded or the message lists
    /// more distinct invocations than [`ServerBuilder::max_invocations`].
    /// The invocations share one budget of signature verifications
    /// ([`ServerBuilder::max_signature_checks`]).
    pub async fn execute(&self, request: &AgentMessage) -> Result<AgentMessage, CodecError> {
        let mut seen = std::collections::HashSet::new();
        let distinct: Vec<Cid> = request
            .execute()
            .iter()
            .filter(|cid| seen.insert(**cid))
            .copied()
            .collect();
        if distinct.len() > self.max_invocations {
            return Err(CodecError::schema(
                "message",
                format!(
                    "{} distinct invocations, more than the {} this service runs per message",
                    distinct.len(),
                    self.max_invocations
                ),
            ));
        }
        let blocks = request.blocks().clone();
        let decode = move || {
            distinct
                .iter()
                .map(|cid| Invocation::from_blocks(cid, blocks.clone()))
                .collect::<Result<Vec<_>, _>>()
        };
        let invocations = self.offload(decode).await.ok_or_else(shutting_down)??;
        let validator = Arc::new(self.request_validator());
        let ran = futures_util::future::join_all(
            invocations
                .into_iter()
                .map(|inv| self.run_with(inv, validator.clone())),
        )
        .await;
        let mut receipts = Vec::new();
        let mut follow_ups = Vec::new();
        for result in ran {
            let (receipt, more) = result?;
            receipts.push(receipt);
            follow_ups.extend(more);
        }
        // The invocations' own receipts first: a follow-up never takes the
        // place of one in the report.
        receipts.extend(follow_ups);
        self.offload(move || AgentMessage::build(&[], &receipts))
            .await
            .ok_or_else(shutting_down)?
    }

    /// Runs one invocation and signs its receipt (with a message's budget of
    /// signature verifications to itself).
    pub async fn run(&self, invocation: Invocation) -> Result<Receipt, CodecError> {
        self.run_with(invocation, Arc::new(self.request_validator()))
            .await
            .map(|(receipt, _)| receipt)
    }

    /// The validator configuration of one message: the server's, with its
    /// signature cache seen through a budget of its own.
    fn request_validator(&self) -> ValidatorConfig {
        let budget = self.max_signature_checks;
        let view = match &self.validator.verified {
            Some(shared) => shared.budgeted(budget),
            None => SignatureCache::with_budget(budget),
        };
        self.validator.clone().with_cache(Arc::new(view))
    }

    /// Runs `work` on tokio's blocking threads once one of the server's
    /// validation permits is free (inline, outside a tokio runtime). Waiting
    /// is cancelled with the caller; started, `work` runs to its end with
    /// its permit. `None` if the runtime dropped it (shutting down).
    pub(crate) async fn offload<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Some(work());
        };
        let permit = self.workers.clone().acquire_owned().await.ok()?;
        let task = runtime.spawn_blocking(move || {
            let _permit = permit;
            work()
        });
        match task.await {
            Ok(value) => Some(value),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => None,
        }
    }

    /// Runs one invocation: its receipt, and the receipts the after-receipt
    /// hook reports along.
    async fn run_with(
        &self,
        invocation: Invocation,
        validator: Arc<ValidatorConfig>,
    ) -> Result<(Receipt, Vec<Receipt>), CodecError> {
        let max_proofs = validator.max_proofs;
        let response = self.dispatch(&invocation, validator).await;
        let effect = response.effect;
        let parts = ReceiptParts {
            ran: echoed(&invocation, max_proofs),
            out: response.out,
            fork: response.fork,
            join: response.join,
            meta: response.meta,
            proofs: Vec::new(),
        };
        // Signing and gathering the blocks to send back is work in
        // proportion to the invocation too: on the pool.
        let signer = self.signer.clone();
        let issued = self
            .offload(move || Receipt::issue(signer.as_ref(), parts))
            .await
            .ok_or_else(shutting_down)?;
        match issued {
            Ok(receipt) => {
                let follow_ups = match &self.after {
                    Some(hook) => hook(invocation, receipt.clone(), effect).await,
                    None => Vec::new(),
                };
                Ok((receipt, follow_ups))
            }
            // A handler result that cannot be encoded is the handler's failure.
            Err(e) => {
                let failure = HandlerError {
                    name: "EncodeError".into(),
                    message: e.to_string(),
                };
                let out = Err(self.execution_error(&invocation, &failure));
                let ran = echoed(&invocation, max_proofs);
                Receipt::issue(self.signer.as_ref(), ReceiptParts::new(ran, out))
                    .map(|receipt| (receipt, Vec::new()))
            }
        }
    }

    async fn dispatch(&self, invocation: &Invocation, validator: Arc<ValidatorConfig>) -> Response {
        let [capability] = invocation.capabilities() else {
            let caps = invocation
                .capabilities()
                .iter()
                .map(Capability::to_ipld)
                .collect();
            let mut err = IpldMap::new();
            err.insert(
                "name".into(),
                Ipld::String("InvocationCapabilityError".into()),
            );
            err.insert("error".into(), Ipld::Bool(true));
            err.insert(
                "message".into(),
                Ipld::String("Invocation is required to have a single capability.".into()),
            );
            err.insert("capabilities".into(), Ipld::List(caps));
            return Response::error(Ipld::Map(err));
        };
        let Some(route) = self.routes.get(&capability.can) else {
            let message = format!(
                "service does not implement {{can: \"{}\"}} handler",
                capability.can
            );
            return Response::error(Ipld::Map(capability_error(
                "HandlerNotFound",
                message,
                capability,
            )));
        };
        if invocation.audience() != self.did() && !self.audiences.contains(invocation.audience()) {
            return Response::failure(
                "InvalidAudience",
                format!(
                    "Expected literal {:?} instead got {:?}",
                    self.did().as_str(),
                    invocation.audience().as_str()
                ),
            );
        }
        if let Some(resource) = route.resource.as_deref().filter(|r| *r != capability.with) {
            return Response::failure(
                "Unauthorized",
                format!(
                    "{} may only be invoked on {resource}, not on {}",
                    capability.can, capability.with
                ),
            );
        }
        let (owned, parser) = (invocation.clone(), route.parser.clone());
        // Off the async workers; only the (short) message of a refusal
        // comes back.
        let authorized = self
            .offload(move || {
                access(&owned, parser.as_ref(), &validator).map_err(|refused| refused.message)
            })
            .await;
        let authorization = match authorized {
            Some(Ok(a)) => a,
            Some(Err(message)) => return Response::failure("Unauthorized", message),
            None => return Response::failure("Unauthorized", "The service is shutting down"),
        };
        let request = Request {
            invocation: invocation.clone(),
            capability: authorization.capability.clone(),
            authorization,
        };
        match route.handler.handle(request).await {
            Ok(response) => response,
            Err(failure) => {
                tracing::warn!(can = %capability.can, invocation = %invocation.cid(), error = %failure, "handler failed");
                if let Some(hook) = &self.catch {
                    hook(invocation, &failure);
                }
                Response::error(self.execution_error(invocation, &failure))
            }
        }
    }

    fn execution_error(&self, invocation: &Invocation, failure: &HandlerError) -> Ipld {
        let (can, with) = invocation
            .capabilities()
            .first()
            .map(|c| (c.can.clone(), c.with.clone()))
            .unwrap_or_default();
        let message = format!(
            "service handler {{can: \"{can}\"}} error: {}",
            failure.message
        );
        let mut err = capability_error(
            "HandlerExecutionError",
            message,
            &Capability::new(can, with),
        );
        let cause = failure_fields(&failure.name, failure.message.clone());
        err.insert("cause".into(), Ipld::Map(cause));
        Ipld::Map(err)
    }
}

/// Why work handed to the pool did not run.
fn shutting_down() -> CodecError {
    CodecError::schema("message", "the service is shutting down")
}

/// What a receipt carries of `invocation`: the invocation with its proofs,
/// as JS does, unless it cites more than `max_proofs` (and was refused for
/// it) — then only its CID, so that echoing thousands of proofs the caller
/// sent costs nothing. The receipt itself is the same either way.
fn echoed(invocation: &Invocation, max_proofs: usize) -> Ran {
    if invocation.data().proofs.len() <= max_proofs {
        invocation.clone().into()
    } else {
        Ran::Link(invocation.cid())
    }
}

fn capability_error(name: &str, message: String, capability: &Capability) -> IpldMap {
    let mut cap = IpldMap::new();
    cap.insert("can".into(), Ipld::String(capability.can.clone()));
    cap.insert("with".into(), Ipld::String(capability.with.clone()));
    let mut err = failure_fields(name, message);
    err.insert("error".into(), Ipld::Bool(true));
    err.insert("capability".into(), Ipld::Map(cap));
    err
}

/// The error name in a receipt's `out.error`, if it has one.
pub fn error_name(out: &Out) -> Option<&str> {
    match out {
        Err(Ipld::Map(map)) => match map.get("name") {
            Some(Ipld::String(name)) => Some(name),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests;
