//! `stackpin publish`: sign and upload an objectstack.json.

use std::path::PathBuf;

use anyhow::Context as _;
use serde::Serialize;
use stackpin_core::digest::Digest;
use stackpin_core::ids::ReleaseId;
use stackpin_core::signing;
use stackpin_proto::v1 as pb;

use crate::exit::{Failure, Outcome};
use crate::progress::Progress;
use crate::view::{ArtifactView, Format};

/// Size of the chunks the artifact is sent in.
const CHUNK: usize = stackpin_core::defaults::CHUNK_BYTES;

#[derive(clap::Args)]
pub struct Args {
    /// The artifact (objectstack.json).
    file: PathBuf,
    /// The release id to bind the artifact to (write-once).
    #[arg(long, value_parser = crate::parse::<ReleaseId>)]
    release_id: ReleaseId,
    /// Private key to sign with (PKCS#8 PEM, e.g. from `stackpin keygen` or
    /// `openssl genpkey -algorithm ed25519`).
    #[arg(
        long,
        required_unless_present = "envelope",
        conflicts_with = "envelope"
    )]
    key: Option<PathBuf>,
    /// A DSSE envelope signed elsewhere (e.g. by a KMS), instead of --key:
    /// an in-toto Statement v1 with predicateType
    /// https://stackpin.local/publish/v1. A signature's keyid, when set,
    /// must be stackpin's key id, the hex SHA-256 of the raw 32-byte
    /// Ed25519 public key (`stackpin key list` shows it); left empty, every
    /// trusted key is tried.
    #[arg(long)]
    envelope: Option<PathBuf>,
    /// Where the artifact's source lives (an https, http, ssh or git URL),
    /// signed into the publish statement; registry clients of the OCI API
    /// see it as `org.opencontainers.image.source`. Only with --key.
    #[arg(long, conflicts_with = "envelope")]
    source: Option<String>,
    /// Media type recorded with the artifact.
    #[arg(long, default_value = "application/json")]
    media_type: String,
}

#[derive(Serialize)]
struct Published {
    created: bool,
    #[serde(flatten)]
    artifact: ArtifactView,
}

pub async fn run(args: &Args, server: &crate::client::Connection, format: Format) -> Outcome {
    let bytes = std::fs::read(&args.file)
        .map_err(|e| Failure::invalid(format!("reading {}: {e}", args.file.display())))?;
    if bytes.is_empty() {
        return Err(Failure::invalid(format!(
            "{} is empty",
            args.file.display()
        )));
    }
    // The registry's own check, before anything is signed or sent; how
    // deep is the registry's setting, so only the hard cap applies here.
    if let Err(e) = stackpin_core::json::check(&bytes, stackpin_core::json::MAX_DEPTH_LIMIT) {
        return Err(Failure::invalid(format!(
            "{} is not strict JSON (objectstack.json must be RFC 8259 JSON in UTF-8, without \
             duplicate names): {e}",
            args.file.display()
        )));
    }
    if let Some(url) = &args.source {
        stackpin_core::source::check(url)
            .map_err(|e| Failure::invalid(format!("--source: {e}")))?;
    }
    let digest = Digest::of(&bytes);
    let envelope = match (&args.key, &args.envelope) {
        (Some(key), _) => {
            let pem = std::fs::read_to_string(key)
                .map_err(|e| Failure::invalid(format!("reading key {}: {e}", key.display())))?;
            let key = signing::signing_key_from_pem(&pem)
                .map_err(|e| Failure::invalid(format!("key {}: {e}", key.display())))?;
            let statement = signing::publish_statement_with_source(
                &args.release_id,
                &digest,
                args.source.as_deref(),
            );
            signing::sign_envelope(&statement, &key)
        }
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| Failure::invalid(format!("reading envelope {}: {e}", path.display())))?,
        (None, None) => return Err(Failure::invalid("pass --key or --envelope")),
    };

    let client = crate::client::connect(server).await?;
    let id = server.request_id_for("publish", args.release_id.as_str())?;
    let size = bytes.len();
    let show_progress = size > 8 * CHUNK;
    let header = pb::PublishRequest {
        part: Some(pb::publish_request::Part::Header(pb::PublishHeader {
            release_id: args.release_id.to_string(),
            media_type: args.media_type.clone(),
            envelope: envelope.into(),
            size: size as u64,
            request_id: id.clone(),
        })),
    };
    let body = bytes::Bytes::from(bytes);
    // Each attempt streams the bytes again under the same request id.
    let response = server
        .retrying("publish", || {
            let body = body.clone();
            let mut progress = show_progress.then(|| Progress::bytes("publishing", size as u64));
            let chunks = (0..size).step_by(CHUNK).map(move |start| {
                let end = (start + CHUNK).min(size);
                if let Some(p) = progress.as_mut() {
                    p.set(end as u64);
                    if end == size {
                        p.finish();
                    }
                }
                pb::PublishRequest {
                    part: Some(pb::publish_request::Part::Chunk(body.slice(start..end))),
                }
            });
            let stream = futures::stream::iter(std::iter::once(header.clone()).chain(chunks));
            let mut client = client.clone();
            let request = crate::client::Connection::request(&id, stream);
            async move { client.publish(request).await }
        })
        .await?
        .into_inner();
    let artifact = response
        .artifact
        .as_ref()
        .context("the registry answered without an artifact record")?;
    if artifact.digest != digest.to_string() {
        return Err(Failure::verify(format!(
            "the registry recorded {} but the file hashes to {digest}",
            artifact.digest
        )));
    }
    let out = Published {
        created: response.created,
        artifact: artifact.into(),
    };
    format.emit(&out, || {
        let state = if out.created {
            "published"
        } else {
            "already published (same bytes); nothing changed"
        };
        format!("{state}\n{}", out.artifact.text())
    });
    Ok(())
}
