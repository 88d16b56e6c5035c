//! Conversions between wire types and domain types, in one place.
//!
//! Incoming values are validated here (names, digests, times); nothing past
//! this module sees an unparsed string from the wire.

use std::time::Duration;

use stackpin_proto::v1 as pb;

use crate::error::{Error, Result};
use crate::position::DbPosition;
use crate::proof::ProvedEntry;
use crate::records::{ArtifactRecord, PinRecord};
use crate::registry::{ArtifactRef, KeySource, ProvedResolution, PublisherKey, SignedCheckpoint};
use crate::time::Timestamp;
use crate::timeline::{Boundary, Resolution};

/// Largest margin a resolve may ask for.
const MAX_MARGIN: Duration = Duration::from_secs(24 * 3600);

pub use stackpin_proto::convert::timestamp;

pub fn optional_time(field: &str, t: Option<prost_types::Timestamp>) -> Result<Option<Timestamp>> {
    t.map(|t| {
        stackpin_proto::convert::instant(&t).map_err(|e| Error::invalid(format!("{field}: {e}")))
    })
    .transpose()
}

pub fn required_time(field: &str, t: Option<prost_types::Timestamp>) -> Result<Timestamp> {
    optional_time(field, t)?.ok_or_else(|| Error::invalid(format!("{field} is required")))
}

pub fn margin(d: Option<prost_types::Duration>) -> Result<Option<Duration>> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Error::invalid("margin must be a non-negative duration"));
    }
    let out = Duration::new(d.seconds.unsigned_abs(), d.nanos.unsigned_abs());
    if out > MAX_MARGIN {
        return Err(Error::invalid("margin may be at most 24h"));
    }
    Ok(Some(out))
}

fn duration_micros(micros: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: micros / 1_000_000,
        // |micros % 1e6| < 1e6, so the product fits an i32.
        nanos: ((micros % 1_000_000) * 1000) as i32,
    }
}

pub fn db_position(p: Option<pb::DbPosition>) -> Result<Option<DbPosition>> {
    Ok(stackpin_proto::convert::position(p.as_ref())?)
}

use stackpin_proto::convert::db_position as db_position_out;

pub fn artifact_ref(r: Option<pb::ArtifactRef>) -> Result<ArtifactRef> {
    match r.and_then(|r| r.r#ref) {
        Some(pb::artifact_ref::Ref::ReleaseId(id)) => Ok(ArtifactRef::Release(id.parse()?)),
        Some(pb::artifact_ref::Ref::Digest(d)) => Ok(ArtifactRef::Digest(d.parse()?)),
        None => Err(Error::invalid("name the artifact by release id or digest")),
    }
}

pub fn artifact(a: &ArtifactRecord) -> pb::Artifact {
    pb::Artifact {
        release_id: a.release_id.to_string(),
        digest: a.digest.to_string(),
        size: a.size,
        media_type: a.media_type.clone(),
        recorded_at: Some(timestamp(a.recorded_at)),
        log_index: a.log_index,
        key_id: a.key_id.to_string(),
        envelope: serde_json::to_vec(&a.envelope).unwrap_or_default().into(),
    }
}

pub fn pin(p: &PinRecord) -> pb::Pin {
    pb::Pin {
        env: p.entry.env.to_string(),
        seq: p.entry.seq,
        release_id: p.entry.release_id.to_string(),
        digest: p.entry.digest.to_string(),
        activated_at: Some(timestamp(p.entry.activated_at)),
        recorded_at: Some(timestamp(p.entry.recorded_at)),
        actor: p.entry.actor.clone(),
        reason: p.entry.reason.clone(),
        log_index: p.log_index,
        entry_hash: p.entry_hash.hex(),
        prev_pin_hash: p.entry.prev_pin.clone().unwrap_or_default(),
        db_position: p.entry.db_position.as_ref().map(db_position_out),
        request_id: p.entry.request_id.clone().unwrap_or_default(),
        runtime_image: p
            .entry
            .runtime_image
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

fn boundary(b: &Boundary) -> pb::Boundary {
    pb::Boundary {
        before: Some(pin(&b.before)),
        after: Some(pin(&b.after)),
        offset: Some(duration_micros(b.offset_micros)),
    }
}

pub fn resolution(proved: &ProvedResolution) -> pb::ResolveResponse {
    let r: &Resolution = &proved.resolution;
    pb::ResolveResponse {
        pin: Some(pin(&r.pin)),
        live_from: Some(timestamp(r.pin.entry.activated_at)),
        live_until: r.next.as_ref().map(|n| timestamp(n.entry.activated_at)),
        next: r.next.as_ref().map(pin),
        near_switch: r.near_switch.as_ref().map(boundary),
        checkpoint: Some(checkpoint(&proved.checkpoint)),
        pin_entry: Some(proved_entry(&proved.pin)),
        next_entry: proved.next.as_ref().map(proved_entry),
        publish_entry: Some(proved_entry(&proved.publish)),
        uncertain: r.uncertain.clone().unwrap_or_default(),
        prev_entry: proved.prev.as_ref().map(proved_entry),
    }
}

pub fn checkpoint(cp: &SignedCheckpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        note: cp.note.to_string(),
        size: cp.size,
    }
}

pub fn hashes(hashes: &[crate::merkle::Hash]) -> Vec<bytes::Bytes> {
    hashes
        .iter()
        .map(|h| bytes::Bytes::copy_from_slice(h.as_bytes()))
        .collect()
}

pub fn proved_entry(e: &ProvedEntry) -> pb::ProvedEntry {
    pb::ProvedEntry {
        index: e.index,
        entry: e.entry.clone(),
        proof: hashes(&e.proof),
    }
}

pub fn publisher_key(k: &PublisherKey) -> pb::PublisherKey {
    pb::PublisherKey {
        key_id: k.key_id.to_string(),
        public_key_pem: k.public_key_pem.clone(),
        source: match k.source {
            KeySource::Config => "config",
            KeySource::Log => "log",
        }
        .to_owned(),
        valid_from: k.valid_from.map(timestamp),
        revoked_at: k.revoked_at.map(timestamp),
        replayed: false,
    }
}

pub fn page_token<T: std::str::FromStr>(token: &str) -> Result<Option<T>> {
    if token.is_empty() {
        return Ok(None);
    }
    token.parse().map(Some).map_err(|_| {
        Error::invalid(format!(
            "page token {token:?} is not one this server issued"
        ))
    })
}
