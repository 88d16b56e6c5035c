//! The registry's state machine: validates requests against the applied log,
//! appends entries, and answers queries from the index.
//!
//! Writes follow the log discipline of DESIGN.md "Appending": a writer holds
//! the append lock, validates against everything applied so far, creates the
//! next entry with `PutMode::Create`, and applies it to the index before the
//! request is acknowledged. If another writer won the index, it catches up
//! and validates again.

mod checkpoint;
mod evidence;
mod keys;
mod log_key;
mod once;
mod pin;
mod prove;
mod publish;
mod recover;
mod reload;
mod resolve;
mod standby;
mod tiles;
mod witnesses;

use checkpoint::put_checkpoint;
pub use checkpoint::{OriginSource, STORE_CHECKPOINT_EVERY, log_origin};
pub use evidence::{DrillRequest, SnapshotRequest};
pub use log_key::LogKey;
use log_key::read_only;
use once::reused;
pub use pin::PinRequest;
pub use publish::PendingPublish;
pub use recover::{LOCK_FILE, index_dir, open_index};
pub use standby::Standby;
pub use witnesses::{SUBMIT_EVERY, WitnessStatus, WitnessTarget};

use std::sync::{Arc, RwLock};
use std::time::Duration;

use object_store::ObjectStore;
use tokio::sync::{mpsc, oneshot, watch};

use crate::blobs::Blobs;
use crate::committer::{self, Build, Msg};
use crate::digest::Digest;
use crate::error::{Error, Kind, Result};
use crate::ids::ReleaseId;
use crate::index::Index;
use crate::log::{Entry, Log};
use crate::merkle::Hash;
use crate::note::{NoteSigner, NoteVerifier};
use crate::position::Ordered;
use crate::proof::ProvedEntry;
use crate::records::{ArtifactRecord, PinRecord};
use crate::signing::KeyId;
use crate::signing::TrustedKeys;
use crate::time::{Clock, SystemClock, Timestamp};
use crate::timeline::Resolution;
use stackpin_core::state::Rules;

/// Default largest artifact: 64 MiB.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = crate::defaults::MAX_ARTIFACT_BYTES;
/// Default allowed clock skew for reported activations.
pub const DEFAULT_CLOCK_SKEW: Duration = crate::defaults::CLOCK_SKEW;
/// Default margin around a switch within which resolve names both candidates.
/// How long a request waits for a stored checkpoint covering the entries
/// it must prove (a checkpoint is stored within about a second of a commit).
pub const COVER_WAIT: Duration = Duration::from_secs(5);

pub const DEFAULT_BOUNDARY_MARGIN: Duration = crate::defaults::BOUNDARY_MARGIN;
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
    /// In-toto predicate types accepted as a publish besides stackpin's own.
    pub predicate_types: Vec<String>,
    /// How deep an artifact's JSON may nest.
    pub max_json_depth: usize,
    /// Artifact bytes all streams together may hold in memory.
    pub max_inflight_bytes: u64,
    /// How long a publish or download may stay silent.
    pub stream_idle_timeout: Duration,
    /// How long a publish or download may take in all.
    pub request_timeout: Duration,
    /// The recovery targets each environment's posture is judged by.
    pub posture: stackpin_core::posture::Policy,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            clock_skew: DEFAULT_CLOCK_SKEW,
            boundary_margin: DEFAULT_BOUNDARY_MARGIN,
            poll_interval: crate::defaults::POLL_INTERVAL,
            max_batch: committer::MAX_BATCH,
            predicate_types: Vec::new(),
            max_json_depth: stackpin_core::json::DEFAULT_MAX_DEPTH,
            max_inflight_bytes: crate::defaults::MAX_INFLIGHT_BYTES,
            stream_idle_timeout: crate::defaults::STREAM_IDLE_TIMEOUT,
            request_timeout: crate::defaults::REQUEST_TIMEOUT,
            posture: stackpin_core::posture::Policy::default(),
        }
    }
}

/// An artifact named by release id or digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactRef {
    Release(ReleaseId),
    Digest(Digest),
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
    /// Only the pin the request with this id recorded.
    pub request_id: Option<String>,
}

/// A checkpoint signed by the registry's log key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub size: u64,
    pub root: Hash,
    /// The C2SP signed note.
    pub note: Arc<str>,
}

/// The start-up check: at `at`, the first `entries` of the log were
/// checked against the signed checkpoints stored with it (the newest of
/// which covered `checkpoint_size`), and agreed.
#[derive(Clone, Debug)]
pub struct StartCheck {
    pub at: Timestamp,
    pub entries: u64,
    pub checkpoint_size: Option<u64>,
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

/// A resolve answer with the entries and proofs that make it checkable.
#[derive(Clone, Debug)]
pub struct ProvedResolution {
    pub resolution: Resolution,
    pub checkpoint: SignedCheckpoint,
    pub pin: ProvedEntry,
    pub next: Option<ProvedEntry>,
    /// The previous pin, when the near switch is the one that started the
    /// live pin's interval.
    pub prev: Option<ProvedEntry>,
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

/// What a registry is opened with.
#[derive(Clone)]
pub struct Options {
    /// Where the log, the blobs and the stored checkpoint live.
    pub store: Arc<dyn ObjectStore>,
    /// Publisher keys trusted by configuration (the log can revoke them and
    /// add others).
    pub trusted: TrustedKeys,
    /// The log's key: it signs every checkpoint (a read-only registry
    /// holds only the verifier key).
    pub log_key: LogKey,
    pub limits: Limits,
    /// The clock entries are recorded by (a fake one in tests).
    pub clock: Arc<dyn Clock>,
    /// Sign a log that has entries but no stored signed checkpoint (after
    /// the operator has checked it by other means: `recover
    /// --accept-unsigned`). Off, such a start stops.
    pub accept_unsigned: bool,
    /// Where publishes stage their bytes: the data folder's `staging/`
    /// when opened on one, else the system's temporary folder.
    pub staging_dir: Option<std::path::PathBuf>,
    /// Witnesses the checkpoints are submitted to for cosignatures.
    pub witnesses: Vec<WitnessTarget>,
    /// Standbys' storages, read for a promotion of the log there.
    pub standbys: Vec<Standby>,
}

impl Options {
    /// A registry on `store` signing as `signer`, trusting no configured
    /// publisher key, with the default limits and the system clock.
    pub fn new(store: Arc<dyn ObjectStore>, signer: NoteSigner) -> Self {
        Self::with_key(store, LogKey::Signer(signer))
    }

    /// A read-only registry on `store`, which another process writes: it
    /// checks the stored checkpoints with `verifier` and serves them,
    /// refusing every write (see [`Registry::refuses_writes`]).
    pub fn read_only(store: Arc<dyn ObjectStore>, verifier: NoteVerifier) -> Self {
        let store: Arc<dyn ObjectStore> = Arc::new(crate::storage::ReadOnlyStore::new(store));
        Self::with_key(store, LogKey::Verifier(verifier))
    }

    fn with_key(store: Arc<dyn ObjectStore>, log_key: LogKey) -> Self {
        Self {
            store,
            trusted: TrustedKeys::new([]),
            log_key,
            limits: Limits::default(),
            clock: Arc::new(SystemClock),
            accept_unsigned: false,
            staging_dir: None,
            witnesses: Vec::new(),
            standbys: Vec::new(),
        }
    }
}

/// The registry: the state every request and the committer share, plus
/// the handle of the committer task that performs every write.
pub struct Registry {
    shared: Arc<Shared>,
    commits: mpsc::Sender<Msg>,
    /// The lock on the data folder, when opened on one.
    folder: Option<recover::FolderLock>,
}

/// Everything the registry knows, shared by request handlers and the
/// committer task.
struct Shared {
    blobs: Blobs,
    log: Log,
    index: Index,
    /// The rules every entry is applied by: publisher keys from the
    /// configuration (the log can revoke them and add others) and the
    /// allowed clock skew.
    rules: RwLock<Arc<Rules>>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    /// Signs checkpoints as the log (verifies them, read-only).
    signer: LogKey,
    /// The newest signed checkpoint, so readers do not sign per request.
    checkpoint: RwLock<Option<SignedCheckpoint>>,
    /// Hands new checkpoints to the task that stores `log/checkpoint`, off
    /// the request path; it coalesces bursts to the newest.
    checkpoint_tx: watch::Sender<Option<SignedCheckpoint>>,
    /// The newest checkpoint stored durably: the only one that leaves the
    /// registry (answers, tiles, watch streams, witnesses). A checkpoint
    /// served before it was stored could, after a crash and an edited
    /// entry, be followed by a second signed root for the same size.
    stored: Arc<watch::Sender<Option<SignedCheckpoint>>>,
    /// Wakes the storing task when a reader waits for a newer stored
    /// checkpoint (its pause between stores is cut short).
    hurry: Arc<tokio::sync::Notify>,
    /// How many stores have failed: a reader waiting for a checkpoint is
    /// told at once that storage is unavailable, rather than waiting out
    /// its deadline (and a short outage being hidden from it).
    store_failures: Arc<std::sync::atomic::AtomicU64>,
    store: Arc<dyn ObjectStore>,
    /// Set when entries other replicas wrote contradict the checkpoint
    /// stored with the log: from then on nothing is signed or served.
    contradicted: std::sync::OnceLock<Error>,
    /// How much of the applied log has been checked (at start, against the
    /// stored checkpoints) or written here: checkpoints are signed up to it.
    checked: std::sync::atomic::AtomicU64,
    /// Artifact bytes in memory, bounded.
    budget: crate::budget::Budget,
    /// Client request ids being served here now: a second request with
    /// one of them waits for the first to finish (see [`Claim`]).
    inflight: std::sync::Mutex<std::collections::HashSet<String>>,
    staging_dir: Option<std::path::PathBuf>,
    /// Witness cosignatures collected, served with the checkpoint they sign.
    cosignatures: witnesses::Cosignatures,
    /// The witnesses configured, each with its submitting task
    /// (`witnesses.rs`); replaced by a reload.
    witnesses: witnesses::Running,
    /// What the start-up check of the log against its signed checkpoints
    /// found.
    start_check: std::sync::OnceLock<StartCheck>,
    /// Tiles computed for readers (see `tiles.rs`).
    tile_cache: tiles::TileCache,
    /// Serializes the writers of `log/checkpoint` (see `checkpoint.rs`).
    store_lock: checkpoint::StoreLock,
    /// Who showed a promotion elsewhere (a witness, a standby): no writes.
    superseded: std::sync::OnceLock<String>,
    /// The epoch this registry signs in: the stored checkpoint's at start
    /// (`stackpin-registry promote` begins a new one with no registry
    /// running).
    epoch: std::sync::atomic::AtomicU64,
}

/// A client request id (idempotency key) held by the request serving it,
/// so that two copies of one request in flight at once cannot both write:
/// the second is told to retry and then finds the first one's result.
pub(crate) struct Claim {
    id: String,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Claim").field(&self.id).finish()
    }
}

impl Claim {
    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut ids) = self.shared.inflight.lock() {
            ids.remove(&self.id);
        }
    }
}

impl Registry {
    /// Claims the client's request id `id`, if it sent one.
    ///
    /// # Errors
    /// Invalid for a malformed id; Busy while another request with the
    /// same id is being served here.
    pub(crate) fn claim(&self, id: Option<&str>) -> Result<Option<Claim>> {
        let Some(id) = id.filter(|id| !id.is_empty()) else {
            return Ok(None);
        };
        let id = stackpin_core::ids::parse_request_id(id)?;
        let mut ids = self
            .shared
            .inflight
            .lock()
            .map_err(|_| Error::internal("the request id table is poisoned"))?;
        if !ids.insert(id.clone()) {
            return Err(Error::new(
                Kind::Busy,
                format!(
                    "a request with id {} is being served right now; retry to get its result",
                    stackpin_core::error::shown(&id)
                ),
            ));
        }
        Ok(Some(Claim {
            id,
            shared: self.shared.clone(),
        }))
    }

    /// The entry an earlier request with the claimed id wrote.
    ///
    /// # Errors
    /// As `Index::by_request`.
    pub(crate) fn earlier(&self, claim: Option<&Claim>) -> Result<Option<(u64, Entry)>> {
        match claim {
            Some(c) => self.shared.index.by_request(c.id()),
            None => Ok(None),
        }
    }
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
    async fn commit(&self, build: Build) -> Result<Option<u64>> {
        let (tx, rx) = oneshot::channel();
        self.commits
            .send(Msg::Write(build, tx))
            .await
            .map_err(|_| Error::internal("the committer has stopped"))?;
        rx.await
            .map_err(|_| Error::internal("the committer dropped a request"))?
    }

    /// Whether the committer task still runs: when it has stopped, every
    /// write fails, and health says so.
    pub fn accepts_writes(&self) -> bool {
        !self.commits.is_closed() && self.shared.contradicted.get().is_none()
    }

    /// Why this replica serves nothing: entries it read contradict a
    /// signed checkpoint (DataLoss), if that happened.
    pub fn contradicted(&self) -> Option<Error> {
        self.shared.contradicted.get().cloned()
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
        self.shared.index.flush().await?;
        if self.shared.signer.is_read_only() {
            return Ok(());
        }
        let cp = self.shared.checkpoint()?;
        let _held = self.shared.store_lock.lock().await;
        put_checkpoint(&self.shared.store, &self.shared.signer.verifier(), &cp).await?;
        self.shared.stored.send_if_modified(|served| {
            let newer = served.as_ref().is_none_or(|s| s.size < cp.size);
            if newer {
                *served = Some(cp);
            }
            newer
        });
        Ok(())
    }

    /// The object store everything lives in.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.shared.store.clone()
    }

    /// The log's verifier key, in the signed-note vkey form.
    pub fn log_vkey(&self) -> String {
        self.shared.signer.vkey()
    }

    /// The log's origin in the epoch this registry signs in (the name of
    /// its first epoch; `<name>/epoch/<n>` after a promotion): webhook
    /// events carry it, so the new epoch's entries never share an id with
    /// the old primary's.
    pub fn origin(&self) -> String {
        crate::note::epoch_origin(
            self.shared.signer.name(),
            self.shared.epoch.load(std::sync::atomic::Ordering::Acquire),
        )
    }

    /// The current instant, by the registry's clock.
    pub fn now(&self) -> Timestamp {
        self.shared.clock.now()
    }

    /// The `webhook-signature` of a delivery, with the log's key (see
    /// [`stackpin_core::webhook`]).
    ///
    /// # Errors
    /// Invalid when the id or body holds a newline.
    pub fn sign_webhook(&self, id: &str, timestamp: i64, body: &[u8]) -> Result<String> {
        let signer = self.shared.signer.signer().ok_or_else(read_only)?;
        Ok(stackpin_core::webhook::sign(signer, id, timestamp, body)?)
    }

    /// Whether this registry serves a log another process writes.
    pub fn is_read_only(&self) -> bool {
        self.shared.signer.is_read_only()
    }

    /// The refusal of a write, when this registry is read-only or its log
    /// was promoted elsewhere.
    pub fn refuses_writes(&self) -> Option<Error> {
        if self.is_read_only() {
            return Some(read_only());
        }
        self.shared
            .superseded
            .get()
            .map(|why| log_key::promoted(why))
    }

    /// How many log entries the index has applied, from memory (no index
    /// read): it changes with every commit, so what was derived from the
    /// index at one value still holds while it has not changed.
    pub fn applied_now(&self) -> u64 {
        self.shared.index.applied_now()
    }

    /// The state-machine tunables.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// A receiver that changes at every stored checkpoint (for watchers:
    /// what they may send is what a stored checkpoint covers).
    pub fn commits(&self) -> watch::Receiver<Option<SignedCheckpoint>> {
        self.shared.stored.subscribe()
    }

    /// The newest stored checkpoint that covers the first `size` entries,
    /// waiting for the storing task (at most [`COVER_WAIT`]) when entries
    /// that new are not covered yet.
    ///
    /// # Errors
    /// Unavailable when no stored checkpoint covers them in time.
    pub async fn checkpoint_covering(&self, size: u64) -> Result<SignedCheckpoint> {
        let mut rx = self.shared.stored.subscribe();
        let deadline = tokio::time::Instant::now() + COVER_WAIT;
        let failures = &self.shared.store_failures;
        let failed_before = failures.load(std::sync::atomic::Ordering::Acquire);
        loop {
            if let Some(e) = self.shared.contradicted.get() {
                return Err(e.clone());
            }
            if failures.load(std::sync::atomic::Ordering::Acquire) > failed_before
                && rx.borrow().as_ref().is_none_or(|cp| cp.size < size)
            {
                return Err(Error::new(
                    Kind::Unavailable,
                    format!(
                        "storing the checkpoint that covers log entry {} failed (storage is \
                         unavailable); ask again",
                        size.saturating_sub(1)
                    ),
                ));
            }
            if let Some(cp) = rx.borrow_and_update().clone()
                && cp.size >= size
            {
                return Ok(self.shared.witnessed(cp));
            }
            self.shared.hurry.notify_one();
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(Error::new(
                        Kind::Unavailable,
                        format!(
                            "no stored checkpoint covers log entry {} yet (storage is slow or \
                             failing); ask again",
                            size.saturating_sub(1)
                        ),
                    ));
                }
            }
        }
    }

    /// The checkpoint of everything committed so far, once it is stored
    /// (waiting for the storing task, as [`Self::checkpoint_covering`]).
    ///
    /// # Errors
    /// As [`Self::checkpoint_covering`].
    pub async fn latest_checkpoint(&self) -> Result<SignedCheckpoint> {
        let size = self.shared.checkpoint()?.size;
        self.checkpoint_covering(size).await
    }

    /// The newest stored checkpoint (stored within about a second of each
    /// commit), with the cosignatures collected for it.
    ///
    /// # Errors
    /// Internal when none is stored, which `open` rules out.
    pub fn checkpoint(&self) -> Result<SignedCheckpoint> {
        if let Some(e) = self.shared.contradicted.get() {
            return Err(e.clone());
        }
        let stored = self.shared.stored.borrow().clone();
        stored
            .map(|cp| self.shared.witnessed(cp))
            .ok_or_else(|| Error::internal("no checkpoint has been stored"))
    }
}

impl Shared {
    /// The rules in force (a reload may replace the configured keys).
    fn rules(&self) -> Arc<Rules> {
        self.rules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl committer::Target for Shared {
    fn log(&self) -> &Log {
        &self.log
    }

    fn index(&self) -> &Index {
        &self.index
    }

    fn rules(&self) -> Arc<Rules> {
        Shared::rules(self)
    }

    async fn tailed(&self, from: u64) {
        if self.signer.is_read_only() {
            self.adopt_logged().await;
        } else {
            self.check_tailed(from).await;
        }
    }

    async fn idle(&self) {
        // A checkpoint the writer stored after its entries were tailed.
        if self.signer.is_read_only() {
            self.adopt_logged().await;
        }
    }

    fn committed(&self) {
        if self.signer.is_read_only() {
            return; // it signs nothing: the checkpoints come from storage
        }
        if self.contradicted.get().is_some() {
            return; // never sign entries that contradict a signed checkpoint
        }
        // Entries applied before this call were written here or checked by
        // `tailed`, which the committer calls first.
        if let Ok(applied) = self.index.applied() {
            self.checked
                .fetch_max(applied, std::sync::atomic::Ordering::AcqRel);
        }
        match self.checkpoint() {
            Ok(cp) => {
                metrics::gauge!("stackpin_log_entries").set(cp.size as f64);
                self.checkpoint_tx.send_replace(Some(cp));
            }
            Err(e) => tracing::warn!(error = %e, "signing a checkpoint failed"),
        }
    }
}
