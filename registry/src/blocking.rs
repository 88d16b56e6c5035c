//! Work that can take more than a few microseconds (sled batches, pread and
//! pwrite of the index files, fsync, hashing a whole artifact) runs on
//! tokio's blocking pool, so that it never stalls the runtime threads that
//! serve every other request.

use crate::error::{Error, Result};

/// Runs `work` on the blocking pool and waits for it.
///
/// # Errors
/// What `work` returns; Internal when it panicked.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::internal(format!("blocking work failed: {e}")))?
}
