//! The one exactly-once helper of the write requests: each publish, pin,
//! key change, snapshot and drill is recorded once per request id, however
//! often its client retries.

use super::{Claim, Registry, request_id};
use crate::error::{Error, Result};
use crate::log::Entry;
use crate::time::Timestamp;

/// What recording a request once did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Once {
    /// A new entry at this log index.
    Recorded(u64),
    /// A retry: the request id already wrote this entry, the same request.
    Replayed(u64),
    /// Nothing to record: the log already says what the request asked
    /// (a release bound meanwhile by another request).
    Unneeded,
}

impl Registry {
    /// Records the entry `make` builds (from the batch's view, the
    /// registry's clock and the request id), once per request id: a retry
    /// whose earlier entry is `same` gets that entry's index. Returns the
    /// index, and whether the entry was recorded before under the id (a
    /// replay: nothing new was written).
    pub(super) async fn record_once(
        &self,
        request: Option<&str>,
        what: &str,
        same: impl Fn(&Entry) -> bool,
        make: impl Fn(&crate::committer::View<'_>, Timestamp, &str) -> Result<Entry> + Send + 'static,
    ) -> Result<(u64, bool)> {
        let claim = self.claim(request)?;
        let once = self
            .record_claimed(claim.as_ref(), same, move |view, now, id| {
                make(view, now, id).map(Some)
            })
            .await?;
        match once {
            Once::Recorded(index) => Ok((index, false)),
            Once::Replayed(index) => Ok((index, true)),
            Once::Unneeded => Err(Error::internal(format!("{what} produced no log entry"))),
        }
    }

    /// As [`Self::record_once`], for a request whose id the caller claimed
    /// already (a publish claims it before its bytes stream in); `make` may
    /// find nothing to record.
    pub(super) async fn record_claimed(
        &self,
        claim: Option<&Claim>,
        same: impl Fn(&Entry) -> bool,
        make: impl Fn(&crate::committer::View<'_>, Timestamp, &str) -> Result<Option<Entry>>
        + Send
        + 'static,
    ) -> Result<Once> {
        let again = |index: u64, entry: &Entry| {
            if same(entry) {
                Ok(Once::Replayed(index))
            } else {
                Err(reused(claim.map_or("", Claim::id), index, entry))
            }
        };
        if let Some((index, entry)) = self.earlier(claim)? {
            return again(index, &entry);
        }
        let shared = self.shared.clone();
        let first = claim.map(|c| c.id().to_owned());
        let id = first.clone().unwrap_or_else(request_id);
        let committed = self
            .commit(Box::new(move |view| {
                // Another replica may have recorded this request meanwhile.
                if let Some(id) = &first
                    && shared.index.by_request(id)?.is_some()
                {
                    return Ok(None);
                }
                make(view, shared.clock.now(), &id)
            }))
            .await?;
        match committed {
            Some(index) => Ok(Once::Recorded(index)),
            None => match self.earlier(claim)? {
                Some((index, entry)) => again(index, &entry),
                None => Ok(Once::Unneeded),
            },
        }
    }
}

/// A request id used before for a different request.
pub(super) fn reused(id: &str, index: u64, entry: &Entry) -> Error {
    let what = match entry {
        Entry::Publish(p) => format!("the publish of release {}", p.release_id),
        Entry::Pin(p) => format!("pin #{} of {} in {}", p.seq, p.release_id, p.env),
        Entry::Key(k) => format!("a key {:?} of {}", k.action, k.key_id),
        Entry::Snapshot(s) => format!("a snapshot of {} at {}", s.env, s.db_time),
        Entry::Drill(d) => format!("a drill of {} at {}", d.env, d.target),
        Entry::Promotion(p) => format!("the promotion to epoch {}", p.epoch),
    };
    Error::conflict(format!(
        "request id {} was used by a different request: log entry {index}, {what}; send a new \
         id for a new request",
        stackpin_core::error::shown(id)
    ))
    .with_reason(stackpin_core::state::reason::REQUEST_ID_REUSED)
}
