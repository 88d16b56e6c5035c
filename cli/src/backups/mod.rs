//! The PostgreSQL backup tools stackpin drives: their backups listed as
//! [`Set`]s, the one a recovery target needs chosen by one rule, and the
//! tool run bounded.
//!
//! | module | tool |
//! |---|---|
//! | [`pgbackrest`] | pgBackRest: `info`, `annotate`, `restore` |
//! | [`barman`] | Barman: `list-backups`, `show-backup`, `recover` |
//!
//! Both are someone else's programs: each run is bounded in time and in
//! what is read of its output, and what they say is checked before use (a
//! label or an LSN that does not parse is an error, not a guess).

pub mod barman;
pub mod pgbackrest;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use stackpin_core::position::Lsn;
use stackpin_core::time::Timestamp;
use tokio::io::AsyncReadExt as _;

/// The most of a tool's standard output read (a repository of thousands
/// of backups stays far below it).
const MAX_OUTPUT: u64 = 64 << 20;
/// How long a listing or an annotation may take.
pub const QUICK: Duration = Duration::from_secs(300);

/// One backup, as a tool lists it.
#[derive(Clone, Debug)]
pub struct Set {
    /// pgBackRest's label, Barman's backup id.
    pub label: String,
    /// full, incr, diff; `postgres` or `rsync` for Barman.
    pub kind: String,
    /// Whether the tool counts it as a good backup.
    pub ok: bool,
    /// The LSN it is consistent at: recovery can stop no earlier.
    pub stop_lsn: Lsn,
    /// When it ended (pgBackRest records whole seconds).
    pub stop_time: Timestamp,
    /// The pgBackRest repository it is in.
    pub repo: Option<u32>,
    /// The annotations pgBackRest keeps with it.
    pub annotations: BTreeMap<String, String>,
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
/// the target; by time its stop second wholly before the target (a set
/// that stopped within the target's second may end after it).
pub fn choose(sets: &[Set], target: Target) -> Option<&Set> {
    sets.iter()
        .filter(|s| s.ok)
        .filter(|s| match target {
            Target::Lsn(lsn) => s.stop_lsn <= lsn,
            Target::Time(t) => {
                let (secs, _) = s.stop_time.to_parts();
                secs.checked_add(1)
                    .and_then(|end| Timestamp::from_parts(end, 0).ok())
                    .is_some_and(|end| end <= t)
            }
            Target::Immediate => true,
        })
        .max_by_key(|s| (s.stop_time, s.stop_lsn))
}

/// An instant as PostgreSQL's `recovery_target_time` (and so pgBackRest's
/// `--target` and Barman's `--target-time`) accepts it: RFC 3339's `T`
/// and `Z` refused, so `2026-12-01 23:04:13.720526+00`.
pub fn postgres_time(t: Timestamp) -> String {
    let rfc3339 = t.to_string();
    let t = rfc3339.replacen('T', " ", 1);
    match t.strip_suffix('Z') {
        Some(t) => format!("{t}+00"),
        None => t,
    }
}

/// A name as a tool and a shell both take it unquoted (a stanza, a
/// server).
///
/// # Errors
/// What is wrong with it.
pub fn plain_name(what: &str, text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 64 {
        return Err(format!("a {what} name is 1 to 64 characters"));
    }
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(format!(
            "{text:?} holds {c:?}: {what} names here are letters, digits, '-', '_' and '.'"
        )),
        None => Ok(text.to_owned()),
    }
}

/// Runs `bin ARGS`, bounded in time (`limit`, or none) and in output; its
/// stdout, or why it failed (its error line, from stderr or, for Barman's
/// JSON, from `_ERROR` on stdout).
pub(crate) async fn run(
    bin: &Path,
    args: &[String],
    limit: Option<Duration>,
) -> Result<Vec<u8>, String> {
    let name = bin.file_name().map_or_else(
        || bin.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let what = format!(
        "{name} {}",
        args.iter()
            .find(|a| !a.starts_with('-'))
            .map_or("", String::as_str)
    );
    let mut child = tokio::process::Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
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
        #[derive(serde::Deserialize)]
        struct Errors {
            #[serde(rename = "_ERROR")]
            error: Vec<String>,
        }
        let err = String::from_utf8_lossy(&err);
        let said = serde_json::from_slice::<Errors>(&out)
            .ok()
            .map(|e| e.error.join("; "))
            .or_else(|| {
                err.lines()
                    .find(|l| l.contains("ERROR"))
                    .or_else(|| err.lines().rev().find(|l| !l.trim().is_empty()))
                    .map(|l| l.trim().to_owned())
            })
            .unwrap_or_else(|| "no output".to_owned());
        return Err(format!("{what} failed ({status}): {said}"));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn set(label: &str, stop_lsn: &str, stop: i64) -> Set {
        Set {
            label: label.into(),
            kind: "full".into(),
            ok: true,
            stop_lsn: stop_lsn.parse().unwrap(),
            stop_time: Timestamp::from_parts(stop, 0).unwrap(),
            repo: Some(1),
            annotations: BTreeMap::new(),
        }
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
        broken.ok = false;
        assert_eq!(
            choose(&[sets[0].clone(), broken], at(3_000)).unwrap().label,
            sets[0].label
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(plain_name("stanza", "main").is_ok());
        assert!(plain_name("stanza", "a b").is_err());
        assert!(plain_name("server", "x;rm").is_err());
    }
}
