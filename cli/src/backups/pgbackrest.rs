//! pgBackRest as stackpin drives it: its backup sets read from
//! `pgbackrest info`, stackpin's pairing written into a set's own
//! annotations, and the `pgbackrest restore` of a target.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use stackpin_core::time::Timestamp;

use super::{QUICK, Set, Target, postgres_time};

/// The pgBackRest options every command takes.
#[derive(clap::Args, Clone, Debug)]
pub struct PgbackrestArgs {
    /// The pgBackRest stanza (its name for the PostgreSQL cluster).
    /// pgBackRest's own settings apply: PGBACKREST_CONFIG, PGBACKREST_REPO1_PATH
    /// and the like are passed on.
    #[arg(long, value_name = "STANZA", value_parser = stanza)]
    pub pgbackrest_stanza: Option<String>,
    /// The pgbackrest program.
    #[arg(long, env = "STACKPIN_PGBACKREST", default_value = "pgbackrest")]
    pub pgbackrest: PathBuf,
}

impl PgbackrestArgs {
    /// The stanza's pgBackRest, when a stanza was named.
    pub fn tool(&self) -> Option<PgBackRest> {
        self.pgbackrest_stanza.as_ref().map(|s| PgBackRest {
            bin: self.pgbackrest.clone(),
            stanza: s.clone(),
        })
    }
}

/// A stanza name as pgBackRest and a shell both take it unquoted.
///
/// # Errors
/// What is wrong with it.
pub fn stanza(text: &str) -> Result<String, String> {
    super::plain_name("stanza", text)
}

/// A backup set label as pgBackRest writes it (`20261207-170439F`,
/// `20261207-170439F_20261207-171002I`).
///
/// # Errors
/// What is wrong with it.
pub fn label(text: &str) -> Result<String, String> {
    let ok = (16..=40).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '-' | '_' | 'F' | 'D' | 'I'))
        && matches!(text.chars().last(), Some('F' | 'D' | 'I'));
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a pgBackRest backup label (like 20261207-170439F; see `pgbackrest \
             info`)"
        ))
    }
}

/// Where a pgBackRest set is, as a snapshot entry records it:
/// `pgbackrest:STANZA/repoN/LABEL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetLocation {
    pub stanza: String,
    /// The repository's key (`repo1` is 1).
    pub repo: u32,
    pub label: String,
}

impl std::fmt::Display for SetLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pgbackrest:{}/repo{}/{}",
            self.stanza, self.repo, self.label
        )
    }
}

impl std::str::FromStr for SetLocation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not pgbackrest:STANZA/repoN/LABEL");
        let mut parts = text.strip_prefix("pgbackrest:").ok_or_else(bad)?.split('/');
        let (Some(stanza_name), Some(repo), Some(set), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let repo = repo
            .strip_prefix("repo")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| (1..=256).contains(n))
            .ok_or_else(bad)?;
        Ok(Self {
            stanza: stanza(stanza_name)?,
            repo,
            label: label(set)?,
        })
    }
}

/// One backup set, as `pgbackrest info --output=json` describes it.
#[derive(Clone, Debug, Deserialize)]
struct RawSet {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    error: Option<bool>,
    lsn: Range<String>,
    timestamp: Range<i64>,
    database: SetDatabase,
    #[serde(default)]
    annotation: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Deserialize)]
struct Range<T> {
    stop: T,
}

#[derive(Clone, Debug, Deserialize)]
struct SetDatabase {
    #[serde(rename = "repo-key")]
    repo_key: u32,
}

impl RawSet {
    /// As a [`Set`], checked: a label, LSN or instant that does not
    /// parse is an error.
    fn checked(self) -> Result<Set, String> {
        let label = label(&self.label)?;
        let stop_lsn = self.lsn.stop.parse().map_err(|e| {
            format!(
                "pgBackRest's set {label} has stop LSN {:?}: {e}",
                self.lsn.stop
            )
        })?;
        let stop_time = Timestamp::from_parts(self.timestamp.stop, 0).map_err(|e| {
            format!(
                "pgBackRest's set {label} has stop time {}: {e}",
                self.timestamp.stop
            )
        })?;
        Ok(Set {
            label,
            kind: self.kind,
            ok: self.error != Some(true),
            stop_lsn,
            stop_time,
            repo: Some(self.database.repo_key),
            annotations: self.annotation.unwrap_or_default(),
        })
    }
}

#[derive(Deserialize)]
struct StanzaInfo {
    name: String,
    #[serde(default)]
    backup: Vec<RawSet>,
    status: Status,
}

#[derive(Deserialize)]
struct Status {
    code: i64,
    message: String,
}

/// The `pgbackrest restore` of `target` from `set`, as an operator runs it
/// where the stanza is configured. It restores into the stanza's pg1-path;
/// pgBackRest writes the recovery settings and recovery.signal itself.
pub fn restore_command(stanza: &str, set: Option<&str>, target: Target) -> String {
    let set = set.map(|s| format!(" --set={s}")).unwrap_or_default();
    let target = match target {
        Target::Lsn(lsn) => format!("--type=lsn --target={lsn}"),
        Target::Time(t) => format!("--type=time '--target={}'", postgres_time(t)),
        Target::Immediate => "--type=immediate".to_owned(),
    };
    format!("pgbackrest --stanza={stanza} restore{set} {target} --target-action=promote")
}

/// pgBackRest for one stanza.
#[derive(Clone, Debug)]
pub struct PgBackRest {
    pub bin: PathBuf,
    pub stanza: String,
}

impl PgBackRest {
    /// Runs `pgbackrest --stanza=S ARGS`, bounded (see [`super::run`]).
    async fn run(
        &self,
        args: &[String],
        limit: Option<std::time::Duration>,
    ) -> Result<Vec<u8>, String> {
        let mut all = vec![format!("--stanza={}", self.stanza)];
        all.extend_from_slice(args);
        super::run(&self.bin, &all, limit).await.map_err(|e| {
            if e.starts_with("cannot run") {
                format!("{e} (install pgBackRest, or name it with --pgbackrest)")
            } else {
                e
            }
        })
    }

    /// The stanza's backup sets, oldest first.
    ///
    /// # Errors
    /// pgBackRest failed, or knows no such stanza.
    pub async fn sets(&self) -> Result<Vec<Set>, String> {
        let out = self
            .run(&["--output=json".into(), "info".into()], Some(QUICK))
            .await?;
        let stanzas: Vec<StanzaInfo> = serde_json::from_slice(&out)
            .map_err(|e| format!("pgbackrest info wrote JSON this version does not read: {e}"))?;
        let info = stanzas
            .into_iter()
            .find(|s| s.name == self.stanza)
            .ok_or_else(|| format!("pgbackrest info knows no stanza {}", self.stanza))?;
        if info.backup.is_empty() {
            return Err(format!(
                "stanza {} has no backup sets ({}: {})",
                self.stanza, info.status.code, info.status.message
            ));
        }
        info.backup.into_iter().map(RawSet::checked).collect()
    }

    /// Writes `pairs` into the set's annotations (`pgbackrest annotate`),
    /// where `pgbackrest info --set` shows them.
    ///
    /// # Errors
    /// pgBackRest failed.
    pub async fn annotate(&self, set: &str, pairs: &[(&str, String)]) -> Result<(), String> {
        let mut args = vec!["annotate".to_owned(), format!("--set={set}")];
        args.extend(pairs.iter().map(|(k, v)| format!("--annotation={k}={v}")));
        self.run(&args, Some(QUICK)).await.map(drop)
    }

    /// Restores `set` into `data` (an empty folder) recovering to
    /// `target`, with archiving off: a drill's copy must never push WAL
    /// into the stanza's repository.
    ///
    /// # Errors
    /// pgBackRest failed.
    pub async fn restore_into(
        &self,
        repo: Option<u32>,
        set: &str,
        target: Target,
        data: &Path,
    ) -> Result<(), String> {
        let mut args = vec![
            "restore".to_owned(),
            format!("--set={set}"),
            format!("--pg1-path={}", data.display()),
            "--archive-mode=off".to_owned(),
            "--target-action=promote".to_owned(),
        ];
        match target {
            Target::Lsn(lsn) => args.extend(["--type=lsn".into(), format!("--target={lsn}")]),
            Target::Time(t) => {
                args.extend([
                    "--type=time".into(),
                    format!("--target={}", postgres_time(t)),
                ]);
            }
            Target::Immediate => args.push("--type=immediate".into()),
        }
        if let Some(repo) = repo {
            args.push(format!("--repo={repo}"));
        }
        // A restore runs as long as the database is large: no time limit;
        // Ctrl-C stops it (the child is killed as it drops).
        self.run(&args, None).await.map(drop)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_locations_are_checked() {
        assert!(label("20261207-170439F").is_ok());
        assert!(label("20261207-170439F_20261207-171002I").is_ok());
        assert!(label("latest").is_err());
        let loc: SetLocation = "pgbackrest:main/repo2/20261207-170439F".parse().unwrap();
        assert_eq!(loc.repo, 2);
        assert_eq!(loc.to_string(), "pgbackrest:main/repo2/20261207-170439F");
        assert!("pgbackrest:main".parse::<SetLocation>().is_err());
        assert!(
            "pgbackrest:main/20261207-170439F"
                .parse::<SetLocation>()
                .is_err()
        );
        assert!(
            "pgbackrest:main/repo1/x/20261207-170439F"
                .parse::<SetLocation>()
                .is_err()
        );
        assert!("s3://x/y".parse::<SetLocation>().is_err());
    }

    #[test]
    fn the_restore_command_names_the_set_and_a_target_postgresql_reads() {
        let t = Timestamp::from_parts(1_796_663_090, 972_897_000).unwrap();
        assert_eq!(
            restore_command("main", Some("20261207-170439F"), Target::Time(t)),
            "pgbackrest --stanza=main restore --set=20261207-170439F --type=time \
             '--target=2026-12-07 17:04:50.972897+00' --target-action=promote"
        );
        assert_eq!(
            restore_command("main", None, Target::Lsn("0/3016090".parse().unwrap())),
            "pgbackrest --stanza=main restore --type=lsn --target=0/3016090 \
             --target-action=promote"
        );
    }
}
