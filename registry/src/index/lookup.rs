//! Reading the index: records and entry bytes by release, digest,
//! environment, sequence, instant and database position. Callers get
//! records and bytes, never the index's keys.

use super::codec::{
    EntryAt, Slot, decode, env_prefix, evidence_key, object_key, pin_key, position_key,
    seq_of_time_key, time_key, u64_at,
};
use super::{ArtifactRecord, DAMAGED, EnvHead, Index, KeyRecord, PinRecord, ProofReader};
use crate::digest::Digest;
use crate::error::{Error, Kind, Result};
use crate::ids::{EnvName, ReleaseId};
use crate::log::Entry;
use crate::merkle::Hash;
use crate::position::Ordered;
use crate::signing::KeyId;
use crate::time::Timestamp;
use stackpin_core::entry::Live;
use stackpin_core::posture::Evidence;
use stackpin_core::state::SnapshotRef;

/// A snapshot as the index lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotRow {
    pub at: EntryAt,
    /// The sequence number of the pin live at its instant.
    pub seq: u64,
    pub db_time: Timestamp,
    /// When the registry recorded it.
    pub recorded_at: Timestamp,
}

impl SnapshotRow {
    fn decode(v: &[u8]) -> Result<Self> {
        Ok(Self {
            at: EntryAt::decode(v)?,
            seq: u64_at(v, 20)?,
            db_time: Timestamp::from_micros(i64_at(v, 28)?)?,
            recorded_at: Timestamp::from_micros(i64_at(v, 36)?)?,
        })
    }
}

/// A drill as the index lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrillRow {
    pub at: EntryAt,
    pub passed: bool,
    pub recorded_at: Timestamp,
    pub rto_millis: Option<u64>,
}

impl DrillRow {
    fn decode(v: &[u8]) -> Result<Self> {
        let passed = *v
            .get(20)
            .ok_or_else(|| Error::internal("index holds a short drill record"))?;
        let rto = u64_at(v, 29)?;
        Ok(Self {
            at: EntryAt::decode(v)?,
            passed: passed == 1,
            recorded_at: Timestamp::from_micros(i64_at(v, 21)?)?,
            rto_millis: (rto != u64::MAX).then_some(rto),
        })
    }
}

fn i64_at(bytes: &[u8], at: usize) -> Result<i64> {
    Ok(u64_at(bytes, at)?.cast_signed())
}

impl Index {
    /// Every log object applied: (first index, entry count, byte size), in
    /// order.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn objects(&self) -> Result<Vec<(u64, u64, u64)>> {
        self.tree
            .scan_prefix(b"o/")
            .map(|item| {
                let (key, value) = item?;
                Ok((u64_at(&key, 2)?, u64_at(&value, 0)?, u64_at(&value, 8)?))
            })
            .collect()
    }

    /// The log object holding entry `index`: its first index and entry count.
    /// (Objects are recorded with their first entry.)
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn object_of(&self, index: u64) -> Result<Option<(u64, u64)>> {
        let hi = object_key(index);
        let Some(item) = self.tree.range(&b"o/"[..]..=&hi[..]).next_back() else {
            return Ok(None);
        };
        let (key, value) = item?;
        let start = u64_at(&key, 2)?;
        let count = u64_at(&value, 0)?;
        Ok((index < start + count).then_some((start, count)))
    }

    /// The lifecycle record of a publisher key.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn key(&self, key_id: &KeyId) -> Result<Option<KeyRecord>> {
        self.tree
            .get(format!("k/{key_id}"))?
            .map(|v| decode("key", &v))
            .transpose()
    }

    /// Every publisher key the log mentions.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn keys(&self) -> Result<Vec<KeyRecord>> {
        self.tree
            .scan_prefix(b"k/")
            .map(|item| decode("key", &item?.1))
            .collect()
    }

    /// The artifact bound to `release_id`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn artifact_by_release(&self, release_id: &ReleaseId) -> Result<Option<ArtifactRecord>> {
        self.artifact_entry(release_id)?
            .map(|at| self.artifact_record(at))
            .transpose()
    }

    /// The log index of the publish that bound `release_id`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn artifact_entry(&self, release_id: &ReleaseId) -> Result<Option<EntryAt>> {
        self.tree
            .get(format!("r/{release_id}"))?
            .map(|v| EntryAt::decode(&v))
            .transpose()
    }

    /// The artifact published at `at`, from the entry copy.
    pub(super) fn artifact_record(&self, at: EntryAt) -> Result<ArtifactRecord> {
        let index = at.index;
        let (bytes, _) = self.verified_copy(at, &self.proof_reader())?;
        let Entry::Publish(p) = Entry::parse(index, &bytes)? else {
            return Err(Error::internal(format!(
                "index names log entry {index} as a publish; it is not"
            )));
        };
        Ok(ArtifactRecord {
            release_id: p.release_id,
            digest: p.digest,
            size: p.size,
            media_type: p.media_type,
            recorded_at: p.recorded_at,
            log_index: index,
            key_id: p.key_id,
            envelope: p.envelope,
        })
    }

    /// An artifact with `digest` (the earliest-sorting release id bound to it).
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn artifact_by_digest(&self, digest: &Digest) -> Result<Option<ArtifactRecord>> {
        let prefix = format!("d/{}/", digest.hex());
        let Some(item) = self.tree.scan_prefix(prefix.as_bytes()).next() else {
            return Ok(None);
        };
        let (key, _) = item?;
        let release = std::str::from_utf8(&key[prefix.len()..])
            .map_err(|_| Error::internal("index digest key is not UTF-8"))?;
        let release: ReleaseId = release.parse()?;
        self.artifact_by_release(&release)
    }

    /// The pins of the artifact `digest` (environment and sequence
    /// number), newest first; at most `limit`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn pins_of(&self, digest: &Digest, limit: usize) -> Result<Vec<(EnvName, u64)>> {
        let key = super::codec::artifact_pin_key(digest, 0);
        let prefix = &key[..key.len() - 8];
        let mut found = Vec::new();
        let applied = self.applied()?;
        for item in self.side.scan_prefix(prefix).rev() {
            if found.len() >= limit {
                break;
            }
            let (key, _) = item?;
            let index = u64_at(&key, prefix.len())?;
            if index >= applied {
                continue; // written ahead of a crash, not applied yet
            }
            if let (Entry::Pin(p), _) = self.entry(index)?
                && p.digest == *digest
            {
                found.push((p.env, p.seq));
            }
        }
        Ok(found)
    }

    /// Artifacts in release id order, starting after `after`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn list_artifacts(
        &self,
        after: Option<&ReleaseId>,
        limit: usize,
    ) -> Result<Vec<ArtifactRecord>> {
        let start = match after {
            // '/'+1 is '0': nothing sorts between "r/<id>" and "r/<id>\0".
            Some(id) => format!("r/{id}\0").into_bytes(),
            None => b"r/".to_vec(),
        };
        let mut out = Vec::new();
        for item in self.tree.range(start..) {
            let (key, value) = item?;
            if !key.starts_with(b"r/") || out.len() >= limit {
                break;
            }
            out.push(self.artifact_record(EntryAt::decode(&value)?)?);
        }
        Ok(out)
    }

    /// Environments with their latest pins, in name order, starting after
    /// `after`; at most `limit`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn env_heads(
        &self,
        after: Option<&EnvName>,
        limit: usize,
    ) -> Result<Vec<(EnvName, EnvHead)>> {
        let start = match after {
            Some(env) => format!("e/{env}\0").into_bytes(),
            None => b"e/".to_vec(),
        };
        let mut out = Vec::new();
        for item in self.tree.range(start..) {
            let (key, value) = item?;
            if !key.starts_with(b"e/") || out.len() >= limit {
                break;
            }
            let name = std::str::from_utf8(&key[2..])
                .ok()
                .and_then(|n| n.parse::<EnvName>().ok())
                .ok_or_else(|| Error::internal("the index holds a malformed environment key"))?;
            out.push((name, decode("environment head", &value)?));
        }
        Ok(out)
    }

    /// The latest pin of `env`, if any.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn env_head(&self, env: &EnvName) -> Result<Option<EnvHead>> {
        self.tree
            .get(format!("e/{env}"))?
            .map(|v| decode("environment head", &v))
            .transpose()
    }

    /// The entry the request with id `id` wrote, and its log index.
    ///
    /// # Errors
    /// As [`Self::verified_copy`].
    pub fn by_request(&self, id: &str) -> Result<Option<(u64, Entry)>> {
        let prefix = super::codec::request_prefix(id);
        let applied = self.applied()?;
        for item in self.side.scan_prefix(prefix) {
            let (key, _) = item?;
            let index = u64_at(&key, prefix.len())?;
            if index >= applied {
                break; // written ahead of a crash, not applied yet
            }
            let (bytes, _) = self.verified_copy(self.place(index)?, &self.proof_reader())?;
            let entry = Entry::parse(index, &bytes)?;
            if entry.request_id() == Some(id) {
                return Ok(Some((index, entry)));
            }
        }
        Ok(None)
    }

    /// Where the index keeps its copy of entry `index`.
    ///
    /// # Errors
    /// Internal when the entry is not applied or the files are unreadable.
    pub fn place(&self, index: u64) -> Result<EntryAt> {
        let (offset, len) = self.files.position(index)?;
        let len = u32::try_from(len)
            .map_err(|_| Error::internal(format!("index holds an entry length of {len}")))?;
        Ok(EntryAt { index, offset, len })
    }

    /// Pin `seq` of `env` and its entry's bytes; `None` when `env` has no
    /// pin `seq` (yet).
    ///
    /// # Errors
    /// As [`Self::pin_at`].
    pub fn pin(
        &self,
        env: &EnvName,
        seq: u64,
        reader: &ProofReader<'_>,
    ) -> Result<Option<(PinRecord, bytes::Bytes)>> {
        if seq == 0 {
            return Ok(None);
        }
        let Some(value) = self.tree.get(pin_key(env, seq))? else {
            return Ok(None);
        };
        self.pin_at(EntryAt::decode(&value)?, reader).map(Some)
    }

    /// The pin whose entry is at `at`, from the entry copy, and the
    /// copy's bytes.
    ///
    /// # Errors
    /// DataLoss when the copy is damaged (the index is then marked for a
    /// rebuild at the next start); Internal when the entry is not a pin.
    pub fn pin_at(
        &self,
        at: EntryAt,
        reader: &ProofReader<'_>,
    ) -> Result<(PinRecord, bytes::Bytes)> {
        let index = at.index;
        let (bytes, leaf) = self.verified_copy(at, reader)?;
        let Entry::Pin(p) = Entry::parse(index, &bytes)? else {
            return Err(Error::internal(format!(
                "index names log entry {index} as a pin; it is not"
            )));
        };
        let pin = PinRecord {
            entry: p,
            log_index: index,
            entry_hash: leaf,
        };
        Ok((pin, bytes::Bytes::from(bytes)))
    }

    /// The copy of entry `index`, checked against its leaf hash.
    ///
    /// # Errors
    /// DataLoss when the copy is damaged (the index is then marked for a
    /// rebuild at the next start).
    pub(super) fn verified_copy(
        &self,
        at: EntryAt,
        reader: &ProofReader<'_>,
    ) -> Result<(Vec<u8>, Hash)> {
        let index = at.index;
        let bytes = self.files.entry_at(at.offset, at.len.into())?;
        let Some(leaf) = reader.verify(index, &bytes)? else {
            return Err(Error::new(
                Kind::DataLoss,
                format!(
                    "the index's copy of log entry {index} is damaged; restart the registry to \
                     rebuild the index from the log"
                ),
            ));
        };
        Ok((bytes, leaf))
    }

    /// Leaves a mark that makes the next open rebuild the index.
    pub fn mark_damaged(&self, index: u64) {
        tracing::error!(
            index,
            "the index's copy of a log entry is damaged; the index will be rebuilt at the next start"
        );
        if let Some(dir) = &self.dir
            && let Err(e) = std::fs::write(dir.join(DAMAGED), index.to_string())
        {
            tracing::error!(error = %e, "cannot mark the index damaged");
        }
    }

    /// The last pin of `env` activated at or before `at` (ties: the later
    /// pin), by one range seek: its [`Slot`].
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn live_at(&self, env: &EnvName, at: Timestamp) -> Result<Option<Slot>> {
        let lo = env_prefix("t", env);
        let hi = time_key(env, at, u64::MAX);
        match self.tree.range(lo..=hi).next_back() {
            Some(item) => Ok(Some(Slot::decode(&item?.1)?)),
            None => Ok(None),
        }
    }

    /// The pin of `env` live at `at` (see [`Self::live_at`]), as the rules
    /// of snapshots and drills name it.
    ///
    /// # Errors
    /// As [`Self::pin_at`].
    pub fn live_pin(&self, env: &EnvName, at: Timestamp) -> Result<Option<Live>> {
        let Some(slot) = self.live_at(env, at)? else {
            return Ok(None);
        };
        let (pin, _) = self.pin_at(slot.pin, &self.proof_reader())?;
        Ok(Some(Live {
            seq: pin.entry.seq,
            release_id: pin.entry.release_id,
            digest: pin.entry.digest,
        }))
    }

    /// Entry `index` and its bytes, from the index's copy.
    ///
    /// # Errors
    /// As [`Self::verified_copy`]; Internal when `index` is not applied.
    pub fn entry(&self, index: u64) -> Result<(Entry, Vec<u8>)> {
        let (bytes, _) = self.verified_copy(self.place(index)?, &self.proof_reader())?;
        Ok((Entry::parse(index, &bytes)?, bytes))
    }

    /// The snapshot entry at `index`, as a drill naming it is checked
    /// against; `None` when that entry is not a snapshot (or not applied).
    ///
    /// # Errors
    /// As [`Self::entry`].
    pub fn snapshot_ref(&self, index: u64) -> Result<Option<SnapshotRef>> {
        if index >= self.applied()? {
            return Ok(None);
        }
        Ok(match self.entry(index)?.0 {
            Entry::Snapshot(s) => Some(SnapshotRef {
                env: s.env,
                db_time: s.db_time,
            }),
            _ => None,
        })
    }

    /// The snapshots of `env`, newest first, starting before log index
    /// `before`, at most `limit`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn snapshots(&self, env: &EnvName, before: u64, limit: usize) -> Result<Vec<SnapshotRow>> {
        self.tree
            .range(env_prefix("s", env)..evidence_key("s", env, before))
            .rev()
            .take(limit)
            .map(|item| SnapshotRow::decode(&item?.1))
            .collect()
    }

    /// The drills of `env`, newest first, starting before log index
    /// `before`, at most `limit`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn drills(&self, env: &EnvName, before: u64, limit: usize) -> Result<Vec<DrillRow>> {
        self.tree
            .range(env_prefix("v", env)..evidence_key("v", env, before))
            .rev()
            .take(limit)
            .map(|item| DrillRow::decode(&item?.1))
            .collect()
    }

    /// What the log holds about the backups and drills of `env`, for its
    /// posture: one pass over its snapshot keys and a backwards walk over
    /// its drill keys to the newest passing one.
    ///
    /// With `as_of`, only what existed by then counts: the pins activated
    /// by then, and the snapshots and drills recorded by then (so an auditor can ask how an environment
    /// stood at the end of a past quarter).
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn evidence(&self, env: &EnvName, as_of: Option<Timestamp>) -> Result<Evidence> {
        let head = self.env_head(env)?;
        let all = head.as_ref().map_or(0, |h| h.seq);
        let pins = match as_of {
            None => all,
            // Pins are activated in sequence order, so the last one
            // activated at or before `t` is the count of them.
            Some(t) => match self
                .tree
                .range(env_prefix("t", env)..=time_key(env, t, u64::MAX))
                .next_back()
            {
                Some(item) => seq_of_time_key(&item?.0)?,
                None => 0,
            },
        };
        let positioned = if pins == all {
            head.map_or(0, |h| h.positioned)
        } else {
            // As of a past instant: read the pins activated by then (a
            // restore point is a position too, and has no ordered key).
            let reader = self.proof_reader();
            let mut n = 0;
            for seq in 1..=pins {
                if let Some((p, _)) = self.pin(env, seq, &reader)?
                    && p.entry.db_position.is_some()
                {
                    n += 1;
                }
            }
            n
        };
        let snapshots = self
            .tree
            .scan_prefix(env_prefix("s", env))
            .map(|item| {
                let row = SnapshotRow::decode(&item?.1)?;
                Ok(stackpin_core::posture::SnapshotFact {
                    seq: row.seq,
                    db_time: row.db_time,
                    recorded_at: row.recorded_at,
                    index: row.at.index,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Newest first; only as far as the first passing drill counted.
        let mut drills = Vec::new();
        for item in self.tree.scan_prefix(env_prefix("v", env)).rev() {
            let row = DrillRow::decode(&item?.1)?;
            let counted = as_of.is_none_or(|t| row.recorded_at <= t);
            drills.push(stackpin_core::posture::DrillFact {
                recorded_at: row.recorded_at,
                passed: row.passed,
                index: row.at.index,
                rto_millis: row.rto_millis,
            });
            if counted && row.passed {
                break;
            }
        }
        Ok(stackpin_core::posture::gather(
            pins, positioned, snapshots, drills, as_of,
        ))
    }

    /// The sequence number of the pin of `env` with the greatest recorded
    /// position of `target`'s kind that is at most `target`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn seq_at_or_below_position(&self, env: &EnvName, target: Ordered) -> Result<Option<u64>> {
        let mut lo = env_prefix("q", env);
        lo.push(target.tag());
        let hi = position_key(env, target, u64::MAX);
        match self.tree.range(lo..=hi).next_back() {
            Some(item) => Ok(Some(seq_of_time_key(&item?.0)?)),
            None => Ok(None),
        }
    }

    /// The sequence number of the last pin of `env` activated strictly before `at`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn seq_before(&self, env: &EnvName, at: Timestamp) -> Result<Option<u64>> {
        let lo = env_prefix("t", env);
        let hi = time_key(env, at, 0);
        match self.tree.range(lo..hi).next_back() {
            Some(item) => Ok(Some(seq_of_time_key(&item?.0)?)),
            None => Ok(None),
        }
    }

    /// The sequence number of the first pin of `env` activated at or after `at`.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn seq_at_or_after(&self, env: &EnvName, at: Timestamp) -> Result<Option<u64>> {
        let prefix = env_prefix("t", env);
        let lo = time_key(env, at, 0);
        match self.tree.range(lo..).next() {
            Some(item) => {
                let (key, _) = item?;
                if key.starts_with(&prefix) {
                    Ok(Some(seq_of_time_key(&key)?))
                } else {
                    Ok(None)
                }
            }
            None => Ok(None),
        }
    }
}
