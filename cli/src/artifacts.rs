//! `stackpin fetch`, `restore`, `list` and `stat`: getting artifacts back,
//! verified locally before anything is written.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use stackpin_proto::v1 as pb;
use stackpin_registry::digest::{Digest, Hasher};
use stackpin_registry::proof::{ProvedEntry, RestoreProof};
use stackpin_registry::signing::TrustedKeys;

use crate::exit::{Failure, Outcome};
use crate::pins::{ArtifactArg, ResolveArgs, ask};
use crate::view::{ArtifactView, Format, ResolveView};

use crate::client::Client;

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

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced,
/// then renamed over it. A reader never sees a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Outcome {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::invalid(format!("cannot create {}: {e}", dir.display())))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".stackpin-")
        .tempfile_in(&dir)
        .map_err(|e| Failure::invalid(format!("cannot write into {}: {e}", dir.display())))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("moving the download into {}: {}", path.display(), e.error))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        // Make the rename itself durable; failure here is not worth failing for.
        let _ = d.sync_all();
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct FetchArgs {
    #[command(flatten)]
    artifact: ArtifactArg,
    /// Where to write the artifact.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Serialize)]
struct Fetched {
    out: String,
    #[serde(flatten)]
    artifact: ArtifactView,
}

pub async fn fetch(
    args: &FetchArgs,
    server: &crate::client::Connection,
    format: Format,
) -> Outcome {
    let mut client = crate::client::connect(server).await?;
    let (artifact, bytes) = download(&mut client, args.artifact.to_wire()).await?;
    if let Some(d) = &args.artifact.digest
        && artifact.digest != d.to_string()
    {
        return Err(Failure::verify(format!(
            "asked for {d}, the registry sent {}",
            artifact.digest
        )));
    }
    if let Some(r) = &args.artifact.release_id
        && artifact.release_id != r.as_str()
    {
        return Err(Failure::verify(format!(
            "asked for release {r}, the registry sent release {}",
            artifact.release_id
        )));
    }
    write_atomic(&args.out, &bytes)?;
    let out = Fetched {
        out: args.out.display().to_string(),
        artifact: (&artifact).into(),
    };
    format.emit(&out, || {
        format!("wrote {}\n{}", out.out, out.artifact.text())
    });
    Ok(())
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    resolve: ResolveArgs,
    /// Where to write the artifact that was live.
    #[arg(long)]
    out: PathBuf,
    /// Publisher keys to verify the artifact's signature against: a PEM
    /// public-key file or a folder of *.pem.
    #[arg(long, env = "STACKPIN_TRUSTED_KEYS")]
    trusted_keys: PathBuf,
    /// The log's verifier key (as `stackpin-registry key` prints it), or a
    /// file holding it.
    #[arg(long, env = "STACKPIN_LOG_KEY")]
    log_key: String,
}

#[derive(Serialize)]
struct Restored {
    out: String,
    proof: String,
    signed_by: String,
    checkpoint_size: u64,
    #[serde(flatten)]
    resolution: ResolveView,
}

fn proved_entry(what: &str, e: Option<pb::ProvedEntry>) -> Outcome<ProvedEntry> {
    let e = e.ok_or_else(|| Failure::verify(format!("the registry sent no {what}")))?;
    let proof = e
        .proof
        .iter()
        .map(|h| {
            h.as_ref()
                .try_into()
                .map_err(|_| Failure::verify(format!("a proof hash of the {what} is not 32 bytes")))
        })
        .collect::<Outcome<Vec<_>>>()?;
    Ok(ProvedEntry {
        index: e.index,
        entry: e.entry,
        proof,
    })
}

pub async fn restore(
    args: &RestoreArgs,
    server: &crate::client::Connection,
    state: Option<&Path>,
    format: Format,
) -> Outcome {
    let trusted = TrustedKeys::load(&args.trusted_keys)
        .map_err(|e| Failure::invalid(format!("--trusted-keys: {e}")))?;
    let log_key = crate::trust::log_key(&args.log_key)?;
    let mut client = crate::client::connect(server).await?;
    // A restore always reads the replica's freshest state.
    let (response, view) = ask(&mut client, &args.resolve, true).await?;
    let note = response
        .checkpoint
        .as_ref()
        .map(|c| c.note.clone())
        .ok_or_else(|| Failure::verify("the registry sent no checkpoint"))?;
    let checkpoint = crate::trust::accept_checkpoint(&mut client, &note, &log_key, state).await?;
    let proof = RestoreProof {
        checkpoint: note,
        publish: proved_entry("publish entry", response.publish_entry.clone())?,
        pin: proved_entry("pin entry", response.pin_entry.clone())?,
        next: match response.next_entry.clone() {
            Some(e) => Some(proved_entry("next pin entry", Some(e))?),
            None => None,
        },
    };
    let pin = response
        .pin
        .context("the registry answered without a pin")?;
    let what = pb::ArtifactRef {
        r#ref: Some(pb::artifact_ref::Ref::ReleaseId(pin.release_id.clone())),
    };
    let (artifact, bytes) = download(&mut client, what).await?;
    if artifact.digest != pin.digest || artifact.release_id != pin.release_id {
        return Err(Failure::verify(format!(
            "the pin names {} {} but the registry sent {} {}",
            pin.release_id, pin.digest, artifact.release_id, artifact.digest
        )));
    }
    // Everything below is checked against the signed checkpoint, not
    // taken from the answer: the entries must say what the answer says.
    let verified = proof
        .verify(&bytes, &log_key, &trusted)
        .map_err(Failure::verify)?;
    let at = args.resolve.at;
    let (from, until) = verified.interval();
    if verified.pin.env != args.resolve.env
        || verified.pin.seq != pin.seq
        || at < from
        || until.is_some_and(|u| at >= u)
    {
        return Err(Failure::verify(format!(
            "the proved pin (#{} of {}, live [{from}, {})) does not cover {at} in {}",
            verified.pin.seq,
            verified.pin.env,
            until.map_or_else(|| "still live".to_owned(), |u| u.to_string()),
            args.resolve.env
        )));
    }
    let proof_file = crate::verify::proof_path(&args.out);
    write_atomic(&args.out, &bytes)?;
    write_atomic(&proof_file, proof.to_tlog_proof().as_bytes())?;
    let out = Restored {
        out: args.out.display().to_string(),
        proof: proof_file.display().to_string(),
        signed_by: verified.key_id.to_string(),
        checkpoint_size: checkpoint.size,
        resolution: view,
    };
    if let Some(b) = &out.resolution.near_switch {
        eprintln!(
            "warning: {} is within the margin of the switch from {} to {}; verify against the \
             database which one it matches",
            out.resolution.at, b.before.release_id, b.after.release_id
        );
    }
    format.emit(&out, || {
        format!(
            "restored {}\n{}verified   sha256, publisher signature ({}), log inclusion of publish, pin and successor in checkpoint {}\nproof      {}\n",
            out.out,
            out.resolution.text(),
            out.signed_by,
            out.checkpoint_size,
            out.proof
        )
    });
    Ok(())
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// At most this many artifacts (at most 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Continue from a previous page.
    #[arg(long, default_value = "")]
    page_token: String,
}

#[derive(Serialize)]
struct Listed {
    artifacts: Vec<ArtifactView>,
    #[serde(skip_serializing_if = "String::is_empty")]
    next_page_token: String,
}

pub async fn list(args: &ListArgs, server: &crate::client::Connection, format: Format) -> Outcome {
    let mut client = crate::client::connect(server).await?;
    let response = client
        .list_artifacts(pb::ListArtifactsRequest {
            page_size: args.limit,
            page_token: args.page_token.clone(),
        })
        .await?
        .into_inner();
    let out = Listed {
        artifacts: response.artifacts.iter().map(ArtifactView::from).collect(),
        next_page_token: response.next_page_token,
    };
    format.emit(&out, || {
        let mut text = String::new();
        for a in &out.artifacts {
            text.push_str(&format!(
                "{}  {}  {} bytes  {}\n",
                a.release_id, a.digest, a.size, a.recorded_at
            ));
        }
        if out.artifacts.is_empty() {
            text.push_str("no artifacts\n");
        }
        if !out.next_page_token.is_empty() {
            text.push_str(&format!("more: --page-token {}\n", out.next_page_token));
        }
        text
    });
    Ok(())
}

#[derive(clap::Args)]
pub struct StatArgs {
    #[command(flatten)]
    artifact: ArtifactArg,
}

pub async fn stat(args: &StatArgs, server: &crate::client::Connection, format: Format) -> Outcome {
    let mut client = crate::client::connect(server).await?;
    let artifact = client
        .stat_artifact(pb::StatArtifactRequest {
            artifact: Some(args.artifact.to_wire()),
        })
        .await?
        .into_inner();
    let view = ArtifactView::from(&artifact);
    format.emit(&view, || view.text());
    Ok(())
}
