//! The `sha256:<hex>` content address of an artifact.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::Error;

/// A SHA-256 content digest, written `sha256:<64 lowercase hex>`.
///
/// The only way to build one is from bytes or by parsing, so a `Digest` is
/// always safe to use as a storage path component.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Wraps a finished SHA-256 hash.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits (no prefix), as found in in-toto subjects.
    ///
    /// # Errors
    /// Invalid when the text is not 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, Error> {
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(format!(
                "digest {} is not 64 hex digits",
                crate::error::shown(text)
            )));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.to_ascii_lowercase(), &mut out)
            .map_err(|e| Error::invalid(format!("digest {}: {e}", crate::error::shown(text))))?;
        Ok(Self(out))
    }
}

impl FromStr for Digest {
    type Err = Error;

    /// Parses `sha256:<64 hex>`.
    fn from_str(text: &str) -> Result<Self, Error> {
        let hex = text.strip_prefix("sha256:").ok_or_else(|| {
            Error::invalid(format!(
                "digest {} must look like sha256:<64 hex digits>",
                crate::error::shown(text)
            ))
        })?;
        Self::from_hex(hex)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental SHA-256 over a stream of chunks.
#[derive(Default, Clone)]
pub struct Hasher(Sha256);

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher")
    }
}

impl Hasher {
    /// Feeds the next chunk.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_for_empty_input() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parse_round_trips_and_lowercases() {
        let d = Digest::of(b"abc");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        let upper = format!("sha256:{}", d.hex().to_uppercase());
        assert_eq!(upper.parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn rejects_missing_prefix_wrong_length_and_path_tricks() {
        let d = Digest::of(b"abc");
        assert!(d.hex().parse::<Digest>().is_err());
        assert!("sha256:abc".parse::<Digest>().is_err());
        assert!("sha256:../../etc/passwd".parse::<Digest>().is_err());
        let bad = format!("sha256:{}g", &d.hex()[..63]);
        assert!(bad.parse::<Digest>().is_err());
    }

    #[test]
    fn streaming_hash_equals_one_shot() {
        let mut h = Hasher::default();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(h.finish(), Digest::of(b"abc"));
    }
}
