//! Defaults the registry and its clients must agree on, said once.
//! The registry's own settings (data folder, timeouts, batch sizes) are in
//! `stackpin_registry::defaults`, which builds on these.

use std::time::Duration;

/// The port the registry serves gRPC on by default, and the CLI calls.
pub const PORT: u16 = 7070;

/// The server URL the CLI uses when none is given (the embedded default).
pub const SERVER_URL: &str = "http://127.0.0.1:7070";

/// Largest single gRPC message either side accepts, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Artifact bytes per streamed message (publish and download).
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// How far in the future of its `recorded_at` a pin may activate: the
/// clocks of a pipeline and the registry may disagree by this much.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5);

/// Margin around a switch within which an answer names both candidates.
/// The CLI sends it with every resolve (unless `--margin` says otherwise),
/// so the near-switch warning it checks is computed by the same margin on
/// both sides.
pub const BOUNDARY_MARGIN: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    #[test]
    fn the_server_url_names_the_default_port() {
        assert!(super::SERVER_URL.ends_with(&format!(":{}", super::PORT)));
    }
}
