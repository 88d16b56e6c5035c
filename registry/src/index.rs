//! The sled index: lookups derived from the log, rebuildable at any time.
//!
//! Object storage is the source of truth; this index only makes reads fast.
//! Everything lives in one sled tree so that applying a log entry is one
//! atomic batch, including the count of entries applied:
//!
//! ```text
//! m/applied                           u64 BE: entries 0..applied are applied
//! r/<release id>                      ArtifactRecord (JSON)
//! d/<digest hex>/<release id>         (empty): digest -> release ids
//! e/<env>                             EnvHead (JSON): latest pin of the env
//! p/<env>/<seq u64 BE>                PinRecord (JSON)
//! t/<env>/<activated_at key><seq BE>  (empty): time-ordered pins, for resolve
//! ```
//!
//! Release ids and env names never contain `/`, so the separators are
//! unambiguous. sled flushes on its own every 500 ms; entries applied but not
//! yet flushed when the process dies are simply applied again at start.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sled::{Batch, Tree};

use crate::digest::Digest;
use crate::error::{Error, Kind, Result};
use crate::ids::{EnvName, ReleaseId};
use crate::log::{Entry, leaf_hash};
use crate::signing::KeyId;
use crate::time::Timestamp;

/// A published artifact, as the index keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub release_id: ReleaseId,
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub recorded_at: Timestamp,
    pub log_index: u64,
    pub key_id: KeyId,
    pub envelope: serde_json::Value,
}

/// A pin, as the index keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinRecord {
    pub env: EnvName,
    pub seq: u64,
    pub release_id: ReleaseId,
    pub digest: Digest,
    pub activated_at: Timestamp,
    pub recorded_at: Timestamp,
    pub actor: String,
    pub reason: String,
    pub log_index: u64,
    /// Leaf hash (hex) of this pin's entry.
    pub entry_hash: String,
    pub prev_pin: Option<String>,
}

/// The latest pin of an environment: what the next pin is checked against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvHead {
    pub seq: u64,
    pub activated_at: Timestamp,
    pub entry_hash: String,
}

const APPLIED: &[u8] = b"m/applied";

/// The derived index.
#[derive(Clone)]
pub struct Index {
    db: sled::Db,
    tree: Tree,
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::internal(format!("index value for {what} is unreadable: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain records cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn env_prefix(tag: &str, env: &EnvName) -> Vec<u8> {
    format!("{tag}/{env}/").into_bytes()
}

fn pin_key(env: &EnvName, seq: u64) -> Vec<u8> {
    let mut k = env_prefix("p", env);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn time_key(env: &EnvName, at: Timestamp, seq: u64) -> Vec<u8> {
    let mut k = env_prefix("t", env);
    k.extend_from_slice(&at.sort_key());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of_time_key(key: &[u8]) -> Result<u64> {
    let tail = key
        .len()
        .checked_sub(8)
        .map(|start| &key[start..])
        .ok_or_else(|| Error::internal("index time key is too short"))?;
    let mut b = [0u8; 8];
    b.copy_from_slice(tail);
    Ok(u64::from_be_bytes(b))
}

impl Index {
    /// Opens (or creates) the index in `dir`.
    ///
    /// # Errors
    /// Internal when sled cannot open the folder (for example, it is corrupt).
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| Error::internal(format!("opening index {}: {e}", dir.display())))?;
        Self::from_db(db)
    }

    /// A throwaway index, for tests.
    ///
    /// # Errors
    /// Internal when sled fails.
    pub fn temporary() -> Result<Self> {
        Self::from_db(sled::Config::new().temporary(true).open()?)
    }

    fn from_db(db: sled::Db) -> Result<Self> {
        let tree = db.open_tree("index")?;
        Ok(Self { db, tree })
    }

    /// How many log entries have been applied (entries `0..applied`).
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn applied(&self) -> Result<u64> {
        match self.tree.get(APPLIED)? {
            None => Ok(0),
            Some(v) => {
                let b: [u8; 8] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| Error::internal("index applied counter is corrupt"))?;
                Ok(u64::from_be_bytes(b))
            }
        }
    }

    /// Applies log entry `index` (which must be the next one), atomically.
    ///
    /// # Errors
    /// DataLoss when the entry is malformed or contradicts earlier entries
    /// (the log was tampered with); Internal on index failure.
    pub fn apply(&self, index: u64, bytes: &[u8]) -> Result<()> {
        let applied = self.applied()?;
        if index != applied {
            return Err(Error::internal(format!(
                "index expected log entry {applied} next, was given {index}"
            )));
        }
        let entry = Entry::parse(index, bytes)?;
        let mut batch = Batch::default();
        match entry {
            Entry::Publish(p) => {
                if let Some(existing) = self.artifact_by_release(&p.release_id)? {
                    return Err(Error::new(
                        Kind::DataLoss,
                        format!(
                            "log entry {index} binds release id {} again (already bound at entry {})",
                            p.release_id, existing.log_index
                        ),
                    ));
                }
                let rec = ArtifactRecord {
                    release_id: p.release_id,
                    digest: p.digest,
                    size: p.size,
                    media_type: p.media_type,
                    recorded_at: p.recorded_at,
                    log_index: index,
                    key_id: p.key_id,
                    envelope: p.envelope,
                };
                batch.insert(format!("r/{}", rec.release_id).into_bytes(), encode(&rec));
                batch.insert(
                    format!("d/{}/{}", rec.digest.hex(), rec.release_id).into_bytes(),
                    &[][..],
                );
            }
            Entry::Pin(p) => {
                let head = self.env_head(&p.env)?;
                let (expect_seq, expect_prev) = match &head {
                    None => (1, None),
                    Some(h) => (h.seq + 1, Some(h.entry_hash.clone())),
                };
                let in_order = head
                    .as_ref()
                    .is_none_or(|h| p.activated_at >= h.activated_at);
                if p.seq != expect_seq || p.prev_pin != expect_prev || !in_order {
                    return Err(Error::new(
                        Kind::DataLoss,
                        format!(
                            "log entry {index} (pin #{} of {}) does not follow the environment's \
                             previous pin: the pin chain is broken",
                            p.seq, p.env
                        ),
                    ));
                }
                let entry_hash = hex::encode(leaf_hash(bytes));
                let head = EnvHead {
                    seq: p.seq,
                    activated_at: p.activated_at,
                    entry_hash: entry_hash.clone(),
                };
                batch.insert(format!("e/{}", p.env).into_bytes(), encode(&head));
                batch.insert(time_key(&p.env, p.activated_at, p.seq), &[][..]);
                let rec = PinRecord {
                    env: p.env,
                    seq: p.seq,
                    release_id: p.release_id,
                    digest: p.digest,
                    activated_at: p.activated_at,
                    recorded_at: p.recorded_at,
                    actor: p.actor,
                    reason: p.reason,
                    log_index: index,
                    entry_hash,
                    prev_pin: p.prev_pin,
                };
                batch.insert(pin_key(&rec.env, rec.seq), encode(&rec));
            }
        }
        batch.insert(APPLIED, &(index + 1).to_be_bytes());
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Forces everything applied so far to disk.
    ///
    /// # Errors
    /// Internal when sled fails.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// The artifact bound to `release_id`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn artifact_by_release(&self, release_id: &ReleaseId) -> Result<Option<ArtifactRecord>> {
        self.tree
            .get(format!("r/{release_id}"))?
            .map(|v| decode("release", &v))
            .transpose()
    }

    /// An artifact with `digest` (the earliest-sorting release id bound to it).
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn artifact_by_digest(&self, digest: &Digest) -> Result<Option<ArtifactRecord>> {
        let prefix = format!("d/{}/", digest.hex());
        let Some(item) = self.tree.scan_prefix(prefix.as_bytes()).next() else {
            return Ok(None);
        };
        let (key, _) = item?;
        let release = std::str::from_utf8(&key[prefix.len()..])
            .map_err(|_| Error::internal("index digest key is not UTF-8"))?;
        let release: ReleaseId = release.parse()?;
        self.artifact_by_release(&release)
    }

    /// Artifacts in release id order, starting after `after`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn list_artifacts(
        &self,
        after: Option<&ReleaseId>,
        limit: usize,
    ) -> Result<Vec<ArtifactRecord>> {
        let start = match after {
            // '/'+1 is '0': nothing sorts between "r/<id>" and "r/<id>\0".
            Some(id) => format!("r/{id}\0").into_bytes(),
            None => b"r/".to_vec(),
        };
        let mut out = Vec::new();
        for item in self.tree.range(start..) {
            let (key, value) = item?;
            if !key.starts_with(b"r/") || out.len() >= limit {
                break;
            }
            out.push(decode("release", &value)?);
        }
        Ok(out)
    }

    /// The latest pin of `env`, if any.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn env_head(&self, env: &EnvName) -> Result<Option<EnvHead>> {
        self.tree
            .get(format!("e/{env}"))?
            .map(|v| decode("environment head", &v))
            .transpose()
    }

    /// Pin `seq` of `env`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn pin(&self, env: &EnvName, seq: u64) -> Result<Option<PinRecord>> {
        if seq == 0 {
            return Ok(None);
        }
        self.tree
            .get(pin_key(env, seq))?
            .map(|v| decode("pin", &v))
            .transpose()
    }

    /// The sequence number of the last pin of `env` activated at or before
    /// `at` (ties: the later pin), by one range seek.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn seq_at_or_before(&self, env: &EnvName, at: Timestamp) -> Result<Option<u64>> {
        let lo = env_prefix("t", env);
        let hi = time_key(env, at, u64::MAX);
        match self.tree.range(lo..=hi).next_back() {
            Some(item) => Ok(Some(seq_of_time_key(&item?.0)?)),
            None => Ok(None),
        }
    }

    /// The sequence number of the last pin of `env` activated strictly before `at`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn seq_before(&self, env: &EnvName, at: Timestamp) -> Result<Option<u64>> {
        let lo = env_prefix("t", env);
        let hi = time_key(env, at, 0);
        match self.tree.range(lo..hi).next_back() {
            Some(item) => Ok(Some(seq_of_time_key(&item?.0)?)),
            None => Ok(None),
        }
    }

    /// The sequence number of the first pin of `env` activated at or after `at`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn seq_at_or_after(&self, env: &EnvName, at: Timestamp) -> Result<Option<u64>> {
        let prefix = env_prefix("t", env);
        let lo = time_key(env, at, 0);
        match self.tree.range(lo..).next() {
            Some(item) => {
                let (key, _) = item?;
                if key.starts_with(&prefix) {
                    Ok(Some(seq_of_time_key(&key)?))
                } else {
                    Ok(None)
                }
            }
            None => Ok(None),
        }
    }
}
