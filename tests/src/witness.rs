//! A real `stackpin-witness` process for tests, on a port of its own.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running witness, its stderr kept.
pub struct WitnessProc {
    pub addr: SocketAddr,
    child: Child,
    log: Arc<Mutex<String>>,
    args: Vec<String>,
}

impl WitnessProc {
    pub fn start(name: &str, data: &Path, log_vkey: &str, port: u16) -> Self {
        let args = vec![
            "--name".to_owned(),
            name.to_owned(),
            "--data-dir".to_owned(),
            data.display().to_string(),
            "--log".to_owned(),
            log_vkey.to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        Self::spawn(args)
    }

    pub fn spawn(args: Vec<String>) -> Self {
        let mut child = Command::new(crate::bin("stackpin-witness"))
            .args(&args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("witness listening on ").nth(1) {
                    let _ = tx.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the witness did not start")
            .parse()
            .unwrap();
        Self {
            child,
            addr,
            log,
            args,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL, then the same command again.
    pub fn kill_and_restart(mut self) -> Self {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        Self::spawn(self.args.clone())
    }
}

impl Drop for WitnessProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn witness_vkey(name: &str, data: &Path) -> String {
    let out = Command::new(crate::bin("stackpin-witness"))
        .args(["key", "--name", name, "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
