//! `stackpin snapshot list`, `drill run|record|list` and `posture`: the
//! evidence that restores work, recorded in the log and read back verified.
//!
//! A snapshot entry says a backup exists and which artifact goes with it; a
//! drill entry says a restore was tested, how long it took and what the
//! checks found. The registry pairs both with the pin live at their
//! instant, and the log's rules check that pairing, so neither can name
//! another artifact than the timeline does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use stackpin_core::entry::{DrillCheck, DrillEntry, DrillStep, Driver, Entry, SnapshotEntry};
use stackpin_core::ids::EnvName;
use stackpin_core::note::Checkpoint;
use stackpin_core::posture::human;
use stackpin_core::time::Timestamp;
use stackpin_proto::v1 as pb;

use crate::exit::{Failure, Outcome};
use crate::view::{Format, wire_time};

/// A snapshot entry as one line.
pub fn snapshot_line(s: &SnapshotEntry) -> String {
    let mut line = format!(
        "snapshot {} {} at {} -> #{} {} ({})",
        s.env, s.driver, s.db_time, s.live.seq, s.live.release_id, s.location
    );
    if let Some(p) = &s.db_position {
        line.push_str(&format!(", db {p}"));
    }
    if let Some(size) = s.size {
        line.push_str(&format!(", {size} bytes"));
    }
    line
}

/// A drill entry as one line.
pub fn drill_line(d: &DrillEntry) -> String {
    let verdict = if d.passed { "PASSED" } else { "FAILED" };
    let mut line = format!(
        "drill {} {verdict} {} to {} with #{} {}",
        d.env, d.driver, d.target, d.live.seq, d.live.release_id
    );
    if let Some(rto) = d.rto_millis {
        line.push_str(&format!(
            ", restored in {}",
            human(Duration::from_millis(rto))
        ));
    }
    let passed = d.checks.iter().filter(|c| c.passed).count();
    line.push_str(&format!(
        ", {passed}/{} checks passed, by {}",
        d.checks.len(),
        d.actor
    ));
    if let Some(f) = &d.failure {
        line.push_str(&format!(": {f}"));
    }
    line
}

/// An entry the registry sent with its proof, checked against the signed
/// checkpoint it came with when a log key is known.
#[derive(Serialize)]
pub struct Shown {
    pub index: u64,
    /// Whether the entry was checked against a signed checkpoint.
    pub verified: bool,
    pub entry: Entry,
}

fn open(
    log_key: Option<&stackpin_core::note::NoteVerifier>,
    checkpoint: &str,
    proved: &pb::ProvedEntry,
) -> Outcome<Shown> {
    let verified = match log_key {
        None => false,
        Some(key) => {
            let cp = Checkpoint::open(checkpoint, key)
                .map_err(|e| Failure::verify(format!("the answer's checkpoint: {e}")))?;
            crate::trust::verify_included(&cp, proved.index, &proved.entry, &proved.proof)?;
            true
        }
    };
    let entry =
        Entry::parse(proved.index, &proved.entry).map_err(|e| Failure::verify(e.to_string()))?;
    Ok(Shown {
        index: proved.index,
        verified,
        entry,
    })
}

/// The log key, when one was given: answers are then verified.
fn optional_key(arg: &crate::trust::LogKey) -> Outcome<Option<stackpin_core::note::NoteVerifier>> {
    if arg.given() || arg.policy()?.is_some() {
        crate::trust::log_key(arg).map(Some)
    } else {
        Ok(None)
    }
}

fn checked(shown: &Shown) -> &'static str {
    if shown.verified {
        "verified"
    } else {
        "not verified: pass --log-key"
    }
}

/// Sends a record request (with the run's request id, retried as pins
/// are) and opens the entry the registry answers with.
async fn send<M, F, Fut>(
    server: &crate::client::Connection,
    log_key: &crate::trust::LogKey,
    what: &str,
    message: impl Fn(String) -> M,
    call: F,
) -> Outcome<Shown>
where
    M: Clone,
    F: Fn(crate::client::Client, tonic::Request<M>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<pb::RecordedEntry>, tonic::Status>>,
{
    let key = optional_key(log_key)?;
    let client = crate::client::connect(server).await?;
    let id = server.request_id()?;
    let message = message(id.clone());
    let recorded = server
        .retrying(what, || {
            call(
                client.clone(),
                crate::client::Connection::request(&id, message.clone()),
            )
        })
        .await?
        .into_inner();
    let proved = recorded
        .entry
        .ok_or_else(|| Failure::verify("the registry answered without the entry"))?;
    open(key.as_ref(), &recorded.checkpoint, &proved)
}

/// Records a snapshot; the entry the registry wrote, opened.
pub async fn record_snapshot(
    server: &crate::client::Connection,
    log_key: &crate::trust::LogKey,
    message: pb::RecordSnapshotRequest,
) -> Outcome<Shown> {
    let (env, location) = (message.env.clone(), message.location.clone());
    let shown = send(
        server,
        log_key,
        "snapshot",
        |request_id| pb::RecordSnapshotRequest {
            request_id,
            ..message.clone()
        },
        |mut c, r| async move { c.record_snapshot(r).await },
    )
    .await?;
    match &shown.entry {
        Entry::Snapshot(s) if s.env.as_str() == env && s.location == location => Ok(shown),
        _ => Err(Failure::verify(format!(
            "entry {} is not the snapshot asked for",
            shown.index
        ))),
    }
}

#[derive(clap::Subcommand)]
pub enum SnapshotCmd {
    /// The snapshots recorded for an environment, newest first.
    List(ListArgs),
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[arg(long, value_parser = crate::parse::<EnvName>)]
    env: EnvName,
    /// At most this many (at most 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Continue from a previous page.
    #[arg(long, default_value = "")]
    page_token: String,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
}

#[derive(Serialize)]
struct Listed {
    entries: Vec<Shown>,
    #[serde(skip_serializing_if = "String::is_empty")]
    next_page_token: String,
}

async fn list(
    args: &ListArgs,
    kind: &str,
    server: &crate::client::Connection,
    format: Format,
) -> Outcome {
    let key = optional_key(&args.log_key)?;
    let mut client = crate::client::connect(server).await?;
    let page = client
        .list_evidence(pb::ListEvidenceRequest {
            env: args.env.to_string(),
            kind: kind.to_owned(),
            limit: args.limit,
            page_token: args.page_token.clone(),
        })
        .await?
        .into_inner();
    let mut entries = Vec::new();
    for proved in &page.entries {
        let shown = open(key.as_ref(), &page.checkpoint, proved)?;
        if shown.entry.kind() != kind || shown.entry.env() != Some(&args.env) {
            return Err(Failure::verify(format!(
                "entry {} is not a {kind} of {}",
                shown.index, args.env
            )));
        }
        entries.push(shown);
    }
    let listed = Listed {
        entries,
        next_page_token: page.next_page_token,
    };
    format.emit(&listed, || {
        let mut text = String::new();
        if listed.entries.is_empty() {
            text.push_str(&format!("no {kind} recorded for {}\n", args.env));
        }
        for e in &listed.entries {
            let line = match &e.entry {
                Entry::Snapshot(s) => snapshot_line(s),
                Entry::Drill(d) => drill_line(d),
                _ => String::new(),
            };
            text.push_str(&format!("{line} (log index {}, {})\n", e.index, checked(e)));
        }
        if !listed.next_page_token.is_empty() {
            text.push_str(&format!("more: --page-token {}\n", listed.next_page_token));
        }
        text
    });
    Ok(())
}

pub async fn snapshot(
    cmd: &SnapshotCmd,
    server: &crate::client::Connection,
    format: Format,
) -> Outcome {
    match cmd {
        SnapshotCmd::List(a) => list(a, "snapshot", server, format).await,
    }
}

#[derive(clap::Subcommand)]
pub enum DrillCmd {
    /// Restore a backup and its artifact into a temporary folder, check
    /// them, time every step, record the drill, and clean up. The exit code
    /// is 0 when the drill passed, 8 when it failed.
    Run(Box<RunArgs>),
    /// Record the result of a drill done by other means.
    Record(RecordArgs),
    /// The drills recorded for an environment, newest first.
    List(ListArgs),
}

pub async fn drill(
    cmd: &DrillCmd,
    server: &crate::client::Connection,
    state: Option<&Path>,
    format: Format,
) -> Outcome {
    match cmd {
        DrillCmd::Run(a) => run(a, server, state, format).await,
        DrillCmd::Record(a) => record(a, server, format).await,
        DrillCmd::List(a) => list(a, "drill", server, format).await,
    }
}

#[derive(clap::Args)]
pub struct RecordArgs {
    #[arg(long, value_parser = crate::parse::<EnvName>)]
    env: EnvName,
    /// How the backup was made: sqlite, postgresql, litestream, other.
    #[arg(long, value_parser = crate::parse::<Driver>)]
    driver: Driver,
    /// The database instant restored to.
    #[arg(long, value_parser = crate::parse::<Timestamp>)]
    target: Timestamp,
    /// The log index of the snapshot entry restored, if one was.
    #[arg(long)]
    snapshot: Option<u64>,
    /// A check that passed (repeatable).
    #[arg(long, value_name = "NAME")]
    check_passed: Vec<String>,
    /// A check that failed (repeatable).
    #[arg(long, value_name = "NAME")]
    check_failed: Vec<String>,
    /// How long the restore took, start to verified (e.g. 4m30s).
    #[arg(long, value_parser = stackpin_core::time::parse_duration)]
    rto: Option<Duration>,
    /// How much data the restored database missed against its source.
    #[arg(long, value_parser = stackpin_core::time::parse_duration)]
    rpo: Option<Duration>,
    /// The drill failed, and why (without it, the drill passed unless a
    /// check failed).
    #[arg(long, value_name = "WHY")]
    failed: Option<String>,
    /// When the drill started [default: now minus --rto].
    #[arg(long, value_parser = crate::parse::<Timestamp>)]
    started_at: Option<Timestamp>,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn record(args: &RecordArgs, server: &crate::client::Connection, format: Format) -> Outcome {
    let checks: Vec<DrillCheck> = args
        .check_passed
        .iter()
        .map(|n| (n, true))
        .chain(args.check_failed.iter().map(|n| (n, false)))
        .map(|(name, passed)| DrillCheck {
            name: name.clone(),
            passed,
            detail: String::new(),
        })
        .collect();
    let passed = args.failed.is_none() && checks.iter().all(|c| c.passed);
    if passed && checks.is_empty() {
        return Err(Failure::invalid(
            "a passing drill names the checks that passed (--check-passed NAME, repeatable): \
             a drill with no checks proves nothing; a failed one says why (--failed WHY)",
        ));
    }
    let started_at = args.started_at.unwrap_or_else(|| {
        let back = args
            .rto
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(0));
        Timestamp::now().saturating_add_micros(-back)
    });
    let failure = match (&args.failed, passed) {
        (Some(f), _) => Some(f.clone()),
        (None, false) => Some("a check failed".to_owned()),
        (None, true) => None,
    };
    let drill = Drill {
        env: args.env.clone(),
        driver: args.driver,
        snapshot: args.snapshot,
        target: args.target,
        checks,
        steps: Vec::new(),
        rto: args.rto,
        rpo: args.rpo,
        failure,
        started_at,
    };
    let shown = record_drill(server, &args.log_key, &drill).await?;
    format.emit(&shown, || {
        let line = match &shown.entry {
            Entry::Drill(d) => drill_line(d),
            _ => String::new(),
        };
        format!(
            "recorded {line}\nlog index  {} ({})\n",
            shown.index,
            checked(&shown)
        )
    });
    if passed {
        Ok(())
    } else {
        Err(Failure::new(
            crate::exit::OUT_OF_POLICY,
            anyhow::anyhow!("the drill recorded failed"),
        ))
    }
}

/// A drill's result, before the registry pairs it.
struct Drill {
    env: EnvName,
    driver: Driver,
    snapshot: Option<u64>,
    target: Timestamp,
    checks: Vec<DrillCheck>,
    steps: Vec<DrillStep>,
    rto: Option<Duration>,
    rpo: Option<Duration>,
    failure: Option<String>,
    started_at: Timestamp,
}

async fn record_drill(
    server: &crate::client::Connection,
    log_key: &crate::trust::LogKey,
    d: &Drill,
) -> Outcome<Shown> {
    let passed = d.failure.is_none() && d.checks.iter().all(|c| c.passed);
    let message = |request_id| pb::RecordDrillRequest {
        env: d.env.to_string(),
        driver: d.driver.to_string(),
        snapshot: d.snapshot,
        target: Some(wire_time(d.target)),
        checks: d
            .checks
            .iter()
            .map(|c| pb::DrillCheck {
                name: c.name.clone(),
                passed: c.passed,
                detail: c.detail.clone(),
            })
            .collect(),
        steps: d
            .steps
            .iter()
            .map(|s| pb::DrillStep {
                name: s.name.clone(),
                millis: s.millis,
            })
            .collect(),
        rto_millis: d.rto.map(millis),
        rpo_millis: d.rpo.map(millis),
        passed,
        failure: d.failure.clone().unwrap_or_default(),
        started_at: Some(wire_time(d.started_at)),
        request_id,
    };
    let shown = send(server, log_key, "drill", message, |mut c, r| async move {
        c.record_drill(r).await
    })
    .await?;
    match &shown.entry {
        Entry::Drill(e) if e.env == d.env && e.target == d.target && e.passed == passed => {
            Ok(shown)
        }
        _ => Err(Failure::verify(format!(
            "entry {} is not the drill sent",
            shown.index
        ))),
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[arg(long, value_parser = crate::parse::<EnvName>)]
    env: EnvName,
    /// The database instant to restore to [default: the snapshot's, with
    /// --snapshot].
    #[arg(long, value_parser = crate::parse::<Timestamp>)]
    at: Option<Timestamp>,
    /// Drill a recorded snapshot: its log index (see `stackpin snapshot
    /// list`). Its location and instant are used unless given.
    #[arg(long)]
    snapshot: Option<u64>,
    /// A Litestream replica URL to restore from (`litestream restore
    /// -timestamp`).
    #[arg(long, value_name = "URL", conflicts_with = "file")]
    replica: Option<String>,
    /// A SQLite snapshot file to restore (copied, never opened in place).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// A query to run on the restored database (repeatable). It passes
    /// when it returns a row whose first value is not NULL, 0, f (false)
    /// or empty;
    /// `QUERY => VALUE` passes when that value is VALUE. `{release_id}`
    /// and `{digest}` stand for the artifact restored.
    #[arg(long, value_name = "QUERY")]
    check: Vec<String>,
    /// A query returning the newest data's instant (RFC 3339) in the
    /// restored database: the drill's target minus it is the measured RPO.
    #[arg(long, value_name = "QUERY")]
    rpo_query: Option<String>,
    /// A PostgreSQL base backup folder (`pg_basebackup -D`) to recover a
    /// copy of, with --wal-archive, on a unix socket in a temporary folder.
    /// PostgreSQL refuses root: run the drill as an unprivileged user.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["replica", "file"])]
    pg_base: Option<PathBuf>,
    /// The folder the WAL was archived to (the `restore_command` source).
    #[arg(long, value_name = "DIR")]
    wal_archive: Option<PathBuf>,
    /// Where the PostgreSQL programs are [default: `pg_config --bindir`,
    /// else PATH].
    #[arg(long, value_name = "DIR")]
    pg_bin: Option<PathBuf>,
    /// Restore the Litestream replica to this TXID (`litestream restore
    /// -txid`) rather than to the instant [default: the snapshot's TXID,
    /// when it recorded one].
    #[arg(long, value_parser = crate::parse_with(stackpin_core::position::DbPosition::txid))]
    litestream_txid: Option<stackpin_core::position::DbPosition>,
    /// Print the PostgreSQL drill for --at as commands to run where the
    /// base backup and the WAL archive are, with the exact recovery
    /// settings and the `stackpin drill record` to finish with; nothing is
    /// restored or recorded.
    #[arg(long, conflicts_with_all = ["replica", "file"])]
    print_postgresql: bool,
    /// The litestream binary.
    #[arg(long, env = "STACKPIN_LITESTREAM", default_value = "litestream")]
    litestream: PathBuf,
    /// Publisher keys the restored artifact's signature is checked against.
    #[arg(long, env = "STACKPIN_TRUSTED_KEYS")]
    trusted_keys: PathBuf,
    /// Keep the restored database and artifact in this folder instead of
    /// removing them.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
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
}

impl Source {
    fn driver(&self) -> Driver {
        match self {
            Source::Litestream(_) => Driver::Litestream,
            Source::File(_) => Driver::Sqlite,
            Source::Postgres { .. } | Source::PostgresPlan(_) => Driver::Postgresql,
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

/// Whether this process runs as root (PostgreSQL refuses to).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

async fn run(
    args: &RunArgs,
    server: &crate::client::Connection,
    state: Option<&Path>,
    format: Format,
) -> Outcome {
    // Everything a user can get wrong is refused before anything runs.
    crate::trust::trusted_keys(&args.trusted_keys)?;
    crate::trust::log_key(&args.log_key)?;
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
        Some(index) => Some(snapshot_entry(server, &args.log_key, index, &args.env).await?),
    };
    let snapshot_base = snapshot
        .as_ref()
        .filter(|s| s.driver == Driver::Postgresql)
        .map(|s| PathBuf::from(&s.location));
    let source = match (&args.replica, &args.file, &args.pg_base, &snapshot) {
        _ if args.print_postgresql => Source::PostgresPlan(args.pg_base.clone().or(snapshot_base)),
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
        crate::cmd::artifacts::wal_archive(&wal.to_string_lossy())
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
    let restore = crate::cmd::artifacts::RestoreArgs::drill(
        args.env.clone(),
        target,
        artifact.clone(),
        args.trusted_keys.clone(),
        args.log_key.clone(),
        archive,
    );
    let artifact_restored = crate::cmd::artifacts::restore_verified(&restore, server, state).await;
    steps.end("stackpin restore", t, artifact_restored.is_ok());
    let (release_id, digest, settings) = match &artifact_restored {
        Ok(r) => (
            r.resolution.pin.release_id.clone(),
            r.resolution.pin.digest.clone(),
            r.database.postgres.clone(),
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
            copy_snapshot(path, snapshot.as_ref(), &db).map(|()| Db::Sqlite(db))
        }
        Source::Postgres { base, .. } if failure.is_none() => {
            Cluster::recover(args.pg_bin.as_deref(), base, work.path(), &settings)
                .await
                .map(Db::Postgres)
        }
        Source::Postgres { .. } => Err("not attempted: the artifact restore failed".into()),
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
    let shown = record_drill(server, &args.log_key, &drill).await?;
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
            ran.shown.index,
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
        ))
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
    crate::cmd::artifacts::wal_archive(&abs.to_string_lossy())
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

/// Copies the folder `from` to `to`, recursively; sockets and other
/// special files are skipped.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let kind = e.file_type()?;
        let target = to.join(e.file_name());
        if kind.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(e.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &target)?;
        }
    }
    Ok(())
}

/// A PostgreSQL cluster recovered from a base backup into a drill's work
/// folder, listening only on a unix socket there.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    /// Whether it was stopped; dropped running (an error path, Ctrl-C or
    /// SIGTERM), it is stopped as it drops, before its folder is removed.
    stopped: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop_command().output();
        }
    }
}

/// The port that names the cluster's socket file (nothing listens on TCP).
const PG_PORT: &str = "5432";

impl Cluster {
    /// Copies `base` into `work`, adds the recovery `settings` exactly as
    /// `stackpin restore` prints them (plus the socket and no TCP), starts
    /// it and waits until it has recovered to the target and promoted.
    async fn recover(
        bin: Option<&Path>,
        base: &Path,
        work: &Path,
        settings: &[String],
    ) -> Result<Self, String> {
        let bin = match bin {
            Some(b) => b.to_owned(),
            None => pg_bindir().await?,
        };
        let data = work.join("pgdata");
        let sock = work.join("sock");
        copy_tree(base, &data).map_err(|e| format!("copying {}: {e}", base.display()))?;
        std::fs::create_dir_all(&sock).map_err(|e| e.to_string())?;
        // PostgreSQL refuses a data folder others can read.
        std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| e.to_string())?;
        for stale in ["postmaster.pid", "standby.signal"] {
            let _ = std::fs::remove_file(data.join(stale));
        }
        let mut conf = format!(
            "\n# stackpin drill\nlisten_addresses = ''\nunix_socket_directories = '{}'\nport = {PG_PORT}\n",
            sock.display()
        );
        for line in settings {
            conf.push_str(line);
            conf.push('\n');
        }
        // postgresql.auto.conf is read last, so these win over anything the
        // primary set with ALTER SYSTEM (archive_mode = on, a listen
        // address) that the base backup carries.
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("postgresql.auto.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .map_err(|e| format!("writing the recovery settings: {e}"))?;
        std::fs::write(data.join("recovery.signal"), "").map_err(|e| e.to_string())?;
        let mut cluster = Self {
            bin,
            data,
            sock,
            stopped: false,
        };
        let log = work.join("postgresql.log");
        let started = tokio::process::Command::new(cluster.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&cluster.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "600", "start"])
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot run pg_ctl from {}: {e}", cluster.bin.display()))?;
        let log_tail = || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .rev()
                .find(|l| l.contains("FATAL") || l.contains("ERROR"))
                .or_else(|| text.lines().last())
                .unwrap_or("no log")
                .to_owned()
        };
        if !started.status.success() {
            return Err(format!("PostgreSQL did not start: {}", log_tail()));
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            match cluster.first_value("SELECT pg_is_in_recovery()::text") {
                Ok(Some(v)) if v == "false" => return Ok(cluster),
                _ if Instant::now() > deadline => {
                    cluster.stop().await;
                    return Err(format!(
                        "PostgreSQL did not finish recovery in 10 minutes: {}",
                        log_tail()
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
            if !cluster.data.join("postmaster.pid").exists() {
                return Err(format!(
                    "PostgreSQL stopped during recovery: {}",
                    log_tail()
                ));
            }
        }
    }

    fn first_value(&self, q: &str) -> Result<Option<String>, String> {
        let out = std::process::Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.sock)
            .args([
                "-p",
                PG_PORT,
                "-d",
                "postgres",
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                q,
            ])
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(err.trim().to_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().next() {
            None => Err("no rows".into()),
            Some(line) => {
                let first = line.split('|').next().unwrap_or_default();
                Ok((!first.is_empty()).then(|| first.to_owned()))
            }
        }
    }

    /// `pg_ctl stop -m immediate`: the copy is thrown away, so nothing
    /// needs a clean shutdown.
    fn stop_command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        c
    }

    async fn stop(&mut self) {
        let _ = tokio::process::Command::from(self.stop_command())
            .kill_on_drop(true)
            .output()
            .await;
        self.stopped = true;
    }
}

/// Where the PostgreSQL programs are: `pg_config --bindir`, else the
/// folder of `pg_ctl` on PATH.
async fn pg_bindir() -> Result<PathBuf, String> {
    if let Ok(out) = tokio::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .await
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| d.join("pg_ctl").exists())
        .ok_or_else(|| {
            "cannot find pg_ctl: pass --pg-bin DIR (e.g. /usr/lib/postgresql/15/bin)".to_owned()
        })
}

/// `drill run --print-postgresql`: the drill as commands, with the
/// recovery settings `stackpin restore` gives for the instant (checked
/// against the log like a restore plan), ending with the `drill record`
/// that puts the result in the log.
async fn print_postgresql(
    args: &RunArgs,
    server: &crate::client::Connection,
    state: Option<&Path>,
    target: Timestamp,
    base: Option<&Path>,
    format: Format,
) -> Outcome {
    let plan = crate::cmd::artifacts::RestoreArgs::drill(
        args.env.clone(),
        target,
        PathBuf::from("objectstack.json"),
        args.trusted_keys.clone(),
        args.log_key.clone(),
        args.wal_archive.as_deref(),
    )
    .planned();
    let planned = crate::cmd::artifacts::restore_verified(&plan, server, state).await?;
    let base = base.map_or_else(
        || "/path/to/base_backup".to_owned(),
        |b| b.display().to_string(),
    );
    let (env, at) = (args.env.to_string(), target.to_string());
    // The settings go into postgresql.auto.conf, read last, so they win
    // over what the primary set with ALTER SYSTEM; the heredoc is quoted,
    // so nothing in them is expanded by the shell.
    let mut commands = vec![
        "set -eu".to_owned(),
        "D=$(mktemp -d)".to_owned(),
        "trap 'pg_ctl -D \"$D/pgdata\" -m immediate -w stop >/dev/null 2>&1 || true; rm -rf \"$D\"' EXIT".to_owned(),
        format!(
            "cp -a {} \"$D/pgdata\" && chmod 700 \"$D/pgdata\" && mkdir \"$D/sock\"",
            shell_quote(&base)
        ),
        "rm -f \"$D/pgdata/postmaster.pid\" \"$D/pgdata/standby.signal\"".to_owned(),
        format!(
            "printf \"listen_addresses = ''\\nunix_socket_directories = '%s'\\nport = {PG_PORT}\\n\" \"$D/sock\" >> \"$D/pgdata/postgresql.auto.conf\""
        ),
        format!(
            "cat >> \"$D/pgdata/postgresql.auto.conf\" <<'EOF'\n{}\nEOF",
            planned.database.postgres.join("\n")
        ),
        "touch \"$D/pgdata/recovery.signal\"".to_owned(),
        "START=$(date +%s)".to_owned(),
        "pg_ctl -D \"$D/pgdata\" -l \"$D/postgresql.log\" -w -t 600 start".to_owned(),
        format!(
            "until [ \"$(psql -h \"$D/sock\" -p {PG_PORT} -d postgres -XAtc 'SELECT pg_is_in_recovery()')\" = f ]; do sleep 1; done"
        ),
        format!(
            "stackpin restore --env {env} --at {at} --out \"$D/objectstack.json\" --trusted-keys {}",
            shell_quote(&args.trusted_keys.display().to_string())
        ),
    ];
    for c in &args.check {
        let query = c.rsplit_once(" => ").map_or(c.as_str(), |(q, _)| q);
        let query = query
            .replace("{release_id}", planned.resolution.pin.release_id.as_str())
            .replace("{digest}", planned.resolution.pin.digest.as_str());
        commands.push(format!(
            "psql -h \"$D/sock\" -p {PG_PORT} -d postgres -XAtc {}",
            shell_quote(&query)
        ));
    }
    let snapshot = args
        .snapshot
        .map(|i| format!(" --snapshot {i}"))
        .unwrap_or_default();
    commands.push(format!(
        "stackpin drill record --env {env} --driver postgresql --target {at}{snapshot} --rto \"$(( $(date +%s) - START ))s\" --check-passed NAME  # or --check-failed NAME / --failed WHY"
    ));
    #[derive(Serialize)]
    struct Printed<'a> {
        env: &'a str,
        target: &'a str,
        release_id: &'a str,
        digest: &'a str,
        settings: &'a [String],
        commands: &'a [String],
    }
    let printed = Printed {
        env: &env,
        target: &at,
        release_id: &planned.resolution.pin.release_id,
        digest: &planned.resolution.pin.digest,
        settings: &planned.database.postgres,
        commands: &commands,
    };
    format.emit(&printed, || {
        format!(
            "# PostgreSQL drill of {env} at {at}, paired with {} ({}); run where the base backup \
             and the WAL archive are, as their owner (not root)\n{}\n",
            printed.release_id,
            printed.digest,
            commands.join("\n")
        )
    });
    Ok(())
}

/// `text` as one single-quoted shell word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// The snapshot entry at `index`, verified, which must be of `env`.
async fn snapshot_entry(
    server: &crate::client::Connection,
    log_key: &crate::trust::LogKey,
    index: u64,
    env: &EnvName,
) -> Outcome<SnapshotEntry> {
    let key = crate::trust::log_key(log_key)?;
    let mut client = crate::client::connect(server).await?;
    let cp = client
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await?
        .into_inner();
    if index >= cp.size {
        return Err(Failure::new(
            crate::exit::NOT_FOUND,
            anyhow::anyhow!("--snapshot {index}: the log has {} entries", cp.size),
        ));
    }
    let entry = client
        .get_entry(pb::GetEntryRequest { index })
        .await?
        .into_inner();
    let proof = client
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            index,
            tree_size: cp.size,
        })
        .await?
        .into_inner();
    let shown = open(
        Some(&key),
        &cp.note,
        &pb::ProvedEntry {
            index,
            entry: entry.entry,
            proof: proof.hashes,
        },
    )?;
    match shown.entry {
        Entry::Snapshot(s) if &s.env == env => Ok(s),
        Entry::Snapshot(s) => Err(Failure::invalid(format!(
            "--snapshot {index} is a snapshot of {}, not {env}",
            s.env
        ))),
        other => Err(Failure::invalid(format!(
            "--snapshot {index}: log entry {index} is a {}, not a snapshot",
            other.kind()
        ))),
    }
}

/// `litestream restore -timestamp` (or `-txid`) of `url` into `db`; why
/// it failed.
async fn litestream_restore(
    litestream: &Path,
    url: &str,
    target: Timestamp,
    txid: Option<&str>,
    db: &Path,
) -> Result<(), String> {
    let (flag, value) = match txid {
        Some(txid) => ("-txid", txid.to_owned()),
        None => ("-timestamp", target.to_string()),
    };
    let out = tokio::process::Command::new(litestream)
        .args(["restore", flag, &value, "-o"])
        .arg(db)
        .arg(url)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", litestream.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        return Err(format!(
            "litestream restore {flag} {value} failed ({}): {last}",
            out.status
        ));
    }
    if !db.exists() {
        return Err(format!(
            "litestream restore {flag} {value} wrote no database (the replica holds nothing there)"
        ));
    }
    Ok(())
}

/// Copies a SQLite snapshot file to `db`, checking it against the size and
/// sha256 its snapshot entry recorded.
fn copy_snapshot(path: &Path, entry: Option<&SnapshotEntry>, db: &Path) -> Result<(), String> {
    std::fs::copy(path, db).map_err(|e| format!("copying {}: {e}", path.display()))?;
    if let Some(s) = entry {
        let bytes = std::fs::read(db).map_err(|e| format!("reading the copy: {e}"))?;
        if let Some(size) = s.size
            && size != bytes.len() as u64
        {
            return Err(format!(
                "{} is {} bytes; the snapshot entry recorded {size}",
                path.display(),
                bytes.len()
            ));
        }
        if let Some(d) = &s.sha256
            && *d != stackpin_core::digest::Digest::of(&bytes)
        {
            return Err(format!(
                "{} does not match the sha256 the snapshot entry recorded ({d})",
                path.display()
            ));
        }
    }
    Ok(())
}

/// The first value of the first row `q` returns on a SQLite file.
fn sqlite_first_value(db: &Path, q: &str) -> Result<Option<String>, String> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(db, flags)
        .map_err(|e| format!("cannot open the restored database: {e}"))?;
    let first = conn.query_row(q, [], |row| {
        Ok(match row.get_ref(0)? {
            rusqlite::types::ValueRef::Null => None,
            rusqlite::types::ValueRef::Integer(i) => Some(i.to_string()),
            rusqlite::types::ValueRef::Real(f) => Some(f.to_string()),
            rusqlite::types::ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
            rusqlite::types::ValueRef::Blob(b) => Some(format!("{} bytes", b.len())),
        })
    });
    match first {
        Err(rusqlite::Error::QueryReturnedNoRows) => Err("no rows".into()),
        Err(e) => Err(e.to_string()),
        Ok(v) => Ok(v),
    }
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

#[derive(clap::Args)]
pub struct PostureArgs {
    /// Only this environment [default: every environment with a pin].
    #[arg(long, value_parser = crate::parse::<EnvName>)]
    env: Option<EnvName>,
    /// Judge as of this instant instead of now: only the pins activated
    /// and the snapshots and drills recorded by then count.
    #[arg(long, value_parser = crate::parse::<Timestamp>)]
    at: Option<Timestamp>,
}

#[derive(Serialize)]
struct PostureView {
    at: String,
    in_policy: bool,
    environments: Vec<EnvView>,
}

#[derive(Serialize)]
struct EnvView {
    env: String,
    class: String,
    in_policy: bool,
    rpo_secs: Option<u64>,
    rto_secs: Option<u64>,
    drill_interval_secs: Option<u64>,
    snapshot_age_secs: Option<u64>,
    drill_age_secs: Option<u64>,
    measured_rto_millis: Option<u64>,
    last_drill_failed: bool,
    pins: u64,
    pins_with_position: u64,
    pins_without_snapshot: Vec<u64>,
    pins_without_snapshot_count: u64,
    findings: Vec<String>,
}

fn age_against(age: Option<u64>, target: Option<u64>) -> String {
    let shown = age.map_or_else(
        || "none".to_owned(),
        |a| format!("{} old", human(Duration::from_secs(a))),
    );
    match target {
        Some(t) => format!("{shown} (target {})", human(Duration::from_secs(t))),
        None => format!("{shown} (best effort)"),
    }
}

pub async fn posture(
    args: &PostureArgs,
    server: &crate::client::Connection,
    format: Format,
) -> Outcome {
    let mut client = crate::client::connect(server).await?;
    let report = client
        .get_posture(pb::GetPostureRequest {
            env: args
                .env
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            at: args.at.map(wire_time),
        })
        .await?
        .into_inner();
    let environments: Vec<EnvView> = report
        .environments
        .into_iter()
        .map(|e| EnvView {
            in_policy: e.findings.is_empty(),
            env: e.env,
            class: e.class,
            rpo_secs: e.rpo_secs,
            rto_secs: e.rto_secs,
            drill_interval_secs: e.drill_interval_secs,
            snapshot_age_secs: e.snapshot_age_secs,
            drill_age_secs: e.drill_age_secs,
            measured_rto_millis: e.measured_rto_millis,
            last_drill_failed: e.last_drill_failed,
            pins: e.pins,
            pins_with_position: e.pins_with_position,
            pins_without_snapshot: e.pins_without_snapshot,
            pins_without_snapshot_count: e.pins_without_snapshot_count,
            findings: e.findings.into_iter().map(|f| f.message).collect(),
        })
        .collect();
    let view = PostureView {
        at: crate::view::time(report.at.as_ref()),
        in_policy: environments.iter().all(|e| e.in_policy),
        environments,
    };
    format.emit(&view, || {
        let mut text = format!("recovery posture at {}\n", view.at);
        if view.environments.is_empty() {
            text.push_str(if args.at.is_some() {
                "no environment had a pin by then\n"
            } else {
                "no environment has a pin yet\n"
            });
        }
        for e in &view.environments {
            text.push_str(&format!(
                "\n{} ({}): {}\n",
                e.env,
                e.class,
                if e.in_policy {
                    "in policy"
                } else {
                    "OUT OF POLICY"
                }
            ));
            text.push_str(&format!(
                "  newest snapshot   {}\n",
                age_against(e.snapshot_age_secs, e.rpo_secs)
            ));
            text.push_str(&format!(
                "  newest drill      {}{}\n",
                age_against(e.drill_age_secs, e.drill_interval_secs),
                if e.last_drill_failed {
                    "; the latest drill FAILED"
                } else {
                    ""
                }
            ));
            let rto = e.measured_rto_millis.map_or_else(
                || "not measured".to_owned(),
                |m| human(Duration::from_millis(m)),
            );
            let target = e.rto_secs.map_or_else(
                || "best effort".to_owned(),
                |t| format!("target {}", human(Duration::from_secs(t))),
            );
            text.push_str(&format!("  restore time      {rto} ({target})\n"));
            text.push_str(&format!(
                "  pins with a DB position  {} of {}\n",
                e.pins_with_position, e.pins
            ));
            if e.pins_without_snapshot_count > 0 {
                let list: Vec<String> = e
                    .pins_without_snapshot
                    .iter()
                    .map(|s| format!("#{s}"))
                    .collect();
                text.push_str(&format!(
                    "  pins without a snapshot  {} ({}{})\n",
                    e.pins_without_snapshot_count,
                    list.join(" "),
                    if e.pins_without_snapshot_count > list.len() as u64 {
                        " and older"
                    } else {
                        ""
                    }
                ));
            }
            for f in &e.findings {
                text.push_str(&format!("  ! {f}\n"));
            }
        }
        text
    });
    if view.in_policy {
        Ok(())
    } else {
        let out: Vec<&str> = view
            .environments
            .iter()
            .filter(|e| !e.in_policy)
            .map(|e| e.env.as_str())
            .collect();
        Err(Failure::new(
            crate::exit::OUT_OF_POLICY,
            anyhow::anyhow!("out of policy: {}", out.join(", ")),
        ))
    }
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
