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

pub mod model;
pub mod tgz;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use object_store::{GetOptions, GetRange, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};

use crate::auth::{Action, Authorizer};
use crate::digest::Digest;
use crate::error::{Error, Kind, Result};
use crate::ids::{EnvName, ReleaseId};
use crate::records::{ArtifactRecord, PinRecord};
use crate::registry::{ArtifactRef, Registry};
use model::{Manifest, Tag};

/// The largest stored manifest read back (derived manifests are about a
/// kilobyte).
const MAX_STORED_MANIFEST: u64 = 64 * 1024;
/// The most tags one `tags/list` page holds.
const MAX_TAGS_PAGE: usize = 1000;
/// Manifests remembered by digest in memory before starting over.
const REMEMBERED: usize = 4096;
/// Where derived manifests are stored, under their digest's hex.
const STORED_PREFIX: &str = "oci/manifests";
/// The realm registry clients are told to send credentials for.
const CHALLENGE: &str = "Basic realm=\"stackpin\", charset=\"UTF-8\"";

/// The API's state besides the registry: manifests served recently, by
/// digest.
#[derive(Clone, Default)]
pub struct Oci {
    remembered: Arc<Mutex<HashMap<String, Bytes>>>,
    /// Artifact digest to its archive's digest and size, once checked.
    archives: Arc<Mutex<HashMap<Digest, (Digest, u64)>>>,
}

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
        if let Err(e) = authorize(auth, cn, headers) {
            return error(&e);
        }
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
                self.manifest(registry, form, reference, headers).await
            }
            Some((_, Some(_), Route::Blob(digest))) => {
                self.blob(registry, digest, headers, head).await
            }
            Some((name, Some(_), Route::Tags)) => tags(registry, name, query).await,
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
        form: model::Form,
        reference: &str,
        headers: &HeaderMap,
    ) -> std::result::Result<Answer, Oops> {
        let bytes = if reference.starts_with("sha256:") {
            let digest = parse_digest(reference)?;
            self.by_digest(registry, form, &digest).await?
        } else {
            if !model::is_tag(reference) {
                return Err(Oops::new(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    format!("{} is not a tag", stackpin_core::error::shown(reference)),
                ));
            }
            let tag = reference.to_owned();
            let r = registry.clone();
            let (artifact, pin) = crate::blocking::run(move || find_tag(&r, &tag)).await?;
            let layer = self.layer(registry, form, &artifact).await?;
            let bytes = model::encode(&model::manifest(&artifact, pin.as_ref(), layer));
            self.remember(registry, &bytes).await?;
            bytes
        };
        let digest = Digest::of(&bytes).to_string();
        if matches(headers, &digest) {
            let mut r = body(StatusCode::NOT_MODIFIED, Bytes::new(), model::MANIFEST_TYPE);
            content_headers(&mut r, &digest, None);
            return Ok(r);
        }
        let len = bytes.len() as u64;
        let mut r = body(StatusCode::OK, bytes, model::MANIFEST_TYPE);
        content_headers(&mut r, &digest, Some(len));
        Ok(r)
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
        let poisoned = || Error::internal("the OCI archive memory is poisoned");
        if let Some(known) = self
            .archives
            .lock()
            .map_err(|_| poisoned())?
            .get(&artifact.digest)
        {
            return Ok(*known);
        }
        let store = registry.store();
        let pointer = archive_pointer(&artifact.digest);
        let stored = match read_bounded(&*store, &pointer, 128).await? {
            Some(named) => named,
            None => {
                let bytes = artifact_bytes(registry, artifact).await?;
                let archive = crate::blocking::run(move || tgz::build(&bytes)).await?;
                let digest = Digest::of(&archive);
                put_once(&*store, &blob_path(&digest), archive.clone()).await?;
                let named = Bytes::from(format!("{digest} {}", archive.len()));
                // The first replica's archive wins; a later one reads it.
                put_once(&*store, &pointer, named).await?;
                read_bounded(&*store, &pointer, 128)
                    .await?
                    .ok_or_else(|| Error::internal("a stored archive pointer vanished"))?
            }
        };
        let (digest, size) = std::str::from_utf8(&stored)
            .ok()
            .and_then(|t| t.split_once(' '))
            .and_then(|(d, n)| Some((d.parse::<Digest>().ok()?, n.parse::<u64>().ok()?)))
            .ok_or_else(|| damaged(&pointer))?;
        let max = archive_max(registry);
        let archive = read_bounded(&*store, &blob_path(&digest), max)
            .await?
            .ok_or_else(|| damaged(&pointer))?;
        let (expected, file_size) = (artifact.digest, artifact.size);
        let checked = crate::blocking::run(move || {
            Ok(Digest::of(&archive) == digest
                && archive.len() as u64 == size
                && tgz::holds(&archive, &expected, file_size))
        })
        .await?;
        if !checked {
            return Err(damaged(&pointer));
        }
        let mut map = self.archives.lock().map_err(|_| poisoned())?;
        if map.len() >= REMEMBERED {
            map.clear();
        }
        map.insert(artifact.digest, (digest, size));
        Ok((digest, size))
    }

    /// Keeps a manifest served by tag for later requests by digest: in
    /// memory, and stored once under its digest for every replica.
    async fn remember(&self, registry: &Registry, bytes: &Bytes) -> Result<()> {
        let digest = Digest::of(bytes);
        let key = digest.to_string();
        let known = {
            let mut map = self
                .remembered
                .lock()
                .map_err(|_| Error::internal("the OCI manifest memory is poisoned"))?;
            if map.len() >= REMEMBERED && !map.contains_key(&key) {
                map.clear();
            }
            map.insert(key, bytes.clone()).is_some()
        };
        if known {
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
        let unknown = || {
            Oops::new(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                format!("no manifest {digest} was served from this log"),
            )
        };
        let remembered = self
            .remembered
            .lock()
            .map_err(|_| Error::internal("the OCI manifest memory is poisoned"))?
            .get(&digest.to_string())
            .cloned();
        if let Some(bytes) = remembered {
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
        let (release, pin) = model::claims(&claimed).ok_or_else(unknown)?;
        let r = registry.clone();
        let (artifact, pin) =
            crate::blocking::run(move || find_claimed(&r, &release, pin.as_ref())).await?;
        let layer = self.layer(registry, form, &artifact).await?;
        let bytes = model::encode(&model::manifest(&artifact, pin.as_ref(), layer));
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

/// Where an artifact's archive is named (`<digest> <size>`), and where
/// archives are stored under their own digest.
const ARCHIVES: &str = "oci/tgz";
const BLOBS: &str = "oci/blobs";

fn archive_pointer(artifact: &Digest) -> object_store::path::Path {
    object_store::path::Path::from(format!("{ARCHIVES}/{}", artifact.hex()))
}

fn blob_path(digest: &Digest) -> object_store::path::Path {
    object_store::path::Path::from(format!("{BLOBS}/{}", digest.hex()))
}

/// The largest archive read back: a tar+gzip of the largest artifact.
fn archive_max(registry: &Registry) -> u64 {
    registry.limits().max_artifact_bytes.saturating_mul(2) + 64 * 1024
}

fn damaged(pointer: &object_store::path::Path) -> Error {
    tracing::error!(%pointer, "a stored archive does not hold its artifact");
    Error::new(
        Kind::DataLoss,
        format!(
            "the stored tar+gzip archive named by {pointer} does not hold its artifact; it will \
             not be served"
        ),
    )
}

/// Stores `bytes` at `path` unless something is there already.
async fn put_once(
    store: &dyn object_store::ObjectStore,
    path: &object_store::path::Path,
    bytes: Bytes,
) -> Result<()> {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store.put_opts(path, PutPayload::from(bytes), opts).await {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// At most `max` bytes of the object at `path`; `None` when absent.
async fn read_bounded(
    store: &dyn object_store::ObjectStore,
    path: &object_store::path::Path,
    max: u64,
) -> Result<Option<Bytes>> {
    let opts = GetOptions {
        range: Some(GetRange::Bounded(0..max)),
        ..GetOptions::default()
    };
    match store.get_opts(path, opts).await {
        Ok(r) => Ok(Some(r.bytes().await?)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A published artifact's bytes, held in the byte budget until dropped.
async fn artifact_bytes(registry: &Registry, artifact: &ArtifactRecord) -> Result<Bytes> {
    use futures::TryStreamExt as _;
    let room = registry
        .budget()
        .reserve(artifact.size, "an OCI blob")
        .await?;
    let mut bytes = Vec::with_capacity(usize::try_from(artifact.size).unwrap_or(0));
    let mut stream = registry.artifact_stream(artifact, 1 << 20).await?;
    while let Some(chunk) = stream.try_next().await? {
        bytes.extend_from_slice(&chunk);
    }
    Ok(crate::budget::held(bytes, room))
}

/// The bytes (none for a HEAD of an artifact) and size of blob `digest`:
/// the empty config, a published artifact, or a stored archive that
/// hashes to its name; `None` when it is none of these.
async fn blob_bytes(
    registry: &Arc<Registry>,
    digest: &Digest,
    head: bool,
) -> Result<Option<(Option<Bytes>, u64)>> {
    if *digest == Digest::of(model::EMPTY_CONFIG) {
        let b = Bytes::from_static(model::EMPTY_CONFIG);
        let n = b.len() as u64;
        return Ok(Some((Some(b), n)));
    }
    let (r, d) = (registry.clone(), *digest);
    let artifact = crate::blocking::run(move || match r.artifact(&ArtifactRef::Digest(d)) {
        Ok(a) => Ok(Some(a)),
        Err(e) if e.kind() == Kind::NotFound => Ok(None),
        Err(e) => Err(e),
    })
    .await?;
    if let Some(a) = artifact {
        if head {
            return Ok(Some((None, a.size)));
        }
        return Ok(Some((Some(artifact_bytes(registry, &a).await?), a.size)));
    }
    let store = registry.store();
    let path = blob_path(digest);
    let size = match store.head(&path).await {
        Ok(meta) => meta.size,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if size > archive_max(registry) {
        return Ok(None);
    }
    let room = registry.budget().reserve(size, "an OCI blob").await?;
    let Some(bytes) = read_bounded(&*store, &path, size).await? else {
        return Ok(None);
    };
    let (checked, bytes) = crate::blocking::run(move || Ok((Digest::of(&bytes), bytes))).await?;
    if checked != *digest {
        tracing::warn!(%path, "a stored archive does not hash to its name; not served");
        return Ok(None);
    }
    let n = bytes.len() as u64;
    Ok(Some((Some(crate::budget::held(bytes.to_vec(), room)), n)))
}

type Found = (ArtifactRecord, Option<PinRecord>);

/// The artifact `tag` names, and the pin when it names one.
fn find_tag(registry: &Registry, tag: &str) -> Result<Found> {
    let mut found = Vec::new();
    for reading in model::readings(tag) {
        let exists = match &reading {
            Tag::Release(r) => exists(registry.artifact(&ArtifactRef::Release(r.clone())))?,
            Tag::Env(e) | Tag::At(e, _) => exists(registry.live_now(e))?,
        };
        if exists {
            found.push(reading);
        }
    }
    let pin = match found.as_slice() {
        [] => {
            return Err(Error::not_found(format!(
                "no release or environment {tag}, and {tag} is not <env>.at.<YYYYMMDDTHHMMSSZ> of \
                 an environment"
            )));
        }
        [Tag::Release(r)] => {
            return Ok((registry.artifact(&ArtifactRef::Release(r.clone()))?, None));
        }
        [Tag::Env(e)] => registry.live_now(e)?,
        [Tag::At(e, at)] => registry.resolve(e, *at, None)?.pin,
        _ => {
            return Err(Error::not_found(format!(
                "tag {tag} is ambiguous: it names both a release and an environment; pull by \
                 digest"
            )));
        }
    };
    let artifact = registry.artifact(&ArtifactRef::Release(pin.entry.release_id.clone()))?;
    Ok((artifact, Some(pin)))
}

fn exists<T>(found: Result<T>) -> Result<bool> {
    match found {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == Kind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The artifact of `release`, and pin `seq` of `env` when a stored
/// manifest claims that pin made it live.
fn find_claimed(
    registry: &Registry,
    release: &ReleaseId,
    pin: Option<&(EnvName, u64)>,
) -> Result<Found> {
    let artifact = registry.artifact(&ArtifactRef::Release(release.clone()))?;
    let pin = match pin {
        Some((env, seq)) => {
            let p = registry.pin_record(env, *seq)?;
            if p.entry.release_id != *release {
                return Err(Error::not_found(format!(
                    "pin #{seq} of {env} is not of release {release}"
                )));
            }
            Some(p)
        }
        None => None,
    };
    Ok((artifact, pin))
}

/// `GET /v2/<name>/tags/list?n=&last=`: release ids and environments in
/// lexical order, each once.
async fn tags(
    registry: &Arc<Registry>,
    name: &str,
    query: &str,
) -> std::result::Result<Answer, Oops> {
    let mut n = MAX_TAGS_PAGE;
    let mut last: Option<String> = None;
    for (k, v) in form_urlencoded(query) {
        match k.as_str() {
            "n" => {
                n = v.parse::<usize>().map_err(|_| {
                    Oops::new(
                        StatusCode::BAD_REQUEST,
                        "PAGINATION_NUMBER_INVALID",
                        format!("n={} is not a number", stackpin_core::error::shown(&v)),
                    )
                })?;
                n = n.min(MAX_TAGS_PAGE);
            }
            "last" => last = Some(v),
            _ => {}
        }
    }
    let r = registry.clone();
    let (page, more) = crate::blocking::run(move || tag_page(&r, last.as_deref(), n)).await?;
    let value = serde_json::json!({ "name": name, "tags": page });
    let mut answer = body(
        StatusCode::OK,
        Bytes::from(value.to_string()),
        "application/json",
    );
    if more && let Some(l) = page.last() {
        insert(
            &mut answer,
            header::LINK,
            &format!("</v2/{name}/tags/list?n={n}&last={l}>; rel=\"next\""),
        );
    }
    Ok(answer)
}

/// Up to `n` tags after `last`, and whether more follow.
fn tag_page(registry: &Registry, last: Option<&str>, n: usize) -> Result<(Vec<String>, bool)> {
    if n == 0 {
        return Ok((Vec::new(), false));
    }
    // Each list is sorted; a name past `last` that is not a valid id is
    // simply where the list starts.
    let after_release: Option<ReleaseId> = last.and_then(|l| l.parse().ok());
    let after_env: Option<EnvName> = last.and_then(|l| l.parse().ok());
    let (releases, _) = registry.list_artifacts(after_release.as_ref(), n + 1)?;
    let (envs, _) = registry.environments(after_env.as_ref(), n + 1)?;
    let mut all: Vec<String> = releases
        .into_iter()
        .map(|a| a.release_id.to_string())
        .chain(envs.into_iter().map(|p| p.entry.env.to_string()))
        .filter(|t| last.is_none_or(|l| t.as_str() > l))
        .collect();
    all.sort_unstable();
    // A name both a release and an environment is ambiguous as a tag:
    // listed once, as is.
    all.dedup();
    let more = all.len() > n;
    all.truncate(n);
    Ok((all, more))
}

/// The pairs of a query string.
fn form_urlencoded(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

enum Route<'a> {
    Manifest(&'a str),
    Blob(&'a str),
    Tags,
}

/// Splits `<name>/manifests/<ref>`, `<name>/blobs/<digest>` and
/// `<name>/tags/list`.
fn route(rest: &str) -> Option<(&str, Route<'_>)> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some((name, Route::Tags));
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return Some((name, Route::Manifest(reference)));
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        return Some((name, Route::Blob(digest)));
    }
    None
}

fn parse_digest(text: &str) -> std::result::Result<Digest, Oops> {
    text.strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|h| Digest::from_hex(h).ok())
        .ok_or_else(|| {
            Oops::new(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!(
                    "{} is not a digest this registry serves (sha256: and 64 lowercase hex digits)",
                    stackpin_core::error::shown(text)
                ),
            )
        })
}

/// One range `bytes=a-b`, `bytes=a-` or `bytes=-n` of a `size`-byte blob,
/// as (first, last) byte.
fn parse_range(text: &str, size: u64) -> std::result::Result<(u64, u64), Oops> {
    let bad = || {
        Oops::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UNKNOWN",
            format!(
                "range {} is not one byte range within {size} bytes",
                stackpin_core::error::shown(text)
            ),
        )
    };
    let spec = text.strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let num = |s: &str| {
        (!s.is_empty() && s.len() <= 19 && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (false, false) => (num(a).ok_or_else(bad)?, num(b).ok_or_else(bad)?),
        (false, true) => (num(a).ok_or_else(bad)?, size.saturating_sub(1)),
        (true, false) => {
            let n = num(b).ok_or_else(bad)?;
            if n == 0 {
                return Err(bad());
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (true, true) => return Err(bad()),
    };
    if size == 0 || start > end || start >= size {
        return Err(bad());
    }
    Ok((start, end.min(size - 1)))
}

fn stored_path(digest: &Digest) -> object_store::path::Path {
    object_store::path::Path::from(format!("{STORED_PREFIX}/{}", digest.hex()))
}

/// Whether `If-None-Match` names `digest`'s ETag.
fn matches(headers: &HeaderMap, digest: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim().trim_start_matches("W/");
            t == "*" || t.trim_matches('"') == digest
        })
}

/// The caller's token, from `Authorization: Bearer` or the password of
/// `Authorization: Basic` (the user name is ignored).
fn authorize(auth: &Authorizer, cn: Option<&str>, headers: &HeaderMap) -> Result<()> {
    let header = headers.get(header::AUTHORIZATION).map(|v| v.to_str());
    let token = match header {
        None => None,
        Some(Err(_)) => return Err(unauthenticated("the authorization header is not text")),
        Some(Ok(v)) => Some(token_of(v)?),
    };
    auth.authorize(token.as_deref(), cn, Action::Read)
        .map(|_| ())
}

fn token_of(value: &str) -> Result<String> {
    if let Some(basic) = value.strip_prefix("Basic ") {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| unauthenticated("the Basic credentials are not base64 of user:token"))?;
        let (_, token) = decoded
            .split_once(':')
            .ok_or_else(|| unauthenticated("the Basic credentials are not user:token"))?;
        return Ok(token.to_owned());
    }
    crate::auth::bearer(Some(value)).map(str::to_owned)
}

fn unauthenticated(why: &str) -> Error {
    Error::new(Kind::Unauthenticated, why)
}

/// A refusal the spec names.
enum Oops {
    Api(StatusCode, &'static str, String),
    Failed(Error),
}

impl Oops {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Api(status, code, message.into())
    }
}

impl From<Error> for Oops {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

fn body(status: StatusCode, bytes: Bytes, content_type: &'static str) -> Answer {
    let mut r = Response::new(Full::new(bytes));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn insert(r: &mut Answer, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

fn version(r: &mut Answer) {
    r.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
}

/// The digest headers of a manifest or blob; the length, when given, is
/// also what a HEAD answers (its body is left out).
fn content_headers(r: &mut Answer, digest: &str, len: Option<u64>) {
    insert(
        r,
        header::HeaderName::from_static("docker-content-digest"),
        digest,
    );
    insert(r, header::ETAG, &format!("\"{digest}\""));
    if let Some(len) = len {
        insert(r, header::CONTENT_LENGTH, &len.to_string());
    }
}

/// An error body of the distribution spec.
fn refused(status: StatusCode, code: &str, message: &str) -> Answer {
    let value = serde_json::json!({
        "errors": [{ "code": code, "message": message }]
    });
    let mut r = body(status, Bytes::from(value.to_string()), "application/json");
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(CHALLENGE),
        );
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    r
}

/// A registry error as the spec's error body.
fn error(e: &Error) -> Answer {
    let (status, code) = match e.kind() {
        Kind::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
        Kind::PermissionDenied => (StatusCode::FORBIDDEN, "DENIED"),
        Kind::NotFound => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        Kind::Busy | Kind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        Kind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
        _ => (crate::http_status::of(e.kind()), "UNKNOWN"),
    };
    refused(status, code, e.message())
}
