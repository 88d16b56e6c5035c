//! The domain records the registry answers with: a published artifact and
//! a pin, as read from their log entries. They live outside the index so
//! that the timeline rules and the service's conversions do not depend on
//! how the index stores them.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::ids::ReleaseId;
use crate::merkle::Hash;
use crate::signing::KeyId;
use crate::time::Timestamp;
use stackpin_core::entry::PinEntry;

/// A published artifact, as the index keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub release_id: ReleaseId,
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub recorded_at: Timestamp,
    pub log_index: u64,
    pub key_id: KeyId,
    pub envelope: serde_json::Value,
}

/// A pin: its log entry as written, and where it sits in the log.
#[derive(Clone, Debug, PartialEq)]
pub struct PinRecord {
    pub entry: PinEntry,
    pub log_index: u64,
    /// Leaf hash of this pin's entry: the next pin's `prev_pin`.
    pub entry_hash: Hash,
}
