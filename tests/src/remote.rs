//! Remote object stores for tests, behind one trait so the storage
//! conformance suite and the crash drill run on each the same way:
//! SeaweedFS and moto (two S3 implementations) and Azurite (Azure Blob).
//!
//! Every server binds 127.0.0.1 on free ports, keeps its data in a scratch
//! folder, and is killed when dropped. moto comes from the PyPI package
//! `moto[server]` and Azurite from the npm package `azurite`; `tests/run`
//! installs both (into `.venv` and `.npm`), or set `STACKPIN_MOTO` /
//! `STACKPIN_AZURITE` to their binaries.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use stackpin_registry::storage::StorageOptions;
use tempfile::TempDir;

use crate::s3::{BUCKET, free_port};

/// A running object store the registry can use.
pub trait Remote {
    /// What the report and panics call it.
    fn name(&self) -> &'static str;
    /// The `--storage` URL of `prefix` on it.
    fn storage_url(&self, prefix: &str) -> String;
    /// Flags the registry needs besides `--storage` (its endpoint).
    fn server_args(&self) -> Vec<String>;
    /// Environment the registry needs (credentials).
    fn env(&self) -> Vec<(&'static str, String)>;
    /// Options for opening it in-process.
    fn options(&self) -> StorageOptions;
}

fn workspace_tool(var: &str, relative: &str, fallback: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    if local.exists() {
        return local;
    }
    PathBuf::from(fallback)
}

/// A server process, killed and reaped when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with its stderr in `dir/name.log`, and waits up to 60 s for
/// `ready`.
fn spawn(mut cmd: Command, dir: &TempDir, name: &str, ready: impl Fn() -> bool) -> Process {
    let log_path = dir.path().join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("{name} log: {e}"));
    let mut child = cmd
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {name} ({:?}): {e}; install it with `tests/run`",
                cmd.get_program()
            )
        });
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if ready() {
            return Process(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("{name} exited at start ({status}); its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    panic!("{name} was not ready within 60s; its log:\n{log}");
}

/// One HTTP/1.1 request to 127.0.0.1:`port`; the status code, if any.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, String)]) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).ok()?;
    std::str::from_utf8(&status[9..12]).ok()?.parse().ok()
}

/// moto's S3 server (`moto_server`), a second S3 implementation beside
/// SeaweedFS. Its conditional create (`If-None-Match: *`) is what the
/// registry needs, and it has it.
pub struct Moto {
    _process: Process,
    _dir: TempDir,
    port: u16,
}

impl Moto {
    /// Starts moto and creates the bucket.
    pub fn start() -> Self {
        let dir = TempDir::new().unwrap_or_else(|e| panic!("scratch folder: {e}"));
        let port = free_port();
        let mut cmd = Command::new(workspace_tool(
            "STACKPIN_MOTO",
            ".venv/bin/moto_server",
            "moto_server",
        ));
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        // moto accepts any credentials; creating the bucket needs none.
        let process = spawn(cmd, &dir, "moto", || {
            matches!(http(port, "PUT", &format!("/{BUCKET}"), &[]), Some(200))
        });
        Self {
            _process: process,
            _dir: dir,
            port,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Remote for Moto {
    fn name(&self) -> &'static str {
        "moto"
    }

    fn storage_url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    fn server_args(&self) -> Vec<String> {
        vec!["--s3-endpoint".to_owned(), self.endpoint()]
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        crate::s3::test_env()
    }

    fn options(&self) -> StorageOptions {
        crate::s3::test_options(self.endpoint())
    }
}

/// Azurite's account: the emulator's published development account.
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite, Microsoft's Azure Storage emulator, serving Blob Storage.
pub struct Azurite {
    _process: Process,
    _dir: TempDir,
    port: u16,
}

impl Azurite {
    /// Starts Azurite's blob service and creates the container.
    pub fn start() -> Self {
        let dir = TempDir::new().unwrap_or_else(|e| panic!("scratch folder: {e}"));
        let port = free_port();
        let mut cmd = Command::new(workspace_tool(
            "STACKPIN_AZURITE",
            ".npm/node_modules/.bin/azurite-blob",
            "azurite-blob",
        ));
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path().join("data"))
            .args(["--silent", "--skipApiVersionCheck", "--disableTelemetry"]);
        let process = spawn(cmd, &dir, "azurite", || {
            // 201 made, 409 already there (an earlier attempt got through).
            matches!(create_container(port), Some(201 | 409))
        });
        Self {
            _process: process,
            _dir: dir,
            port,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }
}

/// Creates the container with a Shared Key request, as Azure's REST API
/// documents it (object_store has no call for it).
fn create_container(port: u16) -> Option<u16> {
    let date = jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&jiff::Timestamp::now())
        .ok()?;
    let version = "2021-08-06";
    // VERB, then eleven standard headers (all empty here), the x-ms-*
    // headers, then the resource: path-style, so the account appears twice.
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
         /{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{BUCKET}\nrestype:container"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(AZURITE_KEY)
        .ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    http(
        port,
        "PUT",
        &format!("/{AZURITE_ACCOUNT}/{BUCKET}?restype=container"),
        &[
            ("x-ms-date", date),
            ("x-ms-version", version.to_owned()),
            (
                "Authorization",
                format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
            ),
        ],
    )
}

impl Remote for Azurite {
    fn name(&self) -> &'static str {
        "azurite"
    }

    fn storage_url(&self, prefix: &str) -> String {
        format!("az://{BUCKET}/{prefix}")
    }

    fn server_args(&self) -> Vec<String> {
        vec!["--azure-endpoint".to_owned(), self.endpoint()]
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT.to_owned()),
            ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY.to_owned()),
        ]
    }

    fn options(&self) -> StorageOptions {
        StorageOptions {
            azure_endpoint: Some(self.endpoint()),
            credentials: Some((AZURITE_ACCOUNT.to_owned(), AZURITE_KEY.to_owned())),
            timeout: Duration::from_secs(15),
            ..Default::default()
        }
    }
}
