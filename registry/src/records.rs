//! The domain records the registry answers with: a published artifact and
//! a pin, as read from their log entries. They live outside the index so
//! that the timeline rules and the service's conversions do not depend on
//! how the index stores them.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::ids::{EnvName, ReleaseId};
use crate::signing::KeyId;
use crate::time::Timestamp;

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

/// A pin, as the index keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinRecord {
    pub env: EnvName,
    pub seq: u64,
    pub release_id: ReleaseId,
    pub digest: Digest,
    pub activated_at: Timestamp,
    pub recorded_at: Timestamp,
    pub actor: String,
    pub reason: String,
    pub log_index: u64,
    /// Leaf hash (hex) of this pin's entry.
    pub entry_hash: String,
    pub prev_pin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_position: Option<crate::position::DbPosition>,
}
