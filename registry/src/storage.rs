//! Choosing the object store: one code path for every backend.
//!
//! | URL | store |
//! |---|---|
//! | `file:///path` | a local folder (fsync on): the embedded default |
//! | `s3://bucket[/prefix]` | S3 or an S3-compatible server; endpoint, region and credentials from the usual `AWS_*` variables, `--s3-endpoint` for S3-compatible servers |
//! | `az://container[/prefix]` | Azure Blob Storage; account and credentials from the usual `AZURE_*` variables, `--azure-endpoint` for another blob endpoint (Azurite, a private endpoint) |
//! | `memory://` | in memory, for tests only: gone when the process ends |
//!
//! Whatever the backend, the registry relies on one property: a write with
//! `PutMode::Create` fails if the key exists (S3 and Azure:
//! `If-None-Match: *`). That is what serializes several replicas on one
//! bucket or container.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RetryConfig,
    UploadPart,
};

use crate::error::{Error, Kind, Result};

mod read_only;
pub use read_only::{ReadOnlyStore, SCRATCH_BYTES};

/// How storage is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageUrl {
    /// A local folder.
    File(std::path::PathBuf),
    /// An S3 bucket, optionally under a key prefix.
    S3 { bucket: String, prefix: String },
    /// An Azure Blob Storage container, optionally under a name prefix.
    Azure { container: String, prefix: String },
    /// Process memory (tests).
    Memory,
}

impl StorageUrl {
    /// Parses `file:///path`, `s3://bucket/prefix`, `az://container/prefix`
    /// or `memory://`.
    ///
    /// # Errors
    /// Invalid for any other form.
    pub fn parse(text: &str) -> Result<Self> {
        if let Some(path) = text.strip_prefix("file://") {
            if path.is_empty() {
                return Err(Error::invalid(
                    "file:// needs a path, e.g. file:///var/lib/stackpin",
                ));
            }
            return Ok(Self::File(path.into()));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !valid {
                return Err(Error::invalid(format!(
                    "{text:?}: {bucket:?} is not an S3 bucket name"
                )));
            }
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_end_matches('/').to_owned(),
            });
        }
        if let Some(rest) = text.strip_prefix("az://") {
            let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            // Azure's rule: 3 to 63 of lowercase letters, digits and single
            // hyphens, starting and ending with a letter or digit.
            let valid = (3..=63).contains(&container.len())
                && container
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !container.starts_with('-')
                && !container.ends_with('-')
                && !container.contains("--");
            if !valid {
                return Err(Error::invalid(format!(
                    "{}: {} is not an Azure container name (3 to 63 lowercase \
                     letters, digits and single hyphens)",
                    stackpin_core::error::shown(text),
                    stackpin_core::error::shown(container)
                )));
            }
            return Ok(Self::Azure {
                container: container.to_owned(),
                prefix: prefix.trim_end_matches('/').to_owned(),
            });
        }
        if text == "memory://" || text == "memory:" {
            return Ok(Self::Memory);
        }
        Err(Error::invalid(format!(
            "{} is not file:///path, s3://bucket/prefix, az://container/prefix or \
             memory://",
            stackpin_core::error::shown(text)
        )))
    }

    /// Whether several processes can share this storage (and so must share
    /// one log key).
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::S3 { .. } | Self::Azure { .. })
    }
}

/// Settings of remote storage beyond the `AWS_*` and `AZURE_*` environment.
#[derive(Clone, Debug, Default)]
pub struct StorageOptions {
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:8333`.
    pub endpoint: Option<String>,
    /// Use `bucket.host` URLs instead of `host/bucket` (path style).
    pub virtual_hosted_style: bool,
    /// Per-request timeout; storage that does not answer in time is
    /// reported as unavailable rather than hanging requests.
    pub timeout: Duration,
    /// Access key id and secret (S3), or account name and access key
    /// (Azure), overriding `AWS_*` / `AZURE_*` (for embedding).
    pub credentials: Option<(String, String)>,
    /// Blob service endpoint for Azure instead of
    /// `https://<account>.blob.core.windows.net`, e.g. Azurite's
    /// `http://127.0.0.1:10000/devstoreaccount1`.
    pub azure_endpoint: Option<String>,
    /// Allow a plain-HTTP endpoint beyond loopback (credentials and log
    /// entries would cross the network unencrypted).
    pub allow_http: bool,
}

/// Removes what a killed writer left in a local folder store: the local
/// backend writes each object to `<name>#<n>` and renames it into place, so
/// a `kill -9` mid-write leaves that file behind, invisible to listings and
/// never reused. Only `blobs/` and `log/entries/` are swept (no write can
/// be in flight there before the first request); returns how many files
/// went. Call it only while holding the folder's lock.
pub fn remove_staging(root: &std::path::Path) -> usize {
    fn sweep(dir: &std::path::Path, removed: &mut usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                sweep(&path, removed);
            } else if entry
                .file_name()
                .to_str()
                .and_then(|n| n.rsplit_once('#'))
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                && std::fs::remove_file(&path).is_ok()
            {
                *removed += 1;
            }
        }
    }
    let mut removed = 0;
    sweep(&root.join(stackpin_core::layout::BLOBS), &mut removed);
    sweep(&root.join(stackpin_core::layout::ENTRIES), &mut removed);
    removed
}

/// Whether `endpoint` may be spoken to over plain HTTP: only a loopback
/// host, unless `allow` says otherwise. An `https://` endpoint always.
fn plain_http_allowed(setting: &str, endpoint: &str, allow: bool) -> Result<bool> {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Ok(false);
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback || allow {
        return Ok(true);
    }
    Err(Error::invalid(format!(
        "{setting} {} is plain HTTP to a host that is not loopback: use https://, or set \
         storage_allow_http = true (--storage-allow-http) on purpose",
        stackpin_core::error::shown(endpoint)
    )))
}

/// Whether plain HTTP may be used: by the rule of [`plain_http_allowed`]
/// for a configured `endpoint`, else as `allow` says.
fn endpoint_allows_http(setting: &str, endpoint: &Option<String>, allow: bool) -> Result<bool> {
    match endpoint {
        Some(endpoint) => plain_http_allowed(setting, endpoint, allow),
        None => Ok(allow),
    }
}

/// What [`get_capped`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Capped {
    Missing,
    Bytes(bytes::Bytes),
    /// Longer than the cap: its listed size, or as far as it was read.
    Over(u64),
}

/// The object `key` of a store that may be anyone's (a mirror, a
/// standby), read only up to `max` bytes: its listed size is checked
/// first, and its body is counted as it arrives, not taken on the
/// listing's word.
///
/// # Errors
/// When the store fails (a missing object is [`Capped::Missing`]).
pub async fn get_capped(
    store: &dyn ObjectStore,
    key: &str,
    max: u64,
) -> object_store::Result<Capped> {
    use futures::TryStreamExt as _;
    let got = match store
        .get_opts(&StorePath::from(key), object_store::GetOptions::default())
        .await
    {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(Capped::Missing),
        Err(e) => return Err(e),
    };
    let size = got.meta.size;
    if size > max {
        return Ok(Capped::Over(size));
    }
    // Room for what the listing says, up to 64 MiB: the rest grows as it
    // really arrives.
    let room = size.min(64 << 20);
    let mut bytes = Vec::with_capacity(usize::try_from(room).unwrap_or(0));
    let mut body = got.into_stream();
    while let Some(chunk) = body.try_next().await? {
        let read = (bytes.len() + chunk.len()) as u64;
        if read > max {
            return Ok(Capped::Over(read));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Capped::Bytes(bytes.into()))
}

/// Checks the endpoint `url` is reached at against the plain-HTTP rule,
/// as [`open`] does, without opening anything.
///
/// # Errors
/// Invalid for a plain-HTTP endpoint that is not loopback, unless allowed.
pub fn check_endpoints(url: &StorageUrl, s3: &StorageOptions) -> Result<()> {
    match url {
        StorageUrl::S3 { .. } => {
            endpoint_allows_http("s3_endpoint", &s3.endpoint, s3.allow_http).map(drop)
        }
        StorageUrl::Azure { .. } => {
            endpoint_allows_http("azure_endpoint", &s3.azure_endpoint, s3.allow_http).map(drop)
        }
        StorageUrl::File(_) | StorageUrl::Memory => Ok(()),
    }
}

/// `store`, seen from under `prefix` (all of it when the prefix is empty).
fn under_prefix<S: ObjectStore>(store: S, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

/// Opens the store `url` names.
///
/// # Errors
/// Invalid settings, or a local folder that cannot be created.
pub fn open(url: &StorageUrl, s3: &StorageOptions) -> Result<Arc<dyn ObjectStore>> {
    let timeout = if s3.timeout.is_zero() {
        crate::defaults::STORAGE_TIMEOUT
    } else {
        s3.timeout
    };
    let client = |allow_http: bool| {
        ClientOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(Duration::from_secs(2))
            .with_allow_http(allow_http)
    };
    // A few quick retries; beyond that the caller gets UNAVAILABLE instead
    // of a request hanging for minutes.
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: timeout,
    };
    match url {
        StorageUrl::File(path) => Ok(Arc::new(local(path)?)),
        StorageUrl::Memory => Ok(Arc::new(InMemory::new())),
        StorageUrl::Azure { container, prefix } => {
            let allow_http =
                endpoint_allows_http("azure_endpoint", &s3.azure_endpoint, s3.allow_http)?;
            let mut builder = MicrosoftAzureBuilder::from_env()
                .with_container_name(container)
                .with_client_options(client(allow_http))
                .with_retry(retry);
            if let Some(endpoint) = &s3.azure_endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            if let Some((account, key)) = &s3.credentials {
                builder = builder.with_account(account).with_access_key(key);
            }
            let store = builder
                .build()
                .map_err(|e| Error::invalid(format!("Azure storage az://{container}: {e}")))?;
            Ok(under_prefix(store, prefix))
        }
        StorageUrl::S3 { bucket, prefix } => {
            let allow_http = endpoint_allows_http("s3_endpoint", &s3.endpoint, s3.allow_http)?;
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_virtual_hosted_style_request(s3.virtual_hosted_style)
                .with_client_options(client(allow_http))
                .with_retry(retry);
            if std::env::var_os("AWS_REGION").is_none()
                && std::env::var_os("AWS_DEFAULT_REGION").is_none()
            {
                builder = builder.with_region("us-east-1");
            }
            if let Some(endpoint) = &s3.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some((id, secret)) = &s3.credentials {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
            }
            let store = builder
                .build()
                .map_err(|e| Error::invalid(format!("S3 storage s3://{bucket}: {e}")))?;
            Ok(under_prefix(store, prefix))
        }
    }
}

/// The local folder store, with fsync so an acknowledged write survives a
/// power cut.
///
/// # Errors
/// Unavailable when the folder cannot be created or opened.
pub fn local(path: &Path) -> Result<LocalFolder> {
    std::fs::create_dir_all(path).map_err(|e| {
        Error::new(
            Kind::Unavailable,
            format!("creating data folder {}: {e}", path.display()),
        )
    })?;
    let inner = LocalFileSystem::new_with_prefix(path)
        .map_err(|e| {
            Error::new(
                Kind::Unavailable,
                format!("opening data folder {}: {e}", path.display()),
            )
        })?
        .with_fsync(true);
    Ok(LocalFolder {
        inner,
        root: path.to_path_buf(),
    })
}

/// Objects at least this large leave the page cache once they are durable.
pub const UNCACHE_FROM: usize = 64 * 1024;

/// A local folder: object_store's [`LocalFileSystem`] (write to a staging
/// file, fsync, link into place, fsync the folder) plus one habit: once an
/// object of [`UNCACHE_FROM`] bytes or more is durable, its pages are
/// dropped from the page cache.
///
/// Artifacts are written once and read back only by a fetch or a restore,
/// so keeping their pages cached buys nothing and costs twice: the cache
/// grows by every artifact published, pushing out the index pages resolves
/// read, and each new write lands on memory never used before. Measured on
/// a 2-core VM, 512 KiB write-once commits ran at 410/s keeping the pages
/// and at 870–970/s dropping them (see BENCHMARKS.md). The advice is only
/// advice: where it fails or is unsupported the data is just as durable.
#[derive(Debug)]
pub struct LocalFolder {
    inner: LocalFileSystem,
    root: PathBuf,
}

/// Drops the cached pages of the (synced) file at `path`, off the caller's
/// thread.
fn uncache_later(path: PathBuf) {
    tokio::task::spawn_blocking(move || uncache(&path));
}

/// Asks the kernel to drop the cached pages of the (synced) file at `path`.
fn uncache(path: &Path) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Ok(file) = std::fs::File::open(path)
        && let Err(e) = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
    {
        tracing::debug!(path = %path.display(), error = %e, "page cache advice refused");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = path;
}

impl std::fmt::Display for LocalFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait::async_trait]
impl ObjectStore for LocalFolder {
    async fn put_opts(
        &self,
        location: &StorePath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let large = payload.content_length() >= UNCACHE_FROM;
        let result = self.inner.put_opts(location, payload, opts).await?;
        if large {
            uncache_later(self.root.join(location.as_ref()));
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &StorePath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(UncachedUpload {
            upload,
            path: self.root.join(location.as_ref()),
        }))
    }

    async fn get_opts(
        &self,
        location: &StorePath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<StorePath>>,
    ) -> BoxStream<'static, object_store::Result<StorePath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&StorePath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&StorePath>,
        offset: &StorePath,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&StorePath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &StorePath,
        to: &StorePath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A multipart upload whose object leaves the page cache once complete
/// (multipart objects are always larger than [`UNCACHE_FROM`]).
#[derive(Debug)]
struct UncachedUpload {
    upload: Box<dyn MultipartUpload>,
    path: PathBuf,
}

#[async_trait::async_trait]
impl MultipartUpload for UncachedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.upload.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let result = self.upload.complete().await?;
        uncache_later(self.path.clone());
        Ok(result)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.upload.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_for_loopback_endpoints_unless_allowed() {
        for ok in [
            "http://127.0.0.1:8333",
            "http://localhost:9000/",
            "http://[::1]:8333",
        ] {
            assert!(
                plain_http_allowed("s3_endpoint", ok, false).unwrap(),
                "{ok}"
            );
        }
        assert!(!plain_http_allowed("s3_endpoint", "https://s3.example.com", false).unwrap());
        let err = plain_http_allowed("s3_endpoint", "http://10.0.0.5:8333", false).unwrap_err();
        assert!(err.message().contains("storage_allow_http"), "{err}");
        assert!(plain_http_allowed("s3_endpoint", "http://10.0.0.5:8333", true).unwrap());
        // The refusal happens before any request.
        let url = StorageUrl::S3 {
            bucket: "b".into(),
            prefix: String::new(),
        };
        let s3 = StorageOptions {
            endpoint: Some("http://192.0.2.1:8333".into()),
            ..StorageOptions::default()
        };
        assert!(open(&url, &s3).is_err());
    }

    #[test]
    fn urls_parse_and_bad_ones_say_why() {
        assert_eq!(
            StorageUrl::parse("file:///var/x").unwrap(),
            StorageUrl::File("/var/x".into())
        );
        assert_eq!(
            StorageUrl::parse("s3://my-bucket/a/b/").unwrap(),
            StorageUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            StorageUrl::parse("s3://my-bucket").unwrap(),
            StorageUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: String::new()
            }
        );
        assert_eq!(StorageUrl::parse("memory://").unwrap(), StorageUrl::Memory);
        assert_eq!(
            StorageUrl::parse("az://stackpin-prod/eu/").unwrap(),
            StorageUrl::Azure {
                container: "stackpin-prod".into(),
                prefix: "eu".into()
            }
        );
        assert!(StorageUrl::parse("az://c-1").unwrap().is_shared());
        for bad in [
            "file://",
            "s3://A_B",
            "gs://x",
            "/plain/path",
            "s3://",
            "az://",
            "az://ab",
            "az://Upper",
            "az://-lead",
            "az://two--hyphens",
            "az://under_score",
        ] {
            assert!(StorageUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
