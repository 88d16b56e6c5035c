//! Files the CLI reads and writes: writes made atomically, where a proof
//! goes beside its artifact, folders copied whole, and the one streaming
//! digest of large files (database snapshots).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use stackpin_core::digest::Digest;

use crate::exit::{Failure, Outcome};

/// Writes `bytes` to `path` atomically (see [`write_all_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Outcome {
    write_all_atomic(&[(path, bytes)])
}

/// The folder `path` is written into (`.` for a bare name).
fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Checks that `path` is not a folder and creates the folder it goes in;
/// that folder.
fn prepare(path: &Path) -> Outcome<PathBuf> {
    if path.is_dir() {
        return Err(Failure::invalid(format!(
            "{} is a folder, not a file; nothing was written",
            path.display()
        )));
    }
    let dir = dir_of(path);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::invalid(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Checks that `path` can be written as a file (its folder created if
/// need be), before anything that depends on writing it is done.
///
/// # Errors
/// Invalid when `path` is a folder or its folder cannot be written into.
pub fn writable(path: &Path) -> Outcome {
    let dir = prepare(path)?;
    tempfile::Builder::new()
        .prefix(".stackpin-")
        .tempfile_in(&dir)
        .map_err(|e| Failure::invalid(format!("cannot write into {}: {e}", dir.display())))?;
    Ok(())
}

/// Writes several files as one step: every target is checked first (none
/// may be a folder), each is written to a temporary file beside it and
/// synced, and only then are all renamed over their targets, with no await
/// in between, so an interrupt replaces all or none. A failure before the
/// renames leaves every target as it was; temporaries are removed when they
/// drop. A new file gets the mode the umask gives (as `cp` would); a
/// replaced file keeps its mode.
pub fn write_all_atomic(files: &[(&Path, &[u8])]) -> Outcome {
    for (path, _) in files {
        prepare(path)?;
    }
    let mut staged = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        let dir = dir_of(path);
        let mut tmp = tempfile::Builder::new()
            .prefix(".stackpin-")
            .tempfile_in(&dir)
            .map_err(|e| Failure::invalid(format!("cannot write into {}: {e}", dir.display())))?;
        tmp.write_all(bytes)
            .and_then(|()| set_mode(tmp.as_file(), path))
            .and_then(|()| tmp.as_file().sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
        staged.push((tmp, *path, dir));
    }
    for (tmp, path, dir) in staged {
        tmp.persist(path)
            .map_err(|e| anyhow::anyhow!("moving the file into {}: {}", path.display(), e.error))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            // Make the rename itself durable; failure here is not worth failing for.
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Gives the temporary for `target` the mode `target` has, or the one a new
/// file gets under the process's umask.
#[cfg(unix)]
fn set_mode(tmp: &std::fs::File, target: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = match std::fs::metadata(target) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(_) => 0o666 & !umask(),
    };
    tmp.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_tmp: &std::fs::File, _target: &Path) -> std::io::Result<()> {
    Ok(())
}

/// The process's umask, read from /proc (reading it through umask(2) would
/// change it); 022 where /proc does not say.
#[cfg(unix)]
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Copies the folder `from` to `to`, recursively; sockets and other
/// special files are skipped.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let kind = e.file_type()?;
        let target = to.join(e.file_name());
        if kind.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(e.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &target)?;
        }
    }
    Ok(())
}

/// `FILE` -> `FILE.tlog-proof`.
pub fn proof_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".tlog-proof");
    PathBuf::from(name)
}

/// The size and digest of the file at `path`, read in 1 MiB pieces (a
/// database snapshot can be larger than memory, and runs to gigabytes, so
/// the hashing shows progress). It runs on a blocking thread: the CLI's
/// runtime has a single thread, which must stay free to see Ctrl-C.
///
/// # Errors
/// The error opening or reading the file.
pub async fn hash_file(path: &Path) -> std::io::Result<(u64, Digest)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || hash_file_blocking(&path))
        .await
        .map_err(std::io::Error::other)?
}

fn hash_file_blocking(path: &Path) -> std::io::Result<(u64, Digest)> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut progress =
        (len >= 64 * 1024 * 1024).then(|| crate::progress::Progress::bytes("hashing", len));
    let mut hasher = stackpin_core::digest::Hasher::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            if let Some(p) = progress {
                p.finish();
            }
            return Ok((done, hasher.finish()));
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        if let Some(p) = progress.as_mut() {
            p.set(done);
        }
    }
}

/// Says on stderr that `path` exists and is about to be replaced (a
/// restore or fetch never replaces a file silently).
pub fn say_replaced(path: &Path) {
    if path.exists() {
        eprintln!("note: replacing the existing {}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use stackpin_core::digest::Digest;

    #[tokio::test]
    async fn the_streaming_digest_is_the_digest_of_the_whole_file() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("snapshot.db");
        // More than one 1 MiB piece, and not a whole number of them.
        let bytes: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let (len, digest) = super::hash_file(&path).await.expect("hash");
        assert_eq!(len, bytes.len() as u64);
        assert_eq!(digest, Digest::of(&bytes));
    }
}
