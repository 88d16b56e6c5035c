//! The registry's state machine: validates requests against the applied log,
//! appends entries, and answers queries from the index.
//!
//! Writes follow the log discipline of DESIGN.md "Appending": a writer holds
//! the append lock, validates against everything applied so far, creates the
//! next entry with `PutMode::Create`, and applies it to the index before the
//! request is acknowledged. If another writer won the index, it catches up
//! and validates again.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutMode, PutOptions};
use tokio::sync::{mpsc, oneshot, watch};

use crate::blobs::Blobs;
use crate::committer::{self, Build, Msg, Target as _};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Kind, Result};
use crate::ids::{EnvName, Reason, ReleaseId};
use crate::index::{ArtifactRecord, Index, PinRecord};
use crate::log::{Entry, KeyAction, KeyEntry, Log, PinEntry, PublishEntry};
use crate::merkle::{self, Hash};
use crate::note::{Checkpoint, NoteSigner};
use crate::position::{DbPosition, Ordered};
use crate::proof::ProvedEntry;
use crate::signing::{self, Attestation, KeyId, PublicKey, TrustedKeys};
use crate::time::{Clock, SystemClock, Timestamp};
use crate::timeline::{self, Resolution};
use stackpin_core::state::{self, Rules, State as _};

/// Default largest artifact: 64 MiB.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 64 * 1024 * 1024;
/// Default allowed clock skew for reported activations.
pub const DEFAULT_CLOCK_SKEW: Duration = stackpin_core::state::DEFAULT_CLOCK_SKEW;
/// Default margin around a switch within which resolve names both candidates.
pub const DEFAULT_BOUNDARY_MARGIN: Duration = Duration::from_secs(2);
/// Largest page of history or artifacts.
pub const MAX_PAGE: usize = 1000;
/// Page size when the request leaves it unset.
pub const DEFAULT_PAGE: usize = 100;
/// The identity recorded for unauthenticated requests.
pub const ANONYMOUS: &str = "anonymous";

/// Tunables of the state machine.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest artifact accepted, in bytes.
    pub max_artifact_bytes: u64,
    /// How far in the future a reported activation may lie.
    pub clock_skew: Duration,
    /// Default margin for "near a switch" in resolve.
    pub boundary_margin: Duration,
    /// How often the log is polled for other replicas' entries.
    pub poll_interval: Duration,
    /// Most requests committed as one log object (1 disables group commit).
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            clock_skew: DEFAULT_CLOCK_SKEW,
            boundary_margin: DEFAULT_BOUNDARY_MARGIN,
            poll_interval: Duration::from_millis(500),
            max_batch: committer::MAX_BATCH,
        }
    }
}

/// An artifact named by release id or digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactRef {
    Release(ReleaseId),
    Digest(Digest),
}

/// A publish whose header was accepted and whose bytes are arriving.
#[derive(Debug)]
pub struct PendingPublish {
    attestation: Attestation,
    media_type: String,
    envelope: serde_json::Value,
    max: u64,
    hasher: Hasher,
    bytes: Vec<u8>,
}

impl PendingPublish {
    /// Adds the next chunk of artifact bytes.
    ///
    /// # Errors
    /// TooLarge when the artifact grows past the limit.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        let total = self.bytes.len() as u64 + chunk.len() as u64;
        if total > self.max {
            return Err(Error::new(
                Kind::TooLarge,
                format!(
                    "artifact exceeds the registry's limit of {} bytes",
                    self.max
                ),
            ));
        }
        self.hasher.update(chunk);
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }
}

/// The outcome of a publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    pub artifact: ArtifactRecord,
    /// False when the same release id and bytes were already published.
    pub created: bool,
}

/// A page of history, newest first.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryPage {
    pub pins: Vec<PinRecord>,
    /// Sequence number to continue from, when more pins match.
    pub next: Option<u64>,
}

/// What a history query asks for.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    /// Only pins activated strictly before this instant.
    pub before: Option<Timestamp>,
    /// Only pins activated at or after this instant.
    pub since: Option<Timestamp>,
    /// Page size (0: the default).
    pub limit: usize,
    /// Continue from this sequence number (downwards).
    pub from_seq: Option<u64>,
}

/// A checkpoint signed by the registry's log key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub size: u64,
    pub root: Hash,
    /// The C2SP signed note.
    pub note: Arc<str>,
}

/// What a resolve asks for.
#[derive(Clone, Copy, Debug)]
pub enum Query {
    /// The pin live at an instant.
    At {
        at: Timestamp,
        margin: Option<Duration>,
    },
    /// The pin matching a database position.
    Position(Ordered),
}

/// What answering one request has read: entries (log index, bytes) and,
/// in the reader, blocks of hashes, so that its proofs need not read them
/// again.
struct Seen<'a> {
    entries: Vec<(u64, bytes::Bytes)>,
    reader: crate::index::ProofReader<'a>,
    /// Where the publish of the answer's release is, when the lookup
    /// found it on the way.
    published: Option<crate::index::EntryAt>,
}

impl<'a> Seen<'a> {
    fn new(index: &'a Index) -> Self {
        Self {
            entries: Vec::new(),
            reader: index.proof_reader(),
            published: None,
        }
    }
}

/// A resolve answer with the entries and proofs that make it checkable.
#[derive(Clone, Debug)]
pub struct ProvedResolution {
    pub resolution: Resolution,
    pub checkpoint: SignedCheckpoint,
    pub pin: ProvedEntry,
    pub next: Option<ProvedEntry>,
    pub publish: ProvedEntry,
}

/// Where a publisher key's trust comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `--trusted-keys` at start.
    Config,
    /// An add entry in the log.
    Log,
}

/// A publisher key and its validity.
#[derive(Clone, Debug, PartialEq)]
pub struct PublisherKey {
    pub key_id: KeyId,
    pub public_key_pem: String,
    pub source: KeySource,
    pub valid_from: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// The storage key of the latest checkpoint.
const CHECKPOINT_PATH: &str = stackpin_core::layout::CHECKPOINT;

/// The registry: the shared state plus the handle of the committer task
/// that performs every write. Reads go straight to [`Inner`].
pub struct Registry {
    inner: Arc<Inner>,
    commits: mpsc::Sender<Msg>,
}

impl std::ops::Deref for Registry {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// Everything the registry knows, shared by request handlers and the
/// committer task.
pub struct Inner {
    blobs: Blobs,
    log: Log,
    index: Index,
    /// The rules every entry is applied by: publisher keys from the
    /// configuration (the log can revoke them and add others) and the
    /// allowed clock skew.
    rules: Rules,
    clock: Arc<dyn Clock>,
    limits: Limits,
    /// Signs checkpoints as the log.
    signer: NoteSigner,
    /// The newest signed checkpoint, so readers do not sign per request.
    checkpoint: RwLock<Option<SignedCheckpoint>>,
    /// Hands new checkpoints to the task that stores `log/checkpoint`, off
    /// the request path; it coalesces bursts to the newest.
    checkpoint_tx: watch::Sender<Option<SignedCheckpoint>>,
    store: Arc<dyn ObjectStore>,
}

/// Where the embedded default keeps things inside its data folder.
pub fn index_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("index")
}

/// Opens (or creates) the sled index in `dir`; an unreadable index is
/// deleted and rebuilt from the log, which is the source of truth.
///
/// # Errors
/// Internal when even a fresh index cannot be created.
pub fn open_index(dir: &std::path::Path) -> Result<Index> {
    match Index::open(dir) {
        Ok(index) => Ok(index),
        Err(err) => {
            tracing::warn!(
                index = %dir.display(),
                error = %err,
                "the index cannot be used (damaged, short, or of another layout version); deleting it and rebuilding it from the log"
            );
            fresh_index(dir)
        }
    }
}

/// Deletes the index folder `dir`, without opening it first (an index
/// too damaged to open must not stop its own rebuild), and creates an
/// empty index in its place.
///
/// # Errors
/// Internal when the folder cannot be removed or a fresh index created.
fn fresh_index(dir: &std::path::Path) -> Result<Index> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::internal(format!(
                "removing index {}: {e}",
                dir.display()
            )));
        }
    }
    Index::open(dir)
}

/// Checks that the log objects in storage are exactly the ones the index
/// applied: none missing (a gap), none of a different size (truncated or
/// rewritten), nothing after the end. This reads only the listing, not the
/// objects, so it is cheap enough for every start.
///
/// # Errors
/// DataLoss naming the first object that does not match.
async fn verify_objects(log: &Log, index: &Index) -> Result<()> {
    let stored = log.objects().await?;
    let applied = index.objects()?;
    let hint = "restore log/entries from a backup of the storage before starting";
    let mut stored_iter = stored.iter().peekable();
    for (start, count, size) in &applied {
        match stored_iter.next() {
            Some((s, actual)) if s == start => {
                if actual != size {
                    return Err(Error::new(
                        Kind::DataLoss,
                        format!(
                            "log object {start} (entries {start}..{}) is {actual} bytes in storage but \
                             was {size} bytes when applied: it was truncated or altered; {hint}",
                            start + count
                        ),
                    ));
                }
            }
            Some((s, _)) if s > start => {
                return Err(Error::new(
                    Kind::DataLoss,
                    format!(
                        "log object {start} (entries {start}..{}) is missing from storage; {hint}",
                        start + count
                    ),
                ));
            }
            Some((s, _)) => {
                return Err(Error::new(
                    Kind::DataLoss,
                    format!(
                        "log object {s} in storage does not start at an entry boundary; {hint}"
                    ),
                ));
            }
            None => {
                return Err(Error::new(
                    Kind::DataLoss,
                    format!(
                        "log object {start} (entries {start}..{}) is missing from storage; {hint}",
                        start + count
                    ),
                ));
            }
        }
    }
    if let Some((s, _)) = stored_iter.next() {
        let size = index.applied()?;
        return Err(Error::new(
            Kind::DataLoss,
            format!(
                "log entry {size} is missing but later log objects exist (the first at {s}): the \
                 log was truncated or an entry deleted; {hint}"
            ),
        ));
    }
    Ok(())
}

/// Whether the index's tree matches the stored signed checkpoint (an index
/// damaged in a way sled does not notice computes another root). A missing
/// or unreadable checkpoint, or one newer than the index, proves nothing
/// either way.
async fn index_agrees_with_checkpoint(
    store: &Arc<dyn ObjectStore>,
    index: &Index,
    signer: &NoteSigner,
) -> bool {
    use object_store::ObjectStoreExt as _;
    let Ok(applied) = index.applied() else {
        return false;
    };
    if index.objects().is_err() {
        return false;
    }
    let note = match store.get(&StorePath::from(CHECKPOINT_PATH)).await {
        Ok(r) => match r.bytes().await {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(_) => return true,
        },
        Err(_) => return true,
    };
    let Ok(cp) = Checkpoint::open(&note, &signer.verifier()) else {
        return true;
    };
    if cp.size > applied {
        return true;
    }
    matches!(merkle::root(index, cp.size), Ok(root) if root == cp.root)
}

/// A fresh request id, stored in the entry a request writes.
fn request_id() -> String {
    let mut bytes = [0u8; 12];
    // Randomness only makes ids unique; a failure falls back to the clock.
    if getrandom::fill(&mut bytes).is_err() {
        bytes[..8].copy_from_slice(&Timestamp::now().as_micros().to_be_bytes());
    }
    hex::encode(bytes)
}

impl Registry {
    /// Opens a registry over `store` and `index`, catching the index up with
    /// the log, and starts its committer task (tailing every `poll`).
    ///
    /// # Errors
    /// Unavailable when storage is unreachable; DataLoss when the log is
    /// damaged (an entry unreadable, or a gap before later entries).
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        index: Index,
        trusted: TrustedKeys,
        signer: NoteSigner,
        limits: Limits,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let (checkpoint_tx, checkpoint_rx) = watch::channel(None);
        let inner = Arc::new(Inner {
            blobs: Blobs::new(store.clone()),
            log: Log::new(store.clone()),
            index,
            rules: Rules {
                configured: trusted,
                clock_skew: limits.clock_skew,
            },
            clock,
            limits,
            signer,
            checkpoint: RwLock::new(None),
            checkpoint_tx,
            store: store.clone(),
        });
        let from = inner.index.applied()?;
        let started = Instant::now();
        let applied = committer::catch_up(&inner.log, &inner.index, &inner.rules).await?;
        if applied > 0 {
            tracing::info!(
                from,
                entries = applied,
                seconds = started.elapsed().as_secs_f64(),
                "index caught up with the log"
            );
        }
        verify_objects(&inner.log, &inner.index).await?;
        tokio::spawn(store_checkpoints(store, checkpoint_rx));
        inner.committed();
        let (commits, rx) = mpsc::channel(4 * committer::MAX_BATCH);
        tokio::spawn(committer::run(
            inner.clone(),
            rx,
            inner.limits.poll_interval,
            inner.limits.max_batch,
        ));
        Ok(Self { inner, commits })
    }

    /// Opens a registry on `data_dir` for the index and `store` for the data.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub async fn open_at(
        data_dir: &std::path::Path,
        store: Arc<dyn ObjectStore>,
        trusted: TrustedKeys,
        signer: NoteSigner,
        limits: Limits,
    ) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            Error::new(
                Kind::Unavailable,
                format!("creating data folder {}: {e}", data_dir.display()),
            )
        })?;
        let dir = index_dir(data_dir);
        let mut index = open_index(&dir)?;
        if !index_agrees_with_checkpoint(&store, &index, &signer).await {
            tracing::warn!(
                index = %dir.display(),
                "the index disagrees with the log's signed checkpoint; deleting it and \
                 rebuilding it from the log"
            );
            drop(index);
            index = fresh_index(&dir)?;
        }
        let had_state = index.applied()? > 0;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        match Self::open(
            store.clone(),
            index,
            trusted.clone(),
            signer.clone(),
            limits.clone(),
            clock.clone(),
        )
        .await
        {
            Err(e) if had_state && matches!(e.kind(), Kind::DataLoss | Kind::Internal) => {
                // Either the log or the index is damaged: a fresh index
                // built from the log alone tells which.
                tracing::warn!(
                    error = %e,
                    "opening failed with the existing index; rebuilding the index from the log"
                );
                let index = fresh_index(&dir)?;
                Self::open(store, index, trusted, signer, limits, clock).await
            }
            other => other,
        }
    }

    async fn commit(&self, build: Build) -> Result<Option<u64>> {
        let (tx, rx) = oneshot::channel();
        self.commits
            .send(Msg::Write(build, tx))
            .await
            .map_err(|_| Error::internal("the committer has stopped"))?;
        rx.await
            .map_err(|_| Error::internal("the committer dropped a request"))?
    }

    /// Entries `start..end`, in order, reading each log object once. An
    /// entry that cannot be served is an error item; the stream goes on
    /// with the next entry.
    pub fn entries(
        &self,
        start: u64,
        end: u64,
    ) -> impl futures::Stream<Item = (u64, Result<Bytes>)> + Send + 'static {
        let registry = self.inner.clone();
        futures::stream::unfold(
            (start, std::collections::VecDeque::new()),
            move |(index, mut read): (u64, std::collections::VecDeque<Bytes>)| {
                let registry = registry.clone();
                async move {
                    if index >= end {
                        return None;
                    }
                    if read.is_empty() {
                        match registry.entries_from(index).await {
                            Ok(entries) => read.extend(entries),
                            Err(e) => return Some(((index, Err(e)), (index + 1, read))),
                        }
                    }
                    let entry = read.pop_front()?;
                    Some(((index, Ok(entry)), (index + 1, read)))
                }
            },
        )
    }

    /// Whether the committer task still runs: when it has stopped, every
    /// write fails, and health says so.
    pub fn accepts_writes(&self) -> bool {
        !self.commits.is_closed()
    }

    /// Catches up with entries other replicas wrote, before a fresh read.
    ///
    /// # Errors
    /// Unavailable when storage fails.
    pub async fn sync(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commits
            .send(Msg::Sync(tx))
            .await
            .map_err(|_| Error::internal("the committer has stopped"))?;
        rx.await
            .map_err(|_| Error::internal("the committer dropped a request"))?
    }

    /// Flushes the index to disk and stores the latest checkpoint (at
    /// shutdown).
    ///
    /// # Errors
    /// Internal when sled fails; Unavailable when storage fails.
    pub async fn flush(&self) -> Result<()> {
        self.index.flush().await?;
        let cp = self.checkpoint()?;
        put_checkpoint(&self.store, &cp).await
    }

    /// Finishes a publish once all bytes arrived: checks them against the
    /// envelope, stores the blob, and logs the binding.
    ///
    /// # Errors
    /// Invalid for empty or non-JSON bytes or a digest other than the signed
    /// one; Conflict when the release id got bound to other bytes;
    /// Precondition when the key was revoked meanwhile; Unavailable when
    /// storage fails.
    pub async fn finish_publish(&self, pending: PendingPublish) -> Result<Published> {
        let PendingPublish {
            attestation,
            media_type,
            envelope,
            hasher,
            bytes,
            ..
        } = pending;
        if bytes.is_empty() {
            return Err(Error::invalid("artifact is empty"));
        }
        let digest = hasher.finish();
        if digest != attestation.digest {
            return Err(Error::invalid(format!(
                "the received bytes hash to {digest}, but the envelope is signed for {}",
                attestation.digest
            )));
        }
        // Parsing a whole artifact takes milliseconds: off the runtime.
        let bytes = crate::blocking::run(move || {
            match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                Ok(_) => Ok(bytes),
                Err(e) => Err(Error::invalid(format!(
                    "artifact is not valid JSON (objectstack.json must be JSON): {e}"
                ))),
            }
        })
        .await?;
        let release_id = attestation.release_id.clone();
        if let Some(existing) = self.index.artifact_by_release(&release_id)? {
            return same_or_conflict(existing, &digest);
        }
        let size = bytes.len() as u64;
        self.blobs.put(&digest, Bytes::from(bytes)).await?;
        let inner = self.inner.clone();
        let rid = release_id.clone();
        let request = request_id();
        let committed = self
            .commit(Box::new(move |view| {
                if view.release(&rid)?.is_some() {
                    return Ok(None); // bound meanwhile: answered below
                }
                // The rules check that the key is still valid at the
                // instant the entry is logged.
                let now = inner.clock.now();
                Ok(Some(Entry::Publish(PublishEntry {
                    release_id: rid.clone(),
                    digest,
                    size,
                    media_type: media_type.clone(),
                    key_id: attestation.key_id.clone(),
                    envelope: envelope.clone(),
                    recorded_at: now,
                    request_id: Some(request.clone()),
                })))
            }))
            .await?;
        let artifact = self
            .index
            .artifact_by_release(&release_id)?
            .ok_or_else(|| Error::internal("published artifact is missing from the index"))?;
        match committed {
            Some(index) => {
                tracing::info!(release_id = %release_id, %digest, size, index, "published");
                metrics::counter!("stackpin_published_bytes_total").increment(size);
                Ok(Published {
                    artifact,
                    created: true,
                })
            }
            None => same_or_conflict(artifact, &digest),
        }
    }

    /// Records that `artifact` went live in `env`.
    ///
    /// # Errors
    /// NotFound for an unknown artifact; Precondition for an out-of-order
    /// or future activation; Unavailable when storage fails.
    pub async fn pin(
        &self,
        env: &EnvName,
        artifact: &ArtifactRef,
        activated_at: Option<Timestamp>,
        db_position: Option<DbPosition>,
        reason: &Reason,
        actor: &str,
    ) -> Result<PinRecord> {
        let target = self.artifact(artifact)?;
        let inner = self.inner.clone();
        let (env2, reason, actor, request) = (
            env.clone(),
            reason.as_str().to_owned(),
            actor.to_owned(),
            request_id(),
        );
        let committed = self
            .commit(Box::new(move |view| {
                // The rules check order, skew and positions.
                let head = view.env_head(&env2)?;
                let now = inner.clock.now();
                let at = timeline::activation(head.as_ref(), activated_at, now);
                Ok(Some(Entry::Pin(PinEntry {
                    env: env2.clone(),
                    seq: head.as_ref().map_or(1, |h| h.seq + 1),
                    release_id: target.release_id.clone(),
                    digest: target.digest,
                    activated_at: at,
                    recorded_at: now,
                    actor: actor.clone(),
                    reason: reason.clone(),
                    prev_pin: head.map(|h| h.entry_hash),
                    db_position: db_position.clone(),
                    request_id: Some(request.clone()),
                })))
            }))
            .await?
            .ok_or_else(|| Error::internal("a pin produced no log entry"))?;
        let pin = self
            .index
            .pin_at_index(env, committed)?
            .ok_or_else(|| Error::internal("new pin is missing from the index"))?;
        tracing::info!(
            env = %env, seq = pin.seq, release_id = %pin.release_id,
            activated_at = %pin.activated_at, index = committed, "pinned"
        );
        Ok(pin)
    }

    /// Trusts a publisher key for publishes logged from `valid_from` (default
    /// now) on.
    ///
    /// # Errors
    /// Invalid for a malformed key; Conflict when the key is already known.
    pub async fn add_key(
        &self,
        pem: &str,
        valid_from: Option<Timestamp>,
        reason: &Reason,
        actor: &str,
    ) -> Result<PublisherKey> {
        let key = PublicKey::from_pem(pem)?;
        let pem = key.to_pem()?;
        let inner = self.inner.clone();
        let id = key.id().clone();
        let (reason, actor, request) = (reason.as_str().to_owned(), actor.to_owned(), request_id());
        self.commit(Box::new(move |_view| {
            // A key the log knows already is refused by the rules.
            if inner.rules.configured.keys().iter().any(|k| k.id() == &id) {
                return Err(Error::conflict(format!(
                    "publisher key {id} is already known; a revoked key cannot be added again"
                )));
            }
            let now = inner.clock.now();
            Ok(Some(Entry::Key(KeyEntry {
                action: KeyAction::Add,
                key_id: id.clone(),
                public_key: Some(pem.clone()),
                at: valid_from.unwrap_or(now),
                recorded_at: now,
                actor: actor.clone(),
                reason: reason.clone(),
                request_id: Some(request.clone()),
            })))
        }))
        .await?;
        tracing::info!(key_id = %key.id(), "publisher key added");
        self.key_view(key.id())
    }

    /// Stops trusting a publisher key for publishes logged from `at`
    /// (default now) on; earlier publishes keep verifying.
    ///
    /// # Errors
    /// NotFound for an unknown key; Conflict when it is already revoked.
    pub async fn revoke_key(
        &self,
        key_id: &KeyId,
        at: Option<Timestamp>,
        reason: &Reason,
        actor: &str,
    ) -> Result<PublisherKey> {
        let inner = self.inner.clone();
        let id = key_id.clone();
        let (reason, actor, request) = (reason.as_str().to_owned(), actor.to_owned(), request_id());
        self.commit(Box::new(move |view| {
            // A second revocation is refused by the rules.
            let configured = inner.rules.configured.keys().iter().any(|k| k.id() == &id);
            if view.key(&id)?.is_none() && !configured {
                return Err(Error::not_found(format!("publisher key {id} is not known")));
            }
            let now = inner.clock.now();
            Ok(Some(Entry::Key(KeyEntry {
                action: KeyAction::Revoke,
                key_id: id.clone(),
                public_key: None,
                at: at.unwrap_or(now),
                recorded_at: now,
                actor: actor.clone(),
                reason: reason.clone(),
                request_id: Some(request.clone()),
            })))
        }))
        .await?;
        tracing::info!(%key_id, "publisher key revoked");
        self.key_view(key_id)
    }
}

impl committer::Target for Inner {
    fn log(&self) -> &Log {
        &self.log
    }

    fn index(&self) -> &Index {
        &self.index
    }

    fn rules(&self) -> &Rules {
        &self.rules
    }

    fn committed(&self) {
        match self.checkpoint() {
            Ok(cp) => {
                metrics::gauge!("stackpin_log_entries").set(cp.size as f64);
                self.checkpoint_tx.send_replace(Some(cp));
            }
            Err(e) => tracing::warn!(error = %e, "signing a checkpoint failed"),
        }
    }
}

impl Inner {
    /// The object store everything lives in.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The log's verifier key, in the signed-note vkey form.
    pub fn log_vkey(&self) -> String {
        self.signer.vkey()
    }

    /// A signed checkpoint of everything applied so far.
    ///
    /// # Errors
    /// Internal when the index fails.
    pub fn checkpoint(&self) -> Result<SignedCheckpoint> {
        let size = self.index.applied()?;
        if let Some(cp) = self.cached_checkpoint()
            && cp.size >= size
        {
            return Ok(cp);
        }
        let root = merkle::root(&self.index, size)?;
        let body = Checkpoint {
            origin: self.signer.name().to_owned(),
            size,
            root,
        }
        .body();
        let cp = SignedCheckpoint {
            size,
            root,
            note: self.signer.sign(&body).into(),
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

    fn cached_checkpoint(&self) -> Option<SignedCheckpoint> {
        self.checkpoint
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The stored bytes of entry `index`, checked against the leaf hash the
    /// index recorded when the entry was applied.
    ///
    /// # Errors
    /// NotFound past the end of the log; DataLoss when the stored bytes
    /// changed or vanished; Unavailable when storage fails.
    pub async fn entry(&self, index: u64) -> Result<Bytes> {
        let mut entries = self.entries_from(index).await?;
        Ok(entries.swap_remove(0))
    }

    /// Entry `index` and the entries after it in the same log object, each
    /// checked against its logged hash: one storage read for a whole group
    /// commit. Stops before the first entry that fails its check (asking
    /// for that one then names it).
    ///
    /// # Errors
    /// As [`Self::entry`], for entry `index`.
    async fn entries_from(&self, index: u64) -> Result<Vec<Bytes>> {
        let size = self.index.applied()?;
        if index >= size {
            return Err(Error::not_found(format!(
                "log entry {index} does not exist (the log has {size} entries)"
            )));
        }
        let missing = || {
            Error::new(
                Kind::DataLoss,
                format!("log entry {index} is missing from storage"),
            )
        };
        let (start, _) = self.index.object_of(index)?.unwrap_or((index, 1));
        let object = self.log.read(start).await?.ok_or_else(missing)?;
        let skip = usize::try_from(index - start).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        for (at, bytes) in (start..size).zip(Log::split(&object)).skip(skip) {
            if merkle::leaf_hash(&bytes) != self.index.node(0, at)? {
                if out.is_empty() {
                    return Err(Error::new(
                        Kind::DataLoss,
                        format!(
                            "log entry {at} in storage no longer matches its logged hash; it will not be served"
                        ),
                    ));
                }
                break;
            }
            out.push(bytes);
        }
        if out.is_empty() {
            return Err(missing());
        }
        Ok(out)
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    ///
    /// # Errors
    /// Invalid when `index >= size` or `size` is beyond the log.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        self.inclusion_proof_from(&self.index.proof_reader(), index, size)
    }

    fn inclusion_proof_from<S: merkle::NodeSource<Error = Error>>(
        &self,
        src: &S,
        index: u64,
        size: u64,
    ) -> Result<Vec<Hash>> {
        let applied = self.index.applied()?;
        if index >= size || size > applied {
            return Err(Error::invalid(format!(
                "no inclusion proof for entry {index} in a tree of {size}: need index < size <= {applied}"
            )));
        }
        merkle::inclusion_proof(src, index, size).map_err(proof_error)
    }

    /// The consistency proof between trees of `old` and `new` entries.
    ///
    /// # Errors
    /// Invalid unless `0 < old <= new <= size of the log`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        let applied = self.index.applied()?;
        if old == 0 || old > new || new > applied {
            return Err(Error::invalid(format!(
                "no consistency proof from {old} to {new}: need 0 < old <= new <= {applied}"
            )));
        }
        merkle::consistency_proof(&self.index, old, new).map_err(proof_error)
    }

    /// An entry with its inclusion proof. Fresh reads go to storage (and so
    /// notice a damaged stored entry); others use the index's verified copy,
    /// which keeps the hot resolve path off storage.
    async fn proved(
        &self,
        index: u64,
        size: u64,
        fresh: bool,
        seen: &Seen<'_>,
    ) -> Result<ProvedEntry> {
        // The entry's leaf check and its proof read the same block of
        // hashes, through the request's reader.
        let reader = &seen.reader;
        let cached = if fresh {
            None
        } else if let Some((_, bytes)) = seen.entries.iter().find(|(i, _)| *i == index) {
            Some(bytes.clone())
        } else {
            reader.entry(index)?
        };
        let entry = match cached {
            Some(bytes) => bytes,
            None => self.entry(index).await?,
        };
        Ok(ProvedEntry {
            index,
            entry,
            proof: self.inclusion_proof_from(reader, index, size)?,
        })
    }

    /// Resolves and attaches the checkpoint, the pin entry, the next pin's
    /// entry and the publish entry, each with its inclusion proof.
    ///
    /// # Errors
    /// As [`Self::resolve`], plus DataLoss when a stored entry changed.
    pub async fn resolve_proved(
        &self,
        env: &EnvName,
        query: &Query,
        fresh: bool,
    ) -> Result<ProvedResolution> {
        let mut seen = Seen::new(&self.index);
        let resolution = match query {
            Query::At { at, margin } => self.resolve_at(env, *at, *margin, &mut seen)?,
            Query::Position(target) => self.resolve_by_position(env, *target, &mut seen)?,
        };
        let release = &resolution.pin.release_id;
        let published = match seen.published {
            Some(p) => p,
            None => self.index.artifact_entry(release)?.ok_or_else(|| {
                Error::internal(format!(
                    "index lacks the publish of pinned release {release}"
                ))
            })?,
        };
        if !fresh && let Some(bytes) = seen.reader.entry_at(published)? {
            seen.entries.push((published.index, bytes));
        }
        // The checkpoint is taken after the lookup, so it covers every entry
        // the answer names.
        let checkpoint = self.checkpoint()?;
        let size = checkpoint.size;
        let pin = self
            .proved(resolution.pin.log_index, size, fresh, &seen)
            .await?;
        let next = match &resolution.next {
            Some(n) => Some(self.proved(n.log_index, size, fresh, &seen).await?),
            None => None,
        };
        let publish = self.proved(published.index, size, fresh, &seen).await?;
        Ok(ProvedResolution {
            resolution,
            checkpoint,
            pin,
            next,
            publish,
        })
    }

    /// Every publisher key, configured or logged, with its validity.
    ///
    /// # Errors
    /// Internal when the index fails.
    pub fn keys(&self) -> Result<Vec<PublisherKey>> {
        let records = self.index.keys()?;
        let mut out = Vec::new();
        for k in self.rules.configured.keys() {
            let rec = records.iter().find(|r| &r.key_id == k.id());
            out.push(PublisherKey {
                key_id: k.id().clone(),
                public_key_pem: k.to_pem()?,
                source: KeySource::Config,
                valid_from: None,
                revoked_at: rec.and_then(|r| r.revoked_at),
            });
        }
        for r in records {
            if let Some(pem) = r.public_key.filter(|_| r.added_at_index.is_some()) {
                if out.iter().any(|k| k.key_id == r.key_id) {
                    continue;
                }
                out.push(PublisherKey {
                    key_id: r.key_id,
                    public_key_pem: pem,
                    source: KeySource::Log,
                    valid_from: r.valid_from,
                    revoked_at: r.revoked_at,
                });
            }
        }
        Ok(out)
    }

    fn key_view(&self, key_id: &KeyId) -> Result<PublisherKey> {
        self.keys()?
            .into_iter()
            .find(|k| &k.key_id == key_id)
            .ok_or_else(|| Error::internal(format!("key {key_id} vanished from the index")))
    }

    /// The state-machine tunables.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Accepts a publish header: checks the names and the envelope's
    /// signature before any bytes are received.
    ///
    /// # Errors
    /// Invalid for bad names or a bad or untrusted envelope; TooLarge when the
    /// announced size is over the limit; Conflict when the release id is
    /// already bound to another digest.
    pub fn begin_publish(
        &self,
        release_id: &str,
        media_type: &str,
        envelope: &[u8],
        size_hint: u64,
    ) -> Result<PendingPublish> {
        let release_id: ReleaseId = release_id.parse()?;
        let media_type = parse_media_type(media_type)?;
        if size_hint > self.limits.max_artifact_bytes {
            return Err(Error::new(
                Kind::TooLarge,
                format!(
                    "artifact is {size_hint} bytes; the registry's limit is {} bytes",
                    self.limits.max_artifact_bytes
                ),
            ));
        }
        let trusted = state::valid_keys(&self.rules, &self.index.keys()?, self.clock.now());
        if trusted.is_empty() {
            return Err(Error::precondition(
                "this registry has no valid publisher keys (none configured, or all revoked): \
                 start it with --trusted-keys or add one with `stackpin key add`",
            ));
        }
        let attestation = signing::verify_envelope(envelope, &trusted)?;
        if attestation.release_id != release_id {
            return Err(Error::invalid(format!(
                "the envelope's subject is release {}, but this publish is for release {release_id}",
                attestation.release_id
            )));
        }
        if let Some(existing) = self.index.artifact_by_release(&release_id)?
            && existing.digest != attestation.digest
        {
            return Err(conflict(&existing));
        }
        let envelope = serde_json::from_slice(envelope)
            .map_err(|e| Error::invalid(format!("DSSE envelope is not valid JSON: {e}")))?;
        let capacity = usize::try_from(size_hint.min(self.limits.max_artifact_bytes)).unwrap_or(0);
        Ok(PendingPublish {
            attestation,
            media_type,
            envelope,
            max: self.limits.max_artifact_bytes,
            hasher: Hasher::default(),
            bytes: Vec::with_capacity(capacity),
        })
    }

    /// Looks an artifact up.
    ///
    /// # Errors
    /// NotFound when nothing is published under the name.
    pub fn artifact(&self, what: &ArtifactRef) -> Result<ArtifactRecord> {
        match what {
            ArtifactRef::Release(r) => self
                .index
                .artifact_by_release(r)?
                .ok_or_else(|| Error::not_found(format!("release {r} is not published"))),
            ArtifactRef::Digest(d) => self.index.artifact_by_digest(d)?.ok_or_else(|| {
                Error::not_found(format!("no artifact with digest {d} is published"))
            }),
        }
    }

    /// The verified bytes of a published artifact.
    ///
    /// # Errors
    /// DataLoss when the stored bytes no longer match; Unavailable when
    /// storage fails.
    pub async fn artifact_bytes(&self, artifact: &ArtifactRecord) -> Result<Bytes> {
        self.blobs.get(&artifact.digest).await
    }

    /// Artifacts in release id order, after `after`.
    ///
    /// # Errors
    /// Internal when the index fails.
    pub fn list_artifacts(
        &self,
        after: Option<&ReleaseId>,
        limit: usize,
    ) -> Result<(Vec<ArtifactRecord>, Option<ReleaseId>)> {
        let limit = page_size(limit);
        let mut page = self.index.list_artifacts(after, limit + 1)?;
        let more = page.len() > limit;
        page.truncate(limit);
        let next = if more {
            page.last().map(|a| a.release_id.clone())
        } else {
            None
        };
        Ok((page, next))
    }

    fn known_env(&self, env: &EnvName) -> Result<crate::index::EnvHead> {
        self.index
            .env_head(env)?
            .ok_or_else(|| Error::not_found(format!("environment {env} has no pins")))
    }

    fn pin_at(&self, env: &EnvName, seq: u64) -> Result<PinRecord> {
        self.index
            .pin(env, seq)?
            .ok_or_else(|| Error::internal(format!("index lacks pin #{seq} of {env}")))
    }

    /// Pin `seq` of `env`, keeping its entry's bytes in `seen`.
    fn pin_seen(&self, env: &EnvName, seq: u64, seen: &mut Seen<'_>) -> Result<PinRecord> {
        self.find_pin_seen(env, seq, seen)?
            .ok_or_else(|| Error::internal(format!("index lacks pin #{seq} of {env}")))
    }

    /// As [`Self::pin_seen`], `None` when `env` has no pin `seq` (yet).
    fn find_pin_seen(
        &self,
        env: &EnvName,
        seq: u64,
        seen: &mut Seen<'_>,
    ) -> Result<Option<PinRecord>> {
        let Some((pin, entry)) = self.index.pin_with_entry(env, seq, &seen.reader)? else {
            return Ok(None);
        };
        seen.entries.push((pin.log_index, entry));
        Ok(Some(pin))
    }

    /// Which pin was live in `env` at `at`.
    ///
    /// # Errors
    /// NotFound when the environment has no pins or `at` precedes the first.
    pub fn resolve(
        &self,
        env: &EnvName,
        at: Timestamp,
        margin: Option<Duration>,
    ) -> Result<Resolution> {
        self.resolve_at(env, at, margin, &mut Seen::new(&self.index))
    }

    fn resolve_at(
        &self,
        env: &EnvName,
        at: Timestamp,
        margin: Option<Duration>,
        seen: &mut Seen<'_>,
    ) -> Result<Resolution> {
        let margin = margin.unwrap_or(self.limits.boundary_margin);
        let Some(slot) = self.index.live_at(env, at)? else {
            self.known_env(env)?;
            let first = self.pin_at(env, 1)?;
            return Err(Error::not_found(format!(
                "nothing was live in {env} at {at}: its first pin (#1, release {}) was activated \
                 at {}",
                first.release_id, first.activated_at
            )));
        };
        seen.published = Some(slot.published);
        let (pin, entry) = self.index.pin_entry_at(slot.pin, &seen.reader)?;
        seen.entries.push((pin.log_index, entry));
        // The previous pin matters only near the start of the interval.
        let prev = match slot.prev {
            Some(prev) if timeline::near_start(at, &pin, margin) => {
                Some(self.index.pin_entry_at(prev, &seen.reader)?.0)
            }
            _ => None,
        };
        let next = match slot.next {
            Some(next) => {
                let (next, entry) = self.index.pin_entry_at(next, &seen.reader)?;
                seen.entries.push((next.log_index, entry));
                Some(next)
            }
            None => None,
        };
        let near_switch = timeline::near_switch(at, prev.as_ref(), &pin, next.as_ref(), margin);
        Ok(Resolution {
            pin,
            next,
            near_switch,
            uncertain: None,
        })
    }

    /// Which pin matches database position `target`: the pin with the
    /// greatest recorded position of that kind at or below it. Pins without
    /// such a position are skipped, and the answer says when that makes it
    /// uncertain.
    ///
    /// # Errors
    /// NotFound when no pin of `env` recorded a position at or below `target`.
    pub fn resolve_position(&self, env: &EnvName, target: Ordered) -> Result<Resolution> {
        self.resolve_by_position(env, target, &mut Seen::new(&self.index))
    }

    fn resolve_by_position(
        &self,
        env: &EnvName,
        target: Ordered,
        seen: &mut Seen<'_>,
    ) -> Result<Resolution> {
        let head = self.known_env(env)?;
        let Some(seq) = self.index.seq_at_or_below_position(env, target)? else {
            return Err(Error::not_found(format!(
                "no pin of {env} recorded a {} at or below {target}",
                target.kind()
            )));
        };
        let pin = self.pin_seen(env, seq, seen)?;
        let next = if seq < head.seq {
            Some(self.pin_seen(env, seq + 1, seen)?)
        } else {
            None
        };
        // Pins after this one, up to the next that recorded a position of
        // this kind: any without one might have been live at the target.
        let mut unknown = Vec::new();
        let mut s = seq + 1;
        while s <= head.seq && unknown.len() < 16 {
            let later = self.pin_at(env, s)?;
            match later
                .db_position
                .as_ref()
                .map(|p| p.ordered())
                .transpose()?
                .flatten()
            {
                Some(o) if o.tag() == target.tag() => break,
                _ => unknown.push(format!("#{} ({})", later.seq, later.release_id)),
            }
            s += 1;
        }
        let uncertain = (!unknown.is_empty()).then(|| {
            format!(
                "later pins recorded no {}, so one of them may have been live at {target}: {}",
                target.kind(),
                unknown.join(", ")
            )
        });
        Ok(Resolution {
            pin,
            next,
            near_switch: None,
            uncertain,
        })
    }

    /// A page of `env`'s pins, newest first.
    ///
    /// # Errors
    /// NotFound for an environment without pins.
    pub fn history(&self, env: &EnvName, query: &HistoryQuery) -> Result<HistoryPage> {
        let head = self.known_env(env)?;
        let limit = page_size(query.limit);
        let empty = HistoryPage {
            pins: Vec::new(),
            next: None,
        };
        let mut hi = head.seq;
        if let Some(before) = query.before {
            match self.index.seq_before(env, before)? {
                Some(s) => hi = hi.min(s),
                None => return Ok(empty),
            }
        }
        if let Some(from) = query.from_seq {
            hi = hi.min(from);
        }
        let lo = match query.since {
            Some(since) => match self.index.seq_at_or_after(env, since)? {
                Some(s) => s,
                None => return Ok(empty),
            },
            None => 1,
        };
        let mut pins = Vec::new();
        let mut seq = hi;
        while seq >= lo && seq >= 1 && pins.len() < limit {
            pins.push(self.pin_at(env, seq)?);
            seq -= 1;
        }
        let next = (seq >= lo && seq >= 1).then_some(seq);
        Ok(HistoryPage { pins, next })
    }
}

fn proof_error(e: merkle::ProofError<Error>) -> Error {
    match e {
        merkle::ProofError::Range(why) => Error::invalid(why),
        merkle::ProofError::Source(e) => e,
    }
}

async fn put_checkpoint(store: &Arc<dyn ObjectStore>, cp: &SignedCheckpoint) -> Result<()> {
    let opts = PutOptions {
        mode: PutMode::Overwrite,
        ..PutOptions::default()
    };
    let bytes = Bytes::copy_from_slice(cp.note.as_bytes());
    store
        .put_opts(&StorePath::from(CHECKPOINT_PATH), bytes.into(), opts)
        .await?;
    Ok(())
}

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
/// spell at once, then at most one per [`STORE_CHECKPOINT_EVERY`], always the
/// newest. Ends when the registry is dropped.
async fn store_checkpoints(
    store: Arc<dyn ObjectStore>,
    mut rx: watch::Receiver<Option<SignedCheckpoint>>,
) {
    let mut stored = 0;
    while rx.changed().await.is_ok() {
        let Some(cp) = rx.borrow_and_update().clone() else {
            continue;
        };
        if cp.size <= stored && stored != 0 {
            continue;
        }
        match put_checkpoint(&store, &cp).await {
            Ok(()) => stored = cp.size,
            Err(e) => {
                tracing::warn!(size = cp.size, error = %e, "storing the checkpoint failed; it will be retried with the next one")
            }
        }
        tokio::time::sleep(STORE_CHECKPOINT_EVERY).await;
    }
}

fn page_size(requested: usize) -> usize {
    match requested {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

fn conflict(existing: &ArtifactRecord) -> Error {
    Error::conflict(format!(
        "release {} is already bound to {} (log entry {}); release ids are write-once, \
         publish the new bytes under a new release id",
        existing.release_id, existing.digest, existing.log_index
    ))
    .with_reason(state::reason::RELEASE_BOUND)
}

fn same_or_conflict(existing: ArtifactRecord, digest: &Digest) -> Result<Published> {
    if existing.digest == *digest {
        Ok(Published {
            artifact: existing,
            created: false,
        })
    } else {
        Err(conflict(&existing))
    }
}

fn parse_media_type(text: &str) -> Result<String> {
    if text.is_empty() {
        return Ok("application/json".to_owned());
    }
    let valid = text.len() <= 128
        && text.split_once('/').is_some_and(|(t, s)| {
            let part = |p: &str| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            part(t) && part(s)
        });
    if valid {
        Ok(text.to_owned())
    } else {
        Err(Error::invalid(format!(
            "media type {text:?} is not of the form type/subtype"
        )))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_index_too_damaged_to_open_is_replaced_without_opening_it() {
        let dir = tempfile::TempDir::new().unwrap();
        let index_dir = super::index_dir(dir.path());
        drop(super::Index::open(&index_dir).unwrap());
        // What sled cannot open: its files replaced by garbage.
        for entry in std::fs::read_dir(&index_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::write(&path, b"not sled").unwrap();
            }
        }
        std::fs::write(index_dir.join("damaged"), b"3").unwrap();
        assert!(super::Index::open(&index_dir).is_err());
        let fresh = super::fresh_index(&index_dir).unwrap();
        assert_eq!(fresh.applied().unwrap(), 0);
    }
}
