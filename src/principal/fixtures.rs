//! The fixed principals every test, bench and interop vector of the
//! workspace shares, each an ed25519 key derived from a seed of 32 equal
//! bytes, as `fixtures/js/principals.js` derives them for the JS peers (so a
//! vector JS generated names the same DIDs): alice 1, bob 2, mallory 3,
//! service (the tracker) 4, node 5, authority 6. Well-known keys: for
//! tests only.
//!
//! ```
//! use ucanto::principal::{fixtures, Signer};
//! assert_eq!(fixtures::service().did(), fixtures::principal(4).did());
//! ```

use super::Ed25519Signer;

/// The principal whose seed is 32 times `byte`.
pub fn principal(byte: u8) -> Ed25519Signer {
    Ed25519Signer::from_seed([byte; 32])
}

/// alice (1): a space, and a client retrieving from it.
pub fn alice() -> Ed25519Signer {
    principal(1)
}

/// bob (2): an agent the space delegates to.
pub fn bob() -> Ed25519Signer {
    principal(2)
}

/// mallory (3): signs what she should not.
pub fn mallory() -> Ed25519Signer {
    principal(3)
}

/// service (4): the tracker.
pub fn service() -> Ed25519Signer {
    principal(4)
}

/// node (5): a storage node.
pub fn node() -> Ed25519Signer {
    principal(5)
}

/// authority (6): an attesting authority, or a consolidator deployed apart.
pub fn authority() -> Ed25519Signer {
    principal(6)
}
