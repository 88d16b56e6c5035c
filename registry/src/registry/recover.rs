//! Opening a registry: the data folder locked, the index opened (or
//! rebuilt from the log), caught up, and checked against the log's objects
//! and every signed checkpoint stored with it, before anything is signed
//! or served.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use crate::blobs::Blobs;
use crate::committer::{self, Target as _};
use crate::error::{Error, Kind, Result};
use crate::index::Index;
use crate::log::Log;
use crate::merkle::{self};

use stackpin_core::state::Rules;

use super::checkpoint::{Found, Stored, find_checkpoints, history_checkpoint, store_checkpoints};
use super::{Options, Registry, Shared};
use stackpin_core::error::reason;
use stackpin_core::layout;

/// Where the embedded default keeps things inside its data folder.
pub fn index_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("index")
}

/// Opens (or creates) the sled index in `dir`; an unreadable index is
/// deleted and rebuilt from the log, which is the source of truth.
///
/// # Errors
/// Internal when even a fresh index cannot be created.
pub fn open_index(dir: &std::path::Path) -> Result<Index> {
    match Index::open(dir) {
        Ok(index) => Ok(index),
        Err(err) => {
            tracing::warn!(
                index = %dir.display(),
                error = %err,
                "the index cannot be used (damaged, short, or of another layout version); deleting it and rebuilding it from the log"
            );
            fresh_index(dir)
        }
    }
}

/// Deletes the index folder `dir`, without opening it first (an index
/// too damaged to open must not stop its own rebuild), and creates an
/// empty index in its place.
///
/// # Errors
/// Internal when the folder cannot be removed or a fresh index created.
fn fresh_index(dir: &std::path::Path) -> Result<Index> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::internal(format!(
                "removing index {}: {e}",
                dir.display()
            )));
        }
    }
    Index::open(dir)
}

/// Checks that the log objects in storage are exactly the ones the index
/// applied: none missing (a gap), none of a different size (truncated or
/// rewritten), nothing after the end. This reads only the listing, not the
/// objects, so it is cheap enough for every start.
///
/// # Errors
/// DataLoss naming the first object that does not match.
async fn verify_objects(log: &Log, index: &Index) -> Result<()> {
    let stored = log.objects().await?;
    let applied = index.objects()?;
    let hint = "restore log/entries from a backup of the storage before starting";
    let mut stored_iter = stored.iter().peekable();
    for (start, count, size) in &applied {
        match stored_iter.next() {
            Some((s, actual)) if s == start => {
                if actual != size {
                    return Err(Error::new(
                        Kind::DataLoss,
                        format!(
                            "log object {start} (entries {start}..{}) is {actual} bytes in storage but \
                             was {size} bytes when applied: it was truncated or altered; {hint}",
                            start + count
                        ),
                    ));
                }
            }
            Some((s, _)) if s > start => {
                return Err(Error::new(
                    Kind::DataLoss,
                    format!(
                        "log object {start} (entries {start}..{}) is missing from storage; {hint}",
                        start + count
                    ),
                ));
            }
            Some((s, _)) => {
                return Err(Error::new(
                    Kind::DataLoss,
                    format!(
                        "log object {s} in storage does not start at an entry boundary; {hint}"
                    ),
                ));
            }
            None => {
                return Err(Error::new(
                    Kind::DataLoss,
                    format!(
                        "log object {start} (entries {start}..{}) is missing from storage; {hint}",
                        start + count
                    ),
                ));
            }
        }
    }
    // An object starting right at the end is a write that landed while
    // this was read (another replica, or the writer a read-only registry
    // follows): the next tail applies it.
    let size = index.applied()?;
    if let Some((s, _)) = stored_iter.next()
        && *s != size
    {
        return Err(Error::new(
            Kind::DataLoss,
            format!(
                "log entry {size} is missing but later log objects exist (the first at {s}): the \
                 log was truncated or an entry deleted; {hint}"
            ),
        ));
    }
    Ok(())
}

/// An exclusive lock on a data folder, held while a registry runs on it.
/// Two registries on one folder would each take the other's index for
/// damage; the second one stops instead, naming the first, having touched
/// nothing.
#[derive(Debug)]
pub(super) struct FolderLock {
    _file: std::fs::File,
}

/// The lock file in a data folder; it holds the holder's process id.
pub const LOCK_FILE: &str = "registry.lock";

/// Creates `data_dir` if need be and takes its exclusive lock.
///
/// # Errors
/// Precondition naming the process that holds it; Unavailable when the
/// folder or the lock file cannot be made.
pub(super) fn lock_folder(data_dir: &std::path::Path) -> Result<FolderLock> {
    use std::io::Write as _;
    std::fs::create_dir_all(data_dir).map_err(|e| {
        Error::new(
            Kind::Unavailable,
            format!("creating data folder {}: {e}", data_dir.display()),
        )
    })?;
    let path = data_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            Error::new(
                Kind::Unavailable,
                format!("opening the lock file {}: {e}", path.display()),
            )
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_owned()
            } else {
                format!("another registry ({holder})")
            };
            return Err(Error::precondition(format!(
                "the data folder {} is in use by {who}, which holds {}: stop it first, or give \
                 this registry a data folder of its own; nothing was changed",
                data_dir.display(),
                path.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(Error::new(
                Kind::Unavailable,
                format!("locking {}: {e}", path.display()),
            ));
        }
    }
    // Best effort: the lock is what excludes; the id only names the holder.
    let _ = file.set_len(0);
    let _ = writeln!(file, "pid {}", std::process::id());
    Ok(FolderLock { _file: file })
}

/// Whether a failed open may be the index's fault, so that a rebuild from
/// the log is the way on: an index error, an index found disagreeing, or a
/// rule an entry broke against the index's state (which a damaged index
/// could have made up).
fn blames_the_index(e: &Error) -> bool {
    e.kind() == Kind::Internal
        || e.reason() == reason::INDEX_DAMAGED
        || stackpin_core::state::is_rule(e.reason())
}

/// An index that disagrees with the log: rebuilt, never trusted.
fn index_damaged(why: String) -> Error {
    Error::new(
        Kind::Internal,
        format!("the index disagrees with the log: {why}"),
    )
    .with_reason(reason::INDEX_DAMAGED)
}

/// Checks the applied tree against the stored signed checkpoints before
/// anything is signed or served from it.
///
/// Every stored hash is tied to its children (one pass over the hash
/// file), the root at each stored checkpoint's size must be that
/// checkpoint's root, and the leaves of entries past the newest checkpoint
/// that the index held before this start (not just read from storage) are
/// compared with storage. `rebuilt` says the whole tree was just computed
/// from the entries in storage: then a disagreement is the log's, not the
/// index's.
///
/// # Errors
/// Internal with reason INDEX_DAMAGED when the index is at fault (the
/// caller rebuilds it); DataLoss when the log in storage contradicts a
/// signed checkpoint, or has entries and no checkpoint at all while
/// `accept_unsigned` is off.
async fn check_against_checkpoints(
    shared: &Shared,
    found: &Found,
    held_before: u64,
    accept_unsigned: bool,
) -> Result<Option<Stored>> {
    let index = &shared.index;
    let size = index.applied()?;
    let rebuilt = held_before == 0;
    let tree = index.clone();
    if let Some((level, n)) = crate::blocking::run(move || tree.check_tree()).await? {
        return Err(index_damaged(format!(
            "its stored Merkle node {level}/{n} is not the hash of its children"
        )));
    }
    // The anchors: the newest history copy and the latest. With every
    // stored hash tied to its children, a root that matches the newest
    // signature vouches for every smaller tree too; older copies are read
    // only to tell which entries an edit touched.
    let verifier = shared.signer.verifier();
    let mut anchors = Vec::new();
    if let Some(newest) = found.history.last() {
        anchors.push(history_checkpoint(&shared.store, &verifier, *newest).await?);
    }
    anchors.extend(found.latest.clone());
    anchors.sort_by_key(|s| s.checkpoint.size);
    // The empty tree's checkpoint signs nothing. An index that holds the
    // entries does not vouch for them either: it may have been built from
    // the same storage by an earlier start that stopped.
    let signed_any = anchors.iter().any(|s| s.checkpoint.size > 0);
    if size > 0 && !signed_any && !accept_unsigned {
        return Err(Error::new(
            Kind::DataLoss,
            format!(
                "the log has {size} entries but no signed checkpoint (neither {} nor any in {}/): \
                 nothing proves these entries are the ones this registry signed. If the log is \
                 known to be intact (audit it against a checkpoint a client saved), sign it again \
                 with `stackpin-registry recover --accept-unsigned`",
                layout::CHECKPOINT,
                layout::CHECKPOINTS
            ),
        )
        .with_reason(reason::UNSIGNED_LOG));
    }
    let mut agreed: Option<Stored> = None;
    for s in &anchors {
        let cp = &s.checkpoint;
        if cp.size > size {
            return Err(Error::new(
                Kind::DataLoss,
                format!(
                    "{} signs a log of {} entries, but storage holds {size}: log entries \
                     {size}..{} were deleted; restore log/entries from a backup",
                    s.key, cp.size, cp.size
                ),
            )
            .with_reason(reason::LOG_CONTRADICTS_CHECKPOINT));
        }
        if merkle::root(index, cp.size)? == cp.root {
            if cp.size > 0 {
                agreed = Some(s.clone());
            }
            continue;
        }
        if !rebuilt {
            return Err(index_damaged(format!(
                "its root at size {} is not the one {} signed",
                cp.size, s.key
            )));
        }
        return Err(contradiction(shared, &found.history, s).await);
    }
    let signed = agreed.as_ref().map_or(0, |a| a.checkpoint.size);
    // Leaves the index held before this start, past the newest signed
    // checkpoint: no signature covers them, so compare them with storage.
    if !rebuilt && signed < held_before {
        for (start, count, _) in index.objects()? {
            if start + count <= signed || start >= held_before {
                continue;
            }
            let Some(object) = shared.log.read(start).await? else {
                return Err(Error::new(
                    Kind::DataLoss,
                    format!("log object {start} is missing from storage"),
                ));
            };
            for (at, bytes) in (start..).zip(Log::split(&object)) {
                if at < signed
                    || at >= held_before
                    || merkle::leaf_hash(&bytes) == index.node(0, at)?
                {
                    continue;
                }
                // The index's own copy tells which side changed.
                if index.copy_agrees(at)? {
                    return Err(Error::new(
                        Kind::DataLoss,
                        format!(
                            "log entry {at} in storage changed after the registry applied it (the \
                             index still holds the entry as written, and no stored checkpoint \
                             covers it yet): restore log/entries from a backup"
                        ),
                    )
                    .with_reason(reason::LOG_CONTRADICTS_CHECKPOINT));
                }
                return Err(index_damaged(format!(
                    "its leaf hash of log entry {at} is not the hash of the entry"
                )));
            }
        }
    }
    Ok(agreed)
}

/// The error for a rebuilt tree that disagrees with `bad`: the history is
/// searched (agreement holds up to some size and fails after) for the
/// last copy that agrees, which brackets the entries an edit touched.
async fn contradiction(shared: &Shared, history: &[u64], bad: &Stored) -> Error {
    let verifier = shared.signer.verifier();
    let index = &shared.index;
    let mut below: Vec<u64> = history
        .iter()
        .copied()
        .filter(|s| *s > 0 && *s < bad.checkpoint.size)
        .collect();
    below.dedup();
    // Binary search for the boundary: `lo` agrees (or is none), `hi`
    // (and `bad`) does not.
    let (mut lo, mut hi) = (0usize, below.len());
    let mut first_bad = bad.clone();
    let mut last_good: Option<Stored> = None;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let stored = match history_checkpoint(&shared.store, &verifier, below[mid]).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        match merkle::root(index, stored.checkpoint.size) {
            Ok(root) if root == stored.checkpoint.root => {
                last_good = Some(stored);
                lo = mid + 1;
            }
            Ok(_) => {
                first_bad = stored;
                hi = mid;
            }
            Err(e) => return e,
        }
    }
    let from = last_good.as_ref().map_or(0, |g| g.checkpoint.size);
    let to = first_bad.checkpoint.size;
    let which = if from + 1 == to {
        format!("log entry {from}")
    } else {
        format!("one of log entries {from}..{to}")
    };
    let since = last_good.map_or(String::new(), |g| {
        format!(" (the entries before agree with {})", g.key)
    });
    let cp = &first_bad.checkpoint;
    Error::new(
        Kind::DataLoss,
        format!(
            "{which} in storage is not what the log key signed: {} (size {}, root {}) does not \
             match the tree of the entries in storage{since}. An entry was altered or replaced \
             after it was signed; the registry will not sign or serve this log. Restore \
             log/entries from a backup and compare with `stackpin audit --data-dir`",
            first_bad.key, cp.size, cp.root
        ),
    )
    .with_reason(reason::LOG_CONTRADICTS_CHECKPOINT)
}

impl Registry {
    /// Opens a registry over `index` with `options`, catching the index up
    /// with the log and checking the tree against every signed checkpoint
    /// stored with the log, and starts its committer task (tailing every
    /// `poll`). An empty `index` is built from the entries in storage.
    ///
    /// # Errors
    /// Unavailable when storage is unreachable; DataLoss when the log is
    /// damaged (an entry unreadable, a gap before later entries, entries
    /// that contradict a signed checkpoint, or a stored checkpoint that
    /// does not verify); Internal with reason INDEX_DAMAGED when the index
    /// disagrees with the log.
    pub async fn open(index: Index, options: Options) -> Result<Self> {
        let Options {
            store,
            trusted,
            log_key: signer,
            limits,
            clock,
            accept_unsigned,
            staging_dir,
            witnesses,
            standbys,
        } = options;
        let (checkpoint_tx, checkpoint_rx) = watch::channel(None);
        let limits_budget = limits.max_inflight_bytes;
        let shared = Arc::new(Shared {
            blobs: Blobs::new(store.clone()),
            log: Log::new(store.clone()),
            index,
            rules: RwLock::new(Arc::new(Rules {
                configured: trusted,
                clock_skew: limits.clock_skew,
                // Which types count as a publish is checked when one
                // arrives (publish.rs); the log is replayed by what it
                // recorded.
                predicate_types: None,
            })),
            clock,
            limits,
            signer,
            checkpoint: RwLock::new(None),
            checkpoint_tx,
            stored: Arc::new(watch::channel(None).0),
            hurry: Arc::new(tokio::sync::Notify::new()),
            store_failures: Arc::default(),
            store: store.clone(),
            contradicted: std::sync::OnceLock::new(),
            checked: std::sync::atomic::AtomicU64::new(0),
            budget: crate::budget::Budget::new(limits_budget),
            inflight: std::sync::Mutex::default(),
            staging_dir,
            cosignatures: std::sync::Mutex::default(),
            witnesses: std::sync::Mutex::default(),
            start_check: std::sync::OnceLock::new(),
            tile_cache: super::tiles::TileCache::default(),
            store_lock: super::checkpoint::StoreLock::default(),
            epoch: std::sync::atomic::AtomicU64::new(1),
            superseded: std::sync::OnceLock::new(),
        });
        let verifier = shared.signer.verifier();
        // Read before catching up: a checkpoint another replica stores
        // meanwhile is newer than what this start checks, not a mismatch.
        let found = find_checkpoints(&store, &verifier, None).await?;
        let from = shared.index.applied()?;
        let started = Instant::now();
        // Nothing is served yet: the keys that land at random places in the
        // index are written at the end, in key order.
        shared.index.defer_side_keys();
        let caught = committer::catch_up(&shared.log, &shared.index, &shared.rules()).await;
        let index = shared.index.clone();
        let written = crate::blocking::on_index_writer(move || index.write_side_keys()).await;
        let applied = caught?;
        written?;
        if applied > 0 {
            tracing::info!(
                from,
                entries = applied,
                seconds = started.elapsed().as_secs_f64(),
                "index caught up with the log"
            );
        }
        verify_objects(&shared.log, &shared.index).await?;
        let anchor = check_against_checkpoints(&shared, &found, from, accept_unsigned).await?;
        let entries = shared.index.applied()?;
        shared
            .checked
            .store(entries, std::sync::atomic::Ordering::Release);
        // The epoch it signs in: its checkpoint's, or a later one a
        // promotion past it began; with no checkpoint (a log accepted
        // unsigned), the last promotion anywhere in it.
        let epoch = match &anchor {
            Some(a) => {
                crate::promote::epoch_past(&shared.log, a.checkpoint.epoch(), a.checkpoint.size)
                    .await?
            }
            None => crate::promote::epoch_past(&shared.log, 1, 0).await?,
        };
        shared
            .epoch
            .store(epoch, std::sync::atomic::Ordering::Release);
        if found.history.is_empty() && entries > 0 {
            tracing::warn!(
                history = layout::CHECKPOINTS,
                "the log has no checkpoint history (a registry before this version kept only \
                 log/checkpoint, or the history was deleted): the log is checked against \
                 log/checkpoint alone; from now on every stored checkpoint is kept in the history"
            );
        }
        let _ = shared.start_check.set(super::StartCheck {
            at: shared.clock.now(),
            entries,
            checkpoint_size: anchor.as_ref().map(|a| a.checkpoint.size),
        });
        if let Some(anchor) = anchor {
            tracing::info!(
                checkpoint = %anchor.key,
                size = anchor.checkpoint.size,
                history = found.history.len(),
                entries,
                "the log agrees with its signed checkpoints"
            );
        }
        if shared.signer.is_read_only() {
            // Serves the checkpoints stored with the log, checked against
            // the tree it rebuilt; writes nothing, signs nothing, sends
            // nothing (the writer does), and follows the log as it grows.
            shared.adopt_stored().await?;
            if shared.stored.borrow().is_none() {
                return Err(Error::new(
                    Kind::Unavailable,
                    "the storage holds no signed checkpoint to serve (read_only serves a log \
                     another registry writes and signs)",
                ));
            }
            let (commits, rx) = mpsc::channel(1);
            tokio::spawn(committer::run(
                shared.clone(),
                rx,
                shared.limits.poll_interval,
                shared.limits.max_batch,
            ));
            return Ok(Self {
                shared,
                commits,
                folder: None,
            });
        }
        // The checkpoint of the tree as opened is stored before anything
        // is served: every checkpoint that leaves the registry is stored.
        let opened = shared.checkpoint()?;
        super::put_checkpoint(&store, &verifier, &opened).await?;
        // Both ask whether the log was promoted elsewhere, at once: a start
        // waits for the slower of them, 3 s at most.
        tokio::join!(
            super::witnesses::probe(&shared, &witnesses, &opened),
            super::standby::probe(&shared, &standbys),
        );
        if !standbys.is_empty() {
            tokio::spawn(super::standby::watch(Arc::downgrade(&shared), standbys));
        }
        shared.stored.send_replace(Some(opened));
        tokio::spawn(super::tiles::write_tiles(
            Arc::downgrade(&shared),
            shared.stored.subscribe(),
        ));
        super::witnesses::replace(&shared, witnesses);
        tokio::spawn(store_checkpoints(
            store,
            verifier,
            shared.store_lock.clone(),
            checkpoint_rx,
            shared.stored.clone(),
            shared.hurry.clone(),
            shared.store_failures.clone(),
        ));
        shared.committed();
        let (commits, rx) = mpsc::channel(4 * committer::MAX_BATCH);
        tokio::spawn(committer::run(
            shared.clone(),
            rx,
            shared.limits.poll_interval,
            shared.limits.max_batch,
        ));
        Ok(Self {
            shared,
            commits,
            folder: None,
        })
    }

    /// Opens a registry with its index in `data_dir`, which it locks for
    /// as long as it runs. An index that cannot be opened, or that
    /// disagrees with the log, is deleted and rebuilt from the log; the
    /// rebuilt tree must then agree with the stored signed checkpoints.
    ///
    /// # Errors
    /// Precondition when another process holds the folder; otherwise as
    /// [`Self::open`].
    pub async fn open_at(data_dir: &std::path::Path, mut options: Options) -> Result<Self> {
        let folder = lock_folder(data_dir)?;
        options.staging_dir = Some(sweep_staging(data_dir));
        let dir = index_dir(data_dir);
        let index = open_index(&dir)?;
        let had_state = index.applied()? > 0;
        let mut registry = match Self::open(index, options.clone()).await {
            Err(e) if had_state && blames_the_index(&e) => {
                // The index, or state it derived, disagrees with the log: a
                // fresh index built from the log alone tells which is at
                // fault. Damage the log itself is blamed for (entries that
                // contradict a signature, a checkpoint that does not verify)
                // stops here, with the index kept as evidence.
                tracing::warn!(
                    index = %dir.display(),
                    error = %e,
                    "opening failed with the existing index; deleting it and rebuilding it from \
                     the log"
                );
                let index = fresh_index(&dir)?;
                Self::open(index, options).await?
            }
            other => other?,
        };
        registry.folder = Some(folder);
        Ok(registry)
    }

    /// Opens a registry on `data_dir` with an index rebuilt from the log
    /// whatever state the old one is in (`stackpin-registry recover`).
    ///
    /// # Errors
    /// As [`Self::open_at`].
    pub async fn recover_at(data_dir: &std::path::Path, mut options: Options) -> Result<Self> {
        let folder = lock_folder(data_dir)?;
        options.staging_dir = Some(sweep_staging(data_dir));
        let index = fresh_index(&index_dir(data_dir))?;
        let mut registry = Self::open(index, options).await?;
        registry.folder = Some(folder);
        Ok(registry)
    }
}

/// The data folder's staging folder, emptied of what a killed process left
/// there (the caller holds the folder's lock, so no publish is in flight).
fn sweep_staging(data_dir: &std::path::Path) -> std::path::PathBuf {
    let dir = crate::staging::dir_in(data_dir);
    let removed = crate::staging::sweep(&dir);
    if removed > 0 {
        tracing::info!(removed, "removed staging files an earlier process left");
    }
    dir
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_index_too_damaged_to_open_is_replaced_without_opening_it() {
        let dir = tempfile::TempDir::new().unwrap();
        let index_dir = super::index_dir(dir.path());
        drop(super::Index::open(&index_dir).unwrap());
        // What sled cannot open: its files replaced by garbage.
        for entry in std::fs::read_dir(&index_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::write(&path, b"not sled").unwrap();
            }
        }
        std::fs::write(index_dir.join("damaged"), b"3").unwrap();
        assert!(super::Index::open(&index_dir).is_err());
        let fresh = super::fresh_index(&index_dir).unwrap();
        assert_eq!(fresh.applied().unwrap(), 0);
    }
}
