//! Answers from the timeline: which pin was live at an instant or a
//! database position, and an environment's history.

use std::time::Duration;

use super::{DEFAULT_PAGE, HistoryPage, HistoryQuery, MAX_PAGE, Registry, Shared};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::ids::EnvName;
use crate::index::Index;
use crate::position::Ordered;
use crate::records::PinRecord;
use crate::time::Timestamp;
use crate::timeline::{self, Resolution};

/// What answering one request has read: entries (log index, bytes) and,
/// in the reader, blocks of hashes, so that its proofs need not read them
/// again.
pub(super) struct Seen<'a> {
    pub(super) entries: Vec<(u64, bytes::Bytes)>,
    pub(super) reader: crate::index::ProofReader<'a>,
    /// Where the publish of the answer's release is, when the lookup
    /// found it on the way.
    pub(super) published: Option<crate::index::EntryAt>,
}

impl<'a> Seen<'a> {
    pub(super) fn new(index: &'a Index) -> Self {
        Self {
            entries: Vec::new(),
            reader: index.proof_reader(),
            published: None,
        }
    }
}

/// Environments an unknown name is compared with, at most.
const SUGGEST_FROM: usize = 1000;

/// A pin and the instant the next pin of its environment ended it
/// (`None`: still live).
pub type LiveInterval = (PinRecord, Option<Timestamp>);

impl Shared {
    /// The head of `env`; NotFound when it has no pins.
    pub(super) fn known_env(&self, env: &EnvName) -> Result<crate::index::EnvHead> {
        match self.index.env_head(env)? {
            Some(head) => Ok(head),
            None => Err(Error::not_found(format!(
                "environment {env} has no pins{}",
                self.near_envs(env)?
            ))),
        }
    }

    /// " (did you mean prod?)" for an unknown `env`, from the first
    /// environments by name (at most [`SUGGEST_FROM`] are looked at, so an
    /// unknown name costs a bounded read).
    pub(crate) fn near_envs(&self, env: &EnvName) -> Result<String> {
        let known = self.index.env_heads(None, SUGGEST_FROM)?;
        Ok(stackpin_core::suggest::did_you_mean(
            env.as_str(),
            known.iter().map(|(name, _)| name.as_str()),
        ))
    }

    /// Pin `seq` of `env`, which the index must hold, and its entry.
    fn logged_pin(
        &self,
        env: &EnvName,
        seq: u64,
        reader: &crate::index::ProofReader<'_>,
    ) -> Result<(PinRecord, bytes::Bytes)> {
        self.index
            .pin(env, seq, reader)?
            .ok_or_else(|| Error::internal(format!("index lacks pin #{seq} of {env}")))
    }

    /// As [`Self::logged_pin`], keeping the entry's bytes in `seen`.
    fn pin_seen(&self, env: &EnvName, seq: u64, seen: &mut Seen<'_>) -> Result<PinRecord> {
        let (pin, entry) = self.logged_pin(env, seq, &seen.reader)?;
        seen.entries.push((pin.log_index, entry));
        Ok(pin)
    }

    pub(super) fn resolve_at(
        &self,
        env: &EnvName,
        at: Timestamp,
        margin: Option<Duration>,
        seen: &mut Seen<'_>,
    ) -> Result<Resolution> {
        let margin = margin.unwrap_or(self.limits.boundary_margin);
        let Some(slot) = self.index.live_at(env, at)? else {
            self.known_env(env)?;
            let first = self.logged_pin(env, 1, &seen.reader)?.0;
            return Err(Error::not_found(format!(
                "nothing was live in {env} at {at}: its first pin (#1, release {}) was activated \
                 at {}",
                first.entry.release_id, first.entry.activated_at
            )));
        };
        seen.published = Some(slot.published);
        let (pin, entry) = self.index.pin_at(slot.pin, &seen.reader)?;
        seen.entries.push((pin.log_index, entry));
        // The previous pin matters only near the start of the interval.
        let prev = match slot.prev {
            Some(prev) if timeline::near_start(at, &pin, margin) => {
                Some(self.index.pin_at(prev, &seen.reader)?.0)
            }
            _ => None,
        };
        let next = match slot.next {
            Some(next) => {
                let (next, entry) = self.index.pin_at(next, &seen.reader)?;
                seen.entries.push((next.log_index, entry));
                Some(next)
            }
            None => None,
        };
        let near_switch = timeline::near_switch(at, prev.as_ref(), &pin, next.as_ref(), margin);
        Ok(Resolution {
            pin,
            next,
            near_switch,
            uncertain: None,
        })
    }

    pub(super) fn resolve_by_position(
        &self,
        env: &EnvName,
        target: Ordered,
        seen: &mut Seen<'_>,
    ) -> Result<Resolution> {
        let head = self.known_env(env)?;
        let Some(seq) = self.index.seq_at_or_below_position(env, target)? else {
            return Err(Error::not_found(format!(
                "no pin of {env} recorded a {} at or below {target}",
                target.kind()
            )));
        };
        let pin = self.pin_seen(env, seq, seen)?;
        let next = if seq < head.seq {
            Some(self.pin_seen(env, seq + 1, seen)?)
        } else {
            None
        };
        // Pins after this one, up to the next that recorded a position of
        // this kind: any without one might have been live at the target.
        let mut unknown = Vec::new();
        let mut s = seq + 1;
        while s <= head.seq && unknown.len() < 16 {
            let later = self.logged_pin(env, s, &seen.reader)?.0;
            match later
                .entry
                .db_position
                .as_ref()
                .map(|p| p.ordered())
                .transpose()?
                .flatten()
            {
                Some(o) if o.tag() == target.tag() => break,
                _ => unknown.push(format!("#{} ({})", later.entry.seq, later.entry.release_id)),
            }
            s += 1;
        }
        let uncertain = (!unknown.is_empty()).then(|| {
            format!(
                "later pins recorded no {}, so one of them may have been live at {target}: {}",
                target.kind(),
                unknown.join(", ")
            )
        });
        Ok(Resolution {
            pin,
            next,
            near_switch: None,
            uncertain,
        })
    }
}

impl Registry {
    /// " (did you mean prod?)" for an environment that has no pins.
    ///
    /// # Errors
    /// Internal when the index is unreadable.
    pub fn near_envs(&self, env: &crate::ids::EnvName) -> Result<String> {
        self.shared.near_envs(env)
    }

    /// Every environment with its latest pin (what is live now, and its
    /// count of pins: the pin's seq), in name order, after `after`; with
    /// the name to continue after when there are more.
    ///
    /// # Errors
    /// Internal when the index fails.
    pub fn environments(
        &self,
        after: Option<&EnvName>,
        limit: usize,
    ) -> Result<(Vec<PinRecord>, Option<EnvName>)> {
        let limit = page_size(limit);
        let mut heads = self.shared.index.env_heads(after, limit + 1)?;
        let more = heads.len() > limit;
        heads.truncate(limit);
        let reader = self.shared.index.proof_reader();
        let pins = heads
            .iter()
            .map(|(env, head)| Ok(self.shared.logged_pin(env, head.seq, &reader)?.0))
            .collect::<Result<Vec<_>>>()?;
        let next = more
            .then(|| heads.last().map(|(env, _)| env.clone()))
            .flatten();
        Ok((pins, next))
    }

    /// The pin live in `env` now (its latest).
    ///
    /// # Errors
    /// NotFound when the environment has no pins.
    pub fn live_now(&self, env: &EnvName) -> Result<PinRecord> {
        let head = self.shared.known_env(env)?;
        let reader = self.shared.index.proof_reader();
        Ok(self.shared.logged_pin(env, head.seq, &reader)?.0)
    }

    /// Pin `seq` of `env`.
    ///
    /// # Errors
    /// NotFound when `env` has no pin `seq`.
    pub fn pin_record(&self, env: &EnvName, seq: u64) -> Result<PinRecord> {
        let head = self.shared.known_env(env)?;
        if seq == 0 || seq > head.seq {
            return Err(Error::not_found(format!("{env} has no pin #{seq}")));
        }
        let reader = self.shared.index.proof_reader();
        Ok(self.shared.logged_pin(env, seq, &reader)?.0)
    }

    /// Which pin was live in `env` at `at`.
    ///
    /// # Errors
    /// NotFound when the environment has no pins or `at` precedes the first.
    pub fn resolve(
        &self,
        env: &EnvName,
        at: Timestamp,
        margin: Option<Duration>,
    ) -> Result<Resolution> {
        self.shared
            .resolve_at(env, at, margin, &mut Seen::new(&self.shared.index))
    }

    /// Where and when the artifact `digest` was live: its pins (at most
    /// `limit`), by environment and then newest first, each with the
    /// instant the next pin of its environment ended it (`None`: still
    /// live); and whether more pins of it were left out.
    ///
    /// # Errors
    /// Internal when the index fails.
    pub fn pins_of_artifact(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> Result<(Vec<LiveInterval>, bool)> {
        let index = &self.shared.index;
        let mut found = index.pins_of(digest, limit.saturating_add(1))?;
        let more = found.len() > limit;
        found.truncate(limit);
        // Newest first within each environment, as the history shows them.
        found.sort_by(|(e1, s1), (e2, s2)| e1.cmp(e2).then(s2.cmp(s1)));
        let reader = index.proof_reader();
        let pins = found
            .iter()
            .map(|(env, seq)| {
                let pin = self.shared.logged_pin(env, *seq, &reader)?.0;
                let until = index
                    .pin(env, seq + 1, &reader)?
                    .map(|(next, _)| next.entry.activated_at);
                Ok((pin, until))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((pins, more))
    }

    /// A page of `env`'s pins, newest first.
    ///
    /// # Errors
    /// NotFound for an environment without pins.
    pub fn history(&self, env: &EnvName, query: &HistoryQuery) -> Result<HistoryPage> {
        let head = self.shared.known_env(env)?;
        let limit = page_size(query.limit);
        let empty = HistoryPage {
            pins: Vec::new(),
            next: None,
        };
        if let Some(id) = &query.request_id {
            let id = stackpin_core::ids::parse_request_id(id)?;
            let pins = match self.shared.index.by_request(&id)? {
                Some((index, crate::log::Entry::Pin(p))) if p.env == *env => {
                    let index_ = &self.shared.index;
                    vec![
                        index_
                            .pin_at(index_.place(index)?, &index_.proof_reader())?
                            .0,
                    ]
                }
                _ => Vec::new(),
            };
            return Ok(HistoryPage { pins, next: None });
        }
        let mut hi = head.seq;
        if let Some(before) = query.before {
            match self.shared.index.seq_before(env, before)? {
                Some(s) => hi = hi.min(s),
                None => return Ok(empty),
            }
        }
        if let Some(from) = query.from_seq {
            hi = hi.min(from);
        }
        let lo = match query.since {
            Some(since) => match self.shared.index.seq_at_or_after(env, since)? {
                Some(s) => s,
                None => return Ok(empty),
            },
            None => 1,
        };
        let mut pins = Vec::new();
        let mut seq = hi;
        let reader = self.shared.index.proof_reader();
        while seq >= lo && seq >= 1 && pins.len() < limit {
            pins.push(self.shared.logged_pin(env, seq, &reader)?.0);
            seq -= 1;
        }
        let next = (seq >= lo && seq >= 1).then_some(seq);
        Ok(HistoryPage { pins, next })
    }
}

pub(super) fn page_size(requested: usize) -> usize {
    match requested {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}
