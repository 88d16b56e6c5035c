//! The verified reader: the one road by which facts from a log reach the
//! screen.
//!
//! A command hands the reader the checkpoint an answer came with. The
//! reader checks it (the signature under the log's key, the policy's
//! quorum, and that it extends the checkpoint remembered for that log: an
//! older or inconsistent one is refused), then proves each entry of the
//! answer against it and hands out entries. Views are rendered from those
//! entries, never from an answer's convenience fields (`pin`, `live_from`,
//! `near_switch`, `latest`, …); a convenience field that disagrees with the
//! proved entries is a verification failure naming the field
//! ([`check_pin`]).
//!
//! "Nothing after" is proved too: [`Anchor::after`] reads every entry from
//! a proved one to the checkpoint's size and checks them against the tree
//! ([`stackpin_core::merkle::verify_range`]), so an answer that says a pin
//! is still live cannot hide the pin that replaced it. Its cost grows with
//! the entries after the pin, not with the log.
//!
//! The log's key comes from `--log-key`, `STACKPIN_LOG_VKEY`, a policy, or
//! what is remembered for the server (`stackpin trust add`, or the first
//! contact verified under a given key). With none, answers are parsed but
//! not proved, and every view says so; `--require-verified` refuses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use stackpin_core::entry::{Entry, PinEntry};
use stackpin_core::merkle::{self, Hash};
use stackpin_core::note::{Checkpoint, NoteVerifier};
use stackpin_core::proof::ProvedEntry;
use stackpin_core::witness::Policy;
use stackpin_proto::v1 as pb;

use crate::client::{Client, Connection};
use crate::exit::{Failure, Outcome};
use crate::freshness::Freshness;
use crate::trust::{KeySource, LogKey};

/// Entries after a proved one from which [`Anchor::after`] shows progress.
const PROGRESS_FROM: u64 = 20_000;

/// How to make answers verifiable, for messages.
pub const HOW_TO_TRUST: &str = "pass --log-key (or set STACKPIN_LOG_VKEY) to the line \
     `stackpin-registry key` prints, or remember it for this server once with `stackpin trust \
     add VKEY`";

/// What the CLI checks a log's answers with.
pub struct Reader {
    key: Option<NoteVerifier>,
    source: Option<KeySource>,
    policy: Option<Policy>,
    state: Option<PathBuf>,
    server: String,
    max_age: Option<Duration>,
}

impl Reader {
    /// The reader for answers from the server of `conn`, with the key and
    /// policy of `args` or the key remembered for that server.
    ///
    /// # Errors
    /// Invalid for a key or policy that does not parse, or `max_age`
    /// without a policy; verification failed (exit 5) when no key is known
    /// and `--require-verified` is set.
    pub fn new(
        args: &LogKey,
        conn: &Connection,
        state: Option<&Path>,
        max_age: Option<Duration>,
    ) -> Outcome<Self> {
        let policy = args.policy()?;
        if policy.is_none() && max_age.is_some() {
            crate::freshness::freshness(None, "", max_age)?;
        }
        let found = crate::trust::find_key(args, &conn.url, state)?;
        if found.is_none() && conn.require_verified {
            return Err(Failure::verify(format!(
                "no log key is known for {}, and --require-verified (STACKPIN_REQUIRE_VERIFIED) \
                 refuses unverified answers: {HOW_TO_TRUST}",
                conn.url
            )));
        }
        let (key, source) = found.map_or((None, None), |(k, s)| (Some(k), Some(s)));
        Ok(Self {
            key,
            source,
            policy,
            state: state.map(Path::to_path_buf),
            server: conn.url.clone(),
            max_age,
        })
    }

    /// Whether answers are proved (a log key is known).
    pub fn verifies(&self) -> bool {
        self.key.is_some()
    }

    /// The log key, when one is known.
    pub fn key(&self) -> Option<&NoteVerifier> {
        self.key.as_ref()
    }

    /// Whether `note` lacks the cosignatures the policy asks for (a
    /// checkpoint is cosigned about a second after its commit, so a
    /// restore asks again for a while).
    pub fn lacks_quorum(&self, note: &str) -> bool {
        self.policy
            .as_ref()
            .is_some_and(|p| p.check_quorum(note).is_err())
    }

    /// Accepts the checkpoint `note` an answer came with: verified and
    /// remembered when a key is known, parsed only (and marked so) when
    /// not.
    ///
    /// # Errors
    /// Verification failed (exit 5) for a bad signature, a missing quorum,
    /// a stale checkpoint (`--max-age`), or one older than or inconsistent
    /// with the one remembered.
    pub async fn anchor(&self, client: &mut Client, note: &str) -> Outcome<Anchor> {
        let Some(key) = &self.key else {
            let cp = stackpin_core::note::split(note)
                .and_then(|(text, _)| Checkpoint::parse(text))
                .map_err(|e| Failure::verify(format!("the answer's checkpoint: {e}")))?;
            return Ok(Anchor {
                checkpoint: cp,
                note: note.to_owned(),
                verified: false,
                fresh: Freshness::default(),
            });
        };
        // The quorum and the age first: a checkpoint that lacks them is
        // never remembered.
        if let Some(policy) = &self.policy {
            policy.check_quorum(note).map_err(Failure::verify)?;
        }
        let fresh = crate::freshness::freshness(self.policy.as_ref(), note, self.max_age)?;
        let cp = crate::trust::accept_checkpoint(client, note, key, self.state.as_deref())
            .await
            .map_err(|f| self.name_remembered_key(f))?;
        if self.source == Some(KeySource::Given)
            && let Some(dir) = &self.state
            && crate::trust::server_key(dir, &self.server)?.is_none()
        {
            crate::trust::remember_server_key(dir, &self.server, key)?;
        }
        Ok(Anchor {
            checkpoint: cp,
            note: note.to_owned(),
            verified: true,
            fresh,
        })
    }

    /// A refusal under a key remembered for the server says so: the key may
    /// be another server's that once answered at the same address.
    fn name_remembered_key(&self, failure: Failure) -> Failure {
        if self.source != Some(KeySource::Remembered) {
            return failure;
        }
        let error = anyhow::anyhow!(
            "{:#} (checked with the log key remembered for {}, see `stackpin trust list`; if \
             that server's log key really changed, confirm the new one with its operator and \
             run `stackpin trust add NEWKEY`)",
            failure.error,
            self.server
        );
        Failure::new(failure.code, error)
    }

    /// The line an unverified view carries (empty when verified).
    pub fn unverified_line(&self) -> String {
        if self.verifies() {
            String::new()
        } else {
            format!(
                "UNVERIFIED nothing above was checked against the log: no log key is known for \
                 {}; {HOW_TO_TRUST}\n",
                self.server
            )
        }
    }
}

/// A checkpoint an answer came with, as accepted by the [`Reader`].
pub struct Anchor {
    pub checkpoint: Checkpoint,
    pub note: String,
    /// False when no log key was known: entries are parsed, not proved.
    pub verified: bool,
    pub fresh: Freshness,
}

/// A log entry proved in an [`Anchor`]'s checkpoint (or only parsed, when
/// the anchor is unverified).
#[derive(Clone, Debug)]
pub struct Proved {
    pub raw: ProvedEntry,
    pub entry: Entry,
    pub leaf: Hash,
}

impl Proved {
    /// The entry's log index.
    pub fn index(&self) -> u64 {
        self.raw.index
    }

    /// The pin this entry is, or a verification failure naming `what`.
    pub fn pin(&self, what: &str) -> Outcome<&PinEntry> {
        match &self.entry {
            Entry::Pin(p) => Ok(p),
            other => Err(Failure::verify(format!(
                "the {what} (log entry {}) is a {} entry, not a pin",
                self.raw.index,
                other.kind()
            ))),
        }
    }
}

impl Anchor {
    /// Proves `e` in the checkpoint and parses it.
    ///
    /// # Errors
    /// Verification failed (exit 5), naming `what`.
    pub fn entry(&self, e: &pb::ProvedEntry, what: &str) -> Outcome<Proved> {
        let proof = crate::trust::hashes(&e.proof, what)?;
        let leaf = merkle::leaf_hash(&e.entry);
        if self.verified {
            merkle::verify_inclusion(
                &leaf,
                e.index,
                self.checkpoint.size,
                &proof,
                &self.checkpoint.root,
            )
            .map_err(|err| {
                Failure::verify(format!(
                    "the {what} (log entry {}) is not in the checkpoint of size {}: {err}",
                    e.index, self.checkpoint.size
                ))
            })?;
        }
        let entry = Entry::parse(e.index, &e.entry)
            .map_err(|err| Failure::verify(format!("the {what} (log entry {}): {err}", e.index)))?;
        Ok(Proved {
            raw: ProvedEntry {
                index: e.index,
                entry: e.entry.clone(),
                proof,
            },
            entry,
            leaf,
        })
    }

    /// As [`Self::entry`], for an entry the answer must carry.
    ///
    /// # Errors
    /// Verification failed when it is missing.
    pub fn required(&self, e: Option<&pb::ProvedEntry>, what: &str) -> Outcome<Proved> {
        let e = e.ok_or_else(|| Failure::verify(format!("the registry sent no {what}")))?;
        self.entry(e, what)
    }

    /// Every pin logged after `first` up to the checkpoint's size whose
    /// environment `wanted` accepts, proved: every entry after `first` is
    /// read and the whole range checked against the tree, so none can be
    /// left out. Nothing is read when the anchor is unverified.
    ///
    /// # Errors
    /// As [`Self::scan`].
    pub async fn after(
        &self,
        client: &mut Client,
        first: &Proved,
        wanted: impl Fn(&PinEntry) -> bool,
    ) -> Outcome<Vec<(u64, PinEntry)>> {
        let mut found = Vec::new();
        if !self.verified {
            return Ok(found);
        }
        self.scan(
            client,
            first,
            "proving the entries after it",
            |index, entry| {
                if let Entry::Pin(p) = entry
                    && wanted(&p)
                {
                    found.push((index, p));
                }
            },
        )
        .await?;
        Ok(found)
    }

    /// Reads every entry after `first` up to the checkpoint's size, hands
    /// each to `visit` in log order, and then checks the whole range
    /// against the tree. What `visit` gathered may be believed only once
    /// this returns `Ok`. Shows progress (as `what`) when the range is long.
    ///
    /// # Errors
    /// Verification failed when the entries do not lead to the
    /// checkpoint's root, or one does not parse; the registry's errors as
    /// they come.
    pub async fn scan(
        &self,
        client: &mut Client,
        first: &Proved,
        what: &str,
        mut visit: impl FnMut(u64, Entry),
    ) -> Outcome {
        let size = self.checkpoint.size;
        let start = first.raw.index + 1;
        if start >= size {
            return Ok(());
        }
        let total = size - start;
        let mut progress =
            (total >= PROGRESS_FROM).then(|| crate::progress::Progress::items(what, Some(total)));
        let mut leaves = Vec::with_capacity(usize::try_from(total + 1).unwrap_or(0));
        leaves.push(first.leaf);
        let mut next = start;
        while next < size {
            let mut stream = client
                .list_entries(pb::ListEntriesRequest {
                    start: next,
                    end: size,
                })
                .await?
                .into_inner();
            let from = next;
            while next < size
                && let Some(e) = stream.message().await?
            {
                if e.index != next {
                    return Err(Failure::verify(format!(
                        "asked for log entry {next}, the registry sent entry {}",
                        e.index
                    )));
                }
                leaves.push(merkle::leaf_hash(&e.entry));
                let entry = Entry::parse(e.index, &e.entry)
                    .map_err(|err| Failure::verify(format!("log entry {}: {err}", e.index)))?;
                visit(e.index, entry);
                next += 1;
                if let Some(p) = progress.as_mut() {
                    p.set(next - start);
                }
            }
            if next == from {
                return Err(Failure::verify(format!(
                    "the registry sent none of the log entries from {next} to {size}, which its \
                     checkpoint covers"
                )));
            }
        }
        if let Some(p) = progress {
            p.finish();
        }
        merkle::verify_range(
            first.raw.index,
            &leaves,
            size,
            &first.raw.proof,
            &self.checkpoint.root,
        )
        .map_err(|e| {
            Failure::verify(format!(
                "the log entries after entry {} are not the ones the checkpoint of size {size} \
                 signs: {e}",
                first.raw.index
            ))
        })
    }

    /// Log entry `index`, fetched and proved in the checkpoint.
    ///
    /// # Errors
    /// As [`Self::entry`]; the registry's errors as they come.
    pub async fn fetch(&self, client: &mut Client, index: u64) -> Outcome<Proved> {
        let entry = client
            .get_entry(pb::GetEntryRequest { index })
            .await?
            .into_inner();
        let proof = client
            .get_inclusion_proof(pb::GetInclusionProofRequest {
                index,
                tree_size: self.checkpoint.size,
            })
            .await?
            .into_inner();
        self.entry(
            &pb::ProvedEntry {
                index,
                entry: entry.entry,
                proof: proof.hashes,
            },
            "entry",
        )
    }
}

/// Checks a convenience field of an answer (`field`, a wire pin) against
/// the proved pin entry it must describe.
///
/// # Errors
/// Verification failed (exit 5), naming the field and what differs.
pub fn check_pin(field: &str, wire: Option<&pb::Pin>, proved: Option<&Proved>) -> Outcome {
    let (wire, proved) = match (wire, proved) {
        (None, None) => return Ok(()),
        (Some(w), Some(p)) => (w, p),
        (Some(w), None) => {
            return Err(Failure::verify(format!(
                "the answer's `{field}` names pin #{} of {} (log index {}), but the registry \
                 sent no proved entry for it",
                w.seq, w.env, w.log_index
            )));
        }
        (None, Some(p)) => {
            return Err(Failure::verify(format!(
                "the answer leaves `{field}` out, but the proved log entry {} is that pin",
                p.index()
            )));
        }
    };
    let pin = proved.pin(field)?;
    let wire_time = |t: Option<&prost_types::Timestamp>| {
        t.and_then(|t| stackpin_proto::convert::instant(t).ok())
    };
    let wire_position = stackpin_proto::convert::position(wire.db_position.as_ref())
        .ok()
        .flatten();
    let differs = [
        ("env", wire.env != pin.env.as_str()),
        ("seq", wire.seq != pin.seq),
        ("release_id", wire.release_id != pin.release_id.as_str()),
        ("digest", wire.digest != pin.digest.to_string()),
        (
            "activated_at",
            wire_time(wire.activated_at.as_ref()) != Some(pin.activated_at),
        ),
        ("log_index", wire.log_index != proved.index()),
        ("entry_hash", wire.entry_hash != proved.leaf.hex()),
        ("db_position", wire_position != pin.db_position),
        (
            "runtime_image",
            wire.runtime_image
                != pin
                    .runtime_image
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
        ),
    ];
    match differs.iter().find(|(_, d)| *d) {
        None => Ok(()),
        Some((name, _)) => Err(Failure::verify(format!(
            "the answer's `{field}.{name}` disagrees with the proved log entry {} (pin #{} of {}, \
             release {}): the registry's summary is not what its log says",
            proved.index(),
            pin.seq,
            pin.env,
            pin.release_id
        ))),
    }
}
