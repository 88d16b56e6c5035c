//! Work that can take more than a few microseconds (sled batches, pread and
//! pwrite of the index files, fsync, hashing a whole artifact) runs off the
//! runtime threads, so that it never stalls the ones serving every other
//! request.
//!
//! What runs here: every web page's reads (`web::off`), the gRPC read
//! handlers' index reads (`RegistryService::read`), building and checking
//! a batch in the committer (index reads and up to `MAX_BATCH` Ed25519
//! checks), and the witness's fsyncs; parsing and comparing two artifacts
//! for a diff runs on a thread of its own ([`on_diff_thread`]). A resolve
//! with proofs (`registry/prove.rs`) runs its lookup and its proofs here
//! and only its storage reads and the wait for a stored checkpoint on the
//! runtime, where they await without blocking.
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

/// A thread of its own for one kind of work, started at first use.
fn dedicated(
    cell: &'static OnceLock<Option<mpsc::Sender<Job>>>,
    name: &str,
) -> Option<&'static mpsc::Sender<Job>> {
    cell.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
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

/// Runs `work` on `thread` and waits for it.
async fn run_on<T: Send + 'static>(
    thread: Option<&'static mpsc::Sender<Job>>,
    what: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        let _ = tx.send(result);
    });
    thread
        .ok_or_else(|| Error::internal(format!("the {what} thread could not be started")))?
        .send(job)
        .map_err(|_| Error::internal(format!("the {what} thread has stopped")))?;
    match rx.await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(Error::internal(format!("{what} work panicked"))),
        Err(_) => Err(Error::internal(format!(
            "the {what} thread dropped its work"
        ))),
    }
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
    static WRITER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    run_on(dedicated(&WRITER, "index-writer"), "index writer", work).await
}

/// Runs `work` (parsing and comparing two artifacts for the web view's
/// diff) on a thread of its own and waits for it. A parsed document is
/// many small allocations, which glibc keeps in the arena of the thread
/// that made them after they are freed: on the blocking pool, eight diffs
/// at once left eight arenas of up to 48 MiB each (449 MiB RSS for two
/// 1 MiB artifacts), on one thread they reuse one.
///
/// # Errors
/// As [`on_index_writer`].
pub async fn on_diff_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    static DIFFER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    run_on(dedicated(&DIFFER, "web-diff"), "diff", work).await
}
