//! stackpin's registry: signed `objectstack.json` artifacts stored
//! content-addressed and write-once, and an append-only timeline of which
//! artifact went live in which environment when.
//!
//! # Layout
//!
//! The values and rules of the log (ids, digests, time, positions,
//! signing, merkle, notes, proofs, entries, storage layout, `state::apply`,
//! the audit) are `stackpin-core`'s; other crates use them from there. This
//! crate adds what needs storage, an index or a network:
//!
//! | module | responsibility |
//! |---|---|
//! | [`registry`] | the `Registry`: opening and recovery, publish, pin, keys, resolve, proofs, checkpoints |
//! | [`committer`] | group commit: the one task that appends to the log, through `state::apply` |
//! | [`index`] | the sled index derived from the log, rebuildable |
//! | [`records`] | the artifact and pin records answers carry |
//! | [`timeline`] | resolve-at-time rules |
//! | [`blobs`] | artifact bytes on object storage, verified as they stream |
//! | [`staging`] | a publish's bytes on local disk while they arrive, hashed as written |
//! | [`budget`] | the bound on artifact bytes all streams hold in memory |
//! | [`guard`] | the bounds on every listener's connections, and on watch streams |
//! | [`log`] | log objects on object storage (write-once per index) |
//! | [`storage`] | choosing the object store by URL (file, s3, memory) |
//! | [`auth`] | bearer tokens and client certificates mapped to roles |
//! | [`tls`] | both listeners' TLS, replaceable while serving; the gRPC handshakes |
//! | [`health`] | grpc.health.v1: SERVING only while storage answers and the committer runs |
//! | [`observe`] | Prometheus metrics and one log line per request |
//! | [`service`] | the tonic service: the only module that sees proto types |
//! | [`config`], [`defaults`] | server settings and their sources; every default |
//! | [`reload`] | SIGHUP and watched files: tokens, TLS, trusted keys, witnesses, webhooks, all or nothing |
//! | [`server`] | `run(listener, registry, options, shutdown)` |
//! | [`error`] | the error type: the core's kinds, plus storage and index failures |
//!
//! Object storage is the source of truth; the index is a cache of it.

// The core's modules under short names inside this crate only; other
// crates use `stackpin_core` directly.
pub(crate) use stackpin_core::{digest, ids, merkle, note, position, proof, signing, time};

pub mod auth;
pub mod blobs;
pub(crate) mod blocking;
pub(crate) mod budget;
pub(crate) mod committer;
pub mod config;
pub(crate) mod defaults;
pub mod error;
pub mod guard;
pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod http_status;
pub mod index;
pub mod log;
pub(crate) mod observe;
pub(crate) mod oci;
pub mod promote;
pub(crate) mod records;
pub mod registry;
pub mod reload;
pub mod server;
pub(crate) mod service;
pub(crate) mod staging;
pub mod storage;
pub(crate) mod timeline;
pub mod tls;
pub(crate) mod web;
pub mod webhooks;
pub mod witness;

pub use error::{Error, Kind, Result};
pub use registry::Registry;
