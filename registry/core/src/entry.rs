//! The log's entry types and their exact bytes.
//!
//! Every state change is one entry: a compact JSON document, stored as the
//! exact bytes that were hashed and never re-serialized. Each entry's hash is
//! its RFC 6962 leaf hash, `SHA-256(0x00 || bytes)`, which is also what a
//! pin's `prev_pin` links to. Compact JSON never contains a raw newline,
//! which is what lets one log object hold several entries, one per line
//! (see [`crate::layout`]).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Kind, Result};
use crate::ids::{EnvName, ReleaseId};
use crate::signing::KeyId;
use crate::time::Timestamp;

pub use crate::merkle::leaf_hash;

/// One state change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    /// An artifact was published.
    Publish(PublishEntry),
    /// An artifact went live in an environment.
    Pin(PinEntry),
    /// The set of trusted publisher keys changed.
    Key(KeyEntry),
    /// A database backup exists, paired with the artifact live at the
    /// instant it restores to.
    Snapshot(SnapshotEntry),
    /// A restore test happened, and how it went.
    Drill(DrillEntry),
    /// A standby became the writer: the first entry of a new epoch.
    Promotion(PromotionEntry),
}

/// The first entry of a new epoch of the log (`stackpin-registry
/// promote`): a standby that held the previous epoch as far as
/// `previous` signs became the writer. The entries before this one are
/// exactly the previous epoch's first `previous.size`, so the new epoch's
/// tree starts with the old one's and every proof of an earlier entry
/// holds in both. What the old primary wrote past `previous` is not in
/// the new epoch: the loss window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromotionEntry {
    /// The epoch this entry begins (2 for the first promotion).
    pub epoch: u64,
    /// The previous epoch's signed checkpoint the standby held, whole (with
    /// its cosignatures): its size is this entry's index, its root the
    /// root of the entries before it.
    pub previous: String,
    pub promoted_at: Timestamp,
    /// Who promoted, as the operator named themselves.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl PromotionEntry {
    /// The previous epoch's checkpoint, parsed (its signature unchecked:
    /// see [`crate::note::Checkpoint::open`]).
    ///
    /// # Errors
    /// Invalid when `previous` is no checkpoint note.
    pub fn previous_checkpoint(&self) -> Result<crate::note::Checkpoint> {
        let body = self
            .previous
            .split_once("\n\n")
            .map_or(self.previous.as_str(), |(b, _)| b);
        crate::note::Checkpoint::parse(&format!("{body}\n"))
    }
}

/// A published artifact: the binding of a release id to a digest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublishEntry {
    pub release_id: ReleaseId,
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// The trusted key that verified `envelope` at publish.
    pub key_id: KeyId,
    /// The publisher's DSSE envelope (its signature covers the decoded
    /// payload, so embedding it as JSON keeps it verifiable).
    pub envelope: serde_json::Value,
    pub recorded_at: Timestamp,
    /// Identifies the request that wrote this entry, so a writer whose
    /// storage call timed out can read back and tell whether it landed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The envelope statement's `predicateType`, checked at publish. Entries
    /// written before the registry recorded it have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicate_type: Option<String>,
}

/// An activation of an artifact in an environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinEntry {
    pub env: EnvName,
    /// Per-environment sequence number, contiguous from 1.
    pub seq: u64,
    pub release_id: ReleaseId,
    pub digest: Digest,
    pub activated_at: Timestamp,
    pub recorded_at: Timestamp,
    /// Who asked for the pin, as the registry authenticated them.
    pub actor: String,
    pub reason: String,
    /// Leaf hash (hex) of the environment's previous pin entry; `None` for seq 1.
    pub prev_pin: Option<String>,
    /// The database position at activation, when the pipeline recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_position: Option<crate::position::DbPosition>,
    /// Identifies the request that wrote this entry, so a writer whose
    /// storage call timed out can read back and tell whether it landed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The ObjectOS container image the release runs with, by digest:
    /// a recovery starts this image on this artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_image: Option<crate::ids::ImageRef>,
}

/// What a key entry does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyAction {
    /// Trust the key for publishes logged at or after `at`.
    Add,
    /// Stop trusting the key for publishes logged at or after `at`.
    Revoke,
}

/// A change to the trusted publisher keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyEntry {
    pub action: KeyAction,
    pub key_id: KeyId,
    /// The SPKI PEM public key (for `add`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// `valid_from` for an add, `revoked_at` for a revoke.
    pub at: Timestamp,
    pub recorded_at: Timestamp,
    pub actor: String,
    pub reason: String,
    /// Identifies the request that wrote this entry, so a writer whose
    /// storage call timed out can read back and tell whether it landed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// How a database backup was made (and so how it is restored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    /// A SQLite file (`VACUUM INTO`, the Online Backup API).
    Sqlite,
    /// A PostgreSQL base backup with its WAL archive.
    Postgresql,
    /// A Litestream replica.
    Litestream,
    /// A pgBackRest backup set (PostgreSQL); `location` is
    /// `pgbackrest:STANZA/LABEL`.
    Pgbackrest,
    /// A Barman backup (PostgreSQL); `location` is `barman:SERVER/ID`.
    Barman,
    /// Anything else; `location` says what.
    Other,
}

impl Driver {
    /// Every driver, as written.
    pub const ALL: [Driver; 6] = [
        Driver::Sqlite,
        Driver::Postgresql,
        Driver::Litestream,
        Driver::Pgbackrest,
        Driver::Barman,
        Driver::Other,
    ];

    /// The driver's name, as entries and flags spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Sqlite => "sqlite",
            Driver::Postgresql => "postgresql",
            Driver::Litestream => "litestream",
            Driver::Pgbackrest => "pgbackrest",
            Driver::Barman => "barman",
            Driver::Other => "other",
        }
    }
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Driver {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|d| d.as_str() == text)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "driver {} is not one of sqlite, postgresql, litestream, pgbackrest, barman, other",
                    crate::error::shown(text)
                ))
            })
    }
}

/// The pin live in an environment at an instant, as the registry found it
/// in its timeline when it recorded a snapshot or a drill (the rules check
/// it against the log, so a client cannot choose it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    /// The pin's per-environment sequence number.
    pub seq: u64,
    pub release_id: ReleaseId,
    pub digest: Digest,
}

/// A database backup: where it is, the instant (and position) it restores
/// to, and the artifact that goes with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    pub env: EnvName,
    pub driver: Driver,
    /// Where the backup is: a URL or a path, as the operator wrote it.
    pub location: String,
    /// The database instant the backup restores to.
    pub db_time: Timestamp,
    /// The database position it restores to, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_position: Option<crate::position::DbPosition>,
    /// Its size in bytes, when the client could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Its SHA-256, when the client could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Digest>,
    /// The pin live at `db_time`.
    pub live: Live,
    pub recorded_at: Timestamp,
    /// Who recorded it, as the registry authenticated them.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// One verification a drill ran on the restored database or artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillCheck {
    /// What was checked: `integrity_check`, a query, `artifact digest`.
    pub name: String,
    pub passed: bool,
    /// What was found (a query's result, a mismatch).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// One timed step of a drill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillStep {
    pub name: String,
    pub millis: u64,
}

/// A restore test: what was restored, what was checked, how long it took
/// and whether it passed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrillEntry {
    pub env: EnvName,
    pub driver: Driver,
    /// The log index of the snapshot entry restored, when the drill
    /// restored a recorded snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<u64>,
    /// The database instant restored to.
    pub target: Timestamp,
    /// The pin live at `target`: the artifact restored with the database.
    pub live: Live,
    pub checks: Vec<DrillCheck>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<DrillStep>,
    /// How long the restore took, start to verified (the measured RTO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_millis: Option<u64>,
    /// How much later the source's newest data was than the restored
    /// database's (the measured RPO), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_millis: Option<u64>,
    pub passed: bool,
    /// Why the drill failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub started_at: Timestamp,
    pub recorded_at: Timestamp,
    /// Who ran it, as the registry authenticated them.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Entry {
    /// The environment the entry is about (publishes and key changes are
    /// about none).
    pub fn env(&self) -> Option<&EnvName> {
        match self {
            Entry::Pin(p) => Some(&p.env),
            Entry::Snapshot(s) => Some(&s.env),
            Entry::Drill(d) => Some(&d.env),
            Entry::Publish(_) | Entry::Key(_) | Entry::Promotion(_) => None,
        }
    }

    /// The id of the request that wrote the entry, when it recorded one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Entry::Publish(p) => p.request_id.as_deref(),
            Entry::Pin(p) => p.request_id.as_deref(),
            Entry::Key(k) => k.request_id.as_deref(),
            Entry::Snapshot(s) => s.request_id.as_deref(),
            Entry::Drill(d) => d.request_id.as_deref(),
            Entry::Promotion(p) => p.request_id.as_deref(),
        }
    }

    /// Serializes a new entry; these bytes are what gets stored and hashed.
    pub fn to_bytes(&self) -> Bytes {
        // Serializing these plain structs cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// The entry's type, as its `type` field spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::Publish(_) => "publish",
            Entry::Pin(_) => "pin",
            Entry::Key(_) => "key",
            Entry::Snapshot(_) => "snapshot",
            Entry::Drill(_) => "drill",
            Entry::Promotion(_) => "promotion",
        }
    }

    /// The kinds of entry there are.
    pub const KINDS: [&'static str; 6] =
        ["publish", "pin", "key", "snapshot", "drill", "promotion"];

    /// Checks that `kind` names a kind of entry (a filter of watches and
    /// webhooks).
    ///
    /// # Errors
    /// Invalid, listing the kinds.
    pub fn check_kind(kind: &str) -> Result<()> {
        if Self::KINDS.contains(&kind) {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "{kind:?} is not an entry type ({})",
                Self::KINDS.join(", ")
            )))
        }
    }

    /// Parses stored entry bytes.
    ///
    /// # Errors
    /// DataLoss when the bytes are not a valid entry.
    pub fn parse(index: u64, bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::new(
                Kind::DataLoss,
                format!("log entry {index} is not a valid entry: {e}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_hash_has_the_rfc6962_prefix() {
        // SHA-256 of the single byte 0x00: the RFC 6962 hash of an empty leaf.
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn entries_parse_back_and_reject_unknown_shapes() {
        let e = Entry::Pin(PinEntry {
            env: "prod".parse().unwrap(),
            seq: 1,
            release_id: "r1".parse().unwrap(),
            digest: Digest::of(b"{}"),
            activated_at: Timestamp::from_micros(1).unwrap(),
            recorded_at: Timestamp::from_micros(2).unwrap(),
            actor: "anonymous".into(),
            reason: String::new(),
            prev_pin: None,
            db_position: None,
            request_id: None,
            runtime_image: None,
        });
        assert_eq!(Entry::parse(0, &e.to_bytes()).unwrap(), e);
        // The fuzz corpus's snapshot and drill seeds are entries as written.
        for seed in [
            &include_bytes!("../../fuzz/corpus/log_entry/snapshot")[..],
            &include_bytes!("../../fuzz/corpus/log_entry/drill")[..],
        ] {
            let entry = Entry::parse(0, seed).unwrap();
            assert_eq!(entry.to_bytes().as_ref(), seed, "{}", entry.kind());
            assert_eq!(entry.env().map(EnvName::as_str), Some("prod"));
        }
        let err = Entry::parse(3, br#"{"type":"delete"}"#).unwrap_err();
        assert_eq!(err.kind(), Kind::DataLoss);
        assert!(err.message().contains("log entry 3"));
    }
}
