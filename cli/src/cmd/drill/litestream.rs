//! A drill's SQLite side: a Litestream replica restored, or a snapshot file
//! copied and checked against its entry, and queries on the result.

use std::path::Path;

use stackpin_core::entry::SnapshotEntry;
use stackpin_core::time::Timestamp;

/// `litestream restore -timestamp` (or `-txid`) of `url` into `db`; why
/// it failed.
pub(super) async fn litestream_restore(
    litestream: &Path,
    url: &str,
    target: Timestamp,
    txid: Option<&str>,
    db: &Path,
) -> Result<(), String> {
    let (flag, value) = match txid {
        Some(txid) => ("-txid", txid.to_owned()),
        None => ("-timestamp", target.to_string()),
    };
    let out = tokio::process::Command::new(litestream)
        .args(["restore", flag, &value, "-o"])
        .arg(db)
        .arg(url)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", litestream.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        return Err(format!(
            "litestream restore {flag} {value} failed ({}): {last}",
            out.status
        ));
    }
    if !db.exists() {
        return Err(format!(
            "litestream restore {flag} {value} wrote no database (the replica holds nothing there)"
        ));
    }
    Ok(())
}

/// Copies a SQLite snapshot file to `db`, checking it against the size and
/// sha256 its snapshot entry recorded (the copy and the hashing run off the
/// runtime's thread: snapshots run to gigabytes).
pub(super) async fn copy_snapshot(
    path: &Path,
    entry: Option<&SnapshotEntry>,
    db: &Path,
) -> Result<(), String> {
    tokio::fs::copy(path, db)
        .await
        .map_err(|e| format!("copying {}: {e}", path.display()))?;
    if let Some(s) = entry {
        let (len, digest) = crate::files::hash_file(db)
            .await
            .map_err(|e| format!("reading the copy: {e}"))?;
        if let Some(size) = s.size
            && size != len
        {
            return Err(format!(
                "{} is {len} bytes; the snapshot entry recorded {size}",
                path.display(),
            ));
        }
        if let Some(d) = &s.sha256
            && *d != digest
        {
            return Err(format!(
                "{} does not match the sha256 the snapshot entry recorded ({d})",
                path.display()
            ));
        }
    }
    Ok(())
}

/// The first value of the first row `q` returns on a SQLite file.
pub(super) fn sqlite_first_value(db: &Path, q: &str) -> Result<Option<String>, String> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(db, flags)
        .map_err(|e| format!("cannot open the restored database: {e}"))?;
    let first = conn.query_row(q, [], |row| {
        Ok(match row.get_ref(0)? {
            rusqlite::types::ValueRef::Null => None,
            rusqlite::types::ValueRef::Integer(i) => Some(i.to_string()),
            rusqlite::types::ValueRef::Real(f) => Some(f.to_string()),
            rusqlite::types::ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
            rusqlite::types::ValueRef::Blob(b) => Some(format!("{} bytes", b.len())),
        })
    });
    match first {
        Err(rusqlite::Error::QueryReturnedNoRows) => Err("no rows".into()),
        Err(e) => Err(e.to_string()),
        Ok(v) => Ok(v),
    }
}
