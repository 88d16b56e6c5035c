//! Publisher keys: the configured ones and the log's additions and
//! revocations.

use super::{KeySource, PublisherKey, Registry};
use crate::error::{Error, Result};
use crate::ids::Reason;
use crate::log::{Entry, KeyAction, KeyEntry};
use crate::signing::{KeyId, PublicKey};
use crate::time::Timestamp;
use stackpin_core::state::State as _;

impl Registry {
    /// Trusts a publisher key for publishes logged from `valid_from` (default
    /// now) on.
    ///
    /// # Errors
    /// Invalid for a malformed key; Conflict when the key is already known.
    pub async fn add_key(
        &self,
        pem: &str,
        valid_from: Option<Timestamp>,
        reason: &Reason,
        actor: &str,
    ) -> Result<PublisherKey> {
        self.add_key_once(pem, valid_from, reason, actor, None)
            .await
            .map(|(key, _)| key)
    }

    /// [`Self::add_key`] under the client's request id: a retry returns
    /// the key as first added, without a new entry, and says it was a
    /// replay.
    ///
    /// # Errors
    /// As [`Self::add_key`]; Conflict (REQUEST_ID_REUSED) when the id wrote
    /// a different entry.
    pub async fn add_key_once(
        &self,
        pem: &str,
        valid_from: Option<Timestamp>,
        reason: &Reason,
        actor: &str,
        request: Option<&str>,
    ) -> Result<(PublisherKey, bool)> {
        let key = PublicKey::from_pem(pem)?;
        let same = |entry: &Entry| {
            matches!(entry, Entry::Key(k)
                if k.action == KeyAction::Add
                    && k.key_id == *key.id()
                    && valid_from.is_none_or(|at| at == k.at))
        };
        let pem = key.to_pem()?;
        let shared = self.shared.clone();
        let id = key.id().clone();
        let (reason, actor) = (reason.as_str().to_owned(), actor.to_owned());
        let (_, replayed) = self
            .record_once(request, "a key add", same, move |_view, now, request| {
                // A key the log knows already is refused by the rules.
                if shared
                    .rules()
                    .configured
                    .keys()
                    .iter()
                    .any(|k| k.id() == &id)
                {
                    return Err(Error::conflict(format!(
                        "publisher key {id} is already known; a revoked key cannot be added again"
                    )));
                }
                Ok(Entry::Key(KeyEntry {
                    action: KeyAction::Add,
                    key_id: id.clone(),
                    public_key: Some(pem.clone()),
                    at: valid_from.unwrap_or(now),
                    recorded_at: now,
                    actor: actor.clone(),
                    reason: reason.clone(),
                    request_id: Some(request.to_owned()),
                }))
            })
            .await?;
        tracing::info!(key_id = %key.id(), replayed, "publisher key added");
        Ok((self.key_view(key.id())?, replayed))
    }

    /// Stops trusting a publisher key for publishes logged from `at`
    /// (default now) on; earlier publishes keep verifying.
    ///
    /// # Errors
    /// NotFound for an unknown key; Conflict when it is already revoked.
    pub async fn revoke_key(
        &self,
        key_id: &KeyId,
        at: Option<Timestamp>,
        reason: &Reason,
        actor: &str,
    ) -> Result<PublisherKey> {
        self.revoke_key_once(key_id, at, reason, actor, None)
            .await
            .map(|(key, _)| key)
    }

    /// [`Self::revoke_key`] under the client's request id: a retry returns
    /// the key as first revoked, without a new entry, and says it was a
    /// replay.
    ///
    /// # Errors
    /// As [`Self::revoke_key`]; Conflict (REQUEST_ID_REUSED) when the id
    /// wrote a different entry.
    pub async fn revoke_key_once(
        &self,
        key_id: &KeyId,
        at: Option<Timestamp>,
        reason: &Reason,
        actor: &str,
        request: Option<&str>,
    ) -> Result<(PublisherKey, bool)> {
        let same = |entry: &Entry| {
            matches!(entry, Entry::Key(k)
                if k.action == KeyAction::Revoke
                    && k.key_id == *key_id
                    && at.is_none_or(|at| at == k.at))
        };
        let shared = self.shared.clone();
        let id = key_id.clone();
        let (reason, actor) = (reason.as_str().to_owned(), actor.to_owned());
        let (_, replayed) = self
            .record_once(request, "a key revoke", same, move |view, now, request| {
                // A second revocation is refused by the rules.
                let configured = shared
                    .rules()
                    .configured
                    .keys()
                    .iter()
                    .any(|k| k.id() == &id);
                if view.key(&id)?.is_none() && !configured {
                    return Err(Error::not_found(format!("publisher key {id} is not known")));
                }
                Ok(Entry::Key(KeyEntry {
                    action: KeyAction::Revoke,
                    key_id: id.clone(),
                    public_key: None,
                    at: at.unwrap_or(now),
                    recorded_at: now,
                    actor: actor.clone(),
                    reason: reason.clone(),
                    request_id: Some(request.to_owned()),
                }))
            })
            .await?;
        tracing::info!(%key_id, replayed, "publisher key revoked");
        Ok((self.key_view(key_id)?, replayed))
    }

    /// Every publisher key, configured or logged, with its validity.
    ///
    /// # Errors
    /// Internal when the index fails.
    pub fn keys(&self) -> Result<Vec<PublisherKey>> {
        let records = self.shared.index.keys()?;
        let mut out = Vec::new();
        for k in self.shared.rules().configured.keys() {
            let rec = records.iter().find(|r| &r.key_id == k.id());
            out.push(PublisherKey {
                key_id: k.id().clone(),
                public_key_pem: k.to_pem()?,
                source: KeySource::Config,
                valid_from: None,
                revoked_at: rec.and_then(|r| r.revoked_at),
            });
        }
        for r in records {
            if let Some(pem) = r.public_key.filter(|_| r.added_at_index.is_some()) {
                if out.iter().any(|k| k.key_id == r.key_id) {
                    continue;
                }
                out.push(PublisherKey {
                    key_id: r.key_id,
                    public_key_pem: pem,
                    source: KeySource::Log,
                    valid_from: r.valid_from,
                    revoked_at: r.revoked_at,
                });
            }
        }
        Ok(out)
    }

    fn key_view(&self, key_id: &KeyId) -> Result<PublisherKey> {
        self.keys()?
            .into_iter()
            .find(|k| &k.key_id == key_id)
            .ok_or_else(|| Error::internal(format!("key {key_id} vanished from the index")))
    }
}
