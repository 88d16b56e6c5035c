//! The append-only log on object storage: one object per committed batch,
//! created write-once.
//!
//! The object at [`layout::object_key`]`(n)` is created with
//! `PutMode::Create`, so two writers can never both write it: the loser
//! learns it lost the race and must catch up. Which keys exist and how an
//! object holds its entries is the core's [`layout`]; this module only
//! moves those objects to and from storage.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::Result;
use stackpin_core::layout;

pub use stackpin_core::entry::{Entry, KeyAction, KeyEntry, PinEntry, PublishEntry, leaf_hash};

/// The entries in object storage.
#[derive(Clone, Debug)]
pub struct Log {
    store: Arc<dyn ObjectStore>,
}

impl Log {
    /// The log in `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// The storage key of the object whose first entry is `index`.
    pub fn path(index: u64) -> Path {
        Path::from(layout::object_key(index))
    }

    /// The object bytes of a batch: its entries, one per line.
    pub fn join(entries: &[Bytes]) -> Bytes {
        layout::join(entries)
    }

    /// Splits an object into its entries.
    pub fn split(object: &Bytes) -> Vec<Bytes> {
        layout::split(object)
    }

    /// Creates the object holding entries `index..index + entries.len()`,
    /// durably. Returns `false` when the key already exists (another writer
    /// won the index); both 409 and 412 answers mean that.
    ///
    /// # Errors
    /// Unavailable when storage fails: the write may or may not have landed.
    pub async fn append(&self, index: u64, entries: &[Bytes]) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let payload = PutPayload::from(Self::join(entries));
        match self.store.put_opts(&Self::path(index), payload, opts).await {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the object starting at `index`, or `None` when there is none.
    ///
    /// # Errors
    /// Unavailable when storage fails.
    pub async fn read(&self, index: u64) -> Result<Option<Bytes>> {
        match self.store.get(&Self::path(index)).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every log object in storage: (first index, byte size), in order.
    ///
    /// # Errors
    /// Unavailable when storage fails.
    pub async fn objects(&self) -> Result<Vec<(u64, u64)>> {
        use futures::TryStreamExt as _;
        let prefix = Path::from(layout::ENTRIES);
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        let mut out: Vec<(u64, u64)> = metas
            .iter()
            .filter_map(|m| {
                let index = layout::parse_object_name(m.location.filename()?)?;
                Some((index, m.size))
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Indices of every object stored after `index` (for detecting gaps).
    ///
    /// # Errors
    /// Unavailable when storage fails.
    pub async fn objects_after(&self, index: u64) -> Result<Vec<u64>> {
        use futures::TryStreamExt as _;
        let prefix = Path::from(layout::ENTRIES);
        let offset = Self::path(index);
        let metas: Vec<_> = self
            .store
            .list_with_offset(Some(&prefix), &offset)
            .try_collect()
            .await?;
        let mut out: Vec<u64> = metas
            .iter()
            .filter_map(|m| m.location.filename().and_then(layout::parse_object_name))
            .filter(|i| *i > index)
            .collect();
        out.sort_unstable();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn append_is_write_once_per_index_and_batches_split_back() {
        let log = Log::new(Arc::new(InMemory::new()));
        assert!(log.append(0, &[Bytes::from_static(b"a")]).await.unwrap());
        assert!(!log.append(0, &[Bytes::from_static(b"b")]).await.unwrap());
        assert_eq!(
            log.read(0).await.unwrap().unwrap(),
            Bytes::from_static(b"a")
        );
        assert_eq!(log.read(1).await.unwrap(), None);
        let batch = [
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"[]"),
            Bytes::from_static(b"1"),
        ];
        assert!(log.append(1, &batch).await.unwrap());
        assert_eq!(
            Log::split(&log.read(1).await.unwrap().unwrap()),
            batch.to_vec()
        );
        assert_eq!(log.objects_after(0).await.unwrap(), vec![1]);
        assert_eq!(Log::path(7).as_ref(), "log/entries/00000000000000000007");
    }
}
