//! Files the CLI writes: atomically, and where a proof goes beside its
//! artifact.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::exit::{Failure, Outcome};

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced,
/// then renamed over it. A reader never sees a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Outcome {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::invalid(format!("cannot create {}: {e}", dir.display())))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".stackpin-")
        .tempfile_in(&dir)
        .map_err(|e| Failure::invalid(format!("cannot write into {}: {e}", dir.display())))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("moving the download into {}: {}", path.display(), e.error))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        // Make the rename itself durable; failure here is not worth failing for.
        let _ = d.sync_all();
    }
    Ok(())
}

/// `FILE` -> `FILE.tlog-proof`.
pub fn proof_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".tlog-proof");
    PathBuf::from(name)
}
