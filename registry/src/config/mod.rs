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
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::auth::{CertConfig, TokenConfig};
use crate::defaults;
use crate::error::{Error, Result};
use crate::registry::DEFAULT_MAX_ARTIFACT_BYTES;
use crate::webhooks::WebhookConfig;

mod flags;
mod keys;
mod standby;
pub mod tokens;
mod validate;

pub use flags::{Flags, undocumented};

/// The data folder when none is set.
pub const DEFAULT_DATA_DIR: &str = defaults::DATA_DIR;
pub use keys::load_key;
pub use stackpin_core::time::parse_duration;
pub use standby::StandbyConfig;

use flags::ENV_KEYS;

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
    /// How often the settings file, the TLS files and the trusted keys are
    /// looked at; a change reloads them as SIGHUP does (0s: only SIGHUP).
    #[serde(with = "text_duration")]
    pub reload_check_interval: Duration,
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
    /// Serve the log another process writes into `storage` (a mirror, a
    /// replicated bucket), refusing every write and signing nothing.
    pub read_only: bool,
    /// The log's verifier key (C2SP signed-note vkey), which a read-only
    /// registry checks the stored checkpoints with; it holds no signing
    /// key. A writing registry ignores it.
    pub log_vkey: Option<String>,
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
    /// Storages standbys mirror this log into, read for a promotion there
    /// (`[[standby]]`).
    pub standby: Vec<StandbyConfig>,
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
            reload_check_interval: defaults::RELOAD_CHECK_INTERVAL,
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
            read_only: false,
            log_vkey: None,
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
            standby: Vec::new(),
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
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "config",
                    format!("{} is not a readable file: {e}", path.display()),
                )
            })?;
            check_toml(path, &text)?;
            figment = figment.merge(Toml::string(&text));
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
            check_toml(path, &text)?;
            figment = figment.admerge(Toml::string(&text));
        }
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| Error::invalid(format!("settings: {e}")))?;
        settings.adopt_old_log_key(None)?;
        settings.validate()?;
        Ok(settings)
    }

    /// What a start reads besides the settings, read now: the trusted
    /// keys, the TLS files, the log key (when one is named), witnesses,
    /// webhooks, tokens and posture targets. Relative paths resolve from
    /// the current folder, as they do for the registry started there.
    ///
    /// # Errors
    /// Invalid, naming the setting and the file.
    pub fn check_inputs(&self) -> Result<()> {
        if let Some(path) = &self.trusted_keys {
            stackpin_core::signing::TrustedKeys::load(path)
                .map_err(|e| invalid("trusted_keys", e))?;
        }
        self.tls().map_err(|e| Error::invalid(format!("{e:#}")))?;
        if let Some(path) = &self.log_signing_key {
            load_key(path, false, "log_signing_key")?;
        }
        self.witnesses()?;
        self.standbys()?;
        self.webhooks()?;
        self.authorizer()?;
        self.posture_policy()?;
        Ok(())
    }
}

/// Reads `text` (the settings file `path`) on its own, so that a wrong
/// type or an unknown setting is reported at its `file:line`, and an
/// unknown name with the nearest setting names.
fn check_toml(path: &std::path::Path, text: &str) -> Result<()> {
    let Err(e) = toml::from_str::<Settings>(text) else {
        return Ok(());
    };
    let at = e.span().map_or(String::new(), |span| {
        let start = span.start.min(text.len());
        let line = text[..start].matches('\n').count() + 1;
        // The line itself names the setting.
        let shown: String = text
            .lines()
            .nth(line - 1)
            .unwrap_or_default()
            .trim()
            .chars()
            .take(80)
            .collect();
        format!(":{line} ({shown})")
    });
    let message = e.message().trim().to_owned();
    let message = match message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
    {
        Some((name, _)) => {
            let known = serde_json::to_value(Settings::default()).unwrap_or_default();
            let names: Vec<&str> = known
                .as_object()
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
            format!(
                "unknown setting `{name}`{} (`stackpin-registry config example` lists them all)",
                stackpin_core::suggest::did_you_mean(name, names)
            )
        }
        None => message,
    };
    Err(Error::invalid(format!("{}{at}: {message}", path.display())))
}

/// A commented example settings file with every key.
pub const EXAMPLE: &str = include_str!("../config_example.toml");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageUrl;

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
    fn every_plain_setting_is_settable_through_the_environment() {
        let defaults = toml::Value::try_from(Settings::default()).unwrap();
        let tables = [
            "token",
            "witness",
            "standby",
            "webhook",
            "posture",
            "client_cert",
        ];
        // Old names are still read, and not written by default.
        let old = ["s3_allow_http", "log_key"];
        for key in defaults.as_table().unwrap().keys() {
            if !tables.contains(&key.as_str()) {
                assert!(ENV_KEYS.contains(&key.as_str()), "no STACKPIN_{key}");
            }
        }
        // And every variable names a setting (the file's keys and the
        // variables' are one list of fields: an unknown one is refused).
        for key in ENV_KEYS {
            let read = Figment::from(Serialized::defaults(Settings::default()))
                .merge(Serialized::default(key, "1"))
                .extract::<Settings>();
            if let Err(e) = read {
                assert!(
                    !e.to_string().contains("unknown field") || old.contains(key),
                    "STACKPIN_{key} names no setting: {e}"
                );
            }
        }
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
