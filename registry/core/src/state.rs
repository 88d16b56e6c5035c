//! The one rule set that decides whether an entry may follow the log so far.
//!
//! Long because the rules, the violations they report (with their kinds,
//! reasons and messages) and the overlay state they run over are one
//! statement of the log's rules, read together when a rule changes.
//!
//! The registry applies every entry it is about to append through
//! [`apply`], its index applies every entry it rebuilds from through
//! [`apply`], and the audit (of a live registry, a copied data folder or a
//! bucket) applies every entry it reads through [`apply`]. A rule written
//! here once cannot drift between the writer and its checkers.
//!
//! The state a rule needs is small: per environment its latest pin
//! ([`EnvHead`]), per release id the publish that bound it ([`Release`]),
//! per publisher key its lifecycle ([`KeyRecord`]), and the keys trusted by
//! configuration. Where it is kept is the caller's business ([`State`]): the
//! index keeps it in sled, the audit in memory, and an [`Overlay`] adds the
//! entries accepted into a batch that is not applied yet.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::entry::{
    DrillEntry, Entry, KeyAction, KeyEntry, Live, PinEntry, PromotionEntry, PublishEntry,
    SnapshotEntry,
};
use crate::error::Kind;
use crate::ids::{EnvName, ReleaseId};
use crate::merkle::{self, Hash};
use crate::position::{Lsn, Ordered, Txid};
use crate::signing::{self, KeyId, PUBLISH_PREDICATE, PublicKey, TrustedKeys};
use crate::time::Timestamp;

/// How far in the future of its `recorded_at` a pin may activate, unless
/// configured otherwise: the clocks of a pipeline and the registry may
/// disagree by this much.
pub const DEFAULT_CLOCK_SKEW: std::time::Duration = crate::defaults::CLOCK_SKEW;

/// The settings the rules depend on.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Keys trusted by configuration: valid for publishes from the start of
    /// the log until the log revokes them.
    pub configured: TrustedKeys,
    /// How far after its `recorded_at` a pin may activate.
    pub clock_skew: std::time::Duration,
    /// In-toto predicate types a logged publish may record besides
    /// stackpin's own ([`PUBLISH_PREDICATE`]), as an auditor was told the
    /// registry accepts. `None`: any type the entry records, as long as it
    /// is the one its envelope attests. A registry replays its own log so:
    /// which types it accepts is checked when a publish arrives, and a
    /// setting changed later must not make its log invalid.
    pub predicate_types: Option<Vec<String>>,
}

impl Rules {
    /// Whether a logged publish may record `predicate_type`.
    pub fn accepts_predicate(&self, predicate_type: &str) -> bool {
        self.predicate_types
            .as_ref()
            .is_none_or(|also| signing::is_publish_predicate(predicate_type, also))
    }

    /// Rules trusting `configured` keys, with the default clock skew.
    pub fn new(configured: TrustedKeys) -> Self {
        Self {
            configured,
            clock_skew: DEFAULT_CLOCK_SKEW,
            predicate_types: Some(Vec::new()),
        }
    }

    fn skew_micros(&self) -> i64 {
        i64::try_from(self.clock_skew.as_micros()).unwrap_or(i64::MAX)
    }
}

/// The latest pin of an environment: what the next pin is checked against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvHead {
    pub seq: u64,
    pub activated_at: Timestamp,
    /// Leaf hash of the pin's entry: the next pin's `prev_pin`.
    pub entry_hash: Hash,
    /// The greatest LSN recorded by any pin of the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_lsn: Option<u64>,
    /// The greatest Litestream TXID recorded by any pin of the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_txid: Option<u64>,
    /// The greatest MongoDB oplog timestamp recorded by any pin of the
    /// environment ([`crate::position::OplogTs::value`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_oplog: Option<u64>,
    /// How many of the environment's pins record a database position.
    #[serde(default)]
    pub positioned: u64,
}

impl EnvHead {
    /// The greatest recorded position of the kind of `p`.
    pub fn last(&self, p: Ordered) -> Option<u64> {
        match p {
            Ordered::Lsn(_) => self.last_lsn,
            Ordered::Txid(_) => self.last_txid,
            Ordered::Oplog(_) => self.last_oplog,
        }
    }

    /// The head after `pin` (entry leaf hash `leaf`) follows this one.
    fn after(
        previous: Option<&EnvHead>,
        pin: &PinEntry,
        leaf: &Hash,
        ordered: Option<Ordered>,
    ) -> Self {
        let (mut last_lsn, mut last_txid, mut last_oplog) = previous
            .map_or((None, None, None), |h| {
                (h.last_lsn, h.last_txid, h.last_oplog)
            });
        let positioned =
            previous.map_or(0, |h| h.positioned) + u64::from(pin.db_position.is_some());
        match ordered {
            Some(o @ Ordered::Lsn(_)) => last_lsn = Some(o.value()),
            Some(o @ Ordered::Txid(_)) => last_txid = Some(o.value()),
            Some(o @ Ordered::Oplog(_)) => last_oplog = Some(o.value()),
            None => {}
        }
        EnvHead {
            seq: pin.seq,
            activated_at: pin.activated_at,
            entry_hash: *leaf,
            last_lsn,
            last_txid,
            last_oplog,
            positioned,
        }
    }
}

/// A snapshot entry, as a drill that names it is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRef {
    pub env: EnvName,
    /// The instant it restores to.
    pub db_time: Timestamp,
}

/// Where a release id was bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release {
    /// Log index of the publish entry.
    pub index: u64,
    /// The digest it is bound to.
    pub digest: Digest,
}

/// A publisher key's validity, as the log has shaped it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key_id: KeyId,
    /// SPKI PEM; `None` for a configured key that the log only revoked.
    pub public_key: Option<String>,
    /// From when publishes may use it (`None`: configured, always).
    pub valid_from: Option<Timestamp>,
    /// From when publishes may no longer use it.
    pub revoked_at: Option<Timestamp>,
    /// Log index of the add entry, if the key was added through the log.
    pub added_at_index: Option<u64>,
}

impl KeyRecord {
    /// The record of a key the log has not shaped yet: configured, valid
    /// from the start, never revoked.
    pub fn configured(key_id: &KeyId) -> Self {
        Self {
            key_id: key_id.clone(),
            public_key: None,
            valid_from: None,
            revoked_at: None,
            added_at_index: None,
        }
    }
}

/// Read access to the log so far, as far as the rules need it.
pub trait State {
    /// Why a lookup failed (an index that cannot be read, say).
    type Error;
    /// The latest pin of `env`.
    ///
    /// # Errors
    /// When the state cannot be read.
    fn env_head(&self, env: &EnvName) -> Result<Option<EnvHead>, Self::Error>;
    /// The publish that bound `release_id`.
    ///
    /// # Errors
    /// When the state cannot be read.
    fn release(&self, release_id: &ReleaseId) -> Result<Option<Release>, Self::Error>;
    /// The lifecycle of publisher key `key_id`.
    ///
    /// # Errors
    /// When the state cannot be read.
    fn key(&self, key_id: &KeyId) -> Result<Option<KeyRecord>, Self::Error>;
    /// The pin live in `env` at `at`: of the pins activated at or before
    /// `at`, the latest (the highest sequence number among equal instants),
    /// as `resolve` answers.
    ///
    /// # Errors
    /// When the state cannot be read.
    fn live_at(&self, env: &EnvName, at: Timestamp) -> Result<Option<Live>, Self::Error>;
    /// The snapshot entry at log index `index`, when that entry is one.
    ///
    /// # Errors
    /// When the state cannot be read.
    fn snapshot(&self, index: u64) -> Result<Option<SnapshotRef>, Self::Error>;
}

/// What an accepted entry changes.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A release id is now bound.
    Publish(Release),
    /// An environment has a new latest pin.
    Pin {
        /// The environment's head before this pin.
        previous: Option<EnvHead>,
        /// Its head from this pin on.
        head: EnvHead,
        /// The pin's database position, when it recorded an ordered one.
        position: Option<Ordered>,
    },
    /// A publisher key's lifecycle changed.
    Key(KeyRecord),
    /// A backup was recorded.
    Snapshot(SnapshotRef),
    /// A restore test was recorded.
    Drill,
    /// A new epoch began.
    Promotion,
}

/// An entry [`apply`] accepted.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// Its log index.
    pub index: u64,
    /// The entry, parsed once.
    pub entry: Entry,
    /// Its RFC 6962 leaf hash.
    pub leaf: Hash,
    /// What it changes in the state.
    pub change: Change,
}

/// Why an entry may not follow the log so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The bytes are not a log entry.
    Malformed { index: u64, why: String },
    /// A publish binds a release id that an earlier publish bound.
    ReleaseBound {
        index: u64,
        release_id: ReleaseId,
        first: u64,
        digest: Digest,
    },
    /// A publish's envelope does not verify, or does not sign what the entry says.
    Signature {
        index: u64,
        release_id: ReleaseId,
        why: String,
    },
    /// A publish's envelope attests something other than a publish: its
    /// statement's predicate type is neither stackpin's nor one the rules
    /// accept, or is not the one the entry records.
    PredicateType {
        index: u64,
        release_id: ReleaseId,
        predicate_type: String,
        recorded: Option<String>,
    },
    /// A publish uses a key that is not valid when it is logged.
    KeyNotValid {
        index: u64,
        release_id: ReleaseId,
        key_id: KeyId,
        why: String,
    },
    /// A pin names a release id no earlier entry published.
    Unpublished {
        index: u64,
        env: EnvName,
        release_id: ReleaseId,
    },
    /// A pin names a release with another digest than its publish bound.
    DigestMismatch {
        index: u64,
        release_id: ReleaseId,
        pinned: Digest,
        bound: Digest,
    },
    /// A pin's sequence number is not the next of its environment.
    Sequence {
        index: u64,
        env: EnvName,
        seq: u64,
        expected: u64,
    },
    /// A pin does not carry the hash of its environment's previous pin.
    PreviousPin { index: u64, env: EnvName, seq: u64 },
    /// A pin activates before its environment's latest pin.
    ActivationOrder {
        index: u64,
        env: EnvName,
        at: Timestamp,
        head_seq: u64,
        head_at: Timestamp,
    },
    /// A pin activates further after its `recorded_at` than the skew allows.
    ActivationSkew {
        index: u64,
        at: Timestamp,
        recorded_at: Timestamp,
        skew: std::time::Duration,
    },
    /// A pin records a database position before one already recorded.
    PositionOrder {
        index: u64,
        position: Ordered,
        last: u64,
    },
    /// A key add without a PEM key whose id is the entry's key id.
    KeyMismatch {
        index: u64,
        key_id: KeyId,
        why: String,
    },
    /// A key add for a key the log already added.
    KeyAddedTwice {
        index: u64,
        key_id: KeyId,
        first: Option<u64>,
    },
    /// A key revoke for a key the log already revoked.
    KeyRevokedTwice {
        index: u64,
        key_id: KeyId,
        revoked_at: Timestamp,
    },
    /// A snapshot or drill names an instant at which nothing was live in
    /// its environment.
    NothingLive {
        index: u64,
        env: EnvName,
        at: Timestamp,
    },
    /// A snapshot or drill names another pin than the one live at its
    /// instant.
    LiveMismatch {
        index: u64,
        env: EnvName,
        at: Timestamp,
        named: Box<Live>,
        live: Box<Live>,
    },
    /// A snapshot or drill instant after the entry was recorded, beyond the skew.
    FutureInstant {
        index: u64,
        at: Timestamp,
        recorded_at: Timestamp,
        skew: std::time::Duration,
    },
    /// A drill names a snapshot that is not a snapshot of its environment
    /// at its target.
    SnapshotRef {
        index: u64,
        snapshot: u64,
        why: String,
    },
    /// A drill's verdict contradicts its checks.
    DrillVerdict { index: u64, why: String },
    /// A snapshot or drill records a duration or instant outside the
    /// bounds evidence may have ([`MAX_RECOVERY_MILLIS`],
    /// [`MAX_DRILL_SPAN`]).
    EvidenceRange { index: u64, why: String },
    /// A snapshot or drill records text with a control or bidirectional
    /// formatting character, which would print as something it is not.
    EvidenceText {
        index: u64,
        field: String,
        character: char,
    },
    /// A promotion does not begin the epoch after the one its previous
    /// checkpoint is of, at that checkpoint's size.
    Promotion { index: u64, why: String },
}

/// The longest restore time (RTO) or data loss (RPO) a drill may record:
/// 30 days. Longer is not a measurement but a wrapped or made-up number,
/// which a posture report would otherwise take at its word.
pub const MAX_RECOVERY_MILLIS: u64 = 30 * 24 * 3_600 * 1_000;

/// How long before it is recorded a drill may have started: 30 days.
pub const MAX_DRILL_SPAN: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3_600);

/// The first character of `text` that a terminal or page would not show
/// as itself: a control character (tab and newline allowed only where
/// `multiline`) or a bidirectional formatting character (U+061C,
/// U+200E–U+200F, U+202A–U+202E, U+2066–U+2069).
pub fn unsafe_char(text: &str, multiline: bool) -> Option<char> {
    text.chars().find(|&c| {
        let allowed = multiline && (c == '\n' || c == '\t');
        (c.is_control() && !allowed)
            || matches!(
                c,
                '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
            )
    })
}

/// The machine-readable reasons of the rules, as errors carry them
/// (`google.rpc.ErrorInfo` on the wire) and scripts match them.
pub mod reason {
    pub const MALFORMED_ENTRY: &str = "MALFORMED_ENTRY";
    pub const RELEASE_BOUND: &str = "RELEASE_BOUND";
    pub const BAD_SIGNATURE: &str = "BAD_SIGNATURE";
    pub const PREDICATE_TYPE: &str = crate::error::reason::PREDICATE_TYPE;
    pub const KEY_NOT_VALID: &str = "KEY_NOT_VALID";
    pub const RELEASE_UNPUBLISHED: &str = "RELEASE_UNPUBLISHED";
    pub const DIGEST_MISMATCH: &str = "DIGEST_MISMATCH";
    pub const PIN_SEQUENCE: &str = "PIN_SEQUENCE";
    pub const PIN_CHAIN: &str = "PIN_CHAIN";
    pub const ACTIVATION_ORDER: &str = "ACTIVATION_ORDER";
    pub const ACTIVATION_SKEW: &str = "ACTIVATION_SKEW";
    pub const POSITION_ORDER: &str = "POSITION_ORDER";
    pub const KEY_MISMATCH: &str = "KEY_MISMATCH";
    pub const KEY_ADDED_TWICE: &str = "KEY_ADDED_TWICE";
    pub const KEY_REVOKED_TWICE: &str = "KEY_REVOKED_TWICE";
    pub const NOTHING_LIVE: &str = "NOTHING_LIVE";
    pub const LIVE_MISMATCH: &str = "LIVE_MISMATCH";
    pub const FUTURE_INSTANT: &str = "FUTURE_INSTANT";
    pub const SNAPSHOT_REF: &str = "SNAPSHOT_REF";
    pub const DRILL_VERDICT: &str = "DRILL_VERDICT";
    pub const EVIDENCE_RANGE: &str = "EVIDENCE_RANGE";
    pub const EVIDENCE_TEXT: &str = "EVIDENCE_TEXT";
    pub const PROMOTION: &str = "PROMOTION";
    /// A request id already used for a different request.
    pub const REQUEST_ID_REUSED: &str = "REQUEST_ID_REUSED";
}

/// Every rule's reason and the kind of error a request that breaks it
/// gets: a write-once rule is a conflict, an out-of-order request a
/// precondition, a malformed one invalid.
const RULES: [(&str, Kind); 24] = [
    (reason::PROMOTION, Kind::Invalid),
    (reason::MALFORMED_ENTRY, Kind::Invalid),
    (reason::RELEASE_BOUND, Kind::Conflict),
    (reason::BAD_SIGNATURE, Kind::Invalid),
    (reason::PREDICATE_TYPE, Kind::Invalid),
    (reason::KEY_NOT_VALID, Kind::Precondition),
    (reason::RELEASE_UNPUBLISHED, Kind::NotFound),
    (reason::DIGEST_MISMATCH, Kind::Invalid),
    (reason::PIN_SEQUENCE, Kind::Precondition),
    (reason::PIN_CHAIN, Kind::Precondition),
    (reason::ACTIVATION_ORDER, Kind::Precondition),
    (reason::ACTIVATION_SKEW, Kind::Precondition),
    (reason::POSITION_ORDER, Kind::Precondition),
    (reason::KEY_MISMATCH, Kind::Invalid),
    (reason::KEY_ADDED_TWICE, Kind::Conflict),
    (reason::REQUEST_ID_REUSED, Kind::Conflict),
    (reason::KEY_REVOKED_TWICE, Kind::Conflict),
    (reason::NOTHING_LIVE, Kind::Precondition),
    (reason::LIVE_MISMATCH, Kind::Invalid),
    (reason::FUTURE_INSTANT, Kind::Precondition),
    (reason::SNAPSHOT_REF, Kind::Invalid),
    (reason::DRILL_VERDICT, Kind::Invalid),
    (reason::EVIDENCE_RANGE, Kind::Invalid),
    (reason::EVIDENCE_TEXT, Kind::Invalid),
];

/// The reason of every rule, as errors carry them.
pub fn reasons() -> impl Iterator<Item = &'static str> {
    RULES.iter().map(|(r, _)| *r)
}

/// Whether `reason` names one of the log's rules.
pub fn is_rule(reason: &str) -> bool {
    rule_kind(reason).is_some()
}

/// The kind a request is told for the rule named `reason`.
fn rule_kind(reason: &str) -> Option<Kind> {
    RULES.iter().find(|(r, _)| *r == reason).map(|(_, k)| *k)
}

/// The kind a machine-readable reason stands for: a kind's own reason
/// ([`Kind::reason`]), or the reason of a rule of the log as a request that
/// broke it is told. `None` for a reason this version does not know.
pub fn kind_of_reason(reason: &str) -> Option<Kind> {
    Kind::ALL
        .into_iter()
        .find(|k| k.reason() == reason)
        .or_else(|| rule_kind(reason))
}

impl Violation {
    /// The log index of the entry refused.
    pub fn index(&self) -> u64 {
        match self {
            Violation::Malformed { index, .. }
            | Violation::ReleaseBound { index, .. }
            | Violation::Signature { index, .. }
            | Violation::PredicateType { index, .. }
            | Violation::KeyNotValid { index, .. }
            | Violation::Unpublished { index, .. }
            | Violation::DigestMismatch { index, .. }
            | Violation::Sequence { index, .. }
            | Violation::PreviousPin { index, .. }
            | Violation::ActivationOrder { index, .. }
            | Violation::ActivationSkew { index, .. }
            | Violation::PositionOrder { index, .. }
            | Violation::KeyMismatch { index, .. }
            | Violation::KeyAddedTwice { index, .. }
            | Violation::KeyRevokedTwice { index, .. }
            | Violation::NothingLive { index, .. }
            | Violation::LiveMismatch { index, .. }
            | Violation::FutureInstant { index, .. }
            | Violation::SnapshotRef { index, .. }
            | Violation::DrillVerdict { index, .. }
            | Violation::EvidenceRange { index, .. }
            | Violation::EvidenceText { index, .. }
            | Violation::Promotion { index, .. } => *index,
        }
    }

    /// A stable, machine-readable name of the rule broken (for error
    /// details and scripts).
    pub fn reason(&self) -> &'static str {
        match self {
            Violation::Malformed { .. } => reason::MALFORMED_ENTRY,
            Violation::ReleaseBound { .. } => reason::RELEASE_BOUND,
            Violation::Signature { .. } => reason::BAD_SIGNATURE,
            Violation::PredicateType { .. } => reason::PREDICATE_TYPE,
            Violation::KeyNotValid { .. } => reason::KEY_NOT_VALID,
            Violation::Unpublished { .. } => reason::RELEASE_UNPUBLISHED,
            Violation::DigestMismatch { .. } => reason::DIGEST_MISMATCH,
            Violation::Sequence { .. } => reason::PIN_SEQUENCE,
            Violation::PreviousPin { .. } => reason::PIN_CHAIN,
            Violation::ActivationOrder { .. } => reason::ACTIVATION_ORDER,
            Violation::ActivationSkew { .. } => reason::ACTIVATION_SKEW,
            Violation::PositionOrder { .. } => reason::POSITION_ORDER,
            Violation::KeyMismatch { .. } => reason::KEY_MISMATCH,
            Violation::KeyAddedTwice { .. } => reason::KEY_ADDED_TWICE,
            Violation::KeyRevokedTwice { .. } => reason::KEY_REVOKED_TWICE,
            Violation::NothingLive { .. } => reason::NOTHING_LIVE,
            Violation::LiveMismatch { .. } => reason::LIVE_MISMATCH,
            Violation::FutureInstant { .. } => reason::FUTURE_INSTANT,
            Violation::SnapshotRef { .. } => reason::SNAPSHOT_REF,
            Violation::DrillVerdict { .. } => reason::DRILL_VERDICT,
            Violation::EvidenceRange { .. } => reason::EVIDENCE_RANGE,
            Violation::EvidenceText { .. } => reason::EVIDENCE_TEXT,
            Violation::Promotion { .. } => reason::PROMOTION,
        }
    }

    /// The error a request that would write this entry gets: the rule's
    /// kind and reason, and what to do about it.
    pub fn to_error(&self) -> crate::Error {
        crate::Error::new(self.kind(), self.to_string()).with_reason(self.reason())
    }

    /// What a request that would write this entry is told: the kind of
    /// error it gets.
    pub fn kind(&self) -> Kind {
        match self {
            Violation::Malformed { .. }
            | Violation::Signature { .. }
            | Violation::PredicateType { .. }
            | Violation::DigestMismatch { .. }
            | Violation::KeyMismatch { .. }
            | Violation::LiveMismatch { .. }
            | Violation::SnapshotRef { .. }
            | Violation::DrillVerdict { .. }
            | Violation::EvidenceRange { .. }
            | Violation::EvidenceText { .. }
            | Violation::Promotion { .. } => Kind::Invalid,
            Violation::ReleaseBound { .. }
            | Violation::KeyAddedTwice { .. }
            | Violation::KeyRevokedTwice { .. } => Kind::Conflict,
            Violation::KeyNotValid { .. }
            | Violation::Sequence { .. }
            | Violation::PreviousPin { .. }
            | Violation::ActivationOrder { .. }
            | Violation::ActivationSkew { .. }
            | Violation::PositionOrder { .. }
            | Violation::NothingLive { .. }
            | Violation::FutureInstant { .. } => Kind::Precondition,
            Violation::Unpublished { .. } => Kind::NotFound,
        }
    }

    /// Whether the violation breaks an environment's pin chain (sequence,
    /// link, order): what the audit reports as a timeline failure.
    pub fn is_timeline(&self) -> bool {
        matches!(
            self,
            Violation::ReleaseBound { .. }
                | Violation::Unpublished { .. }
                | Violation::DigestMismatch { .. }
                | Violation::Sequence { .. }
                | Violation::PreviousPin { .. }
                | Violation::ActivationOrder { .. }
                | Violation::ActivationSkew { .. }
                | Violation::PositionOrder { .. }
        )
    }

    /// Whether the violation is about a snapshot or drill entry: the
    /// evidence that restores were made and tested.
    pub fn is_evidence(&self) -> bool {
        matches!(
            self,
            Violation::NothingLive { .. }
                | Violation::LiveMismatch { .. }
                | Violation::FutureInstant { .. }
                | Violation::SnapshotRef { .. }
                | Violation::DrillVerdict { .. }
                | Violation::EvidenceRange { .. }
                | Violation::EvidenceText { .. }
        )
    }

    /// Whether the violation is about a publisher signature or key.
    pub fn is_signature(&self) -> bool {
        matches!(
            self,
            Violation::Signature { .. }
                | Violation::PredicateType { .. }
                | Violation::KeyNotValid { .. }
        )
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Malformed { index: _, why } => {
                write!(f, "not a valid entry: {why}")
            }
            Violation::ReleaseBound {
                index: _,
                release_id,
                first,
                digest,
            } => write!(
                f,
                "release id {release_id} is already bound to {digest} (entry {first}); release ids are write-once"
            ),
            Violation::Signature {
                index: _,
                release_id,
                why,
            } => {
                write!(f, "{release_id}: {why}")
            }
            Violation::PredicateType {
                index: _,
                release_id,
                predicate_type,
                recorded: Some(recorded),
            } if recorded != predicate_type => write!(
                f,
                "{release_id}: the entry records predicate type {recorded:?} but its envelope \
                 attests {predicate_type:?}"
            ),
            Violation::PredicateType {
                index: _,
                release_id,
                predicate_type,
                recorded: _,
            } => write!(
                f,
                "{release_id}: the envelope's in-toto statement has predicateType \
                 {predicate_type:?}, which is not a publish: sign the statement `stackpin \
                 publish` writes (predicateType {PUBLISH_PREDICATE:?}), or list this type in the \
                 registry's accepted_predicate_types setting"
            ),
            Violation::KeyNotValid {
                index: _,
                release_id,
                key_id,
                why,
            } => {
                write!(f, "{release_id}: publisher key {key_id} {why}")
            }
            Violation::Unpublished {
                index: _,
                env,
                release_id,
            } => write!(
                f,
                "a pin of {env} names release {release_id}, which is not published"
            ),
            Violation::DigestMismatch {
                index: _,
                release_id,
                pinned,
                bound,
            } => write!(
                f,
                "a pin names release {release_id} as {pinned}, but it is bound to {bound}"
            ),
            Violation::Sequence {
                index: _,
                env,
                seq,
                expected,
            } => write!(
                f,
                "pin #{seq} of {env} should be #{expected}: the pin chain is broken"
            ),
            Violation::PreviousPin { index: _, env, seq } => write!(
                f,
                "pin #{seq} of {env} does not carry the previous pin's hash: the pin chain is broken"
            ),
            Violation::ActivationOrder {
                index: _,
                env,
                at,
                head_seq,
                head_at,
            } => write!(
                f,
                "activation {at} is before the latest pin of {env} (#{head_seq} at {head_at}); \
                 activations in an environment never go back in time (to roll back, pin the older release now)"
            ),
            Violation::ActivationSkew {
                index: _,
                at,
                recorded_at,
                skew,
            } => write!(
                f,
                "activation {at} is in the future: the registry's clock read {recorded_at} and \
                 allows at most {}s of skew",
                skew.as_secs_f64()
            ),
            Violation::PositionOrder {
                index: _,
                position,
                last,
            } => {
                let last = match position {
                    Ordered::Lsn(_) => Lsn(*last).to_string(),
                    Ordered::Txid(_) => Txid(*last).to_string(),
                    Ordered::Oplog(_) => crate::position::OplogTs::from_value(*last).to_string(),
                };
                let kind = position.kind();
                write!(
                    f,
                    "{kind} {position} is before the environment's latest recorded {kind} {last}; \
                     database positions in an environment never go backwards"
                )
            }
            Violation::KeyMismatch {
                index: _,
                key_id,
                why,
            } => {
                write!(f, "key add for {key_id} carries no matching key: {why}")
            }
            Violation::KeyAddedTwice {
                index: _,
                key_id,
                first,
            } => match first {
                Some(first) => write!(
                    f,
                    "publisher key {key_id} is already known (added at entry {first}); a revoked key cannot be added again"
                ),
                None => write!(
                    f,
                    "publisher key {key_id} is already known; a revoked key cannot be added again"
                ),
            },
            Violation::KeyRevokedTwice {
                index: _,
                key_id,
                revoked_at,
            } => write!(
                f,
                "publisher key {key_id} was already revoked at {revoked_at}"
            ),
            Violation::NothingLive { index: _, env, at } => write!(
                f,
                "nothing was live in {env} at {at}: a backup or drill pairs a database \
                 instant with the artifact pinned then, so pin first or name a later instant"
            ),
            Violation::LiveMismatch {
                index: _,
                env,
                at,
                named,
                live,
            } => write!(
                f,
                "the entry names pin #{} ({}) as live in {env} at {at}, but pin #{} ({}) was",
                named.seq, named.release_id, live.seq, live.release_id
            ),
            Violation::FutureInstant {
                index: _,
                at,
                recorded_at,
                skew,
            } => write!(
                f,
                "instant {at} is in the future: the registry's clock read {recorded_at} and \
                 allows at most {}s of skew",
                skew.as_secs_f64()
            ),
            Violation::SnapshotRef {
                index: _,
                snapshot,
                why,
            } => write!(f, "the drill names snapshot entry {snapshot}, which {why}"),
            Violation::DrillVerdict { index: _, why } => {
                write!(f, "the drill's verdict contradicts its checks: {why}")
            }
            Violation::Promotion { index: _, why } => {
                write!(f, "the promotion is not the next epoch's start: {why}")
            }
            Violation::EvidenceRange { index: _, why } => {
                write!(f, "the evidence is out of range: {why}")
            }
            Violation::EvidenceText {
                index: _,
                field,
                character,
            } => write!(
                f,
                "{field} holds the character U+{:04X}, a control or bidirectional formatting \
                 character that would print as something it is not",
                u32::from(*character)
            ),
        }
    }
}

impl std::error::Error for Violation {}

/// Why [`apply`] did not accept an entry: the entry breaks a rule, or the
/// state could not be read.
#[derive(Debug)]
pub enum Refused<E> {
    Violation(Violation),
    State(E),
}

impl<E> From<Violation> for Refused<E> {
    fn from(v: Violation) -> Self {
        Refused::Violation(v)
    }
}

/// Decides whether `bytes` may be entry `index` of a log whose state so far
/// is `state`, and what it changes.
///
/// # Errors
/// `Refused::Violation` naming the rule the entry breaks, or
/// `Refused::State` when `state` fails.
pub fn apply<S: State>(
    state: &S,
    rules: &Rules,
    index: u64,
    bytes: &[u8],
) -> Result<Applied, Refused<S::Error>> {
    let entry: Entry = serde_json::from_slice(bytes).map_err(|e| Violation::Malformed {
        index,
        why: e.to_string(),
    })?;
    let leaf = merkle::leaf_hash(bytes);
    let change = match &entry {
        Entry::Publish(p) => publish(state, rules, index, p)?,
        Entry::Pin(p) => pin(state, rules, index, p, &leaf)?,
        Entry::Key(k) => key(state, index, k)?,
        Entry::Snapshot(snap) => snapshot(state, rules, index, snap)?,
        Entry::Drill(d) => drill(state, rules, index, d)?,
        Entry::Promotion(p) => promotion(index, p)?,
    };
    Ok(Applied {
        index,
        entry,
        leaf,
        change,
    })
}

fn publish<S: State>(
    state: &S,
    rules: &Rules,
    index: u64,
    p: &PublishEntry,
) -> Result<Change, Refused<S::Error>> {
    if let Some(first) = state.release(&p.release_id).map_err(Refused::State)? {
        return Err(Violation::ReleaseBound {
            index,
            release_id: p.release_id.clone(),
            first: first.index,
            digest: first.digest,
        }
        .into());
    }
    let record = state.key(&p.key_id).map_err(Refused::State)?;
    let key = key_valid_at(rules, &p.key_id, record.as_ref(), p.recorded_at).map_err(|why| {
        Violation::KeyNotValid {
            index,
            release_id: p.release_id.clone(),
            key_id: p.key_id.clone(),
            why,
        }
    })?;
    let signature = |why: String| Violation::Signature {
        index,
        release_id: p.release_id.clone(),
        why,
    };
    let att = signing::verify_logged_envelope(&p.envelope, &TrustedKeys::new([key]))
        .map_err(|e| signature(e.to_string()))?;
    if att.release_id != p.release_id || att.digest != p.digest || att.key_id != p.key_id {
        return Err(signature(format!(
            "the signed statement ({} {}, key {}) does not match the entry",
            att.release_id, att.digest, att.key_id
        ))
        .into());
    }
    // Publishes logged before entries recorded their predicate type keep
    // auditing as they did; from the entry that records one on, the type
    // must be the envelope's and one that means "publish".
    if let Some(recorded) = &p.predicate_type
        && (recorded != &att.predicate_type || !rules.accepts_predicate(recorded))
    {
        return Err(Violation::PredicateType {
            index,
            release_id: p.release_id.clone(),
            predicate_type: att.predicate_type,
            recorded: Some(recorded.clone()),
        }
        .into());
    }
    Ok(Change::Publish(Release {
        index,
        digest: p.digest,
    }))
}

/// The public key of `key_id` when it may sign a publish logged at `at`:
/// a configured key until the log revokes it, a key the log added from its
/// `valid_from` until its revocation.
///
/// # Errors
/// Why the key may not sign then, as a phrase following the key's name.
pub fn key_valid_at(
    rules: &Rules,
    key_id: &KeyId,
    record: Option<&KeyRecord>,
    at: Timestamp,
) -> Result<PublicKey, String> {
    let configured = rules.configured.keys().iter().find(|k| k.id() == key_id);
    let key = match (record, configured) {
        (_, Some(k)) => k.clone(),
        (Some(r), None) => match r.public_key.as_deref().map(PublicKey::from_pem) {
            Some(Ok(k)) => k,
            _ => return Err("is not trusted (no key was added for it)".into()),
        },
        (None, None) => {
            return Err("is not trusted (neither configured nor added by the log)".into());
        }
    };
    if let Some(r) = record {
        if configured.is_none() && r.valid_from.is_none_or(|from| at < from) {
            let from = r
                .valid_from
                .map_or_else(|| "never".to_owned(), |f| f.to_string());
            return Err(format!("was not yet valid at {at} (valid from {from})"));
        }
        if let Some(revoked) = r.revoked_at
            && at >= revoked
        {
            return Err(format!(
                "is no longer trusted (revoked at {revoked}; the publish is logged at {at})"
            ));
        }
    }
    Ok(key)
}

/// Every key that may sign a publish logged at `at`, given the log's key
/// records.
pub fn valid_keys(rules: &Rules, records: &[KeyRecord], at: Timestamp) -> TrustedKeys {
    let configured = rules.configured.keys().iter().map(|k| {
        let record = records.iter().find(|r| &r.key_id == k.id());
        key_valid_at(rules, k.id(), record, at)
    });
    let logged = records
        .iter()
        .filter(|r| !rules.configured.keys().iter().any(|k| k.id() == &r.key_id))
        .map(|r| key_valid_at(rules, &r.key_id, Some(r), at));
    TrustedKeys::new(configured.chain(logged).filter_map(Result::ok))
}

fn pin<S: State>(
    state: &S,
    rules: &Rules,
    index: u64,
    p: &PinEntry,
    leaf: &Hash,
) -> Result<Change, Refused<S::Error>> {
    let head = state.env_head(&p.env).map_err(Refused::State)?;
    let (expected, expected_prev) = match &head {
        None => (1, None),
        Some(h) => (h.seq + 1, Some(h.entry_hash.hex())),
    };
    if p.seq != expected {
        return Err(Violation::Sequence {
            index,
            env: p.env.clone(),
            seq: p.seq,
            expected,
        }
        .into());
    }
    if p.prev_pin != expected_prev {
        return Err(Violation::PreviousPin {
            index,
            env: p.env.clone(),
            seq: p.seq,
        }
        .into());
    }
    if let Some(h) = &head
        && p.activated_at < h.activated_at
    {
        return Err(Violation::ActivationOrder {
            index,
            env: p.env.clone(),
            at: p.activated_at,
            head_seq: h.seq,
            head_at: h.activated_at,
        }
        .into());
    }
    if p.activated_at > p.recorded_at.saturating_add_micros(rules.skew_micros()) {
        return Err(Violation::ActivationSkew {
            index,
            at: p.activated_at,
            recorded_at: p.recorded_at,
            skew: rules.clock_skew,
        }
        .into());
    }
    let ordered = match &p.db_position {
        Some(pos) => pos.ordered().map_err(|e| Violation::Malformed {
            index,
            why: e.to_string(),
        })?,
        None => None,
    };
    if let (Some(o), Some(h)) = (ordered, &head)
        && let Some(last) = h.last(o)
        && o.value() < last
    {
        return Err(Violation::PositionOrder {
            index,
            position: o,
            last,
        }
        .into());
    }
    match state.release(&p.release_id).map_err(Refused::State)? {
        None => {
            return Err(Violation::Unpublished {
                index,
                env: p.env.clone(),
                release_id: p.release_id.clone(),
            }
            .into());
        }
        Some(r) if r.digest != p.digest => {
            return Err(Violation::DigestMismatch {
                index,
                release_id: p.release_id.clone(),
                pinned: p.digest,
                bound: r.digest,
            }
            .into());
        }
        Some(_) => {}
    }
    let new_head = EnvHead::after(head.as_ref(), p, leaf, ordered);
    Ok(Change::Pin {
        previous: head,
        head: new_head,
        position: ordered,
    })
}

fn key<S: State>(state: &S, index: u64, k: &KeyEntry) -> Result<Change, Refused<S::Error>> {
    let existing = state.key(&k.key_id).map_err(Refused::State)?;
    let record = match k.action {
        KeyAction::Add => {
            if let Some(e) = &existing {
                return Err(Violation::KeyAddedTwice {
                    index,
                    key_id: k.key_id.clone(),
                    first: e.added_at_index,
                }
                .into());
            }
            let mismatch = |why: String| Violation::KeyMismatch {
                index,
                key_id: k.key_id.clone(),
                why,
            };
            let Some(pem) = &k.public_key else {
                return Err(mismatch("the entry holds no public key".into()).into());
            };
            let key = PublicKey::from_pem(pem).map_err(|e| mismatch(e.to_string()))?;
            if key.id() != &k.key_id {
                return Err(mismatch(format!("the PEM key's id is {}", key.id())).into());
            }
            KeyRecord {
                key_id: k.key_id.clone(),
                public_key: Some(pem.clone()),
                valid_from: Some(k.at),
                revoked_at: None,
                added_at_index: Some(index),
            }
        }
        KeyAction::Revoke => {
            if let Some(revoked_at) = existing.as_ref().and_then(|e| e.revoked_at) {
                return Err(Violation::KeyRevokedTwice {
                    index,
                    key_id: k.key_id.clone(),
                    revoked_at,
                }
                .into());
            }
            let mut rec = existing.unwrap_or_else(|| KeyRecord::configured(&k.key_id));
            rec.revoked_at = Some(k.at);
            rec
        }
    };
    Ok(Change::Key(record))
}

/// Checks that `named` is the pin live in `env` at `at`, and that `at` is
/// not after `recorded_at` beyond the skew.
fn check_live<S: State>(
    state: &S,
    rules: &Rules,
    index: u64,
    env: &EnvName,
    (at, recorded_at): (Timestamp, Timestamp),
    named: &Live,
) -> Result<(), Refused<S::Error>> {
    if at > recorded_at.saturating_add_micros(rules.skew_micros()) {
        return Err(Violation::FutureInstant {
            index,
            at,
            recorded_at,
            skew: rules.clock_skew,
        }
        .into());
    }
    match state.live_at(env, at).map_err(Refused::State)? {
        None => Err(Violation::NothingLive {
            index,
            env: env.clone(),
            at,
        }
        .into()),
        Some(live) if &live != named => Err(Violation::LiveMismatch {
            index,
            env: env.clone(),
            at,
            named: Box::new(named.clone()),
            live: Box::new(live),
        }
        .into()),
        Some(_) => Ok(()),
    }
}

fn snapshot<S: State>(
    state: &S,
    rules: &Rules,
    index: u64,
    s: &SnapshotEntry,
) -> Result<Change, Refused<S::Error>> {
    check_text(index, [("location", s.location.as_str(), false)])?;
    if let Some(pos) = &s.db_position {
        pos.ordered().map_err(|e| Violation::Malformed {
            index,
            why: e.to_string(),
        })?;
    }
    check_live(
        state,
        rules,
        index,
        &s.env,
        (s.db_time, s.recorded_at),
        &s.live,
    )?;
    Ok(Change::Snapshot(SnapshotRef {
        env: s.env.clone(),
        db_time: s.db_time,
    }))
}

/// A promotion begins the epoch after its previous checkpoint's, at that
/// checkpoint's size. That the checkpoint is signed by the log key and its
/// root is the root of the entries before this one is checked where the
/// key and the tree are at hand: by `promote` as it writes it, by the
/// audit, and by a client following the log across it.
fn promotion<E>(index: u64, p: &PromotionEntry) -> Result<Change, Refused<E>> {
    let why = |why: String| Violation::Promotion { index, why };
    let previous = p
        .previous_checkpoint()
        .map_err(|e| why(format!("its previous checkpoint: {e}")))?;
    if previous.size != index {
        return Err(why(format!(
            "its previous checkpoint signs {} entries, but it is entry {index}",
            previous.size
        ))
        .into());
    }
    if p.epoch != previous.epoch() + 1 {
        return Err(why(format!(
            "it begins epoch {}, but its previous checkpoint is of epoch {}",
            p.epoch,
            previous.epoch()
        ))
        .into());
    }
    if let Some(c) = unsafe_char(&p.actor, false) {
        return Err(Violation::EvidenceText {
            index,
            field: "actor".into(),
            character: c,
        }
        .into());
    }
    Ok(Change::Promotion)
}

fn drill<S: State>(
    state: &S,
    rules: &Rules,
    index: u64,
    d: &DrillEntry,
) -> Result<Change, Refused<S::Error>> {
    let verdict = |why: &str| Violation::DrillVerdict {
        index,
        why: why.to_owned(),
    };
    let failed_check = d.checks.iter().any(|c| !c.passed);
    if d.passed && failed_check {
        return Err(verdict("it passed, yet a check failed").into());
    }
    if d.passed && d.failure.is_some() {
        return Err(verdict("it passed, yet it records why it failed").into());
    }
    if !d.passed && !failed_check && d.failure.is_none() {
        return Err(verdict("it failed, yet no check failed and no reason is given").into());
    }
    if d.passed && d.checks.is_empty() {
        return Err(verdict("it passed, yet it ran no checks").into());
    }
    check_text(
        index,
        d.checks
            .iter()
            .flat_map(|c| {
                [
                    ("a check's name", c.name.as_str(), false),
                    ("a check's detail", c.detail.as_str(), true),
                ]
            })
            .chain(
                d.steps
                    .iter()
                    .map(|s| ("a step's name", s.name.as_str(), false)),
            )
            .chain(d.failure.iter().map(|f| ("the failure", f.as_str(), true))),
    )?;
    let range = |why: String| Violation::EvidenceRange { index, why };
    for (what, millis) in [("rto_millis", d.rto_millis), ("rpo_millis", d.rpo_millis)] {
        if let Some(ms) = millis.filter(|ms| *ms > MAX_RECOVERY_MILLIS) {
            return Err(range(format!(
                "{what} is {ms}, more than {MAX_RECOVERY_MILLIS} (30 days)"
            ))
            .into());
        }
    }
    let span = i64::try_from(MAX_DRILL_SPAN.as_micros()).unwrap_or(i64::MAX);
    if d.started_at < d.recorded_at.saturating_add_micros(-span) {
        return Err(range(format!(
            "it started at {}, more than 30 days before it was recorded ({})",
            d.started_at, d.recorded_at
        ))
        .into());
    }

    if let Some(at) = d.snapshot {
        let bad = |why: String| Violation::SnapshotRef {
            index,
            snapshot: at,
            why,
        };
        if at >= index {
            return Err(bad("is not an earlier entry".into()).into());
        }
        match state.snapshot(at).map_err(Refused::State)? {
            None => return Err(bad("is not a snapshot".into()).into()),
            Some(r) if r.env != d.env => {
                return Err(bad(format!("is a snapshot of {}, not {}", r.env, d.env)).into());
            }
            Some(r) if r.db_time != d.target => {
                return Err(bad(format!(
                    "restores to {}, not to the drill's target {}",
                    r.db_time, d.target
                ))
                .into());
            }
            Some(_) => {}
        }
    }
    check_live(
        state,
        rules,
        index,
        &d.env,
        (d.target, d.recorded_at),
        &d.live,
    )?;
    if d.started_at > d.recorded_at.saturating_add_micros(rules.skew_micros()) {
        return Err(Violation::FutureInstant {
            index,
            at: d.started_at,
            recorded_at: d.recorded_at,
            skew: rules.clock_skew,
        }
        .into());
    }
    Ok(Change::Drill)
}

/// Refuses the first of `texts` (what it is, the text, whether it may hold
/// several lines) with a character [`unsafe_char`] finds.
fn check_text<'a>(
    index: u64,
    texts: impl IntoIterator<Item = (&'a str, &'a str, bool)>,
) -> Result<(), Violation> {
    for (field, text, multiline) in texts {
        if let Some(character) = unsafe_char(text, multiline) {
            return Err(Violation::EvidenceText {
                index,
                field: field.to_owned(),
                character,
            });
        }
    }
    Ok(())
}

/// The state of a base plus the entries accepted on top of it but not yet
/// in the base: a batch being built, or (over [`Empty`]) a whole log held
/// in memory.
pub struct Overlay<'a, S> {
    base: &'a S,
    envs: HashMap<EnvName, EnvHead>,
    releases: HashMap<ReleaseId, Release>,
    keys: HashMap<KeyId, KeyRecord>,
    /// The pins accepted on top of the base, per environment, in order:
    /// what [`State::live_at`] answers from before asking the base.
    pins: HashMap<EnvName, Vec<(Timestamp, Live)>>,
    snapshots: HashMap<u64, SnapshotRef>,
}

impl<'a, S: State> Overlay<'a, S> {
    /// No entries on top of `base` yet.
    pub fn new(base: &'a S) -> Self {
        Self {
            base,
            envs: HashMap::new(),
            releases: HashMap::new(),
            keys: HashMap::new(),
            pins: HashMap::new(),
            snapshots: HashMap::new(),
        }
    }

    /// Takes an accepted entry's change into account.
    pub fn absorb(&mut self, applied: &Applied) {
        match (&applied.change, &applied.entry) {
            (Change::Publish(r), Entry::Publish(p)) => {
                self.releases.insert(p.release_id.clone(), *r);
            }
            (Change::Pin { head, .. }, Entry::Pin(p)) => {
                self.envs.insert(p.env.clone(), head.clone());
                self.pins.entry(p.env.clone()).or_default().push((
                    p.activated_at,
                    Live {
                        seq: p.seq,
                        release_id: p.release_id.clone(),
                        digest: p.digest,
                    },
                ));
            }
            (Change::Key(k), _) => {
                self.keys.insert(k.key_id.clone(), k.clone());
            }
            (Change::Snapshot(r), _) => {
                self.snapshots.insert(applied.index, r.clone());
            }
            _ => {}
        }
    }

    /// Applies `bytes` as entry `index` and, when accepted, absorbs it.
    ///
    /// # Errors
    /// As [`apply`].
    pub fn apply(
        &mut self,
        rules: &Rules,
        index: u64,
        bytes: &[u8],
    ) -> Result<Applied, Refused<S::Error>> {
        let applied = apply(self, rules, index, bytes)?;
        self.absorb(&applied);
        Ok(applied)
    }

    /// Every environment with a pin in the overlay.
    pub fn environments(&self) -> usize {
        self.envs.len()
    }

    /// Every key record changed in the overlay.
    pub fn keys(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.values()
    }
}

impl<S: State> State for Overlay<'_, S> {
    type Error = S::Error;

    fn env_head(&self, env: &EnvName) -> Result<Option<EnvHead>, S::Error> {
        match self.envs.get(env) {
            Some(h) => Ok(Some(h.clone())),
            None => self.base.env_head(env),
        }
    }

    fn release(&self, release_id: &ReleaseId) -> Result<Option<Release>, S::Error> {
        match self.releases.get(release_id) {
            Some(r) => Ok(Some(*r)),
            None => self.base.release(release_id),
        }
    }

    fn key(&self, key_id: &KeyId) -> Result<Option<KeyRecord>, S::Error> {
        match self.keys.get(key_id) {
            Some(k) => Ok(Some(k.clone())),
            None => self.base.key(key_id),
        }
    }

    fn live_at(&self, env: &EnvName, at: Timestamp) -> Result<Option<Live>, S::Error> {
        // Pins activate in order, so the overlay's pins all follow the
        // base's: when one of them is at or before `at`, it is the answer.
        if let Some(pins) = self.pins.get(env) {
            let after = pins.partition_point(|(t, _)| *t <= at);
            if after > 0 {
                return Ok(Some(pins[after - 1].1.clone()));
            }
        }
        self.base.live_at(env, at)
    }

    fn snapshot(&self, index: u64) -> Result<Option<SnapshotRef>, S::Error> {
        match self.snapshots.get(&index) {
            Some(r) => Ok(Some(r.clone())),
            None => self.base.snapshot(index),
        }
    }
}

/// The state of an empty log.
pub struct Empty;

impl State for Empty {
    type Error = std::convert::Infallible;

    fn env_head(&self, _: &EnvName) -> Result<Option<EnvHead>, Self::Error> {
        Ok(None)
    }

    fn release(&self, _: &ReleaseId) -> Result<Option<Release>, Self::Error> {
        Ok(None)
    }

    fn key(&self, _: &KeyId) -> Result<Option<KeyRecord>, Self::Error> {
        Ok(None)
    }

    fn live_at(&self, _: &EnvName, _: Timestamp) -> Result<Option<Live>, Self::Error> {
        Ok(None)
    }

    fn snapshot(&self, _: u64) -> Result<Option<SnapshotRef>, Self::Error> {
        Ok(None)
    }
}

/// What `entry` changes if it is taken as written, without checking it: an
/// audit that found a violation goes on checking the rest of the log
/// against the log as it stands, so one bad entry is reported once rather
/// than as a cascade. `None` when it changes nothing (a release bound
/// again).
///
/// # Errors
/// When `state` fails.
pub fn assume<S: State>(
    state: &S,
    index: u64,
    entry: &Entry,
    leaf: &Hash,
) -> Result<Option<Change>, S::Error> {
    Ok(match entry {
        Entry::Publish(p) => match state.release(&p.release_id)? {
            Some(_) => None,
            None => Some(Change::Publish(Release {
                index,
                digest: p.digest,
            })),
        },
        Entry::Pin(p) => {
            let previous = state.env_head(&p.env)?;
            let ordered = p
                .db_position
                .as_ref()
                .and_then(|d| d.ordered().ok().flatten());
            let head = EnvHead::after(previous.as_ref(), p, leaf, ordered);
            Some(Change::Pin {
                previous,
                head,
                position: ordered,
            })
        }
        Entry::Key(k) => {
            let mut rec = state
                .key(&k.key_id)?
                .unwrap_or_else(|| KeyRecord::configured(&k.key_id));
            match k.action {
                KeyAction::Add => {
                    rec.public_key.clone_from(&k.public_key);
                    rec.valid_from = Some(k.at);
                    rec.added_at_index = Some(index);
                }
                KeyAction::Revoke => rec.revoked_at = Some(k.at),
            }
            Some(Change::Key(rec))
        }
        Entry::Snapshot(s) => Some(Change::Snapshot(SnapshotRef {
            env: s.env.clone(),
            db_time: s.db_time,
        })),
        Entry::Drill(_) => Some(Change::Drill),
        Entry::Promotion(_) => Some(Change::Promotion),
    })
}
