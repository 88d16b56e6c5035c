//! Offline verification of what the registry answers, and the C2SP
//! tlog-proof file (<https://c2sp.org/tlog-proof>) that carries it.
//!
//! A restore is provable with three log entries, each with an inclusion proof
//! in one signed checkpoint:
//!
//! ```text
//! publish entry  binds release id -> sha256, carries the publisher's DSSE envelope
//! pin entry      the pin live at T: env, seq, release id, digest, activated_at
//! next entry     (if any) the following pin; its prev_pin is the pin entry's
//!                leaf hash, so no pin lies between the two: T's interval is exact
//! ```
//!
//! The `.tlog-proof` file's own index and proof lines are the pin entry: the
//! claim a restore rests on (this artifact was live in this environment from
//! this instant), so a generic C2SP verifier checks that claim. Its `extra`
//! line carries the pin entry's bytes (to recompute the leaf), and the
//! publish and next entries with their proofs, as base64 JSON (the schema is
//! in docs/proof-files.md). Files written before carried the publish entry
//! as the primary proof and the pin in `extra`; they still parse. Extra data
//! is unauthenticated by itself: everything in it is checked against the
//! signed checkpoint.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::entry::{Entry, PinEntry, PublishEntry};
use crate::error::{Error, Result};
use crate::merkle::{self, Hash};
use crate::note::{Checkpoint, NoteVerifier};
use crate::signing::{self, TrustedKeys};
use crate::time::Timestamp;

/// The first line of a tlog-proof file.
pub const TLOG_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";

/// A log entry and its inclusion proof in some checkpoint's tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvedEntry {
    pub index: u64,
    pub entry: Bytes,
    pub proof: Vec<Hash>,
}

impl ProvedEntry {
    /// Checks inclusion in `checkpoint` and parses the entry.
    ///
    /// # Errors
    /// Invalid when the proof does not lead to the checkpoint's root.
    pub fn verify(&self, what: &str, checkpoint: &Checkpoint) -> Result<Entry> {
        let leaf = merkle::leaf_hash(&self.entry);
        merkle::verify_inclusion(&leaf, self.index, checkpoint.size, &self.proof, &checkpoint.root)
            .map_err(|e| {
                Error::invalid(format!(
                    "inclusion proof of the {what} (log entry {}) does not match checkpoint size {}: {e}",
                    self.index, checkpoint.size
                ))
            })?;
        Entry::parse(self.index, &self.entry).map_err(|e| Error::invalid(e.to_string()))
    }
}

/// Everything needed to check a restore offline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreProof {
    /// The signed checkpoint note.
    pub checkpoint: String,
    pub publish: ProvedEntry,
    pub pin: ProvedEntry,
    pub next: Option<ProvedEntry>,
}

/// What a verified restore proof establishes.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    pub checkpoint: Checkpoint,
    pub publish: PublishEntry,
    pub pin: PinEntry,
    pub next: Option<PinEntry>,
    /// The publisher key whose signature verified.
    pub key_id: signing::KeyId,
}

impl Verified {
    /// The live interval of the pin: `[activated_at, next.activated_at)`.
    pub fn interval(&self) -> (Timestamp, Option<Timestamp>) {
        (
            self.pin.activated_at,
            self.next.as_ref().map(|n| n.activated_at),
        )
    }
}

fn fail(check: &str, why: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{check}: {why}"))
}

impl RestoreProof {
    /// Checks, with no network: the checkpoint signature, the three
    /// inclusion proofs, the successor link, the artifact's digest and the
    /// publisher's DSSE signature. Each failure names the check.
    ///
    /// # Errors
    /// Invalid, with a message starting with the name of the failed check.
    pub fn verify(
        &self,
        artifact: &[u8],
        log_key: &NoteVerifier,
        trusted: &TrustedKeys,
    ) -> Result<Verified> {
        self.verify_inner(Some(artifact), log_key, trusted)
    }

    /// Everything [`Self::verify`] checks except the artifact's own bytes
    /// (for a plan made before downloading it).
    ///
    /// # Errors
    /// As [`Self::verify`].
    pub fn verify_entries(
        &self,
        log_key: &NoteVerifier,
        trusted: &TrustedKeys,
    ) -> Result<Verified> {
        self.verify_inner(None, log_key, trusted)
    }

    fn verify_inner(
        &self,
        artifact: Option<&[u8]>,
        log_key: &NoteVerifier,
        trusted: &TrustedKeys,
    ) -> Result<Verified> {
        let checkpoint = Checkpoint::open(&self.checkpoint, log_key)
            .map_err(|e| fail("checkpoint signature", e))?;
        let Entry::Publish(publish) = self
            .publish
            .verify("publish entry", &checkpoint)
            .map_err(|e| fail("publish entry inclusion", e))?
        else {
            return Err(fail("publish entry", "the entry is not a publish"));
        };
        let digest = match artifact {
            Some(bytes) => Digest::of(bytes),
            None => publish.digest,
        };
        if publish.digest != digest {
            return Err(fail(
                "artifact digest",
                format!(
                    "the file hashes to {digest}, the log recorded {}",
                    publish.digest
                ),
            ));
        }
        let attestation = signing::verify_logged_envelope(&publish.envelope, trusted)
            .map_err(|e| fail("publisher signature", e))?;
        if attestation.release_id != publish.release_id || attestation.digest != publish.digest {
            return Err(fail(
                "publisher signature",
                format!(
                    "the envelope names {} {}, the entry {} {}",
                    attestation.release_id, attestation.digest, publish.release_id, publish.digest
                ),
            ));
        }
        let Entry::Pin(pin) = self
            .pin
            .verify("pin entry", &checkpoint)
            .map_err(|e| fail("pin entry inclusion", e))?
        else {
            return Err(fail("pin entry", "the entry is not a pin"));
        };
        if pin.digest != digest || pin.release_id != publish.release_id {
            return Err(fail(
                "pin entry",
                format!(
                    "the pin names {} {}, not this artifact",
                    pin.release_id, pin.digest
                ),
            ));
        }
        let next = match &self.next {
            None => None,
            Some(n) => {
                let Entry::Pin(next) = n
                    .verify("next pin entry", &checkpoint)
                    .map_err(|e| fail("next pin inclusion", e))?
                else {
                    return Err(fail("next pin", "the entry is not a pin"));
                };
                let link = hex::encode(merkle::leaf_hash(&self.pin.entry));
                if next.env != pin.env
                    || next.seq != pin.seq + 1
                    || next.prev_pin.as_deref() != Some(link.as_str())
                {
                    return Err(fail(
                        "successor link",
                        format!(
                            "the next pin (#{} of {}) does not link to pin #{} of {}",
                            next.seq, next.env, pin.seq, pin.env
                        ),
                    ));
                }
                Some(next)
            }
        };
        Ok(Verified {
            checkpoint,
            publish,
            pin,
            next,
            key_id: attestation.key_id,
        })
    }

    /// The `.tlog-proof` text.
    pub fn to_tlog_proof(&self) -> String {
        let extra = Extra {
            entry: STANDARD.encode(&self.pin.entry),
            publish: Some(ExtraEntry::from(&self.publish)),
            pin: None,
            next: self.next.as_ref().map(ExtraEntry::from),
        };
        let extra = serde_json::to_vec(&extra).unwrap_or_default();
        let mut out = format!(
            "{TLOG_PROOF_HEADER}\nextra {}\nindex {}\n",
            STANDARD.encode(extra),
            self.pin.index
        );
        for h in &self.pin.proof {
            out.push_str(&STANDARD.encode(h));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint);
        out
    }

    /// Parses a `.tlog-proof` file written by [`Self::to_tlog_proof`], or by
    /// earlier versions (the publish entry as the primary proof).
    ///
    /// # Errors
    /// Invalid when the text is not such a file.
    pub fn parse_tlog_proof(text: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid(format!("not a stackpin tlog-proof: {why}"));
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(TLOG_PROOF_HEADER) {
            return Err(bad("the first line must be c2sp.org/tlog-proof@v1"));
        }
        let extra = lines
            .next()
            .and_then(|l| l.strip_prefix("extra "))
            .ok_or_else(|| bad("the extra line with the entries is missing"))?;
        let index = lines
            .next()
            .and_then(|l| l.strip_prefix("index "))
            .ok_or_else(|| bad("the index line is missing"))?;
        if index.is_empty() || (index.len() > 1 && index.starts_with('0')) {
            return Err(bad("the index is not a canonical decimal"));
        }
        let index: u64 = index
            .parse()
            .map_err(|_| bad("the index is not a number"))?;
        let proof = lines.map(decode_hash).collect::<Result<Vec<_>>>()?;
        let extra = STANDARD
            .decode(extra)
            .map_err(|_| bad("extra is not base64"))?;
        let extra: Extra =
            serde_json::from_slice(&extra).map_err(|e| bad(&format!("extra: {e}")))?;
        let primary = ProvedEntry {
            index,
            entry: STANDARD
                .decode(&extra.entry)
                .map_err(|_| bad("extra entry is not base64"))?
                .into(),
            proof,
        };
        let (publish, pin) = match (extra.publish, extra.pin) {
            (Some(publish), None) => (publish.try_into()?, primary),
            (None, Some(pin)) => (primary, pin.try_into()?),
            _ => {
                return Err(bad(
                    "extra must carry either the publish entry (the pin is the primary proof) \
                     or, in files from earlier versions, the pin entry",
                ));
            }
        };
        Ok(Self {
            checkpoint: checkpoint.to_owned(),
            publish,
            pin,
            next: extra.next.map(TryInto::try_into).transpose()?,
        })
    }
}

fn decode_hash(text: &str) -> Result<Hash> {
    STANDARD
        .decode(text)
        .ok()
        .and_then(|h| Hash::from_slice(&h))
        .ok_or_else(|| Error::invalid(format!("proof line {text:?} is not a base64 SHA-256 hash")))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Extra {
    /// The entry the file's own index and proof lines prove: the pin entry
    /// (earlier files: the publish entry).
    entry: String,
    /// The publish entry, with its proof (absent in earlier files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    publish: Option<ExtraEntry>,
    /// Earlier files only: the pin entry, with its proof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pin: Option<ExtraEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<ExtraEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtraEntry {
    index: u64,
    entry: String,
    proof: Vec<String>,
}

impl From<&ProvedEntry> for ExtraEntry {
    fn from(e: &ProvedEntry) -> Self {
        Self {
            index: e.index,
            entry: STANDARD.encode(&e.entry),
            proof: e.proof.iter().map(|h| STANDARD.encode(h)).collect(),
        }
    }
}

impl TryFrom<ExtraEntry> for ProvedEntry {
    type Error = Error;

    fn try_from(e: ExtraEntry) -> Result<Self> {
        Ok(Self {
            index: e.index,
            entry: STANDARD
                .decode(&e.entry)
                .map_err(|_| Error::invalid("a proof entry is not base64"))?
                .into(),
            proof: e
                .proof
                .iter()
                .map(|h| decode_hash(h))
                .collect::<Result<_>>()?,
        })
    }
}
