//! `stackpin-witness`: a C2SP tlog-witness for stackpin logs (and any log
//! that signs C2SP checkpoints with Ed25519). See `stackpin_registry::witness`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use stackpin_core::note::NoteVerifier;
use stackpin_core::witness::Cosigner;
use stackpin_registry::witness::Witness;

/// A transparency-log witness: cosigns checkpoints of the logs it trusts
/// after checking that each is consistent with the last one it cosigned.
#[derive(Parser)]
#[command(name = "stackpin-witness", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: Args,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print the witness's verifier key (cosignature/v1 vkey), generating
    /// its key if there is none yet: give it to the registry
    /// (`[[witness]]`) and to verifiers' policies.
    Key(Args),
}

#[derive(clap::Args, Clone)]
struct Args {
    /// The witness's name (a schema-less URL, e.g. witness.example.com/w1):
    /// part of its key id.
    #[arg(
        long,
        env = "STACKPIN_WITNESS_NAME",
        default_value = "stackpin.local/witness"
    )]
    name: String,
    /// Where the witness keeps its key (`witness-key.pem`) and, per log,
    /// the last checkpoint it cosigned.
    #[arg(
        long,
        env = "STACKPIN_WITNESS_DATA_DIR",
        default_value = "stackpin-witness-data"
    )]
    data_dir: PathBuf,
    /// The witness's signing key (PEM) [default: <data-dir>/witness-key.pem,
    /// created at first start].
    #[arg(long, env = "STACKPIN_WITNESS_KEY")]
    key: Option<PathBuf>,
    /// A log to witness: its verifier key, as `stackpin-registry key`
    /// prints it (repeatable). The witness knows a log by its origin.
    #[arg(long = "log", value_name = "VKEY")]
    logs: Vec<String>,
    /// A file of log verifier keys, one per line (blank lines and lines
    /// starting with # are ignored), besides any --log.
    #[arg(long, env = "STACKPIN_WITNESS_LOGS_FILE", value_name = "FILE")]
    logs_file: Option<PathBuf>,
    /// Where to serve `POST /add-checkpoint`.
    #[arg(
        long,
        env = "STACKPIN_WITNESS_LISTEN",
        default_value = "127.0.0.1:8555"
    )]
    listen: std::net::SocketAddr,
}

fn cosigner(args: &Args) -> anyhow::Result<Cosigner> {
    let (path, may_create) = match &args.key {
        Some(p) => (p.clone(), false),
        None => (args.data_dir.join("witness-key.pem"), true),
    };
    let key = stackpin_registry::config::load_key(&path, may_create, "--key")?;
    Cosigner::new(&args.name, key).map_err(|e| anyhow::anyhow!("--name: {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: never escape codes in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Some(Command::Key(args)) = &cli.command {
        println!("{}", cosigner(args)?.key().vkey());
        return Ok(());
    }
    let args = &cli.args;
    let mut vkeys = args.logs.clone();
    if let Some(path) = &args.logs_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--logs-file {}", path.display()))?;
        vkeys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    if vkeys.is_empty() {
        anyhow::bail!(
            "give at least one --log VKEY (or --logs-file): the logs this witness cosigns"
        );
    }
    let logs = vkeys
        .iter()
        .map(|v| NoteVerifier::parse(v).map_err(|e| anyhow::anyhow!("--log: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let witness = Witness::new(cosigner(args)?, logs, &args.data_dir)
        .with_context(|| format!("opening {}", args.data_dir.display()))?;
    stackpin_registry::witness::serve(listener, Arc::new(witness)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn it_names_itself_and_every_option_has_a_help_line() {
        let cmd = <super::Cli as clap::CommandFactory>::command();
        assert_eq!(cmd.get_name(), "stackpin-witness");
        assert!(
            cmd.get_about()
                .is_some_and(|a| a.to_string().contains("witness")),
            "{:?}",
            cmd.get_about()
        );
        let missing = stackpin_registry::config::undocumented(&cmd, "");
        assert!(missing.is_empty(), "no help line: {missing:#?}");
    }
}
