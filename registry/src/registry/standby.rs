//! The other way an old primary learns its log was promoted elsewhere
//! (besides its witnesses): `[[standby]]` names the storage its standby
//! mirrors into. At start, before it serves a write, and then every
//! [`CHECK_EVERY`], the registry reads the standby's stored checkpoint; one
//! signed by this log's key in a later epoch means `stackpin-registry
//! promote` ran there, and this registry writes nothing more. Before a
//! promotion the standby holds a mirror's copy of this log's own epoch,
//! which changes nothing; a standby that cannot be read (its region is
//! down) is no promotion either.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use object_store::ObjectStore;

use super::Shared;
use crate::storage::{Capped, StorageOptions, StorageUrl};

/// How often a running writer reads its standbys' checkpoints.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// How long a start waits for its standbys' checkpoints.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The most read of a standby's checkpoint: a note with its cosignatures.
const MAX_NOTE_BYTES: u64 = stackpin_core::note::MAX_NOTE_BYTES as u64;

/// A standby's storage, as `[[standby]]` names it. A bucket's client is
/// made at start by [`Standby::connect`] (which reaches nothing: a region
/// that is down never stops a start, while a setting that cannot work
/// does); a folder is opened at its first look, off the async threads, and
/// is never created.
#[derive(Clone)]
pub struct Standby {
    /// What logs call it: its storage URL.
    pub label: String,
    url: StorageUrl,
    options: StorageOptions,
    store: Arc<tokio::sync::OnceCell<Arc<dyn ObjectStore>>>,
    /// What the last look found ([`UNKNOWN`] before the first).
    state: Arc<AtomicU8>,
}

/// Not looked at yet.
const UNKNOWN: u8 = u8::MAX;
/// The standby's checkpoint was read.
const READ: u8 = 0;
/// It holds no checkpoint (yet).
const EMPTY: u8 = 1;
/// Its storage could not be read, or did not answer in time.
const UNREADABLE: u8 = 2;
/// It holds a checkpoint that is not this log's.
const FOREIGN: u8 = 3;

impl Standby {
    pub fn new(label: String, url: StorageUrl, options: StorageOptions) -> Self {
        Self {
            label,
            url,
            options,
            store: Arc::default(),
            state: Arc::new(AtomicU8::new(UNKNOWN)),
        }
    }

    /// Makes a bucket's client now (a folder waits for its first look).
    ///
    /// # Errors
    /// Invalid settings: no credentials or account for it, a bad endpoint.
    pub fn connect(&self) -> crate::Result<()> {
        if matches!(self.url, StorageUrl::File(_)) {
            return Ok(());
        }
        let store = crate::storage::open(&self.url, &self.options)?;
        let _ = self.store.set(store);
        Ok(())
    }

    /// The storage: a bucket's client, or the folder, opened at first use
    /// if it is there (a hung mount stalls a blocking thread, not a look's
    /// time limit).
    async fn store(&self) -> Result<&Arc<dyn ObjectStore>, String> {
        self.store
            .get_or_try_init(|| async {
                let (url, options) = (self.url.clone(), self.options.clone());
                tokio::task::spawn_blocking(move || {
                    if let StorageUrl::File(path) = &url {
                        match std::fs::metadata(path) {
                            Ok(m) if m.is_dir() => {}
                            Ok(_) => return Err(format!("{}: not a folder", path.display())),
                            Err(e) => return Err(format!("{}: {e}", path.display())),
                        }
                    }
                    crate::storage::open(&url, &options).map_err(|e| e.message().to_owned())
                })
                .await
                .map_err(|e| e.to_string())?
            })
            .await
    }
}

/// Before a writer serves: reads each standby's checkpoint, waiting at
/// most [`PROBE_TIMEOUT`] (one that does not answer is read again later).
pub(super) async fn probe(shared: &Shared, standbys: &[Standby]) {
    let looks = standbys.iter().map(|s| look(shared, s, PROBE_TIMEOUT));
    futures::future::join_all(looks).await;
}

/// Reads the standbys' checkpoints every [`CHECK_EVERY`] until the
/// registry is dropped or has heard of a promotion.
pub(super) async fn watch(shared: Weak<Shared>, standbys: Vec<Standby>) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.superseded.get().is_some() {
            return;
        }
        let looks = standbys.iter().map(|s| look(&shared, s, CHECK_EVERY));
        futures::future::join_all(looks).await;
    }
}

/// Reads one standby's checkpoint, waiting at most `limit`, and acts on a
/// later epoch there. What is wrong with a standby is logged when it
/// changes, not every round.
async fn look(shared: &Shared, standby: &Standby, limit: Duration) {
    let read = async {
        let store = standby.store().await?;
        read_note(store).await
    };
    let (state, why) = match tokio::time::timeout(limit, read).await {
        Err(_) => (UNREADABLE, format!("no answer within {}s", limit.as_secs())),
        Ok(Err(e)) => (UNREADABLE, e),
        Ok(Ok(None)) => (EMPTY, String::new()),
        Ok(Ok(Some(note))) => {
            let by = format!("standby storage {}", standby.label);
            match super::log_key::supersede(shared, &by, &note) {
                Ok(_) => (READ, String::new()),
                Err(e) => (FOREIGN, e),
            }
        }
    };
    if standby.state.swap(state, Ordering::AcqRel) == state {
        return;
    }
    match state {
        UNREADABLE => tracing::warn!(
            standby = %standby.label, error = %why,
            "the standby's storage cannot be read: a promotion there is not seen until it can"
        ),
        EMPTY => tracing::warn!(
            standby = %standby.label,
            "the standby's storage holds no checkpoint: a promotion there is not seen until a \
             mirror writes one (is [[standby]] the storage `stackpin mirror` writes?)"
        ),
        FOREIGN => tracing::warn!(
            standby = %standby.label, error = %why,
            "the standby's checkpoint is not this log's: is [[standby]] the storage this log is \
             mirrored into?"
        ),
        _ => tracing::info!(
            standby = %standby.label,
            "the standby's checkpoint reads: a promotion there will be seen"
        ),
    }
}

/// The standby's stored checkpoint, `None` when it holds none yet; read up
/// to [`MAX_NOTE_BYTES`].
async fn read_note(store: &Arc<dyn ObjectStore>) -> Result<Option<String>, String> {
    let key = stackpin_core::layout::CHECKPOINT;
    match crate::storage::get_capped(store.as_ref(), key, MAX_NOTE_BYTES).await {
        Ok(Capped::Missing) => Ok(None),
        Ok(Capped::Bytes(bytes)) => String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| "its checkpoint is not text".to_owned()),
        Ok(Capped::Over(size)) => Err(format!(
            "its checkpoint is {size} bytes, more than a note holds ({MAX_NOTE_BYTES})"
        )),
        Err(e) => Err(e.to_string()),
    }
}
