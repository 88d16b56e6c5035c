//! Group commit: the one task that appends to the log and applies it to the
//! index.
//!
//! Requests that wait at the same moment are validated in order against the
//! applied log plus the entries ahead of them in the batch (a [`View`]), then
//! written as one log object: one storage round trip for the whole batch.
//! If another replica took the index first, the task catches up and
//! validates every request again (a release id may now be bound, an
//! activation may now be out of order). If the storage call fails without an
//! answer, the task reads the object back to learn whether its own write
//! landed before telling anyone anything.
//!
//! The same task tails the log between batches, so a replica sees other
//! replicas' writes within one poll interval, and reads its own writes at
//! once (entries are applied before requests are acknowledged).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Kind, Result};
use crate::ids::{EnvName, ReleaseId};
use crate::index::{ArtifactRecord, EnvHead, Index, KeyRecord};
use crate::log::{Entry, KeyAction, Log};
use crate::merkle;
use crate::signing::KeyId;

/// Most requests committed in one log object.
pub const MAX_BATCH: usize = 256;
/// Rounds of "lost the race, catch up, try again" before giving up.
const MAX_ATTEMPTS: usize = 64;

/// The state a request is validated against: the applied log plus the
/// entries already accepted into the batch being built.
pub struct View<'a> {
    index: &'a Index,
    next: u64,
    envs: HashMap<EnvName, EnvHead>,
    releases: HashMap<ReleaseId, ArtifactRecord>,
    keys: HashMap<KeyId, KeyRecord>,
}

impl<'a> View<'a> {
    pub(crate) fn new(index: &'a Index, next: u64) -> Self {
        Self {
            index,
            next,
            envs: HashMap::new(),
            releases: HashMap::new(),
            keys: HashMap::new(),
        }
    }

    /// The index the next entry would get.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// The latest pin of `env`.
    ///
    /// # Errors
    /// Internal when the index fails.
    pub fn env_head(&self, env: &EnvName) -> Result<Option<EnvHead>> {
        match self.envs.get(env) {
            Some(h) => Ok(Some(h.clone())),
            None => self.index.env_head(env),
        }
    }

    /// The artifact bound to `release_id`.
    ///
    /// # Errors
    /// Internal when the index fails.
    pub fn artifact_by_release(&self, release_id: &ReleaseId) -> Result<Option<ArtifactRecord>> {
        match self.releases.get(release_id) {
            Some(a) => Ok(Some(a.clone())),
            None => self.index.artifact_by_release(release_id),
        }
    }

    /// A publisher key's lifecycle record.
    ///
    /// # Errors
    /// Internal when the index fails.
    pub fn key(&self, key_id: &KeyId) -> Result<Option<KeyRecord>> {
        match self.keys.get(key_id) {
            Some(k) => Ok(Some(k.clone())),
            None => self.index.key(key_id),
        }
    }

    /// Every publisher key record.
    ///
    /// # Errors
    /// Internal when the index fails.
    pub fn keys(&self) -> Result<Vec<KeyRecord>> {
        let mut out: Vec<KeyRecord> = self
            .index
            .keys()?
            .into_iter()
            .filter(|k| !self.keys.contains_key(&k.key_id))
            .collect();
        out.extend(self.keys.values().cloned());
        Ok(out)
    }

    /// Takes an accepted entry into account for the requests after it.
    fn absorb(&mut self, entry: &Entry, bytes: &[u8]) -> Result<()> {
        let index = self.next;
        self.next += 1;
        match entry {
            Entry::Publish(p) => {
                self.releases.insert(
                    p.release_id.clone(),
                    ArtifactRecord {
                        release_id: p.release_id.clone(),
                        digest: p.digest,
                        size: p.size,
                        media_type: p.media_type.clone(),
                        recorded_at: p.recorded_at,
                        log_index: index,
                        key_id: p.key_id.clone(),
                        envelope: p.envelope.clone(),
                    },
                );
            }
            Entry::Pin(p) => {
                let previous = self.env_head(&p.env)?;
                let (mut last_lsn, mut last_txid) = previous
                    .as_ref()
                    .map_or((None, None), |h| (h.last_lsn, h.last_txid));
                match p
                    .db_position
                    .as_ref()
                    .map(|d| d.ordered())
                    .transpose()?
                    .flatten()
                {
                    Some(o @ crate::position::Ordered::Lsn(_)) => last_lsn = Some(o.value()),
                    Some(o @ crate::position::Ordered::Txid(_)) => last_txid = Some(o.value()),
                    None => {}
                }
                self.envs.insert(
                    p.env.clone(),
                    EnvHead {
                        seq: p.seq,
                        activated_at: p.activated_at,
                        entry_hash: hex::encode(merkle::leaf_hash(bytes)),
                        last_lsn,
                        last_txid,
                    },
                );
            }
            Entry::Key(k) => {
                let mut rec = self.key(&k.key_id)?.unwrap_or(KeyRecord {
                    key_id: k.key_id.clone(),
                    public_key: None,
                    valid_from: None,
                    revoked_at: None,
                    added_at_index: None,
                });
                match k.action {
                    KeyAction::Add => {
                        rec.public_key = k.public_key.clone();
                        rec.valid_from = Some(k.at);
                        rec.added_at_index = Some(index);
                    }
                    KeyAction::Revoke => rec.revoked_at = Some(k.at),
                }
                self.keys.insert(k.key_id.clone(), rec);
            }
        }
        Ok(())
    }
}

/// Builds a request's entry from the current state; `Ok(None)` means there
/// is nothing to write (an idempotent repeat).
pub type Build = Box<dyn FnMut(&View<'_>) -> Result<Option<Entry>> + Send>;

/// A request for the committer.
pub enum Msg {
    /// Append the entry `build` makes; the reply is its index, if any.
    Write(Build, oneshot::Sender<Result<Option<u64>>>),
    /// Catch up with the log now (a fresh read).
    Sync(oneshot::Sender<Result<()>>),
}

/// What the committer needs from the registry.
pub trait Target: Send + Sync + 'static {
    fn log(&self) -> &Log;
    fn index(&self) -> &Index;
    /// Called after entries were applied (a new checkpoint is due).
    fn committed(&self);
}

/// How often a long catch-up logs its progress.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Applies every log object the index has not seen; returns how many
/// entries were applied.
///
/// # Errors
/// Unavailable when storage fails; DataLoss when an entry is damaged.
pub async fn catch_up(log: &Log, index: &Index) -> Result<u64> {
    let first = index.applied()?;
    // A rebuild of a long log takes a while: say how far it has come.
    let mut report_at = std::time::Instant::now() + PROGRESS_EVERY;
    loop {
        if std::time::Instant::now() >= report_at {
            let applied = index.applied()?;
            tracing::info!(
                applied,
                since_start = applied - first,
                "catching up with the log"
            );
            report_at += PROGRESS_EVERY;
        }
        let applied = index.applied()?;
        // A restart may have applied part of an object.
        let (start, skip) = match index.object_of(applied)? {
            Some((start, _)) => (start, applied - start),
            None => (applied, 0),
        };
        let Some(object) = log.read(start).await? else {
            break;
        };
        let entries = Log::split(&object);
        index.apply_object(start, &entries, usize::try_from(skip).unwrap_or(usize::MAX))?;
    }
    Ok(index.applied()? - first)
}

/// The committer loop: batches up to `max_batch` writes, tails the log
/// every `poll`.
pub async fn run<T: Target>(
    target: Arc<T>,
    mut rx: mpsc::Receiver<Msg>,
    poll: Duration,
    max_batch: usize,
) {
    let max_batch = max_batch.clamp(1, MAX_BATCH);
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                let mut writes = Vec::new();
                let mut syncs = Vec::new();
                let mut next = Some(msg);
                while let Some(m) = next.take() {
                    match m {
                        Msg::Write(b, r) => writes.push((b, r)),
                        Msg::Sync(r) => syncs.push(r),
                    }
                    if writes.len() < max_batch {
                        next = rx.try_recv().ok();
                    }
                }
                if !syncs.is_empty() {
                    let result = catch_up(target.log(), target.index()).await;
                    if matches!(result, Ok(n) if n > 0) {
                        target.committed();
                    }
                    for s in syncs {
                        let _ = s.send(result.as_ref().map(|_| ()).map_err(Clone::clone));
                    }
                }
                if !writes.is_empty() {
                    commit(target.as_ref(), writes).await;
                }
            }
            _ = tick.tick() => {
                let caught = catch_up(target.log(), target.index()).await;
                if let Ok(n) = &caught {
                    metrics::gauge!("stackpin_index_lag_entries").set(*n as f64);
                }
                match caught {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::debug!(entries = n, "applied entries written by other replicas");
                        target.committed();
                    }
                    Err(e) => tracing::warn!(error = %e, "tailing the log failed; retrying at the next poll"),
                }
            }
        }
    }
}

type Reply = oneshot::Sender<Result<Option<u64>>>;

async fn commit<T: Target>(target: &T, mut pending: Vec<(Build, Reply)>) {
    let (log, index) = (target.log(), target.index());
    for attempt in 0.. {
        if pending.is_empty() {
            return;
        }
        if attempt >= MAX_ATTEMPTS {
            for (_, reply) in pending {
                let _ = reply.send(Err(Error::new(
                    Kind::Unavailable,
                    "the log is under heavy contention from other replicas; try again",
                )));
            }
            return;
        }
        let start = match index.applied() {
            Ok(s) => s,
            Err(e) => return fail_all(pending, &e),
        };
        let mut view = View::new(index, start);
        let mut entries: Vec<Bytes> = Vec::new();
        let mut owners: Vec<(Build, Reply)> = Vec::new();
        // Answers decided against this batch's state (a repeat of, or a
        // conflict with, an entry ahead in the batch) are held back until
        // the batch has landed: if it does not, they are decided again.
        let mut decided: Vec<(Build, Reply, Result<Option<u64>>)> = Vec::new();
        for (mut build, reply) in pending.drain(..) {
            match build(&view) {
                Ok(Some(entry)) => {
                    let bytes = entry.to_bytes();
                    if let Err(e) = view.absorb(&entry, &bytes) {
                        decided.push((build, reply, Err(e)));
                        continue;
                    }
                    entries.push(bytes);
                    owners.push((build, reply));
                }
                Ok(None) => decided.push((build, reply, Ok(None))),
                Err(e) => decided.push((build, reply, Err(e))),
            }
        }
        if entries.is_empty() {
            for (_, reply, answer) in decided {
                let _ = reply.send(answer);
            }
            return;
        }
        let landed = match log.append(start, &entries).await {
            Ok(true) => true,
            Ok(false) => false,
            Err(e) => match log.read(start).await {
                // The call failed without an answer: did our write land?
                Ok(Some(object)) if object == Log::join(&entries) => true,
                Ok(Some(_)) => false,
                _ => {
                    fail_all(owners, &e);
                    return fail_all(decided.into_iter().map(|(b, r, _)| (b, r)).collect(), &e);
                }
            },
        };
        if !landed {
            tracing::debug!(index = start, "lost the race for a log index; catching up");
            let rerun = owners
                .into_iter()
                .chain(decided.into_iter().map(|(b, r, _)| (b, r)));
            if let Err(e) = catch_up(log, index).await {
                return fail_all(rerun.collect(), &e);
            }
            target.committed();
            pending = rerun.collect();
            continue;
        }
        if let Err(e) = index.apply_object(start, &entries, 0) {
            fail_all(owners, &e);
            return fail_all(decided.into_iter().map(|(b, r, _)| (b, r)).collect(), &e);
        }
        target.committed();
        for (i, (_, reply)) in owners.into_iter().enumerate() {
            let _ = reply.send(Ok(Some(start + i as u64)));
        }
        for (_, reply, answer) in decided {
            let _ = reply.send(answer);
        }
        return;
    }
}

fn fail_all(pending: Vec<(Build, Reply)>, e: &Error) {
    for (_, reply) in pending {
        let _ = reply.send(Err(e.clone()));
    }
}
