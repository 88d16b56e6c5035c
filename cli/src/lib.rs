//! `stackpin`: the command line for release pipelines (publish, pin),
//! operators (resolve, restore) and auditors. It talks to the registry over
//! gRPC only and verifies what it receives locally, with the same
//! `stackpin-core` code the registry uses.
//!
//! # Layout
//!
//! | module | responsibility |
//! |---|---|
//! | [`cmd`] | one module per command group, and the dispatch |
//! | [`client`] | connecting: URL, TLS, token |
//! | [`download`] | artifact downloads, verified against their digest |
//! | [`files`] | atomic writes, proof file paths, folder copies, the streaming digest of large files |
//! | [`progress`] | progress bars (indicatif) and their log-line fallback |
//! | [`reader`] | the verified reader: checkpoints accepted, entries proved, "nothing after" proved |
//! | [`trust`] | remembered checkpoints, the log key, trusted publisher keys |
//! | [`view`] | text and JSON output |
//! | [`exit`] | exit codes and the failure type |
//!
//! The load generator (`stackpin-bench`, `src/bin/`) uses this library too,
//! but is not part of the `stackpin` binary.

mod backups;
pub mod client;
mod cmd;
mod download;
pub mod exit;
mod files;
mod freshness;
mod offline;
mod place;
mod progress;
mod reader;
mod tiles;
mod trust;
pub mod view;

use std::process::ExitCode;

use clap::Parser;

use crate::view::Format;

/// Parses a command-line value with the registry's own parser, so the CLI
/// rejects exactly what the registry would, before anything is sent.
pub fn parse<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr<Err = stackpin_core::Error>,
{
    text.parse()
        .map_err(|e: stackpin_core::Error| e.to_string())
}

/// Parses an instant as people type it: RFC 3339, or `now`, `now-2h`,
/// `2h ago`, `@<unix seconds>` (see `Timestamp::parse_typed`). A relative
/// form is said back on stderr as the RFC 3339 instant it meant.
pub fn parse_time(text: &str) -> Result<stackpin_core::time::Timestamp, String> {
    use stackpin_core::time::Timestamp;
    let at = Timestamp::parse_typed(text, Timestamp::now()).map_err(|e| e.to_string())?;
    if text.trim().parse::<Timestamp>().is_err() {
        eprintln!("{text:?} is {at}");
    }
    Ok(at)
}

/// Parses a size: 4096, 4KiB, 512KiB, 8MiB or 1GiB (at least one byte).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(format!("{text:?}: use bytes or a KiB, MiB or GiB suffix")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a size of at least one byte"))
}

/// A clap value parser from a constructor returning the registry's error.
pub fn parse_with<T>(
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
    /// Where the last verified checkpoint of each log, and the log key of
    /// each server, are kept (default: $XDG_CONFIG_HOME/stackpin or
    /// ~/.config/stackpin).
    #[arg(long, global = true, env = "STACKPIN_STATE_DIR")]
    state_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: cmd::Command,
}

/// The `stackpin` command line's definition (for completions and man
/// pages).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Runs the `stackpin` command line.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    run_as(cmd::dispatch(&cli), cli.output)
}

/// A command line clap refused: printed as clap prints it, and with
/// `--output json` also as the JSON error object on standard output.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let args: Vec<String> = std::env::args().collect();
    let json = args
        .windows(2)
        .any(|w| w[0] == "--output" && w[1] == "json")
        || args.iter().any(|a| a == "--output=json");
    let _ = e.print();
    if json {
        let failure = exit::Failure::invalid(e.render().to_string().trim());
        view::stdout_line(&failure.to_json().to_string());
    }
    ExitCode::from(exit::INVALID)
}

/// Work an interrupted command still owes, such as letting go of a lock it
/// holds in a bucket (a folder's lock goes with the process): run after
/// the command is dropped, each bounded by [`CLEANUP_TIMEOUT`].
type Cleanups = std::sync::Mutex<
    Vec<(
        u64,
        std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    )>,
>;
static CLEANUPS: Cleanups = std::sync::Mutex::new(Vec::new());
static NEXT_CLEANUP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const CLEANUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs `work` if the command is interrupted before [`disarm`] is called
/// with the returned token.
pub(crate) fn on_interrupt(work: impl std::future::Future<Output = ()> + Send + 'static) -> u64 {
    let token = NEXT_CLEANUP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    CLEANUPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((token, Box::pin(work)));
    token
}

/// The work registered under `token` is no longer owed.
pub(crate) fn disarm(token: u64) {
    CLEANUPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|(t, _)| *t != token);
}

/// Resolves on SIGINT or SIGTERM with the conventional exit code (128 +
/// the signal); never, if the handlers cannot be installed.
async fn interrupted() -> u8 {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => tokio::select! {
                _ = int.recv() => 130,
                _ = term.recv() => 143,
            },
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        match tokio::signal::ctrl_c().await {
            Ok(()) => 130,
            Err(_) => std::future::pending().await,
        }
    }
}

/// Runs a command on a single-threaded runtime and turns its outcome into
/// the process's exit code (printing the failure first).
pub fn run(command: impl std::future::Future<Output = exit::Outcome>) -> ExitCode {
    run_as(command, Format::Text)
}

/// As [`run`]; with `--output json`, a failure is also printed on standard
/// output as a JSON error object (docs/json.md), so a script reads the
/// code, the registry's reason and the message from the same stream as
/// results.
pub fn run_as(
    command: impl std::future::Future<Output = exit::Outcome>,
    format: Format,
) -> ExitCode {
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
    // SIGINT and SIGTERM drop the command at its next await: temporaries
    // it holds are removed as they drop, and files are only ever replaced
    // by renames that run without an await between them.
    let interruptible = async {
        tokio::select! {
            outcome = command => outcome,
            signal = interrupted() => Err(exit::Failure::new(
                signal,
                anyhow::anyhow!("interrupted; no file was left half-written"),
            )),
        }
    };
    let outcome = runtime.block_on(interruptible);
    let owed = std::mem::take(
        &mut *CLEANUPS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    if outcome.is_err() {
        for (_, work) in owed {
            let _ = runtime.block_on(async { tokio::time::timeout(CLEANUP_TIMEOUT, work).await });
        }
    }
    // After an interrupt, a hash may still be reading on a blocking thread;
    // it writes nothing, so the process does not wait for it.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::from(exit::OK),
        Err(failure) => {
            eprintln!("error: {:#}", failure.error);
            // A failure that follows a printed result adds no second
            // object: the result says why (one object per run).
            if format == Format::Json && !failure.after_result {
                view::stdout_line(&failure.to_json().to_string());
            }
            ExitCode::from(failure.code)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_readme_exit_code_table_is_the_one_the_cli_uses() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
        )
        .unwrap();
        let section = readme.split("## Exit codes").nth(1).unwrap();
        let section = section.split("\n## ").next().unwrap();
        let codes = |lines: &mut dyn Iterator<Item = &str>| -> Vec<u8> {
            let mut out: Vec<u8> = lines
                .flat_map(|l| {
                    l.split(',')
                        .map(|c| c.trim().parse::<u8>())
                        .take_while(Result::is_ok)
                        .flatten()
                        .collect::<Vec<u8>>()
                })
                .collect();
            out.sort_unstable();
            out
        };
        let readme_codes = codes(
            &mut section
                .lines()
                .filter_map(|l| l.strip_prefix("| "))
                .filter_map(|l| l.split(" |").next()),
        );
        let help_codes = codes(
            &mut super::exit::HELP
                .lines()
                .filter_map(|l| l.strip_prefix("  "))
                .filter_map(|l| l.split("  ").next()),
        );
        assert_eq!(readme_codes, help_codes);
        assert_eq!(readme_codes, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 130, 143]);
        for code in readme_codes.iter().filter(|c| **c != 1) {
            assert_ne!(
                super::exit::name_of(*code),
                "failure",
                "exit {code} has no name"
            );
        }
    }

    #[test]
    fn every_option_of_every_command_has_a_help_line() {
        let missing = stackpin_registry::config::undocumented(&super::command(), "");
        assert!(missing.is_empty(), "no help line: {missing:#?}");
    }
}
