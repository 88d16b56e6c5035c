//! The database side of a restore, for every driver the ObjectOS backup
//! page names: what to restore the database to, as each tool takes it,
//! beside the artifact `restore` proved. The JSON shape (`database` in
//! `restore --output json`) is documented in docs/json.md, "Database
//! targets".
//!
//! Every target is rendered from the query (the instant or position asked
//! for) and from the proved pin (its recorded position), never from a
//! server's convenience field.

use serde::Serialize;
use stackpin_core::position::DbPosition;
use stackpin_core::time::Timestamp;

use crate::backups::{self, Set, Target, barman, pgbackrest};

/// What fills in the printed commands: the operator's names for the
/// backups.
#[derive(clap::Args, Clone)]
pub struct TargetArgs {
    /// The database file, to fill in the printed Litestream command.
    #[arg(long, default_value = "<database>")]
    litestream_db: String,
    /// The Litestream replica URL, to fill in the printed command.
    #[arg(long, default_value = "<replica-url>")]
    litestream_replica: String,
    /// The folder of a `mongodump --oplog`, to fill in the printed
    /// `mongorestore`.
    #[arg(long, value_name = "DIR", default_value = "<dump-folder>")]
    mongo_dump: String,
    /// The Atlas cluster, to fill in the printed point-in-time restore.
    #[arg(long, value_name = "NAME", default_value = "<cluster>")]
    atlas_cluster: String,
    /// The Turso database, to fill in the printed point-in-time restore.
    #[arg(long, value_name = "NAME", default_value = "<database>")]
    turso_db: String,
    /// The PostgreSQL WAL archive folder, to fill in the printed
    /// restore_command.
    #[arg(long, value_name = "DIR", default_value = "/path/to/wal_archive", value_parser = wal_archive)]
    wal_archive: String,
    /// With --pgbackrest-stanza, the `pgbackrest restore` of the target is
    /// printed, naming the backup set it starts from (read here with
    /// `pgbackrest info`).
    #[command(flatten)]
    pub pgbackrest: pgbackrest::PgbackrestArgs,
    /// With --barman-server, the `barman recover` of the target is
    /// printed, naming the backup it starts from (read here with `barman
    /// list-backups`).
    #[command(flatten)]
    pub barman: barman::BarmanArgs,
    /// The folder `barman recover` creates the restored cluster in, to
    /// fill in the printed command.
    #[arg(long, value_name = "DIR", default_value = "<pgdata>")]
    barman_destination: String,
}

impl TargetArgs {
    /// Placeholders everywhere but the WAL archive (a drill's).
    pub fn drill(wal_archive: Option<&std::path::Path>) -> Self {
        Self {
            litestream_db: "<database>".into(),
            litestream_replica: "<replica-url>".into(),
            mongo_dump: "<dump-folder>".into(),
            atlas_cluster: "<cluster>".into(),
            turso_db: "<database>".into(),
            wal_archive: wal_archive.map_or_else(
                || "/path/to/wal_archive".into(),
                |p| p.display().to_string(),
            ),
            pgbackrest: pgbackrest::PgbackrestArgs {
                pgbackrest_stanza: None,
                pgbackrest: "pgbackrest".into(),
            },
            barman: barman::BarmanArgs {
                barman_server: None,
                barman_config: None,
                barman: "barman".into(),
            },
            barman_destination: "<pgdata>".into(),
        }
    }

    /// The backups of the tools named, read beforehand (a restore of the
    /// artifact goes on when they cannot be read, and says why).
    pub async fn backups(&self) -> Backups {
        Backups {
            pgbackrest: match self.pgbackrest.tool() {
                Some(tool) => Some(tool.sets().await),
                None => None,
            },
            barman: match self.barman.tool() {
                Some(tool) => Some(tool.sets().await),
                None => None,
            },
        }
    }
}

/// A backup tool's backups, or why they could not be read; `None` when
/// the tool was not named.
#[derive(Default)]
pub struct Backups {
    pgbackrest: Option<Result<Vec<Set>, String>>,
    barman: Option<Result<Vec<Set>, String>>,
}

/// What a restore asks for.
#[derive(Clone, Debug)]
pub enum Query<'a> {
    Time(Timestamp),
    Position(&'a DbPosition),
}

/// Each driver's target for one query; a driver the query says nothing
/// to is absent.
#[derive(Serialize, Default)]
pub struct Targets {
    /// PostgreSQL recovery settings, to append to postgresql.conf of the
    /// restored base backup (with recovery.signal beside it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgresql: Option<Postgresql>,
    /// The `pgbackrest restore` of the target (with --pgbackrest-stanza).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgbackrest: Option<ToolTarget>,
    /// The `barman recover` of the target (with --barman-server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub barman: Option<ToolTarget>,
    /// The `litestream restore` of the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub litestream: Option<Command>,
    /// A `mongodump --oplog` replayed to the target, and Atlas's
    /// point-in-time restore.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mongodb: Option<Mongodb>,
    /// Turso's point-in-time restore into a new database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turso: Option<Command>,
}

#[derive(Serialize)]
pub struct Postgresql {
    pub settings: Vec<String>,
}

#[derive(Serialize)]
pub struct Command {
    pub command: String,
}

#[derive(Serialize)]
pub struct Mongodb {
    pub mongorestore: String,
    pub atlas: String,
}

/// A backup tool's restore of the target.
#[derive(Serialize)]
pub struct ToolTarget {
    /// The pgBackRest stanza.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stanza: Option<String>,
    /// The Barman server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The backup the recovery starts from: the newest consistent before
    /// the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
    pub command: String,
    /// Why no set is named, when none is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The database target matching the chosen instant or position.
#[derive(Serialize)]
pub struct DbTarget {
    /// The instant to restore the database to, when the query was by time.
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    /// The database position asked for, when the query was by position.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<String>,
    /// The ObjectOS image recorded with the pin: the runtime to start on
    /// the artifact.
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime_image: Option<String>,
    #[serde(flatten)]
    pub targets: Targets,
    /// The position recorded when this artifact went live, and each
    /// driver's target for it: restoring to it gives the database as it
    /// was at that activation.
    #[serde(skip_serializing_if = "Option::is_none")]
    at_activation: Option<Activation>,
}

#[derive(Serialize)]
struct Activation {
    position: String,
    #[serde(flatten)]
    targets: Targets,
}

/// The targets for a restore of `query`, the pin proved live there, and
/// the backup tools' backups (read beforehand, when a tool was named).
pub fn db_target(
    args: &TargetArgs,
    query: &Query<'_>,
    pin: &stackpin_core::entry::PinEntry,
    backups: &Backups,
) -> DbTarget {
    DbTarget {
        time: match query {
            Query::Time(t) => Some(t.to_string()),
            Query::Position(_) => None,
        },
        position: match query {
            Query::Time(_) => None,
            Query::Position(p) => Some(p.to_string()),
        },
        runtime_image: pin.runtime_image.as_ref().map(ToString::to_string),
        targets: targets(args, query, backups),
        at_activation: pin.db_position.as_ref().map(|p| Activation {
            position: p.to_string(),
            targets: targets(args, &Query::Position(p), backups),
        }),
    }
}

fn targets(args: &TargetArgs, query: &Query<'_>, backups: &Backups) -> Targets {
    let (db, replica) = (&args.litestream_db, &args.litestream_replica);
    let (dump, cluster) = (&args.mongo_dump, &args.atlas_cluster);
    let postgres = |target: String| {
        Some(Postgresql {
            settings: postgres_recovery(&args.wal_archive, &target),
        })
    };
    let tools = |target: Option<Target>| {
        let pgbackrest = args.pgbackrest.pgbackrest_stanza.as_ref().map(|stanza| {
            tool_target(target, backups.pgbackrest.as_ref(), |set, t| ToolTarget {
                stanza: Some(stanza.clone()),
                server: None,
                set: set.map(str::to_owned),
                command: pgbackrest::restore_command(stanza, set, t),
                warning: None,
            })
        });
        let barman = args.barman.barman_server.as_ref().map(|server| {
            tool_target(target, backups.barman.as_ref(), |set, t| ToolTarget {
                stanza: None,
                server: Some(server.clone()),
                set: set.map(str::to_owned),
                command: barman::recover_command(server, set, t, &args.barman_destination),
                warning: None,
            })
        });
        (pgbackrest, barman)
    };
    let litestream = |how: String| {
        Some(Command {
            command: format!("litestream restore {how} -o {db} {replica}"),
        })
    };
    match query {
        Query::Time(at) => {
            let t = at.to_string();
            // Oplog timestamps count whole seconds: everything up to the
            // end of T's second is replayed (pin with --db-oplog-ts for an
            // exact pair).
            let secs = at.to_parts().0;
            let turso = &args.turso_db;
            let (pgbackrest, barman) = tools(Some(Target::Time(*at)));
            Targets {
                postgresql: postgres(format!(
                    "recovery_target_time = '{}'",
                    backups::postgres_time(*at)
                )),
                pgbackrest,
                barman,
                litestream: litestream(format!("-timestamp {t}")),
                mongodb: Some(Mongodb {
                    mongorestore: format!(
                        "mongorestore --oplogReplay --oplogLimit={}:0 {dump}",
                        secs.saturating_add(1)
                    ),
                    atlas: format!(
                        "atlas backups restores start pointInTime --clusterName {cluster} \
                         --pointInTimeUTCSeconds {secs} --targetClusterName {cluster}"
                    ),
                }),
                turso: Some(Command {
                    command: format!(
                        "turso db create {turso}-restored --from-db {turso} --timestamp {t}"
                    ),
                }),
            }
        }
        Query::Position(DbPosition::PostgresLsn { lsn }) => {
            let (pgbackrest, barman) = tools(lsn.parse().ok().map(Target::Lsn));
            Targets {
                postgresql: postgres(format!("recovery_target_lsn = '{lsn}'")),
                pgbackrest,
                barman,
                ..Targets::default()
            }
        }
        Query::Position(DbPosition::RestorePoint { name }) => Targets {
            postgresql: postgres(format!("recovery_target_name = '{name}'")),
            ..Targets::default()
        },
        Query::Position(DbPosition::LitestreamTxid { txid }) => Targets {
            litestream: litestream(format!("-txid {txid}")),
            ..Targets::default()
        },
        Query::Position(DbPosition::MongoOplogTs { ts }) => Targets {
            mongodb: mongo_to(ts, dump, cluster),
            ..Targets::default()
        },
    }
}

/// A backup tool's restore of `target`, from the backup the one rule
/// ([`backups::choose`]) picks among those read (`make` renders it).
fn tool_target(
    target: Option<Target>,
    sets: Option<&Result<Vec<Set>, String>>,
    make: impl Fn(Option<&str>, Target) -> ToolTarget,
) -> ToolTarget {
    let Some(target) = target else {
        let mut t = make(None, Target::Immediate);
        t.command = String::new();
        t.warning = Some("the position is no LSN a backup tool can recover to".into());
        return t;
    };
    let (set, warning) = match sets {
        Some(Ok(sets)) => match backups::choose(sets, target) {
            Some(s) => (Some(s.label.as_str()), None),
            None => (
                None,
                Some(
                    "no backup is consistent before the target: none of them can recover to it"
                        .to_owned(),
                ),
            ),
        },
        Some(Err(why)) => (
            None,
            Some(format!(
                "the backups could not be read here ({why}): name the newest one that ended \
                 before the target"
            )),
        ),
        None => (None, None),
    };
    let mut t = make(set, target);
    t.warning = warning;
    t
}

/// MongoDB restores that replay the oplog through `ts` and no further:
/// `--oplogLimit` excludes its own timestamp, so it names the next one.
fn mongo_to(ts: &str, dump: &str, cluster: &str) -> Option<Mongodb> {
    let t = ts.parse::<stackpin_core::position::OplogTs>().ok()?;
    let next = stackpin_core::position::OplogTs::from_value(t.value().saturating_add(1));
    Some(Mongodb {
        mongorestore: format!(
            "mongorestore --oplogReplay --oplogLimit={}:{} {dump}",
            next.seconds, next.increment
        ),
        atlas: format!(
            "atlas backups restores start pointInTime --clusterName {cluster} --oplogTs {} \
             --oplogInc {} --targetClusterName {cluster}",
            t.seconds, t.increment
        ),
    })
}

/// A WAL archive folder as `restore_command` can name it: absolute (the
/// command runs in the data folder), and free of the quotes, `$`, `\` and
/// backquotes the setting and its shell would read.
///
/// # Errors
/// A message naming what is wrong.
pub fn wal_archive(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!(
            "{text:?} is not an absolute path: restore_command runs in the restored data \
             folder, so the archive must be named from /"
        ));
    }
    if let Some(c) = text
        .chars()
        .find(|c| c.is_control() || matches!(c, '\'' | '"' | '\\' | '$' | '`'))
    {
        return Err(format!(
            "{text:?} holds {c:?}, which restore_command cannot quote; use a path without it \
             (a symbolic link to the archive will do)"
        ));
    }
    Ok(text.to_owned())
}

/// The settings of a PostgreSQL point-in-time recovery to `target`, as
/// they can be pasted into postgresql.conf (with recovery.signal): a
/// recovery needs restore_command, and a restored copy must not archive
/// into the primary's archive until it is promoted on purpose.
fn postgres_recovery(archive: &str, target: &str) -> Vec<String> {
    vec![
        format!("restore_command = 'cp \"{archive}/%f\" \"%p\"'"),
        target.to_owned(),
        "recovery_target_action = 'promote'".to_owned(),
        "# a restored copy must not write into the primary's WAL archive: keep archiving off \
         until it becomes the primary on purpose"
            .to_owned(),
        "archive_mode = off".to_owned(),
    ]
}

impl Targets {
    fn text(&self, indent: &str, out: &mut String) {
        for (name, tool) in [("pgBackRest:", &self.pgbackrest), ("Barman:", &self.barman)] {
            if let Some(p) = tool {
                out.push_str(&format!("{indent}{name:<12} {}\n", p.command));
                if let Some(n) = &p.warning {
                    out.push_str(&format!("{indent}             ({n})\n"));
                }
            }
        }
        if let Some(l) = &self.litestream {
            out.push_str(&format!("{indent}Litestream:  {}\n", l.command));
        }
        if let Some(t) = &self.turso {
            out.push_str(&format!("{indent}Turso:       {}\n", t.command));
        }
        if let Some(m) = &self.mongodb {
            out.push_str(&format!(
                "{indent}MongoDB (a dump with --oplog, or Atlas point-in-time restore):\n"
            ));
            out.push_str(&format!(
                "{indent}  {}\n{indent}  {}\n",
                m.mongorestore, m.atlas
            ));
        }
        if let Some(p) = &self.postgresql {
            out.push_str(&format!(
                "{indent}PostgreSQL (append to postgresql.conf of the restored base backup, and \
                 create recovery.signal beside it):\n"
            ));
            for line in &p.settings {
                out.push_str(&format!("{indent}  {line}\n"));
            }
        }
    }
}

impl DbTarget {
    /// As `restore` prints it, in the page's order: the database, then
    /// the artifact, then ObjectOS.
    pub fn text(&self) -> String {
        let mut out = String::from("database target:\n");
        let runtime = self.runtime_image.as_deref().map_or_else(
            || "ObjectOS (the pin records no runtime image)".to_owned(),
            |i| format!("ObjectOS {i}"),
        );
        let to = self
            .time
            .as_deref()
            .or(self.position.as_deref())
            .map(|t| format!(" to {t}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  restore the database{to}, then start {runtime} on this artifact\n"
        ));
        self.targets.text("  ", &mut out);
        if let Some(a) = &self.at_activation {
            out.push_str(&format!(
                "  recorded when this artifact went live ({}; the database as of its \
                 activation):\n",
                a.position
            ));
            a.targets.text("    ", &mut out);
        }
        out
    }
}
