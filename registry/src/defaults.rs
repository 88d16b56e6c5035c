//! Every default of the registry, said once: the settings (`config`), the
//! flags' help, the example configuration, the state machine's limits and
//! the transport options all read them from here.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use stackpin_core::defaults::{CHUNK_BYTES, CLOCK_SKEW, MAX_MESSAGE_BYTES, PORT};

/// The data folder of the embedded default (object storage and index).
pub const DATA_DIR: &str = "stackpin-data";

/// The address of the embedded default: loopback only.
pub const LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), PORT);

/// How long one storage call may take.
pub const STORAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a replica looks for other replicas' log entries.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often the files a reload reads are looked at for a change
/// (Kubernetes updates a mounted Secret within about a minute; cert-manager
/// renews days ahead).
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Most writes committed as one log object.
pub const MAX_BATCH: usize = 256;

/// Largest artifact accepted: 64 MiB.
pub const MAX_ARTIFACT_BYTES: u64 = 64 * 1024 * 1024;

/// Margin around a switch within which resolve names both candidates.
pub const BOUNDARY_MARGIN: Duration = stackpin_core::defaults::BOUNDARY_MARGIN;

/// Deadline of one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Artifact bytes all streams together may hold in memory: well under a
/// small container's memory, and room for about a hundred streams' buffers.
pub const MAX_INFLIGHT_BYTES: u64 = 256 * 1024 * 1024;

/// How long a publish or download may stay silent before it is cut.
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Concurrent requests (HTTP/2 streams) per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// How long in-flight requests may take to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Connections each listener (gRPC, HTTP) serves at once; more wait in the
/// listen queue.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long a connection may take from accept to its first complete
/// request head (TLS handshake included).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// WatchLog streams open at once on the gRPC listener. Watches hold no
/// artifact bytes, so they have this bound of their own instead of a share
/// of `max_inflight_bytes`.
pub const MAX_WATCH_STREAMS: usize = 256;

/// WatchLog streams one principal (a token, a certificate subject, or all
/// anonymous readers together) may hold open at once.
pub const MAX_WATCH_STREAMS_PER_PRINCIPAL: usize = 16;
