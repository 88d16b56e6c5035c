//! How the index spells its keys and values: entry places, timeline
//! slots, and the sled keys of each lookup (see the table in [`super`]).

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::ids::EnvName;
use crate::position::Ordered;
use crate::time::Timestamp;

/// Where an entry and its copy are: log index, then offset and length in
/// the entry copy file. 20 bytes, so sled keeps the value inline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryAt {
    pub index: u64,
    pub(super) offset: u64,
    pub(super) len: u32,
}

impl EntryAt {
    pub(super) fn encode(self) -> [u8; 20] {
        let mut v = [0u8; 20];
        v[..8].copy_from_slice(&self.index.to_be_bytes());
        v[8..16].copy_from_slice(&self.offset.to_be_bytes());
        v[16..].copy_from_slice(&self.len.to_be_bytes());
        v
    }

    pub(super) fn decode(v: &[u8]) -> Result<Self> {
        let len = v
            .get(16..20)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| Error::internal("index holds a malformed entry place"))?;
        Ok(Self {
            index: u64_at(v, 0)?,
            offset: u64_at(v, 8)?,
            len,
        })
    }
}

/// A pin's place in the time-ordered timeline (its `t/` value): where its
/// entry is, where its release's publish is, and where the entries of the
/// pins before and after it in its environment are. A resolve by time
/// finds all four with one range seek; the pin's successor is filled in
/// when the next pin of the environment is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub pin: EntryAt,
    pub published: EntryAt,
    pub prev: Option<EntryAt>,
    pub next: Option<EntryAt>,
}

impl Slot {
    const HAS_PREV: u8 = 1;
    const HAS_NEXT: u8 = 2;

    /// A flags byte, then the places: pin, publish, then prev and next
    /// when present.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(81);
        let flags = u8::from(self.prev.is_some()) * Self::HAS_PREV
            + u8::from(self.next.is_some()) * Self::HAS_NEXT;
        v.push(flags);
        for at in [Some(self.pin), Some(self.published), self.prev, self.next]
            .into_iter()
            .flatten()
        {
            v.extend_from_slice(&at.encode());
        }
        v
    }

    pub(super) fn decode(v: &[u8]) -> Result<Self> {
        let flags = *v
            .first()
            .ok_or_else(|| Error::internal("index holds an empty timeline slot"))?;
        let mut places = v[1..].chunks(20).map(EntryAt::decode);
        let mut next_place = || {
            places
                .next()
                .unwrap_or_else(|| Err(Error::internal("index holds a short timeline slot")))
        };
        let pin = next_place()?;
        let published = next_place()?;
        let prev = (flags & Self::HAS_PREV != 0)
            .then(&mut next_place)
            .transpose()?;
        let next = (flags & Self::HAS_NEXT != 0)
            .then(&mut next_place)
            .transpose()?;
        Ok(Self {
            pin,
            published,
            prev,
            next,
        })
    }
}

pub(super) fn object_key(index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = b'o';
    k[1] = b'/';
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

pub(super) fn u64_at(bytes: &[u8], at: usize) -> Result<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::internal("index holds a malformed number"))
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::internal(format!("index value for {what} is unreadable: {e}")))
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain records cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

pub(super) fn env_prefix(tag: &str, env: &EnvName) -> Vec<u8> {
    format!("{tag}/{env}/").into_bytes()
}

/// Request ids never contain `/` (see `stackpin_core::ids::parse_request_id`;
/// server-made ids are hex).
/// The prefix of the keys of entries written by request `id`: `i/` and the
/// first 8 bytes of the id's SHA-256. Short and fixed in length on
/// purpose, like [`artifact_pin_key`]; entries of another id sharing the
/// prefix are told apart by reading the entry.
pub(super) fn request_prefix(id: &str) -> [u8; 10] {
    use sha2::Digest as _;
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(b"i/");
    k[2..].copy_from_slice(&sha2::Sha256::digest(id.as_bytes())[..8]);
    k
}

/// The key that says the entry at log index `index` was written by
/// request `id`.
pub(super) fn request_key(id: &str, index: u64) -> [u8; 18] {
    let mut k = [0u8; 18];
    k[..10].copy_from_slice(&request_prefix(id));
    k[10..].copy_from_slice(&index.to_be_bytes());
    k
}

pub(super) fn pin_key(env: &EnvName, seq: u64) -> Vec<u8> {
    let mut k = env_prefix("p", env);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn time_key(env: &EnvName, at: Timestamp, seq: u64) -> Vec<u8> {
    let mut k = env_prefix("t", env);
    k.extend_from_slice(&at.sort_key());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn position_key(env: &EnvName, p: Ordered, seq: u64) -> Vec<u8> {
    let mut k = env_prefix("q", env);
    k.push(p.tag());
    k.extend_from_slice(&p.value().to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// How many leading bytes of a digest an artifact-pin key holds.
pub(super) const ARTIFACT_PIN_PREFIX: usize = 8;

/// The key that says the pin at log index `index` pins `digest`: `a/`,
/// the digest's first [`ARTIFACT_PIN_PREFIX`] bytes, the index. Short on
/// purpose: one lands at a random place for every pin, and a rebuild's
/// time grows with their length. Pins of another digest sharing the
/// prefix are told apart by reading the pin.
pub(super) fn artifact_pin_key(digest: &Digest, index: u64) -> [u8; 2 + ARTIFACT_PIN_PREFIX + 8] {
    let mut k = [0u8; 2 + ARTIFACT_PIN_PREFIX + 8];
    k[..2].copy_from_slice(b"a/");
    k[2..2 + ARTIFACT_PIN_PREFIX].copy_from_slice(&digest.as_bytes()[..ARTIFACT_PIN_PREFIX]);
    k[2 + ARTIFACT_PIN_PREFIX..].copy_from_slice(&index.to_be_bytes());
    k
}

/// A snapshot (`s`) or drill (`v`) key: by environment, in log order.
pub(super) fn evidence_key(tag: &str, env: &EnvName, index: u64) -> Vec<u8> {
    let mut k = env_prefix(tag, env);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

pub(super) fn seq_of_time_key(key: &[u8]) -> Result<u64> {
    let tail = key
        .len()
        .checked_sub(8)
        .map(|start| &key[start..])
        .ok_or_else(|| Error::internal("index time key is too short"))?;
    let mut b = [0u8; 8];
    b.copy_from_slice(tail);
    Ok(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_and_short_ones_are_refused() {
        let at = |index| EntryAt {
            index,
            offset: index * 400,
            len: 389,
        };
        for (prev, next) in [
            (None, None),
            (Some(at(3)), None),
            (None, Some(at(9))),
            (Some(at(3)), Some(at(9))),
        ] {
            let slot = Slot {
                pin: at(5),
                published: at(1),
                prev,
                next,
            };
            let bytes = slot.encode();
            assert_eq!(Slot::decode(&bytes).unwrap(), slot);
            assert!(Slot::decode(&bytes[..bytes.len() - 1]).is_err());
        }
        assert!(Slot::decode(&[]).is_err());
    }
}
