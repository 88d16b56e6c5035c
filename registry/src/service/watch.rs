//! WatchLog: the log from a cursor on, then each entry as it is committed,
//! filtered by environment and type. Every event carries the checkpoint it
//! is proved in and its inclusion proof, so a watcher checks each entry as
//! it arrives; `next` is the cursor to resume from after a disconnect (no
//! gap, no repeat). While nothing is logged a heartbeat (no entry) keeps
//! the stream inside the idle timeout and moves the cursor.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use stackpin_proto::v1 as pb;

use crate::error::{Error, Result};
use crate::ids::EnvName;
use crate::log::Entry;
use crate::registry::Registry;

/// What a watcher asked for.
#[derive(Clone, Debug)]
pub struct Filter {
    pub env: Option<EnvName>,
    /// Empty: every type.
    pub types: Vec<String>,
}

impl Filter {
    /// The filter of a request.
    ///
    /// # Errors
    /// Invalid for an unknown type or a malformed environment.
    pub fn new(env: &str, types: Vec<String>) -> Result<Self> {
        for t in &types {
            Entry::check_kind(t).map_err(|e| Error::invalid(format!("types: {}", e.message())))?;
        }
        let env = match env {
            "" => None,
            e => Some(e.parse::<EnvName>()?),
        };
        Ok(Self { env, types })
    }

    fn passes(&self, entry: &Entry) -> bool {
        let typed = self.types.iter().any(|t| t == entry.kind());
        if !self.types.is_empty() && !typed {
            return false;
        }
        match (&self.env, entry.env()) {
            (None, _) => true,
            (Some(env), Some(of)) => of == env,
            // With an environment, entries of none only when asked for by type.
            (Some(_), None) => typed,
        }
    }
}

struct State {
    registry: Arc<Registry>,
    next: u64,
    filter: Filter,
    commits: tokio::sync::watch::Receiver<Option<crate::registry::SignedCheckpoint>>,
    ready: VecDeque<pb::WatchEvent>,
    heartbeat: Duration,
}

/// The events of a watch from `from` on.
pub fn events(
    registry: Arc<Registry>,
    from: u64,
    filter: Filter,
    heartbeat: Duration,
) -> impl Stream<Item = Result<pb::WatchEvent>> + Send + 'static {
    let commits = registry.commits();
    let state = State {
        registry,
        next: from,
        filter,
        commits,
        ready: VecDeque::new(),
        heartbeat,
    };
    futures::stream::try_unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.ready.pop_front() {
                return Ok(Some((event, s)));
            }
            // Marked seen before the checkpoint is read: a commit after
            // this point wakes the wait below.
            s.commits.borrow_and_update();
            let cp = s.registry.checkpoint()?;
            if s.next < cp.size {
                // A batch: up to 64 entries read, the passing ones proved
                // in this checkpoint.
                let end = cp.size.min(s.next + 64);
                for index in s.next..end {
                    let bytes = s.registry.entry(index).await?;
                    let entry = Entry::parse(index, &bytes)?;
                    s.next = index + 1;
                    if !s.filter.passes(&entry) {
                        continue;
                    }
                    let proof = s.registry.inclusion_proof(index, cp.size)?;
                    s.ready.push_back(pb::WatchEvent {
                        index,
                        entry: bytes,
                        proof: super::convert::hashes(&proof),
                        checkpoint: cp.note.to_string(),
                        next: s.next,
                    });
                }
                continue;
            }
            if s.next > cp.size {
                return Err(Error::invalid(format!(
                    "from {} is past the end of the log ({} entries)",
                    s.next, cp.size
                )));
            }
            // Caught up: wait for a commit, or send a heartbeat.
            match tokio::time::timeout(s.heartbeat, s.commits.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Ok(None), // the registry is stopping
                Err(_) => {
                    return Ok(Some((
                        pb::WatchEvent {
                            checkpoint: cp.note.to_string(),
                            next: s.next,
                            ..pb::WatchEvent::default()
                        },
                        s,
                    )));
                }
            }
        }
    })
}
