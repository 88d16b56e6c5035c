//! Server settings: flags, each also readable from a `STACKPIN_*` variable.
//!
//! With none set the server runs on its embedded default: 127.0.0.1:7070,
//! data in `./stackpin-data` (object storage root and sled index together).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Kind, Result};
use crate::note::{DEFAULT_ORIGIN, NoteSigner};
use crate::registry::{DEFAULT_MAX_ARTIFACT_BYTES, Limits};
use crate::signing;
use crate::storage::{S3Options, StorageUrl};

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

/// Where the data lives and which key signs the log.
#[derive(Clone, Debug, clap::Args)]
pub struct LogKeyArgs {
    /// Folder holding artifact blobs, the log and the index.
    #[arg(long, env = "STACKPIN_DATA_DIR", default_value = "stackpin-data")]
    pub data_dir: PathBuf,

    /// The log's Ed25519 signing key (PKCS#8 PEM). Default:
    /// <data-dir>/log-key.pem, generated on first start. Replicas sharing a
    /// bucket must share this key.
    #[arg(long, env = "STACKPIN_LOG_KEY")]
    pub log_key: Option<PathBuf>,

    /// The log's origin: the first line of its checkpoints and its key name.
    #[arg(long, env = "STACKPIN_LOG_ORIGIN", default_value = DEFAULT_ORIGIN)]
    pub log_origin: String,
}

impl LogKeyArgs {
    /// Loads the log key, generating the default one if it does not exist yet.
    ///
    /// # Errors
    /// When a configured key file is missing or unreadable, or the origin is
    /// not a valid key name.
    pub fn signer(&self) -> Result<NoteSigner> {
        let (path, may_create) = match &self.log_key {
            Some(p) => (p.clone(), false),
            None => (self.data_dir.join("log-key.pem"), true),
        };
        let pem = match std::fs::read_to_string(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => create_key(&path)?,
            Err(e) => {
                return Err(Error::invalid(format!("log key {}: {e}", path.display())));
            }
        };
        let key = signing::signing_key_from_pem(&pem)
            .map_err(|e| Error::invalid(format!("log key {}: {e}", path.display())))?;
        NoteSigner::new(&self.log_origin, key)
            .map_err(|e| Error::invalid(format!("--log-origin: {e}")))
    }
}

fn create_key(path: &std::path::Path) -> Result<String> {
    use std::io::Write as _;
    let unavailable = |e: std::io::Error| {
        Error::new(
            Kind::Unavailable,
            format!("creating log key {}: {e}", path.display()),
        )
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(unavailable)?;
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| Error::internal(format!("no system randomness: {e}")))?;
    let pem = signing::signing_key_to_pem(&ed25519_dalek::SigningKey::from_bytes(&seed))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(unavailable)?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(unavailable)?;
    tracing::info!(path = %path.display(), "generated a new log signing key");
    Ok(pem)
}

fn parse_batch(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=crate::committer::MAX_BATCH).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?} is not a batch size from 1 to {}",
            crate::committer::MAX_BATCH
        )),
    }
}

/// `stackpin-registry` settings.
#[derive(Clone, Debug, clap::Args)]
pub struct ServerConfig {
    #[command(flatten)]
    pub log: LogKeyArgs,

    /// Address to serve gRPC on.
    #[arg(long, env = "STACKPIN_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,

    /// Trusted publisher keys: a PEM public-key file (`openssl pkey -pubout`)
    /// or a folder of *.pem files. Without it, publishes are refused.
    #[arg(long, env = "STACKPIN_TRUSTED_KEYS")]
    pub trusted_keys: Option<PathBuf>,

    /// Where artifacts and the log live: file:///path, s3://bucket/prefix or
    /// memory:// (tests). Default: file://<data-dir>. The data dir always
    /// holds the index.
    #[arg(long, env = "STACKPIN_STORAGE")]
    pub storage: Option<String>,

    /// Endpoint of an S3-compatible server (e.g. http://127.0.0.1:8333);
    /// credentials and region come from the usual AWS_* variables.
    #[arg(long, env = "STACKPIN_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// Address buckets as bucket.host instead of host/bucket (path style,
    /// the default).
    #[arg(long, env = "STACKPIN_S3_VIRTUAL_HOSTED_STYLE")]
    pub s3_virtual_hosted_style: bool,

    /// How long one storage call may take before it counts as unavailable.
    #[arg(long, env = "STACKPIN_STORAGE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub storage_timeout: Duration,

    /// How often to look for log entries written by other replicas.
    #[arg(long, env = "STACKPIN_POLL_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Most writes committed together as one log object; 1 turns group
    /// commit off.
    #[arg(long, env = "STACKPIN_MAX_BATCH", default_value_t = crate::committer::MAX_BATCH, value_parser = parse_batch)]
    pub max_batch: usize,

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
            poll_interval: self.poll_interval.max(Duration::from_millis(10)),
            max_batch: self.max_batch,
        }
    }

    /// The storage URL: `--storage`, or the data dir itself.
    ///
    /// # Errors
    /// Invalid for a malformed URL, or shared storage without an explicit
    /// `--log-key` (replicas must sign with one key).
    pub fn storage_url(&self) -> Result<StorageUrl> {
        let url = match &self.storage {
            Some(text) => StorageUrl::parse(text)?,
            None => StorageUrl::File(self.log.data_dir.clone()),
        };
        if url.is_shared() && self.log.log_key.is_none() {
            return Err(Error::invalid(
                "--storage s3://... needs --log-key: replicas sharing a bucket must sign the log \
                 with the same key (generate one with `stackpin keygen`)",
            ));
        }
        Ok(url)
    }

    /// S3 settings from the flags.
    pub fn s3_options(&self) -> S3Options {
        S3Options {
            endpoint: self.s3_endpoint.clone(),
            virtual_hosted_style: self.s3_virtual_hosted_style,
            timeout: self.storage_timeout,
            credentials: None,
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
