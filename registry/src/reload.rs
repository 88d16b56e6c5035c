//! Reloading settings while serving: on SIGHUP, and when the files a
//! reload reads change (a Kubernetes-mounted Secret, a certificate renewed
//! by cert-manager or an ACME client), checked every
//! `reload_check_interval`.
//!
//! What reloads: tokens and client-certificate mappings (and
//! `anonymous_read`), the TLS certificate, key and client CA, the trusted
//! publisher keys, the witnesses and the webhooks. Everything else is read
//! once at start; a reload that changes any of it is refused, naming the
//! setting, so a changed listen address or storage never half-applies.
//!
//! A reload is all or nothing: the settings are loaded and checked as a
//! start checks them (`config check`), every file is read and every
//! value built, and only then is anything put in force. A refused reload
//! leaves the running configuration as it was and says why: a log line,
//! the `stackpin_config_reload_failed` gauge, and the web view's log page.
//!
//! Open connections keep the TLS session they have; new ones use the new
//! certificate. A removed token is refused from the next request on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use stackpin_core::signing::TrustedKeys;

use crate::auth::Authorizer;
use crate::config::{Flags, Settings};
use crate::registry::Registry;
use crate::time::Timestamp;
use crate::tls::Tls;
use crate::webhooks::Webhooks;

/// The settings a reload may change; every other one is fixed at start.
const RELOADABLE: &[&str] = &[
    "token",
    "client_cert",
    "anonymous_read",
    "tls_cert",
    "tls_key",
    "client_ca",
    "trusted_keys",
    "witness",
    "webhook",
    "reload_check_interval",
];

/// The outcome of the newest reload, for the web view.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub at: Timestamp,
    /// What asked for it: `SIGHUP` or `a file changed`.
    pub trigger: String,
    /// What changed, or why nothing did.
    pub result: Result<String, String>,
}

/// The reload outcomes a web view shows.
#[derive(Debug, Default)]
pub struct Status {
    last: Mutex<Option<Outcome>>,
}

impl Status {
    /// The newest reload's outcome, if there was one.
    pub fn last(&self) -> Option<Outcome> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What a reload replaces, held while serving.
pub struct Reloader {
    flags: Flags,
    /// The settings in force.
    running: Mutex<Settings>,
    auth: Authorizer,
    tls: Option<Tls>,
    registry: Arc<Registry>,
    webhooks: Arc<Webhooks>,
    status: Arc<Status>,
}

impl Reloader {
    /// A reloader for a registry started with `settings` (from `flags`),
    /// whose listeners use `auth` and `tls`.
    pub fn new(
        flags: Flags,
        settings: Settings,
        auth: Authorizer,
        tls: Option<Tls>,
        registry: Arc<Registry>,
        webhooks: Arc<Webhooks>,
    ) -> Self {
        Self {
            flags,
            running: Mutex::new(settings),
            auth,
            tls,
            registry,
            webhooks,
            status: Arc::default(),
        }
    }

    /// The outcomes, for the web view.
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Loads the settings again and puts every reloadable one in force, or
    /// none. Logs and records the outcome.
    ///
    /// # Errors
    /// Why nothing changed.
    pub fn reload(&self, trigger: &str) -> Result<String, String> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let result = self.attempt(&running).map(|(applied, settings)| {
            *running = settings;
            applied
        });
        drop(running);
        let failed = result.is_err();
        metrics::counter!(
            "stackpin_config_reloads_total",
            "result" => if failed { "refused" } else { "applied" }
        )
        .increment(1);
        metrics::gauge!("stackpin_config_reload_failed").set(if failed { 1.0 } else { 0.0 });
        match &result {
            Ok(what) => tracing::info!(trigger, "settings reloaded: {what}"),
            Err(why) => tracing::error!(
                trigger,
                "settings reload refused; the running configuration stays in force: {why}"
            ),
        }
        *self
            .status
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Outcome {
            at: Timestamp::now(),
            trigger: trigger.to_owned(),
            result: result.clone(),
        });
        result
    }

    /// Builds everything new from the settings as they are now, checks
    /// it, then puts it in force; returns what changed and the settings.
    fn attempt(&self, running: &Settings) -> Result<(String, Settings), String> {
        let new = Settings::load(&self.flags).map_err(|e| e.to_string())?;
        fixed_unchanged(running, &new)?;
        if self.tls.is_some() != (new.tls_cert.is_some() && new.tls_key.is_some()) {
            return Err(
                "setting tls_cert: TLS cannot be turned on or off by a reload; restart to change \
                 it"
                .into(),
            );
        }
        let auth = new.authorizer().map_err(|e| e.to_string())?;
        if auth.enabled() != self.auth.enabled() {
            return Err(
                "setting token: authentication cannot be turned on or off by a reload (the \
                 listeners' rules for non-loopback addresses depend on it); restart to change it"
                    .into(),
            );
        }
        let tls = new.tls().map_err(|e| format!("{e:#}"))?;
        let trusted = match &new.trusted_keys {
            Some(path) => {
                TrustedKeys::load(path).map_err(|e| format!("setting trusted_keys: {e}"))?
            }
            None => TrustedKeys::default(),
        };
        self.registry
            .check_trusted(&trusted)
            .map_err(|e| e.to_string())?;
        let witnesses = new.witnesses().map_err(|e| e.to_string())?;
        let endpoints = new.webhooks().map_err(|e| e.to_string())?;

        // Everything is built and checked: put it in force.
        self.auth.replace(&auth);
        let mut applied = vec![format!(
            "{} token(s), {} client certificate mapping(s)",
            new.token.len(),
            new.client_cert.len()
        )];
        if let (Some(serving), Some(tls)) = (&self.tls, &tls) {
            serving.replace(tls);
            applied.push(format!("TLS certificate {}", tls.certificate()));
        }
        let added = self.registry.replace_trusted(trusted);
        applied.push(format!("{added} trusted publisher key(s) added"));
        let (started, stopped) = self.registry.replace_witnesses(witnesses);
        applied.push(changed("witnesses", &started, &stopped));
        let (started, stopped) = self.webhooks.replace(endpoints);
        applied.push(changed("webhooks", &started, &stopped));
        Ok((applied.join("; "), new))
    }

    /// Reloads on SIGHUP, and when a watched file changes, until the
    /// process ends.
    ///
    /// # Errors
    /// When the SIGHUP handler cannot be installed.
    pub fn spawn(self: Arc<Self>) -> anyhow::Result<()> {
        use anyhow::Context as _;
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let on_signal = self.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                let _ = on_signal.reload("SIGHUP");
            }
        });
        tokio::spawn(async move {
            let mut seen = self.fingerprint();
            loop {
                let every = self.interval();
                if every.is_zero() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                tokio::time::sleep(every).await;
                let now = self.fingerprint();
                if now != seen {
                    // Tried once per change: a file caught half-written
                    // changes again when its writer finishes.
                    seen = now;
                    let _ = self.reload("a watched file changed");
                }
            }
        });
        Ok(())
    }

    fn interval(&self) -> Duration {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reload_check_interval
    }

    /// A hash of every file a reload reads, as they are now.
    fn fingerprint(&self) -> [u8; 32] {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let files: Vec<PathBuf> = [
            self.flags.config.clone(),
            running.tls_cert.clone(),
            running.tls_key.clone(),
            running.client_ca.clone(),
            running.trusted_keys.clone(),
        ]
        .into_iter()
        .flatten()
        .collect();
        drop(running);
        let mut hash = Sha256::new();
        for f in &files {
            hash_path(&mut hash, f);
        }
        hash.finalize().into()
    }
}

/// Feeds `path`'s name and contents to `hash`; a folder's `*.pem` files in
/// name order. What cannot be read hashes as its error.
fn hash_path(hash: &mut Sha256, path: &Path) {
    hash.update(path.as_os_str().as_encoded_bytes());
    if path.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "pem"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        for n in names {
            hash_path(hash, &n);
        }
        return;
    }
    match std::fs::read(path) {
        Ok(bytes) => {
            hash.update((bytes.len() as u64).to_be_bytes());
            hash.update(&bytes);
        }
        Err(e) => hash.update(e.kind().to_string().as_bytes()),
    }
}

fn changed(what: &str, started: &[String], stopped: &[String]) -> String {
    if started.is_empty() && stopped.is_empty() {
        return format!("{what} unchanged");
    }
    format!(
        "{what} started [{}], stopped [{}]",
        started.join(", "),
        stopped.join(", ")
    )
}

/// Refuses a change to any setting a reload does not apply, naming it.
fn fixed_unchanged(running: &Settings, new: &Settings) -> Result<(), String> {
    let as_map = |s: &Settings| match serde_json::to_value(s) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err("the settings cannot be compared".to_owned()),
    };
    let (old, new) = (as_map(running)?, as_map(new)?);
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let changed: Vec<&str> = keys
        .into_iter()
        .filter(|k| !RELOADABLE.contains(&k.as_str()))
        .filter(|k| old.get(k.as_str()) != new.get(k.as_str()))
        .map(String::as_str)
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    Err(format!(
        "setting {} changed, and is read only at start: restart to change it, or put it back \
         (a reload applies tokens, client_cert, anonymous_read, tls_cert, tls_key, client_ca, \
         trusted_keys, witness and webhook)",
        changed.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_to_a_fixed_setting_is_named_and_a_reloadable_one_passes() {
        let running = Settings::default();
        let mut new = Settings {
            trusted_keys: Some("keys".into()),
            anonymous_read: true,
            ..Settings::default()
        };
        assert!(fixed_unchanged(&running, &new).is_ok());
        new.listen = "127.0.0.1:7171".parse().unwrap();
        new.max_batch = 7;
        let e = fixed_unchanged(&running, &new).unwrap_err();
        assert!(e.starts_with("setting listen, max_batch changed"), "{e}");
        let storage = Settings {
            storage: Some("memory://".into()),
            ..Settings::default()
        };
        assert!(
            fixed_unchanged(&running, &storage)
                .unwrap_err()
                .contains("storage")
        );
    }

    #[test]
    fn the_fingerprint_follows_contents_not_times() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.pem");
        std::fs::write(&f, "one").unwrap();
        let hash = |p: &Path| {
            let mut h = Sha256::new();
            hash_path(&mut h, p);
            <[u8; 32]>::from(h.finalize())
        };
        let (file, folder) = (hash(&f), hash(dir.path()));
        std::fs::write(&f, "one").unwrap();
        assert_eq!(hash(&f), file);
        std::fs::write(&f, "two").unwrap();
        assert_ne!(hash(&f), file);
        assert_ne!(hash(dir.path()), folder);
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        assert_eq!(hash(dir.path()), hash(dir.path()));
    }
}
