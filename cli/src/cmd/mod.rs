//! One module per command group. Command modules share the helpers at the
//! top of the crate (client, downloads, files, trust, views) and never
//! each other's internals, except along these edges, none of which leads
//! back:
//!
//! - `restore` asks the question `resolve` asks (`resolve::ask`);
//! - `resolve`, `history`, `artifacts` and `snapshot` take the flags, and
//!   `history` proves listings, the way `pins` does;
//! - `rollback` reads proved history pages as `history` does, and records
//!   its pin as `pin` does;
//! - `drill run` restores as `restore` does (`restore::restore_verified`),
//!   and both render the database side with `targets`;
//! - `snapshot-tag` of a backup tool's backup is `backup_tag`;
//! - `snapshot`, `drill` and `watch` record, read and show entries with the
//!   shared `evidence` module.

pub mod artifacts;
mod backup_tag;
pub mod drill;
pub mod evidence;
pub mod history;
pub mod keygen;
pub mod keys;
pub mod loss_window;
pub mod mirror;
pub mod pins;
pub mod posture;
pub mod publish;
pub mod resolve;
pub mod restore;
pub mod rollback;
pub mod shell;
pub mod snapshot;
pub mod targets;
pub mod trust;
pub mod verify;
pub mod watch;

use clap::Subcommand;

use crate::exit::Outcome;

#[derive(Subcommand)]
pub enum Command {
    /// Make a new Ed25519 publisher key pair.
    Keygen(keygen::Args),
    /// Sign and publish an artifact under a release id.
    Publish(publish::Args),
    /// Record that an artifact went live in an environment.
    Pin(pins::PinArgs),
    /// Put back the release live before the current one (or --steps N
    /// back, or --to a release live before), found in proved history and
    /// recorded as a pin; the database is not rolled back.
    Rollback(rollback::RollbackArgs),
    /// Which artifact was live in an environment at an instant.
    Resolve(resolve::ResolveCmd),
    /// An environment's pins, newest first.
    History(history::HistoryArgs),
    /// Every environment at a glance: what is live now, since when, by
    /// whom, its number of pins and how long since the last one.
    #[command(visible_alias = "envs")]
    Status(history::StatusArgs),
    /// Each entry as it lands (the pins of --env), verified, optionally
    /// running a command for each.
    Watch(watch::WatchArgs),
    /// Download an artifact, verified against its digest.
    Fetch(artifacts::FetchArgs),
    /// Resolve, download and verify the artifact live at an instant, and
    /// write it atomically (from a registry, or with --from from a mirror
    /// or data folder with no registry running).
    Restore(Box<restore::RestoreArgs>),
    /// Copy a log (a registry's, a data folder's, a bucket's) into a folder
    /// or bucket in the registry's storage layout, verified against its
    /// signed checkpoint, incrementally; --follow keeps it current.
    Mirror(mirror::MirrorArgs),
    /// After a promotion: what the old primary wrote that the promoted log
    /// does not hold, by request id, read from both storages.
    LossWindow(loss_window::LossWindowArgs),
    /// List published artifacts.
    List(artifacts::ListArgs),
    /// Show one artifact's record.
    Stat(artifacts::StatArgs),
    /// Record a database backup in the log, paired with the artifact live
    /// at its instant; with --file FILE, also write FILE.stackpin.json.
    SnapshotTag(snapshot::SnapshotTagArgs),
    /// The backups recorded for an environment.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// Restore drills: run one and record it, record one done by other
    /// means, or list them.
    #[command(subcommand)]
    Drill(drill::DrillCmd),
    /// Each environment's backups and drills against its recovery targets
    /// (RPO, RTO, drill interval); exit 8 when one is out of policy.
    Posture(posture::PostureArgs),
    /// Fetch, verify and remember the log's latest checkpoint.
    Checkpoint(verify::CheckpointArgs),
    /// Check an artifact and its .tlog-proof offline.
    Verify(verify::VerifyArgs),
    /// Check the whole log: entries, root, signatures, pin chains, blobs.
    Audit(verify::AuditArgs),
    /// Manage trusted publisher keys (each change is a log entry).
    #[command(subcommand)]
    Key(keys::Command),
    /// What is remembered of the logs met so far, and each server's log key:
    /// list, add a server's key, or forget a log.
    #[command(subcommand)]
    Trust(trust::Command),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(shell::CompletionsArgs),
    /// Print the man page, or write one per command with --out-dir.
    Man(shell::ManArgs),
}

pub async fn dispatch(cli: &crate::Cli) -> Outcome {
    let (server, format) = (&cli.connection, cli.output);
    let state = crate::trust::state_dir(cli.state_dir.as_deref());
    let state = state.as_deref();
    match &cli.command {
        Command::Keygen(a) => keygen::run(a, format),
        Command::Publish(a) => publish::run(a, server, format).await,
        Command::Pin(a) => pins::pin(a, server, state, format).await,
        Command::Rollback(a) => rollback::rollback(a, server, state, format).await,
        Command::Resolve(a) => resolve::resolve(a, server, state, format).await,
        Command::History(a) => history::history(a, server, state, format).await,
        Command::Status(a) => history::status(a, server, state, format).await,
        Command::Watch(a) => watch::run(a, server, state, format).await,
        Command::Fetch(a) => artifacts::fetch(a, server, state, format).await,
        Command::Restore(a) => restore::restore(a, server, state, format).await,
        Command::LossWindow(a) => loss_window::run(a, format).await,
        Command::Mirror(a) => mirror::mirror(a, server, format).await,
        Command::List(a) => artifacts::list(a, server, format).await,
        Command::Stat(a) => artifacts::stat(a, server, state, format).await,
        Command::SnapshotTag(a) => snapshot::snapshot_tag(a, server, state, format).await,
        Command::Snapshot(c) => snapshot::snapshot(c, server, state, format).await,
        Command::Drill(c) => drill::drill(c, server, state, format).await,
        Command::Posture(a) => posture::posture(a, server, state, format).await,
        Command::Checkpoint(a) => verify::checkpoint(a, server, state, format).await,
        Command::Verify(a) => verify::verify(a, format),
        Command::Audit(a) => verify::audit(a, server, state, format).await,
        Command::Key(c) => keys::run(c, server, format).await,
        Command::Trust(c) => trust::run(c, server, state, format),
        Command::Completions(a) => shell::completions(a),
        Command::Man(a) => shell::man(a),
    }
}
