//! Harness for end-to-end tests: the real `stackpin-registry` binary on
//! 127.0.0.1:0 with a scratch data folder, driven by the real `stackpin` CLI.
//!
//! The binaries are found beside the test executable (`target/<profile>/`),
//! so the workspace's binaries must be built first (`cargo build --workspace`,
//! which the README's test command does).

pub mod certs;
pub mod drill;
pub mod faults;
pub mod litestream;
pub mod lying;
pub mod oci;
pub mod pg;
pub mod remote;
pub mod s3;
pub mod tlog;
pub mod witness;
pub mod world;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `target/<profile>/`, where cargo puts the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Tests live in target/<profile>/deps/, binaries (crash-drill) in
    // target/<profile>/ itself.
    let dir = exe.parent().expect("executables live in a folder");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary, checked to exist.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// A running registry process.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    log: Arc<Mutex<String>>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts `stackpin-registry` on 127.0.0.1:0 (unless `extra` has its own
    /// `--listen`, kept across restarts) over `data_dir` with extra
    /// flags, and waits until it listens.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// As [`Self::start`], with `cwd` as the working directory (relative
    /// paths in settings files resolve from it).
    pub fn start_in(cwd: &Path, data_dir: &Path, extra: &[&str]) -> Self {
        let args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        Self::try_spawn_in(Some(cwd), data_dir, args, Vec::new())
            .unwrap_or_else(|log| panic!("stackpin-registry did not start; its log:\n{log}"))
    }

    /// As [`Self::start`], with extra environment variables.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, String)]) -> Self {
        Self::try_start_with_env(data_dir, extra, env)
            .unwrap_or_else(|log| panic!("stackpin-registry did not start; its log:\n{log}"))
    }

    /// Starts the server but expects it may refuse to start: returns its
    /// log when it exits before listening.
    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Self, String> {
        let args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        Self::try_spawn(data_dir, args, Vec::new())
    }

    /// As [`Self::try_start`], with extra environment variables.
    pub fn try_start_with_env(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Result<Self, String> {
        let args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        Self::try_spawn(data_dir, args, env)
    }

    fn spawn(data_dir: &Path, args: Vec<String>, env: Vec<(String, String)>) -> Self {
        Self::try_spawn(data_dir, args, env)
            .unwrap_or_else(|log| panic!("stackpin-registry did not start; its log:\n{log}"))
    }

    fn try_spawn(
        data_dir: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Result<Self, String> {
        Self::try_spawn_in(None, data_dir, args, env)
    }

    fn try_spawn_in(
        cwd: Option<&Path>,
        data_dir: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Result<Self, String> {
        let mut command = Command::new(bin("stackpin-registry"));
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let mut child = command
            .arg("--data-dir")
            .arg(data_dir)
            .args(if args.iter().any(|a| a == "--listen") {
                &[][..]
            } else {
                &["--listen", "127.0.0.1:0"][..]
            })
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start stackpin-registry");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                {
                    let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let deadline = Duration::from_secs(60);
        let addr = match rx.recv_timeout(deadline) {
            Ok(addr) => addr.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
                return Err(log);
            }
        };
        Ok(Self {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            log,
            args,
            env,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server URL for `--server`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address of the tlog-tiles listener (`--http-listen`), as the
    /// server logged it.
    pub fn tiles_addr(&self) -> std::net::SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(addr) = self
                .log()
                .split("serving tlog-tiles on ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
            {
                return addr.parse().expect("tiles address");
            }
            assert!(
                Instant::now() < deadline,
                "no tiles listener:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Kills the process without warning (SIGKILL).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the process to stop (SIGTERM) and waits for its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                panic!("stackpin-registry did not stop within 20s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops gracefully (SIGTERM), and starts again with the same folder
    /// and flags: how long the stop took, and the new process.
    pub fn stop_and_restart(self) -> (Duration, Self) {
        let (dir, args, env) = (self.data_dir.clone(), self.args.clone(), self.env.clone());
        let asked = Instant::now();
        let status = self.stop();
        let took = asked.elapsed();
        assert!(status.success(), "graceful stop exited with {status}");
        (took, Self::spawn(&dir, args, env))
    }

    /// Stops gracefully and starts again with the same folder and flags.
    pub fn restart(self) -> Self {
        let (dir, args, env) = (self.data_dir.clone(), self.args.clone(), self.env.clone());
        let status = self.stop();
        assert!(status.success(), "graceful stop exited with {status}");
        Self::spawn(&dir, args, env)
    }

    /// Kills without warning and starts again with the same folder and flags.
    pub fn crash_and_restart(self) -> Self {
        let (dir, args, env) = (self.data_dir.clone(), self.args.clone(), self.env.clone());
        self.kill();
        Self::spawn(&dir, args, env)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a CLI run produced.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success:\n{self:#?}");
        &self.stdout
    }

    /// Asserts the exit code and that stderr mentions `needle`.
    pub fn fails(&self, code: i32, needle: &str) -> &Self {
        assert_eq!(self.code, code, "expected exit {code}:\n{self:#?}");
        assert!(
            self.stderr.contains(needle),
            "expected stderr to mention {needle:?}:\n{self:#?}"
        );
        self
    }

    /// Parses stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self:#?}"))
    }
}

/// Runs the `stackpin` CLI in `cwd` against `server` (a URL).
pub fn stackpin(cwd: &Path, server: &str, args: &[&str]) -> Run {
    stackpin_with(cwd, server, args, &[])
}

/// As [`stackpin`], with variables set in its environment.
pub fn stackpin_with(cwd: &Path, server: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(bin("stackpin"))
        .current_dir(cwd)
        .env("STACKPIN_SERVER", server)
        // Keys and checkpoints a run remembers stay with its working folder:
        // tests reuse loopback ports, and a key remembered for one test's
        // server would be checked against another's.
        .env("STACKPIN_STATE_DIR", cwd.join(".stackpin-state"))
        .env_remove("STACKPIN_TRUSTED_KEYS")
        .env_remove("STACKPIN_LOG_VKEY")
        .env_remove("STACKPIN_REQUIRE_VERIFIED")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run stackpin");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A small tmpfs mounted at a folder for the life of the value (needs root,
/// as CI runs): a data dir that can fill up.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Creates `path` and mounts a tmpfs of `size_mib` there.
    pub fn mount(path: &Path, size_mib: u32) -> Self {
        std::fs::create_dir_all(path).expect("create the mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            mounted.success(),
            "mounting a tmpfs failed: this test needs root (CI runs as root)"
        );
        Self(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The log entry files in a data folder, sorted.
pub fn log_entries(data_dir: &Path) -> Vec<String> {
    let dir = data_dir.join("log/entries");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && !n.contains('#'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The blob files in a data folder, sorted.
pub fn blobs(data_dir: &Path) -> Vec<String> {
    let dir = data_dir.join("blobs/sha256");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Asserts that nothing partial is left among a data folder's blobs: every
/// blob file hashes to its name and no staging file remains.
pub fn assert_blobs_whole(data_dir: &Path) {
    for name in blobs(data_dir) {
        assert!(
            !name.contains('#'),
            "a staging file was left behind: {name}"
        );
        let bytes = std::fs::read(data_dir.join("blobs/sha256").join(&name)).expect("read a blob");
        let digest = stackpin_core::digest::Digest::of(&bytes);
        assert_eq!(digest.hex(), name, "partial blob {name}");
    }
}

/// A registry on `dir/data` with the HTTP listener on and one token,
/// `name` with the read role, as its only settings: the server and the
/// token.
#[allow(clippy::unwrap_used)] // a test fixture: failing loudly is the point
pub fn start_with_read_token(dir: &Path, name: &str) -> (Server, String) {
    let (token, entry) = create_token(dir, name, &["read"]);
    let cfg = dir.join("tokens.toml");
    std::fs::write(&cfg, &entry).unwrap();
    let server = Server::start(
        &dir.join("data"),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    (server, token)
}

/// `stackpin-registry token create` in `dir`: the token, and the settings
/// entry to add for it.
pub fn create_token(dir: &Path, name: &str, roles: &[&str]) -> (String, String) {
    create_scoped_token(dir, name, roles, &[])
}

/// [`create_token`] for a token scoped to `envs`.
#[allow(clippy::unwrap_used)] // a test fixture: failing loudly is the point
pub fn create_scoped_token(
    dir: &Path,
    name: &str,
    roles: &[&str],
    envs: &[&str],
) -> (String, String) {
    let mut args = vec!["token", "create", "--name", name];
    for r in roles {
        args.extend(["--role", r]);
    }
    for e in envs {
        args.extend(["--env", e]);
    }
    let out = Command::new(bin("stackpin-registry"))
        .current_dir(dir)
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find(|l| l.starts_with("sp_"))
        .unwrap()
        .to_owned();
    let entry = text
        .split("add to the settings file:\n")
        .nth(1)
        .unwrap()
        .to_owned();
    (token, entry)
}

/// Copies the folder `from` into `to` (created), files and subfolders.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    let listing = std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    for e in listing {
        let e = e.unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        let target = to.join(e.file_name());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target)
                .unwrap_or_else(|err| panic!("copying {}: {err}", e.path().display()));
        }
    }
}
