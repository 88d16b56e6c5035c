//! The tar+gzip form of an artifact, for the clients that read only
//! tar+gzip layers (Flux, Argo CD): one file, `objectstack.json`, with a
//! fixed mode, owner, mtime and gzip header, so the same bytes always make
//! the same archive. The digest of an artifact's archive is also stored
//! once (`oci/tgz/<artifact hex>`) the first time any replica builds it:
//! later answers use the stored archive, checked to hold exactly the
//! artifact, so its digest never drifts between builds of the registry
//! (a compression library update could change the bytes; the unit test
//! below pins them).

use std::io::{Read as _, Write as _};

use bytes::Bytes;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The layer's media type.
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The archive of `artifact` (the file's bytes).
///
/// # Errors
/// Internal when writing to memory fails (it does not).
pub fn build(artifact: &[u8]) -> Result<Bytes> {
    let failed = |e: std::io::Error| Error::internal(format!("building a tar+gzip layer: {e}"));
    let mut header = tar::Header::new_ustar();
    header.set_path(super::model::TITLE).map_err(failed)?;
    header.set_size(artifact.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::new(6));
    let mut archive = tar::Builder::new(gz);
    archive.mode(tar::HeaderMode::Deterministic);
    archive.append(&header, artifact).map_err(failed)?;
    let gz = archive.into_inner().map_err(failed)?;
    let mut gz = gz;
    gz.flush().map_err(failed)?;
    Ok(Bytes::from(gz.finish().map_err(failed)?))
}

/// Whether `archive` holds exactly one file, `objectstack.json`, whose
/// bytes hash to `digest` (at most `max` bytes are unpacked).
pub fn holds(archive: &[u8], digest: &Digest, max: u64) -> bool {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let Ok(mut entries) = tar.entries() else {
        return false;
    };
    let Some(Ok(entry)) = entries.next() else {
        return false;
    };
    let right_name = entry
        .path()
        .is_ok_and(|p| p.as_os_str() == super::model::TITLE);
    if !right_name || entry.size() > max {
        return false;
    }
    let mut bytes = Vec::new();
    if entry.take(max).read_to_end(&mut bytes).is_err() || Digest::of(&bytes) != *digest {
        return false;
    }
    entries.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_of_given_bytes_never_changes() {
        let a = build(b"{\"release\":1}\n").unwrap_or_else(|e| panic!("{e}"));
        let b = build(b"{\"release\":1}\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, b);
        // The gzip header: no name, mtime 0, OS "unknown".
        assert_eq!(&a[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        // Pinned: a change of these bytes changes every new archive's
        // digest (stored archives keep theirs).
        assert_eq!(
            Digest::of(&a).to_string(),
            "sha256:8b0fd4deaf77b33d7da803868ba7d7784c54c8409ded2373f22673615208e471"
        );
        assert!(holds(&a, &Digest::of(b"{\"release\":1}\n"), 1 << 20));
        assert!(!holds(&a, &Digest::of(b"{}"), 1 << 20));
        assert!(!holds(b"not gzip", &Digest::of(b"{}"), 1 << 20));
    }
}
