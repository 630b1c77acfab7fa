//! Agent messages (`ucanto/message@7.0.0`): what travels in one HTTP body.
//!
//! # Format
//! ```text
//! request:  {"ucanto/message@7.0.0": {"execute": [Link<invocation>, …]}}
//! response: {"ucanto/message@7.0.0": {"report": {"<invocation CID>": Link<receipt>, …}}}
//! ```
//! The message block is the single root of a CARv1 that also holds every block
//! the invocations and receipts link to.

use std::collections::BTreeMap;
use std::sync::Arc;

use cid::Cid;

use crate::car::CarError;
use crate::dag::{Block, BlockStore, CodecError, Fields, Ipld, IpldMap};
use crate::receipt::Receipt;
use crate::ucan::{Delegation, Invocation};

/// The message tag.
pub const MESSAGE_TAG: &str = "ucanto/message@7.0.0";

/// Failure to read an agent message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The CAR is malformed.
    #[error("invalid CAR: {0}")]
    Car(#[from] CarError),
    /// The CAR does not have exactly one root.
    #[error("expected exactly one root, found {0}")]
    RootCount(usize),
    /// A block is malformed.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// A decoded or built agent message.
#[derive(Clone, Debug)]
pub struct AgentMessage {
    root: Block,
    blocks: Arc<BlockStore>,
    execute: Vec<Cid>,
    report: BTreeMap<String, Cid>,
}

impl AgentMessage {
    /// A message carrying `invocations` to run and `receipts` reporting results.
    pub fn build(invocations: &[Invocation], receipts: &[Receipt]) -> Result<Self, CodecError> {
        let mut blocks = BlockStore::new();
        let mut execute = Vec::new();
        for inv in invocations {
            execute.push(inv.cid());
            blocks.extend(inv.export());
        }
        let mut report = BTreeMap::new();
        for receipt in receipts {
            blocks.extend(receipt.export());
            // A repeated invocation keeps its first receipt, as in JS.
            report
                .entry(receipt.ran_cid().to_string())
                .or_insert(receipt.cid());
        }
        let mut body = IpldMap::new();
        if !execute.is_empty() {
            body.insert(
                "execute".into(),
                Ipld::List(execute.iter().map(|c| Ipld::Link(*c)).collect()),
            );
        }
        if !report.is_empty() {
            let map = report
                .iter()
                .map(|(k, v)| (k.clone(), Ipld::Link(*v)))
                .collect();
            body.insert("report".into(), Ipld::Map(map));
        }
        let mut top = IpldMap::new();
        top.insert(MESSAGE_TAG.into(), Ipld::Map(body));
        let root = Block::encode(&Ipld::Map(top))?;
        blocks.insert(root.clone());
        Ok(AgentMessage {
            root,
            blocks: Arc::new(blocks),
            execute,
            report,
        })
    }

    /// Adds `blocks` that travel with the message without being linked
    /// from it: the handler of its invocations sees them among the
    /// invocation's blocks (JS @ucanto ignores them). Used to hand a
    /// service context that must not change an invocation's CID.
    pub fn with_blocks(mut self, blocks: impl IntoIterator<Item = Block>) -> Self {
        let store = Arc::make_mut(&mut self.blocks);
        for block in blocks {
            store.insert(block);
        }
        self
    }

    /// Views the message named `root` among `blocks`.
    pub fn from_blocks(root: &Cid, blocks: Arc<BlockStore>) -> Result<Self, CodecError> {
        let block = blocks.block(root)?;
        let value = block.decode()?;
        let top = Fields::of("message", &value)?.only(&[MESSAGE_TAG])?;
        let body =
            Fields::of("message body", top.required(MESSAGE_TAG)?)?.only(&["execute", "report"])?;
        let execute = if body.get("execute").is_some() {
            body.links("execute")?
        } else {
            Vec::new()
        };
        let mut report = BTreeMap::new();
        if body.get("report").is_some() {
            for (key, value) in body.submap("report")? {
                let Ipld::Link(cid) = value else {
                    return Err(CodecError::schema("message.report", "values must be links"));
                };
                key.parse::<Cid>().map_err(|_| {
                    CodecError::schema("message.report", format!("key {key:?} is not a CID"))
                })?;
                report.insert(key.clone(), *cid);
            }
        }
        Ok(AgentMessage {
            root: block,
            blocks,
            execute,
            report,
        })
    }

    /// Reads a message from CAR bytes (exactly one root: the message block).
    pub fn from_car(bytes: &[u8]) -> Result<Self, MessageError> {
        let (header, blocks) = crate::car::decode(bytes)?;
        if header.roots.len() != 1 {
            return Err(MessageError::RootCount(header.roots.len()));
        }
        let store: BlockStore = blocks
            .into_iter()
            .map(|(cid, bytes)| Block { cid, bytes })
            .collect();
        Ok(Self::from_blocks(&header.roots[0], Arc::new(store))?)
    }

    /// Encodes the message as CAR bytes.
    pub fn to_car(&self) -> Vec<u8> {
        crate::car::encode(
            &[self.root.cid],
            self.blocks.iter().map(|b| (b.cid, b.bytes)),
        )
    }

    /// The message block's CID.
    pub fn cid(&self) -> Cid {
        self.root.cid
    }

    /// The blocks the message carries.
    pub fn blocks(&self) -> &Arc<BlockStore> {
        &self.blocks
    }

    /// Links of the invocations to execute, in order.
    pub fn execute(&self) -> &[Cid] {
        &self.execute
    }

    /// The invocations to execute; each is decoded with access to all the message's blocks.
    pub fn invocations(&self) -> Vec<Result<Invocation, CodecError>> {
        self.execute
            .iter()
            .map(|cid| Delegation::from_blocks(cid, self.blocks.clone()))
            .collect()
    }

    /// The reported receipts: invocation CID string → receipt link.
    pub fn report(&self) -> &BTreeMap<String, Cid> {
        &self.report
    }

    /// The receipt reported for invocation `ran`, if any.
    pub fn receipt_for(&self, ran: &Cid) -> Option<Result<Receipt, CodecError>> {
        let link = self.report.get(&ran.to_string())?;
        Some(Receipt::from_blocks(link, self.blocks.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::{Ed25519Signer, Signer};
    use crate::receipt::ReceiptParts;
    use crate::ucan::Capability;

    #[test]
    fn request_and_response_round_trip() {
        let alice = Ed25519Signer::from_seed([1; 32]);
        let service = Ed25519Signer::from_seed([4; 32]);
        let inv = Delegation::builder(&alice, service.did().clone())
            .capability(Capability::new("test/echo", alice.did().as_str()))
            .build()
            .unwrap();
        let request = AgentMessage::build(std::slice::from_ref(&inv), &[]).unwrap();
        let back = AgentMessage::from_car(&request.to_car()).unwrap();
        assert_eq!(back.execute(), &[inv.cid()]);
        assert_eq!(back.invocations()[0].as_ref().unwrap().cid(), inv.cid());

        let receipt = Receipt::issue(&service, ReceiptParts::new(&inv, Ok(Ipld::Null))).unwrap();
        let response = AgentMessage::build(&[], std::slice::from_ref(&receipt)).unwrap();
        let back = AgentMessage::from_car(&response.to_car()).unwrap();
        assert_eq!(
            back.receipt_for(&inv.cid()).unwrap().unwrap().cid(),
            receipt.cid()
        );
        assert!(back.receipt_for(&receipt.cid()).is_none());
    }

    #[test]
    fn bad_messages_are_typed_errors() {
        let empty_roots = crate::car::encode(&[], Vec::<(Cid, Vec<u8>)>::new());
        assert!(matches!(
            AgentMessage::from_car(&empty_roots),
            Err(MessageError::RootCount(0))
        ));
        assert!(matches!(
            AgentMessage::from_car(&[1, 2, 3]),
            Err(MessageError::Car(_))
        ));
        let other = Block::encode(&Ipld::String("hi".into())).unwrap();
        let car = crate::car::encode(&[other.cid], [(other.cid, other.bytes.clone())]);
        assert!(matches!(
            AgentMessage::from_car(&car),
            Err(MessageError::Codec(_))
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn from_car_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = AgentMessage::from_car(&bytes);
        }

        #[test]
        fn any_root_block_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
            let cid = crate::dag::cid_of(crate::dag::DAG_CBOR, &bytes);
            let car = crate::car::encode(&[cid], [(cid, bytes)]);
            let _ = AgentMessage::from_car(&car);
        }
    }
}
