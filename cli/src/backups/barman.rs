//! Barman as stackpin drives it: a server's backups read from `barman
//! list-backups` and `show-backup` (JSON), and the `barman recover` of a
//! target.
//!
//! Barman 3.4 (Debian 12) keeps no annotations with a backup, so the
//! pairing a snapshot records lives in the log only: `stackpin snapshot
//! list` shows it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use stackpin_core::time::Timestamp;

use super::{QUICK, Set, Target, postgres_time};

/// At most this many backups are read, newest first (each is one `barman
/// show-backup`).
const MAX_BACKUPS: usize = 64;

/// The Barman options every command takes.
#[derive(clap::Args, Clone, Debug)]
pub struct BarmanArgs {
    /// The Barman server (its name for the PostgreSQL cluster).
    #[arg(long, value_name = "SERVER", value_parser = server)]
    pub barman_server: Option<String>,
    /// Barman's configuration file [default: Barman's own,
    /// /etc/barman.conf].
    #[arg(long, value_name = "FILE", env = "STACKPIN_BARMAN_CONFIG")]
    pub barman_config: Option<PathBuf>,
    /// The barman program.
    #[arg(long, env = "STACKPIN_BARMAN", default_value = "barman")]
    pub barman: PathBuf,
}

impl BarmanArgs {
    /// The server's Barman, when a server was named.
    pub fn tool(&self) -> Option<Barman> {
        self.barman_server.as_ref().map(|s| Barman {
            bin: self.barman.clone(),
            config: self.barman_config.clone(),
            server: s.clone(),
        })
    }
}

/// A server name as Barman and a shell both take it unquoted.
///
/// # Errors
/// What is wrong with it.
pub fn server(text: &str) -> Result<String, String> {
    super::plain_name("server", text)
}

/// A backup id as Barman writes it (`20261207T171530`).
///
/// # Errors
/// What is wrong with it.
pub fn backup_id(text: &str) -> Result<String, String> {
    let ok = text.len() == 15
        && text
            .char_indices()
            .all(|(i, c)| if i == 8 { c == 'T' } else { c.is_ascii_digit() });
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a Barman backup id (like 20261207T171530; see `barman list-backups`)"
        ))
    }
}

/// Where a Barman backup is, as a snapshot entry records it:
/// `barman:SERVER/BACKUP_ID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupLocation {
    pub server: String,
    pub backup_id: String,
}

impl std::fmt::Display for BackupLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "barman:{}/{}", self.server, self.backup_id)
    }
}

impl std::str::FromStr for BackupLocation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, id) = text
            .strip_prefix("barman:")
            .and_then(|r| r.split_once('/'))
            .ok_or_else(|| format!("{text:?} is not barman:SERVER/BACKUP_ID"))?;
        Ok(Self {
            server: server(name)?,
            backup_id: backup_id(id)?,
        })
    }
}

#[derive(Deserialize)]
struct Listed {
    backup_id: String,
    status: String,
}

#[derive(Deserialize)]
struct Shown {
    backup_id: String,
    status: String,
    base_backup_information: BaseBackup,
}

#[derive(Deserialize)]
struct BaseBackup {
    end_lsn: String,
    end_time: String,
}

/// Barman's end time (`2026-12-07 17:15:32.861730+00:00`) as an instant.
fn end_time(text: &str) -> Result<Timestamp, String> {
    let rfc3339 = text.replacen(' ', "T", 1);
    rfc3339
        .parse()
        .map_err(|e| format!("Barman's end time {text:?}: {e}"))
}

/// The `barman recover` of `target` from `backup` into `destination`, as
/// an operator runs it where Barman is (as Barman's user).
pub fn recover_command(
    server: &str,
    backup: Option<&str>,
    target: Target,
    destination: &str,
) -> String {
    let target = match target {
        Target::Lsn(lsn) => format!("--target-lsn {lsn}"),
        Target::Time(t) => format!("--target-time '{}'", postgres_time(t)),
        Target::Immediate => "--target-immediate".to_owned(),
    };
    let backup = backup.unwrap_or("<backup-id>");
    format!("barman recover {target} --target-action promote {server} {backup} {destination}")
}

/// Barman for one server.
#[derive(Clone, Debug)]
pub struct Barman {
    pub bin: PathBuf,
    pub config: Option<PathBuf>,
    pub server: String,
}

impl Barman {
    async fn run(
        &self,
        args: &[&str],
        limit: Option<std::time::Duration>,
    ) -> Result<Vec<u8>, String> {
        let mut all = Vec::new();
        if let Some(c) = &self.config {
            all.extend(["-c".to_owned(), c.display().to_string()]);
        }
        all.extend(args.iter().map(|a| (*a).to_owned()));
        super::run(&self.bin, &all, limit).await.map_err(|e| {
            if e.starts_with("cannot run") {
                format!("{e} (install Barman, or name it with --barman)")
            } else {
                e
            }
        })
    }

    /// One backup, read with `show-backup`.
    ///
    /// # Errors
    /// Barman failed, or said something that does not parse.
    pub async fn backup(&self, id: &str) -> Result<Set, String> {
        let out = self
            .run(
                &["-f", "json", "show-backup", &self.server, id],
                Some(QUICK),
            )
            .await?;
        let mut shown: std::collections::BTreeMap<String, Shown> = serde_json::from_slice(&out)
            .map_err(|e| {
                format!("barman show-backup wrote JSON this version does not read: {e}")
            })?;
        let shown = shown
            .remove(&self.server)
            .ok_or_else(|| format!("barman show-backup said nothing of server {}", self.server))?;
        let label = backup_id(&shown.backup_id)?;
        let info = &shown.base_backup_information;
        Ok(Set {
            stop_lsn: info.end_lsn.parse().map_err(|e| {
                format!(
                    "Barman's backup {label} has end LSN {:?}: {e}",
                    info.end_lsn
                )
            })?,
            stop_time: end_time(&info.end_time)?,
            ok: shown.status == "DONE",
            kind: "full".to_owned(),
            repo: None,
            annotations: std::collections::BTreeMap::new(),
            label,
        })
    }

    /// The server's newest finished backup.
    ///
    /// # Errors
    /// Barman failed, or holds no finished backup.
    pub async fn latest(&self) -> Result<Set, String> {
        let ids = self.finished().await?;
        let newest = ids.last().ok_or_else(|| self.none_finished())?;
        self.backup(newest).await
    }

    fn none_finished(&self) -> String {
        format!("Barman server {} has no finished backup", self.server)
    }

    /// The ids of the server's finished backups, oldest first.
    async fn finished(&self) -> Result<Vec<String>, String> {
        let out = self
            .run(&["-f", "json", "list-backups", &self.server], Some(QUICK))
            .await?;
        let mut listed: std::collections::BTreeMap<String, Vec<Listed>> =
            serde_json::from_slice(&out).map_err(|e| {
                format!("barman list-backups wrote JSON this version does not read: {e}")
            })?;
        let mut done: Vec<String> = listed
            .remove(&self.server)
            .unwrap_or_default()
            .into_iter()
            .filter(|b| b.status == "DONE")
            .map(|b| b.backup_id)
            .collect();
        // Backup ids sort as their start instants do.
        done.sort();
        Ok(done)
    }

    /// The server's finished backups, oldest first (the newest
    /// [`MAX_BACKUPS`]).
    ///
    /// # Errors
    /// Barman failed, or knows no such server.
    pub async fn sets(&self) -> Result<Vec<Set>, String> {
        let done = self.finished().await?;
        if done.is_empty() {
            return Err(self.none_finished());
        }
        let newest = &done[done.len().saturating_sub(MAX_BACKUPS)..];
        let mut sets = Vec::with_capacity(newest.len());
        for id in newest {
            sets.push(self.backup(id).await?);
        }
        Ok(sets)
    }

    /// Recovers `backup` into `destination` (an empty folder) to `target`.
    /// Barman copies the WAL the recovery needs into it and turns
    /// archiving off there, so a drill's copy never archives.
    ///
    /// # Errors
    /// Barman failed.
    pub async fn recover_into(
        &self,
        backup: &str,
        target: Target,
        destination: &Path,
    ) -> Result<(), String> {
        let (flag, value) = match target {
            Target::Lsn(lsn) => ("--target-lsn", lsn.to_string()),
            Target::Time(t) => ("--target-time", postgres_time(t)),
            Target::Immediate => ("--target-immediate", String::new()),
        };
        let dest = destination.display().to_string();
        let mut args = vec!["recover", flag];
        if !value.is_empty() {
            args.push(&value);
        }
        args.extend(["--target-action", "promote", &self.server, backup, &dest]);
        // A recovery copies as much as the database holds: no time limit;
        // Ctrl-C stops it (the child is killed as it drops).
        self.run(&args, None).await.map(drop)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_locations_and_times_are_checked() {
        assert!(backup_id("20261207T171530").is_ok());
        assert!(backup_id("latest").is_err());
        assert!(backup_id("20261207X171530").is_err());
        let loc: BackupLocation = "barman:pg/20261207T171530".parse().unwrap();
        assert_eq!(loc.to_string(), "barman:pg/20261207T171530");
        assert!("barman:pg".parse::<BackupLocation>().is_err());
        assert!(
            "barman:p g/20261207T171530"
                .parse::<BackupLocation>()
                .is_err()
        );
        assert_eq!(
            end_time("2026-12-07 17:15:32.861730+00:00")
                .unwrap()
                .to_string(),
            "2026-12-07T17:15:32.861730Z"
        );
    }

    #[test]
    fn the_recover_command_names_the_backup_and_a_target_postgresql_reads() {
        let t = Timestamp::from_parts(1_796_663_090, 972_897_000).unwrap();
        assert_eq!(
            recover_command(
                "pg",
                Some("20261207T171530"),
                Target::Time(t),
                "/srv/pgdata"
            ),
            "barman recover --target-time '2026-12-07 17:04:50.972897+00' --target-action \
             promote pg 20261207T171530 /srv/pgdata"
        );
        assert_eq!(
            recover_command(
                "pg",
                None,
                Target::Lsn("0/3016090".parse().unwrap()),
                "<pgdata>"
            ),
            "barman recover --target-lsn 0/3016090 --target-action promote pg <backup-id> <pgdata>"
        );
    }
}
