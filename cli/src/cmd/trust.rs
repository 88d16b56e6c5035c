//! `stackpin trust`: what the CLI remembers of the logs it has met (the
//! last verified checkpoint per log and key, and the log key of each
//! server), remembering a server's key on purpose, and forgetting a log on
//! purpose.

use std::path::Path;

use serde::Serialize;

use crate::exit::{Failure, NOT_FOUND, Outcome};
use crate::trust::Remembered;
use crate::view::Format;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Show every remembered checkpoint (origin, key id, size, root) and
    /// the log key remembered for each server.
    List,
    /// Remember the log key of the server (--server): from then on every
    /// command proves that server's answers against it, with no --log-key.
    Add {
        /// The log's verifier key (the line `stackpin-registry key`
        /// prints), or a file holding it.
        vkey: String,
    },
    /// Forget what is remembered of a log (every key), so the next command
    /// accepts whatever checkpoint that origin shows. Only for a log you
    /// know was re-created or re-keyed: it drops the rollback and fork
    /// protection for that log.
    Forget {
        /// The log's origin (the first line of its checkpoints, as `trust
        /// list` shows it).
        origin: String,
    },
}

#[derive(Serialize)]
struct Forgotten {
    forgotten: Vec<Remembered>,
}

/// One log in `trust list`: its remembered checkpoint (if any was seen)
/// and the servers whose key it is.
#[derive(Serialize)]
struct Listed {
    #[serde(flatten)]
    checkpoint: Option<Remembered>,
    /// For a log known only by `trust add`: its origin and key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "log_key_id")]
    key_id: Option<String>,
    /// The servers this log's key is remembered for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    servers: Vec<String>,
}

#[derive(Serialize)]
struct Added {
    server: String,
    origin: String,
    #[serde(rename = "log_key_id")]
    key_id: String,
    /// False when the same key was remembered for the server already.
    changed: bool,
}

pub fn run(
    command: &Command,
    conn: &crate::client::Connection,
    state: Option<&Path>,
    format: Format,
) -> Outcome {
    let Some(dir) = state else {
        return Err(Failure::invalid(
            "no state folder: pass --state-dir (or set HOME or XDG_CONFIG_HOME)",
        ));
    };
    match command {
        Command::List => {
            let mut servers = crate::trust::server_keys(dir)?;
            let mut all: Vec<Listed> = crate::trust::remembered(dir)?
                .into_iter()
                .map(|r| {
                    let (mine, rest): (Vec<_>, Vec<_>) = servers
                        .drain(..)
                        .partition(|k| k.origin == r.origin && k.key_id == r.key_id);
                    servers = rest;
                    Listed {
                        checkpoint: Some(r),
                        origin: None,
                        key_id: None,
                        servers: mine.into_iter().map(|k| k.server).collect(),
                    }
                })
                .collect();
            for k in servers {
                all.push(Listed {
                    checkpoint: None,
                    origin: Some(k.origin),
                    key_id: Some(k.key_id),
                    servers: vec![k.server],
                });
            }
            format.emit(&serde_json::json!({ "logs": &all }), || {
                if all.is_empty() {
                    return format!("nothing remembered in {}", dir.display());
                }
                let mut out = String::from("ORIGIN  KEY ID  SIZE  ROOT  SERVERS\n");
                for l in &all {
                    let servers = if l.servers.is_empty() {
                        "-".to_owned()
                    } else {
                        l.servers.join(",")
                    };
                    match &l.checkpoint {
                        Some(r) => out.push_str(&format!(
                            "{}  {}  {}  {}  {servers}\n",
                            r.origin, r.key_id, r.size, r.root
                        )),
                        None => out.push_str(&format!(
                            "{}  {}  -  -  {servers}\n",
                            l.origin.as_deref().unwrap_or_default(),
                            l.key_id.as_deref().unwrap_or_default()
                        )),
                    }
                }
                out
            });
            Ok(())
        }
        Command::Add { vkey } => {
            let key = crate::trust::log_key(&crate::trust::LogKey::of(vkey))?;
            let before = crate::trust::server_key(dir, &conn.url)?;
            let changed = before.as_ref().is_none_or(|b| b.vkey() != key.vkey());
            crate::trust::remember_server_key(dir, &conn.url, &key)?;
            let out = Added {
                server: conn.url.clone(),
                origin: key.name().to_owned(),
                key_id: format!("{:08x}", key.id()),
                changed,
            };
            format.emit(&out, || {
                let was = match (&before, changed) {
                    (_, false) => " (already remembered)".to_owned(),
                    (Some(b), true) => format!(" (replacing {} key {:08x})", b.name(), b.id()),
                    (None, true) => String::new(),
                };
                format!(
                    "remembered log {} key {} for {}{was}\n",
                    out.origin, out.key_id, out.server
                )
            });
            Ok(())
        }
        Command::Forget { origin } => {
            let gone = crate::trust::forget(dir, origin)?;
            if gone.is_empty() {
                return Err(Failure::new(
                    NOT_FOUND,
                    anyhow::anyhow!(
                        "no checkpoint of {origin:?} is remembered in {} (`stackpin trust list` \
                         shows what is)",
                        dir.display()
                    ),
                ));
            }
            let text = gone
                .iter()
                .map(|r| format!("forgot {} key {} (size {})", r.origin, r.key_id, r.size))
                .collect::<Vec<_>>()
                .join("\n");
            format.emit(&Forgotten { forgotten: gone }, || text);
            Ok(())
        }
    }
}
