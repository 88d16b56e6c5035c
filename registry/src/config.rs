//! Server settings, in layers: built-in defaults, then a TOML file
//! (`--config`), then `STACKPIN_*` environment variables, then flags. Each
//! key has the same name everywhere (`data_dir` in the file,
//! `STACKPIN_DATA_DIR`, `--data-dir`). Settings are validated once, at
//! start, and every error names its key.
//!
//! With nothing set the server runs on its embedded default: 127.0.0.1:7070,
//! data in `./stackpin-data` (object storage root and sled index together),
//! no authentication (so it refuses any address but loopback).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::auth::{Authorizer, CertConfig, TokenConfig};
use crate::defaults;
use crate::error::{Error, Kind, Result};
use crate::note::NoteSigner;
use crate::registry::OriginSource;
use crate::registry::{DEFAULT_MAX_ARTIFACT_BYTES, Limits};
use crate::signing;
use crate::storage::{StorageOptions, StorageUrl};
use crate::webhooks::WebhookConfig;

pub use stackpin_core::time::parse_duration;

/// Durations are written as text (`5s`) in files, variables and flags.
mod text_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting, merged from all layers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Folder holding the index, and the data itself unless `storage` says otherwise.
    pub data_dir: PathBuf,
    /// Address to serve gRPC on.
    pub listen: SocketAddr,
    /// Trusted publisher keys: a PEM public-key file or a folder of *.pem.
    pub trusted_keys: Option<PathBuf>,
    /// file:///path, s3://bucket/prefix, az://container/prefix or memory://
    /// (default: file://<data_dir>).
    pub storage: Option<String>,
    /// Endpoint of an S3-compatible server.
    pub s3_endpoint: Option<String>,
    /// bucket.host addressing instead of host/bucket.
    pub s3_virtual_hosted_style: bool,
    /// Azure blob endpoint instead of https://<account>.blob.core.windows.net.
    pub azure_endpoint: Option<String>,
    /// Allow a plain-HTTP storage endpoint that is not loopback.
    pub storage_allow_http: bool,
    /// The name `storage_allow_http` had when S3 was the only remote
    /// storage, still read (either one allows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_allow_http: Option<bool>,
    #[serde(with = "text_duration")]
    pub storage_timeout: Duration,
    #[serde(with = "text_duration")]
    pub poll_interval: Duration,
    /// Most writes committed as one log object (1 disables group commit).
    pub max_batch: usize,
    pub max_artifact_bytes: u64,
    /// Largest single gRPC message (artifacts travel in 1 MiB chunks).
    pub max_message_bytes: usize,
    /// How deep an artifact's JSON may nest.
    pub max_json_depth: usize,
    /// Artifact bytes all publishes and downloads together may hold in
    /// memory; beyond it new streams wait briefly, then are refused.
    pub max_inflight_bytes: u64,
    /// How long a publish or download stream may stay silent.
    #[serde(with = "text_duration")]
    pub stream_idle_timeout: Duration,
    #[serde(with = "text_duration")]
    pub clock_skew: Duration,
    #[serde(with = "text_duration")]
    pub boundary_margin: Duration,
    /// In-toto predicate types accepted as a publish besides stackpin's own.
    pub accepted_predicate_types: Vec<String>,
    /// Deadline of one request (a publish of the largest artifact included).
    #[serde(with = "text_duration")]
    pub request_timeout: Duration,
    /// Concurrent streams (requests) per connection.
    pub max_concurrent_streams: u32,
    /// Connections each listener (gRPC, HTTP) serves at once.
    pub max_connections: usize,
    /// From accept to a connection's first complete request head.
    #[serde(with = "text_duration")]
    pub header_timeout: Duration,
    /// WatchLog streams open at once, in all.
    pub max_watch_streams: usize,
    /// WatchLog streams one principal may hold open at once.
    pub max_watch_streams_per_principal: usize,
    /// The log's signing key (default: <data_dir>/log-key.pem, generated).
    pub log_signing_key: Option<PathBuf>,
    /// The name `log_signing_key` had, still read with a warning: it
    /// shared `STACKPIN_LOG_KEY` with the CLI's verifier key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_key: Option<PathBuf>,
    /// The origin of a new log (default: derived from the log key). A log
    /// that has signed keeps its origin.
    pub log_origin: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// CA that client certificates must chain to (turns on mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// Allow a non-loopback address without TLS.
    pub insecure_listen: bool,
    /// Allow `memory://` storage (a throwaway registry for tests).
    pub allow_memory_storage: bool,
    /// Let requests without credentials read.
    pub anonymous_read: bool,
    /// Prometheus metrics on this address (off when unset).
    pub metrics_listen: Option<SocketAddr>,
    /// The HTTP(S) listener (off when unset), with the TLS and token rules
    /// of `listen`: the log as C2SP tlog-tiles, and the web view.
    pub http_listen: Option<SocketAddr>,
    /// The web view on `http_listen`: unset, it is on when that address is
    /// loopback or authentication is on, and off otherwise (artifacts can
    /// be private; the tiles are served either way).
    pub web_view: Option<bool>,
    pub log_format: LogFormat,
    /// Bearer tokens, by hash.
    pub token: Vec<TokenConfig>,
    /// Witnesses the log's checkpoints are submitted to (`[[witness]]`).
    pub witness: Vec<WitnessConfig>,
    /// Endpoints that receive a signed CloudEvent per entry (`[[webhook]]`).
    pub webhook: Vec<WebhookConfig>,
    /// Recovery targets (`[[posture]]`): without `env`, every environment's
    /// default; with it, that environment's.
    pub posture: Vec<PostureConfig>,
    /// Client certificate subjects.
    pub client_cert: Vec<CertConfig>,
    /// What loading found worth a warning (old spellings), for the caller
    /// to log once logging is set up.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(defaults::DATA_DIR),
            listen: defaults::LISTEN,
            trusted_keys: None,
            storage: None,
            s3_endpoint: None,
            s3_virtual_hosted_style: false,
            azure_endpoint: None,
            storage_allow_http: false,
            s3_allow_http: None,
            storage_timeout: defaults::STORAGE_TIMEOUT,
            poll_interval: defaults::POLL_INTERVAL,
            max_batch: crate::committer::MAX_BATCH,
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            max_message_bytes: defaults::MAX_MESSAGE_BYTES,
            max_json_depth: stackpin_core::json::DEFAULT_MAX_DEPTH,
            max_inflight_bytes: defaults::MAX_INFLIGHT_BYTES,
            stream_idle_timeout: defaults::STREAM_IDLE_TIMEOUT,
            clock_skew: defaults::CLOCK_SKEW,
            boundary_margin: defaults::BOUNDARY_MARGIN,
            accepted_predicate_types: Vec::new(),
            request_timeout: defaults::REQUEST_TIMEOUT,
            max_concurrent_streams: defaults::MAX_CONCURRENT_STREAMS,
            max_connections: defaults::MAX_CONNECTIONS,
            header_timeout: defaults::HEADER_TIMEOUT,
            max_watch_streams: defaults::MAX_WATCH_STREAMS,
            max_watch_streams_per_principal: defaults::MAX_WATCH_STREAMS_PER_PRINCIPAL,
            log_signing_key: None,
            log_key: None,
            log_origin: None,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            insecure_listen: false,
            allow_memory_storage: false,
            anonymous_read: false,
            metrics_listen: None,
            http_listen: None,
            web_view: None,
            log_format: LogFormat::Text,
            token: Vec::new(),
            witness: Vec::new(),
            webhook: Vec::new(),
            posture: Vec::new(),
            client_cert: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// A witness to submit checkpoints to (C2SP tlog-witness).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// What logs and metrics call it [default: the name in its vkey].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its cosignature/v1 verifier key, as `stackpin-witness key` prints it.
    pub vkey: String,
    /// Its submission prefix: checkpoints go to `<url>/add-checkpoint`.
    pub url: String,
}

/// Recovery targets: a class's defaults, any of them overridden.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostureConfig {
    /// The environment these targets are for [default: every environment
    /// no other `[[posture]]` names].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// evaluation, single-node, single-tenant or multi-tenant [default:
    /// single-node].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Newest snapshot at most this old (`15m`; `off`: not judged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo: Option<String>,
    /// Newest passing drill restored within this (`30m`; `off`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto: Option<String>,
    /// Newest passing drill at most this old (`90d`; `off`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_interval: Option<String>,
}

impl PostureConfig {
    fn targets(&self) -> std::result::Result<stackpin_core::posture::Targets, String> {
        let class = match &self.class {
            Some(c) => c
                .parse::<stackpin_core::posture::Class>()
                .map_err(|e| e.message().to_owned())?,
            None => stackpin_core::posture::DEFAULT_CLASS,
        };
        let mut t = class.targets();
        let over = |name: &str, text: &Option<String>, into: &mut Option<Duration>| {
            match text.as_deref() {
                None => {}
                Some("off") => *into = None,
                Some(d) => *into = Some(parse_duration(d).map_err(|e| format!("{name}: {e}"))?),
            }
            Ok::<(), String>(())
        };
        over("rpo", &self.rpo, &mut t.rpo)?;
        over("rto", &self.rto, &mut t.rto)?;
        over(
            "drill_interval",
            &self.drill_interval,
            &mut t.drill_interval,
        )?;
        Ok(t)
    }
}

/// The keys settable through the environment (`STACKPIN_<KEY>`).
const ENV_KEYS: &[&str] = &[
    "data_dir",
    "listen",
    "trusted_keys",
    "storage",
    "s3_endpoint",
    "s3_virtual_hosted_style",
    "azure_endpoint",
    "storage_allow_http",
    "s3_allow_http",
    "storage_timeout",
    "poll_interval",
    "max_batch",
    "max_artifact_bytes",
    "max_message_bytes",
    "max_json_depth",
    "max_inflight_bytes",
    "stream_idle_timeout",
    "clock_skew",
    "boundary_margin",
    "accepted_predicate_types",
    "request_timeout",
    "max_concurrent_streams",
    "max_connections",
    "header_timeout",
    "max_watch_streams",
    "max_watch_streams_per_principal",
    "log_signing_key",
    "log_origin",
    "tls_cert",
    "tls_key",
    "client_ca",
    "insecure_listen",
    "allow_memory_storage",
    "anonymous_read",
    "metrics_listen",
    "http_listen",
    "web_view",
    "log_format",
];

/// Flags of `stackpin-registry`: the top layer. Unset flags leave lower
/// layers alone.
#[derive(Clone, Debug, Default, Serialize, clap::Args)]
pub struct Flags {
    /// A TOML settings file (`stackpin-registry config example` prints one).
    #[arg(long, env = "STACKPIN_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Folder holding the index, and the data unless --storage says otherwise [default: stackpin-data].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Address to serve gRPC on [default: 127.0.0.1:7070].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Trusted publisher keys: a PEM public-key file or a folder of *.pem.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_keys: Option<PathBuf>,
    /// Storage: file:///path, s3://bucket/prefix, az://container/prefix or
    /// memory:// [default: file://<data-dir>].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// Endpoint of an S3-compatible server (credentials from AWS_*).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    /// Address buckets as bucket.host (path style is the default).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub s3_virtual_hosted_style: bool,
    /// Azure blob endpoint, e.g. a private endpoint or Azurite's
    /// http://127.0.0.1:10000/devstoreaccount1 (account and credentials
    /// from AZURE_*) [default: https://<account>.blob.core.windows.net].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_endpoint: Option<String>,
    /// Allow a plain-HTTP storage endpoint that is not loopback (on purpose).
    #[arg(long, alias = "s3-allow-http")]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub storage_allow_http: bool,
    /// How long one storage call may take [default: 10s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_timeout: Option<String>,
    /// How often to look for other replicas' log entries [default: 500ms].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
    /// Most writes committed as one log object; 1 disables group commit [default: 256].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<usize>,
    /// Largest artifact accepted, in bytes [default: 67108864].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_artifact_bytes: Option<u64>,
    /// Largest single gRPC message, in bytes [default: 4194304].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<usize>,
    /// How deep an artifact's JSON may nest, at most 1024 [default: 128].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_json_depth: Option<usize>,
    /// Artifact bytes all streams together may hold in memory [default: 268435456].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inflight_bytes: Option<u64>,
    /// How long a publish or download may stay silent before it is cut [default: 30s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<String>,
    /// How far in the future a reported activation may lie [default: 5s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<String>,
    /// Margin around a switch within which resolve names both candidates [default: 2s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boundary_margin: Option<String>,
    /// Deadline of one request [default: 120s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<String>,
    /// Concurrent requests per connection [default: 256].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    /// Connections each listener (gRPC, HTTP) serves at once; more wait [default: 1024].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// How long a connection may take from accept to its first complete request head [default: 10s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<String>,
    /// WatchLog streams open at once, in all [default: 256].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_watch_streams: Option<usize>,
    /// WatchLog streams one principal may hold open at once [default: 16].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_watch_streams_per_principal: Option<usize>,
    /// The log's Ed25519 signing key, PKCS#8 PEM [default: <data-dir>/log-key.pem, generated].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_signing_key: Option<PathBuf>,
    /// Old name of --log-signing-key (still read, with a warning).
    #[arg(long, hide = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_key: Option<PathBuf>,
    /// The origin (log name) of a new log [default: stackpin.local/log/<key hash>]; a log that has signed keeps its own.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_origin: Option<String>,
    /// Server certificate chain (PEM) for TLS.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM) for TLS.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) client certificates must chain to: turns on mutual TLS.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// Allow listening on a non-loopback address without TLS.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_listen: bool,
    /// Allow memory:// storage: everything is lost when the process stops.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_memory_storage: bool,
    /// Let requests without credentials read (resolve, history, fetch, proofs).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub anonymous_read: bool,
    /// Serve Prometheus metrics over HTTP on this address (off by default).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve HTTP on this address, with the TLS and tokens of --listen
    /// (off by default): the log as C2SP tlog-tiles (checkpoint, tiles,
    /// entry bundles) and the read-only web view.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,
    /// The web view on --http-listen [default: on when that address is
    /// loopback or authentication is on].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_view: Option<bool>,
    /// Log lines as text or JSON [default: text].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

fn invalid(key: &str, why: impl std::fmt::Display) -> Error {
    Error::invalid(format!("setting {key}: {why}"))
}

impl Settings {
    /// Merges the layers and validates the result.
    ///
    /// # Errors
    /// Invalid, naming the key, for anything malformed or inconsistent.
    pub fn load(flags: &Flags) -> Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = &flags.config {
            if !path.is_file() {
                return Err(invalid(
                    "config",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment
            .merge(Env::prefixed("STACKPIN_").only(ENV_KEYS))
            .merge(Serialized::globals(flags));
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| Error::invalid(format!("settings: {e}")))?;
        let legacy_env = std::env::var("STACKPIN_LOG_KEY").ok();
        settings.adopt_old_log_key(legacy_env.as_deref())?;
        settings.validate()?;
        Ok(settings)
    }

    /// Reads the old spellings of `log_signing_key`: `log_key` (file,
    /// flag) and `STACKPIN_LOG_KEY` (`env`). That variable is the CLI's
    /// verifier key: a value that parses as one is the CLI's and is
    /// ignored here; a path is adopted, with a warning.
    fn adopt_old_log_key(&mut self, env: Option<&str>) -> Result<()> {
        let from_env = env
            .filter(|v| !v.is_empty() && crate::note::NoteVerifier::parse(v).is_err())
            .map(PathBuf::from);
        let (old, spelling) = match (self.log_key.take(), from_env) {
            (Some(path), _) => (path, "log_key (--log-key)"),
            (None, Some(path)) => (path, "STACKPIN_LOG_KEY"),
            (None, None) => return Ok(()),
        };
        match &self.log_signing_key {
            Some(new) if *new != old => {
                return Err(invalid(
                    "log_signing_key",
                    format!(
                        "{spelling} (the old name) says {} but log_signing_key says {}: set one",
                        old.display(),
                        new.display()
                    ),
                ));
            }
            Some(_) => {}
            None => self.log_signing_key = Some(old),
        }
        self.warnings.push(format!(
            "{spelling} is the old name of log_signing_key (STACKPIN_LOG_SIGNING_KEY, \
             --log-signing-key); it still works, but STACKPIN_LOG_KEY is the CLI's verifier key"
        ));
        Ok(())
    }

    /// Parses and validates settings files alone, layered in order
    /// (`config check`).
    ///
    /// # Errors
    /// Invalid, naming the key.
    pub fn check_files(paths: &[PathBuf]) -> Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        for path in paths {
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid("config", format!("{}: {e}", path.display())))?;
            figment = figment.admerge(Toml::string(&text));
        }
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| Error::invalid(format!("settings: {e}")))?;
        settings.adopt_old_log_key(None)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks consistency between keys.
    ///
    /// # Errors
    /// Invalid, naming the key.
    pub fn validate(&self) -> Result<()> {
        if let Some(t) = self
            .accepted_predicate_types
            .iter()
            .find(|t| !t.contains(':') || t.chars().any(char::is_whitespace))
        {
            return Err(invalid(
                "accepted_predicate_types",
                format!("{t:?} is not a URI (an in-toto predicateType such as https://…)"),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid("tls_cert", "tls_cert and tls_key go together"));
        }
        if self.client_ca.is_some() && self.tls_cert.is_none() {
            return Err(invalid(
                "client_ca",
                "mutual TLS needs tls_cert and tls_key",
            ));
        }
        if !self.listen.ip().is_loopback() && self.tls_cert.is_none() && !self.insecure_listen {
            return Err(invalid(
                "listen",
                format!(
                    "{} is not a loopback address: configure tls_cert and tls_key, or pass \
                     --insecure-listen to serve plaintext on purpose",
                    self.listen
                ),
            ));
        }
        if let Some(tiles) = self.http_listen {
            // Port 0 asks the system for a free port each time: no clash.
            if tiles.port() != 0 && (tiles == self.listen || self.metrics_listen == Some(tiles)) {
                return Err(invalid(
                    "http_listen",
                    format!("{tiles} is already the address of listen or metrics_listen"),
                ));
            }
            if !tiles.ip().is_loopback() && self.tls_cert.is_none() && !self.insecure_listen {
                return Err(invalid(
                    "http_listen",
                    format!(
                        "{tiles} is not a loopback address: configure tls_cert and tls_key, or \
                         pass --insecure-listen to serve plaintext on purpose"
                    ),
                ));
            }
        }
        if !self.listen.ip().is_loopback() && self.token.is_empty() && self.client_cert.is_empty() {
            return Err(invalid(
                "listen",
                "serving beyond loopback needs tokens or client certificates: without them \
                 anyone could write (see `stackpin-registry token create`)",
            ));
        }
        self.witnesses()?;
        self.webhooks()?;
        self.posture_policy()?;
        if !(1..=crate::committer::MAX_BATCH).contains(&self.max_batch) {
            return Err(invalid(
                "max_batch",
                format!("must be 1 to {}", crate::committer::MAX_BATCH),
            ));
        }
        if self.max_message_bytes < 2 * 1024 * 1024 {
            return Err(invalid(
                "max_message_bytes",
                "must be at least 2 MiB (artifact chunks are 1 MiB)",
            ));
        }
        if !(1..=stackpin_core::json::MAX_DEPTH_LIMIT).contains(&self.max_json_depth) {
            return Err(invalid(
                "max_json_depth",
                format!("must be 1 to {}", stackpin_core::json::MAX_DEPTH_LIMIT),
            ));
        }
        let least = 4 * crate::defaults::CHUNK_BYTES as u64 + crate::blobs::PART_BYTES as u64;
        if self.max_inflight_bytes < least {
            return Err(invalid(
                "max_inflight_bytes",
                format!("must be at least {least} bytes (one stream's buffers)"),
            ));
        }
        if self.stream_idle_timeout < Duration::from_secs(1) {
            return Err(invalid("stream_idle_timeout", "must be at least 1s"));
        }
        if self.max_artifact_bytes == 0 {
            return Err(invalid("max_artifact_bytes", "must be positive"));
        }
        if self.request_timeout < Duration::from_secs(1) {
            return Err(invalid("request_timeout", "must be at least 1s"));
        }
        if self.max_concurrent_streams == 0 {
            return Err(invalid("max_concurrent_streams", "must be positive"));
        }
        for (key, n) in [
            ("max_connections", self.max_connections),
            ("max_watch_streams", self.max_watch_streams),
            (
                "max_watch_streams_per_principal",
                self.max_watch_streams_per_principal,
            ),
        ] {
            if n == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        if self.header_timeout < Duration::from_millis(100) {
            return Err(invalid("header_timeout", "must be at least 100ms"));
        }
        self.storage_url()?;
        self.authorizer()?;
        if let Some(origin) = &self.log_origin {
            crate::note::check_origin(origin).map_err(|e| invalid("log_origin", e))?;
        }
        Ok(())
    }

    /// The witnesses these settings name.
    ///
    /// # Errors
    /// Invalid for a bad vkey or URL, or two witnesses with one name.
    pub fn witnesses(&self) -> Result<Vec<crate::registry::WitnessTarget>> {
        let mut out: Vec<crate::registry::WitnessTarget> = Vec::new();
        for w in &self.witness {
            let key = stackpin_core::witness::CosignerKey::parse(&w.vkey)
                .map_err(|e| invalid("witness", e))?;
            if !w.url.starts_with("http://") && !w.url.starts_with("https://") {
                return Err(invalid(
                    "witness",
                    format!("url {:?} is not http:// or https://", w.url),
                ));
            }
            let label = w.name.clone().unwrap_or_else(|| key.name().to_owned());
            if out.iter().any(|o| o.label == label) {
                return Err(invalid(
                    "witness",
                    format!("two witnesses are called {label}"),
                ));
            }
            out.push(crate::registry::WitnessTarget {
                label,
                key,
                url: w.url.clone(),
            });
        }
        Ok(out)
    }

    /// The webhook endpoints these settings name.
    ///
    /// # Errors
    /// Invalid for a bad name, URL, type or environment, or two endpoints
    /// with one name.
    pub fn webhooks(&self) -> Result<Vec<crate::webhooks::Endpoint>> {
        let mut out: Vec<crate::webhooks::Endpoint> = Vec::new();
        for w in &self.webhook {
            out.push(crate::webhooks::Endpoint::new(w).map_err(|e| invalid("webhook", e))?);
            if out[..out.len() - 1].iter().any(|o| o.name == w.name) {
                return Err(invalid(
                    "webhook",
                    format!("two webhooks are called {}", w.name),
                ));
            }
        }
        Ok(out)
    }

    /// The recovery targets these settings describe.
    ///
    /// # Errors
    /// Invalid for an unknown class, a bad duration or environment name,
    /// or two `[[posture]]` tables for one environment.
    pub fn posture_policy(&self) -> Result<stackpin_core::posture::Policy> {
        let mut policy = stackpin_core::posture::Policy::default();
        let mut default_seen = false;
        for p in &self.posture {
            let targets = p.targets().map_err(|e| invalid("posture", e))?;
            match &p.env {
                None if default_seen => {
                    return Err(invalid("posture", "two [[posture]] tables without env"));
                }
                None => {
                    default_seen = true;
                    policy.default = targets;
                }
                Some(env) => {
                    let env: crate::ids::EnvName = env
                        .parse()
                        .map_err(|e: stackpin_core::Error| invalid("posture", e.message()))?;
                    if policy.envs.insert(env.clone(), targets).is_some() {
                        return Err(invalid(
                            "posture",
                            format!("two [[posture]] tables for {env}"),
                        ));
                    }
                }
            }
        }
        Ok(policy)
    }

    /// The authorizer these settings describe.
    ///
    /// # Errors
    /// Invalid for a malformed token or certificate entry.
    pub fn authorizer(&self) -> Result<Authorizer> {
        Authorizer::new(&self.token, &self.client_cert, self.anonymous_read)
            .map_err(|e| invalid("token", e))
    }

    /// The state-machine limits these settings describe.
    pub fn limits(&self) -> Limits {
        Limits {
            max_artifact_bytes: self.max_artifact_bytes,
            clock_skew: self.clock_skew,
            boundary_margin: self.boundary_margin,
            poll_interval: self.poll_interval.max(Duration::from_millis(10)),
            max_batch: self.max_batch,
            predicate_types: self.accepted_predicate_types.clone(),
            max_json_depth: self.max_json_depth,
            max_inflight_bytes: self.max_inflight_bytes,
            stream_idle_timeout: self.stream_idle_timeout,
            request_timeout: self.request_timeout,
            // Validated at load; a policy that no longer parses falls back.
            posture: self.posture_policy().unwrap_or_default(),
        }
    }

    /// The storage URL: `storage`, or the data dir itself.
    ///
    /// # Errors
    /// Invalid for a malformed URL, or shared storage without an explicit
    /// log key (replicas must sign with one key).
    pub fn storage_url(&self) -> Result<StorageUrl> {
        let url = match &self.storage {
            Some(text) => StorageUrl::parse(text).map_err(|e| invalid("storage", e))?,
            None => StorageUrl::File(self.data_dir.clone()),
        };
        if url == StorageUrl::Memory && !self.allow_memory_storage {
            return Err(invalid(
                "storage",
                "memory:// keeps the log and the artifacts in this process only: everything is \
                 lost when it stops. For a throwaway test registry pass --allow-memory-storage \
                 (allow_memory_storage = true); otherwise use file://, s3:// or az://",
            ));
        }
        if url.is_shared() && self.log_signing_key.is_none() {
            return Err(invalid(
                "log_signing_key",
                "s3:// and az:// storage need an explicit log_signing_key: replicas sharing a bucket \
                 must sign the log with the same key (generate one with `stackpin keygen`)",
            ));
        }
        Ok(url)
    }

    /// S3 settings.
    pub fn storage_options(&self) -> StorageOptions {
        StorageOptions {
            endpoint: self.s3_endpoint.clone(),
            virtual_hosted_style: self.s3_virtual_hosted_style,
            timeout: self.storage_timeout,
            credentials: None,
            allow_http: self.storage_allow_http || self.s3_allow_http == Some(true),
            azure_endpoint: self.azure_endpoint.clone(),
        }
    }

    /// Loads the log key, generating the default one if it does not exist yet.
    ///
    /// # Errors
    /// When a configured key file is missing or unreadable.
    pub fn signing_key(&self) -> Result<ed25519_dalek::SigningKey> {
        let (path, may_create) = match &self.log_signing_key {
            Some(p) => (p.clone(), false),
            None => (self.data_dir.join("log-key.pem"), true),
        };
        load_key(&path, may_create, "log_signing_key")
    }

    /// The log's signer: its key ([`Self::signing_key`]) under the origin
    /// the log in `store` signs as ([`crate::registry::log_origin`]).
    ///
    /// # Errors
    /// As those two.
    pub async fn signer(
        &self,
        store: &std::sync::Arc<dyn object_store::ObjectStore>,
    ) -> Result<(NoteSigner, OriginSource)> {
        let key = self.signing_key()?;
        let (origin, source) =
            crate::registry::log_origin(store, self.log_origin.as_deref(), &key.verifying_key())
                .await?;
        let signer = NoteSigner::new(&origin, key).map_err(|e| invalid("log_origin", e))?;
        Ok((signer, source))
    }
}

/// Loads the Ed25519 key in the PEM file at `path`; when there is none and
/// `may_create`, generates one there first (mode 0600). `setting` names it
/// in errors.
///
/// # Errors
/// Invalid when the file is missing (and may not be created) or is not a
/// key; Unavailable when it cannot be written.
pub fn load_key(path: &Path, may_create: bool, setting: &str) -> Result<ed25519_dalek::SigningKey> {
    let pem = match std::fs::read_to_string(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => create_key(path)?,
        Err(e) => return Err(invalid(setting, format!("{}: {e}", path.display()))),
    };
    signing::signing_key_from_pem(&pem)
        .map_err(|e| invalid(setting, format!("{}: {e}", path.display())))
}

fn create_key(path: &Path) -> Result<String> {
    use std::io::Write as _;
    let unavailable = |e: std::io::Error| {
        Error::new(
            Kind::Unavailable,
            format!("creating key {}: {e}", path.display()),
        )
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(unavailable)?;
    }
    let pem = signing::signing_key_to_pem(&signing::generate_key()?)?;
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
    tracing::info!(path = %path.display(), "generated a new signing key");
    Ok(pem)
}

/// A commented example settings file with every key.
pub const EXAMPLE: &str = include_str!("config_example.toml");

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

    #[test]
    fn posture_tables_give_each_environment_its_targets_and_bad_ones_name_the_key() {
        let read = |toml: &str| {
            let s: Settings = Figment::from(Serialized::defaults(Settings::default()))
                .merge(Toml::string(toml))
                .extract()
                .unwrap();
            s.validate().map(|()| s.posture_policy().unwrap())
        };
        let policy = read(
            "[[posture]]\nclass = \"evaluation\"\n[[posture]]\nenv = \"prod\"\nclass =              \"multi-tenant\"\nrto = \"20m\"\ndrill_interval = \"off\"\n",
        )
        .unwrap();
        let prod = policy.targets(&"prod".parse().unwrap());
        assert_eq!(prod.rpo, Some(Duration::from_secs(300)));
        assert_eq!(prod.rto, Some(Duration::from_secs(1200)));
        assert_eq!(prod.drill_interval, None);
        let other = policy.targets(&"dev".parse().unwrap());
        assert_eq!(other.class, stackpin_core::posture::Class::Evaluation);
        // Without tables: single-node for everyone.
        let none = read("").unwrap();
        assert_eq!(
            none.targets(&"prod".parse().unwrap()),
            stackpin_core::posture::Class::SingleNode.targets()
        );
        for (bad, says) in [
            ("[[posture]]\nclass = \"huge\"\n", "class"),
            ("[[posture]]\nrpo = \"soon\"\n", "rpo"),
            ("[[posture]]\nenv = \"Prod!\"\n", "posture"),
            (
                "[[posture]]\n[[posture]]\n",
                "two [[posture]] tables without env",
            ),
            (
                "[[posture]]\nenv = \"a\"\n[[posture]]\nenv = \"a\"\n",
                "two [[posture]] tables for a",
            ),
        ] {
            let e = read(bad).unwrap_err();
            assert!(
                e.message().starts_with("setting posture") && e.message().contains(says),
                "{bad}: {}",
                e.message()
            );
        }
    }

    #[test]
    fn the_example_file_is_valid_and_matches_the_defaults() {
        let s: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(EXAMPLE))
            .extract()
            .unwrap();
        s.validate().unwrap();
        let d = Settings::default();
        assert_eq!(
            (s.listen, s.clock_skew, s.max_batch),
            (d.listen, d.clock_skew, d.max_batch)
        );
    }

    /// `value` as the settings would read it: durations compared as
    /// durations ("5s" and "5000ms" are one default).
    fn same_setting(a: &toml::Value, b: &str) -> bool {
        let a = match a {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        a == b
            || matches!(
                (parse_duration(&a), parse_duration(b)),
                (Ok(x), Ok(y)) if x == y
            )
    }

    #[test]
    fn the_example_file_and_the_flags_name_the_defaults_the_settings_use() {
        let defaults = toml::Value::try_from(Settings::default()).unwrap();
        let defaults = defaults.as_table().unwrap();
        // Every key the example sets is set to its default.
        let example: toml::Table = EXAMPLE.parse().unwrap();
        for (key, value) in &example {
            let Some(default) = defaults.get(key) else {
                continue; // tables of tokens and certificates
            };
            let text = match value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert!(
                same_setting(default, &text),
                "the example sets {key} = {text}; the default is {default}"
            );
        }
        // Every flag that names a default names the one the settings use.
        let command = <Flags as clap::Args>::augment_args(clap::Command::new("t"));
        let mut named = 0;
        for arg in command.get_arguments() {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let Some(text) = help
                .split("[default: ")
                .nth(1)
                .and_then(|t| t.split(']').next())
            else {
                continue;
            };
            let key = arg.get_id().as_str();
            let Some(default) = defaults.get(key) else {
                continue; // derived from another setting, e.g. <data-dir>/...
            };
            named += 1;
            assert!(
                same_setting(default, text),
                "--{key} says [default: {text}]; the settings use {default}"
            );
        }
        assert!(named >= 10, "only {named} flags name their default");
    }

    #[test]
    fn the_old_name_of_storage_allow_http_is_still_read() {
        let s: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string("s3_allow_http = true"))
            .extract()
            .unwrap();
        assert!(s.storage_options().allow_http);
    }

    #[test]
    fn memory_storage_needs_saying_so() {
        let mut settings = Settings {
            storage: Some("memory://".into()),
            ..Settings::default()
        };
        let err = settings.storage_url().unwrap_err().to_string();
        assert!(
            err.contains("storage") && err.contains("--allow-memory-storage"),
            "{err}"
        );
        settings.allow_memory_storage = true;
        assert_eq!(settings.storage_url().unwrap(), StorageUrl::Memory);
    }

    #[test]
    fn errors_name_the_key() {
        let err = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string("clock_skew = \"soon\""))
            .extract::<Settings>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("clock_skew"), "{err}");
        let err = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string("no_such_key = 1"))
            .extract::<Settings>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("no_such_key"), "{err}");
        let s = Settings {
            listen: "0.0.0.0:7070".parse().unwrap(),
            ..Settings::default()
        };
        assert!(s.validate().unwrap_err().message().contains("listen"));
    }

    #[test]
    fn flags_override_files() {
        let flags = Flags {
            clock_skew: Some("9s".into()),
            ..Flags::default()
        };
        let s: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(
                "clock_skew = \"7s\"\nboundary_margin = \"3s\"",
            ))
            .merge(Serialized::globals(&flags))
            .extract()
            .unwrap();
        assert_eq!(
            (s.clock_skew, s.boundary_margin),
            (Duration::from_secs(9), Duration::from_secs(3))
        );
    }
}
