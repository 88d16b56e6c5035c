//! Checkpoints: signed after every commit for the tree the index holds
//! (checked against the stored checkpoints at every start, see
//! `recover.rs`), cached for readers, and stored off the request path at
//! `log/checkpoint` and, written once, in the history `log/checkpoints/`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutMode, PutOptions};
use tokio::sync::watch;

use object_store::ObjectStoreExt as _;

use super::{Shared, SignedCheckpoint};
use crate::error::{Error, Kind, Result};
use crate::merkle::{self};
use crate::note::{Checkpoint, NoteVerifier};
use stackpin_core::error::reason;
use stackpin_core::layout;

impl Shared {
    /// A signed checkpoint of everything applied so far.
    ///
    /// # Errors
    /// Internal when the index fails; DataLoss once entries read from
    /// storage contradicted the stored checkpoint.
    pub(super) fn checkpoint(&self) -> Result<SignedCheckpoint> {
        if let Some(e) = self.contradicted.get() {
            return Err(e.clone());
        }
        // A read-only registry signs nothing: its newest checkpoint is the
        // newest stored one it has checked (`adopt_stored`).
        let Some(signer) = self.signer.signer() else {
            return self.stored.borrow().clone().ok_or_else(|| {
                Error::new(
                    Kind::Unavailable,
                    "no stored checkpoint has been checked yet",
                )
            });
        };
        // Only what was checked: entries other replicas wrote are signed
        // once checked against the stored checkpoint (`check_tailed`).
        let size = self
            .index
            .applied()?
            .min(self.checked.load(std::sync::atomic::Ordering::Acquire));
        if let Some(cp) = self.cached_checkpoint()
            && cp.size >= size
        {
            return Ok(cp);
        }
        let root = merkle::root(&self.index, size)?;
        let body = Checkpoint {
            origin: crate::note::epoch_origin(
                signer.name(),
                self.epoch.load(std::sync::atomic::Ordering::Acquire),
            ),
            size,
            root,
        }
        .body();
        let cp = SignedCheckpoint {
            size,
            root,
            note: signer.sign(&body).into(),
        };
        let mut cache = self
            .checkpoint
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.as_ref().is_none_or(|c| c.size < size) {
            *cache = Some(cp.clone());
        }
        Ok(cp)
    }

    /// Checks entries other replicas wrote (from log index `from` on)
    /// against the checkpoint stored with the log, when it covers them: a
    /// root that differs means the entries read from storage are not the
    /// ones the log key signed. The replica then stops signing and serving
    /// (health NOT_SERVING) rather than spread them.
    pub(super) async fn check_tailed(&self, from: u64) {
        let verifier = self.signer.verifier();
        let applied = self.index.applied().unwrap_or(0);
        // The newest history copy covering the new entries, and the latest.
        let mut signed = Vec::new();
        match find_checkpoints(&self.store, &verifier, Some(from)).await {
            Ok(found) => {
                if let Some(size) = found.history.iter().rev().find(|s| **s <= applied) {
                    match history_checkpoint(&self.store, &verifier, *size).await {
                        Ok(stored) => signed.push(stored),
                        Err(e) => tracing::warn!(error = %e, "a stored checkpoint is unusable"),
                    }
                }
                signed.extend(found.latest);
            }
            Err(e) => tracing::warn!(error = %e, "reading the stored checkpoints failed"),
        }
        for stored in signed {
            let cp = &stored.checkpoint;
            if cp.size <= from || cp.size > applied {
                continue;
            }
            if matches!(merkle::root(&self.index, cp.size), Ok(root) if root != cp.root) {
                let e = Error::new(
                    Kind::DataLoss,
                    format!(
                        "log entries {from}..{} written by another replica are not what {} \
                         (size {}, root {}) signs: the first of them that may be damaged is log \
                         entry {from}. This replica serves nothing until it is restarted on an \
                         intact log (see the runbook)",
                        cp.size, stored.key, cp.size, cp.root
                    ),
                )
                .with_reason(reason::LOG_CONTRADICTS_CHECKPOINT);
                tracing::error!(error = %e, "NOT_SERVING");
                let _ = self.contradicted.set(e);
                return;
            }
        }
    }

    /// Read-only: adopts the newest checkpoint stored with the log that
    /// the entries applied here reach, once its root matches theirs (the
    /// start's check, applied as the log grows); from then on it is the
    /// one served. A stored checkpoint the entries contradict stops the
    /// serving, as [`Self::check_tailed`] does for a replica.
    ///
    /// # Errors
    /// Unavailable when storage fails; DataLoss when the stored
    /// checkpoint does not verify or the entries contradict it.
    pub(super) async fn adopt_stored(&self) -> Result<()> {
        if let Some(e) = self.contradicted.get() {
            return Err(e.clone());
        }
        let verifier = self.signer.verifier();
        let (served, served_note) = self
            .stored
            .borrow()
            .as_ref()
            .map_or((0, None), |c| (c.size, Some(c.note.clone())));
        let applied = self.index.applied()?;
        let found = find_checkpoints(&self.store, &verifier, Some(served)).await?;
        // The latest copy, when newer; or the same size again with more
        // signatures (the witnesses' cosignatures, added by the writer).
        let mut newest = found.latest.filter(|l| {
            let size = l.checkpoint.size;
            (size > served && size <= applied)
                || (size == served
                    && served_note
                        .as_deref()
                        .is_some_and(|n| n != &*l.note && l.note.len() > n.len()))
        });
        if let Some(size) = found
            .history
            .iter()
            .rev()
            .find(|s| **s <= applied && newest.as_ref().is_none_or(|n| n.checkpoint.size < **s))
        {
            newest = Some(history_checkpoint(&self.store, &verifier, *size).await?);
        }
        let Some(stored) = newest else {
            return Ok(());
        };
        let cp = &stored.checkpoint;
        if merkle::root(&self.index, cp.size)? != cp.root {
            let e = Error::new(
                Kind::DataLoss,
                format!(
                    "the log entries in storage are not what {} (size {}, root {}) signs: this \
                     read-only registry serves nothing until it is restarted on an intact copy",
                    stored.key, cp.size, cp.root
                ),
            )
            .with_reason(reason::LOG_CONTRADICTS_CHECKPOINT);
            tracing::error!(error = %e, "NOT_SERVING");
            let _ = self.contradicted.set(e.clone());
            return Err(e);
        }
        metrics::gauge!("stackpin_log_entries").set(cp.size as f64);
        self.stored.send_replace(Some(SignedCheckpoint {
            size: cp.size,
            root: cp.root,
            note: stored.note.clone(),
        }));
        Ok(())
    }

    /// [`Self::adopt_stored`] as the log is followed: a failure is logged
    /// (a contradiction also stops the serving).
    pub(super) async fn adopt_logged(&self) {
        if let Err(e) = self.adopt_stored().await {
            tracing::warn!(error = %e, "checking the stored checkpoint failed");
        }
    }

    fn cached_checkpoint(&self) -> Option<SignedCheckpoint> {
        self.checkpoint
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A signed checkpoint found in storage, with the key it is stored under.
#[derive(Clone, Debug)]
pub(super) struct Stored {
    pub(super) key: String,
    pub(super) checkpoint: Checkpoint,
    /// The signed note as stored.
    pub(super) note: Arc<str>,
}

/// Reads the object at `key`, `None` when there is none.
async fn read_note(store: &Arc<dyn ObjectStore>, key: &str) -> Result<Option<String>> {
    match store.get(&StorePath::from(key)).await {
        Ok(r) => {
            let bytes = r.bytes().await?;
            Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Opens the note stored at `key` as a checkpoint of this log.
fn open_stored(key: &str, note: &str, verifier: &NoteVerifier) -> Result<Stored> {
    let checkpoint = Checkpoint::open(note, verifier).map_err(|e| {
        Error::new(
            Kind::DataLoss,
            format!(
                "{key} is not a checkpoint signed by this registry's log key {}: {}; the stored \
                 checkpoints are what the log is checked against, so the start stops (see the \
                 runbook: a checkpoint that does not verify)",
                verifier.name(),
                e.message()
            ),
        )
        .with_reason(reason::CHECKPOINT_UNVERIFIED)
    })?;
    Ok(Stored {
        key: key.to_owned(),
        checkpoint,
        note: note.into(),
    })
}

/// What is stored of the log's checkpoints: the sizes the history holds
/// (from its listing alone) and the latest copy, read and verified.
#[derive(Clone, Debug, Default)]
pub(super) struct Found {
    /// Sizes of `log/checkpoints/<size>`, smallest first.
    pub(super) history: Vec<u64>,
    /// `log/checkpoint`, when there is one.
    pub(super) latest: Option<Stored>,
}

/// Lists the checkpoint history (names only) from `after` on, and reads
/// `log/checkpoint`.
///
/// # Errors
/// DataLoss when `log/checkpoint` is not a checkpoint signed by `verifier`
/// (truncated, altered, or signed by another key); Unavailable when
/// storage fails.
pub(super) async fn find_checkpoints(
    store: &Arc<dyn ObjectStore>,
    verifier: &NoteVerifier,
    after: Option<u64>,
) -> Result<Found> {
    use futures::TryStreamExt as _;
    let prefix = StorePath::from(layout::CHECKPOINTS);
    let metas: Vec<_> = match after {
        None => store.list(Some(&prefix)).try_collect().await?,
        Some(after) => {
            let offset = StorePath::from(layout::checkpoint_history_key(after));
            store
                .list_with_offset(Some(&prefix), &offset)
                .try_collect()
                .await?
        }
    };
    let mut history: Vec<u64> = metas
        .iter()
        .filter_map(|m| layout::parse_checkpoint_history_name(m.location.filename()?))
        .filter(|size| after.is_none_or(|a| *size > a))
        .collect();
    history.sort_unstable();
    let latest = match read_note(store, layout::CHECKPOINT).await? {
        Some(note) => Some(open_stored(layout::CHECKPOINT, &note, verifier)?),
        None => None,
    };
    Ok(Found { history, latest })
}

/// Where a log's origin came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginSource {
    /// The checkpoints stored with the log sign as it.
    Stored,
    /// The `log_origin` setting, for a log that has signed nothing yet.
    Configured,
    /// Derived from the log key, for a new log with no `log_origin`.
    Derived,
}

/// The origin a registry signs its log as: the one its stored checkpoints
/// carry (a log keeps its origin for good), else `configured`, else one
/// derived from the log key ([`crate::note::derived_origin`]).
///
/// # Errors
/// Invalid when `configured` names another origin than the stored log
/// signs as; Unavailable when storage fails.
pub async fn log_origin(
    store: &Arc<dyn ObjectStore>,
    configured: Option<&str>,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<(String, OriginSource)> {
    use futures::TryStreamExt as _;
    let mut note = read_note(store, layout::CHECKPOINT).await?;
    if note.is_none() {
        let prefix = StorePath::from(layout::CHECKPOINTS);
        let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
        let newest = metas
            .iter()
            .filter_map(|m| layout::parse_checkpoint_history_name(m.location.filename()?))
            .max();
        if let Some(size) = newest {
            note = read_note(store, &layout::checkpoint_history_key(size)).await?;
        }
    }
    // The log's name: its stored checkpoint may be of a later epoch.
    let stored = note
        .as_deref()
        .and_then(crate::note::origin_of)
        .map(|o| crate::note::split_epoch(o).0);
    match (stored, configured) {
        (Some(stored), Some(configured)) if stored != configured => Err(Error::invalid(format!(
            "setting log_origin: the log in this storage signs as {stored:?}, not \
             {configured:?}; a log keeps its origin for good (verifiers and witnesses know it \
             by that name). Remove log_origin, or set it to {stored:?}"
        ))),
        (Some(stored), _) => Ok((stored.to_owned(), OriginSource::Stored)),
        (None, Some(configured)) => Ok((configured.to_owned(), OriginSource::Configured)),
        (None, None) => Ok((crate::note::derived_origin(key), OriginSource::Derived)),
    }
}

/// Reads and verifies the history copy of the checkpoint of `size`.
///
/// # Errors
/// DataLoss when it is missing, is not a checkpoint signed by `verifier`,
/// or signs another size; Unavailable when storage fails.
pub(super) async fn history_checkpoint(
    store: &Arc<dyn ObjectStore>,
    verifier: &NoteVerifier,
    size: u64,
) -> Result<Stored> {
    let key = layout::checkpoint_history_key(size);
    let note = read_note(store, &key).await?.unwrap_or_default();
    let stored = open_stored(&key, &note, verifier)?;
    if stored.checkpoint.size != size {
        return Err(Error::new(
            Kind::DataLoss,
            format!(
                "{key} holds a checkpoint of size {}, not {size}: it was moved or altered",
                stored.checkpoint.size
            ),
        )
        .with_reason(reason::CHECKPOINT_UNVERIFIED));
    }
    Ok(stored)
}

/// Stores `cp`: first its history copy, written once, then `log/checkpoint`
/// unless that already holds a newer checkpoint, or this one with as many
/// signatures (a replica or a restarted registry never moves it backwards;
/// cosignatures that arrive later are added).
///
/// # Errors
/// Unavailable when storage fails.
pub(super) async fn put_checkpoint(
    store: &Arc<dyn ObjectStore>,
    verifier: &NoteVerifier,
    cp: &SignedCheckpoint,
) -> Result<()> {
    let bytes = Bytes::copy_from_slice(cp.note.as_bytes());
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    // The empty tree proves nothing: no history copy of it.
    if cp.size > 0 {
        let history = StorePath::from(layout::checkpoint_history_key(cp.size));
        match store.put_opts(&history, bytes.clone().into(), create).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Stored before (by a replica, or before a restart): it
                // must be the same tree, or this one is not stored.
                let key = layout::checkpoint_history_key(cp.size);
                let note = read_note(store, &key).await?.unwrap_or_default();
                let there = open_stored(&key, &note, verifier)?;
                if there.checkpoint.root != cp.root {
                    return Err(Error::new(
                        Kind::DataLoss,
                        format!(
                            "{key} holds another root for size {} than the tree signed now: the \
                             log was changed after that checkpoint was stored",
                            cp.size
                        ),
                    )
                    .with_reason(reason::LOG_CONTRADICTS_CHECKPOINT));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Compare and swap where the store supports it (S3 If-Match), so two
    // replicas storing at once cannot move it back; a plain overwrite on a
    // local folder, which one registry holds alone.
    let path = StorePath::from(layout::CHECKPOINT);
    for _ in 0..8 {
        let (current, version) = match store.get(&path).await {
            Ok(r) => {
                let version = object_store::UpdateVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                };
                let note = String::from_utf8_lossy(&r.bytes().await?).into_owned();
                (
                    Checkpoint::open(&note, verifier)
                        .ok()
                        .map(|c| (c, note.len())),
                    Some(version),
                )
            }
            Err(object_store::Error::NotFound { .. }) => (None, None),
            Err(e) => return Err(e.into()),
        };
        // Newer, or the same tree with more signatures (cosignatures that
        // arrived since it was stored).
        if current
            .is_some_and(|(c, len)| c.size > cp.size || (c.size == cp.size && len >= cp.note.len()))
        {
            return Ok(());
        }
        let mode = match version {
            Some(v) => PutMode::Update(v),
            None => PutMode::Create,
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match store.put_opts(&path, bytes.clone().into(), opts).await {
            Ok(_) => return Ok(()),
            // Another writer came first: look again.
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => {}
            // No conditional update here: overwrite.
            Err(_) => {
                let overwrite = PutOptions {
                    mode: PutMode::Overwrite,
                    ..PutOptions::default()
                };
                store.put_opts(&path, bytes.into(), overwrite).await?;
                return Ok(());
            }
        }
    }
    tracing::warn!(
        size = cp.size,
        "log/checkpoint kept changing under this replica; the history copy is stored"
    );
    Ok(())
}

/// Held by whoever stores `log/checkpoint` in this process (the storing
/// task, the witnesses' tasks adding cosignatures, a graceful stop): on a
/// local folder the store has no compare-and-swap, so two writers at once
/// could move it back.
pub(super) type StoreLock = Arc<tokio::sync::Mutex<()>>;

/// How often `log/checkpoint` is rewritten at most while the log grows.
///
/// Each rewrite is a write of its own (a file written and fsynced, its
/// folder fsynced, the replaced file's inode freed; on S3 a PUT). Done
/// after every commit it added two fsyncs to each publish, and on ext4
/// without a journal the freed inodes piled up and slowed every later file
/// creation (see BENCHMARKS.md). The stored checkpoint is a convenience
/// for offline audits and start-up checks; the log itself is the record,
/// so trailing it by up to this interval loses nothing. A graceful stop
/// stores the newest one.
pub const STORE_CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Stores new checkpoints at `log/checkpoint`: the first after a quiet
/// spell at once, then at most one per [`STORE_CHECKPOINT_EVERY`] (sooner
/// when `hurry` is notified: a reader waits for a checkpoint covering new
/// entries), always the newest. Each one stored is published on `stored`,
/// the only checkpoints the registry serves. Ends when the registry is
/// dropped.
pub(super) async fn store_checkpoints(
    store: Arc<dyn ObjectStore>,
    verifier: NoteVerifier,
    lock: StoreLock,
    mut rx: watch::Receiver<Option<SignedCheckpoint>>,
    published: Arc<watch::Sender<Option<SignedCheckpoint>>>,
    hurry: Arc<tokio::sync::Notify>,
    failures: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut stored = 0;
    while rx.changed().await.is_ok() {
        let Some(cp) = rx.borrow_and_update().clone() else {
            continue;
        };
        // The empty tree's signature proves nothing: the first one stored
        // is the first with entries, at once. One already stored (by a
        // graceful flush) is not stored again.
        if cp.size <= stored
            || published
                .borrow()
                .as_ref()
                .is_some_and(|s| s.size >= cp.size)
        {
            continue;
        }
        let held = lock.lock().await;
        let stored_now = put_checkpoint(&store, &verifier, &cp).await;
        drop(held);
        match stored_now {
            Ok(()) => {
                stored = cp.size;
                published.send_if_modified(|served| {
                    let newer = served.as_ref().is_none_or(|s| s.size < cp.size);
                    if newer {
                        *served = Some(cp);
                    }
                    newer
                });
            }
            Err(e) => {
                // Readers wait for this checkpoint: try it again (or a newer
                // one) after the pause, even if nothing new is committed.
                tracing::warn!(size = cp.size, error = %e, "storing the checkpoint failed; it will be retried");
                // Readers waiting for it hear of the failure at once.
                failures.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                published.send_modify(|_| {});
                rx.mark_changed();
            }
        }
        tokio::select! {
            () = tokio::time::sleep(STORE_CHECKPOINT_EVERY) => {}
            () = hurry.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::{DEFAULT_ORIGIN, NoteSigner};

    fn signed(signer: &NoteSigner, size: u64) -> SignedCheckpoint {
        let root = crate::merkle::Hash::from_bytes([size as u8; 32]);
        let body = Checkpoint {
            origin: DEFAULT_ORIGIN.to_owned(),
            size,
            root,
        }
        .body();
        SignedCheckpoint {
            size,
            root,
            note: signer.sign(&body).into(),
        }
    }

    #[tokio::test]
    async fn the_stored_checkpoint_never_moves_back_and_the_history_keeps_each() {
        let signer = NoteSigner::new(
            DEFAULT_ORIGIN,
            ed25519_dalek::SigningKey::from_bytes(&[5; 32]),
        )
        .unwrap();
        let verifier = signer.verifier();
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        put_checkpoint(&store, &verifier, &signed(&signer, 0))
            .await
            .unwrap();
        put_checkpoint(&store, &verifier, &signed(&signer, 5))
            .await
            .unwrap();
        // A replica (or a restarted registry) that is behind stores its own.
        put_checkpoint(&store, &verifier, &signed(&signer, 3))
            .await
            .unwrap();
        // The same tree with a cosignature more replaces it; without, not.
        let mut cosigned = signed(&signer, 5);
        let witness = stackpin_core::witness::Cosigner::new(
            "w.example",
            ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
        )
        .unwrap();
        let body = crate::note::split(&cosigned.note).unwrap().0.to_owned();
        cosigned.note = format!("{}{}", cosigned.note, witness.cosign(&body, 1)).into();
        put_checkpoint(&store, &verifier, &cosigned).await.unwrap();
        put_checkpoint(&store, &verifier, &signed(&signer, 5))
            .await
            .unwrap();
        let stored = read_note(&store, layout::CHECKPOINT)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(witness.key().cosigned_at(&stored), Some(1), "{stored}");
        let found = find_checkpoints(&store, &verifier, None).await.unwrap();
        assert_eq!(found.history, [3, 5]);
        assert_eq!(found.latest.unwrap().checkpoint.size, 5, "never moved back");
        let three = history_checkpoint(&store, &verifier, 3).await.unwrap();
        assert_eq!(three.key, layout::checkpoint_history_key(3));
        assert_eq!(three.checkpoint.size, 3);
        // A history copy that is not this log's stops the reading.
        let other = NoteSigner::new(
            DEFAULT_ORIGIN,
            ed25519_dalek::SigningKey::from_bytes(&[6; 32]),
        )
        .unwrap();
        let theirs = signed(&other, 7);
        store
            .put(
                &StorePath::from(layout::checkpoint_history_key(7)),
                Bytes::copy_from_slice(theirs.note.as_bytes()).into(),
            )
            .await
            .unwrap();
        let err = history_checkpoint(&store, &verifier, 7).await.unwrap_err();
        assert_eq!(err.kind(), Kind::DataLoss);
        assert!(err.message().contains("00000000000000000007"), "{err}");
    }
}
