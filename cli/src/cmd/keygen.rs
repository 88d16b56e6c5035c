//! `stackpin keygen`: a new Ed25519 publisher key pair.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use stackpin_core::signing::{self, PublicKey};

use crate::exit::{Failure, Outcome};
use crate::view::Format;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the private key (PKCS#8 PEM); the public key goes to
    /// the same name with `.pub.pem`.
    #[arg(long)]
    out: PathBuf,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

/// `release.pem` -> `release.pub.pem`; `release` -> `release.pub.pem`.
pub fn public_path(private: &Path) -> PathBuf {
    let name = private
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".pem").unwrap_or(&name);
    private.with_file_name(format!("{stem}.pub.pem"))
}

#[derive(Serialize)]
struct Made {
    private_key: String,
    public_key: String,
    key_id: String,
}

fn write_new(path: &Path, text: &str, mode: u32, force: bool) -> Outcome {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Failure::invalid(format!(
                "{} already exists; pass --force to replace it",
                path.display()
            ))
        } else {
            Failure::from(anyhow::anyhow!("writing {}: {e}", path.display()))
        }
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn run(args: &Args, format: Format) -> Outcome {
    let public = public_path(&args.out);
    if !args.force {
        for p in [&args.out, &public] {
            if p.exists() {
                return Err(Failure::invalid(format!(
                    "{} already exists; pass --force to replace it",
                    p.display()
                )));
            }
        }
    }
    let key = signing::generate_key()?;
    let public_key = PublicKey::new(key.verifying_key());
    write_new(
        &args.out,
        &signing::signing_key_to_pem(&key)?,
        0o600,
        args.force,
    )?;
    write_new(&public, &public_key.to_pem()?, 0o644, args.force)?;
    let made = Made {
        private_key: args.out.display().to_string(),
        public_key: public.display().to_string(),
        key_id: public_key.id().to_string(),
    };
    format.emit(&made, || {
        format!(
            "private key {}\npublic key  {}\nkey id      {}\n",
            made.private_key, made.public_key, made.key_id
        )
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_path_sits_beside_the_private_key() {
        assert_eq!(
            public_path(Path::new("a/release.pem")),
            Path::new("a/release.pub.pem")
        );
        assert_eq!(
            public_path(Path::new("release")),
            Path::new("release.pub.pem")
        );
    }
}
