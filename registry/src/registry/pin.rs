//! Pinning: recording that an artifact went live in an environment.

use super::{ArtifactRef, Registry, request_id};
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
        let target = self.artifact(artifact)?;
        let shared = self.shared.clone();
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
                let now = shared.clock.now();
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
                    prev_pin: head.map(|h| h.entry_hash.hex()),
                    db_position: db_position.clone(),
                    request_id: Some(request.clone()),
                })))
            }))
            .await?
            .ok_or_else(|| Error::internal("a pin produced no log entry"))?;
        let index = &self.shared.index;
        let (pin, _) = index.pin_at(index.place(committed)?, &index.proof_reader())?;
        tracing::info!(
            env = %env, seq = pin.entry.seq, release_id = %pin.entry.release_id,
            activated_at = %pin.entry.activated_at, index = committed, "pinned"
        );
        Ok(pin)
    }
}
