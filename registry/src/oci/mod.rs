//! The OCI Distribution pull API (distribution-spec 1.1), read-only, on
//! the HTTP listener: so that registry clients (skopeo, ORAS, crane, and
//! the GitOps tools built on them) read artifacts and follow environments
//! with no stackpin code. See docs/oci.md for the model.
//!
//! ```text
//! GET /v2/                                  the API's base (200 {})
//! GET|HEAD /v2/<repo>/manifests/<ref>       a tag (release id, environment,
//!                                           <env>.at.<instant>) or a digest
//! GET|HEAD /v2/<repo>/blobs/<digest>        an artifact's bytes, an archive,
//!                                           the empty config; one byte range
//! GET /v2/<repo>/tags/list?n=&last=         release ids and environments
//! GET /v2/<repo>/referrers/<digest>         a manifest's signature and, for
//!                                           a pin, its proof ([`referrers`]);
//!                                           also as the tag sha256-<hex>
//! (repo: objectstack, the artifact as the layer; objectstack-tgz, a
//! reproducible tar+gzip of it: see [`tgz`])
//! any other verb                            405 UNSUPPORTED
//! ```
//!
//! Every manifest is derived from the index (the log's rule state), never
//! read as the truth from storage: a manifest served by tag is also stored
//! under its digest (write-once, content-addressed) so that any replica
//! answers for that digest later, and a stored manifest is derived again
//! from what it claims before it is served. Tokens are those of the rest
//! of the listener, sent as a bearer token or as the password of HTTP
//! Basic (what registry clients' credentials send).

mod answer;
mod lookup;
mod memory;
pub mod model;
mod proofs;
pub mod referrers;
mod request;
mod stored;
pub mod tgz;

use answer::{Oops, body, content_headers, error, insert, refused, version};
use request::{Route, authorize, form_urlencoded, matches, parse_digest, parse_range, route};
use stored::{
    Named, archive_max, archive_pointer, artifact_bytes, blob_bytes, blob_path, damaged,
    named_once, put_once, read_bounded, stored_path,
};

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Response, StatusCode};

use crate::auth::{Authorizer, Principal};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::ids::EnvName;
use crate::records::{ArtifactRecord, PinRecord};
use crate::registry::Registry;
use lookup::{Found, find_claimed, find_tag, tags};
use memory::Memory;
use model::Manifest;

/// The largest stored manifest read back (derived manifests are about a
/// kilobyte).
const MAX_STORED_MANIFEST: u64 = 64 * 1024;
/// The most tags one `tags/list` page holds.
pub(super) const MAX_TAGS_PAGE: usize = 1000;
/// The realm registry clients are told to send credentials for.
pub(crate) const CHALLENGE: &str = "Basic realm=\"stackpin\", charset=\"UTF-8\"";

/// The API's state besides the registry: what it derived recently, kept
/// in memory.
#[derive(Clone, Default)]
pub struct Oci {
    /// What each tag named when the log had the size kept with it: a tag
    /// asked again before the next commit (a GitOps tool's poll) is
    /// answered from here, with no index read.
    tags: Arc<Memory<(model::Form, String), (u64, Tagged)>>,
    /// Manifests served, by digest.
    remembered: Arc<Memory<String, Bytes>>,
    /// Artifact digest to its archive's digest and size, once checked.
    archives: Arc<Memory<Digest, (Digest, u64)>>,
    /// A pin's log index to its proof's digest and size, once checked.
    proofs: Arc<Memory<u64, (Digest, u64)>>,
}

/// A tag's answer: the environment of the pin it names (none for a
/// release id), the manifest's digest and its bytes.
type Tagged = (Option<EnvName>, String, Bytes);

/// One answer of the API.
pub type Answer = Response<Full<Bytes>>;

/// Whether `path` is the API's.
pub fn is_oci(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

impl Oci {
    /// Answers a request for a path under `/v2`.
    pub async fn handle<B>(
        &self,
        registry: &Arc<Registry>,
        auth: &Authorizer,
        cn: Option<&str>,
        req: &hyper::Request<B>,
    ) -> Answer {
        let (method, headers) = (req.method(), req.headers());
        let (path, query) = (req.uri().path(), req.uri().query().unwrap_or_default());
        let head = method == Method::HEAD;
        if method != Method::GET && !head {
            return refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "this registry is read-only: it serves pulls of what the signed log holds; \
                 publish and pin with stackpin",
            );
        }
        if let Some(e) = registry.contradicted() {
            return error(&e);
        }
        let who = match authorize(auth, cn, headers) {
            Ok(who) => who,
            Err(e) => return error(&e),
        };
        let rest = path.trim_start_matches("/v2").trim_start_matches('/');
        if rest.is_empty() {
            let mut r = body(
                StatusCode::OK,
                Bytes::from_static(b"{}"),
                "application/json",
            );
            version(&mut r);
            return r;
        }
        let routed = route(rest).map(|(name, r)| (name, model::Form::of(name), r));
        let result = match routed {
            Some((_, Some(form), Route::Manifest(reference))) => {
                self.manifest(registry, &who, form, reference, headers)
                    .await
            }
            Some((_, Some(_), Route::Blob(digest))) => {
                self.blob(registry, digest, headers, head).await
            }
            Some((name, Some(_), Route::Tags)) => tags(registry, &who, name, query).await,
            Some((_, Some(form), Route::Referrers(digest))) => {
                self.referrers(registry, &who, form, digest, query).await
            }
            Some((name, None, _)) => Err(Oops::new(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                format!(
                    "no repository {}: this registry has two, {} (the artifact as the layer) \
                     and {} (a tar+gzip of it)",
                    stackpin_core::error::shown(name),
                    model::REPOSITORY,
                    model::TGZ_REPOSITORY
                ),
            )),
            None => Err(Oops::new(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                "not an endpoint of the distribution API's pull side",
            )),
        };
        let mut answer = match result {
            Ok(a) => a,
            Err(Oops::Api(status, code, message)) => refused(status, code, &message),
            Err(Oops::Failed(e)) => error(&e),
        };
        version(&mut answer);
        if head {
            *answer.body_mut() = Full::new(Bytes::new());
        }
        answer
    }

    /// `GET|HEAD /v2/<name>/manifests/<reference>`.
    async fn manifest(
        &self,
        registry: &Arc<Registry>,
        who: &Principal,
        form: model::Form,
        reference: &str,
        headers: &HeaderMap,
    ) -> std::result::Result<Answer, Oops> {
        if let Some(subject) = referrers::tag_subject(reference) {
            let digest = parse_digest(&subject)?;
            let bytes = self
                .referrer_index(registry, who, form, &digest, None)
                .await?;
            return Ok(sized(
                headers,
                referrers::INDEX_TYPE,
                Digest::of(&bytes).to_string(),
                bytes,
            ));
        }
        let bytes = if reference.starts_with("sha256:") {
            let digest = parse_digest(reference)?;
            let bytes = self.by_digest(registry, form, &digest).await?;
            if who.scope().is_some() {
                let claimed = serde_json::from_slice::<Manifest>(&bytes)
                    .ok()
                    .and_then(|m| model::claims(&m));
                if let Some((_, Some((env, _)))) = claimed {
                    seen_by(who, &env)?;
                }
            }
            (digest.to_string(), bytes)
        } else {
            if !model::is_tag(reference) {
                return Err(Oops::new(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    format!("{} is not a tag", stackpin_core::error::shown(reference)),
                ));
            }
            let (env, digest, bytes) = self.tagged(registry, form, reference).await?;
            if let Some(env) = env {
                seen_by(who, &env)?;
            }
            (digest, bytes)
        };
        let (digest, bytes) = bytes;
        Ok(sized(headers, model::MANIFEST_TYPE, digest, bytes))
    }

    /// `GET /v2/<name>/referrers/<digest>?artifactType=`: the referrers of
    /// a manifest as an image index; an empty one for a digest this
    /// registry serves no manifest under (the spec's answer, not 404).
    async fn referrers(
        &self,
        registry: &Arc<Registry>,
        who: &Principal,
        form: model::Form,
        reference: &str,
        query: &str,
    ) -> std::result::Result<Answer, Oops> {
        let digest = parse_digest(reference)?;
        let filter = form_urlencoded(query)
            .into_iter()
            .find(|(k, _)| k == "artifactType")
            .map(|(_, v)| v);
        let bytes = self
            .referrer_index(registry, who, form, &digest, filter.as_deref())
            .await?;
        let mut r = body(StatusCode::OK, bytes, referrers::INDEX_TYPE);
        if filter.is_some() {
            insert(
                &mut r,
                header::HeaderName::from_static("oci-filters-applied"),
                "artifactType",
            );
        }
        Ok(r)
    }

    /// The referrers index of manifest `digest`, of `artifact_type` only
    /// when given.
    async fn referrer_index(
        &self,
        registry: &Arc<Registry>,
        who: &Principal,
        form: model::Form,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> std::result::Result<Bytes, Oops> {
        let subject = match self.by_digest(registry, form, digest).await {
            Ok(bytes) => bytes,
            Err(Oops::Api(..)) => return Ok(referrers::index(&[])),
            Err(e) => return Err(e),
        };
        let mut found = self.referrers_of(registry, Some(who), &subject).await?;
        found.retain(|(m, _)| artifact_type.is_none_or(|t| m.artifact_type == t));
        Ok(referrers::index(&found))
    }

    /// Every referrer of the manifest with bytes `subject`: the
    /// publisher's signature and, for a pin's manifest, the pin's proof.
    /// None for a referrer (a referrer has no referrers of its own).
    async fn referrers_of(
        &self,
        registry: &Arc<Registry>,
        who: Option<&Principal>,
        subject: &Bytes,
    ) -> std::result::Result<Vec<(Manifest, Bytes)>, Oops> {
        let of: Manifest = serde_json::from_slice(subject)
            .map_err(|_| Error::internal("a served manifest does not parse"))?;
        if of.subject.is_some() {
            return Ok(Vec::new());
        }
        let (artifact, pin) = self.claimed(registry, &of).await?;
        if let (Some(who), Some(p)) = (who, &pin) {
            seen_by(who, &p.entry.env)?;
        }
        let mut found = vec![
            self.signature(registry, &artifact, pin.as_ref(), subject)
                .await?,
        ];
        if let Some(p) = &pin
            && let Some((digest, size)) = self.proof(registry, p).await?
        {
            let manifest =
                referrers::proof(&artifact, p, &digest, size, referrers::subject(subject));
            let bytes = model::encode(&manifest);
            self.remember(registry, &bytes).await?;
            found.push((manifest, bytes));
        }
        Ok(found)
    }

    /// The digest and size of `pin`'s stored proof, once checked.
    async fn proof(
        &self,
        registry: &Arc<Registry>,
        pin: &PinRecord,
    ) -> Result<Option<(Digest, u64)>> {
        if let Some(known) = self.proofs.get(&pin.log_index)? {
            return Ok(Some(known));
        }
        let Some(found) = proofs::proof_of(registry, pin).await? else {
            return Ok(None);
        };
        self.proofs.insert(pin.log_index, found)?;
        Ok(Some(found))
    }

    /// The signature referrer of the manifest `subject`: its envelope
    /// stored once as a blob, its manifest remembered for requests by
    /// digest.
    async fn signature(
        &self,
        registry: &Registry,
        artifact: &ArtifactRecord,
        pin: Option<&PinRecord>,
        subject: &Bytes,
    ) -> Result<(Manifest, Bytes)> {
        let envelope = referrers::envelope(artifact);
        let manifest = referrers::signature(artifact, pin, &envelope, referrers::subject(subject));
        let bytes = model::encode(&manifest);
        // Once remembered, its envelope is stored: no write per request.
        if !self.remembered.contains(&Digest::of(&bytes).to_string())? {
            put_once(
                &*registry.store(),
                &blob_path(&Digest::of(&envelope)),
                envelope,
            )
            .await?;
        }
        self.remember(registry, &bytes).await?;
        Ok((manifest, bytes))
    }

    /// The artifact and pin an artifact manifest claims, as the index has
    /// them.
    async fn claimed(&self, registry: &Arc<Registry>, claimed: &Manifest) -> Result<Found> {
        let (release, pin) = model::claims(claimed)
            .ok_or_else(|| Error::internal("a served manifest claims no release"))?;
        let r = registry.clone();
        crate::blocking::run(move || find_claimed(&r, &release, pin.as_ref())).await
    }

    /// The manifest `tag` names in `form`, its digest, and the
    /// environment of its pin: from memory while the log has not grown
    /// since it was derived (no index read, no parse, no hashing), else
    /// derived again.
    async fn tagged(
        &self,
        registry: &Arc<Registry>,
        form: model::Form,
        tag: &str,
    ) -> Result<Tagged> {
        let size = registry.applied_now();
        let key = (form, tag.to_owned());
        if let Some((at, answer)) = self.tags.get(&key)?
            && at == size
        {
            return Ok(answer);
        }
        let (r, t) = (registry.clone(), tag.to_owned());
        let (artifact, pin) = crate::blocking::run(move || find_tag(&r, &t)).await?;
        let layer = self.layer(registry, form, &artifact).await?;
        let bytes = model::encode(&model::manifest(&artifact, pin.as_ref(), layer));
        self.remember(registry, &bytes).await?;
        let answer = (
            pin.map(|p| p.entry.env),
            Digest::of(&bytes).to_string(),
            bytes,
        );
        self.tags.insert(key, (size, answer.clone()))?;
        Ok(answer)
    }

    /// The layer of `artifact` in `form`.
    async fn layer(
        &self,
        registry: &Arc<Registry>,
        form: model::Form,
        artifact: &ArtifactRecord,
    ) -> Result<model::Descriptor> {
        match form {
            model::Form::Raw => Ok(model::raw_layer(artifact)),
            model::Form::Tgz => {
                let (digest, size) = self.archive(registry, artifact).await?;
                Ok(model::tgz_layer(&digest, size))
            }
        }
    }

    /// The digest and size of `artifact`'s tar+gzip archive: the one
    /// stored by whichever replica built it first (checked to hold exactly
    /// the artifact), else built and stored now.
    async fn archive(
        &self,
        registry: &Arc<Registry>,
        artifact: &ArtifactRecord,
    ) -> Result<(Digest, u64)> {
        if let Some(known) = self.archives.get(&artifact.digest)? {
            return Ok(known);
        }
        let store = registry.store();
        let pointer = archive_pointer(&artifact.digest);
        let make = || async {
            let bytes = artifact_bytes(registry, artifact).await?;
            crate::blocking::run(move || tgz::build(&bytes).map(Some)).await
        };
        let (digest, archive) =
            match named_once(&*store, &pointer, archive_max(registry), make).await? {
                Named::Found(digest, archive) => (digest, archive),
                Named::Nothing | Named::Damaged(_) => return Err(damaged(&pointer)),
            };
        let size = archive.len() as u64;
        let (expected, file_size) = (artifact.digest, artifact.size);
        let checked =
            crate::blocking::run(move || Ok(tgz::holds(&archive, &expected, file_size))).await?;
        if !checked {
            return Err(damaged(&pointer));
        }
        self.archives.insert(artifact.digest, (digest, size))?;
        Ok((digest, size))
    }

    /// Keeps a manifest served by tag for later requests by digest: in
    /// memory, and stored once under its digest for every replica.
    async fn remember(&self, registry: &Registry, bytes: &Bytes) -> Result<()> {
        let digest = Digest::of(bytes);
        if self.remembered.insert(digest.to_string(), bytes.clone())? {
            return Ok(());
        }
        put_once(&*registry.store(), &stored_path(&digest), bytes.clone()).await
    }

    /// The manifest with `digest`: remembered, or stored by a replica that
    /// served it, and derived again from what it claims either way.
    async fn by_digest(
        &self,
        registry: &Arc<Registry>,
        form: model::Form,
        digest: &Digest,
    ) -> std::result::Result<Bytes, Oops> {
        self.stored_manifest(registry, form, digest, true).await
    }

    /// [`Self::by_digest`]; a stored referrer only when `referrer` (a
    /// referrer's subject is an artifact manifest, never a referrer, so
    /// reading one back recurses once at most).
    async fn stored_manifest(
        &self,
        registry: &Arc<Registry>,
        form: model::Form,
        digest: &Digest,
        referrer: bool,
    ) -> std::result::Result<Bytes, Oops> {
        let unknown = || {
            Oops::new(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                format!("no manifest {digest} was served from this log"),
            )
        };
        if let Some(bytes) = self.remembered.get(&digest.to_string())? {
            return Ok(bytes);
        }
        let stored = read_bounded(
            &*registry.store(),
            &stored_path(digest),
            MAX_STORED_MANIFEST,
        )
        .await?
        .ok_or_else(unknown)?;
        if Digest::of(&stored) != *digest {
            tracing::warn!(%digest, "a stored manifest does not hash to its name; not served");
            return Err(unknown());
        }
        let claimed: Manifest = serde_json::from_slice(&stored).map_err(|_| unknown())?;
        let bytes = match &claimed.subject {
            // A referrer: derived again from its subject, itself checked
            // and never a referrer.
            Some(_) if !referrer => return Err(unknown()),
            Some(subject) => {
                let subject_digest = parse_digest(&subject.digest).map_err(|_| unknown())?;
                let subject_bytes =
                    Box::pin(self.stored_manifest(registry, form, &subject_digest, false)).await?;
                let all = Box::pin(self.referrers_of(registry, None, &subject_bytes)).await?;
                all.into_iter()
                    .map(|(_, bytes)| bytes)
                    .find(|bytes| *bytes == stored)
                    .unwrap_or_default()
            }
            None => {
                model::claims(&claimed).ok_or_else(unknown)?;
                let (artifact, pin) = self.claimed(registry, &claimed).await?;
                let layer = self.layer(registry, form, &artifact).await?;
                model::encode(&model::manifest(&artifact, pin.as_ref(), layer))
            }
        };
        if bytes != stored {
            tracing::warn!(%digest, "a stored manifest is not what the log derives; not served");
            return Err(unknown());
        }
        self.remember(registry, &bytes).await?;
        Ok(bytes)
    }

    /// `GET|HEAD /v2/<name>/blobs/<digest>`: the empty config, a
    /// published artifact's bytes, or a stored tar+gzip archive, held in
    /// the byte budget until sent.
    async fn blob(
        &self,
        registry: &Arc<Registry>,
        reference: &str,
        headers: &HeaderMap,
        head: bool,
    ) -> std::result::Result<Answer, Oops> {
        let digest = parse_digest(reference)?;
        let name = digest.to_string();
        let (bytes, size) = blob_bytes(registry, &digest, head).await?.ok_or_else(|| {
            Oops::new(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                format!("no blob {name} in this repository"),
            )
        })?;
        if matches(headers, &name) {
            let mut r = body(
                StatusCode::NOT_MODIFIED,
                Bytes::new(),
                "application/octet-stream",
            );
            content_headers(&mut r, &name, None);
            return Ok(r);
        }
        let bytes = bytes.unwrap_or_default();
        let range = match headers.get(header::RANGE) {
            None => None,
            Some(v) => Some(parse_range(v.to_str().unwrap_or_default(), size)?),
        };
        let mut r = match range {
            Some((start, end)) if !head => {
                let part = bytes.slice(
                    usize::try_from(start).unwrap_or(0)..usize::try_from(end + 1).unwrap_or(0),
                );
                let mut r = body(
                    StatusCode::PARTIAL_CONTENT,
                    part,
                    "application/octet-stream",
                );
                content_headers(&mut r, &name, Some(end + 1 - start));
                insert(
                    &mut r,
                    header::CONTENT_RANGE,
                    &format!("bytes {start}-{end}/{size}"),
                );
                r
            }
            _ => {
                let mut r = body(StatusCode::OK, bytes, "application/octet-stream");
                content_headers(&mut r, &name, Some(size));
                r
            }
        };
        insert(&mut r, header::ACCEPT_RANGES, "bytes");
        Ok(r)
    }
}

/// A manifest or index answer: 304 when `If-None-Match` names its digest.
fn sized(headers: &HeaderMap, content_type: &'static str, digest: String, bytes: Bytes) -> Answer {
    if matches(headers, &digest) {
        let mut r = body(StatusCode::NOT_MODIFIED, Bytes::new(), content_type);
        content_headers(&mut r, &digest, None);
        return r;
    }
    let len = bytes.len() as u64;
    let mut r = body(StatusCode::OK, bytes, content_type);
    content_headers(&mut r, &digest, Some(len));
    r
}

/// Refuses a caller scoped to other environments than `env`.
fn seen_by(who: &Principal, env: &EnvName) -> std::result::Result<(), Oops> {
    if who.sees(env) {
        return Ok(());
    }
    Err(Oops::new(
        StatusCode::FORBIDDEN,
        "DENIED",
        format!(
            "{} is scoped to other environments than {env}: its tags are not shown to it",
            who.name
        ),
    ))
}
