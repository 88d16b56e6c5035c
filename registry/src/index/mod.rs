//! The sled index: lookups derived from the log, rebuildable at any time.
//!
//! Object storage is the source of truth; this index only makes reads fast.
//! The lookups live in one sled tree so that applying a log object is one
//! atomic batch, including the count of entries applied:
//!
//! ```text
//! (the main tree)
//! m/applied                           u64 BE: entries 0..applied are applied
//! r/<release id>                      EntryAt of the publish, then the 32-byte digest it binds
//! d/<digest hex>/<release id>         (empty): digest -> release ids
//! e/<env>                             EnvHead (JSON): latest pin of the env
//! p/<env>/<seq u64 BE>                EntryAt of the pin (its entry copy holds the rest)
//! t/<env>/<activated_at key><seq BE>  Slot: where the pin, its release's publish and its neighbour pins are; time-ordered, for resolve
//! k/<key id>                          KeyRecord (JSON): publisher key lifecycle
//! q/<env>/<kind><position BE><seq BE>  (empty): pins by LSN (l) or TXID (x)
//! o/<first index u64 BE>              u64 BE entry count, u64 BE byte size of that log object
//! s/<env>/<index u64 BE>              EntryAt of a snapshot, the live pin's seq (u64 BE), its db_time and recorded_at (i64 BE micros)
//! v/<env>/<index u64 BE>              EntryAt of a drill, passed (1 byte), recorded_at (i64 BE micros), restore millis (u64 BE, MAX: none)
//! m/format                            u64 BE: the layout version, [`FORMAT`]
//! (the side tree, written beside the main one: see `apply::side_keys`)
//! i/<SHA-256 of request id, 8 bytes><index BE>  (empty): the entry that request wrote
//! a/<digest's first 8 bytes><index BE> (empty): artifact -> the log indexes of its pins
//! m/keyed                             u64 BE: the side keys of entries 0..keyed are written
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

mod apply;
mod codec;
mod files;
mod lookup;
mod tree;

pub use crate::records::{ArtifactRecord, PinRecord};
pub use apply::refused_in_log;
use codec::u64_at;
pub use codec::{EntryAt, Slot};
pub use lookup::{DrillRow, SnapshotRow};
pub use tree::ProofReader;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use sled::Tree;

use crate::error::{Error, Result};
use crate::merkle::Hash;

pub use stackpin_core::state::{EnvHead, KeyRecord};

const APPLIED: &[u8] = b"m/applied";
const FORMAT_KEY: &[u8] = b"m/format";
/// In the side tree, u64 BE: the side keys of entries `0..keyed` are
/// written (see [`apply::side_keys`]).
const KEYED: &[u8] = b"m/keyed";
/// The index layout version; an index of another version is rebuilt.
/// 2: Merkle hashes and entry copies in flat files; 3: pins read from
/// their entry copies; 4: artifacts too; 5: with the copies' places;
/// 6: time keys name the pin and publish entries; 7: with the copies'
/// lengths; 8: release keys carry the bound digest; 9: request ids;
/// 10: snapshots and drills, and heads count positioned pins; 11: the
/// pins of each artifact; 12: when each snapshot was recorded; 13: short
/// artifact-pin and request keys, in a side tree.
pub const FORMAT: u64 = 13;

/// A file in the index folder that says the index was found damaged while
/// serving; the next open rebuilds it.
const DAMAGED: &str = "damaged";

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
    /// The `i/` and `a/` keys (see [`apply::side_keys`]), in a tree of
    /// their own.
    side: Tree,
    /// Whether side keys are held back (a long catch-up): they are then
    /// written all at once, in key order, by [`Self::write_side_keys`].
    defer_side: Arc<std::sync::atomic::AtomicBool>,
}

/// How many range hashes [`Index`] remembers before starting over (a tree
/// size needs about log2(size) of them).
const MEMO_LIMIT: usize = 4096;

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
        let side = db.open_tree("side")?;
        let keyed = side.get(KEYED)?.map(|v| u64_at(&v, 0)).transpose()?;
        let index = Self {
            db,
            tree,
            files: Arc::new(files),
            applied: Arc::new(AtomicU64::new(applied)),
            dir: None,
            memo: Arc::default(),
            side,
            defer_side: Arc::default(),
        };
        // A catch-up that held them back and stopped before writing them.
        if keyed.unwrap_or(0) < applied {
            index.write_side_keys()?;
        }
        Ok(index)
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

    /// How many entries are applied, from memory: it may trail
    /// [`Self::applied`] by the moment between a batch and its update.
    pub fn applied_now(&self) -> u64 {
        self.applied.load(std::sync::atomic::Ordering::Acquire)
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
}
