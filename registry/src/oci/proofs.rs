//! The pin's `.tlog-proof` as a referrer of its manifest: the same C2SP
//! file `stackpin restore` writes (the pin entry, its publish entry and,
//! when there is one, the next pin, each with its inclusion proof in one
//! signed checkpoint), so that a verifier holding only the digest `prod`
//! had checks the claim "this artifact was live here from this instant"
//! offline, with `stackpin verify`.
//!
//! A proof is against a checkpoint, and checkpoints grow with the log, so
//! the first replica asked builds it against the checkpoint current then,
//! stores it write-once under its digest and names it once for that pin
//! (`oci/proofs/<pin log index>`); every later answer, from any replica,
//! serves that file, after checking the log's signature on its checkpoint
//! and that it proves exactly this pin. A proof made before the pin's
//! successor existed says the pin was live up to its checkpoint, which was
//! true; `stackpin restore` gives the newest proof.

use std::sync::Arc;

use bytes::Bytes;
use stackpin_core::entry::Entry;
use stackpin_core::note::{Checkpoint, NoteVerifier};
use stackpin_core::proof::RestoreProof;

use super::stored::{Named, named_once};
use crate::digest::Digest;
use crate::error::{Kind, Result};
use crate::records::PinRecord;
use crate::registry::{Query, Registry};

/// The artifact type and layer media type of a proof referrer.
pub const PROOF_TYPE: &str = "application/vnd.dev.stackpin.tlog-proof.v1";
/// Where a pin's proof is named (`<digest> <size>`).
const PROOFS: &str = "oci/proofs";
/// The largest proof read back: three entries with their proofs and a
/// checkpoint with its cosignatures, with ample room.
const MAX_PROOF: u64 = 1 << 20;

fn pointer(pin: &PinRecord) -> object_store::path::Path {
    object_store::path::Path::from(format!("{PROOFS}/{}", pin.log_index))
}

/// The digest and size of `pin`'s proof: the stored one, checked, else
/// built now and stored. `None` when the pin was never live for an instant
/// (a later pin of its environment took effect at the same instant), or
/// when the stored proof does not prove it (then logged, not served).
pub(super) async fn proof_of(
    registry: &Arc<Registry>,
    pin: &PinRecord,
) -> Result<Option<(Digest, u64)>> {
    let store = registry.store();
    let pointer = pointer(pin);
    let make = || async { Ok(build(registry, pin).await?.map(Bytes::from)) };
    let (digest, bytes) = match named_once(&*store, &pointer, MAX_PROOF, make).await? {
        Named::Found(digest, bytes) => (digest, bytes),
        Named::Nothing => return Ok(None),
        Named::Damaged(why) => return Ok(refused(&pointer, why)),
    };
    let size = bytes.len() as u64;
    let verifier = NoteVerifier::parse(&registry.log_vkey())?;
    let pin = pin.clone();
    let checked = crate::blocking::run(move || Ok(proves(&bytes, &pin, &verifier))).await?;
    match checked {
        Ok(()) => Ok(Some((digest, size))),
        Err(why) => Ok(refused(&pointer, &why)),
    }
}

fn refused<T>(pointer: &object_store::path::Path, why: &str) -> Option<T> {
    tracing::error!(%pointer, why, "a stored pin proof is not served");
    None
}

/// The `.tlog-proof` text of `pin`, against the newest stored checkpoint.
async fn build(registry: &Registry, pin: &PinRecord) -> Result<Option<String>> {
    let query = Query::At {
        at: pin.entry.activated_at,
        margin: None,
    };
    let proved = match registry.resolve_proved(&pin.entry.env, &query, true).await {
        Ok(p) => p,
        // Nothing live at that instant as the timeline reads it (or an
        // instant it will not answer for): no proof to offer.
        Err(e)
            if matches!(
                e.kind(),
                Kind::NotFound | Kind::Invalid | Kind::Precondition
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    if proved.resolution.pin.log_index != pin.log_index {
        return Ok(None);
    }
    let proof = RestoreProof {
        checkpoint: proved.checkpoint.note.to_string(),
        publish: proved.publish,
        pin: proved.pin,
        next: proved.next,
    };
    Ok(Some(proof.to_tlog_proof()))
}

/// Whether `bytes` is a `.tlog-proof` whose checkpoint the log signed and
/// whose entries prove `pin` and its release's publish.
fn proves(
    bytes: &[u8],
    pin: &PinRecord,
    log_key: &NoteVerifier,
) -> std::result::Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "it is not text".to_owned())?;
    let proof = RestoreProof::parse_tlog_proof(text).map_err(|e| e.to_string())?;
    let checkpoint = Checkpoint::open(&proof.checkpoint, log_key).map_err(|e| e.to_string())?;
    let entry = proof
        .pin
        .verify("pin entry", &checkpoint)
        .map_err(|e| e.to_string())?;
    let Entry::Pin(proved) = entry else {
        return Err("its pin entry is not a pin".to_owned());
    };
    if proof.pin.index != pin.log_index || proved != pin.entry {
        return Err(format!(
            "it proves entry {} , not pin #{} of {}",
            proof.pin.index, pin.entry.seq, pin.entry.env
        ));
    }
    let Entry::Publish(publish) = proof
        .publish
        .verify("publish entry", &checkpoint)
        .map_err(|e| e.to_string())?
    else {
        return Err("its publish entry is not a publish".to_owned());
    };
    if publish.release_id != pin.entry.release_id {
        return Err("its publish entry is of another release".to_owned());
    }
    if let Some(next) = &proof.next {
        next.verify("next pin", &checkpoint)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
