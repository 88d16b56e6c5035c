//! The flags of `stackpin-registry` (the top layer of the settings) and
//! the keys settable through the environment (`STACKPIN_<KEY>`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

use super::LogFormat;

/// The keys settable through the environment (`STACKPIN_<KEY>`).
pub(super) const ENV_KEYS: &[&str] = &[
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
    "reload_check_interval",
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
    "read_only",
    "log_vkey",
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

/// Every option, argument and subcommand of `cmd` (recursively) that has
/// no help line, by command path: the binaries' tests fail on any.
pub fn undocumented(cmd: &clap::Command, path: &str) -> Vec<String> {
    let here = format!("{path} {}", cmd.get_name()).trim().to_owned();
    let mut out: Vec<String> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !["help", "version"].contains(&a.get_id().as_str()))
        .filter(|a| a.get_help().is_none_or(|h| h.to_string().trim().is_empty()))
        .map(|a| format!("{here} {}", a.get_id()))
        .collect();
    for sub in cmd.get_subcommands() {
        if sub.get_about().is_none() && sub.get_name() != "help" {
            out.push(format!("{here} {} (no about)", sub.get_name()));
        }
        out.extend(undocumented(sub, &here));
    }
    out
}

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
    /// How often the settings, TLS and trusted-key files are looked at for
    /// a change, which reloads them as SIGHUP does; 0s: only SIGHUP [default: 10s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload_check_interval: Option<String>,
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
    /// Serve the log another process writes into --storage (a mirror, a
    /// replicated bucket): every read, no write, nothing signed.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// The log's verifier key (vkey), for --read-only: the stored
    /// checkpoints are checked with it.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_vkey: Option<String>,
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
