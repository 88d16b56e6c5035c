//! The log as C2SP tlog-tiles: tiles and entry bundles for the newest
//! checkpoint's tree, computed from the index for readers, and the full
//! ones written once into storage under `tile/` (see
//! `stackpin_core::layout::TILES`) by a task off the request path.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions};
use tokio::sync::watch;

use super::{Registry, Shared, SignedCheckpoint};
use crate::error::{Error, Result};
use stackpin_core::layout;
use stackpin_core::tiles::{self, Tile, WIDTH};

/// How many rows of 256 entries the writer stores between two updates of
/// `log/tiles-written`: a restart writes at most this many again.
const ROWS_PER_STEP: u64 = 16;

impl Registry {
    /// The tlog-tiles object at `path` (`tile/<L>/<N>[.p/<W>]` or
    /// `tile/entries/<N>[.p/<W>]`) of the newest checkpoint's tree; `None`
    /// for a path that is not a tile of it (misspelt, or beyond it).
    ///
    /// # Errors
    /// DataLoss when a stored entry changed; Unavailable when storage fails.
    pub async fn tile(&self, path: &str) -> Result<Option<Bytes>> {
        let Some(tile) = Tile::parse(path) else {
            return Ok(None);
        };
        let size = self.checkpoint()?.size;
        if !tile.within(size) {
            return Ok(None);
        }
        if let Some(bytes) = self.shared.tile_cache.get(&tile) {
            return Ok(Some(bytes));
        }
        let bytes = Bytes::from(self.shared.tile_bytes(&tile).await?);
        // A full tile never changes, nor does a partial one of a given
        // width: both are kept, within the cache's bound.
        self.shared.tile_cache.put(tile, bytes.clone());
        Ok(Some(bytes))
    }
}

/// Tiles computed for readers, so that a mirror or a crowd of clients
/// reading the same tiles costs one computation each (a bundle reads up to
/// 256 log objects). Bounded in bytes; when full it starts over, which is
/// as good as any eviction for tiles read in a sweep.
#[derive(Debug, Default)]
pub(super) struct TileCache {
    tiles: std::sync::Mutex<(usize, std::collections::HashMap<Tile, Bytes>)>,
}

/// The tile cache's bound.
const TILE_CACHE_BYTES: usize = 32 << 20;

impl TileCache {
    fn get(&self, tile: &Tile) -> Option<Bytes> {
        let held = self
            .tiles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.1.get(tile).cloned()
    }

    fn put(&self, tile: Tile, bytes: Bytes) {
        if bytes.len() > TILE_CACHE_BYTES / 8 {
            return;
        }
        let mut held = self
            .tiles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.0 + bytes.len() > TILE_CACHE_BYTES {
            *held = (0, std::collections::HashMap::new());
        }
        held.0 += bytes.len();
        if let Some(old) = held.1.insert(tile, bytes) {
            held.0 -= old.len();
        }
    }
}

impl Shared {
    /// The bytes of `tile`, which the applied tree must have.
    async fn tile_bytes(&self, tile: &Tile) -> Result<Vec<u8>> {
        match tile.level {
            Some(level) => tiles::tile_bytes(&self.index, level, tile.index, tile.width),
            None => {
                let (first, end) = (tile.first(), tile.first() + tile.width);
                let mut entries = Vec::with_capacity(tile.width as usize);
                while first + (entries.len() as u64) < end {
                    let next = first + entries.len() as u64;
                    entries.extend(self.entries_from(next).await?);
                }
                entries.truncate(tile.width as usize);
                Ok(tiles::bundle_bytes(&entries)?)
            }
        }
    }

    /// Stores every full tile of the tree of `size` entries beyond the
    /// first `from` (a multiple of 256), in steps that each end by
    /// recording how far the stored tiles reach; returns that.
    async fn store_tiles(&self, from: u64, size: u64) -> Result<u64> {
        let end = size / WIDTH * WIDTH;
        let mut done = from;
        let backfill = end - from > ROWS_PER_STEP * WIDTH;
        while done < end {
            let next = (done + ROWS_PER_STEP * WIDTH).min(end);
            for tile in tiles::full_tiles_between(done, next) {
                let bytes = self.tile_bytes(&tile).await?;
                put_once(&self.store, &tile.path(), bytes.into()).await?;
            }
            self.store
                .put(
                    &StorePath::from(layout::TILES_WRITTEN),
                    Bytes::from(next.to_string()).into(),
                )
                .await?;
            done = next;
            if backfill {
                tracing::info!(
                    entries = done,
                    of = end,
                    "storing the tiles of the log written before tiles were stored"
                );
            }
        }
        Ok(done)
    }
}

/// Writes `bytes` at `key` unless something is there already (a replica,
/// or an earlier run, wrote the same tile: tiles never change).
async fn put_once(store: &Arc<dyn ObjectStore>, key: &str, bytes: Bytes) -> Result<()> {
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store
        .put_opts(&StorePath::from(key), bytes.into(), create)
        .await
    {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// How many entries the stored full tiles cover, by `log/tiles-written`
/// (0 when there is none).
async fn tiles_written(store: &Arc<dyn ObjectStore>) -> Result<u64> {
    match store.get(&StorePath::from(layout::TILES_WRITTEN)).await {
        Ok(r) => {
            let bytes = r.bytes().await?;
            let text = String::from_utf8_lossy(&bytes);
            text.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| n % WIDTH == 0)
                .ok_or_else(|| {
                    Error::internal(format!(
                        "{} holds {text:?}, not a multiple of {WIDTH}: delete it, and the \
                         tiles are written again",
                        layout::TILES_WRITTEN
                    ))
                })
        }
        Err(object_store::Error::NotFound { .. }) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Stores the full tiles of each newly signed tree (they appear every 256
/// entries), first those a log from before tiles were stored lacks. Ends
/// when the registry is dropped.
pub(super) async fn write_tiles(
    shared: Weak<Shared>,
    mut rx: watch::Receiver<Option<SignedCheckpoint>>,
) {
    let mut written: Option<u64> = None;
    while rx.changed().await.is_ok() {
        let Some(size) = rx.borrow_and_update().as_ref().map(|cp| cp.size) else {
            continue;
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let from = match written {
            Some(w) => w,
            None => match tiles_written(&shared.store).await {
                Ok(w) => w.min(size / WIDTH * WIDTH),
                Err(e) => {
                    tracing::warn!(error = %e, "reading how far the stored tiles reach failed");
                    continue;
                }
            },
        };
        written = Some(from);
        if size / WIDTH * WIDTH <= from {
            continue;
        }
        match shared.store_tiles(from, size).await {
            Ok(done) => written = Some(done),
            Err(e) => {
                tracing::warn!(size, error = %e, "storing tiles failed; they will be retried with the next checkpoint")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_malformed_tiles_written_marker_is_an_error_naming_it() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        assert_eq!(tiles_written(&store).await.unwrap(), 0);
        for (text, ok) in [("512", Some(512)), ("300", None), ("x", None)] {
            store
                .put(
                    &StorePath::from(layout::TILES_WRITTEN),
                    Bytes::from(text).into(),
                )
                .await
                .unwrap();
            match (tiles_written(&store).await, ok) {
                (Ok(n), Some(want)) => assert_eq!(n, want),
                (Err(e), None) => assert!(e.message().contains(layout::TILES_WRITTEN), "{e}"),
                (got, want) => panic!("{text}: {got:?} vs {want:?}"),
            }
        }
    }
}
