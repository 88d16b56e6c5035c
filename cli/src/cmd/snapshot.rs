//! `stackpin snapshot-tag` and `snapshot list`: a backup recorded in the
//! log, paired with the artifact live at its instant, and the backups
//! recorded for an environment.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use stackpin_proto::v1 as pb;

use crate::exit::{Failure, Outcome};
use crate::files::write_atomic;
use crate::view::Format;

#[derive(clap::Subcommand)]
pub enum SnapshotCmd {
    /// The snapshots recorded for an environment, newest first.
    List(super::evidence::ListArgs),
}

pub async fn snapshot(
    cmd: &SnapshotCmd,
    server: &crate::client::Connection,
    state: Option<&std::path::Path>,
    format: Format,
) -> Outcome {
    match cmd {
        SnapshotCmd::List(a) => super::evidence::list(a, "snapshot", server, state, format).await,
    }
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("backup").required(true).multiple(true).args(["file", "location", "pgbackrest_stanza", "barman_server"])))]
pub struct SnapshotTagArgs {
    /// The environment whose live artifact the snapshot goes with.
    #[arg(long, value_parser = crate::parse::<stackpin_core::ids::EnvName>)]
    pub(super) env: stackpin_core::ids::EnvName,
    /// A database snapshot file (e.g. made with `VACUUM INTO`): its size
    /// and sha256 are recorded, and FILE.stackpin.json written beside it.
    #[arg(long, value_name = "FILE")]
    pub(super) file: Option<PathBuf>,
    /// Where the backup is, as recorded (a URL or path) [default: the
    /// --file's absolute path].
    #[arg(long, value_name = "URL")]
    pub(super) location: Option<String>,
    /// How the backup was made: sqlite, postgresql, litestream, pgbackrest, barman, other
    /// [default: sqlite with --file, else other].
    #[arg(long, value_parser = crate::parse::<stackpin_core::entry::Driver>)]
    pub(super) driver: Option<stackpin_core::entry::Driver>,
    /// The database instant the backup restores to (default: now).
    #[arg(long, value_parser = crate::parse_time)]
    pub(super) at: Option<stackpin_core::time::Timestamp>,
    #[command(flatten)]
    pub(super) position: crate::cmd::pins::PositionArgs,
    /// Record a pgBackRest backup set of this stanza (its label, stop LSN
    /// and stop time), and write the pairing into the set's annotations,
    /// where `pgbackrest info --set LABEL` shows it.
    #[command(flatten)]
    pub(super) pgbackrest: crate::backups::pgbackrest::PgbackrestArgs,
    /// The pgBackRest set to record [default: the stanza's newest].
    #[arg(long, value_name = "LABEL", requires = "pgbackrest_stanza", value_parser = crate::backups::pgbackrest::label)]
    pub(super) pgbackrest_set: Option<String>,
    /// Record a Barman backup of this server (its id, end LSN and end
    /// time).
    #[command(flatten)]
    pub(super) barman: crate::backups::barman::BarmanArgs,
    /// The Barman backup to record [default: the server's newest].
    #[arg(long, value_name = "ID", requires = "barman_server", value_parser = crate::backups::barman::backup_id)]
    pub(super) barman_backup: Option<String>,
    #[command(flatten)]
    pub(super) log_key: crate::trust::LogKey,
}

/// The tag written beside a snapshot: which artifact it goes with.
#[derive(Serialize)]
struct SnapshotTag {
    snapshot: String,
    snapshot_sha256: String,
    env: String,
    at: String,
    release_id: String,
    digest: String,
    pin_seq: u64,
    /// The log index of the snapshot entry.
    log_index: u64,
}

#[derive(Serialize)]
struct Tagged {
    #[serde(flatten)]
    recorded: super::evidence::Shown,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag_file: Option<String>,
    /// The tag written beside the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<SnapshotTag>,
}

/// Where the tag of the snapshot file `file` goes: `FILE.stackpin.json`.
fn tag_path(file: &Path) -> PathBuf {
    let mut path = file.as_os_str().to_owned();
    path.push(".stackpin.json");
    PathBuf::from(path)
}

/// `stackpin snapshot-tag`: records a backup in the log, paired by the
/// registry with the artifact live at its instant, and beside a snapshot
/// file a tag naming that artifact, so the two can be restored together
/// (`stackpin fetch --digest <digest>` brings the artifact back).
pub async fn snapshot_tag(
    args: &SnapshotTagArgs,
    server: &crate::client::Connection,
    state: Option<&std::path::Path>,
    format: Format,
) -> Outcome {
    if args.pgbackrest.pgbackrest_stanza.is_some() || args.barman.barman_server.is_some() {
        return super::backup_tag::tag(args, server, state, format).await;
    }
    let (size, sha256) = match &args.file {
        Some(path) => {
            let len = std::fs::metadata(path)
                .map_err(|e| Failure::invalid(format!("reading {}: {e}", path.display())))?
                .len();
            let (_, sha256) = crate::files::hash_file(path)
                .await
                .map_err(|e| Failure::invalid(format!("reading {}: {e}", path.display())))?;
            (Some(len), Some(sha256))
        }
        None => (None, None),
    };
    let location = match (&args.location, &args.file) {
        (Some(l), _) => l.clone(),
        (None, Some(path)) => std::path::absolute(path)
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string(),
        (None, None) => {
            unreachable!("clap requires --file, --location, --pgbackrest-stanza or --barman-server")
        }
    };
    let driver = args.driver.unwrap_or(if args.file.is_some() {
        stackpin_core::entry::Driver::Sqlite
    } else {
        stackpin_core::entry::Driver::Other
    });
    let message = pb::RecordSnapshotRequest {
        env: args.env.to_string(),
        driver: driver.to_string(),
        location,
        db_time: args.at.map(crate::view::wire_time),
        db_position: args
            .position
            .position()
            .map(crate::cmd::pins::wire_position),
        size,
        sha256: sha256.map(|d| d.to_string()).unwrap_or_default(),
        request_id: String::new(),
    };
    // The tag beside the snapshot must be writable before the entry is
    // recorded: a retry after a failed write would record the backup twice.
    if let Some(file) = &args.file {
        crate::files::writable(&tag_path(file))?;
    }
    let recorded = super::evidence::record_snapshot(server, state, &args.log_key, message).await?;
    let stackpin_core::entry::Entry::Snapshot(entry) = &recorded.entry else {
        return Err(Failure::verify(
            "the registry recorded another kind of entry",
        ));
    };
    let (tag_file, tag) = match (&args.file, sha256) {
        (Some(file), Some(sha)) => {
            let tag = SnapshotTag {
                snapshot: file.display().to_string(),
                snapshot_sha256: sha.to_string(),
                env: entry.env.to_string(),
                at: entry.db_time.to_string(),
                release_id: entry.live.release_id.to_string(),
                digest: entry.live.digest.to_string(),
                pin_seq: entry.live.seq,
                log_index: recorded.log_index,
            };
            let path = tag_path(file);
            let json = serde_json::to_vec_pretty(&tag).context("encoding the tag")?;
            write_atomic(&path, &json)?;
            (Some(path.display().to_string()), Some(tag))
        }
        _ => (None, None),
    };
    let line = super::evidence::snapshot_line(entry);
    let out = Tagged {
        recorded,
        tag_file,
        tag,
    };
    format.emit(&out, || {
        let mut text = format!(
            "recorded {line}\nlog index  {} ({})\n",
            out.recorded.log_index,
            super::evidence::checked(&out.recorded)
        );
        if let Some(f) = &out.tag_file {
            text.push_str(&format!("wrote {f}\n"));
        }
        text
    });
    Ok(())
}
