//! Publishing: a header checked before any bytes arrive, then the bytes
//! hashed, stored write-once and bound to their release id in the log.

use bytes::Bytes;

use crate::digest::Digest;
use crate::error::{Error, Kind, Result};
use crate::ids::ReleaseId;
use crate::log::{Entry, PublishEntry};
use crate::records::ArtifactRecord;
use crate::signing::{self, VerifiedEnvelope};
use crate::staging::Staging;
use stackpin_core::state::{self, State as _};

use super::once::Once;
use super::resolve::page_size;
use super::{ArtifactRef, Claim, Published, Registry, reused};

/// A publish whose header was accepted and whose bytes are arriving.
#[derive(Debug)]
pub struct PendingPublish {
    envelope: VerifiedEnvelope,
    media_type: String,
    max: u64,
    /// The size the header declared; the bytes must add up to it.
    declared: u64,
    /// Where the bytes go as they arrive, hashed as written.
    staging: Staging,
    /// The client's request id, claimed.
    claim: Option<Claim>,
}

impl PendingPublish {
    /// Adds the next chunk of artifact bytes (to the staging file).
    ///
    /// # Errors
    /// TooLarge when the artifact grows past the limit; Invalid past the
    /// declared size; Unavailable or NoSpace when staging fails.
    pub async fn push(&mut self, chunk: Bytes) -> Result<()> {
        let total = self.staging.len() + chunk.len() as u64;
        if total > self.max {
            return Err(Error::new(
                Kind::TooLarge,
                format!(
                    "artifact exceeds the registry's limit of {} bytes",
                    self.max
                ),
            ));
        }
        if total > self.declared {
            return Err(Error::invalid(format!(
                "more bytes arrived than the {} the publish header declared; nothing was stored",
                self.declared
            )));
        }
        self.staging.push(chunk).await
    }
}

impl Registry {
    /// Accepts a publish header: checks the names and the envelope's
    /// signature before any bytes are received.
    ///
    /// # Errors
    /// Invalid for bad names or a bad or untrusted envelope; TooLarge when the
    /// announced size is over the limit; Conflict when the release id is
    /// already bound to another digest; Unavailable or NoSpace when no
    /// staging file can be made.
    pub async fn begin_publish(
        &self,
        release_id: &str,
        media_type: &str,
        envelope: &[u8],
        size_hint: u64,
    ) -> Result<PendingPublish> {
        self.begin_publish_once(release_id, media_type, envelope, size_hint, None)
            .await
    }

    /// [`Self::begin_publish`] under the client's request id: a retry of
    /// the same publish returns the first result without a new entry.
    ///
    /// # Errors
    /// As [`Self::begin_publish`]; Invalid for a malformed id; Busy while a
    /// request with the id is in flight here.
    pub async fn begin_publish_once(
        &self,
        release_id: &str,
        media_type: &str,
        envelope: &[u8],
        size_hint: u64,
        request: Option<&str>,
    ) -> Result<PendingPublish> {
        let claim = self.claim(request)?;
        let release_id: ReleaseId = release_id.parse()?;
        let media_type = parse_media_type(media_type)?;
        if size_hint > self.shared.limits.max_artifact_bytes {
            return Err(Error::new(
                Kind::TooLarge,
                format!(
                    "artifact is {size_hint} bytes; the registry's limit is {} bytes",
                    self.shared.limits.max_artifact_bytes
                ),
            ));
        }
        let rules = self.shared.rules();
        let records = self.shared.index.keys()?;
        let now = self.shared.clock.now();
        let trusted = state::valid_keys(&rules, &records, now);
        if trusted.is_empty() {
            // Refused for its signature, as any publish no key verifies.
            return Err(Error::invalid(
                "this registry trusts no publisher key now (none configured, or all revoked), so \
                 no signature can verify: its operator starts it with --trusted-keys \
                 (trusted_keys) or adds one with `stackpin key add`",
            ));
        }
        let envelope = match signing::verify_envelope(envelope, &trusted) {
            Ok(e) => e,
            Err(e) => {
                return Err(
                    revoked_signer(&rules, &records, envelope, now).unwrap_or_else(|| e.into())
                );
            }
        };
        let attestation = envelope.attestation();
        if !signing::is_publish_predicate(
            &attestation.predicate_type,
            &self.shared.limits.predicate_types,
        ) {
            return Err(state::Violation::PredicateType {
                index: self.shared.index.applied()?,
                release_id: attestation.release_id.clone(),
                predicate_type: attestation.predicate_type.clone(),
                recorded: None,
            }
            .to_error()
            .into());
        }
        if attestation.release_id != release_id {
            return Err(Error::invalid(format!(
                "the envelope's subject is release {}, but this publish is for release {release_id}",
                attestation.release_id
            )));
        }
        if let Some(existing) = self.shared.index.artifact_by_release(&release_id)?
            && existing.digest != attestation.digest
        {
            return Err(conflict(&existing));
        }
        let staging = Staging::create(self.shared.staging_dir.clone(), size_hint).await?;
        Ok(PendingPublish {
            envelope,
            media_type,
            max: self.shared.limits.max_artifact_bytes,
            declared: size_hint,
            staging,
            claim,
        })
    }

    /// Finishes a publish once all bytes arrived: checks them against the
    /// envelope, stores the blob, and logs the binding.
    ///
    /// # Errors
    /// Invalid for empty or non-JSON bytes or a digest other than the signed
    /// one; Conflict when the release id got bound to other bytes;
    /// Precondition when the key was revoked meanwhile; Unavailable when
    /// storage fails.
    pub async fn finish_publish(&self, pending: PendingPublish) -> Result<Published> {
        let PendingPublish {
            envelope,
            media_type,
            staging,
            declared,
            claim,
            ..
        } = pending;
        if staging.is_empty() {
            return Err(Error::invalid("artifact is empty"));
        }
        // A buffered artifact is hashed and checked in one hand-off to the
        // blocking pool, with its room (the bytes, and the check's decode
        // buffer, at most twice their length) reserved first.
        let depth = self.shared.limits.max_json_depth;
        let early_room = if staging.in_memory() {
            let len = staging.len();
            Some(
                self.shared
                    .budget
                    .reserve_within(
                        3 * len + 64 * 1024,
                        "checking a published artifact",
                        self.shared.limits.request_timeout,
                    )
                    .await?,
            )
        } else {
            None
        };
        let (staged, checked) = staging
            .finish(move |bytes| {
                stackpin_core::json::check(bytes, depth).map_err(|e| not_strict(depth, &e))
            })
            .await?;
        if staged.len != declared {
            return Err(Error::invalid(format!(
                "the publish header declared {declared} bytes but {} arrived (a cut stream?); \
                 nothing was stored",
                staged.len
            )));
        }
        let attestation = envelope.attestation().clone();
        let envelope = envelope.into_json();
        let digest = staged.digest;
        if digest != attestation.digest {
            return Err(Error::invalid(format!(
                "the received bytes hash to {digest}, but the envelope is signed for {}",
                attestation.digest
            )));
        }
        // A small artifact is read back once, checked and stored from
        // memory; a large one is checked and stored from the staging file.
        // Either way its room is reserved: the bytes held, and the buffer
        // the check decodes each string into (up to twice the longest
        // string while it grows). All bytes have arrived, so this waits
        // its turn rather than refusing.
        let check_room = 2 * staged.longest_string + 64 * 1024;
        let file = staged.file.as_ref().map(|f| f.path().to_owned());
        let small = staged.len <= crate::blobs::MULTIPART_ABOVE as u64;
        let room = match early_room {
            Some(room) => room,
            None => {
                self.shared
                    .budget
                    .reserve_within(
                        if small {
                            staged.len + check_room
                        } else {
                            check_room
                        },
                        "checking a published artifact",
                        self.shared.limits.request_timeout,
                    )
                    .await?
            }
        };
        let bytes = match (staged.bytes.clone(), &file) {
            (Some(bytes), _) => {
                checked.unwrap_or_else(|| {
                    Err(Error::internal("a buffered publish was not checked"))
                })?;
                Some(bytes)
            }
            (None, Some(path)) if small => Some(self.read_and_check(path).await?),
            (None, Some(path)) => {
                self.check_json(path).await?;
                drop(room);
                None
            }
            (None, None) => return Err(Error::internal("a staged publish has no bytes")),
        };
        let release_id = attestation.release_id.clone();
        if let Some((index, entry)) = self.earlier(claim.as_ref())? {
            return self.publish_again(index, &entry, &release_id, &digest, claim.as_ref());
        }
        if let Some(existing) = self.shared.index.artifact_by_release(&release_id)? {
            return same_or_conflict(existing, &digest);
        }
        let size = staged.len;
        match bytes {
            Some(bytes) => self.shared.blobs.put(&digest, bytes).await?,
            None => {
                self.shared
                    .blobs
                    .put_file(
                        &digest,
                        file.as_deref().unwrap_or(std::path::Path::new("")),
                        size,
                        &self.shared.budget,
                        self.shared.limits.request_timeout,
                    )
                    .await?;
            }
        }
        drop(staged);
        let rid = release_id.clone();
        let same = |entry: &Entry| matches!(entry, Entry::Publish(p) if p.release_id == release_id && p.digest == digest);
        let once = self
            .record_claimed(claim.as_ref(), same, move |view, now, request| {
                if view.release(&rid)?.is_some() {
                    return Ok(None); // bound meanwhile: answered below
                }
                // The rules check that the key is still valid at the
                // instant the entry is logged.
                Ok(Some(Entry::Publish(PublishEntry {
                    release_id: rid.clone(),
                    digest,
                    size,
                    media_type: media_type.clone(),
                    key_id: attestation.key_id.clone(),
                    envelope: envelope.clone(),
                    recorded_at: now,
                    request_id: Some(request.to_owned()),
                    predicate_type: Some(attestation.predicate_type.clone()),
                })))
            })
            .await?;
        let artifact = self
            .shared
            .index
            .artifact_by_release(&release_id)?
            .ok_or_else(|| Error::internal("published artifact is missing from the index"))?;
        match once {
            Once::Recorded(index) => {
                tracing::info!(release_id = %release_id, %digest, size, index, "published");
                metrics::counter!("stackpin_published_bytes_total").increment(size);
                Ok(Published {
                    artifact,
                    created: true,
                })
            }
            Once::Replayed(index) => Ok(Published {
                created: artifact.log_index == index,
                artifact,
            }),
            Once::Unneeded => same_or_conflict(artifact, &digest),
        }
    }

    /// The answer to a publish whose request id already wrote entry
    /// `index`: its first result when it is the same publish.
    fn publish_again(
        &self,
        index: u64,
        entry: &Entry,
        release_id: &ReleaseId,
        digest: &Digest,
        claim: Option<&Claim>,
    ) -> Result<Published> {
        let same = matches!(entry, Entry::Publish(p) if p.release_id == *release_id && p.digest == *digest);
        if !same {
            return Err(reused(claim.map_or("", Claim::id), index, entry));
        }
        let artifact = self
            .shared
            .index
            .artifact_by_release(release_id)?
            .ok_or_else(|| Error::internal("a published artifact is missing from the index"))?;
        Ok(Published {
            created: artifact.log_index == index,
            artifact,
        })
    }

    /// Reads a small staged artifact whole and checks it is strict JSON.
    async fn read_and_check(&self, path: &std::path::Path) -> Result<Bytes> {
        let path = path.to_owned();
        let depth = self.shared.limits.max_json_depth;
        crate::blocking::run(move || {
            let bytes = std::fs::read(&path).map_err(|e| {
                tracing::error!(error = %e, path = %path.display(), "reading a staging file");
                Error::new(
                    Kind::Unavailable,
                    "the registry could not read its staging file",
                )
            })?;
            stackpin_core::json::check(&bytes, depth).map_err(|e| not_strict(depth, &e))?;
            Ok(Bytes::from(bytes))
        })
        .await
    }

    /// Checks that the staged bytes are strict JSON (see
    /// `stackpin_core::json`), reading them once more from the staging file.
    async fn check_json(&self, path: &std::path::Path) -> Result<()> {
        let path = path.to_owned();
        let depth = self.shared.limits.max_json_depth;
        crate::blocking::run(move || {
            let file = std::fs::File::open(&path).map_err(|e| {
                tracing::error!(error = %e, path = %path.display(), "opening a staging file");
                Error::new(
                    Kind::Unavailable,
                    "the registry could not read its staging file",
                )
            })?;
            let reader = std::io::BufReader::with_capacity(64 * 1024, file);
            stackpin_core::json::check_reader(reader, depth).map_err(|e| match e {
                stackpin_core::json::ReadError::Json(e) => not_strict(depth, &e),
                stackpin_core::json::ReadError::Io(e) => {
                    tracing::error!(error = %e, "reading a staging file");
                    Error::new(
                        Kind::Unavailable,
                        "the registry could not read its staging file",
                    )
                }
            })
        })
        .await
    }

    /// Looks an artifact up.
    ///
    /// # Errors
    /// NotFound when nothing is published under the name.
    pub fn artifact(&self, what: &ArtifactRef) -> Result<ArtifactRecord> {
        match what {
            ArtifactRef::Release(r) => self
                .shared
                .index
                .artifact_by_release(r)?
                .ok_or_else(|| Error::not_found(format!("release {r} is not published"))),
            ArtifactRef::Digest(d) => self.shared.index.artifact_by_digest(d)?.ok_or_else(|| {
                Error::not_found(format!("no artifact with digest {d} is published"))
            }),
        }
    }

    /// The bytes of a published artifact in chunks of at most `chunk`
    /// bytes, checked as they stream: damaged bytes end the stream with
    /// DataLoss before its last chunk.
    ///
    /// # Errors
    /// DataLoss when the blob is missing; Unavailable when storage fails.
    pub async fn artifact_stream(
        &self,
        artifact: &ArtifactRecord,
        chunk: usize,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        self.shared
            .blobs
            .stream(&artifact.digest, artifact.size, chunk)
            .await
    }

    /// The budget every stream's buffers are reserved in.
    pub fn budget(&self) -> &crate::budget::Budget {
        &self.shared.budget
    }

    /// Artifacts in release id order, after `after`.
    ///
    /// # Errors
    /// Internal when the index fails.
    pub fn list_artifacts(
        &self,
        after: Option<&ReleaseId>,
        limit: usize,
    ) -> Result<(Vec<ArtifactRecord>, Option<ReleaseId>)> {
        let limit = page_size(limit);
        let mut page = self.shared.index.list_artifacts(after, limit + 1)?;
        let more = page.len() > limit;
        page.truncate(limit);
        let next = if more {
            page.last().map(|a| a.release_id.clone())
        } else {
            None
        };
        Ok((page, next))
    }
}

fn not_strict(depth: usize, e: &stackpin_core::json::JsonError) -> Error {
    Error::invalid(format!(
        "artifact is not strict JSON (objectstack.json must be RFC 8259 JSON in UTF-8, without \
         duplicate names, nested at most {depth} deep): {e}; nothing was stored"
    ))
}

fn conflict(existing: &ArtifactRecord) -> Error {
    Error::conflict(format!(
        "release {} is already bound to {} (log entry {}); release ids are write-once, \
         publish the new bytes under a new release id",
        existing.release_id, existing.digest, existing.log_index
    ))
    .with_reason(state::reason::RELEASE_BOUND)
}

fn same_or_conflict(existing: ArtifactRecord, digest: &Digest) -> Result<Published> {
    if existing.digest == *digest {
        Ok(Published {
            artifact: existing,
            created: false,
        })
    } else {
        Err(conflict(&existing))
    }
}

fn parse_media_type(text: &str) -> Result<String> {
    if text.is_empty() {
        return Ok("application/json".to_owned());
    }
    let valid = text.len() <= 128
        && text.split_once('/').is_some_and(|(t, s)| {
            let part = |p: &str| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            part(t) && part(s)
        });
    if valid {
        Ok(text.to_owned())
    } else {
        Err(Error::invalid(format!(
            "media type {} is not of the form type/subtype",
            stackpin_core::error::shown(text)
        )))
    }
}

/// When `envelope` verifies under a publisher key that was revoked by
/// `now`, the refusal that names it and its revocation; otherwise `None`
/// (the caller's error stands).
fn revoked_signer(
    rules: &stackpin_core::state::Rules,
    records: &[stackpin_core::state::KeyRecord],
    envelope: &[u8],
    now: crate::time::Timestamp,
) -> Option<Error> {
    records
        .iter()
        .filter_map(|r| Some((r, r.revoked_at.filter(|at| *at <= now)?)))
        .find_map(|(r, at)| {
            let key = match &r.public_key {
                Some(pem) => signing::PublicKey::from_pem(pem).ok()?,
                None => rules
                    .configured
                    .keys()
                    .iter()
                    .find(|k| k.id() == &r.key_id)?
                    .clone(),
            };
            signing::verify_envelope(envelope, &signing::TrustedKeys::new([key])).ok()?;
            Some(Error::invalid(format!(
                "the envelope is signed by publisher key {}, which was revoked at {at}: \
                 publishes signed with it are refused from then on; sign with a key trusted now \
                 (`stackpin key list`)",
                r.key_id
            )))
        })
}
