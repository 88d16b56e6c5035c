//! A SQLite database in WAL mode, written while Litestream replicates it:
//! what the disaster-recovery tests restore from.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The litestream binary: `STACKPIN_LITESTREAM`, the one `tests/run`
/// installs into `.venv`, or the one on PATH.
pub fn litestream() -> PathBuf {
    if let Some(p) = std::env::var_os("STACKPIN_LITESTREAM") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/litestream");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("litestream")
    }
}

/// A writer that inserts a row every 50 ms recording the live release, read
/// from a file the test updates right after each pin; it stops when the
/// stop file appears.
pub const WRITER: &str = r#"
import sqlite3, sys, time, os
db, live, stop = sys.argv[1], sys.argv[2], sys.argv[3]
c = sqlite3.connect(db, isolation_level=None)
c.execute("pragma journal_mode=wal")
c.execute("create table if not exists rows (id integer primary key, at text, release text)")
while not os.path.exists(stop):
    release = open(live).read().strip()
    c.execute("insert into rows (at, release) values (strftime('%Y-%m-%dT%H:%M:%fZ','now'), ?)", (release,))
    time.sleep(0.05)
"#;

/// A child process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the writer on `db` (reading the live release from `live`) and
/// Litestream replicating it to `replica` (a URL); both stop when dropped.
pub fn replicate(db: &Path, live: &Path, stop: &Path, replica: &str) -> (Killed, Killed) {
    let writer = Killed(
        Command::new("python3")
            .arg("-c")
            .arg(WRITER)
            .arg(db)
            .arg(live)
            .arg(stop)
            .spawn()
            .expect("python3"),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let replicating = Killed(
        Command::new(litestream())
            .args(["replicate"])
            .arg(db)
            .arg(replica)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start litestream ({}): {e}; run tests/run",
                    litestream().display()
                )
            }),
    );
    (writer, replicating)
}
