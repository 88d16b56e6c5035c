//! Witnesses: C2SP tlog-cosignature v1 (Ed25519, <https://c2sp.org/tlog-cosignature>),
//! the body of a C2SP tlog-witness `add-checkpoint` request
//! (<https://c2sp.org/tlog-witness>), and C2SP tlog-policy files
//! (<https://c2sp.org/tlog-policy>) that say which cosignatures a
//! checkpoint needs. The registry (submitting), the witness (cosigning)
//! and the CLI (checking a quorum) all use these, so they cannot disagree.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::merkle::Hash;
use crate::note::{self, NoteVerifier};

/// The signature type byte of an Ed25519 cosignature/v1 key.
const COSIGNATURE_V1: u8 = 0x04;

/// The largest `add-checkpoint` request body a witness reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The media type of a witness's 409 answer (its size, in decimal).
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";

/// A cosigner's (a witness's) public key under its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosignerKey {
    name: String,
    key: VerifyingKey,
    id: u32,
}

fn cosigner_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', COSIGNATURE_V1]);
    h.update(key.as_bytes());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

impl CosignerKey {
    /// The key of `name`.
    ///
    /// # Errors
    /// Invalid for a name a signed note cannot carry.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self> {
        note::check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            id: cosigner_id(name, &key),
            key,
        })
    }

    /// Parses a cosigner vkey `<name>+<hex id>+<base64(0x04 || key)>`.
    ///
    /// # Errors
    /// Invalid when malformed, not a cosignature/v1 key, or its id does
    /// not match.
    pub fn parse(vkey: &str) -> Result<Self> {
        let (name, id, key) = note::parse_vkey(
            vkey,
            "witness key",
            COSIGNATURE_V1,
            "Ed25519 cosignature/v1 (type 0x04)",
        )?;
        let key = Self::new(&name, key)?;
        if key.id != id {
            return Err(Error::invalid(format!(
                "witness key {:?} is not a verifier key: the key id does not match the name and key",
                vkey.trim()
            )));
        }
        Ok(key)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// The vkey text.
    pub fn vkey(&self) -> String {
        note::format_vkey(&self.name, self.id, COSIGNATURE_V1, &self.key)
    }

    /// The time (POSIX seconds) of this cosigner's valid cosignature on
    /// `note`, the newest when there are several; `None` when it carries
    /// none that verifies.
    pub fn cosigned_at(&self, note: &str) -> Option<u64> {
        let (text, lines) = note::split(note).ok()?;
        lines
            .iter()
            .filter(|l| l.name == self.name && l.id == self.id && l.signature.len() == 72)
            .filter_map(|l| {
                let time = u64::from_be_bytes(l.signature[..8].try_into().ok()?);
                let sig = Signature::from_slice(&l.signature[8..]).ok()?;
                self.key
                    .verify_strict(signed_message(time, text).as_bytes(), &sig)
                    .ok()
                    .map(|()| time)
            })
            .max()
    }
}

/// What a cosignature/v1 signs: the header, the time, then the note text.
fn signed_message(time: u64, text: &str) -> String {
    format!("cosignature/v1\ntime {time}\n{text}")
}

/// Signs as a witness.
pub struct Cosigner {
    key: CosignerKey,
    signing: SigningKey,
}

impl Cosigner {
    /// A cosigner named `name`.
    ///
    /// # Errors
    /// Invalid for a bad name.
    pub fn new(name: &str, signing: SigningKey) -> Result<Self> {
        Ok(Self {
            key: CosignerKey::new(name, signing.verifying_key())?,
            signing,
        })
    }

    pub fn key(&self) -> &CosignerKey {
        &self.key
    }

    /// The cosignature line (with its newline) on checkpoint `text` (the
    /// note text, with its final newline) at `time`.
    pub fn cosign(&self, text: &str, time: u64) -> String {
        let sig = self.signing.sign(signed_message(time, text).as_bytes());
        let mut blob = self.key.id.to_be_bytes().to_vec();
        blob.extend_from_slice(&time.to_be_bytes());
        blob.extend_from_slice(&sig.to_bytes());
        format!("\u{2014} {} {}\n", self.key.name, STANDARD.encode(blob))
    }
}

/// An `add-checkpoint` request: the size the witness last cosigned, a
/// consistency proof from it, and the checkpoint note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddCheckpoint {
    pub old: u64,
    pub proof: Vec<Hash>,
    pub note: String,
}

impl AddCheckpoint {
    /// The request body.
    pub fn body(&self) -> String {
        let mut out = format!("old {}\n", self.old);
        for h in &self.proof {
            out.push_str(&STANDARD.encode(h.as_bytes()));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.note);
        out
    }

    /// Parses a request body.
    ///
    /// # Errors
    /// Invalid when malformed (the witness answers 400).
    pub fn parse(body: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid(format!("add-checkpoint request: {why}"));
        let (head, note) = body
            .split_once("\n\n")
            .ok_or_else(|| bad("no empty line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .filter(|n| *n == "0" || (!n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit())))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad("the first line must be `old <size>`"))?;
        let mut proof = Vec::new();
        for line in lines {
            let bytes = STANDARD
                .decode(line)
                .map_err(|_| bad("a proof line is not base64"))?;
            proof.push(Hash::from_slice(&bytes).ok_or_else(|| bad("a proof line is not a hash"))?);
        }
        if proof.len() > 63 {
            return Err(bad("more than 63 proof lines"));
        }
        Ok(Self {
            old,
            proof,
            note: note.to_owned(),
        })
    }
}

/// A C2SP tlog-policy: the logs accepted, the witnesses known, and the
/// quorum of cosignatures a checkpoint needs.
#[derive(Clone, Debug)]
pub struct Policy {
    pub logs: Vec<NoteVerifier>,
    witnesses: BTreeMap<String, CosignerKey>,
    groups: BTreeMap<String, (usize, Vec<String>)>,
    /// `None`: `quorum none`.
    quorum: Option<String>,
}

impl Policy {
    /// Parses a policy file.
    ///
    /// # Errors
    /// Invalid, naming the line, for anything the spec does not allow.
    pub fn parse(text: &str) -> Result<Self> {
        let mut policy = Self {
            logs: Vec::new(),
            witnesses: BTreeMap::new(),
            groups: BTreeMap::new(),
            quorum: None,
        };
        let mut quorum_seen = false;
        let mut keys = BTreeSet::new();
        for (n, raw) in text.split('\n').enumerate() {
            let bad = |why: String| Error::invalid(format!("policy line {}: {why}", n + 1));
            if raw.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                return Err(bad("control characters are not allowed".into()));
            }
            let words: Vec<&str> = raw.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
            let Some(first) = words.first() else { continue };
            if first.starts_with('#') {
                continue;
            }
            let defined = |p: &Self, name: &str| {
                p.witnesses.contains_key(name) || p.groups.contains_key(name)
            };
            match (*first, &words[1..]) {
                ("log", [vkey] | [vkey, _]) => {
                    let log = NoteVerifier::parse(vkey).map_err(|e| bad(e.message().into()))?;
                    if !keys.insert(*log.key().as_bytes()) {
                        return Err(bad("a duplicate key".into()));
                    }
                    policy.logs.push(log);
                }
                ("witness", [name, vkey] | [name, vkey, _]) => {
                    if *name == "none" || defined(&policy, name) {
                        return Err(bad(format!("{name} is already defined")));
                    }
                    let key = CosignerKey::parse(vkey).map_err(|e| bad(e.message().into()))?;
                    if !keys.insert(*key.key.as_bytes()) {
                        return Err(bad("a duplicate key".into()));
                    }
                    policy.witnesses.insert((*name).to_owned(), key);
                }
                ("group", [name, threshold, members @ ..]) if !members.is_empty() => {
                    if *name == "none" || defined(&policy, name) {
                        return Err(bad(format!("{name} is already defined")));
                    }
                    let mut seen = BTreeSet::new();
                    for m in members {
                        if !defined(&policy, m) {
                            return Err(bad(format!("{m} is not defined on an earlier line")));
                        }
                        if !seen.insert(*m) {
                            return Err(bad(format!("{m} is listed twice")));
                        }
                    }
                    let k = match *threshold {
                        "all" => members.len(),
                        "any" => 1,
                        k => k
                            .parse::<usize>()
                            .ok()
                            .filter(|k| {
                                (1..=members.len()).contains(k) && !threshold.starts_with('0')
                            })
                            .ok_or_else(|| {
                                bad(format!(
                                    "threshold {k:?}: all, any, or 1 to {}",
                                    members.len()
                                ))
                            })?,
                    };
                    let members = members.iter().map(|m| (*m).to_owned()).collect();
                    policy.groups.insert((*name).to_owned(), (k, members));
                }
                ("quorum", [name]) => {
                    if quorum_seen {
                        return Err(bad("a second quorum line".into()));
                    }
                    quorum_seen = true;
                    if *name != "none" {
                        if !defined(&policy, name) {
                            return Err(bad(format!("{name} is not defined on an earlier line")));
                        }
                        policy.quorum = Some((*name).to_owned());
                    }
                }
                _ => return Err(bad(format!("not a policy line: {:?}", raw.trim()))),
            }
        }
        if !quorum_seen {
            return Err(Error::invalid("the policy has no quorum line"));
        }
        Ok(policy)
    }

    /// The log of this policy that signed `note`, if any.
    pub fn log_of(&self, note: &str) -> Option<&NoteVerifier> {
        self.logs.iter().find(|l| l.open(note).is_ok())
    }

    /// The witnesses whose cosignatures on `note` verify, with their times.
    pub fn cosigned(&self, note: &str) -> BTreeMap<String, u64> {
        self.witnesses
            .iter()
            .filter_map(|(name, key)| key.cosigned_at(note).map(|t| (name.clone(), t)))
            .collect()
    }

    /// Checks the quorum on `note` (its log signature is checked apart).
    ///
    /// # Errors
    /// Invalid, naming the witnesses whose cosignatures would complete it.
    pub fn check_quorum(&self, note: &str) -> std::result::Result<(), String> {
        let Some(quorum) = &self.quorum else {
            return Ok(());
        };
        let have = self.cosigned(note);
        if self.satisfied(quorum, &have) {
            return Ok(());
        }
        let missing: Vec<&str> = self
            .witnesses
            .keys()
            .filter(|w| !have.contains_key(*w) && self.reaches(quorum, w))
            .map(String::as_str)
            .collect();
        let got: Vec<&str> = have.keys().map(String::as_str).collect();
        Err(format!(
            "the checkpoint lacks the policy's quorum {quorum}: cosigned by {} ; missing \
             cosignatures from {}",
            if got.is_empty() {
                "no witness".to_owned()
            } else {
                got.join(", ")
            },
            missing.join(", ")
        ))
    }

    fn satisfied(&self, name: &str, have: &BTreeMap<String, u64>) -> bool {
        if self.witnesses.contains_key(name) {
            return have.contains_key(name);
        }
        self.groups.get(name).is_some_and(|(k, members)| {
            members.iter().filter(|m| self.satisfied(m, have)).count() >= *k
        })
    }

    /// Whether witness `w` counts towards `name`.
    fn reaches(&self, name: &str, w: &str) -> bool {
        name == w
            || self
                .groups
                .get(name)
                .is_some_and(|(_, members)| members.iter().any(|m| self.reaches(m, w)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn witness(name: &str, seed: u8) -> Cosigner {
        Cosigner::new(name, SigningKey::from_bytes(&[seed; 32])).unwrap()
    }

    fn note_of(text: &str) -> String {
        let log =
            note::NoteSigner::new("example.com/log", SigningKey::from_bytes(&[1; 32])).unwrap();
        log.sign(text)
    }

    #[test]
    fn cosignatures_verify_for_their_checkpoint_only() {
        let w = witness("w.example/1", 7);
        let text = "example.com/log\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let note = note_of(text) + &w.cosign(text, 1_700_000_000);
        let key = CosignerKey::parse(&w.key().vkey()).unwrap();
        assert_eq!(key.cosigned_at(&note), Some(1_700_000_000));
        let other = "example.com/log\n6\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let moved = note_of(other) + &w.cosign(text, 1_700_000_000);
        assert_eq!(key.cosigned_at(&moved), None);
        // The log's own signature is not a cosignature (other type byte).
        assert!(
            CosignerKey::parse(
                &note::NoteSigner::new("x", SigningKey::from_bytes(&[2; 32]))
                    .unwrap()
                    .vkey()
            )
            .is_err()
        );
    }

    #[test]
    fn add_checkpoint_bodies_round_trip_and_malformed_ones_are_refused() {
        let req = AddCheckpoint {
            old: 20,
            proof: vec![Hash::from_bytes([3; 32]), Hash::from_bytes([4; 32])],
            note: note_of("example.com/log\n25\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"),
        };
        assert_eq!(AddCheckpoint::parse(&req.body()).unwrap(), req);
        for body in [
            "old 01\n\nx",
            "old -1\n\nx",
            "new 1\n\nx",
            "old 1\nnot base64!\n\nx",
            "old 1",
        ] {
            assert!(AddCheckpoint::parse(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn a_policy_quorum_names_the_missing_witnesses() {
        let (a, b, c) = (
            witness("a.example", 10),
            witness("b.example", 11),
            witness("c.example", 12),
        );
        let log =
            note::NoteSigner::new("example.com/log", SigningKey::from_bytes(&[1; 32])).unwrap();
        let text = format!(
            "# two of three\nlog {}\nwitness A {}\nwitness B {} https://b.example/\n\twitness C {}\ngroup two 2 A B C\nquorum two\n",
            log.vkey(),
            a.key().vkey(),
            b.key().vkey(),
            c.key().vkey()
        );
        let policy = Policy::parse(&text).unwrap();
        let body = "example.com/log\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let signed = log.sign(body);
        assert!(policy.log_of(&signed).is_some());
        let one = signed.clone() + &a.cosign(body, 5);
        let err = policy.check_quorum(&one).unwrap_err();
        assert!(
            err.contains("B, C") && err.contains("cosigned by A"),
            "{err}"
        );
        let two = one + &c.cosign(body, 6);
        policy.check_quorum(&two).unwrap();
        assert_eq!(policy.cosigned(&two).get("C"), Some(&6));
        // Malformed policies are refused, naming the line.
        for bad in [
            "quorum X\n",
            "witness A x\nquorum A\n",
            "log nope\nquorum none\n",
            "quorum none\nquorum none\n",
            "",
            &format!("witness A {}\ngroup g 2 A\nquorum g\n", a.key().vkey()),
            &format!("witness A {}\ngroup g any A A\nquorum g\n", a.key().vkey()),
            &format!(
                "witness A {}\nwitness B {}\nquorum A\n",
                a.key().vkey(),
                a.key().vkey()
            ),
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad:?}");
        }
        let none = Policy::parse("quorum none\n").unwrap();
        none.check_quorum(&signed).unwrap();
    }
}
