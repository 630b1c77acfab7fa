//! Building and signing a [`Delegation`].

use std::sync::Arc;

use crate::dag::{Block, BlockStore, CodecError, IpldMap};
use crate::principal::{Did, Signer};

use super::data::signing_payload;
use super::{now, Capability, Delegation, Proof, UcanData, UCAN_VERSION};

pub(super) enum Expiration {
    Default,
    Never,
    At(u64),
}

/// Builds and signs a [`Delegation`].
pub struct DelegationBuilder<'a> {
    pub(super) issuer: &'a dyn Signer,
    pub(super) audience: Did,
    pub(super) capabilities: Vec<Capability>,
    pub(super) expiration: Expiration,
    pub(super) not_before: Option<u64>,
    pub(super) nonce: Option<String>,
    pub(super) facts: Vec<IpldMap>,
    pub(super) proofs: Vec<Proof>,
    pub(super) attached: Vec<Block>,
}

impl DelegationBuilder<'_> {
    /// Adds a capability.
    pub fn capability(mut self, capability: Capability) -> Self {
        self.capabilities.push(capability);
        self
    }

    /// Expires at `exp` (Unix seconds). Without this, it expires 30 s from now, as in JS.
    pub fn expiration(mut self, exp: u64) -> Self {
        self.expiration = Expiration::At(exp);
        self
    }

    /// Never expires (`exp: null`).
    pub fn no_expiration(mut self) -> Self {
        self.expiration = Expiration::Never;
        self
    }

    /// Not valid before `nbf` (Unix seconds).
    pub fn not_before(mut self, nbf: u64) -> Self {
        self.not_before = Some(nbf);
        self
    }

    /// Sets the nonce.
    pub fn nonce(mut self, nonce: impl Into<String>) -> Self {
        self.nonce = Some(nonce.into());
        self
    }

    /// Adds a fact.
    pub fn fact(mut self, fact: IpldMap) -> Self {
        self.facts.push(fact);
        self
    }

    /// Adds a proof.
    pub fn proof(mut self, proof: impl Into<Proof>) -> Self {
        self.proofs.push(proof.into());
        self
    }

    /// Carries a block linked from `nb` or a fact along with the UCAN.
    pub fn attach(mut self, block: Block) -> Self {
        self.attached.push(block);
        self
    }

    /// Signs and encodes.
    pub fn build(self) -> Result<Delegation, CodecError> {
        let expiration = match self.expiration {
            Expiration::Default => Some(now() + 30),
            Expiration::Never => None,
            Expiration::At(e) => Some(e),
        };
        let mut blocks = BlockStore::new();
        let mut links = Vec::new();
        for proof in &self.proofs {
            match proof {
                Proof::Link(cid) => links.push(*cid),
                Proof::Delegation(d) => {
                    links.push(d.cid());
                    blocks.extend(d.export());
                }
            }
        }
        let payload = signing_payload(
            UCAN_VERSION,
            self.issuer.signature_code(),
            self.issuer.did(),
            &self.audience,
            &self.capabilities,
            expiration,
            self.not_before,
            self.nonce.as_deref(),
            &self.facts,
            &links,
        )?;
        let data = UcanData {
            version: UCAN_VERSION.into(),
            issuer: self.issuer.did().clone(),
            audience: self.audience,
            capabilities: self.capabilities,
            expiration,
            not_before: self.not_before,
            nonce: self.nonce,
            facts: self.facts,
            proofs: links,
            signature: self.issuer.sign(&payload),
        };
        let attachable = data.attached_links();
        for block in self.attached {
            if !attachable.contains(&block.cid) {
                return Err(CodecError::schema(
                    "attached block",
                    format!("{} is not linked from nb or facts", block.cid),
                ));
            }
            blocks.insert(block);
        }
        let root = Block::encode(&data.to_ipld())?;
        blocks.insert(root.clone());
        Ok(Delegation {
            root,
            data: Arc::new(data),
            blocks: Arc::new(blocks),
            payload: Default::default(),
            canonical: true,
        })
    }
}
