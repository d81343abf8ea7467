//! [`ContentId`]: the SHA-256 of a sample's bytes, the key that joins the
//! blob store, the Lance table and the Iceberg table.
//!
//! Held as 32 bytes everywhere in memory (a million-sample view keeps one
//! per sample), written as 64 lower-case hex digits in tables, file names
//! and logs. Parsing is strict: anything but exactly 64 hex digits is an
//! error the caller must handle, never a silently dropped row.

use std::fmt;

use sha2::{Digest, Sha256};

/// Size of the pieces a sample is cached and verified in. Part of the table
/// contract: the `chunk_sha256` column lists the SHA-256 of each piece of
/// this size, so changing it means a new column.
pub const CHUNK: u64 = 1 << 20;

/// SHA-256 of each [`CHUNK`]-sized piece of `bytes`, concatenated, for a
/// sample larger than one chunk (a sample that fits in one is verified by
/// its content id); `None` otherwise.
pub fn chunk_digests(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() as u64 <= CHUNK {
        return None;
    }
    Some(
        bytes
            .chunks(CHUNK as usize)
            .flat_map(|c| <[u8; 32]>::from(Sha256::digest(c)))
            .collect(),
    )
}

/// SHA-256 of a sample's bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentId(pub [u8; 32]);

/// A content id that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a content id (64 hex digits of a SHA-256)")]
pub struct BadContentId(pub String);

impl ContentId {
    /// The content id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Parses 64 hex digits (either case).
    pub fn parse(text: &str) -> Result<Self, BadContentId> {
        let mut id = [0u8; 32];
        if text.len() != 64 || hex::decode_to_slice(text, &mut id).is_err() {
            return Err(BadContentId(text.to_string()));
        }
        Ok(Self(id))
    }

    /// Lower-case hex digits, without allocating.
    pub fn hex_bytes(&self) -> [u8; 64] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (k, b) in self.0.iter().enumerate() {
            out[2 * k] = HEX[(b >> 4) as usize];
            out[2 * k + 1] = HEX[(b & 15) as usize];
        }
        out
    }

    /// Lower-case hex digits.
    pub fn hex(&self) -> String {
        self.to_string()
    }

    /// The first 16 bytes as a big-endian number: orders as the ids do
    /// wherever they differ in those bytes.
    pub fn prefix16(&self) -> u128 {
        let mut head = [0u8; 16];
        head.copy_from_slice(&self.0[..16]);
        u128::from_be_bytes(head)
    }

    /// Whether `bytes` hash to this id.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Sha256::digest(bytes).as_slice() == self.0
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex_bytes();
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({self})")
    }
}

impl std::str::FromStr for ContentId {
    type Err = BadContentId;

    fn from_str(s: &str) -> Result<Self, BadContentId> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn of_matches_sha256_hex() {
        let id = ContentId::of(b"abc");
        assert_eq!(
            id.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(id.matches(b"abc"));
        assert!(!id.matches(b"abd"));
    }

    #[test]
    fn bad_ids_are_errors() {
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(63), &"a".repeat(65)] {
            assert!(ContentId::parse(bad).is_err(), "{bad}");
        }
        assert!(ContentId::parse(&"A".repeat(64)).is_ok());
    }

    #[test]
    fn chunk_digests_cover_every_piece() {
        assert_eq!(chunk_digests(&[7; CHUNK as usize]), None);
        let big: Vec<u8> = (0..(2 * CHUNK + 5)).map(|i| (i % 251) as u8).collect();
        let d = chunk_digests(&big).unwrap();
        assert_eq!(d.len(), 3 * 32);
        assert!(ContentId(d[64..96].try_into().unwrap()).matches(&big[2 * CHUNK as usize..]));
    }

    proptest! {
        #[test]
        fn hex_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            let id = ContentId(bytes);
            prop_assert_eq!(ContentId::parse(&id.hex()).unwrap(), id);
            prop_assert_eq!(id.hex(), hex::encode(bytes));
        }

        #[test]
        fn prefix_order_agrees_with_id_order(a in proptest::array::uniform32(any::<u8>()),
                                             b in proptest::array::uniform32(any::<u8>())) {
            let (a, b) = (ContentId(a), ContentId(b));
            if a.prefix16() != b.prefix16() {
                prop_assert_eq!(a.prefix16().cmp(&b.prefix16()), a.cmp(&b));
            }
            prop_assert_eq!(a.cmp(&b), a.hex().cmp(&b.hex()));
        }
    }
}
