//! Applying the log to the index: every entry goes through
//! [`stackpin_core::state::apply`] (over the index plus the entries before
//! it in the same object) and what it changes becomes one sled batch.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

use sled::Batch;

use super::codec::u64_at;
use super::codec::{
    EntryAt, Slot, artifact_pin_key, encode, evidence_key, object_key, pin_key, position_key,
    request_key, time_key,
};
use super::{APPLIED, EnvHead, Index, KEYED, KeyRecord, files};
use crate::digest::Digest;
use crate::error::{Error, Kind, Result};
use crate::ids::{EnvName, ReleaseId};
use crate::log::Entry;
use crate::merkle;
use crate::signing::KeyId;
use stackpin_core::entry::Live;
use stackpin_core::layout;
use stackpin_core::state::{Applied, Change, Overlay, Refused, Release, Rules, SnapshotRef, State};

/// Places written by entries staged earlier in the same batch, which the
/// tree does not show yet, and of the releases the rules looked up (the rule state of those entries is the
/// overlay's, see [`Index::apply_object`]).
#[derive(Default)]
pub(super) struct Pending {
    releases: std::collections::HashMap<ReleaseId, EntryAt>,
    /// The latest pin's timeline key and slot, per environment.
    slots: std::collections::HashMap<EnvName, (Vec<u8>, Slot)>,
}

/// The writes of a batch of entries: to the main tree, and to the side
/// tree ([`side_keys`]).
#[derive(Default)]
pub(super) struct Writes {
    main: Batch,
    side: Batch,
}

/// The keys of an entry that land at random places (a request id's hash,
/// an artifact's digest): which entry a request id wrote, so a retry finds
/// its first result, and the pins of each artifact. They live in a tree
/// of their own. A commit writes them before its main batch; `m/keyed` in
/// that tree says up to which entry they are written, and lookups ignore
/// what is not applied yet (a crash between the two batches). A long
/// catch-up holds them back and writes them at the end, sorted: inserted
/// one entry at a time they cost sled a random leaf each, most of a
/// rebuild's time (see BENCHMARKS.md).
pub(super) fn side_keys(index: u64, entry: &Entry) -> Vec<[u8; 18]> {
    let mut keys = Vec::with_capacity(2);
    if let Some(id) = entry.request_id() {
        keys.push(request_key(id, index));
    }
    if let Entry::Pin(p) = entry {
        keys.push(artifact_pin_key(&p.digest, index));
    }
    keys
}

impl Index {
    /// Holds side keys back from now on, until [`Self::write_side_keys`].
    pub fn defer_side_keys(&self) {
        self.defer_side.store(true, Ordering::Release);
    }

    /// Writes the side keys of every entry applied since `m/keyed`, from
    /// the entry copies, in key order (about 18 bytes each in memory), and
    /// stops holding them back.
    ///
    /// # Errors
    /// Internal when the index fails.
    pub fn write_side_keys(&self) -> Result<()> {
        let applied = self.stored_applied()?;
        let keyed = match self.side.get(KEYED)? {
            Some(v) => u64_at(&v, 0)?,
            None => 0,
        };
        // At most two keys an entry, 18 bytes each: 36 MiB a million.
        let mut keys =
            Vec::with_capacity(usize::try_from(applied.saturating_sub(keyed)).unwrap_or(0) * 2);
        for index in keyed..applied {
            let bytes = self.files.entry(index)?;
            keys.extend(side_keys(index, &Entry::parse(index, &bytes)?));
        }
        keys.sort_unstable();
        // One insert at a time: sled holds far more memory for a batch of
        // keys that land in the same leaves (2 GiB for a million, in 1,024
        // key batches) than for the same keys one by one.
        for key in &keys {
            self.side.insert(&key[..], &[][..])?;
        }
        drop(keys);
        let mut done = Batch::default();
        done.insert(KEYED, &applied.to_be_bytes());
        self.side.apply_batch(done)?;
        self.defer_side.store(false, Ordering::Release);
        Ok(())
    }

    /// Applies the entries of the log object starting at `start`, from
    /// entry `start + skip` on (a restart may have applied the first ones).
    /// Each entry must be accepted by [`state::apply`] under `rules`, over
    /// the index plus the entries before it in the object.
    ///
    /// # Errors
    /// DataLoss when an entry breaks a rule (the log was tampered with);
    /// Internal on index failure.
    pub fn apply_object(
        &self,
        rules: &Rules,
        start: u64,
        entries: &[bytes::Bytes],
        skip: usize,
    ) -> Result<()> {
        let count = entries.len() as u64;
        let applied = self.applied()?;
        if start + skip as u64 != applied {
            return Err(Error::internal(format!(
                "index expected log entry {applied} next, was given {}",
                start + skip as u64
            )));
        }
        let size = layout::object_size(entries);
        // One atomic batch for the whole object: far fewer sled writes when
        // rebuilding a log of group-committed objects.
        if skip >= entries.len() {
            return Ok(());
        }
        let mut batch = Writes::default();
        let mut pending = Pending::default();
        let mut staged = self.files.appender(applied)?;
        let base = Reading {
            index: self,
            places: RefCell::new(HashMap::new()),
        };
        let mut state = Overlay::new(&base);
        for (i, bytes) in entries.iter().enumerate().skip(skip) {
            let index = start + i as u64;
            let accepted = state
                .apply(rules, index, bytes)
                .map_err(|refused| refused_in_log(refused, index))?;
            let object = (i == 0).then_some((count, size));
            // The rules just read where the pinned release is published.
            if let Entry::Pin(p) = &accepted.entry
                && let Some(at) = base.places.borrow().get(&p.release_id)
            {
                pending.releases.entry(p.release_id.clone()).or_insert(*at);
            }
            self.stage(
                &mut batch,
                &mut pending,
                &mut staged,
                &accepted,
                bytes,
                object,
            )?;
        }
        self.commit(batch, &staged, start + count)
    }

    /// Writes a log object whose entries the committer has just applied
    /// by the rules over this index (`accepted`, one per entry, in order):
    /// the same decision is not taken twice (a publish's signature is not
    /// verified again).
    ///
    /// # Errors
    /// Internal on index failure, or when `accepted` does not match.
    pub fn apply_accepted(
        &self,
        start: u64,
        entries: &[bytes::Bytes],
        accepted: &[Applied],
    ) -> Result<()> {
        let applied = self.applied()?;
        if start != applied || accepted.len() != entries.len() {
            return Err(Error::internal(format!(
                "index expected log entry {applied} next, was given {start} ({} entries, {} accepted)",
                entries.len(),
                accepted.len()
            )));
        }
        let (count, size) = (entries.len() as u64, layout::object_size(entries));
        let mut batch = Writes::default();
        let mut pending = Pending::default();
        let mut staged = self.files.appender(applied)?;
        for (i, (bytes, accepted)) in entries.iter().zip(accepted).enumerate() {
            if accepted.index != start + i as u64 {
                return Err(Error::internal(format!(
                    "entry {} was accepted as entry {}",
                    start + i as u64,
                    accepted.index
                )));
            }
            let object = (i == 0).then_some((count, size));
            self.stage(
                &mut batch,
                &mut pending,
                &mut staged,
                accepted,
                bytes,
                object,
            )?;
        }
        self.commit(batch, &staged, start + count)
    }

    /// Writes the flat files, then applies the batch that makes their
    /// entries count, then lets readers see them.
    pub(super) fn commit(
        &self,
        mut batch: Writes,
        staged: &files::Appender,
        applied: u64,
    ) -> Result<()> {
        self.files.write(staged)?;
        batch.main.insert(APPLIED, &applied.to_be_bytes());
        if !self.defer_side.load(Ordering::Acquire) {
            batch.side.insert(KEYED, &applied.to_be_bytes());
            self.side.apply_batch(batch.side)?;
        }
        self.tree.apply_batch(batch.main)?;
        self.applied.store(applied, Ordering::Release);
        Ok(())
    }

    /// Adds the writes of an accepted entry to `batch`; `pending` holds the
    /// places of the entries staged before it in the same batch.
    pub(super) fn stage(
        &self,
        batch: &mut Writes,
        pending: &mut Pending,
        staged: &mut files::Appender,
        accepted: &Applied,
        bytes: &[u8],
        object: Option<(u64, u64)>,
    ) -> Result<()> {
        let index = accepted.index;
        if let Some((count, size)) = object {
            let mut value = [0u8; 16];
            value[..8].copy_from_slice(&count.to_be_bytes());
            value[8..].copy_from_slice(&size.to_be_bytes());
            batch.main.insert(&object_key(index)[..], &value[..]);
        }
        let leaf = accepted.leaf;
        let mut node = leaf;
        staged.push_hash(0, index, &leaf)?;
        let (offset, len) = staged.push_entry(bytes);
        let place = EntryAt {
            index,
            offset,
            len: u32::try_from(len)
                .map_err(|_| Error::internal(format!("log entry {index} is over 4 GiB")))?,
        };
        let at = place.encode();
        for (level, at) in merkle::completed_nodes(index) {
            let left = staged.hash(&self.files, level - 1, 2 * at)?;
            node = merkle::node_hash(&left, &node);
            staged.push_hash(level, at, &node)?;
        }
        if !self.defer_side.load(Ordering::Acquire) {
            for key in side_keys(index, &accepted.entry) {
                batch.side.insert(&key[..], &[][..]);
            }
        }
        match (&accepted.entry, &accepted.change) {
            (Entry::Publish(p), Change::Publish(release)) => {
                let mut value = Vec::with_capacity(52);
                value.extend_from_slice(&at);
                value.extend_from_slice(release.digest.as_bytes());
                batch
                    .main
                    .insert(format!("r/{}", p.release_id).into_bytes(), value);
                batch.main.insert(
                    format!("d/{}/{}", p.digest.hex(), p.release_id).into_bytes(),
                    &[][..],
                );
                pending.releases.insert(p.release_id.clone(), place);
            }
            (
                Entry::Pin(p),
                Change::Pin {
                    previous,
                    head,
                    position,
                },
            ) => {
                if let Some(o) = position {
                    batch.main.insert(position_key(&p.env, *o, p.seq), &[][..]);
                }
                // The previous pin's slot learns where its successor is.
                let prev = match (pending.slots.remove(&p.env), previous) {
                    (Some(latest), _) => Some(latest),
                    (None, Some(h)) => {
                        let key = time_key(&p.env, h.activated_at, h.seq);
                        let value = self.tree.get(&key)?.ok_or_else(|| {
                            Error::internal(format!(
                                "index lacks the timeline slot of pin #{} of {}",
                                h.seq, p.env
                            ))
                        })?;
                        Some((key, Slot::decode(&value)?))
                    }
                    (None, None) => None,
                };
                let prev_pin = match prev {
                    Some((key, mut slot)) => {
                        slot.next = Some(place);
                        batch.main.insert(key, slot.encode());
                        Some(slot.pin)
                    }
                    None => None,
                };
                batch
                    .main
                    .insert(format!("e/{}", p.env).into_bytes(), encode(head));
                let published = match pending.releases.get(&p.release_id) {
                    Some(e) => *e,
                    None => self.artifact_entry(&p.release_id)?.ok_or_else(|| {
                        Error::internal(format!(
                            "index lacks the publish of release {} that entry {index} pins",
                            p.release_id
                        ))
                    })?,
                };
                let slot = Slot {
                    pin: place,
                    published,
                    prev: prev_pin,
                    next: None,
                };
                let key = time_key(&p.env, p.activated_at, p.seq);
                batch.main.insert(key.clone(), slot.encode());
                pending.slots.insert(p.env.clone(), (key, slot));
                batch.main.insert(pin_key(&p.env, p.seq), &at[..]);
            }
            (Entry::Key(_), Change::Key(record)) => {
                batch
                    .main
                    .insert(format!("k/{}", record.key_id).into_bytes(), encode(record));
            }
            (Entry::Snapshot(s), Change::Snapshot(_)) => {
                let mut value = at.to_vec();
                value.extend_from_slice(&s.live.seq.to_be_bytes());
                value.extend_from_slice(&s.db_time.as_micros().to_be_bytes());
                value.extend_from_slice(&s.recorded_at.as_micros().to_be_bytes());
                batch.main.insert(evidence_key("s", &s.env, index), value);
            }
            (Entry::Drill(d), Change::Drill) => {
                let mut value = at.to_vec();
                value.push(u8::from(d.passed));
                value.extend_from_slice(&d.recorded_at.as_micros().to_be_bytes());
                value.extend_from_slice(&d.rto_millis.unwrap_or(u64::MAX).to_be_bytes());
                batch.main.insert(evidence_key("v", &d.env, index), value);
            }
            // A new epoch changes nothing the index answers from: the
            // checkpoint carries its origin.
            (Entry::Promotion(_), Change::Promotion) => {}
            _ => {
                return Err(Error::internal(format!(
                    "log entry {index} was accepted with a change of another kind"
                )));
            }
        }
        Ok(())
    }
}

/// Reads the Merkle hashes of one request's entries and proofs: below
/// level 4 a proof and the entry's leaf check stay inside one 16-leaf
/// block, read whole, so they cost one file read instead of five. A
/// request names a few entries; the reader keeps the last few blocks.
/// The index is the rule state of the log it has applied.
impl Index {
    /// The publish that bound `release_id`: where its entry is and the
    /// digest it binds (one `r/` read).
    fn release_record(&self, release_id: &ReleaseId) -> Result<Option<(EntryAt, Digest)>> {
        let Some(v) = self.tree.get(format!("r/{release_id}"))? else {
            return Ok(None);
        };
        let at = EntryAt::decode(&v)?;
        let digest: [u8; 32] = v
            .get(20..52)
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| {
                Error::internal(format!(
                    "index holds a short release record for {release_id}"
                ))
            })?;
        Ok(Some((at, Digest::from_bytes(digest))))
    }
}

/// The index is the rule state of the log it has applied.
impl State for Index {
    type Error = Error;

    fn env_head(&self, env: &EnvName) -> Result<Option<EnvHead>> {
        Index::env_head(self, env)
    }

    fn release(&self, release_id: &ReleaseId) -> Result<Option<Release>> {
        Ok(self
            .release_record(release_id)?
            .map(|(at, digest)| Release {
                index: at.index,
                digest,
            }))
    }

    fn key(&self, key_id: &KeyId) -> Result<Option<KeyRecord>> {
        Index::key(self, key_id)
    }

    fn live_at(&self, env: &EnvName, at: crate::time::Timestamp) -> Result<Option<Live>> {
        Index::live_pin(self, env, at)
    }

    fn snapshot(&self, index: u64) -> Result<Option<SnapshotRef>> {
        Index::snapshot_ref(self, index)
    }
}

/// The index as the base state of one object being applied: it remembers
/// where the releases it looked up are published, so that staging a pin
/// does not read the `r/` key the rules just read.
struct Reading<'a> {
    index: &'a Index,
    places: RefCell<HashMap<ReleaseId, EntryAt>>,
}

impl State for Reading<'_> {
    type Error = Error;

    fn env_head(&self, env: &EnvName) -> Result<Option<EnvHead>> {
        self.index.env_head(env)
    }

    fn release(&self, release_id: &ReleaseId) -> Result<Option<Release>> {
        let Some((at, digest)) = self.index.release_record(release_id)? else {
            return Ok(None);
        };
        self.places.borrow_mut().insert(release_id.clone(), at);
        Ok(Some(Release {
            index: at.index,
            digest,
        }))
    }

    fn key(&self, key_id: &KeyId) -> Result<Option<KeyRecord>> {
        self.index.key(key_id)
    }

    fn live_at(&self, env: &EnvName, at: crate::time::Timestamp) -> Result<Option<Live>> {
        self.index.live_pin(env, at)
    }

    fn snapshot(&self, index: u64) -> Result<Option<SnapshotRef>> {
        self.index.snapshot_ref(index)
    }
}

/// An entry of the log refused while applying it: a violation means the
/// log breaks its own rules (it was tampered with, or written by a
/// registry with other settings); a state failure is the index's.
pub fn refused_in_log(refused: Refused<Error>, index: u64) -> Error {
    match refused {
        Refused::Violation(v) => Error::new(
            Kind::DataLoss,
            format!(
                "log entry {index} breaks the log's rules ({}): {v}",
                v.reason()
            ),
        )
        .with_reason(v.reason()),
        Refused::State(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;
    use stackpin_core::entry::{KeyAction, KeyEntry};

    /// A key entry at `index` written by request `req-<index>`, as the
    /// committer hands it over once the rules accepted it.
    fn key_entry(index: u64) -> (bytes::Bytes, Applied) {
        let seed = [u8::try_from(index).unwrap_or(0) + 1; 32];
        let key_id = KeyId::of(&ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key());
        let at = Timestamp::from_micros(1_700_000_000_000_000).unwrap_or_else(|e| panic!("{e}"));
        let entry = Entry::Key(KeyEntry {
            action: KeyAction::Add,
            key_id: key_id.clone(),
            public_key: None,
            at,
            recorded_at: at,
            actor: "test".into(),
            reason: "test".into(),
            request_id: Some(format!("req-{index}")),
        });
        let bytes = entry.to_bytes();
        let applied = Applied {
            index,
            leaf: merkle::leaf_hash(&bytes),
            change: Change::Key(KeyRecord {
                key_id,
                public_key: None,
                valid_from: Some(at),
                revoked_at: None,
                added_at_index: Some(index),
            }),
            entry,
        };
        (bytes, applied)
    }

    fn apply(index: &Index, at: u64) {
        let (bytes, applied) = key_entry(at);
        index
            .apply_accepted(at, &[bytes], &[applied])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn found(index: &Index, at: u64) -> bool {
        index
            .by_request(&format!("req-{at}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .is_some_and(|(i, _)| i == at)
    }

    fn keyed(index: &Index) -> Option<Vec<u8>> {
        index
            .side
            .get(KEYED)
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|v| v.to_vec())
    }

    #[test]
    fn held_back_side_keys_are_written_at_the_end_or_at_the_next_open() {
        let tmp = tempfile::TempDir::new().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().join("index");
        {
            let index = Index::open(&dir).unwrap_or_else(|e| panic!("{e}"));
            apply(&index, 0);
            assert!(
                found(&index, 0),
                "written with the entry when not held back"
            );
            index.defer_side_keys();
            apply(&index, 1);
            apply(&index, 2);
            assert!(!found(&index, 1) && !found(&index, 2), "held back");
            assert_eq!(keyed(&index), Some(1u64.to_be_bytes().to_vec()));
            // The process stops with the trees flushed and the keys of
            // entries 1 and 2 never written.
            index.db.flush().unwrap_or_else(|e| panic!("{e}"));
            index.files.sync().unwrap_or_else(|e| panic!("{e}"));
        }
        let index = Index::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!((0..3).all(|at| found(&index, at)), "written at open");
        assert_eq!(keyed(&index), Some(3u64.to_be_bytes().to_vec()));

        index.defer_side_keys();
        apply(&index, 3);
        assert!(!found(&index, 3));
        index.write_side_keys().unwrap_or_else(|e| panic!("{e}"));
        assert!(found(&index, 3));
        apply(&index, 4);
        assert!(found(&index, 4), "written with the entry again");
    }
}
