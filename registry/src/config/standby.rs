//! `[[standby]]`: the storage a standby mirrors this log into, which a
//! writer reads for a promotion there (see `registry::Standby`).

use serde::{Deserialize, Serialize};

use super::{Settings, invalid};
use crate::error::Result;
use crate::storage::StorageUrl;

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
    /// The standbys these settings name, opened with this registry's
    /// storage options (timeouts, plain-HTTP rule) and their own
    /// endpoints.
    ///
    /// # Errors
    /// Invalid for a malformed or memory:// storage, this registry's own
    /// storage, or one named twice.
    pub fn standbys(&self) -> Result<Vec<crate::registry::Standby>> {
        let mut out: Vec<crate::registry::Standby> = Vec::new();
        for s in &self.standby {
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
            let own = self.storage_url()?;
            if url == own
                && options.endpoint == self.s3_endpoint
                && options.azure_endpoint == self.azure_endpoint
            {
                return Err(invalid(
                    "standby",
                    format!(
                        "{} is this registry's own storage: a standby's is another",
                        s.storage
                    ),
                ));
            }
            if out.iter().any(|o| o.label == s.storage) {
                return Err(invalid("standby", format!("{} is named twice", s.storage)));
            }
            let store = crate::storage::open(&url, &options).map_err(|e| invalid("standby", e))?;
            out.push(crate::registry::Standby::new(s.storage.clone(), store));
        }
        Ok(out)
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
        let folder = format!("file://{}", folder.path().display());
        assert_eq!(
            with(&["s3://standby/log", &folder])
                .standbys()
                .map(|s| s.len()),
            Ok(2)
        );
        assert!(refusal(&["memory://"]).contains("memory:// holds no standby"));
        assert!(refusal(&["s3://primary/log"]).contains("this registry's own storage"));
        assert!(refusal(&["s3://standby/log", "s3://standby/log"]).contains("named twice"));
        assert!(refusal(&["s3://b"]).contains("not an S3 bucket name"));
    }
}
