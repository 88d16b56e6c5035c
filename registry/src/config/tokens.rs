//! Tokens people manage: listing the configured ones (never a secret: the
//! settings file holds only hashes) and revoking one by removing its
//! `[[token]]` entry from the settings file, comments and layout kept.
//!
//! A revocation writes the file only once the whole result passes the
//! checks a start makes, and then asks a registry running on the same
//! data folder on this machine to reload (SIGHUP to the process holding
//! the folder's lock); a registry elsewhere reloads when it sees the file
//! change, or on its own SIGHUP.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Flags, Settings, invalid};
use crate::auth::TokenConfig;
use crate::error::{Error, Result};
use crate::time::Timestamp;

/// A token as `token list` shows it.
#[derive(Debug, Serialize)]
pub struct TokenView {
    pub name: String,
    pub roles: Vec<String>,
    /// The environments it is scoped to (empty: all).
    pub envs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
    /// Whether it has expired.
    pub expired: bool,
}

impl TokenView {
    fn of(t: &TokenConfig, now: Timestamp) -> Self {
        Self {
            name: t.name.clone(),
            roles: t.roles.iter().map(ToString::to_string).collect(),
            envs: t.envs.clone(),
            created: t.created,
            expires: t.expires,
            expired: t.expires.is_some_and(|e| now >= e),
        }
    }
}

/// The configured tokens.
pub fn list(settings: &Settings) -> Vec<TokenView> {
    let now = Timestamp::now();
    settings
        .token
        .iter()
        .map(|t| TokenView::of(t, now))
        .collect()
}

/// Parses `--expires-in`: a duration (`12h`, `30m`) or whole days (`90d`).
///
/// # Errors
/// A message for clap when it is neither, or zero.
pub fn parse_expiry(text: &str) -> std::result::Result<std::time::Duration, String> {
    let d = stackpin_core::time::parse_span(text)?;
    if d.is_zero() {
        return Err("a token that expires at once is no token: give a positive duration".into());
    }
    Ok(d)
}

/// What a revocation did.
#[derive(Debug, Serialize)]
pub struct Revoked {
    pub name: String,
    pub file: PathBuf,
    /// The process asked to reload, when a registry runs on the data
    /// folder on this machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signalled_pid: Option<u32>,
}

/// Removes the `[[token]]` entry named `name` from the settings file of
/// `flags`, checks the result as a start would, writes it in place
/// atomically, and asks a registry running on the data folder to reload.
///
/// # Errors
/// Invalid when there is no settings file, no such token, or the result
/// does not pass the checks (nothing is written then); Unavailable when the
/// file cannot be written.
pub fn revoke(flags: &Flags, name: &str) -> Result<Revoked> {
    let file = flags.config.clone().ok_or_else(|| {
        invalid(
            "config",
            "tokens live in the settings file: pass --config FILE (or STACKPIN_CONFIG)",
        )
    })?;
    let text = std::fs::read_to_string(&file)
        .map_err(|e| invalid("config", format!("{}: {e}", file.display())))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| invalid("config", format!("{}: {e}", file.display())))?;
    let names: Vec<String> = settings_tokens(&doc);
    let Some(tables) = doc
        .get_mut("token")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
    else {
        return Err(no_such(name, &file, &names));
    };
    let before = tables.len();
    tables.retain(|t| t.get("name").and_then(toml_edit::Item::as_str) != Some(name));
    if tables.len() == before {
        return Err(no_such(name, &file, &names));
    }
    if tables.is_empty() {
        doc.remove("token");
    }
    let staged = staged_path(&file);
    std::fs::write(&staged, doc.to_string()).map_err(|e| unwritable(&file, &e))?;
    let checked = Settings::load(&Flags {
        config: Some(staged.clone()),
        ..flags.clone()
    });
    let settings = match checked {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(Error::invalid(format!(
                "without token {name:?} the settings would not start a registry, so nothing \
                 was changed: {e}"
            )));
        }
    };
    if let Ok(meta) = std::fs::metadata(&file) {
        let _ = std::fs::set_permissions(&staged, meta.permissions());
    }
    if let Err(e) = std::fs::rename(&staged, &file) {
        let _ = std::fs::remove_file(&staged);
        return Err(unwritable(&file, &e));
    }
    Ok(Revoked {
        name: name.to_owned(),
        file,
        signalled_pid: signal_running(&settings.data_dir),
    })
}

fn settings_tokens(doc: &toml_edit::DocumentMut) -> Vec<String> {
    doc.get("token")
        .and_then(toml_edit::Item::as_array_of_tables)
        .map(|t| {
            t.iter()
                .filter_map(|t| t.get("name").and_then(toml_edit::Item::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn no_such(name: &str, file: &Path, names: &[String]) -> Error {
    let known = if names.is_empty() {
        "it configures none".to_owned()
    } else {
        format!("it configures {}", names.join(", "))
    };
    invalid(
        "token",
        format!("no token named {name:?} in {} ({known})", file.display()),
    )
}

fn unwritable(file: &Path, e: &std::io::Error) -> Error {
    Error::new(
        crate::error::Kind::Unavailable,
        format!(
            "{} cannot be written ({e}): if it is mounted from a ConfigMap or Secret, remove \
             the entry at its source; the registry reloads when the mounted file changes",
            file.display()
        ),
    )
}

/// A sibling of `file` to stage the new text in (same folder: the rename
/// is atomic).
fn staged_path(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.with_file_name(format!(".{name}.stackpin-new"))
}

/// Sends SIGHUP to the registry holding `data_dir`'s lock on this
/// machine, if one does; returns its process id.
fn signal_running(data_dir: &Path) -> Option<u32> {
    let path = data_dir.join(crate::registry::LOCK_FILE);
    let file = std::fs::File::open(&path).ok()?;
    // A lock we can take is held by nobody: no registry runs there.
    if file.try_lock_shared().is_ok() {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let pid: u32 = text.trim().strip_prefix("pid ")?.parse().ok()?;
    hangup(pid).then_some(pid)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn hangup(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).is_ok()
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn hangup(_pid: u32) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_takes_days_and_durations_and_refuses_nonsense() {
        assert_eq!(
            parse_expiry("90d").unwrap(),
            std::time::Duration::from_secs(90 * 86_400)
        );
        assert_eq!(
            parse_expiry("12h").unwrap(),
            std::time::Duration::from_secs(12 * 3600)
        );
        assert!(parse_expiry("0d").is_err());
        assert!(parse_expiry("soon").unwrap_err().contains("3d"));
        assert!(parse_expiry("-3d").is_err());
    }

    #[test]
    fn revoking_removes_only_that_entry_and_keeps_comments() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stackpin.toml");
        let (_, a) = crate::auth::create_token("ci", &[crate::auth::Role::Pin], &[], None).unwrap();
        let (_, b) =
            crate::auth::create_token("ops", &[crate::auth::Role::Read], &[], None).unwrap();
        let tables = toml::to_string(
            &[("token", vec![a, b])]
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
        )
        .unwrap();
        let data = dir.path().join("data");
        std::fs::write(
            &file,
            format!(
                "# who may do what\ndata_dir = {:?}\n\n{tables}",
                data.display().to_string()
            ),
        )
        .unwrap();
        let flags = Flags {
            config: Some(file.clone()),
            ..Flags::default()
        };
        let e = revoke(&flags, "nobody").unwrap_err();
        assert!(e.message().contains("it configures ci, ops"), "{e}");
        let done = revoke(&flags, "ci").unwrap();
        assert_eq!(done.signalled_pid, None);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("# who may do what\n"), "{text}");
        let left = Settings::load(&flags).unwrap();
        let names: Vec<&str> = left.token.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["ops"]);
        assert!(!staged_path(&file).exists());
    }
}
