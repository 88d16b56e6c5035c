//! The log's entry types and their exact bytes.
//!
//! Every state change is one entry: a compact JSON document, stored as the
//! exact bytes that were hashed and never re-serialized. Each entry's hash is
//! its RFC 6962 leaf hash, `SHA-256(0x00 || bytes)`, which is also what a
//! pin's `prev_pin` links to. Compact JSON never contains a raw newline,
//! which is what lets one log object hold several entries, one per line
//! (see [`crate::layout`]).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Kind, Result};
use crate::ids::{EnvName, ReleaseId};
use crate::signing::KeyId;
use crate::time::Timestamp;

pub use crate::merkle::leaf_hash;

/// One state change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    /// An artifact was published.
    Publish(PublishEntry),
    /// An artifact went live in an environment.
    Pin(PinEntry),
    /// The set of trusted publisher keys changed.
    Key(KeyEntry),
}

/// A published artifact: the binding of a release id to a digest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublishEntry {
    pub release_id: ReleaseId,
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// The trusted key that verified `envelope` at publish.
    pub key_id: KeyId,
    /// The publisher's DSSE envelope (its signature covers the decoded
    /// payload, so embedding it as JSON keeps it verifiable).
    pub envelope: serde_json::Value,
    pub recorded_at: Timestamp,
    /// Identifies the request that wrote this entry, so a writer whose
    /// storage call timed out can read back and tell whether it landed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The envelope statement's `predicateType`, checked at publish. Entries
    /// written before the registry recorded it have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicate_type: Option<String>,
}

/// An activation of an artifact in an environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinEntry {
    pub env: EnvName,
    /// Per-environment sequence number, contiguous from 1.
    pub seq: u64,
    pub release_id: ReleaseId,
    pub digest: Digest,
    pub activated_at: Timestamp,
    pub recorded_at: Timestamp,
    /// Who asked for the pin, as the registry authenticated them.
    pub actor: String,
    pub reason: String,
    /// Leaf hash (hex) of the environment's previous pin entry; `None` for seq 1.
    pub prev_pin: Option<String>,
    /// The database position at activation, when the pipeline recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_position: Option<crate::position::DbPosition>,
    /// Identifies the request that wrote this entry, so a writer whose
    /// storage call timed out can read back and tell whether it landed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// What a key entry does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyAction {
    /// Trust the key for publishes logged at or after `at`.
    Add,
    /// Stop trusting the key for publishes logged at or after `at`.
    Revoke,
}

/// A change to the trusted publisher keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyEntry {
    pub action: KeyAction,
    pub key_id: KeyId,
    /// The SPKI PEM public key (for `add`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// `valid_from` for an add, `revoked_at` for a revoke.
    pub at: Timestamp,
    pub recorded_at: Timestamp,
    pub actor: String,
    pub reason: String,
    /// Identifies the request that wrote this entry, so a writer whose
    /// storage call timed out can read back and tell whether it landed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Entry {
    /// The id of the request that wrote the entry, when it recorded one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Entry::Publish(p) => p.request_id.as_deref(),
            Entry::Pin(p) => p.request_id.as_deref(),
            Entry::Key(k) => k.request_id.as_deref(),
        }
    }

    /// Serializes a new entry; these bytes are what gets stored and hashed.
    pub fn to_bytes(&self) -> Bytes {
        // Serializing these plain structs cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// The entry's type, as its `type` field spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::Publish(_) => "publish",
            Entry::Pin(_) => "pin",
            Entry::Key(_) => "key",
        }
    }

    /// The kinds of entry there are.
    pub const KINDS: [&'static str; 3] = ["publish", "pin", "key"];

    /// Checks that `kind` names a kind of entry (a filter of watches and
    /// webhooks).
    ///
    /// # Errors
    /// Invalid, listing the kinds.
    pub fn check_kind(kind: &str) -> Result<()> {
        if Self::KINDS.contains(&kind) {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "{kind:?} is not an entry type ({})",
                Self::KINDS.join(", ")
            )))
        }
    }

    /// Parses stored entry bytes.
    ///
    /// # Errors
    /// DataLoss when the bytes are not a valid entry.
    pub fn parse(index: u64, bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::new(
                Kind::DataLoss,
                format!("log entry {index} is not a valid entry: {e}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_hash_has_the_rfc6962_prefix() {
        // SHA-256 of the single byte 0x00: the RFC 6962 hash of an empty leaf.
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn entries_parse_back_and_reject_unknown_shapes() {
        let e = Entry::Pin(PinEntry {
            env: "prod".parse().unwrap(),
            seq: 1,
            release_id: "r1".parse().unwrap(),
            digest: Digest::of(b"{}"),
            activated_at: Timestamp::from_micros(1).unwrap(),
            recorded_at: Timestamp::from_micros(2).unwrap(),
            actor: "anonymous".into(),
            reason: String::new(),
            prev_pin: None,
            db_position: None,
            request_id: None,
        });
        assert_eq!(Entry::parse(0, &e.to_bytes()).unwrap(), e);
        let err = Entry::parse(3, br#"{"type":"delete"}"#).unwrap_err();
        assert_eq!(err.kind(), Kind::DataLoss);
        assert!(err.message().contains("log entry 3"));
    }
}
