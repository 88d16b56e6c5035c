//! `stackpin-registry promote`: a standby's storage (a mirror, a
//! replicated bucket) becomes the log's writer, in a new epoch, without
//! ever forking the log.
//!
//! Entries the old primary acknowledged but the standby never received may
//! already be signed and cosigned, so the standby must not extend the same
//! tree as if they never existed. It begins a new epoch instead: a new log
//! whose origin is `<name>/epoch/<n>` (signed by the same key, so clients
//! need no new key), whose tree starts with exactly the entries of the
//! previous epoch's checkpoint the standby holds, followed by a promotion
//! entry carrying that checkpoint. Every proof of an earlier entry holds in
//! both epochs; a client that saw only what the standby holds follows the
//! log across by an ordinary consistency proof; witnesses that cosign the
//! new epoch cosign nothing more of the old one, so the old primary, when
//! it returns, learns of the promotion from them and stops writing.
//!
//! The storage must hold no running registry while this runs: it writes the
//! promotion entry as the next log object and the new epoch's checkpoint,
//! and exits; a registry started writable on the storage then goes on in
//! the new epoch.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt as _;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt as _};
use serde::Serialize;
use stackpin_core::entry::{Entry, PromotionEntry};
use stackpin_core::layout;
use stackpin_core::merkle::{self, MemoryTree};
use stackpin_core::note::{Checkpoint, NoteSigner, epoch_origin};
use stackpin_core::time::Timestamp;

use crate::error::{Error, Kind, Result};
use crate::log::Log;

/// Where objects found past the standby's checkpoint are set aside.
pub const SET_ASIDE: &str = "promotion/set-aside";

/// What a promotion did.
#[derive(Debug, Serialize)]
pub struct Promoted {
    /// The epoch begun, and its origin.
    pub epoch: u64,
    pub origin: String,
    /// The previous epoch's origin and the size the standby held: the
    /// promotion entry's index.
    pub previous_origin: String,
    pub previous_size: u64,
    /// The new epoch's first checkpoint's size.
    pub size: u64,
    /// Log objects past the standby's checkpoint, set aside (they are not
    /// part of any checkpoint the standby verified).
    pub set_aside: Vec<String>,
    /// How long it took, in milliseconds.
    pub millis: u64,
}

/// Promotes the log in `store`, signing with `signer` (under the log's
/// name), as `actor`. A bucket's mirror lock is judged by its age
/// (`mirror_lock_by_age`); a folder's is checked by its caller, who can
/// try the lock itself.
///
/// # Errors
/// Invalid when the storage holds no verified log, or a mirror still
/// copies into it; DataLoss when its entries do not lead to its
/// checkpoint's root; Unavailable when storage fails.
pub async fn promote(
    store: &Arc<dyn ObjectStore>,
    signer: &NoteSigner,
    actor: &str,
    now: Timestamp,
    mirror_lock_by_age: bool,
) -> Result<Promoted> {
    let started = std::time::Instant::now();
    if mirror_lock_by_age {
        refuse_live_mirror(store).await?;
    }
    let note = match store.get(&StorePath::from(layout::CHECKPOINT)).await {
        Ok(got) => String::from_utf8_lossy(&got.bytes().await?).into_owned(),
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Error::invalid(
                "this storage holds no signed checkpoint: there is no log here to promote",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let previous = Checkpoint::open(&note, &signer.verifier()).map_err(|e| {
        Error::new(
            Kind::DataLoss,
            format!("the stored checkpoint does not verify under this log key: {e}"),
        )
    })?;
    // The entries the checkpoint signs, checked against its root.
    let log = Log::new(store.clone());
    let mut tree = MemoryTree::new();
    let mut beyond = Vec::new();
    let mut last = None;
    for (start, _) in log.objects().await? {
        if start >= previous.size {
            beyond.push(start);
            continue;
        }
        if start != tree.len() {
            return Err(Error::new(
                Kind::DataLoss,
                format!(
                    "the log objects skip from entry {} to {start}: entries are missing",
                    tree.len()
                ),
            ));
        }
        let object = log
            .read(start)
            .await?
            .ok_or_else(|| Error::new(Kind::Unavailable, format!("log object {start} vanished")))?;
        for entry in Log::split(&object) {
            tree.push(merkle::leaf_hash(&entry));
            last = Some(entry);
        }
    }
    if tree.len() != previous.size {
        return Err(Error::new(
            Kind::DataLoss,
            format!(
                "the log objects hold {} entries up to the checkpoint's {}: its objects do not \
                 end where it does",
                tree.len(),
                previous.size
            ),
        ));
    }
    if merkle::root(&tree, previous.size).map_err(Error::internal)? != previous.root {
        return Err(Error::new(
            Kind::DataLoss,
            format!(
                "the {} entries in this storage do not lead to the root its checkpoint signs",
                previous.size
            ),
        ));
    }
    let epoch = previous
        .epoch()
        .checked_add(1)
        .ok_or_else(|| Error::invalid("the log is at the last epoch there can be"))?;
    // A promotion with nothing written since is already the writer's: a
    // second one (a retried command) would close the epoch it began, at
    // the witnesses too, and stop the registry writing in it.
    if let Some(Ok(Entry::Promotion(p))) = last
        .as_ref()
        .map(|bytes| Entry::parse(previous.size - 1, bytes))
        && p.epoch == previous.epoch()
    {
        return Err(Error::invalid(format!(
            "this storage was promoted to epoch {} at log entry {} and nothing was written \
             since: it is already the writer's storage; start the registry on it",
            p.epoch,
            previous.size - 1
        )));
    }
    // What lies past it is no checkpoint's this storage can prove: log
    // objects, and copies of later checkpoints of the old epoch (a mirror
    // or a replication that stopped midway). Set aside, never lost, under
    // a folder of this attempt's own.
    let aside = format!("{SET_ASIDE}/{epoch}/{}", now.as_micros());
    let mut set_aside = Vec::new();
    let mut moved = beyond.into_iter().map(Log::path).collect::<Vec<_>>();
    let history: Vec<_> = store
        .list(Some(&StorePath::from(layout::CHECKPOINTS)))
        .try_collect()
        .await?;
    moved.extend(history.into_iter().filter_map(|m| {
        let size = layout::parse_checkpoint_history_name(m.location.filename()?)?;
        (size > previous.size).then_some(m.location)
    }));
    for from in moved {
        let to = StorePath::from(format!("{aside}/{from}"));
        store.copy(&from, &to).await?;
        store.delete(&from).await?;
        set_aside.push(to.to_string());
    }
    forget_derived(store, previous.size).await?;
    let entry = Entry::Promotion(PromotionEntry {
        epoch,
        previous: note.clone(),
        promoted_at: now,
        actor: actor.to_owned(),
        request_id: None,
    });
    let bytes = entry.to_bytes();
    layout::check_entry_size(&bytes)?;
    stackpin_core::state::apply(
        &stackpin_core::state::Empty,
        &stackpin_core::state::Rules::new(stackpin_core::signing::TrustedKeys::new([])),
        previous.size,
        &bytes,
    )
    .map_err(|e| Error::invalid(format!("the promotion entry: {e:?}")))?;
    if !log
        .append(previous.size, std::slice::from_ref(&bytes))
        .await?
    {
        return Err(Error::conflict(format!(
            "log entry {} was written meanwhile: a registry or a mirror still writes this \
             storage; stop it and promote again",
            previous.size
        )));
    }
    tree.push(merkle::leaf_hash(&bytes));
    let size = previous.size + 1;
    let origin = epoch_origin(signer.name(), epoch);
    let body = Checkpoint {
        origin: origin.clone(),
        size,
        root: merkle::root(&tree, size).map_err(Error::internal)?,
    }
    .body();
    let signed = Bytes::from(signer.sign(&body));
    store
        .put(
            &StorePath::from(layout::checkpoint_history_key(size)),
            signed.clone().into(),
        )
        .await?;
    store
        .put(&StorePath::from(layout::CHECKPOINT), signed.into())
        .await?;
    // No mirror copies into a promoted log: it is a writer's storage now
    // (a mirror still running checks this mark before it commits a round).
    store
        .delete(&StorePath::from(layout::MIRROR_MARK))
        .await
        .ok();
    Ok(Promoted {
        epoch,
        origin,
        previous_origin: previous.origin,
        previous_size: previous.size,
        size,
        set_aside,
        millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// `stackpin-registry promote`: the storage and log key `settings` name,
/// promoted as `actor`, once no registry runs on the data folder and, for a
/// folder storage, no registry or mirror holds it (their locks are tried
/// and held meanwhile; a bucket's mirror lock is judged by its age).
///
/// # Errors
/// As [`promote`]; invalid settings or a lock held.
pub async fn run(settings: &crate::config::Settings, actor: &str) -> anyhow::Result<Promoted> {
    use crate::storage::StorageUrl;
    if settings.read_only {
        anyhow::bail!("promote makes this storage the writer: drop --read-only");
    }
    if let Some(c) = stackpin_core::state::unsafe_char(actor, false) {
        anyhow::bail!("--actor holds the character {c:?}, which would print as something else");
    }
    let url = settings.storage_url()?;
    let store = crate::storage::open(&url, &settings.storage_options())?;
    let mut locks = vec![(
        settings.data_dir.join(crate::registry::LOCK_FILE),
        "a registry",
    )];
    if let StorageUrl::File(root) = &url {
        locks.push((root.join(crate::registry::LOCK_FILE), "a registry"));
        locks.push((root.join(layout::MIRROR_LOCK), "a `stackpin mirror`"));
    }
    let mut held = Vec::new();
    for (path, what) in locks {
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else {
            continue;
        };
        if file.try_lock().is_err() {
            anyhow::bail!(
                "{what} is running here (it holds {}): stop it first",
                path.display()
            );
        }
        held.push(file);
    }
    let (signer, _) = settings.signer(&store).await?;
    let promoted = promote(
        &store,
        &signer,
        actor,
        Timestamp::now(),
        !matches!(url, StorageUrl::File(_)),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    drop(held);
    Ok(promoted)
}

/// Forgets what was derived from the old epoch past `size`: the stored
/// tiles (written again from the new epoch's tree; `log/tiles-written`
/// goes, so the registry rewrites them all) and webhook cursors past it
/// (brought back to it, so the new epoch's entries are delivered).
async fn forget_derived(store: &Arc<dyn ObjectStore>, size: u64) -> Result<()> {
    store
        .delete(&StorePath::from(layout::TILES_WRITTEN))
        .await
        .or_else(|e| match e {
            object_store::Error::NotFound { .. } => Ok(()),
            e => Err(e),
        })?;
    let tiles: Vec<_> = store
        .list(Some(&StorePath::from(layout::TILES)))
        .try_collect()
        .await?;
    for tile in tiles {
        store.delete(&tile.location).await?;
    }
    let cursors: Vec<_> = store
        .list(Some(&StorePath::from("webhooks/cursor")))
        .try_collect()
        .await?;
    for cursor in cursors {
        let got = store.get(&cursor.location).await?.bytes().await?;
        let at: Option<u64> = std::str::from_utf8(&got)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        if at.is_none_or(|at| at > size) {
            store
                .put(&cursor.location, Bytes::from(format!("{size}\n")).into())
                .await?;
        }
    }
    Ok(())
}

/// The epoch the log is in past a checkpoint of `epoch` and `size`: that
/// one, unless an entry past it begins a later one (a `promote` that
/// stopped between writing its entry and its checkpoint): signing on in
/// the old epoch would fork it.
pub(crate) async fn epoch_past(log: &crate::log::Log, mut epoch: u64, size: u64) -> Result<u64> {
    let starts = match size.checked_sub(1) {
        Some(before) => log.objects_after(before).await?,
        None => log
            .objects()
            .await?
            .into_iter()
            .map(|(start, _)| start)
            .collect(),
    };
    for start in starts {
        let Some(object) = log.read(start).await? else {
            continue;
        };
        for (i, bytes) in crate::log::Log::split(&object).iter().enumerate() {
            if let Ok(stackpin_core::entry::Entry::Promotion(p)) =
                stackpin_core::entry::Entry::parse(start + i as u64, bytes)
            {
                epoch = epoch.max(p.epoch);
            }
        }
    }
    Ok(epoch)
}

/// Refuses while a `stackpin mirror` still holds the storage's mirror lock
/// (refreshed within [`layout::MIRROR_LOCK_STALE`]): it would copy the old primary's
/// entries over the new epoch.
async fn refuse_live_mirror(store: &Arc<dyn ObjectStore>) -> Result<()> {
    let lock = StorePath::from(layout::MIRROR_LOCK);
    let listed: Vec<_> = store
        .list(Some(&StorePath::from("mirror")))
        .try_collect()
        .await?;
    if let Some(meta) = listed.iter().find(|m| m.location == lock) {
        let age = Duration::from_millis(
            u64::try_from(
                jiff::Timestamp::now().as_millisecond() - meta.last_modified.timestamp_millis(),
            )
            .unwrap_or(0),
        );
        if age < layout::MIRROR_LOCK_STALE {
            return Err(Error::invalid(format!(
                "a `stackpin mirror` copied into this storage {}s ago (it holds mirror/lock): \
                 stop it before promoting, or it would copy the old primary over the new epoch",
                age.as_secs()
            )));
        }
    }
    Ok(())
}
