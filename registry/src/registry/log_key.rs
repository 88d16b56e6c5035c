//! The log's key as a registry holds it, and the refusals of every write
//! by a read-only registry (which holds only the verifier key) and by an
//! old primary whose log was promoted elsewhere.

use crate::error::Error;
use crate::note::{Checkpoint, NoteSigner, NoteVerifier};

/// The log's key as this registry holds it: the signing key of a writer,
/// or only the verifier key of a read-only registry.
#[derive(Clone)]
pub enum LogKey {
    Signer(NoteSigner),
    Verifier(NoteVerifier),
}

impl LogKey {
    /// The verifier key.
    pub fn verifier(&self) -> NoteVerifier {
        match self {
            LogKey::Signer(s) => s.verifier(),
            LogKey::Verifier(v) => v.clone(),
        }
    }

    /// The signing key, which a read-only registry does not hold.
    pub fn signer(&self) -> Option<&NoteSigner> {
        match self {
            LogKey::Signer(s) => Some(s),
            LogKey::Verifier(_) => None,
        }
    }

    /// Whether this is a read-only registry's key.
    pub fn is_read_only(&self) -> bool {
        matches!(self, LogKey::Verifier(_))
    }

    /// The log's origin.
    pub fn name(&self) -> &str {
        match self {
            LogKey::Signer(s) => s.name(),
            LogKey::Verifier(v) => v.name(),
        }
    }

    /// The verifier key in the signed-note vkey form.
    pub fn vkey(&self) -> String {
        self.verifier().vkey()
    }
}

/// The refusal of every write by a read-only registry.
pub(super) fn read_only() -> Error {
    Error::precondition(
        "this registry is read-only (--read-only): it serves the log another registry writes \
         into its storage, and writes nothing; send writes to that registry",
    )
    .with_reason(stackpin_core::error::reason::READ_ONLY)
}

/// Acts on a checkpoint `note` of this log seen elsewhere (`by`: a witness
/// that showed it, a standby's storage that holds it): one signed by this
/// log's key in a later epoch than this registry signs in means the log
/// was promoted there, and this registry writes nothing more. Returns
/// whether it was.
///
/// # Errors
/// Why the note is not this log's checkpoint.
pub(super) fn supersede(shared: &super::Shared, by: &str, note: &str) -> Result<bool, String> {
    let later = Checkpoint::open(note, &shared.signer.verifier()).map_err(|e| e.to_string())?;
    let own = shared.epoch.load(std::sync::atomic::Ordering::Acquire);
    if later.epoch() <= own {
        return Ok(false);
    }
    tracing::error!(
        by, origin = %later.origin, size = later.size,
        "the log was promoted to a later epoch elsewhere: this registry writes nothing more \
         (see the runbook: Region outage, failback)"
    );
    let _ = shared.superseded.set(format!(
        "{by}: epoch {} ({}) began elsewhere",
        later.epoch(),
        later.origin
    ));
    metrics::gauge!("stackpin_log_superseded").set(1.0);
    Ok(true)
}

/// The refusal of every write by an old primary whose log was promoted
/// elsewhere (`why`: what showed it).
pub(super) fn promoted(why: &str) -> Error {
    Error::new(
        stackpin_core::error::Kind::Unavailable,
        format!(
            "this registry's log was promoted elsewhere ({why}): it writes nothing more. Send \
             writes to the promoted registry; what this one wrote past the promotion is the \
             loss window (`stackpin loss-window`)"
        ),
    )
    .with_reason(stackpin_core::error::reason::PROMOTED)
}
