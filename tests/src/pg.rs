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

/// The frame of the backup-tool tests: a primary on a socket in `dir`,
/// pins of `env` recording its LSN, 100 rows per release, stackpin run as
/// postgres (with `vars`, the tool's settings, in its environment), and
/// copies checked after recovery.
pub struct Scenario<'w> {
    pub world: &'w crate::world::World,
    pub dir: PathBuf,
    pub primary: Cluster,
    pub env: &'static str,
    pub vars: Vec<(String, String)>,
}

impl<'w> Scenario<'w> {
    /// A scenario in `dir` (made readable for postgres), the primary not
    /// yet created.
    pub fn new(world: &'w crate::world::World, dir: &Path, port: u16, env: &'static str) -> Self {
        std::fs::create_dir_all(dir.join("sock")).unwrap();
        let mut perms = std::fs::metadata(dir).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(dir, perms).unwrap();
        Self {
            world,
            dir: dir.to_owned(),
            primary: Cluster {
                data: dir.join("primary"),
                sock: dir.join("sock"),
                port,
            },
            env,
            vars: Vec::new(),
        }
    }

    fn vars(&self) -> Vec<(&str, &str)> {
        self.vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Starts the primary (with the tool's settings in its environment)
    /// and makes the tables.
    pub fn start(&self) {
        ok(self.primary.start_env(&self.vars()), "starting the primary");
        self.primary
            .sql("CREATE TABLE rows (release text NOT NULL, n int NOT NULL)");
        self.primary.sql("CREATE TABLE ticks (n int)");
    }

    /// Pins `release` with the primary's LSN, then waits out the boundary
    /// margin (2 s).
    pub fn pin(&self, release: &str) {
        let lsn = self.primary.sql("SELECT pg_current_wal_lsn()");
        self.world
            .cli(&[
                "pin",
                "--env",
                self.env,
                "--new-env",
                "--release-id",
                release,
                "--db-lsn",
                &lsn,
            ])
            .ok();
        std::thread::sleep(std::time::Duration::from_millis(2200));
    }

    /// Writes the release's 100 rows.
    pub fn insert(&self, release: &str) {
        self.primary.sql(&format!(
            "INSERT INTO rows SELECT '{release}', g FROM generate_series(1, 100) g"
        ));
    }

    /// An instant and an LSN to restore to, then WAL moved on and the
    /// margin waited out, so the next pin is clear of them.
    pub fn mark(&self) -> (String, String) {
        let at = self.primary.now();
        let lsn = self.primary.sql("SELECT pg_current_wal_lsn()");
        self.primary.sql("INSERT INTO ticks VALUES (1)");
        std::thread::sleep(std::time::Duration::from_millis(2200));
        (at, lsn)
    }

    /// `stackpin --output json ARGS --log-key …` as postgres, with its own
    /// state folder; exit code, stdout, stderr.
    pub fn stackpin(&self, args: &[&str]) -> (i32, String, String) {
        let state = self.dir.join("state");
        let mut all = vec!["--state-dir", state.to_str().unwrap(), "--output", "json"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--log-key", &self.world.vkey]);
        let server = self.world.server.url();
        let mut vars = self.vars();
        vars.extend([
            ("STACKPIN_SERVER", server.as_str()),
            ("TMPDIR", self.dir.to_str().unwrap()),
        ]);
        as_postgres(&crate::bin("stackpin"), &all, &vars)
    }

    /// [`Scenario::stackpin`] that must succeed; its JSON.
    pub fn stackpin_json(&self, args: &[&str]) -> serde_json::Value {
        let (code, stdout, stderr) = self.stackpin(args);
        assert_eq!(code, 0, "stackpin {args:?}:\n{stdout}\n{stderr}");
        serde_json::from_str(&stdout).unwrap()
    }

    /// Runs `script` as postgres (a printed restore), starts the copy it
    /// made, waits for its promotion and checks it holds exactly the rows
    /// of rel-1 to rel-`upto`.
    pub fn recovers(&self, script: &str, copy: &Cluster, upto: u32) {
        let (code, out, err) = as_postgres(Path::new("bash"), &["-c", script], &self.vars());
        assert_eq!(code, 0, "{script}\n{out}\n{err}");
        let started = copy.start_env(&self.vars());
        assert!(
            started.status.success(),
            "{script}: PostgreSQL did not start:\n{}",
            copy.log()
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while copy.sql("SELECT pg_is_in_recovery()") != "f" {
            assert!(
                std::time::Instant::now() < deadline,
                "no promotion:\n{}",
                copy.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let want: Vec<String> = (1..=upto).map(|j| format!("rel-{j}:100")).collect();
        assert_eq!(rows(copy), want.join(","), "{script}");
        copy.stop();
    }

    /// `drill run --env ENV ARGS` as postgres, with the world's trusted
    /// keys copied where postgres can read them.
    pub fn drill(&self, args: &[&str]) -> (i32, String, String) {
        let trusted = self.dir.join("trusted");
        if !trusted.exists() {
            std::fs::create_dir(&trusted).unwrap();
            for e in std::fs::read_dir(self.world.dir.path().join("trusted")).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), trusted.join(e.file_name())).unwrap();
            }
            chown_postgres(&self.dir);
        }
        let mut all = vec![
            "drill",
            "run",
            "--env",
            self.env,
            "--pg-bin",
            BIN,
            "--trusted-keys",
            trusted.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        self.stackpin(&all)
    }

    /// A drill that must pass; its JSON, checked to record `driver` and
    /// the release it paired.
    pub fn drill_passes(&self, args: &[&str], driver: &str, release: &str) -> serde_json::Value {
        let (code, stdout, stderr) = self.drill(args);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        let ran: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(ran["entry"]["driver"], driver, "{ran}");
        assert_eq!(ran["entry"]["passed"], true, "{ran}");
        assert_eq!(ran["entry"]["live"]["release_id"], release, "{ran}");
        ran
    }

    /// How many entries `snapshot list` or `drill list` shows.
    pub fn count(&self, what: &str) -> usize {
        self.world
            .cli(&["--output", "json", what, "list", "--env", self.env])
            .json()["entries"]
            .as_array()
            .unwrap()
            .len()
    }
}
