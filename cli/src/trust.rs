//! What the CLI trusts and remembers: the log's verifier key, and the last
//! checkpoint it verified per log (rollback and fork protection).
//!
//! Saved checkpoints live in
//! `<state dir>/checkpoints/<origin>+<key id>.checkpoint` (the log's name,
//! which every epoch of it shares, with
//! anything but `[A-Za-z0-9._-]` replaced by `_`, the log key's 8-hex-digit
//! signed-note id): one per log and key, so meeting a second registry never
//! trips over the first. A newer checkpoint is accepted only with a
//! consistency proof from the saved one; an older one only with a
//! consistency proof up to the saved one. A log that shows up under another
//! key than the one remembered for its origin is refused until the old one
//! is forgotten on purpose (`stackpin trust forget ORIGIN`). Files named
//! `<origin>.checkpoint` (kept before keys were part of the name) are read
//! and moved to the new name.

use std::path::{Path, PathBuf};

use stackpin_core::merkle::Hash;
use stackpin_core::note::{Checkpoint, NoteVerifier};
use stackpin_core::signing::TrustedKeys;
use stackpin_proto::v1 as pb;

use stackpin_core::witness::Policy;

use crate::exit::{Failure, Outcome};

/// The CLI's state folder: `--state-dir`, else `$XDG_CONFIG_HOME/stackpin`,
/// else `~/.config/stackpin`.
pub fn state_dir(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("stackpin"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/stackpin"))
}

/// The log's verifier key, as commands that check the log take it.
#[derive(clap::Args, Clone, Debug)]
pub struct LogKey {
    /// The log's verifier key (the line `stackpin-registry key` prints), or
    /// a file holding it. Also read from STACKPIN_LOG_KEY, its old name,
    /// with a warning.
    #[arg(long = "log-key", env = "STACKPIN_LOG_VKEY", value_name = "VKEY")]
    value: Option<String>,
    /// A C2SP tlog-policy file (`log`, `witness`, `group`, `quorum` lines):
    /// a checkpoint must also carry the cosignatures its quorum asks for.
    /// Its `log` line stands in for --log-key.
    #[arg(long, env = "STACKPIN_POLICY", value_name = "FILE")]
    policy: Option<PathBuf>,
}

impl LogKey {
    /// A key given as text (or a file name), as `--log-key` takes it.
    pub fn of(value: &str) -> Self {
        Self {
            value: Some(value.to_owned()),
            policy: None,
        }
    }

    /// Whether a log key was given (flag or environment).
    pub fn given(&self) -> bool {
        self.value.is_some() || std::env::var_os("STACKPIN_LOG_KEY").is_some_and(|v| !v.is_empty())
    }

    /// The policy named by `--policy`, if any.
    ///
    /// # Errors
    /// Invalid when it cannot be read or parsed.
    pub fn policy(&self) -> Outcome<Option<Policy>> {
        let Some(path) = &self.policy else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::invalid(format!("--policy {}: {e}", path.display())))?;
        Policy::parse(&text)
            .map(Some)
            .map_err(|e| Failure::invalid(format!("--policy {}: {e}", path.display())))
    }

    /// Checks `note` (a checkpoint already verified under the log key)
    /// against the policy's quorum, when there is a policy.
    ///
    /// # Errors
    /// Verification failed (exit 5), naming the missing witnesses.
    pub fn check_quorum(&self, note: &str) -> Outcome {
        match self.policy()? {
            None => Ok(()),
            Some(policy) => policy.check_quorum(note).map_err(Failure::verify),
        }
    }
}

/// Parses `--log-key` (or `STACKPIN_LOG_VKEY`, or the old
/// `STACKPIN_LOG_KEY`): the vkey text itself, or a file holding it.
pub fn log_key(arg: &LogKey) -> Outcome<NoteVerifier> {
    if arg.value.is_none()
        && let Some(policy) = arg.policy()?
    {
        return match policy.logs.as_slice() {
            [log] => Ok(log.clone()),
            [] => Err(Failure::invalid(
                "the policy has no `log` line: pass --log-key as well",
            )),
            _ => Err(Failure::invalid(
                "the policy lists several logs: pass --log-key to say which one this is",
            )),
        };
    }
    let value = match (&arg.value, std::env::var("STACKPIN_LOG_KEY")) {
        (Some(v), _) => v.clone(),
        (None, Ok(v)) if !v.is_empty() => {
            eprintln!(
                "warning: reading the log key from STACKPIN_LOG_KEY, its old name; export it as \
                 STACKPIN_LOG_VKEY (the registry reads its signing key from \
                 STACKPIN_LOG_SIGNING_KEY)"
            );
            v
        }
        _ => {
            return Err(Failure::invalid(
                "the log's verifier key is needed: pass --log-key or set STACKPIN_LOG_VKEY to \
                 the line `stackpin-registry key` prints",
            ));
        }
    };
    let value = value.as_str();
    match NoteVerifier::parse(value) {
        Ok(v) => Ok(v),
        Err(parse_err) => {
            let path = Path::new(value);
            if path.is_file() {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Failure::invalid(format!("--log-key {}: {e}", path.display())))?;
                NoteVerifier::parse(text.trim())
                    .map_err(|e| Failure::invalid(format!("--log-key {}: {e}", path.display())))
            } else {
                Err(Failure::invalid(format!(
                    "--log-key: {parse_err} (pass the text `stackpin-registry key` prints, or a file holding it)"
                )))
            }
        }
    }
}

/// The file a checkpoint of `origin` signed by key `id` is saved in.
fn saved_path(dir: &Path, origin: &str, id: u32) -> PathBuf {
    dir.join("checkpoints")
        .join(format!("{}+{id:08x}.checkpoint", file_stem(origin)))
}

/// Where checkpoints were saved before the key was part of the name.
fn legacy_path(dir: &Path, origin: &str) -> PathBuf {
    dir.join("checkpoints")
        .join(format!("{}.checkpoint", file_stem(origin)))
}

/// A remembered checkpoint, read without a key.
#[derive(Debug, serde::Serialize)]
pub struct Remembered {
    pub origin: String,
    /// The signed-note id of the key that signed it (8 hex digits).
    #[serde(rename = "log_key_id")]
    pub key_id: String,
    pub size: u64,
    pub root: String,
    #[serde(skip)]
    pub path: PathBuf,
}

/// The entries of a folder of the state dir; `None` when it does not exist
/// yet.
fn read_folder(folder: &Path) -> Outcome<Option<std::fs::ReadDir>> {
    match std::fs::read_dir(folder) {
        Ok(entries) => Ok(Some(entries)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::invalid(format!(
            "reading {}: {e}",
            folder.display()
        ))),
    }
}

/// Every checkpoint remembered in `dir`, by origin, then key.
///
/// # Errors
/// When the folder cannot be read.
pub fn remembered(dir: &Path) -> Outcome<Vec<Remembered>> {
    let folder = dir.join("checkpoints");
    let Some(entries) = read_folder(&folder)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| Failure::invalid(format!("reading {}: {e}", folder.display())))?
            .path();
        if path.extension().is_none_or(|x| x != "checkpoint") {
            continue;
        }
        let Ok(note) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok((text, signatures)) = stackpin_core::note::split(&note) else {
            continue;
        };
        let Ok(cp) = Checkpoint::parse(text) else {
            continue;
        };
        // Every epoch is signed under the log's name, and remembered as it.
        let name = stackpin_core::note::split_epoch(&cp.origin).0.to_owned();
        let key_id = signatures
            .iter()
            .find(|s| s.name == name)
            .map_or_else(|| "unknown".to_owned(), |s| format!("{:08x}", s.id));
        out.push(Remembered {
            origin: name,
            key_id,
            size: cp.size,
            root: cp.root.hex(),
            path,
        });
    }
    out.sort_by(|a, b| (&a.origin, &a.key_id).cmp(&(&b.origin, &b.key_id)));
    Ok(out)
}

fn file_stem(origin: &str) -> String {
    origin
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The hashes of a proof as sent on the wire; `what` names the proof in
/// the error.
pub(crate) fn hashes(list: &[bytes::Bytes], what: &str) -> Outcome<Vec<Hash>> {
    list.iter()
        .map(|h| {
            Hash::from_slice(h).ok_or_else(|| {
                Failure::verify(format!("a proof hash of the {what} is not 32 bytes"))
            })
        })
        .collect()
}

/// Fetches the registry's current checkpoint and accepts it as
/// [`accept_checkpoint`] does; also returns the note as sent.
pub async fn latest_checkpoint(
    client: &mut crate::client::Client,
    log_key: &NoteVerifier,
    state: Option<&Path>,
) -> Outcome<(Checkpoint, String)> {
    let note = client
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await?
        .into_inner()
        .note;
    let cp = accept_checkpoint(client, &note, log_key, state).await?;
    Ok((cp, note))
}

/// Verifies a checkpoint note from the registry against the log key and
/// against the checkpoint saved from earlier runs, then saves the newer of
/// the two.
pub async fn accept_checkpoint(
    client: &mut crate::client::Client,
    note: &str,
    log_key: &NoteVerifier,
    state: Option<&Path>,
) -> Outcome<Checkpoint> {
    accept_checkpoint_with(note, log_key, state, true, async |small, large| {
        let proof = client
            .get_consistency_proof(pb::GetConsistencyProofRequest {
                old_size: small.size,
                new_size: large.size,
            })
            .await?
            .into_inner();
        let proof = hashes(&proof.hashes, "consistency proof")?;
        Ok(large.extends(small, &proof))
    })
    .await
}

/// As [`accept_checkpoint`], with the check that the tree of `small` is a
/// prefix of the tree of `large` done by `consistent` (a proof from the
/// registry, or roots computed from the log's tiles): it answers
/// `Ok(Err(why))` when they are not. With `refuse_older`, a checkpoint
/// smaller than the one remembered is refused outright (an answer about
/// what is live now is only as good as its checkpoint is recent);
/// without it (an audit of a mirror that may lag), it is checked for
/// consistency like any other.
pub async fn accept_checkpoint_with(
    note: &str,
    log_key: &NoteVerifier,
    state: Option<&Path>,
    refuse_older: bool,
    consistent: impl AsyncFnOnce(&Checkpoint, &Checkpoint) -> Outcome<Result<(), String>>,
) -> Outcome<Checkpoint> {
    let cp = Checkpoint::open(note, log_key)
        .map_err(|e| Failure::verify(format!("checkpoint signature: {e}")))?;
    let Some(dir) = state else {
        return Ok(cp);
    };
    // Remembered under the log's name: every epoch of it in one place.
    let name = stackpin_core::note::split_epoch(&cp.origin).0.to_owned();
    let path = saved_path(dir, &name, log_key.id());
    let legacy = legacy_path(dir, &name);
    let saved = match read_saved(&path)? {
        Some(text) => Some(Checkpoint::open(&text, log_key).map_err(|e| {
            Failure::verify(format!(
                "the saved checkpoint {} does not verify under this log key: {e} (it was \
                 altered; `stackpin trust forget {}` removes it)",
                path.display(),
                name
            ))
        })?),
        None => match read_saved(&legacy)? {
            Some(text) => match Checkpoint::open(&text, log_key) {
                Ok(old) => Some(old),
                Err(_) => return Err(other_key(dir, &name, log_key)),
            },
            None if remembered(dir)?.iter().any(|r| r.origin == name) => {
                return Err(other_key(dir, &name, log_key));
            }
            None => None,
        },
    };
    if let Some(old) = &saved
        && cp.epoch() != old.epoch()
    {
        return across_epochs(note, &cp, old, &path, consistent).await;
    }
    if let Some(old) = &saved
        && cp.size < old.size
        && refuse_older
    {
        return Err(Failure::verify(format!(
            "the checkpoint of {} has size {}, older than the size {} this CLI verified before \
             (in {}): the log was rolled back, or the answer comes from a copy that lags behind. \
             Ask again (a replica catches up within its poll interval; resolve --fresh); forget \
             the remembered one only if the log was re-created on purpose (`stackpin trust \
             forget {}`)",
            cp.origin,
            cp.size,
            old.size,
            path.display(),
            name
        )));
    }
    if let Some(old) = &saved {
        let forked = |why: String| {
            Failure::verify(format!(
                "the log is forked or was rewritten: {why} (saved checkpoint of size {} in {})",
                old.size,
                path.display()
            ))
        };
        let (small, large) = if old.size <= cp.size {
            (old, &cp)
        } else {
            (&cp, old)
        };
        if small.size == large.size {
            if small.root != large.root {
                return Err(forked(format!("two different roots for size {}", cp.size)));
            }
        } else if small.size > 0 {
            consistent(small, large).await?.map_err(forked)?;
        }
        if old.size >= cp.size {
            return Ok(cp);
        }
    }
    crate::files::write_atomic(&path, note.as_bytes())?;
    // The old name is now covered by the new one.
    let _ = std::fs::remove_file(&legacy);
    Ok(cp)
}

/// A checkpoint of another epoch than the one remembered. An earlier
/// epoch is the old primary's, written after a promotion: refused. A later
/// one is taken when the remembered checkpoint is provably a prefix of it
/// (the new epoch's tree starts with the earlier epoch's as far as the
/// promotion held it): the usual consistency proof. When it is not (this
/// CLI saw entries of the loss window, which the new epoch does not hold),
/// it is refused too: following it would forget entries this CLI verified.
/// That is the operator's call, made once on purpose by forgetting the
/// remembered checkpoint after reading the loss window.
async fn across_epochs(
    note: &str,
    cp: &Checkpoint,
    old: &Checkpoint,
    path: &Path,
    consistent: impl AsyncFnOnce(&Checkpoint, &Checkpoint) -> Outcome<Result<(), String>>,
) -> Outcome<Checkpoint> {
    let name = stackpin_core::note::split_epoch(&cp.origin).0;
    if cp.epoch() < old.epoch() {
        return Err(Failure::verify(format!(
            "this checkpoint is of {} (epoch {}, size {}), but the log was promoted to epoch {} \
             ({}), which this CLI verified before (in {}): it comes from the old primary or a \
             copy of it. Ask the promoted registry",
            cp.origin,
            cp.epoch(),
            cp.size,
            old.epoch(),
            old.origin,
            path.display()
        )));
    }
    let held = if old.size == 0 {
        Ok(())
    } else if old.size <= cp.size {
        consistent(old, cp).await?
    } else {
        Err(format!(
            "it holds {} entries, fewer than the {} verified before",
            cp.size, old.size
        ))
    };
    if let Err(why) = held {
        return Err(Failure::verify(format!(
            "the log was promoted to epoch {} ({}), and it does not hold everything this CLI \
             verified of {} (size {}): {why}. The entries past the promotion are the loss \
             window: list them with `stackpin loss-window`, then, once the promotion is known \
             to be yours, forget the remembered checkpoint (`stackpin trust forget {name}`) and \
             run again",
            cp.epoch(),
            cp.origin,
            old.origin,
            old.size
        )));
    }
    crate::files::write_atomic(path, note.as_bytes())?;
    Ok(cp.clone())
}

fn read_saved(path: &Path) -> Outcome<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::invalid(format!("reading {}: {e}", path.display()))),
    }
}

/// The refusal of a log met under another key than the one remembered.
fn other_key(dir: &Path, origin: &str, log_key: &NoteVerifier) -> Failure {
    let others: Vec<String> = remembered(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.origin == origin)
        .map(|r| {
            format!(
                "key {} (size {}, in {})",
                r.key_id,
                r.size,
                r.path.display()
            )
        })
        .collect();
    Failure::verify(format!(
        "this CLI remembers the log {origin} under another key: {}; the registry now signs it \
         with key {:08x}. A log does not change its key: this may be another registry posing as \
         the one you met. If the log was re-created or re-keyed on purpose, forget what was \
         remembered with `stackpin trust forget {origin}` and run again",
        others.join(", "),
        log_key.id()
    ))
}

/// Forgets every checkpoint remembered for `origin`; returns what it
/// removed.
///
/// # Errors
/// When a file cannot be removed.
pub fn forget(dir: &Path, origin: &str) -> Outcome<Vec<Remembered>> {
    let gone: Vec<Remembered> = remembered(dir)?
        .into_iter()
        .filter(|r| r.origin == origin)
        .collect();
    for r in &gone {
        std::fs::remove_file(&r.path)
            .map_err(|e| Failure::invalid(format!("removing {}: {e}", r.path.display())))?;
    }
    Ok(gone)
}

/// The publisher keys a local check trusts: `--trusted-keys`, repeatable
/// (each a PEM public-key file or a folder of *.pem), so an auditor after
/// a key rotation passes the old keys and the new.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TrustedKeysArg {
    /// Publisher public keys: a PEM file or a folder of *.pem (repeatable;
    /// STACKPIN_TRUSTED_KEYS gives one).
    #[arg(
        long = "trusted-keys",
        env = "STACKPIN_TRUSTED_KEYS",
        value_name = "PATH"
    )]
    pub paths: Vec<PathBuf>,
}

impl TrustedKeysArg {
    /// Whether any was given.
    pub fn given(&self) -> bool {
        !self.paths.is_empty()
    }

    /// Every key of every path.
    ///
    /// # Errors
    /// Invalid when none was given, or a path holds no key.
    pub fn load(&self) -> Outcome<TrustedKeys> {
        if self.paths.is_empty() {
            return Err(Failure::invalid(
                "--trusted-keys (or STACKPIN_TRUSTED_KEYS) is required: the publisher public \
                 keys, a PEM file or a folder of *.pem; repeat it for several",
            ));
        }
        let mut keys = Vec::new();
        for path in &self.paths {
            let set = TrustedKeys::load(path)
                .map_err(|e| Failure::invalid(format!("--trusted-keys {}: {e}", path.display())))?;
            keys.extend(set.keys().iter().cloned());
        }
        Ok(TrustedKeys::new(keys))
    }

    /// The flags again, for a command line shown to people.
    pub fn shell_words(&self, quote: impl Fn(&str) -> String) -> String {
        self.paths
            .iter()
            .map(|p| format!("--trusted-keys {}", quote(&p.display().to_string())))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Where the log key remembered for the server at `url` is kept:
/// `<state dir>/servers/<url, as a file name>.vkey`, holding the URL and
/// the vkey on two lines.
fn server_path(dir: &Path, url: &str) -> PathBuf {
    dir.join("servers")
        .join(format!("{}.vkey", file_stem(url.trim_end_matches('/'))))
}

/// A log key remembered for a server.
#[derive(Debug, serde::Serialize)]
pub struct ServerKey {
    pub server: String,
    pub origin: String,
    /// The signed-note id of the key (8 hex digits).
    #[serde(rename = "log_key_id")]
    pub key_id: String,
    pub vkey: String,
}

/// The log key remembered for the server at `url`, if any.
///
/// # Errors
/// Verification failed when the file was altered into something that is
/// not a key; invalid when it cannot be read.
pub fn server_key(dir: &Path, url: &str) -> Outcome<Option<NoteVerifier>> {
    let path = server_path(dir, url);
    let Some(text) = read_saved(&path)? else {
        return Ok(None);
    };
    let mut lines = text.lines();
    if lines.next() != Some(url.trim_end_matches('/')) {
        // Another URL whose file name is the same: not this server's key.
        return Ok(None);
    }
    let vkey = lines.next().unwrap_or_default();
    NoteVerifier::parse(vkey).map(Some).map_err(|e| {
        Failure::verify(format!(
            "the log key remembered for {url} in {} is damaged: {e}",
            path.display()
        ))
    })
}

/// Remembers `key` as the log key of the server at `url` (`stackpin trust
/// add`, or the first contact verified under a key given on the command
/// line); true when it was not remembered before.
///
/// # Errors
/// Invalid when the file cannot be written.
pub fn remember_server_key(dir: &Path, url: &str, key: &NoteVerifier) -> Outcome<bool> {
    let path = server_path(dir, url);
    let known = read_saved(&path)?;
    let text = format!("{}\n{}\n", url.trim_end_matches('/'), key.vkey());
    if known.as_deref() == Some(text.as_str()) {
        return Ok(false);
    }
    crate::files::write_atomic(&path, text.as_bytes())?;
    Ok(known.is_none())
}

/// Every log key remembered for a server, by server URL.
///
/// # Errors
/// When the folder cannot be read.
pub fn server_keys(dir: &Path) -> Outcome<Vec<ServerKey>> {
    let folder = dir.join("servers");
    let Some(entries) = read_folder(&folder)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let mut lines = text.lines();
        let (Some(server), Some(vkey)) = (lines.next(), lines.next()) else {
            continue;
        };
        let Ok(key) = NoteVerifier::parse(vkey) else {
            continue;
        };
        out.push(ServerKey {
            server: server.to_owned(),
            origin: key.name().to_owned(),
            key_id: format!("{:08x}", key.id()),
            vkey: vkey.to_owned(),
        });
    }
    out.sort_by(|a, b| a.server.cmp(&b.server));
    Ok(out)
}

/// Where the log key in use came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `--log-key`, `STACKPIN_LOG_VKEY` or a policy's `log` line.
    Given,
    /// Remembered for the server (`stackpin trust add`, or a first
    /// verified contact).
    Remembered,
}

/// The log key to check answers from the server at `url` with: given on
/// the command line (or its variables, or a policy), else remembered for
/// that server; `None` when no key is known.
///
/// # Errors
/// Invalid for a key or policy that does not parse.
pub fn find_key(
    arg: &LogKey,
    url: &str,
    state: Option<&Path>,
) -> Outcome<Option<(NoteVerifier, KeySource)>> {
    if arg.given() || arg.policy.is_some() {
        return Ok(Some((log_key(arg)?, KeySource::Given)));
    }
    match state {
        Some(dir) => Ok(server_key(dir, url)?.map(|k| (k, KeySource::Remembered))),
        None => Ok(None),
    }
}
