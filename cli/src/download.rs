//! Downloading an artifact, verified against the digest its record names.

use std::io::IsTerminal as _;

use stackpin_core::digest::{Digest, Hasher};
use stackpin_proto::v1 as pb;

use crate::client::Client;
use crate::exit::{Failure, Outcome};

/// Downloads an artifact and checks its bytes against the digest the
/// registry recorded for it.
pub async fn download(
    client: &mut Client,
    what: pb::ArtifactRef,
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
    let size = usize::try_from(artifact.size).unwrap_or(usize::MAX);
    let progress = size > 8 * 1024 * 1024 && std::io::stderr().is_terminal();
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
        if progress {
            eprint!(
                "\rdownloading: {:>3}% of {size} bytes",
                bytes.len() * 100 / size
            );
        }
    }
    if progress {
        eprintln!();
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
