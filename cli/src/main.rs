//! `stackpin`: the command line for release pipelines (publish, pin),
//! operators (resolve, restore) and auditors. It talks to the registry over
//! gRPC only and verifies what it receives locally.

mod artifacts;
mod bench;
mod client;
mod exit;
mod keygen;
mod keys;
mod pins;
mod publish;
mod trust;
mod verify;
mod view;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::view::Format;

/// Parses a command-line value with the registry's own parser, so the CLI
/// rejects exactly what the registry would, before anything is sent.
fn parse<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr<Err = stackpin_core::Error>,
{
    text.parse()
        .map_err(|e: stackpin_core::Error| e.to_string())
}

/// A clap value parser from a constructor returning the registry's error.
fn parse_with<T>(
    f: fn(&str) -> Result<T, stackpin_core::Error>,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: Clone + Send + Sync + 'static,
{
    move |text| f(text).map_err(|e| e.to_string())
}

/// Publish, pin and restore ObjectOS artifacts with a stackpin registry.
#[derive(Parser)]
#[command(name = "stackpin", version, about, after_help = exit::HELP)]
struct Cli {
    #[command(flatten)]
    connection: client::Connection,
    /// Output for people (text) or scripts (json).
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    output: Format,
    /// Where the last verified checkpoint of each log is kept (default:
    /// $XDG_CONFIG_HOME/stackpin or ~/.config/stackpin).
    #[arg(long, global = true, env = "STACKPIN_STATE_DIR")]
    state_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a new Ed25519 publisher key pair.
    Keygen(keygen::Args),
    /// Sign and publish an artifact under a release id.
    Publish(publish::Args),
    /// Record that an artifact went live in an environment.
    Pin(pins::PinArgs),
    /// Which artifact was live in an environment at an instant.
    Resolve(pins::ResolveArgs),
    /// An environment's pins, newest first.
    History(pins::HistoryArgs),
    /// Download an artifact, verified against its digest.
    Fetch(artifacts::FetchArgs),
    /// Resolve, download and verify the artifact live at an instant, and
    /// write it atomically.
    Restore(artifacts::RestoreArgs),
    /// List published artifacts.
    List(artifacts::ListArgs),
    /// Show one artifact's record.
    Stat(artifacts::StatArgs),
    /// Tag a database snapshot with the artifact live when it was taken.
    SnapshotTag(artifacts::SnapshotTagArgs),
    /// Fetch, verify and remember the log's latest checkpoint.
    Checkpoint(verify::CheckpointArgs),
    /// Check an artifact and its .tlog-proof offline.
    Verify(verify::VerifyArgs),
    /// Check the whole log: entries, root, signatures, pin chains, blobs.
    Audit(verify::AuditArgs),
    /// Manage trusted publisher keys (each change is a log entry).
    #[command(subcommand)]
    Key(keys::Command),
    /// Drive a running registry with load and report throughput and latency.
    Bench(bench::Args),
}

async fn dispatch(cli: &Cli) -> exit::Outcome {
    let (server, format) = (&cli.connection, cli.output);
    let state = trust::state_dir(cli.state_dir.as_deref());
    let state = state.as_deref();
    match &cli.command {
        Command::Keygen(a) => keygen::run(a, format),
        Command::Publish(a) => publish::run(a, server, format).await,
        Command::Pin(a) => pins::pin(a, server, format).await,
        Command::Resolve(a) => pins::resolve(a, server, format).await,
        Command::History(a) => pins::history(a, server, format).await,
        Command::Fetch(a) => artifacts::fetch(a, server, format).await,
        Command::Restore(a) => artifacts::restore(a, server, state, format).await,
        Command::List(a) => artifacts::list(a, server, format).await,
        Command::Stat(a) => artifacts::stat(a, server, format).await,
        Command::SnapshotTag(a) => artifacts::snapshot_tag(a, server, format).await,
        Command::Checkpoint(a) => verify::checkpoint(a, server, state, format).await,
        Command::Verify(a) => verify::verify(a, format),
        Command::Audit(a) => verify::audit(a, server, state, format).await,
        Command::Key(c) => keys::run(c, server, format).await,
        Command::Bench(a) => bench::run(a, server, format).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(dispatch(&cli)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(failure) => {
            eprintln!("error: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}
