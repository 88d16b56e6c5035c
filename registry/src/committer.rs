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

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use stackpin_core::layout;
use stackpin_core::state::{Overlay, Refused, Rules};

use crate::error::{Error, Kind, Result};
use crate::index::Index;
use crate::log::{Entry, Log};

/// Most requests committed in one log object.
pub const MAX_BATCH: usize = crate::defaults::MAX_BATCH;
/// Rounds of "lost the race, catch up, try again" before giving up.
const MAX_ATTEMPTS: usize = 64;

/// The state a request is built against: the applied log plus the entries
/// already accepted into the batch being built. Every entry a request
/// builds is then accepted or refused by [`stackpin_core::state::apply`]
/// over the same state, so the rules are the ones the index and the audit
/// apply.
pub type View<'a> = Overlay<'a, Index>;

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
    /// The rules entries are applied by.
    fn rules(&self) -> std::sync::Arc<Rules>;
    /// Called after entries were applied (a new checkpoint is due).
    fn committed(&self);
    /// Called after entries other replicas wrote, from log index `from`
    /// on, were applied, before [`Self::committed`]: checks them against
    /// the checkpoint stored with the log.
    fn tailed(&self, from: u64) -> impl std::future::Future<Output = ()> + Send;
    /// Called at a poll that found nothing new to apply.
    fn idle(&self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }
}

/// How often a long catch-up logs its progress.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Applies every log object the index has not seen; returns how many
/// entries were applied.
///
/// # Errors
/// Unavailable when storage fails; DataLoss when an entry is damaged.
pub async fn catch_up(log: &Log, index: &Index, rules: &Rules) -> Result<u64> {
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
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        apply(index, rules, start, entries, skip).await?;
    }
    Ok(index.applied()? - first)
}

/// Applies a log object to the index on the blocking pool (sled batches,
/// file writes and signature checks take more than a few microseconds).
async fn apply(
    index: &Index,
    rules: &Rules,
    start: u64,
    entries: Vec<Bytes>,
    skip: usize,
) -> Result<()> {
    let (index, rules) = (index.clone(), rules.clone());
    crate::blocking::on_index_writer(move || index.apply_object(&rules, start, &entries, skip))
        .await
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
    // Opening caught up already: the first tail is one interval away.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
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
                    let from = target.index().applied().unwrap_or(0);
                    let result = catch_up(target.log(), target.index(), &target.rules()).await;
                    if matches!(result, Ok(n) if n > 0) {
                        target.tailed(from).await;
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
                let from = target.index().applied().unwrap_or(0);
                let caught = catch_up(target.log(), target.index(), &target.rules()).await;
                if let Ok(n) = &caught {
                    metrics::gauge!("stackpin_index_lag_entries").set(*n as f64);
                }
                match caught {
                    Ok(0) => target.idle().await,
                    Ok(n) => {
                        tracing::debug!(entries = n, "applied entries written by other replicas");
                        target.tailed(from).await;
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
    let (log, index, rules) = (target.log(), target.index(), target.rules());
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
        // Building and checking the entries reads the index and checks up
        // to MAX_BATCH Ed25519 signatures: off the runtime.
        let (reading, checking) = (index.clone(), rules.clone());
        let built = crate::blocking::run(move || Ok(batch(&reading, &checking, start, pending)));
        let Batch {
            entries,
            accepted,
            owners,
            decided,
        } = match built.await {
            Ok(b) => b,
            // The requests went with the failed work: their callers are
            // told their reply was dropped.
            Err(e) => {
                tracing::error!(error = %e, "building a batch failed");
                return;
            }
        };
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
            let from = index.applied().unwrap_or(start);
            if let Err(e) = catch_up(log, index, &rules).await {
                return fail_all(rerun.collect(), &e);
            }
            target.tailed(from).await;
            target.committed();
            pending = rerun.collect();
            continue;
        }
        // The entries were applied by the rules over this index just now;
        // writing them does not decide again.
        let writing = index.clone();
        let write = crate::blocking::on_index_writer(move || {
            writing.apply_accepted(start, &entries, &accepted)
        });
        if let Err(e) = write.await {
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

/// The entries of a batch, and what each request is answered.
struct Batch {
    entries: Vec<Bytes>,
    accepted: Vec<stackpin_core::state::Applied>,
    /// The requests whose entries are in the batch, in order.
    owners: Vec<(Build, Reply)>,
    /// Answers decided against this batch's state (a repeat of, or a
    /// conflict with, an entry ahead in the batch), held back until the
    /// batch has landed: if it does not, they are decided again.
    decided: Vec<(Build, Reply, Result<Option<u64>>)>,
}

/// Builds each request's entry over the index at `start` plus the entries
/// ahead of it, and applies it by the rules.
fn batch(index: &Index, rules: &Rules, start: u64, pending: Vec<(Build, Reply)>) -> Batch {
    let mut view = View::new(index);
    let mut entries: Vec<Bytes> = Vec::new();
    let mut accepted = Vec::new();
    let mut owners: Vec<(Build, Reply)> = Vec::new();
    let mut decided: Vec<(Build, Reply, Result<Option<u64>>)> = Vec::new();
    for (mut build, reply) in pending {
        match build(&view) {
            Ok(Some(entry)) => {
                let bytes = entry.to_bytes();
                if let Err(e) = layout::check_entry_size(&bytes) {
                    decided.push((build, reply, Err(e.into())));
                    continue;
                }
                let at = start + entries.len() as u64;
                match view.apply(rules, at, &bytes) {
                    Ok(applied) => accepted.push(applied),
                    Err(refused) => {
                        decided.push((build, reply, Err(refused_request(refused))));
                        continue;
                    }
                }
                entries.push(bytes);
                owners.push((build, reply));
            }
            Ok(None) => decided.push((build, reply, Ok(None))),
            Err(e) => decided.push((build, reply, Err(e))),
        }
    }
    Batch {
        entries,
        accepted,
        owners,
        decided,
    }
}

/// A request whose entry the rules refuse: the violation's kind and
/// message, for the caller to act on.
fn refused_request(refused: Refused<Error>) -> Error {
    match refused {
        Refused::Violation(v) => v.to_error().into(),
        Refused::State(e) => e,
    }
}

fn fail_all(pending: Vec<(Build, Reply)>, e: &Error) {
    for (_, reply) in pending {
        let _ = reply.send(Err(e.clone()));
    }
}
