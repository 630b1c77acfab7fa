//! Unsigned LEB128 varints, as multiformats use them (CIDs, multihashes,
//! multicodec prefixes, varsig headers, CAR section lengths).
//!
//! Decoding is strict on purpose: only the minimal encoding of a value is
//! accepted, and at most 9 bytes (63 bits, the multiformats limit). A padded
//! varint (`ed 81 00` for `ed 01`) would give one key, signature or CAR
//! several byte forms, and a billing system must see one.
//!
//! ```
//! use ucanto::varint;
//! let mut bytes = Vec::new();
//! varint::encode(300, &mut bytes);
//! assert_eq!(bytes, [0xac, 0x02]);
//! assert_eq!(varint::decode(&bytes), Ok((300, 2)));
//! assert_eq!(varint::decode(&[0xac, 0x82, 0x00]), Err(varint::VarintError::NotMinimal));
//! ```

/// The longest varint accepted, in bytes.
pub const MAX_LEN: usize = 9;

/// Why bytes are not a varint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    /// The bytes end before the varint's last byte.
    #[error("varint is truncated")]
    Truncated,
    /// More than [`MAX_LEN`] bytes.
    #[error("varint is longer than 9 bytes")]
    Overflow,
    /// A trailing zero byte: not the minimal encoding of its value.
    #[error("varint is not minimally encoded")]
    NotMinimal,
}

/// Appends the varint encoding of `value` to `out`.
pub fn encode(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Decodes the varint at the start of `bytes`: its value and encoded length.
pub fn decode(bytes: &[u8]) -> Result<(u64, usize), VarintError> {
    let mut decoder = Decoder::default();
    for &byte in bytes {
        if let Some(value) = decoder.push(byte)? {
            return Ok((value, decoder.len()));
        }
    }
    Err(VarintError::Truncated)
}

/// Decodes a varint one byte at a time, for readers that cannot look ahead.
#[derive(Debug, Default, Clone)]
pub struct Decoder {
    value: u64,
    len: usize,
}

impl Decoder {
    /// Feeds one byte; returns the value once the final byte is seen.
    pub fn push(&mut self, byte: u8) -> Result<Option<u64>, VarintError> {
        if self.len == MAX_LEN {
            return Err(VarintError::Overflow);
        }
        // len < 9 here, so the shift is at most 56 and cannot overflow.
        self.value |= u64::from(byte & 0x7f) << (7 * self.len);
        self.len += 1;
        if byte & 0x80 != 0 {
            return if self.len == MAX_LEN {
                Err(VarintError::Overflow)
            } else {
                Ok(None)
            };
        }
        if byte == 0 && self.len > 1 {
            return Err(VarintError::NotMinimal);
        }
        Ok(Some(self.value))
    }

    /// Bytes fed so far: 0 means the varint has not started.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_every_length() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            (1 << 63) - 1,
        ] {
            let mut bytes = Vec::new();
            encode(value, &mut bytes);
            assert_eq!(decode(&bytes), Ok((value, bytes.len())), "{value}");
        }
    }

    #[test]
    fn refuses_padding_overflow_and_truncation() {
        assert_eq!(decode(&[0x80, 0x00]), Err(VarintError::NotMinimal));
        assert_eq!(decode(&[0xff; 9]), Err(VarintError::Overflow));
        assert_eq!(decode(&[0xff; 12]), Err(VarintError::Overflow));
        assert_eq!(decode(&[0x80, 0x80]), Err(VarintError::Truncated));
        assert_eq!(decode(&[]), Err(VarintError::Truncated));
        // A single zero byte is the minimal encoding of 0.
        assert_eq!(decode(&[0x00, 0xff]), Ok((0, 1)));
    }
}
