//! stackpin's registry: signed `objectstack.json` artifacts stored
//! content-addressed and write-once, and an append-only timeline of which
//! artifact went live in which environment when.
//!
//! # Layout
//!
//! | module | responsibility |
//! |---|---|
//! | [`digest`] | the `sha256:<hex>` content address |
//! | [`ids`] | release ids, environment names, reasons: parsed once, safe everywhere |
//! | [`time`] | microsecond UTC instants, RFC 3339, the injectable clock |
//! | [`signing`] | Ed25519 keys, DSSE envelopes, in-toto statements |
//! | [`auth`] | bearer tokens and client certificates mapped to roles |
//! | [`audit`] | the offline audit of a whole log |
//! | [`blobs`] | artifact bytes on object storage, verified on read |
//! | [`log`] | append-only entries on object storage (write-once per index) |
//! | [`merkle`] | RFC 6962 / 9162 Merkle tree hashing and proofs |
//! | [`index`] | the sled index derived from the log, rebuildable |
//! | [`timeline`] | activation ordering and resolve-at-time rules |
//! | [`note`] | C2SP signed notes and tlog checkpoints: the log's signature |
//! | [`position`] | database positions (PostgreSQL LSN, restore point, Litestream TXID) |
//! | [`proof`] | offline verification of answers; the `.tlog-proof` file |
//! | [`committer`] | group commit: the one task that appends to the log |
//! | [`storage`] | choosing the object store by URL (file, s3, memory) |
//! | [`health`] | grpc.health.v1: SERVING only while storage answers |
//! | [`observe`] | Prometheus metrics and one log line per request |
//! | [`registry`] | the state machine tying the above together |
//! | [`service`] | the tonic service: the only module that sees proto types |
//! | [`config`] | server settings and their sources |
//! | [`server`] | `run(listener, shutdown)` |
//! | [`error`] | the one error type and its kinds |
//!
//! Object storage is the source of truth; the index is a cache of it.

pub use stackpin_core::{audit, digest, ids, merkle, note, position, proof, signing, time};

pub mod auth;
pub mod blobs;
pub(crate) mod blocking;
pub mod committer;
pub mod config;
pub mod defaults;
pub mod error;
pub mod health;
pub mod index;
pub mod log;
pub mod observe;
pub mod records;
pub mod registry;
pub mod server;
pub mod service;
pub mod storage;
pub mod timeline;

pub use error::{Error, Kind, Result};
pub use registry::Registry;
