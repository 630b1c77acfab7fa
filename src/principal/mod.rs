//! Principals: DIDs, ed25519 and RSA signers and verifiers, and signatures.
//!
//! A principal is named by a DID. `did:key` DIDs embed their public key, so
//! anything they sign verifies on its own ([`verifier_for`]). A service may
//! present itself under a `did:web` identity while signing with its key
//! ([`Ed25519Signer::with_did`]); verifying such signatures needs the key,
//! which the validator gets from configuration or a `ucan/attest`.
//!
//! # Formats
//! - UCAN principal bytes: `varint(0xed) ‖ public key` for did:key ed25519,
//!   `varint(0x1205) ‖ PKCS#1 DER public key` for did:key RSA ([`rsa`]),
//!   `varint(0x0d1d) ‖ utf8(did without "did:")` for any other DID.
//! - Signature (varsig): `varint(alg) ‖ varint(len) ‖ raw`; ed25519 is
//!   `ed a1 03 40 ‖ 64 bytes`, RS256 `85 a4 c0 06 ‖ varint(len) ‖ raw`.
//! - Private key ("M…"): multibase base64pad of `varint(0x1300) ‖ seed ‖
//!   varint(0xed) ‖ public key` (ed25519) or `varint(0x1305) ‖ PKCS#1 DER`
//!   (RSA); [`decode_signer`] and [`parse_signer`] take either.

use std::fmt;
use std::sync::Arc;

use crate::memo::Memo;
use crate::varint;

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};

mod batch;
pub mod fixtures;
pub mod rsa;

pub use self::rsa::{RsaSigner, RsaVerifier, RSA_PRIV};

/// Multicodec of an ed25519 public key.
pub const ED25519_PUB: u64 = 0xed;
/// Multicodec of an ed25519 private key (as used in the "M…" key format).
pub const ED25519_PRIV: u64 = 0x1300;
/// Multicodec of an RSA public key.
pub const RSA_PUB: u64 = 0x1205;
/// Multicodec of a P-256 public key.
pub const P256_PUB: u64 = 0x1200;
/// Multicodec of a secp256k1 public key.
pub const SECP256K1_PUB: u64 = 0xe7;
/// Multicodec tag that prefixes a non-key DID in its UCAN byte form.
pub const DID_CORE: u64 = 0x0d1d;
/// Varsig code of an EdDSA (ed25519) signature.
pub const SIG_EDDSA: u64 = 0xd0ed;
/// Varsig code of an RS256 signature.
pub const SIG_RS256: u64 = 0xd01205;

/// A failure to parse or use a principal.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrincipalError {
    /// Not a syntactically valid DID.
    #[error("invalid DID {0:?}: {1}")]
    InvalidDid(String, String),
    /// A did:key whose key type we cannot verify with.
    #[error("unsupported key type 0x{0:x} in {1}")]
    UnsupportedKey(u64, String),
    /// A DID we cannot derive a verifier from without resolution (e.g. did:web).
    #[error("cannot verify signatures of {0} without its key")]
    Unresolvable(String),
    /// A malformed private key.
    #[error("invalid private key: {0}")]
    InvalidKey(String),
    /// A malformed signature.
    #[error("invalid signature: {0}")]
    InvalidSignature(String),
}

/// A decentralized identifier, e.g. `did:key:z6Mk…` or `did:web:tracker.example`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Did(String);

impl Did {
    /// Parses and checks a DID string: `did:<method>:<id>`.
    pub fn parse(did: &str) -> Result<Did, PrincipalError> {
        let bad = |why: &str| PrincipalError::InvalidDid(did.to_string(), why.to_string());
        let rest = did
            .strip_prefix("did:")
            .ok_or_else(|| bad("must start with did:"))?;
        let (method, id) = rest.split_once(':').ok_or_else(|| bad("missing method"))?;
        if method.is_empty()
            || !method
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(bad("invalid method"));
        }
        if id.is_empty() {
            return Err(bad("empty method-specific id"));
        }
        if method == "key" {
            let (code, _) = did_key_bytes(did)?;
            if ![ED25519_PUB, RSA_PUB, P256_PUB, SECP256K1_PUB].contains(&code) {
                return Err(PrincipalError::UnsupportedKey(code, did.to_string()));
            }
        }
        Ok(Did(did.to_string()))
    }

    /// The DID string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a `did:key` DID (self-certifying).
    pub fn is_key(&self) -> bool {
        self.0.starts_with("did:key:")
    }

    /// The DID's byte form inside a dag-cbor UCAN.
    pub fn to_ucan_bytes(&self) -> Vec<u8> {
        if self.is_key() {
            // Checked in `parse`, so this cannot fail.
            did_key_bytes(&self.0)
                .map(|(_, b)| b.to_vec())
                .unwrap_or_default()
        } else {
            let mut out = Vec::new();
            varint::encode(DID_CORE, &mut out);
            out.extend_from_slice(&self.0.as_bytes()[4..]);
            out
        }
    }

    /// Reads the byte form found in a dag-cbor UCAN.
    ///
    /// Only the canonical form is accepted (`to_ucan_bytes` of the result):
    /// a DID written in another valid form (a did:key in the generic form)
    /// would let anyone re-encode a signed UCAN under a new CID.
    pub fn from_ucan_bytes(bytes: &[u8]) -> Result<Did, PrincipalError> {
        let did = Self::from_any_ucan_bytes(bytes)?;
        // A key's bytes are its one form already (the multicodec varint is
        // read strictly); only the generic form can be another.
        let generic = varint::decode(bytes).is_ok_and(|(code, _)| code == DID_CORE);
        if generic && did.to_ucan_bytes() != bytes {
            return Err(PrincipalError::InvalidDid(
                format!("0x{}", hex_prefix(bytes)),
                format!("not the canonical byte form of {did}"),
            ));
        }
        Ok(did)
    }

    fn from_any_ucan_bytes(bytes: &[u8]) -> Result<Did, PrincipalError> {
        let bad =
            |why: &str| PrincipalError::InvalidDid(format!("0x{}", hex_prefix(bytes)), why.into());
        let (code, len) = varint::decode(bytes)
            .ok()
            .ok_or_else(|| bad("bad multicodec prefix"))?;
        match code {
            DID_CORE => {
                let rest = std::str::from_utf8(&bytes[len..]).map_err(|_| bad("not UTF-8"))?;
                Did::parse(&format!("did:{rest}"))
            }
            ED25519_PUB | RSA_PUB | P256_PUB | SECP256K1_PUB => {
                if code == ED25519_PUB && bytes.len() != len + 32 {
                    return Err(bad("ed25519 key must be 32 bytes"));
                }
                // Remembered, like the other way round: base58 is slow.
                static ENCODED: Memo<Vec<u8>, Did> = Memo::new(RESOLVED_KEYS);
                Ok(ENCODED.get_or_insert_with(bytes, |bytes| {
                    let text = multibase::encode(multibase::Base::Base58Btc, bytes);
                    Did(format!("did:key:{text}"))
                }))
            }
            other => Err(PrincipalError::UnsupportedKey(
                other,
                "UCAN principal".into(),
            )),
        }
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The multicodec and bytes of a did:key, remembered: the same keys are
/// read in UCAN after UCAN, and base58 is slow.
fn did_key_bytes(did: &str) -> Result<(u64, Arc<[u8]>), PrincipalError> {
    // Shared, so that a lookup (every DID parsed) copies no key.
    static DECODED: Memo<String, (u64, Arc<[u8]>)> = Memo::new(RESOLVED_KEYS);
    DECODED.get_or_try_insert_with(did, |did| {
        decode_did_key(did).map(|(code, bytes)| (code, Arc::from(bytes)))
    })
}

/// Decodes the multicodec-prefixed key of a did:key.
fn decode_did_key(did: &str) -> Result<(u64, Vec<u8>), PrincipalError> {
    let bad = |why: &str| PrincipalError::InvalidDid(did.to_string(), why.to_string());
    let text = did
        .strip_prefix("did:key:")
        .ok_or_else(|| bad("not a did:key"))?;
    if !text.starts_with('z') {
        return Err(bad("did:key must be base58btc (z…)"));
    }
    let (_, bytes) = multibase::decode(text).map_err(|e| bad(&e.to_string()))?;
    let (code, len) = varint::decode(&bytes)
        .ok()
        .ok_or_else(|| bad("bad multicodec prefix"))?;
    if code == ED25519_PUB && bytes.len() != len + 32 {
        return Err(bad("ed25519 key must be 32 bytes"));
    }
    Ok((code, bytes))
}

impl fmt::Display for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Did({})", self.0)
    }
}

impl std::str::FromStr for Did {
    type Err = PrincipalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Did::parse(s)
    }
}

/// A signature in varsig form: the algorithm code and the raw signature bytes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Signature {
    /// Varsig algorithm code (e.g. [`SIG_EDDSA`]).
    pub code: u64,
    /// The raw signature.
    pub raw: Vec<u8>,
}

impl Signature {
    /// The varsig bytes: `varint(code) ‖ varint(len) ‖ raw`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw.len() + 6);
        varint::encode(self.code, &mut out);
        varint::encode(self.raw.len() as u64, &mut out);
        out.extend_from_slice(&self.raw);
        out
    }

    /// Parses varsig bytes, checking the length against the algorithm.
    pub fn decode(bytes: &[u8]) -> Result<Signature, PrincipalError> {
        let bad = |why: &str| PrincipalError::InvalidSignature(why.to_string());
        let (code, a) = varint::decode(bytes)
            .ok()
            .ok_or_else(|| bad("bad algorithm varint"))?;
        let (len, b) = varint::decode(&bytes[a..])
            .ok()
            .ok_or_else(|| bad("bad length varint"))?;
        let raw = &bytes[a + b..];
        if raw.len() as u64 != len {
            return Err(bad(&format!("declared {len} bytes, found {}", raw.len())));
        }
        if code == SIG_EDDSA && raw.len() != 64 {
            return Err(bad("ed25519 signatures are 64 bytes"));
        }
        // `varint::decode` takes minimal varints only, so these bytes are the
        // one encoding of this signature.
        Ok(Signature {
            code,
            raw: raw.to_vec(),
        })
    }

    /// The JWT `alg` name of the algorithm.
    pub fn algorithm(&self) -> String {
        algorithm_name(self.code)
    }
}

/// The JWT `alg` name of a varsig code.
pub fn algorithm_name(code: u64) -> String {
    match code {
        SIG_EDDSA => "EdDSA".into(),
        // JS's Absentee signs with an empty algorithm name.
        SIG_NON_STANDARD => String::new(),
        SIG_RS256 => "RS256".into(),
        0xd0e7 => "ES256K".into(),
        0xd01200 => "ES256".into(),
        other => format!("0x{other:x}"),
    }
}

/// Something that signs on behalf of a DID.
pub trait Signer: Send + Sync + fmt::Debug {
    /// The DID this signer presents (may be a did:web).
    fn did(&self) -> &Did;
    /// Signs `payload`.
    fn sign(&self, payload: &[u8]) -> Signature;
    /// The varsig code of the signatures this signer makes.
    fn signature_code(&self) -> u64;
    /// A verifier for this signer's signatures, under the same presented DID.
    fn verifier(&self) -> Arc<dyn Verifier>;
}

/// Something that checks signatures made on behalf of a DID.
pub trait Verifier: Send + Sync + fmt::Debug {
    /// The DID whose signatures this verifies.
    fn did(&self) -> &Did;
    /// Whether `signature` is a valid signature of `payload`.
    fn verify(&self, payload: &[u8], signature: &Signature) -> bool;
    /// The did:key of the key behind this verifier (the same as [`Verifier::did`]
    /// unless it verifies for a did:web); error messages name it, as JS does.
    fn key_did(&self) -> &Did {
        self.did()
    }
    /// The ed25519 key, for verifiers that have one: [`verify_all`] checks
    /// their signatures in batches.
    fn ed25519(&self) -> Option<&VerifyingKey> {
        None
    }
}

/// Whether every `(verifier, payload, signature)` is valid. Ed25519
/// signatures are checked together (batch verification with repeated keys
/// merged, [`batch`]: two to three times as fast per signature); any other,
/// one by one. `false` says only that one failed: verify them singly to
/// learn which.
pub fn verify_all(items: &[(&dyn Verifier, &[u8], &Signature)]) -> bool {
    let mut batch = SignatureBatch::with_capacity(items.len());
    for (verifier, payload, signature) in items {
        batch.push(*verifier, payload, signature);
    }
    batch.verify()
}

/// Signatures to be checked together, as [`verify_all`] checks them, added
/// one at a time: each is reduced to what the check needs when it is added,
/// so its payload need not be kept. Signatures other than ed25519 are
/// verified as they are added.
#[derive(Default)]
pub struct SignatureBatch {
    ed25519: batch::Ed25519Batch,
    /// A signature verified on its own was invalid.
    failed: bool,
}

impl SignatureBatch {
    /// An empty batch, with room for `signatures`.
    pub fn with_capacity(signatures: usize) -> Self {
        SignatureBatch {
            ed25519: batch::Ed25519Batch::with_capacity(signatures),
            failed: false,
        }
    }

    /// Adds `verifier`'s `signature` of `payload`.
    pub fn push(&mut self, verifier: &dyn Verifier, payload: &[u8], signature: &Signature) {
        let raw = <[u8; 64]>::try_from(signature.raw.as_slice()).ok();
        match (verifier.ed25519(), raw) {
            (Some(key), Some(raw)) if signature.code == SIG_EDDSA => {
                self.ed25519
                    .push(payload, &ed25519_dalek::Signature::from_bytes(&raw), key);
            }
            _ => self.failed |= !verifier.verify(payload, signature),
        }
    }

    /// Ed25519 signatures waiting for [`SignatureBatch::verify`].
    pub fn pending(&self) -> usize {
        self.ed25519.len()
    }

    /// Whether every signature added is valid. `false` says only that one
    /// is not.
    pub fn verify(&self) -> bool {
        !self.failed && self.ed25519.verify()
    }
}

/// An ed25519 signer.
#[derive(Clone)]
pub struct Ed25519Signer {
    key: SigningKey,
    key_did: Did,
    did: Did,
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "Ed25519Signer({})", self.did)
    }
}

impl Ed25519Signer {
    /// A signer from a 32-byte seed (the ed25519 secret key).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let key_did = ed25519_did(&key.verifying_key());
        Ed25519Signer {
            key,
            did: key_did.clone(),
            key_did,
        }
    }

    /// A fresh signer from the operating system's randomness.
    pub fn generate() -> Self {
        let key = SigningKey::generate(&mut rand_core::OsRng);
        Self::from_seed(key.to_bytes())
    }

    /// Parses the multibase "M…" private key format used by upstream configuration.
    pub fn parse(text: &str) -> Result<Self, PrincipalError> {
        let bad = |why: &str| PrincipalError::InvalidKey(why.to_string());
        let (base, bytes) = multibase::decode(text.trim()).map_err(|e| bad(&e.to_string()))?;
        if base != multibase::Base::Base64Pad {
            return Err(bad("expected multibase base64pad (M…)"));
        }
        Self::decode(&bytes)
    }

    /// Decodes `varint(0x1300) ‖ seed ‖ varint(0xed) ‖ public key`.
    pub fn decode(bytes: &[u8]) -> Result<Self, PrincipalError> {
        let bad = |why: &str| PrincipalError::InvalidKey(why.to_string());
        if bytes.len() != 68 || bytes[..2] != [0x80, 0x26] || bytes[34..36] != [0xed, 0x01] {
            return Err(bad(
                "expected 68 bytes: 0x1300 tag, seed, 0xed tag, public key",
            ));
        }
        let seed: [u8; 32] = bytes[2..34].try_into().map_err(|_| bad("seed"))?;
        let signer = Self::from_seed(seed);
        if signer.key.verifying_key().as_bytes() != &bytes[36..] {
            return Err(bad("public key does not match the seed"));
        }
        Ok(signer)
    }

    /// The 68-byte private key encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0x80, 0x26];
        out.extend_from_slice(&self.key.to_bytes());
        out.extend_from_slice(&[0xed, 0x01]);
        out.extend_from_slice(self.key.verifying_key().as_bytes());
        out
    }

    /// The "M…" multibase private key string.
    pub fn format(&self) -> String {
        multibase::encode(multibase::Base::Base64Pad, self.encode())
    }

    /// The same key presented under another DID (e.g. `did:web:tracker.example`).
    pub fn with_did(&self, did: Did) -> Self {
        Ed25519Signer {
            key: self.key.clone(),
            key_did: self.key_did.clone(),
            did,
        }
    }

    /// The did:key of the underlying key, whatever DID is presented.
    pub fn key_did(&self) -> &Did {
        &self.key_did
    }

    /// The 32-byte seed.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }
}

impl Signer for Ed25519Signer {
    fn did(&self) -> &Did {
        &self.did
    }
    fn sign(&self, payload: &[u8]) -> Signature {
        Signature {
            code: SIG_EDDSA,
            raw: self.key.sign(payload).to_bytes().to_vec(),
        }
    }
    fn signature_code(&self) -> u64 {
        SIG_EDDSA
    }
    fn verifier(&self) -> Arc<dyn Verifier> {
        Arc::new(Ed25519Verifier {
            key: self.key.verifying_key(),
            did: self.did.clone(),
            key_did: self.key_did.clone(),
        })
    }
}

fn ed25519_did(key: &VerifyingKey) -> Did {
    let mut bytes = vec![0xed, 0x01];
    bytes.extend_from_slice(key.as_bytes());
    Did(format!(
        "did:key:{}",
        multibase::encode(multibase::Base::Base58Btc, bytes)
    ))
}

/// Verifies ed25519 signatures.
#[derive(Clone, Debug)]
pub struct Ed25519Verifier {
    key: VerifyingKey,
    did: Did,
    /// The did:key of `key`, kept: caches key verified signatures by it.
    key_did: Did,
}

impl Ed25519Verifier {
    /// The verifier of an ed25519 did:key.
    pub fn parse(did: &Did) -> Result<Self, PrincipalError> {
        let (code, bytes) = did_key_bytes(did.as_str())?;
        if code != ED25519_PUB {
            return Err(PrincipalError::UnsupportedKey(code, did.to_string()));
        }
        let key: [u8; 32] = bytes[2..]
            .try_into()
            .map_err(|_| PrincipalError::InvalidDid(did.to_string(), "key length".into()))?;
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|e| PrincipalError::InvalidDid(did.to_string(), e.to_string()))?;
        Ok(Ed25519Verifier {
            key,
            did: did.clone(),
            key_did: did.clone(),
        })
    }

    /// The same key verifying for another DID (a did:web backed by this key).
    pub fn with_did(&self, did: Did) -> Self {
        Ed25519Verifier {
            key: self.key,
            did,
            key_did: self.key_did.clone(),
        }
    }
}

impl Verifier for Ed25519Verifier {
    fn did(&self) -> &Did {
        &self.did
    }
    fn key_did(&self) -> &Did {
        &self.key_did
    }
    fn ed25519(&self) -> Option<&VerifyingKey> {
        Some(&self.key)
    }
    fn verify(&self, payload: &[u8], signature: &Signature) -> bool {
        let Ok(raw) = <[u8; 64]>::try_from(signature.raw.as_slice()) else {
            return false;
        };
        signature.code == SIG_EDDSA
            && self
                .key
                .verify(payload, &ed25519_dalek::Signature::from_bytes(&raw))
                .is_ok()
    }
}

/// A verifier for a self-certifying DID (a did:key of a supported key type:
/// ed25519 or RSA).
///
/// Resolved keys are remembered (up to [`RESOLVED_KEYS`]): the same DIDs
/// sign request after request, and decoding one (base58, then the curve
/// point) costs as much as a good part of verifying a signature.
pub fn verifier_for(did: &Did) -> Result<Arc<dyn Verifier>, PrincipalError> {
    static RESOLVED: Memo<Did, Arc<dyn Verifier>> = Memo::new(RESOLVED_KEYS);
    RESOLVED.get_or_try_insert_with(did, resolve_key)
}

/// Most did:keys [`verifier_for`] (and the decoding of did:keys)
/// remembers; past it, it starts over.
pub const RESOLVED_KEYS: usize = 4096;

fn resolve_key(did: &Did) -> Result<Arc<dyn Verifier>, PrincipalError> {
    if !did.is_key() {
        return Err(PrincipalError::Unresolvable(did.to_string()));
    }
    let (code, _) = did_key_bytes(did.as_str())?;
    match code {
        ED25519_PUB => Ok(Arc::new(Ed25519Verifier::parse(did)?)),
        RSA_PUB => Ok(Arc::new(RsaVerifier::parse(did)?)),
        other => Err(PrincipalError::UnsupportedKey(other, did.to_string())),
    }
}

/// A signer from private key bytes of either supported type, told apart by
/// their multicodec tag: `0x1300` ed25519 (68 bytes), `0x1305` RSA (PKCS#1).
pub fn decode_signer(bytes: &[u8]) -> Result<Arc<dyn Signer>, PrincipalError> {
    match varint::decode(bytes) {
        Ok((ED25519_PRIV, _)) => Ok(Arc::new(Ed25519Signer::decode(bytes)?)),
        Ok((RSA_PRIV, _)) => Ok(Arc::new(RsaSigner::decode(bytes)?)),
        Ok((other, _)) => Err(PrincipalError::InvalidKey(format!(
            "unsupported private key type 0x{other:x}"
        ))),
        Err(_) => Err(PrincipalError::InvalidKey("bad multicodec prefix".into())),
    }
}

/// A signer from the "M…" multibase private key format, ed25519 or RSA.
pub fn parse_signer(text: &str) -> Result<Arc<dyn Signer>, PrincipalError> {
    let bad = |why: &str| PrincipalError::InvalidKey(why.to_string());
    let (base, bytes) = multibase::decode(text.trim()).map_err(|e| bad(&e.to_string()))?;
    if base != multibase::Base::Base64Pad {
        return Err(bad("expected multibase base64pad (M…)"));
    }
    decode_signer(&bytes)
}

/// Varsig code of a non-standard signature; JS's `Absentee` writes it with no bytes.
pub const SIG_NON_STANDARD: u64 = 0xd000;

/// A principal that cannot sign, like JS @ucanto/principal's `Absentee`: a
/// `did:mailto` account, whose delegations count only through a `ucan/attest`
/// from an authority. Its signature is empty and never verifies.
#[derive(Clone, Debug)]
pub struct Absentee(Did);

impl Absentee {
    /// The absentee `did`.
    pub fn new(did: Did) -> Self {
        Absentee(did)
    }
}

impl Signer for Absentee {
    fn did(&self) -> &Did {
        &self.0
    }
    fn sign(&self, _payload: &[u8]) -> Signature {
        Signature {
            code: SIG_NON_STANDARD,
            raw: Vec::new(),
        }
    }
    fn signature_code(&self) -> u64 {
        SIG_NON_STANDARD
    }
    fn verifier(&self) -> Arc<dyn Verifier> {
        Arc::new(self.clone())
    }
}

impl Verifier for Absentee {
    fn did(&self) -> &Did {
        &self.0
    }
    fn verify(&self, _payload: &[u8], _signature: &Signature) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signatures are added one at a time, their payloads gone before the
    /// batch is checked; one bad signature, of any kind, fails the batch.
    #[test]
    fn a_signature_batch_needs_no_payload_kept_and_fails_on_any_bad_one() {
        let (a, b) = (
            Ed25519Signer::from_seed([1; 32]),
            Ed25519Signer::from_seed([2; 32]),
        );
        let signed = |count: usize| {
            let mut batch = SignatureBatch::with_capacity(count);
            for i in 0..count {
                let signer = if i % 3 == 0 { &a } else { &b };
                let payload = format!("retrieval {i}").into_bytes();
                batch.push(signer.verifier().as_ref(), &payload, &signer.sign(&payload));
            }
            batch
        };
        let batch = signed(10);
        assert_eq!(batch.pending(), 10);
        assert!(batch.verify());
        assert!(SignatureBatch::default().verify());

        let mut forged = signed(10);
        forged.push(a.verifier().as_ref(), b"paid 1 TiB", &a.sign(b"paid 1 KiB"));
        assert!(!forged.verify());

        // Not ed25519: verified when added, and its failure kept.
        let mut other = signed(10);
        let absent = Absentee::new(Did::parse("did:web:absent.example").unwrap());
        other.push(&absent, b"payload", &absent.sign(b"payload"));
        assert_eq!(other.pending(), 10);
        assert!(!other.verify());
    }

    #[test]
    fn did_byte_forms_round_trip() {
        let signer = Ed25519Signer::from_seed([1; 32]);
        let did = signer.did().clone();
        let bytes = did.to_ucan_bytes();
        assert_eq!(&bytes[..2], &[0xed, 0x01]);
        assert_eq!(Did::from_ucan_bytes(&bytes).unwrap(), did);

        let web = Did::parse("did:web:tracker.example").unwrap();
        let bytes = web.to_ucan_bytes();
        assert_eq!(&bytes[..2], &[0x9d, 0x1a]);
        assert_eq!(&bytes[2..], b"web:tracker.example");
        assert_eq!(Did::from_ucan_bytes(&bytes).unwrap(), web);
    }

    #[test]
    fn private_key_format_round_trips() {
        let signer = Ed25519Signer::from_seed([7; 32]);
        let text = signer.format();
        assert!(text.starts_with("Mg"));
        let back = Ed25519Signer::parse(&text).unwrap();
        assert_eq!(back.did(), signer.did());
        assert!(Ed25519Signer::parse("Mgarbage").is_err());
        assert!(Ed25519Signer::parse(&text[..text.len() - 4]).is_err());
    }

    #[test]
    fn varsig_prefix_and_length_checks() {
        let signer = Ed25519Signer::from_seed([2; 32]);
        let sig = signer.sign(b"hello");
        let bytes = sig.encode();
        assert_eq!(&bytes[..4], &[0xed, 0xa1, 0x03, 0x40]);
        assert_eq!(Signature::decode(&bytes).unwrap(), sig);
        assert!(Signature::decode(&bytes[..60]).is_err());
        let mut short = vec![0xed, 0xa1, 0x03, 0x3f];
        short.extend_from_slice(&[0; 63]);
        assert!(Signature::decode(&short).is_err());
        assert!(signer.verifier().verify(b"hello", &sig));
        assert!(!signer.verifier().verify(b"hellO", &sig));
    }

    #[test]
    fn generic_signer_parsing_dispatches_on_the_tag() {
        let ed = Ed25519Signer::from_seed([3; 32]);
        assert_eq!(parse_signer(&ed.format()).unwrap().did(), ed.did());
        assert_eq!(decode_signer(&ed.encode()).unwrap().did(), ed.did());
        assert!(decode_signer(&[0x80]).is_err());
        assert!(decode_signer(&[0xed, 0x01, 0, 0]).is_err());
        let unsupported =
            Did::parse("did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme").unwrap();
        assert!(matches!(
            verifier_for(&unsupported),
            Err(PrincipalError::UnsupportedKey(SECP256K1_PUB, _))
        ));
    }

    #[test]
    fn rejects_bad_dids() {
        for bad in [
            "",
            "did:",
            "did:key:",
            "did:key:abc",
            "did:KEY:z6Mk",
            "web:x",
            "did:key:z111",
        ] {
            assert!(Did::parse(bad).is_err(), "{bad}");
        }
        assert!(Did::from_ucan_bytes(&[0xed, 0x01, 1, 2]).is_err());
        assert!(Did::from_ucan_bytes(&[]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let _ = Did::from_ucan_bytes(&bytes);
            let _ = Signature::decode(&bytes);
            let _ = Ed25519Signer::decode(&bytes);
            let _ = decode_signer(&bytes);
        }
        #[test]
        fn did_parse_never_panics(text in ".{0,60}") {
            let _ = Did::parse(&text);
            let _ = Did::parse(&format!("did:key:z{text}"));
        }
    }
}
