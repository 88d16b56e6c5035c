//! Checkpoints: signed after every commit for the tree the index holds,
//! cached for readers, and stored at `log/checkpoint` off the request path.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutMode, PutOptions};
use tokio::sync::watch;

use super::{CHECKPOINT_PATH, Shared, SignedCheckpoint};
use crate::error::Result;
use crate::merkle::{self};
use crate::note::Checkpoint;

impl Shared {
    /// A signed checkpoint of everything applied so far.
    ///
    /// # Errors
    /// Internal when the index fails.
    pub(super) fn checkpoint(&self) -> Result<SignedCheckpoint> {
        let size = self.index.applied()?;
        if let Some(cp) = self.cached_checkpoint()
            && cp.size >= size
        {
            return Ok(cp);
        }
        let root = merkle::root(&self.index, size)?;
        let body = Checkpoint {
            origin: self.signer.name().to_owned(),
            size,
            root,
        }
        .body();
        let cp = SignedCheckpoint {
            size,
            root,
            note: self.signer.sign(&body).into(),
        };
        let mut cache = self
            .checkpoint
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.as_ref().is_none_or(|c| c.size < size) {
            *cache = Some(cp.clone());
        }
        Ok(cp)
    }

    fn cached_checkpoint(&self) -> Option<SignedCheckpoint> {
        self.checkpoint
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

pub(super) async fn put_checkpoint(
    store: &Arc<dyn ObjectStore>,
    cp: &SignedCheckpoint,
) -> Result<()> {
    let opts = PutOptions {
        mode: PutMode::Overwrite,
        ..PutOptions::default()
    };
    let bytes = Bytes::copy_from_slice(cp.note.as_bytes());
    store
        .put_opts(&StorePath::from(CHECKPOINT_PATH), bytes.into(), opts)
        .await?;
    Ok(())
}

/// How often `log/checkpoint` is rewritten at most while the log grows.
///
/// Each rewrite is a write of its own (a file written and fsynced, its
/// folder fsynced, the replaced file's inode freed; on S3 a PUT). Done
/// after every commit it added two fsyncs to each publish, and on ext4
/// without a journal the freed inodes piled up and slowed every later file
/// creation (see BENCHMARKS.md). The stored checkpoint is a convenience
/// for offline audits and start-up checks; the log itself is the record,
/// so trailing it by up to this interval loses nothing. A graceful stop
/// stores the newest one.
pub const STORE_CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Stores new checkpoints at `log/checkpoint`: the first after a quiet
/// spell at once, then at most one per [`STORE_CHECKPOINT_EVERY`], always the
/// newest. Ends when the registry is dropped.
pub(super) async fn store_checkpoints(
    store: Arc<dyn ObjectStore>,
    mut rx: watch::Receiver<Option<SignedCheckpoint>>,
) {
    let mut stored = 0;
    while rx.changed().await.is_ok() {
        let Some(cp) = rx.borrow_and_update().clone() else {
            continue;
        };
        if cp.size <= stored && stored != 0 {
            continue;
        }
        match put_checkpoint(&store, &cp).await {
            Ok(()) => stored = cp.size,
            Err(e) => {
                tracing::warn!(size = cp.size, error = %e, "storing the checkpoint failed; it will be retried with the next one")
            }
        }
        tokio::time::sleep(STORE_CHECKPOINT_EVERY).await;
    }
}
