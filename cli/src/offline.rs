//! A log read from a folder or a bucket in the registry's storage layout
//! (a mirror `stackpin mirror` wrote, a copy of a data folder, a replicated
//! bucket) with no registry running. Every entry is checked before anything is answered: the
//! folder's signed checkpoint (the log's key, and a policy's quorum when
//! given) and the root of the entries the folder holds, computed here. A
//! question is then answered from those entries alone, with inclusion
//! proofs computed from them, so what is printed is what the signed
//! checkpoint commits to.

use std::time::Duration;

use bytes::Bytes;
use stackpin_core::digest::Digest;
use stackpin_core::entry::{Entry, PinEntry};
use stackpin_core::ids::EnvName;
use stackpin_core::layout;
use stackpin_core::merkle::{self, MemoryTree};
use stackpin_core::note::{Checkpoint, NoteVerifier};
use stackpin_core::position::DbPosition;
use stackpin_core::proof::ProvedEntry;
use stackpin_core::time::Timestamp;

use crate::exit::{Failure, Outcome};
use crate::place::{Place, cap};
use crate::view::{BoundaryView, PinView, ResolveView};

/// A verified log in a folder or a bucket.
pub struct OfflineLog {
    pub place: Place,
    /// The folder's signed checkpoint note, and what it says.
    pub note: String,
    pub checkpoint: Checkpoint,
    entries: Vec<Bytes>,
    tree: MemoryTree,
}

/// The entries of `place`'s log objects, in order, split out of them, up
/// to at least `upto` (what lies past it, such as objects an interrupted
/// copy left, is not read).
///
/// # Errors
/// A gap or an unreadable object.
pub async fn read_entries(
    place: &Place,
    upto: u64,
    mut tick: impl FnMut(u64),
) -> Outcome<Vec<Bytes>> {
    let mut entries = Vec::new();
    each_object_from(place, 0, upto, |_, mut object| {
        entries.append(&mut object);
        tick(entries.len() as u64);
        Ok(())
    })
    .await?;
    Ok(entries)
}

/// Reads `place`'s log objects one at a time, in order, from the object
/// holding entry `from` (it may start before `from`; the caller skips what
/// it does not need) as far as `upto`, handing `f` each one's first index
/// and entries: a log of any size is read holding one object, and a round
/// that needs the end of a long log reads only the end.
///
/// # Errors
/// A gap or an unreadable object; what `f` returns.
pub async fn each_object_from(
    place: &Place,
    from: u64,
    upto: u64,
    mut f: impl FnMut(u64, Vec<Bytes>) -> Outcome,
) -> Outcome {
    let mut objects = Objects::open(place, from, upto).await?;
    while let Some((start, object)) = objects.next().await? {
        f(start, object)?;
    }
    Ok(())
}

/// Says on stderr what a mirror recorded of its last round (when the
/// place is a mirror that did): how far its source's checkpoint was then,
/// and when. The mirror's own record, unsigned, so it is only said; the
/// answer rests on the signed checkpoint alone.
pub async fn say_last_round(place: &Place) {
    let Ok(Some(bytes)) = place.get(crate::cmd::mirror::STATUS, cap::RECORD).await else {
        return;
    };
    let Ok(status) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return;
    };
    let (Some(size), Some(source_size), Some(source), Some(at)) = (
        status["size"].as_u64(),
        status["source_size"].as_u64(),
        status["source"].as_str(),
        status["completed_at"].as_str(),
    ) else {
        return;
    };
    eprintln!(
        "note: this mirror's last round (its own record, unsigned) completed at {at}, copying \
         {source} up to {size} entries, when the source's checkpoint signed {source_size}; pins \
         recorded after that are not in it",
        at = stackpin_core::error::shown(at),
        source = stackpin_core::error::shown(source),
    );
}

/// A cursor over a place's log objects (see [`each_object_from`]).
pub struct Objects<'a> {
    place: &'a Place,
    starts: std::vec::IntoIter<u64>,
    read: u64,
    upto: u64,
}

impl<'a> Objects<'a> {
    /// The objects from the one holding entry `from` as far as `upto`.
    ///
    /// # Errors
    /// Unavailable when the log cannot be listed.
    pub async fn open(place: &'a Place, from: u64, upto: u64) -> Outcome<Self> {
        let starts = place.object_starts().await?;
        let first = starts.iter().rposition(|s| *s <= from).unwrap_or(0);
        let read = starts.get(first).copied().unwrap_or(0).min(from);
        let mut starts = starts.into_iter();
        if first > 0 {
            starts.nth(first - 1);
        }
        Ok(Self {
            place,
            starts,
            read,
            upto,
        })
    }

    /// The next object's first index and entries; `None` past `upto` or
    /// the last object.
    ///
    /// # Errors
    /// A gap before it, or it cannot be read.
    pub async fn next(&mut self) -> Outcome<Option<(u64, Vec<Bytes>)>> {
        if self.read >= self.upto {
            return Ok(None);
        }
        let Some(start) = self.starts.next() else {
            return Ok(None);
        };
        if start != self.read {
            return Err(Failure::verify(format!(
                "{}: the log objects skip from entry {} to {start}: entries are missing",
                self.place.show(layout::ENTRIES),
                self.read
            )));
        }
        let key = layout::object_key(start);
        let bytes = self
            .place
            .get(&key, cap::LOG_OBJECT)
            .await?
            .ok_or_else(|| {
                Failure::verify(format!(
                    "{}: gone while the log was read",
                    self.place.show(&key)
                ))
            })?;
        let object = layout::split(&bytes);
        self.read += object.len() as u64;
        Ok(Some((start, object)))
    }
}

impl OfflineLog {
    /// Reads and verifies the log in `place`: its checkpoint under
    /// `log_key` (and `quorum`), and the root of its first `size` entries.
    ///
    /// # Errors
    /// Invalid when the place holds no log; verification failed when the
    /// checkpoint or the entries do not check.
    pub async fn open(
        place: &Place,
        log_key: &NoteVerifier,
        quorum: &dyn Fn(&str) -> Outcome,
    ) -> Outcome<Self> {
        let cp_key = layout::CHECKPOINT;
        let note = place
            .need(cp_key, cap::NOTE, "not a stackpin data folder or mirror")
            .await?;
        let note = String::from_utf8(note.to_vec())
            .map_err(|_| Failure::verify(format!("{}: not text", place.show(cp_key))))?;
        let checkpoint = Checkpoint::open(&note, log_key)
            .map_err(|e| Failure::verify(format!("{}: {e}", place.show(cp_key))))?;
        quorum(&note)?;
        let mut progress = crate::progress::Progress::items("reading the log", None);
        let mut entries = read_entries(place, checkpoint.size, |n| {
            progress.tick("reading the log", n, Some(checkpoint.size));
        })
        .await?;
        if (entries.len() as u64) < checkpoint.size {
            return Err(Failure::verify(format!(
                "{} holds {} entries, but its checkpoint signs {}: entries are missing",
                place.name(),
                entries.len(),
                checkpoint.size
            )));
        }
        // Entries past the checkpoint (a copy interrupted before its
        // checkpoint was written) are not part of the signed log.
        entries.truncate(usize::try_from(checkpoint.size).unwrap_or(usize::MAX));
        let mut tree = MemoryTree::new();
        for e in &entries {
            tree.push(merkle::leaf_hash(e));
        }
        let root = merkle::root(&tree, checkpoint.size).map_err(Failure::verify)?;
        progress.finish();
        if root != checkpoint.root {
            return Err(Failure::verify(format!(
                "the {} entries in {} do not lead to the root its checkpoint signs: the folder \
                 was altered or is not the log it claims",
                checkpoint.size,
                place.name()
            )));
        }
        Ok(Self {
            place: place.clone(),
            note,
            checkpoint,
            entries,
            tree,
        })
    }

    /// The checkpoint note, what it says, and the tree of the entries it
    /// signs.
    pub fn into_tree(self) -> (String, Checkpoint, MemoryTree) {
        (self.note, self.checkpoint, self.tree)
    }

    /// The root of the first `size` entries, when the folder holds them.
    pub fn root_at(&self, size: u64) -> Option<merkle::Hash> {
        (size <= self.checkpoint.size)
            .then(|| merkle::root(&self.tree, size).ok())
            .flatten()
    }

    /// The entry at `index`, parsed.
    ///
    /// # Errors
    /// Verification failed when it does not parse.
    pub fn entry(&self, index: u64) -> Outcome<Entry> {
        let bytes = self.raw(index)?;
        Entry::parse(index, bytes).map_err(|e| Failure::verify(e.to_string()))
    }

    fn raw(&self, index: u64) -> Outcome<&Bytes> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get(i))
            .ok_or_else(|| Failure::verify(format!("log entry {index} is not in the log")))
    }

    /// The view of the pin at `index`.
    ///
    /// # Errors
    /// Verification failed when it is not in the log.
    pub fn pin_view(&self, index: u64, pin: &PinEntry) -> Outcome<PinView> {
        Ok(PinView::of(
            index,
            &merkle::leaf_hash(self.raw(index)?),
            pin,
        ))
    }

    /// The entry at `index` with its inclusion proof in the checkpoint.
    ///
    /// # Errors
    /// Verification failed when it is not in the log.
    pub fn proved(&self, index: u64) -> Outcome<ProvedEntry> {
        let proof = merkle::inclusion_proof(&self.tree, index, self.checkpoint.size)
            .map_err(|e| Failure::verify(format!("{e:?}")))?;
        Ok(ProvedEntry {
            index,
            entry: self.raw(index)?.clone(),
            proof,
        })
    }

    /// Every entry, with its index.
    pub fn all(&self) -> impl Iterator<Item = (u64, Outcome<Entry>)> + '_ {
        (0..self.checkpoint.size).map(|i| (i, self.entry(i)))
    }

    /// The pins of `env`, in order, with their log indices.
    ///
    /// # Errors
    /// Verification failed when an entry does not parse.
    pub fn pins(&self, env: &EnvName) -> Outcome<Vec<(u64, PinEntry)>> {
        let mut pins = Vec::new();
        for (i, e) in self.all() {
            if let Entry::Pin(p) = e?
                && &p.env == env
            {
                pins.push((i, p));
            }
        }
        Ok(pins)
    }

    /// The index of the publish entry of `digest`.
    ///
    /// # Errors
    /// Verification failed when the log publishes no such artifact.
    pub fn publish_of(&self, digest: &Digest) -> Outcome<u64> {
        for (i, e) in self.all() {
            if let Entry::Publish(p) = e?
                && &p.digest == digest
            {
                return Ok(i);
            }
        }
        Err(Failure::verify(format!(
            "the log pins {digest}, but publishes no such artifact"
        )))
    }

    /// The artifact bytes of `digest` in the folder, checked against it;
    /// at most `max_download` bytes are read.
    ///
    /// # Errors
    /// Not found when absent; verification failed when they differ;
    /// invalid when longer than `max_download`.
    pub async fn blob(&self, digest: &Digest, max_download: u64) -> Outcome<Bytes> {
        let key = layout::blob_key(digest);
        let bytes = self
            .place
            .artifact(digest, max_download)
            .await?
            .ok_or_else(|| {
                Failure::new(
                    crate::exit::NOT_FOUND,
                    anyhow::anyhow!(
                        "{}: not found: the log's copy does not hold the artifact",
                        self.place.show(&key)
                    ),
                )
            })?;
        if Digest::of(&bytes) != *digest {
            return Err(Failure::verify(format!(
                "{} does not hash to {digest}",
                self.place.show(&key)
            )));
        }
        Ok(bytes)
    }

    /// The pin of `env` live at `at` (or at a database position), its
    /// neighbours and the view `resolve` prints, from the proved entries.
    ///
    /// # Errors
    /// Not found when nothing was live then.
    pub fn resolve(
        &self,
        env: &EnvName,
        at: Option<Timestamp>,
        position: Option<&DbPosition>,
        margin: Duration,
    ) -> Outcome<Resolution> {
        let pins = self.pins(env)?;
        if pins.is_empty() {
            return Err(Failure::new(
                crate::exit::NOT_FOUND,
                anyhow::anyhow!("the log holds no pin of {env}"),
            ));
        }
        let (chosen, uncertain) = match (position, at) {
            (Some(target), _) => by_position(&pins, target)?,
            (None, Some(at)) => (pins.iter().rposition(|(_, p)| p.activated_at <= at), None),
            (None, None) => return Err(Failure::invalid("--at or a database position is needed")),
        };
        let Some(k) = chosen else {
            let why = match position {
                Some(target) => format!("no pin of {env} recorded a position at or below {target}"),
                None => format!(
                    "nothing was live in {env} then: its first pin went live at {}",
                    pins[0].1.activated_at
                ),
            };
            return Err(Failure::new(crate::exit::NOT_FOUND, anyhow::anyhow!(why)));
        };
        let (index, pin) = &pins[k];
        let next = pins.get(k + 1);
        let prev = k.checked_sub(1).map(|j| &pins[j]);
        let view_of = |(i, p): &(u64, PinEntry)| self.pin_view(*i, p);
        let near_switch = match at {
            Some(at) => stackpin_core::live::near_switch(
                at,
                prev.map(|(_, p)| p.activated_at),
                pin.activated_at,
                next.map(|(_, p)| p.activated_at),
                margin,
            )
            .map(|s| -> Outcome<BoundaryView> {
                let (before, after) = if s.to_next {
                    (&pins[k], next.unwrap_or(&pins[k]))
                } else {
                    (prev.unwrap_or(&pins[k]), &pins[k])
                };
                Ok(BoundaryView {
                    before: view_of(before)?,
                    after: view_of(after)?,
                    offset_seconds: s.offset_micros as f64 / 1e6,
                })
            })
            .transpose()?,
            None => None,
        };
        let view = ResolveView {
            env: env.to_string(),
            at: match (position, at) {
                (Some(p), _) => p.to_string(),
                (None, Some(at)) => at.to_string(),
                (None, None) => String::new(),
            },
            pin: view_of(&pins[k])?,
            live_from: pin.activated_at.to_string(),
            live_until: next.map(|(_, n)| n.activated_at.to_string()),
            next: next.map(view_of).transpose()?,
            near_switch,
            uncertain,
        };
        Ok(Resolution {
            pin_index: *index,
            pin: pin.clone(),
            next_index: next.map(|(i, _)| *i),
            publish_index: self.publish_of(&pin.digest)?,
            view,
        })
    }
}

/// The pin with the greatest recorded position of the target's kind at or
/// below it, and why the answer may be uncertain: the next pin recorded no
/// position of that kind (the rule the online check applies).
fn by_position(
    pins: &[(u64, PinEntry)],
    target: &DbPosition,
) -> Outcome<(Option<usize>, Option<String>)> {
    let want = target
        .ordered()
        .map_err(|e| Failure::invalid(e.to_string()))?
        .ok_or_else(|| Failure::invalid(format!("{target} cannot be searched by order")))?;
    let of_kind = |p: &PinEntry| {
        p.db_position
            .as_ref()
            .and_then(|d| d.ordered().ok().flatten())
            .filter(|o| o.tag() == want.tag())
    };
    let chosen = pins
        .iter()
        .rposition(|(_, p)| of_kind(p).is_some_and(|o| o.value() <= want.value()));
    let uncertain = chosen
        .and_then(|k| pins.get(k + 1))
        .filter(|(_, n)| of_kind(n).is_none())
        .map(|(_, n)| {
            format!(
                "the next pin #{} ({}) recorded no {}, so it or a later one may have been live \
                 at {target}",
                n.seq,
                n.release_id,
                want.kind()
            )
        });
    Ok((chosen, uncertain))
}

/// What [`OfflineLog::resolve`] found.
pub struct Resolution {
    pub pin_index: u64,
    pub pin: PinEntry,
    pub next_index: Option<u64>,
    pub publish_index: u64,
    pub view: ResolveView,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_folder_with_a_gap_in_its_log_objects_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let place = Place::Folder(dir.path().to_owned());
        let entries = dir.path().join(layout::ENTRIES);
        std::fs::create_dir_all(&entries).unwrap();
        std::fs::write(dir.path().join(layout::object_key(0)), b"{}\n{}").unwrap();
        let read = |upto| read_entries(&place, upto, |_| {});
        assert_eq!(read(u64::MAX).await.ok().unwrap().len(), 2);
        std::fs::write(dir.path().join(layout::object_key(3)), b"{}").unwrap();
        let err = read(u64::MAX).await.err().unwrap();
        assert!(format!("{:#}", err.error).contains("skip from entry 2 to 3"));
        // What lies past the entries asked for is not read.
        assert_eq!(read(2).await.ok().unwrap().len(), 2);
        // A folder with no log holds no entries.
        let empty = Place::Folder(dir.path().join("nothing"));
        assert!(
            read_entries(&empty, u64::MAX, |_| {})
                .await
                .ok()
                .unwrap()
                .is_empty()
        );
    }
}
