//! `[[standby]]`: the storage a standby mirrors this log into, which a
//! writer reads for a promotion there (see `registry::Standby`).

use serde::{Deserialize, Serialize};

use super::{Settings, invalid};
use crate::error::Result;
use crate::storage::{StorageOptions, StorageUrl};

/// A standby's storage, read for a promotion of the log there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandbyConfig {
    /// The storage the standby's mirror writes: s3://bucket/prefix,
    /// az://container/prefix or file:///path.
    pub storage: String,
    /// The endpoint of its S3-compatible server [default: s3_endpoint].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    /// Its Azure blob endpoint [default: azure_endpoint].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_endpoint: Option<String>,
}

impl Settings {
    /// The standbys these settings name, with this registry's storage
    /// options (timeouts, plain-HTTP rule) and their own endpoints; nothing
    /// is opened yet. One that names this registry's own storage (a
    /// promoted standby started with its old primary's settings) is left
    /// out: [`Settings::own_standbys`] names it for a warning.
    ///
    /// # Errors
    /// Invalid for a malformed or memory:// storage, or one named twice.
    pub fn standbys(&self) -> Result<Vec<crate::registry::Standby>> {
        let mut out: Vec<crate::registry::Standby> = Vec::new();
        let mut seen: Vec<(StorageUrl, Option<String>, Option<String>)> = Vec::new();
        for s in &self.standby {
            let (url, options) = self.standby_storage(s)?;
            let reached = (
                url.clone(),
                options.endpoint.clone(),
                options.azure_endpoint.clone(),
            );
            if seen.contains(&reached) {
                return Err(invalid("standby", format!("{} is named twice", s.storage)));
            }
            seen.push(reached);
            if !self.is_own(&url, &options)? {
                out.push(crate::registry::Standby::new(
                    s.storage.clone(),
                    url,
                    options,
                ));
            }
        }
        Ok(out)
    }

    /// The `[[standby]]` storages that are this registry's own (left out
    /// by [`Settings::standbys`]).
    ///
    /// # Errors
    /// As [`Settings::standbys`].
    pub fn own_standbys(&self) -> Result<Vec<&str>> {
        let mut own = Vec::new();
        for s in &self.standby {
            let (url, options) = self.standby_storage(s)?;
            if self.is_own(&url, &options)? {
                own.push(s.storage.as_str());
            }
        }
        Ok(own)
    }

    /// A standby's storage URL and options, checked.
    fn standby_storage(&self, s: &StandbyConfig) -> Result<(StorageUrl, StorageOptions)> {
        let url = StorageUrl::parse(&s.storage).map_err(|e| invalid("standby", e))?;
        if url == StorageUrl::Memory {
            return Err(invalid(
                "standby",
                "memory:// holds no standby: name the storage its mirror writes",
            ));
        }
        let mut options = self.storage_options();
        if let Some(endpoint) = &s.s3_endpoint {
            options.endpoint = Some(endpoint.clone());
        }
        if let Some(endpoint) = &s.azure_endpoint {
            options.azure_endpoint = Some(endpoint.clone());
        }
        crate::storage::check_endpoints(&url, &options).map_err(|e| invalid("standby", e))?;
        Ok((url, options))
    }

    /// Whether `url` reached with `options` is this registry's own storage.
    fn is_own(&self, url: &StorageUrl, options: &StorageOptions) -> Result<bool> {
        Ok(*url == self.storage_url()?
            && options.endpoint == self.s3_endpoint
            && options.azure_endpoint == self.azure_endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(standby: &[&str]) -> Settings {
        Settings {
            storage: Some("s3://primary/log".to_owned()),
            log_signing_key: Some("log.pem".into()),
            standby: standby
                .iter()
                .map(|s| StandbyConfig {
                    storage: (*s).to_owned(),
                    s3_endpoint: None,
                    azure_endpoint: None,
                })
                .collect(),
            ..Settings::default()
        }
    }

    fn refusal(standby: &[&str]) -> String {
        match with(standby).standbys() {
            Ok(_) => panic!("{standby:?} was accepted"),
            Err(e) => e.message().to_owned(),
        }
    }

    #[test]
    fn a_standby_is_another_real_storage_named_once() {
        let folder = tempfile::tempdir().unwrap();
        let absent = folder.path().join("absent");
        let url = format!("file://{}", absent.display());
        assert_eq!(
            with(&["s3://standby/log", &url])
                .standbys()
                .map(|s| s.len()),
            Ok(2)
        );
        assert!(!absent.exists(), "checking the settings created the folder");
        assert!(refusal(&["memory://"]).contains("memory:// holds no standby"));
        let own = with(&["s3://primary/log", "s3://standby/log"]);
        assert_eq!(own.standbys().map(|s| s.len()), Ok(1));
        assert_eq!(own.own_standbys(), Ok(vec!["s3://primary/log"]));
        assert!(refusal(&["s3://standby/log", "s3://standby/log/"]).contains("named twice"));
        assert!(refusal(&["s3://b"]).contains("not an S3 bucket name"));
    }
}
