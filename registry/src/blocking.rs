//! Work that can take more than a few microseconds (sled batches, pread and
//! pwrite of the index files, fsync, hashing a whole artifact) runs off the
//! runtime threads, so that it never stalls the ones serving every other
//! request.
//!
//! What runs here: every web page's reads (`web::off`), the gRPC read
//! handlers' index reads (`RegistryService::read`), building and checking
//! a batch in the committer (index reads and up to `MAX_BATCH` Ed25519
//! checks), parsing and comparing two artifacts for a diff, and the
//! witness's fsyncs. Still on the runtime: resolve with proofs (its index
//! reads are interleaved with async storage reads in `registry/prove.rs`)
//! and the in-memory checkpoint; moving them is not done yet, and no
//! measurement says they may stay.
//!
//! Index writes go to one dedicated thread (the committer serializes them
//! anyway): the same thread every time keeps sled's pages and the
//! allocator's arena hot, which tokio's blocking pool, handing each call
//! to whichever thread is idle, does not (a rebuild through the pool took
//! about 1.4 times as long). Other long work uses the blocking pool.

use std::sync::OnceLock;
use std::sync::mpsc;

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

type Job = Box<dyn FnOnce() + Send>;

/// The index writer thread's queue, started at first use.
fn writer() -> Option<&'static mpsc::Sender<Job>> {
    static WRITER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    WRITER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("index-writer".into())
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Runs `work` (an index write) on the index writer thread and waits for
/// it.
///
/// # Errors
/// What `work` returns; Internal when the thread cannot be started or the
/// work panicked.
pub async fn on_index_writer<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        let _ = tx.send(result);
    });
    writer()
        .ok_or_else(|| Error::internal("the index writer thread could not be started"))?
        .send(job)
        .map_err(|_| Error::internal("the index writer thread has stopped"))?;
    match rx.await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(Error::internal("an index write panicked")),
        Err(_) => Err(Error::internal("the index writer dropped a write")),
    }
}
