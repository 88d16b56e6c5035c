//! `stackpin trust`: what the CLI remembers of the logs it has met (the
//! last verified checkpoint per log and key), and forgetting one on purpose.

use std::path::Path;

use serde::Serialize;

use crate::exit::{Failure, NOT_FOUND, Outcome};
use crate::trust::Remembered;
use crate::view::Format;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Show every remembered checkpoint: origin, key id, size, root.
    List,
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

pub fn run(command: &Command, state: Option<&Path>, format: Format) -> Outcome {
    let Some(dir) = state else {
        return Err(Failure::invalid(
            "no state folder: pass --state-dir (or set HOME or XDG_CONFIG_HOME)",
        ));
    };
    match command {
        Command::List => {
            let all = crate::trust::remembered(dir)?;
            format.emit(&all, || {
                if all.is_empty() {
                    return format!("no checkpoints remembered in {}", dir.display());
                }
                let mut out = String::from("ORIGIN  KEY ID  SIZE  ROOT\n");
                for r in &all {
                    out.push_str(&format!(
                        "{}  {}  {}  {}\n",
                        r.origin, r.key_id, r.size, r.root
                    ));
                }
                out
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
