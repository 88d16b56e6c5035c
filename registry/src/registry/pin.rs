//! Pinning: recording that an artifact went live in an environment.

use super::{ArtifactRef, Registry, request_id, reused};
use crate::error::{Error, Result};
use crate::ids::{EnvName, Reason};
use crate::log::{Entry, PinEntry};
use crate::position::DbPosition;
use crate::records::PinRecord;
use crate::time::Timestamp;
use crate::timeline::{self};
use stackpin_core::state::State as _;

impl Registry {
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
        self.pin_once(
            env,
            artifact,
            activated_at,
            db_position,
            reason,
            actor,
            None,
        )
        .await
    }

    /// [`Self::pin`] under the client's request id: a retry of the same
    /// pin returns the pin first recorded, without a new entry.
    ///
    /// # Errors
    /// As [`Self::pin`]; Conflict (REQUEST_ID_REUSED) when the id wrote a
    /// different entry; Busy while a request with the id is in flight here.
    #[allow(clippy::too_many_arguments)]
    pub async fn pin_once(
        &self,
        env: &EnvName,
        artifact: &ArtifactRef,
        activated_at: Option<Timestamp>,
        db_position: Option<DbPosition>,
        reason: &Reason,
        actor: &str,
        request: Option<&str>,
    ) -> Result<PinRecord> {
        let claim = self.claim(request)?;
        let target = self.artifact(artifact)?;
        let same = |entry: &Entry| {
            matches!(entry, Entry::Pin(p)
                if p.env == *env
                    && p.release_id == target.release_id
                    && activated_at.is_none_or(|at| at == p.activated_at)
                    && p.db_position == db_position
                    && p.reason == reason.as_str()
                    && p.actor == actor)
        };
        if let Some((index, entry)) = self.earlier(claim.as_ref())? {
            return self.pin_again(index, &entry, same(&entry), claim.as_ref());
        }
        let shared = self.shared.clone();
        let first = claim.as_ref().map(|c| c.id().to_owned());
        let (env2, reason2, actor2, request) = (
            env.clone(),
            reason.as_str().to_owned(),
            actor.to_owned(),
            first.clone().unwrap_or_else(request_id),
        );
        let db_position2 = db_position.clone();
        let target2 = target.clone();
        let committed = self
            .commit(Box::new(move |view| {
                // Another replica may have recorded this request meanwhile.
                if let Some(id) = &first
                    && shared.index.by_request(id)?.is_some()
                {
                    return Ok(None);
                }
                // The rules check order, skew and positions.
                let head = view.env_head(&env2)?;
                let now = shared.clock.now();
                let at = timeline::activation(head.as_ref(), activated_at, now);
                Ok(Some(Entry::Pin(PinEntry {
                    env: env2.clone(),
                    seq: head.as_ref().map_or(1, |h| h.seq + 1),
                    release_id: target2.release_id.clone(),
                    digest: target2.digest,
                    activated_at: at,
                    recorded_at: now,
                    actor: actor2.clone(),
                    reason: reason2.clone(),
                    prev_pin: head.map(|h| h.entry_hash.hex()),
                    db_position: db_position2.clone(),
                    request_id: Some(request.clone()),
                })))
            }))
            .await?;
        let Some(committed) = committed else {
            return match self.earlier(claim.as_ref())? {
                Some((index, entry)) => self.pin_again(index, &entry, same(&entry), claim.as_ref()),
                None => Err(Error::internal("a pin produced no log entry")),
            };
        };
        let index = &self.shared.index;
        let (pin, _) = index.pin_at(index.place(committed)?, &index.proof_reader())?;
        tracing::info!(
            env = %env, seq = pin.entry.seq, release_id = %pin.entry.release_id,
            activated_at = %pin.entry.activated_at, index = committed, "pinned"
        );
        Ok(pin)
    }

    /// The answer to a request whose id already wrote entry `index`.
    fn pin_again(
        &self,
        index: u64,
        entry: &Entry,
        same: bool,
        claim: Option<&super::Claim>,
    ) -> Result<PinRecord> {
        let id = claim.map_or("", |c| c.id());
        if !same {
            return Err(reused(id, index, entry));
        }
        let index_ = &self.shared.index;
        let (pin, _) = index_.pin_at(index_.place(index)?, &index_.proof_reader())?;
        tracing::info!(env = %pin.entry.env, seq = pin.entry.seq, index, "pin repeated: first result returned");
        Ok(pin)
    }
}
