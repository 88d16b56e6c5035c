//! Key files: the log's signing key, read from its setting or generated
//! in the data folder on first start.

use std::path::Path;

use super::{Settings, invalid};
use crate::error::{Error, Kind, Result};
use crate::note::NoteSigner;
use crate::registry::OriginSource;
use crate::signing;

impl Settings {
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
        // Every epoch of the log is signed under the log's name.
        let (name, _) = crate::note::split_epoch(&origin);
        let signer = NoteSigner::new(name, key).map_err(|e| invalid("log_origin", e))?;
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
