//! Clients of the OCI API the tests drive: plain HTTP requests as the
//! distribution spec writes them, skopeo (Debian), the ORAS Python SDK and
//! securesystemslib (PyPI, in `.venv`).

#![allow(clippy::unwrap_used)] // a test fixture: failing loudly is the point

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use serde_json::Value;

use crate::tlog::Answer;

/// One HTTP/1.1 request with `headers`, `Connection: close`.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut tcp = TcpStream::connect(addr).unwrap();
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    tcp.write_all(text.as_bytes()).unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).unwrap();
    crate::tlog::parse_answer(&raw)
}

pub fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path, &[])
}

pub fn json(a: &Answer) -> Value {
    serde_json::from_slice(&a.body).unwrap_or_else(|e| panic!("{e}: {a:?}"))
}

pub fn error_code(a: &Answer) -> String {
    json(a)["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `skopeo` against the registry at `addr` (plain HTTP on loopback).
pub fn skopeo_run(args: &[&str]) -> std::process::Output {
    Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo (Debian's skopeo; tests/run installs it)")
}

pub fn oras_pull(reference: &str, out: &std::path::Path) -> String {
    let python = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let script = r#"
import sys, oras.client
host, target, outdir = sys.argv[1], sys.argv[2], sys.argv[3]
client = oras.client.OrasClient(hostname=host, insecure=True)
for path in client.pull(target=target, outdir=outdir):
    print(path)
"#;
    let host = reference.split('/').next().unwrap();
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(script).arg(host).arg(reference).arg(out);
    let run = cmd
        .output()
        .expect("run the ORAS Python SDK (tests/run installs it)");
    assert!(run.status.success(), "{run:?}");
    String::from_utf8(run.stdout).unwrap()
}

/// Verifies a DSSE envelope with securesystemslib (PyPI), under the
/// Ed25519 public key in `pem`; also checks that a changed payload fails.
pub fn securesystemslib_verifies(envelope: &[u8], pem: &std::path::Path) -> String {
    let python = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let script = r#"
import copy, json, sys, base64
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey
from securesystemslib.exceptions import VerificationError
envelope = json.loads(sys.stdin.buffer.read())
raw = serialization.load_pem_public_key(open(sys.argv[1], "rb").read()).public_bytes(
    serialization.Encoding.Raw, serialization.PublicFormat.Raw)
keyid = envelope["signatures"][0]["keyid"]
key = SSlibKey(keyid, "ed25519", "ed25519", {"public": raw.hex()})
Envelope.from_dict(copy.deepcopy(envelope)).verify([key], 1)
envelope["payload"] = base64.b64encode(b'{"_type":"forged"}').decode()
try:
    Envelope.from_dict(envelope).verify([key], 1)
    print("FORGED PAYLOAD ACCEPTED")
except VerificationError:
    print("verified; a changed payload is refused")
"#;
    let mut child = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(pem)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run securesystemslib (tests/run installs it)");
    child.stdin.take().unwrap().write_all(envelope).unwrap();
    let run = child.wait_with_output().unwrap();
    assert!(run.status.success(), "{run:?}");
    String::from_utf8(run.stdout).unwrap()
}

/// A CNCF Distribution registry (Debian's `docker-registry`) on loopback,
/// filesystem storage in its own folder; stopped when dropped.
pub struct Distribution {
    child: std::process::Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Distribution {
    pub fn start() -> Self {
        let dir = tempfile::TempDir::new().unwrap();
        let port = crate::s3::free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: \
                 127.0.0.1:{port}\nlog:\n  level: error\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run docker-registry (Debian's CNCF Distribution; tests/run installs it)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let started = std::time::Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "docker-registry did not listen on {addr} within 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
