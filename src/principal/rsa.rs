//! RSA principals (RS256), encoded as @ucanto/principal's `rsa` module does.
//!
//! # Format
//! - did:key: `did:key:z…`, base58btc of `varint(0x1205) ‖ RSAPublicKey` (PKCS#1
//!   DER: `SEQUENCE { n INTEGER, e INTEGER }`, not SPKI). A 2048-bit key's
//!   DID starts `did:key:z4MX…`.
//! - Private key: `varint(0x1305) ‖ RSAPrivateKey` (PKCS#1 DER, the octet
//!   string inside the PKCS#8 that WebCrypto exports); as text, multibase
//!   base64pad (`"M…"`). This is what JS `signer.toArchive().keys[did]` holds.
//! - Signature: RSASSA-PKCS1-v1_5 over SHA-256, varsig
//!   `varint(0xd01205) ‖ varint(len) ‖ raw` (`85 a4 c0 06 80 02 ‖ 256 bytes` for
//!   2048-bit keys). PKCS#1 v1.5 is deterministic: the same key and payload
//!   give the same bytes in JS and here.
//!
//! Keys between [`RSA_MIN_BITS`] and [`RSA_MAX_BITS`] are accepted; JS accepts
//! smaller ones, which we refuse as too weak.

use std::fmt;
use std::sync::Arc;

use ::rsa::pkcs1::{
    DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPrivateKey, EncodeRsaPublicKey,
};
use ::rsa::pkcs1v15::{Signature as RsaSignature, SigningKey, VerifyingKey};
use ::rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier as _};
use ::rsa::traits::PublicKeyParts;
use ::rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

use crate::varint;

use super::{did_key_bytes, Did, PrincipalError, Signature, Signer, Verifier, RSA_PUB, SIG_RS256};

/// Multicodec of an RSA private key (as used in the "M…" key format).
pub const RSA_PRIV: u64 = 0x1305;
/// Modulus size of generated keys, as JS `rsa.generate()`.
pub const RSA_DEFAULT_BITS: usize = 2048;
/// Smallest modulus accepted, in bits.
pub const RSA_MIN_BITS: usize = 2048;
/// Largest modulus accepted, in bits (bounds the cost of verifying).
pub const RSA_MAX_BITS: usize = 4096;

/// Strips `varint(code)` from `bytes`.
fn untag(code: u64, bytes: &[u8]) -> Option<&[u8]> {
    match varint::decode(bytes) {
        Ok((found, len)) if found == code => Some(&bytes[len..]),
        _ => None,
    }
}

fn tag(code: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 3);
    varint::encode(code, &mut out);
    out.extend_from_slice(body);
    out
}

fn check_size(bits: usize) -> Result<(), String> {
    if (RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(format!(
            "{bits}-bit RSA keys are not supported ({RSA_MIN_BITS} to {RSA_MAX_BITS} bits)"
        ))
    }
}

/// An RSA (RS256) signer.
#[derive(Clone)]
pub struct RsaSigner {
    key: SigningKey<Sha256>,
    /// `varint(0x1305) ‖ PKCS#1 DER`, kept as given so it re-encodes as it came.
    encoded: Vec<u8>,
    verifier: RsaVerifier,
}

impl fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "RsaSigner({})", self.verifier.did)
    }
}

impl RsaSigner {
    /// A fresh 2048-bit key from the operating system's randomness.
    pub fn generate() -> Result<Self, PrincipalError> {
        Self::generate_with_size(RSA_DEFAULT_BITS)
    }

    /// A fresh key of `bits` bits (see [`RSA_MIN_BITS`], [`RSA_MAX_BITS`]).
    pub fn generate_with_size(bits: usize) -> Result<Self, PrincipalError> {
        check_size(bits).map_err(PrincipalError::InvalidKey)?;
        let key = RsaPrivateKey::new(&mut rand_core::OsRng, bits)
            .map_err(|e| PrincipalError::InvalidKey(e.to_string()))?;
        Self::from_key(key)
    }

    /// A signer for an existing key.
    pub fn from_key(key: RsaPrivateKey) -> Result<Self, PrincipalError> {
        let der = key
            .to_pkcs1_der()
            .map_err(|e| PrincipalError::InvalidKey(e.to_string()))?;
        Self::decode(&tag(RSA_PRIV, der.as_bytes()))
    }

    /// Decodes `varint(0x1305) ‖ PKCS#1 DER RSAPrivateKey` (JS `rsa.decode`).
    pub fn decode(bytes: &[u8]) -> Result<Self, PrincipalError> {
        let bad = |why: String| PrincipalError::InvalidKey(why);
        let der =
            untag(RSA_PRIV, bytes).ok_or_else(|| bad("expected the 0x1305 RSA tag".into()))?;
        let key = RsaPrivateKey::from_pkcs1_der(der).map_err(|e| bad(e.to_string()))?;
        check_size(key.n().bits()).map_err(bad)?;
        let verifier = RsaVerifier::from_public(&key.to_public_key())?;
        Ok(RsaSigner {
            key: SigningKey::new(key),
            encoded: bytes.to_vec(),
            verifier,
        })
    }

    /// Parses the multibase "M…" private key format.
    pub fn parse(text: &str) -> Result<Self, PrincipalError> {
        let bad = |why: &str| PrincipalError::InvalidKey(why.to_string());
        let (base, bytes) = multibase::decode(text.trim()).map_err(|e| bad(&e.to_string()))?;
        if base != multibase::Base::Base64Pad {
            return Err(bad("expected multibase base64pad (M…)"));
        }
        Self::decode(&bytes)
    }

    /// The private key bytes: `varint(0x1305) ‖ PKCS#1 DER`.
    pub fn encode(&self) -> Vec<u8> {
        self.encoded.clone()
    }

    /// The "M…" multibase private key string.
    pub fn format(&self) -> String {
        multibase::encode(multibase::Base::Base64Pad, &self.encoded)
    }

    /// The same key presented under another DID.
    pub fn with_did(&self, did: Did) -> Self {
        RsaSigner {
            verifier: self.verifier.with_did(did),
            ..self.clone()
        }
    }

    /// The did:key of the underlying key, whatever DID is presented.
    pub fn key_did(&self) -> &Did {
        &self.verifier.key_did
    }

    /// The verifier of this key, under the presented DID.
    pub fn rsa_verifier(&self) -> &RsaVerifier {
        &self.verifier
    }
}

impl Signer for RsaSigner {
    fn did(&self) -> &Did {
        &self.verifier.did
    }

    fn sign(&self, payload: &[u8]) -> Signature {
        // Randomness only blinds the private-key operation against timing
        // attacks; PKCS#1 v1.5 signatures themselves are deterministic. The key
        // size was checked on construction, so the SHA-256 DigestInfo always
        // fits and signing cannot fail.
        let raw = self
            .key
            .try_sign_with_rng(&mut rand_core::OsRng, payload)
            .expect("a 2048-bit or larger RSA key signs any SHA-256 digest");
        Signature {
            code: SIG_RS256,
            raw: raw.to_vec(),
        }
    }

    fn signature_code(&self) -> u64 {
        SIG_RS256
    }

    fn verifier(&self) -> Arc<dyn Verifier> {
        Arc::new(self.verifier.clone())
    }
}

/// Verifies RS256 signatures of an RSA did:key.
#[derive(Clone)]
pub struct RsaVerifier {
    key: VerifyingKey<Sha256>,
    /// Modulus size in bytes: every signature has exactly this length.
    size: usize,
    /// `varint(0x1205) ‖ PKCS#1 DER RSAPublicKey`.
    encoded: Vec<u8>,
    key_did: Did,
    did: Did,
}

impl fmt::Debug for RsaVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaVerifier({})", self.did)
    }
}

impl RsaVerifier {
    /// The verifier of an RSA did:key.
    pub fn parse(did: &Did) -> Result<Self, PrincipalError> {
        let (code, bytes) = did_key_bytes(did.as_str())?;
        if code != RSA_PUB {
            return Err(PrincipalError::UnsupportedKey(code, did.to_string()));
        }
        Self::decode(&bytes).map_err(|e| PrincipalError::InvalidDid(did.to_string(), e.to_string()))
    }

    /// Decodes `varint(0x1205) ‖ PKCS#1 DER RSAPublicKey` (JS `rsa.Verifier.decode`).
    pub fn decode(bytes: &[u8]) -> Result<Self, PrincipalError> {
        let bad = |why: String| PrincipalError::InvalidKey(why);
        let der = untag(RSA_PUB, bytes).ok_or_else(|| bad("expected the 0x1205 RSA tag".into()))?;
        let key = RsaPublicKey::from_pkcs1_der(der).map_err(|e| bad(e.to_string()))?;
        check_size(key.n().bits()).map_err(bad)?;
        let did = Did(format!(
            "did:key:{}",
            multibase::encode(multibase::Base::Base58Btc, bytes)
        ));
        Ok(RsaVerifier {
            size: key.size(),
            key: VerifyingKey::new(key),
            encoded: bytes.to_vec(),
            key_did: did.clone(),
            did,
        })
    }

    fn from_public(key: &RsaPublicKey) -> Result<Self, PrincipalError> {
        let der = key
            .to_pkcs1_der()
            .map_err(|e| PrincipalError::InvalidKey(e.to_string()))?;
        Self::decode(&tag(RSA_PUB, der.as_bytes()))
    }

    /// The public key bytes: `varint(0x1205) ‖ PKCS#1 DER` (the did:key's key).
    pub fn encode(&self) -> Vec<u8> {
        self.encoded.clone()
    }

    /// The same key verifying for another DID.
    pub fn with_did(&self, did: Did) -> Self {
        RsaVerifier {
            did,
            ..self.clone()
        }
    }

    /// The did:key of the underlying key, whatever DID is presented.
    pub fn key_did(&self) -> &Did {
        &self.key_did
    }
}

impl Verifier for RsaVerifier {
    fn did(&self) -> &Did {
        &self.did
    }

    fn verify(&self, payload: &[u8], signature: &Signature) -> bool {
        if signature.code != SIG_RS256 || signature.raw.len() != self.size {
            return false;
        }
        RsaSignature::try_from(signature.raw.as_slice())
            .is_ok_and(|raw| self.key.verify(payload, &raw).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One key for all unit tests (generating RSA keys is slow).
    fn signer() -> &'static RsaSigner {
        static SIGNER: std::sync::OnceLock<RsaSigner> = std::sync::OnceLock::new();
        SIGNER.get_or_init(|| RsaSigner::generate().unwrap())
    }

    #[test]
    fn key_formats_round_trip() {
        let signer = signer();
        let bytes = signer.encode();
        assert_eq!(&bytes[..2], &[0x85, 0x26]);
        let text = signer.format();
        assert!(text.starts_with('M'));
        let back = RsaSigner::parse(&text).unwrap();
        assert_eq!(back.did(), signer.did());
        assert_eq!(back.encode(), bytes);
        assert!(signer.did().as_str().starts_with("did:key:z4MX"));
        let did = Did::parse(signer.did().as_str()).unwrap();
        let verifier = RsaVerifier::parse(&did).unwrap();
        assert_eq!(verifier.encode()[..2], [0x85, 0x24]);
        assert_eq!(Did::from_ucan_bytes(&did.to_ucan_bytes()).unwrap(), did);
        assert!(RsaSigner::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(
            RsaSigner::parse(&crate::principal::Ed25519Signer::from_seed([1; 32]).format())
                .is_err()
        );
    }

    #[test]
    fn signs_rs256_and_verifies() {
        let signer = signer();
        let sig = signer.sign(b"hello");
        assert_eq!(sig.code, SIG_RS256);
        assert_eq!(sig.raw.len(), 256);
        assert_eq!(&sig.encode()[..6], &[0x85, 0xa4, 0xc0, 0x06, 0x80, 0x02]);
        assert_eq!(Signature::decode(&sig.encode()).unwrap(), sig);
        // Deterministic, blinding or not.
        assert_eq!(signer.sign(b"hello"), sig);
        let verifier = crate::principal::verifier_for(signer.did()).unwrap();
        assert!(verifier.verify(b"hello", &sig));
        assert!(!verifier.verify(b"hellO", &sig));
        let mut flipped = sig.clone();
        flipped.raw[10] ^= 1;
        assert!(!verifier.verify(b"hello", &flipped));
        let wrong_code = Signature {
            code: crate::principal::SIG_EDDSA,
            raw: sig.raw.clone(),
        };
        assert!(!verifier.verify(b"hello", &wrong_code));
        let short = Signature {
            code: SIG_RS256,
            raw: sig.raw[1..].to_vec(),
        };
        assert!(!verifier.verify(b"hello", &short));
    }

    #[test]
    fn refuses_small_keys() {
        let small = RsaPrivateKey::new(&mut rand_core::OsRng, 1024).unwrap();
        assert!(matches!(
            RsaSigner::from_key(small),
            Err(PrincipalError::InvalidKey(_))
        ));
    }

    /// Vectors from real JS @ucanto/principal (`fixtures/js/gen-rsa.js`).
    mod js_fixtures {
        use std::collections::HashMap;
        use std::sync::Arc;

        use serde_json::Value;

        use super::*;
        use crate::dag::{Block, BlockStore, Ipld};
        use crate::principal::{verifier_for, Ed25519Signer};
        use crate::ucan::{Capability, Delegation};

        const VECTORS: &str = include_str!("../../fixtures/rsa/vectors.json");

        fn vectors() -> Value {
            serde_json::from_str(VECTORS).unwrap()
        }

        fn fixture(name: &str) -> Vec<u8> {
            let path = format!("{}/fixtures/rsa/{name}", env!("CARGO_MANIFEST_DIR"));
            std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
        }

        fn unhex(text: &str) -> Vec<u8> {
            hex::decode(text).unwrap()
        }

        fn js_signer() -> RsaSigner {
            RsaSigner::parse(vectors()["key"]["privateKey"].as_str().unwrap()).unwrap()
        }

        /// The JS key parses, re-encodes to the same bytes and yields the same DID.
        #[test]
        fn key_formats_match_js() {
            let v = vectors();
            let key = &v["key"];
            let signer = js_signer();
            assert_eq!(signer.did().as_str(), key["did"]);
            assert_eq!(signer.format(), key["privateKey"].as_str().unwrap());
            let private = unhex(key["privateKeyHex"].as_str().unwrap());
            assert_eq!(signer.encode(), private);
            // Our PKCS#1 DER encoder writes WebCrypto's bytes too.
            let der = signer.key.as_ref().to_pkcs1_der().unwrap();
            assert_eq!(der.as_bytes(), &private[2..]);
            let public = unhex(key["publicKeyHex"].as_str().unwrap());
            assert_eq!(signer.rsa_verifier().encode(), public);
            assert_eq!(RsaSigner::decode(&private).unwrap().did(), signer.did());
            let did = Did::parse(key["did"].as_str().unwrap()).unwrap();
            assert_eq!(did.to_ucan_bytes(), public);
            assert_eq!(verifier_for(&did).unwrap().did(), &did);
            assert_eq!(key["signatureCode"], SIG_RS256);
            assert_eq!(key["signatureAlgorithm"], "RS256");
        }

        /// JS's RS256 signature verifies, and we sign the same bytes.
        #[test]
        fn signature_matches_js() {
            let v = vectors();
            let text = v["signature"]["text"].as_str().unwrap().as_bytes();
            let js =
                Signature::decode(&unhex(v["signature"]["varsigHex"].as_str().unwrap())).unwrap();
            let signer = js_signer();
            assert!(signer.verifier().verify(text, &js));
            assert_eq!(signer.sign(text), js);
        }

        /// Every UCAN decodes from its CAR, verifies, and re-signs to the same bytes.
        #[test]
        fn ucans_match_js_byte_for_byte() {
            let v = vectors();
            let rsa = js_signer();
            let alice = Ed25519Signer::from_seed([1; 32]);
            let service = Ed25519Signer::from_seed([4; 32]);
            assert_eq!(alice.did().as_str(), v["principals"]["alice"]);
            assert_eq!(service.did().as_str(), v["principals"]["service"]);
            let signers: HashMap<&str, &dyn Signer> = HashMap::from([
                ("rsa", &rsa as &dyn Signer),
                ("alice", &alice as &dyn Signer),
            ]);
            let dids: HashMap<&str, Did> = HashMap::from([
                ("rsa", rsa.did().clone()),
                ("alice", alice.did().clone()),
                ("service", service.did().clone()),
            ]);
            let mut built: HashMap<String, Delegation> = HashMap::new();
            for entry in v["vectors"].as_array().unwrap() {
                let name = entry["name"].as_str().unwrap();
                let (header, blocks) =
                    crate::car::decode(&fixture(entry["file"].as_str().unwrap())).unwrap();
                let root: cid::Cid = entry["root"].as_str().unwrap().parse().unwrap();
                assert_eq!(header.roots, vec![root], "{name}");
                let order: Vec<String> = blocks.iter().map(|(c, _)| c.to_string()).collect();
                assert_eq!(Value::from(order), entry["blocks"], "{name}: block order");
                let store: BlockStore = blocks
                    .into_iter()
                    .map(|(cid, bytes)| Block { cid, bytes })
                    .collect();
                let js = Delegation::from_blocks(&root, Arc::new(store)).unwrap();
                let payload = js.data().signing_payload().unwrap();
                assert_eq!(
                    std::str::from_utf8(&payload).unwrap(),
                    entry["signaturePayload"],
                    "{name}"
                );
                assert_eq!(
                    hex::encode(js.data().signature.encode()),
                    entry["signatureHex"]
                );
                let issuer = verifier_for(js.issuer()).unwrap();
                assert!(js.verify_signature(issuer.as_ref()), "{name}: signature");
                let exported: Vec<String> = js.export().iter().map(|b| b.cid.to_string()).collect();
                assert_eq!(
                    Value::from(exported),
                    entry["blocks"],
                    "{name}: export order"
                );

                // The same UCAN from the same inputs, signed here.
                let input = &entry["input"];
                let mut builder = Delegation::builder(
                    signers[input["issuer"].as_str().unwrap()],
                    dids[input["audience"].as_str().unwrap()].clone(),
                )
                .expiration(input["expiration"].as_u64().unwrap());
                for cap in input["capabilities"].as_array().unwrap() {
                    let mut capability = Capability::new(
                        cap["can"].as_str().unwrap(),
                        cap["with"].as_str().unwrap(),
                    );
                    if let Some(nb) = cap.get("nb") {
                        let Ipld::Map(nb) = crate::dag_json::from_json(nb).unwrap() else {
                            panic!("{name}: nb must be a map")
                        };
                        capability = capability.with_nb(nb);
                    }
                    builder = builder.capability(capability);
                }
                for proof in input["proofs"].as_array().into_iter().flatten() {
                    builder = builder.proof(built[proof.as_str().unwrap()].clone());
                }
                let ours = builder.build().unwrap();
                assert_eq!(ours.cid(), root, "{name}: same CID when signed here");
                assert_eq!(ours.block().bytes, js.block().bytes, "{name}");

                let archive = fixture(entry["archive"].as_str().unwrap());
                assert_eq!(ours.archive().unwrap(), archive, "{name}: archive bytes");
                assert_eq!(Delegation::extract(&archive).unwrap().cid(), root);
                built.insert(name.to_string(), ours);
            }
            assert_eq!(built.len(), 5);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = RsaSigner::decode(&bytes);
            let _ = RsaVerifier::decode(&bytes);
            let mut tagged = vec![0x85, 0x24];
            tagged.extend_from_slice(&bytes);
            let _ = RsaVerifier::decode(&tagged);
            tagged[1] = 0x26;
            let _ = RsaSigner::decode(&tagged);
        }
    }
}
