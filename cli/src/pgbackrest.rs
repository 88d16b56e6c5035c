//! pgBackRest, the PostgreSQL backup tool, as stackpin drives it: its
//! backup sets read from `pgbackrest info`, the set a recovery target needs
//! chosen as pgBackRest chooses it, stackpin's pairing written into the
//! set's own annotations, and the `pgbackrest restore` of a target.
//!
//! pgBackRest is someone else's program: each run is bounded in time and
//! in what is read of its output, and what it says is checked before use
//! (a label or an LSN that does not parse is an error, not a guess).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use stackpin_core::position::Lsn;
use stackpin_core::time::Timestamp;
use tokio::io::AsyncReadExt as _;

/// The most of `pgbackrest info` read (a repository of thousands of sets
/// stays far below it).
const MAX_OUTPUT: u64 = 64 << 20;
/// How long `info` or `annotate` may take.
const QUICK: Duration = Duration::from_secs(300);

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
    if text.is_empty() || text.len() > 64 {
        return Err("a stanza name is 1 to 64 characters".into());
    }
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(format!(
            "{text:?} holds {c:?}: stanza names here are letters, digits, '-', '_' and '.'"
        )),
        None => Ok(text.to_owned()),
    }
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
pub struct Set {
    pub label: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub error: Option<bool>,
    pub lsn: Range<String>,
    pub timestamp: Range<i64>,
    pub database: SetDatabase,
    #[serde(default)]
    pub annotation: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Range<T> {
    pub stop: T,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SetDatabase {
    #[serde(rename = "repo-key")]
    pub repo_key: u32,
}

impl Set {
    /// The LSN the set is consistent at: recovery can stop no earlier.
    ///
    /// # Errors
    /// pgBackRest wrote an LSN that does not parse.
    pub fn stop_lsn(&self) -> Result<Lsn, String> {
        self.lsn.stop.parse::<Lsn>().map_err(|e| {
            format!(
                "pgBackRest's set {} has stop LSN {:?}: {e}",
                self.label, self.lsn.stop
            )
        })
    }

    /// When the set ended, to the second pgBackRest records.
    ///
    /// # Errors
    /// An instant out of range.
    pub fn stop_time(&self) -> Result<Timestamp, String> {
        Timestamp::from_parts(self.timestamp.stop, 0).map_err(|e| {
            format!(
                "pgBackRest's set {} has stop time {}: {e}",
                self.label, self.timestamp.stop
            )
        })
    }
}

#[derive(Deserialize)]
struct StanzaInfo {
    name: String,
    #[serde(default)]
    backup: Vec<Set>,
    status: Status,
}

#[derive(Deserialize)]
struct Status {
    code: i64,
    message: String,
}

/// What a recovery stops at.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    Lsn(Lsn),
    Time(Timestamp),
    /// The set itself: recovery stops as soon as it is consistent.
    Immediate,
}

/// The set a recovery to `target` starts from: the newest good set
/// consistent before the target. By LSN that is its stop LSN at or below
/// the target; by time its stop second wholly before the target
/// (pgBackRest records whole seconds, so a set that stopped within the
/// target's second may end after it).
pub fn choose(sets: &[Set], target: Target) -> Option<&Set> {
    sets.iter()
        .filter(|s| s.error != Some(true))
        .filter(|s| match target {
            Target::Lsn(lsn) => s.stop_lsn().is_ok_and(|stop| stop <= lsn),
            Target::Time(t) => s
                .timestamp
                .stop
                .checked_add(1)
                .and_then(|end| Timestamp::from_parts(end, 0).ok())
                .is_some_and(|end| end <= t),
            Target::Immediate => true,
        })
        .max_by_key(|s| (s.timestamp.stop, s.stop_lsn().map(|l| l.0).unwrap_or(0)))
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

/// An instant as PostgreSQL's `recovery_target_time` (and so pgBackRest's
/// `--target`) accepts it: RFC 3339's `T` and `Z` refused, so
/// `2026-12-01 23:04:13.720526+00`.
pub fn postgres_time(t: Timestamp) -> String {
    let rfc3339 = t.to_string();
    let t = rfc3339.replacen('T', " ", 1);
    match t.strip_suffix('Z') {
        Some(t) => format!("{t}+00"),
        None => t,
    }
}

/// pgBackRest for one stanza.
#[derive(Clone, Debug)]
pub struct PgBackRest {
    pub bin: PathBuf,
    pub stanza: String,
}

impl PgBackRest {
    /// Runs `pgbackrest --stanza=S ARGS`, bounded in time (`limit`, or
    /// none) and in output; its stdout, or why it failed.
    async fn run(&self, args: &[String], limit: Option<Duration>) -> Result<Vec<u8>, String> {
        let what = format!("pgbackrest {}", args.first().map_or("", String::as_str));
        let mut child = tokio::process::Command::new(&self.bin)
            .arg(format!("--stanza={}", self.stanza))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {}: {e} (install pgBackRest, or name it with --pgbackrest)",
                    self.bin.display()
                )
            })?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(format!("{what}: no output pipes"));
        };
        let work = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let (mut stdout, mut stderr) = (stdout.take(MAX_OUTPUT + 1), stderr.take(1 << 20));
            let (o, e) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            o.and(e)
                .map_err(|e| format!("{what}: reading its output: {e}"))?;
            let status = child.wait().await.map_err(|e| format!("{what}: {e}"))?;
            Ok::<_, String>((status, out, err))
        };
        let (status, out, err) = match limit {
            Some(limit) => tokio::time::timeout(limit, work)
                .await
                .map_err(|_| format!("{what} took more than {} s; stopped", limit.as_secs()))??,
            None => work.await?,
        };
        if out.len() as u64 > MAX_OUTPUT {
            return Err(format!("{what} wrote more than {MAX_OUTPUT} bytes"));
        }
        if !status.success() {
            let err = String::from_utf8_lossy(&err);
            let said = err
                .lines()
                .filter(|l| !l.trim().is_empty())
                .find(|l| l.contains("ERROR"))
                .or_else(|| err.lines().rev().find(|l| !l.trim().is_empty()))
                .unwrap_or("no output");
            return Err(format!("{what} failed ({status}): {}", said.trim()));
        }
        Ok(out)
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
        Ok(info.backup)
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

    fn set(label: &str, stop_lsn: &str, stop: i64) -> Set {
        serde_json::from_value(serde_json::json!({
            "label": label, "type": "full", "error": false,
            "lsn": {"start": "0/1", "stop": stop_lsn},
            "timestamp": {"start": stop - 3, "stop": stop},
            "database": {"id": 1, "repo-key": 1},
        }))
        .unwrap()
    }

    #[test]
    fn the_set_chosen_is_the_newest_consistent_before_the_target() {
        let sets = [
            set("20261207-100000F", "0/2000100", 1_000),
            set("20261207-110000F", "0/5000100", 2_000),
        ];
        let lsn = |s: &str| Target::Lsn(s.parse().unwrap());
        let at = |s: i64| Target::Time(Timestamp::from_parts(s, 0).unwrap());
        assert_eq!(
            choose(&sets, lsn("0/4FFFFFF")).unwrap().label,
            sets[0].label
        );
        assert_eq!(
            choose(&sets, lsn("0/5000100")).unwrap().label,
            sets[1].label
        );
        assert!(choose(&sets, lsn("0/2000000")).is_none());
        // The stop second itself may end after the target.
        assert_eq!(choose(&sets, at(2_000)).unwrap().label, sets[0].label);
        assert_eq!(choose(&sets, at(2_001)).unwrap().label, sets[1].label);
        assert!(choose(&sets, at(1_000)).is_none());
        let mut broken = sets[1].clone();
        broken.error = Some(true);
        assert_eq!(
            choose(&[sets[0].clone(), broken], at(3_000)).unwrap().label,
            sets[0].label
        );
    }

    #[test]
    fn names_and_locations_are_checked() {
        assert!(stanza("main").is_ok());
        assert!(stanza("a b").is_err());
        assert!(stanza("x;rm").is_err());
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
