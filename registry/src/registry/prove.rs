//! Entries and proofs: log entries as stored, inclusion and consistency
//! proofs, and resolve answers that carry their proofs.

use bytes::Bytes;

use crate::error::{Error, Kind, Result};
use crate::ids::EnvName;
use crate::log::Log;
use crate::merkle::{self, Hash};
use crate::proof::ProvedEntry;

use super::resolve::Seen;
use super::{ProvedResolution, Query, Registry, Shared};

impl Registry {
    /// The stored bytes of entry `index`, checked against the leaf hash the
    /// index recorded when the entry was applied.
    ///
    /// # Errors
    /// NotFound past the end of the log; DataLoss when the stored bytes
    /// changed or vanished; Unavailable when storage fails.
    pub async fn entry(&self, index: u64) -> Result<Bytes> {
        let mut entries = self.shared.entries_from(index).await?;
        Ok(entries.swap_remove(0))
    }

    /// Entries `start..end`, in order, reading each log object once. An
    /// entry that cannot be served is an error item; the stream goes on
    /// with the next entry.
    pub fn entries(
        &self,
        start: u64,
        end: u64,
    ) -> impl futures::Stream<Item = (u64, Result<Bytes>)> + Send + 'static {
        let registry = self.shared.clone();
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

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    ///
    /// # Errors
    /// Invalid when `index >= size` or `size` is beyond the log.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        self.shared
            .inclusion_proof_from(&self.shared.index.proof_reader(), index, size)
    }

    /// The consistency proof between trees of `old` and `new` entries.
    ///
    /// # Errors
    /// Invalid unless `0 < old <= new <= size of the log`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        let applied = self.shared.index.applied()?;
        if old == 0 || old > new || new > applied {
            return Err(Error::invalid(format!(
                "no consistency proof from {old} to {new}: need 0 < old <= new <= {applied}"
            )));
        }
        merkle::consistency_proof(&self.shared.index, old, new).map_err(proof_error)
    }

    /// The entries at `indexes`, each with its inclusion proof in the tree
    /// of `size` entries. The bytes come from `cached` (what the lookup
    /// read), else the index's verified copy, which keeps the hot resolve
    /// path off storage; fresh reads go to storage (and so notice a damaged
    /// stored entry). Index reads and hashing run off the runtime.
    async fn prove_at(
        &self,
        indexes: Vec<u64>,
        size: u64,
        fresh: bool,
        cached: Vec<(u64, Bytes)>,
    ) -> Result<Vec<ProvedEntry>> {
        let shared = self.shared.clone();
        let found = crate::blocking::run(move || {
            // An entry's leaf check and its proof read the same block of
            // hashes, through one reader.
            let reader = shared.index.proof_reader();
            indexes
                .iter()
                .map(|&index| {
                    let bytes = if fresh {
                        None
                    } else if let Some((_, bytes)) = cached.iter().find(|(i, _)| *i == index) {
                        Some(bytes.clone())
                    } else {
                        reader.entry(index)?
                    };
                    let proof = shared.inclusion_proof_from(&reader, index, size)?;
                    Ok((index, bytes, proof))
                })
                .collect::<Result<Vec<_>>>()
        })
        .await?;
        let mut out = Vec::with_capacity(found.len());
        for (index, bytes, proof) in found {
            let entry = match bytes {
                Some(bytes) => bytes,
                None => self.entry(index).await?,
            };
            out.push(ProvedEntry {
                index,
                entry,
                proof,
            });
        }
        Ok(out)
    }

    /// Resolves and attaches the checkpoint, the pin entry, the next pin's
    /// entry and the publish entry, each with its inclusion proof. The
    /// index lookups and proofs run off the runtime; the storage reads and
    /// the wait for a stored checkpoint do not block it.
    ///
    /// # Errors
    /// As [`Self::resolve`], plus DataLoss when a stored entry changed.
    pub async fn resolve_proved(
        &self,
        env: &EnvName,
        query: &Query,
        fresh: bool,
    ) -> Result<ProvedResolution> {
        let (shared, env, query) = (self.shared.clone(), env.clone(), *query);
        let (resolution, cached, published) = crate::blocking::run(move || {
            let mut seen = Seen::new(&shared.index);
            let resolution = match query {
                Query::At { at, margin } => shared.resolve_at(&env, at, margin, &mut seen)?,
                Query::Position(target) => shared.resolve_by_position(&env, target, &mut seen)?,
            };
            let release = &resolution.pin.entry.release_id;
            let published = match seen.published {
                Some(p) => p,
                None => shared.index.artifact_entry(release)?.ok_or_else(|| {
                    Error::internal(format!(
                        "index lacks the publish of pinned release {release}"
                    ))
                })?,
            };
            if !fresh && let Some(bytes) = seen.reader.entry_at(published)? {
                seen.entries.push((published.index, bytes));
            }
            Ok((resolution, seen.entries, published.index))
        })
        .await?;
        let next = resolution.next.as_ref().map(|n| n.log_index);
        let prev = match &resolution.near_switch {
            Some(b) if b.after.log_index == resolution.pin.log_index => Some(b.before.log_index),
            _ => None,
        };
        // The checkpoint is taken after the lookup, and is one that covers
        // every entry the answer names.
        let newest = [
            Some(resolution.pin.log_index),
            next,
            resolution.near_switch.as_ref().map(|b| b.before.log_index),
            Some(published),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        let checkpoint = self.checkpoint_covering(newest + 1).await?;
        let wanted: Vec<u64> = [Some(published), Some(resolution.pin.log_index), next, prev]
            .into_iter()
            .flatten()
            .collect();
        let mut proved = self
            .prove_at(wanted, checkpoint.size, fresh, cached)
            .await?
            .into_iter();
        let mut take = || {
            proved
                .next()
                .ok_or_else(|| Error::internal("a proof went missing"))
        };
        let publish = take()?;
        let pin = take()?;
        let next = next.map(|_| take()).transpose()?;
        let prev = prev.map(|_| take()).transpose()?;
        Ok(ProvedResolution {
            resolution,
            checkpoint,
            pin,
            next,
            prev,
            publish,
        })
    }
}

impl Registry {
    /// The entries at `indexes`, each with its inclusion proof in the
    /// checkpoint returned with them (taken after the caller's lookup, so
    /// it covers every entry the caller found).
    ///
    /// # Errors
    /// As [`Self::entry`].
    pub async fn prove_all(
        &self,
        indexes: &[u64],
    ) -> Result<(crate::registry::SignedCheckpoint, Vec<ProvedEntry>)> {
        let newest = indexes.iter().max().map_or(0, |i| i + 1);
        let checkpoint = self.checkpoint_covering(newest).await?;
        let entries = self
            .prove_at(indexes.to_vec(), checkpoint.size, false, Vec::new())
            .await?;
        Ok((checkpoint, entries))
    }
}

impl Shared {
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
}

fn proof_error(e: merkle::ProofError<Error>) -> Error {
    match e {
        merkle::ProofError::Range(why) => Error::invalid(why),
        merkle::ProofError::Source(e) => e,
    }
}

impl Shared {
    /// The error for entry `at`, whose bytes in storage disagree with the
    /// index's leaf hash. Storage is blamed only when the index's own copy
    /// of the entry still matches that hash; otherwise the index is what is
    /// damaged (a leaf hash or both), and it is marked for a rebuild.
    fn disagreement(&self, at: u64) -> Error {
        match self.index.copy_agrees(at) {
            Ok(true) => Error::new(
                Kind::DataLoss,
                format!(
                    "log entry {at} in storage no longer matches its logged hash; it will not be \
                     served"
                ),
            ),
            result => {
                if result.is_err() {
                    self.index.mark_damaged(at);
                }
                Error::new(
                Kind::Internal,
                format!(
                    "the index's record of log entry {at} is damaged (storage disagrees with its \
                     leaf hash, and so does the index's own copy); it will not be served: restart \
                     the registry to rebuild the index from the log"
                ),
            )
                .with_reason(stackpin_core::error::reason::INDEX_DAMAGED)
            }
        }
    }

    /// Entry `index` and the entries after it in the same log object, each
    /// checked against its logged hash: one storage read for a whole group
    /// commit. Stops before the first entry that fails its check (asking
    /// for that one then names it).
    ///
    /// # Errors
    /// As [`Self::entry`], for entry `index`.
    pub(super) async fn entries_from(&self, index: u64) -> Result<Vec<Bytes>> {
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
                    return Err(self.disagreement(at));
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
}
