//! The sled index: lookups derived from the log, rebuildable at any time.
//!
//! Object storage is the source of truth; this index only makes reads fast.
//! The lookups live in one sled tree so that applying a log object is one
//! atomic batch, including the count of entries applied:
//!
//! ```text
//! m/applied                           u64 BE: entries 0..applied are applied
//! r/<release id>                      EntryAt of the publish, then the 32-byte digest it binds
//! d/<digest hex>/<release id>         (empty): digest -> release ids
//! e/<env>                             EnvHead (JSON): latest pin of the env
//! p/<env>/<seq u64 BE>                EntryAt of the pin (its entry copy holds the rest)
//! t/<env>/<activated_at key><seq BE>  Slot: where the pin, its release's publish and its neighbour pins are; time-ordered, for resolve
//! k/<key id>                          KeyRecord (JSON): publisher key lifecycle
//! q/<env>/<kind><position BE><seq BE>  (empty): pins by LSN (l) or TXID (x)
//! o/<first index u64 BE>              u64 BE entry count, u64 BE byte size of that log object
//! m/format                            u64 BE: the layout version, [`FORMAT`]
//! ```
//!
//! Next to it, flat files (see [`files`]) hold every *complete* (perfect,
//! aligned) subtree hash of the RFC 6962 tree over the log, level 0 being
//! the leaf hashes, and a copy of every entry. A complete subtree never
//! changes, so it is written once, when its last leaf is applied; any root
//! or proof is then O(log n) reads at computed offsets.
//!
//! Records are not repeated in sled: an [`EntryAt`] (log index, offset and
//! length of the entry copy) points at the entry, which is parsed when a
//! record is read and checked against its leaf hash first. A damaged copy
//! is refused and leaves a `damaged` file that makes the next start rebuild
//! the index. Keeping sled to small keys and values keeps its memory and
//! its traversals small as history grows.
//!
//! Release ids and env names never contain `/`, so the separators are
//! unambiguous. sled flushes on its own every 2 s; entries applied but not
//! yet flushed when the process dies are simply applied again at start.

mod files;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sled::{Batch, Tree};

use crate::digest::Digest;
use crate::error::{Error, Kind, Result};
use crate::ids::{EnvName, ReleaseId};
use crate::log::Entry;
use crate::merkle::{self, Hash, NodeSource};
use crate::position::Ordered;
use crate::signing::KeyId;
use crate::time::Timestamp;
use stackpin_core::layout;
use stackpin_core::state::{Applied, Change, Overlay, Refused, Release, Rules, State};

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_position: Option<crate::position::DbPosition>,
}

pub use stackpin_core::state::{EnvHead, KeyRecord};

const APPLIED: &[u8] = b"m/applied";
const FORMAT_KEY: &[u8] = b"m/format";
/// The index layout version; an index of another version is rebuilt.
/// 2: Merkle hashes and entry copies in flat files; 3: pins read from
/// their entry copies; 4: artifacts too; 5: with the copies' places;
/// 6: time keys name the pin and publish entries; 7: with the copies'
/// lengths; 8: release keys carry the bound digest.
pub const FORMAT: u64 = 8;

/// Where an entry and its copy are: log index, then offset and length in
/// the entry copy file. 20 bytes, so sled keeps the value inline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryAt {
    pub index: u64,
    offset: u64,
    len: u32,
}

impl EntryAt {
    fn encode(self) -> [u8; 20] {
        let mut v = [0u8; 20];
        v[..8].copy_from_slice(&self.index.to_be_bytes());
        v[8..16].copy_from_slice(&self.offset.to_be_bytes());
        v[16..].copy_from_slice(&self.len.to_be_bytes());
        v
    }

    fn decode(v: &[u8]) -> Result<Self> {
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
    fn encode(&self) -> Vec<u8> {
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

    fn decode(v: &[u8]) -> Result<Self> {
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

/// A file in the index folder that says the index was found damaged while
/// serving; the next open rebuilds it.
const DAMAGED: &str = "damaged";

/// Places written by entries staged earlier in the same batch, which the
/// tree does not show yet (the rule state of those entries is the
/// overlay's, see [`Index::apply_object`]).
#[derive(Default)]
struct Pending {
    releases: std::collections::HashMap<ReleaseId, EntryAt>,
    /// The latest pin's timeline key and slot, per environment.
    slots: std::collections::HashMap<EnvName, (Vec<u8>, Slot)>,
}

fn object_key(index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = b'o';
    k[1] = b'/';
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::internal("index holds a malformed number"))
}

/// The derived index.
#[derive(Clone)]
pub struct Index {
    db: sled::Db,
    tree: Tree,
    /// Merkle hashes and entry copies, written before the batch that
    /// applies their entries (what lies beyond `applied` is ignored).
    files: Arc<files::Files>,
    /// `m/applied`, kept in memory for the check every hash read makes;
    /// it may trail sled's by the moment between a batch and its update.
    applied: Arc<AtomicU64>,
    /// The index folder (`None` for a throwaway index).
    dir: Option<std::path::PathBuf>,
    /// Hashes of imperfect ranges of leaves (see [`NodeSource::memo`]);
    /// applied leaves never change, so an entry never goes stale.
    memo: Arc<std::sync::Mutex<std::collections::HashMap<(u64, u64), Hash>>>,
}

/// How many range hashes [`Index`] remembers before starting over (a tree
/// size needs about log2(size) of them).
const MEMO_LIMIT: usize = 4096;

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

fn position_key(env: &EnvName, p: Ordered, seq: u64) -> Vec<u8> {
    let mut k = env_prefix("q", env);
    k.push(p.tag());
    k.extend_from_slice(&p.value().to_be_bytes());
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
        // sled caches 1 GiB by default; the index is a cache of the log, and
        // a bounded one keeps the server's memory flat as history grows.
        // Throughput mode trades disk space for less rewriting, and a slower
        // background flush keeps sled's own I/O off the write and rebuild
        // paths: whatever it had not flushed at a crash is applied again
        // from the log at start.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(32 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(2000))
            .open()
            .map_err(|e| Error::internal(format!("opening index {}: {e}", dir.display())))?;
        if let Ok(index) = std::fs::read_to_string(dir.join(DAMAGED)) {
            return Err(Error::internal(format!(
                "index was found damaged while serving (its copy of log entry {})",
                index.trim()
            )));
        }
        let mut index = Self::from_db(db, files::Files::open(dir)?)?;
        index.dir = Some(dir.to_owned());
        Ok(index)
    }

    /// A throwaway index, for tests.
    ///
    /// # Errors
    /// Internal when sled fails.
    pub fn temporary() -> Result<Self> {
        Self::from_db(
            sled::Config::new().temporary(true).open()?,
            files::Files::memory(),
        )
    }

    /// Checks that the tree is of this version's layout and the flat files
    /// hold all it applied; an index failing either is rebuilt by the caller.
    fn from_db(db: sled::Db, files: files::Files) -> Result<Self> {
        let tree = db.open_tree("index")?;
        let applied = match tree.get(APPLIED)? {
            None => 0,
            Some(v) => u64_at(&v, 0)?,
        };
        let format = tree.get(FORMAT_KEY)?.map(|v| u64_at(&v, 0)).transpose()?;
        match format {
            Some(FORMAT) => {}
            None if applied == 0 => {
                tree.insert(FORMAT_KEY, &FORMAT.to_be_bytes())?;
            }
            other => {
                return Err(Error::internal(format!(
                    "index has layout version {}, this version uses {FORMAT}",
                    other.unwrap_or(1)
                )));
            }
        }
        files.check(applied)?;
        Ok(Self {
            db,
            tree,
            files: Arc::new(files),
            applied: Arc::new(AtomicU64::new(applied)),
            dir: None,
            memo: Arc::default(),
        })
    }

    /// `m/applied` as sled has it.
    fn stored_applied(&self) -> Result<u64> {
        match self.tree.get(APPLIED)? {
            None => Ok(0),
            Some(v) => u64_at(&v, 0),
        }
    }

    /// How many log entries have been applied (entries `0..applied`), as
    /// sled has it: a reader that has seen any key of a batch sees at
    /// least that batch counted.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn applied(&self) -> Result<u64> {
        self.stored_applied()
    }

    /// Applies the entries of the log object starting at `start`, from
    /// entry `start + skip` on (a restart may have applied the first ones).
    /// Each entry must be accepted by [`state::apply`] under `rules`, over
    /// the index plus the entries before it in the object.
    ///
    /// # Errors
    /// DataLoss when an entry breaks a rule (the log was tampered with);
    /// Internal on index failure.
    pub fn apply_object(
        &self,
        rules: &Rules,
        start: u64,
        entries: &[bytes::Bytes],
        skip: usize,
    ) -> Result<()> {
        let count = entries.len() as u64;
        let applied = self.applied()?;
        if start + skip as u64 != applied {
            return Err(Error::internal(format!(
                "index expected log entry {applied} next, was given {}",
                start + skip as u64
            )));
        }
        let size = layout::object_size(entries);
        // One atomic batch for the whole object: far fewer sled writes when
        // rebuilding a log of group-committed objects.
        if skip >= entries.len() {
            return Ok(());
        }
        let mut batch = Batch::default();
        let mut pending = Pending::default();
        let mut staged = self.files.appender(applied)?;
        let mut state = Overlay::new(self);
        for (i, bytes) in entries.iter().enumerate().skip(skip) {
            let index = start + i as u64;
            let accepted = state
                .apply(rules, index, bytes)
                .map_err(|refused| refused_in_log(refused, index))?;
            let object = (i == 0).then_some((count, size));
            self.stage(
                &mut batch,
                &mut pending,
                &mut staged,
                &accepted,
                bytes,
                object,
            )?;
        }
        self.commit(batch, &staged, start + count)
    }

    /// Writes the flat files, then applies the batch that makes their
    /// entries count, then lets readers see them.
    fn commit(&self, mut batch: Batch, staged: &files::Appender, applied: u64) -> Result<()> {
        self.files.write(staged)?;
        batch.insert(APPLIED, &applied.to_be_bytes());
        self.tree.apply_batch(batch)?;
        self.applied.store(applied, Ordering::Release);
        Ok(())
    }

    /// Every log object applied: (first index, entry count, byte size), in
    /// order.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn objects(&self) -> Result<Vec<(u64, u64, u64)>> {
        self.tree
            .scan_prefix(b"o/")
            .map(|item| {
                let (key, value) = item?;
                Ok((u64_at(&key, 2)?, u64_at(&value, 0)?, u64_at(&value, 8)?))
            })
            .collect()
    }

    /// The log object holding entry `index`: its first index and entry count.
    /// (Objects are recorded with their first entry.)
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn object_of(&self, index: u64) -> Result<Option<(u64, u64)>> {
        let hi = object_key(index);
        let Some(item) = self.tree.range(&b"o/"[..]..=&hi[..]).next_back() else {
            return Ok(None);
        };
        let (key, value) = item?;
        let start = u64_at(&key, 2)?;
        let count = u64_at(&value, 0)?;
        Ok((index < start + count).then_some((start, count)))
    }

    /// Adds the writes of an accepted entry to `batch`; `pending` holds the
    /// places of the entries staged before it in the same batch.
    fn stage(
        &self,
        batch: &mut Batch,
        pending: &mut Pending,
        staged: &mut files::Appender,
        accepted: &Applied,
        bytes: &[u8],
        object: Option<(u64, u64)>,
    ) -> Result<()> {
        let index = accepted.index;
        if let Some((count, size)) = object {
            let mut value = [0u8; 16];
            value[..8].copy_from_slice(&count.to_be_bytes());
            value[8..].copy_from_slice(&size.to_be_bytes());
            batch.insert(&object_key(index)[..], &value[..]);
        }
        let leaf = accepted.leaf;
        let mut node = leaf;
        staged.push_hash(0, index, &leaf)?;
        let (offset, len) = staged.push_entry(bytes);
        let place = EntryAt {
            index,
            offset,
            len: u32::try_from(len)
                .map_err(|_| Error::internal(format!("log entry {index} is over 4 GiB")))?,
        };
        let at = place.encode();
        for (level, at) in merkle::completed_nodes(index) {
            let left = staged.hash(&self.files, level - 1, 2 * at)?;
            node = merkle::node_hash(&left, &node);
            staged.push_hash(level, at, &node)?;
        }
        match (&accepted.entry, &accepted.change) {
            (Entry::Publish(p), Change::Publish(release)) => {
                let mut value = Vec::with_capacity(52);
                value.extend_from_slice(&at);
                value.extend_from_slice(release.digest.as_bytes());
                batch.insert(format!("r/{}", p.release_id).into_bytes(), value);
                batch.insert(
                    format!("d/{}/{}", p.digest.hex(), p.release_id).into_bytes(),
                    &[][..],
                );
                pending.releases.insert(p.release_id.clone(), place);
            }
            (
                Entry::Pin(p),
                Change::Pin {
                    previous,
                    head,
                    position,
                },
            ) => {
                if let Some(o) = position {
                    batch.insert(position_key(&p.env, *o, p.seq), &[][..]);
                }
                // The previous pin's slot learns where its successor is.
                let prev = match (pending.slots.remove(&p.env), previous) {
                    (Some(latest), _) => Some(latest),
                    (None, Some(h)) => {
                        let key = time_key(&p.env, h.activated_at, h.seq);
                        let value = self.tree.get(&key)?.ok_or_else(|| {
                            Error::internal(format!(
                                "index lacks the timeline slot of pin #{} of {}",
                                h.seq, p.env
                            ))
                        })?;
                        Some((key, Slot::decode(&value)?))
                    }
                    (None, None) => None,
                };
                let prev_pin = match prev {
                    Some((key, mut slot)) => {
                        slot.next = Some(place);
                        batch.insert(key, slot.encode());
                        Some(slot.pin)
                    }
                    None => None,
                };
                batch.insert(format!("e/{}", p.env).into_bytes(), encode(head));
                let published = match pending.releases.get(&p.release_id) {
                    Some(e) => *e,
                    None => self.artifact_entry(&p.release_id)?.ok_or_else(|| {
                        Error::internal(format!(
                            "index lacks the publish of release {} that entry {index} pins",
                            p.release_id
                        ))
                    })?,
                };
                let slot = Slot {
                    pin: place,
                    published,
                    prev: prev_pin,
                    next: None,
                };
                let key = time_key(&p.env, p.activated_at, p.seq);
                batch.insert(key.clone(), slot.encode());
                pending.slots.insert(p.env.clone(), (key, slot));
                batch.insert(pin_key(&p.env, p.seq), &at[..]);
            }
            (Entry::Key(_), Change::Key(record)) => {
                batch.insert(format!("k/{}", record.key_id).into_bytes(), encode(record));
            }
            _ => {
                return Err(Error::internal(format!(
                    "log entry {index} was accepted with a change of another kind"
                )));
            }
        }
        Ok(())
    }

    /// The hash of the complete subtree at `level`, `index`.
    ///
    /// # Errors
    /// Internal when the node is missing or unreadable.
    pub fn node(&self, level: u8, index: u64) -> Result<Hash> {
        if !self.complete(level, index)? {
            return Err(Error::internal(format!(
                "index lacks Merkle node {level}/{index}"
            )));
        }
        self.files.hash(level, index)
    }

    /// Whether subtree `index` at `level` (leaves index·2^level ..
    /// (index+1)·2^level) is complete in the applied log.
    fn complete(&self, level: u8, index: u64) -> Result<bool> {
        let complete = |applied: u64| level < 64 && index < applied >> level;
        // The in-memory count is updated just after the sled batch, so a
        // reader that found a key of that batch may be ahead of it: sled's
        // own count, applied atomically with the batch, settles it.
        Ok(complete(self.applied.load(Ordering::Acquire)) || complete(self.stored_applied()?))
    }

    /// A reader for one entry and its proof (see [`ProofReader`]).
    pub fn proof_reader(&self) -> ProofReader<'_> {
        ProofReader {
            index: self,
            blocks: std::sync::Mutex::default(),
        }
    }

    /// The lifecycle record of a publisher key.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn key(&self, key_id: &KeyId) -> Result<Option<KeyRecord>> {
        self.tree
            .get(format!("k/{key_id}"))?
            .map(|v| decode("key", &v))
            .transpose()
    }

    /// Every publisher key the log mentions.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn keys(&self) -> Result<Vec<KeyRecord>> {
        self.tree
            .scan_prefix(b"k/")
            .map(|item| decode("key", &item?.1))
            .collect()
    }

    /// Forces everything applied so far to disk.
    ///
    /// # Errors
    /// Internal when sled fails.
    pub async fn flush(&self) -> Result<()> {
        // The files first: sled must never say more is applied than the
        // files hold on disk.
        self.files.sync()?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// The artifact bound to `release_id`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn artifact_by_release(&self, release_id: &ReleaseId) -> Result<Option<ArtifactRecord>> {
        self.artifact_entry(release_id)?
            .map(|at| self.artifact_record(at))
            .transpose()
    }

    /// The log index of the publish that bound `release_id`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn artifact_entry(&self, release_id: &ReleaseId) -> Result<Option<EntryAt>> {
        self.tree
            .get(format!("r/{release_id}"))?
            .map(|v| EntryAt::decode(&v))
            .transpose()
    }

    /// The artifact published at `at`, from the entry copy.
    fn artifact_record(&self, at: EntryAt) -> Result<ArtifactRecord> {
        let index = at.index;
        let (bytes, _) = self.verified_copy(at, &self.proof_reader())?;
        let Entry::Publish(p) = Entry::parse(index, &bytes)? else {
            return Err(Error::internal(format!(
                "index names log entry {index} as a publish; it is not"
            )));
        };
        Ok(ArtifactRecord {
            release_id: p.release_id,
            digest: p.digest,
            size: p.size,
            media_type: p.media_type,
            recorded_at: p.recorded_at,
            log_index: index,
            key_id: p.key_id,
            envelope: p.envelope,
        })
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
            out.push(self.artifact_record(EntryAt::decode(&value)?)?);
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

    /// The pin of `env` written at log index `log_index`, searching back from
    /// the latest pin (a new pin is at most a batch away from the head).
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn pin_at_index(&self, env: &EnvName, log_index: u64) -> Result<Option<PinRecord>> {
        let Some(head) = self.env_head(env)? else {
            return Ok(None);
        };
        let mut seq = head.seq;
        while let Some(pin) = self.pin(env, seq)? {
            if pin.log_index == log_index {
                return Ok(Some(pin));
            }
            if pin.log_index < log_index {
                break;
            }
            seq -= 1;
        }
        Ok(None)
    }

    /// Pin `seq` of `env`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn pin(&self, env: &EnvName, seq: u64) -> Result<Option<PinRecord>> {
        Ok(self
            .pin_with_entry(env, seq, &self.proof_reader())?
            .map(|(pin, _)| pin))
    }

    /// Pin `seq` of `env` and its entry's bytes.
    ///
    /// # Errors
    /// As [`Self::pin`].
    pub fn pin_with_entry(
        &self,
        env: &EnvName,
        seq: u64,
        reader: &ProofReader<'_>,
    ) -> Result<Option<(PinRecord, bytes::Bytes)>> {
        if seq == 0 {
            return Ok(None);
        }
        let Some(value) = self.tree.get(pin_key(env, seq))? else {
            return Ok(None);
        };
        self.pin_entry_at(EntryAt::decode(&value)?, reader)
            .map(Some)
    }

    /// The pin whose entry is at `at`, from the entry copy, and the
    /// copy's bytes.
    ///
    /// # Errors
    /// DataLoss when the copy is damaged (the index is then marked for a
    /// rebuild at the next start); Internal when the entry is not a pin.
    pub fn pin_entry_at(
        &self,
        at: EntryAt,
        reader: &ProofReader<'_>,
    ) -> Result<(PinRecord, bytes::Bytes)> {
        let index = at.index;
        let (bytes, leaf) = self.verified_copy(at, reader)?;
        let Entry::Pin(p) = Entry::parse(index, &bytes)? else {
            return Err(Error::internal(format!(
                "index names log entry {index} as a pin; it is not"
            )));
        };
        let pin = PinRecord {
            env: p.env,
            seq: p.seq,
            release_id: p.release_id,
            digest: p.digest,
            activated_at: p.activated_at,
            recorded_at: p.recorded_at,
            actor: p.actor,
            reason: p.reason,
            log_index: index,
            entry_hash: hex::encode(leaf),
            prev_pin: p.prev_pin,
            db_position: p.db_position,
        };
        Ok((pin, bytes::Bytes::from(bytes)))
    }

    /// The copy of entry `index`, checked against its leaf hash.
    ///
    /// # Errors
    /// DataLoss when the copy is damaged (the index is then marked for a
    /// rebuild at the next start).
    fn verified_copy(&self, at: EntryAt, reader: &ProofReader<'_>) -> Result<(Vec<u8>, Hash)> {
        let index = at.index;
        let bytes = self.files.entry_at(at.offset, at.len.into())?;
        let Some(leaf) = reader.verify(index, &bytes)? else {
            return Err(Error::new(
                Kind::DataLoss,
                format!(
                    "the index's copy of log entry {index} is damaged; restart the registry to \
                     rebuild the index from the log"
                ),
            ));
        };
        Ok((bytes, leaf))
    }

    /// Leaves a mark that makes the next open rebuild the index.
    fn mark_damaged(&self, index: u64) {
        tracing::error!(
            index,
            "the index's copy of a log entry is damaged; the index will be rebuilt at the next start"
        );
        if let Some(dir) = &self.dir
            && let Err(e) = std::fs::write(dir.join(DAMAGED), index.to_string())
        {
            tracing::error!(error = %e, "cannot mark the index damaged");
        }
    }

    /// The last pin of `env` activated at or before `at` (ties: the later
    /// pin), by one range seek: its [`Slot`].
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn live_at(&self, env: &EnvName, at: Timestamp) -> Result<Option<Slot>> {
        let lo = env_prefix("t", env);
        let hi = time_key(env, at, u64::MAX);
        match self.tree.range(lo..=hi).next_back() {
            Some(item) => Ok(Some(Slot::decode(&item?.1)?)),
            None => Ok(None),
        }
    }

    /// The sequence number of the pin of `env` with the greatest recorded
    /// position of `target`'s kind that is at most `target`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn seq_at_or_below_position(&self, env: &EnvName, target: Ordered) -> Result<Option<u64>> {
        let mut lo = env_prefix("q", env);
        lo.push(target.tag());
        let hi = position_key(env, target, u64::MAX);
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

/// Reads the Merkle hashes of one request's entries and proofs: below
/// level 4 a proof and the entry's leaf check stay inside one 16-leaf
/// block, read whole, so they cost one file read instead of five. A
/// request names a few entries; the reader keeps the last few blocks.
/// The index is the rule state of the log it has applied.
impl State for Index {
    type Error = Error;

    fn env_head(&self, env: &EnvName) -> Result<Option<EnvHead>> {
        Index::env_head(self, env)
    }

    fn release(&self, release_id: &ReleaseId) -> Result<Option<Release>> {
        let Some(v) = self.tree.get(format!("r/{release_id}"))? else {
            return Ok(None);
        };
        let at = EntryAt::decode(&v)?;
        let digest: [u8; 32] = v
            .get(20..52)
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| {
                Error::internal(format!(
                    "index holds a short release record for {release_id}"
                ))
            })?;
        Ok(Some(Release {
            index: at.index,
            digest: Digest::from_bytes(digest),
        }))
    }

    fn key(&self, key_id: &KeyId) -> Result<Option<KeyRecord>> {
        Index::key(self, key_id)
    }
}

/// An entry of the log refused while applying it: a violation means the
/// log breaks its own rules (it was tampered with, or written by a
/// registry with other settings); a state failure is the index's.
pub fn refused_in_log(refused: Refused<Error>, index: u64) -> Error {
    match refused {
        Refused::Violation(v) => Error::new(
            Kind::DataLoss,
            format!(
                "log entry {index} breaks the log's rules ({}): {v}",
                v.reason()
            ),
        )
        .with_reason(v.reason()),
        Refused::State(e) => e,
    }
}

pub struct ProofReader<'a> {
    index: &'a Index,
    blocks: std::sync::Mutex<Vec<(u64, Vec<Hash>)>>,
}

/// How many blocks a [`ProofReader`] keeps.
const READER_BLOCKS: usize = 4;

impl ProofReader<'_> {
    /// The index's copy of entry `index`, checked against its leaf hash;
    /// `None` when the copy is damaged (the index is marked for a rebuild;
    /// the caller reads storage instead).
    ///
    /// # Errors
    /// Internal when the entry is not applied or the files are unreadable.
    pub fn entry(&self, index: u64) -> Result<Option<bytes::Bytes>> {
        self.check_copy(index, self.index.files.entry(index)?)
    }

    /// As [`Self::entry`], for an entry whose place is known.
    ///
    /// # Errors
    /// As [`Self::entry`].
    pub fn entry_at(&self, at: EntryAt) -> Result<Option<bytes::Bytes>> {
        self.check_copy(
            at.index,
            self.index.files.entry_at(at.offset, at.len.into())?,
        )
    }

    fn check_copy(&self, index: u64, copy: Vec<u8>) -> Result<Option<bytes::Bytes>> {
        Ok(self.verify(index, &copy)?.map(|_| bytes::Bytes::from(copy)))
    }

    /// The leaf hash of entry `index` when `copy` matches it; `None` when
    /// the copy is damaged, which marks the index for a rebuild.
    fn verify(&self, index: u64, copy: &[u8]) -> Result<Option<Hash>> {
        let leaf = self.node(0, index)?;
        if merkle::leaf_hash(copy) == leaf {
            return Ok(Some(leaf));
        }
        self.index.mark_damaged(index);
        Ok(None)
    }
}

impl NodeSource for ProofReader<'_> {
    type Error = Error;

    fn memo(&self, start: u64, end: u64) -> Option<Hash> {
        self.index.memo(start, end)
    }

    fn remember(&self, start: u64, end: u64, hash: Hash) {
        self.index.remember(start, end, hash);
    }

    fn node(&self, level: u8, n: u64) -> Result<Hash> {
        let height = files::MEMORY_FROM;
        if level >= height {
            return self.index.node(level, n);
        }
        let block = n >> (height - level);
        if !self.index.complete(height, block)? {
            return self.index.node(level, n);
        }
        let first = files::stored_hash_index(0, block << height);
        let at = usize::try_from(files::stored_hash_index(level, n) - first)
            .map_err(|_| Error::internal("index too large"))?;
        let mut blocks = self
            .blocks
            .lock()
            .map_err(|_| Error::internal("index reader lock"))?;
        let slot = match blocks.iter().position(|(b, _)| *b == block) {
            Some(slot) => slot,
            None => {
                if blocks.len() >= READER_BLOCKS {
                    blocks.remove(0);
                }
                blocks.push((block, self.index.files.block(block)?));
                blocks.len() - 1
            }
        };
        blocks[slot]
            .1
            .get(at)
            .copied()
            .ok_or_else(|| Error::internal(format!("index lacks Merkle node {level}/{n}")))
    }
}

impl NodeSource for Index {
    type Error = Error;

    fn memo(&self, start: u64, end: u64) -> Option<Hash> {
        self.memo.lock().ok()?.get(&(start, end)).copied()
    }

    fn remember(&self, start: u64, end: u64, hash: Hash) {
        if let Ok(mut memo) = self.memo.lock() {
            if memo.len() >= MEMO_LIMIT {
                memo.clear();
            }
            memo.insert((start, end), hash);
        }
    }

    fn node(&self, level: u8, index: u64) -> Result<Hash> {
        Index::node(self, level, index)
    }
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
