//! What the CLI trusts and remembers: the log's verifier key, and the last
//! checkpoint it verified per log (rollback and fork protection).
//!
//! Saved checkpoints live in `<state dir>/checkpoints/<origin>.checkpoint`
//! (the origin with anything but `[A-Za-z0-9._-]` replaced by `_`). A newer
//! checkpoint is accepted only with a consistency proof from the saved one;
//! an older one only with a consistency proof up to the saved one.

use std::path::{Path, PathBuf};

use stackpin_core::merkle::{self, Hash};
use stackpin_core::note::{Checkpoint, NoteVerifier};
use stackpin_core::signing::TrustedKeys;
use stackpin_proto::v1 as pb;

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

/// Parses `--log-key`: the vkey text itself, or a file holding it.
pub fn log_key(value: &str) -> Outcome<NoteVerifier> {
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

fn saved_path(dir: &Path, origin: &str) -> PathBuf {
    let name: String = origin
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join("checkpoints").join(format!("{name}.checkpoint"))
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
    let cp = Checkpoint::open(note, log_key)
        .map_err(|e| Failure::verify(format!("checkpoint signature: {e}")))?;
    let Some(dir) = state else {
        return Ok(cp);
    };
    let path = saved_path(dir, &cp.origin);
    let saved = match std::fs::read_to_string(&path) {
        Ok(text) => Some(Checkpoint::open(&text, log_key).map_err(|e| {
            Failure::verify(format!(
                "the saved checkpoint {} does not verify under this log key: {e}",
                path.display()
            ))
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Failure::invalid(format!("reading {}: {e}", path.display()))),
    };
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
            let proof = client
                .get_consistency_proof(pb::GetConsistencyProofRequest {
                    old_size: small.size,
                    new_size: large.size,
                })
                .await?
                .into_inner();
            let proof = hashes(&proof.hashes, "consistency proof")?;
            merkle::verify_consistency(small.size, large.size, &small.root, &large.root, &proof)
                .map_err(|e| {
                    forked(format!(
                        "no valid consistency proof from {} to {}: {e}",
                        small.size, large.size
                    ))
                })?;
        }
        if old.size >= cp.size {
            return Ok(cp);
        }
    }
    crate::files::write_atomic(&path, note.as_bytes())?;
    Ok(cp)
}

/// Loads `--trusted-keys` for a local check.
pub fn trusted_keys(path: &Path) -> Outcome<TrustedKeys> {
    TrustedKeys::load(path).map_err(|e| Failure::invalid(format!("--trusted-keys: {e}")))
}
