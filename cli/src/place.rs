//! Where a log is kept outside a running registry: a folder, or a bucket
//! (S3, or an Azure container) named the way the registry's `--storage`
//! names it. `stackpin mirror` writes one, and `restore`, `history` and
//! `status --from` read one, through this one interface, so a mirror in a
//! second region's bucket is read and written exactly as a folder is.
//!
//! A bucket is opened by the registry's own storage code (endpoint,
//! credentials from the usual `AWS_*` and `AZURE_*` variables, plain HTTP
//! only to loopback unless allowed, bounded timeouts and retries).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt as _;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions};
use stackpin_core::digest::Digest;
use stackpin_core::layout;
use stackpin_registry::storage::{Capped, StorageOptions, StorageUrl};

use crate::exit::{Failure, Outcome};

/// How a bucket is reached, beyond the `AWS_*` and `AZURE_*` environment.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct StoreArgs {
    /// The endpoint of an S3-compatible server, for an s3:// location
    /// (e.g. http://127.0.0.1:8333).
    #[arg(long, env = "STACKPIN_S3_ENDPOINT", value_name = "URL")]
    s3_endpoint: Option<String>,
    /// The blob endpoint for an az:// location instead of Azure's
    /// (Azurite's http://127.0.0.1:10000/devstoreaccount1, a private
    /// endpoint).
    #[arg(long, env = "STACKPIN_AZURE_ENDPOINT", value_name = "URL")]
    azure_endpoint: Option<String>,
    /// Allow a plain-HTTP endpoint that is not loopback.
    #[arg(long)]
    storage_allow_http: bool,
}

/// How much is read of each kind of object in a folder or bucket. A
/// storage may be anyone's, so no object is read whole on its word; each
/// cap is well above what a registry writes.
pub mod cap {
    /// A signed checkpoint, with its cosignatures (the longest note the
    /// core opens).
    pub const NOTE: u64 = stackpin_core::note::MAX_NOTE_BYTES as u64;
    /// A log object: twice the most written now (a mirror's object of
    /// 1,024 entries of at most 64 KiB each; a registry's group commit
    /// holds 256), for entries written before the entry limit.
    pub const LOG_OBJECT: u64 = 1024 * 128 * 1024;
    /// A record of a few lines: a mirror's mark, status or lock, the tiles
    /// count.
    pub const RECORD: u64 = 64 * 1024;
    /// A stored tile: a hash tile of 256 hashes, or an entry bundle of 256
    /// entries of at most 65,535 bytes, each with its two-byte length.
    pub const TILE: u64 = 256 * (65_535 + 2);
}

/// What a capped read found.
enum Read {
    Missing,
    Bytes(Bytes),
    /// Longer than the cap: its size, or as far as it was read.
    Over(u64),
}

/// A folder or a bucket holding a log in the registry's storage layout.
#[derive(Clone)]
pub enum Place {
    Folder(PathBuf),
    Bucket {
        url: String,
        store: Arc<dyn ObjectStore>,
    },
}

impl Place {
    /// `s3://bucket/prefix`, `az://container/prefix`, `file:///path` or a
    /// path.
    ///
    /// # Errors
    /// Invalid for a malformed bucket name or setting.
    pub fn parse(text: &str, args: &StoreArgs) -> Outcome<Self> {
        Self::parse_at(text, args, None)
    }

    /// As [`Place::parse`], a bucket reached at `endpoint` instead of the
    /// one `args` names (a second region's server).
    ///
    /// # Errors
    /// As [`Place::parse`].
    pub fn parse_at(text: &str, args: &StoreArgs, endpoint: Option<&str>) -> Outcome<Self> {
        if text.starts_with("s3://") || text.starts_with("az://") {
            let url = StorageUrl::parse(text).map_err(|e| Failure::invalid(e.message()))?;
            let (mut s3, mut azure) = (args.s3_endpoint.clone(), args.azure_endpoint.clone());
            if let Some(endpoint) = endpoint {
                match url {
                    StorageUrl::Azure { .. } => azure = Some(endpoint.to_owned()),
                    _ => s3 = Some(endpoint.to_owned()),
                }
            }
            let options = StorageOptions {
                endpoint: s3,
                azure_endpoint: azure,
                allow_http: args.storage_allow_http,
                ..StorageOptions::default()
            };
            let store = stackpin_registry::storage::open(&url, &options)
                .map_err(|e| Failure::invalid(e.message()))?;
            return Ok(Self::Bucket {
                url: text.trim_end_matches('/').to_owned(),
                store,
            });
        }
        if text.contains("://") && !text.starts_with("file://") {
            return Err(Failure::invalid(format!(
                "{text}: a log is read from a folder, file:///path, s3://bucket/prefix or \
                 az://container/prefix"
            )));
        }
        Ok(Self::Folder(PathBuf::from(
            text.strip_prefix("file://").unwrap_or(text),
        )))
    }

    /// What to call it in messages.
    pub fn name(&self) -> String {
        match self {
            Self::Folder(dir) => dir.display().to_string(),
            Self::Bucket { url, .. } => url.clone(),
        }
    }

    /// Where `key` is, for messages.
    pub fn show(&self, key: &str) -> String {
        match self {
            Self::Folder(dir) => dir.join(key).display().to_string(),
            Self::Bucket { url, .. } => format!("{url}/{key}"),
        }
    }

    fn unavailable(&self, key: &str, e: impl std::fmt::Display) -> Failure {
        Failure::new(
            crate::exit::UNAVAILABLE,
            anyhow::anyhow!("{}: {e}", self.show(key)),
        )
    }

    /// The object `key`, or `None` when there is none. At most `max`
    /// bytes are read (one of [`cap`]): a longer object is refused
    /// unread, since no registry writes one.
    ///
    /// # Errors
    /// Unavailable when it cannot be read; verification failed when it is
    /// longer than `max`.
    pub async fn get(&self, key: &str, max: u64) -> Outcome<Option<Bytes>> {
        match self.read(key, max).await? {
            Read::Missing => Ok(None),
            Read::Bytes(bytes) => Ok(Some(bytes)),
            Read::Over(size) => Err(Failure::verify(format!(
                "{}: {size} bytes, more than the {max} an object of its kind holds in a \
                 registry's storage; not read",
                self.show(key)
            ))),
        }
    }

    /// The object `key`, which must be there (`what` says why it should),
    /// of at most `max` bytes.
    ///
    /// # Errors
    /// Invalid when absent (`what` is said); as [`Place::get`] otherwise.
    pub async fn need(&self, key: &str, max: u64, what: &str) -> Outcome<Bytes> {
        self.get(key, max)
            .await?
            .ok_or_else(|| Failure::invalid(format!("{}: not found: {what}", self.show(key))))
    }

    /// The stored bytes of the artifact `digest`, or `None` when there are
    /// none; one longer than `max_download` (`--max-download`) is refused
    /// unread. The caller checks them against the digest.
    ///
    /// # Errors
    /// Unavailable when they cannot be read; invalid when too long.
    pub async fn artifact(&self, digest: &Digest, max_download: u64) -> Outcome<Option<Bytes>> {
        let key = layout::blob_key(digest);
        match self.read(&key, max_download).await? {
            Read::Missing => Ok(None),
            Read::Bytes(bytes) => Ok(Some(bytes)),
            Read::Over(size) => Err(Failure::invalid(format!(
                "{} is {size} bytes, more than --max-download allows ({max_download} bytes); \
                 raise --max-download if an artifact that large is expected",
                self.show(&key)
            ))),
        }
    }

    /// Reads `key`, stopping once it is past `max` bytes.
    async fn read(&self, key: &str, max: u64) -> Outcome<Read> {
        match self {
            Self::Folder(dir) => {
                let file = match std::fs::File::open(dir.join(key)) {
                    Ok(file) => file,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read::Missing),
                    Err(e) => return Err(self.unavailable(key, e)),
                };
                let size = file.metadata().map_err(|e| self.unavailable(key, e))?.len();
                if size > max {
                    return Ok(Read::Over(size));
                }
                // The file may grow after its size was read: the read stops
                // one byte past the cap all the same.
                let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                file.take(max.saturating_add(1))
                    .read_to_end(&mut bytes)
                    .map_err(|e| self.unavailable(key, e))?;
                if bytes.len() as u64 > max {
                    return Ok(Read::Over(bytes.len() as u64));
                }
                Ok(Read::Bytes(Bytes::from(bytes)))
            }
            Self::Bucket { store, .. } => {
                match stackpin_registry::storage::get_capped(store.as_ref(), key, max).await {
                    Ok(Capped::Missing) => Ok(Read::Missing),
                    Ok(Capped::Bytes(bytes)) => Ok(Read::Bytes(bytes)),
                    Ok(Capped::Over(size)) => Ok(Read::Over(size)),
                    Err(e) => Err(self.unavailable(key, e)),
                }
            }
        }
    }

    /// Writes `key` whole: a folder's file is replaced atomically and
    /// synced, a bucket's object by one PUT.
    ///
    /// # Errors
    /// Unavailable (a bucket) or invalid (a folder) when it cannot be written.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Outcome {
        match self {
            Self::Folder(dir) => crate::files::write_atomic(&dir.join(key), &bytes),
            Self::Bucket { store, .. } => store
                .put(&Key::from(key), bytes.into())
                .await
                .map(|_| ())
                .map_err(|e| self.unavailable(key, e)),
        }
    }

    /// Moves `from` to `to` (in a bucket: a copy, then the delete).
    ///
    /// # Errors
    /// When the move fails.
    pub async fn rename(&self, from: &str, to: &str) -> Outcome {
        match self {
            Self::Folder(dir) => {
                let target = dir.join(to);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| Failure::invalid(format!("{}: {e}", parent.display())))?;
                }
                std::fs::rename(dir.join(from), &target).map_err(|e| {
                    Failure::invalid(format!("moving {} into place: {e}", self.show(from)))
                })
            }
            Self::Bucket { store, .. } => store
                .rename(&Key::from(from), &Key::from(to))
                .await
                .map_err(|e| self.unavailable(from, e)),
        }
    }

    /// Removes `key`; one that is not there is no error.
    ///
    /// # Errors
    /// When it is there and cannot be removed.
    pub async fn remove(&self, key: &str) -> Outcome {
        match self {
            Self::Folder(dir) => match std::fs::remove_file(dir.join(key)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Failure::invalid(
                    format!("removing {}: {e}", self.show(key)),
                )),
                _ => Ok(()),
            },
            Self::Bucket { store, .. } => match store.delete(&Key::from(key)).await {
                Err(e) if !matches!(e, object_store::Error::NotFound { .. }) => {
                    Err(self.unavailable(key, e))
                }
                _ => Ok(()),
            },
        }
    }

    /// Removes everything under `prefix` (a folder's, and the folder).
    ///
    /// # Errors
    /// When something there cannot be removed.
    pub async fn remove_all(&self, prefix: &str) -> Outcome {
        match self {
            Self::Folder(dir) => match std::fs::remove_dir_all(dir.join(prefix)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Failure::invalid(
                    format!("removing {}: {e}", self.show(prefix)),
                )),
                _ => Ok(()),
            },
            Self::Bucket { .. } => {
                for name in self.names(prefix).await? {
                    self.remove(&format!("{prefix}/{name}")).await?;
                }
                Ok(())
            }
        }
    }

    /// The names directly under `prefix` (a folder's files; a bucket's
    /// objects, at any depth below it, by their last part).
    ///
    /// # Errors
    /// Unavailable when it cannot be listed; a folder that is not there
    /// lists empty.
    pub async fn names(&self, prefix: &str) -> Outcome<Vec<String>> {
        match self {
            Self::Folder(dir) => match std::fs::read_dir(dir.join(prefix)) {
                Ok(listing) => Ok(listing
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(self.unavailable(prefix, e)),
            },
            Self::Bucket { store, .. } => {
                // Each listed object's name is kept as it arrives, not the
                // whole listing's metadata.
                let mut names = Vec::new();
                let mut listing = store.list(Some(&Key::from(prefix)));
                while let Some(meta) = listing
                    .try_next()
                    .await
                    .map_err(|e| self.unavailable(prefix, e))?
                {
                    if let Some(name) = meta.location.filename() {
                        names.push(name.to_owned());
                    }
                }
                Ok(names)
            }
        }
    }

    /// The first index of each log object, in order.
    ///
    /// # Errors
    /// Unavailable when the log cannot be listed.
    pub async fn object_starts(&self) -> Outcome<Vec<u64>> {
        let mut starts: Vec<u64> = self
            .names(layout::ENTRIES)
            .await?
            .iter()
            .filter_map(|n| layout::parse_object_name(n))
            .collect();
        starts.sort_unstable();
        Ok(starts)
    }

    /// Makes the renames into the folder `prefix` durable (a bucket's are
    /// when acknowledged).
    ///
    /// # Errors
    /// When a folder cannot be synced.
    pub fn sync(&self, prefix: &str) -> Outcome {
        match self {
            Self::Folder(dir) => std::fs::File::open(dir.join(prefix))
                .and_then(|d| d.sync_all())
                .map_err(|e| Failure::invalid(format!("syncing {}: {e}", self.show(prefix)))),
            Self::Bucket { .. } => Ok(()),
        }
    }

    /// Takes the mirror's lock on this place: a folder's `mirror/lock` is
    /// locked for as long as the returned guard lives; a bucket's is an
    /// object created only if absent, which [`Lock::refresh`] keeps fresh
    /// and [`Lock::release`] removes (one left by a killed mirror is taken
    /// over once it is [`layout::MIRROR_LOCK_STALE`] old).
    ///
    /// # Errors
    /// Invalid when another mirror holds it, or a running registry writes
    /// the folder.
    pub async fn lock(&self) -> Outcome<Lock> {
        match self {
            Self::Folder(dir) => lock_folder(dir).map(|f| Lock::Folder { _held: f }),
            Self::Bucket { store, .. } => {
                let key = Key::from(layout::MIRROR_LOCK);
                let body = Bytes::from(format!(
                    "stackpin mirror, process {}, since {}\n",
                    std::process::id(),
                    stackpin_core::time::Timestamp::now()
                ));
                let create = PutOptions {
                    mode: PutMode::Create,
                    ..PutOptions::default()
                };
                match store.put_opts(&key, body.clone().into(), create).await {
                    Ok(_) => return Ok(self.bucket_lock()),
                    Err(object_store::Error::AlreadyExists { .. }) => {}
                    Err(e) => return Err(self.unavailable(layout::MIRROR_LOCK, e)),
                }
                let held = store
                    .head(&key)
                    .await
                    .map_err(|e| self.unavailable(layout::MIRROR_LOCK, e))?;
                let age = (jiff::Timestamp::now().as_millisecond()
                    - held.last_modified.timestamp_millis())
                .max(0);
                if u64::try_from(age).unwrap_or(0) < layout::MIRROR_LOCK_STALE.as_millis() as u64 {
                    return Err(Failure::invalid(format!(
                        "another `stackpin mirror` is copying into {} (it refreshed {} {}s ago; \
                         a lock left unrefreshed for {}s is taken over)",
                        self.name(),
                        self.show(layout::MIRROR_LOCK),
                        age / 1000,
                        layout::MIRROR_LOCK_STALE.as_secs()
                    )));
                }
                eprintln!(
                    "mirror: {} was last refreshed {}s ago; taking it over",
                    self.show(layout::MIRROR_LOCK),
                    age / 1000
                );
                self.put(layout::MIRROR_LOCK, body).await?;
                Ok(self.bucket_lock())
            }
        }
    }

    /// The hold on this bucket's lock, let go of even if the command is
    /// interrupted.
    fn bucket_lock(&self) -> Lock {
        let place = self.clone();
        let token = crate::on_interrupt(async move {
            let _ = place.remove(layout::MIRROR_LOCK).await;
        });
        // Refreshed on a timer, not only between rounds: a round of any
        // length keeps its lock.
        let place = self.clone();
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH_EVERY).await;
                refresh(&place).await;
            }
        });
        Lock::Bucket(self.clone(), token, refresher.abort_handle())
    }
}

/// A mirror's hold on its destination.
pub enum Lock {
    /// Locked for as long as it is held.
    Folder { _held: std::fs::File },
    /// The bucket, the token of the work that lets go of the lock if the
    /// command is interrupted, and the task refreshing it.
    Bucket(Place, u64, tokio::task::AbortHandle),
}

/// How often a bucket's mirror lock is refreshed while held.
const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// Rewrites the bucket's mirror lock with the time.
async fn refresh(place: &Place) {
    let body = Bytes::from(format!(
        "stackpin mirror, process {}, refreshed {}\n",
        std::process::id(),
        stackpin_core::time::Timestamp::now()
    ));
    if let Err(e) = place.put(layout::MIRROR_LOCK, body).await {
        eprintln!("mirror: refreshing the lock failed: {:#}", e.error);
    }
}

impl Lock {
    /// Shows the lock is still held: a bucket's object is rewritten (a
    /// folder's is held by the process, which `stackpin-registry promote`
    /// tries).
    pub async fn refresh(&self) {
        if let Lock::Bucket(place, ..) = self {
            refresh(place).await;
        }
    }

    /// Lets the lock go.
    pub async fn release(self) {
        if let Lock::Bucket(place, token, refresher) = &self {
            refresher.abort();
            crate::disarm(*token);
            if let Err(e) = place.remove(layout::MIRROR_LOCK).await {
                eprintln!("mirror: removing the lock failed: {:#}", e.error);
            }
        }
    }
}

/// Holds `DEST/mirror/lock` for as long as the mirror runs: two mirrors
/// into one folder would set aside each other's uncommitted objects. A
/// folder a registry writes (it holds `registry.lock`) is refused too.
fn lock_folder(dest: &Path) -> Outcome<std::fs::File> {
    let taken = |path: &Path| -> Outcome<Option<std::fs::File>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Failure::invalid(format!("locking {}: {e}", path.display())))
            }
        }
    };
    let registry = dest.join("registry.lock");
    if registry.exists() && taken(&registry)?.is_none() {
        return Err(Failure::invalid(format!(
            "{} is the data folder of a running registry (it holds {}): a mirror is a folder of \
             its own",
            dest.display(),
            registry.display()
        )));
    }
    let path = dest.join(layout::MIRROR_LOCK);
    std::fs::create_dir_all(dest.join("mirror"))
        .map_err(|e| Failure::invalid(format!("{}: {e}", dest.display())))?;
    let file = taken(&path)?.ok_or_else(|| {
        Failure::invalid(format!(
            "another `stackpin mirror` is copying into {} (it holds {})",
            dest.display(),
            path.display()
        ))
    })?;
    Ok(file)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_stop_at_their_cap_in_folders_and_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = Place::Bucket {
            url: "s3://test".to_owned(),
            store: Arc::new(object_store::memory::InMemory::new()),
        };
        for place in [Place::Folder(dir.path().to_owned()), bucket] {
            let note = Bytes::from(vec![b'x'; 100]);
            place
                .put(layout::CHECKPOINT, note.clone())
                .await
                .ok()
                .unwrap();
            assert_eq!(
                place.get(layout::CHECKPOINT, 100).await.ok().unwrap(),
                Some(note)
            );
            let over = place.get(layout::CHECKPOINT, 99).await.unwrap_err();
            assert_eq!(over.code, crate::exit::VERIFY);
            assert!(
                format!("{:#}", over.error).contains("100 bytes, more than the 99"),
                "{:#}",
                over.error
            );
            assert_eq!(place.get("log/none", 99).await.ok().unwrap(), None);

            let digest = Digest::of(b"artifact");
            let bytes = Bytes::from_static(b"artifact");
            place
                .put(&layout::blob_key(&digest), bytes.clone())
                .await
                .ok()
                .unwrap();
            let refused = place.artifact(&digest, 7).await.unwrap_err();
            assert_eq!(refused.code, crate::exit::INVALID);
            assert!(format!("{:#}", refused.error).contains("--max-download"));
            assert_eq!(place.artifact(&digest, 8).await.ok().unwrap(), Some(bytes));
        }
    }
}
