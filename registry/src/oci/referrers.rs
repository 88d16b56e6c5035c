//! Referrers (distribution-spec 1.1): what refers to a manifest this
//! registry serves, so that a verifier holding only a digest finds the
//! publisher's signature and the pin's proof. Every artifact manifest (by
//! tag or digest, in either repository) has a signature referrer: an
//! image manifest whose `subject` is that manifest and whose one layer is
//! the publisher's DSSE envelope exactly as the log recorded it, annotated
//! with the release, the key, the publish entry's log index and, for a
//! manifest of a pin, the pin. A pin's manifest also has a proof referrer,
//! whose layer is the pin's `.tlog-proof` (see `proofs`). Derived like every manifest here: the same bytes on every
//! replica, checked again before a stored copy is served.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;

use super::model::{self, Descriptor, Manifest};
use super::proofs::PROOF_TYPE;
use crate::digest::Digest;
use crate::records::{ArtifactRecord, PinRecord};

/// The artifact type and layer media type of a signature referrer.
pub const DSSE_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The media type of the referrers list (an image index).
pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The tag prefix of the referrers tag schema (`sha256-<hex>`), for
/// clients that look for referrers under a tag.
pub const TAG_PREFIX: &str = "sha256-";

/// The DSSE envelope of `artifact`, as its layer's bytes.
pub fn envelope(artifact: &ArtifactRecord) -> Bytes {
    // A JSON value read from the log serializes; its keys come out in one
    // order on every replica.
    Bytes::from(serde_json::to_vec(&artifact.envelope).unwrap_or_default())
}

/// The signature referrer of the manifest `subject`, which serves
/// `artifact` (as what `pin` made live, when it has a pin).
pub fn signature(
    artifact: &ArtifactRecord,
    pin: Option<&PinRecord>,
    envelope: &Bytes,
    subject: Descriptor,
) -> Manifest {
    let mut annotations = BTreeMap::from([
        (
            "org.opencontainers.image.created".to_owned(),
            artifact.recorded_at.to_string(),
        ),
        (
            "dev.stackpin.key-id".to_owned(),
            artifact.key_id.to_string(),
        ),
        (
            "dev.stackpin.publish.log-index".to_owned(),
            artifact.log_index.to_string(),
        ),
    ]);
    if let Some(p) = pin {
        annotations.extend(model::pin_annotations(p));
    }
    let layer = Descriptor {
        media_type: DSSE_TYPE.into(),
        digest: Digest::of(envelope).to_string(),
        size: envelope.len() as u64,
        annotations: BTreeMap::new(),
    };
    referrer(artifact, DSSE_TYPE, layer, subject, annotations)
}

/// The proof referrer of the manifest `subject`, which serves what `pin`
/// made live: its one layer is the pin's `.tlog-proof` (`digest`, `size`).
pub fn proof(
    artifact: &ArtifactRecord,
    pin: &PinRecord,
    digest: &Digest,
    size: u64,
    subject: Descriptor,
) -> Manifest {
    let layer = Descriptor {
        media_type: PROOF_TYPE.into(),
        digest: digest.to_string(),
        size,
        annotations: BTreeMap::from([(
            "org.opencontainers.image.title".to_owned(),
            "objectstack.json.tlog-proof".to_owned(),
        )]),
    };
    let annotations = BTreeMap::from(model::pin_annotations(pin));
    referrer(artifact, PROOF_TYPE, layer, subject, annotations)
}

/// A referrer of `subject` of `artifact_type` with one `layer`, annotated
/// with `annotations` and the release.
fn referrer(
    artifact: &ArtifactRecord,
    artifact_type: &str,
    layer: Descriptor,
    subject: Descriptor,
    mut annotations: BTreeMap<String, String>,
) -> Manifest {
    annotations.insert(
        "dev.stackpin.release".to_owned(),
        artifact.release_id.to_string(),
    );
    Manifest {
        schema_version: 2,
        media_type: model::MANIFEST_TYPE.into(),
        artifact_type: artifact_type.into(),
        config: model::empty_config(),
        layers: vec![layer],
        subject: Some(subject),
        annotations,
    }
}

/// The descriptor of a manifest with `bytes`, as a subject.
pub fn subject(bytes: &Bytes) -> Descriptor {
    Descriptor {
        media_type: model::MANIFEST_TYPE.into(),
        digest: Digest::of(bytes).to_string(),
        size: bytes.len() as u64,
        annotations: BTreeMap::new(),
    }
}

#[derive(Serialize)]
struct Index<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    manifests: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct Entry<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    digest: String,
    size: u64,
    #[serde(rename = "artifactType")]
    artifact_type: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

/// The referrers list: an image index of `referrers` (each a manifest
/// and its bytes).
pub fn index(referrers: &[(Manifest, Bytes)]) -> Bytes {
    let value = Index {
        schema_version: 2,
        media_type: INDEX_TYPE,
        manifests: referrers
            .iter()
            .map(|(m, bytes)| Entry {
                media_type: &m.media_type,
                digest: Digest::of(bytes).to_string(),
                size: bytes.len() as u64,
                artifact_type: &m.artifact_type,
                annotations: &m.annotations,
            })
            .collect(),
    };
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

/// The subject digest a referrers tag (`sha256-<64 hex>`) names.
pub fn tag_subject(tag: &str) -> Option<String> {
    tag.strip_prefix(TAG_PREFIX)
        .filter(|h| h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
        .map(|h| format!("sha256:{h}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_sha256_tag_with_64_hex_digits_names_a_subject() {
        let hex = "a".repeat(64);
        assert_eq!(
            tag_subject(&format!("sha256-{hex}")),
            Some(format!("sha256:{hex}"))
        );
        for bad in [
            "sha256-".to_owned(),
            format!("sha256-{}", "a".repeat(63)),
            format!("sha256-{}", "A".repeat(64)),
            format!("sha512-{hex}"),
            "prod".to_owned(),
        ] {
            assert_eq!(tag_subject(&bad), None, "{bad}");
        }
    }

    #[test]
    fn an_empty_list_is_an_empty_index() {
        assert_eq!(
            &index(&[])[..],
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#
        );
    }
}
