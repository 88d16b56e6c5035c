//! What the OCI API keeps in storage: manifests served by tag, under
//! their digest, and each artifact's tar+gzip archive; all write-once,
//! read with a size bound, and checked before they are served.

use std::sync::Arc;

use bytes::Bytes;
use object_store::{GetOptions, GetRange, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};

use super::model;
use crate::digest::Digest;
use crate::error::{Error, Kind, Result};
use crate::records::ArtifactRecord;
use crate::registry::{ArtifactRef, Registry};

/// Where derived manifests are stored, under their digest's hex.
const STORED_PREFIX: &str = "oci/manifests";

/// Where an artifact's archive is named (`<digest> <size>`), and where
/// archives are stored under their own digest.
pub(super) const ARCHIVES: &str = "oci/tgz";
pub(super) const BLOBS: &str = "oci/blobs";

pub(super) fn archive_pointer(artifact: &Digest) -> object_store::path::Path {
    object_store::path::Path::from(format!("{ARCHIVES}/{}", artifact.hex()))
}

pub(super) fn blob_path(digest: &Digest) -> object_store::path::Path {
    object_store::path::Path::from(format!("{BLOBS}/{}", digest.hex()))
}

/// The largest archive read back: a tar+gzip of the largest artifact.
pub(super) fn archive_max(registry: &Registry) -> u64 {
    registry.limits().max_artifact_bytes.saturating_mul(2) + 64 * 1024
}

pub(super) fn damaged(pointer: &object_store::path::Path) -> Error {
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
pub(super) async fn put_once(
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
pub(super) async fn read_bounded(
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
pub(super) async fn artifact_bytes(
    registry: &Registry,
    artifact: &ArtifactRecord,
) -> Result<Bytes> {
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
pub(super) async fn blob_bytes(
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

pub(super) fn stored_path(digest: &Digest) -> object_store::path::Path {
    object_store::path::Path::from(format!("{STORED_PREFIX}/{}", digest.hex()))
}

/// What a write-once pointer names.
pub(super) enum Named {
    /// The blob's digest and bytes, which hash to that digest.
    Found(Digest, Bytes),
    /// Nothing was named, and there was nothing to name.
    Nothing,
    /// The pointer or the blob it names is damaged: why.
    Damaged(&'static str),
}

/// The blob `pointer` names (`<digest> <size>`, written once, so the first
/// replica's wins), read with at most `max` bytes and checked to hash to
/// its name. When nothing is named yet, `make` gives the bytes to store
/// under their digest and name (`None`: nothing to name).
pub(super) async fn named_once<F, Fut>(
    store: &dyn object_store::ObjectStore,
    pointer: &object_store::path::Path,
    max: u64,
    make: F,
) -> Result<Named>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Option<Bytes>>>,
{
    let named = match read_bounded(store, pointer, 128).await? {
        Some(named) => named,
        None => {
            let Some(bytes) = make().await? else {
                return Ok(Named::Nothing);
            };
            let len = bytes.len();
            let (digest, bytes) =
                crate::blocking::run(move || Ok((Digest::of(&bytes), bytes))).await?;
            put_once(store, &blob_path(&digest), bytes).await?;
            put_once(store, pointer, Bytes::from(format!("{digest} {len}"))).await?;
            read_bounded(store, pointer, 128)
                .await?
                .ok_or_else(|| Error::internal(format!("the stored pointer {pointer} vanished")))?
        }
    };
    let Some((digest, size)) = std::str::from_utf8(&named)
        .ok()
        .and_then(|t| t.split_once(' '))
        .and_then(|(d, n)| Some((d.parse::<Digest>().ok()?, n.parse::<u64>().ok()?)))
    else {
        return Ok(Named::Damaged("the pointer does not parse"));
    };
    let Some(bytes) = read_bounded(store, &blob_path(&digest), max).await? else {
        return Ok(Named::Damaged("the blob it names is missing"));
    };
    let (hashed, bytes) = crate::blocking::run(move || Ok((Digest::of(&bytes), bytes))).await?;
    if hashed != digest || bytes.len() as u64 != size {
        return Ok(Named::Damaged(
            "the blob it names does not hash to its name",
        ));
    }
    Ok(Named::Found(digest, bytes))
}
