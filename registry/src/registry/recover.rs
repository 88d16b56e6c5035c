//! Opening a registry: the index opened (or rebuilt from the log), caught
//! up, and checked against the log's objects and signed checkpoint.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use object_store::ObjectStore;
use object_store::path::Path as StorePath;
use tokio::sync::{mpsc, watch};

use crate::blobs::Blobs;
use crate::committer::{self, Target as _};
use crate::error::{Error, Kind, Result};
use crate::index::Index;
use crate::log::Log;
use crate::merkle::{self};
use crate::note::{Checkpoint, NoteSigner};

use stackpin_core::state::Rules;

use super::checkpoint::store_checkpoints;
use super::{CHECKPOINT_PATH, Options, Registry, Shared};

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
    if let Some((s, _)) = stored_iter.next() {
        let size = index.applied()?;
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

/// Whether the index's tree matches the stored signed checkpoint (an index
/// damaged in a way sled does not notice computes another root). A missing
/// or unreadable checkpoint, or one newer than the index, proves nothing
/// either way.
async fn index_agrees_with_checkpoint(
    store: &Arc<dyn ObjectStore>,
    index: &Index,
    signer: &NoteSigner,
) -> bool {
    use object_store::ObjectStoreExt as _;
    let Ok(applied) = index.applied() else {
        return false;
    };
    if index.objects().is_err() {
        return false;
    }
    let note = match store.get(&StorePath::from(CHECKPOINT_PATH)).await {
        Ok(r) => match r.bytes().await {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(_) => return true,
        },
        Err(_) => return true,
    };
    let Ok(cp) = Checkpoint::open(&note, &signer.verifier()) else {
        return true;
    };
    if cp.size > applied {
        return true;
    }
    matches!(merkle::root(index, cp.size), Ok(root) if root == cp.root)
}

impl Registry {
    /// Opens a registry over `index` with `options`, catching the index up
    /// with the log, and starts its committer task (tailing every `poll`).
    ///
    /// # Errors
    /// Unavailable when storage is unreachable; DataLoss when the log is
    /// damaged (an entry unreadable, or a gap before later entries).
    pub async fn open(index: Index, options: Options) -> Result<Self> {
        let Options {
            store,
            trusted,
            signer,
            limits,
            clock,
        } = options;
        let (checkpoint_tx, checkpoint_rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            blobs: Blobs::new(store.clone()),
            log: Log::new(store.clone()),
            index,
            rules: Rules {
                configured: trusted,
                clock_skew: limits.clock_skew,
            },
            clock,
            limits,
            signer,
            checkpoint: RwLock::new(None),
            checkpoint_tx,
            store: store.clone(),
        });
        let from = shared.index.applied()?;
        let started = Instant::now();
        let applied = committer::catch_up(&shared.log, &shared.index, &shared.rules).await?;
        if applied > 0 {
            tracing::info!(
                from,
                entries = applied,
                seconds = started.elapsed().as_secs_f64(),
                "index caught up with the log"
            );
        }
        verify_objects(&shared.log, &shared.index).await?;
        tokio::spawn(store_checkpoints(store, checkpoint_rx));
        shared.committed();
        let (commits, rx) = mpsc::channel(4 * committer::MAX_BATCH);
        tokio::spawn(committer::run(
            shared.clone(),
            rx,
            shared.limits.poll_interval,
            shared.limits.max_batch,
        ));
        Ok(Self { shared, commits })
    }

    /// Opens a registry with its index in `data_dir` (rebuilt from the log
    /// when it is damaged or disagrees with the stored checkpoint).
    ///
    /// # Errors
    /// As [`Self::open`].
    pub async fn open_at(data_dir: &std::path::Path, options: Options) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            Error::new(
                Kind::Unavailable,
                format!("creating data folder {}: {e}", data_dir.display()),
            )
        })?;
        let dir = index_dir(data_dir);
        let mut index = open_index(&dir)?;
        if !index_agrees_with_checkpoint(&options.store, &index, &options.signer).await {
            tracing::warn!(
                index = %dir.display(),
                "the index disagrees with the log's signed checkpoint; deleting it and \
                 rebuilding it from the log"
            );
            drop(index);
            index = fresh_index(&dir)?;
        }
        let had_state = index.applied()? > 0;
        match Self::open(index, options.clone()).await {
            Err(e) if had_state && matches!(e.kind(), Kind::DataLoss | Kind::Internal) => {
                // Either the log or the index is damaged: a fresh index
                // built from the log alone tells which.
                tracing::warn!(
                    error = %e,
                    "opening failed with the existing index; rebuilding the index from the log"
                );
                let index = fresh_index(&dir)?;
                Self::open(index, options).await
            }
            other => other,
        }
    }
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
