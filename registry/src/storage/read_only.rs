//! The store of a read-only registry (`--read-only`): the log's storage
//! for every read, no write.

use std::sync::Arc;

use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// The store of a read-only registry: every read goes to the log's
/// storage, and no write does. Writes under `oci/` (what the OCI read API
/// derives and keeps: archives, proofs, signature envelopes, all of which
/// it can derive again) go to a scratch store in memory, emptied when it
/// holds more than [`SCRATCH_BYTES`]; any other write fails.
#[derive(Debug)]
pub struct ReadOnlyStore {
    inner: Arc<dyn ObjectStore>,
    scratch: std::sync::Mutex<Arc<InMemory>>,
    scratch_bytes: std::sync::atomic::AtomicUsize,
}

/// The most a read-only registry keeps of derived OCI objects.
pub const SCRATCH_BYTES: usize = 64 << 20;

const SCRATCH_PREFIX: &str = "oci/";

impl ReadOnlyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            scratch: std::sync::Mutex::new(Arc::new(InMemory::new())),
            scratch_bytes: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn scratch(&self) -> Arc<InMemory> {
        self.scratch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn is_scratch(location: &StorePath) -> bool {
        location.as_ref().starts_with(SCRATCH_PREFIX)
    }

    fn refused(location: &StorePath) -> object_store::Error {
        object_store::Error::NotSupported {
            source: format!(
                "this registry is read-only: it does not write {location} (the registry that \
                 writes the log does)"
            )
            .into(),
        }
    }
}

impl std::fmt::Display for ReadOnlyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "read-only {}", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for ReadOnlyStore {
    async fn put_opts(
        &self,
        location: &StorePath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if !Self::is_scratch(location) {
            return Err(Self::refused(location));
        }
        let len = payload.content_length();
        let held = self
            .scratch_bytes
            .fetch_add(len, std::sync::atomic::Ordering::AcqRel);
        if held + len > SCRATCH_BYTES {
            *self
                .scratch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(InMemory::new());
            self.scratch_bytes
                .store(len, std::sync::atomic::Ordering::Release);
        }
        self.scratch().put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &StorePath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        if Self::is_scratch(location) {
            return self.scratch().put_multipart_opts(location, opts).await;
        }
        Err(Self::refused(location))
    }

    async fn get_opts(
        &self,
        location: &StorePath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if Self::is_scratch(location) {
            return self.scratch().get_opts(location, options).await;
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<StorePath>>,
    ) -> BoxStream<'static, object_store::Result<StorePath>> {
        use futures::StreamExt as _;
        let scratch = self.scratch();
        locations
            .then(move |l| {
                let scratch = scratch.clone();
                async move {
                    let l = l?;
                    if Self::is_scratch(&l) {
                        use object_store::ObjectStoreExt as _;
                        scratch.delete(&l).await?;
                        Ok(l)
                    } else {
                        Err(Self::refused(&l))
                    }
                }
            })
            .boxed()
    }

    fn list(
        &self,
        prefix: Option<&StorePath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match prefix {
            Some(p) if Self::is_scratch(p) => self.scratch().list(prefix),
            _ => self.inner.list(prefix),
        }
    }

    fn list_with_offset(
        &self,
        prefix: Option<&StorePath>,
        offset: &StorePath,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match prefix {
            Some(p) if Self::is_scratch(p) => self.scratch().list_with_offset(prefix, offset),
            _ => self.inner.list_with_offset(prefix, offset),
        }
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&StorePath>,
    ) -> object_store::Result<ListResult> {
        match prefix {
            Some(p) if Self::is_scratch(p) => self.scratch().list_with_delimiter(prefix).await,
            _ => self.inner.list_with_delimiter(prefix).await,
        }
    }

    async fn copy_opts(
        &self,
        from: &StorePath,
        to: &StorePath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        if Self::is_scratch(to) && Self::is_scratch(from) {
            return self.scratch().copy_opts(from, to, options).await;
        }
        Err(Self::refused(to))
    }
}
