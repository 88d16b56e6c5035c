//! Checks of the merged settings, and what they are turned into: the
//! witnesses, webhooks, posture policy, authorizer, state-machine limits
//! and storage the server runs with. Every error names its key.

use std::time::Duration;

use super::{Settings, invalid};
use crate::auth::Authorizer;
use crate::error::Result;
use crate::registry::Limits;
use crate::storage::{StorageOptions, StorageUrl};

impl Settings {
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
        self.standbys()?;
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
        if self.read_only {
            self.check_read_only()?;
        }
        Ok(())
    }

    /// What a read-only registry needs: the log's verifier key, storage of
    /// its own (the data folder keeps the index), and nothing that writes.
    fn check_read_only(&self) -> Result<()> {
        self.log_verifier()?;
        let storage = self.storage_url()?;
        if storage == StorageUrl::File(self.data_dir.clone()) {
            return Err(invalid(
                "storage",
                "read_only serves a log another process writes: name it with storage \
                 (file:///path/to/mirror, s3://…, az://…); data_dir keeps this registry's index",
            ));
        }
        if storage == StorageUrl::Memory {
            return Err(invalid(
                "storage",
                "read_only serves stored data: not memory://",
            ));
        }
        if !self.standby.is_empty() {
            return Err(invalid(
                "standby",
                "a read-only registry writes nothing, so there is no promotion for it to stop \
                 at: [[standby]] is the writer's setting",
            ));
        }
        for (key, set) in [
            ("witness", !self.witness.is_empty()),
            ("webhook", !self.webhook.is_empty()),
        ] {
            if set {
                return Err(invalid(
                    key,
                    "a read-only registry signs nothing and sends nothing: the registry that \
                 writes the log does that",
                ));
            }
        }
        Ok(())
    }

    /// The log's verifier key a read-only registry checks with (log_vkey).
    ///
    /// # Errors
    /// Invalid when it is missing or does not parse.
    pub fn log_verifier(&self) -> Result<crate::note::NoteVerifier> {
        let text = self.log_vkey.as_deref().ok_or_else(|| {
            invalid(
                "log_vkey",
                "read_only needs the log's verifier key (--log-vkey, STACKPIN_LOG_VKEY or \
                 log_vkey; `stackpin-registry key` on the writer prints it): the stored \
                 checkpoints are checked with it",
            )
        })?;
        crate::note::NoteVerifier::parse(text.trim()).map_err(|e| invalid("log_vkey", e))
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

    /// The TLS of both listeners these settings describe (reads the
    /// files); `None` without `tls_cert` and `tls_key`.
    ///
    /// # Errors
    /// When a file cannot be read or parsed, naming the setting.
    pub fn tls(&self) -> anyhow::Result<Option<crate::tls::Tls>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                crate::tls::Tls::load(cert, key, self.client_ca.as_deref()).map(Some)
            }
            _ => Ok(None),
        }
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
        if url.is_shared() && self.log_signing_key.is_none() && !self.read_only {
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
}
