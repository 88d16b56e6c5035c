//! A full audit of a log, with no trust in the server: every leaf and the
//! root recomputed and compared with the signed checkpoint, every entry
//! checked by the same rules the registry appends by ([`crate::state`]),
//! publishes that a later revocation casts doubt on, and every blob
//! re-hashed.
//!
//! The auditor is fed in order: entries, then the checkpoint, then blobs.
//! It collects every failure rather than stopping at the first, so one run
//! lists everything that is wrong.

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;
use serde::Serialize;

use crate::digest::Digest;
use crate::entry::Entry;
use crate::ids::ReleaseId;
use crate::layout;
use crate::merkle::{self, Hash, MemoryTree};
use crate::note::{Checkpoint, NoteVerifier};
use crate::signing::{KeyId, TrustedKeys};
use crate::state::{self, Applied, Empty, Overlay, Refused, Rules, State as _};
use crate::tiles::Tile;
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
    /// A tlog-tiles hash tile is missing or differs from the entries' tree.
    Tiles,
    /// A snapshot or drill entry does not match the timeline it names.
    Evidence,
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Class::Log => "log",
            Class::Checkpoint => "checkpoint",
            Class::Signature => "signature",
            Class::Timeline => "timeline",
            Class::Blob => "blob",
            Class::Tiles => "tiles",
            Class::Evidence => "evidence",
        })
    }
}

/// One thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub class: Class,
    pub message: String,
    /// The rule of the log the entry breaks ([`crate::state::Violation::reason`]),
    /// when the failure is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
    /// A publish signed by a key neither given to the audit nor added by
    /// the log.
    #[serde(skip)]
    pub missing_key: bool,
}

/// What an audit found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub entries: u64,
    pub checkpoint_size: u64,
    pub publishes: u64,
    pub pins: u64,
    pub key_changes: u64,
    /// Snapshot entries: backups recorded.
    pub snapshots: u64,
    /// Drill entries: restore tests recorded.
    pub drills: u64,
    /// Promotion entries: epochs begun by a standby.
    #[serde(skip_serializing_if = "is_zero")]
    pub promotions: u64,
    pub environments: u64,
    pub blobs_checked: u64,
    /// Hash tiles compared with the entries' tree (a tiles audit).
    #[serde(skip_serializing_if = "is_zero")]
    pub tiles_checked: u64,
    pub failures: Vec<Failure>,
    /// Publisher keys that signed publishes and that neither the keys the
    /// audit was given nor the log's own key entries name: what the
    /// auditor must add before the signatures can be judged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_keys: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Report {
    /// Whether nothing was found wrong.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// Whether every failure is a publish signed by a key the audit was
    /// not given ([`Self::missing_keys`]): the audit lacks an input, and
    /// found nothing else.
    pub fn only_missing_keys(&self) -> bool {
        !self.missing_keys.is_empty()
            && self
                .failures
                .iter()
                .all(|f| f.rule == Some(crate::state::reason::KEY_NOT_VALID) && f.missing_key)
    }
}

/// A state nothing has been applied to: the audit's overlay starts here.
static EMPTY: Empty = Empty;

/// An audit in progress.
pub struct Audit {
    tree: MemoryTree,
    rules: Rules,
    state: Overlay<'static, Empty>,
    /// Every accepted publish: (index, release id, key id, recorded_at),
    /// for the check against revocations logged after it.
    publishes: Vec<(u64, ReleaseId, KeyId, Timestamp)>,
    digests: BTreeSet<Digest>,
    /// Every promotion: (index, its epoch, the previous checkpoint), whose
    /// signature is checked with the log key's.
    promotions: Vec<(u64, u64, String)>,
    /// How many of them have had their signature checked (once each).
    promotions_checked: usize,
    report: Report,
}

impl Audit {
    /// An audit trusting `trusted` publisher keys (plus those the log adds),
    /// with the default rules.
    pub fn new(trusted: TrustedKeys) -> Self {
        Self::with_rules(Rules::new(trusted))
    }

    /// An audit by `rules` (the trusted keys and the clock skew the
    /// registry was configured with).
    pub fn with_rules(rules: Rules) -> Self {
        Self {
            tree: MemoryTree::new(),
            rules,
            state: Overlay::new(&EMPTY),
            publishes: Vec::new(),
            promotions: Vec::new(),
            promotions_checked: 0,
            digests: BTreeSet::new(),
            report: Report::default(),
        }
    }

    fn fail(&mut self, class: Class, message: String) {
        self.report.failures.push(Failure {
            class,
            message,
            rule: None,
            missing_key: false,
        });
    }

    /// Entries fed so far.
    pub fn entries(&self) -> u64 {
        self.tree.len()
    }

    /// The Merkle root of the first `size` entries fed, `None` when fewer
    /// were fed.
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        (size <= self.tree.len())
            .then(|| merkle::root(&self.tree, size).ok())
            .flatten()
    }

    /// Records that entry `index` (the next one) could not be read at all;
    /// a placeholder leaf keeps later indices in place, so the root check
    /// also fails, as it must.
    pub fn unreadable(&mut self, index: u64, why: &str) {
        self.fail(Class::Log, format!("entry {index}: {why}"));
        if index == self.tree.len() {
            self.tree.push(Hash::from_bytes([0; 32]));
            self.report.entries += 1;
        }
    }

    /// Feeds one log object as stored: entries `start, start + 1, …`, one
    /// per line ([`layout`]), or why it could not be read. Objects must come
    /// in order of `start`; entries no object holds are reported as missing
    /// and an object that overlaps entries already fed as out of place.
    pub fn object(&mut self, start: u64, object: Result<&Bytes, &str>) {
        let expected = self.tree.len();
        if start < expected {
            self.fail(
                Class::Log,
                format!(
                    "log object {} starts inside entries already read (next expected: {expected}): objects overlap",
                    layout::object_name(start)
                ),
            );
            return;
        }
        if start > expected {
            self.fail(
                Class::Log,
                format!(
                    "entries {expected}..{start} are missing: no log object starts at {}",
                    layout::object_name(expected)
                ),
            );
            for _ in expected..start {
                self.tree.push(Hash::from_bytes([0; 32]));
                self.report.entries += 1;
            }
        }
        match object {
            Ok(bytes) => {
                for (i, entry) in layout::split(bytes).iter().enumerate() {
                    self.entry(start + i as u64, entry);
                }
            }
            Err(why) => self.unreadable(start, why),
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
        let applied = match state::apply(&self.state, &self.rules, index, bytes) {
            Ok(applied) => applied,
            Err(Refused::State(never)) => match never {},
            Err(Refused::Violation(v)) => {
                let class = if v.is_evidence() {
                    Class::Evidence
                } else if v.is_timeline() {
                    Class::Timeline
                } else if v.is_signature() {
                    Class::Signature
                } else {
                    Class::Log
                };
                let missing_key = match &v {
                    state::Violation::KeyNotValid { key_id, .. } => {
                        // Neither given to the audit nor added by the log
                        // (a configured key the log only revoked is not
                        // known to it either).
                        let added = matches!(
                            self.state.key(key_id),
                            Ok(Some(ref r)) if r.public_key.is_some()
                        );
                        let unknown = !added
                            && !self
                                .rules
                                .configured
                                .keys()
                                .iter()
                                .any(|k| k.id() == key_id);
                        let id = key_id.to_string();
                        if unknown && !self.report.missing_keys.contains(&id) {
                            self.report.missing_keys.push(id);
                        }
                        unknown
                    }
                    _ => false,
                };
                self.report.failures.push(Failure {
                    class,
                    message: format!("entry {index}: {v}"),
                    rule: Some(v.reason()),
                    missing_key,
                });
                // Go on against the log as written, so one bad entry is
                // one failure, not a cascade.
                let Ok(entry) = serde_json::from_slice::<Entry>(bytes) else {
                    return;
                };
                let leaf = merkle::leaf_hash(bytes);
                let Ok(change) = state::assume(&self.state, index, &entry, &leaf);
                let Some(change) = change else {
                    self.count(&entry);
                    return;
                };
                Applied {
                    index,
                    entry,
                    leaf,
                    change,
                }
            }
        };
        self.count(&applied.entry);
        if let Entry::Promotion(p) = &applied.entry {
            // The entries before it are the previous epoch's, as far as
            // the checkpoint it carries signs.
            let root = merkle::root(&self.tree, index);
            match p.previous_checkpoint() {
                Ok(cp) if root.as_ref().is_ok_and(|r| *r == cp.root) => {}
                Ok(_) => self.fail(
                    Class::Checkpoint,
                    format!(
                        "entry {index}: the promotion's previous checkpoint is not the root of \
                         the {index} entries before it"
                    ),
                ),
                Err(e) => self.fail(Class::Checkpoint, format!("entry {index}: {e}")),
            }
            self.promotions.push((index, p.epoch, p.previous.clone()));
        }
        if let Entry::Publish(p) = &applied.entry {
            self.digests.insert(p.digest);
            self.publishes
                .push((index, p.release_id.clone(), p.key_id.clone(), p.recorded_at));
        }
        self.state.absorb(&applied);
    }

    fn count(&mut self, entry: &Entry) {
        match entry {
            Entry::Publish(_) => self.report.publishes += 1,
            Entry::Pin(_) => self.report.pins += 1,
            Entry::Key(_) => self.report.key_changes += 1,
            Entry::Snapshot(_) => self.report.snapshots += 1,
            Entry::Drill(_) => self.report.drills += 1,
            Entry::Promotion(_) => self.report.promotions += 1,
        }
    }

    /// Checks the signed checkpoint against the entries fed.
    pub fn checkpoint(&mut self, note: &str, log_key: &NoteVerifier) {
        self.stored_checkpoint("checkpoint", note, log_key);
    }

    /// Checks a signed checkpoint stored as `name` (the latest, or one of
    /// the history `log/checkpoints/<size>`) against the entries fed. The
    /// report's checkpoint size is the largest checked.
    pub fn stored_checkpoint(&mut self, name: &str, note: &str, log_key: &NoteVerifier) {
        let cp = match Checkpoint::open(note, log_key) {
            Ok(cp) => cp,
            Err(e) => {
                self.fail(Class::Checkpoint, format!("{name}: {e}"));
                return;
            }
        };
        self.report.checkpoint_size = self.report.checkpoint_size.max(cp.size);
        // Each promotion's previous checkpoint is the log key's, and a
        // checkpoint is of the epoch its last promotion began.
        let mut failed = Vec::new();
        for (index, _, previous) in &self.promotions[self.promotions_checked..] {
            if let Err(e) = Checkpoint::open(previous, log_key) {
                failed.push(format!(
                    "entry {index}: the promotion's previous checkpoint: {e}"
                ));
            }
        }
        self.promotions_checked = self.promotions.len();
        let epoch = self
            .promotions
            .iter()
            .rfind(|(index, ..)| *index < cp.size)
            .map_or(1, |(_, epoch, _)| *epoch);
        if cp.epoch() != epoch {
            failed.push(format!(
                "{name} is of {} (epoch {}), but the entries it signs are of epoch {epoch}",
                cp.origin,
                cp.epoch()
            ));
        }
        for message in failed {
            self.fail(Class::Checkpoint, message);
        }
        if cp.size > self.tree.len() {
            let have = self.tree.len();
            self.fail(
                Class::Checkpoint,
                format!(
                    "{name} covers {} entries but only {have} exist: entries were removed",
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
                    "the entries' Merkle root at size {} differs from {name}: the log was rewritten",
                    cp.size
                ),
            ),
            Err(e) => self.fail(Class::Checkpoint, format!("computing the root: {e}")),
        }
    }

    /// Feeds the entries of a tlog-tiles entry bundle (the next one, in
    /// order): its bytes, or why it could not be read.
    pub fn bundle(&mut self, tile: &Tile, bytes: Result<&[u8], &str>) {
        let first = tile.first();
        let entries = match bytes.map(crate::tiles::split_bundle) {
            Ok(Ok(entries)) if entries.len() as u64 == tile.width => entries,
            Ok(Ok(entries)) => {
                self.fail(
                    Class::Log,
                    format!(
                        "{} holds {} entries, not {}",
                        tile.path(),
                        entries.len(),
                        tile.width
                    ),
                );
                entries
            }
            Ok(Err(e)) => {
                self.fail(Class::Log, format!("{}: {e}", tile.path()));
                Vec::new()
            }
            Err(why) => {
                self.fail(Class::Log, format!("{}: {why}", tile.path()));
                Vec::new()
            }
        };
        for (k, entry) in entries.iter().take(tile.width as usize).enumerate() {
            self.entry(first + k as u64, entry);
        }
        // Keep later indices in place when the bundle was short.
        while self.tree.len() < first + tile.width {
            let index = self.tree.len();
            self.tree.push(Hash::from_bytes([0; 32]));
            self.report.failures.push(Failure {
                class: Class::Log,
                message: format!("entry {index}: not in {}", tile.path()),
                rule: None,
                missing_key: false,
            });
        }
    }

    /// Checks a stored entry bundle (after the entries it covers were fed
    /// from the log itself) against those entries: its bytes, or why it
    /// could not be read.
    pub fn stored_bundle(&mut self, tile: &Tile, bytes: Result<&[u8], &str>) {
        self.report.tiles_checked += 1;
        let path = tile.path();
        let entries = match bytes.map(crate::tiles::split_bundle) {
            Ok(Ok(entries)) => entries,
            Ok(Err(e)) => return self.fail(Class::Tiles, format!("{path}: {e}")),
            Err(why) => return self.fail(Class::Tiles, format!("{path}: {why}")),
        };
        let agrees = entries.len() as u64 == tile.width
            && entries.iter().enumerate().all(|(k, e)| {
                merkle::NodeSource::node(&self.tree, 0, tile.first() + k as u64)
                    .is_ok_and(|leaf| leaf == merkle::leaf_hash(e))
            });
        if !agrees {
            self.fail(
                Class::Tiles,
                format!("{path} differs from the log entries it bundles"),
            );
        }
    }

    /// Checks a tlog-tiles hash tile (after the entries it covers were
    /// fed) against the tree of the entries: its bytes, or why it could
    /// not be read.
    pub fn tile(&mut self, tile: &Tile, bytes: Result<&[u8], &str>) {
        let Some(level) = tile.level else {
            return self.bundle(tile, bytes);
        };
        self.report.tiles_checked += 1;
        let bytes = match bytes {
            Ok(b) => b,
            Err(why) => return self.fail(Class::Tiles, format!("{}: {why}", tile.path())),
        };
        match crate::tiles::tile_bytes(&self.tree, level, tile.index, tile.width) {
            Ok(expected) if expected == bytes => {}
            Ok(_) => self.fail(
                Class::Tiles,
                format!(
                    "{} differs from the hashes of the entries it covers",
                    tile.path()
                ),
            ),
            Err(e) => self.fail(Class::Tiles, format!("{}: {e}", tile.path())),
        }
    }

    /// Checks every publish against revocations logged after it (a key
    /// revoked from an instant before a publish it signed makes that
    /// publish suspect). Each publish was checked against the keys valid
    /// when it was logged as it was fed; this pass runs after all entries
    /// are in, so late revocations count.
    pub fn signatures(&mut self) {
        let mut failures = Vec::new();
        for (index, release_id, key_id, recorded_at) in &self.publishes {
            let Ok(record) = self.state.key(key_id);
            if let Some(r) = record.and_then(|r| r.revoked_at)
                && *recorded_at >= r
            {
                failures.push(format!(
                    "entry {index} ({release_id}): logged at {recorded_at} with key {key_id} revoked at {r}"
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
        self.report.environments = self.state.environments() as u64;
        self.report.failures.sort_by_key(|f| f.class);
        self.report
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::entry::PromotionEntry;
    use crate::note::{NoteSigner, epoch_origin};

    /// A log whose only entry is a promotion from an empty epoch 1, its
    /// previous checkpoint's root `previous_root` (the empty tree's when
    /// `None`), signed as of `epoch`: the audit's report.
    fn promoted(previous_root: Option<Hash>, epoch: u64) -> Report {
        let name = "t.example/log";
        let signer =
            NoteSigner::new(name, ed25519_dalek::SigningKey::from_bytes(&[9; 32])).unwrap();
        let empty = merkle::root(&MemoryTree::new(), 0).unwrap();
        let previous = signer.sign(
            &Checkpoint {
                origin: name.into(),
                size: 0,
                root: previous_root.unwrap_or(empty),
            }
            .body(),
        );
        let entry = Entry::Promotion(PromotionEntry {
            epoch: 2,
            previous,
            promoted_at: Timestamp::from_micros(0).unwrap(),
            actor: "oncall".into(),
            request_id: None,
        })
        .to_bytes();
        let mut audit = Audit::new(TrustedKeys::new([]));
        audit.object(0, Ok(&layout::join(std::slice::from_ref(&entry))));
        let mut tree = MemoryTree::new();
        tree.push(merkle::leaf_hash(&entry));
        let note = signer.sign(
            &Checkpoint {
                origin: epoch_origin(name, epoch),
                size: 1,
                root: merkle::root(&tree, 1).unwrap(),
            }
            .body(),
        );
        audit.checkpoint(&note, &signer.verifier());
        audit.finish()
    }

    #[test]
    fn a_promotion_is_checked_against_the_entries_before_it_and_its_epoch() {
        let sound = promoted(None, 2);
        assert!(sound.ok(), "{:?}", sound.failures);
        assert_eq!(sound.promotions, 1);
        let other_root = promoted(Some(Hash::from_slice(&[1; 32]).unwrap()), 2);
        assert!(
            other_root.failures.iter().any(|f| f
                .message
                .contains("is not the root of the 0 entries before it")),
            "{:?}",
            other_root.failures
        );
        let old_epoch = promoted(None, 1);
        assert!(
            old_epoch
                .failures
                .iter()
                .any(|f| f.message.contains("are of epoch 2")),
            "{:?}",
            old_epoch.failures
        );
    }
}
