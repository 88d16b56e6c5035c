//! Server settings: flags, each also readable from a `STACKPIN_*` variable.
//!
//! With none set the server runs on its embedded default: 127.0.0.1:7070,
//! data in `./stackpin-data` (object storage root and sled index together).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::registry::{DEFAULT_MAX_ARTIFACT_BYTES, Limits};

/// Parses a duration such as `5s`, `1500ms` or `2m` (non-negative).
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration like 5s, 1500ms or 2m: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{text:?} must not be negative"))
}

/// `stackpin-registry` settings.
#[derive(Clone, Debug, clap::Args)]
pub struct ServerConfig {
    /// Folder holding artifact blobs, the log and the index.
    #[arg(long, env = "STACKPIN_DATA_DIR", default_value = "stackpin-data")]
    pub data_dir: PathBuf,

    /// Address to serve gRPC on.
    #[arg(long, env = "STACKPIN_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,

    /// Trusted publisher keys: a PEM public-key file (`openssl pkey -pubout`)
    /// or a folder of *.pem files. Without it, publishes are refused.
    #[arg(long, env = "STACKPIN_TRUSTED_KEYS")]
    pub trusted_keys: Option<PathBuf>,

    /// Largest artifact accepted, in bytes.
    #[arg(long, env = "STACKPIN_MAX_ARTIFACT_BYTES", default_value_t = DEFAULT_MAX_ARTIFACT_BYTES)]
    pub max_artifact_bytes: u64,

    /// How far in the future a reported activation may lie.
    #[arg(long, env = "STACKPIN_CLOCK_SKEW", default_value = "5s", value_parser = parse_duration)]
    pub clock_skew: Duration,

    /// Default margin around a switch within which resolve names both candidates.
    #[arg(long, env = "STACKPIN_BOUNDARY_MARGIN", default_value = "2s", value_parser = parse_duration)]
    pub boundary_margin: Duration,
}

impl ServerConfig {
    /// The state-machine limits these settings describe.
    pub fn limits(&self) -> Limits {
        Limits {
            max_artifact_bytes: self.max_artifact_bytes,
            clock_skew: self.clock_skew,
            boundary_margin: self.boundary_margin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_friendly_form() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("soon").is_err());
    }
}
