//! Downloading an artifact, verified against the digest its record names.

use stackpin_core::digest::{Digest, Hasher};
use stackpin_proto::v1 as pb;

use crate::client::Client;
use crate::exit::{Failure, Outcome};
use crate::progress::Progress;

/// Downloads smaller than this show no progress bar.
const QUIET_BELOW: u64 = 8 * 1024 * 1024;

/// Downloads an artifact and checks its bytes against the digest the
/// registry recorded for it; refuses one announced as larger than `max`
/// bytes (`--max-download`) before reading any of it.
pub async fn download(
    client: &mut Client,
    what: pb::ArtifactRef,
    max: u64,
) -> Outcome<(pb::Artifact, Vec<u8>)> {
    let mut stream = client
        .get_artifact(pb::GetArtifactRequest {
            artifact: Some(what),
        })
        .await?
        .into_inner();
    let artifact = match stream.message().await?.and_then(|m| m.part) {
        Some(pb::get_artifact_response::Part::Artifact(a)) => a,
        _ => {
            return Err(Failure::verify(
                "the registry did not send the artifact record first",
            ));
        }
    };
    let expected: Digest = artifact
        .digest
        .parse()
        .map_err(|e| Failure::verify(format!("the registry sent a bad digest: {e}")))?;
    if artifact.size > max {
        return Err(Failure::invalid(format!(
            "the registry announces {} as {} bytes, more than --max-download allows ({max} \
             bytes); raise --max-download if an artifact that large is expected",
            artifact.digest, artifact.size
        )));
    }
    let size = usize::try_from(artifact.size).unwrap_or(usize::MAX);
    let mut progress =
        (artifact.size >= QUIET_BELOW).then(|| Progress::bytes("downloading", artifact.size));
    let mut bytes = Vec::with_capacity(size.min(64 * 1024 * 1024));
    let mut hasher = Hasher::default();
    while let Some(message) = stream.message().await? {
        let Some(pb::get_artifact_response::Part::Chunk(chunk)) = message.part else {
            return Err(Failure::verify(
                "the registry sent a second artifact record",
            ));
        };
        if bytes.len() + chunk.len() > size {
            return Err(Failure::verify(format!(
                "the registry sent more than the {size} bytes it announced"
            )));
        }
        hasher.update(&chunk);
        bytes.extend_from_slice(&chunk);
        if let Some(p) = progress.as_mut() {
            p.set(bytes.len() as u64);
        }
    }
    if let Some(p) = progress {
        p.finish();
    }
    let actual = hasher.finish();
    if actual != expected || bytes.len() != size {
        return Err(Failure::verify(format!(
            "downloaded {} bytes hashing to {actual}; the registry recorded {size} bytes with \
             digest {expected}",
            bytes.len()
        )));
    }
    Ok((artifact, bytes))
}
