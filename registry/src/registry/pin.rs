//! Pinning: recording that an artifact went live in an environment.

use super::{ArtifactRef, Registry};
use crate::error::Result;
use crate::ids::{EnvName, Reason};
use crate::log::{Entry, PinEntry};
use crate::position::DbPosition;
use crate::records::PinRecord;
use crate::time::Timestamp;
use crate::timeline::{self};
use stackpin_core::state::State as _;

/// A pin to record: what goes live where, when, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct PinRequest {
    pub env: EnvName,
    pub artifact: ArtifactRef,
    /// Unset: the registry's clock at commit (never before the
    /// environment's latest activation).
    pub activated_at: Option<Timestamp>,
    pub db_position: Option<DbPosition>,
    pub reason: Reason,
    /// The ObjectOS image the release runs with, by digest.
    pub runtime_image: Option<crate::ids::ImageRef>,
    /// Refuse a first pin of the environment (the caller did not say it
    /// starts one).
    pub known_env_only: bool,
}

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
        let req = PinRequest {
            env: env.clone(),
            artifact: artifact.clone(),
            activated_at,
            db_position,
            reason: reason.clone(),
            runtime_image: None,
            known_env_only: false,
        };
        self.pin_once(&req, actor, None).await
    }

    /// [`Self::pin`] under the client's request id: a retry of the same
    /// pin returns the pin first recorded, without a new entry.
    ///
    /// # Errors
    /// As [`Self::pin`]; Conflict (REQUEST_ID_REUSED) when the id wrote a
    /// different entry; Busy while a request with the id is in flight here.
    pub async fn pin_once(
        &self,
        req: &PinRequest,
        actor: &str,
        request: Option<&str>,
    ) -> Result<PinRecord> {
        self.pin_said(req, actor, request).await.map(|(pin, _)| pin)
    }

    /// As [`Self::pin_once`], and whether the pin is a replay: recorded
    /// before under the request id, nothing new written.
    ///
    /// # Errors
    /// As [`Self::pin_once`].
    pub async fn pin_said(
        &self,
        req: &PinRequest,
        actor: &str,
        request: Option<&str>,
    ) -> Result<(PinRecord, bool)> {
        // Before the release is looked up: the environment is what the
        // caller most likely mistyped.
        if req.known_env_only && self.shared.index.env_head(&req.env)?.is_none() {
            return Err(crate::error::Error::invalid(format!(
                "environment {} has never been pinned{}: an environment stays in the log for \
                 good, so pass --new-env to start it; nothing was recorded",
                req.env,
                self.shared.near_envs(&req.env)?
            )));
        }
        let target = self.artifact(&req.artifact)?;
        let same = |entry: &Entry| {
            matches!(entry, Entry::Pin(p)
                if p.env == req.env
                    && p.release_id == target.release_id
                    && req.activated_at.is_none_or(|at| at == p.activated_at)
                    && p.db_position == req.db_position
                    && p.reason == req.reason.as_str()
                    && p.runtime_image == req.runtime_image
                    && p.actor == actor)
        };
        let (r, actor2, target2) = (req.clone(), actor.to_owned(), target.clone());
        let (committed, replayed) = self
            .record_once(request, "a pin", same, move |view, now, id| {
                // The rules check order, skew and positions.
                let head = view.env_head(&r.env)?;
                let at = timeline::activation(head.as_ref(), r.activated_at, now);
                Ok(Entry::Pin(PinEntry {
                    env: r.env.clone(),
                    seq: head.as_ref().map_or(1, |h| h.seq + 1),
                    release_id: target2.release_id.clone(),
                    digest: target2.digest,
                    activated_at: at,
                    recorded_at: now,
                    actor: actor2.clone(),
                    reason: r.reason.as_str().to_owned(),
                    prev_pin: head.map(|h| h.entry_hash.hex()),
                    db_position: r.db_position.clone(),
                    request_id: Some(id.to_owned()),
                    runtime_image: r.runtime_image.clone(),
                }))
            })
            .await?;
        let index = &self.shared.index;
        let (pin, _) = index.pin_at(index.place(committed)?, &index.proof_reader())?;
        tracing::info!(
            env = %req.env, seq = pin.entry.seq, release_id = %pin.entry.release_id,
            activated_at = %pin.entry.activated_at, index = committed, replayed, "pinned"
        );
        Ok((pin, replayed))
    }
}
