//! C2SP signed notes (<https://c2sp.org/signed-note>) and tlog checkpoints
//! (<https://c2sp.org/tlog-checkpoint>): how the registry commits to its log.
//!
//! ```text
//! stackpin.local/log                       <- origin (the key name)
//! 42                                       <- tree size
//! 2lX3...base64 root hash...=              <- RFC 6962 root
//!                                          <- blank line
//! — stackpin.local/log <base64(key id || Ed25519 signature of the text)>
//! ```
//!
//! The key id is the first four bytes of
//! `SHA-256(name || 0x0A || 0x01 || public key)`; the verifier key travels
//! as the text `<name>+<hex key id>+<base64(0x01 || public key)>` (the "vkey"
//! form used by Go's sumdb note package and other tlog tools).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::merkle::Hash;

/// The Ed25519 signature type byte of signed notes.
const ED25519: u8 = 0x01;
/// The origin every registry signed as before origins were unique; logs
/// that signed with it keep it. New logs derive theirs
/// ([`derived_origin`]).
pub const DEFAULT_ORIGIN: &str = "stackpin.local/log";
/// Largest note accepted when parsing.
pub const MAX_NOTE_BYTES: usize = 64 * 1024;

pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(Error::invalid(format!(
            "note key name {name:?} must be non-empty, without spaces or '+'"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid("note key name contains control characters"));
    }
    Ok(())
}

/// The signed-note key id of an Ed25519 key under `name`.
pub fn key_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(key.as_bytes());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// The origin of a new log whose settings name none: unique to its key
/// (`stackpin.local/log/` and the first 16 hex digits of the SHA-256 of the
/// raw public key), so two installations never sign as the same log, and
/// replicas that share a key share an origin.
pub fn derived_origin(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{DEFAULT_ORIGIN}/{hex}")
}

/// The origin line of a checkpoint note (its first line), unverified: what
/// a stored log says it signs as.
pub fn origin_of(note: &str) -> Option<&str> {
    note.split('\n')
        .next()
        .filter(|line| check_name(line).is_ok())
}

/// The origin of a log's epoch `epoch`: the log's own name for the first
/// epoch, `<name>/epoch/<n>` for each one a promotion began
/// (`stackpin-registry promote`). Every epoch is signed by the same key
/// under the log's name; a new epoch is a new log whose tree starts with
/// the whole of the previous epoch's as a standby held it, then the
/// promotion entry.
pub fn epoch_origin(name: &str, epoch: u64) -> String {
    if epoch <= 1 {
        name.to_owned()
    } else {
        format!("{name}/epoch/{epoch}")
    }
}

/// The epoch `origin` is of the log named `name` ([`epoch_origin`]), or
/// `None` when it is no epoch of that log.
pub fn epoch_of(origin: &str, name: &str) -> Option<u64> {
    if origin == name {
        return Some(1);
    }
    let n = origin.strip_prefix(name)?.strip_prefix("/epoch/")?;
    let epoch: u64 = n.parse().ok()?;
    (epoch >= 2 && n == epoch.to_string()).then_some(epoch)
}

/// The log name and epoch of an epoch's origin (an origin that names no
/// epoch is its own log's first).
pub fn split_epoch(origin: &str) -> (&str, u64) {
    if let Some((name, _)) = origin.rsplit_once("/epoch/")
        && let Some(epoch) = epoch_of(origin, name)
    {
        return (name, epoch);
    }
    (origin, 1)
}

/// Checks that `origin` can be a log origin and note key name.
///
/// # Errors
/// Invalid for an empty name, spaces, '+' or control characters.
pub fn check_origin(origin: &str) -> Result<()> {
    check_name(origin)?;
    if origin.contains("/epoch/") {
        return Err(Error::invalid(format!(
            "log origin {origin:?} holds \"/epoch/\", which names the epochs of a log \
             (<origin>/epoch/<n>, begun by a promotion)"
        )));
    }
    Ok(())
}

/// Signs notes as the log.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    id: u32,
}

impl NoteSigner {
    /// A signer named `name`.
    ///
    /// # Errors
    /// Invalid for a name with spaces or '+'.
    pub fn new(name: &str, key: SigningKey) -> Result<Self> {
        check_name(name)?;
        let id = key_id(name, &key.verifying_key());
        Ok(Self {
            name: name.to_owned(),
            key,
            id,
        })
    }

    /// The key name (the log origin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key text: `<name>+<hex id>+<base64(0x01 || key)>`.
    pub fn vkey(&self) -> String {
        self.verifier().vkey()
    }

    /// The verifier for this signer.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
            id: self.id,
        }
    }

    /// A bare Ed25519 signature of `message` with the log's key, for
    /// messages that can never be read as a note (see
    /// [`crate::webhook`]).
    pub(crate) fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Signs `text` (which must end in a newline) into a signed note.
    pub fn sign(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_be_bytes().to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!("{text}\n\u{2014} {} {}\n", self.name, STANDARD.encode(blob))
    }
}

/// Verifies notes signed by one known key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key: VerifyingKey,
    id: u32,
}

impl NoteVerifier {
    /// Parses a verifier key `<name>+<hex id>+<base64(0x01 || key)>`.
    ///
    /// # Errors
    /// Invalid when the text is malformed, not Ed25519, or its id does not
    /// match its name and key.
    pub fn parse(vkey: &str) -> Result<Self> {
        let (name, id, key) = parse_vkey(vkey, "log key", ED25519, "Ed25519 (type 0x01)")?;
        if key_id(&name, &key) != id {
            return Err(Error::invalid(format!(
                "log key {:?} is not a verifier key: the key id does not match the name and key",
                vkey.trim()
            )));
        }
        Ok(Self { name, key, id })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signed-note key id (of name and key).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The public key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The verifier key text: `<name>+<hex id>+<base64(0x01 || key)>`.
    pub fn vkey(&self) -> String {
        format_vkey(&self.name, self.id, ED25519, &self.key)
    }

    /// Checks a signed note and returns its text (which includes the final
    /// newline).
    ///
    /// # Errors
    /// Invalid when the note is malformed, a signature by this key fails, or
    /// no signature by this key is present.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str> {
        let (text, signatures) = split(note)?;
        let mut verified = false;
        for sig in signatures {
            if sig.name != self.name || sig.id != self.id {
                continue; // another key's signature: ignored, as the spec says
            }
            let name = sig.name;
            let sig = Signature::from_slice(&sig.signature)
                .map_err(|_| Error::invalid(format!("signature of {name} is not Ed25519")))?;
            if self.key.verify_strict(text.as_bytes(), &sig).is_err() {
                return Err(Error::invalid(format!(
                    "the signature of {name} does not verify: the note was altered or signed by another key"
                )));
            }
            verified = true;
        }
        if !verified {
            return Err(Error::invalid(format!(
                "the note carries no signature by the log key {}+{:08x}",
                self.name, self.id
            )));
        }
        Ok(text)
    }
}

/// A signed-note verifier key: `<name>+<hex id>+<base64(type || key)>`.
pub(crate) fn format_vkey(name: &str, id: u32, kind: u8, key: &VerifyingKey) -> String {
    let mut material = vec![kind];
    material.extend_from_slice(key.as_bytes());
    format!("{name}+{id:08x}+{}", STANDARD.encode(material))
}

/// Parses a verifier key of signature type `kind` (an Ed25519 key): its
/// name, its stated id (the caller checks it, as ids differ by type) and
/// its key. `what` and `kind_text` name them in errors.
pub(crate) fn parse_vkey(
    vkey: &str,
    what: &str,
    kind: u8,
    kind_text: &str,
) -> Result<(String, u32, VerifyingKey)> {
    let vkey = vkey.trim();
    let bad = |why: &str| Error::invalid(format!("{what} {vkey:?} is not a verifier key: {why}"));
    let mut parts = vkey.splitn(3, '+');
    let (Some(name), Some(id_hex), Some(material)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected <name>+<key id>+<key>"));
    };
    check_name(name)?;
    if id_hex.len() != 8 {
        return Err(bad("the key id must be 8 hex digits"));
    }
    let id = u32::from_str_radix(id_hex, 16).map_err(|_| bad("the key id is not hex"))?;
    let material = STANDARD
        .decode(material)
        .map_err(|_| bad("the key is not base64"))?;
    let [first, rest @ ..] = material.as_slice() else {
        return Err(bad("the key is empty"));
    };
    if *first != kind {
        return Err(bad(&format!("only {kind_text} keys are supported")));
    }
    let bytes: [u8; 32] = rest
        .try_into()
        .map_err(|_| bad("an Ed25519 key is 32 bytes"))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a valid Ed25519 point"))?;
    Ok((name.to_owned(), id, key))
}

/// One signature line of a signed note, not verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureLine<'a> {
    /// The key name.
    pub name: &'a str,
    /// The key id (the first four bytes of the decoded signature).
    pub id: u32,
    /// The signature proper (what follows the key id).
    pub signature: Vec<u8>,
}

/// Splits a signed note into its text (with its final newline) and its
/// signature lines, verifying nothing.
///
/// # Errors
/// Invalid when the note is too large, has control characters, or its
/// signature lines are malformed.
pub fn split(note: &str) -> Result<(&str, Vec<SignatureLine<'_>>)> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(Error::invalid("signed note is too large"));
    }
    if note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Error::invalid("signed note contains control characters"));
    }
    let at = note
        .rfind("\n\n")
        .ok_or_else(|| Error::invalid("signed note has no blank line before its signatures"))?;
    let (text, sigs) = (&note[..=at], &note[at + 2..]);
    if !sigs.ends_with('\n') || sigs.len() < 2 {
        return Err(Error::invalid("signed note has no signature lines"));
    }
    let mut out = Vec::new();
    for line in sigs[..sigs.len() - 1].split('\n') {
        let malformed = || Error::invalid(format!("malformed signature line {line:?}"));
        let (name, blob) = line
            .strip_prefix("\u{2014} ")
            .ok_or_else(malformed)?
            .split_once(' ')
            .ok_or_else(malformed)?;
        let blob = STANDARD
            .decode(blob)
            .map_err(|_| Error::invalid(format!("signature of {name} is not base64")))?;
        let [a, b, c, d, signature @ ..] = blob.as_slice() else {
            return Err(Error::invalid(format!("signature of {name} is too short")));
        };
        out.push(SignatureLine {
            name,
            id: u32::from_be_bytes([*a, *b, *c, *d]),
            signature: signature.to_vec(),
        });
    }
    Ok((text, out))
}

/// A tlog checkpoint body: the log's commitment to its first `size` entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: origin, size, base64 root, each on its own line.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Parses a checkpoint body (extension lines after the third are allowed
    /// and ignored).
    ///
    /// # Errors
    /// Invalid when a line is missing or malformed.
    pub fn parse(text: &str) -> Result<Self> {
        let mut lines = text.split('\n');
        let origin = lines.next().filter(|l| !l.is_empty());
        let size = lines.next();
        let root = lines.next();
        let (Some(origin), Some(size), Some(root)) = (origin, size, root) else {
            return Err(Error::invalid(
                "checkpoint needs origin, size and root lines",
            ));
        };
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(Error::invalid(format!(
                "checkpoint size {size:?} is not a decimal"
            )));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| Error::invalid(format!("checkpoint size {size:?} is out of range")))?;
        let root: Hash = STANDARD
            .decode(root)
            .ok()
            .and_then(|r| Hash::from_slice(&r))
            .ok_or_else(|| Error::invalid("checkpoint root is not a base64 SHA-256 hash"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }

    /// Verifies a signed checkpoint against the log key and parses it; the
    /// origin must be the key's name, or an epoch of it ([`epoch_origin`]).
    ///
    /// # Errors
    /// Invalid when the signature or the body does not check out.
    pub fn open(note: &str, verifier: &NoteVerifier) -> Result<Self> {
        let text = verifier.open(note)?;
        let cp = Self::parse(text)?;
        if epoch_of(&cp.origin, verifier.name()).is_none() {
            return Err(Error::invalid(format!(
                "checkpoint origin {:?} is not the log key's name {:?} (nor an epoch of it)",
                cp.origin,
                verifier.name()
            )));
        }
        Ok(cp)
    }

    /// The epoch this checkpoint is of (1 for an origin that names none).
    pub fn epoch(&self) -> u64 {
        split_epoch(&self.origin).1
    }

    /// Checks that this checkpoint's tree extends `older`'s: the same log,
    /// at least as large, and a prefix by the consistency `proof` from
    /// `older.size` to `self.size` (empty for equal sizes, whose roots must
    /// then be equal). A smaller checkpoint never extends a larger one: a
    /// log that shrank was rolled back, whatever its root. The one rule for
    /// the CLI's remembered checkpoints and a witness's cosigned ones.
    ///
    /// # Errors
    /// Why not, naming both sizes.
    ///
    /// A later epoch of the same log extends an earlier one by the same
    /// rule: its tree starts with the earlier epoch's, as far as the
    /// promotion took it. An earlier epoch never extends a later one: it is
    /// the old primary, written after the promotion.
    pub fn extends(&self, older: &Checkpoint, proof: &[Hash]) -> std::result::Result<(), String> {
        let (name, epoch) = split_epoch(&self.origin);
        let (older_name, older_epoch) = split_epoch(&older.origin);
        if name != older_name {
            return Err(format!(
                "checkpoint of {} is not of the log {}",
                self.origin, older.origin
            ));
        }
        if epoch < older_epoch {
            return Err(format!(
                "this checkpoint is of {} (epoch {epoch}), but the log was promoted to epoch \
                 {older_epoch} ({}) seen before: it comes from the old primary, written after \
                 the promotion",
                self.origin, older.origin
            ));
        }
        if self.size < older.size {
            return Err(format!(
                "size {} is older than size {} seen before: the log was rolled back, or this \
                 answer comes from a copy that lags behind",
                self.size, older.size
            ));
        }
        if self.size == older.size {
            return if self.root == older.root {
                Ok(())
            } else {
                Err(format!("two different roots for size {}", self.size))
            };
        }
        if older.size == 0 {
            return Ok(());
        }
        crate::merkle::verify_consistency(older.size, self.size, &older.root, &self.root, proof)
            .map_err(|e| {
                format!(
                    "no valid consistency proof from {} to {}: {e}",
                    older.size, self.size
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // golang.org/x/mod/sumdb/note, note_test.go / the package example.
    const SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const SIG: &str = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=";

    fn go_signer() -> NoteSigner {
        let material = STANDARD
            .decode(SKEY.splitn(5, '+').nth(4).unwrap())
            .unwrap();
        assert_eq!(material[0], ED25519);
        let seed: [u8; 32] = material[1..].try_into().unwrap();
        NoteSigner::new("PeterNeumann", SigningKey::from_bytes(&seed)).unwrap()
    }

    #[test]
    fn reproduces_the_go_sumdb_note_vector_byte_for_byte() {
        let signer = go_signer();
        assert_eq!(signer.vkey(), VKEY);
        let note = signer.sign(TEXT);
        assert_eq!(note, format!("{TEXT}\n\u{2014} PeterNeumann {SIG}\n"));
        let verifier = NoteVerifier::parse(VKEY).unwrap();
        assert_eq!(verifier.open(&note).unwrap(), TEXT);
    }

    #[test]
    fn epochs_are_named_under_the_log_and_only_go_forward() {
        assert_eq!(epoch_origin("a/log", 1), "a/log");
        assert_eq!(epoch_origin("a/log", 2), "a/log/epoch/2");
        assert_eq!(epoch_of("a/log/epoch/2", "a/log"), Some(2));
        assert_eq!(epoch_of("a/log", "a/log"), Some(1));
        for bad in [
            "a/log/epoch/1",
            "a/log/epoch/02",
            "a/log/epoch/x",
            "b/log/epoch/2",
        ] {
            assert_eq!(epoch_of(bad, "a/log"), None, "{bad}");
        }
        assert_eq!(split_epoch("a/log/epoch/3"), ("a/log", 3));
        assert_eq!(split_epoch("a/log/epoch/01"), ("a/log/epoch/01", 1));
        let root = Hash::from_slice(&[7; 32]).unwrap();
        let cp = |origin: &str, size| Checkpoint {
            origin: origin.into(),
            size,
            root,
        };
        // Forward across a promotion, by the same proof rule; never back.
        assert!(cp("a/log/epoch/2", 5).extends(&cp("a/log", 5), &[]).is_ok());
        let back = cp("a/log", 6).extends(&cp("a/log/epoch/2", 5), &[]);
        assert!(back.unwrap_err().contains("old primary"));
        assert!(
            cp("b/log/epoch/2", 5)
                .extends(&cp("a/log", 5), &[])
                .is_err()
        );
    }

    #[test]
    fn derived_origins_are_valid_names_unique_to_their_key() {
        let a = derived_origin(&SigningKey::from_bytes(&[1; 32]).verifying_key());
        let b = derived_origin(&SigningKey::from_bytes(&[2; 32]).verifying_key());
        assert_ne!(a, b);
        assert!(a.starts_with("stackpin.local/log/") && a.len() == DEFAULT_ORIGIN.len() + 17);
        check_origin(&a).unwrap();
        let signer = NoteSigner::new(&a, SigningKey::from_bytes(&[1; 32])).unwrap();
        let body = Checkpoint {
            origin: a.clone(),
            size: 1,
            root: Hash::from_bytes([7; 32]),
        }
        .body();
        let note = signer.sign(&body);
        assert_eq!(origin_of(&note), Some(a.as_str()));
        assert_eq!(origin_of("has space\n"), None);
        assert_eq!(
            NoteVerifier::parse(&signer.vkey()).unwrap().vkey(),
            signer.vkey()
        );
    }

    #[test]
    fn altered_notes_and_wrong_keys_are_rejected() {
        let note = go_signer().sign(TEXT);
        let verifier = NoteVerifier::parse(VKEY).unwrap();
        assert!(
            verifier
                .open(&note.replace("cryptography", "cryptographY"))
                .is_err()
        );
        let other = NoteSigner::new("PeterNeumann", SigningKey::from_bytes(&[9; 32])).unwrap();
        let err = other.verifier().open(&note).unwrap_err();
        assert!(
            err.message().contains("no signature by the log key"),
            "{err}"
        );
        assert!(verifier.open(TEXT).is_err(), "unsigned text");
        assert!(
            verifier
                .open(&format!("{TEXT}\n\u{2014} PeterNeumann !!\n"))
                .is_err()
        );
    }

    #[test]
    fn verifier_keys_must_be_consistent() {
        assert!(NoteVerifier::parse(&VKEY.replace("c74f20a3", "c74f20a4")).is_err());
        assert!(NoteVerifier::parse(&VKEY.replace("PeterNeumann", "Peter")).is_err());
        assert!(NoteVerifier::parse("PeterNeumann+c74f20a3").is_err());
        assert!(NoteVerifier::parse("a b+c74f20a3+ARpc").is_err());
    }

    #[test]
    fn checkpoints_round_trip_and_check_their_origin() {
        let signer = NoteSigner::new(DEFAULT_ORIGIN, SigningKey::from_bytes(&[3; 32])).unwrap();
        let cp = Checkpoint {
            origin: DEFAULT_ORIGIN.to_owned(),
            size: 42,
            root: Hash::from_bytes([7; 32]),
        };
        let note = signer.sign(&cp.body());
        assert_eq!(Checkpoint::open(&note, &signer.verifier()).unwrap(), cp);
        for bad in [
            "o\n01\nAAAA\n",
            "o\n\n",
            "o\n1\nnotbase64\n",
            "o\n-1\nAA==\n",
        ] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
        }
        let other = Checkpoint {
            origin: "elsewhere/log".into(),
            ..cp
        };
        let note = signer.sign(&other.body());
        assert!(Checkpoint::open(&note, &signer.verifier()).is_err());
    }
}
