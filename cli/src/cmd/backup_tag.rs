//! `snapshot-tag --pgbackrest-stanza` and `--barman-server`: a backup
//! tool's backup recorded as a snapshot, its end LSN as the position and
//! its end time as the instant, so the registry pairs it with the release
//! live then. pgBackRest also gets the pairing written into the set's own
//! annotations; Barman 3.4 keeps none, so there the log alone holds it.
//!
//! The write's request id is derived from the backup (unless
//! `--request-id` is given), so tagging the same backup twice records it
//! once: the second answer is the first entry, `replayed`.

use std::collections::BTreeMap;

use serde::Serialize;
use stackpin_core::entry::{Driver, Entry};
use stackpin_core::position::DbPosition;
use stackpin_proto::v1 as pb;

use super::evidence::{Shown, checked, record_snapshot, snapshot_line};
use super::snapshot::SnapshotTagArgs;
use crate::backups::{Set, barman, pgbackrest};
use crate::exit::{Failure, Outcome};
use crate::view::Format;

/// The annotations stackpin writes into a pgBackRest set.
const PAIRED: [&str; 4] = [
    "stackpin-env",
    "stackpin-release",
    "stackpin-digest",
    "stackpin-log-index",
];

enum Tool {
    Pgbackrest(pgbackrest::PgBackRest),
    Barman(barman::Barman),
}

#[derive(Serialize)]
struct Tagged<'a> {
    #[serde(flatten)]
    recorded: &'a Shown,
    /// The annotations written into the pgBackRest set.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, &'a str>,
}

pub async fn tag(
    args: &SnapshotTagArgs,
    server: &crate::client::Connection,
    state: Option<&std::path::Path>,
    format: Format,
) -> Outcome {
    let (tool, driver) = match (args.pgbackrest.tool(), args.barman.tool()) {
        (Some(p), None) => (Tool::Pgbackrest(p), Driver::Pgbackrest),
        (None, Some(b)) => (Tool::Barman(b), Driver::Barman),
        _ => {
            return Err(Failure::invalid(
                "name one backup tool: --pgbackrest-stanza or --barman-server",
            ));
        }
    };
    if args.file.is_some() || args.location.is_some() {
        return Err(Failure::invalid(format!(
            "a {driver} backup is its own location: drop --file and --location"
        )));
    }
    if args.at.is_some() || args.position.position().is_some() {
        return Err(Failure::invalid(format!(
            "a {driver} backup restores to its own end time and LSN, which are recorded: drop \
             --at and the --db-* position"
        )));
    }
    if args.driver.is_some_and(|d| d != driver) {
        return Err(Failure::invalid(format!(
            "this records the driver {driver}: drop --driver"
        )));
    }
    let (set, location) = match &tool {
        Tool::Pgbackrest(tool) => {
            if crate::cmd::drill::is_root() {
                return Err(Failure::invalid(
                    "pgBackRest's repository belongs to the user that runs pgbackrest \
                     (postgres): an annotation written as root would leave files it cannot \
                     read; run snapshot-tag as that user (nothing was recorded)",
                ));
            }
            let sets = tool.sets().await.map_err(Failure::invalid)?;
            let set = pick(&sets, args.pgbackrest_set.as_deref(), &tool.stanza)?;
            if let Some(index) = set.annotations.get("stackpin-log-index") {
                return Err(Failure::invalid(format!(
                    "set {} is already recorded (its annotation stackpin-log-index is {index}; \
                     `stackpin snapshot list --env {}` shows it): nothing recorded twice",
                    set.label, args.env
                )));
            }
            let location = pgbackrest::SetLocation {
                stanza: tool.stanza.clone(),
                repo: set.repo.unwrap_or(1),
                label: set.label.clone(),
            };
            (set.clone(), location.to_string())
        }
        Tool::Barman(tool) => {
            let set = match &args.barman_backup {
                Some(id) => tool.backup(id).await,
                None => tool.latest().await,
            }
            .map_err(Failure::invalid)?;
            if !set.ok {
                return Err(Failure::invalid(format!(
                    "Barman's backup {} is not finished (not DONE): it is no backup to pair a \
                     release with",
                    set.label
                )));
            }
            let location = barman::BackupLocation {
                server: tool.server.clone(),
                backup_id: set.label.clone(),
            };
            (set, location.to_string())
        }
    };
    let message = pb::RecordSnapshotRequest {
        env: args.env.to_string(),
        driver: driver.to_string(),
        location: location.clone(),
        db_time: Some(crate::view::wire_time(set.stop_time)),
        db_position: Some(crate::cmd::pins::wire_position(&DbPosition::PostgresLsn {
            lsn: set.stop_lsn.to_string(),
        })),
        size: None,
        sha256: String::new(),
        request_id: String::new(),
    };
    // One backup, one entry: the request id names the backup.
    let mut connection = server.clone();
    if connection.request_id.is_none() {
        connection.request_id = Some(request_id(&location));
    }
    let recorded = record_snapshot(&connection, state, &args.log_key, message).await?;
    let Entry::Snapshot(entry) = &recorded.entry else {
        return Err(Failure::verify(
            "the registry recorded another kind of entry",
        ));
    };
    let line = snapshot_line(entry);
    let pairs: Vec<(&str, String)> = match &tool {
        Tool::Pgbackrest(_) => PAIRED
            .into_iter()
            .zip([
                entry.env.to_string(),
                entry.live.release_id.to_string(),
                entry.live.digest.to_string(),
                recorded.log_index.to_string(),
            ])
            .collect(),
        Tool::Barman(_) => Vec::new(),
    };
    if let Tool::Pgbackrest(tool) = &tool
        && let Err(why) = tool.annotate(&set.label, &pairs).await
    {
        let command = format!(
            "pgbackrest --stanza={} annotate --set={} {}",
            tool.stanza,
            set.label,
            pairs
                .iter()
                .map(|(k, v)| format!("--annotation={k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        return Err(Failure::new(
            crate::exit::FAILURE,
            anyhow::anyhow!(
                "recorded {line} as log entry {}, but writing the pairing into pgBackRest \
                 failed: {why}; write it with\n  {command}",
                recorded.log_index
            ),
        ));
    }
    let out = Tagged {
        recorded: &recorded,
        annotations: pairs.iter().map(|(k, v)| (*k, v.as_str())).collect(),
    };
    format.emit(&out, || {
        let mut text = format!(
            "{} {line}\nlog index  {} ({})\n",
            if recorded.replayed == Some(true) {
                "already recorded (nothing new written):"
            } else {
                "recorded"
            },
            recorded.log_index,
            checked(&recorded),
        );
        match &tool {
            Tool::Pgbackrest(t) => text.push_str(&format!(
                "annotated pgBackRest {} set {} of stanza {} (`pgbackrest --stanza={} info \
                 --set={}` shows it)\n",
                set.kind, set.label, t.stanza, t.stanza, set.label
            )),
            Tool::Barman(_) => text.push_str(
                "Barman keeps no annotations: `stackpin snapshot list` shows the pairing\n",
            ),
        }
        text
    });
    Ok(())
}

/// The set named by `label`, or the newest good one.
fn pick<'a>(sets: &'a [Set], label: Option<&str>, stanza: &str) -> Outcome<&'a Set> {
    let set =
        match label {
            Some(label) => sets.iter().find(|s| s.label == label).ok_or_else(|| {
                Failure::new(
                    crate::exit::NOT_FOUND,
                    anyhow::anyhow!(
                        "stanza {stanza} has no set {label}; its sets: {}",
                        sets.iter()
                            .map(|s| s.label.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?,
            None => sets.iter().rev().find(|s| s.ok).ok_or_else(|| {
                Failure::invalid(format!("stanza {stanza} has no good backup set"))
            })?,
        };
    if !set.ok {
        return Err(Failure::invalid(format!(
            "pgBackRest marks set {} as having errors: it is no backup to pair a release with",
            set.label
        )));
    }
    Ok(set)
}

/// The request id of a backup's snapshot: its location, as request ids
/// may spell it.
fn request_id(location: &str) -> String {
    location
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
}
