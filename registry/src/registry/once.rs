//! The one exactly-once helper of the write requests: each pin, key
//! change, snapshot and drill is recorded once per request id, however
//! often its client retries.

use super::{Registry, request_id, reused};
use crate::error::{Error, Result};
use crate::log::Entry;
use crate::time::Timestamp;

impl Registry {
    /// Records the entry `make` builds (from the batch's view, the
    /// registry's clock and the request id), once per request id: a retry
    /// whose earlier entry is `same` gets that entry's index.
    pub(super) async fn record_once(
        &self,
        request: Option<&str>,
        what: &str,
        same: impl Fn(&Entry) -> bool,
        make: impl Fn(&crate::committer::View<'_>, Timestamp, &str) -> Result<Entry> + Send + 'static,
    ) -> Result<u64> {
        let claim = self.claim(request)?;
        let again = |index: u64, entry: &Entry| {
            if same(entry) {
                Ok(index)
            } else {
                Err(reused(claim.as_ref().map_or("", |c| c.id()), index, entry))
            }
        };
        if let Some((index, entry)) = self.earlier(claim.as_ref())? {
            return again(index, &entry);
        }
        let shared = self.shared.clone();
        let first = claim.as_ref().map(|c| c.id().to_owned());
        let id = first.clone().unwrap_or_else(request_id);
        let committed = self
            .commit(Box::new(move |view| {
                // Another replica may have recorded this request meanwhile.
                if let Some(id) = &first
                    && shared.index.by_request(id)?.is_some()
                {
                    return Ok(None);
                }
                make(view, shared.clock.now(), &id).map(Some)
            }))
            .await?;
        match committed {
            Some(index) => Ok(index),
            None => match self.earlier(claim.as_ref())? {
                Some((index, entry)) => again(index, &entry),
                None => Err(Error::internal(format!("{what} produced no log entry"))),
            },
        }
    }
}
