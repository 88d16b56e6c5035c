//! The OCI Distribution pull API (distribution-spec 1.1), read-only, on
//! the HTTP listener: so that registry clients (skopeo, ORAS, crane, and
//! the GitOps tools built on them) read artifacts and follow environments
//! with no stackpin code. See docs/oci.md for the model.
//!
//! ```text
//! GET /v2/                                  the API's base (200 {})
//! GET|HEAD /v2/objectstack/manifests/<ref>  a tag (release id, environment,
//!                                           <env>.at.<instant>) or a digest
//! GET|HEAD /v2/objectstack/blobs/<digest>   an artifact's bytes, the empty
//!                                           config; single byte ranges
//! GET /v2/objectstack/tags/list?n=&last=    release ids and environments
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use object_store::{GetOptions, GetRange, ObjectStore as _, PutMode, PutOptions, PutPayload};

use crate::auth::{Action, Authorizer};
use crate::digest::Digest;
use crate::error::{Error, Kind, Result};
use crate::ids::{EnvName, ReleaseId};
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
        let result = match route(rest) {
            Some((name, Route::Manifest(reference))) if name == model::REPOSITORY => {
                self.manifest(registry, reference, headers).await
            }
            Some((name, Route::Blob(digest))) if name == model::REPOSITORY => {
                self.blob(registry, digest, headers, head).await
            }
            Some((name, Route::Tags)) if name == model::REPOSITORY => tags(registry, query).await,
            Some((name, _)) => Err(Oops::new(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                format!(
                    "no repository {}: this registry has one, {}",
                    stackpin_core::error::shown(name),
                    model::REPOSITORY
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
        reference: &str,
        headers: &HeaderMap,
    ) -> std::result::Result<Answer, Oops> {
        let bytes = if reference.starts_with("sha256:") {
            let digest = parse_digest(reference)?;
            self.by_digest(registry, &digest).await?
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
            let manifest = crate::blocking::run(move || derive_tag(&r, &tag)).await?;
            let bytes = model::encode(&manifest);
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
        let path = stored_path(&digest);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match registry
            .store()
            .put_opts(&path, PutPayload::from(bytes.clone()), opts)
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The manifest with `digest`: remembered, or stored by a replica that
    /// served it, and derived again from what it claims either way.
    async fn by_digest(
        &self,
        registry: &Arc<Registry>,
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
        let opts = GetOptions {
            range: Some(GetRange::Bounded(0..MAX_STORED_MANIFEST)),
            ..GetOptions::default()
        };
        let stored = match registry.store().get_opts(&stored_path(digest), opts).await {
            Ok(r) => r.bytes().await.map_err(Error::from)?,
            Err(object_store::Error::NotFound { .. }) => return Err(unknown()),
            Err(e) => return Err(Error::from(e).into()),
        };
        if Digest::of(&stored) != *digest {
            tracing::warn!(%digest, "a stored manifest does not hash to its name; not served");
            return Err(unknown());
        }
        let claimed: Manifest = serde_json::from_slice(&stored).map_err(|_| unknown())?;
        let (release, pin) = model::claims(&claimed).ok_or_else(unknown)?;
        let r = registry.clone();
        let derived = crate::blocking::run(move || derive(&r, &release, pin.as_ref())).await?;
        let bytes = model::encode(&derived);
        if bytes != stored {
            tracing::warn!(%digest, "a stored manifest is not what the log derives; not served");
            return Err(unknown());
        }
        self.remember(registry, &bytes).await?;
        Ok(bytes)
    }

    /// `GET|HEAD /v2/<name>/blobs/<digest>`: the empty config, or a
    /// published artifact's bytes (held in the byte budget until sent).
    async fn blob(
        &self,
        registry: &Arc<Registry>,
        reference: &str,
        headers: &HeaderMap,
        head: bool,
    ) -> std::result::Result<Answer, Oops> {
        use futures::TryStreamExt as _;
        let digest = parse_digest(reference)?;
        let name = digest.to_string();
        let (bytes, size) = if digest == Digest::of(model::EMPTY_CONFIG) {
            let b = Bytes::from_static(model::EMPTY_CONFIG);
            let n = b.len() as u64;
            (Some(b), n)
        } else {
            let r = registry.clone();
            let artifact =
                crate::blocking::run(move || match r.artifact(&ArtifactRef::Digest(digest)) {
                    Ok(a) => Ok(Some(a)),
                    Err(e) if e.kind() == Kind::NotFound => Ok(None),
                    Err(e) => Err(e),
                })
                .await?
                .ok_or_else(|| {
                    Oops::new(
                        StatusCode::NOT_FOUND,
                        "BLOB_UNKNOWN",
                        format!("no blob {name} in this repository"),
                    )
                })?;
            if head {
                (None, artifact.size)
            } else {
                let room = registry
                    .budget()
                    .reserve(artifact.size, "an OCI blob")
                    .await?;
                let mut bytes = Vec::with_capacity(usize::try_from(artifact.size).unwrap_or(0));
                let mut stream = registry.artifact_stream(&artifact, 1 << 20).await?;
                while let Some(chunk) = stream.try_next().await? {
                    bytes.extend_from_slice(&chunk);
                }
                (Some(crate::budget::held(bytes, room)), artifact.size)
            }
        };
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

/// The manifest `tag` names, derived from the index.
fn derive_tag(registry: &Registry, tag: &str) -> Result<Manifest> {
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
    match found.as_slice() {
        [] => Err(Error::not_found(format!(
            "no release or environment {tag}, and no {tag:?} of the form <env>.at.<YYYYMMDDTHHMMSSZ>"
        ))),
        [Tag::Release(r)] => derive(registry, r, None),
        [Tag::Env(e)] => derive_pin(registry, &registry.live_now(e)?),
        [Tag::At(e, at)] => {
            let pin = registry.resolve(e, *at, None)?.pin;
            derive_pin(registry, &pin)
        }
        _ => Err(Error::not_found(format!(
            "tag {tag} is ambiguous: it names both a release and an environment; pull by digest"
        ))),
    }
}

fn exists<T>(found: Result<T>) -> Result<bool> {
    match found {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == Kind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn derive_pin(registry: &Registry, pin: &crate::records::PinRecord) -> Result<Manifest> {
    let artifact = registry.artifact(&ArtifactRef::Release(pin.entry.release_id.clone()))?;
    Ok(model::manifest(&artifact, Some(pin)))
}

/// The manifest of `release`, as pin `seq` of `env` made it live when
/// `pin` is given.
fn derive(
    registry: &Registry,
    release: &ReleaseId,
    pin: Option<&(EnvName, u64)>,
) -> Result<Manifest> {
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
    Ok(model::manifest(&artifact, pin.as_ref()))
}

/// `GET /v2/<name>/tags/list?n=&last=`: release ids and environments in
/// lexical order, each once.
async fn tags(registry: &Arc<Registry>, query: &str) -> std::result::Result<Answer, Oops> {
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
    let value = serde_json::json!({ "name": model::REPOSITORY, "tags": page });
    let mut answer = body(
        StatusCode::OK,
        Bytes::from(value.to_string()),
        "application/json",
    );
    if more && let Some(l) = page.last() {
        insert(
            &mut answer,
            header::LINK,
            &format!(
                "</v2/{}/tags/list?n={n}&last={l}>; rel=\"next\"",
                model::REPOSITORY
            ),
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
