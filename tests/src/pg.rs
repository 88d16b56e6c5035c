//! PostgreSQL 15 for the tests that recover real servers: its programs
//! run as the unprivileged `postgres` user when the tests run as root
//! (initdb refuses root), on unix sockets in temporary folders.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs a PostgreSQL program as the `postgres` user when this is root.
pub fn pg(program: &str, args: &[&str]) -> Output {
    pg_env(program, args, &[])
}

/// [`pg`] with `env` added to the program's environment.
pub fn pg_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let path = format!("{BIN}/{program}");
    assert!(
        Path::new(&path).exists(),
        "{path} is missing: install Debian's postgresql-15 (tests/run does, as root)"
    );
    let root = is_root();
    let mut command = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(&path)
    };
    command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Whether this process runs as root (its /proc entry is root's).
pub fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
    })
}

pub fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub struct Cluster {
    pub data: PathBuf,
    pub sock: PathBuf,
    pub port: u16,
}

impl Cluster {
    /// `initdb`, then settings for a unix socket only (no TCP) and
    /// `extra`, appended to postgresql.conf.
    pub fn init(&self, extra: &str) {
        ok(
            pg(
                "initdb",
                &[
                    "-D",
                    self.data.to_str().unwrap(),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "--no-sync",
                ],
            ),
            "initdb",
        );
        append(
            &self.data.join("postgresql.conf"),
            &format!(
                "listen_addresses = ''\nunix_socket_directories = '{}'\nport = {}\nfsync = \
                 off\n{extra}",
                self.sock.display(),
                self.port
            ),
        );
    }

    /// The current time to the microsecond, as RFC 3339 in UTC.
    pub fn now(&self) -> String {
        self.sql(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
    }

    pub fn sql(&self, sql: &str) -> String {
        let port = self.port.to_string();
        ok(
            pg(
                "psql",
                &[
                    "-h",
                    self.sock.to_str().unwrap(),
                    "-p",
                    &port,
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-XAtqc",
                    sql,
                ],
            ),
            sql,
        )
        .trim()
        .to_owned()
    }

    pub fn start(&self) -> Output {
        self.start_env(&[])
    }

    /// Starts the server with `env` in its environment (its
    /// restore_command and archive_command see it).
    pub fn start_env(&self, env: &[(&str, &str)]) -> Output {
        let log = self.data.with_extension("log");
        pg_env(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
            env,
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    pub fn stop(&self) {
        let _ = pg(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn append(path: &Path, lines: &str) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "\n{lines}").unwrap();
}

pub fn chown_postgres(path: &Path) {
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

/// Runs a command as the `postgres` user when this is root.
pub fn as_postgres(program: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The rows per release, as `rel-1:100,rel-2:100`.
pub fn rows(c: &Cluster) -> String {
    c.sql(
        "SELECT string_agg(release || ':' || c, ',' ORDER BY release) FROM \
         (SELECT release, count(*) AS c FROM rows GROUP BY release) r",
    )
}
