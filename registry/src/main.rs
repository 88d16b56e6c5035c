//! `stackpin-registry`: loads settings, sets up logging, opens the registry
//! and serves it until SIGINT or SIGTERM. Subcommands print the log key,
//! create tokens and check settings files.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use stackpin_core::signing::TrustedKeys;
use stackpin_registry::auth::{self, Role};
use stackpin_registry::config::{self, Flags, LogFormat, Settings};
use stackpin_registry::registry::OriginSource;
use stackpin_registry::{Registry, server, storage};

/// jemalloc instead of glibc's allocator: an index rebuild spent about a
/// third of its time in glibc's malloc and free and in the arena locks the
/// index writer and sled's threads contend on; with jemalloc the same
/// rebuild took 0.6 times as long at the same peak memory (mimalloc: 0.65
/// times, at 1.6 times the memory). See BENCHMARKS.md, "Index rebuild".
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The stackpin registry server. With no subcommand it serves.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    flags: Flags,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print the log's verifier key (C2SP signed-note vkey) of the data
    /// folder (or log_signing_key); never makes one unless --create.
    Key(Box<KeyArgs>),
    /// Manage bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Check or print settings files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Rebuild the index from the log, check the log against its stored
    /// signed checkpoints, store a checkpoint of it, and exit.
    Recover(Box<RecoverArgs>),
    /// Make this storage (a mirror, a replicated bucket) the log's writer,
    /// in a new epoch that never forks the log: run with no registry or
    /// mirror on it, then start the registry writable on it.
    Promote(Box<PromoteArgs>),
}

#[derive(clap::Args)]
struct PromoteArgs {
    /// Who promotes, recorded in the promotion entry.
    #[arg(long)]
    actor: String,
    /// text or json.
    #[arg(long, default_value = "text")]
    output: OutputFormat,
    #[command(flatten)]
    flags: Flags,
}

#[derive(clap::Args)]
struct KeyArgs {
    /// Make the default log key in the data folder when there is none yet
    /// (for a registry about to start there; one that starts makes it).
    #[arg(long)]
    create: bool,
    #[command(flatten)]
    flags: Flags,
}

#[derive(clap::Args)]
struct RecoverArgs {
    /// Sign a log that has entries but no stored signed checkpoint. Only
    /// after checking it by other means (`stackpin audit --data-dir` with
    /// a checkpoint a client saved): from then on its entries are signed.
    #[arg(long)]
    accept_unsigned: bool,
    #[command(flatten)]
    flags: Flags,
}

#[derive(clap::Subcommand)]
enum TokenCommand {
    /// Make a new token: prints it once, and the [[token]] entry (holding
    /// only its hash) to add to the settings file.
    Create {
        /// A name for logs and for the actor of the log entries it writes.
        #[arg(long)]
        name: String,
        /// publish, pin, read or admin (repeatable).
        #[arg(long = "role", required = true, value_parser = |s: &str| s.parse::<Role>().map_err(|e| e.to_string()))]
        roles: Vec<Role>,
        /// Limit the token to these environments (repeatable): where it
        /// may pin, and which environments' OCI tags it reads.
        #[arg(long = "env")]
        envs: Vec<String>,
        /// Refuse the token from this long after now on (`90d`, `12h`).
        #[arg(long, value_parser = config::tokens::parse_expiry)]
        expires_in: Option<std::time::Duration>,
    },
    /// List the configured tokens: names, roles, scopes, creation and
    /// expiry (the file holds hashes only; no secret is shown).
    List {
        /// text or json.
        #[arg(long, default_value = "text")]
        output: OutputFormat,
        #[command(flatten)]
        flags: Box<Flags>,
    },
    /// Remove a token's entry from the settings file (--config), checked
    /// as a start would check it, and ask a registry running on the data
    /// folder on this machine to reload (SIGHUP): it is refused from the
    /// next request on.
    Revoke {
        /// The token's name.
        name: String,
        /// text or json.
        #[arg(long, default_value = "text")]
        output: OutputFormat,
        #[command(flatten)]
        flags: Box<Flags>,
    },
}

/// How `token list` and `token revoke` print.
#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(clap::Subcommand)]
enum ConfigCommand {
    /// Validate settings files, layered in order (later ones win); errors
    /// name the key.
    Check {
        /// The settings files, in layering order (later ones win).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// Check the settings alone, not the files they name (keys, TLS
        /// certificates): for settings meant for another machine.
        #[arg(long)]
        settings_only: bool,
    },
    /// Print a commented example with every key and its default.
    Example,
}

/// Sets up logging in the configured format, then logs what loading the
/// settings warned about.
fn init_logging(settings: &Settings) {
    init_subscriber(settings.log_format);
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
}

fn init_subscriber(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    return_large_buffers_to_the_system();
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Key(args)) => {
            let settings = Settings::load(&args.flags)?;
            let default_key = settings.data_dir.join("log-key.pem");
            if settings.log_signing_key.is_none() && !args.create && !default_key.exists() {
                let abs = |p: &std::path::Path| {
                    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
                };
                eprintln!(
                    "Error: no log key here: looked for {} (data folder {}), which a registry \
                     makes at its first start there. Run this with the running registry's \
                     --data-dir or --config (or in its working folder); --create makes the key \
                     now, for a registry about to start with this data folder",
                    abs(&default_key).display(),
                    abs(&settings.data_dir).display()
                );
                for (pid, dir) in running_registries() {
                    eprintln!(
                        "a registry runs on this machine: pid {pid}, data folder {} \
                         (`stackpin-registry key --data-dir {}`, unless its --config names \
                         another)",
                        dir.display(),
                        dir.display()
                    );
                }
                std::process::exit(2);
            }
            for warning in &settings.warnings {
                eprintln!("warning: {warning}");
            }
            // A data folder that does not exist yet holds no log: nothing
            // to read, and printing a key creates no folder.
            let url = settings.storage_url()?;
            let store: Arc<dyn object_store::ObjectStore> = match &url {
                storage::StorageUrl::File(root) if !root.exists() => {
                    Arc::new(object_store::memory::InMemory::new())
                }
                _ => storage::open(&url, &settings.storage_options())?,
            };
            let (signer, source) = settings.signer(&store).await?;
            let why = match source {
                OriginSource::Stored => "the origin this log has signed as",
                OriginSource::Configured => "from the log_origin setting; a new log",
                OriginSource::Derived => "derived from the log key; a new log",
            };
            eprintln!("log origin {} ({why})", signer.name());
            println!("{}", signer.vkey());
            return Ok(());
        }
        Some(Command::Token(command)) => return token(command),
        Some(Command::Config(ConfigCommand::Check {
            files,
            settings_only,
        })) => {
            let checked = Settings::check_files(files).and_then(|s| {
                if *settings_only {
                    Ok(())
                } else {
                    s.check_inputs()
                }
            });
            if let Err(e) = checked {
                // Invalid input, like every other: exit 2.
                eprintln!("Error: {e:#}");
                std::process::exit(2);
            }
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            println!("{}: ok", names.join(" + "));
            return Ok(());
        }
        Some(Command::Config(ConfigCommand::Example)) => {
            print!("{}", config::EXAMPLE);
            return Ok(());
        }
        Some(Command::Promote(args)) => {
            let settings = Settings::load(&args.flags)?;
            return promote(&settings, args).await;
        }
        Some(Command::Recover(args)) => {
            let settings = Settings::load(&args.flags)?;
            init_logging(&settings);
            return recover(settings, args.accept_unsigned).await;
        }
        None => {}
    }
    let settings = Settings::load(&cli.flags)?;
    init_logging(&settings);
    serve(settings, cli.flags).await
}

/// `promote`: a new epoch on this storage (see `promote.rs`).
async fn promote(settings: &Settings, args: &PromoteArgs) -> anyhow::Result<()> {
    let promoted = stackpin_registry::promote::run(settings, &args.actor).await?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&promoted)?),
        OutputFormat::Text => {
            println!(
                "promoted: epoch {} ({}) begins at log entry {}, after the {} entries of {} this \
                 storage held; {} object(s) past them set aside{}. Start the registry writable \
                 on this storage; what the old primary wrote past entry {} is the loss window \
                 (`stackpin loss-window`).",
                promoted.epoch,
                promoted.origin,
                promoted.previous_size,
                promoted.previous_size,
                promoted.previous_origin,
                promoted.set_aside.len(),
                if promoted.set_aside.is_empty() {
                    String::new()
                } else {
                    format!(
                        " under {}/{}",
                        stackpin_registry::promote::SET_ASIDE,
                        promoted.epoch
                    )
                },
                promoted.previous_size,
            );
        }
    }
    Ok(())
}

/// `token create`, `list` and `revoke`.
fn token(command: &TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            name,
            roles,
            envs,
            expires_in,
        } => {
            let (token, entry) = auth::create_token(name, roles, envs, *expires_in)?;
            let block = toml::to_string(&serde_wrap(entry)).context("printing the entry")?;
            println!("token (shown once; keep it in a secret store):\n{token}\n");
            println!("add to the settings file:\n{block}");
        }
        TokenCommand::List { output, flags } => {
            let settings = invalid_exits(Settings::load(flags));
            let tokens = config::tokens::list(&settings);
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&tokens)?),
                OutputFormat::Text if tokens.is_empty() => {
                    println!(
                        "no tokens configured: authentication is off unless client certificates are mapped"
                    );
                }
                OutputFormat::Text => {
                    for t in &tokens {
                        let scope = if t.envs.is_empty() {
                            "all environments".to_owned()
                        } else {
                            t.envs.join(",")
                        };
                        let when = |t: Option<stackpin_core::time::Timestamp>| {
                            t.map_or_else(|| "-".to_owned(), |t| t.to_string())
                        };
                        println!(
                            "{:<20} roles {:<22} {:<20} created {:<28} expires {}{}",
                            t.name,
                            t.roles.join(","),
                            scope,
                            when(t.created),
                            when(t.expires),
                            if t.expired { " (EXPIRED)" } else { "" }
                        );
                    }
                }
            }
        }
        TokenCommand::Revoke {
            name,
            output,
            flags,
        } => {
            let done = invalid_exits(config::tokens::revoke(flags, name));
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&done)?),
                OutputFormat::Text => {
                    println!(
                        "revoked token {:?}: removed from {}",
                        done.name,
                        done.file.display()
                    );
                    match done.signalled_pid {
                        Some(pid) => println!(
                            "asked the registry running on this data folder (pid {pid}) to \
                             reload: it refuses the token from the next request on"
                        ),
                        None => println!(
                            "no registry runs on this data folder here; a registry elsewhere \
                             refuses the token once it reloads (SIGHUP, or when it sees the \
                             file change)"
                        ),
                    }
                }
            }
        }
    }
    Ok(())
}

/// The value, or the error printed and exit 2 for invalid input (the
/// code of every other refusal of input) and 6 for storage it could
/// not write.
fn invalid_exits<T>(r: stackpin_registry::error::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            eprintln!("Error: {e}");
            let code = match e.kind() {
                stackpin_registry::error::Kind::Invalid => 2,
                _ => 6,
            };
            std::process::exit(code);
        }
    }
}

/// The registries serving on this machine that this user can see, with
/// their data folders (from `--data-dir`, `STACKPIN_DATA_DIR` or the
/// default, from their working folder), for a `key` run in the wrong
/// place.
fn running_registries() -> Vec<(u32, std::path::PathBuf)> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut found = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_registry = args
            .first()
            .is_some_and(|a| a.rsplit('/').next() == Some("stackpin-registry"));
        let subcommand = args
            .get(1)
            .is_some_and(|a| ["key", "token", "config", "recover"].contains(&a.as_str()));
        if !is_registry || subcommand {
            continue;
        }
        let flag = args.iter().enumerate().find_map(|(i, a)| {
            a.strip_prefix("--data-dir=")
                .map(str::to_owned)
                .or_else(|| {
                    (a == "--data-dir")
                        .then(|| args.get(i + 1).cloned())
                        .flatten()
                })
        });
        let from_env = || {
            let environ = std::fs::read(p.path().join("environ")).ok()?;
            environ
                .split(|b| *b == 0)
                .filter_map(|v| std::str::from_utf8(v).ok())
                .find_map(|v| v.strip_prefix("STACKPIN_DATA_DIR=").map(str::to_owned))
        };
        let dir = std::path::PathBuf::from(
            flag.or_else(from_env)
                .unwrap_or_else(|| stackpin_registry::config::DEFAULT_DATA_DIR.to_owned()),
        );
        let dir = match std::fs::read_link(p.path().join("cwd")) {
            Ok(cwd) if dir.is_relative() => cwd.join(dir),
            _ => dir,
        };
        found.push((pid, dir));
    }
    found
}

/// `[[token]]` as a one-element array of tables.
fn serde_wrap(
    entry: auth::TokenConfig,
) -> std::collections::BTreeMap<&'static str, Vec<auth::TokenConfig>> {
    [("token", vec![entry])].into_iter().collect()
}

/// The registry's options from `settings`.
async fn registry_options(
    settings: &Settings,
) -> anyhow::Result<stackpin_registry::registry::Options> {
    let url = settings.storage_url()?;
    let store = storage::open(&url, &settings.storage_options())?;
    let base = if settings.read_only {
        let verifier = settings.log_verifier()?;
        tracing::info!(
            origin = verifier.name(),
            "read-only: serving the log another registry writes into this storage"
        );
        stackpin_registry::registry::Options::read_only(store, verifier)
    } else {
        let (signer, source) = settings.signer(&store).await?;
        tracing::info!(origin = signer.name(), source = ?source, "log origin");
        stackpin_registry::registry::Options::new(store, signer)
    };
    let trusted = match &settings.trusted_keys {
        Some(path) => TrustedKeys::load(path).context("loading trusted publisher keys")?,
        None => {
            tracing::warn!(
                "no trusted publisher keys (--trusted-keys, STACKPIN_TRUSTED_KEYS or \
                 trusted_keys): publishes are refused until keys are configured or added with \
                 `stackpin key add`"
            );
            TrustedKeys::default()
        }
    };
    tracing::info!(keys = trusted.keys().len(), "trusted publisher keys loaded");
    let witnesses = settings.witnesses()?;
    if !witnesses.is_empty() {
        let names: Vec<&str> = witnesses.iter().map(|w| w.label.as_str()).collect();
        tracing::info!(witnesses = ?names, "checkpoints go to witnesses for cosignatures");
    }
    let standbys = settings.standbys()?;
    for standby in &standbys {
        standby
            .connect()
            .with_context(|| format!("setting standby: {}", standby.label))?;
    }
    for own in settings.own_standbys()? {
        tracing::warn!(
            standby = own,
            "[[standby]] names this registry's own storage (a promoted standby started with its \
             old primary's settings?): not read; name the other region's storage, where the \
             mirror of this log goes"
        );
    }
    if !standbys.is_empty() {
        let names: Vec<&str> = standbys.iter().map(|s| s.label.as_str()).collect();
        tracing::info!(standbys = ?names, "standbys' storages are read for a promotion there");
    }
    Ok(stackpin_registry::registry::Options {
        trusted,
        witnesses,
        standbys,
        limits: settings.limits(),
        ..base
    })
}

/// `recover`: a fresh index from the log, checked, and a stored checkpoint.
async fn recover(settings: Settings, accept_unsigned: bool) -> anyhow::Result<()> {
    if settings.read_only {
        anyhow::bail!(
            "recover signs the log it rebuilds; a read-only registry holds no signing key: run \
             it without read_only"
        );
    }
    let url = settings.storage_url()?;
    let options = stackpin_registry::registry::Options {
        accept_unsigned,
        ..registry_options(&settings).await?
    };
    let registry = Registry::recover_at(&settings.data_dir, options)
        .await
        .with_context(|| format!("recovering the registry on {url:?}"))?;
    registry.flush().await.context("storing the checkpoint")?;
    let cp = registry.checkpoint()?;
    let stored = if cp.size == 0 {
        stackpin_core::layout::CHECKPOINT.to_owned()
    } else {
        format!(
            "{} and {}",
            stackpin_core::layout::CHECKPOINT,
            stackpin_core::layout::checkpoint_history_key(cp.size)
        )
    };
    println!(
        "recovered: {} log entries, root {}; signed and stored as {stored}",
        cp.size, cp.root
    );
    Ok(())
}

async fn serve(settings: Settings, flags: Flags) -> anyhow::Result<()> {
    let url = settings.storage_url()?;
    // Bind first: a port in use stops the start before the folder is
    // touched.
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let tiles = match settings.http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr} (http_listen)"))?,
        ),
        None => None,
    };
    let options = registry_options(&settings).await?;
    let authorizer = settings.authorizer()?;
    if authorizer.enabled() {
        tracing::info!(
            tokens = settings.token.len(),
            client_certs = settings.client_cert.len(),
            anonymous_read = settings.anonymous_read,
            "authentication on"
        );
    } else {
        tracing::warn!(
            listen = %settings.listen,
            "no tokens or client certificates configured: authentication is off, which is only \
             allowed on a loopback address (the embedded default)"
        );
    }
    let registry = Registry::open_at(&settings.data_dir, options)
        .await
        .with_context(|| format!("opening the registry on {url:?}"))?;
    if let storage::StorageUrl::File(root) = &url
        && !settings.read_only
    {
        let removed = storage::remove_staging(root);
        if removed > 0 {
            tracing::info!(
                files = removed,
                "removed partial writes a killed process left in the folder"
            );
        }
    }
    tracing::info!(
        data_dir = %settings.data_dir.display(), storage = ?url, log_key = %registry.log_vkey(),
        "registry open"
    );
    let mut options = server::Options::from_settings(&settings, authorizer)?;
    let registry = Arc::new(registry);
    let holder = stackpin_registry::webhooks::holder_id(&settings.data_dir)?;
    let webhooks = Arc::new(stackpin_registry::webhooks::Webhooks::start(
        registry.clone(),
        settings.webhooks()?,
        holder,
    ));
    let deliveries = webhooks.deliveries();
    let reloader = Arc::new(stackpin_registry::reload::Reloader::new(
        flags,
        settings,
        options.auth.clone(),
        options.tls.clone(),
        registry.clone(),
        webhooks,
    ));
    if let Some(site) = &mut options.web {
        site.webhooks = deliveries;
        site.reload = reloader.status();
    }
    // Installed before the listeners announce themselves: a SIGHUP sent
    // right after start reloads rather than ends the process.
    reloader.spawn()?;
    let shutdown = shutdown_signal()?;
    let listeners = server::Listeners {
        grpc: listener,
        tiles,
    };
    server::run_all(listeners, registry, options, shutdown).await
}

/// A future that completes on SIGINT or SIGTERM. The handlers are installed
/// now, before the server announces it is listening, so a signal sent right
/// after start is a graceful stop rather than the default kill.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutdown requested; finishing in-flight requests");
    })
}

/// Makes glibc's allocator hand every buffer of 128 KiB or more back to the
/// system when it is freed. By default glibc raises that threshold each
/// time such a buffer is freed, after which artifact chunks and storage
/// parts come from per-thread arenas that keep their memory: 16 concurrent
/// 60 MiB publishes then peaked at 365 MiB resident although the byte
/// budget held what was in use to 256 MiB; with the threshold fixed, 199
/// MiB (BENCHMARKS.md, "Bounded memory"). mimalloc did worse (599 MiB).
#[allow(unsafe_code)]
fn return_large_buffers_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_option_of_every_command_has_a_help_line() {
        let cmd = <super::Cli as clap::CommandFactory>::command();
        let missing = stackpin_registry::config::undocumented(&cmd, "");
        assert!(missing.is_empty(), "no help line: {missing:#?}");
    }
}
