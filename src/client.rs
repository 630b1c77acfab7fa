//! Client: send invocations to a service and get verified receipts back.
//!
//! A [`Connection`] knows the service's verifier and a [`Channel`] that
//! carries CAR bodies: over HTTP ([`HttpChannel`]) or straight into an
//! in-process [`Server`] ([`ServerChannel`]) through the same codec.

use std::sync::Arc;

use crate::message::{AgentMessage, MessageError};
use crate::principal::{Did, Verifier};
use crate::receipt::Receipt;
use crate::server::{BoxFuture, Server};
use crate::transport::CAR_CONTENT_TYPE;
use crate::ucan::Invocation;

/// A failure to obtain a verified receipt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request could not be sent or the response not read (retryable).
    #[error("transport failure: {0}")]
    Transport(#[source] reqwest::Error),
    /// The service answered with a non-success HTTP status.
    #[error("HTTP {status}: {body}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// Response body (text).
        body: String,
    },
    /// The response body is not a valid agent message.
    #[error("invalid response: {0}")]
    Decode(#[from] MessageError),
    /// The response has no receipt for an invocation we sent.
    #[error("no receipt for invocation {0}")]
    MissingReceipt(cid::Cid),
    /// A receipt's signature does not verify with the service key.
    #[error("receipt {0} is not signed by the service")]
    InvalidSignature(cid::Cid),
    /// The request could not be encoded.
    #[error("cannot encode request: {0}")]
    Encode(#[from] crate::dag::CodecError),
}

impl ClientError {
    /// Whether retrying later may succeed (network failures and 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            ClientError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Carries one request body to a service and brings back its response body.
pub trait Channel: Send + Sync {
    /// Sends `body` (a CAR agent message) and returns the response body.
    fn request(&self, body: Vec<u8>) -> BoxFuture<Result<Vec<u8>, ClientError>>;
}

/// A channel over HTTP `POST`.
#[derive(Clone, Debug)]
pub struct HttpChannel {
    url: String,
    http: reqwest::Client,
}

impl HttpChannel {
    /// A channel posting to `url`.
    pub fn new(url: impl Into<String>) -> Self {
        HttpChannel {
            url: url.into(),
            http: reqwest::Client::new(),
        }
    }

    /// A channel using a configured HTTP client (timeouts, pools).
    pub fn with_client(url: impl Into<String>, http: reqwest::Client) -> Self {
        HttpChannel {
            url: url.into(),
            http,
        }
    }
}

impl Channel for HttpChannel {
    fn request(&self, body: Vec<u8>) -> BoxFuture<Result<Vec<u8>, ClientError>> {
        let request = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, CAR_CONTENT_TYPE)
            .header(reqwest::header::ACCEPT, CAR_CONTENT_TYPE)
            .body(body);
        Box::pin(async move {
            let response = request.send().await.map_err(ClientError::Transport)?;
            let status = response.status();
            let bytes = response.bytes().await.map_err(ClientError::Transport)?;
            if !status.is_success() {
                return Err(ClientError::Status {
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                });
            }
            Ok(bytes.to_vec())
        })
    }
}

/// A channel into a server in the same process, through the same CAR codec.
#[derive(Clone)]
pub struct ServerChannel(pub Arc<Server>);

impl Channel for ServerChannel {
    fn request(&self, body: Vec<u8>) -> BoxFuture<Result<Vec<u8>, ClientError>> {
        let server = self.0.clone();
        Box::pin(async move {
            crate::transport::respond(&server, &body)
                .await
                .map_err(|e| ClientError::Status {
                    status: 400,
                    body: e.to_string(),
                })
        })
    }
}

/// A connection to one service.
#[derive(Clone)]
pub struct Connection {
    service: Arc<dyn Verifier>,
    channel: Arc<dyn Channel>,
}

impl Connection {
    /// A connection to the service verified by `service`, over `channel`.
    pub fn new(service: Arc<dyn Verifier>, channel: Arc<dyn Channel>) -> Self {
        Connection { service, channel }
    }

    /// A connection over HTTP to `url`.
    pub fn http(service: Arc<dyn Verifier>, url: impl Into<String>) -> Self {
        Self::new(service, Arc::new(HttpChannel::new(url)))
    }

    /// The service DID.
    pub fn did(&self) -> &Did {
        self.service.did()
    }

    /// Sends `invocations` in one message and returns their receipts in the
    /// same order, each checked to be signed by the service.
    pub async fn execute(&self, invocations: &[Invocation]) -> Result<Vec<Receipt>, ClientError> {
        self.execute_with(invocations, Vec::new()).await
    }

    /// [`Connection::execute`], with `blocks` carried in the message
    /// besides the invocations' own (see [`AgentMessage::with_blocks`]).
    pub async fn execute_with(
        &self,
        invocations: &[Invocation],
        blocks: Vec<crate::dag::Block>,
    ) -> Result<Vec<Receipt>, ClientError> {
        Ok(self.exchange(invocations, blocks).await?.0)
    }

    /// [`Connection::execute_with`], and the whole response: what else it
    /// reports (the receipts of what the service invoked in turn, see
    /// `server::AfterHook`), for the caller to read and verify.
    pub async fn exchange(
        &self,
        invocations: &[Invocation],
        blocks: Vec<crate::dag::Block>,
    ) -> Result<(Vec<Receipt>, AgentMessage), ClientError> {
        let request = AgentMessage::build(invocations, &[])?.with_blocks(blocks);
        let body = self.channel.request(request.to_car()).await?;
        let response = AgentMessage::from_car(&body)?;
        let receipts = invocations
            .iter()
            .map(|inv| {
                let receipt = response
                    .receipt_for(&inv.cid())
                    .ok_or(ClientError::MissingReceipt(inv.cid()))?
                    .map_err(|e| ClientError::Decode(MessageError::Codec(e)))?;
                if !receipt.verify_signature(self.service.as_ref()) {
                    return Err(ClientError::InvalidSignature(receipt.cid()));
                }
                Ok(receipt)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((receipts, response))
    }

    /// Sends one invocation and returns its verified receipt.
    pub async fn invoke(&self, invocation: &Invocation) -> Result<Receipt, ClientError> {
        let mut receipts = self.execute(std::slice::from_ref(invocation)).await?;
        Ok(receipts.remove(0))
    }
}
