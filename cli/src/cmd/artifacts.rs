//! `stackpin fetch`, `list` and `stat`: artifacts by release id or digest,
//! verified locally before anything is written. `restore`, which asks
//! which artifact was live, is in [`super::restore`].

use std::path::PathBuf;

use serde::Serialize;
use stackpin_proto::v1 as pb;

use stackpin_core::entry::Entry;

use crate::cmd::pins::ArtifactArg;
use crate::download::download;
use crate::exit::{Failure, Outcome};
use crate::files::write_atomic;
use crate::reader::Reader;
use crate::trust::LogKey;
use crate::view::{ArtifactView, Format};

#[derive(clap::Args)]
pub struct FetchArgs {
    #[command(flatten)]
    artifact: ArtifactArg,
    /// Where to write the artifact (`-`: standard output, and nothing
    /// else is printed there).
    #[arg(long)]
    out: PathBuf,
    /// The log's key: the record shown is proved against the log.
    #[command(flatten)]
    log_key: LogKey,
}

#[derive(Serialize)]
struct Fetched {
    out: String,
    /// Whether the record was proved against the log (a log key was known).
    verified: bool,
    #[serde(flatten)]
    artifact: ArtifactView,
}

/// The record of `artifact` as its publish entry in the log says it, proved
/// when a log key is known (a field of the registry's record that differs
/// is exit 5); the registry's record, marked unverified, when not.
async fn proved_record(
    reader: &Reader,
    client: &mut crate::client::Client,
    artifact: &pb::Artifact,
) -> Outcome<ArtifactView> {
    let wire = ArtifactView::from(artifact);
    if !reader.verifies() {
        return Ok(wire);
    }
    let note = client
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await?
        .into_inner()
        .note;
    let anchor = reader.anchor(client, &note).await?;
    let proved = anchor.fetch(client, artifact.log_index).await?;
    let Entry::Publish(p) = &proved.entry else {
        return Err(Failure::verify(format!(
            "log entry {} is not the publish of {}",
            artifact.log_index, artifact.release_id
        )));
    };
    let view = ArtifactView::of(proved.index(), p);
    let differs = [
        ("release_id", wire.release_id != view.release_id),
        ("digest", wire.digest != view.digest),
        ("size", wire.size != view.size),
        ("media_type", wire.media_type != view.media_type),
        ("recorded_at", wire.recorded_at != view.recorded_at),
        ("key_id", wire.key_id != view.key_id),
    ];
    if let Some((field, _)) = differs.iter().find(|(_, d)| *d) {
        return Err(Failure::verify(format!(
            "the record's `{field}` disagrees with the proved publish entry {}",
            proved.index()
        )));
    }
    Ok(view)
}

pub async fn fetch(
    args: &FetchArgs,
    server: &crate::client::Connection,
    state: Option<&std::path::Path>,
    format: Format,
) -> Outcome {
    let reader = Reader::new(&args.log_key, server, state, None)?;
    let mut client = crate::client::connect(server).await?;
    let (artifact, bytes) =
        download(&mut client, args.artifact.to_wire(), server.max_download).await?;
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
    let record = proved_record(&reader, &mut client, &artifact).await?;
    if args.out.as_os_str() == "-" {
        crate::view::stdout_bytes(&bytes);
        return Ok(());
    }
    crate::files::say_replaced(&args.out);
    write_atomic(&args.out, &bytes)?;
    let out = Fetched {
        out: args.out.display().to_string(),
        verified: reader.verifies(),
        artifact: record,
    };
    format.emit(&out, || {
        format!(
            "wrote {}\n{}{}",
            out.out,
            out.artifact.text(),
            reader.unverified_line()
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
    /// The log's key: the record shown is proved against the log.
    #[command(flatten)]
    log_key: LogKey,
}

#[derive(Serialize)]
struct Stated {
    /// Whether the record was proved against the log (a log key was known).
    verified: bool,
    #[serde(flatten)]
    artifact: ArtifactView,
}

pub async fn stat(
    args: &StatArgs,
    server: &crate::client::Connection,
    state: Option<&std::path::Path>,
    format: Format,
) -> Outcome {
    let reader = Reader::new(&args.log_key, server, state, None)?;
    let mut client = crate::client::connect(server).await?;
    let artifact = client
        .stat_artifact(pb::StatArtifactRequest {
            artifact: Some(args.artifact.to_wire()),
        })
        .await?
        .into_inner();
    let view = Stated {
        verified: reader.verifies(),
        artifact: proved_record(&reader, &mut client, &artifact).await?,
    };
    format.emit(&view, || {
        format!("{}{}", view.artifact.text(), reader.unverified_line())
    });
    Ok(())
}
