//! What command lines built on ucanto share: how an operator passes a
//! principal or a delegation as text, and how an error is worded for a
//! person (one sentence, each cause once, with what to do).
//!
//! ```
//! let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
//! let failure = ucanto::cli::explain("cannot reach the service", "Is it running?")(io);
//! assert_eq!(failure.to_string(), "cannot reach the service: connection refused. Is it running?");
//! ```

use std::sync::Arc;

use crate::dag::{CodecError, IDENTITY};
use crate::principal::{Did, Ed25519Verifier, PrincipalError, Verifier};
use crate::ucan::Delegation;
use crate::varint;

/// Any error a command may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Turns an error into "`what`: cause. `hint`", a sentence a person can act on.
pub fn explain<E: Into<BoxError>>(
    what: impl std::fmt::Display,
    hint: &str,
) -> impl FnOnce(E) -> BoxError + '_ {
    let what = what.to_string();
    move |error| {
        let error: BoxError = error.into();
        format!("{what}: {}. {hint}", sentence(error.as_ref())).into()
    }
}

/// An error and its causes, as one line: each cause once, no Debug dump.
pub fn sentence(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// The verifier of a principal: `did` alone for a did:key, or a did:web
/// with the did:key (ed25519) it signs with.
///
/// ```
/// let tracker = ucanto::cli::verifier(
///     "did:web:tracker.example",
///     Some("did:key:z6Mkt6316e2PN3mZdB6N9CrzomJYUd1s5yBZi1XYHmwT9TUP"),
/// )
/// .unwrap();
/// assert_eq!(tracker.did().as_str(), "did:web:tracker.example");
/// ```
pub fn verifier(did: &str, key: Option<&str>) -> Result<Arc<dyn Verifier>, PrincipalError> {
    let did = Did::parse(did)?;
    match key {
        None => crate::principal::verifier_for(&did),
        Some(key) => Ok(Arc::new(
            Ed25519Verifier::parse(&Did::parse(key)?)?.with_did(did),
        )),
    }
}

/// A failure to read a delegation given as text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// Neither a multibase string nor an identity CID.
    #[error("not a multibase-encoded delegation archive nor an identity CID: {0}")]
    Encoding(String),
    /// The bytes are not a delegation archive.
    #[error("invalid delegation archive: {0}")]
    Archive(#[source] CodecError),
}

/// Reads a delegation as operators pass them around: a delegation archive
/// (CAR with root `{"ucan@0.9.1": Link}`) encoded in multibase (e.g. base64
/// `m…`, as `storacha delegation create --base64` and go-ucanto's
/// `delegation.Format` print), or an identity-hash CID (codec car) whose
/// digest is the archive.
pub fn parse_proof(text: &str) -> Result<Delegation, ProofError> {
    let (_, bytes) =
        multibase::decode(text.trim()).map_err(|e| ProofError::Encoding(e.to_string()))?;
    let archive = identity_cid_digest(&bytes).unwrap_or(&bytes);
    Delegation::extract(archive).map_err(ProofError::Archive)
}

/// The digest of a binary CIDv1 with an identity multihash, of any length.
/// (A CAR never starts like one: its first varint is the header length.)
fn identity_cid_digest(bytes: &[u8]) -> Option<&[u8]> {
    let mut rest = bytes;
    let mut next = || {
        let (value, len) = varint::decode(rest).ok()?;
        rest = &rest[len..];
        Some(value)
    };
    let version = next()?;
    let _codec = next()?;
    let hash = next()?;
    let len = next()?;
    (version == 1 && hash == IDENTITY && len == rest.len() as u64).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::{Ed25519Signer, Signer};

    #[test]
    fn errors_read_as_one_sentence_with_their_causes_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let failure = explain("cannot reach the tracker", "Is it running?")(io);
        assert_eq!(
            failure.to_string(),
            "cannot reach the tracker: connection refused. Is it running?"
        );
        let nested = std::io::Error::other(failure);
        assert_eq!(
            sentence(&nested),
            "cannot reach the tracker: connection refused. Is it running?"
        );
    }

    #[test]
    fn proofs_parse_from_multibase_and_identity_cids() {
        let tracker = Ed25519Signer::from_seed([4; 32]);
        let node = Ed25519Signer::from_seed([5; 32]);
        let proof = Delegation::builder(&tracker, node.did().clone())
            .capability(crate::ucan::Capability::new(
                "test/echo",
                tracker.did().as_str(),
            ))
            .no_expiration()
            .build()
            .unwrap();
        let archive = proof.archive().unwrap();
        for base in [
            multibase::Base::Base64,
            multibase::Base::Base64Pad,
            multibase::Base::Base32Lower,
        ] {
            let text = multibase::encode(base, &archive);
            assert_eq!(parse_proof(&text).unwrap().cid(), proof.cid(), "{base:?}");
        }
        // An identity CID (v1, codec car 0x0202, identity multihash) wrapping the
        // archive: longer than `Cid` (or the multihash crate) can hold.
        let len = archive.len();
        assert!((256..16384).contains(&len));
        let mut raw = vec![0x01, 0x82, 0x04, 0x00, (len as u8) | 0x80, (len >> 7) as u8];
        raw.extend(&archive);
        let cid = multibase::encode(multibase::Base::Base32Lower, &raw);
        assert_eq!(parse_proof(&cid).unwrap().cid(), proof.cid());
        assert!(matches!(
            parse_proof("not a proof"),
            Err(ProofError::Encoding(_))
        ));
        assert!(matches!(parse_proof("mAAAA"), Err(ProofError::Archive(_))));
    }

    #[test]
    fn verifiers_for_did_key_and_did_web() {
        let service = Ed25519Signer::from_seed([4; 32]);
        let key = verifier(service.did().as_str(), None).unwrap();
        assert_eq!(key.did(), service.did());
        assert!(verifier("did:web:tracker.example", None).is_err());
        let web = verifier("did:web:tracker.example", Some(service.did().as_str())).unwrap();
        assert_eq!(web.did().as_str(), "did:web:tracker.example");
    }
}
