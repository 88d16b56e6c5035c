//! `stackpin drill run|record|list`: restore drills, run here and
//! recorded, recorded when done by other means, or listed.
//!
//! | module | holds |
//! |---|---|
//! | [`run`] | `drill run`: the orchestration, its checks and steps |
//! | [`postgres`] | the PostgreSQL cluster a drill recovers, `--print-postgresql` |
//! | [`litestream`] | Litestream restores and SQLite snapshot files |

mod litestream;
mod postgres;
mod run;

use std::path::Path;
use std::time::Duration;

use stackpin_core::entry::{DrillCheck, DrillStep, Driver, Entry};
use stackpin_core::ids::EnvName;
use stackpin_core::time::Timestamp;
use stackpin_proto::v1 as pb;

use super::evidence::{ListArgs, Shown, checked, drill_line, list, send};
use crate::exit::{Failure, Outcome};
use crate::view::{Format, wire_time};

pub use postgres::is_root;
use run::RunArgs;

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
        DrillCmd::Run(a) => run::run(a, server, state, format).await,
        DrillCmd::Record(a) => record(a, server, state, format).await,
        DrillCmd::List(a) => list(a, "drill", server, state, format).await,
    }
}

#[derive(clap::Args)]
pub struct RecordArgs {
    /// The environment whose restore was drilled.
    #[arg(long, value_parser = crate::parse::<EnvName>)]
    env: EnvName,
    /// How the backup was made: sqlite, postgresql, litestream, pgbackrest, barman, other.
    #[arg(long, value_parser = crate::parse::<Driver>)]
    driver: Driver,
    /// The database instant restored to (`--target`, its former name, is
    /// still read).
    #[arg(long = "at", alias = "target", value_parser = crate::parse_time)]
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
    #[arg(long, value_parser = crate::parse_time)]
    started_at: Option<Timestamp>,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn record(
    args: &RecordArgs,
    server: &crate::client::Connection,
    state: Option<&std::path::Path>,
    format: Format,
) -> Outcome {
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
    let shown = record_drill(server, state, &args.log_key, &drill).await?;
    format.emit(&shown, || {
        let line = match &shown.entry {
            Entry::Drill(d) => drill_line(d),
            _ => String::new(),
        };
        format!(
            "recorded {line}\nlog index  {} ({})\n",
            shown.log_index,
            checked(&shown)
        )
    });
    if passed {
        Ok(())
    } else {
        Err(Failure::new(
            crate::exit::OUT_OF_POLICY,
            anyhow::anyhow!("the drill recorded failed"),
        )
        .after_result())
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
    state: Option<&std::path::Path>,
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
    let shown = send(
        server,
        state,
        log_key,
        "drill",
        d.env.as_str(),
        message,
        |mut c, r| async move { c.record_drill(r).await },
    )
    .await?;
    match &shown.entry {
        Entry::Drill(e) if e.env == d.env && e.target == d.target && e.passed == passed => {
            Ok(shown)
        }
        _ => Err(Failure::verify(format!(
            "entry {} is not the drill sent",
            shown.log_index
        ))),
    }
}
