//! `stackpin-registry`: parses settings, sets up logging, opens the registry
//! and serves it until SIGINT or SIGTERM.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use stackpin_registry::config::{LogKeyArgs, ServerConfig};
use stackpin_registry::signing::TrustedKeys;
use stackpin_registry::{Registry, server, storage};

/// The stackpin registry server. With no subcommand it serves.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ServerConfig,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print the log's verifier key (C2SP signed-note vkey), generating the
    /// default key if there is none yet.
    Key(LogKeyArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Some(Command::Key(args)) = &cli.command {
        let signer = args.signer().context("loading the log key")?;
        println!("{}", signer.vkey());
        return Ok(());
    }
    let config = cli.config;
    let signer = config.log.signer().context("loading the log key")?;

    let trusted = match &config.trusted_keys {
        Some(path) => TrustedKeys::load(path).context("loading trusted publisher keys")?,
        None => {
            tracing::warn!(
                "no --trusted-keys given: publishes will be refused until keys are configured"
            );
            TrustedKeys::default()
        }
    };
    tracing::info!(keys = trusted.keys().len(), "trusted publisher keys loaded");
    let data_dir = &config.log.data_dir;
    let url = config.storage_url()?;
    let store = storage::open(&url, &config.s3_options())?;
    let registry = Registry::open_at(data_dir, store, trusted, signer, config.limits())
        .await
        .with_context(|| format!("opening the registry on {url:?}"))?;
    tracing::info!(
        data_dir = %data_dir.display(), storage = ?url, log_key = %registry.log_vkey(),
        "registry open"
    );

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    server::run(listener, Arc::new(registry), shutdown_signal()).await
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
