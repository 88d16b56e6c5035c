//! Content-addressed artifact bytes on object storage.
//!
//! ```text
//! blobs/sha256/<64 hex>   the exact bytes whose SHA-256 is <hex>, written once
//! ```
//!
//! A blob key is derived only from a [`Digest`], never from user text. Writes
//! use `PutMode::Create`; finding the key already present is success when the
//! stored bytes hash to the key (the same artifact again, or an earlier
//! attempt whose log entry never landed) and `DataLoss` otherwise.

use std::io::Read as _;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt as _};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use sha2::{Digest as _, Sha256};

/// Blobs larger than this go up as multipart uploads.
pub const MULTIPART_ABOVE: usize = 8 * 1024 * 1024;
/// Size of each part (S3's minimum is 5 MiB).
pub const PART_BYTES: usize = 8 * 1024 * 1024;

use crate::budget::Budget;
use crate::digest::Digest;
use crate::error::{Error, Kind, Result};

/// What storing a file of `len` bytes holds in memory at most: the whole
/// file when it goes up in one request, else two parts (one filling, one
/// uploading).
pub fn put_file_bytes(len: u64) -> u64 {
    if len > MULTIPART_ABOVE as u64 {
        2 * PART_BYTES as u64
    } else {
        len
    }
}

/// Artifact bytes keyed by their digest.
#[derive(Clone, Debug)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
}

impl Blobs {
    /// Blobs in `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// The storage key of `digest`.
    pub fn path(digest: &Digest) -> Path {
        Path::from(stackpin_core::layout::blob_key(digest))
    }

    /// Stores `bytes` under `digest` (which the caller computed from them),
    /// durably, once.
    ///
    /// # Errors
    /// Unavailable when storage fails; DataLoss when a different content
    /// already sits under the key.
    pub async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        if bytes.len() > MULTIPART_ABOVE {
            return self.put_multipart(digest, bytes).await;
        }
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&Self::path(digest), PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Same key means same content, unless storage was damaged.
                self.get(digest).await.map(|_| ())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Large blobs go up in parts. A multipart upload becomes visible only
    /// when it completes, so a crash mid-upload leaves no blob and the next
    /// attempt starts afresh. Multipart uploads cannot be conditional; the
    /// key is checked first, and rewriting a content address with the same
    /// bytes changes nothing.
    async fn put_multipart(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        let path = Self::path(digest);
        match self.store.head(&path).await {
            Ok(_) => return self.get(digest).await.map(|_| ()),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let upload = self.store.put_multipart(&path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        for part in bytes.chunks(PART_BYTES) {
            writer.wait_for_capacity(4).await?;
            writer.write(part);
        }
        writer.finish().await?;
        Ok(())
    }

    /// Stores the `len` bytes of the file at `file` under `digest` (which
    /// the caller computed from them), holding at most
    /// [`put_file_bytes`]`(len)` of them in memory, reserved in `budget`.
    ///
    /// # Errors
    /// As [`Self::put`]; Busy when the budget has no room.
    pub async fn put_file(
        &self,
        digest: &Digest,
        file: &std::path::Path,
        len: u64,
        budget: &Budget,
        wait: std::time::Duration,
    ) -> Result<()> {
        let _room = budget
            .reserve_within(put_file_bytes(len), "storing a published artifact", wait)
            .await?;
        let mut reader = open_staged(file).await?;
        if len <= MULTIPART_ABOVE as u64 {
            let (_, bytes) = read_part(reader, len as usize).await?;
            return self.put(digest, bytes).await;
        }
        let path = Self::path(digest);
        match self.store.head(&path).await {
            Ok(_) => return self.get(digest).await.map(|_| ()),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let upload = self.store.put_multipart(&path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut left = len;
        while left > 0 {
            let n = left.min(PART_BYTES as u64);
            let (back, part) = read_part(reader, n as usize).await?;
            reader = back;
            // One part uploading while the next fills: what was reserved.
            if let Err(e) = writer.wait_for_capacity(1).await {
                return Err(e.into());
            }
            writer.put(part);
            left -= n;
        }
        writer.finish().await?;
        Ok(())
    }

    /// The blob's bytes as a stream of chunks of at most `chunk` bytes,
    /// checked as they pass: a blob that is not `len` bytes hashing to
    /// `digest` ends the stream with DataLoss *before* its last chunk, so no
    /// reader ever holds a complete damaged artifact. Holds about two
    /// chunks in memory.
    ///
    /// # Errors
    /// DataLoss when the blob is missing; Unavailable when storage fails.
    pub async fn stream(
        &self,
        digest: &Digest,
        len: u64,
        chunk: usize,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let path = Self::path(digest);
        let source = match self.store.get(&path).await {
            Ok(r) => r.into_stream(),
            Err(object_store::Error::NotFound { .. }) => return Err(missing(digest, &path)),
            Err(e) => return Err(e.into()),
        };
        let checked = Checked {
            source,
            digest: *digest,
            path,
            len,
            chunk,
            seen: 0,
            hasher: Some(Sha256::new()),
            buffer: BytesMut::new(),
            held: None,
            ready: None,
            done: false,
        };
        Ok(futures::stream::unfold(checked, Checked::next).boxed())
    }

    /// Reads the blob and checks it still hashes to `digest`.
    ///
    /// # Errors
    /// NotFound when absent; DataLoss when the bytes no longer match;
    /// Unavailable when storage fails.
    pub async fn get(&self, digest: &Digest) -> Result<Bytes> {
        let path = Self::path(digest);
        let bytes = match self.store.get(&path).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Err(missing(digest, &path)),
            Err(e) => return Err(e.into()),
        };
        // Hashing a whole artifact takes milliseconds: off the runtime.
        let (actual, bytes) = crate::blocking::run(move || Ok((Digest::of(&bytes), bytes))).await?;
        if actual != *digest {
            return Err(Error::new(
                Kind::DataLoss,
                format!(
                    "stored blob {path} hashes to {actual}, not {digest}; it will not be served"
                ),
            ));
        }
        Ok(bytes)
    }
}

fn missing(digest: &Digest, path: &Path) -> Error {
    tracing::error!(%digest, %path, "blob missing from storage");
    Error::new(
        Kind::DataLoss,
        format!("artifact {digest} is recorded in the log but its blob is missing from storage"),
    )
}

async fn open_staged(file: &std::path::Path) -> Result<std::fs::File> {
    let file = file.to_owned();
    crate::blocking::run(move || {
        std::fs::File::open(&file).map_err(|e| {
            tracing::error!(error = %e, path = %file.display(), "opening a staging file");
            Error::new(
                Kind::Unavailable,
                "the registry could not read its staging file",
            )
        })
    })
    .await
}

/// Reads exactly `n` bytes of `file` on the blocking pool.
async fn read_part(mut file: std::fs::File, n: usize) -> Result<(std::fs::File, Bytes)> {
    crate::blocking::run(move || {
        let mut part = vec![0; n];
        file.read_exact(&mut part).map_err(|e| {
            tracing::error!(error = %e, "reading a staging file");
            Error::new(
                Kind::Unavailable,
                "the registry could not read its staging file",
            )
        })?;
        Ok((file, Bytes::from(part)))
    })
    .await
}

/// The state of a checked blob stream.
struct Checked {
    source: BoxStream<'static, object_store::Result<Bytes>>,
    digest: Digest,
    path: Path,
    len: u64,
    chunk: usize,
    seen: u64,
    hasher: Option<Sha256>,
    buffer: BytesMut,
    /// The newest chunk, held until it is known not to be the last.
    held: Option<Bytes>,
    /// A chunk cleared to go.
    ready: Option<Bytes>,
    done: bool,
}

impl Checked {
    fn damaged(&self, why: String) -> Error {
        tracing::error!(digest = %self.digest, path = %self.path, "{why}");
        Error::new(
            Kind::DataLoss,
            format!(
                "the stored bytes of artifact {} {why}; they will not be served",
                self.digest
            ),
        )
    }

    /// The next piece of at most `chunk` bytes from the source, or None at
    /// its end.
    async fn fill(&mut self) -> Result<Option<Bytes>> {
        while self.buffer.len() < self.chunk {
            match self.source.next().await {
                Some(bytes) => {
                    let bytes = bytes?;
                    self.seen += bytes.len() as u64;
                    if self.seen > self.len {
                        let why = format!("are longer than the {} bytes recorded", self.len);
                        return Err(self.damaged(why));
                    }
                    self.buffer.extend_from_slice(&bytes);
                }
                None => break,
            }
        }
        if self.buffer.is_empty() {
            return Ok(None);
        }
        let take = self.buffer.len().min(self.chunk);
        let piece = self.buffer.split_to(take).freeze();
        // Hashing a MiB takes a millisecond or more: off the runtime.
        let mut hasher = self.hasher.take().unwrap_or_default();
        let (hasher, piece) = crate::blocking::run(move || {
            hasher.update(&piece);
            Ok((hasher, piece))
        })
        .await?;
        self.hasher = Some(hasher);
        Ok(Some(piece))
    }

    /// Checks length and digest once the source has ended.
    fn check_end(&mut self) -> Result<()> {
        if self.seen != self.len {
            let why = format!("are {} bytes, not the {} recorded", self.seen, self.len);
            return Err(self.damaged(why));
        }
        let actual = Digest::from_bytes(self.hasher.take().unwrap_or_default().finalize().into());
        if actual != self.digest {
            return Err(self.damaged(format!("hash to {actual}")));
        }
        Ok(())
    }

    async fn next(mut self) -> Option<(Result<Bytes>, Self)> {
        loop {
            if let Some(ready) = self.ready.take() {
                return Some((Ok(ready), self));
            }
            if self.done {
                return None;
            }
            match self.fill().await {
                Ok(Some(piece)) => self.ready = self.held.replace(piece),
                Ok(None) => {
                    self.done = true;
                    if let Err(e) = self.check_end() {
                        return Some((Err(e), self));
                    }
                    self.ready = self.held.take();
                }
                Err(e) => {
                    self.done = true;
                    return Some((Err(e), self));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn put_is_idempotent_and_get_verifies() {
        let store = Arc::new(InMemory::new());
        let blobs = Blobs::new(store.clone());
        let data = Bytes::from_static(b"{\"a\":1}");
        let d = Digest::of(&data);
        blobs.put(&d, data.clone()).await.unwrap();
        blobs.put(&d, data.clone()).await.unwrap();
        assert_eq!(blobs.get(&d).await.unwrap(), data);

        // Damage the stored bytes: never served, and a re-put reports it.
        store
            .put(&Blobs::path(&d), PutPayload::from_static(b"{\"a\":2}"))
            .await
            .unwrap();
        assert_eq!(blobs.get(&d).await.unwrap_err().kind(), Kind::DataLoss);
        assert_eq!(
            blobs.put(&d, data).await.unwrap_err().kind(),
            Kind::DataLoss
        );
    }

    async fn collect(blobs: &Blobs, d: &Digest, len: u64, chunk: usize) -> Vec<Result<Bytes>> {
        blobs.stream(d, len, chunk).await.unwrap().collect().await
    }

    #[tokio::test]
    async fn streams_verify_and_hold_back_the_last_chunk_of_damaged_bytes() {
        let store = Arc::new(InMemory::new());
        let blobs = Blobs::new(store.clone());
        let data = Bytes::from_static(b"[1,2,3,4,5,6,7,8,9]");
        let d = Digest::of(&data);
        blobs.put(&d, data.clone()).await.unwrap();
        for chunk in [1, 4, 19, 64] {
            let got = collect(&blobs, &d, data.len() as u64, chunk).await;
            let joined: Vec<u8> = got
                .iter()
                .flat_map(|c| c.clone().unwrap().to_vec())
                .collect();
            assert_eq!(joined, data);
            assert!(got.iter().all(|c| c.as_ref().unwrap().len() <= chunk));
        }
        // Damaged, same length: every chunk but the last, then DataLoss.
        store
            .put(
                &Blobs::path(&d),
                PutPayload::from_static(b"[1,2,3,4,5,6,7,8,0]"),
            )
            .await
            .unwrap();
        let got = collect(&blobs, &d, data.len() as u64, 4).await;
        let (last, sent) = got.split_last().unwrap();
        assert_eq!(last.as_ref().unwrap_err().kind(), Kind::DataLoss);
        let sent: usize = sent.iter().map(|c| c.as_ref().unwrap().len()).sum();
        assert!(sent < data.len(), "the whole damaged artifact went out");
        // Shorter or longer than recorded: DataLoss too.
        for stored in [&b"[1,2]"[..], b"[1,2,3,4,5,6,7,8,9,10,11]"] {
            store
                .put(
                    &Blobs::path(&d),
                    PutPayload::from(Bytes::copy_from_slice(stored)),
                )
                .await
                .unwrap();
            let got = collect(&blobs, &d, data.len() as u64, 4).await;
            let err = got.last().unwrap().as_ref().unwrap_err();
            assert_eq!(err.kind(), Kind::DataLoss, "{err}");
        }
    }

    #[tokio::test]
    async fn files_go_up_whole_or_in_parts() {
        let store = Arc::new(InMemory::new());
        let blobs = Blobs::new(store.clone());
        let budget = Budget::new(64 * 1024 * 1024);
        for len in [10, MULTIPART_ABOVE + PART_BYTES + 5] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let d = Digest::of(&data);
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &data).unwrap();
            blobs
                .put_file(
                    &d,
                    file.path(),
                    len as u64,
                    &budget,
                    std::time::Duration::from_secs(1),
                )
                .await
                .unwrap();
            assert_eq!(blobs.get(&d).await.unwrap(), data);
            assert_eq!(
                budget.available(),
                64 * 1024 * 1024,
                "the room was given back"
            );
        }
    }
}
