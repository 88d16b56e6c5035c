//! `stackpin snapshot-tag` and `snapshot list`: a backup recorded in the
//! log, paired with the artifact live at its instant, and the backups
//! recorded for an environment.

use std::collections::BTreeMap;
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
#[command(group(clap::ArgGroup::new("backup").required(true).multiple(true).args(["file", "location", "pgbackrest_stanza"])))]
pub struct SnapshotTagArgs {
    /// The environment whose live artifact the snapshot goes with.
    #[arg(long, value_parser = crate::parse::<stackpin_core::ids::EnvName>)]
    env: stackpin_core::ids::EnvName,
    /// A database snapshot file (e.g. made with `VACUUM INTO`): its size
    /// and sha256 are recorded, and FILE.stackpin.json written beside it.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Where the backup is, as recorded (a URL or path) [default: the
    /// --file's absolute path].
    #[arg(long, value_name = "URL")]
    location: Option<String>,
    /// How the backup was made: sqlite, postgresql, litestream, pgbackrest, other
    /// [default: sqlite with --file, else other].
    #[arg(long, value_parser = crate::parse::<stackpin_core::entry::Driver>)]
    driver: Option<stackpin_core::entry::Driver>,
    /// The database instant the backup restores to (default: now).
    #[arg(long, value_parser = crate::parse_time)]
    at: Option<stackpin_core::time::Timestamp>,
    #[command(flatten)]
    position: crate::cmd::pins::PositionArgs,
    /// Record a pgBackRest backup set of this stanza (its label, stop LSN
    /// and stop time), and write the pairing into the set's annotations,
    /// where `pgbackrest info --set LABEL` shows it.
    #[command(flatten)]
    pgbackrest: crate::pgbackrest::PgbackrestArgs,
    /// The pgBackRest set to record [default: the stanza's newest].
    #[arg(long, value_name = "LABEL", requires = "pgbackrest_stanza", value_parser = crate::pgbackrest::label)]
    pgbackrest_set: Option<String>,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
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
    if let Some(tool) = args.pgbackrest.tool() {
        return pgbackrest_tag(args, &tool, server, state, format).await;
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
        (None, None) => unreachable!("clap requires --file, --location or --pgbackrest-stanza"),
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

/// The annotations stackpin writes into a pgBackRest set.
const PAIRED: [&str; 4] = [
    "stackpin-env",
    "stackpin-release",
    "stackpin-digest",
    "stackpin-log-index",
];

/// `snapshot-tag --pgbackrest-stanza`: the set's stop LSN and stop time
/// recorded as the snapshot's position and instant, then the pairing the
/// registry proved written into the set's annotations.
async fn pgbackrest_tag(
    args: &SnapshotTagArgs,
    tool: &crate::pgbackrest::PgBackRest,
    server: &crate::client::Connection,
    state: Option<&std::path::Path>,
    format: Format,
) -> Outcome {
    if args.file.is_some() || args.location.is_some() {
        return Err(Failure::invalid(
            "--pgbackrest-stanza records a pgBackRest set, which is its own location: drop \
             --file and --location",
        ));
    }
    if args.at.is_some() || args.position.position().is_some() {
        return Err(Failure::invalid(
            "a pgBackRest set restores to its own stop time and LSN, which are recorded: drop \
             --at and the --db-* position",
        ));
    }
    if args
        .driver
        .is_some_and(|d| d != stackpin_core::entry::Driver::Pgbackrest)
    {
        return Err(Failure::invalid(
            "--pgbackrest-stanza records the driver pgbackrest: drop --driver",
        ));
    }
    if crate::cmd::drill::is_root() {
        return Err(Failure::invalid(
            "pgBackRest's repository belongs to the user that runs pgbackrest (postgres): an \
             annotation written as root would leave files it cannot read; run snapshot-tag as \
             that user (nothing was recorded)",
        ));
    }
    let sets = tool.sets().await.map_err(Failure::invalid)?;
    let set = match &args.pgbackrest_set {
        Some(label) => sets.iter().find(|s| &s.label == label).ok_or_else(|| {
            Failure::new(
                crate::exit::NOT_FOUND,
                anyhow::anyhow!(
                    "stanza {} has no set {label}; its sets: {}",
                    tool.stanza,
                    sets.iter()
                        .map(|s| s.label.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?,
        None => sets
            .iter()
            .rev()
            .find(|s| s.error != Some(true))
            .ok_or_else(|| {
                Failure::invalid(format!("stanza {} has no good backup set", tool.stanza))
            })?,
    };
    if set.error == Some(true) {
        return Err(Failure::invalid(format!(
            "pgBackRest marks set {} as having errors: it is no backup to pair a release with",
            set.label
        )));
    }
    crate::pgbackrest::label(&set.label).map_err(Failure::invalid)?;
    if let Some(index) = set
        .annotation
        .as_ref()
        .and_then(|a| a.get("stackpin-log-index"))
    {
        return Err(Failure::invalid(format!(
            "set {} is already recorded (its annotation stackpin-log-index is {index}; `stackpin \
             snapshot list --env {}` shows it): nothing recorded twice",
            set.label, args.env
        )));
    }
    let lsn = set.stop_lsn().map_err(Failure::invalid)?;
    let stop = set.stop_time().map_err(Failure::invalid)?;
    let location = crate::pgbackrest::SetLocation {
        stanza: tool.stanza.clone(),
        repo: set.database.repo_key,
        label: set.label.clone(),
    };
    let message = pb::RecordSnapshotRequest {
        env: args.env.to_string(),
        driver: stackpin_core::entry::Driver::Pgbackrest.to_string(),
        location: location.to_string(),
        db_time: Some(crate::view::wire_time(stop)),
        db_position: Some(crate::cmd::pins::wire_position(
            &stackpin_core::position::DbPosition::PostgresLsn {
                lsn: lsn.to_string(),
            },
        )),
        size: None,
        sha256: String::new(),
        request_id: String::new(),
    };
    let recorded = super::evidence::record_snapshot(server, state, &args.log_key, message).await?;
    let stackpin_core::entry::Entry::Snapshot(entry) = &recorded.entry else {
        return Err(Failure::verify(
            "the registry recorded another kind of entry",
        ));
    };
    let pairs: Vec<(&str, String)> = PAIRED
        .into_iter()
        .zip([
            entry.env.to_string(),
            entry.live.release_id.to_string(),
            entry.live.digest.to_string(),
            recorded.log_index.to_string(),
        ])
        .collect();
    let annotated = tool.annotate(&set.label, &pairs).await;
    let line = super::evidence::snapshot_line(entry);
    #[derive(Serialize)]
    struct PgbackrestTagged<'a> {
        #[serde(flatten)]
        recorded: &'a super::evidence::Shown,
        /// The annotations written into the pgBackRest set.
        annotations: BTreeMap<&'a str, &'a str>,
    }
    let annotate_command = format!(
        "pgbackrest --stanza={} annotate --set={} {}",
        tool.stanza,
        set.label,
        pairs
            .iter()
            .map(|(k, v)| format!("--annotation={k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Err(why) = annotated {
        return Err(Failure::new(
            crate::exit::FAILURE,
            anyhow::anyhow!(
                "recorded {line} as log entry {}, but writing the pairing into pgBackRest \
                 failed: {why}; do not tag the set again: write the annotation with\n  \
                 {annotate_command}",
                recorded.log_index
            ),
        ));
    }
    let out = PgbackrestTagged {
        recorded: &recorded,
        annotations: pairs.iter().map(|(k, v)| (*k, v.as_str())).collect(),
    };
    format.emit(&out, || {
        format!(
            "recorded {line}\nlog index  {} ({})\nannotated pgBackRest {} set {} of stanza {} \
             (`pgbackrest --stanza={} info --set={}` shows it)\n",
            recorded.log_index,
            super::evidence::checked(&recorded),
            set.kind,
            set.label,
            tool.stanza,
            tool.stanza,
            set.label
        )
    });
    Ok(())
}
