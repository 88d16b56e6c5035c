//! What the OCI API serves, derived from the log alone: the tags and the
//! image manifests. Every replica derives the same bytes (fixed field
//! order, annotations sorted, no clock and no host name), so a manifest's
//! digest is the same wherever and whenever it is asked for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::ids::{EnvName, ReleaseId};
use crate::records::{ArtifactRecord, PinRecord};
use crate::time::Timestamp;

/// The repository whose manifests' one layer is the artifact's exact
/// bytes (what ORAS, skopeo and crane read).
pub const REPOSITORY: &str = "objectstack";
/// The repository whose manifests' one layer is a tar+gzip holding the
/// artifact as `objectstack.json` (what Flux and Argo CD read).
pub const TGZ_REPOSITORY: &str = "objectstack-tgz";
/// The tar+gzip layer's title.
pub const TGZ_TITLE: &str = "objectstack.tar.gz";

/// How a manifest carries the artifact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Form {
    /// The artifact's bytes as the layer.
    Raw,
    /// A reproducible tar+gzip of the artifact as the layer.
    Tgz,
}

impl Form {
    /// The form a repository serves.
    pub fn of(repository: &str) -> Option<Self> {
        match repository {
            REPOSITORY => Some(Self::Raw),
            TGZ_REPOSITORY => Some(Self::Tgz),
            _ => None,
        }
    }
}
/// The manifests' `artifactType`, and their layer's media type.
pub const ARTIFACT_TYPE: &str = "application/vnd.objectos.objectstack.v1+json";
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The empty config: `{}`.
pub const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// The file name `oras pull` writes the layer to.
pub const TITLE: &str = "objectstack.json";

/// The separator of an instant tag: `<env>.at.<instant>`.
const AT: &str = ".at.";

/// A descriptor (OCI image-spec).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest (OCI image-spec 1.1), with the fields in the order
/// they are written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    #[serde(rename = "artifactType")]
    pub artifact_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// What a referrer refers to (none for an artifact's manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What a tag names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tag {
    /// A release id: one artifact, forever.
    Release(ReleaseId),
    /// An environment: the artifact live there now (moves with pins).
    Env(EnvName),
    /// What was live in an environment at an instant, as `resolve` answers.
    At(EnvName, Timestamp),
}

/// The tag grammar of the distribution spec.
pub fn is_tag(text: &str) -> bool {
    let b = text.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// The readings of `tag`: as a release id, as an environment, and (when it
/// has the form `<env>.at.<YYYYMMDDTHHMMSS[.ffffff]Z>`) as an instant tag.
/// The caller keeps those that exist; more than one is ambiguous.
pub fn readings(tag: &str) -> Vec<Tag> {
    let mut out = Vec::new();
    if let Ok(r) = tag.parse() {
        out.push(Tag::Release(r));
    }
    if let Ok(e) = tag.parse() {
        out.push(Tag::Env(e));
    }
    if let Some((env, instant)) = tag.rsplit_once(AT)
        && let (Ok(env), Some(at)) = (env.parse(), parse_instant(instant))
    {
        out.push(Tag::At(env, at));
    }
    out
}

/// `20260526T130000Z` or `20260526T130000.250000Z` (UTC; the tag grammar
/// allows no `:`).
pub fn parse_instant(text: &str) -> Option<Timestamp> {
    let body = text.strip_suffix('Z')?;
    let (whole, fraction) = match body.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (body, None),
    };
    let b = whole.as_bytes();
    if b.len() != 15 || b[8] != b'T' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| {
        whole
            .get(r)
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
    };
    let mut rfc = format!(
        "{}-{}-{}T{}:{}:{}",
        digits(0..4)?,
        digits(4..6)?,
        digits(6..8)?,
        digits(9..11)?,
        digits(11..13)?,
        digits(13..15)?
    );
    if let Some(f) = fraction {
        if f.is_empty() || f.len() > 6 || !f.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        rfc.push('.');
        rfc.push_str(f);
    }
    rfc.push('Z');
    rfc.parse().ok()
}

/// The descriptor of the empty config.
pub fn empty_config() -> Descriptor {
    Descriptor {
        media_type: EMPTY_TYPE.into(),
        digest: Digest::of(EMPTY_CONFIG).to_string(),
        size: EMPTY_CONFIG.len() as u64,
        annotations: BTreeMap::new(),
    }
}

/// The layer of `artifact` in the raw form.
pub fn raw_layer(artifact: &ArtifactRecord) -> Descriptor {
    Descriptor {
        media_type: ARTIFACT_TYPE.into(),
        digest: artifact.digest.to_string(),
        size: artifact.size,
        annotations: BTreeMap::from([(
            "org.opencontainers.image.title".to_owned(),
            TITLE.to_owned(),
        )]),
    }
}

/// The layer of an artifact in the tar+gzip form, whose archive has
/// `digest` and `size`.
pub fn tgz_layer(digest: &Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: super::tgz::LAYER_TYPE.into(),
        digest: digest.to_string(),
        size,
        annotations: BTreeMap::from([(
            "org.opencontainers.image.title".to_owned(),
            TGZ_TITLE.to_owned(),
        )]),
    }
}

/// The manifest of `artifact` with `layer`, with the annotations of `pin`
/// when it is served as what a pin made live.
pub fn manifest(artifact: &ArtifactRecord, pin: Option<&PinRecord>, layer: Descriptor) -> Manifest {
    let mut annotations = BTreeMap::from([
        (
            "org.opencontainers.image.created".to_owned(),
            artifact.recorded_at.to_string(),
        ),
        (
            "org.opencontainers.image.revision".to_owned(),
            artifact.release_id.to_string(),
        ),
        (
            "dev.stackpin.release".to_owned(),
            artifact.release_id.to_string(),
        ),
        (
            "dev.stackpin.publish.log-index".to_owned(),
            artifact.log_index.to_string(),
        ),
    ]);
    if let Some(url) = stackpin_core::source::of_envelope(&artifact.envelope) {
        annotations.insert("org.opencontainers.image.source".to_owned(), url);
    }
    if let Some(p) = pin {
        let e = &p.entry;
        annotations.extend(pin_annotations(p));
        annotations.insert(
            "dev.stackpin.pin.activated-at".to_owned(),
            e.activated_at.to_string(),
        );
        if let Some(position) = &e.db_position {
            annotations.insert(
                "dev.stackpin.pin.db-position".to_owned(),
                position.to_string(),
            );
        }
    }
    Manifest {
        schema_version: 2,
        media_type: MANIFEST_TYPE.into(),
        artifact_type: ARTIFACT_TYPE.into(),
        config: empty_config(),
        layers: vec![layer],
        subject: None,
        annotations,
    }
}

/// The annotations that say which pin a manifest is of: its environment,
/// its number and its log index (what [`claims`] reads back).
pub fn pin_annotations(p: &PinRecord) -> [(String, String); 3] {
    [
        (
            "dev.stackpin.environment".to_owned(),
            p.entry.env.to_string(),
        ),
        ("dev.stackpin.pin".to_owned(), p.entry.seq.to_string()),
        (
            "dev.stackpin.pin.log-index".to_owned(),
            p.log_index.to_string(),
        ),
    ]
}

/// The bytes of a manifest, as served and hashed.
pub fn encode(manifest: &Manifest) -> bytes::Bytes {
    // Serializing these plain structs cannot fail.
    bytes::Bytes::from(serde_json::to_vec(manifest).unwrap_or_default())
}

/// What a stored manifest claims to be (its release, and its pin when it
/// has one), to derive it again before it is served.
pub fn claims(manifest: &Manifest) -> Option<(ReleaseId, Option<(EnvName, u64)>)> {
    let a = &manifest.annotations;
    let release = a.get("dev.stackpin.release")?.parse().ok()?;
    let pin = match (a.get("dev.stackpin.environment"), a.get("dev.stackpin.pin")) {
        (Some(env), Some(seq)) => Some((env.parse().ok()?, seq.parse().ok()?)),
        (None, None) => None,
        _ => return None,
    };
    Some((release, pin))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tag of what was live in `env` at `at`.
    fn instant_tag(env: &EnvName, at: Timestamp) -> String {
        let text = at.to_string(); // 2026-05-26T13:00:00.000000Z
        let compact: String = text.chars().filter(|c| !matches!(c, '-' | ':')).collect();
        format!("{env}{AT}{}", compact.replace(".000000Z", "Z"))
    }

    #[test]
    fn tags_follow_the_spec_grammar_and_instants_round_trip() {
        assert!(is_tag("prod"));
        assert!(is_tag("_x.y-z"));
        assert!(!is_tag(""));
        assert!(!is_tag(".x"));
        assert!(!is_tag("a:b"));
        assert!(!is_tag(&"a".repeat(129)));
        let at: Timestamp = "2026-05-26T13:00:00Z"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let env: EnvName = "prod".parse().unwrap_or_else(|e| panic!("{e}"));
        let tag = instant_tag(&env, at);
        assert_eq!(tag, "prod.at.20260526T130000Z");
        assert!(readings(&tag).contains(&Tag::At(env.clone(), at)));
        let fine: Timestamp = "2026-05-26T13:00:00.25Z"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(instant_tag(&env, fine), "prod.at.20260526T130000.250000Z");
        assert_eq!(parse_instant("20260526T130000.25Z"), Some(fine));
        for bad in [
            "20260526T130000",
            "20260526 130000Z",
            "2026052T130000Z",
            "20261326T130000Z",
            "20260526T130000.Z",
            "20260526T130000.1234567Z",
            "2026０526T130000Z",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_empty_config_has_its_well_known_digest() {
        assert_eq!(
            empty_config().digest,
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
