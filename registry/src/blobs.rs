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

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

/// Blobs larger than this go up as multipart uploads.
pub const MULTIPART_ABOVE: usize = 8 * 1024 * 1024;
/// Size of each part (S3's minimum is 5 MiB).
const PART_BYTES: usize = 8 * 1024 * 1024;

use crate::digest::Digest;
use crate::error::{Error, Kind, Result};

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

    /// Reads the blob and checks it still hashes to `digest`.
    ///
    /// # Errors
    /// NotFound when absent; DataLoss when the bytes no longer match;
    /// Unavailable when storage fails.
    pub async fn get(&self, digest: &Digest) -> Result<Bytes> {
        let path = Self::path(digest);
        let bytes = match self.store.get(&path).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::new(
                    Kind::DataLoss,
                    format!(
                        "artifact {digest} is recorded in the log but its blob {path} is missing"
                    ),
                ));
            }
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
}
