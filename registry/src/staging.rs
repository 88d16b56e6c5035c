//! Where a publish's bytes wait while they arrive: a file of their own in
//! the data folder's `staging/`, hashed as it is written, so that a publish
//! holds only the chunk in hand however large its artifact.
//!
//! The file is deleted when the publish ends, whichever way it ends (stored,
//! refused, cut off or cancelled): it is a `tempfile::NamedTempFile`. What a
//! killed process leaves behind is swept at the next start
//! ([`sweep`]), under the folder's lock.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;

use crate::digest::Digest;
use crate::error::{Error, Kind, Result};
use stackpin_core::json::LongestString;

/// The staging folder inside a data folder.
pub fn dir_in(data_dir: &Path) -> PathBuf {
    data_dir.join("staging")
}

/// Removes every staging file a killed process left in `dir`; returns how
/// many went. Call it only while holding the folder's lock.
pub fn sweep(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Artifacts of at most this many bytes (one chunk) are staged in memory:
/// holding one costs no more than the chunk that carries it, and spares
/// the small publishes that are the usual case a file per request.
pub const IN_MEMORY: u64 = crate::defaults::CHUNK_BYTES as u64;

/// Where staged bytes go.
#[derive(Debug)]
enum Sink {
    Memory(Vec<u8>),
    File(NamedTempFile),
}

/// A staging file (or, for a small artifact, buffer) being written.
#[derive(Debug)]
pub struct Staging {
    /// Taken while a write runs on the blocking pool.
    state: Option<(Sink, Sha256, LongestString)>,
    len: u64,
}

/// A staging file whose bytes have all arrived.
#[derive(Debug)]
pub struct Staged {
    /// The bytes of a small artifact, held in memory.
    pub bytes: Option<Bytes>,
    /// The staging file of a larger one.
    pub file: Option<NamedTempFile>,
    pub digest: Digest,
    pub len: u64,
    /// The longest JSON string in the bytes: what checking them holds (for
    /// bytes in memory, their length, a bound that costs no scan).
    pub longest_string: u64,
}

fn io_error(what: &str, e: &std::io::Error) -> Error {
    if e.raw_os_error() == Some(28) {
        return Error::new(
            Kind::NoSpace,
            "the registry's data folder is full: the publish was not stored",
        );
    }
    // The path stays in the server's log; the client learns what failed.
    tracing::error!(error = %e, "staging file: {what}");
    Error::new(
        Kind::Unavailable,
        format!("the registry could not {what} its staging file"),
    )
}

impl Staging {
    /// A new, empty staging place for an artifact of `declared` bytes: a
    /// buffer up to [`IN_MEMORY`], else a file in `dir` (created if
    /// missing), or in the system's temporary folder.
    ///
    /// # Errors
    /// Unavailable or NoSpace when the file cannot be created.
    pub async fn create(dir: Option<PathBuf>, declared: u64) -> Result<Self> {
        if declared <= IN_MEMORY {
            let buffer = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
            return Ok(Self {
                state: Some((
                    Sink::Memory(buffer),
                    Sha256::new(),
                    LongestString::default(),
                )),
                len: 0,
            });
        }
        let file = crate::blocking::run(move || {
            let made = match &dir {
                Some(dir) => std::fs::create_dir_all(dir)
                    .and_then(|()| tempfile::Builder::new().prefix("publish-").tempfile_in(dir)),
                None => tempfile::Builder::new()
                    .prefix("stackpin-publish-")
                    .tempfile(),
            };
            made.map_err(|e| io_error("create", &e))
        })
        .await?;
        Ok(Self {
            state: Some((Sink::File(file), Sha256::new(), LongestString::default())),
            len: 0,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bytes are held in memory (a small artifact).
    pub fn in_memory(&self) -> bool {
        matches!(self.state, Some((Sink::Memory(_), _, _)))
    }

    /// Appends `chunk`: to a buffer at once (hashed at [`Self::finish`],
    /// in the same hand-off to the blocking pool as the JSON check), or to
    /// the file, hashed as it is written, on the blocking pool.
    ///
    /// # Errors
    /// Unavailable or NoSpace when the write fails.
    pub async fn push(&mut self, chunk: Bytes) -> Result<()> {
        if let Some((Sink::Memory(buffer), _, _)) = &mut self.state {
            buffer.extend_from_slice(&chunk);
            self.len += chunk.len() as u64;
            return Ok(());
        }
        let (mut file, mut hasher, mut strings) = self
            .state
            .take()
            .ok_or_else(|| Error::internal("a staging file was used after a failed write"))?;
        let n = chunk.len() as u64;
        let state = crate::blocking::run(move || {
            hasher.update(&chunk);
            match &mut file {
                Sink::Memory(buffer) => buffer.extend_from_slice(&chunk),
                // The longest string only matters for a file, checked as
                // a stream; a buffer's check is bounded by its length.
                Sink::File(f) => {
                    strings.update(&chunk);
                    f.write_all(&chunk).map_err(|e| io_error("write", &e))?;
                }
            }
            Ok((file, hasher, strings))
        })
        .await?;
        self.state = Some(state);
        self.len += n;
        Ok(())
    }

    /// Returns the file (or buffer) with the digest of its bytes; for a
    /// buffer, `check` runs over the bytes in the same hand-off to the
    /// blocking pool that hashes them, and its result comes back with them
    /// (a file is checked by the caller, as a stream). The file is not
    /// synced: it is only read back by this process, and what is stored
    /// from it is made durable by the store.
    ///
    /// # Errors
    /// Internal after a failed write.
    pub async fn finish<F>(mut self, check: F) -> Result<(Staged, Option<Result<()>>)>
    where
        F: FnOnce(&[u8]) -> Result<()> + Send + 'static,
    {
        let (file, hasher, strings) = self
            .state
            .take()
            .ok_or_else(|| Error::internal("a staging file was used after a failed write"))?;
        let len = self.len;
        match file {
            Sink::Memory(buffer) => {
                let (digest, checked, buffer) = crate::blocking::run(move || {
                    let digest = Digest::from_bytes(Sha256::digest(&buffer).into());
                    let checked = check(&buffer);
                    Ok((digest, checked, buffer))
                })
                .await?;
                let staged = Staged {
                    bytes: Some(Bytes::from(buffer)),
                    file: None,
                    digest,
                    len,
                    longest_string: len,
                };
                Ok((staged, Some(checked)))
            }
            Sink::File(f) => {
                let staged = Staged {
                    bytes: None,
                    file: Some(f),
                    digest: Digest::from_bytes(hasher.finalize().into()),
                    len,
                    longest_string: strings.longest(),
                };
                Ok((staged, None))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stages_hashes_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let staging_dir = dir_in(dir.path());
        let big = IN_MEMORY + 1;
        let mut s = Staging::create(Some(staging_dir.clone()), big)
            .await
            .unwrap();
        s.push(Bytes::from_static(b"{\"a\":")).await.unwrap();
        s.push(Bytes::from_static(b"1}")).await.unwrap();
        assert_eq!(s.len(), 7);
        let (staged, _) = s.finish(|_| Ok(())).await.unwrap();
        assert_eq!(staged.digest, Digest::of(b"{\"a\":1}"));
        let file = staged.file.as_ref().unwrap();
        assert_eq!(std::fs::read(file.path()).unwrap(), b"{\"a\":1}");
        let path = file.path().to_owned();
        drop(staged);
        assert!(!path.exists(), "a finished publish leaves no staging file");

        // A cancelled publish leaves none either; a killed one is swept.
        let s = Staging::create(Some(staging_dir.clone()), big)
            .await
            .unwrap();
        drop(s);
        // A small artifact stays in memory: no file at all.
        let mut s = Staging::create(Some(staging_dir.clone()), 2).await.unwrap();
        s.push(Bytes::from_static(b"[]")).await.unwrap();
        let (staged, checked) = s
            .finish(|bytes| Err(Error::invalid(format!("saw {} bytes", bytes.len()))))
            .await
            .unwrap();
        // The check ran over the buffer, and its answer came back with it.
        assert_eq!(checked.unwrap().unwrap_err().message(), "saw 2 bytes");
        assert_eq!(staged.digest, Digest::of(b"[]"));
        assert_eq!(staged.bytes.as_deref(), Some(&b"[]"[..]));
        assert!(staged.file.is_none());
        assert_eq!(std::fs::read_dir(&staging_dir).unwrap().count(), 0);
        std::fs::write(staging_dir.join("publish-left"), b"x").unwrap();
        assert_eq!(sweep(&staging_dir), 1);
        assert_eq!(sweep(&dir.path().join("absent")), 0);
    }
}
