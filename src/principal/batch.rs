//! Ed25519 batch verification that merges repeated keys.
//!
//! A batch of `n` signatures is valid when, for random 128-bit `zᵢ`,
//!
//! ```text
//! −(Σ zᵢ·sᵢ)·B + Σ zᵢ·Rᵢ + Σ zᵢ·hᵢ·Aᵢ = 0,   hᵢ = SHA-512(Rᵢ ‖ Aᵢ ‖ Mᵢ) mod ℓ
//! ```
//!
//! the equation `ed25519_dalek::verify_batch` checks with one multiscalar
//! multiplication over `2n + 1` points. The signatures of a receipt batch
//! come from few keys (one node; agents that retrieve many times), so the
//! `Aᵢ` terms of one key are summed first, `(Σ zᵢ·hᵢ)·A`: the same equation
//! with `n + k + 1` points for `k` distinct keys, about half the work of the
//! multiplication when keys repeat. Acceptance is exactly `verify_batch`'s:
//! canonical `s`, decodable `R`, no cofactor. The `zᵢ` are drawn from a hash
//! of everything verified and fresh system randomness, so no signer can aim
//! a bad signature at them.
//!
//! Each signature is reduced as it is added ([`Ed25519Batch::push`]: `hᵢ`
//! computed, `s` checked), so a caller can let go of the message, and of
//! whatever it was read from, long before the batch is checked: batches can
//! be large, which is what makes the multiplication cheap per signature.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signature, VerifyingKey};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha512};

/// Ed25519 signatures gathered for one batch verification, each reduced on
/// arrival to what the equation needs (`R`, `s`, its key's slot and
/// `hᵢ`): the messages need not outlive [`Ed25519Batch::push`].
#[derive(Default)]
pub(crate) struct Ed25519Batch {
    signatures: Vec<Prepared>,
    keys: Vec<VerifyingKey>,
    key_slot: crate::memo::FastMap<[u8; 32], u32>,
    /// A signature whose `s` is not canonical was pushed: the batch fails.
    malformed: bool,
}

struct Prepared {
    r: [u8; 32],
    s: Scalar,
    h: Scalar,
    key: u32,
}

impl Ed25519Batch {
    pub(crate) fn with_capacity(signatures: usize) -> Self {
        Ed25519Batch {
            signatures: Vec::with_capacity(signatures),
            ..Default::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.signatures.len()
    }

    /// Adds `signature` of `message` by `key`.
    pub(crate) fn push(&mut self, message: &[u8], signature: &Signature, key: &VerifyingKey) {
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(*signature.s_bytes()))
        else {
            self.malformed = true;
            return;
        };
        let hram: [u8; 64] = Sha512::new()
            .chain_update(signature.r_bytes())
            .chain_update(key.as_bytes())
            .chain_update(message)
            .finalize()
            .into();
        let slot = match self.key_slot.get(key.as_bytes()) {
            Some(slot) => *slot,
            None => {
                let slot = self.keys.len() as u32;
                self.keys.push(*key);
                self.key_slot.insert(*key.as_bytes(), slot);
                slot
            }
        };
        self.signatures.push(Prepared {
            r: *signature.r_bytes(),
            s,
            h: Scalar::from_bytes_mod_order_wide(&hram),
            key: slot,
        });
    }

    /// Whether every signature pushed is valid. `false` says only that one
    /// is not.
    pub(crate) fn verify(&self) -> bool {
        if self.malformed {
            return false;
        }
        let n = self.signatures.len();
        if n == 0 {
            return true;
        }
        let mut transcript = Sha512::new();
        transcript.update(b"ucanto ed25519 batch verification");
        let mut fresh = [0u8; 32];
        OsRng.fill_bytes(&mut fresh);
        transcript.update(fresh);
        for p in &self.signatures {
            transcript.update(p.r);
            transcript.update(p.s.as_bytes());
            transcript.update(p.h.as_bytes());
            transcript.update(self.keys[p.key as usize].as_bytes());
        }
        let z = coefficients(transcript.finalize().into(), n);

        // One coefficient per distinct key.
        let mut key_scalars = vec![Scalar::ZERO; self.keys.len()];
        let mut b = Scalar::ZERO;
        for (p, z) in self.signatures.iter().zip(&z) {
            b += z * p.s;
            key_scalars[p.key as usize] += z * p.h;
        }
        let r_points = self
            .signatures
            .iter()
            .map(|p| CompressedEdwardsY(p.r).decompress());
        let key_points = self.keys.iter().map(|key| Some(key.to_edwards()));
        let sum = EdwardsPoint::optional_multiscalar_mul(
            std::iter::once(-b).chain(z).chain(key_scalars),
            std::iter::once(Some(ED25519_BASEPOINT_POINT))
                .chain(r_points)
                .chain(key_points),
        );
        sum.is_some_and(|point| point.is_identity())
    }
}

/// Whether every `signatures[i]` is a valid signature of `messages[i]` by
/// `keys[i]` (slices of one length). `false` says only that one is not.
#[cfg(test)]
fn verify_batch(messages: &[&[u8]], signatures: &[Signature], keys: &[VerifyingKey]) -> bool {
    let n = signatures.len();
    if messages.len() != n || keys.len() != n {
        return false;
    }
    let mut batch = Ed25519Batch::with_capacity(n);
    for ((message, signature), key) in messages.iter().zip(signatures).zip(keys) {
        batch.push(message, signature, key);
    }
    batch.verify()
}

/// `n` 128-bit coefficients from a 64-byte seed: four per SHA-512 output.
fn coefficients(seed: [u8; 64], n: usize) -> Vec<Scalar> {
    let mut z = Vec::with_capacity(n);
    let mut block = 0u64;
    while z.len() < n {
        let out = Sha512::new()
            .chain_update(seed)
            .chain_update(block.to_le_bytes())
            .finalize();
        for quarter in out.chunks_exact(16).take(n - z.len()) {
            let mut wide = [0u8; 32];
            wide[..16].copy_from_slice(quarter);
            z.push(Scalar::from_bytes_mod_order(wide));
        }
        block += 1;
    }
    z
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use proptest::prelude::*;

    fn signer(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// `count` signatures by keys chosen from `distinct` keys, round robin.
    fn signed(count: usize, distinct: u8) -> (Vec<Vec<u8>>, Vec<Signature>, Vec<VerifyingKey>) {
        let mut messages = Vec::new();
        let mut signatures = Vec::new();
        let mut keys = Vec::new();
        for i in 0..count {
            let key = signer((i % distinct as usize) as u8 + 1);
            let message = format!("receipt {i}").into_bytes();
            signatures.push(key.sign(&message));
            keys.push(key.verifying_key());
            messages.push(message);
        }
        (messages, signatures, keys)
    }

    fn check(messages: &[Vec<u8>], signatures: &[Signature], keys: &[VerifyingKey]) -> bool {
        let messages: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        verify_batch(&messages, signatures, keys)
    }

    #[test]
    fn valid_batches_pass_whatever_the_keys() {
        for (count, distinct) in [(0, 1), (1, 1), (2, 1), (7, 3), (64, 2), (300, 150)] {
            let (m, s, k) = signed(count, distinct);
            assert!(check(&m, &s, &k), "{count} signatures by {distinct} keys");
        }
    }

    /// A signature valid for another key, even one of the batch, fails:
    /// merging keys must keep each signature bound to its own.
    #[test]
    fn a_signature_claimed_for_another_key_of_the_batch_fails() {
        let (m, s, mut k) = signed(10, 2);
        k.swap(0, 1);
        assert!(!check(&m, &s, &k));
    }

    /// Two bad signatures by one key whose errors would cancel in its merged
    /// term still fail: each has its own random coefficient.
    #[test]
    fn errors_that_cancel_in_a_sum_still_fail() {
        let (m, mut s, k) = signed(4, 1);
        let (s0, s2) = (s[0].to_bytes(), s[2].to_bytes());
        let mut plus = s0;
        let mut minus = s2;
        // s₀ + 1 and s₂ − 1: the plain sum Σ sᵢ is unchanged.
        plus[32] = plus[32].wrapping_add(1);
        minus[32] = minus[32].wrapping_sub(1);
        s[0] = Signature::from_bytes(&plus);
        s[2] = Signature::from_bytes(&minus);
        assert!(!check(&m, &s, &k));
    }

    #[test]
    fn a_non_canonical_s_fails() {
        let (m, mut s, k) = signed(3, 1);
        let mut bytes = s[1].to_bytes();
        bytes[63] |= 0xf0;
        s[1] = Signature::from_bytes(&bytes);
        assert!(!check(&m, &s, &k));
    }

    #[test]
    fn mismatched_lengths_fail() {
        let (m, s, k) = signed(3, 1);
        assert!(!check(&m[..2], &s, &k));
    }

    proptest! {
        /// Agrees with ed25519-dalek's batch verification, and with verifying
        /// one by one, on batches with one byte of one message, signature or
        /// key changed.
        #[test]
        fn agrees_with_single_verification(
            count in 1usize..40,
            distinct in 1u8..6,
            target in any::<prop::sample::Index>(),
            what in 0u8..4,
            byte in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let (mut m, mut s, mut k) = signed(count, distinct);
            let i = target.index(count);
            match what {
                0 => { let b = byte.index(m[i].len()); m[i][b] ^= flip; }
                1 => { let mut raw = s[i].to_bytes(); raw[byte.index(64)] ^= flip; s[i] = Signature::from_bytes(&raw); }
                2 => {
                    let mut raw = k[i].to_bytes();
                    raw[byte.index(32)] ^= flip;
                    match VerifyingKey::from_bytes(&raw) { Ok(key) => k[i] = key, Err(_) => return Ok(()) }
                }
                _ => {}
            }
            let single = (0..count).all(|j| k[j].verify_strict(&m[j], &s[j]).is_ok());
            let refs: Vec<&[u8]> = m.iter().map(Vec::as_slice).collect();
            let dalek = ed25519_dalek::verify_batch(&refs, &s, &k).is_ok();
            prop_assert_eq!(check(&m, &s, &k), single);
            prop_assert_eq!(check(&m, &s, &k), dalek);
        }
    }
}
