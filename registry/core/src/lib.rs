//! stackpin-core: the values and rules of the stackpin log, shared by the
//! registry that writes it and by everyone who checks it.
//!
//! # Layout
//!
//! | module | responsibility |
//! |---|---|
//! | [`error`] | the one error type and its kinds |
//! | [`defaults`] | defaults the registry and its clients share |
//! | [`digest`] | the `sha256:<hex>` content address |
//! | [`ids`] | release ids, environment names, reasons: parsed once, safe everywhere |
//! | [`time`] | microsecond UTC instants, RFC 3339, durations, the injectable clock |
//! | [`position`] | database positions (PostgreSQL LSN, restore point, Litestream TXID) |
//! | [`signing`] | Ed25519 keys, DSSE envelopes, in-toto statements |
//! | [`merkle`] | RFC 6962 / 9162 Merkle tree hashing and proofs |
//! | [`note`] | C2SP signed notes and tlog checkpoints: the log's signature |
//! | [`proof`] | offline verification of answers; the `.tlog-proof` file |
//! | [`entry`] | the log entry types and their exact bytes |
//! | [`json`] | the strict JSON (I-JSON, nesting-limited) an artifact must be |
//! | [`layout`] | the storage keys of entries, blobs and the checkpoint |
//! | [`live`] | when a pin is live, and how near an instant is to a switch |
//! | [`state`] | `apply`: the one rule set deciding whether an entry may follow the log |
//! | [`posture`] | recovery posture: backups and drills against RPO, RTO and drill interval |
//! | [`audit`] | a full audit of a log from its entries, checkpoint and blobs |
//! | [`suggest`] | "did you mean …?" for unknown environments and settings |
//! | [`diff`] | what changed between two artifacts, by JSON path (web view, rollback) |
//!
//! Nothing here does I/O beyond reading a key file: callers bring the
//! bytes, from a server, a folder or a bucket.

pub mod audit;
pub mod defaults;
pub mod diff;
pub mod digest;
pub mod entry;
pub mod error;
pub mod ids;
pub mod json;
pub mod layout;
pub mod live;
pub mod merkle;
pub mod note;
pub mod position;
pub mod posture;
pub mod proof;
pub mod signing;
pub mod source;
pub mod state;
pub mod suggest;
pub mod tiles;
pub mod time;
pub mod webhook;
pub mod witness;

pub use error::{Error, Kind, Result};
