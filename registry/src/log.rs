//! The append-only log: one entry per state change.
//!
//! ```text
//! log/entries/00000000000000000000   entry 0 (JSON, the exact bytes hashed)
//! log/entries/00000000000000000001   entry 1
//! log/entries/00000000000000000002   entries 2, 3 and 4: a group commit,
//!                                    one entry per line
//! log/entries/00000000000000000005   entry 5
//! ...
//! ```
//!
//! The object at `log/entries/<n>` is created with `PutMode::Create`, so two
//! writers can never both write it: the loser learns it lost the race and
//! must catch up. An object usually holds one entry; when several requests
//! wait at the same moment they are committed together as one object whose
//! lines are entries `n, n+1, ...` (entries are compact JSON, which never
//! contains a raw newline). The next object's key is the index after the
//! last entry, so objects chain without gaps and a batch is all or nothing.
//!
//! Entries are stored as the exact bytes that are hashed and never
//! re-serialized; each entry's hash is its RFC 6962 leaf hash,
//! `SHA-256(0x00 || bytes)`, which is also what a pin's `prev_pin` links to.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Kind, Result};
use crate::ids::{EnvName, ReleaseId};
use crate::signing::KeyId;
use crate::time::Timestamp;

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
    /// Serializes a new entry; these bytes are what gets stored and hashed.
    pub fn to_bytes(&self) -> Bytes {
        // Serializing these plain structs cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
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

pub use crate::merkle::leaf_hash;

/// The entries in object storage.
#[derive(Clone, Debug)]
pub struct Log {
    store: Arc<dyn ObjectStore>,
}

impl Log {
    /// The log in `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// The storage key of entry `index`.
    pub fn path(index: u64) -> Path {
        Path::from(format!("log/entries/{index:020}"))
    }

    /// The object bytes of a batch: its entries, one per line.
    pub fn join(entries: &[Bytes]) -> Bytes {
        if let [one] = entries {
            return one.clone();
        }
        let mut out = Vec::with_capacity(entries.iter().map(|e| e.len() + 1).sum());
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                out.push(b'\n');
            }
            out.extend_from_slice(e);
        }
        Bytes::from(out)
    }

    /// Splits an object into its entries.
    pub fn split(object: &Bytes) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, b) in object.iter().enumerate() {
            if *b == b'\n' {
                out.push(object.slice(start..i));
                start = i + 1;
            }
        }
        out.push(object.slice(start..));
        out
    }

    /// Creates the object holding entries `index..index + entries.len()`,
    /// durably. Returns `false` when the key already exists (another writer
    /// won the index); both 409 and 412 answers mean that.
    ///
    /// # Errors
    /// Unavailable when storage fails: the write may or may not have landed.
    pub async fn append(&self, index: u64, entries: &[Bytes]) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let payload = PutPayload::from(Self::join(entries));
        match self.store.put_opts(&Self::path(index), payload, opts).await {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the object starting at `index`, or `None` when there is none.
    ///
    /// # Errors
    /// Unavailable when storage fails.
    pub async fn read(&self, index: u64) -> Result<Option<Bytes>> {
        match self.store.get(&Self::path(index)).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every log object in storage: (first index, byte size), in order.
    ///
    /// # Errors
    /// Unavailable when storage fails.
    pub async fn objects(&self) -> Result<Vec<(u64, u64)>> {
        use futures::TryStreamExt as _;
        let prefix = Path::from("log/entries");
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        let mut out: Vec<(u64, u64)> = metas
            .iter()
            .filter_map(|m| {
                let index = m.location.filename()?.parse().ok()?;
                Some((index, m.size))
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Indices of every object stored after `index` (for detecting gaps).
    ///
    /// # Errors
    /// Unavailable when storage fails.
    pub async fn objects_after(&self, index: u64) -> Result<Vec<u64>> {
        use futures::TryStreamExt as _;
        let prefix = Path::from("log/entries");
        let offset = Self::path(index);
        let metas: Vec<_> = self
            .store
            .list_with_offset(Some(&prefix), &offset)
            .try_collect()
            .await?;
        let mut out: Vec<u64> = metas
            .iter()
            .filter_map(|m| m.location.filename().and_then(|n| n.parse().ok()))
            .filter(|i| *i > index)
            .collect();
        out.sort_unstable();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn append_is_write_once_per_index_and_batches_split_back() {
        let log = Log::new(Arc::new(InMemory::new()));
        assert!(log.append(0, &[Bytes::from_static(b"a")]).await.unwrap());
        assert!(!log.append(0, &[Bytes::from_static(b"b")]).await.unwrap());
        assert_eq!(
            log.read(0).await.unwrap().unwrap(),
            Bytes::from_static(b"a")
        );
        assert_eq!(log.read(1).await.unwrap(), None);
        let batch = [
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"[]"),
            Bytes::from_static(b"1"),
        ];
        assert!(log.append(1, &batch).await.unwrap());
        assert_eq!(
            Log::split(&log.read(1).await.unwrap().unwrap()),
            batch.to_vec()
        );
        assert_eq!(log.objects_after(0).await.unwrap(), vec![1]);
        assert_eq!(Log::path(7).as_ref(), "log/entries/00000000000000000007");
    }

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
