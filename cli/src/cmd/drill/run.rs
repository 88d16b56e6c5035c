//! `stackpin drill run`: restores a backup and the artifact live at its
//! instant into a temporary folder, checks them, times every step, records
//! the drill and cleans up.
//!
//! Long because it is one procedure, step by step, whose steps share the
//! drill's timings, checks and temporary folder; the database-specific
//! parts are in `postgres.rs` and `litestream.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use stackpin_core::entry::{DrillCheck, DrillStep, Driver, Entry};
use stackpin_core::ids::EnvName;
use stackpin_core::posture::human;
use stackpin_core::time::Timestamp;

use super::litestream::{copy_snapshot, litestream_restore, sqlite_first_value};
use super::postgres::{Cluster, ToolRestore, is_root, print_postgresql};
use super::{Drill, millis, record_drill};
use crate::cmd::evidence::{Shown, checked, drill_line, snapshot_entry};
use crate::exit::{Failure, Outcome};
use crate::files::copy_tree;
use crate::view::Format;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The environment whose restore to drill.
    #[arg(long, value_parser = crate::parse::<EnvName>)]
    pub(super) env: EnvName,
    /// The database instant to restore to [default: the snapshot's, with
    /// --snapshot].
    #[arg(long, value_parser = crate::parse_time)]
    pub(super) at: Option<Timestamp>,
    /// Drill a recorded snapshot: its log index (see `stackpin snapshot
    /// list`). Its location and instant are used unless given.
    #[arg(long)]
    pub(super) snapshot: Option<u64>,
    /// A Litestream replica URL to restore from (`litestream restore
    /// -timestamp`).
    #[arg(long, value_name = "URL", conflicts_with = "file")]
    pub(super) replica: Option<String>,
    /// A SQLite snapshot file to restore (copied, never opened in place).
    #[arg(long, value_name = "PATH")]
    pub(super) file: Option<PathBuf>,
    /// A query to run on the restored database (repeatable). It passes
    /// when it returns a row whose first value is not NULL, 0, f (false)
    /// or empty;
    /// `QUERY => VALUE` passes when that value is VALUE. `{release_id}`
    /// and `{digest}` stand for the artifact restored.
    #[arg(long, value_name = "QUERY")]
    pub(super) check: Vec<String>,
    /// A query returning the newest data's instant (RFC 3339) in the
    /// restored database: the drill's target minus it is the measured RPO.
    #[arg(long, value_name = "QUERY")]
    pub(super) rpo_query: Option<String>,
    /// A PostgreSQL base backup folder (`pg_basebackup -D`) to recover a
    /// copy of, with --wal-archive, on a unix socket in a temporary folder.
    /// PostgreSQL refuses root: run the drill as an unprivileged user.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["replica", "file"])]
    pub(super) pg_base: Option<PathBuf>,
    /// The folder the WAL was archived to (the `restore_command` source).
    #[arg(long, value_name = "DIR")]
    pub(super) wal_archive: Option<PathBuf>,
    /// Where the PostgreSQL programs are [default: `pg_config --bindir`,
    /// else PATH].
    #[arg(long, value_name = "DIR")]
    pub(super) pg_bin: Option<PathBuf>,
    /// Restore the Litestream replica to this TXID (`litestream restore
    /// -txid`) rather than to the instant [default: the snapshot's TXID,
    /// when it recorded one].
    #[arg(long, value_parser = crate::parse_with(stackpin_core::position::DbPosition::txid))]
    pub(super) litestream_txid: Option<stackpin_core::position::DbPosition>,
    /// Print the PostgreSQL drill for --at as commands to run where the
    /// base backup and the WAL archive are, with the exact recovery
    /// settings and the `stackpin drill record` to finish with; nothing is
    /// restored or recorded.
    #[arg(long, conflicts_with_all = ["replica", "file"])]
    pub(super) print_postgresql: bool,
    /// Drill a pgBackRest backup of this stanza: pgBackRest restores the
    /// newest set consistent before --at into a temporary folder (with
    /// archiving off), PostgreSQL recovers it, then the checks run.
    #[command(flatten)]
    pub(super) pgbackrest: crate::backups::pgbackrest::PgbackrestArgs,
    /// Drill a Barman backup of this server: `barman recover` of the newest
    /// backup consistent before --at into a temporary folder, recovered by
    /// PostgreSQL there, then the checks.
    #[command(flatten)]
    pub(super) barman: crate::backups::barman::BarmanArgs,
    /// The litestream binary.
    #[arg(long, env = "STACKPIN_LITESTREAM", default_value = "litestream")]
    pub(super) litestream: PathBuf,
    /// Publisher keys the restored artifact's signature is checked against.
    #[command(flatten)]
    pub(super) trusted_keys: crate::trust::TrustedKeysArg,
    /// Keep the restored database and artifact in this folder instead of
    /// removing them.
    #[arg(long, value_name = "DIR")]
    pub(super) keep: Option<PathBuf>,
    #[command(flatten)]
    pub(super) log_key: crate::trust::LogKey,
}

/// What `drill run` shows.
#[derive(Serialize)]
struct Ran {
    #[serde(flatten)]
    shown: Shown,
    #[serde(skip_serializing_if = "Option::is_none")]
    kept: Option<String>,
}

/// Times the steps of a drill and shows them as they run.
struct Steps {
    steps: Vec<DrillStep>,
    total: usize,
}

impl Steps {
    fn begin(&self, name: &str) -> Instant {
        eprintln!("drill [{}/{}] {name} ...", self.steps.len() + 1, self.total);
        Instant::now()
    }

    fn end(&mut self, name: &str, started: Instant, ok: bool) {
        let took = started.elapsed();
        eprintln!(
            "drill [{}/{}] {name}: {} in {}",
            self.steps.len() + 1,
            self.total,
            if ok { "done" } else { "FAILED" },
            human(took)
        );
        self.steps.push(DrillStep {
            name: name.to_owned(),
            millis: millis(took),
        });
    }
}

/// Where the database comes from.
enum Source {
    Litestream(String),
    /// The commands of a PostgreSQL drill, printed (base: where the base
    /// backup is, when known).
    PostgresPlan(Option<PathBuf>),
    File(PathBuf),
    Postgres {
        base: PathBuf,
        archive: PathBuf,
    },
    /// A pgBackRest set, restored by pgBackRest (set: the recorded
    /// snapshot's; otherwise chosen for the target).
    Pgbackrest {
        tool: crate::backups::pgbackrest::PgBackRest,
        set: Option<crate::backups::pgbackrest::SetLocation>,
    },
    /// A Barman backup, recovered by Barman (backup: the recorded
    /// snapshot's; otherwise chosen for the target).
    Barman {
        tool: crate::backups::barman::Barman,
        backup: Option<String>,
    },
}

impl Source {
    fn driver(&self) -> Driver {
        match self {
            Source::Litestream(_) => Driver::Litestream,
            Source::File(_) => Driver::Sqlite,
            Source::Postgres { .. } | Source::PostgresPlan(_) => Driver::Postgresql,
            Source::Pgbackrest { .. } => Driver::Pgbackrest,
            Source::Barman { .. } => Driver::Barman,
        }
    }
}

/// The restored database, as the checks query it.
enum Db {
    Sqlite(PathBuf),
    /// A recovered PostgreSQL cluster on a unix socket in the work folder.
    Postgres(Cluster),
}

impl Db {
    /// The first value of the first row `q` returns (`None` for NULL).
    fn first_value(&self, q: &str) -> Result<Option<String>, String> {
        match self {
            Db::Sqlite(path) => sqlite_first_value(path, q),
            Db::Postgres(c) => c.first_value(q),
        }
    }

    /// Runs `q`; whether it passes and what it returned.
    fn check(&self, q: &str, expect: Option<&str>) -> (bool, String) {
        match (self.first_value(q), expect) {
            (Err(e), _) => (false, e),
            (Ok(v), Some(want)) => {
                let got = v.unwrap_or_else(|| "NULL".into());
                (got == want, format!("{got} (expected {want})"))
            }
            (Ok(None), None) => (false, "NULL".into()),
            (Ok(Some(v)), None) => (v != "0" && !v.is_empty() && v != "f", v),
        }
    }
}

/// Refuses (exit 7, nothing recorded) a token that may not read: the
/// restore a drill makes would fail for the client, not for the backup.
async fn may_read(server: &crate::client::Connection) -> Outcome {
    let mut client = crate::client::connect(server).await?;
    match client
        .get_checkpoint(stackpin_proto::v1::GetCheckpointRequest {})
        .await
    {
        Ok(_) => Ok(()),
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            ) =>
        {
            Err(Failure::new(
                crate::exit::AUTH,
                anyhow::anyhow!(
                    "a drill restores, which needs the read role, and the registry refused this \
                     client: {}; nothing was run or recorded",
                    s.message()
                ),
            ))
        }
        Err(s) => Err(s.into()),
    }
}

pub(super) async fn run(
    args: &RunArgs,
    server: &crate::client::Connection,
    state: Option<&Path>,
    format: Format,
) -> Outcome {
    // Everything a user can get wrong is refused before anything runs:
    // the inputs, and whether the token may read (restore) at all.
    args.trusted_keys.load()?;
    crate::trust::log_key(&args.log_key)?;
    may_read(server).await?;
    let checks: Vec<(String, String, Option<String>)> = args
        .check
        .iter()
        .map(|c| {
            let (query, expect) = match c.rsplit_once(" => ") {
                Some((q, v)) => (q.trim().to_owned(), Some(v.trim().to_owned())),
                None => (c.trim().to_owned(), None),
            };
            if query.is_empty() {
                return Err(Failure::invalid(format!("--check {c:?} has no query")));
            }
            Ok((c.clone(), query, expect))
        })
        .collect::<Outcome<_>>()?;
    let snapshot = match args.snapshot {
        None => None,
        Some(index) => Some(snapshot_entry(server, state, &args.log_key, index, &args.env).await?),
    };
    let snapshot_base = snapshot
        .as_ref()
        .filter(|s| s.driver == Driver::Postgresql)
        .map(|s| PathBuf::from(&s.location));
    let stanza_given = args.pgbackrest.pgbackrest_stanza.is_some();
    let barman_given = args.barman.barman_server.is_some();
    if stanza_given && barman_given {
        return Err(Failure::invalid(
            "name one backup tool: --pgbackrest-stanza or --barman-server",
        ));
    }
    if (stanza_given || barman_given)
        && (args.replica.is_some()
            || args.file.is_some()
            || args.pg_base.is_some()
            || args.print_postgresql
            || snapshot.is_some())
    {
        return Err(Failure::invalid(
            "--pgbackrest-stanza and --barman-server say what to restore: drop --replica, \
             --file, --pg-base, --print-postgresql and --snapshot (a recorded pgBackRest or \
             Barman snapshot names its stanza or server)",
        ));
    }
    let source = match (&args.replica, &args.file, &args.pg_base, &snapshot) {
        _ if args.print_postgresql => Source::PostgresPlan(args.pg_base.clone().or(snapshot_base)),
        _ if barman_given => Source::Barman {
            tool: args
                .barman
                .tool()
                .ok_or_else(|| Failure::invalid("no server"))?,
            backup: None,
        },
        _ if stanza_given => Source::Pgbackrest {
            tool: args
                .pgbackrest
                .tool()
                .ok_or_else(|| Failure::invalid("no stanza"))?,
            set: None,
        },
        (Some(url), _, _, _) => Source::Litestream(url.clone()),
        (None, Some(path), _, _) => Source::File(path.clone()),
        (None, None, Some(base), _) => {
            let Some(archive) = &args.wal_archive else {
                return Err(Failure::invalid(
                    "--pg-base needs --wal-archive: the folder the WAL was archived to \
                     (or --print-postgresql for the commands to run where they are)",
                ));
            };
            Source::Postgres {
                base: base.clone(),
                archive: archive_dir(archive)?,
            }
        }
        (None, None, None, Some(s)) => match s.driver {
            Driver::Litestream => Source::Litestream(s.location.clone()),
            Driver::Sqlite => Source::File(PathBuf::from(&s.location)),
            Driver::Postgresql => match &args.wal_archive {
                Some(archive) => Source::Postgres {
                    base: PathBuf::from(&s.location),
                    archive: archive_dir(archive)?,
                },
                None => {
                    return Err(Failure::invalid(format!(
                        "snapshot {} is a PostgreSQL base backup: pass --wal-archive DIR too, \
                         or --print-postgresql for the commands to run where it is",
                        args.snapshot.unwrap_or_default()
                    )));
                }
            },
            Driver::Pgbackrest => {
                let at: crate::backups::pgbackrest::SetLocation =
                    s.location.parse().map_err(|e| {
                        Failure::invalid(format!(
                            "snapshot {}: {e}",
                            args.snapshot.unwrap_or_default()
                        ))
                    })?;
                Source::Pgbackrest {
                    tool: crate::backups::pgbackrest::PgBackRest {
                        bin: args.pgbackrest.pgbackrest.clone(),
                        stanza: at.stanza.clone(),
                    },
                    set: Some(at),
                }
            }
            Driver::Barman => {
                let at: crate::backups::barman::BackupLocation =
                    s.location.parse().map_err(|e| {
                        Failure::invalid(format!(
                            "snapshot {}: {e}",
                            args.snapshot.unwrap_or_default()
                        ))
                    })?;
                Source::Barman {
                    tool: crate::backups::barman::Barman {
                        bin: args.barman.barman.clone(),
                        config: args.barman.barman_config.clone(),
                        server: at.server,
                    },
                    backup: Some(at.backup_id),
                }
            }
            Driver::Other => {
                return Err(Failure::invalid(format!(
                    "snapshot {} is an `other` backup, which `drill run` cannot restore; record \
                     a drill done by other means with `stackpin drill record`",
                    args.snapshot.unwrap_or_default()
                )));
            }
        },
        (None, None, None, None) => {
            return Err(Failure::invalid(
                "say what to restore: --replica URL (Litestream), --file PATH (a SQLite \
                 snapshot), --pg-base DIR --wal-archive DIR (PostgreSQL) or --snapshot INDEX \
                 (a recorded snapshot)",
            ));
        }
    };
    let litestream = matches!(source, Source::Litestream(_));
    let postgres = matches!(source, Source::Postgres { .. } | Source::PostgresPlan(_));
    let pg = postgres || matches!(source, Source::Pgbackrest { .. } | Source::Barman { .. });
    if args.litestream_txid.is_some() && !litestream {
        return Err(Failure::invalid(
            "--litestream-txid restores a Litestream replica: drill one (--replica URL, or a \
             recorded Litestream snapshot)",
        ));
    }
    if args.wal_archive.is_some() && !postgres {
        return Err(Failure::invalid(
            "--wal-archive is for a PostgreSQL drill (--pg-base DIR, or a recorded PostgreSQL \
             snapshot)",
        ));
    }
    if let Some(wal) = &args.wal_archive
        && matches!(source, Source::PostgresPlan(_))
    {
        crate::cmd::targets::wal_archive(&wal.to_string_lossy())
            .map_err(|e| Failure::invalid(format!("--wal-archive: {e}")))?;
    }
    if let (Some(at), Some(s)) = (args.at, &snapshot)
        && at != s.db_time
    {
        return Err(Failure::invalid(format!(
            "snapshot {} restores to {}, not --at {at}: drop --at to drill the snapshot, or \
             drop --snapshot to drill another instant",
            args.snapshot.unwrap_or_default(),
            s.db_time
        )));
    }
    if checks.len() > MAX_CHECKS {
        return Err(Failure::invalid(format!(
            "at most {MAX_CHECKS} --check queries in one drill"
        )));
    }
    if let Some(dir) = &args.keep
        && std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
    {
        return Err(Failure::invalid(format!(
            "--keep {}: the folder is not empty; name a new or empty one",
            dir.display()
        )));
    }
    let target = match (args.at, &snapshot, &source) {
        (Some(at), _, _) => at,
        (None, Some(s), _) => s.db_time,
        (None, None, Source::File(_)) => Timestamp::now(),
        (None, None, _) => {
            return Err(Failure::invalid(
                "--at is needed: the instant to restore the database to",
            ));
        }
    };
    if target > Timestamp::now() {
        return Err(Failure::invalid(format!("--at {target} is in the future")));
    }
    if pg && !matches!(source, Source::PostgresPlan(_)) && is_root() {
        return Err(Failure::invalid(
            "PostgreSQL refuses to run as root: run `drill run` as the postgres user (or \
             any unprivileged user that can read the backup)",
        ));
    }
    // The backup a backup tool's drill restores, and how far it recovers:
    // a recorded one to its consistency point, else the one the rule
    // picks for the instant.
    let chosen = |sets: &[crate::backups::Set], whose: &str| {
        let at = crate::backups::Target::Time(target);
        crate::backups::choose(sets, at)
            .map(|s| (s.repo, s.label.clone(), at))
            .ok_or_else(|| {
                Failure::invalid(format!(
                    "no backup of {whose} is consistent before {target} (the oldest ended at \
                     {}): drill a later instant",
                    sets.first()
                        .map_or_else(|| "?".to_owned(), |s| s.stop_time.to_string())
                ))
            })
    };
    let immediate = crate::backups::Target::Immediate;
    let tool_restore = match &source {
        Source::Pgbackrest { tool, set } => {
            let (repo, set, target) = match set {
                Some(s) => (Some(s.repo), s.label.clone(), immediate),
                None => {
                    let sets = tool.sets().await.map_err(Failure::invalid)?;
                    chosen(&sets, &format!("stanza {}", tool.stanza))?
                }
            };
            Some(ToolRestore::Pgbackrest {
                tool: tool.clone(),
                repo,
                set,
                target,
            })
        }
        Source::Barman { tool, backup } => {
            let (backup, target) = match backup {
                Some(id) => (id.clone(), immediate),
                None => {
                    let sets = tool.sets().await.map_err(Failure::invalid)?;
                    let (_, id, at) = chosen(&sets, &format!("Barman server {}", tool.server))?;
                    (id, at)
                }
            };
            Some(ToolRestore::Barman {
                tool: tool.clone(),
                backup,
                target,
            })
        }
        _ => None,
    };
    if let Source::Postgres { base, archive } = &source {
        if is_root() {
            return Err(Failure::invalid(
                "PostgreSQL refuses to run as root: run `drill run` as the postgres user (or \
                 any unprivileged user that can read the base backup and the archive)",
            ));
        }
        for (flag, dir) in [("--pg-base", base), ("--wal-archive", archive)] {
            if !dir.is_dir() {
                return Err(Failure::invalid(format!(
                    "{flag} {}: not a folder",
                    dir.display()
                )));
            }
        }
        if !base.join("PG_VERSION").is_file() {
            return Err(Failure::invalid(format!(
                "--pg-base {}: not a PostgreSQL base backup (no PG_VERSION)",
                base.display()
            )));
        }
    }
    if let Source::PostgresPlan(base) = &source {
        return print_postgresql(args, server, state, target, base.as_deref(), format).await;
    }
    let txid = args
        .litestream_txid
        .as_ref()
        .or_else(|| {
            snapshot
                .as_ref()
                .filter(|s| s.driver == Driver::Litestream)
                .and_then(|s| s.db_position.as_ref())
        })
        .and_then(|p| match p {
            stackpin_core::position::DbPosition::LitestreamTxid { txid } => Some(txid.as_str()),
            _ => None,
        });
    let driver = source.driver();
    let work = tempfile::Builder::new()
        .prefix("stackpin-drill-")
        .tempdir()
        .map_err(|e| Failure::new(crate::exit::FAILURE, e))?;
    let artifact = work.path().join("objectstack.json");
    let started_at = Timestamp::now();
    let clock = Instant::now();
    let mut steps = Steps {
        steps: Vec::new(),
        total: 3 + checks.len() + usize::from(args.rpo_query.is_some()),
    };
    let mut results = Vec::new();
    let mut failure = None;

    // 1. The artifact live at the instant, verified as `restore` does (it
    // also gives the PostgreSQL recovery settings `restore` prints).
    let t = steps.begin("stackpin restore");
    let archive = match &source {
        Source::Postgres { archive, .. } => Some(archive.as_path()),
        _ => None,
    };
    let restore = crate::cmd::restore::RestoreArgs::drill(
        args.env.clone(),
        target,
        artifact.clone(),
        args.trusted_keys.clone(),
        args.log_key.clone(),
        archive,
    );
    let artifact_restored = crate::cmd::restore::restore_verified(&restore, server, state).await;
    steps.end("stackpin restore", t, artifact_restored.is_ok());
    // A refusal of this client (its credentials, its input) says nothing
    // about the backup: it is not evidence, and nothing is recorded.
    if let Err(e) = &artifact_restored
        && matches!(e.code, crate::exit::AUTH | crate::exit::INVALID)
    {
        return Err(Failure::new(
            e.code,
            anyhow::anyhow!(
                "the drill's restore was refused for this client ({:#}); nothing was recorded: \
                 a drill needs a token with the read role (to restore) and the pin role (to \
                 record)",
                e.error
            ),
        ));
    }
    let (release_id, digest, settings) = match &artifact_restored {
        Ok(r) => (
            r.resolution.pin.release_id.clone(),
            r.resolution.pin.digest.clone(),
            r.postgres_settings(),
        ),
        Err(e) => {
            failure.get_or_insert_with(|| format!("stackpin restore: {}", e.error));
            (String::new(), String::new(), Vec::new())
        }
    };
    results.push(DrillCheck {
        name: "artifact restored and verified".into(),
        passed: artifact_restored.is_ok(),
        detail: if release_id.is_empty() {
            String::new()
        } else {
            format!("{release_id} {digest}")
        },
    });

    // 2. The database at the same instant.
    let step = match &source {
        Source::Litestream(_) => "litestream restore",
        Source::File(_) => "copy snapshot",
        Source::Postgres { .. } | Source::PostgresPlan(_) => "PostgreSQL recovery",
        Source::Pgbackrest { .. } => "pgbackrest restore and recovery",
        Source::Barman { .. } => "barman recover and recovery",
    };
    let t = steps.begin(step);
    let restored = match &source {
        Source::Litestream(url) => {
            let db = work.path().join("restored.db");
            litestream_restore(&args.litestream, url, target, txid, &db)
                .await
                .map(|()| Db::Sqlite(db))
        }
        Source::File(path) => {
            let db = work.path().join("restored.db");
            copy_snapshot(path, snapshot.as_ref(), &db)
                .await
                .map(|()| Db::Sqlite(db))
        }
        Source::Postgres { base, .. } if failure.is_none() => {
            Cluster::recover(args.pg_bin.as_deref(), base, work.path(), &settings)
                .await
                .map(Db::Postgres)
        }
        Source::Pgbackrest { .. } | Source::Barman { .. } if failure.is_none() => {
            match &tool_restore {
                Some(restore) => {
                    Cluster::from_backup_tool(args.pg_bin.as_deref(), restore, work.path())
                        .await
                        .map(Db::Postgres)
                }
                None => Err("no backup chosen".into()),
            }
        }
        Source::Postgres { .. } | Source::Pgbackrest { .. } | Source::Barman { .. } => {
            Err("not attempted: the artifact restore failed".into())
        }
        Source::PostgresPlan(_) => Err("a printed drill restores nothing".into()),
    };
    steps.end(step, t, restored.is_ok());
    let mut db = match restored {
        Ok(db) => Some(db),
        Err(why) => {
            failure.get_or_insert(why);
            None
        }
    };

    // 3. The database's own check, then the operator's.
    let mut rpo = None;
    if let (None, Some(db)) = (&failure, &db) {
        let (name, q, want) = match db {
            Db::Sqlite(_) => ("PRAGMA integrity_check", "PRAGMA integrity_check", "ok"),
            Db::Postgres(_) => (
                "recovered and promoted",
                "SELECT pg_is_in_recovery()::text",
                "false",
            ),
        };
        let t = steps.begin(name);
        let check = db.check(q, Some(want));
        steps.end(name, t, check.0);
        results.push(DrillCheck {
            name: name.into(),
            passed: check.0,
            detail: check.1,
        });
        for (name, q, expect) in &checks {
            let fill = |s: &str| {
                s.replace("{release_id}", &release_id)
                    .replace("{digest}", &digest)
            };
            let t = steps.begin(name);
            let (passed, detail) = db.check(&fill(q), expect.as_deref().map(fill).as_deref());
            steps.end(name, t, passed);
            results.push(DrillCheck {
                name: name.clone(),
                passed,
                detail,
            });
        }
        if let Some(q) = &args.rpo_query {
            let t = steps.begin("rpo query");
            let newest = newest_instant(db, q);
            steps.end("rpo query", t, newest.is_ok());
            match newest {
                Ok(newest) => {
                    let gap = target.as_micros().saturating_sub(newest.as_micros()).max(0);
                    rpo = Some(Duration::from_micros(gap.unsigned_abs()));
                }
                Err(why) => results.push(DrillCheck {
                    name: "rpo query".into(),
                    passed: false,
                    detail: why,
                }),
            }
        }
    }
    let rto = clock.elapsed();
    if let Some(Db::Postgres(c)) = &mut db {
        c.stop().await;
    }
    if failure.is_none() && results.iter().any(|c| !c.passed) {
        failure = Some("a check failed".into());
    }
    for c in &mut results {
        c.name = one_line(&c.name, MAX_DETAIL);
        c.detail = one_line(&c.detail, MAX_DETAIL);
    }
    for step in &mut steps.steps {
        step.name = one_line(&step.name, MAX_DETAIL);
    }
    let failure = failure.map(|f| one_line(&f, 4 * MAX_DETAIL));
    let drill = Drill {
        env: args.env.clone(),
        driver,
        snapshot: args.snapshot,
        target,
        checks: results,
        steps: steps.steps,
        rto: Some(rto),
        rpo,
        failure,
        started_at,
    };
    let passed = drill.failure.is_none();
    let shown = record_drill(server, state, &args.log_key, &drill).await?;
    if let Entry::Drill(d) = &shown.entry
        && !release_id.is_empty()
        && d.live.release_id.as_str() != release_id
    {
        return Err(Failure::verify(format!(
            "the registry paired the drill with {}, but the artifact restored was {release_id}",
            d.live.release_id
        )));
    }
    let kept = match &args.keep {
        Some(dir) => {
            keep(work.path(), dir)
                .map_err(|e| Failure::invalid(format!("--keep {}: {e}", dir.display())))?;
            Some(dir.display().to_string())
        }
        None => None,
    };
    drop(work);
    let ran = Ran { shown, kept };
    format.emit(&ran, || {
        let Entry::Drill(d) = &ran.shown.entry else {
            return String::new();
        };
        let mut text = format!("{}\n", drill_line(d));
        for c in &d.checks {
            let mark = if c.passed { "ok  " } else { "FAIL" };
            text.push_str(&format!("  {mark} {}", c.name));
            if !c.detail.is_empty() {
                text.push_str(&format!(": {}", c.detail));
            }
            text.push('\n');
        }
        for s in &d.steps {
            text.push_str(&format!(
                "  step {} took {}\n",
                s.name,
                human(Duration::from_millis(s.millis))
            ));
        }
        if let Some(rpo) = d.rpo_millis {
            text.push_str(&format!(
                "  measured RPO {}\n",
                human(Duration::from_millis(rpo))
            ));
        }
        text.push_str(&format!(
            "recorded as log index {} ({})\n",
            ran.shown.log_index,
            checked(&ran.shown)
        ));
        if let Some(k) = &ran.kept {
            text.push_str(&format!("kept the restored files in {k}\n"));
        }
        text
    });
    if passed {
        Ok(())
    } else {
        Err(Failure::new(
            crate::exit::OUT_OF_POLICY,
            anyhow::anyhow!("the drill failed: {}", drill.failure.unwrap_or_default()),
        )
        .after_result())
    }
}

/// Most `--check` queries one drill runs (the registry records at most 256
/// checks, and a drill adds its own).
const MAX_CHECKS: usize = 200;
/// Longest check name or detail recorded; the registry takes at most 4096
/// bytes of text, and the whole entry must stay small.
const MAX_DETAIL: usize = 512;

/// A PostgreSQL drill's WAL archive, absolute (`restore_command` runs in
/// the restored data folder) and nameable by it.
fn archive_dir(dir: &Path) -> Outcome<PathBuf> {
    let abs = std::fs::canonicalize(dir)
        .map_err(|e| Failure::invalid(format!("--wal-archive {}: {e}", dir.display())))?;
    crate::cmd::targets::wal_archive(&abs.to_string_lossy())
        .map_err(|e| Failure::invalid(format!("--wal-archive: {e}")))?;
    Ok(abs)
}

/// `text` as one line of at most `max` bytes, as the log records it: what
/// a database or a tool prints (psql's errors span lines) is kept readable
/// rather than refused with the drill's result.
fn one_line(text: &str, max: usize) -> String {
    let flat = text
        .split(char::is_control)
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if flat.len() <= max {
        return flat;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !flat.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &flat[..end])
}

/// Copies what a drill restored (the database file or cluster folder, the
/// artifact and its proof) from `work` into `dir`.
fn keep(work: &Path, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for name in [
        "restored.db",
        "objectstack.json",
        "objectstack.json.tlog-proof",
        "pgdata",
    ] {
        let from = work.join(name);
        if from.is_dir() {
            copy_tree(&from, &dir.join(name))?;
        } else if from.exists() {
            std::fs::copy(&from, dir.join(name))?;
        }
    }
    Ok(())
}

/// The instant the RPO query returns.
fn newest_instant(db: &Db, q: &str) -> Result<Timestamp, String> {
    let value = match db.first_value(q) {
        Ok(Some(v)) => v,
        Ok(None) => return Err("the RPO query returned NULL".into()),
        Err(e) => return Err(format!("the RPO query failed: {e}")),
    };
    value
        .parse::<Timestamp>()
        .map_err(|e| format!("the RPO query returned {value:?}, not an instant: {e}"))
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn what_a_tool_prints_is_recorded_as_one_short_line() {
        let psql = "ERROR:  relation \"ordrs\" does not exist\nLINE 1: SELECT count(*) FROM ordrs\n                             ^\n";
        assert_eq!(
            one_line(psql, 512),
            "ERROR:  relation \"ordrs\" does not exist LINE 1: SELECT count(*) FROM ordrs ^"
        );
        let long = "é".repeat(600);
        let cut = one_line(&long, 512);
        assert!(cut.len() <= 512, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(one_line("fine", 512), "fine");
    }
}
