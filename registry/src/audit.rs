//! A full audit of a log, with no trust in the server: every leaf and the
//! root recomputed and compared with the signed checkpoint, every publisher
//! signature checked against the key lifecycle, every environment's pin
//! chain, and every blob re-hashed.
//!
//! The auditor is fed in order: entries, then the checkpoint, then blobs.
//! It collects every failure rather than stopping at the first, so one run
//! lists everything that is wrong.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;

use crate::digest::Digest;
use crate::ids::{EnvName, ReleaseId};
use crate::log::{Entry, KeyAction, PublishEntry};
use crate::merkle::{self, MemoryTree};
use crate::note::{Checkpoint, NoteVerifier};
use crate::signing::{self, KeyId, PublicKey, TrustedKeys};
use crate::time::Timestamp;

/// The kind of a failure, so a report can say which checks failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// An entry is missing, unreadable or out of place.
    Log,
    /// The checkpoint signature or root does not match the entries.
    Checkpoint,
    /// A publisher signature does not verify under a key valid at the time.
    Signature,
    /// A release id is bound twice, or an environment's pins do not chain.
    Timeline,
    /// A blob is missing or its bytes do not match its digest.
    Blob,
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Class::Log => "log",
            Class::Checkpoint => "checkpoint",
            Class::Signature => "signature",
            Class::Timeline => "timeline",
            Class::Blob => "blob",
        })
    }
}

/// One thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub class: Class,
    pub message: String,
}

/// What an audit found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub entries: u64,
    pub checkpoint_size: u64,
    pub publishes: u64,
    pub pins: u64,
    pub key_changes: u64,
    pub environments: u64,
    pub blobs_checked: u64,
    pub failures: Vec<Failure>,
}

impl Report {
    /// Whether nothing was found wrong.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

#[derive(Default)]
struct KeyState {
    key: Option<PublicKey>,
    valid_from: Option<Timestamp>,
    revoked_at: Option<Timestamp>,
}

struct EnvState {
    seq: u64,
    activated_at: Timestamp,
    leaf: String,
}

/// An audit in progress.
pub struct Audit {
    tree: MemoryTree,
    trusted: TrustedKeys,
    keys: BTreeMap<KeyId, KeyState>,
    publishes: Vec<(u64, PublishEntry)>,
    releases: HashMap<ReleaseId, u64>,
    envs: HashMap<EnvName, EnvState>,
    digests: BTreeSet<Digest>,
    report: Report,
}

impl Audit {
    /// An audit trusting `trusted` publisher keys (plus those the log adds).
    pub fn new(trusted: TrustedKeys) -> Self {
        let mut keys = BTreeMap::new();
        for k in trusted.keys() {
            keys.insert(
                k.id().clone(),
                KeyState {
                    key: Some(k.clone()),
                    ..KeyState::default()
                },
            );
        }
        Self {
            tree: MemoryTree::new(),
            trusted,
            keys,
            publishes: Vec::new(),
            releases: HashMap::new(),
            envs: HashMap::new(),
            digests: BTreeSet::new(),
            report: Report::default(),
        }
    }

    fn fail(&mut self, class: Class, message: String) {
        self.report.failures.push(Failure { class, message });
    }

    /// Entries fed so far.
    pub fn entries(&self) -> u64 {
        self.tree.len()
    }

    /// Records that entry `index` (the next one) could not be read at all;
    /// a placeholder leaf keeps later indices in place, so the root check
    /// also fails, as it must.
    pub fn unreadable(&mut self, index: u64, why: &str) {
        self.fail(Class::Log, format!("entry {index}: {why}"));
        if index == self.tree.len() {
            self.tree.push([0; 32]);
            self.report.entries += 1;
        }
    }

    /// Records that no checkpoint could be read.
    pub fn no_checkpoint(&mut self, why: &str) {
        self.fail(Class::Checkpoint, why.to_owned());
    }

    /// Feeds the next entry (indices must come in order from 0).
    pub fn entry(&mut self, index: u64, bytes: &[u8]) {
        if index != self.tree.len() {
            let expected = self.tree.len();
            self.fail(
                Class::Log,
                format!("entry {index} arrived where entry {expected} was expected (a gap)"),
            );
            return;
        }
        self.tree.push(merkle::leaf_hash(bytes));
        self.report.entries += 1;
        let entry = match Entry::parse(index, bytes) {
            Ok(e) => e,
            Err(e) => {
                self.fail(Class::Log, e.to_string());
                return;
            }
        };
        match entry {
            Entry::Publish(p) => {
                self.report.publishes += 1;
                if let Some(first) = self.releases.insert(p.release_id.clone(), index) {
                    self.fail(
                        Class::Timeline,
                        format!(
                            "entry {index} binds release {} again (first bound at entry {first})",
                            p.release_id
                        ),
                    );
                }
                self.digests.insert(p.digest);
                self.publishes.push((index, p));
            }
            Entry::Pin(p) => {
                self.report.pins += 1;
                let leaf = hex::encode(merkle::leaf_hash(bytes));
                let (want_seq, want_prev) = match self.envs.get(&p.env) {
                    None => (1, None),
                    Some(s) => (s.seq + 1, Some(s.leaf.clone())),
                };
                if p.seq != want_seq {
                    self.fail(
                        Class::Timeline,
                        format!(
                            "entry {index}: pin #{} of {} should be #{want_seq}",
                            p.seq, p.env
                        ),
                    );
                }
                if p.prev_pin != want_prev {
                    self.fail(
                        Class::Timeline,
                        format!(
                            "entry {index}: pin #{} of {} does not carry the previous pin's hash",
                            p.seq, p.env
                        ),
                    );
                }
                if let Some(s) = self.envs.get(&p.env)
                    && p.activated_at < s.activated_at
                {
                    let msg = format!(
                        "entry {index}: pin #{} of {} activates at {}, before pin #{} at {}",
                        p.seq, p.env, p.activated_at, s.seq, s.activated_at
                    );
                    self.fail(Class::Timeline, msg);
                }
                if !self.releases.contains_key(&p.release_id) {
                    self.fail(
                        Class::Timeline,
                        format!("entry {index}: pins unpublished release {}", p.release_id),
                    );
                }
                self.envs.insert(
                    p.env.clone(),
                    EnvState {
                        seq: p.seq,
                        activated_at: p.activated_at,
                        leaf,
                    },
                );
            }
            Entry::Key(k) => {
                self.report.key_changes += 1;
                let state = self.keys.entry(k.key_id.clone()).or_default();
                match k.action {
                    KeyAction::Add => {
                        let key = k.public_key.as_deref().map(PublicKey::from_pem);
                        match key {
                            Some(Ok(key)) if key.id() == &k.key_id => {
                                state.key = Some(key);
                                state.valid_from = Some(k.at);
                            }
                            _ => self.fail(
                                Class::Log,
                                format!(
                                    "entry {index}: key add for {} carries no matching key",
                                    k.key_id
                                ),
                            ),
                        }
                    }
                    KeyAction::Revoke => state.revoked_at = Some(k.at),
                }
            }
        }
    }

    /// Checks the signed checkpoint against the entries fed.
    pub fn checkpoint(&mut self, note: &str, log_key: &NoteVerifier) {
        let cp = match Checkpoint::open(note, log_key) {
            Ok(cp) => cp,
            Err(e) => {
                self.fail(Class::Checkpoint, format!("checkpoint: {e}"));
                return;
            }
        };
        self.report.checkpoint_size = cp.size;
        if cp.size > self.tree.len() {
            let have = self.tree.len();
            self.fail(
                Class::Checkpoint,
                format!(
                    "the checkpoint covers {} entries but only {have} exist: entries were removed",
                    cp.size
                ),
            );
            return;
        }
        match merkle::root(&self.tree, cp.size) {
            Ok(root) if root == cp.root => {}
            Ok(_) => self.fail(
                Class::Checkpoint,
                format!(
                    "the entries' Merkle root at size {} differs from the signed checkpoint: the log was rewritten",
                    cp.size
                ),
            ),
            Err(e) => self.fail(Class::Checkpoint, format!("computing the root: {e}")),
        }
    }

    /// Checks every publish's DSSE signature under the keys valid when it
    /// was logged (after all entries are in, so late revocations count).
    pub fn signatures(&mut self) {
        let all = TrustedKeys::new(self.keys.values().filter_map(|s| s.key.clone()));
        let mut failures = Vec::new();
        for (index, p) in &self.publishes {
            let envelope = serde_json::to_vec(&p.envelope).unwrap_or_default();
            let att = match signing::verify_envelope(&envelope, &all) {
                Ok(att) => att,
                Err(e) => {
                    failures.push(format!("entry {index} ({}): {e}", p.release_id));
                    continue;
                }
            };
            if att.release_id != p.release_id || att.digest != p.digest || att.key_id != p.key_id {
                failures.push(format!(
                    "entry {index}: the signed statement ({} {}, key {}) does not match the entry",
                    att.release_id, att.digest, att.key_id
                ));
                continue;
            }
            let state = self.keys.get(&att.key_id);
            let from = state.and_then(|s| s.valid_from);
            let revoked = state.and_then(|s| s.revoked_at);
            let configured = self.trusted.keys().iter().any(|k| k.id() == &att.key_id);
            if !configured && from.is_none_or(|f| p.recorded_at < f) {
                failures.push(format!(
                    "entry {index} ({}): key {} was not yet valid at {}",
                    p.release_id, att.key_id, p.recorded_at
                ));
            }
            if let Some(r) = revoked
                && p.recorded_at >= r
            {
                failures.push(format!(
                    "entry {index} ({}): logged at {} with key {} revoked at {r}",
                    p.release_id, p.recorded_at, att.key_id
                ));
            }
        }
        for f in failures {
            self.fail(Class::Signature, f);
        }
    }

    /// Every digest a publish entry names (for re-hashing the blobs).
    pub fn digests(&self) -> Vec<Digest> {
        self.digests.iter().copied().collect()
    }

    /// Records a blob read: its bytes, or why it could not be read.
    pub fn blob(&mut self, digest: &Digest, bytes: Result<&[u8], String>) {
        self.report.blobs_checked += 1;
        match bytes {
            Ok(b) => {
                let actual = Digest::of(b);
                if actual != *digest {
                    self.fail(Class::Blob, format!("blob {digest} hashes to {actual}"));
                }
            }
            Err(why) => self.fail(Class::Blob, format!("blob {digest}: {why}")),
        }
    }

    /// The report.
    pub fn finish(mut self) -> Report {
        self.report.environments = self.envs.len() as u64;
        self.report.failures.sort_by_key(|f| f.class);
        self.report
    }
}
